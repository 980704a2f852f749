//! Driver errors and SQLSTATEs, put into pglisten's words: an [`ErrorKind`] and a
//! message that says what went wrong and what to do.
//!
//! Every decision here reads the driver's error *types* and the server's SQLSTATE codes,
//! never the server's message text: that text is translated by the server's
//! `lc_messages`, so a test on an English server says nothing about a German one. The
//! server's message (and any driver error) stays reachable as the error's
//! [`source()`](std::error::Error::source); pglisten's own message never repeats it, so
//! error reporters that print the chain (anyhow, eyre, tracing) show each part once.
//!
//! tokio-postgres does not expose the kind of a client-side error, so its kind is read
//! from the fixed description the driver writes for it, and three failures are told
//! apart by the fixed text of the driver's own cause. Those strings are in
//! [`DRIVER_KIND_TEXT`] and [`DRIVER_CAUSE_TEXT`], written against tokio-postgres
//! [`WRITTEN_AGAINST`]; a unit test fails when Cargo.lock resolves another version, so
//! that a driver upgrade gets these strings checked. Nothing outside this module reads
//! an error's text.

use tokio_postgres::error::{DbError, SqlState};

#[cfg(feature = "tls")]
mod tls;

#[cfg(feature = "tls")]
use self::tls::explain_tls;
use super::conninfo::SslMode;
#[cfg(feature = "tls")]
use super::tls::TlsSetup;
use crate::error::{Error, ErrorKind};

/// The tokio-postgres version whose error descriptions this module was checked against.
#[cfg_attr(
    not(test),
    expect(dead_code, reason = "compared with Cargo.lock by a unit test")
)]
pub(crate) const WRITTEN_AGAINST: &str = "0.7.18";

/// What kind of failure a driver error is, from the driver's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DriverKind {
    /// The server answered with an error (it has a SQLSTATE).
    Server,
    /// The connection is closed.
    Closed,
    /// The TLS handshake failed or the server does not offer TLS.
    Tls,
    /// Authentication could not proceed on the client's side.
    Authentication,
    /// The connection string or configuration was refused by the driver.
    Config,
    /// The driver's own connect timeout.
    Timeout,
    /// Reaching the server or talking to it failed (I/O).
    Io,
    /// Anything else (protocol trouble, encoding).
    Other,
}

/// The description tokio-postgres writes for each of its (private) error kinds, as its
/// `Display` in [`WRITTEN_AGAINST`] has them.
pub(crate) const DRIVER_KIND_TEXT: [(&str, DriverKind); 7] = [
    ("error performing TLS handshake", DriverKind::Tls),
    ("error communicating with the server", DriverKind::Io),
    ("authentication error", DriverKind::Authentication),
    ("invalid connection string", DriverKind::Config),
    ("invalid configuration", DriverKind::Config),
    ("timeout waiting for server", DriverKind::Timeout),
    ("error connecting to server", DriverKind::Io),
];

/// The driver's own causes that change what pglisten tells the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DriverCause {
    /// The server answered the TLS request with "no".
    ServerHasNoTls,
    /// `channel_binding=require`, and authentication went without it.
    NoChannelBinding,
    /// The server asked for a password and the configuration has none.
    PasswordMissing,
}

/// The fixed texts of [`DriverCause`]s, as tokio-postgres [`WRITTEN_AGAINST`] words them.
pub(crate) const DRIVER_CAUSE_TEXT: [(&str, DriverCause); 3] = [
    ("server does not support TLS", DriverCause::ServerHasNoTls),
    (
        "server did not use channel binding",
        DriverCause::NoChannelBinding,
    ),
    ("password missing", DriverCause::PasswordMissing),
];

/// The kind of a driver error.
pub(crate) fn driver_kind(e: &tokio_postgres::Error) -> DriverKind {
    if e.as_db_error().is_some() {
        return DriverKind::Server;
    }
    if e.is_closed() {
        return DriverKind::Closed;
    }
    let text = e.to_string();
    DRIVER_KIND_TEXT
        .iter()
        .find(|(description, _)| text.starts_with(description))
        .map_or(DriverKind::Other, |(_, kind)| *kind)
}

