//! Configuration: a TOML file, then `OUTBOX_RELAY__…` environment overrides,
//! then validation. Every error names the file and the field.
//!
//! Relative paths in the file (plugins, directories, a SQLite database) are
//! resolved against the directory of the config file, not the working
//! directory (unless the config is a pipe, which has no directory).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

use crate::sandbox_address::{AllowedHost, HostPort};

/// Prefix of environment overrides; `__` separates nesting levels, e.g.
/// `OUTBOX_RELAY__RELAY__BATCH_SIZE=500` or `OUTBOX_RELAY__DATABASE=sqlite://x.db`.
pub const ENV_PREFIX: &str = "OUTBOX_RELAY__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {file}: {reason}")]
    Read { file: String, reason: String },
    /// The text is not TOML, or a key is unknown or of the wrong type.
    /// `message` names the key (and the environment variable it came from).
    #[error("config file {file}: {message}")]
    Parse { file: String, message: String },
    #[error("config file {file}: field `{field}`: {message}")]
    Invalid {
        file: String,
        field: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Database URL: `sqlite://path/to/outbox.db` (created if missing) or
    /// `postgres://user:password@host:port/database`.
    pub database: String,
    #[serde(default)]
    pub relay: RelaySettings,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub targets: BTreeMap<String, TargetConfig>,
    /// The admin HTTP endpoint (`/metrics`, `/healthz`, `/readyz`).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Signing keys the host holds for plugins (`[keys.<name>]`).
    #[serde(default)]
    pub keys: BTreeMap<String, KeyConfig>,
    /// Where the config was read from; set by [`Config::load`].
    #[serde(skip)]
    pub source: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelaySettings {
    /// How long to wait before polling again after a batch that was not full.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Messages read per batch, per target and partition.
    pub batch_size: u32,
    /// Partition count, fixed when the outbox is created.
    pub partitions: u32,
    /// How long a relay holds a partition of a target without renewing it.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How long a claimed retry stays invisible to other relays.
    #[serde(with = "humantime_serde")]
    pub claim_timeout: Duration,
    /// Where plugins named without a path (`plugin = "file"`) are found.
    pub plugin_dir: PathBuf,
    /// Where compiled components are cached.
    pub cache_dir: PathBuf,
    /// How long shutdown waits for batches in flight before giving up on them.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Delivered messages older than this are deleted; `0s` keeps them forever.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How often retention runs.
    #[serde(with = "humantime_serde")]
    pub prune_interval: Duration,
    /// Messages deleted per statement, so pruning never holds long locks.
    pub prune_batch: u32,
    /// Reload the config and plugins when the config file changes (SIGHUP
    /// always reloads).
    pub reload_on_change: bool,
    /// A message whose payload is larger is dead-lettered, not delivered.
    pub max_payload_bytes: usize,
    /// A message whose partition key is longer is dead-lettered, not delivered.
    pub max_key_bytes: usize,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            batch_size: 100,
            partitions: 1,
            lease_ttl: Duration::from_secs(120),
            claim_timeout: Duration::from_secs(300),
            plugin_dir: PathBuf::from("plugins"),
            cache_dir: PathBuf::from(".outbox-relay/cache"),
            shutdown_grace: Duration::from_secs(10),
            retention: Duration::from_secs(7 * 24 * 3600),
            prune_interval: Duration::from_secs(60),
            prune_batch: 1000,
            reload_on_change: true,
            max_payload_bytes: 4 * 1024 * 1024,
            max_key_bytes: 1024,
        }
    }
}

/// The admin endpoint; off unless `listen` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address to listen on, e.g. `127.0.0.1:9090`.
    pub listen: Option<std::net::SocketAddr>,
    /// How often the lag gauges are refreshed from the database.
    #[serde(with = "humantime_serde")]
    pub lag_refresh: Duration,
    /// The web console at `/`; off unless its token is set.
    pub console: Option<ConsoleConfig>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: None,
            lag_refresh: Duration::from_secs(5),
            console: None,
        }
    }
}

/// `[admin.console]`: the operator's web console (docs/console.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// The login token: `{ env = "NAME" }` or `{ file = "path" }` (or a
    /// path). Anyone who has it can replay and purge dead letters.
    pub token: crate::tls::KeySource,
    /// Look, never change: replay and purge are refused.
    #[serde(default)]
    pub read_only: bool,
}

