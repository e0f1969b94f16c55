//! Knowledge refresh jobs: starting one (one per company at a time), handing it to a worker,
//! and running it.
//!
//! Locally an in-process worker pool runs jobs (`SOPHIA_REFRESH_WORKERS` at once). Whatever
//! delivers a job — the local pool or a queue message — `run_job` is idempotent: it runs a job
//! only while it is `queued`, so a redelivered message does nothing.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use tokio::sync::Semaphore;

use crate::domain::audit::action;
use crate::domain::{AuditEntry, AuditOutcome, InstanceId, JobState, RefreshJob, TenantId};
use crate::knowledge::ingest::Pipeline;
use crate::knowledge::source::{BlobAuth, BlobSource, FolderSource, KnowledgeSource};
use crate::state::{App, AppState};
use crate::store::{StoreError, TenantScope};
use crate::tenant::runtime::RuntimeError;
use crate::tenant::runtime::TenantRuntime;

/// How jobs reach a worker.
pub enum JobQueue {
    /// Tokio tasks in this process, at most `permits` jobs at once.
    Local { permits: Arc<Semaphore> },
    /// An Azure Storage queue; the `refresh-worker` function's queue trigger delivers each
    /// message back to this binary (`POST /refresh-worker`).
    Storage {
        client: azure_storage_queue::QueueClient,
        signer: QueueSigner,
    },
}

/// The queue message of a refresh job (base64 of this JSON, the Functions host's default
/// queue message encoding). `sig` is an HMAC-SHA256 of the tenant and job ids under a key only
/// SOPHIA holds (in its secret store): whoever can reach `/refresh-worker` or write to the
/// queue still cannot forge a delivery.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobMessage {
    pub tenant_id: TenantId,
    pub job_id: String,
    pub sig: String,
}

/// The secret holding the queue-message key (32 random bytes, base64).
pub const QUEUE_KEY_SECRET: &str = "sophia-queue-signing-key";

/// Signs and checks refresh queue messages.
#[derive(Clone)]
pub struct QueueSigner {
    key: secrecy::SecretSlice<u8>,
}

impl std::fmt::Debug for QueueSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueSigner([REDACTED])")
    }
}

impl QueueSigner {
    /// The key from the secret store, generated and stored on first use.
    pub async fn load_or_create(secrets: &dyn crate::secrets::SecretStore) -> anyhow::Result<Self> {
        use base64::Engine;
        use secrecy::ExposeSecret;
        let name = crate::secrets::SecretName::parse(QUEUE_KEY_SECRET)?;
        let stored = crate::secrets::latest_or_create(secrets, &name, || {
            let mut key = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
            Ok(secrecy::SecretString::from(
                base64::engine::general_purpose::STANDARD.encode(key),
            ))
        })
        .await?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(stored.expose_secret().trim())
            .ok()
            .filter(|k| k.len() >= 32)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "the secret {QUEUE_KEY_SECRET} is not a base64 key of 32 bytes or more"
                )
            })?;
        Ok(Self {
            key: secrecy::SecretSlice::from(key),
        })
    }

    /// HMAC-SHA256 over the ids (HMAC takes keys of any length, so this never fails).
    fn mac(&self, tenant: &TenantId, job: &str) -> Option<hmac::Hmac<sha2::Sha256>> {
        use hmac::Mac;
        use secrecy::ExposeSecret;
        let mut mac =
            <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(self.key.expose_secret()).ok()?;
        mac.update(b"sophia-refresh-v1\n");
        mac.update(tenant.as_str().as_bytes());
        mac.update(b"\n");
        mac.update(job.as_bytes());
        Some(mac)
    }

    /// The signed message for a job.
    pub fn message(&self, tenant: &TenantId, job: &str) -> anyhow::Result<JobMessage> {
        use base64::Engine;
        use hmac::Mac;
        let mac = self
            .mac(tenant, job)
            .ok_or_else(|| anyhow::anyhow!("the queue signing key is unusable"))?;
        Ok(JobMessage {
            tenant_id: tenant.clone(),
            job_id: job.to_owned(),
            sig: base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(mac.finalize().into_bytes()),
        })
    }

    /// Whether a message carries a valid signature (compared in constant time).
    pub fn verify(&self, message: &JobMessage) -> bool {
        use base64::Engine;
        use hmac::Mac;
        let Some(mac) = self.mac(&message.tenant_id, &message.job_id) else {
            return false;
        };
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&message.sig)
            .is_ok_and(|sig| mac.verify_slice(&sig).is_ok())
    }
}

impl JobQueue {
    pub fn local(workers: usize) -> Self {
        Self::Local {
            permits: Arc::new(Semaphore::new(workers.max(1))),
        }
    }

