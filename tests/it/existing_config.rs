//! Fitting into an application's own setup: a listener built from a
//! `tokio_postgres::Config` (`ListenerBuilder::from_config`), and one whose connections
//! the application opens itself (`ListenerBuilder::connect_with`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::support::*;
use futures::future::BoxFuture;
use pglisten::tokio_postgres::tls::NoTlsStream;
use pglisten::tokio_postgres::{self, Client, Connection, NoTls, Socket};
use pglisten::{ErrorKind, Event, Listener, ListenerBuilder};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Opening = BoxFuture<'static, Result<(Client, Connection<Socket, NoTlsStream>), BoxError>>;

/// A connect hook that opens a plain connection with `config` at each call and counts
/// its calls in `calls`; the call numbered `fail_on` fails instead, with the hook's own
/// error ("hook: network not ready").
fn plain_hook(
    config: tokio_postgres::Config,
    calls: Arc<AtomicU32>,
    fail_on: Option<u32>,
) -> impl Fn() -> Opening + Send + Sync + 'static {
    move || {
        let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
        let config = config.clone();
        Box::pin(async move {
            if fail_on == Some(call) {
                return Err(std::io::Error::other("hook: network not ready").into());
            }
            Ok(config.connect(NoTls).await?)
        })
    }
}

/// Delivers, loses its backend to `pg_terminate_backend`, announces the gap and
/// delivers again; returns the gap's report.
async fn deliver_terminate_deliver(listener: &Listener, url: &str) -> pglisten::ReconnectReport {
    let channel = unique("existing");
    let mut events = listener.subscribe([&channel]).await.unwrap();
    let client = admin(url).await;
    send(&client, &channel, "before").await;
    assert_eq!(next_notification(&mut events).await.payload(), "before");
    let pid = listener.backend_pid().expect("connected");
    client
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let report = expect_gap(&mut events).await;
    assert_ne!(listener.backend_pid(), Some(pid), "a new backend");
    send(&client, &channel, "after").await;
    assert_eq!(next_notification(&mut events).await.payload(), "after");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_from_a_driver_config_delivers_and_reconnects() {
    let url = shared_url();
    let config: tokio_postgres::Config = url.parse().unwrap();
    let listener = ListenerBuilder::from_config(config)
        .backoff(fast_backoff())
        .connect()
        .await
        .unwrap();
    let report = deliver_terminate_deliver(&listener, &url).await;
    assert!(report.attempts() >= 1);
    // The same host as the URL names.
    let port = url.parse::<tokio_postgres::Config>().unwrap().get_ports()[0];
    assert!(report.host().ends_with(&format!(":{port}")), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_hook_is_called_once_per_attempt() {
    let url = shared_url();
    let calls = Arc::new(AtomicU32::new(0));
    // The second call (the first reconnect attempt) fails: it counts too.
    let hook = plain_hook(url.parse().unwrap(), calls.clone(), Some(2));
    let listener = ListenerBuilder::connect_with(hook)
        .backoff(fast_backoff())
        .connect()
        .await
        .unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one call for the first attempt"
    );

    let channel = unique("hook");
    let mut events = listener.subscribe([&channel]).await.unwrap();
    let client = admin(&url).await;
    send(&client, &channel, "before").await;
    assert_eq!(next_notification(&mut events).await.payload(), "before");
    let pid = listener.backend_pid().unwrap();
    client
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    // The loss, then the failed attempt with the hook's own error as its source.
    let (_, lost) = until(&mut events, |e| matches!(e, Event::Error(_))).await;
    let Event::Error(lost) = lost else {
        unreachable!()
    };
    assert_eq!(lost.kind(), ErrorKind::ConnectionLost, "{lost}");
    let (_, failed) = until(&mut events, |e| matches!(e, Event::Error(_))).await;
    let Event::Error(failed) = failed else {
        unreachable!()
    };
    assert_eq!(failed.kind(), ErrorKind::Connect, "{failed}");
    assert!(error_report(&failed).contains("hook: network not ready"));
    let (_, report) = reconnected_after_errors(&mut events).await;
    assert_eq!(report.attempts(), 2, "{report:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1 + report.attempts());
    assert!(!report.host().is_empty());
    send(&client, &channel, "after").await;
    assert_eq!(next_notification(&mut events).await.payload(), "after");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "no call without an attempt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_self_check_the_hook_also_opens_the_checks_sender() {
    let url = shared_url();
    let calls = Arc::new(AtomicU32::new(0));
    let hook = plain_hook(url.parse().unwrap(), calls.clone(), None);
    let listener = ListenerBuilder::connect_with(hook)
        .self_check(true)
        .backoff(fast_backoff())
        .connect()
        .await
        .unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the session and the check's sender"
    );
    let report = deliver_terminate_deliver(&listener, &url).await;
    assert_eq!(report.attempts(), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn settings_that_cannot_apply_are_refused_by_connect() {
    // Never called: the settings are refused before any attempt.
    let hook = || tokio_postgres::connect("host=db.invalid user=app", NoTls);
    let err = ListenerBuilder::connect_with(hook)
        .credentials(|| async { Ok::<_, std::io::Error>("pw") })
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("credentials"), "{err}");

    let mut config = tokio_postgres::Config::new();
    config.host("db.invalid").user("app");
    let err = ListenerBuilder::from_config(config.clone())
        .env_defaults()
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("env_defaults"), "{err}");

    config.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadOnly);
    let err = ListenerBuilder::from_config(config)
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("standby"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_returning_a_driver_error_is_diagnosed_like_any_connection() {
    let url = shared_url();
    let mut config: tokio_postgres::Config = url.parse().unwrap();
    config.user("no_such_role_pglisten");
    let result = ListenerBuilder::connect_with(plain_hook(config, Arc::default(), None))
        .connect()
        .await;
    let err = result.expect_err("an unknown role is refused");
    assert_eq!(
        err.kind(),
        ErrorKind::Authentication,
        "{}",
        error_report(&err)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_reaches_a_standby_is_refused_with_why() {
    // A cluster started in recovery: pg_is_in_recovery() is true there.
    let standby = blocking(|| {
        pglisten_testkit::Cluster::builder()
            .file("standby.signal", b"")
            .start()
            .expect("could not start a standby cluster")
    })
    .await;
    let config = standby.url().parse().unwrap();
    let err = ListenerBuilder::connect_with(plain_hook(config, Arc::default(), None))
        .connect()
        .await
        .expect_err("LISTEN cannot work on a standby");
    assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("standby") && text.contains("connect hook"),
        "{text}"
    );
    assert!(text.contains(&format!(":{}", standby.port())), "{text}");
}