/// The driver's own cause of `e`, when it is one pglisten reacts to.
pub(crate) fn driver_cause(e: &tokio_postgres::Error) -> Option<DriverCause> {
    let cause = std::error::Error::source(e)?.to_string();
    DRIVER_CAUSE_TEXT
        .iter()
        .find(|(text, _)| cause == *text)
        .map(|(_, c)| *c)
}

/// How one host is reached in one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Plain,
    /// TLS; with `fallback`, plaintext if the server does not offer TLS.
    Tls {
        fallback: bool,
    },
}

/// What a SQLSTATE means for someone connecting, for the codes a connection attempt
/// meets; `None` for the others.
fn connect_meaning(code: &SqlState) -> Option<&'static str> {
    Some(match code.code() {
        "28P01" => "the password was refused: check the user name and password",
        "28000" => {
            "the server does not let this user in this way (pg_hba.conf has no matching \
             entry, the role does not exist, or it may not log in)"
        }
        "3D000" => "the database does not exist: check dbname",
        "53300" => "the server has no free connection slots (too many connections)",
        "57P03" => "the server is starting up or shutting down; retrying may help",
        "57P01" | "57P02" => "the server is shutting down",
        "42501" => "the user lacks a privilege it needs",
        _ => return None,
    })
}

/// "SQLSTATE 28P01: the password was refused..." for a server error.
fn server_said(db: &DbError) -> String {
    match connect_meaning(db.code()) {
        Some(meaning) => format!("SQLSTATE {}: {meaning}", db.code().code()),
        None => format!(
            "the server answered with SQLSTATE {} (see the error's source for its message)",
            db.code().code()
        ),
    }
}

/// The [`ErrorKind`] of a failure while a connection is being set up.
fn connect_kind(cause: &tokio_postgres::Error) -> ErrorKind {
    if let Some(db) = cause.as_db_error() {
        // Class 28: invalid authorization. Anything else the server says while a
        // connection is being set up (starting up, shutting down, too many connections,
        // no such database) means this attempt could not connect.
        return if db.code().code().starts_with("28") {
            ErrorKind::Authentication
        } else {
            ErrorKind::Connect
        };
    }
    match driver_kind(cause) {
        DriverKind::Authentication => ErrorKind::Authentication,
        DriverKind::Config => ErrorKind::Config,
        DriverKind::Timeout => ErrorKind::Timeout,
        DriverKind::Tls => ErrorKind::Tls,
        _ => ErrorKind::Connect,
    }
}

/// A failure to connect or to set up a fresh connection; `what` says what was being
/// done ("could not connect to db:5432").
pub(crate) fn connect_failed(what: &str, cause: tokio_postgres::Error) -> Error {
    let kind = connect_kind(&cause);
    let detail = match cause.as_db_error() {
        Some(db) => server_said(db),
        None => match driver_kind(&cause) {
            DriverKind::Closed => "the server closed the connection".to_owned(),
            DriverKind::Timeout => "the server did not answer in time".to_owned(),
            DriverKind::Config => "the connection string was refused; check it".to_owned(),
            DriverKind::Authentication => {
                "authentication failed; check the user name and password".to_owned()
            }
            DriverKind::Tls => "the TLS handshake failed".to_owned(),
            DriverKind::Io => "the server could not be reached or stopped answering".to_owned(),
            DriverKind::Server | DriverKind::Other => {
                "the server's answer could not be used".to_owned()
            }
        },
    };
    Error::with_source(kind, format!("{what}: {detail}"), cause)
}

/// The server sent a notification pglisten cannot read: the connection cannot be
/// trusted past it, so it is dropped and made again.
pub(crate) fn malformed_notification(malformed: crate::connect::wire::Malformed) -> Error {
    Error::new(
        ErrorKind::ConnectionLost,
        format!(
            "the server sent {malformed}, which cannot be delivered; the connection is \
             dropped and pglisten reconnects"
        ),
    )
}

/// The connection of a listening session failed or ended.
pub(crate) fn connection_lost(cause: Option<tokio_postgres::Error>) -> Error {
    match cause {
        Some(cause) => {
            let why = match cause.as_db_error() {
                Some(db) => format!(
                    " (the server ended the session: SQLSTATE {})",
                    db.code().code()
                ),
                None => String::new(),
            };
            Error::with_source(
                ErrorKind::ConnectionLost,
                format!("connection to the server was lost{why}; reconnecting"),
                cause,
            )
        }
        None => Error::new(
            ErrorKind::ConnectionLost,
            "the server closed the connection; reconnecting",
        ),
    }
}

