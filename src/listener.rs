//! [`Listener`] and [`ListenerBuilder`]: the public handle sends commands to the
//! background task and awaits its answers.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::channel::{validate_channel, validate_payload};
use crate::connect::{ConnectOptions, ConnectSpec};
use crate::error::{Error, ErrorKind, Result};
use crate::heartbeat::HeartbeatConfig;
use crate::mailbox::Mailbox;
use crate::session::open_session;
use crate::stats::{Stats, Status};
use crate::subscription::Subscription;
use crate::worker::{Command, ReadHint, TaskCell, Worker};

/// Default capacity of each subscription's queue, in notifications.
///
/// ```
/// let builder = pglisten::Listener::builder("postgres://app@db/app")
///     .queue_capacity(4 * pglisten::DEFAULT_QUEUE_CAPACITY);
/// # let _ = builder;
/// ```
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;

/// Default bound on one whole connection attempt.
///
/// ```
/// let builder = pglisten::Listener::builder("postgres://app@db/app")
///     .connect_timeout(2 * pglisten::DEFAULT_CONNECT_TIMEOUT);
/// # let _ = builder;
/// ```
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the background task needs to (re)connect. Built once by the builder.
pub(crate) struct Settings {
    pub(crate) spec: ConnectSpec,
    pub(crate) connect_timeout: Duration,
    pub(crate) queue_capacity: usize,
    pub(crate) backoff: Backoff,
    pub(crate) heartbeat: HeartbeatConfig,
    pub(crate) self_check: bool,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("target", &self.spec.target())
            .field("connect_timeout", &self.connect_timeout)
            .field("queue_capacity", &self.queue_capacity)
            .field("backoff", &self.backoff)
            .field("heartbeat", &self.heartbeat)
            .finish_non_exhaustive()
    }
}

/// Configures and creates a [`Listener`].
///
/// Settings are checked by the final [`connect`](ListenerBuilder::connect) (or
/// [`connect_lazy`](ListenerBuilder::connect_lazy)), which reports any problem as an
/// error of kind [`ErrorKind::Config`]; no setter panics.
///
/// ```no_run
/// use std::time::Duration;
/// use pglisten::{Backoff, Listener};
///
/// # async fn run() -> pglisten::Result<()> {
/// let listener = Listener::builder("postgres://app@db.internal/app")
///     .queue_capacity(10_000)
///     .connect_timeout(Duration::from_secs(5))
///     .backoff(Backoff::new().max(Duration::from_secs(30)))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until connect() or connect_lazy() is called"]
#[derive(Clone)]
pub struct ListenerBuilder {
    url: String,
    queue_capacity: usize,
    backoff: Backoff,
    connect_timeout: Duration,
    heartbeat: HeartbeatConfig,
    self_check: bool,
    /// TLS, credentials and environment settings (see connect.rs).
    pub(crate) connect: ConnectOptions,
}

impl fmt::Debug for ListenerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The connection string may hold a password: show only what it points at.
        let target = crate::connect::describe(&self.url, &self.connect);
        f.debug_struct("ListenerBuilder")
            .field("target", &target)
            .field("connect", &self.connect)
            .field("queue_capacity", &self.queue_capacity)
            .field("backoff", &self.backoff)
            .field("connect_timeout", &self.connect_timeout)
            .field("heartbeat", &self.heartbeat)
            .field("self_check", &self.self_check)
            .finish()
    }
}

impl ListenerBuilder {
    fn new(url: &str) -> Self {
        ListenerBuilder {
            url: url.to_owned(),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            backoff: Backoff::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            heartbeat: HeartbeatConfig::default(),
            self_check: true,
            connect: ConnectOptions::default(),
        }
    }

