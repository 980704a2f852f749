//! The durable reader: one task per listener, with one connection of its own, that reads
//! the journal for every durable subscription of the listener. The listener spawns it
//! where its own task runs (`worker::Background`), so that a consumer blocking its
//! thread holds up neither; when the task ends, or is dropped with its runtime, its
//! subscriptions' streams end.
//!
//! Each durable channel has one wake-up subscription on the listener, shared by its
//! durable subscriptions (each one's own, made by `subscribe_durable` so that LISTEN is
//! active when it returns, is dropped when the channel has one already) and ended with
//! the last of them.
//!
//! A subscription is *dirty* when the journal may hold entries for it: after it starts,
//! after a wake-up (a `NOTIFY` on its wake channel, or `Reconnected`/`Lagged` of the wake
//! subscription: a wake-up may have been missed), while a read returned a full batch,
//! and every `durable_retry` while entries are held back. Each round reads once for
//! every dirty subscription that has room in its queue; subscriptions on one channel at
//! the same position share one read, and the reads of a round are sent together
//! (pipelined on the one connection), their rows handed over as they arrive. A
//! subscription whose queue is full is skipped until its consumer frees half of it,
//! and is read again from its last position: nothing is dropped, so nothing is lagged.
//!
//! Nothing runs while no subscription is dirty: no polling while idle.

use std::collections::HashMap;
use std::sync::Arc;

mod batch;
mod conn;
mod handle;
mod round;
mod start;

pub(crate) use handle::Reader;
use handle::Register;

use futures::future::{AbortHandle, Abortable, FutureExt};
use futures::stream::{BoxStream, SelectAll, StreamExt};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tracing::{debug, warn};

use self::batch::Group;
use self::conn::Conn;
use super::journal::Journal;
use super::stream::Queue;
use crate::backoff::BackoffSchedule;
use crate::config::ListenerConfig;
use crate::error::{Chain, Error, ErrorKind};
use crate::fanout::Event;
use crate::position::Position;
use crate::random::SplitMix64;

/// The wake-up events of one durable channel (`None` when the listener closed).
type WakeStream = Abortable<BoxStream<'static, (Arc<str>, Option<Event>)>>;

/// One started durable subscription, as the reader sees it.
struct Sub {
    journal: Journal,
    channel: Arc<str>,
    /// Entries after this are still to be delivered.
    cursor: Position,
    /// Started from `Cursor::Beginning` and nothing delivered yet: pruning only moves
    /// its start.
    from_beginning: bool,
    queue: Arc<Queue>,
    dirty: bool,
    /// Skipped until its consumer frees room.
    blocked: bool,
    /// Entries were held back at the last read.
    held: bool,
}

struct Task {
    config: Arc<ListenerConfig>,
    backoff: BackoffSchedule,
    commands: mpsc::UnboundedReceiver<Register>,
    commands_open: bool,
    unsubscribe: mpsc::UnboundedReceiver<u64>,
    room: Arc<Notify>,
    wakes: SelectAll<WakeStream>,
    /// One wake-up subscription per channel, shared by its durable subscriptions: how
    /// many use it, and how to end it when none does.
    wake_channels: HashMap<Arc<str>, (AbortHandle, usize)>,
    subs: HashMap<u64, Sub>,
    starting: Vec<Register>,
    conn: Option<Conn>,
    /// When subscriptions with held-back entries read again.
    retry_at: Option<Instant>,
    /// No connection attempt or read before this, after a failure.
    backoff_until: Option<Instant>,
}

/// However the task ends (its loop done, or dropped with its runtime), its streams end
/// rather than wait for entries that will never come.
impl Drop for Task {
    fn drop(&mut self) {
        for sub in self.subs.values() {
            sub.queue.close();
        }
    }
}

impl Task {
    fn new(
        config: Arc<ListenerConfig>,
        commands: mpsc::UnboundedReceiver<Register>,
        unsubscribe: mpsc::UnboundedReceiver<u64>,
        room: Arc<Notify>,
    ) -> Task {
        Task {
            backoff: BackoffSchedule::new(config.backoff, SplitMix64::from_entropy().next_u64()),
            config,
            commands,
            commands_open: true,
            unsubscribe,
            room,
            wakes: SelectAll::new(),
            wake_channels: HashMap::new(),
            subs: HashMap::new(),
            starting: Vec::new(),
            conn: None,
            retry_at: None,
            backoff_until: None,
        }
    }

    async fn run(mut self) {
        loop {
            self.absorb_ready();
            if !self.commands_open && self.subs.is_empty() && self.starting.is_empty() {
                break;
            }
            let backing_off = self.backoff_until.is_some_and(|t| t > Instant::now());
            if self.has_work() && !backing_off {
                self.round().await;
                continue;
            }
            let deadline = match (self.retry_at, self.backoff_until) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            self.wait(deadline).await;
        }
        debug!("durable reader stopped");
    }

