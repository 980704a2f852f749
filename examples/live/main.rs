//! A live web page over Server-Sent Events: a table that follows `live.items` as a
//! producer keeps changing it, served to every browser from one `Listener`.
//!
//! ```text
//! cargo run --example live                        # throwaway PostgreSQL, durable mode
//! cargo run --example live -- --mode plain        # the plain-subscription pattern
//! cargo run --example live -- --port 8080 --no-producer
//! DATABASE_URL=postgres://... cargo run --example live
//! ```
//!
//! Options (each also an environment variable): `--mode durable|plain`
//! (`LIVE_MODE`, default `durable`), `--port N` (`LIVE_PORT`; default 3000 on
//! 127.0.0.1, or a free port when 3000 is taken), `--no-producer` (`LIVE_PRODUCER=0`:
//! serve only; other writers must change rows the way `server::apply` does, which
//! publishes every change in the same transaction).
//!
//! In **durable** mode each event's SSE id is its durable position: stop the server
//! and start it again (same port) and the browser's `EventSource` resumes from
//! `Last-Event-ID` with nothing missed. In **plain** mode the server tells the page to
//! reload after every gap (`Reconnected`, `Lagged`). See `server.rs` for how the
//! snapshot and the stream fit together without missing or repeating a change.

// `server::apply_in` is for the test and the benchmark, which include the module too.
#[allow(unused_imports)]
mod server;

use std::time::Duration;

use server::{Change, Mode};
use tokio::net::TcpListener;

const NAMES: [&str; 8] = [
    "apples", "pears", "plums", "cherries", "figs", "quinces", "apricots", "medlars",
];

#[derive(Debug)]
struct Options {
    mode: Mode,
    port: Option<u16>,
    producer: bool,
}

fn options() -> Result<Options, String> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut options = Options {
        mode: env("LIVE_MODE").as_deref().unwrap_or("durable").parse()?,
        port: env("LIVE_PORT")
            .map(|p| {
                p.parse()
                    .map_err(|_| format!("LIVE_PORT={p} is not a port"))
            })
            .transpose()?,
        producer: env("LIVE_PRODUCER").is_none_or(|v| v != "0"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--mode" => options.mode = args.next().ok_or("--mode needs a value")?.parse()?,
            "--port" => {
                let port = args.next().ok_or("--port needs a value")?;
                options.port = Some(port.parse().map_err(|_| format!("{port} is not a port"))?);
            }
            "--no-producer" => options.producer = false,
            "--help" | "-h" => {
                println!(
                    "cargo run --example live -- [--mode durable|plain] [--port N] [--no-producer]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(options)
}

#[tokio::main]
async fn main() {
    let options = match options() {
        Ok(options) => options,
        Err(problem) => {
            eprintln!("live: {problem}");
            std::process::exit(2);
        }
    };
    if let Err(problem) = run(options).await {
        eprintln!("live example failed: {problem}");
        std::process::exit(1);
    }
}

async fn run(options: Options) -> Result<(), server::BoxError> {
    // DATABASE_URL, or a throwaway server that lives until the end of `run`.
    let database =
        tokio::task::spawn_blocking(pglisten_testkit::ExampleDatabase::from_env_or_start).await??;
    let url = database.url().to_owned();
    let mut db = pglisten_testkit::try_admin(&url).await?;
    server::setup(&db).await?;
    let seed: Vec<Change> = (1..=6)
        .map(|id| Change::Set {
            id,
            name: NAMES[id as usize - 1].to_owned(),
            qty: 10 * id,
        })
        .collect();
    let empty: i64 = db
        .query_one("SELECT count(*) FROM live.items", &[])
        .await?
        .get(0);
    if empty == 0 {
        server::apply(&mut db, &seed).await?;
    }

    let socket = bind(options.port).await?;
    let live = server::start(&url, options.mode, socket).await?;
    println!(
        "live page ({} mode): open http://{}/   (Ctrl-C to stop)",
        options.mode.name(),
        live.addr()
    );
    if let Some(pid) = live.listener().backend_pid() {
        println!(
            "  to see the page ride out a lost connection: SELECT pg_terminate_backend({pid});"
        );
    }

    let producer = options.producer.then(|| tokio::spawn(produce(db)));
    tokio::signal::ctrl_c().await?;
    if let Some(producer) = producer {
        producer.abort();
    }
    let behind = live.fell_behind();
    if behind > 0 {
        println!("{behind} browser(s) fell behind the hub's broadcast");
    }
    live.stop().await?;
    Ok(())
}

/// The port asked for, else 127.0.0.1:3000, else any free port.
async fn bind(port: Option<u16>) -> std::io::Result<TcpListener> {
    if let Some(port) = port {
        return TcpListener::bind(("127.0.0.1", port)).await;
    }
    match TcpListener::bind(("127.0.0.1", 3000)).await {
        Ok(socket) => Ok(socket),
        Err(_) => TcpListener::bind(("127.0.0.1", 0)).await,
    }
}

/// Changes a random row every 0.7 s: a new quantity, now and then a rename, or a row
/// deleted and later put back.
async fn produce(mut db: pglisten::tokio_postgres::Client) {
    let mut random = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut next = move |n: u64| {
        // xorshift64: good enough to pick rows.
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random % n
    };
    loop {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let id = next(8) as i32 + 1;
        let change = match next(10) {
            0 => Change::Delete { id },
            _ => Change::Set {
                id,
                name: NAMES[id as usize - 1].to_owned(),
                qty: next(100) as i32,
            },
        };
        if let Err(e) = server::apply(&mut db, &[change]).await {
            eprintln!("producer: {e}");
            if db.is_closed() {
                return;
            }
        }
    }
}
