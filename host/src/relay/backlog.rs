//! The unordered path through a backlog, pipelined: while the plugin delivers
//! batch N, batch N+1 is read and earlier acks are written, each in a task of
//! its own (the worker's task is busy in the plugin call), so a batch costs
//! the longest of the plugin call and the database round trips, not their
//! sum. The acks' rules are [`AckWriter`](super::pipeline::AckWriter)'s.
//!
//! The pipeline stops after [`RETRY_CHECK_INTERVAL`] or when the lease is due
//! for renewal, so the worker's other duties (due retries, the lease,
//! hand-over) keep their pace. Everything delivered is written (or kept for
//! the next step, after a failed write) before it returns.

use std::time::Instant;

use tokio::task::JoinHandle;

use super::classify::Entry;
use super::delivery::{CannotStart, Delivery};
use super::pipeline::joined;
use super::worker::{PartitionWorker, RETRY_CHECK_INTERVAL, State, Step};
use crate::message::{LogEntry, Position, entry_position};
use crate::storage::{Ack, StorageError};

impl PartitionWorker {
    pub(super) async fn deliver_backlog(
        &self,
        state: &mut State,
        mut entries: Vec<LogEntry>,
        retries_full: bool,
    ) -> Result<Step, StorageError> {
        let batch_size = self.target.batch_size;
        let partition = self.partition;
        let started = Instant::now();
        let Some(mut lease) = state.held.lease.clone() else {
            return Ok(Step::Idle);
        };
        let mut read_from = lease.position;
        loop {
            let full = entries.len() as u32 == batch_size;
            let last = entries.last().map_or(read_from, entry_position);
            let read_ahead =
                full && started.elapsed() < RETRY_CHECK_INTERVAL && !self.renewal_due(&state.held);
            let log = self.log.clone();
            let max_payload = self.settings.max_payload_bytes;
            let reading = read_ahead.then(|| {
                tokio::spawn(async move {
                    log.fetch_pending(partition, last, batch_size, max_payload)
                        .await
                })
            });
            // A short batch is the tail of the log: whether rows hidden by
            // an open transaction follow it is asked alongside the delivery.
            let storage = self.storage.clone();
            let unsettled = (!full)
                .then(|| tokio::spawn(async move { storage.has_unsettled(partition, last).await }));
            if entries.is_empty() {
                if !state.held.written(state.acks.write_all(&lease).await)? {
                    return Ok(Step::Idle);
                }
                let idle = tail_of(unsettled).await?;
                return Ok(if retries_full { Step::Busy } else { idle });
            }
            // The read or the last call may have outlasted a pause of this
            // process: make sure the lease is still ours before delivering.
            match self.held(state).await? {
                Some(renewed) => lease = renewed,
                None => return Ok(Step::Idle),
            }
            // Let the tasks just spawned start (a task spawned from a worker
            // thread waits in its LIFO slot until the spawner yields) before
            // this task is busy in the plugin call.
            if reading.is_some() || unsettled.is_some() || !state.acks.is_empty() {
                tokio::task::yield_now().await;
            }
            let ack = match self
                .deliver_unordered(&mut state.delivery, last, entries)
                .await
            {
                Ok(ack) => ack,
                Err(e) => {
                    state.held.written(state.acks.write_all(&lease).await)?;
                    return Ok(self.stalled(e));
                }
            };
            self.health.running(&self.target.name, partition);
            state.acks.push(ack);
            let next = match reading {
                Some(task) => Some(joined(task.await)),
                None => None,
            };
            let next = match next {
                Some(Ok(next)) if !next.is_empty() => next,
                // The end of the backlog, of this turn, or a failed read.
                other => {
                    if !state.held.written(state.acks.write_all(&lease).await)? {
                        return Ok(Step::Idle);
                    }
                    if let Some(Err(e)) = other {
                        return Err(e);
                    }
                    return Ok(if full || retries_full {
                        Step::Busy
                    } else {
                        tail_of(unsettled).await?
                    });
                }
            };
            if !state.held.written(state.acks.write_some(&lease).await)? {
                return Ok(Step::Idle);
            }
            read_from = last;
            entries = next;
        }
    }

    /// The ack of an unordered batch: every failure recorded, the cursor past it all.
    pub(super) async fn deliver_unordered(
        &self,
        delivery: &mut Delivery,
        last: Position,
        entries: Vec<LogEntry>,
    ) -> Result<Ack, CannotStart> {
        let mut ack = Ack {
            position: last,
            ..Ack::default()
        };
        let mut envelopes = Vec::new();
        let entries = self.classify(entries);
        super::classify::note_dead_letters(&self.target.name, &entries);
        for entry in entries {
            match entry {
                Entry::Deliver(e) => envelopes.push(e),
                Entry::Dead(_, f) => ack.failures.push(f),
                Entry::Skip(_) => {}
            }
        }
        if !envelopes.is_empty() {
            let outcomes = delivery.send(&envelopes).await?;
            for (envelope, outcome) in envelopes.iter().zip(&outcomes) {
                if let Some(f) = delivery.verdict(envelope, outcome) {
                    ack.failures.push(f);
                }
            }
        }
        Ok(ack)
    }
}

/// After the log's tail: look again shortly if an open transaction hides
/// rows after it, otherwise wait for the poll interval or a wake-up.
async fn tail_of(
    unsettled: Option<JoinHandle<Result<bool, StorageError>>>,
) -> Result<Step, StorageError> {
    let unsettled = match unsettled {
        Some(task) => joined(task.await)?,
        None => false,
    };
    Ok(if unsettled {
        Step::Unsettled
    } else {
        Step::Idle
    })
}