/// What pglisten knows about one host's attempt when it fails.
pub(crate) struct HostAttempt<'a> {
    /// `host:port`, for messages.
    pub(crate) label: &'a str,
    /// The name the server certificate is checked against.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) tls_name: &'a str,
    pub(crate) transport: Transport,
    pub(crate) sslmode: SslMode,
    /// Whether the attempt started TLS at once (`sslnegotiation=direct`).
    pub(crate) direct_tls: bool,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<&'a TlsSetup>,
}

impl HostAttempt<'_> {
    /// Whether this attempt would have offered a client certificate.
    fn has_client_cert(&self) -> bool {
        #[cfg(feature = "tls")]
        {
            self.tls.is_some_and(TlsSetup::sends_client_cert)
        }
        #[cfg(not(feature = "tls"))]
        {
            false
        }
    }
}

/// A driver error from connecting to one host, in words a person can act on.
pub(crate) fn host_failed(e: tokio_postgres::Error, at: &HostAttempt<'_>) -> Error {
    let label = at.label;
    let mode = at.sslmode;
    #[cfg(feature = "tls")]
    if let Some(setup) = at.tls
        && let Some(explanation) = explain_tls(&e, at.tls_name, setup)
    {
        return Error::with_source(
            ErrorKind::Tls,
            format!("TLS with {label} failed: {explanation}"),
            e,
        );
    }
    match driver_cause(&e) {
        Some(DriverCause::ServerHasNoTls) => {
            return Error::with_source(
                ErrorKind::Tls,
                format!(
                    "the server at {label} does not support TLS, but sslmode={mode} requires \
                     it; turn ssl on in the server's configuration, or use sslmode=prefer to \
                     accept an unencrypted connection"
                ),
                e,
            );
        }
        Some(DriverCause::NoChannelBinding) => {
            let over = match at.transport {
                Transport::Plain => "this connection was not encrypted",
                Transport::Tls { fallback: true } => {
                    "with sslmode=prefer the connection is not encrypted when the server does \
                     not offer TLS"
                }
                Transport::Tls { fallback: false } => "the server did not offer it",
            };
            return Error::with_source(
                ErrorKind::Authentication,
                format!(
                    "channel_binding=require, but {label} did not use channel binding \
                     (SCRAM-SHA-256-PLUS; {over}): it needs a TLS connection (sslmode=require or \
                     stronger) and scram-sha-256 password authentication"
                ),
                e,
            );
        }
        Some(DriverCause::PasswordMissing) => {
            return Error::with_source(
                ErrorKind::Authentication,
                format!(
                    "{label} asks for a password, but none was given and the password file \
                     (passfile, PGPASSFILE with ListenerBuilder::from_env, or ~/.pgpass, private \
                     to its owner) has no line for this host, port, database and user: add one, \
                     put the password in the connection string, set PGPASSWORD and use \
                     ListenerBuilder::from_env, or supply it with ListenerBuilder::credentials"
                ),
                e,
            );
        }
        None => {}
    }
    if driver_kind(&e) == DriverKind::Tls {
        // A server before 17 reads a direct TLS start as a malformed startup packet and
        // hangs up in the middle of the handshake.
        let hint = if at.direct_tls {
            " (with sslnegotiation=direct the server must be PostgreSQL 17 or later; for an \
             older server, drop sslnegotiation=direct)"
        } else {
            ""
        };
        return Error::with_source(ErrorKind::Tls, format!("TLS with {label} failed{hint}"), e);
    }
    if e.code() == Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION) {
        // What could make pg_hba.conf refuse this connection that the user can change.
        let hint = match at.transport {
            Transport::Plain => {
                "; if the server accepts this user only over TLS (a hostssl line), use \
                 sslmode=require or stronger"
            }
            Transport::Tls { .. } if !at.has_client_cert() => {
                "; if the server asks for a client certificate (cert authentication or \
                 clientcert=verify-*), set sslcert and sslkey to a certificate it trusts"
            }
            Transport::Tls { .. } => "",
        };
        return Error::with_source(
            ErrorKind::Authentication,
            format!(
                "{label} refused the connection ({}){hint}",
                server_said_short(&e)
            ),
            e,
        );
    }
    connect_failed(&format!("could not connect to {label}"), e)
}

