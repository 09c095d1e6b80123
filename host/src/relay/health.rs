//! What each target of this relay is doing, as operators see it: running,
//! unable to start (since when, and why), or held by a failing ordered key.
//! Workers report per partition; [`Health::summary`] gives one state per
//! target, which the relay publishes in its heartbeat and `/readyz` shows.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::storage::{ServedTarget, now_ms};
use crate::transport::TransportError;

/// One partition's state, or a target's in [`Health::summary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TargetHealth {
    Running,
    /// The plugin cannot start: init refused its config, or it cannot be made.
    CannotStart {
        since_ms: i64,
        reason: String,
    },
    /// An ordered partition waits for a failed message's next attempt.
    Held {
        since_ms: i64,
        partitions: Vec<u32>,
    },
}

impl TargetHealth {
    pub fn cannot_start(e: &TransportError) -> Self {
        TargetHealth::CannotStart {
            since_ms: now_ms(),
            reason: e.to_string(),
        }
    }

    fn since(&self) -> Option<i64> {
        match self {
            TargetHealth::Running => None,
            TargetHealth::CannotStart { since_ms, .. } | TargetHealth::Held { since_ms, .. } => {
                Some(*since_ms)
            }
        }
    }

    /// Same kind of state (a repeated report keeps the first `since`).
    fn same_kind(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// The per-partition states of this relay's targets, shared by its workers.
#[derive(Debug, Clone, Default)]
pub struct Health {
    partitions: Arc<Mutex<BTreeMap<String, BTreeMap<u32, TargetHealth>>>>,
}

impl Health {
    pub fn report(&self, target: &str, partition: u32, state: TargetHealth) {
        let Ok(mut all) = self.partitions.lock() else {
            return;
        };
        // Workers report after every batch: allocate only for a new target.
        if !all.contains_key(target) {
            all.insert(target.to_string(), BTreeMap::new());
        }
        let Some(parts) = all.get_mut(target) else {
            return;
        };
        let slot = parts.entry(partition).or_insert(TargetHealth::Running);
        if !slot.same_kind(&state) {
            *slot = state;
        }
    }

    pub fn running(&self, target: &str, partition: u32) {
        self.report(target, partition, TargetHealth::Running);
    }

    pub fn held(&self, target: &str, partition: u32) {
        self.report(
            target,
            partition,
            TargetHealth::Held {
                since_ms: now_ms(),
                partitions: vec![partition],
            },
        );
    }

    /// Forgets a partition this relay no longer works (handed over).
    pub fn leave(&self, target: &str, partition: u32) {
        if let Ok(mut all) = self.partitions.lock()
            && let Some(parts) = all.get_mut(target)
        {
            parts.remove(&partition);
        }
    }

    /// What the heartbeat reports for `targets`: each one's summary state.
    pub fn served(&self, targets: &[String]) -> Vec<ServedTarget> {
        self.summary(targets)
            .into_iter()
            .map(|(name, state)| ServedTarget {
                name,
                state: serde_json::to_value(state)
                    .unwrap_or_else(|_| serde_json::json!({ "state": "running" })),
            })
            .collect()
    }

    /// One state per target among `targets`: cannot start if any partition
    /// cannot, else held if any partition is, else running.
    pub fn summary(&self, targets: &[String]) -> BTreeMap<String, TargetHealth> {
        let all = self
            .partitions
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default();
        targets
            .iter()
            .map(|target| {
                let parts = all.get(target).cloned().unwrap_or_default();
                let mut cannot: Option<TargetHealth> = None;
                let mut held_since = None;
                let mut held = Vec::new();
                for (partition, state) in &parts {
                    match state {
                        TargetHealth::CannotStart { .. } => {
                            if cannot.as_ref().is_none_or(|c| c.since() > state.since()) {
                                cannot = Some(state.clone());
                            }
                        }
                        TargetHealth::Held { since_ms, .. } => {
                            held.push(*partition);
                            held_since =
                                Some(held_since.map_or(*since_ms, |s: i64| s.min(*since_ms)));
                        }
                        TargetHealth::Running => {}
                    }
                }
                let state = match (cannot, held_since) {
                    (Some(c), _) => c,
                    (None, Some(since_ms)) => TargetHealth::Held {
                        since_ms,
                        partitions: held,
                    },
                    (None, None) => TargetHealth::Running,
                };
                (target.clone(), state)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::TransportErrorKind;

    #[test]
    fn a_target_is_as_bad_as_its_worst_partition_and_keeps_the_first_since() {
        let health = Health::default();
        let names = vec!["a".to_string(), "b".to_string()];
        health.running("a", 0);
        health.held("a", 1);
        let e = TransportError {
            plugin: "p".into(),
            target: "b".into(),
            kind: TransportErrorKind::Init("no broker".into()),
            stderr: String::new(),
        };
        health.report("b", 0, TargetHealth::cannot_start(&e));
        let first = health.summary(&names);
        assert!(
            matches!(&first["a"], TargetHealth::Held { partitions, .. } if partitions == &vec![1])
        );
        let TargetHealth::CannotStart { since_ms, reason } = &first["b"] else {
            panic!("{first:?}")
        };
        assert!(reason.contains("no broker"));
        std::thread::sleep(std::time::Duration::from_millis(5));
        health.report("b", 0, TargetHealth::cannot_start(&e));
        assert!(
            matches!(&health.summary(&names)["b"], TargetHealth::CannotStart { since_ms: s, .. } if s == since_ms)
        );
        health.running("a", 1);
        health.running("b", 0);
        assert_eq!(health.summary(&names)["a"], TargetHealth::Running);
        assert_eq!(health.summary(&names)["b"], TargetHealth::Running);
    }
}
