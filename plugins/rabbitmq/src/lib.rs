//! `rabbitmq`: publishes to a RabbitMQ exchange over AMQP 0-9-1, with
//! publisher confirms and persistent delivery.
//!
//! ```toml
//! [targets.bus]
//! plugin = "rabbitmq"
//! sandbox = { allow_tcp = ["127.0.0.1:5672"] }
//! [targets.bus.config]
//! url = "amqp://guest:guest@127.0.0.1:5672/%2f"  # required; vhost percent-encoded
//! exchange = "events"              # required; "" is the default exchange
//! routing_key = "orders.{event}"   # optional template; default "{event}"
//! mandatory = true                 # optional; an unroutable message is dead-lettered
//! confirm_timeout_ms = 5000        # optional
//! connect_timeout_ms = 5000        # optional
//! ```
//!
//! A batch is published in one write (every message's `basic.publish`, content
//! header and body frames), then the confirms are read: `basic.ack` means
//! delivered, `basic.nack` retry, a `basic.return` (an unroutable message with
//! `mandatory`) reject. A lost connection, a closed channel or a confirm time-out
//! retries the messages still unconfirmed; the next batch reconnects. What a
//! consumer sees is described in `docs/transports/rabbitmq.md`.

use std::time::{Duration, Instant};

use outbox_relay_guest::net::{self, Broken, Kept};
use outbox_relay_guest::{Config, Envelope, Error, Outcome, Result, Template, Transport};

mod codec;
mod conn;

use codec::{Properties, Value};
use conn::{Connection, Settings};

const KEYS: &[&str] = &[
    "url",
    "exchange",
    "routing_key",
    "mandatory",
    "confirm_timeout_ms",
    "connect_timeout_ms",
    "username",
    "password",
];

/// Headers the transport sets itself; an envelope header of the same name is
/// replaced.
const OWN_HEADERS: &[&str] = &["outbox-message-id", "outbox-event", "outbox-partition-key"];

struct RabbitMq {
    settings: Settings,
    routing_key: Template,
    route: Route,
    /// Dropped after any failure; the next batch connects again.
    conn: Kept<Connection>,
}

/// Where and how each message is published.
struct Route {
    exchange: String,
    mandatory: bool,
    confirm_timeout: Duration,
}

impl Transport for RabbitMq {
    fn init(target: &str, config: &Config) -> Result<Self> {
        config.only_keys(KEYS)?;
        let url = config.get_str("url")?;
        let exchange = config.get_str("exchange")?.to_owned();
        if exchange.len() > 255 {
            return Err(Error::new(
                "config: key `exchange` is longer than 255 bytes",
            ));
        }
        let routing_key = Template::parse(config.get_opt_str("routing_key")?.unwrap_or("{event}"))
            .map_err(|e| Error::new(format!("config: key `routing_key`: {e}")))?;
        let mandatory = config.get_bool_or("mandatory", true)?;
        let confirm_timeout = config.get_millis_or("confirm_timeout_ms", 5000, 1..=u64::MAX)?;
        let connect_timeout = config.get_millis_or("connect_timeout_ms", 5000, 1..=u64::MAX)?;
        let parsed = parse_url(url).map_err(|e| Error::new(format!("config: key `url`: {e}")))?;
        // Keys of their own, which the host can fill from a secret
        // (`{ env = ... }`), win over the URL's user info.
        let user = match config.get_opt_str("username")? {
            Some(user) => user.to_owned(),
            None => parsed.user,
        };
        let password = match config.get_opt_str("password")? {
            Some(password) => password.to_owned(),
            None => parsed.password,
        };
        let settings = Settings {
            addr: parsed.addr,
            tls: parsed.tls,
            user,
            password,
            vhost: parsed.vhost,
            connection_name: format!("outbox-relay target {target}"),
            connect_timeout,
            write_timeout: confirm_timeout,
        };
        // Connecting now makes a wrong address, login, vhost or exchange a
        // start-up error rather than a retry on every batch.
        let mut conn = Kept::new(format!("RabbitMQ at {}", settings.addr));
        conn.put(open(&settings, &exchange)?);
        Ok(RabbitMq {
            settings,
            routing_key,
            route: Route {
                exchange,
                mandatory,
                confirm_timeout,
            },
            conn,
        })
    }

