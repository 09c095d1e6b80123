//! The `redis-streams` transport against the real service on localhost.
//! Entries are read back with the `redis` crate (XRANGE).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use outbox_relay::NewMessage;
use outbox_relay::storage::Storage;
use outbox_relay_tests::{Proxy, RunningRelay, Scratch, dead_letters, enqueue, eventually};
use redis::AsyncCommands;
use redis::streams::StreamRangeReply;

const REDIS: &str = "127.0.0.1:6379";
const WAIT: Duration = Duration::from_secs(60);

async fn redis() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(format!("redis://{REDIS}/")).unwrap();
    client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis is not reachable at {REDIS} ({e}); start redis-server"))
}

/// Every entry of `stream`: (entry id, fields).
async fn entries(
    con: &mut redis::aio::MultiplexedConnection,
    stream: &str,
) -> Vec<(String, HashMap<String, Vec<u8>>)> {
    let reply: StreamRangeReply = con.xrange_all(stream).await.unwrap();
    reply
        .ids
        .into_iter()
        .map(|entry| {
            let fields = entry
                .map
                .into_iter()
                .map(|(k, v)| match v {
                    redis::Value::BulkString(bytes) => (k, bytes),
                    other => panic!("field {k} is not a bulk string: {other:?}"),
                })
                .collect();
            (entry.id, fields)
        })
        .collect()
}

/// The streams this test made go away even when it fails.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let keys = std::mem::take(&mut self.0);
        let _ = std::thread::spawn(move || {
            let Ok(client) = redis::Client::open(format!("redis://{REDIS}/")) else {
                return;
            };
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut con) = client.get_multiplexed_async_connection().await {
                    let _: redis::RedisResult<usize> = con.del(&keys).await;
                }
            });
        })
        .join();
    }
}

fn prefix() -> String {
    format!("outbox-test:{}", uuid::Uuid::now_v7().simple())
}

