//! OpenAI request pieces the `/v1` routes share: function tools, `tool_choice`,
//! `response_format`, `stop`, checked once (so a bad value is a clear 400 naming the
//! parameter, never the upstream's error) and handed to the chat service as [`ChatExtras`].

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::llm::ChatExtras;

/// A chat-completions tool: `{"type": "function", "function": {name, description, parameters, strict}}`.
#[derive(Deserialize)]
pub struct InTool {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub function: Option<InFunction>,
}

#[derive(Deserialize, Serialize)]
pub struct InFunction {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

pub fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::validation(param, message)
}

/// OpenAI's rule for function names.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// What a `/v1` caller adds to a turn, checked here (so a bad value is a clear 400, not the
/// upstream's) and passed upstream in chat-completions form.
pub struct Extras {
    pub tools: Option<Vec<InTool>>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub response_format: Option<Value>,
    pub seed: Option<i64>,
    pub stop: Option<Value>,
}

impl Extras {
    /// The checked extras (`None` when the caller set none).
    pub fn check(self) -> Result<Option<Arc<ChatExtras>>, ApiError> {
        let mut names = Vec::new();
        let tools = match self.tools {
            None => None,
            Some(tools) if tools.is_empty() => None,
            Some(tools) => {
                if tools.len() > 128 {
                    return Err(bad("tools", "at most 128 tools"));
                }
                let mut out = Vec::with_capacity(tools.len());
                for (i, tool) in tools.into_iter().enumerate() {
                    let (kind, function) = (tool.kind, tool.function);
                    let function = match (kind.as_str(), function) {
                        ("function", Some(f)) => f,
                        ("function", None) => {
                            return Err(bad(&format!("tools[{i}].function"), "is required"));
                        }
                        (other, _) => {
                            return Err(bad(
                                &format!("tools[{i}].type"),
                                format!(
                                    "tool type '{other}' is not supported; only 'function' tools (the agent searches its own knowledge)"
                                ),
                            ));
                        }
                    };
                    if !valid_name(&function.name) {
                        return Err(bad(
                            &format!("tools[{i}].function.name"),
                            "must be 1-64 letters, digits, '_' or '-'",
                        ));
                    }
                    if function.parameters.as_ref().is_some_and(|p| !p.is_object()) {
                        return Err(bad(
                            &format!("tools[{i}].function.parameters"),
                            "must be a JSON Schema object",
                        ));
                    }
                    names.push(function.name.clone());
                    out.push(json!({"type": "function", "function": function}));
                }
                Some(Value::Array(out))
            }
        };
        if let Some(choice) = &self.tool_choice {
            let named = match choice {
                Value::String(s) if matches!(s.as_str(), "none" | "auto" | "required") => None,
                Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
                    match o
                        .get("function")
                        .and_then(|f| f.get("name"))
                        .and_then(Value::as_str)
                    {
                        Some(name) if valid_name(name) => Some(name),
                        _ => {
                            return Err(bad(
                                "tool_choice.function.name",
                                "is required: 1-64 letters, digits, '_' or '-'",
                            ));
                        }
                    }
                }
                _ => {
                    return Err(bad(
                        "tool_choice",
                        "must be 'none', 'auto', 'required' or {\"type\": \"function\", \"function\": {\"name\": …}}",
                    ));
                }
            };
            // Without tools a choice means nothing (and is not sent upstream).
            if let Some(name) = named.filter(|_| tools.is_some())
                && !names.iter().any(|n| n == name)
            {
                return Err(bad(
                    "tool_choice.function.name",
                    format!("'{name}' is not one of the tools"),
                ));
            }
        }
        if let Some(format) = &self.response_format {
            check_response_format(format)?;
        }
        if let Some(stop) = &self.stop {
            let ok = match stop {
                Value::Null => true,
                Value::String(s) => !s.is_empty(),
                Value::Array(items) => {
                    (1..=4).contains(&items.len())
                        && items
                            .iter()
                            .all(|i| i.as_str().is_some_and(|s| !s.is_empty()))
                }
                _ => false,
            };
            if !ok {
                return Err(bad("stop", "must be a string or 1 to 4 non-empty strings"));
            }
        }
        let extras = ChatExtras {
            tool_choice: self.tool_choice.filter(|_| tools.is_some()),
            parallel_tool_calls: self.parallel_tool_calls.filter(|_| tools.is_some()),
            tools,
            response_format: self.response_format,
            seed: self.seed,
            stop: self.stop.filter(|s| !s.is_null()),
        };
        let none = extras.tools.is_none()
            && extras.response_format.is_none()
            && extras.seed.is_none()
            && extras.stop.is_none();
        Ok((!none).then(|| Arc::new(extras)))
    }
}

