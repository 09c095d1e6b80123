//! What every scenario shares: a database of its own (a SQLite file on disk, or
//! a fresh Postgres or MariaDB database), a config, a seeded backlog, producers
//! that enqueue as applications do, an in-process relay whose transports are
//! wrapped by a [`Probe`], and the machine's description.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_trait::async_trait;
use outbox_relay::config::Config;
use outbox_relay::storage::Storage;
use outbox_relay::storage::sqlite::SqliteStorage;
use outbox_relay::transport::{Transport, TransportError, TransportFactory};
use outbox_relay::{Envelope, NewMessage, Outcome};
use outbox_relay_tests::Scratch;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The event name of every benchmark message.
pub const EVENT: &str = "bench.created";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DbKind {
    Sqlite,
    Postgres,
    /// MariaDB (the MySQL storage adapter), at `OUTBOX_TEST_MYSQL_URL` as for the tests.
    #[value(name = "mariadb")]
    MariaDb,
}

impl DbKind {
    pub fn label(self) -> &'static str {
        match self {
            DbKind::Sqlite => "SQLite",
            DbKind::Postgres => "Postgres",
            DbKind::MariaDb => "MariaDB",
        }
    }
}

/// A database of the benchmark's own, dropped (Postgres, MariaDB) or deleted
/// (SQLite file in a temporary directory on the real disk) afterwards.
pub struct BenchDb {
    pub kind: DbKind,
    pub url: String,
    /// Where configs and target output go.
    pub dir: tempfile::TempDir,
    _server: Option<Scratch>,
}

/// The repository root (the tests crate is `<repo>/tests`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

