//! The connected half of the task: one hand-written poll function drives commands, the
//! in-flight LISTEN/UNLISTEN batch, requests, the heartbeat and the connection.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::time::Sleep;
use tokio_postgres::{AsyncMessage, SimpleQueryMessage};
use tracing::{debug, info, warn};

use super::command::Running;
use super::{Ack, Exit, Next, Phase, Query, Worker, log_lag};
use crate::connect::{
    Message, Session, WireBatch, close_gracefully, connection_lost, malformed_notification,
};
use crate::error::{Chain, Error, ErrorKind, Result};
use crate::fanout::{FlushTotals, SyncPlan, Wake};
use crate::heartbeat::{self, AlarmChange};
use crate::stats::ListenerState;

/// How far one call of `poll_messages` reads.
#[derive(Clone, Copy)]
enum Reading {
    /// Until nothing is ready or `Worker::batches_per_poll` batches were read.
    Serving,
    /// Shutting down: until nothing is ready, or `until` has passed.
    Final { until: Instant },
}

/// What one call of `poll_messages` read so far.
#[derive(Default)]
struct Read {
    received: u64,
    batches: u32,
}

/// The in-flight LISTEN/UNLISTEN batch.
struct SyncOp {
    query: Query<()>,
    plan: SyncPlan,
    acks: Vec<Ack>,
}

/// The in-flight heartbeat probe.
struct Probe {
    query: Query<Vec<SimpleQueryMessage>>,
    sent: Instant,
    deadline: Pin<Box<Sleep>>,
    /// `Serving::syncs_started` when sent: a sync started since makes the channel list
    /// stale.
    syncs_started: u64,
}

/// The state of one connected period.
pub(super) struct Serving {
    pub(super) session: Session,
    sync: Option<SyncOp>,
    syncs_started: u64,
    /// Subscribe acks waiting for the next sync to start.
    pub(super) waiting: Vec<Ack>,
    /// In-flight requests (notify, listening_channels); each replies by itself.
    pub(super) requests: FuturesUnordered<Running>,
    /// False until the first sync on this connection completed.
    listening: bool,
    /// The connect timeout also bounds the first sync.
    sync_deadline: Option<Pin<Box<Sleep>>>,
    /// A sync failed with a server error: wait for the next command before retrying.
    pub(super) replan_blocked: bool,
    next_heartbeat: Pin<Box<Sleep>>,
    probe: Option<Probe>,
    last_heartbeat: Option<Instant>,
    /// Notifications the tap read that are not routed yet (a read stopped part way).
    unrouted: Option<WireBatch>,
}

impl Serving {
    fn pending_acks(&mut self) -> impl Iterator<Item = Ack> + '_ {
        let in_flight = self.sync.take().map(|op| op.acks).unwrap_or_default();
        in_flight.into_iter().chain(self.waiting.drain(..))
    }
}

impl Worker {
    /// Connected: reconcile LISTENs, route notifications, run requests and heartbeats,
    /// until the connection is lost or the listener stops.
    pub(super) async fn serve(&mut self, session: Session) -> Exit {
        self.status.set_backend_pid(Some(session.backend_pid));
        self.status.set_state(ListenerState::Syncing);
        debug!(
            backend_pid = session.backend_pid,
            "connected; syncing LISTEN"
        );
        let heartbeat = self.config.heartbeat;
        let mut serving = Serving {
            session,
            sync: None,
            syncs_started: 0,
            waiting: Vec::new(),
            requests: FuturesUnordered::new(),
            listening: false,
            sync_deadline: self
                .config
                .connect
                .step_timeout()
                .map(|bound| Box::pin(tokio::time::sleep(bound))),
            replan_blocked: false,
            next_heartbeat: Box::pin(tokio::time::sleep(heartbeat.interval)),
            probe: None,
            last_heartbeat: None,
            unrouted: None,
        };
        let exit = std::future::poll_fn(|cx| self.poll_serve(cx, &mut serving)).await;
        match exit {
            Exit::Lost(error) => {
                // Their subscriptions are registered: they will get `Reconnected`.
                for ack in serving.pending_acks() {
                    let _ = ack.send(Ok(()));
                }
                Exit::Lost(error)
            }
            Exit::Stop => {
                for ack in serving.pending_acks() {
                    let _ = ack.send(Err(Error::closed()));
                }
                self.final_drain(&mut serving).await;
                self.registry.close_all();
                let Serving {
                    session,
                    requests,
                    probe,
                    ..
                } = serving;
                drop((requests, probe));
                close_gracefully(session).await;
                Exit::Stop
            }
        }
    }

