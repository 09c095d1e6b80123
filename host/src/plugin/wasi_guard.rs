//! WASI calls the sandbox checks before wasmtime-wasi runs them: the
//! functions below replace (shadow) wasmtime-wasi's own in the linker, check
//! the instance's [`Guard`], and then call the original.
//!
//! - `create-tcp-socket`, `create-udp-socket`: at most `sandbox.max_sockets`
//!   sockets open at once (a socket is a host descriptor; one `deliver` once
//!   held 19,973 of them).
//! - `resolve-addresses`: only the host names in `sandbox.allow_tcp`, and
//!   answered from the addresses they resolved to when the instance started
//!   (one address, IPv4 first), so a lookup never reaches the host's resolver:
//!   that would be a channel out, and a flood of lookups on a slow resolver
//!   once held the host's blocking threads and stalled other targets.
//! - `descriptor.open-at`: at most `sandbox.max_files` files and directories
//!   open at once, besides the mapped directories (a file stays open while a
//!   stream of it lives, so streams count too: [`open_files`]).
//! - `descriptor.read-directory`: a listing (a copy of the directory held
//!   in the host) counts as an open file; 3,000 held listings once took
//!   2.3 GB of the relay's memory.
//! - `descriptor.symlink-at`, `descriptor.link-at`: refused (a link left in a
//!   mapped directory pointing outside it would be followed by the
//!   operator's log shippers and backups, if not by the sandbox).
//!
//! A refusal is an error the guest sees (`new-socket-limit`, `quota`,
//! `permanent-resolver-failure`, `not-permitted`), logged once per instance
//! and kind. Live sockets and files are counted in the instance's resource
//! table, so a dropped handle frees its place at once.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::filesystem::types as fs;
use wasmtime_wasi::p2::bindings::sockets::{
    ip_name_lookup, network, tcp_create_socket, udp_create_socket,
};
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, ReaddirIterator, SocketResult, TcpSocket, UdpSocket,
};
use wasmtime_wasi::sockets::WasiSocketsCtxView;

use super::sandbox::PluginState;

/// The `wasi:filesystem/types` version of wasmtime-wasi 48's WIT, under
/// which the shadowing functions are defined (guests importing an older
/// 0.2.x match it). A test checks that the shadows take effect.
pub(super) const FILESYSTEM_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// What one instance may hold and look up.
#[derive(Debug, Default)]
pub struct Guard {
    pub max_sockets: usize,
    pub max_files: usize,
    /// Directories mapped into the guest (each a descriptor in the table
    /// that `max_files` does not count).
    pub mapped_dirs: usize,
    /// Host names the guest may look up (lower case, no trailing dot), with
    /// the addresses they resolved to when the instance started.
    pub lookup_names: HashMap<String, Vec<IpAddr>>,
    /// Kinds of refusal already logged by this instance.
    logged: HashSet<&'static str>,
}

impl Guard {
    /// `hosts`: each `allow_tcp` host with its addresses; those that are
    /// IP addresses need no lookup and are left out.
    pub fn new(
        max_sockets: u32,
        max_files: u32,
        mapped_dirs: usize,
        hosts: impl IntoIterator<Item = (String, Vec<IpAddr>)>,
    ) -> Self {
        let mut lookup_names: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for (host, addrs) in hosts {
            if host.trim_matches(['[', ']']).parse::<IpAddr>().is_err() {
                let known = lookup_names.entry(normalised(&host)).or_default();
                for addr in addrs {
                    if !known.contains(&addr) {
                        known.push(addr);
                    }
                }
            }
        }
        // One address answers a lookup (an address literal is the one
        // answer wasmtime-wasi makes without a resolver): IPv4 first, as most
        // brokers listen there.
        for addrs in lookup_names.values_mut() {
            addrs.sort_by_key(|a| a.is_ipv6());
        }
        Self {
            max_sockets: max_sockets as usize,
            max_files: max_files as usize,
            mapped_dirs,
            lookup_names,
            logged: HashSet::new(),
        }
    }

