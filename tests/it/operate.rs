//! Operating a running relay: Prometheus metrics that match what happened,
//! health endpoints, and config reloads that add a target and change a route
//! without losing or repeating anything.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use outbox_relay::NewMessage;
use outbox_relay::storage::Storage;
use outbox_relay_tests::{Scratch, enqueue, eventually, read_jsonl};

use crate::startup::{NULL_TARGET, run_cli};
use crate::{free_port, http_get, relay_binary, terminate};

const WAIT: Duration = Duration::from_secs(60);

fn spawn_logged(config: &Path, log: &Path) -> Child {
    Command::new(relay_binary())
        .args(["run", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_what_was_delivered_retried_and_dead_lettered() {
    const N: usize = 10;
    let scratch = Scratch::new();
    let out = scratch.path().join("out");
    let port = free_port();
    let config = scratch.write_config(&format!(
        r#"
[admin]
listen = "127.0.0.1:{port}"
lag_refresh = "100ms"

[[routes]]
events = ["*"]
targets = ["ok", "flaky", "rejecting"]

[targets.ok]
plugin = "count"
config = {{ path = "/out/ok.jsonl" }}
sandbox = {{ dirs = {{ "/out" = "{out}" }} }}

[targets.flaky]
plugin = "flaky"
config = {{ succeed_on_attempt = 2, path = "/out/flaky.jsonl" }}
retry = {{ initial_backoff = "20ms", jitter = 0.0 }}
sandbox = {{ dirs = {{ "/out" = "{out}" }} }}

[targets.rejecting]
plugin = "reject"
"#,
        out = out.display()
    ));
    let storage = scratch.storage().await;
    let mut relay = spawn_logged(&config, &scratch.path().join("relay.log"));
    eventually("the admin endpoint", WAIT, || async {
        http_get(port, "/healthz").filter(|(s, _)| *s == 200)
    })
    .await;
    enqueue(&storage, "e", N).await;
    eventually("every outcome settled", WAIT, || async {
        let s = storage
            .status(&["ok".into(), "flaky".into(), "rejecting".into()])
            .await
            .unwrap();
        let done = read_jsonl(&out.join("ok.jsonl")).len() == N
            && read_jsonl(&out.join("flaky.jsonl")).len() == N
            && s[2].dead_letters == N as i64;
        done.then_some(())
    })
    .await;
    assert_eq!(http_get(port, "/readyz").map(|(s, _)| s), Some(200));
    // Let the lag gauges refresh after the last acknowledgement.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = http_get(port, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(terminate(&mut relay).success());

    // prometheus-parse, not ours, reads the exposition format.
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in:\n{body}"))
    };
    let n = N as f64;
    assert_eq!(
        value(
            "outbox_deliveries_total",
            &[("target", "ok"), ("outcome", "delivered")]
        ),
        n
    );
    assert_eq!(
        value(
            "outbox_deliveries_total",
            &[("target", "flaky"), ("outcome", "retry")]
        ),
        n
    );
    assert_eq!(
        value(
            "outbox_deliveries_total",
            &[("target", "flaky"), ("outcome", "delivered")]
        ),
        n
    );
    assert_eq!(
        value(
            "outbox_deliveries_total",
            &[("target", "rejecting"), ("outcome", "dead")]
        ),
        n
    );
    assert_eq!(value("outbox_retries_total", &[("target", "flaky")]), n);
    assert_eq!(
        value("outbox_dead_letters_total", &[("target", "rejecting")]),
        n
    );
    for target in ["ok", "flaky", "rejecting"] {
        assert_eq!(
            value("outbox_lag_messages", &[("target", target)]),
            0.0,
            "{target}"
        );
    }
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "outbox_batch_duration_seconds"
                && matches!(s.value, prometheus_parse::Value::Histogram(_))),
        "a batch duration histogram"
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "outbox_plugin_call_duration_seconds")
    );
}

fn reload_config(scratch: &Scratch, out: &Path, with_beta: bool) -> PathBuf {
    let beta = if with_beta {
        format!(
            r#"
[[routes]]
events = ["b.*"]
targets = ["alpha", "beta"]

[targets.beta]
plugin = "count"
config = {{ path = "/out/beta.jsonl" }}
sandbox = {{ dirs = {{ "/out" = "{}" }} }}
"#,
            out.display()
        )
    } else {
        String::new()
    };
    scratch.write_config(&format!(
        r#"
[[routes]]
events = ["a.*"]
targets = ["alpha"]

[targets.alpha]
plugin = "count"
config = {{ path = "/out/alpha.jsonl" }}
sandbox = {{ dirs = {{ "/out" = "{}" }} }}
{beta}
"#,
        out.display()
    ))
}

