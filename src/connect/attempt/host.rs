//! Connecting to one host: the transport `sslmode` asks for (and libpq's fallback to
//! the other one), the password file, and the check that the host is a primary.

use tokio_postgres::{Client, SimpleQueryMessage};
use tracing::debug;

use super::{ConnectConfig, Connector, Established};
use crate::connect::conninfo::{Dial, HostEntry, SslMode};
use crate::connect::diagnose::{self, Transport};
use crate::connect::messages::{MessageStream, drive, message_stream};
use crate::connect::passfile;
#[cfg(feature = "tls")]
use crate::connect::tap::TlsTap;
use crate::connect::tap::{PlainTap, Tapped};
use crate::error::{Chain, Error, ErrorKind, Result};

impl ConnectConfig {
    /// [`connect_host`](Self::connect_host) within the step timeout.
    pub(super) async fn connect_bounded(
        &self,
        base: &tokio_postgres::Config,
        host: &HostEntry,
        connector: Option<&Connector>,
    ) -> Result<Established> {
        self.bounded(self.connect_host(base, host, connector), |bound| {
            format!(
                "{} did not complete the connection within {bound:?}: check that the \
                 server is reachable, or raise the bound ({})",
                host.label(),
                self.timeout_source()
            )
        })
        .await?
    }
    /// Connects to one host, then makes sure it is a primary.
    async fn connect_host(
        &self,
        base: &tokio_postgres::Config,
        host: &HostEntry,
        connector: Option<&Connector>,
    ) -> Result<Established> {
        let dial = host.or_default();
        let host = &dial.entry;
        let label = host.label();
        let mut config = base.clone();
        config.host(&dial.name);
        if let Some(addr) = host.hostaddr {
            config.hostaddr(addr);
        }
        config.port(host.port);
        if config.get_password().is_none() {
            self.password_from_file(&mut config, &dial);
        }

        // The first transport to try, and the one to fall back to when it fails in a way
        // the other transport may not (as libpq does for allow and prefer).
        let tls_built = cfg!(feature = "tls");
        let (first, fallback) = match self.info.sslmode {
            // As libpq: no TLS over a unix socket.
            _ if host.is_unix_socket() => (Transport::Plain, None),
            SslMode::Disable => (Transport::Plain, None),
            SslMode::Allow if tls_built => {
                (Transport::Plain, Some(Transport::Tls { fallback: false }))
            }
            SslMode::Prefer if tls_built => {
                (Transport::Tls { fallback: true }, Some(Transport::Plain))
            }
            SslMode::Allow | SslMode::Prefer => (Transport::Plain, None),
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                (Transport::Tls { fallback: false }, None)
            }
        };
        let (client, mut messages) = match self.attempt(&config, first, &label, connector).await {
            Err(e)
                if fallback.is_some()
                    && (e.kind() == ErrorKind::Tls || diagnose::refused_by_hba(&e)) =>
            {
                debug!(host = %label, error = %Chain(&e), sslmode = %self.info.sslmode, "trying the other transport");
                let other = fallback.unwrap_or(Transport::Plain);
                self.attempt(&config, other, &label, connector).await?
            }
            other => other?,
        };

