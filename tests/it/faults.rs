//! Network and server faults, injected with the testkit's `FaultProxy` and `BlackHole`
//! or by stopping the server: what the consumer sees, and when.
//!
//! Restarts of the server with `-m fast` and `-m immediate` are covered in
//! `reconnect.rs`; the long mixed-fault run is `soak.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use futures::StreamExt;
use pglisten::{Backoff, DEFAULT_HEARTBEAT_TIMEOUT, ErrorKind, Event, Listener, ListenerState};
use pglisten_testkit::{BlackHole, StopMode};

/// Slack for a loaded machine on top of any bound the library promises.
const MARGIN: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_is_detected_within_the_heartbeat_bound_and_recovered() {
    let cluster = own_cluster().await;
    let (proxy, url) = proxy_to(&cluster).await;
    let (interval, timeout) = (Duration::from_millis(500), Duration::from_secs(1));
    let connect_timeout = Duration::from_secs(2);
    let listener = Listener::builder(&url)
        .heartbeat(interval, timeout)
        .connect_timeout(connect_timeout)
        .backoff(fast_backoff())
        .connect()
        .await
        .unwrap();
    let (mut sub, _, producer) = flowing(&listener, &cluster.url(), "stall").await;
    eventually("a first heartbeat was answered", || async {
        listener.stats().heartbeat_rtt.is_some()
    })
    .await;

    let stalled_at = Instant::now();
    proxy.stall();
    let error = expect_loss(&mut sub).await;
    let detected_after = stalled_at.elapsed();
    assert_eq!(error.kind(), ErrorKind::Timeout, "{error}");
    let bound = interval + timeout + MARGIN;
    assert!(
        detected_after <= bound,
        "stall detected after {detected_after:?}, bound {bound:?}"
    );
    eprintln!(
        "stall detected after {detected_after:?} (interval {interval:?} + timeout {timeout:?})"
    );

    // New connections through the stalled path hang after the TCP handshake: each
    // attempt is ended by the connect timeout and reported.
    let Event::Error(attempt) = next_event(&mut sub).await else {
        panic!("expected a failed attempt")
    };
    assert_eq!(attempt.kind(), ErrorKind::Timeout, "{attempt}");
    assert!(listener.backend_pid().is_none());

    proxy.pass();
    let (_, report) = reconnected_after_errors(&mut sub).await;
    assert!(report.attempts() >= 2, "{report:?}");
    assert!(report.downtime() >= connect_timeout, "{report:?}");
    expect_flow_after_gap(&mut sub, &producer).await;
    let stats = listener.stats();
    assert_eq!(stats.reconnects, 1, "{stats:?}");
    assert_eq!(stats.state, ListenerState::Listening);
    producer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_is_announced_and_recovered() {
    let cluster = own_cluster().await;
    let (proxy, listener) = listener_through_proxy(&cluster).await;
    let (mut sub, _, producer) = flowing(&listener, &cluster.url(), "cut").await;
    let admin = admin(&cluster.url()).await;
    for round in 1..=2u64 {
        next_notification(&mut sub).await;
        let pid = listener.backend_pid().expect("connected");
        proxy.cut();
        let error = expect_loss(&mut sub).await;
        assert_eq!(error.kind(), ErrorKind::ConnectionLost, "{error}");
        reconnected_after_errors(&mut sub).await;
        expect_flow_after_gap(&mut sub, &producer).await;
        assert_ne!(listener.backend_pid(), Some(pid));
        // The server side was reset too: the old backend goes away.
        eventually("the cut backend has exited", || {
            let admin = &admin;
            async move { !backend_alive(admin, pid).await }
        })
        .await;
        assert_eq!(listener.stats().reconnects, round);
    }
    assert!(proxy.accepted() >= 3, "{}", proxy.accepted());
    producer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_of_200ms_raises_no_false_alarm_with_the_default_timeouts() {
    let cluster = own_cluster().await;
    let (proxy, url) = proxy_to(&cluster).await;
    let delay = Duration::from_millis(200);
    proxy.latency(delay);
    // Default connect timeout, backoff and heartbeat timeout; only the interval is
    // shorter, to see several heartbeats in a few seconds.
    let listener = Listener::builder(&url)
        .heartbeat(Duration::from_secs(1), DEFAULT_HEARTBEAT_TIMEOUT)
        .connect()
        .await
        .expect("connects through a slow path within the default connect timeout");
    let channel = unique("latency");
    let mut sub = listener.subscribe([&channel]).await.unwrap();
    let producer = Producer::start(cluster.url(), channel.clone());

    // Run until several heartbeats have completed through the slow path: that is the
    // scenario. Any event but an in-order notification is a false alarm.
    let wanted_beats = 4;
    let (mut beats, mut last_since, mut received) = (0, None::<Duration>, 0u64);
    let mut last_payload = None::<u64>;
    let mut sampler = tokio::time::interval(Duration::from_millis(50));
    let deadline = Instant::now() + WAIT;
    while beats < wanted_beats {
        assert!(
            Instant::now() < deadline,
            "only {beats} heartbeats within {WAIT:?}"
        );
        tokio::select! {
            event = sub.next() => match event {
                Some(Event::Notification(n)) => {
                    let k: u64 = n.payload().parse().unwrap();
                    if let Some(prev) = last_payload {
                        assert!(k == prev + 1 || k == prev, "missed: {prev} -> {k}");
                    }
                    last_payload = Some(k);
                    received += 1;
                }
                Some(other) => panic!("false alarm under {delay:?} latency: {other:?}"),
                None => panic!("the subscription ended"),
            },
            _ = sampler.tick() => {
                // A heartbeat completed when the time since the last one went down.
                if let Some(since) = listener.stats().since_last_heartbeat {
                    if last_since.is_none_or(|prev| since < prev) {
                        beats += 1;
                    }
                    last_since = Some(since);
                }
            }
        }
    }
    let stats = listener.stats();
    let rtt = stats.heartbeat_rtt.expect("heartbeats happened");
    assert!(rtt >= 2 * delay, "rtt {rtt:?} must include the latency");
    assert_eq!(stats.reconnects, 0, "{stats:?}");
    assert_eq!(stats.state, ListenerState::Listening);
    assert!(received > 0, "notifications flow through the slow path");
    eprintln!("{beats} heartbeats, rtt {rtt:?}, {received} notifications under {delay:?} latency");
    producer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_fires_for_a_black_holed_host() {
    let hole = BlackHole::start().await.expect("black hole");
    let connect_timeout = Duration::from_secs(1);
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", hole.port());

    // Connect: the TCP handshake is never answered.
    let started = Instant::now();
    let err = Listener::builder(&url)
        .connect_timeout(connect_timeout)
        .connect()
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(took >= connect_timeout, "{took:?}");
    // Bounded by the connect timeout, not by the kernel's minutes of SYN retries.
    assert!(took <= connect_timeout + MARGIN, "{took:?}");

    // In the background, every attempt is reported as a timeout, and the stream goes on.
    let listener = Listener::builder(&url)
        .connect_timeout(connect_timeout)
        .backoff(fast_backoff())
        .connect_lazy()
        .unwrap();
    let mut sub = listener.subscribe([unique("hole")]).await.unwrap();
    for _ in 0..2 {
        match next_event(&mut sub).await {
            Event::Error(e) => assert_eq!(e.kind(), ErrorKind::Timeout, "{e}"),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }
    tokio::time::timeout(WAIT, listener.shutdown())
        .await
        .expect("shutdown does not wait behind a hanging attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_fires_when_the_server_never_answers() {
    // The TCP handshake completes, but the path is stalled: no answer to the startup
    // message.
    let cluster = own_cluster().await;
    let (proxy, url) = proxy_to(&cluster).await;
    proxy.stall();
    let connect_timeout = Duration::from_secs(1);
    let started = Instant::now();
    let err = Listener::builder(&url)
        .connect_timeout(connect_timeout)
        .connect()
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(
        took >= connect_timeout && took <= connect_timeout + MARGIN,
        "{took:?}"
    );
    proxy.pass();
    let listener = Listener::builder(&url)
        .connect_timeout(connect_timeout)
        .connect()
        .await
        .expect("the same path works once it passes traffic");
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_for_10s_backs_off_without_an_error_storm_then_recovers() {
    let cluster = Arc::new(own_cluster().await);
    let url = cluster.url();
    // The default schedule: 100 ms growing to 10 s, with full jitter.
    let listener = Listener::builder(&url)
        .backoff(Backoff::default())
        .connect()
        .await
        .unwrap();
    let (mut sub, _, producer) = flowing(&listener, &url, "down10").await;

    // Unread errors are coalesced, so read while the server is stopping too.
    let c = cluster.clone();
    let mut stopping = tokio::task::spawn_blocking(move || c.stop(StopMode::Fast));
    // The server stays down for 10 s once stopped: that is the scenario. Meanwhile,
    // record every event and when it came.
    let outage = Duration::from_secs(10);
    let mut until_back: Option<tokio::time::Instant> = None;
    let mut errors: Vec<(Instant, pglisten::Error)> = Vec::new();
    loop {
        let deadline = until_back.unwrap_or_else(|| tokio::time::Instant::now() + WAIT);
        tokio::select! {
            stopped = &mut stopping, if until_back.is_none() => {
                stopped.expect("stop panicked").expect("stop");
                until_back = Some(tokio::time::Instant::now() + outage);
            }
            event = tokio::time::timeout_at(deadline, sub.next()) => match event {
                Err(_) if until_back.is_some() => break,
                Err(_) => panic!("the server did not stop within {WAIT:?}"),
                Ok(Some(Event::Error(e))) => errors.push((Instant::now(), e)),
                Ok(Some(Event::Notification(_))) if errors.is_empty() => {}
                Ok(other) => panic!("unexpected while the server is down: {other:?}"),
            },
        }
    }
    let kinds: Vec<ErrorKind> = errors.iter().map(|(_, e)| e.kind()).collect();
    assert_eq!(kinds[0], ErrorKind::ConnectionLost, "{kinds:?}");
    assert!(
        kinds[1..].iter().all(|k| *k == ErrorKind::Connect),
        "{kinds:?}"
    );
    let gaps: Vec<Duration> = errors.windows(2).skip(1).map(|w| w[1].0 - w[0].0).collect();
    eprintln!(
        "{} errors in {outage:?}; gaps between failed attempts: {gaps:?}",
        errors.len()
    );
    // At least the attempts whose delay bounds add up to under 10 s (0, 0.1, 0.2, 0.4,
    // 0.8, 1.6 s) were made; a schedule that did not grow would make about 200.
    assert!(errors.len() >= 5, "{kinds:?}");
    assert!(
        errors.len() <= 25,
        "error storm: {} errors in {outage:?}",
        errors.len()
    );
    // The delays grew past the initial 100 ms: a schedule stuck at 100 ms cannot leave
    // 250 ms between two refused attempts. (Full jitter draws each delay uniformly below
    // its bound, so a threshold near the larger bounds fails by chance: 1 s did, in about
    // one run in fifty. All of the attempts with bounds 0.4, 0.8, 1.6, 3.2 and 6.4 s
    // drawing under 250 ms has a probability under 1e-4.)
    let longest = gaps.iter().max().copied().unwrap_or_default();
    assert!(longest >= Duration::from_millis(250), "{gaps:?}");

    let c = cluster.clone();
    blocking(move || c.start_again())
        .await
        .expect("start again");
    let (between, report) = reconnected_after_errors(&mut sub).await;
    assert!(between.len() <= 3, "{between:?}");
    assert!(report.downtime() >= outage, "{report:?}");
    assert!(
        report.attempts() as usize >= errors.len(),
        "{report:?} after {} failed attempts",
        errors.len() - 1
    );
    // Back to normal: no further errors, delivery in order.
    expect_flow_after_gap(&mut sub, &producer).await;
    assert_eq!(listener.stats().reconnects, 1);
    producer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_repairs_a_channel_unlistened_behind_the_listeners_back() {
    let url = shared_url();
    let admin = admin(&url).await;
    // The only way into the listener's own session is a statement it runs. A schema
    // first on its search_path shadows pg_notify with a function that runs
    // `UNLISTEN *` in that session: the registration is gone, the connection is fine.
    let schema = unique("sneaky");
    admin
        .batch_execute(&format!(
            "CREATE SCHEMA {schema};
             CREATE FUNCTION {schema}.pg_notify(channel text, payload text) RETURNS void
             LANGUAGE plpgsql AS $$
             BEGIN
                 IF payload = 'unlisten-all' THEN
                     UNLISTEN *;
                 ELSE
                     PERFORM pg_catalog.pg_notify(channel, payload);
                 END IF;
             END $$;"
        ))
        .await
        .unwrap();
    let separator = if url.contains('?') { '&' } else { '?' };
    let sneaky_url = format!("{url}{separator}options=-c%20search_path%3D{schema}%2Cpg_catalog");
    let interval = Duration::from_millis(500);
    let listener = Listener::builder(&sneaky_url)
        .heartbeat(interval, Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let channel = unique("repaired");
    let mut sub = listener.subscribe([&channel]).await.unwrap();
    send(&admin, &channel, "before").await;
    assert_eq!(next_notification(&mut sub).await.payload(), "before");
    let pid = listener.backend_pid();

    listener.notify(&channel, "unlisten-all").await.unwrap();
    // The repair is announced as a gap, without any error: nothing was lost but the
    // registration.
    match next_event(&mut sub).await {
        Event::Reconnected(report) => eprintln!("repaired: {report:?}"),
        other => panic!("expected Reconnected for the repair, got {other:?}"),
    }
    assert_eq!(listener.listening_channels().await.unwrap(), [&*channel]);
    send(&admin, &channel, "after").await;
    assert_eq!(next_notification(&mut sub).await.payload(), "after");
    let stats = listener.stats();
    assert_eq!(listener.backend_pid(), pid, "the same connection");
    assert_eq!(stats.reconnects, 0, "{stats:?}");
    listener.shutdown().await;
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_notification_is_an_error_and_a_reconnect_never_a_panic() {
    let cluster = own_cluster().await;
    let (proxy, listener) = listener_through_proxy(&cluster).await;
    let client = admin(&cluster.url()).await;
    a_malformed_notification_ends_the_connection(&proxy, &listener, &client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_unix_socket_too_pglisten_reads_the_notifications_itself() {
    // The same fault on a unix socket, which the driver alone used to read: only
    // pglisten's own reader names what was wrong (the driver reports a parse error).
    let cluster = own_cluster().await;
    let proxy_port = cluster.port().checked_add(1).unwrap_or(1);
    let proxy = pglisten_testkit::FaultProxy::start_unix(
        cluster.socket_dir(),
        proxy_port,
        ([127, 0, 0, 1], cluster.port()).into(),
    )
    .await
    .expect("a proxy on a unix socket");
    let url = format!(
        "host={} port={proxy_port} user=postgres dbname=postgres",
        cluster.socket_dir().display()
    );
    let listener = Listener::builder(&url)
        .backoff(fast_backoff())
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{}", error_report(&e)));
    assert!(proxy.accepted() >= 1, "the listener is on the unix socket");
    let client = admin(&cluster.url()).await;
    a_malformed_notification_ends_the_connection(&proxy, &listener, &client).await;
}

/// Injects a notification whose payload is not UTF-8 on the listener's connection
/// (through `proxy`): the stream shows an `Error` naming the fault, then `Reconnected`
/// on a new backend, and delivers again.
async fn a_malformed_notification_ends_the_connection(
    proxy: &pglisten_testkit::FaultProxy,
    listener: &Listener,
    client: &tokio_postgres::Client,
) {
    let channel = unique("malformed");
    let mut sub = listener.subscribe([&channel]).await.unwrap();
    send(client, &channel, "before").await;
    assert_eq!(next_notification(&mut sub).await.payload(), "before");
    let pid = listener.backend_pid().expect("connected");

    // A NotificationResponse on the subscribed channel whose payload is not UTF-8, as if
    // the server had sent it (the connection is idle, so it lands between messages).
    let mut body = 4242i32.to_be_bytes().to_vec();
    body.extend_from_slice(channel.as_bytes());
    body.push(0);
    body.extend_from_slice(b"\xff\xfe");
    body.push(0);
    let mut message = vec![b'A'];
    message.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    message.extend_from_slice(&body);
    proxy.inject_to_clients(&message);

    let (before, lost) = until(&mut sub, |e| matches!(e, Event::Error(_))).await;
    assert!(before.is_empty(), "{before:?}");
    let Event::Error(error) = lost else {
        unreachable!()
    };
    assert_eq!(error.kind(), ErrorKind::ConnectionLost, "{error}");
    assert!(
        error.to_string().contains("payload is not UTF-8"),
        "the error says what was wrong: {error}"
    );
    reconnected_after_errors(&mut sub).await;
    assert_ne!(listener.backend_pid(), Some(pid));
    send(client, &channel, "after").await;
    assert_eq!(next_notification(&mut sub).await.payload(), "after");
}

/// A listener that reaches `cluster` through a fault proxy, reconnecting fast.
async fn listener_through_proxy(
    cluster: &pglisten_testkit::Cluster,
) -> (pglisten_testkit::FaultProxy, Listener) {
    let (proxy, url) = proxy_to(cluster).await;
    let listener = Listener::builder(&url)
        .backoff(fast_backoff())
        .connect()
        .await
        .unwrap();
    (proxy, listener)
}
