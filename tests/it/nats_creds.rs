//! The `nats` transport logging in with a `.creds` file (NATS decentralised
//! auth: an operator, accounts and a user, all JWTs) against a `nats-server`
//! this test starts, with JetStream for the account. The user's seed stays
//! in the host (`[keys.nats]`), which signs the server's nonce for the
//! plugin; the plugin gets the JWT alone (`{ creds_jwt = "user.creds" }`).
//! Read back with `async-nats` logged in with the same `.creds` file.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, stream};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use nkeys::KeyPair;
use outbox_relay::NewMessage;
use outbox_relay::storage::Storage as _;
use outbox_relay_tests::{Scratch, eventually};
use serde_json::{Value, json};

use crate::{free_port, relay_binary, terminate};

const WAIT: Duration = Duration::from_secs(60);

/// Where nats-server is; the test fails (it does not skip) without it.
fn nats_server_binary() -> PathBuf {
    let candidates = std::env::var_os("NATS_SERVER")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            [
                "/usr/sbin/nats-server",
                "/usr/bin/nats-server",
                "/usr/local/bin/nats-server",
            ]
            .map(PathBuf::from),
        );
    for path in candidates {
        if path.is_file() {
            return path;
        }
    }
    panic!(
        "nats-server is not installed (looked in $NATS_SERVER, /usr/sbin, /usr/bin, /usr/local/bin): \
         the .creds tests need a real server; install it (apt-get install nats-server)"
    );
}

/// A signed NATS JWT: `{"typ":"JWT","alg":"ed25519-nkey"}`, the claims, and
/// the issuer's Ed25519 signature over `header.claims`, all base64url.
fn nats_jwt(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> String {
    let iat = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "jti": uuid::Uuid::now_v7().simple().to_string().to_uppercase(),
        "iat": iat,
        "iss": issuer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    });
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{header}.{claims}");
    let signature = URL_SAFE_NO_PAD.encode(issuer.sign(input.as_bytes()).unwrap());
    format!("{input}.{signature}")
}

/// An account JWT without limits; with JetStream when `jetstream`.
fn account_jwt(operator: &KeyPair, account: &KeyPair, name: &str, jetstream: bool) -> String {
    let mut limits = json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
    });
    if jetstream {
        for key in ["mem_storage", "disk_storage", "streams", "consumer"] {
            limits[key] = json!(-1);
        }
    }
    nats_jwt(
        operator,
        &account.public_key(),
        name,
        json!({
            "type": "account",
            "version": 2,
            "limits": limits,
            "default_permissions": { "pub": {}, "sub": {} },
        }),
    )
}

/// A user of `account` who may publish and subscribe anywhere.
fn user_jwt(account: &KeyPair, user: &KeyPair, name: &str) -> String {
    nats_jwt(
        account,
        &user.public_key(),
        name,
        json!({
            "type": "user",
            "version": 2,
            "pub": {},
            "sub": {},
            "subs": -1,
            "data": -1,
            "payload": -1,
        }),
    )
}

