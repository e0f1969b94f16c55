//! Why the admin service refused or failed a write. Every refusal names what a client must
//! change (the field, the conflict); the HTTP shape of each is `error.rs`'s business.

use crate::auth::admin::AdminAuthError;
use crate::secrets::SecretError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A field of the body is not acceptable (400).
    #[error("{field}: {detail}")]
    Invalid { field: String, detail: String },
    /// This admin may not write that field (403).
    #[error("{field}: {detail}")]
    ForbiddenField { field: String, detail: String },
    /// Absent, or not this admin's to see (404).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A uniqueness rule (one live instance, one company per identity or secret) (409).
    #[error("{0}")]
    Conflict(String),
    /// The instance lacks what the action needs, or its provisioning failed (409).
    #[error("{0}")]
    NotConfigured(String),
    /// The admin is not allowed to act on that company at all.
    #[error(transparent)]
    Auth(#[from] AdminAuthError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Internal(anyhow::Error),
}

impl AdminError {
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            detail: detail.into(),
        }
    }

    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        Self::Internal(err.into())
    }

    /// A store error where `NotFound` means the named resource.
    pub fn store_as(what: &'static str) -> impl Fn(StoreError) -> Self {
        move |e| match e {
            StoreError::NotFound => Self::NotFound(what),
            other => Self::Store(other),
        }
    }
}
