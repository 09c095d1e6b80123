//! The storage port: what the relay needs from a database, in batch form.
//!
//! The outbox is an append-only log. Each target keeps a cursor per partition,
//! and a side table holds the messages that failed at a target (waiting for a
//! retry, or dead). The seed's four operations map onto it like this:
//!
//! | seed | here |
//! |---|---|
//! | `save` | [`Storage::save`] (and [`crate::producer`] inside a caller's transaction) |
//! | `fetch_pending` | [`Storage::fetch_pending`] after a [`Lease`], plus [`Storage::claim_retries`] |
//! | `mark_published` | [`Storage::mark_published`]: one cursor write per batch |
//! | `increment_retry` | the failures carried by [`Ack`], and [`Storage::settle_retries`] |
//!
//! Every backend (SQLite, Postgres, MySQL/MariaDB) runs the same conformance
//! tests (`tests/it/conformance.rs`). Each adapter keeps its SQL and its
//! column types; what is the same for all of them lives here (row decoding
//! in [`crate::message::decode_row`], dead-letter rows, the forget and
//! lease rules). How each keeps late commits from being skipped is in its
//! own docs: Postgres reads below a transaction horizon, MySQL writes the
//! commit order itself, SQLite's writes are serialised.
//!
//! # Time
//!
//! Every time a backend compares (lease and claim expiry, retry due times,
//! heartbeats and liveness, retention) comes from the database's clock, in
//! SQL: a relay whose own clock is off can neither take a live lease nor
//! count a live relay as dead. The relay passes durations ([`Disposition::RetryAfter`],
//! a lease's TTL), never instants.
//!
//! # Targets
//!
//! Each relay records the targets it serves ([`Storage::heartbeat`]): they
//! join the registry (`outbox_targets`), and retention ([`Storage::prune`])
//! keeps a message until every registered target has passed it. A target
//! leaves the registry only through [`Storage::forget_target`].

#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "sqlite")]
mod observed;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::message::{LogEntry, NewMessage, Position};

/// Errors from a storage backend, mapped from the driver's before they reach a caller.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot open the database at {url}: {cause}")]
    Connect { url: String, cause: sqlx::Error },
    #[error("migrating the database failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the lease on target {target:?} partition {partition} is no longer held by {owner}")]
    LeaseLost {
        target: String,
        partition: u32,
        owner: String,
    },
    #[error(
        "the database was set up with {stored} partitions but the config asks for {configured}; \
         changing the partition count of an existing outbox is not supported"
    )]
    PartitionMismatch { stored: u32, configured: u32 },
    #[error(
        "the cursors point past this database's transaction ids (was it restored from a dump or moved \
         by logical replication?); reset them with `UPDATE outbox_cursors SET position_xid = 0` after \
         checking what was delivered"
    )]
    CursorsAhead,
    #[error(
        "target {target:?} is still served by the live relay(s) {owners:?}; remove it from their \
         config (and reload) before forgetting it"
    )]
    TargetServed { target: String, owners: Vec<String> },
    #[error("target {0:?} is not registered and has no cursors: nothing to forget")]
    UnknownTarget(String),
    #[error("the database's user lacks {grant} (grant it to the relay's user): {cause}")]
    Privilege { grant: String, cause: sqlx::Error },
    #[error("{0}")]
    Unsupported(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl StorageError {
    /// True when retrying the same call later may succeed: a lost or refused
    /// connection, a busy or locked database, a serialization failure or a
    /// deadlock. Decided by error kind and code, never by message text.
    pub fn is_transient(&self) -> bool {
        match self {
            StorageError::Connect { .. } => true,
            StorageError::Database(e) => sqlx_is_transient(e),
            _ => false,
        }
    }
}

/// SQLite result codes (primary: the low byte of an extended code).
#[cfg(feature = "sqlite")]
const SQLITE_BUSY: i64 = 5;
#[cfg(feature = "sqlite")]
const SQLITE_LOCKED: i64 = 6;

/// See [`StorageError::is_transient`].
fn sqlx_is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => {
            #[cfg(feature = "sqlite")]
            if d.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                return d.code().is_some_and(|code| sqlite_transient(&code));
            }
            #[cfg(feature = "postgres")]
            if let Some(pg) = d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                return sqlstate_transient(pg.code());
            }
            #[cfg(feature = "mysql")]
            if let Some(my) = d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                return mysql_transient(my.number());
            }
            false
        }
        _ => false,
    }
}

