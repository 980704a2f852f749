//! Channel-name and payload validation, and identifier quoting. Pure functions, public
//! so that code sending through another client library ([`Channel`],
//! [`validate_payload`]) makes the same checks as [`notify`](crate::notify).
//!
//! PostgreSQL truncates identifiers longer than `NAMEDATALEN - 1` (63) bytes without an
//! error, so `LISTEN` on a 64-byte name would silently listen on its 63-byte prefix. Such
//! names are refused here instead. Payloads must be shorter than 8000 bytes.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};

/// The longest channel name the server keeps intact, in bytes.
///
/// ```
/// let name = "x".repeat(pglisten::MAX_CHANNEL_BYTES + 1);
/// # let _ = name;
/// // listener.subscribe([name]) fails with ErrorKind::InvalidChannel
/// ```
pub const MAX_CHANNEL_BYTES: usize = 63;

/// Payloads must be shorter than this many bytes (the server's limit).
///
/// ```
/// fn fits(payload: &str) -> bool {
///     payload.len() < pglisten::MAX_PAYLOAD_BYTES
/// }
/// assert!(!fits(&"x".repeat(8000)));
/// ```
pub const MAX_PAYLOAD_BYTES: usize = 8000;

/// A channel name that reaches the server unchanged: 1 to [`MAX_CHANNEL_BYTES`] bytes,
/// no NUL byte. The same check as [`Listener::subscribe`](crate::Listener::subscribe),
/// [`Listener::notify`](crate::Listener::notify) and [`notify`](crate::notify) make, for
/// code that sends or listens through another client library.
///
/// Cheap to clone (an `Arc<str>`); it dereferences to `&str`.
///
/// ```
/// use pglisten::{Channel, ErrorKind};
///
/// let orders = Channel::new("orders")?;
/// assert_eq!(orders.as_str(), "orders");
/// assert_eq!(orders.quoted(), r#""orders""#); // for LISTEN/UNLISTEN in your own SQL
///
/// let too_long = Channel::new("x".repeat(64)).unwrap_err();
/// assert_eq!(too_long.kind(), ErrorKind::InvalidChannel);
/// # Ok::<(), pglisten::Error>(())
/// ```
///
/// Sending with [sqlx](https://docs.rs/sqlx), with the same checks as
/// [`notify`](crate::notify) (`pg_notify` takes the name as a value, so it needs no
/// quoting):
///
/// ```ignore
/// let channel = pglisten::Channel::new("orders")?;
/// pglisten::validate_payload(&payload)?;
/// sqlx::query("SELECT pg_notify($1, $2)")
///     .bind(channel.as_str())
///     .bind(&payload)
///     .execute(&pool) // a pool, a connection or a transaction (delivered at commit)
///     .await?;
/// ```
///
/// And with [diesel-async](https://docs.rs/diesel-async):
///
/// ```ignore
/// use diesel::sql_types::Text;
/// use diesel_async::RunQueryDsl;
///
/// let channel = pglisten::Channel::new("orders")?;
/// pglisten::validate_payload(&payload)?;
/// diesel::sql_query("SELECT pg_notify($1, $2)")
///     .bind::<Text, _>(channel.as_str())
///     .bind::<Text, _>(&payload)
///     .execute(&mut conn) // inside conn.transaction(..) it is delivered at commit
///     .await?;
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channel(Arc<str>);

impl Channel {
    /// Checks `name` and keeps it.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidChannel`] when the name is empty, longer than
    /// [`MAX_CHANNEL_BYTES`] bytes (the server would silently truncate it) or holds a
    /// NUL byte; the message says which.
    ///
    /// ```
    /// assert!(pglisten::Channel::new("Prices (EUR)").is_ok()); // any text, case kept
    /// assert!(pglisten::Channel::new("").is_err());
    /// ```
    pub fn new(name: impl AsRef<str>) -> Result<Channel> {
        let name = name.as_ref();
        validate_channel(name)?;
        Ok(Channel(Arc::from(name)))
    }

