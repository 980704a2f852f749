//! Entries committed while the listener cannot reach the server, or around a server
//! restart, arrive afterwards with no further publish. Each test has a cluster of its
//! own.

use std::sync::Arc;
use std::time::Duration;

use pglisten::Listener;
use pglisten::durable::{Cursor, Position};
use pglisten_testkit::StopMode;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_committed_during_a_cut_arrive_after_it() {
    // (A cut that refuses new connections: each attempt during it fails at once.)
    let cluster = own_cluster().await;
    let (proxy, proxied) = proxy_to(&cluster).await;
    let direct = admin(&cluster.url()).await;
    let journal = own_journal(&direct).await;
    let listener = Listener::builder(&proxied)
        .backoff(fast_backoff())
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    let channel = "cut";
    let mut sub = listener
        .subscribe_durable_in(&journal, channel, Cursor::Beginning)
        .await
        .unwrap();
    let first = journal.publish(&direct, channel, "before").await.unwrap();
    assert_eq!(next_entry(&mut sub).await.position(), Some(first));

    // Every connection through the proxy is reset, and new ones are refused.
    proxy.refuse();
    proxy.cut();
    let mut during = Vec::new();
    for i in 0..5 {
        during.push(
            journal
                .publish(&direct, channel, &format!("during {i}"))
                .await
                .unwrap(),
        );
    }
    // The trouble is reported (the stream goes on).
    let mut saw_error = false;
    while !saw_error {
        match next_durable(&mut sub).await {
            Event::Error(_) => saw_error = true,
            other => panic!("nothing may arrive during the cut: {other:?}"),
        }
    }
    proxy.pass();
    for expected in during {
        assert_eq!(next_entry(&mut sub).await.position(), Some(expected));
    }
    let after = journal.publish(&direct, channel, "after").await.unwrap();
    assert_eq!(next_entry(&mut sub).await.position(), Some(after));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_around_a_fast_restart_arrive_once() {
    let (cluster, client, journal) = own_cluster_and_journal().await;
    let cluster = Arc::new(cluster);
    let url = cluster.url();
    // A small queue: most entries are still in the journal, not in the queue, when the
    // server goes down.
    let listener = Listener::builder(&url)
        .backoff(fast_backoff())
        .queue_capacity(4)
        .connect()
        .await
        .unwrap();
    let channel = "restart";
    let mut sub = listener
        .subscribe_durable_in(&journal, channel, Cursor::Beginning)
        .await
        .unwrap();
    let mut published: Vec<Position> = Vec::new();
    for i in 0..20 {
        published.push(
            journal
                .publish(&client, channel, &format!("a{i}"))
                .await
                .unwrap(),
        );
    }
    // Read part of them, then restart with entries unread.
    for expected in &published[..5] {
        assert_eq!(next_entry(&mut sub).await.position(), Some(*expected));
    }
    blocking({
        let cluster = cluster.clone();
        move || cluster.restart(StopMode::Fast)
    })
    .await
    .expect("restart -m fast");
    // No publish after the restart: the rest arrive by themselves.
    for expected in &published[5..] {
        assert_eq!(next_entry(&mut sub).await.position(), Some(*expected));
    }
    let client = admin(&url).await;
    for i in 0..20 {
        let position = journal
            .publish(&client, channel, &format!("b{i}"))
            .await
            .unwrap();
        assert_eq!(next_entry(&mut sub).await.position(), Some(position));
    }
    let marker = journal.publish(&client, channel, "marker").await.unwrap();
    assert_eq!(
        next_entry(&mut sub).await.position(),
        Some(marker),
        "no duplicate"
    );
}
