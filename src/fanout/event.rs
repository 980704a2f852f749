//! What a [`Subscription`](crate::Subscription) yields.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[cfg(test)]
use super::block::Block;
use super::block::{Locator, Share};
use crate::error::Error;

/// One item of a [`Subscription`](crate::Subscription) stream.
///
/// Only [`Event::Notification`] carries data. The others are facts about the stream:
/// treat [`Event::Reconnected`] and [`Event::Lagged`] as "something may have been missed:
/// reload your state", and [`Event::Error`] as information (the stream keeps going).
///
/// ```
/// use pglisten::Event;
///
/// fn handle(event: Event) {
///     match event {
///         Event::Notification(n) => println!("{}: {}", n.channel(), n.payload()),
///         Event::Reconnected(_) | Event::Lagged(_) => println!("gap: reload everything"),
///         Event::Error(e) => eprintln!("listener trouble: {e}"),
///         _ => {} // future variants
///     }
/// }
/// # let _ = handle;
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A notification on one of the subscription's channels.
    Notification(Notification),
    /// The connection was lost (or this subscription was made while disconnected) and
    /// LISTEN is active again on a new connection. Notifications sent during the gap are
    /// gone: reload your state. Nothing sent after this event is missed.
    Reconnected(ReconnectReport),
    /// This subscription's queue was full, so this many notifications were dropped.
    /// Resynchronise your state. The count is exact.
    Lagged(u64),
    /// Something went wrong (for example, the connection was lost or a reconnect attempt
    /// failed). The stream goes on; a gap is always followed by [`Event::Reconnected`].
    Error(Error),
}

impl Event {
    /// The notification, if this is one.
    ///
    /// ```
    /// use futures::StreamExt;
    /// # async fn run(subscription: pglisten::Subscription) {
    /// let payloads = subscription.filter_map(|e| async move {
    ///     e.into_notification().map(|n| n.payload().to_owned())
    /// });
    /// futures::pin_mut!(payloads);
    /// while let Some(payload) = payloads.next().await {
    ///     println!("{payload}");
    /// }
    /// # }
    /// ```
    pub fn into_notification(self) -> Option<Notification> {
        match self {
            Event::Notification(n) => Some(n),
            _ => None,
        }
    }

    /// True for [`Event::Reconnected`] and [`Event::Lagged`]: notifications may have been
    /// missed before this point, so state derived from them must be rebuilt.
    ///
    /// ```
    /// assert!(pglisten::Event::Lagged(3).is_gap());
    /// ```
    pub fn is_gap(&self) -> bool {
        matches!(self, Event::Reconnected(_) | Event::Lagged(_))
    }
}

/// A notification received from PostgreSQL.
///
/// Cheap to clone (a reference count): a notification delivered to several
/// subscriptions is stored once. It shares its storage with the other notifications
/// received in the same read (up to 128 notifications, about 16 KiB of payloads): if
/// you keep notifications for a long time, keep the strings you need
/// (`payload().to_owned()`) rather than the `Notification`.
///
/// ```
/// # fn show(n: &pglisten::Notification) {
/// println!("{} from backend {}: {}", n.channel(), n.process_id(), n.payload());
/// # }
/// ```
#[derive(Clone)]
pub struct Notification {
    block: Share,
    at: Locator,
}

// Two words on purpose: fan-out stages one `Notification` per delivery, and a larger one
// made fan-out to many subscriptions slower per delivery, the staged batch no longer
// fitting in cache (BENCHMARKS.md, "How the hot path got here", tried and not kept).
const _: () = assert!(std::mem::size_of::<Notification>() == 16);

impl Notification {
    /// Notification `index` of the block shared through `block`.
    pub(crate) fn in_block(block: Share, index: u32) -> Self {
        let at = block.locate(index);
        Notification { block, at }
    }

    /// The notification at `at` in the block shared through `block`.
    #[inline]
    pub(crate) fn located(block: Share, at: Locator) -> Self {
        Notification { block, at }
    }

