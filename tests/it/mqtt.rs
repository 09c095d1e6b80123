//! The `mqtt` transport against the real service on localhost (Mosquitto).
//! Publishes are read back by a `rumqttc` MQTT 5 subscriber at QoS 1,
//! subscribed to a unique topic prefix before the relay starts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox_relay::NewMessage;
use outbox_relay::storage::Storage;
use outbox_relay_tests::{Proxy, RunningRelay, Scratch, dead_letters, enqueue, eventually};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

const BROKER: &str = "127.0.0.1:1883";
const WAIT: Duration = Duration::from_secs(60);

/// A subscriber collecting every publish under a filter.
struct Subscriber {
    received: Arc<Mutex<Vec<Publish>>>,
    client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Subscribes at QoS 1 and returns once the broker acknowledged it.
    async fn start(filter: &str) -> Self {
        let id = format!("outbox-test-{}", uuid::Uuid::now_v7().simple());
        let mut options = MqttOptions::new(id, "127.0.0.1", 1883);
        options.set_keep_alive(Duration::from_secs(10));
        options.set_clean_start(true);
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let (ready, subscribed) = tokio::sync::oneshot::channel::<Result<(), String>>();
        let mut ready = Some(ready);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(Ok(()));
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => sink.lock().unwrap().push(p),
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(Err(e.to_string()));
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        match tokio::time::timeout(Duration::from_secs(10), subscribed).await {
            Ok(Ok(Ok(()))) => {}
            other => {
                panic!("cannot subscribe at the MQTT broker {BROKER} ({other:?}); start mosquitto")
            }
        }
        Self {
            received,
            client,
            task,
        }
    }

    fn received(&self) -> Vec<Publish> {
        self.received.lock().unwrap().clone()
    }

    async fn stop(self) {
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.task.abort();
    }
}

