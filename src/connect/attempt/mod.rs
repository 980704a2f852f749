//! One connection attempt: fresh credentials, then each host of the connection string in
//! order, over the transport `sslmode` asks for, until one is a primary that accepted us.
//!
//! [`ConnectConfig::connect`] asks the credentials hook (if any) once, then tries the
//! hosts in order. On each host (`host.rs`) it negotiates TLS as `sslmode` says,
//! authenticates, and checks `pg_is_in_recovery()`: a standby cannot LISTEN, so it
//! counts as a failed host. The first primary wins. Failures are put in words by
//! `diagnose`.

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use tokio_postgres::Client;
use tracing::debug;

#[cfg(feature = "tls")]
use super::conninfo::SslMode;
use super::conninfo::{ConnInfo, HostEntry, HostTimeout};
use super::credentials::CredentialsHook;
use super::hook::{ConnectHook, connect_hooked};
use super::messages::MessageStream;
#[cfg(feature = "tls")]
use super::tls::TlsSetup;
use crate::error::{Chain, Error, ErrorKind, Redacted, Result};
use crate::random::SplitMix64;

mod host;

/// A TLS configuration of the user's own, given to `ListenerBuilder::tls_config`
/// (nothing to give without the `tls` feature).
#[cfg(feature = "tls")]
pub(crate) type UserTlsConfig = Option<std::sync::Arc<rustls::ClientConfig>>;
/// A TLS configuration of the user's own (none can be given without the `tls` feature).
#[cfg(not(feature = "tls"))]
pub(crate) type UserTlsConfig = Option<std::convert::Infallible>;

/// The validated connection stage: where and how to connect, checked once, used for
/// every attempt.
#[derive(Clone)]
pub(crate) struct ConnectConfig {
    info: ConnInfo,
    /// `None` when TLS is never used (`sslmode=disable`).
    #[cfg(feature = "tls")]
    tls: Option<TlsSetup>,
    credentials: Option<CredentialsHook>,
    /// Your function that opens each connection (`ListenerBuilder::connect_with`);
    /// `info` then holds only defaults.
    hook: Option<ConnectHook>,
    /// The builder's `connect_timeout`: the bound on each step of an attempt (each host,
    /// the set-up, the self-check, the first LISTEN) unless the connection string's
    /// `connect_timeout` bounds each host itself.
    connect_timeout: Duration,
    /// Whether each new session proves that other sessions' notifications reach it.
    self_check: bool,
    target: String,
}

/// A connected, authenticated session on a primary, not yet set up for listening.
pub(crate) struct Established {
    pub(crate) client: Client,
    pub(crate) messages: MessageStream,
    /// The host it reached, as `host:port`.
    pub(crate) host: String,
    /// The same host, to connect to it again.
    pub(crate) entry: HostEntry,
}

/// What makes TLS connections (nothing without the `tls` feature).
#[cfg(feature = "tls")]
type Connector = tokio_postgres_rustls::MakeRustlsConnect;
#[cfg(not(feature = "tls"))]
enum Connector {}

impl ConnectConfig {
    /// Checks everything about `info` and the builder's connection options that can be
    /// checked before connecting (also that the certificate files can be read).
    pub(crate) fn new(
        info: ConnInfo,
        credentials: Option<CredentialsHook>,
        tls_config: UserTlsConfig,
        connect_timeout: Duration,
        self_check: bool,
    ) -> Result<Self> {
        if info.base.get_user().is_none() && credentials.is_none() {
            return Err(Error::new(
                ErrorKind::Config,
                "no user name is given: add one to the connection string \
                 (postgres://USER@host/db or user=USER) or to the tokio_postgres::Config \
                 (config.user(..)), or set PGUSER and use ListenerBuilder::from_env",
            ));
        }
        #[cfg(feature = "tls")]
        let tls = match info.sslmode {
            SslMode::Disable => None,
            _ => Some(TlsSetup::new(&info, tls_config)?),
        };
        #[cfg(not(feature = "tls"))]
        {
            let None = tls_config;
            check_without_tls(&info)?;
        }
        Ok(ConnectConfig {
            target: info.describe(),
            info,
            #[cfg(feature = "tls")]
            tls,
            credentials,
            hook: None,
            connect_timeout,
            self_check,
        })
    }

    /// Connections opened by `hook`; pglisten's own connection settings (credentials,
    /// TLS) cannot apply to them.
    pub(crate) fn with_hook(
        hook: ConnectHook,
        info: ConnInfo,
        connect_timeout: Duration,
        self_check: bool,
    ) -> Self {
        ConnectConfig {
            target: "the connections of the connect hook".to_owned(),
            info,
            #[cfg(feature = "tls")]
            tls: None,
            credentials: None,
            hook: Some(hook),
            connect_timeout,
            self_check,
        }
    }

