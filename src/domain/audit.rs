//! Audit trail entries (`auditLogs`, partition key `tenantId`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{InstanceId, TenantId};

/// Actions recorded in the audit trail.
pub mod action {
    pub const INSTANCE_CREATE: &str = "agent_instance.create";
    pub const INSTANCE_UPDATE: &str = "agent_instance.update";
    pub const INSTANCE_ROTATE_KEY: &str = "agent_instance.rotate_key";
    pub const INSTANCE_REVOKE_PREVIOUS_KEY: &str = "agent_instance.revoke_previous_key";
    pub const INSTANCE_DISABLE: &str = "agent_instance.disable";
    pub const INSTANCE_PROVISION: &str = "agent_instance.provision";
    pub const AUTH_SUCCESS: &str = "agent.auth.success";
    pub const AUTH_FAILURE: &str = "agent.auth.failure";
    pub const REFRESH_START: &str = "refresh.start";
    pub const REFRESH_FINISH: &str = "refresh.finish";
    pub const CONFIG_TEST: &str = "config.test";
    /// A company's day or month token budget ran out (once per window and process).
    pub const LIMIT_EXHAUSTED: &str = "limits.exhausted";
}

/// One audit record. `details` never holds a secret: field names, not values.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub id: uuid::Uuid,
    pub tenant_id: TenantId,
    pub action: String,
    pub instance_id: Option<InstanceId>,
    /// Who acted: `admin:<subject>` or `client:<companyId>`.
    pub actor: String,
    pub outcome: AuditOutcome,
    pub request_id: String,
    pub client_address: Option<String>,
    pub time: DateTime<Utc>,
    #[serde(default)]
    pub details: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditOutcome {
    Success,
    Failure,
}

impl AuditOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

impl AuditEntry {
    /// A new entry stamped now, for the request being served.
    pub fn new(tenant_id: TenantId, action: &str, actor: String, outcome: AuditOutcome) -> Self {
        Self {
            id: uuid::Uuid::new_v4(),
            tenant_id,
            action: action.to_owned(),
            instance_id: None,
            actor,
            outcome,
            request_id: crate::http::request_id::current(),
            client_address: None,
            time: Utc::now(),
            details: serde_json::Value::Null,
        }
    }

    pub fn instance(mut self, id: InstanceId) -> Self {
        self.instance_id = Some(id);
        self
    }

    pub fn client(mut self, address: &str) -> Self {
        self.client_address = Some(address.to_owned());
        self
    }

    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}
