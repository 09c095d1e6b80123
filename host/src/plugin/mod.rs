//! The WebAssembly adapter of the transport port.
//!
//! A [`PluginRuntime`] owns one wasmtime [`Engine`] (component model, async,
//! epoch interruption) and an on-disk cache of compiled components. Loading a
//! plugin checks that it is a component built against this host's WIT package
//! version, then prepares an [`InstancePre`](wasmtime::component::InstancePre)
//! from which each relay worker makes its own long-lived instance
//! ([`WasmTransport`], [`WasmInjector`]).
//!
//! # Layout
//!
//! - `bindings`: the only `bindgen!`, the WIT names, and the borrowed
//!   [`EnvelopeRef`](bindings::EnvelopeRef) a batch is lowered from.
//! - `instance`: what every instance shares ([`PluginSpec`], the time limit,
//!   typed failures); `sandbox`: its WASI context, limits and host imports;
//!   `http`: the `outbox:relay/http` import.
//! - `wasm_transport`, `wasm_injector`: the two adapters, which do not know
//!   each other; `factory`: composes them per target and worker.
//! - `cache`: compiled components on disk.

mod bindings;
mod cache;
mod factory;
mod http;
mod instance;
#[cfg(test)]
mod memory_tests;
mod sandbox;
mod tls;
mod wasi_guard;
mod wasm_injector;
mod wasm_transport;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Component, Linker, types::ComponentItem};
use wasmtime::{Engine, Store};

pub use bindings::{INJECTOR_INTERFACE, TRANSPORT_INTERFACE, WIT_PACKAGE, WIT_VERSION};
use bindings::{InjectorPluginPre, TransportPlugin, TransportPluginPre};
pub use factory::{TargetPlugins, WasmTransportFactory};
pub use instance::PluginSpec;
pub use sandbox::{GuestStderr, PluginState};
pub use wasm_injector::WasmInjector;
pub use wasm_transport::WasmTransport;

/// A loaded transport.
pub type LoadedTransport = LoadedPlugin<TransportPluginPre<PluginState>>;
/// A loaded header injector.
pub type LoadedInjector = LoadedPlugin<InjectorPluginPre<PluginState>>;

/// How often the engine's epoch advances; the granularity of call time limits.
const EPOCH_TICK: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin {path}: cannot read the file: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("plugin {path}: {message}")]
    Invalid { path: String, message: String },
    #[error(
        "plugin {path}: built against {found}, but this host speaks {}@{}; rebuild it with a compatible outbox-relay-guest",
        WIT_PACKAGE,
        WIT_VERSION
    )]
    VersionMismatch { path: String, found: String },
    #[error("plugin {path}: does not export {wanted}; it exports: {exports}")]
    MissingExport {
        path: String,
        wanted: &'static str,
        exports: String,
    },
    #[error("plugin {path}: {message}")]
    Engine { path: String, message: String },
}

/// The most linear memories and tables a plugin's component may declare in
/// all its core instances (the store refuses more at instantiation; this
/// says so at load, with the counts). Rust guests have one memory.
const MAX_MEMORIES: usize = 4;
const MAX_TABLES: usize = 16;

/// Refuses a component that declares more memories or tables than the
/// sandbox allows, or whose needs cannot be known before it runs (it
/// instantiates modules or components it imports).
fn check_resources(path: &str, component: &Component) -> Result<(), PluginError> {
    let invalid = |message: String| PluginError::Invalid {
        path: path.to_string(),
        message,
    };
    let Some(needs) = component.resources_required() else {
        return Err(invalid(
            "instantiates modules or components it imports, so its memories cannot be bounded before it runs".into(),
        ));
    };
    if needs.num_memories as usize > MAX_MEMORIES || needs.num_tables as usize > MAX_TABLES {
        return Err(invalid(format!(
            "declares {} linear memories and {} tables; a plugin may have at most {MAX_MEMORIES} and {MAX_TABLES}",
            needs.num_memories, needs.num_tables
        )));
    }
    Ok(())
}

