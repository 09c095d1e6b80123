//! What the console's pages show, shaped for their templates: figures as
//! text, payloads previewed, secrets redacted. Templates escape every value.

use std::collections::{BTreeMap, HashMap};

use askama::Template;

use super::session::{Access, Caller};
use crate::config::{Config, TargetConfig};
use crate::relay::health::TargetHealth;
use crate::storage::{DeadLetter, DeadLetterDetail, TargetStatus};

/// How much of a payload a dead letter's page shows.
pub const PREVIEW_BYTES: usize = 64 * 1024;

/// The bar at the top of every page.
pub struct Nav {
    pub page: &'static str,
    /// The CSRF token for forms (`None` for a bearer caller or no one).
    pub csrf: String,
    pub read_only: bool,
    pub logged_in: bool,
}

impl Nav {
    pub fn of(caller: &Caller, access: &Access, page: &'static str) -> Self {
        Self {
            page,
            csrf: caller.csrf.clone().unwrap_or_default(),
            read_only: access.read_only,
            logged_in: caller.csrf.is_some(),
        }
    }

    pub fn none() -> Self {
        Self {
            page: "",
            csrf: String::new(),
            read_only: true,
            logged_in: false,
        }
    }
}

#[derive(Template)]
#[template(path = "console/login.html")]
pub struct Login {
    pub failed: bool,
}

#[derive(Template)]
#[template(path = "console/problem.html")]
pub struct Problem {
    pub nav: Nav,
    pub message: String,
}

/// One target's line of the overview.
pub struct TargetRow {
    pub name: String,
    pub lag: i64,
    pub oldest: String,
    pub retries: i64,
    pub dead: i64,
    /// `running`, `cannot start`, `held` or `not served`.
    pub state: String,
    /// Why, for a target that cannot start; the held partitions.
    pub detail: String,
    pub leases: Vec<String>,
    pub served_by: Vec<String>,
    pub waiting_on: String,
    /// This relay's last minutes at the target, for the chart: JSON
    /// `[[unix seconds], [delivered/s], [failed/s]]`.
    pub series: String,
}

impl TargetRow {
    /// The state as a CSS class.
    pub fn state_class(&self) -> String {
        self.state.replace(' ', "-")
    }

    pub fn of(s: TargetStatus, here: Option<TargetHealth>) -> Self {
        // This relay's own view first; else what the serving relays report.
        let reported = here.or_else(|| {
            s.served_by
                .iter()
                .find_map(|b| serde_json::from_value::<TargetHealth>(b.state.clone()).ok())
        });
        let (state, detail) = match reported {
            Some(TargetHealth::Running) => ("running".to_string(), String::new()),
            Some(TargetHealth::CannotStart { reason, .. }) => ("cannot start".into(), reason),
            Some(TargetHealth::Held { partitions, .. }) => (
                "held".into(),
                format!("by a failing ordered message on partitions {partitions:?}"),
            ),
            None => ("not served".into(), String::new()),
        };
        Self {
            series: serde_json::to_string(&crate::activity::recent(&s.target)).unwrap_or_default(),
            lag: s.lag,
            oldest: s.oldest_pending_age_ms.map(age).unwrap_or_default(),
            retries: s.retries_pending,
            dead: s.dead_letters,
            state,
            detail,
            leases: s.lease_owners,
            served_by: s.served_by.into_iter().map(|b| b.owner).collect(),
            waiting_on: s
                .waiting_on
                .map(|t| {
                    format!(
                        "waits on an open transaction{} for {}",
                        t.pid
                            .map(|p| format!(" (backend pid {p})"))
                            .unwrap_or_default(),
                        age(t.age_ms)
                    )
                })
                .unwrap_or_default(),
            name: s.target,
        }
    }
}

#[derive(Template)]
#[template(path = "console/overview.html")]
pub struct Overview {
    pub nav: Nav,
    pub targets: Vec<TargetRow>,
}