    /// How many notifications share this one's storage.
    #[cfg(test)]
    pub(crate) fn block_len(&self) -> usize {
        self.block.len()
    }

    #[cfg(test)]
    pub(crate) fn durable_for_tests(
        channel: &str,
        payload: &str,
        position: crate::position::Position,
    ) -> Self {
        let mut builder = super::block::BlockBuilder::default();
        builder.push_durable(0, &Arc::from(channel), payload, position);
        Notification::in_block(Arc::new(builder.seal()), 0)
    }

    #[cfg(test)]
    pub(crate) fn for_tests(channel: &str, payload: &str) -> Self {
        Notification::in_block(Arc::new(Block::single(0, channel, payload)), 0)
    }

    /// The channel it was sent on, exactly as named in `NOTIFY` (case is kept).
    ///
    /// ```
    /// # fn f(n: pglisten::Notification) {
    /// if n.channel() == "orders" { /* ... */ }
    /// # }
    /// ```
    #[inline]
    pub fn channel(&self) -> &str {
        self.block.channel_at(self.at)
    }

    /// The payload (empty when none was given).
    ///
    /// ```
    /// # fn f(n: pglisten::Notification) {
    /// let id: Option<i64> = n.payload().parse().ok();
    /// # }
    /// ```
    #[inline]
    pub fn payload(&self) -> &str {
        self.block.payload_at(self.at)
    }

    /// The process ID of the server backend that sent it. Compare with
    /// [`Listener::backend_pid`](crate::Listener::backend_pid) to recognise your own
    /// notifications.
    ///
    /// ```
    /// # fn f(n: pglisten::Notification, listener: pglisten::Listener) {
    /// let mine = Some(n.process_id()) == listener.backend_pid();
    /// # }
    /// ```
    #[inline]
    pub fn process_id(&self) -> i32 {
        self.block.process_id(self.at.index.into())
    }

    /// When the listener read it from the connection (the wall clock, read once per
    /// read batch, so notifications received together share one time). Compare it with
    /// a time the sender put in the payload, or with the time you handle it, to watch
    /// delivery lag.
    ///
    /// ```
    /// # fn f(n: pglisten::Notification) {
    /// let waited = n.received_at().elapsed().unwrap_or_default();
    /// if waited > std::time::Duration::from_secs(1) {
    ///     eprintln!("this consumer is {waited:?} behind");
    /// }
    /// # }
    /// ```
    #[inline]
    pub fn received_at(&self) -> SystemTime {
        self.block.received_at()
    }

    /// The entry's place in its durable channel's delivery order, for notifications of a
    /// [durable subscription](crate::Listener::subscribe_durable); `None` for plain
    /// notifications. Store it to resume after it with
    /// [`Cursor::After`](crate::durable::Cursor::After).
    ///
    /// ```
    /// # fn f(n: pglisten::Notification) {
    /// if let Some(position) = n.position() {
    ///     println!("entry {position}: {}", n.payload());
    /// }
    /// # }
    /// ```
    #[inline]
    pub fn position(&self) -> Option<crate::position::Position> {
        self.block.position(self.at.index.into())
    }
}

impl fmt::Debug for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = f.debug_struct("Notification");
        shown
            .field("channel", &self.channel())
            .field("payload", &self.payload())
            .field("process_id", &self.process_id())
            .field("received_at", &self.received_at());
        if let Some(position) = self.position() {
            shown.field("position", &position);
        }
        shown.finish()
    }
}

/// What [`Event::Reconnected`] reports about the gap that just ended.
///
/// ```
/// # fn f(report: pglisten::ReconnectReport) {
/// println!("back after {:?} and {} attempt(s)", report.downtime(), report.attempts());
/// # }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ReconnectReport {
    // Boxed so that `Event` stays three words: every notification is moved as an
    // `Event` on its way to the consumer.
    inner: Box<ReportInner>,
}

#[derive(Clone, PartialEq, Eq)]
struct ReportInner {
    downtime: Duration,
    attempts: u32,
    host: Arc<str>,
}

