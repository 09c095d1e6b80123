//! `outbox:relay/tls`: TLS connections that the host opens and holds for a
//! plugin.
//!
//! The guest names a `host:port`; the host connects only if the target's
//! `sandbox.allow_tcp` lists that very pair, to the addresses it resolved
//! when the instance started (as for plain sockets), runs the handshake with
//! the target's [`TlsSettings`](crate::tls::TlsSettings) (the system roots
//! plus `sandbox.tls.ca`, the host name always checked, the client
//! certificate presented when asked for), and hands the guest a connection
//! to read and write. The certificates and the client key stay in the host.
//! A connection counts against `sandbox.max_sockets` like a socket.
//!
//! Why an import of our own rather than `wasi:tls`: see docs/plugins.md
//! ("TLS").

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use wasmtime::component::Resource;

use super::bindings::outbox::relay::tls::{self as wit, Error};
use super::sandbox::PluginState;
use crate::sandbox_address::HostPort;
use crate::tls::{AskedRecorder, Failure, Side, TlsSettings};

/// The most one `read` hands back.
const MAX_READ: u32 = 256 * 1024;

/// One connection held for a guest: plain until its handshake, then TLS.
pub struct Connection {
    link: Link,
    /// The host name the certificate is checked for (errors name it too).
    host: String,
    client: Arc<rustls::ClientConfig>,
    client_cert: bool,
    /// Whether the server asked for a client certificate in the handshake.
    asked: Arc<AtomicBool>,
    /// Whether anything was read since the handshake.
    received: bool,
}

enum Link {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// A write failed or timed out (part of it may have gone), or a
    /// handshake did.
    Broken,
}

/// What an instance may dial over TLS, and how.
pub struct TlsDialer {
    /// Each `allow_tcp` pair (host in lower case) with its addresses,
    /// resolved when the instance started.
    endpoints: HashMap<(String, u16), Vec<SocketAddr>>,
    client: Result<Arc<rustls::ClientConfig>, String>,
    client_cert: bool,
}

/// The client of a target without `sandbox.tls`: the system roots only.
static DEFAULT_CLIENT: LazyLock<Result<Arc<rustls::ClientConfig>, String>> = LazyLock::new(|| {
    TlsSettings {
        system_roots: true,
        ..TlsSettings::default()
    }
    .client()
    .map_err(|e| e.to_string())
});

impl TlsDialer {
    /// `client`: the target's TLS client (`None`: the system roots only).
    pub fn new<'a>(
        resolved: impl IntoIterator<Item = (&'a HostPort, &'a [SocketAddr])>,
        client: Option<Arc<rustls::ClientConfig>>,
        client_cert: bool,
    ) -> Self {
        let endpoints = resolved
            .into_iter()
            .map(|(entry, addrs)| ((entry.host().to_string(), entry.port()), addrs.to_vec()))
            .collect();
        let client = match client {
            Some(client) => Ok(client),
            None => DEFAULT_CLIENT.clone(),
        };
        Self {
            endpoints,
            client,
            client_cert,
        }
    }
}

fn millis(ms: u32) -> Duration {
    Duration::from_millis(u64::from(ms))
}

/// What a failed connect, read or write tells the guest.
fn failure(e: &io::Error, host: &str, side: Side) -> Error {
    if let Failure::Handshake(why) = crate::tls::explain(e, host, side) {
        return Error::Handshake(why);
    }
    use io::ErrorKind::*;
    match e.kind() {
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected => {
            Error::Closed(format!("{host} closed the connection: {e}"))
        }
        TimedOut => Error::Timeout(format!("{host}: {e}")),
        _ => Error::Io(format!("{host}: {e}")),
    }
}

impl Connection {
    fn unusable(&self) -> Error {
        Error::Io(format!(
            "{}: the connection is unusable after a failed write or handshake",
            self.host
        ))
    }

