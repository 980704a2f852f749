//! Process-level drain: the drain benchmark (`drain.rs`) measured the way a user's process
//! sees it, one fresh process per measurement.
//!
//! The bench re-executes itself as a child (`PGLISTEN_PROCESS_DRAIN_CHILD=<receiver>,
//! <runtime>,<url>,<channel>,<n>`) that connects, LISTENs, takes its process CPU time
//! (`getrusage(RUSAGE_SELF)`) and the clock, prints `ready <backend pid>` and reads. The
//! parent stops that backend (SIGSTOP), queues N notifications (unique 64-byte payloads,
//! transactions of 10k), notes `CLOCK_MONOTONIC` and continues the backend (SIGCONT).
//! At the N-th notification the child prints
//! `done <cpu_ns> <wall_ns> <lagged> <last_ns>` and exits: `cpu_ns` and `wall_ns` count
//! from the end of subscribe (so they include the idle wait while the parent produced,
//! which costs the child next to no CPU), `last_ns` is `CLOCK_MONOTONIC` at the N-th
//! notification. Reported: CPU per notification from `cpu_ns`, and the rate
//! N / (`last_ns` − the parent's SIGCONT), the drain alone; `wall_ns` includes the time
//! the parent spent producing and is only printed.
//!
//! Receivers: the raw tokio-postgres `poll_message` loop (the floor) and a pglisten
//! subscription (queue 2^20) read with `StreamExt::next`; runtimes current-thread and
//! multi-thread. Rounds interleave every (runtime, receiver), in an order rotated each
//! round, after one untimed warm-up round; ratios are taken within a round.
//!
//! `PGLISTEN_BENCH_N` (default 200k), `PGLISTEN_BENCH_TX` (10k), `PGLISTEN_BENCH_ROUNDS`
//! (7), `PGLISTEN_BENCH_RUNTIMES`, `PGLISTEN_BENCH_QUICK=1` (20k, 3 rounds).

mod support;

use std::hint::black_box;
use std::io::{BufRead, BufReader, Lines, Write};
use std::process::{ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use pglisten::{Event, Listener};
use support::*;

/// The child's instructions: `<receiver>,<runtime>,<url>,<channel>,<n>`.
const CHILD_VAR: &str = "PGLISTEN_PROCESS_DRAIN_CHILD";

/// pglisten's queue: far above N, so the drain measures speed, not lag.
const QUEUE_CAPACITY: usize = 1 << 20;

/// A child that has not finished by then is stuck (notifications lost, parent gone).
const CHILD_DEADLINE: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Raw,
    Pglisten,
}

const KINDS: [Kind; 2] = [Kind::Raw, Kind::Pglisten];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Raw => "raw",
            Kind::Pglisten => "pglisten",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Raw => "tokio-postgres poll_message (raw)",
            Kind::Pglisten => "pglisten",
        }
    }

    fn named(name: &str) -> Kind {
        match name {
            "raw" => Kind::Raw,
            "pglisten" => Kind::Pglisten,
            other => panic!("{CHILD_VAR}: unknown receiver {other:?}"),
        }
    }
}

fn flavor_named(name: &str) -> Flavor {
    match name {
        "current_thread" => Flavor::CurrentThread,
        "multi_thread" => Flavor::MultiThread,
        other => panic!("{CHILD_VAR}: unknown runtime {other:?}"),
    }
}

/// One child's report.
#[derive(Debug, Clone, Copy)]
struct Measured {
    /// N, CPU from the end of subscribe, wall from SIGCONT to the N-th notification.
    sample: Sample,
    /// Wall time from the end of subscribe (includes the parent's producing).
    since_subscribe: Duration,
    lagged: u64,
}

