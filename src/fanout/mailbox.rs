//! The bounded queue between the background task and one [`Subscription`].
//!
//! The task never waits here: [`Mailbox::deliver`] appends what fits and counts what does
//! not. Rules kept by this module (and unit-tested below):
//!
//! - At most `capacity` notifications are buffered for a subscription, counting those the
//!   consumer has taken into its local buffer but not yet read (it publishes that number
//!   as it reads). Past that, notifications are dropped and counted.
//! - Drops are announced by an [`Event::Lagged`] with the exact count, placed before
//!   anything queued after the drop (or yielded when the consumer reaches the end of the
//!   queue, if nothing was queued since).
//! - Control events ([`Event::Error`], [`Event::Reconnected`], `Lagged`) never count
//!   against the capacity and are never lost. So that a forgotten subscription cannot
//!   grow without bound through a long series of reconnects, unread control events are
//!   coalesced: of the errors since the last notification only the first (the cause) and
//!   the latest are kept, and a `Reconnected` with no notification after it is merged into
//!   the next one.
//! - One lock per batch on both sides, and a wake-up only when the consumer is parked.
//!
//! [`Subscription`]: crate::Subscription

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use super::event::{Event, Notification};
use crate::telemetry::QueueMetrics;

/// What one call to [`Mailbox::deliver`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delivery {
    pub(crate) queued: u64,
    pub(crate) dropped: u64,
    /// This delivery dropped the first notification since the consumer last caught up.
    pub(crate) lag_started: bool,
    /// This delivery queued a notification again after an episode of drops: the
    /// number dropped in the whole episode.
    pub(crate) lag_ended: Option<u64>,
    /// The consumer is parked and was not woken ([`Wake::Later`]): call
    /// [`Mailbox::wake`] once the read stops.
    pub(crate) wake_owed: bool,
}

/// When [`Mailbox::deliver_with`] wakes a parked consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// At once.
    Now,
    /// Once the queue is half full; otherwise the caller owes a [`Mailbox::wake`] when
    /// it stops reading. A consumer on another thread is then woken once per read
    /// instead of once per batch: each cross-thread wake-up costs more than a batch.
    Later,
}

/// A mailbox's figures at one moment ([`Mailbox::figures`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueFigures {
    pub(crate) queued: usize,
    pub(crate) capacity: usize,
    pub(crate) dropped_total: u64,
}

#[derive(Debug)]
pub(crate) struct Mailbox {
    state: Mutex<State>,
    /// Notifications the consumer has taken but not read yet; written by the consumer
    /// alone, without the lock, as it reads.
    unread: AtomicUsize,
    /// The queue's figures as `metrics` (with that feature): published when
    /// notifications are dropped and at [`Mailbox::publish`], never per notification.
    metrics: QueueMetrics,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<Event>,
    /// Notifications in `queue`.
    queued: usize,
    capacity: usize,
    /// Dropped since the last `Lagged` was queued or taken.
    dropped: u64,
    /// Dropped since the current lag episode began (0: not lagging).
    episode: u64,
    /// Dropped since the mailbox was made.
    dropped_total: u64,
    waker: Option<Waker>,
    closed: bool,
}

impl Mailbox {
    #[cfg(test)]
    pub(crate) fn new(capacity: usize) -> Self {
        Mailbox::with_metrics(capacity, QueueMetrics::default())
    }

    /// A mailbox whose figures are also published through `metrics`.
    pub(crate) fn with_metrics(capacity: usize, metrics: QueueMetrics) -> Self {
        Mailbox {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                queued: 0,
                capacity,
                dropped: 0,
                episode: 0,
                dropped_total: 0,
                waker: None,
                closed: false,
            }),
            unread: AtomicUsize::new(0),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state inconsistent in a way
        // that matters more than losing the stream, so poisoning is ignored.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends a batch of notifications, dropping what does not fit, and wakes a
    /// parked consumer.
    pub(crate) fn deliver(&self, batch: impl ExactSizeIterator<Item = Notification>) -> Delivery {
        self.deliver_with(batch, Wake::Now)
    }

