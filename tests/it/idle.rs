//! A LISTEN connection is idle by design: a server-wide `idle_session_timeout` must not
//! end it.

use std::time::Duration;

use crate::support::*;
use pglisten::Listener;

#[tokio::test]
async fn idle_session_timeout_does_not_end_the_listener_session() {
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
