//! `POST /v1/responses`, `GET /v1/responses/{id}`: OpenAI's Responses API over the one chat
//! service. A request is translated to a chat-completions turn on the tenant's deployment
//! (with its system prompt and knowledge in front); a stored response (`store`, the default)
//! is the answer of one of the tenant's conversations, so `previous_response_id` and
//! `conversation` continue that conversation and another tenant's ids are 404. Streaming
//! answers with the typed events (`response.created` … `response.completed`).

use std::convert::Infallible;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::chat::responses::{ResponseId, incomplete_reason};
use crate::chat::{Answer, Ask, Caller, ChatError, Continue, Overrides, Turn, TurnEvent};
use crate::domain::{Citation, ConversationId, FunctionCall, StoredMessage, ToolCall, Usage};
use crate::error::ApiError;
use crate::http::extract::{ApiJson, ServiceAuth};
use crate::http::openai::{
    Extras, InContent, InFunction, InTool, bad, check_sampling, event_stream, opt_u32,
};
use crate::state::AppState;

#[derive(Deserialize)]
pub struct ResponseRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    input: Option<InInput>,
    #[serde(default)]
    instructions: Option<String>,
    #[serde(default)]
    previous_response_id: Option<String>,
    #[serde(default)]
    conversation: Option<InConversation>,
    #[serde(default)]
    store: Option<bool>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default, deserialize_with = "opt_u32")]
    max_output_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    tools: Option<Vec<InResponseTool>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(default)]
    text: Option<InText>,
    #[serde(default)]
    metadata: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    background: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum InInput {
    Text(String),
    Items(Vec<InItem>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum InConversation {
    Id(String),
    Object { id: String },
}

/// A Responses tool: `{"type": "function", "name", "description", "parameters", "strict"}`.
#[derive(Deserialize)]
struct InResponseTool {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Value>,
    #[serde(default)]
    strict: Option<bool>,
}

#[derive(Deserialize)]
struct InText {
    #[serde(default)]
    format: Option<Value>,
}

/// An input item: a message (the default), a function call, or a function's output.
#[derive(Deserialize)]
struct InItem {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    content: Option<InContent>,
    #[serde(default)]
    call_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
    #[serde(default)]
    output: Option<InContent>,
}

/// The text of an item's content (input and output text parts only).
fn text_of(content: Option<InContent>, at: &str) -> Result<String, ApiError> {
    InContent::text_of(content, at, &["input_text", "output_text", "text"])
}

/// The input as conversation messages: function calls join the assistant message before
/// them, outputs become `tool` messages.
fn to_messages(input: InInput) -> Result<Vec<StoredMessage>, ApiError> {
    let items = match input {
        InInput::Text(text) if text.is_empty() => return Err(bad("input", "must not be empty")),
        InInput::Text(text) => return Ok(vec![StoredMessage::text("user", text)]),
        InInput::Items(items) if items.is_empty() => {
            return Err(bad("input", "must contain at least one item"));
        }
        InInput::Items(items) => items,
    };
    let mut out: Vec<StoredMessage> = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let at = format!("input[{i}]");
        match item.kind.as_deref().unwrap_or("message") {
            "message" => {
                let role = match item.role.as_deref() {
                    Some("user") => "user",
                    Some("assistant") => "assistant",
                    Some("system" | "developer") => "system",
                    Some(other) => {
                        return Err(bad(
                            &format!("{at}.role"),
                            format!("unsupported role '{other}'"),
                        ));
                    }
                    None => return Err(bad(&format!("{at}.role"), "is required")),
                };
                let text = text_of(item.content, &format!("{at}.content"))?;
                out.push(StoredMessage::text(role, text));
            }
            "function_call" => {
                let (Some(call_id), Some(name)) = (
                    item.call_id.filter(|c| !c.is_empty()),
                    item.name.filter(|n| !n.is_empty()),
                ) else {
                    return Err(bad(&at, "a function_call needs call_id and name"));
                };
                let call = ToolCall {
                    id: call_id,
                    kind: "function".into(),
                    function: FunctionCall {
                        name,
                        arguments: item.arguments.unwrap_or_default(),
                    },
                };
                match out.last_mut() {
                    Some(last) if last.role == "assistant" => last.tool_calls.push(call),
                    _ => {
                        let mut message = StoredMessage::text("assistant", String::new());
                        message.tool_calls.push(call);
                        out.push(message);
                    }
                }
            }
            "function_call_output" => {
                let Some(call_id) = item.call_id.filter(|c| !c.is_empty()) else {
                    return Err(bad(&format!("{at}.call_id"), "is required"));
                };
                let Some(output) = item.output else {
                    return Err(bad(&format!("{at}.output"), "is required"));
                };
                let output = text_of(Some(output), &format!("{at}.output"))?;
                let mut message = StoredMessage::text("tool", output);
                message.tool_call_id = Some(call_id);
                out.push(message);
            }
            other => {
                return Err(bad(
                    &format!("{at}.type"),
                    format!("input item type '{other}' is not supported"),
                ));
            }
        }
    }
    Ok(out)
}

/// Responses tools and `text.format` in chat-completions form, checked like chat's.
fn extras(request: &mut ResponseRequest) -> Result<Extras, ApiError> {
    let tools = match request.tools.take() {
        None => None,
        Some(tools) => {
            let mut out = Vec::with_capacity(tools.len());
            for (i, t) in tools.into_iter().enumerate() {
                if t.kind != "function" {
                    return Err(bad(
                        &format!("tools[{i}].type"),
                        format!(
                            "tool type '{}' is not supported; only 'function' tools (the agent searches its own knowledge)",
                            t.kind
                        ),
                    ));
                }
                let Some(name) = t.name else {
                    return Err(bad(&format!("tools[{i}].name"), "is required"));
                };
                out.push(InTool {
                    kind: t.kind,
                    function: Some(InFunction {
                        name,
                        description: t.description,
                        parameters: t.parameters,
                        strict: t.strict,
                    }),
                });
            }
            Some(out)
        }
    };
    // `{"type": "function", "name"}` → `{"type": "function", "function": {"name"}}`.
    let tool_choice = request.tool_choice.take().map(|c| match c {
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            json!({"type": "function", "function": {"name": o.get("name").cloned().unwrap_or(Value::Null)}})
        }
        other => other,
    });
    // `{"type": "json_schema", "name", "schema", "strict"}` → chat's `response_format`.
    let response_format = match request.text.as_ref().and_then(|t| t.format.clone()) {
        None => None,
        Some(Value::Object(mut f))
            if f.get("type").and_then(Value::as_str) == Some("json_schema") =>
        {
            f.remove("type");
            Some(json!({"type": "json_schema", "json_schema": f}))
        }
        Some(other) => Some(other),
    };
    Ok(Extras {
        tools,
        tool_choice,
        parallel_tool_calls: request.parallel_tool_calls,
        response_format,
        seed: None,
        stop: None,
    })
}

