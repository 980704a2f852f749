//! Sending notifications through your own client or transaction ([`notify`]), and JSON
//! payloads with the `serde` feature ([`notify_json`], `Listener::notify_json`,
//! `Notification::json`).

#[cfg(feature = "serde")]
use crate::channel::MAX_PAYLOAD_BYTES;
use crate::connect::{send_notification, send_notifications};
use crate::error::Result;
#[cfg(feature = "serde")]
use crate::error::{Error, ErrorKind};
#[cfg(feature = "serde")]
use crate::fanout::Notification;
#[cfg(feature = "serde")]
use crate::listener::Listener;

/// Sends a notification through any client or transaction of your own
/// (`SELECT pg_notify(channel, payload)`), with the same validation as
/// [`Listener::notify`](crate::Listener::notify). Inside a transaction, the notification is delivered when the
/// transaction commits, and not at all if it rolls back.
///
/// ```no_run
/// # async fn run(client: &mut tokio_postgres::Client) -> pglisten::Result<()> {
/// let tx = client.transaction().await?;
/// tx.execute("INSERT INTO orders (id) VALUES (42)", &[]).await?;
/// pglisten::notify(&tx, "orders", "42").await?;
/// tx.commit().await?; // listeners receive "42" now
/// # Ok(()) }
/// ```
pub async fn notify<C>(client: &C, channel: &str, payload: &str) -> Result<()>
where
    C: tokio_postgres::GenericClient + Sync,
{
    send_notification(client, channel, payload).await
}

/// Sends many notifications on one channel in one statement and one round trip, in
/// order: `SELECT pg_notify($1, payload) FROM unnest($2::text[]) WITH ORDINALITY ...
/// ORDER BY` the position, so listeners receive them in the order given.
///
/// Every payload is checked first (as [`notify`] does); when one is refused nothing is
/// sent. An empty batch sends nothing and makes no round trip.
///
/// # Why batch: the commit lock
///
/// A transaction that sent notifications takes one cluster-wide lock at commit, to append
/// them to the server's notification queue in commit order. Committing producers queue
/// behind it one at a time, so many small transactions that each notify contend on that
/// lock, whatever the number of CPUs. Sending many notifications in one transaction
/// takes the lock once, and doing it in one statement also saves a round trip per
/// notification. BENCHMARKS.md ("Sending") measures the three ways.
///
/// Inside one transaction the server drops a notification whose channel and payload
/// equal one already sent by that transaction, so give each payload something unique
/// (an id) if every one must arrive.
///
/// ```no_run
/// # async fn run(client: &mut tokio_postgres::Client) -> pglisten::Result<()> {
/// let changed: Vec<String> = (1..=500).map(|id| id.to_string()).collect();
/// let tx = client.transaction().await?;
/// pglisten::notify_many(&tx, "orders", &changed).await?;
/// tx.commit().await?; // listeners receive "1", "2", ... "500", in that order
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// As [`notify`]: [`ErrorKind::InvalidChannel`](crate::ErrorKind::InvalidChannel),
/// [`ErrorKind::InvalidPayload`](crate::ErrorKind::InvalidPayload) (the message says
/// which payload), or the server's refusal.
pub async fn notify_many<C, I>(client: &C, channel: &str, payloads: I) -> Result<()>
where
    C: tokio_postgres::GenericClient + Sync,
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let owned: Vec<I::Item> = payloads.into_iter().collect();
    let texts: Vec<&str> = owned.iter().map(AsRef::as_ref).collect();
    send_notifications(client, channel, &texts).await
}

#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
impl Notification {
    /// Decodes the payload as JSON.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidPayload`] when the payload is not JSON of type `T`; the
    /// message says where decoding stopped, the `serde_json` error is the source.
    ///
    /// ```
    /// # #[cfg(feature = "serde")]
    /// # fn f(n: pglisten::Notification) -> pglisten::Result<()> {
    /// #[derive(serde::Deserialize)]
    /// struct OrderChanged { id: i64, status: String }
    ///
    /// let change: OrderChanged = n.json()?;
    /// println!("order {} is now {}", change.id, change.status);
    /// # Ok(()) }
    /// ```
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(self.payload()).map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidPayload,
                format!(
                    "the payload of a notification on {:?} is not the expected JSON (the \
                     source says where decoding stopped)",
                    self.channel()
                ),
                e,
            )
        })
    }
}