    /// A connection string with no builder options and the default timeout.
    #[cfg(test)]
    pub(crate) fn parse(url: &str) -> Result<Self> {
        let info = ConnInfo::parse(url, &[])?;
        Self::new(info, None, None, Duration::from_secs(10), true)
    }

    /// The bound on one whole attempt, set-up and first LISTEN included.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// How long each host, and each later step of setting a connection up, may take:
    /// the connection string's `connect_timeout` (as libpq, per host; `None` for zero,
    /// which libpq reads as no bound), else the builder's `connect_timeout`.
    pub(crate) fn step_timeout(&self) -> Option<Duration> {
        match self.info.host_timeout {
            HostTimeout::Unset => Some(self.connect_timeout),
            HostTimeout::Unlimited => None,
            HostTimeout::Bound(bound) => Some(bound),
        }
    }

    /// Whether each new session proves that other sessions' notifications reach it.
    pub(crate) fn self_check(&self) -> bool {
        self.self_check
    }

    /// Where this connects, for messages: hosts, ports, database and user; no secrets.
    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    /// One attempt: fresh credentials, then each host in order until one is a primary
    /// that accepted us. Each host gets the whole [`step_timeout`](Self::step_timeout),
    /// as in libpq.
    pub(crate) async fn connect(&self) -> Result<Established> {
        if let Some(hook) = &self.hook {
            return self.connect_with_hook(hook).await;
        }
        let (base, connector) = self.prepare().await?;
        let mut failures = Vec::new();
        let hosts: Vec<HostEntry> = if self.info.random_order {
            self.addresses_in_random_order().await
        } else {
            self.info.hosts.clone()
        };
        for host in &hosts {
            match self.connect_bounded(&base, host, connector.as_ref()).await {
                Ok(established) => return Ok(established),
                Err(error) => {
                    debug!(host = %host.label(), error = %Chain(&error), "host failed");
                    failures.push(error);
                }
            }
        }
        Err(self.all_failed(failures))
    }

    /// A connection to one host of the list (the self-check's second connection goes
    /// to the host the first one reached, without walking the list again).
    pub(crate) async fn connect_to(&self, host: &HostEntry) -> Result<Established> {
        if let Some(hook) = &self.hook {
            return self.connect_with_hook(hook).await;
        }
        let (base, connector) = self.prepare().await?;
        self.connect_bounded(&base, host, connector.as_ref()).await
    }

    /// One call of the connect hook within the step timeout.
    async fn connect_with_hook(&self, hook: &ConnectHook) -> Result<Established> {
        self.bounded(connect_hooked(hook), |bound| {
            format!(
                "the connect hook did not deliver a connection within {bound:?}: check \
                 that the server is reachable, or raise the bound \
                 (ListenerBuilder::connect_timeout)"
            )
        })
        .await?
    }

    /// Runs `step` within the step timeout; past it, a [`ErrorKind::Timeout`] error
    /// with the message `late` words for the bound. No bound: `step` as it is.
    pub(crate) async fn bounded<T>(
        &self,
        step: impl Future<Output = T>,
        late: impl FnOnce(Duration) -> String,
    ) -> Result<T> {
        let Some(bound) = self.step_timeout() else {
            return Ok(step.await);
        };
        tokio::time::timeout(bound, step)
            .await
            .map_err(|_| Error::new(ErrorKind::Timeout, late(bound)))
    }

