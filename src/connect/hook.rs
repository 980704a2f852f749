//! The connect hook (`ListenerBuilder::connect_with`): your code opens each connection
//! (the equivalent of pgxlisten's `Connect` function), pglisten checks it is a primary
//! and uses it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio_postgres::{Client, SimpleQueryMessage};

use super::attempt::Established;
use super::conninfo::HostEntry;
use super::credentials::BoxError;
use super::diagnose;
use super::messages::{MessageStream, drive, message_stream};
use crate::error::{Error, ErrorKind, Result};

type Connected = std::result::Result<(Client, MessageStream), BoxError>;
type HookFuture = Pin<Box<dyn Future<Output = Connected> + Send>>;

/// A function that opens one connection per call.
pub(crate) type ConnectHook = Arc<dyn Fn() -> HookFuture + Send + Sync>;

/// Wraps the user's function: whatever stream and TLS types its connection has, the
/// listener reads it as a stream of messages.
pub(crate) fn connect_hook<F, Fut, S, T, E>(connect: F) -> ConnectHook
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(Client, tokio_postgres::Connection<S, T>), E>>
        + Send
        + 'static,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    E: Into<BoxError>,
{
    Arc::new(move || {
        let made = connect();
        Box::pin(async move {
            let (client, connection) = made.await.map_err(Into::into)?;
            Ok((client, message_stream(connection, None)))
        })
    })
}

/// What the server says about the session the hook opened: whether it is a standby,
/// and where it is (for `ReconnectReport::host`).
const CHECK_SQL: &str = "SELECT pg_is_in_recovery(), host(inet_server_addr()), inet_server_port()";

/// Calls the hook once and checks the connection it made.
pub(crate) async fn connect_hooked(hook: &ConnectHook) -> Result<Established> {
    let (client, mut messages) = hook().await.map_err(hook_failed)?;
    let rows = drive(&mut messages, client.simple_query(CHECK_SQL))
        .await
        .map_err(|e| {
            diagnose::connect_failed(
                "could not check whether the connect hook's connection is to the primary",
                e,
            )
        })?;
    let row = rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    });
    let in_recovery = row.and_then(|r| r.get(0)) == Some("t");
    let entry = HostEntry {
        host: Some(
            row.and_then(|r| r.get(1))
                .unwrap_or("(unix socket)")
                .to_owned(),
        ),
        hostaddr: None,
        port: row
            .and_then(|r| r.get(2))
            .and_then(|p| p.parse().ok())
            .unwrap_or(0),
    };
    let label = entry.label();
    if in_recovery {
        return Err(Error::new(
            ErrorKind::Connect,
            format!(
                "the connect hook connected to a standby ({label}; pg_is_in_recovery() is \
                 true), and LISTEN only works on the primary: make the hook connect to the \
                 primary"
            ),
        ));
    }
    Ok(Established {
        client,
        messages,
        host: label,
        entry,
    })
}

/// The hook's own error: a driver error is put in words like any failed connection;
/// anything else is the hook's business, kept as the source.
fn hook_failed(error: BoxError) -> Error {
    match error.downcast::<tokio_postgres::Error>() {
        Ok(driver) => diagnose::connect_failed("the connect hook could not connect", *driver),
        Err(other) => Error::with_source(
            ErrorKind::Connect,
            "the connect hook failed, so this connection attempt was not made (its error is \
             the source)",
            other,
        ),
    }
}
