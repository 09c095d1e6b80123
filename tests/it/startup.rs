//! Startup checks: plugin files and config, through the library and the CLI.

use std::process::Command;
use std::time::Duration;

use crate::relay_binary;
use outbox_relay::storage::Storage as _;
use outbox_relay_tests::{Scratch, component};

/// A config body with one target, `t`, on the `null` plugin.
pub(crate) const NULL_TARGET: &str = r#"
[[routes]]
events = ["*"]
targets = ["t"]

[targets.t]
plugin = "null"
"#;

/// Runs `outbox-relay <args>`: (success, stdout, stderr).
pub(crate) fn run_cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(relay_binary()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn config_with_plugin(scratch: &Scratch, plugin_path: &std::path::Path) -> std::path::PathBuf {
    scratch.write_config(&format!(
        r#"
[[routes]]
events = ["*"]
targets = ["t"]

[targets.t]
plugin = "{}"
"#,
        plugin_path.display()
    ))
}

#[tokio::test]
async fn a_plugin_built_against_another_wit_version_is_refused_at_startup() {
    let scratch = Scratch::new();
    let path = config_with_plugin(&scratch, &component("wrong_version"));
    let config = outbox_relay::config::Config::load(&path).unwrap();
    let error = outbox_relay::app::build_relay(&config)
        .await
        .err()
        .expect("must refuse")
        .to_string();
    assert!(error.contains("wrong_version.wasm"), "{error}");
    assert!(error.contains("outbox:relay@0.2.0"), "{error}");
    assert!(error.contains("outbox:relay@0.1.0"), "{error}");

    let (ok, _, stderr) = run_cli(&["run", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("outbox:relay@0.2.0"), "{stderr}");
}

#[test]
fn plugins_check_explains_bad_files() {
    let scratch = Scratch::new();
    let cache = scratch.path().join("cache");
    let cache = cache.to_str().unwrap();

    let (ok, _, stderr) = run_cli(&[
        "plugins",
        "check",
        component("wrong_version").to_str().unwrap(),
        "--cache-dir",
        cache,
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("built against outbox:relay@0.2.0"),
        "{stderr}"
    );

    let text = scratch.path().join("notes.wasm");
    std::fs::write(&text, "this is not wasm").unwrap();
    let (ok, _, stderr) = run_cli(&[
        "plugins",
        "check",
        text.to_str().unwrap(),
        "--cache-dir",
        cache,
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("notes.wasm") && stderr.contains("not a WebAssembly file"),
        "{stderr}"
    );

    let core = scratch.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let (ok, _, stderr) = run_cli(&[
        "plugins",
        "check",
        core.to_str().unwrap(),
        "--cache-dir",
        cache,
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("core WebAssembly module, not a component"),
        "{stderr}"
    );

    let missing = scratch.path().join("missing.wasm");
    let (ok, _, stderr) = run_cli(&[
        "plugins",
        "check",
        missing.to_str().unwrap(),
        "--cache-dir",
        cache,
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("missing.wasm") && stderr.contains("cannot read"),
        "{stderr}"
    );
}

/// Every bundled transport is a component `plugins check` accepts.
#[test]
fn plugins_check_accepts_every_bundled_transport() {
    let scratch = Scratch::new();
    let cache = scratch.path().join("cache");
    for name in [
        "webhook",
        "nats",
        "redis_streams",
        "rabbitmq",
        "mqtt",
        "kafka",
        "file",
    ] {
        let (ok, stdout, stderr) = run_cli(&[
            "plugins",
            "check",
            component(name).to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
        ]);
        assert!(ok, "{name}: {stderr}");
        assert!(
            stdout.contains("OK, a transport for outbox:relay@0.1.0"),
            "{name}: {stdout}"
        );
    }
}

#[test]
fn plugins_check_prints_what_a_good_plugin_exports() {
    let scratch = Scratch::new();
    let cache = scratch.path().join("cache");
    let (ok, stdout, stderr) = run_cli(&[
        "plugins",
        "check",
        component("file").to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("OK, a transport for outbox:relay@0.1.0"),
        "{stdout}"
    );
    assert!(stdout.contains("outbox:relay/transport@0.1.0"), "{stdout}");
    assert!(
        stdout.contains("outbox:relay/log@0.1.0"),
        "imports are listed: {stdout}"
    );
    // A second check is served from the compiled-component cache.
    let (ok, stdout, _) = run_cli(&[
        "plugins",
        "check",
        component("file").to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok);
    let info: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(info["cached"], true);
}

#[test]
fn malformed_config_names_the_file_and_field() {
    let scratch = Scratch::new();
    let path = scratch.write_config(
        r#"
[[routes]]
events = ["*"]
targets = ["t"]

[targets.t]
plugin = "null"
retry = { max_attempts = "many" }
"#,
    );
    let (ok, _, stderr) = run_cli(&["run", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("relay.toml"), "names the file: {stderr}");
    assert!(stderr.contains("max_attempts"), "names the field: {stderr}");

    let path = scratch.write_config(
        r#"
[[routes]]
events = ["*"]
targets = ["t", "ghost"]

[targets.t]
plugin = "null"
"#,
    );
    let (ok, _, stderr) = run_cli(&["migrate", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("routes[0].targets[1]") && stderr.contains("ghost"),
        "{stderr}"
    );
}

#[test]
fn a_missing_plugin_file_is_reported_with_its_file_and_field() {
    let scratch = Scratch::new();
    let path = scratch.write_config(
        r#"
[[routes]]
events = ["*"]
targets = ["t"]

[targets.t]
plugin = "no-such-plugin"
"#,
    );
    let (ok, _, stderr) = run_cli(&["run", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!("config file {}", path.display()))
            && stderr.contains("field `targets.t.plugin`")
            && stderr.contains("no-such-plugin.wasm")
            && stderr.contains("cannot read"),
        "{stderr}"
    );
    // An injector's file likewise, by its place in the list.
    let path = scratch.write_config(
        r#"
[[routes]]
events = ["*"]
targets = ["t"]

[targets.t]
plugin = "null"

[[targets.t.injectors]]
plugin = "no-such-injector"
"#,
    );
    let (ok, _, stderr) = run_cli(&["run", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("field `targets.t.injectors[0].plugin`")
            && stderr.contains("no-such-injector.wasm"),
        "{stderr}"
    );
}

/// `examples/fan-out.toml` is valid, and each of its targets starts against
/// the services on this machine (each transport connects in `init`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fan_out_example_starts_every_target() {
    let scratch = Scratch::new();
    // The Kafka target's broker: a tansu of this test's own.
    let kafka = outbox_relay_tests::kafka::Broker::start();
    let example = include_str!("../../examples/fan-out.toml");
    let body = &example[example.find("[[routes]]").unwrap()..];
    let secret = scratch.path().join("hooks.secret");
    std::fs::write(&secret, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let body = body
        .replace(
            "env = \"PARTNER_HOOKS_SECRET\"",
            &format!("file = \"{}\"", secret.display()),
        )
        .replace(
            "../target/fan-out/out",
            &scratch.path().join("out").display().to_string(),
        )
        .replace("127.0.0.1:9092", &kafka.listen);
    let config = scratch.load_config(&body);
    assert_eq!(config.targets.len(), 7);
    let names: Vec<String> = config.targets.keys().cloned().collect();
    let results = outbox_relay::app::check_targets(&config, &names)
        .await
        .unwrap();
    for (name, result) in results {
        if let Err(e) = result {
            panic!("target {name} of examples/fan-out.toml cannot start: {e}");
        }
    }

    // And it delivers: an order reaches Kafka (and the audit file).
    let storage = scratch.storage().await;
    let order = outbox_relay::NewMessage::new("order.created", br#"{"order":1}"#.to_vec())
        .with_key("order-1");
    storage.save(std::slice::from_ref(&order)).await.unwrap();
    let relay = outbox_relay_tests::RunningRelay::start(&config).await;
    let records = kafka.read("orders", 1, Duration::from_secs(60));
    relay.stop().await;
    assert_eq!(records.len(), 1, "the order reached Kafka");
    assert_eq!(records[0].value.as_deref(), Some(&order.payload[..]));
    assert_eq!(records[0].key.as_deref(), Some(&b"order-1"[..]));
}

/// `outbox-relay check` starts each target once and names the one that cannot start.
#[test]
fn check_reports_each_target_and_fails_when_one_cannot_start() {
    let scratch = Scratch::new();
    let path = scratch.write_config(
        r#"
[[routes]]
events = ["*"]
targets = ["fine", "broken"]

[targets.fine]
plugin = "null"

[targets.broken]
plugin = "webhook"
config = { url = "http://127.0.0.1:9/in" }
sandbox = { allow_http = ["hooks.example.com"] }
"#,
    );
    let (ok, stdout, stderr) = run_cli(&["check", "--config", path.to_str().unwrap()]);
    assert!(!ok, "{stdout}{stderr}");
    assert!(stdout.contains("ok      fine"), "{stdout}");
    assert!(
        stdout.contains("FAILED  broken")
            && stdout.contains("the sandbox does not allow HTTP to 127.0.0.1"),
        "{stdout}"
    );
    assert!(stderr.contains("1 of 2 targets cannot start"), "{stderr}");
}

/// A typo'd key names the file and the key, suggests the known one, and has
/// none of figment's framing (``for key "default.databse"``).
#[test]
fn an_unknown_key_names_the_file_the_key_and_the_nearest_known_key() {
    let scratch = Scratch::new();
    let path = scratch.write_config(&format!("{NULL_TARGET}ordred = true\n"));
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("database =", "databse =", 1)).unwrap();
    let (ok, _, stderr) = run_cli(&["migrate", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(
        stderr.trim(),
        format!(
            "error: config file {}: unknown key `databse`; did you mean `database`?",
            path.display()
        )
    );
    std::fs::write(&path, text).unwrap();
    let (ok, _, stderr) = run_cli(&["migrate", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("unknown key `targets.t.ordred`; did you mean `targets.t.ordered`?"),
        "{stderr}"
    );
}

/// A directory or a missing file says so; a config from process
/// substitution (`--config <(...)`, a /dev/fd pipe) is read like a file.
#[test]
fn a_config_path_that_is_not_a_file_says_why_and_a_pipe_is_read() {
    let scratch = Scratch::new();
    let dir = scratch.path().to_str().unwrap();
    let (ok, _, stderr) = run_cli(&["status", "--config", dir]);
    assert!(!ok);
    assert_eq!(
        stderr.trim(),
        format!("error: cannot read config {dir}: is a directory")
    );
    let missing = scratch.path().join("nope.toml");
    let (ok, _, stderr) = run_cli(&["status", "--config", missing.to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(
        stderr.trim(),
        format!(
            "error: cannot read config {}: no such file",
            missing.display()
        )
    );

    let path = scratch.write_config("");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "exec \"$0\" migrate --config <(cat '{}')",
            path.display()
        ))
        .arg(relay_binary())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.starts_with("migrated sqlite://"), "{stdout}");
}
