//! `GET /` (the Functions host's readiness probe) and `GET /health`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::state::AppState;

/// Readiness for the Functions host: answers as soon as the listener is up.
pub async fn root() -> Json<Value> {
    Json(json!({ "service": "sophia", "status": "ok" }))
}

/// Version, configured backends and whether the store answers.
pub async fn health(State(app): State<AppState>) -> (StatusCode, Json<Value>) {
    let store_ok = app.store.ping().await;
    let status = if store_ok.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if let Err(e) = &store_ok {
        tracing::warn!(error = ?e, "health: store did not answer: {e:#}");
    }
    let tenant_cache = app.runtimes.stats().await;
    let (hs256, jwks) = app.admin.modes();
    let telemetry = crate::telemetry::stats();
    (
        status,
        Json(json!({
            "status": if store_ok.is_ok() { "ok" } else { "degraded" },
            "version": env!("CARGO_PKG_VERSION"),
            "backends": {
                "store": app.store.backend(),
                "secrets": app.secrets.backend(),
                "telemetry": telemetry.exporter,
                "adminAuth": { "hs256": hs256, "jwks": jwks },
                "azureCredential": app.entra.as_ref().map(|e| e.kind().as_str()),
            },
            "checks": { "store": store_ok.is_ok() },
            "tenantCache": tenant_cache,
            "telemetry": telemetry,
            "auth": { "unknownCompanyFailures": app.auth.key_checks.unknown_total() },
            "uptimeSeconds": app.started_at.elapsed().as_secs(),
        })),
    )
}
