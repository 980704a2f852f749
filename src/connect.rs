//! Establishing one connection: the connection string, the transport, authentication.
//!
//! Everything about *reaching* the server lives here (TLS, failover and fresh
//! credentials); the worker only asks for an established connection and then owns it.
//!
//! One attempt ([`ConnectSpec::connect`]) asks the credentials hook (if any) once, then
//! tries the hosts of the connection string in order. On each host it negotiates TLS as
//! `sslmode` says, authenticates, and checks `pg_is_in_recovery()`: a standby cannot
//! LISTEN, so it counts as a failed host. The first primary wins.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::stream::{Stream, StreamExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, SimpleQueryMessage};
use tracing::debug;

use crate::conninfo::{ConnPlan, HostEntry, SslMode};
use crate::error::{Error, ErrorKind, Result};
use crate::listener::ListenerBuilder;
#[cfg(feature = "tls")]
use crate::tls::TlsSetup;

/// The connection's messages (notifications, notices), read through `poll_message`.
pub(crate) type MessageStream =
    Pin<Box<dyn Stream<Item = Result<AsyncMessage, tokio_postgres::Error>> + Send>>;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
type CredentialsFuture = Pin<Box<dyn Future<Output = Result<Credentials, BoxError>> + Send>>;
type CredentialsFn = Arc<dyn Fn() -> CredentialsFuture + Send + Sync>;

/// Credentials for one connection attempt, returned by the hook given to
/// [`ListenerBuilder::credentials`].
///
/// A `String` (or `&str`) converts into `Credentials` holding just a password, so a hook
/// can return the password (for example a fresh cloud IAM token) directly. `Debug`
/// never shows the password.
///
/// ```
/// use pglisten::Credentials;
///
/// let token: Credentials = "short-lived-token".into();
/// let rotated = Credentials::password("s3cret").user("app_v2");
/// assert_eq!(format!("{rotated:?}"), r#"Credentials { user: Some("app_v2"), password: "<redacted>" }"#);
/// # let _ = token;
/// ```
#[derive(Clone)]
pub struct Credentials {
    user: Option<String>,
    password: Option<String>,
}

impl Credentials {
    /// Credentials with this password; the user name comes from the connection string.
    ///
    /// ```
    /// let credentials = pglisten::Credentials::password("s3cret");
    /// # let _ = credentials;
    /// ```
    pub fn password(password: impl Into<String>) -> Self {
        Credentials {
            user: None,
            password: Some(password.into()),
        }
    }

    /// Also replaces the user name of the connection string (for example when a secret
    /// store hands out a new user with each lease).
    ///
    /// ```
    /// let credentials = pglisten::Credentials::password("s3cret").user("v-app-3f9a");
    /// # let _ = credentials;
    /// ```
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }
}

impl From<String> for Credentials {
    fn from(password: String) -> Self {
        Credentials::password(password)
    }
}

impl From<&str> for Credentials {
    fn from(password: &str) -> Self {
        Credentials::password(password)
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field(
                "password",
                &self.password.as_ref().map_or("<none>", |_| "<redacted>"),
            )
            .finish()
    }
}

/// What the builder knows about reaching the server beyond the connection string.
#[derive(Clone, Default)]
pub(crate) struct ConnectOptions {
    /// libpq environment defaults, read by `from_env` / `env_defaults`.
    env: Vec<(String, String)>,
    credentials: Option<CredentialsFn>,
    #[cfg(feature = "tls")]
    tls_config: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env: Vec<&str> = self.env.iter().map(|(key, _)| key.as_str()).collect();
        let mut d = f.debug_struct("ConnectOptions");
        d.field("env_defaults", &env)
            .field("credentials_hook", &self.credentials.is_some());
        #[cfg(feature = "tls")]
        d.field("tls_config", &self.tls_config.is_some());
        d.finish()
    }
}