/// A SQLite result code (extended codes keep the primary one in their low
/// byte) that is worth retrying: BUSY or LOCKED.
#[cfg(feature = "sqlite")]
fn sqlite_transient(code: &str) -> bool {
    code.parse::<i64>()
        .is_ok_and(|n| matches!(n & 0xff, SQLITE_BUSY | SQLITE_LOCKED))
}

/// A Postgres SQLSTATE worth retrying: 40001 serialization_failure, 40P01
/// deadlock_detected, class 08 connection exceptions, 57P01..57P03 the
/// server shutting down or starting.
#[cfg(feature = "postgres")]
fn sqlstate_transient(code: &str) -> bool {
    matches!(code, "40001" | "40P01" | "57P01" | "57P02" | "57P03") || code.starts_with("08")
}

/// A MySQL / MariaDB error number worth retrying: 1205 lock wait timeout,
/// 1213 deadlock, 1040 too many connections, 1053 server shutdown, 1317
/// query interrupted, 1927 connection killed (MariaDB), 2006 / 2013 server
/// gone or lost, 4031 disconnected by the server for inactivity (MySQL).
#[cfg(feature = "mysql")]
fn mysql_transient(number: u16) -> bool {
    matches!(
        number,
        1205 | 1213 | 1040 | 1053 | 1317 | 1927 | 2006 | 2013 | 4031
    )
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A relay's exclusive right to read one partition of one target, until its
/// TTL runs out by the database's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub target: String,
    pub partition: u32,
    pub owner: String,
    /// The last log position this target has passed in this partition.
    pub position: Position,
}

/// What happens to a message that did not get delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Try again no sooner than this long from now, by the database's clock.
    RetryAfter(Duration),
    /// Give up: the message becomes a dead letter.
    Dead,
}

/// A message that failed at a target, with how many attempts it has had so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub seq: i64,
    pub message_id: String,
    pub attempts: u32,
    pub error: String,
    pub disposition: Disposition,
}

/// The result of one or more batches read under a lease: move the cursor to
/// `position`, and record the failures, in one transaction. It names no lease:
/// [`Storage::mark_published`] is given the lease it is written under, so acks
/// can be merged and written later by the holder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ack {
    pub position: Position,
    pub failures: Vec<Failure>,
    /// Messages whose earlier failure record is settled by this batch
    /// (an ordered target's held message, delivered at last).
    pub resolved: Vec<i64>,
}

/// A retry that is due, claimed by one relay until its claim expires.
#[derive(Debug, Clone)]
pub struct DueRetry {
    pub entry: LogEntry,
    /// Attempts already made.
    pub attempts: u32,
}

/// What became of a claimed retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    Delivered { seq: i64 },
    Failed(Failure),
}

/// One dead letter, as operators list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    pub target: String,
    pub seq: i64,
    pub message_id: String,
    pub event_name: Option<String>,
    pub attempts: u32,
    pub last_error: String,
    pub dead_at_ms: i64,
}

