//! The admin HTTP endpoint: Prometheus `/metrics`, `/healthz` (the process is
//! up) and `/readyz` (the database answers and the plugins are loaded), and
//! the web console at `/` when `[admin.console]` is set ([`crate::console`]).
//! Off unless `[admin] listen` is set; meant for localhost or a private network.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

use crate::storage::Storage;

/// What the endpoint reports on; the relay updates it (and swaps the storage
/// on a config reload).
#[derive(Clone)]
pub struct AdminState {
    pub metrics: PrometheusHandle,
    pub storage: Arc<RwLock<Arc<dyn Storage>>>,
    pub targets: Arc<RwLock<Vec<String>>>,
    /// Plugins loaded and relay running.
    pub ready: Arc<AtomicBool>,
    /// Each target's state, as the relay's workers report it.
    pub health: crate::relay::health::Health,
    /// The running config (the console's target pages read it).
    pub config: Arc<RwLock<Arc<crate::config::Config>>>,
    /// The console's access rules, when `[admin.console]` is set.
    pub console: Option<crate::console::session::Access>,
}

/// Serves until `shutdown`, and refreshes the lag gauges every `lag_every`.
pub async fn serve(
    listen: SocketAddr,
    state: AdminState,
    lag_every: Duration,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(address = %listener.local_addr()?, "admin endpoint listening");
    let lag = tokio::spawn(refresh_lag(state.clone(), lag_every));
    let mut app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state.clone());
    if let Some(access) = state.console.clone() {
        app = app.merge(crate::console::router(crate::console::Console {
            admin: state,
            access,
        }));
    }
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    lag.abort();
    result
}

async fn metrics(State(state): State<AdminState>) -> String {
    state.metrics.render()
}

/// Ready when the plugins are loaded, the database answers and every target
/// can start. The body names each target that cannot start, and why, and
/// each that an ordered failure holds (held targets are still ready: they
/// wait for a retry, as configured).
async fn readyz(State(state): State<AdminState>) -> (StatusCode, String) {
    if !state.ready.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "plugins not loaded\n".into(),
        );
    }
    let storage = state.storage.read().await.clone();
    match tokio::time::timeout(Duration::from_secs(2), storage.status(&[])).await {
        Ok(Ok(_)) => {}
        _ => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "database unreachable\n".into(),
            );
        }
    }
    let targets = state.targets.read().await.clone();
    let mut body = String::new();
    let mut ready = true;
    for (target, health) in state.health.summary(&targets) {
        use crate::relay::health::TargetHealth;
        match health {
            TargetHealth::Running => {}
            TargetHealth::CannotStart { since_ms, reason } => {
                ready = false;
                let since = crate::storage::now_ms().saturating_sub(since_ms) / 1000;
                body.push_str(&format!(
                    "target {target:?} cannot start (for {since} s): {reason}\n"
                ));
            }
            TargetHealth::Held { partitions, .. } => {
                body.push_str(&format!(
                    "target {target:?} is held by a failing ordered message on partitions {partitions:?}\n"
                ));
            }
        }
    }
    if ready {
        (StatusCode::OK, format!("ready\n{body}"))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body)
    }
}

async fn refresh_lag(state: AdminState, every: Duration) {
    loop {
        let storage = state.storage.read().await.clone();
        let targets = state.targets.read().await.clone();
        match storage.status(&targets).await {
            Ok(rows) => {
                crate::metrics::waiting_on(rows.iter().find_map(|r| r.waiting_on.as_ref()));
                for row in rows {
                    crate::metrics::lag(&row.target, row.lag, row.oldest_pending_age_ms);
                }
            }
            Err(e) => tracing::debug!(error = %e, "lag refresh failed"),
        }
        tokio::time::sleep(every).await;
    }
}
