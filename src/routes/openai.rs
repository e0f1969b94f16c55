//! `POST /v1/chat/completions`: OpenAI-compatible, so the official OpenAI SDKs work with
//! `base_url` = SOPHIA and `api_key` = a service token. The tenant's deployment answers
//! whatever `model` says (unless the instance lists `allowedModels`); the instance's system
//! prompt and knowledge go in front of the caller's messages. Errors use OpenAI's shape.

use std::convert::Infallible;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::chat::{self, Caller, Usage};
use crate::error::{ApiError, PROBLEM_JSON};
use crate::extract::{ApiJson, ServiceAuth};
use crate::llm::{StreamPart, WireMessage};
use crate::state::AppState;

#[derive(Deserialize)]
pub struct CompletionRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<InMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<InStreamOptions>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    n: Option<u32>,
}

#[derive(Deserialize)]
struct InStreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
struct InMessage {
    role: String,
    #[serde(default)]
    content: Option<InContent>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum InContent {
    Text(String),
    Parts(Vec<InPart>),
}

#[derive(Deserialize)]
struct InPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::validation(param, message)
}

fn to_wire(messages: Vec<InMessage>) -> Result<Vec<WireMessage>, ApiError> {
    if messages.is_empty() {
        return Err(bad("messages", "must contain at least one message"));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(bad(
                        &format!("messages[{i}].role"),
                        format!("unsupported role '{other}'"),
                    ));
                }
            };
            let content = match m.content {
                None => String::new(),
                Some(InContent::Text(t)) => t,
                Some(InContent::Parts(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        if p.kind != "text" {
                            return Err(bad(
                                &format!("messages[{i}].content"),
                                format!("content part type '{}' is not supported", p.kind),
                            ));
                        }
                        text.push_str(p.text.as_deref().unwrap_or(""));
                    }
                    text
                }
            };
            Ok(WireMessage {
                role: role.into(),
                content,
            })
        })
        .collect()
}

/// `POST /v1/chat/completions`
pub async fn chat_completions(
    State(app): State<AppState>,
    ServiceAuth(claims): ServiceAuth,
    ApiJson(request): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    if request.n.is_some_and(|n| n != 1) {
        return Err(bad("n", "only n = 1 is supported"));
    }
    let caller = Caller {
        tenant: claims.company_id,
        instance: claims.sub,
    };
    let runtime = chat::runtime(&app, &caller).await?;
    let endpoint = chat::endpoint(&runtime)?;
    if let Some(model) = &request.model
        && !runtime.allowed_models.is_empty()
        && !runtime.allowed_models.contains(model)
    {
        return Err(bad(
            "model",
            format!(
                "model '{model}' is not enabled for this agent; use one of {:?}",
                runtime.allowed_models
            ),
        ));
    }
    let client_messages = to_wire(request.messages)?;
    let question = client_messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| m.content.clone())
        .unwrap_or_default();
    let citations = if question.is_empty() {
        Vec::new()
    } else {
        crate::knowledge::retrieve(&app, &runtime, &caller.tenant, &question).await?
    };
    let mut messages: Vec<WireMessage> = chat::system_message(&runtime, &citations)
        .into_iter()
        .collect();
    messages.extend(client_messages);
    let mut params = runtime.params;
    params.temperature = request.temperature.or(params.temperature);
    params.top_p = request.top_p.or(params.top_p);
    params.max_tokens = request
        .max_completion_tokens
        .or(request.max_tokens)
        .or(params.max_tokens);
    let model_name = request
        .model
        .clone()
        .unwrap_or_else(|| runtime.model_name());
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = chrono::Utc::now().timestamp();
    let prompt_estimate: u64 = messages
        .iter()
        .map(|m| (m.content.chars().count() as u64).div_ceil(4))
        .sum();
    let estimate = move |answer: &str, reported: Option<crate::llm::WireUsage>| -> Usage {
        match reported {
            Some(u) if u.prompt_tokens + u.completion_tokens > 0 => u.into(),
            _ => {
                let p = prompt_estimate;
                let c = (answer.chars().count() as u64).div_ceil(4);
                Usage {
                    prompt_tokens: p,
                    completion_tokens: c,
                    total_tokens: p + c,
                }
            }
        }
    };

    if !request.stream {
        let completion = app.models.complete(&endpoint, &messages, params).await?;
        let usage = estimate(&completion.content, Some(completion.usage));
        chat::record_usage(&app, &caller.tenant, usage).await;
        return Ok(Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.content},
                         "finish_reason": completion.finish_reason.unwrap_or_else(|| "stop".into()), "logprobs": null}],
            "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens, "total_tokens": usage.total_tokens},
            "system_fingerprint": null,
        }))
        .into_response());
    }

    let include_usage = request.stream_options.is_some_and(|o| o.include_usage);
    let mut upstream = app.models.stream(&endpoint, &messages, params).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let task_app = app.clone();
    let tenant = caller.tenant.clone();
    tokio::spawn(async move {
        let chunk = |delta: Value, finish: Value| {
            let v = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model_name,
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]});
            Bytes::from(format!("data: {v}\n\n"))
        };
        let mut client_gone = tx
            .send(chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            ))
            .await
            .is_err();
        let (mut answer, mut usage, mut finish, mut failure) = (String::new(), None, None, None);
        while let Some(part) = upstream.next().await {
            match part {
                Ok(StreamPart::Delta(d)) => {
                    if !client_gone
                        && tx
                            .send(chunk(json!({"content": d}), Value::Null))
                            .await
                            .is_err()
                    {
                        client_gone = true;
                    }
                    answer.push_str(&d);
                }
                Ok(StreamPart::Usage(u)) => usage = Some(u),
                Ok(StreamPart::Finish(f)) => finish = Some(f),
                Ok(StreamPart::Model(_)) => {}
                Err(e) => {
                    failure = Some(ApiError::from(e));
                    break;
                }
            }
        }
        let usage = estimate(&answer, usage);
        chat::record_usage(&task_app, &tenant, usage).await;
        if client_gone {
            return;
        }
        if let Some(err) = failure {
            let body = json!({"error": {"message": err.to_string(), "type": error_type(err.status()), "param": null, "code": err.code()}});
            let _ = tx.send(Bytes::from(format!("data: {body}\n\n"))).await;
            return;
        }
        let _ = tx
            .send(chunk(
                json!({}),
                json!(finish.unwrap_or_else(|| "stop".into())),
            ))
            .await;
        if include_usage {
            let v = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model_name, "choices": [],
                           "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens, "total_tokens": usage.total_tokens}});
            let _ = tx.send(Bytes::from(format!("data: {v}\n\n"))).await;
        }
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let mut response = Response::new(Body::from_stream(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// OpenAI's error `type` for a status.
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 404 | 409 | 413 | 415 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        _ => "api_error",
    }
}

/// Middleware for `/v1/*`: problem+json errors become OpenAI-shaped
/// `{"error": {"message", "type", "param", "code"}}` (status and headers kept).
pub async fn openai_errors(response: Response) -> Response {
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == PROBLEM_JSON.as_bytes());
    if !is_problem {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let problem: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let body = json!({"error": {
        "message": problem["detail"].as_str().unwrap_or("error"),
        "type": error_type(parts.status),
        "param": problem.get("field").cloned().unwrap_or(Value::Null),
        "code": problem["code"],
    }});
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body.to_string()))
}
