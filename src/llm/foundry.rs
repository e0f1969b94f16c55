//! A company's Azure AI Foundry project, as the `foundry` runtime uses it (the Foundry Agent
//! Service's current API: agents with versions, the project's OpenAI-compatible conversations,
//! vector stores and files, and the Responses API with an agent reference):
//!
//! * `POST {project}/agents/{name}/versions?api-version=v1` publishes a prompt agent version
//!   (`definition: {kind: "prompt", model, instructions, tools}`), `GET …/versions/{v}` reads
//!   one;
//! * `{project}/openai/v1/vector_stores`, `/files`, `/conversations` and `/responses` speak the
//!   OpenAI shapes (no api-version).
//!
//! Foundry takes Entra tokens only (scope `https://ai.azure.com/.default`), so every call is
//! made with the company's own managed identity. Each call is a `Foundry` dependency in the
//! company's telemetry; errors are [`UpstreamError`]s, mapped as model calls are.

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::{Value, json};
use url::Url;

use crate::azure_auth::EntraTokens;
use crate::domain::AgentRef;
use crate::telemetry::{
    self,
    deps::{self, Service},
};
use crate::upstream::UpstreamError;

/// Scope of Azure AI Foundry data-plane tokens.
pub const FOUNDRY_SCOPE: &str = "https://ai.azure.com/.default";

/// The agents API version (GA).
pub const AGENTS_API_VERSION: &str = "v1";

/// How long one control-plane call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// One company's Foundry project, reached with that company's identity.
#[derive(Clone)]
pub struct FoundryProject {
    /// `https://<resource>.services.ai.azure.com/api/projects/<project>` (no trailing slash).
    pub endpoint: Url,
    pub tokens: Arc<EntraTokens>,
    http: reqwest::Client,
    owner: Option<Arc<telemetry::Owner>>,
}

impl std::fmt::Debug for FoundryProject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FoundryProject")
            .field("endpoint", &self.endpoint.as_str())
            .finish_non_exhaustive()
    }
}

/// What a prompt agent version is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentDefinition {
    /// The company's model deployment in the project's resource.
    pub model: String,
    pub instructions: String,
    /// The vector store its `file_search` tool reads.
    pub vector_store: String,
}

impl AgentDefinition {
    fn to_json(&self) -> Value {
        json!({
            "kind": "prompt",
            "model": self.model,
            "instructions": self.instructions,
            "tools": [{"type": "file_search", "vector_store_ids": [self.vector_store]}],
        })
    }

    /// Whether a stored version's definition is this one.
    pub fn matches(&self, version: &Value) -> bool {
        let d = &version["definition"];
        d["model"] == self.model.as_str()
            && d["instructions"].as_str().unwrap_or("") == self.instructions
            && d["tools"].as_array().is_some_and(|tools| {
                tools.iter().any(|t| {
                    t["type"] == "file_search"
                        && t["vector_store_ids"]
                            .as_array()
                            .is_some_and(|ids| ids.iter().any(|i| i == self.vector_store.as_str()))
                })
            })
    }
}

/// What a call sends.
enum Payload {
    None,
    Json(Vec<u8>),
    Form(reqwest::multipart::Form),
}

/// A short detail from an error body (`error.message`, at most 300 characters).
fn detail(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .map(|m| m.chars().take(300).collect())
        .unwrap_or_default()
}

impl FoundryProject {
    pub fn new(
        endpoint: Url,
        tokens: Arc<EntraTokens>,
        http: reqwest::Client,
        owner: Option<Arc<telemetry::Owner>>,
    ) -> Self {
        Self {
            endpoint,
            tokens,
            http,
            owner,
        }
    }

    /// `{project}/{path}` (path without a leading slash, query included).
    fn url(&self, path: &str) -> Result<Url, UpstreamError> {
        let raw = format!("{}/{path}", self.endpoint.as_str().trim_end_matches('/'));
        Url::parse(&raw)
            .map_err(|e| UpstreamError::Configuration(format!("invalid Foundry URL: {e}")))
    }

