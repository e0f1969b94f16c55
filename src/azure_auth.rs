//! Entra ID tokens.
//!
//! * SOPHIA's own identity ([`EntraTokens`], chosen by `SOPHIA_AZURE_CREDENTIAL`: managed
//!   identity — system- or user-assigned via `SOPHIA_AZURE_CLIENT_ID` —, workload identity,
//!   developer tools, or a client secret) reaches SOPHIA's own resources only: Cosmos DB, Key
//!   Vault, the refresh queue.
//! * A company's resources are reached with that company's own user-assigned identity
//!   ([`CompanyIdentities`], selected by `settings.managedIdentityClientId`), never with
//!   SOPHIA's: Azure RBAC on the company's identity is what keeps it to its own resources.
//!
//! `azure_identity` caches and refreshes the tokens.

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use secrecy::SecretString;

use crate::upstream::UpstreamError;

/// Scope of Azure OpenAI / AI Services data-plane tokens.
pub const COGNITIVE_SERVICES_SCOPE: &str = "https://cognitiveservices.azure.com/.default";
/// Scope of Azure AI Search data-plane tokens.
pub const SEARCH_SCOPE: &str = "https://search.azure.com/.default";

/// Which credential `SOPHIA_AZURE_CREDENTIAL` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    ManagedIdentity,
    WorkloadIdentity,
    DeveloperTools,
    ClientSecret,
}

impl CredentialKind {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "managed_identity" => Some(Self::ManagedIdentity),
            "workload_identity" => Some(Self::WorkloadIdentity),
            "developer_tools" => Some(Self::DeveloperTools),
            "client_secret" => Some(Self::ClientSecret),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ManagedIdentity => "managed_identity",
            Self::WorkloadIdentity => "workload_identity",
            Self::DeveloperTools => "developer_tools",
            Self::ClientSecret => "client_secret",
        }
    }
}

/// The process's Entra credential.
pub struct EntraTokens {
    kind: CredentialKind,
    credential: Arc<dyn TokenCredential>,
    /// The expiry of the last token handed out per scope: the same expiry again means the
    /// credential answered from its cache (the token-cache hit-rate metric).
    last_expiry: std::sync::Mutex<std::collections::HashMap<String, i64>>,
}

impl std::fmt::Debug for EntraTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EntraTokens({})", self.kind.as_str())
    }
}

impl EntraTokens {
    /// Builds the credential. `client_id` selects a user-assigned managed identity (or the
    /// app for `client_secret`); `client_secret` reads `AZURE_TENANT_ID` and `AZURE_CLIENT_SECRET`.
    pub fn new(kind: CredentialKind, client_id: Option<&str>) -> anyhow::Result<Self> {
        use azure_identity::{
            ClientSecretCredential, DeveloperToolsCredential, ManagedIdentityCredential,
            ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
        };
        let credential: Arc<dyn TokenCredential> = match kind {
            CredentialKind::ManagedIdentity => {
                let options = ManagedIdentityCredentialOptions {
                    user_assigned_id: client_id.map(|id| UserAssignedId::ClientId(id.to_owned())),
                    ..Default::default()
                };
                ManagedIdentityCredential::new(Some(options))?
            }
            CredentialKind::WorkloadIdentity => WorkloadIdentityCredential::new(None)?,
            CredentialKind::DeveloperTools => DeveloperToolsCredential::new(None)?,
            CredentialKind::ClientSecret => {
                let var = |name: &str| {
                    std::env::var(name)
                        .ok()
                        .filter(|v| !v.trim().is_empty())
                        .ok_or_else(|| {
                            anyhow::anyhow!("SOPHIA_AZURE_CREDENTIAL=client_secret needs {name}")
                        })
                };
                let tenant = var("AZURE_TENANT_ID")?;
                let app = match client_id {
                    Some(id) => id.to_owned(),
                    None => var("AZURE_CLIENT_ID")?,
                };
                let secret = var("AZURE_CLIENT_SECRET")?;
                ClientSecretCredential::new(&tenant, app, secret.into(), None)?
            }
        };
        Ok(Self {
            kind,
            credential,
            last_expiry: Default::default(),
        })
    }

    pub fn kind(&self) -> CredentialKind {
        self.kind
    }

    /// The credential itself, for Azure SDK clients (Cosmos DB, Key Vault).
    pub fn credential(&self) -> Arc<dyn TokenCredential> {
        Arc::clone(&self.credential)
    }

    /// A bearer token for `scope` (cached and refreshed by the credential).
    pub async fn token(&self, scope: &str) -> Result<SecretString, UpstreamError> {
        match self.credential.get_token(&[scope], None).await {
            Ok(token) => {
                if crate::telemetry::enabled() {
                    let expiry = token.expires_on.unix_timestamp();
                    let hit = self.last_expiry.lock().is_ok_and(|mut seen| {
                        seen.insert(scope.to_owned(), expiry) == Some(expiry)
                    });
                    crate::telemetry::metrics::cache_lookup("token", hit);
                }
                Ok(SecretString::from(token.token.secret().to_owned()))
            }
            Err(e) => Err(UpstreamError::Configuration(format!(
                "no Entra token from the {} credential: {e}",
                self.kind.as_str()
            ))),
        }
    }
}

/// The per-company user-assigned identities, one credential per client id, built on first
/// use and kept. Only credential kinds that can select an identity by client id qualify:
/// managed identity (App Service / Functions / IMDS `client_id`) and workload identity.
pub struct CompanyIdentities {
    kind: CredentialKind,
    tokens: std::sync::Mutex<std::collections::HashMap<String, Arc<EntraTokens>>>,
}

impl std::fmt::Debug for CompanyIdentities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CompanyIdentities({})", self.kind.as_str())
    }
}

/// How many company identities a process keeps credentials for.
const MAX_COMPANY_IDENTITIES: usize = 100_000;

impl CompanyIdentities {
    /// Company identities of `kind`; `None` for kinds that cannot select one.
    pub fn new(kind: CredentialKind) -> Option<Self> {
        matches!(
            kind,
            CredentialKind::ManagedIdentity | CredentialKind::WorkloadIdentity
        )
        .then(|| Self {
            kind,
            tokens: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// The credential of the identity with this client id (a GUID, checked when it was set).
    pub fn for_client(&self, client_id: &str) -> Result<Arc<EntraTokens>, String> {
        let mut tokens = self
            .tokens
            .lock()
            .map_err(|_| "company identities unavailable".to_owned())?;
        if let Some(found) = tokens.get(client_id) {
            return Ok(Arc::clone(found));
        }
        let built = match self.kind {
            CredentialKind::WorkloadIdentity => {
                let options = azure_identity::WorkloadIdentityCredentialOptions {
                    client_id: Some(client_id.to_owned()),
                    ..Default::default()
                };
                azure_identity::WorkloadIdentityCredential::new(Some(options))
                    .map(|c| c as Arc<dyn TokenCredential>)
                    .map_err(|e| e.to_string())
            }
            _ => EntraTokens::new(CredentialKind::ManagedIdentity, Some(client_id))
                .map(|t| t.credential)
                .map_err(|e| e.to_string()),
        }
        .map_err(|e| format!("the company's identity {client_id} is unusable: {e}"))?;
        if tokens.len() >= MAX_COMPANY_IDENTITIES {
            tokens.clear();
        }
        let entry = Arc::new(EntraTokens {
            kind: self.kind,
            credential: built,
            last_expiry: Default::default(),
        });
        tokens.insert(client_id.to_owned(), Arc::clone(&entry));
        Ok(entry)
    }
}
