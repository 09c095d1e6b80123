//! `redis_streams`: appends each envelope to a Redis stream with `XADD`, a
//! whole batch per round trip.
//!
//! ```toml
//! [targets.events]
//! plugin = "redis_streams"
//! config = { url = "redis://127.0.0.1:6379", stream = "outbox:{event}" }
//! sandbox = { allow_tcp = ["127.0.0.1:6379"] }
//! ```
//!
//! Each envelope becomes one entry (see `docs/transports/redis-streams.md`):
//!
//! ```text
//! XADD <stream> [MAXLEN ~ <maxlen>] * id <id> event <event> [key <key>]
//!      headers <JSON object of strings> payload <bytes>
//! ```
//!
//! The batch's commands are written at once and the replies read afterwards
//! (pipelining); replies come back in order, so reply `k` is envelope `k`'s.
//! The connection is kept across batches and dropped on any I/O or protocol
//! error; the next batch reconnects.

mod resp;

use std::io::{self, BufReader, Write as _};
use std::time::Duration;

use outbox_relay_guest::net::{self, Broken, Endpoint, Kept, Scheme, Stream, Timeouts};
use outbox_relay_guest::{Config, Envelope, Error, Outcome, Result, Template, Transport};
use resp::Reply;

const KEYS: &[&str] = &[
    "url",
    "stream",
    "maxlen",
    "username",
    "password",
    "db",
    "timeout_ms",
];

struct RedisStreams {
    settings: Settings,
    stream: Template,
    maxlen: Option<String>,
    conn: Kept<Conn>,
}

/// What a connection is made with.
struct Settings {
    addr: String,
    /// `rediss://`: TLS through the host.
    tls: bool,
    username: Option<String>,
    password: Option<String>,
    db: Option<u64>,
    timeout: Duration,
}

struct Conn {
    io: BufReader<Stream>,
}

impl Transport for RedisStreams {
    fn init(_target: &str, config: &Config) -> Result<Self> {
        config.only_keys(KEYS)?;
        let endpoint = parse_url(config.get_str("url")?)?;
        let stream = Template::parse(config.get_str("stream")?)
            .map_err(|e| Error::new(format!("config: key `stream`: {e}")))?;
        let maxlen = match config.get_opt_u64("maxlen")? {
            Some(0) => return Err(Error::new("config: key `maxlen` must be at least 1")),
            other => other.map(|n| n.to_string()),
        };
        let username = config.get_opt_str("username")?.map(str::to_owned);
        let password = config.get_opt_str("password")?.map(str::to_owned);
        if username.is_some() && password.is_none() {
            return Err(Error::new(
                "config: key `username` needs key `password` as well",
            ));
        }
        let timeout = match config.get_opt_u64("timeout_ms")? {
            None => Duration::from_secs(5),
            Some(0) => return Err(Error::new("config: key `timeout_ms` must be at least 1")),
            Some(ms) => Duration::from_millis(ms),
        };
        let settings = Settings {
            addr: endpoint.addr,
            tls: endpoint.tls,
            username,
            password,
            db: config.get_opt_u64("db")?,
            timeout,
        };
        let mut conn = Kept::new(format!("redis at {}", settings.addr));
        // A wrong address, password or database shows at start-up.
        conn.put(settings.connect()?);
        Ok(RedisStreams {
            settings,
            stream,
            maxlen,
            conn,
        })
    }

    fn deliver(&mut self, batch: Vec<Envelope>) -> Vec<Outcome> {
        let mut outcomes = vec![Outcome::Delivered; batch.len()];
        let mut commands = Vec::new();
        let mut sent = Vec::with_capacity(batch.len());
        for (i, envelope) in batch.iter().enumerate() {
            match self.stream.render(envelope) {
                Ok(stream) => {
                    self.encode_xadd(&mut commands, &stream, envelope);
                    sent.push(i);
                }
                Err(e) => outcomes[i] = Outcome::reject(format!("config: key `stream`: {e}")),
            }
        }
        if sent.is_empty() {
            return outcomes;
        }
        let (replies, failure) = self.exchange(&commands, sent.len());
        let mut reconnect = false;
        for (k, &i) in sent.iter().enumerate() {
            outcomes[i] = match replies.get(k) {
                Some(Reply::Bulk(Some(_))) => Outcome::Delivered,
                Some(Reply::Error(err)) => match classify(err) {
                    Verdict::Reject => Outcome::reject(format!("redis: {err}")),
                    Verdict::Retry { reconnect: again } => {
                        reconnect |= again;
                        Outcome::retry(format!("redis: {err}"))
                    }
                },
                Some(other) => {
                    reconnect = true;
                    Outcome::retry(format!("redis: unexpected reply to XADD: {other:?}"))
                }
                None => Outcome::retry(failure.clone().unwrap_or_default()),
            };
        }
        if reconnect {
            self.conn.close();
        }
        outcomes
    }
}

