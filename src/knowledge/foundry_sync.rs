//! The refresh of a `foundry` instance: its knowledge source synced into the vector store its
//! Foundry agent searches, with the same manifest and job as SOPHIA's own index. Changed and
//! new documents are uploaded (Files API, the document id as the file name) and attached in one
//! file batch, whose processing is polled with a bound; a replaced document's old file is then
//! detached and deleted; documents gone from the source are detached and deleted; unchanged
//! ones are skipped. A document whose upload or processing fails is reported on the job, the
//! others go on, and its old file (if any) keeps serving.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::ingest::{PROGRESS_EVERY, RefreshError, begin, content_hash, save_progress};
use super::source::KnowledgeSource;
use crate::domain::{KnowledgeDocument, RefreshJob, TenantId};
use crate::llm::foundry::FoundryProject;
use crate::store::Store;

/// Longest wait for a file batch to be processed.
pub const BATCH_WAIT: Duration = Duration::from_secs(120);
/// Files per batch.
const BATCH_FILES: usize = 100;

/// What a Foundry refresh works on.
pub struct FoundrySync<'a> {
    pub tenant: &'a TenantId,
    pub store: &'a dyn Store,
    pub source: &'a dyn KnowledgeSource,
    pub project: &'a FoundryProject,
    pub vector_store: &'a str,
}

/// A document uploaded, waiting for its batch.
struct Uploaded {
    path: String,
    hash: String,
    size: u64,
    file: String,
    replaces: Option<String>,
}

