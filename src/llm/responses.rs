//! The upstream Responses API (Azure OpenAI v1: `POST {endpoint}/openai/v1/responses`): a
//! turn's chat messages and extras as a Responses request (`store: false` — SOPHIA keeps the
//! conversation, so every call carries its history), and its answer or typed events back as
//! the parts a chat completion gives.

use serde_json::{Map, Value, json};

use super::wire::{ChatParams, Completion, StreamPart, ToolCallDelta, WireMessage, WireUsage};
use crate::domain::{Citation, FunctionCall, ToolCall};

/// The request body for `messages` (system messages become `instructions`).
pub fn request(
    deployment: &str,
    messages: &[WireMessage],
    params: &ChatParams,
    stream: bool,
) -> Value {
    let mut instructions = String::new();
    let mut input: Vec<Value> = Vec::with_capacity(messages.len());
    for m in messages {
        match m.role.as_str() {
            "system" => {
                if !instructions.is_empty() {
                    instructions.push_str("\n\n");
                }
                instructions.push_str(&m.content);
            }
            "tool" => input.push(json!({"type": "function_call_output",
                                        "call_id": m.tool_call_id.as_deref().unwrap_or(""), "output": m.content})),
            role => {
                if !m.content.is_empty() || m.tool_calls.is_empty() {
                    input.push(json!({"role": role, "content": m.content}));
                }
                for call in &m.tool_calls {
                    input.push(json!({"type": "function_call", "call_id": call.id,
                                      "name": call.function.name, "arguments": call.function.arguments}));
                }
            }
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(deployment));
    body.insert("input".into(), Value::Array(input));
    if !instructions.is_empty() {
        body.insert("instructions".into(), json!(instructions));
    }
    body.insert("store".into(), json!(false));
    if stream {
        body.insert("stream".into(), json!(true));
    }
    if let Some(t) = params.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = params.top_p {
        body.insert("top_p".into(), json!(p));
    }
    if let Some(n) = params.max_tokens {
        body.insert("max_output_tokens".into(), json!(n));
    }
    if let Some(extras) = params.extras.as_deref() {
        if let Some(Value::Array(tools)) = &extras.tools {
            // Chat's `{"type": "function", "function": {...}}` is flat here.
            let flat: Vec<Value> = tools
                .iter()
                .map(|t| {
                    let mut f = t["function"].as_object().cloned().unwrap_or_default();
                    f.insert("type".into(), json!("function"));
                    Value::Object(f)
                })
                .collect();
            body.insert("tools".into(), Value::Array(flat));
        }
        if let Some(choice) = &extras.tool_choice {
            let choice = match choice["function"]["name"].as_str() {
                Some(name) => json!({"type": "function", "name": name}),
                None => choice.clone(),
            };
            body.insert("tool_choice".into(), choice);
        }
        if let Some(p) = extras.parallel_tool_calls {
            body.insert("parallel_tool_calls".into(), json!(p));
        }
        if let Some(format) = &extras.response_format {
            let format = match format["type"].as_str() {
                Some("json_schema") => {
                    let mut f = format["json_schema"]
                        .as_object()
                        .cloned()
                        .unwrap_or_default();
                    f.insert("type".into(), json!("json_schema"));
                    Value::Object(f)
                }
                _ => format.clone(),
            };
            body.insert("text".into(), json!({ "format": format }));
        }
    }
    Value::Object(body)
}

/// The request body for `endpoint`: a deployment's (`request`), or a Foundry agent's — the
/// `agent_reference` instead of a model (the agent brings its model, instructions and file
/// search), the Foundry conversation to continue, and stored (a conversation keeps its items).
pub fn request_to(
    endpoint: &super::ModelEndpoint,
    messages: &[WireMessage],
    params: &ChatParams,
    stream: bool,
) -> Value {
    let mut body = request(&endpoint.deployment, messages, params, stream);
    if let (Some(agent), Value::Object(map)) = (&endpoint.agent, &mut body) {
        map.remove("model");
        map.remove("store");
        // A caller's own instructions go in as a developer message; the agent's stay.
        if let Some(Value::String(text)) = map.remove("instructions")
            && let Some(Value::Array(input)) = map.get_mut("input")
        {
            input.insert(0, json!({"role": "developer", "content": text}));
        }
        map.insert(
            "agent_reference".into(),
            json!({"type": "agent_reference", "name": agent.name, "version": agent.version}),
        );
        if let Some(conversation) = &params.conversation {
            map.insert("conversation".into(), json!(conversation.as_ref()));
        }
        map.insert("include".into(), json!(["file_search_call.results"]));
    }
    body
}

/// How the model stopped, in chat's terms.
fn finish_reason(response: &Value, called: bool) -> &'static str {
    match response["incomplete_details"]["reason"].as_str() {
        Some("max_output_tokens") => "length",
        Some("content_filter") => "content_filter",
        _ if called => "tool_calls",
        _ => "stop",
    }
}