impl Settings {
    /// Opens a connection and runs `AUTH` and `SELECT` as configured, then `PING`.
    fn connect(&self) -> Result<Conn> {
        let stream = Stream::connect(&self.addr, self.tls, Timeouts::all(self.timeout))?;
        let io_err = |e: io::Error| Error::new(format!("redis at {}: {e}", self.addr));
        let mut conn = Conn {
            io: BufReader::new(stream),
        };
        let mut handshake = Vec::new();
        let mut what = Vec::new();
        if let Some(password) = &self.password {
            match &self.username {
                Some(user) => resp::encode(
                    &mut handshake,
                    &[b"AUTH", user.as_bytes(), password.as_bytes()],
                ),
                None => resp::encode(&mut handshake, &[b"AUTH", password.as_bytes()]),
            }
            what.push("AUTH (keys `username`/`password`)".to_string());
        }
        if let Some(db) = self.db {
            resp::encode(&mut handshake, &[b"SELECT", db.to_string().as_bytes()]);
            what.push(format!("SELECT {db} (key `db`)"));
        }
        // One round trip even without AUTH or SELECT: a server that is not
        // Redis, or a TLS server that refuses our certificate (TLS 1.3
        // says so only at the first read), shows at connect.
        resp::encode(&mut handshake, &[b"PING"]);
        what.push("PING".to_string());
        let mut replies = Vec::new();
        conn.round_trip(&handshake, what.len(), &mut replies)
            .map_err(io_err)?;
        for (reply, what) in replies.iter().zip(&what) {
            if let Reply::Error(err) = reply {
                return Err(Error::new(format!(
                    "redis at {}: {what} failed: {err}",
                    self.addr
                )));
            }
        }
        Ok(conn)
    }
}

impl RedisStreams {
    fn encode_xadd(&self, out: &mut Vec<u8>, stream: &str, envelope: &Envelope) {
        let mut headers: serde_json::Map<String, serde_json::Value> = envelope
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), v.clone().into()))
            .collect();
        headers.insert("outbox-message-id".into(), envelope.id.clone().into());
        let headers = serde_json::Value::Object(headers).to_string();

        let mut args: Vec<&[u8]> = vec![b"XADD", stream.as_bytes()];
        if let Some(maxlen) = &self.maxlen {
            args.extend([&b"MAXLEN"[..], b"~", maxlen.as_bytes()]);
        }
        args.extend([&b"*"[..], b"id", envelope.id.as_bytes()]);
        args.extend([&b"event"[..], envelope.event_name.as_bytes()]);
        if let Some(key) = &envelope.partition_key {
            args.extend([&b"key"[..], key.as_bytes()]);
        }
        args.extend([&b"headers"[..], headers.as_bytes()]);
        args.extend([&b"payload"[..], &envelope.payload]);
        resp::encode(out, &args);
    }

    /// Sends `commands` (`count` of them) and reads their replies, connecting
    /// first if needed. On failure the connection is dropped, and the replies
    /// read before it come back with the reason. A kept connection that turns
    /// out to be closed before any reply is replaced once at once ([`Kept`]),
    /// as servers and proxies close idle connections.
    fn exchange(&mut self, commands: &[u8], count: usize) -> (Vec<Reply>, Option<String>) {
        let mut replies = Vec::with_capacity(count);
        let settings = &self.settings;
        let sent = self.conn.exchange(
            || settings.connect(),
            |conn| {
                conn.round_trip(commands, count, &mut replies).map_err(|e| {
                    let reason = format!("{e} after {} of {count} replies", replies.len());
                    Broken::new(reason, net::is_closed(&e), !replies.is_empty())
                })
            },
        );
        (replies, sent.err().map(Error::into_message))
    }
}

