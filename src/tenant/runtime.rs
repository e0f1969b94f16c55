//! `TenantRuntime`: one company's instance document plus its credential bundle, turned into
//! what a chat turn or a refresh needs — model endpoints with their auth, the knowledge index
//! (embedded or the company's AI Search), the knowledge source, prompt settings — resolved
//! once, at load, and cached.
//!
//! The cache (`RuntimeCache`) is keyed by tenant and instance, with a jittered TTL (so a
//! fleet does not reload every tenant at once), single-flight loading (concurrent misses for
//! a cold tenant make one store read and one secret read), stale-if-error (when the store or
//! secret store fails, the last good runtime keeps serving for a bounded time, logged as a
//! warning) and explicit invalidation when an admin changes the instance.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use crate::azure_auth::{CompanyIdentities, EntraTokens};
use crate::domain::authority::{AuthMode, identity_client_id};
use crate::domain::settings::{ApiStyle, Runtime};
use crate::domain::{AgentInstance, AgentRef, InstanceId, Provider, TenantId};
use crate::knowledge::KnowledgeIndex;
use crate::knowledge::azure_search::{AzureSearchIndex, DEFAULT_INDEX, SearchAuth};
use crate::knowledge::source::{BlobAuth, BlobSource, FolderSource, KnowledgeSource};
use crate::llm::client::DEFAULT_API_VERSION;
use crate::llm::foundry::FoundryProject;
use crate::llm::pool::{BreakerPolicy, Breakers, Entry, Pool};
use crate::llm::{ChatParams, ModelEndpoint, UpstreamAuth};
use crate::secrets::{CredentialBundle, SecretError, SecretStore};
use crate::store::{Store, StoreError, TenantScope};
use crate::telemetry;
use crate::upstream::UpstreamPolicy;

/// What turning an instance into a runtime needs besides the instance and its credentials:
/// the upstream policy every endpoint must pass, the policy-checked HTTP client, the embedded
/// knowledge index and data folder, and the companies' own identities.
#[derive(Clone)]
pub struct Resolver {
    pub upstreams: Arc<UpstreamPolicy>,
    pub http: reqwest::Client,
    pub embedded: Arc<dyn KnowledgeIndex>,
    pub data_dir: std::path::PathBuf,
    pub identities: Option<Arc<CompanyIdentities>>,
    /// Every failover deployment's circuit breaker, and when they open.
    pub breakers: Arc<Breakers>,
    pub breaker_policy: BreakerPolicy,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("embedded", &self.embedded.backend())
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// Where a tenant's passages are searched and written.
#[derive(Clone)]
pub enum Knowledge {
    /// SOPHIA's embedded index (one for all tenants, every query scoped to the tenant).
    Embedded(Arc<dyn KnowledgeIndex>),
    /// The company's own Azure AI Search index.
    Search(Arc<AzureSearchIndex>),
}

impl Knowledge {
    pub fn index(&self) -> &dyn KnowledgeIndex {
        match self {
            Self::Embedded(index) => index.as_ref(),
            Self::Search(index) => index.as_ref(),
        }
    }
}

impl std::fmt::Debug for Knowledge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.index().backend())
    }
}

/// A `foundry` instance's project and the agent version its turns run.
#[derive(Debug, Clone)]
pub struct FoundryAgent {
    pub project: Arc<FoundryProject>,
    pub agent: AgentRef,
    /// The agent's turns: the Responses API of the project, as a model endpoint (a pool of
    /// one).
    pub endpoint: Arc<Pool>,
}

/// The company's own Entra identity when its instance uses one (`Err`: why it cannot);
/// `None` for an instance on its own keys.
pub fn company_identity(
    instance: &AgentInstance,
    identities: Option<&CompanyIdentities>,
) -> Option<Result<Arc<EntraTokens>, String>> {
    match AuthMode::of(instance) {
        AuthMode::ApiKey => None,
        AuthMode::ManagedIdentity => Some(match (identity_client_id(instance), identities) {
            (None, _) => Err(
                "settings.authMode=managedIdentity needs settings.managedIdentityClientId, the \
                 company's own user-assigned identity (SOPHIA's identity is never used for a \
                 company)"
                    .to_owned(),
            ),
            (Some(_), None) => Err(
                "settings.authMode=managedIdentity needs an Azure credential that selects the \
                 company's identity by client id: set SOPHIA_AZURE_CREDENTIAL=managed_identity \
                 (or workload_identity)"
                    .to_owned(),
            ),
            (Some(id), Some(identities)) => identities.for_client(id),
        }),
    }
}

