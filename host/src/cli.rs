//! The `outbox-relay` command line: clap parsing, and printing what the
//! library answers. It lives in the library so the integration tests can
//! build the same binary (`tests/bin/outbox-relay.rs`).
//!
//! Each command is a variant of `Command` and an arm of `dispatch`; a
//! command with more than a screen of printing has a module of its own
//! (`cli/dead_letters.rs`, `cli/enqueue.rs`, `cli/status.rs`). Running the relay is
//! [`crate::app::supervisor`]'s job; the rules (which dead letters may be
//! replayed) are in the domain modules.

mod adopt;
mod dead_letters;
mod enqueue;
mod status;
mod targets;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::app;
use crate::config::Config;
use crate::plugin::PluginRuntime;
use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

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
    Enqueue(enqueue::EnqueueArgs),
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
    /// Forget a target that no relay serves any more (the target registry).
    #[command(subcommand)]
    Targets(targets::TargetsCommand),
    /// List, show, replay or purge dead letters.
    #[command(subcommand)]
    DeadLetters(dead_letters::DeadLettersCommand),
    /// Adopt another tool's outbox table in place (spakky, Debezium): triggers
    /// copy each inserted row into the outbox inside the producer's transaction.
    #[command(subcommand)]
    Adopt(adopt::AdoptCommand),
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

/// The configured targets, for messages that name an unknown one.
fn target_list(config: &Config) -> String {
    if config.targets.is_empty() {
        return "none".into();
    }
    config
        .targets
        .keys()
        .cloned()
        .collect::<Vec<_>>()
        .join(", ")
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { config, stop_after } => {
            let loaded = load_config(&config)?;
            let shutdown = app::supervisor::shutdown_on_signal(stop_after);
            Ok(app::supervisor::run(&config.config, loaded, shutdown).await?)
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
                if let Some(name) = targets.iter().find(|n| !config.targets.contains_key(*n)) {
                    bail!(
                        "no target {name:?} in {} (targets: {})",
                        config.source.display(),
                        target_list(&config)
                    );
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
                bail!("{failed} of {} targets cannot start", names.len());
            }
            Ok(())
        }
        Command::Enqueue(args) => enqueue::run(args).await,
        Command::DeadLetters(command) => dead_letters::run(command).await,
        Command::Adopt(command) => adopt::run(command).await,
        Command::Targets(command) => targets::run(command).await,
        Command::Status {
            config,
            json,
            watch,
        } => status::run(load_config(&config)?, json, watch).await,
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
