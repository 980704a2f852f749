//! The two forms of a connection string, read into key/value pairs: `key=value` words
//! (with quoting and escapes) and `postgres://` URLs (with percent-decoding), as libpq
//! reads them. No message made here shows a value: a connection string may hold a
//! password.

use std::collections::BTreeMap;

use super::config_error;
use super::keys::{check_key, is_known_key, shown_key};
use crate::error::{Error, Result};

/// Splits a connection string into key/value pairs; later keys win, as in libpq.
pub(super) fn parse_params(text: &str) -> Result<BTreeMap<String, String>> {
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

/// `key=value` pairs separated by spaces; values may be single-quoted, and `\` escapes
/// the next character.
pub(super) fn parse_key_values(text: &str) -> Result<Vec<(String, String)>> {
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

pub(super) fn unterminated(key: &str) -> Error {
    config_error(format!(
        "invalid connection string: the quoted value of {} has no closing quote",
        shown_key(key)
    ))
}

/// The part of a URL after `postgres://`:
/// `[user[:password]@][host[:port][,host[:port]...]][/dbname][?key=value&...]`.
pub(super) fn parse_url(rest: &str) -> Result<Vec<(String, String)>> {
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
pub(super) fn split_host_port(spec: &str) -> Result<(&str, &str)> {
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
pub(super) fn decode(part: &str, what: &str) -> Result<String> {
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
pub(super) fn quote(value: &str) -> String {
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
