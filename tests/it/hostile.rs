//! Plugins that trap, panic, loop forever, hog memory, break the batch
//! contract or try to get out of their sandbox (files, environment, network,
//! keys): the host keeps running, the other target keeps delivering, and the
//! message is retried and then dead-lettered with a reason that says what
//! happened.

use std::time::Duration;

use outbox_relay_tests::{RunningRelay, Scratch, dead_letters, enqueue, eventually, read_jsonl};

const WAIT: Duration = Duration::from_secs(60);

/// Runs `plugin` beside a healthy file target and returns the dead letter it
/// causes; checks that the error names the plugin and the target.
async fn misbehave(plugin: &str, sandbox: &str) -> String {
    let error = contained(plugin, &format!("sandbox = {sandbox}"), "").await;
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

/// Runs `plugin` (with `target_lines` added to its target table, and
/// `extra` at the end of the config) beside a healthy file target. The
/// plugin's message must be retried once and dead-lettered, the relay must
/// stay up, and the healthy target must keep delivering. Returns the dead
/// letter's reason.
async fn contained(plugin: &str, target_lines: &str, extra: &str) -> String {
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
{target_lines}
{extra}
"#,
        out = out.display()
    ));
    let storage = scratch.storage().await;
    let first = enqueue(&storage, "thing.happened", 1).await;
    let descriptors = open_descriptors();
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
    // Whatever the plugin did, the relay (this process) holds few more
    // descriptors than before it started (tests running beside it included).
    let grown = open_descriptors().saturating_sub(descriptors);
    assert!(
        grown < MAX_GROWN_DESCRIPTORS,
        "the relay holds {grown} more descriptors while the {plugin} plugin runs"
    );
    relay.stop().await;
    dead[0].last_error.clone()
}

/// How many more descriptors a relay running one hostile plugin may hold
/// than before it started (its database connections, the healthy target's
/// file, a capped plugin's sockets, and tests running beside it).
const MAX_GROWN_DESCRIPTORS: usize = 256;

/// Runs the `sneaky` plugin with `attempt`; returns the dead letter's reason.
async fn sneak(attempt: &str, config: &str, sandbox: &str, extra: &str) -> String {
    let error = contained(
        "sneaky",
        &format!("config = {{ attempt = \"{attempt}\"{config} }}\nsandbox = {sandbox}"),
        extra,
    )
    .await;
    assert!(!error.contains("LEAKED"), "{error}");
    error
}

#[tokio::test]
async fn a_plugin_cannot_read_host_files() {
    let error = sneak("read-file", "", "{}", "").await;
    assert!(error.contains("reading /etc/passwd failed"), "{error}");
}

#[tokio::test]
async fn a_plugin_sees_no_environment_variables() {
    let error = sneak("read-env", "", "{}", "").await;
    assert!(error.contains("found no variables"), "{error}");
}

#[tokio::test]
async fn a_plugin_cannot_connect_to_an_address_it_was_not_allowed() {
    // Postgres listens there; the plugin may reach only NATS.
    let error = sneak(
        "connect",
        ", address = \"127.0.0.1:5432\"",
        "{ allow_tcp = [\"127.0.0.1:4222\"] }",
        "",
    )
    .await;
    assert!(
        error.contains("the sandbox does not allow connecting to 127.0.0.1:5432"),
        "{error}"
    );
}

#[tokio::test]
async fn a_plugin_cannot_send_http_to_a_host_it_was_not_allowed() {
    let error = sneak(
        "http",
        ", url = \"http://127.0.0.1:5432/\"",
        "{ allow_http = [\"hooks.example.com\"] }",
        "",
    )
    .await;
    assert!(
        error.contains("the sandbox does not allow HTTP to 127.0.0.1"),
        "{error}"
    );
}

/// Issue 19, finding 1: one `deliver` held 19,973 connections to an
/// allowed address, until the relay ran out of descriptors. The instance
/// may hold `sandbox.max_sockets` (32 by default, 16 here) at once; the next is an
/// error the plugin sees, and the relay's descriptors stay within a bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_cannot_hold_more_sockets_than_its_cap() {
    let error = sneak(
        "sockets",
        ", address = \"127.0.0.1:4222\", count = 25000",
        "{ allow_tcp = [\"127.0.0.1:4222\"], max_sockets = 16 }",
        "",
    )
    .await;
    assert!(error.contains("holding 16 sockets, then:"), "{error}");
}

