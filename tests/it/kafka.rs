//! The `kafka` transport against a real Kafka-protocol broker (tansu, one
//! process per test on a free port; tests/kafka.rs), read back with
//! librdkafka (confluent-kafka), a client the project did not write.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use outbox_relay::NewMessage;
use outbox_relay::storage::Storage;
use outbox_relay_tests::kafka::{Broker, Login, Record, Storage as BrokerStorage};
use outbox_relay_tests::{Proxy, RunningRelay, Scratch, dead_letters, enqueue, eventually};

const WAIT: Duration = Duration::from_secs(60);

/// Routes every event to one `kafka` target, `events`, with `lines` (its
/// `config`, `sandbox`, `batch_size`...) in its table.
fn kafka_target(lines: &str) -> String {
    format!(
        r#"
[[routes]]
events = ["*"]
targets = ["events"]

[targets.events]
plugin = "kafka"
{lines}"#
    )
}

/// Reads until `count` records came (or `WAIT` passed), then asserts the count.
fn read_all(broker: &Broker, topic: &str, count: usize) -> Vec<Record> {
    let records = broker.read(topic, count, WAIT);
    assert!(
        records.len() >= count,
        "{} of {count} records in {topic}",
        records.len()
    );
    records
}

fn message_id(r: &Record) -> String {
    r.header("outbox-message-id")
        .expect("every record carries its message id")
}

