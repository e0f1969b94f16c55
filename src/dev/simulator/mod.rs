//! A local Azure OpenAI (and OpenAI-compatible) simulator for development, tests and
//! benchmarks. It speaks the real wire protocol: Azure deployment routes with `api-version`
//! and the `api-key` header (or Bearer), OpenAI `/v1` routes with Bearer keys, chat
//! completions (whole and streamed, Azure-shaped SSE with prompt-filter and usage chunks),
//! deterministic embeddings, Azure-shaped errors. Its answers are grounded in the prompt: it
//! quotes the context sentence that best matches the question. Faults (429 with
//! `Retry-After`, 5xx, delays) can be queued over HTTP (`POST /_sim/faults`) or in process;
//! every request is recorded (`GET /_sim/requests`) so tests can assert what each tenant sent.
//! It also serves the Azure AI Foundry project routes SOPHIA's `foundry` runtime calls
//! (`foundry.rs`) and an App Service managed-identity endpoint (`/msi/token`) for them.

// Early answers are whole HTTP responses; boxing them would only add noise here.
#![allow(clippy::result_large_err)]

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Embedding width of the simulator's deterministic vectors.
pub const EMBEDDING_DIMS: usize = 64;

/// How the simulator behaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimConfig {
    /// Accepted keys; empty accepts any non-empty key.
    pub keys: Vec<String>,
    /// Known deployments; empty accepts any.
    pub deployments: Vec<String>,
    /// Added before every answer.
    pub latency: Duration,
    /// Between streamed chunks.
    pub chunk_delay: Duration,
    /// Foundry projects' role assignments, `(project, bearer token)`: when any is given, a
    /// project admits only the tokens granted on it.
    pub project_tokens: Vec<(String, String)>,
}

/// A queued misbehaviour, consumed by matching requests.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Fault {
    /// Only requests to this deployment (any when absent).
    pub deployment: Option<String>,
    /// Answer with this status (e.g. 429, 500) instead of a completion.
    pub status: Option<u16>,
    /// `Retry-After` seconds on the fault answer.
    pub retry_after: Option<u64>,
    /// `retry-after-ms` on the fault answer.
    pub retry_after_ms: Option<u64>,
    /// Delay before answering (a slow upstream).
    pub delay_ms: Option<u64>,
    /// How many requests it applies to (default 1).
    pub times: Option<u32>,
}

/// One request the simulator received.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Recorded {
    pub kind: &'static str,
    /// Which API shape was called: `deployments`, `azure-v1` or `openai`.
    pub route: &'static str,
    pub deployment: Option<String>,
    pub key: Option<String>,
    pub api_version: Option<String>,
    /// The W3C `traceparent` the caller sent (distributed tracing reaches the model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub body: Value,
}

#[derive(Default)]
struct Inner {
    config: Mutex<SimConfig>,
    faults: Mutex<VecDeque<(Fault, u32)>>,
    log: Mutex<Vec<Recorded>>,
    foundry: Mutex<foundry::Projects>,
    /// Tokens the managed-identity endpoint issued (Foundry accepts them).
    issued: Mutex<HashSet<String>>,
}

/// Shared simulator state (cheap to clone).
#[derive(Clone, Default)]
pub struct Simulator {
    inner: Arc<Inner>,
}

impl Simulator {
    pub fn new(config: SimConfig) -> Self {
        let sim = Self::default();
        if let Ok(mut c) = sim.inner.config.lock() {
            *c = config;
        }
        sim
    }

