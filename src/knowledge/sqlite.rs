//! The embedded knowledge index: one SQLite file; chunks with their vectors in a table, their
//! text in an FTS5 table (unicode61, diacritics folded) for BM25. Keyword and vector ranks are
//! fused by reciprocal rank (k = 60).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use async_trait::async_trait;
use rusqlite::{Connection, params};

use super::{Chunk, IndexError, KnowledgeIndex, Passage};
use crate::domain::TenantId;

const RRF_K: f64 = 60.0;
/// Candidates taken from each ranking before fusion, per wanted result.
const CANDIDATES_PER_RESULT: usize = 4;
/// Vectors compared per query at most (the embedded index is for small corpora).
const MAX_VECTOR_SCAN: usize = 50_000;

pub struct SqliteIndex {
    conn: Arc<Mutex<Connection>>,
    /// Tenants that have at least one chunk: a search for any other tenant answers at once,
    /// without a trip to the blocking pool.
    populated: Arc<std::sync::RwLock<std::collections::HashSet<String>>>,
}

impl SqliteIndex {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open(path)
            .with_context(|| format!("opening knowledge index {}", path.display()))?;
        Self::init(conn)
    }

    pub fn open_in_memory() -> anyhow::Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> anyhow::Result<Self> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS chunks (
                tenant_id TEXT NOT NULL,
                id TEXT NOT NULL,
                document_id TEXT NOT NULL,
                title TEXT NOT NULL,
                text TEXT NOT NULL,
                vector BLOB,
                PRIMARY KEY (tenant_id, id)
            );
            CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks (tenant_id, document_id);
            CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
                text, title, tenant_id UNINDEXED, chunk_id UNINDEXED,
                tokenize = 'unicode61 remove_diacritics 2'
            );",
        )
        .context("creating the knowledge index schema (FTS5)")?;
        let populated = conn
            .prepare("SELECT DISTINCT tenant_id FROM chunks")?
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<_, _>>()?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            populated: Arc::new(std::sync::RwLock::new(populated)),
        })
    }

    async fn run<T, F>(&self, f: F) -> Result<T, IndexError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
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
            for c in &chunks {
                tx.execute("DELETE FROM chunks_fts WHERE tenant_id = ?1 AND chunk_id = ?2", params![tenant.as_str(), c.id])?;
                tx.execute(
                    "INSERT INTO chunks (tenant_id, id, document_id, title, text, vector) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (tenant_id, id) DO UPDATE SET document_id = excluded.document_id, title = excluded.title,
                        text = excluded.text, vector = excluded.vector",
                    params![tenant.as_str(), c.id, c.document_id, c.title, c.text, c.vector.as_deref().map(to_blob)],
                )?;
                tx.execute(
                    "INSERT INTO chunks_fts (text, title, tenant_id, chunk_id) VALUES (?1, ?2, ?3, ?4)",
                    params![c.text, c.title, tenant.as_str(), c.id],
                )?;
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
                "DELETE FROM chunks_fts WHERE tenant_id = ?1 AND chunk_id IN (SELECT id FROM chunks WHERE tenant_id = ?1 AND document_id = ?2)",
                params![tenant.as_str(), document_id],
            )?;
            tx.execute("DELETE FROM chunks WHERE tenant_id = ?1 AND document_id = ?2", params![tenant.as_str(), document_id])?;
            let left: i64 = tx.query_row("SELECT COUNT(*) FROM chunks WHERE tenant_id = ?1", params![tenant.as_str()], |r| r.get(0))?;
            tx.commit()?;
            if left == 0
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
        self.run(move |conn| {
            let mut ranks: Vec<Vec<String>> = Vec::new();
            if let Some(fts) = fts {
                let mut stmt = conn.prepare(
                    "SELECT chunk_id FROM chunks_fts WHERE chunks_fts MATCH ?1 AND tenant_id = ?2 ORDER BY bm25(chunks_fts) LIMIT ?3",
                )?;
                let ids = stmt
                    .query_map(params![fts, tenant.as_str(), candidates as i64], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()?;
                ranks.push(ids);
            }
            if let Some(v) = &vector {
                let mut stmt = conn.prepare("SELECT id, vector FROM chunks WHERE tenant_id = ?1 AND vector IS NOT NULL LIMIT ?2")?;
                let mut scored = stmt
                    .query_map(params![tenant.as_str(), MAX_VECTOR_SCAN as i64], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)))?
                    .collect::<Result<Vec<_>, _>>()?
                    .into_iter()
                    .map(|(id, blob)| (cosine(v, &from_blob(&blob)), id))
                    .filter(|(s, _)| *s > 0.0)
                    .collect::<Vec<_>>();
                scored.sort_by(|a, b| b.0.total_cmp(&a.0));
                ranks.push(scored.into_iter().take(candidates).map(|(_, id)| id).collect());
            }
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
mod tests {
    use super::*;

    fn chunk(doc: &str, n: usize, text: &str) -> Chunk {
        Chunk {
            id: format!("{doc}#{n}"),
            document_id: doc.into(),
            title: format!("{doc} title"),
            text: text.into(),
            vector: Some(crate::simulator::embed(text)),
        }
    }

    #[tokio::test]
    async fn keyword_and_vector_search_stay_in_the_tenant() {
        let index = SqliteIndex::open_in_memory().unwrap();
        let (a, b) = (TenantId::parse("a").unwrap(), TenantId::parse("b").unwrap());
        let same = "Refunds are accepted within 30 days of purchase.";
        index
            .upsert(
                &a,
                &[
                    chunk("policy", 0, same),
                    chunk("hours", 0, "The shop opens at nine."),
                ],
            )
            .await
            .unwrap();
        index
            .upsert(&b, &[chunk("b-policy", 0, same)])
            .await
            .unwrap();
        let q = "how many days for refunds?";
        let hits = index
            .search(&a, q, Some(&crate::simulator::embed(q)), 3)
            .await
            .unwrap();
        assert_eq!(hits[0].document_id, "policy");
        assert!(hits.iter().all(|h| h.document_id != "b-policy"));
        let hits_b = index.search(&b, q, None, 3).await.unwrap();
        assert_eq!(hits_b.len(), 1);
        assert_eq!(hits_b[0].document_id, "b-policy");
    }

    #[tokio::test]
    async fn upsert_replaces_and_delete_removes() {
        let index = SqliteIndex::open_in_memory().unwrap();
        let t = TenantId::parse("t").unwrap();
        index
            .upsert(&t, &[chunk("d", 0, "alpha beta")])
            .await
            .unwrap();
        index
            .upsert(&t, &[chunk("d", 0, "gamma delta")])
            .await
            .unwrap();
        assert!(index.search(&t, "alpha", None, 5).await.unwrap().is_empty());
        assert_eq!(index.search(&t, "gamma", None, 5).await.unwrap().len(), 1);
        index.delete_document(&t, "d").await.unwrap();
        assert!(index.search(&t, "gamma", None, 5).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn queries_cannot_inject_fts_syntax() {
        let index = SqliteIndex::open_in_memory().unwrap();
        let t = TenantId::parse("t").unwrap();
        index
            .upsert(&t, &[chunk("d", 0, "plain text")])
            .await
            .unwrap();
        for q in ["\"", "text OR tenant_id:*", "NEAR(", "*", "", "-- ;"] {
            assert!(index.search(&t, q, None, 5).await.is_ok(), "{q}");
        }
    }
}
