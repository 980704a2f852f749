//! Shared by every benchmark: sizes from the environment, the throwaway server, a producer
//! connection on its own thread, pausing a server backend, process CPU time and RSS, the
//! raw tokio-postgres receiver (the floor), interleaved rounds and result tables.
//!
//! Every benchmark measures pglisten and its baselines in the same run, interleaved round by
//! round (the machine is shared and noisy), and reports ratios computed within each round.

// Each bench binary uses a different part of this module.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pglisten::tokio_postgres::{self, AsyncMessage, Client};
use pglisten::{Event, Listener, Subscription};
use sqlx::postgres::PgListener;
use tokio::runtime::Runtime;

// ---------------------------------------------------------------------------
// Modes and sizes
// ---------------------------------------------------------------------------

/// How big a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `cargo bench -p pglisten-benches`: the sizes.
    Full,
    /// `PGLISTEN_BENCH_QUICK=1 cargo bench -p pglisten-benches`: everything in a couple of minutes.
    Quick,
    /// Run without `--bench` (as `cargo test --benches` does): tiny sizes, a smoke test.
    Smoke,
}

pub fn mode() -> Mode {
    static MODE: OnceLock<Mode> = OnceLock::new();
    *MODE.get_or_init(|| {
        if !std::env::args().any(|a| a == "--bench") {
            Mode::Smoke
        } else if std::env::var("PGLISTEN_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0") {
            Mode::Quick
        } else {
            Mode::Full
        }
    })
}

/// A size: `$name` if set, else the default for the mode.
pub fn size(name: &str, full: usize, quick: usize, smoke: usize) -> usize {
    if let Some(v) = std::env::var(name).ok().filter(|v| !v.is_empty()) {
        let v = v.replace('_', "");
        return v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a non-negative integer"));
    }
    match mode() {
        Mode::Full => full,
        Mode::Quick => quick,
        Mode::Smoke => smoke,
    }
}

/// True when criterion was asked only to list the benchmarks.
pub fn listing_only() -> bool {
    std::env::args().any(|a| a == "--list")
}

// ---------------------------------------------------------------------------
// Runtimes
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    CurrentThread,
    MultiThread,
}

impl Flavor {
    pub fn name(self) -> &'static str {
        match self {
            Flavor::CurrentThread => "current_thread",
            Flavor::MultiThread => "multi_thread",
        }
    }

    pub fn runtime(self) -> Runtime {
        let mut builder = match self {
            Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
            // Default worker count: one per core (2 here).
            Flavor::MultiThread => tokio::runtime::Builder::new_multi_thread(),
        };
        builder.enable_all().build().expect("tokio runtime")
    }
}

/// The runtimes to measure on: `PGLISTEN_BENCH_RUNTIMES=current_thread,multi_thread`
/// (the default is both).
pub fn flavors() -> Vec<Flavor> {
    let list = std::env::var("PGLISTEN_BENCH_RUNTIMES")
        .unwrap_or_else(|_| "current_thread,multi_thread".to_owned());
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| match s.trim() {
            "current_thread" | "current" | "ct" => Flavor::CurrentThread,
            "multi_thread" | "multi" | "mt" => Flavor::MultiThread,
            other => panic!("PGLISTEN_BENCH_RUNTIMES: unknown runtime {other:?}"),
        })
        .collect()
}

/// Runs `fut` as a task of `rt` (on the multi-thread runtime it runs on a worker thread,
/// as an application's task would) and waits for it.
pub fn run_task<T: Send + 'static>(
    rt: &Runtime,
    fut: impl Future<Output = T> + Send + 'static,
) -> T {
    let handle = rt.spawn(fut);
    rt.block_on(handle).expect("benchmark task panicked")
}

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

/// The database under test: `$DATABASE_URL` (a `postgres://` URL) if set, otherwise the
/// testkit's throwaway cluster shared by this process (it lives until the process exits).
pub struct Db {
    url: String,
    external: bool,
}

