//! Storage for received notifications: the text of a whole read batch in one buffer.
//!
//! The driver hands each notification over as two fresh `String`s. Keeping them would
//! mean they are freed on the consumer's side, long after and often on another thread,
//! which defeats the allocator's per-thread caches (BENCHMARKS.md, "How the hot path got
//! here", step 1). Instead the background task copies the payload into the batch's [`Block`]
//! (the channel name is shared with the registry's) and drops the driver's strings at
//! once, so they go back to the cache they came from, as in the raw loop. A [`Notification`](crate::Notification) is then a
//! shared reference to the block and an index: no allocation per notification, and a
//! notification delivered to many subscriptions is stored once.
//!
//! Each subscription receiving from a block gets its own [`Share`] of it, so that the
//! reference count its notifications update (one increment each, one decrement when
//! dropped) is its own: with one count for all, consumers on other threads contended
//! with the task over one cache line (BENCHMARKS.md, "How the hot path got here", step 2).
//!
//! A block is sealed at [`MAX_ENTRIES`] notifications or once its text passes
//! [`MAX_TEXT`] bytes, whichever comes first. A subscription that receives only a few
//! of a block's notifications gets a copy of them instead (see [`is_sparse`]), so what
//! a subscription's queue keeps alive stays in proportion to what it holds, even when a
//! busy channel it does not listen to fills the blocks.

use std::sync::Arc;
use std::time::SystemTime;

use crate::position::Position;

/// Notifications per block at most: also the largest batch handed to a subscription at
/// once. With 128, what a current-thread runtime touches per batch (the socket's bytes,
/// the block, the queued events) stays in L1; 256 overflowed it and 64 did no better
/// (BENCHMARKS.md, "How the hot path got here", step 5).
pub(crate) const MAX_ENTRIES: usize = 128;

/// Payload bytes after which a block is sealed (a single notification larger than
/// this gets a block of its own).
pub(crate) const MAX_TEXT: usize = 16 * 1024;

/// A subscription that receives `received` of a block's `total` notifications gets its
/// own copy of them when they are under an eighth of the block: a slow consumer of a
/// quiet channel would otherwise keep a whole block alive per notification it has not
/// read (up to 8 times its share, instead of up to 128 times).
pub(crate) fn is_sparse(received: usize, total: usize) -> bool {
    received * 8 < total
}

/// One subscription's reference to a [`Block`]: one allocation per subscription per
/// batch, not per notification.
pub(crate) type Share = Arc<Arc<Block>>;

/// The channels, payloads and sender pids of a batch of notifications, and when it was
/// read.
#[derive(Debug)]
pub(crate) struct Block {
    /// The channels of the notifications, each stored once per run of notifications on
    /// the same channel.
    channels: Vec<Arc<str>>,
    payloads: String,
    entries: Vec<Entry>,
    /// When the batch was read: one clock read per block, not per notification.
    received_at: SystemTime,
    /// Durable entries only: the position of each entry (empty for notifications).
    positions: Vec<Position>,
}

impl Default for Block {
    fn default() -> Self {
        Block {
            channels: Vec::new(),
            payloads: String::new(),
            entries: Vec::new(),
            received_at: SystemTime::UNIX_EPOCH,
            positions: Vec::new(),
        }
    }
}

/// One notification of a [`Block`].
///
/// Offsets fit in `u32`: a block is sealed once its payloads pass [`MAX_TEXT`] bytes,
/// and one protocol message is shorter than 2 GiB (its length is an `i32`).
#[derive(Debug, Clone, Copy)]
struct Entry {
    process_id: i32,
    /// Index in [`Block::channels`].
    channel: u32,
    payload_start: u32,
    payload_end: u32,
}

impl Block {
    /// A block holding one notification.
    #[cfg(test)]
    pub(crate) fn single(process_id: i32, channel: &str, payload: &str) -> Arc<Block> {
        let mut builder = BlockBuilder::default();
        builder.push(process_id, &Arc::from(channel), payload);
        builder.seal()
    }

