//! The operator's own HTTP endpoints: liveness, readiness and metrics.

pub mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// Parts of the process that can make it unready besides the controller (a boot index still
/// loading, a DHCP listener that died), each with the reason /readyz reports.
#[derive(Debug, Default)]
pub struct Readiness {
    failing: Mutex<BTreeMap<String, String>>,
}

impl Readiness {
    pub fn fail(&self, part: &str, why: impl Into<String>) {
        self.lock().insert(part.to_string(), why.into());
    }

    pub fn clear(&self, part: &str) {
        self.lock().remove(part);
    }

    /// (part, reason) of everything failing, sorted by part.
    pub fn failing(&self) -> Vec<(String, String)> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.failing.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Clone)]
struct AppState {
    ready: Arc<AtomicBool>,
    parts: Arc<Readiness>,
    metrics: Arc<Metrics>,
}

pub fn router(ready: Arc<AtomicBool>, parts: Arc<Readiness>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AppState {
            ready,
            parts,
            metrics,
        })
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let failing = s.parts.failing();
    if !failing.is_empty() {
        let body: String = failing
            .iter()
            .map(|(part, why)| format!("not ready: {part}: {why}\n"))
            .collect();
        return (StatusCode::SERVICE_UNAVAILABLE, body);
    }
    if s.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n".to_string())
    }
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    addr: SocketAddr,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
}
