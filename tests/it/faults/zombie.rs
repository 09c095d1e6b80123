//! Finding 8: a resumed zombie delivered stale messages. SIGSTOP for 12 s
//! with `lease_ttl = 5s`, then SIGCONT: the stopped relay finished its old
//! batch anyway, after the relay that took its partitions over had
//! delivered later messages of the same keys; on the ordered target 49 lines
//! went backwards for their key (key b01 n=10 written after n=539).
//!
//! Here two relays share a Postgres outbox of 4 partitions with an ordered
//! `file` target while a producer writes 20 keys, each message carrying its
//! place in its key's sequence. To stop a relay *while it holds a batch*
//! (read, not yet handed to the plugin) rather than at a random moment, the
//! test takes `ACCESS EXCLUSIVE` on `outbox_deliveries`, which an ordered
//! worker reads (`failure_state`) between reading a batch and delivering
//! it; once every worker waits on that lock, it stops one relay, lets go of
//! the lock, and continues the relay 12 s later. No key may go backwards in
//! the raw output, nothing is lost, and duplicates stay within the crash
//! bound of docs/reliability.md (`batch_size` per partition in flight).

use std::collections::HashMap;
use std::time::Duration;

use outbox_relay::NewMessage;
use outbox_relay::storage::Storage as _;
use outbox_relay_tests::{Scratch, eventually};
use sqlx::Connection as _;

use super::{
    Received, RecordingTarget, RelayProcess, leases_held, produce, relay_lines, route_all,
};

const KEYS: usize = 20;
const BATCH: usize = 20;
const PARTITIONS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_zombie_delivers_nothing_stale_on_an_ordered_target() {
    let scratch = Scratch::postgres().await;
    let database = scratch.pg_database().unwrap().to_string();
    let out = scratch.path().join("out");
    let config = scratch.write_config_with_relay(
        "relay.toml",
        &relay_lines("5s", "retention = \"0s\"\npartitions = 4"),
        &route_all(
            &out,
            &[RecordingTarget {
                lines: &format!("ordered = true\nbatch_size = {BATCH}"),
                ..RecordingTarget::file("ledger")
            }],
        ),
    );
    scratch
        .pg_storage()
        .await
        .ensure_partitions(PARTITIONS as u32)
        .await
        .unwrap();
    let pool = scratch.pg_pool().await;
    let survivor = RelayProcess::start(&config, &scratch.path().join("survivor.log"));
    let zombie = RelayProcess::start(&config, &scratch.path().join("zombie.log"));
    eventually(
        "the relays to share the partitions 2 and 2",
        Duration::from_secs(30),
        || async {
            (leases_held(&pool, "ledger", survivor.pid()).await == 2
                && leases_held(&pool, "ledger", zombie.pid()).await == 2)
                .then_some(())
        },
    )
    .await;

    let producer = produce(pool.clone(), 4_000, 10, Duration::from_millis(50), |i| {
        let key = format!("k{:02}", i % KEYS);
        let n = i / KEYS + 1;
        NewMessage::new(
            "tick",
            format!("{{\"key\":\"{key}\",\"n\":{n}}}").into_bytes(),
        )
        .with_key(key)
    });
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Catch every worker between reading a batch and delivering it. An
    // open transaction that has written (`horizon`) hides what commits after
    // it, so a backlog builds up in every partition; the lock is taken
    // (which gives `locker` a transaction id, after that backlog), then
    // `horizon` ends: the backlog becomes readable, and each worker reads a
    // batch of it and waits on the lock.
    let mut horizon = sqlx::PgConnection::connect(&scratch.database_url())
        .await
        .unwrap();
    sqlx::raw_sql("CREATE TABLE app_data (x int); BEGIN; INSERT INTO app_data VALUES (1)")
        .execute(&mut horizon)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut locker = sqlx::PgConnection::connect(&scratch.database_url())
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE outbox_deliveries IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();
    sqlx::raw_sql("COMMIT").execute(&mut horizon).await.unwrap();
    horizon.close().await.unwrap();
    let caught = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = $1 AND application_name = 'outbox-relay' AND wait_event_type = 'Lock'",
            )
            .bind(&database)
            .fetch_one(&pool)
            .await
            .unwrap();
            if waiting >= PARTITIONS as i64 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if caught.is_err() {
        let activity: Vec<String> = sqlx::query_scalar(
            "SELECT concat_ws(' | ', application_name, state, wait_event_type, left(query, 80))
             FROM pg_stat_activity WHERE datname = $1",
        )
        .bind(&database)
        .fetch_all(&pool)
        .await
        .unwrap();
        panic!("not every partition worker waits with a batch read: {activity:#?}");
    }
    zombie.signal("STOP");
    sqlx::raw_sql("COMMIT").execute(&mut locker).await.unwrap();
    locker.close().await.unwrap();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let taken_over = leases_held(&pool, "ledger", survivor.pid()).await;
    zombie.signal("CONT");

    let ids = producer.await.unwrap();
    let file = out.join("ledger.jsonl");
    let done = tokio::time::timeout(Duration::from_secs(30), async {
        while Received::read(&file).lost(&ids) > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    // Let a late stale batch land, if one is coming.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(survivor.stop().success());
    assert!(zombie.stop().success());

    let received = Received::read(&file);
    let mut highest: HashMap<String, i64> = HashMap::new();
    let mut backwards = Vec::new();
    for (line_no, line) in received.lines.iter().enumerate() {
        let key = line["payload"]["key"].as_str().unwrap().to_string();
        let n = line["payload"]["n"].as_i64().unwrap();
        let top = highest.entry(key.clone()).or_insert(0);
        if n < *top {
            backwards.push(format!(
                "line {}: key {key} n={n} after n={top}",
                line_no + 1
            ));
        }
        *top = (*top).max(n);
    }
    println!(
        "survivor held {taken_over} partitions before SIGCONT; {} lines, {} lost, {} duplicates, \
         {} backwards: {:?}",
        received.lines.len(),
        received.lost(&ids),
        received.duplicates(),
        backwards.len(),
        backwards.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(
        taken_over, PARTITIONS as i64,
        "the survivor took the stopped relay's partitions over"
    );
    assert!(
        backwards.is_empty(),
        "{} lines went backwards for their key, first: {:?}",
        backwards.len(),
        backwards.first()
    );
    assert!(done.is_ok(), "{} messages lost", received.lost(&ids));
    assert_eq!(received.torn, 0);
    let bound = BATCH * PARTITIONS;
    assert!(
        received.duplicates() <= bound,
        "{} duplicates, over batch_size per partition in flight ({bound})",
        received.duplicates()
    );
}
