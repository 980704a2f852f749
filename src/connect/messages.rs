//! A connection's messages, read through `poll_message` and, where pglisten reads the
//! notifications itself, its [`Tap`](super::tap::Tap); and the one way to run a query on
//! a connection nobody else polls.
//!
//! Awaiting a tokio-postgres `Connection` as a future throws notifications away, so the
//! connection is read as a stream of messages instead. And the connection does the I/O
//! of every query of its `Client`: a query awaited while nobody polls the connection
//! never finishes. [`drive`] polls both.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use futures::stream::{Stream, StreamExt};
use tokio_postgres::AsyncMessage;

use super::tap::Tapped;
use super::wire::WireBatch;

/// One item of a [`MessageStream`].
// The driver's message is large (a notice's fields); boxing it would cost an allocation
// per notification on connections without a tap, to save a copy.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Message {
    /// What the driver read: a notice, or a notification on a connection without a tap.
    Driver(AsyncMessage),
    /// Notifications the tap read, in the order they arrived.
    Notifications(WireBatch),
}

/// The connection's messages (notifications, notices).
pub(crate) type MessageStream =
    Pin<Box<dyn Stream<Item = Result<Message, tokio_postgres::Error>> + Send>>;

/// Reads a connection's messages through `poll_message` and, when the connection has a
/// tap, the notifications it stashed. The tap starts stashing now.
///
/// The stash is yielded whenever the driver is pending (or has ended): the tap stops
/// with the stash not empty before anything that follows it, so the driver's own
/// messages and the stash come out in the server's order (see the `tap` module).
pub(crate) fn message_stream<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    tapped: Option<Tapped>,
) -> MessageStream
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match tapped {
        None => Box::pin(futures::stream::poll_fn(move |cx| {
            connection
                .poll_message(cx)
                .map(|m| m.map(|m| m.map(Message::Driver)))
        })),
        Some(tapped) => {
            tapped.start();
            Box::pin(futures::stream::poll_fn(move |cx| {
                match connection.poll_message(cx) {
                    Poll::Ready(Some(message)) => Poll::Ready(Some(message.map(Message::Driver))),
                    ended_or_pending => match tapped.take() {
                        Some(batch) => Poll::Ready(Some(Ok(Message::Notifications(batch)))),
                        None => ended_or_pending.map(|_| None),
                    },
                }
            }))
        }
    }
}

/// Runs `query` while polling the connection that does its I/O. Messages that arrive
/// meanwhile are discarded (nothing listens yet when this is used).
pub(crate) async fn drive<T>(
    messages: &mut MessageStream,
    query: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, tokio_postgres::Error> {
    let mut query = std::pin::pin!(query);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = query.as_mut().poll(cx) {
            return Poll::Ready(result);
        }
        loop {
            match messages.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                // The query's own future reports the closed connection.
                Poll::Ready(None) => return query.as_mut().poll(cx),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}
