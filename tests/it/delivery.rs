//! The delivery path: enqueue → relay → component → target.

use std::time::Duration;

use outbox_relay::NewMessage;
use outbox_relay::producer;
use outbox_relay::storage::Storage;
use outbox_relay_tests::{
    RunningRelay, Scratch, dead_letters, enqueue, eventually, read_ids, read_jsonl,
};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn committed_events_reach_the_file_target_as_json_lines() {
    let scratch = Scratch::new();
    let out = scratch.path().join("out");
    let config = scratch.load_config(&format!(
        r#"
[[routes]]
events = ["order.*"]
targets = ["audit"]

[targets.audit]
plugin = "file"
config = {{ path = "/out/events.jsonl" }}
sandbox = {{ dirs = {{ "/out" = "{}" }} }}
"#,
        out.display()
    ));
    let storage = scratch.storage().await;

    // Enqueue inside an application transaction; one that rolls back leaves nothing.
    let kept = NewMessage::new("order.created", br#"{"order":42}"#.to_vec())
        .with_key("order-42")
        .with_header(
            "Traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
    let binary = NewMessage::new("order.paid", vec![0xff, 0x00, 0x10]);
    let unrouted = NewMessage::new("user.created", b"{}".to_vec());
    let mut tx = storage.pool().begin().await.unwrap();
    for m in [&kept, &binary, &unrouted] {
        producer::sqlite::enqueue(&mut tx, m).await.unwrap();
    }
    tx.commit().await.unwrap();
    let rolled_back = NewMessage::new("order.cancelled", b"{}".to_vec());
    let mut tx = storage.pool().begin().await.unwrap();
    producer::sqlite::enqueue(&mut tx, &rolled_back)
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    let relay = RunningRelay::start(&config).await;
    let file = out.join("events.jsonl");
    eventually("two lines in the file target", WAIT, || async {
        (read_jsonl(&file).len() >= 2).then_some(())
    })
    .await;
    // Give a wrongly routed or rolled-back message the chance to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay.stop().await;
    let lines = read_jsonl(&file);
    assert_eq!(
        lines.len(),
        2,
        "only the routed, committed events arrive: {lines:?}"
    );

    let first = &lines[0];
    assert_eq!(first["id"], kept.id.to_string());
    assert_eq!(first["event_name"], "order.created");
    assert_eq!(first["partition_key"], "order-42");
    assert_eq!(first["payload"], serde_json::json!({"order": 42}));
    assert_eq!(
        first["headers"]["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(first["attempt"], 1);
    let second = &lines[1];
    assert_eq!(second["id"], binary.id.to_string());
    assert_eq!(second["payload_base64"], "/wAQ");

    let status = storage.status(&["audit".to_string()]).await.unwrap();
    assert_eq!(status[0].lag, 0);
    assert_eq!(status[0].dead_letters, 0);
}

#[tokio::test]
async fn a_failing_target_does_not_hold_back_the_other() {
    let scratch = Scratch::new();
    let out = scratch.path().join("out");
    let config = scratch.load_config(&format!(
        r#"
[[routes]]
events = ["*"]
targets = ["good", "broken"]

[targets.good]
plugin = "file"
batch_size = 7
config = {{ path = "/out/good.jsonl" }}
sandbox = {{ dirs = {{ "/out" = "{out}" }} }}

[targets.broken]
plugin = "flaky"
config = {{ succeed_on_attempt = 1000 }}
retry = {{ max_attempts = 1000, initial_backoff = "10s" }}
"#,
        out = out.display()
    ));
    let storage = scratch.storage().await;
    let sent = enqueue(&storage, "thing.happened", 50).await;
    let relay = RunningRelay::start(&config).await;
    let file = out.join("good.jsonl");
    eventually("all 50 at the good target", WAIT, || async {
        (read_jsonl(&file).len() >= 50).then_some(())
    })
    .await;
    let status = eventually("the broken target to hold 50 retries", WAIT, || async {
        let s = storage.status(&["broken".to_string()]).await.unwrap();
        (s[0].retries_pending == 50).then_some(s)
    })
    .await;
    assert_eq!(status[0].lag, 0, "the broken target's cursor moved on too");
    relay.stop().await;
    let ids: Vec<String> = read_ids(&file);
    let expected: Vec<String> = sent.iter().map(|m| m.id.to_string()).collect();
    assert_eq!(ids, expected, "in order, each once");
}

#[tokio::test]
async fn a_retry_backs_off_then_succeeds() {
    let scratch = Scratch::new();
    let out = scratch.path().join("out");
    let config = scratch.load_config(&format!(
        r#"
[[routes]]
events = ["*"]
targets = ["flaky"]

[targets.flaky]
plugin = "flaky"
config = {{ succeed_on_attempt = 3, path = "/out/flaky.jsonl" }}
retry = {{ max_attempts = 5, initial_backoff = "300ms", multiplier = 2.0, jitter = 0.0 }}
sandbox = {{ dirs = {{ "/out" = "{}" }} }}
"#,
        out.display()
    ));
    let storage = scratch.storage().await;
    let sent = enqueue(&storage, "thing.happened", 3).await;
    let started = std::time::Instant::now();
    let relay = RunningRelay::start(&config).await;
    let file = out.join("flaky.jsonl");
    let lines = eventually("three deliveries on the third attempt", WAIT, || async {
        let l = read_jsonl(&file);
        (l.len() >= 3).then_some(l)
    })
    .await;
    let elapsed = started.elapsed();
    relay.stop().await;
    for (line, m) in lines.iter().zip(&sent) {
        assert_eq!(line["id"], m.id.to_string());
        assert_eq!(line["attempt"], 3);
    }
    // Two back-offs of 300 ms and 600 ms (no jitter) lie between the first
    // attempt and the third: the retries were not immediate.
    assert!(
        elapsed >= Duration::from_millis(900),
        "retried too soon: {elapsed:?}"
    );
    let status = storage.status(&["flaky".to_string()]).await.unwrap();
    assert_eq!((status[0].retries_pending, status[0].dead_letters), (0, 0));
}

#[tokio::test]
async fn a_reject_and_exhausted_retries_dead_letter_with_their_reason() {
    let scratch = Scratch::new();
    let config = scratch.load_config(
        r#"
[[routes]]
events = ["*"]
targets = ["rejecting", "hopeless"]

[targets.rejecting]
plugin = "reject"

[targets.hopeless]
plugin = "flaky"
config = { succeed_on_attempt = 100 }
retry = { max_attempts = 3, initial_backoff = "20ms", jitter = 0.0 }
"#,
    );
    let storage = scratch.storage().await;
    let sent = enqueue(&storage, "thing.happened", 2).await;
    let relay = RunningRelay::start(&config).await;
    let rejected = eventually("two rejects dead-lettered", WAIT, || async {
        let d = dead_letters(&storage, "rejecting").await;
        (d.len() == 2).then_some(d)
    })
    .await;
    let exhausted = eventually("two exhausted retries dead-lettered", WAIT, || async {
        let d = dead_letters(&storage, "hopeless").await;
        (d.len() == 2).then_some(d)
    })
    .await;
    relay.stop().await;
    for d in &rejected {
        assert_eq!(d.attempts, 1);
        assert_eq!(d.last_error, "rejected: rejected by reject plugin");
        assert_eq!(d.event_name.as_deref(), Some("thing.happened"));
    }
    for d in &exhausted {
        assert_eq!(d.attempts, 3);
        assert_eq!(d.last_error, "gave up after 3 attempts: flaky: attempt 3");
    }
    let mut ids: Vec<String> = exhausted.iter().map(|d| d.message_id.clone()).collect();
    ids.sort();
    let mut expected: Vec<String> = sent.iter().map(|m| m.id.to_string()).collect();
    expected.sort();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn a_plugin_that_cannot_start_holds_its_messages_without_charging_them() {
    let scratch = Scratch::new();
    // The file plugin refuses to start without its `path`.
    let config = scratch.load_config(
        r#"
[[routes]]
events = ["*"]
targets = ["misconfigured"]

[targets.misconfigured]
plugin = "file"
retry = { max_attempts = 1 }
"#,
    );
    let storage = scratch.storage().await;
    enqueue(&storage, "thing.happened", 3).await;
    let relay = RunningRelay::start(&config).await;
    // Long enough for several tries at starting the plugin, had they been charged.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = storage
        .status(&["misconfigured".to_string()])
        .await
        .unwrap();
    relay.stop().await;
    assert_eq!(
        status[0].dead_letters, 0,
        "nothing is dead-lettered for a config mistake"
    );
    assert_eq!(status[0].retries_pending, 0, "no attempt was charged");
    assert_eq!(
        status[0].lag, 3,
        "the messages wait for a config that works"
    );
}
