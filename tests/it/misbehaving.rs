//! Delivery promises under consumers that misbehave (issue 13): shutdown in the middle of
//! a backlog, a consumer that blocks its worker thread, consumers polled from odd
//! contexts, a credentials hook that panics, and order under forced reconnects. Each test
//! runs on a current-thread and on a multi-thread runtime (two workers) unless it is
//! about one of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use pglisten::tokio_postgres::Client;
use pglisten::{Event, Listener, Subscription};
use tokio::runtime::Runtime;

use crate::support::*;

#[derive(Debug, Clone, Copy)]
enum Flavor {
    CurrentThread,
    MultiThread,
}

const FLAVORS: [Flavor; 2] = [Flavor::CurrentThread, Flavor::MultiThread];

fn runtime(flavor: Flavor) -> Runtime {
    match flavor {
        Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        Flavor::MultiThread => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(2);
            builder
        }
    }
    .enable_all()
    .build()
    .expect("a tokio runtime")
}

/// Payloads are the sequence number padded to this width, so every notification
/// message has the same size on the wire.
const PAYLOAD_WIDTH: usize = 8;

/// Commits `1..=n` on `channel` in transactions of 10 000, in order.
async fn produce_numbered(admin: &Client, channel: &str, n: u64) {
    let tx = 10_000;
    let mut from = 1;
    while from <= n {
        let to = (from + tx - 1).min(n);
        let sql = format!(
            "SELECT pg_notify('{channel}', lpad(i::text, {PAYLOAD_WIDTH}, '0')) \
             FROM generate_series({from}, {to}) AS i"
        );
        admin.batch_execute(&sql).await.expect("produce");
        from = to + 1;
    }
}

/// The size of one of `produce_numbered`'s notification messages on the wire: type,
/// length, sender's pid, channel and payload with their terminating NULs.
fn message_size(channel: &str) -> u64 {
    (1 + 4 + 4 + channel.len() + 1 + PAYLOAD_WIDTH + 1) as u64
}

/// The client-side TCP port of backend `pid`'s connection.
async fn client_port(admin: &Client, pid: i32) -> u16 {
    let row = admin
        .query_one(
            "SELECT client_port FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .expect("pg_stat_activity");
    let port: i32 = row.get(0);
    u16::try_from(port).expect("a TCP connection")
}

/// Bytes waiting in the receive queue of this machine's TCP socket whose local port is
/// `port` (what the kernel has received and nobody has read yet).
fn unread_socket_bytes(port: u16) -> u64 {
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields[1].rsplit(':').next().expect("address:port");
            if u16::from_str_radix(local_port, 16) == Ok(port) {
                let rx = fields[4].split(':').nth(1).expect("tx:rx");
                return u64::from_str_radix(rx, 16).expect("hex rx_queue");
            }
        }
    }
    panic!("no TCP socket with local port {port}");
}

fn sequence_number(payload: &str) -> u64 {
    payload.parse().expect("a numbered payload")
}

// ---------------------------------------------------------------------------
// Shutdown with a backlog
// ---------------------------------------------------------------------------

#[test]
fn shutdown_delivers_everything_that_reached_the_socket() {
    for flavor in FLAVORS {
        runtime(flavor).block_on(async {
            for round in 0..3 {
                shutdown_round(flavor, round, round == 2).await;
            }
        });
    }
}

