//! The `webhook` transport against a real HTTP receiver on localhost, checked
//! with an independent Standard Webhooks implementation (`standardwebhooks`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::serve::ListenerExt;
use outbox_relay::NewMessage;
use outbox_relay::storage::Storage;
use outbox_relay_tests::{Proxy, RunningRelay, Scratch, dead_letters, eventually};

const WAIT: Duration = Duration::from_secs(60);
/// The Standard Webhooks specification's example secret.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One request as the receiver saw it.
#[derive(Clone)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

/// An HTTP receiver that records every request and counts the TCP
/// connections it accepted. `/ok/*` answers 204, `/gone/*` 410, and
/// `/busy/*` answers a message's first request with 503 and
/// `Retry-After: 2`, and later ones with 200.
#[derive(Clone, Default)]
struct Receiver {
    requests: Arc<Mutex<Vec<Received>>>,
    connections: Arc<AtomicUsize>,
}

impl Receiver {
    async fn start() -> (Self, String) {
        let receiver = Receiver::default();
        let connections = receiver.connections.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let listener = listener.tap_io(move |_| {
            connections.fetch_add(1, Ordering::SeqCst);
        });
        let app = axum::Router::new()
            .route("/{kind}/{*rest}", post(record))
            .with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, addr)
    }

    fn requests(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn record(
    State(receiver): State<Receiver>,
    Path((kind, rest)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut requests = receiver.requests.lock().unwrap();
    let seen_before = requests
        .iter()
        .any(|r| r.headers.get("webhook-id").and_then(|v| v.to_str().ok()) == Some(id.as_str()));
    requests.push(Received {
        path: format!("/{kind}/{rest}"),
        headers,
        body,
        at: Instant::now(),
    });
    match kind.as_str() {
        "gone" => (
            StatusCode::GONE,
            [("retry-after", "0")],
            "this hook was removed",
        )
            .into_response(),
        "busy" if !seen_before => (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "2")],
            "busy",
        )
            .into_response(),
        _ => StatusCode::NO_CONTENT.into_response(),
    }
}

fn config_toml(scratch: &Scratch, url: &str, allow: &str, extra: &str) -> String {
    let secret = scratch.path().join("hook.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    format!(
        r#"
[keys.hooks]
algorithm = "HS256"
file = "{}"

[[routes]]
events = ["*"]
targets = ["hooks"]

[targets.hooks]
plugin = "webhook"
batch_size = 20
keys = ["hooks"]
config = {{ url = "{url}", secret_key = "hooks" }}
sandbox = {{ allow_http = ["{allow}"] }}
{extra}
"#,
        secret.display()
    )
}

