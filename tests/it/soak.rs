//! The documented backlog pattern under fire.
//!
//! A `jobs` table whose insert trigger NOTIFYs the job's id; a producer inserting jobs
//! all along (single rows and bursts); a consumer that processes a job when notified and,
//! on every `Reconnected` or `Lagged`, scans the table for unprocessed jobs. Meanwhile
//! the listener goes through every kind of fault, again and again: backend terminated,
//! connection cut (RST), path stalled (found by the heartbeat), server restarted with
//! `-m fast` and `-m immediate`, `Listener::reconnect`; and its queue of 4 makes every
//! burst overflow. At the end, every job must have been processed, by the consumer's own
//! logic.
//!
//! `PGLISTEN_SOAK_SECS` sets how long faults are injected (default 40 s, about a minute
//! in all); e.g. `PGLISTEN_SOAK_SECS=600 cargo test --test it soak:: -- --nocapture`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use futures::StreamExt;
use pglisten::tokio_postgres::{Client, types::ToSql};
use pglisten::{Backoff, Event, Listener, Subscription};
use pglisten_testkit::{Cluster, FaultProxy, StopMode};

/// Fault-injection time without `PGLISTEN_SOAK_SECS`.
const DEFAULT_SOAK_SECS: u64 = 40;
/// How long, after the faults and the producer stopped, the consumer may take to finish.
const DRAIN: Duration = Duration::from_secs(60);

const SCHEMA: &str = "
CREATE TABLE jobs (
    id bigserial PRIMARY KEY,
    payload text NOT NULL,
    done boolean NOT NULL DEFAULT false,
    done_count integer NOT NULL DEFAULT 0
);
CREATE INDEX jobs_pending ON jobs (id) WHERE NOT done;
CREATE FUNCTION jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jobs', NEW.id::text);
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_notify AFTER INSERT ON jobs FOR EACH ROW EXECUTE FUNCTION jobs_notify();
";

/// Process one job (claiming it is idempotent; `done_count` counts duplicates).
const PROCESS_ONE: &str = "UPDATE jobs SET done = true, done_count = done_count + 1 WHERE id = $1";
/// The backlog scan: process every job not done yet.
const PROCESS_BACKLOG: &str =
    "UPDATE jobs SET done = true, done_count = done_count + 1 WHERE NOT done";

/// A connection that comes back: every statement is retried, on a new connection if
/// need be, until it succeeds (the server may be restarting), for at most [`WAIT`].
struct Db {
    url: String,
    client: Option<Client>,
}

impl Db {
    fn new(url: &str) -> Db {
        Db {
            url: url.to_owned(),
            client: None,
        }
    }

    async fn client(&mut self) -> Option<&Client> {
        if self.client.is_none() {
            let connecting = pglisten_testkit::try_admin(&self.url);
            if let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(5), connecting).await {
                self.client = Some(client);
            }
        }
        self.client.as_ref()
    }

    /// Runs `sql` once, successfully; `None` if the outcome is unknown (the connection
    /// failed under it), after which the caller decides whether to retry.
    async fn try_execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Option<u64> {
        let client = self.client().await?;
        match client.execute(sql, params).await {
            Ok(n) => Some(n),
            Err(_) => {
                self.client = None;
                None
            }
        }
    }

    /// Runs `sql` until it succeeds. Used for idempotent statements only.
    async fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(n) = self.try_execute(sql, params).await {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "the database stayed unreachable for {WAIT:?} ({sql})"
            );
            // Retry pace while the server is away.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn query_i64(&mut self, sql: &str) -> i64 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(client) = self.client().await {
                match client.query_one(sql, &[]).await {
                    Ok(row) => return row.get(0),
                    Err(_) => self.client = None,
                }
            }
            assert!(
                Instant::now() < deadline,
                "unreachable for {WAIT:?} ({sql})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What the consumer saw.
#[derive(Default)]
struct Seen {
    notifications: AtomicU64,
    /// Notifications whose job did not exist: must never happen.
    phantoms: AtomicU64,
    reconnected: AtomicU64,
    lagged_events: AtomicU64,
    lagged_total: AtomicU64,
    scans: AtomicU64,
    scanned_jobs: AtomicU64,
    errors: AtomicU64,
    errors_by_kind: Mutex<BTreeMap<String, u64>>,
}

impl Seen {
    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::SeqCst)
    }

    fn bump(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::SeqCst);
    }
}

