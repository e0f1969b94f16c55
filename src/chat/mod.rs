//! The chat service: one `Turn` behind `/chat` and every `/v1` route. A turn is prepared once
//! (the tenant's runtime, its conversation history, its knowledge, the prompt), then either
//! completed whole or streamed as a sequence of [`TurnEvent`]s; either way the turn records
//! its own usage (and, for a stored conversation, both messages). Handlers only translate
//! request and answer formats (SOPHIA's JSON and events, OpenAI's objects and chunks).

pub mod embeddings;
mod prompt;
mod pump;

use std::sync::Arc;

use chrono::Utc;

use crate::domain::{Citation, ConversationId, InstanceId, StoredMessage, TenantId, Usage};
use crate::llm::{ChatParams, ModelEndpoint, WireMessage, WireUsage};
use crate::secrets::SecretError;
use crate::state::App;
use crate::store::StoreError;
use crate::tenant::runtime::{RuntimeError, TenantRuntime};
use crate::upstream::UpstreamError;

pub use pump::{TurnEvent, TurnEvents};

/// Most messages a stored conversation keeps.
pub const KEEP_MESSAGES: usize = 200;

/// Who is asking: the tenant and instance from a verified service token or access key.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: TenantId,
    pub instance: InstanceId,
}

/// Why a turn could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The caller's instance does not exist (any more).
    #[error("agent instance not found")]
    UnknownInstance,
    /// The conversation is not one of the caller's (another tenant's included).
    #[error("conversation not found")]
    UnknownConversation,
    /// The instance lacks something the turn needs (endpoint, key, deployment, index).
    #[error("{0}")]
    NotConfigured(String),
    /// `/v1/embeddings` on an instance without an embedding deployment.
    #[error("this agent instance has no embedding deployment")]
    NoEmbeddingDeployment,
    /// A request value the tenant's instance does not accept.
    #[error("{detail}")]
    Invalid { field: &'static str, detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("the knowledge index is unavailable")]
    KnowledgeUnavailable(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<RuntimeError> for ChatError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::NotFound => Self::UnknownInstance,
            RuntimeError::Store(e) => Self::Store(e),
            RuntimeError::Secret(e) => Self::Secret(e),
        }
    }
}

/// Sampling settings a caller may set for one turn (over the instance's own).
#[derive(Debug, Clone, Copy, Default)]
pub struct Overrides {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u32>,
}

/// What a caller asks for.
pub enum Ask {
    /// `/chat`: one message, continuing one of the caller's stored conversations (or starting
    /// one). Both messages are stored.
    Message {
        text: String,
        conversation: Option<ConversationId>,
    },
    /// `/v1/chat/completions`: the client's own messages (it keeps the history); only the
    /// usage is recorded. The knowledge is looked up for the last user message.
    Messages {
        messages: Vec<WireMessage>,
        model: Option<String>,
        overrides: Overrides,
    },
}

/// The stored side of a `/chat` turn.
struct Stored {
    conversation_id: ConversationId,
    user_message: StoredMessage,
}

/// A prepared turn, ready to be completed or streamed.
pub struct Turn {
    pub caller: Caller,
    pub runtime: Arc<TenantRuntime>,
    endpoint: Arc<ModelEndpoint>,
    messages: Vec<WireMessage>,
    pub citations: Vec<Citation>,
    params: ChatParams,
    /// The model the answer is attributed to: the one the caller asked for, else the
    /// instance's model or deployment.
    pub model: String,
    prompt_estimate: u64,
    stored: Option<Stored>,
    started: std::time::Instant,
}

/// A stored turn's place in its conversation.
#[derive(Debug, Clone, Copy)]
pub struct Saved {
    pub conversation_id: ConversationId,
    pub message_id: uuid::Uuid,
    /// Oldest messages the stored conversation dropped to stay within its bounds.
    pub history_trimmed: usize,
}

/// A finished turn, already recorded.
#[derive(Debug)]
pub struct Answer {
    pub content: String,
    pub usage: Usage,
    /// The model the upstream says answered (else [`Turn::model`]).
    pub model: String,
    pub finish_reason: String,
    pub citations: Vec<Citation>,
    /// Where a `/chat` turn was stored (`None` for `/v1` turns).
    pub saved: Option<Saved>,
}

impl Turn {
    /// Loads everything the turn needs. A conversation id must name one of the caller's
    /// conversations; a `/v1` model must be one the instance allows.
    pub async fn prepare(app: &App, caller: Caller, ask: Ask) -> Result<Self, ChatError> {
        let started = std::time::Instant::now();
        let runtime = app
            .runtimes
            .get(&app.store, &app.secrets, &caller.tenant, &caller.instance)
            .await?;
        let endpoint = runtime.chat.clone().map_err(ChatError::NotConfigured)?;
        let mut params = runtime.params;
        let (question, history, model, stored) = match ask {
            Ask::Message { text, conversation } => {
                let mut history = match &conversation {
                    Some(id) => history(app, &caller.tenant, id, runtime.history_messages).await?,
                    None => Vec::new(),
                };
                let stored = Stored {
                    conversation_id: conversation.unwrap_or_default(),
                    user_message: StoredMessage {
                        id: uuid::Uuid::new_v4(),
                        role: "user".into(),
                        content: text.clone(),
                        at: Utc::now(),
                        citations: vec![],
                    },
                };
                history.push(WireMessage {
                    role: "user".into(),
                    content: text.clone(),
                });
                (text, history, None, Some(stored))
            }
            Ask::Messages {
                messages,
                model,
                overrides,
            } => {
                if let Some(model) = &model
                    && !runtime.allowed_models.is_empty()
                    && !runtime.allowed_models.contains(model)
                {
                    return Err(ChatError::Invalid {
                        field: "model",
                        detail: format!(
                            "model '{model}' is not enabled for this agent; use one of {:?}",
                            runtime.allowed_models
                        ),
                    });
                }
                params.temperature = overrides.temperature.or(params.temperature);
                params.top_p = overrides.top_p.or(params.top_p);
                params.max_tokens = overrides.max_tokens.or(params.max_tokens);
                let question = messages
                    .iter()
                    .rev()
                    .find(|m| m.role == "user")
                    .map(|m| m.content.clone())
                    .unwrap_or_default();
                (question, messages, model, None)
            }
        };
        let citations = prompt::retrieve(app, &runtime, &caller.tenant, &question).await?;
        let mut messages: Vec<WireMessage> = prompt::system_message(&runtime, &citations)
            .into_iter()
            .collect();
        messages.extend(history);
        let prompt_estimate = messages
            .iter()
            .map(|m| crate::domain::usage::estimate_tokens(&m.content))
            .sum();
        Ok(Self {
            model: model.unwrap_or_else(|| runtime.model_name()),
            caller,
            runtime,
            endpoint,
            messages,
            citations,
            params,
            prompt_estimate,
            stored,
            started,
        })
    }

