//! Starting durable subscriptions: the reader's connection, each new subscription's
//! cursor settled against the journal, and its place in its channel's wake-ups.

use std::sync::Arc;
use std::time::Duration;

use futures::future::{AbortHandle, Abortable};
use futures::stream::{BoxStream, StreamExt};
use tokio_postgres::Client;

use super::batch::{StartFacts, settle_start};
use super::conn::Conn;
use super::handle::Register;
use super::{Sub, Task};
use crate::durable::journal::failed;
use crate::error::{Error, ErrorKind, Result};
use crate::fanout::Event;
use crate::position::Position;

impl Task {
    /// The connection, made if needed.
    pub(super) async fn connection(&mut self) -> Result<Arc<Client>> {
        if let Some(conn) = self.conn.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(conn.client.clone());
        }
        self.conn = None;
        let conn = Conn::open(&self.config).await?;
        let client = conn.client.clone();
        self.conn = Some(conn);
        Ok(client)
    }

    /// Resolves a new subscription's cursor: checks the journal, the cluster, the
    /// position and the horizon.
    async fn start(&mut self, client: &Client, register: &Register) -> Result<(Position, bool)> {
        let conn = self.conn.as_mut().ok_or_else(|| {
            Error::new(
                ErrorKind::ConnectionLost,
                "the durable reader's connection is gone",
            )
        })?;
        let prepared = conn.prepared(&register.journal).await?;
        let channel: &str = &register.channel;
        let row = client
            .query_opt(&prepared.start, &[&channel])
            .await
            .map_err(|e| failed("starting a durable subscription", e))?
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Database,
                    format!(
                        "the journal in schema {:?} has no meta row: run install again",
                        register.journal.schema()
                    ),
                )
            })?;
        settle_start(
            StartFacts::from_row(&row)?,
            register.from,
            &register.journal,
            channel,
        )
    }

    /// Starts each subscription waiting to start whose caller still waits, each within
    /// `bound`, and answers its caller.
    pub(super) async fn start_waiting(&mut self, client: &Client, bound: Duration) {
        for register in std::mem::take(&mut self.starting) {
            if register.ack.is_closed() {
                continue;
            }
            let started = match tokio::time::timeout(bound, self.start(client, &register)).await {
                Ok(result) => result,
                Err(_) => Err(Error::new(
                    ErrorKind::Timeout,
                    format!("starting the durable subscription took longer than {bound:?}"),
                )),
            };
            match started {
                Ok((cursor, from_beginning)) => self.admit(register, cursor, from_beginning),
                Err(error) => {
                    if error.kind() == ErrorKind::ConnectionLost
                        || error.kind() == ErrorKind::Timeout
                    {
                        self.conn = None;
                    }
                    let _ = register.ack.send(Err(error));
                }
            }
        }
    }

    /// A started subscription joins its channel's wake-ups and the reads; its caller is
    /// told.
    fn admit(&mut self, register: Register, cursor: Position, from_beginning: bool) {
        let id = register.id;
        let channel = register.channel.clone();
        match self.wake_channels.get_mut(&channel) {
            // The channel's wake-ups already come: this one's LISTEN (active, which is
            // what `subscribe_durable` waited for) is not needed.
            Some((_, users)) => {
                *users += 1;
                drop(register.wake);
            }
            None => {
                let (abort, registration) = AbortHandle::new_pair();
                let (events, end) = (channel.clone(), channel.clone());
                let wake: BoxStream<'static, (Arc<str>, Option<Event>)> = register
                    .wake
                    .map(move |event| (events.clone(), Some(event)))
                    .chain(futures::stream::once(async move { (end, None) }))
                    .boxed();
                self.wakes.push(Abortable::new(wake, registration));
                self.wake_channels.insert(channel, (abort, 1));
            }
        }
        self.subs.insert(
            id,
            Sub {
                journal: register.journal,
                channel: register.channel,
                cursor,
                from_beginning,
                queue: register.queue,
                dirty: true,
                blocked: false,
                held: false,
            },
        );
        let _ = register.ack.send(Ok(()));
    }
}