/// The documented pattern: process what is notified; on any gap, scan for the backlog.
async fn consume(mut sub: Subscription, url: String, seen: Arc<Seen>) {
    let mut db = Db::new(&url);
    while let Some(event) = sub.next().await {
        match event {
            Event::Notification(n) => {
                let id: i64 = n.payload().parse().expect("job id");
                if db.execute(PROCESS_ONE, &[&id]).await == 0 {
                    Seen::bump(&seen.phantoms, 1);
                }
                Seen::bump(&seen.notifications, 1);
            }
            Event::Reconnected(_) | Event::Lagged(_) => {
                if let Event::Lagged(n) = event {
                    Seen::bump(&seen.lagged_events, 1);
                    Seen::bump(&seen.lagged_total, n);
                } else {
                    Seen::bump(&seen.reconnected, 1);
                }
                let found = db.execute(PROCESS_BACKLOG, &[]).await;
                Seen::bump(&seen.scans, 1);
                Seen::bump(&seen.scanned_jobs, found);
            }
            Event::Error(e) => {
                Seen::bump(&seen.errors, 1);
                *seen
                    .errors_by_kind
                    .lock()
                    .unwrap()
                    .entry(format!("{:?}", e.kind()))
                    .or_default() += 1;
            }
            _ => {}
        }
    }
}

