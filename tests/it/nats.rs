//! The `nats` transport against the real service on localhost (nats-server
//! with JetStream on 127.0.0.1:4222), read back with `async-nats`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use outbox_relay::NewMessage;
use outbox_relay::storage::Storage;
use outbox_relay_tests::{Proxy, RunningRelay, Scratch, enqueue, eventually};

const NATS: &str = "127.0.0.1:4222";
const WAIT: Duration = Duration::from_secs(60);

/// A JetStream stream of its own over a subject prefix of its own, with a
/// two-minute duplicate window; deleted when dropped.
struct TestStream {
    js: jetstream::Context,
    stream: stream::Stream,
    name: String,
    /// Subjects under `<prefix>.>` land in this stream.
    prefix: String,
}

impl TestStream {
    async fn new() -> Self {
        let client = async_nats::connect(NATS).await.unwrap_or_else(|e| {
            panic!("NATS is not reachable at {NATS} ({e}); start `nats-server -js`")
        });
        let js = jetstream::new(client);
        let unique = uuid::Uuid::now_v7().simple().to_string();
        let name = format!("OUTBOX_TEST_{unique}");
        let prefix = format!("outbox_test.{unique}");
        let stream = js
            .create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![format!("{prefix}.>")],
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("creating stream {name} (is JetStream enabled?): {e}"));
        Self {
            js,
            stream,
            name,
            prefix,
        }
    }

    async fn count(&self) -> u64 {
        self.stream.get_info().await.unwrap().state.messages
    }

    /// Every message the stream holds, in stream order.
    async fn messages(&self) -> Vec<jetstream::message::StreamMessage> {
        let state = self.stream.get_info().await.unwrap().state;
        let mut out = Vec::new();
        if state.messages == 0 {
            return out;
        }
        for seq in state.first_sequence..=state.last_sequence {
            out.push(self.stream.get_raw_message(seq).await.unwrap());
        }
        out
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop is synchronous, and the test's client runs on the test's
        // runtime, which is blocked here: delete with a client and a runtime
        // of our own, on a thread of our own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let client = async_nats::connect(NATS).await.ok()?;
                jetstream::new(client).delete_stream(&name).await.ok()
            })
        })
        .join();
    }
}

fn header<'a>(m: &'a jetstream::message::StreamMessage, name: &str) -> Option<&'a str> {
    m.headers.get(name).map(|v| v.as_str())
}

/// The `Nats-Msg-Id` of each stored message.
fn msg_ids(messages: &[jetstream::message::StreamMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|m| header(m, "Nats-Msg-Id").unwrap().to_string())
        .collect()
}

/// A broker named by a host name: the plugin's own lookup of `localhost`
/// is answered by the sandbox from what the name resolved to when the
/// instance started (issue 19: no guest lookup reaches the resolver).
#[tokio::test]
async fn a_broker_named_by_host_name_is_reached() {
    let js = TestStream::new().await;
    let scratch = Scratch::new();
    let config = scratch.load_config(&format!(
        r#"
[[routes]]
events = ["*"]
targets = ["bus"]

[targets.bus]
plugin = "nats"
config = {{ url = "nats://localhost:4222", subject = "{prefix}.{{event}}" }}
sandbox = {{ allow_tcp = ["localhost:4222"] }}
"#,
        prefix = js.prefix
    ));
    let storage = scratch.storage().await;
    storage
        .save(&[NewMessage::new("named", b"{}".to_vec())])
        .await
        .unwrap();
    let relay = RunningRelay::start(&config).await;
    eventually("the message in the stream", WAIT, || async {
        (js.count().await >= 1).then_some(())
    })
    .await;
    relay.stop().await;
}

