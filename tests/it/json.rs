//! JSON payloads (the `serde` feature): encode, send, receive, decode.

use crate::support::*;
use pglisten::{ErrorKind, Listener};
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct OrderChanged {
    id: i64,
    status: String,
}

#[tokio::test]
async fn json_round_trip_through_listener_and_transaction() {
    let url = shared_url();
    let listener = Listener::connect(&url).await.unwrap();
    let channel = unique("json");
    let mut sub = listener.subscribe([&channel]).await.unwrap();

    let sent = OrderChanged {
        id: 42,
        status: "shipped".into(),
    };
    listener.notify_json(&channel, &sent).await.unwrap();
    let got: OrderChanged = next_notification(&mut sub).await.json().unwrap();
    assert_eq!(got, sent);

    let mut client = admin(&url).await;
    let tx = client.transaction().await.unwrap();
    pglisten::notify_json(
        &tx,
        &channel,
        &OrderChanged {
            id: 43,
            status: "paid".into(),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let got: OrderChanged = next_notification(&mut sub).await.json().unwrap();
    assert_eq!(got.id, 43);

    // Not the expected shape: a clear error, and the stream goes on.
    listener.notify(&channel, "{\"id\": \"x\"}").await.unwrap();
    let err = next_notification(&mut sub)
        .await
        .json::<OrderChanged>()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidPayload);

    // Too large once encoded: refused before the server, nothing sent.
    let huge = OrderChanged {
        id: 1,
        status: "\"".repeat(4000),
    };
    let err = listener.notify_json(&channel, &huge).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidPayload);
    listener.notify_json(&channel, &sent).await.unwrap();
    assert_eq!(
        next_notification(&mut sub)
            .await
            .json::<OrderChanged>()
            .unwrap(),
        sent
    );
}
