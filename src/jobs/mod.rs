//! Knowledge refresh jobs: starting one (one per company at a time), handing it to a worker,
//! and running it.
//!
//! Locally an in-process worker pool runs jobs (`SOPHIA_REFRESH_WORKERS` at once). Whatever
//! delivers a job — the local pool or a queue message — `run_job` is idempotent: it runs a job
//! only while it is `queued`, so a redelivered message does nothing.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;

pub mod queue;

pub use queue::{JobMessage, JobQueue, QUEUE_KEY_SECRET, QueueSigner};

use crate::domain::audit::action;
use crate::domain::{AuditEntry, AuditOutcome, InstanceId, JobState, RefreshJob, TenantId};
use crate::knowledge::ingest::{Pipeline, RefreshError};
use crate::state::{App, AppState};
use crate::store::{StoreError, TenantScope};
use crate::tenant::runtime::RuntimeError;

/// Why a refresh could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The job was recorded but no worker or queue took it; it is saved as failed.
    #[error("the refresh could not be queued; retry later")]
    NotQueued,
}

/// Starts a refresh of the caller's knowledge (`full`: every document, unchanged or not),
/// requested by `client`: recorded, audited and handed to a worker. While a job of the company
/// is active (and not stale) that job is returned instead, with `false`.
pub async fn start(
    app: &AppState,
    tenant: &TenantId,
    instance: &InstanceId,
    full: bool,
    client: &str,
) -> Result<(RefreshJob, bool), StartError> {
    let runtime = app
        .runtimes
        .get(&app.store, &app.secrets, tenant, instance)
        .await?;
    let mut job = RefreshJob::queued(
        tenant.clone(),
        *instance,
        runtime.describe_source(),
        full,
        format!("client:{tenant}"),
    );
    job.request_id = Some(crate::http::request_id::current());
    let stale_before = job.created_at
        - chrono::Duration::from_std(app.settings.refresh_stale_after)
            .unwrap_or(chrono::Duration::minutes(10));
    let (job, created) = app.store.begin_refresh_job(&job, stale_before).await?;
    if !created {
        return Ok((job, false));
    }
    let entry = AuditEntry::new(
        tenant.clone(),
        action::REFRESH_START,
        job.requested_by.clone(),
        AuditOutcome::Success,
    )
    .instance(job.instance_id)
    .client(client)
    .details(serde_json::json!({"jobId": job.id, "source": job.source, "full": job.full}));
    app.audit(entry).await;
    if let Err(e) = dispatch(app, &job).await {
        tracing::error!(tenant.id = %tenant, job.id = %job.id, error = ?e, "refresh job could not be queued: {e:#}");
        let mut failed = job;
        failed.state = JobState::Failed;
        failed.error = Some("the job could not be queued".into());
        failed.finished_at = Some(Utc::now());
        failed.updated_at = Utc::now();
        app.store.save_refresh_job(&failed).await?;
        return Err(StartError::NotQueued);
    }
    tracing::info!(tenant.id = %tenant, job.id = %job.id, "refresh queued");
    Ok((job, true))
}

/// Hands a recorded job to a worker.
pub async fn dispatch(app: &AppState, job: &RefreshJob) -> anyhow::Result<()> {
    match &app.jobs {
        JobQueue::Local { permits } => {
            let (app, permits) = (Arc::clone(app), Arc::clone(permits));
            let (tenant, id) = (job.tenant_id.clone(), job.id.clone());
            let request_id = job.request_id.clone().unwrap_or_default();
            tokio::spawn(crate::http::request_id::scope(request_id, async move {
                let Ok(_permit) = permits.acquire_owned().await else {
                    return;
                };
                if let Err(e) = run_job(&app, &tenant, &id).await {
                    tracing::error!(tenant.id = %tenant, job.id = %id, error = ?e, "refresh job could not run: {e:#}");
                }
            }));
            Ok(())
        }
        JobQueue::Storage { client, signer } => {
            use base64::Engine;
            let message = serde_json::to_vec(&signer.message(&job.tenant_id, &job.id)?)?;
            let text = base64::engine::general_purpose::STANDARD.encode(message);
            let content = azure_storage_queue::models::QueueMessage {
                message_text: Some(text),
            };
            client
                .send_message(content.try_into()?, None)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "the refresh queue refused the message (status {:?}, {})",
                        e.http_status(),
                        e.kind()
                    )
                })?;
            Ok(())
        }
    }
}

/// Most queued jobs picked up at start-up.
const RESUME_LIMIT: usize = 1_000;

