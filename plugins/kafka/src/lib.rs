//! `kafka`: produces to Apache Kafka (or any broker speaking its protocol)
//! with the idempotent producer, `acks = all` and the Java client's murmur2
//! partitioning.
//!
//! ```toml
//! [targets.events]
//! plugin = "kafka"
//! sandbox = { allow_tcp = ["kafka-1:9092", "kafka-2:9092"] }
//! [targets.events.config]
//! bootstrap = ["kafka-1:9092"]        # required; the brokers' advertised addresses go in allow_tcp
//! topic = "{event}"                   # optional template; default "{event}"
//! key = "{key}"                       # optional template; default: the partition key
//! # partition = 0                     # optional fixed partition
//! acks = "all"                        # "all" (default) or 1
//! idempotent = true                   # default true (needs acks = "all")
//! security_protocol = "SASL_PLAINTEXT"  # or "PLAINTEXT" (default)
//! sasl_mechanism = "SCRAM-SHA-512"    # "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"
//! sasl_username = "relay"
//! sasl_password = { env = "KAFKA_PASSWORD" }
//! ```
//!
//! Modules: `wire` (one connection: framing, versions, SASL login), `sasl`
//! (the mechanisms, no I/O), `cluster` (metadata, leaders, a connection per
//! broker), `placement` (each message's partition), `produce` (rounds of
//! `Produce` requests and what each answer means for its records),
//! `session` (the idempotent producer's id and sequence numbers, the record
//! batches), `errors` (what each error code means), `murmur2` (the
//! partitioner). What a
//! consumer sees is described in `docs/transports/kafka.md`.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::protocol::StrBytes;
use outbox_relay_guest::{Config, Envelope, Error, Outcome, Result, Template, Transport};
use serde_json::Value;

mod cluster;
mod errors;
mod murmur2;
mod placement;
mod produce;
mod sasl;
mod session;
mod wire;

use cluster::Cluster;
use placement::Placement;
use produce::{Message, Producer, Settings};
use sasl::{Credentials, Mechanism};
use wire::Dial;

const KEYS: &[&str] = &[
    "bootstrap",
    "topic",
    "key",
    "partition",
    "acks",
    "idempotent",
    "client_id",
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
    "request_timeout_ms",
    "delivery_timeout_ms",
    "connect_timeout_ms",
    "max_batch_bytes",
    "allow_auto_create_topics",
    "metadata_max_age_ms",
    "max_connections",
];

/// Headers the transport sets itself; an envelope header of the same name is
/// replaced.
const OWN_HEADERS: &[&str] = &["outbox-message-id", "outbox-event"];

struct Kafka {
    topic: Template,
    key: Option<Template>,
    partition: Option<u32>,
    cluster: Cluster,
    producer: Producer,
}

impl Transport for Kafka {
    fn init(target: &str, config: &Config) -> Result<Self> {
        config.only_keys(KEYS)?;
        let bootstrap = bootstrap(config)?;
        let template = |key: &str| -> Result<Option<Template>> {
            config
                .get_opt_str(key)?
                .map(|t| {
                    Template::parse(t).map_err(|e| Error::new(format!("config: key `{key}`: {e}")))
                })
                .transpose()
        };
        let topic = template("topic")?.unwrap_or(Template::parse("{event}")?);
        let key = template("key")?;
        let partition = config
            .get_opt_u64("partition")?
            .map(|p| {
                u32::try_from(p)
                    .ok()
                    .filter(|&p| p <= i32::MAX as u32)
                    .ok_or_else(|| Error::new("config: key `partition` is too large"))
            })
            .transpose()?;
        let acks = match config.get("acks") {
            None => -1,
            Some(Value::String(s)) if s == "all" || s == "-1" => -1,
            Some(Value::String(s)) if s == "1" => 1,
            Some(Value::Number(n)) if n.as_i64() == Some(-1) => -1,
            Some(Value::Number(n)) if n.as_i64() == Some(1) => 1,
            Some(other) => {
                return Err(Error::new(format!(
                    "config: key `acks` must be \"all\" or 1, not {other}"
                )));
            }
        };
        let idempotent = match (config.get("idempotent"), acks) {
            (None, -1) => true,
            (None, _) => false,
            (Some(_), _) => config.get_bool_or("idempotent", true)?,
        };
        if idempotent && acks != -1 {
            return Err(Error::new(
                "config: key `idempotent`: the idempotent producer needs `acks = \"all\"`",
            ));
        }
        let (tls, sasl) = security(config)?;
        let request_timeout = config.get_millis_or("request_timeout_ms", 10_000, 1..=600_000)?;
        let delivery_timeout =
            config.get_millis_or("delivery_timeout_ms", 15_000, 1..=3_600_000)?;
        let connect_timeout = config.get_millis_or("connect_timeout_ms", 5_000, 1..=600_000)?;
        let max_batch_bytes = config.get_opt_u64("max_batch_bytes")?.unwrap_or(1_000_000);
        if !(1024..=100 << 20).contains(&max_batch_bytes) {
            return Err(Error::new(
                "config: key `max_batch_bytes` must lie in 1024..=104857600",
            ));
        }
        let client_id = config
            .get_opt_str("client_id")?
            .map_or_else(|| format!("outbox-relay-{target}"), str::to_owned);
        let dial = Dial {
            client_id,
            connect_timeout,
            // The socket waits a little longer than the broker is told to.
            request_timeout: request_timeout + Duration::from_secs(2),
            tls,
            sasl,
        };
        let allow_auto_create = config.get_bool_or("allow_auto_create_topics", true)?;
        let max_age = config.get_millis_or("metadata_max_age_ms", 60_000, 100..=3_600_000)?;
        let max_connections = config.get_opt_u64("max_connections")?.unwrap_or(16);
        if !(1..=1024).contains(&max_connections) {
            return Err(Error::new(
                "config: key `max_connections` must lie in 1..=1024",
            ));
        }
        let mut cluster = Cluster::new(
            bootstrap.clone(),
            dial,
            allow_auto_create,
            max_age,
            max_connections as usize,
        );
        let mut producer = Producer::new(Settings {
            acks,
            idempotent,
            request_timeout,
            delivery_timeout,
            max_batch_bytes: max_batch_bytes as usize,
            retry_backoff: Duration::from_millis(100),
        });
        // Connecting now makes a wrong address, login or sandbox permission a
        // start-up error rather than a retry on every batch.
        // Every broker is probed too: one the sandbox does not allow is a
        // start-up error, not a retry charged to every batch. All of it
        // within one batch's time.
        let at = bootstrap.join(", ");
        cluster.set_deadline(Some(std::time::Instant::now() + delivery_timeout));
        cluster
            .discover()
            .and_then(|()| cluster.probe_all())
            .map_err(|e| Error::new(format!("Kafka at {at}: {e}")))?;
        producer
            .start_session(&mut cluster)
            .map_err(|e| Error::new(format!("Kafka at {at}: {e}")))?;
        cluster.set_deadline(None);
        Ok(Kafka {
            topic,
            key,
            partition,
            cluster,
            producer,
        })
    }

