//! Benchmark 2: a steady stream.
//!
//! A server-side loop (one `DO` statement, so the producing client does no work) sends N
//! notifications, committing every `PGLISTEN_BENCH_STEADY_TX` (default 1: every
//! notification is its own transaction and wakes the receiver on its own), while the
//! receiver consumes them. Measured from the start of the producer to the N-th
//! notification; the same receivers and figures as the drain benchmark. The rate is set
//! by the producer, so the figure that matters is CPU per notification.
//!
//! `PGLISTEN_BENCH_STEADY_N` (default 50k), `PGLISTEN_BENCH_STEADY_TX` (1),
//! `PGLISTEN_BENCH_QUICK=1`.

mod support;

use std::hint::black_box;

use support::*;

struct Round {
    samples: [Sample; 3],
    lagged: u64,
}

fn main() {
    let n = size("PGLISTEN_BENCH_STEADY_N", 50_000, 5_000, 500);
    let tx = size("PGLISTEN_BENCH_STEADY_TX", 1, 1, 1);
    let db = Db::start();
    let admin = Admin::connect(db.url());
    // A database per receiver, so only the measured receiver's backend wakes up.
    let dbs: Vec<Db> = (0..3)
        .map(|i| db.database(&admin, &format!("pglisten_bench_steady_{i}")))
        .collect();
    let producers: Vec<Admin> = dbs.iter().map(|d| Admin::connect(d.url())).collect();
    let mut c = criterion();
    let mut report = Vec::new();
    for flavor in flavors() {
        let rt = flavor.runtime();
        let tag = tag();
        let channels: Vec<String> = (0..3)
            .map(|i| format!("{tag}_steady_{}_{i}", flavor.name()))
            .collect();
        let mut receivers = Vec::new();
        for (i, channel) in channels.iter().enumerate() {
            let url = dbs[i].url_as(&format!("{tag}-steady-{}-{i}", flavor.name()));
            let channel = channel.clone();
            receivers.push(Some(run_task(&rt, async move {
                Receiver::connect(i, &url, &channel, 2 * n).await
            })));
        }

        let rounds = criterion_rounds(
            &mut c,
            &format!("steady/{}", flavor.name()),
            "pglisten",
            Some(criterion::Throughput::Elements(n as u64)),
            |round| {
                let mut samples = [Sample::default(); 3];
                let mut lagged = 0;
                for i in order(3, round) {
                    let sql = steady_producer_sql(&channels[i], &format!("r{round}:"), n, tx);
                    let (go, start) = tokio::sync::oneshot::channel::<()>();
                    let client = producers[i].client();
                    let producer = producers[i].runtime().spawn(async move {
                        if start.await.is_ok() {
                            client.batch_execute(&sql).await.expect("steady producer");
                        }
                    });
                    let mut receiver = receivers[i].take().expect("receiver");
                    let (receiver, sample, lost) = run_task(&rt, async move {
                        let meter = Meter::start();
                        let _ = go.send(());
                        let lost = receiver
                            .for_each(n as u64, |p| {
                                black_box(p.len());
                            })
                            .await;
                        (receiver, meter.stop(n as u64), lost)
                    });
                    producers[i]
                        .runtime()
                        .block_on(producer)
                        .expect("producer task");
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
        run_task(&rt, async move { drop(receivers) });
    }

    print_context(
        "Benchmark 2: steady stream",
        &db,
        &format!("N = {n}, {tx} notification(s) per transaction, 64-byte payloads"),
    );
    for (flavor, rounds) in &report {
        let mut t = Table::new(
            format!(
                "Steady stream, {} runtime ({} rounds)",
                flavor.name(),
                rounds.len()
            ),
            &[
                "receiver",
                "notifications/s (median)",
                "CPU per notification (median)",
                "rate vs raw (median, min–max)",
                "CPU vs raw (median, min–max)",
            ],
        );
        for (i, name) in NAMES.iter().enumerate() {
            let rate: Vec<f64> = rounds.iter().map(|r| r.samples[i].per_second()).collect();
            let cpu: Vec<f64> = rounds.iter().map(|r| r.samples[i].cpu_ns()).collect();
            let ratio = |f: &dyn Fn(&Sample) -> f64| -> String {
                let v: Vec<f64> = rounds
                    .iter()
                    .map(|r| f(&r.samples[i]) / f(&r.samples[RAW]))
                    .collect();
                format!(
                    "{} ({:.2}–{:.2})",
                    fmt_ratio(median(&v)),
                    percentile(&v, 0.0),
                    percentile(&v, 100.0)
                )
            };
            let mut name = (*name).to_owned();
            let lagged: u64 = rounds.iter().map(|r| r.lagged).sum();
            if i == PGLISTEN && lagged > 0 {
                name.push_str(&format!(" ({lagged} LAGGED)"));
            }
            t.row(vec![
                name,
                fmt_rate(median(&rate)),
                fmt_ns_as_us(median(&cpu)),
                ratio(&Sample::per_second),
                ratio(&Sample::cpu_ns),
            ]);
        }
        t.print();
    }
    c.final_summary();
}
