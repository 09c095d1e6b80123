//! What every plugin instance shares, whatever its kind: the plugin it is
//! made from ([`PluginSpec`]), the sandbox it runs in, its time limit per
//! call, and how a failed call becomes an error that names the plugin and
//! target and carries the guest's stderr.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::Store;
use wasmtime::component::{ComponentNamedList, InstancePre, Lift, Lower, TypedFunc};

use super::sandbox::MemoryLimitExceeded;
use super::{GuestStderr, LoadedPlugin, PluginRuntime, PluginState};
use crate::config::SandboxConfig;
use crate::keys::SigningGrant;
use crate::transport::{TransportError, TransportErrorKind};

/// Host-side slack on top of a call's time limit, for a guest parked in a host
/// call (a socket read) where the epoch check cannot fire.
const HOST_SLACK: Duration = Duration::from_secs(1);

/// One plugin of a target, ready to instantiate, with its sandbox and config.
#[derive(Clone)]
pub struct PluginSpec<P> {
    pub plugin: LoadedPlugin<P>,
    pub sandbox: SandboxConfig,
    /// The `config` table as JSON, handed to `init`.
    pub config_json: String,
}

pub(super) struct InstanceCtx {
    pub runtime: Arc<PluginRuntime>,
    pub plugin: Arc<str>,
    pub target: Arc<str>,
    pub sandbox: SandboxConfig,
    pub signing: SigningGrant,
    pub stderr: GuestStderr,
    /// Instances made so far; every one after the first is a restart.
    pub started: u64,
    /// The target's TLS client and HTTP client, or why they cannot be built.
    tls: Result<TargetTls, String>,
}

/// A target's own TLS setup, built once per worker from `sandbox.tls`.
#[derive(Clone)]
struct TargetTls {
    /// `None`: the host's default (the system roots).
    config: Option<Arc<rustls::ClientConfig>>,
    /// The shared client, or one of the target's own when it has `sandbox.tls`.
    http: reqwest::Client,
}

impl TargetTls {
    fn new(runtime: &PluginRuntime, sandbox: &SandboxConfig) -> Result<Self, String> {
        let Some(settings) = &sandbox.tls else {
            return Ok(Self {
                config: None,
                http: runtime.http_client(),
            });
        };
        let config = settings.client().map_err(|e| e.to_string())?;
        Ok(Self {
            http: super::http::HttpGate::client_with_tls(&config)?,
            config: Some(config),
        })
    }
}

impl InstanceCtx {
    pub fn new(
        runtime: Arc<PluginRuntime>,
        plugin: Arc<str>,
        target: &str,
        sandbox: SandboxConfig,
        signing: SigningGrant,
    ) -> Self {
        let stderr = GuestStderr::new(sandbox.stderr_kb as usize * 1024);
        let tls = TargetTls::new(&runtime, &sandbox);
        Self {
            tls,
            runtime,
            plugin,
            target: Arc::from(target),
            sandbox,
            signing,
            stderr,
            started: 0,
        }
    }

    /// The context for an instance of `spec`'s plugin, for `target`.
    pub fn for_spec<P>(
        runtime: Arc<PluginRuntime>,
        target: &str,
        spec: &PluginSpec<P>,
        signing: SigningGrant,
    ) -> Self {
        Self::new(
            runtime,
            spec.plugin.name.clone(),
            target,
            spec.sandbox.clone(),
            signing,
        )
    }

    /// A failure while instantiating means the plugin cannot start, whatever
    /// the guest did (a trap in its start function included).
    pub fn instantiation_failed(&self, e: TransportError) -> TransportError {
        match e.kind {
            TransportErrorKind::Trap(reason) => TransportError {
                kind: TransportErrorKind::Instantiate(reason),
                ..e
            },
            _ => e,
        }
    }

    /// Counts a new instance (a restart, after the first).
    pub fn count_start(&mut self) {
        if self.started > 0 {
            crate::metrics::instance_restart(&self.target, &self.plugin);
        }
        self.started += 1;
    }

