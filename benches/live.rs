//! Benchmark 11: the live example's server (`examples/live/server.rs`, issue 18) under
//! load: N concurrent SSE clients (one TCP connection per simulated browser) on ONE
//! listener, while a producer makes 1 000 changes per second.
//!
//! The server runs in this process; the clients and the producer run in a second
//! process (this same binary, started again with `PGLISTEN_BENCH_LIVE_CHILD=1`), so the
//! server's tasks do not queue behind a thousand clients' tasks on one tokio scheduler,
//! and the server's CPU is measured apart from the clients'. Both processes share the
//! machine's cores, as a server and its browsers on one machine would.
//!
//! Each client does what the page does: `GET /api/snapshot`, then `GET /api/events`
//! from the snapshot's position, on one keep-alive connection. It speaks HTTP/1.1 over a
//! plain socket and parses the chunked framing and the SSE lines incrementally (each
//! byte looked at once), checking that every change arrives, in the order made.
//! Delivery latency is from just before the producing transaction's COMMIT is sent to
//! the moment a client has read the event from its socket. Every client must receive
//! every change (checked). The same run measures one client, then N, then one client
//! again; the target is p99 at N clients ≤ 3× the p99 of one client.
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

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use server::{Change, Mode};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Set (to anything) in the clients' process; the round's settings travel in the
/// variables below.
const CHILD: &str = "PGLISTEN_BENCH_LIVE_CHILD";

/// Latency histogram: 10 µs buckets up to 2 s, then one overflow bucket.
const BUCKET_NS: u64 = 10_000;
const BUCKETS: usize = 200_000;

struct Histogram {
    buckets: Vec<u64>,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: vec![0; BUCKETS + 1],
        }
    }

    fn record(&mut self, ns: u64) {
        let bucket = usize::try_from(ns / BUCKET_NS)
            .unwrap_or(BUCKETS)
            .min(BUCKETS);
        self.buckets[bucket] += 1;
    }

    /// The upper edge of the bucket holding percentile `p`, in ms.
    fn percentile_ms(&self, p: f64) -> f64 {
        let total: u64 = self.buckets.iter().sum();
        let rank = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            seen += bucket;
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
    expected: u64,
    delivered: u64,
    p50: f64,
    p99: f64,
    max: f64,
    kib_per_client: Option<f64>,
    /// The server's process (this one; not PostgreSQL) from the first change until the
    /// last delivery.
    server: Sample,
    /// The clients' process (clients and producer), the same stretch.
    clients_cpu: Duration,
}

fn main() {
    if listing_only() {
        return;
    }
    // A task that panics must end the run, not leave it waiting.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::exit(101);
    }));
    if std::env::var_os(CHILD).is_some() {
        child();
        return;
    }
    let clients = size("PGLISTEN_BENCH_LIVE_CLIENTS", 1000, 1000, 20);
    let rate = size("PGLISTEN_BENCH_LIVE_RATE", 1000, 1000, 200);
    let secs = size("PGLISTEN_BENCH_LIVE_SECS", 10, 4, 1);
    let batch = size("PGLISTEN_BENCH_LIVE_BATCH", 10, 10, 10);
    let modes = std::env::var("PGLISTEN_BENCH_LIVE_MODES")
        .ok()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "durable,plain".to_owned());
    raise_fd_limit(clients + 256);

    let db = Db::start();
    let admin = Admin::connect(db.url());
    let db = db.database(&admin, "pglisten_bench_live");
    let admin = Admin::connect(db.url());
    admin
        .runtime()
        .block_on(server::setup(&admin.client()))
        .expect("setup");
    let rt = Flavor::MultiThread.runtime();
    print_context(
        "Benchmark 11: live page server, SSE clients on one listener",
        &db,
        &format!(
            "{rate} changes/s in transactions of {batch}, {secs} s per round; the server \
             in this process (multi-thread runtime), the clients and the producer in a \
             second process ({} runtime thread(s))",
            client_threads()
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
            "server memory per client",
            "server CPU per delivery (cores busy)",
            "clients' CPU per delivery",
            "p99 vs 1 client",
        ],
    );
    for mode in modes.split(',') {
        let mode: Mode = mode.trim().parse().expect("PGLISTEN_BENCH_LIVE_MODES");
        let rounds: Vec<Round> = [1, clients, 1]
            .into_iter()
            .map(|n| rt.block_on(round(&db, mode, n, rate, secs, batch)))
            .collect();
        // One client, before and after: the worse of the two is the baseline.
        let single = rounds[0].p99.max(rounds[2].p99);
        for r in &rounds[..2] {
            let ratio = r.p99 / single;
            let complete = r.delivered == r.expected;
            table.row(vec![
                mode.name().to_owned(),
                r.clients.to_string(),
                format!("{} / {}", r.delivered, r.expected),
                format!("{:.2} ms", r.p50),
                format!("{:.2} ms", r.p99),
                format!("{:.2} ms", r.max),
                r.kib_per_client
                    .map_or("–".to_owned(), |k| format!("{k:.0} KiB")),
                format!(
                    "{} ({:.2})",
                    fmt_ns_as_us(r.server.cpu_ns()),
                    r.server.cpu.as_secs_f64() / r.server.wall.as_secs_f64()
                ),
                format!(
                    "{} ({:.2})",
                    fmt_ns_as_us(r.clients_cpu.as_nanos() as f64 / r.delivered.max(1) as f64),
                    r.clients_cpu.as_secs_f64() / r.server.wall.as_secs_f64()
                ),
                if r.clients == 1 {
                    "1.00× (worse of the two 1-client rounds)".to_owned()
                } else {
                    format!(
                        "{} (target ≤ 3×, every change delivered: {})",
                        fmt_ratio(ratio),
                        verdict(ratio <= 3.0 && complete)
                    )
                },
            ]);
        }
    }
    table.print();
}

