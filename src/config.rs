//! The listener's settings, in two stages: a [`Draft`] is what the builder collected,
//! unchecked; [`Draft::validate`] turns it into a [`ListenerConfig`], which the
//! background task is built from and never has to check again. (The connection string
//! has its own stages below: `connect::ConnInfo` parsed, `connect::ConnectConfig`
//! validated.)

use std::fmt;
use std::time::Duration;

use crate::backoff::Backoff;
use crate::connect::{ConnInfo, ConnectConfig, CredentialsHook, UserTlsConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::heartbeat::HeartbeatConfig;

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

/// The builder stage: every setting as the user gave it, not yet checked.
#[derive(Clone)]
pub(crate) struct Draft {
    pub(crate) url: String,
    /// libpq environment defaults, read by `from_env` / `env_defaults`.
    pub(crate) env: Vec<(String, String)>,
    pub(crate) credentials: Option<CredentialsHook>,
    pub(crate) tls_config: UserTlsConfig,
    pub(crate) queue_capacity: usize,
    pub(crate) backoff: Backoff,
    pub(crate) connect_timeout: Duration,
    pub(crate) heartbeat: HeartbeatConfig,
    pub(crate) self_check: bool,
    pub(crate) task_placement: TaskPlacement,
    pub(crate) durable_retry: Duration,
}

impl Draft {
    /// The defaults, for `url`.
    pub(crate) fn new(url: &str) -> Self {
        Draft {
            url: url.to_owned(),
            env: Vec::new(),
            credentials: None,
            tls_config: None,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            backoff: Backoff::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            heartbeat: HeartbeatConfig::default(),
            self_check: true,
            task_placement: TaskPlacement::Auto,
            durable_retry: DEFAULT_DURABLE_RETRY,
        }
    }

    /// Where the connection string points, without secrets (for `Debug`).
    fn target(&self) -> String {
        ConnInfo::parse(&self.url, &self.env)
            .map(|info| info.describe())
            .unwrap_or_else(|_| "(invalid connection string)".to_owned())
    }

    /// Checks every setting; the first problem found is an [`ErrorKind::Config`] error
    /// that names it (or a TLS file that cannot be read).
    pub(crate) fn validate(self) -> Result<ListenerConfig> {
        let mut info = ConnInfo::parse(&self.url, &self.env)?;
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
        let connect = ConnectConfig::new(
            info,
            self.credentials,
            self.tls_config,
            self.connect_timeout,
            self.self_check,
        )?;
        Ok(ListenerConfig {
            connect,
            queue_capacity: self.queue_capacity,
            backoff: self.backoff,
            heartbeat: self.heartbeat,
            task_placement: self.task_placement,
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
            .field("tls_config", &self.tls_config.is_some())
            .field("queue_capacity", &self.queue_capacity)
            .field("backoff", &self.backoff)
            .field("connect_timeout", &self.connect_timeout)
            .field("heartbeat", &self.heartbeat)
            .field("self_check", &self.self_check)
            .field("task_placement", &self.task_placement)
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
