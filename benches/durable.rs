//! Benchmark 9: durable channels (issue 17), each against a baseline measured in the
//! same run, interleaved round by round:
//!
//! 1. `publish` per entry against a plain `pg_notify`, both one autocommitted statement
//!    with a 64-byte payload (target: at most 2×).
//! 2. Catch-up: a journal of N entries read through a durable subscription from
//!    `Cursor::Beginning`, against streaming the same rows with tokio-postgres
//!    `query_raw` (target: at least 0.5× its rate).
//! 3. Live latency at one entry per millisecond, durable against a plain subscription
//!    (target: p50 at most 1 ms more on an idle cluster); then again with two overlapping
//!    writing transactions that publish nothing (reported: the entries wait for them).
//! 4. 50 durable subscriptions on one channel at 500 entries/s, p99 against one
//!    subscription's (target: at most 2×).
//!
//! `PGLISTEN_BENCH_DURABLE_PUBLISH_N` (entries per round, default 2000),
//! `PGLISTEN_BENCH_DURABLE_CATCHUP_N` (1 000 000), `PGLISTEN_BENCH_DURABLE_LATENCY_N`
//! (2000), `PGLISTEN_BENCH_DURABLE_FAN_N` (1000), `PGLISTEN_BENCH_QUICK=1`;
//! `PGLISTEN_BENCH_DURABLE_PARTS=publish,catchup,latency,fanout` picks the parts.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use pglisten::durable::{Cursor, DurableSubscription, Journal};
use pglisten::tokio_postgres::types::Type;
use pglisten::{Event, Listener};
use support::*;

const ROUNDS: usize = 5;

fn main() {
    if listing_only() {
        return;
    }
    let publish_n = size("PGLISTEN_BENCH_DURABLE_PUBLISH_N", 2_000, 500, 20);
    let catchup_n = size("PGLISTEN_BENCH_DURABLE_CATCHUP_N", 1_000_000, 100_000, 500);
    let latency_n = size("PGLISTEN_BENCH_DURABLE_LATENCY_N", 2_000, 500, 20);
    let fan_n = size("PGLISTEN_BENCH_DURABLE_FAN_N", 1_000, 300, 20);
    let db = Db::start();
    let admin = Admin::connect(db.url());
    let db = db.database(&admin, "pglisten_bench_durable");
    let admin = Admin::connect(db.url());
    let journal = Journal::new(&format!("{}_journal", tag()));
    admin
        .runtime()
        .block_on(journal.install(&*admin.client()))
        .expect("install");
    let rt = Flavor::MultiThread.runtime();
    clock_ns();

    print_context(
        "Benchmark 9: durable channels",
        &db,
        "multi-thread runtime; baselines measured in the same run, interleaved",
    );
    let parts = std::env::var("PGLISTEN_BENCH_DURABLE_PARTS")
        .unwrap_or_else(|_| "publish,catchup,latency,fanout".to_owned());
    let part = |name: &str| parts.split(',').any(|p| p.trim() == name);
    if part("publish") {
        publish_cost(&admin, &journal, publish_n);
    }
    if part("catchup") {
        catch_up(&db, &admin, &rt, &journal, catchup_n);
    }
    if part("latency") {
        latency(&db, &admin, &rt, &journal, latency_n);
    }
    if part("fanout") {
        fan_out(&db, &admin, &rt, &journal, fan_n);
    }
    admin.execute(&format!("DROP SCHEMA \"{}\" CASCADE", journal.schema()));
}

