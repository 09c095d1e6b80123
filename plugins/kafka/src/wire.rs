//! One connection to one broker: framing, correlation ids, the API versions
//! both sides speak, and the SASL login. Everything above it (`cluster.rs`,
//! `produce.rs`) sees typed requests and responses only.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, InitProducerIdRequest, InitProducerIdResponse,
    MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse, RequestHeader,
    ResponseHeader, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use outbox_relay_guest::net::{self, Stream, Timeouts};

use crate::errors::code_name;
use crate::sasl::{self, Credentials, Mechanism, Scram};

/// The largest response accepted: a produce or metadata response is far
/// smaller; a larger size means a confused stream.
const MAX_FRAME: usize = 64 << 20;

/// The versions of each API this client can speak; the one used is the
/// highest both sides speak.
const SPOKEN: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Metadata, 1, 9),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::SaslHandshake, 1, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
];

/// A request this client sends, and its answer. (kafka-protocol's own
/// `Request` trait needs its broker half, which a client does not build.)
pub trait Request: Encodable + HeaderVersion {
    const KEY: ApiKey;
    type Response: Decodable + HeaderVersion;
}

macro_rules! requests {
    ($($request:ty => $response:ty, $key:ident;)*) => {$(
        impl Request for $request {
            const KEY: ApiKey = ApiKey::$key;
            type Response = $response;
        }
    )*};
}

requests! {
    ApiVersionsRequest => ApiVersionsResponse, ApiVersions;
    MetadataRequest => MetadataResponse, Metadata;
    ProduceRequest => ProduceResponse, Produce;
    InitProducerIdRequest => InitProducerIdResponse, InitProducerId;
    SaslHandshakeRequest => SaslHandshakeResponse, SaslHandshake;
    SaslAuthenticateRequest => SaslAuthenticateResponse, SaslAuthenticate;
}

/// Why a connection failed.
#[derive(Debug)]
pub enum ConnError {
    /// The socket failed (closed, reset, timed out).
    Io(io::Error),
    /// The broker answered something this client cannot use; the connection
    /// is dropped.
    Protocol(String),
    /// Connecting failed before anything was sent (refused, a wrong
    /// password): the message says which.
    Connect(String),
    /// The sandbox does not allow this address (`sandbox.allow_tcp`).
    Denied(String),
}

impl ConnError {
    /// Whether a request on this connection may have reached the broker and
    /// been acted on without this client hearing the answer.
    pub fn is_io(&self) -> bool {
        matches!(self, ConnError::Io(_))
    }
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::Io(e)
                if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock =>
            {
                f.write_str("no answer within the request time-out (request_timeout_ms, or what was left of the batch's delivery_timeout_ms)")
            }
            ConnError::Io(e) if net::is_closed(e) => write!(f, "the connection was closed ({e})"),
            ConnError::Io(e) => write!(f, "I/O error: {e}"),
            ConnError::Protocol(m) | ConnError::Connect(m) | ConnError::Denied(m) => f.write_str(m),
        }
    }
}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> Self {
        ConnError::Io(e)
    }
}

/// How to reach and log in to a broker.
#[derive(Debug, Clone)]
pub struct Dial {
    pub client_id: String,
    pub connect_timeout: Duration,
    /// The read time-out: how long a request may wait for its answer.
    pub request_timeout: Duration,
    /// `SSL`/`SASL_SSL`: TLS through the host.
    pub tls: bool,
    pub sasl: Option<Credentials>,
}

pub struct Connection {
    stream: Stream,
    addr: String,
    client_id: StrBytes,
    next_correlation: i32,
    versions: HashMap<i16, i16>,
    request_timeout: Duration,
    /// No read or write on this connection goes past it.
    deadline: Option<Instant>,
}

/// What is left until `deadline`, at most `cap`; a time-out once it passed.
fn left(cap: Duration, deadline: Option<Instant>) -> io::Result<Duration> {
    let Some(deadline) = deadline else {
        return Ok(cap);
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::ErrorKind::TimedOut.into())
    } else {
        Ok(cap.min(left))
    }
}