/// # Connection strings, TLS and failover
///
/// [`Listener::connect`](crate::Listener::connect) and
/// [`Listener::builder`](crate::Listener::builder) take the connection strings you give
/// `psql`: a URL (`postgres://user:password@host:port/dbname?key=value&...`, parts
/// percent-encoded, `postgresql://` works too) or key=value pairs
/// (`host=db user=app sslmode=verify-full`, values with spaces in single quotes).
///
/// Keys: `host`, `hostaddr`, `port` (each may be a comma-separated list), `user`,
/// `password`, `dbname`, `options`, `application_name`, `fallback_application_name`,
/// `connect_timeout`, `sslmode`, `sslrootcert`, `sslcert`, `sslkey`, `sslsni`,
/// `sslnegotiation`, `channel_binding`, `target_session_attrs`, `load_balance_hosts`,
/// `tcp_user_timeout`, `keepalives`, `keepalives_idle`, `keepalives_interval`,
/// `keepalives_retries`; in URLs also `ssl=true` (same as `sslmode=require`). Any other
/// key is an [`ErrorKind::Config`] error that names it.
///
/// `sslmode`, as in libpq (the default is `prefer`):
///
/// | sslmode | TLS | certificate check |
/// |---|---|---|
/// | `disable` | never | - |
/// | `allow` | only if the server refuses a plaintext connection | chain, if `sslrootcert` is set |
/// | `prefer` (default) | if the server offers it, else plaintext | chain, if `sslrootcert` is set |
/// | `require` | always | chain, if `sslrootcert` is set; else none |
/// | `verify-ca` | always | chain to `sslrootcert` (required); any host name |
/// | `verify-full` | always | chain to `sslrootcert` (required) and host name |
///
/// `sslrootcert` is a PEM file (your provider's CA bundle) or `system` for the
/// platform's trust store; `system` implies `verify-full` and refuses weaker modes (as
/// libpq 16). `sslcert` + `sslkey` (PEM files) log in with a client certificate.
/// `channel_binding=require` insists on SCRAM-SHA-256-PLUS, which needs TLS. The
/// certificate is checked against `host`; with `hostaddr` the connection goes to that
/// address while `host` is still the name checked. TLS needs the `tls` cargo feature
/// (on by default); without it, a setting that needs TLS is an [`ErrorKind::Config`]
/// error.
///
/// Several hosts are tried in order on every connection attempt, the first one included
/// and every reconnect (`load_balance_hosts=random` shuffles them each time); each host
/// gets `connect_timeout` seconds if set, else its share of
/// [`connect_timeout`](ListenerBuilder::connect_timeout). LISTEN needs a primary, so a
/// server in recovery (`pg_is_in_recovery()`) counts as a failed host;
/// `target_session_attrs` may be `any`, `primary` or `read-write`.
/// [`ReconnectReport::host`](crate::ReconnectReport::host) says which host was reached.
///
/// Unlike libpq, pglisten reads no files and no environment by itself: there are no
/// defaults from `~/.postgresql/` or `~/.pgpass`, a missing host means `localhost`, and
/// a user name is required. The environment is read only by
/// [`from_env`](ListenerBuilder::from_env) and
/// [`env_defaults`](ListenerBuilder::env_defaults). Certificate files are read again on
/// every connection attempt, so renewed files are picked up when reconnecting.
///
/// No password, key or token appears in any `Debug` or `Display` output, error or log
/// line.
impl ListenerBuilder {
    /// Starts a builder from libpq's environment variables alone, as `psql` with no
    /// arguments would: `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`,
    /// `PGSSLMODE`, `PGSSLROOTCERT`, `PGAPPNAME` and `PGCONNECT_TIMEOUT`, and also
    /// `PGHOSTADDR`, `PGOPTIONS`, `PGSSLCERT`, `PGSSLKEY`, `PGSSLNEGOTIATION`,
    /// `PGCHANNELBINDING`, `PGTARGETSESSIONATTRS` and `PGLOADBALANCEHOSTS`. The
    /// environment is read once, here; empty variables count as unset.
    ///
    /// pglisten never reads the environment unless asked to: see also
    /// [`env_defaults`](ListenerBuilder::env_defaults).
    ///
    /// ```no_run
    /// # async fn run() -> pglisten::Result<()> {
    /// // PGHOST=db.example.com PGUSER=app PGSSLMODE=verify-full PGSSLROOTCERT=/etc/ca.pem
    /// let listener = pglisten::ListenerBuilder::from_env().connect().await?;
    /// # Ok(()) }
    /// ```
    pub fn from_env() -> ListenerBuilder {
        crate::Listener::builder("").env_defaults()
    }