    pub fn push_fault(&self, fault: Fault) {
        let times = fault.times.unwrap_or(1);
        if let Ok(mut f) = self.inner.faults.lock() {
            f.push_back((fault, times));
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn clear(&self) {
        if let Ok(mut l) = self.inner.log.lock() {
            l.clear();
        }
    }

    fn config(&self) -> SimConfig {
        self.inner
            .config
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    fn take_fault(&self, deployment: Option<&str>) -> Option<Fault> {
        let mut faults = self.inner.faults.lock().ok()?;
        let index = faults.iter().position(|(f, _)| {
            f.deployment
                .as_deref()
                .is_none_or(|d| Some(d) == deployment)
        })?;
        let (fault, left) = faults.get_mut(index)?;
        let fault = fault.clone();
        *left = left.saturating_sub(1);
        if *left == 0 {
            faults.remove(index);
        }
        Some(fault)
    }

    fn record(&self, entry: Recorded) {
        if let Ok(mut l) = self.inner.log.lock() {
            if l.len() >= 10_000 {
                l.remove(0);
            }
            l.push(entry);
        }
    }

    /// The simulator's routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route(
                "/openai/deployments/{deployment}/chat/completions",
                post(azure_chat),
            )
            .route(
                "/openai/deployments/{deployment}/embeddings",
                post(azure_embeddings),
            )
            .route("/openai/v1/chat/completions", post(azure_v1_chat))
            .route("/openai/v1/embeddings", post(azure_v1_embeddings))
            .route("/openai/v1/responses", post(azure_v1_responses))
            .route("/v1/chat/completions", post(openai_chat))
            .route("/v1/embeddings", post(openai_embeddings))
            .merge(foundry::routes())
            .route("/msi/token", get(foundry::identity_token))
            .route("/_sim/requests", get(list_requests).delete(clear_requests))
            .route("/_sim/faults", post(add_fault))
            .route("/", get(|| async { "sophia azure openai simulator" }))
            .with_state(self.clone())
    }
}

fn azure_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// The presented key: `api-key`, else a Bearer token.
fn presented_key(headers: &HeaderMap) -> Option<String> {
    if let Some(k) = headers.get("api-key").and_then(|v| v.to_str().ok()) {
        return Some(k.to_owned());
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
}

#[derive(Deserialize)]
struct ApiVersion {
    #[serde(rename = "api-version")]
    api_version: Option<String>,
}

struct Call {
    kind: &'static str,
    /// `deployments` (Azure's deployment routes), `azure-v1` (Azure's v1 API) or `openai`.
    route: &'static str,
    deployment: Option<String>,
    api_version: Option<String>,
    azure: bool,
}

/// Checks auth, deployment and faults; records the request. `Err` is the answer to send.
async fn admit(
    sim: &Simulator,
    call: &Call,
    headers: &HeaderMap,
    body: &Value,
) -> Result<(), Response> {
    let config = sim.config();
    let key = presented_key(headers);
    sim.record(Recorded {
        kind: call.kind,
        route: call.route,
        deployment: call.deployment.clone(),
        key: key.clone(),
        api_version: call.api_version.clone(),
        traceparent: headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: body.clone(),
    });
    if call.azure && call.api_version.is_none() {
        return Err(azure_error(
            StatusCode::NOT_FOUND,
            "404",
            "Resource not found",
        ));
    }
    let key_ok = match &key {
        None => false,
        Some(k) => !k.is_empty() && (config.keys.is_empty() || config.keys.iter().any(|c| c == k)),
    };
    if !key_ok {
        return Err(azure_error(
            StatusCode::UNAUTHORIZED,
            "401",
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.",
        ));
    }
    if let Some(d) = &call.deployment
        && !config.deployments.is_empty()
        && !config.deployments.contains(d)
    {
        return Err(azure_error(
            StatusCode::NOT_FOUND,
            "DeploymentNotFound",
            "The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again.",
        ));
    }
    if !config.latency.is_zero() {
        tokio::time::sleep(config.latency).await;
    }
    if let Some(fault) = sim.take_fault(call.deployment.as_deref()) {
        if let Some(ms) = fault.delay_ms {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if let Some(status) = fault.status {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = if status == StatusCode::TOO_MANY_REQUESTS {
                azure_error(
                    status,
                    "429",
                    "Requests to the ChatCompletions_Create Operation have exceeded the token rate limit of your current tier. Please retry after the indicated time.",
                )
            } else {
                azure_error(
                    status,
                    &status.as_u16().to_string(),
                    "The server had an error while processing your request.",
                )
            };
            if let Some(s) = fault.retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(s));
            }
            if let Some(ms) = fault.retry_after_ms {
                response
                    .headers_mut()
                    .insert("retry-after-ms", HeaderValue::from(ms));
            }
            return Err(response);
        }
    }
    Ok(())
}

/// Parses the JSON body, then records, authenticates and applies faults (`admit`).
async fn accept(
    sim: &Simulator,
    call: &Call,
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Result<Value, Response> {
    let body = parse_body(bytes)?;
    admit(sim, call, headers, &body).await?;
    Ok(body)
}

fn parse_body(bytes: &Bytes) -> Result<Value, Response> {
    serde_json::from_slice(bytes).map_err(|_| {
        azure_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "The request body is not valid JSON.",
        )
    })
}

async fn azure_chat(
    State(sim): State<Simulator>,
    Path(deployment): Path<String>,
    Query(q): Query<ApiVersion>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = Call {
        kind: "chat",
        deployment: Some(deployment.clone()),
        api_version: q.api_version,
        azure: true,
        route: "deployments",
    };
    chat(sim, call, headers, body, deployment).await
}

/// An OpenAI `/v1` call: the model named in the body (or `default`) plays the deployment.
fn openai_call(kind: &'static str, body: &Bytes, default: &str) -> (Call, String) {
    let model = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["model"].as_str().map(str::to_owned))
        .unwrap_or_else(|| default.to_owned());
    let call = Call {
        kind,
        deployment: Some(model.clone()),
        api_version: None,
        azure: false,
        route: "openai",
    };
    (call, model)
}

