//! What a plugin instance may touch: its WASI context (no environment, only the
//! directories and TCP addresses its target grants), its memory cap, and the
//! stderr buffer that failures report.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::sockets::{SocketAddrUse, WasiSocketsCtxView};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::outbox::relay::{http, log, signing, types};
use super::http::HttpGate;
use super::tls::TlsDialer;
use super::wasi_guard::{Guard, GuardedSockets};
use crate::config::SandboxConfig;
use crate::keys::SigningGrant;
use crate::sandbox_address::HostPort;

/// The data of one plugin instance's `Store`.
pub struct PluginState {
    wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limits: SandboxLimits,
    pub(super) plugin: Arc<str>,
    pub(super) target: Arc<str>,
    /// When the current call must end; checked on every epoch tick.
    pub(super) deadline: Instant,
    /// The keys this instance's target may sign with.
    signing: SigningGrant,
    /// The hosts this instance may reach over HTTP.
    http: HttpGate,
    /// Its caps on sockets and files, and the names it may look up.
    pub(super) guard: Guard,
    /// Where and how it may open TLS connections.
    pub(super) tls: TlsDialer,
}

impl PluginState {
    pub fn new(
        plugin: Arc<str>,
        target: Arc<str>,
        sandbox: &SandboxConfig,
        stderr: GuestStderr,
        signing: SigningGrant,
        http: HttpGate,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, String> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stderr(stderr);
        if sandbox.stdout_for(&plugin) {
            wasi.stdout(tokio::io::stdout());
        }
        for (guest, host) in &sandbox.dirs {
            std::fs::create_dir_all(host)
                .map_err(|e| format!("cannot create sandbox directory {}: {e}", host.display()))?;
            wasi.preopened_dir(host, guest, FsPerms::ReadWrite)
                .map_err(|e| format!("cannot map {} into the sandbox: {e}", host.display()))?;
        }
        // Sockets: TCP connect to the allowed addresses only; every other use
        // (UDP, listening, other addresses) is refused, and logged so an
        // operator can see what a plugin tried. TCP stays on even when
        // nothing is allowed, so that every connection attempt reaches the
        // check below and is logged (WASI's own switch refuses silently).
        // Name lookups are on only for the host names in `allow_tcp`, and
        // answered from the addresses resolved here ([`super::wasi_guard`]):
        // a guest's lookup never reaches the host's resolver, which would be
        // a channel out and, flooded, would hold the host's blocking threads.
        let resolved = resolve_allowed(&sandbox.allow_tcp);
        let allowed: Arc<HashSet<SocketAddr>> = Arc::new(
            resolved
                .iter()
                .flat_map(|(_, addrs)| addrs.iter().copied())
                .collect(),
        );
        let guard = Guard::new(
            sandbox.max_sockets,
            sandbox.max_files,
            sandbox.dirs.len(),
            resolved.iter().map(|(entry, addrs)| {
                (
                    entry.host().to_string(),
                    addrs.iter().map(SocketAddr::ip).collect(),
                )
            }),
        );
        let tls = TlsDialer::new(
            resolved
                .iter()
                .map(|(entry, addrs)| (*entry, addrs.as_slice())),
            tls,
            sandbox.tls.as_ref().is_some_and(|t| t.has_client_cert()),
        );
        wasi.allow_udp(false)
            .allow_tcp(true)
            .allow_ip_name_lookup(!guard.lookup_names.is_empty());
        let (who, whom) = (plugin.clone(), target.clone());
        wasi.socket_addr_check(move |addr, usage| {
            let ok = match usage {
                SocketAddrUse::TcpConnect => allowed.contains(&addr),
                // The implicit bind before a connect (any address, any port),
                // even when nothing is allowed: the connect is then refused
                // and logged with the address the plugin wanted.
                SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
                _ => false,
            };
            if !ok {
                tracing::warn!(plugin = &*who, target = &*whom, %addr, ?usage,
                    "socket use denied by the sandbox (not in sandbox.allow_tcp)");
            }
            Box::pin(async move { ok })
        });
        let limits = SandboxLimits {
            memory_bytes: sandbox.memory_mb as usize * 1024 * 1024,
            memory_total: 0,
            others: StoreLimitsBuilder::new()
                .instances(16)
                .tables(super::MAX_TABLES)
                .table_elements(100_000)
                .memories(super::MAX_MEMORIES)
                .trap_on_grow_failure(true)
                .build(),
        };
        Ok(Self {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits,
            plugin,
            target,
            deadline: Instant::now(),
            signing,
            http,
            guard,
            tls,
        })
    }

