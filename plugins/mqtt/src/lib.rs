//! `mqtt`: publishes each envelope with MQTT 5 at QoS 1 and waits for the
//! broker's PUBACK.
//!
//! ```toml
//! [targets.devices]
//! plugin = "mqtt"
//! config = { url = "mqtt://127.0.0.1:1883", topic = "outbox/{event}" }
//! sandbox = { allow_tcp = ["127.0.0.1:1883"] }
//! ```
//!
//! Every PUBLISH carries the payload as is and these user properties:
//! `outbox-message-id`, `outbox-event`, `outbox-partition-key` (when the
//! message has a key), then every envelope header; a `content-type` header
//! also becomes the Content Type property. See `docs/transports/mqtt.md`.
//!
//! A batch is pipelined: PUBLISH packets go out with distinct packet ids, up
//! to the broker's Receive Maximum in flight, and PUBACKs are matched by id.
//! The connection (Clean Start, one client id per instance) is kept across
//! batches and dropped on any error; the next batch reconnects.

mod codec;

use std::collections::HashMap;
use std::io::{self, BufReader, Write as _};
use std::time::{Duration, Instant};

use codec::{Connect, Publish};
use outbox_relay_guest::net::{self, Broken, Endpoint, Kept, Scheme, Stream, Timeouts};
use outbox_relay_guest::{Config, Envelope, Error, Outcome, Result, Template, Transport, random};

const KEYS: &[&str] = &[
    "url",
    "topic",
    "client_id",
    "username",
    "password",
    "keep_alive_secs",
    "ack_timeout_ms",
    "retain",
];

/// User properties this transport sets itself; envelope headers of the same
/// name are not sent, so a consumer can trust them.
const OWN_PROPERTIES: [&str; 3] = ["outbox-message-id", "outbox-event", "outbox-partition-key"];

struct Mqtt {
    settings: Settings,
    topic: Template,
    last_packet_id: u16,
    conn: Kept<Conn>,
}

/// What a connection is made with.
struct Settings {
    addr: String,
    /// `mqtts://` or `ssl://`: TLS through the host.
    tls: bool,
    client_id: String,
    username: Option<String>,
    password: Option<String>,
    keep_alive_secs: u16,
    ack_timeout: Duration,
    retain: bool,
}

struct Conn {
    io: BufReader<Stream>,
    /// How many QoS 1 publishes the broker takes before acknowledging.
    receive_maximum: usize,
    maximum_packet_size: usize,
    /// The keep-alive in force; the broker may drop the connection after
    /// 1.5 times this without a packet from us.
    keep_alive: Option<Duration>,
    last_sent: Instant,
}

/// One envelope, ready to publish.
struct Ready<'a> {
    index: usize,
    topic: String,
    content_type: Option<&'a str>,
    user_properties: Vec<(&'a str, &'a str)>,
    payload: &'a [u8],
}

impl Transport for Mqtt {
    fn init(target: &str, config: &Config) -> Result<Self> {
        config.only_keys(KEYS)?;
        let endpoint = parse_url(config.get_str("url")?)?;
        let topic = Template::parse(config.get_str("topic")?)
            .map_err(|e| Error::new(format!("config: key `topic`: {e}")))?;
        let prefix = match config.get_opt_str("client_id")? {
            Some(id) => id.to_owned(),
            None => format!("outbox-relay-{target}"),
        };
        // One instance per target and worker, each with its own connection:
        // a shared client id would make the broker close one for the other.
        let client_id = format!("{prefix}-{}", random::hex(12));
        codec::check_str("config: key `client_id`", &client_id).map_err(Error::new)?;
        let username = config.get_opt_str("username")?.map(str::to_owned);
        let password = config.get_opt_str("password")?.map(str::to_owned);
        for (key, value) in [("username", &username), ("password", &password)] {
            if let Some(v) = value {
                codec::check_str(&format!("config: key `{key}`"), v).map_err(Error::new)?;
            }
        }
        let keep_alive_secs = match config.get_opt_u64("keep_alive_secs")? {
            None => 60,
            Some(s) => u16::try_from(s)
                .map_err(|_| Error::new("config: key `keep_alive_secs` must be at most 65535"))?,
        };
        let ack_timeout = match config.get_opt_u64("ack_timeout_ms")? {
            None => Duration::from_secs(5),
            Some(0) => {
                return Err(Error::new(
                    "config: key `ack_timeout_ms` must be at least 1",
                ));
            }
            Some(ms) => Duration::from_millis(ms),
        };
        let settings = Settings {
            addr: endpoint.addr,
            tls: endpoint.tls,
            client_id,
            username,
            password,
            keep_alive_secs,
            ack_timeout,
            retain: config.get_bool_or("retain", false)?,
        };
        let mut conn = Kept::new(format!("mqtt at {}", settings.addr));
        // A wrong address, credentials or an MQTT 3 broker show at start-up.
        conn.put(settings.connect()?);
        Ok(Mqtt {
            settings,
            topic,
            last_packet_id: 0,
            conn,
        })
    }

