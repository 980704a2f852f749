//! One established connection set up for listening, and the small requests the worker
//! runs on it. Reaching the server is `attempt`'s job; this module prepares the session
//! (backend pid, no idle timeout, the delivery self-check) and closes it cleanly.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_postgres::{AsyncMessage, Client, SimpleQueryMessage};
use tracing::debug;

use super::attempt::{ConnectConfig, Established};
use super::conninfo::HostEntry;
use super::diagnose;
use super::messages::{Message, MessageStream, drive};
use crate::channel::{quote_identifier, validate_channel, validate_payload};
use crate::error::{Error, ErrorKind, Result};

/// One established connection.
pub(crate) struct Session {
    pub(crate) client: Arc<Client>,
    pub(crate) messages: MessageStream,
    pub(crate) backend_pid: i32,
    /// The host it reached, `host:port`.
    pub(crate) host: Arc<str>,
}

/// Set-up in one round trip: the backend's pid, the server's version, and no
/// idle-session timeout (PostgreSQL 14+; 13 has no such setting) — a LISTEN connection
/// is idle by design and must not be ended for it.
const SETUP_SQL: &str = "SELECT pg_backend_pid(), \
     current_setting('server_version_num'), current_setting('server_version'), \
     CASE WHEN current_setting('server_version_num')::int >= 140000 \
     THEN set_config('idle_session_timeout', '0', false) END";

/// The oldest server pglisten supports, as `server_version_num` (13.0): the oldest
/// version its test suite runs against.
const OLDEST_SERVER: u32 = 130_000;

/// Refuses a server older than [`OLDEST_SERVER`], given its `server_version_num` and its
/// `server_version` (for the message).
fn check_server_version(version_num: Option<&str>, version: Option<&str>) -> Result<()> {
    let shown = version.unwrap_or("unknown");
    let Some(num) = version_num.and_then(|n| n.trim().parse::<u32>().ok()) else {
        return Err(Error::new(
            ErrorKind::Connect,
            format!(
                "the server reports no usable version (server_version_num {:?}, \
                 server_version {shown:?}); pglisten needs PostgreSQL 13 or later",
                version_num.unwrap_or("")
            ),
        ));
    };
    if num < OLDEST_SERVER {
        return Err(Error::new(
            ErrorKind::Connect,
            format!(
                "the server runs PostgreSQL {shown} (server_version_num {num}), which \
                 pglisten does not support: it needs PostgreSQL 13 or later"
            ),
        ));
    }
    Ok(())
}

/// Connects, authenticates and prepares the session. Each host, and each later step
/// (the set-up query, the self-check), is bounded by the step timeout, so that a host
/// that never answers cannot use up the time the next host needs.
pub(crate) async fn open_session(config: &ConnectConfig) -> Result<Session> {
    let target = config.target();
    let established = config.connect().await?;
    let reached = established.entry.clone();
    let Established {
        client,
        mut messages,
        host,
        ..
    } = established;
    let client = Arc::new(client);
    let rows = within(
        config,
        &format!("setting up the connection to {host}"),
        drive(&mut messages, client.simple_query(SETUP_SQL)),
    )
    .await?
    .map_err(|e| {
        diagnose::connect_failed(&format!("could not set up the connection to {target}"), e)
    })?;
    let row = first_row(&rows);
    let value = |i: usize| row.and_then(|row| row.get(i));
    check_server_version(value(1), value(2))?;
    let backend_pid = value(0).and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut session = Session {
        client,
        messages,
        backend_pid,
        host: Arc::from(host),
    };
    if config.self_check() {
        check_delivery(config, &reached, &mut session).await?;
    }
    Ok(session)
}

/// Runs one step of setting a connection up within the step timeout.
async fn within<T>(config: &ConnectConfig, what: &str, step: impl Future<Output = T>) -> Result<T> {
    config
        .bounded(step, |bound| {
            format!(
                "{what} took longer than {bound:?}: check that the server is healthy, or \
                 raise the bound ({})",
                config.timeout_source()
            )
        })
        .await
}

/// How long a NOTIFY from another session may take to arrive during the self-check,
/// once that session's commit was acknowledged.
const SELF_CHECK_WAIT: Duration = Duration::from_secs(3);

/// Proves that notifications from *other* sessions reach this one: LISTEN a private
/// channel, NOTIFY it from a second short-lived connection, and wait for it. Behind a
/// pooler in transaction or statement mode the listening server connection goes back to
/// the pool between transactions and such a notification never arrives, silently; this
/// turns that into a clear error at connect time.
async fn check_delivery(
    config: &ConnectConfig,
    reached: &HostEntry,
    session: &mut Session,
) -> Result<()> {
    let channel = format!("pglisten_self_check_{}", session.backend_pid);
    let quoted = quote_identifier(&channel);
    let failed = |e: tokio_postgres::Error| {
        diagnose::connect_failed("the delivery self-check could not run", e)
    };
    within(
        config,
        "LISTEN for the delivery self-check",
        drive(
            &mut session.messages,
            session.client.batch_execute(&format!("LISTEN {quoted}")),
        ),
    )
    .await?
    .map_err(failed)?;

    // The second session, on the host just reached: notify, then close it.
    let Established {
        client: other,
        messages: mut other_messages,
        ..
    } = config.connect_to(reached).await?;
    let notify = format!("SELECT pg_notify('{channel}', 'self-check')");
    within(
        config,
        "NOTIFY for the delivery self-check",
        drive(&mut other_messages, other.simple_query(&notify)),
    )
    .await?
    .map_err(failed)?;
    drop(other);
    tokio::spawn(async move { while other_messages.next().await.is_some() {} });

    let arrived = tokio::time::timeout(SELF_CHECK_WAIT, async {
        while let Some(message) = session.messages.next().await {
            match message {
                Ok(Message::Driver(AsyncMessage::Notification(n))) if n.channel() == channel => {
                    return Ok(());
                }
                Ok(Message::Notifications(mut batch)) => {
                    while let Some(notification) = batch.next() {
                        if notification.is_ok_and(|n| n.channel == channel) {
                            return Ok(());
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(diagnose::connection_lost(Some(e))),
            }
        }
        Err(diagnose::connection_lost(None))
    })
    .await;
    match arrived {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(error),
        Err(_) => {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "notifications do not reach this connection: a NOTIFY sent from another \
                     session was not delivered within {SELF_CHECK_WAIT:?}. This is what \
                     happens behind a connection pooler in transaction or statement mode \
                     (PgBouncer, RDS Proxy, Supavisor's transaction port): LISTEN needs a \
                     direct connection or a session-mode pool. (To skip this check, use \
                     ListenerBuilder::self_check(false).)"
                ),
            ));
        }
    }
    drive(
        &mut session.messages,
        session.client.batch_execute(&format!("UNLISTEN {quoted}")),
    )
    .await
    .map_err(failed)?;
    Ok(())
}

