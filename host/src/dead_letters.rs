//! Dead letters as a domain: which may be replayed, and how a replay or a
//! purge works through a selection. The command line over it is
//! `cli/dead_letters.rs`.
//!
//! A replay or a purge first takes the whole selection ([`Selection::take`]),
//! then (once the operator confirmed) works through it per target in batches
//! of [`BATCH`], one statement per batch ([`Selection::apply`]); rows that
//! stopped being dead letters meanwhile are left alone.
//!
//! Replay semantics: a replayed dead letter goes back to the retry state, due
//! at once, keeping its attempt count and history. The relay makes one more
//! attempt (numbered after the last one); if that fails, the message is
//! dead-lettered again. Which targets may be replayed is decided by
//! [`check_replayable`] alone.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::Config;
use crate::storage::{DeadLetterFilter, Storage, StorageError};

/// How many dead letters one replay or purge statement handles.
pub const BATCH: usize = 500;

/// What to do with a selection of dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Back to the retry state, due at once: one more attempt each.
    Replay,
    /// Delete for good.
    Purge,
}

impl Action {
    pub fn verb(self) -> &'static str {
        match self {
            Action::Replay => "replay",
            Action::Purge => "purge",
        }
    }

    pub fn done(self) -> &'static str {
        match self {
            Action::Replay => "replayed",
            Action::Purge => "purged",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error(
        "cannot replay dead letters of {targets}: not a target in {file}, so no relay would deliver them; \
         narrow the selection with --target, or purge them"
    )]
    UnknownTarget { targets: String, file: String },
    #[error("{action} stopped after {done} of {total} dead letters: {cause}")]
    Stopped {
        action: &'static str,
        done: u64,
        total: usize,
        cause: StorageError,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Replay is refused for targets the config does not have (no relay would
/// pick the retry up). Ordered targets replay too: a replayed dead letter is
/// behind the target's cursor, so it is retried on its own as soon as it is
/// due, in log order among the letters replayed together, without holding
/// the partition (docs/dead-letters.md).
pub fn check_replayable<'a>(
    config: &Config,
    targets: impl IntoIterator<Item = &'a str>,
) -> Result<(), DeadLetterError> {
    let unknown: BTreeSet<&str> = targets
        .into_iter()
        .filter(|t| !config.targets.contains_key(*t))
        .collect();
    if !unknown.is_empty() {
        return Err(DeadLetterError::UnknownTarget {
            targets: quoted(&unknown),
            file: config.source.display().to_string(),
        });
    }
    Ok(())
}

fn quoted(set: &BTreeSet<&str>) -> String {
    set.iter()
        .map(|t| format!("{t:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The dead letters one replay or purge applies to: per target, their seqs
/// in the order listed (newest first). A replay's selection has passed
/// [`check_replayable`], both for the `--target` asked for and for every
/// target taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    action: Action,
    by_target: BTreeMap<String, Vec<i64>>,
}

impl Selection {
    /// Every dead letter `filter` matches, up to its limit, for `action`.
    pub async fn take(
        config: &Config,
        storage: &dyn Storage,
        action: Action,
        filter: &DeadLetterFilter,
    ) -> Result<Self, DeadLetterError> {
        if action == Action::Replay
            && let Some(target) = &filter.target
        {
            check_replayable(config, [target.as_str()])?;
        }
        let mut by_target: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for l in storage.list_dead_letters(filter).await? {
            by_target.entry(l.target).or_default().push(l.seq);
        }
        if action == Action::Replay {
            check_replayable(config, by_target.keys().map(String::as_str))?;
        }
        Ok(Self { action, by_target })
    }

    /// The dead letters picked one by one (`(target, seq)`), for `action`.
    pub fn of(
        config: &Config,
        action: Action,
        picks: impl IntoIterator<Item = (String, i64)>,
    ) -> Result<Self, DeadLetterError> {
        let mut by_target: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for (target, seq) in picks {
            by_target.entry(target).or_default().push(seq);
        }
        if action == Action::Replay {
            check_replayable(config, by_target.keys().map(String::as_str))?;
        }
        Ok(Self { action, by_target })
    }

    pub fn action(&self) -> Action {
        self.action
    }

    /// How many dead letters, in all.
    pub fn len(&self) -> usize {
        self.by_target.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each target taken, with how many of its dead letters.
    pub fn counts(&self) -> impl Iterator<Item = (&str, usize)> {
        self.by_target.iter().map(|(t, s)| (t.as_str(), s.len()))
    }

    /// Applies the action, batch by batch; `progress` is told how many rows
    /// each batch covered. Returns how many rows were changed (fewer than
    /// [`Selection::len`] when some stopped being dead letters meanwhile).
    pub async fn apply(
        &self,
        storage: &dyn Storage,
        mut progress: impl FnMut(usize),
    ) -> Result<u64, DeadLetterError> {
        let mut changed = 0u64;
        for (target, seqs) in &self.by_target {
            for batch in seqs.chunks(BATCH) {
                let n = match self.action {
                    Action::Replay => storage.replay_dead_letters(target, batch).await,
                    Action::Purge => storage.purge_dead_letters(target, batch).await,
                }
                .map_err(|cause| DeadLetterError::Stopped {
                    action: self.action.verb(),
                    done: changed,
                    total: self.len(),
                    cause,
                })?;
                changed += n;
                progress(batch.len());
            }
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> Config {
        Config::from_toml(
            r#"
            database = "sqlite://outbox.db"
            [[routes]]
            events = ["*"]
            targets = ["plain", "strict"]
            [targets.plain]
            plugin = "null"
            [targets.strict]
            plugin = "null"
            ordered = true
            "#,
            Path::new("/etc/relay"),
        )
        .unwrap()
    }

    #[test]
    fn replay_is_refused_on_unknown_targets_only() {
        let config = config();
        assert!(check_replayable(&config, ["plain"]).is_ok());
        assert!(check_replayable(&config, ["plain", "strict"]).is_ok());
        let e = check_replayable(&config, ["gone"]).unwrap_err().to_string();
        assert!(e.contains("\"gone\"") && e.contains("(inline)"), "{e}");
    }
}