impl Db {
    pub fn start() -> Db {
        let shared = pglisten_testkit::shared();
        Db {
            url: shared.url(),
            external: shared.is_external(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL with `application_name` set, so the session can be found in
    /// `pg_stat_activity`.
    pub fn url_as(&self, app: &str) -> String {
        with_param(&self.url, "application_name", app)
    }

    /// Creates database `name` (unless it exists) and returns a `Db` for it, on the same
    /// server.
    ///
    /// PostgreSQL (up to 17) wakes every listening backend of a database on every commit
    /// that notifies, whatever the channel. Receivers that are measured while others sit
    /// idle therefore get a database each: otherwise the idle receivers' backends wake up
    /// too, compete for the two cores, and are signalled in a fixed order (by backend
    /// number) that would favour whichever receiver connected first.
    pub fn database(&self, admin: &Admin, name: &str) -> Db {
        let exists = admin
            .query_i64(&format!(
                "SELECT count(*) FROM pg_database WHERE datname = '{name}'"
            ))
            .unwrap_or(0);
        if exists == 0 {
            admin.execute(&format!("CREATE DATABASE \"{name}\""));
        }
        let (base, query) = match self.url.split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (self.url.as_str(), None),
        };
        let after_scheme = base.find("://").map_or(0, |i| i + 3);
        let base = match base[after_scheme..].find('/') {
            Some(slash) => &base[..after_scheme + slash],
            None => base,
        };
        let url = match query {
            Some(query) => format!("{base}/{name}?{query}"),
            None => format!("{base}/{name}"),
        };
        Db {
            url,
            external: self.external,
        }
    }

    pub fn describe(&self) -> String {
        if self.external {
            "$DATABASE_URL".to_owned()
        } else {
            format!("throwaway testkit cluster at {}", self.url)
        }
    }
}

/// Adds `key=value` to a `postgres://` URL.
pub fn with_param(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={value}")
}

/// A unique tag for names in this process (channels, application names).
pub fn tag() -> String {
    format!("b{}", std::process::id())
}

// ---------------------------------------------------------------------------
// The admin / producer connection, on its own thread
// ---------------------------------------------------------------------------

/// An ordinary connection that produces notifications and inspects the server. It runs on
/// its own one-worker runtime, so it never shares a thread with the receivers; between
/// its requests it is idle (no CPU charged to the receivers' measurements).
pub struct Admin {
    rt: Runtime,
    client: std::sync::Arc<Client>,
}

impl Admin {
    pub fn connect(url: &str) -> Admin {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-admin")
            .enable_all()
            .build()
            .expect("admin runtime");
        let client = rt.block_on(pglisten_testkit::admin(url));
        Admin {
            rt,
            client: std::sync::Arc::new(client),
        }
    }

    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }

    pub fn client(&self) -> std::sync::Arc<Client> {
        self.client.clone()
    }

    pub fn execute(&self, sql: &str) {
        self.rt
            .block_on(self.client.batch_execute(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    pub fn query_i64(&self, sql: &str) -> Option<i64> {
        let rows = self
            .rt
            .block_on(self.client.query(sql, &[]))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows.first().map(|r| r.get::<_, i64>(0))
    }

    /// The server process of the session whose `application_name` is `app`, waiting for
    /// it to show up.
    pub fn backend_of(&self, app: &str) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let sql = format!(
                "SELECT pid::bigint FROM pg_stat_activity WHERE application_name = '{app}'"
            );
            if let Some(pid) = self.query_i64(&sql) {
                return i32::try_from(pid).expect("pid");
            }
            assert!(Instant::now() < deadline, "no session named {app}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Queues `n` notifications on `channel`: unique 64-byte payloads starting with
    /// `prefix`, committed in transactions of `tx_size`, generated by the server.
    pub fn produce(&self, channel: &str, prefix: &str, n: usize, tx_size: usize) {
        self.rt
            .block_on(produce(&self.client, channel, prefix, n, tx_size));
    }
}

/// See [`Admin::produce`].
pub async fn produce(client: &Client, channel: &str, prefix: &str, n: usize, tx_size: usize) {
    assert!(prefix.len() < 40, "payload prefix too long");
    let width = i32::try_from(PAYLOAD_BYTES - prefix.len()).expect("width");
    let mut next = 1usize;
    while next <= n {
        let last = (next + tx_size - 1).min(n);
        // One statement = one transaction of `last - next + 1` notifications.
        client
            .query_one(
                "SELECT count(pg_notify($1, $2 || lpad(g::text, $3, '0'))) \
                 FROM generate_series($4::int, $5::int) AS g",
                &[
                    &channel,
                    &prefix,
                    &width,
                    &(i32::try_from(next).expect("n")),
                    &(i32::try_from(last).expect("n")),
                ],
            )
            .await
            .unwrap_or_else(|e| panic!("producing on {channel}: {e}"));
        next = last + 1;
    }
}

/// Nanoseconds since the first call in this process: a clock shared by every thread,
/// carried in latency payloads.
pub fn clock_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    u64::try_from(BASE.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Size of every produced payload.
pub const PAYLOAD_BYTES: usize = 64;

/// A server-side loop that sends `n` notifications on `channel`, committing every
/// `tx_size` (a single `DO` statement, so the client does no work while it runs).
pub fn steady_producer_sql(channel: &str, prefix: &str, n: usize, tx_size: usize) -> String {
    let width = PAYLOAD_BYTES - prefix.len();
    format!(
        "DO $$ BEGIN \
           FOR i IN 1..{n} LOOP \
             PERFORM pg_notify('{channel}', '{prefix}' || lpad(i::text, {width}, '0')); \
             IF i % {tx_size} = 0 THEN COMMIT; END IF; \
           END LOOP; \
         END $$"
    )
}

// ---------------------------------------------------------------------------
// Pausing a server backend
// ---------------------------------------------------------------------------

/// A server backend stopped with SIGSTOP; continued (SIGCONT) by [`Paused::resume`] or
/// when dropped, so a panicking benchmark never leaves a stopped backend behind.
pub struct Paused {
    pid: i32,
    armed: bool,
}

impl Paused {
    /// Stops `pid` and waits until the kernel reports it stopped.
    pub fn pause(pid: i32) -> Paused {
        signal(pid, libc::SIGSTOP);
        let paused = Paused { pid, armed: true };
        let deadline = Instant::now() + Duration::from_secs(10);
        while process_state(pid) != Some('T') {
            assert!(Instant::now() < deadline, "backend {pid} did not stop");
            std::thread::sleep(Duration::from_micros(200));
        }
        paused
    }

    /// Sends SIGCONT: one system call, cheap enough to sit inside a measurement.
    pub fn resume(mut self) {
        self.armed = false;
        signal(self.pid, libc::SIGCONT);
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if self.armed {
            signal(self.pid, libc::SIGCONT);
        }
    }
}

#[allow(unsafe_code, reason = "kill(2) has no safe wrapper in std")]
fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill(2) takes plain integers and has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// The state letter of a process (`R`, `S`, `T`, ...) from `/proc/<pid>/stat`.
fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().next()?.chars().next()
}

// ---------------------------------------------------------------------------
// CPU time and memory of this process
// ---------------------------------------------------------------------------

/// User + system CPU time of the whole process (every thread), from `getrusage`
/// (microsecond resolution; `/proc/self/stat` counts in 10 ms ticks, too coarse here).
#[allow(unsafe_code, reason = "getrusage(2) has no safe wrapper in std")]
pub fn process_cpu() -> Duration {
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable `rusage` for the duration of the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    assert_eq!(rc, 0, "getrusage: {}", std::io::Error::last_os_error());
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// A field of `/proc/self/status` in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Current resident set size, KiB.
pub fn rss_kib() -> u64 {
    status_kib("VmRSS")
}

/// Peak resident set size of this process so far, KiB.
pub fn peak_rss_kib() -> u64 {
    status_kib("VmHWM")
}

/// Wall and CPU time of one measured stretch.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Items handled (notifications received, deliveries made, ...).
    pub items: u64,
    pub wall: Duration,
    pub cpu: Duration,
}

impl Sample {
    pub fn per_second(&self) -> f64 {
        self.items as f64 / self.wall.as_secs_f64()
    }

    /// CPU nanoseconds per item.
    pub fn cpu_ns(&self) -> f64 {
        self.cpu.as_nanos() as f64 / self.items as f64
    }
}

/// Starts measuring wall and process CPU time.
pub struct Meter {
    wall: Instant,
    cpu: Duration,
}

impl Meter {
    pub fn start() -> Meter {
        let cpu = process_cpu();
        Meter {
            wall: Instant::now(),
            cpu,
        }
    }

    pub fn stop(&self, items: u64) -> Sample {
        let wall = self.wall.elapsed();
        let cpu = process_cpu().saturating_sub(self.cpu);
        Sample { items, wall, cpu }
    }
}

// ---------------------------------------------------------------------------
// The raw tokio-postgres receiver: the floor
// ---------------------------------------------------------------------------

pub use pglisten_testkit::{RawConnection, drive};

/// A plain tokio-postgres connection read with `poll_message`, as a hand-written
/// LISTEN loop would.
pub struct RawReceiver {
    pub client: Client,
    pub connection: RawConnection,
}

impl RawReceiver {
    pub async fn connect(url: &str, channels: &[String]) -> RawReceiver {
        let (client, connection) = pglisten_testkit::raw(url).await;
        let mut raw = RawReceiver { client, connection };
        if !channels.is_empty() {
            let sql: String = channels
                .iter()
                .map(|c| format!("LISTEN \"{c}\";"))
                .collect();
            raw.run(&sql).await;
        }
        raw
    }

    /// Runs `sql` while polling the connection (which does the query's I/O).
    pub async fn run(&mut self, sql: &str) {
        let query = self.client.batch_execute(sql);
        drive(&mut self.connection, query)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", &sql[..sql.len().min(80)]));
    }

    /// The server process of this connection.
    pub async fn backend_pid(&mut self) -> i32 {
        let query = self.client.simple_query("SELECT pg_backend_pid()");
        let messages = drive(&mut self.connection, query)
            .await
            .expect("SELECT pg_backend_pid()");
        messages
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0)?.parse().ok(),
                _ => None,
            })
            .expect("a backend pid")
    }

    /// The next notification; `None` when the connection ended.
    pub async fn next(&mut self) -> Option<tokio_postgres::Notification> {
        loop {
            match std::future::poll_fn(|cx| self.connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => return Some(n),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The three receivers compared by the drain, steady and latency benchmarks
// ---------------------------------------------------------------------------

/// The receivers, by index.
pub const NAMES: [&str; 3] = [
    "tokio-postgres poll_message (raw)",
    "sqlx PgListener",
    "pglisten",
];
pub const RAW: usize = 0;
pub const SQLX: usize = 1;
pub const PGLISTEN: usize = 2;

// A handful of long-lived values; boxing the raw receiver would put an extra indirection
// into the floor that pglisten is compared with.
#[allow(clippy::large_enum_variant)]
pub enum Receiver {
    Raw(RawReceiver),
    Sqlx(PgListener),
    Pglisten {
        _listener: Listener,
        subscription: Subscription,
    },
}

impl Receiver {
    /// `capacity` is pglisten's queue capacity. Benchmarks give twice the notifications of
    /// a round, a margin from before the mailbox counted only unread notifications
    /// against the capacity (it counted the whole batch a consumer took last).
    pub async fn connect(kind: usize, url: &str, channel: &str, capacity: usize) -> Receiver {
        match kind {
            RAW => Receiver::Raw(RawReceiver::connect(url, &[channel.to_owned()]).await),
            SQLX => {
                let mut l = PgListener::connect(url).await.expect("sqlx connect");
                l.listen(channel).await.expect("sqlx listen");
                Receiver::Sqlx(l)
            }
            _ => {
                let listener = Listener::builder(url)
                    .queue_capacity(capacity)
                    .task_placement(task_placement())
                    .connect()
                    .await
                    .expect("pglisten connect");
                let subscription = listener.subscribe([channel]).await.expect("subscribe");
                Receiver::Pglisten {
                    _listener: listener,
                    subscription,
                }
            }
        }
    }

    /// Receives `n` notifications, handing each payload to `f`; returns how many were
    /// reported lost (`Lagged`, pglisten only).
    pub async fn for_each(&mut self, n: u64, mut f: impl FnMut(&str)) -> u64 {
        let mut got = 0;
        let mut lagged = 0;
        match self {
            Receiver::Raw(raw) => {
                while got < n {
                    let note = raw.next().await.expect("raw connection ended");
                    f(note.payload());
                    got += 1;
                }
            }
            Receiver::Sqlx(l) => {
                while got < n {
                    let note = l.recv().await.expect("sqlx recv");
                    f(note.payload());
                    got += 1;
                }
            }
            Receiver::Pglisten { subscription, .. } => {
                while got < n {
                    match subscription.next().await.expect("subscription ended") {
                        Event::Notification(note) => {
                            f(note.payload());
                            got += 1;
                        }
                        Event::Lagged(k) => {
                            lagged += k;
                            got += k;
                        }
                        other => panic!("unexpected event {other:?}"),
                    }
                }
            }
        }
        lagged
    }
}

/// Where pglisten's task runs: `PGLISTEN_BENCH_PLACEMENT` = `auto` (default),
/// `own_thread` or `caller_runtime`.
pub fn task_placement() -> pglisten::TaskPlacement {
    match std::env::var("PGLISTEN_BENCH_PLACEMENT").as_deref() {
        Ok("own_thread") => pglisten::TaskPlacement::OwnThread,
        Ok("caller_runtime") => pglisten::TaskPlacement::CallerRuntime,
        Ok("auto") | Err(_) => pglisten::TaskPlacement::Auto,
        Ok(other) => {
            panic!("PGLISTEN_BENCH_PLACEMENT={other}: expected auto, own_thread or caller_runtime")
        }
    }
}

// ---------------------------------------------------------------------------
// Interleaved rounds, statistics, tables
// ---------------------------------------------------------------------------

/// Rotates `0..n` by `round`: every receiver takes every position in turn, so none is
/// always first after the producer (or always last before it).
pub fn order(n: usize, round: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |i| (i + round) % n)
}

pub fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0)
}

/// Nearest-rank percentile (`p` in 0..=100).
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// A plain text table printed at the end of a benchmark.
pub struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: impl Into<String>, header: &[&str]) -> Table {
        Table {
            title: title.into(),
            header: header.iter().map(|s| (*s).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Prints it as a Markdown table (pastes into BENCHMARKS.md as is).
    pub fn print(&self) {
        let cols = self.header.len();
        let mut width = vec![3; cols];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (i, cell) in row.iter().enumerate().take(cols) {
                width[i] = width[i].max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for (i, w) in width.iter().enumerate() {
                let cell = cells.get(i).map_or("", String::as_str);
                s.push_str(&format!(" {cell:<w$} |"));
            }
            s
        };
        println!("\n### {}\n", self.title);
        println!("{}", line(&self.header));
        let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
        println!("{}", line(&rule));
        for row in &self.rows {
            println!("{}", line(row));
        }
        println!();
    }
}

pub fn fmt_rate(per_second: f64) -> String {
    if per_second >= 1e6 {
        format!("{:.2} M/s", per_second / 1e6)
    } else {
        format!("{:.0} k/s", per_second / 1e3)
    }
}

pub fn fmt_ns_as_us(ns: f64) -> String {
    format!("{:.3} µs", ns / 1e3)
}

pub fn fmt_ratio(r: f64) -> String {
    format!("{r:.2}×")
}

pub fn fmt_ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

pub fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// Prints where and how the numbers were taken.
pub fn print_context(bench: &str, db: &Db, details: &str) {
    println!(
        "\n## {bench} ({:?} mode, {} cores, {}; {details})",
        mode(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        db.describe()
    );
}

// ---------------------------------------------------------------------------
// Criterion
// ---------------------------------------------------------------------------

/// Criterion set up for benchmarks whose one iteration is one interleaved round (seconds
/// long): ten samples of one round each, no separate warm-up (each bench runs its own
/// untimed warm-up round).
pub fn criterion() -> criterion::Criterion {
    criterion::Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(1))
        .without_plots()
        .configure_from_args()
}

/// Runs interleaved rounds under criterion and returns them.
///
/// `round(i)` measures every receiver once (in an order rotated by `i`) and returns the
/// round's results; `subject` picks the duration criterion reports (pglisten's). One
/// untimed warm-up round runs first and is not returned; then criterion's own warm-up
/// (one round) and ten samples of one round each. Criterion warns that it "cannot complete
/// 10 samples" in the target time: one round per sample is intended.
pub fn criterion_rounds<R>(
    c: &mut criterion::Criterion,
    group: &str,
    id: &str,
    throughput: Option<criterion::Throughput>,
    mut round: impl FnMut(usize) -> R,
    subject: impl Fn(&R) -> Duration,
) -> Vec<R> {
    if listing_only() {
        let mut g = c.benchmark_group(group);
        g.bench_function(id, |b| b.iter(|| ()));
        g.finish();
        return Vec::new();
    }
    let started = Instant::now();
    drop(round(0));
    let warm_up = started.elapsed();
    let mut results = Vec::new();
    let mut next = 1;
    let mut g = c.benchmark_group(group);
    g.sampling_mode(criterion::SamplingMode::Flat)
        .measurement_time(warm_up.mul_f64(5.0).max(Duration::from_millis(1)));
    if let Some(t) = throughput {
        g.throughput(t);
    }
    g.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let r = round(next);
                next += 1;
                total += subject(&r);
                results.push(r);
            }
            total
        });
    });
    g.finish();
    results
}

// ---------------------------------------------------------------------------
// A clock shared between processes (process_drain)
// ---------------------------------------------------------------------------

/// `CLOCK_MONOTONIC` in nanoseconds. Unlike [`Instant`] (the same clock, but opaque), its
/// value can cross a process boundary: a parent and its child on this machine can time
/// one stretch between them (the parent's SIGCONT to the child's last notification).
#[allow(unsafe_code, reason = "clock_gettime(2) has no safe wrapper in std")]
pub fn monotonic_ns() -> u64 {
    // SAFETY: an all-zero `timespec` is a valid value of this plain C struct.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid, writable `timespec` for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime: {}", std::io::Error::last_os_error());
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}
