//! pglisten's own reader under the driver: on a listening connection it takes the
//! notifications out of the server's byte stream before tokio-postgres sees them.
//!
//! tokio-postgres parses each notification into two fresh `String`s, which the listener
//! then copies into its blocks and frees: most of a drain's cost. A [`Tap`] sits between
//! the transport and the driver (above TLS, so it reads plain protocol), finds where
//! each backend message starts ([`wire::next`]) and moves whole notification messages
//! into a stash, handing every other message to the driver untouched. The message
//! stream ([`super::messages`]) yields the stash as one [`WireBatch`], which the listener
//! routes without any allocation per notification.
//!
//! **Order.** The tap hands the driver a message only when the stash is empty, and
//! stops with `Pending` when the next message is not a notification while the stash
//! holds some: so everything the driver has read precedes everything stashed, and the
//! message stream, which yields the stash whenever the driver is pending, keeps the
//! server's order. Returning `Pending` without the transport's waker registered is safe
//! only because the stash is then not empty and is taken by the same poll.
//!
//! The tap stashes nothing until [`Tapped::start`] (the start-up exchange stays the
//! driver's alone), but follows message boundaries from the first byte: it is made
//! where the server's first message comes next (after the TLS handshake, or on a plain
//! socket with no `SSLRequest` answer to skip; see [`PlainTap`]).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use super::wire::{self, Next, WireBatch};

/// The tap's read buffer: one read takes up to this much from the transport. Four
/// times tokio-postgres's own, so a fast drain makes fewer system calls.
const BUFFER_LEN: usize = 64 * 1024;

/// The tap stops reading once the stash holds this much, so that the listener routes
/// a burst in pieces that stay in cache rather than all at once.
const STASH_LIMIT: usize = 32 * 1024;

const _: () = assert!(wire::MAX_NOTIFICATION_LEN <= BUFFER_LEN);

/// The stash a [`Tap`] fills and the message stream empties.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tapped(Arc<Mutex<Stash>>);

#[derive(Debug, Default)]
struct Stash {
    /// False until [`Tapped::start`]: notifications go to the driver.
    taking: bool,
    /// Whole notification messages, in the order they arrived.
    bytes: Vec<u8>,
    /// How much the last stash taken held: the next one starts with that much room,
    /// rather than growing step by step.
    last_len: usize,
}

impl Tapped {
    fn lock(&self) -> MutexGuard<'_, Stash> {
        // The stash holds bytes only: a panic elsewhere cannot leave it half-written in a
        // way that matters more than the connection, so poisoning is ignored.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// From now on notifications are stashed instead of going to the driver.
    pub(crate) fn start(&self) {
        self.lock().taking = true;
    }

    /// The notifications stashed so far, if any.
    pub(crate) fn take(&self) -> Option<WireBatch> {
        let mut stash = self.lock();
        if stash.bytes.is_empty() {
            return None;
        }
        stash.last_len = stash.bytes.len();
        Some(WireBatch::new(std::mem::take(&mut stash.bytes)))
    }
}

/// A transport with pglisten's reader on top; see the module docs.
#[derive(Debug)]
pub(crate) struct Tap<S> {
    inner: S,
    buffer: Box<[u8]>,
    /// `buffer[start..end]` was read and is neither handed over nor stashed.
    start: usize,
    end: usize,
    /// Bytes of the message being handed to the driver that are still to come.
    passing: u64,
    /// The transport ended; handed on once nothing read is left.
    eof: bool,
    /// A read failed; handed on once the stash was taken.
    error: Option<io::Error>,
    /// The transport's TLS channel binding (none for a plain socket).
    binding: fn(&S) -> ChannelBinding,
    tapped: Tapped,
}

