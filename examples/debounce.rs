//! Stream combinators on a subscription: `filter_map` turns events into typed
//! invalidations, `chunks_timeout` batches a burst of them into one reload.
//!
//! ```text
//! cargo run --example debounce                      # starts its own throwaway PostgreSQL
//! DATABASE_URL=postgres://... cargo run --example debounce
//! ```
//!
//! A price list is kept in memory. A trigger sends the id of every product whose price
//! changes. Prices change in bursts (a sync job, a bulk edit), and reloading once per
//! change would query the database once per notification; instead, the invalidations
//! are collected until the burst has been quiet for a moment (`chunks_timeout`), and
//! each batch is one query. A gap (`Reconnected`, `Lagged`) becomes an invalidation
//! of everything.
//!
//! The example sends 5 bursts of 20 price changes and exits 1 unless the bursts caused
//! about one reload each (at least 5, at most 10, fewer than the 100 notifications) and
//! the price list ends equal to the table. It works in a schema of its own, dropped at
//! the end.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::pin::pin;
use std::time::Duration;

use pglisten::tokio_postgres::Client;
use pglisten::{Event, Listener};
use tokio_stream::StreamExt;

mod support;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

const BURSTS: usize = 5;
const CHANGES_PER_BURST: i32 = 20;
/// How long a batch stays open after its first invalidation: longer than a burst,
/// shorter than the pause between two.
const BATCH_WINDOW: Duration = Duration::from_millis(150);
const PAUSE_BETWEEN_BURSTS: Duration = Duration::from_millis(400);

/// The table, and a trigger that sends the id of every changed product on the channel
/// named after the table (`<schema>.products`).
const SETUP: &str = "
    CREATE TABLE products (id integer PRIMARY KEY, price integer NOT NULL);
    INSERT INTO products SELECT id, 100 FROM generate_series(1, 50) AS id;

    CREATE FUNCTION notify_product_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify(TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, NEW.id::text);
        RETURN NULL;
    END $$;

    CREATE TRIGGER product_changed AFTER UPDATE ON products
        FOR EACH ROW EXECUTE FUNCTION notify_product_change();
";

/// What the price list needs to hear from the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Invalidation {
    /// One product changed.
    Product(i32),
    /// Notifications may have been missed: anything may have changed.
    Everything,
}

type Prices = BTreeMap<i32, i32>;

#[tokio::main]
async fn main() {
    if let Err(problem) = run().await {
        eprintln!("debounce example failed: {problem}");
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
    let schema = format!("pglisten_debounce_{pid}");
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
    let listener = Listener::connect(url).await?;
    let events = listener.subscribe([format!("{schema}.products")]).await?;
    let mut prices = load_all(db).await?;
    println!("loaded {} prices", prices.len());

    let batches = events
        .filter_map(to_invalidation)
        .chunks_timeout(1000, BATCH_WINDOW);
    let mut batches = pin!(batches);

    let writer = tokio::spawn(change_prices_in_bursts(url.to_owned(), schema.to_owned()));

    let expected = BURSTS * CHANGES_PER_BURST as usize;
    let mut received = 0;
    let mut reloads = 0;
    while received < expected {
        let batch = tokio::time::timeout(Duration::from_secs(10), batches.next())
            .await
            .map_err(|_| format!("only {received} of {expected} invalidations after 10 s"))?
            .ok_or("the listener stopped")?;
        refresh(db, &mut prices, &batch).await?;
        received += batch.len();
        reloads += 1;
        println!("  batch of {:2} invalidations -> 1 reload", batch.len());
    }
    writer.await??;
    listener.shutdown().await;

    println!("{received} notifications, {reloads} reloads");
    let about_one_per_burst = (BURSTS..=2 * BURSTS).contains(&reloads);
    if !about_one_per_burst || reloads >= received {
        return Err(format!("expected about {BURSTS} reloads, got {reloads}").into());
    }
    if prices != load_all(db).await? {
        return Err("the price list differs from the table".into());
    }
    println!("All good: the price list equals the table.");
    Ok(())
}

/// The events that matter to the price list, typed; errors are only reported.
fn to_invalidation(event: Event) -> Option<Invalidation> {
    match event {
        Event::Notification(n) => match n.payload().parse() {
            Ok(id) => Some(Invalidation::Product(id)),
            Err(_) => {
                eprintln!("ignoring unexpected payload {:?}", n.payload());
                None
            }
        },
        event if event.is_gap() => Some(Invalidation::Everything),
        Event::Error(e) => {
            eprintln!("listener: {e}");
            None
        }
        _ => None,
    }
}

/// Brings the price list up to date after a batch of invalidations: one query.
async fn refresh(db: &Client, prices: &mut Prices, batch: &[Invalidation]) -> Result<()> {
    if batch.contains(&Invalidation::Everything) {
        *prices = load_all(db).await?;
        return Ok(());
    }
    let ids: BTreeSet<i32> = batch
        .iter()
        .filter_map(|invalidation| match invalidation {
            Invalidation::Product(id) => Some(*id),
            Invalidation::Everything => None,
        })
        .collect();
    let ids: Vec<i32> = ids.into_iter().collect();
    let rows = db
        .query("SELECT id, price FROM products WHERE id = ANY($1)", &[&ids])
        .await?;
    for row in rows {
        prices.insert(row.get(0), row.get(1));
    }
    Ok(())
}

async fn load_all(db: &Client) -> Result<Prices> {
    let rows = db.query("SELECT id, price FROM products", &[]).await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Another part of the application: changes prices in bursts of separate
/// transactions, with pauses in between.
async fn change_prices_in_bursts(url: String, schema: String) -> Result<()> {
    let db = connect_client(&url).await?;
    db.batch_execute(&format!("SET search_path TO {schema}"))
        .await?;
    for burst in 1..=BURSTS {
        if burst > 1 {
            tokio::time::sleep(PAUSE_BETWEEN_BURSTS).await;
        }
        for id in 1..=CHANGES_PER_BURST {
            db.execute(
                "UPDATE products SET price = price + 1 WHERE id = $1",
                &[&id],
            )
            .await?;
        }
        println!("burst {burst}: changed {CHANGES_PER_BURST} prices");
    }
    Ok(())
}

/// An ordinary tokio-postgres client (your application has its own).
async fn connect_client(url: &str) -> std::result::Result<Client, pglisten::tokio_postgres::Error> {
    let (client, connection) =
        pglisten::tokio_postgres::connect(url, pglisten::tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}
