//! The crate's error type.
//!
//! One [`Error`] can reach many subscriptions (a lost connection is announced to every
//! one of them), so it is an `Arc` inside and cheap to clone. [`Error`]'s `Display` shows
//! only pglisten's own message, which says what went wrong and what happens next; the
//! underlying cause (usually a [`tokio_postgres::Error`]) is available through
//! [`std::error::Error::source`].

use std::fmt;
use std::sync::Arc;

/// A `Result` whose error defaults to pglisten's [`Error`].
///
/// ```
/// async fn send(listener: &pglisten::Listener) -> pglisten::Result<()> {
///     listener.notify("orders", "42").await
/// }
/// # let _ = send;
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of trouble an [`Error`] reports.
///
/// New kinds may be added in minor releases, so match with a wildcard arm.
///
/// ```
/// use pglisten::ErrorKind;
///
/// fn is_retryable(kind: ErrorKind) -> bool {
///     matches!(kind, ErrorKind::Connect | ErrorKind::ConnectionLost | ErrorKind::Timeout)
/// }
/// assert!(is_retryable(ErrorKind::Timeout));
/// assert!(!is_retryable(ErrorKind::InvalidChannel));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A channel name was refused before it reached the server: empty, containing NUL, or
    /// longer than 63 bytes (the server would silently truncate it).
    InvalidChannel,
    /// A payload was refused before it reached the server: 8000 bytes or more, or
    /// containing NUL.
    InvalidPayload,
    /// The connection string or a builder setting is invalid.
    Config,
    /// The server could not be reached or the connection could not be set up.
    Connect,
    /// The server refused the credentials.
    Authentication,
    /// TLS could not be set up: the server certificate was refused (unknown authority,
    /// wrong host name, expired), the server does not support TLS while `sslmode`
    /// requires it, or the server refused the client certificate.
    Tls,
    /// An established connection was lost; the listener reconnects by itself.
    ConnectionLost,
    /// Something took longer than its configured bound.
    Timeout,
    /// The server answered a request with an error.
    Database,
    /// The listener was shut down, or its background task is gone.
    Closed,
}

impl ErrorKind {
    fn describe(self) -> &'static str {
        match self {
            ErrorKind::InvalidChannel => "invalid channel",
            ErrorKind::InvalidPayload => "invalid payload",
            ErrorKind::Config => "invalid configuration",
            ErrorKind::Connect => "connect failed",
            ErrorKind::Authentication => "authentication failed",
            ErrorKind::Tls => "TLS failed",
            ErrorKind::ConnectionLost => "connection lost",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Database => "database error",
            ErrorKind::Closed => "listener closed",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

struct Inner {
    kind: ErrorKind,
    message: String,
    source: Option<Source>,
}

/// An error from pglisten: a [`kind`](Error::kind), a message that says what went wrong
/// and what to do, and the underlying cause in [`source`](std::error::Error::source).
///
/// Cheap to clone: one lost connection is reported to every subscription as the same
/// error.
///
/// ```
/// # async fn run() {
/// match pglisten::Listener::connect("postgres://app@127.0.0.1:1/app").await {
///     Ok(_) => unreachable!("nothing listens on port 1"),
///     Err(e) => {
///         assert_eq!(e.kind(), pglisten::ErrorKind::Connect);
///         eprintln!("{e}"); // pglisten's message; the driver's cause is in e.source()
///     }
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

impl Error {
    /// Creates an error of `kind` with pglisten's own `message`.
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            inner: Arc::new(Inner {
                kind,
                message: message.into(),
                source: None,
            }),
        }
    }

