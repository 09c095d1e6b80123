//! A transport backed by a long-lived component instance.

use std::sync::Arc;

use async_trait::async_trait;
use wasmtime::Store;
use wasmtime::component::TypedFunc;

use super::bindings::{BatchText, EnvelopeRef, TRANSPORT_INTERFACE, TransportPluginPre, wit};
use super::instance::{InstanceCtx, PluginSpec};
use super::{PluginRuntime, PluginState};
use crate::keys::SigningGrant;
use crate::message::{Envelope, Outcome};
use crate::transport::{Transport, TransportError};

/// The exported `deliver`, typed once per instance. It takes [`EnvelopeRef`]s
/// (borrowed from the relay's messages) rather than the generated bindings'
/// owned copies. The `'static` here is shortened at each call: a
/// [`TypedFunc`] is covariant in its parameters, because wasmtime copies them
/// into the guest and keeps no reference past the call.
type DeliverFunc = TypedFunc<(&'static [EnvelopeRef<'static>],), (Vec<wit::Outcome>,)>;

struct Live {
    store: Store<PluginState>,
    deliver: DeliverFunc,
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
        let (store, deliver) = self
            .ctx
            .start(
                self.spec.plugin.pre.instance_pre(),
                TRANSPORT_INTERFACE,
                "deliver",
                &self.spec.config_json,
            )
            .await?;
        Ok(Live { store, deliver })
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

    /// Delivers through the guest. The outcome count is checked by every
    /// caller through [`crate::transport::deliver_checked`], for every
    /// transport, so not here.
    async fn deliver(&mut self, batch: &[Envelope]) -> Result<Vec<Outcome>, TransportError> {
        self.ctx.drain_stderr();
        let mut live = match self.live.take() {
            Some(live) => live,
            None => self.instantiate().await?,
        };
        let text = BatchText::new(batch);
        let envelopes = text.envelopes(batch);
        self.ctx.arm(&mut live.store);
        let deliver: TypedFunc<(&[EnvelopeRef<'_>],), (Vec<wit::Outcome>,)> = live.deliver;
        let call = async {
            let (outcomes,) = deliver
                .call_async(&mut live.store, (envelopes.as_slice(),))
                .await?;
            Ok(outcomes)
        };
        // On failure `live` is dropped: the instance's state is unknown.
        let outcomes = self.ctx.call(call).await?;
        // A wrong count (refused by the caller) is the plugin's bug, not a
        // broken instance: keep it.
        self.live = Some(live);
        Ok(outcomes.into_iter().map(Outcome::from).collect())
    }
}
