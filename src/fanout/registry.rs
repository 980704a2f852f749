//! Who wants which channel, what the server listens to, and fan-out. Pure: no I/O.
//!
//! The registry reconciles instead of patching: it knows the channels the subscriptions
//! want and the channels the server has confirmed, and [`Registry::plan`] returns one
//! batch of LISTEN/UNLISTEN for the difference. After a reconnect the confirmed set is
//! empty, so the same call re-LISTENs everything.
//!
//! Routing is batched: [`Registry::route`] stages each notification for its subscribers
//! with one map lookup, and [`Registry::flush`] hands every touched mailbox its batch
//! under one lock.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::Instant;

use super::block::{self, BlockBuilder, Locator};
use super::event::{Event, Notification};
use super::mailbox::{Delivery, Mailbox, Wake};

/// Identifies a subscription for the lifetime of its listener.
pub(crate) type SubscriptionId = u64;

/// A fast hasher for channel names. Names come from the application and from the
/// server's echo of channels we LISTEN to, never from an adversary, so hash-flooding
/// resistance buys nothing on the hot path.
#[derive(Default)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
            self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
        }
        for &byte in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(byte)).wrapping_mul(K);
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.write(&[byte]);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// One batch of statements that brings the server to the wanted set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct SyncPlan {
    pub(crate) listen: Vec<Arc<str>>,
    pub(crate) unlisten: Vec<Arc<str>>,
}

impl SyncPlan {
    pub(crate) fn sql(&self) -> String {
        crate::channel::listen_batch(
            self.listen.iter().map(|c| &**c),
            self.unlisten.iter().map(|c| &**c),
        )
    }
}

/// A subscription's lag episode began (its queue overflowed) or ended (it accepted a
/// notification again, after dropping this many).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LagChange {
    Started,
    Ended(u64),
}

/// What a flush delivered, summed over the touched subscriptions.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlushTotals {
    pub(crate) queued: u64,
    pub(crate) dropped: u64,
}

impl FlushTotals {
    fn add(
        &mut self,
        id: SubscriptionId,
        delivery: Delivery,
        on_lag: &mut impl FnMut(SubscriptionId, LagChange),
    ) {
        self.queued += delivery.queued;
        self.dropped += delivery.dropped;
        if delivery.lag_started {
            on_lag(id, LagChange::Started);
        }
        if let Some(dropped) = delivery.lag_ended {
            on_lag(id, LagChange::Ended(dropped));
        }
    }
}

#[derive(Debug)]
struct Entry {
    id: SubscriptionId,
    channels: Vec<Arc<str>>,
    mailbox: Arc<Mailbox>,
    /// Notifications routed to this subscription in the current batch: their indexes
    /// in the block being filled.
    staged: Vec<Locator>,
    /// Set while this subscription is owed an `Event::Reconnected`: since when LISTEN
    /// has not been active for it.
    gap_since: Option<Instant>,
    /// Notifications that arrived while `gap_since` was set: released right after the
    /// `Reconnected`, which must come first.
    held: Vec<Notification>,
    /// In `Registry::wake_pending`.
    wake_pending: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Registry {
    /// Slab of subscriptions; channel entries refer to slots.
    slots: Vec<Option<Entry>>,
    free_slots: Vec<usize>,
    slot_of: FastMap<SubscriptionId, usize>,
    /// Wanted channels and the slots subscribed to each.
    channels: FastMap<Arc<str>, Vec<usize>>,
    /// Channels the server has confirmed LISTENing to on the current connection.
    confirmed: HashSet<Arc<str>, BuildHasherDefault<FxHasher>>,
    /// Slots with staged notifications.
    touched: Vec<usize>,
    /// Slots whose parked consumer a [`Wake::Later`] flush did not wake yet.
    wake_pending: Vec<usize>,
    /// The text of the notifications routed since the last flush.
    block: BlockBuilder,
    /// The wanted or confirmed set changed since `plan` last found nothing to do. Keeps
    /// the per-batch check O(1) with thousands of channels.
    dirty: bool,
    /// Subscriptions owed a `Reconnected`.
    owed: usize,
    /// The last routed channel, when it had exactly one subscriber, and that
    /// subscriber's slot: a burst on one channel skips hashing after the first.
    /// Cleared whenever a subscription comes or goes.
    last_single: Option<(Arc<str>, usize)>,
}

impl Registry {
    /// Registers a subscription. `gap_since` is set when LISTEN cannot be confirmed now
    /// (disconnected): the subscription is then owed an `Event::Reconnected`.
    pub(crate) fn add(
        &mut self,
        id: SubscriptionId,
        channels: Vec<Arc<str>>,
        mailbox: Arc<Mailbox>,
        gap_since: Option<Instant>,
    ) {
        self.last_single = None;
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        for channel in &channels {
            let subscribers = match self.channels.get_mut(&**channel) {
                Some(subscribers) => subscribers,
                None => {
                    self.dirty = true;
                    self.channels.entry(channel.clone()).or_default()
                }
            };
            subscribers.push(slot);
        }
        if gap_since.is_some() {
            self.owed += 1;
        }
        self.slot_of.insert(id, slot);
        self.slots[slot] = Some(Entry {
            id,
            channels,
            mailbox,
            staged: Vec::new(),
            gap_since,
            held: Vec::new(),
            wake_pending: false,
        });
    }