#[tokio::test]
async fn delivers_messages_that_async_nats_reads_back_byte_for_byte() {
    let js = TestStream::new().await;
    let scratch = Scratch::new();
    let config = scratch.load_config(&format!(
        r#"
[[routes]]
events = ["order.*"]
targets = ["bus"]

[targets.bus]
plugin = "nats"
batch_size = 2
config = {{ url = "nats://{NATS}", subject = "{prefix}.{{event}}.{{header.tenant}}" }}
sandbox = {{ allow_tcp = ["{NATS}"] }}
"#,
        prefix = js.prefix
    ));
    let storage = scratch.storage().await;
    let binary: Vec<u8> = vec![0xff, 0x00, 0x10, b'\r', b'\n', 0x80, b'H', b'P', b'U', b'B'];
    let sent = [
        NewMessage::new("order.created", binary)
            .with_key("order-42")
            .with_header("tenant", "acme")
            .with_header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .with_header("x-note", "a value: with a colon, spaces and ünïcödé"),
        NewMessage::new("order.paid", br#"{"order":42,"total":"9.99"}"#.to_vec())
            .with_header("tenant", "globex"),
        NewMessage::new("order.shipped", Vec::new()).with_header("tenant", "acme"),
    ];
    storage.save(&sent).await.unwrap();

    let relay = RunningRelay::start(&config).await;
    eventually("three messages in the stream", WAIT, || async {
        (js.count().await >= 3).then_some(())
    })
    .await;
    let status = eventually("the relay to record the deliveries", WAIT, || async {
        let s = storage.status(&["bus".to_string()]).await.unwrap();
        (s[0].lag == 0).then_some(s)
    })
    .await;
    relay.stop().await;
    assert_eq!(status[0].dead_letters, 0);
    assert_eq!(status[0].retries_pending, 0);

    let stored = js.messages().await;
    assert_eq!(stored.len(), 3, "one stored message per outbox message");
    let by_id: BTreeMap<String, _> = stored
        .iter()
        .map(|m| (header(m, "outbox-message-id").unwrap().to_string(), m))
        .collect();
    for message in &sent {
        let id = message.id.to_string();
        let got = by_id
            .get(&id)
            .unwrap_or_else(|| panic!("message {id} is not in the stream"));
        let tenant = &message.headers["tenant"];
        assert_eq!(
            got.subject.as_str(),
            format!("{}.{}.{tenant}", js.prefix, message.event_name)
        );
        assert_eq!(header(got, "Nats-Msg-Id"), Some(id.as_str()));
        assert_eq!(header(got, "outbox-message-id"), Some(id.as_str()));
        assert_eq!(
            header(got, "outbox-event"),
            Some(message.event_name.as_str())
        );
        assert_eq!(&got.payload[..], &message.payload[..], "payload of {id}");
        // Exactly the transport's own headers and the envelope's, each once.
        let mut expected: BTreeMap<String, String> = message
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        expected.insert("Nats-Msg-Id".into(), id.clone());
        expected.insert("outbox-message-id".into(), id.clone());
        expected.insert("outbox-event".into(), message.event_name.clone());
        let actual: BTreeMap<String, String> = got
            .headers
            .iter()
            .map(|(name, values)| {
                assert_eq!(values.len(), 1, "header {name} appears once");
                (name.to_string(), values[0].as_str().to_string())
            })
            .collect();
        assert_eq!(actual, expected, "headers of {id}");
    }
}

#[tokio::test]
async fn a_broker_cut_off_mid_run_loses_nothing_and_the_stream_holds_no_duplicate() {
    let js = TestStream::new().await;
    let proxy = Proxy::start(NATS).await;
    let scratch = Scratch::new();
    let config = scratch.load_config(&format!(
        r#"
[[routes]]
events = ["*"]
targets = ["bus"]

[targets.bus]
plugin = "nats"
batch_size = 20
retry = {{ max_attempts = 100, initial_backoff = "100ms", max_backoff = "1s" }}
config = {{ url = "{addr}", subject = "{prefix}.{{event}}", ack_timeout_ms = 2000, connect_timeout_ms = 1000 }}
sandbox = {{ allow_tcp = ["{addr}"] }}
"#,
        addr = proxy.addr(),
        prefix = js.prefix
    ));
    let storage = scratch.storage().await;
    let relay = RunningRelay::start(&config).await;

    let mut ids: BTreeSet<String> = enqueue(&storage, "order.created", 10)
        .await
        .iter()
        .map(|m| m.id.to_string())
        .collect();
    eventually("the first deliveries", WAIT, || async {
        (js.count().await > 0).then_some(())
    })
    .await;
    // Messages keep coming for 3.5 s; the broker is unreachable for 2 s of it.
    for round in 0..35 {
        for m in enqueue(&storage, "order.created", 10).await {
            ids.insert(m.id.to_string());
        }
        if round == 5 {
            proxy.set_down(true);
        }
        if round == 25 {
            proxy.set_down(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n = ids.len() as u64;
    eventually(&format!("all {n} messages in the stream"), WAIT, || async {
        (js.count().await >= n).then_some(())
    })
    .await;
    let status = eventually("the relay to catch up", WAIT, || async {
        let s = storage.status(&["bus".to_string()]).await.unwrap();
        (s[0].lag == 0 && s[0].retries_pending == 0).then_some(s)
    })
    .await;
    // Give a late duplicate the chance to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay.stop().await;

    assert_eq!(status[0].dead_letters, 0);
    assert!(
        proxy.accepted() >= 2,
        "the transport reconnected after the cut"
    );
    let stored = js.messages().await;
    // Redeliveries after the cut carry the same Nats-Msg-Id, so JetStream
    // keeps one copy of each: no duplicate at all, and nothing lost.
    assert_eq!(
        stored.len() as u64,
        n,
        "exactly one stored copy per message"
    );
    let stored_ids: BTreeSet<String> = msg_ids(&stored).into_iter().collect();
    assert_eq!(stored_ids, ids);
}

#[tokio::test]
async fn jetstream_drops_a_redelivered_message_by_its_message_id() {
    let js = TestStream::new().await;
    let scratch = Scratch::new();
    // Two targets publish the same messages to the same stream: the second
    // copy of each has the same Nats-Msg-Id, so JetStream acks it as a
    // duplicate and keeps one.
    let config = scratch.load_config(&format!(
        r#"
[[routes]]
events = ["*"]
targets = ["first", "second"]

[targets.first]
plugin = "nats"
batch_size = 10
config = {{ url = "{NATS}", subject = "{prefix}.{{event}}" }}
sandbox = {{ allow_tcp = ["{NATS}"] }}

[targets.second]
plugin = "nats"
batch_size = 7
config = {{ url = "{NATS}", subject = "{prefix}.{{event}}" }}
sandbox = {{ allow_tcp = ["{NATS}"] }}
"#,
        prefix = js.prefix
    ));
    let storage = scratch.storage().await;
    let sent = enqueue(&storage, "order.created", 30).await;
    let targets = ["first".to_string(), "second".to_string()];
    let relay = RunningRelay::start(&config).await;
    let status = eventually("both targets to deliver everything", WAIT, || async {
        let s = storage.status(&targets).await.unwrap();
        s.iter()
            .all(|t| t.lag == 0 && t.retries_pending == 0)
            .then_some(s)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.stop().await;
    assert!(status.iter().all(|t| t.dead_letters == 0), "{status:?}");

    let stored = js.messages().await;
    assert_eq!(stored.len(), 30, "each message is stored once");
    let expected: BTreeSet<String> = sent.iter().map(|m| m.id.to_string()).collect();
    assert_eq!(
        msg_ids(&stored).into_iter().collect::<BTreeSet<_>>(),
        expected
    );

    // And JetStream itself says so for one more copy with that id.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", sent[0].id.to_string().as_str());
    let ack = js
        .js
        .publish_with_headers(
            format!("{}.order.created", js.prefix),
            headers,
            "again".into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(ack.duplicate, "the stream knows the message id: {ack:?}");
    assert_eq!(js.count().await, 30);
}

#[tokio::test]
async fn an_address_the_sandbox_does_not_allow_is_refused_and_the_error_says_so() {
    let js = TestStream::new().await;
    let scratch = Scratch::new();
    let config = scratch.load_config(&format!(
        r#"
[[routes]]
events = ["*"]
targets = ["bus"]

[targets.bus]
plugin = "nats"
retry = {{ max_attempts = 1 }}
config = {{ url = "nats://{NATS}", subject = "{prefix}.{{event}}" }}
sandbox = {{ allow_tcp = ["127.0.0.1:4999"] }}
"#,
        prefix = js.prefix
    ));
    let err = outbox_relay::app::check_target(&config, "bus")
        .await
        .expect_err("the plugin must be refused");
    let text = err.to_string();
    assert!(
        text.contains("does not allow connecting to 127.0.0.1:4222"),
        "the error names the sandbox and the address: {text}"
    );

    // A running relay holds the messages: nothing delivered, nothing charged.
    let storage = scratch.storage().await;
    enqueue(&storage, "order.created", 3).await;
    let relay = RunningRelay::start(&config).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = storage.status(&["bus".to_string()]).await.unwrap();
    relay.stop().await;
    assert_eq!(status[0].dead_letters, 0);
    assert_eq!(status[0].retries_pending, 0);
    assert_eq!(status[0].lag, 3);
    assert_eq!(js.count().await, 0);
}