#[derive(Template)]
#[template(path = "console/target.html")]
pub struct TargetPage {
    pub nav: Nav,
    pub name: String,
    pub row: Option<TargetRow>,
    pub plugin: String,
    pub ordered: bool,
    pub batch_size: u32,
    pub settings: Vec<(String, String)>,
    pub sandbox: Vec<(String, String)>,
    pub recent: Vec<DeadLetterRow>,
}

impl TargetPage {
    pub fn of(
        nav: Nav,
        name: &str,
        target: &TargetConfig,
        config: &Config,
        row: Option<TargetRow>,
        recent: Vec<DeadLetter>,
    ) -> Self {
        let settings = target
            .config
            .iter()
            .map(|(k, v)| (k.clone(), redacted(k, v)))
            .collect();
        let list = |items: Vec<String>| {
            if items.is_empty() {
                "none".to_string()
            } else {
                items.join(", ")
            }
        };
        let sandbox = vec![
            (
                "allow_tcp".into(),
                list(
                    target
                        .sandbox
                        .allow_tcp
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                ),
            ),
            (
                "allow_http".into(),
                list(
                    target
                        .sandbox
                        .allow_http
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                ),
            ),
            ("memory_mb".into(), target.sandbox.memory_mb.to_string()),
            ("max_sockets".into(), target.sandbox.max_sockets.to_string()),
            (
                "dirs".into(),
                target
                    .sandbox
                    .dirs
                    .iter()
                    .map(|(guest, host)| format!("{guest} → {}", host.display()))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            (
                "tls".into(),
                if target.sandbox.tls.is_some() {
                    "configured (files not shown)".into()
                } else {
                    "none".into()
                },
            ),
        ];
        Self {
            nav,
            name: name.to_string(),
            row,
            plugin: config.plugin_path(target).display().to_string(),
            ordered: target.ordered,
            batch_size: config.batch_size(target),
            settings,
            sandbox,
            recent: recent.into_iter().map(DeadLetterRow::of).collect(),
        }
    }
}

/// A plugin config value as the console shows it: `{ env }`, `{ file }` and
/// anything whose name or text looks secret is redacted.
fn redacted(key: &str, value: &toml::Value) -> String {
    const SECRET_NAMES: [&str; 6] = ["password", "secret", "token", "key", "credential", "auth"];
    if crate::plugin_config::secret_ref(value).is_some() {
        return "•••• (a secret the host reads)".into();
    }
    let lower = key.to_ascii_lowercase();
    let text = match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if SECRET_NAMES.iter().any(|n| lower.contains(n))
        || crate::secret_source::looks_secret(&text)
        || text.contains('@') && text.contains("://")
    {
        return "•••• (redacted)".into();
    }
    text
}

/// One dead letter's line in a list.
pub struct DeadLetterRow {
    pub target: String,
    pub seq: i64,
    pub message_id: String,
    pub event: String,
    pub attempts: u32,
    pub error: String,
    pub when: String,
}

impl DeadLetterRow {
    pub fn of(l: DeadLetter) -> Self {
        Self {
            error: cut(&l.last_error, 200),
            when: rfc3339(l.dead_at_ms),
            event: l
                .event_name
                .unwrap_or_else(|| "(no longer in the log)".into()),
            target: l.target,
            seq: l.seq,
            message_id: l.message_id,
            attempts: l.attempts,
        }
    }

