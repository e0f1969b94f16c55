//! `POST /v1/chat/completions`, `GET /v1/models`, `POST /v1/embeddings`: OpenAI-compatible,
//! so the official OpenAI SDKs work with `base_url` = SOPHIA and `api_key` = a service token. The tenant's deployment answers
//! whatever `model` says (unless the instance lists `allowedModels`); the instance's system
//! prompt and knowledge go in front of the caller's messages. Errors use OpenAI's shape.

use std::convert::Infallible;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use futures_util::StreamExt;

use crate::chat::{Ask, Caller, Overrides, Turn, TurnEvent};
use crate::domain::Usage;
use crate::error::{ApiError, PROBLEM_JSON};
use crate::http::extract::{ApiJson, ServiceAuth};
use crate::http::openai::{
    Extras, InContent, InTool, TokenId, bad, check_sampling, event_stream, opt_i64, opt_u32,
};
use crate::llm::wire::ContentFilters;
use crate::llm::{ToolCall, WireMessage};
use crate::state::AppState;

#[derive(Deserialize)]
pub struct CompletionRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<InMessage>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<InStreamOptions>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default, deserialize_with = "opt_u32")]
    max_tokens: Option<u32>,
    #[serde(default, deserialize_with = "opt_u32")]
    max_completion_tokens: Option<u32>,
    #[serde(default, deserialize_with = "opt_u32")]
    n: Option<u32>,
    #[serde(default)]
    tools: Option<Vec<InTool>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default, deserialize_with = "opt_i64")]
    seed: Option<i64>,
    #[serde(default)]
    stop: Option<Value>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default, deserialize_with = "opt_u32")]
    top_logprobs: Option<u32>,
    /// The deprecated `functions` API (before `tools`).
    #[serde(default)]
    functions: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct InStreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct InMessage {
    role: String,
    #[serde(default)]
    content: Option<InContent>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCall>>,
    #[serde(default)]
    tool_call_id: Option<String>,
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
                "tool" => "tool",
                other => {
                    return Err(bad(
                        &format!("messages[{i}].role"),
                        format!("unsupported role '{other}'"),
                    ));
                }
            };
            let content =
                InContent::text_of(m.content, &format!("messages[{i}].content"), &["text"])?;
            let tool_calls = m.tool_calls.unwrap_or_default();
            if let Some(j) = tool_calls.iter().position(|c| c.kind != "function") {
                return Err(bad(
                    &format!("messages[{i}].tool_calls[{j}].type"),
                    "must be 'function'",
                ));
            }
            if !tool_calls.is_empty() && role != "assistant" {
                return Err(bad(
                    &format!("messages[{i}].tool_calls"),
                    "only assistant messages carry tool calls",
                ));
            }
            if role == "tool" && m.tool_call_id.as_deref().is_none_or(str::is_empty) {
                return Err(bad(
                    &format!("messages[{i}].tool_call_id"),
                    "is required on a tool message",
                ));
            }
            Ok(WireMessage {
                role: role.into(),
                content,
                tool_calls,
                tool_call_id: m.tool_call_id.filter(|_| role == "tool"),
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
    if request.logprobs == Some(true) || request.top_logprobs.is_some_and(|n| n > 0) {
        return Err(bad(
            "logprobs",
            "logprobs are not supported by this gateway",
        ));
    }
    check_sampling(
        request.temperature,
        request.top_p,
        &[
            ("max_tokens", request.max_tokens),
            ("max_completion_tokens", request.max_completion_tokens),
        ],
    )?;
    if request.seed.is_some_and(|s| s.unsigned_abs() > 1 << 53) {
        return Err(bad("seed", "must be within ±2^53"));
    }
    if request.functions.is_some() {
        return Err(bad(
            "functions",
            "the deprecated 'functions' API is not supported; use 'tools'",
        ));
    }
    let extras = Extras {
        tools: request.tools,
        tool_choice: request.tool_choice,
        parallel_tool_calls: request.parallel_tool_calls,
        response_format: request.response_format,
        seed: request.seed,
        stop: request.stop,
    }
    .check()?;
    let caller = Caller::from(claims);
    let ask = Ask::Messages {
        messages: to_wire(request.messages)?,
        model: request.model,
        overrides: Overrides {
            temperature: request.temperature,
            top_p: request.top_p,
            max_tokens: request.max_completion_tokens.or(request.max_tokens),
        },
        extras,
    };
    let turn = Turn::prepare(&app, caller, ask).await?;
    let standing = turn.reservation.standing;
    let head = ChunkHead {
        id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        created: chrono::Utc::now().timestamp(),
        model: turn.model.clone(),
    };
    if request.stream != Some(true) {
        let answer = turn.complete(&app).await?;
        return Ok(standing.on(Json(Completion {
            id: &head.id,
            object: "chat.completion",
            created: head.created,
            model: &head.model,
            choices: [Choice {
                index: 0,
                message: AnswerMessage {
                    role: "assistant",
                    content: (!answer.content.is_empty()
                        || answer.tool_calls.is_empty() && answer.refusal.is_none())
                    .then_some(answer.content.as_str()),
                    tool_calls: &answer.tool_calls,
                    refusal: answer.refusal.as_deref(),
                },
                finish_reason: &answer.finish_reason,
                logprobs: None,
                content_filter_results: answer.filters.as_ref().and_then(|f| f.completion.as_ref()),
            }],
            usage: OpenAiUsage::from(answer.usage),
            system_fingerprint: None,
            prompt_filter_results: answer.filters.as_ref().and_then(|f| f.prompt.as_ref()),
        })
        .into_response()));
    }

    let include_usage = request
        .stream_options
        .is_some_and(|o| o.include_usage == Some(true));
    let events = turn.stream(&app).await?;
    let first = head.chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
        None,
    );
    // The stream ends after [DONE] (or an error): `None` state stops it. Azure's verdicts on
    // the answer go on the next chunk sent (a chunk's verdicts come before its own pieces).
    let chunks = futures_util::stream::unfold(Some((events, None)), move |state| {
        let head = head.clone();
        async move {
            let (mut rx, mut verdicts) = state?;
            let (bytes, more) = loop {
                break match rx.recv().await {
                    Some(TurnEvent::Delta(content)) => (
                        head.chunk(json!({ "content": content }), Value::Null, verdicts.take()),
                        true,
                    ),
                    Some(TurnEvent::Refusal(refusal)) => (
                        head.chunk(json!({ "refusal": refusal }), Value::Null, verdicts.take()),
                        true,
                    ),
                    Some(TurnEvent::Filters(filters)) => {
                        let ContentFilters { prompt, completion } = *filters;
                        if completion.is_some() {
                            verdicts = completion;
                        }
                        match prompt {
                            Some(prompt) => (head.prompt_chunk(prompt), true),
                            None => continue,
                        }
                    }
                    Some(TurnEvent::ToolCall(piece)) => {
                        let mut call = json!({"index": piece.index, "function": {"arguments": piece.arguments}});
                        if let Some(id) = piece.id {
                            call["id"] = json!(id);
                            call["type"] = json!("function");
                        }
                        if let Some(name) = piece.name {
                            call["function"]["name"] = json!(name);
                        }
                        (
                            head.chunk(
                                json!({ "tool_calls": [call] }),
                                Value::Null,
                                verdicts.take(),
                            ),
                            true,
                        )
                    }
                    Some(TurnEvent::Done(answer)) => {
                        let mut out = head
                            .chunk(json!({}), json!(answer.finish_reason), verdicts.take())
                            .to_vec();
                        if include_usage {
                            let v = json!({"id": head.id, "object": "chat.completion.chunk", "created": head.created,
                                           "model": head.model, "choices": [], "usage": usage_json(answer.usage)});
                            out.extend_from_slice(format!("data: {v}\n\n").as_bytes());
                        }
                        out.extend_from_slice(b"data: [DONE]\n\n");
                        (Bytes::from(out), false)
                    }
                    Some(TurnEvent::Failed(error)) => {
                        let err = ApiError::from(error);
                        let body = json!({"error": {"message": err.to_string(), "type": error_type(err.status()), "param": null, "code": err.code()}});
                        (Bytes::from(format!("data: {body}\n\n")), false)
                    }
                    None => return None,
                };
            };
            Some((Ok::<_, Infallible>(bytes), more.then_some((rx, verdicts))))
        }
    });
    let body = futures_util::stream::once(async move { Ok::<_, Infallible>(first) }).chain(chunks);
    Ok(standing.on(event_stream(Body::from_stream(body))))
}