#[tokio::test]
async fn delivers_id_event_key_headers_and_binary_payload_byte_for_byte() {
    let mut con = redis().await;
    let prefix = prefix();
    let created = format!("{prefix}:order.created");
    let paid = format!("{prefix}:order.paid");
    let _cleanup = Cleanup(vec![created.clone(), paid.clone()]);

    let scratch = Scratch::new();
    let config = scratch.load_config(&format!(
        r#"
[[routes]]
events = ["order.*"]
targets = ["stream"]

[targets.stream]
plugin = "redis_streams"
batch_size = 10
config = {{ url = "redis://{REDIS}", stream = "{prefix}:{{event}}", maxlen = 1000 }}
sandbox = {{ allow_tcp = ["{REDIS}"] }}
"#
    ));
    let storage = scratch.storage().await;
    let binary = NewMessage::new(
        "order.created",
        vec![0x00, 0xff, 0xfe, b'\r', b'\n', b'$', b'*', 0x80],
    )
    .with_key("order-42")
    .with_header(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    .with_header("tenant", "acme \"quoted\" ünïcode")
    .with_header("x-empty", "");
    let json = NewMessage::new("order.paid", br#"{"order":42,"total":"9.90"}"#.to_vec())
        .with_header("x-one", "1");
    let mut more = Vec::new();
    for i in 0..25 {
        more.push(
            NewMessage::new("order.created", format!("{{\"n\":{i}}}").into_bytes())
                .with_header("x-n", i.to_string()),
        );
    }
    storage.save(&[binary.clone(), json.clone()]).await.unwrap();
    storage.save(&more).await.unwrap();

    let relay = RunningRelay::start(&config).await;
    let (created_entries, paid_entries) = eventually("all 27 entries", WAIT, || {
        let mut con = con.clone();
        let (created, paid) = (created.clone(), paid.clone());
        async move {
            let c = entries(&mut con, &created).await;
            let p = entries(&mut con, &paid).await;
            (c.len() + p.len() >= 27).then_some((c, p))
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.stop().await;
    assert_eq!(entries(&mut con, &created).await.len(), 26, "no duplicates");
    assert_eq!(paid_entries.len(), 1);

    let expect = |m: &NewMessage| {
        let mut fields: HashMap<String, Vec<u8>> = HashMap::new();
        fields.insert("id".into(), m.id.to_string().into_bytes());
        fields.insert("event".into(), m.event_name.clone().into_bytes());
        if let Some(key) = &m.partition_key {
            fields.insert("key".into(), key.clone().into_bytes());
        }
        fields.insert("payload".into(), m.payload.clone());
        fields
    };
    let check = |m: &NewMessage, got: &HashMap<String, Vec<u8>>| {
        let mut got = got.clone();
        let headers: BTreeMap<String, String> =
            serde_json::from_slice(&got.remove("headers").expect("a headers field")).unwrap();
        let mut want_headers = m.headers.clone();
        want_headers.insert("outbox-message-id".into(), m.id.to_string());
        assert_eq!(headers, want_headers, "headers of {}", m.id);
        assert_eq!(got, expect(m), "fields of {}", m.id);
    };
    let by_id: HashMap<Vec<u8>, &HashMap<String, Vec<u8>>> = created_entries
        .iter()
        .chain(&paid_entries)
        .map(|(_, fields)| (fields["id"].clone(), fields))
        .collect();
    assert_eq!(by_id.len(), 27, "one entry per message");
    for m in [&binary, &json].into_iter().chain(&more) {
        let got = by_id
            .get(m.id.to_string().as_bytes())
            .unwrap_or_else(|| panic!("no entry for {}", m.id));
        check(m, got);
    }
}

#[tokio::test]
async fn a_cut_off_mid_run_loses_nothing_and_the_relay_recovers_on_its_own() {
    let mut con = redis().await;
    let stream = format!("{}:cut", prefix());
    let _cleanup = Cleanup(vec![stream.clone()]);
    let proxy = Proxy::start(REDIS).await;
    let addr = proxy.addr();

    let scratch = Scratch::new();
    let config = scratch.load_config(&format!(
        r#"
[[routes]]
events = ["*"]
targets = ["stream"]

[targets.stream]
plugin = "redis_streams"
batch_size = 20
retry = {{ initial_backoff = "100ms", max_backoff = "500ms", max_attempts = 100 }}
config = {{ url = "{addr}", stream = "{stream}", timeout_ms = 1000 }}
sandbox = {{ allow_tcp = ["{addr}"] }}
"#
    ));
    let storage = scratch.storage().await;
    let total = 1000;
    // Half before the relay starts, half while the broker is cut off, so the
    // outage falls mid-run however fast this machine is.
    let mut sent = enqueue(&storage, "thing.happened", total / 2).await;
    let relay = RunningRelay::start(&config).await;

    eventually("the first entries", WAIT, || {
        let mut con = con.clone();
        let stream = stream.clone();
        async move { (entries(&mut con, &stream).await.len() >= 40).then_some(()) }
    })
    .await;
    proxy.set_down(true);
    let during = entries(&mut con, &stream).await.len();
    sent.extend(enqueue(&storage, "thing.happened", total / 2).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set_down(false);
    eprintln!("cut off after {during} of {total} entries");

    let wanted: std::collections::HashSet<String> = sent.iter().map(|m| m.id.to_string()).collect();
    let got = eventually("every message after the cut-off", WAIT, || {
        let mut con = con.clone();
        let stream = stream.clone();
        let wanted = wanted.clone();
        async move {
            let got = entries(&mut con, &stream).await;
            let ids: std::collections::HashSet<String> = got
                .iter()
                .map(|(_, f)| String::from_utf8(f["id"].clone()).unwrap())
                .collect();
            wanted.is_subset(&ids).then_some(got)
        }
    })
    .await;
    relay.stop().await;
    let duplicates = got.len() - total;
    eprintln!(
        "{} entries for {total} messages: {duplicates} duplicates",
        got.len()
    );
    assert!(
        during < total,
        "the cut-off came too late to test anything ({during} entries already)"
    );
    assert!(
        duplicates <= 40,
        "duplicates are bounded by the batches in flight: {duplicates}"
    );
    assert!(dead_letters(&storage, "stream").await.is_empty());
    assert!(
        proxy.accepted() >= 2,
        "the transport reconnected through the proxy"
    );
}

#[tokio::test]
async fn an_address_the_sandbox_does_not_allow_is_refused_and_messages_wait() {
    let scratch = Scratch::new();
    let config = scratch.load_config(&format!(
        r#"
[[routes]]
events = ["*"]
targets = ["stream"]

[targets.stream]
plugin = "redis_streams"
retry = {{ max_attempts = 1 }}
config = {{ url = "redis://{REDIS}", stream = "{}:refused" }}
sandbox = {{ allow_tcp = ["127.0.0.1:6380"] }}
"#,
        prefix()
    ));
    let err = outbox_relay::app::check_target(&config, "stream")
        .await
        .expect_err("the plugin must not start")
        .to_string();
    assert!(
        err.contains(&format!("the sandbox does not allow connecting to {REDIS}")),
        "{err}"
    );

    let storage = scratch.storage().await;
    enqueue(&storage, "thing.happened", 3).await;
    let relay = RunningRelay::start(&config).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = storage.status(&["stream".to_string()]).await.unwrap();
    relay.stop().await;
    assert_eq!(status[0].dead_letters, 0, "nothing is dead-lettered");
    assert_eq!(status[0].retries_pending, 0, "no attempt was charged");
    assert_eq!(
        status[0].lag, 3,
        "the messages wait for a config that works"
    );
}
