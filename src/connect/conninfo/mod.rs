//! Connection strings as libpq reads them: the URL and key=value forms, the keys
//! tokio-postgres knows plus libpq's TLS keys, and environment defaults (pure).
//!
//! The result is a [`ConnInfo`]: a tokio-postgres `Config` holding everything except
//! the hosts and the TLS choice, the hosts in order, and the TLS settings that
//! tokio-postgres does not understand (`sslmode=allow|verify-ca|verify-full`,
//! `sslrootcert`, `sslcert`, `sslkey`).
//!
//! No message made here shows a value: a connection string may hold a password.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::servicefile;
use crate::error::{Error, ErrorKind, Result};

mod keys;
mod syntax;
mod values;

use keys::{ENV_SESSION_SETTINGS, check_key, invalid_value};
pub(crate) use keys::{ENV_VARS, env_defaults};
use syntax::parse_params;
pub(super) use values::build;

/// Where libpq looks for the server's Unix socket when no host is given (its
/// compile-time default: `/tmp` upstream, `/var/run/postgresql` in Debian's, Ubuntu's
/// and Red Hat's builds): both are looked at, in this order.
const DEFAULT_SOCKET_DIRS: &[&str] = &["/var/run/postgresql", "/tmp"];

/// The port libpq uses when none is given.
pub(crate) const DEFAULT_PORT: u16 = 5432;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    /// Plaintext only.
    Disable,
    /// Plaintext first; TLS if the server refuses the plaintext connection.
    Allow,
    /// TLS if the server offers it, else plaintext (the default).
    Prefer,
    /// TLS only; the certificate is checked only when `sslrootcert` is given.
    Require,
    /// TLS only; the certificate must chain to `sslrootcert`.
    VerifyCa,
    /// TLS only; the certificate must chain to `sslrootcert` and name the host.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// The value as written in a connection string.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether a connection without TLS is refused.
    #[cfg_attr(feature = "tls", allow(dead_code))]
    pub(crate) fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the trusted root certificates come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RootCert {
    /// The platform's trust store (`sslrootcert=system`).
    System,
    /// A PEM file with one or more certificates.
    File(PathBuf),
}

/// libpq's `connect_timeout`, which bounds each host separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostTimeout {
    /// Not in the connection string: the builder's `connect_timeout` applies.
    Unset,
    /// Zero or less: no bound, as in libpq (the operating system's TCP timeouts apply).
    Unlimited,
    Bound(Duration),
}

/// One server to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostEntry {
    /// A name, an IP address or (starting with `/`) a unix socket directory.
    pub(crate) host: Option<String>,
    /// The address to connect to instead of resolving `host`.
    pub(crate) hostaddr: Option<IpAddr>,
    pub(crate) port: u16,
}

impl HostEntry {
    /// Whether this is a unix socket (no TLS there, as with libpq).
    pub(crate) fn is_unix_socket(&self) -> bool {
        self.hostaddr.is_none() && self.host.as_deref().is_some_and(|h| h.starts_with('/'))
    }

    /// The host to connect to: as given, or for an entry with neither host nor hostaddr,
    /// libpq's default: the Unix socket in the usual socket directory
    /// (`/var/run/postgresql`, then `/tmp`) where a server listens on one for this port,
    /// else TCP to `localhost`.
    pub(crate) fn or_default(&self) -> Dial {
        let name = match (&self.host, self.hostaddr) {
            (Some(name), _) => name.clone(),
            // The address is also the name TLS checks the certificate against.
            (None, Some(addr)) => addr.to_string(),
            (None, None) => {
                let socket_dir = DEFAULT_SOCKET_DIRS.iter().find(|dir| {
                    std::path::Path::new(dir)
                        .join(format!(".s.PGSQL.{}", self.port))
                        .exists()
                });
                let name = socket_dir.map_or("localhost", |dir| dir).to_owned();
                let entry = HostEntry {
                    host: Some(name.clone()),
                    hostaddr: None,
                    port: self.port,
                };
                return Dial { name, entry };
            }
        };
        Dial {
            name,
            entry: self.clone(),
        }
    }

