//! Delivery against a real server that no test disturbs: subscribe, names, payloads,
//! fan-out, UNLISTEN, lag, isolation of slow consumers.

use crate::support::*;
use pglisten::{ErrorKind, Event, Listener};

#[tokio::test]
async fn notification_committed_right_after_subscribe_returns_is_delivered() {
    let url = shared_url();
    let listener = Listener::connect(&url).await.unwrap();
    let sender = admin(&url).await;
    // Repeat on fresh channels: a race between LISTEN and NOTIFY would show up.
    for round in 0..20 {
        let channel = unique("right_after");
        let mut sub = listener.subscribe([&channel]).await.unwrap();
        send(&sender, &channel, &round.to_string()).await;
        let n = next_notification(&mut sub).await;
        assert_eq!(
            (n.channel(), n.payload()),
            (channel.as_str(), round.to_string().as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_channel_names_are_kept_exactly() {
    let url = shared_url();
    let listener = Listener::connect(&url).await.unwrap();
    let sender = admin(&url).await;
    let suffix = unique("");
    let names = [
        format!("MixedCase{suffix}"),
        format!("with space{suffix}"),
        format!("quote\"d{suffix}"),
        format!("semi;colon; DROP TABLE x;--{suffix}"),
        format!("ünïcödé{suffix}"),
        format!("{suffix}{}", "x".repeat(63 - suffix.len())),
    ];
    assert_eq!(names[5].len(), 63);
    let lower = names[0].to_lowercase();
    let mut lower_sub = listener.subscribe([&lower]).await.unwrap();
    for name in &names {
        let mut sub = listener.subscribe([name]).await.unwrap();
        send(&sender, name, "via admin").await;
        listener.notify(name, "via listener").await.unwrap();
        let (a, b) = (
            next_notification(&mut sub).await,
            next_notification(&mut sub).await,
        );
        assert_eq!((a.channel(), a.payload()), (name.as_str(), "via admin"));
        assert_eq!((b.channel(), b.payload()), (name.as_str(), "via listener"));
    }
    let mut server_view = listener.listening_channels().await.unwrap();
    server_view.sort();
    assert!(server_view.contains(&lower));
    // Case matters: "MixedCase..." never reached the lower-case channel.
    send(&sender, &lower, "lower").await;
    assert_eq!(next_notification(&mut lower_sub).await.payload(), "lower");
}

#[tokio::test]
async fn channel_names_over_63_bytes_and_bad_names_are_refused_before_the_server() {
    let listener = Listener::connect(&shared_url()).await.unwrap();
    for bad in [
        "x".repeat(64),
        String::new(),
        "nul\0byte".to_owned(),
        "é".repeat(32),
    ] {
        let err = listener.subscribe([&bad]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidChannel, "{bad:?}: {err}");
        let err = listener.notify(&bad, "p").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidChannel, "{bad:?}: {err}");
    }
    let none: [&str; 0] = [];
    assert_eq!(
        listener.subscribe(none).await.unwrap_err().kind(),
        ErrorKind::InvalidChannel
    );
    // One bad name refuses the whole subscription, and the listener keeps working.
    let good = unique("good");
    let err = listener.subscribe([good.as_str(), ""]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidChannel);
    let mut sub = listener.subscribe([&good]).await.unwrap();
    listener.notify(&good, "still fine").await.unwrap();
    assert_eq!(next_notification(&mut sub).await.payload(), "still fine");
}

#[tokio::test]
async fn payload_of_7999_bytes_is_delivered_and_8000_refused() {
    let url = shared_url();
    let listener = Listener::connect(&url).await.unwrap();
    let channel = unique("payload");
    let mut sub = listener.subscribe([&channel]).await.unwrap();
    let big = "p".repeat(7999);
    listener.notify(&channel, &big).await.unwrap();
    assert_eq!(next_notification(&mut sub).await.payload(), big);

    let too_big = "p".repeat(8000);
    let err = listener.notify(&channel, &too_big).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidPayload);
    assert!(error_report(&err).contains("8000"), "{err}");
    let err = listener.notify(&channel, "nul\0").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidPayload);

    // The same rules through a caller's own transaction, delivered at commit.
    let mut client = admin(&url).await;
    let tx = client.transaction().await.unwrap();
    let err = pglisten::notify(&tx, &channel, &too_big).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidPayload);
    pglisten::notify(&tx, &channel, &big).await.unwrap();
    pglisten::notify(&tx, &channel, "second").await.unwrap();
    assert!(
        !has_ready_event(&mut sub),
        "nothing is delivered before commit"
    );
    tx.commit().await.unwrap();
    assert_eq!(next_notification(&mut sub).await.payload(), big);
    assert_eq!(next_notification(&mut sub).await.payload(), "second");
}

