//! Benchmark 9: sending. Notifications per second for three ways of sending N
//! notifications through an ordinary client, interleaved in each round:
//!
//! - `per_transaction`: one `pglisten::notify` per transaction (autocommit), so each
//!   notification takes the server's notification commit lock once;
//! - `per_statement`: one `pglisten::notify` per statement, all in one transaction;
//! - `notify_many`: `pglisten::notify_many`, one statement and one transaction.
//!
//! A pglisten listener receives every notification (so the server's queue stays
//! drained, and delivery is checked). "sent" is from the first statement to the last
//! commit's acknowledgement; "delivered" until the listener has the last one.
//!
//! `PGLISTEN_BENCH_SEND_N` (default 10k), `PGLISTEN_BENCH_QUICK=1`.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use pglisten::tokio_postgres::Client;
use pglisten::{Event, Listener, Subscription};
use support::*;

const MODES: [&str; 3] = ["per_transaction", "per_statement", "notify_many"];

#[derive(Debug, Clone, Copy, Default)]
struct Timing {
    sent: Duration,
    delivered: Duration,
}

struct Round {
    timings: [Timing; 3],
}

async fn send(client: &mut Client, mode: usize, channel: &str, payloads: &[String]) {
    match mode {
        0 => {
            for payload in payloads {
                pglisten::notify(&*client, channel, payload)
                    .await
                    .expect("notify");
            }
        }
        1 => {
            let tx = client.transaction().await.expect("begin");
            for payload in payloads {
                pglisten::notify(&tx, channel, payload)
                    .await
                    .expect("notify");
            }
            tx.commit().await.expect("commit");
        }
        _ => pglisten::notify_many(&*client, channel, payloads)
            .await
            .expect("notify_many"),
    }
}

async fn receive(events: &mut Subscription, payloads: &[String]) {
    let mut got = 0;
    while got < payloads.len() {
        match tokio::time::timeout(Duration::from_secs(60), events.next()).await {
            Ok(Some(Event::Notification(n))) => {
                assert_eq!(n.payload(), payloads[got], "in order, nothing lost");
                got += 1;
            }
            Ok(Some(other)) => panic!("unexpected {other:?}"),
            _ => panic!("only {got} of {} notifications arrived", payloads.len()),
        }
    }
}

fn main() {
    let n = size("PGLISTEN_BENCH_SEND_N", 10_000, 2_000, 100);
    let db = Db::start();
    let rt = Flavor::MultiThread.runtime();
    let url = db.url().to_owned();
    let channel = format!("{}_send", tag());
    let (mut client, listener, mut events) = rt.block_on({
        let (url, channel) = (url.clone(), channel.clone());
        async move {
            let client = pglisten_testkit::admin(&url).await;
            let listener = Listener::builder(&url)
                .queue_capacity(2 * n)
                .connect()
                .await
                .expect("listener");
            let events = listener.subscribe([&channel]).await.expect("subscribe");
            (client, listener, events)
        }
    });

    let mut c = criterion();
    let rounds = criterion_rounds(
        &mut c,
        "send",
        "three ways",
        Some(criterion::Throughput::Elements(3 * n as u64)),
        |round| {
            let mut timings = [Timing::default(); 3];
            for mode in order(3, round) {
                let payloads: Vec<String> =
                    (0..n).map(|i| format!("r{round}m{mode}:{i}")).collect();
                rt.block_on(async {
                    let start = Instant::now();
                    let receiving = receive(&mut events, &payloads);
                    let sending = async {
                        send(&mut client, mode, &channel, &payloads).await;
                        start.elapsed()
                    };
                    let (sent, ()) = tokio::join!(sending, receiving);
                    timings[mode] = Timing {
                        sent,
                        delivered: start.elapsed(),
                    };
                });
            }
            Round { timings }
        },
        |r| r.timings.iter().map(|t| t.delivered).sum(),
    );
    rt.block_on(listener.shutdown());

    print_context(
        "Benchmark 9: sending",
        &db,
        &format!("N = {n} per way, short unique payloads, one client, one listener receiving"),
    );
    if rounds.is_empty() {
        return;
    }
    let mut t = Table::new(
        format!("Sending N notifications ({} rounds)", rounds.len()),
        &[
            "how",
            "sent/s (median, min–max)",
            "delivered/s (median)",
            "vs one per transaction (median)",
        ],
    );
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    for (mode, name) in MODES.iter().enumerate() {
        let sent: Vec<f64> = rounds.iter().map(|r| rate(r.timings[mode].sent)).collect();
        let delivered: Vec<f64> = rounds
            .iter()
            .map(|r| rate(r.timings[mode].delivered))
            .collect();
        let ratio: Vec<f64> = rounds
            .iter()
            .map(|r| r.timings[0].delivered.as_secs_f64() / r.timings[mode].delivered.as_secs_f64())
            .collect();
        t.row(vec![
            (*name).to_owned(),
            format!(
                "{} ({}–{})",
                fmt_rate(median(&sent)),
                fmt_rate(percentile(&sent, 0.0)),
                fmt_rate(percentile(&sent, 100.0))
            ),
            fmt_rate(median(&delivered)),
            fmt_ratio(median(&ratio)),
        ]);
    }
    t.print();
    c.final_summary();
}