/// `v1,<base64 HMAC-SHA256(key, id.timestamp.body)>`, computed here from the spec.
fn expected_signature(r: &Received) -> String {
    use base64::Engine as _;
    use hmac::Mac as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(SECRET.trim_start_matches("whsec_")).unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(
        format!(
            "{}.{}.",
            header(r, "webhook-id"),
            header(r, "webhook-timestamp")
        )
        .as_bytes(),
    );
    mac.update(&r.body);
    format!("v1,{}", b64.encode(mac.finalize().into_bytes()))
}

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.headers
        .get(name)
        .unwrap_or_else(|| panic!("header {name} missing"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn posts_every_message_signed_over_reused_connections() {
    let (receiver, addr) = Receiver::start().await;
    let scratch = Scratch::new();
    let config = scratch.load_config(&config_toml(
        &scratch,
        &format!("http://{addr}/ok/{{event}}"),
        &addr,
        "",
    ));
    let storage = scratch.storage().await;
    let messages: Vec<NewMessage> = (0..200u32)
        .map(|i| {
            let mut payload = format!("{{\"n\":{i}}}").into_bytes();
            if i % 2 == 0 {
                payload.extend_from_slice(&[0xff, 0x00, 0xfe]);
            }
            NewMessage::new(format!("order.created.{}", i % 3), payload)
                .with_key(format!("order-{i}"))
                .with_header(
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                )
                .with_header("x-tenant", format!("tenant-{}", i % 5))
        })
        .collect();
    storage.save(&messages).await.unwrap();

    let relay = RunningRelay::start(&config).await;
    eventually("200 webhooks", WAIT, || async {
        (receiver.requests().len() >= 200).then_some(())
    })
    .await;
    relay.stop().await;

    let verifier = standardwebhooks::Webhook::new(SECRET).unwrap();
    let received = receiver.requests();
    assert_eq!(received.len(), 200, "each message exactly once");
    let by_id: HashMap<&str, &Received> = received
        .iter()
        .map(|r| (header(r, "webhook-id"), r))
        .collect();
    for m in &messages {
        let id = m.id.to_string();
        let r = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("{id} never arrived"));
        assert_eq!(r.path, format!("/ok/{}", m.event_name));
        assert_eq!(
            r.body.as_ref(),
            m.payload.as_slice(),
            "payload byte for byte"
        );
        assert_eq!(header(r, "outbox-message-id"), id);
        assert_eq!(header(r, "outbox-event"), m.event_name);
        assert_eq!(header(r, "content-type"), "application/json");
        for (name, value) in &m.headers {
            assert_eq!(header(r, name), value, "header {name}");
        }
        assert!(header(r, "webhook-signature").starts_with("v1,"));
        if std::str::from_utf8(&r.body).is_ok() {
            verifier
                .verify(&r.body, &r.headers)
                .unwrap_or_else(|e| panic!("signature of {id} does not verify: {e:?}"));
        } else {
            // That implementation signs text bodies only; the specification
            // signs bytes, so check a binary body's HMAC directly.
            assert_eq!(header(r, "webhook-signature"), expected_signature(r));
        }
    }
    // One worker sends a batch of 20 concurrently; the pool keeps those
    // connections open across the ten batches.
    let connections = receiver.connections();
    assert!(
        (1..=20).contains(&connections),
        "{connections} connections for 200 requests in batches of 20"
    );
}

#[tokio::test]
async fn a_410_is_dead_lettered_and_a_503_waits_for_its_retry_after() {
    let (receiver, addr) = Receiver::start().await;
    let scratch = Scratch::new();
    let config = scratch.load_config(&config_toml(
        &scratch,
        &format!("http://{addr}/{{header.x-kind}}/hook"),
        &addr,
        // Back-off far below Retry-After, so only the header can explain the wait.
        "retry = { initial_backoff = \"50ms\", max_attempts = 5 }",
    ));
    let storage = scratch.storage().await;
    let gone = NewMessage::new("hook.gone", b"{}".to_vec()).with_header("x-kind", "gone");
    let busy = NewMessage::new("hook.busy", b"{}".to_vec()).with_header("x-kind", "busy");
    storage.save(&[gone.clone(), busy.clone()]).await.unwrap();

    let relay = RunningRelay::start(&config).await;
    eventually("the busy hook's second request", WAIT, || async {
        (receiver
            .requests()
            .iter()
            .filter(|r| r.path == "/busy/hook")
            .count()
            >= 2)
            .then_some(())
    })
    .await;
    let dead = eventually("the 410 dead-lettered", WAIT, || async {
        let dead = dead_letters(&storage, "hooks").await;
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    relay.stop().await;

    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id, gone.id.to_string());
    assert!(
        dead[0].last_error.contains("HTTP 410"),
        "{}",
        dead[0].last_error
    );
    assert_eq!(dead[0].attempts, 1, "a 410 is not retried");

    let busy_requests: Vec<Received> = receiver
        .requests()
        .into_iter()
        .filter(|r| r.path == "/busy/hook")
        .collect();
    assert_eq!(busy_requests.len(), 2, "delivered on the second attempt");
    let waited = busy_requests[1].at - busy_requests[0].at;
    assert!(
        waited >= Duration::from_secs(2),
        "the retry came {waited:?} after the 503, before its Retry-After of 2 s"
    );
    let status = storage.status(&["hooks".to_string()]).await.unwrap();
    assert_eq!(status[0].retries_pending, 0);
}

#[tokio::test]
async fn a_receiver_that_goes_away_loses_nothing() {
    let (receiver, addr) = Receiver::start().await;
    let proxy = Proxy::start(&addr).await;
    let scratch = Scratch::new();
    let config = scratch.load_config(&config_toml(
        &scratch,
        &format!("http://{}/ok/x", proxy.addr()),
        &proxy.addr(),
        "retry = { initial_backoff = \"100ms\", max_backoff = \"1s\", max_attempts = 50 }",
    ));
    let storage = scratch.storage().await;
    let relay = RunningRelay::start(&config).await;
    let mut sent = Vec::new();
    for round in 0..30 {
        if round == 10 {
            proxy.set_down(true);
        }
        if round == 20 {
            proxy.set_down(false);
        }
        let batch: Vec<NewMessage> = (0..10)
            .map(|i| NewMessage::new("tick", format!("{round}-{i}").into_bytes()))
            .collect();
        storage.save(&batch).await.unwrap();
        sent.extend(batch);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually("every message through the proxy", WAIT, || async {
        let got: std::collections::HashSet<String> = receiver
            .requests()
            .iter()
            .map(|r| header(r, "webhook-id").to_string())
            .collect();
        sent.iter()
            .all(|m| got.contains(&m.id.to_string()))
            .then_some(())
    })
    .await;
    relay.stop().await;
    assert!(dead_letters(&storage, "hooks").await.is_empty());
    let duplicates = receiver.requests().len() - sent.len();
    assert!(
        duplicates <= 20,
        "{duplicates} duplicates; at most one batch in flight per cut"
    );
}

#[tokio::test]
async fn a_url_the_sandbox_does_not_allow_stops_the_target_with_a_clear_error() {
    let (receiver, addr) = Receiver::start().await;
    let scratch = Scratch::new();
    let config = scratch.load_config(&config_toml(
        &scratch,
        &format!("http://{addr}/ok/x"),
        "hooks.example.com",
        "",
    ));
    let e = outbox_relay::app::check_target(&config, "hooks")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the sandbox does not allow HTTP to 127.0.0.1") && e.contains("allow_http"),
        "{e}"
    );

    let storage = scratch.storage().await;
    storage
        .save(&[NewMessage::new("x", b"{}".to_vec())])
        .await
        .unwrap();
    let relay = RunningRelay::start(&config).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = storage.status(&["hooks".to_string()]).await.unwrap();
    relay.stop().await;
    assert!(receiver.requests().is_empty(), "nothing was sent");
    assert_eq!(
        status[0].lag, 1,
        "the message waits for a config that works"
    );
    assert_eq!(status[0].dead_letters, 0);
    assert_eq!(status[0].retries_pending, 0);
}
