//! The live page's web server: one [`Listener`] for every browser, a snapshot endpoint,
//! and a Server-Sent Events endpoint per browser.
//!
//! With its two modules, `table.rs` (the table and how it is changed) and `hub.rs` (one
//! subscription fanned out to every browser), it is self-contained, so that the browser
//! test (`tests/it/live/`) and the load benchmark (`benches/live.rs`) run exactly this
//! code (they include this file with `#[path]`).
//!
//! # How the page never misses or double-applies a change
//!
//! Every change to `live.items` is written by [`apply`], which in the same transaction
//! publishes the changed row (as JSON, with its `version` and the transaction id `xid`) on
//! the durable channel [`CHANNEL`] and as a plain `NOTIFY` on the channel of the same
//! name. A BEFORE trigger stamps each row with a `version` taken *after* the row is
//! locked, so for any one row versions grow in commit order.
//!
//! `GET /api/snapshot` reads the rows and `pg_current_snapshot()` in one statement (one
//! snapshot). A change is in the snapshot exactly when its transaction is visible in
//! that snapshot: `xid < xmin`, or `xid < xmax` and not in the list of transactions still
//! running. So the page:
//!
//! - **durable mode**: opens `/api/events?after=P` with `P = (xmin - 1, max)`, the
//!   position just before every transaction the snapshot might not contain, and skips the
//!   few events whose `xid` the snapshot shows as visible. Each event's SSE `id` is its
//!   durable position; a reconnecting `EventSource` sends it back as `Last-Event-ID` and
//!   the server resumes right after it with `Cursor::After`.
//! - **plain mode**: opens `/api/events` first; the server's subscription is active
//!   (LISTEN) when it sends `ready`, then the page fetches the snapshot, and applies the
//!   events that came meanwhile with the same visibility rule. On `Reconnected` or
//!   `Lagged` the server sends `reload`, and the page does the same again.
//!
//! Durable positions are in transaction-id order, which is not commit order; the row
//! `version` puts two changes of one row back in commit order (the page keeps the newest,
//! and remembers deletions).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use futures::stream::{self, BoxStream, StreamExt};
use pglisten::durable::Position;
use pglisten::tokio_postgres::{self, Client, NoTls};
use pglisten::{ErrorKind, Listener};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

#[path = "hub.rs"]
mod hub;
#[path = "table.rs"]
mod table;

use hub::Hub;
use table::SNAPSHOT;
pub use table::{Change, apply, apply_in, setup};

/// Errors of the example, shown to the user as text.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The durable channel, and the plain channel, on which every change is published.
pub const CHANNEL: &str = "live_items";

/// How long [`Server::stop`] waits for open connections to finish writing.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Which subscription the server serves the page from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A durable subscription: SSE ids are positions, reconnects resume.
    Durable,
    /// A plain subscription: the page reloads on `Reconnected` and `Lagged`.
    Plain,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(text: &str) -> Result<Mode, String> {
        match text {
            "durable" => Ok(Mode::Durable),
            "plain" => Ok(Mode::Plain),
            other => Err(format!("unknown mode {other:?}: durable or plain")),
        }
    }
}

impl Mode {
    /// Its name on the command line and on the page.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Durable => "durable",
            Mode::Plain => "plain",
        }
    }
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    listener: Listener,
    hub: Arc<Hub>,
    stop: watch::Sender<bool>,
    task: JoinHandle<io::Result<()>>,
}

#[derive(Debug)]
struct App {
    listener: Listener,
    /// The one subscription every caught-up browser is served from.
    hub: Arc<Hub>,
    mode: Mode,
    url: String,
    /// The connection snapshots are read on (made again when lost).
    db: Mutex<Option<Client>>,
    stop: watch::Receiver<bool>,
    page: String,
}

