//! Every route, in one place. The route table is also what the tests compare against
//! `functions/*/function.json` and `openapi/openapi.yaml`.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, patch, post};
use tower_http::catch_panic::CatchPanicLayer;

use crate::error::ApiError;
use crate::http::request_id;
use crate::routes::admin::{audit, instances, usage};
use crate::routes::{
    agents, chat, config_test, health, openai, openapi, refresh, responses, token, wellknown,
};
use crate::state::AppState;
use crate::telemetry;

/// Routes that need no credentials. Every other route authenticates through its extractors
/// (`AdminAuth` or `ServiceAuth`); the auth tests walk this list.
pub const PUBLIC_ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/health"),
    ("GET", "/openapi.yaml"),
    ("GET", "/.well-known/jwks.json"),
    ("GET", "/.well-known/openid-configuration"),
    ("POST", "/agents/auth/token"),
    // Loopback only: the Functions host's queue-trigger invocation.
    ("POST", "/refresh-worker"),
];

pub use crate::http::{ADMIN_PREFIX, FUNCTIONS_ADMIN_PREFIX};

/// The Functions-host spelling of an admin path (`/admin/x` → `/manage/x`).
pub fn functions_alias(path: &str) -> Option<String> {
    path.strip_prefix(ADMIN_PREFIX)
        .map(|rest| format!("{FUNCTIONS_ADMIN_PREFIX}{rest}"))
}

struct RouteTable {
    router: Router<AppState>,
    routes: Vec<(Method, String)>,
}

impl RouteTable {
    /// Serves `path` (and, for an admin path, its Functions alias) with `handler`.
    fn add(mut self, method: Method, path: &'static str, handler: MethodRouter<AppState>) -> Self {
        if let Some(alias) = functions_alias(path) {
            self.router = self.router.route(&alias, handler.clone());
            self.routes.push((method.clone(), alias));
        }
        self.routes.push((method, path.to_owned()));
        self.router = self.router.route(path, handler);
        self
    }
}

fn table() -> RouteTable {
    RouteTable {
        router: Router::new(),
        routes: Vec::new(),
    }
    .add(Method::GET, "/", get(health::root))
    .add(Method::GET, "/health", get(health::health))
    .add(Method::GET, "/openapi.yaml", get(openapi::spec))
    .add(Method::GET, "/.well-known/jwks.json", get(wellknown::jwks))
    .add(
        Method::GET,
        "/.well-known/openid-configuration",
        get(wellknown::openid_configuration),
    )
    .add(
        Method::POST,
        "/agents/auth/token",
        post(token::exchange_token),
    )
    .add(Method::GET, "/agents/me", get(agents::me))
    .add(
        Method::POST,
        "/admin/agent-instances",
        post(instances::create_instance),
    )
    .add(
        Method::GET,
        "/admin/agent-instances",
        get(instances::list_instances),
    )
    .add(
        Method::GET,
        "/admin/agent-instances/{id}",
        get(instances::get_instance),
    )
    .add(
        Method::PATCH,
        "/admin/agent-instances/{id}",
        patch(instances::patch_instance),
    )
    .add(
        Method::DELETE,
        "/admin/agent-instances/{id}",
        delete(instances::delete_instance),
    )
    .add(
        Method::POST,
        "/admin/agent-instances/{id}/rotate-key",
        post(instances::rotate_key),
    )
    .add(
        Method::POST,
        "/admin/agent-instances/{id}/revoke-previous-key",
        post(instances::revoke_previous_key),
    )
    .add(
        Method::POST,
        "/admin/agent-instances/{id}/provision",
        post(instances::provision),
    )
    .add(
        Method::GET,
        "/admin/audit-logs",
        get(audit::list_audit_logs),
    )
    .add(Method::GET, "/admin/usage", get(usage::list_usage))
    .add(Method::POST, "/chat", post(chat::chat))
    .add(
        Method::POST,
        "/admin/agent-instances/{id}/config-test",
        post(config_test::admin_config_test),
    )
    .add(Method::POST, "/config/test", post(config_test::config_test))
    .add(Method::POST, "/refresh", post(refresh::start_refresh))
    .add(Method::GET, "/refresh/{jobId}", get(refresh::get_refresh))
    .add(
        Method::POST,
        "/refresh-worker",
        post(refresh::refresh_worker),
    )
    .add(
        Method::POST,
        "/v1/chat/completions",
        post(openai::chat_completions).layer(middleware::map_response(openai::openai_errors)),
    )
    .add(
        Method::GET,
        "/v1/models",
        get(openai::list_models).layer(middleware::map_response(openai::openai_errors)),
    )
    .add(
        Method::GET,
        "/v1/models/{model}",
        get(openai::get_model).layer(middleware::map_response(openai::openai_errors)),
    )
    .add(
        Method::POST,
        "/v1/embeddings",
        post(openai::embeddings).layer(middleware::map_response(openai::openai_errors)),
    )
    .add(
        Method::POST,
        "/v1/responses",
        post(responses::create_response).layer(middleware::map_response(openai::openai_errors)),
    )
    .add(
        Method::GET,
        "/v1/responses/{id}",
        get(responses::get_response).layer(middleware::map_response(openai::openai_errors)),
    )
}

