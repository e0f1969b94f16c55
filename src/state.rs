//! Shared application state: one `App` behind an `Arc`, handed to handlers by axum.

use std::sync::Arc;
use std::time::Instant;

use crate::auth::admin::AdminVerifier;
use crate::auth::keys::KeyHasher;
use crate::auth::rate_limit::RateLimiter;
use crate::auth::service_token::ServiceTokens;
use crate::config::Settings;
use crate::domain::UpstreamPolicy;
use crate::knowledge::KnowledgeIndex;
use crate::llm::ModelClient;
use crate::secrets::SecretStore;
use crate::store::Store;
use crate::tenant::SecurityCache;
use crate::tenant::runtime::RuntimeCache;

/// Everything a request may need: backends, keys, caches and settings.
pub struct App {
    pub settings: Settings,
    pub store: Arc<dyn Store>,
    pub secrets: Arc<dyn SecretStore>,
    pub knowledge: Arc<dyn KnowledgeIndex>,
    /// Text extraction for refresh jobs (sandboxed for formats that inflate or nest).
    pub extractor: crate::knowledge::sandbox::Extractor,
    /// Where refresh jobs go to be run.
    pub jobs: crate::jobs::JobQueue,
    pub http: reqwest::Client,
    pub tokens: ServiceTokens,
    pub admin: AdminVerifier,
    pub hasher: KeyHasher,
    pub upstreams: UpstreamPolicy,
    pub security: SecurityCache,
    pub runtimes: RuntimeCache,
    pub models: ModelClient,
    /// SOPHIA's own Entra identity: its Cosmos DB, Key Vault and queue, never a company's
    /// resources.
    pub entra: Option<Arc<crate::azure_auth::EntraTokens>>,
    /// Companies' own user-assigned identities (`settings.managedIdentityClientId`).
    pub identities: Option<Arc<crate::azure_auth::CompanyIdentities>>,
    pub usage: crate::usage::UsageRecorder,
    /// SHA-256 of a service token → its verified claims (signature checked once per token).
    pub verified_tokens:
        moka::future::Cache<[u8; 32], std::sync::Arc<crate::auth::service_token::ServiceClaims>>,
    /// `/chat` body-key flow: (companyId, SHA-256 of the key) → verified instance, short TTL.
    pub verified_keys: moka::future::Cache<(String, [u8; 32]), crate::routes::chat::VerifiedKey>,
    pub limit_by_address: RateLimiter,
    /// Brute-force protection of access-key checks (per source, per company, unknown ids).
    pub key_checks: crate::auth::key_checks::KeyChecks,
    pub started_at: Instant,
}

pub type AppState = Arc<App>;

impl App {
    /// Appends an audit entry. The action it records has already happened, so a store that
    /// refuses the entry is logged, not turned into an error for the caller.
    pub async fn audit(&self, entry: crate::domain::AuditEntry) {
        if let Err(e) = self.store.append_audit(&entry).await {
            tracing::error!(audit.action = %entry.action, tenant.id = %entry.tenant_id, error = ?e, "audit entry could not be written: {e:#}");
        }
    }
}