fn usage(response: &Value) -> Option<WireUsage> {
    let u = response.get("usage").filter(|u| u.is_object())?;
    let prompt = u["input_tokens"].as_u64().unwrap_or(0);
    let completion = u["output_tokens"].as_u64().unwrap_or(0);
    Some(WireUsage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: u["total_tokens"].as_u64().unwrap_or(prompt + completion),
    })
}

/// The passages a Foundry agent's answer cited: each `file_citation` annotation's file (once),
/// with the text the file search returned for it. The document id is the file's name (SOPHIA
/// uploads each knowledge document under its own id).
pub fn citations(response: &Value) -> Vec<Citation> {
    let output = response["output"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let results: Vec<&Value> = output
        .iter()
        .filter(|i| i["type"] == "file_search_call")
        .flat_map(|i| i["results"].as_array().into_iter().flatten())
        .collect();
    let mut out: Vec<Citation> = Vec::new();
    let annotations = output
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().into_iter().flatten())
        .flat_map(|c| c["annotations"].as_array().into_iter().flatten())
        .filter(|a| a["type"] == "file_citation");
    for annotation in annotations {
        let file = annotation["file_id"].as_str().unwrap_or("");
        if file.is_empty() || out.iter().any(|c| c.document_id == file) {
            continue;
        }
        let result = results.iter().find(|r| r["file_id"] == file);
        let title = annotation["filename"]
            .as_str()
            .or_else(|| result.and_then(|r| r["filename"].as_str()))
            .unwrap_or(file)
            .to_owned();
        out.push(Citation {
            document_id: title.clone(),
            title,
            snippet: result
                .and_then(|r| r["text"].as_str())
                .map(|t| t.chars().take(500).collect())
                .unwrap_or_default(),
            score: result.and_then(|r| r["score"].as_f64()).unwrap_or(0.0),
        });
    }
    out
}

/// A whole answer: its text, refusal and function calls.
pub fn completion(response: &Value, deployment: &str) -> Completion {
    let (mut content, mut refusal, mut tool_calls) = (String::new(), None::<String>, Vec::new());
    for item in response["output"].as_array().into_iter().flatten() {
        match item["type"].as_str() {
            Some("message") => {
                for part in item["content"].as_array().into_iter().flatten() {
                    match part["type"].as_str() {
                        Some("output_text") => {
                            content.push_str(part["text"].as_str().unwrap_or(""))
                        }
                        Some("refusal") => {
                            refusal
                                .get_or_insert_default()
                                .push_str(part["refusal"].as_str().unwrap_or(""));
                        }
                        _ => {}
                    }
                }
            }
            Some("function_call") => tool_calls.push(ToolCall {
                id: item["call_id"].as_str().unwrap_or("").to_owned(),
                kind: "function".into(),
                function: FunctionCall {
                    name: item["name"].as_str().unwrap_or("").to_owned(),
                    arguments: item["arguments"].as_str().unwrap_or("").to_owned(),
                },
            }),
            _ => {}
        }
    }
    Completion {
        finish_reason: Some(finish_reason(response, !tool_calls.is_empty()).to_owned()),
        content,
        refusal,
        tool_calls,
        filters: None,
        citations: citations(response),
        model: response["model"].as_str().unwrap_or(deployment).to_owned(),
        usage: usage(response).unwrap_or_default(),
    }
}

/// Reads a Responses stream's events into chat stream parts.
#[derive(Default)]
pub struct EventReader {
    /// The output index of each function call, in call order.
    calls: Vec<u64>,
}

/// What one event means.
pub enum Read {
    Parts(Vec<StreamPart>),
    /// The response finished (its last parts first).
    Done(Vec<StreamPart>),
    /// `response.failed` or `error`: the upstream's message.
    Failed(String),
}

