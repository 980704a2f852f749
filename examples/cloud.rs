//! Connects to a (managed) PostgreSQL with a libpq connection string and prints the
//! events of one channel.
//!
//! ```text
//! cargo run --example cloud -- 'postgres://app@db.example.com/app?sslmode=verify-full&sslrootcert=/etc/ssl/rds-global-bundle.pem'
//! DATABASE_URL='postgres://...' cargo run --example cloud -- --once
//! PGHOST=db.example.com PGUSER=app PGSSLMODE=verify-full PGSSLROOTCERT=system cargo run --example cloud -- --env
//! cargo run --example cloud            # no URL: a throwaway local TLS server (needs PostgreSQL installed)
//! ```
//!
//! Options: `--channel NAME` (default `events`), `--count N` (stop after N events),
//! `--once` (same as `--count 1`), `--env` (read PGHOST, PGUSER, PGPASSWORD, ... instead
//! of a URL). With a URL the example sends one notification to its own channel, so
//! `--once` is a complete round-trip check.
//!
//! Without a URL it starts its own PostgreSQL with TLS and a certificate authority made
//! on the spot, connects with `sslmode=verify-full`, sends a few notifications, drops
//! its connection once to show `Reconnected`, and exits after a few events.

use std::time::Duration;

use futures::StreamExt;
use pglisten::{Event, Listener, ListenerBuilder};

mod support;

struct Options {
    url: Option<String>,
    from_env: bool,
    channel: String,
    count: Option<u64>,
}

fn usage() -> ! {
    eprintln!("usage: cloud [URL] [--channel NAME] [--count N | --once] [--env]");
    std::process::exit(2)
}

fn options() -> Options {
    let mut options = Options {
        url: None,
        from_env: false,
        channel: "events".to_owned(),
        count: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--once" => options.count = Some(1),
            "--env" => options.from_env = true,
            "--count" => {
                options.count = Some(
                    args.next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_else(|| usage()),
                )
            }
            "--channel" => options.channel = args.next().unwrap_or_else(|| usage()),
            "-h" | "--help" => usage(),
            url if !url.starts_with("--") && options.url.is_none() => {
                options.url = Some(url.to_owned())
            }
            _ => usage(),
        }
    }
    if options.url.is_none() && !options.from_env {
        options.url = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty());
    }
    options
}

fn print(event: &Event) {
    match event {
        Event::Notification(n) => println!("notification on {}: {}", n.channel(), n.payload()),
        Event::Reconnected(report) => println!(
            "reconnected to {} after {:?} ({} attempt(s)): reload your state",
            report.host(),
            report.downtime(),
            report.attempts()
        ),
        Event::Lagged(n) => println!("lagged: {n} notification(s) dropped"),
        Event::Error(e) => println!("error ({:?}): {e}", e.kind()),
        other => println!("{other:?}"),
    }
}

/// Prints events until `count` (if any) or Ctrl-C.
async fn print_events(mut events: pglisten::Subscription, count: Option<u64>) {
    let mut seen = 0;
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(event) => {
                    print(&event);
                    seen += 1;
                    if count.is_some_and(|n| seen >= n) {
                        return;
                    }
                }
                None => return,
            },
            _ = tokio::signal::ctrl_c() => return,
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "pglisten=error".into()),
        )
        .init();
    let options = options();
    let builder = match (&options.url, options.from_env) {
        (_, true) => ListenerBuilder::from_env(),
        (Some(url), false) => Listener::builder(url),
        (None, false) => return demo(&options).await,
    };
    let listener = builder.connect().await?;
    println!("connected: {listener:?}");
    let events = listener.subscribe([&options.channel]).await?;
    println!(
        "listening on {:?}; NOTIFY it to see events",
        options.channel
    );
    listener
        .notify(&options.channel, "hello from pglisten's cloud example")
        .await?;
    print_events(events, options.count).await;
    listener.shutdown().await;
    Ok(())
}

/// A throwaway TLS server with a fresh CA; connects with sslmode=verify-full.
async fn demo(options: &Options) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    println!("no URL given: starting a throwaway PostgreSQL with TLS");
    let server = std::sync::Arc::new(support::throwaway_tls().await?);
    let (password, port, root) = (server.password, server.port(), server.root_cert.display());
    let url = format!(
        "postgres://app:{password}@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={root}"
    );
    println!(
        "connecting with postgres://app:***@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={root}"
    );
    let listener = Listener::builder(&url)
        .backoff(pglisten::Backoff::new().initial(Duration::from_millis(50)))
        .connect()
        .await?;
    println!("connected: {listener:?}");
    let events = listener.subscribe([&options.channel]).await?;

    // A producer: a notification every 200 ms; after the second, the server ends our
    // connection, to show the gap being announced.
    let producer = tokio::spawn({
        let (listener, server, channel) =
            (listener.clone(), server.clone(), options.channel.clone());
        async move {
            for i in 1.. {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if listener
                    .notify(&channel, &format!("tick {i}"))
                    .await
                    .is_err()
                {
                    continue; // reconnecting; the next tick goes through
                }
                if i == 2
                    && let Some(pid) = listener.backend_pid()
                {
                    let _ = server.terminate_backend(pid).await;
                }
            }
        }
    });
    print_events(events, Some(options.count.unwrap_or(5))).await;
    producer.abort();
    listener.shutdown().await;
    println!("done");
    Ok(())
}
