//! A header injector backed by a long-lived component instance.

use std::sync::Arc;

use async_trait::async_trait;
use wasmtime::Store;
use wasmtime::component::TypedFunc;

use super::bindings::{BatchText, EnvelopeRef, INJECTOR_INTERFACE, InjectorPluginPre, wit};
use super::instance::{InstanceCtx, PluginSpec};
use super::{PluginRuntime, PluginState};
use crate::injector::{HeaderEdit, HeaderInjector};
use crate::keys::SigningGrant;
use crate::message::Envelope;
use crate::transport::TransportError;

/// The exported `inject`, typed once per instance, taking the envelope
/// borrowed (see `DeliverFunc` in `wasm_transport.rs` for the `'static`).
type InjectFunc = TypedFunc<
    (&'static EnvelopeRef<'static>, &'static str),
    (Result<Vec<wit::HeaderEdit>, String>,),
>;

struct Live {
    store: Store<PluginState>,
    inject: InjectFunc,
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
        let (store, inject) = self
            .ctx
            .start(
                self.spec.plugin.pre.instance_pre(),
                INJECTOR_INTERFACE,
                "inject",
                &self.spec.config_json,
            )
            .await?;
        Ok(Live { store, inject })
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
        // Lowered straight from the relay's message, like a transport's batch.
        let one = std::slice::from_ref(envelope);
        let text = BatchText::new(one);
        let wire = text.envelopes(one);
        self.ctx.arm(&mut live.store);
        let inject: TypedFunc<(&EnvelopeRef<'_>, &str), (Result<Vec<wit::HeaderEdit>, String>,)> =
            live.inject;
        let call = async {
            let (result,) = inject
                .call_async(&mut live.store, (&wire[0], &*self.ctx.target))
                .await?;
            Ok(result)
        };
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