impl EventReader {
    pub fn read(&mut self, event: &Value) -> Read {
        let kind = event["type"].as_str().unwrap_or("");
        match kind {
            "response.output_text.delta" => {
                let delta = event["delta"].as_str().unwrap_or("");
                Read::Parts(if delta.is_empty() {
                    vec![]
                } else {
                    vec![StreamPart::Delta(delta.to_owned())]
                })
            }
            "response.refusal.delta" => {
                let delta = event["delta"].as_str().unwrap_or("");
                Read::Parts(if delta.is_empty() {
                    vec![]
                } else {
                    vec![StreamPart::Refusal(delta.to_owned())]
                })
            }
            "response.output_item.added" if event["item"]["type"] == "function_call" => {
                let index = self.calls.len() as u32;
                self.calls.push(event["output_index"].as_u64().unwrap_or(0));
                let item = &event["item"];
                Read::Parts(vec![StreamPart::ToolCall(ToolCallDelta {
                    index,
                    id: item["call_id"].as_str().map(str::to_owned),
                    name: item["name"].as_str().map(str::to_owned),
                    arguments: item["arguments"].as_str().unwrap_or("").to_owned(),
                })])
            }
            "response.function_call_arguments.delta" => {
                let at = event["output_index"].as_u64().unwrap_or(0);
                let Some(index) = self.calls.iter().position(|o| *o == at) else {
                    return Read::Parts(vec![]);
                };
                Read::Parts(vec![StreamPart::ToolCall(ToolCallDelta {
                    index: index as u32,
                    id: None,
                    name: None,
                    arguments: event["delta"].as_str().unwrap_or("").to_owned(),
                })])
            }
            "response.completed" | "response.incomplete" => {
                let response = &event["response"];
                let mut parts = Vec::new();
                if let Some(model) = response["model"].as_str().filter(|m| !m.is_empty()) {
                    parts.push(StreamPart::Model(model.to_owned()));
                }
                parts.push(StreamPart::Finish(
                    finish_reason(response, !self.calls.is_empty()).to_owned(),
                ));
                if let Some(u) = usage(response) {
                    parts.push(StreamPart::Usage(u));
                }
                let cited = citations(response);
                if !cited.is_empty() {
                    parts.push(StreamPart::Citations(cited));
                }
                Read::Done(parts)
            }
            "response.failed" => Read::Failed(
                event["response"]["error"]["message"]
                    .as_str()
                    .unwrap_or("the response failed")
                    .chars()
                    .take(300)
                    .collect(),
            ),
            "error" => Read::Failed(
                event["message"]
                    .as_str()
                    .unwrap_or("error")
                    .chars()
                    .take(300)
                    .collect(),
            ),
            _ => Read::Parts(vec![]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ChatExtras;
    use std::sync::Arc;

    #[test]
    fn messages_and_extras_become_a_responses_request() {
        let mut assistant = WireMessage::text("assistant", String::new());
        assistant.tool_calls.push(ToolCall {
            id: "call_1".into(),
            kind: "function".into(),
            function: FunctionCall {
                name: "f".into(),
                arguments: "{}".into(),
            },
        });
        let mut tool = WireMessage::text("tool", "42".into());
        tool.tool_call_id = Some("call_1".into());
        let messages = [
            WireMessage::text("system", "a".into()),
            WireMessage::text("system", "b".into()),
            WireMessage::text("user", "q".into()),
            assistant,
            tool,
        ];
        let params = ChatParams {
            max_tokens: Some(9),
            extras: Some(Arc::new(ChatExtras {
                tools: Some(
                    json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]),
                ),
                tool_choice: Some(json!({"type": "function", "function": {"name": "f"}})),
                response_format: Some(
                    json!({"type": "json_schema", "json_schema": {"name": "n", "schema": {}}}),
                ),
                ..Default::default()
            })),
            ..Default::default()
        };
        let body = request("dep", &messages, &params, true);
        assert_eq!(body["instructions"], "a\n\nb");
        assert_eq!(body["model"], "dep");
        assert_eq!(body["store"], false);
        assert_eq!(body["max_output_tokens"], 9);
        assert_eq!(
            body["input"],
            json!([{"role": "user", "content": "q"},
                   {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
                   {"type": "function_call_output", "call_id": "call_1", "output": "42"}])
        );
        assert_eq!(
            body["tools"],
            json!([{"type": "function", "name": "f", "parameters": {"type": "object"}}])
        );
        assert_eq!(
            body["tool_choice"],
            json!({"type": "function", "name": "f"})
        );
        assert_eq!(
            body["text"]["format"],
            json!({"type": "json_schema", "name": "n", "schema": {}})
        );
    }

    #[test]
    fn answers_and_events_read_back() {
        let response = json!({"model": "gpt-4o-2024", "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"},
            "output": [{"type": "message", "content": [{"type": "output_text", "text": "Hi"}]}],
            "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4}});
        let c = completion(&response, "dep");
        assert_eq!(
            (
                c.content.as_str(),
                c.finish_reason.as_deref(),
                c.usage.total_tokens
            ),
            ("Hi", Some("length"), 4)
        );
        let mut reader = EventReader::default();
        let added = json!({"type": "response.output_item.added", "output_index": 1,
                           "item": {"type": "function_call", "call_id": "call_9", "name": "f", "arguments": ""}});
        let Read::Parts(p) = reader.read(&added) else {
            panic!()
        };
        assert!(
            matches!(&p[0], StreamPart::ToolCall(d) if d.index == 0 && d.id.as_deref() == Some("call_9"))
        );
        let delta = json!({"type": "response.function_call_arguments.delta", "output_index": 1, "delta": "{\"a\""});
        let Read::Parts(p) = reader.read(&delta) else {
            panic!()
        };
        assert!(
            matches!(&p[0], StreamPart::ToolCall(d) if d.index == 0 && d.arguments == "{\"a\"")
        );
        let refusal = json!({"type": "response.refusal.delta", "output_index": 0, "content_index": 0, "delta": "No"});
        let Read::Parts(p) = reader.read(&refusal) else {
            panic!()
        };
        assert_eq!(p, vec![StreamPart::Refusal("No".into())]);
        let done = json!({"type": "response.completed", "response": {"model": "m", "usage": {"input_tokens": 1, "output_tokens": 2}}});
        let Read::Done(p) = reader.read(&done) else {
            panic!()
        };
        assert!(p.contains(&StreamPart::Finish("tool_calls".into())));
        assert!(
            matches!(reader.read(&json!({"type": "error", "message": "boom"})), Read::Failed(m) if m == "boom")
        );
    }
}
