//! TLS against a real server: every sslmode against a TLS server and a plaintext one,
//! certificate checks, client certificates, channel binding, fresh credentials on
//! reconnect, and no secret in any message or log line.
//!
//! The certificates are made at test time (testkit's `tls` module). The TLS server
//! accepts TCP connections only over TLS (`hostssl`), with scram-sha-256 for everyone
//! except `certuser`, who must present a client certificate.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::support::*;
use pglisten::{ErrorKind, Event, Listener, ListenerBuilder};
use pglisten_testkit::Cluster;
use pglisten_testkit::tls::TestCa;

const APP_PASSWORD: &str = "app-pw-7c1e";

/// The TLS-only server and the paths of the client-side files.
struct TlsServer {
    cluster: Cluster,
    /// Trusts the server's CA.
    root: PathBuf,
    /// A CA that signed nothing the server uses.
    other_root: PathBuf,
    /// certuser's certificate and key, signed by the server's CA.
    client_cert: PathBuf,
    client_key: PathBuf,
    /// certuser's certificate and key, signed by the other CA.
    stranger_cert: PathBuf,
    stranger_key: PathBuf,
}

impl TlsServer {
    fn port(&self) -> u16 {
        self.cluster.port()
    }

    /// A URL for `user` with `password` on host name `localhost` and `query` appended.
    fn url(&self, user: &str, password: Option<&str>, query: &str) -> String {
        let auth = match password {
            Some(p) => format!("{user}:{p}"),
            None => user.to_owned(),
        };
        format!(
            "postgres://{auth}@localhost:{}/postgres?{query}",
            self.port()
        )
    }

    /// `sslmode=verify-full` with the right root certificate, as user `app`.
    fn verified_url(&self) -> String {
        self.url(
            "app",
            Some(APP_PASSWORD),
            &format!("sslmode=verify-full&sslrootcert={}", self.root.display()),
        )
    }

    fn psql(&self, sql: &str) -> String {
        self.cluster
            .psql(sql)
            .unwrap_or_else(|e| panic!("psql {sql}: {e}"))
            .trim()
            .to_owned()
    }
}

fn start_tls_server() -> TlsServer {
    let ca = TestCa::new("pglisten test CA").expect("CA");
    let other_ca = TestCa::new("some other CA").expect("other CA");
    let server = ca
        .server_cert(&["localhost", "127.0.0.1"])
        .expect("server cert");
    let client = ca.client_cert("certuser").expect("client cert");
    let stranger = other_ca.client_cert("certuser").expect("stranger cert");
    let cluster = Cluster::builder()
        .tls(&ca, &server)
        .hba(&[
            "local all postgres trust",
            "hostssl all certuser 127.0.0.1/32 cert",
            "hostssl all all 127.0.0.1/32 scram-sha-256",
            "hostssl all all ::1/128 scram-sha-256",
        ])
        .init_sql(&format!(
            "CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}';\
             CREATE ROLE certuser LOGIN;\
             CREATE ROLE rotating LOGIN PASSWORD 'first-pw';\
             CREATE ROLE leaky LOGIN PASSWORD 'the-right-one';"
        ))
        .file("pki/root.crt", ca.cert_pem().as_bytes())
        .file("pki/other-root.crt", other_ca.cert_pem().as_bytes())
        .file("pki/client.crt", client.cert_pem.as_bytes())
        .file("pki/client.key", client.key_pem.as_bytes())
        .file("pki/stranger.crt", stranger.cert_pem.as_bytes())
        .file("pki/stranger.key", stranger.key_pem.as_bytes())
        .start()
        .expect("could not start the TLS cluster");
    let pki = cluster.data_dir().join("pki");
    TlsServer {
        root: pki.join("root.crt"),
        other_root: pki.join("other-root.crt"),
        client_cert: pki.join("client.crt"),
        client_key: pki.join("client.key"),
        stranger_cert: pki.join("stranger.crt"),
        stranger_key: pki.join("stranger.key"),
        cluster,
    }
}