/// One round: `cells[flavor index][kind index]`.
struct Round {
    cells: Vec<[Option<Measured>; 2]>,
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_VAR) {
        child(&spec);
        return;
    }
    if listing_only() {
        println!("process_drain: bench");
        return;
    }
    let n = size("PGLISTEN_BENCH_N", 200_000, 20_000, 1_000);
    let tx = size("PGLISTEN_BENCH_TX", 10_000, 10_000, 500);
    let rounds = size("PGLISTEN_BENCH_ROUNDS", 7, 3, 1);
    assert!(
        n > 0 && tx > 0 && rounds > 0,
        "N, TX and ROUNDS must be positive"
    );
    let flavors = flavors();
    let db = Db::start();
    let admin = Admin::connect(db.url());
    let tag = tag();

    // Every (runtime, receiver), rotated round by round.
    let combos: Vec<(usize, usize)> = (0..flavors.len())
        .flat_map(|f| (0..KINDS.len()).map(move |k| (f, k)))
        .collect();
    let warm_up = mode() != Mode::Smoke;
    let mut results = Vec::new();
    let mut run = 0;
    for round in usize::from(!warm_up)..=rounds {
        let label = if round == 0 {
            "warm-up".to_owned()
        } else {
            format!("round {round}")
        };
        let mut cells = vec![[None; 2]; flavors.len()];
        for i in order(combos.len(), round) {
            let (f, k) = combos[i];
            run += 1;
            let app = format!("{tag}-pdrain-{run}");
            let channel = format!("{tag}_pdrain_{run}");
            let m = measure(
                &admin,
                &db.url_as(&app),
                &app,
                &channel,
                flavors[f],
                KINDS[k],
                &format!("r{round}:"),
                n,
                tx,
            );
            println!(
                "{label:>9} {:<14} {:<8}: {n} in {} ({}), CPU {} per notification, \
                 {} since subscribe{}",
                flavors[f].name(),
                KINDS[k].name(),
                fmt_ms(m.sample.wall),
                fmt_rate(m.sample.per_second()),
                fmt_ns_as_us(m.sample.cpu_ns()),
                fmt_ms(m.since_subscribe),
                if m.lagged > 0 {
                    format!(", {} LAGGED", m.lagged)
                } else {
                    String::new()
                }
            );
            cells[f][k] = Some(m);
        }
        if round > 0 {
            results.push(Round { cells });
        }
    }

    print_context(
        "Process-level drain: one fresh process per receiver measurement",
        &db,
        &format!(
            "N = {n}, transactions of {tx}, 64-byte payloads, {rounds} round(s){}; \
             CPU: the child's getrusage from the end of subscribe; \
             rate: N / (SIGCONT → N-th notification)",
            if warm_up { " after a warm-up" } else { "" }
        ),
    );
    for (f, flavor) in flavors.iter().enumerate() {
        report(*flavor, f, &results);
    }
}

/// Runs one child: spawn, wait for `ready`, pause its backend, produce, continue it, read
/// `done`.
#[allow(clippy::too_many_arguments)]
fn measure(
    admin: &Admin,
    url: &str,
    app: &str,
    channel: &str,
    flavor: Flavor,
    kind: Kind,
    prefix: &str,
    n: usize,
    tx: usize,
) -> Measured {
    let spec = format!("{},{},{url},{channel},{n}", kind.name(), flavor.name());
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .env(CHILD_VAR, spec)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = next_line(&mut lines, "ready");
    let pid: i32 = ready
        .strip_prefix("ready ")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("child said {ready:?}"));
    // Stop the right process: the child's session, not a stray pid.
    let found = admin.query_i64(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND application_name = '{app}'"
    ));
    assert_eq!(found, Some(1), "backend {pid} is not the session {app}");

    let paused = Paused::pause(pid);
    admin.produce(channel, prefix, n, tx);
    let resumed = monotonic_ns();
    paused.resume();

    let done = next_line(&mut lines, "done");
    let status = child.wait().expect("child exit");
    assert!(status.success(), "{} child failed: {status}", kind.name());
    let fields: Vec<u64> = done
        .strip_prefix("done ")
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let [cpu_ns, wall_ns, lagged, last_ns] = fields[..] else {
        panic!("child said {done:?}");
    };
    Measured {
        sample: Sample {
            items: n as u64,
            wall: Duration::from_nanos(last_ns.saturating_sub(resumed)),
            cpu: Duration::from_nanos(cpu_ns),
        },
        since_subscribe: Duration::from_nanos(wall_ns),
        lagged,
    }
}

