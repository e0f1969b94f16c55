//! A chat turn, independent of HTTP: load the tenant's runtime, its conversation history and
//! knowledge, build the prompt, call the tenant's model (whole or streamed), then record the
//! conversation and the usage. Handlers turn the result into JSON, SSE or OpenAI shapes.

use std::sync::Arc;

use chrono::Utc;
use serde::Serialize;

use crate::domain::{Citation, ConversationId, InstanceId, StoredMessage, TenantId};
use crate::error::ApiError;
use crate::llm::{
    ChatParams, ChatStream, Completion, ModelEndpoint, StreamPart, WireMessage, WireUsage,
};
use crate::state::App;
use crate::store::StoreError;
use crate::tenant::runtime::{RuntimeError, TenantRuntime};

/// Most messages a stored conversation keeps.
pub const KEEP_MESSAGES: usize = 200;

/// Token counts in the SOPHIA (camelCase) shape.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl From<WireUsage> for Usage {
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

/// A rough count (≈ 4 characters a token) for upstreams that report no usage.
fn estimate(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// Who is asking: the tenant and instance from a verified service token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: TenantId,
    pub instance: InstanceId,
}

/// The runtime of the caller's instance.
pub async fn runtime(app: &App, caller: &Caller) -> Result<Arc<TenantRuntime>, ApiError> {
    app.runtimes
        .get(&app.store, &app.secrets, &caller.tenant, &caller.instance)
        .await
        .map_err(|e| match e {
            RuntimeError::NotFound => ApiError::InvalidToken("instance not found"),
            RuntimeError::Store(e) => e.into(),
            RuntimeError::Secret(e) => e.into(),
        })
}

/// The chat endpoint of a runtime, or a clear 409.
pub fn endpoint(runtime: &TenantRuntime) -> Result<ModelEndpoint, ApiError> {
    runtime.chat.clone().map_err(ApiError::NotConfigured)
}

/// The system message: the instance's prompt plus the knowledge passages.
pub fn system_message(runtime: &TenantRuntime, citations: &[Citation]) -> Option<WireMessage> {
    let mut text = runtime.system_prompt.clone().unwrap_or_default();
    if !citations.is_empty() {
        if !text.is_empty() {
            text.push_str("\n\n");
        }
        text.push_str("Answer from the context below when it is relevant, and cite the documents you use.\nContext:\n");
        for c in citations {
            text.push_str(&format!(
                "[{}] {}\n{}\n\n",
                c.document_id, c.title, c.snippet
            ));
        }
    }
    (!text.is_empty()).then(|| WireMessage {
        role: "system".into(),
        content: text,
    })
}

/// What recording a turn did.
#[derive(Debug, Clone, Copy)]
pub struct Recorded {
    pub message_id: uuid::Uuid,
    /// Oldest messages the stored conversation dropped to stay within its bounds.
    pub history_trimmed: usize,
}

/// A `/chat` turn, prepared and ready to send.
pub struct Turn {
    pub caller: Caller,
    pub runtime: Arc<TenantRuntime>,
    pub endpoint: ModelEndpoint,
    pub conversation_id: ConversationId,
    pub messages: Vec<WireMessage>,
    pub citations: Vec<Citation>,
    pub user_message: StoredMessage,
}

