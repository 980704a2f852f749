//! Connecting, shutting down and dropping.

use std::time::{Duration, Instant};

use crate::support::*;
use futures::StreamExt;
use futures::stream::FusedStream;
use pglisten::{ErrorKind, Event, Listener, Subscription};

#[test]
fn public_types_are_send_sync_unpin_and_static() {
    fn check<T: Send + Sync + Unpin + 'static>() {}
    check::<Listener>();
    check::<pglisten::ListenerBuilder>();
    check::<Subscription>();
    check::<Event>();
    check::<pglisten::Notification>();
    check::<pglisten::Error>();
    check::<pglisten::ErrorKind>();
    check::<pglisten::ReconnectReport>();
    check::<pglisten::Backoff>();
    check::<pglisten::Channel>();
    check::<pglisten::SubscriptionStats>();
    check::<pglisten::durable::DurableSubscription>();
    check::<pglisten::durable::Position>();
    check::<pglisten::durable::Cursor>();
    check::<pglisten::durable::Journal>();
    check::<pglisten::durable::DurableStats>();
    fn copy<T: Copy + Ord + std::fmt::Debug + std::fmt::Display + std::str::FromStr>() {}
    copy::<pglisten::durable::Position>();
    fn clone<T: Clone>() {}
    clone::<Listener>();
    clone::<pglisten::Error>();
    clone::<pglisten::Notification>();
    clone::<pglisten::Channel>();
}

#[tokio::test]
async fn shutdown_ends_every_stream_after_its_buffered_events() {
    let url = shared_url();
    let listener = Listener::connect(&url).await.unwrap();
    let channel = unique("shutdown");
    let mut unread = listener.subscribe([&channel]).await.unwrap();
    let mut reader = listener.subscribe([&channel]).await.unwrap();
    for i in 0..3 {
        listener.notify(&channel, &i.to_string()).await.unwrap();
    }
    for i in 0..3 {
        assert_eq!(
            next_notification(&mut reader).await.payload(),
            i.to_string()
        );
    }
    let pid = listener.backend_pid().expect("connected");
    listener.shutdown().await;
    assert!(listener.is_closed());
    // Buffered events first, then the end.
    for i in 0..3 {
        assert_eq!(
            next_notification(&mut unread).await.payload(),
            i.to_string()
        );
    }
    assert!(
        tokio::time::timeout(WAIT, unread.next())
            .await
            .unwrap()
            .is_none()
    );
    assert!(unread.is_terminated());
    assert!(
        tokio::time::timeout(WAIT, reader.next())
            .await
            .unwrap()
            .is_none()
    );
    // Later calls fail with Closed; shutdown again returns at once.
    let err = listener.subscribe([&channel]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed);
    let err = listener.notify(&channel, "late").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed);
    tokio::time::timeout(WAIT, listener.shutdown())
        .await
        .unwrap();
    tokio::time::timeout(WAIT, listener.clone().shutdown())
        .await
        .unwrap();
    // The connection was closed.
    let admin = admin(&url).await;
    eventually("the listener's backend is gone", || async {
        !backend_alive(&admin, pid).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_closes_the_backend() {
    let url = shared_url();
    let listener = Listener::connect(&url).await.unwrap();
    let clone = listener.clone();
    let channel = unique("drop");
    let mut sub = listener.subscribe([&channel]).await.unwrap();
    let pid = listener.backend_pid().expect("connected");
    let admin = admin(&url).await;
    assert!(backend_alive(&admin, pid).await);
    drop(listener);
    drop(clone);
    // The subscription alone keeps the task (and its connection) working.
    send(&admin, &channel, "still here").await;
    assert_eq!(next_notification(&mut sub).await.payload(), "still here");
    drop(sub);
    eventually(
        "the dropped listener's backend disappears from pg_stat_activity",
        || async { !backend_alive(&admin, pid).await },
    )
    .await;
}

#[test]
fn dropping_a_subscription_after_its_runtime_is_gone_does_not_panic() {
    let url = shared_url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (listener, sub) = runtime.block_on(async {
        let listener = Listener::connect(&url).await.unwrap();
        let sub = listener.subscribe([unique("orphan")]).await.unwrap();
        (listener, sub)
    });
    drop(runtime);
    drop(sub);
    drop(listener);
}

#[test]
fn a_subscription_ends_when_its_runtime_shuts_down() {
    let url = shared_url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut sub = runtime.block_on(async {
        let listener = Listener::connect(&url).await.unwrap();
        listener.subscribe([unique("orphan")]).await.unwrap()
    });
    drop(runtime);
    // The task was dropped with its runtime: the stream ends instead of hanging.
    let next = futures::executor::block_on(sub.next());
    assert!(next.is_none());
}

#[tokio::test]
async fn closed_port_fails_connect_quickly_with_a_clear_error() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let started = Instant::now();
    let url = format!("postgres://app:hunter2@127.0.0.1:{port}/app");
    let err = Listener::builder(&url)
        .connect_timeout(Duration::from_secs(60))
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
    let text = error_report(&err);
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("hunter2") && !format!("{err:?}").contains("hunter2"));
    // Refused at once, not after the 60 s timeout or a retry loop.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn wrong_password_fails_connect_with_authentication_error() {
    let cluster = blocking(|| {
        pglisten_testkit::Cluster::builder()
            .hba(&[
                "local all all trust",
                "host all postgres 127.0.0.1/32 trust",
                "host all all 127.0.0.1/32 scram-sha-256",
            ])
            .init_sql("SET password_encryption = 'scram-sha-256'; CREATE ROLE app LOGIN PASSWORD 'right-pass';")
            .start()
    })
    .await
    .expect("cluster");
    let good = cluster.url_with("app", Some("right-pass"), "postgres");
    let listener = Listener::connect(&good)
        .await
        .expect("the right password works");
    listener.shutdown().await;

    let bad = cluster.url_with("app", Some("wrong-pass"), "postgres");
    let err = Listener::builder(&bad)
        .connect_timeout(Duration::from_secs(60))
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
    for shown in [error_report(&err), format!("{err:?}")] {
        assert!(!shown.contains("wrong-pass"), "password leaked: {shown}");
    }
    let builder = Listener::builder(&bad);
    assert!(!format!("{builder:?}").contains("wrong-pass"));
}

