//! Document storage behind one trait. Every tenant-scoped method takes the tenant scope
//! first; a `TenantScope::All` read is only ever issued for a `PLATFORM_ADMIN`.

pub mod cosmos;
pub mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};

use crate::domain::{
    AgentInstance, AgentType, AuditEntry, Conversation, ConversationId, InstanceId, InstanceStatus,
    KnowledgeDocument, RefreshJob, StoredMessage, TenantId, UsageRecord,
};

/// Backend-neutral storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// An `If-Match` etag did not match the stored document.
    #[error("etag mismatch")]
    PreconditionFailed,
    /// A uniqueness rule would be broken (the message says which).
    #[error("{0}")]
    AlreadyExists(String),
    /// A continuation token that this store did not issue.
    #[error("invalid continuation token")]
    InvalidContinuationToken,
    /// The backend could not be reached or is throttling; the caller may retry.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] anyhow::Error),
    #[error("store error: {0}")]
    Internal(#[source] anyhow::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Which partitions a read may touch.
#[derive(Debug, Clone)]
pub enum TenantScope {
    /// One company's partition (every company-admin and service call).
    Tenant(TenantId),
    /// Every partition: platform-admin listings only.
    All,
}

impl TenantScope {
    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Self::Tenant(t) => Some(t),
            Self::All => None,
        }
    }
}

/// One page of a listing; `continuation_token` is opaque and present while more remain.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub continuation_token: Option<String>,
}

/// Where a listing starts and how much it returns.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    pub limit: u32,
    pub continuation_token: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct InstanceFilter {
    pub status: Option<InstanceStatus>,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub instance_id: Option<InstanceId>,
    pub action: Option<String>,
}

/// The documents SOPHIA keeps: one trait per aggregate (each backend implements them in one
/// file per aggregate), gathered here.
///
/// Contract (run against every backend by `tests/support/store_contract.rs`):
/// * writes assign a new opaque `etag`; `replace_instance` with a stale etag fails with
///   `PreconditionFailed` and writes nothing;
/// * at most one non-`DISABLED` instance per (tenant, agent type): `AlreadyExists`;
/// * a tenant-scoped read never returns another tenant's document;
/// * listings are stable under pagination (no duplicates, no gaps).
#[async_trait]
pub trait Store:
    InstanceStore
    + AuditStore
    + ConversationStore
    + UsageStore
    + RefreshJobStore
    + ManifestStore
    + Send
    + Sync
    + 'static
{
    /// Short backend name for `/health`.
    fn backend(&self) -> &'static str;

    /// Checks the backend answers (used by `/health`).
    async fn ping(&self) -> StoreResult<()>;
}

/// Agent instances: one document per instance, one live instance per (tenant, agent type).
#[async_trait]
pub trait InstanceStore: Send + Sync {
    /// Inserts a new instance; returns it with its etag.
    async fn insert_instance(&self, instance: &AgentInstance) -> StoreResult<AgentInstance>;

    /// Reads one instance, within the scope.
    async fn get_instance(
        &self,
        scope: &TenantScope,
        id: &InstanceId,
    ) -> StoreResult<AgentInstance>;

    /// The tenant's instance of that agent type that is not `DISABLED`, if any.
    async fn find_live_instance(
        &self,
        tenant: &TenantId,
        agent_type: AgentType,
    ) -> StoreResult<Option<AgentInstance>>;

    /// Instances in scope, oldest first.
    async fn list_instances(
        &self,
        scope: &TenantScope,
        filter: &InstanceFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<AgentInstance>>;

    /// Replaces an instance if its stored etag is `if_match`; returns it with its new etag.
    async fn replace_instance(
        &self,
        instance: &AgentInstance,
        if_match: &str,
    ) -> StoreResult<AgentInstance>;

    /// Records a successful use without changing the etag (an admin's `If-Match` must not be
    /// broken by client traffic).
    async fn touch_instance(
        &self,
        tenant: &TenantId,
        id: &InstanceId,
        at: DateTime<Utc>,
    ) -> StoreResult<()>;
}

/// The audit log: append-only, newest first.
#[async_trait]
pub trait AuditStore: Send + Sync {
    async fn append_audit(&self, entry: &AuditEntry) -> StoreResult<()>;