/// 1. Time per entry: publish against pg_notify, one autocommitted statement each.
fn publish_cost(admin: &Admin, journal: &Journal, n: usize) {
    let client = admin.client();
    let payload = "x".repeat(PAYLOAD_BYTES);
    let channel = format!("{}_publish", tag());
    let mut ratios = Vec::new();
    let (mut plain_us, mut durable_us) = (Vec::new(), Vec::new());
    for round in 0..=ROUNDS {
        let plain = admin.runtime().block_on(async {
            let start = Instant::now();
            for _ in 0..n {
                client
                    .execute_typed(
                        "SELECT pg_notify($1, $2)",
                        &[(&channel, Type::TEXT), (&payload, Type::TEXT)],
                    )
                    .await
                    .expect("notify");
            }
            start.elapsed().as_secs_f64() * 1e6 / n as f64
        });
        let durable = admin.runtime().block_on(async {
            let start = Instant::now();
            for _ in 0..n {
                journal
                    .publish(&*client, &channel, &payload)
                    .await
                    .expect("publish");
            }
            start.elapsed().as_secs_f64() * 1e6 / n as f64
        });
        if round > 0 {
            ratios.push(durable / plain);
            plain_us.push(plain);
            durable_us.push(durable);
        }
    }
    let ratio = median(&ratios);
    let mut t = Table::new(
        format!("publish per entry ({n} per round, {ROUNDS} rounds, medians)"),
        &["pg_notify", "durable::publish", "ratio", "target ≤ 2×"],
    );
    t.row(vec![
        format!("{:.1} µs", median(&plain_us)),
        format!("{:.1} µs", median(&durable_us)),
        fmt_ratio(ratio),
        verdict(ratio <= 2.0).to_owned(),
    ]);
    t.print();
}

