//! Knowledge refresh jobs (`POST /refresh`) and the per-document manifest that makes a refresh
//! incremental (a content hash per document of a company's knowledge source).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{InstanceId, TenantId};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl JobState {
    /// Queued or running: the company's one refresh slot is taken.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Queued | Self::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

/// What a refresh did to the company's documents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobCounts {
    /// Documents found in the source.
    pub seen: u64,
    /// New or changed documents (re)indexed.
    pub indexed: u64,
    /// Documents whose content hash had not changed (skipped).
    pub unchanged: u64,
    /// Documents gone from the source whose chunks were removed.
    pub deleted: u64,
    /// Documents that could not be read, parsed or indexed (see `errors`).
    pub failed: u64,
    /// Chunks written in this run.
    pub chunks: u64,
    /// Embedding calls made (batches) in this run.
    pub embedding_calls: u64,
}

/// A document that failed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileError {
    pub document_id: String,
    pub error: String,
}

/// Milliseconds spent per phase (summed over documents).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobTimings {
    pub list_ms: u64,
    pub fetch_ms: u64,
    pub extract_ms: u64,
    pub embed_ms: u64,
    pub index_ms: u64,
    pub total_ms: u64,
}

/// Most per-file errors kept on a job (the count is always exact).
pub const MAX_JOB_ERRORS: usize = 100;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefreshJob {
    /// `job_` + 32 hex characters.
    pub id: String,
    pub tenant_id: TenantId,
    pub instance_id: InstanceId,
    pub state: JobState,
    /// The knowledge source, described without credentials (e.g. `folder:acme`).
    pub source: String,
    /// Re-index every document, ignoring the content hashes.
    #[serde(default)]
    pub full: bool,
    pub counts: JobCounts,
    pub errors: Vec<FileError>,
    /// Why the whole job failed (source unreachable, index refused…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub timings: JobTimings,
    /// Who asked: `service:<instanceId>` or `admin:<subject>`.
    pub requested_by: String,
    pub request_id: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Last progress (a heartbeat): an active job without progress for long is abandoned.
    pub updated_at: DateTime<Utc>,
}

impl RefreshJob {
    /// A new job, queued now, with a fresh id, for `instance` of `tenant`.
    pub fn queued(
        tenant: TenantId,
        instance: InstanceId,
        source: String,
        full: bool,
        requested_by: String,
    ) -> Self {
        let now = Utc::now();
        Self {
            id: Self::new_id(),
            tenant_id: tenant,
            instance_id: instance,
            state: JobState::Queued,
            source,
            full,
            counts: JobCounts::default(),
            errors: Vec::new(),
            error: None,
            timings: JobTimings::default(),
            requested_by,
            request_id: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            updated_at: now,
        }
    }

    pub fn new_id() -> String {
        format!("job_{}", uuid::Uuid::new_v4().simple())
    }

    /// Whether `raw` has the shape of a job id (anything else is a 404 without a lookup).
    pub fn valid_id(raw: &str) -> bool {
        raw.len() == 36
            && raw.starts_with("job_")
            && raw[4..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }

    /// The claim of a stored job: taken to `running` (`true`, to be written) while it is
    /// still queued; left as it is otherwise.
    pub fn claim(&mut self, at: DateTime<Utc>) -> bool {
        if self.state != JobState::Queued {
            return false;
        }
        self.state = JobState::Running;
        self.started_at = Some(at);
        self.updated_at = at;
        true
    }

    /// A worker's save over this stored job: replaces it (`true`, to be written) while it is
    /// still running; once it was abandoned, leaves it as it is.
    pub fn save_over(&mut self, saved: &RefreshJob) -> bool {
        if self.state != JobState::Running {
            return false;
        }
        *self = saved.clone();
        true
    }

    /// Whether an active job has made no progress since `stale_before` (its worker stopped).
    pub fn is_stale(&self, stale_before: DateTime<Utc>) -> bool {
        self.state.is_active() && self.updated_at < stale_before
    }

    /// The failed form of an active job nobody has advanced since before the stale cut-off.
    pub fn abandoned(mut self, now: DateTime<Utc>) -> RefreshJob {
        self.state = JobState::Failed;
        self.error = Some(format!(
            "abandoned: no progress since {} (the worker stopped); a new refresh replaced it",
            self.updated_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
        self.finished_at = Some(now);
        self.updated_at = now;
        self
    }

    /// Records a per-file failure (keeping at most `MAX_JOB_ERRORS` of them).
    pub fn fail_document(&mut self, document_id: &str, error: impl Into<String>) {
        self.counts.failed += 1;
        if self.errors.len() < MAX_JOB_ERRORS {
            self.errors.push(FileError {
                document_id: document_id.to_owned(),
                error: error.into(),
            });
        }
    }
}

/// What the index holds of one source document: the manifest entry that makes refreshes
/// incremental.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KnowledgeDocument {
    pub tenant_id: TenantId,
    /// The document's path in the source (`policies/leave.md`).
    pub document_id: String,
    /// `sha256:<hex>` of the document's bytes.
    pub content_hash: String,
    pub chunks: u64,
    pub size: u64,
    pub indexed_at: DateTime<Utc>,
    /// On a `foundry` instance, the Foundry file holding the document in its vector store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foundry_file_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_have_one_shape() {
        let id = RefreshJob::new_id();
        assert!(RefreshJob::valid_id(&id), "{id}");
        assert!(!RefreshJob::valid_id("job_../../etc"));
        assert!(!RefreshJob::valid_id(&id.to_uppercase()));
        assert!(!RefreshJob::valid_id(""));
    }

    #[test]
    fn errors_are_bounded_but_counted() {
        let mut job = RefreshJob::queued(
            TenantId::parse("acme").unwrap_or_else(|_| unreachable!()),
            InstanceId::new(),
            "folder:acme".into(),
            false,
            "test".into(),
        );
        for i in 0..(MAX_JOB_ERRORS + 5) {
            job.fail_document(&format!("d{i}"), "bad");
        }
        assert_eq!(job.errors.len(), MAX_JOB_ERRORS);
        assert_eq!(job.counts.failed as usize, MAX_JOB_ERRORS + 5);
    }
}
