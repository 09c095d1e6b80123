//! Due retries: claimed from the failure records (by any worker of the
//! target; a claim lapses after `claim_timeout`), delivered, and settled.
//! Every target claims them. An unordered target's are its failed
//! messages; an ordered target's are its replayed dead letters and what was
//! left from a time it was unordered, all behind its cursor (the message an
//! ordered partition holds at is retried in place by [`super::ordered`]).

use std::time::Instant;

use super::classify;
use super::delivery::{CannotStart, Delivery};
use super::worker::{PartitionWorker, RETRY_CHECK_INTERVAL, State, Step};
use crate::message::Envelope;
use crate::storage::{DueRetry, Settlement, StorageError};

impl PartitionWorker {
    /// Claims and delivers the target's due retries (every target: an
    /// ordered target's are its replayed dead letters and what was left from
    /// a time it was unordered). Returns whether a full batch was due, and
    /// the step to end on, if the step must end here.
    pub(super) async fn retry_due(
        &self,
        state: &mut State,
    ) -> Result<(bool, Option<Step>), StorageError> {
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
}
