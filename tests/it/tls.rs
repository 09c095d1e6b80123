//! Every TCP transport and the webhook over TLS, through the host
//! (`outbox:relay/tls`, and the webhook's own HTTP client), against real TLS
//! listeners that tests/tls.rs starts with certificates it generates. Each
//! transport shows:
//!
//! - delivery to a broker that requires a client certificate, with the
//!   target's `sandbox.tls` (CA and client certificate), read back over TLS
//!   with a client the project did not write;
//! - the same broker without a client certificate: refused, saying so;
//! - a server certificate from an unknown CA: refused, saying so;
//! - a server certificate for another name: refused, saying so.

use std::time::Duration;

use outbox_relay::NewMessage;
use outbox_relay::storage::Storage as _;
use outbox_relay_tests::tls::{self, Pki, Served};
use outbox_relay_tests::{RunningRelay, Scratch, dead_letters, eventually};

const WAIT: Duration = Duration::from_secs(60);

/// How a target's `sandbox.tls` is written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trust {
    /// The test CA and the client certificate (key from a file).
    CaAndClient,
    /// The test CA only: no client certificate.
    CaOnly,
}

/// The `sandbox` table of a target reaching `allow` over TLS.
fn sandbox(pki: &Pki, allow: &str, trust: Trust) -> String {
    let ca = pki.ca.cert.display();
    match trust {
        Trust::CaAndClient => format!(
            r#"{{ allow_tcp = ["{allow}"], tls = {{ ca = "{ca}", client_cert = "{}", client_key = "{}" }} }}"#,
            pki.client.cert.display(),
            pki.client.key.display(),
        ),
        Trust::CaOnly => format!(r#"{{ allow_tcp = ["{allow}"], tls = {{ ca = "{ca}" }} }}"#),
    }
}

/// A config with one route of `event.*` to target `t`, made of `target`
/// (the `[targets.t]` keys after `plugin`).
fn one_target(scratch: &Scratch, plugin: &str, target: &str) -> outbox_relay::config::Config {
    scratch.load_config(&format!(
        r#"
[[routes]]
events = ["event.*"]
targets = ["t"]

[targets.t]
plugin = "{plugin}"
retry = {{ initial_backoff = "100ms", max_backoff = "500ms", max_attempts = 50 }}
{target}
"#
    ))
}

/// `init` of target `t` must fail; its error.
async fn start_error(config: &outbox_relay::config::Config) -> String {
    outbox_relay::app::check_target(config, "t")
        .await
        .expect_err("the target must not start")
        .to_string()
}

fn assert_says(err: &str, what: &[&str]) {
    for w in what {
        assert!(err.contains(w), "the error should say {w:?}: {err}");
    }
}

/// Enqueues `n` messages `event.<i>` with key `k` and header `x-n`.
async fn enqueue(scratch: &Scratch, n: usize) -> Vec<String> {
    let storage = scratch.storage().await;
    let messages: Vec<NewMessage> = (0..n)
        .map(|i| {
            NewMessage::new(format!("event.e{i}"), format!("{{\"n\":{i}}}").into_bytes())
                .with_key("k")
                .with_header("x-n", i.to_string())
        })
        .collect();
    storage.save(&messages).await.unwrap();
    messages.iter().map(|m| m.id.to_string()).collect()
}

/// The three refusals every transport must make clear: no client
/// certificate for a broker that wants one, an unknown CA, another name.
async fn refusals(
    plugin: &str,
    mtls: (&str, &str),
    unknown_ca: (&str, &str),
    wrong_name: (&str, &str),
    pki: &Pki,
    config_of: impl Fn(&str) -> String,
) {
    let cases = [
        (
            mtls,
            Trust::CaOnly,
            vec!["TLS handshake failed", "client certificate"],
        ),
        (
            unknown_ca,
            Trust::CaAndClient,
            vec!["TLS handshake failed", "unknown authority"],
        ),
        (
            wrong_name,
            Trust::CaAndClient,
            vec!["TLS handshake failed", "not valid for the name localhost"],
        ),
    ];
    for ((url, allow), trust, says) in cases {
        let scratch = Scratch::new();
        let config = one_target(
            &scratch,
            plugin,
            &format!(
                "config = {}\nsandbox = {}",
                config_of(url),
                sandbox(pki, allow, trust)
            ),
        );
        let err = start_error(&config).await;
        assert_says(&err, &says);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_streams_over_tls() {
    let pki = Pki::new();
    let mtls = tls::redis(&pki, Served::Good, true);
    let unknown = tls::redis(&pki, Served::UnknownCa, false);
    let wrong = tls::redis(&pki, Served::WrongName, false);
    let stream = format!("outbox-tls:{}", uuid::Uuid::now_v7().simple());
    let config_of = |url: &str| format!(r#"{{ url = "{url}", stream = "{stream}" }}"#);

    let scratch = Scratch::new();
    let config = one_target(
        &scratch,
        "redis_streams",
        &format!(
            "config = {}\nsandbox = {}",
            config_of(&mtls.url()),
            sandbox(&pki, &mtls.host_port(), Trust::CaAndClient)
        ),
    );
    let ids = enqueue(&scratch, 20).await;
    let relay = RunningRelay::start(&config).await;
    let entries = eventually("20 entries over TLS", WAIT, || async {
        let got = mtls.xrange(&stream).await;
        (got.len() >= 20).then_some(got)
    })
    .await;
    relay.stop().await;
    let got: Vec<String> = entries
        .iter()
        .map(|(_, fields)| String::from_utf8(fields["id"].clone()).unwrap())
        .collect();
    assert_eq!(got, ids, "every message, once, in order");
    assert!(dead_letters(&scratch.storage().await, "t").await.is_empty());

    refusals(
        "redis_streams",
        (&mtls.url(), &mtls.host_port()),
        (&unknown.url(), &unknown.host_port()),
        (&wrong.url(), &wrong.host_port()),
        &pki,
        config_of,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_tls() {
    let pki = Pki::new();
    let mtls = tls::mosquitto(&pki, Served::Good, true);
    let unknown = tls::mosquitto(&pki, Served::UnknownCa, false);
    let wrong = tls::mosquitto(&pki, Served::WrongName, false);
    let prefix = format!("outbox-tls/{}", uuid::Uuid::now_v7().simple());
    let config_of = |url: &str| format!(r#"{{ url = "{url}", topic = "{prefix}/{{event}}" }}"#);

    let subscriber = mtls.subscribe(&format!("{prefix}/#")).await;
    let scratch = Scratch::new();
    let config = one_target(
        &scratch,
        "mqtt",
        &format!(
            "config = {}\nsandbox = {}",
            config_of(&mtls.url()),
            sandbox(&pki, &mtls.host_port(), Trust::CaAndClient)
        ),
    );
    let ids = enqueue(&scratch, 20).await;
    let relay = RunningRelay::start(&config).await;
    let got = subscriber.wait_for(20, WAIT).await;
    relay.stop().await;
    subscriber.stop().await;
    let mut seen: Vec<String> = got
        .iter()
        .map(|p| tls::mqtt_property(p, "outbox-message-id").expect("the message id"))
        .collect();
    seen.dedup();
    assert_eq!(seen, ids, "every message, in order");
    assert_eq!(
        String::from_utf8_lossy(&got[3].payload),
        r#"{"n":3}"#,
        "the payload as enqueued"
    );

    refusals(
        "mqtt",
        (&mtls.url(), &mtls.host_port()),
        (&unknown.url(), &unknown.host_port()),
        (&wrong.url(), &wrong.host_port()),
        &pki,
        config_of,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_over_tls() {
    let pki = Pki::new();
    let mtls = tls::rabbitmq(&pki, Served::Good, true);
    let queue = mtls.queue("event.#").await;
    let exchange = queue.exchange.clone();

    // The password from a key of its own, read by the host from a file
    // (`{ file = ... }`), wins over a wrong one in the URL.
    let scratch = Scratch::new();
    let password = scratch.path().join("rabbitmq.password");
    std::fs::write(&password, "guest\n").unwrap();
    let url = mtls
        .url()
        .replacen("guest:guest@", "guest:not-the-password@", 1);
    assert!(url.contains("not-the-password"), "{url}");
    let config = one_target(
        &scratch,
        "rabbitmq",
        &format!(
            "config = {{ url = \"{url}\", exchange = \"{exchange}\", username = \"guest\", password = {{ file = \"{}\" }} }}\nsandbox = {}",
            password.display(),
            sandbox(&pki, &mtls.host_port(), Trust::CaAndClient)
        ),
    );
    let ids = enqueue(&scratch, 20).await;
    let relay = RunningRelay::start(&config).await;
    let got = queue.collect(20, WAIT).await;
    relay.stop().await;
    let seen: Vec<String> = got
        .iter()
        .map(|d| {
            d.properties
                .message_id()
                .as_ref()
                .expect("a message id")
                .to_string()
        })
        .collect();
    assert_eq!(seen, ids, "every message, once, in order");
    assert_eq!(got[5].data, br#"{"n":5}"#);
    drop(mtls);

    let mtls = tls::rabbitmq(&pki, Served::Good, true);
    let unknown = tls::rabbitmq(&pki, Served::UnknownCa, false);
    let wrong = tls::rabbitmq(&pki, Served::WrongName, false);
    refusals(
        "rabbitmq",
        (&mtls.url(), &mtls.host_port()),
        (&unknown.url(), &unknown.host_port()),
        (&wrong.url(), &wrong.host_port()),
        &pki,
        |url| format!(r#"{{ url = "{url}", exchange = "" }}"#),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_over_tls() {
    let pki = Pki::new();
    let mtls = tls::nats(&pki, Served::Good, true);
    let unknown = tls::nats(&pki, Served::UnknownCa, false);
    let wrong = tls::nats(&pki, Served::WrongName, false);
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let prefix = format!("outbox_tls.{unique}");
    let stream = mtls
        .create_stream(&format!("OUTBOX_TLS_{unique}"), &[&format!("{prefix}.>")])
        .await;
    let config_of = |url: &str| format!(r#"{{ url = "{url}", subject = "{prefix}.{{event}}" }}"#);

    let scratch = Scratch::new();
    let config = one_target(
        &scratch,
        "nats",
        &format!(
            "config = {}\nsandbox = {}",
            config_of(&mtls.url()),
            sandbox(&pki, &mtls.host_port(), Trust::CaAndClient)
        ),
    );
    let ids = enqueue(&scratch, 20).await;
    let relay = RunningRelay::start(&config).await;
    let got = eventually("20 messages in the stream over TLS", WAIT, || async {
        let got = tls::stream_messages(&stream).await;
        (got.len() >= 20).then_some(got)
    })
    .await;
    relay.stop().await;
    let seen: Vec<String> = got
        .iter()
        .map(|m| {
            m.headers
                .get("Nats-Msg-Id")
                .expect("a message id")
                .to_string()
        })
        .collect();
    assert_eq!(seen, ids, "every message, once, in order");

    // `nats://` to a server that requires TLS: upgraded all the same.
    let scratch = Scratch::new();
    let plain_url = mtls.url().replacen("tls://", "nats://", 1);
    let config = one_target(
        &scratch,
        "nats",
        &format!(
            "config = {}\nsandbox = {}",
            config_of(&plain_url),
            sandbox(&pki, &mtls.host_port(), Trust::CaAndClient)
        ),
    );
    outbox_relay::app::check_target(&config, "t")
        .await
        .expect("a server with tls_required gets TLS on a nats:// URL");

    refusals(
        "nats",
        (&mtls.url(), &mtls.host_port()),
        (&unknown.url(), &unknown.host_port()),
        (&wrong.url(), &wrong.host_port()),
        &pki,
        config_of,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_over_https_with_a_client_certificate() {
    let pki = Pki::new();
    let mtls = tls::https(&pki, Served::Good, true).await;
    let scratch = Scratch::new();
    let target = |url: &str, allow: &str, trust: Trust| {
        let sandbox = sandbox(&pki, allow, trust).replacen("allow_tcp", "allow_http", 1);
        format!("config = {{ url = \"{url}/hook/{{event}}\" }}\nsandbox = {sandbox}")
    };
    let config = one_target(
        &scratch,
        "webhook",
        &target(&mtls.url(), &mtls.host_port(), Trust::CaAndClient),
    );
    let ids = enqueue(&scratch, 10).await;
    let relay = RunningRelay::start(&config).await;
    let got = eventually("10 POSTs over HTTPS", WAIT, || async {
        let got = mtls.requests();
        (got.len() >= 10).then_some(got)
    })
    .await;
    relay.stop().await;
    let seen: Vec<String> = got
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(seen, ids);
    assert!(
        got.iter()
            .all(|r| r.client_cert.as_deref() == Some(&pki.client.cert_der[..])),
        "every request came with the configured client certificate"
    );
    assert_eq!(got[2].body, br#"{"n":2}"#);

    // Refusals: each request fails with the reason, and the message waits
    // (retried), its reason recorded when it runs out of attempts.
    let unknown = tls::https(&pki, Served::UnknownCa, false).await;
    let wrong = tls::https(&pki, Served::WrongName, false).await;
    let cases = [
        (&mtls, Trust::CaOnly, "requires a client certificate"),
        (&unknown, Trust::CaAndClient, "unknown authority"),
        (
            &wrong,
            Trust::CaAndClient,
            "not valid for the name localhost",
        ),
    ];
    for (server, trust, says) in cases {
        let scratch = Scratch::new();
        let config = scratch.load_config(&format!(
            r#"
[[routes]]
events = ["event.*"]
targets = ["t"]

[targets.t]
plugin = "webhook"
retry = {{ initial_backoff = "50ms", max_attempts = 2, jitter = 0.0 }}
{}
"#,
            target(&server.url(), &server.host_port(), trust)
        ));
        enqueue(&scratch, 1).await;
        let relay = RunningRelay::start(&config).await;
        let storage = scratch.storage().await;
        let dead = eventually("the message dead-lettered", WAIT, || async {
            let dead = dead_letters(&storage, "t").await;
            (!dead.is_empty()).then_some(dead)
        })
        .await;
        relay.stop().await;
        let reason = dead[0].last_error.clone();
        assert!(reason.contains(says), "the reason says {says:?}: {reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_over_tls() {
    use outbox_relay_tests::kafka::{Broker, ClientTls, Storage};

    let pki = Pki::new();
    // tansu has no TLS listener: a TLS front (tests/tls.rs) before it, and
    // the broker advertises the front, as behind a TLS-terminating proxy.
    let front_port = outbox_relay_tests::free_port();
    let listen = format!("127.0.0.1:{}", outbox_relay_tests::free_port());
    let mut broker = Broker::start_with(
        &listen,
        &format!("localhost:{front_port}"),
        Storage::Memory,
        None,
    );
    let mtls = tls::front(&pki, Served::Good, true, front_port, &listen);
    let unknown = tls::front(&pki, Served::UnknownCa, false, 0, &listen);
    let wrong = tls::front(&pki, Served::WrongName, false, 0, &listen);
    broker.read_over_tls(ClientTls {
        ca: pki.ca.cert.clone(),
        cert: pki.client.cert.clone(),
        key: pki.client.key.clone(),
    });
    let topic = format!("outbox-tls-{}", uuid::Uuid::now_v7().simple());
    broker.create_topic(&topic, 1);
    let config_of = |bootstrap: &str| {
        format!(
            r#"{{ bootstrap = ["{bootstrap}"], topic = "{topic}", security_protocol = "SSL" }}"#
        )
    };

    let scratch = Scratch::new();
    let config = one_target(
        &scratch,
        "kafka",
        &format!(
            "config = {}\nsandbox = {}",
            config_of(&mtls.host_port()),
            sandbox(&pki, &mtls.host_port(), Trust::CaAndClient)
        ),
    );
    let ids = enqueue(&scratch, 20).await;
    let relay = RunningRelay::start(&config).await;
    let records = tokio::task::spawn_blocking({
        let topic = topic.clone();
        move || {
            let records = broker.read(&topic, 20, WAIT);
            (broker, records)
        }
    })
    .await
    .unwrap();
    let (_broker, records) = records;
    relay.stop().await;
    let header = |r: &outbox_relay_tests::kafka::Record| {
        r.header("outbox-message-id").expect("a message id")
    };
    let seen: Vec<String> = records.iter().map(header).collect();
    assert_eq!(
        seen, ids,
        "every message, once, in order, read back by librdkafka over TLS"
    );

    refusals(
        "kafka",
        (&mtls.host_port(), &mtls.host_port()),
        (&unknown.host_port(), &unknown.host_port()),
        (&wrong.host_port(), &wrong.host_port()),
        &pki,
        config_of,
    )
    .await;
}

/// Attack on issue 14: a TLS 1.2 server that requires a client certificate
/// was reported with a guess ("it may require a client certificate or a TLS
/// version or cipher"); the host knows the server asked, so it says so. A
/// TLS 1.3 server that closes after the handshake without asking for one
/// was blamed on a missing client certificate; it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_failures_say_what_the_server_asked_for() {
    let pki = Pki::new();
    let redis = "127.0.0.1:6379";
    let tls12 = tls::front_with(
        &pki,
        Served::Good,
        true,
        0,
        redis,
        &[&tls::rustls::version::TLS12],
    );
    let target = |front: &tls::Front, trust: Trust| {
        format!(
            "config = {{ url = \"rediss://{addr}\", stream = \"s\" }}\nsandbox = {sandbox}",
            addr = front.host_port(),
            sandbox = sandbox(&pki, &front.host_port(), trust)
        )
    };
    let scratch = Scratch::new();
    let config = one_target(&scratch, "redis_streams", &target(&tls12, Trust::CaOnly));
    assert_says(
        &start_error(&config).await,
        &["requires a client certificate, and none is configured"],
    );
    // With the certificate it gets through to Redis (TLS 1.2).
    let scratch = Scratch::new();
    let config = one_target(
        &scratch,
        "redis_streams",
        &target(&tls12, Trust::CaAndClient),
    );
    outbox_relay::app::check_target(&config, "t")
        .await
        .expect("TLS 1.2 with the client certificate");

    // A front whose upstream is closed: it drops each connection after
    // the handshake, having asked for no certificate.
    let closing = tls::front(&pki, Served::Good, false, 0, "127.0.0.1:1");
    let scratch = Scratch::new();
    let config = one_target(&scratch, "redis_streams", &target(&closing, Trust::CaOnly));
    let err = start_error(&config).await;
    assert!(!err.contains("client certificate"), "{err}");
    assert_says(&err, &["closed the connection"]);
}
