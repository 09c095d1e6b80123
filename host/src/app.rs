//! Wiring: from a validated [`Config`] to a running [`Relay`].

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::plugin::{PluginError, PluginRuntime, TargetPlugin, WasmTransportFactory};
use crate::relay::{Relay, TargetSpec, new_owner_id};
use crate::routes::Routes;
use crate::storage::postgres::PgStorage;
use crate::storage::sqlite::SqliteStorage;
use crate::storage::{Storage, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("target {target:?}: {cause}")]
    Plugin { target: String, cause: PluginError },
}

/// Opens the configured database (SQLite or Postgres, by URL scheme) and applies migrations.
pub async fn open_storage(config: &Config) -> Result<Arc<dyn Storage>, StorageError> {
    let storage: Arc<dyn Storage> = if config.database.starts_with("sqlite:") {
        Arc::new(SqliteStorage::connect(&config.database).await?)
    } else {
        Arc::new(PgStorage::connect(&config.database).await?)
    };
    storage.migrate().await?;
    Ok(storage)
}

/// Loads and checks every target's plugin; fails on the first bad one.
pub fn load_plugins(
    config: &Config,
    runtime: &PluginRuntime,
) -> Result<HashMap<String, TargetPlugin>, AppError> {
    let mut loaded: HashMap<std::path::PathBuf, crate::plugin::LoadedPlugin> = HashMap::new();
    let mut targets = HashMap::new();
    for (name, target) in &config.targets {
        let path = config.plugin_path(target);
        let plugin = match loaded.get(&path) {
            Some(p) => p.clone(),
            None => {
                let p = runtime
                    .load_transport(&target.plugin, &path)
                    .map_err(|cause| AppError::Plugin {
                        target: name.clone(),
                        cause,
                    })?;
                tracing::info!(target = %name, plugin = %p.info.path, cached = p.info.cached, "plugin loaded");
                loaded.insert(path, p.clone());
                p
            }
        };
        let config_json = serde_json::to_string(&target.config).unwrap_or_else(|_| "{}".into());
        targets.insert(
            name.clone(),
            TargetPlugin {
                plugin,
                sandbox: target.sandbox.clone(),
                config_json,
            },
        );
    }
    Ok(targets)
}

/// Builds a relay from `config`: storage migrated, plugins loaded and checked.
pub async fn build_relay(config: &Config) -> Result<Relay, AppError> {
    for warning in config.warnings() {
        tracing::warn!(config = %config.source.display(), "{warning}");
    }
    let storage = open_storage(config).await?;
    let runtime = Arc::new(
        PluginRuntime::new(&config.relay.cache_dir).map_err(|cause| AppError::Plugin {
            target: "(all)".into(),
            cause,
        })?,
    );
    let plugins = load_plugins(config, &runtime)?;
    let routes = Routes::from_config(config).map_err(|e| ConfigError::Invalid {
        file: config.source.display().to_string(),
        field: "routes".into(),
        message: e.to_string(),
    })?;
    Ok(Relay {
        storage,
        transports: Arc::new(WasmTransportFactory::new(runtime, plugins)),
        routes: Arc::new(routes),
        targets: TargetSpec::all(config),
        settings: config.relay.clone(),
        owner: new_owner_id(),
    })
}
