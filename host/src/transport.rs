//! The transport port: how the relay hands a batch to a delivery target.
//!
//! The relay only knows this trait. The WebAssembly adapter lives in
//! [`crate::plugin`]; tests and benchmarks can plug in native transports.

use async_trait::async_trait;

use crate::message::{Envelope, Outcome};

/// A failure of the transport as a whole, not of one message: the plugin
/// trapped, timed out, could not start, or broke the batch contract. Every
/// envelope of the batch is then retried (or dead-lettered when out of attempts).
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin {plugin:?} (target {target:?}): {kind}{}", stderr_suffix(.stderr))]
pub struct TransportError {
    pub plugin: String,
    pub target: String,
    pub kind: TransportErrorKind,
    /// What the guest wrote to stderr during the failed call (possibly truncated).
    pub stderr: String,
}

fn stderr_suffix(stderr: &str) -> String {
    let trimmed = stderr.trim();
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("; guest stderr: {trimmed}")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportErrorKind {
    #[error("could not start the plugin: {0}")]
    Instantiate(String),
    #[error("init failed: {0}")]
    Init(String),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("exceeded its time limit of {0} ms")]
    Timeout(u64),
    #[error("returned {got} outcomes for a batch of {expected}")]
    OutcomeCount { expected: usize, got: usize },
}

impl TransportErrorKind {
    /// The batch contract's one rule for outcome counts: exactly one outcome
    /// per envelope, in order, or the whole batch fails with
    /// [`TransportErrorKind::OutcomeCount`]. The relay then retries the
    /// batch's envelopes one by one, as after a trap, so a message is never
    /// re-sent because an outcome was made up for it (docs/plugins.md,
    /// "Outcomes"). [`deliver_checked`] applies it to every delivery.
    pub fn check_outcome_count(expected: usize, got: usize) -> Result<(), TransportErrorKind> {
        if expected == got {
            Ok(())
        } else {
            Err(TransportErrorKind::OutcomeCount { expected, got })
        }
    }
}

#[async_trait]
pub trait Transport: Send {
    /// Gets ready to deliver (a plugin instantiates and runs `init`, which
    /// may connect), so that a target that cannot start says so before any
    /// batch. `deliver` starts the transport itself when this was not called.
    async fn start(&mut self) -> Result<(), TransportError> {
        Ok(())
    }

    /// Delivers a batch, returning one outcome per envelope, in order; any
    /// other count is an error (see [`TransportErrorKind::check_outcome_count`]).
    async fn deliver(&mut self, batch: &[Envelope]) -> Result<Vec<Outcome>, TransportError>;
}

/// Delivers `batch` and holds the transport to the outcome-count rule
/// ([`TransportErrorKind::check_outcome_count`]). Every caller delivers
/// through this (the relay, `plugins test`), so the rule is applied once
/// for every transport, wasm or native; adapters neither pad nor check. The
/// injector chain, which splits a batch and merges the answers, applies the
/// same rule to its inner transport.
pub async fn deliver_checked(
    transport: &mut dyn Transport,
    plugin: &str,
    target: &str,
    batch: &[Envelope],
) -> Result<Vec<Outcome>, TransportError> {
    let outcomes = transport.deliver(batch).await?;
    TransportErrorKind::check_outcome_count(batch.len(), outcomes.len()).map_err(|kind| {
        TransportError {
            plugin: plugin.to_string(),
            target: target.to_string(),
            kind,
            stderr: String::new(),
        }
    })?;
    Ok(outcomes)
}

/// Makes one transport instance per relay worker of a target.
#[async_trait]
pub trait TransportFactory: Send + Sync {
    async fn create(&self, target: &str) -> Result<Box<dyn Transport>, TransportError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_outcome_per_envelope_passes() {
        assert_eq!(TransportErrorKind::check_outcome_count(3, 3), Ok(()));
        for got in [0, 2, 4] {
            let e = TransportErrorKind::check_outcome_count(3, got).unwrap_err();
            assert_eq!(e, TransportErrorKind::OutcomeCount { expected: 3, got });
            assert_eq!(
                e.to_string(),
                format!("returned {got} outcomes for a batch of 3")
            );
        }
    }
}