/// 200 000 queued, a consumer reading, `shutdown()` once it has 50 000. With
/// `server_done`, the consumer pauses at 50 000 and shutdown waits until the server
/// has sent everything: then every notification must come out.
async fn shutdown_round(flavor: Flavor, round: usize, server_done: bool) {
    const N: u64 = 200_000;
    const AT: u64 = 50_000;
    let url = shared_url();
    let admin = pglisten_testkit::admin(&url).await;
    let channel = unique("shutdown_backlog");
    let listener = Listener::builder(&url)
        .queue_capacity(1 << 18)
        .connect()
        .await
        .unwrap();
    let mut events = listener.subscribe([&channel]).await.unwrap();
    let port = client_port(&admin, listener.backend_pid().unwrap()).await;

    let (reached, at_50k) = tokio::sync::oneshot::channel();
    let (resume, resumed) = tokio::sync::oneshot::channel::<()>();
    let consumer = tokio::spawn(async move {
        let mut reached = Some(reached);
        let mut resumed = Some(resumed);
        let mut count = 0u64;
        while let Some(event) = events.next().await {
            let Event::Notification(note) = event else {
                panic!("unexpected {event:?}");
            };
            count += 1;
            assert_eq!(sequence_number(note.payload()), count, "out of order");
            if count == AT {
                let _ = reached.take().unwrap().send(());
                if server_done {
                    let _ = resumed.take().unwrap().await;
                }
            }
        }
        count
    });
    let producer = {
        let channel = channel.clone();
        tokio::spawn(async move { produce_numbered(&admin, &channel, N).await })
    };
    at_50k.await.expect("the consumer reached 50 000");
    let size = message_size(&channel);
    if server_done {
        producer.await.unwrap();
        // Everything the server sends is read or waiting in the socket.
        eventually("the server sent the whole backlog", || {
            let read = listener.stats().notifications_received;
            let waiting = unread_socket_bytes(port) / size;
            async move { read + waiting >= N }
        })
        .await;
    }
    // Read first, then the socket: a message moving between the two in between is
    // counted in neither, so this is a lower bound.
    let read = listener.stats().notifications_received;
    let waiting = unread_socket_bytes(port) / size;
    listener.shutdown().await;
    let _ = resume.send(());
    let delivered = tokio::time::timeout(WAIT, consumer)
        .await
        .expect("the stream ended after shutdown")
        .unwrap();
    assert!(
        delivered >= read + waiting,
        "{flavor:?}, round {round}: delivered {delivered}, but {read} had been read and \
         {waiting} more were waiting in the socket when shutdown() was called"
    );
    if server_done {
        assert_eq!(delivered, N, "{flavor:?}: the server had sent everything");
    }
}

// ---------------------------------------------------------------------------
// A consumer that blocks its worker thread
// ---------------------------------------------------------------------------

#[test]
fn a_consumer_blocking_its_worker_thread_never_stops_the_reading() {
    runtime(Flavor::MultiThread).block_on(async {
        const N: u64 = 200_000;
        let url = shared_url();
        let admin = pglisten_testkit::admin(&url).await;
        let bulk = unique("blocking_bulk");
        let trickle = unique("blocking_trickle");
        let listener = Listener::builder(&url)
            .queue_capacity(1 << 19)
            .heartbeat(Duration::from_millis(200), Duration::from_secs(1))
            .connect()
            .await
            .unwrap();
        let mut events = listener.subscribe([&bulk, &trickle]).await.unwrap();
        // Traffic that keeps arriving while the consumer blocks, sent from a runtime of
        // its own: a task of this runtime could be held up by the blocked worker too.
        let producer_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let producer = {
            let _on = producer_runtime.enter();
            Producer::start(url.clone(), trickle.clone())
        };
        // Bursts the listener is still reading when the consumer blocks: each one
        // transaction, so that all of it becomes visible at once, committed when the
        // consumer asks for it. (Stopping the backend while queueing, as the benchmarks
        // do, would also stop it answering the 200 ms heartbeat.)
        const BURSTS: u64 = 4;
        const PER_BURST: u64 = N / BURSTS;
        let (ask, mut asked) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let bursts = {
            let bulk = bulk.clone();
            producer_runtime.spawn(async move {
                while let Some(burst) = asked.recv().await {
                    let (from, to) = (burst * PER_BURST + 1, (burst + 1) * PER_BURST);
                    admin
                        .batch_execute(&format!(
                            "SELECT pg_notify('{bulk}', lpad(i::text, {PAYLOAD_WIDTH}, '0')) \
                             FROM generate_series({from}, {to}) AS i"
                        ))
                        .await
                        .expect("produce");
                }
            })
        };
        ask.send(0).unwrap();

        let watched = listener.clone();
        let consumer = tokio::spawn(async move {
            let (mut bulk_seen, mut trickle_next, mut total) = (0u64, 0u64, 0u64);
            let mut blocks = Vec::new();
            let block = |length: Duration| {
                let before = watched.stats().notifications_received;
                std::thread::sleep(length); // blocks this worker thread
                let after = watched.stats().notifications_received;
                (length, before, after)
            };
            while bulk_seen < N {
                let event = tokio::time::timeout(WAIT, events.next())
                    .await
                    .expect("an event")
                    .expect("the stream goes on");
                let Event::Notification(note) = event else {
                    panic!("unexpected {event:?} after {total} notifications");
                };
                total += 1;
                if note.channel() != bulk.as_str() {
                    assert_eq!(sequence_number(note.payload()), trickle_next);
                    trickle_next += 1;
                    continue;
                }
                bulk_seen += 1;
                assert_eq!(sequence_number(note.payload()), bulk_seen);
                match bulk_seen % PER_BURST {
                    // Early in a burst, while the listener is still reading it: 2.5 s
                    // the first time, 1.5 s after that.
                    20_000 if blocks.is_empty() => blocks.push(block(Duration::from_millis(2500))),
                    20_000 => blocks.push(block(Duration::from_millis(1500))),
                    // Caught up with a burst: the next one.
                    0 if bulk_seen < N => ask.send(bulk_seen / PER_BURST).unwrap(),
                    _ => {}
                }
            }
            (events, blocks, trickle_next)
        });
        let (mut events, blocks, mut trickle_next) =
            tokio::time::timeout(Duration::from_secs(120), consumer)
                .await
                .expect("the consumer finished")
                .unwrap();
        for (length, before, after) in &blocks {
            assert!(
                after > before,
                "the listener received nothing while the consumer blocked for {length:?} \
                 ({before} before, {after} after)"
            );
        }
        assert_eq!(blocks.len() as u64, BURSTS);
        bursts.await.unwrap();
        // Everything sent is delivered, with no error and no reconnect.
        let sent = producer.sent();
        producer.stop().await;
        while trickle_next < sent {
            let event = next_event(&mut events).await;
            let Event::Notification(note) = event else {
                panic!("unexpected {event:?}");
            };
            assert_eq!(note.channel(), trickle.as_str());
            assert_eq!(sequence_number(note.payload()), trickle_next);
            trickle_next += 1;
        }
        let stats = listener.stats();
        assert_eq!(stats.reconnects, 0, "{stats:?}");
        assert_eq!(stats.notifications_dropped, 0, "{stats:?}");
        producer_runtime.shutdown_background();
    });
}

