//! The ordered path: per-key order at a target.
//!
//! - A message held by an earlier failure goes alone, when it is due.
//! - Otherwise the batch is cut before a key repeats, so a failure never has
//!   a later message of its key delivered ahead of it.
//! - The cursor stops before the first message that is to be retried: the
//!   partition holds there until it is delivered or dead.
//! - When the cut left rows behind, the worker goes again at once: a backlog
//!   drains at batch speed, not one batch per poll interval.

use std::collections::HashSet;
use std::time::Duration;

use super::classify::Entry;
use super::delivery::{CannotStart, Delivery};
use crate::message::{Envelope, Position};
use crate::storage::{Ack, Disposition, Failure, Storage, StorageError};

/// What one ordered step comes to.
#[derive(Debug)]
pub(super) enum Ordered {
    /// Write this ack; then hold this long (a message failed), or go on.
    Ack {
        ack: Ack,
        hold: Option<Duration>,
        /// Rows were left after the cut: go again at once.
        more: bool,
    },
    /// The plugin cannot start; nothing was sent.
    Stalled(CannotStart),
}

/// The key that orders a message: its partition key, or its id (a message
/// without a key is ordered with nothing else).
fn order_key(envelope: &Envelope) -> String {
    envelope
        .message
        .partition_key
        .clone()
        .unwrap_or_else(|| envelope.message.id.to_string())
}

/// Cuts `entries` before the first entry whose key already came: what is
/// left is safe to hand to the plugin in one batch. Returns whether
/// anything was cut off. At least one entry is kept.
pub(super) fn cut_before_repeat(entries: &mut Vec<Entry>) -> bool {
    let mut keys = HashSet::new();
    let cut = entries
        .iter()
        .position(|e| match e {
            Entry::Deliver(env) => !keys.insert(order_key(env)),
            _ => false,
        })
        .unwrap_or(entries.len())
        .max(1);
    let more = cut < entries.len();
    entries.truncate(cut);
    more
}

/// The ack of an ordered batch, from each delivered envelope's verdict in
/// order: the cursor passes what was delivered, dead or not for this target,
/// and stops before the first retry, which the partition then holds at.
/// Returns the ack and, when holding, how soon the held message is due.
pub(super) fn settle(
    entries: &[Entry],
    verdicts: impl IntoIterator<Item = (Envelope, Option<Failure>)>,
    from: Position,
) -> (Ack, Option<Duration>) {
    let mut verdicts = verdicts.into_iter();
    let mut ack = Ack {
        position: from,
        ..Ack::default()
    };
    for entry in entries {
        match entry {
            Entry::Skip(p) => ack.position = *p,
            Entry::Dead(p, f) => {
                ack.position = *p;
                ack.failures.push(f.clone());
            }
            Entry::Deliver(_) => {
                let Some((envelope, verdict)) = verdicts.next() else {
                    break;
                };
                let had_record = envelope.attempt > 1;
                match verdict {
                    None => {
                        ack.position = envelope.message.position();
                        if had_record {
                            ack.resolved.push(envelope.message.seq);
                        }
                    }
                    Some(f) => match f.disposition {
                        Disposition::Dead => {
                            ack.position = envelope.message.position();
                            ack.failures.push(f);
                        }
                        Disposition::RetryAfter(wait) => {
                            ack.failures.push(f);
                            return (ack, Some(wait));
                        }
                    },
                }
            }
        }
    }
    (ack, None)
}

/// An ordered batch ready for the plugin: what it covers, and the
/// envelopes to send.
#[derive(Debug)]
pub(super) struct Batch {
    entries: Vec<Entry>,
    envelopes: Vec<Envelope>,
    /// Rows were left after the cut.
    more: bool,
}

/// What an ordered step will do with `entries`.
#[derive(Debug)]
pub(super) enum Plan {
    /// The head message is held by a failure; its next attempt is this far off.
    Wait(Duration),
    Send(Batch),
}