/// The TLS server shared by the tests of this file (stopped by the testkit's watchdog
/// when the process exits).
async fn tls_server() -> &'static TlsServer {
    static SERVER: OnceLock<TlsServer> = OnceLock::new();
    blocking(|| SERVER.get_or_init(start_tls_server)).await
}

/// A server without TLS, with password authentication.
async fn plain_server() -> &'static Cluster {
    static SERVER: OnceLock<Cluster> = OnceLock::new();
    blocking(|| {
        SERVER.get_or_init(|| {
            Cluster::builder()
                .setting("ssl", "off")
                .hba(&[
                    "local all postgres trust",
                    "host all all 127.0.0.1/32 scram-sha-256",
                    "host all all ::1/128 scram-sha-256",
                ])
                .init_sql(&format!("CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'"))
                .start()
                .expect("could not start the plaintext cluster")
        })
    })
    .await
}

/// Whether the listener's current backend is encrypted, as the server sees it.
async fn is_encrypted(server: &'static TlsServer, listener: &Listener) -> bool {
    // The task publishes the pid as soon as it runs.
    eventually("the listener knows its backend", || {
        let known = listener.backend_pid().is_some();
        async move { known }
    })
    .await;
    let pid = listener.backend_pid().expect("connected");
    blocking(move || server.psql(&format!("SELECT ssl FROM pg_stat_ssl WHERE pid = {pid}"))).await
        == "t"
}

async fn connect(url: &str) -> pglisten::Result<Listener> {
    Listener::connect(url).await
}

#[track_caller]
fn expect_error(result: pglisten::Result<Listener>, kind: ErrorKind, needle: &str) -> String {
    match result {
        Ok(_) => panic!("expected an error of kind {kind:?} containing {needle:?}"),
        Err(e) => {
            let text = error_report(&e);
            eprintln!("{kind:?}: {text}");
            assert_eq!(e.kind(), kind, "{text}");
            assert!(text.contains(needle), "{needle:?} not in: {text}");
            text
        }
    }
}

#[tokio::test]
async fn every_sslmode_against_a_tls_only_server() {
    let server = tls_server().await;
    let root = server.root.display().to_string();
    // disable: the server accepts this user only over TLS.
    let url = server.url("app", Some(APP_PASSWORD), "sslmode=disable");
    let text = expect_error(
        connect(&url).await,
        ErrorKind::Authentication,
        "no pg_hba.conf entry",
    );
    assert!(text.contains("sslmode=require"), "{text}");
    // Every other mode connects, and the connection is encrypted.
    for query in [
        "sslmode=allow".to_owned(),
        "sslmode=prefer".to_owned(),
        String::new(), // the default: prefer
        "sslmode=require".to_owned(),
        format!("sslmode=require&sslrootcert={root}"),
        format!("sslmode=verify-ca&sslrootcert={root}"),
        format!("sslmode=verify-full&sslrootcert={root}"),
    ] {
        let url = server.url("app", Some(APP_PASSWORD), &query);
        let listener = connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"));
        assert!(is_encrypted(server, &listener).await, "{query}");
        listener.shutdown().await;
    }
    // verify-* without a root certificate cannot verify anything.
    for mode in ["verify-ca", "verify-full"] {
        let url = server.url("app", Some(APP_PASSWORD), &format!("sslmode={mode}"));
        expect_error(connect(&url).await, ErrorKind::Config, "sslrootcert");
    }
}

