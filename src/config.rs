//! The listener's settings, in two stages: a [`Draft`] is what the builder collected,
//! unchecked; [`Draft::validate`] turns it into a [`ListenerConfig`], which the
//! background task is built from and never has to check again. (The connection string
//! has its own stages below: `connect::ConnInfo` parsed, `connect::ConnectConfig`
//! validated.)

use std::fmt;
use std::time::Duration;

use crate::backoff::Backoff;
use crate::connect::{
    ConnInfo, ConnectConfig, ConnectHook, CredentialsHook, UserTlsConfig, conn_info_from_driver,
};
use crate::error::{Error, ErrorKind, Result};
use crate::heartbeat::HeartbeatConfig;
use crate::telemetry::DEFAULT_LISTENER_LABEL;

/// Default capacity of each subscription's queue, in notifications.
///
/// ```
/// let builder = pglisten::Listener::builder("postgres://app@db/app")
///     .queue_capacity(4 * pglisten::DEFAULT_QUEUE_CAPACITY);
/// # let _ = builder;
/// ```
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;

/// Default bound on each host of a connection attempt, and on each later step of
/// setting a connection up (see [`ListenerBuilder::connect_timeout`](crate::ListenerBuilder::connect_timeout)).
///
/// ```
/// let builder = pglisten::Listener::builder("postgres://app@db/app")
///     .connect_timeout(2 * pglisten::DEFAULT_CONNECT_TIMEOUT);
/// # let _ = builder;
/// ```
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default interval at which a durable subscription reads again while entries are held
/// back (see [`ListenerBuilder::durable_retry`](crate::ListenerBuilder::durable_retry)).
///
/// ```
/// assert_eq!(pglisten::DEFAULT_DURABLE_RETRY, std::time::Duration::from_millis(50));
/// ```
pub const DEFAULT_DURABLE_RETRY: Duration = Duration::from_millis(50);

/// Where a listener's background task (the code that reads the connection) runs; set
/// with [`ListenerBuilder::task_placement`](crate::ListenerBuilder::task_placement).
///
/// The task must read the connection whatever your code does, or the server's
/// notification queue fills and heartbeats go unanswered. On a tokio runtime, a consumer
/// that blocks its thread (`std::thread::sleep`, a blocking client, a long computation)
/// can hold up the tasks queued on that thread; a task on a thread of its own is never
/// held up by your code.
///
/// ```
/// use pglisten::{Listener, TaskPlacement};
///
/// // A current-thread runtime whose consumers may block: read on a thread of its own.
/// let builder = Listener::builder("postgres://app@db/app")
///     .task_placement(TaskPlacement::OwnThread);
/// # let _ = builder;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TaskPlacement {
    /// [`OwnThread`](TaskPlacement::OwnThread) when `connect` is called from a
    /// multi-thread runtime or outside any runtime;
    /// [`CallerRuntime`](TaskPlacement::CallerRuntime) on a current-thread runtime, where
    /// a blocked thread stops everything anyway and one thread is what you chose.
    #[default]
    Auto,
    /// A thread of its own (named `pglisten`) with a single-threaded tokio runtime: the
    /// connection is read, and heartbeats answered, however your tasks behave. Costs one
    /// thread per listener and a cross-thread wake-up when a consumer that caught up is
    /// given its next batch.
    OwnThread,
    /// A task spawned on the runtime that calls `connect` (which must be a tokio
    /// runtime). A consumer that blocks a thread of that runtime can stop the connection
    /// from being read while it blocks: on a multi-thread runtime only when tokio queued
    /// the task behind it on that thread; on a current-thread runtime always.
    CallerRuntime,
}

/// Where the connection settings come from.
#[derive(Clone)]
pub(crate) enum Source {
    /// A connection string, libpq's way.
    Url(String),
    /// A `tokio_postgres::Config` the application already has.
    Driver(Box<tokio_postgres::Config>),
    /// The application's own function opens each connection.
    Hook(ConnectHook),
}

