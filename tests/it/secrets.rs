//! No configured secret (a webhook's signing secret, a signing key, the
//! database password) appears in the relay's logs, its errors, `status`,
//! `dead-letters` or `check` output, or its metrics, even at debug level and
//! while deliveries fail.

use std::process::{Command, Stdio};
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::post;
use outbox_relay::NewMessage;
use outbox_relay::storage::Storage as _;
use outbox_relay_tests::{Scratch, eventually};

use crate::{free_port, http_get, relay_binary, terminate};

const WAIT: Duration = Duration::from_secs(60);
const DB_PASSWORD: &str = "pg-pass-7f3a9c1e";
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SIGNING_KEY: &str = "hs256-key-4b1d9e0c7a2f5e8d3c6b9a0f1e2d3c4b";

/// Runs the CLI with `args`; returns stdout and stderr together.
fn cli(args: &[&str]) -> String {
    let out = Command::new(relay_binary())
        .args(args)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_no_secret(what: &str, text: &str) {
    let inner = WEBHOOK_SECRET.trim_start_matches("whsec_");
    for secret in [DB_PASSWORD, WEBHOOK_SECRET, inner, SIGNING_KEY] {
        assert!(
            !text.contains(secret),
            "{what} contains the secret {secret:?}:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_logs_errors_status_or_metrics() {
    // A receiver that fails: 500 (retried, logged) or 401 (dead-lettered).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = listener.local_addr().unwrap().to_string();
    let app = axum::Router::new()
        .route(
            "/fail",
            post(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        )
        .route(
            "/deny",
            post(|| async { (StatusCode::UNAUTHORIZED, "bad signature") }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let scratch = Scratch::postgres().await;
    // Trust authentication accepts any password, so the relay really connects with it.
    let database = scratch.database_url().replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{DB_PASSWORD}@"),
        1,
    );
    assert!(database.contains(DB_PASSWORD), "{database}");
    let hook_secret = scratch.path().join("hook.secret");
    std::fs::write(&hook_secret, WEBHOOK_SECRET).unwrap();
    let signing_key = scratch.path().join("signing.key");
    std::fs::write(&signing_key, SIGNING_KEY).unwrap();
    let port = free_port();
    let path = scratch.write_config(&format!(
        r#"
[admin]
listen = "127.0.0.1:{port}"
lag_refresh = "100ms"

[keys.hooks]
algorithm = "HS256"
file = "{hook_secret}"

[keys.snapshots]
algorithm = "HS256"
file = "{signing_key}"

[[routes]]
events = ["fail.*"]
targets = ["failing"]

[[routes]]
events = ["deny.*"]
targets = ["denied"]

[targets.failing]
plugin = "webhook"
keys = ["hooks", "snapshots"]
retry = {{ initial_backoff = "50ms", max_attempts = 3, jitter = 0.0 }}
config = {{ url = "http://{hook_addr}/fail", secret_key = "hooks" }}
sandbox = {{ allow_http = ["{hook_addr}"] }}

[[targets.failing.injectors]]
plugin = "auth_snapshot"
config = {{ key = "snapshots", issuer = "secrets-test" }}

[targets.denied]
plugin = "webhook"
keys = ["hooks"]
config = {{ url = "http://{hook_addr}/deny", secret_key = "hooks" }}
sandbox = {{ allow_http = ["{hook_addr}"] }}
"#,
        hook_secret = hook_secret.display(),
        signing_key = signing_key.display(),
    ));
    let text =
        std::fs::read_to_string(&path)
            .unwrap()
            .replacen(&scratch.database_url(), &database, 1);
    std::fs::write(&path, text).unwrap();
    let config = path.to_str().unwrap();

    let storage = scratch.pg_storage().await;
    storage
        .save(&[
            NewMessage::new("fail.now", b"{}".to_vec())
                .with_header("authorization", "Bearer not-a-configured-secret"),
            NewMessage::new("deny.now", b"{}".to_vec()),
        ])
        .await
        .unwrap();

    let log = scratch.path().join("relay.log");
    let mut relay = Command::new(relay_binary())
        .args(["run", "--config", config])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    eventually("both messages dead-lettered", WAIT, || async {
        let dead = storage
            .list_dead_letters(&Default::default())
            .await
            .unwrap();
        (dead.len() == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, metrics) = http_get(port, "/metrics").expect("metrics endpoint");
    assert!(terminate(&mut relay).success());

    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("HTTP 500"),
        "the failures were logged: {logs}"
    );
    assert_no_secret("the relay's debug log", &logs);
    assert_no_secret("/metrics", &metrics);
    let dead = storage
        .list_dead_letters(&Default::default())
        .await
        .unwrap();
    assert_no_secret("the dead letters' reasons", &format!("{dead:?}"));
    for args in [
        vec!["status", "--config", config],
        vec!["status", "--json", "--config", config],
        vec!["dead-letters", "list", "--config", config],
        vec!["check", "--config", config],
        vec!["migrate", "--config", config],
    ] {
        assert_no_secret(&format!("`{}`", args.join(" ")), &cli(&args));
    }

    // A database that refuses the connection: the error names the URL, not its password.
    let broken = scratch.path().join("broken.toml");
    let text =
        std::fs::read_to_string(&path)
            .unwrap()
            .replacen("@127.0.0.1:5432/", "@127.0.0.1:1/", 1);
    std::fs::write(&broken, text).unwrap();
    let out = cli(&["status", "--config", broken.to_str().unwrap()]);
    assert!(
        out.contains("127.0.0.1:1"),
        "the error names the server: {out}"
    );
    assert_no_secret("a connection error", &out);
}

/// Issue 14: a TLS client key (from a file for one target, from an
/// environment variable for the other) appears in no log line, error,
/// `status`, `check` or `dead-letters` output, or metric, while its target
/// delivers over mTLS, fails with it, and fails its handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tls_client_key_appears_anywhere() {
    use outbox_relay_tests::tls::{self, Pki, Served};
    let pki = Pki::new();
    let good = tls::https(&pki, Served::Good, true).await;
    good.set_status(500);
    let unknown = tls::https(&pki, Served::UnknownCa, true).await;
    let key_text = std::fs::read_to_string(&pki.client.key).unwrap();
    // Every line of the key's base64, and the whole of it on one line.
    let mut secrets: Vec<String> = key_text
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_owned)
        .collect();
    secrets.push(secrets.concat());
    assert!(!secrets.is_empty());

    let scratch = Scratch::new();
    let port = free_port();
    let path = scratch.write_config(&format!(
        r#"
[admin]
listen = "127.0.0.1:{port}"

[[routes]]
events = ["*"]
targets = ["from-file", "from-env"]

[targets.from-file]
plugin = "webhook"
retry = {{ initial_backoff = "50ms", max_attempts = 3, jitter = 0.0 }}
config = {{ url = "{good}/hook" }}
sandbox = {{ allow_http = ["{good_host}"], tls = {{ ca = "{ca}", client_cert = "{cert}", client_key = "{key}" }} }}

[targets.from-env]
plugin = "webhook"
retry = {{ initial_backoff = "50ms", max_attempts = 3, jitter = 0.0 }}
config = {{ url = "{unknown}/hook" }}
sandbox = {{ allow_http = ["{unknown_host}"], tls = {{ ca = "{ca}", client_cert = "{cert}", client_key = {{ env = "OUTBOX_TEST_TLS_KEY" }} }} }}
"#,
        good = good.url(),
        good_host = good.host_port(),
        unknown = unknown.url(),
        unknown_host = unknown.host_port(),
        ca = pki.ca.cert.display(),
        cert = pki.client.cert.display(),
        key = pki.client.key.display(),
    ));
    let config = path.to_str().unwrap();
    let storage = scratch.storage().await;
    storage
        .save(&[NewMessage::new("thing.happened", b"{}".to_vec())])
        .await
        .unwrap();

    let log = scratch.path().join("relay.log");
    let mut relay = Command::new(relay_binary())
        .args(["run", "--config", config])
        .env("RUST_LOG", "debug")
        .env("OUTBOX_TEST_TLS_KEY", &key_text)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    eventually("both deliveries dead-lettered", WAIT, || async {
        let dead = storage
            .list_dead_letters(&Default::default())
            .await
            .unwrap();
        (dead.len() == 2).then_some(())
    })
    .await;
    let (_, metrics) = http_get(port, "/metrics").expect("metrics endpoint");
    assert!(terminate(&mut relay).success());
    assert!(
        good.requests().len() >= 3,
        "the mTLS target reached its receiver with the key"
    );

    let logs = std::fs::read_to_string(&log).unwrap();
    let dead = storage
        .list_dead_letters(&Default::default())
        .await
        .unwrap();
    let reasons = format!("{dead:?}");
    assert!(reasons.contains("unknown authority"), "{reasons}");
    let mut outputs = vec![
        ("the relay's debug log".to_string(), logs),
        ("/metrics".to_string(), metrics),
        ("the dead letters".to_string(), reasons),
    ];
    for args in [
        vec!["status", "--config", config],
        vec!["status", "--json", "--config", config],
        vec!["dead-letters", "list", "--config", config],
        vec!["check", "--config", config],
    ] {
        let out = Command::new(relay_binary())
            .args(&args)
            .env("RUST_LOG", "debug")
            .env("OUTBOX_TEST_TLS_KEY", &key_text)
            .output()
            .unwrap();
        outputs.push((
            format!("`{}`", args.join(" ")),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ));
    }
    // Attack on issue 14: the key's PEM text set where its path belongs
    // (an environment override of `client_key`) was repeated in the error.
    let out = Command::new(relay_binary())
        .args(["check", "--config", config])
        .env(
            "OUTBOX_RELAY__TARGETS__FROM-FILE__SANDBOX__TLS__CLIENT_KEY",
            &key_text,
        )
        .env("OUTBOX_TEST_TLS_KEY", &key_text)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("targets.from-file.sandbox.tls.client_key")
            && text.contains("looks like a secret")
            && text.contains("not repeated"),
        "{text}"
    );
    outputs.push(("`check` with the key's text as its path".into(), text));
    for (what, text) in &outputs {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{what} holds the key:\n{text}"
            );
        }
    }
    // ... and `status` needed the key: the operator's tools read no TLS file.
    std::fs::remove_file(&pki.client.key).unwrap();
    let out = Command::new(relay_binary())
        .args(["status", "--config", config])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "status without the key file or its variable: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Third attack on issue 14: short secrets written where a variable's name
/// or a file's path belongs came back in the error; a webhook URL read from
/// a secret, with a token in its query, was repeated in the retry log and
/// the dead letter; a plugin's `{ file }` could read `/proc/self/environ`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_secrets_and_secret_urls_are_not_repeated() {
    let scratch = Scratch::new();
    let hex_key = "0123456789abcdef0123456789abcdef";
    let password = "Tr0ub4dor&3";
    let cases = [
        (
            format!("[keys.k]\nalgorithm = \"HS256\"\nenv = \"{hex_key}\""),
            hex_key,
        ),
        (
            format!("[keys.k]\nalgorithm = \"HS256\"\nfile = \"{password}\""),
            password,
        ),
        (
            format!("[targets.t.config.extra]\nenv = \"{password}\""),
            password,
        ),
    ];
    for (extra, secret) in cases {
        let path = scratch.write_config(&format!(
            "[[routes]]\nevents = [\"*\"]\ntargets = [\"t\"]\n\n[targets.t]\nplugin = \"webhook\"\n\n[targets.t.config]\nurl = \"http://127.0.0.1:1/hook\"\n\n{extra}\n"
        ));
        let out = cli(&["check", "--config", path.to_str().unwrap()]);
        assert!(
            out.contains("not shown") || out.contains("not repeated"),
            "{extra}: {out}"
        );
        assert!(!out.contains(secret), "{extra}: {out}");
    }
    let path = scratch.write_config(
        "[[routes]]\nevents = [\"*\"]\ntargets = [\"t\"]\n\n[targets.t]\nplugin = \"webhook\"\n\n[targets.t.config]\nurl = \"http://127.0.0.1:1/hook\"\nextra = { file = \"/proc/self/environ\" }\n",
    );
    let out = cli(&["check", "--config", path.to_str().unwrap()]);
    assert!(out.contains("not a regular file"), "{out}");

    // The URL from a file, a token in its query; the receiver refuses.
    let token = "tok-5e3cf1a9b7d2";
    std::fs::write(
        scratch.path().join("url.txt"),
        format!("http://127.0.0.1:1/hook?token={token}\n"),
    )
    .unwrap();
    let path = scratch.write_config(
        r#"
[[routes]]
events = ["*"]
targets = ["t"]

[targets.t]
plugin = "webhook"
retry = { initial_backoff = "50ms", max_attempts = 2, jitter = 0.0 }
config = { url = { file = "url.txt" } }
sandbox = { allow_http = ["127.0.0.1:1"] }
"#,
    );
    let storage = scratch.storage().await;
    storage
        .save(&[NewMessage::new("thing.happened", b"{}".to_vec())])
        .await
        .unwrap();
    let log = scratch.path().join("relay.log");
    let mut relay = Command::new(relay_binary())
        .args(["run", "--config", path.to_str().unwrap()])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let dead = eventually("the message dead-lettered", WAIT, || async {
        let dead = storage
            .list_dead_letters(&Default::default())
            .await
            .unwrap();
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert!(terminate(&mut relay).success());
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(!format!("{dead:?}").contains(token), "{dead:?}");
    assert!(!logs.contains(token), "the log holds the token:\n{logs}");
}