/// Starts serving on `socket` from one new [`Listener`] on `url`.
pub async fn start(url: &str, mode: Mode, socket: TcpListener) -> Result<Server, BoxError> {
    // Entries held back by a transaction still open are read again after 10 ms instead
    // of 50: one query for the hub, not one per browser.
    let listener = Listener::builder(url)
        .durable_retry(Duration::from_millis(10))
        .connect()
        .await?;
    let db = connect(url).await?;
    let hub = match mode {
        // From just before every transaction still running: pages that load a
        // snapshot from now on are all after that.
        Mode::Durable => Hub::durable(&listener, read_position(&db).await?).await?,
        Mode::Plain => Hub::plain(&listener).await?,
    };
    let (stop, stopped) = watch::channel(false);
    let addr = socket.local_addr()?;
    let app = Arc::new(App {
        listener: listener.clone(),
        hub: hub.clone(),
        mode,
        url: url.to_owned(),
        db: Mutex::new(Some(db)),
        stop: stopped.clone(),
        page: include_str!("page.html").replace("__MODE__", mode.name()),
    });
    let router = Router::new()
        .route("/", get(page))
        .route("/api/snapshot", get(snapshot))
        .route("/api/events", get(events))
        .with_state(app);
    let mut shutdown = stopped;
    let task = tokio::spawn(async move {
        // No Nagle: an event is written as soon as it is ready, not held back until the
        // browser acknowledges the previous one (up to 40 ms with delayed ACKs).
        let socket = socket.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(socket, router)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|&stop| stop).await;
            })
            .await
    });
    Ok(Server {
        addr,
        listener,
        hub,
        stop,
        task,
    })
}

impl Server {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The one listener every browser is served from.
    pub fn listener(&self) -> &Listener {
        &self.listener
    }

    /// How many browsers fell behind the hub's broadcast (more batches than its ring
    /// holds) and were moved to a subscription of their own (durable mode) or told to
    /// reload (plain mode): worth watching, and logging, in a real server.
    pub fn fell_behind(&self) -> u64 {
        self.hub.fell_behind()
    }

    /// Ends every event stream, stops listening, waits up to [`STOP_GRACE`] for the
    /// connections to finish their last writes, and shuts the listener down.
    ///
    /// A browser that stopped reading can keep its response's last write waiting for
    /// ever; past the grace its connection is left to close when that browser goes, so
    /// that stopping never hangs.
    pub async fn stop(mut self) -> Result<(), BoxError> {
        let _ = self.stop.send(true);
        match tokio::time::timeout(STOP_GRACE, &mut self.task).await {
            Ok(served) => served??,
            Err(_) => {
                eprintln!(
                    "live: connections still writing after {STOP_GRACE:?} (a browser that \
                     stopped reading?); stopping without them"
                );
                self.task.abort();
            }
        }
        self.listener.shutdown().await;
        Ok(())
    }
}

async fn page(State(app): State<Arc<App>>) -> Html<String> {
    Html(app.page.clone())
}

async fn snapshot(State(app): State<Arc<App>>) -> Response {
    match read_snapshot(&app).await {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("could not read the snapshot: {e}"),
        )
            .into_response(),
    }
}

/// `{"snapshot": "xmin:xmax:xip,...", "after": "<position>", "rows": [...]}`.
async fn read_snapshot(app: &App) -> Result<String, BoxError> {
    let mut db = app.db.lock().await;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let client = match db.take() {
            Some(client) if !client.is_closed() => client,
            _ => connect(&app.url).await?,
        };
        match client.query_one(SNAPSHOT, &[]).await {
            Ok(row) => {
                *db = Some(client);
                let snapshot: String = row.get(0);
                let xmin: u64 = row.get::<_, String>(1).parse()?;
                // Just before every transaction the snapshot may lack.
                let after = Position::new(xmin - 1, u64::MAX);
                let rows: String = row.get(2);
                return Ok(format!(
                    r#"{{"snapshot":"{snapshot}","after":"{after}","rows":{rows}}}"#
                ));
            }
            // A connection lost since the last request: one more try on a new one.
            Err(e) if attempt == 1 && client.is_closed() => drop(e),
            Err(e) => return Err(e.into()),
        }
    }
}

async fn connect(url: &str) -> Result<Client, BoxError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// `(xmin - 1, max)` of a snapshot taken now: every entry after it is of a
/// transaction still running or not begun.
async fn read_position(db: &Client) -> Result<Position, BoxError> {
    let row = db
        .query_one("SELECT pg_snapshot_xmin(pg_current_snapshot())::text", &[])
        .await?;
    let xmin: u64 = row.get::<_, String>(0).parse()?;
    Ok(Position::new(xmin - 1, u64::MAX))
}

