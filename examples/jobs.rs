//! A job queue in a table: workers woken by NOTIFY, claiming jobs with
//! `FOR UPDATE SKIP LOCKED`, and scanning for jobs whose notification they missed.
//!
//! ```text
//! cargo run --example jobs                      # starts its own throwaway PostgreSQL
//! DATABASE_URL=postgres://... cargo run --example jobs
//! ```
//!
//! A notification is only a wake-up call; the table is the truth. Each worker
//! subscribes first, then claims every job already waiting (the start-up scan), then
//! claims again on every notification and after every gap (`Reconnected`, `Lagged`),
//! when notifications may have been lost. `SKIP LOCKED` lets the workers claim side by
//! side without waiting for each other or taking a job twice.
//!
//! The example queues jobs before any worker runs (only the start-up scans can find
//! them), while the workers listen, and right after forcing every worker to reconnect
//! (their notifications may be lost: then only the scans after the gap find them), and
//! once more when every worker is back. It exits 1 unless every job was done exactly
//! once, the early ones by start-up scans. It works in a schema of its own, dropped at
//! the end.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::time::Duration;

use futures::StreamExt;
use pglisten::tokio_postgres::Client;
use pglisten::{Event, Listener, Subscription};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

mod support;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

const WORKERS: i32 = 3;

/// The queue, and a trigger that announces each new job on the channel named after the
/// table (`<schema>.jobs`).
const SETUP: &str = "
    CREATE TABLE jobs (
        id bigserial PRIMARY KEY,
        task text NOT NULL,
        claimed_by integer,
        claimed_at timestamptz
    );

    -- Lets the claim find waiting jobs without reading the ones already done.
    CREATE INDEX jobs_waiting ON jobs (id) WHERE claimed_by IS NULL;

    CREATE FUNCTION notify_new_job() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify(TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, NEW.id::text);
        RETURN NULL;
    END $$;

    CREATE TRIGGER job_added AFTER INSERT ON jobs
        FOR EACH ROW EXECUTE FUNCTION notify_new_job();
";

/// Takes the oldest job nobody has, or none. Rows locked by another worker's claim are
/// skipped rather than waited for.
const CLAIM: &str = "
    UPDATE jobs SET claimed_by = $1, claimed_at = now()
    WHERE id = (
        SELECT id FROM jobs WHERE claimed_by IS NULL
        ORDER BY id
        FOR UPDATE SKIP LOCKED
        LIMIT 1
    )
    RETURNING id, task";

/// Why a worker went looking for jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Reason {
    StartUpScan,
    Notification,
    GapScan,
}

/// A job done, as reported by a worker.
#[derive(Debug)]
struct Done {
    job: i64,
    worker: i32,
    reason: Reason,
}

/// What the workers tell the main task.
#[derive(Debug)]
enum Report {
    Done(Done),
    /// The worker was told about a gap, and has scanned for jobs since.
    BackFromGap {
        worker: i32,
    },
}

#[tokio::main]
async fn main() {
    if let Err(problem) = run().await {
        eprintln!("jobs example failed: {problem}");
        std::process::exit(1);
    }
}

async fn run() -> Result<()> {
    // DATABASE_URL, or a throwaway server that lives until the end of `run`.
    let database = support::database().await?;
    let url = database.url().to_owned();

    let db = connect_client(&url).await?;
    // A schema of our own, named after our session, so that runs sharing a database
    // do not collide.
    let pid: i32 = db.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
    let schema = format!("pglisten_jobs_{pid}");
    db.batch_execute(&format!(
        "CREATE SCHEMA {schema}; SET search_path TO {schema}; {SETUP}"
    ))
    .await?;

    let outcome = demonstrate(&url, &db, &schema).await;
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await?;
    outcome
}

async fn demonstrate(url: &str, db: &Client, schema: &str) -> Result<()> {
    let mut reports = Reports::default();

    println!("queueing 10 jobs before any worker runs");
    let early = add_jobs(db, 10).await?;
    let (report_sender, mut inbox) = mpsc::unbounded_channel();
    let mut workers = Vec::new();
    for worker in 1..=WORKERS {
        workers.push(start_worker(url, schema, worker, report_sender.clone()).await?);
    }
    drop(report_sender);
    println!("{WORKERS} workers started");
    reports.wait_for(&mut inbox, 10, 0).await?;

    println!("queueing 20 jobs while the workers listen");
    add_jobs(db, 20).await?;
    reports.wait_for(&mut inbox, 30, 0).await?;

    println!("forcing every worker to reconnect, and queueing 10 jobs meanwhile");
    for (listener, _) in &workers {
        listener.reconnect().await?;
    }
    add_jobs(db, 10).await?;
    reports.wait_for(&mut inbox, 40, WORKERS as usize).await?;

    println!("every worker is back; queueing 10 more jobs");
    add_jobs(db, 10).await?;
    reports.wait_for(&mut inbox, 50, WORKERS as usize).await?;

    // Shutting a listener down ends its subscription's stream, and so its worker.
    for (listener, worker) in workers {
        listener.shutdown().await;
        worker.await??;
    }
    while let Ok(late) = inbox.try_recv() {
        reports.add(late); // a job done twice would show up here
    }
    reports.print_summary();
    reports.check(db, &early).await
}

/// Starts a worker with a listener and a database connection of its own.
async fn start_worker(
    url: &str,
    schema: &str,
    worker: i32,
    reports: mpsc::UnboundedSender<Report>,
) -> Result<(Listener, JoinHandle<Result<()>>)> {
    let listener = Listener::connect(url).await?;
    let events = listener.subscribe([format!("{schema}.jobs")]).await?;
    let db = connect_client(url).await?;
    db.batch_execute(&format!("SET search_path TO {schema}"))
        .await?;
    let task = tokio::spawn(work(worker, events, db, reports));
    Ok((listener, task))
}

