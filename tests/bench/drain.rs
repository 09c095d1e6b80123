//! Drain a backlog: through the `null` component (scenario `drain`), through
//! a native in-process null sink (`wasm-overhead`), and with the seed's
//! algorithm against the same database (`seed-baseline`).

use std::time::{Duration, Instant};

use outbox_relay::config::Config;
use outbox_relay::message::{Message, decode_headers};
use outbox_relay::{Envelope, Outcome};
use serde_json::{Value, json};

use crate::setup::{
    BenchDb, DbKind, Probe, Running, ServerPool, Sink, lag, relay_lines, seed_log, target,
    thousands,
};

#[derive(Debug, Clone, Copy)]
pub struct DrainParams {
    pub messages: u64,
    pub payload: usize,
    pub batch_size: Option<u32>,
}

/// One drain of a backlog by the relay.
#[derive(Debug, Clone)]
pub struct DrainRun {
    pub kind: DbKind,
    pub sink: Sink,
    pub messages: u64,
    pub elapsed: Duration,
    pub rate: f64,
    pub seeded_in: Duration,
    pub lag_after: i64,
}

impl DrainRun {
    pub fn json(&self) -> Value {
        json!({
            "database": self.kind.label(),
            "sink": match self.sink { Sink::Configured => "null component (wasm)", Sink::NativeNull => "native null sink" },
            "messages": self.messages,
            "elapsed_s": secs(self.elapsed),
            "messages_per_s": self.rate.round(),
            "seeded_in_s": secs(self.seeded_in),
            "lag_after": self.lag_after,
        })
    }

    pub fn value(&self) -> String {
        format!("{} msg/s", thousands(self.rate))
    }
}

pub fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// The config of a drain: one target `null` on the `null` component.
pub fn drain_config(db: &BenchDb, params: &DrainParams) -> anyhow::Result<Config> {
    Ok(db
        .config(
            "drain",
            &relay_lines(params.batch_size),
            &target("null", "null", ""),
        )?
        .1)
}

/// Seeds `db` with the backlog and lets the relay drain it through `sink`.
pub async fn drain(db: &BenchDb, params: &DrainParams, sink: Sink) -> anyhow::Result<DrainRun> {
    let config = drain_config(db, params)?;
    let seeded_in = seed(db, &config, params).await?;
    drain_seeded(db, &config, params, sink, seeded_in).await
}

pub async fn seed(db: &BenchDb, config: &Config, params: &DrainParams) -> anyhow::Result<Duration> {
    eprintln!(
        "  seeding {} messages of {} bytes into {} ...",
        thousands(params.messages as f64),
        params.payload,
        db.kind.label()
    );
    let seeded_in = seed_log(db, config, params.messages, params.payload).await?;
    eprintln!("  seeded in {:.1} s", seeded_in.as_secs_f64());
    Ok(seeded_in)
}

/// Moves the cursors back to the start of the log (no relay running), so
/// the same backlog can be drained again.
pub async fn rewind(db: &BenchDb) -> anyhow::Result<()> {
    match db.kind {
        DbKind::Sqlite => {
            let storage = outbox_relay::storage::sqlite::SqliteStorage::connect(&db.url).await?;
            sqlx::query(
                "UPDATE outbox_cursors SET position = 0, lease_owner = NULL, lease_expires_ms = 0",
            )
            .execute(storage.pool())
            .await?;
            storage.pool().close().await;
        }
        DbKind::Postgres | DbKind::MariaDb => {
            let pool = db.server_pool(1, false).await?;
            pool.execute(
                "UPDATE outbox_cursors SET position_xid = 0, position_seq = 0, lease_owner = NULL, lease_expires_ms = 0",
                None,
            )
            .await?;
            if let ServerPool::Pg(_) = pool {
                pool.execute("VACUUM ANALYZE outbox_cursors", None).await?;
            }
            pool.close().await;
        }
    }
    Ok(())
}

/// Lets the relay drain the backlog already in `db` through `sink`.
pub async fn drain_seeded(
    db: &BenchDb,
    config: &Config,
    params: &DrainParams,
    sink: Sink,
    seeded_in: Duration,
) -> anyhow::Result<DrainRun> {
    let probe = Probe::new(false);
    let relay = Running::start(config, sink, probe.clone()).await?;
    let started = relay.started;
    let last = probe
        .wait_for(params.messages, Duration::from_secs(1800))
        .await?;
    let storage = relay.storage.clone();
    relay.stop().await?;
    let elapsed = last.duration_since(started);
    let run = DrainRun {
        kind: db.kind,
        sink,
        messages: params.messages,
        elapsed,
        rate: crate::setup::rate(params.messages, elapsed),
        seeded_in,
        lag_after: lag(&*storage, &["null"]).await?,
    };
    eprintln!(
        "  {}: {} messages in {:.2} s: {} msg/s (lag after: {})",
        match sink {
            Sink::Configured => "null component",
            Sink::NativeNull => "native null sink",
        },
        thousands(run.messages as f64),
        elapsed.as_secs_f64(),
        thousands(run.rate),
        run.lag_after
    );
    Ok(run)
}