/// Which dead letters an operator means (`outbox-relay dead-letters ...`).
///
/// `event_pattern` is a glob on the event name, matched by the database,
/// case-sensitively: `*` matches any run of characters (dots included) and
/// `?` one character; every other character, `[`, `]`, `{`, `}`, `%`, `_` and
/// `\` included, stands for itself. A dead letter whose message is no longer
/// in the log has no event name and matches no pattern.
///
/// `since_ms` (inclusive) and `until_ms` (exclusive) bound the time the
/// message was dead-lettered ([`DeadLetter::dead_at_ms`]).
///
/// `error_contains` keeps the dead letters whose last error contains the
/// text, without regard to case (ASCII letters).
///
/// `older_than` pages: only the dead letters after this one in the listing's
/// order (newest first, then by target, then newest seq first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterFilter {
    pub target: Option<String>,
    pub event_pattern: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub error_contains: Option<String>,
    pub older_than: Option<DeadLetterKey>,
    /// At most this many, newest first.
    pub limit: u32,
}

/// Where a dead letter stands in a listing: the key of keyset paging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterKey {
    pub dead_at_ms: i64,
    pub target: String,
    pub seq: i64,
}

impl DeadLetter {
    /// This dead letter's place in a listing (for [`DeadLetterFilter::older_than`]).
    pub fn key(&self) -> DeadLetterKey {
        DeadLetterKey {
            dead_at_ms: self.dead_at_ms,
            target: self.target.clone(),
            seq: self.seq,
        }
    }
}

impl Default for DeadLetterFilter {
    /// Every dead letter.
    fn default() -> Self {
        Self {
            target: None,
            event_pattern: None,
            since_ms: None,
            until_ms: None,
            error_contains: None,
            older_than: None,
            limit: u32::MAX,
        }
    }
}

/// One failed attempt of a dead letter, from its history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub at_ms: i64,
    /// The error as recorded, including what the plugin wrote to stderr.
    pub error: String,
}

/// One dead letter with its message and every attempt's error (`dead-letters show`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterDetail {
    pub letter: DeadLetter,
    /// The message as it is in the log: `None` when it is no longer there;
    /// `Some(Err(..))` when the row cannot be decoded (it was dead-lettered
    /// for that).
    pub message: Option<crate::message::LogEntry>,
    /// Every failed attempt, oldest first.
    pub history: Vec<AttemptRecord>,
}

/// Per-target figures for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetStatus {
    pub target: String,
    /// Messages in the log beyond this target's cursors.
    pub lag: i64,
    /// Age of the oldest message beyond the cursors, in ms.
    pub oldest_pending_age_ms: Option<i64>,
    pub retries_pending: i64,
    pub dead_letters: i64,
    /// Current lease holders, one entry per held partition.
    pub lease_owners: Vec<String>,
    /// Whether the target is in the registry (`outbox_targets`): retention
    /// waits for every registered target.
    pub registered: bool,
    /// The live relays that serve it, each with the state it reports.
    pub served_by: Vec<ServedBy>,
    /// The open transaction that delivery waits on, if any (Postgres).
    pub waiting_on: Option<OpenTransaction>,
}

impl TargetStatus {
    /// Registered, but no live relay serves it: its cursors stand still and
    /// retention keeps every message it has not passed.
    pub fn holds_back_retention(&self) -> bool {
        self.registered && self.served_by.is_empty()
    }
}

/// One live relay serving a target, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServedBy {
    pub owner: String,
    /// What the relay reported in its last heartbeat (opaque JSON, e.g.
    /// `{"state":"running"}`).
    pub state: serde_json::Value,
}

/// A target a relay serves, with its state as the relay reports it: opaque
/// JSON that storage keeps and shows (`status --json`) without reading it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ServedTarget {
    pub name: String,
    pub state: serde_json::Value,
}

impl ServedTarget {
    /// A target being served normally.
    pub fn running(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            state: serde_json::json!({ "state": "running" }),
        }
    }
}

/// A live relay (heartbeat not expired by the database's clock) and what it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveRelay {
    pub owner: String,
    pub targets: Vec<ServedTarget>,
}

impl LiveRelay {
    pub fn serves(&self, target: &str) -> bool {
        self.targets.iter().any(|t| t.name == target)
    }
}

