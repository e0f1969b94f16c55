//! The Azure AI Foundry Agent Service, as far as SOPHIA uses it, under
//! `/api/projects/{project}`: prompt agents with versions (`/agents/{name}/versions`,
//! `api-version=v1`), and the project's OpenAI-compatible surface (`/openai/v1/…`):
//! conversations, files, vector stores with their files and file batches, and the Responses
//! API with an `agent_reference`. Entra bearer tokens only (an `api-key` is refused, as
//! Foundry refuses it); with `SimConfig::project_tokens` set, a project admits only the
//! tokens granted on it (403 otherwise, as Azure RBAC answers). A response runs the agent
//! version's model and instructions over the conversation's items and searches the vector
//! stores its `file_search` tool names: the best-matching sentence of an attached file is
//! quoted, with a `file_citation` annotation and the `file_search_call` results.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, extract::Multipart};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiVersion, Grounding, Recorded, Simulator, azure_error, words};

/// One project's objects.
#[derive(Debug, Default)]
pub(super) struct Project {
    /// Agent name → its versions, oldest first.
    agents: HashMap<String, Vec<Value>>,
    vector_stores: HashMap<String, Value>,
    /// Vector store id → attached file ids.
    store_files: HashMap<String, Vec<String>>,
    /// File id → (object, text).
    files: HashMap<String, (Value, String)>,
    /// Conversation id → (object, items).
    conversations: HashMap<String, (Value, Vec<Value>)>,
    batches: HashMap<String, Value>,
}

/// Every project the simulator has seen.
#[derive(Debug, Default)]
pub(super) struct Projects(HashMap<String, Project>);

pub(super) fn routes() -> Router<Simulator> {
    Router::new()
        .route(
            "/api/projects/{project}/agents/{name}/versions",
            post(create_version).get(list_versions),
        )
        .route(
            "/api/projects/{project}/agents/{name}/versions/{version}",
            get(get_version),
        )
        .route(
            "/api/projects/{project}/agents/{name}",
            get(get_agent).delete(delete_agent),
        )
        .route(
            "/api/projects/{project}/openai/v1/conversations",
            post(create_conversation),
        )
        .route(
            "/api/projects/{project}/openai/v1/conversations/{id}",
            get(get_conversation).delete(delete_conversation),
        )
        .route(
            "/api/projects/{project}/openai/v1/vector_stores",
            post(create_vector_store),
        )
        .route(
            "/api/projects/{project}/openai/v1/vector_stores/{id}",
            get(get_vector_store).delete(delete_vector_store),
        )
        .route(
            "/api/projects/{project}/openai/v1/vector_stores/{id}/files",
            get(list_store_files).post(attach_file),
        )
        .route(
            "/api/projects/{project}/openai/v1/vector_stores/{id}/files/{file}",
            axum::routing::delete(detach_file),
        )
        .route(
            "/api/projects/{project}/openai/v1/vector_stores/{id}/file_batches",
            post(create_batch),
        )
        .route(
            "/api/projects/{project}/openai/v1/vector_stores/{id}/file_batches/{batch}",
            get(get_batch),
        )
        .route("/api/projects/{project}/openai/v1/files", post(upload_file))
        .route(
            "/api/projects/{project}/openai/v1/files/{id}",
            get(get_file).delete(delete_file),
        )
        .route(
            "/api/projects/{project}/openai/v1/responses",
            post(responses),
        )
}

#[derive(Deserialize)]
pub(super) struct TokenQuery {
    resource: Option<String>,
    #[serde(rename = "api-version")]
    api_version: Option<String>,
    client_id: Option<String>,
}

/// The App Service / Functions managed-identity endpoint (`IDENTITY_ENDPOINT`, with the
/// `X-IDENTITY-HEADER` of `IDENTITY_HEADER`), so a local SOPHIA can run a `foundry` instance on
/// a "company identity": each client id gets a token of its own, which the Foundry routes
/// accept. Local development only.
pub(super) async fn identity_token(
    State(sim): State<Simulator>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    let header_ok = headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !v.is_empty());
    if !header_ok || q.api_version.as_deref() != Some("2019-08-01") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_request",
                "error_description": "X-IDENTITY-HEADER and api-version=2019-08-01 are required"})),
        )
            .into_response();
    }
    let who = q.client_id.clone().unwrap_or_else(|| "system".into());
    let token = format!(
        "sim-mi-{}",
        who.replace(|c: char| !c.is_ascii_alphanumeric(), "")
    );
    if let Ok(mut issued) = sim.inner.issued.lock() {
        issued.insert(token.clone());
    }
    let expires = (now() + 3600).to_string();
    Json(json!({"access_token": token, "expires_on": expires,
        "resource": q.resource.unwrap_or_default(), "token_type": "Bearer",
        "client_id": q.client_id.unwrap_or_else(|| "00000000-0000-0000-0000-000000000001".into())}))
    .into_response()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