/// What a response object repeats of its request.
#[derive(Clone)]
struct Echo {
    instructions: Option<String>,
    previous_response_id: Option<String>,
    conversation: Option<ConversationId>,
    store: bool,
    max_output_tokens: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    tools: Value,
    tool_choice: Value,
    parallel_tool_calls: bool,
    text: Value,
    metadata: Value,
}

impl Echo {
    /// A stored response's echo (what its record kept; the rest at its defaults).
    fn stored(record: &crate::domain::ResponseRecord, conversation: ConversationId) -> Self {
        Self {
            instructions: record.instructions.clone(),
            previous_response_id: record.previous_response_id.clone(),
            conversation: Some(conversation),
            store: true,
            max_output_tokens: None,
            temperature: None,
            top_p: None,
            tools: json!([]),
            tool_choice: json!("auto"),
            parallel_tool_calls: true,
            text: json!({"format": {"type": "text"}}),
            metadata: json!({}),
        }
    }
}

/// A response object.
struct Shape<'a> {
    id: &'a str,
    created_at: i64,
    status: &'a str,
    model: &'a str,
    output: Vec<Value>,
    usage: Option<Usage>,
    incomplete: Option<&'a str>,
    error: Option<Value>,
    echo: &'a Echo,
}

impl Shape<'_> {
    fn json(self) -> Value {
        let e = self.echo;
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "error": self.error,
            "incomplete_details": self.incomplete.map(|r| json!({"reason": r})),
            "instructions": e.instructions,
            "max_output_tokens": e.max_output_tokens,
            "model": self.model,
            "output": self.output,
            "parallel_tool_calls": e.parallel_tool_calls,
            "previous_response_id": e.previous_response_id,
            "conversation": e.conversation.map(|c| json!({"id": c.to_string()})),
            "reasoning": {"effort": null, "summary": null},
            "store": e.store,
            "temperature": e.temperature,
            "text": e.text,
            "tool_choice": e.tool_choice,
            "tools": e.tools,
            "top_p": e.top_p,
            "truncation": "disabled",
            "usage": self.usage.map(usage_json),
            "user": null,
            "metadata": e.metadata,
        })
    }
}

