//! The plugin author's walk-through of docs/plugins.md, for real: `plugins new`,
//! `cargo test` natively, `cargo build --target wasm32-wasip2`, `plugins check`,
//! `plugins test`, then the component as a target of a running relay.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use outbox_relay::NewMessage;
use outbox_relay::storage::Storage;
use outbox_relay_tests::{RunningRelay, Scratch, component, dead_letters, enqueue, eventually};

use crate::relay_binary;

const WAIT: Duration = Duration::from_secs(30);

/// A target directory shared by every run, so the SDK and its dependencies
/// are built once and later runs are warm.
fn scaffold_target_dir() -> PathBuf {
    Path::new(env!("OUTBOX_TEST_COMPONENTS"))
        .parent()
        .unwrap()
        .join("scaffold-target")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cli(args: &[&str]) -> Output {
    Command::new(relay_binary()).args(args).output().unwrap()
}

/// Runs `cli` and asserts it succeeded; returns stdout.
fn cli_ok(args: &[&str]) -> String {
    let out = cli(args);
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "outbox-relay {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}

/// Runs a nested cargo in `dir` as an author would: none of this test's
/// cargo variables leak in (only CARGO_HOME stays), and the target directory
/// is the shared warm one.
fn cargo(dir: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new("cargo");
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if (key.starts_with("CARGO") && key != "CARGO_HOME")
            || key.starts_with("__CARGO")
            || key == "RUSTC_WRAPPER"
            || key == "RUSTC_WORKSPACE_WRAPPER"
            || key == "RUSTFLAGS"
            || key == "RUSTDOCFLAGS"
        {
            cmd.env_remove(&key);
        }
    }
    let out = cmd
        .current_dir(dir)
        .args(args)
        .env("CARGO_TARGET_DIR", scaffold_target_dir())
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo: {e}"));
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "cargo {args:?} in {} failed\nstdout:\n{stdout}\nstderr:\n{stderr}",
        dir.display()
    );
    stdout + &stderr
}

