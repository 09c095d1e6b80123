//! A transport backed by a long-lived component instance.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use wasmtime::Store;
use wasmtime::component::Func;

use super::bindings::{
    BatchText, EnvelopeRef, TRANSPORT_INTERFACE, TransportPlugin, TransportPluginPre, wit,
};
use super::instance::InstanceCtx;
use super::wasm_injector::WasmInjector;
use super::{LoadedPlugin, PluginRuntime, PluginState};
use crate::config::SandboxConfig;
use crate::injector::InjectedTransport;
use crate::keys::SigningGrant;
use crate::message::{Envelope, Outcome};
use crate::transport::{Transport, TransportError, TransportErrorKind, TransportFactory};

/// One plugin of a target, ready to instantiate, with its sandbox and config.
#[derive(Clone)]
pub struct PluginSpec<P> {
    pub plugin: LoadedPlugin<P>,
    pub sandbox: SandboxConfig,
    /// The `config` table as JSON, handed to `init`.
    pub config_json: String,
}

/// Everything needed to make a target's instances: its transport, its
/// injector chain, and the keys it was granted.
#[derive(Clone)]
pub struct TargetPlugins {
    pub transport: PluginSpec<TransportPluginPre<PluginState>>,
    pub injectors: Vec<PluginSpec<super::bindings::InjectorPluginPre<PluginState>>>,
    pub signing: SigningGrant,
}

/// Makes a target's transport (wrapped in its injector chain) per relay worker.
pub struct WasmTransportFactory {
    runtime: Arc<PluginRuntime>,
    targets: HashMap<String, TargetPlugins>,
}

impl WasmTransportFactory {
    pub fn new(runtime: Arc<PluginRuntime>, targets: HashMap<String, TargetPlugins>) -> Self {
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
        let transport = Box::new(WasmTransport::new(
            self.runtime.clone(),
            target,
            t.transport.clone(),
            t.signing.clone(),
        ));
        if t.injectors.is_empty() {
            return Ok(transport);
        }
        let injectors = t
            .injectors
            .iter()
            .map(|spec| {
                Box::new(WasmInjector::new(
                    self.runtime.clone(),
                    target,
                    spec.clone(),
                    t.signing.clone(),
                )) as Box<dyn crate::injector::HeaderInjector>
            })
            .collect();
        Ok(Box::new(InjectedTransport::new(injectors, transport)))
    }
}

struct Live {
    store: Store<PluginState>,
    /// The exported `deliver`, called with [`EnvelopeRef`]s rather than
    /// through the generated bindings (which take owned copies of the batch).
    deliver: Func,
}

/// One instance of a transport component for one target. It is created on
/// first use, kept across batches (so the guest can keep connections open),
/// and thrown away after a trap or timeout, to be made again on the next batch.
pub struct WasmTransport {
    ctx: InstanceCtx,
    spec: PluginSpec<TransportPluginPre<PluginState>>,
    live: Option<Live>,
}

impl WasmTransport {
    pub fn new(
        runtime: Arc<PluginRuntime>,
        target: &str,
        spec: PluginSpec<TransportPluginPre<PluginState>>,
        signing: SigningGrant,
    ) -> Self {
        let ctx = InstanceCtx::for_spec(runtime, target, &spec, signing);
        Self {
            ctx,
            spec,
            live: None,
        }
    }

    async fn instantiate(&mut self) -> Result<Live, TransportError> {
        self.ctx.count_start();
        let mut store = self.ctx.new_store()?;
        self.ctx.arm(&mut store);
        let instance = self
            .ctx
            .call(
                self.spec
                    .plugin
                    .pre
                    .instance_pre()
                    .instantiate_async(&mut store),
            )
            .await
            .map_err(|e| self.ctx.instantiation_failed(e))?;
        let cannot_bind = |e: String| self.ctx.error(TransportErrorKind::Instantiate(e));
        let bindings = TransportPlugin::new(&mut store, &instance)
            .map_err(|e| cannot_bind(format!("{e:#}")))?;
        let deliver = instance
            .get_export_index(&mut store, None, TRANSPORT_INTERFACE)
            .and_then(|iface| instance.get_export_index(&mut store, Some(&iface), "deliver"))
            .and_then(|index| instance.get_func(&mut store, index))
            .ok_or_else(|| cannot_bind(format!("{TRANSPORT_INTERFACE} exports no `deliver`")))?;
        self.ctx.arm(&mut store);
        let init = bindings.outbox_relay_transport().call_init(
            &mut store,
            &self.ctx.target,
            &self.spec.config_json,
        );
        match self.ctx.call(init).await? {
            Err(message) => Err(self.ctx.error(TransportErrorKind::Init(message))),
            Ok(()) => {
                tracing::info!(plugin = %self.ctx.plugin, target = %self.ctx.target, "plugin instance started");
                Ok(Live { store, deliver })
            }
        }
    }
}

#[async_trait]
impl Transport for WasmTransport {
    async fn start(&mut self) -> Result<(), TransportError> {
        if self.live.is_none() {
            self.live = Some(self.instantiate().await?);
        }
        Ok(())
    }

    async fn deliver(&mut self, batch: &[Envelope]) -> Result<Vec<Outcome>, TransportError> {
        self.ctx.drain_stderr();
        let mut live = match self.live.take() {
            Some(live) => live,
            None => self.instantiate().await?,
        };
        let text = BatchText::new(batch);
        let envelopes = text.envelopes(batch);
        self.ctx.arm(&mut live.store);
        let deliver = live
            .deliver
            .typed::<(&[EnvelopeRef<'_>],), (Vec<wit::Outcome>,)>(&live.store)
            .map_err(|e| {
                self.ctx
                    .error(TransportErrorKind::Instantiate(format!("{e:#}")))
            })?;
        let call = async {
            let (outcomes,) = deliver
                .call_async(&mut live.store, (envelopes.as_slice(),))
                .await?;
            Ok(outcomes)
        };
        // On failure `live` is dropped: the instance's state is unknown.
        let outcomes = self.ctx.call(call).await?;
        self.live = Some(live);
        if outcomes.len() != batch.len() {
            return Err(self.ctx.error(TransportErrorKind::OutcomeCount {
                expected: batch.len(),
                got: outcomes.len(),
            }));
        }
        Ok(outcomes.into_iter().map(Outcome::from).collect())
    }
}