/// "SQLSTATE 28000" for a server error, "" otherwise.
fn server_said_short(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|code| format!("SQLSTATE {}", code.code()))
        .unwrap_or_default()
}

/// Whether pg_hba.conf refused this kind of connection (so another transport may work).
pub(crate) fn refused_by_hba(e: &Error) -> bool {
    e.code() == Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
}

/// Why a NOTIFY failed.
pub(crate) fn notify_failed(e: tokio_postgres::Error) -> Error {
    match e.as_db_error() {
        Some(db) => {
            let message = format!(
                "the server refused the notification (SQLSTATE {})",
                db.code().code()
            );
            Error::with_source(ErrorKind::Database, message, e)
        }
        None => Error::with_source(
            ErrorKind::ConnectionLost,
            "the connection was lost before the server confirmed the notification; it may or \
             may not have been sent",
            e,
        ),
    }
}

/// The server refused a LISTEN/UNLISTEN batch.
pub(crate) fn listen_refused(e: tokio_postgres::Error) -> Error {
    let code = server_said_short(&e);
    Error::with_source(
        ErrorKind::Database,
        format!("the server refused LISTEN/UNLISTEN ({code})"),
        e,
    )
}

impl From<tokio_postgres::Error> for Error {
    /// Wraps a driver error from the caller's own queries (for example in a transaction
    /// around [`notify`](crate::notify)): [`ErrorKind::Database`] when the server
    /// answered with an error, [`ErrorKind::ConnectionLost`] when the connection is
    /// closed, [`ErrorKind::Connect`] otherwise.
    fn from(e: tokio_postgres::Error) -> Self {
        let (kind, message) = match (e.as_db_error(), driver_kind(&e)) {
            (Some(db), _) => (
                ErrorKind::Database,
                format!(
                    "the server answered with an error (SQLSTATE {})",
                    db.code().code()
                ),
            ),
            (None, DriverKind::Closed) => (
                ErrorKind::ConnectionLost,
                "the connection to the server is closed".to_owned(),
            ),
            (None, _) => (ErrorKind::Connect, "the database client failed".to_owned()),
        };
        Error::with_source(kind, message, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The version Cargo.lock resolves for `name`, if the lock file is there.
    fn locked_version(name: &str) -> Option<String> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock");
        let lock = std::fs::read_to_string(path).ok()?;
        let at = lock.find(&format!("\nname = \"{name}\"\nversion = \""))?;
        let rest = &lock[at..];
        let start = rest.find("version = \"")? + "version = \"".len();
        let end = rest[start..].find('"')?;
        Some(rest[start..start + end].to_owned())
    }

    #[test]
    fn the_driver_strings_were_checked_against_the_locked_driver() {
        let Some(locked) = locked_version("tokio-postgres") else {
            return; // a packaged crate has no lock file to compare with
        };
        assert_eq!(
            locked, WRITTEN_AGAINST,
            "tokio-postgres changed: check DRIVER_KIND_TEXT and DRIVER_CAUSE_TEXT against its \
             error descriptions (src/error/mod.rs, connect_raw.rs, connect_tls.rs), then \
             update WRITTEN_AGAINST"
        );
    }

    #[test]
    fn a_refused_connection_string_is_a_config_error() {
        let e = "port=notaport"
            .parse::<tokio_postgres::Config>()
            .expect_err("not a port");
        assert_eq!(driver_kind(&e), DriverKind::Config);
        let error = connect_failed("could not connect", e);
        assert_eq!(error.kind(), ErrorKind::Config);
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_connect_error_with_the_driver_error_as_source() {
        // Port 1 on loopback: nothing listens there.
        let e = tokio_postgres::connect("host=127.0.0.1 port=1 user=u", tokio_postgres::NoTls)
            .await
            .err()
            .expect("nothing listens on port 1");
        assert_eq!(driver_kind(&e), DriverKind::Io);
        let shown_by_driver = e.to_string();
        let error = connect_failed("could not connect to 127.0.0.1:1", e);
        assert_eq!(error.kind(), ErrorKind::Connect);
        let own = error.to_string();
        assert!(!own.contains(&shown_by_driver), "{own}");
        let source = std::error::Error::source(&error).expect("the driver error");
        assert_eq!(source.to_string(), shown_by_driver);
    }
}