// ---------------------------------------------------------------------------
// Consumers polled from odd contexts
// ---------------------------------------------------------------------------

#[test]
fn consumers_polled_from_any_context_get_every_notification_in_order() {
    for flavor in FLAVORS {
        let runtime = runtime(flavor);
        let handle = runtime.handle().clone();
        runtime.block_on(async move {
            const N: u64 = 50_000;
            let url = shared_url();
            let admin = pglisten_testkit::admin(&url).await;
            let channel = unique("contexts");
            let listener = Listener::builder(&url)
                .queue_capacity(1 << 17)
                .connect()
                .await
                .unwrap();
            let mut subs = Vec::new();
            for _ in 0..4 {
                subs.push(listener.subscribe([&channel]).await.unwrap());
            }
            fn drain(mut sub: Subscription) -> u64 {
                futures::executor::block_on(async {
                    let mut count = 0;
                    while count < N {
                        match sub.next().await {
                            Some(Event::Notification(note)) => {
                                count += 1;
                                assert_eq!(sequence_number(note.payload()), count);
                            }
                            other => panic!("unexpected {other:?} after {count}"),
                        }
                    }
                    count
                })
            }
            let (spawned, blocking, plain, entered) = (
                subs.pop().unwrap(),
                subs.pop().unwrap(),
                subs.pop().unwrap(),
                subs.pop().unwrap(),
            );
            let from_spawn_blocking = tokio::task::spawn_blocking(move || drain(blocking));
            let (plain_done, from_plain) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || plain_done.send(drain(plain)));
            let (entered_done, from_entered) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let _runtime = handle.enter();
                entered_done.send(drain(entered))
            });
            let from_task = tokio::spawn(async move {
                let mut sub = spawned;
                let mut count = 0;
                while count < N {
                    count += 1;
                    let note = next_notification(&mut sub).await;
                    assert_eq!(sequence_number(note.payload()), count);
                }
                count
            });
            produce_numbered(&admin, &channel, N).await;
            let all = tokio::time::timeout(WAIT, async {
                (
                    from_spawn_blocking.await.unwrap(),
                    from_plain.await.unwrap(),
                    from_entered.await.unwrap(),
                    from_task.await.unwrap(),
                )
            })
            .await
            .unwrap_or_else(|_| panic!("{flavor:?}: a consumer hung"));
            assert_eq!(all, (N, N, N, N), "{flavor:?}");
        });
    }
}

// ---------------------------------------------------------------------------
// A credentials hook that panics
// ---------------------------------------------------------------------------

