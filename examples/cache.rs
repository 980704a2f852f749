//! An in-memory copy of a table, kept in sync by the notifications of a trigger.
//!
//! ```text
//! cargo run --example cache                      # starts its own throwaway PostgreSQL
//! DATABASE_URL=postgres://... cargo run --example cache
//! ```
//!
//! The pattern: a trigger sends the id of every changed row; the cache subscribes
//! first, loads the table once `subscribe` has returned (so no change falls between the
//! two), then re-reads each row it is told about. A gap (`Reconnected` or `Lagged`)
//! means notifications were lost, so the cache reloads the whole table.
//!
//! To show that this is enough, the example changes rows, forces a reconnect with
//! `Listener::reconnect`, changes rows while the listener is away (those notifications
//! are lost), changes more once it is back, and checks that the cache equals
//! `SELECT * FROM items`. It works in a schema of its own, dropped at the end, and
//! exits 1 if the cache ever disagrees with the table.

use std::collections::BTreeMap;
use std::error::Error;
use std::time::Duration;

use futures::StreamExt;
use pglisten::tokio_postgres::Client;
use pglisten::{Event, Listener, Subscription};

mod support;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

/// The table, and a trigger that sends the id of every inserted, updated or deleted row
/// on the channel named after the table (`<schema>.items`).
const SETUP: &str = "
    CREATE TABLE items (id integer PRIMARY KEY, value text NOT NULL);

    CREATE FUNCTION notify_item_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            PERFORM pg_notify(TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, OLD.id::text);
        ELSE
            PERFORM pg_notify(TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, NEW.id::text);
        END IF;
        RETURN NULL;
    END $$;

    CREATE TRIGGER items_changed AFTER INSERT OR UPDATE OR DELETE ON items
        FOR EACH ROW EXECUTE FUNCTION notify_item_change();

    INSERT INTO items SELECT id, 'initial ' || id FROM generate_series(1, 5) AS id;
";

#[tokio::main]
async fn main() {
    if let Err(problem) = run().await {
        eprintln!("cache example failed: {problem}");
        std::process::exit(1);
    }
}

async fn run() -> Result<()> {
    // DATABASE_URL, or a throwaway server that lives until the end of `run`.
    let database = support::database().await?;
    let url = database.url().to_owned();

    let db = connect_client(&url).await?;
    // A schema of our own, named after our session, so that runs sharing a database
    // do not collide. The session then finds `items` there.
    let pid: i32 = db.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
    let schema = format!("pglisten_cache_{pid}");
    db.batch_execute(&format!(
        "CREATE SCHEMA {schema}; SET search_path TO {schema}; {SETUP}"
    ))
    .await?;

    let outcome = demonstrate(&url, &db, &format!("{schema}.items")).await;
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await?;
    outcome
}

async fn demonstrate(url: &str, db: &Client, channel: &str) -> Result<()> {
    let listener = Listener::connect(url).await?;
    let mut events = listener.subscribe([channel]).await?;
    // Load only now that LISTEN is active: a change committed from here on is notified.
    let mut cache = Cache::default();
    cache.reload(db).await?;
    println!("loaded {} rows; listening on {channel:?}", cache.rows.len());

    println!("\n1. changing rows while connected");
    change_rows(db, 1, 12).await?;
    wait_until_in_sync(&mut cache, db, &mut events).await?;

    println!("\n2. forcing a reconnect, and changing rows while the listener is away");
    let connection_lost = |event: &Event| matches!(event, Event::Error(_));
    let back = |event: &Event| matches!(event, Event::Reconnected(_));
    listener.reconnect().await?;
    feed_until(&mut cache, db, &mut events, connection_lost).await?;
    change_rows(db, 2, 8).await?; // lost, unless the listener is back already
    feed_until(&mut cache, db, &mut events, back).await?;
    change_rows(db, 3, 8).await?;
    wait_until_in_sync(&mut cache, db, &mut events).await?;

    listener.shutdown().await;
    if cache.reloads < 2 {
        return Err("the cache should have reloaded after the reconnect".into());
    }
    println!(
        "\nAll good: {} notifications applied, {} reloads, {} rows equal to the table.",
        cache.applied,
        cache.reloads,
        cache.rows.len()
    );
    Ok(())
}