    /// One call; `Ok(None)` for a 404 when `missing_ok`.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        payload: Payload,
        missing_ok: bool,
    ) -> Result<Option<Value>, UpstreamError> {
        let url = self.url(path)?;
        let mut span = deps::dependency_span(
            Service::Foundry,
            method.as_str(),
            &url,
            self.owner.as_deref(),
        );
        let token = self.tokens.token(FOUNDRY_SCOPE).await?;
        let mut request = self
            .http
            .request(method, url)
            .timeout(CALL_TIMEOUT)
            .bearer_auth(token.expose_secret());
        if let Some(tp) = span.traceparent() {
            request = request.header("traceparent", tp);
        }
        request = match payload {
            Payload::None => request,
            Payload::Json(bytes) => request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes),
            Payload::Form(form) => request.multipart(form),
        };
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                deps::end_dependency(&mut span, None, Some("connection"));
                return Err(if e.is_timeout() {
                    UpstreamError::Timeout("Foundry")
                } else {
                    UpstreamError::Unavailable(format!(
                        "the Foundry project could not be reached: {}",
                        e.without_url()
                    ))
                });
            }
        };
        let status = response.status();
        deps::end_dependency(&mut span, Some(status.as_u16()), None);
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let bytes = response.bytes().await.map_err(|e| {
            UpstreamError::Unavailable(format!(
                "the Foundry answer was cut off: {}",
                e.without_url()
            ))
        })?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                UpstreamError::Protocol(format!("the Foundry answer is not JSON: {e}"))
            });
        }
        let detail = detail(&bytes);
        let suffix = if detail.is_empty() {
            String::new()
        } else {
            format!(": {detail}")
        };
        Err(match status.as_u16() {
            404 if missing_ok => return Ok(None),
            429 => UpstreamError::RateLimited {
                retry_after_secs: retry_after.unwrap_or(1).max(1),
            },
            401 | 403 => UpstreamError::Rejected {
                status: status.as_u16(),
                detail: format!(
                    "the Foundry project refused the company's identity ({}){suffix}",
                    status.as_u16()
                ),
            },
            s if s >= 500 => {
                UpstreamError::Unavailable(format!("the Foundry project failed ({s}){suffix}"))
            }
            s => UpstreamError::Rejected {
                status: s,
                detail: format!("the Foundry project refused the request ({s}){suffix}"),
            },
        })
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, UpstreamError> {
        let bytes = serde_json::to_vec(body).map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        self.call(reqwest::Method::POST, path, Payload::Json(bytes), false)
            .await
            .map(Option::unwrap_or_default)
    }

    async fn get(&self, path: &str) -> Result<Option<Value>, UpstreamError> {
        self.call(reqwest::Method::GET, path, Payload::None, true)
            .await
    }

    /// A DELETE; an object already gone is not an error.
    async fn delete(&self, path: &str) -> Result<(), UpstreamError> {
        self.call(reqwest::Method::DELETE, path, Payload::None, true)
            .await
            .map(|_| ())
    }

    /// Uploads a knowledge document (`purpose: assistants`) under its SOPHIA document id as
    /// the file name; returns the file id.
    pub async fn upload_file(
        &self,
        filename: &str,
        bytes: Vec<u8>,
    ) -> Result<String, UpstreamError> {
        let part = reqwest::multipart::Part::bytes(bytes).file_name(filename.to_owned());
        let form = reqwest::multipart::Form::new()
            .text("purpose", "assistants")
            .part("file", part);
        let file = self
            .call(
                reqwest::Method::POST,
                "openai/v1/files",
                Payload::Form(form),
                false,
            )
            .await?
            .unwrap_or_default();
        file["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| UpstreamError::Protocol("the uploaded file has no id".into()))
    }

    pub async fn delete_file(&self, file: &str) -> Result<(), UpstreamError> {
        self.delete(&format!("openai/v1/files/{file}")).await
    }

    /// Attaches files to a vector store in one batch; returns the batch.
    pub async fn create_file_batch(
        &self,
        store: &str,
        files: &[String],
    ) -> Result<Value, UpstreamError> {
        self.post(
            &format!("openai/v1/vector_stores/{store}/file_batches"),
            &json!({ "file_ids": files }),
        )
        .await
    }

    pub async fn file_batch(
        &self,
        store: &str,
        batch: &str,
    ) -> Result<Option<Value>, UpstreamError> {
        self.get(&format!(
            "openai/v1/vector_stores/{store}/file_batches/{batch}"
        ))
        .await
    }

    /// The files of a vector store (`vector_store.file` objects: id, status, last_error).
    pub async fn store_files(&self, store: &str) -> Result<Vec<Value>, UpstreamError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        // Bounded: at most 100 pages of 100.
        for _ in 0..100 {
            let path = match &after {
                Some(a) => format!("openai/v1/vector_stores/{store}/files?limit=100&after={a}"),
                None => format!("openai/v1/vector_stores/{store}/files?limit=100"),
            };
            let page = self.get(&path).await?.unwrap_or_default();
            let data = page["data"].as_array().cloned().unwrap_or_default();
            after = data
                .last()
                .and_then(|f| f["id"].as_str())
                .map(str::to_owned);
            out.extend(data);
            if page["has_more"] != true || after.is_none() {
                break;
            }
        }
        Ok(out)
    }

    /// Detaches a file from a vector store (the file itself stays until deleted).
    pub async fn detach_file(&self, store: &str, file: &str) -> Result<(), UpstreamError> {
        self.delete(&format!("openai/v1/vector_stores/{store}/files/{file}"))
            .await
    }

    /// Publishes a new version of the prompt agent `name`.
    pub async fn create_agent_version(
        &self,
        name: &str,
        definition: &AgentDefinition,
        company: &str,
    ) -> Result<(AgentRef, Value), UpstreamError> {
        let body = json!({
            "definition": definition.to_json(),
            "description": format!("SOPHIA agent of company {company}"),
            "metadata": {"managedBy": "sophia", "companyId": company},
        });
        let version = self
            .post(
                &format!("agents/{name}/versions?api-version={AGENTS_API_VERSION}"),
                &body,
            )
            .await?;
        let reference = AgentRef::parse(&format!(
            "{}:{}",
            version["name"].as_str().unwrap_or(name),
            version["version"].as_str().unwrap_or("")
        ))
        .ok_or_else(|| {
            UpstreamError::Protocol("the agent version has no name or version".into())
        })?;
        Ok((reference, version))
    }

    /// One agent version, if it exists.
    pub async fn agent_version(&self, agent: &AgentRef) -> Result<Option<Value>, UpstreamError> {
        self.get(&format!(
            "agents/{}/versions/{}?api-version={AGENTS_API_VERSION}",
            agent.name, agent.version
        ))
        .await
    }

    /// Deletes an agent and all its versions (provisioning's clean-up).
    pub async fn delete_agent(&self, name: &str) -> Result<(), UpstreamError> {
        self.delete(&format!("agents/{name}?api-version={AGENTS_API_VERSION}"))
            .await
    }

    /// Creates a vector store; returns its id.
    pub async fn create_vector_store(
        &self,
        name: &str,
        company: &str,
    ) -> Result<String, UpstreamError> {
        let store = self
            .post(
                "openai/v1/vector_stores",
                &json!({"name": name, "metadata": {"managedBy": "sophia", "companyId": company}}),
            )
            .await?;
        store["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| UpstreamError::Protocol("the vector store has no id".into()))
    }

    /// A vector store, if it exists.
    pub async fn vector_store(&self, id: &str) -> Result<Option<Value>, UpstreamError> {
        self.get(&format!("openai/v1/vector_stores/{id}")).await
    }

    pub async fn delete_vector_store(&self, id: &str) -> Result<(), UpstreamError> {
        self.delete(&format!("openai/v1/vector_stores/{id}")).await
    }

    /// Starts a Foundry conversation; returns its id.
    pub async fn create_conversation(&self, company: &str) -> Result<String, UpstreamError> {
        let conversation = self
            .post(
                "openai/v1/conversations",
                &json!({"metadata": {"managedBy": "sophia", "companyId": company}}),
            )
            .await?;
        conversation["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| UpstreamError::Protocol("the conversation has no id".into()))
    }
}
