//! Drain a backlog: through the `null` component (scenario `drain`), through
//! a native in-process null sink (`wasm-overhead`), and with the seed's
//! algorithm against the same database (`seed-baseline`).

use std::time::{Duration, Instant};

use outbox_relay::config::Config;
use outbox_relay::message::{Message, decode_headers};
use outbox_relay::{Envelope, Outcome};
use serde_json::{Value, json};
use sqlx::Row;

use crate::setup::{
    BenchDb, DbKind, Probe, Running, Sink, lag, relay_lines, seed_log, seed_pg_table, target,
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
        DbKind::Postgres => {
            let pool = db.pg_pool().await?;
            sqlx::query(
                "UPDATE outbox_cursors SET position_xid = 0, position_seq = 0, lease_owner = NULL, lease_expires_ms = 0",
            )
            .execute(&pool)
            .await?;
            sqlx::query("VACUUM ANALYZE outbox_cursors")
                .execute(&pool)
                .await?;
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

/// The seed's table, as `spakky-outbox` models `OutboxMessage`. The partial
/// index on pending rows is our addition, generous to the baseline.
const SEED_SCHEMA: &[&str] = &[
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
];

/// `fetch_pending(limit, max_retry)`: claim a batch by stamping `claimed_at`,
/// skipping rows another relay holds, and taking back claims older than
/// `claim_timeout_seconds` (300).
const SEED_CLAIM: &str = "UPDATE seed_outbox SET claimed_at = now()
    WHERE id IN (
        SELECT id FROM seed_outbox
        WHERE published_at IS NULL AND retry_count < $1
          AND (claimed_at IS NULL OR claimed_at < now() - interval '300 seconds')
        ORDER BY created_at
        LIMIT $2
        FOR UPDATE SKIP LOCKED)
    RETURNING id, event_name, payload, headers::text AS headers,
              (extract(epoch FROM created_at) * 1000)::bigint AS created_at_ms";

/// Runs the seed's relay loop against `db` (Postgres): claim a batch of
/// `batch_size` (100); send each message alone to the same `null` component
/// the relay uses; one `mark_published` `UPDATE` per message; then sleep
/// `poll`, full batch or not. Stops when the backlog is drained or after
/// `time_box`.
pub async fn seed_baseline(
    db: &BenchDb,
    config: &Config,
    params: &DrainParams,
    poll: Duration,
    time_box: Duration,
) -> anyhow::Result<BaselineRun> {
    let pool = db.pg_pool().await?;
    for statement in SEED_SCHEMA {
        sqlx::query(*statement).execute(&pool).await?;
    }
    // Enough for the time box at any plausible rate, at most the relay's backlog.
    eprintln!(
        "  seeding {} messages into seed_outbox ...",
        thousands(params.messages as f64)
    );
    seed_pg_table(
        &pool,
        "INSERT INTO seed_outbox (id, event_name, payload, headers)
         SELECT id, ev, pl, h::jsonb FROM UNNEST($1::uuid[], $2::text[], $3::bytea[], $4::text[]) AS t(id, ev, pl, h)",
        params.messages,
        params.payload,
    )
    .await?;
    sqlx::query("ANALYZE seed_outbox").execute(&pool).await?;

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
        let rows = sqlx::query(SEED_CLAIM)
            .bind(5i32)
            .bind(batch_size)
            .fetch_all(&pool)
            .await?;
        if rows.is_empty() {
            drained = true;
            break;
        }
        batches += 1;
        for row in rows {
            let id: uuid::Uuid = row.try_get("id")?;
            let headers: String = row.try_get("headers")?;
            let envelope = Envelope {
                message: Message {
                    seq: 0,
                    xid: 0,
                    id,
                    event_name: row.try_get("event_name")?,
                    partition_key: None,
                    partition: 0,
                    payload: row.try_get("payload")?,
                    headers: decode_headers(&headers).map_err(|e| anyhow::anyhow!(e))?,
                    created_at_ms: row.try_get("created_at_ms")?,
                },
                attempt: 1,
            };
            let outcome = transport
                .deliver(std::slice::from_ref(&envelope))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if matches!(outcome.first(), Some(Outcome::Delivered)) {
                sqlx::query("UPDATE seed_outbox SET published_at = now() WHERE id = $1")
                    .bind(id)
                    .execute(&pool)
                    .await?;
                published += 1;
                last_publish = Instant::now();
            } else {
                sqlx::query("UPDATE seed_outbox SET retry_count = retry_count + 1 WHERE id = $1")
                    .bind(id)
                    .execute(&pool)
                    .await?;
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
