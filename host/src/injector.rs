//! The header-injector port, and the chain that runs a target's injectors
//! before its transport.

use async_trait::async_trait;

use crate::message::{Envelope, Headers, Outcome};
use crate::transport::{Transport, TransportError};

/// One change to an envelope's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Set a header (the name is lower-cased), replacing any earlier value.
    Set(String, String),
    /// Remove a header, whatever the case of its name.
    Remove(String),
}

/// Applies `edits` in order.
pub fn apply(headers: &mut Headers, edits: &[HeaderEdit]) {
    for edit in edits {
        match edit {
            HeaderEdit::Set(name, value) => {
                headers.insert(name.to_ascii_lowercase(), value.clone());
            }
            HeaderEdit::Remove(name) => {
                headers.retain(|k, _| !k.eq_ignore_ascii_case(name));
            }
        }
    }
}

#[async_trait]
pub trait HeaderInjector: Send {
    /// The plugin's name, for error messages.
    fn name(&self) -> &str;

    /// Gets ready (instantiate and `init`); see [`Transport::start`].
    async fn start(&mut self) -> Result<(), TransportError> {
        Ok(())
    }

    /// The edits for one envelope. The outer error is a failure of the
    /// injector itself (trap, timeout); the inner one is the injector's own
    /// refusal (e.g. a key it may not use).
    async fn inject(
        &mut self,
        envelope: &Envelope,
    ) -> Result<Result<Vec<HeaderEdit>, String>, TransportError>;
}

/// A transport behind a chain of injectors. An envelope whose injection
/// fails is not sent: it gets a retry outcome (and so, in the end, a dead
/// letter) with the injector's error, and the rest of the batch goes on.
pub struct InjectedTransport {
    injectors: Vec<Box<dyn HeaderInjector>>,
    inner: Box<dyn Transport>,
}

impl InjectedTransport {
    pub fn new(injectors: Vec<Box<dyn HeaderInjector>>, inner: Box<dyn Transport>) -> Self {
        Self { injectors, inner }
    }
}

#[async_trait]
impl Transport for InjectedTransport {
    async fn start(&mut self) -> Result<(), TransportError> {
        for injector in &mut self.injectors {
            injector.start().await?;
        }
        self.inner.start().await
    }

    async fn deliver(&mut self, batch: &[Envelope]) -> Result<Vec<Outcome>, TransportError> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        let mut ready = Vec::with_capacity(batch.len());
        'envelopes: for (i, envelope) in batch.iter().enumerate() {
            let mut envelope = envelope.clone();
            for injector in &mut self.injectors {
                let failure = match injector.inject(&envelope).await {
                    Ok(Ok(edits)) => {
                        apply(&mut envelope.message.headers, &edits);
                        continue;
                    }
                    Ok(Err(refusal)) => format!("injector {:?}: {refusal}", injector.name()),
                    // An injector that cannot start stalls the whole target,
                    // like a transport that cannot (see the relay worker).
                    Err(e)
                        if matches!(
                            e.kind,
                            crate::transport::TransportErrorKind::Init(_)
                                | crate::transport::TransportErrorKind::Instantiate(_)
                        ) =>
                    {
                        return Err(e);
                    }
                    Err(e) => format!("injector {e}"),
                };
                tracing::warn!(message_id = %envelope.message.id, error = %failure, "header injection failed");
                outcomes[i] = Some(Outcome::retry(failure));
                continue 'envelopes;
            }
            ready.push((i, envelope));
        }
        if !ready.is_empty() {
            let envelopes: Vec<Envelope> = ready.iter().map(|(_, e)| e.clone()).collect();
            let delivered = self.inner.deliver(&envelopes).await?;
            for ((i, _), outcome) in ready.iter().zip(delivered) {
                outcomes[*i] = Some(outcome);
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::retry("no outcome")))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_apply_in_order_and_ignore_case_on_remove() {
        let mut h = Headers::new();
        h.insert("authorization".into(), "Bearer x".into());
        apply(
            &mut h,
            &[
                HeaderEdit::Remove("Authorization".into()),
                HeaderEdit::Set("X-Snapshot".into(), "a".into()),
                HeaderEdit::Set("x-snapshot".into(), "b".into()),
            ],
        );
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-snapshot"], "b");
    }
}