    /// Fills in every key the connection string leaves out from libpq's environment
    /// variables (the list is at [`from_env`](ListenerBuilder::from_env)); keys in the
    /// string win. The environment is read once, here.
    ///
    /// ```no_run
    /// # async fn run() -> pglisten::Result<()> {
    /// // The password comes from PGPASSWORD, the rest from the URL.
    /// let listener = pglisten::Listener::builder("postgres://app@db.example.com/app")
    ///     .env_defaults()
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn env_defaults(mut self) -> Self {
        self.connect.env = crate::conninfo::env_defaults(|var| std::env::var(var).ok());
        self
    }

    /// Calls `provider` before every connection attempt (the first and each reconnect)
    /// for the credentials to use, so that short-lived cloud IAM tokens and rotated
    /// passwords keep working across reconnects. It returns a password (a `String`) or
    /// [`Credentials`]; what it returns overrides the connection string. A hook that
    /// fails makes that attempt fail with [`ErrorKind::Authentication`]: reported by
    /// [`connect`](ListenerBuilder::connect) on the first attempt, and as an
    /// [`Event::Error`](crate::Event::Error) (followed by a retry with backoff) later.
    ///
    /// ```no_run
    /// # async fn fetch_iam_token() -> Result<String, std::io::Error> { Ok(String::new()) }
    /// # async fn run() -> pglisten::Result<()> {
    /// let listener = pglisten::Listener::builder(
    ///     "postgres://iam_user@db.example.com/app?sslmode=verify-full&sslrootcert=/etc/rds.pem",
    /// )
    /// .credentials(|| async { fetch_iam_token().await })
    /// .connect()
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub fn credentials<F, Fut, C, E>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<C, E>> + Send + 'static,
        C: Into<Credentials>,
        E: Into<BoxError>,
    {
        let hook: CredentialsFn = Arc::new(move || {
            let fut = provider();
            Box::pin(async move { fut.await.map(Into::into).map_err(Into::into) })
        });
        self.connect.credentials = Some(hook);
        self
    }

    /// Uses your own rustls configuration for TLS instead of the one pglisten builds
    /// from `sslrootcert`, `sslcert` and `sslkey` (which must then be absent). The
    /// connection string's `sslmode` still decides whether TLS is used (the default,
    /// `prefer`, falls back to plaintext), so say `sslmode=require` or stronger to
    /// insist on it; how the certificate is checked is up to your configuration.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use pglisten::rustls;
    ///
    /// # async fn run(roots: rustls::RootCertStore) -> Result<(), Box<dyn std::error::Error>> {
    /// let provider = Arc::new(rustls::crypto::ring::default_provider());
    /// let config = rustls::ClientConfig::builder_with_provider(provider)
    ///     .with_safe_default_protocol_versions()?
    ///     .with_root_certificates(roots)
    ///     .with_no_client_auth();
    /// let listener = pglisten::Listener::builder("postgres://app@db.example.com/app?sslmode=require")
    ///     .tls_config(config)
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls_config(mut self, config: rustls::ClientConfig) -> Self {
        self.connect.tls_config = Some(Arc::new(config));
        self
    }
}

/// Where and how to connect; parsed once, used for every attempt.
#[derive(Clone)]
pub(crate) struct ConnectSpec {
    plan: ConnPlan,
    /// `None` when TLS is never used (`sslmode=disable`).
    #[cfg(feature = "tls")]
    tls: Option<TlsSetup>,
    credentials: Option<CredentialsFn>,
    /// The bound on one whole attempt; with several hosts, each gets its share unless
    /// `connect_timeout` says otherwise.
    attempt_timeout: Duration,
    target: String,
}

/// A connected, authenticated session on a primary, not yet set up for listening.
pub(crate) struct Established {
    pub(crate) client: Client,
    pub(crate) messages: MessageStream,
    /// The host it reached, as `host:port`.
    pub(crate) host: String,
}