/// Inserts jobs until stopped, surviving restarts; returns the ids it saw committed.
async fn produce(url: String, stop: Arc<AtomicBool>, bursts: Arc<AtomicU64>) -> Vec<i64> {
    let mut db = Db::new(&url);
    let mut committed = Vec::new();
    let mut round = 0u64;
    while !stop.load(Ordering::SeqCst) {
        round += 1;
        // Every 25th insert is a burst of 20 jobs in one transaction: 20 notifications
        // at once, more than the listener's queue of 4 holds.
        let size: i64 = if round.is_multiple_of(25) { 20 } else { 1 };
        let inserted = match db.client().await {
            Some(client) => client
                .query(
                    "INSERT INTO jobs (payload) \
                     SELECT 'job ' || g FROM generate_series(1, $1::bigint) g RETURNING id",
                    &[&size],
                )
                .await
                .ok(),
            None => None,
        };
        match inserted {
            Some(rows) => {
                committed.extend(rows.iter().map(|row| row.get::<_, i64>(0)));
                if size > 1 {
                    Seen::bump(&bursts, 1);
                }
            }
            // Committed or not, we cannot know: not counted (the final check covers every
            // row in the table anyway). Reconnect and go on.
            None => db.client = None,
        }
        // The production pace: a job every ~10 ms, plus the bursts.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    committed
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    TerminateBackend,
    ProxyCut,
    ProxyStall,
    RestartFast,
    RestartImmediate,
    ReconnectCall,
}

const FAULTS: [Fault; 6] = [
    Fault::TerminateBackend,
    Fault::ProxyCut,
    Fault::ProxyStall,
    Fault::RestartFast,
    Fault::RestartImmediate,
    Fault::ReconnectCall,
];

/// Waits until `counter` exceeds `before`, failing after [`WAIT`] with `what`.
async fn wait_past(counter: &AtomicU64, before: u64, what: &str) {
    let deadline = Instant::now() + WAIT;
    while Seen::get(counter) <= before {
        assert!(Instant::now() < deadline, "{what}: nothing within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Injects `fault` and waits until the consumer has seen the listener recover from it.
async fn inject(
    fault: Fault,
    cluster: &Arc<Cluster>,
    proxy: &FaultProxy,
    listener: &Listener,
    admin: &mut Db,
    seen: &Seen,
) {
    let reconnected = Seen::get(&seen.reconnected);
    match fault {
        Fault::TerminateBackend => {
            // Between faults the listener is connected, unless a heartbeat on this
            // busy machine was late and it is reconnecting right now.
            let deadline = Instant::now() + WAIT;
            let pid = loop {
                if let Some(pid) = listener.backend_pid() {
                    break pid;
                }
                assert!(Instant::now() < deadline, "not connected for {WAIT:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            admin
                .execute("SELECT pg_terminate_backend($1)", &[&pid])
                .await;
        }
        Fault::ProxyCut => proxy.cut(),
        Fault::ProxyStall => {
            let errors = Seen::get(&seen.errors);
            proxy.stall();
            // Held until the heartbeat finds out.
            wait_past(&seen.errors, errors, "stall detected").await;
            proxy.pass();
        }
        Fault::RestartFast | Fault::RestartImmediate => {
            let mode = if fault == Fault::RestartFast {
                StopMode::Fast
            } else {
                StopMode::Immediate
            };
            let c = cluster.clone();
            blocking(move || c.restart(mode)).await.expect("restart");
        }
        Fault::ReconnectCall => listener.reconnect().await.expect("reconnect"),
    }
    wait_past(
        &seen.reconnected,
        reconnected,
        &format!("Reconnected after {fault:?}"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_every_job_is_processed_through_repeated_faults() {
    let soak = Duration::from_secs(match std::env::var("PGLISTEN_SOAK_SECS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("PGLISTEN_SOAK_SECS must be a number of seconds: {v:?}")),
        Err(_) => DEFAULT_SOAK_SECS,
    });
    let started = Instant::now();
    // Committed jobs must survive `-m immediate`: commit synchronously.
    let cluster = Arc::new(
        blocking(|| {
            Cluster::builder()
                .setting("synchronous_commit", "on")
                .init_sql(SCHEMA)
                .start()
        })
        .await
        .expect("soak cluster"),
    );
    let (proxy, proxied_url) = proxy_to(&cluster).await;
    let direct_url = cluster.url();

    let listener = Listener::builder(&proxied_url)
        .queue_capacity(4)
        .heartbeat(Duration::from_millis(500), Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(2))
        .backoff(
            Backoff::new()
                .initial(Duration::from_millis(50))
                .max(Duration::from_secs(1)),
        )
        .connect()
        .await
        .unwrap();
    let seen = Arc::new(Seen::default());
    let sub = listener.subscribe(["jobs"]).await.unwrap();
    let mut consumer = tokio::spawn(consume(sub, direct_url.clone(), seen.clone()));
    let stop_producer = Arc::new(AtomicBool::new(false));
    let bursts = Arc::new(AtomicU64::new(0));
    let producer = tokio::spawn(produce(
        direct_url.clone(),
        stop_producer.clone(),
        bursts.clone(),
    ));

    // Faults, one after another, each followed by a stretch of normal operation; at
    // least one full round of every kind, then until the soak time is up.
    let mut admin = Db::new(&direct_url);
    let mut injected: BTreeMap<Fault, u64> = BTreeMap::new();
    let faults_from = Instant::now();
    for (i, fault) in FAULTS.iter().copied().cycle().enumerate() {
        if i >= FAULTS.len() && faults_from.elapsed() >= soak {
            break;
        }
        assert!(!consumer.is_finished(), "the consumer stopped early");
        inject(fault, &cluster, &proxy, &listener, &mut admin, &seen).await;
        *injected.entry(fault).or_default() += 1;
        // Normal operation between faults (part of the scenario, not a settle-sleep):
        // 0.5 to 1.5 s, varied.
        let calm = 500 + (i as u64 * 337) % 1000;
        tokio::time::sleep(Duration::from_millis(calm)).await;
    }
    let fault_time = faults_from.elapsed();

    proxy.pass();
    stop_producer.store(true, Ordering::SeqCst);
    let committed = producer.await.expect("producer");

    // The consumer must get every job done by itself (notifications and gap scans).
    let drain_from = Instant::now();
    let mut pending = -1;
    while drain_from.elapsed() < DRAIN {
        pending = admin
            .query_i64("SELECT count(*) FROM jobs WHERE NOT done")
            .await;
        if pending == 0 {
            break;
        }
        assert!(!consumer.is_finished(), "the consumer stopped early");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained_in = drain_from.elapsed();

    let rows = admin.query_i64("SELECT count(*) FROM jobs").await;
    let done = admin
        .query_i64("SELECT count(*) FROM jobs WHERE done")
        .await;
    let processings = admin
        .query_i64("SELECT coalesce(sum(done_count), 0) FROM jobs")
        .await;
    let duplicated_jobs = admin
        .query_i64("SELECT count(*) FROM jobs WHERE done_count > 1")
        .await;
    let client = admin.client().await.expect("admin connection");
    let missing: i64 = client
        .query_one(
            "SELECT count(*) FROM unnest($1::bigint[]) AS c(id) \
             WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = c.id)",
            &[&committed],
        )
        .await
        .expect("check committed jobs")
        .get(0);
    let stats = listener.stats();
    let summary = format!(
        "soak: {fault_time:.1?} of faults, {total:.1?} in all\n\
         \x20 jobs produced (commit confirmed): {produced}, rows in the table: {rows}, \
         bursts of 20: {bursts}\n\
         \x20 jobs processed: {done}, processings: {processings}, duplicates: {duplicates} \
         (on {duplicated_jobs} jobs), still pending: {pending} (drained in {drained_in:.1?})\n\
         \x20 faults injected: {injected:?}\n\
         \x20 gaps seen: {reconnected} Reconnected, {lagged_events} Lagged ({lagged_total} \
         notifications dropped); backlog scans: {scans} finding {scanned} jobs; \
         notifications processed: {notified}\n\
         \x20 errors seen: {errors:?}\n\
         \x20 listener stats: {stats:?}\n",
        total = started.elapsed(),
        produced = committed.len(),
        bursts = Seen::get(&bursts),
        duplicates = processings - done,
        reconnected = Seen::get(&seen.reconnected),
        lagged_events = Seen::get(&seen.lagged_events),
        lagged_total = Seen::get(&seen.lagged_total),
        scans = Seen::get(&seen.scans),
        scanned = Seen::get(&seen.scanned_jobs),
        notified = Seen::get(&seen.notifications),
        errors = seen.errors_by_kind.lock().unwrap(),
    );
    // Straight to stderr, so the summary shows even when the test harness captures
    // output.
    let _ = std::io::stderr().write_all(summary.as_bytes());

    assert_eq!(
        pending, 0,
        "jobs never processed within {DRAIN:?} after the faults stopped\n{summary}"
    );
    assert_eq!(missing, 0, "committed jobs vanished\n{summary}");
    assert_eq!(done, rows, "{summary}");
    assert!(committed.len() as i64 <= rows, "{summary}");
    assert_eq!(Seen::get(&seen.phantoms), 0, "{summary}");
    assert!(
        FAULTS
            .iter()
            .all(|f| injected.get(f).copied().unwrap_or(0) >= 1),
        "{summary}"
    );
    let connection_faults: u64 = injected.values().sum();
    assert!(
        Seen::get(&seen.reconnected) >= connection_faults,
        "every fault is announced as a gap\n{summary}"
    );
    assert!(Seen::get(&seen.lagged_events) >= 1, "{summary}");

    listener.shutdown().await;
    tokio::time::timeout(WAIT, &mut consumer)
        .await
        .expect("the consumer ends with the listener")
        .expect("consumer");
}