    fn side(&self) -> Side {
        Side {
            has_cert: self.client_cert,
            asked: Some(self.asked.load(Ordering::Relaxed)),
        }
    }

    fn failure(&self, e: &io::Error) -> Error {
        let side = self.side();
        match failure(e, &self.host, side) {
            Error::Closed(_)
                if matches!(self.link, Link::Tls(_))
                    && !side.has_cert
                    && side.asked == Some(true)
                    && !self.received =>
            {
                Error::Handshake(crate::tls::closed_after_handshake(&self.host))
            }
            other => other,
        }
    }

    /// Runs the handshake on the plain connection.
    async fn start_tls(&mut self) -> Result<(), Error> {
        let Link::Plain(tcp) = std::mem::replace(&mut self.link, Link::Broken) else {
            return Err(Error::Io(format!(
                "{}: start-tls on a connection that is not a plain one",
                self.host
            )));
        };
        let name = ServerName::try_from(self.host.clone()).map_err(|e| {
            Error::Denied(format!("{:?} is not a name TLS can check: {e}", self.host))
        })?;
        let (client, asked) = AskedRecorder::install(&self.client);
        self.asked = asked;
        let tls = tokio_rustls::TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .map_err(|e| self.failure(&e))?;
        self.link = Link::Tls(Box::new(tls));
        self.received = false;
        Ok(())
    }

    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.link {
            Link::Plain(s) => s.read(buf).await,
            Link::Tls(s) => s.read(buf).await,
            Link::Broken => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.link {
            Link::Plain(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Link::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Link::Broken => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    fn protocol(&self) -> Option<String> {
        let Link::Tls(s) = &self.link else {
            return None;
        };
        Some(match s.get_ref().1.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".into(),
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".into(),
            other => format!("{other:?}"),
        })
    }
}

/// `timeout` around `work`, or none.
async fn within<T>(
    timeout_ms: Option<u32>,
    work: impl Future<Output = T>,
) -> Result<T, tokio::time::error::Elapsed> {
    match timeout_ms {
        Some(ms) => tokio::time::timeout(millis(ms), work).await,
        None => Ok(work.await),
    }
}

impl PluginState {
    /// A plain TCP connection to `addr`, if the sandbox allows it.
    async fn dial(&mut self, addr: &str, timeout: Duration) -> Result<Connection, Error> {
        let entry: HostPort = addr
            .parse()
            .map_err(|e| Error::Denied(format!("{addr:?} is not a host:port: {e}")))?;
        let key = (entry.host().to_string(), entry.port());
        let Some(addrs) = self.tls.endpoints.get(&key).cloned() else {
            let detail = format!("{addr} is not in sandbox.allow_tcp");
            self.guard
                .refused((&self.plugin, &self.target), "a TLS connection", &detail);
            return Err(Error::Denied(format!(
                "the sandbox does not allow connecting to {addr}: add it to the target's `sandbox.allow_tcp`"
            )));
        };
        if !self.may_open_socket() {
            return Err(Error::Denied(format!(
                "{} sockets and connections are open (sandbox.max_sockets)",
                self.guard.max_sockets
            )));
        }
        let client = self.tls.client.clone().map_err(Error::Io)?;
        let connect = async {
            let mut last = None;
            for a in &addrs {
                match TcpStream::connect(a).await {
                    Ok(tcp) => {
                        tcp.set_nodelay(true).ok();
                        return Ok(tcp);
                    }
                    Err(e) => {
                        last = Some(Error::Io(format!("cannot connect to {addr} ({a}): {e}")));
                    }
                }
            }
            Err(last.unwrap_or_else(|| {
                Error::Io(format!(
                    "{addr} resolved to no address when the instance started"
                ))
            }))
        };
        let tcp = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| Error::Timeout(format!("connecting to {addr} took over {timeout:?}")))??;
        Ok(Connection {
            link: Link::Plain(tcp),
            host: entry.host().to_string(),
            client,
            client_cert: self.tls.client_cert,
            asked: Arc::default(),
            received: false,
        })
    }

    fn connection(&mut self, conn: &Resource<Connection>) -> wasmtime::Result<&mut Connection> {
        Ok(self.table.get_mut(conn)?)
    }
}

impl wit::Host for PluginState {
    async fn connect(
        &mut self,
        addr: String,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<Resource<Connection>, Error>> {
        let started = Instant::now();
        let timeout = millis(timeout_ms);
        let mut conn = match self.dial(&addr, timeout).await {
            Ok(conn) => conn,
            Err(e) => return Ok(Err(e)),
        };
        let left = timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, conn.start_tls()).await {
            Ok(Ok(())) => Ok(Ok(self.table.push(conn)?)),
            Ok(Err(e)) => Ok(Err(e)),
            Err(_) => Ok(Err(Error::Timeout(format!(
                "connecting to {addr} and the TLS handshake took over {timeout:?}"
            )))),
        }
    }

