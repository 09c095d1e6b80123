//! One (target, partition) worker: lease → retries due → next batch → ack.
//! Through a backlog, an unordered target's worker overlaps these: batch N is
//! delivered while earlier batches' acks are written and batch N+1 is read.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;

use super::{TargetSpec, assigned_owner, storage_backoff};
use crate::backoff;
use crate::config::RelaySettings;
use crate::message::{Envelope, LogEntry, MalformedMessage, Outcome, Position, entry_position};
use crate::metrics::Counted;
use crate::routes::Routes;
use crate::storage::{
    BatchAck, Disposition, DueRetry, Failure, Lease, Settlement, Storage, StorageError,
};
use crate::transport::{Transport, TransportError, TransportErrorKind, TransportFactory};

/// The result of a storage call made in a task of its own. A panic there is
/// this worker's panic; a task cancelled (the runtime is shutting down) is
/// an error like a lost connection.
fn joined<T>(result: Result<Result<T, StorageError>, JoinError>) -> Result<T, StorageError> {
    match result {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(StorageError::Database(sqlx::Error::PoolClosed)),
    }
}

/// How soon to look again when rows are hidden by an open transaction.
const UNSETTLED_RECHECK: Duration = Duration::from_millis(50);

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
}

/// What the worker does after a step.
enum Step {
    /// A full batch: go again at once.
    Busy,
    /// Nothing (more) to do: wait for the poll interval or a wake-up.
    Idle,
    /// An ordered target holds at a message whose next attempt is this far off.
    Hold(Duration),
    /// The target's plugin cannot start (init refused its config, or it cannot
    /// be instantiated): nothing was sent and no attempt was charged.
    Stalled,
}

/// How long a worker waits before trying a stalled target's plugin again.
const STALL_WAIT: Duration = Duration::from_secs(5);

/// A failure that says the target cannot work at all, as opposed to a failure
/// of this batch: its messages wait instead of spending their attempts.
fn cannot_start(e: &TransportError) -> bool {
    matches!(
        e.kind,
        TransportErrorKind::Init(_) | TransportErrorKind::Instantiate(_)
    )
}

/// The worker's transport and lease, kept across steps.
struct State {
    transport: Option<Box<dyn Transport>>,
    lease: Option<Lease>,
    /// When the lease was last taken or renewed in the database (the time
    /// the request was sent, so the lease lasts at least `lease_ttl` from it).
    renewed_at: Option<Instant>,
    /// When a claim of due retries last came back empty.
    no_retries_at: Option<Instant>,
}

/// After a claim of due retries came back empty, the next claim waits this
/// long: a worker draining a backlog steps hundreds of times a second, and a
/// retry is due seconds after its failure, so this delays it by at most this.
const RETRY_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// A lease is renewed in the database once this fraction of its TTL has
/// passed, not on every step: renewing is a write (a WAL flush on Postgres)
/// per batch otherwise. Before any plugin call at least three quarters of the
/// TTL remain, which the config keeps above three `call_timeout`s.
const RENEW_AFTER_FRACTION: u32 = 4;