fn usage_json(u: Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.total_tokens,
    })
}

fn message_item_id(reply: uuid::Uuid) -> String {
    format!("msg_{}", reply.simple())
}

fn call_item_id(call_id: &str) -> String {
    format!("fc_{}", call_id.strip_prefix("call_").unwrap_or(call_id))
}

/// Knowledge passages as `file_citation` annotations at the end of the text.
fn annotations(text: &str, citations: &[Citation]) -> Vec<Value> {
    let end = text.chars().count();
    citations
        .iter()
        .map(|c| json!({"type": "file_citation", "file_id": c.document_id, "filename": c.title, "index": end}))
        .collect()
}

fn text_part(text: &str, citations: &[Citation]) -> Value {
    json!({"type": "output_text", "text": text, "annotations": annotations(text, citations), "logprobs": []})
}

fn message_item(id: &str, status: &str, content: Vec<Value>) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
}

fn call_item(call: &ToolCall, status: &str) -> Value {
    json!({"type": "function_call", "id": call_item_id(&call.id), "call_id": call.id,
           "name": call.function.name, "arguments": call.function.arguments, "status": status})
}

/// A text part before its first text.
fn empty_text() -> Value {
    text_part("", &[])
}

fn refusal_part(refusal: &str) -> Value {
    json!({"type": "refusal", "refusal": refusal})
}

/// A finished answer's output items: its message (its text unless it only refused or only
/// called tools, then its refusal), then its calls.
fn output(
    reply: uuid::Uuid,
    content: &str,
    refusal: Option<&str>,
    citations: &[Citation],
    calls: &[ToolCall],
) -> Vec<Value> {
    let mut out = Vec::with_capacity(1 + calls.len());
    if !content.is_empty() || refusal.is_some() || calls.is_empty() {
        let mut parts = Vec::with_capacity(1);
        if !content.is_empty() || refusal.is_none() {
            parts.push(text_part(content, citations));
        }
        parts.extend(refusal.map(refusal_part));
        out.push(message_item(&message_item_id(reply), "completed", parts));
    }
    out.extend(calls.iter().map(|c| call_item(c, "completed")));
    out
}

