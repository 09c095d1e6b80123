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
