//! `null`: a transport that marks every envelope delivered and sends nothing.
//!
//! It exists to measure the relay itself: whatever throughput a benchmark shows
//! with this target is the ceiling that storage, claiming and the plugin call
//! boundary allow.

use outbox_relay_guest::{Config, Envelope, Outcome, Result, Transport};

struct Null;

impl Transport for Null {
    fn init(_target: &str, _config: &Config) -> Result<Self> {
        Ok(Null)
    }

    fn deliver(&mut self, batch: Vec<Envelope>) -> Vec<Outcome> {
        vec![Outcome::Delivered; batch.len()]
    }
}

outbox_relay_guest::export_transport!(Null);
