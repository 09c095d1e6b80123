//! `outbox-relay dead-letters ...`: list, show, replay and purge dead letters.
//!
//! The selection (`--target`, `--event`, `--since`, `--until`, `--limit`) is the
//! same for every subcommand and maps onto [`DeadLetterFilter`]. Replay and
//! purge take the whole selection, ask for confirmation (or `--yes`), then
//! hand it to [`crate::dead_letters`], which holds the rules.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::bail;
use humantime_serde::re::humantime;
use serde_json::{Value, json};

use super::ConfigArg;
use crate::app;
use crate::config::Config;
use crate::dead_letters::{Action, Selection};
use crate::storage::{DeadLetter, DeadLetterDetail, DeadLetterFilter, Storage, now_ms};

/// How many rows `list` shows without `--limit`.
const DEFAULT_LIST_LIMIT: u32 = 100;

/// How much of the last error `list` shows in its table.
const ERROR_WIDTH: usize = 80;

#[derive(clap::Subcommand)]
pub(crate) enum DeadLettersCommand {
    /// List dead letters, newest first.
    List {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        filter: FilterArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter: its message, and every attempt's error.
    Show {
        #[command(flatten)]
        config: ConfigArg,
        /// The target it failed at.
        target: String,
        /// Its log sequence number (the SEQ column of `list`).
        seq: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters back to their target: each gets one more attempt.
    Replay(ApplyArgs),
    /// Delete dead letters for good.
    Purge(ApplyArgs),
}

/// What `replay` and `purge` take.
#[derive(clap::Args)]
pub(crate) struct ApplyArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    filter: FilterArgs,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(short = 'y', long)]
    yes: bool,
    /// Print the counts as JSON.
    #[arg(long)]
    json: bool,
}

/// Which dead letters a command applies to.
#[derive(clap::Args, Debug, Clone)]
pub struct FilterArgs {
    /// Only this target's.
    #[arg(long)]
    pub target: Option<String>,
    /// Only events whose name matches this glob (`*` any run of characters,
    /// `?` one character; case-sensitive), e.g. `order.*`.
    #[arg(long = "event", value_name = "GLOB")]
    pub event: Option<String>,
    /// Only those dead-lettered at or after this time: a duration ago (`2h`,
    /// `30m`) or an RFC 3339 time (`2025-01-31T12:00:00Z`).
    #[arg(long, value_name = "DURATION|RFC3339", value_parser = parse_time)]
    pub since: Option<i64>,
    /// Only those dead-lettered before this time (same forms as --since).
    #[arg(long, value_name = "DURATION|RFC3339", value_parser = parse_time)]
    pub until: Option<i64>,
    /// Only those whose last error contains this text (ignoring ASCII case).
    #[arg(long, value_name = "TEXT")]
    error: Option<String>,
    /// At most this many, newest first (list: 100 by default; replay and purge: all).
    #[arg(long)]
    pub limit: Option<u32>,
}

impl FilterArgs {
    fn to_filter(&self, default_limit: u32) -> DeadLetterFilter {
        DeadLetterFilter {
            target: self.target.clone(),
            event_pattern: self.event.clone(),
            since_ms: self.since,
            until_ms: self.until,
            error_contains: self.error.clone(),
            older_than: None,
            limit: self.limit.unwrap_or(default_limit),
        }
    }
}

/// `--since`/`--until`: a duration before now, or an RFC 3339 time; in ms since the epoch.
fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(ago) = humantime::parse_duration(s) {
        return Ok(now_ms().saturating_sub(i64::try_from(ago.as_millis()).unwrap_or(i64::MAX)));
    }
    match humantime::parse_rfc3339_weak(s) {
        Ok(at) => Ok(at
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)),
        Err(_) => Err(format!(
            "expected a duration (e.g. 2h, 30m) or an RFC 3339 time (e.g. 2025-01-31T12:00:00Z), got {s:?}"
        )),
    }
}

/// Runs one `dead-letters` subcommand. Every one of them needs a migrated
/// database, and list and show only read it.
pub(crate) async fn run(command: DeadLettersCommand) -> anyhow::Result<()> {
    match command {
        DeadLettersCommand::List {
            config,
            filter,
            json,
        } => {
            let (config, storage) = open(&config).await?;
            list(&config, storage.as_ref(), &filter, json).await
        }
        DeadLettersCommand::Show {
            config,
            target,
            seq,
            json,
        } => {
            let config = Config::load(&config.config)?;
            let storage = match app::open_migrated_storage(&config).await {
                Ok(storage) => storage,
                // A typo in the target should not hide behind the database.
                Err(e) => match note_unknown_target(&config, &target) {
                    Some(unknown) => bail!("{unknown}; and {e}"),
                    None => return Err(e.into()),
                },
            };
            show(&config, storage.as_ref(), &target, seq, json).await
        }
        DeadLettersCommand::Replay(args) => apply(Action::Replay, &args).await,
        DeadLettersCommand::Purge(args) => apply(Action::Purge, &args).await,
    }
}