/// Every (method, path template) the router serves, the `/manage/*` aliases included.
pub fn routes() -> Vec<(Method, String)> {
    table().routes
}

/// The application router with its middleware.
pub fn router(state: AppState) -> Router {
    let body_limit = state.settings.max_body_bytes;
    table()
        .router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(|_panic| {
            tracing::error!("a handler panicked");
            ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        .layer(middleware::from_fn(access_log))
        .layer(middleware::from_fn(request_id::middleware))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Observes every request: its server span for App Insights (continuing an incoming
/// `traceparent`; a streamed answer's span lasts until its body ends), and one access-log line
/// with the method, route template (never the raw query), status and duration.
async fn access_log(request: Request, next: Next) -> Response {
    let log = tracing::enabled!(target: telemetry::ACCESS_LOG_TARGET, tracing::Level::INFO);
    if !log && !telemetry::enabled() {
        return next.run(request).await;
    }
    let started = Instant::now();
    let method = request.method().clone();
    // The route template shared with this thread's last requests of it (a count only this
    // thread takes), not its `MatchedPath` cloned: that one's count is shared by every request
    // of the route, on every thread.
    let matched: Option<Arc<str>> = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| telemetry::shared_str(p.as_str()));
    let route: Arc<str> = match &matched {
        Some(p) => Arc::clone(p),
        None => Arc::from(truncated(request.uri().path(), 200)),
    };
    let request_id = request_id::shared().unwrap_or_else(|| Arc::from("-"));
    // An unmatched path is not a route: one name for all of them (no cardinality from scans).
    let span = telemetry::request_span(
        method_name(&method),
        if matched.is_some() {
            Arc::clone(&route)
        } else {
            telemetry::shared_str("(unmatched)")
        },
        truncated(request.uri().path(), 400),
        Arc::clone(&request_id),
        request.headers(),
    );
    let response = span.run(next.run(request)).await;
    let status = response.status().as_u16();
    span.end(status);
    if log {
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(
            target: "sophia::access",
            duration_ms,
            http.method = %method,
            http.route = %route,
            http.status = status,
            request.id = %request_id,
            "{method} {route} {status}"
        );
    }
    if !span.is_recording() || !is_event_stream(&response) {
        return response;
    }
    // The request lasts until the last event has gone out.
    let (parts, body) = response.into_parts();
    let body = axum::body::Body::from_stream(futures_util::StreamExt::map(
        body.into_data_stream(),
        move |chunk| {
            let _ = &span;
            chunk
        },
    ));
    Response::from_parts(parts, body)
}

/// `s` cut to at most `max` characters.
fn truncated(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    match s.char_indices().nth(max) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

/// A method's name, as a span attribute takes it (an extension method is `_OTHER`, as the
/// semantic conventions say).
fn method_name(method: &axum::http::Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "_OTHER",
    }
}

fn is_event_stream(response: &Response) -> bool {
    response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}
