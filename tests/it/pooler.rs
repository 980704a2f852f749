//! Behind a connection pooler: in transaction mode LISTEN "works" but notifications
//! never arrive, so the connect-time self-check must refuse it with a clear error; in
//! session mode everything works. Against a real PgBouncer.

use crate::support::*;
use pglisten::{ErrorKind, Listener};
use pglisten_testkit::{PgBouncer, PoolMode};

/// Starts a cluster and a PgBouncer in front of it, or explains why the test is skipped.
async fn bouncer(mode: PoolMode) -> Option<(pglisten_testkit::Cluster, PgBouncer)> {
    if PgBouncer::binary().is_none() {
        eprintln!("SKIPPED: pgbouncer is not installed (apt-get install pgbouncer)");
        return None;
    }
    let cluster = own_cluster().await;
    // Blocks briefly (until PgBouncer accepts connections); nothing else runs yet.
    let bouncer = PgBouncer::start(&cluster, mode).expect("start pgbouncer");
    Some((cluster, bouncer))
}

#[tokio::test]
async fn transaction_mode_pooler_is_refused_at_connect_with_a_clear_error() {
    let Some((_cluster, bouncer)) = bouncer(PoolMode::Transaction).await else {
        return;
    };
    let err = Listener::connect(&bouncer.url()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    let text = error_report(&err);
    assert!(text.contains("transaction"), "{text}");
    assert!(text.contains("pooler"), "{text}");
    // The check is what catches it: without it, connect succeeds (and would go deaf).
    let listener = Listener::builder(&bouncer.url())
        .self_check(false)
        .connect()
        .await
        .unwrap();
    listener.shutdown().await;
}

#[tokio::test]
async fn session_mode_pooler_works() {
    let Some((cluster, bouncer)) = bouncer(PoolMode::Session).await else {
        return;
    };
    let listener = Listener::connect(&bouncer.url()).await.unwrap();
    let channel = unique("pooled");
    let mut sub = listener.subscribe([&channel]).await.unwrap();
    // Sent directly to the server, from another session.
    let direct = admin(&cluster.url()).await;
    send(&direct, &channel, "through the pooler").await;
    assert_eq!(
        next_notification(&mut sub).await.payload(),
        "through the pooler"
    );
    listener.shutdown().await;
}
