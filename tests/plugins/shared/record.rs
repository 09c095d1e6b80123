//! The delivery record kept by `flaky` and `count` when their config has a
//! `path`: one `{"id":..,"attempt":..,"key":..,"payload":..}` line per delivered
//! envelope (`payload` as UTF-8 text), appended in a single write
//! and handed to the OS before `deliver` returns, so a test can count
//! deliveries (and duplicates) even after the host process was killed.

use std::fs::{File, OpenOptions};
use std::io::Write as _;

use outbox_relay_guest::{Config, Envelope, Error, Outcome, Result};

pub struct Record {
    path: String,
    file: File,
}

impl Record {
    /// The record named by the optional config key `path`.
    pub fn from_config(config: &Config) -> Result<Option<Record>> {
        let Some(path) = config.get_opt_str("path")? else {
            return Ok(None);
        };
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|err| {
                Error::new(format!("config: key `path`: cannot open {path:?}: {err}"))
            })?;
        Ok(Some(Record {
            path: path.to_owned(),
            file,
        }))
    }

    /// Records the envelopes whose outcome is `Delivered`. If the record cannot
    /// be written they are turned into retries, so the record never misses a
    /// delivery the host believes happened.
    pub fn delivered(&mut self, batch: &[Envelope], outcomes: &mut [Outcome]) {
        let mut buf = Vec::new();
        for (envelope, outcome) in batch.iter().zip(outcomes.iter()) {
            if outcome.is_delivered() {
                let line = serde_json::json!({
                    "id": envelope.id,
                    "attempt": envelope.attempt,
                    "key": envelope.partition_key,
                    "payload": envelope.payload_str(),
                });
                buf.extend_from_slice(line.to_string().as_bytes());
                buf.push(b'\n');
            }
        }
        if buf.is_empty() {
            return;
        }
        if let Err(err) = self.file.write_all(&buf).and_then(|()| self.file.flush()) {
            let reason = format!("record to {}: {err}", self.path);
            for outcome in outcomes.iter_mut().filter(|o| o.is_delivered()) {
                *outcome = Outcome::retry(reason.clone());
            }
        }
    }
}
