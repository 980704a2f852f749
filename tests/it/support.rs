//! Helpers shared by the integration tests: waiting for events with a timeout (never a
//! fixed sleep), an admin connection, and unique channel names.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use pglisten::tokio_postgres::Client;
use pglisten::{Backoff, Event, Listener, Notification, Subscription};

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
pub use pglisten_testkit::admin;

/// An error as a user sees it with anyhow's `{:#}`: its own message and the message of
/// every error in its `source()` chain, joined by ": ". Tests that look for a cause's
/// text (a server or driver message) or check that no secret is shown read this.
pub fn error_report(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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

/// A listener on `url` whose subscriptions each queue up to `capacity` notifications.
pub async fn listener_with_queue(url: &str, capacity: usize) -> Listener {
    Listener::builder(url)
        .queue_capacity(capacity)
        .connect()
        .await
        .unwrap()
}

/// What a delivery test on the shared server starts from: a listener whose
/// subscriptions each queue up to `capacity` notifications, a channel no other test
/// uses, and a connection to send on it.
pub struct Delivering {
    pub url: String,
    pub listener: Listener,
    pub channel: String,
    pub sender: Client,
}

impl Delivering {
    /// On the shared server, with a channel named after `prefix`.
    pub async fn start(capacity: usize, prefix: &str) -> Delivering {
        let url = shared_url();
        let listener = listener_with_queue(&url, capacity).await;
        let sender = admin(&url).await;
        Delivering {
            url,
            listener,
            channel: unique(prefix),
            sender,
        }
    }
}

/// A user's own rustls configuration (ring provider, safe default protocol versions,
/// no client certificate) trusting the certificates in `pem`.
#[cfg(feature = "tls")]
pub fn rustls_config_trusting(pem: &[u8]) -> pglisten::rustls::ClientConfig {
    use pglisten::rustls;
    use pglisten::rustls::pki_types::CertificateDer;
    use pglisten::rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Runs `f` on a plain thread (no runtime there) and returns what it returns; fails the
/// test if that takes longer than [`WAIT`] (the thread is then left behind).
pub fn on_plain_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(f());
    });
    result
        .recv_timeout(WAIT)
        .unwrap_or_else(|e| panic!("a plain thread did not finish within {WAIT:?}: {e}"))
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

/// A [`FaultProxy`](pglisten_testkit::FaultProxy) in front of `cluster`, and the
/// superuser URL that goes through it.
pub async fn proxy_to(
    cluster: &pglisten_testkit::Cluster,
) -> (pglisten_testkit::FaultProxy, String) {
    let proxy = pglisten_testkit::FaultProxy::start(([127, 0, 0, 1], cluster.port()).into())
        .await
        .expect("start the fault proxy");
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", proxy.port());
    (proxy, url)
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

/// Sends numbered notifications on `channel` every few milliseconds until stopped,
/// reconnecting its own connection as needed: traffic keeps flowing across every gap.
pub struct Producer {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Producer {
    pub fn start(url: String, channel: String) -> Producer {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (stop, sent) = (stop.clone(), sent.clone());
            async move {
                let mut client = None;
                while !stop.load(Ordering::Relaxed) {
                    if client.is_none() {
                        client = pglisten_testkit::try_admin(&url).await.ok();
                    }
                    if let Some(c) = &client {
                        let n = sent.load(Ordering::Relaxed);
                        match pglisten::notify(c, &channel, &n.to_string()).await {
                            Ok(()) => {
                                sent.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => client = None,
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        Producer { stop, sent, task }
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
    }
}

/// Reads until `Reconnected`, checking what a consumer relies on: the loss is announced
/// as an error of kind ConnectionLost, and no notification arrives between that error
/// and `Reconnected`. Returns the report.
pub async fn expect_gap(sub: &mut Subscription) -> pglisten::ReconnectReport {
    expect_loss(sub).await;
    reconnected_after_errors(sub).await.1
}

/// The next error, with only notifications before it: the loss of a connection that
/// was delivering.
pub async fn expect_loss(sub: &mut Subscription) -> pglisten::Error {
    let (before, lost) = until(sub, |e| matches!(e, Event::Error(_))).await;
    assert!(
        before.iter().all(|e| matches!(e, Event::Notification(_))),
        "only notifications before the loss: {before:?}"
    );
    match lost {
        Event::Error(error) => error,
        _ => unreachable!(),
    }
}

/// The next `Reconnected`, with only errors (failed attempts) before it: the errors and
/// the report.
pub async fn reconnected_after_errors(
    sub: &mut Subscription,
) -> (Vec<pglisten::Error>, pglisten::ReconnectReport) {
    let (between, reconnected) = until(sub, |e| matches!(e, Event::Reconnected(_))).await;
    let errors = between
        .into_iter()
        .map(|event| match event {
            Event::Error(error) => error,
            other => panic!("between the loss and Reconnected only errors may come: {other:?}"),
        })
        .collect();
    match reconnected {
        Event::Reconnected(report) => (errors, report),
        _ => unreachable!(),
    }
}

/// A subscription of `listener` to a channel of its own (named after `prefix`), fed by a
/// [`Producer`] that sends through `producer_url`, once its first notification has
/// arrived: traffic flows. Returns the subscription, the channel and the producer.
pub async fn flowing(
    listener: &Listener,
    producer_url: &str,
    prefix: &str,
) -> (Subscription, String, Producer) {
    let channel = unique(prefix);
    let mut sub = listener.subscribe([&channel]).await.unwrap();
    let producer = Producer::start(producer_url.to_owned(), channel.clone());
    next_notification(&mut sub).await;
    (sub, channel, producer)
}

/// After a gap: notifications sent from now on all arrive, in order.
pub async fn expect_flow_after_gap(sub: &mut Subscription, producer: &Producer) {
    // The producer keeps sending; what it sends after this point must arrive.
    let from = producer.sent() + 1;
    let mut last = None;
    loop {
        match next_event(sub).await {
            Event::Notification(n) => {
                let k: u64 = n.payload().parse().unwrap();
                if let Some(prev) = last {
                    // The producer may resend a number whose commit it could not confirm.
                    assert!(
                        k == prev + 1 || k == prev,
                        "missed after Reconnected: {prev} -> {k}"
                    );
                }
                last = Some(k);
                if k >= from + 20 {
                    return;
                }
            }
            other => panic!("unexpected event after Reconnected: {other:?}"),
        }
    }
}

/// Quick retries (50 ms growing to 500 ms), so that recoveries do not wait long.
pub fn fast_backoff() -> Backoff {
    fast_backoff_up_to(Duration::from_millis(500))
}

/// Quick retries starting at 50 ms and growing to `max`.
pub fn fast_backoff_up_to(max: Duration) -> Backoff {
    Backoff::new().initial(Duration::from_millis(50)).max(max)
}

/// Says on stderr, past the test harness's capture, that `test` skipped a check on this
/// machine and why (for example a server too old for it); `.ci/postgres.sh test` counts
/// these lines.
pub fn skipped(test: &str, reason: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "skipped: {test}: {reason}");
}