impl Conn {
    /// Writes `commands` at once, then reads `count` replies into `replies`.
    fn round_trip(
        &mut self,
        commands: &[u8],
        count: usize,
        replies: &mut Vec<Reply>,
    ) -> io::Result<()> {
        let stream = self.io.get_mut();
        stream.write_all(commands)?;
        stream.flush()?;
        while replies.len() < count {
            replies.push(resp::read_reply(&mut self.io)?);
        }
        Ok(())
    }
}

/// `redis://host[:port]`, `rediss://host[:port]` (TLS) or `host[:port]`
/// (credentials go in keys `username` and `password`, the database in key
/// `db`).
fn parse_url(url: &str) -> Result<Endpoint> {
    let bad = |e: Error| e.context("config: key `url`");
    let schemes = [Scheme::plain("redis", 6379), Scheme::tls("rediss", 6379)];
    let endpoint = net::endpoint_of(url, &schemes).map_err(bad)?;
    if !endpoint.path.is_empty() {
        return Err(bad(Error::new("choose the database with key `db`")));
    }
    Ok(endpoint)
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Transient; `reconnect` when this connection should not be reused.
    Retry {
        reconnect: bool,
    },
    Reject,
}

/// What an error reply means for the message (see the docs page for why).
fn classify(err: &str) -> Verdict {
    let prefix = err.split(' ').next().unwrap_or("");
    match prefix {
        // The server is not ready, or is not the primary (any more).
        "READONLY" | "MASTERDOWN" | "NOAUTH" | "WRONGPASS" | "MOVED" | "ASK" => {
            Verdict::Retry { reconnect: true }
        }
        "LOADING" | "BUSY" | "TRYAGAIN" | "CLUSTERDOWN" | "NOREPLICAS" | "OOM" | "NOPERM" => {
            Verdict::Retry { reconnect: false }
        }
        // The key holds another type: this message's stream name is taken.
        "WRONGTYPE" => Verdict::Reject,
        // A generic error is about the command, and so about the message,
        // except for these two, which are about the server.
        "ERR" if err.contains("max number of clients") || err.contains("unknown command") => {
            Verdict::Retry { reconnect: true }
        }
        "ERR" => Verdict::Reject,
        // A prefix this transport does not know: let the retries run out.
        _ => Verdict::Retry { reconnect: false },
    }
}

