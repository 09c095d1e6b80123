//! The only place that runs `bindgen!`; conversions between the generated
//! types and the domain types live here too.

use crate::message::{Envelope, Outcome};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "transport-plugin",
    imports: {
        "outbox:relay/http.send": async,
        // A guest's handle that is not in its table traps.
        "outbox:relay/tls.connect": async | trappable,
        "outbox:relay/tls.open": async | trappable,
        "outbox:relay/tls.[method]connection.read": async | trappable,
        "outbox:relay/tls.[method]connection.write": async | trappable,
        "outbox:relay/tls.[method]connection.start-tls": async | trappable,
        "outbox:relay/tls.[method]connection.protocol": trappable,
    },
    exports: { default: async },
    with: { "outbox:relay/tls.connection": super::tls::Connection },
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
            "outbox:relay/tls": super::outbox::relay::tls,
        },
    });
}
pub use injector_world::InjectorPluginPre;

/// The WIT package this host speaks, written once: every name below is built
/// from it, and a test checks it against `wit/*.wit`. (A macro, because
/// `concat!` takes only literals.)
macro_rules! wit_package {
    () => {
        "outbox:relay"
    };
}
macro_rules! wit_version {
    () => {
        "0.1.0"
    };
}

pub const WIT_PACKAGE: &str = wit_package!();
pub const WIT_VERSION: &str = wit_version!();
/// The interface name a transport exports, with the package version this host speaks.
pub const TRANSPORT_INTERFACE: &str = concat!(wit_package!(), "/transport@", wit_version!());
/// The interface name a header injector exports.
pub const INJECTOR_INTERFACE: &str = concat!(wit_package!(), "/injector@", wit_version!());

/// The guest's `envelope` record, borrowed from the relay's messages: a
/// batch is lowered into the guest straight from them, without first being
/// copied into the owned [`wit::Envelope`]s that `bindgen!` generates.
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lower)]
#[component(record)]
pub struct EnvelopeRef<'a> {
    id: &'a str,
    #[component(name = "event-name")]
    event_name: &'a str,
    #[component(name = "partition-key")]
    partition_key: Option<&'a str>,
    payload: &'a [u8],
    headers: &'a [(&'a str, &'a str)],
    attempt: u32,
    #[component(name = "created-at-ms")]
    created_at_ms: i64,
}

/// What [`EnvelopeRef`]s borrow besides the messages: each id in text, and
/// each message's headers as a list of pairs.
pub struct BatchText<'a> {
    ids: Vec<[u8; uuid::fmt::Hyphenated::LENGTH]>,
    headers: Vec<Vec<(&'a str, &'a str)>>,
}

impl<'a> BatchText<'a> {
    pub fn new(batch: &'a [Envelope]) -> Self {
        BatchText {
            ids: batch
                .iter()
                .map(|e| {
                    let mut text = [0; uuid::fmt::Hyphenated::LENGTH];
                    e.message.id.hyphenated().encode_lower(&mut text);
                    text
                })
                .collect(),
            headers: batch
                .iter()
                .map(|e| {
                    e.message
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect()
                })
                .collect(),
        }
    }

    /// The batch as the guest's records.
    pub fn envelopes<'b>(&'b self, batch: &'b [Envelope]) -> Vec<EnvelopeRef<'b>> {
        batch
            .iter()
            .zip(&self.ids)
            .zip(&self.headers)
            .map(|((e, id), headers)| EnvelopeRef {
                // Hyphenated lower-case hex: always ASCII.
                id: std::str::from_utf8(id).unwrap_or_default(),
                event_name: &e.message.event_name,
                partition_key: e.message.partition_key.as_deref(),
                payload: &e.message.payload,
                headers,
                attempt: e.attempt,
                created_at_ms: e.message.created_at_ms,
            })
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The constants name what `wit/` declares: its package and version, and
    /// the two interfaces a plugin exports.
    #[test]
    fn interface_names_match_the_wit_files() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let mut packages = Vec::new();
        let mut interfaces = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "wit") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for line in text.lines().map(str::trim) {
                if let Some(package) = line.strip_prefix("package ") {
                    packages.push(package.trim_end_matches(';').trim().to_string());
                }
                if let Some(name) = line.strip_prefix("interface ") {
                    interfaces.push(name.trim_end_matches('{').trim().to_string());
                }
            }
        }
        assert_eq!(
            packages,
            [format!("{WIT_PACKAGE}@{WIT_VERSION}")],
            "{dir:?}"
        );
        for (constant, name) in [
            (TRANSPORT_INTERFACE, "transport"),
            (INJECTOR_INTERFACE, "injector"),
        ] {
            assert!(
                interfaces.iter().any(|i| i == name),
                "wit/ has no interface {name}"
            );
            assert_eq!(constant, format!("{WIT_PACKAGE}/{name}@{WIT_VERSION}"));
        }
    }
}