/// Raises the soft limit on open files to at least `needed`.
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

/// Starts a server, has the clients' process connect `n` clients and run the producer
/// for `secs` seconds, and waits for every client to have every change.
async fn round(db: &Db, mode: Mode, n: usize, rate: usize, secs: usize, batch: usize) -> Round {
    let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let live = server::start(db.url(), mode, socket).await.expect("server");
    let rss_before = rss_kib();
    let mut child = Command::new(std::env::current_exe().expect("this benchmark's path"))
        .args(std::env::args_os().skip(1))
        .env(CHILD, "1")
        .env("PGLISTEN_BENCH_LIVE_ADDR", live.addr().to_string())
        .env("PGLISTEN_BENCH_LIVE_URL", db.url())
        .env("PGLISTEN_BENCH_LIVE_CLIENTS", n.to_string())
        .env("PGLISTEN_BENCH_LIVE_RATE", rate.to_string())
        .env("PGLISTEN_BENCH_LIVE_SECS", secs.to_string())
        .env("PGLISTEN_BENCH_LIVE_BATCH", batch.to_string())
        .env(
            "PGLISTEN_BENCH_LIVE_CLIENT_THREADS",
            client_threads().to_string(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the clients' process");
    let mut to_child = child.stdin.take().expect("stdin");
    let mut from_child = BufReader::new(child.stdout.take().expect("stdout"));
    // Blocking reads of the child's lines, off the runtime's threads.
    let (from_child, connected) = tokio::task::spawn_blocking(move || {
        let line = read_line(&mut from_child);
        (from_child, line)
    })
    .await
    .expect("read");
    assert_eq!(
        connected, "connected",
        "the clients' process said {connected:?}"
    );
    let rss_connected = rss_kib();

    let meter = Meter::start();
    to_child
        .write_all(b"go\n")
        .expect("tell the clients' process to go");
    to_child.flush().expect("flush");
    let mut from_child = from_child;
    let result = tokio::task::spawn_blocking(move || read_line(&mut from_child))
        .await
        .expect("read");
    let field = |name: &str| -> f64 {
        result
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in the clients' report {result:?}"))
    };
    let delivered = field("delivered") as u64;
    let server = meter.stop(delivered);
    let kib_per_client =
        (n > 1).then(|| rss_kib().max(rss_connected).saturating_sub(rss_before) as f64 / n as f64);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("wait")
        .expect("wait for the clients' process");
    assert!(status.success(), "the clients' process failed: {status}");
    live.stop().await.expect("stop");
    Round {
        clients: n,
        expected: field("expected") as u64,
        delivered,
        p50: field("p50"),
        p99: field("p99"),
        max: field("max"),
        kib_per_client,
        server,
        clients_cpu: Duration::from_nanos(field("cpu_ns") as u64),
    }
}

/// Worker threads of the clients' runtime: `PGLISTEN_BENCH_LIVE_CLIENT_THREADS`, by
/// default one per core.
fn client_threads() -> usize {
    size(
        "PGLISTEN_BENCH_LIVE_CLIENT_THREADS",
        std::thread::available_parallelism().map_or(2, |n| n.get()),
        std::thread::available_parallelism().map_or(2, |n| n.get()),
        2,
    )
    .max(1)
}

/// One line from the clients' process, without its newline; it must not have ended.
fn read_line(from: &mut impl BufRead) -> String {
    let mut line = String::new();
    let read = from
        .read_line(&mut line)
        .expect("read from the clients' process");
    assert!(read > 0, "the clients' process ended early");
    line.trim_end().to_owned()
}

// ---------------------------------------------------------------------------
// The clients' process
// ---------------------------------------------------------------------------

fn child() {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set in the child"))
    };
    let addr: SocketAddr = var("PGLISTEN_BENCH_LIVE_ADDR").parse().expect("address");
    let url = var("PGLISTEN_BENCH_LIVE_URL");
    let number = |name: &str| -> usize { var(name).parse().expect(name) };
    let n = number("PGLISTEN_BENCH_LIVE_CLIENTS");
    let rate = number("PGLISTEN_BENCH_LIVE_RATE");
    let secs = number("PGLISTEN_BENCH_LIVE_SECS");
    let batch = number("PGLISTEN_BENCH_LIVE_BATCH");
    raise_fd_limit(n + 256);
    let transactions = (rate * secs).div_ceil(batch);
    let changes = (transactions * batch) as u64;
    clock_ns();
    // Clock reading just before each transaction's COMMIT, by transaction number.
    let commits: Arc<Vec<AtomicU64>> =
        Arc::new((0..transactions).map(|_| AtomicU64::new(0)).collect());

    let rt = match number("PGLISTEN_BENCH_LIVE_CLIENT_THREADS") {
        1 => Flavor::CurrentThread.runtime(),
        threads => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .expect("tokio runtime"),
    };
    rt.block_on(async {
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
        let (give_up, given_up) = watch::channel(false);
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            tasks.push(tokio::spawn(client(
                addr,
                ready_tx.clone(),
                given_up.clone(),
                commits.clone(),
                batch,
                changes,
            )));
        }
        drop(ready_tx);
        for _ in 0..n {
            ready_rx.recv().await.expect("a client failed to connect");
        }
        println!("connected");
        let go = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map(|_| line)
        })
        .await
        .expect("stdin")
        .expect("read stdin");
        assert_eq!(go.trim(), "go");

        let meter = Meter::start();
        // The producer on a thread and runtime of its own, as in the server's process
        // before (its work is small: 100 transactions a second).
        let producer = {
            let (url, commits) = (url.clone(), commits.clone());
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(produce(url, commits, rate, batch, transactions));
            })
        };
        tokio::task::spawn_blocking(move || producer.join())
            .await
            .expect("join")
            .expect("producer");
        // A minute for the last deliveries; then whatever has arrived is reported.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let _ = give_up.send(true);
        });
        let mut histogram = Histogram::new();
        let (mut delivered, mut failures) = (0u64, Vec::new());
        for task in tasks {
            let report = task.await.expect("client task");
            delivered += report.latencies_us.len() as u64;
            for us in report.latencies_us {
                histogram.record(u64::from(us) * 1000);
            }
            failures.extend(report.failure);
        }
        let cpu = meter.stop(delivered).cpu;
        for failure in failures.iter().take(5) {
            eprintln!("live bench client: {failure}");
        }
        println!(
            "result delivered={delivered} expected={} failures={} p50={} p99={} max={} cpu_ns={}",
            changes * n as u64,
            failures.len(),
            histogram.percentile_ms(50.0),
            histogram.percentile_ms(99.0),
            histogram.percentile_ms(100.0),
            cpu.as_nanos()
        );
    });
}

