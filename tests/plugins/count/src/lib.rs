//! `count`: delivers everything and, when config `path` is set, records each
//! delivery as a `{"id":..,"attempt":..}` line there, for tests that count
//! deliveries and duplicates (for instance across a crash of the host).
//! Config `sleep_ms` makes each batch take that long, so a test can kill the
//! host while batches are still flowing.

use outbox_relay_guest::{Config, Envelope, Outcome, Result, Transport};

#[path = "../../shared/record.rs"]
mod record;

struct Count {
    record: Option<record::Record>,
    sleep: Option<std::time::Duration>,
}

impl Transport for Count {
    fn init(_target: &str, config: &Config) -> Result<Self> {
        Ok(Count {
            record: record::Record::from_config(config)?,
            sleep: config
                .get_opt_u64("sleep_ms")?
                .map(std::time::Duration::from_millis),
        })
    }

    fn deliver(&mut self, batch: Vec<Envelope>) -> Vec<Outcome> {
        if let Some(sleep) = self.sleep {
            std::thread::sleep(sleep);
        }
        let mut outcomes = vec![Outcome::Delivered; batch.len()];
        if let Some(record) = self.record.as_mut() {
            record.delivered(&batch, &mut outcomes);
        }
        outcomes
    }
}

outbox_relay_guest::export_transport!(Count);