fn property(p: &Publish, name: &str) -> Option<String> {
    p.properties
        .as_ref()?
        .user_properties
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

fn prefix() -> String {
    format!("outbox-test/{}", uuid::Uuid::now_v7().simple())
}

#[tokio::test]
async fn delivers_and_reads_back_properties_and_binary_payload_byte_for_byte() {
    let prefix = prefix();
    let subscriber = Subscriber::start(&format!("{prefix}/#")).await;

    let scratch = Scratch::new();
    let config = scratch.load_config(&format!(
        r#"
[[routes]]
events = ["order.*"]
targets = ["devices"]

[targets.devices]
plugin = "mqtt"
batch_size = 50
config = {{ url = "mqtt://{BROKER}", topic = "{prefix}/{{event}}" }}
sandbox = {{ allow_tcp = ["{BROKER}"] }}
"#
    ));
    let storage = scratch.storage().await;
    let binary = NewMessage::new(
        "order.created",
        vec![0x00, 0xff, 0xfe, 0x30, 0x80, b'\r', b'\n'],
    )
    .with_key("order-42")
    .with_header("content-type", "application/octet-stream")
    .with_header(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    .with_header("tenant", "acme \"quoted\" ünïcode")
    .with_header("x-empty", "");
    let json = NewMessage::new("order.paid", br#"{"order":42}"#.to_vec()).with_header("x-one", "1");
    // More than Mosquitto's Receive Maximum (20) in one batch.
    let more: Vec<NewMessage> = (0..45)
        .map(|i| {
            NewMessage::new("order.created", format!("{{\"n\":{i}}}").into_bytes())
                .with_header("x-n", i.to_string())
        })
        .collect();
    storage.save(&[binary.clone(), json.clone()]).await.unwrap();
    storage.save(&more).await.unwrap();

    let relay = RunningRelay::start(&config).await;
    eventually("47 publishes", WAIT, || async {
        (subscriber.received().len() >= 47).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.stop().await;
    let received = subscriber.received();
    subscriber.stop().await;
    assert_eq!(received.len(), 47, "no duplicates");

    let by_id: HashMap<String, &Publish> = received
        .iter()
        .map(|p| (property(p, "outbox-message-id").expect("an id property"), p))
        .collect();
    assert_eq!(by_id.len(), 47, "one publish per message");
    for m in [&binary, &json].into_iter().chain(&more) {
        let p = by_id
            .get(&m.id.to_string())
            .unwrap_or_else(|| panic!("no publish for {}", m.id));
        assert_eq!(
            p.topic,
            format!("{prefix}/{}", m.event_name).into_bytes(),
            "topic of {}",
            m.id
        );
        assert_eq!(
            p.payload.as_ref(),
            m.payload.as_slice(),
            "payload of {}",
            m.id
        );
        assert_eq!(p.qos, QoS::AtLeastOnce);
        assert!(!p.retain);
        let props = p.properties.as_ref().expect("properties");
        let users = &props.user_properties;
        assert_eq!(users[0], ("outbox-message-id".into(), m.id.to_string()));
        assert_eq!(users[1], ("outbox-event".into(), m.event_name.clone()));
        let mut want: BTreeMap<String, String> = m.headers.clone();
        if let Some(key) = &m.partition_key {
            want.insert("outbox-partition-key".into(), key.clone());
        }
        let got: BTreeMap<String, String> = users[2..].iter().cloned().collect();
        assert_eq!(got, want, "user properties of {}", m.id);
        assert_eq!(users.len(), want.len() + 2, "no repeated property");
        assert_eq!(
            props.content_type,
            m.headers.get("content-type").cloned(),
            "content type of {}",
            m.id
        );
    }
}

#[tokio::test]
async fn a_cut_off_mid_run_loses_nothing_and_the_relay_recovers_on_its_own() {
    let prefix = prefix();
    let subscriber = Subscriber::start(&format!("{prefix}/#")).await;
    let proxy = Proxy::start(BROKER).await;
    let addr = proxy.addr();

    let scratch = Scratch::new();
    let config = scratch.load_config(&format!(
        r#"
[[routes]]
events = ["*"]
targets = ["devices"]

[targets.devices]
plugin = "mqtt"
batch_size = 20
retry = {{ initial_backoff = "100ms", max_backoff = "500ms", max_attempts = 100 }}
config = {{ url = "{addr}", topic = "{prefix}/cut", ack_timeout_ms = 1000 }}
sandbox = {{ allow_tcp = ["{addr}"] }}
"#
    ));
    let storage = scratch.storage().await;
    let total = 400;
    // Half before the relay starts, half while the broker is cut off, so the
    // outage falls mid-run however fast this machine is.
    let mut sent = enqueue(&storage, "thing.happened", total / 2).await;
    let relay = RunningRelay::start(&config).await;

    eventually("the first publishes", WAIT, || async {
        (subscriber.received().len() >= 40).then_some(())
    })
    .await;
    proxy.set_down(true);
    let during = subscriber.received().len();
    sent.extend(enqueue(&storage, "thing.happened", total / 2).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set_down(false);
    eprintln!("cut off after {during} of {total} publishes");

    let wanted: HashSet<String> = sent.iter().map(|m| m.id.to_string()).collect();
    let received = eventually("every message after the cut-off", WAIT, || async {
        let received = subscriber.received();
        let ids: HashSet<String> = received
            .iter()
            .filter_map(|p| property(p, "outbox-message-id"))
            .collect();
        wanted.is_subset(&ids).then_some(received)
    })
    .await;
    relay.stop().await;
    subscriber.stop().await;
    let duplicates = received.len() - total;
    eprintln!(
        "{} publishes for {total} messages: {duplicates} duplicates",
        received.len()
    );
    assert!(
        during < total,
        "the cut-off came too late to test anything ({during} publishes already)"
    );
    assert!(
        duplicates <= 40,
        "duplicates are bounded by the batches in flight: {duplicates}"
    );
    assert!(dead_letters(&storage, "devices").await.is_empty());
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
targets = ["devices"]

[targets.devices]
plugin = "mqtt"
retry = {{ max_attempts = 1 }}
config = {{ url = "mqtt://{BROKER}", topic = "{}/refused" }}
sandbox = {{ allow_tcp = ["127.0.0.1:1884"] }}
"#,
        prefix()
    ));
    let err = outbox_relay::app::check_target(&config, "devices")
        .await
        .expect_err("the plugin must not start")
        .to_string();
    assert!(
        err.contains(&format!(
            "the sandbox does not allow connecting to {BROKER}"
        )),
        "{err}"
    );

    let storage = scratch.storage().await;
    enqueue(&storage, "thing.happened", 3).await;
    let relay = RunningRelay::start(&config).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = storage.status(&["devices".to_string()]).await.unwrap();
    relay.stop().await;
    assert_eq!(status[0].dead_letters, 0, "nothing is dead-lettered");
    assert_eq!(status[0].retries_pending, 0, "no attempt was charged");
    assert_eq!(
        status[0].lag, 3,
        "the messages wait for a config that works"
    );
}
