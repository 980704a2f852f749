//! Several hosts in one connection string: tried in order on every (re)connect, and a
//! standby is never used (LISTEN cannot run there). `Reconnected` names the host.

use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use pglisten::{ErrorKind, Event, Listener, ReconnectReport, Subscription};
use pglisten_testkit::{Cluster, StopMode};

/// A port on 127.0.0.1 where nothing listens (it was free a moment ago).
fn closed_port() -> u16 {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("addr").port()
}

fn url_for(ports: &[u16]) -> String {
    let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    format!("postgres://postgres@{}/postgres", hosts.join(","))
}

async fn next_reconnected(sub: &mut Subscription) -> ReconnectReport {
    let (_, event) = until(sub, |e| matches!(e, Event::Reconnected(_))).await;
    match event {
        Event::Reconnected(report) => report,
        _ => unreachable!(),
    }
}

/// A cluster started in recovery (`standby.signal`): it accepts read-only connections
/// and `pg_is_in_recovery()` is true.
async fn standby() -> Cluster {
    blocking(|| {
        Cluster::builder()
            .file("standby.signal", b"")
            .start()
            .expect("could not start a standby cluster")
    })
    .await
}

#[tokio::test]
async fn the_second_host_is_used_when_the_first_is_down() {
    let cluster = own_cluster().await;
    let url = url_for(&[closed_port(), cluster.port()]);
    let listener = Listener::builder(&url)
        .backoff(fast_backoff_up_to(Duration::from_millis(300)))
        .connect_lazy()
        .unwrap();
    let channel = unique("failover_first_down");
    let mut sub = listener.subscribe([&channel]).await.unwrap();
    let report = next_reconnected(&mut sub).await;
    assert_eq!(report.host(), format!("127.0.0.1:{}", cluster.port()));
    listener.notify(&channel, "via the second").await.unwrap();
    assert_eq!(
        next_notification(&mut sub).await.payload(),
        "via the second"
    );
    // The eager connect takes the same path.
    Listener::connect(&url).await.unwrap().shutdown().await;
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_fails_over_to_the_next_host() {
    let first = Arc::new(own_cluster().await);
    let second = own_cluster().await;
    let url = url_for(&[first.port(), second.port()]);
    let listener = Listener::builder(&url)
        .backoff(fast_backoff_up_to(Duration::from_millis(300)))
        .connect_lazy()
        .unwrap();
    let channel = unique("failover_reconnect");
    let mut sub = listener.subscribe([&channel]).await.unwrap();
    assert_eq!(
        next_reconnected(&mut sub).await.host(),
        format!("127.0.0.1:{}", first.port())
    );

    let f = first.clone();
    blocking(move || f.stop(StopMode::Fast)).await.unwrap();
    let (_, lost) = until(&mut sub, |e| matches!(e, Event::Error(_))).await;
    let Event::Error(lost) = lost else {
        unreachable!()
    };
    assert_eq!(lost.kind(), ErrorKind::ConnectionLost, "{lost}");
    let report = next_reconnected(&mut sub).await;
    assert_eq!(report.host(), format!("127.0.0.1:{}", second.port()));
    let admin = admin(&second.url()).await;
    send(&admin, &channel, "from the second").await;
    assert_eq!(
        next_notification(&mut sub).await.payload(),
        "from the second"
    );
    listener.shutdown().await;
}

#[tokio::test]
async fn a_standby_is_refused_with_a_clear_error_and_the_primary_is_used() {
    let standby = standby().await;
    let primary = own_cluster().await;
    let admin_standby = admin(&standby.url()).await;
    let row = admin_standby
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the test standby is in recovery");

    let error = Listener::connect(&standby.url()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Connect, "{error}");
    let text = error_report(&error);
    assert!(text.contains("standby"), "{text}");
    assert!(
        text.contains(&format!("127.0.0.1:{}", standby.port())),
        "{text}"
    );

    let url = url_for(&[standby.port(), primary.port()]);
    let listener = Listener::builder(&url)
        .backoff(fast_backoff_up_to(Duration::from_millis(300)))
        .connect_lazy()
        .unwrap();
    let channel = unique("failover_standby");
    let mut sub = listener.subscribe([&channel]).await.unwrap();
    let report = next_reconnected(&mut sub).await;
    assert_eq!(report.host(), format!("127.0.0.1:{}", primary.port()));
    listener.notify(&channel, "on the primary").await.unwrap();
    assert_eq!(
        next_notification(&mut sub).await.payload(),
        "on the primary"
    );
    listener.shutdown().await;

    // Both unusable: one error that names each host's problem.
    let dead = closed_port();
    let error = Listener::connect(&url_for(&[standby.port(), dead]))
        .await
        .unwrap_err();
    let text = error_report(&error);
    assert!(text.contains("none of the 2 hosts"), "{text}");
    assert!(text.contains("standby"), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{dead}")), "{text}");
}

/// A TCP server that accepts connections and never says a word (a hung server, or a
/// proxy in front of a dead one).
async fn silent_server() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_host_gets_its_own_connect_timeout() {
    const MARGIN: Duration = Duration::from_millis(2500);
    let cluster = own_cluster().await;
    let (silent, server) = silent_server().await;
    // 12 s is above the builder's default of 10 s: that must not cut the failover short.
    for seconds in [3, 12] {
        let url = format!(
            "postgres://postgres@127.0.0.1:{silent},127.0.0.1:{}/postgres?connect_timeout={seconds}",
            cluster.port()
        );
        let bound = Duration::from_secs(seconds);
        let started = std::time::Instant::now();
        let listener = Listener::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connect_timeout={seconds}: {}", error_report(&e)));
        let took = started.elapsed();
        assert!(
            took >= bound,
            "connect_timeout={seconds}: the first host was not waited for ({took:?})"
        );
        // The self-check's second connection goes straight to the host reached, not
        // through the silent one again.
        assert!(
            took <= bound + MARGIN,
            "connect_timeout={seconds}: the second host was reached after {took:?}"
        );
        let channel = unique("per_host_timeout");
        let mut sub = listener.subscribe([&channel]).await.unwrap();
        listener.notify(&channel, "second host").await.unwrap();
        assert_eq!(next_notification(&mut sub).await.payload(), "second host");
        listener.shutdown().await;
    }
    server.abort();
}

/// Where the listener's backend sees its client: `None` over a Unix socket.
async fn client_addr(admin_url: &str, pid: i32) -> Option<String> {
    let admin = pglisten_testkit::admin(admin_url).await;
    let row = admin
        .query_one(
            "SELECT client_addr::text FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .expect("pg_stat_activity");
    row.get(0)
}

#[tokio::test]
async fn with_no_host_the_default_unix_socket_is_used_where_the_server_has_one() {
    // A server whose socket is in /tmp, one of libpq's default socket directories.
    let cluster = blocking(|| {
        Cluster::builder()
            .setting("unix_socket_directories", "/tmp")
            .start()
            .expect("could not start a cluster with its socket in /tmp")
    })
    .await;
    let url = format!("postgres://postgres@/postgres?port={}", cluster.port());
    let listener = Listener::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{}", error_report(&e)));
    let pid = listener.backend_pid().unwrap();
    assert_eq!(
        client_addr(&cluster.url(), pid).await,
        None,
        "not over the socket"
    );
    listener.shutdown().await;

    // Without a socket in those directories: TCP to localhost.
    let tcp_only = own_cluster().await;
    let url = format!("postgres://postgres@/postgres?port={}", tcp_only.port());
    let listener = Listener::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{}", error_report(&e)));
    let pid = listener.backend_pid().unwrap();
    assert_eq!(
        client_addr(&tcp_only.url(), pid).await.as_deref(),
        Some("127.0.0.1/32")
    );
    listener.shutdown().await;
}

#[tokio::test]
async fn a_unix_socket_with_no_server_is_a_connect_error_naming_the_socket_file() {
    let dir = std::env::temp_dir().join(unique("no_server_here"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("host={} port=5999 user=postgres", dir.display());
    let error = Listener::connect(&url).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Connect, "{error}");
    let socket = dir.join(".s.PGSQL.5999");
    assert!(
        error.to_string().contains(&socket.display().to_string()),
        "{error}"
    );
    let _ = std::fs::remove_dir(&dir);
}

#[test]
fn an_abstract_socket_host_is_refused_with_a_clear_error() {
    let error = Listener::builder("host=@pgsocket user=app")
        .connect_lazy()
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Config);
    assert!(error.to_string().contains("abstract"), "{error}");
}

#[tokio::test]
async fn random_load_balancing_reaches_named_hosts_through_their_addresses() {
    // A name (resolved and tried address by address) and a down host, in random order:
    // every connect reaches the live one.
    let cluster = own_cluster().await;
    let url = format!(
        "postgres://postgres@localhost:{},127.0.0.1:{}/postgres?load_balance_hosts=random",
        cluster.port(),
        closed_port()
    );
    for _ in 0..4 {
        let listener = Listener::builder(&url)
            .self_check(false)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{}", error_report(&e)));
        let channel = unique("random_hosts");
        let mut sub = listener.subscribe([&channel]).await.unwrap();
        listener.notify(&channel, "reached").await.unwrap();
        assert_eq!(next_notification(&mut sub).await.payload(), "reached");
        listener.shutdown().await;
    }
}
