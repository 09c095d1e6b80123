//! The `outbox-relay` command line. It lives in the library so the integration
//! tests can build the same binary (`tests/bin/outbox-relay.rs`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::Config;
use crate::plugin::PluginRuntime;
use crate::{NewMessage, app};
use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "outbox-relay",
    version,
    about = "Transactional-outbox relay with WebAssembly transports"
)]
struct Cli {
    /// Log output format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
pub(crate) struct ConfigArg {
    /// Path to the TOML config file.
    #[arg(
        short,
        long,
        env = "OUTBOX_RELAY_CONFIG",
        default_value = "outbox-relay.toml"
    )]
    pub(crate) config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay until SIGINT or SIGTERM.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Stop gracefully after this long (e.g. `30s`); for demos and batch jobs.
        #[arg(long, value_parser = humantime_serde::re::humantime::parse_duration)]
        stop_after: Option<std::time::Duration>,
    },
    /// Create or upgrade the outbox schema.
    Migrate(ConfigArg),
    /// Start every target's plugin once (instantiate + init, so transports
    /// connect to their brokers) and report which cannot start, and why.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Check only these targets (default: all).
        #[arg(long = "target")]
        targets: Vec<String>,
    },
    /// Enqueue messages (for operators and demos; applications use the producer API).
    Enqueue(EnqueueArgs),
    /// Per target: cursor lag, oldest pending age, retries pending, dead letters, lease owners.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Refresh every this often (e.g. `2s`) until interrupted.
        #[arg(long, value_parser = humantime_serde::re::humantime::parse_duration)]
        watch: Option<std::time::Duration>,
    },
    /// List, show, replay or purge dead letters.
    #[command(subcommand)]
    DeadLetters(crate::dead_letters::DeadLettersCommand),
    /// Inspect plugin files.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Verify a signed auth snapshot with a key from the config, and print its claims.
    VerifySnapshot {
        #[command(flatten)]
        config: ConfigArg,
        /// The `[keys]` entry to verify with.
        #[arg(long)]
        key: String,
        /// The compact JWS (the `x-auth-snapshot` header's value).
        token: String,
    },
}

#[derive(clap::Args)]
struct EnqueueArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Event name, e.g. order.created.
    #[arg(short, long)]
    event: String,
    /// Payload text (UTF-8).
    #[arg(short, long, conflicts_with = "payload_file")]
    payload: Option<String>,
    /// Read the payload bytes from this file.
    #[arg(long)]
    payload_file: Option<PathBuf>,
    /// Partition key; messages with the same key keep their order on ordered targets.
    #[arg(short, long)]
    key: Option<String>,
    /// A header as name=value; repeatable.
    #[arg(short = 'H', long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// How many copies to enqueue (each with its own id).
    #[arg(short = 'n', long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    count: u32,
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// Load a component, check its WIT version and print what it exports.
    Check {
        file: PathBuf,
        /// Where compiled components are cached.
        #[arg(long, default_value = ".outbox-relay/cache")]
        cache_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Scaffold a new plugin crate (transport or header injector).
    New(crate::authoring::NewArgs),
    /// Run a component once, outside a relay: init, then one batch of sample envelopes.
    Test(crate::authoring::TestArgs),
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_ascii_lowercase(), value.to_string()))
        }
        _ => Err(format!("expected name=value, got {s:?}")),
    }
}

