//! The durable reader: one task per listener, with one connection of its own, that reads
//! the journal for every durable subscription of the listener.
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
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::{AbortHandle, Abortable, FutureExt};
use futures::stream::{BoxStream, SelectAll, StreamExt};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row, Statement};
use tracing::{debug, warn};

use super::journal::{Journal, SCHEMA_VERSION, failed, newer_journal, parse_xid};
use super::stream::{DurableSubscription, Queue};
use crate::backoff::BackoffSchedule;
use crate::config::ListenerConfig;
use crate::error::{Chain, Error, ErrorKind, Result};
use crate::fanout::{Block, BlockBuilder, Event, Notification};
use crate::position::{Cursor, Position};
use crate::random::SplitMix64;
use crate::subscription::Subscription;

/// Entries per read at most.
pub(crate) const MAX_BATCH_ENTRIES: usize = 1000;
/// Payload bytes per read, about (a read always takes its first entry).
pub(crate) const MAX_BATCH_BYTES: i64 = 4 << 20;

/// The handle a listener keeps to its durable reader (started by the first durable
/// subscription).
#[derive(Debug)]
pub(crate) struct Reader {
    commands: mpsc::UnboundedSender<Register>,
    unsubscribe: mpsc::UnboundedSender<u64>,
    room: Arc<Notify>,
    next_id: AtomicU64,
    capacity: usize,
}

/// A subscription to start.
struct Register {
    id: u64,
    journal: Journal,
    channel: Arc<str>,
    from: Cursor,
    wake: Subscription,
    queue: Arc<Queue>,
    ack: oneshot::Sender<Result<()>>,
}

impl Reader {
    /// Starts the reader's task on the current tokio runtime.
    pub(crate) fn start(config: Arc<ListenerConfig>) -> Result<Reader> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::new(
                ErrorKind::Config,
                "durable subscriptions need a tokio runtime: call subscribe_durable from a task \
                 of one",
            )
        })?;
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (unsubscribe, unsubscribe_rx) = mpsc::unbounded_channel();
        let room = Arc::new(Notify::new());
        let task = Task {
            backoff: BackoffSchedule::new(config.backoff, SplitMix64::from_entropy().next_u64()),
            config: config.clone(),
            commands: commands_rx,
            commands_open: true,
            unsubscribe: unsubscribe_rx,
            room: room.clone(),
            wakes: SelectAll::new(),
            subs: HashMap::new(),
            starting: Vec::new(),
            conn: None,
            retry_at: None,
            backoff_until: None,
        };
        runtime.spawn(task.run());
        Ok(Reader {
            commands,
            unsubscribe,
            room,
            next_id: AtomicU64::new(1),
            capacity: config.queue_capacity,
        })
    }

    /// Starts a durable subscription whose wake-ups come through `wake` (LISTEN is
    /// active on it already).
    pub(crate) async fn subscribe(
        &self,
        journal: &Journal,
        channel: &str,
        from: Cursor,
        wake: Subscription,
    ) -> Result<DurableSubscription> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let channel: Arc<str> = Arc::from(channel);
        let queue = Arc::new(Queue::new(self.capacity, self.room.clone()));
        let (ack, acked) = oneshot::channel();
        let register = Register {
            id,
            journal: journal.clone(),
            channel: channel.clone(),
            from,
            wake,
            queue: queue.clone(),
            ack,
        };
        self.commands.send(register).map_err(|_| Error::closed())?;
        // From here on, dropping the subscription (also by cancelling this) ends it.
        let subscription = DurableSubscription::new(id, channel, queue, self.unsubscribe.clone());
        match acked.await {
            Ok(Ok(())) => Ok(subscription),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(Error::closed()),
        }
    }
}

type WakeStream = Abortable<BoxStream<'static, (u64, Option<Event>)>>;

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
    wake: AbortHandle,
}