    /// The name, as given.
    ///
    /// ```
    /// let channel = pglisten::Channel::new("Orders")?;
    /// assert_eq!(channel.as_str(), "Orders");
    /// # Ok::<(), pglisten::Error>(())
    /// ```
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name quoted as an SQL identifier (in `"`, every `"` doubled), for `LISTEN`,
    /// `UNLISTEN` or `NOTIFY` statements of your own: case is kept and nothing in the
    /// name can end the identifier.
    ///
    /// ```
    /// let channel = pglisten::Channel::new(r#"say "hi""#)?;
    /// assert_eq!(format!("LISTEN {}", channel.quoted()), r#"LISTEN "say ""hi""""#);
    /// # Ok::<(), pglisten::Error>(())
    /// ```
    pub fn quoted(&self) -> String {
        quote_identifier(&self.0)
    }
}

impl std::ops::Deref for Channel {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Channel {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Channel {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::str::FromStr for Channel {
    type Err = Error;
    fn from_str(name: &str) -> Result<Channel> {
        Channel::new(name)
    }
}

impl TryFrom<&str> for Channel {
    type Error = Error;
    fn try_from(name: &str) -> Result<Channel> {
        Channel::new(name)
    }
}

impl TryFrom<String> for Channel {
    type Error = Error;
    fn try_from(name: String) -> Result<Channel> {
        Channel::new(name)
    }
}

/// Checks that `name` reaches the server unchanged: the check behind [`Channel::new`],
/// without keeping the name.
///
/// # Errors
///
/// [`ErrorKind::InvalidChannel`] when the name is empty, longer than
/// [`MAX_CHANNEL_BYTES`] bytes or holds a NUL byte; the same error
/// [`notify`](crate::notify) returns for it.
///
/// ```
/// assert!(pglisten::validate_channel("orders").is_ok());
/// let err = pglisten::validate_channel(&"x".repeat(64)).unwrap_err();
/// assert_eq!(err.kind(), pglisten::ErrorKind::InvalidChannel);
/// ```
pub fn validate_channel(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidChannel,
            "channel name is empty; give a name of 1 to 63 bytes",
        ));
    }
    if name.contains('\0') {
        return Err(Error::new(
            ErrorKind::InvalidChannel,
            format!(
                "channel name {:?} contains a NUL byte, which PostgreSQL cannot store",
                name
            ),
        ));
    }
    if name.len() > MAX_CHANNEL_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidChannel,
            format!(
                "channel name {:?} is {} bytes long; PostgreSQL keeps at most {MAX_CHANNEL_BYTES} \
                 bytes and would silently listen on a truncated name",
                name,
                name.len()
            ),
        ));
    }
    Ok(())
}

/// Checks that `payload` is accepted by `pg_notify`: shorter than
/// [`MAX_PAYLOAD_BYTES`] bytes, no NUL byte. Use it before sending through another
/// client library (see [`Channel`] for sqlx and diesel-async).
///
/// # Errors
///
/// [`ErrorKind::InvalidPayload`], with the same message [`notify`](crate::notify)
/// returns for it.
///
/// ```
/// assert!(pglisten::validate_payload("42").is_ok());
/// let err = pglisten::validate_payload(&"x".repeat(8000)).unwrap_err();
/// assert_eq!(err.kind(), pglisten::ErrorKind::InvalidPayload);
/// ```
pub fn validate_payload(payload: &str) -> Result<()> {
    if payload.len() >= MAX_PAYLOAD_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidPayload,
            format!(
                "payload is {} bytes; PostgreSQL accepts payloads shorter than {MAX_PAYLOAD_BYTES} \
                 bytes: send a key and look the data up instead",
                payload.len()
            ),
        ));
    }
    if payload.contains('\0') {
        return Err(Error::new(
            ErrorKind::InvalidPayload,
            "payload contains a NUL byte, which PostgreSQL cannot carry",
        ));
    }
    Ok(())
}