/// Whether `position` names a transaction this server has started (a position from
/// another server, or made up, would wait for ever).
async fn check_position(app: &App, position: Position) -> Result<(), (StatusCode, String)> {
    let unavailable = |e: &dyn std::fmt::Display| (StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    let mut db = app.db.lock().await;
    let client = match db.take() {
        Some(client) if !client.is_closed() => client,
        _ => connect(&app.url).await.map_err(|e| unavailable(&e))?,
    };
    let next = client
        .query_one("SELECT pg_snapshot_xmax(pg_current_snapshot())::text", &[])
        .await
        .map_err(|e| unavailable(&e))?
        .get::<_, String>(0);
    *db = Some(client);
    let next: u64 = next.parse().map_err(|e| unavailable(&e))?;
    if position.transaction_id() >= next {
        return Err((
            StatusCode::BAD_REQUEST,
            format!(
                "position {position} is from the future: transaction {} has not started on \
                 this server (next is {next})",
                position.transaction_id()
            ),
        ));
    }
    Ok(())
}

type Events = BoxStream<'static, Bytes>;

async fn events(
    State(app): State<Arc<App>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let stream = match app.mode {
        Mode::Durable => durable_events(&app, query.as_deref(), &headers).await,
        Mode::Plain => plain_events(&app),
    };
    let stream = match stream {
        Ok(stream) => stream,
        Err((status, message)) => return (status, message).into_response(),
    };
    // `retry`: a browser that loses the stream reconnects after half a second.
    let ready = format!("event: ready\nretry: 500\ndata: {}\n\n", app.mode.name());
    // A comment now and then, so that a dead connection is noticed by both ends.
    let period = Duration::from_secs(15);
    let keep_alive = stream::unfold(
        tokio::time::interval_at(tokio::time::Instant::now() + period, period),
        |mut ticks| async move {
            ticks.tick().await;
            Some((Some(Bytes::from_static(b":\n\n")), ticks))
        },
    );
    let events = stream::once(std::future::ready(Bytes::from(ready)))
        .chain(stream)
        .map(Some)
        // The end of the events ends the response (the keep-alive never ends).
        .chain(stream::once(std::future::ready(None)));
    let mut stop = app.stop.clone();
    let body = stream::select(events, keep_alive)
        .take_while(|item| std::future::ready(item.is_some()))
        .filter_map(std::future::ready)
        .take_until(async move {
            let _ = stop.wait_for(|&stop| stop).await;
        })
        .map(Ok::<_, Infallible>);
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// Resumes after `Last-Event-ID` (a reconnecting browser) or `?after=` (a fresh page).
async fn durable_events(
    app: &App,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Events, (StatusCode, String)> {
    let bad = |message: String| (StatusCode::BAD_REQUEST, message);
    let from_header = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| bad("Last-Event-ID is not ASCII text".to_owned()))?,
        ),
        None => None,
    };
    let from_query = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("after="));
    let Some(text) = from_header.filter(|t| !t.is_empty()).or(from_query) else {
        return Err(bad(
            "where to start is missing: send Last-Event-ID or ?after=<position> \
             (the \"after\" of /api/snapshot)"
                .to_owned(),
        ));
    };
    let position: Position = text
        .parse()
        .map_err(|e: pglisten::Error| bad(e.to_string()))?;
    check_position(app, position).await?;
    app.hub
        .follow_durable(&app.listener, position)
        .await
        .map_err(|e| {
            let status = match e.kind() {
                ErrorKind::InvalidPosition => StatusCode::BAD_REQUEST,
                ErrorKind::Pruned => StatusCode::GONE,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            (status, e.to_string())
        })
}

/// The hub's plain subscription is active: once the page gets `ready`, a snapshot it
/// reads misses nothing that comes later.
fn plain_events(app: &App) -> Result<Events, (StatusCode, String)> {
    app.hub.follow_plain().ok_or((
        StatusCode::SERVICE_UNAVAILABLE,
        "the server's subscription has ended".to_owned(),
    ))
}