/// The sorted owners of the live relays in `live` that serve `target`: the
/// relays among which its partitions are dealt ([`crate::relay::assigned_owner`]).
pub fn serving(live: &[LiveRelay], target: &str) -> Vec<String> {
    let mut owners: Vec<String> = live
        .iter()
        .filter(|r| r.serves(target))
        .map(|r| r.owner.clone())
        .collect();
    owners.sort();
    owners
}

/// A transaction that the log's horizon waits for: rows committed after it
/// began are not delivered until it ends (Postgres).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenTransaction {
    /// The backend's process id (`None` for a prepared transaction).
    pub pid: Option<i32>,
    /// Its database (`None` when the server does not say).
    pub database: Option<String>,
    /// How long it has been open, in ms.
    pub age_ms: i64,
    /// The prepared transaction's gid, if it is one.
    pub prepared: Option<String>,
}

#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Applies the schema migrations (idempotent).
    async fn migrate(&self) -> Result<()>;

    /// The partition count this outbox was set up with; the first call fixes it.
    async fn ensure_partitions(&self, configured: u32) -> Result<u32>;

    /// Enqueues messages in one transaction of the storage's own (for operators
    /// and demos; applications use [`crate::producer`] in their own transaction).
    async fn save(&self, messages: &[NewMessage]) -> Result<()>;

    /// Takes or renews the lease on (`target`, `partition`) for `owner`, if it is
    /// free, expired or already `owner`'s. Returns the lease with the cursor position.
    async fn acquire_lease(
        &self,
        target: &str,
        partition: u32,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>>;

    /// Gives a lease up so another relay can take it at once.
    async fn release_lease(&self, lease: &Lease) -> Result<()>;

    /// Up to `limit` log entries of `partition` after `after`, in log order.
    /// A row whose payload is over `max_payload_bytes` comes back malformed,
    /// with its size, without its payload being read. Partition 0 also
    /// returns the rows whose `partition` is outside the partition count
    /// (malformed, with the reason), so they are dead-lettered, not stuck.
    async fn fetch_pending(
        &self,
        partition: u32,
        after: Position,
        limit: u32,
        max_payload_bytes: usize,
    ) -> Result<Vec<LogEntry>>;

    /// True if `partition` has rows after `after` that are not readable yet
    /// because an older transaction is still open (Postgres); the relay then
    /// looks again shortly instead of waiting for the poll interval.
    async fn has_unsettled(&self, partition: u32, after: Position) -> Result<bool> {
        let _ = (partition, after);
        Ok(false)
    }

    /// Advances the cursor of `lease`'s (target, partition) and records the
    /// failures atomically. Fails with [`StorageError::LeaseLost`] if the
    /// lease has passed to another owner.
    async fn mark_published(&self, lease: &Lease, ack: &Ack) -> Result<()>;

    /// Claims up to `limit` due retries of `target` for `owner`, for `claim_ttl`.
    async fn claim_retries(
        &self,
        target: &str,
        owner: &str,
        limit: u32,
        claim_ttl: Duration,
    ) -> Result<Vec<DueRetry>>;

    /// Settles claimed retries: delivered ones are removed, failed ones rescheduled or dead.
    async fn settle_retries(&self, target: &str, settlements: &[Settlement]) -> Result<()>;

    /// Status figures for each named target.
    async fn status(&self, targets: &[String]) -> Result<Vec<TargetStatus>>;

    /// Dead letters matching `filter`, newest first (by the time they were
    /// dead-lettered), at most `filter.limit`.
    async fn list_dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>>;

    /// How many dead letters match `filter` (its `limit` and `older_than`
    /// left aside).
    async fn count_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64>;

    /// One dead letter of `target` with its message and attempt history;
    /// `None` if (`target`, `seq`) is not a dead letter.
    async fn dead_letter(&self, target: &str, seq: i64) -> Result<Option<DeadLetterDetail>>;

    /// Moves the dead letters `seqs` of `target` back to the retry state, due
    /// now, with no claim, in one statement. Their attempt count and history
    /// are kept: the relay makes one more attempt, and a failure
    /// dead-letters them again. Rows that are not dead (already replayed,
    /// delivered, purged, or never failed) are left alone, so replaying twice
    /// changes nothing more. Returns how many were moved.
    async fn replay_dead_letters(&self, target: &str, seqs: &[i64]) -> Result<u64>;

    /// Deletes the dead letters `seqs` of `target` (only rows still dead), in
    /// one statement; their messages become eligible for retention. Returns
    /// how many were deleted.
    async fn purge_dead_letters(&self, target: &str, seqs: &[i64]) -> Result<u64>;

    /// Deletes up to `limit` messages older than `retention` (by the
    /// database's clock) that every registered target, and every one of
    /// `targets`, has passed, and that no failure record refers to. Returns
    /// how many it deleted.
    async fn prune(&self, targets: &[String], retention: Duration, limit: u32) -> Result<u64>;

    /// Records that relay `owner` is alive for `ttl` and serves `serving`
    /// (each with its state), registers those targets, and returns the live
    /// relays with what they serve, sorted by owner.
    async fn heartbeat(
        &self,
        owner: &str,
        serving: &[ServedTarget],
        ttl: Duration,
    ) -> Result<Vec<LiveRelay>>;

    /// The registered targets, sorted.
    async fn registered_targets(&self) -> Result<Vec<String>>;

    /// Removes `target` from the registry with its cursors and failure
    /// records (retries and dead letters), so retention no longer waits for
    /// it. Refused with [`StorageError::TargetServed`] while a live relay
    /// serves it. Returns how many cursor rows went.
    async fn forget_target(&self, target: &str) -> Result<u64>;

    /// Removes `owner` from the live relays (on a clean shutdown).
    async fn leave(&self, owner: &str) -> Result<()>;

    /// The failure record of one message at a target, if any: attempts so
    /// far and when the next attempt is due. Ordered targets use it for the
    /// message they hold at.
    async fn failure_state(&self, target: &str, seq: i64) -> Result<Option<FailureState>>;

    /// Runs until the task is dropped, bumping `on_commit` whenever the
    /// database announces new messages. Backends without notifications return
    /// at once and the relay polls.
    async fn watch_commits(&self, on_commit: &tokio::sync::watch::Sender<u64>) {
        let _ = on_commit;
    }
}