/// `plugins new`, then `cargo test` and the wasm build; returns the component,
/// copied out of the shared target directory.
fn scaffold_and_build(scratch: &Scratch, name: &str, kind: &str) -> PathBuf {
    let dir = scratch.path().join(name);
    let stdout = cli_ok(&[
        "plugins",
        "new",
        name,
        "--kind",
        kind,
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert!(stdout.contains("cargo build --release --target wasm32-wasip2"));
    for file in ["Cargo.toml", "src/lib.rs", "README.md", ".gitignore"] {
        assert!(dir.join(file).is_file(), "{file} was not written");
    }
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    let sdk = repo_root().join("guest-sdk").canonicalize().unwrap();
    assert!(
        manifest.contains(&format!("path = \"{}\"", sdk.display())),
        "the SDK is found by absolute path: {manifest}"
    );
    // The versions the bundled plugins are built with (a lockfile is only a
    // starting point: cargo adds the new crate and drops what it does not use).
    // It keeps the nested build reproducible and off the network.
    std::fs::copy(
        repo_root().join("plugins/Cargo.lock"),
        dir.join("Cargo.lock"),
    )
    .unwrap();

    let tested = cargo(&dir, &["test", "-q"]);
    assert!(tested.contains("test result: ok."), "{tested}");

    cargo(
        &dir,
        &["build", "-q", "--release", "--target", "wasm32-wasip2"],
    );
    let built = scaffold_target_dir()
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    let wasm = scratch.path().join(format!("{name}.wasm"));
    std::fs::copy(&built, &wasm)
        .unwrap_or_else(|e| panic!("no component at {}: {e}", built.display()));
    wasm
}

/// A transport that answers with more or fewer outcomes than the batch had
/// envelopes breaks the batch contract: `plugins test` says so and fails,
/// printing no outcome as if it could be trusted.
#[test]
fn plugins_test_fails_on_a_wrong_outcome_count() {
    let scratch = Scratch::new();
    let wasm = component("miscount");
    let cache = scratch.path().join("cache");
    // The three built-in samples; miscount answers one fewer, or one more.
    for (config, got) in [("{}", 2), (r#"{"extra":true}"#, 4)] {
        let out = cli(&[
            "plugins",
            "test",
            wasm.to_str().unwrap(),
            "--config",
            config,
            "--cache-dir",
            cache.to_str().unwrap(),
        ]);
        let (stdout, stderr) = text(&out);
        assert!(
            !out.status.success(),
            "a miscount must fail plugins test\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        assert!(
            stderr.contains(&format!("returned {got} outcomes for a batch of 3")),
            "{stderr}"
        );
        assert!(
            !stdout.contains("delivered"),
            "no outcome is shown: {stdout}"
        );
    }
}

#[test]
fn plugins_new_refuses_bad_names_and_existing_directories() {
    let scratch = Scratch::new();
    for bad in ["Hello", "my_plugin", "9lives", "trailing-", "fn"] {
        let out = cli(&[
            "plugins",
            "new",
            bad,
            "--kind",
            "transport",
            "--dir",
            scratch.path().join("x").to_str().unwrap(),
        ]);
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "{bad} must be refused");
        assert!(stderr.contains(&format!("{bad:?}")), "{stderr}");
    }
    assert!(!scratch.path().join("x").exists());

    let existing = scratch.path().join("taken");
    std::fs::create_dir(&existing).unwrap();
    std::fs::write(existing.join("keep.txt"), "mine").unwrap();
    let out = cli(&[
        "plugins",
        "new",
        "taken",
        "--kind",
        "injector",
        "--dir",
        existing.to_str().unwrap(),
    ]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(existing.join("keep.txt")).unwrap(),
        "mine"
    );
    assert!(!existing.join("Cargo.toml").exists());

    let out = cli(&[
        "plugins",
        "new",
        "elsewhere",
        "--kind",
        "transport",
        "--dir",
        scratch.path().join("elsewhere").to_str().unwrap(),
        "--sdk-path",
        scratch.path().to_str().unwrap(),
    ]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("--sdk-path"), "{stderr}");
}

#[tokio::test]
async fn a_scaffolded_transport_builds_tests_and_delivers_in_a_relay() {
    let scratch = Scratch::new();
    let wasm = scaffold_and_build(&scratch, "hello", "transport");
    let wasm_arg = wasm.to_str().unwrap();
    let cache = scratch.path().join("cache");
    let cache_arg = cache.to_str().unwrap();

    let checked = cli_ok(&["plugins", "check", wasm_arg, "--cache-dir", cache_arg]);
    assert!(
        checked.contains("OK, a transport for outbox:relay@0.1.0"),
        "{checked}"
    );

    // The built-in samples: three events, all delivered (the kind is detected).
    let tested = cli_ok(&["plugins", "test", wasm_arg, "--cache-dir", cache_arg]);
    let lines: Vec<&str> = tested.lines().collect();
    assert_eq!(lines.len(), 3, "{tested}");
    for (line, event) in lines
        .iter()
        .zip(["order.created", "order.paid", "user.created"])
    {
        assert!(line.contains(event), "{line}");
        assert!(line.ends_with("  delivered"), "{line}");
    }

    // Envelopes of our own, one with an empty payload.
    let batch = scratch.path().join("batch.jsonl");
    std::fs::write(
        &batch,
        concat!(
            r#"{"event_name": "order.created", "payload": "{\"order\":1}", "partition_key": "order-1", "headers": {"X-Tenant": "acme"}}"#,
            "\n",
            r#"{"event_name": "order.empty", "payload": ""}"#,
            "\n",
        ),
    )
    .unwrap();
    let tested = cli_ok(&[
        "plugins",
        "test",
        wasm_arg,
        "--kind",
        "transport",
        "--envelopes",
        batch.to_str().unwrap(),
        "--cache-dir",
        cache_arg,
        "--json",
    ]);
    let doc: serde_json::Value = serde_json::from_str(&tested).unwrap();
    assert_eq!(doc["kind"], "transport");
    assert_eq!(doc["results"][0]["event_name"], "order.created");
    assert_eq!(doc["results"][0]["outcome"], "delivered");
    assert_eq!(doc["results"][1]["outcome"], "reject");
    assert_eq!(doc["results"][1]["reason"], "empty payload");

    // A config that is not an object never reaches the plugin.
    let out = cli(&[
        "plugins",
        "test",
        wasm_arg,
        "--config",
        "[1]",
        "--cache-dir",
        cache_arg,
    ]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("JSON object"), "{}", text(&out).1);

    // As a target of a running relay.
    let config = scratch.load_config(&format!(
        r#"
[[routes]]
events = ["*"]
targets = ["hello"]

[targets.hello]
plugin = "{}"
retry = {{ max_attempts = 3, initial_backoff = "50ms", max_backoff = "100ms" }}
"#,
        wasm.display()
    ));
    let storage = scratch.storage().await;
    let sent = enqueue(&storage, "order.created", 5).await;
    let empty = NewMessage::new("order.empty", Vec::new());
    storage.save(std::slice::from_ref(&empty)).await.unwrap();

    let relay = RunningRelay::start(&config).await;
    let names = vec!["hello".to_string()];
    eventually("the hello target to catch up", WAIT, || async {
        let status = storage.status(&names).await.unwrap();
        (status[0].lag == 0 && status[0].retries_pending == 0 && status[0].dead_letters == 1)
            .then_some(())
    })
    .await;
    relay.stop().await;

    assert_eq!(sent.len(), 5);
    let dead = dead_letters(&storage, "hello").await;
    assert_eq!(dead.len(), 1, "only the empty payload is dead: {dead:?}");
    assert_eq!(dead[0].message_id, empty.id.to_string());
    assert_eq!(dead[0].attempts, 1, "a reject is not retried");
    assert!(
        dead[0].last_error.contains("empty payload"),
        "{}",
        dead[0].last_error
    );
}

#[test]
fn a_scaffolded_injector_builds_tests_and_sets_its_header() {
    let scratch = Scratch::new();
    let wasm = scaffold_and_build(&scratch, "stamp-it", "injector");
    let wasm_arg = wasm.to_str().unwrap();
    let cache = scratch.path().join("cache");
    let cache_arg = cache.to_str().unwrap();

    let checked = cli_ok(&["plugins", "check", wasm_arg, "--cache-dir", cache_arg]);
    assert!(
        checked.contains("OK, a header injector for outbox:relay@0.1.0"),
        "{checked}"
    );

    let tested = cli_ok(&[
        "plugins",
        "test",
        wasm_arg,
        "--kind",
        "injector",
        "--cache-dir",
        cache_arg,
    ]);
    let lines: Vec<&str> = tested.lines().collect();
    assert_eq!(lines.len(), 3, "{tested}");
    for line in &lines {
        assert!(line.ends_with("set x-stamp-it=1"), "{line}");
    }

    // Detected from its exports, with an attempt of our own.
    let batch = scratch.path().join("batch.jsonl");
    std::fs::write(
        &batch,
        r#"{"event_name": "order.paid", "payload": {"order": 2}, "attempt": 4}"#,
    )
    .unwrap();
    let tested = cli_ok(&[
        "plugins",
        "test",
        wasm_arg,
        "--envelopes",
        batch.to_str().unwrap(),
        "--cache-dir",
        cache_arg,
        "--json",
    ]);
    let doc: serde_json::Value = serde_json::from_str(&tested).unwrap();
    assert_eq!(doc["kind"], "injector");
    assert_eq!(
        doc["results"][0]["edits"],
        serde_json::json!(["set x-stamp-it=4"])
    );
}