impl BenchDb {
    pub async fn new(kind: DbKind) -> anyhow::Result<Self> {
        // Not /tmp, which may be a tmpfs: SQLite must pay for a real disk.
        let base = repo_root().join("target").join("bench-tmp");
        std::fs::create_dir_all(&base)?;
        let dir = tempfile::Builder::new()
            .prefix("bench-")
            .tempdir_in(&base)?;
        Ok(match kind {
            DbKind::Sqlite => {
                let url = format!("sqlite://{}", dir.path().join("outbox.db").display());
                Self {
                    kind,
                    url,
                    dir,
                    _server: None,
                }
            }
            DbKind::Postgres | DbKind::MariaDb => {
                let scratch = if kind == DbKind::Postgres {
                    Scratch::postgres().await
                } else {
                    // Scratch panics when the server is down: ask first, so
                    // that this scenario fails and the others still run.
                    let admin = outbox_relay_tests::mysql_admin_url();
                    <sqlx::MySqlConnection as sqlx::Connection>::connect(&admin)
                        .await
                        .with_context(|| {
                            format!("MariaDB is not reachable at {admin} (OUTBOX_TEST_MYSQL_URL); start it, e.g. `service mariadb start`")
                        })?;
                    Scratch::mysql().await
                };
                Self {
                    kind,
                    url: scratch.database_url(),
                    dir,
                    _server: Some(scratch),
                }
            }
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `<name>.toml` with this database, the built components, the
    /// given `[relay]` lines (defaults otherwise) and `body`; loads it.
    pub fn config(&self, name: &str, relay: &str, body: &str) -> anyhow::Result<(PathBuf, Config)> {
        let text = outbox_relay_tests::config_text(&self.url, relay, body);
        let path = self.path().join(format!("{name}.toml"));
        std::fs::write(&path, text)?;
        let config = Config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok((path, config))
    }

    pub async fn pg_pool(&self) -> anyhow::Result<sqlx::PgPool> {
        Ok(sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.url)
            .await?)
    }

    /// A pool of `connections` on this server database (`warm`: all of them
    /// opened at once and kept open).
    pub async fn server_pool(&self, connections: u32, warm: bool) -> anyhow::Result<ServerPool> {
        async fn open<DB: sqlx::Database>(
            url: &str,
            connections: u32,
            warm: bool,
        ) -> anyhow::Result<sqlx::Pool<DB>> {
            Ok(sqlx::pool::PoolOptions::<DB>::new()
                .max_connections(connections)
                .min_connections(if warm { connections } else { 0 })
                .connect(url)
                .await?)
        }
        Ok(match self.kind {
            DbKind::Postgres => ServerPool::Pg(open(&self.url, connections, warm).await?),
            DbKind::MariaDb => ServerPool::MySql(open(&self.url, connections, warm).await?),
            DbKind::Sqlite => bail!("SQLite is not a server database"),
        })
    }
}

/// `body` with `pool` bound to the pool of either [`ServerPool`] (type-checked
/// once per driver).
macro_rules! on_pool {
    ($server:expr, $pool:ident => $body:expr) => {
        match $server {
            ServerPool::Pg($pool) => $body,
            ServerPool::MySql($pool) => $body,
        }
    };
}

/// A pool on a server database of the benchmark's own: what differs between
/// Postgres and MariaDB for the scenarios that run on both.
#[derive(Clone)]
pub enum ServerPool {
    Pg(sqlx::PgPool),
    MySql(sqlx::MySqlPool),
}

impl ServerPool {
    /// Runs `sql` (no parameters, or one text parameter `arg`); returns the rows affected.
    pub async fn execute(&self, sql: &str, arg: Option<&str>) -> anyhow::Result<u64> {
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        Ok(on_pool!(self, pool => {
            let query = sqlx::query(sql);
            let query = if let Some(arg) = arg { query.bind(arg) } else { query };
            query.execute(pool).await?.rows_affected()
        }))
    }

    /// Refreshes the planner's statistics of `table` after a bulk insert.
    pub async fn analyze(&self, table: &str) -> anyhow::Result<()> {
        let sql = match self {
            ServerPool::Pg(_) => format!("ANALYZE {table}"),
            ServerPool::MySql(_) => format!("ANALYZE TABLE {table}"),
        };
        self.execute(&sql, None).await?;
        Ok(())
    }

    /// Inserts `n` benchmark messages into `table (id, event_name, payload,
    /// headers)`, [`SEED_ROWS`] rows a statement, each its own transaction:
    /// one array-bound `INSERT … SELECT … FROM UNNEST` on Postgres, one
    /// multi-row `INSERT … VALUES` on MariaDB.
    pub async fn seed_table(&self, table: &str, n: u64, size: usize) -> anyhow::Result<()> {
        let mut i = 0;
        while i < n {
            let end = n.min(i + SEED_ROWS);
            let messages: Vec<NewMessage> = (i..end).map(|k| message(k, size)).collect();
            let headers: Vec<String> = messages
                .iter()
                .map(|m| serde_json::to_string(&m.headers).unwrap_or_else(|_| "{}".into()))
                .collect();
            let columns = format!("INSERT INTO {table} (id, event_name, payload, headers)");
            match self {
                ServerPool::Pg(pool) => {
                    let sql = format!(
                        "{columns} SELECT id, ev, pl, h::jsonb FROM UNNEST($1::uuid[], $2::text[], $3::bytea[], $4::text[]) AS t(id, ev, pl, h)"
                    );
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(messages.iter().map(|m| m.id).collect::<Vec<Uuid>>())
                        .bind(
                            messages
                                .iter()
                                .map(|m| m.event_name.clone())
                                .collect::<Vec<_>>(),
                        )
                        .bind(
                            messages
                                .iter()
                                .map(|m| m.payload.clone())
                                .collect::<Vec<_>>(),
                        )
                        .bind(headers)
                        .execute(pool)
                        .await?;
                }
                ServerPool::MySql(pool) => {
                    let sql = format!(
                        "{columns} VALUES {}",
                        vec!["(?, ?, ?, ?)"; messages.len()].join(", ")
                    );
                    let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for (m, h) in messages.iter().zip(headers) {
                        insert = insert
                            .bind(m.id.to_string())
                            .bind(m.event_name.clone())
                            .bind(m.payload.clone())
                            .bind(h);
                    }
                    insert.execute(pool).await?;
                }
            }
            i = end;
        }
        Ok(())
    }

    /// One message in a transaction of its own on a connection of the pool,
    /// enqueued with the producer API.
    pub async fn commit_one(&self, m: &NewMessage) -> anyhow::Result<()> {
        match self {
            ServerPool::Pg(pool) => commit_pg(&mut *pool.acquire().await?, m).await,
            ServerPool::MySql(pool) => commit_mysql(&mut *pool.acquire().await?, m).await,
        }
    }

    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await);
    }
}

