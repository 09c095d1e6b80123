//! Finding 7: a skewed clock took live leases. A relay under
//! `faketime +60s` with `lease_ttl = 30s` took all 8 live leases at start;
//! the other relay logged `lease lost during a batch` 8 times and sat idle.
//!
//! Here two relays share an outbox of 4 partitions while a producer writes;
//! the second runs under libfaketime (Debian's `libfaketime`, see
//! tests/setup.sh), 60 s ahead or behind. On Postgres lease and heartbeat
//! times come from the server's clock; on SQLite, whose clock is each
//! relay's own, another relay's lease is judged by watching it change
//! (`host/src/storage/observed.rs`). Neither relay may log a lost lease,
//! both must hold partitions once they have settled, nothing is lost and
//! nothing is delivered twice.

use std::time::Duration;

use outbox_relay::NewMessage;
use outbox_relay::storage::Storage as _;
use outbox_relay_tests::{Scratch, eventually};

use super::{
    Outbox, Received, RecordingTarget, RelayProcess, faketime_env, leases_held, produce,
    relay_lines, route_all,
};

const LOST_LEASE: &str = "lease lost during a batch";

async fn skewed_relay_takes_no_live_lease(scratch: Scratch, offset: &str) {
    let out = scratch.path().join("out");
    let config = scratch.write_config_with_relay(
        "relay.toml",
        &relay_lines("30s", "partitions = 4"),
        &route_all(
            &out,
            &[RecordingTarget {
                lines: "batch_size = 20",
                ..RecordingTarget::file("sink")
            }],
        ),
    );
    let pool = Outbox::partitioned(&scratch, 4).await;

    let true_clock = RelayProcess::start(&config, &scratch.path().join("true.log"));
    eventually(
        "the first relay to hold all 4 partitions",
        Duration::from_secs(30),
        || async { (leases_held(&pool, "sink", true_clock.pid()).await == 4).then_some(()) },
    )
    .await;
    let producer = produce(pool.clone(), 2_000, 20, Duration::from_millis(100), |i| {
        NewMessage::new("tick", format!("{{\"n\":{i}}}").into_bytes())
    });
    let env = faketime_env(offset);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let skewed = RelayProcess::start_with_env(&config, &scratch.path().join("skewed.log"), &env);

    // A relay is seen alive at its first heartbeat, or (on SQLite, where a
    // first look judges by the looker's clock) once its heartbeat is seen
    // to change: up to two heartbeats (lease_ttl / 4 each), then a hand-over
    // and a batch. After that each relay should hold its share, and keep it.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (mut true_min, mut skewed_min) = (i64::MAX, i64::MAX);
    for _ in 0..8 {
        true_min = true_min.min(leases_held(&pool, "sink", true_clock.pid()).await);
        skewed_min = skewed_min.min(leases_held(&pool, "sink", skewed.pid()).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ids = producer.await.unwrap();
    let file = out.join("sink.jsonl");
    let done = tokio::time::timeout(Duration::from_secs(30), async {
        while Received::read(&file).lost(&ids) > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let (true_lost, skewed_lost) = (
        true_clock.log_count(LOST_LEASE),
        skewed.log_count(LOST_LEASE),
    );
    assert!(true_clock.stop().success());
    assert!(skewed.stop().success());

    let received = Received::read(&file);
    println!(
        "clock {offset}: partitions held (fewest while settled) true {true_min}, skewed {skewed_min}; \
         `{LOST_LEASE}` true {true_lost}, skewed {skewed_lost}; {} lost, {} duplicates",
        received.lost(&ids),
        received.duplicates()
    );
    assert_eq!(
        (true_lost, skewed_lost),
        (0, 0),
        "a relay lost a live lease (`{LOST_LEASE}`: true clock, skewed)"
    );
    assert!(
        true_min >= 1 && skewed_min >= 1,
        "both relays hold partitions (fewest seen: true clock {true_min}, skewed {skewed_min})"
    );
    assert!(done.is_ok(), "{} messages lost", received.lost(&ids));
    assert_eq!(received.duplicates(), 0, "messages delivered twice");
    assert_eq!(received.torn, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_60s_ahead_takes_no_live_lease() {
    skewed_relay_takes_no_live_lease(Scratch::postgres().await, "+60s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_60s_behind_takes_no_live_lease() {
    skewed_relay_takes_no_live_lease(Scratch::postgres().await, "-60s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_60s_ahead_takes_no_live_lease_on_sqlite() {
    skewed_relay_takes_no_live_lease(Scratch::new(), "+60s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_60s_behind_takes_no_live_lease_on_sqlite() {
    skewed_relay_takes_no_live_lease(Scratch::new(), "-60s").await;
}

/// In one process, with SQLite: a holder whose rows carry times far in the
/// past or the future (what a relay with a skewed clock writes) keeps its
/// lease while it renews, and loses it only once it stops, a TTL later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_leases_are_judged_by_watching_them_not_by_clocks() {
    let scratch = Scratch::new();
    let storage = scratch.storage().await;
    let ttl = Duration::from_millis(400);
    let holder = storage
        .acquire_lease("t", 0, "holder", ttl)
        .await
        .unwrap()
        .expect("a free partition is taken");
    // The holder renews every 100 ms (a quarter of its TTL), with times a
    // minute behind and then a minute ahead of the other relay's clock.
    for (round, offset) in (0..16).zip([-60_000_i64, 60_000].into_iter().cycle()) {
        sqlx::query(
            "UPDATE outbox_cursors SET lease_expires_ms =
                CAST(unixepoch('subsec') * 1000 AS INTEGER) + ?1 + ?2
             WHERE target = 't' AND partition = 0",
        )
        .bind(offset)
        .bind(round)
        .execute(storage.pool())
        .await
        .unwrap();
        assert!(
            storage
                .acquire_lease("t", 0, "other", ttl)
                .await
                .unwrap()
                .is_none(),
            "round {round}: a renewed lease (expiry {offset:+} ms by the other's clock) was taken"
        );
        tokio::time::sleep(ttl / 4).await;
    }
    // The holder stops: a TTL of watching later the lease is free.
    let taken = eventually(
        "the unrenewed lease to be taken",
        Duration::from_secs(3),
        || async { storage.acquire_lease("t", 0, "other", ttl).await.unwrap() },
    )
    .await;
    assert_eq!(taken.position, holder.position);
    assert!(
        storage
            .mark_published(&holder, &Default::default())
            .await
            .is_err(),
        "the old holder's ack is refused once the lease moved"
    );
}
