//! What every plugin instance shares, whatever its kind: the sandbox it runs
//! in, its time limit per call, and how a failed call becomes an error that
//! names the plugin and target and carries the guest's stderr.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::Store;

use super::{GuestStderr, PluginRuntime, PluginState};
use crate::config::SandboxConfig;
use crate::keys::SigningGrant;
use crate::transport::{TransportError, TransportErrorKind};

/// Host-side slack on top of a call's time limit, for a guest parked in a host
/// call (a socket read) where the epoch check cannot fire.
const HOST_SLACK: Duration = Duration::from_secs(1);

pub(super) struct InstanceCtx {
    pub runtime: Arc<PluginRuntime>,
    pub plugin: Arc<str>,
    pub target: Arc<str>,
    pub sandbox: SandboxConfig,
    pub signing: SigningGrant,
    pub stderr: GuestStderr,
    /// Instances made so far; every one after the first is a restart.
    pub started: u64,
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
        Self {
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
        spec: &super::PluginSpec<P>,
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
        let state = PluginState::new(
            self.plugin.clone(),
            self.target.clone(),
            &self.sandbox,
            self.stderr.clone(),
            self.signing.clone(),
            super::http::HttpGate::new(self.runtime.http_client(), &self.sandbox.allow_http),
        )
        .map_err(|e| self.error(TransportErrorKind::Instantiate(e)))?;
        Ok(self.runtime.new_store(state))
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

    fn call_failed(&self, e: &wasmtime::Error) -> TransportError {
        let text = format!("{e:#}");
        if text.contains("time limit exceeded") {
            return self.error(TransportErrorKind::Timeout(
                self.sandbox.call_timeout.as_millis() as u64,
            ));
        }
        let reason = if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
            trap.to_string()
        } else {
            e.root_cause().to_string()
        };
        let reason = if text.contains("growing memory") || text.contains("memory growth") {
            format!(
                "exceeded its memory limit of {} MiB ({reason})",
                self.sandbox.memory_mb
            )
        } else {
            reason
        };
        self.error(TransportErrorKind::Trap(reason))
    }
}
