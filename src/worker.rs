//! The background task: the only code that touches the connection.
//!
//! ```text
//! Connecting --ok--> Syncing (LISTEN every wanted channel) --ok--> Listening
//!     ^  |err                |err                                     | lost
//!     |  v                   v                                        v
//!     +--- BackingOff (jittered exponential, interruptible) <---------+
//! ```
//!
//! While connected, one hand-written poll function drives everything: commands, the
//! in-flight LISTEN/UNLISTEN batch, in-flight NOTIFYs and the connection itself. Queries
//! are stored futures polled beside the connection, never awaited on their own: the
//! connection does the I/O for every query, so awaiting one without polling it would
//! deadlock. The connection is read through `poll_message` (awaiting `Connection` as a
//! future would discard notifications), and every message it has ready is drained into
//! one batch before the subscriptions are handed their share.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{AsyncMessage, Client, SimpleQueryMessage};
use tracing::{debug, info, warn};

use crate::backoff::{BackoffSchedule, random_seed};
use crate::connect::{Established, MessageStream, drive};
use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use crate::listener::Settings;
use crate::mailbox::Mailbox;
use crate::registry::{Registry, SubscriptionId, SyncPlan};

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
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// What the handles can read about the task without asking it.
#[derive(Debug, Default)]
pub(crate) struct Status {
    /// The server process ID of the current connection, 0 while disconnected.
    pub(crate) backend_pid: AtomicI32,
}

type Query = Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send>>;
type Ack = oneshot::Sender<Result<()>>;

/// One established connection.
pub(crate) struct Session {
    client: Arc<Client>,
    messages: MessageStream,
    backend_pid: i32,
    /// The host it reached, `host:port`.
    host: Arc<str>,
}

/// Connects, authenticates and learns the backend's process ID, all within the connect
/// timeout.
pub(crate) async fn open_session(settings: &Settings) -> Result<Session> {
    let target = settings.spec.target();
    let attempt = async {
        let Established {
            client,
            mut messages,
            host,
        } = settings.spec.connect().await?;
        let client = Arc::new(client);
        let rows = drive(
            &mut messages,
            client.simple_query("SELECT pg_backend_pid()"),
        )
        .await
        .map_err(|e| {
            Error::connect_failed(&format!("could not set up the connection to {target}"), e)
        })?;
        let backend_pid = rows
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) => row.get(0).and_then(|v| v.parse().ok()),
                _ => None,
            })
            .unwrap_or(0);
        Ok(Session {
            client,
            messages,
            backend_pid,
            host: Arc::from(host),
        })
    };
    match tokio::time::timeout(settings.connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "connecting to {target} took longer than the connect timeout of {:?}; check \
                 that the server is reachable, or raise ListenerBuilder::connect_timeout",
                settings.connect_timeout
            ),
        )),
    }
}

/// The in-flight LISTEN/UNLISTEN batch.
struct SyncOp {
    query: Query,
    plan: SyncPlan,
    acks: Vec<Ack>,
}

/// The state of one connected period.
struct Serving {
    session: Session,
    sync: Option<SyncOp>,
    /// Subscribe acks waiting for the next sync to start.
    waiting: Vec<Ack>,
    /// In-flight requests (notify, listening_channels); each replies by itself.
    requests: FuturesUnordered<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// `Some` until the first sync on this connection completes. Notifications read
    /// before that are held back so that `Reconnected` precedes them.
    held: Option<Vec<tokio_postgres::Notification>>,
    /// The connect timeout also bounds the first sync.
    sync_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A sync failed with a server error: wait for the next command before retrying.
    replan_blocked: bool,
}

impl Serving {
    fn pending_acks(&mut self) -> impl Iterator<Item = Ack> + '_ {
        let in_flight = self.sync.take().map(|op| op.acks).unwrap_or_default();
        in_flight.into_iter().chain(self.waiting.drain(..))
    }
}

enum Exit {
    /// Shut down or every handle dropped.
    Stop,
    Lost(Error),
}

pub(crate) struct Worker {
    settings: Arc<Settings>,
    commands: mpsc::UnboundedReceiver<Command>,
    registry: Registry,
    backoff: BackoffSchedule,
    status: Arc<Status>,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
}

