//! One target's deliveries from one worker: the transport instance (made on
//! first use, kept across batches), the poison-message split, and the verdict
//! on each outcome (delivered, retry at a time, or dead).

use std::sync::Arc;
use std::time::Duration;

use super::TargetSpec;
use crate::backoff;
use crate::message::{Envelope, Outcome};
use crate::metrics::Counted;
use crate::storage::{Disposition, Failure};
use crate::transport::{
    Transport, TransportError, TransportErrorKind, TransportFactory, deliver_checked,
};

/// The target's plugin cannot work at all (init refused its config, or it
/// cannot be instantiated), as opposed to a failure of one batch: nothing was
/// sent, no attempt is charged, and the batch waits.
#[derive(Debug, Clone)]
pub(super) struct CannotStart(pub TransportError);

impl CannotStart {
    fn of(e: TransportError) -> Result<TransportError, CannotStart> {
        match e.kind {
            TransportErrorKind::Init(_) | TransportErrorKind::Instantiate(_) => Err(CannotStart(e)),
            _ => Ok(e),
        }
    }
}

pub(super) struct Delivery {
    spec: TargetSpec,
    factory: Arc<dyn TransportFactory>,
    transport: Option<Box<dyn Transport>>,
}

impl Delivery {
    pub fn new(spec: TargetSpec, factory: Arc<dyn TransportFactory>) -> Self {
        Self {
            spec,
            factory,
            transport: None,
        }
    }

