//! Benchmark 6: memory under a slow consumer.
//!
//! A burst of N notifications arrives at a subscription that is not read. Peak RSS never
//! goes down, so every (receiver, N) runs in a fresh process: this bench re-executes
//! itself as a child that connects, LISTENs, reports ready, and waits. The parent stops
//! the child's backend (SIGSTOP), queues N notifications and then one on a sentinel
//! channel, and continues the backend; the burst arrives at full speed. When the child
//! sees the sentinel (delivered after the whole burst: one connection, commit order), it
//! reports its peak RSS (`VmHWM`) and checks that nothing went unaccounted for.
//!
//! Receivers: pglisten with the default queue (1024) and a subscription that is not
//! read; a raw tokio-postgres loop that reads and drops each notification (the floor:
//! what the driver itself holds); and the naive design of the issue, a raw loop that
//! forwards each notification into an unbounded mpsc channel nobody reads.
//!
//! `PGLISTEN_BENCH_MEMORY_NS` (default `10000,1000000`), `PGLISTEN_BENCH_MEMORY_REPS` (2),
//! `PGLISTEN_BENCH_QUICK=1` (10k and 100k, one repetition).

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use pglisten::{Event, Listener};
use support::*;

const KINDS: [&str; 3] = ["raw", "pglisten", "mpsc"];
const NAMES: [&str; 3] = [
    "tokio-postgres, reads and drops (floor)",
    "pglisten, subscription not read (queue 1024)",
    "tokio-postgres → unbounded mpsc, not read (naive)",
];

fn main() {
    if let Ok(kind) = std::env::var("PGLISTEN_BENCH_MEMORY_CHILD") {
        child(&kind);
        return;
    }
    let ns: Vec<usize> = match std::env::var("PGLISTEN_BENCH_MEMORY_NS") {
        Ok(list) => list
            .split(',')
            .map(|s| {
                s.trim()
                    .replace('_', "")
                    .parse()
                    .expect("PGLISTEN_BENCH_MEMORY_NS")
            })
            .collect(),
        Err(_) => match mode() {
            Mode::Full => vec![10_000, 1_000_000],
            Mode::Quick => vec![10_000, 100_000],
            Mode::Smoke => vec![1_000, 5_000],
        },
    };
    let reps = size("PGLISTEN_BENCH_MEMORY_REPS", 2, 1, 1);
    let tx = size("PGLISTEN_BENCH_TX", 10_000, 10_000, 1_000);
    let db = Db::start();
    let admin = Admin::connect(db.url());
    let tag = tag();
    // peaks[kind][n index] = (peak KiB, baseline KiB) per repetition
    let mut peaks = vec![vec![Vec::new(); ns.len()]; KINDS.len()];
    let mut run = 0;
    for rep in 0..reps {
        for (j, &n) in ns.iter().enumerate() {
            for k in order(KINDS.len(), rep + j) {
                run += 1;
                let app = format!("{tag}-memory-{run}");
                let channel = format!("{tag}_memory_{run}");
                let sentinel = format!("{tag}_memory_{run}_done");
                let result = parent_run(&admin, &db, KINDS[k], &app, &channel, &sentinel, n, tx);
                println!(
                    "{:<50} N = {n:>9}: peak RSS {:>7} KiB (at ready {:>7} KiB)",
                    NAMES[k], result.0, result.1
                );
                peaks[k][j].push(result);
            }
        }
    }

    print_context(
        "Benchmark 6: memory under a slow consumer",
        &db,
        &format!("a fresh process per run, {reps} run(s) per cell; peak RSS is VmHWM"),
    );
    let mut header: Vec<String> = vec!["receiver".to_owned()];
    for n in &ns {
        header.push(format!("peak RSS, N = {n} (min–max of runs)"));
    }
    let (first, last) = (
        ns.first().copied().unwrap_or(0),
        ns.last().copied().unwrap_or(0),
    );
    header.push(format!(
        "growth {first} → {last}: max − max (worst pair: max − min)"
    ));
    header.push("target ≤ 2 MiB".to_owned());
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut t = Table::new(
        "Peak RSS while a burst arrives at an unread consumer",
        &header,
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    for (k, name) in NAMES.iter().enumerate() {
        let min_max: Vec<(u64, u64)> = peaks[k]
            .iter()
            .map(|runs| {
                let it = runs.iter().map(|r| r.0);
                (it.clone().min().unwrap_or(0), it.max().unwrap_or(0))
            })
            .collect();
        let (lo_first, hi_first) = min_max.first().copied().unwrap_or_default();
        let (_, hi_last) = min_max.last().copied().unwrap_or_default();
        let growth = mib(hi_last) - mib(hi_first);
        let worst = mib(hi_last) - mib(lo_first);
        let mut row = vec![(*name).to_owned()];
        row.extend(
            min_max
                .iter()
                .map(|(lo, hi)| format!("{:.1}–{:.1} MiB", mib(*lo), mib(*hi))),
        );
        row.push(format!("{growth:+.1} MiB ({worst:+.1} MiB)"));
        row.push(if KINDS[k] == "pglisten" {
            format!(
                "{} (worst pair: {})",
                verdict(growth <= 2.0),
                verdict(worst <= 2.0)
            )
        } else {
            String::new()
        });
        t.row(row);
    }
    t.print();
}

/// Runs one child; returns (peak RSS, RSS when ready), KiB.
#[allow(clippy::too_many_arguments)]
fn parent_run(
    admin: &Admin,
    db: &Db,
    kind: &str,
    app: &str,
    channel: &str,
    sentinel: &str,
    n: usize,
    tx: usize,
) -> (u64, u64) {
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .env("PGLISTEN_BENCH_MEMORY_CHILD", kind)
        .env("PGLISTEN_BENCH_MEMORY_URL", db.url_as(app))
        .env("PGLISTEN_BENCH_MEMORY_CHANNEL", channel)
        .env("PGLISTEN_BENCH_MEMORY_SENTINEL", sentinel)
        .env("PGLISTEN_BENCH_MEMORY_N", n.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next_line = || lines.next().expect("child output").expect("child output");
    let ready = next_line();
    let at_ready: u64 = ready
        .strip_prefix("ready ")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("child said {ready:?}"));
    let pid = admin.backend_of(app);
    {
        let _paused = Paused::pause(pid);
        admin.produce(channel, "m:", n, tx);
        admin.execute(&format!("NOTIFY \"{sentinel}\""));
    } // SIGCONT: the burst arrives.
    let done = next_line();
    let status = child.wait().expect("child exit");
    assert!(status.success(), "child {kind} failed: {status}");
    let peak: u64 = done
        .strip_prefix("peak ")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("child said {done:?}"));
    (peak, at_ready)
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} not set"))
}

