//! Wiring: from a validated [`Config`] to a running [`Relay`].

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::keys::{KeyError, KeyRing, SigningGrant};
use crate::plugin::{PluginError, PluginRuntime, PluginSpec, TargetPlugins, WasmTransportFactory};
use crate::relay::{Relay, TargetSpec, new_owner_id};
use crate::routes::Routes;
use crate::storage::postgres::PgStorage;
use crate::storage::sqlite::SqliteStorage;
use crate::storage::{Storage, StorageError};
use crate::transport::TransportFactory;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("target {target:?}: {cause}")]
    Plugin { target: String, cause: PluginError },
    #[error("config file {file}: {cause}")]
    Key { file: String, cause: KeyError },
    #[error("target {target:?} cannot start: {cause}")]
    Start {
        target: String,
        cause: Box<crate::transport::TransportError>,
    },
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

/// Loads and checks every target's transport and injectors, and the keys
/// they may sign with; fails on the first bad one.
pub fn load_plugins(
    config: &Config,
    runtime: &PluginRuntime,
) -> Result<HashMap<String, TargetPlugins>, AppError> {
    let ring = Arc::new(KeyRing::load(&config.keys).map_err(|cause| AppError::Key {
        file: config.source.display().to_string(),
        cause,
    })?);
    let mut transports = HashMap::new();
    let mut injectors = HashMap::new();
    let mut targets = HashMap::new();
    for (name, target) in &config.targets {
        let plugin_error = |cause| AppError::Plugin {
            target: name.clone(),
            cause,
        };
        let path = config.plugin_path(target);
        let transport = match transports.get(&path) {
            Some(p) => Clone::clone(p),
            None => {
                let p = runtime
                    .load_transport(&target.plugin, &path)
                    .map_err(plugin_error)?;
                tracing::info!(target = %name, plugin = %p.info.path, cached = p.info.cached, "plugin loaded");
                transports.insert(path, p.clone());
                p
            }
        };
        let mut chain = Vec::new();
        for injector in &target.injectors {
            let path = config.resolve_plugin(&injector.plugin);
            let loaded = match injectors.get(&path) {
                Some(p) => Clone::clone(p),
                None => {
                    let p = runtime
                        .load_injector(&injector.plugin, &path)
                        .map_err(plugin_error)?;
                    tracing::info!(target = %name, plugin = %p.info.path, "injector loaded");
                    injectors.insert(path, p.clone());
                    p
                }
            };
            chain.push(PluginSpec {
                plugin: loaded,
                sandbox: injector.sandbox.clone(),
                config_json: config_json(&injector.config),
            });
        }
        targets.insert(
            name.clone(),
            TargetPlugins {
                transport: PluginSpec {
                    plugin: transport,
                    sandbox: target.sandbox.clone(),
                    config_json: config_json(&target.config),
                },
                injectors: chain,
                signing: SigningGrant {
                    ring: ring.clone(),
                    granted: target.keys.iter().cloned().collect(),
                },
            },
        );
    }
    Ok(targets)
}

fn config_json(table: &toml::Table) -> String {
    serde_json::to_string(table).unwrap_or_else(|_| "{}".into())
}

/// Starts each named target's plugins exactly as a relay worker would
/// (instantiate, then `init` with the target's config: a transport that
/// connects in `init` connects here) and drops them at once. No storage is
/// touched. One result per target, in the order given.
pub async fn check_targets(
    config: &Config,
    names: &[String],
) -> Result<Vec<(String, Result<(), AppError>)>, AppError> {
    let runtime = Arc::new(
        PluginRuntime::new(&config.relay.cache_dir).map_err(|cause| AppError::Plugin {
            target: "(all)".into(),
            cause,
        })?,
    );
    let factory = WasmTransportFactory::new(runtime.clone(), load_plugins(config, &runtime)?);
    let mut out = Vec::new();
    for name in names {
        let started = match factory.create(name).await {
            Ok(mut transport) => transport.start().await,
            Err(e) => Err(e),
        };
        let result = match started {
            Ok(()) => Ok(()),
            Err(cause) => Err(AppError::Start {
                target: name.clone(),
                cause: Box::new(cause),
            }),
        };
        out.push((name.clone(), result));
    }
    Ok(out)
}

/// [`check_targets`] for one target.
pub async fn check_target(config: &Config, name: &str) -> Result<(), AppError> {
    let mut results = check_targets(config, &[name.to_string()]).await?;
    results.pop().map_or(Ok(()), |(_, r)| r)
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
        health: Default::default(),
    })
}