/// Rows of a seeding statement (Postgres binds four arrays; MariaDB 4 ×
/// 2,000 placeholders, about 2 MiB at 1 KiB payloads, well inside its
/// 65,535 placeholders and 16 MiB `max_allowed_packet`).
pub const SEED_ROWS: u64 = 2_000;

/// A producer's own connection, as an application holds one.
pub enum Producer {
    Sqlite(sqlx::SqliteConnection),
    Pg(sqlx::PgConnection),
    MySql(sqlx::MySqlConnection),
}

impl Producer {
    pub async fn connect(db: &BenchDb) -> anyhow::Result<Self> {
        use sqlx::Connection;
        Ok(match db.kind {
            DbKind::Postgres => Producer::Pg(sqlx::PgConnection::connect(&db.url).await?),
            DbKind::MariaDb => Producer::MySql(sqlx::MySqlConnection::connect(&db.url).await?),
            DbKind::Sqlite => {
                // As the relay opens it: WAL, synchronous = NORMAL, a busy timeout.
                let options = sqlx::sqlite::SqliteConnectOptions::from_str(&db.url)?
                    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10));
                Producer::Sqlite(sqlx::SqliteConnection::connect_with(&options).await?)
            }
        })
    }

    /// One single-message transaction, committed.
    pub async fn commit_one(&mut self, m: &NewMessage) -> anyhow::Result<()> {
        use sqlx::Connection;
        match self {
            Producer::Pg(c) => commit_pg(c, m).await,
            Producer::MySql(c) => commit_mysql(c, m).await,
            Producer::Sqlite(c) => {
                // As docs/producers.md says: take the write lock up front.
                let mut tx = c.begin_with("BEGIN IMMEDIATE").await?;
                outbox_relay::producer::sqlite::enqueue(&mut tx, m).await?;
                tx.commit().await?;
                Ok(())
            }
        }
    }
}

async fn commit_pg(c: &mut sqlx::PgConnection, m: &NewMessage) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut tx = c.begin().await?;
    outbox_relay::producer::postgres::enqueue(&mut tx, m).await?;
    tx.commit().await?;
    Ok(())
}

async fn commit_mysql(c: &mut sqlx::MySqlConnection, m: &NewMessage) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut tx = c.begin().await?;
    outbox_relay::producer::mysql::enqueue(&mut tx, m).await?;
    tx.commit().await?;
    Ok(())
}

/// `relay` lines for a config: the batch size when one is forced.
pub fn relay_lines(batch_size: Option<u32>) -> String {
    batch_size.map_or_else(String::new, |b| format!("batch_size = {b}"))
}

/// One target `name` routed every benchmark event, with `plugin` and extra lines.
pub fn target(name: &str, plugin: &str, extra: &str) -> String {
    format!(
        r#"
[[routes]]
events = ["bench.*"]
targets = ["{name}"]

[targets.{name}]
plugin = "{plugin}"
{extra}
"#
    )
}

/// A payload of exactly `size` bytes (at least a small JSON object): JSON with
/// a counter and pseudo-random padding, so nothing compresses it away.
pub fn payload(n: u64, size: usize) -> Vec<u8> {
    let head = format!("{{\"n\":{n},\"pad\":\"");
    let tail = "\"}";
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut out = Vec::with_capacity(size.max(head.len() + tail.len()));
    out.extend_from_slice(head.as_bytes());
    let mut x = n
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    for _ in 0..pad {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.push(ALPHABET[((x >> 33) % ALPHABET.len() as u64) as usize]);
    }
    out.extend_from_slice(tail.as_bytes());
    out
}

/// A benchmark message as an application would enqueue it.
pub fn message(n: u64, size: usize) -> NewMessage {
    NewMessage::new(EVENT, payload(n, size)).with_header("x-bench-run", "1")
}

/// Migrates the database and fixes its partition count (as `migrate` does).
pub async fn migrate(config: &Config) -> anyhow::Result<Arc<dyn Storage>> {
    let storage = outbox_relay::app::open_storage(config).await?;
    storage.ensure_partitions(config.relay.partitions).await?;
    Ok(storage)
}