/// The company's Foundry project, reached with its own identity (Foundry takes Entra tokens
/// only): `Err` says what the instance lacks.
pub fn foundry_project(
    instance: &AgentInstance,
    identity: Option<&Result<Arc<EntraTokens>, String>>,
    upstreams: &UpstreamPolicy,
    http: &reqwest::Client,
    owner: Option<Arc<telemetry::Owner>>,
) -> Result<FoundryProject, String> {
    let raw = instance
        .config
        .azure_project_endpoint
        .as_deref()
        .ok_or_else(|| "the foundry runtime needs azureProjectEndpoint".to_owned())?;
    let url = upstreams
        .check(raw)
        .map_err(|e| format!("azureProjectEndpoint is not allowed: {e}"))?;
    let tokens = match identity {
        Some(Ok(tokens)) => Arc::clone(tokens),
        Some(Err(e)) => return Err(e.clone()),
        None => {
            return Err(
                "the foundry runtime needs the company's own managed identity (Foundry \
                        accepts Entra tokens only): a platform admin sets settings.authMode=\
                        managedIdentity and settings.managedIdentityClientId"
                    .into(),
            );
        }
    };
    Ok(FoundryProject::new(url, tokens, http.clone(), owner))
}

/// Everything a chat turn needs about one tenant. Immutable; replaced on reload.
#[derive(Debug)]
pub struct TenantRuntime {
    pub instance: AgentInstance,
    /// The chat model — its deployments, tried in turn — or why there is none.
    pub chat: Result<Arc<Pool>, String>,
    /// The embedding model, when the instance names an embedding deployment.
    pub embeddings: Option<ModelEndpoint>,
    /// SAS for the knowledge Blob container (`credentials.knowledgeSas`).
    pub knowledge_sas: Option<SecretString>,
    /// The company's own Entra identity when the instance uses one (`Err`: why it cannot).
    pub identity: Option<Result<Arc<EntraTokens>, String>>,
    pub system_prompt: Option<String>,
    pub params: ChatParams,
    /// How many earlier messages of a conversation go with each turn.
    pub history_messages: usize,
    /// How many knowledge passages go into the prompt.
    pub top_k: usize,
    /// Model names a `/v1` caller may ask for (empty: any; the deployment is used regardless).
    pub allowed_models: Vec<String>,
    /// The tenant's knowledge index, or why it cannot be used.
    pub knowledge: Result<Knowledge, String>,
    /// On a `foundry` instance, its Foundry project and agent (or why they cannot be used).
    pub foundry: Option<Result<FoundryAgent, String>>,
    pub loaded_at: Instant,
    /// Whose telemetry its calls are.
    pub owner: Arc<telemetry::Owner>,
    resolver: Arc<Resolver>,
}

