//! The embedded knowledge index: one SQLite file; chunks with their vectors in a table, their
//! text in an FTS5 table (unicode61, diacritics folded) for BM25. Keyword and vector ranks are
//! fused by reciprocal rank (k = 60).
//!
//! One company's corpus or query must not slow the others down: searches run on a small pool
//! of read-only connections (WAL: readers never wait for a refresh's write transaction), and
//! each search has a work budget — a SQLite progress handler stops its statements past
//! `SEARCH_BUDGET`, and it answers with what it ranked so far (logged) instead of holding a
//! connection.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::{Chunk, IndexError, KnowledgeIndex, Passage};
use crate::domain::TenantId;

const RRF_K: f64 = 60.0;
/// Candidates taken from each ranking before fusion, per wanted result.
const CANDIDATES_PER_RESULT: usize = 4;
/// Vectors compared per query at most (the embedded index is for small corpora).
const MAX_VECTOR_SCAN: usize = 50_000;
/// Longest a search may work before its statements are stopped.
const SEARCH_BUDGET: std::time::Duration = std::time::Duration::from_millis(300);
/// Read-only connections searches share.
const READERS: usize = 4;

pub struct SqliteIndex {
    /// The writer (upserts, deletes, schema), and the reader of an in-memory index.
    conn: Arc<Mutex<Connection>>,
    /// Read-only connections for searches (none for an in-memory index).
    readers: Vec<Arc<Mutex<Connection>>>,
    next_reader: std::sync::atomic::AtomicUsize,
    search_budget: std::time::Duration,
    /// Tenants that have at least one chunk: a search for any other tenant answers at once,
    /// without a trip to the blocking pool.
    populated: Arc<std::sync::RwLock<std::collections::HashSet<String>>>,
}

impl SqliteIndex {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open(path)
            .with_context(|| format!("opening knowledge index {}", path.display()))?;
        let mut index = Self::init(conn)?;
        for _ in 0..READERS {
            let reader = Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .with_context(|| format!("opening knowledge index {} for reading", path.display()))?;
            reader.busy_timeout(std::time::Duration::from_secs(5))?;
            index.readers.push(Arc::new(Mutex::new(reader)));
        }
        Ok(index)
    }

    pub fn open_in_memory() -> anyhow::Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    /// A different search budget (tests).
    pub fn with_search_budget(mut self, budget: std::time::Duration) -> Self {
        self.search_budget = budget;
        self
    }

    fn init(mut conn: Connection) -> anyhow::Result<Self> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // The index is rebuilt by a refresh; durability of the last transaction on power loss
        // is not worth an fsync per document.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn).context("creating the knowledge index schema (FTS5)")?;
        let populated = conn
            .prepare("SELECT DISTINCT tenant_id FROM chunks")?
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<_, _>>()?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            readers: Vec::new(),
            next_reader: std::sync::atomic::AtomicUsize::new(0),
            search_budget: SEARCH_BUDGET,
            populated: Arc::new(std::sync::RwLock::new(populated)),
        })
    }

    async fn run<T, F>(&self, f: F) -> Result<T, IndexError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        Self::run_on(Arc::clone(&self.conn), f).await
    }

    /// Runs `f` on a read-only connection (round robin), or the writer for an in-memory index.
    async fn read<T, F>(&self, f: F) -> Result<T, IndexError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = match self.readers.len() {
            0 => Arc::clone(&self.conn),
            n => {
                let i = self
                    .next_reader
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Arc::clone(&self.readers[i % n])
            }
        };
        Self::run_on(conn, f).await
    }

    async fn run_on<T, F>(conn: Arc<Mutex<Connection>>, f: F) -> Result<T, IndexError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| IndexError::Internal(anyhow::anyhow!("index poisoned")))?;
            f(&mut guard).map_err(|e| IndexError::Internal(e.into()))
        })
        .await
        .map_err(|e| IndexError::Internal(anyhow::anyhow!("index task failed: {e}")))?
    }
}

/// Schema version 1: `chunks.seq` is an explicit rowid (stable under `VACUUM`) and each
/// chunk's FTS5 row has that rowid, so replacing or deleting a chunk's text is a rowid lookup
/// rather than a scan of the FTS table. Version 0 (FTS rows keyed only by an unindexed
/// `chunk_id` column) is rebuilt from `chunks`; nothing is lost.
const SCHEMA_VERSION: i64 = 1;

