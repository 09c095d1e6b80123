//! Prometheus metrics, recorded through the `metrics` facade and rendered by
//! `metrics-exporter-prometheus` (the exposition format is not hand-written).
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `outbox_deliveries_total` | counter | `target`, `outcome` = delivered, retry, dead |
//! | `outbox_retries_total` | counter | `target` (retries scheduled) |
//! | `outbox_dead_letters_total` | counter | `target` |
//! | `outbox_lag_messages` | gauge | `target` |
//! | `outbox_lag_seconds` | gauge | `target` (age of the oldest pending message) |
//! | `outbox_batch_duration_seconds` | histogram | `target` |
//! | `outbox_plugin_call_duration_seconds` | histogram | `target`, `plugin` |
//! | `outbox_plugin_traps_total` | counter | `target`, `plugin` |
//! | `outbox_plugin_instance_restarts_total` | counter | `target`, `plugin` |
//! | `outbox_waiting_on_transaction_seconds` | gauge | `pid`, `database`: age of the open transaction delivery waits on (Postgres); 0 once it is gone |

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once) and returns its handle, or
/// `None` if another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ];
            PrometheusBuilder::new()
                .set_buckets(&seconds)
                .ok()?
                .install_recorder()
                .ok()
        })
        .clone()
}

/// What became of one delivery attempt, as counted.
#[derive(Debug, Clone, Copy)]
pub enum Counted {
    Delivered,
    Retry,
    Dead,
}

pub fn delivery(target: &str, outcome: Counted) {
    let label = match outcome {
        Counted::Delivered => "delivered",
        Counted::Retry => "retry",
        Counted::Dead => "dead",
    };
    metrics::counter!("outbox_deliveries_total", "target" => target.to_string(), "outcome" => label)
        .increment(1);
    crate::activity::record(target, matches!(outcome, Counted::Delivered));
    match outcome {
        Counted::Retry => {
            metrics::counter!("outbox_retries_total", "target" => target.to_string()).increment(1)
        }
        Counted::Dead => {
            metrics::counter!("outbox_dead_letters_total", "target" => target.to_string())
                .increment(1)
        }
        Counted::Delivered => {}
    }
}

pub fn batch_duration(target: &str, seconds: f64) {
    metrics::histogram!("outbox_batch_duration_seconds", "target" => target.to_string())
        .record(seconds);
}

pub fn plugin_call(target: &str, plugin: &str, seconds: f64) {
    metrics::histogram!(
        "outbox_plugin_call_duration_seconds",
        "target" => target.to_string(),
        "plugin" => plugin.to_string()
    )
    .record(seconds);
}

pub fn trap(target: &str, plugin: &str) {
    metrics::counter!(
        "outbox_plugin_traps_total",
        "target" => target.to_string(),
        "plugin" => plugin.to_string()
    )
    .increment(1);
}

pub fn instance_restart(target: &str, plugin: &str) {
    metrics::counter!(
        "outbox_plugin_instance_restarts_total",
        "target" => target.to_string(),
        "plugin" => plugin.to_string()
    )
    .increment(1);
}

pub fn lag(target: &str, messages: i64, oldest_age_ms: Option<i64>) {
    metrics::gauge!("outbox_lag_messages", "target" => target.to_string()).set(messages as f64);
    metrics::gauge!("outbox_lag_seconds", "target" => target.to_string())
        .set(oldest_age_ms.unwrap_or(0) as f64 / 1000.0);
}

/// The labels of the transaction last reported by [`waiting_on`], to zero
/// them when it is gone.
static WAITING_ON: std::sync::Mutex<Option<(String, String)>> = std::sync::Mutex::new(None);

/// Reports the open transaction that delivery waits on (Postgres), or that
/// none is held back any more.
pub fn waiting_on(transaction: Option<&crate::storage::OpenTransaction>) {
    let labels = transaction.map(|t| {
        (
            t.pid
                .map_or_else(|| t.prepared.clone().unwrap_or_default(), |p| p.to_string()),
            t.database.clone().unwrap_or_default(),
        )
    });
    let mut last = WAITING_ON
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((pid, database)) = last.take().filter(|l| Some(l) != labels.as_ref()) {
        metrics::gauge!("outbox_waiting_on_transaction_seconds", "pid" => pid, "database" => database)
            .set(0.0);
    }
    if let (Some(t), Some((pid, database))) = (transaction, labels) {
        metrics::gauge!(
            "outbox_waiting_on_transaction_seconds",
            "pid" => pid.clone(),
            "database" => database.clone()
        )
        .set(t.age_ms as f64 / 1000.0);
        *last = Some((pid, database));
    }
}