impl TenantRuntime {
    /// Builds the runtime from the instance and its credentials.
    pub fn build(
        instance: AgentInstance,
        credentials: CredentialBundle,
        resolver: &Arc<Resolver>,
    ) -> Self {
        let identities = resolver.identities.as_deref();
        let settings = &instance.settings;
        let api_version = settings
            .api_version()
            .unwrap_or(DEFAULT_API_VERSION)
            .to_owned();
        // A company's resources are reached with its own identity, never SOPHIA's.
        let identity = company_identity(&instance, identities);
        let auth = match (&identity, &credentials.azure_openai_key) {
            (Some(Ok(tokens)), _) => Ok(UpstreamAuth::Entra {
                tokens: Arc::clone(tokens),
                scope: crate::azure_auth::COGNITIVE_SERVICES_SCOPE,
            }),
            (Some(Err(e)), _) => Err(e.clone()),
            (None, Some(key)) => Ok(UpstreamAuth::Key(key.clone())),
            (None, None) => Err("the instance has no azureOpenaiKey credential".to_owned()),
        };
        let base = instance
            .config
            .azure_openai_endpoint
            .as_deref()
            .ok_or_else(|| "the instance has no azureOpenaiEndpoint".to_owned())
            .and_then(|e| {
                url::Url::parse(e).map_err(|e| format!("invalid azureOpenaiEndpoint: {e}"))
            });
        let deployment = instance
            .config
            .azure_openai_deployment
            .clone()
            .or_else(|| instance.config.model.clone())
            .ok_or_else(|| "the instance names neither azureOpenaiDeployment nor model".to_owned());
        let owner = Arc::new(telemetry::Owner::new(
            instance.tenant_id.as_str(),
            &instance.id.to_string(),
        ));
        let endpoint = |deployment: String, auth: UpstreamAuth, base: url::Url| {
            ModelEndpoint::new(
                instance.config.provider,
                base,
                deployment,
                api_version.clone(),
                auth,
            )
            .owned_by(Arc::clone(&owner))
            .v1_style(settings.api_style() == ApiStyle::V1)
        };
        let chat = if instance.config.deployments.is_empty() {
            match (base.clone(), deployment, auth.clone()) {
                (Ok(base), Ok(deployment), Ok(auth)) => Ok(Arc::new(Pool::single(Arc::new(
                    endpoint(deployment, auth, base),
                )))),
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(e),
            }
        } else {
            let entries = instance
                .config
                .deployments
                .iter()
                .map(|d| {
                    let built = resolver
                        .upstreams
                        .check(&d.endpoint)
                        .map_err(|e| format!("the endpoint is not allowed: {e}"))
                        .and_then(|base| {
                            // Only the company's own bundle is ever looked in.
                            let auth = match &d.credential {
                                Some(name) => credentials
                                    .deployment_key(name)
                                    .map(|key| UpstreamAuth::Key(key.clone()))
                                    .ok_or_else(|| {
                                        format!("credentials.deploymentKeys has no key '{name}'")
                                    })?,
                                None => auth.clone()?,
                            };
                            Ok(Arc::new(
                                endpoint(d.deployment.clone(), auth, base).labelled(&d.name),
                            ))
                        });
                    Entry {
                        name: Some(Arc::from(d.name.as_str())),
                        endpoint: built,
                        priority: d.priority,
                        weight: d.weight,
                        timeout: d
                            .timeout_seconds
                            .map(|s| std::time::Duration::from_secs(u64::from(s))),
                        breaker: resolver.breakers.of(
                            instance.tenant_id.as_str(),
                            &instance.id.to_string(),
                            &d.name,
                            &d.endpoint,
                            &d.deployment,
                        ),
                    }
                })
                .collect();
            Pool::new(entries, resolver.breaker_policy)
                .map(Arc::new)
                .map_err(|e| format!("no deployment of the instance can be called: {e}"))
        };
        // Embeddings go to `azureOpenaiEndpoint`, else to the first failover deployment.
        let embedding_home = match (base, auth, &chat) {
            (Ok(base), Ok(auth), _) => Some((base, auth)),
            (_, _, Ok(pool)) if !instance.config.deployments.is_empty() => {
                let primary = pool.primary();
                Some((primary.base.clone(), primary.auth.clone()))
            }
            _ => None,
        };
        let embeddings = match (&instance.config.azure_embedding_deployment, embedding_home) {
            (Some(d), Some((base, auth))) => Some(endpoint(d.clone(), auth, base)),
            _ => None,
        };
        let params = ChatParams {
            temperature: settings.temperature.as_ref().map(|t| *t.get()),
            top_p: settings.top_p.as_ref().map(|t| *t.get()),
            max_tokens: settings.max_tokens.as_ref().map(|n| *n.get()),
            extras: None,
            conversation: None,
        };
        let knowledge = search_index(&instance, &identity, &credentials, resolver, &owner);
        let foundry = (settings.runtime() == Runtime::Foundry).then(|| {
            let project = foundry_project(
                &instance,
                identity.as_ref(),
                &resolver.upstreams,
                &resolver.http,
                Some(Arc::clone(&owner)),
            )?;
            let agent = instance
                .config
                .azure_agent_id
                .as_deref()
                .and_then(AgentRef::parse)
                .filter(|_| instance.status == crate::domain::InstanceStatus::Active)
                .ok_or_else(|| {
                    "the instance's Foundry agent is not provisioned yet (POST \
                     /admin/agent-instances/{id}/provision)"
                        .to_owned()
                })?;
            let endpoint = ModelEndpoint::new(
                Provider::AzureOpenai,
                project.endpoint.clone(),
                agent.name.clone(),
                api_version.clone(),
                UpstreamAuth::Entra {
                    tokens: Arc::clone(&project.tokens),
                    scope: crate::llm::foundry::FOUNDRY_SCOPE,
                },
            )
            .owned_by(Arc::clone(&owner))
            .v1_style(true)
            .for_agent(agent.clone());
            Ok(FoundryAgent {
                project: Arc::new(project),
                agent,
                endpoint: Arc::new(Pool::single(Arc::new(endpoint))),
            })
        });
        Self {
            foundry,
            chat,
            embeddings,
            knowledge,
            resolver: Arc::clone(resolver),
            identity,
            knowledge_sas: credentials.knowledge_sas,
            system_prompt: settings.system_prompt().map(str::to_owned),
            params,
            history_messages: settings.history_messages(),
            top_k: settings.top_k(),
            allowed_models: settings.allowed_models().to_vec(),
            loaded_at: Instant::now(),
            owner,
            instance,
        }
    }

