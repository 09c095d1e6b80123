//! The `rabbitmq` transport against the real service on localhost
//! (127.0.0.1:5672, guest/guest), read back with `lapin`.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use outbox_relay::NewMessage;
use outbox_relay::storage::Storage;
use outbox_relay_tests::{Proxy, RunningRelay, Scratch, dead_letters, eventually};

const BROKER: &str = "127.0.0.1:5672";
const WAIT: Duration = Duration::from_secs(30);

/// A fresh topic exchange with one queue bound to it, both named uniquely
/// and deleted at the end (the queue is exclusive to this connection, and
/// the exchange auto-deletes with its last binding, should a test panic).
struct Broker {
    _conn: Connection,
    channel: Channel,
    exchange: String,
    queue: String,
}

impl Broker {
    async fn new(binding: &str) -> Self {
        let conn = Connection::connect(
            &format!("amqp://guest:guest@{BROKER}/%2f"),
            ConnectionProperties::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ is not reachable at {BROKER} ({e}); start it"));
        let channel = conn.create_channel().await.unwrap();
        let unique = uuid::Uuid::now_v7().simple().to_string();
        let exchange = format!("outbox-test-{unique}");
        let queue = format!("outbox-test-{unique}");
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                binding.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Self {
            _conn: conn,
            channel,
            exchange,
            queue,
        }
    }

    /// Every message waiting in the queue, taken off it.
    async fn drain(&self) -> Vec<lapin::message::Delivery> {
        let mut out = Vec::new();
        while let Some(m) = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            out.push(m.delivery);
        }
        out
    }

    /// Drains the queue until it has given `n` messages in all (and for
    /// `settle` more, to catch extra copies), or panics after [`WAIT`].
    async fn collect(&self, n: usize, settle: Duration) -> Vec<lapin::message::Delivery> {
        let deadline = Instant::now() + WAIT;
        let mut got = Vec::new();
        while got.len() < n {
            got.extend(self.drain().await);
            assert!(
                Instant::now() < deadline,
                "timed out after {WAIT:?}: {} of {n} messages arrived",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(settle).await;
        got.extend(self.drain().await);
        got
    }

    async fn delete(self) {
        self.channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        // Gone already when it auto-deleted with the queue's binding.
        let _ = self
            .channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
}

/// A relay config with one `rabbitmq` target, `bus`, in batches of 20.
fn target(url_addr: &str, exchange: &str, routing_key: &str) -> String {
    format!(
        r#"
[[routes]]
events = ["*"]
targets = ["bus"]

[targets.bus]
plugin = "rabbitmq"
batch_size = 20
retry = {{ max_attempts = 100, initial_backoff = "100ms", max_backoff = "500ms" }}
config = {{ url = "amqp://guest:guest@{url_addr}/%2f", exchange = "{exchange}", routing_key = "{routing_key}" }}
sandbox = {{ allow_tcp = ["{url_addr}"] }}
"#
    )
}

fn header<'a>(props: &'a BasicProperties, name: &str) -> Option<&'a [u8]> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        other => panic!("header {name} is not a long string: {other:?}"),
    }
}

fn message_id(d: &lapin::message::Delivery) -> String {
    d.properties
        .message_id()
        .as_ref()
        .expect("a message id")
        .as_str()
        .to_string()
}

