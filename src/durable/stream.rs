//! [`DurableSubscription`], the stream of a durable channel, and the bounded queue the
//! durable reader fills: the reader never drops an entry, it only takes as many as the
//! queue has room for and reads again from the last one once the consumer frees room.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::SystemTime;

use futures::stream::{FusedStream, Stream};
use tokio::sync::{Notify, mpsc};

use crate::error::Error;
use crate::fanout::{Event, Notification};
use crate::position::Position;

/// Numbers of one durable subscription ([`DurableSubscription::stats`]).
///
/// ```
/// # fn f(events: &pglisten::durable::DurableSubscription) {
/// let stats = events.stats();
/// if stats.held_back > 0 {
///     println!(
///         "{} entries held back since {:?} by transaction {:?}",
///         stats.held_back, stats.held_back_since, stats.holding_transaction
///     );
/// }
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DurableStats {
    /// The position of the last entry queued for the consumer (`None` before the first).
    pub last_position: Option<Position>,
    /// Entries committed after the last position but not deliverable yet, because an
    /// older transaction (this one's id or lower) is still running: as of the last read.
    pub held_back: u64,
    /// Since when entries have been held back (`None` when none are).
    pub held_back_since: Option<SystemTime>,
    /// The watermark while entries are held back: the oldest transaction id still
    /// running in the cluster (find it in `pg_stat_activity.backend_xid`,
    /// `pg_prepared_xacts`), which has to end before they are delivered.
    pub holding_transaction: Option<u64>,
    /// Reads of the journal this subscription took part in.
    pub reads: u64,
    /// Of those, the reads shared with other subscriptions of the same channel at the
    /// same position (one query for all of them).
    pub shared_reads: u64,
}

/// The queue between the durable reader and one [`DurableSubscription`].
#[derive(Debug)]
pub(crate) struct Queue {
    state: Mutex<State>,
    capacity: usize,
    /// Tells the reader that a consumer freed room it was waiting for.
    room: Arc<Notify>,
}

#[derive(Debug)]
struct State {
    events: VecDeque<Event>,
    /// Notifications in `events`.
    notifications: usize,
    waker: Option<Waker>,
    closed: bool,
    /// The reader stopped because this queue was full.
    wants_room: bool,
    stats: DurableStats,
}

