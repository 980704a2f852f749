//! Benchmark 4: fan-out to 1, 10, 100 and 1000 subscriptions on one channel.
//!
//! Each configuration is its own `Listener` (its own backend) with S subscriptions on its
//! own channel, each read by its own task (as an application would). A backlog of N
//! notifications is queued while the backend is stopped, as in the drain benchmark; the
//! measurement runs from SIGCONT until every subscription has all N. A raw tokio-postgres
//! drain of the same N is measured in the same rounds: the "raw per-notification cost"
//! that the marginal cost of a subscriber is compared with.
//!
//! `PGLISTEN_BENCH_FANOUT_N` (default 20k), `PGLISTEN_BENCH_FANOUT` (list of S,
//! default `1,10,100,1000`), `PGLISTEN_BENCH_QUICK=1`.

mod support;

use std::hint::black_box;

use futures::StreamExt;
use pglisten::{Event, Listener, Subscription};
use support::*;

struct Config {
    pid: i32,
    channel: String,
    /// `None` for the raw receiver.
    fan: Option<(Listener, Vec<Subscription>)>,
    raw: Option<RawReceiver>,
}

struct Round {
    raw: Sample,
    /// One per fan-out, in the order of `FANOUT`.
    fan: Vec<Sample>,
    lagged: u64,
}