/// `toPositive(murmur2(key)) % partitions` from the Java client's own
/// murmur2 test vectors (UtilsTest.testMurmur2), not from our code.
const JAVA_VECTORS: &[(&str, i32)] = &[
    ("21", -973_932_308),
    ("foobar", -790_332_482),
    ("a-little-bit-long-string", -985_981_536),
    ("a-little-bit-longer-string", -1_486_304_829),
    (
        "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
        -58_897_971,
    ),
    ("abc", 479_470_107),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_payload_key_headers_byte_for_byte_on_the_java_partition() {
    let broker = Broker::start();
    let addr = broker.listen.clone();
    broker.create_topic("orders", 5);
    let scratch = Scratch::new();
    let config = scratch.load_config(&kafka_target(&format!(
        r#"
batch_size = 7
config = {{ bootstrap = ["{addr}"], topic = "orders" }}
sandbox = {{ allow_tcp = ["{addr}"] }}
"#
    )));
    let storage = scratch.storage().await;
    let binary = NewMessage::new("order.created", vec![0x00, 0xff, 0xfe, b'\r', b'\n', 0x80])
        .with_key("21")
        .with_header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .with_header("tenant", "acme \"quoted\" ünïcode")
        .with_header("x-empty", "")
        .with_header("outbox-event", "forged");
    let unkeyed = NewMessage::new("order.paid", br#"{"order":42}"#.to_vec());
    let mut sent = vec![binary.clone(), unkeyed.clone()];
    for (key, _) in JAVA_VECTORS {
        for i in 0..3 {
            sent.push(
                NewMessage::new(
                    "order.updated",
                    format!("{{\"k\":\"{key}\",\"i\":{i}}}").into_bytes(),
                )
                .with_key(*key),
            );
        }
    }
    storage.save(&sent).await.unwrap();

    let relay = RunningRelay::start(&config).await;
    read_all(&broker, "orders", sent.len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay.stop().await;
    let records = broker.read("orders", sent.len() + 1, Duration::from_secs(3));
    assert_eq!(records.len(), sent.len(), "no duplicates");
    assert!(dead_letters(&storage, "events").await.is_empty());

    let by_id: HashMap<String, &Record> = records.iter().map(|r| (message_id(r), r)).collect();
    for m in &sent {
        let r = by_id[&m.id.to_string()];
        assert_eq!(
            r.value.as_deref(),
            Some(&m.payload[..]),
            "payload byte for byte"
        );
        assert_eq!(
            r.key.as_deref(),
            m.partition_key.as_deref().map(str::as_bytes),
            "record key"
        );
        assert_eq!(
            r.header("outbox-event").as_deref(),
            Some(m.event_name.as_str())
        );
        // The message's own headers, then the transport's two.
        let mut want: Vec<(String, Option<Vec<u8>>)> = m
            .headers
            .iter()
            .filter(|(k, _)| k.as_str() != "outbox-event")
            .map(|(k, v)| (k.clone(), Some(v.clone().into_bytes())))
            .collect();
        want.push((
            "outbox-message-id".into(),
            Some(m.id.to_string().into_bytes()),
        ));
        want.push((
            "outbox-event".into(),
            Some(m.event_name.clone().into_bytes()),
        ));
        let mut got = r.headers.clone();
        want.sort();
        got.sort();
        assert_eq!(got, want, "headers of {}", m.id);
        let (secs, nanos) = m.id.get_timestamp().unwrap().to_unix();
        let enqueued_ms = (secs * 1000 + u64::from(nanos) / 1_000_000) as i64;
        assert!(
            (r.timestamp - enqueued_ms).abs() < 5000,
            "the record's time is the message's: {} vs {enqueued_ms}",
            r.timestamp
        );
    }

    // Keyed records land where the Java client puts them.
    for (key, hash) in JAVA_VECTORS {
        let want = ((*hash as u32 & 0x7fff_ffff) % 5) as i32;
        for r in records
            .iter()
            .filter(|r| r.key.as_deref() == Some(key.as_bytes()))
        {
            assert_eq!(r.partition, want, "key {key:?}");
        }
    }
    // And where librdkafka's Java-compatible partitioner puts them, for
    // keys of every length.
    let keys: Vec<String> = (0..40)
        .map(|i| format!("customer-{}", "x".repeat(i % 9) + &i.to_string()))
        .collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    broker.create_topic("murmur", 7);
    let theirs = broker.murmur2_partitions("murmur", 7, &key_refs);
    let scratch = Scratch::new();
    let config = scratch.load_config(&kafka_target(&format!(
        r#"
config = {{ bootstrap = ["{addr}"], topic = "murmur-relay" }}
sandbox = {{ allow_tcp = ["{addr}"] }}
"#
    )));
    broker.create_topic("murmur-relay", 7);
    let storage = scratch.storage().await;
    let messages: Vec<NewMessage> = keys
        .iter()
        .map(|k| NewMessage::new("k", k.clone().into_bytes()).with_key(k.clone()))
        .collect();
    storage.save(&messages).await.unwrap();
    let relay = RunningRelay::start(&config).await;
    let ours = read_all(&broker, "murmur-relay", keys.len());
    relay.stop().await;
    let ours: HashMap<Vec<u8>, i32> = ours
        .iter()
        .map(|r| (r.key.clone().unwrap(), r.partition))
        .collect();
    for (key, theirs) in keys.iter().zip(theirs) {
        assert_eq!(
            ours[key.as_bytes()],
            theirs,
            "key {key:?}: librdkafka's murmur2 partition"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_target_keeps_each_keys_order_across_partitions() {
    let broker = Broker::start();
    let addr = broker.listen.clone();
    broker.create_topic("ordered", 3);
    let scratch = Scratch::new();
    let config = scratch.load_config(&kafka_target(&format!(
        r#"
ordered = true
batch_size = 25
config = {{ bootstrap = ["{addr}"], topic = "ordered" }}
sandbox = {{ allow_tcp = ["{addr}"] }}
"#
    )));
    let storage = scratch.storage().await;
    let keys = ["a", "b", "c", "d", "e", "f"];
    let per_key = 150;
    let mut all = Vec::new();
    for i in 0..per_key {
        for key in keys {
            all.push(NewMessage::new("step", format!("{key}:{i}").into_bytes()).with_key(key));
        }
    }
    for chunk in all.chunks(100) {
        storage.save(chunk).await.unwrap();
    }
    let relay = RunningRelay::start(&config).await;
    let records = read_all(&broker, "ordered", all.len());
    relay.stop().await;

    let mut next: HashMap<String, usize> = HashMap::new();
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    // Records of one partition come back in offset order.
    let mut sorted = records.clone();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    for r in &sorted {
        let text = String::from_utf8(r.value.clone().unwrap()).unwrap();
        let (key, i) = text.split_once(':').unwrap();
        let i: usize = i.parse().unwrap();
        assert_eq!(
            *partition_of.entry(key.to_owned()).or_insert(r.partition),
            r.partition,
            "one partition per key"
        );
        let want = next.entry(key.to_owned()).or_insert(0);
        assert_eq!(i, *want, "key {key}: step {i} came when {want} was next");
        *want += 1;
    }
    assert!(next.values().all(|&n| n == per_key), "{next:?}");
}

/// A run with a fault in the middle: half of `total` messages before the
/// relay starts, the rest (`send_rest`) once the first 100 records are in,
/// through a target with quick retries and short time-outs.
struct MidRun {
    storage: outbox_relay::storage::sqlite::SqliteStorage,
    relay: RunningRelay,
    sent: Vec<NewMessage>,
    topic: String,
    total: usize,
}

impl MidRun {
    async fn start(
        scratch: &Scratch,
        broker: &Broker,
        addr: &str,
        topic: &str,
        total: usize,
    ) -> MidRun {
        let config = scratch.load_config(&kafka_target(&format!(
            r#"
batch_size = 50
retry = {{ initial_backoff = "100ms", max_backoff = "500ms", max_attempts = 100 }}
config = {{ bootstrap = ["{addr}"], topic = "{topic}", request_timeout_ms = 2000, connect_timeout_ms = 1000 }}
sandbox = {{ allow_tcp = ["{addr}"] }}
"#
        )));
        let storage = scratch.storage().await;
        let sent = enqueue(&storage, "thing.happened", total / 2).await;
        let relay = RunningRelay::start(&config).await;
        eventually("the first records", WAIT, || async move {
            (broker.read(topic, 100, Duration::from_secs(2)).len() >= 100).then_some(())
        })
        .await;
        MidRun {
            storage,
            relay,
            sent,
            topic: topic.to_owned(),
            total,
        }
    }

    async fn send_rest(&mut self) {
        let rest = self.total - self.total / 2;
        self.sent
            .extend(enqueue(&self.storage, "thing.happened", rest).await);
    }

    /// Waits for every message, stops the relay and reads the topic back:
    /// every message is there and none is dead-lettered. Returns the
    /// records read and the distinct message ids among them.
    async fn finish(self, broker: &Broker) -> (usize, usize) {
        read_all(broker, &self.topic, self.total);
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.relay.stop().await;
        let records = broker.read(&self.topic, self.total + 200, Duration::from_secs(3));
        let ids: Vec<String> = records.iter().map(message_id).collect();
        let unique: HashSet<&String> = ids.iter().collect();
        assert!(
            self.sent.iter().all(|m| unique.contains(&m.id.to_string())),
            "every message is in Kafka"
        );
        assert!(dead_letters(&self.storage, "events").await.is_empty());
        (ids.len(), unique.len())
    }
}

/// The broker is cut off (every connection dropped, new ones refused for
/// 2 s) while batches are in flight: nothing is lost, and the idempotent
/// producer's resends within its session write nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_mid_run_loses_nothing_and_writes_nothing_twice() {
    let listen = format!("127.0.0.1:{}", crate::free_port());
    let proxy = Proxy::start(&listen).await;
    let addr = proxy.addr();
    // Metadata sends clients to the proxy, not around it.
    let broker = Broker::start_with(&listen, &addr, BrokerStorage::Memory, None);
    broker.create_topic("cut", 4);
    let scratch = Scratch::new();
    let mut run = MidRun::start(&scratch, &broker, &addr, "cut", 3000).await;
    proxy.set_down(true);
    run.send_rest().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set_down(false);
    // A second cut while the backlog drains, with no pause.
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.cut();

    let (ids, unique) = run.finish(&broker).await;
    assert_eq!(
        ids, unique,
        "no record written twice: {ids} records, {unique} messages"
    );
    assert!(
        proxy.accepted() >= 2,
        "the transport reconnected through the proxy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_outside_allow_tcp_is_refused_and_messages_wait() {
    let broker = Broker::start();
    let addr = broker.listen.clone();
    let scratch = Scratch::new();
    let config = scratch.load_config(&kafka_target(&format!(
        r#"
config = {{ bootstrap = ["{addr}"] }}
sandbox = {{ allow_tcp = ["127.0.0.1:1"] }}
"#
    )));
    let err = outbox_relay::app::check_target(&config, "events")
        .await
        .expect_err("the plugin must not start")
        .to_string();
    assert!(
        err.contains(&format!("the sandbox does not allow connecting to {addr}")),
        "{err}"
    );
    let storage = scratch.storage().await;
    enqueue(&storage, "thing.happened", 3).await;
    let relay = RunningRelay::start(&config).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = storage.status(&["events".to_string()]).await.unwrap();
    relay.stop().await;
    assert_eq!(status[0].dead_letters, 0, "nothing is dead-lettered");
    assert_eq!(
        status[0].lag, 3,
        "the messages wait for a config that works"
    );
}

/// SASL/SCRAM against a broker that requires it (the durable tansu, which
/// keeps its users), the password read by the host from a file or the
/// environment (`{ file = ... }`, `{ env = ... }`): the right one delivers;
/// a wrong one and an unset variable are clear start-up errors that never
/// show the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_scram_delivers_with_the_right_password_and_names_a_refused_login() {
    for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let scratch = Scratch::new();
        let addr = format!("127.0.0.1:{}", crate::free_port());
        let login = Login {
            mechanism,
            username: "relay".into(),
            password: "s3cret-pass".into(),
            topics: vec![("secured".into(), 2)],
        };
        let storage_file = scratch.path().join("tansu.db");
        let broker =
            Broker::start_with(&addr, &addr, BrokerStorage::File(storage_file), Some(login));
        let wrong_file = scratch.path().join("wrong.secret");
        std::fs::write(&wrong_file, "not-the-password\n").unwrap();
        let right_file = scratch.path().join("right.secret");
        std::fs::write(&right_file, "s3cret-pass\n").unwrap();
        let target = |password: &str| {
            kafka_target(&format!(
                r#"
config = {{ bootstrap = ["{addr}"], topic = "secured", security_protocol = "SASL_PLAINTEXT", sasl_mechanism = "{mechanism}", sasl_username = "relay", sasl_password = {password} }}
sandbox = {{ allow_tcp = ["{addr}"] }}
"#
            ))
        };
        let wrong = scratch.load_config(&target(&format!(
            "{{ file = \"{}\" }}",
            wrong_file.display()
        )));
        let err = outbox_relay::app::check_target(&wrong, "events")
            .await
            .expect_err("a wrong password must not start")
            .to_string();
        assert!(
            err.contains(&format!("SASL {mechanism} login as \"relay\" failed")),
            "{mechanism}: {err}"
        );
        assert!(
            !err.contains("not-the-password"),
            "the password is not shown: {err}"
        );

        let unset = scratch.load_config(&target("{ env = \"OUTBOX_TEST_KAFKA_PASSWORD_UNSET\" }"));
        let err = outbox_relay::app::check_target(&unset, "events")
            .await
            .expect_err("an unset variable must not start")
            .to_string();
        assert!(
            err.contains("field `targets.events.config.sasl_password`: environment variable OUTBOX_TEST_KAFKA_PASSWORD_UNSET is not set"),
            "{err}"
        );

        let right = scratch.load_config(&target(&format!(
            "{{ file = \"{}\" }}",
            right_file.display()
        )));
        let storage = scratch.storage().await;
        let sent = enqueue(&storage, "thing.happened", 20).await;
        let relay = RunningRelay::start(&right).await;
        let records = read_all(&broker, "secured", sent.len());
        relay.stop().await;
        assert_eq!(records.len(), sent.len(), "{mechanism}");
        assert!(dead_letters(&storage, "events").await.is_empty());
    }
}

/// The broker (durable) is SIGKILLed mid-run and started again on the same
/// file: nothing acknowledged is lost, every message arrives, and the
/// duplicates stay within the batches in flight when it died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_and_restarted_mid_run_loses_nothing() {
    let scratch = Scratch::new();
    let addr = format!("127.0.0.1:{}", crate::free_port());
    let mut broker = Broker::start_with(
        &addr,
        &addr,
        BrokerStorage::File(scratch.path().join("tansu.db")),
        None,
    );
    broker.create_topic("restart", 3);
    let mut run = MidRun::start(&scratch, &broker, &addr, "restart", 2000).await;
    broker.kill();
    run.send_rest().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.restart();

    let (ids, unique) = run.finish(&broker).await;
    let duplicates = ids - unique;
    eprintln!("{ids} records for 2000 messages: {duplicates} duplicates");
    assert!(
        duplicates <= 50,
        "duplicates within one batch in flight: {duplicates}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_partition_that_does_not_exist_is_dead_lettered_naming_it() {
    let broker = Broker::start();
    let addr = broker.listen.clone();
    broker.create_topic("small", 2);
    let scratch = Scratch::new();
    let config = scratch.load_config(&kafka_target(&format!(
        r#"
config = {{ bootstrap = ["{addr}"], topic = "small", partition = 5 }}
sandbox = {{ allow_tcp = ["{addr}"] }}
"#
    )));
    let storage = scratch.storage().await;
    enqueue(&storage, "thing.happened", 2).await;
    let relay = RunningRelay::start(&config).await;
    let dead = eventually("dead letters", WAIT, || {
        let storage = &storage;
        async move {
            let dead = dead_letters(storage, "events").await;
            (dead.len() == 2).then_some(dead)
        }
    })
    .await;
    relay.stop().await;
    assert!(
        dead[0]
            .last_error
            .contains("has 2 partitions; `partition` 5 does not exist"),
        "{}",
        dead[0].last_error
    );
}

/// A topic deleted and made again with more partitions while the relay
/// runs: within `metadata_max_age_ms`, keyed records land where the Java
/// client puts them among the new partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_that_gains_partitions_is_seen_within_the_metadata_age() {
    let broker = Broker::start();
    let addr = broker.listen.clone();
    broker.create_topic("grow", 2);
    let scratch = Scratch::new();
    let config = scratch.load_config(&kafka_target(&format!(
        r#"
config = {{ bootstrap = ["{addr}"], topic = "grow", metadata_max_age_ms = 500 }}
sandbox = {{ allow_tcp = ["{addr}"] }}
"#
    )));
    let storage = scratch.storage().await;
    let keyed = |round: usize| -> Vec<NewMessage> {
        JAVA_VECTORS
            .iter()
            .map(|(key, _)| NewMessage::new("k", format!("{round}").into_bytes()).with_key(*key))
            .collect()
    };
    storage.save(&keyed(1)).await.unwrap();
    let relay = RunningRelay::start(&config).await;
    read_all(&broker, "grow", JAVA_VECTORS.len());
    broker.delete_topic("grow");
    broker.create_topic("grow", 6);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    storage.save(&keyed(2)).await.unwrap();
    let records = read_all(&broker, "grow", JAVA_VECTORS.len());
    relay.stop().await;
    for (key, hash) in JAVA_VECTORS {
        let want = ((*hash as u32 & 0x7fff_ffff) % 6) as i32;
        let r = records
            .iter()
            .find(|r| r.key.as_deref() == Some(key.as_bytes()))
            .unwrap_or_else(|| panic!("no record for {key}"));
        assert_eq!(r.partition, want, "key {key:?} among 6 partitions");
    }
    assert!(dead_letters(&storage, "events").await.is_empty());
}

/// A "broker" that answers one byte every 300 ms is cut off by the
/// transport's own time-outs, with its own error, before the host's call
/// limit would have to discard the instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_dribbles_its_answer_is_cut_off_by_the_transports_time_outs() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut request = [0u8; 256];
                let _ = stream.read(&mut request);
                // A frame of 64 bytes, sent one byte at a time.
                let mut answer = vec![0, 0, 0, 64];
                answer.extend([0u8; 64]);
                for byte in answer {
                    if stream.write_all(&[byte]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(300));
                }
            });
        }
    });
    let scratch = Scratch::new();
    let config = scratch.load_config(&kafka_target(&format!(
        r#"
config = {{ bootstrap = ["{addr}"], request_timeout_ms = 1000, delivery_timeout_ms = 2000 }}
sandbox = {{ allow_tcp = ["{addr}"], call_timeout = "10s" }}
"#
    )));
    let err = outbox_relay::app::check_target(&config, "events")
        .await
        .expect_err("a broker that never finishes an answer must not start")
        .to_string();
    assert!(
        err.contains("no answer within the request time-out"),
        "{err}"
    );
    assert!(
        !err.contains("time limit"),
        "the transport's own time-out, not the host's: {err}"
    );
}

