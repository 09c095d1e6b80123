//! A worker working through a backlog pipelines its batches (the next read
//! and the last acknowledgements overlap the plugin call); on SQLite a commit
//! by another connection wakes an idle relay without waiting for the poll.

use std::collections::HashSet;
use std::time::Duration;

use outbox_relay::config::Config;
use outbox_relay::storage::Storage;
use outbox_relay_tests::{RunningRelay, Scratch, enqueue, eventually, read_ids, read_jsonl};

/// A config of this scratch's SQLite file with `relay` as its `[relay]`
/// settings and `body` after them.
fn config(scratch: &Scratch, relay: &str, body: &str) -> Config {
    let path = scratch.write_config_with_relay("relay.toml", relay, body);
    Config::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn a_backlog_goes_through_the_pipeline_once_in_log_order_and_its_failures_are_retried() {
    let scratch = Scratch::new();
    let out = scratch.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let config = config(
        &scratch,
        r#"batch_size = 100
poll_interval = "50ms"
lease_ttl = "3s"
claim_timeout = "10s""#,
        &format!(
            r#"
[[routes]]
events = ["order.*"]
targets = ["audit", "flaky"]

[targets.audit]
plugin = "file"
config = {{ path = "/out/audit.jsonl" }}
sandbox = {{ dirs = {{ "/out" = "{out}" }} }}

[targets.flaky]
plugin = "flaky"
config = {{ succeed_on_attempt = 2, path = "/out/flaky.jsonl" }}
sandbox = {{ dirs = {{ "/out" = "{out}" }} }}
retry = {{ initial_backoff = "100ms", jitter = 0.0 }}
"#,
            out = out.display()
        ),
    );
    let storage = scratch.storage().await;
    // 20 full batches and a short one, written before the relay starts.
    let sent = enqueue(&storage, "order.created", 2_050).await;
    let ids: Vec<String> = sent.iter().map(|m| m.id.to_string()).collect();

    let relay = RunningRelay::start(&config).await;
    let audit = out.join("audit.jsonl");
    let flaky = out.join("flaky.jsonl");
    eventually(
        "every message at both targets",
        Duration::from_secs(60),
        || async {
            let audit = read_jsonl(&audit).len();
            let flaky = read_jsonl(&flaky).len();
            (audit >= ids.len() && flaky >= ids.len()).then_some(())
        },
    )
    .await;
    // Let a wrongly repeated batch show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay.stop().await;

    // Nothing failed at the file target and nothing crashed: each message
    // once, in the order of the log.
    let delivered: Vec<String> = read_ids(&audit);
    assert_eq!(delivered, ids, "the file target got the log once, in order");

    // The flaky target failed every first attempt; those failures were
    // recorded with acknowledgements written while later batches were
    // delivered, and every message came back as a retry and was delivered.
    let lines = read_jsonl(&flaky);
    let mut seen = HashSet::new();
    for line in &lines {
        assert_eq!(
            line["attempt"], 2,
            "delivered on the second attempt: {line}"
        );
        assert!(
            seen.insert(line["id"].as_str().unwrap().to_string()),
            "delivered twice: {line}"
        );
    }
    assert_eq!(seen, ids.iter().cloned().collect::<HashSet<_>>());

    let status = storage
        .status(&["audit".into(), "flaky".into()])
        .await
        .unwrap();
    for target in &status {
        assert_eq!(target.lag, 0, "{target:?}");
        assert_eq!(target.retries_pending, 0, "{target:?}");
        assert_eq!(target.dead_letters, 0, "{target:?}");
    }
}

#[tokio::test]
async fn on_sqlite_a_commit_wakes_an_idle_relay_before_its_poll_interval() {
    let scratch = Scratch::new();
    let out = scratch.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // The relay would not look again for an hour on its own.
    let config = config(
        &scratch,
        r#"poll_interval = "1h""#,
        &outbox_relay_tests::audit_file_target(&out),
    );
    let storage = scratch.storage().await;
    let relay = RunningRelay::start(&config).await;
    let audit = out.join("audit.jsonl");
    // First a message the relay finds when it starts; after it, the relay is idle.
    let first = enqueue(&storage, "user.created", 1).await;
    eventually("the first message", Duration::from_secs(30), || async {
        (read_jsonl(&audit).len() == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Committed by the producer's own connection, not the relay's.
    let second = enqueue(&storage, "user.created", 1).await;
    eventually(
        "the second message, woken by its commit",
        Duration::from_secs(30),
        || async { (read_jsonl(&audit).len() == 2).then_some(()) },
    )
    .await;
    relay.stop().await;
    let ids: Vec<String> = read_ids(&audit);
    assert_eq!(ids, [first[0].id.to_string(), second[0].id.to_string()]);
}
