//! Benchmark 5: 10 000 subscriptions on 10 000 distinct channels on one `Listener`.
//!
//! Time to subscribe them all (issued concurrently, as `join_all` of `subscribe` calls;
//! every call returns once its LISTEN is acknowledged), against two raw tokio-postgres
//! baselines: one LISTEN per round trip (what an unbatched design costs) and a single
//! batch of 10 000 LISTENs (the floor). Every connection goes through a small counting
//! proxy in this process, which counts the server's ReadyForQuery messages: the number of
//! round trips each way of subscribing took. Memory per idle subscription is measured on a
//! fresh listener, as live heap bytes (a counting global allocator) and as RSS.
//!
//! `PGLISTEN_BENCH_SCALE_N` (default 10 000), `PGLISTEN_BENCH_QUICK=1`.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pglisten::{Listener, Subscription};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------
// Live heap bytes
// ---------------------------------------------------------------------------

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

fn signed(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counter is a
// side effect that never allocates.
#[allow(unsafe_code, reason = "a counting GlobalAlloc is an unsafe trait impl")]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(signed(layout.size()), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(signed(layout.size()), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(signed(layout.size()), Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(signed(new_size) - signed(layout.size()), Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

// ---------------------------------------------------------------------------
// A proxy that counts round trips
// ---------------------------------------------------------------------------

/// Forwards TCP connections to the server and counts, per connection, the server's
/// ReadyForQuery ('Z') messages: one per completed simple query or sync.
struct Proxy {
    port: u16,
    counters: Arc<Mutex<Vec<Arc<AtomicU64>>>>,
}

impl Proxy {
    fn start(admin: &Admin, upstream: String) -> Proxy {
        let counters: Arc<Mutex<Vec<Arc<AtomicU64>>>> = Arc::default();
        let listener = admin
            .runtime()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("proxy bind");
        let port = listener.local_addr().expect("proxy addr").port();
        let list = counters.clone();
        admin.runtime().spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let counter = Arc::new(AtomicU64::new(0));
                list.lock().expect("counters").push(counter.clone());
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                        let _ = server_write.shutdown().await;
                    });
                    let mut framer = Framer::default();
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(k) = server_read.read(&mut buf).await {
                        if k == 0 {
                            break;
                        }
                        framer.feed(&buf[..k], &counter);
                        if client_write.write_all(&buf[..k]).await.is_err() {
                            break;
                        }
                    }
                    let _ = client_write.shutdown().await;
                    up.abort();
                });
            }
        });
        Proxy { port, counters }
    }

    /// Connections proxied so far.
    fn connections(&self) -> usize {
        self.counters.lock().expect("counters").len()
    }

    /// The counters of the connections proxied after the first `skip`.
    fn since(&self, skip: usize) -> Vec<Arc<AtomicU64>> {
        self.counters.lock().expect("counters")[skip..].to_vec()
    }

    /// The counter of the most recent connection.
    fn last(&self) -> Arc<AtomicU64> {
        self.counters
            .lock()
            .expect("counters")
            .last()
            .expect("a proxied connection")
            .clone()
    }
}

/// The ReadyForQuery counters of a set of connections.
#[derive(Clone)]
struct RoundTrips(Vec<Arc<AtomicU64>>);

impl RoundTrips {
    fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// Splits the server's byte stream into protocol messages (type byte, 4-byte length).
#[derive(Default)]
struct Framer {
    header: [u8; 5],
    have: usize,
    remaining: usize,
}

impl Framer {
    fn feed(&mut self, mut buf: &[u8], ready_for_query: &AtomicU64) {
        while !buf.is_empty() {
            if self.remaining > 0 {
                let k = self.remaining.min(buf.len());
                self.remaining -= k;
                buf = &buf[k..];
                continue;
            }
            let k = (5 - self.have).min(buf.len());
            self.header[self.have..self.have + k].copy_from_slice(&buf[..k]);
            self.have += k;
            buf = &buf[k..];
            if self.have == 5 {
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]);
                if self.header[0] == b'Z' {
                    ready_for_query.fetch_add(1, Ordering::Relaxed);
                }
                self.remaining = (len as usize).saturating_sub(4);
                self.have = 0;
            }
        }
    }
}

// ---------------------------------------------------------------------------

const NAMES: [&str; 3] = [
    "tokio-postgres, one LISTEN per round trip",
    "tokio-postgres, one batch of all LISTENs (floor)",
    "pglisten, concurrent subscribe() calls",
];

