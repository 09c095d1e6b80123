//! Tools for plugin authors: `outbox-relay plugins new` scaffolds a plugin
//! crate, `outbox-relay plugins test` runs a built component once, outside a
//! relay, on sample envelopes. See `docs/plugins.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::config::SandboxConfig;
use crate::injector::{HeaderEdit, HeaderInjector};
use crate::keys::SigningGrant;
use crate::message::{Envelope, Headers, Message, Outcome};
use crate::plugin::{PluginRuntime, PluginSpec, WasmInjector, WasmTransport};
use crate::sandbox_address::{AddressError, HostPort};

/// The kind of plugin, as the command line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Transport,
    Injector,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Transport => "transport",
            Kind::Injector => "header injector",
        }
    }
}

// ---------------------------------------------------------------------------
// plugins new
// ---------------------------------------------------------------------------

/// `plugins new`: scaffold a plugin crate.
#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The crate's name: lowercase letters, digits and '-', starting with a
    /// letter (e.g. `hello`, `my-webhook`). The component is `<name with '_'>.wasm`.
    pub name: String,
    /// Which plugin kind to scaffold.
    #[arg(long, value_enum)]
    pub kind: Kind,
    /// The directory to create (default: `./<name>`). It must not exist yet.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The guest SDK (`guest-sdk/` of the outbox-relay repository) the crate
    /// depends on by path (default: the one this binary was built from).
    #[arg(long)]
    pub sdk_path: Option<PathBuf>,
}

const CARGO_TOML: &str = include_str!("authoring/Cargo.toml.tmpl");
const TRANSPORT_RS: &str = include_str!("authoring/transport.rs.tmpl");
const INJECTOR_RS: &str = include_str!("authoring/injector.rs.tmpl");
const README_MD: &str = include_str!("authoring/README.md.tmpl");
const GITIGNORE: &str = include_str!("authoring/gitignore.tmpl");

/// The guest SDK of the repository this binary was built from.
fn default_sdk_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk")
}

/// Names that are not usable as a crate (Rust keywords, standard crates) or
/// would clash with the SDK dependency.
const RESERVED: &[&str] = &[
    "as",
    "async",
    "await",
    "break",
    "const",
    "continue",
    "crate",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "match",
    "mod",
    "move",
    "mut",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "try",
    "type",
    "unsafe",
    "use",
    "where",
    "while",
    "abstract",
    "become",
    "box",
    "do",
    "final",
    "macro",
    "override",
    "priv",
    "typeof",
    "unsized",
    "virtual",
    "yield",
    "std",
    "core",
    "alloc",
    "proc-macro",
    "test",
    "outbox-relay-guest",
];

/// Checks a plugin crate name: lowercase ASCII letters, digits and '-',
/// starting with a letter, not ending with '-', no "--", not reserved.
pub fn validate_name(name: &str) -> Result<(), String> {
    let advice =
        "use lowercase letters, digits and '-', starting with a letter (e.g. `my-webhook`)";
    if name.is_empty() {
        return Err(format!("the plugin name is empty; {advice}"));
    }
    if name.len() > 64 {
        return Err(format!(
            "the plugin name {name:?} is longer than 64 characters"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!("the plugin name {name:?} contains {c:?}; {advice}"));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!(
            "the plugin name {name:?} must start with a letter; {advice}"
        ));
    }
    if name.ends_with('-') || name.contains("--") {
        return Err(format!(
            "the plugin name {name:?} must not end with '-' or contain \"--\"; {advice}"
        ));
    }
    if RESERVED.contains(&name) || RESERVED.contains(&name.replace('-', "_").as_str()) {
        return Err(format!(
            "the plugin name {name:?} is reserved (a Rust keyword or crate); choose another"
        ));
    }
    Ok(())
}