/// MariaDB's sequencing passes alone: what the relay's drain pays before it
/// can read a row (the module docs of `storage/mysql.rs`).
#[derive(Debug, Clone)]
pub struct SequencingRun {
    pub rows: u64,
    pub passes: usize,
    pub elapsed: Duration,
    pub pass_p50: Duration,
    pub pass_max: Duration,
}

impl SequencingRun {
    pub fn rate(&self) -> f64 {
        crate::setup::rate(self.rows, self.elapsed)
    }

    pub fn json(&self) -> Value {
        json!({
            "rows": self.rows,
            "passes": self.passes,
            "elapsed_s": secs(self.elapsed),
            "rows_per_s": self.rate().round(),
            "pass_p50_ms": secs(self.pass_p50 * 1000),
            "pass_max_ms": secs(self.pass_max * 1000),
        })
    }
}

/// Seeds a fresh MariaDB database with the drain's backlog and times
/// `MySqlStorage::sequence` (up to `SEQUENCE_PASS` rows a pass) until every
/// row is sequenced, with no relay running.
pub async fn sequencing(params: &DrainParams) -> anyhow::Result<SequencingRun> {
    use outbox_relay::storage::mysql::MySqlStorage;
    let db = BenchDb::new(DbKind::MariaDb).await?;
    let config = drain_config(&db, params)?;
    seed(&db, &config, params).await?;
    let storage = MySqlStorage::connect(&db.url).await?;
    let mut passes = Vec::new();
    let mut rows = 0;
    let started = Instant::now();
    let mut elapsed = Duration::ZERO;
    loop {
        let pass = Instant::now();
        let n = storage.sequence().await?;
        if n == 0 {
            break;
        }
        passes.push(pass.elapsed());
        elapsed = started.elapsed();
        rows += n;
    }
    storage.pool().close().await;
    passes.sort();
    let run = SequencingRun {
        rows,
        passes: passes.len(),
        elapsed,
        pass_p50: passes.get(passes.len() / 2).copied().unwrap_or_default(),
        pass_max: passes.last().copied().unwrap_or_default(),
    };
    eprintln!(
        "  sequencing alone: {} rows in {} passes, {:.2} s: {} rows/s (a pass: p50 {:.1} ms, max {:.1} ms)",
        thousands(rows as f64),
        run.passes,
        elapsed.as_secs_f64(),
        thousands(run.rate()),
        run.pass_p50.as_secs_f64() * 1000.0,
        run.pass_max.as_secs_f64() * 1000.0
    );
    Ok(run)
}

/// One run of the seed's algorithm.
#[derive(Debug, Clone)]
pub struct BaselineRun {
    pub poll: Duration,
    pub time_box: Duration,
    pub seeded: u64,
    pub published: u64,
    pub batches: u64,
    pub elapsed: Duration,
    pub rate: f64,
    pub drained: bool,
}

impl BaselineRun {
    pub fn json(&self) -> Value {
        json!({
            "poll_interval_s": self.poll.as_secs_f64(),
            "time_box_s": self.time_box.as_secs_f64(),
            "backlog": self.seeded,
            "published": self.published,
            "batches": self.batches,
            "elapsed_s": secs(self.elapsed),
            "messages_per_s": (self.rate * 10.0).round() / 10.0,
            "drained_the_backlog": self.drained,
        })
    }
}

/// The seed's algorithm on one server: its table, as `spakky-outbox` models
/// `OutboxMessage`, and its statements.
pub struct SeedSql {
    /// Makes the table; the index on pending rows is our addition, generous
    /// to the baseline.
    schema: &'static [&'static str],
    /// `fetch_pending(limit, max_retry)`: claim a batch by stamping
    /// `claimed_at`, skipping rows another relay holds, and taking back
    /// claims older than `claim_timeout_seconds` (300). Parameters
    /// `max_retry` (5) and `limit`; the rows are `(id, event_name, payload,
    /// headers, created_at_ms)`.
    claim: &'static str,
    /// On MariaDB, which has no `UPDATE … RETURNING` (nor an `UPDATE` of a
    /// table its subquery reads): the claimed rows' stamp, in the claim's
    /// transaction, `{ids}` standing for their placeholders.
    stamp: Option<&'static str>,
    /// `mark_published(id)`, one autocommitted statement per message.
    published: &'static str,
    /// `increment_retry(id)`.
    retry: &'static str,
    /// How the row is shown in the result (`baseline_algorithm`).
    pub summary: &'static str,
}