    async fn open(
        &mut self,
        addr: String,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<Resource<Connection>, Error>> {
        match self.dial(&addr, millis(timeout_ms)).await {
            Ok(conn) => Ok(Ok(self.table.push(conn)?)),
            Err(e) => Ok(Err(e)),
        }
    }
}

impl wit::HostConnection for PluginState {
    async fn read(
        &mut self,
        conn: Resource<Connection>,
        max: u32,
        timeout_ms: Option<u32>,
    ) -> wasmtime::Result<Result<Vec<u8>, Error>> {
        let conn = self.connection(&conn)?;
        if matches!(conn.link, Link::Broken) {
            return Ok(Err(conn.unusable()));
        }
        let mut buf = vec![0; max.clamp(1, MAX_READ) as usize];
        // A read is cancel-safe: what is not handed over stays queued.
        Ok(match within(timeout_ms, conn.read(&mut buf)).await {
            Ok(Ok(n)) => {
                conn.received |= n > 0;
                buf.truncate(n);
                Ok(buf)
            }
            Ok(Err(e)) => Err(conn.failure(&e)),
            Err(_) => Err(Error::Timeout(format!(
                "{}: nothing to read within {} ms",
                conn.host,
                timeout_ms.unwrap_or(0)
            ))),
        })
    }

    async fn write(
        &mut self,
        conn: Resource<Connection>,
        data: Vec<u8>,
        timeout_ms: Option<u32>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let conn = self.connection(&conn)?;
        if matches!(conn.link, Link::Broken) {
            return Ok(Err(conn.unusable()));
        }
        let outcome = match within(timeout_ms, conn.write(&data)).await {
            Ok(Ok(())) => return Ok(Ok(())),
            Ok(Err(e)) => conn.failure(&e),
            Err(_) => Error::Timeout(format!(
                "{}: writing {} bytes took over {} ms",
                conn.host,
                data.len(),
                timeout_ms.unwrap_or(0)
            )),
        };
        // Part of it may have gone: nothing more can be written after it.
        conn.link = Link::Broken;
        Ok(Err(outcome))
    }

    async fn start_tls(
        &mut self,
        conn: Resource<Connection>,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<(), Error>> {
        let conn = self.connection(&conn)?;
        Ok(match within(Some(timeout_ms), conn.start_tls()).await {
            Ok(result) => result,
            Err(_) => {
                conn.link = Link::Broken;
                Err(Error::Timeout(format!(
                    "{}: the TLS handshake took over {timeout_ms} ms",
                    conn.host
                )))
            }
        })
    }

    fn protocol(&mut self, conn: Resource<Connection>) -> wasmtime::Result<Option<String>> {
        Ok(self.connection(&conn)?.protocol())
    }

    fn drop(&mut self, conn: Resource<Connection>) -> wasmtime::Result<()> {
        self.table.delete(conn)?;
        Ok(())
    }
}
