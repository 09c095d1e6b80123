//! Black-box fault tests of issue 20: one test per finding of the outside
//! tester's report, each driving the real `outbox-relay` binary against real
//! SQLite files or the real Postgres at 127.0.0.1:5432, reading `file` (or
//! `count`) targets back line by line and asserting the figures. They were
//! written against `main` at ff87868, before the fixes, and failed there.
//!
//! | test | finding |
//! |---|---|
//! | `rolling_change::a_target_added_by_one_relay_loses_nothing_and_only_forget_lets_it_go` | 1: a rolling config change (A serves `[t1]` with retention 1s, B joins with `[t1, t2]`): every t2 message delivered; only `targets forget t2 --yes` lets retention drop them |
//! | `disk_full::sqlite_disk_full_recovers_without_restart_and_without_a_redelivery_storm` | 2: SQLite on a full tmpfs: recovery without a restart once space is freed, duplicates within 9 batches per partition, no re-delivery storm |
//! | `torn_lines::file_target_never_tears_6kb_lines`, `torn_lines::file_target_never_tears_1kb_lines` | 3: the `file` target, 4 partitions, 2,000 messages of ~6 KB (and ~1.1 KB): 0 torn lines |
//! | `ordered_drain::ordered_one_key_backlog_drains_at_batch_speed_on_postgres`, `ordered_drain::ordered_ten_key_backlog_drains_at_batch_speed_on_postgres` | 4: an ordered backlog of 60 messages (1 key, and 10 keys) with `poll_interval = 5s` drains in under 3 poll intervals |
//! | `ordered_switch::switching_ordered_off_and_on_strands_no_retry` | 5: ordered → unordered → ordered with pending retries: every retry delivered, `status` shows none left |
//! | `bad_partitions::out_of_range_partitions_are_dead_lettered_and_counted` | 6: SQLite rows with partition 7, -1, 4096 (of 4): dead-lettered with a reason naming the partition; `status` counts them meanwhile |
//! | `clock_skew::a_relay_60s_ahead_takes_no_live_lease`, `clock_skew::a_relay_60s_behind_takes_no_live_lease` | 7: `faketime` ±60 s on one of two relays (`lease_ttl = 30s`): no `lease lost during a batch`, both relays hold partitions, 0 lost |
//! | `zombie::a_resumed_zombie_delivers_nothing_stale_on_an_ordered_target` | 8: SIGSTOP 12 s with `lease_ttl = 5s` while holding a batch, then SIGCONT: no key goes backwards in the raw output; duplicates within the crash bound |
//! | `sqlite_busy::a_locked_database_on_an_ack_write_costs_no_redelivery` | 9: `SQLITE_BUSY` on ack writes (another connection holds `BEGIN IMMEDIATE` past the busy timeout): 0 duplicate lines |
//! | `pg_horizon::a_writer_in_another_database_does_not_hold_delivery_back`, `pg_horizon::a_writer_in_the_outbox_database_holds_later_commits_and_status_names_it` | 10: a transaction open in another database of the server does not stall delivery; one in the outbox's own database still holds later commits back, and `status --json` names it |
//! | `disk_full::the_file_target_names_a_full_disk` | 11: the `file` target's error on a full disk names ENOSPC |
//! | `cli_small::*` | 11: the smaller CLI items (see that file) |
//! | `failover::*` | found by the attack on the SQLite clock fix: a SIGKILLed relay's partitions are taken within one TTL (and two heartbeats), not two |
//!
//! Interfaces these tests assume that do not exist on `main` yet (the
//! fixes must match them, or change the test with them):
//! `outbox-relay targets forget NAME --yes --config ...` (it prints how many
//! messages it lets go); `waiting_on: {pid, database, age_ms, prepared}` on each
//! target of `status --json` (see `pg_horizon.rs`).
//!
//! Needs: root (the disk-full tests mount a tmpfs) and Debian's
//! `libfaketime` (`make setup`, tests/setup.sh).
//!
//! The harness below runs the relay as a process with its log kept, runs
//! the CLI, and counts what a target received.