    /// How many notifications each subscription buffers for a slow consumer before it
    /// drops them and reports [`Event::Lagged`](crate::Event::Lagged). Must be at least 1.
    /// Default: [`DEFAULT_QUEUE_CAPACITY`] (1024). Memory is used only as the queue
    /// fills.
    ///
    /// ```
    /// let builder = pglisten::Listener::builder("postgres://app@db/app").queue_capacity(64);
    /// # let _ = builder;
    /// ```
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity;
        self
    }

    /// The reconnect schedule. Default: [`Backoff::default`].
    ///
    /// ```
    /// # use std::time::Duration;
    /// let builder = pglisten::Listener::builder("postgres://app@db/app")
    ///     .backoff(pglisten::Backoff::new().initial(Duration::from_millis(50)));
    /// # let _ = builder;
    /// ```
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The bound on one whole connection attempt: TCP connect, TLS, authentication and
    /// the first LISTEN. Default: [`DEFAULT_CONNECT_TIMEOUT`] (10 s). (The driver's own
    /// `connect_timeout` setting covers only the TCP connect.)
    ///
    /// ```
    /// # use std::time::Duration;
    /// let builder = pglisten::Listener::builder("postgres://app@db/app")
    ///     .connect_timeout(Duration::from_secs(3));
    /// # let _ = builder;
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How often the listener checks its connection, and how long a check may take
    /// before the connection is declared dead. Defaults:
    /// [`DEFAULT_HEARTBEAT_INTERVAL`](crate::DEFAULT_HEARTBEAT_INTERVAL) (10 s) and
    /// [`DEFAULT_HEARTBEAT_TIMEOUT`](crate::DEFAULT_HEARTBEAT_TIMEOUT) (5 s).
    ///
    /// A connection that silently stops carrying bytes (a NAT or proxy dropped it, a
    /// failover moved the address) is declared lost within `interval + timeout`: every
    /// subscription gets [`Event::Error`](crate::Event::Error) of kind
    /// [`ErrorKind::Timeout`], and the listener reconnects. Each check also confirms
    /// with `pg_listening_channels()` that the server still listens to every channel;
    /// a lost registration is repaired and announced as a gap
    /// ([`Event::Reconnected`](crate::Event::Reconnected)). TCP keepalives and
    /// `TCP_USER_TIMEOUT` on the listener's socket are set to agree with these values.
    /// Both must be greater than zero.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let builder = pglisten::Listener::builder("postgres://app@db/app")
    ///     .heartbeat(Duration::from_secs(5), Duration::from_secs(3));
    /// # let _ = builder;
    /// ```
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.heartbeat = HeartbeatConfig { interval, timeout };
        self
    }

    /// Whether every connection proves, before it is used, that notifications sent by
    /// other sessions reach it (default: on). The check LISTENs a private channel, sends
    /// a NOTIFY to it from a second short-lived connection, and waits for it.
    ///
    /// It exists for poolers: behind PgBouncer (or RDS Proxy, Supavisor...) in
    /// transaction or statement mode, LISTEN succeeds but notifications never arrive.
    /// With the check, [`connect`](ListenerBuilder::connect) fails with a clear error
    /// of kind [`ErrorKind::Config`] instead. Turn it off only if a second connection
    /// per connect is a problem and you are sure no such pooler is in the path.
    ///
    /// ```
    /// let builder = pglisten::Listener::builder("postgres://app@db/app").self_check(false);
    /// # let _ = builder;
    /// ```
    pub fn self_check(mut self, enabled: bool) -> Self {
        self.self_check = enabled;
        self
    }

    fn into_settings(self) -> Result<Settings> {
        let mut spec = ConnectSpec::build(&self.url, &self.connect, self.connect_timeout)?;
        if self.queue_capacity == 0 {
            return Err(Error::new(
                ErrorKind::Config,
                "queue_capacity must be at least 1",
            ));
        }
        if self.heartbeat.interval.is_zero() || self.heartbeat.timeout.is_zero() {
            return Err(Error::new(
                ErrorKind::Config,
                "heartbeat interval and timeout must both be greater than zero",
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::new(
                ErrorKind::Config,
                "connect_timeout must be greater than zero",
            ));
        }
        spec.set_tcp_keepalive(self.heartbeat.tcp_keepalive());
        Ok(Settings {
            spec,
            connect_timeout: self.connect_timeout,
            queue_capacity: self.queue_capacity,
            backoff: self.backoff,
            heartbeat: self.heartbeat,
            self_check: self.self_check,
        })
    }

    /// Connects, and returns once the connection is established. Fails fast: an
    /// unreachable server, refused credentials or a bad setting are reported here,
    /// without a retry loop. Once connected, later losses are recovered in the
    /// background.
    ///
    /// ```no_run
    /// # async fn run() -> pglisten::Result<()> {
    /// let listener = pglisten::Listener::builder("postgres://app@db/app").connect().await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(self) -> Result<Listener> {
        let settings = Arc::new(self.into_settings()?);
        let session = open_session(&settings).await?;
        Ok(Listener::spawn(settings, Some(session)))
    }

    /// Returns at once and connects in the background, retrying with backoff until it
    /// succeeds. Subscriptions made meanwhile start with
    /// [`Event::Reconnected`](crate::Event::Reconnected) once LISTEN is active, and
    /// connection failures reach them as [`Event::Error`](crate::Event::Error).
    ///
    /// Must be called within a tokio runtime (an error of kind [`ErrorKind::Config`]
    /// says so otherwise).
    ///
    /// ```no_run
    /// # async fn run() -> pglisten::Result<()> {
    /// let listener = pglisten::Listener::builder("postgres://app@db/app").connect_lazy()?;
    /// let events = listener.subscribe(["jobs"]).await?; // registered, not yet listening
    /// # Ok(()) }
    /// ```
    pub fn connect_lazy(self) -> Result<Listener> {
        let settings = Arc::new(self.into_settings()?);
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::new(
                ErrorKind::Config,
                "connect_lazy must be called from within a tokio runtime",
            ));
        }
        Ok(Listener::spawn(settings, None))
    }
}