/// `POST /v1/responses`
pub async fn create_response(
    State(app): State<AppState>,
    ServiceAuth(claims): ServiceAuth,
    ApiJson(mut request): ApiJson<ResponseRequest>,
) -> Result<Response, ApiError> {
    if request.background == Some(true) {
        return Err(bad("background", "background responses are not supported"));
    }
    if request.previous_response_id.is_some() && request.conversation.is_some() {
        return Err(bad(
            "previous_response_id",
            "previous_response_id and conversation cannot both be set",
        ));
    }
    if let Some(m) = &request.metadata
        && (m.len() > 16
            || m.values()
                .any(|v| v.as_str().is_none_or(|s| s.chars().count() > 512)))
    {
        return Err(bad(
            "metadata",
            "at most 16 string values of at most 512 characters",
        ));
    }
    check_sampling(
        request.temperature,
        request.top_p,
        &[("max_output_tokens", request.max_output_tokens)],
    )?;
    let Some(input) = request.input.take() else {
        return Err(bad("input", "is required"));
    };
    let input = to_messages(input)?;
    let text = request
        .text
        .as_ref()
        .and_then(|t| t.format.clone())
        .map_or_else(
            || json!({"format": {"type": "text"}}),
            |f| json!({"format": f}),
        );
    let tools_echo: Value = request
        .tools
        .as_ref()
        .map(|tools| {
            tools
                .iter()
                .map(|t| json!({"type": t.kind, "name": t.name, "description": t.description, "parameters": t.parameters, "strict": t.strict}))
                .collect()
        })
        .unwrap_or_else(|| json!([]));
    let choice_echo = request.tool_choice.clone().unwrap_or_else(|| json!("auto"));
    let extras = extras(&mut request)?
        .check()
        .map_err(|e| rename_field(e, "response_format", "text.format"))
        .map_err(|e| rename_field(e, "tool_choice.function", "tool_choice"))?;
    let from = match (&request.previous_response_id, &request.conversation) {
        (Some(id), _) => Some(Continue::Response(
            ResponseId::parse(id).ok_or(ApiError::NotFound("response"))?,
        )),
        (None, Some(InConversation::Id(id) | InConversation::Object { id })) => {
            Some(Continue::Conversation(
                ConversationId::parse(id).map_err(|_| ApiError::NotFound("conversation"))?,
            ))
        }
        (None, None) => None,
    };
    let store = request.store.unwrap_or(true);
    let caller = Caller::from(claims);
    let ask = Ask::Items {
        input,
        instructions: request.instructions.clone(),
        from,
        store,
        model: request.model,
        overrides: Overrides {
            temperature: request.temperature,
            top_p: request.top_p,
            max_tokens: request.max_output_tokens,
        },
        extras,
    };
    let turn = Turn::prepare(&app, caller, ask).await?;
    let standing = turn.reservation.standing;
    let id = ResponseId {
        conversation: turn.conversation,
        message: turn.reply_id,
    }
    .to_string();
    let echo = Echo {
        instructions: request.instructions,
        previous_response_id: request.previous_response_id,
        conversation: (store && turn.conversation_id().is_some()).then_some(turn.conversation),
        store,
        max_output_tokens: request.max_output_tokens,
        temperature: request.temperature,
        top_p: request.top_p,
        tools: tools_echo,
        tool_choice: choice_echo,
        parallel_tool_calls: request.parallel_tool_calls.unwrap_or(true),
        text,
        metadata: request.metadata.map_or_else(|| json!({}), Value::Object),
    };
    let created_at = chrono::Utc::now().timestamp();
    let reply = turn.reply_id;
    if request.stream != Some(true) {
        let answer = turn.complete(&app).await?;
        let incomplete = incomplete_reason(&answer.finish_reason);
        return Ok(standing.on(Json(
            Shape {
                id: &id,
                created_at,
                status: if incomplete.is_some() {
                    "incomplete"
                } else {
                    "completed"
                },
                model: &answer.model,
                output: output(
                    reply,
                    &answer.content,
                    answer.refusal.as_deref(),
                    &answer.citations,
                    &answer.tool_calls,
                ),
                usage: Some(answer.usage),
                incomplete,
                error: None,
                echo: &echo,
            }
            .json(),
        )
        .into_response()));
    }
    let model = turn.model.clone();
    let events = turn.stream(&app).await?;
    let mut writer = EventWriter {
        id,
        created_at,
        model,
        reply,
        echo,
        sequence: 0,
        message_at: None,
        text_at: None,
        refusal_at: None,
        text: String::new(),
        refusal: String::new(),
        calls: Vec::new(),
        next_index: 0,
    };
    let mut head = writer.event("response.created", |w| json!({"response": w.skeleton()}));
    head.extend_from_slice(&writer.event(
        "response.in_progress",
        |w| json!({"response": w.skeleton()}),
    ));
    let body = futures_util::stream::unfold(Some((events, writer)), |state| async move {
        let (mut rx, mut w) = state?;
        let (bytes, more) = match rx.recv().await {
            Some(TurnEvent::Delta(delta)) => (w.delta(&delta), true),
            Some(TurnEvent::Refusal(delta)) => (w.refusal(&delta), true),
            // The Responses API carries no content-filter verdicts.
            Some(TurnEvent::Filters(_)) => (Vec::new(), true),
            Some(TurnEvent::ToolCall(piece)) => (w.tool_piece(piece), true),
            Some(TurnEvent::Done(answer)) => (w.done(answer), false),
            Some(TurnEvent::Failed(error)) => (w.failed(error), false),
            None => return None,
        };
        Some((
            Ok::<_, Infallible>(Bytes::from(bytes)),
            more.then_some((rx, w)),
        ))
    });
    let body = futures_util::stream::once(async move { Ok::<_, Infallible>(Bytes::from(head)) })
        .chain(body);
    Ok(standing.on(event_stream(Body::from_stream(body))))
}

/// A checked field's error under the name the Responses API gives it.
fn rename_field(error: ApiError, from: &str, to: &str) -> ApiError {
    match error {
        ApiError::Validation { field, detail } if field.starts_with(from) => ApiError::Validation {
            field: field.replacen(from, to, 1),
            detail,
        },
        other => other,
    }
}