/// Issue 19, finding 2: name lookups were open to any name once
/// `allow_tcp` was not empty (a channel out through the host's resolver).
/// Only the host names of `allow_tcp` may be looked up; `localhost` would
/// resolve, so its refusal is the sandbox's, before any resolver.
#[tokio::test]
async fn a_plugin_cannot_look_up_a_name_it_was_not_allowed() {
    let error = sneak(
        "lookup",
        ", name = \"localhost\"",
        "{ allow_tcp = [\"nats.invalid:4222\"] }",
        "",
    )
    .await;
    assert!(error.contains("looking up localhost failed"), "{error}");
    // The allowed name itself goes to the resolver (and fails there: .invalid).
    let error = sneak(
        "lookup",
        ", name = \"nats.invalid\"",
        "{ allow_tcp = [\"nats.invalid:4222\"] }",
        "",
    )
    .await;
    assert!(error.contains("looking up nats.invalid failed"), "{error}");
}

/// Issue 19: at most `sandbox.max_files` files open at once.
#[tokio::test]
async fn a_plugin_cannot_hold_more_files_than_its_cap() {
    let error = hold_in_data("files").await;
    assert!(
        error.contains("holding 8 files, then: Quota exceeded"),
        "{error}"
    );
}

/// Found by the attack on the caps: a file stays open while a stream of it
/// lives, and the file cap counted descriptors only, so a plugin that kept
/// a stream of each file and dropped its descriptor held 20,000 host files
/// (the relay's whole `ulimit -n`). Streams count too.
#[tokio::test]
async fn a_plugin_cannot_hold_files_through_streams_past_the_cap() {
    let error = hold_in_data("stream-files").await;
    assert!(
        error.contains("holding 8 file streams, then:") && error.contains("quota"),
        "{error}"
    );
}

/// Found by the attack on the caps: one `http::send` of 15,000 requests
/// opened 15,000 host connections at once (and 465 MB), outside
/// `max_sockets`. A call's requests go at most `max_sockets` at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_http_call_has_at_most_max_sockets_requests_in_flight() {
    use std::sync::atomic::Ordering;
    let server = slow_http_server(
        b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n".to_vec(),
        std::time::Duration::from_millis(20),
    )
    .await;
    let port = server.port;
    let error = sneak(
        "http-flood",
        &format!(", url = \"http://127.0.0.1:{port}/hook\", count = 400"),
        "{ allow_http = [\"127.0.0.1\"], max_sockets = 8 }",
        "",
    )
    .await;
    assert!(error.contains("400 of 400 requests answered"), "{error}");
    let peak = server.peak.load(Ordering::SeqCst);
    assert!(
        peak <= 8,
        "the server served {peak} requests at once from one call (max_sockets = 8)"
    );
}

/// Issue 19, finding 3: a guest could leave links in its mapped directory
/// pointing outside it. Creating symlinks and hard links is refused.
#[tokio::test]
async fn a_plugin_cannot_create_links() {
    let dir = tempfile::tempdir().unwrap();
    let error = sneak(
        "link",
        "",
        &format!(
            "{{ dirs = {{ \"/data\" = \"{}\" }} }}",
            dir.path().display()
        ),
        "",
    )
    .await;
    assert!(
        error.contains("symlink failed") && error.contains("hard link failed"),
        "{error}"
    );
    for name in ["out_link", "hard_link"] {
        assert!(
            std::fs::symlink_metadata(dir.path().join(name)).is_err(),
            "{name} exists in the mapped directory"
        );
    }
}

/// Issue 19, finding 5: a request with both `transfer-encoding: chunked`
/// and `content-length` reached the allowed server as `content-length: 5`
/// with no body. Headers that frame the request are the host's.
#[tokio::test]
async fn a_plugin_cannot_set_the_framing_headers_of_a_request() {
    let error = sneak(
        "framing",
        ", url = \"http://127.0.0.1:9/hook\"",
        "{ allow_http = [\"127.0.0.1\"] }",
        "",
    )
    .await;
    assert!(
        error.contains("header \"Transfer-Encoding\" is the host's to set"),
        "{error}"
    );
}

