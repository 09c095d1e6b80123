//! The only place that calls `wit_bindgen::generate!`.
//!
//! Both worlds are generated with `pub_export_macro`: the custom section that
//! describes a world's *exports* is then emitted by the export macro, inside the
//! plugin crate that invokes it, while this crate only carries the import-only
//! halves. That is what lets one build of the SDK serve transports and injectors
//! alike: a plugin's component type holds exactly the one world it exports.

/// Bindings for the `transport-plugin` world.
pub mod transport_world {
    wit_bindgen::generate!({
        path: "../wit",
        world: "transport-plugin",
        pub_export_macro: true,
        export_macro_name: "export_transport_world",
        default_bindings_module: "::outbox_relay_guest::__private::transport_world",
        runtime_path: "::outbox_relay_guest::__private::wit_bindgen::rt",
    });
}

/// Bindings for the `injector-plugin` world.
pub mod injector_world {
    wit_bindgen::generate!({
        path: "../wit",
        world: "injector-plugin",
        pub_export_macro: true,
        export_macro_name: "export_injector_world",
        default_bindings_module: "::outbox_relay_guest::__private::injector_world",
        runtime_path: "::outbox_relay_guest::__private::wit_bindgen::rt",
    });
}

/// The WASI filesystem, called directly by [`crate::fs`] (only on the wasm
/// target; natively `fs` uses `std::fs`).
#[cfg(target_arch = "wasm32")]
pub mod files_world {
    wit_bindgen::generate!({
        path: "wasi",
        world: "outbox:sdk-files/files",
        generate_all,
    });
}

/// Conversions between one world's generated `types` and the SDK's own.
macro_rules! conversions {
    ($name:ident, $world:ident) => {
        mod $name {
            use super::$world::outbox::relay::types as wire;
            use crate::{Envelope, HeaderEdit, Outcome};

            impl From<wire::Envelope> for Envelope {
                fn from(e: wire::Envelope) -> Self {
                    Envelope {
                        id: e.id,
                        event_name: e.event_name,
                        partition_key: e.partition_key,
                        payload: e.payload,
                        headers: e.headers,
                        attempt: e.attempt,
                        created_at_ms: e.created_at_ms,
                    }
                }
            }

            impl From<Outcome> for wire::Outcome {
                fn from(o: Outcome) -> Self {
                    match o {
                        Outcome::Delivered => wire::Outcome::Delivered,
                        Outcome::Retry { reason, delay_ms } => {
                            wire::Outcome::Retry(wire::Retry { reason, delay_ms })
                        }
                        Outcome::Reject(reason) => wire::Outcome::Reject(reason),
                    }
                }
            }

            impl From<HeaderEdit> for wire::HeaderEdit {
                fn from(edit: HeaderEdit) -> Self {
                    match edit {
                        HeaderEdit::Set(name, value) => wire::HeaderEdit::Set((name, value)),
                        HeaderEdit::Remove(name) => wire::HeaderEdit::Remove(name),
                    }
                }
            }
        }
    };
}

mod convert {
    use super::{injector_world, transport_world};
    conversions!(transport, transport_world);
    conversions!(injector, injector_world);
}

/// Glue the export macros call from inside the plugin crate.
pub mod glue {
    use std::thread::LocalKey;

    use super::{injector_world, transport_world};
    use crate::injector::{self, Injector, InjectorCell};
    use crate::transport::{self, Transport, TransportCell};

    pub fn transport_init<T: Transport>(
        cell: &'static LocalKey<TransportCell<T>>,
        target: String,
        config: String,
    ) -> Result<(), String> {
        transport::init(cell, target, config)
    }

    pub fn transport_deliver<T: Transport>(
        cell: &'static LocalKey<TransportCell<T>>,
        batch: Vec<transport_world::outbox::relay::types::Envelope>,
    ) -> Vec<transport_world::outbox::relay::types::Outcome> {
        let batch = batch.into_iter().map(Into::into).collect();
        transport::deliver(cell, batch)
            .into_iter()
            .map(Into::into)
            .collect()
    }

    pub fn injector_init<T: Injector>(
        cell: &'static LocalKey<InjectorCell<T>>,
        target: String,
        config: String,
    ) -> Result<(), String> {
        injector::init(cell, target, config)
    }

    pub fn injector_inject<T: Injector>(
        cell: &'static LocalKey<InjectorCell<T>>,
        envelope: injector_world::outbox::relay::types::Envelope,
        target: String,
    ) -> Result<Vec<injector_world::outbox::relay::types::HeaderEdit>, String> {
        injector::inject(cell, envelope.into(), target)
            .map(|edits| edits.into_iter().map(Into::into).collect())
    }
}