    /// What a lookup of `name` is answered with: `None` if the name may not
    /// be looked up, else its addresses (empty if it did not resolve).
    pub fn look_up(&self, name: &str) -> Option<&[IpAddr]> {
        self.lookup_names.get(&normalised(name)).map(Vec::as_slice)
    }

    /// Whether another socket or TLS connection may be opened: all of them
    /// together are at most `max_sockets` (logs the refusal).
    pub fn may_open_socket(&mut self, table: &mut ResourceTable, who: (&str, &str)) -> bool {
        let open = live::<TcpSocket>(table)
            + live::<UdpSocket>(table)
            + live::<super::tls::Connection>(table);
        if open < self.max_sockets {
            return true;
        }
        let detail = format!(
            "{open} sockets and TLS connections open, sandbox.max_sockets = {}",
            self.max_sockets
        );
        self.refused(who, "a new socket", &detail);
        false
    }

    /// Logs a refusal, once per instance and kind.
    pub fn refused(&mut self, state: (&str, &str), kind: &'static str, detail: &str) {
        if self.logged.insert(kind) {
            let (plugin, target) = state;
            tracing::warn!(
                plugin,
                target,
                detail,
                "{kind} refused by the sandbox (logged once per instance)"
            );
        }
    }
}

fn normalised(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Live entries of type `T` in `table`.
fn live<T: 'static>(table: &mut ResourceTable) -> usize {
    table.iter_mut().filter(|e| e.is::<T>()).count()
}

/// Files (and directories) the instance holds: its descriptors, and its
/// streams beyond the two of each TCP connection. A stream keeps its file
/// open after the descriptor it came from is dropped, so a guest that
/// opened files, took a stream of each and dropped the descriptors once
/// held 20,000 host files under a cap that counted descriptors only.
/// Directory listings count too: each holds a copy of its directory.
/// (Each TCP socket excuses two streams, connected or not, so an instance
/// holds at most `max_files + 2 × max_sockets` streams and files.)
fn open_files(table: &mut ResourceTable) -> usize {
    let (mut files, mut streams, mut sockets) = (0usize, 0usize, 0usize);
    for entry in table.iter_mut() {
        if entry.is::<Descriptor>() || entry.is::<ReaddirIterator>() {
            files += 1;
        } else if entry.is::<DynInputStream>() || entry.is::<DynOutputStream>() {
            streams += 1;
        } else if entry.is::<TcpSocket>() {
            sockets += 1;
        }
    }
    files + streams.saturating_sub(2 * sockets)
}

/// Replaces wasmtime-wasi's functions listed in the module docs in `linker`
/// (which already has them) with the guarded ones.
pub(super) fn shadow(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    tcp_create_socket::add_to_linker::<PluginState, Guarded>(linker, guarded)?;
    udp_create_socket::add_to_linker::<PluginState, Guarded>(linker, guarded)?;
    ip_name_lookup::add_to_linker::<PluginState, Guarded>(linker, guarded)?;
    shadow_filesystem(linker)?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The sockets view of an instance with its guard.
pub(super) struct GuardedSockets<'a> {
    inner: WasiSocketsCtxView<'a>,
    guard: &'a mut Guard,
    who: (&'a str, &'a str),
}

struct Guarded;

impl HasData for Guarded {
    type Data<'a> = GuardedSockets<'a>;
}

fn guarded(state: &mut PluginState) -> GuardedSockets<'_> {
    state.guarded_sockets()
}

impl<'a> GuardedSockets<'a> {
    pub(super) fn new(
        inner: WasiSocketsCtxView<'a>,
        guard: &'a mut Guard,
        who: (&'a str, &'a str),
    ) -> Self {
        Self { inner, guard, who }
    }

    /// Whether another socket may be opened (logs the refusal).
    fn may_open_socket(&mut self) -> bool {
        self.guard.may_open_socket(&mut *self.inner.table, self.who)
    }
}

