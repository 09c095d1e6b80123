//! One connection to a NATS server: the handshake (`INFO`, `CONNECT`, the
//! inbox `SUB`, a `PING` answered by `PONG`), reading server operations
//! against a deadline, and the check between batches that the server has not
//! closed it.
//!
//! Decentralised auth (a user JWT and its NKey seed, as in a `.creds` file):
//! the seed stays in the host. `CONNECT` carries the JWT and `sig`, the
//! signature of the `INFO` nonce that the host makes with the granted key
//! (`outbox:relay/signing`).

use std::io::{self, Read as _, Write as _};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use outbox_relay_guest::net::{Stream, TlsStream};
use outbox_relay_guest::{Error, log, net, random, signing};

use crate::proto::{self, ServerOp};

/// What a connection is made with.
pub struct Settings {
    /// The client name sent in `CONNECT`.
    pub name: String,
    pub addr: String,
    /// `tls://`: TLS through the host, started after the server's `INFO`
    /// (a server that requires TLS gets it too).
    pub tls: bool,
    pub connect_timeout: Duration,
    pub auth: Auth,
}

#[derive(Default)]
pub struct Auth {
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub user_jwt: Option<UserJwt>,
}

/// A user JWT and the host key that holds the user's seed.
pub struct UserJwt {
    pub jwt: String,
    /// The name of the granted signing key (`nkey_key`).
    pub key: String,
}

/// One connection to the server.
pub struct Conn {
    stream: Stream,
    /// Bytes read and not yet parsed start at `pos`.
    buf: Vec<u8>,
    pos: usize,
    /// This connection's reply subjects are `<inbox>.<token>`.
    pub inbox: String,
    pub next_token: u64,
    pub max_payload: u64,
}

impl Conn {
    /// Connects and does the handshake: `INFO`, then `CONNECT`, the inbox
    /// `SUB` and a `PING` whose `PONG` proves the server accepted them.
    pub fn open(s: &Settings) -> core::result::Result<Conn, String> {
        Self::open_with(s, s.tls)
    }

    fn open_with(s: &Settings, tls: bool) -> core::result::Result<Conn, String> {
        let stream = if tls {
            // Plain until the server's INFO, then the host's TLS.
            Stream::Tls(TlsStream::open(&s.addr, s.connect_timeout).map_err(Error::into_message)?)
        } else {
            Stream::Plain(net::connect(&s.addr, s.connect_timeout).map_err(Error::into_message)?)
        };
        let mut conn = Conn {
            stream,
            buf: Vec::new(),
            pos: 0,
            inbox: new_inbox(),
            next_token: 0,
            max_payload: u64::MAX,
        };
        let deadline = Instant::now() + s.connect_timeout;
        let handshake = |e: io::Error| format!("NATS handshake with {}: {e}", s.addr);
        let info = match conn.read_op(deadline).map_err(handshake)? {
            ServerOp::Info(json) => serde_json::from_str::<proto::Info>(&json)
                .map_err(|e| format!("{} sent an INFO that does not parse: {e}", s.addr))?,
            other => {
                return Err(format!(
                    "{} does not speak NATS (first message: {other:?})",
                    s.addr
                ));
            }
        };
        if info.tls_required && !tls {
            log::debug(&format!(
                "{} requires TLS: connecting again over TLS (write `tls://` to skip this)",
                s.addr
            ));
            return Self::open_with(s, true);
        }
        if let Stream::Tls(stream) = &conn.stream {
            if !info.tls_required && !info.tls_available {
                return Err(format!(
                    "{} does not offer TLS (its INFO has no `tls_required` or `tls_available`); use `nats://`",
                    s.addr
                ));
            }
            // The server says nothing more until the handshake.
            conn.buf.clear();
            conn.pos = 0;
            stream
                .start_tls(deadline.saturating_duration_since(Instant::now()))
                .map_err(Error::into_message)?;
        }
        if !info.headers {
            return Err(format!(
                "{} does not support message headers (NATS server 2.2 or later is needed)",
                s.addr
            ));
        }
        if !info.jetstream {
            log::warn(&format!(
                "{} does not announce JetStream; publishes will fail until it does",
                s.addr
            ));
        }
        conn.max_payload = info.max_payload.unwrap_or(u64::MAX);

        let sig = match (&s.auth.user_jwt, &info.nonce) {
            (Some(user), Some(nonce)) => Some(
                sign_nonce(nonce, |m| {
                    signing::sign(&user.key, m).map_err(Error::into_message)
                })
                .map_err(|e| {
                    format!(
                        "signing the nonce of {} with key {:?} (nkey_key): {e}",
                        s.addr, user.key
                    )
                })?,
            ),
            // A server that does not check JWTs would take the bearer JWT
            // unsigned and prove nothing: refuse to hand it over.
            (Some(_), None) => {
                return Err(format!(
                    "{} sent no nonce, so it does not run JWT authentication: the user JWT (key `jwt`) is not sent; remove `jwt`/`nkey_key` for this server",
                    s.addr
                ));
            }
            (None, _) => None,
        };
        let mut out = Vec::new();
        let connect = proto::Connect {
            verbose: false,
            pedantic: false,
            tls_required: tls,
            name: &s.name,
            lang: "rust-wasm",
            version: env!("CARGO_PKG_VERSION"),
            protocol: 1,
            echo: false,
            headers: true,
            no_responders: true,
            user: s.auth.user.as_deref(),
            pass: s.auth.password.as_deref(),
            auth_token: s.auth.token.as_deref(),
            jwt: s.auth.user_jwt.as_ref().map(|u| u.jwt.as_str()),
            sig: sig.as_deref(),
        };
        proto::encode_connect(&mut out, &connect)?;
        proto::encode_sub(&mut out, &format!("{}.*", conn.inbox), 1);
        out.extend_from_slice(b"PING\r\n");
        conn.write(&out, s.connect_timeout).map_err(handshake)?;
        loop {
            match conn.read_op(deadline).map_err(handshake)? {
                ServerOp::Pong => break,
                ServerOp::Ping => conn
                    .write(b"PONG\r\n", s.connect_timeout)
                    .map_err(handshake)?,
                ServerOp::Err(err) => return Err(refused(s, &err)),
                _ => {}
            }
        }
        log::debug(&format!(
            "connected to {} (NATS {})",
            s.addr,
            info.version.as_deref().unwrap_or("?")
        ));
        Ok(conn)
    }

