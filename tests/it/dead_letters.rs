//! Dead-letter tools: the storage methods on both backends, and
//! `outbox-relay dead-letters list|show|replay|purge` as a subprocess, with a
//! relay running.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use outbox_relay::message::Position;
use outbox_relay::storage::{Ack, DeadLetterFilter, Disposition, Failure, Storage, now_ms};
use outbox_relay_tests::{RunningRelay, Scratch, enqueue, eventually, read_jsonl};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// Runs `outbox-relay dead-letters <args> --config <config>` with no stdin.
async fn cli(config: &Path, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(crate::relay_binary())
        .arg("dead-letters")
        .args(args)
        .args(["--config", config.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap()
}

/// Like [`cli`], asserting success, with stdout parsed as JSON.
async fn cli_json(config: &Path, args: &[&str]) -> Value {
    let out = cli(config, args).await;
    assert!(
        out.status.success(),
        "dead-letters {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "dead-letters {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn len(v: &Value) -> usize {
    v.as_array().unwrap().len()
}

#[tokio::test]
async fn replay_while_a_relay_runs_delivers_each_dead_letter_once() {
    let scratch = Scratch::new();
    let out = scratch.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // Attempts 1 and 2 fail and dead-letter the message (max_attempts = 2);
    // replay grants one more attempt, number 3, which succeeds.
    let config_path = scratch.write_config(&format!(
        r#"
[[routes]]
events = ["*"]
targets = ["flaky"]

[targets.flaky]
plugin = "flaky"
config = {{ succeed_on_attempt = 3, path = "/out/flaky.jsonl" }}
retry = {{ max_attempts = 2, initial_backoff = "20ms", jitter = 0.0 }}
sandbox = {{ dirs = {{ "/out" = "{}" }} }}
"#,
        out.display()
    ));
    let config = outbox_relay::config::Config::load(&config_path).unwrap();
    let storage = scratch.storage().await;
    let sent = enqueue(&storage, "thing.happened", 20).await;
    let relay = RunningRelay::start(&config).await;
    let targets = ["flaky".to_string()];
    eventually("all 20 dead-lettered", WAIT, || async {
        let s = storage.status(&targets).await.unwrap();
        (s[0].dead_letters == 20 && s[0].lag == 0).then_some(())
    })
    .await;
    let file = out.join("flaky.jsonl");
    assert!(read_jsonl(&file).is_empty(), "nothing was delivered yet");

    let replayed = cli(&config_path, &["replay", "--yes"]).await;
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    assert!(
        String::from_utf8_lossy(&replayed.stdout).contains("replayed 20 dead letters"),
        "{}",
        String::from_utf8_lossy(&replayed.stdout)
    );
    let lines = eventually("20 deliveries after the replay", WAIT, || async {
        let l = read_jsonl(&file);
        (l.len() >= 20).then_some(l)
    })
    .await;
    eventually("no retries and no dead letters left", WAIT, || async {
        let s = storage.status(&targets).await.unwrap();
        (s[0].dead_letters == 0 && s[0].retries_pending == 0).then_some(())
    })
    .await;
    // Replaying again finds nothing, and nothing is delivered twice.
    let again = cli_json(&config_path, &["replay", "--yes", "--json"]).await;
    assert_eq!(again["replayed"], 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(relay.is_running());
    relay.stop().await;

    let lines_after = read_jsonl(&file);
    assert_eq!(
        lines_after.len(),
        20,
        "each delivered once: {lines_after:?}"
    );
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for l in &lines {
        *seen
            .entry(l["id"].as_str().unwrap().to_string())
            .or_default() += 1;
        assert_eq!(
            l["attempt"], 3,
            "the attempt count continues after a replay"
        );
    }
    let expected: BTreeMap<String, u64> = sent.iter().map(|m| (m.id.to_string(), 1)).collect();
    assert_eq!(seen, expected);
    let s = storage.status(&targets).await.unwrap();
    assert_eq!((s[0].dead_letters, s[0].retries_pending), (0, 0));
}

#[tokio::test]
async fn list_show_and_purge_through_the_cli() {
    let scratch = Scratch::new();
    let config_path = scratch.write_config(
        r#"
[[routes]]
events = ["*"]
targets = ["rejecting"]

[[routes]]
events = ["order.*"]
targets = ["hopeless"]

[targets.rejecting]
plugin = "reject"

[targets.hopeless]
plugin = "flaky"
config = { succeed_on_attempt = 100 }
retry = { max_attempts = 2, initial_backoff = "20ms", jitter = 0.0 }
"#,
    );
    let config = outbox_relay::config::Config::load(&config_path).unwrap();
    let storage = scratch.storage().await;
    let orders = enqueue(&storage, "order.created", 3).await;
    enqueue(&storage, "user.created", 2).await;
    let relay = RunningRelay::start(&config).await;
    eventually("8 dead letters", WAIT, || async {
        let all = storage
            .list_dead_letters(&DeadLetterFilter::default())
            .await
            .unwrap();
        (all.len() == 8).then_some(())
    })
    .await;
    relay.stop().await;

    let all = cli_json(&config_path, &["list", "--json"]).await;
    assert_eq!(len(&all), 8);
    let hopeless = cli_json(&config_path, &["list", "--target", "hopeless", "--json"]).await;
    assert_eq!(len(&hopeless), 3);
    let users = cli_json(&config_path, &["list", "--event", "user.*", "--json"]).await;
    assert_eq!(len(&users), 2);
    assert!(
        users
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["target"] == "rejecting" && l["event_name"] == "user.created")
    );
    let both = cli_json(
        &config_path,
        &[
            "list",
            "--target",
            "rejecting",
            "--event",
            "order.*",
            "--json",
        ],
    )
    .await;
    assert_eq!(len(&both), 3);
    assert_eq!(
        len(&cli_json(&config_path, &["list", "--event", "order", "--json"]).await),
        0
    );
    assert_eq!(
        len(&cli_json(&config_path, &["list", "--event", "*.create?", "--json"]).await),
        8
    );
    assert_eq!(
        len(&cli_json(&config_path, &["list", "--limit", "2", "--json"]).await),
        2
    );
    assert_eq!(
        len(&cli_json(&config_path, &["list", "--since", "1h", "--json"]).await),
        8
    );
    assert_eq!(
        len(&cli_json(
            &config_path,
            &["list", "--until", "2001-01-01T00:00:00Z", "--json"]
        )
        .await),
        0
    );
    assert_eq!(
        len(&cli_json(
            &config_path,
            &["list", "--since", "2099-01-01T00:00:00Z", "--json"]
        )
        .await),
        0
    );

    // The table: a header and one row per dead letter.
    let table = cli(&config_path, &["list", "--target", "hopeless"]).await;
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("TARGET"), "{text}");
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(text.contains("gave up after 2 attempts"), "{text}");

    // Show: the message and every attempt's error.
    let first = hopeless
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["message_id"] == orders[0].id.to_string())
        .unwrap();
    let seq = first["seq"].as_i64().unwrap().to_string();
    let shown = cli_json(&config_path, &["show", "hopeless", &seq, "--json"]).await;
    assert_eq!(shown["message_id"], orders[0].id.to_string());
    assert_eq!(shown["event_name"], "order.created");
    assert_eq!(shown["attempts"], 2);
    assert_eq!(shown["message"]["payload"], serde_json::json!({"n": 0}));
    assert_eq!(shown["message"]["headers"]["x-test"], "value-0");
    let history = shown["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{shown}");
    assert_eq!(history[0]["attempt"], 1);
    assert!(
        history[0]["error"]
            .as_str()
            .unwrap()
            .contains("flaky: attempt 1")
    );
    assert_eq!(history[1]["attempt"], 2);
    assert!(
        history[1]["error"]
            .as_str()
            .unwrap()
            .contains("flaky: attempt 2")
    );
    let text = cli(&config_path, &["show", "hopeless", &seq]).await;
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("flaky: attempt 1") && text.contains("x-test: value-0"),
        "{text}"
    );
    let missing = cli(&config_path, &["show", "hopeless", "999999"]).await;
    assert!(!missing.status.success());

    // Purge: refused without --yes when stdin is not a terminal.
    let refused = cli(&config_path, &["purge", "--target", "rejecting"]).await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));
    assert_eq!(len(&cli_json(&config_path, &["list", "--json"]).await), 8);
    let purged = cli_json(
        &config_path,
        &[
            "purge",
            "--target",
            "rejecting",
            "--event",
            "user.*",
            "--yes",
            "--json",
        ],
    )
    .await;
    assert_eq!(
        (purged["matched"].as_u64(), purged["purged"].as_u64()),
        (Some(2), Some(2))
    );
    let again = cli_json(
        &config_path,
        &[
            "purge",
            "--target",
            "rejecting",
            "--event",
            "user.*",
            "--yes",
            "--json",
        ],
    )
    .await;
    assert_eq!(again["purged"], 0);
    assert_eq!(len(&cli_json(&config_path, &["list", "--json"]).await), 6);
    let status = storage
        .status(&["rejecting".to_string(), "hopeless".to_string()])
        .await
        .unwrap();
    assert_eq!((status[0].dead_letters, status[1].dead_letters), (3, 3));
}