/// Parses the command line, runs the command, and maps errors to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load_config(arg: &ConfigArg) -> anyhow::Result<Config> {
    Ok(Config::load(&arg.config)?)
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { config, stop_after } => {
            run(&config.config, load_config(&config)?, stop_after).await
        }
        Command::Migrate(arg) => {
            let config = load_config(&arg)?;
            let storage = app::open_storage(&config).await?;
            let partitions = storage.ensure_partitions(config.relay.partitions).await?;
            println!(
                "migrated {} ({partitions} partitions)",
                crate::config::redact_url(&config.database)
            );
            Ok(())
        }
        Command::Check { config, targets } => {
            let config = load_config(&config)?;
            let names = if targets.is_empty() {
                config.targets.keys().cloned().collect()
            } else {
                for name in &targets {
                    if !config.targets.contains_key(name) {
                        anyhow::bail!(
                            "no target {name:?} in {} (targets: {})",
                            config.source.display(),
                            config
                                .targets
                                .keys()
                                .cloned()
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                    }
                }
                targets
            };
            let mut failed = 0;
            for (name, result) in app::check_targets(&config, &names).await? {
                match result {
                    Ok(()) => println!("ok      {name}"),
                    Err(e) => {
                        failed += 1;
                        println!("FAILED  {name}: {e}");
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!("{failed} of {} targets cannot start", names.len());
            }
            Ok(())
        }
        Command::Enqueue(args) => enqueue(args).await,
        Command::DeadLetters(command) => crate::dead_letters::run(command).await,
        Command::Status {
            config,
            json,
            watch,
        } => status(load_config(&config)?, json, watch).await,
        Command::VerifySnapshot { config, key, token } => {
            verify_snapshot(&load_config(&config)?, &key, &token)
        }
        Command::Plugins(PluginsCommand::Check {
            file,
            cache_dir,
            json,
        }) => check_plugin(&file, &cache_dir, json),
        Command::Plugins(PluginsCommand::New(args)) => crate::authoring::new_command(&args),
        Command::Plugins(PluginsCommand::Test(args)) => crate::authoring::test_command(&args).await,
    }
}

async fn run(
    path: &Path,
    config: Config,
    stop_after: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    let mut relay = app::build_relay(&config).await?;
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        match stop_after {
            Some(limit) => {
                tokio::select! {
                    _ = wait_for_signal() => {}
                    _ = tokio::time::sleep(limit) => tracing::info!("--stop-after elapsed"),
                }
            }
            None => wait_for_signal().await,
        }
        signal.cancel();
    });
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<&'static str>(4);
    spawn_reload_triggers(path, config.relay.reload_on_change, reload_tx);

    let admin = match config.admin.listen {
        Some(listen) => {
            let Some(handle) = crate::metrics::install() else {
                bail!("cannot install the metrics recorder");
            };
            let state = crate::admin::AdminState {
                metrics: handle,
                storage: std::sync::Arc::new(tokio::sync::RwLock::new(relay.storage.clone())),
                targets: std::sync::Arc::new(tokio::sync::RwLock::new(target_names(&config))),
                ready: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
                health: relay.health.clone(),
            };
            let serving = state.clone();
            let stop = shutdown.clone();
            let every = config.admin.lag_refresh;
            tokio::spawn(async move {
                if let Err(e) = crate::admin::serve(listen, serving, every, stop).await {
                    tracing::error!(address = %listen, error = %e, "the admin endpoint failed");
                }
            });
            Some(state)
        }
        None => None,
    };

    loop {
        let generation = shutdown.child_token();
        let relay_health = relay.health.clone();
        let mut running = tokio::spawn(relay.run(generation.clone()));
        if let Some(admin) = &admin {
            admin
                .ready
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        // Wait for shutdown, or for a reload that validates.
        let next = loop {
            tokio::select! {
                result = &mut running => {
                    result??;
                    return Ok(());
                }
                Some(why) = reload_rx.recv() => {
                    tracing::info!(trigger = why, config = %path.display(), "reloading the config");
                    match reload(path).await {
                        Ok(next) => break next,
                        Err(e) => tracing::error!(
                            error = %format!("{e:#}"),
                            "the new config was rejected; the running one stays"
                        ),
                    }
                }
            }
        };
        let (new_config, new_relay) = next;
        let old_health = relay_health.clone();
        // Batches in flight finish on the old instances; the cursors they
        // acknowledged are where the new relay starts.
        generation.cancel();
        running.await??;
        if let Some(admin) = &admin {
            *admin.storage.write().await = new_relay.storage.clone();
            *admin.targets.write().await = target_names(&new_config);
        }
        relay = new_relay;
        // One health board for the process: the admin endpoint keeps reading it.
        relay.health = old_health;
        tracing::info!(targets = new_config.targets.len(), "config reloaded");
        if shutdown.is_cancelled() {
            return Ok(());
        }
    }
}

fn target_names(config: &Config) -> Vec<String> {
    config.targets.keys().cloned().collect()
}

async fn reload(path: &Path) -> anyhow::Result<(Config, crate::relay::Relay)> {
    let config = Config::load(path)?;
    let relay = app::build_relay(&config).await?;
    Ok((config, relay))
}

