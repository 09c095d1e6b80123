//! The relay: one worker per (target, partition), each reading the log after
//! its cursor, delivering through its own transport instance, and advancing
//! the cursor once per batch.
//!
//! # Layout
//!
//! - [`worker`]: one (target, partition) worker's loop: lease, retries due,
//!   next batch, ack, and how long to wait after each step.
//! - [`lease`]: the partition lease as a worker holds it, re-checked before
//!   every plugin call.
//! - [`retries`]: due retries, claimed, delivered and settled.
//! - [`classify`]: what a target makes of a fetched batch (deliver, dead
//!   letter, pass over), pure.
//! - [`delivery`]: the transport instance, the poison-message split and the
//!   verdict on each outcome.
//! - [`ordered`]: the ordered path (the cut before a key repeats, the hold).
//! - [`backlog`]: the pipelined unordered path.
//! - [`pipeline`]: the acks: merged, bounded, retried in place, kept after a
//!   failed write.
//! - [`health`]: each target's state (running, cannot start, held) for
//!   operators.
//!
//! Many relay processes share one database. Each heartbeats into
//! `outbox_relays` with the targets it serves (which registers them, so
//! retention waits for them); a target's partitions are dealt out among the
//! live relays that serve it, sorted ([`assigned_owner`]), and the partition
//! leases make the hand-over safe when their views briefly differ.

mod backlog;
mod classify;
mod delivery;
pub mod health;
mod held;
mod lease;
mod ordered;
mod pipeline;
mod retries;
mod shared_reads;
mod worker;
#[cfg(test)]
mod worker_tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, RelaySettings, RetryPolicy};
use crate::routes::Routes;
use crate::storage::{LiveRelay, Storage, StorageError, serving};
use crate::transport::TransportFactory;
use health::Health;
use worker::PartitionWorker;

/// What the relay needs to know about one target.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    pub name: String,
    /// The transport plugin, as configured (for errors).
    pub plugin: String,
    pub batch_size: u32,
    pub retry: RetryPolicy,
    pub ordered: bool,
}

impl TargetSpec {
    /// The specs of every target in `config`.
    pub fn all(config: &Config) -> Vec<TargetSpec> {
        config
            .targets
            .iter()
            .map(|(name, t)| TargetSpec {
                name: name.clone(),
                plugin: t.plugin.clone(),
                batch_size: config.batch_size(t),
                retry: t.retry.clone(),
                ordered: t.ordered,
            })
            .collect()
    }
}

pub struct Relay {
    pub storage: Arc<dyn Storage>,
    pub transports: Arc<dyn TransportFactory>,
    pub routes: Arc<Routes>,
    pub targets: Vec<TargetSpec>,
    pub settings: RelaySettings,
    /// This process's name in leases and claims.
    pub owner: String,
    /// Where the workers report each target's state.
    pub health: Health,
}

/// A unique owner id for this relay process.
pub fn new_owner_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "relay".into());
    let unique = uuid::Uuid::now_v7().simple().to_string();
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &unique[unique.len() - 8..]
    )
}

/// The live relay that should own `partition` of `target`: partitions are
/// dealt out round-robin over `live`, the sorted live relays that serve the
/// target ([`crate::storage::serving`]), starting at an offset
/// derived from the target's name so small partition counts still spread.
pub fn assigned_owner<'a>(live: &'a [String], target: &str, partition: u32) -> Option<&'a str> {
    if live.is_empty() {
        return None;
    }
    let offset = crate::message::partition_of(Some(target), &uuid::Uuid::nil(), u32::MAX);
    let index = (u64::from(offset) + u64::from(partition)) % live.len() as u64;
    live.get(index as usize).map(String::as_str)
}

impl Relay {
    /// Runs until `shutdown` fires, then lets batches in flight finish (up to
    /// `shutdown_grace`), releases the leases and leaves the live set.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StorageError> {
        let partitions = self
            .storage
            .ensure_partitions(self.settings.partitions)
            .await?;

        // Wake-ups: bumped on every commit notification (Postgres LISTEN).
        let (wake_tx, wake_rx) = watch::channel(0u64);
        let listener = {
            let storage = self.storage.clone();
            tokio::spawn(async move {
                storage.watch_commits(&wake_tx).await;
                // Without notifications, keep the channel open; workers poll.
                std::future::pending::<()>().await;
            })
        };

