//! Finding 1: a rolling config change lost messages silently. Relay A
//! served `[t1]` with `retention = 1s`; relay B joined with `[t1, t2]`, 4
//! partitions, producers running. t2's partitions were dealt out among both
//! relays, so p1 and p3 went to A, which does not serve t2, and A pruned
//! those rows: t2 received 0 of 1,845 on p1 and 0 of 1,645 on p3, and
//! `status` showed t2 with lag 0.
//!
//! Here the same change on Postgres. Every message committed once B runs
//! must reach t2 (0 lost). Then B stops: t2 stays registered, so retention
//! (run by A, which never served t2) must keep what t2 has not passed,
//! until `outbox-relay targets forget t2 --yes` (the documented interface of
//! issue 20; it says how much it lets go) unregisters it.

use std::path::PathBuf;
use std::time::Duration;

use outbox_relay::NewMessage;
use outbox_relay::storage::Storage as _;
use outbox_relay_tests::{Scratch, eventually};

use super::{
    Received, RecordingTarget, RelayProcess, cli, leases_held, produce, relay_lines, route_all,
};

fn config(scratch: &Scratch, file: &str, targets: &[&str]) -> PathBuf {
    let targets: Vec<RecordingTarget<'_>> =
        targets.iter().map(|t| RecordingTarget::file(t)).collect();
    scratch.write_config_with_relay(
        file,
        &relay_lines(
            "3s",
            "retention = \"1s\"\nprune_interval = \"1s\"\npartitions = 4",
        ),
        &route_all(&scratch.path().join("out"), &targets),
    )
}

fn tick(i: usize) -> NewMessage {
    NewMessage::new("tick", format!("{{\"n\":{i}}}").into_bytes())
}

/// How many of `ids` are still in the log.
async fn in_log(pool: &sqlx::PgPool, ids: &[String]) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox_messages WHERE id::text = ANY($1)")
        .bind(ids)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_added_by_one_relay_loses_nothing_and_only_forget_lets_it_go() {
    let scratch = Scratch::postgres().await;
    let config_a = config(&scratch, "relay-a.toml", &["t1"]);
    let config_b = config(&scratch, "relay-b.toml", &["t1", "t2"]);
    scratch
        .pg_storage()
        .await
        .ensure_partitions(4)
        .await
        .unwrap();
    let pool = scratch.pg_pool().await;
    let (t1, t2) = (
        scratch.path().join("out/t1.jsonl"),
        scratch.path().join("out/t2.jsonl"),
    );

    let a = RelayProcess::start(&config_a, &scratch.path().join("relay-a.log"));
    let before_b = produce(pool.clone(), 300, 20, Duration::from_millis(100), tick)
        .await
        .unwrap();
    let b = RelayProcess::start(&config_b, &scratch.path().join("relay-b.log"));
    eventually(
        "relay B to take partitions",
        Duration::from_secs(30),
        || async {
            (leases_held(&pool, "t1", b.pid()).await + leases_held(&pool, "t2", b.pid()).await > 0)
                .then_some(())
        },
    )
    .await;
    // 200 msg/s for 6 s while both run, as in the report.
    let with_b = produce(pool.clone(), 1_200, 20, Duration::from_millis(100), tick)
        .await
        .unwrap();
    let delivered = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let (r1, r2) = (Received::read(&t1), Received::read(&t2));
            if r1.lost(&with_b) == 0 && r2.lost(&with_b) == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let (r1, r2) = (Received::read(&t1), Received::read(&t2));
    println!(
        "t1 lost {} of {}; t2 lost {} of {} written while B ran (and has {} of the {} written before)",
        r1.lost(&with_b),
        with_b.len(),
        r2.lost(&with_b),
        with_b.len(),
        before_b.len() - r2.lost(&before_b),
        before_b.len()
    );
    assert!(
        delivered.is_ok(),
        "messages lost in the rolling change: t1 {} and t2 {} of {}",
        r1.lost(&with_b),
        r2.lost(&with_b),
        with_b.len()
    );

    // B goes; t2 stays registered. A delivers to t1 and prunes, but must
    // keep what t2 has not passed.
    assert!(b.stop().success());
    let after_b = produce(pool.clone(), 50, 50, Duration::from_millis(10), tick)
        .await
        .unwrap();
    eventually("t1 to get the last 50", Duration::from_secs(20), || async {
        (Received::read(&t1).lost(&after_b) == 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await; // retention 1s, pruned every 1s
    assert_eq!(
        in_log(&pool, &after_b).await,
        50,
        "retention deleted messages the registered target t2 has not passed"
    );

    let forget = cli(&[
        "targets",
        "forget",
        "t2",
        "--yes",
        "--config",
        config_a.to_str().unwrap(),
    ])
    .await;
    assert!(
        forget.success,
        "targets forget t2: {}{}",
        forget.stdout, forget.stderr
    );
    let said = format!("{}{}", forget.stdout, forget.stderr);
    assert!(
        said.contains("t2") && said.contains("50"),
        "`targets forget` says how much it lets go (50 messages t2 has not passed): {said}"
    );
    eventually(
        "retention to drop what only t2 held",
        Duration::from_secs(10),
        || async { (in_log(&pool, &after_b).await == 0).then_some(()) },
    )
    .await;
    assert!(a.stop().success());
    assert_eq!(Received::read(&t1).torn + Received::read(&t2).torn, 0);
}