/// Changes rows at `rate` per second, `batch` per transaction; the `i`-th change of
/// transaction `t` sets a row's name to `b<t>` and its quantity to `i`.
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

/// What one simulated browser saw: the latency of each change (µs), in the order
/// received, and what went wrong, if anything.
#[derive(Default)]
struct Report {
    latencies_us: Vec<u32>,
    failure: Option<String>,
}

/// One simulated browser: snapshot, then the event stream until every change has come
/// (or the run gives up).
async fn client(
    addr: SocketAddr,
    ready: tokio::sync::mpsc::UnboundedSender<()>,
    mut given_up: watch::Receiver<bool>,
    commits: Arc<Vec<AtomicU64>>,
    batch: usize,
    changes: u64,
) -> Report {
    let mut report = Report {
        latencies_us: Vec::with_capacity(changes as usize),
        failure: None,
    };
    let outcome = tokio::select! {
        outcome = browse(addr, ready, &commits, batch, changes, &mut report.latencies_us) => outcome,
        _ = given_up.wait_for(|&g| g) => Err("gave up waiting for the last changes".to_owned()),
    };
    report.failure = outcome.err();
    report
}

/// The page's two requests on one connection, and the events.
async fn browse(
    addr: SocketAddr,
    ready: tokio::sync::mpsc::UnboundedSender<()>,
    commits: &[AtomicU64],
    batch: usize,
    changes: u64,
    latencies_us: &mut Vec<u32>,
) -> Result<(), String> {
    let socket = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    socket.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut http = Http::new(socket);
    let (status, snapshot) = http.get(addr, "/api/snapshot").await?;
    if status != 200 {
        return Err(format!("/api/snapshot: {status}"));
    }
    let snapshot = snapshot.ok_or("/api/snapshot is not a sized body")?;
    let snapshot = std::str::from_utf8(&snapshot).map_err(|e| e.to_string())?;
    let after = snapshot
        .split_once(r#""after":""#)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(after, _)| after.to_owned())
        .ok_or("no position in the snapshot")?;
    let (status, _) = http
        .get(addr, &format!("/api/events?after={after}"))
        .await?;
    if status != 200 {
        return Err(format!("/api/events: {status}"));
    }
    let mut sse = Sse::default();
    let mut expected = (0usize, 0usize);
    let mut announced = false;
    while (latencies_us.len() as u64) < changes {
        let now = http.read().await?;
        let mut failure = None;
        http.chunks(|data| {
            sse.feed(data, |event| {
                if failure.is_some() {
                    return;
                }
                match event {
                    SseEvent::Ready if !announced => {
                        announced = true;
                        let _ = ready.send(());
                    }
                    SseEvent::Change(Some((t, i))) => {
                        if (t, i) != expected {
                            failure = Some(format!(
                                "change {t}.{i} came where {}.{} was due",
                                expected.0, expected.1
                            ));
                            return;
                        }
                        expected = if i + 1 == batch {
                            (t + 1, 0)
                        } else {
                            (t, i + 1)
                        };
                        let committed = commits[t].load(Ordering::Acquire);
                        let ns = now.saturating_sub(committed);
                        latencies_us.push(u32::try_from(ns / 1000).unwrap_or(u32::MAX));
                    }
                    SseEvent::Change(None) => {
                        failure = Some("a change not made by the producer".to_owned())
                    }
                    SseEvent::Reload => failure = Some("told to reload (a gap)".to_owned()),
                    _ => {}
                }
            })
        })?;
        if let Some(failure) = failure {
            return Err(failure);
        }
    }
    Ok(())
}

/// One HTTP/1.1 connection: requests written whole, answers read into one buffer that
/// is consumed from the front (and compacted, never rescanned).
struct Http {
    socket: TcpStream,
    buffer: Vec<u8>,
    /// Unread bytes are `buffer[start..end]`.
    start: usize,
    end: usize,
    /// Of a chunked body: the bytes left in the current chunk, or `None` between
    /// chunks.
    in_chunk: Option<usize>,
    /// The current chunk's data ended; its CRLF has not been consumed yet.
    chunk_crlf: bool,
}

impl Http {
    fn new(socket: TcpStream) -> Http {
        Http {
            socket,
            buffer: vec![0; 16 * 1024],
            start: 0,
            end: 0,
            in_chunk: None,
            chunk_crlf: false,
        }
    }

    /// Reads what the socket has (at least one byte); returns the clock just after.
    async fn read(&mut self) -> Result<u64, String> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buffer.len() {
            if self.start > 0 {
                self.buffer.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            } else {
                self.buffer.resize(self.buffer.len() * 2, 0);
            }
        }
        let read = self
            .socket
            .read(&mut self.buffer[self.end..])
            .await
            .map_err(|e| e.to_string())?;
        let now = clock_ns();
        if read == 0 {
            return Err("the server closed the connection".to_owned());
        }
        self.end += read;
        Ok(now)
    }

    /// Sends `GET path` and reads the answer's head; returns its status and, for a
    /// body with a `Content-Length`, the body (a chunked body is left to [`Http::chunks`]).
    async fn get(
        &mut self,
        addr: SocketAddr,
        path: &str,
    ) -> Result<(u16, Option<Vec<u8>>), String> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        self.socket
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let head_end = loop {
            if let Some(i) = find(&self.buffer[self.start..self.end], b"\r\n\r\n") {
                break self.start + i + 4;
            }
            self.read().await?;
        };
        let head = std::str::from_utf8(&self.buffer[self.start..head_end])
            .map_err(|e| e.to_string())?
            .to_ascii_lowercase();
        self.start = head_end;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not an HTTP answer: {head:?}"))?;
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|l| l.trim().parse::<usize>().ok());
        let Some(length) = length else {
            if !head.contains("transfer-encoding: chunked") {
                return Err(format!("neither sized nor chunked: {head:?}"));
            }
            return Ok((status, None));
        };
        while self.end - self.start < length {
            self.read().await?;
        }
        let body = self.buffer[self.start..self.start + length].to_vec();
        self.start += length;
        Ok((status, Some(body)))
    }

    /// Passes the data of a chunked body read so far to `data`, piece by piece.
    fn chunks(&mut self, mut data: impl FnMut(&[u8])) -> Result<(), String> {
        loop {
            let unread = &self.buffer[self.start..self.end];
            if self.chunk_crlf {
                if unread.len() < 2 {
                    return Ok(());
                }
                if &unread[..2] != b"\r\n" {
                    return Err("a chunk does not end with CRLF".to_owned());
                }
                self.start += 2;
                self.chunk_crlf = false;
                continue;
            }
            match self.in_chunk {
                None => {
                    let Some(line) = memchr::memchr(b'\n', unread) else {
                        return Ok(());
                    };
                    let size = unread[..line]
                        .strip_suffix(b"\r")
                        .and_then(chunk_size)
                        .ok_or("a bad chunk size")?;
                    if size == 0 {
                        return Err("the event stream ended".to_owned());
                    }
                    self.start += line + 1;
                    self.in_chunk = Some(size);
                }
                Some(left) => {
                    if unread.is_empty() {
                        return Ok(());
                    }
                    let take = left.min(unread.len());
                    data(&unread[..take]);
                    self.start += take;
                    if take == left {
                        self.in_chunk = None;
                        self.chunk_crlf = true;
                    } else {
                        self.in_chunk = Some(left - take);
                    }
                }
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// A chunk-size line's hexadecimal number (extensions after `;` ignored).
fn chunk_size(line: &[u8]) -> Option<usize> {
    let digits = line.split(|&b| b == b';').next()?;
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    digits.iter().try_fold(0usize, |size, &b| {
        Some(size * 16 + char::from(b).to_digit(16)? as usize)
    })
}

/// The decimal number at the start of `text`.
fn leading_number(text: &[u8]) -> Option<usize> {
    let digits = text.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 15 {
        return None;
    }
    Some(
        text[..digits]
            .iter()
            .fold(0, |n, &b| n * 10 + usize::from(b - b'0')),
    )
}

/// An SSE event as the benchmark needs it.
enum SseEvent {
    Ready,
    /// A change made by the producer: (transaction number, index in it).
    Change(Option<(usize, usize)>),
    Reload,
    Other,
}

/// The SSE lines of a stream, split incrementally (a line cut between two reads is
/// kept until its end comes).
#[derive(Default)]
struct Sse {
    /// The start of a line whose end has not come yet.
    partial: Vec<u8>,
    kind: Kind,
    change: Option<(usize, usize)>,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Kind {
    #[default]
    Message,
    Ready,
    Change,
    Reload,
    Other,
}

impl Sse {
    fn feed(&mut self, mut data: &[u8], mut event: impl FnMut(SseEvent)) {
        while let Some(end) = memchr::memchr(b'\n', data) {
            if self.partial.is_empty() {
                self.line(&data[..end], &mut event);
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&data[..end]);
                self.line(&line, &mut event);
                line.clear();
                self.partial = line;
            }
            data = &data[end + 1..];
        }
        self.partial.extend_from_slice(data);
    }

    fn line(&mut self, line: &[u8], event: &mut impl FnMut(SseEvent)) {
        if line.is_empty() {
            let kind = std::mem::take(&mut self.kind);
            event(match kind {
                Kind::Ready => SseEvent::Ready,
                Kind::Change => SseEvent::Change(self.change.take()),
                Kind::Reload => SseEvent::Reload,
                Kind::Message | Kind::Other => SseEvent::Other,
            });
        } else if let Some(name) = line.strip_prefix(b"event: ") {
            self.kind = match name {
                b"ready" => Kind::Ready,
                b"change" => Kind::Change,
                b"reload" => Kind::Reload,
                _ => Kind::Other,
            };
            self.change = None;
        } else if let Some(data) = line.strip_prefix(b"data: ")
            && self.kind == Kind::Change
        {
            // json_build_object writes `"name" : "b12", "qty" : 3`.
            const NAME: &[u8] = br#""name" : "b"#;
            const QTY: &[u8] = br#""qty" : "#;
            self.change = find(data, NAME).and_then(|at| {
                let rest = &data[at + NAME.len()..];
                let t = leading_number(rest)?;
                let at = find(rest, QTY)?;
                Some((t, leading_number(&rest[at + QTY.len()..])?))
            });
        }
    }
}