#[tokio::test]
async fn malformed_connection_strings_are_config_errors() {
    for bad in [
        "postgres://app@db:notaport/app",
        "host=db port=",
        "sslmode=bogus host=db",
    ] {
        let err = Listener::connect(bad).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{bad}: {err}");
    }
    let err = Listener::builder("postgres://app@db/app")
        .queue_capacity(0)
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(error_report(&err).contains("queue_capacity"));
}

#[test]
fn outside_a_runtime_the_listener_runs_on_its_own_thread() {
    use futures::executor::block_on;
    // No tokio runtime anywhere in this test: the listener brings its own.
    let url = shared_url();
    let channel = unique("no_runtime");
    let listener = Listener::builder(&url).connect_lazy().unwrap();
    let events = block_on(listener.subscribe([&channel])).unwrap();
    let (events, first) = on_plain_thread(move || {
        let mut events = events;
        let first = block_on(events.next());
        (events, first)
    });
    assert!(matches!(first, Some(Event::Reconnected(_))), "{first:?}");
    block_on(listener.notify(&channel, "from a plain thread")).unwrap();
    let (events, note) = on_plain_thread(move || {
        let mut events = events;
        let note = block_on(events.next());
        (events, note)
    });
    let note = note
        .and_then(Event::into_notification)
        .expect("a notification");
    assert_eq!(note.payload(), "from a plain thread");
    block_on(listener.shutdown());
    let (_, end) = on_plain_thread(move || {
        let mut events = events;
        let end = block_on(events.next());
        (events, end)
    });
    assert!(end.is_none(), "{end:?}");
}

#[test]
fn caller_runtime_placement_outside_a_runtime_is_an_error_not_a_panic() {
    let err = Listener::builder("postgres://app@127.0.0.1:1/app")
        .task_placement(pglisten::TaskPlacement::CallerRuntime)
        .connect_lazy()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("CallerRuntime"), "{err}");
}

#[tokio::test]
async fn a_password_file_supplies_the_password_and_is_ignored_when_others_may_read_it() {
    use std::os::unix::fs::PermissionsExt;
    let cluster = blocking(|| {
        pglisten_testkit::Cluster::builder()
            .hba(&[
                "local all postgres trust",
                "host all all 127.0.0.1/32 scram-sha-256",
            ])
            .init_sql("CREATE ROLE filed LOGIN PASSWORD 'from-the-file:with\\colon';")
            .start()
            .expect("cluster")
    })
    .await;
    let dir = std::env::temp_dir().join(unique("pgpass"));
    std::fs::create_dir_all(&dir).unwrap();
    let passfile = dir.join("pgpass");
    let port = cluster.port();
    std::fs::write(
        &passfile,
        format!(
            "# a comment\n\
             otherhost:*:*:filed:wrong\n\
             127.0.0.1:{port}:postgres:filed:from-the-file\\:with\\\\colon\n"
        ),
    )
    .unwrap();
    let url = format!(
        "postgres://filed@127.0.0.1:{port}/postgres?passfile={}",
        passfile.display()
    );

    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let listener = Listener::builder(&url)
        .self_check(false)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{}", error_report(&e)));
    listener.shutdown().await;

    // Readable by others: ignored, as libpq does, and the error says where to look.
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o644)).unwrap();
    let error = Listener::builder(&url)
        .self_check(false)
        .connect()
        .await
        .unwrap_err();
    assert_eq!(
        error.kind(),
        ErrorKind::Authentication,
        "{}",
        error_report(&error)
    );
    assert!(error.to_string().contains("password file"), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_service_file_supplies_host_port_dbname_and_sslmode() {
    let cluster = own_cluster().await;
    let dir = std::env::temp_dir().join(unique("pgservice"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pg_service.conf");
    std::fs::write(
        &file,
        format!(
            "# services\n[other]\nhost=nowhere.invalid\n\n\
             [events]\nhost=127.0.0.1\nport={}\ndbname=postgres\nsslmode=disable\n",
            cluster.port()
        ),
    )
    .unwrap();
    let listener = Listener::connect(&format!(
        "service=events servicefile={} user=postgres",
        file.display()
    ))
    .await
    .unwrap_or_else(|e| panic!("{}", error_report(&e)));
    let channel = unique("service");
    let mut sub = listener.subscribe([&channel]).await.unwrap();
    listener.notify(&channel, "via the service").await.unwrap();
    assert_eq!(
        next_notification(&mut sub).await.payload(),
        "via the service"
    );
    listener.shutdown().await;

    // The connection string wins over the service: a wrong port makes it fail.
    let overridden = Listener::builder(&format!(
        "service=events servicefile={} user=postgres port=1",
        file.display()
    ))
    .connect_timeout(Duration::from_secs(2))
    .connect()
    .await
    .unwrap_err();
    assert_eq!(
        overridden.kind(),
        ErrorKind::Connect,
        "{}",
        error_report(&overridden)
    );

    // An unknown service is named.
    let missing = Listener::builder(&format!(
        "service=nosuch servicefile={} user=postgres",
        file.display()
    ))
    .connect_lazy()
    .unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::Config);
    assert!(missing.to_string().contains("`nosuch`"), "{missing}");
    std::fs::remove_dir_all(&dir).unwrap();
}