impl PartitionWorker {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut state = State {
            transport: None,
            lease: None,
            renewed_at: None,
            no_retries_at: None,
        };
        let mut errors = 0u32;
        while !shutdown.is_cancelled() {
            let wait = match self.step(&mut state).await {
                Ok(Step::Busy) => {
                    errors = 0;
                    None
                }
                Ok(Step::Idle) => {
                    errors = 0;
                    Some(self.settings.poll_interval)
                }
                Ok(Step::Hold(d)) => {
                    errors = 0;
                    Some(d.min(self.settings.poll_interval))
                }
                Ok(Step::Stalled) => {
                    errors = 0;
                    Some(STALL_WAIT)
                }
                Err(e) => {
                    errors += 1;
                    let wait = storage_backoff(errors);
                    tracing::warn!(
                        target = %self.target.name, partition = self.partition, error = %e,
                        retry_in_ms = wait.as_millis() as u64, "storage error"
                    );
                    Some(wait)
                }
            };
            if let Some(wait) = wait {
                // A closed channel never wakes; the poll interval still does.
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                    Ok(()) = self.wake.changed() => {}
                    Ok(()) = self.members.changed() => {}
                }
            }
        }
        if let Some(lease) = state.lease
            && let Err(e) = self.storage.release_lease(&lease).await
        {
            tracing::warn!(target = %self.target.name, error = %e, "could not release the lease");
        }
    }

    /// Takes (or renews) the lease if this relay is the partition's assigned
    /// owner; hands it over if another live relay is.
    async fn lease(&self, state: &mut State) -> Result<Option<Lease>, StorageError> {
        let members = self.members.borrow().clone();
        if let Some(assigned) = assigned_owner(&members, &self.target.name, self.partition)
            && assigned != self.owner
        {
            if let Some(lease) = state.lease.take() {
                tracing::info!(to = assigned, "handing the partition over");
                self.storage.release_lease(&lease).await?;
            }
            return Ok(None);
        }
        // Held and renewed recently: still ours, and its position is the
        // cursor as this worker last moved it (only the holder moves it).
        if let (Some(lease), Some(at)) = (&state.lease, state.renewed_at)
            && at.elapsed() < self.settings.lease_ttl / RENEW_AFTER_FRACTION
        {
            return Ok(Some(lease.clone()));
        }
        let asked_at = Instant::now();
        let lease = self
            .storage
            .acquire_lease(
                &self.target.name,
                self.partition,
                &self.owner,
                self.settings.lease_ttl,
            )
            .await?;
        if lease.is_some() && state.lease.is_none() {
            tracing::info!("partition taken");
        }
        state.lease.clone_from(&lease);
        state.renewed_at = lease.as_ref().map(|_| asked_at);
        Ok(lease)
    }

    #[tracing::instrument(skip_all, fields(target = %self.target.name, partition = self.partition))]
    async fn step(&self, state: &mut State) -> Result<Step, StorageError> {
        let batch_size = self.target.batch_size;
        let Some(lease) = self.lease(state).await? else {
            return Ok(Step::Idle);
        };

        let mut retries_full = false;
        let checked_lately = state
            .no_retries_at
            .is_some_and(|at| at.elapsed() < RETRY_CHECK_INTERVAL);
        let lease = if self.target.ordered || checked_lately {
            lease
        } else {
            let asked_at = Instant::now();
            let due = self
                .storage
                .claim_retries(
                    &self.target.name,
                    &self.owner,
                    batch_size,
                    self.settings.claim_timeout,
                )
                .await?;
            retries_full = due.len() as u32 == batch_size;
            state.no_retries_at = due.is_empty().then_some(asked_at);
            if due.is_empty() {
                lease
            } else {
                let settlements = match self.deliver_retries(&mut state.transport, due).await {
                    Ok(settlements) => settlements,
                    // The claims lapse after `claim_timeout`; then they are due again.
                    Err(e) => return Ok(self.stalled(&e)),
                };
                self.storage
                    .settle_retries(&self.target.name, &settlements)
                    .await?;
                // Renew (if due) before the next plugin call, so two calls in
                // one step never outlast the lease.
                let Some(renewed) = self.lease(state).await? else {
                    return Ok(Step::Idle);
                };
                renewed
            }
        };

        let entries = self
            .storage
            .fetch_pending(
                self.partition,
                lease.position,
                batch_size,
                self.settings.max_payload_bytes,
            )
            .await?;
        if !self.target.ordered {
            return self
                .deliver_backlog(state, &lease, entries, retries_full)
                .await;
        }
        let full = entries.len() as u32 == batch_size;
        let idle = if !full && self.unsettled(&entries, lease.position).await? {
            Step::Hold(UNSETTLED_RECHECK)
        } else {
            Step::Idle
        };
        if entries.is_empty() {
            return Ok(if retries_full { Step::Busy } else { idle });
        }
        let (ack, next) = match self
            .deliver_ordered(&mut state.transport, &lease, entries)
            .await?
        {
            Ordered::Ack(ack, hold) => (ack, hold),
            Ordered::Wait(d) => return Ok(Step::Hold(d)),
            Ordered::Stalled(e) => return Ok(self.stalled(&e)),
        };
        if !self.acknowledge(state, ack).await? {
            return Ok(Step::Idle);
        }
        Ok(match next {
            Some(hold) => hold,
            None if full || retries_full => Step::Busy,
            None => idle,
        })
    }

    /// Whether an open transaction still hides rows after the last of
    /// `entries`: they will be readable soon, so look again shortly.
    async fn unsettled(
        &self,
        entries: &[LogEntry],
        read_from: Position,
    ) -> Result<bool, StorageError> {
        self.storage
            .has_unsettled(
                self.partition,
                entries.last().map_or(read_from, entry_position),
            )
            .await
    }

    /// Writes a batch's acknowledgement and moves the held lease's cursor.
    /// `Ok(false)`: the lease was lost, and another relay will deliver the
    /// batch again. After any other error the cursor is read back from the
    /// database before the next batch, not trusted from memory.
    async fn acknowledge(
        &self,
        state: &mut State,
        ack: BatchAck<'_>,
    ) -> Result<bool, StorageError> {
        let acked = ack.position;
        let written = self.storage.mark_published(ack).await;
        self.acknowledged(state, acked, written)
    }

    fn acknowledged(
        &self,
        state: &mut State,
        acked: Position,
        written: Result<(), StorageError>,
    ) -> Result<bool, StorageError> {
        match written {
            Ok(()) => {
                // The cursor moved (never backwards): so does the lease held.
                if let Some(held) = state.lease.as_mut() {
                    held.position = held.position.max(acked);
                }
                Ok(true)
            }
            Err(StorageError::LeaseLost { .. }) => {
                tracing::warn!("lease lost during a batch; another relay will deliver it again");
                state.lease = None;
                state.renewed_at = None;
                Ok(false)
            }
            Err(e) => {
                state.renewed_at = None;
                Err(e)
            }
        }
    }

    /// Unordered targets: delivers `entries` and, while a backlog lasts, the
    /// batches after it, pipelined. While batch N is with the plugin, batch
    /// N+1 is read and earlier acknowledgements are written, each in a task of
    /// its own (this task is busy in the plugin call), so a batch costs the
    /// longest of the plugin call and the database round trips, not their sum.
    ///
    /// One write is in flight at a time. Acknowledgements that come while it
    /// is are merged and written together when it is done, so a slow write
    /// (SQLite's write lock, taken by busy writers) costs one round trip for
    /// several batches instead of one per batch; at most
    /// [`MAX_UNWRITTEN_BATCHES`] delivered batches are unacknowledged, in the
    /// write and waiting together. Everything is written before this
    /// returns. The pipeline stops after [`RETRY_CHECK_INTERVAL`] or when the
    /// lease is due for renewal, so the worker's other duties (due retries,
    /// the lease, hand-over) keep their pace.
    async fn deliver_backlog(
        &self,
        state: &mut State,
        lease: &Lease,
        mut entries: Vec<LogEntry>,
        retries_full: bool,
    ) -> Result<Step, StorageError> {
        let batch_size = self.target.batch_size;
        let partition = self.partition;
        let started = Instant::now();
        let mut acks = Acks::default();
        let mut read_from = lease.position;
        loop {
            let full = entries.len() as u32 == batch_size;
            let last = entries.last().map_or(read_from, entry_position);
            let renewal_due = state
                .renewed_at
                .is_none_or(|at| at.elapsed() >= self.settings.lease_ttl / RENEW_AFTER_FRACTION);
            let read_ahead = full && started.elapsed() < RETRY_CHECK_INTERVAL && !renewal_due;
            let storage = self.storage.clone();
            let max_payload = self.settings.max_payload_bytes;
            let reading = read_ahead.then(|| {
                tokio::spawn(async move {
                    storage
                        .fetch_pending(partition, last, batch_size, max_payload)
                        .await
                })
            });
            // A short batch is the tail of the log: whether rows hidden by
            // an open transaction follow it is asked alongside the delivery.
            let storage = self.storage.clone();
            let unsettled = (!full)
                .then(|| tokio::spawn(async move { storage.has_unsettled(partition, last).await }));
            // Let the tasks just spawned start (a task spawned from a worker
            // thread waits in its LIFO slot until the spawner yields) before
            // this task is busy in the plugin call.
            if reading.is_some() || unsettled.is_some() || acks.writing.is_some() {
                tokio::task::yield_now().await;
            }
            let delivered = if entries.is_empty() {
                None
            } else {
                Some(
                    self.deliver_unordered(&mut state.transport, lease, read_from, entries)
                        .await,
                )
            };
            let ack = match delivered {
                Some(Ok(ack)) => ack,
                // Nothing was read: only the due retries (if any) were done.
                None => {
                    if !self.write_all(state, lease, acks).await? {
                        return Ok(Step::Idle);
                    }
                    let idle = self.tail_step(unsettled).await?;
                    return Ok(if retries_full { Step::Busy } else { idle });
                }
                Some(Err(e)) => {
                    self.write_all(state, lease, acks).await?;
                    return Ok(self.stalled(&e));
                }
            };
            acks.merge(ack);
            let next = match reading {
                Some(task) => Some(joined(task.await)),
                None => None,
            };
            let next = match next {
                Some(Ok(next)) if !next.is_empty() => next,
                // The end of the backlog, of this turn, or a failed read.
                other => {
                    if !self.write_all(state, lease, acks).await? {
                        return Ok(Step::Idle);
                    }
                    if let Some(Err(e)) = other {
                        return Err(e);
                    }
                    return Ok(if full || retries_full {
                        Step::Busy
                    } else {
                        self.tail_step(unsettled).await?
                    });
                }
            };
            if !self.write_some(state, lease, &mut acks).await? {
                return Ok(Step::Idle);
            }
            read_from = last;
            entries = next;
        }
    }

    /// After the log's tail: look again shortly if an open transaction hides
    /// rows after it, otherwise wait for the poll interval or a wake-up.
    async fn tail_step(
        &self,
        unsettled: Option<JoinHandle<Result<bool, StorageError>>>,
    ) -> Result<Step, StorageError> {
        let unsettled = match unsettled {
            Some(task) => joined(task.await)?,
            None => false,
        };
        Ok(if unsettled {
            Step::Hold(UNSETTLED_RECHECK)
        } else {
            Step::Idle
        })
    }

    /// Takes in the write in flight if it is done, or waits for it when the
    /// unacknowledged batches have reached their bound; then starts writing
    /// the merged acknowledgements. `Ok(false)`: the lease was lost.
    async fn write_some(
        &self,
        state: &mut State,
        lease: &Lease,
        acks: &mut Acks,
    ) -> Result<bool, StorageError> {
        if let Some(write) = acks.writing.take() {
            if write.task.is_finished() || write.batches + acks.batches >= MAX_UNWRITTEN_BATCHES {
                if !self.acknowledged(state, write.position, joined(write.task.await))? {
                    return Ok(false);
                }
            } else {
                acks.writing = Some(write);
                return Ok(true);
            }
        }
        if let Some(pending) = acks.pending.take() {
            acks.writing = Some(Write {
                position: pending.position,
                batches: std::mem::take(&mut acks.batches),
                task: self.write_in_background(lease, pending),
            });
        }
        Ok(true)
    }

    /// Waits for the write in flight and writes what is left. `Ok(false)`:
    /// the lease was lost.
    async fn write_all(
        &self,
        state: &mut State,
        lease: &Lease,
        mut acks: Acks,
    ) -> Result<bool, StorageError> {
        if let Some(write) = acks.writing.take()
            && !self.acknowledged(state, write.position, joined(write.task.await))?
        {
            return Ok(false);
        }
        match acks.pending.take() {
            Some(pending) => self.acknowledge(state, pending.ack(lease)).await,
            None => Ok(true),
        }
    }

    /// Writes acknowledgements in a task of their own.
    fn write_in_background(
        &self,
        lease: &Lease,
        pending: PendingAck,
    ) -> JoinHandle<Result<(), StorageError>> {
        let storage = self.storage.clone();
        let lease = lease.clone();
        tokio::spawn(async move { storage.mark_published(pending.ack(&lease)).await })
    }

    fn stalled(&self, e: &TransportError) -> Step {
        tracing::warn!(
            error = %e, retry_in_s = STALL_WAIT.as_secs(),
            "the target's plugin cannot start; its messages wait and no attempt is charged"
        );
        Step::Stalled
    }

    /// A message over the size limits is treated as malformed: no target
    /// could take it, and it must not hold up the messages behind it.
    fn within_limits(&self, entry: LogEntry) -> LogEntry {
        let message = entry?;
        let reason = if message.payload.len() > self.settings.max_payload_bytes {
            format!(
                "the payload is {} bytes, over relay.max_payload_bytes ({})",
                message.payload.len(),
                self.settings.max_payload_bytes
            )
        } else if let Some(key) = message
            .partition_key
            .as_ref()
            .filter(|k| k.len() > self.settings.max_key_bytes)
        {
            format!(
                "the partition key is {} bytes, over relay.max_key_bytes ({})",
                key.len(),
                self.settings.max_key_bytes
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

    /// Routed, well-formed entries become envelopes; malformed ones that would
    /// have come here become dead letters; the rest are passed over.
    fn sort_entries(&self, entries: Vec<LogEntry>) -> Vec<Entry> {
        entries
            .into_iter()
            .map(|entry| self.within_limits(entry))
            .map(|entry| match entry {
                Ok(message) if self.routes.matches(&self.target.name, &message.event_name) => {
                    Entry::Deliver(Envelope {
                        message,
                        attempt: 1,
                    })
                }
                Ok(message) => Entry::Skip(message.position()),
                Err(bad) => {
                    let position = entry_position(&Err(bad.clone()));
                    if bad.event_name.trim().is_empty()
                        || self.routes.matches(&self.target.name, &bad.event_name)
                    {
                        tracing::warn!(seq = bad.seq, id = %bad.id, reason = %bad.reason, "malformed message dead-lettered");
                        crate::metrics::delivery(&self.target.name, Counted::Dead);
                        Entry::Dead(
                            position,
                            Failure {
                                seq: bad.seq,
                                message_id: bad.id,
                                attempts: 0,
                                error: format!("malformed message: {}", bad.reason),
                                disposition: Disposition::Dead,
                            },
                        )
                    } else {
                        Entry::Skip(position)
                    }
                }
            })
            .collect()
    }

    /// Unordered: deliver the batch, record every failure, move past it all.
    async fn deliver_unordered<'l>(
        &self,
        transport: &mut Option<Box<dyn Transport>>,
        lease: &'l Lease,
        read_from: Position,
        entries: Vec<LogEntry>,
    ) -> Result<BatchAck<'l>, TransportError> {
        let last = entries.last().map_or(read_from, entry_position);
        let mut failures = Vec::new();
        let mut envelopes = Vec::new();
        for entry in self.sort_entries(entries) {
            match entry {
                Entry::Deliver(e) => envelopes.push(e),
                Entry::Dead(_, f) => failures.push(f),
                Entry::Skip(_) => {}
            }
        }
        if !envelopes.is_empty() {
            let outcomes = self.send(transport, &envelopes).await?;
            for (envelope, outcome) in envelopes.iter().zip(&outcomes) {
                if let Some(f) = self.failure(envelope, 1, outcome) {
                    failures.push(f);
                }
            }
        }
        Ok(BatchAck {
            lease,
            position: last,
            failures,
            resolved: Vec::new(),
        })
    }

    /// Ordered: a message held by an earlier failure goes alone, when due;
    /// otherwise the batch is cut before a key repeats, so a failure never
    /// has a later message of its key delivered ahead of it. The cursor stops
    /// before the first message that is to be retried.
    async fn deliver_ordered<'l>(
        &self,
        transport: &mut Option<Box<dyn Transport>>,
        lease: &'l Lease,
        entries: Vec<LogEntry>,
    ) -> Result<Ordered<'l>, StorageError> {
        let mut entries = self.sort_entries(entries);
        let mut head_attempts = 0;
        let head_seq = match entries.first() {
            Some(Entry::Deliver(head)) => Some(head.message.seq),
            _ => None,
        };
        if let Some(seq) = head_seq
            && let Some(held) = self.storage.failure_state(&self.target.name, seq).await?
        {
            if !held.due_in.is_zero() && !held.dead {
                return Ok(Ordered::Wait(held.due_in));
            }
            head_attempts = held.attempts;
            entries.truncate(1);
        }
        if head_attempts == 0 {
            let mut keys = HashSet::new();
            let cut = entries
                .iter()
                .position(|e| match e {
                    Entry::Deliver(env) => !keys.insert(
                        env.message
                            .partition_key
                            .clone()
                            .unwrap_or_else(|| env.message.id.to_string()),
                    ),
                    _ => false,
                })
                .unwrap_or(entries.len());
            entries.truncate(cut.max(1));
        }
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
        let outcomes = if envelopes.is_empty() {
            Vec::new()
        } else {
            match self.send(transport, &envelopes).await {
                Ok(outcomes) => outcomes,
                Err(e) => return Ok(Ordered::Stalled(e)),
            }
        };
        let mut outcomes = envelopes.iter().zip(outcomes);
        let mut position = lease.position;
        let mut failures = Vec::new();
        let mut resolved = Vec::new();
        let mut hold = None;
        for entry in &entries {
            match entry {
                Entry::Skip(p) => position = *p,
                Entry::Dead(p, f) => {
                    position = *p;
                    failures.push(f.clone());
                }
                Entry::Deliver(_) => {
                    let Some((envelope, outcome)) = outcomes.next() else {
                        break;
                    };
                    let had_record = envelope.attempt > 1;
                    match self.failure(envelope, envelope.attempt, &outcome) {
                        None => {
                            position = envelope.message.position();
                            if had_record {
                                resolved.push(envelope.message.seq);
                            }
                        }
                        Some(f) => match f.disposition {
                            Disposition::Dead => {
                                position = envelope.message.position();
                                failures.push(f);
                            }
                            Disposition::RetryAfter(wait) => {
                                // Hold here: the cursor stays before it.
                                hold = Some(Step::Hold(wait));
                                failures.push(f);
                                break;
                            }
                        },
                    }
                }
            }
        }
        Ok(Ordered::Ack(
            self.ack(lease, position, failures, resolved),
            hold,
        ))
    }

    fn ack<'l>(
        &self,
        lease: &'l Lease,
        position: Position,
        failures: Vec<Failure>,
        resolved: Vec<i64>,
    ) -> BatchAck<'l> {
        BatchAck {
            lease,
            position,
            failures,
            resolved,
        }
    }

    async fn deliver_retries(
        &self,
        transport: &mut Option<Box<dyn Transport>>,
        due: Vec<DueRetry>,
    ) -> Result<Vec<Settlement>, TransportError> {
        let mut settlements = Vec::new();
        let mut envelopes = Vec::new();
        for retry in due {
            match self.within_limits(retry.entry) {
                Ok(message) => envelopes.push(Envelope {
                    message,
                    attempt: retry.attempts + 1,
                }),
                Err(bad) => settlements.push(Settlement::Failed(Failure {
                    seq: bad.seq,
                    message_id: bad.id,
                    attempts: retry.attempts,
                    error: format!("malformed message: {}", bad.reason),
                    disposition: Disposition::Dead,
                })),
            }
        }
        if envelopes.is_empty() {
            return Ok(settlements);
        }
        let outcomes = self.send(transport, &envelopes).await?;
        for (envelope, outcome) in envelopes.iter().zip(&outcomes) {
            settlements.push(match self.failure(envelope, envelope.attempt, outcome) {
                None => Settlement::Delivered {
                    seq: envelope.message.seq,
                },
                Some(f) => Settlement::Failed(f),
            });
        }
        Ok(settlements)
    }

    /// Delivers through this worker's transport, making it first if needed. A
    /// failure of the transport as a whole becomes a retry of every envelope,
    /// except when the plugin cannot start at all ([`cannot_start`]): that is
    /// returned, and the caller holds the batch without charging it.
    async fn send(
        &self,
        transport: &mut Option<Box<dyn Transport>>,
        envelopes: &[Envelope],
    ) -> Result<Vec<Outcome>, TransportError> {
        let started = std::time::Instant::now();
        let outcomes = self.send_batch(transport, envelopes).await;
        crate::metrics::batch_duration(&self.target.name, started.elapsed().as_secs_f64());
        outcomes
    }

    async fn send_batch(
        &self,
        transport: &mut Option<Box<dyn Transport>>,
        envelopes: &[Envelope],
    ) -> Result<Vec<Outcome>, TransportError> {
        let mut result = self.deliver_exactly(transport, envelopes).await;
        if let Err(e) = result {
            if cannot_start(&e) {
                return Err(e);
            }
            result = Err(e);
        }
        // A batch that crashed the plugin as a whole may hold one poison
        // message: deliver its envelopes one by one, so the others are not
        // charged for it. (Not after a timeout: that would multiply the wait.)
        if let Err(e) = &result
            && envelopes.len() > 1
            && matches!(
                e.kind,
                TransportErrorKind::Trap(_) | TransportErrorKind::OutcomeCount { .. }
            )
        {
            tracing::warn!(error = %e, "the batch failed as a whole; delivering its envelopes one by one");
            let mut outcomes = Vec::with_capacity(envelopes.len());
            for envelope in envelopes {
                outcomes.push(
                    match self
                        .deliver_exactly(transport, std::slice::from_ref(envelope))
                        .await
                    {
                        Ok(mut one) => one.remove(0),
                        Err(e) if cannot_start(&e) => return Err(e),
                        Err(e) => Outcome::retry(e.to_string()),
                    },
                );
            }
            result = Ok(outcomes);
        }
        match result {
            Ok(outcomes) => {
                for (envelope, outcome) in envelopes.iter().zip(&outcomes) {
                    // One span per delivery, carrying the trace it continues.
                    let trace_id = envelope
                        .message
                        .headers
                        .get("traceparent")
                        .and_then(|tp| tp.split('-').nth(1))
                        .unwrap_or_default();
                    let span = tracing::info_span!(
                        "delivery",
                        message_id = %envelope.message.id,
                        target = %self.target.name,
                        attempt = envelope.attempt,
                        trace_id,
                    );
                    span.in_scope(|| tracing::debug!(outcome = ?outcome, "delivered"));
                }
                Ok(outcomes)
            }
            Err(e) => {
                let ids: Vec<String> = envelopes.iter().map(|e| e.message.id.to_string()).collect();
                tracing::warn!(error = %e, message_ids = ?ids, "transport failed for the whole batch");
                Ok(envelopes
                    .iter()
                    .map(|_| Outcome::retry(e.to_string()))
                    .collect())
            }
        }
    }

    /// Delivers through this worker's transport (made first if needed) and
    /// checks that there is exactly one outcome per envelope.
    async fn deliver_exactly(
        &self,
        transport: &mut Option<Box<dyn Transport>>,
        envelopes: &[Envelope],
    ) -> Result<Vec<Outcome>, TransportError> {
        let t = match transport {
            Some(t) => t,
            None => transport.insert(self.transports.create(&self.target.name).await?),
        };
        let outcomes = t.deliver(envelopes).await?;
        if outcomes.len() == envelopes.len() {
            Ok(outcomes)
        } else {
            Err(TransportError {
                plugin: "(transport)".into(),
                target: self.target.name.clone(),
                kind: TransportErrorKind::OutcomeCount {
                    expected: envelopes.len(),
                    got: outcomes.len(),
                },
                stderr: String::new(),
            })
        }
    }

    /// The failure record for an outcome, or `None` when it was delivered.
    fn failure(&self, envelope: &Envelope, attempts: u32, outcome: &Outcome) -> Option<Failure> {
        let policy = &self.target.retry;
        let (error, disposition) = match outcome {
            Outcome::Delivered => {
                crate::metrics::delivery(&self.target.name, Counted::Delivered);
                return None;
            }
            Outcome::Reject(reason) => (format!("rejected: {reason}"), Disposition::Dead),
            Outcome::Retry { reason, .. } if attempts >= policy.max_attempts => (
                format!("gave up after {attempts} attempts: {reason}"),
                Disposition::Dead,
            ),
            Outcome::Retry { reason, delay_ms } => {
                // A plugin's hint is a lower bound, but never beyond the policy's cap.
                let hint = delay_ms.map(|ms| Duration::from_millis(ms).min(policy.max_backoff));
                let wait = backoff::delay(policy, attempts, hint);
                (reason.clone(), Disposition::RetryAfter(wait))
            }
        };
        if disposition == Disposition::Dead {
            crate::metrics::delivery(&self.target.name, Counted::Dead);
            tracing::warn!(message_id = %envelope.message.id, attempt = attempts, error = %error, "dead-lettered");
        } else {
            crate::metrics::delivery(&self.target.name, Counted::Retry);
        }
        Some(Failure {
            seq: envelope.message.seq,
            message_id: envelope.message.id.to_string(),
            attempts,
            error,
            disposition,
        })
    }
}

