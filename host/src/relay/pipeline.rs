//! A worker's acknowledgements: the write in flight, those merged while it
//! is, and any that a failed write left unwritten.
//!
//! Rules, all here:
//! - One write is in flight at a time; acks that come meanwhile are merged
//!   (the cursor moves to the furthest, every failure and settled record is
//!   kept) and written together, so a slow write (SQLite's write lock, taken
//!   by busy writers) costs one round trip for several batches.
//! - At most [`MAX_UNWRITTEN_BATCHES`] delivered batches are unacknowledged,
//!   in the write and waiting together. After a crash these and the batch
//!   being delivered are delivered again.
//! - A transient error (a busy or locked database, a dropped connection) is
//!   retried in place for up to [`AckWriter::patience`]: it costs no
//!   re-delivery.
//! - After any other error the acks are kept, not dropped: the worker writes
//!   them before it delivers anything more, so a failed commit (a full disk)
//!   never makes the worker deliver the same batch again and again.
//! - When the lease is lost the acks are dropped: the new holder delivers
//!   those batches again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::{JoinError, JoinHandle};

use crate::message::Position;
use crate::storage::{Ack, Lease, Storage, StorageError};

/// How many delivered batches may be unacknowledged.
pub(super) const MAX_UNWRITTEN_BATCHES: u32 = 8;

/// What writing came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Written {
    /// Written; the cursor is at least here (`None`: nothing was waiting).
    Upto(Option<Position>),
    /// The lease passed to another relay; what was unwritten is dropped.
    LeaseLost,
}

pub(super) struct AckWriter {
    storage: Arc<dyn Storage>,
    /// How long a transient error is retried in place.
    patience: Duration,
    writing: Option<InFlight>,
    pending: Option<Ack>,
    /// How many batches `pending` holds.
    pending_batches: u32,
}

struct InFlight {
    batches: u32,
    /// Where it moves the cursor.
    position: Position,
    task: JoinHandle<(Ack, Result<(), StorageError>)>,
}

/// Merges `ack` into `into`.
fn merge(into: &mut Ack, ack: Ack) {
    into.position = into.position.max(ack.position);
    into.failures.extend(ack.failures);
    into.resolved.extend(ack.resolved);
}

impl AckWriter {
    pub fn new(storage: Arc<dyn Storage>, patience: Duration) -> Self {
        Self {
            storage,
            patience,
            writing: None,
            pending: None,
            pending_batches: 0,
        }
    }

    /// True when acks are in flight or waiting.
    pub fn is_empty(&self) -> bool {
        self.writing.is_none() && self.pending.is_none()
    }

    /// The furthest position this writer is writing or holds: the database's
    /// cursor may be there already (a write that committed, not yet joined).
    pub fn furthest(&self) -> Option<Position> {
        let writing = self.writing.as_ref().map(|w| w.position);
        let pending = self.pending.as_ref().map(|a| a.position);
        writing.max(pending)
    }

    /// Drops every ack, written or not: the lease moved, and its new holder
    /// delivers those batches again. (A write in flight fails on its own:
    /// the database refuses an ack under a lease that moved.)
    pub fn discard(&mut self) {
        self.writing = None;
        self.pending = None;
        self.pending_batches = 0;
    }

    /// Adds one delivered batch's ack.
    pub fn push(&mut self, ack: Ack) {
        self.push_batches(ack, 1);
    }

    fn push_batches(&mut self, ack: Ack, batches: u32) {
        self.pending_batches += batches;
        match &mut self.pending {
            Some(pending) => merge(pending, ack),
            None => self.pending = Some(ack),
        }
    }

    /// Takes in the write in flight if it is done, or waits for it when the
    /// unacknowledged batches have reached their bound; then starts writing
    /// what is waiting, in a task of its own.
    pub async fn write_some(&mut self, lease: &Lease) -> Result<Written, StorageError> {
        let mut written = Written::Upto(None);
        if let Some(write) = self.writing.take() {
            if write.task.is_finished()
                || write.batches + self.pending_batches >= MAX_UNWRITTEN_BATCHES
            {
                written = self.finish(write).await?;
                if written == Written::LeaseLost {
                    return Ok(written);
                }
            } else {
                self.writing = Some(write);
                return Ok(written);
            }
        }
        if let Some(ack) = self.pending.take() {
            let storage = self.storage.clone();
            let lease = lease.clone();
            let patience = self.patience;
            self.writing = Some(InFlight {
                batches: std::mem::take(&mut self.pending_batches),
                position: ack.position,
                task: tokio::spawn(async move {
                    let result = write_patiently(&*storage, &lease, &ack, patience).await;
                    (ack, result)
                }),
            });
        }
        Ok(written)
    }

    /// Waits for the write in flight and writes what is left.
    pub async fn write_all(&mut self, lease: &Lease) -> Result<Written, StorageError> {
        let mut furthest = None;
        if let Some(write) = self.writing.take() {
            match self.finish(write).await? {
                Written::LeaseLost => return Ok(Written::LeaseLost),
                Written::Upto(p) => furthest = p,
            }
        }
        let Some(ack) = self.pending.take() else {
            return Ok(Written::Upto(furthest));
        };
        let batches = std::mem::take(&mut self.pending_batches);
        let result = write_patiently(&*self.storage, lease, &ack, self.patience).await;
        self.settle(ack, batches, result)
    }

    async fn finish(&mut self, write: InFlight) -> Result<Written, StorageError> {
        match write.task.await {
            Ok((ack, result)) => self.settle(ack, write.batches, result),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: the runtime is shutting down, and the batches will
            // be delivered again.
            Err(_) => Err(StorageError::Database(sqlx::Error::PoolClosed)),
        }
    }

    fn settle(
        &mut self,
        ack: Ack,
        batches: u32,
        result: Result<(), StorageError>,
    ) -> Result<Written, StorageError> {
        match result {
            Ok(()) => Ok(Written::Upto(Some(ack.position))),
            Err(StorageError::LeaseLost { .. }) => {
                self.pending = None;
                self.pending_batches = 0;
                Ok(Written::LeaseLost)
            }
            Err(e) => {
                // Kept, to be written before anything more is delivered.
                self.push_batches(ack, batches);
                Err(e)
            }
        }
    }
}

/// Writes `ack`, retrying transient errors in place for up to `patience`
/// (50 ms doubling to 1 s between tries).
async fn write_patiently(
    storage: &dyn Storage,
    lease: &Lease,
    ack: &Ack,
    patience: Duration,
) -> Result<(), StorageError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        match storage.mark_published(lease, ack).await {
            Err(e) if e.is_transient() && started.elapsed() + pause < patience => {
                tracing::debug!(error = %e, "acknowledgement failed for now; writing it again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

/// The result of a task of the worker's own. A panic there is the worker's
/// panic; a task cancelled (the runtime is shutting down) is an error like a
/// lost connection.
pub(super) fn joined<T>(
    result: Result<Result<T, StorageError>, JoinError>,
) -> Result<T, StorageError> {
    match result {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(StorageError::Database(sqlx::Error::PoolClosed)),
    }
}
