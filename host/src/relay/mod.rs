//! The relay: one worker per (target, partition), each reading the log after
//! its cursor, delivering through its own transport instance, and advancing
//! the cursor once per batch.

mod worker;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, RelaySettings, RetryPolicy};
use crate::routes::Routes;
use crate::storage::{Storage, StorageError};
use crate::transport::TransportFactory;
use worker::PartitionWorker;

/// What the relay needs to know about one target.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    pub name: String,
    pub batch_size: u32,
    pub retry: RetryPolicy,
}

impl TargetSpec {
    /// The specs of every target in `config`.
    pub fn all(config: &Config) -> Vec<TargetSpec> {
        config
            .targets
            .iter()
            .map(|(name, t)| TargetSpec {
                name: name.clone(),
                batch_size: config.batch_size(t),
                retry: t.retry.clone(),
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

impl Relay {
    /// Runs until `shutdown` fires, then lets batches in flight finish (up to
    /// `shutdown_grace`) and releases the leases.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StorageError> {
        let partitions = self
            .storage
            .ensure_partitions(self.settings.partitions)
            .await?;
        let mut workers = JoinSet::new();
        for target in &self.targets {
            for partition in 0..partitions {
                let worker = PartitionWorker {
                    target: target.clone(),
                    partition,
                    storage: self.storage.clone(),
                    transports: self.transports.clone(),
                    routes: self.routes.clone(),
                    settings: self.settings.clone(),
                    owner: self.owner.clone(),
                };
                workers.spawn(worker.run(shutdown.clone()));
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
        tracing::info!("relay stopped");
        Ok(())
    }
}

/// Back-off for storage errors inside a worker: 100 ms doubling to 30 s.
fn storage_backoff(consecutive_errors: u32) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << consecutive_errors.min(9));
    Duration::from_millis(ms.min(30_000))
}