/// `response_format`: `text`, `json_object`, or `json_schema` with a named schema.
fn check_response_format(format: &Value) -> Result<(), ApiError> {
    match format.get("type").and_then(Value::as_str) {
        Some("text" | "json_object") => Ok(()),
        Some("json_schema") => {
            let spec = &format["json_schema"];
            let name = spec.get("name").and_then(Value::as_str);
            if !name.is_some_and(valid_name) {
                return Err(bad(
                    "response_format.json_schema.name",
                    "is required: 1-64 letters, digits, '_' or '-'",
                ));
            }
            if spec.get("schema").is_some_and(|s| !s.is_object()) {
                return Err(bad(
                    "response_format.json_schema.schema",
                    "must be a JSON Schema object",
                ));
            }
            if spec.get("description").is_some_and(|d| !d.is_string()) {
                return Err(bad(
                    "response_format.json_schema.description",
                    "must be a string",
                ));
            }
            if spec
                .get("strict")
                .is_some_and(|s| !s.is_boolean() && !s.is_null())
            {
                return Err(bad(
                    "response_format.json_schema.strict",
                    "must be a boolean",
                ));
            }
            Ok(())
        }
        _ => Err(bad(
            "response_format.type",
            "must be 'text', 'json_object' or 'json_schema'",
        )),
    }
}

/// An integer as JSON Schema counts one: `5` or `5.0` (some clients and generators write
/// integral floats), within `u32`.
pub fn opt_u32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let value = Option::<serde_json::Number>::deserialize(d)?;
    value
        .map(|n| {
            integral(&n)
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "expected an integer from 0 to {}, got {n}",
                        u32::MAX
                    ))
                })
        })
        .transpose()
}

/// [`opt_u32`] for `i64`.
pub fn opt_i64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let value = Option::<serde_json::Number>::deserialize(d)?;
    value
        .map(|n| {
            integral(&n).ok_or_else(|| {
                serde::de::Error::custom(format!("expected a 64-bit integer, got {n}"))
            })
        })
        .transpose()
}

fn integral(n: &serde_json::Number) -> Option<i64> {
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    let f = n.as_f64()?;
    // Within ±2^53 an integral float is exactly the integer it names.
    (f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0).then_some(f as i64)
}

/// A token id: an integer (or integral float) within `u32`.
#[derive(Debug, Clone, Copy)]
pub struct TokenId(pub u32);

impl<'de> Deserialize<'de> for TokenId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        integral(&n)
            .and_then(|i| u32::try_from(i).ok())
            .map(TokenId)
            .ok_or_else(|| {
                serde::de::Error::custom("a token id is an integer from 0 to 4294967295")
            })
    }
}

/// The sampling ranges OpenAI documents: `temperature` 0–2, `top_p` 0–1, token limits ≥ 1.
pub fn check_sampling(
    temperature: Option<f64>,
    top_p: Option<f64>,
    limits: &[(&str, Option<u32>)],
) -> Result<(), ApiError> {
    if temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return Err(bad("temperature", "must be from 0 to 2"));
    }
    if top_p.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
        return Err(bad("top_p", "must be from 0 to 1"));
    }
    if let Some((name, _)) = limits.iter().find(|(_, n)| *n == Some(0)) {
        return Err(bad(name, "must be at least 1"));
    }
    Ok(())
}

/// Message content: text, or parts of which only text parts are accepted.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum InContent {
    Text(String),
    Parts(Vec<InPart>),
}

#[derive(Deserialize)]
pub struct InPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

impl InContent {
    /// The text of `content` (at `at`), refusing any part whose type is not one of `kinds`.
    pub fn text_of(content: Option<Self>, at: &str, kinds: &[&str]) -> Result<String, ApiError> {
        match content {
            None => Ok(String::new()),
            Some(Self::Text(t)) => Ok(t),
            Some(Self::Parts(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.into_iter().enumerate() {
                    if !kinds.contains(&p.kind.as_str()) {
                        return Err(bad(
                            &format!("{at}[{j}].type"),
                            format!("content part type '{}' is not supported", p.kind),
                        ));
                    }
                    text.push_str(p.text.as_deref().unwrap_or(""));
                }
                Ok(text)
            }
        }
    }
}

/// A streamed `/v1` answer: `text/event-stream`, not cached.
pub fn event_stream(body: axum::body::Body) -> axum::response::Response {
    use axum::http::{HeaderValue, header};
    let mut response = axum::response::Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
