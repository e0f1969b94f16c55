//! One error type for every HTTP answer: `ApiError` renders RFC 9457 problem+json with a
//! stable machine `code` and the request id. Module errors map into it with `From`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::chat::ChatError;
use crate::http::request_id;
use crate::secrets::SecretError;
use crate::store::StoreError;
use crate::tenant::runtime::RuntimeError;
use crate::upstream::UpstreamError;

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error answered to a client. Internal causes are logged once, where they are answered,
/// and never reach the body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{detail}")]
    Validation { field: String, detail: String },
    #[error("authentication required")]
    Unauthenticated,
    #[error("invalid token: {0}")]
    InvalidToken(&'static str),
    #[error("invalid client credentials")]
    InvalidClient,
    #[error("{0}")]
    Forbidden(String),
    /// A change this admin may not make to one field (the problem names it).
    #[error("{detail}")]
    ForbiddenField { field: String, detail: String },
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("the resource was modified (etag mismatch)")]
    PreconditionFailed,
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("too many requests")]
    RateLimited { retry_after_secs: u64 },
    /// A company's own limit (`rate_limited` per minute, `quota_exceeded` for a budget).
    #[error("{}", .0.detail())]
    OverLimit(Box<crate::limits::Refused>),
    #[error("{0}")]
    Unavailable(String),
    /// A dependency (store, secret store, knowledge index) failed; the cause is logged once,
    /// when the error is answered, and never reaches the body.
    #[error("{detail}")]
    Dependency {
        detail: &'static str,
        #[source]
        cause: anyhow::Error,
    },
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    /// The tenant's instance lacks something a request needs (endpoint, key, deployment).
    #[error("{0}")]
    NotConfigured(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
    /// A failure after the company's limits admitted the request: answered as the inner
    /// error, with the company's `x-ratelimit-*` headers.
    #[error("{}", .0.0)]
    Admitted(Box<(ApiError, crate::limits::Standing)>),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    code: &'a str,
    request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    /// RFC 6749 §5.2 members, so OAuth2 client libraries understand token errors too.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(rename = "error_description", skip_serializing_if = "Option::is_none")]
    error_description: Option<&'a str>,
}

