//! A LISTEN connection is idle by design: a server-wide `idle_session_timeout` (14+)
//! must not end it. PostgreSQL 13 has no such setting, and pglisten must not try to
//! change it there.

use std::time::Duration;

use crate::support::*;
use pglisten::Listener;

#[tokio::test]
async fn idle_session_timeout_does_not_end_the_listener_session() {
    let major = blocking(crate::versions::server_major).await;
    if major < 14 {
        skipped(
            "idle_session_timeout_does_not_end_the_listener_session",
            &format!("idle_session_timeout needs PostgreSQL 14+, the server is {major}"),
        );
        return;
    }
    let cluster = blocking(|| {
        pglisten_testkit::Cluster::builder()
            .setting("idle_session_timeout", "1s")
            .start()
    })
    .await
    .expect("cluster");
    let url = cluster.url();
    // A plain session on this server is ended after 1 s idle: the setting is live.
    let (_plain, connection) = pglisten_testkit::raw(&url).await;
    tokio::time::timeout(WAIT, connection)
        .await
        .expect("the server ends an idle ordinary session")
        .expect_err("it ends it with an error (idle-session timeout)");

    let listener = Listener::connect(&url).await.unwrap();
    let channel = unique("idle");
    let mut sub = listener.subscribe([&channel]).await.unwrap();
    let pid = listener.backend_pid().unwrap();
    // The scenario: stay idle for well over the server's timeout (heartbeats are 10 s
    // apart by default, so nothing is sent meanwhile).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !has_ready_event(&mut sub),
        "no error: the session was not ended"
    );
    assert_eq!(listener.backend_pid(), Some(pid));
    let sender = admin(&url).await;
    send(&sender, &channel, "still listening").await;
    assert_eq!(
        next_notification(&mut sub).await.payload(),
        "still listening"
    );
}

#[tokio::test]
async fn a_server_without_idle_session_timeout_is_served() {
    let major = blocking(crate::versions::server_major).await;
    if major >= 14 {
        skipped(
            "a_server_without_idle_session_timeout_is_served",
            &format!("every server from 14 on has idle_session_timeout; this one is {major}"),
        );
        return;
    }
    let cluster = own_cluster().await;
    let url = cluster.url();
    let sender = admin(&url).await;
    // The setting really is absent here: pglisten's set-up must not touch it.
    let row = sender
        .query_one(
            "SELECT count(*) FROM pg_settings WHERE name = 'idle_session_timeout'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0);
    assert!(
        sender
            .simple_query("SHOW idle_session_timeout")
            .await
            .is_err(),
        "SHOW of an unknown setting fails on this server"
    );

    // Connecting (set-up query and delivery self-check included) works, and so does
    // listening.
    let listener = Listener::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{}", error_report(&e)));
    let channel = unique("idle13");
    let mut sub = listener.subscribe([&channel]).await.unwrap();
    send(&sender, &channel, "served").await;
    assert_eq!(next_notification(&mut sub).await.payload(), "served");
    listener.shutdown().await;
}