    /// Creates an error of `kind` with `message`, caused by `source`.
    pub(crate) fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Into<Source>,
    ) -> Self {
        Error {
            inner: Arc::new(Inner {
                kind,
                message: message.into(),
                source: Some(source.into()),
            }),
        }
    }

    /// The listener is closed: used by every request made after `shutdown`.
    pub(crate) fn closed() -> Self {
        Error::new(
            ErrorKind::Closed,
            "the listener was shut down (or its background task ended); create a new Listener",
        )
    }

    /// Classifies a failure to connect or to set up a fresh connection.
    pub(crate) fn connect_failed(what: &str, cause: tokio_postgres::Error) -> Self {
        let kind = classify_connect(&cause);
        let hint = match kind {
            ErrorKind::Authentication => "; check the user name and password",
            ErrorKind::Config => "; check the connection string",
            _ => "",
        };
        let detail = describe_driver_error(&cause);
        Error::with_source(kind, format!("{what}: {detail}{hint}"), cause)
    }

    /// The connection of a listening session failed or ended.
    pub(crate) fn connection_lost(cause: Option<tokio_postgres::Error>) -> Self {
        match cause {
            Some(cause) => {
                let detail = describe_driver_error(&cause);
                Error::with_source(
                    ErrorKind::ConnectionLost,
                    format!("connection to the server was lost ({detail}); reconnecting"),
                    cause,
                )
            }
            None => Error::new(
                ErrorKind::ConnectionLost,
                "the server closed the connection; reconnecting",
            ),
        }
    }

    /// What kind of trouble this is.
    ///
    /// ```
    /// let err = pglisten::Listener::builder("postgres://app@db/app")
    ///     .queue_capacity(0)
    ///     .connect_lazy()
    ///     .unwrap_err();
    /// assert_eq!(err.kind(), pglisten::ErrorKind::Config);
    /// ```
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The SQLSTATE code the server sent, when this error carries a server error.
    ///
    /// ```
    /// # fn check(err: &pglisten::Error) {
    /// if err.code() == Some(&pglisten::tokio_postgres::error::SqlState::INVALID_PASSWORD) {
    ///     eprintln!("rotate the password");
    /// }
    /// # }
    /// ```
    pub fn code(&self) -> Option<&tokio_postgres::error::SqlState> {
        self.inner
            .source
            .as_deref()
            .and_then(|s| s.downcast_ref::<tokio_postgres::Error>())
            .and_then(|e| e.code())
    }
}

/// Sorts a tokio-postgres failure during connection set-up into an [`ErrorKind`].
///
/// tokio-postgres does not expose its error kinds, so server errors are classified by
/// SQLSTATE and client-side ones by the driver's (stable) description.
fn classify_connect(cause: &tokio_postgres::Error) -> ErrorKind {
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
    let text = cause.to_string();
    if text.starts_with("authentication error") {
        ErrorKind::Authentication
    } else if text.starts_with("invalid connection string")
        || text.starts_with("invalid configuration")
    {
        ErrorKind::Config
    } else if text.starts_with("timeout") {
        ErrorKind::Timeout
    } else {
        ErrorKind::Connect
    }
}

/// One line about a driver error: the server's message when there is one, else the
/// driver's description followed by its own cause.
fn describe_driver_error(cause: &tokio_postgres::Error) -> String {
    if let Some(db) = cause.as_db_error() {
        return format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
    }
    match std::error::Error::source(cause) {
        Some(inner) => format!("{cause}: {inner}"),
        None => cause.to_string(),
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind)
            .field("message", &self.inner.message);
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source.as_deref().map(|s| s as _)
    }
}

impl From<tokio_postgres::Error> for Error {
    /// Wraps a driver error from the caller's own queries (for example in a transaction
    /// around [`notify`](crate::notify)).
    fn from(e: tokio_postgres::Error) -> Self {
        let kind = if e.as_db_error().is_some() {
            ErrorKind::Database
        } else if e.is_closed() {
            ErrorKind::ConnectionLost
        } else {
            ErrorKind::Connect
        };
        let message = match e.as_db_error() {
            Some(db) => format!("database error: {}", db.message()),
            None => format!("database client error: {e}"),
        };
        Error::with_source(kind, message, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_shows_own_message_and_source_keeps_cause() {
        let cause = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = Error::with_source(
            ErrorKind::Connect,
            "could not connect to 127.0.0.1:1",
            cause,
        );
        assert_eq!(err.to_string(), "could not connect to 127.0.0.1:1");
        assert_eq!(
            std::error::Error::source(&err).unwrap().to_string(),
            "refused"
        );
        assert_eq!(err.kind(), ErrorKind::Connect);
    }

    #[test]
    fn clones_share_one_allocation() {
        let err = Error::new(ErrorKind::Timeout, "slow");
        let copy = err.clone();
        assert!(Arc::ptr_eq(&err.inner, &copy.inner));
    }

    #[test]
    fn closed_error_says_what_to_do() {
        let err = Error::closed();
        assert_eq!(err.kind(), ErrorKind::Closed);
        assert!(err.to_string().contains("shut down"));
    }

    #[test]
    fn kinds_display_in_words() {
        assert_eq!(ErrorKind::InvalidPayload.to_string(), "invalid payload");
        assert_eq!(ErrorKind::ConnectionLost.to_string(), "connection lost");
    }
}