#[tokio::test]
async fn every_sslmode_against_a_plaintext_server() {
    let cluster = plain_server().await;
    let server = tls_server().await; // for a root certificate file
    let root = server.root.display().to_string();
    let url = |query: &str| {
        format!(
            "postgres://app:{APP_PASSWORD}@localhost:{}/postgres?{query}",
            cluster.port()
        )
    };
    for query in ["sslmode=disable", "sslmode=allow", "sslmode=prefer", ""] {
        let listener = connect(&url(query))
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"));
        listener.shutdown().await;
    }
    for query in [
        "sslmode=require".to_owned(),
        format!("sslmode=verify-ca&sslrootcert={root}"),
        format!("sslmode=verify-full&sslrootcert={root}"),
    ] {
        let text = expect_error(
            connect(&url(&query)).await,
            ErrorKind::Tls,
            "does not support TLS",
        );
        assert!(text.contains("sslmode="), "{text}");
    }
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_for_another_host_name() {
    let server = tls_server().await;
    let url = format!(
        "host=db.example.com hostaddr=127.0.0.1 port={} user=app password={APP_PASSWORD} \
         dbname=postgres sslmode=verify-full sslrootcert={}",
        server.port(),
        server.root.display()
    );
    let text = expect_error(
        connect(&url).await,
        ErrorKind::Tls,
        "the server certificate is not valid for host \"db.example.com\"",
    );
    assert!(
        text.contains("localhost"),
        "names what the certificate is for: {text}"
    );
}

#[tokio::test]
async fn verify_ca_accepts_a_certificate_for_another_host_name() {
    let server = tls_server().await;
    let url = format!(
        "host=db.example.com hostaddr=127.0.0.1 port={} user=app password={APP_PASSWORD} \
         dbname=postgres sslmode=verify-ca sslrootcert={}",
        server.port(),
        server.root.display()
    );
    let listener = connect(&url).await.unwrap();
    assert!(is_encrypted(server, &listener).await);
    listener.shutdown().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let server = tls_server().await;
    let other = server.other_root.display();
    for mode in ["verify-full", "verify-ca", "require"] {
        let url = server.url(
            "app",
            Some(APP_PASSWORD),
            &format!("sslmode={mode}&sslrootcert={other}"),
        );
        expect_error(
            connect(&url).await,
            ErrorKind::Tls,
            "unknown certificate authority",
        );
    }
}

#[tokio::test]
async fn system_roots_refuse_the_test_ca() {
    let server = tls_server().await;
    let url = server.url("app", Some(APP_PASSWORD), "sslrootcert=system");
    let text = expect_error(
        connect(&url).await,
        ErrorKind::Tls,
        "unknown certificate authority",
    );
    assert!(text.contains("trust store"), "{text}");
    // As libpq: the platform's roots only with verify-full.
    let url = server.url(
        "app",
        Some(APP_PASSWORD),
        "sslrootcert=system&sslmode=verify-ca",
    );
    expect_error(connect(&url).await, ErrorKind::Config, "verify-full");
}

#[tokio::test]
async fn client_certificate_login() {
    let server = tls_server().await;
    let root = server.root.display();
    let with_cert = server.url(
        "certuser",
        None,
        &format!(
            "sslmode=verify-full&sslrootcert={root}&sslcert={}&sslkey={}",
            server.client_cert.display(),
            server.client_key.display()
        ),
    );
    let listener = connect(&with_cert).await.unwrap();
    assert!(is_encrypted(server, &listener).await);
    listener.shutdown().await;

    let without = server.url(
        "certuser",
        None,
        &format!("sslmode=verify-full&sslrootcert={root}"),
    );
    expect_error(
        connect(&without).await,
        ErrorKind::Authentication,
        "client certificate",
    );

    // A certificate the server's CA did not sign.
    let stranger = server.url(
        "certuser",
        None,
        &format!(
            "sslmode=verify-full&sslrootcert={root}&sslcert={}&sslkey={}",
            server.stranger_cert.display(),
            server.stranger_key.display()
        ),
    );
    expect_error(
        connect(&stranger).await,
        ErrorKind::Tls,
        "did not accept the client certificate",
    );
}

#[tokio::test]
async fn channel_binding_require_works_over_tls_and_fails_over_plaintext() {
    let server = tls_server().await;
    let url = server.url(
        "app",
        Some(APP_PASSWORD),
        &format!(
            "sslmode=verify-full&sslrootcert={}&channel_binding=require",
            server.root.display()
        ),
    );
    let listener = connect(&url).await.unwrap();
    assert!(is_encrypted(server, &listener).await);
    listener.shutdown().await;

    let cluster = plain_server().await;
    let url = format!(
        "postgres://app:{APP_PASSWORD}@localhost:{}/postgres?channel_binding=require",
        cluster.port()
    );
    let text = expect_error(
        connect(&url).await,
        ErrorKind::Authentication,
        "channel_binding=require",
    );
    assert!(text.contains("not encrypted"), "{text}");
}

#[tokio::test]
async fn a_wrong_password_fails_the_first_connect_fast() {
    let server = tls_server().await;
    let url = server.url(
        "app",
        Some("not-the-password"),
        &format!("sslmode=verify-full&sslrootcert={}", server.root.display()),
    );
    let started = std::time::Instant::now();
    expect_error(
        connect(&url).await,
        ErrorKind::Authentication,
        "password authentication failed",
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_flow_and_reconnected_works_over_tls() {
    let server = tls_server().await;
    let listener = Listener::builder(&server.verified_url())
        .backoff(fast_backoff_up_to(Duration::from_millis(300)))
        .connect()
        .await
        .unwrap();
    assert!(is_encrypted(server, &listener).await);
    let channel = unique("tls_flow");
    let mut sub = listener.subscribe([&channel]).await.unwrap();
    let c = channel.clone();
    blocking(move || server.psql(&format!("NOTIFY {c}, 'over tls'"))).await;
    assert_eq!(next_notification(&mut sub).await.payload(), "over tls");

    let pid = listener.backend_pid().unwrap();
    blocking(move || server.psql(&format!("SELECT pg_terminate_backend({pid})"))).await;
    let (_, event) = until(&mut sub, |e| matches!(e, Event::Reconnected(_))).await;
    let Event::Reconnected(report) = event else {
        unreachable!()
    };
    assert_eq!(report.host(), format!("localhost:{}", server.port()));
    assert!(is_encrypted(server, &listener).await);
    listener.notify(&channel, "after the gap").await.unwrap();
    assert_eq!(next_notification(&mut sub).await.payload(), "after the gap");
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credentials_hook_serves_a_rotated_password_on_reconnect() {
    let server = tls_server().await;
    let password = Arc::new(Mutex::new("first-pw".to_owned()));
    let calls = Arc::new(AtomicUsize::new(0));
    let url = server.url(
        "rotating",
        None,
        &format!("sslmode=verify-full&sslrootcert={}", server.root.display()),
    );
    let listener = Listener::builder(&url)
        .backoff(fast_backoff_up_to(Duration::from_millis(300)))
        .credentials({
            let (password, calls) = (password.clone(), calls.clone());
            move || {
                calls.fetch_add(1, Ordering::SeqCst);
                let current = password.lock().unwrap().clone();
                async move { Ok::<_, std::io::Error>(current) }
            }
        })
        .connect()
        .await
        .unwrap();
    // Called for every connection an attempt opens (at least one).
    let after_connect = calls.load(Ordering::SeqCst);
    assert!(after_connect >= 1);
    let channel = unique("rotate");
    let mut sub = listener.subscribe([&channel]).await.unwrap();

    // The password changes on the server; the hook does not know yet.
    blocking(move || server.psql("ALTER ROLE rotating PASSWORD 'second-pw'")).await;
    let pid = listener.backend_pid().unwrap();
    blocking(move || server.psql(&format!("SELECT pg_terminate_backend({pid})"))).await;
    let (_, lost) = until(&mut sub, |e| matches!(e, Event::Error(_))).await;
    let Event::Error(lost) = lost else {
        unreachable!()
    };
    assert_eq!(lost.kind(), ErrorKind::ConnectionLost, "{lost}");
    // Reconnect attempts fail with the old password, reported, and retried.
    let (skipped, refused) = until(&mut sub, |e| matches!(e, Event::Error(_))).await;
    assert!(skipped.is_empty(), "{skipped:?}");
    let Event::Error(refused) = refused else {
        unreachable!()
    };
    assert_eq!(refused.kind(), ErrorKind::Authentication, "{refused}");

    // The hook learns the new password: the next attempt succeeds.
    *password.lock().unwrap() = "second-pw".to_owned();
    let (between, _) = until(&mut sub, |e| matches!(e, Event::Reconnected(_))).await;
    assert!(
        between
            .iter()
            .all(|e| matches!(e, Event::Error(e) if e.kind() == ErrorKind::Authentication)),
        "{between:?}"
    );
    // At least the refused attempt and the successful one asked again.
    assert!(calls.load(Ordering::SeqCst) >= after_connect + 2);
    listener.notify(&channel, "rotated").await.unwrap();
    assert_eq!(next_notification(&mut sub).await.payload(), "rotated");
    listener.shutdown().await;
}

#[tokio::test]
async fn a_failing_credentials_hook_is_an_authentication_error() {
    let server = tls_server().await;
    let result = Listener::builder(&server.url("app", None, "sslmode=require"))
        .credentials(|| async { Err::<String, _>("the token service is down") })
        .connect()
        .await;
    expect_error(
        result,
        ErrorKind::Authentication,
        "the token service is down",
    );
}

#[tokio::test]
async fn a_custom_rustls_config_is_used() {
    let server = tls_server().await;
    let pem = std::fs::read(&server.root).unwrap();
    let config = || rustls_config_trusting(&pem);
    let listener = Listener::builder(&server.url("app", Some(APP_PASSWORD), "sslmode=require"))
        .tls_config(config())
        .connect()
        .await
        .unwrap();
    assert!(is_encrypted(server, &listener).await);
    listener.shutdown().await;
    // The config verifies host names: another name is refused.
    let url = format!(
        "host=db.example.com hostaddr=127.0.0.1 port={} user=app password={APP_PASSWORD} \
         dbname=postgres sslmode=require",
        server.port()
    );
    let result = Listener::builder(&url).tls_config(config()).connect().await;
    expect_error(
        result,
        ErrorKind::Tls,
        "not valid for host \"db.example.com\"",
    );
}

/// Captures every log line (at every level) of the current thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Secrets never reach a `Debug`, a `Display`, an error or a log line. A current-thread
/// runtime keeps the listener's task on this thread, where the log capture is active.
#[tokio::test]
async fn secrets_never_leak() {
    let server = tls_server().await;
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // tracing caches, per call site, whether any subscriber wants it. While only one
    // dispatcher is registered it asks just the current thread's, so a site first hit
    // on another test's thread (no subscriber there) is cached as unwanted for all.
    // A second registered dispatcher makes it ask every one; then rebuild the sites
    // cached so far.
    let _every_dispatcher_asked =
        tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    tracing::callsite::rebuild_interest_cache();

    let url_secret = "url-s3cret-5b2d";
    let hook_secret = "hook-s3cret-9f0a";
    let key_pem = std::fs::read_to_string(&server.client_key).unwrap();
    let key_line = key_pem.lines().nth(1).unwrap().to_owned(); // base64 key material
    let mut shown = Vec::new();

    // A wrong password in the URL: the first connect fails.
    let url = server.url(
        "leaky",
        Some(url_secret),
        &format!("sslmode=verify-full&sslrootcert={}", server.root.display()),
    );
    let builder = Listener::builder(&url);
    shown.push(format!("{builder:?}"));
    let error = builder.connect().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Authentication);
    shown.push(format!("{} {error:?}", error_report(&error)));
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        shown.push(format!("{cause:?}"));
        source = cause.source();
    }

    // A wrong password from the hook, during reconnects: the errors are events.
    let hook_password = Arc::new(Mutex::new("the-right-one".to_owned()));
    let builder = Listener::builder(&server.url(
        "leaky",
        Some(url_secret),
        &format!(
            "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
            server.root.display(),
            server.client_cert.display(),
            server.client_key.display()
        ),
    ))
    .backoff(fast_backoff_up_to(Duration::from_millis(300)))
    .credentials({
        let hook_password = hook_password.clone();
        move || {
            let p = hook_password.lock().unwrap().clone();
            async move { Ok::<_, std::io::Error>(pglisten::Credentials::password(p)) }
        }
    });
    shown.push(format!("{builder:?}"));
    let listener = builder.connect().await.unwrap();
    shown.push(format!("{listener:?}"));
    let mut sub = listener.subscribe([unique("leak")]).await.unwrap();
    *hook_password.lock().unwrap() = hook_secret.to_owned();
    let pid = listener.backend_pid().unwrap();
    blocking(move || server.psql(&format!("SELECT pg_terminate_backend({pid})"))).await;
    let mut refused = 0;
    while refused < 2 {
        let event = next_event(&mut sub).await;
        if let Event::Error(e) = &event
            && e.kind() == ErrorKind::Authentication
        {
            refused += 1;
        }
        shown.push(format!("{event:?}"));
        if let Event::Error(e) = event {
            shown.push(error_report(&e));
        }
    }
    listener.shutdown().await;

    let from_env = ListenerBuilder::from_env();
    shown.push(format!("{from_env:?}"));
    shown.push(format!(
        "{:?}",
        pglisten::Credentials::password(hook_secret).user("someone")
    ));

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("reconnect attempt failed"),
        "the capture works: {logs}"
    );
    shown.push(logs);
    for text in &shown {
        for secret in [url_secret, hook_secret, key_line.as_str()] {
            assert!(!text.contains(secret), "{secret:?} leaked into: {text}");
        }
    }
}

/// A TCP server that records every byte it receives and never answers.
async fn recording_server() -> (u16, Arc<Mutex<Vec<u8>>>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let sink = sink.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    (port, received)
}

#[tokio::test]
async fn direct_tls_without_a_required_sslmode_is_refused_before_any_byte_is_sent() {
    let (port, received) = recording_server().await;
    for mode in ["prefer", "allow", "disable"] {
        let url = format!(
            "postgres://secretive_user@127.0.0.1:{port}/db?sslnegotiation=direct&sslmode={mode}"
        );
        let eager = Listener::builder(&url).connect().await.unwrap_err();
        assert_eq!(eager.kind(), ErrorKind::Config, "{mode}: {eager}");
        assert!(
            eager.to_string().contains("sslnegotiation=direct"),
            "{eager}"
        );
        let lazy = Listener::builder(&url).connect_lazy().unwrap_err();
        assert_eq!(lazy.kind(), ErrorKind::Config, "{mode}: {lazy}");
    }
    // Nothing was ever sent: no startup packet with the user name, in any form.
    let seen = received.lock().unwrap().clone();
    assert!(seen.is_empty(), "the server received {} bytes", seen.len());
}

/// A TLS-only cluster serving `server`, with `trust_pem` written where a client can
/// give it as `sslrootcert`.
async fn cluster_serving(
    server: pglisten_testkit::tls::CertAndKey,
    trust_pem: String,
) -> (Cluster, PathBuf) {
    blocking(move || {
        let unused_ca = TestCa::new("client CA (unused)").expect("CA");
        let cluster = Cluster::builder()
            .tls(&unused_ca, &server)
            .hba(&[
                "local all postgres trust",
                "hostssl all all 127.0.0.1/32 trust",
                "hostssl all all ::1/128 trust",
            ])
            .file("pki/trust.crt", trust_pem.as_bytes())
            .start()
            .expect("could not start a TLS cluster");
        let trust = cluster.data_dir().join("pki/trust.crt");
        (cluster, trust)
    })
    .await
}

/// Connects (without the self-check) with `sslmode` to `host`, then shuts down.
async fn connect_as(
    cluster: &Cluster,
    host: &str,
    mode: &str,
    root: &std::path::Path,
) -> pglisten::Result<()> {
    let url = format!(
        "postgres://postgres@{host}:{}/postgres?sslmode={mode}&sslrootcert={}",
        cluster.port(),
        root.display()
    );
    let listener = Listener::builder(&url).self_check(false).connect().await?;
    listener.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_documentations_self_signed_certificate_pinned_as_root_is_accepted() {
    // PostgreSQL's recipe: a self-signed CA:TRUE certificate naming the host in its CN.
    let server = pglisten_testkit::tls::self_signed_server("localhost").expect("certificate");
    let pem = server.cert_pem.clone();
    let (cluster, root) = cluster_serving(server, pem).await;
    for mode in ["require", "verify-ca", "verify-full"] {
        connect_as(&cluster, "localhost", mode, &root)
            .await
            .unwrap_or_else(|e| panic!("sslmode={mode}: {}", error_report(&e)));
    }
    // The name still counts for verify-full.
    let refused = connect_as(&cluster, "127.0.0.1", "verify-full", &root)
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Tls, "{}", error_report(&refused));
    assert!(refused.to_string().contains("CN=localhost"), "{refused}");
    connect_as(&cluster, "127.0.0.1", "verify-ca", &root)
        .await
        .expect("verify-ca does not check the name");
}

#[tokio::test]
async fn a_common_name_without_alternative_names_is_checked_as_libpq_does() {
    let ca = TestCa::new("CN-only CA").expect("CA");
    let server = ca.server_cert_cn_only("localhost").expect("certificate");
    let (cluster, root) = cluster_serving(server, ca.cert_pem().to_owned()).await;
    connect_as(&cluster, "localhost", "verify-full", &root)
        .await
        .unwrap_or_else(|e| panic!("{}", error_report(&e)));
    let refused = connect_as(&cluster, "127.0.0.1", "verify-full", &root)
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Tls, "{}", error_report(&refused));
    let message = refused.to_string();
    // What the certificate names, and what to do.
    assert!(message.contains("CN=localhost"), "{message}");
    assert!(message.contains("127.0.0.1"), "{message}");
    assert!(message.contains("connect with"), "{message}");
}