    /// Notifications in this block.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// A block holding copies of notifications `indexes` of this one, in that order
    /// (index `i` there is the `i`-th of `indexes`).
    pub(crate) fn extract(&self, indexes: &[u32]) -> Block {
        let mut builder = BlockBuilder::default();
        builder.entries.reserve(indexes.len());
        let mut unknown: Option<Arc<str>> = None;
        for &index in indexes {
            match self
                .entry(index)
                .and_then(|e| Some((e.process_id, self.channels.get(e.channel as usize)?)))
            {
                Some((process_id, channel)) => match self.position(index) {
                    Some(position) => {
                        builder.push_durable(process_id, channel, self.payload(index), position);
                    }
                    None => {
                        builder.push(process_id, channel, self.payload(index));
                    }
                },
                // Never happens (indexes come from this block's builder); keeps the
                // positions of the others if it did.
                None => {
                    let empty = unknown.get_or_insert_with(|| Arc::from(""));
                    builder.push(0, empty, "");
                }
            }
        }
        let mut copy = builder.take();
        copy.received_at = self.received_at;
        copy
    }

    /// When the batch was read from the connection.
    #[inline]
    pub(crate) fn received_at(&self) -> SystemTime {
        self.received_at
    }

    #[inline]
    fn entry(&self, index: u32) -> Option<&Entry> {
        self.entries.get(index as usize)
    }

    /// The channel of notification `index` ("" for an index not in this block).
    #[inline]
    pub(crate) fn channel(&self, index: u32) -> &str {
        self.entry(index)
            .and_then(|e| self.channels.get(e.channel as usize))
            .map_or("", |c| c)
    }

    /// The payload of notification `index`.
    #[inline]
    pub(crate) fn payload(&self, index: u32) -> &str {
        self.entry(index)
            .and_then(|e| {
                self.payloads
                    .get(e.payload_start as usize..e.payload_end as usize)
            })
            .unwrap_or("")
    }

    /// The sender's backend pid of notification `index`.
    #[inline]
    pub(crate) fn process_id(&self, index: u32) -> i32 {
        self.entry(index).map_or(0, |e| e.process_id)
    }

    /// The journal position of entry `index` of a durable block (`None` in a block of
    /// notifications).
    #[inline]
    pub(crate) fn position(&self, index: u32) -> Option<Position> {
        self.positions.get(index as usize).copied()
    }

    /// Where notification `index`'s channel and payload are, to keep in its
    /// `Notification`; reading them then touches the block's text and channel list, not
    /// its entries, which were written on another core (BENCHMARKS.md, "How the hot path
    /// got here", step 11).
    #[inline]
    pub(crate) fn locate(&self, index: u32) -> Locator {
        match self.entry(index) {
            Some(entry) => Locator::of(index, entry),
            None => Locator::far(index),
        }
    }

    /// The channel of the notification at `at`.
    #[inline]
    pub(crate) fn channel_at(&self, at: Locator) -> &str {
        if at.payload_len == Locator::FAR {
            return self.channel(at.index.into());
        }
        self.channels.get(at.channel as usize).map_or("", |c| c)
    }

    /// The payload of the notification at `at`.
    #[inline]
    pub(crate) fn payload_at(&self, at: Locator) -> &str {
        if at.payload_len == Locator::FAR {
            return self.payload(at.index.into());
        }
        let start = at.payload_start as usize;
        self.payloads
            .get(start..start + at.payload_len as usize)
            .unwrap_or("")
    }
}

/// A notification's place in its [`Block`], with its channel and payload bounds when they
/// fit in 16 bits (always, but for a payload of 64 KiB or more, which only a durable
/// entry can have): then `payload_len` is [`Locator::FAR`] and the entry is read instead.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Locator {
    /// The entry's index (a block holds at most [`MAX_ENTRIES`]).
    pub(crate) index: u16,
    channel: u16,
    payload_start: u16,
    payload_len: u16,
}

impl Locator {
    const FAR: u16 = u16::MAX;

    /// Where entry `index` is: its bounds when they fit, or [`Locator::far`].
    #[inline(always)]
    fn of(index: u32, entry: &Entry) -> Locator {
        let len = entry.payload_end.wrapping_sub(entry.payload_start);
        if entry.channel < u32::from(Self::FAR)
            && entry.payload_start < u32::from(Self::FAR)
            && len < u32::from(Self::FAR)
        {
            Locator {
                index: index as u16,
                channel: entry.channel as u16,
                payload_start: entry.payload_start as u16,
                payload_len: len as u16,
            }
        } else {
            Locator::far(index)
        }
    }

    /// Entry `index`, to be read from the block's entries.
    fn far(index: u32) -> Locator {
        Locator {
            index: index as u16,
            channel: 0,
            payload_start: 0,
            payload_len: Self::FAR,
        }
    }
}

const _: () = assert!(MAX_ENTRIES < u16::MAX as usize);

