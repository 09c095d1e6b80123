//! Fan-out and the read ceiling (issue 18's measurements, before its fix):
//!
//! - `fanout`: one backlog drained to 1, 4 and 16 `null` targets, each
//!   count a fresh set of targets (a new target starts from the oldest
//!   message), so every run reads the same log from its start. Messages/s
//!   is the backlog over the time until every target has every message;
//!   deliveries/s counts each target's copy.
//! - `read-ceiling`: in the same run, the database's own streaming read of
//!   the same rows and columns the relay reads, in the relay's order:
//!   Postgres `COPY (SELECT … ORDER BY xact_id, seq) TO STDOUT (FORMAT
//!   binary)` through sqlx, SQLite a plain `SELECT` loop.

use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use serde_json::{Value, json};

use crate::drain::{DrainParams, secs};
use crate::setup::{BenchDb, DbKind, Probe, Running, Sink, relay_lines, thousands};

/// One fan-out drain.
pub struct FanoutRun {
    pub targets: u32,
    pub messages: u64,
    pub elapsed: Duration,
}

impl FanoutRun {
    pub fn messages_per_s(&self) -> f64 {
        crate::setup::rate(self.messages, self.elapsed)
    }

    pub fn json(&self) -> Value {
        json!({
            "targets": self.targets,
            "messages": self.messages,
            "elapsed_s": secs(self.elapsed),
            "messages_per_s": self.messages_per_s().round(),
            "deliveries_per_s": (self.messages_per_s() * f64::from(self.targets)).round(),
        })
    }
}

/// `n` `null` targets named `f<n>_<i>`, all routed every benchmark event.
fn targets_toml(n: u32) -> String {
    let names: Vec<String> = (0..n).map(|i| format!("\"f{n}_{i}\"")).collect();
    let mut body = format!(
        "[[routes]]\nevents = [\"bench.*\"]\ntargets = [{}]\n",
        names.join(", ")
    );
    for i in 0..n {
        body.push_str(&format!("\n[targets.f{n}_{i}]\nplugin = \"null\"\n"));
    }
    body
}

/// Drains the backlog already in `db` (`params.messages` of it) to `n`
/// fresh `null` targets.
pub async fn fanout(db: &BenchDb, params: &DrainParams, n: u32) -> anyhow::Result<FanoutRun> {
    let (_, config) = db.config(
        &format!("fanout-{n}"),
        &relay_lines(params.batch_size),
        &targets_toml(n),
    )?;
    let probe = Probe::new(false);
    let relay = Running::start(&config, Sink::Configured, probe.clone()).await?;
    let started = relay.started;
    let last = probe
        .wait_for(params.messages * u64::from(n), Duration::from_secs(3600))
        .await;
    relay.stop().await?;
    let elapsed = last?.duration_since(started);
    let run = FanoutRun {
        targets: n,
        messages: params.messages,
        elapsed,
    };
    eprintln!(
        "  {} targets: {} messages in {:.2} s: {} msg/s, {} deliveries/s",
        n,
        thousands(params.messages as f64),
        elapsed.as_secs_f64(),
        thousands(run.messages_per_s()),
        thousands(run.messages_per_s() * f64::from(n))
    );
    Ok(run)
}

/// The database's own streaming read of the log: (rows, time).
pub async fn read_ceiling(db: &BenchDb) -> anyhow::Result<(u64, Duration)> {
    match db.kind {
        DbKind::Postgres => {
            let pool = db.pg_pool().await?;
            let mut conn = pool.acquire().await?;
            let started = Instant::now();
            let mut copy = conn
                .copy_out_raw(
                    "COPY (SELECT seq, xact_id, id, event_name, partition_key, payload, headers, created_at_ms \
                     FROM outbox_messages ORDER BY xact_id, seq) TO STDOUT (FORMAT binary)",
                )
                .await?;
            let mut bytes = 0u64;
            while let Some(chunk) = copy.try_next().await? {
                bytes += chunk.len() as u64;
            }
            let elapsed = started.elapsed();
            drop(copy);
            let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_messages")
                .fetch_one(&mut *conn)
                .await?;
            eprintln!(
                "  COPY … TO STDOUT (binary): {rows} rows, {} MiB in {:.2} s",
                bytes >> 20,
                elapsed.as_secs_f64()
            );
            Ok((rows as u64, elapsed))
        }
        DbKind::MariaDb => anyhow::bail!("fanout does not run on MariaDB yet"),
        DbKind::Sqlite => {
            let storage = outbox_relay::storage::sqlite::SqliteStorage::connect(&db.url).await?;
            let started = Instant::now();
            let mut rows = sqlx::query(
                "SELECT seq, id, event_name, partition_key, payload, headers, created_at_ms \
                 FROM outbox_messages ORDER BY seq",
            )
            .fetch(storage.pool());
            let mut n = 0u64;
            while rows.try_next().await?.is_some() {
                n += 1;
            }
            let elapsed = started.elapsed();
            eprintln!("  SELECT loop: {n} rows in {:.2} s", elapsed.as_secs_f64());
            Ok((n, elapsed))
        }
    }
}