        // Membership: who is alive and serves a target decides who owns
        // which of its partitions. Each target has its own sorted list.
        let names: Vec<String> = self.targets.iter().map(|t| t.name.clone()).collect();
        let health = self.health.clone();
        let live = self
            .storage
            .heartbeat(&self.owner, &health.served(&names), self.settings.lease_ttl)
            .await;
        if let Err(e) = &live {
            tracing::warn!(error = %e, "first heartbeat failed; serving alone until one succeeds");
        }
        let mut members = std::collections::HashMap::new();
        for target in &self.targets {
            let owners = match &live {
                Ok(live) => serving(live, &target.name),
                Err(_) => vec![self.owner.clone()],
            };
            members.insert(target.name.clone(), watch::channel(Arc::new(owners)));
        }
        let members_rx: std::collections::HashMap<String, watch::Receiver<Arc<Vec<String>>>> =
            members
                .iter()
                .map(|(name, (_, rx))| (name.clone(), rx.clone()))
                .collect();
        let members_tx: Vec<(String, watch::Sender<Arc<Vec<String>>>)> = members
            .into_iter()
            .map(|(name, (tx, _))| (name, tx))
            .collect();
        let heartbeat = {
            let storage = self.storage.clone();
            let owner = self.owner.clone();
            let ttl = self.settings.lease_ttl;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ttl / 4).await;
                    match storage.heartbeat(&owner, &health.served(&names), ttl).await {
                        Ok(live) => publish_members(&members_tx, &live),
                        Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                    }
                }
            })
        };

        let pruner = (!self.settings.retention.is_zero()).then(|| {
            let storage = self.storage.clone();
            let settings = self.settings.clone();
            let targets: Vec<String> = self.targets.iter().map(|t| t.name.clone()).collect();
            tokio::spawn(prune_forever(storage, targets, settings))
        });

        let log = Arc::new(shared_reads::SharedLog::new(
            self.storage.clone(),
            self.targets.len(),
            partitions,
        ));
        let mut workers = JoinSet::new();
        for target in &self.targets {
            for partition in 0..partitions {
                let worker = PartitionWorker {
                    target: target.clone(),
                    partition,
                    storage: self.storage.clone(),
                    log: log.clone(),
                    transports: self.transports.clone(),
                    routes: self.routes.clone(),
                    settings: self.settings.clone(),
                    owner: self.owner.clone(),
                    wake: wake_rx.clone(),
                    members: members_rx[&target.name].clone(),
                    health: self.health.clone(),
                };
                workers.spawn(supervise(worker, shutdown.clone()));
            }
        }
        tracing::info!(
            owner = %self.owner,
            targets = self.targets.len(),
            partitions,
            "relay started"
        );
        shutdown.cancelled().await;
        tracing::info!("shutting down: finishing batches in flight");
        let grace = self.settings.shutdown_grace;
        let drained = tokio::time::timeout(grace, async {
            while workers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "batches still in flight after the grace period; they will be delivered again"
            );
            workers.shutdown().await;
        }
        heartbeat.abort();
        listener.abort();
        if let Some(pruner) = pruner {
            pruner.abort();
        }
        if let Err(e) = self.storage.leave(&self.owner).await {
            tracing::warn!(error = %e, "could not leave the live relay set");
        }
        tracing::info!("relay stopped");
        Ok(())
    }
}

/// Runs a worker, and runs it again if it panics: a partition must never be
/// left assigned to this relay with nobody working it.
async fn supervise(worker: PartitionWorker, shutdown: CancellationToken) {
    loop {
        let run = tokio::spawn(worker.clone().run(shutdown.clone()));
        match run.await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                tracing::error!(
                    target = %worker.target.name, partition = worker.partition,
                    "worker panicked; restarting it in 1s"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Err(_) => return,
        }
    }
}

/// Sends each target's workers the live relays that serve it, when that changed.
fn publish_members(members: &[(String, watch::Sender<Arc<Vec<String>>>)], live: &[LiveRelay]) {
    for (target, tx) in members {
        let owners = serving(live, target);
        tx.send_if_modified(|current| {
            if **current == owners {
                false
            } else {
                tracing::info!(target = %target, live = ?owners, "relays serving the target changed");
                *current = Arc::new(owners);
                true
            }
        });
    }
}

/// Deletes messages past retention every `prune_interval`, in bounded
/// batches: those that every registered target (this relay's included) has
/// passed, older than the retention by the database's clock.
async fn prune_forever(storage: Arc<dyn Storage>, targets: Vec<String>, settings: RelaySettings) {
    loop {
        tokio::time::sleep(settings.prune_interval).await;
        let mut total = 0;
        loop {
            match storage
                .prune(&targets, settings.retention, settings.prune_batch)
                .await
            {
                Ok(n) => {
                    total += n;
                    if n < u64::from(settings.prune_batch) {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pruning failed");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(deleted = total, "pruned delivered messages past retention");
        }
    }
}

/// Back-off for storage errors inside a worker: 100 ms doubling to 30 s.
fn storage_backoff(consecutive_errors: u32) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << consecutive_errors.min(9));
    Duration::from_millis(ms.min(30_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_dealt_out_evenly() {
        let live: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut counts = std::collections::HashMap::new();
        for p in 0..12 {
            *counts
                .entry(assigned_owner(&live, "t", p).unwrap())
                .or_insert(0) += 1;
        }
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![4, 4, 4]);
        assert_eq!(assigned_owner(&[], "t", 0), None);
    }

    #[test]
    fn a_target_is_dealt_only_among_the_relays_that_serve_it() {
        use crate::storage::ServedTarget;
        let relay = |owner: &str, targets: &[&str]| LiveRelay {
            owner: owner.into(),
            targets: targets.iter().map(|t| ServedTarget::running(*t)).collect(),
        };
        // A serves t1; B serves t1 and t2 (the rolling change).
        let live = vec![relay("a", &["t1"]), relay("b", &["t1", "t2"])];
        let t2 = serving(&live, "t2");
        for p in 0..4 {
            assert_eq!(assigned_owner(&t2, "t2", p), Some("b"), "p{p}");
        }
        let t1 = serving(&live, "t1");
        let owners: std::collections::HashSet<_> = (0..4)
            .filter_map(|p| assigned_owner(&t1, "t1", p))
            .collect();
        assert_eq!(owners.len(), 2);
    }
}