#[test]
fn a_credentials_hook_that_panics_ends_every_stream_and_reaches_no_consumer() {
    for flavor in FLAVORS {
        runtime(flavor).block_on(async {
            let url = shared_url();
            let channel = unique("hook_panic");
            let armed = Arc::new(AtomicBool::new(false));
            let listener = Listener::builder(&url)
                .backoff(fast_backoff())
                .credentials({
                    let armed = armed.clone();
                    move || {
                        if armed.load(Ordering::SeqCst) {
                            panic!("credentials hook failure (expected by this test)");
                        }
                        async { Ok::<_, std::io::Error>(String::from("unused under trust")) }
                    }
                })
                .connect()
                .await
                .unwrap();
            let mut subs = vec![
                listener.subscribe([&channel]).await.unwrap(),
                listener.subscribe([&channel]).await.unwrap(),
            ];
            // A consumer reading while the reconnect happens.
            let reader = subs.pop().unwrap();
            let consumer = tokio::spawn(async move {
                let mut reader = reader;
                let mut seen = Vec::new();
                while let Some(event) = reader.next().await {
                    seen.push(event);
                }
                seen
            });
            listener.notify(&channel, "before").await.unwrap();
            armed.store(true, Ordering::SeqCst);
            listener.reconnect().await.unwrap();
            let seen = tokio::time::timeout(WAIT, consumer)
                .await
                .unwrap_or_else(|_| panic!("{flavor:?}: the consumer's stream did not end"))
                .expect("no panic reaches the consumer");
            assert!(
                seen.iter()
                    .any(|e| matches!(e, Event::Notification(n) if n.payload() == "before")),
                "{flavor:?}: {seen:?}"
            );
            let mut other = subs.pop().unwrap();
            let ended =
                tokio::time::timeout(WAIT, async { while other.next().await.is_some() {} }).await;
            assert!(ended.is_ok(), "{flavor:?}: the other stream did not end");
            tokio::time::timeout(WAIT, listener.shutdown())
                .await
                .unwrap_or_else(|_| panic!("{flavor:?}: shutdown did not return"));
            assert!(listener.is_closed(), "{flavor:?}");
        });
    }
}

// ---------------------------------------------------------------------------
// Order under forced reconnects
// ---------------------------------------------------------------------------

/// What a consumer saw, reduced to what the order rules talk about.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Seen {
    Number(u64),
    Lagged(u64),
    Reconnected,
    Error,
}

fn reduce(event: &Event) -> Seen {
    match event {
        Event::Notification(note) => Seen::Number(sequence_number(note.payload())),
        Event::Lagged(n) => Seen::Lagged(*n),
        Event::Reconnected(_) => Seen::Reconnected,
        Event::Error(_) => Seen::Error,
        other => panic!("unexpected {other:?}"),
    }
}

/// The order rules: after an `Error` the next other event is `Reconnected`; numbers
/// strictly increase; between two numbers with no `Reconnected` between them, the
/// missing numbers are exactly the sum of the `Lagged` counts between them.
fn check_order(name: &str, seen: &[Seen]) {
    let mut after_error = false;
    let mut last: Option<u64> = None;
    let mut lagged = 0;
    let mut gap = false;
    for (i, event) in seen.iter().enumerate() {
        match *event {
            Seen::Error => after_error = true,
            Seen::Reconnected => {
                after_error = false;
                gap = true;
            }
            other => {
                assert!(
                    !after_error,
                    "{name}: {other:?} at {i} after an Error, before Reconnected"
                );
                match other {
                    Seen::Lagged(n) => lagged += n,
                    Seen::Number(n) => {
                        if let Some(previous) = last {
                            assert!(n > previous, "{name}: {n} after {previous} at {i}");
                            if !gap {
                                assert_eq!(
                                    n - previous - 1,
                                    lagged,
                                    "{name}: between {previous} and {n} (at {i}) the missing \
                                     numbers do not match the Lagged counts"
                                );
                            }
                        }
                        last = Some(n);
                        lagged = 0;
                        gap = false;
                    }
                    _ => unreachable!(),
                }
            }
        }
    }
}