#[tokio::test]
async fn rolled_back_notification_is_never_delivered() {
    let url = shared_url();
    let listener = Listener::connect(&url).await.unwrap();
    let channel = unique("rollback");
    let mut sub = listener.subscribe([&channel]).await.unwrap();
    let mut client = admin(&url).await;
    let tx = client.transaction().await.unwrap();
    pglisten::notify(&tx, &channel, "rolled back")
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    send(&client, &channel, "committed").await;
    assert_eq!(next_notification(&mut sub).await.payload(), "committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_subscriptions_on_one_channel_each_get_every_notification() {
    let url = shared_url();
    let listener = Listener::connect(&url).await.unwrap();
    let channel = unique("fanout");
    let other = unique("other");
    let mut a = listener.subscribe([&channel]).await.unwrap();
    let mut b = listener
        .subscribe([channel.as_str(), other.as_str()])
        .await
        .unwrap();
    let sender = admin(&url).await;
    for i in 0..50 {
        send(&sender, &channel, &i.to_string()).await;
    }
    send(&sender, &other, "only b").await;
    for i in 0..50 {
        assert_eq!(next_notification(&mut a).await.payload(), i.to_string());
        assert_eq!(next_notification(&mut b).await.payload(), i.to_string());
    }
    let n = next_notification(&mut b).await;
    assert_eq!((n.channel(), n.payload()), (other.as_str(), "only b"));
    assert!(!has_ready_event(&mut a));
}

/// One burst, committed at once, that spans many of the listener's read batches (by
/// count and, with large payloads, by size), interleaving a busy and a quiet channel:
/// every subscription gets exactly its notifications, in order and intact, whether it
/// shares the batches' storage (busy, both) or gets copies of its few (quiet).
#[tokio::test]
async fn an_interleaved_burst_across_many_batches_reaches_each_subscription_in_order() {
    let url = shared_url();
    let listener = listener_with_queue(&url, 10_000).await;
    let (busy, quiet) = (unique("busy"), unique("quiet"));
    let mut only_busy = listener.subscribe([&busy]).await.unwrap();
    let mut only_quiet = listener.subscribe([&quiet]).await.unwrap();
    let mut both = listener
        .subscribe([busy.as_str(), quiet.as_str()])
        .await
        .unwrap();
    let sender = admin(&url).await;
    let sender_pid: i32 = sender
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // Every 10th on the quiet channel; every 50th with a 4000-byte payload.
    let expected: Vec<(String, String)> = (0..2000)
        .map(|i| {
            let channel = if i % 10 == 0 { &quiet } else { &busy };
            let payload = if i % 50 == 0 {
                format!("{i}:{}", "x".repeat(4000))
            } else {
                format!("{i}:ünïcödé")
            };
            (channel.clone(), payload)
        })
        .collect();
    let sql = format!(
        "DO $$ BEGIN FOR i IN 0..1999 LOOP PERFORM pg_notify(\
           CASE WHEN i % 10 = 0 THEN '{quiet}' ELSE '{busy}' END,\
           CASE WHEN i % 50 = 0 THEN i || ':' || repeat('x', 4000) \
                ELSE i || ':ünïcödé' END); \
         END LOOP; END $$"
    );
    sender.batch_execute(&sql).await.unwrap();

    for (sub, wanted) in [
        (&mut only_busy, vec![busy.as_str()]),
        (&mut only_quiet, vec![quiet.as_str()]),
        (&mut both, vec![busy.as_str(), quiet.as_str()]),
    ] {
        for (channel, payload) in expected
            .iter()
            .filter(|(c, _)| wanted.contains(&c.as_str()))
        {
            let n = next_notification(sub).await;
            assert!(
                n.channel() == channel && n.payload() == payload,
                "expected {channel} {payload:.30}..., got {} {:.30}...",
                n.channel(),
                n.payload()
            );
            assert_eq!(n.process_id(), sender_pid);
        }
        assert!(!has_ready_event(sub), "nothing more, and no Lagged");
    }
}

#[tokio::test]
async fn unlisten_is_sent_when_the_last_subscription_on_a_channel_is_dropped() {
    let listener = Listener::connect(&shared_url()).await.unwrap();
    let channel = unique("unlisten");
    let keep = unique("keep");
    let a = listener.subscribe([&channel]).await.unwrap();
    let b = listener
        .subscribe([channel.as_str(), keep.as_str()])
        .await
        .unwrap();
    let listening = || async { listener.listening_channels().await.unwrap() };
    let now = listening().await;
    assert_eq!(now.iter().filter(|c| **c == channel).count(), 1);
    assert!(now.contains(&keep));

    drop(a);
    // b still wants the channel: a LISTEN/UNLISTEN round trip later, it is still there.
    let probe = listener.subscribe([unique("probe")]).await.unwrap();
    assert!(listening().await.contains(&channel));
    drop(probe);

    drop(b);
    eventually("the channels are UNLISTENed", || async {
        let now = listening().await;
        !now.contains(&channel) && !now.contains(&keep)
    })
    .await;
}

#[tokio::test]
async fn own_notifications_come_back_with_the_listener_backend_pid() {
    let listener = Listener::connect(&shared_url()).await.unwrap();
    let channel = unique("own");
    let mut sub = listener.subscribe([&channel]).await.unwrap();
    listener.notify(&channel, "mine").await.unwrap();
    let n = next_notification(&mut sub).await;
    assert_eq!(Some(n.process_id()), listener.backend_pid());
}

#[tokio::test]
async fn lagged_accounting_is_exact_with_a_tiny_queue() {
    let Delivering {
        url,
        listener,
        channel,
        mut sender,
    } = Delivering::start(4, "lag").await;
    let mut tiny = listener.subscribe([&channel]).await.unwrap();
    // A second listener with a big queue tells us when all notifications have arrived.
    let witness_listener = listener_with_queue(&url, 10_000).await;
    let mut witness = witness_listener.subscribe([&channel]).await.unwrap();
    let sent = 500u64;
    let tx = sender.transaction().await.unwrap();
    for i in 0..sent {
        pglisten::notify(&tx, &channel, &i.to_string())
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    for i in 0..sent {
        assert_eq!(
            next_notification(&mut witness).await.payload(),
            i.to_string()
        );
    }
    // The listener routes what it reads in order; once the witness (another connection)
    // has everything, wait for the tiny subscription's count to reach `sent` exactly.
    let (mut delivered, mut lagged) = (Vec::new(), 0u64);
    while delivered.len() as u64 + lagged < sent {
        match next_event(&mut tiny).await {
            Event::Notification(n) => delivered.push(n.payload().parse::<u64>().unwrap()),
            Event::Lagged(k) => {
                assert!(k > 0);
                lagged += k;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(delivered.len() as u64 + lagged, sent);
    assert!(
        lagged > 0,
        "a queue of 4 must overflow with {sent} notifications"
    );
    assert!(
        delivered.windows(2).all(|w| w[0] < w[1]),
        "in order: {delivered:?}"
    );
    // After catching up, delivery resumes without a stale Lagged.
    send(&sender, &channel, "after").await;
    assert_eq!(next_notification(&mut tiny).await.payload(), "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscription_does_not_slow_another() {
    let Delivering {
        listener,
        channel,
        mut sender,
        ..
    } = Delivering::start(8, "stall").await;
    let mut stalled = listener.subscribe([&channel]).await.unwrap();
    let mut busy = listener.subscribe([&channel]).await.unwrap();
    let total = 2000u64;
    let producer = async {
        for batch in 0..(total / 100) {
            let tx = sender.transaction().await.unwrap();
            for i in 0..100 {
                pglisten::notify(&tx, &channel, &(batch * 100 + i).to_string())
                    .await
                    .unwrap();
            }
            tx.commit().await.unwrap();
        }
    };
    let consumer = async {
        // A reading consumer with a queue of 8 keeps up with batches of 100 only if
        // nothing waits on the stalled one; count what it got.
        let mut got = 0u64;
        let mut lost = 0u64;
        while got + lost < total {
            match next_event(&mut busy).await {
                Event::Notification(_) => got += 1,
                Event::Lagged(k) => lost += k,
                other => panic!("unexpected {other:?}"),
            }
        }
        (got, lost)
    };
    let ((), (got, lost)) = tokio::join!(producer, consumer);
    assert_eq!(got + lost, total);
    // The stalled one holds its 8 and has counted the rest.
    let mut held = 0u64;
    let mut dropped = 0u64;
    while held + dropped < total {
        match next_event(&mut stalled).await {
            Event::Notification(_) => held += 1,
            Event::Lagged(k) => dropped += k,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(held, 8, "the stalled queue keeps its capacity's worth");
    assert_eq!(dropped, total - 8);
    assert!(!has_ready_event(&mut stalled));
}

#[tokio::test]
async fn a_consumer_that_read_everything_is_not_told_it_lagged() {
    let Delivering {
        listener,
        channel,
        sender,
        ..
    } = Delivering::start(4, "no_spurious_lag").await;
    let mut sub = listener.subscribe([&channel]).await.unwrap();
    for round in 0..5 {
        for i in 0..4 {
            send(&sender, &channel, &format!("{round}-{i}")).await;
        }
        // Read all four, one at a time (a slow consumer working on each).
        for i in 0..4 {
            assert_eq!(
                next_notification(&mut sub).await.payload(),
                format!("{round}-{i}")
            );
        }
    }
    // Everything was read: one more fits.
    send(&sender, &channel, "one more").await;
    assert_eq!(next_notification(&mut sub).await.payload(), "one more");
}

/// A consumer on the listener's runtime reads the connection itself when its queue runs
/// dry; when it stops reading midway, the background task must carry on draining. The
/// second subscription is read on a thread outside any runtime, where a consumer never
/// reads the connection itself: it gets everything only if the task keeps reading.
async fn stop_reading_midway_then_read_from_outside() {
    let Delivering {
        listener,
        channel,
        sender,
        ..
    } = Delivering::start(10_000, "handover").await;
    let mut reader = listener.subscribe([&channel]).await.unwrap();
    let mut outside = listener.subscribe([&channel]).await.unwrap();
    let total = 5000u32;
    sender
        .batch_execute(&format!(
            "SELECT pg_notify('{channel}', g::text) FROM generate_series(1, {total}) g"
        ))
        .await
        .unwrap();
    // A few batches here, then this consumer stops (it stays alive, unread).
    for i in 1..=300 {
        assert_eq!(
            next_notification(&mut reader).await.payload(),
            i.to_string()
        );
    }
    let (done, finished) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let outcome = futures::executor::block_on(async {
            for i in 1..=total {
                match futures::StreamExt::next(&mut outside).await {
                    Some(Event::Notification(n)) if n.payload() == i.to_string() => {}
                    other => return Err(format!("expected notification {i}, got {other:?}")),
                }
            }
            Ok(outside)
        });
        let _ = done.send(outcome);
    });
    let outside = tokio::time::timeout(std::time::Duration::from_secs(60), finished)
        .await
        .expect("the task stopped draining the connection when the consumer stopped reading")
        .expect("the reading thread ended")
        .unwrap_or_else(|e| panic!("{e}"));
    drop((outside, reader));
}

#[tokio::test]
async fn a_consumer_that_stops_reading_midway_leaves_the_connection_to_the_task() {
    stop_reading_midway_then_read_from_outside().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_reading_midway_leaves_the_connection_to_the_task_multi_thread() {
    stop_reading_midway_then_read_from_outside().await;
}
