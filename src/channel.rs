//! Channel-name and payload validation, and identifier quoting. Pure functions.
//!
//! PostgreSQL truncates identifiers longer than `NAMEDATALEN - 1` (63) bytes without an
//! error, so `LISTEN` on a 64-byte name would silently listen on its 63-byte prefix. Such
//! names are refused here instead. Payloads must be shorter than 8000 bytes.

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

/// Checks that `name` reaches the server unchanged.
pub(crate) fn validate_channel(name: &str) -> Result<()> {
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

/// Checks that `payload` is accepted by `pg_notify`.
pub(crate) fn validate_payload(payload: &str) -> Result<()> {
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
    fn batch_unlistens_first_then_listens() {
        let sql = listen_batch(["b", "C\"d"], ["a"]);
        assert_eq!(sql, r#"UNLISTEN "a";LISTEN "b";LISTEN "C""d";"#);
        assert_eq!(listen_batch([], []), "");
    }
}
