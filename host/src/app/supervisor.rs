//! The relay process: runs a [`Relay`] built from the config file until
//! shutdown, serves the admin endpoint, and swaps in a new relay when the
//! config is reloaded.
//!
//! A reload is asked for by SIGHUP, or by a change of the config file's
//! modification time when `relay.reload_on_change` is set. The new config
//! and plugins are built first; if that fails, the running relay stays and
//! the reason is logged. Otherwise the old relay is stopped (its batches in
//! flight finish, and the cursors they acknowledged are where the new relay
//! starts) and the new one runs.
//!
//! Shutdown is injected: the caller cancels the token it passes in (the CLI
//! passes [`shutdown_on_signal`]'s, cancelled on SIGINT or SIGTERM).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{RwLock, mpsc};
use tokio_util::sync::CancellationToken;

use super::{AppError, build_relay};
use crate::admin::AdminState;
use crate::config::Config;
use crate::relay::Relay;

/// How often the config file's modification time is looked at.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Runs the relay of `config` (read from `path`, which reloads read again)
/// until `shutdown` is cancelled and the relay has stopped.
pub async fn run(path: &Path, config: Config, shutdown: CancellationToken) -> Result<(), AppError> {
    let mut relay = build_relay(&config).await?;
    let mut reloads = spawn_reload_triggers(path, config.relay.reload_on_change, &shutdown);
    let admin = match config.admin.listen {
        Some(listen) => Some(serve_admin(listen, &config, &relay, &shutdown)?),
        None => None,
    };
    // One health board for the process, across reloads: the admin endpoint
    // keeps reading it.
    let health = relay.health.clone();
    loop {
        let generation = shutdown.child_token();
        relay.health = health.clone();
        let mut running = tokio::spawn(relay.run(generation.clone()));
        if let Some(admin) = &admin {
            admin.ready.store(true, Ordering::Relaxed);
        }
        // Wait for the relay to stop (shutdown), or for a reload that validates.
        let (new_config, new_relay) = loop {
            tokio::select! {
                result = &mut running => return Ok(result??),
                Some(trigger) = reloads.recv() => {
                    tracing::info!(trigger, config = %path.display(), "reloading the config");
                    match reload(path).await {
                        Ok(next) => break next,
                        Err(e) => tracing::error!(
                            error = %e,
                            "the new config was rejected; the running one stays"
                        ),
                    }
                }
            }
        };
        generation.cancel();
        running.await??;
        if let Some(admin) = &admin {
            *admin.storage.write().await = new_relay.storage.clone();
            *admin.targets.write().await = target_names(&new_config);
            *admin.config.write().await = Arc::new(new_config.clone());
        }
        relay = new_relay;
        tracing::info!(targets = new_config.targets.len(), "config reloaded");
        if shutdown.is_cancelled() {
            return Ok(());
        }
    }
}

async fn reload(path: &Path) -> Result<(Config, Relay), AppError> {
    let config = Config::load(path)?;
    let relay = build_relay(&config).await?;
    // A changed partition count is refused here, while the running relay
    // still runs, not by the new one after the old has stopped.
    relay
        .storage
        .ensure_partitions(config.relay.partitions)
        .await?;
    Ok((config, relay))
}

fn target_names(config: &Config) -> Vec<String> {
    config.targets.keys().cloned().collect()
}

/// Starts the admin endpoint; the returned state is what a reload updates.
fn serve_admin(
    listen: std::net::SocketAddr,
    config: &Config,
    relay: &Relay,
    shutdown: &CancellationToken,
) -> Result<AdminState, AppError> {
    let metrics = crate::metrics::install().ok_or(AppError::Metrics)?;
    let console = match &config.admin.console {
        Some(console) => Some(crate::console::session::Access::new(
            console_token(config, console)?,
            console.read_only,
        )),
        None => None,
    };
    let state = AdminState {
        metrics,
        storage: Arc::new(RwLock::new(relay.storage.clone())),
        targets: Arc::new(RwLock::new(target_names(config))),
        ready: Arc::new(AtomicBool::new(false)),
        health: relay.health.clone(),
        config: Arc::new(RwLock::new(Arc::new(config.clone()))),
        console,
    };
    let serving = state.clone();
    let stop = shutdown.clone();
    let every = config.admin.lag_refresh;
    tokio::spawn(async move {
        if let Err(e) = crate::admin::serve(listen, serving, every, stop).await {
            tracing::error!(address = %listen, error = %e, "the admin endpoint failed");
        }
    });
    Ok(state)
}

/// The console's login token, read once at start from its file or variable
/// (at least 16 characters: it guards replay and purge).
fn console_token(
    config: &Config,
    console: &crate::config::ConsoleConfig,
) -> Result<String, AppError> {
    use crate::plugin_config::SecretRef;
    use crate::secret_source as source;
    let invalid = |message: String| {
        AppError::Config(crate::config::ConfigError::Invalid {
            file: config.source.display().to_string(),
            field: "admin.console.token".into(),
            message,
        })
    };
    let token = match &console.token.0 {
        SecretRef::File(path) => source::read_text(path).map_err(invalid)?,
        SecretRef::Env(name) => source::read_env(name).map_err(invalid)?,
    };
    let token = token.trim().to_string();
    if token.chars().count() < 16 {
        return Err(invalid(format!(
            "the token is {} characters long; use at least 16 (e.g. `openssl rand -hex 32`)",
            token.chars().count()
        )));
    }
    Ok(token)
}

/// SIGHUP, and (if `watch_file`) a change of the config file's modification
/// time, each send a reload request naming its trigger. The triggers stop
/// with `shutdown`.
fn spawn_reload_triggers(
    path: &Path,
    watch_file: bool,
    shutdown: &CancellationToken,
) -> mpsc::Receiver<&'static str> {
    let (reload, requests) = mpsc::channel(4);
    #[cfg(unix)]
    {
        let reload = reload.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                tracing::warn!("cannot listen for SIGHUP; reload by file change only");
                return;
            };
            while stop
                .run_until_cancelled(hup.recv())
                .await
                .flatten()
                .is_some()
            {
                if reload.send("SIGHUP").await.is_err() {
                    return;
                }
            }
        });
    }
    if watch_file {
        let path: PathBuf = path.to_path_buf();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            let mut last = modified(&path);
            while stop
                .run_until_cancelled(tokio::time::sleep(WATCH_EVERY))
                .await
                .is_some()
            {
                let now = modified(&path);
                if now.is_some() && now != last {
                    last = now;
                    if reload.send("file changed").await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    requests
}

/// A token cancelled on SIGINT or SIGTERM, or once `limit` (if any) has passed.
pub fn shutdown_on_signal(limit: Option<Duration>) -> CancellationToken {
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        match limit {
            Some(limit) => tokio::select! {
                _ = shutdown_signal() => {}
                _ = tokio::time::sleep(limit) => tracing::info!(?limit, "the time limit elapsed"),
            },
            None => shutdown_signal().await,
        }
        stop.cancel();
    });
    shutdown
}

/// Resolves on SIGINT or SIGTERM (logging which).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => tracing::info!("SIGINT received"),
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