    /// `host:port` for messages and reports, e.g. `127.0.0.1:5432` or `[::1]:5432`.
    pub(crate) fn label(&self) -> String {
        let host = match (&self.host, &self.hostaddr) {
            (Some(host), _) => host.clone(),
            (None, Some(addr)) => addr.to_string(),
            (None, None) => "localhost".to_owned(),
        };
        if host.contains(':') && !host.starts_with('/') {
            format!("[{host}]:{}", self.port)
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// A host entry that names what to connect to ([`HostEntry::or_default`]).
#[derive(Debug, Clone)]
pub(crate) struct Dial {
    /// The host name or socket directory, or else the address as text: what the driver
    /// connects to, TLS checks the certificate against, and the password file is
    /// searched for.
    pub(crate) name: String,
    /// The entry, with libpq's default host filled in when it named none.
    pub(crate) entry: HostEntry,
}

/// A parsed connection string: what every connection attempt starts from.
#[derive(Clone)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(crate) struct ConnInfo {
    /// Everything tokio-postgres handles itself; no hosts, ports or TLS mode.
    pub(crate) base: tokio_postgres::Config,
    pub(crate) hosts: Vec<HostEntry>,
    pub(crate) sslmode: SslMode,
    pub(crate) sslrootcert: Option<RootCert>,
    pub(crate) sslcert: Option<PathBuf>,
    pub(crate) sslkey: Option<PathBuf>,
    /// Certificate revocation lists: a PEM file, and a directory of them.
    pub(crate) sslcrl: Option<PathBuf>,
    pub(crate) sslcrldir: Option<PathBuf>,
    /// Send the host name in the TLS handshake (SNI).
    pub(crate) sslsni: bool,
    /// libpq's `connect_timeout`: a bound on each host.
    pub(crate) host_timeout: HostTimeout,
    /// `load_balance_hosts=random`: try the hosts in random order.
    pub(crate) random_order: bool,
    /// `ssl_min_protocol_version` / `ssl_max_protocol_version`.
    pub(crate) tls_versions: TlsVersions,
    /// libpq's `passfile`: where a connection with no password looks for one
    /// (`None`: `~/.pgpass`).
    pub(crate) passfile: Option<PathBuf>,
}

impl ConnInfo {
    /// Parses `text` (a URL or key=value pairs); `defaults` fill in keys the string
    /// does not set (environment defaults).
    pub(crate) fn parse(text: &str, defaults: &[(String, String)]) -> Result<ConnInfo> {
        let mut params = parse_params(text)?;
        let default = |key: &str| {
            defaults
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        // As libpq: the connection string, then its service's options, then the
        // environment.
        let service = params
            .get("service")
            .cloned()
            .or_else(|| default("service"));
        if let Some(name) = service.filter(|name| !name.is_empty()) {
            let servicefile = params
                .get("servicefile")
                .cloned()
                .or_else(|| default("servicefile"));
            let places = servicefile::Places::find(servicefile.as_deref(), |var| {
                std::env::var(var).ok().filter(|v| !v.is_empty())
            });
            for (key, value) in servicefile::options(&name, &places)? {
                check_key(&key)
                    .map_err(|e| config_error(format!("connection service `{name}`: {e}")))?;
                params.entry(key).or_insert(value);
            }
        }
        for (key, value) in defaults {
            if ENV_SESSION_SETTINGS.contains(&key.as_str()) {
                // Spaces in a value are escaped for the server's options parser.
                let setting = format!(
                    "-c {key}={}",
                    value.replace('\\', "\\\\").replace(' ', "\\ ")
                );
                let options = params.entry("options".to_owned()).or_default();
                if !options.is_empty() {
                    options.push(' ');
                }
                options.push_str(&setting);
                continue;
            }
            check_key(key).map_err(|e| {
                let var = ENV_VARS
                    .iter()
                    .find(|(_, k)| k == key)
                    .map_or("the environment", |(var, _)| var);
                config_error(format!(
                    "{var} (read by from_env/env_defaults): {e}; unset it"
                ))
            })?;
            params.entry(key.clone()).or_insert_with(|| value.clone());
        }
        build(params)
    }

    /// Sets TCP keepalives and `TCP_USER_TIMEOUT` to agree with the heartbeat, unless
    /// the connection string chose its own.
    pub(crate) fn set_tcp_keepalive(&mut self, keepalive: crate::heartbeat::TcpKeepalive) {
        const DRIVER_DEFAULT_IDLE: Duration = Duration::from_secs(2 * 60 * 60);
        if !self.base.get_keepalives() {
            return; // keepalives=0 in the connection string
        }
        if self.base.get_keepalives_idle() == DRIVER_DEFAULT_IDLE {
            self.base.keepalives_idle(keepalive.idle);
        }
        if self.base.get_keepalives_interval().is_none() {
            self.base.keepalives_interval(keepalive.interval);
        }
        if self.base.get_keepalives_retries().is_none() {
            self.base.keepalives_retries(keepalive.retries);
        }
        if self.base.get_tcp_user_timeout().is_none() {
            self.base.tcp_user_timeout(keepalive.user_timeout);
        }
    }

    /// Where this connects, for messages: hosts, database and user; no secrets.
    pub(crate) fn describe(&self) -> String {
        let hosts: Vec<String> = self.hosts.iter().map(HostEntry::label).collect();
        let user = self.base.get_user().unwrap_or("(default user)");
        let db = self.base.get_dbname().unwrap_or(user);
        format!("{}/{db} as {user}", hosts.join(","))
    }
}

fn config_error(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Config, message)
}

/// The TLS versions `ssl_min_protocol_version` and `ssl_max_protocol_version` allow, of
/// the two rustls speaks (1.2 and 1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TlsVersions {
    pub(crate) tls12: bool,
    pub(crate) tls13: bool,
}

impl TlsVersions {
    /// Both versions: the default.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) const ANY: TlsVersions = TlsVersions {
        tls12: true,
        tls13: true,
    };

    fn from_params(params: &BTreeMap<String, String>) -> Result<TlsVersions> {
        // libpq's values; below 1.2 only as a minimum (nothing older is ever used).
        let rank = |key: &str, allow_old: bool| -> Result<Option<u8>> {
            match params.get(key).map(|v| v.trim()) {
                None | Some("") => Ok(None),
                Some("TLSv1" | "TLSv1.1") if allow_old => Ok(Some(12)),
                Some("TLSv1.2") => Ok(Some(12)),
                Some("TLSv1.3") => Ok(Some(13)),
                Some("TLSv1" | "TLSv1.1") => Err(config_error(format!(
                    "{key}: pglisten's TLS library speaks TLS 1.2 and 1.3 only; use TLSv1.2 or \
                     TLSv1.3"
                ))),
                Some(_) => Err(invalid_value(key, "TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3")),
            }
        };
        let min = rank("ssl_min_protocol_version", true)?.unwrap_or(12);
        let max = rank("ssl_max_protocol_version", false)?.unwrap_or(13);
        if min > max {
            return Err(config_error(
                "ssl_min_protocol_version is above ssl_max_protocol_version: no TLS version is \
                 left",
            ));
        }
        Ok(TlsVersions {
            tls12: min <= 12,
            tls13: max >= 13,
        })
    }
}

#[cfg(test)]
mod tests;
