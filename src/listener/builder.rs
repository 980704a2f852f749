//! [`ListenerBuilder`]: every setting of a [`Listener`], checked by the final
//! `connect` (the checks live in `config`).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::Listener;
use crate::backoff::Backoff;
use crate::config::TaskPlacement;
use crate::config::{Draft, Source};
use crate::connect::{BoxError, Credentials, CredentialsHook, connect_hook, env_defaults};
#[cfg(doc)]
use crate::error::ErrorKind;
use crate::error::Result;
use crate::heartbeat::HeartbeatConfig;
use crate::worker::{start_connected, start_lazy};

/// Configures and creates a [`Listener`].
///
/// Settings are checked by the final [`connect`](ListenerBuilder::connect) (or
/// [`connect_lazy`](ListenerBuilder::connect_lazy)), which reports any problem as an
/// error of kind [`ErrorKind::Config`]; no setter panics.
///
/// ```no_run
/// use std::time::Duration;
/// use pglisten::{Backoff, Listener};
///
/// # async fn run() -> pglisten::Result<()> {
/// let listener = Listener::builder("postgres://app@db.internal/app")
///     .queue_capacity(10_000)
///     .connect_timeout(Duration::from_secs(5))
///     .backoff(Backoff::new().max(Duration::from_secs(30)))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until connect() or connect_lazy() is called"]
#[derive(Clone)]
pub struct ListenerBuilder {
    draft: Draft,
}

impl fmt::Debug for ListenerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never shows the connection string itself: it may hold a password.
        self.draft.fmt(f)
    }
}

impl ListenerBuilder {
    pub(super) fn new(url: &str) -> Self {
        ListenerBuilder {
            draft: Draft::new(url),
        }
    }