/// Azure OpenAI's v1 API: `/openai/v1/…` with `api-key` (or an Entra Bearer), no
/// `api-version`, the deployment named as `model` (required).
fn azure_v1_call(kind: &'static str, body: &Bytes) -> Result<(Call, String), Response> {
    let model = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["model"].as_str().map(str::to_owned));
    let Some(model) = model else {
        return Err(azure_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "'model' is a required property: name the deployment.",
        ));
    };
    let call = Call {
        kind,
        deployment: Some(model.clone()),
        api_version: None,
        azure: false,
        route: "azure-v1",
    };
    Ok((call, model))
}

async fn azure_v1_chat(State(sim): State<Simulator>, headers: HeaderMap, body: Bytes) -> Response {
    match azure_v1_call("chat", &body) {
        Ok((call, model)) => chat(sim, call, headers, body, model).await,
        Err(r) => r,
    }
}

async fn azure_v1_embeddings(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match azure_v1_call("embeddings", &body) {
        Ok((call, model)) => embeddings(sim, call, headers, body, model).await,
        Err(r) => r,
    }
}

/// Azure OpenAI's Responses API (v1): `input` (text or items), `instructions`, flat function
/// tools, `text.format`; whole or streamed with the typed events. Answers as chat does.
async fn azure_v1_responses(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (mut call, model) = match azure_v1_call("responses", &body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    call.kind = "responses";
    let body = match accept(&sim, &call, &headers, &body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    respond(&sim, &body, &model, None)
}

/// What a file search found for a Foundry agent's answer: the `file_search_call` item, the
/// answer quoting it and the answer's `file_citation` annotations.
pub(super) struct Grounding {
    pub search_item: Value,
    pub answer: String,
    pub annotations: Vec<Value>,
}

/// A Responses API answer (whole or streamed, as `body.stream` asks) to a request already
/// admitted; `grounding` is a Foundry agent's file search.
fn respond(sim: &Simulator, body: &Value, model: &str, grounding: Option<Grounding>) -> Response {
    let Some(chat_body) = responses_as_chat(body) else {
        return azure_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "'input' must be a string or a list of input items.",
        );
    };
    let messages = chat_body["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let refusal = refusal(&messages);
    let calls = if refusal.is_some() {
        vec![]
    } else {
        tool_calls(&chat_body, &messages)
    };
    let (search_item, annotations, grounded) = match grounding {
        Some(g) => (Some(g.search_item), g.annotations, Some(g.answer)),
        None => (None, Vec::new(), None),
    };
    let answer = if calls.is_empty() && refusal.is_none() {
        grounded.unwrap_or_else(|| shaped_answer(&chat_body, &messages))
    } else {
        String::new()
    };
    let input_tokens: u64 = messages
        .iter()
        .map(|m| tokens(m["content"].as_str().unwrap_or("")))
        .sum();
    let arguments: String = calls
        .iter()
        .map(|c| c["function"]["arguments"].as_str().unwrap_or(""))
        .collect();
    let output_tokens =
        tokens(&answer) + tokens(&arguments) + tokens(refusal.as_deref().unwrap_or(""));
    let id = format!("resp_sim{}", uuid::Uuid::new_v4().simple());
    let message_id = format!("msg_sim{}", uuid::Uuid::new_v4().simple());
    let mut output: Vec<Value> = search_item.into_iter().collect();
    if let Some(refusal) = &refusal {
        output.push(
            json!({"type": "message", "id": message_id, "status": "completed", "role": "assistant",
                           "content": [{"type": "refusal", "refusal": refusal}]}),
        );
    } else if calls.is_empty() {
        output.push(json!({"type": "message", "id": message_id, "status": "completed", "role": "assistant",
                           "content": [{"type": "output_text", "text": answer, "annotations": annotations}]}));
    }
    for c in &calls {
        output.push(json!({"type": "function_call", "id": format!("fc_sim{}", uuid::Uuid::new_v4().simple()),
                           "call_id": c["id"], "name": c["function"]["name"], "arguments": c["function"]["arguments"], "status": "completed"}));
    }
    let response = json!({"id": id, "object": "response", "created_at": chrono::Utc::now().timestamp(),
        "status": "completed", "error": null, "incomplete_details": null, "model": model, "output": output,
        "conversation": body.get("conversation").filter(|c| !c.is_null()).map(|c| json!({"id": c})),
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens, "total_tokens": input_tokens + output_tokens}});
    if body["stream"].as_bool() != Some(true) {
        return Json(response).into_response();
    }
    let mut events: Vec<(String, Value)> = Vec::new();
    let mut skeleton = response.clone();
    skeleton["status"] = json!("in_progress");
    skeleton["output"] = json!([]);
    skeleton["usage"] = Value::Null;
    events.push((
        "response.created".into(),
        json!({"response": skeleton.clone()}),
    ));
    events.push(("response.in_progress".into(), json!({"response": skeleton})));
    for (index, item) in output.iter().enumerate() {
        let mut open = item.clone();
        open["status"] = json!("in_progress");
        if let Some(refusal) = refusal.as_deref().filter(|_| item["type"] == "message") {
            open["content"] = json!([]);
            events.push((
                "response.output_item.added".into(),
                json!({"output_index": index, "item": open}),
            ));
            events.push((
                "response.content_part.added".into(),
                json!({"item_id": item["id"], "output_index": index, "content_index": 0,
                "part": {"type": "refusal", "refusal": ""}}),
            ));
            for piece in split_keep_spaces(refusal) {
                events.push(("response.refusal.delta".into(), json!({"item_id": item["id"], "output_index": index, "content_index": 0, "delta": piece})));
            }
            events.push(("response.refusal.done".into(), json!({"item_id": item["id"], "output_index": index, "content_index": 0, "refusal": refusal})));
            events.push(("response.content_part.done".into(), json!({"item_id": item["id"], "output_index": index, "content_index": 0, "part": item["content"][0]})));
        } else if item["type"] == "message" {
            open["content"] = json!([]);
            events.push((
                "response.output_item.added".into(),
                json!({"output_index": index, "item": open}),
            ));
            events.push((
                "response.content_part.added".into(),
                json!({"item_id": item["id"], "output_index": index, "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []}}),
            ));
            for piece in split_keep_spaces(&answer) {
                events.push(("response.output_text.delta".into(), json!({"item_id": item["id"], "output_index": index, "content_index": 0, "delta": piece})));
            }
            for (n, annotation) in annotations.iter().enumerate() {
                events.push(("response.output_text.annotation.added".into(), json!({"item_id": item["id"], "output_index": index, "content_index": 0, "annotation_index": n, "annotation": annotation})));
            }
            events.push(("response.output_text.done".into(), json!({"item_id": item["id"], "output_index": index, "content_index": 0, "text": answer})));
            events.push(("response.content_part.done".into(), json!({"item_id": item["id"], "output_index": index, "content_index": 0, "part": item["content"][0]})));
        } else if item["type"] == "file_search_call" {
            open["results"] = Value::Null;
            events.push((
                "response.output_item.added".into(),
                json!({"output_index": index, "item": open}),
            ));
            for phase in ["in_progress", "searching", "completed"] {
                events.push((
                    format!("response.file_search_call.{phase}"),
                    json!({"item_id": item["id"], "output_index": index}),
                ));
            }
        } else {
            open["arguments"] = json!("");
            events.push((
                "response.output_item.added".into(),
                json!({"output_index": index, "item": open}),
            ));
            let args: Vec<char> = item["arguments"].as_str().unwrap_or("").chars().collect();
            for piece in args.chunks(8) {
                events.push(("response.function_call_arguments.delta".into(), json!({"item_id": item["id"], "output_index": index, "delta": piece.iter().collect::<String>()})));
            }
            events.push(("response.function_call_arguments.done".into(), json!({"item_id": item["id"], "output_index": index, "arguments": item["arguments"]})));
        }
        events.push((
            "response.output_item.done".into(),
            json!({"output_index": index, "item": item}),
        ));
    }
    events.push(("response.completed".into(), json!({"response": response})));
    sse(sim, events)
}

/// Typed server-sent events, `chunk_delay` apart.
fn sse(sim: &Simulator, events: Vec<(String, Value)>) -> Response {
    let delay = sim.config().chunk_delay;
    let stream = futures_util::stream::iter(events.into_iter().enumerate()).then(
        move |(n, (kind, mut data))| async move {
            if n > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            data["type"] = json!(kind);
            data["sequence_number"] = json!(n);
            Ok::<_, Infallible>(Bytes::from(format!("event: {kind}\ndata: {data}\n\n")))
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// A Responses request as the chat request the simulator answers: `instructions` a system
/// message, items as messages (function calls on an assistant message, outputs as `tool`
/// messages), flat tools and `text.format` in chat's shape. `None` when `input` is neither
/// text nor items.
fn responses_as_chat(body: &Value) -> Option<Value> {
    let mut messages: Vec<Value> = Vec::new();
    if let Some(instructions) = body["instructions"].as_str() {
        messages.push(json!({"role": "system", "content": instructions}));
    }
    let text_of = |content: &Value| -> String {
        match content {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
            _ => String::new(),
        }
    };
    match &body["input"] {
        Value::String(s) => messages.push(json!({"role": "user", "content": s})),
        Value::Array(items) => {
            for item in items {
                match item["type"].as_str().unwrap_or("message") {
                    "function_call" => {
                        let call = json!({"id": item["call_id"], "type": "function",
                                          "function": {"name": item["name"], "arguments": item["arguments"]}});
                        match messages.last_mut() {
                            Some(last) if last["role"] == "assistant" => {
                                if !last["tool_calls"].is_array() {
                                    last["tool_calls"] = json!([]);
                                }
                                if let Some(calls) = last["tool_calls"].as_array_mut() {
                                    calls.push(call);
                                }
                            }
                            _ => messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                        }
                    }
                    "function_call_output" => messages.push(json!({"role": "tool", "tool_call_id": item["call_id"],
                                                                   "content": text_of(&item["output"])})),
                    _ => {
                        let role = match item["role"].as_str() {
                            Some("developer") => "system",
                            Some(r) => r,
                            None => "user",
                        };
                        messages.push(json!({"role": role, "content": text_of(&item["content"])}));
                    }
                }
            }
        }
        _ => return None,
    }
    let tools: Vec<Value> = body["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .filter(|t| t["type"] == "function")
                .map(|t| json!({"type": "function", "function": {"name": t["name"], "description": t["description"], "parameters": t["parameters"]}}))
                .collect()
        })
        .unwrap_or_default();
    let tool_choice = match &body["tool_choice"] {
        Value::Object(o) => {
            json!({"type": "function", "function": {"name": o.get("name").cloned().unwrap_or(Value::Null)}})
        }
        other => other.clone(),
    };
    let format = &body["text"]["format"];
    let response_format = match format["type"].as_str() {
        Some("json_schema") => {
            json!({"type": "json_schema", "json_schema": {"name": format["name"], "schema": format["schema"]}})
        }
        Some(kind) => json!({"type": kind}),
        None => Value::Null,
    };
    Some(
        json!({"messages": messages, "tools": tools, "tool_choice": tool_choice,
                "parallel_tool_calls": body["parallel_tool_calls"], "response_format": response_format}),
    )
}

async fn openai_chat(State(sim): State<Simulator>, headers: HeaderMap, body: Bytes) -> Response {
    let (call, model) = openai_call("chat", &body, "gpt-4o-mini");
    chat(sim, call, headers, body, model).await
}

async fn chat(
    sim: Simulator,
    call: Call,
    headers: HeaderMap,
    body: Bytes,
    model: String,
) -> Response {
    let body = match accept(&sim, &call, &headers, &body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(messages) = body["messages"].as_array().filter(|m| !m.is_empty()) else {
        return azure_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "'messages' is a required property",
        );
    };
    let refusal = refusal(messages);
    let calls = if refusal.is_some() {
        vec![]
    } else {
        tool_calls(&body, messages)
    };
    let answer = if calls.is_empty() && refusal.is_none() {
        shaped_answer(&body, messages)
    } else {
        String::new()
    };
    let finish = if calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    let arguments: String = calls
        .iter()
        .map(|c| c["function"]["arguments"].as_str().unwrap_or(""))
        .collect();
    let prompt_tokens: u64 = messages
        .iter()
        .map(|m| tokens(m["content"].as_str().unwrap_or("")))
        .sum();
    let completion_tokens =
        tokens(&answer) + tokens(&arguments) + tokens(refusal.as_deref().unwrap_or(""));
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});
    let id = format!("chatcmpl-sim{}", uuid::Uuid::new_v4().simple());
    let created = chrono::Utc::now().timestamp();
    if body["stream"].as_bool() != Some(true) {
        return Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "finish_reason": finish, "content_filter_results": safe_filters(), "message": if let Some(refusal) = &refusal {
                json!({"role": "assistant", "content": null, "refusal": refusal})
            } else if calls.is_empty() {
                json!({"role": "assistant", "content": answer, "refusal": null})
            } else {
                json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": calls})
            }}],
            "usage": usage,
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": safe_filters()}]
        }))
        .into_response();
    }
    let include_usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
    let delay = sim.config().chunk_delay;
    let mut events: Vec<Value> = vec![
        json!({"choices": [], "created": 0, "id": "", "model": "", "object": "",
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": safe_filters()}]}),
    ];
    let chunk = |delta: Value, finish: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "content_filter_results": {}}], "usage": null})
    };
    if let Some(refusal) = &refusal {
        events.push(chunk(
            json!({"role": "assistant", "content": null, "refusal": ""}),
            Value::Null,
        ));
        for piece in split_keep_spaces(refusal) {
            events.push(chunk(json!({ "refusal": piece }), Value::Null));
        }
    } else if calls.is_empty() {
        events.push(chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        ));
    }
    for piece in split_keep_spaces(&answer) {
        events.push(chunk(json!({"content": piece}), Value::Null));
    }
    // Function calls as Azure streams them: the call named with empty arguments, then the
    // arguments in pieces.
    for (index, call) in calls.iter().enumerate() {
        let mut head = json!({"index": index, "id": call["id"], "type": "function",
                              "function": {"name": call["function"]["name"], "arguments": ""}});
        let mut delta = json!({"tool_calls": [head.take()]});
        if index == 0 {
            delta["role"] = json!("assistant");
            delta["content"] = Value::Null;
        }
        events.push(chunk(delta, Value::Null));
        let args: Vec<char> = call["function"]["arguments"]
            .as_str()
            .unwrap_or("")
            .chars()
            .collect();
        for piece in args.chunks(8) {
            let piece: String = piece.iter().collect();
            events.push(chunk(
                json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}),
                Value::Null,
            ));
        }
    }
    events.push(chunk(json!({}), json!(finish)));
    events.push(json!({"choices": [{"index": 0, "finish_reason": null, "content_filter_offsets": {"check_offset": 0, "start_offset": 0, "end_offset": answer.len()}, "content_filter_results": safe_filters()}], "created": 0, "id": "", "model": "", "object": ""}));
    if include_usage {
        events.push(json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": usage}));
    }
    let stream = futures_util::stream::unfold(
        (events.into_iter(), false, true),
        move |(mut it, done, first)| async move {
            if done {
                return None;
            }
            if !first && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            match it.next() {
                Some(event) => Some((
                    Ok::<_, Infallible>(Bytes::from(format!("data: {event}\n\n"))),
                    (it, false, false),
                )),
                None => Some((
                    Ok(Bytes::from_static(b"data: [DONE]\n\n")),
                    (it, true, false),
                )),
            }
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn azure_embeddings(
    State(sim): State<Simulator>,
    Path(deployment): Path<String>,
    Query(q): Query<ApiVersion>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = Call {
        kind: "embeddings",
        deployment: Some(deployment.clone()),
        api_version: q.api_version,
        azure: true,
        route: "deployments",
    };
    embeddings(sim, call, headers, body, deployment).await
}

async fn openai_embeddings(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (call, model) = openai_call("embeddings", &body, "text-embedding-3-small");
    embeddings(sim, call, headers, body, model).await
}

async fn embeddings(
    sim: Simulator,
    call: Call,
    headers: HeaderMap,
    body: Bytes,
    model: String,
) -> Response {
    let body = match accept(&sim, &call, &headers, &body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    // Azure's `input`: a string, strings, one token-id array or several (embedded as the text
    // of their ids).
    let ids = |v: &[Value]| -> Option<String> {
        let ids: Option<Vec<String>> = v
            .iter()
            .map(|t| t.as_u64().map(|n| n.to_string()))
            .collect();
        ids.map(|ids| ids.join(" "))
    };
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_u64) => {
            ids(items).into_iter().collect()
        }
        Value::Array(items) => items
            .iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Array(tokens) => ids(tokens),
                _ => None,
            })
            .collect(),
        _ => {
            return azure_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "'input' is a required property",
            );
        }
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| json!({"object": "embedding", "index": i, "embedding": embed(text)}))
        .collect();
    let total: u64 = inputs.iter().map(|t| tokens(t)).sum();
    Json(json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": total, "total_tokens": total}})).into_response()
}

