//! Tenants' knowledge: a `KnowledgeIndex` trait and the embedded SQLite implementation
//! (FTS5 BM25 plus stored vectors, fused by reciprocal rank). Every query carries the tenant:
//! an index never returns another tenant's passages.

pub mod azure_search;
pub mod chunk;
pub mod extract;
pub mod foundry_sync;
pub mod ingest;
pub mod sandbox;
pub mod source;
pub mod sqlite;

use async_trait::async_trait;

use crate::domain::TenantId;

/// A piece of a document, as indexed.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// Unique within the tenant (e.g. `<documentId>#<n>`).
    pub id: String,
    pub document_id: String,
    pub title: String,
    pub text: String,
    pub vector: Option<Vec<f32>>,
}

/// A search hit.
#[derive(Debug, Clone, PartialEq)]
pub struct Passage {
    pub document_id: String,
    pub title: String,
    pub text: String,
    pub score: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("knowledge index unavailable: {0}")]
    Unavailable(#[source] anyhow::Error),
    /// The search service refused the request (credentials, index name…).
    #[error("{detail}")]
    Rejected { status: u16, detail: String },
    #[error("knowledge index error: {0}")]
    Internal(#[source] anyhow::Error),
}

/// Where a tenant's passages are kept and searched.
#[async_trait]
pub trait KnowledgeIndex: Send + Sync + 'static {
    fn backend(&self) -> &'static str;

    /// Makes the index ready for writes (an Azure AI Search index is created when missing,
    /// with a vector field of `dimensions`). Called once per refresh before the first write.
    async fn prepare(&self, dimensions: Option<usize>) -> Result<(), IndexError> {
        let _ = dimensions;
        Ok(())
    }

    /// Inserts or replaces chunks (by id) for the tenant.
    async fn upsert(&self, tenant: &TenantId, chunks: &[Chunk]) -> Result<(), IndexError>;

    /// Removes every chunk of a document of the tenant.
    async fn delete_document(&self, tenant: &TenantId, document_id: &str)
    -> Result<(), IndexError>;

    /// The best `top_k` passages of the tenant for `query` (keyword, plus vector similarity
    /// when `vector` is given, fused by reciprocal rank).
    async fn search(
        &self,
        tenant: &TenantId,
        query: &str,
        vector: Option<&[f32]>,
        top_k: usize,
    ) -> Result<Vec<Passage>, IndexError>;
}
