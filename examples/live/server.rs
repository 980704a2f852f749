//! The live page's web server: one [`Listener`] for every browser, a snapshot endpoint,
//! and a Server-Sent Events endpoint per browser.
//!
//! Self-contained, so that the browser test (`tests/it/live_page.rs`) and the load
//! benchmark (`benches/live.rs`) run exactly this code (they include this file with
//! `#[path]`).
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
//! - **plain mode**: opens `/api/events` first; the server subscribes (LISTEN is active
//!   when it sends `ready`), then the page fetches the snapshot, and applies the events
//!   that came meanwhile with the same visibility rule. On `Reconnected` or `Lagged` the
//!   server sends `reload`, and the page does the same again.
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
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures::stream::{self, BoxStream, StreamExt};
use pglisten::durable::{self, Cursor, Position};
use pglisten::tokio_postgres::{self, Client, NoTls, Transaction};
use pglisten::{ErrorKind, Event, Listener};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

/// Errors of the example, shown to the user as text.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The durable channel, and the plain channel, on which every change is published.
pub const CHANNEL: &str = "live_items";

/// The table, its version stamp, and the journal (installed separately).
const SCHEMA: &str = "
    SELECT pg_advisory_xact_lock(hashtext('pglisten.examples.live'));
    CREATE SCHEMA IF NOT EXISTS live;
    CREATE SEQUENCE IF NOT EXISTS live.versions;
    CREATE TABLE IF NOT EXISTS live.items (
        id integer PRIMARY KEY,
        name text NOT NULL,
        qty integer NOT NULL,
        version bigint NOT NULL DEFAULT 0);
    -- BEFORE row triggers run once the row is locked: a later writer of a row always
    -- takes a larger version than the one it waited for.
    CREATE OR REPLACE FUNCTION live.stamp() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        NEW.version := nextval('live.versions');
        RETURN NEW;
    END $$;
    DROP TRIGGER IF EXISTS stamp ON live.items;
    CREATE TRIGGER stamp BEFORE INSERT OR UPDATE ON live.items
        FOR EACH ROW EXECUTE FUNCTION live.stamp();
";

const UPSERT: &str = "
    INSERT INTO live.items AS i (id, name, qty) VALUES ($1, $2, $3)
    ON CONFLICT (id) DO UPDATE SET name = excluded.name, qty = excluded.qty
    RETURNING json_build_object('id', i.id, 'name', i.name, 'qty', i.qty,
        'version', i.version, 'xid', pg_current_xact_id()::text)::text";

const DELETE: &str = "
    DELETE FROM live.items WHERE id = $1
    RETURNING json_build_object('id', id, 'deleted', true,
        'version', nextval('live.versions'), 'xid', pg_current_xact_id()::text)::text";

/// One statement, so one snapshot for the rows and for `pg_current_snapshot()`.
const SNAPSHOT: &str = "
    SELECT pg_current_snapshot()::text,
           pg_snapshot_xmin(pg_current_snapshot())::text,
           coalesce((SELECT json_agg(json_build_object('id', id, 'name', name, 'qty', qty,
                                                       'version', version) ORDER BY id)
                     FROM live.items), '[]')::text";

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

/// A change to one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Insert or update row `id`.
    Set { id: i32, name: String, qty: i32 },
    /// Delete row `id` (nothing is published if there is none).
    Delete { id: i32 },
}

/// Creates the table and installs the durable journal (idempotent).
pub async fn setup(client: &Client) -> Result<(), BoxError> {
    durable::install(client).await?;
    let tx_sql = format!("BEGIN; {SCHEMA} COMMIT;");
    client.batch_execute(&tx_sql).await?;
    Ok(())
}

/// Makes `changes` in one transaction and publishes each changed row, durably and as a
/// plain notification; both are delivered if and only if the transaction commits.
pub async fn apply(client: &mut Client, changes: &[Change]) -> Result<(), BoxError> {
    let tx = client.transaction().await?;
    apply_in(&tx, changes).await?;
    tx.commit().await?;
    Ok(())
}