#[tokio::test]
async fn replay_on_an_ordered_target_delivers_its_dead_letters_in_log_order() {
    let scratch = Scratch::new();
    let out = scratch.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let record = out.join("ordered.jsonl");
    let config_path = scratch.write_config(&format!(
        r#"
[[routes]]
events = ["*"]
targets = ["ordered"]

[targets.ordered]
plugin = "flaky"
ordered = true
retry = {{ max_attempts = 2, initial_backoff = "10ms", max_backoff = "10ms" }}
config = {{ succeed_on_attempt = 3, path = "/out/ordered.jsonl" }}
sandbox = {{ dirs = {{ "/out" = "{}" }} }}
"#,
        out.display()
    ));
    let config = outbox_relay::config::Config::load(&config_path).unwrap();
    let storage = scratch.storage().await;
    let sent = enqueue(&storage, "e", 3).await;
    let relay = RunningRelay::start(&config).await;
    eventually("3 dead letters", WAIT, || async {
        let all = storage
            .list_dead_letters(&DeadLetterFilter::default())
            .await
            .unwrap();
        (all.len() == 3).then_some(())
    })
    .await;
    // Replayed while the relay runs: its ordered worker picks them up.
    let done = cli_json(
        &config_path,
        &["replay", "--target", "ordered", "--yes", "--json"],
    )
    .await;
    assert_eq!(done["replayed"], 3);
    let delivered = eventually("the replayed letters delivered", WAIT, || async {
        let lines = if record.exists() {
            read_jsonl(&record)
        } else {
            Vec::new()
        };
        (lines.len() >= 3).then_some(lines)
    })
    .await;
    relay.stop().await;
    let ids: Vec<&str> = delivered
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = sent.iter().map(|m| m.id.to_string()).collect();
    assert_eq!(ids, expected, "in log order, once each");
    assert!(delivered.iter().all(|l| l["attempt"] == 3), "{delivered:?}");
    assert_eq!(len(&cli_json(&config_path, &["list", "--json"]).await), 0);
    let missing = cli(&config_path, &["replay", "--target", "nowhere", "--yes"]).await;
    assert!(!missing.status.success());
}