    fn deliver(&mut self, batch: Vec<Envelope>) -> Vec<Outcome> {
        let mut outcomes = vec![Outcome::Delivered; batch.len()];
        let mut ready = Vec::with_capacity(batch.len());
        for (index, envelope) in batch.iter().enumerate() {
            match self.prepare(index, envelope) {
                Ok(r) => ready.push(r),
                Err(reason) => outcomes[index] = Outcome::reject(reason),
            }
        }
        if ready.is_empty() {
            return outcomes;
        }
        for (r, outcome) in ready.iter().zip(self.publish_all(&ready)) {
            outcomes[r.index] = outcome;
        }
        outcomes
    }
}

impl Mqtt {
    /// The topic and properties of one envelope; an error is a reject reason.
    fn prepare<'a>(
        &self,
        index: usize,
        envelope: &'a Envelope,
    ) -> core::result::Result<Ready<'a>, String> {
        let topic = self
            .topic
            .render(envelope)
            .map_err(|e| format!("config: key `topic`: {e}"))?;
        if topic.is_empty() || topic.contains(['+', '#']) {
            return Err(format!(
                "topic {topic:?} is not a valid topic name (empty, or with a wildcard `+`/`#`)"
            ));
        }
        codec::check_str(&format!("topic {topic:?}"), &topic)?;
        let mut user_properties = vec![
            ("outbox-message-id", envelope.id.as_str()),
            ("outbox-event", envelope.event_name.as_str()),
        ];
        if let Some(key) = &envelope.partition_key {
            user_properties.push(("outbox-partition-key", key.as_str()));
        }
        for (name, value) in &envelope.headers {
            if !OWN_PROPERTIES.contains(&name.as_str()) {
                user_properties.push((name.as_str(), value.as_str()));
            }
        }
        for (name, value) in &user_properties {
            codec::check_str(&format!("header {name:?}"), name)?;
            codec::check_str(&format!("header {name:?}"), value)?;
        }
        Ok(Ready {
            index,
            topic,
            content_type: envelope.header("content-type"),
            user_properties,
            payload: &envelope.payload,
        })
    }

    /// One outcome per entry of `ready`. A kept connection that turns out to
    /// be closed before any PUBACK is replaced once at once ([`Kept`]); one
    /// idle past the keep-alive is replaced before the batch.
    fn publish_all(&mut self, ready: &[Ready]) -> Vec<Outcome> {
        let mut results: Vec<Option<Outcome>> = vec![None; ready.len()];
        self.conn.close_if(|conn| conn.idle_too_long());
        let settings = &self.settings;
        let last_packet_id = &mut self.last_packet_id;
        let sent = self.conn.exchange(
            || settings.connect(),
            |conn| {
                exchange(conn, last_packet_id, settings.retain, ready, &mut results)
                    .map_err(|e| Broken::io(e, results.iter().any(Option::is_some)))
            },
        );
        let failure = sent.err().map(Error::into_message).unwrap_or_default();
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Outcome::retry(failure.clone())))
            .collect()
    }
}