/// Inserts a backlog of `n` messages into the relay's log, in large
/// transactions (this is set-up, not measured). Returns how long it took.
pub async fn seed_log(
    db: &BenchDb,
    config: &Config,
    n: u64,
    size: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    migrate(config).await?;
    match db.kind {
        DbKind::Sqlite => {
            let storage = SqliteStorage::connect(&db.url).await?;
            let mut i = 0;
            while i < n {
                let chunk: Vec<NewMessage> =
                    (i..n.min(i + 5_000)).map(|k| message(k, size)).collect();
                storage.save(&chunk).await?;
                i += chunk.len() as u64;
            }
        }
        DbKind::Postgres | DbKind::MariaDb => {
            // The relay's table: Postgres's trigger gives each row its
            // partition; on MariaDB the relay sequences the rows itself
            // (in its drain, which pays for it).
            let pool = db.server_pool(4, false).await?;
            pool.seed_table("outbox_messages", n, size).await?;
            pool.analyze("outbox_messages").await?;
            pool.close().await;
        }
    }
    Ok(started.elapsed())
}

/// Counts what the transports it wraps acknowledged, and when.
#[derive(Default)]
pub struct Probe {
    delivered: AtomicU64,
    last_ack: Mutex<Option<Instant>>,
    /// When set, the time each delivered message's batch returned, by id.
    acks: Option<Mutex<Vec<(Uuid, Instant)>>>,
}

impl Probe {
    pub fn new(record_acks: bool) -> Arc<Self> {
        Arc::new(Self {
            acks: record_acks.then(|| Mutex::new(Vec::new())),
            ..Self::default()
        })
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    pub fn last_ack(&self) -> Option<Instant> {
        self.last_ack.lock().ok().and_then(|g| *g)
    }

    pub fn take_acks(&self) -> Vec<(Uuid, Instant)> {
        self.acks
            .as_ref()
            .and_then(|a| a.lock().ok().map(|mut v| std::mem::take(&mut *v)))
            .unwrap_or_default()
    }

    fn record(&self, batch: &[Envelope], outcomes: &[Outcome]) {
        let now = Instant::now();
        let delivered = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Delivered))
            .count();
        self.delivered
            .fetch_add(delivered as u64, Ordering::Relaxed);
        if let Ok(mut last) = self.last_ack.lock() {
            *last = Some(now);
        }
        if let Some(acks) = &self.acks
            && let Ok(mut acks) = acks.lock()
        {
            for (envelope, outcome) in batch.iter().zip(outcomes) {
                if matches!(outcome, Outcome::Delivered) {
                    acks.push((envelope.message.id, now));
                }
            }
        }
    }

    /// Waits until `n` messages were delivered; returns the time of the last ack.
    pub async fn wait_for(&self, n: u64, timeout: Duration) -> anyhow::Result<Instant> {
        let started = Instant::now();
        while self.delivered() < n {
            if started.elapsed() > timeout {
                bail!(
                    "only {} of {n} messages were delivered within {timeout:?}",
                    self.delivered()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.last_ack().context("delivered without an ack time")
    }
}

/// Wraps a factory: every transport it makes reports to the probe.
struct ProbeFactory {
    inner: Arc<dyn TransportFactory>,
    probe: Arc<Probe>,
}

#[async_trait]
impl TransportFactory for ProbeFactory {
    async fn create(&self, target: &str) -> Result<Box<dyn Transport>, TransportError> {
        Ok(Box::new(ProbeTransport {
            inner: self.inner.create(target).await?,
            probe: self.probe.clone(),
        }))
    }
}

struct ProbeTransport {
    inner: Box<dyn Transport>,
    probe: Arc<Probe>,
}

#[async_trait]
impl Transport for ProbeTransport {
    async fn start(&mut self) -> Result<(), TransportError> {
        self.inner.start().await
    }

    async fn deliver(&mut self, batch: &[Envelope]) -> Result<Vec<Outcome>, TransportError> {
        let outcomes = self.inner.deliver(batch).await?;
        self.probe.record(batch, &outcomes);
        Ok(outcomes)
    }
}

/// The native, in-process counterpart of the `null` component (benchmarks only).
pub struct NativeNullFactory;

#[async_trait]
impl TransportFactory for NativeNullFactory {
    async fn create(&self, _target: &str) -> Result<Box<dyn Transport>, TransportError> {
        Ok(Box::new(NativeNull))
    }
}

struct NativeNull;

#[async_trait]
impl Transport for NativeNull {
    async fn deliver(&mut self, batch: &[Envelope]) -> Result<Vec<Outcome>, TransportError> {
        Ok(vec![Outcome::Delivered; batch.len()])
    }
}

/// Which transports the relay uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// The configured components (WebAssembly).
    Configured,
    /// [`NativeNullFactory`] instead.
    NativeNull,
}

/// A relay running in this process, its transports wrapped by a probe.
pub struct Running {
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), outbox_relay::storage::StorageError>>,
    pub storage: Arc<dyn Storage>,
    /// When `run` was started (after plugins were loaded and compiled).
    pub started: Instant,
}

