//! [`Reader`], the handle a listener keeps to its durable reader's task.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Notify, mpsc, oneshot};

use super::super::journal::Journal;
use super::super::stream::{DurableSubscription, Queue};
use super::Task;
use crate::config::ListenerConfig;
use crate::error::{Error, Result};
use crate::position::Cursor;
use crate::subscription::Subscription;

/// The handle a listener keeps to its durable reader (started by the first durable
/// subscription).
#[derive(Debug)]
pub(crate) struct Reader {
    commands: mpsc::UnboundedSender<Register>,
    unsubscribe: mpsc::UnboundedSender<u64>,
    room: Arc<Notify>,
    next_id: AtomicU64,
    capacity: usize,
}

/// A subscription to start.
pub(super) struct Register {
    pub(super) id: u64,
    pub(super) journal: Journal,
    pub(super) channel: Arc<str>,
    pub(super) from: Cursor,
    pub(super) wake: Subscription,
    pub(super) queue: Arc<Queue>,
    pub(super) ack: oneshot::Sender<Result<()>>,
}

impl Reader {
    /// The handle, and the reader's task for the caller to spawn (where the listener's
    /// task runs).
    pub(crate) fn new(
        config: Arc<ListenerConfig>,
    ) -> (Reader, impl Future<Output = ()> + Send + 'static) {
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (unsubscribe, unsubscribe_rx) = mpsc::unbounded_channel();
        let room = Arc::new(Notify::new());
        let task = Task::new(config.clone(), commands_rx, unsubscribe_rx, room.clone());
        let reader = Reader {
            commands,
            unsubscribe,
            room,
            next_id: AtomicU64::new(1),
            capacity: config.queue_capacity,
        };
        (reader, task.run())
    }

    /// Starts a durable subscription whose wake-ups come through `wake` (LISTEN is
    /// active on it already).
    pub(crate) async fn subscribe(
        &self,
        journal: &Journal,
        channel: &str,
        from: Cursor,
        wake: Subscription,
    ) -> Result<DurableSubscription> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let channel: Arc<str> = Arc::from(channel);
        let queue = Arc::new(Queue::new(self.capacity, self.room.clone()));
        let (ack, acked) = oneshot::channel();
        let register = Register {
            id,
            journal: journal.clone(),
            channel: channel.clone(),
            from,
            wake,
            queue: queue.clone(),
            ack,
        };
        self.commands.send(register).map_err(|_| Error::closed())?;
        // From here on, dropping the subscription (also by cancelling this) ends it.
        let subscription = DurableSubscription::new(id, channel, queue, self.unsubscribe.clone());
        match acked.await {
            Ok(Ok(())) => Ok(subscription),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(Error::closed()),
        }
    }
}