    fn deliver(&mut self, batch: Vec<Envelope>) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        let mut messages = Vec::with_capacity(batch.len());
        for (index, envelope) in batch.iter().enumerate() {
            match self.message(index, envelope) {
                Ok(message) => messages.push(message),
                Err(reason) => outcomes[index] = Some(Outcome::reject(reason)),
            }
        }
        if !messages.is_empty() {
            for (index, outcome) in self.producer.send(&mut self.cluster, messages) {
                outcomes[index] = Some(outcome);
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::retry("no outcome (transport bug)")))
            .collect()
    }
}

impl Kafka {
    /// The record of one envelope: see `docs/transports/kafka.md`.
    fn message(&self, index: usize, e: &Envelope) -> core::result::Result<Message, String> {
        let topic = self
            .topic
            .render(e)
            .map_err(|err| format!("topic: {err}"))?;
        if topic.is_empty() || topic.len() > 249 {
            return Err(format!(
                "topic {topic:?}: a Kafka topic name has 1 to 249 characters"
            ));
        }
        let key = match &self.key {
            Some(template) => Some(template.render(e).map_err(|err| format!("key: {err}"))?),
            None => e.partition_key.clone(),
        };
        let placement = match (self.partition, &key) {
            (Some(p), _) => Placement::Fixed(p),
            (None, Some(_)) => Placement::Keyed,
            (None, None) => Placement::Sticky,
        };
        Ok(Message {
            index,
            topic,
            key: key.map(Bytes::from),
            value: Bytes::copy_from_slice(&e.payload),
            headers: headers(e),
            timestamp_ms: e.created_at_ms,
            placement,
        })
    }
}

/// The record headers: the envelope's, then `outbox-message-id` and
/// `outbox-event`.
fn headers(e: &Envelope) -> Vec<(StrBytes, Bytes)> {
    let text = |s: &str| Bytes::copy_from_slice(s.as_bytes());
    let mut headers: Vec<(StrBytes, Bytes)> = e
        .headers
        .iter()
        .filter(|(name, _)| !OWN_HEADERS.iter().any(|own| own.eq_ignore_ascii_case(name)))
        .map(|(name, value)| (StrBytes::from_string(name.clone()), text(value)))
        .collect();
    headers.push((StrBytes::from_static_str("outbox-message-id"), text(&e.id)));
    headers.push((
        StrBytes::from_static_str("outbox-event"),
        text(&e.event_name),
    ));
    headers
}

/// `bootstrap`: a list of `host:port`, or one string of them separated by
/// commas.
fn bootstrap(config: &Config) -> Result<Vec<String>> {
    let bad = || Error::new("config: key `bootstrap` must be a list of \"host:port\" strings");
    let listed: Vec<String> = match config.get("bootstrap") {
        None => {
            return Err(Error::new(
                "config: missing key `bootstrap` (a list of \"host:port\")",
            ));
        }
        Some(Value::String(s)) => s.split(',').map(|a| a.trim().to_owned()).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(bad))
            .collect::<Result<_>>()?,
        Some(_) => return Err(bad()),
    };
    if listed.is_empty() {
        return Err(Error::new("config: key `bootstrap` is empty"));
    }
    for addr in &listed {
        let port_ok = addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !port_ok {
            return Err(Error::new(format!(
                "config: key `bootstrap`: {addr:?} is not \"host:port\""
            )));
        }
    }
    Ok(listed)
}