mod bad_partitions;
mod cli_small;
mod clock_skew;
mod disk_full;
mod failover;
mod ordered_drain;
mod ordered_switch;
mod pg_horizon;
mod rolling_change;
mod sqlite_busy;
mod torn_lines;
mod zombie;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::relay_binary;

/// An `outbox-relay run` process whose stderr goes to a log file; killed
/// (SIGKILL) when dropped if it still runs, so a failing test leaves nothing behind.
pub(crate) struct RelayProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl RelayProcess {
    /// Starts `outbox-relay run --config <config>`, logging to `log`.
    pub(crate) fn start(config: &Path, log: &Path) -> Self {
        Self::start_with_env(config, log, &[])
    }

    /// Like [`RelayProcess::start`], with extra environment variables.
    pub(crate) fn start_with_env(config: &Path, log: &Path, env: &[(&str, &str)]) -> Self {
        let child = Command::new(relay_binary())
            .args(["run", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// What the relay has logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many log lines contain `needle`.
    pub(crate) fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Sends a signal by name (`STOP`, `CONT`, `HUP`, ...).
    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} {}", self.pid());
    }

    /// True while the process has not exited.
    pub(crate) fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// SIGTERM, and the exit status (the test fails if it takes over 10 s).
    pub(crate) fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        crate::terminate(&mut child)
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL ends a stopped process too
            let _ = child.wait();
        }
    }
}

/// The result of one CLI run.
pub(crate) struct CliRun {
    pub(crate) success: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) elapsed: Duration,
}

/// Runs `outbox-relay <args>` (no stdin, `RUST_LOG=warn`); fails the test if
/// it does not finish within 60 s.
pub(crate) async fn cli(args: &[&str]) -> CliRun {
    let started = std::time::Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(relay_binary())
            .args(args)
            .stdin(Stdio::null())
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("outbox-relay {args:?} did not finish within 60s"))
    .unwrap();
    CliRun {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// `outbox-relay status --json --config <config>`, parsed; panics unless it succeeds.
pub(crate) async fn status_json(config: &Path) -> serde_json::Value {
    let run = cli(&["status", "--json", "--config", config.to_str().unwrap()]).await;
    assert!(run.success, "status --json failed: {}", run.stderr);
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("status --json printed no JSON ({e}): {}", run.stdout))
}

/// The entry of `target` in `status --json` output.
pub(crate) fn status_of<'a>(status: &'a serde_json::Value, target: &str) -> &'a serde_json::Value {
    status
        .as_array()
        .unwrap_or_else(|| panic!("status --json is not an array: {status}"))
        .iter()
        .find(|t| t["target"] == target)
        .unwrap_or_else(|| panic!("no target {target:?} in status: {status}"))
}

/// What a record file (a `file` or `count` target's output) holds, read
/// line by line without trusting a line to be whole.
#[derive(Debug, Default)]
pub(crate) struct Received {
    /// Every line that parses as a JSON object with an `id`, in file order.
    pub(crate) lines: Vec<serde_json::Value>,
    /// Lines that do not parse (torn or interleaved writes).
    pub(crate) torn: usize,
}

