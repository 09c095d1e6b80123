//! TLS connections held by the host (`outbox:relay/tls`), and [`Stream`]:
//! a plain TCP stream or a TLS one behind the same `Read`/`Write`, so that a
//! transport's protocol code is written once for both.
//!
//! The host checks the server's certificate (the system roots plus the
//! target's `sandbox.tls.ca`, for the host name dialled) and presents the
//! target's client certificate; neither the certificates nor the key enter
//! the plugin. Connections go only to `sandbox.allow_tcp` pairs and count
//! against `sandbox.max_sockets`.

use std::cell::Cell;
use std::io;
use std::net::TcpStream;
use std::time::Duration;

use super::{Timeouts, connect};
use crate::{Error, Result};

#[cfg(target_arch = "wasm32")]
use crate::bindings::transport_world::outbox::relay::tls as host;

/// A TLS connection the host holds for this plugin.
pub struct TlsStream {
    #[cfg(target_arch = "wasm32")]
    conn: host::Connection,
    addr: String,
    read_timeout: Cell<Option<Duration>>,
    write_timeout: Cell<Option<Duration>>,
    nonblocking: Cell<bool>,
}

/// Milliseconds for the host, at least 1 for a non-zero duration.
#[cfg(target_arch = "wasm32")]
fn ms(d: Duration) -> u32 {
    let ms = d.as_millis().min(u128::from(u32::MAX)) as u32;
    if ms == 0 && !d.is_zero() { 1 } else { ms }
}

impl TlsStream {
    /// Connects to `addr` (`host:port`, as `sandbox.allow_tcp` lists it) and
    /// runs the handshake within `timeouts.connect`; reads and writes then
    /// use `timeouts.read` and `timeouts.write`. Errors name `addr` and, for a
    /// failed handshake, why (unknown authority, wrong name, expired, a
    /// client certificate wanted or refused).
    pub fn connect(addr: &str, timeouts: impl Into<Timeouts>) -> Result<TlsStream> {
        let timeouts = timeouts.into();
        #[cfg(target_arch = "wasm32")]
        {
            let conn = host::connect(addr, ms(timeouts.connect))
                .map_err(|e| Error::new(format!("TLS to {addr}: {}", from_wire(e))))?;
            Ok(Self::held(conn, addr, timeouts))
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let _ = timeouts;
            Err(no_host(addr))
        }
    }

    /// Connects to `addr` without TLS (for protocols that greet in
    /// plaintext and then switch, like NATS); [`TlsStream::start_tls`]
    /// upgrades it. Until then reads and writes are plain.
    pub fn open(addr: &str, timeouts: impl Into<Timeouts>) -> Result<TlsStream> {
        let timeouts = timeouts.into();
        #[cfg(target_arch = "wasm32")]
        {
            let conn = host::open(addr, ms(timeouts.connect))
                .map_err(|e| Error::new(format!("{addr}: {}", from_wire(e))))?;
            Ok(Self::held(conn, addr, timeouts))
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let _ = timeouts;
            Err(no_host(addr))
        }
    }

    #[cfg(target_arch = "wasm32")]
    fn held(conn: host::Connection, addr: &str, timeouts: Timeouts) -> TlsStream {
        TlsStream {
            conn,
            addr: addr.to_string(),
            read_timeout: Cell::new(timeouts.read),
            write_timeout: Cell::new(timeouts.write),
            nonblocking: Cell::new(false),
        }
    }

    /// Runs the TLS handshake on a connection made by [`TlsStream::open`].
    pub fn start_tls(&self, timeout: Duration) -> Result<()> {
        #[cfg(target_arch = "wasm32")]
        {
            self.conn
                .start_tls(ms(timeout))
                .map_err(|e| Error::new(format!("TLS to {}: {}", self.addr, from_wire(e))))
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let _ = timeout;
            Err(no_host(&self.addr))
        }
    }

    /// "TLSv1.3" or "TLSv1.2"; `None` before the handshake.
    pub fn protocol(&self) -> Option<String> {
        #[cfg(target_arch = "wasm32")]
        {
            self.conn.protocol()
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            None
        }
    }