/// `hello-world` → `HelloWorld`.
fn camel_case(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// The files of a new plugin crate, relative to its directory.
pub fn scaffold_files(name: &str, kind: Kind, sdk_path: &Path) -> Vec<(&'static str, String)> {
    let lib_name = name.replace('-', "_");
    let (type_name, source, what, test_kind, usage) = match kind {
        Kind::Transport => {
            let type_name = format!("{}Transport", camel_case(name));
            let what = "It delivers every envelope and logs its id, and rejects (dead-letters) \
                        an envelope whose payload is empty. Edit `src/lib.rs` to make it deliver \
                        somewhere."
                .to_string();
            let usage = format!(
                "Copy the component where the relay finds it and add a target to the \
                 relay's config:\n\n```toml\n[[routes]]\nevents = [\"order.*\"]\n\
                 targets = [\"{name}\"]\n\n[targets.{name}]\n\
                 plugin = \"/path/to/{lib_name}.wasm\"   # or \"{lib_name}\" inside relay.plugin_dir\n\
                 config = {{}}                          # handed to init as JSON\n\
                 sandbox = {{ memory_mb = 64, call_timeout = \"30s\" }}\n```"
            );
            (type_name, TRANSPORT_RS, what, String::new(), usage)
        }
        Kind::Injector => {
            let type_name = format!("{}Injector", camel_case(name));
            let what = format!(
                "It sets the header `x-{name}` to the delivery attempt of each envelope. \
                 Edit `src/lib.rs` to make it edit headers your way."
            );
            let usage = format!(
                "Add it to a target's injector chain in the relay's config:\n\n```toml\n\
                 [targets.audit]\nplugin = \"file\"\n# ...\n\n[[targets.audit.injectors]]\n\
                 plugin = \"/path/to/{lib_name}.wasm\"   # or \"{lib_name}\" inside relay.plugin_dir\n\
                 config = {{}}\n```"
            );
            (
                type_name,
                INJECTOR_RS,
                what,
                " --kind injector".to_string(),
                usage,
            )
        }
    };
    let sdk = toml::Value::String(sdk_path.display().to_string()).to_string();
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{lib_name}}", &lib_name)
            .replace("{{type_name}}", &type_name)
            .replace("{{kind}}", kind.noun())
            .replace("{{header}}", &format!("x-{name}"))
            .replace("{{sdk_path}}", &sdk)
            .replace("{{what}}", &what)
            .replace("{{test_kind}}", &test_kind)
            .replace("{{usage}}", &usage)
    };
    vec![
        ("Cargo.toml", fill(CARGO_TOML)),
        ("src/lib.rs", fill(source)),
        ("README.md", fill(README_MD)),
        (".gitignore", fill(GITIGNORE)),
    ]
}

/// Finds and checks the SDK directory; returns it absolute.
fn resolve_sdk(sdk_path: Option<&Path>) -> anyhow::Result<PathBuf> {
    let (path, given) = match sdk_path {
        Some(p) => (p.to_path_buf(), true),
        None => (default_sdk_path(), false),
    };
    let manifest = path.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).map_err(|e| {
        if given {
            anyhow::anyhow!(
                "--sdk-path {}: cannot read {}: {e}; point it at the guest-sdk/ directory of the outbox-relay repository",
                path.display(),
                manifest.display()
            )
        } else {
            anyhow::anyhow!(
                "the guest SDK this binary was built from is not at {} any more ({e}); \
                 pass --sdk-path <outbox-relay checkout>/guest-sdk",
                path.display()
            )
        }
    })?;
    if !text.contains("name = \"outbox-relay-guest\"") {
        bail!(
            "{} is not the outbox-relay-guest crate; point --sdk-path at the guest-sdk/ directory of the outbox-relay repository",
            path.display()
        );
    }
    path.canonicalize()
        .with_context(|| format!("cannot resolve {}", path.display()))
}

