//! Plain tokio-postgres clients for tests, examples and benchmarks: the "admin"
//! connection that sends notifications and inspects the server, and a raw connection
//! read through `poll_message`, as the benchmarks' baseline receiver reads it.

use std::future::Future;
use std::task::Poll;

use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{Client, Connection, NoTls, Socket};

/// A tokio-postgres connection without TLS, as [`raw`] returns it.
pub type RawConnection = Connection<Socket, NoTlsStream>;

/// Connects an ordinary client to `url` (no TLS) and spawns its connection on the
/// current tokio runtime, for sending notifications and inspecting the server.
///
/// # Panics
///
/// If the connection fails (the message names the URL and the driver's error), or when
/// called outside a tokio runtime.
///
/// ```no_run
/// # async fn run(url: &str) {
/// let client = pglisten_testkit::admin(url).await;
/// client.execute("SELECT pg_notify('orders', '42')", &[]).await.unwrap();
/// # }
/// ```
pub async fn admin(url: &str) -> Client {
    try_admin(url)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url} failed: {e}"))
}

/// [`admin`] that returns the driver's error instead of panicking, for callers that
/// retry (a producer that keeps sending across outages) or show the error (examples
/// run against a user's `DATABASE_URL`, whose password a panic message would print).
///
/// # Errors
///
/// When the connection cannot be made.
///
/// # Panics
///
/// When called outside a tokio runtime.
pub async fn try_admin(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        // Ends when the client is dropped or the server goes away; either is expected.
        let _ = connection.await;
    });
    Ok(client)
}

/// Connects a client to `url` (no TLS) and returns its connection unpolled, for code
/// that reads the connection's messages itself (see [`drive`]).
///
/// # Panics
///
/// If the connection fails.
pub async fn raw(url: &str) -> (Client, RawConnection) {
    tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url} failed: {e}"))
}

/// Runs `query` while polling `connection`, which does the query's I/O: awaiting the
/// query alone would never finish. Messages that arrive meanwhile (notifications,
/// notices) are discarded.
///
/// # Errors
///
/// The query's error, or the connection's when it fails first.
pub async fn drive<T>(
    connection: &mut RawConnection,
    query: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, tokio_postgres::Error> {
    let mut query = std::pin::pin!(query);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = query.as_mut().poll(cx) {
            return Poll::Ready(result);
        }
        loop {
            match connection.poll_message(cx) {
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                // The query's own future reports the closed connection.
                Poll::Ready(None) => return query.as_mut().poll(cx),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}