fn next_line(lines: &mut Lines<BufReader<ChildStdout>>, what: &str) -> String {
    match lines.next() {
        Some(Ok(line)) => line,
        Some(Err(e)) => panic!("reading the child's {what} line: {e}"),
        None => panic!("the child ended without a {what} line"),
    }
}

fn report(flavor: Flavor, f: usize, rounds: &[Round]) {
    let pairs: Vec<(Measured, Measured)> = rounds
        .iter()
        .filter_map(|r| Some((r.cells[f][0]?, r.cells[f][1]?)))
        .collect();
    let cpu_ratio: Vec<f64> = pairs
        .iter()
        .map(|(raw, pg)| pg.sample.cpu_ns() / raw.sample.cpu_ns())
        .collect();
    let rate_ratio: Vec<f64> = pairs
        .iter()
        .map(|(raw, pg)| pg.sample.per_second() / raw.sample.per_second())
        .collect();
    let range = |v: &[f64]| {
        format!(
            "{} ({:.2}–{:.2})",
            fmt_ratio(median(v)),
            percentile(v, 0.0),
            percentile(v, 100.0)
        )
    };
    let mut t = Table::new(
        format!(
            "Process-level drain, {} runtime ({} rounds)",
            flavor.name(),
            pairs.len()
        ),
        &[
            "receiver",
            "notifications/s (median)",
            "CPU per notification (median)",
            "CPU vs raw (median, min–max)",
            "rate vs raw (median, min–max)",
        ],
    );
    for (k, kind) in KINDS.iter().enumerate() {
        let of = |p: &(Measured, Measured)| if k == 0 { p.0 } else { p.1 };
        let rate: Vec<f64> = pairs.iter().map(|p| of(p).sample.per_second()).collect();
        let cpu: Vec<f64> = pairs.iter().map(|p| of(p).sample.cpu_ns()).collect();
        let (cpu_cell, rate_cell) = match kind {
            Kind::Raw => ("–".to_owned(), "–".to_owned()),
            Kind::Pglisten => (range(&cpu_ratio), range(&rate_ratio)),
        };
        t.row(vec![
            kind.label().to_owned(),
            fmt_rate(median(&rate)),
            fmt_ns_as_us(median(&cpu)),
            cpu_cell,
            rate_cell,
        ]);
    }
    t.print();
    let by_round: Vec<String> = cpu_ratio
        .iter()
        .zip(&rate_ratio)
        .map(|(c, r)| format!("{c:.2}/{r:.2}"))
        .collect();
    println!(
        "{} rounds, pglisten/raw (CPU/rate): {}",
        flavor.name(),
        by_round.join(" ")
    );
    let within = |v: &[f64], ok: &dyn Fn(f64) -> bool| v.iter().filter(|r| ok(**r)).count();
    println!(
        "Target CPU per notification ≤ 1.2× raw: {} (median {}, {} of {} rounds within)",
        verdict(median(&cpu_ratio) <= 1.2),
        fmt_ratio(median(&cpu_ratio)),
        within(&cpu_ratio, &|r| r <= 1.2),
        cpu_ratio.len()
    );
    println!(
        "Target rate ≥ 0.9× raw: {} (median {}, {} of {} rounds within)",
        verdict(median(&rate_ratio) >= 0.9),
        fmt_ratio(median(&rate_ratio)),
        within(&rate_ratio, &|r| r >= 0.9),
        rate_ratio.len()
    );
    let lagged: u64 = pairs.iter().map(|(_, pg)| pg.lagged).sum();
    if lagged > 0 {
        println!("pglisten LAGGED: {lagged} notifications reported lost");
    }
}

// ---------------------------------------------------------------------------
// The child
// ---------------------------------------------------------------------------

/// What the child measured: CPU and wall since the end of subscribe, lost notifications,
/// and `CLOCK_MONOTONIC` at the N-th notification.
struct Drained {
    cpu: Duration,
    wall: Duration,
    lagged: u64,
    last_ns: u64,
}

