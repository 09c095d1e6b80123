//! TCP connections from inside the sandbox.
//!
//! A transport may use `std::net::TcpStream` directly: on `wasm32-wasip2` it
//! runs over WASI sockets, and a blocked read yields the host's thread. The
//! host lets a plugin connect only to the `host:port` pairs listed in its
//! target's `sandbox.allow_tcp`. This module adds what `std` lacks:
//!
//! - [`connect`]: a connect time-out over every resolved address, read and
//!   write time-outs set before the stream is handed out, and an error that
//!   says when it was the sandbox that refused;
//! - [`endpoint`]: a broker URL to the `host:port` to allow and dial, with its
//!   scheme checked and credentials refused (they belong in their own keys,
//!   where the host can resolve them as secrets);
//! - [`is_closed`]: whether an I/O error means the peer closed the connection,
//!   the test [`Kept`](crate::net::Kept) uses to reconnect at once;
//! - [`Kept`]: a connection kept across batches, replaced once at once when a
//!   batch finds that the peer closed it while it was idle;
//! - [`TlsStream`]: a TLS connection that the host opens and holds (the
//!   certificates and the client key never enter the plugin), and
//!   [`Stream`], plain or TLS behind one `Read`/`Write`; [`endpoint_of`]
//!   tells from a URL's scheme which one a broker wants.

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::{Error, Result};

mod kept;
mod tls;

pub use kept::{Broken, Kept};
pub use tls::{Stream, TlsStream};

/// The time-outs of a connection made by [`connect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// How long each resolved address may take to accept.
    pub connect: Duration,
    /// Set with `set_read_timeout`; `None` leaves reads blocking.
    pub read: Option<Duration>,
    /// Set with `set_write_timeout`; `None` leaves writes blocking.
    pub write: Option<Duration>,
}

impl Timeouts {
    /// The same time-out for connecting, reading and writing.
    pub fn all(timeout: Duration) -> Self {
        Timeouts {
            connect: timeout,
            read: Some(timeout),
            write: Some(timeout),
        }
    }

    /// A connect time-out only: reads and writes block until they finish.
    pub fn connect_only(timeout: Duration) -> Self {
        Timeouts {
            connect: timeout,
            read: None,
            write: None,
        }
    }
}

impl From<Duration> for Timeouts {
    /// [`Timeouts::connect_only`]: what `connect(addr, duration)` always meant.
    fn from(timeout: Duration) -> Self {
        Timeouts::connect_only(timeout)
    }
}

/// Connects to `addr` (`host:port`), trying each resolved address in turn,
/// sets the read and write time-outs of `timeouts` and `TCP_NODELAY`
/// (transports write whole batches and then wait).
///
/// `timeouts` is a [`Timeouts`], or a `Duration` for a connect time-out alone.
/// Every error names `addr`.
pub fn connect(addr: &str, timeouts: impl Into<Timeouts>) -> Result<TcpStream> {
    let timeouts = timeouts.into();
    let addrs = addr
        .to_socket_addrs()
        .map_err(|e| denied_or(addr, e, "cannot resolve"))?;
    let mut last = None;
    for resolved in addrs {
        match TcpStream::connect_timeout(&resolved, timeouts.connect) {
            Ok(stream) => {
                stream.set_nodelay(true).ok();
                let set = stream
                    .set_read_timeout(timeouts.read)
                    .and_then(|()| stream.set_write_timeout(timeouts.write));
                return match set {
                    Ok(()) => Ok(stream),
                    Err(e) => Err(Error::new(format!("{addr}: cannot set time-outs: {e}"))),
                };
            }
            Err(e) => last = Some(denied_or(addr, e, "cannot connect to")),
        }
    }
    Err(last.unwrap_or_else(|| Error::new(format!("{addr} resolves to no address"))))
}

fn denied_or(addr: &str, err: io::Error, what: &str) -> Error {
    if is_denied(&err) {
        Error::new(format!(
            "the sandbox does not allow connecting to {addr}: add it to the target's `sandbox.allow_tcp`"
        ))
    } else {
        Error::new(format!("{what} {addr}: {err}"))
    }
}