impl network::Host for GuardedSockets<'_> {
    fn convert_error_code(
        &mut self,
        e: wasmtime_wasi::p2::SocketError,
    ) -> wasmtime::Result<network::ErrorCode> {
        network::Host::convert_error_code(&mut self.inner, e)
    }

    fn network_error_code(
        &mut self,
        e: Resource<network::Error>,
    ) -> wasmtime::Result<Option<network::ErrorCode>> {
        network::Host::network_error_code(&mut self.inner, e)
    }
}

impl network::HostNetwork for GuardedSockets<'_> {
    fn drop(&mut self, n: Resource<network::Network>) -> wasmtime::Result<()> {
        network::HostNetwork::drop(&mut self.inner, n)
    }
}

impl tcp_create_socket::Host for GuardedSockets<'_> {
    fn create_tcp_socket(
        &mut self,
        family: network::IpAddressFamily,
    ) -> SocketResult<Resource<TcpSocket>> {
        if !self.may_open_socket() {
            return Err(network::ErrorCode::NewSocketLimit.into());
        }
        tcp_create_socket::Host::create_tcp_socket(&mut self.inner, family)
    }
}

impl udp_create_socket::Host for GuardedSockets<'_> {
    async fn create_udp_socket(
        &mut self,
        family: network::IpAddressFamily,
    ) -> SocketResult<Resource<UdpSocket>> {
        if !self.may_open_socket() {
            return Err(network::ErrorCode::NewSocketLimit.into());
        }
        udp_create_socket::Host::create_udp_socket(&mut self.inner, family).await
    }
}

impl ip_name_lookup::Host for GuardedSockets<'_> {
    fn resolve_addresses(
        &mut self,
        network: Resource<network::Network>,
        name: String,
    ) -> SocketResult<Resource<ip_name_lookup::ResolveAddressStream>> {
        let answer = match self.guard.look_up(&name) {
            Some([first, ..]) => first.to_string(),
            Some([]) => return Err(network::ErrorCode::NameUnresolvable.into()),
            None => {
                let detail = format!("{name:?} is not a host name in sandbox.allow_tcp");
                self.guard.refused(self.who, "a name lookup", &detail);
                return Err(network::ErrorCode::PermanentResolverFailure.into());
            }
        };
        // An address literal: wasmtime-wasi answers it at once, with no
        // resolver and no task.
        ip_name_lookup::Host::resolve_addresses(&mut self.inner, network, answer)
    }
}

impl ip_name_lookup::HostResolveAddressStream for GuardedSockets<'_> {
    fn resolve_next_address(
        &mut self,
        stream: Resource<ip_name_lookup::ResolveAddressStream>,
    ) -> SocketResult<Option<network::IpAddress>> {
        ip_name_lookup::HostResolveAddressStream::resolve_next_address(&mut self.inner, stream)
    }

    fn subscribe(
        &mut self,
        stream: Resource<ip_name_lookup::ResolveAddressStream>,
    ) -> wasmtime::Result<Resource<wasmtime_wasi::p2::DynPollable>> {
        ip_name_lookup::HostResolveAddressStream::subscribe(&mut self.inner, stream)
    }

    fn drop(
        &mut self,
        stream: Resource<ip_name_lookup::ResolveAddressStream>,
    ) -> wasmtime::Result<()> {
        ip_name_lookup::HostResolveAddressStream::drop(&mut self.inner, stream)
    }
}

/// An `FsResult` as the component function's result: a filesystem error
/// goes to the guest, a trap stays a trap.
fn to_guest<T>(r: wasmtime_wasi::p2::FsResult<T>) -> wasmtime::Result<Result<T, fs::ErrorCode>> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(e) => Ok(Err(e.downcast()?)),
    }
}