/// What makes TLS connections (nothing without the `tls` feature).
#[cfg(feature = "tls")]
type Connector = tokio_postgres_rustls::MakeRustlsConnect;
#[cfg(not(feature = "tls"))]
enum Connector {}

/// How one host is reached in this attempt.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Plain,
    /// TLS; with `fallback`, plaintext if the server does not offer TLS.
    Tls {
        fallback: bool,
    },
}

impl ConnectSpec {
    /// Parses a URL (`postgres://...`) or key=value connection string with no builder
    /// options.
    #[cfg(test)]
    pub(crate) fn parse(url: &str) -> Result<Self> {
        Self::build(
            url,
            &ConnectOptions::default(),
            crate::listener::DEFAULT_CONNECT_TIMEOUT,
        )
    }

    /// Parses `url` with the builder's options, checking everything that can be
    /// checked before connecting (also that the certificate files can be read).
    pub(crate) fn build(
        url: &str,
        options: &ConnectOptions,
        attempt_timeout: Duration,
    ) -> Result<Self> {
        let plan = ConnPlan::parse(url, &options.env)?;
        if plan.base.get_user().is_none() && options.credentials.is_none() {
            return Err(Error::new(
                ErrorKind::Config,
                "the connection string names no user: add one (postgres://USER@host/db or \
                 user=USER), or set PGUSER and use ListenerBuilder::from_env",
            ));
        }
        #[cfg(feature = "tls")]
        let tls = match plan.sslmode {
            SslMode::Disable => None,
            _ => Some(TlsSetup::new(&plan, options.tls_config.clone())?),
        };
        #[cfg(not(feature = "tls"))]
        check_without_tls(&plan)?;
        Ok(ConnectSpec {
            target: plan.describe(),
            plan,
            #[cfg(feature = "tls")]
            tls,
            credentials: options.credentials.clone(),
            attempt_timeout,
        })
    }

    /// Sets TCP keepalives and `TCP_USER_TIMEOUT` to agree with the heartbeat, unless
    /// the connection string chose its own.
    pub(crate) fn set_tcp_keepalive(&mut self, keepalive: crate::heartbeat::TcpKeepalive) {
        const DRIVER_DEFAULT_IDLE: std::time::Duration =
            std::time::Duration::from_secs(2 * 60 * 60);
        if !self.plan.base.get_keepalives() {
            return; // keepalives=0 in the connection string
        }
        if self.plan.base.get_keepalives_idle() == DRIVER_DEFAULT_IDLE {
            self.plan.base.keepalives_idle(keepalive.idle);
        }
        if self.plan.base.get_keepalives_interval().is_none() {
            self.plan.base.keepalives_interval(keepalive.interval);
        }
        if self.plan.base.get_keepalives_retries().is_none() {
            self.plan.base.keepalives_retries(keepalive.retries);
        }
        if self.plan.base.get_tcp_user_timeout().is_none() {
            self.plan.base.tcp_user_timeout(keepalive.user_timeout);
        }
    }

    /// Where this connects, for messages: hosts, ports, database and user; no secrets.
    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    /// One attempt: fresh credentials, then each host in order until one is a primary
    /// that accepted us.
    pub(crate) async fn connect(&self) -> Result<Established> {
        let mut base = self.plan.base.clone();
        if let Some(hook) = &self.credentials {
            let credentials = hook().await.map_err(|e| {
                Error::with_source(
                    ErrorKind::Authentication,
                    format!("the credentials hook failed: {e}"),
                    e,
                )
            })?;
            if let Some(user) = &credentials.user {
                base.user(user);
            }
            if let Some(password) = &credentials.password {
                base.password(password);
            }
        }
        if base.get_user().is_none() {
            return Err(Error::new(
                ErrorKind::Config,
                "neither the connection string nor the credentials hook names a user",
            ));
        }
        #[cfg(feature = "tls")]
        let connector = match &self.tls {
            Some(setup) => Some(setup.connector()?),
            None => None,
        };
        #[cfg(not(feature = "tls"))]
        let connector: Option<Connector> = None;
        let hosts = self.host_order();
        let per_host = self.plan.host_timeout.or_else(|| {
            // Leave every host a chance within the attempt's bound.
            let count = u32::try_from(hosts.len()).unwrap_or(u32::MAX);
            (count > 1).then(|| self.attempt_timeout / count)
        });
        let mut failures = Vec::new();
        for host in hosts {
            let label = host.label();
            let attempt = self.connect_host(&base, host, connector.as_ref());
            let result = match per_host {
                Some(bound) => tokio::time::timeout(bound, attempt)
                    .await
                    .unwrap_or_else(|_| {
                        Err(Error::new(
                            ErrorKind::Timeout,
                            format!("{label} did not answer within {bound:?}"),
                        ))
                    }),
                None => attempt.await,
            };
            match result {
                Ok(established) => return Ok(established),
                Err(error) => {
                    debug!(host = %label, error = %error, "host failed");
                    failures.push(error);
                }
            }
        }
        Err(self.all_failed(failures))
    }

