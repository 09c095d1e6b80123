//! What a target makes of a fetched batch, before any plugin call: each log
//! entry is delivered, dead-lettered (malformed, or over the size limits) or
//! passed over (not routed here). Pure: no storage, no transport.

use crate::message::{Envelope, LogEntry, MalformedMessage, Position, entry_position};
use crate::routes::Routes;
use crate::storage::{Disposition, Failure};

/// One log entry, as one target sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Entry {
    Deliver(Envelope),
    /// Dead-lettered without a plugin call; the cursor passes it.
    Dead(Position, Failure),
    /// Not for this target; the cursor passes it.
    Skip(Position),
}

#[cfg(test)]
impl Entry {
    pub fn position(&self) -> Position {
        match self {
            Entry::Deliver(e) => e.message.position(),
            Entry::Dead(p, _) | Entry::Skip(p) => *p,
        }
    }
}

/// The relay's size limits on a message (`relay.max_payload_bytes`, `relay.max_key_bytes`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub max_payload_bytes: usize,
    pub max_key_bytes: usize,
}

/// A message over the size limits is treated as malformed: no target could
/// take it, and it must not hold up the messages behind it.
pub(super) fn within_limits(entry: LogEntry, limits: Limits) -> LogEntry {
    let message = entry?;
    let reason = if message.payload.len() > limits.max_payload_bytes {
        format!(
            "the payload is {} bytes, over relay.max_payload_bytes ({})",
            message.payload.len(),
            limits.max_payload_bytes
        )
    } else if let Some(key) = message
        .partition_key
        .as_ref()
        .filter(|k| k.len() > limits.max_key_bytes)
    {
        format!(
            "the partition key is {} bytes, over relay.max_key_bytes ({})",
            key.len(),
            limits.max_key_bytes
        )
    } else {
        return Ok(message);
    };
    Err(MalformedMessage {
        seq: message.seq,
        xid: message.xid,
        id: message.id.to_string(),
        event_name: message.event_name,
        reason,
    })
}

/// The dead letter of a malformed message that nothing could deliver.
pub(super) fn malformed_failure(bad: MalformedMessage, attempts: u32) -> Failure {
    Failure {
        seq: bad.seq,
        message_id: bad.id,
        attempts,
        error: format!("malformed message: {}", bad.reason),
        disposition: Disposition::Dead,
    }
}

/// Logs and counts the malformed entries among `entries` that are about to
/// be dead-lettered at `target`: call it with what a step will acknowledge,
/// not with all it read (an ordered step reads a batch and may send one
/// message of it, so the same row would be counted once per step).
pub(super) fn note_dead_letters(target: &str, entries: &[Entry]) {
    for entry in entries {
        if let Entry::Dead(_, failure) = entry {
            tracing::warn!(seq = failure.seq, id = %failure.message_id, reason = %failure.error, "malformed message dead-lettered");
            crate::metrics::delivery(target, crate::metrics::Counted::Dead);
        }
    }
}

/// Sorts `entries` for `target`, keeping log order. A malformed entry is
/// dead-lettered at every target its event name is routed to, and at every
/// target when it has no event name to route by ([`note_dead_letters`]
/// reports them).
pub(super) fn classify(
    entries: Vec<LogEntry>,
    target: &str,
    routes: &Routes,
    limits: Limits,
) -> Vec<Entry> {
    entries
        .into_iter()
        .map(|entry| match within_limits(entry, limits) {
            Ok(message) if routes.matches(target, &message.event_name) => {
                Entry::Deliver(Envelope {
                    message,
                    attempt: 1,
                })
            }
            Ok(message) => Entry::Skip(message.position()),
            Err(bad) => {
                let position = entry_position(&Err(bad.clone()));
                if bad.event_name.trim().is_empty() || routes.matches(target, &bad.event_name) {
                    Entry::Dead(position, malformed_failure(bad, 0))
                } else {
                    Entry::Skip(position)
                }
            }
        })
        .collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::message::Message;

    pub fn message(seq: i64, event: &str, key: Option<&str>) -> Message {
        Message {
            seq,
            xid: 0,
            id: uuid::Uuid::now_v7(),
            event_name: event.into(),
            partition_key: key.map(str::to_string),
            partition: 0,
            payload: b"{}".to_vec(),
            headers: Default::default(),
            created_at_ms: 0,
        }
    }

    const LIMITS: Limits = Limits {
        max_payload_bytes: 16,
        max_key_bytes: 4,
    };

    #[test]
    fn entries_are_delivered_passed_over_or_dead_lettered_in_log_order() {
        let routes = Routes::from_patterns([("t", ["order.*"].as_slice())]).unwrap();
        let mut big = message(3, "order.big", None);
        big.payload = vec![b'x'; 17];
        let entries = vec![
            Ok(message(1, "order.created", None)),
            Ok(message(2, "user.created", None)),
            Ok(big),
            Ok(message(4, "order.keyed", Some("too-long"))),
            Err(MalformedMessage {
                seq: 5,
                xid: 0,
                id: "not-a-uuid".into(),
                event_name: "user.x".into(),
                reason: "is not a UUID".into(),
            }),
            Err(MalformedMessage {
                seq: 6,
                xid: 0,
                id: "x".into(),
                event_name: " ".into(),
                reason: "event name is empty".into(),
            }),
        ];
        let sorted = classify(entries, "t", &routes, LIMITS);
        let kinds: Vec<(i64, &str)> = sorted
            .iter()
            .map(|e| {
                let kind = match e {
                    Entry::Deliver(_) => "deliver",
                    Entry::Dead(..) => "dead",
                    Entry::Skip(_) => "skip",
                };
                (e.position().seq, kind)
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                (1, "deliver"),
                (2, "skip"),
                (3, "dead"),
                (4, "dead"),
                (5, "skip"),
                (6, "dead"),
            ]
        );
        let Entry::Dead(_, f) = &sorted[2] else {
            unreachable!()
        };
        assert!(
            f.error.contains("over relay.max_payload_bytes (16)"),
            "{}",
            f.error
        );
        assert_eq!(f.disposition, Disposition::Dead);
    }
}