/// `GET /v1/models`: the models the caller's instance answers with (its allowed models, or
/// its chat model, and its embedding deployment).
pub async fn list_models(
    State(app): State<AppState>,
    ServiceAuth(claims): ServiceAuth,
) -> Result<Response, ApiError> {
    let caller = Caller::from(claims);
    let (models, standing) = crate::chat::embeddings::models(&app, &caller).await?;
    let data: Vec<Value> = models
        .into_iter()
        .map(|m| json!({"id": m.id, "object": "model", "created": m.created, "owned_by": caller.tenant.as_str()}))
        .collect();
    Ok(standing.on(Json(json!({"object": "list", "data": data})).into_response()))
}

/// `GET /v1/models/{model}`: one of the models the caller's instance answers with.
pub async fn get_model(
    State(app): State<AppState>,
    ServiceAuth(claims): ServiceAuth,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let caller = Caller::from(claims);
    let (models, standing) = crate::chat::embeddings::models(&app, &caller).await?;
    let model = models
        .into_iter()
        .find(|m| m.id == id)
        .ok_or(ApiError::NotFound("model"))?;
    Ok(standing.on(Json(json!({"id": model.id, "object": "model", "created": model.created, "owned_by": caller.tenant.as_str()})).into_response()))
}

#[derive(Deserialize)]
pub struct EmbeddingRequest {
    input: EmbeddingInput,
    /// Named by SDKs; the instance's embedding deployment answers whatever it says.
    #[serde(default)]
    #[allow(dead_code)]
    model: Option<String>,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default, deserialize_with = "opt_u32")]
    dimensions: Option<u32>,
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
    /// Token ids, one list or several (LangChain's `OpenAIEmbeddings` sends these by default).
    TokenList(Vec<TokenId>),
    TokenLists(Vec<Vec<TokenId>>),
    Other(serde::de::IgnoredAny),
}

