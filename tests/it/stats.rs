//! What a listener reports about itself (`Listener::stats`), the operator's
//! `Listener::reconnect`, and the give-up policy of `Backoff`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use futures::StreamExt;
use pglisten::{Backoff, ErrorKind, Event, Listener, ListenerState, Subscription};
use pglisten_testkit::StopMode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_what_was_received_delivered_and_dropped() {
    let url = shared_url();
    let listener = Listener::builder(&url)
        .queue_capacity(4)
        .heartbeat(Duration::from_millis(200), Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    // Right after connect() the task may not have recorded its state yet (see
    // `backend_pid_and_state_are_known_as_soon_as_connect_returns`).
    eventually("the task records its state", || async {
        listener.stats().state == ListenerState::Listening
    })
    .await;
    let stats = listener.stats();
    assert_eq!(stats.backend_pid, listener.backend_pid());
    assert!(stats.backend_pid.is_some());
    assert_eq!(
        (
            stats.notifications_received,
            stats.notifications_delivered,
            stats.notifications_dropped,
            stats.reconnects,
            stats.subscriptions,
            stats.channels
        ),
        (0, 0, 0, 0, 0, 0),
        "{stats:?}"
    );

    let channel = unique("stats");
    let other = unique("stats_other");
    let mut first = listener.subscribe([&channel]).await.unwrap();
    let mut second = listener.subscribe([&channel, &other]).await.unwrap();
    let stats = listener.stats();
    assert_eq!((stats.subscriptions, stats.channels), (2, 2), "{stats:?}");

    // Heartbeats run every 200 ms: their figures appear.
    eventually("a heartbeat was recorded", || async {
        let s = listener.stats();
        s.heartbeat_rtt.is_some() && s.since_last_heartbeat.is_some()
    })
    .await;
    let stats = listener.stats();
    let usage = stats
        .server_queue_usage
        .expect("queue usage read by the heartbeat");
    assert!((0.0..=1.0).contains(&usage), "{usage}");
    assert!(stats.since_last_heartbeat.unwrap() < WAIT);

    // 10 notifications to 2 unread subscriptions with queues of 4: 8 queued, 12 dropped.
    let mut sender = admin(&url).await;
    let tx = sender.transaction().await.unwrap();
    for i in 0..10 {
        pglisten::notify(&tx, &channel, &i.to_string())
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    // The counters are updated by the task right after it hands a batch over: wait for
    // them rather than for the events.
    eventually("all 10 notifications were counted", || async {
        let s = listener.stats();
        s.notifications_received == 10 && s.notifications_delivered + s.notifications_dropped == 20
    })
    .await;
    let stats = listener.stats();
    assert_eq!(stats.notifications_delivered, 8, "{stats:?}");
    assert_eq!(stats.notifications_dropped, 12, "{stats:?}");
    for sub in [&mut first, &mut second] {
        for i in 0..4 {
            assert_eq!(next_notification(sub).await.payload(), i.to_string());
        }
        assert!(matches!(next_event(sub).await, Event::Lagged(6)));
    }

    // One more, read once, delivered to both.
    send(&sender, &channel, "more").await;
    assert_eq!(next_notification(&mut first).await.payload(), "more");
    assert_eq!(next_notification(&mut second).await.payload(), "more");
    eventually("the counters include it", || async {
        let s = listener.stats();
        (
            s.notifications_received,
            s.notifications_delivered,
            s.notifications_dropped,
        ) == (11, 10, 12)
    })
    .await;

    drop(second);
    eventually("the dropped subscription is gone", || async {
        let s = listener.stats();
        s.subscriptions == 1 && s.channels == 1
    })
    .await;

    listener.shutdown().await;
    let stats = listener.stats();
    assert_eq!(stats.state, ListenerState::Closed);
    assert_eq!(stats.backend_pid, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_request_gives_error_then_reconnected_on_a_new_backend() {
    let url = shared_url();
    let listener = Listener::connect(&url).await.unwrap();
    let channel = unique("reconnect_req");
    let mut sub = listener.subscribe([&channel]).await.unwrap();
    let admin = admin(&url).await;
    let old_pid = listener.backend_pid().expect("connected");

    for round in 1..=2u64 {
        let pid = listener.backend_pid().expect("connected");
        listener.reconnect().await.unwrap();
        match next_event(&mut sub).await {
            Event::Error(e) => assert_eq!(e.kind(), ErrorKind::ConnectionLost, "{e}"),
            other => panic!("expected the loss first, got {other:?}"),
        }
        match next_event(&mut sub).await {
            Event::Reconnected(report) => assert!(report.attempts() >= 1, "{report:?}"),
            other => panic!("expected Reconnected, got {other:?}"),
        }
        let new_pid = listener.backend_pid().expect("connected again");
        assert_ne!(new_pid, pid);
        send(&admin, &channel, "after").await;
        assert_eq!(next_notification(&mut sub).await.payload(), "after");
        eventually("the old backend has exited", || {
            let admin = &admin;
            async move { !backend_alive(admin, pid).await }
        })
        .await;
        let stats = listener.stats();
        assert_eq!(stats.reconnects, round, "{stats:?}");
        assert_eq!(stats.state, ListenerState::Listening);
    }
    assert_ne!(listener.backend_pid(), Some(old_pid));
    listener.shutdown().await;
    assert_eq!(
        listener.reconnect().await.unwrap_err().kind(),
        ErrorKind::Closed
    );
}

/// Everything a closed listener refuses.
async fn assert_closed(listener: &Listener) {
    let err = listener.subscribe([unique("late")]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    let err = listener.notify("late", "x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    let err = listener.listening_channels().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    assert_eq!(
        listener.reconnect().await.unwrap_err().kind(),
        ErrorKind::Closed
    );
    // The streams end a moment before the handle reports closed (see
    // `give_up_is_visible_on_the_handle_when_the_streams_end`).
    eventually("the handle reports closed", || async {
        listener.is_closed() && listener.stats().state == ListenerState::Closed
    })
    .await;
}

/// Reads a subscription to its end, returning the errors it yielded.
async fn errors_until_end(sub: &mut Subscription) -> Vec<pglisten::Error> {
    let mut errors = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, sub.next()).await {
            Ok(Some(Event::Error(e))) => errors.push(e),
            Ok(Some(other)) => panic!("only errors while the server is down: {other:?}"),
            Ok(None) => return errors,
            Err(_) => panic!("the subscription did not end within {WAIT:?}: {errors:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_gives_up_with_a_final_closed_error_to_every_subscription() {
    let cluster = Arc::new(own_cluster().await);
    let listener = Listener::builder(&cluster.url())
        .backoff(
            Backoff::new()
                .initial(Duration::from_millis(50))
                .max(Duration::from_millis(200))
                .max_attempts(3),
        )
        .connect()
        .await
        .unwrap();
    let mut read_live = listener.subscribe([unique("giveup_a")]).await.unwrap();
    let mut read_late = listener.subscribe([unique("giveup_b")]).await.unwrap();
    let c = cluster.clone();
    let stop = blocking(move || c.stop(StopMode::Fast));
    // One subscription is read while it happens, the other only afterwards.
    let (stopped, live_errors) = tokio::join!(stop, errors_until_end(&mut read_live));
    stopped.expect("stop");
    let late_errors = errors_until_end(&mut read_late).await;

    for errors in [&live_errors, &late_errors] {
        let kinds: Vec<ErrorKind> = errors.iter().map(|e| e.kind()).collect();
        // The loss, the failed attempts, then the final word. Unread errors are
        // coalesced (the first and the latest are kept), so a subscription read late
        // may not see every attempt.
        assert_eq!(kinds.first(), Some(&ErrorKind::ConnectionLost), "{kinds:?}");
        assert_eq!(kinds.last(), Some(&ErrorKind::Closed), "{kinds:?}");
        let attempts = &kinds[1..kinds.len() - 1];
        assert!(attempts.len() <= 3, "{kinds:?}");
        assert!(
            attempts.iter().all(|k| *k == ErrorKind::Connect),
            "{kinds:?}"
        );
        let last = errors.last().unwrap();
        assert!(
            error_report(last).contains("3 failed connection attempts"),
            "{last}"
        );
        // The cause is the last failed attempt.
        assert!(std::error::Error::source(last).is_some(), "{last:?}");
    }
    eprintln!("read live: {live_errors:?}");
    assert!(read_live.next().await.is_none(), "ended for good");
    assert!(read_late.next().await.is_none(), "ended for good");
    assert_closed(&listener).await;
    // Shutting down a listener that gave up returns at once.
    tokio::time::timeout(WAIT, listener.shutdown())
        .await
        .expect("shutdown after give-up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn give_up_after_closes_the_listener_once_the_outage_lasts_that_long() {
    let cluster = Arc::new(own_cluster().await);
    let limit = Duration::from_secs(2);
    let listener = Listener::builder(&cluster.url())
        .backoff(
            Backoff::new()
                .initial(Duration::from_millis(100))
                .max(Duration::from_millis(300))
                .give_up_after(limit),
        )
        .connect()
        .await
        .unwrap();
    let mut sub = listener.subscribe([unique("giveup_time")]).await.unwrap();
    let c = cluster.clone();
    let stopping = Instant::now();
    blocking(move || c.stop(StopMode::Fast))
        .await
        .expect("stop");

    let errors = errors_until_end(&mut sub).await;
    let kinds: Vec<ErrorKind> = errors.iter().map(|e| e.kind()).collect();
    assert_eq!(kinds.first(), Some(&ErrorKind::ConnectionLost), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&ErrorKind::Closed), "{kinds:?}");
    assert!(
        kinds[1..kinds.len() - 1]
            .iter()
            .all(|k| *k == ErrorKind::Connect),
        "{kinds:?}"
    );
    // It kept trying for the whole limit (several attempts), then stopped.
    assert!(kinds.len() >= 4, "{kinds:?}");
    assert!(stopping.elapsed() >= limit, "{:?}", stopping.elapsed());
    assert_closed(&listener).await;
}

/// A race: on a 2-core machine about a third of the rounds lose it, so 100 rounds show
/// it in every run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn give_up_is_visible_on_the_handle_when_the_streams_end() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let (mut not_yet, mut too_late) = (Vec::new(), 0);
    for round in 0..100 {
        let listener = Listener::builder(&url)
            .backoff(Backoff::new().max_attempts(1))
            .connect_lazy()
            .unwrap();
        // The only attempt is refused at once: the listener may give up even before
        // this subscription reaches it, which is fine.
        let mut sub = match listener.subscribe([unique("giveup_now")]).await {
            Ok(sub) => sub,
            Err(e) if e.kind() == ErrorKind::Closed => {
                too_late += 1;
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        let errors = errors_until_end(&mut sub).await;
        assert_eq!(errors.last().map(|e| e.kind()), Some(ErrorKind::Closed));
        // A consumer whose stream just ended asks the handle whether to rebuild it.
        let (closed, state) = (listener.is_closed(), listener.stats().state);
        if !closed || state != ListenerState::Closed {
            not_yet.push((round, closed, state));
        }
    }
    eprintln!("{too_late} of 100 subscribed after the give-up");
    assert!(
        not_yet.is_empty(),
        "streams ended but the handle did not report closed yet (round, is_closed, state): \
         {not_yet:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn backend_pid_and_state_are_known_as_soon_as_connect_returns() {
    // On a current-thread runtime the task has not run yet when connect() returns.
    let listener = Listener::connect(&shared_url()).await.unwrap();
    let stats = listener.stats();
    assert!(
        listener.backend_pid().is_some(),
        "connect() returned, so the connection is established: {stats:?}"
    );
    assert_ne!(stats.state, ListenerState::Connecting, "{stats:?}");
}