async fn open(arg: &ConfigArg) -> anyhow::Result<(Config, std::sync::Arc<dyn Storage>)> {
    let config = Config::load(&arg.config)?;
    let storage = app::open_migrated_storage(&config).await?;
    Ok((config, storage))
}

/// Says so on stderr when `target` is not in the config: its dead letters
/// may still be listed, but a typo should not look like "none".
fn note_unknown_target(config: &Config, target: &str) -> Option<String> {
    (!config.targets.contains_key(target)).then(|| {
        format!(
            "unknown target {target:?}: not a target in {} (targets: {})",
            config.source.display(),
            super::target_list(config)
        )
    })
}

async fn list(
    config: &Config,
    storage: &dyn Storage,
    args: &FilterArgs,
    json: bool,
) -> anyhow::Result<()> {
    if let Some(note) = args
        .target
        .as_deref()
        .and_then(|t| note_unknown_target(config, t))
    {
        eprintln!("note: {note}");
    }
    let mut filter = args.to_filter(DEFAULT_LIST_LIMIT);
    let limit = filter.limit;
    // One more than asked tells whether the listing was cut.
    filter.limit = filter.limit.saturating_add(1);
    let mut letters = storage.list_dead_letters(&filter).await?;
    let cut = letters.len() > limit as usize;
    letters.truncate(limit as usize);
    if json {
        println!("{}", serde_json::to_string_pretty(&letters)?);
    } else {
        print_table(&letters);
    }
    if cut {
        eprintln!("(only the newest {limit} are shown; use --limit to see more)");
    }
    Ok(())
}

fn print_table(letters: &[DeadLetter]) {
    println!(
        "{:<20} {:>10}  {:<36}  {:<24} {:>8}  {:<20}  LAST ERROR",
        "TARGET", "SEQ", "MESSAGE ID", "EVENT", "ATTEMPTS", "DEAD SINCE"
    );
    for l in letters {
        println!(
            "{:<20} {:>10}  {:<36}  {:<24} {:>8}  {:<20}  {}",
            l.target,
            l.seq,
            l.message_id,
            l.event_name.as_deref().unwrap_or("-"),
            l.attempts,
            format_ms(l.dead_at_ms),
            truncate(&one_line(&l.last_error), ERROR_WIDTH),
        );
    }
}

async fn show(
    config: &Config,
    storage: &dyn Storage,
    target: &str,
    seq: i64,
    json: bool,
) -> anyhow::Result<()> {
    let Some(detail) = storage.dead_letter(target, seq).await? else {
        if let Some(unknown) = note_unknown_target(config, target) {
            bail!("there is no dead letter of target {target:?} with seq {seq}: {unknown}");
        }
        bail!("there is no dead letter of target {target:?} with seq {seq}");
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&detail_json(&detail))?);
        return Ok(());
    }
    let l = &detail.letter;
    println!("target:      {}", l.target);
    println!("seq:         {}", l.seq);
    println!("message id:  {}", l.message_id);
    println!("event:       {}", l.event_name.as_deref().unwrap_or("-"));
    println!("attempts:    {}", l.attempts);
    println!("dead since:  {}", format_ms(l.dead_at_ms));
    match &detail.message {
        None => println!("message:     (no longer in the log)"),
        Some(Err(bad)) => println!("message:     malformed: {}", bad.reason),
        Some(Ok(m)) => {
            println!("key:         {}", m.partition_key.as_deref().unwrap_or("-"));
            println!("created:     {}", format_ms(m.created_at_ms));
            println!("headers:");
            for (name, value) in &m.headers {
                println!("  {name}: {value}");
            }
            match std::str::from_utf8(&m.payload) {
                Ok(text) => {
                    println!("payload ({} bytes):", m.payload.len());
                    for line in text.lines() {
                        println!("  {line}");
                    }
                }
                Err(_) => println!(
                    "payload ({} bytes, base64):\n  {}",
                    m.payload.len(),
                    base64_of(&m.payload)
                ),
            }
        }
    }
    println!("errors:");
    for a in &detail.history {
        println!("  attempt {} at {}:", a.attempt, format_ms(a.at_ms));
        for line in a.error.lines() {
            println!("    {line}");
        }
    }
    Ok(())
}