/// The child process: one receiver, one burst.
fn child(kind: &str) {
    let url = var("PGLISTEN_BENCH_MEMORY_URL");
    let channel = var("PGLISTEN_BENCH_MEMORY_CHANNEL");
    let sentinel = var("PGLISTEN_BENCH_MEMORY_SENTINEL");
    let n: u64 = var("PGLISTEN_BENCH_MEMORY_N").parse().expect("N");
    let rt = Flavor::CurrentThread.runtime();
    let ready = || {
        println!("ready {}", rss_kib());
        std::io::stdout().flush().expect("stdout");
    };
    let accounted = rt.block_on(async {
        match kind {
            "pglisten" => {
                let listener = Listener::connect(&url).await.expect("connect");
                let mut burst = listener.subscribe([channel.as_str()]).await.expect("sub");
                let mut done = listener.subscribe([sentinel.as_str()]).await.expect("sub");
                ready();
                while !matches!(done.next().await, Some(Event::Notification(_))) {}
                let peak = peak_rss_kib();
                // Now read the burst: what was kept plus what was reported lost.
                let mut total = 0;
                while total < n {
                    let event = tokio::time::timeout(Duration::from_secs(30), burst.next())
                        .await
                        .expect("burst accounted for")
                        .expect("stream");
                    match event {
                        Event::Notification(_) => total += 1,
                        Event::Lagged(k) => total += k,
                        other => panic!("unexpected {other:?}"),
                    }
                }
                (peak, total)
            }
            _ => {
                let mut raw =
                    RawReceiver::connect(&url, &[channel.clone(), sentinel.clone()]).await;
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                ready();
                let mut total = 0;
                while let Some(note) = raw.next().await {
                    if note.channel() == sentinel {
                        break;
                    }
                    total += 1;
                    if kind == "mpsc" {
                        let _ = tx.send(note);
                    }
                }
                let peak = peak_rss_kib();
                drop(rx);
                (peak, total)
            }
        }
    });
    assert_eq!(accounted.1, n, "{kind}: notifications unaccounted for");
    println!("peak {}", accounted.0);
}