impl Settings {
    /// Connects, sends CONNECT and checks the CONNACK.
    fn connect(&self) -> Result<Conn> {
        let at = |what: String| Error::new(format!("mqtt at {}: {what}", self.addr));
        let io_err = |e: io::Error| at(e.to_string());
        let stream = Stream::connect(&self.addr, self.tls, Timeouts::all(self.ack_timeout))?;
        let mut io = BufReader::new(stream);
        let connect = codec::encode_connect(&Connect {
            client_id: &self.client_id,
            keep_alive_secs: self.keep_alive_secs,
            username: self.username.as_deref(),
            password: self.password.as_deref().map(str::as_bytes),
        });
        io.get_mut().write_all(&connect).map_err(io_err)?;
        let (kind, _, body) = codec::read_packet(&mut io).map_err(io_err)?;
        if kind != codec::CONNACK {
            return Err(at(format!("expected CONNACK, got packet type {kind}")));
        }
        let ack = codec::decode_connack(&body).map_err(io_err)?;
        if ack.reason == 0x01 && body.len() == 2 {
            return Err(at(
                "the broker does not speak MQTT 5 (it answered as MQTT 3.1.1)".into(),
            ));
        }
        if ack.reason != 0 {
            return Err(at(format!(
                "the broker refused the connection: {}{}",
                codec::describe(ack.reason, ack.reason_string.as_deref()),
                match ack.reason {
                    0x86 | 0x87 => " (check keys `username` and `password`)",
                    0x85 => " (check key `client_id`)",
                    _ => "",
                }
            )));
        }
        if ack.maximum_qos == Some(0) {
            return Err(at("the broker does not accept QoS 1 publishes".into()));
        }
        if self.retain && ack.retain_available == Some(false) {
            return Err(at(
                "the broker does not support retained messages (config key `retain`)".into(),
            ));
        }
        let keep_alive = ack.server_keep_alive.unwrap_or(self.keep_alive_secs);
        Ok(Conn {
            io,
            receive_maximum: usize::from(ack.receive_maximum.unwrap_or(u16::MAX).max(1)),
            maximum_packet_size: ack
                .maximum_packet_size
                .map_or(codec::MAX_REMAINING, |n| n as usize),
            keep_alive: (keep_alive > 0).then(|| Duration::from_secs(keep_alive.into())),
            last_sent: Instant::now(),
        })
    }
}

impl Conn {
    /// Whether the broker may have dropped this connection for silence: past
    /// the keep-alive, reconnect rather than ping (a ping costs a round trip
    /// too, and a fresh connection is certain).
    fn idle_too_long(&self) -> bool {
        self.keep_alive
            .is_some_and(|k| self.last_sent.elapsed() >= k)
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let stream = self.io.get_mut();
        stream.write_all(bytes)?;
        stream.flush()?;
        self.last_sent = Instant::now();
        Ok(())
    }
}