async fn drain_subscription(mut sub: Subscription, n: u64) -> (Subscription, u64) {
    let mut got = 0;
    let mut lagged = 0;
    while got < n {
        match sub.next().await.expect("subscription ended") {
            Event::Notification(note) => {
                black_box(note.payload().len());
                got += 1;
            }
            Event::Lagged(k) => {
                lagged += k;
                got += k;
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    (sub, lagged)
}

fn main() {
    let n = size("PGLISTEN_BENCH_FANOUT_N", 20_000, 2_000, 200);
    let tx = size("PGLISTEN_BENCH_TX", 10_000, 10_000, 1_000);
    let fanouts: Vec<usize> = std::env::var("PGLISTEN_BENCH_FANOUT")
        .unwrap_or_else(|_| "1,10,100,1000".to_owned())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("PGLISTEN_BENCH_FANOUT: list of counts")
        })
        .collect();
    let db = Db::start();
    let admin = Admin::connect(db.url());
    let mut c = criterion();
    let mut report = Vec::new();
    for flavor in flavors() {
        let rt = flavor.runtime();
        let tag = tag();
        let mut configs = Vec::new();
        // Index 0: raw; then one per fan-out.
        for (i, fan) in std::iter::once(0)
            .chain(fanouts.iter().copied())
            .enumerate()
        {
            let app = format!("{tag}-fanout-{}-{i}", flavor.name());
            let url = db.url_as(&app);
            let channel = format!("{tag}_fanout_{}_{i}", flavor.name());
            let ch = channel.clone();
            let (fan, raw) = run_task(&rt, async move {
                if i == 0 {
                    (None, Some(RawReceiver::connect(&url, &[ch]).await))
                } else {
                    let listener = Listener::builder(&url)
                        .queue_capacity(2 * n)
                        .connect()
                        .await
                        .expect("connect");
                    let subs = futures::future::try_join_all(
                        (0..fan).map(|_| listener.subscribe([ch.as_str()])),
                    )
                    .await
                    .expect("subscribe");
                    (Some((listener, subs)), None)
                }
            });
            configs.push(Config {
                pid: admin.backend_of(&app),
                channel,
                fan,
                raw,
            });
        }

        let rounds = criterion_rounds(
            &mut c,
            &format!("fanout/{}", flavor.name()),
            &format!(
                "pglisten_{}_subscriptions",
                fanouts.last().copied().unwrap_or(0)
            ),
            Some(criterion::Throughput::Elements(
                (n * fanouts.last().copied().unwrap_or(0)) as u64,
            )),
            |round| {
                let mut raw = Sample::default();
                let mut fan = vec![Sample::default(); fanouts.len()];
                let mut lagged = 0;
                for i in order(configs.len(), round) {
                    let config = &mut configs[i];
                    let paused = Paused::pause(config.pid);
                    admin.produce(&config.channel, &format!("r{round}:"), n, tx);
                    if let Some(mut receiver) = config.raw.take() {
                        let (receiver, sample) = run_task(&rt, async move {
                            let meter = Meter::start();
                            paused.resume();
                            for _ in 0..n {
                                let note = receiver.next().await.expect("raw ended");
                                black_box(note.payload().len());
                            }
                            (receiver, meter.stop(n as u64))
                        });
                        config.raw = Some(receiver);
                        raw = sample;
                    } else if let Some((listener, subs)) = config.fan.take() {
                        let deliveries = (n * subs.len()) as u64;
                        let (subs, sample, lost) = run_task(&rt, async move {
                            let meter = Meter::start();
                            paused.resume();
                            let tasks: Vec<_> = subs
                                .into_iter()
                                .map(|s| tokio::spawn(drain_subscription(s, n as u64)))
                                .collect();
                            let mut subs = Vec::with_capacity(tasks.len());
                            let mut lost = 0;
                            for task in tasks {
                                let (s, l) = task.await.expect("consumer task");
                                subs.push(s);
                                lost += l;
                            }
                            (subs, meter.stop(deliveries), lost)
                        });
                        config.fan = Some((listener, subs));
                        fan[i - 1] = sample;
                        lagged += lost;
                    }
                }
                Round { raw, fan, lagged }
            },
            |r| r.fan.last().map_or(std::time::Duration::ZERO, |s| s.wall),
        );
        if !rounds.is_empty() {
            report.push((flavor, rounds));
        }
        run_task(&rt, async move { drop(configs) });
    }

    print_context(
        "Benchmark 4: fan-out on one channel",
        &db,
        &format!("N = {n} notifications per round, each delivered to every subscription"),
    );
    for (flavor, rounds) in &report {
        let mut t = Table::new(
            format!(
                "Fan-out, {} runtime ({} rounds)",
                flavor.name(),
                rounds.len()
            ),
            &[
                "receiver",
                "deliveries/s (median)",
                "CPU per delivery (median)",
                "CPU per notification (median)",
                "CPU per added subscriber vs raw per notification (median)",
                "target ≤ 0.25×",
            ],
        );
        let raw_ns: Vec<f64> = rounds.iter().map(|r| r.raw.cpu_ns()).collect();
        t.row(vec![
            "tokio-postgres poll_message (raw)".to_owned(),
            fmt_rate(median(
                &rounds
                    .iter()
                    .map(|r| r.raw.per_second())
                    .collect::<Vec<_>>(),
            )),
            fmt_ns_as_us(median(&raw_ns)),
            fmt_ns_as_us(median(&raw_ns)),
            String::new(),
            String::new(),
        ]);
        let base = fanouts.iter().position(|&s| s == 1);
        for (k, &s) in fanouts.iter().enumerate() {
            let per_delivery: Vec<f64> = rounds.iter().map(|r| r.fan[k].cpu_ns()).collect();
            let per_note: Vec<f64> = per_delivery.iter().map(|d| d * s as f64).collect();
            // (CPU(S) - CPU(1)) / ((S - 1) * N), relative to raw CPU per notification.
            let marginal = base.filter(|_| s > 1).map(|b| {
                let v: Vec<f64> = rounds
                    .iter()
                    .map(|r| {
                        let extra = r.fan[k].cpu_ns() * s as f64 - r.fan[b].cpu_ns();
                        extra / (s - 1) as f64 / r.raw.cpu_ns()
                    })
                    .collect();
                median(&v)
            });
            t.row(vec![
                format!("pglisten, {s} subscription(s)"),
                fmt_rate(median(
                    &rounds
                        .iter()
                        .map(|r| r.fan[k].per_second())
                        .collect::<Vec<_>>(),
                )),
                fmt_ns_as_us(median(&per_delivery)),
                fmt_ns_as_us(median(&per_note)),
                marginal.map_or(String::new(), fmt_ratio),
                marginal.map_or(String::new(), |m| verdict(m <= 0.25).to_owned()),
            ]);
        }
        t.print();
        let lagged: u64 = rounds.iter().map(|r| r.lagged).sum();
        if lagged > 0 {
            println!("WARNING: {lagged} notifications were reported Lagged");
        }
    }
    c.final_summary();
}
