//! Sending from your own clients: `notify_many` in one statement, the public channel and
//! payload checks, and a sender using another client library (sqlx).

use std::time::Duration;

use crate::support::*;
use pglisten::{Channel, ErrorKind, Listener};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_many_delivers_ten_thousand_payloads_complete_and_in_order() {
    let url = shared_url();
    let listener = Listener::builder(&url)
        .queue_capacity(20_000)
        .connect()
        .await
        .unwrap();
    let channel = unique("many");
    let mut events = listener.subscribe([&channel]).await.unwrap();
    let payloads: Vec<String> = (0..10_000).map(|i| format!("p{i}")).collect();

    let mut client = admin(&url).await;
    let tx = client.transaction().await.unwrap();
    pglisten::notify_many(&tx, &channel, &payloads)
        .await
        .unwrap();
    // Nothing is delivered before the commit.
    assert!(!has_ready_event(&mut events));
    tx.commit().await.unwrap();

    for (i, expected) in payloads.iter().enumerate() {
        let n = next_notification(&mut events).await;
        assert_eq!(n.payload(), expected, "notification {i} out of order");
        assert_eq!(n.channel(), channel);
    }
    // Nothing more: the last one of a fresh send is the next thing to arrive.
    send(&client, &channel, "end").await;
    assert_eq!(next_notification(&mut events).await.payload(), "end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_many_outside_a_transaction_and_with_nothing_to_send() {
    let url = shared_url();
    let listener = Listener::connect(&url).await.unwrap();
    let channel = unique("many_auto");
    let mut events = listener.subscribe([&channel]).await.unwrap();
    let client = admin(&url).await;
    // An empty batch sends nothing (and needs no round trip).
    pglisten::notify_many(&client, &channel, Vec::<String>::new())
        .await
        .unwrap();
    // Outside a transaction the statement is its own transaction.
    pglisten::notify_many(&client, &channel, ["a", "b", "c"])
        .await
        .unwrap();
    for expected in ["a", "b", "c"] {
        assert_eq!(next_notification(&mut events).await.payload(), expected);
    }
    assert!(!has_ready_event(&mut events));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_payload_in_a_batch_sends_nothing_and_says_which() {
    let url = shared_url();
    let listener = Listener::connect(&url).await.unwrap();
    let channel = unique("many_bad");
    let mut events = listener.subscribe([&channel]).await.unwrap();
    let client = admin(&url).await;
    let too_long = "x".repeat(pglisten::MAX_PAYLOAD_BYTES);
    let err = pglisten::notify_many(&client, &channel, ["ok", too_long.as_str()])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidPayload);
    assert!(err.to_string().contains("payload 1 of the batch"), "{err}");
    assert!(err.to_string().contains("nothing was sent"), "{err}");
    let err = pglisten::notify_many(&client, "", ["ok"])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidChannel);
    // The first thing to arrive is what is sent next: "ok" was not sent.
    send(&client, &channel, "after").await;
    assert_eq!(next_notification(&mut events).await.payload(), "after");
}

/// The public checks refuse exactly what `notify` refuses, with the same errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_checks_give_the_same_errors_as_notify() {
    let url = shared_url();
    let client = admin(&url).await;
    let listener = Listener::connect(&url).await.unwrap();
    let long_channel = "c".repeat(pglisten::MAX_CHANNEL_BYTES + 1);
    let wide_channel = "é".repeat(32); // 64 bytes
    for bad in [
        "",
        "nul\0inside",
        long_channel.as_str(),
        wide_channel.as_str(),
    ] {
        let sent = pglisten::notify(&client, bad, "x").await.unwrap_err();
        let through_listener = listener.notify(bad, "x").await.unwrap_err();
        let checked = pglisten::validate_channel(bad).unwrap_err();
        let made = Channel::new(bad).unwrap_err();
        assert_eq!(sent.kind(), ErrorKind::InvalidChannel, "{bad:?}");
        for other in [&through_listener, &checked, &made] {
            assert_eq!(other.kind(), sent.kind(), "{bad:?}");
            assert_eq!(other.to_string(), sent.to_string(), "{bad:?}");
        }
    }
    let long_payload = "p".repeat(pglisten::MAX_PAYLOAD_BYTES);
    for bad in [long_payload.as_str(), "nul\0inside"] {
        let sent = pglisten::notify(&client, "fine", bad).await.unwrap_err();
        let checked = pglisten::validate_payload(bad).unwrap_err();
        assert_eq!(sent.kind(), ErrorKind::InvalidPayload);
        assert_eq!(checked.kind(), sent.kind());
        assert_eq!(checked.to_string(), sent.to_string());
    }
    // What the checks accept, the server accepts unchanged.
    let longest = "c".repeat(pglisten::MAX_CHANNEL_BYTES);
    let channel = Channel::new(&longest).unwrap();
    let mut events = listener.subscribe([channel.as_str()]).await.unwrap();
    let payload = "p".repeat(pglisten::MAX_PAYLOAD_BYTES - 1);
    pglisten::validate_payload(&payload).unwrap();
    pglisten::notify(&client, &channel, &payload).await.unwrap();
    let n = next_notification(&mut events).await;
    assert_eq!(
        (n.channel(), n.payload()),
        (longest.as_str(), payload.as_str())
    );
}

/// Sending with sqlx, as the docs of `Channel` show, reaches a pglisten subscription,
/// at the commit of sqlx's transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_sent_with_sqlx_arrives() {
    let url = shared_url();
    let listener = Listener::connect(&url).await.unwrap();
    let channel = Channel::new(unique("Sqlx Sender")).unwrap();
    let mut events = listener.subscribe([&channel]).await.unwrap();

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(WAIT)
        .connect(&url)
        .await
        .unwrap();
    let payload = "from sqlx";
    pglisten::validate_payload(payload).unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel.as_str())
        .bind(payload)
        .execute(&mut *tx)
        .await
        .unwrap();
    // Delivered at commit, not before.
    tokio::task::yield_now().await;
    assert!(!has_ready_event(&mut events));
    tx.commit().await.unwrap();
    let n = next_notification(&mut events).await;
    assert_eq!((n.channel(), n.payload()), (channel.as_str(), payload));

    // Straight through the pool, too.
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel.as_str())
        .bind("second")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(next_notification(&mut events).await.payload(), "second");
    tokio::time::timeout(Duration::from_secs(10), pool.close())
        .await
        .unwrap();
}
