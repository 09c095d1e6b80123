//! `wrong_version`: a transport built against `outbox:relay@0.2.0`, a version
//! the host does not know. The host must refuse to load it with a clear error.
//!
//! It cannot use the SDK (which is pinned to 0.1.0), so it uses raw bindings
//! of a copy of the WIT (`wit/`), identical but for the package version.

wit_bindgen::generate!({
    path: "wit",
    world: "transport-plugin",
});

use exports::outbox::relay::transport::{Envelope, Guest, Outcome};

struct WrongVersion;

impl Guest for WrongVersion {
    fn init(_target: String, _config: String) -> Result<(), String> {
        Ok(())
    }

    fn deliver(batch: Vec<Envelope>) -> Vec<Outcome> {
        batch.iter().map(|_| Outcome::Delivered).collect()
    }
}

export!(WrongVersion);
