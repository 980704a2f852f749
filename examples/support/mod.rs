//! Not part of what you copy: where the examples get a database. With `DATABASE_URL`
//! set they use it; otherwise they start a throwaway PostgreSQL (through pglisten's
//! test kit, which needs the server binaries `initdb` and `pg_ctl`) that lives as long
//! as the returned [`Database`]. Nothing else in the examples uses the test kit: the
//! rest is pglisten and ordinary crates, as in your code.

// Each example uses a part of this module.
#![allow(dead_code)]

use std::error::Error;
use std::path::PathBuf;
use std::sync::Arc;

use pglisten_testkit::{Cluster, ExampleDatabase, tls::TestCa};

/// A database for an example to use; a throwaway server stops when this is dropped.
pub struct Database {
    url: String,
    _server: Server,
}

enum Server {
    Example(ExampleDatabase),
    Throwaway(Cluster),
}

impl Database {
    /// Its connection URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// `DATABASE_URL`, or a throwaway server started for this run (saying so on stdout).
pub async fn database() -> Result<Database, Box<dyn Error + Send + Sync>> {
    let server = tokio::task::spawn_blocking(ExampleDatabase::from_env_or_start).await??;
    Ok(Database {
        url: server.url().to_owned(),
        _server: Server::Example(server),
    })
}

/// A throwaway server, started without a word on stdout.
pub async fn throwaway() -> Result<Database, Box<dyn Error + Send + Sync>> {
    let cluster = tokio::task::spawn_blocking(Cluster::start).await??;
    Ok(Database {
        url: cluster.url(),
        _server: Server::Throwaway(cluster),
    })
}

/// A throwaway server that accepts TLS connections only, with a certificate from a CA
/// made for this run, and a role `app` with a password.
pub struct TlsDatabase {
    cluster: Arc<Cluster>,
    /// The CA's certificate: give it as `sslrootcert`.
    pub root_cert: PathBuf,
    pub password: &'static str,
}

impl TlsDatabase {
    pub fn port(&self) -> u16 {
        self.cluster.port()
    }

    /// Ends a backend from the server side, as a failover or a DBA would.
    pub async fn terminate_backend(&self, pid: i32) -> Result<(), Box<dyn Error + Send + Sync>> {
        let cluster = self.cluster.clone();
        tokio::task::spawn_blocking(move || {
            cluster.psql(&format!("SELECT pg_terminate_backend({pid})"))
        })
        .await??;
        Ok(())
    }
}

/// Starts a [`TlsDatabase`].
pub async fn throwaway_tls() -> Result<TlsDatabase, Box<dyn Error + Send + Sync>> {
    let password = "demo-password";
    let cluster = tokio::task::spawn_blocking(move || -> std::io::Result<Cluster> {
        let ca = TestCa::new("pglisten demo CA")?;
        let server = ca.server_cert(&["localhost", "127.0.0.1"])?;
        Cluster::builder()
            .tls(&ca, &server)
            .hba(&[
                "local all postgres trust",
                "hostssl all all 127.0.0.1/32 scram-sha-256",
                "hostssl all all ::1/128 scram-sha-256",
            ])
            .init_sql(&format!("CREATE ROLE app LOGIN PASSWORD '{password}'"))
            .file("client/root.crt", ca.cert_pem().as_bytes())
            .start()
    })
    .await??;
    Ok(TlsDatabase {
        root_cert: cluster.data_dir().join("client/root.crt"),
        cluster: Arc::new(cluster),
        password,
    })
}