    /// The model the answer is attributed to when the upstream does not say.
    pub fn model_name(&self) -> String {
        match &self.chat {
            Ok(pool) => self
                .instance
                .config
                .model
                .clone()
                .unwrap_or_else(|| pool.primary().deployment.clone()),
            Err(_) => self.instance.config.model.clone().unwrap_or_default(),
        }
    }

    pub fn provider(&self) -> Provider {
        self.instance.config.provider
    }

    /// The company's knowledge source: its Blob container (`settings.knowledgeContainerUrl`,
    /// read with its SAS or its own identity, never SOPHIA's) or its folder under the data
    /// directory.
    pub fn source(&self) -> Result<Box<dyn KnowledgeSource>, String> {
        let settings = &self.instance.settings;
        let Some(raw) = settings.knowledge_container_url() else {
            return Ok(Box::new(FolderSource::for_tenant(
                &self.resolver.data_dir,
                &self.instance.tenant_id,
            )));
        };
        let url = self
            .resolver
            .upstreams
            .check(raw)
            .map_err(|e| format!("settings.knowledgeContainerUrl is not allowed: {e}"))?;
        let prefix = settings.knowledge_prefix();
        let auth = match (&self.knowledge_sas, &self.identity) {
            (Some(sas), _) => BlobAuth::Sas(sas.clone()),
            (None, Some(Ok(identity))) => BlobAuth::Entra(identity.credential()),
            (None, Some(Err(e))) => return Err(e.clone()),
            (None, None) => {
                return Err(
                    "the knowledge container needs credentials.knowledgeSas (or, set by a \
                     platform admin, the company's own managed identity)"
                        .into(),
                );
            }
        };
        // The company's container: each call a Blob dependency of the company's telemetry.
        let transport: Arc<dyn azure_core::http::HttpClient> =
            Arc::new(telemetry::deps::TracedHttp::new(
                Arc::new(crate::upstream::PolicyTransport::new(
                    self.resolver.http.clone(),
                )),
                telemetry::deps::Service::Blob,
                Some(Arc::clone(&self.owner)),
            ));
        BlobSource::new(&url, prefix, auth, Some(transport))
            .map(|s| Box::new(s) as Box<dyn KnowledgeSource>)
            .map_err(|e| e.to_string())
    }

    /// The source's description for a job record (no credentials).
    pub fn describe_source(&self) -> String {
        match self.source() {
            Ok(source) => source.describe(),
            Err(_) => "unusable source".into(),
        }
    }

    /// The company's Azure AI Search index, when it has one.
    pub fn search_index(&self) -> Option<&AzureSearchIndex> {
        match &self.knowledge {
            Ok(Knowledge::Search(index)) => Some(index),
            _ => None,
        }
    }
}

