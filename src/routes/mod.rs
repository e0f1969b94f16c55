//! HTTP handlers, one module per resource. Handlers are thin: parse, authorise, call the
//! store or a service, shape the answer.

pub mod admin;
pub mod agents;
pub mod chat;
pub mod config_test;
pub mod health;
pub mod openai;
pub mod openapi;
pub mod refresh;
pub mod responses;
pub mod token;
pub mod wellknown;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A query string parsed strictly: unknown or malformed parameters are a 400 naming them.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded_parse(query));
        serde_path_to_error::deserialize(de)
            .map(ApiQuery)
            .map_err(|e| {
                let field = e.path().to_string();
                ApiError::validation(
                    if field == "." { String::new() } else { field },
                    e.into_inner().to_string(),
                )
            })
    }
}

fn form_urlencoded_parse(query: &str) -> url::form_urlencoded::Parse<'_> {
    url::form_urlencoded::parse(query.as_bytes())
}
