//! The fault matrix of docs/reliability.md (issue 20): every fault of
//! tests/it/faults/ on SQLite and on Postgres, each with an ordered and an
//! unordered `file` target, run briefly while a producer writes.
//!
//!     make soak
//!
//! Each cell: two relays (`outbox-relay run` processes), 4 partitions,
//! `batch_size = 20`; a producer writes 1,500 messages over 20 keys in
//! transactions of 10, one every 50 ms (each payload carries its key and its
//! place `n` in the key's sequence) while the fault happens. Then the relays
//! drain, stop, and every line of both target files is counted by message id:
//!
//! - **committed**: the rows in `outbox_messages` afterwards (a producer
//!   transaction that failed during the fault is not counted; one whose commit
//!   reported an error but landed is);
//! - **delivered**: committed messages with at least one line, **lost** the
//!   rest; **duplicates**: lines beyond the first of each id;
//! - **order violations**: first deliveries whose `n` is below one already
//!   delivered for the key (a key going backwards); **raw regressions**
//!   counts every such line, the re-sent copies of a duplicate included.
//!
//! It asserts 0 lost, 0 order violations on the ordered target and
//! duplicates within the bound of docs/reliability.md ("Duplicates are
//! bounded") for each cell, after running every cell and writing
//! `bench/results/fault_matrix.json` (and the table as `fault_matrix.md`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox_relay::NewMessage;
use outbox_relay::storage::Storage;
use outbox_relay::storage::postgres::PgStorage;
use outbox_relay::storage::sqlite::SqliteStorage;
use outbox_relay_tests::{Scratch, config_text};
use sqlx::Connection as _;

use crate::faults::{
    Received, RecordingTarget, RelayProcess, Tmpfs, faketime_env, relay_lines, route_all,
    sqlite_connection,
};

const PARTITIONS: usize = 4;
const BATCH: usize = 20;
const KEYS: usize = 20;
const MESSAGES: usize = 1_500;
const CHUNK: usize = 10;
const EVERY: Duration = Duration::from_millis(50);
const TARGETS: [&str; 2] = ["ordered", "unordered"];
/// How long the relays get to deliver everything once the producer is done.
const DRAIN: Duration = Duration::from_secs(90);
/// A cell that takes longer than this is recorded as failed.
const CELL_LIMIT: Duration = Duration::from_secs(240);
const LOST_LEASE: &str = "lease lost during a batch";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    const fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "SQLite",
            Self::Postgres => "Postgres",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Sigkill,
    Sigstop,
    ClockSkew,
    DbRestart,
    RollingChange,
    DiskFull,
    TransientLock,
}

impl Fault {
    const ALL: [Self; 7] = [
        Self::Sigkill,
        Self::Sigstop,
        Self::ClockSkew,
        Self::DbRestart,
        Self::RollingChange,
        Self::DiskFull,
        Self::TransientLock,
    ];

    const fn name(self) -> &'static str {
        match self {
            Self::Sigkill => "SIGKILL",
            Self::Sigstop => "SIGSTOP",
            Self::ClockSkew => "clock skew",
            Self::DbRestart => "database restart",
            Self::RollingChange => "rolling config change",
            Self::DiskFull => "disk full",
            Self::TransientLock => "transient lock",
        }
    }

    const fn not_applicable(self, backend: Backend) -> Option<&'static str> {
        match (self, backend) {
            (Self::DbRestart, Backend::Sqlite) => Some(
                "not applicable: SQLite is a library inside each relay process; there is no server to restart",
            ),
            (Self::DiskFull, Backend::Postgres) => Some(
                "not applicable here: the shared Postgres server's data directory cannot be put on a small tmpfs",
            ),
            _ => None,
        }
    }

    /// The lock and the skew are meant to be shorter than (or against) a
    /// long lease; the other faults want leases to move quickly.
    const fn lease_ttl(self) -> &'static str {
        match self {
            Self::ClockSkew | Self::TransientLock => "30s",
            _ => "3s",
        }
    }
}

