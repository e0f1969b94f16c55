//! A `Store` wrapper for fault injection: it delegates to a real store and fails reads, or
//! the final save of a refresh job, when the test says so.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use sophia::domain::*;
use sophia::store::*;

/// Faults to inject, shared with the test.
#[derive(Default)]
pub struct Switch {
    /// Reads of instances (and secrets, for the secret-store wrapper) fail as unavailable.
    pub failing: AtomicBool,
    /// Reads of instances (or secrets) so far.
    pub reads: AtomicUsize,
    /// Instance reads take 50 ms, so that concurrent misses overlap.
    pub slow_reads: AtomicBool,
    /// The next this-many saves of a *finished* refresh job fail as unavailable.
    pub failing_final_saves: AtomicU32,
}

/// A store that delegates to  and fails where its switch says.
pub struct FaultyStore {
    pub inner: Arc<dyn Store>,
    pub switch: Arc<Switch>,
}

#[async_trait]
impl Store for FaultyStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }
}

#[async_trait]
impl InstanceStore for FaultyStore {
    async fn insert_instance(&self, i: &AgentInstance) -> StoreResult<AgentInstance> {
        self.inner.insert_instance(i).await
    }
    async fn get_instance(
        &self,
        scope: &TenantScope,
        id: &InstanceId,
    ) -> StoreResult<AgentInstance> {
        self.switch.reads.fetch_add(1, Ordering::SeqCst);
        if self.switch.slow_reads.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if self.switch.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(anyhow::anyhow!("store is down")));
        }
        self.inner.get_instance(scope, id).await
    }
    async fn find_live_instance(
        &self,
        t: &TenantId,
        a: AgentType,
    ) -> StoreResult<Option<AgentInstance>> {
        self.inner.find_live_instance(t, a).await
    }
    async fn list_instances(
        &self,
        s: &TenantScope,
        f: &InstanceFilter,
        p: &PageRequest,
    ) -> StoreResult<Page<AgentInstance>> {
        self.inner.list_instances(s, f, p).await
    }
    async fn replace_instance(&self, i: &AgentInstance, m: &str) -> StoreResult<AgentInstance> {
        self.inner.replace_instance(i, m).await
    }
    async fn touch_instance(
        &self,
        t: &TenantId,
        i: &InstanceId,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.inner.touch_instance(t, i, at).await
    }
}

#[async_trait]
impl AuditStore for FaultyStore {
    async fn append_audit(&self, e: &AuditEntry) -> StoreResult<()> {
        self.inner.append_audit(e).await
    }
    async fn list_audit(
        &self,
        s: &TenantScope,
        f: &AuditFilter,
        p: &PageRequest,
    ) -> StoreResult<Page<AuditEntry>> {
        self.inner.list_audit(s, f, p).await
    }
}

#[async_trait]
impl ConversationStore for FaultyStore {
    async fn get_conversation(
        &self,
        t: &TenantId,
        id: &ConversationId,
    ) -> StoreResult<Conversation> {
        self.inner.get_conversation(t, id).await
    }
    async fn append_conversation(
        &self,
        t: &TenantId,
        id: &ConversationId,
        i: &InstanceId,
        m: &[StoredMessage],
        k: usize,
    ) -> StoreResult<usize> {
        self.inner.append_conversation(t, id, i, m, k).await
    }
}

#[async_trait]
impl UsageStore for FaultyStore {
    async fn add_usage(
        &self,
        t: &TenantId,
        d: NaiveDate,
        total: sophia::domain::usage::Tally,
        shares: &[(String, sophia::domain::usage::Tally)],
    ) -> StoreResult<()> {
        self.inner.add_usage(t, d, total, shares).await
    }
    async fn claim_window(&self, t: &TenantId, name: &str, window: i64) -> StoreResult<bool> {
        self.inner.claim_window(t, name, window).await
    }
    async fn add_to_limit_windows(
        &self,
        t: &TenantId,
        k: sophia::domain::limits::WindowKeys,
        a: sophia::domain::limits::WindowAdd,
    ) -> StoreResult<sophia::domain::limits::LimitWindows> {
        self.inner.add_to_limit_windows(t, k, a).await
    }
    async fn list_usage(
        &self,
        s: &TenantScope,
        f: NaiveDate,
        to: NaiveDate,
    ) -> StoreResult<Vec<UsageRecord>> {
        self.inner.list_usage(s, f, to).await
    }
}

#[async_trait]
impl RefreshJobStore for FaultyStore {
    async fn begin_refresh_job(
        &self,
        job: &RefreshJob,
        stale_before: DateTime<Utc>,
    ) -> StoreResult<(RefreshJob, bool)> {
        self.inner.begin_refresh_job(job, stale_before).await
    }
    async fn get_refresh_job(&self, t: &TenantId, id: &str) -> StoreResult<RefreshJob> {
        self.inner.get_refresh_job(t, id).await
    }
    async fn claim_refresh_job(
        &self,
        t: &TenantId,
        id: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<(RefreshJob, bool)> {
        self.inner.claim_refresh_job(t, id, at).await
    }
    async fn queued_refresh_jobs(&self, limit: usize) -> StoreResult<Vec<RefreshJob>> {
        self.inner.queued_refresh_jobs(limit).await
    }
    async fn save_refresh_progress(&self, job: &RefreshJob) -> StoreResult<bool> {
        if job.finished_at.is_some()
            && self
                .switch
                .failing_final_saves
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(StoreError::Unavailable(anyhow::anyhow!("store is down")));
        }
        self.inner.save_refresh_progress(job).await
    }
    async fn save_refresh_job(&self, job: &RefreshJob) -> StoreResult<()> {
        self.inner.save_refresh_job(job).await
    }
}

#[async_trait]
impl ManifestStore for FaultyStore {
    async fn list_knowledge_documents(&self, t: &TenantId) -> StoreResult<Vec<KnowledgeDocument>> {
        self.inner.list_knowledge_documents(t).await
    }
    async fn put_knowledge_document(&self, d: &KnowledgeDocument) -> StoreResult<()> {
        self.inner.put_knowledge_document(d).await
    }
    async fn delete_knowledge_document(&self, t: &TenantId, id: &str) -> StoreResult<()> {
        self.inner.delete_knowledge_document(t, id).await
    }
}