/// Runs `plugins new`: writes the crate and returns its directory.
pub fn new_plugin(args: &NewArgs) -> anyhow::Result<PathBuf> {
    validate_name(&args.name).map_err(anyhow::Error::msg)?;
    let sdk = resolve_sdk(args.sdk_path.as_deref())?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.symlink_metadata().is_ok() {
        bail!(
            "{} already exists; plugins new never overwrites, choose another --dir or remove it",
            dir.display()
        );
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    // create_dir (not _all) fails if someone made the directory meanwhile.
    std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let written = (|| -> anyhow::Result<()> {
        for (file, text) in scaffold_files(&args.name, args.kind, &sdk) {
            let path = dir.join(file);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    Ok(dir)
}

/// `plugins new`, with what to do next printed.
pub fn new_command(args: &NewArgs) -> anyhow::Result<()> {
    let dir = new_plugin(args)?;
    let lib_name = args.name.replace('-', "_");
    let kind_flag = match args.kind {
        Kind::Transport => "",
        Kind::Injector => " --kind injector",
    };
    println!(
        "created {} `{}` in {}",
        args.kind.noun(),
        args.name,
        dir.display()
    );
    println!();
    println!("next:");
    println!("  cd {}", dir.display());
    println!("  cargo test");
    println!("  rustup target add wasm32-wasip2");
    println!("  cargo build --release --target wasm32-wasip2");
    println!("  outbox-relay plugins check target/wasm32-wasip2/release/{lib_name}.wasm");
    println!("  outbox-relay plugins test target/wasm32-wasip2/release/{lib_name}.wasm{kind_flag}");
    Ok(())
}

// ---------------------------------------------------------------------------
// plugins test
// ---------------------------------------------------------------------------

/// `plugins test`: run a component once on sample envelopes.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// The component (`.wasm`) to run.
    pub file: PathBuf,
    /// The plugin kind (default: detected from what the component exports).
    #[arg(long, value_enum)]
    pub kind: Option<Kind>,
    /// The plugin's config: a JSON object, or `@FILE` to read one from a file
    /// (a `.toml` file is read as the TOML table of `[targets.<name>.config]`).
    #[arg(long, default_value = "{}")]
    pub config: String,
    /// A JSON-lines file of envelopes to send instead of the built-in samples:
    /// one `{"event_name", "payload", "partition_key"?, "headers"?, "attempt"?}` per line.
    #[arg(long)]
    pub envelopes: Option<PathBuf>,
    /// The target name handed to init (and to inject).
    #[arg(long, default_value = "test")]
    pub target: String,
    /// Map a host directory into the sandbox, as `GUEST=HOST` (e.g. `/out=./out`); repeatable.
    #[arg(long = "dir", value_name = "GUEST=HOST", value_parser = parse_dir_mapping)]
    pub dirs: Vec<(String, PathBuf)>,
    /// Allow TCP connections to `HOST:PORT`; repeatable.
    #[arg(long = "allow-tcp", value_name = "HOST:PORT", value_parser = parse_allow_tcp)]
    pub allow_tcp: Vec<HostPort>,
    /// Linear-memory cap of the instance, in MiB.
    #[arg(long, default_value_t = SandboxConfig::default().memory_mb)]
    pub memory_mb: u32,
    /// Time limit of one call (init, the batch), e.g. `30s`.
    #[arg(long, default_value = "30s", value_parser = humantime_serde::re::humantime::parse_duration)]
    pub call_timeout: Duration,
    /// Where compiled components are cached (default: under the system temp dir).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Print one JSON document instead of one line per envelope.
    #[arg(long)]
    pub json: bool,
}

fn parse_dir_mapping(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((guest, host)) if guest.starts_with('/') && !host.is_empty() => {
            Ok((guest.to_string(), PathBuf::from(host)))
        }
        Some((guest, _)) if !guest.starts_with('/') => Err(format!(
            "the guest path {guest:?} must be absolute, e.g. /out=./out"
        )),
        _ => Err(format!("expected GUEST=HOST, e.g. /out=./out; got {s:?}")),
    }
}

fn parse_allow_tcp(s: &str) -> Result<HostPort, String> {
    s.parse().map_err(|e: AddressError| e.to_string())
}

/// One line of an `--envelopes` file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeLine {
    event_name: String,
    /// The payload's text; any other JSON value is sent as its JSON text.
    #[serde(default)]
    payload: Option<serde_json::Value>,
    #[serde(default)]
    partition_key: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    id: Option<uuid::Uuid>,
    #[serde(default)]
    attempt: Option<u32>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn envelope(seq: i64, line: EnvelopeLine) -> Envelope {
    let payload = match line.payload {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(text)) => text.into_bytes(),
        Some(other) => other.to_string().into_bytes(),
    };
    let headers: Headers = line
        .headers
        .into_iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value))
        .collect();
    Envelope {
        message: Message {
            seq,
            xid: 0,
            id: line.id.unwrap_or_else(uuid::Uuid::now_v7),
            event_name: line.event_name,
            partition_key: line.partition_key,
            partition: 0,
            payload,
            headers,
            created_at_ms: now_ms(),
        },
        attempt: line.attempt.unwrap_or(1).max(1),
    }
}