    /// Delivers `envelopes`, one outcome each, in order. A failure of the
    /// transport as a whole becomes a retry of every envelope, except when
    /// the plugin cannot start at all.
    pub async fn send(&mut self, envelopes: &[Envelope]) -> Result<Vec<Outcome>, CannotStart> {
        let started = std::time::Instant::now();
        let outcomes = self.send_split(envelopes).await;
        crate::metrics::batch_duration(&self.spec.name, started.elapsed().as_secs_f64());
        let outcomes = outcomes?;
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
                target = %self.spec.name,
                attempt = envelope.attempt,
                trace_id,
            );
            span.in_scope(|| tracing::debug!(outcome = ?outcome, "delivered"));
        }
        Ok(outcomes)
    }

    /// A batch that crashed the plugin as a whole, or that it answered with
    /// the wrong number of outcomes, may hold one poison message: its
    /// envelopes are then delivered one by one, so the others are not charged
    /// for it. (Not after a timeout: that would multiply the wait.)
    async fn send_split(&mut self, envelopes: &[Envelope]) -> Result<Vec<Outcome>, CannotStart> {
        let e = match self.send_once(envelopes).await? {
            Ok(outcomes) => return Ok(outcomes),
            Err(e) => e,
        };
        let poison = matches!(
            e.kind,
            TransportErrorKind::Trap(_) | TransportErrorKind::OutcomeCount { .. }
        );
        if !poison || envelopes.len() == 1 {
            let ids: Vec<String> = envelopes.iter().map(|e| e.message.id.to_string()).collect();
            tracing::warn!(error = %e, message_ids = ?ids, "transport failed for the whole batch");
            return Ok(envelopes
                .iter()
                .map(|_| Outcome::retry(e.to_string()))
                .collect());
        }
        tracing::warn!(error = %e, "the batch failed as a whole; delivering its envelopes one by one");
        let mut outcomes = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            outcomes.push(
                match self.send_once(std::slice::from_ref(envelope)).await? {
                    Ok(mut one) => one.remove(0),
                    Err(e) => Outcome::retry(e.to_string()),
                },
            );
        }
        Ok(outcomes)
    }

    /// One call of the transport (made first if needed), with the outcome
    /// count checked: the outer error is "cannot start", the inner a failure
    /// of this batch.
    async fn send_once(
        &mut self,
        envelopes: &[Envelope],
    ) -> Result<Result<Vec<Outcome>, TransportError>, CannotStart> {
        let transport = match &mut self.transport {
            Some(t) => t,
            None => match self.factory.create(&self.spec.name).await {
                Ok(t) => self.transport.insert(t),
                Err(e) => return CannotStart::of(e).map(Err),
            },
        };
        match deliver_checked(
            transport.as_mut(),
            &self.spec.plugin,
            &self.spec.name,
            envelopes,
        )
        .await
        {
            Ok(outcomes) => Ok(Ok(outcomes)),
            Err(e) => CannotStart::of(e).map(Err),
        }
    }

    /// The failure record for an outcome of `envelope` at its attempt, or
    /// `None` when it was delivered: a reject, or a retry out of attempts, is
    /// dead; any other retry waits its back-off.
    pub fn verdict(&self, envelope: &Envelope, outcome: &Outcome) -> Option<Failure> {
        let attempts = envelope.attempt;
        let policy = &self.spec.retry;
        let target = &self.spec.name;
        let (error, disposition) = match outcome {
            Outcome::Delivered => {
                crate::metrics::delivery(target, Counted::Delivered);
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
            crate::metrics::delivery(target, Counted::Dead);
            tracing::warn!(message_id = %envelope.message.id, attempt = attempts, error = %error, "dead-lettered");
        } else {
            crate::metrics::delivery(target, Counted::Retry);
            if let Disposition::RetryAfter(wait) = &disposition {
                tracing::warn!(
                    message_id = %envelope.message.id,
                    attempt = attempts,
                    retry_in_ms = wait.as_millis() as u64,
                    error = %error,
                    "delivery failed; will retry"
                );
            }
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

#[cfg(test)]
pub(super) mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::config::RetryPolicy;
    use crate::relay::classify::tests::message;

    /// What the fake transport does with one call.
    #[derive(Debug, Clone)]
    pub enum Answer {
        /// One outcome per envelope: delivered, except the seqs in the list, retried.
        DeliverExcept(Vec<i64>),
        /// Traps if the batch holds this seq, otherwise delivers it all.
        TrapOn(i64),
        /// Answers this many outcomes, all delivered.
        Count(usize),
        CannotStart,
    }

    /// A native transport that records every call (the seqs of each batch).
    #[derive(Clone, Default)]
    pub struct Fake {
        pub calls: Arc<Mutex<Vec<Vec<i64>>>>,
        pub script: Arc<Mutex<VecDeque<Answer>>>,
        /// Used when the script is empty.
        pub otherwise: Option<Answer>,
        /// How long each call takes.
        pub delay: Duration,
    }

    impl Fake {
        pub fn answering(answers: impl IntoIterator<Item = Answer>) -> Self {
            Self {
                script: Arc::new(Mutex::new(answers.into_iter().collect())),
                ..Self::default()
            }
        }
        pub fn calls(&self) -> Vec<Vec<i64>> {
            self.calls.lock().unwrap().clone()
        }
    }

    fn error(kind: TransportErrorKind) -> TransportError {
        TransportError {
            plugin: "fake".into(),
            target: "t".into(),
            kind,
            stderr: String::new(),
        }
    }

    #[async_trait]
    impl Transport for Fake {
        async fn deliver(&mut self, batch: &[Envelope]) -> Result<Vec<Outcome>, TransportError> {
            let seqs: Vec<i64> = batch.iter().map(|e| e.message.seq).collect();
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            self.calls.lock().unwrap().push(seqs.clone());
            let answer = self
                .script
                .lock()
                .unwrap()
                .pop_front()
                .or_else(|| self.otherwise.clone())
                .unwrap_or(Answer::DeliverExcept(vec![]));
            match answer {
                Answer::DeliverExcept(failing) => Ok(seqs
                    .iter()
                    .map(|s| {
                        if failing.contains(s) {
                            Outcome::retry("down")
                        } else {
                            Outcome::Delivered
                        }
                    })
                    .collect()),
                Answer::TrapOn(seq) if seqs.contains(&seq) => {
                    Err(error(TransportErrorKind::Trap("poison".into())))
                }
                Answer::TrapOn(_) => Ok(vec![Outcome::Delivered; seqs.len()]),
                Answer::Count(n) => Ok(vec![Outcome::Delivered; n]),
                Answer::CannotStart => Err(error(TransportErrorKind::Init("bad config".into()))),
            }
        }
    }

    #[async_trait]
    impl TransportFactory for Fake {
        async fn create(&self, _target: &str) -> Result<Box<dyn Transport>, TransportError> {
            Ok(Box::new(self.clone()))
        }
    }

    pub fn spec(ordered: bool) -> TargetSpec {
        TargetSpec {
            name: "t".into(),
            plugin: "fake".into(),
            batch_size: 10,
            retry: RetryPolicy {
                max_attempts: 3,
                ..RetryPolicy::default()
            },
            ordered,
        }
    }

    pub fn envelopes(seqs: impl IntoIterator<Item = i64>) -> Vec<Envelope> {
        seqs.into_iter()
            .map(|seq| Envelope {
                message: message(seq, "e", None),
                attempt: 1,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_trap_splits_the_batch_so_only_the_poison_message_is_retried() {
        let fake = Fake {
            otherwise: Some(Answer::TrapOn(2)),
            ..Fake::default()
        };
        let mut delivery = Delivery::new(spec(false), Arc::new(fake.clone()));
        let outcomes = delivery.send(&envelopes([1, 2, 3])).await.unwrap();
        assert_eq!(outcomes[0], Outcome::Delivered);
        assert!(matches!(&outcomes[1], Outcome::Retry { reason, .. } if reason.contains("poison")));
        assert_eq!(outcomes[2], Outcome::Delivered);
        assert_eq!(fake.calls(), vec![vec![1, 2, 3], vec![1], vec![2], vec![3]]);
    }

    #[tokio::test]
    async fn a_short_answer_is_never_padded_each_envelope_goes_again_alone() {
        // Two outcomes for three envelopes: which one is missing is unknown,
        // so none is taken as delivered or retried from that answer.
        let fake = Fake::answering([Answer::Count(2)]);
        let mut delivery = Delivery::new(spec(false), Arc::new(fake.clone()));
        let outcomes = delivery.send(&envelopes([1, 2, 3])).await.unwrap();
        assert_eq!(outcomes, vec![Outcome::Delivered; 3]);
        assert_eq!(fake.calls(), vec![vec![1, 2, 3], vec![1], vec![2], vec![3]]);
    }

    #[tokio::test]
    async fn a_plugin_that_cannot_start_is_reported_and_nothing_is_charged() {
        let fake = Fake::answering([Answer::CannotStart]);
        let mut delivery = Delivery::new(spec(false), Arc::new(fake.clone()));
        let err = delivery.send(&envelopes([1, 2])).await.unwrap_err();
        assert!(err.0.to_string().contains("bad config"), "{}", err.0);
        assert_eq!(fake.calls().len(), 1, "no split after cannot-start");
    }

    #[test]
    fn verdicts_follow_the_retry_policy() {
        let delivery = Delivery::new(spec(false), Arc::new(Fake::default()));
        let mut env = envelopes([7]).remove(0);
        assert_eq!(delivery.verdict(&env, &Outcome::Delivered), None);
        let retry = delivery.verdict(&env, &Outcome::retry("x")).unwrap();
        assert!(matches!(retry.disposition, Disposition::RetryAfter(_)));
        env.attempt = 3;
        let dead = delivery.verdict(&env, &Outcome::retry("x")).unwrap();
        assert_eq!(dead.disposition, Disposition::Dead);
        assert_eq!(dead.error, "gave up after 3 attempts: x");
        env.attempt = 1;
        let rejected = delivery
            .verdict(&env, &Outcome::Reject("no".into()))
            .unwrap();
        assert_eq!(
            (rejected.disposition, rejected.error.as_str()),
            (Disposition::Dead, "rejected: no")
        );
    }
}