impl<S> Tap<S> {
    fn new(inner: S, binding: fn(&S) -> ChannelBinding, tapped: Tapped) -> Self {
        Tap {
            inner,
            buffer: vec![0; BUFFER_LEN].into_boxed_slice(),
            start: 0,
            end: 0,
            passing: 0,
            eof: false,
            error: None,
            binding,
            tapped,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let Tap {
            inner,
            buffer,
            start,
            end,
            passing,
            eof,
            error,
            tapped,
            ..
        } = self.get_mut();
        let mut stash = tapped.lock();
        loop {
            let available = *end - *start;
            if *passing > 0 {
                if available > 0 {
                    let n = available.min(out.remaining());
                    let n = usize::try_from(*passing).map_or(n, |passing| n.min(passing));
                    out.put_slice(&buffer[*start..*start + n]);
                    *start += n;
                    *passing -= n as u64;
                    return Poll::Ready(Ok(()));
                }
            } else if available > 0 {
                match wire::next(&buffer[*start..*end]) {
                    Next::Notification(len) if stash.taking => {
                        if stash.bytes.capacity() == 0 {
                            let room = stash.last_len.clamp(len, STASH_LIMIT + len);
                            stash.bytes.reserve(room);
                        }
                        stash.bytes.extend_from_slice(&buffer[*start..*start + len]);
                        *start += len;
                        if stash.bytes.len() >= STASH_LIMIT {
                            return Poll::Pending;
                        }
                        continue;
                    }
                    Next::Notification(len) => {
                        *passing = len as u64;
                        continue;
                    }
                    Next::Other(_) if !stash.bytes.is_empty() => {
                        // The stash goes first (see the module docs).
                        return Poll::Pending;
                    }
                    Next::Other(len) => {
                        *passing = len;
                        continue;
                    }
                    Next::NeedMore(_) => {}
                }
            }
            // More bytes are needed.
            if *eof || error.is_some() {
                if !stash.bytes.is_empty() {
                    return Poll::Pending;
                }
                if let Some(error) = error.take() {
                    return Poll::Ready(Err(error));
                }
                if available > 0 {
                    // A message cut short: the driver reports it.
                    *passing = available as u64;
                    continue;
                }
                return Poll::Ready(Ok(()));
            }
            make_room(buffer, start, end);
            let mut read = ReadBuf::new(&mut buffer[*end..]);
            match Pin::new(&mut *inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    *eof = n == 0;
                    *end += n;
                }
                Poll::Ready(Err(e)) => *error = Some(e),
            }
        }
    }
}

