//! Bad input, table-driven: each case gets its documented error kind, and a working
//! listener keeps working after every one of them.

use std::time::Duration;

use crate::support::*;
use pglisten::{ErrorKind, Event, Listener, ListenerBuilder, MAX_CHANNEL_BYTES, Subscription};
use pglisten_testkit::{BlackHole, Cluster};

/// A cluster where `app` must give its password (`right-pass`) over TCP, while the
/// superuser is trusted.
async fn password_cluster() -> Cluster {
    blocking(|| {
        Cluster::builder()
            .hba(&[
                "local all all trust",
                "host all postgres 127.0.0.1/32 trust",
                "host all all 127.0.0.1/32 scram-sha-256",
            ])
            .init_sql(
                "SET password_encryption = 'scram-sha-256'; \
                 CREATE ROLE app LOGIN PASSWORD 'right-pass';",
            )
            .start()
    })
    .await
    .expect("cluster with password authentication")
}

/// A channel name of exactly `len` bytes that no other test uses.
fn channel_of_len(len: usize) -> String {
    let mut name = unique("len");
    assert!(name.len() <= len);
    while name.len() < len {
        name.push('x');
    }
    name
}

/// The listener still subscribes, sends and delivers.
async fn assert_working(listener: &Listener, control: &mut Subscription, case: &str) {
    let channel = control.channels().next().expect("one channel").to_owned();
    listener
        .notify(&channel, case)
        .await
        .unwrap_or_else(|e| panic!("after {case}: notify failed: {e}"));
    match next_event(control).await {
        Event::Notification(n) => assert_eq!(n.payload(), case),
        other => panic!("after {case}: {other:?}"),
    }
}

