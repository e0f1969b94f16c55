//! An in-process Azure AI Search stand-in speaking the REST protocol SOPHIA uses:
//! `POST /indexes/{index}/docs/index` (mergeOrUpload, delete) and
//! `POST /indexes/{index}/docs/search` (search text, OData `filter` with `eq` / `and`,
//! `top`, `select`, `vectorQueries`), `GET`/`PUT /indexes/{index}` (definitions), `api-version` required, `api-key` checked (403 like the
//! service). Like a shared real index, it returns every tenant's documents unless the request
//! filters: tests use the recorded filters to prove SOPHIA always sends the tenant filter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Default)]
pub struct Inner {
    docs: Mutex<HashMap<(String, String), Value>>,
    pub searches: Mutex<Vec<Value>>,
    /// The W3C `traceparent` of each search, as sent (`None` when absent).
    pub search_traceparents: Mutex<Vec<Option<String>>>,
    /// Index definitions (`PUT /indexes/{index}`).
    pub definitions: Mutex<HashMap<String, Value>>,
    fail_uploads: std::sync::atomic::AtomicBool,
}

#[derive(Clone)]
pub struct SearchStandIn {
    pub base: String,
    pub key: String,
    pub inner: Arc<Inner>,
}

#[derive(Deserialize)]
struct Version {
    #[serde(rename = "api-version")]
    api_version: Option<String>,
}

type Shared = (Arc<Inner>, String);

fn check(headers: &HeaderMap, key: &str, version: &Version) -> Option<Response> {
    if version.api_version.is_none() {
        return Some((StatusCode::BAD_REQUEST, Json(json!({"error": {"code": "", "message": "The api-version query parameter (?api-version=) is required for all requests."}}))).into_response());
    }
    if headers.get("api-key").and_then(|v| v.to_str().ok()) != Some(key) {
        return Some(StatusCode::FORBIDDEN.into_response());
    }
    None
}

async fn index_docs(
    State((inner, key)): State<Shared>,
    Path(index): Path<String>,
    Query(v): Query<Version>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = check(&headers, &key, &v) {
        return r;
    }
    let actions = body["value"].as_array().cloned().unwrap_or_default();
    if actions.len() > 1000 {
        return (StatusCode::PAYLOAD_TOO_LARGE, Json(json!({"error": {"code": "", "message": "The request is invalid. Details: actions : The maximum number of documents per batch is 1000."}}))).into_response();
    }
    if inner.fail_uploads.load(std::sync::atomic::Ordering::SeqCst)
        && actions
            .iter()
            .any(|a| a["@search.action"].as_str() != Some("delete"))
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": {"code": "", "message": "Service unavailable (injected)."}})),
        )
            .into_response();
    }
    let mut docs = inner.docs.lock().unwrap();
    let mut results = Vec::new();
    for action in actions {
        let id = action["id"].as_str().unwrap_or_default().to_owned();
        match action["@search.action"].as_str() {
            Some("delete") => {
                docs.remove(&(index.clone(), id.clone()));
            }
            _ => {
                let entry = docs
                    .entry((index.clone(), id.clone()))
                    .or_insert_with(|| json!({}));
                for (k, val) in action.as_object().unwrap() {
                    if k != "@search.action" {
                        entry[k] = val.clone();
                    }
                }
            }
        }
        results.push(json!({"key": id, "status": true, "statusCode": 200}));
    }
    Json(json!({"value": results})).into_response()
}

/// `field eq 'value'` clauses joined by `and`.
fn matches(filter: Option<&str>, doc: &Value) -> bool {
    let Some(filter) = filter else { return true };
    filter.split(" and ").all(|clause| {
        let mut parts = clause.splitn(3, ' ');
        let (field, op, literal) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let literal = literal.trim().trim_matches('\'').replace("''", "'");
        op == "eq" && doc[field].as_str() == Some(literal.as_str())
    })
}

fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() >= 3)
        .map(str::to_lowercase)
        .collect()
}