    /// Whether the turn continues (and is stored in) a SOPHIA conversation.
    pub fn conversation_id(&self) -> Option<ConversationId> {
        self.stored.as_ref().map(|s| s.conversation_id)
    }

    /// The whole answer, recorded.
    pub async fn complete(self, app: &App) -> Result<Answer, ChatError> {
        let completion = app
            .models
            .complete(&self.endpoint, &self.messages, self.params)
            .await?;
        let model = Some(completion.model).filter(|m| !m.is_empty());
        Ok(self
            .finish(
                app,
                completion.content,
                Some(completion.usage),
                model,
                completion.finish_reason,
            )
            .await)
    }

    /// The usage of an answer: what the upstream reported, else the estimate.
    fn usage(&self, reported: Option<WireUsage>, answer: &str) -> Usage {
        Usage::settle(reported.map(Usage::from), self.prompt_estimate, answer)
    }

    /// Records a finished turn (both messages of a stored conversation, the usage) and says
    /// how it ended. Recording failures are logged, not returned: the caller has its answer.
    async fn finish(
        self,
        app: &App,
        content: String,
        reported: Option<WireUsage>,
        model: Option<String>,
        finish_reason: Option<String>,
    ) -> Answer {
        let usage = self.usage(reported, &content);
        app.usage.record(&self.caller.tenant, usage);
        self.metrics(usage, model.as_deref(), true);
        let saved = match self.stored {
            Some(stored) => Some(save(app, &self.caller, stored, &content, &self.citations).await),
            None => None,
        };
        Answer {
            content,
            usage,
            model: model.unwrap_or(self.model),
            finish_reason: finish_reason.unwrap_or_else(|| "stop".into()),
            citations: self.citations,
            saved,
        }
    }

    /// Records the tokens of a turn that failed part-way (nothing is stored).
    fn fail(&self, app: &App, reported: Option<WireUsage>, partial: &str) {
        let usage = self.usage(reported, partial);
        app.usage.record(&self.caller.tenant, usage);
        self.metrics(usage, None, false);
    }

    /// The turn in the company's metrics (tokens by instance and model, outcome, latency).
    fn metrics(&self, usage: Usage, model: Option<&str>, ok: bool) {
        if !crate::telemetry::enabled() {
            return;
        }
        crate::telemetry::metrics::turn(&crate::telemetry::metrics::TurnRecord {
            company: self.caller.tenant.as_str(),
            instance: &self.caller.instance.to_string(),
            model: model.unwrap_or(&self.model),
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            duration_ms: self.started.elapsed().as_secs_f64() * 1000.0,
            ok,
        });
    }
}

/// The last `keep` messages of one of the tenant's conversations.
async fn history(
    app: &App,
    tenant: &TenantId,
    id: &ConversationId,
    keep: usize,
) -> Result<Vec<WireMessage>, ChatError> {
    let conversation = app
        .store
        .get_conversation(tenant, id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ChatError::UnknownConversation,
            other => other.into(),
        })?;
    let skip = conversation.messages.len().saturating_sub(keep);
    Ok(conversation
        .messages
        .into_iter()
        .skip(skip)
        .map(|m| WireMessage {
            role: m.role,
            content: m.content,
        })
        .collect())
}

/// Appends both messages of a turn to its conversation.
async fn save(
    app: &App,
    caller: &Caller,
    stored: Stored,
    content: &str,
    citations: &[Citation],
) -> Saved {
    let message_id = uuid::Uuid::new_v4();
    let assistant = StoredMessage {
        id: message_id,
        role: "assistant".into(),
        content: content.to_owned(),
        at: Utc::now(),
        citations: citations.to_vec(),
    };
    let (tenant, conversation_id) = (&caller.tenant, stored.conversation_id);
    let history_trimmed = match app
        .store
        .append_conversation(
            tenant,
            &conversation_id,
            &caller.instance,
            &[stored.user_message, assistant],
            KEEP_MESSAGES,
        )
        .await
    {
        Ok(dropped) => {
            if dropped > 0 {
                tracing::info!(tenant.id = %tenant, conversation.id = %conversation_id, conversation.dropped = dropped, "conversation {conversation_id} reached its bound: {dropped} oldest message(s) dropped");
            }
            dropped
        }
        Err(e) => {
            tracing::error!(tenant.id = %tenant, error = ?e, "conversation not saved: {e:#}");
            0
        }
    };
    Saved {
        conversation_id,
        message_id,
        history_trimmed,
    }
}