/// 2. Catch-up of `n` entries: through a durable subscription, against query_raw.
fn catch_up(db: &Db, admin: &Admin, rt: &tokio::runtime::Runtime, journal: &Journal, n: usize) {
    let channel = format!("{}_catchup", tag());
    // 1000 entries per transaction, generated by the server.
    admin.execute(&format!(
        "DO $$ BEGIN FOR i IN 0..{} LOOP
             INSERT INTO \"{s}\".journal (channel, payload)
             SELECT '{channel}', lpad(g::text, {PAYLOAD_BYTES}, 'x')
             FROM generate_series(i * 1000 + 1, least((i + 1) * 1000, {n})) g;
             COMMIT;
         END LOOP; END $$",
        n.div_ceil(1000) - 1,
        s = journal.schema()
    ));
    admin.execute(&format!("VACUUM ANALYZE \"{}\".journal", journal.schema()));
    let rounds = if n >= 500_000 { 3 } else { ROUNDS };
    let (mut raw_rates, mut durable_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..=rounds {
        let url = db.url().to_owned();
        let schema = journal.schema().to_owned();
        let ch = channel.clone();
        let raw = run_task(rt, async move {
            let client = pglisten_testkit::admin(&url).await;
            let sql = format!(
                "SELECT xid::text, seq, pid, payload FROM \"{schema}\".journal \
                 WHERE channel = $1 ORDER BY channel, xid, seq"
            );
            let statement = client.prepare(&sql).await.expect("prepare");
            let start = Instant::now();
            let rows = client
                .query_raw(&statement, [&ch])
                .await
                .expect("query_raw");
            let mut rows = std::pin::pin!(rows);
            let mut count = 0usize;
            let mut bytes = 0usize;
            while let Some(row) = rows.next().await {
                let row = row.expect("row");
                bytes += row.get::<_, &str>(3).len() + row.get::<_, &str>(0).len();
                count += 1;
            }
            assert!(bytes > 0);
            count as f64 / start.elapsed().as_secs_f64()
        });
        let url = db.url().to_owned();
        let (journal2, ch) = (journal.clone(), channel.clone());
        let durable = run_task(rt, async move {
            let listener = Listener::connect(&url).await.expect("listener");
            let start = Instant::now();
            let mut sub = listener
                .subscribe_durable_in(&journal2, &ch, Cursor::Beginning)
                .await
                .expect("subscribe_durable");
            let mut count = 0usize;
            let mut bytes = 0usize;
            while count < n {
                match sub.next().await.expect("stream") {
                    Event::Notification(e) => {
                        bytes += e.payload().len();
                        count += 1;
                    }
                    Event::Error(e) => panic!("catch-up error: {e}"),
                    _ => {}
                }
            }
            assert!(bytes > 0);
            let rate = count as f64 / start.elapsed().as_secs_f64();
            listener.shutdown().await;
            rate
        });
        if round > 0 {
            raw_rates.push(raw);
            durable_rates.push(durable);
            ratios.push(durable / raw);
        }
    }
    let ratio = median(&ratios);
    let mut t = Table::new(
        format!("catch-up of {n} entries of {PAYLOAD_BYTES} bytes ({rounds} rounds, medians)"),
        &[
            "query_raw stream",
            "durable subscription",
            "ratio",
            "target ≥ 0.5×",
        ],
    );
    t.row(vec![
        fmt_rate(median(&raw_rates)),
        fmt_rate(median(&durable_rates)),
        fmt_ratio(ratio),
        verdict(ratio >= 0.5).to_owned(),
    ]);
    t.print();
}

fn stamp() -> String {
    format!("{:020}", clock_ns())
}

fn delay_us(payload: &str) -> f64 {
    let sent: u64 = payload[..20].parse().expect("stamp");
    clock_ns().saturating_sub(sent) as f64 / 1e3
}

/// Receives `n` entries of a durable subscription, returning their delays.
async fn durable_delays(sub: &mut DurableSubscription, n: usize) -> Vec<f64> {
    let mut delays = Vec::with_capacity(n);
    while delays.len() < n {
        if let Event::Notification(e) = sub.next().await.expect("stream") {
            delays.push(delay_us(e.payload()));
        }
    }
    delays
}

/// Two writing transactions that publish nothing, always one of them open (each lives
/// 20 ms, the second starts 10 ms after the first), until `stop`.
fn overlapping_writers(
    admin: &Admin,
    url: &str,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    admin.execute("CREATE TABLE IF NOT EXISTS durable_bench_scratch (n int)");
    (0..2u64)
        .map(|i| {
            let (url, stop) = (url.to_owned(), stop.clone());
            admin.runtime().spawn(async move {
                let mut client = pglisten_testkit::admin(&url).await;
                tokio::time::sleep(Duration::from_millis(10 * i)).await;
                while !stop.load(Ordering::Relaxed) {
                    let tx = client.transaction().await.expect("begin");
                    tx.execute("INSERT INTO durable_bench_scratch VALUES (1)", &[])
                        .await
                        .expect("insert");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    tx.commit().await.expect("commit");
                }
            })
        })
        .collect()
}

/// 3. Latency at one entry per millisecond.
fn latency(db: &Db, admin: &Admin, rt: &tokio::runtime::Runtime, journal: &Journal, n: usize) {
    let channel = format!("{}_latency", tag());
    let url = db.url().to_owned();
    let (j, ch) = (journal.clone(), channel.clone());
    let (listener, plain, durable) = run_task(rt, async move {
        let listener = Listener::connect(&url).await.expect("listener");
        let plain = listener.subscribe([&ch]).await.expect("subscribe");
        let durable = listener
            .subscribe_durable_in(&j, &ch, Cursor::Now)
            .await
            .expect("subscribe_durable");
        (listener, plain, durable)
    });
    let client = admin.client();
    let block = n.clamp(1, 250);
    let measure =
        |busy: bool, mut plain: pglisten::Subscription, mut durable: DurableSubscription| {
            let (mut plain_all, mut durable_all, mut diffs) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..=n.div_ceil(block) {
                // Plain: pg_notify at 1/ms.
                let (c, ch) = (client.clone(), channel.clone());
                let producer = admin.runtime().spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(1));
                    for _ in 0..block {
                        tick.tick().await;
                        c.execute_typed(
                            "SELECT pg_notify($1, $2)",
                            &[(&ch, Type::TEXT), (&stamp(), Type::TEXT)],
                        )
                        .await
                        .expect("notify");
                    }
                });
                let (sub, got) = run_task(rt, async move {
                    let mut got = Vec::with_capacity(block);
                    while got.len() < block {
                        if let Event::Notification(n) = plain.next().await.expect("stream") {
                            got.push(delay_us(n.payload()));
                        }
                    }
                    (plain, got)
                });
                plain = sub;
                admin.runtime().block_on(producer).expect("producer");
                // Durable: publish at 1/ms.
                let (c, ch, j) = (client.clone(), channel.clone(), journal.clone());
                let producer = admin.runtime().spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(1));
                    for _ in 0..block {
                        tick.tick().await;
                        j.publish(&*c, &ch, &stamp()).await.expect("publish");
                    }
                });
                let (sub, dgot) = run_task(rt, async move {
                    let got = durable_delays(&mut durable, block).await;
                    (durable, got)
                });
                durable = sub;
                admin.runtime().block_on(producer).expect("producer");
                if round > 0 {
                    diffs.push(median(&dgot) - median(&got));
                    plain_all.extend(got);
                    durable_all.extend(dgot);
                }
            }
            let extra = median(&diffs) / 1e3;
            let mut t = Table::new(
                format!(
                    "live latency at 1 entry/ms ({n} each, blocks of {block}){}",
                    if busy {
                        ", two overlapping writing transactions that publish nothing"
                    } else {
                        ", idle cluster"
                    }
                ),
                &["receiver", "p50", "p90", "p99", "max", "p50 − plain"],
            );
            for (name, d) in [
                ("plain subscription", &plain_all),
                ("durable", &durable_all),
            ] {
                t.row(vec![
                    name.to_owned(),
                    format!("{:.2} ms", percentile(d, 50.0) / 1e3),
                    format!("{:.2} ms", percentile(d, 90.0) / 1e3),
                    format!("{:.2} ms", percentile(d, 99.0) / 1e3),
                    format!("{:.2} ms", percentile(d, 100.0) / 1e3),
                    if name == "durable" {
                        format!(
                            "{extra:+.2} ms{}",
                            if busy {
                                String::new()
                            } else {
                                format!(" ({} ≤ +1 ms)", verdict(extra <= 1.0))
                            }
                        )
                    } else {
                        String::new()
                    },
                ]);
            }
            t.print();
            (plain, durable)
        };
    let (plain, durable) = measure(false, plain, durable);
    let stop = Arc::new(AtomicBool::new(false));
    let writers = overlapping_writers(admin, db.url(), stop.clone());
    let (plain, durable) = measure(true, plain, durable);
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        admin.runtime().block_on(w).expect("writer");
    }
    run_task(rt, async move {
        drop((plain, durable));
        listener.shutdown().await;
    });
}

