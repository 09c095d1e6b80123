//! Recent delivery activity per target, in this process: how many attempts
//! were delivered and how many failed (retry or dead) in each 10-second
//! bucket of the last five minutes. The console's overview charts it; the
//! totals since start are Prometheus' (`outbox_deliveries_total`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, OnceLock};

/// One bucket's length.
pub const BUCKET_MS: i64 = 10_000;
/// How many buckets are kept (five minutes).
pub const BUCKETS: usize = 30;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    start_ms: i64,
    delivered: u64,
    failed: u64,
}

static ACTIVITY: OnceLock<Mutex<BTreeMap<String, VecDeque<Bucket>>>> = OnceLock::new();

fn activity() -> std::sync::MutexGuard<'static, BTreeMap<String, VecDeque<Bucket>>> {
    ACTIVITY
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Counts one attempt at `target`: delivered, or failed.
pub fn record(target: &str, delivered: bool) {
    record_at(target, delivered, crate::storage::now_ms());
}

fn record_at(target: &str, delivered: bool, now_ms: i64) {
    let start_ms = now_ms - now_ms.rem_euclid(BUCKET_MS);
    let mut all = activity();
    let buckets = all.entry(target.to_string()).or_default();
    if buckets.back().is_none_or(|b| b.start_ms < start_ms) {
        buckets.push_back(Bucket {
            start_ms,
            ..Bucket::default()
        });
        while buckets.len() > BUCKETS {
            buckets.pop_front();
        }
    }
    if let Some(b) = buckets.iter_mut().rev().find(|b| b.start_ms <= start_ms) {
        if delivered {
            b.delivered += 1;
        } else {
            b.failed += 1;
        }
    }
}

/// `target`'s last five minutes, one point a bucket, oldest first: the
/// bucket's start (Unix seconds), delivered/s and failed/s. Buckets with
/// nothing are zeros.
pub fn recent(target: &str) -> [Vec<f64>; 3] {
    recent_at(target, crate::storage::now_ms())
}

fn recent_at(target: &str, now_ms: i64) -> [Vec<f64>; 3] {
    let current = now_ms - now_ms.rem_euclid(BUCKET_MS);
    let all = activity();
    let buckets = all.get(target);
    let mut out: [Vec<f64>; 3] = Default::default();
    let per_second = |n: u64| n as f64 * 1000.0 / BUCKET_MS as f64;
    for i in (0..BUCKETS as i64).rev() {
        let start_ms = current - i * BUCKET_MS;
        let b = buckets
            .and_then(|b| b.iter().find(|b| b.start_ms == start_ms))
            .copied()
            .unwrap_or_default();
        out[0].push((start_ms / 1000) as f64);
        out[1].push(per_second(b.delivered));
        out[2].push(per_second(b.failed));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_land_in_their_bucket_and_old_ones_fall_out() {
        let t = "activity-test-target";
        let now = 1_800_000_000_000;
        for _ in 0..20 {
            record_at(t, true, now);
        }
        record_at(t, false, now);
        record_at(t, true, now - 6 * 60_000); // older than the window
        let [at, delivered, failed] = recent_at(t, now);
        assert_eq!(at.len(), BUCKETS);
        assert_eq!(*delivered.last().unwrap(), 2.0); // 20 in 10 s
        assert_eq!(*failed.last().unwrap(), 0.1);
        assert_eq!(delivered.iter().sum::<f64>(), 2.0);
        assert!(
            recent_at("no-such-target", now)[1]
                .iter()
                .all(|v| *v == 0.0)
        );
    }
}