async fn list_requests(State(sim): State<Simulator>) -> Json<Vec<Recorded>> {
    Json(sim.requests())
}

async fn clear_requests(State(sim): State<Simulator>) -> StatusCode {
    sim.clear();
    StatusCode::NO_CONTENT
}

async fn add_fault(State(sim): State<Simulator>, Json(fault): Json<Fault>) -> StatusCode {
    sim.push_fault(fault);
    StatusCode::NO_CONTENT
}

/// The function calls a request with `tools` gets: none after a tool's answer or with
/// `tool_choice: "none"`; the named one with a forced choice; else every tool whose name or
/// description shares a word with the question (just the first when `parallel_tool_calls` is
/// false), or the first with `"required"`. Arguments are drawn from the question to fit each
/// tool's parameter schema.
fn tool_calls(body: &Value, messages: &[Value]) -> Vec<Value> {
    let Some(tools) = body["tools"].as_array().filter(|t| !t.is_empty()) else {
        return vec![];
    };
    let choice = &body["tool_choice"];
    if choice == "none" || messages.last().is_some_and(|m| m["role"] == "tool") {
        return vec![];
    }
    let question = last_user(messages);
    let asked = words(question);
    let function = |t: &Value| t["function"].clone();
    let mut chosen: Vec<Value> = if let Some(name) = choice["function"]["name"].as_str() {
        tools
            .iter()
            .map(function)
            .filter(|f| f["name"] == name)
            .collect()
    } else {
        tools
            .iter()
            .map(function)
            .filter(|f| {
                let name = f["name"].as_str().unwrap_or("").replace(['_', '-'], " ");
                let about = format!("{name} {}", f["description"].as_str().unwrap_or(""));
                words(&about).intersection(&asked).next().is_some()
            })
            .collect()
    };
    if chosen.is_empty() && choice == "required" {
        chosen.extend(tools.first().map(function));
    }
    if body["parallel_tool_calls"] == false {
        chosen.truncate(1);
    }
    chosen
        .into_iter()
        .take(4)
        .map(|f| {
            let arguments = sample(&f["parameters"], question).to_string();
            json!({"id": format!("call_{}", &uuid::Uuid::new_v4().simple().to_string()[..24]),
                   "type": "function", "function": {"name": f["name"], "arguments": arguments}})
        })
        .collect()
}