/// Whether `err` is the sandbox refusing a connection (WASI `access-denied`).
pub fn is_denied(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::PermissionDenied
}

/// Whether `err` means the connection is gone: the peer closed or reset it,
/// or it was never (or is no longer) connected. A time-out is not: the peer
/// may only be slow, and what it was sent may still be acted on.
pub fn is_closed(err: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        err.kind(),
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected
    )
}

/// Splits `scheme://host:port/...`, `host:port` or `host` into `host:port`,
/// filling in `default_port`. User info and path are ignored; see
/// [`endpoint`] for a URL from an operator's config.
pub fn host_port(url: &str, default_port: u16) -> Result<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if authority.is_empty() {
        return Err(Error::new(format!("{url:?} names no host")));
    }
    let has_port = match authority.rfind(':') {
        Some(i) => !authority.ends_with(']') && authority[i + 1..].parse::<u16>().is_ok(),
        None => false,
    };
    Ok(if has_port {
        authority.to_string()
    } else {
        format!("{authority}:{default_port}")
    })
}

/// A broker address taken from a URL by [`endpoint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`, as `sandbox.allow_tcp` lists it and [`connect`] takes it.
    pub addr: String,
    /// What follows the authority, without its leading `/` (`""` when none).
    pub path: String,
    /// Whether the scheme means TLS ([`Stream::connect`] with it).
    pub tls: bool,
}

/// A URL scheme a transport accepts: its name, default port, and whether
/// it means TLS (through the host: [`TlsStream`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheme<'a> {
    pub name: &'a str,
    pub default_port: u16,
    pub tls: bool,
}

impl<'a> Scheme<'a> {
    /// A plaintext scheme (`redis`, `mqtt`).
    pub const fn plain(name: &'a str, default_port: u16) -> Self {
        Scheme {
            name,
            default_port,
            tls: false,
        }
    }

    /// A TLS scheme (`rediss`, `mqtts`, `amqps`).
    pub const fn tls(name: &'a str, default_port: u16) -> Self {
        Scheme {
            name,
            default_port,
            tls: true,
        }
    }
}

/// Parses `scheme://host[:port][/path]` or `host[:port]` (no scheme), for a
/// broker reached over plain TCP.
///
/// - A scheme must be one of `schemes`; a TLS variant of one (the scheme with
///   an `s` after it: `mqtts`, `rediss`) is named as unsupported.
/// - User info (`user:password@`) is refused: credentials go in config keys
///   of their own, which the host can fill from a secret.
/// - The port defaults to `default_port`.
///
/// The error says what is wrong; prefix it with the config key. See
/// [`endpoint_of`] for a transport that also speaks TLS.
///
/// ```
/// use outbox_relay_guest::net::endpoint;
///
/// let e = endpoint("redis://cache:6380/", &["redis"], 6379)?;
/// assert_eq!((e.addr.as_str(), e.path.as_str()), ("cache:6380", ""));
/// assert_eq!(endpoint("broker", &["mqtt", "tcp"], 1883)?.addr, "broker:1883");
/// assert!(endpoint("rediss://cache", &["redis"], 6379).unwrap_err().message().contains("TLS"));
/// assert!(endpoint("redis://u:p@cache", &["redis"], 6379).is_err());
/// # Ok::<(), outbox_relay_guest::Error>(())
/// ```
pub fn endpoint(url: &str, schemes: &[&str], default_port: u16) -> Result<Endpoint> {
    let plain: Vec<Scheme> = schemes
        .iter()
        .map(|name| Scheme::plain(name, default_port))
        .collect();
    endpoint_of(url, &plain)
}

