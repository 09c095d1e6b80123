//! Real transports: `webhook` to a local keep-alive HTTP receiver, and `nats`
//! to JetStream with one ack per message.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::drain::secs;
use crate::setup::{BenchDb, DbKind, Probe, Running, Sink, relay_lines, seed_log, thousands};

/// The Standard Webhooks specification's example secret.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// An HTTP/1.1 receiver on localhost that answers every POST with 204 and
/// counts requests and connections.
#[derive(Clone, Default)]
pub struct Receiver {
    pub requests: Arc<AtomicU64>,
    pub connections: Arc<AtomicU64>,
    pub addr: String,
}

async fn accept(State(r): State<Receiver>, _body: axum::body::Bytes) -> StatusCode {
    r.requests.fetch_add(1, Ordering::Relaxed);
    StatusCode::NO_CONTENT
}

impl Receiver {
    pub async fn start() -> anyhow::Result<Self> {
        use axum::serve::ListenerExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let receiver = Receiver {
            addr: listener.local_addr()?.to_string(),
            ..Receiver::default()
        };
        let connections = receiver.connections.clone();
        let listener = listener.tap_io(move |_| {
            connections.fetch_add(1, Ordering::Relaxed);
        });
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(accept))
            .with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(receiver)
    }

    /// A `[keys]` entry and a `webhook` target `name` posting here, signed.
    pub fn target_toml(&self, db: &BenchDb, name: &str) -> anyhow::Result<String> {
        let secret = db.path().join("hook.secret");
        std::fs::write(&secret, format!("{SECRET}\n"))?;
        Ok(format!(
            r#"
[keys.{name}-key]
algorithm = "HS256"
file = "{secret}"

[[routes]]
events = ["bench.*"]
targets = ["{name}"]

[targets.{name}]
plugin = "webhook"
keys = ["{name}-key"]
config = {{ url = "http://{addr}/hook", secret_key = "{name}-key" }}
sandbox = {{ allow_http = ["{addr}"] }}
"#,
            secret = secret.display(),
            addr = self.addr,
        ))
    }
}

/// A transport drain: figures, or why it was not measured.
pub enum TransportRun {
    Measured {
        transport: &'static str,
        messages: u64,
        elapsed: Duration,
        rate: f64,
        check: String,
    },
    NotMeasured {
        transport: &'static str,
        reason: String,
    },
}

impl TransportRun {
    pub fn json(&self) -> Value {
        match self {
            TransportRun::Measured {
                transport,
                messages,
                elapsed,
                rate,
                check,
            } => json!({
                "transport": transport,
                "database": "Postgres",
                "messages": messages,
                "elapsed_s": secs(*elapsed),
                "messages_per_s": rate.round(),
                "check": check,
            }),
            TransportRun::NotMeasured { transport, reason } => json!({
                "transport": transport,
                "not_measured": reason,
            }),
        }
    }
}

/// Drains `n` messages through the target `name` configured by `body`.
pub(crate) async fn drain_through(
    db: &BenchDb,
    name: &str,
    body: &str,
    n: u64,
    size: usize,
    batch_size: Option<u32>,
) -> anyhow::Result<(Duration, f64)> {
    let (_, config) = db.config(name, &relay_lines(batch_size), body)?;
    eprintln!("  seeding {} messages ...", thousands(n as f64));
    seed_log(db, &config, n, size).await?;
    let probe = Probe::new(false);
    let relay = Running::start(&config, Sink::Configured, probe.clone()).await?;
    let started = relay.started;
    let last = probe.wait_for(n, Duration::from_secs(1200)).await;
    relay.stop().await?;
    let elapsed = last?.duration_since(started);
    let rate = crate::setup::rate(n, elapsed);
    eprintln!(
        "  {name}: {} messages in {:.2} s: {} msg/s",
        thousands(n as f64),
        elapsed.as_secs_f64(),
        thousands(rate)
    );
    Ok((elapsed, rate))
}

pub async fn webhook(n: u64, size: usize, batch_size: Option<u32>) -> anyhow::Result<TransportRun> {
    let db = BenchDb::new(DbKind::Postgres).await?;
    let receiver = Receiver::start().await?;
    let body = receiver.target_toml(&db, "hook")?;
    let (elapsed, rate) = drain_through(&db, "hook", &body, n, size, batch_size).await?;
    let got = receiver.requests.load(Ordering::Relaxed);
    if got < n {
        bail!("the receiver got {got} requests for {n} messages");
    }
    Ok(TransportRun::Measured {
        transport: "webhook",
        messages: n,
        elapsed,
        rate,
        check: format!(
            "the receiver answered {got} POSTs (204) over {} TCP connections",
            receiver.connections.load(Ordering::Relaxed)
        ),
    })
}