    pub fn write(&mut self, bytes: &[u8], timeout: Duration) -> io::Result<()> {
        self.stream.set_write_timeout(Some(timeout))?;
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// The next operation from the server, waiting until `deadline` at most.
    pub fn read_op(&mut self, deadline: Instant) -> io::Result<ServerOp> {
        loop {
            if let Some((op, used)) = proto::parse(&self.buf[self.pos..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            {
                self.pos += used;
                return Ok(op);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            self.fill()?;
        }
    }

    /// Reads what is available into the buffer; an error at end of stream.
    fn fill(&mut self) -> io::Result<()> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk)? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )),
            n => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
        }
    }

    /// Between batches: answers the server's `PING`s and finds out whether it
    /// closed the connection (a restart, an idle time-out), without waiting.
    pub fn still_open(&mut self) -> bool {
        if self.stream.set_nonblocking(true).is_err() {
            return true; // cannot tell; the batch will find out
        }
        let mut open = true;
        loop {
            match proto::parse(&self.buf[self.pos..]) {
                Ok(Some((op, used))) => {
                    self.pos += used;
                    match op {
                        ServerOp::Ping => open &= self.stream.write_all(b"PONG\r\n").is_ok(),
                        ServerOp::Err(err) => {
                            log::warn(&format!("the NATS server reported: {err}"));
                            open = false;
                        }
                        _ => {} // late replies to an earlier batch, INFO updates
                    }
                }
                Ok(None) => match self.fill() {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => open = false,
                },
                Err(_) => open = false,
            }
            if !open {
                break;
            }
        }
        open && self.stream.set_nonblocking(false).is_ok()
    }
}

/// base64url (no padding) of the signature `sign` makes of the nonce's bytes,
/// as `sig` in `CONNECT`.
pub fn sign_nonce(
    nonce: &str,
    sign: impl FnOnce(&[u8]) -> core::result::Result<Vec<u8>, String>,
) -> core::result::Result<String, String> {
    let signature = sign(nonce.as_bytes())?;
    if signature.len() != 64 {
        return Err(format!(
            "the signature is {} bytes, not the 64 of Ed25519",
            signature.len()
        ));
    }
    Ok(URL_SAFE_NO_PAD.encode(signature))
}

/// Why the server refused the handshake, with what to check when it refused
/// the credentials.
pub fn refused(s: &Settings, err: &str) -> String {
    if !err.eq_ignore_ascii_case("Authorization Violation") {
        return format!("{} refused the connection: {err}", s.addr);
    }
    let hint = if let Some(user) = &s.auth.user_jwt {
        format!(
            "the server did not accept the user JWT (`jwt`) signed with key {:?} (`nkey_key`): \
             check that the JWT and the key's seed come from the same .creds file, that the \
             server knows the user's account (its resolver) and that the JWT has not expired \
             or been revoked",
            user.key
        )
    } else if s.auth.user.is_some() {
        "check `user` and `password`".to_string()
    } else if s.auth.token.is_some() {
        "check `token`".to_string()
    } else {
        "the server requires credentials: set `user` and `password`, `token`, or `jwt` and \
         `nkey_key` (a .creds file)"
            .to_string()
    };
    format!(
        "{} refused the credentials (Authorization Violation): {hint}",
        s.addr
    )
}

pub fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// Credentials in the URL: `nats://user:pass@host` or `nats://token@host`.
pub fn url_auth(url: &str) -> Auth {
    let Some((_, rest)) = url.split_once("://") else {
        return Auth::default();
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let Some((userinfo, _)) = authority.rsplit_once('@') else {
        return Auth::default();
    };
    match userinfo.split_once(':') {
        Some((user, pass)) => Auth {
            user: Some(user.to_owned()),
            password: Some(pass.to_owned()),
            ..Auth::default()
        },
        None => Auth {
            token: Some(userinfo.to_owned()),
            ..Auth::default()
        },
    }
}

/// A reply-subject prefix no other connection uses: `_INBOX.` and 128
/// random bits.
pub fn new_inbox() -> String {
    format!("_INBOX.{}", random::hex(32))
}
