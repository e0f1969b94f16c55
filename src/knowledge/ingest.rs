//! The ingestion pipeline of a refresh: list the company's source, and for each document
//! fetch → hash → (unchanged: skip) → extract → chunk; passages of several documents are
//! gathered and embedded in full batches (429 back-off), then each document's chunks replace
//! its old ones in the company's index and it is recorded in the manifest; last, what is gone
//! from the source is removed. A document that fails is reported on the job and the others go
//! on; only a source or manifest that cannot be read fails the whole job.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::chunk::chunk;
use super::source::{KnowledgeSource, SourceError};
use super::{Chunk, KnowledgeIndex};
use crate::domain::{KnowledgeDocument, RefreshJob, TenantId};
use crate::llm::ModelClient;
use crate::llm::client::ModelEndpoint;
use crate::secrets::SecretError;
use crate::store::{Store, StoreError};
use crate::upstream::UpstreamError;

/// Passages per embedding call.
pub const EMBED_BATCH: usize = 16;
/// Tries of one embedding batch while the deployment answers 429.
const EMBED_TRIES: u32 = 6;
/// Longest wait between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Why a refresh failed as a whole; its message is the job's `error`. (A document that fails
/// is reported on the job, with the others going on.)
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("the agent instance was disabled before the job ran")]
    InstanceDisabled,
    #[error("the agent instance no longer exists or is disabled")]
    InstanceGone,
    #[error("the instance could not be read: {0}")]
    Instance(#[source] StoreError),
    #[error("the instance's credentials could not be read: {0}")]
    Credentials(#[source] SecretError),
    /// The company's knowledge settings name no usable index or source (the message says why).
    #[error("{0}")]
    Unusable(String),
    /// The source could not be listed.
    #[error("{0}")]
    Source(String),
    #[error("the knowledge manifest could not be read: {0}")]
    Manifest(#[source] StoreError),
    /// Taken for dead and replaced by a newer refresh while it ran.
    #[error(
        "abandoned while running: no progress was saved for too long and a newer refresh replaced it"
    )]
    Abandoned,
}

impl RefreshError {
    fn listing(e: SourceError) -> Self {
        match e {
            SourceError::Missing(m) | SourceError::Denied(m) => Self::Source(m),
            other => Self::Source(format!("the knowledge source could not be listed: {other}")),
        }
    }
}
/// How often progress is saved (the job's heartbeat).
pub(super) const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// What a refresh works on.
pub struct Pipeline<'a> {
    pub tenant: &'a TenantId,
    pub store: &'a dyn Store,
    pub index: &'a dyn KnowledgeIndex,
    pub source: &'a dyn KnowledgeSource,
    pub models: &'a ModelClient,
    /// The company's embedding deployment, when it has one.
    pub embeddings: Option<&'a ModelEndpoint>,
    pub extractor: &'a super::sandbox::Session<'a>,
}

fn ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

/// Time spent per phase, summed over documents at full precision (a document's phases are
/// often well under a millisecond) and written to the job's whole-millisecond timings.
#[derive(Default)]
struct Phases {
    fetch: Duration,
    extract: Duration,
    embed: Duration,
    index: Duration,
}

impl Phases {
    fn write(&self, job: &mut RefreshJob) {
        let ms = |d: Duration| d.as_millis() as u64;
        job.timings.fetch_ms = ms(self.fetch);
        job.timings.extract_ms = ms(self.extract);
        job.timings.embed_ms = ms(self.embed);
        job.timings.index_ms = ms(self.index);
    }
}

/// The start of every refresh: the source's listing (timed on the job) and the manifest of
/// what the company's index holds, by document id.
pub(super) async fn begin(
    source: &dyn KnowledgeSource,
    store: &dyn Store,
    tenant: &TenantId,
    job: &mut RefreshJob,
) -> Result<
    (
        Vec<super::source::SourceEntry>,
        HashMap<String, KnowledgeDocument>,
    ),
    RefreshError,
> {
    let started = Instant::now();
    let listed = source.list().await.map_err(RefreshError::listing)?;
    job.timings.list_ms = ms(started);
    let manifest = store
        .list_knowledge_documents(tenant)
        .await
        .map_err(RefreshError::Manifest)?
        .into_iter()
        .map(|d| (d.document_id.clone(), d))
        .collect();
    Ok((listed, manifest))
}

/// The job's heartbeat: saves its progress now and restarts the clock. `Err` when the job
/// was abandoned meanwhile (taken for dead and replaced): the run stops.
pub(super) async fn save_progress(
    store: &dyn Store,
    job: &mut RefreshJob,
    last_save: &mut Instant,
) -> Result<(), RefreshError> {
    job.updated_at = chrono::Utc::now();
    *last_save = Instant::now();
    match store.save_refresh_progress(job).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(RefreshError::Abandoned),
        Err(e) => {
            tracing::warn!(tenant.id = %job.tenant_id, job.id = %job.id, error = %e, "refresh progress not saved");
            Ok(())
        }
    }
}

