//! From key/value pairs to a [`ConnInfo`]: each key's value checked and given to the
//! driver's `Config` or kept for pglisten's own connect (hosts, TLS, timeouts).
//! No message made here shows a value: a connection string may hold a password.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::keys::{DRIVER_KEYS, check_harmless_values, invalid_value};
use super::syntax::quote;
use super::{
    ConnInfo, DEFAULT_PORT, HostEntry, HostTimeout, RootCert, SslMode, TlsVersions, config_error,
};
use crate::error::{Error, ErrorKind, Result};

pub(in crate::connect) fn build(mut params: BTreeMap<String, String>) -> Result<ConnInfo> {
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
pub(super) fn hosts(params: &BTreeMap<String, String>) -> Result<Vec<HostEntry>> {
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