fn last_user(messages: &[Value]) -> &str {
    messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
}

/// A value fitting `schema`, drawn from `question`: strings are its last capitalised word
/// (else its last word), numbers its first number (else 1), enums their first value.
fn sample(schema: &Value, question: &str) -> Value {
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
        return first.clone();
    }
    let kind = match &schema["type"] {
        Value::Array(kinds) => kinds
            .iter()
            .find(|k| *k != "null")
            .cloned()
            .unwrap_or(Value::Null),
        other => other.clone(),
    };
    let picked = || {
        let words: Vec<&str> = question
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        words
            .iter()
            .rev()
            .find(|w| w.chars().next().is_some_and(char::is_uppercase))
            .or(words.last())
            .map_or_else(String::new, |w| (*w).to_owned())
    };
    let number = || {
        question
            .split(|c: char| !c.is_ascii_digit())
            .find_map(|n| n.parse::<i64>().ok())
            .unwrap_or(1)
    };
    match kind.as_str() {
        Some("string") => json!(picked()),
        Some("integer" | "number") => json!(number()),
        Some("boolean") => json!(true),
        Some("array") => json!([sample(&schema["items"], question)]),
        _ => {
            let mut out = serde_json::Map::new();
            if let Some(props) = schema["properties"].as_object() {
                for (name, prop) in props {
                    out.insert(name.clone(), sample(prop, question));
                }
            }
            Value::Object(out)
        }
    }
}