/// The built-in batch: three events with keys, headers and JSON payloads.
pub fn sample_envelopes() -> Vec<Envelope> {
    let samples = [
        (
            "order.created",
            "order-7",
            r#"{"order":7,"total":"12.50"}"#,
            vec![
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
                ("x-tenant", "acme"),
            ],
        ),
        (
            "order.paid",
            "order-7",
            r#"{"order":7,"amount":"12.50"}"#,
            vec![("x-tenant", "acme")],
        ),
        (
            "user.created",
            "user-ada",
            r#"{"user":"ada"}"#,
            vec![("x-tenant", "acme"), ("x-source", "signup")],
        ),
    ];
    samples
        .into_iter()
        .enumerate()
        .map(|(i, (event, key, payload, headers))| {
            envelope(
                i as i64 + 1,
                EnvelopeLine {
                    event_name: event.to_string(),
                    payload: Some(serde_json::Value::String(payload.to_string())),
                    partition_key: Some(key.to_string()),
                    headers: headers
                        .into_iter()
                        .map(|(n, v)| (n.to_string(), v.to_string()))
                        .collect(),
                    id: None,
                    attempt: None,
                },
            )
        })
        .collect()
}

/// Reads an `--envelopes` file (JSON lines; blank lines are skipped).
pub fn read_envelopes(path: &Path) -> anyhow::Result<Vec<Envelope>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --envelopes {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed: EnvelopeLine = serde_json::from_str(line).with_context(|| {
            format!(
                "{}:{}: expected {{\"event_name\": \"...\", \"payload\": \"...\", \"partition_key\"?: \"...\", \"headers\"?: {{...}}}}",
                path.display(),
                i + 1
            )
        })?;
        if parsed.event_name.trim().is_empty() {
            bail!("{}:{}: event_name is empty", path.display(), i + 1);
        }
        out.push(envelope(out.len() as i64 + 1, parsed));
    }
    if out.is_empty() {
        bail!("{} holds no envelopes", path.display());
    }
    Ok(out)
}

/// The `--config` argument as the JSON object handed to init.
pub fn config_json(arg: &str) -> anyhow::Result<String> {
    let (text, source, toml_file) = match arg.strip_prefix('@') {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read --config @{file}"))?;
            let is_toml = Path::new(file)
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
            (text, format!("--config @{file}"), is_toml)
        }
        None => (arg.to_string(), "--config".to_string(), false),
    };
    let value: serde_json::Value = if toml_file {
        let table: toml::Table =
            toml::from_str(&text).with_context(|| format!("{source}: not valid TOML"))?;
        serde_json::to_value(table)?
    } else if text.trim().is_empty() {
        serde_json::Value::Object(serde_json::Map::new())
    } else {
        serde_json::from_str(&text).with_context(|| format!("{source}: not valid JSON"))?
    };
    if !value.is_object() {
        bail!("{source}: the config must be a JSON object, e.g. '{{\"path\": \"/out/x.jsonl\"}}'");
    }
    Ok(value.to_string())
}

