//! A connection's messages, read through `poll_message`, and the one way to run a query
//! on a connection nobody else polls.
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

/// The connection's messages (notifications, notices), read through `poll_message`.
pub(crate) type MessageStream =
    Pin<Box<dyn Stream<Item = Result<AsyncMessage, tokio_postgres::Error>> + Send>>;

/// Reads a connection's messages through `poll_message`.
pub(crate) fn message_stream<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
) -> MessageStream
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(futures::stream::poll_fn(move |cx| {
        connection.poll_message(cx)
    }))
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