pub async fn nats(
    n: u64,
    size: usize,
    batch_size: Option<u32>,
    server: &str,
) -> anyhow::Result<TransportRun> {
    let not_measured = |reason: String| {
        Ok(TransportRun::NotMeasured {
            transport: "nats",
            reason,
        })
    };
    let component = outbox_relay_tests::components_dir().join("nats.wasm");
    if !component.is_file() {
        return not_measured(format!(
            "the nats component was not built ({} is missing)",
            component.display()
        ));
    }
    let mut client = match Nats::connect(server).await {
        Ok(c) => c,
        Err(e) => return not_measured(format!("NATS is not reachable at {server}: {e:#}")),
    };
    let (stream, prefix) = match client.create_stream().await? {
        Ok(created) => created,
        Err(refused) => return not_measured(refused),
    };
    let db = BenchDb::new(DbKind::Postgres).await?;
    let body = format!(
        r#"
[[routes]]
events = ["bench.*"]
targets = ["bus"]

[targets.bus]
plugin = "nats"
config = {{ url = "nats://{server}", subject = "{prefix}.{{event}}" }}
sandbox = {{ allow_tcp = ["{server}"] }}
"#
    );
    let result = drain_through(&db, "bus", &body, n, size, batch_size).await;
    let info = client
        .request(&format!("$JS.API.STREAM.INFO.{stream}"), &json!({}))
        .await;
    let _ = client
        .request(&format!("$JS.API.STREAM.DELETE.{stream}"), &json!({}))
        .await;
    let (elapsed, rate) = match result {
        Ok(r) => r,
        Err(e) => return not_measured(format!("the nats target failed: {e:#}")),
    };
    let stored = info?["state"]["messages"].as_u64().unwrap_or(0);
    Ok(TransportRun::Measured {
        transport: "nats",
        messages: n,
        elapsed,
        rate,
        check: format!("the JetStream stream holds {stored} messages (file storage)"),
    })
}

/// What the NATS client runs over: plain TCP or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Just enough of the NATS protocol to manage a JetStream stream through its
/// JSON API (request/reply); the transport under test is the component.
pub struct Nats {
    reader: BufReader<tokio::io::ReadHalf<Box<dyn Io>>>,
    writer: tokio::io::WriteHalf<Box<dyn Io>>,
    sid: u64,
}

impl Nats {
    pub async fn connect(server: &str) -> anyhow::Result<Self> {
        Self::connect_with(server, None).await
    }

    /// Over TLS (started after the server's INFO, as NATS does), checking
    /// the server as `name` with `config`.
    pub async fn connect_with(
        server: &str,
        tls: Option<(&str, outbox_relay_tests::tls::rustls::ClientConfig)>,
    ) -> anyhow::Result<Self> {
        let mut stream = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(server))
            .await
            .context("connecting timed out")??;
        // The INFO line, a byte at a time: nothing after it may be lost.
        let mut info = Vec::new();
        while !info.ends_with(b"\n") {
            let mut byte = [0u8; 1];
            if stream.read(&mut byte).await? == 0 || info.len() > 65_536 {
                bail!("NATS sent no INFO line");
            }
            info.push(byte[0]);
        }
        if !info.starts_with(b"INFO ") {
            bail!("expected INFO, got {:?}", String::from_utf8_lossy(&info));
        }
        let io: Box<dyn Io> = match tls {
            None => Box::new(stream),
            Some((name, config)) => {
                let name = outbox_relay_tests::tls::rustls::pki_types::ServerName::try_from(
                    name.to_owned(),
                )?;
                Box::new(
                    tokio_rustls::TlsConnector::from(Arc::new(config))
                        .connect(name, stream)
                        .await?,
                )
            }
        };
        let (read, writer) = tokio::io::split(io);
        let mut nats = Self {
            reader: BufReader::new(read),
            writer,
            sid: 0,
        };
        nats.writer
            .write_all(
                b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":false}\r\nPING\r\n",
            )
            .await?;
        loop {
            let line = nats.line().await?;
            if line == "PONG" {
                break;
            }
            if line.starts_with("-ERR") {
                bail!("{line}");
            }
        }
        Ok(nats)
    }

    /// A JetStream stream for one run (file storage, a two-minute
    /// duplicate window) over `<prefix>.>`: `Ok((stream, prefix))`, or why
    /// JetStream refused it.
    pub async fn create_stream(&mut self) -> anyhow::Result<Result<(String, String), String>> {
        let unique = uuid::Uuid::now_v7().simple().to_string();
        let stream = format!("OUTBOX_BENCH_{unique}");
        let prefix = format!("outbox_bench.{unique}");
        let created = self
            .request(
                &format!("$JS.API.STREAM.CREATE.{stream}"),
                &json!({
                    "name": stream,
                    "subjects": [format!("{prefix}.>")],
                    "storage": "file",
                    "duplicate_window": 120_000_000_000u64,
                }),
            )
            .await?;
        Ok(match created.get("error") {
            None => Ok((stream, prefix)),
            Some(_) => Err(format!("JetStream refused the stream: {created}")),
        })
    }

    async fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), self.reader.read_line(&mut line))
            .await
            .context("NATS did not answer within 10 s")??;
        if n == 0 {
            bail!("NATS closed the connection");
        }
        Ok(line.trim_end().to_string())
    }

    pub async fn request(&mut self, subject: &str, body: &Value) -> anyhow::Result<Value> {
        self.sid += 1;
        let inbox = format!("_INBOX.outbox_bench.{}", uuid::Uuid::now_v7().simple());
        let payload = body.to_string();
        let sid = self.sid;
        let frame = format!(
            "SUB {inbox} {sid}\r\nPUB {subject} {inbox} {}\r\n{payload}\r\n",
            payload.len()
        );
        self.writer.write_all(frame.as_bytes()).await?;
        loop {
            let line = self.line().await?;
            if line == "PING" {
                self.writer.write_all(b"PONG\r\n").await?;
            } else if line.starts_with("-ERR") {
                bail!("{line}");
            } else if let Some(rest) = line.strip_prefix("MSG ") {
                let len: usize = rest
                    .split_whitespace()
                    .last()
                    .and_then(|l| l.parse().ok())
                    .context("bad MSG line")?;
                let mut buf = vec![0; len + 2];
                self.reader.read_exact(&mut buf).await?;
                buf.truncate(len);
                self.writer
                    .write_all(format!("UNSUB {sid}\r\n").as_bytes())
                    .await?;
                return Ok(serde_json::from_slice(&buf)?);
            }
        }
    }
}

