//! A header injector backed by a long-lived component instance.

use std::sync::Arc;

use async_trait::async_trait;
use wasmtime::Store;

use super::bindings::{InjectorPlugin, InjectorPluginPre, wit};
use super::instance::InstanceCtx;
use super::wasm_transport::PluginSpec;
use super::{PluginRuntime, PluginState};
use crate::injector::{HeaderEdit, HeaderInjector};
use crate::keys::SigningGrant;
use crate::message::Envelope;
use crate::transport::{TransportError, TransportErrorKind};

struct Live {
    store: Store<PluginState>,
    bindings: InjectorPlugin,
}

pub struct WasmInjector {
    ctx: InstanceCtx,
    spec: PluginSpec<InjectorPluginPre<PluginState>>,
    live: Option<Live>,
}

impl WasmInjector {
    pub fn new(
        runtime: Arc<PluginRuntime>,
        target: &str,
        spec: PluginSpec<InjectorPluginPre<PluginState>>,
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
        let bindings = self
            .ctx
            .call(self.spec.plugin.pre.instantiate_async(&mut store))
            .await
            .map_err(|e| self.ctx.instantiation_failed(e))?;
        self.ctx.arm(&mut store);
        let init = bindings.outbox_relay_injector().call_init(
            &mut store,
            &self.ctx.target,
            &self.spec.config_json,
        );
        match self.ctx.call(init).await? {
            Err(message) => Err(self.ctx.error(TransportErrorKind::Init(message))),
            Ok(()) => Ok(Live { store, bindings }),
        }
    }
}

#[async_trait]
impl HeaderInjector for WasmInjector {
    fn name(&self) -> &str {
        &self.ctx.plugin
    }

    async fn start(&mut self) -> Result<(), TransportError> {
        if self.live.is_none() {
            self.live = Some(self.instantiate().await?);
        }
        Ok(())
    }

    async fn inject(
        &mut self,
        envelope: &Envelope,
    ) -> Result<Result<Vec<HeaderEdit>, String>, TransportError> {
        self.ctx.drain_stderr();
        let mut live = match self.live.take() {
            Some(live) => live,
            None => self.instantiate().await?,
        };
        let wire = wit::Envelope::from(envelope);
        self.ctx.arm(&mut live.store);
        let call = live.bindings.outbox_relay_injector().call_inject(
            &mut live.store,
            &wire,
            &self.ctx.target,
        );
        let result = self.ctx.call(call).await?;
        self.live = Some(live);
        Ok(result.map(|edits| {
            edits
                .into_iter()
                .map(|e| match e {
                    wit::HeaderEdit::Set((name, value)) => HeaderEdit::Set(name, value),
                    wit::HeaderEdit::Remove(name) => HeaderEdit::Remove(name),
                })
                .collect()
        }))
    }
}
