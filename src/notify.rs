//! Sending notifications through your own client or transaction ([`notify`]), and JSON
//! payloads with the `serde` feature ([`notify_json`], `Listener::notify_json`,
//! `Notification::json`).

#[cfg(feature = "serde")]
use crate::channel::MAX_PAYLOAD_BYTES;
use crate::connect::send_notification;
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