    fn deliver(&mut self, batch: Vec<Envelope>) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        let mut todo = Vec::with_capacity(batch.len());
        for (i, envelope) in batch.iter().enumerate() {
            match self.routing_key.render(envelope) {
                Ok(key) => todo.push((i, key)),
                Err(e) => outcomes[i] = Some(Outcome::reject(format!("routing_key: {e}"))),
            }
        }
        // A connection kept from an earlier batch may have died while idle
        // (broker restart, network cut). When it fails before the broker has
        // said anything, `Kept` connects again and publishes once more at once.
        let (settings, route) = (&self.settings, &self.route);
        let published = self.conn.exchange(
            || open(settings, &route.exchange),
            |conn| route.publish(conn, &settings.addr, &batch, &todo, &mut outcomes),
        );
        match published {
            Ok(Usable::Yes) => {}
            Ok(Usable::No) => self.conn.close(),
            Err(e) => {
                let reason = e.into_message();
                for (i, _) in &todo {
                    outcomes[*i].get_or_insert_with(|| Outcome::retry(reason.clone()));
                }
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::retry("no outcome (transport bug)")))
            .collect()
    }
}

/// Whether a connection can carry the next batch after this one.
enum Usable {
    Yes,
    No,
}

fn open(settings: &Settings, exchange: &str) -> Result<Connection> {
    Connection::open(settings, exchange)
        .map_err(|e| Error::new(format!("RabbitMQ at {}: {e}", settings.addr)))
}

impl Route {
    /// Publishes `todo` (index in `batch`, routing key) on `conn` and fills in
    /// their outcomes. `Err` when the connection failed before the broker
    /// answered anything: no outcome of `todo` is set then, except rejects of
    /// messages that cannot be encoded.
    fn publish(
        &self,
        conn: &mut Connection,
        addr: &str,
        batch: &[Envelope],
        todo: &[(usize, String)],
        outcomes: &mut [Option<Outcome>],
    ) -> core::result::Result<Usable, Broken> {
        let mut frames = Vec::new();
        let mut sent = Vec::with_capacity(todo.len());
        for (i, key) in todo {
            let envelope = &batch[*i];
            let encoded = conn.encode_publish(
                &mut frames,
                &self.exchange,
                key,
                self.mandatory,
                &properties(envelope),
                &envelope.payload,
            );
            match encoded {
                Ok(()) => sent.push(*i),
                Err(e) => {
                    outcomes[*i] = Some(Outcome::reject(format!("cannot encode for AMQP: {e}")))
                }
            }
        }
        if sent.is_empty() {
            return Ok(Usable::Yes);
        }

        let first_tag = conn
            .publish(&frames, sent.len())
            .map_err(|e| Broken::new(format!("publishing failed: {e}"), e.is_closed(), false))?;
        let ids: Vec<&str> = sent.iter().map(|&i| batch[i].id.as_str()).collect();
        let confirms = conn.await_confirms(first_tag, &ids, Instant::now() + self.confirm_timeout);
        if let Some(e) = &confirms.error
            && confirms.frames == 0
            && e.is_io()
        {
            return Err(Broken::new(e, e.is_closed(), false));
        }
        let unconfirmed = match &confirms.error {
            None => String::new(),
            Some(conn::ConnError::Timeout) => format!(
                "RabbitMQ at {addr}: no publisher confirm within {} ms",
                self.confirm_timeout.as_millis()
            ),
            Some(e) => format!("RabbitMQ at {addr}: {e} before confirming the message"),
        };
        for (k, &i) in sent.iter().enumerate() {
            outcomes[i] = Some(match (&confirms.returned[k], confirms.acked[k]) {
                (Some(reason), _) => Outcome::reject(reason.clone()),
                (None, Some(true)) => Outcome::Delivered,
                (None, Some(false)) => Outcome::retry(format!(
                    "RabbitMQ at {addr}: the broker nacked the message (basic.nack)"
                )),
                (None, None) => Outcome::retry(unconfirmed.clone()),
            });
        }
        Ok(match confirms.error {
            Some(_) => Usable::No,
            None => Usable::Yes,
        })
    }
}

