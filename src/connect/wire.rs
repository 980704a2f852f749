//! The server's byte stream as pglisten reads it on a listening connection: where each
//! backend message starts and ends, and notification messages parsed in place.
//!
//! Pure functions, no I/O: [`tap`](super::tap) applies them to the bytes it reads. Every
//! backend message after start-up is a type byte, a big-endian `u32` length that counts
//! itself and the body, and the body. A notification (`NotificationResponse`, type `A`)
//! has the sending backend's process ID (`i32`), the channel and the payload, each a
//! NUL-terminated string.

/// A backend message's type byte and length field.
pub(crate) const HEADER_LEN: usize = 5;

/// The type byte of `NotificationResponse`.
const NOTIFICATION: u8 = b'A';

/// The largest notification message pglisten reads itself, header included. PostgreSQL
/// refuses payloads of 8000 bytes or more and channel names over 63 bytes, so none of
/// its notifications comes near; a larger one goes to the driver like any other message.
pub(crate) const MAX_NOTIFICATION_LEN: usize = 16 * 1024;

/// What the bytes at a message boundary hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Not enough bytes to tell: at least this many are needed (counted from the
    /// boundary).
    NeedMore(usize),
    /// A whole notification message of this many bytes, header included.
    Notification(usize),
    /// Any other message, this many bytes with its header; or a header whose length is
    /// impossible, in which case only the header is counted and the driver, which
    /// reads it next, reports the malformed message.
    Other(u64),
}

/// Classifies the message that starts at `bytes[0]`.
pub(crate) fn next(bytes: &[u8]) -> Next {
    let Some(header) = bytes.get(..HEADER_LEN) else {
        return Next::NeedMore(HEADER_LEN);
    };
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if length < 4 {
        return Next::Other(HEADER_LEN as u64);
    }
    let total = u64::from(length) + 1;
    if header[0] != NOTIFICATION || total > MAX_NOTIFICATION_LEN as u64 {
        return Next::Other(total);
    }
    // At most MAX_NOTIFICATION_LEN: fits.
    let total = total as usize;
    if bytes.len() < total {
        Next::NeedMore(total)
    } else {
        Next::Notification(total)
    }
}

/// A notification parsed in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WireNotification<'a> {
    pub(crate) process_id: i32,
    pub(crate) channel: &'a str,
    pub(crate) payload: &'a str,
}

impl crate::fanout::Incoming for WireNotification<'_> {
    #[inline]
    fn channel(&self) -> &str {
        self.channel
    }

    #[inline]
    fn payload(&self) -> &str {
        self.payload
    }

    #[inline]
    fn process_id(&self) -> i32 {
        self.process_id
    }
}

/// A notification message that cannot be read: what is wrong with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) &'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Parses one whole notification message, header included (as [`next`] framed it).
/// Bytes after the payload's terminator are ignored, as the driver ignores them.
pub(crate) fn parse_notification(message: &[u8]) -> Result<WireNotification<'_>, Malformed> {
    let body = message
        .get(HEADER_LEN..)
        .ok_or(Malformed("a notification shorter than its header"))?;
    let (pid, rest) = body
        .split_first_chunk::<4>()
        .ok_or(Malformed("a notification without a process ID"))?;
    let (channel, rest) = c_string(rest, &CHANNEL)?;
    let (payload, _) = c_string(rest, &PAYLOAD)?;
    Ok(WireNotification {
        process_id: i32::from_be_bytes(*pid),
        channel,
        payload,
    })
}

/// What is wrong with one of a notification's strings.
struct StringFaults {
    no_nul: &'static str,
    not_utf8: &'static str,
}

const CHANNEL: StringFaults = StringFaults {
    no_nul: "a notification whose channel has no terminating NUL",
    not_utf8: "a notification whose channel is not UTF-8",
};

const PAYLOAD: StringFaults = StringFaults {
    no_nul: "a notification whose payload has no terminating NUL",
    not_utf8: "a notification whose payload is not UTF-8",
};

/// A NUL-terminated UTF-8 string at the start of `bytes`, and what follows it.
fn c_string<'a>(bytes: &'a [u8], faults: &StringFaults) -> Result<(&'a str, &'a [u8]), Malformed> {
    let end = memchr::memchr(0, bytes).ok_or(Malformed(faults.no_nul))?;
    let text = std::str::from_utf8(&bytes[..end]).map_err(|_| Malformed(faults.not_utf8))?;
    Ok((text, &bytes[end + 1..]))
}

/// Whole notification messages read off the connection, in the order they arrived, not
/// yet routed. [`WireBatch::next`] parses them one at a time.
#[derive(Debug, Default)]
pub(crate) struct WireBatch {
    bytes: Vec<u8>,
    at: usize,
}

impl WireBatch {
    /// A batch of the messages in `bytes`, each framed by [`next`] as a notification.
    pub(crate) fn new(bytes: Vec<u8>) -> Self {
        WireBatch { bytes, at: 0 }
    }