#[tokio::test]
async fn an_address_matches_a_dns_name_or_common_name_that_spells_it() {
    let ca = TestCa::new("address CA").expect("CA");
    for server in [
        ca.server_cert_dns_names(&["127.0.0.1"])
            .expect("dNSName certificate"),
        ca.server_cert_cn_only("127.0.0.1").expect("CN certificate"),
    ] {
        let (cluster, root) = cluster_serving(server, ca.cert_pem().to_owned()).await;
        connect_as(&cluster, "127.0.0.1", "verify-full", &root)
            .await
            .unwrap_or_else(|e| panic!("{}", error_report(&e)));
    }
}

#[tokio::test]
async fn a_users_tls_config_gets_the_postgresql_alpn_for_direct_tls() {
    // PostgreSQL 17+ refuses a direct TLS handshake without ALPN `postgresql`: the
    // ClientHello of a tls_config that names no protocol must carry it.
    let (port, received) = recording_server().await;
    // No roots: nothing is verified here, the server never answers.
    let config = rustls_config_trusting(b"");
    assert!(config.alpn_protocols.is_empty());
    let url = format!("postgres://app@127.0.0.1:{port}/db?sslnegotiation=direct&sslmode=require");
    let attempt = Listener::builder(&url)
        .tls_config(config)
        .connect_timeout(Duration::from_secs(2))
        .connect();
    let _ = attempt.await; // the silent server never answers
    let hello = received.lock().unwrap().clone();
    assert_eq!(
        hello.first(),
        Some(&0x16),
        "a TLS handshake record comes first"
    );
    assert!(
        hello
            .windows(b"postgresql".len())
            .any(|w| w == b"postgresql"),
        "no ALPN postgresql in the ClientHello"
    );
}