/// The block being filled by the background task.
#[derive(Debug, Default)]
pub(crate) struct BlockBuilder {
    channels: Vec<Arc<str>>,
    payloads: String,
    entries: Vec<Entry>,
    positions: Vec<Position>,
    /// Sizes of the last sealed block, to allocate the next one at once.
    last_text: usize,
    last_entries: usize,
}

impl BlockBuilder {
    /// Copies a notification in (its payload; `channel` is shared); returns where it is
    /// in the block being filled.
    // Always inlined: called once per notification on the background task's hot path,
    // where a call did not get inlined by itself (about 70 instructions per
    // notification more, counted with callgrind).
    #[inline(always)]
    pub(crate) fn push(&mut self, process_id: i32, channel: &Arc<str>, payload: &str) -> Locator {
        if self.entries.capacity() == 0 {
            self.start_block(payload.len());
        }
        let channel_index = match self.channels.last() {
            Some(last) if Arc::ptr_eq(last, channel) => self.channels.len() - 1,
            _ => self.add_channel(channel),
        };
        // The casts cannot truncate: see `Entry`.
        let payload_start = self.payloads.len() as u32;
        self.payloads.push_str(payload);
        let index = self.entries.len() as u32;
        let entry = Entry {
            process_id,
            channel: channel_index as u32,
            payload_start,
            payload_end: self.payloads.len() as u32,
        };
        self.entries.push(entry);
        Locator::of(index, &entry)
    }

    /// Copies a durable journal entry in; every entry of a block that holds one must be
    /// pushed this way (positions are looked up by index).
    pub(crate) fn push_durable(
        &mut self,
        process_id: i32,
        channel: &Arc<str>,
        payload: &str,
        position: Position,
    ) -> Locator {
        debug_assert_eq!(self.positions.len(), self.entries.len());
        self.positions.push(position);
        self.push(process_id, channel, payload)
    }

    /// Allocates the next block's buffers, as large as the last block's.
    #[cold]
    fn start_block(&mut self, first_payload: usize) {
        self.entries.reserve(self.last_entries.max(1));
        self.payloads.reserve(self.last_text.max(first_payload));
    }

    #[cold]
    fn add_channel(&mut self, channel: &Arc<str>) -> usize {
        self.channels.push(channel.clone());
        self.channels.len() - 1
    }

    /// No notification was pushed since the last seal.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The block should be sealed before another notification is pushed.
    pub(crate) fn is_full(&self) -> bool {
        self.entries.len() >= MAX_ENTRIES || self.payloads.len() >= MAX_TEXT
    }

    /// Ends the block being filled and returns it, stamped with the time (the one clock
    /// read of the batch); the next push starts a new one.
    pub(crate) fn seal(&mut self) -> Arc<Block> {
        self.last_text = self.payloads.len().min(MAX_TEXT + MAX_TEXT / 4);
        self.last_entries = self.entries.len();
        let mut block = self.take();
        block.received_at = SystemTime::now();
        Arc::new(block)
    }