/// An in-memory copy of the `items` table.
#[derive(Default)]
struct Cache {
    rows: BTreeMap<i32, String>,
    /// Counters, to show what happened.
    applied: u32,
    reloads: u32,
}

impl Cache {
    async fn handle(&mut self, db: &Client, event: Event) -> Result<()> {
        match event {
            Event::Notification(n) => self.apply(db, n.payload()).await?,
            Event::Reconnected(report) => {
                println!(
                    "   reconnected after {:?}: changes may have been missed, reloading",
                    report.downtime()
                );
                self.reload(db).await?;
            }
            Event::Lagged(dropped) => {
                println!("   {dropped} notifications dropped: reloading");
                self.reload(db).await?;
            }
            Event::Error(e) => println!("   listener: {e}"),
            _ => {}
        }
        Ok(())
    }

    /// A notification's payload is the id of a changed row: read that row again.
    async fn apply(&mut self, db: &Client, payload: &str) -> Result<()> {
        let id: i32 = payload.parse()?;
        let row = db
            .query_opt("SELECT value FROM items WHERE id = $1", &[&id])
            .await?;
        match row {
            Some(row) => self.rows.insert(id, row.get(0)),
            None => self.rows.remove(&id), // deleted
        };
        self.applied += 1;
        Ok(())
    }

    async fn reload(&mut self, db: &Client) -> Result<()> {
        self.rows = read_table(db).await?;
        self.reloads += 1;
        Ok(())
    }
}

async fn read_table(db: &Client) -> Result<BTreeMap<i32, String>> {
    let rows = db.query("SELECT id, value FROM items", &[]).await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Inserts, updates and deletes `count` rows among ids 1 to 10, each change in its own
/// transaction, as other sessions of an application would.
async fn change_rows(db: &Client, round: i32, count: i32) -> Result<()> {
    for i in 0..count {
        let id = (round * 7 + i * 3) % 10 + 1;
        if (round + i) % 4 == 0 {
            db.execute("DELETE FROM items WHERE id = $1", &[&id])
                .await?;
        } else {
            let value = format!("round {round}, change {i}");
            db.execute(
                "INSERT INTO items (id, value) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET value = EXCLUDED.value",
                &[&id, &value],
            )
            .await?;
        }
    }
    println!("   changed {count} rows");
    Ok(())
}

/// Feeds events to the cache until one matches `wanted` (which is fed too).
async fn feed_until(
    cache: &mut Cache,
    db: &Client,
    events: &mut Subscription,
    wanted: impl Fn(&Event) -> bool,
) -> Result<()> {
    loop {
        let event = next_event(events).await?;
        let found = wanted(&event);
        cache.handle(db, event).await?;
        if found {
            return Ok(());
        }
    }
}

/// Feeds events to the cache until it equals the table. Fails if the events stop
/// coming while it still differs: the cache missed something for good.
async fn wait_until_in_sync(
    cache: &mut Cache,
    db: &Client,
    events: &mut Subscription,
) -> Result<()> {
    loop {
        let table = read_table(db).await?;
        if cache.rows == table {
            println!("   cache equals the table ({} rows)", table.len());
            return Ok(());
        }
        match tokio::time::timeout(Duration::from_secs(3), events.next()).await {
            Ok(Some(event)) => cache.handle(db, event).await?,
            Ok(None) => return Err("the listener stopped".into()),
            Err(_) => {
                return Err(format!(
                    "the cache differs from the table and no notification came for 3 s\n\
                     cache: {:?}\ntable: {table:?}",
                    cache.rows
                )
                .into());
            }
        }
    }
}

async fn next_event(events: &mut Subscription) -> Result<Event> {
    match tokio::time::timeout(Duration::from_secs(30), events.next()).await {
        Ok(Some(event)) => Ok(event),
        Ok(None) => Err("the listener stopped".into()),
        Err(_) => Err("no event within 30 s".into()),
    }
}

/// An ordinary tokio-postgres client (your application has its own).
async fn connect_client(url: &str) -> std::result::Result<Client, pglisten::tokio_postgres::Error> {
    let (client, connection) =
        pglisten::tokio_postgres::connect(url, pglisten::tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}