#[tokio::test]
async fn ssl_min_and_max_protocol_version_are_honoured() {
    let server = tls_server().await;
    for (bounds, expected) in [
        ("ssl_min_protocol_version=TLSv1.3", "TLSv1.3"),
        ("ssl_max_protocol_version=TLSv1.2", "TLSv1.2"),
    ] {
        let url = format!("{}&{bounds}", server.verified_url());
        let listener = Listener::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{bounds}: {}", error_report(&e)));
        let pid = listener.backend_pid().unwrap();
        let version = server.psql(&format!(
            "SELECT version FROM pg_stat_ssl WHERE pid = {pid}"
        ));
        assert_eq!(version, expected, "{bounds}");
        listener.shutdown().await;
    }
}

#[tokio::test]
async fn sslcrl_refuses_a_revoked_server_certificate() {
    let ca = TestCa::new("CA with a revocation list").expect("CA");
    for revoked in [true, false] {
        let (server, crl) = ca
            .server_cert_and_crl(&["localhost"], 4242, revoked)
            .expect("certificate and list");
        let (cluster, root) = cluster_serving(server, ca.cert_pem().to_owned()).await;
        let crl_file = root.with_file_name("crl.pem");
        std::fs::write(&crl_file, crl).unwrap();
        let url = format!(
            "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}&sslcrl={}",
            cluster.port(),
            root.display(),
            crl_file.display()
        );
        let result = Listener::builder(&url).self_check(false).connect().await;
        if revoked {
            let error = result.expect_err("a revoked certificate");
            assert_eq!(error.kind(), ErrorKind::Tls, "{}", error_report(&error));
            assert!(error.to_string().contains("revoked"), "{error}");
            // The same list found in a directory (sslcrldir).
            let dir = root.with_file_name("crls");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(&crl_file, dir.join("ca.r0")).unwrap();
            let url = format!(
                "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}&sslcrldir={}",
                cluster.port(),
                root.display(),
                dir.display()
            );
            let error = Listener::builder(&url)
                .self_check(false)
                .connect()
                .await
                .expect_err("revoked, by sslcrldir");
            assert_eq!(error.kind(), ErrorKind::Tls, "{}", error_report(&error));
        } else {
            result
                .unwrap_or_else(|e| panic!("a list that revokes nothing: {}", error_report(&e)))
                .shutdown()
                .await;
        }
    }
}

