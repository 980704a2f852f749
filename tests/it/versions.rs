//! Server versions (issue 15): the suite runs against whichever server the testkit was
//! given (`PGLISTEN_PG_BIN`; `.ci/postgres.sh test` runs it on 13 to 18). These tests
//! check that the server is the one asked for, that it is reached and delivers, that a
//! server older than 13 is refused at `connect` with its version, and (with TLS) the
//! direct TLS handshake of PostgreSQL 17 and later. A check that needs a newer server
//! than the one running says so on stderr (a line starting with `skipped:`) and passes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pglisten::{ErrorKind, Listener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// The major version of the servers the testkit starts.
pub fn server_major() -> u32 {
    pglisten_testkit::server_version()
        .expect("the testkit's server version")
        .major()
}

#[tokio::test]
async fn the_server_is_the_version_asked_for() {
    let version = blocking(|| pglisten_testkit::server_version().expect("server version")).await;
    let cluster = own_cluster().await;
    let client = admin(&cluster.url()).await;
    let row = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap();
    let running: i32 = row.get(0);
    assert_eq!(
        u32::try_from(running / 10_000).unwrap(),
        version.major(),
        "the testkit reports {version}, the server says {running}"
    );
    // `.ci/postgres.sh test` says which major it means to test; a run that silently fell
    // back to another server fails here.
    if let Ok(expected) = std::env::var("PGLISTEN_EXPECT_PG_MAJOR") {
        let expected: u32 = expected
            .parse()
            .expect("PGLISTEN_EXPECT_PG_MAJOR is a major version number");
        assert_eq!(
            version.major(),
            expected,
            "asked for {expected}, ran {version}"
        );
    }
}

#[tokio::test]
async fn a_server_of_this_version_is_reached_and_delivers() {
    // On 18 this is a protocol 3.2 server reached by a 3.0 client (tokio-postgres).
    let cluster = own_cluster().await;
    let listener = Listener::connect(&cluster.url()).await.unwrap();
    let channel = unique("versions");
    let mut sub = listener.subscribe([&channel]).await.unwrap();
    let sender = admin(&cluster.url()).await;
    let row = sender
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap();
    let version: i32 = row.get(0);
    for i in 0..3 {
        send(&sender, &channel, &format!("{version}-{i}")).await;
    }
    for i in 0..3 {
        let n = next_notification(&mut sub).await;
        assert_eq!(n.payload(), format!("{version}-{i}"));
        assert_eq!(n.channel(), channel);
    }
    // The listener's own connection answers requests too.
    listener
        .notify(&channel, "through the listener")
        .await
        .unwrap();
    assert_eq!(
        next_notification(&mut sub).await.payload(),
        "through the listener"
    );
    listener.shutdown().await;
}

