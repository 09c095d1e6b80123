//! The `file` target under concurrency and failure: partition workers (one
//! instance each) append to one file without tearing a line, whatever the
//! line size, and a full disk is reported as such.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use outbox_relay::NewMessage;
use outbox_relay::config::Config;
use outbox_relay::storage::Storage;
use outbox_relay_tests::{RunningRelay, Scratch, eventually};

const MESSAGES: usize = 2_000;

/// Routes and one `file` target, `audit`, writing `path` inside the host
/// directory `host_dir` mapped at `guest_dir`, with `extra` lines.
fn audit_target(path: &str, guest_dir: &str, host_dir: &Path, extra: &str) -> String {
    format!(
        r#"
[[routes]]
events = ["*"]
targets = ["audit"]

[targets.audit]
plugin = "file"
config = {{ path = "{path}" }}
sandbox = {{ dirs = {{ "{guest_dir}" = "{host}" }} }}
{extra}
"#,
        host = host_dir.display()
    )
}

/// A relay with 4 partitions and one unordered `file` target writing
/// `/out/events.jsonl`; returns the config file's path.
fn config(scratch: &Scratch, out: &Path) -> PathBuf {
    scratch.write_config_with_relay(
        "relay.toml",
        r#"partitions = 4
batch_size = 100
poll_interval = "50ms"
lease_ttl = "3s"
claim_timeout = "10s""#,
        &audit_target("/out/events.jsonl", "/out", out, ""),
    )
}

/// `MESSAGES` messages whose JSON lines are about `line_bytes` long, spread
/// over the partitions by their ids.
async fn enqueue_padded(storage: &dyn Storage, line_bytes: usize) -> HashSet<String> {
    // The line's own fields (id, event, headers, attempt, time) take ~190 bytes.
    let pad = "x".repeat(line_bytes - 190);
    let messages: Vec<NewMessage> = (0..MESSAGES)
        .map(|i| NewMessage::new("e", format!("{{\"n\":{i},\"pad\":\"{pad}\"}}").into_bytes()))
        .collect();
    for chunk in messages.chunks(500) {
        storage.save(chunk).await.unwrap();
    }
    messages.iter().map(|m| m.id.to_string()).collect()
}

/// (lines that are whole JSON objects with an id, lines that are not).
fn census(path: &Path) -> (Vec<String>, Vec<String>) {
    let text = std::fs::read(path).unwrap_or_default();
    let mut ids = Vec::new();
    let mut torn = Vec::new();
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<serde_json::Value>(line) {
            Ok(v) if v["id"].is_string() => ids.push(v["id"].as_str().unwrap().to_owned()),
            _ => torn.push(String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned()),
        }
    }
    (ids, torn)
}

async fn four_partitions_append_whole_lines(line_bytes: usize) {
    let scratch = Scratch::new();
    let out = scratch.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let config = config(&scratch, &out);
    let storage = scratch.storage().await;
    storage.ensure_partitions(4).await.unwrap();
    let sent = enqueue_padded(&storage, line_bytes).await;

    // The real binary, as an operator runs it: its multi-threaded runtime
    // runs the four partition workers' instances in parallel.
    let mut relay = crate::spawn_relay(&config);
    let file = out.join("events.jsonl");
    let leases = eventually(
        "every message in the file",
        Duration::from_secs(90),
        || async {
            let status = storage.status(&["audit".into()]).await.unwrap();
            (status[0].lag == 0 && status[0].retries_pending == 0)
                .then(|| status[0].lease_owners.len())
        },
    )
    .await;
    assert!(crate::terminate(&mut relay).success());
    assert_eq!(leases, 4, "four partition workers wrote the file");

    let (ids, torn) = census(&file);
    let size = std::fs::metadata(&file).unwrap().len() as usize;
    assert!(
        size.abs_diff(MESSAGES * line_bytes) < MESSAGES * line_bytes / 10,
        "{size} bytes written for {MESSAGES} lines of about {line_bytes}"
    );
    assert_eq!(
        torn.len(),
        0,
        "torn lines; the first three (80 bytes each): {:?}",
        &torn[..torn.len().min(3)]
    );
    assert_eq!(ids.len(), MESSAGES, "one line per message");
    let distinct: HashSet<String> = ids.into_iter().collect();
    assert_eq!(distinct.len(), MESSAGES, "distinct ids");
    assert_eq!(distinct, sent);
}

#[tokio::test]
async fn four_partitions_never_tear_1100_byte_lines() {
    four_partitions_append_whole_lines(1_100).await;
}

#[tokio::test]
async fn four_partitions_never_tear_6_kb_lines() {
    four_partitions_append_whole_lines(6_000).await;
}

/// `/dev/full` fails every write with ENOSPC, as a full disk does: the
/// message's dead letter (after one attempt) gives that reason, not a bare
/// "I/O error (os error 29)".
#[tokio::test]
async fn a_full_disk_is_reported_as_no_space_left_on_device() {
    assert!(Path::new("/dev/full").exists(), "this test needs /dev/full");
    let scratch = Scratch::new();
    let path = scratch.write_config(&audit_target(
        "/dev/full",
        "/dev",
        Path::new("/dev"),
        "retry = { max_attempts = 1 }",
    ));
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let storage = scratch.storage().await;
    outbox_relay_tests::enqueue(&storage, "e", 3).await;

    let relay = RunningRelay::start(&config).await;
    let letters = eventually("3 dead letters", Duration::from_secs(30), || async {
        let letters = outbox_relay_tests::dead_letters(&storage, "audit").await;
        (letters.len() == 3).then_some(letters)
    })
    .await;
    relay.stop().await;
    for letter in &letters {
        assert!(
            letter
                .last_error
                .contains("append to /dev/full: no space left on device (ENOSPC)"),
            "{}",
            letter.last_error
        );
    }
}
