//! Finding 2: SQLite disk full left the relay stuck and flooding duplicates.
//! After `(code: 13) database or disk is full`, every connection failed with
//! `attempted to call begin_with at non-zero transaction depth`; once space
//! returned, each worker re-delivered its batch about every 20 ms (one
//! message arrived 3,201 times), and hundreds of messages stayed undelivered
//! until a restart.
//!
//! Here the database lives on a small tmpfs of its own. While the relay
//! drains a backlog, a ballast file fills the disk (real ENOSPC); 3 s later
//! the ballast goes. The same relay process must then deliver everything,
//! with duplicates within the documented bound (docs/operations.md: at most
//! 9 batches per partition) and no re-delivery storm.

use std::time::Duration;

use outbox_relay::storage::Storage as _;
use outbox_relay::storage::sqlite::SqliteStorage;
use outbox_relay_tests::{Scratch, config_text, enqueue, eventually};

use super::{Received, RecordingTarget, RelayProcess, Tmpfs, relay_lines, route_all};

const N: usize = 4_000;
const PARTITIONS: usize = 4;
const BATCH: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_disk_full_recovers_without_restart_and_without_a_redelivery_storm() {
    let scratch = Scratch::new();
    // Declared after the scratch: unmounted before its directory is removed.
    let disk = Tmpfs::mount(&scratch.path().join("disk"), 16 * 1024);
    let database = format!(
        "sqlite://{}",
        scratch.path().join("disk/outbox.db").display()
    );
    let out = scratch.path().join("out");
    let config = scratch.path().join("relay.toml");
    std::fs::write(
        &config,
        config_text(
            &database,
            &relay_lines("30s", "partitions = 4"),
            &route_all(
                &out,
                &[RecordingTarget {
                    plugin: "count",
                    config: ", sleep_ms = 50",
                    lines: &format!("batch_size = {BATCH}"),
                    ..RecordingTarget::file("counted")
                }],
            ),
        ),
    )
    .unwrap();
    let ids: Vec<String> = {
        let storage = SqliteStorage::connect(&database).await.unwrap();
        storage.migrate().await.unwrap();
        storage.ensure_partitions(PARTITIONS as u32).await.unwrap();
        let messages = enqueue(&storage, "thing.happened", N).await;
        storage.pool().close().await;
        messages.iter().map(|m| m.id.to_string()).collect()
    };
    let file = out.join("counted.jsonl");

    let mut relay = RelayProcess::start(&config, &scratch.path().join("relay.log"));
    eventually(
        "the first 200 deliveries",
        Duration::from_secs(30),
        || async { (Received::read(&file).lines.len() >= 200).then_some(()) },
    )
    .await;
    let ballast = disk.fill(0);
    eventually(
        "the relay to hit the full disk",
        Duration::from_secs(20),
        || async { (relay.log_count("full") > 0).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let while_full = Received::read(&file).lines.len();
    std::fs::remove_file(&ballast).unwrap();

    let recovered = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if Received::read(&file).lost(&ids) == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let received = Received::read(&file);
    assert!(
        recovered.is_ok(),
        "{} of {N} messages still undelivered 30 s after the space was freed \
         ({} lines written, {while_full} when it was freed); the relay did not recover",
        received.lost(&ids),
        received.lines.len()
    );
    // A storm would go on after the last message arrived: give it a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = Received::read(&file);
    assert!(relay.is_running(), "the same relay process recovered");
    let log = relay.log();
    assert!(relay.stop().success());

    let bound = 9 * BATCH * PARTITIONS;
    let max_per_id = received.per_id().values().copied().max().unwrap_or(0);
    println!(
        "{} lines for {N} messages ({} duplicates, at most {max_per_id} of one message); \
         {while_full} delivered when the space was freed",
        received.lines.len(),
        received.duplicates()
    );
    assert!(
        !log.contains("non-zero transaction depth"),
        "a failed commit left a pooled connection inside a transaction"
    );
    assert_eq!(received.torn, 0);
    assert!(
        received.duplicates() <= bound,
        "{} duplicates, over the bound of 9 batches per partition ({bound})",
        received.duplicates()
    );
    assert!(
        received.lines.len() <= N + bound,
        "a re-delivery storm: {} lines for {N} messages",
        received.lines.len()
    );
}

/// Issue 20, item 11: the `file` target's error on a full disk said
/// `I/O error (os error 29)`, hiding the ENOSPC. Its retry reason must name it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_target_names_a_full_disk() {
    let scratch = Scratch::new();
    let disk = Tmpfs::mount(&scratch.path().join("out"), 1024);
    let config = scratch.write_config(&route_all(
        &scratch.path().join("out"),
        &[RecordingTarget {
            lines: r#"retry = { initial_backoff = "100ms", max_backoff = "200ms", max_attempts = 1000 }"#,
            ..RecordingTarget::file("sink")
        }],
    ));
    let storage = scratch.storage().await;
    let ballast = disk.fill(0);
    let messages = enqueue(&storage, "thing.happened", 5).await;
    let relay = RelayProcess::start(&config, &scratch.path().join("relay.log"));
    let reason: String = eventually(
        "the file target's retry reason",
        Duration::from_secs(20),
        || async {
            sqlx::query_scalar(
                "SELECT last_error FROM outbox_deliveries WHERE target = 'sink' LIMIT 1",
            )
            .fetch_optional(storage.pool())
            .await
            .unwrap()
        },
    )
    .await;
    std::fs::remove_file(&ballast).unwrap();
    let file = scratch.path().join("out/sink.jsonl");
    let ids: Vec<String> = messages.iter().map(|m| m.id.to_string()).collect();
    eventually(
        "delivery once the space is back",
        Duration::from_secs(20),
        || async { (Received::read(&file).lost(&ids) == 0).then_some(()) },
    )
    .await;
    assert!(relay.stop().success());
    assert!(
        reason.contains("No space left on device") || reason.contains("ENOSPC"),
        "the reason names the full disk: {reason}"
    );
}
