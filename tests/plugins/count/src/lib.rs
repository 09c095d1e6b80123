//! `count`: delivers everything and, when config `path` is set, records each
//! delivery as a `{"id":..,"attempt":..}` line there, for tests that count
//! deliveries and duplicates (for instance across a crash of the host).
//! Config `sleep_ms` makes each batch take that long, so a test can kill the
//! host while batches are still flowing. Config `fail_percent` makes about that
//! share of attempts fail with a retry, decided by a hash of the message id
//! and the attempt number (so a retry of a failed attempt may succeed).

use outbox_relay_guest::{Config, Envelope, Outcome, Result, Transport};

#[path = "../../shared/record.rs"]
mod record;

struct Count {
    record: Option<record::Record>,
    sleep: Option<std::time::Duration>,
    fail_percent: u64,
}

/// FNV-1a over the id and the attempt number.
fn roll(envelope: &Envelope) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in envelope.id.bytes().chain(envelope.attempt.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h % 100
}

impl Transport for Count {
    fn init(_target: &str, config: &Config) -> Result<Self> {
        Ok(Count {
            record: record::Record::from_config(config)?,
            sleep: config
                .get_opt_u64("sleep_ms")?
                .map(std::time::Duration::from_millis),
            fail_percent: config.get_opt_u64("fail_percent")?.unwrap_or(0),
        })
    }

    fn deliver(&mut self, batch: Vec<Envelope>) -> Vec<Outcome> {
        if let Some(sleep) = self.sleep {
            std::thread::sleep(sleep);
        }
        let mut outcomes: Vec<Outcome> = batch
            .iter()
            .map(|e| {
                if roll(e) < self.fail_percent {
                    Outcome::retry("injected failure")
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

outbox_relay_guest::export_transport!(Count);
