//! The `metrics` feature: the listener's counters and gauges, and each subscription's
//! queue and losses, published through the [`metrics`](https://docs.rs/metrics) facade
//! to whatever recorder the application installed. Without the feature every type here
//! is empty and every call does nothing, so callers need no `cfg`.
//!
//! Nothing is published per notification: counters move once per read (with the
//! `Status` counters they mirror), a subscription's figures when it drops
//! notifications and at every heartbeat.

#[cfg(feature = "metrics")]
use std::sync::Arc;

/// The names, as documented in the crate docs ("Metrics").
#[cfg(feature = "metrics")]
pub(crate) mod names {
    pub(crate) const RECEIVED: &str = "pglisten_notifications_received_total";
    pub(crate) const DELIVERED: &str = "pglisten_notifications_delivered_total";
    pub(crate) const DROPPED: &str = "pglisten_notifications_dropped_total";
    pub(crate) const RECONNECTS: &str = "pglisten_reconnects_total";
    pub(crate) const LISTENING: &str = "pglisten_listening";
    pub(crate) const SUBSCRIPTIONS: &str = "pglisten_subscriptions";
    pub(crate) const CHANNELS: &str = "pglisten_channels";
    pub(crate) const HEARTBEAT_RTT: &str = "pglisten_heartbeat_rtt_seconds";
    pub(crate) const SERVER_QUEUE_USAGE: &str = "pglisten_server_queue_usage_ratio";
    pub(crate) const SUBSCRIPTION_QUEUED: &str = "pglisten_subscription_queued";
    pub(crate) const SUBSCRIPTION_LAGGED: &str = "pglisten_subscription_lagged_total";
}

/// The label value naming a listener when the builder gave none.
pub(crate) const DEFAULT_LISTENER_LABEL: &str = "default";

/// Channel names in a subscription's `channels` label are cut after this many bytes,
/// so that a subscription to thousands of channels does not make a huge label.
#[cfg(feature = "metrics")]
const MAX_CHANNELS_LABEL: usize = 200;

/// A listener's metric handles (none without the feature).
#[derive(Debug, Clone, Default)]
pub(crate) struct ListenerMetrics {
    #[cfg(feature = "metrics")]
    inner: Option<Arc<ListenerHandles>>,
}

#[cfg(feature = "metrics")]
#[derive(Debug)]
struct ListenerHandles {
    listener: String,
    received: metrics::Counter,
    delivered: metrics::Counter,
    dropped: metrics::Counter,
    reconnects: metrics::Counter,
    listening: metrics::Gauge,
    subscriptions: metrics::Gauge,
    channels: metrics::Gauge,
    heartbeat_rtt: metrics::Gauge,
    server_queue_usage: metrics::Gauge,
}

impl ListenerMetrics {
    /// Registers the listener's metrics with the installed recorder, labelled
    /// `listener="{label}"`.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn register(label: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            describe();
            let l = label.to_owned();
            ListenerMetrics {
                inner: Some(Arc::new(ListenerHandles {
                    received: metrics::counter!(names::RECEIVED, "listener" => l.clone()),
                    delivered: metrics::counter!(names::DELIVERED, "listener" => l.clone()),
                    dropped: metrics::counter!(names::DROPPED, "listener" => l.clone()),
                    reconnects: metrics::counter!(names::RECONNECTS, "listener" => l.clone()),
                    listening: metrics::gauge!(names::LISTENING, "listener" => l.clone()),
                    subscriptions: metrics::gauge!(names::SUBSCRIPTIONS, "listener" => l.clone()),
                    channels: metrics::gauge!(names::CHANNELS, "listener" => l.clone()),
                    heartbeat_rtt: metrics::gauge!(names::HEARTBEAT_RTT, "listener" => l.clone()),
                    server_queue_usage: metrics::gauge!(
                        names::SERVER_QUEUE_USAGE,
                        "listener" => l.clone()
                    ),
                    listener: l,
                })),
            }
        }
        #[cfg(not(feature = "metrics"))]
        ListenerMetrics {}
    }

    /// The handles of one subscription of this listener.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn subscription(&self, id: u64, channels: &[std::sync::Arc<str>]) -> QueueMetrics {
        #[cfg(feature = "metrics")]
        if let Some(inner) = &self.inner {
            let labels = [
                ("listener", inner.listener.clone()),
                ("subscription", id.to_string()),
                ("channels", channels_label(channels)),
            ];
            return QueueMetrics {
                inner: Some(Arc::new(QueueHandles {
                    queued: metrics::gauge!(names::SUBSCRIPTION_QUEUED, &labels),
                    lagged: metrics::counter!(names::SUBSCRIPTION_LAGGED, &labels),
                })),
            };
        }
        QueueMetrics::default()
    }

    /// Mirrors the listener's counters (called where `Status` adds to them).
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn counted(&self, received: u64, delivered: u64, dropped: u64) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.inner {
            if received > 0 {
                m.received.increment(received);
            }
            if delivered > 0 {
                m.delivered.increment(delivered);
            }
            if dropped > 0 {
                m.dropped.increment(dropped);
            }
        }
    }

    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn reconnected(&self) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.inner {
            m.reconnects.increment(1);
        }
    }

    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn listening(&self, listening: bool) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.inner {
            m.listening.set(if listening { 1.0 } else { 0.0 });
        }
    }

    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn subscriptions(&self, count: usize) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.inner {
            m.subscriptions.set(count as f64);
        }
    }

    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn channels(&self, count: usize) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.inner {
            m.channels.set(count as f64);
        }
    }

    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn heartbeat(&self, rtt: std::time::Duration, queue_usage: Option<f64>) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.inner {
            m.heartbeat_rtt.set(rtt.as_secs_f64());
            if let Some(usage) = queue_usage {
                m.server_queue_usage.set(usage);
            }
        }
    }
}

