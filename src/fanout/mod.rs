//! The fan-out core (pure: no I/O, no tasks): routing each received notification to the
//! bounded queues of the subscriptions that want its channel.
//!
//! - `block`: the per-batch storage that notifications point into.
//! - `event`: the public [`Event`], [`Notification`] and [`ReconnectReport`].
//! - `mailbox`: one subscription's bounded queue, with its sticky control flags.
//! - `registry`: who wants which channel; batches, lag, and what to LISTEN next.

mod block;
mod event;
mod mailbox;
mod registry;

pub(crate) use block::{Block, BlockBuilder};
pub use event::{Event, Notification, ReconnectReport};
pub(crate) use mailbox::{Mailbox, Wake};
pub(crate) use registry::{FlushTotals, Incoming, LagChange, Registry, SubscriptionId, SyncPlan};