/// What `plugins check` prints about a component.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginInfo {
    pub path: String,
    pub sha256: String,
    pub kind: &'static str,
    pub exports: Vec<String>,
    pub imports: Vec<String>,
    pub cached: bool,
}

/// A compiled, checked component, ready to instantiate.
#[derive(Clone)]
pub struct LoadedPlugin<P> {
    pub name: Arc<str>,
    pub info: PluginInfo,
    pre: P,
}

/// The two kinds of plugin, by the interface they export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    Transport,
    Injector,
}

impl PluginKind {
    pub fn interface(self) -> &'static str {
        match self {
            PluginKind::Transport => TRANSPORT_INTERFACE,
            PluginKind::Injector => INJECTOR_INTERFACE,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            PluginKind::Transport => "transport",
            PluginKind::Injector => "header injector",
        }
    }
}

pub struct PluginRuntime {
    engine: Engine,
    linker: Linker<PluginState>,
    cache_dir: PathBuf,
    /// One pooled HTTP client for every plugin's `outbox:relay/http` calls.
    http: reqwest::Client,
}

impl PluginRuntime {
    pub fn new(cache_dir: &Path) -> Result<Self, PluginError> {
        let engine_error = |e: wasmtime::Error| PluginError::Engine {
            path: "(engine)".into(),
            message: format!("{e:#}"),
        };
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(engine_error)?;
        spawn_epoch_ticker(&engine);
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(engine_error)?;
        wasi_guard::shadow(&mut linker).map_err(engine_error)?;
        TransportPlugin::add_to_linker::<PluginState, wasmtime::component::HasSelf<PluginState>>(
            &mut linker,
            |state| state,
        )
        .map_err(engine_error)?;
        let http = http::HttpGate::client().map_err(|message| PluginError::Engine {
            path: "(http client)".into(),
            message,
        })?;
        Ok(Self {
            engine,
            linker,
            cache_dir: cache_dir.to_path_buf(),
            http,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The shared HTTP client (a cheap handle onto one connection pool).
    pub(crate) fn http_client(&self) -> reqwest::Client {
        self.http.clone()
    }

    /// Reads, checks and compiles (or loads from cache) the component at
    /// `path`, and checks that it exports `kind`'s interface at this host's version.
    fn load(
        &self,
        kind: PluginKind,
        path: &Path,
    ) -> Result<
        (
            Component,
            wasmtime::component::InstancePre<PluginState>,
            PluginInfo,
        ),
        PluginError,
    > {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|cause| PluginError::Read {
            path: shown.clone(),
            cause,
        })?;
        check_is_component(&shown, &bytes)?;
        let (component, sha256, cached) = cache::compile(&self.engine, &self.cache_dir, &bytes)
            .map_err(|e| PluginError::Invalid {
                path: shown.clone(),
                message: format!("not a valid component: {e:#}"),
            })?;
        let (exports, imports) = describe(&self.engine, &component);
        let info = PluginInfo {
            path: shown.clone(),
            sha256,
            kind: kind.label(),
            exports,
            imports,
            cached,
        };
        check_version(&shown, kind, &info)?;
        check_resources(&shown, &component)?;
        let instance_pre =
            self.linker
                .instantiate_pre(&component)
                .map_err(|e| PluginError::Invalid {
                    path: shown.clone(),
                    message: format!("imports something this host does not provide: {e:#}"),
                })?;
        Ok((component, instance_pre, info))
    }

    /// Loads the transport at `path`.
    pub fn load_transport(&self, name: &str, path: &Path) -> Result<LoadedTransport, PluginError> {
        let (_, instance_pre, info) = self.load(PluginKind::Transport, path)?;
        let pre = TransportPluginPre::new(instance_pre).map_err(|e| PluginError::Invalid {
            path: info.path.clone(),
            message: format!("does not match the transport world: {e:#}"),
        })?;
        Ok(LoadedPlugin {
            name: Arc::from(name),
            info,
            pre,
        })
    }

    /// Loads the header injector at `path`.
    pub fn load_injector(&self, name: &str, path: &Path) -> Result<LoadedInjector, PluginError> {
        let (_, instance_pre, info) = self.load(PluginKind::Injector, path)?;
        let pre = InjectorPluginPre::new(instance_pre).map_err(|e| PluginError::Invalid {
            path: info.path.clone(),
            message: format!("does not match the injector world: {e:#}"),
        })?;
        Ok(LoadedPlugin {
            name: Arc::from(name),
            info,
            pre,
        })
    }

    /// Loads a component of either kind, for `plugins check`.
    pub fn inspect(&self, path: &Path) -> Result<PluginInfo, PluginError> {
        match self.load(PluginKind::Transport, path) {
            Ok((_, _, info)) => Ok(info),
            Err(PluginError::MissingExport { .. }) => self
                .load(PluginKind::Injector, path)
                .map(|(_, _, info)| info),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn new_store(&self, state: PluginState) -> Store<PluginState> {
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(1);
        // Yield to tokio on every tick, so a busy guest never holds a worker
        // thread; trap once the call's deadline has passed.
        store.epoch_deadline_callback(|ctx| {
            if std::time::Instant::now() >= ctx.data().deadline {
                Err(wasmtime::Error::new(wasmtime::Trap::Interrupt))
            } else {
                Ok(wasmtime::UpdateDeadline::Yield(1))
            }
        });
        store
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is dropped.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the epoch thread; plugin time limits will not fire");
    }
}

/// Distinguishes "not wasm at all" and "a core module" from a component, so the
/// operator gets the right advice.
fn check_is_component(path: &str, bytes: &[u8]) -> Result<(), PluginError> {
    let invalid = |message: &str| PluginError::Invalid {
        path: path.to_string(),
        message: message.to_string(),
    };
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(invalid("not a WebAssembly file (no \\0asm header)"));
    }
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(invalid(
            "is a core WebAssembly module, not a component; build it for wasm32-wasip2 with outbox-relay-guest",
        ));
    }
    Ok(())
}

fn describe(engine: &Engine, component: &Component) -> (Vec<String>, Vec<String>) {
    let ty = component.component_type();
    let kind = |item: &ComponentItem| match item {
        ComponentItem::ComponentInstance(_) => "interface",
        ComponentItem::ComponentFunc(_) => "function",
        _ => "item",
    };
    let exports = ty
        .exports(engine)
        .map(|(name, item)| format!("{name} ({})", kind(&item.ty)))
        .collect();
    let imports = ty
        .imports(engine)
        .map(|(name, item)| format!("{name} ({})", kind(&item.ty)))
        .collect();
    (exports, imports)
}

fn check_version(path: &str, kind: PluginKind, info: &PluginInfo) -> Result<(), PluginError> {
    let wanted = kind.interface();
    let export_names: Vec<&str> = info
        .exports
        .iter()
        .map(|e| e.split(' ').next().unwrap_or(""))
        .collect();
    if export_names.contains(&wanted) {
        return Ok(());
    }
    let prefix = format!("{WIT_PACKAGE}/");
    if let Some(other) = export_names.iter().find(|n| n.starts_with(&prefix)) {
        let found = other.split_once('/').map_or(*other, |(_, rest)| rest);
        let version = found.split_once('@').map_or("(unversioned)", |(_, v)| v);
        if version != WIT_VERSION {
            return Err(PluginError::VersionMismatch {
                path: path.to_string(),
                found: format!("{WIT_PACKAGE}@{version} (exports {other})"),
            });
        }
    }
    Err(PluginError::MissingExport {
        path: path.to_string(),
        wanted,
        exports: if export_names.is_empty() {
            "nothing".to_string()
        } else {
            export_names.join(", ")
        },
    })
}