/// One log entry, as this target sees it.
enum Entry {
    Deliver(Envelope),
    Dead(Position, Failure),
    Skip(Position),
}

/// What an ordered step comes to.
enum Ordered<'l> {
    /// The head message is held; its next attempt is this far off.
    Wait(Duration),
    /// Acknowledge this, then hold (if a message failed) or go on.
    Ack(BatchAck<'l>, Option<Step>),
    /// The plugin cannot start; nothing was sent.
    Stalled(TransportError),
}

/// How many delivered batches may be unacknowledged (in the write in flight,
/// or merged and waiting for it). After a crash these and the batch being
/// delivered are delivered again.
const MAX_UNWRITTEN_BATCHES: u32 = 8;

/// Acknowledgements of delivered batches, merged: the cursor moves to the
/// furthest, and every failure and settled record is kept.
struct PendingAck {
    position: Position,
    failures: Vec<Failure>,
    resolved: Vec<i64>,
}

impl PendingAck {
    fn ack<'l>(self, lease: &'l Lease) -> BatchAck<'l> {
        BatchAck {
            lease,
            position: self.position,
            failures: self.failures,
            resolved: self.resolved,
        }
    }
}

/// A pipelined worker's acknowledgements: the write in flight and those
/// merged while it is.
#[derive(Default)]
struct Acks {
    writing: Option<Write>,
    pending: Option<PendingAck>,
    /// How many batches `pending` holds.
    batches: u32,
}

/// An acknowledgement being written in a task of its own.
struct Write {
    /// Where it moves the cursor.
    position: Position,
    /// How many batches it acknowledges.
    batches: u32,
    task: JoinHandle<Result<(), StorageError>>,
}

impl Acks {
    fn merge(&mut self, ack: BatchAck<'_>) {
        self.batches += 1;
        match &mut self.pending {
            Some(pending) => {
                pending.position = pending.position.max(ack.position);
                pending.failures.extend(ack.failures);
                pending.resolved.extend(ack.resolved);
            }
            None => {
                self.pending = Some(PendingAck {
                    position: ack.position,
                    failures: ack.failures,
                    resolved: ack.resolved,
                });
            }
        }
    }
}
