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
