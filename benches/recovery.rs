//! Benchmark 7: recovery after the server terminates the listening backend.
//!
//! Measured from just before `SELECT pg_terminate_backend(pid)` is sent (by another
//! connection on the same runtime) until the subscription yields `Event::Reconnected`,
//! that is until LISTEN is active again on a new connection. The baseline is a
//! hand-written raw tokio-postgres loop that notices the end of its connection, connects
//! again and LISTENs (the least any reconnecting listener must do). Interleaved round by
//! round, on a local server.
//!
//! `PGLISTEN_BENCH_BACKOFF_MS`: the listener's first backoff delay (default 100, the
//! library's default). The first attempt after a loss is immediate, so the target is
//! under 100 ms plus that delay.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pglisten::tokio_postgres::Client;
use pglisten::{Backoff, Event, Listener, Subscription};
use support::*;

const NAMES: [&str; 2] = ["tokio-postgres reconnect loop (raw)", "pglisten"];

struct Rig {
    raw: Option<RawReceiver>,
    pglisten: Option<(Listener, Subscription)>,
    killer: Arc<Client>,
}

async fn terminate(killer: &Client, pid: i32) {
    let row = killer
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("pg_terminate_backend");
    assert!(row.get::<_, bool>(0), "backend {pid} was not terminated");
}

fn main() {
    let backoff_ms = size("PGLISTEN_BENCH_BACKOFF_MS", 100, 100, 100);
    let db = Db::start();
    let mut c = criterion();
    let mut report = Vec::new();
    for flavor in flavors() {
        let rt = flavor.runtime();
        let tag = tag();
        let channel = format!("{tag}_recovery_{}", flavor.name());
        let raw_url = db.url_as(&format!("{tag}-recovery-raw"));
        let url = db.url_as(&format!("{tag}-recovery-pglisten"));
        let admin_url = db.url().to_owned();
        let ch = channel.clone();
        let mut rig = run_task(&rt, async move {
            let killer = pglisten_testkit::admin(&admin_url).await;
            let raw = RawReceiver::connect(&raw_url, std::slice::from_ref(&ch)).await;
            let listener = Listener::builder(&url)
                .backoff(Backoff::new().initial(Duration::from_millis(backoff_ms as u64)))
                .connect()
                .await
                .expect("connect");
            let sub = listener.subscribe([ch.as_str()]).await.expect("subscribe");
            Rig {
                raw: Some(raw),
                pglisten: Some((listener, sub)),
                killer: Arc::new(killer),
            }
        });
        let raw_url = db.url_as(&format!("{tag}-recovery-raw"));

        let rounds = criterion_rounds(
            &mut c,
            &format!("recovery/{}", flavor.name()),
            "pglisten",
            None,
            |round| {
                let mut times = [Duration::ZERO; 2];
                for i in order(2, round) {
                    let killer = rig.killer.clone();
                    if i == 0 {
                        let mut raw = rig.raw.take().expect("raw");
                        let url = raw_url.clone();
                        let channel = channel.clone();
                        let (raw, took) = run_task(&rt, async move {
                            let pid = raw.backend_pid().await;
                            let t0 = Instant::now();
                            terminate(&killer, pid).await;
                            while raw.next().await.is_some() {}
                            let raw = RawReceiver::connect(&url, &[channel]).await;
                            (raw, t0.elapsed())
                        });
                        rig.raw = Some(raw);
                        times[0] = took;
                    } else {
                        let (listener, mut sub) = rig.pglisten.take().expect("pglisten");
                        let (listener, sub, took) = run_task(&rt, async move {
                            let pid = listener.backend_pid().expect("connected");
                            let t0 = Instant::now();
                            terminate(&killer, pid).await;
                            loop {
                                match sub.next().await.expect("stream ended") {
                                    Event::Reconnected(_) => break,
                                    Event::Error(_) => {}
                                    other => panic!("unexpected {other:?}"),
                                }
                            }
                            let took = t0.elapsed();
                            (listener, sub, took)
                        });
                        rig.pglisten = Some((listener, sub));
                        times[1] = took;
                    }
                }
                times
            },
            |t| t[1],
        );
        if !rounds.is_empty() {
            report.push((flavor, rounds));
        }
        run_task(&rt, async move { drop(rig) });
    }

    print_context(
        "Benchmark 7: recovery after pg_terminate_backend",
        &db,
        &format!("first backoff delay {backoff_ms} ms; the first attempt is immediate"),
    );
    for (flavor, rounds) in &report {
        let mut t = Table::new(
            format!(
                "Recovery, {} runtime ({} rounds)",
                flavor.name(),
                rounds.len()
            ),
            &["receiver", "p50", "max", "p50 vs raw", "target"],
        );
        for (i, name) in NAMES.iter().enumerate() {
            let ms: Vec<f64> = rounds.iter().map(|r| r[i].as_secs_f64() * 1e3).collect();
            let raw: Vec<f64> = rounds.iter().map(|r| r[0].as_secs_f64() * 1e3).collect();
            let max = percentile(&ms, 100.0);
            t.row(vec![
                (*name).to_owned(),
                format!("{:.1} ms", median(&ms)),
                format!("{max:.1} ms"),
                fmt_ratio(median(&ms) / median(&raw)),
                if i == 1 {
                    format!(
                        "max < 100 ms + {backoff_ms} ms: {}",
                        verdict(max < 100.0 + backoff_ms as f64)
                    )
                } else {
                    String::new()
                },
            ]);
        }
        t.print();
    }
    c.final_summary();
}