    /// Removes a subscription. Unknown ids are ignored (it may have been removed already).
    pub(crate) fn remove(&mut self, id: SubscriptionId) {
        self.last_single = None;
        let Some(slot) = self.slot_of.remove(&id) else {
            return;
        };
        let Some(entry) = self.slots[slot].take() else {
            return;
        };
        for channel in &entry.channels {
            if let Some(subscribers) = self.channels.get_mut(&**channel) {
                subscribers.retain(|&s| s != slot);
                if subscribers.is_empty() {
                    self.channels.remove(&**channel);
                    self.dirty = true;
                }
            }
        }
        if entry.gap_since.is_some() {
            self.owed -= 1;
        }
        self.touched.retain(|&s| s != slot);
        self.wake_pending.retain(|&s| s != slot);
        self.free_slots.push(slot);
        entry.mailbox.close();
    }

    pub(crate) fn len(&self) -> usize {
        self.slot_of.len()
    }

    /// The LISTEN/UNLISTEN batch that brings the server to the wanted set, if any.
    /// O(1) when nothing changed since it last returned `None`.
    pub(crate) fn plan(&mut self) -> Option<SyncPlan> {
        if !self.dirty {
            return None;
        }
        let listen: Vec<_> = self
            .channels
            .keys()
            .filter(|c| !self.confirmed.contains(&***c))
            .cloned()
            .collect();
        let unlisten: Vec<_> = self
            .confirmed
            .iter()
            .filter(|c| !self.channels.contains_key(&***c))
            .cloned()
            .collect();
        if listen.is_empty() && unlisten.is_empty() {
            self.dirty = false;
            None
        } else {
            Some(SyncPlan { listen, unlisten })
        }
    }

    /// The server executed `plan`.
    pub(crate) fn confirm(&mut self, plan: &SyncPlan) {
        for channel in &plan.unlisten {
            self.confirmed.remove(channel);
        }
        for channel in &plan.listen {
            self.confirmed.insert(channel.clone());
        }
    }

    /// The connection is gone: the server listens to nothing for us any more, and every
    /// subscription is owed a `Reconnected` (its gap starts `now` unless it already had
    /// one).
    pub(crate) fn connection_lost(&mut self, now: Instant) {
        self.confirmed.clear();
        self.dirty = true;
        self.owed = self.slot_of.len();
        for entry in self.slots.iter_mut().flatten() {
            entry.gap_since.get_or_insert(now);
            // Not yet announced, and inside the gap that will be: at-most-once.
            entry.held.clear();
        }
    }

    /// The server stopped listening to `missing` behind our back (found by a heartbeat):
    /// forget them as confirmed, so the next plan LISTENs them again, and owe every
    /// subscription that wants one of them a `Reconnected`. Returns how many are owed.
    pub(crate) fn mark_gap(&mut self, missing: &[Arc<str>], since: Instant) -> usize {
        for channel in missing {
            self.confirmed.remove(channel);
        }
        self.dirty = true;
        let mut owed = 0;
        for entry in self.slots.iter_mut().flatten() {
            if entry.channels.iter().any(|c| missing.contains(c)) {
                if entry.gap_since.is_none() {
                    entry.gap_since = Some(since);
                    self.owed += 1;
                }
                owed += 1;
            }
        }
        owed
    }