/// A worker's life: subscribed already, it scans for waiting jobs, then claims jobs
/// whenever it is woken, until its listener shuts down.
async fn work(
    worker: i32,
    mut events: Subscription,
    db: Client,
    reports: mpsc::UnboundedSender<Report>,
) -> Result<()> {
    claim_all(worker, &db, Reason::StartUpScan, &reports).await?;
    while let Some(event) = events.next().await {
        match event {
            Event::Notification(_) => {
                claim_all(worker, &db, Reason::Notification, &reports).await?;
            }
            Event::Reconnected(_) | Event::Lagged(_) => {
                claim_all(worker, &db, Reason::GapScan, &reports).await?;
                let _ = reports.send(Report::BackFromGap { worker });
            }
            Event::Error(e) => println!("  worker {worker}: {e}"),
            _ => {}
        }
    }
    Ok(())
}

/// Claims and does jobs until none is left.
async fn claim_all(
    worker: i32,
    db: &Client,
    reason: Reason,
    reports: &mpsc::UnboundedSender<Report>,
) -> Result<()> {
    while let Some(row) = db.query_opt(CLAIM, &[&worker]).await? {
        let job: i64 = row.get("id");
        let task: String = row.get("task");
        do_the_work(&task).await;
        let _ = reports.send(Report::Done(Done {
            job,
            worker,
            reason,
        }));
    }
    Ok(())
}

async fn do_the_work(_task: &str) {
    tokio::time::sleep(Duration::from_millis(2)).await; // stands in for the real work
}

/// Queues `count` jobs, one transaction each, and returns their ids.
async fn add_jobs(db: &Client, count: usize) -> Result<Vec<i64>> {
    let mut ids = Vec::new();
    for _ in 0..count {
        let row = db
            .query_one(
                "INSERT INTO jobs (task) VALUES ('send an email') RETURNING id",
                &[],
            )
            .await?;
        ids.push(row.get(0));
    }
    Ok(ids)
}

/// What the workers reported.
#[derive(Default)]
struct Reports {
    done: Vec<Done>,
    jobs_done: BTreeSet<i64>,
    /// Workers back from a gap.
    workers_back: BTreeSet<i32>,
}

impl Reports {
    fn add(&mut self, report: Report) {
        match report {
            Report::Done(done) => {
                self.jobs_done.insert(done.job);
                self.done.push(done);
            }
            Report::BackFromGap { worker } => {
                self.workers_back.insert(worker);
            }
        }
    }

    /// Collects reports until `jobs` different jobs are done and `workers_back`
    /// workers came back from a gap, in all.
    async fn wait_for(
        &mut self,
        inbox: &mut mpsc::UnboundedReceiver<Report>,
        jobs: usize,
        workers_back: usize,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.jobs_done.len() < jobs || self.workers_back.len() < workers_back {
            match tokio::time::timeout_at(deadline, inbox.recv()).await {
                Ok(Some(report)) => self.add(report),
                Ok(None) => return Err("every worker stopped".into()),
                Err(_) => {
                    return Err(format!(
                        "after 30 s, {} of {jobs} jobs done, {} of {workers_back} workers back",
                        self.jobs_done.len(),
                        self.workers_back.len()
                    )
                    .into());
                }
            }
        }
        Ok(())
    }

    fn print_summary(&self) {
        let mut counts: BTreeMap<(i32, Reason), usize> = BTreeMap::new();
        for done in &self.done {
            *counts.entry((done.worker, done.reason)).or_default() += 1;
        }
        // Which path finds a job depends on timing: a worker still busy with one
        // notification's jobs wakes again for the next, and may find later jobs then.
        println!("\njobs done, by worker and by what made it look for them:");
        for worker in 1..=WORKERS {
            let count = |reason| counts.get(&(worker, reason)).copied().unwrap_or(0);
            println!(
                "  worker {worker}: start-up scan {:2}, notification {:2}, gap scan {:2}",
                count(Reason::StartUpScan),
                count(Reason::Notification),
                count(Reason::GapScan),
            );
        }
    }

    /// Every job in the table was done, exactly once; the `early` ones (queued while
    /// nobody listened) by start-up scans.
    async fn check(&self, db: &Client, early: &[i64]) -> Result<()> {
        let mut times_done: BTreeMap<i64, usize> = BTreeMap::new();
        for done in &self.done {
            *times_done.entry(done.job).or_default() += 1;
        }
        let early_done_late = self
            .done
            .iter()
            .filter(|done| early.contains(&done.job) && done.reason != Reason::StartUpScan);
        if early_done_late.count() != 0 {
            let problem =
                "jobs queued before the workers started were missed by the start-up scans";
            return Err(problem.into());
        }
        let twice: Vec<_> = times_done.iter().filter(|(_, times)| **times > 1).collect();
        if !twice.is_empty() {
            return Err(format!("jobs done more than once (job, times): {twice:?}").into());
        }
        let row = db
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE claimed_by IS NULL) FROM jobs",
                &[],
            )
            .await?;
        let (total, waiting): (i64, i64) = (row.get(0), row.get(1));
        if waiting != 0 || times_done.len() as i64 != total {
            return Err(format!(
                "{} jobs done of {total}, {waiting} still waiting in the queue",
                times_done.len()
            )
            .into());
        }
        println!("\nAll good: {total} jobs, each done exactly once.");
        Ok(())
    }
}

/// An ordinary tokio-postgres client (your application has its own).
async fn connect_client(url: &str) -> std::result::Result<Client, pglisten::tokio_postgres::Error> {
    let (client, connection) =
        pglisten::tokio_postgres::connect(url, pglisten::tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}
