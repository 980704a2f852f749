//! libpq's password file (`~/.pgpass`, or the `passfile` option / `PGPASSFILE`): where a
//! connection with no password finds one.
//!
//! Each line is `hostname:port:database:username:password`; `*` in any of the first four
//! fields matches anything, `\:` and `\\` stand for `:` and `\`, lines starting with `#`
//! are comments, and the first matching line wins. A connection over a Unix socket is
//! looked up as `localhost`. On Unix the file is ignored (with a warning) if its group or
//! others may read it, as libpq does.

use std::path::{Path, PathBuf};

use tracing::warn;

/// One usable line of a password file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    host: String,
    port: String,
    database: String,
    user: String,
    password: String,
}

/// What a connection is looked up by.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lookup<'a> {
    /// The host as given (a name, an address, or a socket directory).
    pub(crate) host: &'a str,
    pub(crate) port: u16,
    pub(crate) database: &'a str,
    pub(crate) user: &'a str,
}

/// Splits a line into its fields at unescaped colons, removing the escapes. The
/// password (the fifth field) keeps any further colons.
fn fields(line: &str) -> Option<Line> {
    let mut fields: Vec<String> = Vec::with_capacity(5);
    let mut current = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            ':' if fields.len() < 4 => fields.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    fields.push(current);
    let [host, port, database, user, password]: [String; 5] = fields.try_into().ok()?;
    Some(Line {
        host,
        port,
        database,
        user,
        password,
    })
}

fn field_matches(pattern: &str, value: &str) -> bool {
    pattern == "*" || pattern == value
}

/// The password of the first line of `text` matching `lookup`.
pub(crate) fn find_password(text: &str, lookup: Lookup<'_>) -> Option<String> {
    // As libpq: a socket connection is looked up as localhost.
    let host = if lookup.host.is_empty() || lookup.host.starts_with('/') {
        "localhost"
    } else {
        lookup.host
    };
    let port = lookup.port.to_string();
    text.lines()
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(fields)
        .find(|line| {
            !line.password.is_empty()
                && field_matches(&line.host, host)
                && field_matches(&line.port, &port)
                && field_matches(&line.database, lookup.database)
                && field_matches(&line.user, lookup.user)
        })
        .map(|line| line.password)
}

/// The password file to read: the `passfile` option, else `~/.pgpass`.
pub(crate) fn path(option: Option<&Path>) -> Option<PathBuf> {
    match option {
        Some(path) => Some(path.to_owned()),
        None => std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".pgpass")),
    }
}

/// The password for `lookup` from the file at `path`, if the file exists, is private
/// to its owner, and has a matching line.
pub(crate) fn password_for(path: &Path, lookup: Lookup<'_>) -> Option<String> {
    let metadata = std::fs::metadata(path).ok()?;
    if !metadata.is_file() {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode();
        if mode & 0o077 != 0 {
            warn!(
                passfile = %path.display(),
                "password file ignored: group or others may read it (permissions should be \
                 u=rw (0600) or less, as libpq requires)"
            );
            return None;
        }
    }
    let text = std::fs::read_to_string(path).ok()?;
    find_password(&text, lookup)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(host: &'a str, port: u16, database: &'a str, user: &'a str) -> Lookup<'a> {
        Lookup {
            host,
            port,
            database,
            user,
        }
    }

    #[test]
    fn the_first_matching_line_wins_and_stars_match_anything() {
        let file = "\
# comment
db.example.com:5432:app:alice:first
*:*:app:alice:second
*:*:*:*:fallback
";
        let find = |l| find_password(file, l);
        assert_eq!(
            find(lookup("db.example.com", 5432, "app", "alice")).as_deref(),
            Some("first")
        );
        assert_eq!(
            find(lookup("other", 6543, "app", "alice")).as_deref(),
            Some("second")
        );
        assert_eq!(
            find(lookup("other", 6543, "x", "bob")).as_deref(),
            Some("fallback")
        );
    }

    #[test]
    fn escapes_and_colons_in_the_password() {
        let file = "h\\:x:5432:d\\\\b:u:pa:ss\\:wo\\\\rd\n";
        assert_eq!(
            find_password(file, lookup("h:x", 5432, "d\\b", "u")).as_deref(),
            Some("pa:ss:wo\\rd")
        );
    }

    #[test]
    fn a_socket_connection_is_looked_up_as_localhost() {
        let file = "localhost:5432:*:u:sock\n";
        assert_eq!(
            find_password(file, lookup("/var/run/postgresql", 5432, "d", "u")).as_deref(),
            Some("sock")
        );
        assert_eq!(
            find_password(file, lookup("127.0.0.1", 5432, "d", "u")),
            None
        );
    }

    #[test]
    fn short_lines_and_empty_passwords_are_skipped() {
        let file = "h:5432:d:u\nh:5432:d:u:\nh:5432:d:u:ok\r\n";
        assert_eq!(
            find_password(file, lookup("h", 5432, "d", "u")).as_deref(),
            Some("ok")
        );
    }
}