    /// The driver's settings with fresh credentials, and the TLS connector.
    async fn prepare(&self) -> Result<(tokio_postgres::Config, Option<Connector>)> {
        let mut base = self.info.base.clone();
        if let Some(hook) = &self.credentials {
            let credentials = hook().await.map_err(|e| {
                Error::with_source(
                    ErrorKind::Authentication,
                    "the credentials hook failed, so this connection attempt was not made",
                    Redacted(e),
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
        Ok((base, connector))
    }

    /// Where the step timeout comes from, for messages.
    pub(crate) fn timeout_source(&self) -> &'static str {
        match self.info.host_timeout {
            HostTimeout::Unset => "ListenerBuilder::connect_timeout",
            _ => "connect_timeout in the connection string",
        }
    }

    /// `load_balance_hosts=random`, as libpq: the hosts in random order, and each host
    /// name's addresses in random order too (each address then counts as a host, with
    /// its own step timeout).
    async fn addresses_in_random_order(&self) -> Vec<HostEntry> {
        let mut random = SplitMix64::from_entropy();
        let mut hosts: Vec<&HostEntry> = self.info.hosts.iter().collect();
        random.shuffle(&mut hosts);
        let mut spread = Vec::with_capacity(hosts.len());
        for host in hosts {
            let name = match (&host.host, host.hostaddr) {
                (Some(name), None) if !host.is_unix_socket() && name.parse::<IpAddr>().is_err() => {
                    name.as_str()
                }
                _ => {
                    spread.push(host.clone());
                    continue;
                }
            };
            let lookup = tokio::net::lookup_host((name, host.port));
            // A lookup past the step timeout counts as failed.
            let addresses = self.bounded(lookup, |_| String::new()).await;
            match addresses {
                Ok(Ok(addresses)) => {
                    let ips = addresses.map(|a| a.ip()).collect();
                    spread.extend(each_address(host, ips, &mut random));
                }
                // The driver resolves it again and reports the failure.
                _ => spread.push(host.clone()),
            }
        }
        spread
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
        let message = format!(
            "none of the {} hosts of {} could be used: {}",
            details.len(),
            self.target,
            details.join("; ")
        );
        // Every host's own message is in this one; the cause of the one that matters
        // most becomes its source, so that a reporter printing the chain shows no
        // message twice.
        let kind = main.kind();
        match main.into_source() {
            Some(cause) => Error::with_source(kind, message, cause),
            None => Error::new(kind, message),
        }
    }
}

/// Without the `tls` feature, refuses every setting that needs TLS.
#[cfg(not(feature = "tls"))]
fn check_without_tls(plan: &ConnInfo) -> Result<()> {
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

/// `host` once per address, in random order (the name kept for TLS and messages).
fn each_address(host: &HostEntry, mut ips: Vec<IpAddr>, random: &mut SplitMix64) -> Vec<HostEntry> {
    ips.sort_unstable();
    ips.dedup();
    if ips.len() <= 1 {
        return vec![host.clone()];
    }
    random.shuffle(&mut ips);
    ips.into_iter()
        .map(|ip| HostEntry {
            hostaddr: Some(ip),
            ..host.clone()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_never_shows_the_password() {
        let spec =
            ConnectConfig::parse("postgres://app:s3cret@db.example.com:6543/orders").unwrap();
        assert_eq!(spec.target(), "db.example.com:6543/orders as app");
        let spec = ConnectConfig::parse("host=a,b port=1,2 user=u password=s3cret").unwrap();
        assert_eq!(spec.target(), "a:1,b:2/u as u");
    }

    #[test]
    fn malformed_strings_are_config_errors() {
        for bad in [
            "postgres://app@db:notaport/app",
            "host=db port=",
            "sslmode=bogus",
            "host=db", // no user
        ] {
            let err = ConnectConfig::parse(bad).err().unwrap();
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
            let err = ConnectConfig::parse(url).err().unwrap();
            assert_eq!(err.kind(), ErrorKind::Config, "{url}");
            assert!(err.to_string().contains("`tls`"), "{err}");
        }
        ConnectConfig::parse("postgres://u@h/db?sslmode=prefer").unwrap();
    }

    #[test]
    fn random_load_balancing_spreads_over_every_address_of_a_name() {
        let host = HostEntry {
            host: Some("db.example.com".to_owned()),
            hostaddr: None,
            port: 5432,
        };
        let ips: Vec<IpAddr> = (1..=6).map(|i| IpAddr::from([10, 0, 0, i])).collect();
        let mut orders = std::collections::HashSet::new();
        for seed in 0..40 {
            let spread = each_address(&host, ips.clone(), &mut SplitMix64::new(seed));
            let mut got: Vec<IpAddr> = spread.iter().filter_map(|h| h.hostaddr).collect();
            assert!(spread.iter().all(|h| h.host == host.host && h.port == 5432));
            orders.insert(got.clone());
            got.sort_unstable();
            assert_eq!(got, ips, "every address once");
        }
        assert!(
            orders.len() > 10,
            "the order varies: {} orders",
            orders.len()
        );
        // One address (or a repeated one): the host as it is.
        let one = each_address(&host, vec![ips[0], ips[0]], &mut SplitMix64::new(1));
        assert_eq!(one, std::slice::from_ref(&host));
    }

    #[test]
    fn each_host_is_bounded_as_libpq_reads_connect_timeout() {
        let with = |url: &str| {
            let info = ConnInfo::parse(url, &[]).unwrap();
            ConnectConfig::new(info, None, None, Duration::from_secs(10), true)
                .unwrap()
                .step_timeout()
        };
        assert_eq!(with("postgres://u@a,b/db"), Some(Duration::from_secs(10)));
        assert_eq!(
            with("postgres://u@a,b/db?connect_timeout=12"),
            Some(Duration::from_secs(12))
        );
        // libpq: at least 2 seconds; zero or less waits forever.
        assert_eq!(
            with("postgres://u@a/db?connect_timeout=1"),
            Some(Duration::from_secs(2))
        );
        assert_eq!(with("postgres://u@a/db?connect_timeout=0"), None);
        assert_eq!(with("postgres://u@a/db?connect_timeout=-5"), None);
    }

    #[test]
    fn public_types_are_thread_safe() {
        fn check<T: Send + Sync + Unpin + 'static>() {}
        check::<crate::Credentials>();
        check::<crate::ReconnectReport>();
        check::<crate::ListenerBuilder>();
    }
}
