//! TCP connections from inside the sandbox.
//!
//! A transport may use `std::net::TcpStream` directly: on `wasm32-wasip2` it
//! runs over WASI sockets, and a blocked read yields the host's thread. The
//! host lets a plugin connect only to the `host:port` pairs listed in its
//! target's `sandbox.allow_tcp`. [`connect`] adds what `std` lacks: a
//! connect time-out over every resolved address, and an error that says when
//! it was the sandbox that refused.

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::{Error, Result};

/// Connects to `addr` (`host:port`), trying each resolved address in turn,
/// and sets `TCP_NODELAY` (transports write whole batches and then wait).
pub fn connect(addr: &str, timeout: Duration) -> Result<TcpStream> {
    let addrs = addr
        .to_socket_addrs()
        .map_err(|e| denied_or(addr, e, "cannot resolve"))?;
    let mut last = None;
    for resolved in addrs {
        match TcpStream::connect_timeout(&resolved, timeout) {
            Ok(stream) => {
                stream.set_nodelay(true).ok();
                return Ok(stream);
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

/// Splits `scheme://host:port/...`, `host:port` or `host` into `host:port`,
/// filling in `default_port`. User info and path are ignored.
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

#[cfg(test)]
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
}
