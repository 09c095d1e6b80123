//! Finding 3: the `file` target tore lines with no fault at all. SQLite,
//! 4 partitions, unordered, 2,000 messages: 14 corrupted lines at ~1.1 KB,
//! 30 at ~6 KB. Batch writes over about 64 KiB were split, and the partition
//! workers' writes interleaved in the one file.
//!
//! Here the same run, read back line by line: every line must parse as a
//! JSON object, and every message must be there once.

use std::time::Duration;

use outbox_relay::NewMessage;
use outbox_relay::storage::Storage as _;
use outbox_relay_tests::{Scratch, eventually};

use super::{Received, RecordingTarget, RelayProcess, route_all};

const MESSAGES: usize = 2_000;

async fn no_torn_lines(payload_bytes: usize) {
    let scratch = Scratch::new();
    let out = scratch.path().join("out");
    let config = scratch.write_config_as(
        "relay.toml",
        "partitions = 4",
        &route_all(&out, &[RecordingTarget::file("sink")]),
    );
    let storage = scratch.storage().await;
    storage.ensure_partitions(4).await.unwrap();
    let pad = "x".repeat(payload_bytes);
    let messages: Vec<NewMessage> = (0..MESSAGES)
        .map(|i| {
            NewMessage::new(
                "tick",
                format!("{{\"n\":{i},\"pad\":\"{pad}\"}}").into_bytes(),
            )
        })
        .collect();
    for chunk in messages.chunks(500) {
        storage.save(chunk).await.unwrap();
    }

    let relay = RelayProcess::start(&config, &scratch.path().join("relay.log"));
    eventually(
        "the sink to pass every message",
        Duration::from_secs(60),
        || async {
            let status = storage.status(&["sink".into()]).await.unwrap();
            (status[0].lag == 0 && status[0].retries_pending == 0).then_some(())
        },
    )
    .await;
    assert!(relay.stop().success());

    let received = Received::read(&out.join("sink.jsonl"));
    let ids: Vec<String> = messages.iter().map(|m| m.id.to_string()).collect();
    println!(
        "{} whole lines, {} torn, {} lost, {} duplicates",
        received.lines.len(),
        received.torn,
        received.lost(&ids),
        received.duplicates()
    );
    assert_eq!(
        received.torn, 0,
        "torn lines in the file target's output ({payload_bytes}-byte payloads)"
    );
    assert_eq!(received.lost(&ids), 0, "every message has a whole line");
    assert_eq!(received.duplicates(), 0, "no fault, no duplicate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_target_never_tears_6kb_lines() {
    no_torn_lines(6 * 1024).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_target_never_tears_1kb_lines() {
    no_torn_lines(1100).await;
}
