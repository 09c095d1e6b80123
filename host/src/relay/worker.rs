//! One (target, partition) worker: lease → unwritten acks → retries due →
//! next batch → ack, and how long to wait after each step. Its duties live
//! beside it: [`lease`](super::lease) the lease, [`retries`](super::retries)
//! the due retries, [`classify`](super::classify) a fetched batch,
//! [`Delivery`] the transport and the verdicts, [`AckWriter`] the acks,
//! [`ordered`](super::ordered) the ordered path and [`backlog`](super::backlog)
//! the pipelined unordered path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::classify::{self, Entry, Limits};
use super::delivery::{CannotStart, Delivery};
use super::health::{Health, TargetHealth};
use super::held::Held;
use super::ordered::{self, Ordered, Plan};
use super::pipeline::AckWriter;
use super::{TargetSpec, storage_backoff};
use crate::config::RelaySettings;
use crate::message::{LogEntry, Position};
use crate::routes::Routes;
use crate::storage::{Storage, StorageError};
use crate::transport::TransportFactory;

/// How soon to look again when rows are hidden by an open transaction.
pub(super) const UNSETTLED_RECHECK: Duration = Duration::from_millis(50);

/// How long a worker waits before trying a target's plugin again after it
/// could not start: from the failure, whatever commits come meanwhile.
const STALL_WAIT: Duration = Duration::from_secs(5);

/// After a claim of due retries came back empty, the next claim waits this
/// long: a worker draining a backlog steps hundreds of times a second, and a
/// retry is due seconds after its failure, so this delays it by at most this.
pub(super) const RETRY_CHECK_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub(super) struct PartitionWorker {
    pub target: TargetSpec,
    pub partition: u32,
    pub storage: Arc<dyn Storage>,
    /// The log's reads, shared with the other targets' workers.
    pub log: Arc<super::shared_reads::SharedLog>,
    pub transports: Arc<dyn TransportFactory>,
    pub routes: Arc<Routes>,
    pub settings: RelaySettings,
    pub owner: String,
    /// Bumped when the database announces a commit.
    pub wake: watch::Receiver<u64>,
    /// The live relays, sorted.
    pub members: watch::Receiver<Arc<Vec<String>>>,
    /// Where this worker reports its target's state (running, cannot start, held).
    pub health: Health,
}

/// What the worker does after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Rows remain: go again at once.
    Busy,
    /// Nothing (more) to do: wait for the poll interval or a wake-up.
    Idle,
    /// An ordered target holds at a failed message: look again after this
    /// long; commits do not cut it short.
    Hold(Duration),
    /// Rows are hidden by an open transaction: look again shortly, or as
    /// soon as a commit is announced (the commit that reveals them).
    Unsettled,
    /// The target's plugin cannot start: nothing was sent and no attempt was
    /// charged; try again after [`STALL_WAIT`].
    Stalled,
}

/// The worker's transport, lease and acks, kept across steps.
pub(super) struct State {
    pub delivery: Delivery,
    pub held: Held,
    pub acks: AckWriter,
    /// When a claim of due retries last came back empty.
    pub no_retries_at: Option<Instant>,
}

impl State {
    pub fn new(worker: &PartitionWorker) -> Self {
        Self {
            delivery: Delivery::new(worker.target.clone(), worker.transports.clone()),
            held: Held::default(),
            // A transient error on an ack is retried for up to half the lease.
            acks: AckWriter::new(worker.storage.clone(), worker.settings.lease_ttl / 2),
            no_retries_at: None,
        }
    }
}

