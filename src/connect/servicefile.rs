//! libpq's connection service file: `service=NAME` (or `PGSERVICE` with `from_env`)
//! takes connection options from the `[NAME]` section of a service file.
//!
//! The files, in order: the `servicefile` option (PostgreSQL 18), else `PGSERVICEFILE`,
//! else `~/.pg_service.conf`; then `pg_service.conf` in `PGSYSCONFDIR`, else in
//! `/etc/postgresql-common` (where Debian's and Ubuntu's libpq look). The first file that
//! defines the service is used. Options of the service fill in what the connection
//! string does not set (the string wins); a service cannot name another service.

use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};

/// Where the service files are: the explicit or per-user file, then the system's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Places {
    pub(crate) user_file: Option<PathBuf>,
    pub(crate) system_file: PathBuf,
}

impl Places {
    /// As libpq finds them; `servicefile` is the connection string's option.
    pub(crate) fn find(servicefile: Option<&str>, env: impl Fn(&str) -> Option<String>) -> Places {
        let user_file = servicefile
            .map(PathBuf::from)
            .or_else(|| env("PGSERVICEFILE").map(PathBuf::from))
            .or_else(|| env("HOME").map(|home| Path::new(&home).join(".pg_service.conf")));
        let system_dir = env("PGSYSCONFDIR").unwrap_or_else(|| "/etc/postgresql-common".into());
        Places {
            user_file,
            system_file: Path::new(&system_dir).join("pg_service.conf"),
        }
    }
}

/// The options of service `name` from the first file defining it.
pub(crate) fn options(name: &str, places: &Places) -> Result<Vec<(String, String)>> {
    let files = places
        .user_file
        .iter()
        .chain(std::iter::once(&places.system_file));
    for file in files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        if let Some(options) = section(&text, name).map_err(|line| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "service file {}: line {line} is neither [service], key=value, a comment \
                     nor blank (or names a service inside a service)",
                    file.display()
                ),
            )
        })? {
            return Ok(options);
        }
    }
    let looked_in: Vec<String> = places
        .user_file
        .iter()
        .chain(std::iter::once(&places.system_file))
        .map(|p| p.display().to_string())
        .collect();
    Err(Error::new(
        ErrorKind::Config,
        format!(
            "the connection service `{name}` is defined in none of the service files ({}); \
             check the name, or point servicefile (or PGSERVICEFILE) at the file that defines it",
            looked_in.join(", ")
        ),
    ))
}

/// The `key=value` lines of section `[name]` (`None` if the file has no such section),
/// or the number of the first line that cannot be read.
fn section(text: &str, name: &str) -> std::result::Result<Option<Vec<(String, String)>>, usize> {
    let mut found: Option<Vec<(String, String)>> = None;
    let mut in_section = false;
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            let header = header.strip_suffix(']').ok_or(index + 1)?;
            if found.is_some() && in_section {
                // The section ended: later ones do not matter.
                return Ok(found);
            }
            in_section = header == name;
            if in_section {
                found = Some(Vec::new());
            }
            continue;
        }
        let (key, value) = line.split_once('=').ok_or(index + 1)?;
        let key = key.trim();
        if key.is_empty() || (in_section && key == "service") {
            return Err(index + 1);
        }
        if let (true, Some(options)) = (in_section, found.as_mut()) {
            options.push((key.to_owned(), value.trim().to_owned()));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# services
[first]
host=db1.example.com
port = 6543

[mydb]
host=db.example.com
dbname=orders
sslmode=require

[last]
host=x
";

    #[test]
    fn a_section_gives_its_options() {
        assert_eq!(
            section(FILE, "mydb").unwrap().unwrap(),
            [
                ("host".to_owned(), "db.example.com".to_owned()),
                ("dbname".to_owned(), "orders".to_owned()),
                ("sslmode".to_owned(), "require".to_owned()),
            ]
        );
        assert_eq!(
            section(FILE, "first").unwrap().unwrap()[1],
            ("port".to_owned(), "6543".to_owned())
        );
        assert_eq!(section(FILE, "missing").unwrap(), None);
    }

    #[test]
    fn unreadable_lines_are_named_by_number() {
        assert_eq!(section("[a]\nhost\n", "a"), Err(2));
        assert_eq!(section("[a\n", "a"), Err(1));
        assert_eq!(section("[a]\nservice=b\n", "a"), Err(2));
    }

    #[test]
    fn the_first_file_defining_the_service_wins() {
        let dir = std::env::temp_dir().join(format!("pglisten-service-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let user = dir.join("user.conf");
        let system = dir.join("pg_service.conf");
        std::fs::write(&user, "[a]\nhost=user-a\n").unwrap();
        std::fs::write(&system, "[a]\nhost=system-a\n[b]\nhost=system-b\n").unwrap();
        let places = Places {
            user_file: Some(user),
            system_file: system,
        };
        assert_eq!(options("a", &places).unwrap()[0].1, "user-a");
        assert_eq!(options("b", &places).unwrap()[0].1, "system-b");
        let missing = options("c", &places).unwrap_err();
        assert!(missing.to_string().contains("`c`"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn places_follow_libpq() {
        let env = |var: &str| match var {
            "HOME" => Some("/home/u".to_owned()),
            "PGSYSCONFDIR" => Some("/etc/pg".to_owned()),
            _ => None,
        };
        let places = Places::find(None, env);
        assert_eq!(
            places.user_file,
            Some(PathBuf::from("/home/u/.pg_service.conf"))
        );
        assert_eq!(places.system_file, PathBuf::from("/etc/pg/pg_service.conf"));
        let explicit = Places::find(Some("/srv/svc.conf"), env);
        assert_eq!(explicit.user_file, Some(PathBuf::from("/srv/svc.conf")));
    }
}