/// Attempts so far, and how long until the next one is due (by the
/// database's clock; zero when it is due).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureState {
    pub attempts: u32,
    pub due_in: Duration,
    pub dead: bool,
}

/// A URL with any password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let url = match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    };
    redact_password_params(&url)
}

/// `password=...` (and `sslpassword=...`) masked, in a URL's query
/// (`?password=x&...`) or a `key=value` connection string
/// (`host=db password=x`).
fn redact_password_params(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.to_ascii_lowercase().find("password=") {
        let value = i + "password=".len();
        out.push_str(&rest[..value]);
        out.push_str("***");
        let end = rest[value..]
            .find(['&', ' ', ';', '#'])
            .map_or(rest.len(), |e| value + e);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Milliseconds since the Unix epoch by this process's clock. Storage never
/// compares stored times with it (see "Time" above); it is for operators'
/// input such as `--since 1h`.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The `state` column of a failure record, and how long from now (ms) its
/// `next_attempt_ms` is, which the adapter adds to the database's clock.
pub(crate) fn disposition_columns(d: &Disposition) -> (&'static str, i64) {
    match d {
        Disposition::RetryAfter(wait) => ("retry", duration_ms(*wait)),
        Disposition::Dead => ("dead", 0),
    }
}

/// A wait in ms (as computed in SQL, negative once passed) as a duration.
pub(crate) fn due_in(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// The served targets of a heartbeat, as the JSON text stored with it.
pub(crate) fn encode_served(serving: &[ServedTarget]) -> String {
    serde_json::to_string(serving).unwrap_or_else(|_| "[]".into())
}

/// How long opening a server database may take before it is reported as
/// failed (a refused port fails at once; this bounds a silent one).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The first connection to a server database, within [`CONNECT_TIMEOUT`];
/// a failure names the (redacted) URL.
pub(crate) async fn first_connection<C>(
    shown_url: &str,
    connect: impl std::future::Future<Output = std::result::Result<C, sqlx::Error>>,
) -> Result<C> {
    let connect_error = |cause| StorageError::Connect {
        url: shown_url.to_string(),
        cause,
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| {
            connect_error(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
            )))
        })?
        .map_err(connect_error)
}

/// The stored partition count against the configured one; remembered in
/// `known` once they agree.
pub(crate) fn agreed_partitions(
    stored: u32,
    configured: u32,
    known: &std::sync::atomic::AtomicU32,
) -> Result<u32> {
    if stored != configured {
        return Err(StorageError::PartitionMismatch { stored, configured });
    }
    known.store(stored, std::sync::atomic::Ordering::Relaxed);
    Ok(stored)
}

/// Refuses to forget `target` while a relay among `live` serves it.
pub(crate) fn refuse_if_served(target: &str, live: &[LiveRelay]) -> Result<()> {
    let owners = serving(live, target);
    if owners.is_empty() {
        Ok(())
    } else {
        Err(StorageError::TargetServed {
            target: target.to_string(),
            owners,
        })
    }
}

/// What forgetting `target` removed (rows of the registry, cursors and
/// failure records): the cursor count, or [`StorageError::UnknownTarget`]
/// when there was nothing at all.
pub(crate) fn forgotten(target: &str, removed: [u64; 3]) -> Result<u64> {
    if removed == [0, 0, 0] {
        Err(StorageError::UnknownTarget(target.to_string()))
    } else {
        Ok(removed[1])
    }
}

/// [`StorageError::LeaseLost`] for `lease`.
pub(crate) fn lease_lost(lease: &Lease) -> StorageError {
    StorageError::LeaseLost {
        target: lease.target.clone(),
        partition: lease.partition,
        owner: lease.owner.clone(),
    }
}

/// Rows of `(owner, targets)` as live relays.
pub(crate) fn live_relays_of(rows: Vec<(String, String)>) -> Vec<LiveRelay> {
    rows.into_iter()
        .map(|(owner, targets)| live_relay(owner, &targets))
        .collect()
}

/// A live relay's row; unreadable `targets` text serves nothing.
pub(crate) fn live_relay(owner: String, targets: &str) -> LiveRelay {
    LiveRelay {
        owner,
        targets: serde_json::from_str(targets).unwrap_or_default(),
    }
}

/// A row of a dead-letter listing, on any backend: the columns `target`,
/// `seq`, `message_id`, `event_name` (NULL once the message is pruned),
/// `attempts` (a bigint), `last_error` and `updated_at_ms`.
pub(crate) fn dead_letter_row<R>(r: &R) -> Result<DeadLetter>
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(DeadLetter {
        target: r.try_get("target")?,
        seq: r.try_get("seq")?,
        message_id: r.try_get("message_id")?,
        event_name: r.try_get("event_name")?,
        attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(0),
        last_error: r.try_get("last_error")?,
        dead_at_ms: r.try_get("updated_at_ms")?,
    })
}

