//! `adopted`: a backlog in spakky-outbox's own table, drained by the seed's
//! real relay (spakky-outbox 6.4's `OutboxRelayBackgroundService` with a
//! transport that does nothing: tests/adopt/spakky/seed_bench.py, at poll
//! 0 s and at its default 1 s), and by outbox-relay through adoption
//! (`adopt spakky --backfill`, then the `null` component), on the same
//! Postgres database in the same run. The `seed-baseline` scenario is an
//! emulation of the seed's algorithm; this one runs the seed itself.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use outbox_relay::adopt::{Adoption, Database, Shape};
use serde_json::{Value, json};

use crate::report::{Row, ScenarioResult};
use crate::setup::{BenchDb, DbKind, Probe, Running, Sink, relay_lines, thousands};

/// spakky-sqlalchemy's table, with the index its model declares.
const INDEX_DDL: &str = "CREATE INDEX ix_spakky_event_outbox_published_at_created_at
    ON spakky_event_outbox (published_at, created_at)";

fn spakky_python() -> anyhow::Result<PathBuf> {
    outbox_relay_tests::spakky::python().map_err(anyhow::Error::msg)
}

/// `n` pending rows shaped as spakky writes them (JSON payloads of about
/// `size` bytes, a `traceparent` header).
async fn fill(pool: &sqlx::PgPool, n: u64, size: usize) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO spakky_event_outbox (id, event_name, payload, headers, created_at, retry_count)
         SELECT gen_random_uuid(), 'OrderPlaced',
                convert_to('{\"order_id\":' || i || ',\"note\":\"' || repeat('x', $2) || '\"}', 'UTF8'),
                json_build_object('traceparent', '00-' || md5(i::text) || '-' || substr(md5(i::text), 1, 16) || '-01'),
                now() - ($1 - i) * interval '1 microsecond', 0
         FROM generate_series(1, $1) AS i",
    )
    .bind(n as i64)
    .bind(size.saturating_sub(40) as i32)
    .execute(pool)
    .await?;
    Ok(())
}

/// The seed's relay at `poll` seconds: rows/s and its JSON line.
fn seed_relay(url: &str, poll: f64) -> anyhow::Result<(f64, Value)> {
    let script = format!("{}/seed_bench.py", outbox_relay_tests::spakky::APPS);
    let out = std::process::Command::new(spakky_python()?)
        .arg(script)
        .args([
            "--database",
            url,
            "--poll",
            &poll.to_string(),
            "--timeout",
            "900",
        ])
        .current_dir(outbox_relay_tests::spakky::APPS)
        .output()?;
    if !out.status.success() {
        bail!(
            "seed_bench.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8(out.stdout)?;
    let line = stdout
        .lines()
        .last()
        .context("seed_bench.py printed nothing")?;
    let v: Value = serde_json::from_str(line)?;
    if v["drained"] != true {
        bail!("the seed's relay did not drain the backlog: {line}");
    }
    Ok((v["rows_per_s"].as_f64().unwrap_or(0.0), v))
}

pub async fn scenario(n: u64, size: usize) -> anyhow::Result<ScenarioResult> {
    let db = BenchDb::new(DbKind::Postgres).await?;
    let pool = db.pg_pool().await?;
    sqlx::raw_sql(outbox_relay_tests::spakky::TABLE_PG)
        .execute(&pool)
        .await?;
    sqlx::raw_sql(INDEX_DDL).execute(&pool).await?;
    eprintln!(
        "  {} pending spakky rows of about {size} B ...",
        thousands(n as f64)
    );
    fill(&pool, n, size).await?;
    let reset =
        "UPDATE spakky_event_outbox SET published_at = NULL, claimed_at = NULL, retry_count = 0";

    let mut seed = Vec::new();
    for poll in [0.0, 1.0] {
        eprintln!("  the seed's relay, poll {poll} s ...");
        let (rate, line) = tokio::task::block_in_place(|| seed_relay(&db.url, poll))?;
        eprintln!("  seed relay (poll {poll} s): {} rows/s", thousands(rate));
        seed.push((poll, rate, line));
        sqlx::query(reset).execute(&pool).await?;
    }

    // outbox-relay: adopt with a backfill, then drain to the `null` component.
    let body = r#"
[[routes]]
events = ["*"]
targets = ["sink"]

[targets.sink]
plugin = "null"
"#;
    let (_, config) = db.config("adopted", &relay_lines(None), body)?;
    let database = Database::open(&config).await?;
    let adoption = Adoption {
        table: "spakky_event_outbox".into(),
        shape: Shape::Spakky,
    };
    let started = Instant::now();
    let copied = database.adopt(&adoption, true).await?.copied;
    let backfilled = started.elapsed();
    if copied != n as i64 {
        bail!("the backfill copied {copied} of {n} rows");
    }
    let probe = Probe::new(false);
    let relay = Running::start(&config, Sink::Configured, probe.clone()).await?;
    let last = probe.wait_for(n, Duration::from_secs(900)).await;
    relay.stop().await?;
    let elapsed = last?.duration_since(started);
    let ours = crate::setup::rate(n, elapsed);
    eprintln!(
        "  outbox-relay via adopt --backfill: {} rows in {:.2} s ({:.2} s of it the backfill): {} msg/s",
        thousands(n as f64),
        elapsed.as_secs_f64(),
        backfilled.as_secs_f64(),
        thousands(ours)
    );

    let (_, seed0, _) = seed[0];
    let (_, seed1, _) = seed[1];
    let ratio = ours / seed0;
    let rows = vec![
        Row::new(
            "adopted",
            format!(
                "{} pending rows in spakky_event_outbox: the seed's real relay (spakky-outbox 6.4, null transport), poll 0 s, Postgres",
                thousands(n as f64)
            ),
            format!("{} rows/s", thousands(seed0)),
        )
        .note("OutboxRelayBackgroundService, batch 100: one claim UPDATE per batch, one transaction per row"),
        Row::new(
            "adopted",
            "the same, the seed's default poll of 1 s",
            format!("{} rows/s", thousands(seed1)),
        ),
        Row::new(
            "adopted",
            "outbox-relay: `adopt spakky --backfill`, then the `null` component, same rows, same database",
            format!("{} msg/s", thousands(ours)),
        )
        .ratio(format!("{ratio:.1}× the seed at poll 0 s, {:.0}× at 1 s", ours / seed1))
        .target("≥ 20× the seed at poll 0 s", ratio >= 20.0)
        .note(format!(
            "timed from the start of the adoption: the backfill (one INSERT … SELECT, in the trigger's transaction) took {:.2} s of {:.2} s",
            backfilled.as_secs_f64(),
            elapsed.as_secs_f64()
        )),
    ];
    Ok(ScenarioResult {
        name: "adopted",
        params: json!({ "rows": n, "payload_bytes": size }),
        data: json!({
            "seed": seed.iter().map(|(poll, rate, line)| json!({ "poll_s": poll, "rows_per_s": rate, "run": line })).collect::<Vec<_>>(),
            "outbox_relay": { "messages_per_s": ours.round(), "elapsed_s": elapsed.as_secs_f64(), "backfill_s": backfilled.as_secs_f64() },
            "ratio_poll_0": ratio,
        }),
        rows,
    })
}