impl SeedSql {
    pub fn of(kind: DbKind) -> anyhow::Result<&'static SeedSql> {
        match kind {
            DbKind::Postgres => Ok(&PG_SEED),
            DbKind::MariaDb => Ok(&MARIADB_SEED),
            DbKind::Sqlite => anyhow::bail!("the seed baseline runs on Postgres and MariaDB"),
        }
    }
}

const PG_SEED: SeedSql = SeedSql {
    schema: &[
        "DROP TABLE IF EXISTS seed_outbox",
        "CREATE TABLE seed_outbox (
            id           UUID PRIMARY KEY,
            event_name   TEXT NOT NULL,
            payload      BYTEA NOT NULL,
            headers      JSONB NOT NULL DEFAULT '{}',
            created_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
            published_at TIMESTAMPTZ,
            retry_count  INTEGER NOT NULL DEFAULT 0,
            claimed_at   TIMESTAMPTZ
        )",
        "CREATE INDEX seed_outbox_pending ON seed_outbox (created_at) WHERE published_at IS NULL",
    ],
    claim: "UPDATE seed_outbox SET claimed_at = now()
        WHERE id IN (
            SELECT id FROM seed_outbox
            WHERE published_at IS NULL AND retry_count < $1
              AND (claimed_at IS NULL OR claimed_at < now() - interval '300 seconds')
            ORDER BY created_at
            LIMIT $2
            FOR UPDATE SKIP LOCKED)
        RETURNING id::text, event_name, payload, headers::text,
                  (extract(epoch FROM created_at) * 1000)::bigint",
    stamp: None,
    published: "UPDATE seed_outbox SET published_at = now() WHERE id = $1::uuid",
    retry: "UPDATE seed_outbox SET retry_count = retry_count + 1 WHERE id = $1::uuid",
    summary: "UPDATE seed_outbox SET claimed_at = now() WHERE id IN (SELECT ... ORDER BY created_at LIMIT 100 FOR UPDATE SKIP LOCKED) RETURNING ...; then per message: deliver a batch of 1 to the null component, UPDATE ... SET published_at = now() WHERE id = $1 (autocommit); then sleep the poll interval",
};

/// The same on MariaDB: MySQL's types (SQLAlchemy's `Uuid` is a `CHAR` there),
/// no partial indexes (the pending rows' index is `(published_at,
/// created_at)`), and the claim as a locking read and an `UPDATE` in one
/// transaction.
const MARIADB_SEED: SeedSql = SeedSql {
    schema: &[
        "DROP TABLE IF EXISTS seed_outbox",
        "CREATE TABLE seed_outbox (
            id           CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY,
            event_name   TEXT NOT NULL,
            payload      LONGBLOB NOT NULL,
            headers      LONGTEXT NOT NULL DEFAULT ('{}'),
            created_at   DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
            published_at DATETIME(6) NULL,
            retry_count  INT NOT NULL DEFAULT 0,
            claimed_at   DATETIME(6) NULL,
            KEY seed_outbox_pending (published_at, created_at)
        ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin",
    ],
    claim: "SELECT id, event_name, payload, headers,
               CAST(FLOOR(UNIX_TIMESTAMP(created_at) * 1000) AS SIGNED)
        FROM seed_outbox
        WHERE published_at IS NULL AND retry_count < ?
          AND (claimed_at IS NULL OR claimed_at < NOW(6) - INTERVAL 300 SECOND)
        ORDER BY created_at
        LIMIT ?
        FOR UPDATE SKIP LOCKED",
    stamp: Some("UPDATE seed_outbox SET claimed_at = NOW(6) WHERE id IN ({ids})"),
    published: "UPDATE seed_outbox SET published_at = NOW(6) WHERE id = ?",
    retry: "UPDATE seed_outbox SET retry_count = retry_count + 1 WHERE id = ?",
    summary: "BEGIN; SELECT ... FROM seed_outbox WHERE published_at IS NULL ... ORDER BY created_at LIMIT 100 FOR UPDATE SKIP LOCKED; UPDATE seed_outbox SET claimed_at = NOW(6) WHERE id IN (...); COMMIT; then per message: deliver a batch of 1 to the null component, UPDATE ... SET published_at = NOW(6) WHERE id = ? (autocommit); then sleep the poll interval",
};

