//! One AMQP 0-9-1 connection with one channel in confirm mode: the handshake,
//! pipelined publishing, and reading the broker's confirms and returns.

use std::fmt;
use std::io::{self, BufReader, Read as _, Write as _};
use std::time::{Duration, Instant};

use outbox_relay_guest::net::{self, Stream};

use crate::codec::*;

/// The only channel this transport opens.
pub const CHANNEL: u16 = 1;
/// The largest frame this client asks for (RabbitMQ's default too).
const MAX_FRAME: u32 = 128 * 1024;
/// Every peer accepts frames this large before `tune` (AMQP's frame-min-size).
const MIN_FRAME: u32 = 4096;

/// Where and as whom to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `host:port`.
    pub addr: String,
    /// TLS through the host (`amqps://`).
    pub tls: bool,
    pub user: String,
    pub password: String,
    pub vhost: String,
    /// Shown by the broker (management UI, `rabbitmqctl list_connections`).
    pub connection_name: String,
    pub connect_timeout: Duration,
    /// Time-out for each write.
    pub write_timeout: Duration,
}

/// Why a connection cannot be used any more.
#[derive(Debug)]
pub enum ConnError {
    /// No answer before the deadline.
    Timeout,
    /// The socket failed or the broker hung up.
    Io(io::Error),
    /// The broker sent `connection.close` or `channel.close`.
    Closed {
        channel: bool,
        code: u16,
        text: String,
    },
    /// The broker sent something this client does not understand.
    Protocol(String),
}

impl ConnError {
    /// Whether the socket itself failed (as a connection that died while idle does).
    pub fn is_io(&self) -> bool {
        matches!(self, ConnError::Io(_))
    }

    /// Whether the broker closed or reset the socket ([`net::is_closed`]).
    pub fn is_closed(&self) -> bool {
        matches!(self, ConnError::Io(e) if net::is_closed(e))
    }
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::Timeout => f.write_str("the broker did not answer in time"),
            ConnError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                f.write_str("the broker closed the connection")
            }
            ConnError::Io(e) => write!(f, "connection lost: {e}"),
            ConnError::Closed {
                channel,
                code,
                text,
            } => write!(
                f,
                "the broker closed the {}: {code} {text}",
                if *channel { "channel" } else { "connection" }
            ),
            ConnError::Protocol(msg) => write!(f, "protocol error: {msg}"),
        }
    }
}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ConnError::Timeout,
            _ => ConnError::Io(e),
        }
    }
}

impl From<CodecError> for ConnError {
    fn from(e: CodecError) -> Self {
        ConnError::Protocol(e.0)
    }
}

pub struct Frame {
    pub kind: u8,
    pub channel: u16,
    pub payload: Vec<u8>,
}

/// What the broker said about each message of a batch.
#[derive(Debug, Default)]
pub struct Confirms {
    /// Per message: `Some(true)` acked, `Some(false)` nacked, `None` no word yet.
    pub acked: Vec<Option<bool>>,
    /// Per message: why the broker returned it (`basic.return`), if it did.
    pub returned: Vec<Option<String>>,
    /// Set when reading stopped before every message had its confirm.
    pub error: Option<ConnError>,
    /// Frames read while waiting (0: the broker said nothing at all).
    pub frames: usize,
}

pub struct Connection {
    reader: BufReader<Stream>,
    frame_max: u32,
    /// The delivery tag of the next publish (confirm mode counts from 1).
    next_tag: u64,
}