/// Plans one ordered step over `entries`: the held head alone when it is
/// due, otherwise the entries up to the first repeated key. Reads the head's
/// failure record; no plugin call, so the caller can make sure the lease is
/// still its own between this and [`send`].
pub(super) async fn plan(
    storage: &dyn Storage,
    target: &str,
    mut entries: Vec<Entry>,
) -> Result<Plan, StorageError> {
    let mut head_attempts = 0;
    let head_seq = match entries.first() {
        Some(Entry::Deliver(head)) => Some(head.message.seq),
        _ => None,
    };
    let more;
    if let Some(seq) = head_seq
        && let Some(held) = storage.failure_state(target, seq).await?
    {
        if !held.due_in.is_zero() && !held.dead {
            return Ok(Plan::Wait(held.due_in));
        }
        head_attempts = held.attempts;
        more = entries.len() > 1;
        entries.truncate(1);
    } else {
        more = cut_before_repeat(&mut entries);
    }
    super::classify::note_dead_letters(target, &entries);
    let mut envelopes: Vec<Envelope> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Deliver(env) => Some(env.clone()),
            _ => None,
        })
        .collect();
    if let Some(first) = envelopes.first_mut()
        && head_attempts > 0
    {
        first.attempt = head_attempts + 1;
    }
    Ok(Plan::Send(Batch {
        entries,
        envelopes,
        more,
    }))
}

/// Delivers a planned batch read after `from`, and settles it.
pub(super) async fn send(delivery: &mut Delivery, batch: Batch, from: Position) -> Ordered {
    let Batch {
        entries,
        envelopes,
        more,
    } = batch;
    let outcomes = if envelopes.is_empty() {
        Vec::new()
    } else {
        match delivery.send(&envelopes).await {
            Ok(outcomes) => outcomes,
            Err(e) => return Ordered::Stalled(e),
        }
    };
    let verdicts: Vec<(Envelope, Option<Failure>)> = envelopes
        .into_iter()
        .zip(&outcomes)
        .map(|(envelope, outcome)| {
            let verdict = delivery.verdict(&envelope, outcome);
            (envelope, verdict)
        })
        .collect();
    let (ack, held_until) = settle(&entries, verdicts, from);
    Ordered::Ack {
        ack,
        hold: held_until,
        more: more && held_until.is_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::classify::tests::message;

    fn deliver(seq: i64, key: &str) -> Entry {
        Entry::Deliver(Envelope {
            message: message(seq, "e", Some(key)),
            attempt: 1,
        })
    }

    fn seqs(entries: &[Entry]) -> Vec<i64> {
        entries.iter().map(|e| e.position().seq).collect()
    }

    #[test]
    fn the_batch_is_cut_before_a_key_repeats() {
        let mut entries = vec![
            deliver(1, "a"),
            deliver(2, "b"),
            Entry::Skip(Position { xid: 0, seq: 3 }),
            deliver(4, "a"),
            deliver(5, "c"),
        ];
        assert!(cut_before_repeat(&mut entries));
        assert_eq!(seqs(&entries), vec![1, 2, 3]);

        let mut one_key = vec![deliver(1, "a"), deliver(2, "a")];
        assert!(cut_before_repeat(&mut one_key));
        assert_eq!(seqs(&one_key), vec![1], "at least one entry goes");

        let mut distinct = vec![deliver(1, "a"), deliver(2, "b")];
        assert!(!cut_before_repeat(&mut distinct));
    }

    fn failure(seq: i64, disposition: Disposition) -> Failure {
        Failure {
            seq,
            message_id: seq.to_string(),
            attempts: 1,
            error: "x".into(),
            disposition,
        }
    }

    fn envelope(entry: &Entry) -> Envelope {
        match entry {
            Entry::Deliver(e) => e.clone(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_cursor_stops_before_the_first_retry_and_passes_the_dead() {
        let entries = vec![deliver(1, "a"), deliver(2, "b"), deliver(3, "c")];
        let verdicts = vec![
            (envelope(&entries[0]), None),
            (envelope(&entries[1]), Some(failure(2, Disposition::Dead))),
            (
                envelope(&entries[2]),
                Some(failure(
                    3,
                    Disposition::RetryAfter(Duration::from_millis(42)),
                )),
            ),
        ];
        let (ack, held) = settle(&entries, verdicts, Position::default());
        assert_eq!(ack.position.seq, 2);
        assert_eq!(held, Some(Duration::from_millis(42)));
        let failed: Vec<i64> = ack.failures.iter().map(|f| f.seq).collect();
        assert_eq!(failed, vec![2, 3]);
    }

    #[test]
    fn a_held_message_delivered_at_last_settles_its_record() {
        let mut entries = vec![deliver(5, "a")];
        if let Entry::Deliver(e) = &mut entries[0] {
            e.attempt = 3;
        }
        let verdicts = vec![(envelope(&entries[0]), None)];
        let (ack, held) = settle(&entries, verdicts, Position { xid: 0, seq: 4 });
        assert_eq!((ack.position.seq, held, ack.resolved), (5, None, vec![5]));
    }
}
