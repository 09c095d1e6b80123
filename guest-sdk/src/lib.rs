//! Write [outbox-relay] transports and header injectors as WebAssembly
//! components.
//!
//! outbox-relay reads committed events from a transactional outbox and hands
//! them, in batches, to *transports*: sandboxed WebAssembly components, one per
//! kind of target (a webhook, a broker, a file). *Injectors* edit each
//! envelope's headers on the way. This crate is all a plugin author needs: a
//! trait per plugin kind, an export macro, and a few helpers. The WIT bindings
//! underneath are private.
//!
//! ```
//! use outbox_relay_guest::{Config, Envelope, Outcome, Result, Transport};
//!
//! struct Discard;
//!
//! impl Transport for Discard {
//!     fn init(_target: &str, _config: &Config) -> Result<Self> {
//!         Ok(Discard)
//!     }
//!
//!     fn deliver(&mut self, batch: Vec<Envelope>) -> Vec<Outcome> {
//!         batch.iter().map(|_| Outcome::Delivered).collect()
//!     }
//! }
//!
//! outbox_relay_guest::export_transport!(Discard);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` as a `cdylib`;
//! the crate's README covers the setup, the sandbox and which host versions an
//! SDK version works with.
//!
//! # Layout
//!
//! - [`Transport`] and [`export_transport!`]: the `transport-plugin` world.
//! - [`Injector`] and [`export_injector!`]: the `injector-plugin` world.
//! - [`Envelope`], [`Outcome`], [`HeaderEdit`]: the SDK's own types for what
//!   crosses the boundary, converted from and to the generated ones.
//! - [`Config`]: typed access to the target's config table, with errors that
//!   name the key.
//! - [`Error`] and [`Result`]: a message-only error, which the host enriches
//!   with the plugin, target and message id.
//! - [`log`]: lines into the host's log, tagged with plugin and target.
//! - [`signing`]: signatures made by the host with keys the plugin never sees.
//! - [`http`]: requests through the host's pooled HTTP client, to allowed hosts.
//! - [`net`]: TCP connections to the addresses the sandbox allows, broker
//!   URLs, and a connection kept across batches ([`net::Kept`]).
//! - [`random`]: random identifiers (not for secrets).
//! - [`fs`]: appending whole records to a file shared with other instances,
//!   with the OS's reason on failure (a full disk is ENOSPC, not EIO).
//! - [`Template`]: subjects, topics and routing keys built from a message.
//!
//! One build of this crate serves both plugin kinds: each export macro emits
//! the description of its world's exports into the plugin crate itself, so a
//! component only ever declares the one world it implements.
//!
//! The SDK also compiles natively, so a plugin's logic can be unit-tested with
//! plain `cargo test` (there, [`log`] writes to stderr and [`signing`]
//! returns an error, as there is no host to hold the keys).
//!
//! [outbox-relay]: https://example.invalid/outbox-relay

// Lets the generated bindings name this crate the same way from inside it as
// from the plugin crates that expand its export macros.
extern crate self as outbox_relay_guest;

mod bindings;
mod config;
mod envelope;
mod error;
pub mod fs;
pub mod http;
mod injector;
pub mod log;
pub mod net;
pub mod random;
pub mod signing;
mod template;
mod transport;

pub use config::Config;
pub use envelope::{Envelope, HeaderEdit, Outcome};
pub use error::{Error, Result};
pub use injector::Injector;
pub use template::Template;
pub use transport::Transport;

/// The `serde` this SDK is built with, so that a plugin can derive
/// `Deserialize` for [`Config::deserialize`] without a dependency of its own:
/// `#[serde(crate = "outbox_relay_guest::serde")]`.
pub use serde;

/// The version of the WIT package (`outbox:relay`) this SDK builds against.
pub const WIT_VERSION: &str = "0.1.0";

/// What the export macros expand to. Not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::bindings::glue::*;
    pub use crate::bindings::{injector_world, transport_world};
    pub use crate::injector::InjectorCell;
    pub use crate::transport::TransportCell;
    pub use wit_bindgen;
}

// The README's examples are compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    /// [`WIT_VERSION`](super::WIT_VERSION) is the version `wit/` declares.
    #[test]
    fn the_wit_version_is_the_one_wit_declares() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let mut packages = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "wit") {
                let text = std::fs::read_to_string(&path).unwrap();
                packages.extend(text.lines().filter_map(|l| {
                    l.trim()
                        .strip_prefix("package ")
                        .map(|p| p.trim_end_matches(';').trim().to_string())
                }));
            }
        }
        assert_eq!(
            packages,
            [format!("outbox:relay@{}", super::WIT_VERSION)],
            "{dir:?}"
        );
    }
}