impl Connection {
    /// Connects, logs in, opens channel 1, checks that `exchange` exists
    /// (unless it is the default exchange, `""`) and enables publisher confirms.
    pub fn open(s: &Settings, exchange: &str) -> Result<Connection, String> {
        let timeouts = net::Timeouts {
            write: Some(s.write_timeout),
            ..net::Timeouts::connect_only(s.connect_timeout)
        };
        let stream = Stream::connect(&s.addr, s.tls, timeouts).map_err(|e| e.to_string())?;
        let mut conn = Connection {
            reader: BufReader::with_capacity(64 * 1024, stream),
            frame_max: MIN_FRAME,
            next_tag: 1,
        };
        conn.handshake(s, exchange, Instant::now() + s.connect_timeout)
            .map_err(|e| match e {
                ConnError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    "the broker closed the connection during the handshake \
                     (wrong user name or password?)"
                        .to_string()
                }
                ConnError::Closed {
                    channel: true,
                    code: 404,
                    text,
                } => {
                    format!(
                        "exchange {exchange:?} does not exist in vhost {:?} (404 {text})",
                        s.vhost
                    )
                }
                e => format!("handshake failed: {e}"),
            })?;
        Ok(conn)
    }

    fn handshake(
        &mut self,
        s: &Settings,
        exchange: &str,
        deadline: Instant,
    ) -> Result<(), ConnError> {
        self.send(PROTOCOL_HEADER)?;
        let Method::Start { mechanisms, .. } = self.expect(0, deadline, "connection.start")? else {
            unreachable_method()?
        };
        if !mechanisms.split(' ').any(|m| m == "PLAIN") {
            return Err(ConnError::Protocol(format!(
                "the broker does not offer PLAIN authentication (it offers {mechanisms:?})"
            )));
        }
        let mut m = method(CLASS_CONNECTION, 11);
        let capabilities = vec![
            ("publisher_confirms".to_string(), Value::Bool(true)),
            ("basic.nack".to_string(), Value::Bool(true)),
            (
                "authentication_failure_close".to_string(),
                Value::Bool(true),
            ),
        ];
        let text = |s: &str| Value::LongStr(s.as_bytes().to_vec());
        put_table(
            &mut m,
            &[
                ("product".into(), text("outbox-relay rabbitmq transport")),
                ("version".into(), text(env!("CARGO_PKG_VERSION"))),
                ("platform".into(), text("wasm32-wasip2")),
                ("connection_name".into(), text(&s.connection_name)),
                ("capabilities".into(), Value::Table(capabilities)),
            ],
        )?;
        put_shortstr(&mut m, "PLAIN")?;
        put_longstr(&mut m, format!("\0{}\0{}", s.user, s.password).as_bytes())?;
        put_shortstr(&mut m, "en_US")?;
        self.send_method(0, &m)?;

        let Method::Tune {
            channel_max,
            frame_max,
            heartbeat: _,
        } = self.expect(0, deadline, "connection.tune")?
        else {
            unreachable_method()?
        };
        // 0 means "no limit" from the broker.
        let frame_max = match frame_max {
            0 => MAX_FRAME,
            n => n.clamp(MIN_FRAME, MAX_FRAME),
        };
        let mut m = method(CLASS_CONNECTION, 31);
        put_u16(&mut m, channel_max);
        put_u32(&mut m, frame_max);
        // Heartbeats off: a connection is only used inside `deliver`, under its
        // own time-outs, and a dead one is noticed and replaced there.
        put_u16(&mut m, 0);
        self.send_method(0, &m)?;
        self.frame_max = frame_max;

        let mut m = method(CLASS_CONNECTION, 40);
        put_shortstr(&mut m, &s.vhost)?;
        put_shortstr(&mut m, "")?;
        m.push(0);
        self.send_method(0, &m)?;
        self.expect(0, deadline, "connection.open-ok")?;

        let mut m = method(CLASS_CHANNEL, 10);
        put_shortstr(&mut m, "")?;
        self.send_method(CHANNEL, &m)?;
        self.expect(CHANNEL, deadline, "channel.open-ok")?;

        if !exchange.is_empty() {
            // A passive declare only checks that the exchange exists.
            let mut m = method(CLASS_EXCHANGE, 10);
            put_u16(&mut m, 0);
            put_shortstr(&mut m, exchange)?;
            put_shortstr(&mut m, "")?;
            m.push(1); // passive
            put_table(&mut m, &[])?;
            self.send_method(CHANNEL, &m)?;
            self.expect(CHANNEL, deadline, "exchange.declare-ok")?;
        }

        let mut m = method(CLASS_CONFIRM, 10);
        m.push(0);
        self.send_method(CHANNEL, &m)?;
        self.expect(CHANNEL, deadline, "confirm.select-ok")?;
        Ok(())
    }

    /// Appends the frames that publish one message: `basic.publish`, the
    /// content header, and the body split to fit the negotiated frame size.
    /// On error `buf` is left as it was.
    pub fn encode_publish(
        &self,
        buf: &mut Vec<u8>,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        props: &Properties,
        body: &[u8],
    ) -> CodecResult<()> {
        let start = buf.len();
        let mut encode = || -> CodecResult<()> {
            let mut m = method(CLASS_BASIC, 40);
            put_u16(&mut m, 0);
            put_shortstr(&mut m, exchange)?;
            put_shortstr(&mut m, routing_key)?;
            m.push(u8::from(mandatory));
            put_frame(buf, FRAME_METHOD, CHANNEL, &m)?;
            let header = content_header(body.len() as u64, props)?;
            let room = self.frame_max as usize - FRAME_OVERHEAD;
            if header.len() > room {
                return Err(CodecError(format!(
                    "the message's properties and headers take {} bytes, more than fit in one \
                     frame ({room} bytes with the broker's frame_max)",
                    header.len()
                )));
            }
            put_frame(buf, FRAME_HEADER, CHANNEL, &header)?;
            for chunk in body.chunks(room) {
                put_frame(buf, FRAME_BODY, CHANNEL, chunk)?;
            }
            Ok(())
        };
        let result = encode();
        if result.is_err() {
            buf.truncate(start);
        }
        result
    }

    /// Writes `count` messages' frames (from [`Connection::encode_publish`])
    /// and returns the delivery tag of the first.
    pub fn publish(&mut self, frames: &[u8], count: usize) -> Result<u64, ConnError> {
        let first = self.next_tag;
        self.send(frames)?;
        self.next_tag += count as u64;
        Ok(first)
    }

    /// Reads until each of the messages tagged `first_tag..` (whose ids are
    /// `ids`) has its `basic.ack` or `basic.nack`, the deadline passes, or the
    /// connection fails. A `basic.return` (which comes before the message's
    /// ack) is matched to its message by message id.
    pub fn await_confirms(&mut self, first_tag: u64, ids: &[&str], deadline: Instant) -> Confirms {
        let n = ids.len();
        let mut c = Confirms {
            acked: vec![None; n],
            returned: vec![None; n],
            ..Confirms::default()
        };
        let mut open = n;
        let last_tag = first_tag + n as u64 - 1;
        while open > 0 {
            let frame = match self.read_frame(deadline) {
                Ok(frame) => frame,
                Err(e) => {
                    c.error = Some(e);
                    break;
                }
            };
            c.frames += 1;
            if frame.kind != FRAME_METHOD {
                continue;
            }
            let method = match Method::decode(&frame.payload) {
                Ok(m) => m,
                Err(e) => {
                    c.error = Some(e.into());
                    break;
                }
            };
            match method {
                Method::Ack { tag, multiple } | Method::Nack { tag, multiple } => {
                    let ok = matches!(method, Method::Ack { .. });
                    let from = if multiple {
                        first_tag
                    } else {
                        tag.max(first_tag)
                    };
                    for t in from..=tag.min(last_tag) {
                        let slot = &mut c.acked[(t - first_tag) as usize];
                        if slot.is_none() {
                            *slot = Some(ok);
                            open -= 1;
                        }
                    }
                }
                Method::Return {
                    code,
                    text,
                    exchange,
                    routing_key,
                } => {
                    let id = match self.read_content(deadline) {
                        Ok(id) => id,
                        Err(e) => {
                            c.error = Some(e);
                            break;
                        }
                    };
                    let slot =
                        (0..n).find(|&i| Some(ids[i]) == id.as_deref() && c.returned[i].is_none());
                    if let Some(i) = slot {
                        c.returned[i] = Some(unroutable(code, &text, &exchange, &routing_key));
                    }
                }
                Method::Close {
                    channel,
                    code,
                    text,
                } => {
                    self.close_ok(channel);
                    c.error = Some(ConnError::Closed {
                        channel,
                        code,
                        text,
                    });
                    break;
                }
                _ => {}
            }
        }
        c
    }

    /// Reads a returned message's content header and body; returns its message id.
    fn read_content(&mut self, deadline: Instant) -> Result<Option<String>, ConnError> {
        let frame = self.read_non_heartbeat(deadline)?;
        if frame.kind != FRAME_HEADER {
            return Err(ConnError::Protocol(format!(
                "expected a content header after basic.return, got a frame of type {}",
                frame.kind
            )));
        }
        let (size, id) = decode_content_header(&frame.payload)?;
        let mut read = 0u64;
        while read < size {
            let frame = self.read_non_heartbeat(deadline)?;
            if frame.kind != FRAME_BODY {
                return Err(ConnError::Protocol(format!(
                    "expected a body frame of a returned message, got a frame of type {}",
                    frame.kind
                )));
            }
            read += frame.payload.len() as u64;
        }
        Ok(id)
    }

    /// Reads the next method on `channel`, which must be `what`; answers a
    /// close and reports it.
    fn expect(&mut self, channel: u16, deadline: Instant, what: &str) -> Result<Method, ConnError> {
        loop {
            let frame = self.read_non_heartbeat(deadline)?;
            if frame.kind != FRAME_METHOD || frame.channel != channel {
                continue;
            }
            let method = Method::decode(&frame.payload)?;
            match method {
                Method::Close {
                    channel,
                    code,
                    text,
                } => {
                    self.close_ok(channel);
                    return Err(ConnError::Closed {
                        channel,
                        code,
                        text,
                    });
                }
                Method::Other(class, id) => {
                    return Err(ConnError::Protocol(format!(
                        "expected {what}, got method {class}.{id}"
                    )));
                }
                m => return Ok(m),
            }
        }
    }

    /// Answers a `close` from the broker, best effort: the connection is
    /// dropped right after either way.
    fn close_ok(&mut self, channel: bool) {
        let (class, ch) = if channel {
            (CLASS_CHANNEL, CHANNEL)
        } else {
            (CLASS_CONNECTION, 0)
        };
        let id = if channel { 41 } else { 51 };
        let _ = self.send_method(ch, &method(class, id));
    }

    fn read_non_heartbeat(&mut self, deadline: Instant) -> Result<Frame, ConnError> {
        loop {
            let frame = self.read_frame(deadline)?;
            if frame.kind != FRAME_HEARTBEAT {
                return Ok(frame);
            }
        }
    }

    fn read_frame(&mut self, deadline: Instant) -> Result<Frame, ConnError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ConnError::Timeout);
        }
        self.reader.get_ref().set_read_timeout(Some(left))?;
        let mut head = [0u8; FRAME_HEADER_LEN];
        self.reader.read_exact(&mut head)?;
        if head.starts_with(b"AMQP") {
            return Err(ConnError::Protocol(
                "the broker does not speak AMQP 0-9-1 (it answered with another protocol header)"
                    .into(),
            ));
        }
        let mut r = Reader::new(&head);
        let (kind, channel, size) = (r.u8()?, r.u16()?, r.u32()?);
        if size > self.frame_max.max(MIN_FRAME) {
            return Err(ConnError::Protocol(format!(
                "a frame of {size} bytes exceeds frame_max {}",
                self.frame_max
            )));
        }
        let mut payload = vec![0u8; size as usize + 1];
        self.reader.read_exact(&mut payload)?;
        if payload.pop() != Some(FRAME_END) {
            return Err(ConnError::Protocol("a frame does not end with 0xCE".into()));
        }
        Ok(Frame {
            kind,
            channel,
            payload,
        })
    }

    fn send_method(&mut self, channel: u16, payload: &[u8]) -> Result<(), ConnError> {
        let mut buf = Vec::with_capacity(payload.len() + FRAME_OVERHEAD);
        put_frame(&mut buf, FRAME_METHOD, channel, payload)?;
        self.send(&buf)
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        let stream = self.reader.get_mut();
        stream.write_all(bytes)?;
        stream.flush()?;
        Ok(())
    }
}

fn unreachable_method<T>() -> Result<T, ConnError> {
    Err(ConnError::Protocol(
        "the broker answered with an unexpected method".into(),
    ))
}

fn unroutable(code: u16, text: &str, exchange: &str, routing_key: &str) -> String {
    let route = if exchange.is_empty() {
        format!("the default exchange has no queue named {routing_key:?}")
    } else {
        format!("exchange {exchange:?} has no queue bound for routing key {routing_key:?}")
    };
    format!("unroutable, returned by the broker: {route} (basic.return {code} {text})")
}
