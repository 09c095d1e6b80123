//! The transport factory: composes each target's transport instance with
//! its chain of header injectors, one per relay worker.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::PluginRuntime;
use super::PluginState;
use super::bindings::{InjectorPluginPre, TransportPluginPre};
use super::instance::PluginSpec;
use super::wasm_injector::WasmInjector;
use super::wasm_transport::WasmTransport;
use crate::injector::{HeaderInjector, InjectedTransport};
use crate::keys::SigningGrant;
use crate::transport::{Transport, TransportError, TransportErrorKind, TransportFactory};

/// Everything needed to make a target's instances: its transport, its
/// injector chain, and the keys it was granted.
#[derive(Clone)]
pub struct TargetPlugins {
    pub transport: PluginSpec<TransportPluginPre<PluginState>>,
    pub injectors: Vec<PluginSpec<InjectorPluginPre<PluginState>>>,
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
                )) as Box<dyn HeaderInjector>
            })
            .collect();
        Ok(Box::new(InjectedTransport::new(injectors, transport)))
    }
}