#[derive(Clone, Copy, Default)]
struct Timed {
    wall: Duration,
    round_trips: u64,
}

fn listen_sql(channels: &[String]) -> String {
    channels
        .iter()
        .map(|c| format!("LISTEN \"{c}\";"))
        .collect()
}

async fn subscribe_all(listener: &Listener, channels: &[String]) -> Vec<Subscription> {
    futures::future::try_join_all(channels.iter().map(|c| listener.subscribe([c.as_str()])))
        .await
        .expect("subscribe")
}

fn main() {
    let n = size("PGLISTEN_BENCH_SCALE_N", 10_000, 10_000, 200);
    let db = Db::start();
    let admin = Admin::connect(db.url());
    let config: pglisten::tokio_postgres::Config = db.url().parse().expect("a postgres URL");
    let host = match config.get_hosts().first() {
        Some(pglisten::tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => panic!("benchmark 5 needs a TCP host in the URL"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let proxy = Proxy::start(&admin, format!("{host}:{port}"));
    let proxied = |app: &str| {
        with_param(
            &db.url_as(app).replacen(
                &format!("{host}:{port}"),
                &format!("127.0.0.1:{}", proxy.port),
                1,
            ),
            "sslmode",
            "disable",
        )
    };
    let mut c = criterion();
    let mut report = Vec::new();
    for flavor in flavors() {
        let rt = flavor.runtime();
        let tag = tag();
        let channels: Vec<String> = (0..n)
            .map(|i| format!("{tag}_scale_{}_{i:05}", flavor.name()))
            .collect();
        let channels = Arc::new(channels);

        // Memory per idle subscription, on a fresh listener.
        let url = proxied(&format!("{tag}-scale-mem-{}", flavor.name()));
        let ch = channels.clone();
        let memory = run_task(&rt, async move {
            let listener = Listener::connect(&url).await.expect("connect");
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (heap0, rss0) = (LIVE.load(Ordering::Relaxed), rss_kib());
            let subs = subscribe_all(&listener, &ch).await;
            // Idle: let the listener settle (the LISTEN batch and its SQL are gone).
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (heap1, rss1) = (LIVE.load(Ordering::Relaxed), rss_kib());
            assert_eq!(
                listener.listening_channels().await.expect("channels").len(),
                ch.len()
            );
            drop(subs);
            listener.shutdown().await;
            (heap1 - heap0, rss1.saturating_sub(rss0))
        });

        let (raw_seq, raw_batch, listener) = {
            let urls = [0, 1, 2].map(|i| proxied(&format!("{tag}-scale-{}-{i}", flavor.name())));
            let [u0, u1, u2] = urls;
            let raw_seq = run_task(&rt, async move { RawReceiver::connect(&u0, &[]).await });
            let c0 = proxy.last();
            let raw_batch = run_task(&rt, async move { RawReceiver::connect(&u1, &[]).await });
            let c1 = proxy.last();
            // Every connection the listener opened: its own, and the short one of the
            // delivery self-check (the most recent one is not the listener's).
            let skip = proxy.connections();
            let listener = run_task(&rt, async move {
                Listener::connect(&u2).await.expect("connect")
            });
            let c2 = RoundTrips(proxy.since(skip));
            ((raw_seq, c0), (raw_batch, c1), (listener, c2))
        };
        let (mut raw_seq, seq_count) = (Some(raw_seq.0), raw_seq.1);
        let (mut raw_batch, batch_count) = (Some(raw_batch.0), raw_batch.1);
        let (listener, listener_count) = listener;

        let rounds = criterion_rounds(
            &mut c,
            &format!("scale/{}", flavor.name()),
            &format!("pglisten_subscribe_{n}"),
            Some(criterion::Throughput::Elements(n as u64)),
            |round| {
                let mut timed = [Timed::default(); 3];
                for i in order(3, round) {
                    let ch = channels.clone();
                    match i {
                        0 => {
                            let mut raw = raw_seq.take().expect("raw");
                            let before = seq_count.load(Ordering::Relaxed);
                            let (raw, wall) = run_task(&rt, async move {
                                let t0 = Instant::now();
                                for c in ch.iter() {
                                    raw.run(&format!("LISTEN \"{c}\"")).await;
                                }
                                let wall = t0.elapsed();
                                raw.run("UNLISTEN *").await;
                                (raw, wall)
                            });
                            let trips = seq_count.load(Ordering::Relaxed) - before - 1;
                            timed[0] = Timed {
                                wall,
                                round_trips: trips,
                            };
                            raw_seq = Some(raw);
                        }
                        1 => {
                            let mut raw = raw_batch.take().expect("raw");
                            let before = batch_count.load(Ordering::Relaxed);
                            let (raw, wall) = run_task(&rt, async move {
                                let sql = listen_sql(&ch);
                                let t0 = Instant::now();
                                raw.run(&sql).await;
                                let wall = t0.elapsed();
                                raw.run("UNLISTEN *").await;
                                (raw, wall)
                            });
                            let trips = batch_count.load(Ordering::Relaxed) - before - 1;
                            timed[1] = Timed {
                                wall,
                                round_trips: trips,
                            };
                            raw_batch = Some(raw);
                        }
                        _ => {
                            let l = listener.clone();
                            let before = listener_count.total();
                            let count = listener_count.clone();
                            let (wall, trips) = run_task(&rt, async move {
                                let t0 = Instant::now();
                                let subs = subscribe_all(&l, &ch).await;
                                let wall = t0.elapsed();
                                let trips = count.total() - before;
                                drop(subs);
                                // Wait for the UNLISTEN batch, untimed.
                                let deadline = Instant::now() + Duration::from_secs(60);
                                while !l.listening_channels().await.expect("channels").is_empty() {
                                    assert!(Instant::now() < deadline, "UNLISTEN never happened");
                                    tokio::time::sleep(Duration::from_millis(5)).await;
                                }
                                (wall, trips)
                            });
                            timed[2] = Timed {
                                wall,
                                round_trips: trips,
                            };
                        }
                    }
                }
                timed
            },
            |t| t[2].wall,
        );
        if !rounds.is_empty() {
            report.push((flavor, rounds, memory));
        }
        run_task(&rt, async move {
            listener.shutdown().await;
            drop((raw_seq, raw_batch));
        });
    }

    print_context(
        "Benchmark 5: scale of subscriptions",
        &db,
        &format!(
            "{n} subscriptions on {n} distinct channels on one Listener, through a counting proxy"
        ),
    );
    for (flavor, rounds, (heap, rss)) in &report {
        let mut t = Table::new(
            format!(
                "Subscribing {n} channels, {} runtime ({} rounds)",
                flavor.name(),
                rounds.len()
            ),
            &[
                "way",
                "time (median)",
                "vs one batch (median)",
                "round trips (median)",
                "target",
            ],
        );
        for (i, name) in NAMES.iter().enumerate() {
            let ms: Vec<f64> = rounds
                .iter()
                .map(|r| r[i].wall.as_secs_f64() * 1e3)
                .collect();
            let ratio: Vec<f64> = rounds
                .iter()
                .map(|r| r[i].wall.as_secs_f64() / r[1].wall.as_secs_f64())
                .collect();
            let trips: Vec<f64> = rounds.iter().map(|r| r[i].round_trips as f64).collect();
            t.row(vec![
                (*name).to_owned(),
                format!("{:.1} ms", median(&ms)),
                fmt_ratio(median(&ratio)),
                format!("{:.0}", median(&trips)),
                if i == 2 {
                    format!(
                        "batched: {}",
                        // At least one round trip (else this counted the wrong
                        // connection), far fewer than one per subscription.
                        verdict(
                            percentile(&trips, 0.0) >= 1.0
                                && percentile(&trips, 100.0) < (n as f64) / 10.0
                        )
                    )
                } else {
                    String::new()
                },
            ]);
        }
        t.print();
        let per_heap = *heap as f64 / n as f64;
        let per_rss = *rss as f64 * 1024.0 / n as f64;
        let mut m = Table::new(
            format!("Memory per idle subscription, {} runtime", flavor.name()),
            &[
                "measure",
                "total for all",
                "per subscription",
                "target < 2 KiB",
            ],
        );
        m.row(vec![
            "live heap (counting allocator)".to_owned(),
            format!("{:.0} KiB", *heap as f64 / 1024.0),
            format!("{per_heap:.0} B"),
            verdict(per_heap < 2048.0).to_owned(),
        ]);
        m.row(vec![
            "RSS".to_owned(),
            format!("{rss} KiB"),
            format!("{per_rss:.0} B"),
            verdict(per_rss < 2048.0).to_owned(),
        ]);
        m.print();
    }
    c.final_summary();
}
