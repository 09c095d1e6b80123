//! Concurrent writers, as applications write: each of `writers` connections
//! commits one message per transaction, for a fixed time, while the relay
//! runs. The relay keeps up when its lag stays bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::drain::secs;
use crate::setup::{
    BenchDb, DbKind, Probe, Producer, Running, Sink, message, relay_lines, target, thousands,
};

pub struct WritersRun {
    pub kind: DbKind,
    pub writers: usize,
    pub window: Duration,
    pub inserted: u64,
    pub insert_errors: u64,
    pub delivered_in_window: u64,
    pub insert_rate: f64,
    pub drain_rate: f64,
    pub max_lag: u64,
    pub lag_at_end: u64,
    pub catch_up: Duration,
    pub keeps_up: bool,
    /// (seconds since start, inserted, delivered, lag)
    pub series: Vec<(f64, u64, u64, u64)>,
    pub first_third_mean_lag: f64,
    pub last_third_mean_lag: f64,
}

impl WritersRun {
    pub fn json(&self) -> Value {
        json!({
            "database": self.kind.label(),
            "writers": self.writers,
            "window_s": secs(self.window),
            "inserted": self.inserted,
            "insert_errors": self.insert_errors,
            "delivered_in_window": self.delivered_in_window,
            "insert_rate_per_s": self.insert_rate.round(),
            "drain_rate_per_s": self.drain_rate.round(),
            "max_lag": self.max_lag,
            "lag_at_end_of_window": self.lag_at_end,
            "catch_up_after_writers_stop_s": secs(self.catch_up),
            "mean_lag_first_third": self.first_third_mean_lag.round(),
            "mean_lag_last_third": self.last_third_mean_lag.round(),
            "keeps_up": self.keeps_up,
            "lag_over_time": self.series.iter().map(|(t, i, d, l)| json!({"t_s": t, "inserted": i, "delivered": d, "lag": l})).collect::<Vec<_>>(),
        })
    }

    pub fn lag_summary(&self) -> String {
        format!(
            "max lag {}, mean lag first/last third {}/{}, lag at end {}, caught up {:.2} s after the writers stopped",
            thousands(self.max_lag as f64),
            thousands(self.first_third_mean_lag),
            thousands(self.last_third_mean_lag),
            thousands(self.lag_at_end as f64),
            self.catch_up.as_secs_f64()
        )
    }
}

pub async fn writers(
    kind: DbKind,
    writers: usize,
    window: Duration,
    size: usize,
    batch_size: Option<u32>,
) -> anyhow::Result<WritersRun> {
    let db = BenchDb::new(kind).await?;
    let (_, config) = db.config(
        "writers",
        &relay_lines(batch_size),
        &target("null", "null", ""),
    )?;
    crate::setup::migrate(&config).await?;
    let probe = Probe::new(false);
    let relay = Running::start(&config, Sink::Configured, probe.clone()).await?;

    let inserted = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut conns = Vec::new();
    for _ in 0..writers {
        conns.push(Producer::connect(&db).await?);
    }
    eprintln!(
        "  {writers} writers on {} for {} s ...",
        kind.label(),
        window.as_secs()
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (w, mut conn) in conns.into_iter().enumerate() {
        let inserted = inserted.clone();
        let errors = errors.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut k = (w as u64) << 40;
            while !stop.load(Ordering::Relaxed) {
                match conn.commit_one(&message(k, size)).await {
                    Ok(()) => {
                        inserted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                k += 1;
            }
        }));
    }

    let mut series = Vec::new();
    let tick = Duration::from_millis(500);
    let mut next = started + tick;
    while started.elapsed() < window {
        tokio::time::sleep_until(next.into()).await;
        next += tick;
        let i = inserted.load(Ordering::Relaxed);
        let d = probe.delivered();
        series.push((secs(started.elapsed()), i, d, i.saturating_sub(d)));
    }
    stop.store(true, Ordering::Relaxed);
    let delivered_in_window = probe.delivered();
    for task in tasks {
        task.await?;
    }
    let window_end = Instant::now();
    let window = window_end.duration_since(started);
    let total = inserted.load(Ordering::Relaxed);
    let lag_at_end = total.saturating_sub(delivered_in_window);
    let caught_up = probe.wait_for(total, Duration::from_secs(300)).await?;
    let catch_up = caught_up.saturating_duration_since(window_end);
    relay.stop().await?;

    let insert_rate = crate::setup::rate(total, window);
    let drain_rate = crate::setup::rate(delivered_in_window, window);
    let max_lag = series.iter().map(|s| s.3).max().unwrap_or(0);
    let third = (series.len() / 3).max(1);
    let mean = |s: &[(f64, u64, u64, u64)]| {
        if s.is_empty() {
            0.0
        } else {
            s.iter().map(|x| x.3 as f64).sum::<f64>() / s.len() as f64
        }
    };
    let first = mean(&series[..third.min(series.len())]);
    let last = mean(&series[series.len().saturating_sub(third)..]);
    // Bounded: the lag does not grow over the run by more than one second
    // of inserts, and the relay catches up within 2 s once writers stop.
    let keeps_up = last <= first + insert_rate && catch_up <= Duration::from_secs(2);
    let run = WritersRun {
        kind,
        writers,
        window,
        inserted: total,
        insert_errors: errors.load(Ordering::Relaxed),
        delivered_in_window,
        insert_rate,
        drain_rate,
        max_lag,
        lag_at_end,
        catch_up,
        keeps_up,
        series,
        first_third_mean_lag: first,
        last_third_mean_lag: last,
    };
    eprintln!(
        "  inserted {}/s, drained {}/s; {}",
        thousands(insert_rate),
        thousands(drain_rate),
        run.lag_summary()
    );
    Ok(run)
}