    /// Channels confirmed on the current connection (for comparing with the server).
    pub(crate) fn confirmed(&self) -> impl Iterator<Item = &Arc<str>> + '_ {
        self.confirmed.iter()
    }

    /// True when some subscription is owed a `Reconnected`.
    pub(crate) fn owes_reconnected(&self) -> bool {
        self.owed > 0
    }

    /// Channels confirmed on the current connection.
    pub(crate) fn confirmed_count(&self) -> usize {
        self.confirmed.len()
    }

    /// Sends `Reconnected` to every subscription owed one, with its own downtime and
    /// the host reached, then releases the notifications held back for it. Call only
    /// when [`plan`] is `None`: LISTEN must be active for every wanted channel. Returns
    /// how many were told, and what the release delivered.
    ///
    /// [`plan`]: Registry::plan
    pub(crate) fn announce_reconnected(
        &mut self,
        now: Instant,
        attempts: u32,
        host: &Arc<str>,
        mut on_lag: impl FnMut(SubscriptionId, LagChange),
    ) -> (usize, FlushTotals) {
        let mut told = 0;
        let mut totals = FlushTotals::default();
        for entry in self.slots.iter_mut().flatten() {
            if let Some(since) = entry.gap_since.take() {
                let report = super::event::ReconnectReport::new(
                    now.saturating_duration_since(since),
                    attempts.max(1),
                )
                .with_host(host.clone());
                entry.mailbox.push_control(Event::Reconnected(report));
                told += 1;
                if !entry.held.is_empty() {
                    let delivery = entry.mailbox.deliver(entry.held.drain(..));
                    totals.add(entry.id, delivery, &mut on_lag);
                }
            }
        }
        self.owed = 0;
        (told, totals)
    }

    /// Sends `event` (an error) to every subscription.
    pub(crate) fn broadcast(&self, event: &Event) {
        for entry in self.slots.iter().flatten() {
            entry.mailbox.push_control(event.clone());
        }
    }

    /// Stages `incoming` for every subscriber of its channel: its text is copied into
    /// the block being filled (once, whatever the number of subscribers) and the
    /// driver's strings are dropped here. Returns false when no subscription wants it (a
    /// late arrival for a channel being UNLISTENed). Flush when [`Registry::batch_full`].
    #[inline]
    pub(crate) fn route(&mut self, incoming: impl Incoming) -> bool {
        let channel = incoming.channel();
        if let Some((cached, slot)) = &self.last_single
            && **cached == *channel
        {
            let slot = *slot;
            let at = self
                .block
                .push(incoming.process_id(), cached, incoming.payload());
            stage(&mut self.slots, &mut self.touched, slot, at);
            return true;
        }
        let Some((name, subscribers)) = self.channels.get_key_value(channel) else {
            return false;
        };
        if subscribers.is_empty() {
            return false;
        }
        if let [only] = subscribers[..] {
            self.last_single = Some((name.clone(), only));
        }
        let at = self
            .block
            .push(incoming.process_id(), name, incoming.payload());
        for &slot in subscribers {
            stage(&mut self.slots, &mut self.touched, slot, at);
        }
        true
    }

    /// The batch being routed should be flushed before routing more.
    pub(crate) fn batch_full(&self) -> bool {
        self.block.is_full()
    }