        let rows = drive(
            &mut messages,
            client.simple_query("SELECT pg_is_in_recovery()"),
        )
        .await
        .map_err(|e| {
            diagnose::connect_failed(
                &format!("could not check whether {label} is the primary"),
                e,
            )
        })?;
        let in_recovery = rows.iter().any(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0) == Some("t"),
            _ => false,
        });
        if in_recovery {
            return Err(Error::new(
                ErrorKind::Connect,
                format!(
                    "{label} is a standby (pg_is_in_recovery() is true), and LISTEN only works \
                     on the primary; list the primary's host in the connection string"
                ),
            ));
        }
        Ok(Established {
            client,
            messages,
            host: label,
            entry: host.clone(),
        })
    }

    /// libpq's password file: a password for this host, port, database and user.
    fn password_from_file(&self, config: &mut tokio_postgres::Config, host: &Dial) {
        let Some(path) = passfile::path(self.info.passfile.as_deref()) else {
            return;
        };
        let user = config.get_user().unwrap_or_default().to_owned();
        // As libpq: the database defaults to the user name.
        let database = config.get_dbname().unwrap_or(&user).to_owned();
        let lookup = passfile::Lookup {
            host: &host.name,
            port: host.entry.port,
            database: &database,
            user: &user,
        };
        if let Some(password) = passfile::password_for(&path, lookup) {
            config.password(password);
        }
    }

    /// Connects and authenticates over one transport.
    async fn attempt(
        &self,
        config: &tokio_postgres::Config,
        transport: Transport,
        label: &str,
        connector: Option<&Connector>,
    ) -> Result<(Client, MessageStream)> {
        let result = match transport {
            Transport::Plain if names_a_tcp_host(config) => {
                // pglisten's own reader under the driver (see `connect::tap`): on the
                // wire, the same as sslmode=disable.
                let mut config = config.clone();
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                config.ssl_negotiation(tokio_postgres::config::SslNegotiation::Direct);
                let tapped = Tapped::default();
                config
                    .connect(PlainTap(tapped.clone()))
                    .await
                    .map(|(client, connection)| (client, message_stream(connection, Some(tapped))))
            }
            #[cfg(unix)]
            Transport::Plain if unix_socket_path(config).is_some() => {
                // The driver calls no TLS hook for a unix socket (it has no host name), so
                // pglisten opens the socket itself, as the driver would, and hands it
                // over with the plain tap.
                let path = unix_socket_path(config).unwrap_or_default();
                let stream = tokio::net::UnixStream::connect(&path)
                    .await
                    .map_err(|e| unix_socket_failed(label, &path, e))?;
                let mut config = config.clone();
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                config.ssl_negotiation(tokio_postgres::config::SslNegotiation::Direct);
                let tapped = Tapped::default();
                config
                    .connect_raw(stream, PlainTap(tapped.clone()))
                    .await
                    .map(|(client, connection)| (client, message_stream(connection, Some(tapped))))
            }
            Transport::Plain => {
                let mut config = config.clone();
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map(|(client, connection)| (client, message_stream(connection, None)))
            }
            #[cfg(feature = "tls")]
            Transport::Tls { .. } => {
                let Some(connector) = connector else {
                    return Err(Error::new(
                        ErrorKind::Tls,
                        "internal error: TLS was asked for but not set up",
                    ));
                };
                // TLS or nothing, even for sslmode=prefer: the driver's own fallback
                // would go on over the bare socket, where the tap cannot reach; a server
                // without TLS fails this attempt, and `connect_host` falls back to the
                // plain transport on a new connection (tapped).
                let mut config = config.clone();
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                let tapped = Tapped::default();
                let connector = TlsTap {
                    tls: connector.clone(),
                    tapped: tapped.clone(),
                };
                config
                    .connect(connector)
                    .await
                    .map(|(client, connection)| (client, message_stream(connection, Some(tapped))))
            }
            #[cfg(not(feature = "tls"))]
            Transport::Tls { .. } => {
                let _ = connector;
                return Err(Error::new(
                    ErrorKind::Config,
                    "TLS was asked for, but pglisten was built without its `tls` feature",
                ));
            }
        };
        result.map_err(|e| {
            let tls_name = match config.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(name)) => name.as_str(),
                _ => label,
            };
            diagnose::host_failed(
                e,
                &diagnose::HostAttempt {
                    label,
                    tls_name,
                    transport,
                    sslmode: self.info.sslmode,
                    direct_tls: matches!(transport, Transport::Tls { .. })
                        && config.get_ssl_negotiation()
                            == tokio_postgres::config::SslNegotiation::Direct,
                    #[cfg(feature = "tls")]
                    tls: self.tls.as_ref(),
                },
            )
        })
    }
}

/// The socket file of the unix socket directory `config` names, as libpq and the driver
/// find it: `DIRECTORY/.s.PGSQL.PORT`.
#[cfg(unix)]
fn unix_socket_path(config: &tokio_postgres::Config) -> Option<std::path::PathBuf> {
    match (config.get_hosts(), config.get_ports()) {
        ([tokio_postgres::config::Host::Unix(directory)], [port]) => {
            Some(directory.join(format!(".s.PGSQL.{port}")))
        }
        _ => None,
    }
}

/// The unix socket could not be opened: the words the driver's own failure gets (see
/// `diagnose::connect_failed`), and where pglisten looked.
#[cfg(unix)]
fn unix_socket_failed(label: &str, path: &std::path::Path, cause: std::io::Error) -> Error {
    Error::with_source(
        ErrorKind::Connect,
        format!(
            "could not connect to {label}: the server could not be reached at the unix socket \
             {}; check that it runs and that unix_socket_directories names this directory",
            path.display()
        ),
        cause,
    )
}

/// A TCP host name is what tokio-postgres needs before it calls a TLS connector, the
/// plain tap's way in (see `connect::tap::PlainTap`); a unix socket has none.
fn names_a_tcp_host(config: &tokio_postgres::Config) -> bool {
    matches!(config.get_hosts(), [tokio_postgres::config::Host::Tcp(_)])
}