/// What one target of one cell received.
#[derive(Debug, Default)]
struct TargetFigures {
    target: &'static str,
    ordered: bool,
    lines: usize,
    delivered: usize,
    lost: usize,
    duplicates: usize,
    order_violations: usize,
    raw_regressions: usize,
    /// Ids delivered that are not in the log (never committed): should be 0.
    unknown: usize,
    torn: usize,
    first_violation: Option<String>,
}

/// One (fault, backend) run: both targets.
#[derive(Debug)]
struct Cell {
    fault: Fault,
    backend: Backend,
    not_applicable: Option<&'static str>,
    /// Fault injections (kills, pauses, restarts, ...).
    events: usize,
    /// The duplicates docs/reliability.md allows, per target.
    bound: usize,
    bound_rule: String,
    committed: usize,
    /// Messages whose producer transaction failed (during the fault).
    not_committed: usize,
    lease_lost_logs: usize,
    seconds: f64,
    note: String,
    error: Option<String>,
    targets: Vec<TargetFigures>,
}

impl Cell {
    fn new(fault: Fault, backend: Backend) -> Self {
        Self {
            fault,
            backend,
            not_applicable: fault.not_applicable(backend),
            events: 0,
            bound: 0,
            bound_rule: String::new(),
            committed: 0,
            not_committed: 0,
            lease_lost_logs: 0,
            seconds: 0.0,
            note: String::new(),
            error: None,
            targets: Vec::new(),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let targets: Vec<serde_json::Value> = self
            .targets
            .iter()
            .map(|t| {
                serde_json::json!({
                    "target": t.target,
                    "ordered": t.ordered,
                    "lines": t.lines,
                    "delivered": t.delivered,
                    "lost": t.lost,
                    "duplicates": t.duplicates,
                    "order_violations": t.order_violations,
                    "raw_regressions": t.raw_regressions,
                    "unknown_ids": t.unknown,
                    "torn_lines": t.torn,
                    "first_violation": t.first_violation,
                })
            })
            .collect();
        serde_json::json!({
            "fault": self.fault.name(),
            "backend": self.backend.name(),
            "not_applicable": self.not_applicable,
            "fault_events": self.events,
            "duplicate_bound": self.bound,
            "duplicate_bound_rule": self.bound_rule,
            "committed": self.committed,
            "not_committed": self.not_committed,
            "lease_lost_logs": self.lease_lost_logs,
            "seconds": (self.seconds * 10.0).round() / 10.0,
            "note": self.note,
            "error": self.error,
            "targets": targets,
        })
    }

    /// One fault that takes the database from each of `relays` at once:
    /// the crash bound for each.
    fn every_relay_loses_its_database(&mut self, relays: usize) {
        self.events = 1;
        self.bound = relays * CRASH_BATCHES * BATCH * PARTITIONS;
        self.bound_rule = format!(
            "each of the {relays} relays loses its database: 9 batches x {PARTITIONS} partitions x {BATCH}"
        );
    }

    /// What is wrong with this cell (empty when it held).
    fn failures(&self) -> Vec<String> {
        if self.not_applicable.is_some() {
            return Vec::new();
        }
        let cell = format!("{} on {}", self.fault.name(), self.backend.name());
        let mut failures = Vec::new();
        if let Some(e) = &self.error {
            failures.push(format!("{cell}: {e}"));
        }
        for t in &self.targets {
            let at = format!("{cell}, {} target", t.target);
            if t.lost > 0 {
                failures.push(format!("{at}: {} of {} lost", t.lost, self.committed));
            }
            if t.duplicates > self.bound {
                failures.push(format!(
                    "{at}: {} duplicates, over the bound of {} ({})",
                    t.duplicates, self.bound, self.bound_rule
                ));
            }
            if t.ordered && t.order_violations > 0 {
                failures.push(format!(
                    "{at}: {} order violations, first: {}",
                    t.order_violations,
                    t.first_violation.as_deref().unwrap_or("?")
                ));
            }
            if t.torn > 0 || t.unknown > 0 {
                failures.push(format!(
                    "{at}: {} torn lines, {} ids never committed",
                    t.torn, t.unknown
                ));
            }
        }
        failures
    }
}

/// The crash bound of docs/reliability.md: 9 batches per partition worker
/// in flight (the one in the plugin and 8 unacknowledged), each relay
/// holding at most all the partitions.
const CRASH_BATCHES: usize = 9;

/// A cell's scratch: the database, the relays and their configs.
struct Env {
    // Unmounted before the scratch directory it lives in is removed.
    disk: Option<Tmpfs>,
    scratch: Scratch,
    backend: Backend,
    database: String,
    lease_ttl: &'static str,
    out: PathBuf,
    relays: Vec<RelayProcess>,
    started: usize,
}

impl Env {
    async fn new(fault: Fault, backend: Backend) -> Self {
        let scratch = match backend {
            Backend::Sqlite => Scratch::new(),
            Backend::Postgres => Scratch::postgres().await,
        };
        let (disk, database) = if fault == Fault::DiskFull {
            let disk = Tmpfs::mount(&scratch.path().join("disk"), 16 * 1024);
            let url = format!(
                "sqlite://{}",
                scratch.path().join("disk/outbox.db").display()
            );
            (Some(disk), url)
        } else {
            (None, scratch.database_url())
        };
        let out = scratch.path().join("out");
        Self {
            disk,
            scratch,
            backend,
            database,
            lease_ttl: fault.lease_ttl(),
            out,
            relays: Vec::new(),
            started: 0,
        }
    }

