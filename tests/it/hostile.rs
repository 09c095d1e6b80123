//! Plugins that trap, panic, loop forever or hog memory: the host keeps
//! running, the other target keeps delivering, and the message is retried and
//! then dead-lettered with an error that names the plugin and carries stderr.

use std::time::Duration;

use outbox_relay_tests::{RunningRelay, Scratch, dead_letters, enqueue, eventually, read_jsonl};

const WAIT: Duration = Duration::from_secs(60);

/// Runs `plugin` beside a healthy file target and returns the dead letter it causes.
async fn misbehave(plugin: &str, sandbox: &str) -> String {
    let scratch = Scratch::new();
    let out = scratch.path().join("out");
    let config = scratch.load_config(&format!(
        r#"
[[routes]]
events = ["*"]
targets = ["healthy", "hostile"]

[targets.healthy]
plugin = "file"
config = {{ path = "/out/healthy.jsonl" }}
sandbox = {{ dirs = {{ "/out" = "{out}" }} }}

[targets.hostile]
plugin = "{plugin}"
retry = {{ max_attempts = 2, initial_backoff = "50ms", jitter = 0.0 }}
sandbox = {sandbox}
"#,
        out = out.display()
    ));
    let storage = scratch.storage().await;
    let first = enqueue(&storage, "thing.happened", 1).await;
    let relay = RunningRelay::start(&config).await;
    let dead = eventually(
        &format!("the {plugin} plugin's message to be dead-lettered"),
        WAIT,
        || async {
            let d = dead_letters(&storage, "hostile").await;
            (!d.is_empty()).then_some(d)
        },
    )
    .await;
    assert_eq!(dead[0].message_id, first[0].id.to_string());
    assert_eq!(dead[0].attempts, 2, "retried once, then dead");

    // The host is still up: a message enqueued now reaches the healthy target.
    assert!(relay.is_running(), "the relay died");
    enqueue(&storage, "thing.happened", 1).await;
    let file = out.join("healthy.jsonl");
    eventually("the healthy target to get both messages", WAIT, || async {
        (read_jsonl(&file).len() >= 2).then_some(())
    })
    .await;
    relay.stop().await;

    let error = dead[0].last_error.clone();
    assert!(
        error.contains(&format!("plugin \"{plugin}\"")),
        "the error names the plugin: {error}"
    );
    assert!(
        error.contains("target \"hostile\""),
        "the error names the target: {error}"
    );
    error
}

#[tokio::test]
async fn a_trap_is_contained() {
    let error = misbehave("trap", "{}").await;
    assert!(error.contains("trapped"), "{error}");
    assert!(error.contains("unreachable"), "{error}");
}

#[tokio::test]
async fn a_panic_is_contained_and_its_message_reported() {
    let error = misbehave("panic", "{}").await;
    assert!(error.contains("trapped"), "{error}");
    assert!(error.contains("guest stderr"), "{error}");
    assert!(error.contains("panic plugin: about to panic"), "{error}");
    assert!(
        error.contains("deliberate panic for"),
        "the panic message is in the error: {error}"
    );
}

#[tokio::test]
async fn an_infinite_loop_hits_the_time_limit() {
    let error = misbehave("spin", r#"{ call_timeout = "300ms" }"#).await;
    assert!(error.contains("time limit"), "{error}");
}

#[tokio::test]
async fn a_memory_hog_hits_the_memory_cap() {
    let error = misbehave("hog", "{ memory_mb = 32 }").await;
    assert!(error.contains("memory limit of 32 MiB"), "{error}");
}

#[tokio::test]
async fn one_poison_message_does_not_take_its_batch_down() {
    let scratch = Scratch::new();
    let out = scratch.path().join("out");
    let config = scratch.load_config(&format!(
        r#"
[[routes]]
events = ["*"]
targets = ["poisoned"]

[targets.poisoned]
plugin = "poison"
config = {{ path = "/out/delivered.jsonl" }}
retry = {{ max_attempts = 2, initial_backoff = "50ms", jitter = 0.0 }}
sandbox = {{ dirs = {{ "/out" = "{}" }} }}
"#,
        out.display()
    ));
    let storage = scratch.storage().await;
    let mut messages: Vec<outbox_relay::NewMessage> = (0..9)
        .map(|i| outbox_relay::NewMessage::new("e", format!("ok-{i}").into_bytes()))
        .collect();
    messages.insert(4, outbox_relay::NewMessage::new("e", b"poison".to_vec()));
    use outbox_relay::storage::Storage as _;
    storage.save(&messages).await.unwrap();
    let relay = RunningRelay::start(&config).await;
    let dead = eventually("the poison message dead-lettered", WAIT, || async {
        let d = dead_letters(&storage, "poisoned").await;
        (!d.is_empty()).then_some(d)
    })
    .await;
    let file = out.join("delivered.jsonl");
    let lines = eventually("the nine good ones delivered", WAIT, || async {
        let l = read_jsonl(&file);
        (l.len() >= 9).then_some(l)
    })
    .await;
    relay.stop().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id, messages[4].id.to_string());
    assert!(
        dead[0].last_error.contains("poison found"),
        "{}",
        dead[0].last_error
    );
    assert!(
        lines.iter().all(|l| l["attempt"] == 1),
        "the good ones were not charged: {lines:?}"
    );
    assert_eq!(lines.len(), 9);
}
