//! One (target, partition) worker: lease → retries due → next batch → ack.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{TargetSpec, storage_backoff};
use crate::backoff;
use crate::config::RelaySettings;
use crate::message::{Envelope, LogEntry, Outcome};
use crate::routes::Routes;
use crate::storage::{
    BatchAck, Disposition, DueRetry, Failure, Lease, Settlement, Storage, StorageError, now_ms,
};
use crate::transport::{Transport, TransportFactory};

pub(super) struct PartitionWorker {
    pub target: TargetSpec,
    pub partition: u32,
    pub storage: Arc<dyn Storage>,
    pub transports: Arc<dyn TransportFactory>,
    pub routes: Arc<Routes>,
    pub settings: RelaySettings,
    pub owner: String,
}

/// Whether a step found a full batch (then the worker loops at once).
enum Step {
    Busy,
    Idle,
}

impl PartitionWorker {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut transport: Option<Box<dyn Transport>> = None;
        let mut lease: Option<Lease> = None;
        let mut errors = 0u32;
        while !shutdown.is_cancelled() {
            let wait = match self.step(&mut transport, &mut lease).await {
                Ok(Step::Busy) => {
                    errors = 0;
                    None
                }
                Ok(Step::Idle) => {
                    errors = 0;
                    Some(self.settings.poll_interval)
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
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
        if let Some(lease) = lease
            && let Err(e) = self.storage.release_lease(&lease).await
        {
            tracing::warn!(target = %self.target.name, error = %e, "could not release the lease");
        }
    }

    #[tracing::instrument(skip_all, fields(target = %self.target.name, partition = self.partition))]
    async fn step(
        &self,
        transport: &mut Option<Box<dyn Transport>>,
        held: &mut Option<Lease>,
    ) -> Result<Step, StorageError> {
        let batch_size = self.target.batch_size;
        let Some(lease) = self
            .storage
            .acquire_lease(
                &self.target.name,
                self.partition,
                &self.owner,
                self.settings.lease_ttl,
            )
            .await?
        else {
            *held = None;
            return Ok(Step::Idle);
        };
        *held = Some(lease.clone());

        let due = self
            .storage
            .claim_retries(
                &self.target.name,
                &self.owner,
                batch_size,
                self.settings.claim_timeout,
            )
            .await?;
        let retries_full = due.len() as u32 == batch_size;
        let lease = if due.is_empty() {
            lease
        } else {
            let settlements = self.deliver_retries(transport, due).await;
            self.storage
                .settle_retries(&self.target.name, &settlements)
                .await?;
            // Renew before the next plugin call, so two calls in one step never
            // outlast the lease.
            let Some(renewed) = self
                .storage
                .acquire_lease(
                    &self.target.name,
                    self.partition,
                    &self.owner,
                    self.settings.lease_ttl,
                )
                .await?
            else {
                *held = None;
                return Ok(Step::Idle);
            };
            renewed
        };

        let entries = self
            .storage
            .fetch_pending(self.partition, lease.position, batch_size)
            .await?;
        let Some(last_seq) = entries.last().map(entry_seq) else {
            return Ok(if retries_full { Step::Busy } else { Step::Idle });
        };
        let full = entries.len() as u32 == batch_size;
        let mut failures = Vec::new();
        let mut envelopes = Vec::new();
        for entry in entries {
            match entry {
                Ok(message) if self.routes.matches(&self.target.name, &message.event_name) => {
                    envelopes.push(Envelope {
                        message,
                        attempt: 1,
                    });
                }
                Ok(_) => {}
                Err(bad) => {
                    if bad.event_name.trim().is_empty()
                        || self.routes.matches(&self.target.name, &bad.event_name)
                    {
                        tracing::warn!(seq = bad.seq, id = %bad.id, reason = %bad.reason, "malformed message dead-lettered");
                        failures.push(Failure {
                            seq: bad.seq,
                            message_id: bad.id,
                            attempts: 0,
                            error: format!("malformed message: {}", bad.reason),
                            disposition: Disposition::Dead,
                        });
                    }
                }
            }
        }
        if !envelopes.is_empty() {
            let outcomes = self.send(transport, &envelopes).await;
            for (envelope, outcome) in envelopes.iter().zip(&outcomes) {
                if let Some(f) = self.failure(envelope, 1, outcome) {
                    failures.push(f);
                }
            }
        }
        let ack = BatchAck {
            lease: &lease,
            position: last_seq,
            failures,
        };
        match self.storage.mark_published(ack).await {
            Ok(()) => {}
            Err(StorageError::LeaseLost { .. }) => {
                tracing::warn!("lease lost during a batch; another relay will deliver it again");
                *held = None;
                return Ok(Step::Idle);
            }
            Err(e) => return Err(e),
        }
        Ok(if full || retries_full {
            Step::Busy
        } else {
            Step::Idle
        })
    }

    async fn deliver_retries(
        &self,
        transport: &mut Option<Box<dyn Transport>>,
        due: Vec<DueRetry>,
    ) -> Vec<Settlement> {
        let mut settlements = Vec::new();
        let mut envelopes = Vec::new();
        for retry in due {
            match retry.entry {
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
            return settlements;
        }
        let outcomes = self.send(transport, &envelopes).await;
        for (envelope, outcome) in envelopes.iter().zip(&outcomes) {
            settlements.push(match self.failure(envelope, envelope.attempt, outcome) {
                None => Settlement::Delivered {
                    seq: envelope.message.seq,
                },
                Some(f) => Settlement::Failed(f),
            });
        }
        settlements
    }

    /// Delivers through this worker's transport, making it first if needed. A
    /// failure of the transport as a whole becomes a retry of every envelope.
    async fn send(
        &self,
        transport: &mut Option<Box<dyn Transport>>,
        envelopes: &[Envelope],
    ) -> Vec<Outcome> {
        let result = match transport {
            Some(t) => t.deliver(envelopes).await,
            None => match self.transports.create(&self.target.name).await {
                Ok(mut t) => {
                    let r = t.deliver(envelopes).await;
                    *transport = Some(t);
                    r
                }
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(outcomes) => {
                for (envelope, outcome) in envelopes.iter().zip(&outcomes) {
                    tracing::debug!(
                        message_id = %envelope.message.id, attempt = envelope.attempt,
                        outcome = ?outcome, "delivery"
                    );
                }
                outcomes
            }
            Err(e) => {
                let ids: Vec<String> = envelopes.iter().map(|e| e.message.id.to_string()).collect();
                tracing::warn!(error = %e, message_ids = ?ids, "transport failed for the whole batch");
                envelopes
                    .iter()
                    .map(|_| Outcome::retry(e.to_string()))
                    .collect()
            }
        }
    }

    /// The failure record for an outcome, or `None` when it was delivered.
    fn failure(&self, envelope: &Envelope, attempts: u32, outcome: &Outcome) -> Option<Failure> {
        let policy = &self.target.retry;
        let (error, disposition) = match outcome {
            Outcome::Delivered => return None,
            Outcome::Reject(reason) => (format!("rejected: {reason}"), Disposition::Dead),
            Outcome::Retry { reason, .. } if attempts >= policy.max_attempts => (
                format!("gave up after {attempts} attempts: {reason}"),
                Disposition::Dead,
            ),
            Outcome::Retry { reason, delay_ms } => {
                let wait = backoff::delay(policy, attempts, delay_ms.map(Duration::from_millis));
                let at = now_ms().saturating_add(wait.as_millis() as i64);
                (reason.clone(), Disposition::RetryAt(at))
            }
        };
        if disposition == Disposition::Dead {
            tracing::warn!(message_id = %envelope.message.id, attempt = attempts, error = %error, "dead-lettered");
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

fn entry_seq(entry: &LogEntry) -> i64 {
    match entry {
        Ok(m) => m.seq,
        Err(bad) => bad.seq,
    }
}