/// The `kafka` component and, in the same run, the same number of messages
/// of the same size sent to the same broker by librdkafka (confluent-kafka,
/// `acks=all`, idempotent, `linger.ms=5`: tests/kafka/client.py
/// `produce-bench`), the peer.
pub struct KafkaRun {
    pub run: TransportRun,
    /// The peer's messages/s, when it ran.
    pub peer: Option<f64>,
    pub peer_note: String,
    /// The relay's own ceiling in the same run: the same drain to the
    /// `null` component.
    pub null_rate: f64,
}

pub async fn kafka(n: u64, size: usize, batch_size: Option<u32>) -> anyhow::Result<KafkaRun> {
    use outbox_relay_tests::kafka::Broker;
    let broker = Broker::start();
    let addr = broker.listen.clone();
    broker.create_topic("bench", 4);
    broker.create_topic("peer", 4);
    let db = BenchDb::new(DbKind::Postgres).await?;
    let body = format!(
        r#"
[[routes]]
events = ["bench.*"]
targets = ["events"]

[targets.events]
plugin = "kafka"
config = {{ bootstrap = ["{addr}"], topic = "bench", acks = "all" }}
sandbox = {{ allow_tcp = ["{addr}"] }}
"#
    );
    let (elapsed, rate) = drain_through(&db, "events", &body, n, size, batch_size).await?;
    let null_db = BenchDb::new(DbKind::Postgres).await?;
    let null_body = r#"
[[routes]]
events = ["bench.*"]
targets = ["ceiling"]

[targets.ceiling]
plugin = "null"
"#;
    let (_, null_rate) = drain_through(&null_db, "ceiling", null_body, n, size, batch_size).await?;
    let stored = tokio::task::block_in_place(|| {
        broker
            .read("bench", n as usize, Duration::from_secs(120))
            .len()
    });
    if (stored as u64) < n {
        bail!("the broker holds {stored} records for {n} messages");
    }
    eprintln!(
        "  kafka peer: librdkafka, {} messages of {size} bytes ...",
        thousands(n as f64)
    );
    let peer = tokio::task::block_in_place(|| broker.produce_bench("peer", n, size));
    let (peer, peer_note) = match peer {
        Ok((rate, note)) => (Some(rate), note),
        Err(e) => (None, format!("the peer did not run: {e:#}")),
    };
    Ok(KafkaRun {
        run: TransportRun::Measured {
            transport: "kafka",
            messages: n,
            elapsed,
            rate,
            check: format!("the broker holds {stored} records (read back with librdkafka)"),
        },
        peer,
        peer_note,
        null_rate,
    })
}