/// Publishes `ready`, at most the broker's Receive Maximum in flight, and
/// fills `results` as PUBACKs arrive. An `Err` leaves the unacknowledged
/// entries `None`; the connection is then unusable.
fn exchange(
    conn: &mut Conn,
    last_packet_id: &mut u16,
    retain: bool,
    ready: &[Ready],
    results: &mut [Option<Outcome>],
) -> io::Result<()> {
    let mut in_flight: HashMap<u16, usize> = HashMap::new();
    let mut next = 0;
    let mut buf = Vec::new();
    loop {
        while next < ready.len() && in_flight.len() < conn.receive_maximum {
            let r = &ready[next];
            *last_packet_id = last_packet_id.checked_add(1).unwrap_or(1);
            let start = buf.len();
            let size = codec::encode_publish(
                &mut buf,
                &Publish {
                    topic: &r.topic,
                    packet_id: *last_packet_id,
                    retain,
                    content_type: r.content_type,
                    user_properties: &r.user_properties,
                    payload: r.payload,
                },
            );
            if size > conn.maximum_packet_size {
                buf.truncate(start);
                results[next] = Some(Outcome::reject(format!(
                    "the message is a {size}-byte MQTT packet; the broker accepts at most {}",
                    conn.maximum_packet_size
                )));
            } else {
                in_flight.insert(*last_packet_id, next);
            }
            next += 1;
        }
        if !buf.is_empty() {
            conn.send(&buf)?;
            buf.clear();
        }
        if in_flight.is_empty() {
            return Ok(());
        }
        let (kind, _, body) = codec::read_packet(&mut conn.io)?;
        match kind {
            codec::PUBACK => {
                let ack = codec::decode_puback(&body)?;
                let i = ack
                    .packet_id
                    .and_then(|id| in_flight.remove(&id))
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "PUBACK for packet id {:?}, which is not in flight",
                                ack.packet_id
                            ),
                        )
                    })?;
                results[i] = Some(puback_outcome(ack.reason, ack.reason_string.as_deref()));
            }
            codec::DISCONNECT => {
                let d = codec::decode_disconnect(&body)?;
                return Err(io::Error::other(format!(
                    "the broker disconnected: {}",
                    codec::describe(d.reason, d.reason_string.as_deref())
                )));
            }
            codec::PINGRESP => {}
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unexpected packet type {other} from the broker"),
                ));
            }
        }
    }
}

/// What a PUBACK reason code means for the message.
fn puback_outcome(code: u8, reason_string: Option<&str>) -> Outcome {
    let why = || format!("mqtt PUBACK: {}", codec::describe(code, reason_string));
    match code {
        // Success, and "no matching subscribers": the broker has the message.
        0x00 | 0x10 => Outcome::Delivered,
        // The broker will never take this message on this topic.
        0x90 | 0x95 | 0x99 => Outcome::reject(why()),
        // Anything else (0x80 unspecified, 0x83 implementation specific,
        // 0x87 not authorized, 0x91 packet id in use, 0x97 quota exceeded,
        // codes not known yet) may pass later or after an operator's fix.
        _ => Outcome::retry(why()),
    }
}

/// `mqtt://host[:port]`, `tcp://host[:port]` or `host[:port]` (port 1883),
/// `mqtts://` or `ssl://` for TLS (port 8883). WebSockets are not
/// supported; credentials go in keys `username` and `password`.
fn parse_url(url: &str) -> Result<Endpoint> {
    let schemes = [
        Scheme::plain("mqtt", 1883),
        Scheme::plain("tcp", 1883),
        Scheme::tls("mqtts", 8883),
        Scheme::tls("ssl", 8883),
    ];
    net::endpoint_of(url, &schemes).map_err(|e| e.context("config: key `url`"))
}

