//! Per-subscription numbers (`Subscription::stats`) and receive times
//! (`Notification::received_at`).

use std::time::SystemTime;

use crate::support::*;
use pglisten::{Event, Listener, Subscription};

/// Waits until `total` notifications reached `sub`: queued, or dropped as lagged.
async fn reached(what: &str, sub: &Subscription, total: u64) {
    eventually(what, || async {
        let s = sub.stats();
        s.queued as u64 + s.lagged == total
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_match_what_was_sent_delivered_and_lost_to_lag() {
    let Delivering {
        listener,
        channel,
        sender: client,
        ..
    } = Delivering::start(4, "sub_stats").await;
    let mut events = listener.subscribe([&channel]).await.unwrap();
    let other = listener.subscribe([&channel]).await.unwrap();
    let stats = events.stats();
    assert_eq!(
        (stats.queued, stats.capacity, stats.lagged, stats.delivered),
        (0, 4, 0, 0)
    );

    // Ten in one transaction, nobody reading: four fit, six are dropped.
    let payloads: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    pglisten::notify_many(&client, &channel, &payloads)
        .await
        .unwrap();
    reached("all ten reached the subscription", &events, 10).await;
    let stats = events.stats();
    assert_eq!(
        (stats.queued, stats.lagged, stats.delivered),
        (4, 6, 0),
        "{stats:?}"
    );

    // Reading one: it is delivered, three wait.
    assert_eq!(next_notification(&mut events).await.payload(), "0");
    let stats = events.stats();
    assert_eq!((stats.queued, stats.lagged, stats.delivered), (3, 6, 1));
    for expected in ["1", "2", "3"] {
        assert_eq!(next_notification(&mut events).await.payload(), expected);
    }
    assert!(matches!(next_event(&mut events).await, Event::Lagged(6)));
    let stats = events.stats();
    assert_eq!((stats.queued, stats.lagged, stats.delivered), (0, 6, 4));

    // After catching up, two more: the totals keep counting.
    send(&client, &channel, "10").await;
    send(&client, &channel, "11").await;
    for expected in ["10", "11"] {
        assert_eq!(next_notification(&mut events).await.payload(), expected);
    }
    let stats = events.stats();
    assert_eq!((stats.queued, stats.lagged, stats.delivered), (0, 6, 6));

    // Each subscription has its own figures: the other one read nothing. (The task may
    // still be handing "10" and "11" to it: the first subscription can read them before
    // the same batch reaches the second.)
    reached("all twelve reached the other subscription", &other, 12).await;
    let stats = other.stats();
    assert_eq!(
        (stats.queued, stats.lagged, stats.delivered),
        (4, 8, 0),
        "{stats:?}"
    );
    // The listener's totals are the sums.
    eventually("the listener's totals are the sums", || async {
        let total = listener.stats();
        (total.notifications_delivered, total.notifications_dropped) == (4 + 2 + 4, 6 + 8)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn received_at_is_when_the_listener_read_the_notification() {
    let url = shared_url();
    let listener = Listener::connect(&url).await.unwrap();
    let channel = unique("received_at");
    let mut events = listener.subscribe([&channel]).await.unwrap();
    let client = admin(&url).await;

    let before = SystemTime::now();
    let payloads: Vec<String> = (0..300).map(|i| i.to_string()).collect();
    pglisten::notify_many(&client, &channel, &payloads)
        .await
        .unwrap();
    let mut times = Vec::new();
    for _ in 0..payloads.len() {
        times.push(next_notification(&mut events).await.received_at());
    }
    let after = SystemTime::now();
    assert!(times.iter().all(|t| before <= *t && *t <= after));
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "in reading order");
    // Read in batches: several notifications share one clock reading.
    let mut distinct = times.clone();
    distinct.dedup();
    assert!(distinct.len() < times.len(), "{} readings", distinct.len());

    // A notification read later carries a later time.
    let later_sent = SystemTime::now();
    send(&client, &channel, "later").await;
    let later = next_notification(&mut events).await;
    assert!(later.received_at() >= later_sent);
}
