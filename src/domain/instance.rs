//! The agent instance: one company's SOPHIA configuration, as stored.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{InstanceId, TenantId};

/// Kinds of agent SOPHIA serves. Only `SOPHIA` today; the field exists so the API can grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AgentType {
    #[serde(rename = "SOPHIA")]
    Sophia,
}

impl AgentType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sophia => "SOPHIA",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        (raw == "SOPHIA").then_some(Self::Sophia)
    }
}

/// Lifecycle of an instance. `DISABLED` is the soft-deleted state: no token exchange, no
/// service token accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceStatus {
    Active,
    ToProvision,
    Disabled,
}

impl InstanceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::ToProvision => "TO_PROVISION",
            Self::Disabled => "DISABLED",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "ACTIVE" => Some(Self::Active),
            "TO_PROVISION" => Some(Self::ToProvision),
            "DISABLED" => Some(Self::Disabled),
            _ => None,
        }
    }

    /// Whether a client of this instance may obtain and use service tokens.
    pub fn can_authenticate(self) -> bool {
        !matches!(self, Self::Disabled)
    }
}

/// Which wire protocol the instance's model speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    #[default]
    AzureOpenai,
    Openai,
}

/// What an instance names of its provider and Azure resources: one struct, flattened into the
/// stored document and into the admin view (so they share every field name).
///
/// The create and patch bodies list these fields themselves rather than flattening this
/// struct: serde's `flatten` loses the path of a field that fails to parse, and every 400 of
/// the admin API names its field. Both bodies validate and apply them through
/// [`ConfigField`], the one list of their names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceConfig {
    #[serde(default)]
    pub provider: Provider,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub azure_project_id: Option<String>,
    #[serde(default)]
    pub azure_openai_endpoint: Option<String>,
    #[serde(default)]
    pub azure_openai_deployment: Option<String>,
    #[serde(default)]
    pub azure_embedding_deployment: Option<String>,
    #[serde(default)]
    pub azure_search_endpoint: Option<String>,
    #[serde(default)]
    pub azure_vector_store_id: Option<String>,
    /// The company's Azure AI Foundry project
    /// (`https://<resource>.services.ai.azure.com/api/projects/<project>`), for the `foundry`
    /// runtime.
    #[serde(default)]
    pub azure_project_endpoint: Option<String>,
    /// The company's Foundry prompt agent, `name:version`.
    #[serde(default)]
    pub azure_agent_id: Option<String>,
    /// The model deployments a turn fails over between, in priority order (when empty: the
    /// one of `azureOpenaiEndpoint` and `azureOpenaiDeployment`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deployments: Vec<super::deployments::Deployment>,
}

/// The text fields of [`InstanceConfig`], by their API names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigField {
    Region,
    Model,
    AzureProjectId,
    AzureOpenaiEndpoint,
    AzureOpenaiDeployment,
    AzureEmbeddingDeployment,
    AzureSearchEndpoint,
    AzureVectorStoreId,
    AzureProjectEndpoint,
    AzureAgentId,
}

impl ConfigField {
    pub const ALL: [ConfigField; 10] = [
        Self::Region,
        Self::Model,
        Self::AzureProjectId,
        Self::AzureOpenaiEndpoint,
        Self::AzureOpenaiDeployment,
        Self::AzureEmbeddingDeployment,
        Self::AzureSearchEndpoint,
        Self::AzureVectorStoreId,
        Self::AzureProjectEndpoint,
        Self::AzureAgentId,
    ];

    /// The field's name in the API and the stored document.
    pub fn name(self) -> &'static str {
        match self {
            Self::Region => "region",
            Self::Model => "model",
            Self::AzureProjectId => "azureProjectId",
            Self::AzureOpenaiEndpoint => "azureOpenaiEndpoint",
            Self::AzureOpenaiDeployment => "azureOpenaiDeployment",
            Self::AzureEmbeddingDeployment => "azureEmbeddingDeployment",
            Self::AzureSearchEndpoint => "azureSearchEndpoint",
            Self::AzureVectorStoreId => "azureVectorStoreId",
            Self::AzureProjectEndpoint => "azureProjectEndpoint",
            Self::AzureAgentId => "azureAgentId",
        }
    }
}

