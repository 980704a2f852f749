//! Benchmark 10: the live example's server (`examples/live/server.rs`, issue 18) under
//! load: N concurrent SSE clients (plain hyper HTTP/1 connections, one per simulated
//! browser) on ONE listener, while a producer makes 1 000 changes per second.
//!
//! Each client does what the page does: `GET /api/snapshot`, then `GET /api/events`
//! from the snapshot's position, on one keep-alive connection. Delivery latency is from
//! just before the producing transaction's COMMIT is sent to the moment a client has read
//! the event from its socket. Every client must receive every change (checked). The same
//! run measures one client, then N, then one client again; the target is p99 at N
//! clients ≤ 3× the p99 of one client.
//!
//! `cargo bench -p pglisten-benches --bench live`; knobs: `PGLISTEN_BENCH_LIVE_CLIENTS`
//! (1000), `PGLISTEN_BENCH_LIVE_RATE` (changes per second, 1000),
//! `PGLISTEN_BENCH_LIVE_SECS` (per round, 10), `PGLISTEN_BENCH_LIVE_BATCH` (changes per
//! transaction, 10), `PGLISTEN_BENCH_LIVE_MODES` (`durable,plain`).

// Not every item of the example is used here.
#[allow(dead_code, unused_imports)]
#[path = "../examples/live/server.rs"]
mod server;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use server::{Change, Mode};
use support::*;
use tokio::net::{TcpListener, TcpStream};

/// Latency histogram: 10 µs buckets up to 2 s, then one overflow bucket.
const BUCKET_NS: u64 = 10_000;
const BUCKETS: usize = 200_000;

struct Histogram {
    buckets: Vec<AtomicU64>,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: (0..=BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn record(&self, ns: u64) {
        let bucket = usize::try_from(ns / BUCKET_NS)
            .unwrap_or(BUCKETS)
            .min(BUCKETS);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// The upper edge of the bucket holding percentile `p`, in ms.
    fn percentile_ms(&self, p: f64) -> f64 {
        let total: u64 = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum();
        let rank = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            seen += bucket.load(Ordering::Relaxed);
            if seen >= rank {
                return ((i as u64 + 1) * BUCKET_NS) as f64 / 1e6;
            }
        }
        f64::NAN
    }
}

/// What one round measured.
struct Round {
    clients: usize,
    changes: u64,
    delivered: u64,
    histogram: Arc<Histogram>,
    kib_per_client: Option<f64>,
    /// This process's CPU (server and clients; not PostgreSQL) from the first change
    /// until the last delivery.
    sample: Sample,
}

fn main() {
    if listing_only() {
        return;
    }
    // A client task that panics must end the run, not leave it waiting.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::exit(101);
    }));
    let clients = size("PGLISTEN_BENCH_LIVE_CLIENTS", 1000, 1000, 20);
    let rate = size("PGLISTEN_BENCH_LIVE_RATE", 1000, 1000, 200);
    let secs = size("PGLISTEN_BENCH_LIVE_SECS", 10, 4, 1);
    let batch = size("PGLISTEN_BENCH_LIVE_BATCH", 10, 10, 10);
    let modes = std::env::var("PGLISTEN_BENCH_LIVE_MODES")
        .ok()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "durable,plain".to_owned());
    raise_fd_limit(2 * clients + 256);

    let db = Db::start();
    let admin = Admin::connect(db.url());
    let db = db.database(&admin, "pglisten_bench_live");
    let admin = Admin::connect(db.url());
    admin
        .runtime()
        .block_on(server::setup(&admin.client()))
        .expect("setup");
    let rt = Flavor::MultiThread.runtime();
    clock_ns();
    print_context(
        "Benchmark 10: live page server, SSE clients on one listener",
        &db,
        &format!(
            "{rate} changes/s in transactions of {batch}, {secs} s per round; clients and \
             server in this process, multi-thread runtime"
        ),
    );

    let mut table = Table::new(
        format!("SSE delivery, {rate} changes/s, one listener"),
        &[
            "mode",
            "clients",
            "delivered",
            "p50",
            "p99",
            "max bucket",
            "memory per client",
            "CPU per delivery (cores busy)",
            "p99 vs 1 client",
        ],
    );
    for mode in modes.split(',') {
        let mode: Mode = mode.trim().parse().expect("PGLISTEN_BENCH_LIVE_MODES");
        let rounds: Vec<Round> = [1, clients, 1]
            .into_iter()
            .map(|n| rt.block_on(round(&db, &admin, mode, n, rate, secs, batch)))
            .collect();
        // One client, before and after: the worse of the two is the baseline.
        let single = rounds[0]
            .histogram
            .percentile_ms(99.0)
            .max(rounds[2].histogram.percentile_ms(99.0));
        for r in &rounds[..2] {
            let p99 = r.histogram.percentile_ms(99.0);
            let ratio = p99 / single;
            table.row(vec![
                mode.name().to_owned(),
                r.clients.to_string(),
                format!("{} / {}", r.delivered, r.changes * r.clients as u64),
                format!("{:.2} ms", r.histogram.percentile_ms(50.0)),
                format!("{p99:.2} ms"),
                format!("{:.2} ms", r.histogram.percentile_ms(100.0)),
                r.kib_per_client
                    .map_or("–".to_owned(), |k| format!("{k:.0} KiB")),
                format!(
                    "{} ({:.2})",
                    fmt_ns_as_us(r.sample.cpu_ns()),
                    r.sample.cpu.as_secs_f64() / r.sample.wall.as_secs_f64()
                ),
                if r.clients == 1 {
                    "1.00× (worse of the two 1-client rounds)".to_owned()
                } else {
                    format!(
                        "{} (target ≤ 3×: {})",
                        fmt_ratio(ratio),
                        verdict(ratio <= 3.0)
                    )
                },
            ]);
        }
    }
    table.print();
}

