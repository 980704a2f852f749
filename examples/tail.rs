//! `tail -f` for notifications: prints every notification on the given channels as one
//! JSON object per line, and reports gaps and errors on stderr.
//!
//! ```text
//! cargo run --example tail -- [--url URL] [--count N | --once] CHANNEL...
//!
//! cargo run --example tail -- --url postgres://app@localhost/app orders prices
//! {"time":"2025-01-01T12:00:00.123Z","channel":"orders","pid":4242,"payload":{"id":7}}
//! {"time":"2025-01-01T12:00:00.456Z","channel":"prices","pid":4243,"payload":"EUR 1.08"}
//! ```
//!
//! Payloads holding a JSON object or array are embedded as JSON; any other payload (a
//! plain id such as `42` included) is a JSON string, so a payload's type never depends
//! on what it happens to look like.
//!
//! The database is `--url`, else `DATABASE_URL`, else a throwaway PostgreSQL started
//! for the run (stderr then says how to send to it). Runs until Ctrl-C (exit 0), or
//! until `--count N` notifications were printed (`--once` means `--count 1`). With a
//! throwaway server and a count, it sends that many sample notifications itself, so
//! `cargo run --example tail -- --count 3 orders` shows some output and finishes.

use std::error::Error;
use std::io::Write;
use std::pin::pin;

use futures::StreamExt;
use pglisten::{Event, Listener, Notification, Subscription};
use serde::Serialize;
use serde_json::Value;

mod support;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

const USAGE: &str = "usage: tail [--url URL] [--count N | --once] CHANNEL...";

/// The command line, parsed.
struct Options {
    url: Option<String>,
    /// Stop after this many notifications; `None` follows until Ctrl-C.
    count: Option<u64>,
    channels: Vec<String>,
}

/// One line of output.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    channel: &'a str,
    /// The server process that sent the notification.
    pid: i32,
    payload: Value,
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|arg| arg == "--help" || arg == "-h") {
        println!("{USAGE}");
        return;
    }
    let options = match parse_args(args.into_iter()) {
        Ok(options) => options,
        Err(problem) => {
            eprintln!("tail: {problem}\n{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(problem) = run(options).await {
        eprintln!("tail: {problem}");
        std::process::exit(1);
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> std::result::Result<Options, String> {
    let mut options = Options {
        url: None,
        count: None,
        channels: Vec::new(),
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--url" => options.url = Some(args.next().ok_or("--url needs a value")?),
            "--once" => options.count = Some(1),
            "--count" | "-n" => {
                let value = args.next().ok_or("--count needs a value")?;
                let count = value
                    .parse()
                    .map_err(|_| format!("--count needs a number, not {value:?}"))?;
                options.count = Some(count);
            }
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            channel => options.channels.push(channel.to_owned()),
        }
    }
    if options.channels.is_empty() {
        return Err("name at least one channel".into());
    }
    Ok(options)
}

async fn run(options: Options) -> Result<()> {
    // Keep the throwaway server (if any) alive until the end of `run`.
    let (url, server) = match options.url.or_else(database_url_from_env) {
        Some(url) => (url, None),
        None => {
            eprintln!("tail: no --url and no DATABASE_URL: starting a throwaway PostgreSQL...");
            let database = support::throwaway().await?;
            (database.url().to_owned(), Some(database))
        }
    };

    let listener = Listener::connect(&url).await?;
    let mut events = listener.subscribe(&options.channels).await?;

    let mut sender = None;
    if server.is_some() {
        match options.count {
            // Nobody else knows this server: send the notifications ourselves.
            Some(count) => sender = Some(tokio::spawn(send_samples(url, options.channels, count))),
            None => eprintln!(
                "tail: listening; send with: psql '{url}' -c \"SELECT pg_notify('{}', 'hello')\"",
                options.channels[0]
            ),
        }
    }

    let outcome = follow(&mut events, options.count).await;
    if let Some(sender) = sender {
        sender.abort(); // when stdout was closed early, it may still be sending
    }
    listener.shutdown().await;
    outcome
}

fn database_url_from_env() -> Option<String> {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
}

/// Prints notifications until `count` were printed (if given), Ctrl-C, or a closed
/// stdout (`tail | head -3`).
async fn follow(events: &mut Subscription, count: Option<u64>) -> Result<()> {
    let mut ctrl_c = pin!(tokio::signal::ctrl_c());
    let mut printed = 0;
    while count.is_none_or(|count| printed < count) {
        let event = tokio::select! {
            signal = &mut ctrl_c => {
                signal?;
                return Ok(());
            }
            event = events.next() => event.ok_or("the listener stopped")?,
        };
        match event {
            Event::Notification(n) => match print_line(&n) {
                Ok(()) => printed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => return Err(e.into()),
            },
            Event::Reconnected(report) => eprintln!(
                "tail: gap: reconnected after {:?}; notifications sent meanwhile were missed",
                report.downtime()
            ),
            Event::Lagged(dropped) => {
                eprintln!("tail: gap: {dropped} notifications dropped, output too slow")
            }
            Event::Error(e) => eprintln!("tail: {e}"),
            _ => {}
        }
    }
    Ok(())
}

fn print_line(n: &Notification) -> std::io::Result<()> {
    let line = Line {
        // When the listener read it, not when this line is printed.
        time: humantime::format_rfc3339_millis(n.received_at()).to_string(),
        channel: n.channel(),
        pid: n.process_id(),
        payload: payload_as_json(n.payload()),
    };
    let text = serde_json::to_string(&line)?;
    writeln!(std::io::stdout().lock(), "{text}")
}

/// A JSON object or array as itself; anything else as a string.
fn payload_as_json(payload: &str) -> Value {
    match serde_json::from_str(payload) {
        Ok(value @ (Value::Object(_) | Value::Array(_))) => value,
        _ => Value::String(payload.to_owned()),
    }
}

/// Sends `count` sample notifications, alternately JSON and plain text, spread over
/// `channels`, from a connection of its own (so they show another sender pid).
async fn send_samples(url: String, channels: Vec<String>, count: u64) {
    if let Err(problem) = try_send_samples(&url, &channels, count).await {
        eprintln!("tail: sending sample notifications failed: {problem}");
    }
}

async fn try_send_samples(url: &str, channels: &[String], count: u64) -> Result<()> {
    // An ordinary tokio-postgres client.
    let (client, connection) =
        pglisten::tokio_postgres::connect(url, pglisten::tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    for (i, channel) in (1..=count).zip(channels.iter().cycle()) {
        let payload = if i % 2 == 1 {
            serde_json::json!({ "order": i, "status": "paid" }).to_string()
        } else {
            format!("order {i} shipped")
        };
        pglisten::notify(&client, channel, &payload).await?;
    }
    Ok(())
}
