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
    /// A durable subscription's cursor is before the journal's horizon: entries after
    /// it were pruned ([`durable::prune`](crate::durable::prune)), so it cannot be served
    /// without a gap. The message names both positions; start again from
    /// [`Cursor::Beginning`](crate::durable::Cursor::Beginning) after reloading your state.
    Pruned,
    /// A durable [`Position`](crate::durable::Position) was refused: its text is not a
    /// position, or it comes from the future or from another cluster (a dump and restore
    /// starts transaction ids again), or the journal belongs to another cluster.
    InvalidPosition,
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
            ErrorKind::Pruned => "pruned",
            ErrorKind::InvalidPosition => "invalid position",
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

    /// The cause of an error nobody else holds (a clone shares it: then `None`), to
    /// hand it on to an error whose message already says what this one's did.
    pub(crate) fn into_source(self) -> Option<Source> {
        Arc::try_unwrap(self.inner)
            .ok()
            .and_then(|inner| inner.source)
    }

    /// The listener is closed: used by every request made after `shutdown`.
    pub(crate) fn closed() -> Self {
        Error::new(
            ErrorKind::Closed,
            "the listener was shut down (or its background task ended); create a new Listener",
        )
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

    /// True when the listener is closed: it was shut down, gave up reconnecting, or
    /// its background task ended ([`ErrorKind::Closed`]). Every later request fails the
    /// same way; make a new [`Listener`](crate::Listener) if you need one. (A lost
    /// connection is not this: the listener reconnects by itself.)
    ///
    /// ```
    /// # async fn run(listener: pglisten::Listener) {
    /// listener.shutdown().await;
    /// let err = listener.notify("orders", "42").await.unwrap_err();
    /// assert!(err.is_closed());
    /// # }
    /// ```
    pub fn is_closed(&self) -> bool {
        self.inner.kind == ErrorKind::Closed
    }

    /// True when something took longer than its bound ([`ErrorKind::Timeout`]): a
    /// connection attempt past `connect_timeout`, or a heartbeat the server did not
    /// answer in time.
    ///
    /// ```
    /// # fn check(err: &pglisten::Error) {
    /// if err.is_timeout() {
    ///     eprintln!("the server is slow or unreachable: {err}");
    /// }
    /// # }
    /// ```
    pub fn is_timeout(&self) -> bool {
        self.inner.kind == ErrorKind::Timeout
    }

    /// The error the server sent, when this error (or one of its causes) carries one:
    /// its SQLSTATE, and its message, detail and hint in the server's language.
    ///
    /// ```
    /// # fn check(err: &pglisten::Error) {
    /// if let Some(db) = err.as_db_error() {
    ///     eprintln!("the server said: {} (SQLSTATE {})", db.message(), db.code().code());
    /// }
    /// # }
    /// ```
    pub fn as_db_error(&self) -> Option<&tokio_postgres::error::DbError> {
        let mut cause = self
            .inner
            .source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static));
        while let Some(error) = cause {
            if let Some(driver) = error.downcast_ref::<tokio_postgres::Error>() {
                return driver.as_db_error();
            }
            if let Some(db) = error.downcast_ref::<tokio_postgres::error::DbError>() {
                return Some(db);
            }
            cause = error.source();
        }
        None
    }

    /// The SQLSTATE code the server sent, when this error carries a server error (see
    /// [`as_db_error`](Error::as_db_error)).
    ///
    /// ```
    /// # fn check(err: &pglisten::Error) {
    /// if err.code() == Some(&pglisten::tokio_postgres::error::SqlState::INVALID_PASSWORD) {
    ///     eprintln!("rotate the password");
    /// }
    /// # }
    /// ```
    pub fn code(&self) -> Option<&tokio_postgres::error::SqlState> {
        self.as_db_error().map(tokio_postgres::error::DbError::code)
    }
}

/// An error and every cause under it, on one line (`message: cause: cause`), for
/// pglisten's own log lines: a log line is the one place that must show the whole
/// chain by itself.
pub(crate) struct Chain<'a>(pub(crate) &'a Error);

/// An error whose text may hold a secret (the credentials hook's own error): shown by
/// pglisten as a fixed sentence, in `Display`, `Debug` and its log lines ([`Chain`]
/// stops here), and reachable as its `source()` for an application's own reporter.
pub(crate) struct Redacted(pub(crate) Box<dyn std::error::Error + Send + Sync + 'static>);

impl fmt::Display for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "the credentials hook's own error (not shown, as it may hold a secret; it is this \
             error's source)",
        )
    }
}

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Redacted(..)")
    }
}

impl std::error::Error for Redacted {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.inner.message)?;
        let mut cause = std::error::Error::source(self.0);
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            // What lies behind a redacted error may hold a secret.
            if error.is::<Redacted>() {
                break;
            }
            cause = error.source();
        }
        Ok(())
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
    fn is_one_pointer_and_shareable() {
        fn check<T: Send + Sync + Clone + Unpin + 'static>() {}
        check::<Error>();
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
        assert_eq!(
            std::mem::size_of::<Result<()>>(),
            std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn predicates_follow_the_kind() {
        assert!(Error::closed().is_closed());
        assert!(!Error::closed().is_timeout());
        let slow = Error::new(ErrorKind::Timeout, "slow");
        assert!(slow.is_timeout() && !slow.is_closed());
        assert!(slow.as_db_error().is_none() && slow.code().is_none());
    }

    #[test]
    fn display_never_includes_the_source() {
        let cause = std::io::Error::other("the cause's own words");
        let outer = Error::with_source(ErrorKind::Connect, "could not connect", cause);
        let wrapped = Error::with_source(ErrorKind::Closed, "gave up", outer);
        assert_eq!(wrapped.to_string(), "gave up");
        let chain: Vec<String> =
            std::iter::successors(Some(&wrapped as &(dyn std::error::Error + 'static)), |e| {
                e.source()
            })
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            chain,
            ["gave up", "could not connect", "the cause's own words"]
        );
    }

    #[test]
    fn into_source_hands_on_the_cause_of_an_unshared_error() {
        let err = Error::with_source(ErrorKind::Connect, "mine", std::io::Error::other("cause"));
        assert_eq!(err.into_source().unwrap().to_string(), "cause");
        let shared = Error::with_source(ErrorKind::Connect, "mine", std::io::Error::other("c"));
        let _copy = shared.clone();
        assert!(shared.into_source().is_none());
    }

    #[test]
    fn a_chain_shows_every_cause_once() {
        let cause = std::io::Error::other("refused");
        let inner = Error::with_source(ErrorKind::Connect, "could not connect", cause);
        let outer = Error::with_source(ErrorKind::Closed, "gave up", inner);
        assert_eq!(
            Chain(&outer).to_string(),
            "gave up: could not connect: refused"
        );
    }

    #[test]
    fn kinds_display_in_words() {
        assert_eq!(ErrorKind::InvalidPayload.to_string(), "invalid payload");
        assert_eq!(ErrorKind::ConnectionLost.to_string(), "connection lost");
    }
}