/// Raises the soft limit on open files to at least `needed` (each client is two
/// sockets in this process: its own and the server's end).
#[allow(
    unsafe_code,
    reason = "getrlimit/setrlimit(2) have no safe wrapper in std"
)]
fn raise_fd_limit(needed: usize) {
    // SAFETY: an all-zero `rlimit` is a valid value of this plain C struct.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `limit` is valid and writable for the duration of the call.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    let needed = needed as libc::rlim_t;
    if limit.rlim_cur >= needed {
        return;
    }
    assert!(
        limit.rlim_max >= needed,
        "{needed} open files are needed and the hard limit is {} (ulimit -Hn): raise it",
        limit.rlim_max
    );
    limit.rlim_cur = needed;
    // SAFETY: `limit` is a valid `rlimit`.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
}

/// Starts a server, connects `n` clients, runs the producer for `secs` seconds, and
/// waits for every client to have every change.
async fn round(
    db: &Db,
    admin: &Admin,
    mode: Mode,
    n: usize,
    rate: usize,
    secs: usize,
    batch: usize,
) -> Round {
    let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let live = server::start(db.url(), mode, socket).await.expect("server");
    let addr = live.addr();
    let histogram = Arc::new(Histogram::new());
    let transactions = (rate * secs).div_ceil(batch);
    // Clock reading just before each transaction's COMMIT, by transaction number.
    let commits: Arc<Vec<AtomicU64>> =
        Arc::new((0..transactions).map(|_| AtomicU64::new(0)).collect());
    let delivered = Arc::new(AtomicU64::new(0));

    let rss_before = rss_kib();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (histogram, commits, delivered, ready) = (
            histogram.clone(),
            commits.clone(),
            delivered.clone(),
            ready_tx.clone(),
        );
        tasks.push(tokio::spawn(client(
            addr, ready, commits, histogram, delivered,
        )));
    }
    for _ in 0..n {
        ready_rx.recv().await.expect("a client failed to connect");
    }
    let rss_connected = rss_kib();

    let changes = (transactions * batch) as u64;
    let url = db.url().to_owned();
    let meter = Meter::start();
    let producer = admin
        .runtime()
        .spawn(produce(url, commits, rate, batch, transactions));
    producer.await.expect("producer");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while delivered.load(Ordering::Relaxed) < changes * n as u64
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sample = meter.stop(delivered.load(Ordering::Relaxed));
    let kib_per_client =
        (n > 1).then(|| rss_kib().max(rss_connected).saturating_sub(rss_before) as f64 / n as f64);
    for task in tasks {
        task.abort();
    }
    live.stop().await.expect("stop");
    Round {
        clients: n,
        changes,
        delivered: delivered.load(Ordering::Relaxed),
        // Aborted clients may still hold their clone for a moment.
        histogram,
        kib_per_client,
        sample,
    }
}