/// SIGHUP, and (if enabled) a change of the config file's modification time,
/// both ask for a reload.
fn spawn_reload_triggers(
    path: &Path,
    watch_file: bool,
    reload: tokio::sync::mpsc::Sender<&'static str>,
) {
    #[cfg(unix)]
    {
        let reload = reload.clone();
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while hup.recv().await.is_some() {
                if reload.send("SIGHUP").await.is_err() {
                    return;
                }
            }
        });
    }
    if watch_file {
        let path = path.to_path_buf();
        tokio::spawn(async move {
            let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            let mut last = modified(&path);
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
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
}

async fn wait_for_signal() {
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

async fn enqueue(args: EnqueueArgs) -> anyhow::Result<()> {
    let config = load_config(&args.config)?;
    if args.event.trim().is_empty() {
        bail!("--event must not be empty");
    }
    let payload = match (&args.payload, &args.payload_file) {
        (_, Some(path)) => std::fs::read(path)
            .with_context(|| format!("cannot read the payload file {}", path.display()))?,
        (Some(text), None) => text.clone().into_bytes(),
        (None, None) => b"{}".to_vec(),
    };
    let storage = app::open_storage(&config).await?;
    storage.ensure_partitions(config.relay.partitions).await?;
    let messages: Vec<NewMessage> = (0..args.count)
        .map(|_| {
            let mut m = NewMessage::new(args.event.clone(), payload.clone());
            m.partition_key = args.key.clone();
            for (name, value) in &args.headers {
                m = m.with_header(name, value.clone());
            }
            m
        })
        .collect();
    for chunk in messages.chunks(1000) {
        storage.save(chunk).await?;
    }
    for m in messages.iter().take(10) {
        println!("{}", m.id);
    }
    if messages.len() > 10 {
        println!("... and {} more", messages.len() - 10);
    }
    Ok(())
}

async fn status(
    config: Config,
    json: bool,
    watch: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    let storage = app::open_storage(&config).await?;
    let names: Vec<String> = config.targets.keys().cloned().collect();
    let Some(every) = watch else {
        return print_status(storage.status(&names).await?, json);
    };
    loop {
        let rows = storage.status(&names).await?;
        if !json {
            // Clear the screen and go home, like `watch`.
            print!("\x1b[2J\x1b[H");
            println!(
                "{}  (every {}, Ctrl-C to stop)\n",
                config.source.display(),
                humantime_serde::re::humantime::format_duration(every)
            );
        }
        print_status(rows, json)?;
        tokio::select! {
            _ = wait_for_signal() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
    }
}

fn print_status(rows: Vec<crate::storage::TargetStatus>, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<20} {:>10} {:>14} {:>9} {:>6}  LEASES",
        "TARGET", "LAG", "OLDEST PENDING", "RETRIES", "DEAD"
    );
    for r in rows {
        let oldest = r
            .oldest_pending_age_ms
            .map_or("-".to_string(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
        let leases = if r.lease_owners.is_empty() {
            "-".to_string()
        } else {
            r.lease_owners.join(", ")
        };
        println!(
            "{:<20} {:>10} {:>14} {:>9} {:>6}  {}",
            r.target, r.lag, oldest, r.retries_pending, r.dead_letters, leases
        );
    }
    Ok(())
}

fn verify_snapshot(config: &Config, key: &str, token: &str) -> anyhow::Result<()> {
    let mut wanted = std::collections::BTreeMap::new();
    let Some(key_config) = config.keys.get(key) else {
        bail!("no key {key:?} in [keys] of {}", config.source.display());
    };
    wanted.insert(key.to_string(), key_config.clone());
    let ring = crate::keys::KeyRing::load(&wanted)?;
    let Some(key) = ring.get(key) else {
        bail!("key {key:?} did not load");
    };
    let claims = crate::snapshot::verify(token, key).context("invalid snapshot")?;
    println!("{}", serde_json::to_string_pretty(&claims)?);
    Ok(())
}

fn check_plugin(file: &Path, cache_dir: &Path, json: bool) -> anyhow::Result<()> {
    let runtime = PluginRuntime::new(cache_dir)?;
    let info = &runtime.inspect(file)?;
    if json {
        println!("{}", serde_json::to_string_pretty(info)?);
        return Ok(());
    }
    println!(
        "{}: OK, a {} for {}@{}",
        info.path,
        info.kind,
        crate::plugin::WIT_PACKAGE,
        crate::plugin::WIT_VERSION
    );
    println!("sha256: {}", info.sha256);
    println!("exports:");
    for e in &info.exports {
        println!("  {e}");
    }
    println!("imports:");
    for i in &info.imports {
        println!("  {i}");
    }
    Ok(())
}
