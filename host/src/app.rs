//! Wiring: from a validated [`Config`] to a running [`Relay`]; the
//! [`supervisor`] runs it, reloads it and stops it.
//!
//! Only `migrate`, `run` and `enqueue` create or upgrade the schema
//! ([`open_storage`]); every other command opens the database with
//! [`open_migrated_storage`], which writes nothing and refuses a database
//! that was never migrated.

pub mod supervisor;

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::keys::{KeyError, KeyRing, SigningGrant};
use crate::plugin::{PluginError, PluginRuntime, PluginSpec, TargetPlugins, WasmTransportFactory};
use crate::relay::{Relay, TargetSpec, new_owner_id};
use crate::routes::Routes;
use crate::storage::mysql::MySqlStorage;
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
    /// A plugin named by the config could not be loaded: the file and the
    /// field that name it.
    #[error("config file {file}: field `{field}`: {cause}")]
    PluginFile {
        file: String,
        field: String,
        cause: PluginError,
    },
    #[error("config file {file}: {cause}")]
    Key { file: String, cause: KeyError },
    #[error("target {target:?} cannot start: {cause}")]
    Start {
        target: String,
        cause: Box<crate::transport::TransportError>,
    },
    #[error("the database {database} {reason}; run `outbox-relay migrate --config {config}` first")]
    NotMigrated {
        database: String,
        reason: String,
        config: String,
    },
    #[error("cannot install the metrics recorder (is another one installed?)")]
    Metrics,
    #[error("the relay task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Opens the configured database (SQLite, Postgres or MySQL, by URL scheme) and applies migrations.
pub async fn open_storage(config: &Config) -> Result<Arc<dyn Storage>, StorageError> {
    let storage: Arc<dyn Storage> = match Backend::of(&config.database) {
        Backend::Sqlite => Arc::new(SqliteStorage::connect(&config.database).await?),
        Backend::Postgres => Arc::new(PgStorage::connect(&config.database).await?),
        Backend::MySql => Arc::new(MySqlStorage::connect(&config.database).await?),
    };
    storage.migrate().await?;
    Ok(storage)
}

/// Opens the configured database without writing to it: a SQLite file is
/// opened only if it exists, and only after a read-only look at its
/// migrations; on Postgres, the migrations table is read first. Fails with
/// [`AppError::NotMigrated`] unless every migration this build knows is applied.
pub async fn open_migrated_storage(config: &Config) -> Result<Arc<dyn Storage>, AppError> {
    let not_migrated = |reason: String| AppError::NotMigrated {
        database: crate::config::redact_url(&config.database),
        reason,
        config: config.source.display().to_string(),
    };
    let storage: Arc<dyn Storage> = match Backend::of(&config.database) {
        Backend::Sqlite => {
            let applied = sqlite_migrations(&config.database)
                .await?
                .ok_or_else(|| not_migrated("does not exist".into()))?;
            schema_current(&applied, &crate::storage::sqlite::MIGRATOR).map_err(not_migrated)?;
            Arc::new(SqliteStorage::connect(&config.database).await?)
        }
        Backend::Postgres => {
            let storage = PgStorage::connect(&config.database).await?;
            let applied = pg_migrations(storage.pool()).await?;
            schema_current(&applied, &crate::storage::postgres::MIGRATOR).map_err(not_migrated)?;
            Arc::new(storage)
        }
        Backend::MySql => {
            let storage = MySqlStorage::connect(&config.database).await?;
            let applied = crate::storage::mysql::applied_migrations(storage.pool()).await?;
            schema_current(&applied, &crate::storage::mysql::MIGRATOR).map_err(not_migrated)?;
            Arc::new(storage)
        }
    };
    Ok(storage)
}

