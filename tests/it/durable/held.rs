//! Held back: entries wait while an older transaction runs, and arrive when it ends,
//! without a further publish; and `Cursor::Now`. Each test has a cluster of its own, so
//! that no other test's transactions move the watermark.

use std::time::Duration;

use pglisten::Listener;
use pglisten::durable::{Cursor, Journal};
use pglisten::tokio_postgres::Client;

use super::*;

async fn xact_id(client: &impl pglisten::tokio_postgres::GenericClient) -> u64 {
    let text: String = client
        .query_one("SELECT pg_current_xact_id()::text", &[])
        .await
        .unwrap()
        .get(0);
    text.parse().unwrap()
}

/// Waits until the subscription's last read found `count` entries held back by
/// `holder`.
async fn held_by(sub: &DurableSubscription, count: u64, holder: u64) {
    eventually("the reader reports the entries held back", || {
        let stats = sub.stats();
        async move {
            stats.held_back == count
                && stats.holding_transaction == Some(holder)
                && stats.held_back_since.is_some()
        }
    })
    .await;
}

/// The next entries of `sub` are at `positions`, in that order.
async fn expect_positions(sub: &mut DurableSubscription, positions: &[Position]) {
    for &position in positions {
        assert_eq!(next_entry(sub).await.position(), Some(position));
    }
}

/// The next entries of `sub` are at `positions`, and then nothing else: a marker
/// published after them comes next.
async fn expect_only(
    sub: &mut DurableSubscription,
    positions: &[Position],
    journal: &Journal,
    publisher: &Client,
    channel: &str,
) {
    expect_positions(sub, positions).await;
    let marker = journal.publish(publisher, channel, "marker").await.unwrap();
    assert_eq!(next_entry(sub).await.position(), Some(marker));
}

async fn setup() -> (pglisten_testkit::Cluster, Client, Client, Journal, Listener) {
    let (cluster, publisher, journal) = own_cluster_and_journal().await;
    let url = cluster.url();
    let holder = admin(&url).await;
    publisher
        .batch_execute("CREATE TABLE scratch (n int)")
        .await
        .unwrap();
    let listener = Listener::connect(&url).await.unwrap();
    (cluster, publisher, holder, journal, listener)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_wait_for_an_older_open_transaction_then_arrive_by_themselves() {
    let (_cluster, publisher, mut holder, journal, listener) = setup().await;
    let channel = "held";
    let mut sub = listener
        .subscribe_durable_in(&journal, channel, Cursor::Now)
        .await
        .unwrap();

    // (1) The open transaction published: its entry comes first, once it commits.
    let tx = holder.transaction().await.unwrap();
    let holding = xact_id(&tx).await;
    let early = journal
        .publish(&tx, channel, "from the open one")
        .await
        .unwrap();
    let later = journal
        .publish(&publisher, channel, "later 1")
        .await
        .unwrap();
    held_by(&sub, 1, holding).await;
    assert!(early < later, "the open transaction's id is lower");
    tx.commit().await.unwrap();
    expect_positions(&mut sub, &[early, later]).await;

    // (2) The open transaction wrote another table only: no wake-up when it ends.
    let tx = holder.transaction().await.unwrap();
    tx.execute("INSERT INTO scratch VALUES (1)", &[])
        .await
        .unwrap();
    let holding = xact_id(&tx).await;
    let later = journal
        .publish(&publisher, channel, "later 2")
        .await
        .unwrap();
    held_by(&sub, 1, holding).await;
    tx.commit().await.unwrap();
    assert_eq!(next_entry(&mut sub).await.position(), Some(later));
    eventually("nothing is held back any more", || {
        let held = sub.stats().held_back;
        async move { held == 0 }
    })
    .await;
    assert_eq!(sub.stats().held_back_since, None);

    // (3) The open transaction published and rolls back: its entry never arrives.
    let tx = holder.transaction().await.unwrap();
    let holding = xact_id(&tx).await;
    journal.publish(&tx, channel, "rolled back").await.unwrap();
    let later = journal
        .publish(&publisher, channel, "later 3")
        .await
        .unwrap();
    let more = journal
        .publish(&publisher, channel, "later 4")
        .await
        .unwrap();
    held_by(&sub, 2, holding).await;
    tx.rollback().await.unwrap();
    expect_only(&mut sub, &[later, more], &journal, &publisher, channel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_now_takes_open_transactions_and_not_settled_ones() {
    let (_cluster, publisher, mut holder, journal, listener) = setup().await;
    let channel = "now";
    journal
        .publish(&publisher, channel, "settled")
        .await
        .unwrap();
    let tx = holder.transaction().await.unwrap();
    let open = journal.publish(&tx, channel, "open").await.unwrap();
    let mut sub = listener
        .subscribe_durable_in(&journal, channel, Cursor::Now)
        .await
        .unwrap();
    // A transaction not begun yet when subscribe_durable returned.
    let not_begun = journal
        .publish(&publisher, channel, "not begun")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // "settled" would have come before "open": it never does.
    expect_only(&mut sub, &[open, not_begun], &journal, &publisher, channel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_stops_below_the_watermark() {
    let (_cluster, publisher, mut holder, journal, listener) = setup().await;
    let channel = "prune_held";
    let old = journal.publish(&publisher, channel, "old").await.unwrap();
    let tx = holder.transaction().await.unwrap();
    let open = journal.publish(&tx, channel, "open").await.unwrap();
    let later = journal.publish(&publisher, channel, "later").await.unwrap();
    // Everything is older than zero seconds, but `later` is above the watermark (the
    // open transaction could still add before it): only `old` goes.
    assert_eq!(
        journal.prune(&publisher, Duration::ZERO).await.unwrap(),
        Some(old)
    );
    tx.commit().await.unwrap();
    let mut sub = listener
        .subscribe_durable_in(&journal, channel, Cursor::After(old))
        .await
        .unwrap();
    expect_positions(&mut sub, &[open, later]).await;
}
