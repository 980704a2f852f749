//! One shared read of the journal: the subscriptions of one channel at one position
//! (a [`Group`]), the statement's rows handed to each of them as they arrive, as many as
//! its queue has room for; and how a new subscription's cursor is settled.

use std::sync::Arc;

use futures::future::FutureExt;
use futures::stream::StreamExt;
use tokio_postgres::{Client, Row, Statement};

use super::super::Journal;
use super::super::journal::{SCHEMA_VERSION, Xid8, failed, newer_journal, parse_xid};
use super::super::stream::Queue;
use crate::error::{Error, ErrorKind, Result};
use crate::fanout::{Block, BlockBuilder, Notification};
use crate::position::{Cursor, Position};

/// Entries per read at most.
pub(super) const MAX_BATCH_ENTRIES: usize = 1000;
/// Payload bytes per read, about (a read always takes its first entry).
pub(super) const MAX_BATCH_BYTES: i64 = 4 << 20;

/// One shared read: the subscriptions on one channel at one position.
pub(super) struct Group {
    pub(super) journal: Journal,
    pub(super) channel: Arc<str>,
    pub(super) cursor: Position,
    pub(super) from_beginning: bool,
    pub(super) members: Vec<Member>,
}

pub(super) struct Member {
    pub(super) id: u64,
    pub(super) queue: Arc<Queue>,
    pub(super) room: usize,
    pub(super) taken: usize,
    pub(super) last: Option<Position>,
}

/// What one shared read found.
pub(super) struct Outcome {
    pub(super) watermark: u64,
    pub(super) held: u64,
    pub(super) horizon: Option<Position>,
    /// The read may have left entries behind (it hit a bound).
    pub(super) more: bool,
}

/// What the start statement returned, read.
#[derive(Debug, Clone, Copy)]
pub(super) struct StartFacts {
    pub(super) version: i32,
    pub(super) same_cluster: bool,
    pub(super) watermark: u64,
    pub(super) next: u64,
    pub(super) horizon: Option<Position>,
}

impl StartFacts {
    pub(super) fn from_row(row: &Row) -> Result<StartFacts> {
        Ok(StartFacts {
            version: row.get(0),
            same_cluster: row.get(1),
            watermark: parse_xid(row.get(2))?,
            next: parse_xid(row.get(3))?,
            horizon: horizon_of(row.get(4), row.get(5))?,
        })
    }
}

/// Where a new subscription starts (and whether it starts from the beginning), or why
/// it cannot.
pub(super) fn settle_start(
    facts: StartFacts,
    from: Cursor,
    journal: &Journal,
    channel: &str,
) -> Result<(Position, bool)> {
    if facts.version > SCHEMA_VERSION {
        return Err(newer_journal(journal.schema(), Some(facts.version)));
    }
    match from {
        Cursor::Beginning => Ok((facts.horizon.unwrap_or(Position::new(0, 0)), true)),
        Cursor::Now => Ok((Position::new(facts.watermark, 0), false)),
        Cursor::After(p) => {
            if !facts.same_cluster {
                return Err(Error::new(
                    ErrorKind::InvalidPosition,
                    format!(
                        "the journal in schema {:?} was installed on another cluster (its \
                         system identifier differs: a dump restored here, or a copy), so \
                         position {p} cannot be trusted; start from Cursor::Beginning or \
                         Cursor::Now, and run install to adopt the journal here",
                        journal.schema()
                    ),
                ));
            }
            if p.transaction_id() >= facts.next {
                return Err(Error::new(
                    ErrorKind::InvalidPosition,
                    format!(
                        "position {p} is from the future: transaction {} has not started on \
                         this server (next is {}); was it stored from another cluster?",
                        p.transaction_id(),
                        facts.next
                    ),
                ));
            }
            match facts.horizon {
                Some(h) if h > p => Err(pruned(channel, p, h)),
                _ => Ok((p, false)),
            }
        }
    }
}

pub(super) fn horizon_of(xid: Option<&str>, seq: Option<i64>) -> Result<Option<Position>> {
    match (xid, seq) {
        (Some(xid), Some(seq)) => Ok(Some(Position::new(parse_xid(xid)?, seq as u64))),
        _ => Ok(None),
    }
}

pub(super) fn pruned(channel: &str, cursor: Position, horizon: Position) -> Error {
    Error::new(
        ErrorKind::Pruned,
        format!(
            "durable channel {channel:?}: entries after position {cursor} were pruned (the \
             journal's horizon for it is {horizon}), so this subscription cannot continue \
             without a gap; reload your state and subscribe again from Cursor::Beginning, or \
             prune less"
        ),
    )
}

