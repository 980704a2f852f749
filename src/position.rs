//! [`Position`] and [`Cursor`]: where an entry of a durable channel sits in the delivery
//! order, and where a durable subscription starts. Pure: no I/O.
//!
//! A position is the pair (top-level transaction id, sequence number) of a journal
//! entry. Its text form is one fixed-width ASCII token, `XXXXXXXXXXXXXXXXXXXX-SSSSSSSSSSSSSSSSSSSS`
//! (both numbers in decimal, zero-padded to 20 digits), so that comparing two texts
//! byte by byte gives the same answer as comparing the positions.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, ErrorKind};

/// Digits of each number in the text form (`u64::MAX` has 20).
const DIGITS: usize = 20;

/// Length of the text form: two numbers and the `-` between them.
pub(crate) const TEXT_LEN: usize = 2 * DIGITS + 1;

/// The place of one entry of a durable channel in the delivery order: the id of the
/// top-level transaction that published it (`pg_current_xact_id()`, an `xid8`) and the
/// entry's sequence number in the journal.
///
/// Positions are ordered as entries are delivered: by transaction id, then by sequence
/// number. Every [`Notification`](crate::Notification) of a durable subscription has one
/// ([`Notification::position`](crate::Notification::position)); store it to resume
/// later with [`Cursor::After`].
///
/// Its text form ([`Display`](fmt::Display), [`FromStr`]) is one ASCII token of
/// 41 characters, two zero-padded 20-digit decimal numbers joined by `-`. It has a fixed
/// width, so texts sort exactly as positions do (usable as an SSE event id, or in a
/// text column), and it will stay the same in later releases. With the `serde` feature a
/// position serializes as this text.
///
/// ```
/// use pglisten::durable::Position;
///
/// let p: Position = "00000000000000000742-00000000000000000031".parse()?;
/// assert_eq!((p.transaction_id(), p.sequence()), (742, 31));
/// assert_eq!(p.to_string(), "00000000000000000742-00000000000000000031");
/// assert!(p < Position::new(743, 1));
/// # Ok::<(), pglisten::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    // Field order is the delivery order (derived `Ord`).
    xid: u64,
    seq: u64,
}

impl Position {
    /// The position of the entry with sequence number `sequence` published by the
    /// transaction `transaction_id`. Mostly for tests and tools: positions normally come
    /// from notifications or from their stored text.
    ///
    /// ```
    /// let p = pglisten::durable::Position::new(742, 31);
    /// assert_eq!(p.sequence(), 31);
    /// ```
    pub const fn new(transaction_id: u64, sequence: u64) -> Self {
        Position {
            xid: transaction_id,
            seq: sequence,
        }
    }

    /// The id of the top-level transaction that published the entry, as
    /// `pg_current_xact_id()` returned it (an `xid8`: with the epoch, so it never
    /// wraps around).
    ///
    /// ```
    /// let p = pglisten::durable::Position::new(742, 31);
    /// assert_eq!(p.transaction_id(), 742);
    /// ```
    pub const fn transaction_id(self) -> u64 {
        self.xid
    }

    /// The entry's sequence number in the journal (unique, assigned when the entry was
    /// inserted, so not in commit order).
    ///
    /// ```
    /// let p = pglisten::durable::Position::new(742, 31);
    /// assert_eq!(p.sequence(), 31);
    /// ```
    pub const fn sequence(self) -> u64 {
        self.seq
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:020}-{:020}", self.xid, self.seq)
    }
}

impl FromStr for Position {
    type Err = Error;

    /// Reads the text form written by `Display`: exactly 41 ASCII characters, 20 digits,
    /// `-`, 20 digits.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidPosition`] for anything else (the message shows at most
    /// the first 60 characters of the text).
    fn from_str(text: &str) -> Result<Self, Error> {
        let refuse = |why: &str| {
            let shown: String = text.chars().take(60).collect();
            let more = if text.chars().count() > 60 { "..." } else { "" };
            Error::new(
                ErrorKind::InvalidPosition,
                format!(
                    "{shown:?}{more} is not a durable position: {why}; a position is written \
                     as 20 digits, '-', 20 digits (as Position's Display writes it)"
                ),
            )
        };
        let bytes = text.as_bytes();
        if bytes.len() != TEXT_LEN {
            return Err(refuse(&format!(
                "it is {} bytes long instead of {TEXT_LEN}",
                bytes.len()
            )));
        }
        if bytes[DIGITS] != b'-' {
            return Err(refuse("character 21 is not '-'"));
        }
        let number = |part: &[u8]| -> Result<u64, Error> {
            if !part.iter().all(u8::is_ascii_digit) {
                return Err(refuse("it has a character that is not a digit"));
            }
            part.iter()
                .try_fold(0u64, |n, d| {
                    n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
                })
                .ok_or_else(|| refuse("a number is larger than 18446744073709551615"))
        };
        Ok(Position {
            xid: number(&bytes[..DIGITS])?,
            seq: number(&bytes[DIGITS + 1..])?,
        })
    }
}

