//! Which keys a connection string may hold, which environment variables stand for
//! them, and the checks of keys and of values pglisten accepts without acting on them.
//! No message made here shows a value: a connection string may hold a password.

use std::collections::BTreeMap;

use super::config_error;
use crate::error::{Error, Result};

/// Keys passed on to tokio-postgres as they are (it checks their values).
pub(super) const DRIVER_KEYS: &[&str] = &[
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
pub(super) const OWN_KEYS: &[&str] = &[
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
pub(super) const HARMLESS_VALUE_KEYS: &[&str] = &[
    "gssencmode",
    "sslcompression",
    "client_encoding",
    "sslcertmode",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
];

/// Keys of libpq 16, 17 and 18 that pglisten does not support yet.
pub(super) const NEWER_LIBPQ_KEYS: &[&str] = &[
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
pub(super) const UNSUPPORTED_LIBPQ_KEYS: &[&str] = &[
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
pub(super) const ENV_SESSION_SETTINGS: &[&str] = &["datestyle", "timezone", "geqo"];

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

/// Refuses keys pglisten does not support, naming them.
pub(super) fn check_key(key: &str) -> Result<()> {
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

/// Whether `key` is one pglisten knows (so that it can be shown: it is not user text
/// that might be part of a secret).
pub(super) fn is_known_key(key: &str) -> bool {
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
pub(super) fn shown_key(key: &str) -> String {
    if is_known_key(key) {
        format!("`{key}`")
    } else {
        "an option pglisten does not know".to_owned()
    }
}

/// The known key closest to an unknown one (a typo), if any is close.
pub(super) fn closest_key(key: &str) -> Option<&'static str> {
    [DRIVER_KEYS, OWN_KEYS, HARMLESS_VALUE_KEYS]
        .iter()
        .flat_map(|list| list.iter().copied())
        .map(|known| (edit_distance(key, known), known))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, known)| known)
}

/// Levenshtein distance, for typo suggestions.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
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

/// libpq options whose values pglisten accepts only where they ask for what it does.
pub(super) fn check_harmless_values(
    params: &BTreeMap<String, String>,
    has_sslcert: bool,
) -> Result<()> {
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

pub(super) fn invalid_value(key: &str, expected: &str) -> Error {
    config_error(format!(
        "invalid connection string: invalid value for `{key}`; expected {expected}"
    ))
}
