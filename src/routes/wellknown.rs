//! `/.well-known/jwks.json` and `/.well-known/openid-configuration`, so that APIM's
//! `validate-jwt` and any JWT library can verify service tokens.

use axum::Json;
use axum::extract::State;
use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::state::AppState;

/// The public signing keys.
pub async fn jwks(State(app): State<AppState>) -> Response {
    let mut response = Json(app.tokens.jwks()).into_response();
    response.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

/// The base URL clients reach this service at: `SOPHIA_PUBLIC_URL`, else the request's host.
fn base_url(app: &AppState, headers: &HeaderMap) -> String {
    if let Some(url) = &app.settings.public_url {
        return url.as_str().trim_end_matches('/').to_owned();
    }
    let host = headers
        .get("x-forwarded-host")
        .filter(|_| app.settings.trust_forwarded)
        .or_else(|| headers.get("host"))
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .filter(|_| app.settings.trust_forwarded)
        .and_then(|v| v.to_str().ok())
        .filter(|p| *p == "https" || *p == "http")
        .unwrap_or("http");
    format!("{scheme}://{host}")
}

/// OpenID Provider metadata (the subset that applies to client-credentials access tokens).
pub async fn openid_configuration(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let base = base_url(&app, &headers);
    let mut response = Json(json!({
        "issuer": app.tokens.issuer(),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "token_endpoint": format!("{base}/agents/auth/token"),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "response_types_supported": ["token"],
        "scopes_supported": ["agent:invoke"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256"],
        "subject_types_supported": ["public"],
    }))
    .into_response();
    response.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}