/// Writes a streamed response's events, keeping what the closing events repeat.
struct EventWriter {
    id: String,
    created_at: i64,
    model: String,
    reply: uuid::Uuid,
    echo: Echo,
    sequence: u64,
    /// The message item's output index, once its first text or refusal has come.
    message_at: Option<usize>,
    /// The content index of the message's text part and refusal part, once opened.
    text_at: Option<usize>,
    refusal_at: Option<usize>,
    text: String,
    refusal: String,
    /// Calls so far: the upstream's index of each, its output index, the call.
    calls: Vec<(u32, usize, ToolCall)>,
    next_index: usize,
}

impl EventWriter {
    fn event(&mut self, kind: &str, data: impl FnOnce(&Self) -> Value) -> Vec<u8> {
        let mut value = data(self);
        value["type"] = json!(kind);
        value["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        format!("event: {kind}\ndata: {value}\n\n").into_bytes()
    }

    fn skeleton(&self) -> Value {
        Shape {
            id: &self.id,
            created_at: self.created_at,
            status: "in_progress",
            model: &self.model,
            output: vec![],
            usage: None,
            incomplete: None,
            error: None,
            echo: &self.echo,
        }
        .json()
    }

    fn item_id(&self) -> String {
        message_item_id(self.reply)
    }

    /// Opens the message item before its first text or refusal.
    fn open_message(&mut self, out: &mut Vec<u8>) -> usize {
        if let Some(at) = self.message_at {
            return at;
        }
        let at = self.next_index;
        self.next_index += 1;
        self.message_at = Some(at);
        let item = message_item(&self.item_id(), "in_progress", vec![]);
        out.extend(self.event(
            "response.output_item.added",
            |_| json!({"output_index": at, "item": item}),
        ));
        at
    }

    /// Opens a content part of the message (after the parts already open): its content index.
    fn open_part(&mut self, out: &mut Vec<u8>, part: Value) -> usize {
        let at = self.open_message(out);
        let index = usize::from(self.text_at.is_some()) + usize::from(self.refusal_at.is_some());
        let item_id = self.item_id();
        out.extend(self.event("response.content_part.added", |_| {
            json!({"item_id": item_id, "output_index": at, "content_index": index, "part": part})
        }));
        index
    }

    fn delta(&mut self, delta: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let part = match self.text_at {
            Some(part) => part,
            None => {
                let part = self.open_part(&mut out, empty_text());
                self.text_at = Some(part);
                part
            }
        };
        let at = self.open_message(&mut out);
        self.text.push_str(delta);
        let item_id = self.item_id();
        out.extend(self.event("response.output_text.delta", |_| {
            json!({"item_id": item_id, "output_index": at, "content_index": part, "delta": delta, "logprobs": []})
        }));
        out
    }

    fn refusal(&mut self, delta: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let part = match self.refusal_at {
            Some(part) => part,
            None => {
                let part = self.open_part(&mut out, refusal_part(""));
                self.refusal_at = Some(part);
                part
            }
        };
        let at = self.open_message(&mut out);
        self.refusal.push_str(delta);
        let item_id = self.item_id();
        out.extend(self.event("response.refusal.delta", |_| {
            json!({"item_id": item_id, "output_index": at, "content_index": part, "delta": delta})
        }));
        out
    }

    fn tool_piece(&mut self, piece: crate::llm::ToolCallDelta) -> Vec<u8> {
        let mut out = Vec::new();
        let slot = match self
            .calls
            .iter()
            .position(|(index, _, _)| *index == piece.index)
        {
            Some(slot) => slot,
            None => {
                // A new call: its item first, then its arguments.
                let at = self.next_index;
                self.next_index += 1;
                let call = ToolCall {
                    id: piece.id.clone().unwrap_or_default(),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: piece.name.clone().unwrap_or_default(),
                        arguments: String::new(),
                    },
                };
                let item = call_item(&call, "in_progress");
                self.calls.push((piece.index, at, call));
                out.extend(self.event(
                    "response.output_item.added",
                    |_| json!({"output_index": at, "item": item}),
                ));
                if !piece.arguments.is_empty() {
                    out.extend(self.arguments(self.calls.len() - 1, &piece.arguments));
                }
                return out;
            }
        };
        if let Some(name) = &piece.name {
            self.calls[slot].2.function.name.push_str(name);
        }
        if !piece.arguments.is_empty() {
            out.extend(self.arguments(slot, &piece.arguments));
        }
        out
    }

    fn arguments(&mut self, slot: usize, delta: &str) -> Vec<u8> {
        let (_, at, call) = &mut self.calls[slot];
        call.function.arguments.push_str(delta);
        let (at, item_id) = (*at, call_item_id(&call.id));
        self.event(
            "response.function_call_arguments.delta",
            |_| json!({"item_id": item_id, "output_index": at, "delta": delta}),
        )
    }

