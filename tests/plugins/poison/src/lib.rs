//! `poison`: traps whenever its batch holds a message whose payload is
//! `poison`; otherwise delivers everything and, when config `path` is set,
//! records each delivery like `count`. Tests that one bad message does not
//! take the rest of its batch down with it.

use outbox_relay_guest::{Config, Envelope, Outcome, Result, Transport};

#[path = "../../shared/record.rs"]
mod record;

struct Poison {
    record: Option<record::Record>,
}

impl Transport for Poison {
    fn init(_target: &str, config: &Config) -> Result<Self> {
        Ok(Poison {
            record: record::Record::from_config(config)?,
        })
    }

    fn deliver(&mut self, batch: Vec<Envelope>) -> Vec<Outcome> {
        if batch.iter().any(|e| e.payload == b"poison") {
            eprintln!("poison plugin: poison found, trapping");
            core::arch::wasm32::unreachable();
        }
        let mut outcomes = vec![Outcome::Delivered; batch.len()];
        if let Some(record) = self.record.as_mut() {
            record.delivered(&batch, &mut outcomes);
        }
        outcomes
    }
}

outbox_relay_guest::export_transport!(Poison);