/// Like [`endpoint`], with each scheme's own default port and TLS flag; a
/// URL without a scheme takes the first of `schemes`.
///
/// ```
/// use outbox_relay_guest::net::{Scheme, endpoint_of};
///
/// let schemes = [Scheme::plain("mqtt", 1883), Scheme::tls("mqtts", 8883)];
/// let e = endpoint_of("mqtts://broker", &schemes)?;
/// assert_eq!((e.addr.as_str(), e.tls), ("broker:8883", true));
/// assert!(!endpoint_of("broker", &schemes)?.tls);
/// # Ok::<(), outbox_relay_guest::Error>(())
/// ```
pub fn endpoint_of(url: &str, schemes: &[Scheme<'_>]) -> Result<Endpoint> {
    let (scheme, rest) = match url.split_once("://") {
        Some((name, rest)) => match schemes.iter().find(|s| s.name == name) {
            Some(scheme) => (scheme, rest),
            None => {
                let listed = schemes
                    .iter()
                    .map(|s| format!("`{}`", s.name))
                    .collect::<Vec<_>>()
                    .join(" or ");
                let tls = name
                    .strip_suffix('s')
                    .is_some_and(|plain| schemes.iter().any(|s| s.name == plain));
                return Err(Error::new(if tls {
                    format!("the scheme must be {listed} (TLS, `{name}`, is not supported)")
                } else {
                    format!("the scheme must be {listed}, not `{name}`")
                }));
            }
        },
        None => match schemes.first() {
            Some(scheme) => (scheme, url),
            None => return Err(Error::new("no URL scheme is accepted")),
        },
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.contains('@') {
        return Err(Error::new(
            "the URL must not carry credentials (`user:password@`): set them in the target's config keys",
        ));
    }
    Ok(Endpoint {
        addr: host_port(authority, scheme.default_port)?,
        path: path.to_owned(),
        tls: scheme.tls,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn host_port_fills_in_the_default() {
        assert_eq!(
            host_port("nats://127.0.0.1:4222", 1).unwrap(),
            "127.0.0.1:4222"
        );
        assert_eq!(
            host_port("amqp://guest:guest@localhost/%2f", 5672).unwrap(),
            "localhost:5672"
        );
        assert_eq!(host_port("redis:6380", 6379).unwrap(), "redis:6380");
        assert_eq!(host_port("mqtt.local", 1883).unwrap(), "mqtt.local:1883");
        assert!(host_port("nats://", 4222).is_err());
    }

    #[test]
    fn endpoints_check_the_scheme_and_refuse_credentials() {
        let mqtt = |url| endpoint(url, &["mqtt", "tcp"], 1883);
        assert_eq!(
            mqtt("mqtt://127.0.0.1:1884").unwrap().addr,
            "127.0.0.1:1884"
        );
        assert_eq!(mqtt("tcp://broker:1").unwrap().addr, "broker:1");
        assert_eq!(mqtt("broker").unwrap().addr, "broker:1883");
        let e = mqtt("mqtts://broker").unwrap_err();
        assert!(e.message().contains("TLS, `mqtts`"), "{e}");
        assert!(e.message().contains("`mqtt` or `tcp`"), "{e}");
        let e = mqtt("ws://broker").unwrap_err();
        assert!(e.message().contains("not `ws`"), "{e}");
        for url in ["mqtt://u:p@broker", "u@broker:1883"] {
            let e = mqtt(url).unwrap_err();
            assert!(e.message().contains("credentials"), "{url}: {e}");
        }
        assert!(mqtt("mqtt://").is_err());

        let redis = endpoint("redis://cache/2", &["redis"], 6379).unwrap();
        assert_eq!(
            (redis.addr.as_str(), redis.path.as_str()),
            ("cache:6379", "2")
        );
        // `@` after the authority is not user info.
        assert_eq!(endpoint("h/a@b", &["redis"], 1).unwrap().path, "a@b");
    }

    #[test]
    fn closed_means_the_peer_is_gone_not_slow() {
        use io::ErrorKind::*;
        for kind in [
            UnexpectedEof,
            ConnectionReset,
            ConnectionAborted,
            BrokenPipe,
            NotConnected,
        ] {
            assert!(is_closed(&kind.into()), "{kind:?}");
        }
        for kind in [TimedOut, WouldBlock, PermissionDenied, InvalidData] {
            assert!(!is_closed(&kind.into()), "{kind:?}");
        }
    }

    #[test]
    fn a_refused_connection_names_the_address() {
        // Port 1 on loopback: nothing listens there.
        let e = connect("127.0.0.1:1", Timeouts::all(Duration::from_millis(200))).unwrap_err();
        assert!(e.message().contains("127.0.0.1:1"), "{e}");
    }
}