impl InstanceConfig {
    /// The value of one text field.
    pub fn field_mut(&mut self, field: ConfigField) -> &mut Option<String> {
        match field {
            ConfigField::Region => &mut self.region,
            ConfigField::Model => &mut self.model,
            ConfigField::AzureProjectId => &mut self.azure_project_id,
            ConfigField::AzureOpenaiEndpoint => &mut self.azure_openai_endpoint,
            ConfigField::AzureOpenaiDeployment => &mut self.azure_openai_deployment,
            ConfigField::AzureEmbeddingDeployment => &mut self.azure_embedding_deployment,
            ConfigField::AzureSearchEndpoint => &mut self.azure_search_endpoint,
            ConfigField::AzureVectorStoreId => &mut self.azure_vector_store_id,
            ConfigField::AzureProjectEndpoint => &mut self.azure_project_endpoint,
            ConfigField::AzureAgentId => &mut self.azure_agent_id,
        }
    }
}

/// A Foundry agent version as SOPHIA names it: `name:version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRef {
    pub name: String,
    pub version: String,
}

impl AgentRef {
    /// Parses `name:version` (a name of letters, digits and '-', up to 63; a version of
    /// letters, digits, '.', '-' or '_').
    pub fn parse(raw: &str) -> Option<Self> {
        let (name, version) = raw.split_once(':')?;
        let name_ok = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && name.as_bytes()[0].is_ascii_alphanumeric();
        let version_ok = !version.is_empty()
            && version.len() <= 64
            && version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        (name_ok && version_ok).then(|| Self {
            name: name.to_owned(),
            version: version.to_owned(),
        })
    }
}

impl std::fmt::Display for AgentRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, self.version)
    }
}

/// The stored instance document (`agentInstances`, partition key `tenantId`).
///
/// `accessKeyHash` is a bcrypt hash; credentials live only in the secret store, referenced by
/// `keyvaultSecretId`. `etag` is assigned by the store on every write.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentInstance {
    pub id: InstanceId,
    pub tenant_id: TenantId,
    pub agent_type: AgentType,
    pub status: InstanceStatus,
    /// The model provider and the Azure resources the instance names.
    #[serde(flatten)]
    pub config: InstanceConfig,
    #[serde(default)]
    pub settings: super::InstanceSettings,
    pub keyvault_secret_id: Option<String>,
    pub access_key_hash: KeyHash,
    pub access_key_last4: String,
    pub key_version: u32,
    /// The key a rotation with a grace period replaced: it, and the tokens issued under it,
    /// stay valid until `expiresAt` (or until `revoke-previous-key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key: Option<PreviousKey>,
    /// Who disabled the instance (set while it is `DISABLED`): a platform admin's disable is
    /// lifted only by a platform admin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_by: Option<super::authority::DisabledBy>,
    /// Why the last provisioning of a `foundry` instance failed (set while it waits in
    /// `TO_PROVISION`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub etag: String,
}

/// The access key a rotation replaced, valid until `expires_at`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviousKey {
    pub hash: KeyHash,
    pub last4: String,
    pub version: u32,
    pub expires_at: DateTime<Utc>,
}

impl PreviousKey {
    /// Whether the grace period is still running at `now`.
    pub fn valid_at(&self, now: DateTime<Utc>) -> bool {
        now < self.expires_at
    }
}

impl AgentInstance {
    /// The previous key, while its grace period runs.
    pub fn previous_key_at(&self, now: DateTime<Utc>) -> Option<&PreviousKey> {
        self.previous_key.as_ref().filter(|p| p.valid_at(now))
    }
}

/// A bcrypt hash of an access key. Not the key, but still nothing to print: `Debug` redacts.
#[derive(Clone, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct KeyHash(String);

impl KeyHash {
    pub fn new(hash: String) -> Self {
        Self(hash)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHash([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hashes_do_not_print_but_round_trip() {
        let hash = KeyHash::new("$2b$12$abcdefghijklmnopqrstuv".into());
        assert_eq!(format!("{hash:?}"), "KeyHash([REDACTED])");
        let json = serde_json::to_string(&hash).unwrap();
        assert_eq!(json, "\"$2b$12$abcdefghijklmnopqrstuv\"", "stored as is");
        let back: KeyHash = serde_json::from_str(&json).unwrap();
        assert_eq!(back.as_str(), hash.as_str());
    }
}