fn not_found(what: &str, id: &str) -> Response {
    azure_error(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("{what} with id '{id}' not found."),
    )
}

/// Records the call, then checks the bearer token (and the project's grants) and faults.
async fn admit(
    sim: &Simulator,
    kind: &'static str,
    project: &str,
    headers: &HeaderMap,
    api_version: Option<String>,
    body: &Value,
) -> Result<(), Response> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    sim.record(Recorded {
        kind,
        route: "foundry",
        deployment: Some(project.to_owned()),
        key: bearer.clone().or_else(|| {
            headers
                .get("api-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        }),
        api_version,
        traceparent: headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: body.clone(),
    });
    let Some(token) = bearer.filter(|t| !t.is_empty()) else {
        return Err(azure_error(
            StatusCode::UNAUTHORIZED,
            "PermissionDenied",
            "Authentication failed: an Entra ID bearer token for https://ai.azure.com is required; API keys are not accepted.",
        ));
    };
    let config = sim.config();
    let grants: Vec<&String> = config
        .project_tokens
        .iter()
        .filter(|(p, _)| p == project)
        .map(|(_, t)| t)
        .collect();
    let issued = sim
        .inner
        .issued
        .lock()
        .is_ok_and(|issued| issued.contains(&token));
    let known = config.keys.is_empty() || config.keys.contains(&token) || issued;
    if !known || (!config.project_tokens.is_empty() && !grants.contains(&&token)) {
        return Err(azure_error(
            StatusCode::FORBIDDEN,
            "PermissionDenied",
            &format!(
                "The principal does not have permission to perform this action on project '{project}'."
            ),
        ));
    }
    if let Some(fault) = sim.take_fault(Some(project))
        && let Some(status) = fault.status
    {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = azure_error(
            status,
            if status == StatusCode::TOO_MANY_REQUESTS {
                "too_many_requests"
            } else {
                "server_error"
            },
            "The service is temporarily unable to process the request.",
        );
        if let Some(s) = fault.retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(s),
            );
        }
        return Err(response);
    }
    Ok(())
}

/// The agents API requires `api-version=v1` (the project's OpenAI surface takes none).
fn agents_version(q: &ApiVersion) -> Result<(), Response> {
    match q.api_version.as_deref() {
        Some("v1") => Ok(()),
        Some(other) => Err(azure_error(
            StatusCode::BAD_REQUEST,
            "invalid_api_version",
            &format!("API version '{other}' is not supported; use v1."),
        )),
        None => Err(azure_error(
            StatusCode::BAD_REQUEST,
            "missing_api_version",
            "The api-version query parameter is required.",
        )),
    }
}

fn json_body(bytes: &Bytes) -> Result<Value, Response> {
    if bytes.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(bytes).map_err(|_| {
        azure_error(
            StatusCode::BAD_REQUEST,
            "invalid_payload",
            "The request body is not valid JSON.",
        )
    })
}

impl Simulator {
    fn with_project<T>(&self, project: &str, f: impl FnOnce(&mut Project) -> T) -> Option<T> {
        let mut projects = self.inner.foundry.lock().ok()?;
        Some(f(projects.0.entry(project.to_owned()).or_default()))
    }

    /// The agents of a project, for tests: name → versions.
    pub fn foundry_agents(&self, project: &str) -> HashMap<String, Vec<Value>> {
        self.with_project(project, |p| p.agents.clone())
            .unwrap_or_default()
    }

    /// The vector stores of a project, for tests: id → (object, attached file names).
    pub fn foundry_vector_stores(&self, project: &str) -> HashMap<String, (Value, Vec<String>)> {
        self.with_project(project, |p| {
            p.vector_stores
                .iter()
                .map(|(id, store)| {
                    let names = p
                        .store_files
                        .get(id)
                        .into_iter()
                        .flatten()
                        .filter_map(|f| p.files.get(f))
                        .filter_map(|(file, _)| file["filename"].as_str().map(str::to_owned))
                        .collect();
                    (id.clone(), (store.clone(), names))
                })
                .collect()
        })
        .unwrap_or_default()
    }