    /// Audit entries in scope, newest first.
    async fn list_audit(
        &self,
        scope: &TenantScope,
        filter: &AuditFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<AuditEntry>>;
}

/// Conversations: bounded message histories per tenant.
#[async_trait]
pub trait ConversationStore: Send + Sync {
    /// One conversation of the tenant.
    async fn get_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> StoreResult<Conversation>;

    /// Appends messages to the tenant's conversation (creating it), keeping the newest
    /// `keep_last` messages within `MAX_CONVERSATION_BYTES` (`Conversation::append`). Returns
    /// how many old messages were dropped. Atomic: concurrent appends lose nothing.
    async fn append_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        instance: &InstanceId,
        messages: &[StoredMessage],
        keep_last: usize,
    ) -> StoreResult<usize>;
}

/// Daily token usage per tenant.
#[async_trait]
pub trait UsageStore: Send + Sync {
    /// Adds `total` to the tenant's daily usage, and each failover deployment's share of it
    /// to that deployment's (`deployments`: name, share). One write: all of it or none.
    async fn add_usage(
        &self,
        tenant: &TenantId,
        day: chrono::NaiveDate,
        total: crate::domain::usage::Tally,
        deployments: &[(String, crate::domain::usage::Tally)],
    ) -> StoreResult<()>;

    /// Adds `add` to the tenant's limit windows (the minute, day and month of `keys`; a
    /// window that has ended starts from zero) and answers the fleet's totals after it.
    /// `add` may be empty: a read of what the other instances used.
    async fn add_to_limit_windows(
        &self,
        tenant: &TenantId,
        keys: crate::domain::limits::WindowKeys,
        add: crate::domain::limits::WindowAdd,
    ) -> StoreResult<crate::domain::limits::LimitWindows>;

    /// Claims the announcement of `name` (a limit) in `window` (its window key) for the
    /// caller: `true` for the first claim of that window across the fleet, `false` after.
    /// Atomic: of concurrent claims one wins.
    async fn claim_window(&self, tenant: &TenantId, name: &str, window: i64) -> StoreResult<bool>;

    /// Daily usage in scope between `from` and `to` (inclusive), by tenant then day.
    async fn list_usage(
        &self,
        scope: &TenantScope,
        from: chrono::NaiveDate,
        to: chrono::NaiveDate,
    ) -> StoreResult<Vec<UsageRecord>>;
}

/// Knowledge refresh jobs and the one-active-job-per-tenant slot.
#[async_trait]
pub trait RefreshJobStore: Send + Sync {
    /// Records `job` as the tenant's refresh unless another job of the tenant is active
    /// (queued or running) and has made progress since `stale_before`: then that job is
    /// returned instead, with `false`. An active job without progress since `stale_before` is
    /// abandoned (saved as failed) and `job` takes its place. Atomic: concurrent calls for one
    /// tenant record one job.
    async fn begin_refresh_job(
        &self,
        job: &RefreshJob,
        stale_before: DateTime<Utc>,
    ) -> StoreResult<(RefreshJob, bool)>;

    /// One refresh job of the tenant.
    async fn get_refresh_job(&self, tenant: &TenantId, id: &str) -> StoreResult<RefreshJob>;