impl ApiError {
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::BadRequest(detail.into())
    }

    pub fn validation(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Validation {
            field: field.into(),
            detail: detail.into(),
        }
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::Forbidden(detail.into())
    }

    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        Self::Internal(err.into())
    }

    /// HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Admitted(admitted) => admitted.0.status(),
            Self::BadRequest(_) | Self::Validation { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthenticated | Self::InvalidToken(_) | Self::InvalidClient => {
                StatusCode::UNAUTHORIZED
            }
            Self::Forbidden(_) | Self::ForbiddenField { .. } => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) | Self::NotConfigured(_) => StatusCode::CONFLICT,
            Self::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited { .. } | Self::OverLimit(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) | Self::Dependency { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Upstream(UpstreamError::RateLimited { .. }) => StatusCode::TOO_MANY_REQUESTS,
            Self::Upstream(UpstreamError::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable machine-readable code; clients switch on this, never on `detail`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Admitted(admitted) => admitted.0.code(),
            Self::BadRequest(_) => "invalid_request",
            Self::Validation { .. } => "validation_failed",
            Self::Unauthenticated => "unauthenticated",
            Self::InvalidToken(_) => "invalid_token",
            Self::InvalidClient => "invalid_client",
            Self::Forbidden(_) | Self::ForbiddenField { .. } => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict(_) => "conflict",
            Self::NotConfigured(_) => "instance_not_configured",
            Self::PreconditionFailed => "precondition_failed",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::RateLimited { .. } => "rate_limited",
            Self::OverLimit(r) if r.which.is_rate() => "rate_limited",
            Self::OverLimit(_) => "quota_exceeded",
            Self::Unavailable(_) | Self::Dependency { .. } => "service_unavailable",
            Self::Upstream(e) => match e {
                UpstreamError::RateLimited { .. } => "rate_limited",
                UpstreamError::Timeout(_) => "upstream_timeout",
                UpstreamError::Unavailable(_) => "upstream_unavailable",
                UpstreamError::Rejected { .. } => "upstream_rejected",
                UpstreamError::Protocol(_) => "upstream_protocol_error",
                UpstreamError::Configuration(_) => "upstream_misconfigured",
            },
            Self::Internal(_) => "internal_error",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Self::Admitted(admitted) => admitted.0.title(),
            Self::BadRequest(_) => "Bad request",
            Self::Validation { .. } => "Validation failed",
            Self::Unauthenticated => "Authentication required",
            Self::InvalidToken(_) => "Invalid token",
            Self::InvalidClient => "Invalid client",
            Self::Forbidden(_) | Self::ForbiddenField { .. } => "Forbidden",
            Self::NotFound(_) => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::Conflict(_) => "Conflict",
            Self::NotConfigured(_) => "Agent instance not configured",
            Self::PreconditionFailed => "Precondition failed",
            Self::PayloadTooLarge { .. } => "Payload too large",
            Self::UnsupportedMediaType(_) => "Unsupported media type",
            Self::RateLimited { .. } => "Too many requests",
            Self::OverLimit(r) if r.which.is_rate() => "Too many requests",
            Self::OverLimit(_) => "Quota exceeded",
            Self::Unavailable(_) | Self::Dependency { .. } => "Service unavailable",
            Self::Upstream(UpstreamError::RateLimited { .. }) => "Too many requests",
            Self::Upstream(UpstreamError::Timeout(_)) => "Gateway timeout",
            Self::Upstream(_) => "Bad gateway",
            Self::Internal(_) => "Internal error",
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::Admitted(admitted) => admitted.0.detail(),
            // The token error reason is deliberately not echoed: a client learns only that
            // its token is not accepted.
            Self::InvalidToken(_) => {
                "the bearer token is missing, malformed, expired or revoked".into()
            }
            Self::InvalidClient => {
                "client authentication failed (unknown company, wrong key or inactive agent)".into()
            }
            Self::Internal(_) => {
                "an internal error occurred; quote the requestId when reporting it".into()
            }
            other => other.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Admitted(admitted) = self {
            let (inner, standing) = *admitted;
            return standing.on(inner.into_response());
        }
        let status = self.status();
        let request_id = request_id::current();
        match &self {
            Self::Internal(err) => {
                tracing::error!(request.id = %request_id, error = ?err, "internal error: {err:#}")
            }
            Self::Unavailable(detail) => {
                tracing::warn!(request.id = %request_id, "dependency unavailable: {detail}")
            }
            Self::Dependency { detail, cause } => {
                tracing::warn!(request.id = %request_id, error = ?cause, "{detail}: {cause:#}")
            }
            Self::Upstream(err) => {
                tracing::warn!(request.id = %request_id, error.code = self.code(), "upstream call failed: {err}")
            }
            Self::InvalidToken(reason) => {
                tracing::info!(request.id = %request_id, auth.reason = reason, "token rejected: {reason}")
            }
            _ => {}
        }
        let (field, oauth_error) = match &self {
            Self::Validation { field, .. } | Self::ForbiddenField { field, .. } => {
                (Some(field.as_str()).filter(|f| !f.is_empty()), None)
            }
            Self::InvalidClient => (None, Some("invalid_client")),
            _ => (None, None),
        };
        let detail = self.detail();
        let problem = Problem {
            kind: format!("https://sophia.dev/problems/{}", self.code()),
            title: self.title(),
            status: status.as_u16(),
            detail: detail.clone(),
            code: self.code(),
            request_id,
            field,
            error: oauth_error,
            error_description: oauth_error.map(|_| detail.as_str()),
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match &self {
            Self::RateLimited { retry_after_secs }
            | Self::Upstream(UpstreamError::RateLimited { retry_after_secs }) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            Self::OverLimit(refused) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(refused.retry_after_secs),
                );
                refused.standing.write_headers(headers);
            }
            Self::Unauthenticated => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::InvalidToken(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            _ => {}
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => Self::NotFound("resource"),
            StoreError::PreconditionFailed => Self::PreconditionFailed,
            StoreError::AlreadyExists(what) => Self::Conflict(what),
            StoreError::InvalidContinuationToken => {
                Self::validation("continuationToken", "invalid continuation token")
            }
            StoreError::Unavailable(cause) => Self::Dependency {
                detail: "the document store is unavailable; retry later",
                cause,
            },
            StoreError::Internal(cause) => Self::Internal(cause),
        }
    }
}