/// A `.creds` file as `nsc generate creds` writes it.
fn creds(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

/// A nats-server in operator mode (memory resolver, JetStream for the
/// account `APP`), on a port of its own; killed when dropped.
struct Server {
    child: Child,
    addr: String,
    /// `APP`, the account with JetStream.
    account: KeyPair,
    /// The `.creds` text of user `relay` of `APP`, and that user's seed.
    creds: String,
    seed: String,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Self {
        let binary = nats_server_binary();
        let dir = tempfile::tempdir().unwrap();
        let operator = KeyPair::new_operator();
        let system = KeyPair::new_account();
        let account = KeyPair::new_account();
        let user = KeyPair::new_user();
        let operator_jwt = nats_jwt(
            &operator,
            &operator.public_key(),
            "OP",
            json!({ "type": "operator", "version": 2 }),
        );
        let seed = user.seed().unwrap();
        let creds = creds(&user_jwt(&account, &user, "relay"), &seed);

        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let conf = dir.path().join("server.conf");
        std::fs::write(
            &conf,
            format!(
                r#"
listen: "{addr}"
operator: "{operator_jwt}"
system_account: "{sys}"
resolver: MEMORY
resolver_preload: {{
  "{sys}": "{sys_jwt}"
  "{app}": "{app_jwt}"
}}
jetstream {{
  store_dir: "{store}"
}}
"#,
                sys = system.public_key(),
                sys_jwt = account_jwt(&operator, &system, "SYS", false),
                app = account.public_key(),
                app_jwt = account_jwt(&operator, &account, "APP", true),
                store = dir.path().join("js").display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let child = Command::new(&binary)
            .args(["-c", conf.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut server = Self {
            child,
            addr,
            account,
            creds,
            seed,
            _dir: dir,
        };
        // Up when a client logged in with the creds gets JetStream answers.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!(
                    "nats-server exited ({status}) at start-up:\n{}",
                    server.log()
                );
            }
            if server.jetstream_answers().await {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server on {} did not serve JetStream within 20 s:\n{}",
                server.addr,
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("server.log")).unwrap_or_default()
    }

    /// A client logged in with the user's `.creds`.
    async fn client(&self) -> Result<async_nats::Client, async_nats::ConnectError> {
        async_nats::ConnectOptions::with_credentials(&self.creds)
            .unwrap()
            .connect(&self.addr)
            .await
    }

    /// Whether the user gets its account's JetStream info. Asked raw: the
    /// typed `query_account` of async-nats 0.51 does not parse the answer
    /// of nats-server 2.9.
    async fn jetstream_answers(&self) -> bool {
        let Ok(client) = self.client().await else {
            return false;
        };
        match client.request("$JS.API.INFO", "".into()).await {
            Ok(reply) => {
                let info: Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
                info["type"] == "io.nats.jetstream.api.v1.account_info_response"
                    && info.get("error").is_none()
            }
            Err(_) => false,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The forms the seed could leak in: as written, and its 32 raw bytes in
/// base64 (standard and URL) and hex.
fn seed_forms(seed: &str) -> Vec<String> {
    let (_, raw) = nkeys::decode_seed(seed).unwrap();
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        seed.to_string(),
        STANDARD.encode(raw),
        URL_SAFE_NO_PAD.encode(raw),
        hex,
    ]
}

fn assert_no_seed(what: &str, text: &str, seed: &str) {
    for form in seed_forms(seed) {
        assert!(
            !text.contains(&form),
            "{what} contains the user's seed ({form:?}):\n{text}"
        );
    }
}

/// Runs the CLI with `args` at debug level; returns stdout and stderr together.
fn cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(relay_binary())
        .args(args)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A target `bus` on `server` that logs in with `jwt` (a config value) and
/// the host key `nats` (from `key_file`, relative to the config).
fn target(server: &Server, subject: &str, jwt: &str, key_file: &str) -> String {
    format!(
        r#"
[keys.nats]
algorithm = "EdDSA"
file = "{key_file}"

[[routes]]
events = ["*"]
targets = ["bus"]

[targets.bus]
plugin = "nats"
keys = ["nats"]
retry = {{ initial_backoff = "100ms", max_backoff = "1s" }}
sandbox = {{ allow_tcp = ["{addr}"] }}

[targets.bus.config]
url = "nats://{addr}"
subject = "{subject}.{{event}}"
jwt = {jwt}
nkey_key = "nats"
"#,
        addr = server.addr,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_with_a_creds_file_and_the_seed_stays_in_the_host() {
    let server = Server::start().await;
    let js = jetstream::new(server.client().await.unwrap());
    let stream = js
        .create_stream(stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["orders.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();

    let scratch = Scratch::new();
    std::fs::write(scratch.path().join("user.creds"), &server.creds).unwrap();
    let path = scratch.write_config(&target(
        &server,
        "orders",
        r#"{ creds_jwt = "user.creds" }"#,
        "user.creds",
    ));
    let config = path.to_str().unwrap();
    let storage = scratch.storage().await;
    let sent = [
        NewMessage::new("created", br#"{"order":1}"#.to_vec()).with_header("tenant", "acme"),
        NewMessage::new("paid", vec![0xff, 0x00, b'\r', b'\n']),
        NewMessage::new("shipped", Vec::new()),
    ];
    storage.save(&sent).await.unwrap();

    let log = scratch.path().join("relay.log");
    let mut relay = Command::new(relay_binary())
        .args(["run", "--config", config])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let status = eventually("the relay to deliver the three messages", WAIT, || async {
        let s = storage.status(&["bus".to_string()]).await.unwrap();
        (s[0].lag == 0).then_some(s)
    })
    .await;
    assert!(terminate(&mut relay).success());
    assert_eq!(status[0].dead_letters, 0, "{status:?}");
    assert_eq!(status[0].retries_pending, 0, "{status:?}");

    // Read back by a client the project did not write, with the same creds.
    let state = stream.get_info().await.unwrap().state;
    assert_eq!(state.messages, 3, "one stored message per outbox message");
    for (seq, message) in (state.first_sequence..).zip(&sent) {
        let got = stream.get_raw_message(seq).await.unwrap();
        let id = message.id.to_string();
        assert_eq!(
            got.subject.as_str(),
            format!("orders.{}", message.event_name)
        );
        assert_eq!(
            got.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
            Some(id.as_str())
        );
        assert_eq!(&got.payload[..], &message.payload[..], "payload of {id}");
    }

    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains(&format!("connected to {}", server.addr)),
        "the plugin's debug lines are in the log: {logs}"
    );
    assert_no_seed("the relay's debug log", &logs, &server.seed);
    let (ok, out) = cli(&["check", "--config", config]);
    assert!(ok && out.contains("ok      bus"), "check: {out}");
    assert_no_seed("`outbox-relay check`", &out, &server.seed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_unknown_user_fails_init_clearly_without_quoting_the_seed() {
    let server = Server::start().await;
    let scratch = Scratch::new();
    let good = creds_jwt_of(&server.creds);

    // The user's JWT with another user's seed: the nonce's signature does
    // not match the JWT's subject.
    let stranger = KeyPair::new_user().seed().unwrap();
    std::fs::write(scratch.path().join("stranger.nk"), format!("{stranger}\n")).unwrap();
    // A user of an account the server does not know, with a matching seed.
    let unknown_account = KeyPair::new_account();
    let unknown_user = KeyPair::new_user();
    let unknown_seed = unknown_user.seed().unwrap();
    let unknown = creds(
        &user_jwt(&unknown_account, &unknown_user, "ghost"),
        &unknown_seed,
    );
    std::fs::write(scratch.path().join("ghost.creds"), &unknown).unwrap();
    // Sanity: the account of the good user is the one the server knows.
    assert_ne!(unknown_account.public_key(), server.account.public_key());

    for (name, jwt, key_file, seed) in [
        (
            "a wrong seed",
            format!("{good:?}"),
            "stranger.nk",
            &stranger,
        ),
        (
            "an unknown account",
            r#"{ creds_jwt = "ghost.creds" }"#.to_string(),
            "ghost.creds",
            &unknown_seed,
        ),
    ] {
        let path =
            scratch.write_config_as("bad.toml", "", &target(&server, "orders", &jwt, key_file));
        let config = outbox_relay::config::Config::load(&path).unwrap();
        let started = Instant::now();
        let err = outbox_relay::app::check_target(&config, "bus")
            .await
            .expect_err("init must fail")
            .to_string();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{name}: failed at once"
        );
        assert!(
            err.contains(&format!(
                "{} refused the credentials (Authorization Violation)",
                server.addr
            )) && err.contains(r#"signed with key "nats" (`nkey_key`)"#)
                && err.contains("same .creds file"),
            "{name}: the error says what was refused and what to check: {err}"
        );
        assert_no_seed(&format!("{name}: the init error"), &err, seed);
        let (ok, out) = cli(&["check", "--config", path.to_str().unwrap()]);
        assert!(
            !ok && out.contains("FAILED  bus") && out.contains("Authorization Violation"),
            "{name}: check fails and says why: {out}"
        );
        assert_no_seed(&format!("{name}: `outbox-relay check`"), &out, seed);
    }
}

/// A plugin config value `{ file = ... }` on a `.creds` file would hand the
/// plugin the seed: refused before any plugin starts.
#[tokio::test]
async fn a_creds_file_given_to_a_plugin_as_a_file_reference_is_refused() {
    let scratch = Scratch::new();
    let user = KeyPair::new_user();
    let seed = user.seed().unwrap();
    let account = KeyPair::new_account();
    std::fs::write(
        scratch.path().join("user.creds"),
        creds(&user_jwt(&account, &user, "relay"), &seed),
    )
    .unwrap();
    let path = scratch.write_config(
        r#"
[[routes]]
events = ["*"]
targets = ["bus"]

[targets.bus]
plugin = "nats"
sandbox = { allow_tcp = ["127.0.0.1:4222"] }

[targets.bus.config]
url = "nats://127.0.0.1:4222"
subject = "orders.{event}"
token = { file = "user.creds" }
"#,
    );
    let config = outbox_relay::config::Config::load(&path).unwrap();
    let err = outbox_relay::app::check_target(&config, "bus")
        .await
        .expect_err("the seed must not reach the plugin")
        .to_string();
    let creds_path = scratch.path().join("user.creds");
    assert!(
        err.contains("field `targets.bus.config.token`")
            && err.contains(&format!(
                "{}: this file holds an NKey seed, which must stay in the host: \
                 grant it as [keys.<name>] and use {{ creds_jwt = ... }}",
                creds_path.display()
            )),
        "{err}"
    );
    assert_no_seed("the error", &err, &seed);
}

/// The JWT of a `.creds` text, as a TOML string.
fn creds_jwt_of(creds: &str) -> String {
    creds.lines().nth(1).unwrap().to_string()
}

/// Second attack on issue 14: a seed (or a whole `.creds` text) pasted
/// where a path or a variable name belongs came back in the error; a seed
/// inside other text (`NAME=SU…`, JSON) was handed to a plugin; `{ file }`
/// and `[keys] file` read `/dev/zero` without bound; a server that sends
/// no nonce got the JWT unsigned. Each is refused now, and says why,
/// without the seed.
#[tokio::test]
async fn seeds_where_they_do_not_belong_are_refused_unrepeated() {
    let user = KeyPair::new_user();
    let seed = user.seed().unwrap();
    let account = KeyPair::new_account();
    let creds_text = creds(&user_jwt(&account, &user, "relay"), &seed);
    let scratch = Scratch::new();
    std::fs::write(
        scratch.path().join("env.txt"),
        format!("NATS_SEED={seed}\n"),
    )
    .unwrap();
    std::fs::write(
        scratch.path().join("secrets.json"),
        format!("{{\"nats\": \"{seed}\"}}"),
    )
    .unwrap();
    // A JSON string is a TOML basic string too.
    let toml = |s: &str| serde_json::to_string(s).unwrap();
    let cases = [
        // [keys] with the seed or the .creds text where its path or variable belongs.
        (
            format!("[keys.nats]\nalgorithm = \"EdDSA\"\nfile = {}", toml(&seed)),
            "not repeated",
        ),
        (
            format!("[keys.nats]\nalgorithm = \"EdDSA\"\nenv = {}", toml(&seed)),
            "not repeated",
        ),
        (
            format!(
                "[keys.nats]\nalgorithm = \"EdDSA\"\nfile = {}",
                toml(&creds_text)
            ),
            "not repeated",
        ),
        (
            "[keys.nats]\nalgorithm = \"EdDSA\"\nfile = \"/dev/zero\"".to_string(),
            "not a regular file",
        ),
        // Plugin config references.
        (
            format!(
                "[targets.bus.config.extra]\ncreds_jwt = {}",
                toml(&creds_text)
            ),
            "not repeated",
        ),
        (
            "[targets.bus.config.extra]\nfile = \"env.txt\"".to_string(),
            "holds an NKey seed",
        ),
        (
            "[targets.bus.config.extra]\nfile = \"secrets.json\"".to_string(),
            "holds an NKey seed",
        ),
        (
            "[targets.bus.config.extra]\nfile = \"/dev/zero\"".to_string(),
            "not a regular file",
        ),
    ];
    for (extra, says) in cases {
        let path = scratch.write_config(&format!(
            r#"
[[routes]]
events = ["*"]
targets = ["bus"]

[targets.bus]
plugin = "nats"
sandbox = {{ allow_tcp = ["127.0.0.1:4222"] }}

[targets.bus.config]
url = "nats://127.0.0.1:4222"
subject = "orders.{{event}}"

{extra}
"#
        ));
        let (ok, out) = cli(&["check", "--config", path.to_str().unwrap()]);
        assert!(!ok, "{extra}: {out}");
        assert!(out.contains(says), "{extra}: should say {says:?}: {out}");
        assert_no_seed(&extra, &out, &seed);
    }
}

/// A server that sends no nonce does not check JWTs: the JWT is not sent.
#[tokio::test]
async fn a_jwt_is_not_handed_to_a_server_that_sends_no_nonce() {
    let user = KeyPair::new_user();
    let seed = user.seed().unwrap();
    let account = KeyPair::new_account();
    let scratch = Scratch::new();
    std::fs::write(
        scratch.path().join("user.creds"),
        creds(&user_jwt(&account, &user, "relay"), &seed),
    )
    .unwrap();
    // The shared server on :4222 runs without authentication.
    let path = scratch.write_config(
        r#"
[keys.nats]
algorithm = "EdDSA"
file = "user.creds"

[[routes]]
events = ["*"]
targets = ["bus"]

[targets.bus]
plugin = "nats"
keys = ["nats"]
sandbox = { allow_tcp = ["127.0.0.1:4222"] }

[targets.bus.config]
url = "nats://127.0.0.1:4222"
subject = "orders.{event}"
jwt = { creds_jwt = "user.creds" }
nkey_key = "nats"
"#,
    );
    let (ok, out) = cli(&["check", "--config", path.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(out.contains("sent no nonce"), "{out}");
    assert_no_seed("check", &out, &seed);
}