impl Connection {
    /// Connects to `addr`, agrees on API versions and logs in, all before
    /// `deadline`.
    pub fn open(
        addr: &str,
        dial: &Dial,
        deadline: Option<Instant>,
    ) -> Result<Connection, ConnError> {
        let connect = left(dial.connect_timeout, deadline)?;
        let stream =
            Stream::connect(addr, dial.tls, Timeouts::connect_only(connect)).map_err(|e| {
                let message = e.into_message();
                if message.contains("sandbox does not allow") {
                    ConnError::Denied(message)
                } else {
                    ConnError::Connect(message)
                }
            })?;
        let mut conn = Connection {
            stream,
            addr: addr.to_owned(),
            client_id: StrBytes::from_string(dial.client_id.clone()),
            next_correlation: 1,
            versions: HashMap::new(),
            request_timeout: dial.request_timeout,
            deadline,
        };
        conn.agree_versions()?;
        if let Some(credentials) = &dial.sasl {
            conn.log_in(credentials)?;
        }
        Ok(conn)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Bounds every later read and write (`None`: the request time-out only).
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// Writes all of `bytes` within the request time-out and the deadline.
    fn write_full(&mut self, bytes: &[u8]) -> io::Result<()> {
        let until = Instant::now() + left(self.request_timeout, self.deadline)?;
        let mut done = 0;
        while done < bytes.len() {
            self.stream.set_write_timeout(Some(remaining(until)?))?;
            match self.stream.write(&bytes[done..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Fills `buf` within the request time-out and the deadline: a broker
    /// that answers a byte at a time is cut off like one that is silent.
    fn read_full(&mut self, buf: &mut [u8], until: Instant) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            self.stream.set_read_timeout(Some(remaining(until)?))?;
            match self.stream.read(&mut buf[done..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The version of `key` to use on this connection.
    pub fn version(&self, key: ApiKey) -> i16 {
        self.versions.get(&(key as i16)).copied().unwrap_or(0)
    }

    fn agree_versions(&mut self) -> Result<(), ConnError> {
        // Version 0: every broker since 0.10 answers it, in the old header.
        let offered = self.call(&ApiVersionsRequest::default(), 0)?;
        if let Some(code) = nonzero(offered.error_code) {
            return Err(ConnError::Connect(format!(
                "the broker refused ApiVersions: {}",
                code_name(code)
            )));
        }
        for &(key, ours_min, ours_max) in SPOKEN {
            let theirs = offered.api_keys.iter().find(|k| k.api_key == key as i16);
            let Some(theirs) = theirs else {
                if key == ApiKey::SaslHandshake || key == ApiKey::SaslAuthenticate {
                    continue; // only needed with SASL; checked there
                }
                return Err(ConnError::Connect(format!(
                    "the broker does not support {key:?} requests"
                )));
            };
            let version = ours_max.min(theirs.max_version);
            if version < ours_min || version < theirs.min_version {
                return Err(ConnError::Connect(format!(
                    "no common version of {key:?}: the broker speaks {}..={}, this client {ours_min}..={ours_max}",
                    theirs.min_version, theirs.max_version
                )));
            }
            self.versions.insert(key as i16, version);
        }
        Ok(())
    }

    fn log_in(&mut self, c: &Credentials) -> Result<(), ConnError> {
        if !self
            .versions
            .contains_key(&(ApiKey::SaslAuthenticate as i16))
        {
            return Err(ConnError::Connect(
                "the broker does not support SASL (no SaslAuthenticate API)".into(),
            ));
        }
        let handshake = SaslHandshakeRequest::default()
            .with_mechanism(StrBytes::from_static_str(c.mechanism.name()));
        let answer = self.call(&handshake, self.version(ApiKey::SaslHandshake))?;
        if let Some(code) = nonzero(answer.error_code) {
            let offered: Vec<&str> = answer.mechanisms.iter().map(|m| m.as_str()).collect();
            return Err(ConnError::Connect(format!(
                "SASL: the broker refused the {} handshake with {} (it lists {offered:?}; is SASL enabled on this listener?)",
                c.mechanism.name(),
                code_name(code)
            )));
        }
        let refused = |what: String| {
            ConnError::Connect(format!(
                "SASL {} login as {:?} failed: {what}",
                c.mechanism.name(),
                c.username
            ))
        };
        match c.mechanism {
            Mechanism::Plain => {
                self.authenticate(sasl::plain(c))
                    .map_err(|e| e.named(refused))?;
            }
            Mechanism::ScramSha256 | Mechanism::ScramSha512 => {
                let nonce = outbox_relay_guest::random::hex(32);
                let (scram, first) = Scram::start(c, &nonce);
                let server_first = self.authenticate(first).map_err(|e| e.named(refused))?;
                let (last, final_message) = scram.answer(&server_first).map_err(refused)?;
                let server_final = self
                    .authenticate(final_message)
                    .map_err(|e| e.named(refused))?;
                last.verify(&server_final).map_err(refused)?;
            }
        }
        Ok(())
    }

    fn authenticate(&mut self, bytes: Vec<u8>) -> Result<Vec<u8>, Refusal> {
        let request = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(bytes));
        let answer = self
            .call(&request, self.version(ApiKey::SaslAuthenticate))
            .map_err(Refusal::Conn)?;
        match nonzero(answer.error_code) {
            None => Ok(answer.auth_bytes.to_vec()),
            Some(code) => Err(Refusal::Broker(match answer.error_message {
                Some(m) if !m.is_empty() => format!("{} ({})", code_name(code), m.as_str()),
                _ => code_name(code),
            })),
        }
    }

    /// Sends `request` and waits for its answer.
    pub fn call<R: Request>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<R::Response, ConnError> {
        let correlation = self.send(request, version)?;
        self.receive::<R>(correlation, version)
    }

    /// Writes `request`; returns its correlation id for [`Connection::receive`].
    pub fn send<R: Request>(&mut self, request: &R, version: i16) -> Result<i32, ConnError> {
        let correlation = self.next_correlation;
        self.next_correlation = self.next_correlation.wrapping_add(1).max(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation)
            .with_client_id(Some(self.client_id.clone()));
        let mut frame = BytesMut::with_capacity(64);
        frame.extend_from_slice(&[0; 4]);
        let encoded = header
            .encode(&mut frame, R::header_version(version))
            .and_then(|()| request.encode(&mut frame, version));
        encoded
            .map_err(|e| ConnError::Protocol(format!("cannot encode {:?}: {e}", key_of::<R>())))?;
        let size = i32::try_from(frame.len() - 4)
            .map_err(|_| ConnError::Protocol("request larger than 2 GiB".into()))?;
        frame[..4].copy_from_slice(&size.to_be_bytes());
        self.write_full(&frame)?;
        Ok(correlation)
    }

    /// Reads the answer to the request sent with `correlation`.
    pub fn receive<R: Request>(
        &mut self,
        correlation: i32,
        version: i16,
    ) -> Result<R::Response, ConnError> {
        let until = Instant::now() + left(self.request_timeout, self.deadline)?;
        let mut size = [0u8; 4];
        self.read_full(&mut size, until)?;
        let size = i32::from_be_bytes(size);
        let size = usize::try_from(size)
            .ok()
            .filter(|&s| (4..=MAX_FRAME).contains(&s))
            .ok_or_else(|| ConnError::Protocol(format!("a response frame of {size} bytes")))?;
        let mut body = vec![0u8; size];
        self.read_full(&mut body, until)?;
        let mut body = Bytes::from(body);
        let protocol = |e: String| {
            ConnError::Protocol(format!(
                "cannot decode the {:?} response: {e}",
                key_of::<R>()
            ))
        };
        let header = ResponseHeader::decode(&mut body, R::Response::header_version(version))
            .map_err(|e| protocol(e.to_string()))?;
        if header.correlation_id != correlation {
            return Err(ConnError::Protocol(format!(
                "the broker answered request {} when {correlation} was expected",
                header.correlation_id
            )));
        }
        R::Response::decode(&mut body, version).map_err(|e| protocol(e.to_string()))
    }
}

/// What is left until `until`; a time-out once it passed.
fn remaining(until: Instant) -> io::Result<Duration> {
    let left = until.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::ErrorKind::TimedOut.into())
    } else {
        Ok(left)
    }
}

fn key_of<R: Request>() -> ApiKey {
    R::KEY
}

fn nonzero(code: i16) -> Option<i16> {
    (code != 0).then_some(code)
}

/// Why a SASL step failed.
enum Refusal {
    Conn(ConnError),
    Broker(String),
}

impl Refusal {
    fn named(self, refused: impl Fn(String) -> ConnError) -> ConnError {
        match self {
            Refusal::Conn(ConnError::Io(e)) if net::is_closed(&e) => {
                refused("the broker closed the connection (a wrong user name or password?)".into())
            }
            Refusal::Conn(e) => refused(e.to_string()),
            Refusal::Broker(m) => refused(m),
        }
    }
}