/// Found by the second attack on the caps: each directory listing is a copy
/// of the directory held by the host, and listings were not counted (3,000
/// held listings took 2.3 GB). They count against `max_files`.
#[tokio::test]
async fn a_plugin_cannot_hold_more_directory_listings_than_its_file_cap() {
    let error = hold_in_data("listings").await;
    assert!(
        error.contains("listings, then:") && error.contains("quota"),
        "{error}"
    );
}

/// Found by the second attack on the caps: one `http::send` of 20,000
/// requests held every response (64 KiB bodies) in the host until all were
/// in: 2.6 GB under `memory_mb = 64`. A call's responses may total half
/// the instance's memory cap; the rest are errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_http_call_gets_back_no_more_than_the_plugins_memory() {
    let mut response = b"HTTP/1.1 200 OK\r\ncontent-length: 65536\r\n\r\n".to_vec();
    response.resize(response.len() + 65536, b'x');
    let port = slow_http_server(response, std::time::Duration::ZERO)
        .await
        .port;
    let error = sneak(
        "http-flood",
        &format!(", url = \"http://127.0.0.1:{port}/big\", count = 2000"),
        "{ allow_http = [\"127.0.0.1\"], memory_mb = 16 }",
        "",
    )
    .await;
    // Half of 16 MiB in 64 KiB bodies: about 128 responses, the rest refused.
    let answered: usize = error
        .split(" of 2000 requests answered")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{error}"));
    assert!(
        (1..=128).contains(&answered),
        "{answered} of 2000 responses of 64 KiB handed back under memory_mb = 16"
    );
}

/// Found by the attack on the caps: every plugin wrote to the relay's own
/// stdout, untagged and unbounded. Only the `stdout` plugin does now, unless
/// `sandbox.stdout` says otherwise.
#[tokio::test]
async fn only_the_stdout_plugin_writes_to_the_relays_stdout() {
    for (sandbox, shown) in [("{}", false), ("{ stdout = true }", true)] {
        let scratch = Scratch::new();
        let config = scratch.write_config(&format!(
            r#"
[[routes]]
events = ["*"]
targets = ["hostile"]

[targets.hostile]
plugin = "sneaky"
config = {{ attempt = "print" }}
retry = {{ max_attempts = 1 }}
sandbox = {sandbox}
"#
        ));
        let storage = scratch.storage().await;
        enqueue(&storage, "thing.happened", 1).await;
        let out = scratch.path().join("stdout.txt");
        let mut relay = std::process::Command::new(crate::relay_binary())
            .args(["run", "--config", config.to_str().unwrap()])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        eventually("the print attempt dead-lettered", WAIT, || async {
            (!dead_letters(&storage, "hostile").await.is_empty()).then_some(())
        })
        .await;
        relay.kill().unwrap();
        relay.wait().unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(
            text.contains("SNEAKY-STDOUT-MARKER"),
            shown,
            "sandbox {sandbox}: the relay's stdout was {text:?}"
        );
    }
}

/// A local HTTP/1.1 server answering every request with `response` after
/// `delay`, counting the requests it is serving at once (`peak`).
struct TestServer {
    port: u16,
    peak: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

async fn slow_http_server(response: Vec<u8>, delay: std::time::Duration) -> TestServer {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (open, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (response, seen) = (Arc::new(response), peak.clone());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let (open, peak, response) = (open.clone(), seen.clone(), response.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                // One request at a time on this connection, counted from
                // its arrival until its answer is written.
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    peak.fetch_max(open.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    let written = conn.write_all(&response).await;
                    open.fetch_sub(1, Ordering::SeqCst);
                    if written.is_err() {
                        break;
                    }
                }
            });
        }
    });
    TestServer { port, peak }
}

/// Runs `sneaky`'s `attempt` 100,000 times over a mapped `/data` with
/// `max_files = 8`; returns the dead letter's reason.
async fn hold_in_data(attempt: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    sneak(
        attempt,
        ", count = 100000",
        &format!(
            "{{ dirs = {{ \"/data\" = \"{}\" }}, max_files = 8 }}",
            dir.path().display()
        ),
        "",
    )
    .await
}