    /// The link to its page (path segments percent-encoded).
    pub fn href(&self) -> String {
        format!("/dead-letters/{}/{}", segment(&self.target), self.seq)
    }
}

#[derive(Template)]
#[template(path = "console/dead_letters.html")]
pub struct DeadLetters {
    pub nav: Nav,
    pub targets: Vec<String>,
    pub target: String,
    pub event: String,
    pub error: String,
    pub since: String,
    pub until: String,
    pub total: u64,
    pub paged: bool,
    pub letters: Vec<DeadLetterRow>,
    pub older: Option<String>,
    pub done: String,
}

#[derive(Template)]
#[template(path = "console/dead_letter.html")]
pub struct DeadLetterPage {
    pub nav: Nav,
    pub row: DeadLetterRow,
    pub error: String,
    /// `json`, `text` or `hex`, and the preview.
    pub kind: &'static str,
    pub preview: String,
    pub truncated: Option<String>,
    pub headers: Vec<(String, String)>,
    pub partition_key: String,
    pub problem: String,
    pub history: Vec<(u32, String, String)>,
}

impl DeadLetterPage {
    pub fn of(nav: Nav, d: DeadLetterDetail) -> Self {
        let (mut kind, mut preview, mut truncated) = ("", String::new(), None);
        let (mut headers, mut partition_key, mut problem) =
            (Vec::new(), String::new(), String::new());
        match &d.message {
            None => problem = "the message is no longer in the log".into(),
            Some(Err(bad)) => problem = format!("the row cannot be decoded: {}", bad.reason),
            Some(Ok(m)) => {
                (kind, preview, truncated) = preview_of(&m.payload);
                headers = m
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                partition_key = m.partition_key.clone().unwrap_or_default();
            }
        }
        Self {
            nav,
            error: d.letter.last_error.clone(),
            history: d
                .history
                .iter()
                .map(|a| (a.attempt, rfc3339(a.at_ms), a.error.clone()))
                .collect(),
            row: DeadLetterRow::of(d.letter),
            kind,
            preview,
            truncated,
            headers,
            partition_key,
            problem,
        }
    }
}

/// A payload as JSON (pretty), text or hex, cut at [`PREVIEW_BYTES`].
pub fn preview_of(payload: &[u8]) -> (&'static str, String, Option<String>) {
    let cut_note = (payload.len() > PREVIEW_BYTES).then(|| {
        format!(
            "the payload is {} bytes; the first {} are shown",
            payload.len(),
            PREVIEW_BYTES
        )
    });
    if cut_note.is_none()
        && let Ok(value) = serde_json::from_slice::<serde_json::Value>(payload)
    {
        return (
            "json",
            serde_json::to_string_pretty(&value).unwrap_or_default(),
            None,
        );
    }
    let head = &payload[..payload.len().min(PREVIEW_BYTES)];
    match std::str::from_utf8(head) {
        Ok(text) => ("text", text.to_string(), cut_note),
        // A cut may split a character: what decodes up to it is text.
        Err(e) if cut_note.is_some() && e.valid_up_to() + 4 > head.len() => (
            "text",
            String::from_utf8_lossy(&head[..e.valid_up_to()]).into_owned(),
            cut_note,
        ),
        Err(_) => {
            let hex = head
                .chunks(16)
                .map(|line| {
                    line.iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect::<Vec<_>>()
                .join("\n");
            ("hex", hex, cut_note)
        }
    }
}

#[derive(Template)]
#[template(path = "console/confirm.html")]
pub struct Confirm {
    pub nav: Nav,
    pub verb: String,
    pub total: usize,
    pub counts: Vec<(String, usize)>,
    /// The request's fields, sent again with `confirm = yes`.
    pub fields: Vec<(String, String)>,
}

/// One live relay as the relays page shows it.
pub struct RelayRow {
    pub owner: String,
    pub serves: Vec<String>,
    pub holds: Vec<String>,
}

#[derive(Template)]
#[template(path = "console/relays.html")]
pub struct Relays {
    pub nav: Nav,
    pub relays: Vec<RelayRow>,
}

impl Relays {
    pub fn of(nav: Nav, status: &[TargetStatus]) -> Self {
        let mut relays: BTreeMap<String, RelayRow> = BTreeMap::new();
        let row = |owner: &str| RelayRow {
            owner: owner.to_string(),
            serves: Vec::new(),
            holds: Vec::new(),
        };
        for s in status {
            for b in &s.served_by {
                relays
                    .entry(b.owner.clone())
                    .or_insert_with(|| row(&b.owner))
                    .serves
                    .push(s.target.clone());
            }
            for lease in &s.lease_owners {
                // "owner (pN)"
                let (owner, partition) = lease.rsplit_once(" (").unwrap_or((lease, ""));
                relays
                    .entry(owner.to_string())
                    .or_insert_with(|| row(owner))
                    .holds
                    .push(format!("{} {}", s.target, partition.trim_end_matches(')')));
            }
        }
        Self {
            nav,
            relays: relays.into_values().collect(),
        }
    }
}

/// An age in ms, as "1.5 s", "3 min", "2 h".
pub fn age(ms: i64) -> String {
    match ms {
        ..=999 => format!("{ms} ms"),
        1000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{} min", ms / 60_000),
        _ => format!("{:.1} h", ms as f64 / 3_600_000.0),
    }
}

/// A stored time (ms since the epoch) as RFC 3339, UTC, to the second.
pub fn rfc3339(ms: i64) -> String {
    let at =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime_serde::re::humantime::format_rfc3339_seconds(at).to_string()
}

/// `text` cut to `max` characters.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        text.chars().take(max).chain(['…']).collect()
    }
}

/// A path segment, percent-encoded.
fn segment(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// `since` / `until` of the filter form: a duration ago (`2h`) or an RFC
/// 3339 time; empty is none.
pub fn time_bound(field: &str, text: &str) -> Result<Option<i64>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(ago) = humantime_serde::re::humantime::parse_duration(text) {
        let ago = i64::try_from(ago.as_millis()).unwrap_or(i64::MAX);
        return Ok(Some(crate::storage::now_ms().saturating_sub(ago)));
    }
    match humantime_serde::re::humantime::parse_rfc3339_weak(text) {
        Ok(at) => Ok(Some(
            at.duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0),
        )),
        Err(_) => Err(format!(
            "{field}: {text:?} is neither a duration ago (2h, 30m) nor an RFC 3339 time"
        )),
    }
}

