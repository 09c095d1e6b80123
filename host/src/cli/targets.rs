//! `outbox-relay targets forget`: the target registry as operators see it,
//! and what `status` adds about it (registered targets that no live relay
//! serves, each relay's reported state, the transaction delivery waits on).
//!
//! Every relay registers the targets it serves ([`crate::storage::Storage::heartbeat`]),
//! and retention keeps a message until every registered target has passed
//! it. Dropping a target from a config does not unregister it, so a rolling
//! config change loses nothing; only `targets forget` does, after saying
//! what it lets go.

use anyhow::bail;

use super::ConfigArg;
use crate::config::Config;
use crate::storage::{Storage, StorageError, TargetStatus};

#[derive(clap::Subcommand)]
pub(crate) enum TargetsCommand {
    /// Remove a target from the registry, with its cursors, retries and dead
    /// letters, so retention stops keeping messages for it. Without `--yes`,
    /// prints what it would let go and exits non-zero.
    Forget {
        #[command(flatten)]
        config: ConfigArg,
        /// The target's name.
        name: String,
        /// Forget it (otherwise only say what forgetting would let go).
        #[arg(long)]
        yes: bool,
    },
}

pub(crate) async fn run(command: TargetsCommand) -> anyhow::Result<()> {
    let TargetsCommand::Forget { config, name, yes } = command;
    let config = Config::load(&config.config)?;
    let storage = crate::app::open_storage(&config).await?;
    let Some(row) = storage.status(std::slice::from_ref(&name)).await?.pop() else {
        bail!("no status for target {name:?}");
    };
    if !row.registered {
        let registered = storage.registered_targets().await?;
        bail!(
            "{} (registered targets: {})",
            StorageError::UnknownTarget(name),
            if registered.is_empty() {
                "none".to_string()
            } else {
                registered.join(", ")
            }
        );
    }
    if !row.served_by.is_empty() {
        let owners = row.served_by.iter().map(|s| s.owner.clone()).collect();
        return Err(StorageError::TargetServed {
            target: name,
            owners,
        }
        .into());
    }
    println!(
        "forgetting target {name:?} lets retention delete {} message(s) it has not received, \
         and drops its {} retr{} and {} dead letter(s)",
        row.lag,
        row.retries_pending,
        if row.retries_pending == 1 { "y" } else { "ies" },
        row.dead_letters
    );
    if config.targets.contains_key(&name) {
        println!(
            "note: {name:?} is still in {}: a relay started with it registers it again and \
             delivers it everything still in the log",
            config.source.display()
        );
    }
    if !yes {
        bail!("target {name:?} was not forgotten: run again with --yes to forget it");
    }
    let cursors = storage.forget_target(&name).await?;
    println!("forgot target {name:?} ({cursors} cursor(s)); retention no longer waits for it");
    Ok(())
}

/// The targets `status` reports: the config's, then every other registered one.
pub(crate) async fn status_targets(
    storage: &dyn Storage,
    config: &Config,
) -> Result<Vec<String>, StorageError> {
    let mut names: Vec<String> = config.targets.keys().cloned().collect();
    for name in storage.registered_targets().await? {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// What `status` prints under its table: registered targets nobody serves,
/// states other than running, and the transaction delivery waits on.
pub(crate) fn notes(rows: &[TargetStatus]) -> Vec<String> {
    let mut notes = Vec::new();
    for r in rows {
        if r.holds_back_retention() {
            notes.push(format!(
                "target {:?} is registered but no live relay serves it: retention keeps the {} \
                 message(s) it has not passed (and everything after them); `outbox-relay targets \
                 forget {}` lets them go",
                r.target, r.lag, r.target
            ));
        }
        for s in &r.served_by {
            if s.state.get("state").and_then(|v| v.as_str()) != Some("running") {
                notes.push(format!("target {:?} on {}: {}", r.target, s.owner, s.state));
            }
        }
    }
    if let Some(t) = rows.iter().find_map(|r| r.waiting_on.as_ref()) {
        let who = match (&t.pid, &t.prepared) {
            (Some(pid), _) => format!("backend pid {pid}"),
            (None, Some(gid)) => format!("prepared transaction {gid:?}"),
            (None, None) => "a transaction".to_string(),
        };
        notes.push(format!(
            "delivery waits on an open transaction: {who} in database {}, open for {:.1}s",
            t.database.as_deref().unwrap_or("(unknown)"),
            t.age_ms as f64 / 1000.0
        ));
    }
    notes
}