fn shadow_filesystem(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    let mut types = linker.instance(FILESYSTEM_TYPES)?;
    types.func_wrap(
        "[method]descriptor.symlink-at",
        |mut store, (_dir, _old, new): (Resource<Descriptor>, String, String)| {
            let state = store.data_mut();
            state.refuse_link(&new);
            Ok((Err::<(), _>(fs::ErrorCode::NotPermitted),))
        },
    )?;
    types.func_wrap(
        "[method]descriptor.link-at",
        |mut store,
         (_dir, _flags, _old, _new_dir, new): (
            Resource<Descriptor>,
            fs::PathFlags,
            String,
            Resource<Descriptor>,
            String,
        )| {
            let state = store.data_mut();
            state.refuse_link(&new);
            Ok((Err::<(), _>(fs::ErrorCode::NotPermitted),))
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.read-directory",
        |mut store, (dir,): (Resource<Descriptor>,)| {
            Box::new(async move {
                let state = store.data_mut();
                if !state.may_open_file("a directory listing") {
                    return Ok((Err(fs::ErrorCode::Quota),));
                }
                let mut view = state.filesystem();
                let listing = fs::HostDescriptor::read_directory(&mut view, dir).await;
                Ok((to_guest(listing)?,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store,
         (dir, path_flags, path, open_flags, flags): (
            Resource<Descriptor>,
            fs::PathFlags,
            String,
            fs::OpenFlags,
            fs::DescriptorFlags,
        )| {
            Box::new(async move {
                let state = store.data_mut();
                if !state.may_open_file(&path) {
                    return Ok((Err(fs::ErrorCode::Quota),));
                }
                let mut view = state.filesystem();
                let opened = fs::HostDescriptor::open_at(
                    &mut view, dir, path_flags, path, open_flags, flags,
                )
                .await;
                Ok((to_guest(opened)?,))
            })
        },
    )?;
    Ok(())
}

impl PluginState {
    /// Whether another file may be opened (logs the refusal).
    fn may_open_file(&mut self, path: &str) -> bool {
        let open = open_files(self.table_mut()).saturating_sub(self.guard.mapped_dirs);
        if open < self.guard.max_files {
            return true;
        }
        let detail = format!(
            "opening {path:?} with {open} open, sandbox.max_files = {}",
            self.guard.max_files
        );
        let (plugin, target) = (self.plugin.clone(), self.target.clone());
        self.guard
            .refused((&plugin, &target), "opening a file", &detail);
        false
    }

    fn refuse_link(&mut self, path: &str) {
        let (plugin, target) = (self.plugin.clone(), self.target.clone());
        self.guard
            .refused((&plugin, &target), "creating a link", &format!("{path:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_host_names_of_allow_tcp_are_looked_up_and_from_what_they_resolved_to() {
        let broker: IpAddr = "10.1.2.3".parse().unwrap();
        let guard = Guard::new(
            16,
            64,
            0,
            [
                ("Broker.Internal".to_string(), vec![broker]),
                ("10.0.0.7".into(), vec!["10.0.0.7".parse().unwrap()]),
                ("[::1]".into(), vec!["::1".parse().unwrap()]),
                (
                    "dual.internal".into(),
                    vec!["::2".parse().unwrap(), "10.9.9.9".parse().unwrap()],
                ),
                ("gone.invalid".into(), vec![]),
            ],
        );
        assert_eq!(guard.look_up("broker.internal"), Some(&[broker][..]));
        assert_eq!(guard.look_up("BROKER.internal."), Some(&[broker][..]));
        assert_eq!(guard.look_up("gone.invalid"), Some(&[][..]));
        assert_eq!(guard.look_up("leak-4f2a.broker.internal"), None);
        assert_eq!(guard.look_up("internal"), None);
        assert_eq!(guard.look_up("10.0.0.7"), None);
        assert_eq!(
            guard.look_up("dual.internal").unwrap()[0],
            "10.9.9.9".parse::<IpAddr>().unwrap(),
            "IPv4 first"
        );
        assert_eq!(guard.lookup_names.len(), 3, "IP addresses need no lookup");
    }
}
