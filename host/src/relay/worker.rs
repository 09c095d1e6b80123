//! One (target, partition) worker: lease → unwritten acks → retries due →
//! next batch → ack. Its duties live next to it: [`classify`](super::classify)
//! sorts a fetched batch, [`Delivery`] owns the transport and the verdicts,
//! [`AckWriter`] the acks, [`ordered`](super::ordered) the ordered path, and
//! [`backlog`](super::backlog) the pipelined unordered path.
//!
//! The lease is re-checked before every plugin call ([`PartitionWorker::held`]):
//! a relay that was paused (SIGSTOP, a VM migration) past a quarter of the
//! lease's TTL asks the database again before it delivers what it holds, and
//! drops it when the lease has moved.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::classify::{self, Entry, Limits};
use super::delivery::{CannotStart, Delivery};
use super::health::{Health, TargetHealth};
use super::ordered::{self, Ordered};
use super::pipeline::{AckWriter, Written};
use super::{TargetSpec, assigned_owner, storage_backoff};
use crate::config::RelaySettings;
use crate::message::{Envelope, LogEntry, Position};
use crate::routes::Routes;
use crate::storage::{Ack, DueRetry, Lease, Settlement, Storage, StorageError};
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

/// A lease is renewed in the database once this fraction of its TTL has
/// passed, not on every step: renewing is a write (a WAL flush on Postgres)
/// per batch otherwise. Before any plugin call at least three quarters of the
/// TTL remain, which the config keeps above three `call_timeout`s.
const RENEW_AFTER_FRACTION: u32 = 4;

#[derive(Clone)]
pub(super) struct PartitionWorker {
    pub target: TargetSpec,
    pub partition: u32,
    pub storage: Arc<dyn Storage>,
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
    /// Look again after this long (an ordered target holds at a message, or
    /// rows are hidden by an open transaction); commits do not cut it short.
    Hold(Duration),
    /// The target's plugin cannot start: nothing was sent and no attempt was
    /// charged; try again after [`STALL_WAIT`].
    Stalled,
}

/// The lease as this worker holds it.
#[derive(Default)]
pub(super) struct Held {
    pub lease: Option<Lease>,
    /// When the lease was last taken or renewed in the database (the time
    /// the request was sent, so the lease lasts at least `lease_ttl` from it).
    pub renewed_at: Option<Instant>,
}

impl Held {
    /// Applies what an ack write came to. `false`: the lease was lost.
    pub fn written(
        &mut self,
        written: Result<Written, StorageError>,
    ) -> Result<bool, StorageError> {
        match written {
            Ok(Written::Upto(position)) => {
                // The cursor moved (never backwards): so does the lease held.
                if let (Some(held), Some(p)) = (self.lease.as_mut(), position) {
                    held.position = held.position.max(p);
                }
                Ok(true)
            }
            Ok(Written::LeaseLost) => {
                tracing::warn!("lease lost during a batch; another relay will deliver it again");
                *self = Held::default();
                Ok(false)
            }
            Err(e) => {
                // Read the cursor back from the database before the next batch.
                self.renewed_at = None;
                Err(e)
            }
        }
    }
}

/// The worker's transport, lease and acks, kept across steps.
pub(super) struct State {
    pub delivery: Delivery,
    pub held: Held,
    pub acks: AckWriter,
    /// When a claim of due retries last came back empty.
    no_retries_at: Option<Instant>,
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
            // Only an idle worker wakes on commits: a back-off is waited out
            // in full, whatever the database (or this relay) writes meanwhile.
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

    /// The lease, if this relay is the partition's assigned owner and still
    /// holds it: renewed in the database once a quarter of its TTL has
    /// passed (always, after a pause that long), handed over if another live
    /// relay is assigned. Call it before every plugin call.
    pub(super) async fn held(&self, state: &mut State) -> Result<Option<Lease>, StorageError> {
        let members = self.members.borrow().clone();
        if let Some(assigned) = assigned_owner(&members, &self.target.name, self.partition)
            && assigned != self.owner
        {
            if let Some(lease) = state.held.lease.take() {
                tracing::info!(to = assigned, "handing the partition over");
                state.held.written(state.acks.write_all(&lease).await)?;
                self.storage.release_lease(&lease).await?;
            }
            return Ok(None);
        }
        // Held and renewed recently: still ours, and its position is the
        // cursor as this worker last moved it (only the holder moves it).
        if !self.renewal_due(&state.held)
            && let Some(lease) = &state.held.lease
        {
            return Ok(Some(lease.clone()));
        }
        let asked_at = Instant::now();
        let mut lease = self
            .storage
            .acquire_lease(
                &self.target.name,
                self.partition,
                &self.owner,
                self.settings.lease_ttl,
            )
            .await?;
        match (&mut lease, &state.held.lease) {
            (Some(new), Some(old)) => new.position = new.position.max(old.position),
            (Some(_), None) => tracing::info!("partition taken"),
            (None, Some(_)) => {
                tracing::warn!("the lease moved to another relay; dropping what this worker held");
                state.acks.discard();
            }
            (None, None) => {}
        }
        state.held.lease.clone_from(&lease);
        state.held.renewed_at = lease.as_ref().map(|_| asked_at);
        Ok(lease)
    }