    /// The hosts in the order to try them.
    fn host_order(&self) -> Vec<&HostEntry> {
        let mut hosts: Vec<&HostEntry> = self.plan.hosts.iter().collect();
        if self.plan.random_order {
            // Fisher-Yates with SplitMix64.
            let mut state = crate::backoff::random_seed();
            for i in (1..hosts.len()).rev() {
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                let j = usize::try_from(z % (i as u64 + 1)).unwrap_or(0);
                hosts.swap(i, j);
            }
        }
        hosts
    }

    /// One error for an attempt in which every host failed.
    fn all_failed(&self, mut failures: Vec<Error>) -> Error {
        if failures.len() <= 1 {
            return failures.pop().unwrap_or_else(|| {
                Error::new(ErrorKind::Config, "the connection string names no host")
            });
        }
        // Problems a person must fix outrank ones that may pass by themselves.
        let rank = |kind: ErrorKind| match kind {
            ErrorKind::Authentication => 3,
            ErrorKind::Tls => 2,
            ErrorKind::Config => 1,
            _ => 0,
        };
        let details: Vec<String> = failures.iter().map(ToString::to_string).collect();
        let chosen = failures
            .iter()
            .enumerate()
            .max_by_key(|(i, e)| (rank(e.kind()), *i))
            .map_or(0, |(i, _)| i);
        let main = failures.swap_remove(chosen);
        Error::with_source(
            main.kind(),
            format!(
                "none of the {} hosts of {} could be used: {}",
                details.len(),
                self.target,
                details.join("; ")
            ),
            main,
        )
    }

