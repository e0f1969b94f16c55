//! `GET /openapi.yaml`: the API description, compiled into the binary.

use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

/// The OpenAPI document in `openapi/openapi.yaml`.
pub const SPEC: &str = include_str!("../../openapi/openapi.yaml");

pub async fn spec() -> Response {
    let mut response = SPEC.into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/yaml"));
    response
}
