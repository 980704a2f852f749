//! Which PostgreSQL server binaries the clusters run, and their version.
//!
//! `$PGLISTEN_PG_BIN` chooses the directory (`.ci/postgres.sh` installs servers 13 to 18
//! and sets it); without it the system's binaries are used.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The environment variable naming the directory of `initdb`, `pg_ctl` and `postgres`.
pub const PG_BIN_ENV: &str = "PGLISTEN_PG_BIN";

/// Returns the directory holding `initdb`, `pg_ctl` and `postgres`.
///
/// `$PGLISTEN_PG_BIN` wins when set (and not empty): it must hold the three binaries.
/// Otherwise `$PATH` is searched for `initdb`; the hit is canonicalized, so a symlink
/// such as `/usr/local/bin/initdb` resolves to the real bin dir (e.g.
/// `/usr/lib/postgresql/15/bin`), which must also contain `pg_ctl` and `postgres`.
/// Otherwise the highest version under `/usr/lib/postgresql/*/bin` is used.
///
/// # Errors
///
/// `NotFound` with a hint on what to install if no server binaries exist, or if
/// `$PGLISTEN_PG_BIN` names a directory without them.
pub fn bin_dir() -> io::Result<PathBuf> {
    match std::env::var_os(PG_BIN_ENV).filter(|dir| !dir.is_empty()) {
        Some(dir) => chosen_bin_dir(dir),
        None => system_bin_dir(),
    }
}

/// The directory `$PGLISTEN_PG_BIN` names, canonicalized, if it holds the binaries.
fn chosen_bin_dir(dir: OsString) -> io::Result<PathBuf> {
    let given = PathBuf::from(dir);
    let missing = || {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{PG_BIN_ENV}={} does not hold the PostgreSQL server binaries (initdb, \
                 pg_ctl, postgres): point it at a server's bin directory (e.g. the output \
                 of `.ci/postgres.sh bin 18`), or unset it to use the system's server",
                given.display()
            ),
        )
    };
    let real = fs::canonicalize(&given).map_err(|_| missing())?;
    if has_server_binaries(&real) {
        Ok(real)
    } else {
        Err(missing())
    }
}

fn system_bin_dir() -> io::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("initdb");
            if !is_executable(&candidate) {
                continue;
            }
            let Ok(real) = fs::canonicalize(&candidate) else {
                continue;
            };
            if let Some(parent) = real.parent()
                && has_server_binaries(parent)
            {
                return Ok(parent.to_path_buf());
            }
        }
    }

    let mut best: Option<(Vec<u64>, PathBuf)> = None;
    if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(version) = name.to_str().and_then(parse_version) else {
                continue;
            };
            let bin = entry.path().join("bin");
            if has_server_binaries(&bin) && best.as_ref().is_none_or(|(v, _)| version > *v) {
                best = Some((version, bin));
            }
        }
    }
    best.map(|(_, bin)| bin).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: {PG_BIN_ENV} \
                 is not set, there is no `initdb` in $PATH and nothing under \
                 /usr/lib/postgresql/*/bin; install PostgreSQL server binaries, e.g. \
                 apt-get install postgresql, or `.ci/postgres.sh install 18` and \
                 {PG_BIN_ENV}=$(.ci/postgres.sh bin 18)"
            ),
        )
    })
}

pub(crate) fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

pub(crate) fn has_server_binaries(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|name| is_executable(&dir.join(name)))
}

/// "15" -> [15], "9.6" -> [9, 6]; anything else -> None.
pub(crate) fn parse_version(name: &str) -> Option<Vec<u64>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

/// The psql next to the server binaries, else the system one (any psql of 13 or later
/// talks to every server the suite runs; the npm servers come without one).
pub(crate) fn psql_path(bin: &Path) -> PathBuf {
    let local = bin.join("psql");
    if is_executable(&local) {
        local
    } else {
        PathBuf::from("/usr/bin/psql")
    }
}

/// The version of the server binaries the clusters of this process run, as
/// `postgres --version` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerVersion {
    major: u32,
    text: String,
}

impl ServerVersion {
    /// The major version: 13 for 13.23, 18 for 18.4 or 18beta1.
    pub fn major(&self) -> u32 {
        self.major
    }

    /// Reads `postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)`, or the same
    /// without the distribution's note.
    pub(crate) fn parse(output: &str) -> Option<ServerVersion> {
        let after = output.split_once("(PostgreSQL)")?.1;
        let text = after.split_whitespace().next()?;
        let digits = text.len() - text.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let major = text[..digits].parse().ok()?;
        Some(ServerVersion {
            major,
            text: text.to_owned(),
        })
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The version of the server binaries every [`Cluster`](crate::Cluster) of this process
/// runs (the same binaries [`bin_dir`] finds). The first call runs `initdb` for the
/// process, as starting the first cluster does, and prints the version and directory on
/// stderr once.
///
/// # Errors
///
/// If there are no server binaries, or they do not run (see [`Cluster::start`](crate::Cluster::start)).
pub fn server_version() -> io::Result<ServerVersion> {
    crate::template().map(|t| t.version.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_postgres_version() {
        for (output, major, text) in [
            ("postgres (PostgreSQL) 13.23\n", 13, "13.23"),
            (
                "postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)\n",
                15,
                "15.14",
            ),
            ("postgres (PostgreSQL) 18beta1", 18, "18beta1"),
            ("postgres (PostgreSQL) 9.6.24", 9, "9.6.24"),
        ] {
            let version = ServerVersion::parse(output).unwrap();
            assert_eq!((version.major(), version.to_string()), (major, text.into()));
        }
        for bad in [
            "",
            "postgres 15.2",
            "postgres (PostgreSQL) devel",
            "(PostgreSQL)",
        ] {
            assert_eq!(ServerVersion::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_chosen_directory_must_hold_the_binaries() {
        let system = system_bin_dir().unwrap();
        assert_eq!(chosen_bin_dir(system.clone().into()).unwrap(), system);
        for bad in [PathBuf::from("/nonexistent/pg/bin"), std::env::temp_dir()] {
            let err = chosen_bin_dir(bad.clone().into()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
            let text = err.to_string();
            assert!(
                text.contains(PG_BIN_ENV) && text.contains(&*bad.to_string_lossy()),
                "{text}"
            );
        }
    }

    #[test]
    fn helpers() {
        assert_eq!(parse_version("15"), Some(vec![15]));
        assert_eq!(parse_version("9.6"), Some(vec![9, 6]));
        assert_eq!(parse_version("main"), None);
    }
}