    /// Whether another socket or TLS connection may be opened (logs a refusal).
    pub(super) fn may_open_socket(&mut self) -> bool {
        self.guard
            .may_open_socket(&mut self.table, (&self.plugin, &self.target))
    }

    /// The sockets view of this instance, with its guard.
    pub(super) fn guarded_sockets(&mut self) -> GuardedSockets<'_> {
        GuardedSockets::new(
            WasiSocketsCtxView {
                ctx: self.wasi.sockets(),
                table: &mut self.table,
            },
            &mut self.guard,
            (&self.plugin, &self.target),
        )
    }

    pub(super) fn table_mut(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

/// An instance's memory cap, and wasmtime's [`StoreLimits`] for the rest
/// (instances, tables). The cap is for all the instance's linear memories
/// together (wasmtime asks per memory, without saying which): growing past
/// it fails the call with a [`MemoryLimitExceeded`], which the host
/// recognises by its type.
pub(super) struct SandboxLimits {
    memory_bytes: usize,
    /// What the instance's memories have grown to, together. Never given
    /// back on a failed grow (wasmtime reports some that never asked):
    /// counting too much is the safe side, and a failed grow traps anyway.
    memory_total: usize,
    others: StoreLimits,
}

/// The guest asked for more linear memory than its sandbox's `memory_mb`.
#[derive(Debug, thiserror::Error)]
#[error("growing memory to {desired} bytes in all, past the limit of {limit} bytes")]
pub(super) struct MemoryLimitExceeded {
    pub desired: usize,
    pub limit: usize,
}

impl ResourceLimiter for SandboxLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .memory_total
            .saturating_add(desired.saturating_sub(current));
        if total > self.memory_bytes {
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                desired: total,
                limit: self.memory_bytes,
            }));
        }
        let grown = self.others.memory_growing(current, desired, maximum)?;
        if grown {
            self.memory_total = total;
        }
        Ok(grown)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.others.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.others.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.others.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.others.instances()
    }

    fn tables(&self) -> usize {
        self.others.tables()
    }

    fn memories(&self) -> usize {
        self.others.memories()
    }
}

