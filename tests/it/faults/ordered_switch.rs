//! Finding 5: retries were stranded by switching `ordered`. Ordered →
//! unordered → ordered with pending retries: 160 retries due for 130 s, no
//! attempt made, nothing logged, `status` showing RETRIES 160 and LAG 0.
//!
//! Here the relay is restarted with a changed config at each step, its
//! target (the `count` test plugin) failing every attempt in the first two
//! (`fail_percent = 100`) and accepting every one in the last. After the
//! switch back to ordered, every message must be delivered and `status`
//! must show no retry left.

use std::path::PathBuf;
use std::time::Duration;

use outbox_relay_tests::{Scratch, enqueue, eventually};

use super::{Received, RecordingTarget, RelayProcess, route_all, status_json, status_of};

const N: usize = 40;
const WAIT: Duration = Duration::from_secs(20);

fn config(scratch: &Scratch, ordered: bool, fail_percent: u32) -> PathBuf {
    scratch.write_config(&route_all(
        &scratch.path().join("out"),
        &[RecordingTarget {
            plugin: "count",
            config: &format!(", fail_percent = {fail_percent}"),
            lines: &format!(
                "ordered = {ordered}\nbatch_size = 10\n\
                 retry = {{ initial_backoff = \"100ms\", max_backoff = \"300ms\", jitter = 0.0, max_attempts = 1000 }}"
            ),
            ..RecordingTarget::file("switched")
        }],
    ))
}

async fn retry_rows(pool: &sqlx::SqlitePool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*), coalesce(max(attempts), 0) FROM outbox_deliveries
         WHERE target = 'switched' AND state = 'retry'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_ordered_off_and_on_strands_no_retry() {
    let scratch = Scratch::new();
    let storage = scratch.storage().await;
    let messages = enqueue(&storage, "thing.happened", N).await;
    let ids: Vec<String> = messages.iter().map(|m| m.id.to_string()).collect();
    let file = scratch.path().join("out/switched.jsonl");
    let log = |phase: &str| scratch.path().join(format!("relay-{phase}.log"));

    // 1. Ordered, failing: the partition holds at its first message, retrying it.
    let relay = RelayProcess::start(&config(&scratch, true, 100), &log("ordered"));
    eventually("the ordered head to be retried", WAIT, || async {
        let (rows, attempts) = retry_rows(storage.pool()).await;
        (rows >= 1 && attempts >= 2).then_some(())
    })
    .await;
    assert!(relay.stop().success());

    // 2. Unordered, failing: every message fails once and waits for a retry.
    let relay = RelayProcess::start(&config(&scratch, false, 100), &log("unordered"));
    eventually("every message to have a pending retry", WAIT, || async {
        (retry_rows(storage.pool()).await.0 >= N as i64).then_some(())
    })
    .await;
    assert!(relay.stop().success());
    assert_eq!(
        Received::read(&file).lines.len(),
        0,
        "nothing delivered while failing"
    );

    // 3. Ordered again, and the target accepts everything now.
    let config = config(&scratch, true, 0);
    let relay = RelayProcess::start(&config, &log("ordered-again"));
    let delivered = tokio::time::timeout(WAIT, async {
        loop {
            let received = Received::read(&file);
            if received.lost(&ids) == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let received = Received::read(&file);
    let (stranded, _) = retry_rows(storage.pool()).await;
    assert!(
        delivered.is_ok(),
        "{} of {N} messages not delivered {WAIT:?} after switching back to ordered; \
         {stranded} retries still pending",
        received.lost(&ids)
    );
    eventually("the retries to be settled", WAIT, || async {
        (retry_rows(storage.pool()).await.0 == 0).then_some(())
    })
    .await;
    let status = status_json(&config).await;
    assert!(relay.stop().success());
    let switched = status_of(&status, "switched");
    assert_eq!(switched["retries_pending"], 0, "{switched}");
    assert_eq!(switched["lag"], 0, "{switched}");
    assert_eq!(received.torn, 0);
}