    /// A migrated outbox of 4 partitions, for the producer.
    async fn storage(&self) -> Arc<dyn Storage> {
        let storage: Arc<dyn Storage> = match self.backend {
            Backend::Sqlite => {
                let s = SqliteStorage::connect(&self.database).await.unwrap();
                s.migrate().await.unwrap();
                Arc::new(s)
            }
            Backend::Postgres => {
                let s = PgStorage::connect(&self.database).await.unwrap();
                s.migrate().await.unwrap();
                Arc::new(s)
            }
        };
        storage.ensure_partitions(PARTITIONS as u32).await.unwrap();
        storage
    }

    /// A config serving `targets` of [`TARGETS`].
    fn config(&self, file: &str, targets: &[&str]) -> PathBuf {
        let targets: Vec<RecordingTarget<'_>> = targets
            .iter()
            .map(|name| RecordingTarget {
                lines: if *name == "ordered" {
                    "ordered = true\nbatch_size = 20\nretry = { initial_backoff = \"50ms\", max_backoff = \"1s\", max_attempts = 1000 }"
                } else {
                    "batch_size = 20\nretry = { initial_backoff = \"50ms\", max_backoff = \"1s\", max_attempts = 1000 }"
                },
                ..RecordingTarget::file(name)
            })
            .collect();
        let path = self.scratch.path().join(file);
        std::fs::write(
            &path,
            config_text(
                &self.database,
                &relay_lines(self.lease_ttl, "partitions = 4"),
                &route_all(&self.out, &targets),
            ),
        )
        .unwrap();
        path
    }

    fn start(&mut self, config: &Path, env: &[(&str, &str)]) -> RelayProcess {
        self.started += 1;
        let log = self
            .scratch
            .path()
            .join(format!("relay-{}.log", self.started));
        RelayProcess::start_with_env(config, &log, env)
    }

    /// Every id in the log now.
    async fn committed(&self) -> HashSet<String> {
        let ids: Vec<String> = match self.backend {
            Backend::Sqlite => {
                let mut conn = sqlite_connection(&self.database).await;
                sqlx::query_scalar("SELECT id FROM outbox_messages")
                    .fetch_all(&mut conn)
                    .await
                    .unwrap()
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.database).await.unwrap();
                sqlx::query_scalar("SELECT id::text FROM outbox_messages")
                    .fetch_all(&mut conn)
                    .await
                    .unwrap()
            }
        };
        ids.into_iter().collect()
    }