/// Changes rows at `rate` per second, `batch` per transaction; each changed row's name
/// is `b<transaction number>`.
async fn produce(
    url: String,
    commits: Arc<Vec<AtomicU64>>,
    rate: usize,
    batch: usize,
    transactions: usize,
) {
    let mut client = pglisten_testkit::admin(&url).await;
    let period = Duration::from_secs_f64(batch as f64 / rate as f64);
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for t in 0..transactions {
        ticks.tick().await;
        let changes: Vec<Change> = (0..batch)
            .map(|i| Change::Set {
                id: ((t * batch + i) % 100) as i32 + 1,
                name: format!("b{t}"),
                qty: i as i32,
            })
            .collect();
        let tx = client.transaction().await.expect("begin");
        server::apply_in(&tx, &changes).await.expect("change");
        commits[t].store(clock_ns(), Ordering::Release);
        tx.commit().await.expect("commit");
    }
}

/// One simulated browser: snapshot, then the event stream, recording each change's
/// latency.
async fn client(
    addr: SocketAddr,
    ready: tokio::sync::mpsc::UnboundedSender<()>,
    commits: Arc<Vec<AtomicU64>>,
    histogram: Arc<Histogram>,
    delivered: Arc<AtomicU64>,
) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    // The connection is driven in this same task (not a task of its own): one wake-up
    // per frame instead of two.
    let work = browse(addr, sender, ready, commits, histogram, delivered);
    let _ = futures::future::select(Box::pin(connection), Box::pin(work)).await;
}

/// The page's two requests on the connection `sender`, and the events.
async fn browse(
    addr: SocketAddr,
    mut sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    ready: tokio::sync::mpsc::UnboundedSender<()>,
    commits: Arc<Vec<AtomicU64>>,
    histogram: Arc<Histogram>,
    delivered: Arc<AtomicU64>,
) {
    let get = |path: String| {
        Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .expect("request")
    };
    let snapshot = sender
        .send_request(get("/api/snapshot".to_owned()))
        .await
        .expect("snapshot");
    let snapshot = snapshot
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let snapshot = std::str::from_utf8(&snapshot).expect("utf-8");
    let after = snapshot
        .split_once(r#""after":""#)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(after, _)| after.to_owned())
        .expect("the snapshot's position");
    let events = sender
        .send_request(get(format!("/api/events?after={after}")))
        .await
        .expect("events");
    assert_eq!(events.status(), 200);
    let mut body = events.into_body();
    let mut buffer = Vec::new();
    let mut announced = false;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.expect("stream").into_data() else {
            continue;
        };
        let now = clock_ns();
        buffer.extend_from_slice(&data);
        // Every complete event in the buffer; what is left is kept for the next frame.
        let mut start = 0;
        let mut changes = 0;
        while let Some(length) = buffer[start..].windows(2).position(|w| w == b"\n\n") {
            let event = std::str::from_utf8(&buffer[start..start + length]).expect("utf-8");
            start += length + 2;
            if event.starts_with("event: ready") && !announced {
                announced = true;
                let _ = ready.send(());
            } else if event.starts_with("event: change") {
                let t: usize = event
                    // json_build_object writes `"name" : "b12"`.
                    .split_once(r#""name" : "b"#)
                    .and_then(|(_, rest)| rest.split_once('"'))
                    .and_then(|(t, _)| t.parse().ok())
                    .unwrap_or_else(|| panic!("not a change made by the producer: {event:?}"));
                let committed = commits[t].load(Ordering::Acquire);
                histogram.record(now.saturating_sub(committed));
                changes += 1;
            }
        }
        buffer.drain(..start);
        delivered.fetch_add(changes, Ordering::Relaxed);
    }
}