    pub fn error(&self, kind: TransportErrorKind) -> TransportError {
        TransportError {
            plugin: self.plugin.to_string(),
            target: self.target.to_string(),
            kind,
            stderr: self.stderr.take(),
        }
    }

    /// Logs (at debug) and clears what the guest wrote since the last call.
    pub fn drain_stderr(&self) {
        let leftover = self.stderr.take();
        if !leftover.is_empty() {
            tracing::debug!(plugin = %self.plugin, target = %self.target, stderr = %leftover, "guest stderr");
        }
    }

    /// A fresh store for a new instance.
    pub fn new_store(&self) -> Result<Store<PluginState>, TransportError> {
        let tls = self
            .tls
            .clone()
            .map_err(|e| self.error(TransportErrorKind::Instantiate(e)))?;
        let state = PluginState::new(
            self.plugin.clone(),
            self.target.clone(),
            &self.sandbox,
            self.stderr.clone(),
            self.signing.clone(),
            super::http::HttpGate::new(
                tls.http,
                &self.sandbox.allow_http,
                self.sandbox.max_sockets,
                // Half the memory cap: the guest must still hold them.
                self.sandbox.memory_mb as usize * 512 * 1024,
            )
            .with_client_cert(
                self.sandbox
                    .tls
                    .as_ref()
                    .is_some_and(|t| t.has_client_cert()),
            ),
            tls.config,
        )
        .map_err(|e| self.error(TransportErrorKind::Instantiate(e)))?;
        Ok(self.runtime.new_store(state))
    }

    /// Makes a new instance from `pre` in a fresh store, types the two
    /// functions of its `interface` export that the host calls (`init`, and
    /// `func` as `TypedFunc<P, R>`, once for the instance's life), and runs
    /// `init` with the target's config.
    pub async fn start<P, R>(
        &mut self,
        pre: &InstancePre<PluginState>,
        interface: &str,
        func: &str,
        config_json: &str,
    ) -> Result<(Store<PluginState>, TypedFunc<P, R>), TransportError>
    where
        P: ComponentNamedList + Lower + Send + Sync,
        R: ComponentNamedList + Lift + Send + Sync + 'static,
    {
        self.count_start();
        let mut store = self.new_store()?;
        self.arm(&mut store);
        let instance = self
            .call(pre.instantiate_async(&mut store))
            .await
            .map_err(|e| self.instantiation_failed(e))?;
        let cannot_bind = |e: String| self.error(TransportErrorKind::Instantiate(e));
        let iface = instance
            .get_export_index(&mut store, None, interface)
            .ok_or_else(|| cannot_bind(format!("exports no {interface}")))?;
        let mut export = |name: &str| {
            instance
                .get_export_index(&mut store, Some(&iface), name)
                .and_then(|index| instance.get_func(&mut store, index))
                .ok_or_else(|| cannot_bind(format!("{interface} exports no `{name}`")))
        };
        let (init, main) = (export("init")?, export(func)?);
        let wrong_type = |name: &str, e: wasmtime::Error| {
            cannot_bind(format!("{interface}: `{name}` has the wrong type: {e:#}"))
        };
        let init = init
            .typed::<(&str, &str), (Result<(), String>,)>(&store)
            .map_err(|e| wrong_type("init", e))?;
        let main = main
            .typed::<P, R>(&store)
            .map_err(|e| wrong_type(func, e))?;
        self.arm(&mut store);
        let call = async {
            let (result,) = init
                .call_async(&mut store, (&*self.target, config_json))
                .await?;
            Ok(result)
        };
        match self.call(call).await? {
            Err(message) => Err(self.error(TransportErrorKind::Init(message))),
            Ok(()) => {
                tracing::info!(plugin = %self.plugin, target = %self.target, "plugin instance started");
                Ok((store, main))
            }
        }
    }