    /// Copies the relays' logs and the target files of a failing cell to
    /// `<target>/tmp/fault_matrix/<fault>-<backend>/`, and says where.
    fn keep_logs(&self, cell: &Cell) {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("fault_matrix")
            .join(format!("{}-{}", cell.fault.name(), cell.backend.name()).replace(' ', "-"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let logs = (1..=self.started).map(|n| self.scratch.path().join(format!("relay-{n}.log")));
        let files = TARGETS.iter().map(|t| self.out.join(format!("{t}.jsonl")));
        for from in logs.chain(files) {
            let _ = std::fs::copy(&from, dir.join(from.file_name().unwrap()));
        }
        println!(
            "{} on {}: logs and target files kept in {}",
            cell.fault.name(),
            cell.backend.name(),
            dir.display()
        );
    }

    /// How many log lines of every relay this cell started contain `needle`.
    fn logged(&self, needle: &str) -> usize {
        (1..=self.started)
            .map(|n| {
                std::fs::read_to_string(self.scratch.path().join(format!("relay-{n}.log")))
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains(needle))
                    .count()
            })
            .sum()
    }
}

/// The producer: `MESSAGES` keyed messages, each payload `{"key", "n"}` with
/// `n` its place in its key's sequence; a transaction that fails is counted
/// and skipped (its `n`s are never written). Returns the messages not committed.
fn produce(storage: Arc<dyn Storage>) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut next = [0u64; KEYS];
        let mut failed = 0;
        for start in (0..MESSAGES).step_by(CHUNK) {
            let chunk: Vec<NewMessage> = (start..(start + CHUNK).min(MESSAGES))
                .map(|i| {
                    let key = format!("k{:02}", i % KEYS);
                    next[i % KEYS] += 1;
                    let payload = serde_json::json!({"key": key, "n": next[i % KEYS]});
                    NewMessage::new("tick", payload.to_string().into_bytes()).with_key(key)
                })
                .collect();
            if storage.save(&chunk).await.is_err() {
                failed += chunk.len();
            }
            tokio::time::sleep(EVERY).await;
        }
        failed
    })
}

/// Sleeps until `secs` after `start`.
async fn at(start: Instant, secs: f64) {
    tokio::time::sleep_until(tokio::time::Instant::from_std(
        start + Duration::from_secs_f64(secs),
    ))
    .await;
}

/// Counts one target's file against the committed ids.
fn figures(path: &Path, target: &'static str, committed: &HashSet<String>) -> TargetFigures {
    let received = Received::read(path);
    let per_id = received.per_id();
    let delivered = committed
        .iter()
        .filter(|id| per_id.contains_key(*id))
        .count();
    let mut figures = TargetFigures {
        target,
        ordered: target == "ordered",
        lines: received.lines.len(),
        delivered,
        lost: committed.len() - delivered,
        duplicates: received.duplicates(),
        unknown: per_id.keys().filter(|id| !committed.contains(*id)).count(),
        torn: received.torn,
        ..TargetFigures::default()
    };
    let mut seen = HashSet::new();
    let mut highest: HashMap<String, u64> = HashMap::new();
    for (line_no, line) in received.lines.iter().enumerate() {
        let first = seen.insert(line["id"].as_str().unwrap().to_string());
        let key = line["payload"]["key"].as_str().unwrap().to_string();
        let n = line["payload"]["n"].as_u64().unwrap();
        let top = highest.entry(key.clone()).or_insert(0);
        if n < *top {
            figures.raw_regressions += 1;
            if first {
                figures.order_violations += 1;
                figures.first_violation.get_or_insert_with(|| {
                    format!("line {}: key {key} n={n} after n={top}", line_no + 1)
                });
            }
        }
        *top = (*top).max(n);
    }
    figures
}

