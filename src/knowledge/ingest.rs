//! The ingestion pipeline of a refresh: list the company's source, and for each document
//! fetch → hash → (unchanged: skip) → extract → chunk → embed (batched, 429 back-off) →
//! replace its chunks in the company's index → record it in the manifest; then remove what
//! is gone from the source. A document that fails is reported on the job and the others go
//! on; only a source or manifest that cannot be read fails the whole job.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::chunk::chunk;
use super::extract::extract;
use super::source::{KnowledgeSource, SourceError};
use super::{Chunk, KnowledgeIndex};
use crate::domain::{KnowledgeDocument, RefreshJob, TenantId};
use crate::llm::ModelClient;
use crate::llm::client::ModelEndpoint;
use crate::store::Store;
use crate::upstream::UpstreamError;

/// Passages per embedding call.
pub const EMBED_BATCH: usize = 16;
/// Tries of one embedding batch while the deployment answers 429.
const EMBED_TRIES: u32 = 6;
/// Longest wait between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How often progress is saved (the job's heartbeat).
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// What a refresh works on.
pub struct Pipeline<'a> {
    pub tenant: &'a TenantId,
    pub store: &'a dyn Store,
    pub index: &'a dyn KnowledgeIndex,
    pub source: &'a dyn KnowledgeSource,
    pub models: &'a ModelClient,
    /// The company's embedding deployment, when it has one.
    pub embeddings: Option<&'a ModelEndpoint>,
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

/// `sha256:<hex>` of a document's bytes.
pub fn content_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl Pipeline<'_> {
    /// Runs the refresh, updating `job` (counts, per-file errors, timings) as it goes and
    /// saving it every few seconds. `Err` is a job-level failure.
    pub async fn run(&self, job: &mut RefreshJob) -> Result<(), String> {
        let started = Instant::now();
        let listed = self.source.list().await.map_err(|e| match e {
            SourceError::Missing(m) | SourceError::Denied(m) => m,
            other => format!("the knowledge source could not be listed: {other}"),
        })?;
        job.timings.list_ms = ms(started);
        let manifest: HashMap<String, KnowledgeDocument> = self
            .store
            .list_knowledge_documents(self.tenant)
            .await
            .map_err(|e| format!("the knowledge manifest could not be read: {e}"))?
            .into_iter()
            .map(|d| (d.document_id.clone(), d))
            .collect();
        let mut last_save = Instant::now();
        let mut index_ready = false;
        let mut phases = Phases::default();
        for entry in &listed {
            job.counts.seen += 1;
            if let Err(error) = self
                .document(
                    job,
                    &entry.path,
                    manifest.get(&entry.path),
                    &mut index_ready,
                    &mut phases,
                )
                .await
            {
                tracing::info!(tenant.id = %self.tenant, document = %entry.path, %error, "document not indexed");
                job.fail_document(&entry.path, error);
            }
            if last_save.elapsed() >= PROGRESS_EVERY {
                phases.write(job);
                self.save_progress(job).await;
                last_save = Instant::now();
            }
        }
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
            phases.index += t.elapsed();
            match removed {
                Ok(()) => job.counts.deleted += 1,
                Err(error) => job.fail_document(gone, error),
            }
        }
        phases.write(job);
        Ok(())
    }

    async fn save_progress(&self, job: &mut RefreshJob) {
        job.updated_at = chrono::Utc::now();
        if let Err(e) = self.store.save_refresh_job(job).await {
            tracing::warn!(tenant.id = %self.tenant, job.id = %job.id, error = %e, "refresh progress not saved");
        }
    }

    /// One document; `Err` is the reason it is reported as failed.
    async fn document(
        &self,
        job: &mut RefreshJob,
        path: &str,
        known: Option<&KnowledgeDocument>,
        index_ready: &mut bool,
        phases: &mut Phases,
    ) -> Result<(), String> {
        let t = Instant::now();
        let fetched = self.source.fetch(path).await;
        phases.fetch += t.elapsed();
        let bytes = fetched.map_err(|e| e.to_string())?;
        let hash = content_hash(&bytes);
        if !job.full && known.is_some_and(|k| k.content_hash == hash) {
            job.counts.unchanged += 1;
            return Ok(());
        }

        let t = Instant::now();
        let owned_path = path.to_owned();
        let size = bytes.len() as u64;
        let extracted = tokio::task::spawn_blocking(move || {
            extract(&owned_path, &bytes).map(|doc| chunk(&doc.title, &doc.text))
        })
        .await;
        phases.extract += t.elapsed();
        let pieces = extracted.map_err(|e| format!("extraction failed: {e}"))??;

        let t = Instant::now();
        let vectors = match self.embeddings {
            Some(endpoint) => {
                let texts: Vec<String> = pieces
                    .iter()
                    .map(|p| format!("{}\n{}", p.title, p.text))
                    .collect();
                let mut vectors = Vec::with_capacity(texts.len());
                for batch in texts.chunks(EMBED_BATCH) {
                    vectors.extend(self.embed(endpoint, batch).await?);
                    job.counts.embedding_calls += 1;
                }
                Some(vectors)
            }
            None => None,
        };
        phases.embed += t.elapsed();

        let chunks: Vec<Chunk> = pieces
            .into_iter()
            .enumerate()
            .map(|(n, piece)| Chunk {
                id: format!("{path}#{n}"),
                document_id: path.to_owned(),
                title: piece.title,
                text: piece.text,
                vector: vectors.as_ref().and_then(|v| v.get(n).cloned()),
            })
            .collect();
        let t = Instant::now();
        if !*index_ready {
            let dimensions = chunks.iter().find_map(|c| c.vector.as_ref().map(Vec::len));
            self.index
                .prepare(dimensions)
                .await
                .map_err(|e| format!("the index is not usable: {e}"))?;
            *index_ready = true;
        }
        if known.is_some() {
            self.index
                .delete_document(self.tenant, path)
                .await
                .map_err(|e| format!("the index did not remove the old chunks: {e}"))?;
        }
        self.index
            .upsert(self.tenant, &chunks)
            .await
            .map_err(|e| format!("the index refused the chunks: {e}"))?;
        self.store
            .put_knowledge_document(&KnowledgeDocument {
                tenant_id: self.tenant.clone(),
                document_id: path.to_owned(),
                content_hash: hash,
                chunks: chunks.len() as u64,
                size,
                indexed_at: chrono::Utc::now(),
            })
            .await
            .map_err(|e| format!("the manifest was not updated: {e}"))?;
        phases.index += t.elapsed();
        job.counts.indexed += 1;
        job.counts.chunks += chunks.len() as u64;
        Ok(())
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