async fn search_docs(
    State((inner, key)): State<Shared>,
    Path(index): Path<String>,
    Query(v): Query<Version>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = check(&headers, &key, &v) {
        return r;
    }
    inner.searches.lock().unwrap().push(body.clone());
    inner.search_traceparents.lock().unwrap().push(
        headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    );
    let query = words(body["search"].as_str().unwrap_or("*"));
    let vector: Option<Vec<f64>> = body["vectorQueries"][0]["vector"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect());
    // Azure AI Search answers at most 1,000 hits per page and refuses a skip above 100,000.
    let top = (body["top"].as_u64().unwrap_or(50) as usize).min(1000);
    let skip = body["skip"].as_u64().unwrap_or(0) as usize;
    if skip > 100_000 {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": {"code": "InvalidRequestParameter", "message": "Value must be between 0 and 100000.\r\nParameter name: $skip"}}))).into_response();
    }
    let docs = inner.docs.lock().unwrap();
    let mut hits: Vec<(f64, Value)> = docs
        .iter()
        .filter(|((i, _), d)| *i == index && matches(body["filter"].as_str(), d))
        .map(|(_, d)| {
            let text = format!(
                "{} {}",
                d["title"].as_str().unwrap_or(""),
                d["content"].as_str().unwrap_or("")
            );
            let doc_words = words(&text);
            let mut score = query.iter().filter(|w| doc_words.contains(w)).count() as f64;
            if let (Some(q), Some(dv)) = (&vector, d["contentVector"].as_array()) {
                let dv: Vec<f64> = dv.iter().filter_map(Value::as_f64).collect();
                score += q.iter().zip(&dv).map(|(a, b)| a * b).sum::<f64>();
            }
            (score, d.clone())
        })
        .filter(|(s, _)| query.is_empty() || *s > 0.0)
        .collect();
    hits.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then_with(|| a.1["id"].as_str().cmp(&b.1["id"].as_str()))
    });
    let value: Vec<Value> = hits
        .into_iter()
        .skip(skip)
        .take(top)
        .map(|(score, mut d)| {
            d["@search.score"] = json!(score);
            if let Some(obj) = d.as_object_mut() {
                obj.remove("contentVector");
            }
            d
        })
        .collect();
    Json(json!({"value": value})).into_response()
}

async fn get_index(
    State((inner, key)): State<Shared>,
    Path(index): Path<String>,
    Query(v): Query<Version>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = check(&headers, &key, &v) {
        return r;
    }
    match inner.definitions.lock().unwrap().get(&index) {
        Some(definition) => Json(definition.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"code": "", "message": format!("No index with the name '{index}' was found in the service.")}})),
        )
            .into_response(),
    }
}

async fn put_index(
    State((inner, key)): State<Shared>,
    Path(index): Path<String>,
    Query(v): Query<Version>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = check(&headers, &key, &v) {
        return r;
    }
    if body["name"] != index.as_str() || !body["fields"].is_array() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"code": "", "message": "The index name in the body must match the URL, and fields are required."}})),
        )
            .into_response();
    }
    let created = inner
        .definitions
        .lock()
        .unwrap()
        .insert(index, body.clone())
        .is_none();
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

impl SearchStandIn {
    pub async fn start(key: &str) -> Self {
        let inner = Arc::new(Inner::default());
        let router = Router::new()
            .route(
                "/indexes/{index}",
                axum::routing::get(get_index).put(put_index),
            )
            .route("/indexes/{index}/docs/index", post(index_docs))
            .route("/indexes/{index}/docs/search", post(search_docs))
            .with_state((inner.clone(), key.to_owned()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Self {
            base,
            key: key.to_owned(),
            inner,
        }
    }

    /// The definition of `index`, when it was created.
    pub fn definition(&self, index: &str) -> Option<Value> {
        self.inner.definitions.lock().unwrap().get(index).cloned()
    }

    /// While on, every index batch that uploads documents answers 503 (deletes still work).
    pub fn fail_uploads(&self, on: bool) {
        self.inner
            .fail_uploads
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// The ids of `index`'s documents whose `documentId` is `document`.
    pub fn chunk_ids(&self, index: &str, document: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .inner
            .docs
            .lock()
            .unwrap()
            .iter()
            .filter(|((i, _), d)| i == index && d["documentId"].as_str() == Some(document))
            .map(|((_, id), _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// The filters of every search received so far.
    pub fn filters(&self) -> Vec<Option<String>> {
        self.inner
            .searches
            .lock()
            .unwrap()
            .iter()
            .map(|b| b["filter"].as_str().map(str::to_owned))
            .collect()
    }
}