/// The migrations applied to the SQLite database at `url`, read over a
/// read-only connection; `None` when the file does not exist.
async fn sqlite_migrations(url: &str) -> Result<Option<Vec<i64>>, StorageError> {
    use sqlx::Connection as _;
    use std::str::FromStr as _;
    let connect_error = |cause| StorageError::Connect {
        url: url.to_string(),
        cause,
    };
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
        .map_err(connect_error)?
        .create_if_missing(false)
        .read_only(true);
    if !options.get_filename().exists() {
        return Ok(None);
    }
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .map_err(connect_error)?;
    let has_table: bool = sqlx::query_scalar(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_one(&mut conn)
    .await?;
    let applied = if has_table {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(&mut conn)
            .await?
    } else {
        Vec::new()
    };
    conn.close().await?;
    Ok(Some(applied))
}

/// The migrations applied to the Postgres database (in its search path).
async fn pg_migrations(pool: &sqlx::PgPool) -> Result<Vec<i64>, StorageError> {
    let has_table: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !has_table {
        return Ok(Vec::new());
    }
    Ok(
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await?,
    )
}

/// Which storage adapter a database URL names (the config has checked the scheme).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    MySql,
}

impl Backend {
    /// By URL scheme: `sqlite:`, `postgres://` / `postgresql://`, `mysql://` / `mariadb://`.
    pub fn of(url: &str) -> Self {
        if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("mysql:") || url.starts_with("mariadb:") {
            Backend::MySql
        } else {
            Backend::Postgres
        }
    }
}

/// `Err` with what is missing unless every migration of `migrator` is applied.
fn schema_current(applied: &[i64], migrator: &sqlx::migrate::Migrator) -> Result<(), String> {
    if applied.is_empty() {
        return Err("has no outbox schema".into());
    }
    let missing: Vec<String> = migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
        .map(|m| format!("{} ({})", m.version, m.description))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "has an older outbox schema (not applied: {})",
            missing.join(", ")
        ))
    }
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
        let plugin_error = |field: String| {
            move |cause| AppError::PluginFile {
                file: config.source.display().to_string(),
                field,
                cause,
            }
        };
        let path = config.plugin_path(target);
        let transport = match transports.get(&path) {
            Some(p) => Clone::clone(p),
            None => {
                let p = runtime
                    .load_transport(&target.plugin, &path)
                    .map_err(plugin_error(format!("targets.{name}.plugin")))?;
                tracing::info!(target = %name, plugin = %p.info.path, cached = p.info.cached, "plugin loaded");
                transports.insert(path, p.clone());
                p
            }
        };
        let mut chain = Vec::new();
        for (i, injector) in target.injectors.iter().enumerate() {
            let path = config.resolve_plugin(&injector.plugin);
            let loaded =
                match injectors.get(&path) {
                    Some(p) => Clone::clone(p),
                    None => {
                        let p = runtime.load_injector(&injector.plugin, &path).map_err(
                            plugin_error(format!("targets.{name}.injectors[{i}].plugin")),
                        )?;
                        tracing::info!(target = %name, plugin = %p.info.path, "injector loaded");
                        injectors.insert(path, p.clone());
                        p
                    }
                };
            chain.push(PluginSpec {
                plugin: loaded,
                sandbox: injector.sandbox.clone(),
                config_json: config_json(
                    config,
                    &format!("targets.{name}.injectors[{i}].config"),
                    &injector.config,
                )?,
            });
        }
        targets.insert(
            name.clone(),
            TargetPlugins {
                transport: PluginSpec {
                    plugin: transport,
                    sandbox: target.sandbox.clone(),
                    config_json: config_json(
                        config,
                        &format!("targets.{name}.config"),
                        &target.config,
                    )?,
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

/// A plugin's config as JSON, its `{ env = ... }` / `{ file = ... }` values
/// read (crate::plugin_config); an error names the file and the field.
fn config_json(config: &Config, field: &str, table: &toml::Table) -> Result<String, AppError> {
    crate::plugin_config::to_json(table).map_err(|(key, message)| {
        AppError::Config(ConfigError::Invalid {
            file: config.source.display().to_string(),
            field: format!("{field}.{key}"),
            message,
        })
    })
}

/// Starts each named target's plugins exactly as a relay worker would
/// (instantiate, then `init` with the target's config: a transport that
/// connects in `init` connects here) and drops them at once. No storage is
/// touched. One result per target, in the order given.
pub async fn check_targets(
    config: &Config,
    names: &[String],
) -> Result<Vec<(String, Result<(), AppError>)>, AppError> {
    config.require_targets()?;
    config.check_tls()?;
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
    config.require_targets()?;
    config.check_tls()?;
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