/// Sends every event whose name matches one of `events` (globs: `*`, `?`, `[a-z]`,
/// `{a,b}`) to each of `targets`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub events: Vec<String>,
    pub targets: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// A plugin name (`file` → `<plugin_dir>/file.wasm`) or a path to a `.wasm` file.
    pub plugin: String,
    /// Overrides `relay.batch_size` for this target.
    pub batch_size: Option<u32>,
    /// Deliver messages with the same partition key in enqueue order. A
    /// failure then holds the message's partition until it is delivered or
    /// dead-lettered.
    #[serde(default)]
    pub ordered: bool,
    /// Handed to the plugin's `init` as a JSON object.
    #[serde(default)]
    pub config: toml::Table,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default)]
    pub sandbox: SandboxConfig,
    /// Header injectors run, in order, on every envelope before the transport.
    #[serde(default)]
    pub injectors: Vec<InjectorConfig>,
    /// Names of `[keys]` this target's plugins may sign with.
    #[serde(default)]
    pub keys: Vec<String>,
}

/// One header injector of a target's chain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectorConfig {
    /// A plugin name (`<plugin_dir>/<name>.wasm`) or a path to a `.wasm` file.
    pub plugin: String,
    /// Handed to the injector's `init` as a JSON object.
    #[serde(default)]
    pub config: toml::Table,
    #[serde(default)]
    pub sandbox: SandboxConfig,
}

/// A signing key: its algorithm, and where the host reads it from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub algorithm: KeyAlgorithm,
    /// Environment variable holding the key.
    pub env: Option<String>,
    /// File holding the key (relative to the config file).
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum KeyAlgorithm {
    /// HMAC-SHA256; the key is a secret of at least 32 bytes, or a Standard
    /// Webhooks secret `whsec_<base64>` (24 to 64 bytes once decoded).
    #[serde(rename = "HS256")]
    Hs256,
    /// Ed25519; the key is a PKCS#8 PEM private key, a base64 32-byte seed,
    /// a NATS user NKey seed (`SU…`) or a NATS `.creds` file (its seed).
    #[serde(rename = "EdDSA")]
    EdDsa,
}

/// Exponential back-off with jitter. The delay before attempt `n + 1` is
/// `min(max_backoff, initial_backoff * multiplier^(n - 1))`, then scaled by a
/// random factor in `[1 - jitter, 1 + jitter]`. With the defaults: about 1 s,
/// 2 s, 4 s, ... capped at 5 min, and dead after 10 attempts (~8.5 min of retrying).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; then the message is dead-lettered.
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    pub multiplier: f64,
    /// Fraction of the delay to randomise, 0 to 1.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

/// What a target's plugin may touch. Everything not granted here is denied.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Linear-memory cap of the plugin instance, in MiB.
    pub memory_mb: u32,
    /// Time limit of one plugin call (init, one batch).
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Directories mapped into the guest: guest path → host directory (created if missing).
    pub dirs: BTreeMap<String, PathBuf>,
    /// TCP `host:port` pairs the plugin may connect to (host as an IP or a
    /// name, resolved when an instance starts; IPv6 in brackets).
    pub allow_tcp: Vec<HostPort>,
    /// Hosts the plugin may send HTTP requests to through the host's client:
    /// `host` (any port) or `host:port`.
    pub allow_http: Vec<AllowedHost>,
    /// Guest stderr kept per call for error reports, in KiB.
    pub stderr_kb: u32,
    /// Sockets one plugin instance may hold open at once.
    pub max_sockets: u32,
    /// Files and directories one plugin instance may hold open at once,
    /// besides its mapped directories.
    pub max_files: u32,
    /// Whether the plugin's stdout is the relay's standard output; unset:
    /// only for the bundled `stdout` plugin ([`SandboxConfig::stdout_for`]).
    pub stdout: Option<bool>,
    /// What the host's TLS connections for this plugin trust and present
    /// (`outbox:relay/tls`, and `https://` through `outbox:relay/http`).
    pub tls: Option<crate::tls::TlsSettings>,
}

impl SandboxConfig {
    /// Whether a plugin named `plugin` (a name or a path) writes to the
    /// relay's stdout: `stdout` if set, else only the `stdout` plugin.
    /// Everyone else's stdout is discarded: it is neither tagged nor bounded.
    pub fn stdout_for(&self, plugin: &str) -> bool {
        self.stdout.unwrap_or_else(|| {
            Path::new(plugin).file_stem().and_then(|s| s.to_str()) == Some("stdout")
        })
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            memory_mb: 64,
            call_timeout: Duration::from_secs(30),
            dirs: BTreeMap::new(),
            allow_tcp: Vec::new(),
            allow_http: Vec::new(),
            stderr_kb: 64,
            max_sockets: 32,
            max_files: 64,
            stdout: None,
            tls: None,
        }
    }
}