const _: () = assert!(std::mem::size_of::<Event>() == 24);

impl ReconnectReport {
    pub(crate) fn new(downtime: Duration, attempts: u32) -> Self {
        ReconnectReport {
            inner: Box::new(ReportInner {
                downtime,
                attempts,
                host: Arc::from(""),
            }),
        }
    }

    pub(crate) fn with_host(mut self, host: Arc<str>) -> Self {
        self.inner.host = host;
        self
    }

    /// The server the listener reached, as `host:port` from the connection string (for
    /// example `"db2.example.com:5432"` or `"127.0.0.1:5432"`): with several hosts,
    /// this says which one is the primary now.
    ///
    /// ```
    /// # fn f(report: pglisten::ReconnectReport) {
    /// println!("listening again on {}", report.host());
    /// # }
    /// ```
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    /// How long LISTEN was not active for this subscription: from the loss of the
    /// connection (or from the moment the subscription was made) until LISTEN was active
    /// again.
    ///
    /// ```
    /// # fn f(report: pglisten::ReconnectReport) {
    /// if report.downtime() > std::time::Duration::from_secs(60) { /* alert */ }
    /// # }
    /// ```
    pub fn downtime(&self) -> Duration {
        self.inner.downtime
    }

    /// How many connection attempts the gap took (at least 1).
    ///
    /// ```
    /// # fn f(report: pglisten::ReconnectReport) {
    /// assert!(report.attempts() >= 1);
    /// # }
    /// ```
    pub fn attempts(&self) -> u32 {
        self.inner.attempts
    }

    /// Combines two announcements that a lagging consumer had not read yet into one
    /// covering both gaps.
    pub(crate) fn merge(&mut self, later: &ReconnectReport) {
        let (this, later) = (&mut *self.inner, &*later.inner);
        this.downtime += later.downtime;
        this.attempts = this.attempts.saturating_add(later.attempts);
        this.host = later.host.clone();
    }
}

impl fmt::Debug for ReconnectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReconnectReport")
            .field("downtime", &self.downtime())
            .field("attempts", &self.attempts())
            .field("host", &self.host())
            .finish()
    }
}

/// `{"channel", "payload", "process_id", "received_at"}`, the time as serde writes a
/// `SystemTime` (`{"secs_since_epoch": .., "nanos_since_epoch": ..}`).
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
impl serde::Serialize for Notification {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = serializer.serialize_struct("Notification", 4)?;
        out.serialize_field("channel", self.channel())?;
        out.serialize_field("payload", self.payload())?;
        out.serialize_field("process_id", &self.process_id())?;
        out.serialize_field("received_at", &self.received_at())?;
        out.end()
    }
}

/// `{"host", "downtime", "attempts"}`, the downtime as serde writes a `Duration`
/// (`{"secs": .., "nanos": ..}`).
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
impl serde::Serialize for ReconnectReport {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = serializer.serialize_struct("ReconnectReport", 3)?;
        out.serialize_field("host", self.host())?;
        out.serialize_field("downtime", &self.downtime())?;
        out.serialize_field("attempts", &self.attempts())?;
        out.end()
    }
}

#[cfg(all(test, feature = "serde"))]
mod tests {
    use super::*;

    #[test]
    fn notifications_and_reports_serialize_every_field() {
        let n = Notification::for_tests("orders", "42");
        let json = serde_json::to_value(&n).unwrap();
        assert_eq!(json["channel"], "orders");
        assert_eq!(json["payload"], "42");
        assert_eq!(json["process_id"], 0);
        let at = n
            .received_at()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        assert_eq!(json["received_at"]["secs_since_epoch"], at.as_secs());
        assert_eq!(json["received_at"]["nanos_since_epoch"], at.subsec_nanos());

        let report =
            ReconnectReport::new(Duration::from_millis(1500), 3).with_host(Arc::from("db:5432"));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "host": "db:5432",
                "downtime": { "secs": 1, "nanos": 500_000_000 },
                "attempts": 3
            })
        );
    }
}