impl From<SecretError> for ApiError {
    fn from(err: SecretError) -> Self {
        match err {
            SecretError::NotFound => Self::NotFound("secret"),
            SecretError::InvalidId(detail) => Self::validation("keyvaultSecretId", detail),
            SecretError::Unavailable(cause) => Self::Dependency {
                detail: "the secret store is unavailable; retry later",
                cause,
            },
            SecretError::Internal(cause) => Self::Internal(cause),
        }
    }
}

impl From<RuntimeError> for ApiError {
    fn from(err: RuntimeError) -> Self {
        match err {
            RuntimeError::NotFound => Self::InvalidToken("instance not found"),
            RuntimeError::Store(e) => e.into(),
            RuntimeError::Secret(e) => e.into(),
        }
    }
}

impl From<ChatError> for ApiError {
    fn from(err: ChatError) -> Self {
        match err {
            ChatError::UnknownInstance => Self::InvalidToken("instance not found"),
            ChatError::UnknownConversation => Self::NotFound("conversation"),
            ChatError::UnknownResponse => Self::NotFound("response"),
            ChatError::NoEmbeddingDeployment => Self::NotFound("embedding deployment"),
            ChatError::NotConfigured(detail) => Self::NotConfigured(detail),
            ChatError::OverLimit(refused) => Self::OverLimit(refused),
            ChatError::Invalid { field, detail } => Self::validation(field, detail),
            ChatError::Store(e) => e.into(),
            ChatError::Secret(e) => e.into(),
            ChatError::Upstream(e) => Self::Upstream(e),
            ChatError::KnowledgeUnavailable(cause) => Self::Dependency {
                detail: "the knowledge index is unavailable; retry later",
                cause,
            },
            ChatError::Internal(cause) => Self::Internal(cause),
            ChatError::Admitted(admitted) => {
                let (inner, standing) = *admitted;
                Self::Admitted(Box::new((Self::from(inner), standing)))
            }
        }
    }
}

impl From<crate::auth::authenticator::AuthError> for ApiError {
    fn from(err: crate::auth::authenticator::AuthError) -> Self {
        use crate::auth::authenticator::AuthError;
        match err {
            AuthError::InvalidToken(reason) => Self::InvalidToken(reason),
            AuthError::InvalidClient => Self::InvalidClient,
            AuthError::RateLimited { retry_after_secs } => Self::RateLimited { retry_after_secs },
            AuthError::Store(e) => e.into(),
            AuthError::Internal(cause) => Self::Internal(cause),
        }
    }
}

impl From<crate::jobs::StartError> for ApiError {
    fn from(err: crate::jobs::StartError) -> Self {
        use crate::jobs::StartError;
        match err {
            StartError::Runtime(e) => e.into(),
            StartError::Store(e) => e.into(),
            StartError::NotQueued => Self::Unavailable(err.to_string()),
        }
    }
}

impl From<crate::admin::AdminError> for ApiError {
    fn from(err: crate::admin::AdminError) -> Self {
        use crate::admin::AdminError;
        match err {
            AdminError::Invalid { field, detail } => Self::Validation { field, detail },
            AdminError::ForbiddenField { field, detail } => Self::ForbiddenField { field, detail },
            AdminError::NotFound(what) => Self::NotFound(what),
            AdminError::Conflict(message) => Self::Conflict(message),
            AdminError::NotConfigured(detail) => Self::NotConfigured(detail),
            AdminError::Auth(e) => e.into(),
            AdminError::Store(e) => e.into(),
            AdminError::Secret(e) => e.into(),
            AdminError::Internal(e) => Self::Internal(e),
        }
    }
}

impl From<crate::auth::admin::AdminAuthError> for ApiError {
    fn from(err: crate::auth::admin::AdminAuthError) -> Self {
        match err {
            crate::auth::admin::AdminAuthError::Invalid(reason) => ApiError::InvalidToken(reason),
            crate::auth::admin::AdminAuthError::Forbidden(reason) => ApiError::forbidden(reason),
            crate::auth::admin::AdminAuthError::Unavailable(detail) => {
                ApiError::Unavailable(detail)
            }
        }
    }
}

/// A store result whose `NotFound` is answered as a 404 naming what was looked for.
pub trait NotFoundAs<T> {
    fn not_found_as(self, what: &'static str) -> Result<T, ApiError>;
}

impl<T> NotFoundAs<T> for Result<T, StoreError> {
    fn not_found_as(self, what: &'static str) -> Result<T, ApiError> {
        self.map_err(|e| match e {
            StoreError::NotFound => ApiError::NotFound(what),
            other => other.into(),
        })
    }
}