/// 4. 50 durable subscriptions on one channel at 500 entries/s, against one.
fn fan_out(db: &Db, admin: &Admin, rt: &tokio::runtime::Runtime, journal: &Journal, n: usize) {
    let mut p99 = Vec::new();
    for subscribers in [1usize, 50] {
        let channel = format!("{}_fan_{subscribers}", tag());
        let url = db.url().to_owned();
        let (j, ch) = (journal.clone(), channel.clone());
        let (listener, subs) = run_task(rt, async move {
            let listener = Listener::connect(&url).await.expect("listener");
            let mut subs = Vec::new();
            for _ in 0..subscribers {
                subs.push(
                    listener
                        .subscribe_durable_in(&j, &ch, Cursor::Now)
                        .await
                        .expect("subscribe_durable"),
                );
            }
            (listener, subs)
        });
        let (c, ch, j) = (admin.client(), channel.clone(), journal.clone());
        let producer = admin.runtime().spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            for _ in 0..n {
                tick.tick().await;
                j.publish(&*c, &ch, &stamp()).await.expect("publish");
            }
        });
        let started = Instant::now();
        let delays = run_task(rt, async move {
            let tasks: Vec<_> = subs
                .into_iter()
                .map(|mut sub| tokio::spawn(async move { durable_delays(&mut sub, n).await }))
                .collect();
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.expect("subscriber"));
            }
            listener.shutdown().await;
            all
        });
        admin.runtime().block_on(producer).expect("producer");
        let elapsed = started.elapsed();
        p99.push((
            subscribers,
            percentile(&delays, 50.0),
            percentile(&delays, 99.0),
            elapsed,
        ));
    }
    let ratio = p99[1].2 / p99[0].2;
    let mut t = Table::new(
        format!("{n} entries at 500/s on one channel"),
        &[
            "durable subscriptions",
            "p50",
            "p99",
            "all received after",
            "p99 ratio",
        ],
    );
    for (subs, p50, p99v, elapsed) in &p99 {
        t.row(vec![
            subs.to_string(),
            format!("{:.2} ms", p50 / 1e3),
            format!("{:.2} ms", p99v / 1e3),
            fmt_ms(*elapsed),
            if *subs == 50 {
                format!("{} ({} ≤ 2×)", fmt_ratio(ratio), verdict(ratio <= 2.0))
            } else {
                String::new()
            },
        ]);
    }
    t.print();
}
