//! Rows written by a producer in another language, with plain SQL, that the
//! relay cannot deliver: each becomes a dead letter with a clear reason, and
//! the good rows behind them are delivered as usual.

use std::time::Duration;

use outbox_relay_tests::{RunningRelay, Scratch, dead_letters, eventually, read_ids, read_jsonl};

const WAIT: Duration = Duration::from_secs(60);

/// One row as a producer in another language writes it.
struct Row {
    id: String,
    event_name: &'static str,
    partition_key: Option<String>,
    payload: Vec<u8>,
    headers: &'static str,
    /// What the dead letter's reason must say (none for a good row).
    reason: Option<&'static str>,
}

/// The bad rows, each between two good ones. `with_invalid_json` adds a row
/// whose headers are not JSON at all, which Postgres (`jsonb`) refuses at insert.
fn rows(with_invalid_json: bool) -> Vec<Row> {
    let row = |event_name, partition_key, payload, headers, reason| Row {
        id: uuid::Uuid::now_v7().to_string(),
        event_name,
        partition_key,
        payload,
        headers,
        reason,
    };
    let mut bad = vec![
        row(
            "bad.headers",
            None,
            b"{}".to_vec(),
            "[\"a\"]",
            Some("JSON object"),
        ),
        row(
            "bad.headers",
            None,
            b"{}".to_vec(),
            r#"{"n": 1}"#,
            Some("header \"n\" must be a string, found a number"),
        ),
        row("", None, b"{}".to_vec(), "{}", Some("event name is empty")),
        row(
            "bad.size",
            None,
            vec![b'x'; 10 * 1024 * 1024],
            "{}",
            Some("the payload is 10485760 bytes, over relay.max_payload_bytes"),
        ),
        row(
            "bad.key",
            Some("k".repeat(100 * 1024)),
            b"{}".to_vec(),
            "{}",
            Some("the partition key is 102400 bytes, over relay.max_key_bytes"),
        ),
    ];
    if with_invalid_json {
        bad.insert(
            0,
            row(
                "bad.headers",
                None,
                b"{}".to_vec(),
                "not json",
                Some("headers are not valid JSON"),
            ),
        );
    }
    let mut out = Vec::new();
    for (i, b) in bad.into_iter().enumerate() {
        out.push(row(
            "good.row",
            None,
            format!("{{\"i\":{i}}}").into_bytes(),
            "{}",
            None,
        ));
        out.push(b);
        out.push(row(
            "good.row",
            Some(format!("k{i}")),
            b"{}".to_vec(),
            "{}",
            None,
        ));
    }
    out
}

fn config(scratch: &Scratch) -> outbox_relay::config::Config {
    scratch.load_config(&format!(
        r#"
[[routes]]
events = ["*"]
targets = ["audit"]

[targets.audit]
plugin = "file"
batch_size = 4
config = {{ path = "/out/audit.jsonl" }}
sandbox = {{ dirs = {{ "/out" = "{}" }} }}
"#,
        scratch.path().join("out").display()
    ))
}

/// Runs the relay over `rows` (already committed) and checks the outcome.
async fn check(scratch: &Scratch, storage: &dyn outbox_relay::storage::Storage, rows: &[Row]) {
    let relay = RunningRelay::start(&config(scratch)).await;
    let file = scratch.path().join("out/audit.jsonl");
    let good: Vec<&str> = rows
        .iter()
        .filter(|r| r.reason.is_none())
        .map(|r| r.id.as_str())
        .collect();
    let bad: Vec<&Row> = rows.iter().filter(|r| r.reason.is_some()).collect();
    eventually("every good row delivered", WAIT, || async {
        (read_jsonl(&file).len() >= good.len()).then_some(())
    })
    .await;
    let dead = eventually("every bad row dead-lettered", WAIT, || async {
        let d = dead_letters(storage, "audit").await;
        (d.len() >= bad.len()).then_some(d)
    })
    .await;
    assert!(relay.is_running());
    relay.stop().await;

    let delivered: Vec<String> = read_ids(&file);
    assert_eq!(delivered, good, "every good row, once, in order");
    assert_eq!(dead.len(), bad.len());
    for row in bad {
        let d = dead
            .iter()
            .find(|d| d.message_id == row.id)
            .unwrap_or_else(|| panic!("{} was not dead-lettered", row.id));
        let reason = row.reason.unwrap_or_default();
        assert!(
            d.last_error.contains(reason),
            "the reason for {} should say {reason:?}: {}",
            row.id,
            d.last_error
        );
    }
}

#[tokio::test]
async fn bad_rows_on_postgres_are_dead_lettered_with_their_reason_and_block_nothing() {
    let scratch = Scratch::postgres().await;
    let storage = scratch.pg_storage().await;
    let rows = rows(false);
    let mut tx = scratch.pg_pool().await.begin().await.unwrap();
    for r in &rows {
        sqlx::query(
            "INSERT INTO outbox_messages (id, event_name, partition_key, payload, headers) \
             VALUES ($1::uuid, $2, $3, $4, $5::jsonb)",
        )
        .bind(&r.id)
        .bind(r.event_name)
        .bind(&r.partition_key)
        .bind(&r.payload)
        .bind(r.headers)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    check(&scratch, &storage, &rows).await;
}

#[tokio::test]
async fn bad_rows_on_sqlite_are_dead_lettered_with_their_reason_and_block_nothing() {
    let scratch = Scratch::new();
    let storage = scratch.storage().await;
    let rows = rows(true);
    let mut tx = storage.pool().begin().await.unwrap();
    for r in &rows {
        sqlx::query(
            "INSERT INTO outbox_messages (id, event_name, partition_key, payload, headers) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&r.id)
        .bind(r.event_name)
        .bind(&r.partition_key)
        .bind(&r.payload)
        .bind(r.headers)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    check(&scratch, &storage, &rows).await;
}
