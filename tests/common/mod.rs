//! Helpers shared by the integration tests: waiting for events with a timeout (never a
//! fixed sleep), an admin connection, and unique channel names.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use pglisten::tokio_postgres::{self, Client, NoTls};
use pglisten::{Event, Notification, Subscription};

/// The longest any single expected event may take. Generous: machines are shared.
pub const WAIT: Duration = Duration::from_secs(30);

/// A channel name no other test uses (tests share one server and run in parallel).
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The next event, or a panic naming what was awaited.
pub async fn next_event(sub: &mut Subscription) -> Event {
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("the subscription ended while an event was expected"),
        Err(_) => panic!("no event within {WAIT:?}"),
    }
}

/// The next event, which must be a notification.
pub async fn next_notification(sub: &mut Subscription) -> Notification {
    match next_event(sub).await {
        Event::Notification(n) => n,
        other => panic!("expected a notification, got {other:?}"),
    }
}

/// Skips events until `pred` matches one, returning the events skipped and the match.
pub async fn until(sub: &mut Subscription, pred: impl Fn(&Event) -> bool) -> (Vec<Event>, Event) {
    let mut skipped = Vec::new();
    loop {
        let event = next_event(sub).await;
        if pred(&event) {
            return (skipped, event);
        }
        skipped.push(event);
    }
}

/// True if an event is ready right now, without waiting.
pub fn has_ready_event(sub: &mut Subscription) -> bool {
    futures::FutureExt::now_or_never(sub.next()).is_some()
}

/// An ordinary connection for sending notifications and inspecting the server.
pub async fn admin(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("admin connection to {url} failed: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Sends one notification from `client` and returns once it is committed.
pub async fn send(client: &Client, channel: &str, payload: &str) {
    client
        .execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
        .await
        .unwrap_or_else(|e| panic!("NOTIFY {channel} failed: {e}"));
}

/// Polls `check` every 20 ms until it holds, failing after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The shared test server's URL (or `DATABASE_URL`).
pub fn shared_url() -> String {
    pglisten_testkit::shared().url()
}

/// Starts a throwaway cluster of the test's own (for tests that stop or restart it).
pub async fn own_cluster() -> pglisten_testkit::Cluster {
    tokio::task::spawn_blocking(pglisten_testkit::Cluster::start)
        .await
        .expect("cluster start panicked")
        .expect("could not start a throwaway PostgreSQL cluster")
}

/// Runs a blocking cluster operation off the async threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

/// Whether a backend with this pid is still connected.
pub async fn backend_alive(client: &Client, pid: i32) -> bool {
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .expect("pg_stat_activity query");
    row.get::<_, i64>(0) > 0
}