    /// Hands every staged batch to its mailbox: one lock and at most one wake-up per
    /// subscription, now or (with [`Wake::Later`]) at [`Registry::wake_owed`].
    /// `on_lag` hears of lag episodes starting and ending.
    pub(crate) fn flush(
        &mut self,
        wake: Wake,
        mut on_lag: impl FnMut(SubscriptionId, LagChange),
    ) -> FlushTotals {
        let mut totals = FlushTotals::default();
        if self.block.is_empty() {
            return totals;
        }
        let block = self.block.seal();
        for slot in self.touched.drain(..) {
            let Some(entry) = self.slots[slot].as_mut() else {
                continue;
            };
            let share = if block::is_sparse(entry.staged.len(), block.len()) {
                let indexes: Vec<u32> = entry.staged.iter().map(|at| at.index.into()).collect();
                let copy = Arc::new(block.extract(&indexes));
                for (i, at) in entry.staged.iter_mut().enumerate() {
                    *at = copy.locate(i as u32);
                }
                Arc::new(copy)
            } else {
                Arc::new(block.clone())
            };
            let notifications = entry
                .staged
                .drain(..)
                .map(|at| Notification::located(share.clone(), at));
            if entry.gap_since.is_some() {
                // Owed a Reconnected: that must come first.
                entry.held.extend(notifications);
            } else {
                let delivery = entry.mailbox.deliver_with(notifications, wake);
                if delivery.wake_owed && !entry.wake_pending {
                    entry.wake_pending = true;
                    self.wake_pending.push(slot);
                }
                totals.add(entry.id, delivery, &mut on_lag);
            }
        }
        totals
    }

    /// Publishes every subscription's queue length as a metric (with the `metrics`
    /// feature; called at each heartbeat).
    pub(crate) fn publish_queues(&self) {
        for entry in self.slots.iter().flatten() {
            entry.mailbox.publish();
        }
    }

    /// Wakes the consumers that [`Wake::Later`] flushes left parked.
    pub(crate) fn wake_owed(&mut self) {
        for slot in self.wake_pending.drain(..) {
            if let Some(entry) = self.slots[slot].as_mut() {
                entry.wake_pending = false;
                entry.mailbox.wake();
            }
        }
    }

    /// Ends every subscription's stream (after what it has buffered).
    pub(crate) fn close_all(&mut self) {
        for entry in self.slots.iter().flatten() {
            entry.mailbox.close();
        }
    }
}

/// A notification as it comes off the connection.
pub(crate) trait Incoming {
    fn channel(&self) -> &str;
    fn payload(&self) -> &str;
    fn process_id(&self) -> i32;
}

impl Incoming for tokio_postgres::Notification {
    fn channel(&self) -> &str {
        tokio_postgres::Notification::channel(self)
    }

    fn payload(&self) -> &str {
        tokio_postgres::Notification::payload(self)
    }

    fn process_id(&self) -> i32 {
        tokio_postgres::Notification::process_id(self)
    }
}

#[cfg(test)]
impl Incoming for (&str, &str) {
    fn channel(&self) -> &str {
        self.0
    }

    fn payload(&self) -> &str {
        self.1
    }

    fn process_id(&self) -> i32 {
        0
    }
}

fn stage(slots: &mut [Option<Entry>], touched: &mut Vec<usize>, slot: usize, at: Locator) {
    if let Some(entry) = slots[slot].as_mut() {
        if entry.staged.is_empty() {
            touched.push(slot);
        }
        entry.staged.push(at);
    }
}

impl Drop for Registry {
    /// However the background task ends (even by a panic or a runtime shutdown), no
    /// consumer is left waiting forever.
    fn drop(&mut self) {
        self.close_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::task::{Context, Poll, Waker};

    fn names(list: &[&str]) -> Vec<Arc<str>> {
        list.iter().map(|s| Arc::from(*s)).collect()
    }

    fn sorted(v: &[Arc<str>]) -> Vec<String> {
        let mut out: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        out.sort();
        out
    }

    fn drain(mailbox: &Mailbox) -> Vec<Event> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut local = VecDeque::new();
        let mut out = Vec::new();
        while let Poll::Ready(Some(_)) = mailbox.poll_take(&mut cx, &mut local) {
            out.extend(local.drain(..));
            mailbox.set_unread(0);
        }
        out
    }