    fn done(&mut self, answer: Answer) -> Vec<u8> {
        let mut out = Vec::new();
        if self.message_at.is_none() && answer.tool_calls.is_empty() {
            // An empty answer still has its (empty) text.
            self.text_at = Some(self.open_part(&mut out, empty_text()));
        }
        let mut output = Vec::new();
        if let Some(at) = self.message_at {
            let item_id = self.item_id();
            let mut parts: Vec<(usize, Value)> = Vec::with_capacity(2);
            if let Some(index) = self.text_at {
                let text = answer.content.clone();
                out.extend(self.event("response.output_text.done", |_| {
                    json!({"item_id": item_id, "output_index": at, "content_index": index, "text": text, "logprobs": []})
                }));
                parts.push((index, text_part(&answer.content, &answer.citations)));
            }
            if let Some(index) = self.refusal_at {
                let refusal = std::mem::take(&mut self.refusal);
                out.extend(self.event("response.refusal.done", |_| {
                    json!({"item_id": item_id, "output_index": at, "content_index": index, "refusal": refusal})
                }));
                parts.push((index, refusal_part(&refusal)));
            }
            parts.sort_by_key(|(index, _)| *index);
            for (index, part) in &parts {
                out.extend(self.event("response.content_part.done", |_| {
                    json!({"item_id": item_id, "output_index": at, "content_index": index, "part": part})
                }));
            }
            let item = message_item(
                &item_id,
                "completed",
                parts.into_iter().map(|(_, p)| p).collect(),
            );
            output.push(item.clone());
            out.extend(self.event(
                "response.output_item.done",
                |_| json!({"output_index": at, "item": item}),
            ));
        }
        for (_, at, call) in std::mem::take(&mut self.calls) {
            let item_id = call_item_id(&call.id);
            let (arguments, name) = (call.function.arguments.clone(), call.function.name.clone());
            out.extend(self.event("response.function_call_arguments.done", |_| {
                json!({"item_id": item_id, "output_index": at, "name": name, "arguments": arguments})
            }));
            let item = call_item(&call, "completed");
            output.push(item.clone());
            out.extend(self.event(
                "response.output_item.done",
                |_| json!({"output_index": at, "item": item}),
            ));
        }
        let incomplete = incomplete_reason(&answer.finish_reason);
        let response = Shape {
            id: &self.id,
            created_at: self.created_at,
            status: if incomplete.is_some() {
                "incomplete"
            } else {
                "completed"
            },
            model: &answer.model,
            output,
            usage: Some(answer.usage),
            incomplete,
            error: None,
            echo: &self.echo,
        }
        .json();
        let kind = if incomplete.is_some() {
            "response.incomplete"
        } else {
            "response.completed"
        };
        out.extend(self.event(kind, |_| json!({"response": response})));
        out
    }

    fn failed(&mut self, error: ChatError) -> Vec<u8> {
        let error = ApiError::from(error);
        let mut response = self.skeleton();
        response["status"] = json!("failed");
        response["error"] = json!({"code": if error.status().is_server_error() { "server_error" } else { error.code() }, "message": error.to_string()});
        self.event("response.failed", |_| json!({"response": response}))
    }
}

/// `GET /v1/responses/{id}`: one of the caller's stored responses.
pub async fn get_response(
    State(app): State<AppState>,
    ServiceAuth(claims): ServiceAuth,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = ResponseId::parse(&raw).ok_or(ApiError::NotFound("response"))?;
    let caller = Caller::from(claims);
    let message = crate::chat::responses::get(&app, &caller, &id).await?;
    let Some(record) = message.response.as_deref() else {
        return Err(ApiError::NotFound("response"));
    };
    let echo = Echo::stored(record, id.conversation);
    let standing = crate::chat::standing(&app, &caller).await?;
    Ok(standing.on(Json(
        Shape {
            id: &raw,
            created_at: message.at.timestamp(),
            status: &record.status,
            model: &record.model,
            output: output(
                message.id,
                &message.content,
                record.refusal.as_deref(),
                &message.citations,
                &message.tool_calls,
            ),
            usage: Some(record.usage),
            incomplete: record.incomplete_reason.as_deref(),
            error: None,
            echo: &echo,
        }
        .json(),
    )
    .into_response()))
}