/// The answer in the shape asked for: after a tool's output, that output; JSON for
/// `response_format` json_object (`{"answer": …}`) or json_schema (a value fitting it); cut at
/// the first `stop` sequence.
fn shaped_answer(body: &Value, messages: &[Value]) -> String {
    let answer = match messages.last() {
        Some(m) if m["role"] == "tool" => {
            let id = &m["tool_call_id"];
            let name = messages
                .iter()
                .filter_map(|m| m["tool_calls"].as_array())
                .flatten()
                .find(|c| c["id"] == *id)
                .and_then(|c| c["function"]["name"].as_str())
                .unwrap_or("the tool");
            format!(
                "According to {name}: {}",
                m["content"].as_str().unwrap_or("")
            )
        }
        _ => grounded_answer(messages),
    };
    let format = &body["response_format"];
    let answer = match format["type"].as_str() {
        Some("json_object") => json!({ "answer": answer }).to_string(),
        Some("json_schema") => {
            sample(&format["json_schema"]["schema"], last_user(messages)).to_string()
        }
        _ => answer,
    };
    let stops: Vec<&str> = match &body["stop"] {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let cut = stops.iter().filter_map(|s| answer.find(s)).min();
    match cut {
        Some(at) => answer[..at].to_owned(),
        None => answer,
    }
}

/// The model's refusal, for a question with the word "forbidden" in it (the simulator's way
/// to be asked for one).
fn refusal(messages: &[Value]) -> Option<String> {
    words(last_user(messages))
        .contains("forbidden")
        .then(|| "I'm sorry, but I can't help with that request.".to_owned())
}

/// Azure's content-filter verdicts when nothing was filtered.
fn safe_filters() -> Value {
    let safe = json!({"filtered": false, "severity": "safe"});
    json!({"hate": safe, "self_harm": safe, "sexual": safe, "violence": safe})
}

/// A rough token count (≈ 4 characters a token), enough for usage accounting tests.
pub fn tokens(text: &str) -> u64 {
    (text.chars().count() as u64)
        .div_ceil(4)
        .max(u64::from(!text.is_empty()))
}

fn words(text: &str) -> HashSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 3)
        .map(str::to_lowercase)
        .collect()
}