    /// The next notification, or `None` when all were read.
    pub(crate) fn next(&mut self) -> Option<Result<WireNotification<'_>, Malformed>> {
        let rest = self.bytes.get(self.at..).filter(|rest| !rest.is_empty())?;
        match next(rest) {
            Next::Notification(len) => {
                let start = self.at;
                self.at += len;
                Some(parse_notification(&self.bytes[start..start + len]))
            }
            // Cannot happen for bytes framed by `next`; ends the batch as malformed.
            _ => {
                self.at = self.bytes.len();
                Some(Err(Malformed(
                    "a notification batch with a partial message",
                )))
            }
        }
    }

    /// True when every notification was read.
    pub(crate) fn is_done(&self) -> bool {
        self.at >= self.bytes.len()
    }
}

/// A notification message as the server encodes it, for tests.
#[cfg(test)]
pub(crate) fn encode_notification(process_id: i32, channel: &str, payload: &str) -> Vec<u8> {
    let mut body = process_id.to_be_bytes().to_vec();
    body.extend_from_slice(channel.as_bytes());
    body.push(0);
    body.extend_from_slice(payload.as_bytes());
    body.push(0);
    encode_message(NOTIFICATION, &body)
}

/// Any backend message, for tests.
#[cfg(test)]
pub(crate) fn encode_message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut message = vec![kind];
    message.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    message.extend_from_slice(body);
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_notification_is_framed_and_parsed() {
        let message = encode_notification(42, "orders", "id=7 ✓");
        assert_eq!(next(&message), Next::Notification(message.len()));
        assert_eq!(
            parse_notification(&message),
            Ok(WireNotification {
                process_id: 42,
                channel: "orders",
                payload: "id=7 ✓"
            })
        );
    }

    #[test]
    fn partial_messages_ask_for_more() {
        let message = encode_notification(1, "c", "p");
        assert_eq!(next(&message[..3]), Next::NeedMore(HEADER_LEN));
        assert_eq!(next(&message[..7]), Next::NeedMore(message.len()));
    }

    #[test]
    fn other_messages_and_bad_headers_go_to_the_driver() {
        let ready = encode_message(b'Z', b"I");
        assert_eq!(next(&ready[..HEADER_LEN]), Next::Other(ready.len() as u64));
        // A length below 4 is impossible: only the header is counted.
        assert_eq!(next(&[b'A', 0, 0, 0, 3]), Next::Other(HEADER_LEN as u64));
        // The largest length: counted, not truncated.
        assert_eq!(
            next(&[b'D', 0xff, 0xff, 0xff, 0xff]),
            Next::Other(u64::from(u32::MAX) + 1)
        );
        // A notification too large to be PostgreSQL's goes to the driver as well.
        let huge = encode_notification(1, "c", &"x".repeat(MAX_NOTIFICATION_LEN));
        assert_eq!(next(&huge), Next::Other(huge.len() as u64));
    }

    #[test]
    fn malformed_notifications_are_refused() {
        let mut no_nul = encode_message(b'A', b"\0\0\0\x01chan");
        assert!(parse_notification(&no_nul).is_err());
        no_nul = encode_message(b'A', b"\0\0\0\x01chan\0payload");
        assert!(parse_notification(&no_nul).is_err());
        let bad_utf8 = encode_message(b'A', b"\0\0\0\x01ch\xffan\0p\0");
        assert_eq!(
            parse_notification(&bad_utf8),
            Err(Malformed("a notification whose channel is not UTF-8"))
        );
        let bad_payload = encode_message(b'A', b"\0\0\0\x01chan\0\xc3\0");
        assert!(parse_notification(&bad_payload).is_err());
        let short = encode_message(b'A', b"\0\0");
        assert!(parse_notification(&short).is_err());
    }

    #[test]
    fn a_batch_yields_each_notification_in_order() {
        let mut bytes = encode_notification(1, "a", "one");
        bytes.extend(encode_notification(2, "b", ""));
        let mut batch = WireBatch::new(bytes);
        assert_eq!(batch.next().unwrap().unwrap().payload, "one");
        assert!(!batch.is_done());
        let second = batch.next().unwrap().unwrap();
        assert_eq!(
            (second.process_id, second.channel, second.payload),
            (2, "b", "")
        );
        assert!(batch.next().is_none());
        assert!(batch.is_done());
    }

    #[test]
    fn a_batch_with_a_cut_message_ends_in_an_error() {
        let mut bytes = encode_notification(1, "a", "one");
        bytes.extend(&encode_notification(2, "b", "two")[..6]);
        let mut batch = WireBatch::new(bytes);
        assert!(batch.next().unwrap().is_ok());
        assert!(batch.next().unwrap().is_err());
        assert!(batch.next().is_none());
    }

    proptest! {
        #[test]
        fn any_notification_round_trips(
            pid in any::<i32>(),
            channel in "[^\u{0}]{0,63}",
            payload in "[^\u{0}]{0,200}",
        ) {
            let message = encode_notification(pid, &channel, &payload);
            prop_assert_eq!(next(&message), Next::Notification(message.len()));
            let parsed = parse_notification(&message).unwrap();
            prop_assert_eq!(parsed.process_id, pid);
            prop_assert_eq!(parsed.channel, channel.as_str());
            prop_assert_eq!(parsed.payload, payload.as_str());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = next(&bytes);
            let _ = parse_notification(&bytes);
            let mut batch = WireBatch::new(bytes);
            while batch.next().is_some() {}
            prop_assert!(batch.is_done());
        }
    }
}
