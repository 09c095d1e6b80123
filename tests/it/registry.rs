//! The target registry (issue 20, finding 1): a rolling config change loses
//! nothing. A target's partitions go only to relays that serve it, retention
//! waits for every registered target, and only `targets forget` lets go.

use std::path::Path;
use std::time::Duration;

use outbox_relay::config::Config;
use outbox_relay::storage::Storage;
use outbox_relay_tests::{RunningRelay, Scratch, enqueue, eventually, read_ids};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

fn target(name: &str, out: &Path) -> String {
    format!(
        r#"
[targets.{name}]
plugin = "file"
config = {{ path = "/out/{name}.jsonl" }}
sandbox = {{ dirs = {{ "/out" = "{}" }} }}
"#,
        out.display()
    )
}

async fn cli(config: &Path, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(crate::relay_binary())
        .args(args)
        .args(["--config", config.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap()
}

async fn status_json(config: &Path) -> Vec<Value> {
    let out = cli(config, &["status", "--json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array().unwrap().clone()
}

fn row<'a>(rows: &'a [Value], target: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["target"] == target)
        .unwrap_or_else(|| panic!("no status row for {target}: {rows:?}"))
}

async fn log_size(storage: &dyn Storage) -> i64 {
    storage
        .status(&["(nobody)".to_string()])
        .await
        .unwrap()
        .remove(0)
        .lag
}

/// Fails on main: t2's partitions were dealt to relay A too, which does not
/// serve t2, so half of t2's messages never arrived (and A pruned them).
#[tokio::test]
async fn a_rolling_config_change_loses_nothing_and_only_forget_lets_go() {
    let scratch = Scratch::new();
    let out = scratch.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let relay = "partitions = 4\nretention = \"1s\"\nprune_interval = \"1s\"";
    let routes = "[[routes]]\nevents = [\"*\"]\ntargets = [\"t1\", \"t2\"]\n";
    let a_path = scratch.write_config_as(
        "a.toml",
        relay,
        &format!(
            "[[routes]]\nevents = [\"*\"]\ntargets = [\"t1\"]\n{}",
            target("t1", &out)
        ),
    );
    let b_path = scratch.write_config_as(
        "b.toml",
        relay,
        &format!("{routes}{}{}", target("t1", &out), target("t2", &out)),
    );
    let a = RunningRelay::start(&Config::load(&a_path).unwrap()).await;
    let storage = scratch.storage().await;
    let before = enqueue(&storage, "e", 100).await;
    eventually("A delivers to t1", WAIT, || async {
        (read_ids(&out.join("t1.jsonl")).len() >= 100).then_some(())
    })
    .await;

    // B joins with t1 and t2: t2 is registered, and all of its partitions
    // are dealt to B, the only relay that serves it.
    let b = RunningRelay::start(&Config::load(&b_path).unwrap()).await;
    eventually("t2 registered", WAIT, || async {
        (storage.registered_targets().await.unwrap() == ["t1", "t2"]).then_some(())
    })
    .await;
    let after = enqueue(&storage, "e", 400).await;
    let t2 = eventually(
        "t2 receives every message sent after it joined",
        WAIT,
        || async {
            let got = read_ids(&out.join("t2.jsonl"));
            after
                .iter()
                .all(|m| got.contains(&m.id.to_string()))
                .then_some(got)
        },
    )
    .await;
    let t1 = read_ids(&out.join("t1.jsonl"));
    for m in before.iter().chain(&after) {
        assert!(t1.contains(&m.id.to_string()), "t1 lost {}", m.id);
    }
    assert!(t2.len() >= after.len());
    // Both relays serve t1 and report running; only B serves t2.
    let rows = eventually("both relays live", WAIT, || async {
        let rows = status_json(&a_path).await;
        (row(&rows, "t1")["served_by"].as_array().unwrap().len() == 2).then_some(rows)
    })
    .await;
    let t2_row = row(&rows, "t2");
    assert_eq!(t2_row["registered"], true);
    assert_eq!(t2_row["served_by"].as_array().unwrap().len(), 1);
    assert_eq!(t2_row["served_by"][0]["state"]["state"], "running");
    let t2_leases: Vec<&str> = t2_row["lease_owners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    let b_owner = t2_row["served_by"][0]["owner"].as_str().unwrap();
    assert!(
        t2_leases.iter().all(|o| o.starts_with(b_owner)),
        "t2's partitions are B's only: {t2_leases:?}"
    );

    // B goes (t2 leaves every config): t2 stays registered, and retention
    // keeps what t2 has not passed.
    b.stop().await;
    let kept = enqueue(&storage, "e", 50).await;
    eventually("A delivers the new ones to t1", WAIT, || async {
        let got = read_ids(&out.join("t1.jsonl"));
        kept.iter()
            .all(|m| got.contains(&m.id.to_string()))
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        log_size(&storage).await >= 50,
        "retention kept the messages t2 has not passed"
    );
    let rows = status_json(&a_path).await;
    let t2_row = row(&rows, "t2");
    assert_eq!(t2_row["registered"], true);
    assert_eq!(t2_row["served_by"], serde_json::json!([]));
    assert_eq!(t2_row["lag"], 50);
    let text = cli(&a_path, &["status"]).await;
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("target \"t2\" is registered but no live relay serves it")
            && text.contains("targets forget t2"),
        "{text}"
    );

    // Without --yes, forget says what it would let go and changes nothing.
    let dry = cli(&a_path, &["targets", "forget", "t2"]).await;
    let dry_out = String::from_utf8_lossy(&dry.stdout);
    assert!(!dry.status.success(), "{dry_out}");
    assert!(
        dry_out.contains("lets retention delete 50 message(s)"),
        "{dry_out}"
    );
    assert_eq!(storage.registered_targets().await.unwrap(), ["t1", "t2"]);
    let unknown = cli(&a_path, &["targets", "forget", "nosuch", "--yes"]).await;
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("\"nosuch\" is not registered"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    // A target a live relay serves cannot be forgotten.
    let served = cli(&a_path, &["targets", "forget", "t1", "--yes"]).await;
    assert!(!served.status.success());
    assert!(
        String::from_utf8_lossy(&served.stderr).contains("still served"),
        "{}",
        String::from_utf8_lossy(&served.stderr)
    );

    let forgot = cli(&a_path, &["targets", "forget", "t2", "--yes"]).await;
    assert!(
        forgot.status.success(),
        "{}",
        String::from_utf8_lossy(&forgot.stderr)
    );
    assert_eq!(storage.registered_targets().await.unwrap(), ["t1"]);
    eventually("retention lets the messages go", WAIT, || async {
        (log_size(&storage).await == 0).then_some(())
    })
    .await;
    a.stop().await;
}