impl Config {
    /// Reads `path`, applies environment overrides, resolves relative paths and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, Env::prefixed(ENV_PREFIX).split("__"))
    }

    fn load_with_env(path: &Path, env: Env) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        // Read here, not through figment, so a directory, a pipe
        // (`--config <(...)`, /dev/fd/N) or an unreadable file each get
        // their own reason.
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            file: file.clone(),
            reason: read_failure(&e),
        })?;
        let mut config: Config = Figment::new()
            .merge(Toml::string(&text))
            .merge(env)
            .extract()
            .map_err(|e| ConfigError::Parse {
                file: file.clone(),
                message: describe(e),
            })?;
        config.source = path.to_path_buf();
        // A pipe (/dev/fd/N) has no directory of its own: its relative paths
        // are the working directory's.
        let regular = std::fs::metadata(path).is_ok_and(|m| m.is_file());
        let base = path
            .parent()
            .filter(|p| regular && !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        config.resolve_paths(&base);
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text without touching the environment (tests, `plugins test`).
    pub fn from_toml(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let mut config: Config =
            Figment::new()
                .merge(Toml::string(text))
                .extract()
                .map_err(|e| ConfigError::Parse {
                    file: "(inline)".into(),
                    message: describe(e),
                })?;
        config.source = PathBuf::from("(inline)");
        config.resolve_paths(base);
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let rebase = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        self.relay.plugin_dir = rebase(&self.relay.plugin_dir);
        self.relay.cache_dir = rebase(&self.relay.cache_dir);
        if let Some(rest) = self.database.strip_prefix("sqlite://") {
            let (file, query) = rest
                .split_once('?')
                .map_or((rest, None), |(f, q)| (f, Some(q)));
            if !file.is_empty() && !Path::new(file).is_absolute() {
                let joined = base.join(file).display().to_string();
                self.database = match query {
                    Some(q) => format!("sqlite://{joined}?{q}"),
                    None => format!("sqlite://{joined}"),
                };
            }
        }
        for target in self.targets.values_mut() {
            for host in target.sandbox.dirs.values_mut() {
                *host = rebase(host);
            }
            if let Some(tls) = &mut target.sandbox.tls {
                tls.rebase(base);
            }
            crate::plugin_config::rebase_files(&mut target.config, base);
            for injector in &mut target.injectors {
                for host in injector.sandbox.dirs.values_mut() {
                    *host = rebase(host);
                }
                if let Some(tls) = &mut injector.sandbox.tls {
                    tls.rebase(base);
                }
                crate::plugin_config::rebase_files(&mut injector.config, base);
            }
        }
        if let Some(console) = &mut self.admin.console
            && let crate::tls::KeySource(crate::plugin_config::SecretRef::File(path)) =
                &mut console.token
        {
            *path = rebase(path);
        }
        for key in self.keys.values_mut() {
            if let Some(file) = &key.file {
                key.file = Some(rebase(file));
            }
        }
    }

    fn invalid(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.source.display().to_string(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if ![
            "sqlite:",
            "postgres://",
            "postgresql://",
            "mysql://",
            "mariadb://",
        ]
        .iter()
        .any(|scheme| self.database.starts_with(scheme))
        {
            return Err(self.invalid(
                "database",
                format!(
                    "unsupported database URL {:?}; expected sqlite://<path>, postgres://<user>@<host>/<db> \
                     or mysql://<user>@<host>/<db>",
                    redact_url(&self.database)
                ),
            ));
        }
        if (self.database.starts_with("mysql://") || self.database.starts_with("mariadb://"))
            && mysql_database_name(&self.database).is_none()
        {
            return Err(self.invalid(
                "database",
                format!(
                    "the MySQL URL {:?} names no database; expected mysql://<user>@<host>/<db>",
                    redact_url(&self.database)
                ),
            ));
        }
        let r = &self.relay;
        if r.batch_size == 0 || r.batch_size > 10_000 {
            return Err(self.invalid("relay.batch_size", "must be between 1 and 10000"));
        }
        if r.partitions == 0 || r.partitions > 4096 {
            return Err(self.invalid("relay.partitions", "must be between 1 and 4096"));
        }
        if r.max_payload_bytes == 0 {
            return Err(self.invalid("relay.max_payload_bytes", "must be at least 1"));
        }
        if r.max_key_bytes == 0 {
            return Err(self.invalid("relay.max_key_bytes", "must be at least 1"));
        }
        if r.poll_interval < Duration::from_millis(10) {
            return Err(self.invalid("relay.poll_interval", "must be at least 10ms"));
        }
        if r.claim_timeout < Duration::from_secs(1) {
            return Err(self.invalid("relay.claim_timeout", "must be at least 1s"));
        }
        if r.prune_batch == 0 {
            return Err(self.invalid("relay.prune_batch", "must be at least 1"));
        }
        if r.prune_interval < Duration::from_secs(1) {
            return Err(self.invalid("relay.prune_interval", "must be at least 1s"));
        }
        if r.lease_ttl < Duration::from_secs(1) {
            return Err(self.invalid("relay.lease_ttl", "must be at least 1s"));
        }
        let mut routed = BTreeSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            if route.events.is_empty() {
                return Err(self.invalid(format!("routes[{i}].events"), "is empty"));
            }
            for (j, pattern) in route.events.iter().enumerate() {
                if let Err(e) = globset::Glob::new(pattern) {
                    return Err(self.invalid(
                        format!("routes[{i}].events[{j}]"),
                        format!("invalid glob {pattern:?}: {e}"),
                    ));
                }
            }
            for (j, target) in route.targets.iter().enumerate() {
                if !self.targets.contains_key(target) {
                    return Err(self.invalid(
                        format!("routes[{i}].targets[{j}]"),
                        format!("unknown target {target:?}; define it under [targets.{target}]"),
                    ));
                }
                routed.insert(target.as_str());
            }
        }
        for (name, target) in &self.targets {
            let field = |f: &str| format!("targets.{name}.{f}");
            if !valid_target_name(name) {
                return Err(self.invalid(
                    format!("targets.{name}"),
                    "target names use letters, digits, '-', '_' and '.' only",
                ));
            }
            if !routed.contains(name.as_str()) {
                return Err(self.invalid(
                    format!("targets.{name}"),
                    "no route sends events to this target; add it to a [[routes]] entry",
                ));
            }
            if target.plugin.trim().is_empty() {
                return Err(self.invalid(field("plugin"), "is empty"));
            }
            if target.batch_size.is_some_and(|b| b == 0 || b > 10_000) {
                return Err(self.invalid(field("batch_size"), "must be between 1 and 10000"));
            }
            let retry = &target.retry;
            if retry.max_attempts == 0 {
                return Err(self.invalid(field("retry.max_attempts"), "must be at least 1"));
            }
            if !(retry.multiplier >= 1.0 && retry.multiplier.is_finite()) {
                return Err(self.invalid(field("retry.multiplier"), "must be at least 1.0"));
            }
            if !(0.0..=1.0).contains(&retry.jitter) {
                return Err(self.invalid(field("retry.jitter"), "must be between 0 and 1"));
            }
            if retry.max_backoff > Duration::from_secs(7 * 24 * 3600) {
                return Err(self.invalid(field("retry.max_backoff"), "must be at most 7 days"));
            }
            if retry.max_backoff < retry.initial_backoff {
                return Err(self.invalid(
                    field("retry.max_backoff"),
                    "must not be shorter than retry.initial_backoff",
                ));
            }
            for (i, key) in target.keys.iter().enumerate() {
                if !self.keys.contains_key(key) {
                    return Err(self.invalid(
                        field(&format!("keys[{i}]")),
                        format!("unknown key {key:?}; define it under [keys.{key}]"),
                    ));
                }
            }
            for (i, injector) in target.injectors.iter().enumerate() {
                if injector.plugin.trim().is_empty() {
                    return Err(self.invalid(field(&format!("injectors[{i}].plugin")), "is empty"));
                }
                self.validate_sandbox(
                    &field(&format!("injectors[{i}].sandbox")),
                    &injector.sandbox,
                )?;
            }
            self.validate_sandbox(&field("sandbox"), &target.sandbox)?;
        }
        for (name, key) in &self.keys {
            if key.env.is_some() == key.file.is_some() {
                return Err(self.invalid(
                    format!("keys.{name}"),
                    "set exactly one of `env` and `file`",
                ));
            }
        }
        Ok(())
    }

    fn validate_sandbox(&self, prefix: &str, sandbox: &SandboxConfig) -> Result<(), ConfigError> {
        let field = |f: &str| format!("{prefix}.{f}");
        {
            if sandbox.max_sockets > 1024 {
                return Err(self.invalid(field("max_sockets"), "must be at most 1024"));
            }
            if sandbox.max_files > 1024 {
                return Err(self.invalid(field("max_files"), "must be at most 1024"));
            }
            if sandbox.memory_mb == 0 || sandbox.memory_mb > 4096 {
                return Err(self.invalid(field("memory_mb"), "must be between 1 and 4096"));
            }
            if sandbox.call_timeout < Duration::from_millis(10) {
                return Err(self.invalid(field("call_timeout"), "must be at least 10ms"));
            }
            for guest in sandbox.dirs.keys() {
                if !guest.starts_with('/') {
                    return Err(self.invalid(
                        field(&format!("dirs.{guest}")),
                        "guest paths must be absolute, e.g. \"/out\"",
                    ));
                }
            }
            // `allow_tcp` and `allow_http` entries were checked as they were
            // parsed (see `sandbox_address`).
        }
        Ok(())
    }

    /// Running or checking a relay needs its targets' TLS files (`status`,
    /// `migrate` and the dead-letter tools do not, nor the key): each
    /// `sandbox.tls` is built once here, every file and the key read and
    /// checked, so a bad one stops the start with its field.
    pub fn check_tls(&self) -> Result<(), ConfigError> {
        for (name, target) in &self.targets {
            let sandboxes = std::iter::once((format!("targets.{name}.sandbox"), &target.sandbox))
                .chain(target.injectors.iter().enumerate().map(|(i, injector)| {
                    (
                        format!("targets.{name}.injectors[{i}].sandbox"),
                        &injector.sandbox,
                    )
                }));
            for (prefix, sandbox) in sandboxes {
                if let Some(tls) = &sandbox.tls {
                    tls.client().map_err(|e| {
                        self.invalid(format!("{prefix}.tls.{}", e.field), e.message)
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Running or checking a relay needs at least one target; `migrate`,
    /// `status` and the dead-letter tools do not.
    pub fn require_targets(&self) -> Result<(), ConfigError> {
        if self.targets.is_empty() {
            return Err(self.invalid(
                "targets",
                "no targets are configured; add a [targets.<name>] table and a [[routes]] entry",
            ));
        }
        Ok(())
    }

    /// Settings that are valid but probably not what the operator wants.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, target) in &self.targets {
            // One batch may need instantiate, init and deliver calls under one lease.
            if self.relay.lease_ttl <= target.sandbox.call_timeout * 3 {
                out.push(format!(
                    "relay.lease_ttl ({:?}) is not longer than three times targets.{name}.sandbox.call_timeout ({:?}); \
                     a slow batch may lose its lease and be delivered twice",
                    self.relay.lease_ttl, target.sandbox.call_timeout
                ));
            }
            if self.relay.claim_timeout <= target.sandbox.call_timeout * 3 {
                out.push(format!(
                    "relay.claim_timeout ({:?}) is not longer than three times targets.{name}.sandbox.call_timeout ({:?}); \
                     a slow retry may be claimed and delivered twice",
                    self.relay.claim_timeout, target.sandbox.call_timeout
                ));
            }
        }
        out
    }

    /// The batch size that applies to `target`.
    pub fn batch_size(&self, target: &TargetConfig) -> u32 {
        target.batch_size.unwrap_or(self.relay.batch_size)
    }

    /// Where `target`'s plugin file is.
    pub fn plugin_path(&self, target: &TargetConfig) -> PathBuf {
        self.resolve_plugin(&target.plugin)
    }

    /// Where a plugin named in the config is: a bare name is looked up in
    /// `relay.plugin_dir`, anything else is a path (relative to the config file).
    pub fn resolve_plugin(&self, plugin: &str) -> PathBuf {
        let p = Path::new(plugin);
        if plugin.ends_with(".wasm") || p.components().count() > 1 {
            let base = self.source.parent().unwrap_or(Path::new("."));
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        } else {
            self.relay.plugin_dir.join(format!("{plugin}.wasm"))
        }
    }
}

/// Why the config file could not be read, in the operator's words.
fn read_failure(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::IsADirectory => "is a directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        std::io::ErrorKind::InvalidData => "not UTF-8 text".into(),
        _ => e.to_string(),
    }
}

/// figment's errors, one a line, each naming its key (and the environment
/// variable when it came from one), without figment's own framing
/// (``for key "default.x" in TOML source string``).
fn describe(errors: figment::Error) -> String {
    errors
        .into_iter()
        .map(|e| {
            let key = field_path(&e.path);
            let from_env = e
                .metadata
                .as_ref()
                .filter(|md| md.name.contains("environment"))
                .map(|_| {
                    let name = e.path.join("__").to_ascii_uppercase();
                    format!("environment variable {ENV_PREFIX}{name}: ")
                });
            let what = match &e.kind {
                figment::error::Kind::UnknownField(found, expected) => {
                    let parent = &e.path[..e.path.len().saturating_sub(1)];
                    let full = |name: &str| {
                        parent
                            .iter()
                            .map(String::as_str)
                            .chain([name])
                            .collect::<Vec<_>>()
                            .join(".")
                    };
                    match closest(found, expected) {
                        Some(near) => {
                            format!(
                                "unknown key `{}`; did you mean `{}`?",
                                full(found),
                                full(near)
                            )
                        }
                        None => format!(
                            "unknown key `{}`; the keys here are {}",
                            full(found),
                            expected
                                .iter()
                                .map(|k| format!("`{k}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    }
                }
                kind if key.is_empty() => without_snippet(&kind.to_string()),
                kind => format!("field `{key}`: {}", without_snippet(&kind.to_string())),
            };
            format!("{}{what}", from_env.unwrap_or_default())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A TOML syntax error with the quoted source line cut at its `=` (`3 |
/// password = …`): the key and the line say where, and the value may be a
/// secret. The caret line under it goes too.
fn without_snippet(message: &str) -> String {
    message
        .lines()
        .filter_map(|line| {
            let t = line.trim_start();
            let digits = t.len() - t.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            let rest = t[digits..].trim_start();
            match rest.strip_prefix('|') {
                None if rest.is_empty() => None,
                None => Some(line.trim().to_string()),
                // `  |` or `  |     ^`: no source.
                Some(_) if digits == 0 => None,
                Some(source) => Some(match source.split_once('=') {
                    Some((key, _)) => format!("`{}= …`", key.trim_start()),
                    None => "(the line is not shown)".to_string(),
                }),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The known key nearest to `found`, if it is near enough to be a typo.
fn closest<'a>(found: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(found, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

fn valid_target_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A figment error's path as a config path: `targets.x.sandbox.allow_tcp[1]`.
fn field_path(path: &[String]) -> String {
    let mut field = String::new();
    for key in path {
        if key.parse::<usize>().is_ok() {
            field.push_str(&format!("[{key}]"));
        } else {
            if !field.is_empty() {
                field.push('.');
            }
            field.push_str(key);
        }
    }
    field
}

pub use crate::storage::redact_url;

/// The database a `mysql://user@host:port/db?...` URL names, if any.
fn mysql_database_name(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let host = rest.rfind('@').map_or(rest, |at| &rest[at + 1..]);
    let path = &host[host.find('/')? + 1..];
    let name = path.split(['?', '#']).next().unwrap_or_default();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_mysql_url_must_name_its_database() {
        assert_eq!(
            mysql_database_name("mysql://root@127.0.0.1:3306/app"),
            Some("app")
        );
        assert_eq!(
            mysql_database_name("mysql://u:p/w@h/app?ssl-mode=required"),
            Some("app")
        );
        assert_eq!(mysql_database_name("mysql://root@127.0.0.1:3306"), None);
        assert_eq!(mysql_database_name("mariadb://root@h/?x=1"), None);
    }

    #[test]
    fn a_syntax_error_names_line_and_column_but_not_the_line() {
        let text = "database = \"sqlite://x.db\"\n[targets.t]\nplugin = \"webhook\"\nconfig = { password = \"hunter2-secret\n";
        let e = Config::from_toml(text, Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 4"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    use super::*;

    #[test]
    fn only_the_stdout_plugin_gets_stdout_unless_the_sandbox_says() {
        let mut sandbox = SandboxConfig::default();
        assert!(sandbox.stdout_for("stdout"));
        assert!(sandbox.stdout_for("/opt/plugins/stdout.wasm"));
        assert!(!sandbox.stdout_for("webhook"));
        sandbox.stdout = Some(false);
        assert!(!sandbox.stdout_for("stdout"));
        sandbox.stdout = Some(true);
        assert!(sandbox.stdout_for("webhook"));
    }

    const MINIMAL: &str = r#"
        database = "sqlite://outbox.db"
        [[routes]]
        events = ["order.*"]
        targets = ["audit"]
        [targets.audit]
        plugin = "file"
        config = { path = "/out/events.jsonl" }
        sandbox = { dirs = { "/out" = "out" } }
    "#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/etc/relay"))
    }

    #[test]
    fn minimal_config_gets_defaults_and_resolved_paths() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.database, "sqlite:///etc/relay/outbox.db");
        assert_eq!(c.relay.batch_size, 100);
        assert_eq!(c.relay.poll_interval, Duration::from_secs(1));
        let audit = &c.targets["audit"];
        assert_eq!(audit.retry, RetryPolicy::default());
        assert_eq!(audit.sandbox.dirs["/out"], PathBuf::from("/etc/relay/out"));
        assert_eq!(
            c.plugin_path(audit),
            PathBuf::from("/etc/relay/plugins/file.wasm")
        );
    }

    #[test]
    fn wrong_type_names_the_field() {
        let text = MINIMAL.replace("[[routes]]", "[relay]\nbatch_size = \"lots\"\n[[routes]]");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("batch_size"), "{e}");
    }

    #[test]
    fn unknown_field_is_rejected() {
        let text = MINIMAL.replace("plugin = \"file\"", "plugin = \"file\"\nbatchsize = 3");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("batchsize"), "{e}");
    }

    #[test]
    fn unknown_keys_are_named_plainly_with_the_nearest_known_key() {
        let e = parse(&MINIMAL.replace("database =", "databse ="))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config file (inline): unknown key `databse`; did you mean `database`?"),
            "{e}"
        );
        assert!(!e.contains("for key") && !e.contains("default."), "{e}");
        let e = parse(&MINIMAL.replace("plugin = \"file\"", "plugin = \"file\"\nbatchsize = 3"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "unknown key `targets.audit.batchsize`; did you mean `targets.audit.batch_size`?"
            ),
            "{e}"
        );
        let e = parse(&MINIMAL.replace("plugin = \"file\"", "plugin = \"file\"\nzzz = 3"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown key `targets.audit.zzz`; the keys here are `plugin`, "),
            "{e}"
        );
    }

    #[test]
    fn a_wrong_type_names_the_key_without_figments_framing() {
        let text = MINIMAL.replace("[[routes]]", "[relay]\nbatch_size = \"lots\"\n[[routes]]");
        let e = parse(&text).unwrap_err().to_string();
        assert_eq!(
            e,
            "config file (inline): field `relay.batch_size`: invalid type: found string \"lots\", expected u32"
        );
    }

    #[test]
    fn an_unreadable_config_path_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let e = Config::load(dir.path()).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "cannot read config {}: is a directory",
                dir.path().display()
            )
        );
        let missing = dir.path().join("nope.toml");
        let e = Config::load(&missing).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("cannot read config {}: no such file", missing.display())
        );
        let binary = dir.path().join("relay.toml");
        std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
        let e = Config::load(&binary).unwrap_err().to_string();
        assert!(e.ends_with("relay.toml: not UTF-8 text"), "{e}");
    }

    #[test]
    fn no_targets_is_valid_until_a_relay_needs_them() {
        let c = parse("database = \"sqlite://outbox.db\"").unwrap();
        assert!(c.targets.is_empty());
        let e = c.require_targets().unwrap_err().to_string();
        assert!(
            e.contains("field `targets`: no targets are configured"),
            "{e}"
        );
    }

    #[test]
    fn typos_are_matched_by_edit_distance() {
        assert_eq!(edit_distance("databse", "database"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(
            closest("batchsize", &["plugin", "batch_size"]),
            Some("batch_size")
        );
        assert_eq!(closest("zzz", &["plugin", "batch_size"]), None);
    }

    #[test]
    fn route_to_unknown_target_names_the_route() {
        let text = MINIMAL.replace("targets = [\"audit\"]", "targets = [\"audit\", \"nope\"]");
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("routes[0].targets[1]") && e.contains("nope"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        for (from, to, field) in [
            (
                "plugin = \"file\"",
                "plugin = \"file\"\nretry = { jitter = 2.0 }",
                "targets.audit.retry.jitter",
            ),
            (
                "plugin = \"file\"",
                "plugin = \"file\"\nretry = { max_attempts = 0 }",
                "targets.audit.retry.max_attempts",
            ),
            (
                "\"/out\" = \"out\"",
                "\"out\" = \"out\"",
                "targets.audit.sandbox.dirs.out",
            ),
            (
                "events = [\"order.*\"]",
                "events = [\"order.[\"]",
                "routes[0].events[0]",
            ),
            (
                "dirs = {",
                "allow_tcp = [\"nowhere\"], dirs = {",
                "targets.audit.sandbox.allow_tcp[0]",
            ),
            (
                "dirs = {",
                "allow_http = [\"https://x/\"], dirs = {",
                "targets.audit.sandbox.allow_http[0]",
            ),
        ] {
            let e = parse(&MINIMAL.replace(from, to)).unwrap_err().to_string();
            assert!(e.contains(field), "expected {field} in: {e}");
        }
    }

    /// A bad `allow_tcp` / `allow_http` entry fails as the file is parsed,
    /// naming the field, the entry and what is wrong with it.
    #[test]
    fn bad_sandbox_addresses_fail_at_parse_time_naming_the_field() {
        for (sandbox, field, why) in [
            (
                r#"allow_tcp = ["127.0.0.1:4222", "a:b:80"]"#,
                "targets.audit.sandbox.allow_tcp[1]",
                "\"a:b:80\" has more than one ':'",
            ),
            (
                r#"allow_tcp = ["nowhere"]"#,
                "targets.audit.sandbox.allow_tcp[0]",
                "\"nowhere\" has no port",
            ),
            (
                r#"allow_tcp = ["x:70000"]"#,
                "targets.audit.sandbox.allow_tcp[0]",
                "\"70000\" is not a port",
            ),
            (
                r#"allow_http = ["hooks.example.com", "https://x/"]"#,
                "targets.audit.sandbox.allow_http[1]",
                "no scheme, path or user",
            ),
        ] {
            let text = MINIMAL.replace("dirs = {", &format!("{sandbox}, dirs = {{"));
            let e = parse(&text).unwrap_err();
            assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
            let e = e.to_string();
            assert!(e.contains(&format!("field `{field}`")), "{field} in: {e}");
            assert!(e.contains(why), "{why} in: {e}");
        }
        let text = MINIMAL.replace(
            "[targets.audit]",
            "[targets.audit]\ninjectors = [{ plugin = \"x\", sandbox = { allow_http = [\"a:b:c\"] } }]",
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("field `targets.audit.injectors[0].sandbox.allow_http[0]`"),
            "{e}"
        );
    }

    #[test]
    fn good_sandbox_addresses_are_kept_typed() {
        let text = MINIMAL.replace(
            "dirs = {",
            r#"allow_tcp = ["[::1]:4222", "Broker.internal:1883"], allow_http = ["hooks.example.com"], dirs = {"#,
        );
        let c = parse(&text).unwrap();
        let sandbox = &c.targets["audit"].sandbox;
        let tcp: Vec<String> = sandbox.allow_tcp.iter().map(|a| a.to_string()).collect();
        assert_eq!(tcp, ["[::1]:4222", "broker.internal:1883"]);
        assert_eq!(sandbox.allow_tcp[0].host(), "::1");
        assert!(sandbox.allow_http[0].allows("hooks.example.com", Some(443)));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API, test only
    fn env_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("OUTBOX_RELAY__RELAY__BATCH_SIZE", "7");
            let c = Config::load(&path).map_err(|e| e.to_string())?;
            assert_eq!(c.relay.batch_size, 7);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API, test only
    fn an_unknown_key_from_the_environment_names_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("OUTBOX_RELAY__RELAY__BATCH_SIZ", "7");
            let e = Config::load(&path).unwrap_err().to_string();
            assert!(
                e.contains(
                    "environment variable OUTBOX_RELAY__RELAY__BATCH_SIZ: unknown key `relay.batch_siz`; \
                     did you mean `relay.batch_size`?"
                ),
                "{e}"
            );
            Ok(())
        });
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_url("sqlite://a.db"), "sqlite://a.db");
    }

    /// Fuzzing the loader: any text, and any mangling of a valid config,
    /// gives a config or an error that names the file; it never panics.
    /// `PROPTEST_CASES=20000 cargo test -p outbox-relay --lib fuzz_` runs it
    /// longer (docs/reliability.md records such a run).
    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn load_text(text: &str) -> Result<Config, ConfigError> {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("relay.toml");
            std::fs::write(&path, text).unwrap();
            Config::load_with_env(&path, Env::prefixed("OUTBOX_RELAY_FUZZ_UNSET__"))
        }

        fn check(text: &str) {
            if let Err(e) = load_text(text) {
                let message = e.to_string();
                assert!(
                    message.contains("relay.toml"),
                    "the error names no file: {message}"
                );
            }
        }

        proptest! {
            #[test]
            fn fuzz_any_text_loads_or_fails_cleanly(text in "(?s).{0,400}") {
                check(&text);
            }

            #[test]
            fn fuzz_tomlish_text_loads_or_fails_cleanly(
                text in "([a-z_.]{1,12} = (\"[a-z*/.:{} ]{0,20}\"|[0-9]{1,12}|true|\\[\\]|\\{ ?\\})\n|\\[{1,2}[a-z_.]{1,16}\\]{1,2}\n){0,20}"
            ) {
                check(&text);
            }

            #[test]
            fn fuzz_a_mangled_valid_config_loads_or_fails_cleanly(
                at in 0usize..MINIMAL.len(),
                len in 0usize..40,
                insert in "(?s).{0,40}",
            ) {
                let mut text = MINIMAL.to_string();
                let start = (0..=at).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
                let end = (start + len).min(text.len());
                let end = (end..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
                text.replace_range(start..end, &insert);
                check(&text);
            }
        }
    }
}
