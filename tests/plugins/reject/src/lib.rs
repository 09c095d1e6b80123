//! `reject`: every envelope is rejected (a permanent failure), so the host
//! dead-letters it at once.

use outbox_relay_guest::{Config, Envelope, Outcome, Result, Transport};

struct Reject;

impl Transport for Reject {
    fn init(_target: &str, _config: &Config) -> Result<Self> {
        Ok(Reject)
    }

    fn deliver(&mut self, batch: Vec<Envelope>) -> Vec<Outcome> {
        vec![Outcome::reject("rejected by reject plugin"); batch.len()]
    }
}

outbox_relay_guest::export_transport!(Reject);