/// `POST /v1/embeddings`: the tenant's embedding deployment; usage recorded like a turn's.
pub async fn embeddings(
    State(app): State<AppState>,
    ServiceAuth(claims): ServiceAuth,
    ApiJson(request): ApiJson<EmbeddingRequest>,
) -> Result<Response, ApiError> {
    let max = crate::chat::embeddings::MAX_INPUTS;
    let (texts, tokens) = match request.input {
        EmbeddingInput::One(text) => (vec![text], vec![]),
        EmbeddingInput::Many(texts) => (texts, vec![]),
        EmbeddingInput::TokenList(ids) => (vec![], vec![ids.into_iter().map(|t| t.0).collect()]),
        EmbeddingInput::TokenLists(lists) => (
            vec![],
            lists
                .into_iter()
                .map(|l| l.into_iter().map(|t| t.0).collect())
                .collect(),
        ),
        EmbeddingInput::Other(_) => {
            return Err(bad(
                "input",
                "must be a string, an array of strings, or an array of token-id arrays",
            ));
        }
    };
    let input = if tokens.is_empty() {
        crate::llm::EmbedInput::Texts(&texts)
    } else {
        crate::llm::EmbedInput::Tokens(&tokens)
    };
    if input.is_empty() {
        return Err(bad("input", "must contain at least one input"));
    }
    if input.len() > max {
        return Err(bad("input", format!("at most {max} inputs per request")));
    }
    let empty = texts
        .iter()
        .position(String::is_empty)
        .or_else(|| tokens.iter().position(Vec::is_empty));
    if let Some(i) = empty {
        return Err(bad(&format!("input[{i}]"), "must not be empty"));
    }
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => return Err(bad("encoding_format", "must be float or base64")),
    };
    if request.dimensions == Some(0) {
        return Err(bad("dimensions", "must be at least 1"));
    }
    let caller = Caller::from(claims);
    let answer = crate::chat::embeddings::embed(&app, &caller, input, request.dimensions).await?;
    let data: Vec<Value> = answer
        .vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                // OpenAI's base64 form: the little-endian f32 bytes.
                use base64::Engine;
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(answer.standing.on(
        Json(json!({
            "object": "list",
            "data": data,
            "model": answer.model,
            "usage": {"prompt_tokens": answer.usage.prompt_tokens, "total_tokens": answer.usage.total_tokens},
        }))
        .into_response(),
    ))
}

/// A `chat.completion` object (serialised straight from the answer, no JSON tree).
#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    usage: OpenAiUsage,
    system_fingerprint: Option<&'static str>,
    /// Azure's verdicts on the prompt, when it sent them.
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_filter_results: Option<&'a Value>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: AnswerMessage<'a>,
    finish_reason: &'a str,
    logprobs: Option<()>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_filter_results: Option<&'a Value>,
}

#[derive(Serialize)]
struct AnswerMessage<'a> {
    role: &'static str,
    /// `null` when the model only called tools or refused.
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "<[ToolCall]>::is_empty")]
    tool_calls: &'a [ToolCall],
    refusal: Option<&'a str>,
}

/// Token counts in OpenAI's (snake_case) shape.
#[derive(Serialize)]
struct OpenAiUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

impl From<Usage> for OpenAiUsage {
    fn from(u: Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens,
        }
    }
}

/// What every chunk of one completion repeats.
#[derive(Clone)]
struct ChunkHead {
    id: String,
    created: i64,
    model: String,
}

impl ChunkHead {
    /// A chunk of the answer, with Azure's verdicts on it when there are some.
    fn chunk(&self, delta: Value, finish: Value, verdicts: Option<Value>) -> Bytes {
        let mut choice =
            json!({"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null});
        if let Some(v) = verdicts {
            choice["content_filter_results"] = v;
        }
        let v = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                       "choices": [choice]});
        Bytes::from(format!("data: {v}\n\n"))
    }

    /// Azure's verdicts on the prompt, in a chunk of their own (as Azure sends them).
    fn prompt_chunk(&self, verdicts: Value) -> Bytes {
        let v = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                       "choices": [], "prompt_filter_results": verdicts});
        Bytes::from(format!("data: {v}\n\n"))
    }
}

fn usage_json(u: Usage) -> Value {
    json!(OpenAiUsage::from(u))
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
    let kind = match problem["code"].as_str() {
        Some("quota_exceeded") => "insufficient_quota",
        _ => error_type(parts.status),
    };
    let body = json!({"error": {
        "message": problem["detail"].as_str().unwrap_or("error"),
        "type": kind,
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