/// The AMQP properties of one envelope: see `docs/transports/rabbitmq.md`.
fn properties(e: &Envelope) -> Properties {
    let text = |s: &str| Value::LongStr(s.as_bytes().to_vec());
    let mut headers: Vec<(String, Value)> = e
        .headers
        .iter()
        .filter(|(name, _)| !OWN_HEADERS.iter().any(|own| own.eq_ignore_ascii_case(name)))
        .map(|(name, value)| (name.clone(), text(value)))
        .collect();
    headers.push(("outbox-message-id".into(), text(&e.id)));
    headers.push(("outbox-event".into(), text(&e.event_name)));
    if let Some(key) = &e.partition_key {
        headers.push(("outbox-partition-key".into(), text(key)));
    }
    Properties {
        content_type: e.header("content-type").map(str::to_owned),
        content_encoding: e.header("content-encoding").map(str::to_owned),
        headers: Some(headers),
        delivery_mode: Some(2),
        message_id: Some(e.id.clone()),
        timestamp: Some(u64::try_from(e.created_at_ms.max(0) / 1000).unwrap_or(0)),
        kind: Some(e.event_name.clone()),
    }
}

/// What an AMQP URL says.
#[derive(Debug, PartialEq, Eq)]
struct AmqpUrl {
    /// `host:port`.
    addr: String,
    /// `amqps://`: TLS through the host.
    tls: bool,
    user: String,
    password: String,
    vhost: String,
}