    /// As `TcpStream::set_read_timeout`.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.read_timeout.set(timeout);
        Ok(())
    }

    /// As `TcpStream::set_write_timeout`.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.write_timeout.set(timeout);
        Ok(())
    }

    /// As `TcpStream::set_nonblocking`: a read returns `WouldBlock` when
    /// nothing has arrived.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.nonblocking.set(nonblocking);
        Ok(())
    }

    fn read_some(&self, buf: &mut [u8]) -> io::Result<usize> {
        #[cfg(target_arch = "wasm32")]
        {
            let timeout = if self.nonblocking.get() {
                Some(0)
            } else {
                self.read_timeout.get().map(ms)
            };
            let max = buf.len().min(u32::MAX as usize) as u32;
            match self.conn.read(max, timeout) {
                Ok(data) => {
                    let n = data.len().min(buf.len());
                    buf[..n].copy_from_slice(&data[..n]);
                    Ok(n)
                }
                Err(host::Error::Timeout(_)) if self.nonblocking.get() => {
                    Err(io::ErrorKind::WouldBlock.into())
                }
                Err(e) => Err(to_io(e)),
            }
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let _ = buf;
            Err(io::Error::other(no_host(&self.addr).to_string()))
        }
    }

    fn write_all_of(&self, data: &[u8]) -> io::Result<()> {
        #[cfg(target_arch = "wasm32")]
        {
            self.conn
                .write(data, self.write_timeout.get().map(ms))
                .map_err(to_io)
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let _ = data;
            Err(io::Error::other(no_host(&self.addr).to_string()))
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn no_host(addr: &str) -> Error {
    Error::new(format!(
        "TLS to {addr}: TLS connections are made by the outbox-relay host (not available natively)"
    ))
}

#[cfg(target_arch = "wasm32")]
fn from_wire(e: host::Error) -> String {
    match e {
        host::Error::Denied(m)
        | host::Error::Timeout(m)
        | host::Error::Handshake(m)
        | host::Error::Closed(m)
        | host::Error::Io(m) => m,
    }
}

/// The host's error as an `io::Error` of the kind `std` would give, so
/// [`super::is_closed`], [`super::is_denied`] and time-out checks work alike.
#[cfg(target_arch = "wasm32")]
fn to_io(e: host::Error) -> io::Error {
    let kind = match &e {
        host::Error::Denied(_) => io::ErrorKind::PermissionDenied,
        host::Error::Timeout(_) => io::ErrorKind::TimedOut,
        host::Error::Closed(_) => io::ErrorKind::ConnectionReset,
        host::Error::Handshake(_) => io::ErrorKind::InvalidData,
        host::Error::Io(_) => io::ErrorKind::Other,
    };
    io::Error::new(kind, from_wire(e))
}

impl io::Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_some(buf)
    }
}

impl io::Read for &TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_some(buf)
    }
}

impl io::Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all_of(buf).map(|()| buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.write_all_of(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl io::Write for &TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all_of(buf).map(|()| buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.write_all_of(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A connection to a broker: plain TCP, or TLS held by the host. The
/// methods a transport uses on a `TcpStream` work on both.
pub enum Stream {
    Plain(TcpStream),
    Tls(TlsStream),
}

impl Stream {
    /// Connects to `addr`, over TLS if `tls` (see [`connect`] and
    /// [`TlsStream::connect`]).
    pub fn connect(addr: &str, tls: bool, timeouts: impl Into<Timeouts>) -> Result<Stream> {
        if tls {
            TlsStream::connect(addr, timeouts).map(Stream::Tls)
        } else {
            connect(addr, timeouts).map(Stream::Plain)
        }
    }

    /// Whether this is a TLS connection.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.set_read_timeout(timeout),
            Stream::Tls(s) => s.set_read_timeout(timeout),
        }
    }

    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.set_write_timeout(timeout),
            Stream::Tls(s) => s.set_write_timeout(timeout),
        }
    }

    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.set_nonblocking(nonblocking),
            Stream::Tls(s) => s.set_nonblocking(nonblocking),
        }
    }
}

impl io::Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl io::Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match *self {
            Stream::Plain(s) => (&*s).read(buf),
            Stream::Tls(s) => (&*s).read(buf),
        }
    }
}

impl io::Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(buf),
            Stream::Tls(s) => s.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

impl io::Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match *self {
            Stream::Plain(s) => (&*s).write(buf),
            Stream::Tls(s) => (&*s).write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match *self {
            Stream::Plain(s) => (&*s).write_all(buf),
            Stream::Tls(s) => (&*s).write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match *self {
            Stream::Plain(s) => (&*s).flush(),
            Stream::Tls(s) => (&*s).flush(),
        }
    }
}
