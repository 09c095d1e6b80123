//! Latency at a steady rate on a server database (Postgres, MariaDB): from the
//! producer's commit returning to the transport's ack (the `null` component's
//! `deliver` returning).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::drain::secs;
use crate::setup::{
    BenchDb, DbKind, Probe, Running, Sink, message, relay_lines, target, thousands,
};

pub struct LatencyRun {
    pub kind: DbKind,
    pub rate_asked: u32,
    pub rate_achieved: f64,
    pub window: Duration,
    pub messages: usize,
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
    pub mean: Duration,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

impl LatencyRun {
    pub fn json(&self) -> Value {
        json!({
            "database": self.kind.label(),
            "rate_asked_per_s": self.rate_asked,
            "rate_achieved_per_s": self.rate_achieved.round(),
            "window_s": secs(self.window),
            "messages": self.messages,
            "p50_ms": ms(self.p50),
            "p95_ms": ms(self.p95),
            "p99_ms": ms(self.p99),
            "p99_9_ms": ms(self.p999),
            "max_ms": ms(self.max),
            "mean_ms": ms(self.mean),
        })
    }

    pub fn value(&self) -> String {
        format!(
            "p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms",
            ms(self.p50),
            ms(self.p95),
            ms(self.p99)
        )
    }
}

/// The producers' connection pool: enough connections that commits, each
/// waiting for its log flush, never hold the rate back.
const PRODUCERS: u32 = 32;

pub async fn latency(
    kind: DbKind,
    rate: u32,
    window: Duration,
    size: usize,
    batch_size: Option<u32>,
) -> anyhow::Result<LatencyRun> {
    let db = BenchDb::new(kind).await?;
    let (_, config) = db.config(
        "latency",
        &relay_lines(batch_size),
        &target("null", "null", ""),
    )?;
    crate::setup::migrate(&config).await?;
    let probe = Probe::new(true);
    let relay = Running::start(&config, Sink::Configured, probe.clone()).await?;

    let pool = db.server_pool(PRODUCERS, true).await?;
    // Warm up: the component instance and the pool's connections.
    let mut warmups = Vec::new();
    for i in 0..PRODUCERS {
        let pool = pool.clone();
        warmups.push(tokio::spawn(async move {
            pool.commit_one(&message(u64::from(i), size)).await
        }));
    }
    for w in warmups {
        w.await??;
    }
    probe
        .wait_for(u64::from(PRODUCERS), Duration::from_secs(30))
        .await?;
    probe.take_acks();
    let warm = probe.delivered();

    eprintln!(
        "  {rate} messages/s on {} for {} s ...",
        kind.label(),
        window.as_secs()
    );
    // Open loop: a message is due every `period`, whether or not the ones
    // before it have committed, each in its own task on the pool.
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let started = Instant::now();
    let deadline = started + window;
    let mut interval = tokio::time::interval_at(started.into(), period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    let mut k = 1u64 << 40;
    loop {
        interval.tick().await;
        if Instant::now() >= deadline {
            break;
        }
        let m = message(k, size);
        k += 1;
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            pool.commit_one(&m).await?;
            anyhow::Ok((m.id, Instant::now()))
        }));
    }
    let mut commits = Vec::new();
    for task in tasks {
        commits.push(task.await??);
    }
    pool.close().await;
    // The rate is what the database took: commits over the time to the last one.
    let window = commits
        .iter()
        .map(|(_, at)| at.duration_since(started))
        .max()
        .unwrap_or_default();
    probe
        .wait_for(warm + commits.len() as u64, Duration::from_secs(120))
        .await?;
    relay.stop().await?;
    let acks: HashMap<Uuid, Instant> = probe.take_acks().into_iter().collect();
    let mut latencies: Vec<Duration> = commits
        .iter()
        .filter_map(|(id, committed)| {
            acks.get(id)
                .map(|a| a.saturating_duration_since(*committed))
        })
        .collect();
    if latencies.len() != commits.len() {
        anyhow::bail!(
            "{} of {} messages have no ack time",
            commits.len() - latencies.len(),
            commits.len()
        );
    }
    latencies.sort();
    let pick = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len().max(1));
        latencies.get(i - 1).copied().unwrap_or_default()
    };
    let total: Duration = latencies.iter().sum();
    let run = LatencyRun {
        kind,
        rate_asked: rate,
        rate_achieved: crate::setup::rate(commits.len() as u64, window),
        window,
        messages: latencies.len(),
        p50: pick(0.50),
        p95: pick(0.95),
        p99: pick(0.99),
        p999: pick(0.999),
        max: latencies.last().copied().unwrap_or_default(),
        mean: total / u32::try_from(latencies.len().max(1)).unwrap_or(u32::MAX),
    };
    eprintln!(
        "  {} messages at {}/s: {}, max {:.1} ms",
        thousands(run.messages as f64),
        thousands(run.rate_achieved),
        run.value(),
        ms(run.max)
    );
    Ok(run)
}
