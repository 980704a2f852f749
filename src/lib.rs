//! PostgreSQL LISTEN/NOTIFY as a [`Stream`](futures::Stream) of events that never hides
//! a gap.
//!
//! A [`Listener`] owns one connection, driven by a background tokio task. Each
//! [`Listener::subscribe`] returns a [`Subscription`]: a stream of [`Event`]s for its
//! channels, with its own bounded queue. The connection is always read, whatever the
//! consumers do; it is re-established by itself after any loss, and every gap is
//! announced.
//!
//! ```toml
//! [dependencies]
//! pglisten = "0.1"   # features: tls (default), serde, metrics; Rust 1.88 or later
//! ```
//!
//! # Quick start
//!
//! ```no_run
//! use futures::StreamExt;
//! use pglisten::{Event, Listener};
//!
//! # async fn reload_everything() {}
//! # fn apply(_: &str, _: &str) {}
//! # async fn run() -> pglisten::Result<()> {
//! let listener = Listener::connect("postgres://app@localhost/app").await?;
//! let mut events = listener.subscribe(["orders", "prices"]).await?; // LISTEN is active
//! reload_everything().await; // load state *after* subscribing: nothing is missed
//! while let Some(event) = events.next().await {
//!     match event {
//!         Event::Notification(n) => apply(n.channel(), n.payload()),
//!         Event::Reconnected(_) | Event::Lagged(_) => reload_everything().await, // a gap
//!         Event::Error(e) => eprintln!("listener trouble: {e}"), // it keeps going
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Delivery semantics
//!
//! 1. [`Listener::subscribe`] returns only after the server acknowledged LISTEN for
//!    every channel: a NOTIFY committed after it returns is delivered.
//! 2. Delivery is at-most-once between gaps, and every gap is announced. When the
//!    connection is lost, every subscription receives [`Event::Error`] (kind
//!    [`ErrorKind::ConnectionLost`]); the listener reconnects with backoff, LISTENs again,
//!    and only then sends [`Event::Reconnected`], before any notification from the new
//!    connection. A consumer that reloads its state on `Reconnected` misses nothing.
//! 3. The connection is always drained: a slow consumer never makes the listener stop
//!    reading (a client that stops reading pins the server's notification queue, which
//!    can make `NOTIFY` fail for the whole cluster). Each subscription buffers at most
//!    [`ListenerBuilder::queue_capacity`] notifications; beyond that they are dropped and
//!    counted, and the subscription yields [`Event::Lagged`] with the exact count before
//!    anything queued after the drop.
//! 4. `Reconnected` and `Lagged` are never lost, even when the queue is full.
//! 5. A consumer that blocks its thread does not stop the connection from being read:
//!    on a multi-thread runtime (or outside any runtime) the connection's task runs on a
//!    thread of its own. On a current-thread runtime it shares your thread by default, and
//!    a consumer that blocks it stops everything; see [`TaskPlacement`].
//! 6. [`Listener::shutdown`] delivers every notification that had reached the listener's
//!    socket when it was called, then ends every stream.
//!
//! For what must not be missed, [durable channels](durable) go further: entries are
//! kept in a journal table and a [`Listener::subscribe_durable`] stream has no gap at
//! all, across reconnects, slow consumers and restarts, in a commit-safe order.
//!
//! Facts of the server worth knowing:
//!
//! - Notifications are delivered when the sending transaction commits, in commit order;
//!   a rolled-back transaction sends nothing.
//! - Within one transaction the server may merge notifications with identical channel
//!   and payload into one.
//! - Payloads must be shorter than 8000 bytes. Channel names are identifiers of at most
//!   63 bytes; the server silently truncates longer names on LISTEN, so pglisten refuses
//!   them ([`ErrorKind::InvalidChannel`]) instead.
//! - A session receives its own notifications: [`Listener::notify`] reaches the
//!   listener's own subscriptions. Compare [`Notification::process_id`] with
//!   [`Listener::backend_pid`] to tell them apart.
//!
//! # Reconnects and gaps
//!
//! The first attempt after a loss is immediate, then delays grow exponentially with full
//! jitter up to a cap ([`Backoff`]). Each failed attempt is reported as an
//! [`Event::Error`]; streams never end because of a connection problem (unless you set
//! a give-up policy with [`Backoff::max_attempts`] or [`Backoff::give_up_after`]). The
//! backoff starts over once LISTEN is active again. [`Listener::reconnect`] forces a
//! reconnect.
//!
//! A subscription made while the listener is disconnected (or before
//! [`ListenerBuilder::connect_lazy`] first connects) is registered at once and starts
//! with `Reconnected` when LISTEN becomes active.
//!
//! # Backpressure and `Lagged`
//!
//! A subscription that falls more than its queue capacity behind loses the overflow and
//! is told how much with [`Event::Lagged`], so memory stays bounded however slow a
//! consumer is, and other subscriptions are never delayed by it. Unread control events
//! are coalesced, so even a forgotten subscription holds a bounded amount of memory.
//! Size the queue for your largest expected burst ([`ListenerBuilder::queue_capacity`],
//! default [`DEFAULT_QUEUE_CAPACITY`]); treat `Lagged` like `Reconnected`: resync.
//!
//! # Dead connections
//!
//! A LISTEN connection is idle most of its life, which is exactly when networks drop
//! connections silently: a NAT or cloud proxy forgets the mapping, a failover moves the
//! address. The socket then looks healthy for hours. pglisten sends a heartbeat every
//! [`DEFAULT_HEARTBEAT_INTERVAL`] and declares the connection dead when one takes longer
//! than [`DEFAULT_HEARTBEAT_TIMEOUT`] ([`ListenerBuilder::heartbeat`]), then reconnects.
//! The same round trip checks `pg_listening_channels()`, so a registration lost behind
//! the listener's back is repaired and announced with `Reconnected`. TCP keepalives and
//! `TCP_USER_TIMEOUT` are set to agree with the heartbeat, every connection attempt
//! (TCP, TLS, authentication, first LISTEN) is bounded by
//! [`ListenerBuilder::connect_timeout`], and the session's `idle_session_timeout` is
//! turned off (PostgreSQL 14+).
//!
//! # TLS and managed databases
//!
//! Connection strings are read as libpq reads them, in URL or key=value form, including
//! `sslmode` (`disable`, `allow`, `prefer` (the default), `require`, `verify-ca`,
//! `verify-full`), `sslrootcert` (a PEM file or `system`), `sslcert`/`sslkey` and
//! `channel_binding`, over rustls with an explicitly chosen crypto provider. Several
//! hosts are tried in order and a standby is refused. For short-lived credentials (cloud
//! IAM tokens), [`ListenerBuilder::credentials`] is called before every connection
//! attempt. The full list of keys and their meaning is on [`ListenerBuilder`].
//! TLS problems are errors of kind [`ErrorKind::Tls`] that say what to fix.
//!
//! ```no_run
//! # async fn run() -> pglisten::Result<()> {
//! let listener = pglisten::Listener::connect(
//!     "postgres://app@db.example.com/app?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem",
//! )
//! .await?;
//! # Ok(()) }
//! ```
//!
//! # Poolers and replicas
//!
//! LISTEN needs a session of its own: connect directly, or through a pooler in *session*
//! mode. Behind a pooler in transaction or statement mode (PgBouncer, RDS Proxy,
//! Supavisor's transaction port) LISTEN succeeds but notifications never arrive; every
//! connection therefore proves, before it is used, that a NOTIFY from another session
//! reaches it, and [`Listener::connect`] fails with a clear [`ErrorKind::Config`] error
//! when it does not ([`ListenerBuilder::self_check`]). LISTEN cannot run on a hot
//! standby: point the listener at the primary (notifications are not replicated).
//!
//! # Observability
//!
//! Every state change is logged through [`tracing`](https://docs.rs/tracing) under the
//! `pglisten` target (connecting, listening, lost, backing off with the delay, lag
//! episodes once when they start and once when they end, never per message).
//! [`Listener::stats`] returns counters and gauges, including the server's
//! `pg_notification_queue_usage()` sampled with each heartbeat; a warning is logged when
//! it passes [`QUEUE_USAGE_WARNING`], because when the queue is full every NOTIFY in the
//! cluster fails.
//!
//! # Fitting into your application
//!
//! - [`ListenerBuilder::from_config`] takes the `tokio_postgres::Config` your pool is built
//!   from; [`ListenerBuilder::connect_with`] takes your own function that opens each
//!   connection.
//! - [`notify`], [`notify_many`] and `notify_json` send through your own client or
//!   transaction. To send through another client library (sqlx, diesel-async), check
//!   with [`Channel::new`] and [`validate_payload`] (the same errors as `notify`), then
//!   run `SELECT pg_notify($1, $2)`; [`Channel`] shows both.
//! - [`Subscription::stats`] and [`Notification::received_at`] tell how each consumer
//!   keeps up.
//!
//! **The commit lock.** A transaction that sent notifications takes one cluster-wide
//! lock while it commits, so that notifications are queued in commit order: producers
//! that notify in many small transactions commit one at a time. Send many
//! notifications per transaction, and many per statement with [`notify_many`].
//!
//! # Security
//!
//! Any role that can connect to a database can NOTIFY and LISTEN on any channel of it;
//! payloads are not authenticated; channel names are visible to other sessions (the
//! statements show in `pg_stat_activity`, and whoever learns a name can LISTEN to it
//! and read its payloads). Treat a
//! notification as a hint to re-read data the role can see, never as a command, and keep
//! secrets out of channel names and payloads. pglisten quotes channel names as
//! identifiers and sends payloads as parameters (no SQL injection), and shows no
//! password, key or token in `Debug`, `Display`, errors or logs.
//!
//! # Metrics
//!
//! With the `metrics` feature, every listener publishes its figures through the
//! [`metrics`](https://docs.rs/metrics) facade, to whatever recorder your application
//! installed (a Prometheus exporter, OpenTelemetry, StatsD...). Install the recorder
//! before building the listener: handles registered earlier go nowhere.
//! `examples/metrics.rs` serves them to Prometheus.
//!
//! Every metric has the label `listener` ([`ListenerBuilder::metrics_label`], default
//! `"default"`); a subscription's also have `subscription` (a number, in the order the
//! listener's subscriptions were made, from 1) and `channels` (its channel names joined
//! by `,`, cut after 200 bytes).
//!
//! | name | kind | what |
//! |---|---|---|
//! | `pglisten_notifications_received_total` | counter | notifications read from the server, once each |
//! | `pglisten_notifications_delivered_total` | counter | notifications queued for subscriptions, one per subscriber |
//! | `pglisten_notifications_dropped_total` | counter | notifications dropped because a subscription's queue was full |
//! | `pglisten_reconnects_total` | counter | connections re-established after a loss, LISTEN active again |
//! | `pglisten_listening` | gauge | 1 while LISTEN is active for every wanted channel, else 0 |
//! | `pglisten_subscriptions` | gauge | live subscriptions |
//! | `pglisten_channels` | gauge | channels LISTENed to on the current connection |
//! | `pglisten_heartbeat_rtt_seconds` | gauge | round trip of the last heartbeat |
//! | `pglisten_server_queue_usage_ratio` | gauge | `pg_notification_queue_usage()` at the last heartbeat, 0 to 1 |
//! | `pglisten_subscription_queued` | gauge | notifications waiting in a subscription's queue |
//! | `pglisten_subscription_lagged_total` | counter | notifications a subscription lost because its queue was full |
//!
//! The counters move once per read from the connection, never per notification. A
//! subscription's queue length is published at every heartbeat and whenever it drops
//! notifications, and set to 0 when the subscription is dropped (the series stays in
//! the exporter: use its idle timeout to forget it). For a consumer's own view, without
//! the feature, see [`Subscription::stats`] and [`Listener::stats`].
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `tls` | on | TLS over rustls with the ring provider: `sslmode`, `sslrootcert`, client certificates, channel binding, [`ListenerBuilder::tls_config`]; re-exports `rustls`. Without it, a connection string that demands TLS is an [`ErrorKind::Config`] error. |
//! | `serde` | off | JSON payloads (`Notification::json`, `Listener::notify_json`, `pglisten::notify_json`; the 8000-byte limit is checked on the encoded bytes), and `Serialize` for [`Notification`], [`ReconnectReport`], [`Stats`] and [`SubscriptionStats`]. |
//! | `metrics` | off | the figures above through the `metrics` facade, and `ListenerBuilder::metrics_label`. |
//!
//! Items that need a feature are marked with it in these docs.
//!
//! # Example: notify inside your own transaction
//!
//! ```no_run
//! # async fn run(client: &mut tokio_postgres::Client) -> pglisten::Result<()> {
//! let tx = client.transaction().await?;
//! pglisten::notify(&tx, "orders", "42").await?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
// As tokio: doc tests deny warnings, except that an example may define a function it
// does not call, or a binding it does not use.
#![doc(test(attr(deny(warnings, rust_2018_idioms), allow(dead_code, unused_variables))))]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

