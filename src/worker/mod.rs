//! The background task: the only code that touches the connection.
//!
//! ```text
//! Connecting --ok--> Syncing (LISTEN every wanted channel) --ok--> Listening
//!     ^  |err                |err                        lost / heartbeat timeout |
//!     |  v                   v                                                    v
//!     +--- BackingOff (jittered exponential, interruptible) <---------------------+
//! ```
//!
//! While connected, one hand-written poll function drives everything: commands, the
//! in-flight LISTEN/UNLISTEN batch, requests (notify, ...), the heartbeat and the
//! connection itself. Queries are stored futures polled beside the connection, never
//! awaited on their own: the connection does the I/O for every query, so awaiting one
//! without polling it would deadlock. The connection is read through `poll_message`
//! (awaiting `Connection` as a future would discard notifications), and every message it
//! has ready is drained into one batch before the subscriptions are handed their share.
//!
//! Only this task polls its future, on the thread `launch.rs` placed it on (its own, or
//! a worker of the caller's runtime); consumers only take from their queues. So the
//! connection is read whatever a consumer does, and user code the task runs (the
//! credentials hook) runs here, never inside a consumer's `poll_next`.
//!
//! This module holds the task's life and its disconnected half (backoff, reconnect,
//! give-up); `serve.rs` holds the connected half; `launch.rs` starts it.

mod command;
mod launch;
mod serve;

pub(crate) use command::{Command, Request};
pub(crate) use launch::{Background, Started, start_connected, start_lazy};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use self::command::Refusal;
use self::serve::Serving;
use crate::backoff::BackoffSchedule;
use crate::config::ListenerConfig;
use crate::connect::{Session, open_session};
use crate::error::{Chain, Error, ErrorKind, Result};
use crate::fanout::{Event, LagChange, Registry, SubscriptionId};
use crate::heartbeat::QueueUsageAlarm;
use crate::random::SplitMix64;
use crate::stats::{ListenerState, Status};

type Query<T> = Pin<Box<dyn Future<Output = Result<T, tokio_postgres::Error>> + Send>>;
type Ack = oneshot::Sender<Result<()>>;

enum Exit {
    /// Shut down or every handle dropped.
    Stop,
    Lost(Error),
}

/// Where the task is when it handles a command.
enum Phase<'a> {
    /// Connected, in this serving period.
    Online(&'a mut Serving),
    /// Between connections (backing off or connecting).
    Offline,
    /// Finished: everything is refused.
    Closed,
}

/// What a command asks of the loop that received it.
#[must_use]
enum Next {
    Continue,
    /// Drop the connection (online) or attempt now (offline).
    Reconnect,
    Stop,
}

pub(crate) struct Worker {
    config: Arc<ListenerConfig>,
    commands: mpsc::UnboundedReceiver<Command>,
    registry: Registry,
    backoff: BackoffSchedule,
    status: Arc<Status>,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
    /// `Listener::reconnect` callers waiting for the old connection to be gone.
    reconnect_waiters: Vec<oneshot::Sender<()>>,
    /// When the current outage began (None while a connection works).
    outage_since: Option<Instant>,
    queue_alarm: QueueUsageAlarm,
    /// The last error of the current outage, for the give-up message.
    last_error: Option<Error>,
    /// How many batches one poll reads before the task yields (see
    /// [`batches_per_poll`]).
    batches_per_poll: u32,
}

impl Worker {
    pub(crate) fn new(
        config: Arc<ListenerConfig>,
        commands: mpsc::UnboundedReceiver<Command>,
        status: Arc<Status>,
        batches_per_poll: u32,
    ) -> Self {
        Worker {
            backoff: BackoffSchedule::new(config.backoff, SplitMix64::from_entropy().next_u64()),
            config,
            commands,
            registry: Registry::default(),
            status,
            shutdown_waiters: Vec::new(),
            reconnect_waiters: Vec::new(),
            outage_since: None,
            queue_alarm: QueueUsageAlarm::default(),
            last_error: None,
            batches_per_poll,
        }
    }

