//! The Azure AI Search knowledge index, over its REST API (`api-version` 2024-07-01): hybrid
//! queries (keyword `search` + a `vectorQueries` entry when a query vector is given, fused by
//! the service with RRF), and the tenant filter `tenantId eq '<id>'` on every query and every
//! delete lookup — isolation is enforced server-side even when several companies share one
//! index. Auth is the `api-key` header (the tenant's `azureSearchKey`) or an Entra bearer token.

use std::sync::Arc;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

use super::{Chunk, IndexError, KnowledgeIndex, Passage};
use crate::domain::TenantId;
use crate::telemetry::Owner;
use crate::telemetry::deps::{self, Service};

pub const API_VERSION: &str = "2024-07-01";
/// Index used when the instance names none (`settings.searchIndex`).
/// Hits per search page, and actions per index batch: Azure AI Search's limits.
const SEARCH_PAGE: usize = 1000;
/// Azure AI Search refuses a `skip` above 100,000.
const MAX_SKIP: usize = 100_000;

pub const DEFAULT_INDEX: &str = "sophia-knowledge";
/// Field names of the index (see `index_definition`).
pub const VECTOR_FIELD: &str = "contentVector";
/// Vector dimensions of a new index when no embedding has been seen (text-embedding-3-small,
/// ada-002).
pub const DEFAULT_DIMENSIONS: usize = 1536;

/// How to authenticate to the search service.
#[derive(Clone)]
pub enum SearchAuth {
    ApiKey(SecretString),
    /// An Entra token fetched (and cached) by the process's Azure credential.
    Entra(std::sync::Arc<crate::azure_auth::EntraTokens>),
}

impl std::fmt::Debug for SearchAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ApiKey(_) => "ApiKey([REDACTED])",
            Self::Entra(_) => "Entra([token on demand])",
        })
    }
}

/// One tenant's view of an Azure AI Search index.
#[derive(Clone, Debug)]
pub struct AzureSearchIndex {
    http: reqwest::Client,
    endpoint: Url,
    index: String,
    auth: SearchAuth,
    /// The company instance whose search service this is (its telemetry).
    owner: Option<Arc<Owner>>,
}

/// An OData string literal (single quotes doubled).
pub fn odata_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A document key valid in AI Search (letters, digits, `_`, `-`, `=`): URL-safe base64 of
/// tenant and chunk id, so equal chunk ids of two tenants never collide.
pub fn document_key(tenant: &TenantId, chunk_id: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{tenant}\u{1f}{chunk_id}"))
}

/// The index schema SOPHIA expects (created by the refresh pipeline when missing).
pub fn index_definition(name: &str, dimensions: usize) -> Value {
    json!({
        "name": name,
        "fields": [
            {"name": "id", "type": "Edm.String", "key": true, "filterable": true},
            {"name": "tenantId", "type": "Edm.String", "filterable": true, "searchable": false},
            {"name": "documentId", "type": "Edm.String", "filterable": true, "searchable": false},
            {"name": "chunkId", "type": "Edm.String", "filterable": false, "searchable": false},
            {"name": "title", "type": "Edm.String", "searchable": true},
            {"name": "content", "type": "Edm.String", "searchable": true},
            {"name": VECTOR_FIELD, "type": "Collection(Edm.Single)", "searchable": true,
             "dimensions": dimensions, "vectorSearchProfile": "sophia-hnsw"}
        ],
        "vectorSearch": {
            "algorithms": [{"name": "sophia-hnsw-algo", "kind": "hnsw"}],
            "profiles": [{"name": "sophia-hnsw", "algorithm": "sophia-hnsw-algo"}]
        }
    })
}

#[derive(Deserialize)]
struct SearchResponse {
    #[serde(default)]
    value: Vec<SearchHit>,
}

#[derive(Deserialize)]
struct SearchHit {
    #[serde(rename = "@search.score", default)]
    score: f64,
    #[serde(default)]
    id: Option<String>,
    #[serde(rename = "documentId", default)]
    document_id: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    content: Option<String>,
}