impl Worker {
    pub(crate) fn new(
        settings: Arc<Settings>,
        commands: mpsc::UnboundedReceiver<Command>,
        status: Arc<Status>,
    ) -> Self {
        Worker {
            backoff: BackoffSchedule::new(settings.backoff, random_seed()),
            settings,
            commands,
            registry: Registry::default(),
            status,
            shutdown_waiters: Vec::new(),
        }
    }

    /// The task's whole life. `first` is the connection `Listener::connect` made; `None`
    /// for `connect_lazy`.
    pub(crate) async fn run(mut self, first: Option<Session>) {
        let mut next = first;
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
                    self.status.backend_pid.store(0, Ordering::Relaxed);
                    self.registry.broadcast(&Event::Error(error));
                    self.registry.connection_lost(Instant::now());
                }
            }
        }
        self.finish();
    }

    /// Connected: reconcile LISTENs, route notifications, run notifies, until the
    /// connection is lost or the listener stops.
    async fn serve(&mut self, session: Session) -> Exit {
        self.status
            .backend_pid
            .store(session.backend_pid, Ordering::Relaxed);
        debug!(
            backend_pid = session.backend_pid,
            "connected; syncing LISTEN"
        );
        let mut serving = Serving {
            session,
            sync: None,
            waiting: Vec::new(),
            requests: FuturesUnordered::new(),
            held: Some(Vec::new()),
            sync_deadline: Some(Box::pin(tokio::time::sleep(self.settings.connect_timeout))),
            replan_blocked: false,
        };
        let exit = std::future::poll_fn(|cx| self.poll_serve(cx, &mut serving)).await;
        match exit {
            Exit::Lost(error) => {
                // Their subscriptions are registered: they will get `Reconnected`.
                for ack in serving.pending_acks() {
                    let _ = ack.send(Ok(()));
                }
                Exit::Lost(error)
            }
            Exit::Stop => {
                for ack in serving.pending_acks() {
                    let _ = ack.send(Err(Error::closed()));
                }
                self.registry.close_all();
                close_gracefully(serving).await;
                Exit::Stop
            }
        }
    }

    fn poll_serve(&mut self, cx: &mut Context<'_>, s: &mut Serving) -> Poll<Exit> {
        loop {
            loop {
                match self.commands.poll_recv(cx) {
                    Poll::Ready(Some(Command::Shutdown { done })) => {
                        self.shutdown_waiters.push(done);
                        return Poll::Ready(Exit::Stop);
                    }
                    Poll::Ready(Some(command)) => {
                        s.replan_blocked = false;
                        self.handle_online(command, s);
                    }
                    Poll::Ready(None) => return Poll::Ready(Exit::Stop),
                    Poll::Pending => break,
                }
            }

            self.start_sync(s);
            let mut sync_finished = false;
            let sync_result = match s.sync.as_mut() {
                Some(op) => op.query.as_mut().poll(cx),
                None => Poll::Pending,
            };
            if let Poll::Ready(result) = sync_result
                && let Some(op) = s.sync.take()
            {
                sync_finished = true;
                if let Err(exit) = self.sync_done(s, op, result) {
                    return Poll::Ready(exit);
                }
            }

            while let Poll::Ready(Some(())) = s.requests.poll_next_unpin(cx) {}

            if let Some(exit) = self.poll_messages(cx, s) {
                return Poll::Ready(exit);
            }

            if let Some(deadline) = s.sync_deadline.as_mut()
                && deadline.as_mut().poll(cx).is_ready()
            {
                {
                    return Poll::Ready(Exit::Lost(Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "LISTEN was not confirmed within the connect timeout of {:?}; \
                             reconnecting",
                            self.settings.connect_timeout
                        ),
                    )));
                }
            }

            // A finished sync may allow the next one (or acks) right away.
            if !sync_finished {
                return Poll::Pending;
            }
        }
    }

    fn handle_online(&mut self, command: Command, s: &mut Serving) {
        match command {
            Command::Subscribe {
                id,
                channels,
                mailbox,
                ack,
            } => {
                self.registry.add(id, channels, mailbox, None);
                s.waiting.push(ack);
            }
            Command::Unsubscribe { id } => self.registry.remove(id),
            Command::Notify {
                channel,
                payload,
                reply,
            } => {
                let client = s.session.client.clone();
                s.requests.push(Box::pin(async move {
                    let result = crate::listener::notify(&*client, &channel, &payload).await;
                    let _ = reply.send(result);
                }));
            }
            Command::ListeningChannels { reply } => {
                let client = s.session.client.clone();
                s.requests.push(Box::pin(async move {
                    let _ = reply.send(listening_channels(&client).await);
                }));
            }
            Command::Shutdown { done } => self.shutdown_waiters.push(done),
        }
    }

    /// Starts the next LISTEN/UNLISTEN batch if one is needed and none is in flight;
    /// acknowledges subscriptions when nothing needs to be sent.
    fn start_sync(&mut self, s: &mut Serving) {
        if s.sync.is_some() || s.replan_blocked {
            return;
        }
        match self.registry.plan() {
            Some(plan) => {
                let sql = plan.sql();
                let client = s.session.client.clone();
                debug!(
                    listen = plan.listen.len(),
                    unlisten = plan.unlisten.len(),
                    "syncing LISTEN"
                );
                s.sync = Some(SyncOp {
                    query: Box::pin(async move { client.batch_execute(&sql).await }),
                    plan,
                    acks: std::mem::take(&mut s.waiting),
                });
            }
            None => {
                for ack in s.waiting.drain(..) {
                    let _ = ack.send(Ok(()));
                }
                if s.held.is_some() {
                    self.now_listening(s);
                }
            }
        }
    }

    /// Handles the end of a LISTEN/UNLISTEN batch.
    fn sync_done(
        &mut self,
        s: &mut Serving,
        op: SyncOp,
        result: Result<(), tokio_postgres::Error>,
    ) -> Result<(), Exit> {
        match result {
            Ok(()) => {
                self.registry.confirm(&op.plan);
                for ack in op.acks {
                    let _ = ack.send(Ok(()));
                }
                Ok(())
            }
            Err(e) if e.as_db_error().is_none() => {
                s.waiting.extend(op.acks);
                Err(Exit::Lost(Error::connection_lost(Some(e))))
            }
            Err(e) => {
                let detail = e
                    .as_db_error()
                    .map(|d| d.message().to_owned())
                    .unwrap_or_default();
                let error = Error::with_source(
                    ErrorKind::Database,
                    format!("the server refused LISTEN/UNLISTEN: {detail}"),
                    e,
                );
                for ack in op.acks {
                    let _ = ack.send(Err(error.clone()));
                }
                if s.held.is_some() {
                    // The connection cannot listen: treat it as a failed attempt.
                    return Err(Exit::Lost(error));
                }
                warn!(error = %error, "LISTEN/UNLISTEN failed");
                s.replan_blocked = true;
                Ok(())
            }
        }
    }

    /// The first sync on this connection is done: LISTEN is active for every wanted
    /// channel. Announce the end of the gap, then release held notifications.
    fn now_listening(&mut self, s: &mut Serving) {
        let held = s.held.take().unwrap_or_default();
        s.sync_deadline = None;
        let attempts = self.backoff.attempts();
        let told = self
            .registry
            .announce_reconnected(Instant::now(), attempts, &s.session.host);
        for notification in held {
            self.registry.route(notification);
        }
        self.flush();
        self.backoff.reset();
        info!(
            channels = self.registry.confirmed_count(),
            subscriptions = self.registry.len(),
            reconnected = told,
            "listening"
        );
    }

    /// Reads every message the connection has ready and delivers the batch.
    fn poll_messages(&mut self, cx: &mut Context<'_>, s: &mut Serving) -> Option<Exit> {
        let mut routed = false;
        let exit = loop {
            match s.session.messages.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(AsyncMessage::Notification(notification)))) => {
                    match s.held.as_mut() {
                        Some(held) => held.push(notification),
                        None => routed |= self.registry.route(notification),
                    }
                }
                Poll::Ready(Some(Ok(AsyncMessage::Notice(notice)))) => {
                    debug!(
                        severity = notice.severity(),
                        message = notice.message(),
                        "server notice"
                    );
                }
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(e))) => {
                    break Some(Exit::Lost(Error::connection_lost(Some(e))));
                }
                Poll::Ready(None) => break Some(Exit::Lost(Error::connection_lost(None))),
                Poll::Pending => break None,
            }
        };
        // What arrived before a loss is delivered before the loss is announced.
        if routed {
            self.flush();
        }
        exit
    }

    fn flush(&mut self) {
        self.registry.flush(|id| {
            warn!(
                subscription = id,
                "subscription queue is full: dropping notifications until its consumer catches \
                 up (it will receive Event::Lagged with the count)"
            );
        });
    }

    /// Disconnected: wait (interruptibly) and try again until connected or stopped.
    async fn reconnect(&mut self) -> Option<Session> {
        let settings = self.settings.clone();
        loop {
            let delay = self.backoff.next_delay();
            let attempt = self.backoff.attempts();
            if !delay.is_zero() {
                debug!(?delay, attempt, "backing off before reconnecting");
                let sleep = tokio::time::sleep(delay);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        () = &mut sleep => break,
                        command = self.commands.recv() => {
                            if !self.handle_offline(command) {
                                return None;
                            }
                        }
                    }
                }
            }
            debug!(attempt, target = settings.spec.target(), "connecting");
            let connecting = open_session(&settings);
            tokio::pin!(connecting);
            let result = loop {
                tokio::select! {
                    result = &mut connecting => break result,
                    command = self.commands.recv() => {
                        if !self.handle_offline(command) {
                            return None;
                        }
                    }
                }
            };
            match result {
                Ok(session) => return Some(session),
                Err(error) => {
                    warn!(error = %error, attempt, "reconnect attempt failed");
                    self.registry.broadcast(&Event::Error(error));
                }
            }
        }
    }

    /// Handles a command while disconnected. Returns false when the task must stop.
    fn handle_offline(&mut self, command: Option<Command>) -> bool {
        match command {
            None => false,
            Some(Command::Shutdown { done }) => {
                self.shutdown_waiters.push(done);
                false
            }
            Some(Command::Subscribe {
                id,
                channels,
                mailbox,
                ack,
            }) => {
                self.registry
                    .add(id, channels, mailbox, Some(Instant::now()));
                let _ = ack.send(Ok(()));
                true
            }
            Some(Command::Unsubscribe { id }) => {
                self.registry.remove(id);
                true
            }
            Some(Command::Notify { reply, .. }) => {
                let _ = reply.send(Err(not_connected("the notification was not sent")));
                true
            }
            Some(Command::ListeningChannels { reply }) => {
                let _ = reply.send(Err(not_connected("the server listens to nothing for us")));
                true
            }
        }
    }

    /// Ends every stream, refuses what is still queued, and releases `shutdown` callers.
    fn finish(&mut self) {
        self.registry.close_all();
        self.status.backend_pid.store(0, Ordering::Relaxed);
        self.commands.close();
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
                Command::Unsubscribe { .. } => {}
            }
        }
        for done in self.shutdown_waiters.drain(..) {
            let _ = done.send(());
        }
        info!("listener stopped");
    }
}