/// A urlencoded form body's fields, in order (repeated names kept).
pub fn pairs(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// A urlencoded form body's fields by name (the last of a repeated one).
pub fn form(body: &[u8]) -> HashMap<String, String> {
    pairs(body).into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_preview_as_json_text_or_hex_and_big_ones_are_cut() {
        let (kind, text, cut) = preview_of(br#"{"a":[1,2]}"#);
        assert_eq!(kind, "json");
        assert!(text.contains("\n") && cut.is_none());
        assert_eq!(preview_of(b"plain words").0, "text");
        let (kind, text, _) = preview_of(&[0xff, 0x00, 0x10]);
        assert_eq!((kind, text.as_str()), ("hex", "ff 00 10"));
        let big = "é".repeat(PREVIEW_BYTES);
        let (kind, text, cut) = preview_of(big.as_bytes());
        assert_eq!(kind, "text");
        assert!(text.len() <= PREVIEW_BYTES && cut.unwrap().contains("bytes"));
    }

    #[test]
    fn secrets_in_plugin_config_are_redacted() {
        let env: toml::Value = toml::from_str("v = { env = \"X\" }").unwrap();
        assert!(redacted("url", &env["v"]).starts_with("••••"));
        assert!(redacted("password", &toml::Value::String("hunter2".into())).starts_with("••••"));
        assert!(redacted("url", &toml::Value::String("amqp://u:p@h".into())).starts_with("••••"));
        assert_eq!(
            redacted("subject", &toml::Value::String("orders.x".into())),
            "orders.x"
        );
    }

    #[test]
    fn time_bounds_take_durations_and_rfc3339_and_name_the_field() {
        assert_eq!(time_bound("since", " ").unwrap(), None);
        assert!(time_bound("since", "2h").unwrap().is_some());
        assert_eq!(
            time_bound("until", "2026-01-01T00:00:00Z").unwrap(),
            Some(1_767_225_600_000)
        );
        assert!(
            time_bound("until", "soon")
                .unwrap_err()
                .starts_with("until:")
        );
    }
}
