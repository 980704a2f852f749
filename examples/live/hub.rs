//! The fan-out: ONE subscription of the server's listener, each change written as SSE
//! text once and shared (`Bytes`) by every browser that is caught up.
//!
//! A subscription per browser works too (and is what a browser that is behind gets),
//! but then every change is read, queued, formatted and framed once per browser; with a
//! thousand browsers that is most of the server's work. Here the hub keeps the last
//! batches in a ring, so a browser that joins (or comes back) at a position the ring
//! covers is served from it and then live; one that is further behind, or falls behind
//! the broadcast, reads on a durable subscription of its own from its last position.
//! Nothing is missed either way: the durable order is the same for everyone.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use pglisten::durable::{Cursor, Position};
use pglisten::{ErrorKind, Event, Listener};
use tokio::sync::broadcast;

use super::CHANNEL;

/// Batches kept for browsers that join, and queued per browser before it lags.
const RING: usize = 1024;

/// Tells the page to read a snapshot again. (Its data is not empty: browsers drop
/// events without data.)
pub const RELOAD: &str = "event: reload\ndata: reload\n\n";

/// One change as an SSE event; `id` is its durable position, if it has one.
pub fn change_event(position: Option<Position>, payload: &str) -> Bytes {
    let data = payload.replace('\n', "\ndata: ");
    Bytes::from(match position {
        Some(p) => format!("event: change\nid: {p}\ndata: {data}\n\n"),
        None => format!("event: change\ndata: {data}\n\n"),
    })
}

/// What the subscription had ready at once, formatted.
#[derive(Debug)]
pub struct Batch {
    /// Each event with its position (durable mode).
    events: Vec<(Option<Position>, Bytes)>,
    /// All of them, one buffer.
    joined: Bytes,
    last: Option<Position>,
}

impl Batch {
    /// Its events after `after`: all of them in one buffer when the batch starts after
    /// it, else those after it (a browser that joined in the middle of this batch).
    fn after(&self, after: Position) -> Bytes {
        if self
            .events
            .first()
            .and_then(|e| e.0)
            .is_some_and(|p| p > after)
        {
            return self.joined.clone();
        }
        let mut text = Vec::new();
        for (_, event) in self
            .events
            .iter()
            .filter(|e| e.0.is_some_and(|p| p > after))
        {
            text.extend_from_slice(event);
        }
        Bytes::from(text)
    }
}

/// What a browser joining gets: the ring's events after its position, the last
/// position among them, and a receiver of the batches to come.
type Joined = (
    Vec<Bytes>,
    Option<Position>,
    broadcast::Receiver<Arc<Batch>>,
);

#[derive(Debug)]
pub struct Hub {
    state: Mutex<State>,
    /// Browsers that fell behind the broadcast (more than [`RING`] batches): moved to a
    /// subscription of their own (durable mode) or told to reload (plain mode). Shared
    /// with their streams, which do not keep the hub itself alive.
    fell_behind: Arc<AtomicU64>,
}

#[derive(Debug)]
struct State {
    ring: VecDeque<Arc<Batch>>,
    /// Durable mode: every entry after it is in the ring, or still to come.
    horizon: Option<Position>,
    /// `None` once the hub's subscription ended.
    sender: Option<broadcast::Sender<Arc<Batch>>>,
}

impl Hub {
    /// A hub on a durable subscription from `after`.
    pub async fn durable(listener: &Listener, after: Position) -> pglisten::Result<Arc<Hub>> {
        let subscription = listener
            .subscribe_durable(CHANNEL, Cursor::After(after))
            .await?;
        let events = subscription.filter_map(|event| {
            std::future::ready(match event {
                Event::Notification(n) => {
                    Some((n.position(), change_event(n.position(), n.payload())))
                }
                _ => None,
            })
        });
        Ok(Hub::spawn(events.boxed(), Some(after)))
    }

    /// A hub on a plain subscription: a gap becomes a `reload` for every browser.
    pub async fn plain(listener: &Listener) -> pglisten::Result<Arc<Hub>> {
        let subscription = listener.subscribe([CHANNEL]).await?;
        let events = subscription.filter_map(|event| {
            std::future::ready(match event {
                Event::Notification(n) => Some((None, change_event(None, n.payload()))),
                Event::Reconnected(_) | Event::Lagged(_) => {
                    Some((None, Bytes::from_static(RELOAD.as_bytes())))
                }
                _ => None,
            })
        });
        Ok(Hub::spawn(events.boxed(), None))
    }

    fn spawn(
        events: BoxStream<'static, (Option<Position>, Bytes)>,
        horizon: Option<Position>,
    ) -> Arc<Hub> {
        let (sender, _) = broadcast::channel(RING);
        let hub = Arc::new(Hub {
            state: Mutex::new(State {
                ring: VecDeque::new(),
                horizon,
                sender: Some(sender),
            }),
            fell_behind: Arc::new(AtomicU64::new(0)),
        });
        let weak = Arc::downgrade(&hub);
        tokio::spawn(async move {
            let mut batches = events.ready_chunks(RING);
            while let Some(events) = batches.next().await {
                let Some(hub) = weak.upgrade() else { return };
                let mut joined = Vec::with_capacity(events.iter().map(|e| e.1.len()).sum());
                for (_, text) in &events {
                    joined.extend_from_slice(text);
                }
                let last = events.iter().rev().find_map(|e| e.0);
                hub.publish(Batch {
                    events,
                    joined: Bytes::from(joined),
                    last,
                });
            }
            if let Some(hub) = weak.upgrade() {
                hub.lock().sender = None;
            }
        });
        hub
    }