    /// A Storage queue at `url`: a SAS in its query string authenticates, else SOPHIA's
    /// identity (role 'Storage Queue Data Message Sender').
    pub fn storage(
        url: &secrecy::SecretString,
        entra: Option<&Arc<crate::azure_auth::EntraTokens>>,
        signer: QueueSigner,
    ) -> anyhow::Result<Self> {
        use secrecy::ExposeSecret;
        let parsed = url::Url::parse(url.expose_secret())
            .map_err(|_| anyhow::anyhow!("SOPHIA_REFRESH_QUEUE_URL is not a URL"))?;
        let credential = if parsed.query().is_some() {
            None
        } else {
            Some(entra.map(|e| e.credential()).ok_or_else(|| {
                anyhow::anyhow!(
                    "SOPHIA_REFRESH_QUEUE_URL has no SAS: SOPHIA's identity is needed (SOPHIA_AZURE_CREDENTIAL)"
                )
            })?)
        };
        let client = azure_storage_queue::QueueClient::new(parsed, credential, None).map_err(|e| {
            anyhow::anyhow!("SOPHIA_REFRESH_QUEUE_URL is not usable ({}): https is required with SOPHIA's identity", e.kind())
        })?;
        Ok(Self::Storage { client, signer })
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Self::Local { .. } => "local",
            Self::Storage { .. } => "storage_queue",
        }
    }

    /// The signer of queue messages (a Storage queue only: nothing else delivers them).
    pub fn signer(&self) -> Option<&QueueSigner> {
        match self {
            Self::Local { .. } => None,
            Self::Storage { signer, .. } => Some(signer),
        }
    }
}

/// Hands a recorded job to a worker.
pub async fn dispatch(app: &AppState, job: &RefreshJob) -> anyhow::Result<()> {
    match &app.jobs {
        JobQueue::Local { permits } => {
            let (app, permits) = (Arc::clone(app), Arc::clone(permits));
            let (tenant, id) = (job.tenant_id.clone(), job.id.clone());
            let request_id = job.request_id.clone().unwrap_or_default();
            tokio::spawn(crate::request_id::scope(request_id, async move {
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
        Ok(_) | Err(StoreError::NotFound) => {
            Err("the agent instance was disabled before the job ran".to_owned())
        }
        Err(e) => Err(format!("the instance could not be read: {e}")),
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
            job.error = Some(error);
        }
    }
    match app.store.save_refresh_progress(&job).await {
        Ok(true) => {}
        Ok(false) => {
            // Taken for dead and replaced while it ran: the stored job stays failed.
            tracing::warn!(tenant.id = %tenant, job.id = %id, "refresh job was abandoned while it ran; its outcome is not recorded");
            job.state = JobState::Failed;
            job.error = Some(crate::knowledge::ingest::ABANDONED.into());
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

/// The company's knowledge source: the Blob container named by
/// `settings.knowledgeContainerUrl` (SAS from `credentials.knowledgeSas`, else SOPHIA's
/// identity), or the folder `<SOPHIA_DATA_DIR>/knowledge/<companyId>/`. `Err` says why the
/// configured source cannot be used.
pub fn source_for(app: &App, runtime: &TenantRuntime) -> Result<Box<dyn KnowledgeSource>, String> {
    let settings = &runtime.instance.settings;
    let Some(raw) = settings
        .get("knowledgeContainerUrl")
        .and_then(|v| v.as_str())
    else {
        return Ok(Box::new(FolderSource::for_tenant(
            &app.settings.data_dir,
            &runtime.instance.tenant_id,
        )));
    };
    let url = app
        .upstreams
        .check(raw)
        .map_err(|e| format!("settings.knowledgeContainerUrl is not allowed: {e}"))?;
    let prefix = settings.get("knowledgePrefix").and_then(|v| v.as_str());
    // The company's SAS, or the company's own identity; never SOPHIA's.
    let auth = match (&runtime.knowledge_sas, &runtime.identity) {
        (Some(sas), _) => BlobAuth::Sas(sas.clone()),
        (None, Some(Ok(identity))) => BlobAuth::Entra(identity.credential()),
        (None, Some(Err(e))) => return Err(e.clone()),
        (None, None) => {
            return Err(
                "the knowledge container needs credentials.knowledgeSas (or, set by a platform \
                 admin, the company's own managed identity)"
                    .into(),
            );
        }
    };
    let transport: Arc<dyn azure_core::http::HttpClient> = Arc::new(
        crate::upstream::PolicyTransport::new(app.models.http().clone()),
    );
    BlobSource::new(&url, prefix, auth, Some(transport))
        .map(|s| Box::new(s) as Box<dyn KnowledgeSource>)
        .map_err(|e| e.to_string())
}

/// The source's description for a job record (no credentials).
pub fn describe_source(app: &App, runtime: &TenantRuntime) -> String {
    match source_for(app, runtime) {
        Ok(source) => source.describe(),
        Err(_) => "unusable source".into(),
    }
}

/// The refresh proper; `Err` is why the job failed as a whole.
async fn execute(app: &App, job: &mut RefreshJob) -> Result<(), String> {
    let tenant = job.tenant_id.clone();
    let runtime = load_runtime(app, &tenant, &job.instance_id).await?;
    let search = crate::knowledge::search_index(app, &runtime).map_err(|e| e.to_string())?;
    let index: &dyn crate::knowledge::KnowledgeIndex = match &search {
        Some(index) => index,
        None => app.knowledge.as_ref(),
    };
    let source = source_for(app, &runtime)?;
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
) -> Result<Arc<crate::tenant::runtime::TenantRuntime>, String> {
    app.runtimes
        .get(&app.store, &app.secrets, tenant, instance)
        .await
        .map_err(|e| match e {
            RuntimeError::NotFound => "the agent instance no longer exists or is disabled".into(),
            RuntimeError::Store(e) => format!("the instance could not be read: {e}"),
            RuntimeError::Secret(e) => format!("the instance's credentials could not be read: {e}"),
        })
}
