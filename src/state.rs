//! Shared application state: one `App` behind an `Arc`, handed to handlers by axum.

use std::sync::Arc;
use std::time::Instant;

use crate::auth::admin::AdminVerifier;
use crate::auth::authenticator::Authenticator;
use crate::config::Settings;
use crate::knowledge::KnowledgeIndex;
use crate::llm::ModelClient;
use crate::secrets::SecretStore;
use crate::store::Store;
use crate::tenant::runtime::RuntimeCache;
use crate::upstream::UpstreamPolicy;

/// Everything a request may need: backends, keys, caches and settings.
pub struct App {
    pub settings: Settings,
    pub store: Arc<dyn Store>,
    pub secrets: Arc<dyn SecretStore>,
    pub knowledge: Arc<dyn KnowledgeIndex>,
    /// Text extraction for refresh jobs (sandboxed for formats that inflate or nest).
    pub extractor: crate::knowledge::sandbox::Extractor,
    /// Where refresh jobs go to be run.
    pub jobs: crate::jobs::queue::JobQueue,
    pub http: reqwest::Client,
    /// Who data-plane callers are: service tokens, access keys, liveness, their caches.
    pub auth: Authenticator,
    pub admin: AdminVerifier,
    pub upstreams: UpstreamPolicy,
    pub runtimes: RuntimeCache,
    pub models: ModelClient,
    /// SOPHIA's own Entra identity: its Cosmos DB, Key Vault and queue, never a company's
    /// resources.
    pub entra: Option<Arc<crate::azure_auth::EntraTokens>>,
    /// Companies' own user-assigned identities (`settings.managedIdentityClientId`).
    pub identities: Option<Arc<crate::azure_auth::CompanyIdentities>>,
    pub usage: crate::usage::UsageRecorder,
    /// Fleet-wide limits per company (counters in the store, reserved locally).
    pub limits: crate::limits::Limiter,
    pub started_at: Instant,
}

pub type AppState = Arc<App>;

impl App {
    /// Appends an audit entry. The action it records has already happened, so a store that
    /// refuses the entry is logged, not turned into an error for the caller.
    pub async fn audit(&self, entry: crate::domain::AuditEntry) {
        crate::store::audit(self.store.as_ref(), entry).await;
    }
}
