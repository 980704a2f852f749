//! Exactly-once processing with a durable channel (the outbox pattern).
//!
//! ```text
//! cargo run --example outbox                      # starts its own throwaway PostgreSQL
//! DATABASE_URL=postgres://... cargo run --example outbox
//! ```
//!
//! A shop writes each order and publishes it on the durable channel `orders` in the
//! same transaction: the entry exists if and only if the order does. A billing consumer
//! adds each order's amount to a balance. To apply every order exactly once, across
//! crashes and restarts, it stores the position of the last entry it applied **in the
//! same transaction as the effect**, and resumes after that position. It commits before
//! waiting for the next entry: a consumer that kept its writing transaction open while
//! waiting would hold back every durable channel, its own included, for ever.
//!
//! The consumer here "crashes" at random points: between entries, and in the middle of
//! applying one (its transaction is then rolled back, effect and position together),
//! sometimes taking a new listener. At the end the example checks that the balance is
//! the sum of all orders and that each order was applied once, and exits 1 otherwise.
//! It works in a schema of its own (journal included), dropped at the end.

use std::error::Error;
use std::time::Duration;

use pglisten::durable::{Cursor, Journal, Position};
use pglisten::tokio_postgres::Client;
use pglisten::{Event, Listener};
use tokio_stream::StreamExt;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

const ORDERS: i64 = 300;
const CONSUMER: &str = "billing";

#[tokio::main]
async fn main() {
    if let Err(problem) = run().await {
        eprintln!("outbox example failed: {problem}");
        std::process::exit(1);
    }
}

async fn run() -> Result<()> {
    // DATABASE_URL, or a throwaway server that lives until the end of `run`.
    let database =
        tokio::task::spawn_blocking(pglisten_testkit::ExampleDatabase::from_env_or_start).await??;
    let url = database.url().to_owned();
    let db = pglisten_testkit::try_admin(&url).await?;
    let pid: i32 = db.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
    let schema = format!("pglisten_outbox_{pid}");
    let journal = Journal::new(&schema);
    journal.install(&db).await?;
    db.batch_execute(&format!(
        "CREATE TABLE {schema}.orders (id bigint PRIMARY KEY, amount bigint NOT NULL);
         CREATE TABLE {schema}.balance (total bigint NOT NULL);
         INSERT INTO {schema}.balance VALUES (0);
         CREATE TABLE {schema}.applied (order_id bigint PRIMARY KEY);
         CREATE TABLE {schema}.consumer_position (consumer text PRIMARY KEY, position text NOT NULL);"
    ))
    .await?;

    let outcome = demonstrate(&url, &journal).await;
    db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await?;
    outcome
}

async fn demonstrate(url: &str, journal: &Journal) -> Result<()> {
    let shop = tokio::spawn(place_orders(url.to_owned(), journal.clone()));
    let mut db = pglisten_testkit::try_admin(url).await?;
    let schema = journal.schema().to_owned();
    let mut listener = Listener::connect(url).await?;
    let mut random = XorShift(0x5eed_1234_abcd_0042);
    let (mut sessions, mut crashes_mid_entry) = (0, 0);
    loop {
        let mut applied: i64 = db
            .query_one(&format!("SELECT count(*) FROM {schema}.applied"), &[])
            .await?
            .get(0);
        if applied == ORDERS {
            break;
        }
        sessions += 1;
        if random.below(3) == 0 {
            // A restart of the whole process: a new listener.
            listener.shutdown().await;
            listener = Listener::connect(url).await?;
        }
        let from = stored_position(&db, &schema)
            .await?
            .map_or(Cursor::Beginning, Cursor::After);
        let mut entries = listener
            .subscribe_durable_in(journal, "orders", from)
            .await?;
        for _ in 0..1 + random.below(40) {
            let entry = match tokio::time::timeout(Duration::from_secs(10), entries.next()).await {
                Ok(Some(Event::Notification(entry))) => entry,
                Ok(Some(Event::Error(e))) => {
                    eprintln!("  durable trouble (it goes on): {e}");
                    continue;
                }
                Ok(Some(_)) => continue,
                Ok(None) => return Err("the durable stream ended".into()),
                Err(_) => return Err("no entry within 10 s".into()),
            };
            let position = entry.position().ok_or("a durable entry has a position")?;
            let (order, amount) = parse_order(entry.payload())?;
            // The effect and the position, in one transaction.
            let tx = db.transaction().await?;
            tx.execute(
                &format!("UPDATE {schema}.balance SET total = total + $1"),
                &[&amount],
            )
            .await?;
            tx.execute(
                &format!("INSERT INTO {schema}.applied VALUES ($1)"),
                &[&order],
            )
            .await?;
            tx.execute(
                &format!(
                    "INSERT INTO {schema}.consumer_position VALUES ($1, $2)
                     ON CONFLICT (consumer) DO UPDATE SET position = excluded.position"
                ),
                &[&CONSUMER, &position.to_string()],
            )
            .await?;
            if random.below(15) == 0 {
                // A crash before the commit: effect and position are rolled back together.
                crashes_mid_entry += 1;
                drop(tx);
                break;
            }
            tx.commit().await?;
            applied += 1;
            if applied == ORDERS {
                break;
            }
        }
        // A crash between entries: the subscription (and what it had queued) is gone.
        drop(entries);
    }
    shop.await??;
    listener.shutdown().await;

    let row = db
        .query_one(
            &format!(
                "SELECT (SELECT total FROM {schema}.balance),
                        (SELECT sum(amount) FROM {schema}.orders)::bigint,
                        (SELECT count(*) FROM {schema}.applied)"
            ),
            &[],
        )
        .await?;
    let (total, expected, applied): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    println!(
        "{ORDERS} orders, {sessions} consumer sessions ({crashes_mid_entry} crashed in the middle \
         of an entry): balance {total}, sum of orders {expected}, {applied} applied"
    );
    if total != expected || applied != ORDERS {
        return Err(
            format!("balance {total} != {expected} or {applied} != {ORDERS} applied").into(),
        );
    }
    println!("every order applied exactly once");
    Ok(())
}

/// The position the consumer stored with its last applied effect.
async fn stored_position(db: &Client, schema: &str) -> Result<Option<Position>> {
    let row = db
        .query_opt(
            &format!("SELECT position FROM {schema}.consumer_position WHERE consumer = $1"),
            &[&CONSUMER],
        )
        .await?;
    Ok(match row {
        Some(row) => Some(row.get::<_, &str>(0).parse()?),
        None => None,
    })
}

/// Writes each order and its entry in one transaction, a few at a time.
async fn place_orders(url: String, journal: Journal) -> Result<()> {
    let mut db = pglisten_testkit::try_admin(&url).await?;
    let schema = journal.schema().to_owned();
    for id in 1..=ORDERS {
        let amount = 10 + (id * 37) % 90;
        let tx = db.transaction().await?;
        tx.execute(
            &format!("INSERT INTO {schema}.orders VALUES ($1, $2)"),
            &[&id, &amount],
        )
        .await?;
        journal
            .publish(&tx, "orders", &format!("{id}:{amount}"))
            .await?;
        tx.commit().await?;
        if id % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(())
}

fn parse_order(payload: &str) -> Result<(i64, i64)> {
    let (id, amount) = payload
        .split_once(':')
        .ok_or("an order entry is id:amount")?;
    Ok((id.parse()?, amount.parse()?))
}

/// A small deterministic generator for the crash points.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