/// With the in-process workers, jobs recorded but not run before a restart (they were
/// queued in memory) are handed to the workers again; the atomic claim makes that safe even
/// if another process runs them. A Storage queue keeps its messages, so it needs nothing.
pub async fn resume_queued(app: &AppState) {
    if !matches!(app.jobs, JobQueue::Local { .. }) {
        return;
    }
    match app.store.queued_refresh_jobs(RESUME_LIMIT).await {
        Ok(jobs) => {
            if !jobs.is_empty() {
                tracing::info!(jobs = jobs.len(), "resuming queued refresh jobs");
            }
            for job in &jobs {
                if let Err(e) = dispatch(app, job).await {
                    tracing::warn!(tenant.id = %job.tenant_id, job.id = %job.id, error = %e, "queued refresh job not resumed");
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "queued refresh jobs could not be read; they will be abandoned when stale");
        }
    }
}

/// What one delivery of a job did.
pub enum Delivery {
    /// This delivery ran the job; it is as it ended.
    Ran(RefreshJob),
    /// The job was no longer queued (another delivery took it); it is as found.
    AlreadyTaken(RefreshJob),
    /// The tenant has no such job.
    Unknown,
}

/// Runs the tenant's job `id` if it is still queued (claimed atomically).
pub async fn run_job(app: &App, tenant: &TenantId, id: &str) -> anyhow::Result<Delivery> {
    let started = Instant::now();
    // The claim is atomic: of two deliveries of one message, one runs the job.
    let mut job = match app.store.claim_refresh_job(tenant, id, Utc::now()).await {
        Ok((job, true)) => job,
        Ok((job, false)) => {
            tracing::info!(tenant.id = %tenant, job.id = %id, state = job.state.as_str(), "refresh job already taken; nothing to do");
            return Ok(Delivery::AlreadyTaken(job));
        }
        Err(StoreError::NotFound) => return Ok(Delivery::Unknown),
        Err(e) => return Err(e.into()),
    };
    tracing::info!(tenant.id = %tenant, job.id = %id, source = %job.source, "refresh started");

    // An instance disabled since the job was queued gets no refresh: checked in the store,
    // not in a cache that may lag.
    let live = match app
        .store
        .get_instance(&TenantScope::Tenant(tenant.clone()), &job.instance_id)
        .await
    {
        Ok(instance) if instance.status.can_authenticate() => Ok(()),
        Ok(_) | Err(StoreError::NotFound) => Err(RefreshError::InstanceDisabled),
        Err(e) => Err(RefreshError::Instance(e)),
    };
    let outcome = match live {
        Ok(()) => execute(app, &mut job).await,
        Err(e) => Err(e),
    };
    let now = Utc::now();
    job.timings.total_ms = started.elapsed().as_millis() as u64;
    job.finished_at = Some(now);
    job.updated_at = now;
    match outcome {
        Ok(()) => job.state = JobState::Succeeded,
        Err(error) => {
            job.state = JobState::Failed;
            job.error = Some(error.to_string());
        }
    }
    match app.store.save_refresh_progress(&job).await {
        Ok(true) => {}
        Ok(false) => {
            // Taken for dead and replaced while it ran: the stored job stays failed.
            tracing::warn!(tenant.id = %tenant, job.id = %id, "refresh job was abandoned while it ran; its outcome is not recorded");
            job.state = JobState::Failed;
            job.error = Some(RefreshError::Abandoned.to_string());
        }
        Err(e) => {
            // The outcome is lost, so the job did not succeed: record that much if the store
            // takes it now, and audit the finish either way.
            tracing::error!(tenant.id = %tenant, job.id = %id, error = ?e, "refresh outcome could not be saved: {e:#}");
            job.state = JobState::Failed;
            job.error = Some(format!("the job's outcome could not be saved: {e}"));
            if let Err(e) = app.store.save_refresh_progress(&job).await {
                tracing::error!(tenant.id = %tenant, job.id = %id, error = ?e, "refresh failure could not be saved either; the job is abandoned once stale: {e:#}");
            }
        }
    }
    tracing::info!(
        tenant.id = %tenant, job.id = %id, state = job.state.as_str(),
        seen = job.counts.seen, indexed = job.counts.indexed, unchanged = job.counts.unchanged,
        deleted = job.counts.deleted, failed = job.counts.failed, chunks = job.counts.chunks,
        total_ms = job.timings.total_ms, "refresh finished"
    );
    let outcome = if job.state == JobState::Succeeded {
        AuditOutcome::Success
    } else {
        AuditOutcome::Failure
    };
    let entry = AuditEntry::new(
        tenant.clone(),
        action::REFRESH_FINISH,
        job.requested_by.clone(),
        outcome,
    )
    .instance(job.instance_id)
    .details(serde_json::json!({
        "jobId": job.id, "state": job.state, "counts": job.counts, "error": job.error,
        "totalMs": job.timings.total_ms,
    }));
    app.audit(entry).await;
    Ok(Delivery::Ran(job))
}

/// The refresh proper; `Err` is why the job failed as a whole.
async fn execute(app: &App, job: &mut RefreshJob) -> Result<(), RefreshError> {
    let tenant = job.tenant_id.clone();
    let runtime = load_runtime(app, &tenant, &job.instance_id).await?;
    // A `foundry` instance's knowledge is the vector store its agent searches.
    if let Some(foundry) = &runtime.foundry {
        let agent = foundry.clone().map_err(RefreshError::Unusable)?;
        let vector_store = runtime
            .instance
            .config
            .azure_vector_store_id
            .clone()
            .ok_or_else(|| RefreshError::Unusable("the instance has no vector store yet".into()))?;
        let source = runtime.source().map_err(RefreshError::Unusable)?;
        return crate::knowledge::foundry_sync::FoundrySync {
            tenant: &tenant,
            store: app.store.as_ref(),
            source: source.as_ref(),
            project: &agent.project,
            vector_store: &vector_store,
        }
        .run(job)
        .await;
    }
    let knowledge = runtime.knowledge.clone().map_err(RefreshError::Unusable)?;
    let index = knowledge.index();
    let source = runtime.source().map_err(RefreshError::Unusable)?;
    let extractor = app.extractor.session();
    Pipeline {
        tenant: &tenant,
        store: app.store.as_ref(),
        index,
        source: source.as_ref(),
        models: &app.models,
        embeddings: runtime.embeddings.as_ref(),
        extractor: &extractor,
    }
    .run(job)
    .await
}

async fn load_runtime(
    app: &App,
    tenant: &TenantId,
    instance: &InstanceId,
) -> Result<Arc<crate::tenant::runtime::TenantRuntime>, RefreshError> {
    app.runtimes
        .get(&app.store, &app.secrets, tenant, instance)
        .await
        .map_err(|e| match e {
            RuntimeError::NotFound => RefreshError::InstanceGone,
            RuntimeError::Store(e) => RefreshError::Instance(e),
            RuntimeError::Secret(e) => RefreshError::Credentials(e),
        })
}