/// What `plugins test` found for one envelope.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TestResult {
    pub id: String,
    pub event_name: String,
    /// `delivered`, `retry`, `reject` (transports); `edits` or `error` (injectors).
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Injectors: the edits, as `set name=value` / `remove name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edits: Option<Vec<String>>,
}

impl TestResult {
    fn line(&self) -> String {
        let mut line = format!("{}  {}  ", self.id, self.event_name);
        match self.outcome {
            "retry" => {
                let _ = write!(line, "retry: {}", self.reason.as_deref().unwrap_or(""));
                if let Some(ms) = self.delay_ms {
                    let _ = write!(line, " (not before {ms} ms)");
                }
            }
            "reject" => {
                let _ = write!(line, "reject: {}", self.reason.as_deref().unwrap_or(""));
            }
            "error" => {
                let _ = write!(
                    line,
                    "error (retried like a transport retry): {}",
                    self.reason.as_deref().unwrap_or("")
                );
            }
            "edits" => match self.edits.as_deref() {
                None | Some([]) => line.push_str("no header edits"),
                Some(edits) => line.push_str(&edits.join("; ")),
            },
            other => line.push_str(other),
        }
        line
    }
}

fn result_base(envelope: &Envelope, outcome: &'static str) -> TestResult {
    TestResult {
        id: envelope.message.id.to_string(),
        event_name: envelope.message.event_name.clone(),
        outcome,
        reason: None,
        delay_ms: None,
        edits: None,
    }
}

/// Runs `plugins test` and returns the detected kind and one result per envelope.
/// An init failure or a trap is an error that carries the guest's stderr.
pub async fn run_test(args: &TestArgs) -> anyhow::Result<(Kind, Vec<TestResult>)> {
    if args.target.trim().is_empty() {
        bail!("--target must not be empty");
    }
    if args.memory_mb == 0 || args.memory_mb > 4096 {
        bail!("--memory-mb must be between 1 and 4096");
    }
    if args.call_timeout < Duration::from_millis(10) {
        bail!("--call-timeout must be at least 10ms");
    }
    let config_json = config_json(&args.config)?;
    let batch = match &args.envelopes {
        Some(path) => read_envelopes(path)?,
        None => sample_envelopes(),
    };
    let cache_dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("outbox-relay-plugin-cache"));
    let runtime = Arc::new(PluginRuntime::new(&cache_dir)?);
    let kind = match args.kind {
        Some(kind) => kind,
        None => {
            let info = runtime.inspect(&args.file)?;
            if info.kind == crate::plugin::PluginKind::Injector.label() {
                Kind::Injector
            } else {
                Kind::Transport
            }
        }
    };
    let name = args.file.file_stem().map_or_else(
        || "plugin".to_string(),
        |s| s.to_string_lossy().into_owned(),
    );
    let sandbox = SandboxConfig {
        memory_mb: args.memory_mb,
        call_timeout: args.call_timeout,
        dirs: args.dirs.iter().cloned().collect(),
        allow_tcp: args.allow_tcp.clone(),
        ..SandboxConfig::default()
    };
    let results = match kind {
        Kind::Transport => {
            let plugin = runtime.load_transport(&name, &args.file)?;
            let spec = PluginSpec {
                plugin,
                sandbox,
                config_json,
            };
            let mut transport =
                WasmTransport::new(runtime, &args.target, spec, SigningGrant::default());
            let outcomes =
                crate::transport::deliver_checked(&mut transport, &name, &args.target, &batch)
                    .await?;
            batch
                .iter()
                .zip(outcomes)
                .map(|(envelope, outcome)| match outcome {
                    Outcome::Delivered => result_base(envelope, "delivered"),
                    Outcome::Retry { reason, delay_ms } => TestResult {
                        reason: Some(reason),
                        delay_ms,
                        ..result_base(envelope, "retry")
                    },
                    Outcome::Reject(reason) => TestResult {
                        reason: Some(reason),
                        ..result_base(envelope, "reject")
                    },
                })
                .collect()
        }
        Kind::Injector => {
            let plugin = runtime.load_injector(&name, &args.file)?;
            let spec = PluginSpec {
                plugin,
                sandbox,
                config_json,
            };
            let mut injector =
                WasmInjector::new(runtime, &args.target, spec, SigningGrant::default());
            let mut results = Vec::with_capacity(batch.len());
            for envelope in &batch {
                results.push(match injector.inject(envelope).await? {
                    Ok(edits) => TestResult {
                        edits: Some(
                            edits
                                .into_iter()
                                .map(|edit| match edit {
                                    HeaderEdit::Set(name, value) => {
                                        format!("set {}={value}", name.to_ascii_lowercase())
                                    }
                                    HeaderEdit::Remove(name) => format!("remove {name}"),
                                })
                                .collect(),
                        ),
                        ..result_base(envelope, "edits")
                    },
                    Err(reason) => TestResult {
                        reason: Some(reason),
                        ..result_base(envelope, "error")
                    },
                });
            }
            results
        }
    };
    Ok((kind, results))
}

/// `plugins test`, printed.
pub async fn test_command(args: &TestArgs) -> anyhow::Result<()> {
    let (kind, results) = run_test(args).await?;
    if args.json {
        let doc = serde_json::json!({
            "plugin": args.file.display().to_string(),
            "kind": match kind { Kind::Transport => "transport", Kind::Injector => "injector" },
            "target": args.target,
            "results": results,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for result in &results {
            println!("{}", result.line());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for ok in ["hello", "my-webhook", "s3-sink2", "a"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Hello",
            "my_webhook",
            "-x",
            "x-",
            "a--b",
            "1abc",
            "fn",
            "test",
            "héllo",
            "a b",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn camel_case_joins_parts() {
        assert_eq!(camel_case("hello"), "Hello");
        assert_eq!(camel_case("my-web-hook2"), "MyWebHook2");
    }

    #[test]
    fn templates_are_fully_filled() {
        for kind in [Kind::Transport, Kind::Injector] {
            for (file, text) in scaffold_files("my-hook", kind, Path::new("/sdk \"x\"")) {
                assert!(!text.contains("{{"), "{file}: {text}");
            }
        }
        let files = scaffold_files("my-hook", Kind::Injector, Path::new("/sdk"));
        let lib = &files
            .iter()
            .find(|(f, _)| *f == "src/lib.rs")
            .map(|(_, t)| t);
        assert!(lib.is_some_and(|t| t.contains("\"x-my-hook\"")));
        let cargo = &files[0].1;
        assert!(cargo.contains("name = \"my_hook\""), "{cargo}");
        assert!(cargo.contains("path = \"/sdk\""), "{cargo}");
        assert!(cargo.contains("\n[workspace]\n"), "{cargo}");
    }

    #[test]
    fn config_argument_must_be_an_object() {
        assert_eq!(config_json("").ok().as_deref(), Some("{}"));
        assert_eq!(
            config_json(r#"{"a": 1}"#).ok().as_deref(),
            Some(r#"{"a":1}"#)
        );
        assert!(config_json("[1]").is_err());
        assert!(config_json("{nope").is_err());
        assert!(config_json("@/nonexistent/config.json").is_err());
    }

    #[test]
    fn samples_differ_and_carry_keys_headers_and_json() {
        let samples = sample_envelopes();
        assert_eq!(samples.len(), 3);
        let names: std::collections::BTreeSet<_> =
            samples.iter().map(|e| &e.message.event_name).collect();
        assert_eq!(names.len(), 3);
        for e in &samples {
            assert!(e.message.partition_key.is_some());
            assert!(!e.message.headers.is_empty());
            assert!(serde_json::from_slice::<serde_json::Value>(&e.message.payload).is_ok());
        }
    }
}