fn hup(child: &Child) {
    assert!(
        Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
}

fn log_count(log: &Path, needle: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(needle)
        .count()
}

fn ids(file: &Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in read_jsonl(file) {
        *counts
            .entry(line["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_a_target_and_a_route_and_a_broken_config_is_rejected() {
    let scratch = Scratch::new();
    let out = scratch.path().join("out");
    let log = scratch.path().join("relay.log");
    let config = reload_config(&scratch, &out, false);
    let storage = scratch.storage().await;
    let mut relay = spawn_logged(&config, &log);
    let alpha = out.join("alpha.jsonl");
    let beta = out.join("beta.jsonl");

    let first = enqueue(&storage, "a.first", 5).await;
    eventually("alpha's first five", WAIT, || async {
        (ids(&alpha).len() == 5).then_some(())
    })
    .await;

    // Add target beta and route b.* to both; reload with SIGHUP.
    reload_config(&scratch, &out, true);
    hup(&relay);
    eventually("the reload", WAIT, || async {
        (log_count(&log, "config reloaded") >= 1).then_some(())
    })
    .await;
    let routed: Vec<NewMessage> = enqueue(&storage, "b.second", 5).await;
    let more = enqueue(&storage, "a.third", 5).await;
    eventually("alpha's fifteen and beta's five", WAIT, || async {
        (ids(&alpha).len() == 15 && ids(&beta).len() == 5).then_some(())
    })
    .await;

    // A broken config is rejected; the running one keeps delivering.
    std::fs::write(&config, "database = [this is not toml").unwrap();
    hup(&relay);
    eventually("the rejection", WAIT, || async {
        (log_count(&log, "the new config was rejected") >= 1).then_some(())
    })
    .await;
    let after = enqueue(&storage, "a.fourth", 3).await;
    eventually("alpha's last three", WAIT, || async {
        (ids(&alpha).len() == 18).then_some(())
    })
    .await;
    assert!(terminate(&mut relay).success());

    let alpha_ids = ids(&alpha);
    for m in first.iter().chain(&routed).chain(&more).chain(&after) {
        assert_eq!(
            alpha_ids.get(&m.id.to_string()),
            Some(&1),
            "alpha got {} exactly once",
            m.id
        );
    }
    let beta_ids = ids(&beta);
    assert_eq!(beta_ids.len(), 5);
    for m in &routed {
        assert_eq!(
            beta_ids.get(&m.id.to_string()),
            Some(&1),
            "beta got {} exactly once",
            m.id
        );
    }
    assert!(
        log_count(&log, "database") >= 1,
        "the rejection names what is wrong"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_partition_count_is_rejected_and_the_relay_runs_on() {
    let scratch = Scratch::new();
    let out = scratch.path().join("out");
    let log = scratch.path().join("relay.log");
    let config = reload_config(&scratch, &out, false);
    let storage = scratch.storage().await;
    let mut relay = spawn_logged(&config, &log);
    let alpha = out.join("alpha.jsonl");
    enqueue(&storage, "a.first", 3).await;
    eventually("alpha's first three", WAIT, || async {
        (ids(&alpha).len() == 3).then_some(())
    })
    .await;
    // The same targets with another partition count.
    let body = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        body.replacen("[relay]\n", "[relay]\npartitions = 8\n", 1),
    )
    .unwrap();
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .contains("partitions = 8")
    );
    hup(&relay);
    eventually("the rejection", WAIT, || async {
        (log_count(&log, "the new config was rejected") >= 1).then_some(())
    })
    .await;
    assert!(
        log_count(&log, "partition") >= 1,
        "the rejection names the partition count"
    );
    enqueue(&storage, "a.second", 3).await;
    eventually(
        "alpha's next three, from the relay still running",
        WAIT,
        || async { (ids(&alpha).len() == 6).then_some(()) },
    )
    .await;
    assert!(
        relay.try_wait().unwrap().is_none(),
        "the relay did not exit"
    );
    assert!(terminate(&mut relay).success());
}

/// Read commands never write: on a database that was never migrated,
/// `status` and `dead-letters list|show` say to run `migrate` and leave it
/// as it was (no SQLite file is created; an empty one stays empty), and
/// `check` does not open it.
#[test]
fn read_commands_refuse_an_unmigrated_sqlite_database_and_write_nothing() {
    let scratch = Scratch::new();
    let db = scratch.path().join("outbox.db");
    let path = scratch.write_config(NULL_TARGET);
    let config = path.to_str().unwrap();
    let reads: [&[&str]; 3] = [
        &["status", "--config", config],
        &["dead-letters", "list", "--config", config],
        &["dead-letters", "show", "t", "1", "--config", config],
    ];
    let advice = format!("run `outbox-relay migrate --config {config}` first");
    for args in reads {
        let (ok, _, stderr) = run_cli(args);
        assert!(!ok, "{args:?} succeeded");
        assert!(
            stderr.contains(&format!(
                "the database sqlite://{} does not exist",
                db.display()
            )) && stderr.contains(&advice),
            "{args:?}: {stderr}"
        );
        assert!(!db.exists(), "{args:?} created the database file");
    }
    // `check` starts the plugins and never opens the database.
    let (ok, stdout, stderr) = run_cli(&["check", "--config", config]);
    assert!(ok && stdout.contains("ok      t"), "{stdout}{stderr}");
    assert!(!db.exists(), "check created the database file");
    std::fs::write(&db, b"").unwrap();
    for args in reads {
        let (ok, _, stderr) = run_cli(args);
        assert!(!ok, "{args:?} succeeded");
        assert!(
            stderr.contains("has no outbox schema") && stderr.contains(&advice),
            "{args:?}: {stderr}"
        );
        assert_eq!(std::fs::metadata(&db).unwrap().len(), 0, "{args:?} wrote");
    }
    let (ok, stdout, stderr) = run_cli(&["migrate", "--config", config]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("migrated"), "{stdout}");
    let (ok, stdout, stderr) = run_cli(&["status", "--config", config, "--json"]);
    assert!(ok, "{stderr}");
    let rows: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (rows[0]["target"].as_str(), rows[0]["lag"].as_i64()),
        (Some("t"), Some(0))
    );
}

#[tokio::test]
async fn read_commands_refuse_an_unmigrated_postgres_database_and_write_nothing() {
    let scratch = Scratch::postgres().await;
    let path = scratch.write_config(NULL_TARGET);
    let config = path.to_str().unwrap();
    let pool = scratch.pg_pool().await;
    let tables = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    for args in [
        &["status", "--config", config][..],
        &["dead-letters", "list", "--config", config][..],
    ] {
        let (ok, _, stderr) = run_cli(args);
        assert!(!ok, "{args:?} succeeded");
        assert!(
            stderr.contains("has no outbox schema")
                && stderr.contains(&format!(
                    "run `outbox-relay migrate --config {config}` first"
                )),
            "{args:?}: {stderr}"
        );
        assert_eq!(tables().await, 0, "{args:?} created tables");
    }
    let (ok, _, stderr) = run_cli(&["migrate", "--config", config]);
    assert!(ok, "{stderr}");
    assert!(tables().await > 0);
    let (ok, stdout, stderr) = run_cli(&["status", "--config", config, "--json"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("\"target\": \"t\""), "{stdout}");
}

/// `migrate` needs only the database; `run` and `check` need a target.
#[test]
fn migrate_works_without_targets_and_run_says_it_needs_one() {
    let scratch = Scratch::new();
    let path = scratch.write_config("");
    let config = path.to_str().unwrap();
    let (ok, stdout, stderr) = run_cli(&["migrate", "--config", config]);
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout.trim(),
        format!(
            "migrated sqlite://{} (1 partitions)",
            scratch.path().join("outbox.db").display()
        )
    );
    for command in ["run", "check"] {
        let (ok, _, stderr) = run_cli(&[command, "--config", config]);
        assert!(!ok, "{command} ran without targets");
        assert!(
            stderr.contains(&format!(
                "config file {config}: field `targets`: no targets are configured"
            )),
            "{command}: {stderr}"
        );
    }
}

/// `enqueue` needs a payload (text, a file, or `-` for stdin), and prints
/// every id it enqueued.
#[tokio::test]
async fn enqueue_requires_a_payload_and_prints_every_id() {
    let scratch = Scratch::new();
    let path = scratch.write_config("");
    let config = path.to_str().unwrap();
    let (ok, _, stderr) = run_cli(&["enqueue", "--config", config, "-e", "order.created"]);
    assert!(!ok);
    assert!(
        stderr.contains("required") && stderr.contains("--payload <PAYLOAD>|--payload-file"),
        "{stderr}"
    );
    assert!(!scratch.path().join("outbox.db").exists());

    let (ok, stdout, stderr) = run_cli(&[
        "enqueue",
        "--config",
        config,
        "-e",
        "order.created",
        "-p",
        "{\"a\":1}",
        "-n",
        "15",
    ]);
    assert!(ok, "{stderr}");
    let printed: Vec<&str> = stdout.lines().collect();
    assert_eq!(printed.len(), 15, "{stdout}");
    assert!(
        printed.iter().all(|l| uuid::Uuid::parse_str(l).is_ok()),
        "{stdout}"
    );

    let mut child = Command::new(relay_binary())
        .args([
            "enqueue",
            "--config",
            config,
            "-e",
            "order.piped",
            "--payload-file",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"from stdin").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let piped = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let storage = scratch.storage().await;
    let entries = storage
        .fetch_pending(
            0,
            outbox_relay::message::Position::default(),
            100,
            usize::MAX,
        )
        .await
        .unwrap();
    let saved: Vec<(String, String, Vec<u8>)> = entries
        .into_iter()
        .map(|e| {
            let m = e.unwrap();
            (m.id.to_string(), m.event_name, m.payload)
        })
        .collect();
    assert_eq!(saved.len(), 16);
    for (id, event, payload) in &saved[..15] {
        assert!(printed.contains(&id.as_str()), "{id} was not printed");
        assert_eq!(
            (event.as_str(), payload.as_slice()),
            ("order.created", &b"{\"a\":1}"[..])
        );
    }
    assert_eq!(
        saved[15],
        (piped, "order.piped".to_string(), b"from stdin".to_vec())
    );
}

/// A target whose plugin cannot start is named, with the reason, by
/// `status --json` (the relay's heartbeat) and `/readyz`; the others run.
#[tokio::test]
async fn a_target_that_cannot_start_is_named_with_its_reason_by_status_and_readyz() {
    let scratch = Scratch::new();
    let out = scratch.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let port = free_port();
    // `broken`'s init opens a file in a directory the sandbox does not map.
    let config = scratch.write_config(&format!(
        r#"
[admin]
listen = "127.0.0.1:{port}"

[[routes]]
events = ["*"]
targets = ["ok", "broken"]

[targets.ok]
plugin = "count"
config = {{ path = "/out/ok.jsonl" }}
sandbox = {{ dirs = {{ "/out" = "{out}" }} }}

[targets.broken]
plugin = "flaky"
config = {{ path = "/nowhere/flaky.jsonl" }}
"#,
        out = out.display()
    ));
    let storage = scratch.storage().await;
    let mut relay = spawn_logged(&config, &scratch.path().join("relay.log"));
    enqueue(&storage, "e", 3).await;
    let (code, body) = eventually("/readyz naming the broken target", WAIT, || async {
        http_get(port, "/readyz").filter(|(_, body)| body.contains("broken"))
    })
    .await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("cannot start"), "{body}");
    assert!(body.contains("/nowhere/flaky.jsonl"), "the reason: {body}");
    assert!(
        !body.contains("\"ok\""),
        "the working target is not listed: {body}"
    );

    let state = eventually("status --json with the state", WAIT, || async {
        let out = Command::new(relay_binary())
            .args(["status", "--json", "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let broken = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["target"] == "broken")
            .cloned()
            .unwrap();
        let state = broken["served_by"][0]["state"].clone();
        (state["state"] == "cannot_start").then_some(state)
    })
    .await;
    assert!(
        state["reason"]
            .as_str()
            .is_some_and(|r| r.contains("init failed") && r.contains("/nowhere/flaky.jsonl")),
        "{state}"
    );
    assert!(state["since_ms"].as_i64().is_some_and(|t| t > 0), "{state}");
    assert_eq!(
        read_jsonl(&out.join("ok.jsonl")).len(),
        3,
        "the other target ran"
    );
    assert!(terminate(&mut relay).success());
}

/// A delivery that fails and will be retried is logged at `warn` with the
/// message id, as docs/operations.md says (an attack found retries silent).
#[tokio::test]
async fn a_retried_delivery_is_logged_at_warn_with_its_message_id() {
    let scratch = Scratch::new();
    // Nothing listens on port 9: every attempt fails and is retried.
    let config = scratch.write_config(
        r#"
[[routes]]
events = ["*"]
targets = ["hook"]

[targets.hook]
plugin = "webhook"
config = { url = "http://127.0.0.1:9/in" }
sandbox = { allow_http = ["127.0.0.1:9"] }
retry = { initial_backoff = "5s", max_attempts = 5 }
"#,
    );
    let storage = scratch.storage().await;
    let sent = enqueue(&storage, "thing.happened", 1).await;
    let log = scratch.path().join("relay.log");
    let mut child = spawn_logged(&config, &log);
    let id = sent[0].id.to_string();
    eventually("the retry's warn line", Duration::from_secs(30), || {
        let log = log.clone();
        let id = id.clone();
        async move {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.lines()
                .any(|l| l.contains("WARN") && l.contains("will retry") && l.contains(&id))
                .then_some(())
        }
    })
    .await;
    terminate(&mut child);
}
