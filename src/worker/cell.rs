//! The background task's future, kept where its subscriptions can poll it too.
//!
//! A consumer that has read everything queued for it would otherwise park and wait for
//! the task to read the next batch and wake it: two task switches per batch and, on a
//! multi-thread runtime, the batch handed from one worker thread to another. When the
//! task stopped with the connection still readable (it yielded between batches, or ran
//! out of tokio's cooperative budget), such a consumer instead polls the task's future
//! itself, in its own task, and reads its next batch while that is still in cache.
//!
//! It polls the same future the task polls, with the task's waker: every wake-up the
//! future arranges (socket, timers, commands) still reaches the task. And whenever the
//! hint says "readable", the task has been woken too (the read loop wakes it at every
//! early stop, tokio when the budget runs out), so the connection is drained whether or
//! not a consumer comes back. Whoever holds the cell polls; nobody waits for it. A
//! consumer that finds it busy parks on its queue (the holder is reading); the task,
//! finding it busy, leaves a flag that makes the holder wake it on release.
//!
//! A consumer polls only from a task of the listener's own runtime (the future's sockets
//! and timers belong to it); anywhere else it just waits for the task, as it always did.
//! A panic inside the future while a consumer polls it is contained: the future is
//! dropped, which ends every subscription's stream, as a panic in the task would.

use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::task::{Context, Poll, Waker};

type TaskFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Set by the task's future as it stops reading: whether the connection may still have
/// data ready (see [`ReadHint::set`]).
#[derive(Debug, Default)]
pub(crate) struct ReadHint {
    readable: AtomicBool,
    /// A consumer is polling the future (it reads one batch, then takes it).
    assisting: AtomicBool,
}

impl ReadHint {
    /// `readable`: the read loop stopped before the connection reported nothing more
    /// (a yield between batches, or the cooperative budget ran out).
    #[inline]
    pub(crate) fn set(&self, readable: bool) {
        self.readable.store(readable, Ordering::Relaxed);
    }

    /// A consumer is polling the future: stop reading after one batch.
    #[inline]
    pub(crate) fn assisting(&self) -> bool {
        self.assisting.load(Ordering::Relaxed)
    }
}

/// The background task's future and the waker of the task that owns it.
pub(crate) struct TaskCell {
    slot: Mutex<Slot>,
    /// The task found the cell held: the holder wakes it on release.
    task_wanted: AtomicBool,
    hint: Arc<ReadHint>,
    /// Only a consumer running on the task's runtime may poll the future: it owns that
    /// runtime's sockets and timers.
    runtime: tokio::runtime::Id,
}

struct Slot {
    future: Option<TaskFuture>,
    task_waker: Option<Waker>,
}

impl TaskCell {
    /// Must be called on the runtime the task will be spawned on.
    pub(crate) fn new(future: TaskFuture, hint: Arc<ReadHint>) -> Arc<TaskCell> {
        Arc::new(TaskCell {
            slot: Mutex::new(Slot {
                future: Some(future),
                task_waker: None,
            }),
            task_wanted: AtomicBool::new(false),
            hint,
            runtime: tokio::runtime::Handle::current().id(),
        })
    }

    /// The future to spawn: polls the cell until the task's future completes, and
    /// drops that future if the task is dropped first (a runtime shutting down).
    pub(crate) fn task(self: &Arc<Self>) -> CellTask {
        CellTask(self.clone())
    }