/// The descriptors this process has open.
fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[tokio::test]
async fn a_plugin_that_allocates_a_gibibyte_hits_the_memory_cap() {
    let error = sneak("alloc", "", "{ memory_mb = 64 }", "").await;
    assert!(error.contains("memory limit of 64 MiB"), "{error}");
}

#[tokio::test]
async fn unbounded_recursion_is_a_trap() {
    let error = sneak("recurse", "", "{}", "").await;
    assert!(error.contains("trapped"), "{error}");
    // A Rust guest keeps its stack in linear memory, below its data: running
    // off its end is an out-of-bounds access, not an engine stack overflow.
    assert!(
        error.contains("stack") || error.contains("out of bounds memory access"),
        "the trap says why: {error}"
    );
}

#[tokio::test]
async fn a_flood_on_stderr_is_cut_to_the_configured_size() {
    let error = sneak("stderr", "", "{ stderr_kb = 16 }", "").await;
    assert!(error.contains("more bytes dropped"), "{error}");
    assert!(
        error.len() < 64 * 1024,
        "the reason kept {} bytes of a 100 MB flood",
        error.len()
    );
}

#[tokio::test]
async fn a_plugin_cannot_sign_with_a_key_its_target_was_not_granted() {
    let scratch = tempfile::tempdir().unwrap();
    let key = scratch.path().join("key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef").unwrap();
    let error = sneak(
        "sign",
        ", key = \"payments\"",
        "{}",
        &format!(
            "[keys.payments]\nalgorithm = \"HS256\"\nfile = \"{}\"",
            key.display()
        ),
    )
    .await;
    assert!(
        error.contains("signing failed") && error.contains("not granted to target \"hostile\""),
        "{error}"
    );
}

#[tokio::test]
async fn fewer_outcomes_than_envelopes_break_the_contract() {
    let error = contained("miscount", "", "").await;
    assert!(
        error.contains("returned 0 outcomes for a batch of 1"),
        "{error}"
    );
}

#[tokio::test]
async fn more_outcomes_than_envelopes_break_the_contract() {
    let error = contained("miscount", "config = { extra = true }", "").await;
    assert!(
        error.contains("returned 2 outcomes for a batch of 1"),
        "{error}"
    );
}

/// A wrong count is trusted for no envelope of the batch: nothing is padded
/// or cut to fit, so no envelope is taken as delivered (or retried) on an
/// outcome that was made up. Each is tried again on its own, where the plugin
/// answers for it alone, and dead-lettered with what it did.
#[tokio::test]
async fn a_short_answer_is_trusted_for_no_envelope_of_its_batch() {
    let scratch = Scratch::new();
    let config = scratch.load_config(
        r#"
[[routes]]
events = ["*"]
targets = ["hostile"]

[targets.hostile]
plugin = "miscount"
retry = { max_attempts = 2, initial_backoff = "50ms", jitter = 0.0 }
"#,
    );
    let storage = scratch.storage().await;
    let sent = enqueue(&storage, "thing.happened", 3).await;
    let relay = RunningRelay::start(&config).await;
    let dead = eventually("all three dead-lettered", WAIT, || async {
        let d = dead_letters(&storage, "hostile").await;
        (d.len() == 3).then_some(d)
    })
    .await;
    relay.stop().await;
    let mut ids: Vec<String> = dead.iter().map(|d| d.message_id.clone()).collect();
    let mut expected: Vec<String> = sent.iter().map(|m| m.id.to_string()).collect();
    ids.sort();
    expected.sort();
    assert_eq!(ids, expected, "none of the three was taken as delivered");
    for d in &dead {
        assert_eq!(d.attempts, 2, "{d:?}");
        assert!(
            d.last_error
                .contains("returned 0 outcomes for a batch of 1"),
            "{}",
            d.last_error
        );
    }
}

