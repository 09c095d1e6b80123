//! Finding 6: SQLite rows with an out-of-range `partition` (7, -1 or 4096
//! with 4 partitions), written with plain SQL as a producer in another
//! language would, were never delivered, never dead-lettered and never
//! reported (`status` showed lag 0, and retention kept them forever).
//!
//! Here: while they sit, `status` must count them (not lag 0); once a relay
//! runs, each is dead-lettered with a reason that names its partition, and
//! the good rows around them are delivered once.

use std::collections::HashMap;
use std::time::Duration;

use outbox_relay_tests::{Scratch, dead_letters, eventually};

use super::{Received, RecordingTarget, RelayProcess, cli, route_all, status_json, status_of};

async fn insert(pool: &sqlx::SqlitePool, partition: i64, n: usize) -> (i64, String) {
    let id = uuid::Uuid::now_v7().to_string();
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO outbox_messages (id, event_name, partition_key, partition, payload, headers)
         VALUES (?, 'order.created', NULL, ?, ?, '{}') RETURNING seq",
    )
    .bind(&id)
    .bind(partition)
    .bind(format!("{{\"n\":{n}}}").into_bytes())
    .fetch_one(pool)
    .await
    .unwrap();
    (seq, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_partitions_are_dead_lettered_and_counted() {
    let scratch = Scratch::new();
    let out = scratch.path().join("out");
    let config = scratch.write_config_as(
        "relay.toml",
        "partitions = 4",
        &route_all(&out, &[RecordingTarget::file("sink")]),
    );
    let migrated = cli(&["migrate", "--config", config.to_str().unwrap()]).await;
    assert!(migrated.success, "migrate: {}", migrated.stderr);
    let storage = scratch.storage().await;
    let pool = storage.pool();

    let mut bad: HashMap<i64, i64> = HashMap::new(); // seq -> partition
    for (n, partition) in [7_i64, -1, 4096].into_iter().enumerate() {
        let (seq, _) = insert(pool, partition, n).await;
        bad.insert(seq, partition);
    }
    // While they sit (no relay yet), `status` must not call the target caught up.
    let status = status_json(&config).await;
    let sink = status_of(&status, "sink");
    assert!(
        sink["lag"].as_i64().unwrap() >= 3,
        "3 rows in partitions 7, -1 and 4096 are waiting, but status shows {sink}"
    );

    let mut good = Vec::new();
    for n in 0..8 {
        good.push(insert(pool, n % 4, 100 + n as usize).await.1);
    }
    let file = out.join("sink.jsonl");
    let relay = RelayProcess::start(&config, &scratch.path().join("relay.log"));
    let letters = eventually(
        "the 3 out-of-range rows to be dead-lettered",
        Duration::from_secs(20),
        || async {
            let letters = dead_letters(&storage, "sink").await;
            (letters.len() >= 3).then_some(letters)
        },
    )
    .await;
    eventually("the 8 good rows", Duration::from_secs(20), || async {
        (Received::read(&file).lines.len() >= 8).then_some(())
    })
    .await;
    assert!(relay.stop().success());

    assert_eq!(letters.len(), 3, "{letters:?}");
    for letter in &letters {
        let partition = bad
            .get(&letter.seq)
            .unwrap_or_else(|| panic!("a good row was dead-lettered: {letter:?}"));
        assert!(
            letter.last_error.contains("partition")
                && letter.last_error.contains(&partition.to_string()),
            "the reason names partition {partition}: {:?}",
            letter.last_error
        );
    }
    let received = Received::read(&file);
    assert_eq!(received.lines.len(), 8, "the good rows, once each");
    assert_eq!(received.lost(&good), 0);
    let status = status_json(&config).await;
    let sink = status_of(&status, "sink");
    assert_eq!(sink["dead_letters"], 3, "{sink}");
    assert_eq!(sink["lag"], 0, "{sink}");
}