    fn try_lock(&self) -> Option<MutexGuard<'_, Slot>> {
        match self.slot.try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::WouldBlock) => None,
            // The future panicked while polled by a consumer; the task's drop (or its
            // next poll) discards it.
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        }
    }

    fn poll_from_task(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut slot = match self.try_lock() {
            Some(slot) => slot,
            None => {
                self.task_wanted.store(true, Ordering::SeqCst);
                // The holder may have released it before seeing the flag.
                match self.try_lock() {
                    Some(slot) => {
                        self.task_wanted.store(false, Ordering::Relaxed);
                        slot
                    }
                    None => return Poll::Pending,
                }
            }
        };
        match &slot.task_waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => slot.task_waker = Some(cx.waker().clone()),
        }
        let Some(future) = slot.future.as_mut() else {
            return Poll::Ready(());
        };
        if future.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let finished = slot.future.take();
        drop(slot);
        drop(finished);
        Poll::Ready(())
    }

    /// Consumer side, with nothing queued: polls the task's future in the caller's task
    /// if the connection may have data ready. Returns whether it did (the caller then
    /// looks at its queue again).
    #[inline]
    pub(crate) fn assist(&self) -> bool {
        if !self.hint.readable.load(Ordering::Relaxed) {
            return false;
        }
        self.assist_now()
    }

    #[cold]
    fn assist_now(&self) -> bool {
        // The future's sockets and timers belong to the task's runtime: not from another
        // runtime or executor (the task reads for such a consumer, as always).
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.id() == self.runtime => {}
            _ => return false,
        }
        let Ok(mut slot) = self.slot.try_lock() else {
            // Busy (someone is reading) or poisoned (the task discards it).
            return false;
        };
        let Slot {
            future: Some(future),
            task_waker: Some(waker),
        } = &mut *slot
        else {
            return false;
        };
        let waker = waker.clone();
        self.hint.assisting.store(true, Ordering::Relaxed);
        let polled = panic::catch_unwind(AssertUnwindSafe(|| {
            future.as_mut().poll(&mut Context::from_waker(&waker))
        }));
        self.hint.assisting.store(false, Ordering::Relaxed);
        // A future that panicked is discarded like one that finished: dropping it closes
        // every subscription's stream (the panic has been reported by the panic hook).
        let done = !matches!(polled, Ok(Poll::Pending));
        let finished = if done { slot.future.take() } else { None };
        drop(slot);
        drop(finished);
        if done || self.task_wanted.swap(false, Ordering::SeqCst) {
            waker.wake();
        }
        true
    }
}

/// The spawned task: see [`TaskCell::task`].
pub(crate) struct CellTask(Arc<TaskCell>);

impl Future for CellTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.poll_from_task(cx)
    }
}