/// Resolves the allowed `host:port` pairs to socket addresses once, at
/// instance creation: the addresses a connect may go to, and the answers
/// the instance's own name lookups get.
fn resolve_allowed(entries: &[HostPort]) -> Vec<(&HostPort, Vec<SocketAddr>)> {
    entries
        .iter()
        .map(
            |entry| match (entry.host(), entry.port()).to_socket_addrs() {
                Ok(addrs) => (entry, addrs.collect()),
                Err(e) => {
                    tracing::warn!(%entry, error = %e, "cannot resolve an allowed address");
                    (entry, Vec::new())
                }
            },
        )
        .collect()
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for PluginState {}

impl signing::Host for PluginState {
    fn algorithm(&mut self, key: String) -> Result<String, String> {
        self.signing.algorithm(&key, &self.target)
    }

    fn sign(&mut self, key: String, message: Vec<u8>) -> Result<Vec<u8>, String> {
        let result = self.signing.sign(&key, &self.target, &message);
        if let Err(e) = &result {
            tracing::warn!(plugin = &*self.plugin, target = &*self.target, key, error = %e, "signing refused");
        }
        result
    }
}

impl http::Host for PluginState {
    async fn send(
        &mut self,
        requests: Vec<http::Request>,
    ) -> Vec<Result<http::Response, http::Error>> {
        self.http.send(&self.plugin, &self.target, requests).await
    }

    fn allowed(&mut self, url: String) -> Result<(), http::Error> {
        self.http
            .check(&self.plugin, &self.target, &url)
            .map(|_| ())
    }
}

impl log::Host for PluginState {
    fn log(&mut self, level: log::Level, message: String) {
        let (plugin, target) = (&*self.plugin, &*self.target);
        // One record per call: a line break (or any control character) is
        // escaped, so a plugin cannot print lines that look like the host's.
        let message = one_line(&message);
        match level {
            log::Level::Trace => tracing::trace!(plugin, target, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, target, "{message}"),
            log::Level::Info => tracing::info!(plugin, target, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, target, "{message}"),
            log::Level::Error => tracing::error!(plugin, target, "{message}"),
        }
    }
}

/// `text` with its control characters (line breaks, escape sequences)
/// escaped, tabs kept.
fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// A bounded buffer for a guest's stderr. It keeps the first `capacity` bytes
/// written since the last [`GuestStderr::take`] and counts the rest, so a guest
/// that writes without end costs the host nothing but the count.
#[derive(Clone)]
pub struct GuestStderr {
    inner: Arc<Mutex<StderrBuf>>,
}

struct StderrBuf {
    capacity: usize,
    bytes: Vec<u8>,
    dropped: u64,
}

impl GuestStderr {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(StderrBuf {
                capacity,
                bytes: Vec::new(),
                dropped: 0,
            })),
        }
    }

    fn push(&self, data: &[u8]) {
        let mut buf = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let room = buf.capacity.saturating_sub(buf.bytes.len());
        let kept = room.min(data.len());
        buf.bytes.extend_from_slice(&data[..kept]);
        buf.dropped += (data.len() - kept) as u64;
    }

    /// Returns what was written since the last call, and clears it.
    pub fn take(&self) -> String {
        let mut buf = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut text = String::from_utf8_lossy(&buf.bytes).into_owned();
        if buf.dropped > 0 {
            text.push_str(&format!(" [... {} more bytes dropped]", buf.dropped));
        }
        buf.bytes.clear();
        buf.dropped = 0;
        text
    }
}

impl IsTerminal for GuestStderr {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStderr {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for GuestStderr {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestStderr {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestStderr {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_cap_is_for_all_memories_together() {
        const MIB: usize = 1024 * 1024;
        let mut limits = SandboxLimits {
            memory_bytes: 64 * MIB,
            memory_total: 0,
            others: StoreLimitsBuilder::new().memories(4).build(),
        };
        // Two memories created at 1 MiB, each grown to 30 MiB: 60 MiB in all.
        for _ in 0..2 {
            assert!(limits.memory_growing(0, MIB, None).unwrap());
            assert!(limits.memory_growing(MIB, 30 * MIB, None).unwrap());
        }
        // A third memory of 8 MiB would pass a cap per memory; not this one.
        let error = limits.memory_growing(0, 8 * MIB, None).unwrap_err();
        let exceeded = error.downcast_ref::<MemoryLimitExceeded>().unwrap();
        assert_eq!((exceeded.desired, exceeded.limit), (68 * MIB, 64 * MIB));
        // A grow within the rest still works.
        assert!(limits.memory_growing(0, 4 * MIB, None).unwrap());
    }

    #[test]
    fn a_plugin_log_message_stays_on_one_line() {
        assert_eq!(one_line("plain\ttext"), "plain\ttext");
        assert_eq!(
            one_line("ok\n2026-12-01T00:00:00Z INFO delivered target=other\r\x1b[2K"),
            "ok\\n2026-12-01T00:00:00Z INFO delivered target=other\\r\\u{1b}[2K"
        );
    }

    #[test]
    fn stderr_is_bounded_and_cleared() {
        let s = GuestStderr::new(8);
        s.push(b"hello ");
        s.push(b"world, and more");
        assert_eq!(s.take(), "hello wo [... 13 more bytes dropped]");
        assert_eq!(s.take(), "");
    }
}