    /// How many notifications each subscription buffers for a slow consumer before it
    /// drops them and reports [`Event::Lagged`](crate::Event::Lagged). Must be at least 1.
    /// Default: [`DEFAULT_QUEUE_CAPACITY`](crate::DEFAULT_QUEUE_CAPACITY) (1024). Memory is used only as the queue
    /// fills.
    ///
    /// ```
    /// let builder = pglisten::Listener::builder("postgres://app@db/app").queue_capacity(64);
    /// # let _ = builder;
    /// ```
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.draft.queue_capacity = capacity;
        self
    }

    /// How often a durable subscription reads the journal again while entries are held
    /// back by an older transaction that is still running (a transaction that ends
    /// without publishing sends no wake-up, so this is how held-back entries arrive once
    /// it ends). Must be greater than zero. Default:
    /// [`DEFAULT_DURABLE_RETRY`](crate::DEFAULT_DURABLE_RETRY) (50 ms). Reads happen only
    /// while entries are held back, never while idle.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let builder = pglisten::Listener::builder("postgres://app@db/app")
    ///     .durable_retry(Duration::from_millis(200));
    /// # let _ = builder;
    /// ```
    pub fn durable_retry(mut self, interval: Duration) -> Self {
        self.draft.durable_retry = interval;
        self
    }

    /// The reconnect schedule. Default: [`Backoff::default`].
    ///
    /// ```
    /// # use std::time::Duration;
    /// let builder = pglisten::Listener::builder("postgres://app@db/app")
    ///     .backoff(pglisten::Backoff::new().initial(Duration::from_millis(50)));
    /// # let _ = builder;
    /// ```
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.draft.backoff = backoff;
        self
    }

    /// How long each step of connecting may take: reaching each host of the connection
    /// string (TCP connect, TLS, authentication, the primary check), then setting the
    /// session up, the delivery self-check and the first LISTEN, each on its own.
    /// Default: [`DEFAULT_CONNECT_TIMEOUT`](crate::DEFAULT_CONNECT_TIMEOUT) (10 s).
    ///
    /// A `connect_timeout` in the connection string takes precedence, as libpq reads it:
    /// seconds per host (at least 2), and `0` for no bound at all (then only the
    /// operating system's TCP timeouts end a connection attempt to a silent host, which
    /// can take minutes). With several hosts, every host gets the whole bound, so a
    /// host that never answers costs that bound and the next host is still tried.
    /// [`shutdown`](crate::Listener::shutdown)'s final read is bounded by this setting.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let builder = pglisten::Listener::builder("postgres://app@db/app")
    ///     .connect_timeout(Duration::from_secs(3));
    /// # let _ = builder;
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.draft.connect_timeout = timeout;
        self
    }

    /// How often the listener checks its connection, and how long a check may take
    /// before the connection is declared dead. Defaults:
    /// [`DEFAULT_HEARTBEAT_INTERVAL`](crate::DEFAULT_HEARTBEAT_INTERVAL) (10 s) and
    /// [`DEFAULT_HEARTBEAT_TIMEOUT`](crate::DEFAULT_HEARTBEAT_TIMEOUT) (5 s).
    ///
    /// A connection that silently stops carrying bytes (a NAT or proxy dropped it, a
    /// failover moved the address) is declared lost within `interval + timeout`: every
    /// subscription gets [`Event::Error`](crate::Event::Error) of kind
    /// [`ErrorKind::Timeout`], and the listener reconnects. Each check also confirms
    /// with `pg_listening_channels()` that the server still listens to every channel;
    /// a lost registration is repaired and announced as a gap
    /// ([`Event::Reconnected`](crate::Event::Reconnected)). TCP keepalives and
    /// `TCP_USER_TIMEOUT` on the listener's socket are set to agree with these values.
    /// Both must be greater than zero.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let builder = pglisten::Listener::builder("postgres://app@db/app")
    ///     .heartbeat(Duration::from_secs(5), Duration::from_secs(3));
    /// # let _ = builder;
    /// ```
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.draft.heartbeat = HeartbeatConfig { interval, timeout };
        self
    }

    /// Whether every connection proves, before it is used, that notifications sent by
    /// other sessions reach it (default: on, except for a listener built with
    /// [`connect_with`](ListenerBuilder::connect_with)). The check LISTENs a private channel, sends
    /// a NOTIFY to it from a second short-lived connection, and waits for it.
    ///
    /// It exists for poolers: behind PgBouncer (or RDS Proxy, Supavisor...) in
    /// transaction or statement mode, LISTEN succeeds but notifications never arrive.
    /// With the check, [`connect`](ListenerBuilder::connect) fails with a clear error
    /// of kind [`ErrorKind::Config`] instead. Turn it off only if a second connection
    /// per connect is a problem and you are sure no such pooler is in the path.
    ///
    /// ```
    /// let builder = pglisten::Listener::builder("postgres://app@db/app").self_check(false);
    /// # let _ = builder;
    /// ```
    pub fn self_check(mut self, enabled: bool) -> Self {
        self.draft.self_check = Some(enabled);
        self
    }

    /// Where the background task that reads the connection runs: on a thread of its
    /// own, or as a task of the runtime that calls `connect`. Default:
    /// [`TaskPlacement::Auto`] (its own thread, except on a current-thread runtime).
    ///
    /// Choose [`TaskPlacement::OwnThread`] on a current-thread runtime whose consumers
    /// may block the thread: the connection is then still read, and heartbeats answered,
    /// while they block.
    ///
    /// The task runs pglisten's code and the [`credentials`](ListenerBuilder::credentials)
    /// hook, nothing else of yours: the hook runs on that thread (or a worker thread of
    /// your runtime), never inside your consumers' `poll_next`.
    ///
    /// ```
    /// use pglisten::{Listener, TaskPlacement};
    ///
    /// let builder = Listener::builder("postgres://app@db/app")
    ///     .task_placement(TaskPlacement::OwnThread);
    /// # let _ = builder;
    /// ```
    pub fn task_placement(mut self, placement: TaskPlacement) -> Self {
        self.draft.task_placement = placement;
        self
    }

    /// The value of the `listener` label on this listener's metrics (`metrics`
    /// feature; default `"default"`), to tell several listeners of one process apart.
    /// The metric names are listed in the crate docs ("Metrics").
    ///
    /// ```
    /// let builder = pglisten::Listener::builder("postgres://app@db/app").metrics_label("orders");
    /// # let _ = builder;
    /// ```
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics_label(mut self, label: impl Into<String>) -> Self {
        self.draft.metrics_label = label.into();
        self
    }

    /// Connects, and returns once the connection is established. Fails fast: an
    /// unreachable server, refused credentials or a bad setting are reported here,
    /// without a retry loop. Once connected, later losses are recovered in the
    /// background.
    ///
    /// ```no_run
    /// # async fn run() -> pglisten::Result<()> {
    /// let listener = pglisten::Listener::builder("postgres://app@db/app").connect().await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(self) -> Result<Listener> {
        let config = Arc::new(self.draft.validate()?);
        Ok(Listener::new(start_connected(config).await?))
    }

    /// Returns at once and connects in the background, retrying with backoff until it
    /// succeeds. Subscriptions made meanwhile start with
    /// [`Event::Reconnected`](crate::Event::Reconnected) once LISTEN is active, and
    /// connection failures reach them as [`Event::Error`](crate::Event::Error).
    ///
    /// With [`TaskPlacement::CallerRuntime`] it must be called within a tokio runtime
    /// (an error of kind [`ErrorKind::Config`] says so otherwise); by default, outside
    /// a runtime the task gets a thread of its own.
    ///
    /// ```no_run
    /// # async fn run() -> pglisten::Result<()> {
    /// let listener = pglisten::Listener::builder("postgres://app@db/app").connect_lazy()?;
    /// let events = listener.subscribe(["jobs"]).await?; // registered, not yet listening
    /// # Ok(()) }
    /// ```
    pub fn connect_lazy(self) -> Result<Listener> {
        let config = Arc::new(self.draft.validate()?);
        Ok(Listener::new(start_lazy(config)?))
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
/// As libpq, the `sslkey` file must be private (0600 or less; 0640 or less if owned by
/// root), and an encrypted key is refused with how to decrypt it (no `sslpassword`).
/// `sslcrl` (a PEM file) and `sslcrldir` (a directory of them) add revocation lists:
/// every certificate of the chain is then checked, and one whose issuer has no list is
/// refused, as libpq does.
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
/// and every reconnect (`load_balance_hosts=random` shuffles them each time, and each
/// host name's addresses, each address then counting as a host); each host
/// gets the whole `connect_timeout` (seconds, at least 2; `0` for no bound), as in
/// libpq, or else [`connect_timeout`](ListenerBuilder::connect_timeout). LISTEN needs a
/// primary, so a server in recovery (`pg_is_in_recovery()`) counts as a failed host;
/// `target_session_attrs` may be `any`, `primary` or `read-write`.
/// [`ReconnectReport::host`](crate::ReconnectReport::host) says which host was reached.
/// With no `host` and no `hostaddr`, the Unix socket in `/var/run/postgresql` or `/tmp`
/// is used where the server has one for the port, else TCP to `localhost`.
///
/// Files, as libpq reads them: the password file (`passfile`, else `~/.pgpass`; ignored
/// with a warning when group or others may read it) for a connection with no password,
/// and connection service files (`service=NAME`, from `servicefile`, `PGSERVICEFILE` or
/// `~/.pg_service.conf`, then `pg_service.conf` in `PGSYSCONFDIR` or
/// `/etc/postgresql-common`). Other libpq defaults are not read: nothing from
/// `~/.postgresql/` (give `sslrootcert`, `sslcert` and `sslkey`), and a user name is
/// required. The environment's connection options are read only by
/// [`from_env`](ListenerBuilder::from_env) and
/// [`env_defaults`](ListenerBuilder::env_defaults) (the file locations `HOME`,
/// `PGSERVICEFILE` and `PGSYSCONFDIR` are looked up when a file is needed).
/// Certificate files are read again on every connection attempt, so renewed files are
/// picked up when reconnecting.
///
/// Where pglisten reads a connection string differently from libpq, on purpose or for
/// now; every other difference is a bug. A key it cannot honour is refused with an
/// [`ErrorKind::Config`] error that names it, never ignored.
///
/// | libpq | pglisten | why |
/// |---|---|---|
/// | `target_session_attrs=any`, `prefer-standby` | `any` means `primary`; the standby values are refused | LISTEN only works on a primary |
/// | no user: the operating system's user name | a user name is required | a listener's identity should be explicit |
/// | the environment is always read | only by `from_env` / `env_defaults`; all of libpq's connection variables are then read, and refused by name where not supported | no surprise from a process's environment |
/// | `~/.postgresql/root.crt`, `postgresql.crt`, `postgresql.key`, `root.crl` | not read: give `sslrootcert`, `sslcert`, `sslkey` | explicit files |
/// | no host: one compile-time socket directory | `/var/run/postgresql`, then `/tmp`, else TCP `localhost` | the two directories libpq builds use |
/// | `host=@name` (abstract Unix socket) | refused | the driver cannot connect to one |
/// | service file system directory: compile-time `sysconfdir` | `PGSYSCONFDIR`, else `/etc/postgresql-common` | Debian's and Ubuntu's libpq |
/// | `sslpassword` (encrypted client keys) | refused | not supported yet: decrypt the key (`openssl pkey -in key.pem -out plain.pem`) and protect the file |
/// | `sslcertmode=require` | refused (`disable`, `allow` accepted) | not supported |
/// | `gssencmode=require`, `krbsrvname`, `gsslib`, `gssdelegation` | refused (`gssencmode=disable`/`prefer` accepted) | no GSSAPI |
/// | `require_auth`, `sslkeylogfile`, `min_protocol_version`, `max_protocol_version`, `scram_client_key`, `scram_server_key`, `oauth_*` (libpq 16-18) | refused | not supported yet |
/// | `ssl_min_protocol_version=TLSv1` or `TLSv1.1` | met with TLS 1.2 or 1.3 | the TLS library speaks nothing older (a maximum below 1.2 is refused) |
/// | `client_encoding` | `UTF8` (or `auto`) only | payloads are Rust strings |
/// | `requiressl`, `requirepeer`, `replication`, `tty` | refused | obsolete, or meaningless for a listener |
/// | `keepalives_retries` is not a libpq key | refused, naming `keepalives_count` | tokio-postgres's name for it |
///
/// No password, key or token appears in any `Debug` or `Display` output, error or log
/// line.
impl ListenerBuilder {
    /// Starts a builder from libpq's environment variables alone, as `psql` with no
    /// arguments would: `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`,
    /// `PGSSLMODE`, `PGSSLROOTCERT`, `PGAPPNAME` and `PGCONNECT_TIMEOUT`, and also
    /// `PGHOSTADDR`, `PGOPTIONS`, `PGSSLCERT`, `PGSSLKEY`, `PGSSLNEGOTIATION`,
    /// `PGCHANNELBINDING`, `PGTARGETSESSIONATTRS`, `PGLOADBALANCEHOSTS`, `PGPASSFILE`,
    /// `PGSERVICE`, `PGSERVICEFILE`, `PGSSLSNI`, `PGSSLCRL`, `PGSSLCRLDIR`, and
    /// `PGDATESTYLE`, `PGTZ` and `PGGEQO` (sent as session settings, as libpq does).
    /// Every other connection variable libpq documents is read too, and refused by name
    /// if pglisten cannot honour its value. The environment is read once, here; empty
    /// variables count as unset.
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
        ListenerBuilder::new("").env_defaults()
    }

    /// Starts a builder from a [`tokio_postgres::Config`] your application already has,
    /// for example the one your connection pool is built from. It is read as the
    /// equivalent connection string, with the same rules and defaults: its hosts, ports
    /// and `hostaddr`s (tried in order, a standby skipped), user, password, database,
    /// options, application name, `connect_timeout` (per host, rounded up to whole
    /// seconds), keepalives, `tcp_user_timeout`, `target_session_attrs`, channel
    /// binding, `load_balance_hosts` and its TLS mode.
    ///
    /// TLS: the config's `ssl_mode` decides whether TLS is used, as `sslmode` does in a
    /// connection string (`Prefer`, the driver's default, falls back to plaintext;
    /// `Require` insists). A `tokio_postgres::Config` has no root certificates, so with
    /// `Require` alone the server is not authenticated (as libpq's `sslmode=require`):
    /// to check its certificate, give your roots with
    /// [`tls_config`](ListenerBuilder::tls_config). For libpq's `verify-full` with
    /// `sslrootcert` files, use a connection string instead. TLS needs the `tls`
    /// feature; without it, a config whose mode is `Require` is refused by `connect`.
    ///
    /// Keepalives left at the driver's defaults are tuned to the heartbeat, as for a
    /// connection string. Problems (a password that is not UTF-8, a
    /// `target_session_attrs` that asks for a standby) are reported by `connect` as
    /// [`ErrorKind::Config`] errors.
    ///
    /// ```no_run
    /// # async fn run() -> pglisten::Result<()> {
    /// let mut config = pglisten::tokio_postgres::Config::new();
    /// config.host("db.internal").user("app").password("s3cret").dbname("app");
    /// let listener = pglisten::ListenerBuilder::from_config(config)
    ///     .queue_capacity(10_000)
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// From [deadpool-postgres](https://docs.rs/deadpool-postgres): its
    /// `Config::get_pg_config()` gives the `tokio_postgres::Config` its pool uses (the
    /// `tokio-postgres` version must be the one pglisten re-exports, or the types differ):
    ///
    /// ```ignore
    /// let pool_config: deadpool_postgres::Config = settings.postgres; // as the pool has it
    /// let listener = pglisten::ListenerBuilder::from_config(pool_config.get_pg_config()?)
    ///     .connect()
    ///     .await?;
    /// ```
    ///
    /// From [sqlx](https://docs.rs/sqlx): sqlx's `PgConnectOptions` is usually parsed from
    /// a URL (`DATABASE_URL`); give pglisten the same URL with
    /// [`Listener::connect`](crate::Listener::connect), which reads libpq's keys as
    /// sqlx does (a parameter only sqlx knows, such as `statement-cache-capacity`, is
    /// refused with an error; drop it from the listener's copy). Options built in code
    /// can be carried over field by field (sqlx does not give the password back, so pass
    /// the one you set):
    ///
    /// ```ignore
    /// let options: sqlx::postgres::PgConnectOptions = /* your pool's options */;
    /// let mut config = pglisten::tokio_postgres::Config::new();
    /// config
    ///     .host(options.get_host())
    ///     .port(options.get_port())
    ///     .user(options.get_username())
    ///     .password(&password);
    /// if let Some(database) = options.get_database() {
    ///     config.dbname(database);
    /// }
    /// let listener = pglisten::ListenerBuilder::from_config(config).connect().await?;
    /// ```
    pub fn from_config(config: tokio_postgres::Config) -> ListenerBuilder {
        ListenerBuilder {
            draft: Draft::from_source(Source::Driver(Box::new(config))),
        }
    }

    /// Starts a builder whose connections your own function opens: `connect` is called
    /// for every connection attempt (the first, and each reconnect, failed attempts
    /// included), and returns a connected `tokio_postgres` client and connection, as
    /// `tokio_postgres::connect` or `Config::connect` give them, over any transport and
    /// TLS library. This is pgxlisten's `Connect` function: use it when connecting
    /// needs something pglisten does not do (a TLS library of your own, a tunnel, a
    /// secret fetched per connection, a pool's configuration type).
    ///
    /// pglisten then reads the connection (never awaiting it as a future, which would
    /// lose notifications), checks that the server is a primary (LISTEN does not work
    /// on a standby), and uses it as any other. `connect` is called exactly once per
    /// attempt: the delivery self-check, which needs a second connection, is off for a
    /// hook unless you turn it on with [`self_check(true)`](ListenerBuilder::self_check)
    /// (then each attempt calls `connect` a second time, for the short-lived connection
    /// that sends the check's NOTIFY). Turn it on when the hook may connect through a
    /// pooler: behind one in transaction mode, notifications never arrive. Each call is bounded
    /// by [`connect_timeout`](ListenerBuilder::connect_timeout), and runs where the
    /// [`credentials`](ListenerBuilder::credentials) hook would: in the listener's
    /// background task, never inside a subscription's `poll_next`.
    ///
    /// A hook that returns an error makes that attempt fail: reported by
    /// [`connect`](ListenerBuilder::connect) on the first attempt, and as an
    /// [`Event::Error`](crate::Event::Error) followed by a retry with backoff later. A
    /// `tokio_postgres::Error` is put in words like any connection failure (its kind
    /// says whether it is authentication, TLS, ...); any other error is the source of
    /// an error of kind [`ErrorKind::Connect`]. The connection's own settings are the
    /// hook's: [`credentials`](ListenerBuilder::credentials) and
    /// [`tls_config`](ListenerBuilder::tls_config) cannot be combined with it (`connect`
    /// says so), TCP keepalives are whatever the hook's configuration sets (the
    /// heartbeat detects dead connections either way), and
    /// [`ReconnectReport::host`](crate::ReconnectReport::host) is the server's address
    /// as it reports it (`inet_server_addr()`).
    ///
    /// ```no_run
    /// use pglisten::tokio_postgres::{self, NoTls};
    ///
    /// # async fn run() -> pglisten::Result<()> {
    /// let listener = pglisten::ListenerBuilder::connect_with(|| async {
    ///     let mut config = tokio_postgres::Config::new();
    ///     config.host("db.internal").user("app").dbname("app");
    ///     config.password(std::env::var("APP_DB_PASSWORD").unwrap_or_default());
    ///     config.connect(NoTls).await
    /// })
    /// .connect()
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub fn connect_with<F, Fut, S, T, E>(connect: F) -> ListenerBuilder
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<
                Output = std::result::Result<
                    (tokio_postgres::Client, tokio_postgres::Connection<S, T>),
                    E,
                >,
            > + Send
            + 'static,
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        E: Into<BoxError>,
    {
        ListenerBuilder {
            draft: Draft::from_source(Source::Hook(connect_hook(connect))),
        }
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
        self.draft.env = env_defaults(|var| std::env::var(var).ok());
        self.draft.env_requested = true;
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
    /// Where it runs: in the listener's background task, so on the listener's own
    /// thread (a single-threaded tokio runtime: tokio I/O, timers and `tokio::spawn` work
    /// there; your runtime's thread-locals and task-locals are not set), or with
    /// [`TaskPlacement::CallerRuntime`] on your runtime, where the first attempt runs in
    /// the task that awaits `connect`. Never inside a subscription's `poll_next`. A hook
    /// that panics ends the listener like any panic in its task: every stream ends,
    /// [`Listener::is_closed`](crate::Listener::is_closed) turns true, and `connect`
    /// (if it was the first attempt) fails with [`ErrorKind::Closed`] on its own thread or
    /// lets the panic through on your runtime.
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
        let hook: CredentialsHook = Arc::new(move || {
            let fut = provider();
            Box::pin(async move { fut.await.map(Into::into).map_err(Into::into) })
        });
        self.draft.credentials = Some(hook);
        self
    }

    /// Uses your own rustls configuration for TLS instead of the one pglisten builds
    /// from `sslrootcert`, `sslcert` and `sslkey` (which must then be absent). The
    /// connection string's `sslmode` still decides whether TLS is used (the default,
    /// `prefer`, falls back to plaintext), so say `sslmode=require` or stronger to
    /// insist on it; how the certificate is checked is up to your configuration. A
    /// configuration with no ALPN protocols gets `postgresql`, which direct TLS
    /// (`sslnegotiation=direct`, PostgreSQL 17+) needs; one that names its own is used
    /// as it is.
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
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_config(mut self, config: rustls::ClientConfig) -> Self {
        self.draft.tls_config = Some(Arc::new(config));
        self
    }
}