    fn payloads(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Notification(n) => Some(format!("{}:{}", n.channel(), n.payload())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn listen_once_per_channel_and_unlisten_after_last_drop() {
        let mut r = Registry::default();
        r.add(1, names(&["a", "b"]), Arc::new(Mailbox::new(8)), None);
        r.add(2, names(&["b", "c"]), Arc::new(Mailbox::new(8)), None);
        let plan = r.plan().unwrap();
        assert_eq!(sorted(&plan.listen), ["a", "b", "c"]);
        assert!(plan.unlisten.is_empty());
        r.confirm(&plan);
        assert_eq!(r.plan(), None);

        r.remove(1);
        let plan = r.plan().unwrap();
        assert_eq!(sorted(&plan.unlisten), ["a"]);
        assert!(plan.listen.is_empty());
        r.confirm(&plan);
        r.remove(2);
        let plan = r.plan().unwrap();
        assert_eq!(sorted(&plan.unlisten), ["b", "c"]);
        r.confirm(&plan);
        assert_eq!(r.plan(), None);
        assert_eq!(r.confirmed_count(), 0);
    }

    #[test]
    fn reconnect_relistens_everything_in_one_batch() {
        let mut r = Registry::default();
        r.add(1, names(&["a", "B"]), Arc::new(Mailbox::new(8)), None);
        let plan = r.plan().unwrap();
        r.confirm(&plan);
        r.connection_lost(Instant::now());
        let plan = r.plan().unwrap();
        assert_eq!(sorted(&plan.listen), ["B", "a"]);
        assert_eq!(plan.sql().matches("LISTEN").count(), 2);
    }

    #[test]
    fn plan_is_cheap_when_nothing_changed_and_owed_count_tracks_removals() {
        let mut r = Registry::default();
        let t0 = Instant::now();
        r.add(1, names(&["a"]), Arc::new(Mailbox::new(8)), Some(t0));
        r.add(2, names(&["a"]), Arc::new(Mailbox::new(8)), None);
        let plan = r.plan().unwrap();
        r.confirm(&plan);
        assert_eq!(r.plan(), None);
        assert!(!r.dirty, "nothing left to do: the next check is O(1)");
        // A second subscriber on a known channel changes nothing on the server.
        r.add(3, names(&["a"]), Arc::new(Mailbox::new(8)), None);
        assert!(!r.dirty);
        assert!(r.owes_reconnected());
        r.remove(1);
        assert!(!r.owes_reconnected(), "the only owed subscription is gone");
    }

    #[test]
    fn resubscribe_before_unlisten_lands_needs_no_statement() {
        let mut r = Registry::default();
        r.add(1, names(&["a"]), Arc::new(Mailbox::new(8)), None);
        let plan = r.plan().unwrap();
        r.confirm(&plan);
        r.remove(1);
        r.add(2, names(&["a"]), Arc::new(Mailbox::new(8)), None);
        assert_eq!(r.plan(), None);
    }

    #[test]
    fn fan_out_reaches_every_subscriber_of_the_channel_only() {
        let mut r = Registry::default();
        let (m1, m2, m3) = (
            Arc::new(Mailbox::new(8)),
            Arc::new(Mailbox::new(8)),
            Arc::new(Mailbox::new(8)),
        );
        r.add(1, names(&["a"]), m1.clone(), None);
        r.add(2, names(&["a", "b"]), m2.clone(), None);
        r.add(3, names(&["c"]), m3.clone(), None);
        assert!(r.route(("a", "1")));
        assert!(r.route(("b", "2")));
        assert!(!r.route(("zzz", "3")));
        let totals = r.flush(Wake::Now, |_, _| {});
        assert_eq!(
            totals,
            FlushTotals {
                queued: 3,
                dropped: 0
            }
        );
        assert_eq!(payloads(&drain(&m1)), ["a:1"]);
        assert_eq!(payloads(&drain(&m2)), ["a:1", "b:2"]);
        assert!(drain(&m3).is_empty());
    }

    #[test]
    fn routing_cache_follows_subscriptions_coming_and_going() {
        let mut r = Registry::default();
        let (m1, m2) = (Arc::new(Mailbox::new(8)), Arc::new(Mailbox::new(8)));
        r.add(1, names(&["a"]), m1.clone(), None);
        r.route(("a", "1")); // cached: "a" has one subscriber
        r.route(("a", "1b"));
        r.add(2, names(&["a"]), m2.clone(), None);
        r.route(("a", "2")); // must reach both now
        r.flush(Wake::Now, |_, _| {});
        assert_eq!(payloads(&drain(&m1)), ["a:1", "a:1b", "a:2"]);
        r.remove(1);
        r.route(("a", "3")); // only the second is left
        assert!(!r.route(("b", "x"))); // nobody
        r.flush(Wake::Now, |_, _| {});
        assert_eq!(payloads(&drain(&m2)), ["a:2", "a:3"]);
    }

    #[test]
    fn fan_out_shares_one_copy_of_the_strings() {
        let mut r = Registry::default();
        let (m1, m2) = (Arc::new(Mailbox::new(8)), Arc::new(Mailbox::new(8)));
        r.add(1, names(&["a"]), m1.clone(), None);
        r.add(2, names(&["a"]), m2.clone(), None);
        r.route(("a", "payload"));
        r.flush(Wake::Now, |_, _| {});
        let (e1, e2) = (drain(&m1), drain(&m2));
        let (Event::Notification(n1), Event::Notification(n2)) = (&e1[0], &e2[0]) else {
            panic!("expected notifications: {e1:?} {e2:?}");
        };
        assert!(std::ptr::eq(n1.payload(), n2.payload()));
    }

    #[test]
    fn a_quiet_channel_does_not_keep_a_busy_channels_batch_alive() {
        let mut r = Registry::default();
        let (busy, quiet) = (Arc::new(Mailbox::new(1000)), Arc::new(Mailbox::new(1000)));
        r.add(1, names(&["busy"]), busy.clone(), None);
        r.add(2, names(&["quiet"]), quiet.clone(), None);
        for i in 0..100 {
            r.route(("busy", &*i.to_string()));
            if i % 50 == 0 {
                r.route(("quiet", &*format!("q{i}")));
            }
        }
        r.flush(Wake::Now, |_, _| {});
        let quiet_events = drain(&quiet);
        assert_eq!(payloads(&quiet_events), ["quiet:q0", "quiet:q50"]);
        for event in &quiet_events {
            let Event::Notification(n) = event else {
                panic!("expected a notification: {event:?}");
            };
            assert_eq!(
                n.block_len(),
                2,
                "the quiet subscription has a copy of its own"
            );
        }
        let busy_events = drain(&busy);
        assert_eq!(busy_events.len(), 100);
        let Event::Notification(n) = &busy_events[0] else {
            panic!("expected a notification");
        };
        assert_eq!(n.block_len(), 102, "the busy one shares the batch");
    }

    #[test]
    fn lag_episodes_are_reported_once_when_they_start_and_end() {
        let mut r = Registry::default();
        let m = Arc::new(Mailbox::new(1));
        r.add(7, names(&["a"]), m.clone(), None);
        let mut changes = Vec::new();
        for i in 0..3 {
            r.route(("a", i.to_string().as_str()));
        }
        let totals = r.flush(Wake::Now, |id, change| changes.push((id, change)));
        assert_eq!(
            totals,
            FlushTotals {
                queued: 1,
                dropped: 2
            }
        );
        r.route(("a", "more"));
        r.flush(Wake::Now, |id, change| changes.push((id, change)));
        assert_eq!(changes, [(7, LagChange::Started)]);
        drain(&m); // the consumer catches up
        r.route(("a", "fits again"));
        r.flush(Wake::Now, |id, change| changes.push((id, change)));
        assert_eq!(changes, [(7, LagChange::Started), (7, LagChange::Ended(3))]);
    }

    #[test]
    fn reconnected_goes_to_owed_subscriptions_only() {
        let mut r = Registry::default();
        let t0 = Instant::now();
        let (m1, m2) = (Arc::new(Mailbox::new(8)), Arc::new(Mailbox::new(8)));
        let host: Arc<str> = Arc::from("db:5432");
        r.add(1, names(&["a"]), m1.clone(), None);
        r.add(2, names(&["b"]), m2.clone(), Some(t0));
        assert_eq!(r.announce_reconnected(t0, 1, &host, |_, _| {}).0, 1);
        assert!(drain(&m1).is_empty());
        assert!(matches!(drain(&m2)[..], [Event::Reconnected(_)]));
        // After a loss, everyone is owed one, exactly once.
        r.connection_lost(t0);
        assert_eq!(r.announce_reconnected(t0, 3, &host, |_, _| {}).0, 2);
        assert_eq!(r.announce_reconnected(t0, 3, &host, |_, _| {}).0, 0);
        let Event::Reconnected(report) = &drain(&m1)[0] else {
            panic!("expected Reconnected")
        };
        assert_eq!(report.attempts(), 3);
        assert_eq!(report.host(), "db:5432");
    }

    #[test]
    fn notifications_for_a_subscription_owed_reconnected_wait_behind_it() {
        let mut r = Registry::default();
        let t0 = Instant::now();
        let (owed, fine) = (Arc::new(Mailbox::new(8)), Arc::new(Mailbox::new(8)));
        r.add(1, names(&["a"]), owed.clone(), Some(t0));
        r.add(2, names(&["a"]), fine.clone(), None);
        r.route(("a", "early"));
        r.flush(Wake::Now, |_, _| {});
        assert!(drain(&owed).is_empty(), "held back until Reconnected");
        assert_eq!(payloads(&drain(&fine)), ["a:early"]);
        let (told, totals) = r.announce_reconnected(t0, 1, &Arc::from("db:5432"), |_, _| {});
        assert_eq!((told, totals.queued), (1, 1));
        let events = drain(&owed);
        assert!(matches!(events[0], Event::Reconnected(_)), "{events:?}");
        assert_eq!(payloads(&events), ["a:early"]);
    }

    #[test]
    fn held_notifications_are_dropped_with_a_new_loss() {
        let mut r = Registry::default();
        let t0 = Instant::now();
        let m = Arc::new(Mailbox::new(8));
        r.add(1, names(&["a"]), m.clone(), Some(t0));
        r.route(("a", "inside the gap"));
        r.connection_lost(t0);
        r.announce_reconnected(t0, 2, &Arc::from("db:5432"), |_, _| {});
        let events = drain(&m);
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(matches!(events[0], Event::Reconnected(_)));
    }

    #[test]
    fn a_channel_dropped_behind_our_back_is_relistened_and_its_subscribers_owed() {
        let mut r = Registry::default();
        let t0 = Instant::now();
        r.add(1, names(&["a", "b"]), Arc::new(Mailbox::new(8)), None);
        r.add(2, names(&["b"]), Arc::new(Mailbox::new(8)), None);
        r.add(3, names(&["c"]), Arc::new(Mailbox::new(8)), None);
        let plan = r.plan().unwrap();
        r.confirm(&plan);
        assert!(r.plan().is_none() && !r.owes_reconnected());
        assert_eq!(r.mark_gap(&names(&["a"]), t0), 1);
        assert!(r.plan().is_some() && r.owes_reconnected());
        let plan = r.plan().unwrap();
        assert_eq!(sorted(&plan.listen), ["a"]);
        r.confirm(&plan);
        assert_eq!(
            r.announce_reconnected(t0, 1, &Arc::from("db:5432"), |_, _| {})
                .0,
            1
        );
    }

    #[test]
    fn removing_a_subscription_closes_its_stream_and_frees_its_slot() {
        let mut r = Registry::default();
        let m = Arc::new(Mailbox::new(8));
        r.add(1, names(&["a"]), m.clone(), None);
        r.route(("a", "x"));
        r.remove(1);
        assert_eq!(r.flush(Wake::Now, |_, _| {}), FlushTotals::default());
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(
            m.poll_take(&mut cx, &mut VecDeque::new()),
            Poll::Ready(None)
        );
        r.add(2, names(&["b"]), Arc::new(Mailbox::new(8)), None);
        assert_eq!(r.slots.len(), 1, "slot reused");
        assert_eq!(r.len(), 1);
        r.remove(99); // unknown: ignored
    }

    #[test]
    fn fx_hasher_distinguishes_similar_names() {
        let hash = |s: &str| {
            let mut h = FxHasher::default();
            std::hash::Hash::hash(s, &mut h);
            h.finish()
        };
        assert_ne!(hash("orders"), hash("Orders"));
        assert_ne!(hash("channel_00000001"), hash("channel_00000002"));
    }
}