impl Queue {
    pub(crate) fn new(capacity: usize, room: Arc<Notify>) -> Self {
        Queue {
            state: Mutex::new(State {
                events: VecDeque::new(),
                notifications: 0,
                waker: None,
                closed: false,
                wants_room: false,
                stats: DurableStats::default(),
            }),
            capacity,
            room,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How many more notifications fit; when none do, the reader is told once room is
    /// freed (half the queue).
    pub(crate) fn room(&self) -> usize {
        let mut state = self.lock();
        let room = self.capacity.saturating_sub(state.notifications);
        if room == 0 {
            state.wants_room = true;
        }
        room
    }

    /// Appends notifications (never more than [`Queue::room`] said) and wakes the
    /// consumer.
    pub(crate) fn push(&self, batch: impl ExactSizeIterator<Item = Notification>, last: Position) {
        self.change_and_wake(|state| {
            state.notifications += batch.len();
            state.events.extend(batch.map(Event::Notification));
            state.stats.last_position = Some(last);
        });
    }

    /// Appends an error; an unread error just before it is replaced, so a consumer that
    /// does not read keeps a bounded queue through a long outage.
    pub(crate) fn push_error(&self, error: Error) {
        self.change_and_wake(|state| {
            if let Some(Event::Error(_)) = state.events.back() {
                state.events.pop_back();
            }
            state.events.push_back(Event::Error(error));
        });
    }

    /// Ends the stream once the consumer has read what is queued.
    pub(crate) fn close(&self) {
        // Closed already: nothing to change, and no waker (none is registered once the
        // queue is closed).
        self.change_and_wake(|state| state.closed = true);
    }

    /// Changes an open queue under the lock, then wakes the consumer outside it. A
    /// closed queue is left as it is.
    fn change_and_wake(&self, change: impl FnOnce(&mut State)) {
        let waker = {
            let mut state = self.lock();
            if state.closed {
                return;
            }
            change(&mut state);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Updates the numbers after a read.
    pub(crate) fn record_read(&self, held_back: u64, watermark: u64, shared: bool) {
        let mut state = self.lock();
        let stats = &mut state.stats;
        stats.reads += 1;
        stats.shared_reads += u64::from(shared);
        stats.held_back = held_back;
        if held_back == 0 {
            stats.held_back_since = None;
            stats.holding_transaction = None;
        } else {
            stats.held_back_since.get_or_insert_with(SystemTime::now);
            stats.holding_transaction = Some(watermark);
        }
    }

    fn stats(&self) -> DurableStats {
        self.lock().stats.clone()
    }

    fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let mut state = self.lock();
        if let Some(event) = state.events.pop_front() {
            if let Event::Notification(_) = event {
                state.notifications -= 1;
                if state.wants_room && 2 * state.notifications <= self.capacity {
                    state.wants_room = false;
                    self.room.notify_one();
                }
            }
            return Poll::Ready(Some(event));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        match &mut state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// What a [`DurableSubscription`] tells the reader when it is dropped.
pub(crate) type Unsubscribe = mpsc::UnboundedSender<u64>;

/// The entries of one durable channel
/// ([`Listener::subscribe_durable`](crate::Listener::subscribe_durable)): a [`Stream`]
/// of [`Event`]s.
///
/// It yields [`Event::Notification`]s whose
/// [`position`](crate::Notification::position) is `Some` and whose
/// [`process_id`](crate::Notification::process_id) is the publisher's, in delivery
/// order, each entry once; and [`Event::Error`] for trouble (the lost connection, a
/// failed read), after which it goes on and catches up by itself. It never yields
/// [`Event::Lagged`] or [`Event::Reconnected`]: after an outage, or while its consumer
/// is slow, it reads the journal again from its last position. It ends after
/// [`ErrorKind::Pruned`](crate::ErrorKind::Pruned), or when the listener shuts down.
///
/// Dropping it unsubscribes (no runtime needed).
///
/// ```no_run
/// use futures::StreamExt;
/// use pglisten::Event;
/// use pglisten::durable::Cursor;
///
/// # async fn run(listener: pglisten::Listener) -> pglisten::Result<()> {
/// let mut events = listener.subscribe_durable("orders", Cursor::Beginning).await?;
/// while let Some(event) = events.next().await {
///     match event {
///         Event::Notification(n) => println!("{:?}: {}", n.position(), n.payload()),
///         Event::Error(e) => eprintln!("durable trouble (it goes on): {e}"),
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
pub struct DurableSubscription {
    id: u64,
    channel: Arc<str>,
    queue: Arc<Queue>,
    unsubscribe: Unsubscribe,
    terminated: bool,
}

impl DurableSubscription {
    pub(crate) fn new(
        id: u64,
        channel: Arc<str>,
        queue: Arc<Queue>,
        unsubscribe: Unsubscribe,
    ) -> Self {
        DurableSubscription {
            id,
            channel,
            queue,
            unsubscribe,
            terminated: false,
        }
    }

    /// The durable channel.
    ///
    /// ```no_run
    /// # async fn run(listener: pglisten::Listener) -> pglisten::Result<()> {
    /// let events = listener.subscribe_durable("orders", pglisten::durable::Cursor::Now).await?;
    /// assert_eq!(events.channel(), "orders");
    /// # Ok(()) }
    /// ```
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Its numbers: the last position queued, and whether entries are held back (how
    /// many, since when, by which transaction).
    ///
    /// ```no_run
    /// # async fn run(listener: pglisten::Listener) -> pglisten::Result<()> {
    /// let events = listener.subscribe_durable("orders", pglisten::durable::Cursor::Now).await?;
    /// println!("{:?}", events.stats().last_position);
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> DurableStats {
        self.queue.stats()
    }
}

impl Stream for DurableSubscription {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let this = self.get_mut();
        if this.terminated {
            return Poll::Ready(None);
        }
        let polled = this.queue.poll_next(cx);
        if let Poll::Ready(None) = polled {
            this.terminated = true;
        }
        polled
    }
}

impl FusedStream for DurableSubscription {
    fn is_terminated(&self) -> bool {
        self.terminated
    }
}

impl Drop for DurableSubscription {
    fn drop(&mut self) {
        // A synchronous send: no runtime needed; a closed channel means the reader is
        // gone already.
        let _ = self.unsubscribe.send(self.id);
    }
}

impl fmt::Debug for DurableSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableSubscription")
            .field("id", &self.id)
            .field("channel", &self.channel)
            .field("stats", &self.stats())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use futures::FutureExt;
    use futures::StreamExt;

    fn note(p: u64) -> Notification {
        Notification::durable_for_tests("ch", &p.to_string(), Position::new(p, p))
    }

    #[test]
    fn room_is_bounded_and_freed_room_wakes_the_reader() {
        let room = Arc::new(Notify::new());
        let queue = Arc::new(Queue::new(4, room.clone()));
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut sub = DurableSubscription::new(1, Arc::from("ch"), queue.clone(), tx);
        assert_eq!(queue.room(), 4);
        queue.push((1..5u32).map(|p| note(p.into())), Position::new(4, 4));
        assert_eq!(queue.room(), 0);
        // Nothing is told before the consumer frees half the queue.
        assert!(room.notified().now_or_never().is_none());
        let first = sub
            .next()
            .now_or_never()
            .flatten()
            .and_then(|e| e.into_notification());
        assert_eq!(first.unwrap().position(), Some(Position::new(1, 1)));
        assert!(room.notified().now_or_never().is_none());
        let _ = sub.next().now_or_never();
        assert!(room.notified().now_or_never().is_some());
        assert_eq!(queue.room(), 2);
        assert_eq!(sub.stats().last_position, Some(Position::new(4, 4)));
    }

    #[test]
    fn errors_coalesce_and_close_ends_after_the_queue() {
        let queue = Arc::new(Queue::new(4, Arc::new(Notify::new())));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut sub = DurableSubscription::new(7, Arc::from("ch"), queue.clone(), tx);
        queue.push_error(Error::new(ErrorKind::ConnectionLost, "one"));
        queue.push_error(Error::new(ErrorKind::ConnectionLost, "two"));
        queue.push([note(1)].into_iter(), Position::new(1, 1));
        queue.close();
        queue.push([note(2)].into_iter(), Position::new(2, 2));
        let events: Vec<Event> = futures::executor::block_on(sub.by_ref().collect());
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(matches!(&events[0], Event::Error(e) if e.to_string().contains("two")));
        assert!(sub.is_terminated());
        drop(sub);
        assert_eq!(rx.try_recv().unwrap(), 7);
    }

    #[test]
    fn held_back_numbers() {
        let queue = Queue::new(4, Arc::new(Notify::new()));
        queue.record_read(3, 99, false);
        let stats = queue.stats();
        assert_eq!((stats.held_back, stats.holding_transaction), (3, Some(99)));
        let since = stats.held_back_since.unwrap();
        queue.record_read(2, 99, true);
        assert_eq!(queue.stats().held_back_since, Some(since));
        queue.record_read(0, 100, false);
        assert_eq!(
            queue.stats(),
            DurableStats {
                reads: 3,
                shared_reads: 1,
                ..DurableStats::default()
            }
        );
    }
}
