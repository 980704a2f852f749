//! Where the background task runs (see [`TaskPlacement`]): on a thread of its own with a
//! single-threaded tokio runtime, or as a task of the caller's runtime. Either way the
//! caller gets the same handles back.
//!
//! On a thread of its own the task owns every socket and timer it uses: the first
//! connection is made there too, because a socket belongs to the runtime whose reactor
//! registered it.

use std::sync::Arc;

use tokio::runtime::{Handle, Runtime, RuntimeFlavor};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::{Command, Worker, batches_per_poll};
use crate::config::{ListenerConfig, TaskPlacement};
use crate::connect::{Session, open_session};
use crate::error::{Error, ErrorKind, Result};
use crate::stats::{ListenerState, Status};
use crate::telemetry::ListenerMetrics;

/// What a handle needs to talk to a started task.
pub(crate) struct Started {
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) status: Arc<Status>,
    pub(crate) config: Arc<ListenerConfig>,
    /// Where the listener's other background work (the durable reader) runs: next to
    /// the connection's task, on its own thread or on the caller's runtime.
    pub(crate) background: Background,
}

/// Spawns background tasks where the listener's task runs. On the listener's own
/// thread, the thread keeps its runtime until they have ended too.
#[derive(Debug, Clone)]
pub(crate) struct Background {
    runtime: Handle,
    tracker: TaskTracker,
}

impl Background {
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        // On a runtime that has shut down (the listener's thread ended), the task is
        // dropped at once: whoever waits on it sees it gone.
        drop(self.tracker.spawn_on(task, &self.runtime));
    }
}

/// [`TaskPlacement`] resolved against where `connect` was called.
enum Place {
    /// With the runtime the thread will drive, made before the thread so that its handle
    /// is known at once.
    OwnThread(Runtime),
    Caller(Handle),
}

impl Place {
    fn handle(&self) -> Handle {
        match self {
            Place::OwnThread(runtime) => runtime.handle().clone(),
            Place::Caller(handle) => handle.clone(),
        }
    }

    fn resolve(placement: TaskPlacement) -> Result<Place> {
        let current = Handle::try_current().ok();
        match (placement, current) {
            (TaskPlacement::CallerRuntime, Some(handle)) => Ok(Place::Caller(handle)),
            (TaskPlacement::CallerRuntime, None) => Err(Error::new(
                ErrorKind::Config,
                "TaskPlacement::CallerRuntime needs connect to be called from within a tokio \
                 runtime; call it inside one, or choose TaskPlacement::OwnThread",
            )),
            (TaskPlacement::Auto, Some(handle))
                if handle.runtime_flavor() == RuntimeFlavor::CurrentThread =>
            {
                Ok(Place::Caller(handle))
            }
            _ => own_runtime().map(Place::OwnThread),
        }
    }
}

/// The runtime of a listener's own thread: a single-threaded one.
fn own_runtime() -> Result<Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Error::with_source(
                ErrorKind::Connect,
                "could not create the listener's runtime (the system refused a timer or an \
                 I/O driver): the process may be out of file descriptors",
                e,
            )
        })
}

/// The worker and the handles to it, before it runs.
fn prepare(config: &Arc<ListenerConfig>, place: &Place) -> (Worker, Started, TaskTracker) {
    let (commands, receiver) = mpsc::unbounded_channel();
    let status = Arc::new(Status::with_metrics(ListenerMetrics::register(
        &config.metrics_label,
    )));
    let batches_per_poll = batches_per_poll(match place {
        Place::Caller(handle) => Some(handle.runtime_flavor()),
        Place::OwnThread(_) => None,
    });
    let worker = Worker::new(config.clone(), receiver, status.clone(), batches_per_poll);
    let tracker = TaskTracker::new();
    let started = Started {
        commands,
        status,
        config: config.clone(),
        background: Background {
            runtime: place.handle(),
            tracker: tracker.clone(),
        },
    };
    (worker, started, tracker)
}

