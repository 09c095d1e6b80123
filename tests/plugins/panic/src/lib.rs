//! `panic`: every `deliver` writes a line to stderr, then panics.
//!
//! The host must report the failure with what the guest wrote to stderr
//! (both the line below and the panic message).

use std::io::Write as _;

use outbox_relay_guest::{Config, Envelope, Outcome, Result, Transport};

struct Panic;

impl Transport for Panic {
    fn init(_target: &str, _config: &Config) -> Result<Self> {
        Ok(Panic)
    }

    fn deliver(&mut self, batch: Vec<Envelope>) -> Vec<Outcome> {
        let mut stderr = std::io::stderr();
        // Ignored on purpose: the panic below is the point, not this line.
        let _ = writeln!(stderr, "panic plugin: about to panic");
        let _ = stderr.flush();
        let first = batch.first().map_or("<empty batch>", |e| e.id.as_str());
        panic!("deliberate panic for {first}")
    }
}

outbox_relay_guest::export_transport!(Panic);
