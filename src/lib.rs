//! PostgreSQL LISTEN/NOTIFY as a [`Stream`](futures::Stream) of events that never hides
//! a gap.
//!
//! A [`Listener`] owns one connection, driven by a background tokio task. Each
//! [`Listener::subscribe`] returns a [`Subscription`]: a stream of [`Event`]s for its
//! channels, with its own bounded queue. The connection is always read, whatever the
//! consumers do; it is re-established by itself after any loss, and every gap is
//! announced.
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
//! [`Event::Error`]; streams never end because of a connection problem. The backoff
//! starts over once LISTEN is active again.
//!
//! # Backpressure and `Lagged`
//!
//! A subscription that falls more than its queue capacity behind loses the overflow and
//! is told how much with [`Event::Lagged`]. Unread control events are coalesced, so even
//! a forgotten subscription holds a bounded amount of memory.
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
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

mod backoff;
mod channel;
mod connect;
mod conninfo;
mod error;
mod event;
mod listener;
mod mailbox;
mod registry;
mod subscription;
#[cfg(feature = "tls")]
mod tls;
mod worker;

pub use backoff::Backoff;
pub use channel::{MAX_CHANNEL_BYTES, MAX_PAYLOAD_BYTES};
pub use connect::Credentials;
pub use error::{Error, ErrorKind, Result};
pub use event::{Event, Notification, ReconnectReport};
pub use listener::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_QUEUE_CAPACITY, Listener, ListenerBuilder, notify,
};
pub use subscription::Subscription;

/// The driver pglisten is built on, re-exported so that you name the exact version its
/// types (such as the clients accepted by [`notify`]) come from.
pub use tokio_postgres;

/// The TLS library pglisten uses (with the `ring` crypto provider), re-exported for
/// [`ListenerBuilder::tls_config`].
#[cfg(feature = "tls")]
pub use rustls;
