//! Heap allocations per notification: pglisten may allocate at most one more per
//! notification than the driver itself, plus a small constant (one-time growth of its
//! buffers). The design allocates per batch, not per notification (a block for the
//! payloads of up to 128 notifications, and one reference per subscription and batch),
//! so the measured difference is about 0.02.
//!
//! A counting global allocator (the `it` binary's, installed here; it counts per thread,
//! so the tests running beside this one do not disturb it) counts allocations made on the
//! test thread, which runs a current-thread runtime: the driver, pglisten's background
//! task and the consumer all run there. The producer runs on another thread and is not
//! counted. K notifications are drained through a raw tokio-postgres `poll_message` loop
//! and through a pglisten subscription, after a warm-up batch through each, and the
//! per-notification averages are compared.
#![allow(unsafe_code, reason = "a counting GlobalAlloc is an unsafe trait impl")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use futures::StreamExt;
use pglisten::tokio_postgres::AsyncMessage;
use pglisten::{Event, Listener};
use pglisten_testkit::{RawConnection, admin, drive, raw};

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

struct Counting;

fn count() {
    // `try_with`: never panic inside the allocator, even during thread teardown.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call is forwarded to the system allocator unchanged; counting touches
// only a const-initialised thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Notifications measured per receiver.
const K: usize = 20_000;
/// Notifications sent through each receiver before counting.
const WARM_UP: usize = 2_000;
/// Allowed per-notification excess beyond "raw + 1": the constant overhead (buffer growth
/// while batches reach their steady size) spread over K notifications, with room to spare
/// (0.05 × 20 000 = 1 000 allocations).
const TOLERANCE: f64 = 0.05;

/// Queues notifications from its own thread (so its allocations are not counted).
struct Producer {
    jobs: std::sync::mpsc::Sender<(String, usize, std::sync::mpsc::Sender<()>)>,
}

impl Producer {
    fn start(url: String) -> Producer {
        let (jobs, rx) = std::sync::mpsc::channel::<(String, usize, std::sync::mpsc::Sender<()>)>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let client = admin(&url).await;
                while let Ok((channel, n, done)) = rx.recv() {
                    let mut next = 1i32;
                    let n = i32::try_from(n).expect("n");
                    while next <= n {
                        let last = (next + 9_999).min(n);
                        client
                            .query_one(
                                "SELECT count(pg_notify($1, 'p:' || lpad(g::text, 62, '0'))) \
                                 FROM generate_series($2::int, $3::int) AS g",
                                &[&channel, &next, &last],
                            )
                            .await
                            .expect("produce");
                        next = last + 1;
                    }
                    let _ = done.send(());
                }
            });
        });
        Producer { jobs }
    }

    /// Queues `n` notifications on `channel` and returns once they are committed.
    fn produce(&self, channel: &str, n: usize) {
        let (done, wait) = std::sync::mpsc::channel();
        self.jobs
            .send((channel.to_owned(), n, done))
            .expect("producer thread");
        wait.recv().expect("producer finished");
    }
}

async fn raw_drain(connection: &mut RawConnection, n: usize) {
    let mut got = 0;
    while got < n {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(note))) => {
                std::hint::black_box(note.payload().len());
                got += 1;
            }
            Some(Ok(_)) => {}
            other => panic!("raw connection ended: {other:?}"),
        }
    }
}

async fn pglisten_drain(sub: &mut pglisten::Subscription, n: usize) {
    let mut got = 0;
    while got < n {
        match sub.next().await.expect("subscription ended") {
            Event::Notification(note) => {
                std::hint::black_box(note.payload().len());
                got += 1;
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
}

#[test]
fn pglisten_allocates_at_most_one_more_per_notification_than_the_driver() {
    let url = pglisten_testkit::shared().url();
    let producer = Producer::start(url.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let tag = std::process::id();
    let raw_channel = format!("alloc_raw_{tag}");
    let pg_channel = format!("alloc_pglisten_{tag}");

    let (client, mut connection) = rt.block_on(async {
        let (client, mut connection) = raw(&url).await;
        let listen = format!("LISTEN \"{raw_channel}\"");
        drive(&mut connection, client.batch_execute(&listen))
            .await
            .expect("query");
        (client, connection)
    });
    let (listener, mut sub) = rt.block_on(async {
        let listener = Listener::builder(&url)
            .queue_capacity(2 * K)
            .connect()
            .await
            .expect("connect");
        let sub = listener
            .subscribe([pg_channel.as_str()])
            .await
            .expect("subscribe");
        (listener, sub)
    });

    // Warm-up: buffers reach their working size.
    producer.produce(&raw_channel, WARM_UP);
    rt.block_on(raw_drain(&mut connection, WARM_UP));
    producer.produce(&pg_channel, WARM_UP);
    rt.block_on(pglisten_drain(&mut sub, WARM_UP));

    // While the producer works, this thread is blocked: nothing of ours runs, and the
    // server buffers what it sends. Everything received is counted in the drain.
    producer.produce(&raw_channel, K);
    let before = allocations();
    rt.block_on(raw_drain(&mut connection, K));
    let raw = allocations() - before;

    producer.produce(&pg_channel, K);
    let before = allocations();
    rt.block_on(pglisten_drain(&mut sub, K));
    let pg = allocations() - before;

    let raw_per = raw as f64 / K as f64;
    let pg_per = pg as f64 / K as f64;
    println!(
        "allocations per notification over {K}: tokio-postgres {raw_per:.3}, pglisten \
         {pg_per:.3} (difference {:.3}; allowed 1 + {TOLERANCE})",
        pg_per - raw_per
    );
    assert!(
        raw_per >= 1.0,
        "the driver should allocate per notification; is counting working? ({raw_per})"
    );
    assert!(
        pg_per <= raw_per + 1.0 + TOLERANCE,
        "pglisten allocates {pg_per:.3} per notification, the driver alone {raw_per:.3}: more \
         than one extra allocation per notification"
    );

    rt.block_on(async move {
        drop(sub);
        listener.shutdown().await;
        drop(client);
        while std::future::poll_fn(|cx| connection.poll_message(cx))
            .await
            .is_some()
        {}
    });
}