/// `run` and `check` log each socket use the sandbox denies, naming the
/// target and the address it was for, whether `allow_tcp` lists other
/// addresses or none at all (the redis_streams transport connects in `init`).
#[tokio::test]
async fn denied_sockets_are_logged_by_run_and_check() {
    let scratch = Scratch::new();
    let denied = format!("127.0.0.1:{}", crate::free_port());
    let path = scratch.write_config(&format!(
        r#"
[[routes]]
events = ["*"]
targets = ["unlisted", "nothing-allowed"]

[targets.unlisted]
plugin = "redis_streams"
config = {{ url = "redis://{denied}", stream = "denied" }}
sandbox = {{ allow_tcp = ["127.0.0.1:6380"] }}

[targets.nothing-allowed]
plugin = "redis_streams"
config = {{ url = "redis://{denied}", stream = "denied" }}
"#
    ));
    let config = path.to_str().unwrap();
    let logged = |stderr: &str, target: &str| {
        stderr.lines().any(|line| {
            line.contains("socket use denied by the sandbox")
                && line.contains(target)
                && line.contains(&denied)
        })
    };

    let out = std::process::Command::new(crate::relay_binary())
        .args(["check", "--config", config])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "neither target can start: {stderr}");
    for target in ["unlisted", "nothing-allowed"] {
        assert!(
            logged(&stderr, target),
            "check logs {target}'s denial: {stderr}"
        );
    }

    // A running relay starts a target's plugin when it has a batch for it.
    let storage = scratch.storage().await;
    enqueue(&storage, "thing.happened", 1).await;
    let mut child = std::process::Command::new(crate::relay_binary())
        .args(["run", "--config", config, "--stop-after", "3s"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    child.wait().unwrap();
    for target in ["unlisted", "nothing-allowed"] {
        assert!(
            logged(&stderr, target),
            "run logs {target}'s denial: {stderr}"
        );
    }
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

/// Issue 14: a plugin whose target presents a client certificate finds no
/// way to its key: not the key file (no mapped directory holds it), not the
/// environment (the key's variable is set in the relay's), not a signing
/// key of that name; the host's TLS connection, made with the key, works.
/// The key's text appears nowhere in the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_cannot_read_its_targets_tls_client_key() {
    use outbox_relay_tests::tls::{self, Pki, Served};
    let pki = Pki::new();
    let server = tls::https(&pki, Served::Good, true).await;
    let key_text = std::fs::read_to_string(&pki.client.key).unwrap();
    let data = tempfile::tempdir().unwrap();
    let error = sneak(
        "tls-key",
        &format!(
            ", path = \"{key}\", key = \"client_key\", address = \"{addr}\"",
            key = pki.client.key.display(),
            addr = server.host_port()
        ),
        &format!(
            r#"{{ allow_tcp = ["{addr}"], dirs = {{ "/data" = "{data}" }}, tls = {{ ca = "{ca}", client_cert = "{cert}", client_key = "{key}" }} }}"#,
            addr = server.host_port(),
            data = data.path().display(),
            ca = pki.ca.cert.display(),
            cert = pki.client.cert.display(),
            key = pki.client.key.display(),
        ),
        "",
    )
    .await;
    assert!(error.contains("No such file or directory"), "{error}");
    assert!(error.contains("no environment"), "{error}");
    assert!(error.contains("nothing in /data"), "{error}");
    assert!(error.contains("no signing key client_key"), "{error}");
    assert!(
        error.contains(r#"Ok("TLSv1.3")"#),
        "the host's connection with the key works: {error}"
    );
    let body: String = key_text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(!error.contains(&body[..40]), "{error}");
}

/// TLS connections count against `sandbox.max_sockets` like sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_cannot_hold_more_tls_connections_than_its_socket_cap() {
    use outbox_relay_tests::tls::{self, Pki, Served};
    let pki = Pki::new();
    let server = tls::https(&pki, Served::Good, false).await;
    let error = sneak(
        "tls-flood",
        &format!(", address = \"{}\", count = 5000", server.host_port()),
        &format!(
            r#"{{ allow_tcp = ["{}"], max_sockets = 8, tls = {{ ca = "{}" }} }}"#,
            server.host_port(),
            pki.ca.cert.display()
        ),
        "",
    )
    .await;
    // The instance lives on between attempts, holding the 8 of the first.
    assert!(error.contains("TLS connections, then:"), "{error}");
    assert!(
        error.contains("8 sockets and connections are open (sandbox.max_sockets)"),
        "{error}"
    );
}