/// Connects (failing fast, as `ListenerBuilder::connect` promises), then starts the
/// task with that connection.
pub(crate) async fn start_connected(config: Arc<ListenerConfig>) -> Result<Started> {
    let place = Place::resolve(config.task_placement)?;
    let (worker, started, background) = prepare(&config, &place);
    match place {
        Place::Caller(handle) => {
            let session = open_session(&config.connect).await?;
            announce(&started.status, &session);
            handle.spawn(run(worker, Some(session), &config));
        }
        Place::OwnThread(runtime) => {
            let (reply, connected) = oneshot::channel();
            let status = started.status.clone();
            let first = {
                let config = config.clone();
                async move {
                    match open_session(&config.connect).await {
                        Ok(session) => {
                            announce(&status, &session);
                            // The caller gave up waiting (its future was dropped): stop.
                            reply.send(Ok(())).ok().map(|()| session)
                        }
                        Err(error) => {
                            let _ = reply.send(Err(error));
                            None
                        }
                    }
                }
            };
            let task = {
                let config = config.clone();
                async move {
                    if let Some(session) = first.await {
                        run(worker, Some(session), &config).await;
                    }
                }
            };
            spawn_thread(&config, runtime, background, task)?;
            match connected.await {
                Ok(result) => result?,
                // The thread ended without answering: it panicked (the panic hook has
                // reported it).
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::Closed,
                        "the listener's thread stopped while connecting",
                    ));
                }
            }
        }
    }
    Ok(started)
}

/// Starts the task without a connection: it connects in the background.
pub(crate) fn start_lazy(config: Arc<ListenerConfig>) -> Result<Started> {
    let place = Place::resolve(config.task_placement)?;
    let (worker, started, background) = prepare(&config, &place);
    match place {
        Place::Caller(handle) => {
            handle.spawn(run(worker, None, &config));
        }
        Place::OwnThread(runtime) => {
            let task = run(worker, None, &config);
            spawn_thread(&config, runtime, background, task)?;
        }
    }
    Ok(started)
}

/// Known as soon as `connect` returns: a caller may read them at once.
fn announce(status: &Status, session: &Session) {
    status.set_backend_pid(Some(session.backend_pid));
    status.set_state(ListenerState::Syncing);
}

/// The task's whole life, in the listener's span.
fn run(
    worker: Worker,
    first: Option<Session>,
    config: &ListenerConfig,
) -> impl Future<Output = ()> + Send + 'static {
    let span = tracing::info_span!("pglisten", target = config.connect.target());
    // Outside the cooperative budget: the task yields by itself (see `batches_per_poll`).
    tokio::task::coop::unconstrained(worker.run(first).instrument(span))
}

/// Runs `task` on a new thread that drives `runtime` until the task, then every task of
/// `background`, has ended; the runtime ends with the thread. The thread logs through
/// the caller's current `tracing` dispatcher, so a subscriber set for the caller's scope
/// sees the task's events too.
fn spawn_thread(
    config: &ListenerConfig,
    runtime: Runtime,
    background: TaskTracker,
    task: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    std::thread::Builder::new()
        .name("pglisten".to_owned())
        .spawn(move || {
            let _logging = tracing::dispatcher::set_default(&dispatch);
            // Spawned, not polled by `block_on` itself. Under `block_on`'s waker the
            // connection replaced its stored waker on every `poll_message` (perf on the
            // drain: tokio's `clone_arc_raw` and `drop_arc_raw` once per message, about a
            // sixth of this thread's time): `Waker::will_wake` found the stored clone
            // unequal to `block_on`'s waker. A spawned task's waker compares equal to its
            // clones. A panic in the task ends the task, and the thread with it.
            let task = runtime.spawn(task);
            runtime.block_on(async {
                let _ = task.await;
                // The background tasks end soon after the listener (their streams end).
                background.close();
                background.wait().await;
            });
        })
        .map_err(|e| {
            Error::with_source(
                ErrorKind::Connect,
                format!(
                    "could not start the listener's thread for {} (the system refused a new \
                     thread): raise the process's thread limit, or choose \
                     TaskPlacement::CallerRuntime",
                    config.connect.target()
                ),
                e,
            )
        })?;
    Ok(())
}
