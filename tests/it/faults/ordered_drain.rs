//! Finding 4: an ordered target on Postgres drained a one-key backlog at one
//! message per `poll_interval` (60 messages took 58.5 s at 1 s). After a
//! batch, an ordered worker must loop at once while rows remain.
//!
//! A backlog of 60 messages is written before the relay starts, with
//! `poll_interval = 5s`: at poll speed it would take minutes; the test wants
//! it all within 3 poll intervals of the first delivery, in key order.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use outbox_relay::NewMessage;
use outbox_relay::storage::Storage as _;
use outbox_relay_tests::{Scratch, eventually};

use super::{Received, RecordingTarget, RelayProcess, route_all};

const POLL: Duration = Duration::from_secs(5);
const BACKLOG: usize = 60;

async fn drain_backlog(keys: usize) {
    let scratch = Scratch::postgres().await;
    let out = scratch.path().join("out");
    let config = scratch.write_config_with_relay(
        "relay.toml",
        "poll_interval = \"5s\"\nlease_ttl = \"30s\"\npartitions = 4",
        &route_all(
            &out,
            &[RecordingTarget {
                lines: "ordered = true",
                ..RecordingTarget::file("ordered")
            }],
        ),
    );
    let storage = scratch.pg_storage().await;
    storage.ensure_partitions(4).await.unwrap();
    let messages: Vec<NewMessage> = (0..BACKLOG)
        .map(|i| {
            let key = format!("key-{}", i % keys);
            NewMessage::new(
                "tick",
                format!("{{\"key\":\"{key}\",\"n\":{i}}}").into_bytes(),
            )
            .with_key(key)
        })
        .collect();
    storage.save(&messages).await.unwrap();

    let file = out.join("ordered.jsonl");
    let relay = RelayProcess::start(&config, &scratch.path().join("relay.log"));
    eventually("the first delivery", Duration::from_secs(30), || async {
        (!Received::read(&file).lines.is_empty()).then_some(())
    })
    .await;
    let first = Instant::now();
    let drained = tokio::time::timeout(POLL * 3, async {
        while Received::read(&file).lines.len() < BACKLOG {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        first.elapsed()
    })
    .await;
    let drained = drained.unwrap_or_else(|_| {
        panic!(
            "{} of {BACKLOG} messages over {keys} key(s) delivered in 3 poll intervals ({:?}) \
             after the first: drained at poll speed",
            Received::read(&file).lines.len(),
            POLL * 3
        )
    });
    assert!(relay.stop().success());
    println!("{BACKLOG} messages over {keys} key(s) drained in {drained:?} after the first");

    let received = Received::read(&file);
    assert_eq!(received.torn, 0);
    assert_eq!(received.lines.len(), BACKLOG, "no duplicates");
    let ids: Vec<String> = messages.iter().map(|m| m.id.to_string()).collect();
    assert_eq!(received.lost(&ids), 0);
    let mut last: HashMap<String, i64> = HashMap::new();
    for line in &received.lines {
        let key = line["payload"]["key"].as_str().unwrap().to_string();
        let n = line["payload"]["n"].as_i64().unwrap();
        let before = last.insert(key.clone(), n);
        assert!(
            before.is_none_or(|b| b < n),
            "key {key}: n={n} after n={before:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_one_key_backlog_drains_at_batch_speed_on_postgres() {
    drain_backlog(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_ten_key_backlog_drains_at_batch_speed_on_postgres() {
    drain_backlog(10).await;
}
