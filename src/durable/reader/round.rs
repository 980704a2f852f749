//! One round of reads: the dirty subscriptions grouped by channel and position, one
//! read per group, all sent together, and what each read moves on.

use std::collections::HashMap;

use tokio::time::Instant;

use super::Task;
use super::batch::{Group, MAX_BATCH_ENTRIES, Member, Outcome, pruned, read};
use crate::error::{Error, ErrorKind};
use crate::position::Position;

impl Task {
    /// One round: start what is starting, then one read for each group of dirty
    /// subscriptions, all sent together.
    pub(super) async fn round(&mut self) {
        let bound = self
            .config
            .heartbeat
            .timeout
            .max(self.config.connect.connect_timeout());
        let connected = tokio::time::timeout(bound, self.connection()).await;
        let client = match connected {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => return self.failed(error, None),
            Err(_) => {
                let error = Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "the durable reader could not connect within {bound:?}; it tries again"
                    ),
                );
                return self.failed(error, None);
            }
        };
        self.start_waiting(&client, bound).await;
        let groups = self.groups();
        if groups.is_empty() {
            return;
        }
        let mut statements = Vec::with_capacity(groups.len());
        for group in &groups {
            let prepared = match self.conn.as_mut() {
                Some(conn) => conn.prepared(&group.journal).await,
                None => Err(Error::new(
                    ErrorKind::ConnectionLost,
                    "the durable reader's connection is gone",
                )),
            };
            match prepared {
                Ok(prepared) => statements.push(prepared.read),
                Err(error) => return self.failed(error, Some(&groups)),
            }
        }
        let mut groups = groups;
        let reads = groups
            .iter_mut()
            .zip(&statements)
            .map(|(group, statement)| {
                let client = &client;
                async move { tokio::time::timeout(bound, read(client, statement, group)).await }
            });
        let outcomes = futures::future::join_all(reads).await;
        let mut trouble = None;
        for (group, outcome) in groups.iter().zip(outcomes) {
            match outcome {
                Ok(Ok(outcome)) => self.apply(group, &outcome),
                Ok(Err(error)) => {
                    self.record_partial(group);
                    trouble = Some(error);
                }
                Err(_) => {
                    self.record_partial(group);
                    trouble = Some(Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "a read of the journal took longer than {bound:?}; the durable \
                             reader reconnects and reads again from the last position"
                        ),
                    ));
                }
            }
        }
        match trouble {
            Some(error) => self.failed(error, Some(&groups)),
            None => {
                self.backoff.reset();
                self.backoff_until = None;
            }
        }
    }

    /// The dirty subscriptions with room, grouped by channel and position.
    fn groups(&mut self) -> Vec<Group> {
        let mut groups: Vec<Group> = Vec::new();
        let mut index: HashMap<(&str, &str, Position, bool), usize> = HashMap::new();
        for sub in self.subs.values_mut() {
            if sub.dirty && !sub.blocked && sub.queue.room() == 0 {
                sub.blocked = true;
            }
        }
        for (&id, sub) in &self.subs {
            if !sub.dirty || sub.blocked {
                continue;
            }
            let room = sub.queue.room();
            if room == 0 {
                continue;
            }
            let key = (
                sub.journal.schema(),
                &*sub.channel,
                sub.cursor,
                sub.from_beginning,
            );
            let at = *index.entry(key).or_insert_with(|| {
                groups.push(Group {
                    journal: sub.journal.clone(),
                    channel: sub.channel.clone(),
                    cursor: sub.cursor,
                    from_beginning: sub.from_beginning,
                    members: Vec::new(),
                });
                groups.len() - 1
            });
            groups[at].members.push(Member {
                id,
                queue: sub.queue.clone(),
                room: room.min(MAX_BATCH_ENTRIES),
                taken: 0,
                last: None,
            });
        }
        groups
    }

    /// A read succeeded: move each member on.
    fn apply(&mut self, group: &Group, outcome: &Outcome) {
        let mut retry = false;
        for member in &group.members {
            let Some(sub) = self.subs.get_mut(&member.id) else {
                continue;
            };
            member
                .queue
                .record_read(outcome.held, outcome.watermark, group.members.len() > 1);
            match outcome.horizon {
                Some(h) if h > group.cursor && !group.from_beginning && member.last.is_none() => {
                    sub.queue
                        .push_error(pruned(&group.channel, group.cursor, h));
                    sub.queue.close();
                    self.drop_sub(member.id);
                    continue;
                }
                Some(h) if group.from_beginning && member.last.is_none() && h > sub.cursor => {
                    sub.cursor = h;
                }
                _ => {}
            }
            if let Some(last) = member.last {
                sub.cursor = last;
                sub.from_beginning = false;
            }
            // Entries may remain: the read hit a bound, or this queue's room.
            sub.dirty = outcome.more || member.taken == member.room;
            sub.held = outcome.held > 0;
            retry |= sub.held;
        }
        if retry {
            let at = Instant::now() + self.config.durable_retry;
            self.retry_at = Some(self.retry_at.map_or(at, |t| t.min(at)));
        }
    }

    /// A read failed part way: what it delivered stays delivered.
    fn record_partial(&mut self, group: &Group) {
        for member in &group.members {
            if let (Some(sub), Some(last)) = (self.subs.get_mut(&member.id), member.last) {
                sub.cursor = last;
                sub.from_beginning = false;
            }
        }
    }
}