/// A handle to one background task that owns one PostgreSQL connection and LISTENs on
/// behalf of every [`Subscription`] made from it.
///
/// Cheap to clone; every clone talks to the same task. The task ends, and the connection
/// is closed, after [`shutdown`](Listener::shutdown) or once every clone and every
/// subscription has been dropped.
///
/// ```no_run
/// use futures::StreamExt;
/// use pglisten::{Event, Listener};
///
/// # async fn run() -> pglisten::Result<()> {
/// let listener = Listener::connect("postgres://app@db/app").await?;
/// let mut events = listener.subscribe(["orders"]).await?; // LISTEN is active now
/// listener.notify("orders", "42").await?;
/// while let Some(event) = events.next().await {
///     if let Event::Notification(n) = event {
///         println!("{}: {}", n.channel(), n.payload());
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Listener {
    inner: Arc<Inner>,
}

struct Inner {
    commands: mpsc::UnboundedSender<Command>,
    status: Arc<Status>,
    next_id: AtomicU64,
    queue_capacity: usize,
    closed: AtomicBool,
    target: String,
    /// The background task's future, shared with subscriptions.
    cell: Arc<TaskCell>,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("target", &self.inner.target)
            .field("backend_pid", &self.backend_pid())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Listener {
    /// Connects with default settings; see [`ListenerBuilder::connect`].
    ///
    /// `url` is a URL (`postgres://user:password@host:port/db?options`) or key=value
    /// pairs (`host=db user=app dbname=app`).
    ///
    /// ```no_run
    /// # async fn run() -> pglisten::Result<()> {
    /// let listener = pglisten::Listener::connect("host=localhost user=app dbname=app").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Listener> {
        Self::builder(url).connect().await
    }

    /// Starts configuring a listener for `url`.
    ///
    /// ```
    /// let builder = pglisten::Listener::builder("postgres://app@db/app").queue_capacity(256);
    /// # let _ = builder;
    /// ```
    pub fn builder(url: &str) -> ListenerBuilder {
        ListenerBuilder::new(url)
    }

    fn spawn(settings: Arc<Settings>, first: Option<crate::session::Session>) -> Listener {
        let (commands, receiver) = mpsc::unbounded_channel();
        let status = Arc::new(Status::default());
        let span = tracing::info_span!("pglisten", target = settings.spec.target());
        if let Some(session) = &first {
            // Known now: a caller of `connect` may read them as soon as it returns.
            status.set_backend_pid(Some(session.backend_pid));
            status.set_state(crate::stats::ListenerState::Syncing);
        }
        let target = settings.spec.target().to_owned();
        let queue_capacity = settings.queue_capacity;
        let read_hint = Arc::new(ReadHint::default());
        let worker = Worker::new(settings, receiver, status.clone(), read_hint.clone());
        let cell = TaskCell::new(Box::pin(worker.run(first).instrument(span)), read_hint);
        tokio::spawn(cell.task());
        let inner = Arc::new(Inner {
            commands,
            status,
            next_id: AtomicU64::new(1),
            queue_capacity,
            closed: AtomicBool::new(false),
            target,
            cell,
        });
        Listener { inner }
    }

