//! The live example (`examples/live/`, issue 18) in a real headless Chromium: the page's
//! table must end up equal to the database's, row for row, after changes, after the
//! listener's backend is terminated, and after the web server is stopped and started
//! again on the same port while changes are made (the browser resumes with
//! `Last-Event-ID`).
//!
//! The example's server is included as a module, so these tests run its exact code.
//! `PGLISTEN_SCREENSHOT=1` makes the durable test save `examples/live/screenshot.png`.

mod browser;
mod http;

// Not every item of the example is used here.
#[allow(dead_code, unused_imports)]
#[path = "../../../examples/live/server.rs"]
mod server;

use std::net::SocketAddr;
use std::time::Duration;

use fantoccini::Client as Page;
use pglisten::tokio_postgres::Client;
use tokio::net::TcpListener;

use crate::support::*;
use browser::Row;
use server::{Change, Mode};

/// One browser at a time: two Chromiums on a 2-core machine slow each other down.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The table as the database has it.
async fn table(db: &Client) -> Vec<Row> {
    db.query(
        "SELECT id, name, qty, version FROM live.items ORDER BY id",
        &[],
    )
    .await
    .expect("read live.items")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

/// Waits until the page's table equals the database's, failing with both after [`WAIT`].
async fn converges(page: &Page, db: &Client, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (shown, wanted) = (browser::rows(page).await, table(db).await);
        if shown == wanted {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "{what}: the page never showed the table.\npage:     {shown:?}\ndatabase: {wanted:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn set(id: i32, name: &str, qty: i32) -> Change {
    Change::Set {
        id,
        name: name.to_owned(),
        qty,
    }
}

/// A database with the example's table and five rows, and the example's server on it.
async fn serve(mode: Mode) -> (pglisten_testkit::Cluster, Client, server::Server) {
    let cluster = own_cluster().await;
    let mut db = admin(&cluster.url()).await;
    server::setup(&db).await.expect("setup");
    let seed: Vec<Change> = (1..=5)
        .map(|id| set(id, &format!("item {id}"), id))
        .collect();
    server::apply(&mut db, &seed).await.expect("seed");
    let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let live = server::start(&cluster.url(), mode, socket)
        .await
        .expect("start the live server");
    (cluster, db, live)
}

/// Binds `addr` again (its old connections may still be closing).
async fn rebind(addr: SocketAddr) -> TcpListener {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match TcpListener::bind(addr).await {
            Ok(socket) => return socket,
            Err(e) if tokio::time::Instant::now() > deadline => panic!("rebind {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Terminates every other client backend of the database (the listener's, its durable
/// reader's and the server's snapshot connection), makes `changes` at once (while the
/// listener is away, most likely), and waits for the listener to be back on a new
/// backend.
async fn terminate_backends(db: &mut Client, live: &server::Server, changes: &[Change]) {
    let before = live
        .listener()
        .backend_pid()
        .expect("the listener is connected");
    let killed: i64 = db
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'
               AND datname = current_database()",
            &[],
        )
        .await
        .expect("terminate")
        .get(0);
    assert!(killed >= 2, "only {killed} backends were terminated");
    server::apply(db, changes)
        .await
        .expect("changes during the gap");
    eventually("the listener is on a new backend", || async {
        live.listener()
            .backend_pid()
            .is_some_and(|pid| pid != before)
    })
    .await;
}

async fn save_screenshot(page: &Page) {
    if std::env::var("PGLISTEN_SCREENSHOT").is_ok_and(|v| v == "1") {
        let png = page.screenshot().await.expect("screenshot");
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/live/screenshot.png");
        std::fs::write(path, png).expect("write the screenshot");
        eprintln!("screenshot saved to {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_page_misses_nothing_across_a_lost_backend_and_a_server_restart() {
    let _one = ONE_BROWSER.lock().await;
    let Some(browser) = browser::start().await else {
        return;
    };
    let page = &browser.client;
    let (_cluster, mut db, live) = serve(Mode::Durable).await;
    let addr = live.addr();
    page.goto(&format!("http://{addr}/"))
        .await
        .expect("open the page");
    converges(page, &db, "the first snapshot").await;

    // Changes, one transaction each and several in one.
    server::apply(&mut db, &[set(1, "one", 100)]).await.unwrap();
    server::apply(&mut db, &[set(6, "six", 6), Change::Delete { id: 2 }])
        .await
        .unwrap();
    server::apply(&mut db, &[set(3, "three", 33), set(3, "three again", 333)])
        .await
        .unwrap();
    converges(page, &db, "after changes").await;

    // Commit order against transaction-id order: `early` takes its id first, `late`
    // changes row 1 and commits, then `early` changes row 1 too and commits last. The
    // durable order delivers `early` first; the row's version keeps `early`'s value.
    let mut other = admin(&_cluster.url()).await;
    let early = db.transaction().await.unwrap();
    server::apply_in(&early, &[set(4, "four", 44)])
        .await
        .unwrap();
    server::apply(&mut other, &[set(1, "late", 1)])
        .await
        .unwrap();
    server::apply_in(&early, &[set(1, "early, committed last", 2)])
        .await
        .unwrap();
    early.commit().await.unwrap();
    converges(page, &db, "after commits out of transaction-id order").await;
    assert_eq!(table(&db).await[0].1, "early, committed last");

    // The listener's backend (and every other of the server's) terminated, with
    // changes made while it reconnects.
    terminate_backends(
        &mut db,
        &live,
        &[set(5, "five", 55), Change::Delete { id: 6 }],
    )
    .await;
    converges(page, &db, "after pg_terminate_backend").await;

    // The web server stopped; changes while it is down; started again on the same port
    // (a new listener): the browser's EventSource comes back with Last-Event-ID.
    live.stop().await.expect("stop the server");
    for i in 0..5 {
        server::apply(&mut db, &[set(7 + i, "made while down", i)])
            .await
            .unwrap();
    }
    server::apply(
        &mut db,
        &[Change::Delete { id: 1 }, set(3, "three, down", 0)],
    )
    .await
    .unwrap();
    let live = server::start(&_cluster.url(), Mode::Durable, rebind(addr).await)
        .await
        .expect("start the server again");
    converges(page, &db, "after the server restart").await;
    assert_eq!(
        browser::counter(page, "snapshots").await,
        1,
        "the page read a snapshot again: the changes did not come through Last-Event-ID"
    );
    assert_eq!(
        browser::counter(page, "repeated").await,
        0,
        "an event came twice: the stream did not resume after Last-Event-ID"
    );
    save_screenshot(page).await;

    // The test of the test: a change that is not published is missed by the page, and
    // the comparison sees it. Row 3 changes silently; row 4 is published after it, and
    // once the page shows row 4's change it has seen everything published before.
    db.execute("UPDATE live.items SET qty = qty + 1 WHERE id = 3", &[])
        .await
        .unwrap();
    server::apply(&mut db, &[set(4, "four, last", 4)])
        .await
        .unwrap();
    eventually("the page shows row 4's last change", || async {
        browser::rows(page)
            .await
            .iter()
            .any(|r| r.1 == "four, last")
    })
    .await;
    let (shown, wanted) = (browser::rows(page).await, table(&db).await);
    assert_ne!(shown, wanted, "a missed change must make the page differ");

    live.stop().await.expect("stop");
    let _ = browser.client.clone().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_page_reloads_after_a_gap() {
    let _one = ONE_BROWSER.lock().await;
    let Some(browser) = browser::start().await else {
        return;
    };
    let page = &browser.client;
    let (_cluster, mut db, live) = serve(Mode::Plain).await;
    page.goto(&format!("http://{}/", live.addr()))
        .await
        .expect("open the page");
    converges(page, &db, "the first snapshot").await;
    server::apply(&mut db, &[set(2, "two", 22), Change::Delete { id: 4 }])
        .await
        .unwrap();
    converges(page, &db, "after changes").await;
    let snapshots = browser::counter(page, "snapshots").await;

    // Changes while the listener is away are lost as notifications: the server sends
    // `reload` after `Reconnected`, and the page reads a snapshot again.
    terminate_backends(&mut db, &live, &[set(1, "one", 11), set(9, "nine", 9)]).await;
    converges(page, &db, "after pg_terminate_backend").await;
    assert!(browser::counter(page, "snapshots").await > snapshots);

    live.stop().await.expect("stop");
    let _ = browser.client.clone().close().await;
}

#[tokio::test]
async fn a_bad_last_event_id_is_a_clear_400() {
    let (_cluster, db, live) = serve(Mode::Durable).await;
    let addr = live.addr();
    let (status, body) = http::get(addr, "/api/events", &[("Last-Event-ID", "42")]).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("is not a durable position"), "{body}");
    let (status, body) = http::get(addr, "/api/events", &[]).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Last-Event-ID"), "{body}");
    let future = pglisten::durable::Position::new(1 << 40, 1).to_string();
    let (status, body) = http::get(addr, &format!("/api/events?after={future}"), &[]).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("future"), "{body}");
    // A good one, for contrast, and the snapshot it comes from.
    let (status, snapshot) = http::get(addr, "/api/snapshot", &[]).await;
    assert_eq!(status, 200, "{snapshot}");
    assert!(snapshot.contains(r#""name" : "item 1""#), "{snapshot}");
    drop(db);
    live.stop().await.expect("stop");
}

/// A browser that comes back while the server runs is served from the hub's ring:
/// exactly the events after its Last-Event-ID, also from the middle of a transaction.
#[tokio::test]
async fn a_returning_browser_gets_exactly_the_events_after_its_id() {
    let (_cluster, mut db, live) = serve(Mode::Durable).await;
    server::apply(&mut db, &[set(1, "a", 1), set(2, "b", 2), set(3, "c", 3)])
        .await
        .unwrap();
    server::apply(&mut db, &[set(4, "d", 4)]).await.unwrap();
    let published: Vec<String> = db
        .query(
            "SELECT xid::text, seq FROM pglisten.journal WHERE channel = $1 ORDER BY xid, seq",
            &[&server::CHANNEL],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let xid: String = r.get(0);
            let seq: i64 = r.get(1);
            pglisten::durable::Position::new(xid.parse().unwrap(), seq as u64).to_string()
        })
        .collect();
    // The last four: the seed's five entries were published before the server started.
    let ours = &published[published.len() - 4..];
    // From a position before the server started (the seed's last entry): older than
    // the hub, so on a durable subscription of its own. It also waits until they are
    // deliverable.
    let ids = http::change_ids(
        live.addr(),
        &format!("/api/events?after={}", published[4]),
        None,
        4,
    )
    .await;
    assert_eq!(ids, ours);
    // After the first entry of the three-change transaction: from the hub's ring, the
    // other two (a batch cut in the middle), then the 4th.
    let ids = http::change_ids(live.addr(), "/api/events", Some(&ours[0]), 3).await;
    assert_eq!(ids, &ours[1..]);
    live.stop().await.expect("stop");
}

/// The page's first position is `(xmin - 1, u64::MAX)`; the durable reader used to send
/// the sequence as `u64 as i64` (-1), which put every entry of that transaction after it.
#[tokio::test]
async fn the_largest_sequence_is_after_every_entry_of_its_transaction() {
    let url = shared_url();
    let mut db = admin(&url).await;
    pglisten::durable::install(&db).await.unwrap();
    let channel = unique("live_max_seq");
    let tx = db.transaction().await.unwrap();
    let first = pglisten::durable::publish(&tx, &channel, "first")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let listener = pglisten::Listener::connect(&url).await.unwrap();
    let after = pglisten::durable::Position::new(first.transaction_id(), u64::MAX);
    let mut entries = listener
        .subscribe_durable(&channel, pglisten::durable::Cursor::After(after))
        .await
        .unwrap();
    pglisten::durable::publish(&db, &channel, "second")
        .await
        .unwrap();
    let entry = loop {
        let event = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut entries))
            .await
            .expect("an entry")
            .expect("the stream goes on");
        if let Some(entry) = event.into_notification() {
            break entry;
        }
    };
    assert_eq!(
        entry.payload(),
        "second",
        "an entry at or before the cursor came"
    );
    listener.shutdown().await;
}

/// Changes made while a browser is not reading: more than the hub's ring holds (1024
/// batches), each large (6 KB), so its socket and the server's buffers fill long
/// before the last.
const BEHIND: usize = 2000;

/// The index `k` of a change made by [`fall_behind`] (its name starts with `k`, five
/// digits), from an event's data.
fn index_of(data: &str) -> usize {
    data.split_once(r#""name" : ""#)
        .and_then(|(_, rest)| rest.get(..5))
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| panic!("not a change made by the test: {data:.80}"))
}

/// Makes [`BEHIND`] changes, one transaction each, each seen by `witness` (a browser
/// that keeps reading) before the next is made: each is a batch of its own on the
/// hub's broadcast.
async fn fall_behind(db: &mut Client, witness: &mut http::EventStream) {
    let padding = "x".repeat(6000);
    for k in 0..BEHIND {
        server::apply(db, &[set(1, &format!("{k:05} {padding}"), k as i32)])
            .await
            .expect("change");
        let event = witness.next().await.expect("the witness's stream goes on");
        assert_eq!(event.kind, "change", "the witness got {event:?}");
        assert_eq!(index_of(&event.data), k, "the witness missed a change");
    }
}

/// The snapshot's position, for `/api/events?after=`.
async fn snapshot_position(addr: SocketAddr) -> String {
    let (status, snapshot) = http::get(addr, "/api/snapshot", &[]).await;
    assert_eq!(status, 200, "{snapshot}");
    snapshot
        .split_once(r#""after":""#)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(after, _)| after.to_owned())
        .unwrap_or_else(|| panic!("no position in {snapshot}"))
}

/// A server in `mode`, and two browsers that joined at the start: `stuck` (a 4 KiB
/// receive buffer, not read yet) and `witness` (read through all [`BEHIND`] changes,
/// made by [`fall_behind`]). The cluster and the database connection come along, to
/// live as long as the rest.
struct FellBehind {
    _cluster: pglisten_testkit::Cluster,
    _db: Client,
    live: server::Server,
    stuck: http::EventStream,
    witness: http::EventStream,
}

async fn one_browser_behind(mode: Mode) -> FellBehind {
    let (cluster, mut db, live) = serve(mode).await;
    let addr = live.addr();
    let path = match mode {
        Mode::Durable => format!("/api/events?after={}", snapshot_position(addr).await),
        Mode::Plain => "/api/events".to_owned(),
    };
    let stuck = http::EventStream::open(addr, &path, 4096).await;
    let mut witness = http::EventStream::open(addr, &path, 1 << 20).await;
    fall_behind(&mut db, &mut witness).await;
    FellBehind {
        _cluster: cluster,
        _db: db,
        live,
        stuck,
        witness,
    }
}

/// A browser that stops reading while more changes are made than the hub's ring holds
/// falls behind the broadcast; in durable mode it is moved to a durable subscription of
/// its own, and once it reads again it gets every change, in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_that_falls_behind_the_hub_misses_nothing_in_durable_mode() {
    let mut behind = one_browser_behind(Mode::Durable).await;
    for k in 0..BEHIND {
        let event = behind
            .stuck
            .next()
            .await
            .unwrap_or_else(|| panic!("the stream ended before change {k}"));
        assert_eq!(event.kind, "change", "{event:?}");
        assert!(event.id.is_some(), "a durable change without its position");
        assert_eq!(
            index_of(&event.data),
            k,
            "the browser that fell behind missed or repeated a change"
        );
    }
    assert_eq!(
        behind.live.fell_behind(),
        1,
        "the browser never fell behind the hub: this test did not test that path"
    );
    drop((behind.stuck, behind.witness));
    behind.live.stop().await.expect("stop");
}

/// The same in plain mode: the browser that falls behind gets the changes it had in
/// order, then `reload` (the gap, announced) before anything after the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_that_falls_behind_the_hub_is_told_to_reload_in_plain_mode() {
    let mut behind = one_browser_behind(Mode::Plain).await;
    let mut next = 0;
    loop {
        let event = behind.stuck.next().await.expect("the stream goes on");
        match event.kind.as_str() {
            "reload" => break,
            "change" => {
                assert_eq!(
                    index_of(&event.data),
                    next,
                    "a change was skipped without a reload"
                );
                next += 1;
                assert!(
                    next < BEHIND,
                    "every change came: the browser never fell behind the hub"
                );
            }
            _ => panic!("unexpected {event:?}"),
        }
    }
    assert_eq!(behind.live.fell_behind(), 1);
    // Closed first: the server still has the changes after the gap to write to it, and
    // a graceful stop would wait for them (up to `STOP_GRACE`).
    drop((behind.stuck, behind.witness));
    behind.live.stop().await.expect("stop");
}

/// A browser that stopped reading keeps its response's last write waiting; stopping the
/// server must not wait for it past the grace (it hung for ever before the grace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_does_not_wait_for_a_browser_that_stopped_reading() {
    let behind = one_browser_behind(Mode::Durable).await;
    drop(behind.witness);
    tokio::time::timeout(
        server::STOP_GRACE + Duration::from_secs(20),
        behind.live.stop(),
    )
    .await
    .expect("stop waited for the browser that stopped reading")
    .expect("stop");
    drop(behind.stuck);
}