    /// Takes a queued job to `running` (started and updated at `at`) for the caller alone:
    /// of concurrent claims, one gets `(job, true)`; the others, and any claim of a job that
    /// is no longer queued, get the job as it is with `false`. `NotFound` when the tenant has
    /// no such job.
    async fn claim_refresh_job(
        &self,
        tenant: &TenantId,
        id: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<(RefreshJob, bool)>;

    /// Queued refresh jobs of every tenant, oldest first, at most `limit`: read once at
    /// start-up by the in-process workers to pick up jobs recorded before a restart. The one
    /// cross-tenant read not made for a `PLATFORM_ADMIN`; it serves no request.
    async fn queued_refresh_jobs(&self, limit: usize) -> StoreResult<Vec<RefreshJob>>;

    /// The worker's save of a job it claimed: written only while the stored job is still
    /// `running`. `false` (nothing written) when the job was abandoned meanwhile — marked
    /// failed and replaced by a newer one — so the worker stops instead of resurrecting it.
    async fn save_refresh_progress(&self, job: &RefreshJob) -> StoreResult<bool>;

    /// Saves a job's progress or outcome; a finished job frees the tenant's refresh slot.
    async fn save_refresh_job(&self, job: &RefreshJob) -> StoreResult<()>;
}

/// The knowledge manifest: what the index holds of each source document.
#[async_trait]
pub trait ManifestStore: Send + Sync {
    /// The tenant's knowledge manifest: one entry per indexed source document.
    async fn list_knowledge_documents(
        &self,
        tenant: &TenantId,
    ) -> StoreResult<Vec<KnowledgeDocument>>;

    /// Inserts or replaces a manifest entry.
    async fn put_knowledge_document(&self, doc: &KnowledgeDocument) -> StoreResult<()>;

    /// Removes a manifest entry (absent is fine).
    async fn delete_knowledge_document(
        &self,
        tenant: &TenantId,
        document_id: &str,
    ) -> StoreResult<()>;
}

// Helpers shared by the backends.

/// Fixed-width UTC timestamps sort lexically in time order.
pub(crate) fn sort_key(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Appends an audit entry. The action it records has already happened, so a store that
/// refuses the entry is logged, not turned into an error for the caller.
pub async fn audit(store: &dyn Store, entry: AuditEntry) {
    if let Err(e) = store.append_audit(&entry).await {
        tracing::error!(audit.action = %entry.action, tenant.id = %entry.tenant_id, error = ?e, "audit entry could not be written: {e:#}");
    }
}

pub(crate) fn new_etag() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

pub(crate) fn live_conflict(instance: &AgentInstance) -> StoreError {
    StoreError::AlreadyExists(format!(
        "company '{}' already has a {} agent instance that is not DISABLED",
        instance.tenant_id,
        instance.agent_type.as_str()
    ))
}

pub(crate) fn page_limit(page: &PageRequest) -> u32 {
    page.limit.clamp(1, 1000)
}

pub(crate) fn decode_cursor(page: &PageRequest) -> StoreResult<Option<cursor::Cursor>> {
    match page.continuation_token.as_deref() {
        None => Ok(None),
        Some(token) => cursor::decode(token)
            .map(Some)
            .ok_or(StoreError::InvalidContinuationToken),
    }
}

/// A page from up to `limit + 1` rows of (item, sort key, id): the extra row only says that
/// more remain, and the last row kept is where the next page starts.
pub(crate) fn into_page<T>(rows: Vec<(T, String, String)>, limit: u32) -> Page<T> {
    let more = rows.len() > limit as usize;
    let mut items = Vec::with_capacity(rows.len().min(limit as usize));
    let mut last = None;
    for (item, key, id) in rows.into_iter().take(limit as usize) {
        items.push(item);
        last = Some((key, id));
    }
    let continuation_token = if more {
        last.map(|(k, i)| cursor::encode(&k, &i))
    } else {
        None
    };
    Page {
        items,
        continuation_token,
    }
}

/// Keyset cursor shared by the backends that page by (sort key, id).
pub(crate) mod cursor {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    pub struct Cursor {
        pub k: String,
        pub i: String,
    }

    pub fn encode(key: &str, id: &str) -> String {
        let json = serde_json::to_vec(&Cursor {
            k: key.to_owned(),
            i: id.to_owned(),
        })
        .unwrap_or_default();
        URL_SAFE_NO_PAD.encode(json)
    }

    pub fn decode(token: &str) -> Option<Cursor> {
        let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}