fn first_row(messages: &[SimpleQueryMessage]) -> Option<&tokio_postgres::SimpleQueryRow> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    })
}

/// Closes the connection cleanly: dropping the last `Client` makes the connection send
/// `Terminate`; polling it to its end flushes that and closes the socket.
pub(crate) async fn close_gracefully(session: Session) {
    let Session {
        client,
        mut messages,
        ..
    } = session;
    drop(client);
    let drained = async { while messages.next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(2), drained)
        .await
        .is_err()
    {
        debug!("the server did not close the connection within 2s; dropping it");
    }
}

/// The server's own list of channels this session listens to.
pub(crate) async fn listening_channels(client: &Client) -> Result<Vec<String>> {
    let messages = client
        .simple_query("SELECT pg_listening_channels()")
        .await
        .map_err(Error::from)?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .collect())
}

/// The error for a request made while the task is between connections.
pub(crate) fn not_connected(consequence: &str) -> Error {
    Error::new(
        ErrorKind::ConnectionLost,
        format!("not connected to the server right now (reconnecting); {consequence}"),
    )
}

/// Sends a notification through `client` (`SELECT pg_notify(channel, payload)`),
/// refusing names and payloads the server would refuse or truncate.
pub(crate) async fn send_notification<C>(client: &C, channel: &str, payload: &str) -> Result<()>
where
    C: tokio_postgres::GenericClient + Sync,
{
    use tokio_postgres::types::Type;
    validate_channel(channel)?;
    validate_payload(payload)?;
    client
        .execute_typed(
            "SELECT pg_notify($1, $2)",
            &[(&channel, Type::TEXT), (&payload, Type::TEXT)],
        )
        .await
        .map(|_| ())
        .map_err(diagnose::notify_failed)
}

/// The statement behind `notify_many`: one `pg_notify` per element, in the array's order.
/// `ORDER BY` on the ordinality fixes the order of the rows, and PostgreSQL (9.6 and
/// later) evaluates a volatile function of the select list, such as `pg_notify`, after
/// the sort, so the calls, and the notifications, follow the array.
pub(crate) const NOTIFY_MANY_SQL: &str = "SELECT pg_notify($1, payload) \
     FROM unnest($2::text[]) WITH ORDINALITY AS batch(payload, position) \
     ORDER BY position";

/// Sends every payload on `channel` in one statement, in order, after checking them
/// all: nothing is sent when one is refused.
pub(crate) async fn send_notifications<C>(
    client: &C,
    channel: &str,
    payloads: &[&str],
) -> Result<()>
where
    C: tokio_postgres::GenericClient + Sync,
{
    use tokio_postgres::types::Type;
    validate_channel(channel)?;
    for (position, payload) in payloads.iter().enumerate() {
        validate_payload(payload).map_err(|e| {
            Error::new(
                e.kind(),
                format!("payload {position} of the batch (counting from 0): {e}; nothing was sent"),
            )
        })?;
    }
    if payloads.is_empty() {
        return Ok(());
    }
    client
        .execute_typed(
            NOTIFY_MANY_SQL,
            &[(&channel, Type::TEXT), (&payloads, Type::TEXT_ARRAY)],
        )
        .await
        .map(|_| ())
        .map_err(diagnose::notify_failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_older_than_13_are_refused_with_their_version() {
        for (num, shown) in [("120022", "12.22"), ("90624", "9.6.24"), ("0", "0")] {
            let e = check_server_version(Some(num), Some(shown)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Connect);
            let text = e.to_string();
            assert!(text.contains(&format!("PostgreSQL {shown} ")), "{text}");
            assert!(text.contains("PostgreSQL 13 or later"), "{text}");
        }
    }

    #[test]
    fn servers_from_13_on_are_served() {
        for num in [
            "130000", "130023", "140000", "150014", "180004", "190000", " 170000",
        ] {
            check_server_version(Some(num), Some("x")).unwrap();
        }
    }

    #[test]
    fn a_missing_or_unreadable_version_is_an_error_not_a_panic() {
        for (num, shown) in [
            (None, None),
            (Some(""), Some("13.1")),
            (Some("13.1"), Some("13.1")),
            (Some("-130000"), None),
            (Some("99999999999"), None),
        ] {
            let e = check_server_version(num, shown).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Connect);
            assert!(e.to_string().contains("13 or later"), "{e}");
        }
    }
}
