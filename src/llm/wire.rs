//! OpenAI / Azure OpenAI chat-completions wire types, lenient where Azure differs: chunks
//! with no `choices` (prompt filter results, the final usage chunk), choices with no `delta`
//! (asynchronous content-filter annotations), `null` everywhere.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::domain::{FunctionCall, ToolCall};

/// A chat message as sent upstream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireMessage {
    pub role: String,
    pub content: String,
    /// An assistant message's function calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl WireMessage {
    /// A plain text message.
    pub fn text(role: &str, content: String) -> Self {
        Self {
            role: role.into(),
            content,
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// What a `/v1` caller may add to a turn beyond sampling, passed upstream as given (the
/// routes check their shape first): tools, structured output, determinism, stop sequences.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatExtras {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<Value>,
}

/// Generation settings.
#[derive(Debug, Clone, Default)]
pub struct ChatParams {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u32>,
    /// Tools, structured output, seed, stop (a `/v1` caller's; none for `/chat`).
    pub extras: Option<Arc<ChatExtras>>,
    /// A Foundry agent's turn: the Foundry conversation it continues.
    pub conversation: Option<Arc<str>>,
}

/// A whole answer.
#[derive(Debug, Clone)]
pub struct Completion {
    pub content: String,
    pub model: String,
    pub usage: WireUsage,
    pub finish_reason: Option<String>,
    /// The function calls the model asked for.
    pub tool_calls: Vec<ToolCall>,
    pub refusal: Option<String>,
    /// Azure's content-filter results (whole answers; `None` when it sent none).
    pub filters: Option<Box<ContentFilters>>,
    /// What a Foundry agent's file search cited (its `file_citation` annotations).
    pub citations: Vec<crate::domain::Citation>,
}

/// Token counts, as OpenAI reports them.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireUsage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
}

impl From<WireUsage> for crate::domain::Usage {
    fn from(u: WireUsage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: if u.total_tokens > 0 {
                u.total_tokens
            } else {
                u.prompt_tokens + u.completion_tokens
            },
        }
    }
}

/// `POST …/chat/completions` body.
#[derive(Debug, Clone, Serialize)]
pub struct WireRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<&'a str>,
    pub messages: &'a [WireMessage],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Nothing when `None`.
    #[serde(flatten)]
    pub extras: Option<&'a ChatExtras>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct StreamOptions {
    pub include_usage: bool,
}

