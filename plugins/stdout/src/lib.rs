//! `stdout`: writes one JSON line per envelope to the component's stdout.
//!
//! Meant for trying a configuration out and for demos; the line shape is the
//! `file` transport's (see `shared/json_line.rs`).

use std::io::Write as _;

use outbox_relay_guest::{Config, Envelope, Outcome, Result, Transport};

#[path = "../../shared/json_line.rs"]
mod json_line;

struct Stdout;

impl Transport for Stdout {
    fn init(_target: &str, _config: &Config) -> Result<Self> {
        Ok(Stdout)
    }

    fn deliver(&mut self, batch: Vec<Envelope>) -> Vec<Outcome> {
        let mut out = std::io::stdout().lock();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut line = Vec::new();
        for envelope in &batch {
            line.clear();
            let outcome = match json_line::write_line(&mut line, envelope) {
                Err(err) => Outcome::reject(format!("cannot encode as JSON: {err}")),
                Ok(()) => match out.write_all(&line) {
                    Ok(()) => Outcome::Delivered,
                    Err(err) => Outcome::retry(format!("write to stdout: {err}")),
                },
            };
            outcomes.push(outcome);
        }
        if let Err(err) = out.flush() {
            let reason = format!("flush stdout: {err}");
            for outcome in outcomes.iter_mut().filter(|o| o.is_delivered()) {
                *outcome = Outcome::retry(reason.clone());
            }
        }
        outcomes
    }
}

outbox_relay_guest::export_transport!(Stdout);
