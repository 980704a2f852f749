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
use std::str::FromStr;
use std::time::Duration;

use super::servicefile;
use crate::error::{Error, ErrorKind, Result};

/// Where libpq looks for the server's Unix socket when no host is given (its
/// compile-time default: `/tmp` upstream, `/var/run/postgresql` in Debian's, Ubuntu's
/// and Red Hat's builds): both are looked at, in this order.
const DEFAULT_SOCKET_DIRS: &[&str] = &["/var/run/postgresql", "/tmp"];

/// The port libpq uses when none is given.
pub(crate) const DEFAULT_PORT: u16 = 5432;

/// Keys passed on to tokio-postgres as they are (it checks their values).
const DRIVER_KEYS: &[&str] = &[
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "channel_binding",
    "sslnegotiation",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
];

/// Keys pglisten interprets itself.
const OWN_KEYS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "connect_timeout",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "target_session_attrs",
    "load_balance_hosts",
    "fallback_application_name",
    // libpq reads it in milliseconds; tokio-postgres would read seconds.
    "tcp_user_timeout",
    // libpq's name for tokio-postgres's keepalives_retries.
    "keepalives_count",
    "passfile",
    // Read by `ConnInfo::parse` (the service file's options).
    "service",
    "servicefile",
];

/// libpq keys whose harmless values pglisten accepts (checked in `build`): what they
/// ask for is what pglisten does anyway, or what it can honour.
const HARMLESS_VALUE_KEYS: &[&str] = &[
    "gssencmode",
    "sslcompression",
    "client_encoding",
    "sslcertmode",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
];

/// Keys of libpq 16, 17 and 18 that pglisten does not support yet.
const NEWER_LIBPQ_KEYS: &[&str] = &[
    "require_auth",
    "sslkeylogfile",
    "min_protocol_version",
    "max_protocol_version",
    "scram_client_key",
    "scram_server_key",
    "oauth_issuer",
    "oauth_client_id",
    "oauth_client_secret",
    "oauth_scope",
];

/// libpq keys that pglisten knows about but does not support.
const UNSUPPORTED_LIBPQ_KEYS: &[&str] = &[
    "sslpassword",
    "requiressl",
    "requirepeer",
    "gsslib",
    "gssdelegation",
    "krbsrvname",
    "replication",
    "tty",
];

/// Environment variables read by `ListenerBuilder::from_env`, and the keys they set.
pub(crate) const ENV_VARS: &[(&str, &str)] = &[
    ("PGHOST", "host"),
    ("PGHOSTADDR", "hostaddr"),
    ("PGPORT", "port"),
    ("PGUSER", "user"),
    ("PGPASSWORD", "password"),
    ("PGPASSFILE", "passfile"),
    ("PGSERVICE", "service"),
    ("PGSERVICEFILE", "servicefile"),
    ("PGDATABASE", "dbname"),
    ("PGOPTIONS", "options"),
    ("PGAPPNAME", "application_name"),
    ("PGSSLMODE", "sslmode"),
    ("PGSSLROOTCERT", "sslrootcert"),
    ("PGSSLCERT", "sslcert"),
    ("PGSSLKEY", "sslkey"),
    ("PGSSLNEGOTIATION", "sslnegotiation"),
    ("PGCHANNELBINDING", "channel_binding"),
    ("PGCONNECT_TIMEOUT", "connect_timeout"),
    ("PGTARGETSESSIONATTRS", "target_session_attrs"),
    ("PGLOADBALANCEHOSTS", "load_balance_hosts"),
    ("PGSSLSNI", "sslsni"),
    // The rest of libpq's documented variables: read, so that one pglisten cannot honour
    // is refused by name instead of silently ignored.
    ("PGREQUIREAUTH", "require_auth"),
    ("PGREQUIRESSL", "requiressl"),
    ("PGSSLCOMPRESSION", "sslcompression"),
    ("PGSSLCERTMODE", "sslcertmode"),
    ("PGSSLCRL", "sslcrl"),
    ("PGSSLCRLDIR", "sslcrldir"),
    ("PGREQUIREPEER", "requirepeer"),
    ("PGSSLMINPROTOCOLVERSION", "ssl_min_protocol_version"),
    ("PGSSLMAXPROTOCOLVERSION", "ssl_max_protocol_version"),
    ("PGGSSENCMODE", "gssencmode"),
    ("PGKRBSRVNAME", "krbsrvname"),
    ("PGGSSLIB", "gsslib"),
    ("PGGSSDELEGATION", "gssdelegation"),
    ("PGCLIENTENCODING", "client_encoding"),
    ("PGMINPROTOCOLVERSION", "min_protocol_version"),
    ("PGMAXPROTOCOLVERSION", "max_protocol_version"),
    // Session settings libpq sends at startup: folded into `options` (`-c name=value`).
    ("PGDATESTYLE", "datestyle"),
    ("PGTZ", "timezone"),
    ("PGGEQO", "geqo"),
];

