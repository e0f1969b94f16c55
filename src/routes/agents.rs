//! `GET /agents/me`: who a service token is.

use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::{InstanceId, TenantId};
use crate::http::extract::ServiceAuth;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Me {
    pub company_id: TenantId,
    pub instance_id: InstanceId,
    pub agent_type: String,
    pub scope: String,
    pub key_version: u32,
    pub expires_at: DateTime<Utc>,
}

/// The identity behind the bearer token — the simplest way for a client to check its token.
pub async fn me(ServiceAuth(claims): ServiceAuth) -> Json<Me> {
    Json(Me {
        company_id: claims.company_id,
        instance_id: claims.sub,
        agent_type: claims.agent_type,
        scope: claims.scope,
        key_version: claims.key_version,
        expires_at: DateTime::from_timestamp(claims.exp, 0).unwrap_or_else(Utc::now),
    })
}
