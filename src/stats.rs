//! [`Stats`]: what a [`Listener`](crate::Listener) has done and how its connection is,
//! read without asking the background task.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::telemetry::ListenerMetrics;

/// Where the background task is in its life.
///
/// ```
/// # fn f(listener: pglisten::Listener) {
/// if listener.stats().state != pglisten::ListenerState::Listening {
///     eprintln!("not listening right now");
/// }
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum ListenerState {
    /// Opening a connection.
    Connecting,
    /// Connected; sending LISTEN for every wanted channel.
    Syncing,
    /// LISTEN is active for every wanted channel.
    Listening,
    /// Waiting before the next connection attempt.
    BackingOff,
    /// Shut down, gave up, or every handle was dropped.
    Closed,
}

impl ListenerState {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => ListenerState::Connecting,
            1 => ListenerState::Syncing,
            2 => ListenerState::Listening,
            3 => ListenerState::BackingOff,
            _ => ListenerState::Closed,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            ListenerState::Connecting => 0,
            ListenerState::Syncing => 1,
            ListenerState::Listening => 2,
            ListenerState::BackingOff => 3,
            ListenerState::Closed => 4,
        }
    }
}

/// A snapshot of a listener's counters and gauges, from [`Listener::stats`].
///
/// [`Listener::stats`]: crate::Listener::stats
///
/// ```no_run
/// # fn f(listener: pglisten::Listener) {
/// let stats = listener.stats();
/// println!(
///     "{:?}: {} received, {} delivered, {} dropped to lag, {} reconnects",
///     stats.state,
///     stats.notifications_received,
///     stats.notifications_delivered,
///     stats.notifications_dropped,
///     stats.reconnects,
/// );
/// if stats.server_queue_usage.is_some_and(|usage| usage > 0.5) {
///     eprintln!("a listener somewhere in the cluster is stuck");
/// }
/// # }
/// ```
///
/// With the `serde` feature it implements `Serialize` (durations as serde writes a
/// `Duration`: `{"secs": .., "nanos": ..}`; the state as its name).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Stats {
    /// What the task is doing now.
    pub state: ListenerState,
    /// Notifications read from the server (once each, whatever the number of
    /// subscribers).
    pub notifications_received: u64,
    /// Notifications queued for subscriptions (one per subscriber).
    pub notifications_delivered: u64,
    /// Notifications dropped because a subscription's queue was full (each reported to
    /// its subscription as [`Event::Lagged`](crate::Event::Lagged)).
    pub notifications_dropped: u64,
    /// Connections re-established after a loss (with LISTEN active again).
    pub reconnects: u64,
    /// Live subscriptions.
    pub subscriptions: usize,
    /// Channels LISTENed to on the current connection.
    pub channels: usize,
    /// The server process ID of the current connection.
    pub backend_pid: Option<i32>,
    /// Time since the last successful heartbeat.
    pub since_last_heartbeat: Option<Duration>,
    /// Round-trip time of the last successful heartbeat.
    pub heartbeat_rtt: Option<Duration>,
    /// The server's `pg_notification_queue_usage()` (0.0 to 1.0) at the last heartbeat:
    /// how full the cluster-wide notification queue is. When it reaches 1.0 every NOTIFY
    /// in the cluster fails; a rising value means some listener (maybe not this one)
    /// is not reading.
    pub server_queue_usage: Option<f64>,
}