impl Received {
    pub(crate) fn read(path: &Path) -> Self {
        let Ok(bytes) = std::fs::read(path) else {
            return Self::default();
        };
        let mut received = Self::default();
        for raw in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<serde_json::Value>(raw) {
                Ok(v) if v["id"].is_string() => received.lines.push(v),
                _ => received.torn += 1,
            }
        }
        received
    }

    /// Deliveries per message id.
    pub(crate) fn per_id(&self) -> HashMap<String, usize> {
        let mut per_id = HashMap::new();
        for line in &self.lines {
            *per_id
                .entry(line["id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        per_id
    }

    /// Lines beyond the first delivery of each id.
    pub(crate) fn duplicates(&self) -> usize {
        self.lines.len() - self.per_id().len()
    }

    /// How many of `ids` never arrived.
    pub(crate) fn lost<'a>(&self, ids: impl IntoIterator<Item = &'a String>) -> usize {
        let per_id = self.per_id();
        ids.into_iter()
            .filter(|id| !per_id.contains_key(*id))
            .count()
    }
}

/// A tmpfs of `size_kb` mounted on `dir` (created), unmounted when dropped:
/// a small disk that fills up for real (ENOSPC).
pub(crate) struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    pub(crate) fn mount(dir: &Path, size_kb: u64) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_kb}k"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cannot mount a tmpfs on {} (the fault tests run as root; see tests/setup.sh): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// Writes a ballast file until the disk is full, then gives `keep_free`
    /// bytes back; returns its path (remove it to free the space).
    pub(crate) fn fill(&self, keep_free: u64) -> PathBuf {
        use std::io::Write as _;
        let path = self.dir.join("ballast");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        file.set_len(written.saturating_sub(keep_free)).unwrap();
        file.sync_all().unwrap();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a relay killed a moment ago may still hold a file open.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// The libfaketime preload (Debian's `libfaketime`, installed by
/// tests/setup.sh), multi-threaded variant, for a relay whose clock is off.
pub(crate) fn faketime_env(offset: &str) -> Vec<(&'static str, String)> {
    let lib = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("libfaketime is not installed; run `make setup` (tests/setup.sh)");
    vec![
        ("LD_PRELOAD", lib.to_string()),
        ("FAKETIME", offset.to_string()),
        // Timers and `Instant` stay true; only the wall clock is off.
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_string()),
        ("FAKETIME_NO_CACHE", "1".to_string()),
    ]
}

/// The outbox a fault test writes to and watches: a plain pool on the
/// scratch's Postgres database, or the scratch's SQLite file opened as a
/// producer would.
#[derive(Clone)]
pub(crate) enum Outbox {
    Postgres(sqlx::PgPool),
    Sqlite(outbox_relay::storage::sqlite::SqliteStorage),
}

impl From<sqlx::PgPool> for Outbox {
    fn from(pool: sqlx::PgPool) -> Self {
        Self::Postgres(pool)
    }
}

impl From<&sqlx::PgPool> for Outbox {
    fn from(pool: &sqlx::PgPool) -> Self {
        Self::Postgres(pool.clone())
    }
}

impl From<&Outbox> for Outbox {
    fn from(outbox: &Outbox) -> Self {
        outbox.clone()
    }
}

impl Outbox {
    /// The scratch's database, whichever backend it is.
    pub(crate) async fn open(scratch: &outbox_relay_tests::Scratch) -> Self {
        match scratch.pg_database() {
            Some(_) => Self::Postgres(scratch.pg_pool().await),
            None => Self::Sqlite(scratch.storage().await),
        }
    }

    /// The scratch's database, migrated, with `partitions` partitions.
    pub(crate) async fn partitioned(
        scratch: &outbox_relay_tests::Scratch,
        partitions: u32,
    ) -> Self {
        use outbox_relay::storage::Storage as _;
        let outbox = Self::open(scratch).await;
        match &outbox {
            Self::Postgres(_) => {
                scratch
                    .pg_storage()
                    .await
                    .ensure_partitions(partitions)
                    .await
            }
            Self::Sqlite(storage) => storage.ensure_partitions(partitions).await,
        }
        .unwrap();
        outbox
    }
}