#[tokio::test]
async fn delivers_persistent_messages_with_id_event_headers_and_payload_intact() {
    let broker = Broker::new("orders.#").await;
    let scratch = Scratch::new();
    let config = scratch.load_config(&target(BROKER, &broker.exchange, "orders.{event}"));
    let storage = scratch.storage().await;

    // Binary, not UTF-8, and larger than one AMQP frame (128 KiB).
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let messages = vec![
        NewMessage::new("order.created", vec![0x00, 0xff, 0xfe, 0x80, b'{', 0x0a])
            .with_key("order-7")
            .with_header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .with_header("content-type", "application/x-custom")
            .with_header("x-tenant", "acme, ünïcode"),
        NewMessage::new("order.paid", br#"{"order":7,"total":"12.50"}"#.to_vec())
            .with_header("content-type", "application/json"),
        NewMessage::new("order.archived", big),
        NewMessage::new("order.empty", Vec::new()),
    ];
    storage.save(&messages).await.unwrap();
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();

    let relay = RunningRelay::start(&config).await;
    let got = broker
        .collect(messages.len(), Duration::from_millis(300))
        .await;
    relay.stop().await;
    assert_eq!(got.len(), messages.len(), "each message exactly once");

    for m in &messages {
        let id = m.id.to_string();
        let d = got
            .iter()
            .find(|d| message_id(d) == id)
            .unwrap_or_else(|| panic!("message {id} did not arrive"));
        let p = &d.properties;
        assert_eq!(d.data, m.payload, "payload of {id}, byte for byte");
        assert_eq!(d.exchange.as_str(), broker.exchange);
        assert_eq!(d.routing_key.as_str(), format!("orders.{}", m.event_name));
        assert_eq!(p.kind().as_ref().unwrap().as_str(), m.event_name);
        assert_eq!(*p.delivery_mode(), Some(2), "persistent");
        let ts = p.timestamp().expect("a timestamp");
        assert!(
            ts.abs_diff(before) < 120,
            "timestamp {ts} is about now ({before})"
        );
        assert_eq!(header(p, "outbox-message-id"), Some(id.as_bytes()));
        assert_eq!(header(p, "outbox-event"), Some(m.event_name.as_bytes()));
        assert_eq!(
            header(p, "outbox-partition-key"),
            m.partition_key.as_deref().map(str::as_bytes)
        );
        for (name, value) in m.headers.iter() {
            assert_eq!(
                header(p, name),
                Some(value.as_bytes()),
                "header {name} of {id}"
            );
        }
        let own = 2 + usize::from(m.partition_key.is_some());
        let count = p.headers().as_ref().map_or(0, |h| h.inner().len());
        assert_eq!(count, m.headers.len() + own, "no other headers on {id}");
        assert_eq!(
            p.content_type().as_ref().map(|c| c.as_str().to_string()),
            m.headers.get("content-type").cloned(),
            "content-type of {id}"
        );
    }
    broker.delete().await;
}

#[tokio::test]
async fn unroutable_messages_are_dead_lettered_as_returned() {
    let broker = Broker::new("orders.#").await;
    let scratch = Scratch::new();
    let config = scratch.load_config(&target(BROKER, &broker.exchange, "{header.route}"));
    let storage = scratch.storage().await;
    let routed = NewMessage::new("order.created", b"{}".to_vec()).with_header("route", "orders.eu");
    let unroutable =
        NewMessage::new("order.created", b"{}".to_vec()).with_header("route", "nobody.listens");
    let no_route = NewMessage::new("order.created", b"{}".to_vec());
    storage
        .save(&[routed.clone(), unroutable.clone(), no_route.clone()])
        .await
        .unwrap();

    let relay = RunningRelay::start(&config).await;
    let dead = eventually("two dead letters", WAIT, || async {
        let dead = dead_letters(&storage, "bus").await;
        (dead.len() >= 2).then_some(dead)
    })
    .await;
    let got = broker.collect(1, Duration::from_millis(300)).await;
    relay.stop().await;

    assert_eq!(got.len(), 1);
    assert_eq!(message_id(&got[0]), routed.id.to_string());
    let reason = |m: &NewMessage| {
        let d = dead
            .iter()
            .find(|d| d.message_id == m.id.to_string())
            .unwrap_or_else(|| panic!("{} is not dead-lettered: {dead:?}", m.id));
        assert_eq!(d.attempts, 1, "a reject is not retried");
        d.last_error.clone()
    };
    let why = reason(&unroutable);
    assert!(
        why.contains("unroutable") && why.contains("returned") && why.contains("nobody.listens"),
        "{why}"
    );
    let why = reason(&no_route);
    assert!(why.contains("route"), "{why}");
    assert_eq!(dead.len(), 2);
    broker.delete().await;
}

#[tokio::test]
async fn a_broker_cut_off_mid_run_loses_nothing_and_the_relay_recovers() {
    const BATCH: usize = 20;
    let broker = Broker::new("orders.#").await;
    let proxy = Proxy::start(BROKER).await;
    let scratch = Scratch::new();
    let config = scratch.load_config(&target(&proxy.addr(), &broker.exchange, "orders.{event}"));
    let storage = scratch.storage().await;
    let relay = RunningRelay::start(&config).await;

    // Produce steadily for ~4 s; cut the broker off for 2 s in the middle.
    let producer_storage = scratch.storage().await;
    let producer = tokio::spawn(async move {
        let mut ids = Vec::new();
        for round in 0..80 {
            let batch: Vec<NewMessage> = (0..10)
                .map(|i| {
                    NewMessage::new("order.created", format!("{{\"n\":{}}}", round * 10 + i))
                        .with_header("x-round", round.to_string())
                })
                .collect();
            producer_storage.save(&batch).await.unwrap();
            ids.extend(batch.iter().map(|m| m.id.to_string()));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ids
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let delivered_before_cut = broker.drain().await;
    assert!(
        !delivered_before_cut.is_empty(),
        "messages flowed before the cut"
    );
    let connections_before_cut = proxy.accepted();
    proxy.set_down(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set_down(false);
    let ids = producer.await.unwrap();

    let rest = broker
        .collect(
            ids.len() - delivered_before_cut.len(),
            Duration::from_millis(500),
        )
        .await;
    eventually("the target to catch up", WAIT, || async {
        let status = storage.status(&["bus".to_string()]).await.unwrap();
        (status[0].lag == 0 && status[0].retries_pending == 0).then_some(())
    })
    .await;
    let late = broker.drain().await;
    relay.stop().await;

    let mut counts: HashMap<String, usize> = HashMap::new();
    for d in delivered_before_cut.iter().chain(&rest).chain(&late) {
        *counts.entry(message_id(d)).or_default() += 1;
    }
    let missing = ids.iter().filter(|id| !counts.contains_key(*id)).count();
    assert_eq!(missing, 0, "every message arrived");
    assert_eq!(counts.len(), ids.len(), "nothing but the enqueued messages");
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    eprintln!(
        "{} messages, {duplicates} duplicates, {} connections accepted by the proxy",
        ids.len(),
        proxy.accepted()
    );
    assert!(
        duplicates <= 2 * BATCH,
        "{duplicates} duplicates: more than the batches in flight at the cut"
    );
    assert!(
        proxy.accepted() > connections_before_cut,
        "the transport reconnected on its own"
    );
    assert!(dead_letters(&storage, "bus").await.is_empty());
    broker.delete().await;
}

#[tokio::test]
async fn an_address_the_sandbox_does_not_allow_is_refused_and_its_messages_wait() {
    let broker = Broker::new("orders.#").await;
    let scratch = Scratch::new();
    // The broker is up, but the sandbox only allows another port.
    let config = scratch.load_config(&target(BROKER, &broker.exchange, "orders.{event}").replace(
        r#"allow_tcp = ["127.0.0.1:5672"]"#,
        r#"allow_tcp = ["127.0.0.1:5999"]"#,
    ));
    let err = outbox_relay::app::check_target(&config, "bus")
        .await
        .expect_err("the plugin must be refused")
        .to_string();
    assert!(
        err.contains("the sandbox does not allow connecting to 127.0.0.1:5672"),
        "{err}"
    );

    let storage = scratch.storage().await;
    storage
        .save(&[NewMessage::new("order.created", b"{}".to_vec())])
        .await
        .unwrap();
    let relay = RunningRelay::start(&config).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = storage.status(&["bus".to_string()]).await.unwrap();
    relay.stop().await;
    assert_eq!(status[0].lag, 1, "the message waits");
    assert_eq!(status[0].retries_pending, 0, "no attempt was charged");
    assert_eq!(status[0].dead_letters, 0);
    assert!(
        broker.drain().await.is_empty(),
        "nothing reached the broker"
    );
    broker.delete().await;
}