/// The builder stage: every setting as the user gave it, not yet checked.
#[derive(Clone)]
pub(crate) struct Draft {
    pub(crate) source: Source,
    /// libpq environment defaults, read by `from_env` / `env_defaults`.
    pub(crate) env: Vec<(String, String)>,
    /// `env_defaults` was called (even if it found nothing).
    pub(crate) env_requested: bool,
    pub(crate) credentials: Option<CredentialsHook>,
    pub(crate) tls_config: UserTlsConfig,
    pub(crate) queue_capacity: usize,
    pub(crate) backoff: Backoff,
    pub(crate) connect_timeout: Duration,
    pub(crate) heartbeat: HeartbeatConfig,
    /// `None`: the default, on for a connection string or a driver `Config`, off for
    /// a connect hook (see `ListenerBuilder::connect_with`).
    pub(crate) self_check: Option<bool>,
    pub(crate) task_placement: TaskPlacement,
    /// The `listener` label of the `metrics` feature's figures.
    pub(crate) metrics_label: String,
    pub(crate) durable_retry: Duration,
}

impl Draft {
    /// The defaults, for `url`.
    pub(crate) fn new(url: &str) -> Self {
        Draft::from_source(Source::Url(url.to_owned()))
    }

    /// The defaults, for connections made as `source` says.
    pub(crate) fn from_source(source: Source) -> Self {
        Draft {
            source,
            env: Vec::new(),
            env_requested: false,
            credentials: None,
            tls_config: None,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            backoff: Backoff::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            heartbeat: HeartbeatConfig::default(),
            self_check: None,
            task_placement: TaskPlacement::Auto,
            metrics_label: DEFAULT_LISTENER_LABEL.to_owned(),
            durable_retry: DEFAULT_DURABLE_RETRY,
        }
    }

    /// Where the connection string points, without secrets (for `Debug`).
    fn target(&self) -> String {
        match &self.source {
            Source::Url(url) => ConnInfo::parse(url, &self.env)
                .map(|info| info.describe())
                .unwrap_or_else(|_| "(invalid connection string)".to_owned()),
            Source::Driver(config) => conn_info_from_driver(config)
                .map(|info| info.describe())
                .unwrap_or_else(|_| "(invalid tokio_postgres::Config)".to_owned()),
            Source::Hook(_) => "(the connect hook's connections)".to_owned(),
        }
    }

    /// The connection settings, read from their source.
    fn conn_info(&self) -> Result<ConnInfo> {
        match &self.source {
            Source::Url(url) => ConnInfo::parse(url, &self.env),
            _ if self.env_requested => Err(Error::new(
                ErrorKind::Config,
                "env_defaults() fills in a connection string's missing keys, and this builder \
                 has no connection string (it was made by from_config or connect_with): set \
                 those values on the tokio_postgres::Config, or in the hook",
            )),
            Source::Driver(config) => conn_info_from_driver(config),
            // Only the defaults: the hook decides where and how to connect.
            Source::Hook(_) => ConnInfo::parse("user=connect_hook", &[]),
        }
    }

    /// Checks every setting; the first problem found is an [`ErrorKind::Config`] error
    /// that names it (or a TLS file that cannot be read).
    pub(crate) fn validate(self) -> Result<ListenerConfig> {
        let mut info = self.conn_info()?;
        if self.queue_capacity == 0 {
            return Err(Error::new(
                ErrorKind::Config,
                "queue_capacity must be at least 1",
            ));
        }
        if self.heartbeat.interval.is_zero() || self.heartbeat.timeout.is_zero() {
            return Err(Error::new(
                ErrorKind::Config,
                "heartbeat interval and timeout must both be greater than zero",
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::new(
                ErrorKind::Config,
                "connect_timeout must be greater than zero",
            ));
        }
        if self.durable_retry.is_zero() {
            return Err(Error::new(
                ErrorKind::Config,
                "durable_retry must be greater than zero",
            ));
        }
        info.set_tcp_keepalive(self.heartbeat.tcp_keepalive());
        let connect = match self.source {
            Source::Hook(hook) => {
                if self.credentials.is_some() {
                    return Err(Error::new(
                        ErrorKind::Config,
                        "credentials() cannot be combined with connect_with(): the connect \
                         hook opens the connections itself, so fetch the credentials inside it",
                    ));
                }
                if self.tls_config.is_some() {
                    return Err(Error::new(
                        ErrorKind::Config,
                        "tls_config() cannot be combined with connect_with(): the connect hook \
                         opens the connections itself, so give it the TLS connector",
                    ));
                }
                ConnectConfig::with_hook(
                    hook,
                    info,
                    self.connect_timeout,
                    self.self_check.unwrap_or(false),
                )
            }
            Source::Url(_) | Source::Driver(_) => ConnectConfig::new(
                info,
                self.credentials,
                self.tls_config,
                self.connect_timeout,
                self.self_check.unwrap_or(true),
            )?,
        };
        Ok(ListenerConfig {
            connect,
            queue_capacity: self.queue_capacity,
            backoff: self.backoff,
            heartbeat: self.heartbeat,
            task_placement: self.task_placement,
            metrics_label: self.metrics_label,
            durable_retry: self.durable_retry,
        })
    }
}

impl fmt::Debug for Draft {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The connection string may hold a password: show only what it points at.
        let env: Vec<&str> = self.env.iter().map(|(key, _)| key.as_str()).collect();
        f.debug_struct("ListenerBuilder")
            .field("target", &self.target())
            .field("env_defaults", &env)
            .field("credentials_hook", &self.credentials.is_some())
            .field("connect_hook", &matches!(self.source, Source::Hook(_)))
            .field("tls_config", &self.tls_config.is_some())
            .field("queue_capacity", &self.queue_capacity)
            .field("backoff", &self.backoff)
            .field("connect_timeout", &self.connect_timeout)
            .field("heartbeat", &self.heartbeat)
            .field("self_check", &self.self_check)
            .field("task_placement", &self.task_placement)
            .field("metrics_label", &self.metrics_label)
            .field("durable_retry", &self.durable_retry)
            .finish()
    }
}