    fn has_work(&self) -> bool {
        !self.starting.is_empty() || self.subs.values().any(|s| s.dirty && !s.blocked)
    }

    /// Takes in whatever is ready, without waiting.
    fn absorb_ready(&mut self) {
        while let Ok(register) = self.commands.try_recv() {
            self.add(register);
        }
        while let Ok(id) = self.unsubscribe.try_recv() {
            self.remove(id);
        }
        while let Some(Some((channel, event))) = self.wakes.next().now_or_never() {
            self.on_wake(&channel, event);
        }
        if self.room.notified().now_or_never().is_some() {
            self.unblock();
        }
        if self.retry_at.is_some_and(|t| t <= Instant::now()) {
            self.retry_held();
        }
    }

    /// Waits for one thing to happen, or until `deadline`.
    async fn wait(&mut self, deadline: Option<Instant>) {
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            register = self.commands.recv(), if self.commands_open => match register {
                Some(register) => self.add(register),
                None => self.commands_open = false,
            },
            Some(id) = self.unsubscribe.recv() => self.remove(id),
            Some((channel, event)) = self.wakes.next(), if !self.wakes.is_empty() => {
                self.on_wake(&channel, event);
            }
            () = self.room.notified() => self.unblock(),
            () = sleep => {
                if self.retry_at.is_some_and(|t| t <= Instant::now()) {
                    self.retry_held();
                }
            }
        }
    }

    fn add(&mut self, register: Register) {
        self.starting.push(register);
    }

    fn remove(&mut self, id: u64) {
        self.drop_sub(id);
        self.starting.retain(|r| r.id != id);
    }

    /// Forgets a subscription; its channel's wake-up subscription ends with the last
    /// one that used it.
    fn drop_sub(&mut self, id: u64) -> Option<Sub> {
        let sub = self.subs.remove(&id)?;
        if let Some((abort, users)) = self.wake_channels.get_mut(&sub.channel) {
            *users -= 1;
            if *users == 0 {
                abort.abort();
                self.wake_channels.remove(&sub.channel);
            }
        }
        Some(sub)
    }

    fn on_wake(&mut self, channel: &Arc<str>, event: Option<Event>) {
        match event {
            // The listener is closed (shut down, or it gave up reconnecting): so are this
            // channel's subscriptions, and no new one can come; the reader ends with the
            // last.
            None => {
                self.wake_channels.remove(channel);
                self.subs.retain(|_, sub| {
                    let gone = sub.channel == *channel;
                    if gone {
                        sub.queue.close();
                    }
                    !gone
                });
                self.commands_open = false;
            }
            Some(Event::Error(error)) => {
                for sub in self.subs.values().filter(|s| s.channel == *channel) {
                    sub.queue.push_error(error.clone());
                }
            }
            // A wake-up, or one may have been missed (Reconnected, Lagged): read.
            Some(_) => {
                for sub in self.subs.values_mut() {
                    if sub.channel == *channel {
                        sub.dirty = true;
                    }
                }
            }
        }
    }

    fn unblock(&mut self) {
        for sub in self.subs.values_mut() {
            sub.blocked = false;
        }
    }

    fn retry_held(&mut self) {
        self.retry_at = None;
        for sub in self.subs.values_mut() {
            if sub.held {
                sub.dirty = true;
            }
        }
    }

    /// Something failed: tell the subscriptions concerned (all, for a connection
    /// problem), and try again after a backoff delay. Subscriptions stay dirty, so
    /// they read again from their last position.
    fn failed(&mut self, error: Error, groups: Option<&[Group]>) {
        warn!(error = %Chain(&error), "durable reader trouble; it tries again");
        let connection_trouble = matches!(
            error.kind(),
            ErrorKind::ConnectionLost | ErrorKind::Timeout | ErrorKind::Connect
        );
        if connection_trouble {
            self.conn = None;
        } else if let Some(conn) = &mut self.conn {
            // The server refused a statement: if the journal was dropped and installed
            // again, its prepared statements are stale; prepare them afresh.
            conn.forget_statements();
        }
        match groups {
            Some(groups) if !connection_trouble => {
                for member in groups.iter().flat_map(|g| &g.members) {
                    member.queue.push_error(error.clone());
                }
            }
            _ => {
                for sub in self.subs.values() {
                    sub.queue.push_error(error.clone());
                }
                for register in self.starting.drain(..) {
                    let _ = register.ack.send(Err(error.clone()));
                }
            }
        }
        let delay = self.backoff.next_delay();
        self.backoff_until = Some(Instant::now() + delay);
    }
}
