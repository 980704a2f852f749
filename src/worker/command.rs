//! What the handles ask of the background task.
//!
//! [`Command`]s that change what the task does (subscribe, unsubscribe, reconnect,
//! shut down) are handled by the task itself, connected or not; a [`Request`] needs the
//! connection and is either run on it or refused through [`Request::refuse`], the one
//! refusal path.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio_postgres::Client;

use crate::connect::{listening_channels, not_connected, send_notification};
use crate::error::{Error, Result};
use crate::fanout::{Mailbox, SubscriptionId};

/// A message from a [`Listener`](crate::Listener) or [`Subscription`](crate::Subscription)
/// to the task.
pub(crate) enum Command {
    Subscribe {
        id: SubscriptionId,
        channels: Vec<Arc<str>>,
        mailbox: Arc<Mailbox>,
        ack: oneshot::Sender<Result<()>>,
    },
    Unsubscribe {
        id: SubscriptionId,
    },
    /// Drop the connection and connect again (or skip the current backoff delay).
    Reconnect {
        /// Answered once the old connection is closed and the loss announced.
        done: oneshot::Sender<()>,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
    Request(Request),
}

/// A request that runs on the connection and answers by itself.
pub(crate) enum Request {
    Notify {
        channel: String,
        payload: String,
        reply: oneshot::Sender<Result<()>>,
    },
    ListeningChannels {
        reply: oneshot::Sender<Result<Vec<String>>>,
    },
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Refusal {
    /// Between connections.
    Offline,
    /// The listener is closed.
    Closed,
}

/// A request running on the connection; it replies when done.
pub(crate) type Running = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Request {
    /// Runs the request on `client` (whose connection the task keeps polling).
    pub(crate) fn run(self, client: Arc<Client>) -> Running {
        match self {
            Request::Notify {
                channel,
                payload,
                reply,
            } => Box::pin(async move {
                let result = send_notification(&*client, &channel, &payload).await;
                let _ = reply.send(result);
            }),
            Request::ListeningChannels { reply } => Box::pin(async move {
                let _ = reply.send(listening_channels(&client).await);
            }),
        }
    }

    /// Answers the request with an error instead of running it.
    pub(crate) fn refuse(self, why: Refusal) {
        let error = |consequence: &str| match why {
            Refusal::Offline => not_connected(consequence),
            Refusal::Closed => Error::closed(),
        };
        match self {
            Request::Notify { reply, .. } => {
                let _ = reply.send(Err(error("the notification was not sent")));
            }
            Request::ListeningChannels { reply } => {
                let _ = reply.send(Err(error("the server listens to nothing for us")));
            }
        }
    }
}
