//! Benchmark 3: latency at one notification per millisecond.
//!
//! A producer (its own connection and thread) sends one notification per millisecond,
//! each its own autocommitted `SELECT pg_notify` carrying the time it was sent; the
//! receiver records the delay from that time to the moment its `next()` returned (a clock
//! shared by the threads of this process). The delay therefore includes the statement's
//! execution and commit on the server, the same for every receiver. Receivers take turns
//! in blocks of `PGLISTEN_BENCH_LATENCY_BLOCK` notifications, so they see the same
//! conditions. Reports p50, p90, p99 and max, and the difference to raw tokio-postgres.
//!
//! `PGLISTEN_BENCH_LATENCY_N` (notifications per receiver, default 5000),
//! `PGLISTEN_BENCH_LATENCY_BLOCK` (250), `PGLISTEN_BENCH_QUICK=1`.

mod support;

use std::time::Duration;

use support::*;

fn stamp() -> String {
    // 20 digits of clock, then padding to the usual 64 bytes.
    format!("{:020}:{}", clock_ns(), "x".repeat(PAYLOAD_BYTES - 21))
}

fn main() {
    let total = size("PGLISTEN_BENCH_LATENCY_N", 5_000, 1_000, 40);
    let block = size("PGLISTEN_BENCH_LATENCY_BLOCK", 250, 250, 20).min(total);
    let rounds = total.div_ceil(block);
    let db = Db::start();
    let admin = Admin::connect(db.url());
    // A database per receiver, so only the measured receiver's backend wakes up.
    let dbs: Vec<Db> = (0..3)
        .map(|i| db.database(&admin, &format!("pglisten_bench_latency_{i}")))
        .collect();
    let producers: Vec<Admin> = dbs.iter().map(|d| Admin::connect(d.url())).collect();
    clock_ns();
    let mut report = Vec::new();
    for flavor in flavors() {
        let rt = flavor.runtime();
        let tag = tag();
        let channels: Vec<String> = (0..3)
            .map(|i| format!("{tag}_latency_{}_{i}", flavor.name()))
            .collect();
        let mut receivers = Vec::new();
        for (i, channel) in channels.iter().enumerate() {
            let url = dbs[i].url_as(&format!("{tag}-latency-{}-{i}", flavor.name()));
            let channel = channel.clone();
            receivers.push(Some(run_task(&rt, async move {
                Receiver::connect(i, &url, &channel, 1024).await
            })));
        }
        // Delays in microseconds, per receiver; the first block of each is a warm-up.
        let mut delays: Vec<Vec<f64>> = vec![Vec::new(); 3];
        // Per round, each receiver's block median: paired differences are robust to the
        // machine's load changing between rounds.
        let mut block_p50: Vec<[f64; 3]> = Vec::new();
        for round in 0..=rounds {
            let mut p50s = [0.0; 3];
            for i in order(3, round) {
                let (go, start) = tokio::sync::oneshot::channel::<()>();
                let client = producers[i].client();
                let channel = channels[i].clone();
                let producer = producers[i].runtime().spawn(async move {
                    let stmt = client
                        .prepare("SELECT pg_notify($1, $2)")
                        .await
                        .expect("prepare");
                    let mut tick = tokio::time::interval(Duration::from_millis(1));
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    if start.await.is_err() {
                        return;
                    }
                    for _ in 0..block {
                        tick.tick().await;
                        client
                            .execute(&stmt, &[&channel, &stamp()])
                            .await
                            .expect("notify");
                    }
                });
                let mut receiver = receivers[i].take().expect("receiver");
                let (receiver, got) = run_task(&rt, async move {
                    let mut got = Vec::with_capacity(block);
                    let _ = go.send(());
                    receiver
                        .for_each(block as u64, |p| {
                            let now = clock_ns();
                            let sent: u64 = p[..20].parse().expect("stamp");
                            got.push(now.saturating_sub(sent) as f64 / 1e3);
                        })
                        .await;
                    (receiver, got)
                });
                producers[i].runtime().block_on(producer).expect("producer");
                receivers[i] = Some(receiver);
                p50s[i] = median(&got);
                if round > 0 {
                    delays[i].extend(got);
                }
            }
            if round > 0 {
                block_p50.push(p50s);
            }
        }
        run_task(&rt, async move { drop(receivers) });
        report.push((flavor, delays, block_p50));
    }

    print_context(
        "Benchmark 3: latency",
        &db,
        &format!(
            "{total} notifications per receiver at 1/ms, in interleaved blocks of {block}; \
             delay from just before the producer sends the autocommitted NOTIFY to next() \
             returning"
        ),
    );
    for (flavor, delays, block_p50) in &report {
        let mut t = Table::new(
            format!(
                "Latency, {} runtime ({} notifications per receiver)",
                flavor.name(),
                delays[RAW].len()
            ),
            &[
                "receiver",
                "p50",
                "p90",
                "p99",
                "max",
                "p50 − raw p50",
                "block p50 − raw block p50 (median, min–max over rounds)",
                "p99 − raw p99",
                "target",
            ],
        );
        let raw50 = median(&delays[RAW]);
        let raw99 = percentile(&delays[RAW], 99.0);
        for (i, name) in NAMES.iter().enumerate() {
            let d = &delays[i];
            let p50 = median(d);
            let p99 = percentile(d, 99.0);
            let us = |v: f64| format!("{v:.0} µs");
            t.row(vec![
                (*name).to_owned(),
                us(p50),
                us(percentile(d, 90.0)),
                us(p99),
                us(percentile(d, 100.0)),
                format!("{:+.0} µs", p50 - raw50),
                {
                    let d: Vec<f64> = block_p50.iter().map(|b| b[i] - b[RAW]).collect();
                    format!(
                        "{:+.0} µs ({:+.0}…{:+.0})",
                        median(&d),
                        percentile(&d, 0.0),
                        percentile(&d, 100.0)
                    )
                },
                format!("{:+.0} µs", p99 - raw99),
                if i == PGLISTEN {
                    format!(
                        "p50 within 20 µs: {} (paired: {})",
                        verdict(p50 - raw50 <= 20.0),
                        verdict(
                            median(&block_p50.iter().map(|b| b[i] - b[RAW]).collect::<Vec<_>>())
                                <= 20.0
                        )
                    )
                } else {
                    String::new()
                },
            ]);
        }
        t.print();
    }
}
