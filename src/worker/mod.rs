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
//! The task's future lives in a [`TaskCell`] (`cell.rs`): a subscription that has read
//! everything queued for it, while the connection may still hold data, polls that same
//! future in its own task (with this task's waker) and reads the next batch itself,
//! instead of waiting for this task to run and hand it over.
//!
//! This module holds the task's life and its disconnected half (backoff, reconnect,
//! give-up); `serve.rs` holds the connected half.

mod cell;
mod serve;

pub(crate) use cell::{ReadHint, TaskCell};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::backoff::{BackoffSchedule, random_seed};
use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use crate::heartbeat::QueueUsageAlarm;
use crate::listener::Settings;
use crate::mailbox::Mailbox;
use crate::registry::{LagChange, Registry, SubscriptionId};
use crate::session::{Session, not_connected, open_session};
use crate::stats::{ListenerState, Status};

/// A request from a [`Listener`](crate::Listener) or [`Subscription`](crate::Subscription).
pub(crate) enum Command {
    Subscribe {
        id: SubscriptionId,
        channels: Vec<Arc<str>>,
        mailbox: Arc<Mailbox>,
        ack: oneshot::Sender<Result<()>>,
    },
    Unsubscribe {
        id: SubscriptionId,
    },
    Notify {
        channel: String,
        payload: String,
        reply: oneshot::Sender<Result<()>>,
    },
    ListeningChannels {
        reply: oneshot::Sender<Result<Vec<String>>>,
    },
    /// Drop the connection and connect again (or skip the current backoff delay).
    Reconnect {
        /// Answered once the old connection is closed and the loss announced.
        done: oneshot::Sender<()>,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

type Query<T> = Pin<Box<dyn Future<Output = Result<T, tokio_postgres::Error>> + Send>>;
type Ack = oneshot::Sender<Result<()>>;

enum Exit {
    /// Shut down or every handle dropped.
    Stop,
    Lost(Error),
}

/// What a command received while disconnected asks of the reconnect loop.
enum Offline {
    Continue,
    AttemptNow,
    Stop,
}

pub(crate) struct Worker {
    settings: Arc<Settings>,
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
    /// On a current-thread runtime consumers cannot run until this task yields: yield
    /// after handing over each bounded batch, so they read (and free) it while it is
    /// still in cache. On a multi-thread runtime they run beside it. (A consumer
    /// polling the future through the cell always stops after one batch.)
    yield_between_batches: bool,
    /// Tells consumers whether the last read stopped with data possibly left.
    read_hint: Arc<ReadHint>,
}

impl Worker {
    pub(crate) fn new(
        settings: Arc<Settings>,
        commands: mpsc::UnboundedReceiver<Command>,
        status: Arc<Status>,
        read_hint: Arc<ReadHint>,
    ) -> Self {
        Worker {
            read_hint,
            backoff: BackoffSchedule::new(settings.backoff, random_seed()),
            settings,
            commands,
            registry: Registry::default(),
            status,
            shutdown_waiters: Vec::new(),
            reconnect_waiters: Vec::new(),
            outage_since: None,
            queue_alarm: QueueUsageAlarm::default(),
            last_error: None,
            yield_between_batches: matches!(
                tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()),
                Ok(tokio::runtime::RuntimeFlavor::CurrentThread)
            ),
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
                    warn!(error = %error, "connection lost; reconnecting");
                    self.status.set_backend_pid(None);
                    self.status
                        .channels
                        .store(0, std::sync::atomic::Ordering::Relaxed);
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
        let settings = self.settings.clone();
        loop {
            let outage = self.outage_since.map(|t| t.elapsed()).unwrap_or_default();
            if let Some(limit) = settings.backoff.gives_up(self.backoff.attempts(), outage) {
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
                        command = self.commands.recv() => match self.handle_offline(command) {
                            Offline::Continue => {}
                            Offline::AttemptNow => break,
                            Offline::Stop => return None,
                        },
                    }
                }
            }
            self.status.set_state(ListenerState::Connecting);
            info!(attempt, target = settings.spec.target(), "connecting");
            let connecting = open_session(&settings);
            tokio::pin!(connecting);
            let result = loop {
                tokio::select! {
                    result = &mut connecting => break result,
                    command = self.commands.recv() => {
                        if let Offline::Stop = self.handle_offline(command) {
                            return None;
                        }
                    }
                }
            };
            match result {
                Ok(session) => return Some(session),
                Err(error) => {
                    warn!(error = %error, attempt, "reconnect attempt failed");
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

    /// Handles a command while disconnected.
    fn handle_offline(&mut self, command: Option<Command>) -> Offline {
        match command {
            None => Offline::Stop,
            Some(Command::Shutdown { done }) => {
                self.shutdown_waiters.push(done);
                Offline::Stop
            }
            Some(Command::Reconnect { done }) => {
                let _ = done.send(());
                Offline::AttemptNow
            }
            Some(Command::Subscribe {
                id,
                channels,
                mailbox,
                ack,
            }) => {
                self.registry
                    .add(id, channels, mailbox, Some(Instant::now()));
                self.status
                    .subscriptions
                    .store(self.registry.len(), std::sync::atomic::Ordering::Relaxed);
                let _ = ack.send(Ok(()));
                Offline::Continue
            }
            Some(Command::Unsubscribe { id }) => {
                self.registry.remove(id);
                self.status
                    .subscriptions
                    .store(self.registry.len(), std::sync::atomic::Ordering::Relaxed);
                Offline::Continue
            }
            Some(Command::Notify { reply, .. }) => {
                let _ = reply.send(Err(not_connected("the notification was not sent")));
                Offline::Continue
            }
            Some(Command::ListeningChannels { reply }) => {
                let _ = reply.send(Err(not_connected("the server listens to nothing for us")));
                Offline::Continue
            }
        }
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
            match command {
                Command::Subscribe { ack, .. } => {
                    let _ = ack.send(Err(Error::closed()));
                }
                Command::Notify { reply, .. } => {
                    let _ = reply.send(Err(Error::closed()));
                }
                Command::ListeningChannels { reply } => {
                    let _ = reply.send(Err(Error::closed()));
                }
                Command::Shutdown { done } => self.shutdown_waiters.push(done),
                Command::Reconnect { done } => {
                    let _ = done.send(());
                }
                Command::Unsubscribe { .. } => {}
            }
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