/// `security_protocol`: whether connections use TLS (through the host),
/// and the SASL login, if any.
fn security(config: &Config) -> Result<(bool, Option<Credentials>)> {
    let protocol = config
        .get_opt_str("security_protocol")?
        .unwrap_or("PLAINTEXT");
    let (tls, sasl) = match protocol {
        "PLAINTEXT" => (false, false),
        "SASL_PLAINTEXT" => (false, true),
        "SSL" => (true, false),
        "SASL_SSL" => (true, true),
        other => {
            return Err(Error::new(format!(
                "config: key `security_protocol` must be \"PLAINTEXT\", \"SASL_PLAINTEXT\", \"SSL\" or \"SASL_SSL\", not {other:?}"
            )));
        }
    };
    Ok((tls, credentials(config, sasl)?))
}

fn credentials(config: &Config, sasl: bool) -> Result<Option<Credentials>> {
    let given = ["sasl_mechanism", "sasl_username", "sasl_password"]
        .into_iter()
        .find(|k| config.get(k).is_some());
    if !sasl {
        if let Some(key) = given {
            return Err(Error::new(format!(
                "config: key `{key}` needs `security_protocol = \"SASL_PLAINTEXT\"` (or \"SASL_SSL\")"
            )));
        }
        return Ok(None);
    }
    let mechanism = Mechanism::parse(config.get_opt_str("sasl_mechanism")?.unwrap_or("PLAIN"))
        .map_err(|e| Error::new(format!("config: key `sasl_mechanism`: {e}")))?;
    let text = |key: &str| -> Result<String> {
        let value = config.get_str(key)?;
        // PLAIN separates its fields with NUL: one inside would forge them.
        if value.contains('\0') {
            return Err(Error::new(format!(
                "config: key `{key}` contains a NUL character"
            )));
        }
        Ok(value.to_owned())
    };
    Ok(Some(Credentials {
        mechanism,
        username: text("sasl_username")?,
        password: text("sasl_password")?,
    }))
}

outbox_relay_guest::export_transport!(Kafka);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn init_error(json: &str) -> String {
        Kafka::init("t", &Config::parse(json).unwrap())
            .err()
            .unwrap()
            .to_string()
    }

    #[test]
    fn config_errors_name_the_key() {
        assert!(init_error("{}").contains("`bootstrap`"));
        assert!(init_error(r#"{"bootstrap": "nohost"}"#).contains("`bootstrap`"));
        assert!(init_error(r#"{"bootstrap": [1]}"#).contains("`bootstrap`"));
        let b = r#""bootstrap": ["127.0.0.1:1"]"#;
        assert!(init_error(&format!(r#"{{{b}, "acks": 0}}"#)).contains("`acks`"));
        assert!(
            init_error(&format!(r#"{{{b}, "acks": 1, "idempotent": true}}"#))
                .contains("`idempotent`")
        );
        assert!(init_error(&format!(r#"{{{b}, "topic": "{{nope}}"}}"#)).contains("`topic`"));
        assert!(init_error(&format!(r#"{{{b}, "security_protocol": "TLS"}}"#)).contains("\"SSL\""));
        assert!(
            init_error(&format!(r#"{{{b}, "sasl_username": "u"}}"#)).contains("SASL_PLAINTEXT")
        );
        assert!(
            init_error(&format!(r#"{{{b}, "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "X", "sasl_username": "u", "sasl_password": "p"}}"#))
                .contains("`sasl_mechanism`")
        );
        assert!(init_error(&format!(r#"{{{b}, "topik": "x"}}"#)).contains("unknown key `topik`"));
        let sasl = r#""security_protocol": "SASL_PLAINTEXT", "sasl_username": "u""#;
        assert!(
            init_error(&format!(r#"{{{b}, {sasl}, "sasl_password": "a\u0000b"}}"#))
                .contains("`sasl_password` contains a NUL")
        );
        assert!(
            init_error(&format!(r#"{{{b}, "metadata_max_age_ms": 5}}"#))
                .contains("`metadata_max_age_ms`")
        );
        // Nothing listens on port 1: the error names the address.
        assert!(init_error(&format!(r#"{{{b}}}"#)).contains("127.0.0.1:1"));
    }

    #[test]
    fn records_carry_the_key_payload_and_headers() {
        let config = Config::parse(r#"{"bootstrap": ["127.0.0.1:1"]}"#).unwrap();
        assert!(bootstrap(&config).is_ok());
        let e = Envelope::new("0190-id", "order.created", [0xff, 0])
            .with_key("order-1")
            .with_headers(&[("traceparent", "00-abc"), ("outbox-event", "forged")]);
        let h = headers(&e);
        let names: Vec<&str> = h.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["traceparent", "outbox-message-id", "outbox-event"]);
        assert_eq!(&h[2].1[..], b"order.created");
    }
}
