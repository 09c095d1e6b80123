//! `hog`: every `deliver` allocates 1 MiB blocks, touching and keeping each,
//! until the memory limit kills it.
//!
//! The host's per-instance memory limit must stop it without hurting the host.

use outbox_relay_guest::{Config, Envelope, Outcome, Result, Transport};

const MIB: usize = 1 << 20;

struct Hog;

impl Transport for Hog {
    fn init(_target: &str, _config: &Config) -> Result<Self> {
        Ok(Hog)
    }

    fn deliver(&mut self, _batch: Vec<Envelope>) -> Vec<Outcome> {
        let mut kept: Vec<Vec<u8>> = Vec::new();
        loop {
            // Writing every page makes the memory real, not just reserved.
            let block = vec![0xA5u8; MIB];
            kept.push(std::hint::black_box(block));
        }
    }
}

outbox_relay_guest::export_transport!(Hog);