impl AzureSearchIndex {
    pub fn new(
        http: reqwest::Client,
        endpoint: Url,
        index: impl Into<String>,
        auth: SearchAuth,
    ) -> Self {
        Self {
            http,
            endpoint,
            index: index.into(),
            auth,
            owner: None,
        }
    }

    /// The same index, attributed to `owner` (a company's instance) in telemetry.
    pub fn owned_by(mut self, owner: Arc<Owner>) -> Self {
        self.owner = Some(owner);
        self
    }

    fn url(&self, path: &str) -> Result<Url, IndexError> {
        let base = self.endpoint.as_str().trim_end_matches('/');
        Url::parse(&format!(
            "{base}/indexes/{}/{path}?api-version={API_VERSION}",
            self.index
        ))
        .map_err(|e| IndexError::Internal(anyhow::anyhow!("invalid search endpoint: {e}")))
    }

    async fn post(&self, url: Url, body: &Value) -> Result<Value, IndexError> {
        self.send(reqwest::Method::POST, url, Some(body)).await
    }

    /// The index's name.
    pub fn name(&self) -> &str {
        &self.index
    }

    /// The index's own URL (`/indexes/<name>`), for its definition.
    fn index_url(&self) -> Result<Url, IndexError> {
        let base = self.endpoint.as_str().trim_end_matches('/');
        Url::parse(&format!(
            "{base}/indexes/{}?api-version={API_VERSION}",
            self.index
        ))
        .map_err(|e| IndexError::Internal(anyhow::anyhow!("invalid search endpoint: {e}")))
    }