/// [`apply`] inside a transaction of the caller's (published if it commits).
pub async fn apply_in(tx: &Transaction<'_>, changes: &[Change]) -> Result<(), BoxError> {
    for change in changes {
        let rows = match change {
            Change::Set { id, name, qty } => tx.query(UPSERT, &[id, name, qty]).await?,
            Change::Delete { id } => tx.query(DELETE, &[id]).await?,
        };
        for row in rows {
            let payload: String = row.get(0);
            durable::publish(tx, CHANNEL, &payload).await?;
            pglisten::notify(tx, CHANNEL, &payload).await?;
        }
    }
    Ok(())
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    listener: Listener,
    stop: watch::Sender<bool>,
    task: JoinHandle<io::Result<()>>,
}

#[derive(Debug)]
struct App {
    listener: Listener,
    mode: Mode,
    url: String,
    /// The connection snapshots are read on (made again when lost).
    db: Mutex<Option<Client>>,
    stop: watch::Receiver<bool>,
    page: String,
}

/// Starts serving on `socket` from one new [`Listener`] on `url`.
pub async fn start(url: &str, mode: Mode, socket: TcpListener) -> Result<Server, BoxError> {
    let listener = Listener::connect(url).await?;
    let (stop, stopped) = watch::channel(false);
    let addr = socket.local_addr()?;
    let app = Arc::new(App {
        listener: listener.clone(),
        mode,
        url: url.to_owned(),
        db: Mutex::new(None),
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
        axum::serve(socket, router)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|&stop| stop).await;
            })
            .await
    });
    Ok(Server {
        addr,
        listener,
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

    /// Ends every event stream, closes every connection, stops listening and shuts the
    /// listener down.
    pub async fn stop(self) -> Result<(), BoxError> {
        let _ = self.stop.send(true);
        self.task.await??;
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
            _ => {
                let (client, connection) = tokio_postgres::connect(&app.url, NoTls).await?;
                tokio::spawn(connection);
                client
            }
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

type Events = BoxStream<'static, SseEvent>;

async fn events(
    State(app): State<Arc<App>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let stream = match app.mode {
        Mode::Durable => durable_events(&app, query.as_deref(), &headers).await,
        Mode::Plain => plain_events(&app).await,
    };
    let stream = match stream {
        Ok(stream) => stream,
        Err((status, message)) => return (status, message).into_response(),
    };
    let mut stop = app.stop.clone();
    let stream = stream
        .take_until(async move {
            let _ = stop.wait_for(|&stop| stop).await;
        })
        .map(Ok::<_, Infallible>);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The first event: the subscription is active. `retry` makes a browser reconnect
/// half a second after losing the stream (instead of its default of a few seconds).
fn ready(mode: Mode) -> SseEvent {
    SseEvent::default()
        .event("ready")
        .retry(Duration::from_millis(500))
        .data(mode.name())
}

/// Tells the page to read a snapshot again. (Its data is not empty: browsers drop
/// events without data.)
fn reload() -> SseEvent {
    SseEvent::default().event("reload").data("reload")
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
    let subscription = app
        .listener
        .subscribe_durable(CHANNEL, Cursor::After(position))
        .await
        .map_err(|e| {
            let status = match e.kind() {
                ErrorKind::InvalidPosition => StatusCode::BAD_REQUEST,
                ErrorKind::Pruned => StatusCode::GONE,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            (status, e.to_string())
        })?;
    let changes = subscription.filter_map(|event| {
        std::future::ready(match event {
            Event::Notification(n) => n.position().map(|position| {
                SseEvent::default()
                    .event("change")
                    .id(position.to_string())
                    .data(n.payload())
            }),
            // Entries after the position are gone: the page must start again.
            Event::Error(e) if e.kind() == ErrorKind::Pruned => Some(reload()),
            // Anything else is caught up by the subscription itself.
            _ => None,
        })
    });
    Ok(stream::once(std::future::ready(ready(Mode::Durable)))
        .chain(changes)
        .boxed())
}

/// Subscribes before answering: once the page gets `ready`, a snapshot it reads misses
/// nothing that comes later.
async fn plain_events(app: &App) -> Result<Events, (StatusCode, String)> {
    let subscription = app
        .listener
        .subscribe([CHANNEL])
        .await
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let changes = subscription.filter_map(|event| {
        std::future::ready(match event {
            Event::Notification(n) => Some(SseEvent::default().event("change").data(n.payload())),
            // A gap: notifications may be lost, so the page reads a snapshot again.
            Event::Reconnected(_) | Event::Lagged(_) => Some(reload()),
            _ => None,
        })
    });
    Ok(stream::once(std::future::ready(ready(Mode::Plain)))
        .chain(changes)
        .boxed())
}
