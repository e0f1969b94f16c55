//! Tenants' knowledge: a `KnowledgeIndex` trait and the embedded SQLite implementation
//! (FTS5 BM25 plus stored vectors, fused by reciprocal rank). Every query carries the tenant:
//! an index never returns another tenant's passages.

pub mod azure_search;
pub mod chunk;
pub mod extract;
pub mod ingest;
pub mod sandbox;
pub mod source;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::{Citation, TenantId};
use crate::error::ApiError;
use crate::state::App;
use crate::tenant::runtime::TenantRuntime;

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

/// The tenant's Azure AI Search index, when its instance names a search endpoint (else the
/// embedded index serves it). The endpoint is re-checked against the upstream policy.
pub fn search_index(
    app: &App,
    runtime: &TenantRuntime,
) -> Result<Option<azure_search::AzureSearchIndex>, ApiError> {
    let Some(endpoint) = &runtime.instance.azure_search_endpoint else {
        return Ok(None);
    };
    let url = app
        .upstreams
        .check(endpoint)
        .map_err(|e| ApiError::NotConfigured(format!("azureSearchEndpoint is not allowed: {e}")))?;
    let settings = &runtime.instance.settings;
    let index = settings
        .get("searchIndex")
        .and_then(|v| v.as_str())
        .unwrap_or(azure_search::DEFAULT_INDEX)
        .to_owned();
    let auth = match &runtime.identity {
        // The company's own identity (its RBAC on its search service), never SOPHIA's.
        Some(Ok(tokens)) => azure_search::SearchAuth::Entra(Arc::clone(tokens)),
        Some(Err(e)) => return Err(ApiError::NotConfigured(e.clone())),
        None => {
            let key = runtime.search_key.clone().ok_or_else(|| {
                ApiError::NotConfigured(
                    "the instance has an azureSearchEndpoint but no azureSearchKey credential"
                        .into(),
                )
            })?;
            azure_search::SearchAuth::ApiKey(key)
        }
    };
    Ok(Some(azure_search::AzureSearchIndex::new(
        app.models.http().clone(),
        url,
        index,
        auth,
    )))
}

/// Longest snippet quoted in a citation.
const SNIPPET_CHARS: usize = 600;

/// The tenant's passages for a question, as citations. A failed query embedding degrades to
/// keyword search (logged); a failed index is a 503.
pub async fn retrieve(
    app: &App,
    runtime: &TenantRuntime,
    tenant: &TenantId,
    query: &str,
) -> Result<Vec<Citation>, ApiError> {
    if runtime.top_k == 0 {
        return Ok(Vec::new());
    }
    let vector = match &runtime.embeddings {
        Some(endpoint) => match app.models.embed(endpoint, &[query.to_owned()]).await {
            Ok(mut vectors) => vectors.pop(),
            Err(e) => {
                tracing::warn!(tenant.id = %tenant, error = %e, "query embedding failed; keyword search only: {e}");
                None
            }
        },
        None => None,
    };
    let passages = match search_index(app, runtime)? {
        Some(index) => {
            index
                .search(tenant, query, vector.as_deref(), runtime.top_k)
                .await
        }
        None => {
            app.knowledge
                .search(tenant, query, vector.as_deref(), runtime.top_k)
                .await
        }
    };
    let passages = passages.map_err(|e| match e {
        IndexError::Unavailable(cause) => {
            tracing::warn!(tenant.id = %tenant, error = ?cause, "knowledge index unavailable");
            ApiError::Unavailable("the knowledge index is unavailable; retry later".into())
        }
        IndexError::Rejected { status, detail } => {
            ApiError::Upstream(crate::upstream::UpstreamError::Rejected { status, detail })
        }
        IndexError::Internal(cause) => ApiError::Internal(cause),
    })?;
    Ok(passages
        .into_iter()
        .map(|p| Citation {
            document_id: p.document_id,
            title: p.title,
            snippet: p.text.chars().take(SNIPPET_CHARS).collect(),
            score: p.score,
        })
        .collect())
}