#[tokio::test]
async fn a_key_file_others_may_read_or_an_encrypted_key_is_refused_with_what_to_do() {
    use std::os::unix::fs::PermissionsExt;
    let server = tls_server().await;
    let dir = std::env::temp_dir().join(unique("keys"));
    std::fs::create_dir_all(&dir).unwrap();
    let open_key = dir.join("open.key");
    std::fs::copy(&server.client_key, &open_key).unwrap();
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let encrypted = dir.join("encrypted.key");
    std::fs::write(
        &encrypted,
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQww\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .unwrap();
    std::fs::set_permissions(&encrypted, std::fs::Permissions::from_mode(0o600)).unwrap();
    for (key, expected) in [(&open_key, "chmod 600"), (&encrypted, "openssl pkey")] {
        let url = server.url(
            "certuser",
            None,
            &format!(
                "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
                server.root.display(),
                server.client_cert.display(),
                key.display()
            ),
        );
        let error = Listener::builder(&url).connect_lazy().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Config, "{}", error_report(&error));
        assert!(error.to_string().contains(expected), "{error}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `ListenerBuilder::from_config`: the config's TLS mode decides whether TLS is used, and
/// the builder's `tls_config` how the server is checked.
#[tokio::test]
async fn a_driver_config_gets_tls_from_its_mode_or_the_builders_tls_config() {
    use pglisten::tokio_postgres::config::SslMode;
    let server = tls_server().await;
    let config = |mode: SslMode| {
        let mut config = pglisten::tokio_postgres::Config::new();
        config
            .host("localhost")
            .port(server.port())
            .user("app")
            .password(APP_PASSWORD)
            .dbname("postgres")
            .ssl_mode(mode);
        config
    };
    let rustls_config =
        |root: &std::path::Path| rustls_config_trusting(&std::fs::read(root).unwrap());

    // The mode alone (as libpq's sslmode=require): encrypted.
    let listener = ListenerBuilder::from_config(config(SslMode::Require))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{}", error_report(&e)));
    assert!(is_encrypted(server, &listener).await);
    listener.shutdown().await;

    // With the builder's rustls config and the right roots: encrypted and verified.
    let listener = ListenerBuilder::from_config(config(SslMode::Require))
        .tls_config(rustls_config(&server.root))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{}", error_report(&e)));
    assert!(is_encrypted(server, &listener).await);
    listener.shutdown().await;

    // The builder's config is what checks the server: other roots are refused.
    let err = ListenerBuilder::from_config(config(SslMode::Require))
        .tls_config(rustls_config(&server.other_root))
        .connect()
        .await
        .expect_err("a certificate from an unknown CA is refused");
    assert_eq!(err.kind(), ErrorKind::Tls, "{}", error_report(&err));

    // Disable: the server (hostssl only) refuses the plaintext connection.
    let err = ListenerBuilder::from_config(config(SslMode::Disable))
        .connect()
        .await
        .expect_err("no plaintext connection is allowed");
    assert_ne!(err.kind(), ErrorKind::Config, "{}", error_report(&err));
}