    /// True once a quarter of the lease's TTL has passed since it was last
    /// taken or renewed in the database.
    pub(super) fn renewal_due(&self, held: &Held) -> bool {
        held.renewed_at
            .is_none_or(|at| at.elapsed() >= self.settings.lease_ttl / RENEW_AFTER_FRACTION)
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
            .storage
            .fetch_pending(self.partition, lease.position, batch_size)
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
        // The fetch may have outlasted a pause: ask again before delivering.
        let Some(lease) = self.held(state).await? else {
            return Ok(Step::Idle);
        };
        let (ack, hold, more) = match ordered::deliver(
            &mut state.delivery,
            &*self.storage,
            &self.target.name,
            lease.position,
            self.classify(entries),
        )
        .await?
        {
            Ordered::Ack { ack, hold, more } => (ack, hold, more),
            Ordered::Wait(d) => {
                self.health.held(&self.target.name, self.partition);
                return Ok(Step::Hold(d));
            }
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
            Step::Hold(UNSETTLED_RECHECK)
        } else {
            Step::Idle
        })
    }

    /// Claims and delivers the target's due retries (every target: an
    /// ordered target's are its replayed dead letters and what was left from
    /// a time it was unordered). Returns whether a full batch was due, and
    /// the step to end on, if the step must end here.
    async fn retry_due(&self, state: &mut State) -> Result<(bool, Option<Step>), StorageError> {
        let checked_lately = state
            .no_retries_at
            .is_some_and(|at| at.elapsed() < RETRY_CHECK_INTERVAL);
        if checked_lately {
            return Ok((false, None));
        }
        let asked_at = Instant::now();
        let batch_size = self.target.batch_size;
        let due = self
            .storage
            .claim_retries(
                &self.target.name,
                &self.owner,
                batch_size,
                self.settings.claim_timeout,
            )
            .await?;
        state.no_retries_at = due.is_empty().then_some(asked_at);
        if due.is_empty() {
            return Ok((false, None));
        }
        let full = due.len() as u32 == batch_size;
        if self.held(state).await?.is_none() {
            // The claims lapse after `claim_timeout`; then they are due again.
            return Ok((full, Some(Step::Idle)));
        }
        let settlements = match self.deliver_retries(&mut state.delivery, due).await {
            Ok(settlements) => settlements,
            Err(e) => return Ok((full, Some(self.stalled(e)))),
        };
        self.storage
            .settle_retries(&self.target.name, &settlements)
            .await?;
        Ok((full, None))
    }

    async fn deliver_retries(
        &self,
        delivery: &mut Delivery,
        due: Vec<DueRetry>,
    ) -> Result<Vec<Settlement>, CannotStart> {
        let mut settlements = Vec::new();
        let mut envelopes = Vec::new();
        for retry in due {
            match classify::within_limits(retry.entry, self.limits()) {
                Ok(message) => envelopes.push(Envelope {
                    message,
                    attempt: retry.attempts + 1,
                }),
                Err(bad) => settlements.push(Settlement::Failed(classify::malformed_failure(
                    bad,
                    retry.attempts,
                ))),
            }
        }
        if envelopes.is_empty() {
            return Ok(settlements);
        }
        let outcomes = delivery.send(&envelopes).await?;
        for (envelope, outcome) in envelopes.iter().zip(&outcomes) {
            settlements.push(match delivery.verdict(envelope, outcome) {
                None => Settlement::Delivered {
                    seq: envelope.message.seq,
                },
                Some(f) => Settlement::Failed(f),
            });
        }
        Ok(settlements)
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
        for entry in self.classify(entries) {
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