outbox_relay_guest::export_transport!(RedisStreams);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        Config::parse(json).unwrap()
    }

    fn transport(maxlen: Option<&str>) -> RedisStreams {
        RedisStreams {
            settings: Settings {
                addr: "127.0.0.1:1".into(),
                tls: false,
                username: None,
                password: None,
                db: None,
                timeout: Duration::from_millis(200),
            },
            stream: Template::parse("s:{event}").unwrap(),
            maxlen: maxlen.map(str::to_owned),
            conn: Kept::new("redis at 127.0.0.1:1"),
        }
    }

    fn envelope(key: Option<&str>) -> Envelope {
        Envelope {
            id: "0190-id".into(),
            event_name: "order.created".into(),
            partition_key: key.map(str::to_owned),
            payload: vec![0xff, 0x00, b'\r', b'\n'],
            headers: vec![("traceparent".into(), "00-x".into())],
            attempt: 1,
            created_at_ms: 0,
        }
    }

    fn args(bytes: &[u8]) -> Vec<Vec<u8>> {
        match resp::read_reply(&mut &bytes[..]).unwrap() {
            Reply::Array(Some(items)) => items
                .into_iter()
                .map(|i| match i {
                    Reply::Bulk(Some(b)) => b,
                    other => panic!("{other:?}"),
                })
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn xadd_carries_every_field_and_the_payload_as_is() {
        let mut out = Vec::new();
        transport(Some("1000")).encode_xadd(&mut out, "s:order.created", &envelope(Some("k1")));
        let args = args(&out);
        let text: Vec<String> = args[..13]
            .iter()
            .map(|a| String::from_utf8(a.clone()).unwrap())
            .collect();
        assert_eq!(
            text,
            [
                "XADD",
                "s:order.created",
                "MAXLEN",
                "~",
                "1000",
                "*",
                "id",
                "0190-id",
                "event",
                "order.created",
                "key",
                "k1",
                "headers"
            ]
        );
        let headers: serde_json::Value = serde_json::from_slice(&args[13]).unwrap();
        assert_eq!(
            headers,
            serde_json::json!({"traceparent": "00-x", "outbox-message-id": "0190-id"})
        );
        assert_eq!(args[14], b"payload");
        assert_eq!(args[15], [0xff, 0x00, b'\r', b'\n']);
        assert_eq!(args.len(), 16);
    }

    #[test]
    fn without_key_or_maxlen_those_fields_are_left_out() {
        let mut out = Vec::new();
        transport(None).encode_xadd(&mut out, "s", &envelope(None));
        let args = args(&out);
        assert_eq!(args[2], b"*");
        assert!(!args.iter().any(|a| a == b"key" || a == b"MAXLEN"));
        assert_eq!(args.len(), 11);
    }

    #[test]
    fn error_replies_map_to_retry_or_reject() {
        let retry = |reconnect| Verdict::Retry { reconnect };
        let cases = [
            (
                "LOADING Redis is loading the dataset in memory",
                retry(false),
            ),
            ("BUSY Redis is busy running a script", retry(false)),
            (
                "TRYAGAIN Multiple keys request during rehashing",
                retry(false),
            ),
            (
                "OOM command not allowed when used memory > 'maxmemory'",
                retry(false),
            ),
            (
                "READONLY You can't write against a read only replica.",
                retry(true),
            ),
            ("MASTERDOWN Link with MASTER is down", retry(true)),
            ("NOAUTH Authentication required.", retry(true)),
            ("ERR max number of clients reached", retry(true)),
            ("SOMETHINGNEW from a later Redis", retry(false)),
            (
                "WRONGTYPE Operation against a key holding the wrong kind of value",
                Verdict::Reject,
            ),
            (
                "ERR string exceeds maximum allowed size (proto-max-bulk-len)",
                Verdict::Reject,
            ),
        ];
        for (err, verdict) in cases {
            assert_eq!(classify(err), verdict, "{err}");
        }
    }

    #[test]
    fn config_errors_name_the_key() {
        let err = |json: &str| {
            RedisStreams::init("t", &config(json))
                .err()
                .unwrap()
                .to_string()
        };
        assert!(err(r#"{"stream": "s"}"#).contains("`url`"));
        assert!(err(r#"{"url": "127.0.0.1:1"}"#).contains("`stream`"));
        assert!(err(r#"{"url": "127.0.0.1:1", "stream": "{nope}"}"#).contains("`stream`"));
        assert!(err(r#"{"url": "redis://u:p@h", "stream": "s"}"#).contains("credentials"));
        assert!(err(r#"{"url": "redis://h/2", "stream": "s"}"#).contains("`db`"));
        assert!(err(r#"{"url": "h", "stream": "s", "maxlen": 0}"#).contains("`maxlen`"));
        assert!(err(r#"{"url": "h", "stream": "s", "username": "u"}"#).contains("`password`"));
        assert!(err(r#"{"url": "h", "stream": "s", "strem": "s"}"#).contains("`strem`"));
    }

    #[test]
    fn urls_become_host_and_port() {
        let addr = |url| parse_url(url).unwrap().addr;
        assert_eq!(addr("redis://127.0.0.1:6380"), "127.0.0.1:6380");
        assert_eq!(addr("redis://cache/"), "cache:6379");
        assert_eq!(addr("cache:7000"), "cache:7000");
        let tls = parse_url("rediss://cache").unwrap();
        assert_eq!((tls.addr.as_str(), tls.tls), ("cache:6379", true));
        assert!(!parse_url("redis://cache").unwrap().tls);
    }

    #[test]
    fn an_unreachable_server_retries_the_batch_and_a_bad_template_rejects() {
        let mut t = transport(None);
        t.stream = Template::parse("{header.tenant}").unwrap();
        let mut with_tenant = envelope(None);
        with_tenant.headers.push(("tenant".into(), "acme".into()));
        let out = t.deliver(vec![envelope(None), with_tenant]);
        assert!(
            matches!(&out[0], Outcome::Reject(r) if r.contains("tenant")),
            "{out:?}"
        );
        assert!(
            matches!(&out[1], Outcome::Retry { reason, .. } if reason.contains("127.0.0.1:1")),
            "{out:?}"
        );
    }
}
