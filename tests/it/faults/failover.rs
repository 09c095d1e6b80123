//! Found by the attack on the SQLite clock fix: on SQLite, where another
//! relay's lease is judged by watching it go unrenewed for a TTL, a relay
//! whose peer was SIGKILLed first watched the peer's heartbeat for a TTL
//! (to count it dead) and only then began to watch its leases, for a second
//! TTL: delivery of the dead relay's partitions resumed after 2 × TTL (6.3 s
//! at `lease_ttl = 3s`; 4 minutes at the default 120 s). Postgres took 3.3 s.
//!
//! Here two relays share 4 partitions; the one holding partitions is
//! SIGKILLed, and the survivor must hold all 4 within one TTL plus two
//! heartbeats and a margin (`lease_ttl = 6s`: under 10.5 s, where watching
//! twice takes 12 s or more), on both backends, with nothing lost.

use std::time::{Duration, Instant};

use outbox_relay::NewMessage;
use outbox_relay_tests::{Scratch, eventually};

use super::{
    Outbox, Received, RecordingTarget, RelayProcess, leases_held, produce, relay_lines, route_all,
};

async fn the_survivor_takes_over_within_one_ttl(scratch: Scratch) {
    let out = scratch.path().join("out");
    let config = scratch.write_config_with_relay(
        "relay.toml",
        &relay_lines("6s", "partitions = 4"),
        &route_all(&out, &[RecordingTarget::file("sink")]),
    );
    let outbox = Outbox::partitioned(&scratch, 4).await;
    let survivor = RelayProcess::start(&config, &scratch.path().join("survivor.log"));
    let victim = RelayProcess::start(&config, &scratch.path().join("victim.log"));
    eventually(
        "the relays to share the 4 partitions",
        Duration::from_secs(40),
        || async {
            (leases_held(&outbox, "sink", survivor.pid()).await == 2
                && leases_held(&outbox, "sink", victim.pid()).await == 2)
                .then_some(())
        },
    )
    .await;
    let producer = produce(&outbox, 600, 10, Duration::from_millis(20), |i| {
        NewMessage::new("tick", format!("{{\"n\":{i}}}").into_bytes())
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    victim.signal("KILL");
    let killed = Instant::now();
    let took = eventually(
        "the survivor to hold all 4 partitions",
        Duration::from_secs(40),
        || async {
            (leases_held(&outbox, "sink", survivor.pid()).await == 4).then(|| killed.elapsed())
        },
    )
    .await;
    let ids = producer.await.unwrap();
    let file = out.join("sink.jsonl");
    eventually(
        "every message delivered",
        Duration::from_secs(30),
        || async { (Received::read(&file).lost(&ids) == 0).then_some(()) },
    )
    .await;
    assert!(survivor.stop().success());
    drop(victim);
    println!("took over {:.1} s after the SIGKILL", took.as_secs_f64());
    assert!(
        took < Duration::from_millis(10_500),
        "the dead relay's partitions were taken {:.1} s after the SIGKILL (lease_ttl 6s)",
        took.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_relays_partitions_are_taken_within_one_ttl_on_sqlite() {
    the_survivor_takes_over_within_one_ttl(Scratch::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_relays_partitions_are_taken_within_one_ttl_on_postgres() {
    the_survivor_takes_over_within_one_ttl(Scratch::postgres().await).await;
}