/// Reads one group's entries and hands them to its members as they arrive.
pub(super) async fn read(
    client: &Client,
    statement: &Statement,
    group: &mut Group,
) -> Result<Outcome> {
    let limit = group.members.iter().map(|m| m.room).max().unwrap_or(0) as i64;
    let xid = group.cursor.transaction_id().to_string();
    // Journal sequence numbers are bigints: a cursor past i64::MAX (a valid Position)
    // is after every one of them, as i64::MAX is; `as i64` would wrap it to negative.
    let seq = i64::try_from(group.cursor.sequence()).unwrap_or(i64::MAX);
    let channel: &str = &group.channel;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
        [&channel, &xid, &seq, &limit, &MAX_BATCH_BYTES];
    let rows = client
        .query_raw(statement, params)
        .await
        .map_err(|e| failed("reading the journal", e))?;
    let mut rows = std::pin::pin!(rows);
    let mut builder = BlockBuilder::default();
    let mut outcome: Option<Outcome> = None;
    let mut previous = group.cursor;
    let mut entries = 0i64;
    let mut bytes = 0i64;
    loop {
        // Hand over what has arrived before waiting for more.
        let next = match rows.next().now_or_never() {
            Some(next) => next,
            None => {
                flush(&mut builder, group);
                rows.next().await
            }
        };
        let row = match next {
            None => break,
            Some(row) => row.map_err(|e| failed("reading the journal", e))?,
        };
        if outcome.is_none() {
            let head = head(&row)?;
            if head
                .horizon
                .is_some_and(|h| h > group.cursor && !group.from_beginning)
            {
                // Pruned past this group: nothing may be delivered.
                return Ok(head);
            }
            outcome = Some(head);
        }
        let Some(Xid8(xid)) = row.get::<_, Option<Xid8>>(4) else {
            continue;
        };
        let position = Position::new(xid, row.get::<_, i64>(5) as u64);
        if position <= previous {
            return Err(Error::new(
                ErrorKind::Database,
                format!("the journal read returned {position} after {previous}: out of order"),
            ));
        }
        previous = position;
        let payload: &str = row.get(7);
        entries += 1;
        bytes += payload.len() as i64;
        builder.push_durable(row.get(6), &group.channel, payload, position);
        if builder.is_full() {
            flush(&mut builder, group);
        }
    }
    flush(&mut builder, group);
    let mut outcome = outcome
        .ok_or_else(|| Error::new(ErrorKind::Database, "the journal read returned no row"))?;
    outcome.more = entries >= limit || bytes >= MAX_BATCH_BYTES;
    Ok(outcome)
}

/// The read's head: watermark, horizon, held-back count (the same on every row).
fn head(row: &Row) -> Result<Outcome> {
    Ok(Outcome {
        watermark: parse_xid(row.get(0))?,
        horizon: horizon_of(row.get(1), row.get(2))?,
        held: row.get::<_, i64>(3) as u64,
        more: false,
    })
}

/// Hands the entries read so far to each member, as many as its room allows.
fn flush(builder: &mut BlockBuilder, group: &mut Group) {
    if builder.is_empty() {
        return;
    }
    let block: Arc<Block> = builder.seal();
    let len = block.len();
    for member in &mut group.members {
        let take = len.min(member.room - member.taken);
        if take == 0 {
            continue;
        }
        let share = Arc::new(block.clone());
        let Some(last) = block.position(take as u32 - 1) else {
            continue;
        };
        member.queue.push(
            (0..take as u32).map(|i| Notification::in_block(share.clone(), i)),
            last,
        );
        member.taken += take;
        member.last = Some(last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> StartFacts {
        StartFacts {
            version: SCHEMA_VERSION,
            same_cluster: true,
            watermark: 700,
            next: 710,
            horizon: None,
        }
    }

    fn settle(facts: StartFacts, from: Cursor) -> Result<(Position, bool)> {
        settle_start(facts, from, &Journal::new("j"), "orders")
    }

    #[test]
    fn beginning_now_and_after() {
        assert_eq!(
            settle(facts(), Cursor::Beginning).unwrap(),
            (Position::new(0, 0), true)
        );
        let pruned_at = StartFacts {
            horizon: Some(Position::new(600, 9)),
            ..facts()
        };
        assert_eq!(
            settle(pruned_at, Cursor::Beginning).unwrap(),
            (Position::new(600, 9), true),
            "from the beginning: from the horizon, no error"
        );
        assert_eq!(
            settle(facts(), Cursor::Now).unwrap(),
            (Position::new(700, 0), false)
        );
        let p = Position::new(705, 3);
        assert_eq!(settle(facts(), Cursor::After(p)).unwrap(), (p, false));
    }

    #[test]
    fn pruned_only_before_the_horizon() {
        let h = Position::new(600, 9);
        let with = StartFacts {
            horizon: Some(h),
            ..facts()
        };
        assert_eq!(
            settle(with, Cursor::After(h)).unwrap(),
            (h, false),
            "at the horizon"
        );
        let e = settle(with, Cursor::After(Position::new(600, 8))).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Pruned);
        assert!(e.to_string().contains(&h.to_string()), "{e}");
    }

    #[test]
    fn foreign_future_and_newer_journals_are_refused() {
        let foreign = StartFacts {
            same_cluster: false,
            ..facts()
        };
        let e = settle(foreign, Cursor::After(Position::new(1, 1))).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidPosition);
        assert!(
            settle(foreign, Cursor::Now).is_ok(),
            "Now needs no stored position"
        );
        let e = settle(facts(), Cursor::After(Position::new(710, 1))).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidPosition);
        assert!(e.to_string().contains("future"), "{e}");
        let newer = StartFacts {
            version: SCHEMA_VERSION + 1,
            ..facts()
        };
        assert_eq!(
            settle(newer, Cursor::Now).unwrap_err().kind(),
            ErrorKind::Config
        );
    }
}