/// The start of the measurement, taken as soon as subscribe has returned; then the
/// child reports `ready <backend pid>`.
struct Started {
    cpu: Duration,
    wall: Instant,
}

impl Started {
    fn now_ready(pid: i32) -> Started {
        let started = Started {
            cpu: process_cpu(),
            wall: Instant::now(),
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready {pid}").expect("stdout");
        out.flush().expect("stdout");
        started
    }

    fn finish(self, lagged: u64) -> Drained {
        let last_ns = monotonic_ns();
        let cpu = process_cpu().saturating_sub(self.cpu);
        Drained {
            cpu,
            wall: self.wall.elapsed(),
            lagged,
            last_ns,
        }
    }
}

/// What the consumer does with each notification: reads its channel and payload.
#[inline]
fn touch(channel: &str, payload: &str) {
    black_box((
        channel.len(),
        channel.as_bytes().first().copied(),
        payload.len(),
        payload.as_bytes().first().copied(),
    ));
}

fn child(spec: &str) {
    // The URL is the middle field; receiver and runtime come first, channel and N last.
    let mut head = spec.splitn(3, ',');
    let (Some(kind), Some(runtime), Some(rest)) = (head.next(), head.next(), head.next()) else {
        panic!("{CHILD_VAR}={spec:?}: expected <receiver>,<runtime>,<url>,<channel>,<n>");
    };
    let mut tail = rest.rsplitn(3, ',');
    let (Some(n), Some(channel), Some(url)) = (tail.next(), tail.next(), tail.next()) else {
        panic!("{CHILD_VAR}={spec:?}: expected <receiver>,<runtime>,<url>,<channel>,<n>");
    };
    let kind = Kind::named(kind);
    let flavor = flavor_named(runtime);
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("{CHILD_VAR}: N {n:?}"));
    let (url, channel) = (url.to_owned(), channel.to_owned());

    // A watchdog that costs nothing while it sleeps: a child that never gets its N
    // notifications (or whose parent is gone) must not hang around.
    std::thread::spawn(|| {
        std::thread::sleep(CHILD_DEADLINE);
        eprintln!("process_drain child: no result after {CHILD_DEADLINE:?}, giving up");
        std::process::exit(3);
    });

    let rt = flavor.runtime();
    let drained = run_task(&rt, async move {
        match kind {
            Kind::Raw => drain_raw(&url, &channel, n).await,
            Kind::Pglisten => drain_pglisten(&url, &channel, n).await,
        }
    });
    println!(
        "done {} {} {} {}",
        drained.cpu.as_nanos(),
        drained.wall.as_nanos(),
        drained.lagged,
        drained.last_ns
    );
}

async fn drain_raw(url: &str, channel: &str, n: u64) -> Drained {
    let mut raw = RawReceiver::connect(url, &[]).await;
    let pid = raw.backend_pid().await;
    raw.run(&format!("LISTEN \"{channel}\"")).await;
    let started = Started::now_ready(pid);
    let mut got = 0;
    while got < n {
        let note = raw.next().await.expect("raw connection ended");
        touch(note.channel(), note.payload());
        got += 1;
    }
    let drained = started.finish(0);
    drop(raw);
    drained
}

async fn drain_pglisten(url: &str, channel: &str, n: u64) -> Drained {
    let listener = Listener::builder(url)
        .queue_capacity(QUEUE_CAPACITY)
        .task_placement(task_placement())
        .connect()
        .await
        .expect("pglisten connect");
    let pid = listener
        .backend_pid()
        .expect("a connected listener has a backend");
    let mut subscription = listener.subscribe([channel]).await.expect("subscribe");
    let started = Started::now_ready(pid);
    let (mut got, mut lagged) = (0, 0);
    while got < n {
        match subscription.next().await.expect("subscription ended") {
            Event::Notification(note) => {
                touch(note.channel(), note.payload());
                got += 1;
            }
            Event::Lagged(k) => {
                lagged += k;
                got += k;
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    let drained = started.finish(lagged);
    drop(subscription);
    drop(listener);
    drained
}
