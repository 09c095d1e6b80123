//! The only place that runs `bindgen!`; conversions between the generated
//! types and the domain types live here too.

use crate::message::{Envelope, Outcome};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "transport-plugin",
    imports: { "outbox:relay/http.send": async },
    exports: { default: async },
});

pub use outbox::relay::types as wit;

/// The injector world shares the transport world's imports, so one linker
/// (and one set of host implementations) serves both.
mod injector_world {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "injector-plugin",
        exports: { default: async },
        with: {
            "outbox:relay/types": super::outbox::relay::types,
            "outbox:relay/log": super::outbox::relay::log,
            "outbox:relay/signing": super::outbox::relay::signing,
            "outbox:relay/http": super::outbox::relay::http,
        },
    });
}
pub use injector_world::{InjectorPlugin, InjectorPluginPre};

/// The interface name a transport exports, with the package version this host speaks.
pub const TRANSPORT_INTERFACE: &str = "outbox:relay/transport@0.1.0";
pub const INJECTOR_INTERFACE: &str = "outbox:relay/injector@0.1.0";
pub const WIT_PACKAGE: &str = "outbox:relay";
pub const WIT_VERSION: &str = "0.1.0";

impl From<&Envelope> for wit::Envelope {
    fn from(e: &Envelope) -> Self {
        let m = &e.message;
        wit::Envelope {
            id: m.id.to_string(),
            event_name: m.event_name.clone(),
            partition_key: m.partition_key.clone(),
            payload: m.payload.clone(),
            headers: m
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            attempt: e.attempt,
            created_at_ms: m.created_at_ms,
        }
    }
}

impl From<wit::Outcome> for Outcome {
    fn from(o: wit::Outcome) -> Self {
        match o {
            wit::Outcome::Delivered => Outcome::Delivered,
            wit::Outcome::Retry(r) => Outcome::Retry {
                reason: r.reason,
                delay_ms: r.delay_ms,
            },
            wit::Outcome::Reject(reason) => Outcome::Reject(reason),
        }
    }
}