    /// The task's whole life. `first` is the connection `Listener::connect` made; `None`
    /// for `connect_lazy`.
    pub(crate) async fn run(mut self, first: Option<Session>) {
        let mut next = first;
        if next.is_none() {
            self.outage_since = Some(Instant::now());
        }
        loop {
            let session = match next.take() {
                Some(session) => session,
                None => match self.reconnect().await {
                    Some(session) => session,
                    None => break,
                },
            };
            match self.serve(session).await {
                Exit::Stop => break,
                Exit::Lost(error) => {
                    warn!(error = %Chain(&error), "connection lost; reconnecting");
                    self.status.set_backend_pid(None);
                    self.status.set_channels(0);
                    let now = Instant::now();
                    self.outage_since = Some(now);
                    self.registry.broadcast(&Event::Error(error.clone()));
                    self.registry.connection_lost(now);
                    self.last_error = Some(error);
                    // The session was dropped with `serve`: its socket is closed.
                    for done in self.reconnect_waiters.drain(..) {
                        let _ = done.send(());
                    }
                }
            }
        }
        self.finish();
    }

    /// Disconnected: wait (interruptibly) and try again until connected, stopped, or
    /// the give-up policy fires.
    async fn reconnect(&mut self) -> Option<Session> {
        let config = self.config.clone();
        loop {
            let outage = self.outage_since.map(|t| t.elapsed()).unwrap_or_default();
            if let Some(limit) = config.backoff.gives_up(self.backoff.attempts(), outage) {
                self.give_up(&limit);
                return None;
            }
            let delay = self.backoff.next_delay();
            let attempt = self.backoff.attempts();
            if !delay.is_zero() {
                self.status.set_state(ListenerState::BackingOff);
                info!(?delay, attempt, "backing off before reconnecting");
                let sleep = tokio::time::sleep(delay);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        () = &mut sleep => break,
                        command = self.commands.recv() => match self.dispatch_offline(command) {
                            Next::Continue => {}
                            Next::Reconnect => break,
                            Next::Stop => return None,
                        },
                    }
                }
            }
            self.status.set_state(ListenerState::Connecting);
            info!(attempt, target = config.connect.target(), "connecting");
            let connecting = open_session(&config.connect);
            tokio::pin!(connecting);
            let result = loop {
                tokio::select! {
                    result = &mut connecting => break result,
                    command = self.commands.recv() => {
                        // A reconnect request is answered; this attempt goes on.
                        if let Next::Stop = self.dispatch_offline(command) {
                            return None;
                        }
                    }
                }
            };
            match result {
                Ok(session) => return Some(session),
                Err(error) => {
                    warn!(error = %Chain(&error), attempt, "reconnect attempt failed");
                    self.registry.broadcast(&Event::Error(error.clone()));
                    self.last_error = Some(error);
                }
            }
        }
    }

    /// The give-up policy fired: a final error to every subscription; `finish` then
    /// ends them.
    fn give_up(&mut self, limit: &str) {
        let message = format!("gave up reconnecting after {limit}; the listener is closed");
        warn!("{message}");
        let error = match self.last_error.take() {
            Some(cause) => Error::with_source(ErrorKind::Closed, message, cause),
            None => Error::new(ErrorKind::Closed, message),
        };
        self.registry.broadcast(&Event::Error(error));
    }

    /// Handles a command received while disconnected (`None`: every handle is gone).
    fn dispatch_offline(&mut self, command: Option<Command>) -> Next {
        match command {
            Some(command) => self.dispatch(command, Phase::Offline),
            None => Next::Stop,
        }
    }

    /// The one place a command is handled, whatever the task is doing.
    fn dispatch(&mut self, command: Command, mut phase: Phase<'_>) -> Next {
        if let Phase::Online(serving) = &mut phase {
            // Something changed: a sync the server refused may be tried again.
            serving.replan_blocked = false;
        }
        match command {
            Command::Subscribe {
                id,
                channels,
                mailbox,
                ack,
            } => match phase {
                Phase::Online(serving) => {
                    self.registry.add(id, channels, mailbox, None);
                    self.status.set_subscriptions(self.registry.len());
                    // Acknowledged once LISTEN is confirmed (see `start_sync`).
                    serving.waiting.push(ack);
                }
                Phase::Offline => {
                    // Registered now; it starts with `Reconnected` once listening.
                    self.registry
                        .add(id, channels, mailbox, Some(Instant::now()));
                    self.status.set_subscriptions(self.registry.len());
                    let _ = ack.send(Ok(()));
                }
                Phase::Closed => {
                    let _ = ack.send(Err(Error::closed()));
                }
            },
            Command::Unsubscribe { id } => {
                if !matches!(phase, Phase::Closed) {
                    self.registry.remove(id);
                    self.status.set_subscriptions(self.registry.len());
                }
            }
            Command::Request(request) => match phase {
                Phase::Online(serving) => serving
                    .requests
                    .push(request.run(serving.session.client.clone())),
                Phase::Offline => request.refuse(Refusal::Offline),
                Phase::Closed => request.refuse(Refusal::Closed),
            },
            Command::Reconnect { done } => {
                match phase {
                    // Answered once the old connection is closed and the loss announced.
                    Phase::Online(_) => self.reconnect_waiters.push(done),
                    Phase::Offline | Phase::Closed => {
                        let _ = done.send(());
                    }
                }
                return Next::Reconnect;
            }
            Command::Shutdown { done } => {
                self.shutdown_waiters.push(done);
                return Next::Stop;
            }
        }
        Next::Continue
    }

    /// Ends every stream, refuses what is still queued, and releases `shutdown` callers.
    fn finish(&mut self) {
        // Closed on the handles first: whoever sees a stream end then finds the
        // listener closed too.
        self.status.set_backend_pid(None);
        self.status.set_state(ListenerState::Closed);
        self.commands.close();
        self.registry.close_all();
        while let Ok(command) = self.commands.try_recv() {
            let _ = self.dispatch(command, Phase::Closed);
        }
        for done in self.reconnect_waiters.drain(..) {
            let _ = done.send(());
        }
        for done in self.shutdown_waiters.drain(..) {
            let _ = done.send(());
        }
        info!("listener stopped");
    }
}