fn not_connected(consequence: &str) -> Error {
    Error::new(
        ErrorKind::ConnectionLost,
        format!("not connected to the server right now (reconnecting); {consequence}"),
    )
}

/// The server's own list of channels this session listens to.
async fn listening_channels(client: &Client) -> Result<Vec<String>> {
    let messages = client
        .simple_query("SELECT pg_listening_channels()")
        .await
        .map_err(Error::from)?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .collect())
}

pub(crate) fn notify_failed(e: tokio_postgres::Error) -> Error {
    match e.as_db_error() {
        Some(db) => {
            let message = format!("the server refused the notification: {}", db.message());
            Error::with_source(ErrorKind::Database, message, e)
        }
        None => Error::with_source(
            ErrorKind::ConnectionLost,
            "the connection was lost before the server confirmed the notification; it may or \
             may not have been sent",
            e,
        ),
    }
}

/// Closes the connection cleanly: dropping the last `Client` makes the connection send
/// `Terminate`; polling it to its end flushes that and closes the socket.
async fn close_gracefully(serving: Serving) {
    let Serving {
        session, requests, ..
    } = serving;
    drop(requests);
    let Session {
        client,
        mut messages,
        ..
    } = session;
    drop(client);
    let drained = async { while messages.next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(2), drained)
        .await
        .is_err()
    {
        debug!("the server did not close the connection within 2s; dropping it");
    }
}