    /// Runs one call into the guest under the time limit. On any failure the
    /// caller must discard the instance: its state is unknown.
    pub async fn call<T>(
        &self,
        call: impl Future<Output = wasmtime::Result<T>>,
    ) -> Result<T, TransportError> {
        let limit = self.sandbox.call_timeout + HOST_SLACK;
        let started = Instant::now();
        let result = match tokio::time::timeout(limit, call).await {
            Err(_) => Err(self.error(TransportErrorKind::Timeout(limit.as_millis() as u64))),
            Ok(Err(e)) => Err(self.call_failed(&e)),
            Ok(Ok(v)) => Ok(v),
        };
        crate::metrics::plugin_call(&self.target, &self.plugin, started.elapsed().as_secs_f64());
        if let Err(e) = &result
            && matches!(
                e.kind,
                TransportErrorKind::Trap(_) | TransportErrorKind::Timeout(_)
            )
        {
            crate::metrics::trap(&self.target, &self.plugin);
        }
        result
    }

    /// Arms the per-call deadline that the epoch callback enforces.
    pub fn arm(&self, store: &mut Store<PluginState>) {
        store.data_mut().deadline = Instant::now() + self.sandbox.call_timeout;
    }

    /// What a failed call was, told by the error's type: the deadline (the
    /// epoch callback raises [`wasmtime::Trap::Interrupt`]), the memory cap
    /// ([`MemoryLimitExceeded`] from the store's limiter), or any other trap.
    fn call_failed(&self, e: &wasmtime::Error) -> TransportError {
        let trap = e.downcast_ref::<wasmtime::Trap>();
        if matches!(
            trap,
            Some(wasmtime::Trap::Interrupt | wasmtime::Trap::OutOfFuel)
        ) {
            return self.error(TransportErrorKind::Timeout(
                self.sandbox.call_timeout.as_millis() as u64,
            ));
        }
        if let Some(exceeded) = e.downcast_ref::<MemoryLimitExceeded>() {
            return self.error(TransportErrorKind::Trap(format!(
                "exceeded its memory limit of {} MiB (it asked for {} MiB)",
                self.sandbox.memory_mb,
                exceeded.desired.div_ceil(1024 * 1024)
            )));
        }
        let reason = match trap {
            Some(trap) => trap.to_string(),
            None => e.root_cause().to_string(),
        };
        self.error(TransportErrorKind::Trap(reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> InstanceCtx {
        let cache = tempfile::tempdir().unwrap();
        let runtime = Arc::new(PluginRuntime::new(cache.path()).unwrap());
        let sandbox = SandboxConfig {
            memory_mb: 32,
            call_timeout: Duration::from_millis(300),
            ..SandboxConfig::default()
        };
        InstanceCtx::new(runtime, "p".into(), "t", sandbox, SigningGrant::default())
    }

    /// The deadline and the memory cap are told by the error's type, under
    /// whatever context wasmtime adds; a message that merely says so is an
    /// ordinary trap.
    #[test]
    fn failures_are_told_by_type_not_by_text() {
        let c = ctx();
        let kind = |e: wasmtime::Error| c.call_failed(&e).kind;
        let interrupted =
            wasmtime::Error::new(wasmtime::Trap::Interrupt).context("error while executing");
        assert_eq!(kind(interrupted), TransportErrorKind::Timeout(300));
        let exceeded = wasmtime::Error::new(MemoryLimitExceeded {
            desired: 40 << 20,
            limit: 32 << 20,
        })
        .context("error while executing");
        assert_eq!(
            kind(exceeded),
            TransportErrorKind::Trap(
                "exceeded its memory limit of 32 MiB (it asked for 40 MiB)".into()
            )
        );
        let unreachable = wasmtime::Error::new(wasmtime::Trap::UnreachableCodeReached);
        assert_eq!(
            kind(unreachable),
            TransportErrorKind::Trap("wasm trap: wasm `unreachable` instruction executed".into())
        );
        let lookalike = wasmtime::Error::msg("time limit exceeded while growing memory");
        assert_eq!(
            kind(lookalike),
            TransportErrorKind::Trap("time limit exceeded while growing memory".into())
        );
    }
}