/// The tenant's Azure AI Search index when its instance names a search endpoint (checked
/// against the upstream policy; the company's identity or its search key), else the
/// embedded index.
fn search_index(
    instance: &AgentInstance,
    identity: &Option<Result<Arc<EntraTokens>, String>>,
    credentials: &CredentialBundle,
    resolver: &Resolver,
    owner: &Arc<telemetry::Owner>,
) -> Result<Knowledge, String> {
    let Some(endpoint) = &instance.config.azure_search_endpoint else {
        return Ok(Knowledge::Embedded(Arc::clone(&resolver.embedded)));
    };
    let url = resolver
        .upstreams
        .check(endpoint)
        .map_err(|e| format!("azureSearchEndpoint is not allowed: {e}"))?;
    let index = instance
        .settings
        .search_index()
        .unwrap_or(DEFAULT_INDEX)
        .to_owned();
    let auth = match identity {
        // The company's own identity (its RBAC on its search service), never SOPHIA's.
        Some(Ok(tokens)) => SearchAuth::Entra(Arc::clone(tokens)),
        Some(Err(e)) => return Err(e.clone()),
        None => SearchAuth::ApiKey(credentials.azure_search_key.clone().ok_or_else(|| {
            "the instance has an azureSearchEndpoint but no azureSearchKey credential".to_owned()
        })?),
    };
    Ok(Knowledge::Search(Arc::new(
        AzureSearchIndex::new(resolver.http.clone(), url, index, auth).owned_by(Arc::clone(owner)),
    )))
}

/// Cache counters, exposed on `/health`.
#[derive(Debug, Default)]
pub struct RuntimeStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub loads: AtomicU64,
    pub store_reads: AtomicU64,
    pub secret_reads: AtomicU64,
    pub load_errors: AtomicU64,
    pub stale_served: AtomicU64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeStatsView {
    pub entries: u64,
    pub hits: u64,
    pub misses: u64,
    pub loads: u64,
    pub store_reads: u64,
    pub secret_reads: u64,
    pub load_errors: u64,
    pub stale_served: u64,
}

/// Why a runtime could not be had.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("agent instance not found")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Secret(#[from] SecretError),
}

/// A TTL of `base` ± 10 %, drawn per entry.
struct JitteredTtl {
    base: Duration,
}

impl<K, V> Expiry<K, V> for JitteredTtl {
    fn expire_after_create(
        &self,
        _key: &K,
        _value: &V,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        let factor = 0.9 + rand::random::<f64>() * 0.2;
        Some(self.base.mul_f64(factor))
    }
}

type Key = (TenantId, InstanceId);

/// Per-tenant runtime cache.
pub struct RuntimeCache {
    /// Shared by every runtime it loads (one copy, not one per tenant).
    resolver: Arc<Resolver>,
    fresh: Cache<Key, Arc<TenantRuntime>>,
    /// The last good runtime of each tenant, kept `ttl + max_stale` for stale-if-error.
    last_good: moka::sync::Cache<Key, Arc<TenantRuntime>>,
    stats: Arc<RuntimeStats>,
}