/// A server that speaks just enough of the protocol to be connected to, and says it is
/// `version` (`server_version_num` `version_num`). Counts the queries it answered.
async fn pretend_server(
    version: &'static str,
    version_num: &'static str,
) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let queries = Arc::new(AtomicUsize::new(0));
    let counted = queries.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let _ = pretend_session(socket, version, version_num, &counted).await;
            });
        }
    });
    (port, queries)
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(u32::try_from(body.len()).unwrap() + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// One query's answer: text columns, one row (`None` is NULL).
fn rows(values: &[Option<&str>]) -> Vec<u8> {
    let mut description = u16::try_from(values.len()).unwrap().to_be_bytes().to_vec();
    for i in 0..values.len() {
        cstr(&mut description, &format!("c{i}"));
        description.extend_from_slice(&0u32.to_be_bytes()); // table
        description.extend_from_slice(&0u16.to_be_bytes()); // column
        description.extend_from_slice(&25u32.to_be_bytes()); // text
        description.extend_from_slice(&(-1i16).to_be_bytes());
        description.extend_from_slice(&(-1i32).to_be_bytes());
        description.extend_from_slice(&0u16.to_be_bytes()); // text format
    }
    let mut row = u16::try_from(values.len()).unwrap().to_be_bytes().to_vec();
    for value in values {
        match value {
            Some(v) => {
                row.extend_from_slice(&u32::try_from(v.len()).unwrap().to_be_bytes());
                row.extend_from_slice(v.as_bytes());
            }
            None => row.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    let mut done = Vec::new();
    cstr(&mut done, "SELECT 1");
    [
        message(b'T', &description),
        message(b'D', &row),
        message(b'C', &done),
        message(b'Z', b"I"),
    ]
    .concat()
}

async fn pretend_session(
    mut socket: TcpStream,
    version: &str,
    version_num: &str,
    queries: &AtomicUsize,
) -> std::io::Result<()> {
    // The startup packet (sslmode=disable: no SSLRequest first).
    let length = socket.read_u32().await?;
    let mut startup = vec![0; usize::try_from(length).unwrap().saturating_sub(4)];
    socket.read_exact(&mut startup).await?;
    let mut hello = message(b'R', &0u32.to_be_bytes()); // AuthenticationOk
    for (name, value) in [
        ("server_version", version),
        ("client_encoding", "UTF8"),
        ("server_encoding", "UTF8"),
        ("integer_datetimes", "on"),
    ] {
        let mut body = Vec::new();
        cstr(&mut body, name);
        cstr(&mut body, value);
        hello.extend(message(b'S', &body));
    }
    hello.extend(message(b'K', &[0, 0, 16, 146, 0, 0, 0, 7])); // pid 4242, key 7
    hello.extend(message(b'Z', b"I"));
    socket.write_all(&hello).await?;
    loop {
        let tag = socket.read_u8().await?;
        let length = socket.read_u32().await?;
        let mut body = vec![0; usize::try_from(length).unwrap().saturating_sub(4)];
        socket.read_exact(&mut body).await?;
        match tag {
            b'Q' => {
                queries.fetch_add(1, Ordering::SeqCst);
                let sql = String::from_utf8_lossy(&body);
                let answer = if sql.contains("pg_is_in_recovery") {
                    rows(&[Some("f")])
                } else {
                    // pg_backend_pid, server_version_num, server_version, the timeout
                    rows(&[Some("4242"), Some(version_num), Some(version), None])
                };
                socket.write_all(&answer).await?;
            }
            // Terminate, or anything this pretend server does not speak: hang up.
            _ => return Ok(()),
        }
    }
}

#[tokio::test]
async fn a_server_older_than_13_is_refused_at_connect_with_its_version() {
    let (port, queries) = pretend_server("12.22", "120022").await;
    let url = format!("postgres://app@127.0.0.1:{port}/db?sslmode=disable");
    let error = Listener::builder(&url)
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect_err("a PostgreSQL 12 server is refused");
    assert_eq!(error.kind(), ErrorKind::Connect, "{}", error_report(&error));
    let text = error.to_string();
    assert!(text.contains("PostgreSQL 12.22"), "{text}");
    assert!(text.contains("13 or later"), "{text}");
    // It was refused after reading its version, not for failing to speak the protocol.
    assert!(queries.load(Ordering::SeqCst) >= 2, "{text}");

    // The same pretend server saying it is 13 is served: the refusal is the version's.
    let (port, _) = pretend_server("13.23", "130023").await;
    let url = format!("postgres://app@127.0.0.1:{port}/db?sslmode=disable");
    let listener = Listener::builder(&url)
        .self_check(false)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{}", error_report(&e)));
    assert_eq!(listener.backend_pid(), Some(4242));
    listener.shutdown().await;
}

/// The direct TLS handshake (`sslnegotiation=direct`), on servers that have it (17+).
#[cfg(feature = "tls")]
mod direct_tls {
    use std::sync::Mutex;

    use pglisten_testkit::Cluster;
    use pglisten_testkit::tls::TestCa;

    use super::*;

    /// The first server version with direct TLS connections.
    const DIRECT_TLS: u32 = 17;

    /// A TLS-only server (`hostssl`, scram) with user `app`.
    struct TlsServer {
        cluster: Arc<Cluster>,
        /// The CA's certificate, in a file (for `sslrootcert`) and as PEM.
        root: String,
        ca_pem: String,
    }

    async fn tls_server() -> TlsServer {
        blocking(|| {
            let ca = TestCa::new("direct TLS CA").expect("CA");
            let server = ca.server_cert(&["localhost", "127.0.0.1"]).expect("cert");
            let cluster = Cluster::builder()
                .tls(&ca, &server)
                .hba(&[
                    "local all postgres trust",
                    "hostssl all all 127.0.0.1/32 scram-sha-256",
                ])
                .init_sql("CREATE ROLE app LOGIN PASSWORD 'direct-pw'")
                .file("pki/root.crt", ca.cert_pem().as_bytes())
                .start()
                .expect("a TLS cluster");
            TlsServer {
                root: cluster
                    .data_dir()
                    .join("pki/root.crt")
                    .display()
                    .to_string(),
                ca_pem: ca.cert_pem().to_owned(),
                cluster: Arc::new(cluster),
            }
        })
        .await
    }

    /// A relay to `port` that keeps the first bytes each client sent.
    async fn first_bytes_relay(port: u16) -> (u16, Arc<Mutex<Vec<Vec<u8>>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay_port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let mut first = vec![0; 8];
                    let Ok(n) = client.read(&mut first).await else {
                        return;
                    };
                    first.truncate(n);
                    record.lock().unwrap().push(first.clone());
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", port)).await else {
                        return;
                    };
                    if server.write_all(&first).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        (relay_port, seen)
    }

    /// A listener on `server` through a relay, with `sslnegotiation=direct`: with
    /// pglisten's own TLS settings (`verify-full`), or with a user's `tls_config`.
    async fn connect_direct(
        server: &TlsServer,
        with_users_config: bool,
    ) -> (pglisten::Result<Listener>, Vec<Vec<u8>>) {
        let (relay, seen) = first_bytes_relay(server.cluster.port()).await;
        let base =
            format!("postgres://app:direct-pw@localhost:{relay}/postgres?sslnegotiation=direct");
        let builder = if with_users_config {
            Listener::builder(&format!("{base}&sslmode=require"))
                // A user's config trusting the CA, naming no ALPN protocol.
                .tls_config(rustls_config_trusting(server.ca_pem.as_bytes()))
        } else {
            Listener::builder(&format!(
                "{base}&sslmode=verify-full&sslrootcert={}",
                server.root
            ))
        };
        let result = builder
            .connect_timeout(Duration::from_secs(20))
            .connect()
            .await;
        let firsts = seen.lock().unwrap().clone();
        (result, firsts)
    }

    /// Direct TLS on 17+: the very first byte on the wire is a TLS handshake record (no
    /// SSLRequest), the server sees TLS, and notifications flow. Before 17 the server
    /// cannot take it: the attempt fails with a TLS error that says 17 is needed
    /// (checked), and the test says it skipped the rest.
    async fn check_direct(test: &str, with_users_config: bool) {
        let server = tls_server().await;
        let major = blocking(server_major).await;
        let (result, firsts) = connect_direct(&server, with_users_config).await;
        assert!(!firsts.is_empty(), "nothing reached the server");
        for first in &firsts {
            // 0x16 starts a TLS handshake record; an SSLRequest starts with 0 0 0 8.
            assert_eq!(
                first.first(),
                Some(&0x16),
                "not a direct TLS start: {first:?}"
            );
        }
        if major < DIRECT_TLS {
            let error = result.expect_err("a server before 17 cannot take a direct TLS start");
            assert_eq!(error.kind(), ErrorKind::Tls, "{}", error_report(&error));
            assert!(
                error.to_string().contains("PostgreSQL 17 or later"),
                "no word of the server version needed: {error}"
            );
            skipped(
                test,
                &format!("direct TLS needs PostgreSQL {DIRECT_TLS}+, the server is {major}"),
            );
            return;
        }
        let listener = result.unwrap_or_else(|e| panic!("{}", error_report(&e)));
        let pid = listener.backend_pid().expect("connected");
        let cluster = server.cluster.clone();
        let ssl = blocking(move || {
            cluster
                .psql(&format!("SELECT ssl FROM pg_stat_ssl WHERE pid = {pid}"))
                .unwrap()
        })
        .await;
        assert_eq!(ssl.trim(), "t", "the server does not see TLS");

        let channel = unique("direct");
        let mut sub = listener.subscribe([&channel]).await.unwrap();
        listener.notify(&channel, "direct").await.unwrap();
        assert_eq!(next_notification(&mut sub).await.payload(), "direct");
        listener.shutdown().await;
    }

    #[tokio::test]
    async fn direct_tls_with_pglistens_own_tls_settings() {
        check_direct("direct_tls_with_pglistens_own_tls_settings", false).await;
    }

    #[tokio::test]
    async fn direct_tls_with_a_users_tls_config() {
        check_direct("direct_tls_with_a_users_tls_config", true).await;
    }
}