const CREATE_FTS: &str = "CREATE VIRTUAL TABLE chunks_fts USING fts5(
    text, title, tenant_id UNINDEXED, chunk_id UNINDEXED,
    tokenize = 'unicode61 remove_diacritics 2'
)";

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version >= SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn.transaction()?;
    tx.execute_batch(
        "CREATE TABLE chunks_v1 (
            seq INTEGER PRIMARY KEY,
            tenant_id TEXT NOT NULL,
            id TEXT NOT NULL,
            document_id TEXT NOT NULL,
            title TEXT NOT NULL,
            text TEXT NOT NULL,
            vector BLOB,
            UNIQUE (tenant_id, id)
        );",
    )?;
    let existing: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'chunks')",
        [],
        |r| r.get(0),
    )?;
    if existing {
        tx.execute_batch(
            "INSERT INTO chunks_v1 (tenant_id, id, document_id, title, text, vector)
                SELECT tenant_id, id, document_id, title, text, vector FROM chunks;
             DROP TABLE chunks;",
        )?;
    }
    tx.execute_batch(&format!(
        "ALTER TABLE chunks_v1 RENAME TO chunks;
         CREATE INDEX chunks_by_document ON chunks (tenant_id, document_id);
         DROP TABLE IF EXISTS chunks_fts;
         {CREATE_FTS};
         INSERT INTO chunks_fts (rowid, text, title, tenant_id, chunk_id)
            SELECT seq, text, title, tenant_id, id FROM chunks;
         PRAGMA user_version = {SCHEMA_VERSION};"
    ))?;
    tx.commit()
}

