//! pglisten in one screen: subscribe, receive notifications, lose the connection on
//! purpose, and see the gap announced with `Reconnected` before delivery resumes.
//!
//! ```text
//! cargo run --example demo                      # starts its own throwaway PostgreSQL
//! DATABASE_URL=postgres://... cargo run --example demo
//! ```
//!
//! Exits 0 when every expected event was seen, 1 otherwise.

use std::time::Duration;

use futures::StreamExt;
use pglisten::{Backoff, Event, Listener, Subscription};

mod support;

#[tokio::main]
async fn main() {
    if let Err(problem) = run().await {
        eprintln!("demo failed: {problem}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // DATABASE_URL, or a throwaway server that lives until the end of `run`.
    let database = support::database().await?;
    let url = database.url().to_owned();

    let listener = Listener::builder(&url)
        .backoff(Backoff::new().initial(Duration::from_millis(100)))
        .connect()
        .await?;
    let mut events = listener.subscribe(["demo"]).await?;
    println!(
        "subscribed to \"demo\" (LISTEN is active; backend pid {:?})",
        listener.backend_pid()
    );

    for i in 1..=3 {
        listener.notify("demo", &format!("hello #{i}")).await?;
    }
    for i in 1..=3 {
        expect_notification(&mut events, &format!("hello #{i}")).await?;
    }

    // Kill our own connection from another session, as a failover or a DBA would.
    let pid = listener.backend_pid().ok_or("not connected")?;
    // An ordinary tokio-postgres client, as your application has.
    let (admin, connection) =
        pglisten::tokio_postgres::connect(&url, pglisten::tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    println!("\nterminating the listener's backend {pid} to show recovery...");
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await?;

    loop {
        match next(&mut events).await? {
            Event::Error(e) => println!("  error:        {e}"),
            Event::Reconnected(report) => {
                println!(
                    "  reconnected:  LISTEN active again after {:?} and {} attempt(s): reload state now",
                    report.downtime(),
                    report.attempts()
                );
                break;
            }
            Event::Notification(n) => {
                return Err(format!("notification during the gap: {n:?}").into());
            }
            other => println!("  {other:?}"),
        }
    }

    pglisten::notify(&admin, "demo", "after the gap").await?;
    expect_notification(&mut events, "after the gap").await?;

    listener.shutdown().await;
    match next(&mut events).await {
        Err(_) => println!("\nshut down: the stream ended. All good."),
        Ok(extra) => return Err(format!("stream should have ended, got {extra:?}").into()),
    }
    Ok(())
}

async fn next(events: &mut Subscription) -> Result<Event, String> {
    match tokio::time::timeout(Duration::from_secs(30), events.next()).await {
        Ok(Some(event)) => Ok(event),
        Ok(None) => Err("the stream ended".into()),
        Err(_) => Err("no event within 30 s".into()),
    }
}

async fn expect_notification(events: &mut Subscription, payload: &str) -> Result<(), String> {
    match next(events).await? {
        Event::Notification(n) if n.payload() == payload => {
            println!(
                "  notification: channel={} payload={:?} from pid {}",
                n.channel(),
                n.payload(),
                n.process_id()
            );
            Ok(())
        }
        other => Err(format!("expected notification {payload:?}, got {other:?}")),
    }
}