    /// Connects to one host, then makes sure it is a primary.
    async fn connect_host(
        &self,
        base: &tokio_postgres::Config,
        host: &HostEntry,
        connector: Option<&Connector>,
    ) -> Result<Established> {
        let label = host.label();
        let mut config = base.clone();
        match (&host.host, host.hostaddr) {
            (Some(name), _) => config.host(name),
            // The address is also the name TLS checks the certificate against.
            (None, Some(addr)) => config.host(addr.to_string()),
            (None, None) => config.host("localhost"),
        };
        if let Some(addr) = host.hostaddr {
            config.hostaddr(addr);
        }
        config.port(host.port);

        // The first transport to try, and the one to fall back to when it fails in a way
        // the other transport may not (as libpq does for allow and prefer).
        let tls_built = cfg!(feature = "tls");
        let (first, fallback) = match self.plan.sslmode {
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
            Err(e) if fallback.is_some() && (e.kind() == ErrorKind::Tls || refused_by_hba(&e)) => {
                debug!(host = %label, error = %e, sslmode = %self.plan.sslmode, "trying the other transport");
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
            Error::connect_failed(
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
        })
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
            Transport::Plain => {
                let mut config = config.clone();
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map(|(client, connection)| (client, message_stream(connection)))
            }
            #[cfg(feature = "tls")]
            Transport::Tls { fallback } => {
                let Some(connector) = connector else {
                    return Err(Error::new(
                        ErrorKind::Tls,
                        "internal error: TLS was asked for but not set up",
                    ));
                };
                let mut config = config.clone();
                config.ssl_mode(if fallback {
                    tokio_postgres::config::SslMode::Prefer
                } else {
                    tokio_postgres::config::SslMode::Require
                });
                config
                    .connect(connector.clone())
                    .await
                    .map(|(client, connection)| (client, message_stream(connection)))
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
        result.map_err(|e| self.describe_failure(e, config, transport, label))
    }

    /// Turns a driver error from connecting to one host into a message a person can act
    /// on.
    fn describe_failure(
        &self,
        e: tokio_postgres::Error,
        config: &tokio_postgres::Config,
        transport: Transport,
        label: &str,
    ) -> Error {
        let mode = self.plan.sslmode;
        #[cfg(feature = "tls")]
        if let Some(setup) = &self.tls {
            let name = match config.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(name)) => name.clone(),
                _ => label.to_owned(),
            };
            if let Some(explanation) = crate::tls::explain(&e, &name, setup) {
                return Error::with_source(
                    ErrorKind::Tls,
                    format!("TLS with {label} failed: {explanation}"),
                    e,
                );
            }
        }
        #[cfg(not(feature = "tls"))]
        let _ = config;
        let cause = std::error::Error::source(&e).map(ToString::to_string);
        let text = e.to_string();
        if text == "error performing TLS handshake" {
            let message = match cause.as_deref() {
                Some("server does not support TLS") => format!(
                    "the server at {label} does not support TLS, but sslmode={mode} requires it; \
                     turn ssl on in the server's configuration, or use sslmode=prefer to accept \
                     an unencrypted connection"
                ),
                Some(detail) => format!("TLS with {label} failed: {detail}"),
                None => format!("TLS with {label} failed"),
            };
            return Error::with_source(ErrorKind::Tls, message, e);
        }
        if cause.as_deref() == Some("server did not use channel binding") {
            let over = match transport {
                Transport::Plain => "this connection was not encrypted",
                Transport::Tls { fallback: true } => {
                    "with sslmode=prefer the connection is not encrypted when the server does \
                     not offer TLS"
                }
                Transport::Tls { fallback: false } => "the server did not offer it",
            };
            return Error::with_source(
                ErrorKind::Authentication,
                format!(
                    "channel_binding=require, but {label} did not use channel binding \
                     (SCRAM-SHA-256-PLUS; {over}): it needs a TLS connection (sslmode=require or \
                     stronger) and scram-sha-256 password authentication"
                ),
                e,
            );
        }
        if cause.as_deref() == Some("password missing") {
            return Error::with_source(
                ErrorKind::Authentication,
                format!(
                    "{label} asks for a password, but none was given: put it in the connection \
                     string, set PGPASSWORD and use ListenerBuilder::from_env, or supply it with \
                     ListenerBuilder::credentials"
                ),
                e,
            );
        }
        if let Some(db) = e.as_db_error()
            && db.code() == &SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            let hint = if transport == Transport::Plain && db.message().contains("no encryption") {
                "; the server accepts this user only over TLS: use sslmode=require or stronger"
            } else if db.message().contains("client certificate") {
                "; set sslcert and sslkey to a certificate the server trusts"
            } else {
                ""
            };
            return Error::with_source(
                ErrorKind::Authentication,
                format!(
                    "{label} refused the connection: {}: {} (SQLSTATE {}){hint}",
                    db.severity(),
                    db.message(),
                    db.code().code()
                ),
                e,
            );
        }
        Error::connect_failed(&format!("could not connect to {label}"), e)
    }
}

/// Whether pg_hba.conf refused this kind of connection (so another transport may work).
fn refused_by_hba(e: &Error) -> bool {
    e.code() == Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
}

/// Without the `tls` feature, refuses every setting that needs TLS.
#[cfg(not(feature = "tls"))]
fn check_without_tls(plan: &ConnPlan) -> Result<()> {
    let needs = if plan.sslmode.requires_tls() {
        Some(format!("sslmode={}", plan.sslmode))
    } else if plan.sslrootcert.is_some() {
        Some("sslrootcert".to_owned())
    } else if plan.sslcert.is_some() {
        Some("sslcert".to_owned())
    } else {
        None
    };
    match needs {
        Some(what) => Err(Error::new(
            ErrorKind::Config,
            format!(
                "{what} needs TLS, but pglisten was built without its `tls` cargo feature; \
                 enable it (it is on by default), or use sslmode=prefer or disable"
            ),
        )),
        None => Ok(()),
    }
}