/// A claimed row: id, event name, payload, headers (JSON), created_at in ms.
type SeedRow = (String, String, Vec<u8>, String, i64);

/// Claims up to `limit` rows with the seed's `fetch_pending`.
async fn claim(pool: &ServerPool, sql: &SeedSql, limit: i64) -> anyhow::Result<Vec<SeedRow>> {
    const MAX_RETRY: i32 = 5;
    match pool {
        ServerPool::Pg(pool) => Ok(sqlx::query_as(sql.claim)
            .bind(MAX_RETRY)
            .bind(limit)
            .fetch_all(pool)
            .await?),
        ServerPool::MySql(pool) => {
            let mut tx = pool.begin().await?;
            let rows: Vec<SeedRow> = sqlx::query_as(sql.claim)
                .bind(MAX_RETRY)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
            if let (Some(stamp), false) = (sql.stamp, rows.is_empty()) {
                let stamp = stamp.replace("{ids}", &vec!["?"; rows.len()].join(","));
                let mut update = sqlx::query(sqlx::AssertSqlSafe(stamp));
                for row in &rows {
                    update = update.bind(&row.0);
                }
                update.execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(rows)
        }
    }
}

/// Runs the seed's relay loop against `db` (Postgres or MariaDB): claim a
/// batch of `batch_size` (100); send each message alone to the same `null`
/// component the relay uses; one `mark_published` `UPDATE` per message; then
/// sleep `poll`, full batch or not. Stops when the backlog is drained or
/// after `time_box`.
pub async fn seed_baseline(
    db: &BenchDb,
    config: &Config,
    params: &DrainParams,
    poll: Duration,
    time_box: Duration,
) -> anyhow::Result<BaselineRun> {
    let sql = SeedSql::of(db.kind)?;
    let pool = db.server_pool(4, false).await?;
    for statement in sql.schema {
        pool.execute(statement, None).await?;
    }
    // Enough for the time box at any plausible rate, at most the relay's backlog.
    eprintln!(
        "  seeding {} messages into seed_outbox ...",
        thousands(params.messages as f64)
    );
    pool.seed_table("seed_outbox", params.messages, params.payload)
        .await?;
    pool.analyze("seed_outbox").await?;

    // The same component, instantiated the way the relay does it.
    let relay = outbox_relay::app::build_relay(config)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut transport = relay
        .transports
        .create("null")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    transport
        .start()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    let batch_size = i64::from(params.batch_size.unwrap_or(100));
    eprintln!(
        "  seed algorithm, poll {} s, for up to {} s ...",
        poll.as_secs_f64(),
        time_box.as_secs()
    );
    let started = Instant::now();
    let mut last_publish = started;
    let mut published = 0u64;
    let mut batches = 0u64;
    let mut drained = false;
    while started.elapsed() < time_box {
        let rows = claim(&pool, sql, batch_size).await?;
        if rows.is_empty() {
            drained = true;
            break;
        }
        batches += 1;
        for (id, event_name, payload, headers, created_at_ms) in rows {
            let envelope = Envelope {
                message: Message {
                    seq: 0,
                    xid: 0,
                    id: id.parse()?,
                    event_name,
                    partition_key: None,
                    partition: 0,
                    payload,
                    headers: decode_headers(&headers).map_err(|e| anyhow::anyhow!(e))?,
                    created_at_ms,
                },
                attempt: 1,
            };
            let outcome = transport
                .deliver(std::slice::from_ref(&envelope))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if matches!(outcome.first(), Some(Outcome::Delivered)) {
                pool.execute(sql.published, Some(&id)).await?;
                published += 1;
                last_publish = Instant::now();
            } else {
                pool.execute(sql.retry, Some(&id)).await?;
            }
        }
        if !poll.is_zero() {
            tokio::time::sleep(poll).await;
        }
    }
    let elapsed = if drained {
        last_publish.duration_since(started)
    } else {
        started.elapsed()
    };
    pool.close().await;
    let run = BaselineRun {
        poll,
        time_box,
        seeded: params.messages,
        published,
        batches,
        elapsed,
        rate: crate::setup::rate(published, elapsed),
        drained,
    };
    eprintln!(
        "  published {} in {:.1} s: {:.1} msg/s",
        thousands(published as f64),
        elapsed.as_secs_f64(),
        run.rate
    );
    Ok(run)
}