// Layers, top to bottom; a module imports only from its own layer or the ones below
// (CONTRIBUTING.md shows the graph; tests/it/layout.rs checks it).
//   handles:        listener (+ listener::builder), subscription, notify, durable
//   the task:       worker
//   configuration:  config
//   below the task: connect (reaching the server), fanout (routing to queues)
//   foundations:    error, stats, telemetry, channel, backoff, heartbeat, random, position
pub mod durable;
mod listener;
mod notify;
mod subscription;

mod worker;

mod config;

mod connect;
mod fanout;

mod backoff;
mod channel;
mod error;
mod heartbeat;
mod position;
mod random;
mod stats;
mod telemetry;

pub use backoff::Backoff;
pub use channel::{
    Channel, MAX_CHANNEL_BYTES, MAX_PAYLOAD_BYTES, validate_channel, validate_payload,
};
pub use config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_DURABLE_RETRY, DEFAULT_QUEUE_CAPACITY, TaskPlacement,
};
pub use connect::Credentials;
pub use error::{Error, ErrorKind, Result};
pub use fanout::{Event, Notification, ReconnectReport};
pub use heartbeat::{DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_TIMEOUT, QUEUE_USAGE_WARNING};
pub use listener::{Listener, ListenerBuilder};
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
pub use notify::notify_json;
pub use notify::{notify, notify_many};
pub use stats::{ListenerState, Stats, SubscriptionStats};
pub use subscription::Subscription;

/// The README's code, compiled and checked as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// The driver pglisten is built on, re-exported so that you name the exact version its
/// types (such as the clients accepted by [`notify`]) come from.
pub use tokio_postgres;

/// The TLS library pglisten uses (with the `ring` crypto provider), re-exported for
/// [`ListenerBuilder::tls_config`].
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use rustls;