    /// Appends a batch of notifications, dropping what does not fit; wakes a parked
    /// consumer as `wake` says.
    pub(crate) fn deliver_with(
        &self,
        mut batch: impl ExactSizeIterator<Item = Notification>,
        wake: Wake,
    ) -> Delivery {
        let mut delivery = Delivery::default();
        let queued_after;
        let waker = {
            let mut state = self.lock();
            if state.closed {
                return delivery;
            }
            let unread = self.unread.load(Ordering::Relaxed);
            let room = state.capacity.saturating_sub(state.queued + unread);
            if state.dropped == 0 && batch.len() <= room {
                // The common case: everything fits, nothing to announce first.
                let count = batch.len();
                state.queue.extend(batch.by_ref().map(Event::Notification));
                state.queued += count;
                delivery.queued = count as u64;
                if state.episode > 0 && count > 0 {
                    delivery.lag_ended = Some(std::mem::take(&mut state.episode));
                }
            }
            for notification in batch {
                if state.queued + unread >= state.capacity {
                    if state.episode == 0 {
                        delivery.lag_started = true;
                    }
                    state.dropped += 1;
                    state.episode += 1;
                    state.dropped_total += 1;
                    delivery.dropped += 1;
                } else {
                    if state.episode > 0 {
                        delivery.lag_ended = Some(std::mem::take(&mut state.episode));
                    }
                    state.flush_lag();
                    state.queue.push_back(Event::Notification(notification));
                    state.queued += 1;
                    delivery.queued += 1;
                }
            }
            queued_after = state.queued + unread;
            if delivery.queued == 0 || state.waker.is_none() {
                None
            } else if wake == Wake::Now || 2 * (state.queued + unread) >= state.capacity {
                state.waker.take()
            } else {
                delivery.wake_owed = true;
                None
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        if delivery.dropped > 0 {
            // Lagging: rare, and worth showing at once.
            self.metrics.lagged(delivery.dropped);
            self.metrics.queued(queued_after);
        }
        delivery
    }

    /// Publishes the queue's length as a metric (with the `metrics` feature).
    pub(crate) fn publish(&self) {
        if self.metrics.enabled() {
            let queued = self.figures().queued;
            self.metrics.queued(queued);
        }
    }

    /// The queue's figures now: notifications waiting (queued, or taken by the
    /// consumer and not read yet), its capacity, and every notification dropped so far.
    pub(crate) fn figures(&self) -> QueueFigures {
        let state = self.lock();
        QueueFigures {
            queued: state.queued + self.unread.load(Ordering::Relaxed),
            capacity: state.capacity,
            dropped_total: state.dropped_total,
        }
    }

    /// Wakes the consumer if it is parked (see [`Wake::Later`]).
    pub(crate) fn wake(&self) {
        let waker = self.lock().waker.take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Appends an `Error` or `Reconnected` event, coalescing unread ones (see module docs).
    pub(crate) fn push_control(&self, event: Event) {
        let waker = {
            let mut state = self.lock();
            if state.closed {
                return;
            }
            state.flush_lag();
            match event {
                Event::Reconnected(mut report) => {
                    // An unread Reconnected with no notification after it announces a gap
                    // the new one covers as well: merge it into the new one.
                    if let Some(Event::Reconnected(earlier)) = state.take_from_tail(is_reconnected)
                    {
                        let mut merged = earlier;
                        merged.merge(&report);
                        report = merged;
                    }
                    state.queue.push_back(Event::Reconnected(report));
                }
                other => {
                    // Of the unread errors since the last notification, keep the first
                    // (usually the cause, such as the lost connection) and the latest.
                    if state.tail_count(is_error) >= 2 {
                        state.take_last_from_tail(is_error);
                    }
                    state.queue.push_back(other);
                }
            }
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Consumer side: `unread` notifications taken are still to be read.
    #[inline]
    pub(crate) fn set_unread(&self, unread: usize) {
        self.unread.store(unread, Ordering::Relaxed);
    }

    /// Ends the stream once the consumer has read what is buffered.
    pub(crate) fn close(&self) {
        let waker = {
            let mut state = self.lock();
            state.closed = true;
            state.waker.take()
        };
        self.metrics.queued(0);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Consumer side: moves everything queued into `local`, which must be empty. The
    /// number of notifications taken is published as unread; the consumer lowers it with
    /// [`Mailbox::set_unread`] as it reads them.
    ///
    /// `Ready(Some(n))`: `local` has at least one event, `n` of them notifications.
    /// `Ready(None)`: the stream ended. `Pending`: nothing yet; the consumer's waker is
    /// registered.
    pub(crate) fn poll_take(
        &self,
        cx: &mut Context<'_>,
        local: &mut VecDeque<Event>,
    ) -> Poll<Option<usize>> {
        debug_assert!(local.is_empty());
        let mut state = self.lock();
        if !state.queue.is_empty() {
            std::mem::swap(&mut state.queue, local);
            let taken = std::mem::take(&mut state.queued);
            self.unread.store(taken, Ordering::Relaxed);
            return Poll::Ready(Some(taken));
        }
        if state.dropped > 0 {
            local.push_back(Event::Lagged(std::mem::take(&mut state.dropped)));
            return Poll::Ready(Some(0));
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

fn is_reconnected(event: &Event) -> bool {
    matches!(event, Event::Reconnected(_))
}

fn is_error(event: &Event) -> bool {
    matches!(event, Event::Error(_))
}

impl State {
    /// Where the control tail starts: the entries after the last queued notification.
    /// It holds at most one event of each control kind.
    fn tail_start(&self) -> usize {
        self.queue
            .iter()
            .rposition(|e| matches!(e, Event::Notification(_)))
            .map_or(0, |i| i + 1)
    }

    /// Removes and returns the control-tail event matching `pred`, if any.
    fn take_from_tail(&mut self, pred: fn(&Event) -> bool) -> Option<Event> {
        let start = self.tail_start();
        let offset = self.queue.range(start..).position(pred)?;
        self.queue.remove(start + offset)
    }

    fn tail_count(&self, pred: fn(&Event) -> bool) -> usize {
        self.queue
            .range(self.tail_start()..)
            .filter(|e| pred(e))
            .count()
    }

    /// Removes the last control-tail event matching `pred`, if any.
    fn take_last_from_tail(&mut self, pred: fn(&Event) -> bool) -> Option<Event> {
        let start = self.tail_start();
        let offset = self.queue.range(start..).rposition(pred)?;
        self.queue.remove(start + offset)
    }

    /// Before anything is queued after a drop, announce the drop (adding to an unread
    /// announcement in the control tail, if there is one).
    fn flush_lag(&mut self) {
        if self.dropped == 0 {
            return;
        }
        let dropped = std::mem::take(&mut self.dropped);
        let start = self.tail_start();
        for event in self.queue.range_mut(start..) {
            if let Event::Lagged(n) = event {
                *n += dropped;
                return;
            }
        }
        self.queue.push_back(Event::Lagged(dropped));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Error, ErrorKind};
    use crate::fanout::ReconnectReport;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;
    use std::time::Duration;

    fn note(payload: &str) -> Notification {
        Notification::for_tests("ch", payload)
    }

    fn batch(payloads: &[&str]) -> std::vec::IntoIter<Notification> {
        payloads
            .iter()
            .map(|p| note(p))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);
    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Drains everything the mailbox holds right now, as the consumer would.
    fn drain(mailbox: &Mailbox) -> (Vec<String>, bool) {
        let waker = Waker::from(Arc::new(CountingWaker::default()));
        let mut cx = Context::from_waker(&waker);
        let mut local = VecDeque::new();
        let mut out = Vec::new();
        loop {
            match mailbox.poll_take(&mut cx, &mut local) {
                Poll::Ready(Some(_)) => {
                    out.extend(local.drain(..).map(|e| describe(&e)));
                    mailbox.set_unread(0);
                }
                Poll::Ready(None) => return (out, true),
                Poll::Pending => return (out, false),
            }
        }
    }

    fn describe(event: &Event) -> String {
        match event {
            Event::Notification(n) => n.payload().to_owned(),
            Event::Lagged(n) => format!("lagged {n}"),
            Event::Reconnected(r) => format!("reconnected {}", r.attempts()),
            Event::Error(e) => format!("error {}", e),
        }
    }

    fn reconnected(attempts: u32) -> Event {
        Event::Reconnected(ReconnectReport::new(Duration::from_millis(5), attempts))
    }

    fn error(msg: &str) -> Event {
        Event::Error(Error::new(ErrorKind::ConnectionLost, msg))
    }

    #[test]
    fn delivers_in_order_within_capacity() {
        let m = Mailbox::new(4);
        let d = m.deliver(batch(&["a", "b", "c"]));
        assert_eq!((d.queued, d.dropped), (3, 0));
        assert_eq!(drain(&m).0, ["a", "b", "c"]);
    }

    #[test]
    fn overflow_is_counted_exactly_and_announced_before_later_items() {
        let m = Mailbox::new(2);
        let d = m.deliver(batch(&["a", "b", "c", "d", "e"]));
        assert_eq!((d.queued, d.dropped, d.lag_started), (2, 3, true));
        let (events, _) = drain(&m);
        assert_eq!(events, ["a", "b", "lagged 3"]);
        // After catching up, new items flow, no stale lag remains, and the episode
        // is reported as over, once.
        let d = m.deliver(batch(&["f"]));
        assert_eq!((d.lag_started, d.lag_ended), (false, Some(3)));
        assert_eq!(drain(&m).0, ["f"]);
        assert_eq!(m.deliver(batch(&["g"])).lag_ended, None);
    }

    #[test]
    fn lag_marker_precedes_items_queued_after_the_drop() {
        let m = Mailbox::new(2);
        let waker = Waker::from(Arc::new(CountingWaker::default()));
        let mut cx = Context::from_waker(&waker);
        let mut local = VecDeque::new();
        m.deliver(batch(&["a", "b", "x"])); // x dropped
        assert!(m.poll_take(&mut cx, &mut local).is_ready()); // consumer holds a, b
        let d = m.deliver(batch(&["w"])); // both unread: w dropped too
        assert_eq!(d.dropped, 1);
        local.clear(); // ...now it reads them
        m.set_unread(0);
        m.deliver(batch(&["y"])); // room again: the drops are announced before y
        assert!(m.poll_take(&mut cx, &mut local).is_ready());
        let got: Vec<_> = local.drain(..).map(|e| describe(&e)).collect();
        assert_eq!(got, ["lagged 2", "y"]);
        m.set_unread(0);
        m.deliver(batch(&["z"]));
        assert_eq!(drain(&m).0, ["z"]);
    }

    #[test]
    fn items_taken_but_unread_count_against_capacity() {
        let m = Mailbox::new(3);
        let waker = Waker::from(Arc::new(CountingWaker::default()));
        let mut cx = Context::from_waker(&waker);
        let mut local = VecDeque::new();
        m.deliver(batch(&["a", "b"]));
        assert!(m.poll_take(&mut cx, &mut local).is_ready());
        // The consumer holds two unread; only one more fits.
        let d = m.deliver(batch(&["c", "d"]));
        assert_eq!((d.queued, d.dropped), (1, 1));
    }

    #[test]
    fn figures_count_what_waits_and_every_drop_ever() {
        let m = Mailbox::new(3);
        let figures = |m: &Mailbox| {
            let f = m.figures();
            (f.queued, f.capacity, f.dropped_total)
        };
        assert_eq!(figures(&m), (0, 3, 0));
        let waker = Waker::from(Arc::new(CountingWaker::default()));
        let mut cx = Context::from_waker(&waker);
        let mut local = VecDeque::new();
        m.deliver(batch(&["a", "b", "c", "d"]));
        assert_eq!(figures(&m), (3, 3, 1));
        assert!(m.poll_take(&mut cx, &mut local).is_ready());
        assert_eq!(figures(&m), (3, 3, 1), "taken but unread still waits");
        m.set_unread(1);
        assert_eq!(figures(&m), (1, 3, 1));
        m.deliver(batch(&["e", "f", "g"]));
        // The Lagged announcement resets the episode's count, not the total.
        assert_eq!(figures(&m), (3, 3, 2));
    }

    #[test]
    fn items_already_read_do_not_count_against_capacity() {
        // The consumer read everything it took, then a notification arrives: no Lagged.
        let m = Mailbox::new(4);
        let mut cx = Context::from_waker(Waker::noop());
        let mut local = VecDeque::new();
        m.deliver(batch(&["a", "b", "c", "d"]));
        assert_eq!(m.poll_take(&mut cx, &mut local), Poll::Ready(Some(4)));
        for unread in (0..4).rev() {
            local.pop_front();
            m.set_unread(unread);
        }
        let d = m.deliver(batch(&["e"]));
        assert_eq!((d.queued, d.dropped), (1, 0));
        assert_eq!(drain(&m).0, ["e"]);
    }

    #[test]
    fn delivered_plus_lagged_equals_sent_under_random_interleaving() {
        let m = Mailbox::new(7);
        let waker = Waker::from(Arc::new(CountingWaker::default()));
        let mut cx = Context::from_waker(&waker);
        let mut local = VecDeque::new();
        let (mut sent, mut delivered, mut lagged) = (0u64, 0u64, 0u64);
        let mut unread = 0usize;
        let mut seed = 12345u64;
        for round in 0..2000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let n = (seed >> 33) % 5;
            let b: Vec<_> = (0..n).map(|i| note(&format!("{round}-{i}"))).collect();
            sent += n;
            m.deliver(b.into_iter());
            // The consumer reads a few events now and then.
            if (seed >> 20).is_multiple_of(3) {
                for _ in 0..((seed >> 40) % 6) {
                    if local.is_empty() {
                        match m.poll_take(&mut cx, &mut local) {
                            Poll::Ready(Some(n)) => unread = n,
                            _ => break,
                        }
                    }
                    match local.pop_front() {
                        Some(Event::Notification(_)) => {
                            delivered += 1;
                            unread -= 1;
                            m.set_unread(unread);
                        }
                        Some(Event::Lagged(k)) => lagged += k,
                        _ => {}
                    }
                }
            }
        }
        loop {
            while let Some(e) = local.pop_front() {
                match e {
                    Event::Notification(_) => delivered += 1,
                    Event::Lagged(k) => lagged += k,
                    _ => {}
                }
            }
            if m.poll_take(&mut cx, &mut local).is_pending() {
                break;
            }
        }
        assert!(lagged > 0, "the test should overflow the queue");
        assert_eq!(delivered + lagged, sent);
    }

    #[test]
    fn control_events_bypass_capacity() {
        let m = Mailbox::new(1);
        m.deliver(batch(&["a", "b"]));
        m.push_control(error("lost"));
        m.push_control(reconnected(1));
        assert_eq!(
            drain(&m).0,
            ["a", "lagged 1", "error lost", "reconnected 1"]
        );
    }

    #[test]
    fn unread_errors_keep_the_first_and_the_latest() {
        let m = Mailbox::new(4);
        m.push_control(error("lost"));
        m.push_control(error("attempt 1 failed"));
        m.push_control(error("attempt 2 failed"));
        m.push_control(error("attempt 3 failed"));
        m.push_control(reconnected(3));
        assert_eq!(
            drain(&m).0,
            ["error lost", "error attempt 3 failed", "reconnected 3"]
        );
    }

    #[test]
    fn unread_reconnects_without_notifications_between_merge() {
        let m = Mailbox::new(4);
        m.deliver(batch(&["a"]));
        for _ in 0..50 {
            m.push_control(error("lost"));
            m.push_control(reconnected(2));
        }
        let (events, _) = drain(&m);
        assert_eq!(events, ["a", "error lost", "error lost", "reconnected 100"]);
    }

    #[test]
    fn reconnects_separated_by_notifications_stay_apart() {
        let m = Mailbox::new(4);
        m.push_control(reconnected(1));
        m.deliver(batch(&["a"]));
        m.push_control(reconnected(1));
        assert_eq!(drain(&m).0, ["reconnected 1", "a", "reconnected 1"]);
    }

    #[test]
    fn forgotten_subscription_stays_bounded_through_many_gaps() {
        let m = Mailbox::new(3);
        for i in 0..1000 {
            m.deliver(batch(&["x"]));
            m.push_control(error(&format!("lost {i}")));
            m.push_control(reconnected(1));
        }
        let (events, _) = drain(&m);
        assert!(events.len() <= 12, "{} events: {events:?}", events.len());
        assert_eq!(events.last().map(String::as_str), Some("reconnected 998"));
    }

    #[test]
    fn wakes_only_a_parked_consumer_once_per_batch() {
        let m = Mailbox::new(100);
        let counter = Arc::new(CountingWaker::default());
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut local = VecDeque::new();
        assert!(m.poll_take(&mut cx, &mut local).is_pending());
        m.deliver(batch(&["a", "b", "c"]));
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        // The consumer has not polled again: it is awake, so no further wake-ups.
        m.deliver(batch(&["d"]));
        m.deliver(batch(&["e"]));
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_full_queue_does_not_wake_for_drops() {
        let m = Mailbox::new(1);
        m.deliver(batch(&["a"]));
        let counter = Arc::new(CountingWaker::default());
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut local = VecDeque::new();
        assert!(m.poll_take(&mut cx, &mut local).is_ready());
        m.deliver(batch(&["b"])); // "a" still unread: dropped
        local.clear();
        m.set_unread(0);
        assert!(m.poll_take(&mut cx, &mut local).is_ready()); // lagged 1
        local.clear();
        assert!(m.poll_take(&mut cx, &mut local).is_pending());
        m.deliver(batch(&["c"]));
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn close_ends_the_stream_after_buffered_items_and_pending_lag() {
        let m = Mailbox::new(1);
        m.deliver(batch(&["a", "b"]));
        m.close();
        m.deliver(batch(&["late"]));
        m.push_control(error("late"));
        let (events, ended) = drain(&m);
        assert_eq!(events, ["a", "lagged 1"]);
        assert!(ended);
    }
}