/// How many batches the task reads per poll before it yields, on a runtime of this
/// flavor shared with consumers (`None`: a thread of its own).
///
/// The task runs outside tokio's cooperative budget and yields by itself: tokio defers
/// the wake-up of a task that ran out of budget until its worker thread is idle, so a
/// consumer blocking that thread would hold the task, unread socket and unanswered
/// heartbeats included, for as long as it blocks. A task that wakes itself is queued
/// where another worker can take it.
///
/// On a current-thread runtime consumers run only when the task yields: one batch per
/// poll, so that they read (and free) it while it is still in cache. On a multi-thread
/// runtime, 16 batches, so that the worker thread's other tasks get their turn.
///
/// On a thread of its own the task shares its runtime with nothing but its own timers,
/// and a consumer that caught up is woken once per poll (see `Wake::Later`), from
/// another thread: 64 batches (8 192 notifications at most) per poll wake it a quarter
/// as often as 16 did, which cut the multi-thread drain's CPU and raised its rate
/// (BENCHMARKS.md, "How the hot path got here", step 11). Commands and heartbeats
/// still wait for at most one poll, about 2 ms of reading here.
pub(crate) fn batches_per_poll(shared_with: Option<tokio::runtime::RuntimeFlavor>) -> u32 {
    match shared_with {
        Some(tokio::runtime::RuntimeFlavor::CurrentThread) => 1,
        Some(_) => 16,
        None => 64,
    }
}

/// Logs a lag episode once when it starts and once when it ends, never per message.
fn log_lag(subscription: SubscriptionId, change: LagChange) {
    match change {
        LagChange::Started => warn!(
            subscription,
            "subscription queue is full: dropping notifications until its consumer catches \
             up (it will receive Event::Lagged with the count)"
        ),
        LagChange::Ended(dropped) => info!(
            subscription,
            dropped, "subscription caught up after dropping notifications"
        ),
    }
}
