//! Finding 9: one SQLite `database is locked` on an ack write made the
//! pipeline re-deliver 533 messages, with no crash. A transient error on an
//! acknowledgement must be retried in place and cost no re-delivery.
//!
//! Here a second connection holds the write lock (`BEGIN IMMEDIATE`) for
//! 12 s, longer than the relay's busy timeout (10 s), while the relay
//! drains a backlog; then lets go. Every message must arrive exactly once.
//! (`lease_ttl = 120s`: neither a lease renewal nor a heartbeat, both
//! writes, falls inside the 12 s, so the acknowledgements are what waits.)

use std::str::FromStr as _;
use std::time::Duration;

use outbox_relay_tests::{Scratch, enqueue, eventually};
use sqlx::Connection as _;

use super::{Received, RecordingTarget, RelayProcess, relay_lines, route_all};

const N: usize = 1_500;
const HOLD: Duration = Duration::from_secs(12);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_database_on_an_ack_write_costs_no_redelivery() {
    let scratch = Scratch::new();
    let out = scratch.path().join("out");
    let config = scratch.write_config_with_relay(
        "relay.toml",
        &relay_lines("120s", ""),
        &route_all(
            &out,
            &[RecordingTarget {
                plugin: "count",
                config: ", sleep_ms = 20",
                lines: "batch_size = 10",
                ..RecordingTarget::file("counted")
            }],
        ),
    );
    let storage = scratch.storage().await;
    let messages = enqueue(&storage, "thing.happened", N).await;
    let ids: Vec<String> = messages.iter().map(|m| m.id.to_string()).collect();
    let file = out.join("counted.jsonl");

    let relay = RelayProcess::start(&config, &scratch.path().join("relay.log"));
    eventually(
        "the first 100 deliveries",
        Duration::from_secs(30),
        || async { (Received::read(&file).lines.len() >= 100).then_some(()) },
    )
    .await;

    // Another writer takes the write lock and keeps it past the busy timeout.
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(&scratch.database_url())
        .unwrap()
        .busy_timeout(Duration::from_secs(30));
    let mut locker = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut locker)
        .await
        .unwrap();
    let locked_at = Received::read(&file).lines.len();
    tokio::time::sleep(HOLD).await;
    let before_release = Received::read(&file).lines.len();
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut locker)
        .await
        .unwrap();
    locker.close().await.unwrap();
    assert!(
        before_release < N,
        "the lock held the relay back (it delivered {before_release} of {N} while locked, \
         {locked_at} when the lock was taken)"
    );

    eventually(
        "every message delivered",
        Duration::from_secs(60),
        || async { (Received::read(&file).lost(&ids) == 0).then_some(()) },
    )
    .await;
    // Anything re-delivered would come right after the lock's release.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy_errors = relay.log_count("locked");
    assert!(relay.stop().success());
    let received = Received::read(&file);
    println!(
        "{} lines for {N} messages; {busy_errors} log lines about the lock",
        received.lines.len()
    );
    assert_eq!(received.torn, 0);
    assert_eq!(
        received.duplicates(),
        0,
        "re-deliveries caused by a busy database on the ack write"
    );
}