/// A non-streaming answer.
#[derive(Debug, Clone, Deserialize)]
pub struct WireResponse {
    #[serde(default)]
    pub model: Option<String>,
    /// Azure's content-filter verdicts on the prompt, passed through.
    #[serde(default)]
    pub prompt_filter_results: Option<Value>,
    #[serde(default)]
    pub choices: Vec<WireChoice>,
    #[serde(default)]
    pub usage: Option<WireUsage>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WireChoice {
    #[serde(default)]
    pub message: Option<WireAnswerMessage>,
    /// Azure's content-filter verdicts on the answer, passed through.
    #[serde(default)]
    pub content_filter_results: Option<Value>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WireAnswerMessage {
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// The model's refusal (structured outputs), passed through.
    #[serde(default)]
    pub refusal: Option<String>,
}

/// One streamed chunk.
#[derive(Debug, Clone, Deserialize)]
pub struct WireChunk {
    #[serde(default)]
    pub model: Option<String>,
    /// Azure's verdicts on the prompt (the stream's first chunk).
    #[serde(default)]
    pub prompt_filter_results: Option<Value>,
    #[serde(default)]
    pub choices: Vec<WireChunkChoice>,
    #[serde(default)]
    pub usage: Option<WireUsage>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WireChunkChoice {
    #[serde(default)]
    pub delta: Option<WireDelta>,
    /// Azure's verdicts on the answer so far (empty on most chunks).
    #[serde(default)]
    pub content_filter_results: Option<Value>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WireDelta {
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub tool_calls: Option<Vec<WireToolCallDelta>>,
    #[serde(default)]
    pub refusal: Option<String>,
}

/// Azure OpenAI's content-filter verdicts of a whole answer, as it reported them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContentFilters {
    pub prompt: Option<Value>,
    pub completion: Option<Value>,
}

/// A piece of a streamed function call: the first names it, the rest add arguments.
#[derive(Debug, Clone, Deserialize)]
pub struct WireToolCallDelta {
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub function: Option<WireFunctionDelta>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WireFunctionDelta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub arguments: Option<String>,
}

/// A piece of a streamed function call, as SOPHIA hands it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCallDelta {
    /// Which call of the answer (0-based).
    pub index: u32,
    /// Set on a call's first piece.
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: String,
}

impl ToolCallDelta {
    /// Adds this piece to the calls assembled so far.
    pub fn merge_into(&self, calls: &mut Vec<ToolCall>) {
        let index = self.index as usize;
        while calls.len() <= index {
            calls.push(ToolCall {
                id: String::new(),
                kind: "function".into(),
                function: FunctionCall {
                    name: String::new(),
                    arguments: String::new(),
                },
            });
        }
        let call = &mut calls[index];
        if let Some(id) = &self.id {
            call.id.clone_from(id);
        }
        if let Some(name) = &self.name {
            call.function.name.push_str(name);
        }
        call.function.arguments.push_str(&self.arguments);
    }
}

/// What a chunk means for us.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamPart {
    Delta(String),
    /// A piece of the model's refusal.
    Refusal(String),
    ToolCall(ToolCallDelta),
    /// Azure's content-filter verdicts, as a chunk carried them (never empty ones).
    Filters(Box<ContentFilters>),
    Finish(String),
    Usage(WireUsage),
    Model(String),
    /// What a Foundry agent's file search cited, known when the answer is complete.
    Citations(Vec<crate::domain::Citation>),
}

impl WireChunk {
    /// The parts of this chunk, in order; filter verdicts that say nothing give none.
    pub fn parts(self) -> Vec<StreamPart> {
        let mut out = Vec::new();
        if let Some(model) = self.model.filter(|m| !m.is_empty()) {
            out.push(StreamPart::Model(model));
        }
        let prompt_verdicts = |v: &Value| {
            v.as_array().is_some_and(|a| {
                a.iter()
                    .any(|p| says_something(&p["content_filter_results"]))
            })
        };
        if let Some(prompt) = self.prompt_filter_results.filter(prompt_verdicts) {
            out.push(StreamPart::Filters(Box::new(ContentFilters {
                prompt: Some(prompt),
                completion: None,
            })));
        }
        for choice in self.choices {
            let delta = choice.delta.as_ref();
            if let Some(content) = delta
                .and_then(|d| d.content.as_deref())
                .filter(|c| !c.is_empty())
            {
                out.push(StreamPart::Delta(content.to_owned()));
            }
            if let Some(refusal) = delta
                .and_then(|d| d.refusal.as_deref())
                .filter(|r| !r.is_empty())
            {
                out.push(StreamPart::Refusal(refusal.to_owned()));
            }
            let calls = delta.and_then(|d| d.tool_calls.as_ref());
            for call in calls.into_iter().flatten() {
                let function = call.function.as_ref();
                out.push(StreamPart::ToolCall(ToolCallDelta {
                    index: call.index,
                    id: call.id.clone(),
                    name: function.and_then(|f| f.name.clone()),
                    arguments: function
                        .and_then(|f| f.arguments.clone())
                        .unwrap_or_default(),
                }));
            }
            if let Some(completion) = choice.content_filter_results.filter(says_something) {
                out.push(StreamPart::Filters(Box::new(ContentFilters {
                    prompt: None,
                    completion: Some(completion),
                })));
            }
            if let Some(reason) = choice.finish_reason {
                out.push(StreamPart::Finish(reason));
            }
        }
        if let Some(usage) = self.usage {
            out.push(StreamPart::Usage(usage));
        }
        out
    }
}

/// Whether filter verdicts say anything (Azure sends `{}` or `[]` on most chunks).
fn says_something(v: &Value) -> bool {
    match v {
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Null => false,
        _ => true,
    }
}

/// An upstream error body (`{"error": {"code", "message"}}`), for diagnostics only.
#[derive(Debug, Clone, Deserialize)]
pub struct WireErrorBody {
    pub error: Option<WireErrorDetail>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WireErrorDetail {
    #[serde(default)]
    pub code: Option<serde_json::Value>,
    #[serde(default)]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::sse::SseParser;

    /// A stream as Azure OpenAI sends it (gpt-4o, 2024-10-21, `include_usage`): prompt filter
    /// results first with no choices, a role chunk, content chunks with filter results, an
    /// asynchronous content-filter annotation with no delta, the finish chunk, the usage chunk
    /// with empty choices, `[DONE]`.
    #[test]
    fn a_streamed_refusal_is_its_own_part() {
        let chunk: WireChunk = serde_json::from_str(
            r#"{"choices":[{"index":0,"delta":{"content":null,"refusal":"I can't"},"content_filter_results":{}}]}"#,
        )
        .unwrap();
        assert_eq!(chunk.parts(), vec![StreamPart::Refusal("I can't".into())]);
    }

    pub const AZURE_STREAM: &str = include_str!("../../tests/fixtures/azure-chat-stream.txt");

    #[test]
    fn the_recorded_azure_stream_parses_at_every_split() {
        let bytes = AZURE_STREAM.as_bytes();
        for chunk in [1, 2, 3, 7, 64, bytes.len()] {
            let mut parser = SseParser::new();
            let mut parts = Vec::new();
            let mut done = false;
            for piece in bytes.chunks(chunk) {
                for event in parser.push(piece).unwrap() {
                    if event.data == "[DONE]" {
                        done = true;
                        continue;
                    }
                    let chunk: WireChunk = serde_json::from_str(&event.data).unwrap();
                    parts.extend(chunk.parts());
                }
            }
            assert!(done);
            let text: String = parts
                .iter()
                .filter_map(|p| {
                    if let StreamPart::Delta(d) = p {
                        Some(d.as_str())
                    } else {
                        None
                    }
                })
                .collect();
            assert_eq!(text, "Hello! How can I help you today?");
            assert!(parts.contains(&StreamPart::Finish("stop".into())));
            assert!(parts.contains(&StreamPart::Usage(WireUsage {
                prompt_tokens: 19,
                completion_tokens: 9,
                total_tokens: 28
            })));
            assert!(parts.contains(&StreamPart::Model("gpt-4o-2024-08-06".into())));
            // The prompt's verdicts, then the verdicts on each content chunk and the
            // asynchronous filter's; the empty ones (`{}`) give nothing.
            let filters: Vec<&ContentFilters> = parts
                .iter()
                .filter_map(|p| match p {
                    StreamPart::Filters(f) => Some(&**f),
                    _ => None,
                })
                .collect();
            assert_eq!(filters.len(), 5);
            assert_eq!(
                filters[0].prompt.as_ref().unwrap()[0]["content_filter_results"]["jailbreak"]["detected"],
                false
            );
            assert!(filters[1..].iter().all(|f| f.prompt.is_none()
                && f.completion.as_ref().unwrap()["hate"]["severity"] == "safe"));
        }
    }
}