/// `show --json`: the dead letter, its message (payload as JSON when it is
/// JSON, as text when it is UTF-8, else base64) and every attempt.
fn detail_json(detail: &DeadLetterDetail) -> Value {
    let l = &detail.letter;
    let (message, malformed) = match &detail.message {
        None => (Value::Null, Value::Null),
        Some(Err(bad)) => (Value::Null, Value::String(bad.reason.clone())),
        Some(Ok(m)) => {
            let mut message = json!({
                "id": m.id.to_string(),
                "event_name": m.event_name,
                "partition_key": m.partition_key,
                "headers": m.headers,
                "created_at_ms": m.created_at_ms,
                "created_at": format_ms(m.created_at_ms),
            });
            let (key, payload) = match serde_json::from_slice::<Value>(&m.payload) {
                Ok(v) => ("payload", v),
                Err(_) => match std::str::from_utf8(&m.payload) {
                    Ok(text) => ("payload_text", Value::String(text.to_string())),
                    Err(_) => ("payload_base64", Value::String(base64_of(&m.payload))),
                },
            };
            message[key] = payload;
            (message, Value::Null)
        }
    };
    json!({
        "target": l.target,
        "seq": l.seq,
        "message_id": l.message_id,
        "event_name": l.event_name,
        "attempts": l.attempts,
        "last_error": l.last_error,
        "dead_at_ms": l.dead_at_ms,
        "dead_at": format_ms(l.dead_at_ms),
        "message": message,
        "malformed": malformed,
        "history": detail.history,
    })
}

async fn apply(action: Action, args: &ApplyArgs) -> anyhow::Result<()> {
    let (config, storage) = open(&args.config).await?;
    let filter = args.filter.to_filter(u32::MAX);
    let selection = Selection::take(&config, storage.as_ref(), action, &filter).await?;
    let matched = selection.len();
    let json = args.json;
    if matched == 0 {
        return report(action, 0, 0, json);
    }
    if !confirmed(&selection, args.yes)? {
        eprintln!("nothing was {}", action.done());
        return Ok(());
    }
    let progress = indicatif::ProgressBar::new(matched as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    progress.set_message(action.done());
    let changed = selection
        .apply(storage.as_ref(), |n| progress.inc(n as u64))
        .await?;
    progress.finish_and_clear();
    report(action, matched, changed, json)
}

/// `--yes`, or an interactive "y"; without a terminal, `--yes` is required.
fn confirmed(selection: &Selection, yes: bool) -> anyhow::Result<bool> {
    if yes {
        return Ok(true);
    }
    let action = selection.action();
    let total = selection.len();
    if !std::io::stdin().is_terminal() {
        bail!(
            "refusing to {} {total} dead letters without --yes (standard input is not a terminal)",
            action.verb()
        );
    }
    let summary = selection
        .counts()
        .map(|(t, n)| format!("{t}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    eprint!(
        "{} {total} dead letters ({summary})? [y/N] ",
        capitalised(action.verb())
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

fn report(action: Action, matched: usize, changed: u64, json: bool) -> anyhow::Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "matched": matched, action.done(): changed }))?
        );
        return Ok(());
    }
    if matched == 0 {
        println!("no dead letters match; nothing was {}", action.done());
        return Ok(());
    }
    let gone = (matched as u64).saturating_sub(changed);
    if gone > 0 {
        println!(
            "{} {changed} dead letters ({gone} had stopped being dead letters meanwhile)",
            action.done()
        );
    } else {
        println!("{} {changed} dead letters", action.done());
    }
    Ok(())
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// A stored timestamp (ms since the epoch) as RFC 3339, UTC, to the second.
fn format_ms(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_durations_ago_or_rfc3339() {
        let before = now_ms();
        let t = parse_time("1h").expect("a duration");
        assert!((before - 3_600_000 - 1000..=now_ms() - 3_600_000).contains(&t));
        assert_eq!(
            parse_time("2025-01-31T12:00:00Z").expect("a time"),
            1_738_324_800_000
        );
        assert!(parse_time("yesterday-ish").is_err());
    }

    #[test]
    fn long_errors_are_cut_to_the_width() {
        let long = "x".repeat(200);
        assert_eq!(truncate(&long, 80).chars().count(), 80);
        assert_eq!(truncate("short", 80), "short");
        assert_eq!(one_line("a\n  b\tc"), "a b c");
    }
}