    fn poll_serve(&mut self, cx: &mut Context<'_>, s: &mut Serving) -> Poll<Exit> {
        loop {
            while let Poll::Ready(command) = self.commands.poll_recv(cx) {
                let Some(command) = command else {
                    return Poll::Ready(Exit::Stop); // every handle is gone
                };
                match self.dispatch(command, Phase::Online(s)) {
                    Next::Continue => {}
                    Next::Reconnect => {
                        return Poll::Ready(Exit::Lost(Error::new(
                            ErrorKind::ConnectionLost,
                            "reconnecting as requested by Listener::reconnect",
                        )));
                    }
                    Next::Stop => return Poll::Ready(Exit::Stop),
                }
            }

            self.start_sync(s);
            let sync_result = match s.sync.as_mut() {
                Some(op) => op.query.as_mut().poll(cx),
                None => Poll::Pending,
            };
            let mut sync_finished = false;
            if let Poll::Ready(result) = sync_result
                && let Some(op) = s.sync.take()
            {
                sync_finished = true;
                if let Err(exit) = self.sync_done(s, op, result) {
                    return Poll::Ready(exit);
                }
            }

            while let Poll::Ready(Some(())) = s.requests.poll_next_unpin(cx) {}

            if let Err(exit) = self.poll_heartbeat(cx, s) {
                return Poll::Ready(exit);
            }

            if let Some(exit) = self.poll_messages(cx, s, Reading::Serving) {
                return Poll::Ready(exit);
            }

            if let Some(deadline) = s.sync_deadline.as_mut()
                && deadline.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Exit::Lost(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "LISTEN was not confirmed within {:?} ({}); reconnecting",
                        self.config.connect.step_timeout().unwrap_or_default(),
                        self.config.connect.timeout_source()
                    ),
                )));
            }

            // A finished sync may allow the next one (or acks) right away.
            if !sync_finished {
                return Poll::Pending;
            }
        }
    }

    /// Starts the next LISTEN/UNLISTEN batch if one is needed and none is in flight.
    /// When the server is in sync: acknowledges waiting subscriptions and announces
    /// the end of any gap.
    fn start_sync(&mut self, s: &mut Serving) {
        if s.sync.is_some() || s.replan_blocked {
            return;
        }
        match self.registry.plan() {
            Some(plan) => {
                let sql = plan.sql();
                let client = s.session.client.clone();
                debug!(
                    listen = plan.listen.len(),
                    unlisten = plan.unlisten.len(),
                    "syncing LISTEN"
                );
                s.syncs_started += 1;
                s.sync = Some(SyncOp {
                    query: Box::pin(async move { client.batch_execute(&sql).await }),
                    plan,
                    acks: std::mem::take(&mut s.waiting),
                });
            }
            None => {
                for ack in s.waiting.drain(..) {
                    let _ = ack.send(Ok(()));
                }
                let attempts = self.backoff.attempts();
                if !s.listening {
                    self.now_listening(s);
                }
                if self.registry.owes_reconnected() {
                    let (told, totals) = self.registry.announce_reconnected(
                        Instant::now(),
                        attempts,
                        &s.session.host,
                        log_lag,
                    );
                    self.count(totals);
                    info!(
                        subscriptions = told,
                        "LISTEN active again: sent Reconnected"
                    );
                }
            }
        }
    }

    /// The first sync on this connection is done: LISTEN is active for every wanted
    /// channel.
    fn now_listening(&mut self, s: &mut Serving) {
        s.listening = true;
        s.sync_deadline = None;
        if self.outage_since.take().is_some() {
            self.status.add_reconnect();
        }
        self.last_error = None;
        // A successful re-sync: the next outage starts its backoff over.
        self.backoff.reset();
        self.status.set_state(ListenerState::Listening);
        self.status.set_channels(self.registry.confirmed_count());
        info!(
            channels = self.registry.confirmed_count(),
            subscriptions = self.registry.len(),
            backend_pid = s.session.backend_pid,
            "listening"
        );
    }

    /// Handles the end of a LISTEN/UNLISTEN batch.
    fn sync_done(
        &mut self,
        s: &mut Serving,
        op: SyncOp,
        result: Result<(), tokio_postgres::Error>,
    ) -> Result<(), Exit> {
        match result {
            Ok(()) => {
                self.registry.confirm(&op.plan);
                self.status.set_channels(self.registry.confirmed_count());
                for ack in op.acks {
                    let _ = ack.send(Ok(()));
                }
                Ok(())
            }
            Err(e) if e.as_db_error().is_none() => {
                s.waiting.extend(op.acks);
                Err(Exit::Lost(connection_lost(Some(e))))
            }
            Err(e) => {
                let error = crate::connect::listen_refused(e);
                for ack in op.acks {
                    let _ = ack.send(Err(error.clone()));
                }
                if !s.listening {
                    // The connection cannot listen: treat it as a failed attempt.
                    return Err(Exit::Lost(error));
                }
                warn!(error = %Chain(&error), "LISTEN/UNLISTEN failed");
                s.replan_blocked = true;
                Ok(())
            }
        }
    }

    /// Runs the heartbeat: a probe every interval once listening, each bounded by the
    /// heartbeat timeout.
    fn poll_heartbeat(&mut self, cx: &mut Context<'_>, s: &mut Serving) -> Result<(), Exit> {
        let config = self.config.heartbeat;
        loop {
            if let Some(probe) = s.probe.as_mut() {
                match probe.query.as_mut().poll(cx) {
                    Poll::Ready(Ok(messages)) => {
                        let probe = s.probe.take().expect("probe in flight");
                        self.probe_answered(s, &probe, &messages);
                        let next = tokio::time::Instant::now() + config.interval;
                        s.next_heartbeat.as_mut().reset(next);
                    }
                    Poll::Ready(Err(e)) => {
                        return Err(Exit::Lost(connection_lost(Some(e))));
                    }
                    Poll::Pending => {
                        if probe.deadline.as_mut().poll(cx).is_ready() {
                            return Err(Exit::Lost(Error::new(
                                ErrorKind::Timeout,
                                format!(
                                    "the server did not answer a heartbeat within {:?}: the \
                                     connection is presumed dead; reconnecting",
                                    config.timeout
                                ),
                            )));
                        }
                        return Ok(());
                    }
                }
            }
            if !s.listening || s.sync.is_some() || s.next_heartbeat.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            let client = s.session.client.clone();
            s.probe = Some(Probe {
                query: Box::pin(async move { client.simple_query(heartbeat::PROBE_SQL).await }),
                sent: Instant::now(),
                deadline: Box::pin(tokio::time::sleep(config.timeout)),
                syncs_started: s.syncs_started,
            });
        }
    }

    fn probe_answered(&mut self, s: &mut Serving, probe: &Probe, messages: &[SimpleQueryMessage]) {
        let now = Instant::now();
        let answer = heartbeat::parse_probe(messages);
        self.status
            .record_heartbeat(now, now - probe.sent, answer.queue_usage);
        self.registry.publish_queues();
        if let Some(usage) = answer.queue_usage {
            match self.queue_alarm.observe(usage) {
                Some(AlarmChange::Raised) => warn!(
                    usage,
                    "the server's notification queue is {:.0}% full: a listener somewhere in \
                     the cluster is not reading; when it is full every NOTIFY fails",
                    usage * 100.0
                ),
                Some(AlarmChange::Cleared) => {
                    info!(usage, "the server's notification queue drained")
                }
                None => {}
            }
        }
        // A sync since the probe was sent makes its channel list stale.
        if probe.syncs_started == s.syncs_started && s.sync.is_none() {
            let missing = heartbeat::missing_channels(self.registry.confirmed(), &answer.channels);
            if !missing.is_empty() {
                let since = s.last_heartbeat.unwrap_or(probe.sent);
                let owed = self.registry.mark_gap(&missing, since);
                warn!(
                    missing = missing.len(),
                    subscriptions = owed,
                    "the server stopped listening to channels behind our back; re-LISTENing \
                     and announcing a gap"
                );
            }
        }
        s.last_heartbeat = Some(now);
    }

    /// Shutting down: delivers everything that reached the socket before `shutdown` was
    /// called. Reads until the connection has nothing ready, outside tokio's cooperative
    /// budget and without stopping between batches; bounded by the connect timeout, so a
    /// server that never stops sending cannot hold `shutdown` up.
    async fn final_drain(&mut self, s: &mut Serving) {
        let until = Instant::now() + self.config.connect.connect_timeout();
        tokio::task::coop::unconstrained(std::future::poll_fn(|cx| {
            // Whatever it ends with (nothing ready, the deadline, a lost connection),
            // the streams end next.
            let _ = self.poll_messages(cx, s, Reading::Final { until });
            Poll::Ready(())
        }))
        .await;
    }

    /// Reads the messages the connection has ready and delivers them in bounded batches.
    fn poll_messages(
        &mut self,
        cx: &mut Context<'_>,
        s: &mut Serving,
        reading: Reading,
    ) -> Option<Exit> {
        let mut read = Read::default();
        let exit = loop {
            // What the tap read comes first: nothing after it was read yet.
            if let Some(batch) = s.unrouted.as_mut() {
                let mut stop = None;
                while let Some(notification) = batch.next() {
                    match notification {
                        Ok(notification) => {
                            read.received += 1;
                            self.registry.route(notification);
                            if self.batch_read(cx, reading, &mut read) {
                                stop = Some(None);
                                break;
                            }
                        }
                        Err(malformed) => {
                            stop = Some(Some(Exit::Lost(malformed_notification(malformed))));
                            break;
                        }
                    }
                }
                if batch.is_done() {
                    s.unrouted = None;
                }
                if let Some(exit) = stop {
                    break exit;
                }
            }
            match s.session.messages.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(Message::Notifications(batch)))) => {
                    s.unrouted = Some(batch);
                }
                Poll::Ready(Some(Ok(Message::Driver(AsyncMessage::Notification(
                    notification,
                ))))) => {
                    read.received += 1;
                    self.registry.route(notification);
                    if self.batch_read(cx, reading, &mut read) {
                        break None;
                    }
                }
                Poll::Ready(Some(Ok(Message::Driver(AsyncMessage::Notice(notice))))) => {
                    debug!(code = notice.code().code(), %notice, "server notice");
                }
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(e))) => {
                    break Some(Exit::Lost(connection_lost(Some(e))));
                }
                Poll::Ready(None) => break Some(Exit::Lost(connection_lost(None))),
                // Nothing ready: the socket wakes the task.
                Poll::Pending => break None,
            }
        };
        // What arrived before a loss is delivered before the loss is announced.
        let totals = self.registry.flush(self.wake(), log_lag);
        self.count(totals);
        self.registry.wake_owed();
        self.status.add_received(read.received);
        exit
    }

    /// After routing one notification: delivers the batch once it is full, and says
    /// whether to stop reading for now.
    #[inline]
    fn batch_read(&mut self, cx: &mut Context<'_>, reading: Reading, read: &mut Read) -> bool {
        // Batches are bounded (see `block::MAX_ENTRIES`): an unbounded batch would hold
        // a whole burst in memory, and with the yield on a current-thread runtime
        // consumers read what they get while it is still in cache (BENCHMARKS.md, "How
        // the hot path got here", steps 5 and 8).
        if !self.registry.batch_full() {
            return false;
        }
        let totals = self.registry.flush(self.wake(), log_lag);
        self.count(totals);
        read.batches += 1;
        match reading {
            Reading::Serving if read.batches >= self.batches_per_poll => {
                // Read on after the others have run (queued where another worker can
                // take it: see `batches_per_poll`).
                cx.waker().wake_by_ref();
                true
            }
            Reading::Serving => false,
            Reading::Final { until } => Instant::now() >= until,
        }
    }

    /// Spawned on a current-thread runtime the task yields after each batch, so its
    /// consumers must be woken at once; elsewhere a consumer that caught up is woken
    /// once per read (or when its queue is half full), not once per batch.
    fn wake(&self) -> Wake {
        if self.batches_per_poll == 1 {
            Wake::Now
        } else {
            Wake::Later
        }
    }

    fn count(&self, totals: FlushTotals) {
        self.status
            .add_delivered_and_dropped(totals.queued, totals.dropped);
    }
}