/// A snapshot of one subscription's queue and counters, from
/// [`Subscription::stats`](crate::Subscription::stats).
///
/// `delivered + lagged` is every notification that reached this subscription, once the
/// consumer has read everything `queued`.
///
/// ```no_run
/// # fn f(events: &pglisten::Subscription) {
/// let stats = events.stats();
/// if stats.queued * 2 > stats.capacity {
///     eprintln!("falling behind: {} of {} queued", stats.queued, stats.capacity);
/// }
/// println!("{} delivered, {} lost to lag", stats.delivered, stats.lagged);
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct SubscriptionStats {
    /// Notifications waiting to be read by this subscription's consumer now.
    pub queued: usize,
    /// How many notifications the queue holds at most
    /// ([`ListenerBuilder::queue_capacity`](crate::ListenerBuilder::queue_capacity)).
    pub capacity: usize,
    /// Notifications dropped because the queue was full, since the subscription was
    /// made: the sum of every [`Event::Lagged`](crate::Event::Lagged) count, including
    /// drops not yet announced.
    pub lagged: u64,
    /// Notifications this subscription has yielded to its consumer.
    pub delivered: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct HeartbeatSample {
    at: Option<Instant>,
    rtt: Option<Duration>,
    queue_usage: Option<f64>,
}

/// The task's live figures, shared with every handle.
#[derive(Debug, Default)]
pub(crate) struct Status {
    state: AtomicU8,
    backend_pid: AtomicI32,
    received: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    reconnects: AtomicU64,
    subscriptions: AtomicUsize,
    channels: AtomicUsize,
    heartbeat: Mutex<HeartbeatSample>,
    /// The same figures, published through the `metrics` facade (with that feature).
    metrics: ListenerMetrics,
}

impl Status {
    /// Figures that are also published as `metrics`.
    pub(crate) fn with_metrics(metrics: ListenerMetrics) -> Self {
        Status {
            metrics,
            ..Status::default()
        }
    }

    /// The listener's metric handles, for its subscriptions' own.
    pub(crate) fn metrics(&self) -> &ListenerMetrics {
        &self.metrics
    }

    pub(crate) fn set_state(&self, state: ListenerState) {
        self.state.store(state.to_u8(), Ordering::Relaxed);
        self.metrics.listening(state == ListenerState::Listening);
    }

    pub(crate) fn state(&self) -> ListenerState {
        ListenerState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub(crate) fn set_backend_pid(&self, pid: Option<i32>) {
        self.backend_pid.store(pid.unwrap_or(0), Ordering::Relaxed);
    }

    pub(crate) fn backend_pid(&self) -> Option<i32> {
        match self.backend_pid.load(Ordering::Relaxed) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// Notifications read from the server.
    pub(crate) fn add_received(&self, n: u64) {
        add(&self.received, n);
        self.metrics.counted(n, 0, 0);
    }

    /// Notifications queued for subscriptions, and dropped for lag.
    pub(crate) fn add_delivered_and_dropped(&self, delivered: u64, dropped: u64) {
        add(&self.delivered, delivered);
        add(&self.dropped, dropped);
        self.metrics.counted(0, delivered, dropped);
    }

    /// One more connection re-established after a loss.
    pub(crate) fn add_reconnect(&self) {
        add(&self.reconnects, 1);
        self.metrics.reconnected();
    }

    /// Live subscriptions now.
    pub(crate) fn set_subscriptions(&self, count: usize) {
        self.subscriptions.store(count, Ordering::Relaxed);
        self.metrics.subscriptions(count);
    }

    /// Channels LISTENed to on the current connection now.
    pub(crate) fn set_channels(&self, count: usize) {
        self.channels.store(count, Ordering::Relaxed);
        self.metrics.channels(count);
    }

    pub(crate) fn record_heartbeat(&self, at: Instant, rtt: Duration, queue_usage: Option<f64>) {
        let mut sample = self.heartbeat.lock().unwrap_or_else(|p| p.into_inner());
        *sample = HeartbeatSample {
            at: Some(at),
            rtt: Some(rtt),
            queue_usage,
        };
        drop(sample);
        self.metrics.heartbeat(rtt, queue_usage);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let sample = *self.heartbeat.lock().unwrap_or_else(|p| p.into_inner());
        Stats {
            state: self.state(),
            notifications_received: self.received.load(Ordering::Relaxed),
            notifications_delivered: self.delivered.load(Ordering::Relaxed),
            notifications_dropped: self.dropped.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            subscriptions: self.subscriptions.load(Ordering::Relaxed),
            channels: self.channels.load(Ordering::Relaxed),
            backend_pid: self.backend_pid(),
            since_last_heartbeat: sample.at.map(|at| at.elapsed()),
            heartbeat_rtt: sample.rtt,
            server_queue_usage: sample.queue_usage,
        }
    }
}

/// Adds `n` to a counter (skipping the atomic write for nothing).
fn add(counter: &AtomicU64, n: u64) {
    if n > 0 {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip() {
        for state in [
            ListenerState::Connecting,
            ListenerState::Syncing,
            ListenerState::Listening,
            ListenerState::BackingOff,
            ListenerState::Closed,
        ] {
            let status = Status::default();
            status.set_state(state);
            assert_eq!(status.state(), state);
        }
    }

    #[test]
    fn snapshot_reflects_counters_and_heartbeat() {
        let status = Status::default();
        status.add_received(5);
        status.add_delivered_and_dropped(0, 2);
        status.set_backend_pid(Some(42));
        status.record_heartbeat(Instant::now(), Duration::from_millis(3), Some(0.25));
        let stats = status.snapshot();
        assert_eq!(stats.notifications_received, 5);
        assert_eq!(stats.notifications_dropped, 2);
        assert_eq!(stats.backend_pid, Some(42));
        assert_eq!(stats.heartbeat_rtt, Some(Duration::from_millis(3)));
        assert_eq!(stats.server_queue_usage, Some(0.25));
        assert!(stats.since_last_heartbeat.is_some());
        status.set_backend_pid(None);
        assert_eq!(status.snapshot().backend_pid, None);
    }

    #[cfg(feature = "serde")]
    #[test]
    fn stats_serialize_with_their_field_names() {
        let status = Status::default();
        status.set_state(ListenerState::Listening);
        status.add_received(5);
        status.record_heartbeat(Instant::now(), Duration::from_millis(3), Some(0.25));
        let json = serde_json::to_value(status.snapshot()).unwrap();
        assert_eq!(json["state"], "Listening");
        assert_eq!(json["notifications_received"], 5);
        assert_eq!(json["heartbeat_rtt"]["nanos"], 3_000_000);
        assert_eq!(json["server_queue_usage"], 0.25);
        assert_eq!(json["backend_pid"], serde_json::Value::Null);
        let stats = SubscriptionStats {
            queued: 1,
            capacity: 8,
            lagged: 2,
            delivered: 3,
        };
        assert_eq!(
            serde_json::to_value(stats).unwrap(),
            serde_json::json!({ "queued": 1, "capacity": 8, "lagged": 2, "delivered": 3 })
        );
    }
}