/// Moves what is left of `buffer[start..end]` to the front when the message being
/// framed might not fit behind it.
fn make_room(buffer: &mut [u8], start: &mut usize, end: &mut usize) {
    if *start == *end {
        *start = 0;
        *end = 0;
    } else if *start > 0 && buffer.len() - *start < wire::MAX_NOTIFICATION_LEN {
        buffer.copy_within(*start..*end, 0);
        *end -= *start;
        *start = 0;
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for Tap<S> {
    fn channel_binding(&self) -> ChannelBinding {
        (self.binding)(&self.inner)
    }
}

/// A plain socket's channel binding: none.
fn no_binding<S>(_: &S) -> ChannelBinding {
    ChannelBinding::none()
}

/// A tap on a plain socket, passed to tokio-postgres as its TLS connector.
///
/// tokio-postgres has no other place to put a layer over its own socket. The attempt
/// sets `sslmode=require` with `sslnegotiation=direct`, so that the driver sends no
/// `SSLRequest` and calls [`TlsConnect::connect`] at once; this "handshake" puts a tap
/// on the socket and encrypts nothing. On the wire that is exactly `sslmode=disable`
/// (the start-up message goes first, in plain), and the tap reports no channel binding,
/// as a plain socket does, so authentication behaves as it does without TLS. The driver
/// calls the connector only for a host name; for a unix socket pglisten opens the socket
/// itself and hands it to the driver (`Config::connect_raw`) with this connector.
#[derive(Debug, Clone)]
pub(crate) struct PlainTap(pub(crate) Tapped);

impl<S: AsyncRead + AsyncWrite + Unpin> MakeTlsConnect<S> for PlainTap {
    type Stream = Tap<S>;
    type TlsConnect = PlainTap;
    type Error = Infallible;

    fn make_tls_connect(&mut self, _domain: &str) -> Result<PlainTap, Infallible> {
        Ok(self.clone())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsConnect<S> for PlainTap {
    type Stream = Tap<S>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Tap<S>, Infallible>>;

    fn connect(self, stream: S) -> Self::Future {
        std::future::ready(Ok(Tap::new(stream, no_binding, self.0)))
    }
}

/// A tap above a TLS connector's stream.
#[derive(Debug, Clone)]
pub(crate) struct TlsTap<M> {
    pub(crate) tls: M,
    pub(crate) tapped: Tapped,
}

impl<S, M> MakeTlsConnect<S> for TlsTap<M>
where
    M: MakeTlsConnect<S>,
    <M::TlsConnect as TlsConnect<S>>::Future: Unpin,
{
    type Stream = Tap<M::Stream>;
    type TlsConnect = TlsTap<M::TlsConnect>;
    type Error = M::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, M::Error> {
        Ok(TlsTap {
            tls: self.tls.make_tls_connect(domain)?,
            tapped: self.tapped.clone(),
        })
    }
}

impl<S, C> TlsConnect<S> for TlsTap<C>
where
    C: TlsConnect<S>,
    C::Future: Unpin,
{
    type Stream = Tap<C::Stream>;
    type Error = C::Error;
    type Future = Handshake<C::Future>;

    fn connect(self, stream: S) -> Self::Future {
        Handshake {
            handshake: self.tls.connect(stream),
            tapped: Some(self.tapped),
        }
    }
}

/// The TLS handshake, then the tap on top of it.
#[derive(Debug)]
pub(crate) struct Handshake<F> {
    handshake: F,
    tapped: Option<Tapped>,
}

impl<F, T, E> Future for Handshake<F>
where
    F: Future<Output = Result<T, E>> + Unpin,
    T: TlsStream + Unpin,
{
    type Output = Result<Tap<T>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let stream = std::task::ready!(Pin::new(&mut this.handshake).poll(cx))?;
        let tapped = this.tapped.take().unwrap_or_default();
        Poll::Ready(Ok(Tap::new(stream, T::channel_binding, tapped)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::wire::{encode_message, encode_notification};
    use proptest::prelude::*;
    use std::task::Waker;

    /// A transport that returns `data` in pieces of the given sizes, `Pending` (with a
    /// wake-up) before every other piece, then ends.
    struct Pieces {
        data: Vec<u8>,
        sizes: Vec<usize>,
        at: usize,
        piece: usize,
        pending_next: bool,
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            if this.pending_next {
                this.pending_next = false;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            this.pending_next = this.piece % 2 == 1;
            let size = this
                .sizes
                .get(this.piece % this.sizes.len().max(1))
                .copied();
            this.piece += 1;
            let n = size
                .unwrap_or(usize::MAX)
                .max(1)
                .min(out.remaining())
                .min(this.data.len() - this.at);
            out.put_slice(&this.data[this.at..this.at + n]);
            this.at += n;
            Poll::Ready(Ok(()))
        }
    }

    /// A tap over `inner` that stashes from the start.
    fn taking<S>(inner: S) -> (Tap<S>, Tapped) {
        let tapped = Tapped::default();
        tapped.start();
        (Tap::new(inner, no_binding, tapped.clone()), tapped)
    }

    /// What the driver and the listener see, in order.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Seen {
        /// A whole message the driver read.
        Driver(Vec<u8>),
        /// A notification from the stash.
        Tapped(i32, String, String),
    }

    /// Reads everything through a tap as the driver and the message stream would: the
    /// driver reads with `driver_reads`-sized buffers; when it is pending, the stash is
    /// taken. `start_after`: messages the driver reads before the tap starts stashing.
    fn read_through(
        data: Vec<u8>,
        sizes: Vec<usize>,
        driver_reads: usize,
        start_after: usize,
    ) -> Vec<Seen> {
        let tapped = Tapped::default();
        let pieces = Pieces {
            data,
            sizes,
            at: 0,
            piece: 0,
            pending_next: false,
        };
        let mut tap = Tap::new(pieces, no_binding, tapped.clone());
        let mut cx = Context::from_waker(Waker::noop());
        let mut seen = Vec::new();
        let mut driver = Vec::new();
        let mut driver_messages = 0;
        if start_after == 0 {
            tapped.start();
        }
        let mut idle_rounds = 0;
        loop {
            let mut space = vec![0; driver_reads.max(1)];
            let mut out = ReadBuf::new(&mut space);
            match Pin::new(&mut tap).poll_read(&mut cx, &mut out) {
                Poll::Ready(Ok(())) if out.filled().is_empty() => break,
                Poll::Ready(Ok(())) => {
                    idle_rounds = 0;
                    driver.extend_from_slice(out.filled());
                    // Whole messages the driver has now.
                    while driver.len() >= wire::HEADER_LEN {
                        let len = u32::from_be_bytes(driver[1..5].try_into().unwrap()) as usize;
                        if driver.len() < len + 1 {
                            break;
                        }
                        seen.push(Seen::Driver(driver.drain(..len + 1).collect()));
                        driver_messages += 1;
                        if driver_messages == start_after {
                            tapped.start();
                        }
                    }
                }
                Poll::Ready(Err(e)) => panic!("{e}"),
                Poll::Pending => match tapped.take() {
                    Some(mut batch) => {
                        idle_rounds = 0;
                        while let Some(n) = batch.next() {
                            let n = n.unwrap();
                            seen.push(Seen::Tapped(
                                n.process_id,
                                n.channel.to_owned(),
                                n.payload.to_owned(),
                            ));
                        }
                    }
                    None => {
                        // The transport was pending (it wakes at once): a hang shows here.
                        idle_rounds += 1;
                        assert!(idle_rounds < 1_000_000, "no progress");
                    }
                },
            }
        }
        assert!(
            driver.is_empty(),
            "the driver was left with part of a message"
        );
        seen
    }

    /// A test message: a notification or another message of some size.
    #[derive(Debug, Clone)]
    enum Sent {
        Notification(i32, String, String),
        Other(u8, usize),
    }

    fn encode(sent: &[Sent]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for message in sent {
            match message {
                Sent::Notification(pid, channel, payload) => {
                    bytes.extend(encode_notification(*pid, channel, payload));
                }
                Sent::Other(kind, len) => bytes.extend(encode_message(*kind, &vec![7; *len])),
            }
        }
        bytes
    }

    /// What a reader should see: notifications from the stash once the tap started,
    /// everything else (and the notifications before) from the driver.
    fn expected(sent: &[Sent], start_after: usize) -> Vec<Seen> {
        let mut driver_messages = 0;
        sent.iter()
            .map(|message| {
                let taking = driver_messages >= start_after;
                match message {
                    // Too large to be PostgreSQL's: the driver reads it.
                    Sent::Notification(pid, channel, payload)
                        if taking
                            && encode_notification(*pid, channel, payload).len()
                                <= wire::MAX_NOTIFICATION_LEN =>
                    {
                        Seen::Tapped(*pid, channel.clone(), payload.clone())
                    }
                    other => {
                        driver_messages += 1;
                        Seen::Driver(encode(std::slice::from_ref(other)))
                    }
                }
            })
            .collect()
    }

    #[test]
    fn notifications_are_stashed_and_everything_else_is_handed_over_in_order() {
        let sent = vec![
            Sent::Other(b'Z', 1),
            Sent::Notification(1, "a".into(), "one".into()),
            Sent::Notification(2, "b".into(), "two".into()),
            Sent::Other(b'C', 10),
            Sent::Notification(3, "a".into(), "three".into()),
            Sent::Other(b'D', 100_000),
            Sent::Notification(4, "a".into(), "x".repeat(wire::MAX_NOTIFICATION_LEN)),
            Sent::Notification(5, "a".into(), "five".into()),
        ];
        for sizes in [vec![1], vec![3, 7, 1000], vec![usize::MAX]] {
            let seen = read_through(encode(&sent), sizes, 8192, 0);
            assert_eq!(seen, expected(&sent, 0));
        }
    }

    #[test]
    fn before_start_notifications_go_to_the_driver() {
        let sent = vec![
            Sent::Notification(1, "a".into(), "early".into()),
            Sent::Other(b'Z', 1),
            Sent::Notification(2, "a".into(), "late".into()),
        ];
        let seen = read_through(encode(&sent), vec![2], 8192, 2);
        assert_eq!(seen, expected(&sent, 2));
    }

    #[test]
    fn a_burst_is_stashed_in_bounded_pieces() {
        let sent: Vec<Sent> = (0..2000)
            .map(|i| Sent::Notification(i, "c".into(), format!("{i:064}")))
            .collect();
        let pieces = Pieces {
            data: encode(&sent),
            sizes: vec![usize::MAX],
            at: 0,
            piece: 0,
            pending_next: false,
        };
        let (mut tap, tapped) = taking(pieces);
        let mut cx = Context::from_waker(Waker::noop());
        let mut space = [0; 64];
        let mut out = ReadBuf::new(&mut space);
        assert!(Pin::new(&mut tap).poll_read(&mut cx, &mut out).is_pending());
        let mut first = tapped.take().unwrap();
        let mut count = 0;
        while first.next().is_some() {
            count += 1;
        }
        assert!(
            count > 0 && count < 2000,
            "{count} notifications in one piece"
        );
    }

    #[test]
    fn an_error_waits_until_the_stash_is_taken() {
        struct Failing(bool);
        impl AsyncRead for Failing {
            fn poll_read(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                out: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                let this = self.get_mut();
                if std::mem::replace(&mut this.0, true) {
                    return Poll::Ready(Err(io::Error::other("reset")));
                }
                out.put_slice(&encode_notification(1, "c", "before the error"));
                Poll::Ready(Ok(()))
            }
        }
        let (mut tap, tapped) = taking(Failing(false));
        let mut cx = Context::from_waker(Waker::noop());
        let mut space = [0; 64];
        let mut out = ReadBuf::new(&mut space);
        assert!(Pin::new(&mut tap).poll_read(&mut cx, &mut out).is_pending());
        let mut batch = tapped.take().unwrap();
        assert_eq!(batch.next().unwrap().unwrap().payload, "before the error");
        let mut out = ReadBuf::new(&mut space);
        match Pin::new(&mut tap).poll_read(&mut cx, &mut out) {
            Poll::Ready(Err(e)) => assert_eq!(e.to_string(), "reset"),
            other => panic!("{other:?}"),
        }
    }

    fn sent_strategy() -> impl Strategy<Value = Sent> {
        prop_oneof![
            4 => (any::<i32>(), "[a-z_]{1,20}", "\\PC{0,80}")
                .prop_map(|(pid, channel, payload)| Sent::Notification(pid, channel, payload)),
            1 => (prop_oneof![Just(b'Z'), Just(b'C'), Just(b'N'), Just(b'D')], 0usize..300)
                .prop_map(|(kind, len)| Sent::Other(kind, len)),
            1 => (0usize..3).prop_map(|_| Sent::Other(b'D', 70_000)),
        ]
    }

    proptest! {
        #[test]
        fn any_stream_cut_anywhere_keeps_the_servers_order(
            sent in proptest::collection::vec(sent_strategy(), 0..60),
            sizes in proptest::collection::vec(1usize..400, 1..8),
            driver_reads in 1usize..9000,
            start_after in 0usize..4,
        ) {
            let seen = read_through(encode(&sent), sizes, driver_reads, start_after);
            prop_assert_eq!(seen, expected(&sent, start_after));
        }
    }
}