    fn take(&mut self) -> Block {
        Block {
            channels: std::mem::take(&mut self.channels),
            payloads: std::mem::take(&mut self.payloads),
            entries: std::mem::take(&mut self.entries),
            received_at: SystemTime::UNIX_EPOCH,
            positions: std::mem::take(&mut self.positions),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn keeps_each_notification_apart() {
        let mut b = BlockBuilder::default();
        assert!(b.is_empty());
        let orders = name("orders");
        assert_eq!(b.push(7, &orders, "42").index, 0);
        assert_eq!(b.push(8, &name(""), "").index, 1);
        assert_eq!(b.push(9, &name("Ünïcödé"), "ça va ✓").index, 2);
        assert_eq!(b.push(10, &orders, "43").index, 3);
        assert!(!b.is_empty());
        let block = b.seal();
        assert!(b.is_empty());
        assert_eq!(
            (block.channel(0), block.payload(0), block.process_id(0)),
            ("orders", "42", 7)
        );
        assert_eq!(
            (block.channel(1), block.payload(1), block.process_id(1)),
            ("", "", 8)
        );
        assert_eq!(
            (block.channel(2), block.payload(2), block.process_id(2)),
            ("Ünïcödé", "ça va ✓", 9)
        );
        assert_eq!(
            (block.channel(3), block.payload(3), block.process_id(3)),
            ("orders", "43", 10)
        );
        // An index from elsewhere never panics.
        assert_eq!(
            (block.channel(4), block.payload(4), block.process_id(4)),
            ("", "", 0)
        );
    }

    #[test]
    fn stores_a_channel_once_per_run() {
        let (a, b) = (name("a"), name("b"));
        let mut builder = BlockBuilder::default();
        for channel in [&a, &a, &a, &b, &b, &a] {
            builder.push(1, channel, "p");
        }
        let block = builder.seal();
        assert_eq!(block.channels.len(), 3);
        let channels: Vec<&str> = (0..6).map(|i| block.channel(i)).collect();
        assert_eq!(channels, ["a", "a", "a", "b", "b", "a"]);
    }

    #[test]
    fn fills_up_by_count_or_by_size() {
        let c = name("c");
        let mut b = BlockBuilder::default();
        for i in 0..MAX_ENTRIES {
            assert!(!b.is_full(), "full after {i}");
            b.push(1, &c, "p");
        }
        assert!(b.is_full());
        let block = b.seal();
        assert_eq!(block.entries.len(), MAX_ENTRIES);
        assert!(!b.is_full());

        let big = "x".repeat(MAX_TEXT);
        b.push(1, &c, &big);
        assert!(b.is_full(), "one large notification fills a block");
        let block = b.seal();
        assert_eq!(block.payload(0).len(), MAX_TEXT);
    }

    #[test]
    fn extracts_copies_in_the_order_asked() {
        let (a, b) = (name("a"), name("b"));
        let mut builder = BlockBuilder::default();
        builder.push(1, &a, "one");
        builder.push(2, &b, "two");
        builder.push(3, &a, "three");
        let block = builder.seal();
        let copy = block.extract(&[2, 0]);
        assert_eq!(copy.len(), 2);
        assert_eq!(
            (copy.channel(0), copy.payload(0), copy.process_id(0)),
            ("a", "three", 3)
        );
        assert_eq!(
            (copy.channel(1), copy.payload(1), copy.process_id(1)),
            ("a", "one", 1)
        );
        assert_eq!(copy.channels.len(), 1);
        assert_eq!(
            copy.received_at(),
            block.received_at(),
            "a copy keeps the time"
        );
        let odd = block.extract(&[7, 1]);
        assert_eq!(
            (odd.payload(0), odd.payload(1)),
            ("", "two"),
            "positions are kept"
        );
    }

    #[test]
    fn sealing_stamps_the_block_with_the_time_once() {
        let mut builder = BlockBuilder::default();
        builder.push(1, &name("a"), "one");
        let before = SystemTime::now();
        let block = builder.seal();
        let after = SystemTime::now();
        assert!(before <= block.received_at() && block.received_at() <= after);
    }

    #[test]
    fn a_locator_finds_what_the_entry_holds_and_falls_back_for_huge_payloads() {
        let mut builder = BlockBuilder::default();
        let (a, b) = (name("a"), name("ch_b"));
        builder.push(1, &a, "first");
        builder.push(2, &b, "");
        builder.push(3, &a, "ça ✓");
        let huge = "x".repeat(70_000);
        builder.push(4, &b, &huge);
        let block = builder.seal();
        for index in 0..4 {
            let at = block.locate(index);
            assert_eq!(u32::from(at.index), index);
            assert_eq!(
                block.channel_at(at),
                block.channel(index),
                "channel {index}"
            );
            assert_eq!(
                block.payload_at(at),
                block.payload(index),
                "payload {index}"
            );
        }
        // 70 000 bytes do not fit the locator's 16 bits: it reads the entry instead.
        assert_eq!(block.payload_at(block.locate(3)).len(), 70_000);
        assert_eq!(block.channel_at(block.locate(3)), "ch_b");
        // An index past the block reads as empty, as the entry accessors do.
        let outside = block.locate(9);
        assert_eq!(
            (block.channel_at(outside), block.payload_at(outside)),
            ("", "")
        );
    }

    #[test]
    fn sparse_means_under_an_eighth() {
        assert!(is_sparse(31, 256));
        assert!(!is_sparse(32, 256));
        assert!(!is_sparse(1, 1));
        assert!(!is_sparse(1, 8));
        assert!(is_sparse(1, 9));
    }

    #[test]
    fn a_new_block_starts_after_each_seal() {
        let mut b = BlockBuilder::default();
        b.push(1, &name("a"), "first");
        let first = b.seal();
        assert_eq!(b.push(2, &name("b"), "second").index, 0);
        let second = b.seal();
        assert_eq!(first.payload(0), "first");
        assert_eq!(second.payload(0), "second");
        assert_eq!(Block::single(3, "c", "third").payload(0), "third");
    }
}
