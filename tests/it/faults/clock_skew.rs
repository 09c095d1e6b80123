//! Finding 7: a skewed clock took live leases. A relay under
//! `faketime +60s` with `lease_ttl = 30s` took all 8 live leases at start;
//! the other relay logged `lease lost during a batch` 8 times and sat idle.
//!
//! Here two relays share a Postgres outbox of 4 partitions while a producer
//! writes; the second runs under libfaketime (Debian's `libfaketime`, see
//! tests/setup.sh), 60 s ahead or behind. Lease and heartbeat times must
//! come from the database's clock: neither relay may log a lost lease,
//! both must hold partitions once they have settled, and nothing is lost.

use std::time::Duration;

use outbox_relay::NewMessage;
use outbox_relay::storage::Storage as _;
use outbox_relay_tests::{Scratch, eventually};

use super::{
    Received, RecordingTarget, RelayProcess, faketime_env, leases_held, produce, relay_lines,
    route_all,
};

const LOST_LEASE: &str = "lease lost during a batch";

async fn skewed_relay_takes_no_live_lease(offset: &str) {
    let scratch = Scratch::postgres().await;
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
    scratch
        .pg_storage()
        .await
        .ensure_partitions(4)
        .await
        .unwrap();
    let pool = scratch.pg_pool().await;

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

    // The hand-over takes up to a heartbeat (lease_ttl / 4) and a batch;
    // after that each relay should hold its share, and keep it.
    tokio::time::sleep(Duration::from_secs(12)).await;
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
    assert_eq!(received.torn, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_60s_ahead_takes_no_live_lease() {
    skewed_relay_takes_no_live_lease("+60s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_60s_behind_takes_no_live_lease() {
    skewed_relay_takes_no_live_lease("-60s").await;
}