/// Loads everything a `/chat` turn needs. A `conversation_id` must name one of the caller's
/// conversations (404 otherwise, including another tenant's).
pub async fn prepare(
    app: &App,
    caller: Caller,
    message: String,
    conversation_id: Option<ConversationId>,
) -> Result<Turn, ApiError> {
    let runtime = runtime(app, &caller).await?;
    let endpoint = endpoint(&runtime)?;
    let history = match &conversation_id {
        Some(id) => {
            let conversation = app
                .store
                .get_conversation(&caller.tenant, id)
                .await
                .map_err(|e| match e {
                    StoreError::NotFound => ApiError::NotFound("conversation"),
                    other => other.into(),
                })?;
            let skip = conversation
                .messages
                .len()
                .saturating_sub(runtime.history_messages);
            conversation.messages.into_iter().skip(skip).collect()
        }
        None => Vec::new(),
    };
    let citations = crate::knowledge::retrieve(app, &runtime, &caller.tenant, &message).await?;
    let mut messages: Vec<WireMessage> = system_message(&runtime, &citations).into_iter().collect();
    messages.extend(history.into_iter().map(|m| WireMessage {
        role: m.role,
        content: m.content,
    }));
    messages.push(WireMessage {
        role: "user".into(),
        content: message.clone(),
    });
    Ok(Turn {
        caller,
        runtime,
        endpoint,
        conversation_id: conversation_id.unwrap_or_default(),
        messages,
        citations,
        user_message: StoredMessage {
            id: uuid::Uuid::new_v4(),
            role: "user".into(),
            content: message,
            at: Utc::now(),
            citations: vec![],
        },
    })
}

impl Turn {
    pub fn params(&self) -> ChatParams {
        self.runtime.params
    }

    /// Fills in usage the upstream did not report.
    pub fn usage(&self, reported: Option<WireUsage>, answer: &str) -> Usage {
        match reported {
            Some(u) if u.prompt_tokens + u.completion_tokens > 0 => u.into(),
            _ => {
                let prompt: u64 = self.messages.iter().map(|m| estimate(&m.content)).sum();
                let completion = estimate(answer);
                Usage {
                    prompt_tokens: prompt,
                    completion_tokens: completion,
                    total_tokens: prompt + completion,
                }
            }
        }
    }

    /// Records the turn: both messages in the conversation, the tokens in the daily usage.
    /// Failures are logged, not returned: the caller already has (or is getting) its answer.
    /// Says how many of the oldest messages the stored conversation dropped to stay within
    /// its bounds, so the client can be told.
    pub async fn record(self, app: &App, answer: String, usage: Usage) -> Recorded {
        let message_id = uuid::Uuid::new_v4();
        let assistant = StoredMessage {
            id: message_id,
            role: "assistant".into(),
            content: answer,
            at: Utc::now(),
            citations: self.citations,
        };
        let tenant = &self.caller.tenant;
        let history_trimmed = match app
            .store
            .append_conversation(
                tenant,
                &self.conversation_id,
                &self.caller.instance,
                &[self.user_message, assistant],
                KEEP_MESSAGES,
            )
            .await
        {
            Ok(dropped) => {
                if dropped > 0 {
                    tracing::info!(tenant.id = %tenant, conversation.id = %self.conversation_id, conversation.dropped = dropped, "conversation {} reached its bound: {dropped} oldest message(s) dropped", self.conversation_id);
                }
                dropped
            }
            Err(e) => {
                tracing::error!(tenant.id = %tenant, error = ?e, "conversation not saved: {e:#}");
                0
            }
        };
        record_usage(app, tenant, usage).await;
        Recorded {
            message_id,
            history_trimmed,
        }
    }
}

/// Adds a request's tokens to the tenant's usage for today (flushed in batches).
pub async fn record_usage(app: &App, tenant: &TenantId, usage: Usage) {
    app.usage.record(tenant, usage);
}

/// A whole answer for a prepared turn.
pub async fn complete(app: &App, turn: &Turn) -> Result<Completion, ApiError> {
    Ok(app
        .models
        .complete(&turn.endpoint, &turn.messages, turn.params())
        .await?)
}

/// A streamed answer for a prepared turn (returns after the first content).
pub async fn stream(app: &App, turn: &Turn) -> Result<ChatStream, ApiError> {
    Ok(app
        .models
        .stream(&turn.endpoint, &turn.messages, turn.params())
        .await?)
}

/// Drains what is left of a stream (the client went away) so usage can still be recorded.
pub async fn drain(stream: &mut ChatStream, answer: &mut String, usage: &mut Option<WireUsage>) {
    while let Some(Ok(part)) = stream.next().await {
        match part {
            StreamPart::Delta(d) => answer.push_str(&d),
            StreamPart::Usage(u) => *usage = Some(u),
            _ => {}
        }
    }
}