    /// Subscribes to `channels` and returns the stream of their events.
    ///
    /// Returns once the server has acknowledged LISTEN for every channel, so any
    /// notification committed after this returns is delivered. While the listener is
    /// disconnected it registers the subscription and returns at once; the stream then
    /// starts with [`Event::Reconnected`](crate::Event::Reconnected) when LISTEN is
    /// active.
    ///
    /// Channel names are case-sensitive and used exactly as given (quoted as
    /// identifiers): `"Orders"` and `"orders"` are different channels, and quotes,
    /// spaces or non-ASCII characters are just part of the name. Duplicates are ignored.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidChannel`] for an empty list, an empty name, a name with NUL
    /// or longer than 63 bytes; [`ErrorKind::Closed`] after
    /// [`shutdown`](Listener::shutdown); [`ErrorKind::Database`] if the server refuses
    /// LISTEN.
    ///
    /// ```no_run
    /// # async fn run(listener: pglisten::Listener) -> pglisten::Result<()> {
    /// let events = listener.subscribe(["orders", "Prices EU"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn subscribe<I, S>(&self, channels: I) -> Result<Subscription>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut seen = HashSet::new();
        let mut names: Vec<Arc<str>> = Vec::new();
        for channel in channels {
            let channel = channel.as_ref();
            validate_channel(channel)?;
            if seen.insert(channel.to_owned()) {
                names.push(Arc::from(channel));
            }
        }
        if names.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidChannel,
                "subscribe needs at least one channel name",
            ));
        }
        self.check_open()?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mailbox = Arc::new(Mailbox::new(self.inner.queue_capacity));
        let (ack, acked) = oneshot::channel();
        let command = Command::Subscribe {
            id,
            channels: names.clone(),
            mailbox: mailbox.clone(),
            ack,
        };
        self.inner
            .commands
            .send(command)
            .map_err(|_| Error::closed())?;
        // From here on, dropping the subscription (also by cancelling this future)
        // unsubscribes.
        let subscription = Subscription::new(
            id,
            names,
            mailbox,
            self.inner.commands.clone(),
            self.inner.cell.clone(),
        );
        match acked.await {
            Ok(Ok(())) => Ok(subscription),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(Error::closed()),
        }
    }

    /// Sends a notification on `channel` through this listener's connection
    /// (`SELECT pg_notify(channel, payload)`), and returns once the server has accepted
    /// it. To notify inside your own transaction, use [`crate::notify`].
    ///
    /// The listener's own subscriptions on `channel` receive it too, like any other
    /// session's notification.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidChannel`] / [`ErrorKind::InvalidPayload`] for names and
    /// payloads the server would refuse or truncate (payloads must be under 8000 bytes);
    /// [`ErrorKind::ConnectionLost`] while reconnecting; [`ErrorKind::Closed`] after
    /// shutdown.
    ///
    /// ```no_run
    /// # async fn run(listener: pglisten::Listener) -> pglisten::Result<()> {
    /// listener.notify("orders", r#"{"id": 42}"#).await?;
    /// # Ok(()) }
    /// ```
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<()> {
        validate_channel(channel)?;
        validate_payload(payload)?;
        self.check_open()?;
        let (reply, replied) = oneshot::channel();
        let command = Command::Notify {
            channel: channel.to_owned(),
            payload: payload.to_owned(),
            reply,
        };
        self.inner
            .commands
            .send(command)
            .map_err(|_| Error::closed())?;
        match replied.await {
            Ok(result) => result,
            Err(_) => Err(Error::new(
                ErrorKind::ConnectionLost,
                "the connection was lost before the server confirmed the notification; it \
                 may or may not have been sent",
            )),
        }
    }

    /// Stops the listener: notifications that have already reached the listener's
    /// socket are delivered, every subscription yields what it has buffered and then
    /// ends, the connection is closed cleanly, and later calls to
    /// [`subscribe`](Listener::subscribe) and [`notify`](Listener::notify) fail with
    /// [`ErrorKind::Closed`]. Returns once the task has finished. Calling it again (from
    /// any clone) returns at once. (Notifications the server has not sent yet are not
    /// waited for: to be sure of one, wait until it arrives before shutting down.)
    ///
    /// ```no_run
    /// # async fn run(listener: pglisten::Listener) {
    /// listener.shutdown().await;
    /// assert!(listener.is_closed());
    /// # }
    /// ```
    pub async fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let (done, finished) = oneshot::channel();
        if self.inner.commands.send(Command::Shutdown { done }).is_ok() {
            let _ = finished.await;
        }
    }

    /// True once [`shutdown`](Listener::shutdown) was called or the background task
    /// ended.
    ///
    /// ```no_run
    /// # fn f(listener: pglisten::Listener) {
    /// if listener.is_closed() { /* make a new one */ }
    /// # }
    /// ```
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire) || self.inner.commands.is_closed()
    }

    /// The server process ID of the listener's current connection, or `None` while
    /// disconnected. Notifications the listener sent itself carry this
    /// [`process_id`](crate::Notification::process_id); operators can find the session
    /// in `pg_stat_activity` with it.
    ///
    /// ```no_run
    /// # fn f(listener: pglisten::Listener) {
    /// if let Some(pid) = listener.backend_pid() {
    ///     println!("listening as backend {pid}");
    /// }
    /// # }
    /// ```
    pub fn backend_pid(&self) -> Option<i32> {
        self.inner.status.backend_pid()
    }

    /// Counters and gauges of this listener: what it received, delivered and dropped,
    /// its reconnects, its state, its last heartbeat, and how full the server's
    /// notification queue is. Cheap: reads shared counters, asks nothing of the task.
    ///
    /// ```no_run
    /// # fn f(listener: pglisten::Listener) {
    /// let stats = listener.stats();
    /// println!("{:?}, {} reconnects", stats.state, stats.reconnects);
    /// # }
    /// ```
    pub fn stats(&self) -> Stats {
        self.inner.status.snapshot()
    }

    /// Drops the current connection and connects again at once (also cutting short a
    /// backoff delay while disconnected). Subscriptions see it like any loss:
    /// [`Event::Error`](crate::Event::Error), then [`Event::Reconnected`](crate::Event::Reconnected)
    /// once LISTEN is active again. Useful for operators (after a failover, say) and
    /// for tests.
    ///
    /// Returns once the old connection is closed and the loss has been queued to every
    /// subscription (reconnecting goes on in the background): a notification committed
    /// after this returns falls in the gap, unless it arrives after `Reconnected`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] after shutdown.
    ///
    /// ```no_run
    /// # async fn f(listener: pglisten::Listener) -> pglisten::Result<()> {
    /// listener.reconnect().await?;
    /// # Ok(()) }
    /// ```
    pub async fn reconnect(&self) -> Result<()> {
        self.check_open()?;
        let (done, finished) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Reconnect { done })
            .map_err(|_| Error::closed())?;
        finished.await.map_err(|_| Error::closed())
    }

    /// Asks the server which channels this listener's session is listening to
    /// (`pg_listening_channels()`): the server's truth, useful to check a deployment.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::ConnectionLost`] while disconnected; [`ErrorKind::Closed`] after
    /// shutdown.
    ///
    /// ```no_run
    /// # async fn run(listener: pglisten::Listener) -> pglisten::Result<()> {
    /// let _events = listener.subscribe(["orders"]).await?;
    /// assert_eq!(listener.listening_channels().await?, ["orders"]);
    /// # Ok(()) }
    /// ```
    pub async fn listening_channels(&self) -> Result<Vec<String>> {
        self.check_open()?;
        let (reply, replied) = oneshot::channel();
        self.inner
            .commands
            .send(Command::ListeningChannels { reply })
            .map_err(|_| Error::closed())?;
        replied.await.map_err(|_| {
            Error::new(
                ErrorKind::ConnectionLost,
                "the connection was lost before the server answered",
            )
        })?
    }

    fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            Err(Error::closed())
        } else {
            Ok(())
        }
    }
}

/// Sends a notification through any client or transaction of your own
/// (`SELECT pg_notify(channel, payload)`), with the same validation as
/// [`Listener::notify`]. Inside a transaction, the notification is delivered when the
/// transaction commits, and not at all if it rolls back.
///
/// ```no_run
/// # async fn run(client: &mut tokio_postgres::Client) -> pglisten::Result<()> {
/// let tx = client.transaction().await?;
/// tx.execute("INSERT INTO orders (id) VALUES (42)", &[]).await?;
/// pglisten::notify(&tx, "orders", "42").await?;
/// tx.commit().await?; // listeners receive "42" now
/// # Ok(()) }
/// ```
pub async fn notify<C>(client: &C, channel: &str, payload: &str) -> Result<()>
where
    C: tokio_postgres::GenericClient + Sync,
{
    use tokio_postgres::types::Type;
    validate_channel(channel)?;
    validate_payload(payload)?;
    client
        .execute_typed(
            "SELECT pg_notify($1, $2)",
            &[(&channel, Type::TEXT), (&payload, Type::TEXT)],
        )
        .await
        .map(|_| ())
        .map_err(crate::session::notify_failed)
}
