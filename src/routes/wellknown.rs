//! `/.well-known/jwks.json` and `/.well-known/openid-configuration`, so that APIM's
//! `validate-jwt` and any JWT library can verify service tokens.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::CACHE_CONTROL;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::state::AppState;

/// The public signing keys.
pub async fn jwks(State(app): State<AppState>) -> Response {
    let mut response = Json(app.auth.tokens.jwks()).into_response();
    response.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

/// OpenID Provider metadata (the subset that applies to client-credentials access tokens).
///
/// Built from `SOPHIA_PUBLIC_URL` only: a document derived from `Host` / `X-Forwarded-Host`
/// and cached publicly would let one request poison what every client reads.
pub async fn openid_configuration(State(app): State<AppState>) -> Response {
    let base = app.settings.public_base();
    let mut response = Json(json!({
        "issuer": app.auth.tokens.issuer(),
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