/// `amqp://user:password@host:port/vhost`, or `amqps://` for TLS. User and
/// password default to `guest`, the port to 5672 (5671 for `amqps`), and an
/// empty path to the vhost `/` (write others percent-encoded: `%2f` is `/`).
fn parse_url(url: &str) -> core::result::Result<AmqpUrl, String> {
    let (rest, tls, default_port) = if let Some(rest) = url.strip_prefix("amqp://") {
        (rest, false, 5672)
    } else if let Some(rest) = url.strip_prefix("amqps://") {
        (rest, true, 5671)
    } else {
        return Err(
            "must start with `amqp://` or `amqps://` (amqp://user:password@host:port/vhost)".into(),
        );
    };
    if rest.contains(['?', '#']) {
        return Err("query parameters are not supported; use the target's config keys".into());
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (user, password) = match authority.rsplit_once('@') {
        Some((info, _)) => {
            let (user, password) = info.split_once(':').unwrap_or((info, ""));
            (percent_decode(user)?, percent_decode(password)?)
        }
        None => ("guest".into(), "guest".into()),
    };
    let addr = net::host_port(url, default_port).map_err(|e| e.to_string())?;
    let vhost = match path {
        "" => "/".to_owned(),
        p if p.contains('/') => {
            return Err(format!(
                "the vhost {p:?} contains `/`: percent-encode it (`%2f`)"
            ));
        }
        p => percent_decode(p)?,
    };
    Ok(AmqpUrl {
        addr,
        tls,
        user,
        password,
        vhost,
    })
}

fn percent_decode(s: &str) -> core::result::Result<String, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b != b'%' {
            out.push(b);
            continue;
        }
        let hex = [bytes.next(), bytes.next()];
        let digit = |d: Option<u8>| d.and_then(|d| char::from(d).to_digit(16));
        match (digit(hex[0]), digit(hex[1])) {
            (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
            _ => return Err(format!("bad percent-encoding in {s:?}")),
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} does not decode to UTF-8"))
}

outbox_relay_guest::export_transport!(RabbitMq);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parsed(url: &str) -> (String, String, String, String) {
        let u = parse_url(url).unwrap();
        assert!(!u.tls, "{url}");
        (u.addr, u.user, u.password, u.vhost)
    }

    #[test]
    fn urls_give_address_login_and_vhost() {
        let s = |a: &str, b: &str, c: &str, d: &str| (a.into(), b.into(), c.into(), d.into());
        assert_eq!(
            parsed("amqp://127.0.0.1"),
            s("127.0.0.1:5672", "guest", "guest", "/")
        );
        assert_eq!(
            parsed("amqp://u:p%40ss@mq:5673/"),
            s("mq:5673", "u", "p@ss", "/")
        );
        assert_eq!(parsed("amqp://u:p@mq/%2f"), s("mq:5672", "u", "p", "/"));
        assert_eq!(
            parsed("amqp://mq:1/prod%2Feu"),
            s("mq:1", "guest", "guest", "prod/eu")
        );
        let tls = parse_url("amqps://u:p@mq/prod").unwrap();
        assert_eq!((tls.addr.as_str(), tls.tls), ("mq:5671", true));
        assert_eq!(parse_url("amqps://mq:5000").unwrap().addr, "mq:5000");
        assert!(parse_url("mq:5672").unwrap_err().contains("amqp://"));
        assert!(parse_url("amqp://mq/a/b").unwrap_err().contains("%2f"));
        assert!(parse_url("amqp://mq/?heartbeat=5").is_err());
        assert!(parse_url("amqp://mq/%zz").is_err());
    }

    #[test]
    fn properties_carry_id_event_time_and_every_header() {
        let e = Envelope {
            created_at_ms: 1_700_000_000_999,
            ..Envelope::new("0190-id", "order.created", [0xff])
                .with_key("order-1")
                .with_headers(&[
                    ("content-type", "application/json"),
                    ("traceparent", "00-abc"),
                    ("outbox-event", "forged"),
                ])
        };
        let p = properties(&e);
        assert_eq!(p.message_id.as_deref(), Some("0190-id"));
        assert_eq!(p.kind.as_deref(), Some("order.created"));
        assert_eq!(p.timestamp, Some(1_700_000_000));
        assert_eq!(p.delivery_mode, Some(2));
        assert_eq!(p.content_type.as_deref(), Some("application/json"));
        assert_eq!(p.content_encoding, None);
        let text = |s: &str| Value::LongStr(s.as_bytes().to_vec());
        assert_eq!(
            p.headers.unwrap(),
            vec![
                ("content-type".to_string(), text("application/json")),
                ("traceparent".to_string(), text("00-abc")),
                ("outbox-message-id".to_string(), text("0190-id")),
                ("outbox-event".to_string(), text("order.created")),
                ("outbox-partition-key".to_string(), text("order-1")),
            ]
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        let init = |json: &str| {
            RabbitMq::init("t", &Config::parse(json).unwrap())
                .err()
                .unwrap()
                .to_string()
        };
        assert!(init(r#"{"exchange": ""}"#).contains("`url`"));
        assert!(init(r#"{"url": "amqp://x"}"#).contains("`exchange`"));
        assert!(
            init(r#"{"url": "amqp://x", "exchange": "", "routing_key": "{nope}"}"#)
                .contains("`routing_key`")
        );
        assert!(
            init(r#"{"url": "amqp://x", "exchange": "", "confirm_timeout_ms": 0}"#)
                .contains("`confirm_timeout_ms`")
        );
        assert!(init(r#"{"url": "amqpx://x", "exchange": ""}"#).contains("`url`"));
        assert!(
            init(r#"{"url": "amqp://x", "exchange": "", "exchnage": 1}"#)
                .contains("unknown key `exchnage`")
        );
    }
}