/// A row of [`Storage::dead_letter`], on any backend: the letter's columns
/// `target`, `d_seq`, `message_id`, `d_event_name`, `attempts` (a bigint),
/// `last_error`, `updated_at_ms` and `history` (its JSON text), with
/// `message` already decoded from the same row by the adapter.
pub(crate) fn dead_letter_detail<R>(
    r: &R,
    message: Option<crate::message::LogEntry>,
) -> Result<DeadLetterDetail>
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let history: Option<String> = r.try_get("history")?;
    Ok(DeadLetterDetail {
        letter: DeadLetter {
            target: r.try_get("target")?,
            seq: r.try_get("d_seq")?,
            message_id: r.try_get("message_id")?,
            event_name: r.try_get("d_event_name")?,
            attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(0),
            last_error: r.try_get("last_error")?,
            dead_at_ms: r.try_get("updated_at_ms")?,
        },
        message,
        history: decode_history(history.as_deref().unwrap_or("[]")),
    })
}

/// Who among `live` serves `target`, with the state each reports.
pub(crate) fn served_by(live: &[LiveRelay], target: &str) -> Vec<ServedBy> {
    live.iter()
        .filter_map(|r| {
            r.targets
                .iter()
                .find(|t| t.name == target)
                .map(|t| ServedBy {
                    owner: r.owner.clone(),
                    state: t.state.clone(),
                })
        })
        .collect()
}

