//! Request and response bodies of the admin API.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::domain::{
    AgentInstance, AgentType, AuditEntry, ConfigField, InstanceConfig, InstanceId, InstanceStatus,
    Provider, TenantId,
};
use crate::secrets::CredentialBundle;

/// A PATCH field: absent (leave alone), `null` (clear) or a value.
#[derive(Debug, Default)]
pub enum Patch<T> {
    #[default]
    Absent,
    Null,
    Value(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Patch<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Option::<T>::deserialize(d).map(|o| o.map_or(Patch::Null, Patch::Value))
    }
}

/// `POST /admin/agent-instances`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateInstance {
    pub company_id: TenantId,
    pub agent_type: AgentType,
    pub provider: Option<Provider>,
    pub region: Option<String>,
    pub model: Option<String>,
    pub azure_project_id: Option<String>,
    pub azure_openai_endpoint: Option<String>,
    pub azure_openai_deployment: Option<String>,
    pub azure_embedding_deployment: Option<String>,
    pub azure_search_endpoint: Option<String>,
    pub azure_vector_store_id: Option<String>,
    pub azure_project_endpoint: Option<String>,
    pub azure_agent_id: Option<String>,
    /// Checked by `validate::deployments` (each bad field named).
    pub deployments: Option<Value>,
    pub settings: Option<Map<String, Value>>,
    pub credentials: Option<CredentialBundle>,
    pub keyvault_secret_id: Option<String>,
}

impl CreateInstance {
    /// The configuration this body gives (not yet validated).
    pub fn take_config(&mut self) -> InstanceConfig {
        InstanceConfig {
            provider: self.provider.take().unwrap_or_default(),
            region: self.region.take(),
            model: self.model.take(),
            azure_project_id: self.azure_project_id.take(),
            azure_openai_endpoint: self.azure_openai_endpoint.take(),
            azure_openai_deployment: self.azure_openai_deployment.take(),
            azure_embedding_deployment: self.azure_embedding_deployment.take(),
            azure_search_endpoint: self.azure_search_endpoint.take(),
            azure_vector_store_id: self.azure_vector_store_id.take(),
            azure_project_endpoint: self.azure_project_endpoint.take(),
            azure_agent_id: self.azure_agent_id.take(),
            deployments: Vec::new(),
        }
    }
}

/// `PATCH /admin/agent-instances/{id}`: only these fields exist; anything else is a 400.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PatchInstance {
    pub status: Patch<InstanceStatus>,
    pub provider: Patch<Provider>,
    pub region: Patch<String>,
    pub model: Patch<String>,
    pub azure_project_id: Patch<String>,
    pub azure_openai_endpoint: Patch<String>,
    pub azure_openai_deployment: Patch<String>,
    pub azure_embedding_deployment: Patch<String>,
    pub azure_search_endpoint: Patch<String>,
    pub azure_vector_store_id: Patch<String>,
    pub azure_project_endpoint: Patch<String>,
    pub azure_agent_id: Patch<String>,
    /// Replaces the list (`null` or `[]` clears it).
    pub deployments: Patch<Value>,
    /// Merged into the stored settings (RFC 7386): a `null` member removes that key.
    pub settings: Patch<Map<String, Value>>,
    pub credentials: Patch<CredentialBundle>,
    pub keyvault_secret_id: Patch<String>,
}

impl PatchInstance {
    /// The text fields of the configuration this body patches, by field.
    pub fn take_config(&mut self) -> [(ConfigField, Patch<String>); 10] {
        let take = std::mem::take;
        [
            (ConfigField::Region, take(&mut self.region)),
            (ConfigField::Model, take(&mut self.model)),
            (
                ConfigField::AzureProjectId,
                take(&mut self.azure_project_id),
            ),
            (
                ConfigField::AzureOpenaiEndpoint,
                take(&mut self.azure_openai_endpoint),
            ),
            (
                ConfigField::AzureOpenaiDeployment,
                take(&mut self.azure_openai_deployment),
            ),
            (
                ConfigField::AzureEmbeddingDeployment,
                take(&mut self.azure_embedding_deployment),
            ),
            (
                ConfigField::AzureSearchEndpoint,
                take(&mut self.azure_search_endpoint),
            ),
            (
                ConfigField::AzureVectorStoreId,
                take(&mut self.azure_vector_store_id),
            ),
            (
                ConfigField::AzureProjectEndpoint,
                take(&mut self.azure_project_endpoint),
            ),
            (ConfigField::AzureAgentId, take(&mut self.azure_agent_id)),
        ]
    }
}

/// `GET /admin/agent-instances` query.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListInstancesQuery {
    pub company_id: Option<TenantId>,
    pub status: Option<InstanceStatus>,
    pub limit: Option<u32>,
    pub continuation_token: Option<String>,
}

/// `GET /admin/audit-logs` query.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditQuery {
    pub company_id: Option<TenantId>,
    pub instance_id: Option<InstanceId>,
    pub action: Option<String>,
    pub limit: Option<u32>,
    pub continuation_token: Option<String>,
}

/// An instance as admins see it: the key only as its last four characters, never a
/// credential.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceView {
    pub id: InstanceId,
    pub company_id: TenantId,
    pub agent_type: AgentType,
    pub status: InstanceStatus,
    #[serde(flatten)]
    pub config: InstanceConfig,
    pub settings: crate::domain::InstanceSettings,
    pub keyvault_secret_id: Option<String>,
    pub has_credentials: bool,
    pub access_key_last4: String,
    pub access_key_masked: String,
    pub key_version: u32,
    /// While a rotation's grace period runs: the previous key's version, its last four
    /// characters and when it (and every token issued under it) stops working.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_key_version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_key_last4: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_key_expires_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_by: Option<crate::domain::authority::DisabledBy>,
    /// Why the last provisioning failed (a `foundry` instance waiting in `TO_PROVISION`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provisioning_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub etag: String,
}

impl From<&AgentInstance> for InstanceView {
    fn from(i: &AgentInstance) -> Self {
        let previous = i.previous_key_at(Utc::now());
        Self {
            previous_key_version: previous.map(|p| p.version),
            previous_key_last4: previous.map(|p| p.last4.clone()),
            previous_key_expires_at: previous.map(|p| p.expires_at),
            id: i.id,
            company_id: i.tenant_id.clone(),
            agent_type: i.agent_type,
            status: i.status,
            config: i.config.clone(),
            settings: i.settings.clone(),
            keyvault_secret_id: i.keyvault_secret_id.clone(),
            has_credentials: i.keyvault_secret_id.is_some(),
            access_key_last4: i.access_key_last4.clone(),
            access_key_masked: format!("****{}", i.access_key_last4),
            key_version: i.key_version,
            disabled_by: i.disabled_by,
            provisioning_error: i.provisioning_error.clone(),
            created_at: i.created_at,
            updated_at: i.updated_at,
            last_used_at: i.last_used_at,
            etag: i.etag.clone(),
        }
    }
}

/// `POST …/rotate-key`'s optional body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RotateKey {
    /// How long the previous key (and its tokens) stays valid: 0 (the default) ends it at
    /// once; at most 7 days.
    #[serde(default)]
    pub grace_period_seconds: u64,
}

/// The answer of create and rotate-key: the instance plus the key in clear, this once.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceWithKey {
    #[serde(flatten)]
    pub instance: InstanceView,
    pub agent_access_key: String,
}

/// Every listing: `{items, continuationToken?}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct List<T> {
    pub items: Vec<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub continuation_token: Option<String>,
}

pub type AuditView = AuditEntry;
