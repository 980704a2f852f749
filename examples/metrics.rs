//! pglisten's metrics (the `metrics` feature) served to Prometheus: install a recorder,
//! connect, and scrape `GET /metrics`.
//!
//! ```text
//! cargo run --example metrics --features metrics            # serves until Ctrl-C
//! cargo run --example metrics --features metrics -- --once  # scrapes itself, checks, exits
//! ```
//!
//! It starts its own throwaway PostgreSQL unless `DATABASE_URL` is set, listens on
//! 127.0.0.1:9187 (`--port N` to change), sends five notifications to itself and reads
//! them, so the counters have something to show.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use metrics_exporter_prometheus::PrometheusBuilder;
use pglisten::{Event, Listener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod serve_metrics;
mod support;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let once = args.iter().any(|a| a == "--once");
    let port: u16 = match args.iter().position(|a| a == "--port") {
        Some(i) => args.get(i + 1).ok_or("--port needs a number")?.parse()?,
        None => 9187,
    };

    // 1. A recorder, installed before the listener is built (metrics registered earlier
    //    would go nowhere), and an HTTP endpoint for Prometheus to scrape.
    let handle = PrometheusBuilder::new().install_recorder()?;
    let addr = serve_metrics::serve(handle, SocketAddr::from(([127, 0, 0, 1], port))).await?;
    println!("metrics on http://{addr}/metrics");

    // 2. A listener, labelled so that several listeners of one process stay apart.
    let database = support::database().await?;
    let listener = Listener::builder(database.url())
        .metrics_label("example")
        .heartbeat(Duration::from_secs(1), Duration::from_secs(5))
        .connect()
        .await?;
    let mut events = listener.subscribe(["metrics_demo"]).await?;
    for i in 1..=5 {
        listener.notify("metrics_demo", &i.to_string()).await?;
    }
    let mut read = 0;
    while read < 5 {
        match tokio::time::timeout(Duration::from_secs(30), events.next()).await {
            Ok(Some(Event::Notification(_))) => read += 1,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return Err("the five notifications did not arrive".into()),
        }
    }
    println!("sent and read 5 notifications");

    if !once {
        println!("serving until Ctrl-C");
        tokio::signal::ctrl_c().await?;
        listener.shutdown().await;
        return Ok(());
    }
    // --once: scrape ourselves as Prometheus would, after a heartbeat has been recorded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let page = scrape(addr).await?;
        let ours: Vec<&str> = page
            .lines()
            .filter(|l| l.starts_with("pglisten_") && l.contains("listener=\"example\""))
            .collect();
        let heartbeat_seen = ours.iter().any(|l| {
            l.starts_with("pglisten_heartbeat_rtt_seconds")
                && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) > Some(0.0)
        });
        if heartbeat_seen {
            for line in &ours {
                println!("{line}");
            }
            let received = ours
                .iter()
                .find(|l| l.starts_with("pglisten_notifications_received_total"));
            if received.is_none_or(|l| !l.ends_with(" 5")) {
                return Err(format!("expected 5 notifications received: {received:?}").into());
            }
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err("no heartbeat was published within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    listener.shutdown().await;
    Ok(())
}

/// `GET /metrics`, as Prometheus does it.
async fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_owned()))
}