    /// Uploads `text` as `filename` and attaches it to `store` (what a refresh does over
    /// HTTP); returns the file id, `None` when the store does not exist.
    pub fn foundry_add_file(
        &self,
        project: &str,
        store: &str,
        filename: &str,
        text: &str,
    ) -> Option<String> {
        self.with_project(project, |p| {
            p.vector_stores.contains_key(store).then(|| {
                let id = new_id("assistant-");
                let object = json!({"id": id, "object": "file", "bytes": text.len(),
                    "created_at": now(), "filename": filename, "purpose": "assistants",
                    "status": "processed"});
                p.files.insert(id.clone(), (object, text.to_owned()));
                p.store_files
                    .entry(store.to_owned())
                    .or_default()
                    .push(id.clone());
                id
            })
        })
        .flatten()
    }

    /// The names of a project's files (attached or not), sorted, for tests.
    pub fn foundry_files(&self, project: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .with_project(project, |p| {
                p.files
                    .values()
                    .filter_map(|(f, _)| f["filename"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The conversations of a project, for tests: id → items.
    pub fn foundry_conversations(&self, project: &str) -> HashMap<String, Vec<Value>> {
        self.with_project(project, |p| {
            p.conversations
                .iter()
                .map(|(id, (_, items))| (id.clone(), items.clone()))
                .collect()
        })
        .unwrap_or_default()
    }
}

type Answer = Result<Response, Response>;

/// A read or a delete of one object: admitted (and, for the agents API, its api-version
/// checked), then `act` on the project; `None` is a 404 naming `what` (kind, id).
async fn one(
    sim: &Simulator,
    kind: &'static str,
    project: &str,
    headers: &HeaderMap,
    agents_api: Option<&ApiVersion>,
    what: (&str, &str),
    act: impl FnOnce(&mut Project) -> Option<Value>,
) -> Response {
    done(
        async {
            let version = agents_api.and_then(|q| q.api_version.clone());
            admit(sim, kind, project, headers, version, &Value::Null).await?;
            if let Some(q) = agents_api {
                agents_version(q)?;
            }
            let found = sim
                .with_project(project, act)
                .flatten()
                .ok_or_else(|| not_found(what.0, what.1))?;
            Ok(Json(found).into_response())
        }
        .await,
    )
}

fn done(r: Answer) -> Response {
    r.unwrap_or_else(|e| e)
}

async fn create_version(
    State(sim): State<Simulator>,
    Path((project, name)): Path<(String, String)>,
    Query(q): Query<ApiVersion>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    done(
        async {
            let body = json_body(&bytes)?;
            admit(
                &sim,
                "agents.create_version",
                &project,
                &headers,
                q.api_version.clone(),
                &body,
            )
            .await?;
            agents_version(&q)?;
            let definition = &body["definition"];
            if definition["kind"] != "prompt" || !definition["model"].is_string() {
                return Err(azure_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_payload",
                    "definition must be a prompt agent definition with a model.",
                ));
            }
            let name_ok = !name.is_empty()
                && name.len() <= 63
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !name_ok {
                return Err(azure_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_payload",
                    "Agent names are 1-63 letters, digits or '-'.",
                ));
            }
            let version = sim
            .with_project(&project, |p| {
                let versions = p.agents.entry(name.clone()).or_default();
                let number = (versions.len() + 1).to_string();
                let version = json!({"object": "agent.version", "id": format!("{name}:{number}"),
                    "name": name, "version": number, "description": body["description"],
                    "metadata": body.get("metadata").cloned().unwrap_or(json!({})),
                    "created_at": now(), "definition": definition});
                versions.push(version.clone());
                version
            })
            .unwrap_or_default();
            Ok(Json(version).into_response())
        }
        .await,
    )
}

async fn list_versions(
    State(sim): State<Simulator>,
    Path((project, name)): Path<(String, String)>,
    Query(q): Query<ApiVersion>,
    headers: HeaderMap,
) -> Response {
    done(
        async {
            admit(
                &sim,
                "agents.list_versions",
                &project,
                &headers,
                q.api_version.clone(),
                &Value::Null,
            )
            .await?;
            agents_version(&q)?;
            let versions = sim
                .with_project(&project, |p| p.agents.get(&name).cloned())
                .flatten()
                .ok_or_else(|| not_found("Agent", &name))?;
            Ok(
                Json(json!({"object": "list", "data": versions, "has_more": false}))
                    .into_response(),
            )
        }
        .await,
    )
}

async fn get_version(
    State(sim): State<Simulator>,
    Path((project, name, version)): Path<(String, String, String)>,
    Query(q): Query<ApiVersion>,
    headers: HeaderMap,
) -> Response {
    let what = format!("{name}:{version}");
    one(
        &sim,
        "agents.get_version",
        &project,
        &headers,
        Some(&q),
        ("Agent version", &what),
        |p| {
            p.agents.get(&name).and_then(|vs| {
                vs.iter()
                    .find(|v| v["version"] == version.as_str())
                    .cloned()
            })
        },
    )
    .await
}

async fn get_agent(
    State(sim): State<Simulator>,
    Path((project, name)): Path<(String, String)>,
    Query(q): Query<ApiVersion>,
    headers: HeaderMap,
) -> Response {
    one(&sim, "agents.get", &project, &headers, Some(&q), ("Agent", &name), |p| {
        let latest = p.agents.get(&name)?.last()?.clone();
        Some(json!({"object": "agent", "id": name, "name": name, "versions": {"latest": latest}}))
    })
    .await
}

async fn delete_agent(
    State(sim): State<Simulator>,
    Path((project, name)): Path<(String, String)>,
    Query(q): Query<ApiVersion>,
    headers: HeaderMap,
) -> Response {
    one(
        &sim,
        "agents.delete",
        &project,
        &headers,
        Some(&q),
        ("Agent", &name),
        |p| {
            p.agents.remove(&name)?;
            Some(json!({"object": "agent.deleted", "name": name, "deleted": true}))
        },
    )
    .await
}

async fn create_conversation(
    State(sim): State<Simulator>,
    Path(project): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    done(
        async {
            let body = json_body(&bytes)?;
            admit(
                &sim,
                "conversations.create",
                &project,
                &headers,
                None,
                &body,
            )
            .await?;
            let id = new_id("conv_");
            let conversation = json!({"id": id, "object": "conversation", "created_at": now(),
            "metadata": body.get("metadata").cloned().unwrap_or(json!({}))});
            let items = body["items"].as_array().cloned().unwrap_or_default();
            sim.with_project(&project, |p| {
                p.conversations.insert(id, (conversation.clone(), items))
            });
            Ok(Json(conversation).into_response())
        }
        .await,
    )
}

async fn get_conversation(
    State(sim): State<Simulator>,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    one(
        &sim,
        "conversations.get",
        &project,
        &headers,
        None,
        ("Conversation", &id),
        |p| p.conversations.get(&id).map(|c| c.0.clone()),
    )
    .await
}

async fn delete_conversation(
    State(sim): State<Simulator>,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    one(
        &sim,
        "conversations.delete",
        &project,
        &headers,
        None,
        ("Conversation", &id),
        |p| {
            p.conversations.remove(&id)?;
            Some(json!({"id": id, "object": "conversation.deleted", "deleted": true}))
        },
    )
    .await
}

/// A vector store's object with its current file counts.
fn store_object(p: &Project, id: &str) -> Option<Value> {
    let mut store = p.vector_stores.get(id)?.clone();
    let count = p.store_files.get(id).map_or(0, Vec::len);
    store["file_counts"] = json!({"in_progress": 0, "completed": count, "failed": 0,
        "cancelled": 0, "total": count});
    store["usage_bytes"] = json!(
        p.store_files
            .get(id)
            .into_iter()
            .flatten()
            .filter_map(|f| p.files.get(f))
            .map(|(_, text)| text.len())
            .sum::<usize>()
    );
    Some(store)
}

async fn create_vector_store(
    State(sim): State<Simulator>,
    Path(project): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    done(
        async {
            let body = json_body(&bytes)?;
            admit(
                &sim,
                "vector_stores.create",
                &project,
                &headers,
                None,
                &body,
            )
            .await?;
            let id = new_id("vs_");
            let store = sim
                .with_project(&project, |p| {
                    p.vector_stores.insert(
                        id.clone(),
                        json!({"id": id, "object": "vector_store", "created_at": now(),
                        "name": body["name"], "status": "completed",
                        "metadata": body.get("metadata").cloned().unwrap_or(json!({}))}),
                    );
                    store_object(p, &id)
                })
                .flatten()
                .unwrap_or_default();
            Ok(Json(store).into_response())
        }
        .await,
    )
}

async fn get_vector_store(
    State(sim): State<Simulator>,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    one(
        &sim,
        "vector_stores.get",
        &project,
        &headers,
        None,
        ("Vector store", &id),
        |p| store_object(p, &id),
    )
    .await
}

async fn delete_vector_store(
    State(sim): State<Simulator>,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    one(
        &sim,
        "vector_stores.delete",
        &project,
        &headers,
        None,
        ("Vector store", &id),
        |p| {
            p.store_files.remove(&id);
            p.vector_stores.remove(&id)?;
            Some(json!({"id": id, "object": "vector_store.deleted", "deleted": true}))
        },
    )
    .await
}

fn store_file_object(store: &str, file: &str) -> Value {
    json!({"id": file, "object": "vector_store.file", "vector_store_id": store,
        "status": "completed", "created_at": now(), "last_error": null})
}

async fn list_store_files(
    State(sim): State<Simulator>,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    done(
        async {
            admit(
                &sim,
                "vector_stores.files.list",
                &project,
                &headers,
                None,
                &Value::Null,
            )
            .await?;
            let files = sim
                .with_project(&project, |p| {
                    p.vector_stores.contains_key(&id).then(|| {
                        p.store_files
                            .get(&id)
                            .into_iter()
                            .flatten()
                            .map(|f| store_file_object(&id, f))
                            .collect::<Vec<_>>()
                    })
                })
                .flatten()
                .ok_or_else(|| not_found("Vector store", &id))?;
            Ok(Json(json!({"object": "list", "data": files, "has_more": false})).into_response())
        }
        .await,
    )
}

/// Attaches `files` to `store`: `Err` names the first unknown one.
fn attach(p: &mut Project, store: &str, files: &[String]) -> Result<(), Response> {
    if !p.vector_stores.contains_key(store) {
        return Err(not_found("Vector store", store));
    }
    if let Some(missing) = files.iter().find(|f| !p.files.contains_key(*f)) {
        return Err(not_found("File", missing));
    }
    let attached = p.store_files.entry(store.to_owned()).or_default();
    for f in files {
        if !attached.contains(f) {
            attached.push(f.clone());
        }
    }
    Ok(())
}

async fn attach_file(
    State(sim): State<Simulator>,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    done(
        async {
            let body = json_body(&bytes)?;
            admit(
                &sim,
                "vector_stores.files.create",
                &project,
                &headers,
                None,
                &body,
            )
            .await?;
            let file = body["file_id"].as_str().unwrap_or("").to_owned();
            sim.with_project(&project, |p| attach(p, &id, std::slice::from_ref(&file)))
                .unwrap_or(Ok(()))?;
            Ok(Json(store_file_object(&id, &file)).into_response())
        }
        .await,
    )
}

async fn detach_file(
    State(sim): State<Simulator>,
    Path((project, id, file)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    done(
        async {
            admit(
                &sim,
                "vector_stores.files.delete",
                &project,
                &headers,
                None,
                &Value::Null,
            )
            .await?;
            let removed = sim
                .with_project(&project, |p| {
                    let files = p.store_files.get_mut(&id)?;
                    let at = files.iter().position(|f| *f == file)?;
                    files.remove(at);
                    Some(())
                })
                .flatten();
            removed.ok_or_else(|| not_found("Vector store file", &file))?;
            Ok(
                Json(json!({"id": file, "object": "vector_store.file.deleted", "deleted": true}))
                    .into_response(),
            )
        }
        .await,
    )
}

async fn create_batch(
    State(sim): State<Simulator>,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    done(async {
        let body = json_body(&bytes)?;
        admit(&sim, "vector_stores.file_batches.create", &project, &headers, None, &body).await?;
        let files: Vec<String> = body["file_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str().map(str::to_owned))
            .collect();
        if files.is_empty() {
            return Err(azure_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "file_ids must list at least one file.",
            ));
        }
        let batch_id = new_id("vsfb_");
        let n = files.len();
        let batch = json!({"id": batch_id, "object": "vector_store.file_batch", "vector_store_id": id,
            "status": "completed", "created_at": now(),
            "file_counts": {"in_progress": 0, "completed": n, "failed": 0, "cancelled": 0, "total": n}});
        sim.with_project(&project, |p| {
            attach(p, &id, &files)?;
            p.batches.insert(batch_id, batch.clone());
            Ok::<_, Response>(())
        })
        .unwrap_or(Ok(()))?;
        // Processing is asynchronous in Foundry: the batch is first reported in progress.
        let mut first = batch;
        first["status"] = json!("in_progress");
        first["file_counts"] =
            json!({"in_progress": n, "completed": 0, "failed": 0, "cancelled": 0, "total": n});
        Ok(Json(first).into_response())
    }
    .await)
}

async fn get_batch(
    State(sim): State<Simulator>,
    Path((project, id, batch)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    one(
        &sim,
        "vector_stores.file_batches.get",
        &project,
        &headers,
        None,
        ("File batch", &batch),
        |p| {
            p.batches
                .get(&batch)
                .filter(|b| b["vector_store_id"] == id.as_str())
                .cloned()
        },
    )
    .await
}

async fn upload_file(
    State(sim): State<Simulator>,
    Path(project): Path<String>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Response {
    let mut purpose = None;
    let mut file = None;
    while let Ok(Some(field)) = form.next_field().await {
        match field.name() {
            Some("purpose") => purpose = field.text().await.ok(),
            Some("file") => {
                let name = field.file_name().unwrap_or("file").to_owned();
                if let Ok(bytes) = field.bytes().await {
                    file = Some((name, bytes));
                }
            }
            _ => {}
        }
    }
    done(async {
        let summary = json!({"purpose": purpose, "filename": file.as_ref().map(|f| f.0.clone()),
            "bytes": file.as_ref().map(|f| f.1.len())});
        admit(&sim, "files.create", &project, &headers, None, &summary).await?;
        let (Some(purpose), Some((name, bytes))) = (purpose, file) else {
            return Err(azure_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "A multipart body with 'purpose' and 'file' is required.",
            ));
        };
        if purpose != "assistants" {
            return Err(azure_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "purpose must be 'assistants' for files used by agents.",
            ));
        }
        let id = new_id("assistant-");
        let object = json!({"id": id, "object": "file", "bytes": bytes.len(), "created_at": now(),
            "filename": name, "purpose": purpose, "status": "processed"});
        let text = String::from_utf8_lossy(&bytes).into_owned();
        sim.with_project(&project, |p| p.files.insert(id, (object.clone(), text)));
        Ok(Json(object).into_response())
    }
    .await)
}

async fn get_file(
    State(sim): State<Simulator>,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    one(
        &sim,
        "files.get",
        &project,
        &headers,
        None,
        ("File", &id),
        |p| p.files.get(&id).map(|f| f.0.clone()),
    )
    .await
}

async fn delete_file(
    State(sim): State<Simulator>,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    one(
        &sim,
        "files.delete",
        &project,
        &headers,
        None,
        ("File", &id),
        |p| {
            for files in p.store_files.values_mut() {
                files.retain(|f| *f != id);
            }
            p.files.remove(&id)?;
            Some(json!({"id": id, "object": "file", "deleted": true}))
        },
    )
    .await
}

#[derive(Deserialize)]
struct AgentReference {
    name: String,
    version: Option<String>,
}

/// The best-matching sentence of the files in `stores` for `question`.
fn search(p: &Project, stores: &[String], question: &str) -> Option<Grounding> {
    let asked = words(question);
    let mut best: Option<(usize, &str, &Value, &str)> = None;
    for store in stores {
        for file_id in p.store_files.get(store).into_iter().flatten() {
            let Some((file, text)) = p.files.get(file_id) else {
                continue;
            };
            for sentence in text
                .split(['.', '\n', '!', '?'])
                .map(str::trim)
                .filter(|s| s.len() > 3)
            {
                let score = words(sentence).intersection(&asked).count();
                if score > 0 && best.is_none_or(|(b, ..)| score > b) {
                    best = Some((score, sentence, file, file_id));
                }
            }
        }
    }
    let (score, sentence, file, file_id) = best?;
    let answer = format!("According to the knowledge base: {sentence}.");
    let filename = file["filename"].clone();
    Some(Grounding {
        search_item: json!({"type": "file_search_call", "id": new_id("fs_"), "status": "completed",
            "queries": [question],
            "results": [{"file_id": file_id, "filename": filename, "score": (score as f64 / asked.len().max(1) as f64).min(1.0),
                         "text": sentence, "attributes": {}}]}),
        annotations: vec![json!({"type": "file_citation", "file_id": file_id,
            "filename": filename, "index": answer.len()})],
        answer,
    })
}

/// The text of an input item's content.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
        _ => String::new(),
    }
}

async fn responses(
    State(sim): State<Simulator>,
    Path(project): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    done(
        async {
            let body = json_body(&bytes)?;
            admit(&sim, "responses", &project, &headers, None, &body).await?;
            let reference: AgentReference = serde_json::from_value(body["agent_reference"].clone())
                .ok()
                .filter(|_| body["agent_reference"]["type"] == "agent_reference")
                .ok_or_else(|| {
                    azure_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_payload",
                        "agent_reference {type: 'agent_reference', name, version} is required.",
                    )
                })?;
            if body.get("model").is_some_and(|m| !m.is_null()) {
                return Err(azure_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_payload",
                    "model must not be given with an agent_reference.",
                ));
            }
            let conversation = body["conversation"].as_str().map(str::to_owned);
            let input: Vec<Value> = match &body["input"] {
                Value::String(s) => vec![json!({"type": "message", "role": "user", "content": s})],
                Value::Array(items) => items.clone(),
                _ => {
                    return Err(azure_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_payload",
                        "'input' must be a string or a list of input items.",
                    ));
                }
            };
            // The agent version, the conversation's items so far and the file search.
            let prepared = sim
                .with_project(&project, |p| {
                    let versions = p.agents.get(&reference.name)?;
                    let agent = match &reference.version {
                        Some(v) => versions.iter().find(|a| a["version"] == v.as_str())?,
                        None => versions.last()?,
                    }
                    .clone();
                    let earlier = match &conversation {
                        Some(id) => Some(p.conversations.get(id)?.1.clone()),
                        None => None,
                    };
                    let stores: Vec<String> = agent["definition"]["tools"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|t| t["type"] == "file_search")
                        .flat_map(|t| {
                            t["vector_store_ids"]
                                .as_array()
                                .cloned()
                                .unwrap_or_default()
                        })
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect();
                    let question = input
                        .iter()
                        .rev()
                        .find(|i| i["role"] == "user")
                        .map(|i| text_of(&i["content"]))
                        .unwrap_or_default();
                    Some((agent, earlier, search(p, &stores, &question)))
                })
                .flatten();
            let Some((agent, earlier, grounding)) = prepared else {
                return Err(match &conversation {
                    Some(id)
                        if sim
                            .with_project(&project, |p| !p.conversations.contains_key(id))
                            .unwrap_or(true) =>
                    {
                        not_found("Conversation", id)
                    }
                    _ => not_found("Agent", &reference.name),
                });
            };
            let mut items = earlier.clone().unwrap_or_default();
            items.extend(input.iter().cloned());
            let mut request = body.clone();
            request["input"] = Value::Array(items);
            request["instructions"] = agent["definition"]["instructions"].clone();
            let model = agent["definition"]["model"]
                .as_str()
                .unwrap_or("gpt-4o")
                .to_owned();
            let response = super::respond(&sim, &request, &model, grounding);
            // The conversation keeps the new input and the answer's message.
            if let Some(id) = &conversation {
                let (parts, body) = response.into_parts();
                let bytes = axum::body::to_bytes(body, 1 << 22)
                    .await
                    .unwrap_or_default();
                let answer_text = answer_of(&bytes);
                sim.with_project(&project, |p| {
                    if let Some((_, items)) = p.conversations.get_mut(id) {
                        items.extend(input.iter().cloned());
                        if let Some(text) = answer_text {
                            items.push(
                                json!({"type": "message", "role": "assistant", "content": text}),
                            );
                        }
                    }
                });
                return Ok(Response::from_parts(parts, axum::body::Body::from(bytes)));
            }
            Ok(response)
        }
        .await,
    )
}

/// The answer text of a whole response or of a stream's `response.completed` event.
fn answer_of(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    let response: Value = match serde_json::from_str::<Value>(text) {
        Ok(v) => v,
        Err(_) => text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .find(|e| e["type"] == "response.completed")?["response"]
            .clone(),
    };
    let out: String = response["output"]
        .as_array()?
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["text"].as_str().map(str::to_owned))
        .collect();
    Some(out)
}