#[test]
fn order_holds_under_forced_reconnects() {
    for flavor in FLAVORS {
        runtime(flavor).block_on(async {
            let url = shared_url();
            let channel = unique("order");
            let listener_for = |capacity| {
                Listener::builder(&url)
                    .queue_capacity(capacity)
                    .backoff(fast_backoff())
                    .connect()
            };
            let listener = listener_for(64).await.unwrap();
            let mut subscriptions = Vec::new();
            for capacity in [64, 1024, 65_536] {
                // One listener per queue size: the capacity is a listener setting.
                let own = if capacity == 64 {
                    listener.clone()
                } else {
                    listener_for(capacity).await.unwrap()
                };
                subscriptions.push((own.clone(), own.subscribe([&channel]).await.unwrap()));
            }
            let producer = Producer::start(url.clone(), channel.clone());
            let (pausing_listener, pausing) = subscriptions.remove(0);
            let (plain_listener, plain) = subscriptions.remove(0);
            let (task_listener, on_task) = subscriptions.remove(0);

            // A consumer that pauses now and then, on a task (queue of 64: it lags).
            let pausing = tokio::spawn(async move {
                let mut sub = pausing;
                let mut seen = Vec::new();
                while let Some(event) = sub.next().await {
                    seen.push(reduce(&event));
                    if seen.len() % 100 == 0 {
                        tokio::time::sleep(Duration::from_millis(400)).await;
                    }
                }
                seen
            });
            // A consumer on a plain thread (queue of 1024).
            let (plain_done, from_plain) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let mut sub = plain;
                let seen = futures::executor::block_on(async {
                    let mut seen = Vec::new();
                    while let Some(event) = sub.next().await {
                        seen.push(reduce(&event));
                    }
                    seen
                });
                plain_done.send(seen)
            });
            // A consumer on a task (queue of 65 536).
            let on_task = tokio::spawn(async move {
                let mut sub = on_task;
                let mut seen = Vec::new();
                while let Some(event) = sub.next().await {
                    seen.push(reduce(&event));
                }
                seen
            });

            let start = Instant::now();
            let mut reconnects = 0;
            while start.elapsed() < Duration::from_secs(6) {
                tokio::time::sleep(Duration::from_millis(300)).await;
                for listener in [&pausing_listener, &plain_listener, &task_listener] {
                    listener.reconnect().await.unwrap();
                }
                reconnects += 1;
            }
            producer.stop().await;
            for listener in [&pausing_listener, &plain_listener, &task_listener] {
                listener.shutdown().await;
            }
            let results = tokio::time::timeout(Duration::from_secs(60), async {
                [
                    ("pausing, queue 64", pausing.await.unwrap()),
                    ("plain thread, queue 1024", from_plain.await.unwrap()),
                    ("task, queue 65536", on_task.await.unwrap()),
                ]
            })
            .await
            .unwrap_or_else(|_| panic!("{flavor:?}: a stream did not end after shutdown"));
            assert!(reconnects >= 10, "{reconnects}");
            for (name, seen) in &results {
                let name = format!("{flavor:?}, {name}");
                check_order(&name, seen);
                let numbers = seen.iter().filter(|e| matches!(e, Seen::Number(_))).count();
                let regained = seen.iter().filter(|e| **e == Seen::Reconnected).count();
                assert!(numbers > 100, "{name}: only {numbers} notifications");
                assert!(regained >= 5, "{name}: only {regained} Reconnected");
            }
        });
    }
}

#[test]
fn the_order_check_catches_what_it_should() {
    use Seen::*;
    let good = [
        Number(1),
        Lagged(2),
        Number(4),
        Error,
        Reconnected,
        Number(9),
    ];
    check_order("good", &good);
    for bad in [
        vec![Number(1), Number(3)],                   // a silent gap
        vec![Number(2), Number(1)],                   // out of order
        vec![Number(1), Error, Number(2)],            // no Reconnected after the error
        vec![Number(1), Lagged(5), Number(3)],        // a wrong count
        vec![Number(1), Error, Lagged(1), Number(3)], // lag between error and reconnect
    ] {
        let caught = std::panic::catch_unwind(|| check_order("bad", &bad));
        assert!(caught.is_err(), "not caught: {bad:?}");
    }
}

#[test]
fn a_credentials_hook_that_panics_on_the_first_attempt_fails_connect_on_its_own_thread() {
    for flavor in FLAVORS {
        runtime(flavor).block_on(async {
            let error = Listener::builder(&shared_url())
                .task_placement(pglisten::TaskPlacement::OwnThread)
                .credentials(|| -> std::future::Ready<Result<String, std::io::Error>> {
                    panic!("credentials hook failure (expected by this test)")
                })
                .connect()
                .await
                .expect_err("the hook panicked");
            assert_eq!(
                error.kind(),
                pglisten::ErrorKind::Closed,
                "{flavor:?}: {error}"
            );
        });
    }
}