struct Conn {
    client: Arc<Client>,
    driver: tokio::task::JoinHandle<()>,
    statements: HashMap<Arc<str>, Prepared>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

#[derive(Clone)]
struct Prepared {
    start: Statement,
    read: Statement,
}

struct Task {
    config: Arc<ListenerConfig>,
    backoff: BackoffSchedule,
    commands: mpsc::UnboundedReceiver<Register>,
    commands_open: bool,
    unsubscribe: mpsc::UnboundedReceiver<u64>,
    room: Arc<Notify>,
    wakes: SelectAll<WakeStream>,
    subs: HashMap<u64, Sub>,
    starting: Vec<Register>,
    conn: Option<Conn>,
    /// When subscriptions with held-back entries read again.
    retry_at: Option<Instant>,
    /// No connection attempt or read before this, after a failure.
    backoff_until: Option<Instant>,
}

/// One shared read: the subscriptions on one channel at one position.
struct Group {
    journal: Journal,
    channel: Arc<str>,
    cursor: Position,
    from_beginning: bool,
    members: Vec<Member>,
}

struct Member {
    id: u64,
    queue: Arc<Queue>,
    room: usize,
    taken: usize,
    last: Option<Position>,
}

/// What one shared read found.
struct Outcome {
    watermark: u64,
    held: u64,
    horizon: Option<Position>,
    /// The read may have left entries behind (it hit a bound).
    more: bool,
}

impl Task {
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
        for sub in self.subs.values() {
            sub.queue.close();
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
        while let Some(Some((id, event))) = self.wakes.next().now_or_never() {
            self.on_wake(id, event);
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
            Some((id, event)) = self.wakes.next(), if !self.wakes.is_empty() => {
                self.on_wake(id, event);
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
        if let Some(sub) = self.subs.remove(&id) {
            sub.wake.abort();
        }
        self.starting.retain(|r| r.id != id);
    }

    fn on_wake(&mut self, id: u64, event: Option<Event>) {
        let Some(channel) = self.subs.get(&id).map(|s| s.channel.clone()) else {
            return;
        };
        match event {
            // The listener is closed: so is this subscription.
            None => {
                if let Some(sub) = self.subs.remove(&id) {
                    sub.queue.close();
                }
            }
            Some(Event::Error(error)) => {
                if let Some(sub) = self.subs.get(&id) {
                    sub.queue.push_error(error);
                }
            }
            // A wake-up, or one may have been missed (Reconnected, Lagged): read.
            Some(_) => {
                for sub in self.subs.values_mut() {
                    if sub.channel == channel {
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

    /// The connection, made if needed.
    async fn connection(&mut self) -> Result<Arc<Client>> {
        if let Some(conn) = self.conn.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(conn.client.clone());
        }
        self.conn = None;
        let established = self.config.connect.connect().await?;
        let mut messages = established.messages;
        let driver = tokio::spawn(async move {
            while let Some(message) = messages.next().await {
                if message.is_err() {
                    break;
                }
            }
        });
        let client = Arc::new(established.client);
        // Never cut off while idle (PostgreSQL 14+; older servers have no such setting).
        let _ = client.batch_execute("SET idle_session_timeout = 0").await;
        debug!(host = %established.host, "durable reader connected");
        self.conn = Some(Conn {
            client: client.clone(),
            driver,
            statements: HashMap::new(),
        });
        Ok(client)
    }

    async fn prepared(&mut self, client: &Client, journal: &Journal) -> Result<Prepared> {
        let sql = journal.sql();
        if let Some(prepared) = self
            .conn
            .as_ref()
            .and_then(|c| c.statements.get(journal.schema()))
        {
            return Ok(prepared.clone());
        }
        let start = client
            .prepare_typed(&sql.start, &[Type::TEXT])
            .await
            .map_err(|e| failed("preparing the journal's statements", e))?;
        let read = client
            .prepare_typed(
                &sql.read,
                &[Type::TEXT, Type::TEXT, Type::INT8, Type::INT8, Type::INT8],
            )
            .await
            .map_err(|e| failed("preparing the journal's statements", e))?;
        let prepared = Prepared { start, read };
        if let Some(conn) = &mut self.conn {
            conn.statements
                .insert(Arc::from(journal.schema()), prepared.clone());
        }
        Ok(prepared)
    }

    /// One round: start what is starting, then one read for each group of dirty
    /// subscriptions, all sent together.
    async fn round(&mut self) {
        let bound = self
            .config
            .heartbeat
            .timeout
            .max(self.config.connect.connect_timeout());
        let client = match tokio::time::timeout(bound, self.connection()).await {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => return self.failed(error, None),
            Err(_) => {
                let error = Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "the durable reader could not connect within {bound:?}; it tries again"
                    ),
                );
                return self.failed(error, None);
            }
        };
        for register in std::mem::take(&mut self.starting) {
            if register.ack.is_closed() {
                continue;
            }
            let started = match tokio::time::timeout(bound, self.start(&client, &register)).await {
                Ok(result) => result,
                Err(_) => Err(Error::new(
                    ErrorKind::Timeout,
                    format!("starting the durable subscription took longer than {bound:?}"),
                )),
            };
            match started {
                Ok((cursor, from_beginning)) => {
                    let id = register.id;
                    let (abort, registration) = AbortHandle::new_pair();
                    let wake: BoxStream<'static, (u64, Option<Event>)> = register
                        .wake
                        .map(move |event| (id, Some(event)))
                        .chain(futures::stream::once(async move { (id, None) }))
                        .boxed();
                    self.wakes.push(Abortable::new(wake, registration));
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
                            wake: abort,
                        },
                    );
                    let _ = register.ack.send(Ok(()));
                }
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
        let groups = self.groups();
        if groups.is_empty() {
            return;
        }
        let mut statements = Vec::with_capacity(groups.len());
        for group in &groups {
            match self.prepared(&client, &group.journal).await {
                Ok(prepared) => statements.push(prepared.read),
                Err(error) => return self.failed(error, Some(&groups)),
            }
        }
        let mut groups = groups;
        let reads = groups
            .iter_mut()
            .zip(&statements)
            .map(|(group, statement)| {
                let client = &client;
                async move { tokio::time::timeout(bound, read(client, statement, group)).await }
            });
        let outcomes = futures::future::join_all(reads).await;
        let mut trouble = None;
        for (group, outcome) in groups.iter().zip(outcomes) {
            match outcome {
                Ok(Ok(outcome)) => self.apply(group, &outcome),
                Ok(Err(error)) => {
                    self.record_partial(group);
                    trouble = Some(error);
                }
                Err(_) => {
                    self.record_partial(group);
                    trouble = Some(Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "a read of the journal took longer than {bound:?}; the durable \
                             reader reconnects and reads again from the last position"
                        ),
                    ));
                }
            }
        }
        match trouble {
            Some(error) => self.failed(error, Some(&groups)),
            None => {
                self.backoff.reset();
                self.backoff_until = None;
            }
        }
    }

    /// Resolves a new subscription's cursor: checks the journal, the cluster, the
    /// position and the horizon.
    async fn start(&mut self, client: &Client, register: &Register) -> Result<(Position, bool)> {
        let prepared = self.prepared(client, &register.journal).await?;
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
        let version: i32 = row.get(0);
        if version > SCHEMA_VERSION {
            return Err(newer_journal(register.journal.schema(), Some(version)));
        }
        let same_cluster: bool = row.get(1);
        let watermark = parse_xid(row.get(2))?;
        let next = parse_xid(row.get(3))?;
        let horizon = horizon_of(row.get(4), row.get(5))?;
        match register.from {
            Cursor::Beginning => Ok((horizon.unwrap_or(Position::new(0, 0)), true)),
            Cursor::Now => Ok((Position::new(watermark, 0), false)),
            Cursor::After(p) => {
                if !same_cluster {
                    return Err(Error::new(
                        ErrorKind::InvalidPosition,
                        format!(
                            "the journal in schema {:?} was installed on another cluster (its \
                             system identifier differs: a dump restored here, or a copy), so \
                             position {p} cannot be trusted; start from Cursor::Beginning or \
                             Cursor::Now, and run install to adopt the journal here",
                            register.journal.schema()
                        ),
                    ));
                }
                if p.transaction_id() >= next {
                    return Err(Error::new(
                        ErrorKind::InvalidPosition,
                        format!(
                            "position {p} is from the future: transaction {} has not started on \
                             this server (next is {next}); was it stored from another cluster?",
                            p.transaction_id()
                        ),
                    ));
                }
                match horizon {
                    Some(h) if h > p => Err(pruned(&register.channel, p, h)),
                    _ => Ok((p, false)),
                }
            }
        }
    }

    /// The dirty subscriptions with room, grouped by channel and position.
    fn groups(&mut self) -> Vec<Group> {
        let mut groups: Vec<Group> = Vec::new();
        let mut index: HashMap<(&str, &str, Position, bool), usize> = HashMap::new();
        for sub in self.subs.values_mut() {
            if sub.dirty && !sub.blocked && sub.queue.room() == 0 {
                sub.blocked = true;
            }
        }
        for (&id, sub) in &self.subs {
            if !sub.dirty || sub.blocked {
                continue;
            }
            let room = sub.queue.room();
            if room == 0 {
                continue;
            }
            let key = (
                sub.journal.schema(),
                &*sub.channel,
                sub.cursor,
                sub.from_beginning,
            );
            let at = *index.entry(key).or_insert_with(|| {
                groups.push(Group {
                    journal: sub.journal.clone(),
                    channel: sub.channel.clone(),
                    cursor: sub.cursor,
                    from_beginning: sub.from_beginning,
                    members: Vec::new(),
                });
                groups.len() - 1
            });
            groups[at].members.push(Member {
                id,
                queue: sub.queue.clone(),
                room: room.min(MAX_BATCH_ENTRIES),
                taken: 0,
                last: None,
            });
        }
        groups
    }

    /// A read succeeded: move each member on.
    fn apply(&mut self, group: &Group, outcome: &Outcome) {
        let mut retry = false;
        for member in &group.members {
            let Some(sub) = self.subs.get_mut(&member.id) else {
                continue;
            };
            member
                .queue
                .record_read(outcome.held, outcome.watermark, group.members.len() > 1);
            match outcome.horizon {
                Some(h) if h > group.cursor && !group.from_beginning && member.last.is_none() => {
                    sub.queue
                        .push_error(pruned(&group.channel, group.cursor, h));
                    sub.queue.close();
                    if let Some(sub) = self.subs.remove(&member.id) {
                        sub.wake.abort();
                    }
                    continue;
                }
                Some(h) if group.from_beginning && member.last.is_none() && h > sub.cursor => {
                    sub.cursor = h;
                }
                _ => {}
            }
            if let Some(last) = member.last {
                sub.cursor = last;
                sub.from_beginning = false;
            }
            // Entries may remain: the read hit a bound, or this queue's room.
            sub.dirty = outcome.more || member.taken == member.room;
            sub.held = outcome.held > 0;
            retry |= sub.held;
        }
        if retry {
            let at = Instant::now() + self.config.durable_retry;
            self.retry_at = Some(self.retry_at.map_or(at, |t| t.min(at)));
        }
    }

    /// A read failed part way: what it delivered stays delivered.
    fn record_partial(&mut self, group: &Group) {
        for member in &group.members {
            if let (Some(sub), Some(last)) = (self.subs.get_mut(&member.id), member.last) {
                sub.cursor = last;
                sub.from_beginning = false;
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

fn horizon_of(xid: Option<&str>, seq: Option<i64>) -> Result<Option<Position>> {
    match (xid, seq) {
        (Some(xid), Some(seq)) => Ok(Some(Position::new(parse_xid(xid)?, seq as u64))),
        _ => Ok(None),
    }
}

fn pruned(channel: &str, cursor: Position, horizon: Position) -> Error {
    Error::new(
        ErrorKind::Pruned,
        format!(
            "durable channel {channel:?}: entries after position {cursor} were pruned (the \
             journal's horizon for it is {horizon}), so this subscription cannot continue \
             without a gap; reload your state and subscribe again from Cursor::Beginning, or \
             prune less"
        ),
    )
}

/// Reads one group's entries and hands them to its members as they arrive.
async fn read(client: &Client, statement: &Statement, group: &mut Group) -> Result<Outcome> {
    let limit = group.members.iter().map(|m| m.room).max().unwrap_or(0) as i64;
    let xid = group.cursor.transaction_id().to_string();
    // Journal sequence numbers are bigints: a cursor past i64::MAX (a valid Position)
    // is after every one of them, as i64::MAX is; `as i64` would wrap it to negative.
    let seq = i64::try_from(group.cursor.sequence()).unwrap_or(i64::MAX);
    let channel: &str = &group.channel;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
        [&channel, &xid, &seq, &limit, &MAX_BATCH_BYTES];
    let rows = client
        .query_raw(statement, params)
        .await
        .map_err(|e| failed("reading the journal", e))?;
    let mut rows = std::pin::pin!(rows);
    let mut builder = BlockBuilder::default();
    let mut outcome: Option<Outcome> = None;
    let mut previous = group.cursor;
    let mut entries = 0i64;
    let mut bytes = 0i64;
    loop {
        // Hand over what has arrived before waiting for more.
        let next = match rows.next().now_or_never() {
            Some(next) => next,
            None => {
                flush(&mut builder, group);
                rows.next().await
            }
        };
        let row = match next {
            None => break,
            Some(row) => row.map_err(|e| failed("reading the journal", e))?,
        };
        if outcome.is_none() {
            let head = head(&row)?;
            if head
                .horizon
                .is_some_and(|h| h > group.cursor && !group.from_beginning)
            {
                // Pruned past this group: nothing may be delivered.
                return Ok(head);
            }
            outcome = Some(head);
        }
        let Some(xid) = row.get::<_, Option<&str>>(4) else {
            continue;
        };
        let position = Position::new(parse_xid(xid)?, row.get::<_, i64>(5) as u64);
        if position <= previous {
            return Err(Error::new(
                ErrorKind::Database,
                format!("the journal read returned {position} after {previous}: out of order"),
            ));
        }
        previous = position;
        let payload: &str = row.get(7);
        entries += 1;
        bytes += payload.len() as i64;
        builder.push_durable(row.get(6), &group.channel, payload, position);
        if builder.is_full() {
            flush(&mut builder, group);
        }
    }
    flush(&mut builder, group);
    let mut outcome = outcome
        .ok_or_else(|| Error::new(ErrorKind::Database, "the journal read returned no row"))?;
    outcome.more = entries >= limit || bytes >= MAX_BATCH_BYTES;
    Ok(outcome)
}

/// The read's head: watermark, horizon, held-back count (the same on every row).
fn head(row: &Row) -> Result<Outcome> {
    Ok(Outcome {
        watermark: parse_xid(row.get(0))?,
        horizon: horizon_of(row.get(1), row.get(2))?,
        held: row.get::<_, i64>(3) as u64,
        more: false,
    })
}

/// Hands the entries read so far to each member, as many as its room allows.
fn flush(builder: &mut BlockBuilder, group: &mut Group) {
    if builder.is_empty() {
        return;
    }
    let block: Arc<Block> = builder.seal();
    let len = block.len();
    for member in &mut group.members {
        let take = len.min(member.room - member.taken);
        if take == 0 {
            continue;
        }
        let share = Arc::new(block.clone());
        let Some(last) = block.position(take as u32 - 1) else {
            continue;
        };
        member.queue.push(
            (0..take as u32).map(|i| Notification::in_block(share.clone(), i)),
            last,
        );
        member.taken += take;
        member.last = Some(last);
    }
}
