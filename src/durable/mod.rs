//! Durable channels: a stream with no gap at all, in a commit-safe order, across
//! reconnects, slow consumers and restarts, and with no payload limit.
//!
//! Plain LISTEN/NOTIFY is at-most-once: what is sent while a listener is disconnected,
//! or while its queue is full, is gone. A durable channel keeps its entries in a table,
//! the *journal*, and uses NOTIFY only to wake its subscribers; a subscription reads the
//! journal from its last position, so after any gap it catches up instead of announcing
//! the gap.
//!
//! ```no_run
//! use futures::StreamExt;
//! use pglisten::durable::{self, Cursor};
//! use pglisten::{Event, Listener};
//!
//! # async fn run(client: &mut pglisten::tokio_postgres::Client) -> pglisten::Result<()> {
//! durable::install(&*client).await?; // once: creates the schema `pglisten`
//!
//! let listener = Listener::connect("postgres://app@localhost/app").await?;
//! let mut events = listener.subscribe_durable("orders", Cursor::Beginning).await?;
//!
//! let tx = client.transaction().await?;
//! tx.execute("UPDATE orders SET status = 'paid' WHERE id = 42", &[]).await?;
//! durable::publish(&tx, "orders", r#"{"id": 42}"#).await?; // delivered if it commits
//! tx.commit().await?;
//!
//! while let Some(event) = events.next().await {
//!     if let Event::Notification(n) = event {
//!         println!("{} at {:?}", n.payload(), n.position()); // store the position to resume
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # The journal
//!
//! [`install`] creates, in the schema `pglisten` (or another: [`Journal::new`]), a table
//! with one row per entry: its sequence number, channel, payload (`text`, no limit but
//! PostgreSQL's), the *top-level* id of the publishing transaction
//! (`pg_current_xact_id()`, also inside a savepoint), the publisher's backend pid and
//! `clock_timestamp()`. [`publish`] inserts a row and sends an empty `NOTIFY` on the
//! channel [`WAKE_PREFIX`]` + name`. Inside your transaction, the entry exists only if
//! the transaction commits.
//!
//! # Order, and what holds it back
//!
//! Entries are delivered in the order of their [`Position`]: (transaction id, sequence
//! number). Sequence numbers are assigned at insert, but transactions commit in another
//! order; so an entry is delivered only when its transaction id is below the `xmin` of
//! the snapshot that reads it (taken in the same statement that reads the entries, by a
//! reader that holds no transaction id): every transaction that could still add an
//! entry before it has ended. A transaction that commits late is therefore never
//! skipped, and nothing is ever delivered before an entry delivered already.
//!
//! The price, plainly: **any transaction holding a transaction id anywhere in the
//! cluster holds back every durable channel** until it ends: in any database, a
//! prepared transaction, a session left idle in a transaction that wrote something. Set
//! `idle_in_transaction_session_timeout`, and watch [`DurableStats::held_back`] (with
//! the id of the transaction holding entries back). A consumer that keeps its own
//! writing transaction open while it waits for the next entry waits for ever: commit
//! before waiting (the `outbox` example does). While entries are held back, the
//! subscription reads again every [`durable_retry`](crate::ListenerBuilder::durable_retry)
//! (a transaction that ends without publishing sends no wake-up).
//!
//! # Reading
//!
//! The listener LISTENs on the wake-up channels; each wake-up makes the subscriptions of
//! that channel read the journal. Reads run on one extra connection that the listener
//! keeps for all its durable subscriptions, in batches bounded by entries and by bytes,
//! their rows handed to the consumer as they arrive; subscriptions of one channel at
//! the same position share one read, and the reads of different positions are sent
//! together. Nothing is read while nothing happens. Each subscription has a bounded
//! queue ([`queue_capacity`](crate::ListenerBuilder::queue_capacity)); a slow consumer
//! is never dropped entries (there is no `Lagged`): the reader waits until it has room
//! and reads again from its last position. After a reconnect, the same.
//!
//! # Restarts and exactly-once
//!
//! [`Cursor::After`] with a stored position gives every entry after it exactly once.
//! For exactly-once processing, store the position in the same transaction as the
//! effect of the entry, and resume from it (see `examples/outbox.rs`).
//!
//! # Retention
//!
//! Entries stay until [`prune`]d. A subscription whose cursor is before what was pruned
//! gets [`ErrorKind::Pruned`](crate::ErrorKind::Pruned) and ends;
//! [`Cursor::Beginning`] never does.
//!
//! # Safety
//!
//! A stored position is checked against the server: one from the future (a
//! transaction that has not started yet) or with a journal installed on another cluster
//! (a dump restored elsewhere starts transaction ids again) is refused with
//! [`ErrorKind::InvalidPosition`](crate::ErrorKind::InvalidPosition). Durable delivery
//! assumes what is committed stays committed: keep `synchronous_commit` on, and use
//! synchronous replication if a failover must not lose entries that were delivered.

mod journal;
mod reader;
mod stream;

pub use crate::position::{Cursor, Position};
pub(crate) use journal::wake_channel;
pub use journal::{DEFAULT_SCHEMA, Journal, MAX_DURABLE_CHANNEL_BYTES, WAKE_PREFIX};
pub(crate) use reader::Reader;
pub use stream::{DurableStats, DurableSubscription};

use std::time::Duration;

use tokio_postgres::GenericClient;

use crate::error::Result;

/// [`Journal::install`] for the schema [`DEFAULT_SCHEMA`] (`pglisten`).
///
/// ```no_run
/// # async fn run(client: &pglisten::tokio_postgres::Client) -> pglisten::Result<()> {
/// pglisten::durable::install(client).await?;
/// # Ok(()) }
/// ```
pub async fn install<C>(client: &C) -> Result<()>
where
    C: GenericClient + Sync,
{
    Journal::default().install(client).await
}

/// [`Journal::publish`] in the schema [`DEFAULT_SCHEMA`] (`pglisten`).
///
/// ```no_run
/// # async fn run(client: &pglisten::tokio_postgres::Client) -> pglisten::Result<()> {
/// let position = pglisten::durable::publish(client, "orders", "42").await?;
/// # Ok(()) }
/// ```
pub async fn publish<C>(client: &C, channel: &str, payload: &str) -> Result<Position>
where
    C: GenericClient + Sync,
{
    Journal::default().publish(client, channel, payload).await
}

/// [`Journal::prune`] in the schema [`DEFAULT_SCHEMA`] (`pglisten`).
///
/// ```no_run
/// # async fn run(client: &pglisten::tokio_postgres::Client) -> pglisten::Result<()> {
/// use std::time::Duration;
/// pglisten::durable::prune(client, Duration::from_secs(24 * 3600)).await?;
/// # Ok(()) }
/// ```
pub async fn prune<C>(client: &C, older_than: Duration) -> Result<Option<Position>>
where
    C: GenericClient + Sync,
{
    Journal::default().prune(client, older_than).await
}
