//! Where the durable reader runs: next to the listener's task, so a consumer that blocks
//! its own thread holds up neither.

use std::time::Duration;

use futures::StreamExt;
use pglisten::durable::Cursor;
use pglisten::{Listener, TaskPlacement};

use super::{next_entry, own_cluster_and_journal};
use crate::support::*;

const ENTRIES: usize = 50;

/// A consumer blocks the only thread of a current-thread runtime while entries are
/// published from another thread: with the listener on a thread of its own, the durable
/// reader, which runs there too, queues every entry meanwhile. (On the consumer's
/// runtime it would stand still until the consumer let go.)
#[test]
fn a_consumer_blocking_its_thread_holds_up_no_durable_read_with_the_listener_on_its_own() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (cluster, _client, journal) = own_cluster_and_journal().await;
        let url = cluster.url();
        let channel = unique("dur_blocked");
        let listener = Listener::builder(&url)
            .task_placement(TaskPlacement::OwnThread)
            .connect()
            .await
            .unwrap();
        let mut sub = listener
            .subscribe_durable_in(&journal, &channel, Cursor::Now)
            .await
            .unwrap();

        let publisher = {
            let (url, journal, channel) = (url.clone(), journal.clone(), channel.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let client = admin(&url).await;
                    let mut last = None;
                    for i in 0..ENTRIES {
                        let position = journal
                            .publish(&client, &channel, &i.to_string())
                            .await
                            .unwrap();
                        last = Some(position);
                    }
                    last.expect("entries were published")
                })
            })
        };
        // From here until the reader has queued the last entry (or WAIT has passed), this
        // runtime's only thread is blocked.
        let last = publisher.join().expect("the publisher finished");
        let deadline = std::time::Instant::now() + WAIT;
        while sub.stats().last_position != Some(last) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            sub.stats().last_position,
            Some(last),
            "the durable reader stood still while the consumer blocked its thread"
        );
        for i in 0..ENTRIES {
            assert_eq!(next_entry(&mut sub).await.payload(), i.to_string());
        }
        // The reader ends with the listener, on its thread: the stream ends.
        listener.shutdown().await;
        let end = tokio::time::timeout(WAIT, sub.next()).await;
        assert!(
            matches!(end, Ok(None)),
            "the durable stream did not end: {end:?}"
        );
    });
}
