//! [`Subscription`]: the stream of events for a set of channels.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::stream::{FusedStream, Stream};
use tokio::sync::mpsc;

use crate::fanout::{Event, Mailbox, SubscriptionId};
use crate::stats::SubscriptionStats;
use crate::worker::Command;

/// The events of the channels given to [`Listener::subscribe`](crate::Listener::subscribe):
/// a [`Stream`] of [`Event`]s that ends only when the listener shuts down.
///
/// Each subscription has its own bounded queue, so a slow consumer never delays other
/// subscriptions or the connection; when its queue overflows it yields
/// [`Event::Lagged`] with the number dropped. Dropping the subscription unsubscribes
/// (and UNLISTENs channels nobody else wants); it needs no runtime to do so.
///
/// It can be polled anywhere: on the listener's runtime, on another executor, from a
/// `spawn_blocking` closure or from a plain thread (`futures::executor::block_on`).
/// Polling only takes from the subscription's queue: the background task reads the
/// connection, so a consumer that is slow, or that blocks its thread, never stops the
/// connection from being read, with one exception. When the task runs on the
/// consumer's runtime ([`TaskPlacement::CallerRuntime`](crate::TaskPlacement), the
/// default on a current-thread runtime), a consumer that blocks that runtime's only
/// thread stops everything, the task included: nothing is read, no heartbeat is
/// answered (a long block ends in a reconnect and a gap). Use
/// [`TaskPlacement::OwnThread`](crate::TaskPlacement::OwnThread) there, or move blocking
/// work to `spawn_blocking`.
///
/// Compose it with the usual stream combinators:
///
/// ```no_run
/// use futures::StreamExt;
///
/// # async fn run(listener: pglisten::Listener) -> pglisten::Result<()> {
/// let ids = listener
///     .subscribe(["orders"])
///     .await?
///     .filter_map(|event| async move { event.into_notification() })
///     .filter_map(|n| async move { n.payload().parse::<i64>().ok() });
/// futures::pin_mut!(ids);
/// while let Some(id) = ids.next().await {
///     println!("order {id} changed");
/// }
/// # Ok(()) }
/// ```
pub struct Subscription {
    id: SubscriptionId,
    channels: Vec<Arc<str>>,
    mailbox: Arc<Mailbox>,
    /// Events taken from the mailbox in one batch, not yet yielded.
    local: VecDeque<Event>,
    /// Notifications in `local`, published to the mailbox as they are read so that
    /// only unread ones count against the queue's capacity.
    unread: usize,
    /// Notifications yielded so far (counted here, by the consumer alone: no shared
    /// counter on the hot path).
    delivered: u64,
    commands: mpsc::UnboundedSender<Command>,
    terminated: bool,
}

impl Subscription {
    pub(crate) fn new(
        id: SubscriptionId,
        channels: Vec<Arc<str>>,
        mailbox: Arc<Mailbox>,
        commands: mpsc::UnboundedSender<Command>,
    ) -> Self {
        Subscription {
            id,
            channels,
            mailbox,
            local: VecDeque::new(),
            unread: 0,
            delivered: 0,
            commands,
            terminated: false,
        }
    }

    /// The channels this subscription listens to, in the order given (without
    /// duplicates).
    ///
    /// ```no_run
    /// # async fn run(listener: pglisten::Listener) -> pglisten::Result<()> {
    /// let events = listener.subscribe(["a", "b", "a"]).await?;
    /// assert_eq!(events.channels().collect::<Vec<_>>(), ["a", "b"]);
    /// # Ok(()) }
    /// ```
    pub fn channels(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.channels.iter().map(|c| &**c)
    }

    /// This subscription's queue and counters now: how many notifications wait to be
    /// read, the queue's capacity, how many were lost to lag in all, and how many were
    /// yielded. Cheap (it holds the queue's lock for a moment), so it can be sampled often.
    ///
    /// ```no_run
    /// # async fn run(listener: pglisten::Listener) -> pglisten::Result<()> {
    /// let events = listener.subscribe(["orders"]).await?;
    /// let stats = events.stats();
    /// assert_eq!((stats.queued, stats.lagged, stats.delivered), (0, 0, 0));
    /// assert_eq!(stats.capacity, pglisten::DEFAULT_QUEUE_CAPACITY);
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> SubscriptionStats {
        let figures = self.mailbox.figures();
        SubscriptionStats {
            queued: figures.queued,
            capacity: figures.capacity,
            lagged: figures.dropped_total,
            delivered: self.delivered,
        }
    }
}

impl Stream for Subscription {
    type Item = Event;

    #[inline]
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let this = self.get_mut();
        if this.local.is_empty() && !this.terminated {
            match this.mailbox.poll_take(cx, &mut this.local) {
                Poll::Ready(Some(taken)) => this.unread = taken,
                Poll::Ready(None) => this.terminated = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        let event = this.local.pop_front();
        if let Some(Event::Notification(_)) = &event {
            this.delivered += 1;
            this.unread -= 1;
            this.mailbox.set_unread(this.unread);
        }
        Poll::Ready(event)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.terminated {
            (self.local.len(), Some(self.local.len()))
        } else {
            (self.local.len(), None)
        }
    }
}

impl FusedStream for Subscription {
    fn is_terminated(&self) -> bool {
        self.terminated && self.local.is_empty()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // A synchronous send: works without a runtime, and a closed channel (the task
        // is gone) needs nothing more.
        let _ = self.commands.send(Command::Unsubscribe { id: self.id });
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("channels", &self.channels)
            .field("buffered", &self.local.len())
            .field("terminated", &self.terminated)
            .finish()
    }
}