/// The bootstrap address is allowed but the broker the metadata names (its
/// advertised listener) is not: the target does not start, naming it,
/// rather than charging every batch a retry, even with one socket allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advertised_broker_outside_allow_tcp_stops_the_start() {
    let listen = format!("127.0.0.1:{}", crate::free_port());
    let proxy = Proxy::start(&listen).await;
    let advertised = proxy.addr();
    let _broker = Broker::start_with(&listen, &advertised, BrokerStorage::Memory, None);
    let scratch = Scratch::new();
    let config = scratch.load_config(&kafka_target(&format!(
        r#"
config = {{ bootstrap = ["{listen}"] }}
sandbox = {{ allow_tcp = ["{listen}"], max_sockets = 1 }}
"#
    )));
    // One socket in all: the start-up probe must not be starved by
    // connections kept open (the bootstrap's is closed once the brokers
    // are known), or the refusal would hide behind "no sockets left".
    let err = outbox_relay::app::check_target(&config, "events")
        .await
        .expect_err("a broker the sandbox does not allow must stop the start")
        .to_string();
    assert!(
        err.contains(&format!(
            "the sandbox does not allow connecting to {advertised}"
        )),
        "{err}"
    );
}

/// Two sockets and one kept connection: a batch still goes out (the
/// bootstrap's connection is let go once the brokers are known).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_delivers_within_a_small_socket_budget() {
    let broker = Broker::start();
    let addr = broker.listen.clone();
    broker.create_topic("few", 2);
    let scratch = Scratch::new();
    let config = scratch.load_config(&kafka_target(&format!(
        r#"
config = {{ bootstrap = ["{addr}"], topic = "few", max_connections = 1 }}
sandbox = {{ allow_tcp = ["{addr}"], max_sockets = 2 }}
"#
    )));
    let storage = scratch.storage().await;
    let sent = enqueue(&storage, "thing.happened", 300).await;
    let relay = RunningRelay::start(&config).await;
    read_all(&broker, "few", sent.len());
    relay.stop().await;
    assert!(dead_letters(&storage, "events").await.is_empty());
}