impl Running {
    pub async fn start(config: &Config, sink: Sink, probe: Arc<Probe>) -> anyhow::Result<Self> {
        let mut relay = outbox_relay::app::build_relay(config)
            .await
            .map_err(|e| anyhow::anyhow!("relay did not start: {e}"))?;
        let inner: Arc<dyn TransportFactory> = match sink {
            Sink::Configured => relay.transports.clone(),
            Sink::NativeNull => Arc::new(NativeNullFactory),
        };
        relay.transports = Arc::new(ProbeFactory { inner, probe });
        let storage = relay.storage.clone();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let started = Instant::now();
        let handle = tokio::spawn(relay.run(token));
        Ok(Self {
            shutdown,
            handle,
            storage,
            started,
        })
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .context("the relay did not stop within 30 s")???;
        Ok(())
    }
}

/// Messages the named targets have not passed yet (the relay's own status).
pub async fn lag(storage: &dyn Storage, targets: &[&str]) -> anyhow::Result<i64> {
    let names: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
    Ok(storage.status(&names).await?.iter().map(|s| s.lag).sum())
}

/// The machine and software the figures come from.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, v)| v.trim())
        .to_string();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    json!({
        "cpu": cpu,
        "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory_gib": (mem_kb as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "kernel": kernel,
        "loadavg_at_start": loadavg(),
    })
}

/// The 1, 5 and 15 minute load averages (other work on the machine shows here).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The commit the harness was run from (and whether the tree had changes).
pub fn git_commit() -> String {
    let root = repo_root();
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(&root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = run(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{commit} (with uncommitted changes)")
    } else {
        commit
    }
}

/// Versions of the databases.
pub async fn database_versions() -> Value {
    use sqlx::Connection;
    let pg = match sqlx::PgConnection::connect(&outbox_relay_tests::postgres_admin_url()).await {
        Ok(mut c) => sqlx::query_scalar::<_, String>("SHOW server_version")
            .fetch_one(&mut c)
            .await
            .unwrap_or_else(|e| e.to_string()),
        Err(e) => format!("unreachable: {e}"),
    };
    let mariadb = match sqlx::MySqlConnection::connect(&outbox_relay_tests::mysql_admin_url()).await
    {
        Ok(mut c) => sqlx::query_scalar::<_, String>(
            "SELECT CONCAT(VERSION(), ', innodb_flush_log_at_trx_commit = ', @@innodb_flush_log_at_trx_commit, \
             ', innodb_buffer_pool_size = ', @@innodb_buffer_pool_size DIV 1048576, ' MiB, log_bin = ', @@log_bin)",
        )
        .fetch_one(&mut c)
        .await
        .unwrap_or_else(|e| e.to_string()),
        Err(e) => format!("unreachable: {e}"),
    };
    let sqlite = match sqlx::SqliteConnection::connect("sqlite::memory:").await {
        Ok(mut c) => sqlx::query_scalar::<_, String>("SELECT sqlite_version()")
            .fetch_one(&mut c)
            .await
            .unwrap_or_else(|e| e.to_string()),
        Err(e) => e.to_string(),
    };
    json!({ "postgres": pg, "sqlite": sqlite, "mariadb": mariadb })
}

/// `12345.6` as `12,346`.
pub fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

pub fn rate(n: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}