/// The environment's session settings (`PGDATESTYLE`, `PGTZ`, `PGGEQO`): not options of
/// a connection string, sent as `-c` settings in `options`, as libpq sends them.
const ENV_SESSION_SETTINGS: &[&str] = &["datestyle", "timezone", "geqo"];

/// Reads the libpq environment variables in [`ENV_VARS`] through `lookup`; unset and
/// empty variables are skipped. Returns (key, value) pairs.
pub(crate) fn env_defaults(lookup: impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    ENV_VARS
        .iter()
        .filter_map(|(var, key)| {
            lookup(var)
                .filter(|v| !v.is_empty())
                .map(|v| ((*key).to_owned(), v))
        })
        .collect()
}

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
    pub(crate) fn or_default(&self) -> HostEntry {
        if self.host.is_some() || self.hostaddr.is_some() {
            return self.clone();
        }
        let socket_dir = DEFAULT_SOCKET_DIRS.iter().find(|dir| {
            std::path::Path::new(dir)
                .join(format!(".s.PGSQL.{}", self.port))
                .exists()
        });
        HostEntry {
            host: Some(socket_dir.map_or("localhost", |dir| dir).to_owned()),
            hostaddr: None,
            port: self.port,
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

/// Splits a connection string into key/value pairs; later keys win, as in libpq.
fn parse_params(text: &str) -> Result<BTreeMap<String, String>> {
    let trimmed = text.trim();
    let pairs = if let Some(rest) = trimmed
        .strip_prefix("postgresql://")
        .or_else(|| trimmed.strip_prefix("postgres://"))
    {
        parse_url(rest)?
    } else if trimmed.contains("://") {
        return Err(config_error(
            "invalid connection string: a URL must start with postgres:// or postgresql://",
        ));
    } else {
        parse_key_values(trimmed)?
    };
    let mut params = BTreeMap::new();
    for (key, value) in pairs {
        check_key(&key)?;
        params.insert(key, value);
    }
    Ok(params)
}

/// Refuses keys pglisten does not support, naming them.
fn check_key(key: &str) -> Result<()> {
    if key == "keepalives_retries" {
        // tokio-postgres's name, which libpq does not know.
        Err(config_error(
            "invalid connection string: `keepalives_retries` is not a libpq option; libpq \
             calls it keepalives_count",
        ))
    } else if DRIVER_KEYS.contains(&key)
        || OWN_KEYS.contains(&key)
        || HARMLESS_VALUE_KEYS.contains(&key)
    {
        Ok(())
    } else if NEWER_LIBPQ_KEYS.contains(&key) {
        Err(config_error(format!(
            "invalid connection string: `{key}` (an option of libpq 16 to 18) is not supported \
             by pglisten yet; remove it"
        )))
    } else if UNSUPPORTED_LIBPQ_KEYS.contains(&key) {
        Err(config_error(format!(
            "invalid connection string: the libpq option `{key}` is not supported by pglisten; \
             remove it"
        )))
    } else {
        // Not shown: an unknown word may be part of a secret (an unquoted password).
        let suggestion = closest_key(key)
            .map(|known| format!(" (did you mean `{known}`?)"))
            .unwrap_or_default();
        Err(config_error(format!(
            "invalid connection string: an option pglisten does not know{suggestion}; \
             expected libpq options such as host, port, user, password, dbname, sslmode, \
             sslrootcert, sslcert, sslkey"
        )))
    }
}

/// `key=value` pairs separated by spaces; values may be single-quoted, and `\` escapes
/// the next character.
fn parse_key_values(text: &str) -> Result<Vec<(String, String)>> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            // The stray word may be part of the previous value (a password with a space,
            // say): it is never shown, only where it is.
            let after = match pairs.last() {
                Some((previous, _)) if is_known_key(previous) => format!(
                    " after the value of `{previous}` (a value with spaces must be quoted: \
                     {previous}='...')"
                ),
                Some(_) => format!(" (word {} of the string)", pairs.len() + 1),
                None => " at the start".to_owned(),
            };
            return Err(config_error(format!(
                "invalid connection string: a word without \"=\"{after}; expected a URL like \
                 postgres://user@host/db or key=value pairs like \"host=db user=app\""
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(unterminated(&key)),
                    },
                    Some(c) => value.push(c),
                    None => return Err(unterminated(&key)),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

fn unterminated(key: &str) -> Error {
    config_error(format!(
        "invalid connection string: the quoted value of {} has no closing quote",
        shown_key(key)
    ))
}

/// Whether `key` is one pglisten knows (so that it can be shown: it is not user text
/// that might be part of a secret).
fn is_known_key(key: &str) -> bool {
    key == "keepalives_retries"
        || [
            DRIVER_KEYS,
            OWN_KEYS,
            HARMLESS_VALUE_KEYS,
            NEWER_LIBPQ_KEYS,
            UNSUPPORTED_LIBPQ_KEYS,
        ]
        .iter()
        .any(|list| list.contains(&key))
}

/// A key for a message: named if pglisten knows it, else described.
fn shown_key(key: &str) -> String {
    if is_known_key(key) {
        format!("`{key}`")
    } else {
        "an option pglisten does not know".to_owned()
    }
}

/// The known key closest to an unknown one (a typo), if any is close.
fn closest_key(key: &str) -> Option<&'static str> {
    [DRIVER_KEYS, OWN_KEYS, HARMLESS_VALUE_KEYS]
        .iter()
        .flat_map(|list| list.iter().copied())
        .map(|known| (edit_distance(key, known), known))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, known)| known)
}

/// Levenshtein distance, for typo suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// The part of a URL after `postgres://`:
/// `[user[:password]@][host[:port][,host[:port]...]][/dbname][?key=value&...]`.
fn parse_url(rest: &str) -> Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    // As libpq: user credentials end at the first `@` that comes before any `/`, so a
    // password may hold `?` or `&` (but `/` and `@` must be percent-encoded).
    let (userinfo, rest) = match rest.find(['@', '/']) {
        Some(at) if rest[at..].starts_with('@') => (Some(&rest[..at]), &rest[at + 1..]),
        _ => (None, rest),
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let (hosts, path) = match before_query.split_once('/') {
        Some((hosts, path)) => (hosts, Some(path)),
        None => (before_query, None),
    };
    if hosts.contains('@') || path.is_some_and(|p| p.contains('@')) {
        return Err(config_error(
            "invalid connection string: the URL has an `@` after its user name and password \
             (a password holding `/` or `@` must percent-encode them, as %2F and %40)",
        ));
    }
    if let Some(userinfo) = userinfo {
        let (user, password) = match userinfo.split_once(':') {
            Some((user, password)) => (user, Some(password)),
            None => (userinfo, None),
        };
        if !user.is_empty() {
            pairs.push(("user".to_owned(), decode(user, "the user name")?));
        }
        if let Some(password) = password {
            pairs.push(("password".to_owned(), decode(password, "the password")?));
        }
    }
    if !hosts.is_empty() {
        let mut names = Vec::new();
        let mut ports = Vec::new();
        for spec in hosts.split(',') {
            let (host, port) = split_host_port(spec)?;
            names.push(decode(host, "a host name")?);
            ports.push(port.to_owned());
        }
        if names.iter().any(|n| !n.is_empty()) {
            pairs.push(("host".to_owned(), names.join(",")));
        }
        if ports.iter().any(|p| !p.is_empty()) {
            pairs.push(("port".to_owned(), ports.join(",")));
        }
    }
    if let Some(path) = path.filter(|p| !p.is_empty()) {
        pairs.push(("dbname".to_owned(), decode(path, "the database name")?));
    }
    for (number, param) in query.into_iter().flat_map(|q| q.split('&')).enumerate() {
        if param.is_empty() {
            continue;
        }
        let Some((key, value)) = param.split_once('=') else {
            // Not shown: it may be the rest of a value holding `&`.
            return Err(config_error(format!(
                "invalid connection string: URL parameter number {} has no \"=value\" (a \
                 value holding `&` must percent-encode it as %26)",
                number + 1
            )));
        };
        let key = decode(key, "a URL parameter name")?;
        let value = decode(value, "a URL parameter value")?;
        // libpq accepts JDBC's `ssl=true` in URLs.
        if key == "ssl" {
            if value != "true" {
                return Err(config_error(
                    "invalid connection string: the URL parameter `ssl` only accepts `true` \
                     (use sslmode=...)",
                ));
            }
            pairs.push(("sslmode".to_owned(), "require".to_owned()));
            continue;
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

/// Splits `host:port`, `[v6]:port`, `host` or `[v6]`.
fn split_host_port(spec: &str) -> Result<(&str, &str)> {
    if let Some(rest) = spec.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(config_error(
                "invalid connection string: an IPv6 address in the URL lacks its closing \"]\"",
            ));
        };
        let port = match after {
            "" => "",
            _ => after.strip_prefix(':').ok_or_else(|| {
                config_error("invalid connection string: unexpected text after \"]\" in the URL")
            })?,
        };
        return Ok((host, port));
    }
    Ok(spec.split_once(':').unwrap_or((spec, "")))
}

/// Percent-decodes one URL part; the message names the part, never its value.
fn decode(part: &str, what: &str) -> Result<String> {
    let bad = || {
        config_error(format!(
            "invalid connection string: {what} in the URL is not valid percent-encoding"
        ))
    };
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Exactly two hex digits, as libpq (`from_str_radix` alone would take "+1").
            let hex = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .ok_or_else(bad)?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            let byte = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
            if byte == 0 {
                return Err(config_error(format!(
                    "invalid connection string: {what} in the URL contains %00 (a NUL \
                     byte), which libpq refuses too"
                )));
            }
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// Quotes a value for tokio-postgres's key=value parser.
fn quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('\'');
    quoted
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

/// libpq options whose values pglisten accepts only where they ask for what it does.
fn check_harmless_values(params: &BTreeMap<String, String>, has_sslcert: bool) -> Result<()> {
    let value = |key: &str| params.get(key).map(|v| v.trim().to_owned());
    match value("gssencmode").as_deref() {
        None | Some("disable" | "prefer") => {}
        Some("require") => {
            return Err(config_error(
                "gssencmode=require cannot be honoured: pglisten has no GSSAPI encryption; use \
                 TLS (sslmode=require or stronger) instead",
            ));
        }
        Some(_) => return Err(invalid_value("gssencmode", "disable, prefer or require")),
    }
    // Ignored by libpq since PostgreSQL 14 (no TLS compression anywhere).
    match value("sslcompression").as_deref() {
        None | Some("0" | "1") => {}
        Some(_) => return Err(invalid_value("sslcompression", "0 or 1")),
    }
    if let Some(encoding) = value("client_encoding") {
        let utf8 = encoding
            .replace(['-', '_'], "")
            .eq_ignore_ascii_case("utf8");
        if !utf8 && !encoding.eq_ignore_ascii_case("auto") {
            return Err(config_error(
                "client_encoding: pglisten always uses UTF8 (payloads are Rust strings); use \
                 client_encoding=UTF8 or remove it",
            ));
        }
    }
    match value("sslcertmode").as_deref() {
        None | Some("allow") => {}
        Some("disable") if has_sslcert => {
            return Err(config_error(
                "sslcertmode=disable with sslcert: the client certificate would never be sent; \
                 remove one of them",
            ));
        }
        Some("disable") => {}
        Some("require") => {
            return Err(config_error(
                "sslcertmode=require is not supported by pglisten; use sslcertmode=allow (the \
                 certificate of sslcert is sent when the server asks for it)",
            ));
        }
        Some(_) => return Err(invalid_value("sslcertmode", "disable, allow or require")),
    }
    Ok(())
}

fn invalid_value(key: &str, expected: &str) -> Error {
    config_error(format!(
        "invalid connection string: invalid value for `{key}`; expected {expected}"
    ))
}

pub(super) fn build(mut params: BTreeMap<String, String>) -> Result<ConnInfo> {
    // target_session_attrs: the listener needs a primary and checks for one after every
    // connect; "read-write" additionally asks tokio-postgres to check for writability.
    match params.remove("target_session_attrs").as_deref() {
        None | Some("any") | Some("primary") => {}
        Some("read-write") => {
            params.insert("target_session_attrs".to_owned(), "read-write".to_owned());
        }
        Some(other @ ("standby" | "read-only" | "prefer-standby")) => {
            return Err(config_error(format!(
                "target_session_attrs={other} cannot work: LISTEN is refused on a standby, so \
                 the listener always connects to a primary (use primary, read-write or any)"
            )));
        }
        Some(_) => {
            return Err(invalid_value(
                "target_session_attrs",
                "any, primary or read-write",
            ));
        }
    }

    if let Some(count) = params.remove("keepalives_count") {
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| invalid_value("keepalives_count", "a whole number of probes"))?;
        params.insert("keepalives_retries".to_owned(), count.to_string());
    }

    let mut text = String::new();
    for (key, value) in &params {
        if DRIVER_KEYS.contains(&key.as_str()) || key == "target_session_attrs" {
            text.push_str(key);
            text.push('=');
            text.push_str(&quote(value));
            text.push(' ');
        }
    }
    let mut base = tokio_postgres::Config::from_str(&text).map_err(|e| {
        // The driver names the option, never its value.
        let detail = std::error::Error::source(&e)
            .map(ToString::to_string)
            .unwrap_or_else(|| e.to_string());
        Error::with_source(
            ErrorKind::Config,
            format!("invalid connection string: {detail}"),
            e,
        )
    })?;
    match params
        .get("tcp_user_timeout")
        .map(|v| v.trim().parse::<u64>())
    {
        None | Some(Ok(0)) => {} // 0: the system default, as in libpq
        Some(Ok(millis)) => {
            base.tcp_user_timeout(Duration::from_millis(millis));
        }
        Some(Err(_)) => {
            return Err(invalid_value(
                "tcp_user_timeout",
                "a number of milliseconds",
            ));
        }
    }
    if base.get_application_name().is_none() {
        let name = params
            .get("fallback_application_name")
            .map_or("pglisten", String::as_str);
        base.application_name(name);
    }

    let sslrootcert = match params.get("sslrootcert").map(String::as_str) {
        None | Some("") => None,
        Some("system") => Some(RootCert::System),
        Some(path) => Some(RootCert::File(PathBuf::from(path))),
    };
    let sslmode = match params.get("sslmode") {
        Some(value) => SslMode::parse(value).ok_or_else(|| {
            invalid_value(
                "sslmode",
                "disable, allow, prefer, require, verify-ca or verify-full",
            )
        })?,
        // As libpq: the platform's roots are for verify-full only.
        None if sslrootcert == Some(RootCert::System) => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    if sslrootcert == Some(RootCert::System) && sslmode != SslMode::VerifyFull {
        return Err(config_error(format!(
            "sslrootcert=system needs sslmode=verify-full (got sslmode={sslmode}): a public \
             certificate authority vouches for host names, so only checking the host name \
             makes its certificates meaningful"
        )));
    }
    // As libpq: a direct TLS handshake only where TLS is required, so that no fallback
    // can ever send the startup packet (user name, database) in plaintext.
    if params.get("sslnegotiation").map(|v| v.trim()) == Some("direct")
        && !matches!(
            sslmode,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    {
        return Err(config_error(format!(
            "sslnegotiation=direct needs sslmode=require, verify-ca or verify-full (got \
             sslmode={sslmode}): a direct TLS connection has no plaintext fallback; set \
             sslmode=require or stronger, or drop sslnegotiation=direct"
        )));
    }
    let path = |key: &str| params.get(key).filter(|v| !v.is_empty()).map(PathBuf::from);
    let (sslcert, sslkey) = (path("sslcert"), path("sslkey"));
    let (sslcrl, sslcrldir) = (path("sslcrl"), path("sslcrldir"));
    match (&sslcert, &sslkey) {
        (Some(_), None) => {
            return Err(config_error(
                "sslcert is given without sslkey: a client certificate needs its private key",
            ));
        }
        (None, Some(_)) => {
            return Err(config_error(
                "sslkey is given without sslcert: a private key needs its client certificate",
            ));
        }
        _ => {}
    }
    check_harmless_values(&params, sslcert.is_some())?;
    let tls_versions = TlsVersions::from_params(&params)?;
    let sslsni = match params.get("sslsni").map(String::as_str) {
        None | Some("1") => true,
        Some("0") => false,
        Some(_) => return Err(invalid_value("sslsni", "0 or 1")),
    };
    let random_order = match params.get("load_balance_hosts").map(String::as_str) {
        None | Some("disable") => false,
        Some("random") => true,
        Some(_) => return Err(invalid_value("load_balance_hosts", "disable or random")),
    };
    let host_timeout = match params.get("connect_timeout") {
        None => HostTimeout::Unset,
        Some(value) => {
            let seconds: i64 = value
                .trim()
                .parse()
                .map_err(|_| invalid_value("connect_timeout", "a whole number of seconds"))?;
            // As libpq: zero or less waits forever; the minimum is 2 seconds.
            if seconds > 0 {
                HostTimeout::Bound(Duration::from_secs(seconds.max(2).unsigned_abs()))
            } else {
                HostTimeout::Unlimited
            }
        }
    };
    if let HostTimeout::Bound(timeout) = host_timeout {
        base.connect_timeout(timeout);
    }
    let hosts = hosts(&params)?;
    let passfile = params
        .get("passfile")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    Ok(ConnInfo {
        passfile,
        tls_versions,
        base,
        hosts,
        sslmode,
        sslrootcert,
        sslcert,
        sslkey,
        sslcrl,
        sslcrldir,
        sslsni,
        host_timeout,
        random_order,
    })
}

/// The host list: `host`, `hostaddr` and `port` (each comma-separated) side by side.
fn hosts(params: &BTreeMap<String, String>) -> Result<Vec<HostEntry>> {
    let list = |key: &str| -> Vec<String> {
        params
            .get(key)
            .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
            .unwrap_or_default()
    };
    let names = list("host");
    let addrs = list("hostaddr");
    let ports = list("port");
    let count = names.len().max(addrs.len()).max(1);
    if !names.is_empty() && !addrs.is_empty() && names.len() != addrs.len() {
        return Err(config_error(format!(
            "invalid connection string: {} host(s) but {} hostaddr(s); give one hostaddr per \
             host",
            names.len(),
            addrs.len()
        )));
    }
    if ports.len() > 1 && ports.len() != count {
        return Err(config_error(format!(
            "invalid connection string: {count} host(s) but {} ports; give one port for all \
             hosts or one per host",
            ports.len()
        )));
    }
    let mut entries = Vec::with_capacity(count);
    for i in 0..count {
        let host = names.get(i).filter(|h| !h.is_empty()).cloned();
        let hostaddr = match addrs.get(i).filter(|a| !a.is_empty()) {
            Some(addr) => Some(
                addr.parse::<IpAddr>()
                    .map_err(|_| invalid_value("hostaddr", "a numeric IPv4 or IPv6 address"))?,
            ),
            None => None,
        };
        let port = match ports.get(i).or(ports.first()).filter(|p| !p.is_empty()) {
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| invalid_value("port", "a number from 1 to 65535"))?,
            None => DEFAULT_PORT,
        };
        if host.as_deref().is_some_and(|h| h.starts_with('@')) {
            return Err(config_error(
                "invalid connection string: a host starting with @ is a Unix socket in Linux's \
                 abstract namespace, which pglisten's driver cannot connect to; run the server \
                 with a socket directory on disk and give its path as host (host=/run/...), or \
                 connect over TCP",
            ));
        }
        // No host and no hostaddr: the default, chosen when connecting (see
        // `HostEntry::or_default`).
        entries.push(HostEntry {
            host,
            hostaddr,
            port,
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str) -> ConnInfo {
        ConnInfo::parse(text, &[]).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn err(text: &str) -> Error {
        match ConnInfo::parse(text, &[]) {
            Ok(_) => panic!("{text} should be refused"),
            Err(e) => e,
        }
    }

    #[test]
    fn url_with_everything() {
        let p = plan(
            "postgresql://app:p%40ss@db1.example.com:6543,[::1]:7000,db3/orders%2Fx\
             ?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=svc",
        );
        assert_eq!(p.base.get_user(), Some("app"));
        assert_eq!(p.base.get_password(), Some(&b"p@ss"[..]));
        assert_eq!(p.base.get_dbname(), Some("orders/x"));
        assert_eq!(p.base.get_application_name(), Some("svc"));
        assert_eq!(p.sslmode, SslMode::VerifyFull);
        assert_eq!(p.sslrootcert, Some(RootCert::File("/etc/ca.pem".into())));
        let labels: Vec<String> = p.hosts.iter().map(HostEntry::label).collect();
        assert_eq!(labels, ["db1.example.com:6543", "[::1]:7000", "db3:5432"]);
        assert_eq!(
            p.describe(),
            "db1.example.com:6543,[::1]:7000,db3:5432/orders/x as app"
        );
    }

    #[test]
    fn key_values_with_quotes_and_escapes() {
        let p = plan(
            "host=a,b port=1,2 user = 'o\\'brien' password='two words' dbname=x\\ y \
             sslmode=require",
        );
        assert_eq!(p.base.get_user(), Some("o'brien"));
        assert_eq!(p.base.get_password(), Some(&b"two words"[..]));
        assert_eq!(p.base.get_dbname(), Some("x y"));
        assert_eq!(p.sslmode, SslMode::Require);
        assert_eq!(p.hosts.len(), 2);
        assert_eq!(p.hosts[1].label(), "b:2");
    }

    #[test]
    fn default_is_prefer_on_localhost() {
        let p = plan("user=app");
        assert_eq!(p.sslmode, SslMode::Prefer);
        assert_eq!(p.hosts[0].label(), "localhost:5432");
        assert_eq!(p.base.get_application_name(), Some("pglisten"));
    }

    #[test]
    fn direct_tls_needs_a_required_sslmode() {
        for mode in ["disable", "allow", "prefer"] {
            let e = err(&format!("user=u sslnegotiation=direct sslmode={mode}"));
            assert!(e.to_string().contains("sslnegotiation=direct"), "{e}");
        }
        // The default sslmode is prefer.
        err("user=u sslnegotiation=direct");
        for mode in ["require", "verify-ca", "verify-full"] {
            plan(&format!("user=u sslnegotiation=direct sslmode={mode}"));
        }
        plan("user=u sslnegotiation=postgres sslmode=prefer");
    }

    #[test]
    fn every_sslmode_parses() {
        for mode in [
            "disable",
            "allow",
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        ] {
            assert_eq!(
                plan(&format!("user=u sslmode={mode}")).sslmode.as_str(),
                mode
            );
        }
        let e = err("user=u sslmode=bogus");
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("sslmode"), "{e}");
    }

    #[test]
    fn system_roots_default_to_verify_full_and_refuse_weaker_modes() {
        assert_eq!(
            plan("user=u sslrootcert=system").sslmode,
            SslMode::VerifyFull
        );
        let e = err("user=u sslrootcert=system sslmode=require");
        assert!(e.to_string().contains("verify-full"), "{e}");
    }

    #[test]
    fn hostaddr_pairs_with_host() {
        let p = plan("host=db.example.com hostaddr=127.0.0.1 port=5433 user=u");
        assert_eq!(p.hosts[0].host.as_deref(), Some("db.example.com"));
        assert_eq!(p.hosts[0].hostaddr, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(p.hosts[0].label(), "db.example.com:5433");
        assert!(
            err("host=a,b hostaddr=127.0.0.1 user=u")
                .to_string()
                .contains("hostaddr")
        );
        assert!(
            err("host=a,b,c port=1,2 user=u")
                .to_string()
                .contains("port")
        );
    }

    #[test]
    fn unsupported_keys_are_named_and_unknown_ones_never_shown() {
        let e = err("user=u sslpassword=x");
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("`sslpassword`"), "{e}");
        assert!(e.to_string().contains("not supported"), "{e}");
        // An unknown word may be part of a secret: never shown, but a typo gets a hint.
        let e = err("postgres://u@h/db?frobnicate=1");
        assert!(!e.to_string().contains("frobnicate"), "{e}");
        let e = err("user=u sslmdoe=require");
        assert!(!e.to_string().contains("sslmdoe"), "{e}");
        assert!(e.to_string().contains("did you mean `sslmode`"), "{e}");
    }

    #[test]
    fn a_url_password_may_hold_question_marks_and_ampersands() {
        let p = plan("postgres://app:pa?ss&word@db/app?sslmode=disable");
        assert_eq!(p.base.get_password(), Some(&b"pa?ss&word"[..]));
        assert_eq!(p.base.get_dbname(), Some("app"));
        assert_eq!(p.sslmode, SslMode::Disable);
        // A `/` before the `@`: libpq reads no user there, and so the `@` is refused.
        let e = err("postgres://app:1234/secretpart@db/app");
        assert!(!e.to_string().contains("secretpart"), "{e}");
    }

    #[test]
    fn target_session_attrs() {
        plan("user=u target_session_attrs=primary");
        plan("user=u target_session_attrs=any");
        plan("user=u target_session_attrs=read-write");
        let e = err("user=u target_session_attrs=standby");
        assert!(e.to_string().contains("standby"), "{e}");
    }

    #[test]
    fn driver_keys_are_checked_by_the_driver() {
        let p = plan("user=u channel_binding=require keepalives_idle=30 connect_timeout=1");
        assert_eq!(
            p.base.get_channel_binding(),
            tokio_postgres::config::ChannelBinding::Require
        );
        assert_eq!(p.host_timeout, HostTimeout::Bound(Duration::from_secs(2)));
        let e = err("user=u channel_binding=maybe");
        assert!(e.to_string().contains("channel_binding"), "{e}");
    }

    #[test]
    fn tcp_user_timeout_is_in_milliseconds_as_in_libpq() {
        let p = plan("user=u tcp_user_timeout=1500");
        assert_eq!(
            p.base.get_tcp_user_timeout(),
            Some(&Duration::from_millis(1500))
        );
        assert_eq!(
            plan("user=u tcp_user_timeout=0")
                .base
                .get_tcp_user_timeout(),
            None
        );
        assert_eq!(
            err("user=u tcp_user_timeout=soon").kind(),
            ErrorKind::Config
        );
    }

    #[test]
    fn client_certificate_needs_both_files() {
        assert!(err("user=u sslcert=/c").to_string().contains("sslkey"));
        assert!(err("user=u sslkey=/k").to_string().contains("sslcert"));
        let p = plan("user=u sslcert=/c sslkey=/k");
        assert_eq!(p.sslcert, Some(PathBuf::from("/c")));
    }

    #[test]
    fn jdbc_ssl_true_means_require() {
        assert_eq!(plan("postgres://u@h/db?ssl=true").sslmode, SslMode::Require);
    }

    #[test]
    fn environment_fills_only_what_is_missing() {
        let env = |var: &str| match var {
            "PGHOST" => Some("envhost".to_owned()),
            "PGPORT" => Some("6000".to_owned()),
            "PGUSER" => Some("envuser".to_owned()),
            "PGPASSWORD" => Some("envpass".to_owned()),
            "PGSSLMODE" => Some("verify-ca".to_owned()),
            "PGSSLROOTCERT" => Some("/ca.pem".to_owned()),
            "PGAPPNAME" => Some("envapp".to_owned()),
            "PGCONNECT_TIMEOUT" => Some("7".to_owned()),
            "PGDATABASE" => Some(String::new()), // empty: ignored
            _ => None,
        };
        let defaults = env_defaults(env);
        let p = ConnInfo::parse("postgres://urluser@urlhost/db", &defaults).unwrap();
        assert_eq!(p.base.get_user(), Some("urluser"));
        assert_eq!(p.base.get_password(), Some(&b"envpass"[..]));
        assert_eq!(p.hosts[0].label(), "urlhost:6000");
        assert_eq!(p.sslmode, SslMode::VerifyCa);
        assert_eq!(p.base.get_application_name(), Some("envapp"));
        assert_eq!(p.host_timeout, HostTimeout::Bound(Duration::from_secs(7)));
        let p = ConnInfo::parse("", &defaults).unwrap();
        assert_eq!(p.describe(), "envhost:6000/envuser as envuser");
    }

    #[test]
    fn harmless_libpq_values_are_accepted_and_the_others_named() {
        for ok in [
            "gssencmode=disable",
            "gssencmode=prefer",
            "sslcompression=0",
            "sslcompression=1",
            "client_encoding=UTF8",
            "client_encoding=utf-8",
            "client_encoding=auto",
            "sslcertmode=disable",
            "sslcertmode=allow",
            "ssl_min_protocol_version=TLSv1.2",
            "ssl_max_protocol_version=TLSv1.3",
        ] {
            plan(&format!("user=u {ok}"));
        }
        for (bad, named) in [
            ("gssencmode=require", "gssencmode"),
            ("client_encoding=LATIN1", "client_encoding"),
            ("sslcertmode=require", "sslcertmode"),
            (
                "ssl_max_protocol_version=TLSv1.1",
                "ssl_max_protocol_version",
            ),
            (
                "ssl_min_protocol_version=TLSv1.3 ssl_max_protocol_version=TLSv1.2",
                "above",
            ),
            ("sslkeylogfile=/tmp/keys", "libpq 16 to 18"),
            ("min_protocol_version=3.2", "libpq 16 to 18"),
        ] {
            let e = err(&format!("user=u {bad}"));
            assert!(e.to_string().contains(named), "{bad}: {e}");
        }
        let versions = |text: &str| plan(&format!("user=u {text}")).tls_versions;
        assert_eq!(versions(""), TlsVersions::ANY);
        assert!(!versions("ssl_min_protocol_version=TLSv1.3").tls12);
        assert!(!versions("ssl_max_protocol_version=TLSv1.2").tls13);
        assert_eq!(versions("ssl_min_protocol_version=TLSv1"), TlsVersions::ANY);
    }

    #[test]
    fn the_environments_session_settings_become_startup_options() {
        let defaults = env_defaults(|v| match v {
            "PGTZ" => Some("Europe/Paris".to_owned()),
            "PGDATESTYLE" => Some("ISO, DMY".to_owned()),
            "PGOPTIONS" => Some("-c work_mem=4MB".to_owned()),
            _ => None,
        });
        let p = ConnInfo::parse("user=u", &defaults).unwrap();
        let options = p.base.get_options().unwrap();
        assert!(options.contains("-c work_mem=4MB"), "{options}");
        assert!(options.contains("-c timezone=Europe/Paris"), "{options}");
        assert!(options.contains("-c datestyle=ISO,\\ DMY"), "{options}");
        // Not options of a connection string.
        err("user=u timezone=UTC");
    }

    #[test]
    fn keepalives_count_is_libpqs_name_for_the_probe_count() {
        let p = plan("user=u keepalives_count=7");
        assert_eq!(p.base.get_keepalives_retries(), Some(7));
        let e = err("user=u keepalives_retries=7");
        assert!(e.to_string().contains("keepalives_count"), "{e}");
        let e = err("user=u keepalives_count=many");
        assert!(e.to_string().contains("keepalives_count"), "{e}");
    }

    #[test]
    fn environment_variables_pglisten_cannot_honour_are_refused_by_name() {
        for (var, value) in [
            ("PGREQUIREAUTH", "scram-sha-256"),
            ("PGKRBSRVNAME", "postgres"),
            ("PGMAXPROTOCOLVERSION", "3.2"),
        ] {
            let defaults = env_defaults(|v| (v == var).then(|| value.to_owned()));
            assert_eq!(defaults.len(), 1, "{var} is read");
            let Err(e) = ConnInfo::parse("user=u", &defaults) else {
                panic!("{var} accepted");
            };
            assert!(e.to_string().contains(var), "{e}");
        }
        let defaults = env_defaults(|v| (v == "PGSSLSNI").then(|| "0".to_owned()));
        assert!(!ConnInfo::parse("user=u", &defaults).unwrap().sslsni);
    }

    #[test]
    fn percent_encoding_is_exactly_two_hex_digits_and_never_nul() {
        for bad in [
            "postgres://u@h/db%+1",
            "postgres://u@h/db%-1",
            "postgres://u@h/db% 1",
            "postgres://u@h/db%0",
            "postgres://u@h/d%00b",
            "postgres://u:pa%00ss@h/db",
        ] {
            let e = err(bad);
            assert!(e.to_string().contains("URL"), "{bad}: {e}");
        }
        assert_eq!(plan("postgres://u@h/d%41b").base.get_dbname(), Some("dAb"));
    }

    #[test]
    fn messages_never_show_values() {
        for bad in [
            "postgres://u:s3cr%zzet@h/db",
            "user=u password='s3cret",
            "user=u password=s3cret port=x",
        ] {
            let e = err(bad);
            assert!(!format!("{e} {e:?}").contains("s3cr"), "{bad}: {e:?}");
        }
    }

    #[test]
    fn unix_socket_hosts() {
        let p = plan("host=/var/run/postgresql user=u");
        assert!(p.hosts[0].is_unix_socket());
        let p = plan("postgres://u@%2Ftmp/db");
        assert!(p.hosts[0].is_unix_socket());
    }

    #[test]
    fn keepalive_follows_the_heartbeat_unless_the_string_sets_its_own() {
        use std::time::Duration;
        let keepalive = crate::heartbeat::HeartbeatConfig::default().tcp_keepalive();
        let mut info = ConnInfo::parse("host=db user=u", &[]).unwrap();
        info.set_tcp_keepalive(keepalive);
        assert_eq!(info.base.get_keepalives_idle(), keepalive.idle);
        assert_eq!(
            info.base.get_tcp_user_timeout(),
            Some(&keepalive.user_timeout)
        );
        let mut info = ConnInfo::parse(
            "host=db user=u keepalives_idle=30 tcp_user_timeout=9000",
            &[],
        )
        .unwrap();
        info.set_tcp_keepalive(keepalive);
        assert_eq!(info.base.get_keepalives_idle(), Duration::from_secs(30));
        assert_eq!(
            info.base.get_tcp_user_timeout(),
            Some(&Duration::from_secs(9))
        );
    }
}
