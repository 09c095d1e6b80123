//! `flaky`: asks for a retry until an envelope's attempt number reaches
//! `succeed_on_attempt` (default 3), then delivers it.
//!
//! Config: `succeed_on_attempt` (integer, default 3); `path` (optional) where
//! each delivery is recorded as a `{"id":..,"attempt":..}` line.

use outbox_relay_guest::{Config, Envelope, Outcome, Result, Transport};

#[path = "../../shared/record.rs"]
mod record;

struct Flaky {
    succeed_on_attempt: u64,
    record: Option<record::Record>,
}

impl Transport for Flaky {
    fn init(_target: &str, config: &Config) -> Result<Self> {
        Ok(Flaky {
            succeed_on_attempt: config.get_opt_u64("succeed_on_attempt")?.unwrap_or(3),
            record: record::Record::from_config(config)?,
        })
    }

    fn deliver(&mut self, batch: Vec<Envelope>) -> Vec<Outcome> {
        let mut outcomes: Vec<Outcome> = batch
            .iter()
            .map(|e| {
                if u64::from(e.attempt) < self.succeed_on_attempt {
                    Outcome::retry(format!("flaky: attempt {}", e.attempt))
                } else {
                    Outcome::Delivered
                }
            })
            .collect();
        if let Some(record) = self.record.as_mut() {
            record.delivered(&batch, &mut outcomes);
        }
        outcomes
    }
}

outbox_relay_guest::export_transport!(Flaky);