impl FoundrySync<'_> {
    pub async fn run(&self, job: &mut RefreshJob) -> Result<(), RefreshError> {
        let (listed, manifest) = begin(self.source, self.store, self.tenant, job).await?;
        let mut last_save = Instant::now();
        let mut uploaded = Vec::new();
        let (mut fetch, mut index) = (Duration::ZERO, Duration::ZERO);
        for entry in &listed {
            job.counts.seen += 1;
            let known = manifest.get(&entry.path);
            let t = Instant::now();
            let fetched = self.source.fetch(&entry.path).await;
            fetch += t.elapsed();
            let bytes = match fetched {
                Ok(b) => b,
                Err(e) => {
                    job.fail_document(&entry.path, e.to_string());
                    continue;
                }
            };
            let hash = content_hash(&bytes);
            let old_file = known.and_then(|k| k.foundry_file_id.clone());
            if !job.full && known.is_some_and(|k| k.content_hash == hash) && old_file.is_some() {
                job.counts.unchanged += 1;
                continue;
            }
            let size = bytes.len() as u64;
            let t = Instant::now();
            let file = self.project.upload_file(&entry.path, bytes.to_vec()).await;
            index += t.elapsed();
            match file {
                Ok(file) => uploaded.push(Uploaded {
                    path: entry.path.clone(),
                    hash,
                    size,
                    file,
                    replaces: old_file,
                }),
                Err(e) => job.fail_document(&entry.path, format!("upload failed: {e}")),
            }
            if last_save.elapsed() >= PROGRESS_EVERY
                && let Err(abandoned) = save_progress(self.store, job, &mut last_save).await
            {
                // Replaced by a newer refresh: this run's uploads are not attached; take them out.
                for u in &uploaded {
                    if let Err(e) = self.project.delete_file(&u.file).await {
                        tracing::warn!(tenant.id = %self.tenant, error = %e, "an abandoned upload could not be deleted");
                    }
                }
                return Err(abandoned);
            }
        }
        let t = Instant::now();
        for batch in uploaded.chunks(BATCH_FILES) {
            self.attach(job, batch).await;
            save_progress(self.store, job, &mut last_save).await?;
        }
        // Documents gone from the source: their files leave the vector store.
        let present: HashSet<&str> = listed.iter().map(|e| e.path.as_str()).collect();
        for (gone, doc) in manifest
            .iter()
            .filter(|(k, _)| !present.contains(k.as_str()))
        {
            let removed = match &doc.foundry_file_id {
                Some(file) => self.remove_file(file).await,
                None => Ok(()),
            };
            let removed = match removed {
                Ok(()) => self
                    .store
                    .delete_knowledge_document(self.tenant, gone)
                    .await
                    .map_err(|e| format!("manifest: {e}")),
                Err(e) => Err(e),
            };
            match removed {
                Ok(()) => job.counts.deleted += 1,
                Err(error) => job.fail_document(gone, error),
            }
        }
        index += t.elapsed();
        job.timings.fetch_ms = fetch.as_millis() as u64;
        job.timings.index_ms = index.as_millis() as u64;
        Ok(())
    }

    /// Detaches and deletes one file.
    async fn remove_file(&self, file: &str) -> Result<(), String> {
        self.project
            .detach_file(self.vector_store, file)
            .await
            .map_err(|e| format!("the file could not be detached: {e}"))?;
        self.project
            .delete_file(file)
            .await
            .map_err(|e| format!("the file could not be deleted: {e}"))
    }

    /// Attaches one batch, waits for it, records what was processed and removes what it
    /// replaced; a file that failed is deleted and its document reported.
    async fn attach(&self, job: &mut RefreshJob, batch: &[Uploaded]) {
        let files: Vec<String> = batch.iter().map(|u| u.file.clone()).collect();
        let failed_files = match self.process(&files).await {
            Ok(failed) => failed,
            Err(error) => {
                for u in batch {
                    job.fail_document(&u.path, error.clone());
                    if let Err(e) = self.project.delete_file(&u.file).await {
                        tracing::warn!(tenant.id = %self.tenant, error = %e, "an unprocessed upload could not be deleted");
                    }
                }
                return;
            }
        };
        for u in batch {
            if let Some(reason) = failed_files.get(&u.file) {
                job.fail_document(
                    &u.path,
                    format!("the vector store could not process it: {reason}"),
                );
                if let Err(e) = self.remove_file(&u.file).await {
                    tracing::warn!(tenant.id = %self.tenant, error = %e, "a failed file could not be removed");
                }
                continue;
            }
            let recorded = self
                .store
                .put_knowledge_document(&KnowledgeDocument {
                    tenant_id: self.tenant.clone(),
                    document_id: u.path.clone(),
                    content_hash: u.hash.clone(),
                    chunks: 0,
                    size: u.size,
                    indexed_at: chrono::Utc::now(),
                    foundry_file_id: Some(u.file.clone()),
                })
                .await;
            if let Err(e) = recorded {
                // Unrecorded, the new file would be orphaned: take it out again.
                job.fail_document(&u.path, format!("the manifest was not updated: {e}"));
                if let Err(e) = self.remove_file(&u.file).await {
                    tracing::warn!(tenant.id = %self.tenant, error = %e, "an unrecorded file could not be removed");
                }
                continue;
            }
            job.counts.indexed += 1;
            if let Some(old) = &u.replaces
                && let Err(e) = self.remove_file(old).await
            {
                tracing::warn!(tenant.id = %self.tenant, document = %u.path, error = %e, "the replaced file could not be removed");
            }
        }
    }

    /// Creates the file batch and polls it (bounded by [`BATCH_WAIT`]); returns the files that
    /// failed with their reasons, `Err` when the batch as a whole did not finish.
    async fn process(&self, files: &[String]) -> Result<HashMap<String, String>, String> {
        let batch = self
            .project
            .create_file_batch(self.vector_store, files)
            .await
            .map_err(|e| format!("the files could not be attached: {e}"))?;
        let id = batch["id"]
            .as_str()
            .ok_or("the file batch has no id")?
            .to_owned();
        let deadline = Instant::now() + BATCH_WAIT;
        let mut status = batch;
        let mut pause = Duration::from_millis(100);
        while status["status"] == "in_progress" {
            if Instant::now() + pause > deadline {
                return Err(format!(
                    "the vector store did not finish processing within {} s",
                    BATCH_WAIT.as_secs()
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
            status = self
                .project
                .file_batch(self.vector_store, &id)
                .await
                .map_err(|e| format!("the file batch could not be read: {e}"))?
                .ok_or("the file batch disappeared")?;
        }
        match status["status"].as_str() {
            Some("completed") => {}
            other => {
                return Err(format!(
                    "the file batch ended {}",
                    other.unwrap_or("without a status")
                ));
            }
        }
        if status["file_counts"]["failed"].as_u64().unwrap_or(0) == 0 {
            return Ok(HashMap::new());
        }
        let wanted: HashSet<&String> = files.iter().collect();
        let listed = self
            .project
            .store_files(self.vector_store)
            .await
            .map_err(|e| format!("the vector store's files could not be read: {e}"))?;
        Ok(listed
            .into_iter()
            .filter(|f| f["status"] == "failed")
            .filter_map(|f| {
                let id = f["id"].as_str()?.to_owned();
                wanted.contains(&id).then(|| {
                    let reason = f["last_error"]["message"]
                        .as_str()
                        .unwrap_or("failed")
                        .to_owned();
                    (id, reason)
                })
            })
            .collect())
    }
}