#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
impl serde::Serialize for Position {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
impl<'de> serde::Deserialize<'de> for Position {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = Position;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a durable position: 20 digits, '-', 20 digits")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Position, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Text)
    }
}

/// Where a durable subscription starts
/// ([`Listener::subscribe_durable`](crate::Listener::subscribe_durable)).
///
/// ```
/// use pglisten::durable::{Cursor, Position};
///
/// # fn stored() -> Option<Position> { None }
/// // Resume after the last entry processed, or take everything still kept.
/// let from = stored().map_or(Cursor::Beginning, Cursor::After);
/// # let _ = from;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cursor {
    /// From the oldest entry still kept in the journal. Never fails because of pruning.
    Beginning,
    /// From now: every entry of a transaction still running, or not yet begun, when
    /// `subscribe_durable` returns is delivered; entries of transactions that had
    /// already settled below the watermark (the oldest running transaction when the
    /// subscription started) are not.
    Now,
    /// Every entry after this position, exactly once. The position needs no row in the
    /// journal; a position pruned past yields [`ErrorKind::Pruned`].
    After(Position),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn position() -> impl Strategy<Value = Position> {
        (any::<u64>(), any::<u64>()).prop_map(|(x, s)| Position::new(x, s))
    }

    proptest! {
        #[test]
        fn text_round_trips(p in position()) {
            let text = p.to_string();
            prop_assert_eq!(text.len(), TEXT_LEN);
            prop_assert!(text.is_ascii() && !text.contains(' '));
            prop_assert_eq!(text.parse::<Position>().unwrap(), p);
        }

        #[test]
        fn text_order_is_position_order(a in position(), b in position()) {
            prop_assert_eq!(a.to_string().cmp(&b.to_string()), a.cmp(&b));
        }

        #[test]
        fn any_text_parses_or_is_refused_without_panic(text in "\\PC{0,50}") {
            match text.parse::<Position>() {
                Ok(p) => prop_assert_eq!(p.to_string(), text),
                Err(e) => prop_assert_eq!(e.kind(), ErrorKind::InvalidPosition),
            }
        }

        #[test]
        fn near_misses_are_refused(text in "[0-9]{20}[-/ ][0-9]{19,21}") {
            let parsed = text.parse::<Position>();
            let wellformed = text.len() == TEXT_LEN
                && text.as_bytes()[DIGITS] == b'-'
                && text[..DIGITS].parse::<u64>().is_ok()
                && text[DIGITS + 1..].parse::<u64>().is_ok();
            prop_assert_eq!(parsed.is_ok(), wellformed);
        }
    }

    #[test]
    fn order_is_transaction_then_sequence() {
        assert!(Position::new(1, 99) < Position::new(2, 1));
        assert!(Position::new(2, 1) < Position::new(2, 2));
    }

    #[test]
    fn extremes() {
        let max = Position::new(u64::MAX, u64::MAX);
        assert_eq!(max.to_string().parse::<Position>().unwrap(), max);
        let over = "18446744073709551616-00000000000000000000";
        let e = over.parse::<Position>().unwrap_err();
        assert!(e.to_string().contains("larger"), "{e}");
        let e = "".parse::<Position>().unwrap_err();
        assert!(e.to_string().contains("0 bytes"), "{e}");
        let long = "9".repeat(200);
        let e = long.parse::<Position>().unwrap_err();
        assert!(e.to_string().len() < 400, "{e}");
    }

    #[cfg(feature = "serde")]
    #[test]
    fn serde_uses_the_text() {
        let p = Position::new(742, 31);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, "\"00000000000000000742-00000000000000000031\"");
        assert_eq!(serde_json::from_str::<Position>(&json).unwrap(), p);
        assert!(serde_json::from_str::<Position>("\"742-31\"").is_err());
    }
}