impl PartitionWorker {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut state = State::new(&self);
        let mut errors = 0u32;
        let mut wake = self.wake.clone();
        let mut members = self.members.clone();
        while !shutdown.is_cancelled() {
            let step = self.step(&mut state).await;
            errors = if step.is_err() { errors + 1 } else { 0 };
            let (wait, wakeable) = match step {
                Ok(Step::Busy) => continue,
                Ok(Step::Idle) => (self.settings.poll_interval, true),
                Ok(Step::Hold(d)) => (d.min(self.settings.poll_interval), false),
                Ok(Step::Unsettled) => (UNSETTLED_RECHECK, true),
                Ok(Step::Stalled) => (STALL_WAIT, false),
                Err(e) => {
                    let wait = storage_backoff(errors);
                    tracing::warn!(
                        target = %self.target.name, partition = self.partition, error = %e,
                        retry_in_ms = wait.as_millis() as u64, "storage error"
                    );
                    (wait, false)
                }
            };
            // Only a worker waiting for rows wakes on commits: a back-off is
            // waited out in full, whatever the database (or this relay) writes
            // meanwhile.
            // A closed channel never wakes; the poll interval still does.
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
                Ok(()) = wake.changed(), if wakeable => {}
                Ok(()) = members.changed(), if wakeable => {}
            }
        }
        if let Some(lease) = &state.held.lease {
            // Write what was delivered, then let the partition go.
            if let Err(e) = state.acks.write_all(lease).await {
                tracing::warn!(target = %self.target.name, error = %e, "could not acknowledge the last batches");
            }
            if let Err(e) = self.storage.release_lease(lease).await {
                tracing::warn!(target = %self.target.name, error = %e, "could not release the lease");
            }
        }
    }

    pub(super) fn limits(&self) -> Limits {
        Limits {
            max_payload_bytes: self.settings.max_payload_bytes,
            max_key_bytes: self.settings.max_key_bytes,
        }
    }

    pub(super) fn classify(&self, entries: Vec<LogEntry>) -> Vec<Entry> {
        classify::classify(entries, &self.target.name, &self.routes, self.limits())
    }

    #[tracing::instrument(skip_all, fields(target = %self.target.name, partition = self.partition))]
    pub(super) async fn step(&self, state: &mut State) -> Result<Step, StorageError> {
        let Some(mut lease) = self.held(state).await? else {
            return Ok(Step::Idle);
        };
        // What an earlier failed write left is written before anything more
        // is delivered, so a failed commit never costs a re-delivery.
        if !state.acks.is_empty() {
            let written = state.acks.write_all(&lease).await;
            match (state.held.written(written)?, &state.held.lease) {
                (true, Some(moved)) => lease = moved.clone(),
                _ => return Ok(Step::Idle),
            }
        }

        let (retries_full, step) = self.retry_due(state).await?;
        if let Some(step) = step {
            return Ok(step);
        }
        if retries_full {
            // Renewed (if due) before the next plugin call.
            let Some(renewed) = self.held(state).await? else {
                return Ok(Step::Idle);
            };
            lease = renewed;
        }

        let batch_size = self.target.batch_size;
        let entries = self
            .log
            .fetch_pending(
                self.partition,
                lease.position,
                batch_size,
                self.settings.max_payload_bytes,
            )
            .await?;
        if !self.target.ordered {
            return self.deliver_backlog(state, entries, retries_full).await;
        }
        let full = entries.len() as u32 == batch_size;
        let last = entries
            .last()
            .map_or(lease.position, crate::message::entry_position);
        if entries.is_empty() {
            return Ok(if retries_full {
                Step::Busy
            } else {
                self.tail(last).await?
            });
        }
        let batch =
            match ordered::plan(&*self.storage, &self.target.name, self.classify(entries)).await? {
                Plan::Send(batch) => batch,
                Plan::Wait(d) => {
                    self.health.held(&self.target.name, self.partition);
                    return Ok(Step::Hold(d));
                }
            };
        // The reads may have outlasted a pause: ask again before delivering.
        let Some(lease) = self.held(state).await? else {
            return Ok(Step::Idle);
        };
        let (ack, hold, more) =
            match ordered::send(&mut state.delivery, batch, lease.position).await {
                Ordered::Ack { ack, hold, more } => (ack, hold, more),
                Ordered::Stalled(e) => return Ok(self.stalled(e)),
            };
        state.acks.push(ack);
        if !state.held.written(state.acks.write_all(&lease).await)? {
            return Ok(Step::Idle);
        }
        if let Some(hold) = hold {
            self.health.held(&self.target.name, self.partition);
            return Ok(Step::Hold(hold));
        }
        self.health.running(&self.target.name, self.partition);
        Ok(if more || full || retries_full {
            Step::Busy
        } else {
            self.tail(last).await?
        })
    }

    /// After the log's tail: look again shortly if an open transaction hides
    /// rows after `last`, otherwise wait for the poll interval or a wake-up.
    pub(super) async fn tail(&self, last: Position) -> Result<Step, StorageError> {
        Ok(if self.storage.has_unsettled(self.partition, last).await? {
            Step::Unsettled
        } else {
            Step::Idle
        })
    }

    pub(super) fn stalled(&self, e: CannotStart) -> Step {
        tracing::warn!(
            error = %e.0, retry_in_s = STALL_WAIT.as_secs(),
            "the target's plugin cannot start; its messages wait and no attempt is charged"
        );
        self.health.report(
            &self.target.name,
            self.partition,
            TargetHealth::cannot_start(&e.0),
        );
        Step::Stalled
    }
}