/// One subscription's metric handles (none without the feature).
#[derive(Debug, Clone, Default)]
pub(crate) struct QueueMetrics {
    #[cfg(feature = "metrics")]
    inner: Option<Arc<QueueHandles>>,
}

#[cfg(feature = "metrics")]
#[derive(Debug)]
struct QueueHandles {
    queued: metrics::Gauge,
    lagged: metrics::Counter,
}

impl QueueMetrics {
    /// Notifications waiting in the queue now.
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn queued(&self, queued: usize) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.inner {
            m.queued.set(queued as f64);
        }
    }

    /// Notifications just dropped for lag.
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn lagged(&self, dropped: u64) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.inner {
            m.lagged.increment(dropped);
        }
    }

    /// Whether anything is published (so that callers skip reading figures for nothing).
    #[inline]
    pub(crate) fn enabled(&self) -> bool {
        #[cfg(feature = "metrics")]
        {
            self.inner.is_some()
        }
        #[cfg(not(feature = "metrics"))]
        false
    }
}

/// The `channels` label: the names joined by `,`, cut (at a character boundary, marked
/// with `…`) after [`MAX_CHANNELS_LABEL`] bytes.
#[cfg(feature = "metrics")]
fn channels_label(channels: &[std::sync::Arc<str>]) -> String {
    let mut label = String::new();
    for (i, channel) in channels.iter().enumerate() {
        if i > 0 {
            label.push(',');
        }
        label.push_str(channel);
        if label.len() > MAX_CHANNELS_LABEL {
            let mut cut = MAX_CHANNELS_LABEL;
            while !label.is_char_boundary(cut) {
                cut -= 1;
            }
            label.truncate(cut);
            label.push('…');
            break;
        }
    }
    label
}

/// Describes every metric to the recorder (units and help texts), once per process.
#[cfg(feature = "metrics")]
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        describe_counter!(
            names::RECEIVED,
            Unit::Count,
            "Notifications read from the server (once each, whatever the number of subscribers)"
        );
        describe_counter!(
            names::DELIVERED,
            Unit::Count,
            "Notifications queued for subscriptions (one per subscriber)"
        );
        describe_counter!(
            names::DROPPED,
            Unit::Count,
            "Notifications dropped because a subscription's queue was full"
        );
        describe_counter!(
            names::RECONNECTS,
            Unit::Count,
            "Connections re-established after a loss, with LISTEN active again"
        );
        describe_gauge!(
            names::LISTENING,
            "1 while LISTEN is active for every wanted channel, else 0"
        );
        describe_gauge!(names::SUBSCRIPTIONS, Unit::Count, "Live subscriptions");
        describe_gauge!(
            names::CHANNELS,
            Unit::Count,
            "Channels LISTENed to on the current connection"
        );
        describe_gauge!(
            names::HEARTBEAT_RTT,
            Unit::Seconds,
            "Round trip of the last heartbeat"
        );
        describe_gauge!(
            names::SERVER_QUEUE_USAGE,
            "pg_notification_queue_usage() at the last heartbeat (0 to 1); at 1 every NOTIFY \
             in the cluster fails"
        );
        describe_gauge!(
            names::SUBSCRIPTION_QUEUED,
            Unit::Count,
            "Notifications waiting in a subscription's queue"
        );
        describe_counter!(
            names::SUBSCRIPTION_LAGGED,
            Unit::Count,
            "Notifications a subscription lost because its queue was full"
        );
    });
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use super::*;

    #[test]
    fn long_channel_lists_are_cut_at_a_character_boundary() {
        let few: Vec<Arc<str>> = vec![Arc::from("a"), Arc::from("b")];
        assert_eq!(channels_label(&few), "a,b");
        let many: Vec<Arc<str>> = (0..100).map(|i| Arc::from(format!("é{i}"))).collect();
        let label = channels_label(&many);
        assert!(label.ends_with('…'), "{label}");
        assert!(label.len() <= MAX_CHANNELS_LABEL + '…'.len_utf8());
    }

    #[test]
    fn without_a_recorder_every_call_is_harmless() {
        let metrics = ListenerMetrics::register("test");
        metrics.counted(1, 2, 3);
        metrics.listening(true);
        metrics.heartbeat(std::time::Duration::from_millis(1), Some(0.5));
        let queue = metrics.subscription(1, &[Arc::from("a")]);
        assert!(queue.enabled());
        queue.queued(3);
        queue.lagged(2);
    }
}