    /// How many browsers fell behind the broadcast so far.
    pub fn fell_behind(&self) -> u64 {
        self.fell_behind.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Under the lock, so a browser joining sees each batch either in the ring or on
    /// its receiver, never both and never neither.
    fn publish(&self, batch: Batch) {
        let batch = Arc::new(batch);
        let mut state = self.lock();
        state.ring.push_back(batch.clone());
        if state.ring.len() > RING
            && let Some(old) = state.ring.pop_front()
            && old.last.is_some()
        {
            state.horizon = old.last;
        }
        if let Some(sender) = &state.sender {
            let _ = sender.send(batch);
        }
    }

    /// The events after `after` from the ring, and a receiver of what comes next; `None`
    /// when the ring does not reach back that far (or the hub has stopped).
    /// With the events, the last position among them (`after` when there are none).
    fn join(&self, after: Option<Position>) -> Option<Joined> {
        let state = self.lock();
        let receiver = state.sender.as_ref()?.subscribe();
        let Some(after) = after else {
            return Some((Vec::new(), None, receiver));
        };
        if state.horizon.is_none_or(|horizon| horizon > after) {
            return None;
        }
        let mut backlog = Vec::new();
        let mut last = after;
        for batch in state
            .ring
            .iter()
            .filter(|b| b.last.is_some_and(|l| l > after))
        {
            last = batch.last.unwrap_or(last);
            let events = batch.after(after);
            if !events.is_empty() {
                backlog.push(events);
            }
        }
        Some((backlog, Some(last), receiver))
    }

    /// A browser's events after `after` (durable mode): from the hub if it reaches back
    /// that far, else (and whenever it falls behind the hub) from a durable
    /// subscription of its own.
    pub async fn follow_durable(
        self: &Arc<Hub>,
        listener: &Listener,
        after: Position,
    ) -> pglisten::Result<BoxStream<'static, Bytes>> {
        let Some((backlog, last, receiver)) = self.join(Some(after)) else {
            return own_durable(listener, after).await;
        };
        let last = last.unwrap_or(after);
        enum Feed {
            Hub(broadcast::Receiver<Arc<Batch>>),
            Own(BoxStream<'static, Bytes>),
            Done,
        }
        struct Follow {
            feed: Feed,
            /// The last position taken from the hub.
            last: Position,
            listener: Listener,
            fell_behind: Arc<AtomicU64>,
        }
        let follow = Follow {
            feed: Feed::Hub(receiver),
            last,
            listener: listener.clone(),
            fell_behind: self.fell_behind.clone(),
        };
        let live = stream::unfold(follow, |mut f| async move {
            loop {
                match &mut f.feed {
                    Feed::Hub(receiver) => match receiver.recv().await {
                        // A batch the browser's position is inside of (it joined
                        // before the batch reached the hub) is cut at that position.
                        Ok(batch) => {
                            let events = batch.after(f.last);
                            f.last = batch.last.unwrap_or(f.last);
                            if !events.is_empty() {
                                return Some((events, f));
                            }
                        }
                        // Behind the hub, or the hub stopped: on its own from here.
                        Err(e) => {
                            if matches!(e, broadcast::error::RecvError::Lagged(_)) {
                                f.fell_behind.fetch_add(1, Ordering::Relaxed);
                            }
                            match own_durable(&f.listener, f.last).await {
                                Ok(own) => f.feed = Feed::Own(own),
                                Err(_) => {
                                    f.feed = Feed::Done;
                                    return Some((Bytes::from_static(RELOAD.as_bytes()), f));
                                }
                            }
                        }
                    },
                    Feed::Own(own) => return own.next().await.map(|b| (b, f)),
                    Feed::Done => return None,
                }
            }
        });
        Ok(stream::iter(backlog).chain(live).boxed())
    }

    /// A browser's events (plain mode); falling behind the hub is a gap: `reload`.
    pub fn follow_plain(self: &Arc<Hub>) -> Option<BoxStream<'static, Bytes>> {
        let (_, _, receiver) = self.join(None)?;
        let state = (receiver, self.fell_behind.clone());
        let live = stream::unfold(state, |(mut receiver, fell_behind)| async move {
            match receiver.recv().await {
                Ok(batch) => Some((batch.joined.clone(), (receiver, fell_behind))),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    fell_behind.fetch_add(1, Ordering::Relaxed);
                    Some((
                        Bytes::from_static(RELOAD.as_bytes()),
                        (receiver, fell_behind),
                    ))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        Some(live.boxed())
    }
}

/// A durable subscription of the browser's own, after `after`.
pub async fn own_durable(
    listener: &Listener,
    after: Position,
) -> pglisten::Result<BoxStream<'static, Bytes>> {
    let subscription = listener
        .subscribe_durable(CHANNEL, Cursor::After(after))
        .await?;
    Ok(subscription
        .filter_map(|event| {
            std::future::ready(match event {
                Event::Notification(n) => Some(change_event(n.position(), n.payload())),
                // Entries after the position are gone: the page must start again.
                Event::Error(e) if e.kind() == ErrorKind::Pruned => {
                    Some(Bytes::from_static(RELOAD.as_bytes()))
                }
                // Anything else is caught up by the subscription itself.
                _ => None,
            })
        })
        .boxed())
}