impl RuntimeCache {
    pub fn new(ttl: Duration, max_stale: Duration, capacity: u64, resolver: Resolver) -> Self {
        Self {
            resolver: Arc::new(resolver),
            fresh: Cache::builder()
                .max_capacity(capacity)
                .expire_after(JitteredTtl { base: ttl })
                .build(),
            last_good: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl.mul_f64(1.1) + max_stale)
                .build(),
            stats: Arc::new(RuntimeStats::default()),
        }
    }

    pub fn resolver(&self) -> &Arc<Resolver> {
        &self.resolver
    }

    pub async fn stats(&self) -> RuntimeStatsView {
        // Entry counts are eventually consistent; settle pending maintenance first.
        self.fresh.run_pending_tasks().await;
        let s = &self.stats;
        RuntimeStatsView {
            entries: self.fresh.entry_count(),
            hits: s.hits.load(Ordering::Relaxed),
            misses: s.misses.load(Ordering::Relaxed),
            loads: s.loads.load(Ordering::Relaxed),
            store_reads: s.store_reads.load(Ordering::Relaxed),
            secret_reads: s.secret_reads.load(Ordering::Relaxed),
            load_errors: s.load_errors.load(Ordering::Relaxed),
            stale_served: s.stale_served.load(Ordering::Relaxed),
        }
    }

    /// The tenant's runtime: cached, loaded once for concurrent misses, or — if loading fails
    /// — the last good one while it is at most `max_stale` past its TTL.
    pub async fn get(
        &self,
        store: &Arc<dyn Store>,
        secrets: &Arc<dyn SecretStore>,
        tenant: &TenantId,
        id: &InstanceId,
    ) -> Result<Arc<TenantRuntime>, RuntimeError> {
        let key = (tenant.clone(), *id);
        if let Some(runtime) = self.fresh.get(&key).await {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            crate::telemetry::metrics::cache_lookup("tenant", true);
            return Ok(runtime);
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::metrics::cache_lookup("tenant", false);
        let stats = Arc::clone(&self.stats);
        let (store, secrets) = (Arc::clone(store), Arc::clone(secrets));
        let resolver = Arc::clone(&self.resolver);
        let (t, i) = (tenant.clone(), *id);
        let loaded = self
            .fresh
            .try_get_with(key.clone(), async move {
                stats.loads.fetch_add(1, Ordering::Relaxed);
                load(&store, &secrets, &t, &i, &stats, &resolver)
                    .await
                    .map(Arc::new)
            })
            .await;
        match loaded {
            Ok(runtime) => {
                self.last_good.insert(key, Arc::clone(&runtime));
                Ok(runtime)
            }
            Err(err) => {
                self.stats.load_errors.fetch_add(1, Ordering::Relaxed);
                let transient = matches!(
                    err.as_ref(),
                    RuntimeError::Store(StoreError::Unavailable(_))
                        | RuntimeError::Secret(SecretError::Unavailable(_))
                );
                // `last_good` entries live at most TTL + max_stale: that is the staleness bound.
                if transient && let Some(stale) = self.last_good.get(&key) {
                    let age = stale.loaded_at.elapsed();
                    self.stats.stale_served.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(tenant.id = %tenant, instance.id = %id, runtime.age_ms = age.as_millis() as u64, error = %err, "serving a stale runtime for {tenant}: reload failed: {err}");
                    return Ok(stale);
                }
                Err(match Arc::try_unwrap(err) {
                    Ok(e) => e,
                    Err(shared) => match shared.as_ref() {
                        RuntimeError::NotFound => RuntimeError::NotFound,
                        RuntimeError::Store(StoreError::Unavailable(e)) => {
                            RuntimeError::Store(StoreError::Unavailable(anyhow::anyhow!("{e:#}")))
                        }
                        RuntimeError::Secret(SecretError::Unavailable(e)) => {
                            RuntimeError::Secret(SecretError::Unavailable(anyhow::anyhow!("{e:#}")))
                        }
                        other => {
                            RuntimeError::Store(StoreError::Internal(anyhow::anyhow!("{other}")))
                        }
                    },
                })
            }
        }
    }

    /// Forgets a tenant's runtime (and its stale copy: an admin's change must not be masked).
    pub async fn invalidate(&self, tenant: &TenantId, id: &InstanceId) {
        let key = (tenant.clone(), *id);
        self.fresh.invalidate(&key).await;
        self.last_good.invalidate(&key);
    }
}

async fn load(
    store: &Arc<dyn Store>,
    secrets: &Arc<dyn SecretStore>,
    tenant: &TenantId,
    id: &InstanceId,
    stats: &RuntimeStats,
    resolver: &Arc<Resolver>,
) -> Result<TenantRuntime, RuntimeError> {
    stats.store_reads.fetch_add(1, Ordering::Relaxed);
    let instance = match store
        .get_instance(&TenantScope::Tenant(tenant.clone()), id)
        .await
    {
        Ok(i) => i,
        Err(StoreError::NotFound) => return Err(RuntimeError::NotFound),
        Err(e) => return Err(e.into()),
    };
    let credentials = match &instance.keyvault_secret_id {
        Some(secret_id) => {
            stats.secret_reads.fetch_add(1, Ordering::Relaxed);
            crate::secrets::tenant_bundle(secrets.as_ref(), tenant, secret_id).await?
        }
        None => CredentialBundle::default(),
    };
    // The company's own App Insights (or none any more), held to the upstream policy like its
    // model; a refused one is logged and the instance serves on without it.
    if let Err(reason) = telemetry::register_owner(
        &telemetry::Owner::new(tenant.as_str(), &id.to_string()),
        credentials
            .app_insights_connection_string
            .as_ref()
            .map(|s| s.expose_secret()),
    ) {
        tracing::warn!(tenant.id = %tenant, instance.id = %id, "the instance's App Insights is not used: {reason}");
    }
    Ok(TenantRuntime::build(instance, credentials, resolver))
}