/// `sha256:<hex>` of a document's bytes.
pub fn content_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Passages gathered from several documents before they are embedded, so that small
/// documents share full embedding calls instead of each making a part-empty one.
pub const EMBED_GATHER: usize = 4 * EMBED_BATCH;

/// A document read, extracted and cut into passages, waiting for its embeddings.
struct Prepared {
    path: String,
    /// It was in the manifest: its old chunks go before the new ones are written.
    replaces: bool,
    hash: String,
    size: u64,
    chunks: Vec<Chunk>,
}

/// What one run keeps between documents.
struct Run {
    phases: Phases,
    last_save: Instant,
    index_ready: bool,
    pending: Vec<Prepared>,
    pending_chunks: usize,
}

impl Pipeline<'_> {
    /// Runs the refresh, updating `job` (counts, per-file errors, timings) as it goes and
    /// saving it every few seconds. `Err` is a job-level failure.
    pub async fn run(&self, job: &mut RefreshJob) -> Result<(), RefreshError> {
        let (listed, manifest) = begin(self.source, self.store, self.tenant, job).await?;
        let mut run = Run {
            phases: Phases::default(),
            last_save: Instant::now(),
            index_ready: false,
            pending: Vec::new(),
            pending_chunks: 0,
        };
        for entry in &listed {
            job.counts.seen += 1;
            match self
                .prepare(job, &entry.path, manifest.get(&entry.path), &mut run.phases)
                .await
            {
                Ok(Some(doc)) => {
                    run.pending_chunks += doc.chunks.len();
                    run.pending.push(doc);
                }
                Ok(None) => {}
                Err(error) => self.fail(job, &entry.path, error),
            }
            if run.pending_chunks >= EMBED_GATHER {
                self.flush(job, &mut run).await?;
            }
            self.heartbeat(job, &mut run).await?;
        }
        self.flush(job, &mut run).await?;
        // Documents gone from the source: their chunks and manifest entries go too.
        let present: std::collections::HashSet<&str> =
            listed.iter().map(|e| e.path.as_str()).collect();
        for gone in manifest.keys().filter(|k| !present.contains(k.as_str())) {
            let t = Instant::now();
            let removed = match self.index.delete_document(self.tenant, gone).await {
                Ok(()) => self
                    .store
                    .delete_knowledge_document(self.tenant, gone)
                    .await
                    .map_err(|e| format!("manifest: {e}")),
                Err(e) => Err(format!("the index did not remove its chunks: {e}")),
            };
            run.phases.index += t.elapsed();
            match removed {
                Ok(()) => job.counts.deleted += 1,
                Err(error) => job.fail_document(gone, error),
            }
        }
        run.phases.write(job);
        Ok(())
    }

    fn fail(&self, job: &mut RefreshJob, path: &str, error: String) {
        tracing::info!(tenant.id = %self.tenant, document = %path, %error, "document not indexed");
        job.fail_document(path, error);
    }

    /// Saves the job's progress when the last save is a few seconds old. `Err` when the job
    /// was abandoned meanwhile (taken for dead and replaced): the run stops.
    async fn heartbeat(&self, job: &mut RefreshJob, run: &mut Run) -> Result<(), RefreshError> {
        if run.last_save.elapsed() < PROGRESS_EVERY {
            return Ok(());
        }
        run.phases.write(job);
        save_progress(self.store, job, &mut run.last_save).await
    }

    /// Reads one document and cuts it into passages; `None` when its content is unchanged,
    /// `Err` the reason it is reported as failed.
    async fn prepare(
        &self,
        job: &mut RefreshJob,
        path: &str,
        known: Option<&KnowledgeDocument>,
        phases: &mut Phases,
    ) -> Result<Option<Prepared>, String> {
        let t = Instant::now();
        let fetched = self.source.fetch(path).await;
        phases.fetch += t.elapsed();
        let bytes = fetched.map_err(|e| e.to_string())?;
        let hash = content_hash(&bytes);
        if !job.full && known.is_some_and(|k| k.content_hash == hash) {
            job.counts.unchanged += 1;
            return Ok(None);
        }

        let t = Instant::now();
        let owned_path = path.to_owned();
        let size = bytes.len() as u64;
        let doc = self.extractor.extract(&owned_path, bytes).await;
        phases.extract += t.elapsed();
        let doc = doc?;
        let pieces = tokio::task::spawn_blocking(move || chunk(&doc.title, &doc.text))
            .await
            .map_err(|e| format!("chunking failed: {e}"))?;
        let chunks = pieces
            .into_iter()
            .enumerate()
            .map(|(n, piece)| Chunk {
                id: format!("{path}#{n}"),
                document_id: path.to_owned(),
                title: piece.title,
                text: piece.text,
                vector: None,
            })
            .collect();
        Ok(Some(Prepared {
            path: path.to_owned(),
            replaces: known.is_some(),
            hash,
            size,
            chunks,
        }))
    }

    /// Embeds the pending documents' passages in full batches, then writes each document
    /// whose passages all have their vectors; a failed batch fails only the documents it
    /// carried.
    async fn flush(&self, job: &mut RefreshJob, run: &mut Run) -> Result<(), RefreshError> {
        let mut docs = std::mem::take(&mut run.pending);
        run.pending_chunks = 0;
        let mut failed: Vec<Option<String>> = vec![None; docs.len()];
        if let Some(endpoint) = self.embeddings {
            // (document, passage) of every passage, in order.
            let slots: Vec<(usize, usize)> = docs
                .iter()
                .enumerate()
                .flat_map(|(d, doc)| (0..doc.chunks.len()).map(move |c| (d, c)))
                .collect();
            for batch in slots.chunks(EMBED_BATCH) {
                let batch: Vec<(usize, usize)> = batch
                    .iter()
                    .copied()
                    .filter(|(d, _)| failed[*d].is_none())
                    .collect();
                if batch.is_empty() {
                    continue;
                }
                let texts: Vec<String> = batch
                    .iter()
                    .map(|&(d, c)| {
                        format!("{}\n{}", docs[d].chunks[c].title, docs[d].chunks[c].text)
                    })
                    .collect();
                let t = Instant::now();
                let embedded = self.embed(endpoint, &texts).await;
                run.phases.embed += t.elapsed();
                match embedded {
                    Ok(vectors) if vectors.len() == batch.len() => {
                        job.counts.embedding_calls += 1;
                        for (&(d, c), vector) in batch.iter().zip(vectors) {
                            docs[d].chunks[c].vector = Some(vector);
                        }
                    }
                    other => {
                        let error = match other {
                            Err(e) => e,
                            Ok(vectors) => format!(
                                "embedding failed: the deployment returned {} vectors for {} passages",
                                vectors.len(),
                                batch.len()
                            ),
                        };
                        for &(d, _) in &batch {
                            failed[d].get_or_insert_with(|| error.clone());
                        }
                    }
                }
                self.heartbeat(job, run).await?;
            }
        }
        for (doc, failure) in docs.into_iter().zip(failed) {
            let outcome = match failure {
                Some(error) => Err(error),
                None => {
                    let t = Instant::now();
                    let written = self.write(&doc, &mut run.index_ready).await;
                    run.phases.index += t.elapsed();
                    written
                }
            };
            match outcome {
                Ok(()) => {
                    job.counts.indexed += 1;
                    job.counts.chunks += doc.chunks.len() as u64;
                }
                Err(error) => self.fail(job, &doc.path, error),
            }
        }
        Ok(())
    }

    /// Replaces a document's chunks in the index and records it in the manifest.
    async fn write(&self, doc: &Prepared, index_ready: &mut bool) -> Result<(), String> {
        if !*index_ready {
            let dimensions = doc
                .chunks
                .iter()
                .find_map(|c| c.vector.as_ref().map(Vec::len));
            self.index
                .prepare(dimensions)
                .await
                .map_err(|e| format!("the index is not usable: {e}"))?;
            *index_ready = true;
        }
        if doc.replaces {
            // Forget the document before touching its chunks: should the delete or the upsert
            // fail, the next run sees it as new and indexes it again, instead of trusting a
            // manifest entry whose chunks are gone.
            self.store
                .delete_knowledge_document(self.tenant, &doc.path)
                .await
                .map_err(|e| format!("the manifest entry could not be invalidated: {e}"))?;
            self.index
                .delete_document(self.tenant, &doc.path)
                .await
                .map_err(|e| format!("the index did not remove the old chunks: {e}"))?;
        }
        self.index
            .upsert(self.tenant, &doc.chunks)
            .await
            .map_err(|e| format!("the index refused the chunks: {e}"))?;
        self.store
            .put_knowledge_document(&KnowledgeDocument {
                tenant_id: self.tenant.clone(),
                document_id: doc.path.clone(),
                content_hash: doc.hash.clone(),
                chunks: doc.chunks.len() as u64,
                size: doc.size,
                indexed_at: chrono::Utc::now(),
                foundry_file_id: None,
            })
            .await
            .map_err(|e| format!("the manifest was not updated: {e}"))
    }

    /// One embedding batch, waiting out 429s (the deployment's `retry-after`, doubled
    /// otherwise, at most [`MAX_BACKOFF`]) up to [`EMBED_TRIES`] times.
    async fn embed(
        &self,
        endpoint: &ModelEndpoint,
        batch: &[String],
    ) -> Result<Vec<Vec<f32>>, String> {
        let mut wait = Duration::from_secs(1);
        for attempt in 1..=EMBED_TRIES {
            match self.models.embed(endpoint, batch).await {
                Ok(vectors) => return Ok(vectors),
                Err(UpstreamError::RateLimited { retry_after_secs }) if attempt < EMBED_TRIES => {
                    let pause = Duration::from_secs(retry_after_secs)
                        .max(wait)
                        .min(MAX_BACKOFF);
                    tracing::info!(tenant.id = %self.tenant, attempt, pause_ms = pause.as_millis() as u64, "embedding deployment throttling; backing off");
                    tokio::time::sleep(pause).await;
                    wait = (wait * 2).min(MAX_BACKOFF);
                }
                Err(e) => return Err(format!("embedding failed: {e}")),
            }
        }
        Err("embedding failed: the deployment kept throttling".into())
    }
}