/// Quotes the context sentence that best matches the last user message, or says it has none.
pub fn grounded_answer(messages: &[Value]) -> String {
    let question = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or("");
    let asked = words(question);
    let context: String = messages
        .iter()
        .filter(|m| m["role"] == "system")
        .filter_map(|m| m["content"].as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let mut best: Option<(usize, &str)> = None;
    for sentence in context
        .split(['.', '\n', '!', '?'])
        .map(str::trim)
        .filter(|s| s.len() > 3)
    {
        let score = words(sentence).intersection(&asked).count();
        if score > 0 && best.is_none_or(|(b, _)| score > b) {
            best = Some((score, sentence));
        }
    }
    match best {
        Some((_, sentence)) => format!("According to the knowledge base: {sentence}."),
        None => format!(
            "I could not find that in the knowledge base. You asked: {}",
            question.trim()
        ),
    }
}

fn split_keep_spaces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for ch in text.chars() {
        current.push(ch);
        if ch == ' ' {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// A deterministic bag-of-words vector: texts sharing words point the same way.
pub fn embed(text: &str) -> Vec<f32> {
    let mut v = vec![0f32; EMBEDDING_DIMS];
    for word in words(text) {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in word.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        v[(h % EMBEDDING_DIMS as u64) as usize] += 1.0;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// Serves the simulator on `addr` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sim: Simulator,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, sim.router())
        .with_graceful_shutdown(shutdown)
        .await
}

mod foundry;
#[cfg(test)]
mod tests;