/// The validated stage: everything the background task needs to (re)connect and
/// serve, checked once.
pub(crate) struct ListenerConfig {
    /// Where and how to connect; also bounds each attempt and the first LISTEN.
    pub(crate) connect: ConnectConfig,
    pub(crate) queue_capacity: usize,
    pub(crate) backoff: Backoff,
    pub(crate) heartbeat: HeartbeatConfig,
    pub(crate) task_placement: TaskPlacement,
    pub(crate) metrics_label: String,
    /// How often durable subscriptions read again while entries are held back.
    pub(crate) durable_retry: Duration,
}

impl fmt::Debug for ListenerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerConfig")
            .field("target", &self.connect.target())
            .field("connect_timeout", &self.connect.connect_timeout())
            .field("queue_capacity", &self.queue_capacity)
            .field("backoff", &self.backoff)
            .field("heartbeat", &self.heartbeat)
            .field("task_placement", &self.task_placement)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(draft: Draft) -> String {
        let error = draft.validate().expect_err("an invalid setting");
        assert_eq!(error.kind(), ErrorKind::Config, "{error}");
        error.to_string()
    }

    #[test]
    fn defaults_validate() {
        let config = Draft::new("postgres://app@db/app").validate().unwrap();
        assert_eq!(config.queue_capacity, DEFAULT_QUEUE_CAPACITY);
        assert_eq!(config.connect.connect_timeout(), DEFAULT_CONNECT_TIMEOUT);
        assert!(config.connect.self_check());
    }

    #[test]
    fn the_self_check_is_on_by_default_except_for_a_connect_hook() {
        let hook = || {
            crate::connect::connect_hook(|| async {
                tokio_postgres::Config::new()
                    .connect(tokio_postgres::NoTls)
                    .await
            })
        };
        let checked = |mut draft: Draft, asked: Option<bool>| {
            draft.self_check = asked;
            draft.validate().unwrap().connect.self_check()
        };
        let url = || Draft::new("postgres://app@db/app");
        assert!(checked(url(), None));
        assert!(!checked(url(), Some(false)));
        // A hook is called once per attempt unless the check's second connection is
        // asked for.
        assert!(!checked(Draft::from_source(Source::Hook(hook())), None));
        assert!(checked(
            Draft::from_source(Source::Hook(hook())),
            Some(true)
        ));
    }

    #[test]
    fn each_invalid_setting_is_named() {
        let mut draft = Draft::new("postgres://app@db/app");
        draft.queue_capacity = 0;
        assert!(refused(draft).contains("queue_capacity"));
        let mut draft = Draft::new("postgres://app@db/app");
        draft.heartbeat.timeout = Duration::ZERO;
        assert!(refused(draft).contains("heartbeat"));
        let mut draft = Draft::new("postgres://app@db/app");
        draft.connect_timeout = Duration::ZERO;
        assert!(refused(draft).contains("connect_timeout"));
        let mut draft = Draft::new("postgres://app@db/app");
        draft.durable_retry = Duration::ZERO;
        assert!(refused(draft).contains("durable_retry"));
    }

    #[test]
    fn debug_never_shows_the_password() {
        let draft = Draft::new("postgres://app:s3cret@db.example.com/app");
        let shown = format!("{draft:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("db.example.com"), "{shown}");
    }
}
