//! Losing the connection: every gap is announced with `Reconnected`, after LISTEN is
//! active again and before any notification from the new connection. Each test that
//! disturbs the server has a cluster of its own.

use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use pglisten::{Backoff, ErrorKind, Event, Listener};
use pglisten_testkit::StopMode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_backend_is_followed_by_reconnected_and_delivery() {
    let cluster = own_cluster().await;
    let url = cluster.url();
    let listener = Listener::builder(&url)
        .backoff(fast_backoff())
        .connect()
        .await
        .unwrap();
    let (mut sub, channel, producer) = flowing(&listener, &url, "terminate").await;
    let admin = admin(&url).await;
    for _ in 0..3 {
        next_notification(&mut sub).await;
        let pid = listener.backend_pid().expect("connected");
        admin
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap();
        let error = expect_loss(&mut sub).await;
        assert_eq!(error.kind(), ErrorKind::ConnectionLost, "{error}");
        let (_, report) = reconnected_after_errors(&mut sub).await;
        assert!(report.attempts() >= 1);
        assert_ne!(listener.backend_pid(), Some(pid), "a new backend");
        expect_flow_after_gap(&mut sub, &producer).await;
    }
    assert_eq!(listener.listening_channels().await.unwrap(), [channel]);
    producer.stop().await;
}

async fn restart_scenario(mode: StopMode) {
    let cluster = Arc::new(own_cluster().await);
    let url = cluster.url();
    let listener = Listener::builder(&url)
        .backoff(fast_backoff())
        .connect()
        .await
        .unwrap();
    let channel = unique("restart");
    let other = unique("restart_other");
    let mut sub = listener.subscribe([&channel]).await.unwrap();
    let mut second = listener.subscribe([&other]).await.unwrap();
    let producer = Producer::start(url.clone(), channel.clone());
    next_notification(&mut sub).await;
    let c = cluster.clone();
    blocking(move || c.restart(mode)).await.expect("restart");
    let report = expect_gap(&mut sub).await;
    assert!(report.attempts() >= 1);
    expect_flow_after_gap(&mut sub, &producer).await;
    // Every subscription is told, and both channels are LISTENed again.
    let second_report = expect_gap(&mut second).await;
    assert!(second_report.attempts() >= 1);
    let mut channels = listener.listening_channels().await.unwrap();
    channels.sort();
    let mut expected = vec![channel.clone(), other.clone()];
    expected.sort();
    assert_eq!(channels, expected);
    listener.notify(&other, "second works").await.unwrap();
    assert_eq!(
        next_notification(&mut second).await.payload(),
        "second works"
    );
    producer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_fast_is_followed_by_reconnected_and_delivery() {
    restart_scenario(StopMode::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_immediate_is_followed_by_reconnected_and_delivery() {
    restart_scenario(StopMode::Immediate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_for_seconds_then_back() {
    let cluster = Arc::new(own_cluster().await);
    let url = cluster.url();
    let listener = Listener::builder(&url)
        .backoff(fast_backoff())
        .connect()
        .await
        .unwrap();
    let (mut sub, channel, producer) = flowing(&listener, &url, "down").await;

    let c = cluster.clone();
    blocking(move || c.stop(StopMode::Fast))
        .await
        .expect("stop");
    // The outage lasts 3 s by design; meanwhile the stream reports the loss and the
    // failed attempts, and never ends.
    let outage = Duration::from_secs(3);
    let until_back = tokio::time::Instant::now() + outage;
    let mut errors = Vec::new();
    let mut notifications_after_loss = 0;
    while let Ok(event) = tokio::time::timeout_at(until_back, next_event(&mut sub)).await {
        match event {
            Event::Error(e) => errors.push(e),
            Event::Notification(_) if errors.is_empty() => {}
            Event::Notification(_) => notifications_after_loss += 1,
            other => panic!("unexpected while the server is down: {other:?}"),
        }
    }
    assert_eq!(notifications_after_loss, 0);
    assert_eq!(errors[0].kind(), ErrorKind::ConnectionLost, "{}", errors[0]);
    assert!(
        errors.len() >= 3,
        "failed attempts are reported: {errors:?}"
    );
    assert!(
        errors[1..].iter().all(|e| e.kind() == ErrorKind::Connect),
        "{errors:?}"
    );
    assert!(
        listener.notify(&channel, "x").await.is_err(),
        "notify fails while down"
    );

    let c = cluster.clone();
    blocking(move || c.start_again())
        .await
        .expect("start again");
    let (_, report) = reconnected_after_errors(&mut sub).await;
    assert!(report.downtime() >= outage, "{report:?}");
    assert!(
        report.attempts() as usize >= errors.len(),
        "{report:?} vs {} errors",
        errors.len()
    );
    expect_flow_after_gap(&mut sub, &producer).await;
    producer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_connect_while_the_server_is_down_starts_with_reconnected() {
    let cluster = Arc::new(own_cluster().await);
    let c = cluster.clone();
    blocking(move || c.stop(StopMode::Fast))
        .await
        .expect("stop");
    let url = cluster.url();
    let listener = Listener::builder(&url)
        .backoff(fast_backoff())
        .connect_lazy()
        .unwrap();
    let channel = unique("lazy");
    let mut sub = tokio::time::timeout(WAIT, listener.subscribe([&channel]))
        .await
        .expect("subscribe returns while disconnected")
        .unwrap();
    let Event::Error(first) = next_event(&mut sub).await else {
        panic!("expected an error")
    };
    assert_eq!(first.kind(), ErrorKind::Connect, "{first}");
    assert!(listener.backend_pid().is_none());

    let c = cluster.clone();
    blocking(move || c.start_again()).await.expect("start");
    reconnected_after_errors(&mut sub).await;
    let admin = admin(&url).await;
    send(&admin, &channel, "hello").await;
    assert_eq!(next_notification(&mut sub).await.payload(), "hello");
}

#[tokio::test]
async fn shutdown_interrupts_backoff_at_once() {
    let cluster = Arc::new(own_cluster().await);
    let url = cluster.url();
    let listener = Listener::builder(&url)
        .backoff(
            Backoff::new()
                .initial(Duration::from_secs(600))
                .max(Duration::from_secs(600)),
        )
        .connect()
        .await
        .unwrap();
    let mut sub = listener.subscribe([unique("sleepy")]).await.unwrap();
    let c = cluster.clone();
    blocking(move || c.stop(StopMode::Immediate))
        .await
        .expect("stop");
    // The immediate retry fails; the task then sleeps up to 10 minutes.
    let (_, _) = until(
        &mut sub,
        |e| matches!(e, Event::Error(e) if e.kind() == ErrorKind::Connect),
    )
    .await;
    tokio::time::timeout(Duration::from_secs(10), listener.shutdown())
        .await
        .expect("shutdown does not wait for the backoff");
    assert!(
        tokio::time::timeout(WAIT, futures::StreamExt::next(&mut sub))
            .await
            .unwrap()
            .is_none()
    );
}