impl Drop for CellTask {
    fn drop(&mut self) {
        let future = match self.0.slot.lock() {
            Ok(mut slot) => slot.future.take(),
            Err(poisoned) => poisoned.into_inner().future.take(),
        };
        drop(future);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl CountingWaker {
        fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// A future that counts its polls, finishes when told, and records its drop.
    struct Probe {
        polls: Arc<AtomicUsize>,
        finish: Arc<AtomicBool>,
        dropped: Arc<AtomicBool>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.finish.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    struct Fixture {
        cell: Arc<TaskCell>,
        hint: Arc<ReadHint>,
        polls: Arc<AtomicUsize>,
        finish: Arc<AtomicBool>,
        dropped: Arc<AtomicBool>,
    }

    /// A cell around a [`Probe`]; call inside a runtime.
    fn fixture() -> Fixture {
        let polls = Arc::new(AtomicUsize::new(0));
        let finish = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicBool::new(false));
        let hint = Arc::new(ReadHint::default());
        let probe = Probe {
            polls: polls.clone(),
            finish: finish.clone(),
            dropped: dropped.clone(),
        };
        Fixture {
            cell: TaskCell::new(Box::pin(probe), hint.clone()),
            hint,
            polls,
            finish,
            dropped,
        }
    }

    fn poll_task(task: &mut CellTask, waker: &Arc<CountingWaker>) -> Poll<()> {
        let waker = Waker::from(waker.clone());
        Pin::new(task).poll(&mut Context::from_waker(&waker))
    }

    #[tokio::test]
    async fn a_consumer_polls_the_future_only_when_the_connection_may_be_readable() {
        let f = fixture();
        let mut task = f.cell.task();
        let task_waker = Arc::new(CountingWaker::default());
        assert!(poll_task(&mut task, &task_waker).is_pending());
        assert_eq!(f.polls.load(Ordering::SeqCst), 1);

        assert!(!f.cell.assist(), "nothing readable: no poll");
        assert_eq!(f.polls.load(Ordering::SeqCst), 1);

        f.hint.set(true);
        assert!(f.cell.assist());
        assert_eq!(f.polls.load(Ordering::SeqCst), 2);
        assert_eq!(task_waker.count(), 0, "a pending future needs no wake-up");
    }

    #[tokio::test]
    async fn no_consumer_polls_before_the_task_has_given_its_waker() {
        let f = fixture();
        f.hint.set(true);
        assert!(!f.cell.assist());
        assert_eq!(f.polls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn no_consumer_polls_from_outside_the_tasks_runtime() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let f = runtime.block_on(async { fixture() });
        let mut task = f.cell.task();
        let task_waker = Arc::new(CountingWaker::default());
        runtime.block_on(async { assert!(poll_task(&mut task, &task_waker).is_pending()) });
        f.hint.set(true);

        // No runtime at all.
        assert!(!f.cell.assist());
        // Another runtime.
        let other = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        other.block_on(async { assert!(!f.cell.assist()) });
        assert_eq!(f.polls.load(Ordering::SeqCst), 1);
        // The task's own runtime.
        runtime.block_on(async { assert!(f.cell.assist()) });
        assert_eq!(f.polls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_future_finished_by_a_consumer_is_dropped_and_the_task_completes() {
        let f = fixture();
        let mut task = f.cell.task();
        let task_waker = Arc::new(CountingWaker::default());
        assert!(poll_task(&mut task, &task_waker).is_pending());
        f.hint.set(true);
        f.finish.store(true, Ordering::SeqCst);
        assert!(f.cell.assist());
        assert!(f.dropped.load(Ordering::SeqCst));
        assert_eq!(task_waker.count(), 1, "the task is woken to complete");
        assert!(poll_task(&mut task, &task_waker).is_ready());
        assert!(!f.cell.assist(), "nothing left to poll");
    }

    #[tokio::test]
    async fn dropping_the_task_drops_the_future() {
        let f = fixture();
        let mut task = f.cell.task();
        let task_waker = Arc::new(CountingWaker::default());
        assert!(poll_task(&mut task, &task_waker).is_pending());
        drop(task);
        assert!(f.dropped.load(Ordering::SeqCst));
        f.hint.set(true);
        assert!(!f.cell.assist());
    }

    #[tokio::test]
    async fn a_future_that_panics_under_a_consumer_is_dropped_not_propagated() {
        struct Panics(Arc<AtomicBool>);
        impl Future for Panics {
            type Output = ();
            fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
                if self.0.load(Ordering::SeqCst) {
                    panic!("worker bug (expected by this test)");
                }
                Poll::Pending
            }
        }
        let armed = Arc::new(AtomicBool::new(false));
        let hint = Arc::new(ReadHint::default());
        let cell = TaskCell::new(Box::pin(Panics(armed.clone())), hint.clone());
        let mut task = cell.task();
        let task_waker = Arc::new(CountingWaker::default());
        assert!(poll_task(&mut task, &task_waker).is_pending());
        armed.store(true, Ordering::SeqCst);
        hint.set(true);
        assert!(cell.assist());
        assert_eq!(task_waker.count(), 1);
        assert!(poll_task(&mut task, &task_waker).is_ready());
    }

    #[tokio::test]
    async fn a_task_that_finds_the_cell_held_is_woken_when_it_is_released() {
        // The future, polled by a consumer, polls the task meanwhile: the task finds the
        // cell held and must be woken once the consumer lets go.
        struct PollsTheTask {
            cell: Arc<std::sync::OnceLock<Arc<TaskCell>>>,
            task_waker: Arc<CountingWaker>,
            task_result: Arc<Mutex<Option<Poll<()>>>>,
            polls: usize,
        }
        impl Future for PollsTheTask {
            type Output = ();
            fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
                self.polls += 1;
                if self.polls == 2 {
                    let cell = self.cell.get().expect("cell set").clone();
                    let mut task = CellTask(cell);
                    let result = poll_task(&mut task, &self.task_waker);
                    std::mem::forget(task); // not the real task: do not drop the future
                    *self.task_result.lock().unwrap() = Some(result);
                }
                Poll::Pending
            }
        }
        let slot = Arc::new(std::sync::OnceLock::new());
        let task_waker = Arc::new(CountingWaker::default());
        let task_result = Arc::new(Mutex::new(None));
        let hint = Arc::new(ReadHint::default());
        let future = PollsTheTask {
            cell: slot.clone(),
            task_waker: task_waker.clone(),
            task_result: task_result.clone(),
            polls: 0,
        };
        let cell = TaskCell::new(Box::pin(future), hint.clone());
        slot.set(cell.clone()).ok().expect("set once");
        let mut task = cell.task();
        assert!(poll_task(&mut task, &task_waker).is_pending());
        hint.set(true);
        assert!(cell.assist());
        assert_eq!(*task_result.lock().unwrap(), Some(Poll::Pending));
        assert_eq!(task_waker.count(), 1, "woken on release");
    }
}
