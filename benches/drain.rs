//! Benchmark 1: draining a pre-queued backlog.
//!
//! The server queues N notifications (unique 64-byte payloads, transactions of 10k) while
//! the receiving backend is stopped (SIGSTOP); the measurement starts at SIGCONT and ends
//! when the receiver has the N-th notification. Receivers, interleaved round by round:
//! a raw tokio-postgres `poll_message` loop (the floor), sqlx `PgListener::recv`, and a
//! pglisten `Subscription` read with `StreamExt::next`, on the current-thread and the
//! multi-thread runtime. Reports notifications/s and process CPU per notification.
//!
//! `PGLISTEN_BENCH_N` (default 200k), `PGLISTEN_BENCH_TX` (10k), `PGLISTEN_BENCH_QUICK=1`.

mod support;

use std::hint::black_box;

use support::*;

struct Round {
    samples: [Sample; 3],
    lagged: u64,
}

fn main() {
    let n = size("PGLISTEN_BENCH_N", 200_000, 20_000, 2_000);
    let tx = size("PGLISTEN_BENCH_TX", 10_000, 10_000, 1_000);
    let db = Db::start();
    let admin = Admin::connect(db.url());
    if let Ok(who) = std::env::var("PGLISTEN_BENCH_PROFILE") {
        profile(&db, &admin, &who, n, tx);
        return;
    }
    let mut c = criterion();
    let mut report = Vec::new();
    for flavor in flavors() {
        let rt = flavor.runtime();
        let tag = tag();
        let channels: Vec<String> = (0..3)
            .map(|i| format!("{tag}_drain_{}_{i}", flavor.name()))
            .collect();
        let mut pids = Vec::new();
        let mut receivers = Vec::new();
        for (i, channel) in channels.iter().enumerate() {
            let app = format!("{tag}-drain-{}-{i}", flavor.name());
            let url = db.url_as(&app);
            let channel = channel.clone();
            receivers.push(Some(run_task(&rt, async move {
                Receiver::connect(i, &url, &channel, 2 * n).await
            })));
            pids.push(admin.backend_of(&app));
        }

        let rounds = criterion_rounds(
            &mut c,
            &format!("drain/{}", flavor.name()),
            "pglisten",
            Some(criterion::Throughput::Elements(n as u64)),
            |round| {
                let mut samples = [Sample::default(); 3];
                let mut lagged = 0;
                for i in order(3, round) {
                    let paused = Paused::pause(pids[i]);
                    admin.produce(&channels[i], &format!("r{round}:"), n, tx);
                    let mut receiver = receivers[i].take().expect("receiver");
                    let (receiver, sample, lost) = run_task(&rt, async move {
                        let meter = Meter::start();
                        paused.resume();
                        let lost = receiver
                            .for_each(n as u64, |p| {
                                black_box(p.len());
                            })
                            .await;
                        (receiver, meter.stop(n as u64), lost)
                    });
                    receivers[i] = Some(receiver);
                    samples[i] = sample;
                    lagged += lost;
                }
                Round { samples, lagged }
            },
            |r| r.samples[PGLISTEN].wall,
        );
        if !rounds.is_empty() {
            report.push((flavor, rounds));
        }
        // Close the connections on their runtime.
        run_task(&rt, async move { drop(receivers) });
    }

    print_context(
        "Benchmark 1: drain a pre-queued backlog",
        &db,
        &format!("N = {n}, transactions of {tx}, 64-byte payloads"),
    );
    for (flavor, rounds) in &report {
        print_table(*flavor, rounds);
    }
    c.final_summary();
}

/// `PGLISTEN_BENCH_PROFILE=raw|sqlx|pglisten`: one warm-up and one measured drain of
/// that receiver alone, on the runtime of `PGLISTEN_BENCH_RUNTIMES` (the first listed),
/// for a profiler. Under callgrind, collect only the measured drain:
/// `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*profiled_drain*' ...`
fn profile(db: &Db, admin: &Admin, who: &str, n: usize, tx: usize) {
    let kind = match who {
        "raw" => RAW,
        "sqlx" => SQLX,
        "pglisten" => PGLISTEN,
        other => panic!("PGLISTEN_BENCH_PROFILE={other}: expected raw, sqlx or pglisten"),
    };
    let flavor = flavors()[0];
    let rt = flavor.runtime();
    let app = format!("{}-profile", tag());
    let channel = format!("{}_profile", tag());
    let (url, ch) = (db.url_as(&app), channel.clone());
    let mut receiver = Some(run_task(&rt, async move {
        Receiver::connect(kind, &url, &ch, 2 * n).await
    }));
    let pid = admin.backend_of(&app);
    for (round, label) in ["warm-up", "measured"].into_iter().enumerate() {
        let paused = Paused::pause(pid);
        admin.produce(&channel, &format!("r{round}:"), n, tx);
        let r = receiver.take().expect("receiver");
        let (r, sample) = profiled_drain(&rt, r, paused, n as u64);
        receiver = Some(r);
        println!(
            "{label}: {who} on {}: {} notifications, {}, {} CPU per notification",
            flavor.name(),
            n,
            fmt_rate(sample.per_second()),
            fmt_ns_as_us(sample.cpu_ns())
        );
    }
    run_task(&rt, async move { drop(receiver) });
}

#[inline(never)]
fn profiled_drain(
    rt: &tokio::runtime::Runtime,
    mut receiver: Receiver,
    paused: Paused,
    n: u64,
) -> (Receiver, Sample) {
    run_task(rt, async move {
        let meter = Meter::start();
        paused.resume();
        receiver
            .for_each(n, |p| {
                black_box(p.len());
            })
            .await;
        (receiver, meter.stop(n))
    })
}

fn print_table(flavor: Flavor, rounds: &[Round]) {
    let mut t = Table::new(
        format!("Drain, {} runtime ({} rounds)", flavor.name(), rounds.len()),
        &[
            "receiver",
            "notifications/s (median)",
            "CPU per notification (median)",
            "rate vs raw (median, min–max)",
            "CPU vs raw (median, min–max)",
            "target",
        ],
    );
    for (i, name) in NAMES.iter().enumerate() {
        let rate: Vec<f64> = rounds.iter().map(|r| r.samples[i].per_second()).collect();
        let cpu: Vec<f64> = rounds.iter().map(|r| r.samples[i].cpu_ns()).collect();
        let rate_ratio: Vec<f64> = rounds
            .iter()
            .map(|r| r.samples[i].per_second() / r.samples[RAW].per_second())
            .collect();
        let cpu_ratio: Vec<f64> = rounds
            .iter()
            .map(|r| r.samples[i].cpu_ns() / r.samples[RAW].cpu_ns())
            .collect();
        let range = |v: &[f64]| {
            format!(
                "{} ({:.2}–{:.2})",
                fmt_ratio(median(v)),
                percentile(v, 0.0),
                percentile(v, 100.0)
            )
        };
        let target = if i == PGLISTEN {
            let lagged: u64 = rounds.iter().map(|r| r.lagged).sum();
            format!(
                "CPU ≤ 1.20×: {}; rate ≥ 0.90×: {}{}",
                verdict(median(&cpu_ratio) <= 1.2),
                verdict(median(&rate_ratio) >= 0.9),
                if lagged > 0 {
                    format!("; {lagged} LAGGED")
                } else {
                    String::new()
                }
            )
        } else {
            String::new()
        };
        t.row(vec![
            (*name).to_owned(),
            fmt_rate(median(&rate)),
            fmt_ns_as_us(median(&cpu)),
            range(&rate_ratio),
            range(&cpu_ratio),
            target,
        ]);
    }
    t.print();
}