/// Reads a connection's messages through `poll_message`.
fn message_stream<S, T>(mut connection: tokio_postgres::Connection<S, T>) -> MessageStream
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(futures::stream::poll_fn(move |cx| {
        connection.poll_message(cx)
    }))
}

/// Describes where a connection string points, without secrets, for `Debug`.
pub(crate) fn describe(url: &str, options: &ConnectOptions) -> String {
    ConnPlan::parse(url, &options.env)
        .map(|plan| plan.describe())
        .unwrap_or_else(|_| "(invalid connection string)".to_owned())
}

/// Runs `query` while polling the connection that does its I/O.
pub(crate) async fn drive<T>(
    messages: &mut MessageStream,
    query: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, tokio_postgres::Error> {
    let mut query = std::pin::pin!(query);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = query.as_mut().poll(cx) {
            return Poll::Ready(result);
        }
        loop {
            match messages.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                // The query's own future reports the closed connection.
                Poll::Ready(None) => return query.as_mut().poll(cx),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_never_shows_the_password() {
        let spec = ConnectSpec::parse("postgres://app:s3cret@db.example.com:6543/orders").unwrap();
        assert_eq!(spec.target(), "db.example.com:6543/orders as app");
        let spec = ConnectSpec::parse("host=a,b port=1,2 user=u password=s3cret").unwrap();
        assert_eq!(spec.target(), "a:1,b:2/u as u");
    }

    #[test]
    fn keepalive_follows_the_heartbeat_unless_the_string_sets_its_own() {
        use std::time::Duration;
        let keepalive = crate::heartbeat::HeartbeatConfig::default().tcp_keepalive();
        let mut spec = ConnectSpec::parse("host=db user=u").unwrap();
        spec.set_tcp_keepalive(keepalive);
        assert_eq!(spec.plan.base.get_keepalives_idle(), keepalive.idle);
        assert_eq!(
            spec.plan.base.get_tcp_user_timeout(),
            Some(&keepalive.user_timeout)
        );
        let mut spec =
            ConnectSpec::parse("host=db user=u keepalives_idle=30 tcp_user_timeout=9000").unwrap();
        spec.set_tcp_keepalive(keepalive);
        assert_eq!(
            spec.plan.base.get_keepalives_idle(),
            Duration::from_secs(30)
        );
        assert_eq!(
            spec.plan.base.get_tcp_user_timeout(),
            Some(&Duration::from_secs(9))
        );
    }

    #[test]
    fn malformed_strings_are_config_errors() {
        for bad in [
            "postgres://app@db:notaport/app",
            "host=db port=",
            "sslmode=bogus",
            "host=db", // no user
        ] {
            let err = ConnectSpec::parse(bad).err().unwrap();
            assert_eq!(err.kind(), ErrorKind::Config, "{bad}");
        }
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn without_tls_demanding_it_is_a_config_error() {
        for url in [
            "postgres://u@h/db?sslmode=require",
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=/ca.pem",
            "postgres://u@h/db?sslrootcert=/ca.pem",
        ] {
            let err = ConnectSpec::parse(url).err().unwrap();
            assert_eq!(err.kind(), ErrorKind::Config, "{url}");
            assert!(err.to_string().contains("`tls`"), "{err}");
        }
        ConnectSpec::parse("postgres://u@h/db?sslmode=prefer").unwrap();
    }

    #[test]
    fn public_types_are_thread_safe() {
        fn check<T: Send + Sync + Unpin + 'static>() {}
        check::<Credentials>();
        check::<crate::ReconnectReport>();
        check::<ListenerBuilder>();
    }

    #[test]
    fn credentials_debug_hides_the_password() {
        let c = Credentials::password("s3cret").user("bob");
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("bob"));
    }
}