/// Quotes `name` as an SQL identifier: wrapped in `"` with every `"` doubled, so case is
/// kept and nothing in the name can end the identifier.
pub(crate) fn quote_identifier(name: &str) -> String {
    let mut quoted = String::with_capacity(name.len() + 2);
    quoted.push('"');
    for ch in name.chars() {
        if ch == '"' {
            quoted.push('"');
        }
        quoted.push(ch);
    }
    quoted.push('"');
    quoted
}

/// Builds one batch of `LISTEN`/`UNLISTEN` statements, sent in a single round trip.
pub(crate) fn listen_batch<'a>(
    listen: impl IntoIterator<Item = &'a str>,
    unlisten: impl IntoIterator<Item = &'a str>,
) -> String {
    let mut sql = String::new();
    for name in unlisten {
        sql.push_str("UNLISTEN ");
        sql.push_str(&quote_identifier(name));
        sql.push(';');
    }
    for name in listen {
        sql.push_str("LISTEN ");
        sql.push_str(&quote_identifier(name));
        sql.push(';');
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_quotes_and_keeps_everything_else() {
        assert_eq!(quote_identifier("orders"), r#""orders""#);
        assert_eq!(quote_identifier("MixedCase"), r#""MixedCase""#);
        assert_eq!(quote_identifier(r#"a"b"#), r#""a""b""#);
        assert_eq!(
            quote_identifier(r#"x"; DROP TABLE t; --"#),
            r#""x""; DROP TABLE t; --""#
        );
        assert_eq!(quote_identifier("prix été"), "\"prix été\"");
    }

    #[test]
    fn channel_length_limits_are_in_bytes() {
        assert!(validate_channel(&"a".repeat(63)).is_ok());
        let err = validate_channel(&"a".repeat(64)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidChannel);
        assert!(err.to_string().contains("64 bytes"));
        // 32 two-byte characters: 64 bytes though only 32 chars.
        assert!(validate_channel(&"é".repeat(32)).is_err());
        assert!(validate_channel(&"é".repeat(31)).is_ok());
    }

    #[test]
    fn empty_and_nul_channels_are_refused() {
        assert_eq!(
            validate_channel("").unwrap_err().kind(),
            ErrorKind::InvalidChannel
        );
        assert_eq!(
            validate_channel("a\0b").unwrap_err().kind(),
            ErrorKind::InvalidChannel
        );
        assert!(validate_channel(" ; \"odd\" name").is_ok());
    }

    #[test]
    fn payload_limit_is_below_8000_bytes() {
        assert!(validate_payload(&"x".repeat(7999)).is_ok());
        assert!(validate_payload("").is_ok());
        let err = validate_payload(&"x".repeat(8000)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidPayload);
        assert_eq!(
            validate_payload("a\0").unwrap_err().kind(),
            ErrorKind::InvalidPayload
        );
    }

    #[test]
    fn a_channel_is_checked_once_and_quoted_on_request() {
        let channel = Channel::new("Mixed \"Case\"").unwrap();
        assert_eq!(channel.as_str(), "Mixed \"Case\"");
        assert_eq!(channel.quoted(), r#""Mixed ""Case""""#);
        assert_eq!(channel.to_string(), channel.as_str());
        assert_eq!(format!("{channel:?}"), r#""Mixed \"Case\"""#);
        for bad in ["", "a\0b"] {
            assert_eq!(
                Channel::new(bad).unwrap_err().kind(),
                ErrorKind::InvalidChannel
            );
        }
        let long = "x".repeat(64);
        assert_eq!(
            Channel::new(&long).unwrap_err().to_string(),
            validate_channel(&long).unwrap_err().to_string()
        );
        assert!("ok".parse::<Channel>().is_ok());
        assert!(Channel::try_from(String::new()).is_err());
    }

    #[test]
    fn batch_unlistens_first_then_listens() {
        let sql = listen_batch(["b", "C\"d"], ["a"]);
        assert_eq!(sql, r#"UNLISTEN "a";LISTEN "b";LISTEN "C""d";"#);
        assert_eq!(listen_batch([], []), "");
    }
}