outbox_relay_guest::export_transport!(Mqtt);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        Config::parse(json).unwrap()
    }

    fn transport() -> Mqtt {
        Mqtt {
            settings: Settings {
                addr: "127.0.0.1:1".into(),
                tls: false,
                client_id: "c".into(),
                username: None,
                password: None,
                keep_alive_secs: 0,
                ack_timeout: Duration::from_millis(200),
                retain: false,
            },
            topic: Template::parse("t/{event}").unwrap(),
            last_packet_id: 0,
            conn: Kept::new("mqtt at 127.0.0.1:1"),
        }
    }

    fn envelope() -> Envelope {
        Envelope::new("0190-id", "order.created", [0xff, 0x00])
            .with_key("k1")
            .with_headers(&[
                ("content-type", "application/json"),
                ("outbox-event", "forged"),
                ("traceparent", "00-x"),
            ])
    }

    #[test]
    fn own_properties_come_first_and_cannot_be_forged() {
        let t = transport();
        let e = envelope();
        let r = t.prepare(3, &e).unwrap();
        assert_eq!(r.index, 3);
        assert_eq!(r.topic, "t/order.created");
        assert_eq!(r.content_type, Some("application/json"));
        assert_eq!(
            r.user_properties,
            [
                ("outbox-message-id", "0190-id"),
                ("outbox-event", "order.created"),
                ("outbox-partition-key", "k1"),
                ("content-type", "application/json"),
                ("traceparent", "00-x"),
            ]
        );
    }

    #[test]
    fn bad_topics_and_headers_are_rejected_with_the_reason() {
        let mut t = transport();
        let mut e = envelope();
        e.event_name = "a+b".into();
        assert!(t.prepare(0, &e).err().unwrap().contains("wildcard"));
        t.topic = Template::parse("{header.region}").unwrap();
        assert!(t.prepare(0, &envelope()).err().unwrap().contains("region"));
        t.topic = Template::parse("x").unwrap();
        let mut e = envelope();
        e.headers.push(("bad".into(), "a\0b".into()));
        assert!(t.prepare(0, &e).err().unwrap().contains("NUL"));
    }

    #[test]
    fn puback_codes_map_to_outcomes() {
        assert_eq!(puback_outcome(0x00, None), Outcome::Delivered);
        assert_eq!(puback_outcome(0x10, None), Outcome::Delivered);
        for code in [0x90, 0x95, 0x99] {
            assert!(
                matches!(puback_outcome(code, None), Outcome::Reject(_)),
                "{code:#x}"
            );
        }
        for code in [0x80, 0x83, 0x87, 0x91, 0x97, 0xA0] {
            assert!(
                matches!(puback_outcome(code, None), Outcome::Retry { .. }),
                "{code:#x}"
            );
        }
        let Outcome::Retry { reason, .. } = puback_outcome(0x87, Some("acl")) else {
            panic!()
        };
        assert_eq!(reason, "mqtt PUBACK: not authorized (0x87): acl");
    }

    #[test]
    fn config_errors_name_the_key() {
        let err = |json: &str| Mqtt::init("t", &config(json)).err().unwrap().to_string();
        assert!(err(r#"{"topic": "t"}"#).contains("`url`"));
        assert!(err(r#"{"url": "h"}"#).contains("`topic`"));
        assert!(err(r#"{"url": "h", "topic": "{x}"}"#).contains("`topic`"));
        assert!(err(r#"{"url": "mqtt://u:p@h", "topic": "t"}"#).contains("credentials"));
        assert!(
            err(r#"{"url": "h", "topic": "t", "keep_alive_secs": 70000}"#)
                .contains("`keep_alive_secs`")
        );
        assert!(
            err(r#"{"url": "h", "topic": "t", "ack_timeout_ms": 0}"#).contains("`ack_timeout_ms`")
        );
        assert!(err(r#"{"url": "h", "topic": "t", "retain": "yes"}"#).contains("`retain`"));
        assert!(err(r#"{"url": "h", "topic": "t", "qos": 2}"#).contains("`qos`"));
    }

    #[test]
    fn urls_and_client_ids() {
        let addr = |url| parse_url(url).unwrap().addr;
        assert_eq!(addr("mqtt://127.0.0.1:1884"), "127.0.0.1:1884");
        assert_eq!(addr("broker"), "broker:1883");
        assert_eq!(addr("tcp://broker:1"), "broker:1");
        let tls = parse_url("mqtts://broker").unwrap();
        assert_eq!((tls.addr.as_str(), tls.tls), ("broker:8883", true));
        assert!(parse_url("ssl://broker:1").unwrap().tls);
        assert!(
            parse_url("ws://broker")
                .unwrap_err()
                .message()
                .contains("`ws`")
        );
    }

    #[test]
    fn an_unreachable_broker_retries_and_a_bad_topic_rejects() {
        let mut t = transport();
        let mut wild = envelope();
        wild.event_name = "#".into();
        let out = t.deliver(vec![wild, envelope()]);
        assert!(matches!(&out[0], Outcome::Reject(_)), "{out:?}");
        assert!(
            matches!(&out[1], Outcome::Retry { reason, .. } if reason.contains("127.0.0.1:1")),
            "{out:?}"
        );
    }
}