fn to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_blob(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        dot += f64::from(*x) * f64::from(*y);
        na += f64::from(*x) * f64::from(*x);
        nb += f64::from(*y) * f64::from(*y);
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// An FTS5 query matching any of the query's words, each quoted (no operator injection).
/// The keyword and vector rankings of a search (chunk ids, best first).
fn rank(
    conn: &Connection,
    tenant: &TenantId,
    fts: Option<&str>,
    vector: Option<&[f32]>,
    candidates: usize,
) -> rusqlite::Result<Vec<Vec<String>>> {
    let mut ranks: Vec<Vec<String>> = Vec::new();
    if let Some(fts) = fts {
        let mut stmt = conn.prepare_cached(
            "SELECT chunk_id FROM chunks_fts WHERE chunks_fts MATCH ?1 AND tenant_id = ?2 ORDER BY bm25(chunks_fts) LIMIT ?3",
        )?;
        let ids = stmt
            .query_map(params![fts, tenant.as_str(), candidates as i64], |r| {
                r.get::<_, String>(0)
            })?
            .collect::<Result<Vec<_>, _>>()?;
        ranks.push(ids);
    }
    if let Some(v) = vector {
        let mut stmt = conn.prepare_cached(
            "SELECT id, vector FROM chunks WHERE tenant_id = ?1 AND vector IS NOT NULL LIMIT ?2",
        )?;
        let mut scored = stmt
            .query_map(params![tenant.as_str(), MAX_VECTOR_SCAN as i64], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .map(|(id, blob)| (cosine(v, &from_blob(&blob)), id))
            .filter(|(s, _)| *s > 0.0)
            .collect::<Vec<_>>();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        ranks.push(
            scored
                .into_iter()
                .take(candidates)
                .map(|(_, id)| id)
                .collect(),
        );
    }
    Ok(ranks)
}

fn fts_query(query: &str) -> Option<String> {
    let words: Vec<String> = query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(32)
        .map(|w| format!("\"{}\"", w.to_lowercase()))
        .collect();
    (!words.is_empty()).then(|| words.join(" OR "))
}

#[async_trait]
impl KnowledgeIndex for SqliteIndex {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn upsert(&self, tenant: &TenantId, chunks: &[Chunk]) -> Result<(), IndexError> {
        if !chunks.is_empty()
            && let Ok(mut populated) = self.populated.write()
        {
            populated.insert(tenant.to_string());
        }
        let (tenant, chunks) = (tenant.clone(), chunks.to_vec());
        self.run(move |conn| {
            let tx = conn.transaction()?;
            {
                let mut existing = tx.prepare_cached("SELECT seq FROM chunks WHERE tenant_id = ?1 AND id = ?2")?;
                let mut drop_text = tx.prepare_cached("DELETE FROM chunks_fts WHERE rowid = ?1")?;
                let mut put = tx.prepare_cached(
                    "INSERT INTO chunks (tenant_id, id, document_id, title, text, vector) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (tenant_id, id) DO UPDATE SET document_id = excluded.document_id, title = excluded.title,
                        text = excluded.text, vector = excluded.vector
                     RETURNING seq",
                )?;
                let mut put_text = tx.prepare_cached(
                    "INSERT INTO chunks_fts (rowid, text, title, tenant_id, chunk_id) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for c in &chunks {
                    let old: Option<i64> = existing
                        .query_row(params![tenant.as_str(), c.id], |r| r.get(0))
                        .optional()?;
                    if let Some(seq) = old {
                        drop_text.execute(params![seq])?;
                    }
                    let seq: i64 = put.query_row(
                        params![tenant.as_str(), c.id, c.document_id, c.title, c.text, c.vector.as_deref().map(to_blob)],
                        |r| r.get(0),
                    )?;
                    put_text.execute(params![seq, c.text, c.title, tenant.as_str(), c.id])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn delete_document(
        &self,
        tenant: &TenantId,
        document_id: &str,
    ) -> Result<(), IndexError> {
        let (tenant, document_id) = (tenant.clone(), document_id.to_owned());
        let populated = Arc::clone(&self.populated);
        self.run(move |conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "DELETE FROM chunks_fts WHERE rowid IN (SELECT seq FROM chunks WHERE tenant_id = ?1 AND document_id = ?2)",
                params![tenant.as_str(), document_id],
            )?;
            tx.execute("DELETE FROM chunks WHERE tenant_id = ?1 AND document_id = ?2", params![tenant.as_str(), document_id])?;
            let any_left: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM chunks WHERE tenant_id = ?1)",
                params![tenant.as_str()],
                |r| r.get(0),
            )?;
            tx.commit()?;
            if !any_left
                && let Ok(mut populated) = populated.write()
            {
                populated.remove(tenant.as_str());
            }
            Ok(())
        })
        .await
    }

    async fn search(
        &self,
        tenant: &TenantId,
        query: &str,
        vector: Option<&[f32]>,
        top_k: usize,
    ) -> Result<Vec<Passage>, IndexError> {
        if !self
            .populated
            .read()
            .map(|p| p.contains(tenant.as_str()))
            .unwrap_or(true)
        {
            return Ok(Vec::new());
        }
        let (tenant, fts, vector) = (
            tenant.clone(),
            fts_query(query),
            vector.map(<[f32]>::to_vec),
        );
        let candidates = top_k.max(1) * CANDIDATES_PER_RESULT;
        let budget = self.search_budget;
        let tenant_label = tenant.to_string();
        self.read(move |conn| {
            // The budget: past it, SQLite interrupts the running statement.
            let started = std::time::Instant::now();
            conn.progress_handler(1_000, Some(move || started.elapsed() > budget));
            let ranked = rank(conn, &tenant, fts.as_deref(), vector.as_deref(), candidates);
            conn.progress_handler(1_000, None::<fn() -> bool>);
            let ranks = match ranked {
                Ok(ranks) => ranks,
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::OperationInterrupted =>
                {
                    tracing::warn!(tenant.id = %tenant_label, budget_ms = budget.as_millis() as u64, "knowledge search stopped at its work budget; answering without passages");
                    Vec::new()
                }
                Err(e) => return Err(e),
            };
            let mut fused: HashMap<String, f64> = HashMap::new();
            for ranking in &ranks {
                for (rank, id) in ranking.iter().enumerate() {
                    *fused.entry(id.clone()).or_default() += 1.0 / (RRF_K + rank as f64 + 1.0);
                }
            }
            let mut best: Vec<(String, f64)> = fused.into_iter().collect();
            best.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            best.truncate(top_k);
            let mut out = Vec::with_capacity(best.len());
            for (id, score) in best {
                let row = conn.query_row(
                    "SELECT document_id, title, text FROM chunks WHERE tenant_id = ?1 AND id = ?2",
                    params![tenant.as_str(), id],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)),
                )?;
                out.push(Passage { document_id: row.0, title: row.1, text: row.2, score });
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests;
