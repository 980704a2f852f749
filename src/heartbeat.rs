//! The heartbeat's pure parts: its settings, the probe's SQL and how to read its answer,
//! which confirmed channels the server lost, and the queue-usage alarm.
//!
//! A LISTEN connection is idle most of its life, which is when networks kill connections
//! silently (a NAT or proxy forgets the mapping; the socket looks healthy for hours). The
//! heartbeat sends one cheap round trip every `interval`; no answer within `timeout`
//! means the connection is dead. The same round trip reads `pg_listening_channels()`, so
//! a registration lost behind the listener's back (an `UNLISTEN *` run on its session, a
//! pooler reset) is repaired and announced as a gap.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::SimpleQueryMessage;

/// Default time between heartbeats.
///
/// ```
/// # use std::time::Duration;
/// assert_eq!(pglisten::DEFAULT_HEARTBEAT_INTERVAL, Duration::from_secs(10));
/// ```
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// Default time a heartbeat may take before the connection is declared dead.
///
/// ```
/// # use std::time::Duration;
/// // A dead connection is noticed within interval + timeout by default:
/// let bound = pglisten::DEFAULT_HEARTBEAT_INTERVAL + pglisten::DEFAULT_HEARTBEAT_TIMEOUT;
/// assert_eq!(bound, Duration::from_secs(15));
/// ```
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

/// `pg_notification_queue_usage()` at or above this fraction logs a warning.
///
/// ```
/// # fn f(listener: pglisten::Listener) {
/// if listener.stats().server_queue_usage >= Some(pglisten::QUEUE_USAGE_WARNING) {
///     eprintln!("some listener in the cluster is not reading");
/// }
/// # }
/// ```
pub const QUEUE_USAGE_WARNING: f64 = 0.5;

/// Two statements, one round trip: the queue usage (one row), then one row per channel.
pub(crate) const PROBE_SQL: &str =
    "SELECT pg_notification_queue_usage()::text; SELECT pg_listening_channels()";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeartbeatConfig {
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            interval: DEFAULT_HEARTBEAT_INTERVAL,
            timeout: DEFAULT_HEARTBEAT_TIMEOUT,
        }
    }
}

impl HeartbeatConfig {
    /// TCP keepalive and `TCP_USER_TIMEOUT` values that agree with the heartbeat: the
    /// kernel starts probing an idle socket after one interval, and gives up on
    /// unacknowledged data after interval + timeout, so a dead peer is noticed by the
    /// kernel no later than by the heartbeat.
    pub(crate) fn tcp_keepalive(&self) -> TcpKeepalive {
        let idle = self.interval.max(Duration::from_secs(1));
        let probe_interval = (self.timeout / 3).max(Duration::from_secs(1));
        TcpKeepalive {
            idle,
            interval: probe_interval,
            retries: 3,
            user_timeout: self.interval + self.timeout,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TcpKeepalive {
    pub(crate) idle: Duration,
    pub(crate) interval: Duration,
    pub(crate) retries: u32,
    pub(crate) user_timeout: Duration,
}

/// What one probe learned.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProbeAnswer {
    pub(crate) queue_usage: Option<f64>,
    pub(crate) channels: Vec<String>,
}

/// Reads the answer to [`PROBE_SQL`]: rows before the first command-complete belong to
/// the first statement.
pub(crate) fn parse_probe(messages: &[SimpleQueryMessage]) -> ProbeAnswer {
    let mut statement = 0;
    let mut answer = ProbeAnswer {
        queue_usage: None,
        channels: Vec::new(),
    };
    for message in messages {
        match message {
            SimpleQueryMessage::CommandComplete(_) => statement += 1,
            SimpleQueryMessage::Row(row) if statement == 0 => {
                answer.queue_usage = row.get(0).and_then(|v| v.parse().ok());
            }
            SimpleQueryMessage::Row(row) => {
                if let Some(channel) = row.get(0) {
                    answer.channels.push(channel.to_owned());
                }
            }
            _ => {}
        }
    }
    answer
}

/// Confirmed channels the server no longer listens to.
pub(crate) fn missing_channels<'a>(
    confirmed: impl IntoIterator<Item = &'a Arc<str>>,
    on_server: &[String],
) -> Vec<Arc<str>> {
    let on_server: HashSet<&str> = on_server.iter().map(String::as_str).collect();
    confirmed
        .into_iter()
        .filter(|c| !on_server.contains(&***c))
        .cloned()
        .collect()
}

/// Warns once when the server's notification queue fills past the threshold, and once
/// when it has drained well below it again (hysteresis: no flapping).
#[derive(Debug, Default)]
pub(crate) struct QueueUsageAlarm {
    raised: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AlarmChange {
    Raised,
    Cleared,
}

impl QueueUsageAlarm {
    pub(crate) fn observe(&mut self, usage: f64) -> Option<AlarmChange> {
        if !self.raised && usage >= QUEUE_USAGE_WARNING {
            self.raised = true;
            Some(AlarmChange::Raised)
        } else if self.raised && usage < QUEUE_USAGE_WARNING / 2.0 {
            self.raised = false;
            Some(AlarmChange::Cleared)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_channels_compares_exact_names() {
        let confirmed: Vec<Arc<str>> = ["a", "B", "c d"].iter().map(|s| Arc::from(*s)).collect();
        let server = vec!["a".to_owned(), "b".to_owned(), "c d".to_owned()];
        let missing = missing_channels(&confirmed, &server);
        assert_eq!(missing, [Arc::<str>::from("B")]);
        assert!(missing_channels(&confirmed[..1], &server).is_empty());
    }

    #[test]
    fn alarm_raises_once_and_clears_with_hysteresis() {
        let mut alarm = QueueUsageAlarm::default();
        assert_eq!(alarm.observe(0.1), None);
        assert_eq!(alarm.observe(0.5), Some(AlarmChange::Raised));
        assert_eq!(alarm.observe(0.9), None);
        assert_eq!(alarm.observe(0.3), None, "still above half the threshold");
        assert_eq!(alarm.observe(0.2), Some(AlarmChange::Cleared));
        assert_eq!(alarm.observe(0.2), None);
    }

    #[test]
    fn keepalive_matches_the_heartbeat() {
        let hb = HeartbeatConfig {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(6),
        };
        let ka = hb.tcp_keepalive();
        assert_eq!(ka.idle, Duration::from_secs(10));
        assert_eq!(ka.interval, Duration::from_secs(2));
        assert_eq!(ka.user_timeout, Duration::from_secs(16));
        // Tiny settings still give the kernel sane (>= 1 s) values.
        let tiny = HeartbeatConfig {
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(300),
        };
        assert_eq!(tiny.tcp_keepalive().idle, Duration::from_secs(1));
        assert_eq!(tiny.tcp_keepalive().interval, Duration::from_secs(1));
    }

    #[test]
    fn defaults_tolerate_slow_networks() {
        let hb = HeartbeatConfig::default();
        assert!(hb.timeout >= Duration::from_secs(1));
        assert!(hb.interval + hb.timeout <= Duration::from_secs(30));
    }
}