enum Call {
    Subscribe(Vec<String>),
    Notify(String, String),
    /// `pglisten::notify` through a client of the caller's own.
    NotifyOwn(String, String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_channels_and_payloads_get_their_error_and_the_listener_keeps_working() {
    let url = shared_url();
    let listener = Listener::connect(&url).await.unwrap();
    let mut control = listener.subscribe([unique("control")]).await.unwrap();
    let own = admin(&url).await;
    let good = unique("good");
    let longest = channel_of_len(MAX_CHANNEL_BYTES);
    let too_long = channel_of_len(MAX_CHANNEL_BYTES + 1);

    use Call::*;
    use ErrorKind::*;
    let cases: Vec<(&str, Call, Option<ErrorKind>)> = vec![
        (
            "empty channel",
            Subscribe(vec![s("")]),
            Some(InvalidChannel),
        ),
        ("no channel at all", Subscribe(vec![]), Some(InvalidChannel)),
        (
            "NUL in channel",
            Subscribe(vec![s("a\0b")]),
            Some(InvalidChannel),
        ),
        (
            "64-byte channel",
            Subscribe(vec![too_long.clone()]),
            Some(InvalidChannel),
        ),
        (
            "64 bytes in 32 chars",
            Subscribe(vec!["é".repeat(32)]),
            Some(InvalidChannel),
        ),
        (
            "one bad among good",
            Subscribe(vec![good.clone(), s("")]),
            Some(InvalidChannel),
        ),
        ("63-byte channel", Subscribe(vec![longest.clone()]), None),
        (
            "notify on empty channel",
            Notify(s(""), s("p")),
            Some(InvalidChannel),
        ),
        (
            "notify on NUL channel",
            Notify(s("a\0b"), s("p")),
            Some(InvalidChannel),
        ),
        (
            "notify on 64-byte channel",
            Notify(too_long.clone(), s("p")),
            Some(InvalidChannel),
        ),
        (
            "payload of 8000 bytes",
            Notify(good.clone(), "p".repeat(8000)),
            Some(InvalidPayload),
        ),
        (
            "payload of 100000 bytes",
            Notify(good.clone(), "p".repeat(100_000)),
            Some(InvalidPayload),
        ),
        (
            "NUL in payload",
            Notify(good.clone(), s("a\0b")),
            Some(InvalidPayload),
        ),
        (
            "payload of 7999 bytes",
            Notify(good.clone(), "p".repeat(7999)),
            None,
        ),
        (
            "own client, 8000 bytes",
            NotifyOwn(good.clone(), "p".repeat(8000)),
            Some(InvalidPayload),
        ),
        (
            "own client, NUL payload",
            NotifyOwn(good.clone(), s("\0")),
            Some(InvalidPayload),
        ),
        (
            "own client, 64-byte channel",
            NotifyOwn(too_long.clone(), s("p")),
            Some(InvalidChannel),
        ),
    ];

    for (name, call, expected) in cases {
        let result = match &call {
            Subscribe(channels) => listener.subscribe(channels).await.map(drop),
            Notify(channel, payload) => listener.notify(channel, payload).await,
            NotifyOwn(channel, payload) => pglisten::notify(&own, channel, payload).await,
        };
        match (result, expected) {
            (Ok(()), None) => {}
            (Err(e), Some(kind)) => assert_eq!(e.kind(), kind, "{name}: {e}"),
            (Ok(()), Some(kind)) => panic!("{name}: accepted, expected {kind:?}"),
            (Err(e), None) => panic!("{name}: refused: {e}"),
        }
        assert_working(&listener, &mut control, name).await;
    }

    // The 63-byte name is used exactly as given, end to end.
    let mut longest_sub = listener.subscribe([&longest]).await.unwrap();
    assert!(
        listener
            .listening_channels()
            .await
            .unwrap()
            .contains(&longest)
    );
    send(&own, &longest, "63").await;
    let n = next_notification(&mut longest_sub).await;
    assert_eq!((n.channel(), n.payload()), (longest.as_str(), "63"));
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_connection_settings_get_their_error_and_leave_other_listeners_alone() {
    let cluster = password_cluster().await;
    let port = cluster.port();
    let listener = Listener::connect(&cluster.url()).await.unwrap();
    let mut control = listener.subscribe([unique("control")]).await.unwrap();
    let closed_port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let hole = BlackHole::start().await.expect("black hole");
    let quick = Duration::from_secs(1);

    let b = |url: String| Listener::builder(&url);
    let url = cluster.url();
    let at_url =
        |user: &str, password: Option<&str>, db: &str| cluster.url_with(user, password, db);
    use ErrorKind::*;
    use Found::*;
    let cases: Vec<(&str, ListenerBuilder, ErrorKind, Found)> = vec![
        (
            "port that is not a number",
            b(s("postgres://app@db:notaport/app")),
            Config,
            Settings,
        ),
        ("empty port", b(s("host=db port=")), Config, Settings),
        (
            "not a connection string",
            b(s("this is not a connection string")),
            Config,
            Settings,
        ),
        (
            "unknown sslmode",
            b(s("sslmode=bogus host=db")),
            Config,
            Settings,
        ),
        (
            "unknown key in a URL",
            b(format!(
                "postgres://postgres@127.0.0.1:{port}/postgres?bogus_key=1"
            )),
            Config,
            Settings,
        ),
        (
            "unknown key in key=value",
            b(format!(
                "host=127.0.0.1 port={port} user=postgres bogus_key=1"
            )),
            Config,
            Settings,
        ),
        (
            "zero queue capacity",
            b(url.clone()).queue_capacity(0),
            Config,
            Settings,
        ),
        (
            "zero connect timeout",
            b(url.clone()).connect_timeout(Duration::ZERO),
            Config,
            Settings,
        ),
        (
            "zero heartbeat interval",
            b(url.clone()).heartbeat(Duration::ZERO, quick),
            Config,
            Settings,
        ),
        (
            "zero heartbeat timeout",
            b(url.clone()).heartbeat(quick, Duration::ZERO),
            Config,
            Settings,
        ),
        (
            "nothing listens on the port",
            b(format!(
                "postgres://postgres@127.0.0.1:{closed_port}/postgres"
            )),
            Connect,
            Connecting,
        ),
        (
            "unreachable host (connection attempts are dropped)",
            b(format!(
                "postgres://postgres@127.0.0.1:{}/postgres",
                hole.port()
            ))
            .connect_timeout(quick),
            Timeout,
            Connecting,
        ),
        (
            "wrong password",
            b(at_url("app", Some("wrong-pass"), "postgres")),
            Authentication,
            Connecting,
        ),
        // The server asks for a password the string does not have: an authentication
        // failure whose message says where a password can come from.
        (
            "no password",
            b(at_url("app", None, "postgres")),
            Authentication,
            Connecting,
        ),
        (
            "unknown user",
            b(at_url("nobody", Some("x"), "postgres")),
            Authentication,
            Connecting,
        ),
        (
            "unknown database",
            b(at_url("postgres", None, "no_such_db")),
            Connect,
            Connecting,
        ),
    ];

    for (name, builder, kind, found) in cases {
        let err = tokio::time::timeout(WAIT, builder.clone().connect())
            .await
            .unwrap_or_else(|_| panic!("{name}: connect did not return within {WAIT:?}"))
            .err()
            .unwrap_or_else(|| panic!("{name}: connected, expected {kind:?}"));
        assert_eq!(err.kind(), kind, "{name}: {err}");
        for shown in [error_report(&err), format!("{err:?}")] {
            assert!(
                !shown.contains("wrong-pass"),
                "{name}: password shown: {shown}"
            );
        }
        // connect_lazy refuses bad settings at once; what only connecting finds out is
        // reported on the stream, which goes on.
        match (builder.connect_lazy(), found) {
            (Err(e), Settings) => assert_eq!(e.kind(), kind, "{name}: {e}"),
            (Ok(lazy), Connecting) => {
                let mut sub = lazy.subscribe([unique("lazy")]).await.unwrap();
                for _ in 0..2 {
                    match next_event(&mut sub).await {
                        Event::Error(e) => assert_eq!(e.kind(), kind, "{name} (lazy): {e}"),
                        other => panic!("{name} (lazy): {other:?}"),
                    }
                }
                tokio::time::timeout(WAIT, lazy.shutdown())
                    .await
                    .unwrap_or_else(|_| panic!("{name}: shutdown of the lazy listener hung"));
            }
            (Ok(_), Settings) => panic!("{name}: connect_lazy accepted bad settings"),
            (Err(e), Connecting) => panic!("{name}: connect_lazy refused: {e}"),
        }
        assert_working(&listener, &mut control, name).await;
    }
    // The right password works on the same cluster.
    Listener::connect(&cluster.url_with("app", Some("right-pass"), "postgres"))
        .await
        .expect("the right password")
        .shutdown()
        .await;
}

/// Where a bad setting is found out.
#[derive(Clone, Copy)]
enum Found {
    /// By the builder: `connect_lazy` refuses it too.
    Settings,
    /// Only by trying to connect.
    Connecting,
}

fn s(v: &str) -> String {
    v.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_after_shutdown_fails_with_closed_and_other_listeners_keep_working() {
    let url = shared_url();
    let survivor = Listener::connect(&url).await.unwrap();
    let mut control = survivor.subscribe([unique("control")]).await.unwrap();
    let listener = Listener::connect(&url).await.unwrap();
    let channel = unique("after_shutdown");
    let mut sub = listener.subscribe([&channel]).await.unwrap();
    let clone = listener.clone();
    listener.shutdown().await;
    assert!(futures::StreamExt::next(&mut sub).await.is_none());

    for handle in [&listener, &clone] {
        let err = handle.subscribe([&channel]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Closed, "subscribe: {err}");
        let err = handle.notify(&channel, "x").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Closed, "notify: {err}");
        let err = handle.listening_channels().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Closed, "listening_channels: {err}");
        let err = handle.reconnect().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Closed, "reconnect: {err}");
        // Bad input is still reported as such: it is checked before anything else.
        let err = handle.subscribe([""]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidChannel, "{err}");
        // A second shutdown returns at once.
        tokio::time::timeout(WAIT, handle.shutdown())
            .await
            .expect("shutdown again");
        assert_working(&survivor, &mut control, "after shutdown").await;
    }
}

#[tokio::test]
async fn libpq_options_with_harmless_values_connect_and_deliver() {
    let url = shared_url();
    let separator = if url.contains('?') { '&' } else { '?' };
    for option in [
        "keepalives_count=4",
        "gssencmode=disable",
        "sslcompression=0",
        "client_encoding=UTF8",
        "ssl_min_protocol_version=TLSv1.2",
        "ssl_max_protocol_version=TLSv1.3",
        "sslcertmode=disable",
        "sslcertmode=allow",
    ] {
        let listener = Listener::connect(&format!("{url}{separator}{option}"))
            .await
            .unwrap_or_else(|e| panic!("{option}: {}", error_report(&e)));
        let channel = unique("harmless");
        let mut sub = listener.subscribe([&channel]).await.unwrap();
        listener.notify(&channel, option).await.unwrap();
        assert_eq!(next_notification(&mut sub).await.payload(), option);
        listener.shutdown().await;
    }
}