/// Runs one cell: the relays, the producer, the fault, the drain, the count.
async fn run_cell(fault: Fault, backend: Backend) -> Cell {
    let began = Instant::now();
    let mut cell = Cell::new(fault, backend);
    let mut env = Env::new(fault, backend).await;
    let storage = env.storage().await;
    let full = env.config("relay.toml", &TARGETS);
    let relays: Vec<RelayProcess> = match fault {
        Fault::RollingChange => {
            let only_ordered = env.config("relay-a.toml", &["ordered"]);
            vec![env.start(&only_ordered, &[])]
        }
        Fault::ClockSkew => {
            let ahead = faketime_env("+60s");
            let ahead: Vec<(&str, &str)> = ahead.iter().map(|(k, v)| (*k, v.as_str())).collect();
            vec![env.start(&full, &[]), env.start(&full, &ahead)]
        }
        _ => vec![env.start(&full, &[]), env.start(&full, &[])],
    };
    env.relays = relays;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let start = Instant::now();
    let producer = produce(storage.clone());
    let per_relay = BATCH * PARTITIONS;
    match fault {
        Fault::Sigkill => {
            for (k, secs) in [2.0, 4.0, 6.0].into_iter().enumerate() {
                at(start, secs).await;
                let victim = env.relays.swap_remove(k % 2);
                drop(victim); // SIGKILL, and wait
                let relay = env.start(&full, &[]);
                env.relays.push(relay);
                cell.events += 1;
            }
            cell.bound = cell.events * CRASH_BATCHES * per_relay;
            cell.bound_rule = format!(
                "{} kills x 9 batches x {PARTITIONS} partitions x {BATCH}",
                cell.events
            );
            cell.note = "3 SIGKILLs (2 s apart), each relay restarted at once".into();
        }
        Fault::Sigstop => {
            at(start, 2.0).await;
            env.relays[1].signal("STOP");
            at(start, 8.0).await;
            env.relays[1].signal("CONT");
            cell.events = 1;
            cell.bound = (CRASH_BATCHES + 1) * per_relay;
            cell.bound_rule = format!(
                "the stopped relay's 9 unacknowledged batches and the 1 in the plugin, x {PARTITIONS} partitions x {BATCH}"
            );
            cell.note = "one relay SIGSTOPped for 6 s (lease_ttl 3s), then SIGCONT".into();
        }
        Fault::ClockSkew => {
            at(start, 5.0).await;
            let skewed = env.relays.pop().unwrap();
            let stopped = skewed.stop();
            let behind = faketime_env("-60s");
            let behind: Vec<(&str, &str)> = behind.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let relay = env.start(&full, &behind);
            env.relays.push(relay);
            cell.events = 2;
            cell.bound_rule = "none documented: a skewed clock makes no duplicates".into();
            cell.note = format!(
                "relay 2 under faketime +60s, after 5 s restarted (SIGTERM: {}) under -60s; lease_ttl 30s",
                exit(stopped)
            );
        }
        Fault::DbRestart => {
            at(start, 3.0).await;
            let restarted = Instant::now();
            let out = tokio::process::Command::new("sh")
                .args([
                    "-c",
                    "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main restart",
                ])
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "pg_ctlcluster restart: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            cell.every_relay_loses_its_database(env.relays.len());
            cell.note = format!(
                "`pg_ctlcluster ... main restart` (took {:.1} s) while writing",
                restarted.elapsed().as_secs_f64()
            );
        }
        Fault::RollingChange => {
            at(start, 3.0).await;
            let joined = env.start(&full, &[]);
            env.relays.push(joined);
            at(start, 6.0).await;
            let a = env.relays.swap_remove(0);
            let stopped = a.stop();
            let a = env.start(&full, &[]);
            env.relays.push(a);
            cell.events = 2;
            cell.bound_rule = "none documented: a graceful restart makes no duplicates".into();
            cell.note = format!(
                "relay A serves [ordered]; at 3 s relay B joins with [ordered, unordered]; \
                 at 6 s A restarts (SIGTERM: {}) with [ordered, unordered]",
                exit(stopped)
            );
        }
        Fault::DiskFull => {
            at(start, 2.0).await;
            let disk = env.disk.as_ref().unwrap();
            let ballast = disk.fill(0);
            let filled = Instant::now();
            while env.logged("full") == 0 && filled.elapsed() < Duration::from_secs(10) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let noticed = filled.elapsed().as_secs_f64();
            tokio::time::sleep(Duration::from_secs(3)).await;
            std::fs::remove_file(&ballast).unwrap();
            cell.every_relay_loses_its_database(env.relays.len());
            cell.note = format!(
                "the database's 16 MiB tmpfs filled at 2 s (a relay logged it after {noticed:.1} s), freed 3 s later"
            );
        }
        Fault::TransientLock => {
            at(start, 2.0).await;
            let held = match backend {
                Backend::Sqlite => {
                    let mut locker = sqlite_connection(&env.database).await;
                    sqlx::raw_sql("BEGIN IMMEDIATE")
                        .execute(&mut locker)
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_secs(12)).await;
                    sqlx::raw_sql("ROLLBACK")
                        .execute(&mut locker)
                        .await
                        .unwrap();
                    "a second connection holds BEGIN IMMEDIATE for 12 s (past the relays' 10 s busy timeout)"
                }
                Backend::Postgres => {
                    let mut locker = sqlx::PgConnection::connect(&env.database).await.unwrap();
                    sqlx::raw_sql("BEGIN; LOCK TABLE outbox_cursors IN ACCESS EXCLUSIVE MODE")
                        .execute(&mut locker)
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    sqlx::raw_sql("COMMIT").execute(&mut locker).await.unwrap();
                    "LOCK TABLE outbox_cursors IN ACCESS EXCLUSIVE MODE held for 5 s"
                }
            };
            cell.events = 1;
            cell.bound_rule =
                "none documented: a transient error on an ack is retried in place".into();
            cell.note = format!("{held}; lease_ttl 30s");
        }
    }
    cell.not_committed = producer.await.unwrap();
    let committed = env.committed().await;
    cell.committed = committed.len();

    let drained = tokio::time::timeout(DRAIN, async {
        loop {
            let lost: usize = TARGETS
                .iter()
                .map(|t| Received::read(&env.out.join(format!("{t}.jsonl"))).lost(&committed))
                .sum();
            if lost == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    // A late re-delivery, if one is coming, lands now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut exits = Vec::new();
    for relay in std::mem::take(&mut env.relays) {
        exits.push(relay.stop());
    }
    cell.lease_lost_logs = env.logged(LOST_LEASE);
    cell.targets = TARGETS
        .iter()
        .map(|t| figures(&env.out.join(format!("{t}.jsonl")), t, &committed))
        .collect();
    if drained.is_err() {
        cell.note
            .push_str(&format!("; not drained within {} s", DRAIN.as_secs()));
    }
    if let Some(bad) = exits.iter().find(|s| !s.success()) {
        cell.error = Some(format!("a relay exited with {bad} on SIGTERM"));
    }
    cell.seconds = began.elapsed().as_secs_f64();
    if !cell.failures().is_empty() {
        env.keep_logs(&cell);
    }
    drop(env);
    cell
}

fn exit(status: std::process::ExitStatus) -> String {
    if status.success() {
        "clean exit".into()
    } else {
        status.to_string()
    }
}

/// The table of docs/reliability.md.
fn markdown(cells: &[Cell]) -> String {
    let mut md = String::from(
        "| fault | backend | target | committed | delivered | lost | duplicates (bound) | order violations (raw regressions) | what was done |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for cell in cells {
        if let Some(why) = cell.not_applicable {
            md.push_str(&format!(
                "| {} | {} | both | — | — | — | — | — | {why} |\n",
                cell.fault.name(),
                cell.backend.name()
            ));
            continue;
        }
        for t in &cell.targets {
            let mut what = cell.note.clone();
            if t.ordered {
                if cell.not_committed > 0 {
                    what.push_str(&format!(
                        "; {} messages' transactions failed during the fault",
                        cell.not_committed
                    ));
                }
                if cell.lease_lost_logs > 0 {
                    what.push_str(&format!(
                        "; `{LOST_LEASE}` logged {} times",
                        cell.lease_lost_logs
                    ));
                }
                if let Some(e) = &cell.error {
                    what.push_str(&format!("; **{e}**"));
                }
            }
            let flag = |bad: bool, v: String| if bad { format!("**{v}**") } else { v };
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                cell.fault.name(),
                cell.backend.name(),
                t.target,
                cell.committed,
                t.delivered,
                flag(t.lost > 0, t.lost.to_string()),
                flag(
                    t.duplicates > cell.bound,
                    format!("{} (≤ {})", t.duplicates, cell.bound)
                ),
                flag(
                    t.ordered && t.order_violations > 0,
                    format!("{} ({})", t.order_violations, t.raw_regressions)
                ),
                if t.ordered { what.as_str() } else { "" },
            ));
        }
    }
    md
}