#[cfg(feature = "serde")]
/// Encodes `value` and checks the server's payload limit on the encoded bytes.
fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Result<String> {
    let payload = serde_json::to_string(value).map_err(|e| {
        Error::with_source(
            ErrorKind::InvalidPayload,
            "the value could not be encoded as JSON",
            e,
        )
    })?;
    if payload.len() >= MAX_PAYLOAD_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidPayload,
            format!(
                "the JSON payload is {} bytes once encoded; PostgreSQL accepts payloads shorter \
                 than {MAX_PAYLOAD_BYTES} bytes: send an id and look the data up instead",
                payload.len()
            ),
        ));
    }
    Ok(payload)
}

#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
impl Listener {
    /// Sends `value` encoded as JSON on `channel`, through the listener's connection.
    ///
    /// # Errors
    ///
    /// As [`Listener::notify`]; [`ErrorKind::InvalidPayload`] also when the encoded JSON
    /// is 8000 bytes or more.
    ///
    /// ```no_run
    /// # async fn run(listener: pglisten::Listener) -> pglisten::Result<()> {
    /// #[derive(serde::Serialize)]
    /// struct OrderChanged { id: i64 }
    ///
    /// listener.notify_json("orders", &OrderChanged { id: 42 }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn notify_json<T: serde::Serialize + ?Sized>(
        &self,
        channel: &str,
        value: &T,
    ) -> Result<()> {
        let payload = encode(value)?;
        self.notify(channel, &payload).await
    }
}

/// Sends `value` encoded as JSON on `channel` through your own client or transaction
/// (delivered at commit); see [`notify`](crate::notify).
///
/// # Errors
///
/// As [`notify`](crate::notify); [`ErrorKind::InvalidPayload`] also when the encoded JSON
/// is 8000 bytes or more.
///
/// ```no_run
/// # async fn run(client: &mut tokio_postgres::Client) -> pglisten::Result<()> {
/// let tx = client.transaction().await?;
/// pglisten::notify_json(&tx, "orders", &serde_json::json!({ "id": 42 })).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
pub async fn notify_json<C, T>(client: &C, channel: &str, value: &T) -> Result<()>
where
    C: tokio_postgres::GenericClient + Sync,
    T: serde::Serialize + ?Sized,
{
    let payload = encode(value)?;
    notify(client, channel, &payload).await
}

#[cfg(all(test, feature = "serde"))]
mod tests {
    use super::*;

    #[test]
    fn the_limit_applies_to_encoded_bytes() {
        // 4000 bytes of text, but escaping doubles it past the limit (8002 bytes).
        let text = "\"".repeat(4000);
        let Err(err) = encode(&text) else {
            panic!("4000 escaped quotes must exceed the limit once encoded")
        };
        assert_eq!(err.kind(), ErrorKind::InvalidPayload);
        assert!(err.to_string().contains("once encoded"), "{err}");
        assert!(encode(&"x".repeat(7997)).is_ok()); // 7999 bytes with its quotes
        assert!(encode(&"x".repeat(7998)).is_err());
    }

    #[test]
    fn decoding_errors_are_invalid_payload() {
        let n = Notification::for_tests("orders", "{\"id\": \"not a number\"}");
        let err = n
            .json::<std::collections::HashMap<String, i64>>()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidPayload);
        assert!(err.to_string().contains("orders"));
        let ok = Notification::for_tests("orders", "{\"id\": 7}");
        assert_eq!(
            ok.json::<std::collections::HashMap<String, i64>>().unwrap()["id"],
            7
        );
    }
}