/// A [`DeadLetterFilter::event_pattern`] as a SQL `LIKE` pattern whose
/// escape character is `escape` (Postgres `\`, MySQL `|`: a backslash there
/// would depend on `sql_mode`).
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn glob_to_like(glob: &str, escape: char) -> String {
    let mut out = String::with_capacity(glob.len() + 4);
    for c in glob.chars() {
        match c {
            '*' => out.push('%'),
            '?' => out.push('_'),
            c if c == '%' || c == '_' || c == escape => {
                out.push(escape);
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// A [`DeadLetterFilter::event_pattern`] as a SQLite `GLOB` pattern (which is
/// case-sensitive, like Postgres `LIKE`): `[` is its only other special
/// character, written as the class `[[]`.
#[cfg(feature = "sqlite")]
pub(crate) fn glob_to_sqlite_glob(glob: &str) -> String {
    glob.replace('[', "[[]")
}

/// Decodes a failure record's `history` column; an unreadable one yields no entries.
pub(crate) fn decode_history(raw: &str) -> Vec<AttemptRecord> {
    serde_json::from_str::<Vec<serde_json::Value>>(raw)
        .unwrap_or_default()
        .into_iter()
        .map(|v| AttemptRecord {
            attempt: v["attempt"]
                .as_u64()
                .and_then(|a| u32::try_from(a).ok())
                .unwrap_or(0),
            at_ms: v["at_ms"].as_i64().unwrap_or(0),
            error: v["error"].as_str().unwrap_or_default().to_string(),
        })
        .collect()
}

pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_wherever_a_database_url_carries_them() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(
            redact_url("postgres://u@h/db?sslmode=require&password=secret&x=1"),
            "postgres://u@h/db?sslmode=require&password=***&x=1"
        );
        assert_eq!(
            redact_url("host=db user=u PASSWORD=secret dbname=x"),
            "host=db user=u PASSWORD=*** dbname=x"
        );
    }

    #[test]
    fn transient_codes_are_exact() {
        // SQLite: BUSY, LOCKED and their extended codes.
        for code in ["5", "6", "261", "517", "773", "262", "518"] {
            assert!(sqlite_transient(code), "{code}");
        }
        // FULL, IOERR, CONSTRAINT, CORRUPT are not.
        for code in ["13", "10", "19", "2067", "11", "1"] {
            assert!(!sqlite_transient(code), "{code}");
        }
        for code in ["40001", "40P01", "08006", "08001", "57P01"] {
            assert!(sqlstate_transient(code), "{code}");
        }
        for code in ["23505", "42P01", "53100", "22P02"] {
            assert!(!sqlstate_transient(code), "{code}");
        }
    }

    #[test]
    fn serving_lists_only_the_relays_that_have_the_target() {
        let live = vec![
            live_relay("b".into(), r#"[{"name":"t1","state":{"state":"running"}}]"#),
            live_relay(
                "a".into(),
                r#"[{"name":"t2","state":{}},{"name":"t1","state":{}}]"#,
            ),
            live_relay("c".into(), "not json"),
        ];
        assert_eq!(serving(&live, "t1"), ["a", "b"]);
        assert_eq!(serving(&live, "t2"), ["a"]);
        assert!(serving(&live, "t3").is_empty());
        assert_eq!(served_by(&live, "t1")[0].state["state"], "running");
    }
}