    /// Reads the index definition; `None` when the index does not exist.
    pub async fn definition(&self) -> Result<Option<Value>, IndexError> {
        match self
            .send(reqwest::Method::GET, self.index_url()?, None)
            .await
        {
            Ok(v) => Ok(Some(v)),
            Err(IndexError::Rejected { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One call to the search service: an AI Search dependency in App Insights.
    async fn send(
        &self,
        method: reqwest::Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Value, IndexError> {
        let mut span = deps::dependency_span(
            Service::Search,
            method.as_str(),
            &url,
            self.owner.as_deref(),
        );
        self.send_in(&mut span, method, url, body).await
    }

    async fn send_in(
        &self,
        span: &mut crate::telemetry::Dependency,
        method: reqwest::Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Value, IndexError> {
        let mut request = self
            .http
            .request(method, url)
            .timeout(std::time::Duration::from_secs(30));
        if let Some(tp) = span.traceparent() {
            request = request.header("traceparent", tp);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let request = match &self.auth {
            SearchAuth::ApiKey(key) => request.header("api-key", key.expose_secret()),
            SearchAuth::Entra(tokens) => {
                let token = tokens
                    .token(crate::azure_auth::SEARCH_SCOPE)
                    .await
                    .map_err(|e| IndexError::Rejected {
                        status: 401,
                        detail: e.to_string(),
                    })?;
                request.bearer_auth(token.expose_secret())
            }
        };
        let response = request.send().await.map_err(|e| {
            deps::end_dependency(span, None, Some("connection"));
            IndexError::Unavailable(anyhow::anyhow!(
                "search service unreachable: {}",
                e.without_url()
            ))
        })?;
        let status = response.status();
        deps::end_dependency(span, Some(status.as_u16()), None);
        let bytes = response.bytes().await.map_err(|e| {
            IndexError::Unavailable(anyhow::anyhow!(
                "search response failed: {}",
                e.without_url()
            ))
        })?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).or_else(|_| Ok(Value::Null));
        }
        let detail: String = String::from_utf8_lossy(&bytes).chars().take(300).collect();
        Err(match status.as_u16() {
            429 | 500..=599 => IndexError::Unavailable(anyhow::anyhow!(
                "search service answered {status}: {detail}"
            )),
            401 | 403 => IndexError::Rejected {
                status: status.as_u16(),
                detail: format!(
                    "the search service rejected the credentials ({})",
                    status.as_u16()
                ),
            },
            404 => IndexError::Rejected {
                status: 404,
                detail: format!("search index '{}' not found (404)", self.index),
            },
            s => IndexError::Rejected {
                status: s,
                detail: format!("the search service refused the request ({s})"),
            },
        })
    }

    fn tenant_filter(tenant: &TenantId) -> String {
        format!("tenantId eq {}", odata_string(tenant.as_str()))
    }
}

#[async_trait]
impl KnowledgeIndex for AzureSearchIndex {
    fn backend(&self) -> &'static str {
        "azure_search"
    }

    async fn prepare(&self, dimensions: Option<usize>) -> Result<(), IndexError> {
        if self.definition().await?.is_some() {
            return Ok(());
        }
        let definition = index_definition(&self.index, dimensions.unwrap_or(DEFAULT_DIMENSIONS));
        tracing::info!(index = %self.index, "creating the Azure AI Search index");
        self.send(reqwest::Method::PUT, self.index_url()?, Some(&definition))
            .await
            .map(|_| ())
    }

    async fn upsert(&self, tenant: &TenantId, chunks: &[Chunk]) -> Result<(), IndexError> {
        for batch in chunks.chunks(500) {
            let value: Vec<Value> = batch
                .iter()
                .map(|c| {
                    let mut doc = json!({
                        "@search.action": "mergeOrUpload",
                        "id": document_key(tenant, &c.id),
                        "tenantId": tenant.as_str(),
                        "documentId": c.document_id,
                        "chunkId": c.id,
                        "title": c.title,
                        "content": c.text,
                    });
                    if let Some(v) = &c.vector {
                        doc[VECTOR_FIELD] = json!(v);
                    }
                    doc
                })
                .collect();
            self.post(self.url("docs/index")?, &json!({ "value": value }))
                .await?;
        }
        Ok(())
    }

    async fn delete_document(
        &self,
        tenant: &TenantId,
        document_id: &str,
    ) -> Result<(), IndexError> {
        let filter = format!(
            "{} and documentId eq {}",
            Self::tenant_filter(tenant),
            odata_string(document_id)
        );
        // A search answers at most 1,000 hits a page: collect every key first (paging with
        // `skip`), then delete in batches of at most 1,000 actions.
        let mut keys: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut skip = 0usize;
        loop {
            let found = self
                .post(
                    self.url("docs/search")?,
                    &json!({"search": "*", "filter": filter, "select": "id",
                            "top": SEARCH_PAGE, "skip": skip}),
                )
                .await?;
            let page: Vec<String> = found["value"]
                .as_array()
                .map(|hits| {
                    hits.iter()
                        .filter_map(|h| h["id"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let full = page.len() >= SEARCH_PAGE;
            skip += page.len();
            let before = keys.len();
            keys.extend(page.into_iter().filter(|k| seen.insert(k.clone())));
            if !full || keys.len() == before || skip >= MAX_SKIP {
                break;
            }
        }
        for batch in keys.chunks(SEARCH_PAGE) {
            let actions: Vec<Value> = batch
                .iter()
                .map(|id| json!({"@search.action": "delete", "id": id}))
                .collect();
            self.post(self.url("docs/index")?, &json!({ "value": actions }))
                .await?;
        }
        Ok(())
    }

    async fn search(
        &self,
        tenant: &TenantId,
        query: &str,
        vector: Option<&[f32]>,
        top_k: usize,
    ) -> Result<Vec<Passage>, IndexError> {
        let mut body = json!({
            "search": if query.trim().is_empty() { "*" } else { query },
            "filter": Self::tenant_filter(tenant),
            "top": top_k,
            "select": "id,tenantId,documentId,title,content",
            "queryType": "simple",
        });
        if let Some(v) = vector {
            body["vectorQueries"] =
                json!([{"kind": "vector", "vector": v, "fields": VECTOR_FIELD, "k": top_k * 4}]);
        }
        let value = self.post(self.url("docs/search")?, &body).await?;
        let parsed: SearchResponse = serde_json::from_value(value).map_err(|e| {
            IndexError::Internal(anyhow::anyhow!("unexpected search response: {e}"))
        })?;
        Ok(parsed
            .value
            .into_iter()
            .filter(|h| h.id.is_some())
            .map(|h| Passage {
                document_id: h.document_id.unwrap_or_default(),
                title: h.title.unwrap_or_default(),
                text: h.content.unwrap_or_default(),
                score: h.score,
            })
            .collect())
    }
}
