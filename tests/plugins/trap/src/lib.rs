//! `trap`: every `deliver` executes `unreachable`, a WebAssembly trap.
//!
//! The host must survive it, throw the instance away, keep the batch, and make
//! a fresh instance for the next try.

use outbox_relay_guest::{Config, Envelope, Outcome, Result, Transport};

struct Trap;

impl Transport for Trap {
    fn init(_target: &str, _config: &Config) -> Result<Self> {
        Ok(Trap)
    }

    fn deliver(&mut self, _batch: Vec<Envelope>) -> Vec<Outcome> {
        core::arch::wasm32::unreachable()
    }
}

outbox_relay_guest::export_transport!(Trap);