/// Writes the figures to `dir` (`bench/results/` for the recorded run).
fn write_results(dir: &Path, cells: &[Cell], seconds: f64) {
    std::fs::create_dir_all(dir).unwrap();
    let json = serde_json::json!({
        "messages_per_cell": MESSAGES,
        "keys": KEYS,
        "partitions": PARTITIONS,
        "batch_size": BATCH,
        "relays": 2,
        "seconds": seconds.round(),
        "cells": cells.iter().map(Cell::to_json).collect::<Vec<_>>(),
    });
    std::fs::write(
        dir.join("fault_matrix.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("fault_matrix.md"), markdown(cells)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the recorded fault matrix of docs/reliability.md; run with `make soak`"]
async fn fault_matrix() {
    let began = Instant::now();
    // Some faults only (names, comma-separated): figures not recorded.
    let only = std::env::var("FAULT_MATRIX_ONLY").unwrap_or_default();
    let results = if only.is_empty() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("fault_matrix")
    };
    let mut cells = Vec::new();
    for backend in [Backend::Sqlite, Backend::Postgres] {
        for fault in Fault::ALL {
            if !only.is_empty() && !only.split(',').any(|f| fault.name().contains(f.trim())) {
                continue;
            }
            let cell = if fault.not_applicable(backend).is_some() {
                Cell::new(fault, backend)
            } else {
                let run = tokio::spawn(tokio::time::timeout(CELL_LIMIT, run_cell(fault, backend)));
                match run.await {
                    Ok(Ok(cell)) => cell,
                    Ok(Err(_)) => Cell {
                        error: Some(format!("did not finish within {} s", CELL_LIMIT.as_secs())),
                        ..Cell::new(fault, backend)
                    },
                    Err(panic) => Cell {
                        error: Some(format!("panicked: {}", panic_message(panic))),
                        ..Cell::new(fault, backend)
                    },
                }
            };
            println!("{}", serde_json::to_string(&cell.to_json()).unwrap());
            cells.push(cell);
            write_results(&results, &cells, began.elapsed().as_secs_f64());
        }
    }
    println!("{}", markdown(&cells));
    let failures: Vec<String> = cells.iter().flat_map(Cell::failures).collect();
    assert!(
        failures.is_empty(),
        "{} failing cell figures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn panic_message(error: tokio::task::JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_string()))
            .unwrap_or_else(|| "a panic without a message".into()),
        Err(e) => e.to_string(),
    }
}
