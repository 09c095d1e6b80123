//! A transport backed by a long-lived component instance.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use wasmtime::Store;

use super::bindings::{TransportPlugin, wit};
use super::{GuestStderr, LoadedPlugin, PluginRuntime, PluginState};
use crate::config::SandboxConfig;
use crate::message::{Envelope, Outcome};
use crate::transport::{Transport, TransportError, TransportErrorKind, TransportFactory};

/// Host-side slack on top of a call's time limit, for a guest parked in a host
/// call (a socket read) where the epoch check cannot fire.
const HOST_SLACK: Duration = Duration::from_secs(1);

/// Everything needed to make instances for one target.
#[derive(Clone)]
pub struct TargetPlugin {
    pub plugin: LoadedPlugin,
    pub sandbox: SandboxConfig,
    /// The target's `config` table as JSON, handed to `init`.
    pub config_json: String,
}

/// Makes a [`WasmTransport`] per relay worker.
pub struct WasmTransportFactory {
    runtime: Arc<PluginRuntime>,
    targets: HashMap<String, TargetPlugin>,
}

impl WasmTransportFactory {
    pub fn new(runtime: Arc<PluginRuntime>, targets: HashMap<String, TargetPlugin>) -> Self {
        Self { runtime, targets }
    }
}

#[async_trait]
impl TransportFactory for WasmTransportFactory {
    async fn create(&self, target: &str) -> Result<Box<dyn Transport>, TransportError> {
        let Some(t) = self.targets.get(target) else {
            return Err(TransportError {
                plugin: "(none)".into(),
                target: target.into(),
                kind: TransportErrorKind::Instantiate("no plugin is loaded for this target".into()),
                stderr: String::new(),
            });
        };
        Ok(Box::new(WasmTransport::new(
            self.runtime.clone(),
            target,
            t.clone(),
        )))
    }
}

struct Live {
    store: Store<PluginState>,
    bindings: TransportPlugin,
}

/// One instance of a transport component for one target. It is created on
/// first use, kept across batches (so the guest can keep connections open),
/// and thrown away after a trap or timeout, to be made again on the next batch.
pub struct WasmTransport {
    runtime: Arc<PluginRuntime>,
    target: Arc<str>,
    spec: TargetPlugin,
    stderr: GuestStderr,
    live: Option<Live>,
}

impl WasmTransport {
    pub fn new(runtime: Arc<PluginRuntime>, target: &str, spec: TargetPlugin) -> Self {
        let stderr = GuestStderr::new(spec.sandbox.stderr_kb as usize * 1024);
        Self {
            runtime,
            target: Arc::from(target),
            spec,
            stderr,
            live: None,
        }
    }

    fn error(&self, kind: TransportErrorKind) -> TransportError {
        TransportError {
            plugin: self.spec.plugin.name.to_string(),
            target: self.target.to_string(),
            kind,
            stderr: self.stderr.take(),
        }
    }

    fn timeout(&self) -> Duration {
        self.spec.sandbox.call_timeout
    }

    /// Classifies a failed call; the instance is discarded by the caller.
    fn call_failed(&self, e: &wasmtime::Error) -> TransportError {
        let text = format!("{e:#}");
        if text.contains("time limit exceeded") {
            return self.error(TransportErrorKind::Timeout(
                self.timeout().as_millis() as u64
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
                self.spec.sandbox.memory_mb
            )
        } else {
            reason
        };
        self.error(TransportErrorKind::Trap(reason))
    }

    async fn instantiate(&mut self) -> Result<Live, TransportError> {
        let state = PluginState::new(
            self.spec.plugin.name.clone(),
            self.target.clone(),
            &self.spec.sandbox,
            self.stderr.clone(),
        )
        .map_err(|e| self.error(TransportErrorKind::Instantiate(e)))?;
        let mut store = self.runtime.new_store(state);
        store.data_mut().deadline = Instant::now() + self.timeout();
        let limit = self.timeout() + HOST_SLACK;
        let bindings =
            match tokio::time::timeout(limit, self.spec.plugin.pre.instantiate_async(&mut store))
                .await
            {
                Err(_) => {
                    return Err(self.error(TransportErrorKind::Timeout(limit.as_millis() as u64)));
                }
                Ok(Err(e)) => {
                    return Err(self.error(TransportErrorKind::Instantiate(format!("{e:#}"))));
                }
                Ok(Ok(b)) => b,
            };
        let init = bindings.outbox_relay_transport().call_init(
            &mut store,
            &self.target,
            &self.spec.config_json,
        );
        match tokio::time::timeout(limit, init).await {
            Err(_) => Err(self.error(TransportErrorKind::Timeout(limit.as_millis() as u64))),
            Ok(Err(e)) => Err(self.call_failed(&e)),
            Ok(Ok(Err(message))) => Err(self.error(TransportErrorKind::Init(message))),
            Ok(Ok(Ok(()))) => {
                tracing::info!(plugin = %self.spec.plugin.name, target = %self.target, "plugin instance started");
                Ok(Live { store, bindings })
            }
        }
    }
}

#[async_trait]
impl Transport for WasmTransport {
    async fn deliver(&mut self, batch: &[Envelope]) -> Result<Vec<Outcome>, TransportError> {
        let leftover = self.stderr.take();
        if !leftover.is_empty() {
            tracing::debug!(plugin = %self.spec.plugin.name, target = %self.target, stderr = %leftover, "guest stderr");
        }
        let mut live = match self.live.take() {
            Some(live) => live,
            None => self.instantiate().await?,
        };
        let wit_batch: Vec<wit::Envelope> = batch.iter().map(wit::Envelope::from).collect();
        live.store.data_mut().deadline = Instant::now() + self.timeout();
        let limit = self.timeout() + HOST_SLACK;
        let call = live
            .bindings
            .outbox_relay_transport()
            .call_deliver(&mut live.store, &wit_batch);
        let outcomes = match tokio::time::timeout(limit, call).await {
            // The instance is dropped in each failure arm: its state is unknown.
            Err(_) => return Err(self.error(TransportErrorKind::Timeout(limit.as_millis() as u64))),
            Ok(Err(e)) => return Err(self.call_failed(&e)),
            Ok(Ok(outcomes)) => outcomes,
        };
        self.live = Some(live);
        if outcomes.len() != batch.len() {
            return Err(self.error(TransportErrorKind::OutcomeCount {
                expected: batch.len(),
                got: outcomes.len(),
            }));
        }
        Ok(outcomes.into_iter().map(Outcome::from).collect())
    }
}
