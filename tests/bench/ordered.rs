//! Scenario `ordered`: an ordered target drains a backlog, once spread over
//! 10 keys and once on one key, beside an unordered drain of the same
//! backlog in the same run (the peer the ratio is taken against).
//!
//! An ordered batch is cut before a key repeats, so one key drains one
//! message per plugin call and acknowledgement; what this row guards is that
//! the worker loops at once while rows remain, on every backend, instead of
//! waiting a poll interval per batch.

use std::time::Duration;

use outbox_relay::message::NewMessage;
use serde_json::{Value, json};

use crate::report::{Row, ScenarioResult};
use crate::setup::{BenchDb, DbKind, Probe, Running, Sink, migrate, payload, target, thousands};

const EVENT: &str = "bench.ordered";

/// How a backlog's messages are keyed.
#[derive(Debug, Clone, Copy)]
enum Keys {
    None,
    Spread(u64),
}

impl Keys {
    fn label(self) -> String {
        match self {
            Keys::None => "unordered, no keys".into(),
            Keys::Spread(1) => "ordered, one key".into(),
            Keys::Spread(n) => format!("ordered, {n} keys"),
        }
    }
}

/// Seeds `messages` messages and drains them through the `null` component.
/// Returns the rate in messages per second.
async fn drain(kind: DbKind, messages: u64, keys: Keys) -> anyhow::Result<f64> {
    let db = BenchDb::new(kind).await?;
    let ordered = matches!(keys, Keys::Spread(_));
    // A poll interval far longer than the drain: a worker that waited for
    // it between batches would show at once.
    let (_, config) = db.config(
        "ordered",
        "poll_interval = \"5s\"",
        &target("null", "null", &format!("ordered = {ordered}")),
    )?;
    let storage = migrate(&config).await?;
    let mut n = 0;
    while n < messages {
        let chunk: Vec<NewMessage> = (n..messages.min(n + 2_000))
            .map(|k| {
                let m = NewMessage::new(EVENT, payload(k, 256));
                match keys {
                    Keys::None => m,
                    Keys::Spread(keys) => m.with_key(format!("key-{}", k % keys)),
                }
            })
            .collect();
        storage.save(&chunk).await?;
        n += chunk.len() as u64;
    }
    let probe = Probe::new(false);
    let relay = Running::start(&config, Sink::Configured, probe.clone()).await?;
    let started = relay.started;
    let last = probe.wait_for(messages, Duration::from_secs(600)).await?;
    relay.stop().await?;
    let rate = crate::setup::rate(messages, last.duration_since(started));
    eprintln!(
        "  {}, {}: {} msg/s",
        kind.label(),
        keys.label(),
        thousands(rate)
    );
    Ok(rate)
}

pub async fn scenario(databases: &[DbKind], messages: u64) -> anyhow::Result<ScenarioResult> {
    let mut rows = Vec::new();
    let mut runs: Vec<Value> = Vec::new();
    for &kind in databases {
        let peer = drain(kind, messages, Keys::None).await?;
        for keys in [Keys::Spread(10), Keys::Spread(1)] {
            let rate = drain(kind, messages, keys).await?;
            rows.push(
                Row::new(
                    "ordered",
                    format!(
                        "{} × 256 B, {}, {}",
                        thousands(messages as f64),
                        keys.label(),
                        kind.label()
                    ),
                    format!("{} msg/s", thousands(rate)),
                )
                .note(format!(
                    "{:.3}× the unordered drain of the same backlog ({} msg/s); poll_interval 5 s",
                    rate / peer,
                    thousands(peer)
                )),
            );
            runs.push(json!({
                "database": kind.label(),
                "keys": keys.label(),
                "messages": messages,
                "messages_per_s": rate.round(),
                "unordered_messages_per_s": peer.round(),
                "ratio_to_unordered": (rate / peer * 1000.0).round() / 1000.0,
            }));
        }
    }
    Ok(ScenarioResult {
        name: "ordered",
        params: json!({ "messages": messages, "payload_bytes": 256, "poll_interval_s": 5, "batch_size": 100 }),
        data: json!({ "runs": runs }),
        rows,
    })
}