/// A producer writing `total` messages made by `make(i)` in transactions of
/// `chunk`, one every `every`: on Postgres through a plain pool (not named
/// `outbox-relay`, so tests can tell the relays' backends from it), on
/// SQLite with `BEGIN IMMEDIATE` as producers.md says.
/// The task returns the ids it committed.
pub(crate) fn produce(
    outbox: impl Into<Outbox>,
    total: usize,
    chunk: usize,
    every: Duration,
    make: impl Fn(usize) -> outbox_relay::NewMessage + Send + 'static,
) -> tokio::task::JoinHandle<Vec<String>> {
    use outbox_relay::storage::Storage as _;
    let outbox = outbox.into();
    tokio::spawn(async move {
        let mut ids = Vec::with_capacity(total);
        let mut i = 0;
        while i < total {
            let messages: Vec<_> = (i..(i + chunk).min(total)).map(&make).collect();
            match &outbox {
                Outbox::Postgres(pool) => {
                    let mut tx = pool.begin().await.unwrap();
                    for message in &messages {
                        outbox_relay::producer::postgres::enqueue(&mut tx, message)
                            .await
                            .unwrap();
                    }
                    tx.commit().await.unwrap();
                }
                Outbox::Sqlite(storage) => storage.save(&messages).await.unwrap(),
            }
            ids.extend(messages.iter().map(|m| m.id.to_string()));
            i += messages.len();
            tokio::time::sleep(every).await;
        }
        ids
    })
}

/// Partitions of `target` whose lease names `pid`'s relay as its owner
/// (owner ids are `<host>-<pid>-<suffix>`; a released lease names nobody).
pub(crate) async fn leases_held(outbox: impl Into<Outbox>, target: &str, pid: u32) -> i64 {
    const SQL: &str =
        "SELECT count(*) FROM outbox_cursors WHERE target = $1 AND lease_owner LIKE $2";
    let owner = format!("%-{pid}-%");
    match outbox.into() {
        Outbox::Postgres(pool) => sqlx::query_scalar(SQL)
            .bind(target)
            .bind(owner)
            .fetch_one(&pool)
            .await
            .unwrap(),
        Outbox::Sqlite(storage) => sqlx::query_scalar(SQL)
            .bind(target)
            .bind(owner)
            .fetch_one(storage.pool())
            .await
            .unwrap(),
    }
}

/// One target of a test config whose plugin (`file`, or the `count` test
/// plugin) records what it delivers to `<out>/<name>.jsonl`.
pub(crate) struct RecordingTarget<'a> {
    pub(crate) name: &'a str,
    pub(crate) plugin: &'a str,
    /// More keys of its plugin config, e.g. `, sleep_ms = 20`.
    pub(crate) config: &'a str,
    /// More lines of its table, e.g. `ordered = true`.
    pub(crate) lines: &'a str,
}

impl<'a> RecordingTarget<'a> {
    pub(crate) const fn file(name: &'a str) -> Self {
        Self {
            name,
            plugin: "file",
            config: "",
            lines: "",
        }
    }
}

/// A config body: every event routed to each of `targets`, then their tables.
pub(crate) fn route_all(out: &Path, targets: &[RecordingTarget<'_>]) -> String {
    let names: Vec<&str> = targets.iter().map(|t| t.name).collect();
    let mut body = format!("\n[[routes]]\nevents = [\"*\"]\ntargets = {names:?}\n");
    for t in targets {
        body.push_str(&format!(
            r#"
[targets.{name}]
plugin = "{plugin}"
config = {{ path = "/out/{name}.jsonl"{config} }}
sandbox = {{ dirs = {{ "/out" = "{out}" }} }}
{lines}
"#,
            name = t.name,
            plugin = t.plugin,
            config = t.config,
            out = out.display(),
            lines = t.lines,
        ));
    }
    body
}

/// `[relay]` lines for a test: quick polling, `lease_ttl` (and the claim
/// timeout) as given, then `extra`.
pub(crate) fn relay_lines(lease_ttl: &str, extra: &str) -> String {
    format!(
        "poll_interval = \"50ms\"\nlease_ttl = \"{lease_ttl}\"\nclaim_timeout = \"{lease_ttl}\"\nshutdown_grace = \"5s\"\n{extra}"
    )
}

/// A plain connection to the SQLite database at `url` that waits up to 30 s
/// for a lock (longer than the relay's 10 s busy timeout): another writer.
pub(crate) async fn sqlite_connection(url: &str) -> sqlx::SqliteConnection {
    use sqlx::Connection as _;
    let options = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(url)
        .unwrap()
        .busy_timeout(Duration::from_secs(30));
    sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap()
}
