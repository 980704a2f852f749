//! The `metrics` feature: a scrape of the example's Prometheus endpoint shows the
//! documented names with the values the test caused.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::*;
use metrics_exporter_prometheus::PrometheusBuilder;
use pglisten::{Event, Listener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// The example's serving code, as it is.
#[path = "../../examples/serve_metrics/mod.rs"]
mod serve_metrics;

/// `GET /metrics`.
async fn scrape(addr: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// The metric names in the table of the crate docs' "Metrics" section.
fn documented_names() -> Vec<String> {
    let docs = include_str!("../../src/lib.rs");
    docs.lines()
        .filter_map(|line| line.strip_prefix("//! | `pglisten_"))
        .filter_map(|rest| rest.split('`').next())
        .map(|name| format!("pglisten_{name}"))
        .collect()
}

/// The value of `name` whose labels include every one of `labels`, if shown.
fn value(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{')?;
        let matches = metric == name
            && labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        if matches { value.parse().ok() } else { None }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_shows_the_documented_names_with_the_right_values() {
    // The only test of this binary that installs a recorder (one per process).
    let handle = PrometheusBuilder::new().install_recorder().unwrap();
    let addr = serve_metrics::serve(handle, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();

    let url = shared_url();
    let label = unique("scrape");
    let listener = Listener::builder(&url)
        .metrics_label(&label)
        .queue_capacity(4)
        .heartbeat(Duration::from_millis(200), Duration::from_secs(5))
        .backoff(fast_backoff())
        .connect()
        .await
        .unwrap();
    let channel = unique("scraped");
    let mut events = listener.subscribe([&channel]).await.unwrap();
    let id = "1"; // the listener's first subscription
    let l = [("listener", label.as_str())];
    let sub = [
        ("listener", label.as_str()),
        ("subscription", id),
        ("channels", channel.as_str()),
    ];

    // Ten in one statement, nobody reading: four queued, six lost to lag.
    let client = admin(&url).await;
    let payloads: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    pglisten::notify_many(&client, &channel, &payloads)
        .await
        .unwrap();
    eventually("a heartbeat after the ten arrived is published", || async {
        let page = scrape(addr).await;
        value(&page, "pglisten_notifications_received_total", &l) == Some(10.0)
            && value(&page, "pglisten_heartbeat_rtt_seconds", &l).is_some_and(|v| v > 0.0)
    })
    .await;
    // Nothing changes the counters any more: one page shows them all.
    let page = scrape(addr).await;
    let expected = [
        ("pglisten_notifications_received_total", 10.0),
        ("pglisten_notifications_delivered_total", 4.0),
        ("pglisten_notifications_dropped_total", 6.0),
        ("pglisten_reconnects_total", 0.0),
        ("pglisten_listening", 1.0),
        ("pglisten_subscriptions", 1.0),
        ("pglisten_channels", 1.0),
    ];
    for (name, want) in expected {
        assert_eq!(value(&page, name, &l), Some(want), "{name} in:\n{page}");
    }
    let usage = value(&page, "pglisten_server_queue_usage_ratio", &l).expect("queue usage");
    assert!((0.0..=1.0).contains(&usage));
    assert_eq!(
        value(&page, "pglisten_subscription_queued", &sub),
        Some(4.0),
        "{page}"
    );
    assert_eq!(
        value(&page, "pglisten_subscription_lagged_total", &sub),
        Some(6.0),
        "{page}"
    );
    // Every name the crate docs list is on the page, for this listener; and nothing
    // else of pglisten's.
    let documented = documented_names();
    assert_eq!(documented.len(), 11, "{documented:?}");
    for name in &documented {
        let labels: &[(&str, &str)] = if name.starts_with("pglisten_subscription_") {
            &sub
        } else {
            &l
        };
        assert!(
            value(&page, name, labels).is_some(),
            "{name} missing:\n{page}"
        );
    }
    for line in page.lines().filter(|l| l.starts_with("pglisten_")) {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        assert!(documented.iter().any(|d| d == name), "undocumented {name}");
    }
    // The metrics agree with Subscription::stats.
    let stats = events.stats();
    assert_eq!((stats.queued, stats.lagged), (4, 6));

    // The consumer catches up: the next heartbeat publishes an empty queue.
    for _ in 0..4 {
        next_notification(&mut events).await;
    }
    assert!(matches!(next_event(&mut events).await, Event::Lagged(6)));
    eventually("the empty queue is published", || async {
        value(&scrape(addr).await, "pglisten_subscription_queued", &sub) == Some(0.0)
    })
    .await;

    // A lost connection: counted once LISTEN is active again.
    let pid = listener.backend_pid().unwrap();
    client
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    expect_gap(&mut events).await;
    let page = scrape(addr).await;
    assert_eq!(
        value(&page, "pglisten_reconnects_total", &l),
        Some(1.0),
        "{page}"
    );
    assert_eq!(value(&page, "pglisten_listening", &l), Some(1.0), "{page}");

    // Dropping the subscription empties its gauge; the listener counts one fewer.
    drop(events);
    eventually("the dropped subscription is published", || async {
        let page = scrape(addr).await;
        value(&page, "pglisten_subscriptions", &l) == Some(0.0)
            && value(&page, "pglisten_subscription_queued", &sub) == Some(0.0)
    })
    .await;
    listener.shutdown().await;
    let page = scrape(addr).await;
    assert_eq!(value(&page, "pglisten_listening", &l), Some(0.0), "{page}");
}
