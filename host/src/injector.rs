//! The header-injector port, and the chain that runs a target's injectors
//! before its transport.

use std::borrow::Cow;

use async_trait::async_trait;

use crate::message::{Envelope, Headers, Outcome};
use crate::transport::{Transport, TransportError, TransportErrorKind};

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

    /// Runs every injector on `envelope`, in order, each seeing the edits of
    /// those before it. `Ok(Err(reason))`: an injector refused or failed, and
    /// the envelope is not sent.
    async fn run_chain(
        &mut self,
        envelope: &mut Cow<'_, Envelope>,
    ) -> Result<Result<(), String>, TransportError> {
        for injector in &mut self.injectors {
            match injector.inject(envelope).await {
                Ok(Ok(edits)) => {
                    if !edits.is_empty() {
                        apply(&mut envelope.to_mut().message.headers, &edits);
                    }
                }
                Ok(Err(refusal)) => {
                    return Ok(Err(format!("injector {:?}: {refusal}", injector.name())));
                }
                // An injector that cannot start stalls the whole target,
                // like a transport that cannot (see the relay worker).
                Err(e)
                    if matches!(
                        e.kind,
                        TransportErrorKind::Init(_) | TransportErrorKind::Instantiate(_)
                    ) =>
                {
                    return Err(e);
                }
                Err(e) => return Ok(Err(format!("injector {e}"))),
            }
        }
        Ok(Ok(()))
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

    /// Runs the chain on each envelope, then delivers those it did not
    /// refuse. An envelope is copied only when an injector edits it (and
    /// then once, whatever the chain's length); when nothing was edited or
    /// refused, the transport gets the relay's batch itself.
    async fn deliver(&mut self, batch: &[Envelope]) -> Result<Vec<Outcome>, TransportError> {
        let mut refused: Vec<Option<Outcome>> = vec![None; batch.len()];
        let mut edited: Vec<Cow<'_, Envelope>> = Vec::with_capacity(batch.len());
        for (envelope, refusal) in batch.iter().zip(&mut refused) {
            let mut envelope = Cow::Borrowed(envelope);
            if let Err(failure) = self.run_chain(&mut envelope).await? {
                tracing::warn!(message_id = %envelope.message.id, error = %failure, "header injection failed");
                *refusal = Some(Outcome::retry(failure));
            }
            edited.push(envelope);
        }
        let untouched = refused.iter().all(Option::is_none)
            && edited.iter().all(|e| matches!(e, Cow::Borrowed(_)));
        if untouched {
            return self.inner.deliver(batch).await;
        }
        let ready: Vec<Envelope> = edited
            .into_iter()
            .zip(&refused)
            .filter(|(_, refusal)| refusal.is_none())
            .map(|(envelope, _)| envelope.into_owned())
            .collect();
        let delivered = if ready.is_empty() {
            Vec::new()
        } else {
            self.inner.deliver(&ready).await?
        };
        // The chain splits the batch, so it holds its transport to the same
        // rule the wasm adapter does rather than guess outcomes.
        TransportErrorKind::check_outcome_count(ready.len(), delivered.len()).map_err(|kind| {
            TransportError {
                plugin: "(transport behind injectors)".into(),
                target: String::new(),
                kind,
                stderr: String::new(),
            }
        })?;
        let mut delivered = delivered.into_iter();
        Ok(refused
            .into_iter()
            .filter_map(|refusal| refusal.or_else(|| delivered.next()))
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

    /// Sets `x-<name>` to the value `x-seen` had when it ran (or "-"), and
    /// refuses events named `refuse.<name>`; or, with `edits: false`, reads only.
    struct Fake {
        name: &'static str,
        edits: bool,
    }

    #[async_trait]
    impl HeaderInjector for Fake {
        fn name(&self) -> &str {
            self.name
        }

        async fn inject(
            &mut self,
            envelope: &Envelope,
        ) -> Result<Result<Vec<HeaderEdit>, String>, TransportError> {
            if envelope.message.event_name == format!("refuse.{}", self.name) {
                return Ok(Err("no".into()));
            }
            if !self.edits {
                return Ok(Ok(Vec::new()));
            }
            let seen = envelope.message.headers.get("x-seen").cloned();
            Ok(Ok(vec![
                HeaderEdit::Set(format!("x-{}", self.name), seen.unwrap_or("-".into())),
                HeaderEdit::Set("x-seen".into(), self.name.into()),
            ]))
        }
    }

    /// Each batch a transport was handed, with its number.
    type Seen = std::sync::Arc<std::sync::Mutex<Vec<(usize, Vec<Envelope>)>>>;

    /// Records what it was handed; answers `reject(<x-seen>)` per envelope,
    /// with `short` fewer outcomes than it should.
    #[derive(Default)]
    struct Recorder {
        seen: Seen,
        short: usize,
    }

    #[async_trait]
    impl Transport for Recorder {
        async fn deliver(&mut self, batch: &[Envelope]) -> Result<Vec<Outcome>, TransportError> {
            let mut seen = self.seen.lock().unwrap();
            seen.push((batch.as_ptr() as usize, batch.to_vec()));
            Ok(batch
                .iter()
                .skip(self.short)
                .map(|e| {
                    Outcome::Reject(e.message.headers.get("x-seen").cloned().unwrap_or_default())
                })
                .collect())
        }
    }

    fn batch(events: &[&str]) -> Vec<Envelope> {
        events
            .iter()
            .enumerate()
            .map(|(i, event)| Envelope {
                message: crate::message::Message {
                    seq: i as i64,
                    xid: 0,
                    id: uuid::Uuid::now_v7(),
                    event_name: event.to_string(),
                    partition_key: None,
                    partition: 0,
                    payload: b"payload".to_vec(),
                    headers: Headers::new(),
                    created_at_ms: 0,
                },
                attempt: 1,
            })
            .collect()
    }

    fn chain(injectors: Vec<Fake>, recorder: Recorder) -> InjectedTransport {
        InjectedTransport::new(
            injectors
                .into_iter()
                .map(|f| Box::new(f) as Box<dyn HeaderInjector>)
                .collect(),
            Box::new(recorder),
        )
    }

    #[tokio::test]
    async fn a_chain_that_only_reads_hands_on_the_relays_batch_uncopied() {
        let recorder = Recorder::default();
        let seen = recorder.seen.clone();
        let mut t = chain(
            vec![Fake {
                name: "a",
                edits: false,
            }],
            recorder,
        );
        let batch = batch(&["e", "e"]);
        let outcomes = t.deliver(&batch).await.unwrap();
        assert_eq!(outcomes.len(), 2);
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen[0].0,
            batch.as_ptr() as usize,
            "the same slice, not a copy"
        );
    }

    #[tokio::test]
    async fn each_injector_sees_the_edits_before_it_and_refusals_keep_their_place() {
        let recorder = Recorder::default();
        let seen = recorder.seen.clone();
        let mut t = chain(
            vec![
                Fake {
                    name: "a",
                    edits: true,
                },
                Fake {
                    name: "b",
                    edits: true,
                },
            ],
            recorder,
        );
        let outcomes = t.deliver(&batch(&["e", "refuse.b", "e"])).await.unwrap();
        assert_eq!(outcomes[0], Outcome::Reject("b".into()));
        assert!(
            matches!(&outcomes[1], Outcome::Retry { reason, .. } if reason == "injector \"b\": no"),
            "{:?}",
            outcomes[1]
        );
        assert_eq!(outcomes[2], Outcome::Reject("b".into()));
        let seen = seen.lock().unwrap();
        let sent = &seen[0].1;
        assert_eq!(sent.len(), 2, "the refused envelope is not sent");
        assert_eq!(sent[0].message.headers["x-a"], "-");
        assert_eq!(sent[0].message.headers["x-b"], "a", "b ran after a's edits");
    }

    #[tokio::test]
    async fn a_transport_that_miscounts_fails_the_batch() {
        let recorder = Recorder {
            short: 1,
            ..Recorder::default()
        };
        let mut t = chain(
            vec![Fake {
                name: "a",
                edits: true,
            }],
            recorder,
        );
        let e = t.deliver(&batch(&["e", "e"])).await.unwrap_err();
        assert_eq!(
            e.kind,
            TransportErrorKind::OutcomeCount {
                expected: 2,
                got: 1
            }
        );
    }
}
