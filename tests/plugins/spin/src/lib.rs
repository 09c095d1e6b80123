//! `spin`: every `deliver` loops forever.
//!
//! The host's per-call CPU deadline (epoch interruption) must stop it.

use outbox_relay_guest::{Config, Envelope, Outcome, Result, Transport};

struct Spin;

impl Transport for Spin {
    fn init(_target: &str, _config: &Config) -> Result<Self> {
        Ok(Spin)
    }

    fn deliver(&mut self, batch: Vec<Envelope>) -> Vec<Outcome> {
        let mut n: u64 = 0;
        loop {
            // `black_box` keeps the optimiser from proving the loop pointless.
            n = std::hint::black_box(n.wrapping_add(batch.len() as u64 + 1));
        }
    }
}

outbox_relay_guest::export_transport!(Spin);