/// The storage methods, on any backend: list with filters, detail, replay
/// (idempotent, claimable with its attempt count kept), purge (idempotent).
async fn dead_letter_storage_methods(storage: &dyn Storage) {
    let sent = enqueue(storage, "order.created", 3).await;
    enqueue(storage, "user.created", 1).await;
    let start = std::time::Instant::now();
    while storage.has_unsettled(0, Position::default()).await.unwrap() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "rows stayed hidden"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lease = storage
        .acquire_lease("t", 0, "a", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    let entries = storage
        .fetch_pending(0, lease.position, 10, usize::MAX)
        .await
        .unwrap();
    assert_eq!(entries.len(), 4);
    let messages: Vec<_> = entries
        .iter()
        .map(|e| e.as_ref().unwrap().clone())
        .collect();
    let failures = messages
        .iter()
        .map(|m| Failure {
            seq: m.seq,
            message_id: m.id.to_string(),
            attempts: 2,
            error: format!("boom {}\nstderr: line two", m.seq),
            disposition: if m.event_name == "user.created" || m.seq != messages[2].seq {
                Disposition::Dead
            } else {
                Disposition::RetryAfter(Duration::from_secs(60))
            },
        })
        .collect();
    let before = now_ms();
    storage
        .mark_published(
            &lease,
            &Ack {
                position: messages[3].position(),
                failures,
                resolved: vec![],
            },
        )
        .await
        .unwrap();
    // Three dead (two orders, one user), one waiting for a retry.
    let all = storage
        .list_dead_letters(&DeadLetterFilter::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    let filter = |f: DeadLetterFilter| async move { storage.list_dead_letters(&f).await.unwrap() };
    let orders = filter(DeadLetterFilter {
        event_pattern: Some("order.*".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(orders.len(), 2);
    assert!(
        orders
            .iter()
            .all(|l| l.event_name.as_deref() == Some("order.created"))
    );
    for (pattern, n) in [
        ("*", 3),
        ("ORDER.*", 0),
        ("order._reated", 0),
        ("?ser.created", 1),
        ("order%", 0),
    ] {
        let got = filter(DeadLetterFilter {
            event_pattern: Some(pattern.into()),
            ..Default::default()
        })
        .await;
        assert_eq!(got.len(), n, "pattern {pattern:?}");
    }
    assert_eq!(
        filter(DeadLetterFilter {
            target: Some("other".into()),
            ..Default::default()
        })
        .await
        .len(),
        0
    );
    assert_eq!(
        filter(DeadLetterFilter {
            limit: 1,
            ..Default::default()
        })
        .await
        .len(),
        1
    );
    assert_eq!(
        filter(DeadLetterFilter {
            since_ms: Some(before - 1000),
            until_ms: Some(now_ms() + 1000),
            ..Default::default()
        })
        .await
        .len(),
        3
    );
    assert_eq!(
        filter(DeadLetterFilter {
            until_ms: Some(before - 1000),
            ..Default::default()
        })
        .await
        .len(),
        0
    );

    // Detail: the message and the history.
    let detail = storage
        .dead_letter("t", messages[0].seq)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(detail.letter.message_id, sent[0].id.to_string());
    assert_eq!(detail.letter.attempts, 2);
    let message = detail.message.unwrap().unwrap();
    assert_eq!(message.payload, br#"{"n":0}"#.to_vec());
    assert_eq!(message.headers["x-test"], "value-0");
    assert_eq!(detail.history.len(), 1);
    assert_eq!(detail.history[0].attempt, 2);
    assert!(detail.history[0].error.contains("stderr: line two"));
    assert!(
        storage
            .dead_letter("t", messages[2].seq)
            .await
            .unwrap()
            .is_none(),
        "not dead"
    );
    assert!(
        storage
            .dead_letter("other", messages[0].seq)
            .await
            .unwrap()
            .is_none()
    );

    // Replay: only dead rows, once; they are due at once with their attempts kept.
    let seqs: Vec<i64> = messages.iter().map(|m| m.seq).collect();
    assert_eq!(
        storage.replay_dead_letters("t", &seqs[..2]).await.unwrap(),
        2
    );
    assert_eq!(
        storage.replay_dead_letters("t", &seqs[..2]).await.unwrap(),
        0
    );
    assert_eq!(storage.replay_dead_letters("t", &[]).await.unwrap(), 0);
    assert_eq!(
        storage.replay_dead_letters("other", &seqs).await.unwrap(),
        0
    );
    let state = storage.failure_state("t", seqs[0]).await.unwrap().unwrap();
    assert!(!state.dead);
    assert_eq!(state.attempts, 2);
    let due = storage
        .claim_retries("t", "b", 10, Duration::from_secs(30))
        .await
        .unwrap();
    let mut due_seqs: Vec<i64> = due.iter().map(|d| d.entry.as_ref().unwrap().seq).collect();
    due_seqs.sort_unstable();
    assert_eq!(
        due_seqs,
        seqs[..2].to_vec(),
        "the replayed ones, not the one still backing off"
    );
    assert!(due.iter().all(|d| d.attempts == 2));
    let s = storage.status(&["t".to_string()]).await.unwrap();
    assert_eq!((s[0].retries_pending, s[0].dead_letters), (3, 1));

    // Purge: only dead rows, once.
    assert_eq!(storage.purge_dead_letters("t", &seqs).await.unwrap(), 1);
    assert_eq!(storage.purge_dead_letters("t", &seqs).await.unwrap(), 0);
    let s = storage.status(&["t".to_string()]).await.unwrap();
    assert_eq!((s[0].retries_pending, s[0].dead_letters), (3, 0));
    assert!(
        storage
            .list_dead_letters(&DeadLetterFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn dead_letter_storage_methods_on_sqlite() {
    let scratch = Scratch::new();
    let storage = scratch.storage().await;
    dead_letter_storage_methods(&storage).await;
}

#[tokio::test]
async fn dead_letter_storage_methods_on_postgres() {
    let scratch = Scratch::postgres().await;
    let storage = scratch.pg_storage().await;
    dead_letter_storage_methods(&storage).await;
}

/// `show` of a target the config does not have says so and lists the
/// configured ones; `list --target` of one notes it on stderr.
#[tokio::test]
async fn show_names_an_unknown_target_and_the_configured_ones() {
    let scratch = Scratch::new();
    let config_path = scratch.write_config(
        r#"
[[routes]]
events = ["*"]
targets = ["audit", "hooks"]

[targets.audit]
plugin = "null"

[targets.hooks]
plugin = "null"
"#,
    );
    scratch.storage().await;
    let out = cli(&config_path, &["show", "nosuch", "1"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        format!(
            "error: there is no dead letter of target \"nosuch\" with seq 1: unknown target \"nosuch\": not a target in {} (targets: audit, hooks)",
            config_path.display()
        )
    );
    let out = cli(&config_path, &["show", "audit", "1"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        "error: there is no dead letter of target \"audit\" with seq 1"
    );
    let out = cli(&config_path, &["list", "--target", "nosuch", "--json"]).await;
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("note: unknown target \"nosuch\": not a target in"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
