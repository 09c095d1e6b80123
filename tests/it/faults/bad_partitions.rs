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

/// Inserts a row whose `partition` is the SQL literal `partition`, on key `k`.
async fn insert_literal(
    pool: &sqlx::SqlitePool,
    partition: &str,
    n: usize,
) -> Result<String, String> {
    let id = uuid::Uuid::now_v7().to_string();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO outbox_messages (id, event_name, partition_key, partition, payload, headers)
         VALUES (?, 'order.created', 'k', {partition}, ?, '{{}}')"
    )))
    .bind(&id)
    .bind(format!("{{\"n\":{n}}}").into_bytes())
    .execute(pool)
    .await
    .map(|_| id)
    .map_err(|e| e.to_string())
}

/// Found by the attack on the fixes: a REAL partition (1.5) lay in no
/// partition's range and was skipped for good; a blob's reason named no
/// partition; and on an ordered target every bad row in a one-key backlog
/// was logged and counted as dead-lettered about once per message delivered
/// before it (each ordered step reads a batch and sends one message of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_partitions_in_an_ordered_backlog_are_refused_or_dead_lettered_once() {
    let scratch = Scratch::new();
    let out = scratch.path().join("out");
    let config = scratch.write_config_as(
        "relay.toml",
        "partitions = 4",
        &route_all(
            &out,
            &[RecordingTarget {
                lines: "ordered = true",
                ..RecordingTarget::file("sink")
            }],
        ),
    );
    let migrated = cli(&["migrate", "--config", config.to_str().unwrap()]).await;
    assert!(migrated.success, "migrate: {}", migrated.stderr);
    let storage = scratch.storage().await;
    let pool = storage.pool();

    let refused = insert_literal(pool, "1.5", 0).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("outbox_messages.partition must be a whole number")),
        "a partition of 1.5 is refused when written: {refused:?}"
    );
    // One key, all in partition 0 (the key's own partition does not matter
    // to the relay: it reads the column), with text and a blob among them.
    let mut good = Vec::new();
    let mut bad = HashMap::new();
    for n in 0..300 {
        match n {
            100 => bad.insert(insert_literal(pool, "'abc'", n).await.unwrap(), "abc"),
            200 => bad.insert(insert_literal(pool, "x'01'", n).await.unwrap(), "x'01'"),
            _ => {
                good.push(insert_literal(pool, "0", n).await.unwrap());
                None
            }
        };
    }
    let file = out.join("sink.jsonl");
    let relay = RelayProcess::start(&config, &scratch.path().join("relay.log"));
    eventually("the 298 good rows", Duration::from_secs(60), || async {
        (Received::read(&file).lost(&good) == 0).then_some(())
    })
    .await;
    let letters = eventually(
        "the 2 odd rows dead-lettered",
        Duration::from_secs(20),
        || async {
            let letters = dead_letters(&storage, "sink").await;
            (letters.len() >= 2).then_some(letters)
        },
    )
    .await;
    let logged = relay.log_count("malformed message dead-lettered");
    assert!(relay.stop().success());

    for letter in &letters {
        let shown = bad
            .get(&letter.message_id)
            .unwrap_or_else(|| panic!("a good row was dead-lettered: {letter:?}"));
        assert!(
            letter.last_error.contains(&format!("partition {shown}")),
            "the reason names partition {shown}: {:?}",
            letter.last_error
        );
    }
    assert_eq!(logged, 2, "each odd row is logged once as dead-lettered");
    let received = Received::read(&file);
    assert_eq!(received.duplicates(), 0);
    let order: Vec<String> = received
        .lines
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(order, good, "the key's messages in log order");
}
