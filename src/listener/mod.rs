//! [`Listener`], the public handle: it sends commands to the background task and awaits
//! its answers. Its builder is the child module `builder`.

mod builder;

pub use builder::ListenerBuilder;

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use crate::channel::{validate_channel, validate_payload};
use crate::config::ListenerConfig;
use crate::durable::{Cursor, DurableSubscription, Journal, Reader, wake_channel};
use crate::error::{Error, ErrorKind, Result};
use crate::fanout::Mailbox;
use crate::stats::{Stats, Status};
use crate::subscription::Subscription;
use crate::worker::{Background, Command, Request, Started};

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
    config: Arc<ListenerConfig>,
    /// The durable reader, started by the first durable subscription.
    durable: Mutex<Option<Arc<Reader>>>,
    /// Where the durable reader runs: next to the connection's task.
    background: Background,
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

    fn new(started: Started) -> Listener {
        let Started {
            commands,
            status,
            config,
            background,
        } = started;
        let inner = Arc::new(Inner {
            commands,
            status,
            next_id: AtomicU64::new(1),
            queue_capacity: config.queue_capacity,
            closed: AtomicBool::new(false),
            target: config.connect.target().to_owned(),
            config,
            durable: Mutex::new(None),
            background,
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
        let metrics = self.inner.status.metrics().subscription(id, &names);
        let mailbox = Arc::new(Mailbox::with_metrics(self.inner.queue_capacity, metrics));
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
        let subscription = Subscription::new(id, names, mailbox, self.inner.commands.clone());
        match acked.await {
            Ok(Ok(())) => Ok(subscription),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(Error::closed()),
        }
    }

    /// Subscribes to the durable channel `channel` of the journal in the default schema
    /// ([`pglisten::durable`](crate::durable)), starting at `from`: a stream of every
    /// entry in delivery order, each once, with no gap across reconnects, slow
    /// consumers and restarts.
    ///
    /// Returns once the wake-up channel is LISTENed to and the starting point is
    /// settled: with [`Cursor::Now`], every entry of a transaction still running, or not
    /// yet begun, when this returns is delivered. Reads use one extra connection per
    /// listener (opened by the first durable subscription), made and read by a task
    /// that runs where the listener's own task runs (see
    /// [`TaskPlacement`](crate::TaskPlacement)): on the listener's thread, a consumer
    /// that blocks its own thread holds up neither. The wake-up channel
    /// ([`WAKE_PREFIX`](crate::durable::WAKE_PREFIX)` + channel`) is an ordinary
    /// subscription of this listener: [`Listener::listening_channels`] and
    /// [`Listener::stats`] count it. Its queue has the listener's
    /// [`queue_capacity`](ListenerBuilder::queue_capacity).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidChannel`] for a name that is empty, has NUL or is longer than
    /// [`MAX_DURABLE_CHANNEL_BYTES`](crate::durable::MAX_DURABLE_CHANNEL_BYTES);
    /// [`ErrorKind::Pruned`] when `Cursor::After(p)` is before what was pruned;
    /// [`ErrorKind::InvalidPosition`] for a position from the future or another
    /// cluster; [`ErrorKind::Database`] when the journal is not installed; the errors
    /// of connecting; [`ErrorKind::Closed`] after shutdown.
    ///
    /// ```no_run
    /// use futures::StreamExt;
    /// use pglisten::durable::{Cursor, Position};
    ///
    /// # async fn run(listener: pglisten::Listener, stored: Option<Position>) -> pglisten::Result<()> {
    /// let from = stored.map_or(Cursor::Beginning, Cursor::After);
    /// let mut events = listener.subscribe_durable("orders", from).await?;
    /// while let Some(event) = events.next().await {
    ///     if let Some(n) = event.into_notification() {
    ///         println!("{}: {}", n.position().unwrap(), n.payload());
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn subscribe_durable(
        &self,
        channel: &str,
        from: Cursor,
    ) -> Result<DurableSubscription> {
        self.subscribe_durable_in(&Journal::default(), channel, from)
            .await
    }

    /// [`subscribe_durable`](Listener::subscribe_durable) on the journal `journal` (in a
    /// schema of your choice).
    ///
    /// ```no_run
    /// use pglisten::durable::{Cursor, Journal};
    ///
    /// # async fn run(listener: pglisten::Listener) -> pglisten::Result<()> {
    /// let journal = Journal::new("events");
    /// let events = listener.subscribe_durable_in(&journal, "orders", Cursor::Now).await?;
    /// # Ok(()) }
    /// ```
    pub async fn subscribe_durable_in(
        &self,
        journal: &Journal,
        channel: &str,
        from: Cursor,
    ) -> Result<DurableSubscription> {
        let wake_name = wake_channel(channel)?;
        self.check_open()?;
        let reader = self.durable_reader();
        let wake = self.subscribe([wake_name]).await?;
        reader.subscribe(journal, channel, from, wake).await
    }

    fn durable_reader(&self) -> Arc<Reader> {
        let mut slot = self
            .inner
            .durable
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(reader) = &*slot {
            return reader.clone();
        }
        let (reader, task) = Reader::new(self.inner.config.clone());
        self.inner.background.spawn(task);
        let reader = Arc::new(reader);
        *slot = Some(reader.clone());
        reader
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
        let command = Command::Request(Request::Notify {
            channel: channel.to_owned(),
            payload: payload.to_owned(),
            reply,
        });
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
        // The durable reader ends (and closes its connection) once its subscriptions,
        // which the shutdown just ended, are gone.
        let reader = self
            .inner
            .durable
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        drop(reader);
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
            .send(Command::Request(Request::ListeningChannels { reply }))
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
