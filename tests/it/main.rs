//! Integration tests: a real SQLite file, real components built from source
//! (tests/build.rs), and the real `outbox-relay` binary where a process matters.

#![allow(clippy::unwrap_used)]

mod conformance;
mod crash;
mod delivery;
mod hostile;
mod startup;

/// The `outbox-relay` CLI under test (built from `tests/bin/outbox-relay.rs`).
pub(crate) fn relay_binary() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_outbox-relay-under-test"))
}
