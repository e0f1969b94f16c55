//! The chat service: one `Turn` behind `/chat` and every `/v1` route. A turn is prepared once
//! (the tenant's runtime, its conversation history, its knowledge, the prompt), then either
//! completed whole or streamed as a sequence of [`TurnEvent`]s; either way the turn records
//! its own usage (and, for a stored conversation, both messages). Handlers only translate
//! request and answer formats (SOPHIA's JSON and events, OpenAI's objects and chunks).

pub mod embeddings;
mod prompt;
mod pump;
pub mod responses;

use std::sync::Arc;

use crate::domain::{
    Citation, ConversationId, InstanceId, ResponseRecord, StoredMessage, TenantId, ToolCall, Usage,
};
use crate::llm::pool::Pool;
use crate::llm::{ChatExtras, ChatParams, WireMessage, WireUsage};
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

impl From<crate::auth::service_token::ServiceClaims> for Caller {
    /// The caller a verified service token names.
    fn from(claims: crate::auth::service_token::ServiceClaims) -> Self {
        Self {
            tenant: claims.company_id,
            instance: claims.sub,
        }
    }
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
    /// The stored response is not one of the caller's (or was not stored).
    #[error("response not found")]
    UnknownResponse,
    /// The company is over one of its limits (see `crate::limits`).
    #[error("{}", .0.detail())]
    OverLimit(Box<crate::limits::Refused>),
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
    /// A failure after the company's limits admitted the request, with where the company
    /// stands (its answer carries the `x-ratelimit-*` headers too).
    #[error("{}", .0.0)]
    Admitted(Box<(ChatError, crate::limits::Standing)>),
}

impl ChatError {
    /// This failure, after an admission that left the company at `standing`.
    pub fn admitted(self, standing: crate::limits::Standing) -> Self {
        if standing.limits.is_empty() {
            self
        } else {
            Self::Admitted(Box::new((self, standing)))
        }
    }
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
        extras: Option<Arc<ChatExtras>>,
    },
    /// `/v1/responses`: the caller's input items after the history they continue (one of the
    /// caller's stored responses or conversations, else none); stored when `store` says so.
    Items {
        input: Vec<StoredMessage>,
        instructions: Option<String>,
        from: Option<Continue>,
        store: bool,
        model: Option<String>,
        overrides: Overrides,
        extras: Option<Arc<ChatExtras>>,
    },
}

/// What a `/v1/responses` turn continues.
#[derive(Debug, Clone)]
pub enum Continue {
    /// A stored response (`previous_response_id`): its conversation up to that answer.
    Response(responses::ResponseId),
    /// A stored conversation (`conversation`), all of it.
    Conversation(ConversationId),
}

/// The stored side of a turn: the conversation and the messages to add before the answer.
struct Stored {
    conversation_id: ConversationId,
    new_messages: Vec<StoredMessage>,
    /// A `/v1/responses` answer is stored with its own record.
    response: Option<ResponseDraft>,
}

/// What a response's record takes from its request.
struct ResponseDraft {
    previous_response_id: Option<String>,
    instructions: Option<String>,
}

/// A prepared turn, ready to be completed or streamed.
pub struct Turn {
    pub caller: Caller,
    pub runtime: Arc<TenantRuntime>,
    /// The deployments the turn may go to (one but for an instance with failover).
    pool: Arc<Pool>,
    /// The failover deployment that answers (`None` for an instance with one deployment).
    answered_by: Option<Arc<str>>,
    messages: Vec<WireMessage>,
    pub citations: Vec<Citation>,
    params: ChatParams,
    /// The model the answer is attributed to: the one the caller asked for, else the
    /// instance's model or deployment.
    pub model: String,
    prompt_estimate: u64,
    /// The turn's hold on the company's limits, settled with its usage.
    pub reservation: crate::limits::Reservation,
    stored: Option<Stored>,
    /// The answer's message id, known before it is had (a response's id names it).
    pub reply_id: uuid::Uuid,
    /// The conversation a `/v1/responses` answer belongs to (a fresh id when not stored).
    pub conversation: ConversationId,
    /// A `/v1/responses` turn on an endpoint that has the Responses API calls it (else chat
    /// completions).
    native_responses: bool,
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
    /// The function calls the model asked for (a `/v1` caller's tools).
    pub tool_calls: Vec<ToolCall>,
    pub refusal: Option<String>,
    /// Azure's content-filter results of a whole answer, passed on to `/v1` callers.
    pub filters: Option<Box<crate::llm::wire::ContentFilters>>,
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
        // A `foundry` instance runs its Foundry agent; any other its model deployment.
        let foundry = match &runtime.foundry {
            None => None,
            Some(Ok(agent)) => Some(agent.clone()),
            Some(Err(e)) => return Err(ChatError::NotConfigured(e.clone())),
        };
        // A company out of room is refused before any retrieval or conversation read.
        let limits = runtime.instance.settings.limits();
        if !limits.is_empty()
            && let Err(refused) = app
                .limits
                .has_room(app.store.as_ref(), &caller.tenant, limits)
                .await
        {
            return Err(refusal(app, &caller, limits, refused).await);
        }
        let pool = match &foundry {
            Some(agent) => Arc::clone(&agent.endpoint),
            None => runtime.chat.clone().map_err(ChatError::NotConfigured)?,
        };
        let mut params = runtime.params.clone();
        let mut conversation = ConversationId::new();
        let mut instructions = None;
        let mut native_responses = false;
        // The Foundry conversation the SOPHIA conversation maps to, and how many of the
        // messages sent are new (the rest the Foundry conversation already holds).
        let mut mapped: Option<String> = None;
        let mut new_count = 0;
        let (question, mut history, model, stored) = match ask {
            Ask::Message {
                text,
                conversation: id,
            } => {
                let mut history = match &id {
                    Some(id) => {
                        let c =
                            load(app, &caller.tenant, id, ChatError::UnknownConversation).await?;
                        mapped = foundry_conversation(&c.messages);
                        tail(&c.messages, runtime.history_messages)
                    }
                    None => Vec::new(),
                };
                new_count = 1;
                let stored = Stored {
                    conversation_id: id.unwrap_or(conversation),
                    new_messages: vec![StoredMessage::text("user", text.clone())],
                    response: None,
                };
                history.push(WireMessage::text("user", text.clone()));
                (text, history, None, Some(stored))
            }
            Ask::Messages {
                messages,
                model,
                overrides,
                extras,
            } => {
                apply(&runtime, &mut params, model.as_deref(), overrides, extras)?;
                let question = last_user(messages.iter().map(|m| (&m.role, &m.content)));
                (question, messages, model, None)
            }
            Ask::Items {
                input,
                instructions: asked,
                from,
                store,
                model,
                overrides,
                extras,
            } => {
                apply(&runtime, &mut params, model.as_deref(), overrides, extras)?;
                native_responses = pool.primary().has_responses();
                let (earlier, fork, previous_response_id) = match from {
                    None => (Vec::new(), false, None),
                    Some(Continue::Conversation(id)) => {
                        let c =
                            load(app, &caller.tenant, &id, ChatError::UnknownConversation).await?;
                        conversation = id;
                        mapped = foundry_conversation(&c.messages);
                        (c.messages, false, None)
                    }
                    Some(Continue::Response(rid)) => {
                        let c = load(
                            app,
                            &caller.tenant,
                            &rid.conversation,
                            ChatError::UnknownResponse,
                        )
                        .await?;
                        let at = responses::position(&c.messages, &rid)
                            .ok_or(ChatError::UnknownResponse)?;
                        let mut messages = c.messages;
                        // Continuing an earlier answer than the last forks the conversation.
                        let fork = at + 1 < messages.len();
                        messages.truncate(at + 1);
                        if !fork {
                            conversation = rid.conversation;
                            mapped = foundry_conversation(&messages);
                        }
                        (messages, fork, Some(rid.to_string()))
                    }
                };
                let question =
                    last_user(earlier.iter().chain(&input).map(|m| (&m.role, &m.content)));
                let mut history = tail(&earlier, runtime.history_messages);
                history.extend(input.iter().map(wire));
                new_count = input.len();
                if let Some(text) = asked.as_deref().filter(|t| !t.is_empty()) {
                    instructions = Some(WireMessage::text("system", text.to_owned()));
                }
                let stored = store.then(|| {
                    let mut new_messages = if fork { earlier } else { Vec::new() };
                    new_messages.extend(input);
                    Stored {
                        conversation_id: conversation,
                        new_messages,
                        response: Some(ResponseDraft {
                            previous_response_id,
                            instructions: asked,
                        }),
                    }
                });
                (question, history, model, stored)
            }
        };
        let (citations, system) = match &foundry {
            // The agent searches its own vector store and has its own instructions.
            Some(agent) => {
                native_responses = true;
                if stored.is_some() {
                    let id = match mapped {
                        Some(id) => {
                            // The Foundry conversation holds the earlier turns.
                            history = history.split_off(history.len().saturating_sub(new_count));
                            id
                        }
                        None => {
                            agent
                                .project
                                .create_conversation(caller.tenant.as_str())
                                .await?
                        }
                    };
                    params.conversation = Some(Arc::from(id.as_str()));
                }
                (Vec::new(), None)
            }
            None => {
                let citations = prompt::retrieve(app, &runtime, &caller.tenant, &question).await?;
                let system = prompt::system_message(&runtime, &citations);
                (citations, system)
            }
        };
        let mut messages: Vec<WireMessage> = system.into_iter().chain(instructions).collect();
        messages.extend(history);
        let prompt_estimate = messages
            .iter()
            .map(|m| crate::domain::usage::estimate_tokens(&m.content))
            .sum();
        let reservation = admit(app, &caller, &runtime, prompt_estimate).await?;
        Ok(Self {
            reservation,
            model: model.unwrap_or_else(|| runtime.model_name()),
            caller,
            runtime,
            pool,
            answered_by: None,
            messages,
            citations,
            params,
            prompt_estimate,
            stored,
            reply_id: uuid::Uuid::new_v4(),
            conversation,
            native_responses,
            started,
        })
    }

    /// Whether the turn continues (and is stored in) a SOPHIA conversation.
    pub fn conversation_id(&self) -> Option<ConversationId> {
        self.stored.as_ref().map(|s| s.conversation_id)
    }

    /// The whole answer, recorded.
    pub async fn complete(mut self, app: &App) -> Result<Answer, ChatError> {
        let standing = self.reservation.standing;
        let (completion, entry) = app
            .models
            .complete_on(
                &self.pool,
                &self.messages,
                &self.params,
                self.native_responses,
            )
            .await
            .map_err(|e| ChatError::from(e).admitted(standing))?;
        self.answered_by = entry.name.clone();
        Ok(self
            .finish(
                app,
                Ending {
                    content: completion.content,
                    usage: Some(completion.usage),
                    model: Some(completion.model).filter(|m| !m.is_empty()),
                    finish_reason: completion.finish_reason,
                    tool_calls: completion.tool_calls,
                    refusal: completion.refusal,
                    filters: completion.filters,
                    citations: completion.citations,
                },
            )
            .await)
    }

    /// The usage of an answer: what the upstream reported, else the estimate.
    fn usage(&self, reported: Option<WireUsage>, answer: &str) -> Usage {
        Usage::settle(reported.map(Usage::from), self.prompt_estimate, answer)
    }

    /// Records a finished turn (both messages of a stored conversation, the usage) and says
    /// how it ended. Recording failures are logged, not returned: the caller has its answer.
    async fn finish(mut self, app: &App, end: Ending) -> Answer {
        if !end.citations.is_empty() {
            self.citations = end.citations;
        }
        let usage = if end.tool_calls.is_empty() {
            self.usage(end.usage, &end.content)
        } else {
            let mut written = end.content.clone();
            for call in &end.tool_calls {
                written.push_str(&call.function.name);
                written.push_str(&call.function.arguments);
            }
            self.usage(end.usage, &written)
        };
        app.usage
            .record(&self.caller.tenant, usage, self.answered_by.as_ref());
        self.reservation.settle(usage.total_tokens);
        self.metrics(usage, end.model.as_deref(), true);
        let model = end.model.unwrap_or(self.model);
        let finish_reason = end.finish_reason.unwrap_or_else(|| "stop".into());
        let saved = match self.stored {
            Some(stored) => {
                let mut reply = StoredMessage::text("assistant", end.content.clone());
                reply.id = self.reply_id;
                reply.citations = self.citations.clone();
                reply.tool_calls = end.tool_calls.clone();
                reply.foundry_conversation = self.params.conversation.as_deref().map(str::to_owned);
                reply.response = stored.response.as_ref().map(|draft| {
                    let incomplete_reason = responses::incomplete_reason(&finish_reason);
                    Box::new(ResponseRecord {
                        model: model.clone(),
                        usage,
                        status: if incomplete_reason.is_some() {
                            "incomplete"
                        } else {
                            "completed"
                        }
                        .into(),
                        incomplete_reason: incomplete_reason.map(str::to_owned),
                        previous_response_id: draft.previous_response_id.clone(),
                        instructions: draft.instructions.clone(),
                        refusal: end.refusal.clone(),
                    })
                });
                Some(save(app, &self.caller, stored, reply).await)
            }
            None => None,
        };
        Answer {
            content: end.content,
            usage,
            model,
            finish_reason,
            citations: self.citations,
            tool_calls: end.tool_calls,
            refusal: end.refusal,
            filters: end.filters,
            saved,
        }
    }

    /// Records the tokens of a turn that failed part-way (nothing is stored).
    fn fail(&self, app: &App, reported: Option<WireUsage>, partial: &str) {
        let usage = self.usage(reported, partial);
        app.usage
            .record(&self.caller.tenant, usage, self.answered_by.as_ref());
        self.reservation.settle(usage.total_tokens);
        self.metrics(usage, None, false);
    }

    /// The turn in the company's metrics (tokens by instance and model, outcome, latency).
    fn metrics(&self, usage: Usage, model: Option<&str>, ok: bool) {
        if !crate::telemetry::enabled() {
            return;
        }
        crate::telemetry::metrics::turn(&crate::telemetry::metrics::TurnRecord {
            owner: &self.runtime.owner,
            model: model.unwrap_or(&self.model),
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            duration_ms: self.started.elapsed().as_secs_f64() * 1000.0,
            ok,
        });
    }
}

/// Where `caller`'s company stands against its limits, for an answer that admits nothing
/// (its `x-ratelimit-*` headers).
pub async fn standing(app: &App, caller: &Caller) -> Result<crate::limits::Standing, ChatError> {
    let runtime = app
        .runtimes
        .get(&app.store, &app.secrets, &caller.tenant, &caller.instance)
        .await?;
    Ok(standing_of(app, &runtime).await)
}

/// Where the company of `runtime` stands against its limits.
async fn standing_of(app: &App, runtime: &TenantRuntime) -> crate::limits::Standing {
    app.limits
        .current(
            app.store.as_ref(),
            &runtime.instance.tenant_id,
            runtime.instance.settings.limits(),
        )
        .await
}

/// Admits a request of `caller` expected to use `estimate` tokens against its company's
/// limits; the first refusal of a budget in its window is audited.
pub(crate) async fn admit(
    app: &App,
    caller: &Caller,
    runtime: &TenantRuntime,
    estimate: u64,
) -> Result<crate::limits::Reservation, ChatError> {
    let limits = runtime.instance.settings.limits();
    match app
        .limits
        .admit(app.store.as_ref(), &caller.tenant, limits, estimate)
        .await
    {
        Ok(reservation) => Ok(reservation),
        Err(refused) => Err(refusal(app, caller, limits, refused).await),
    }
}

/// A refusal by the company's limits, logged (and audited, the first of a budget in its
/// window).
async fn refusal(
    app: &App,
    caller: &Caller,
    limits: crate::domain::settings::Limits,
    refused: crate::limits::Refused,
) -> ChatError {
    tracing::info!(tenant.id = %caller.tenant, limit = refused.which.name(), "request refused: {}", refused.detail());
    if refused.announce(app.store.as_ref(), &caller.tenant).await {
        let entry = crate::domain::AuditEntry::new(
            caller.tenant.clone(),
            crate::domain::audit::action::LIMIT_EXHAUSTED,
            format!("client:{}", caller.tenant),
            crate::domain::AuditOutcome::Failure,
        )
        .instance(caller.instance)
        .details(serde_json::json!({
            "limit": refused.which.name(),
            "value": limits.named(refused.which.name()),
            "resetsInSeconds": refused.retry_after_secs,
        }));
        app.audit(entry).await;
    }
    ChatError::OverLimit(Box::new(refused))
}

/// How a finished upstream answer ended, before it is recorded.
struct Ending {
    content: String,
    usage: Option<WireUsage>,
    model: Option<String>,
    finish_reason: Option<String>,
    tool_calls: Vec<ToolCall>,
    refusal: Option<String>,
    filters: Option<Box<crate::llm::wire::ContentFilters>>,
    /// A Foundry agent's citations (its file search ran upstream).
    citations: Vec<Citation>,
}

/// A `/v1` caller's model (one the instance allows), sampling and extras over the instance's.
fn apply(
    runtime: &TenantRuntime,
    params: &mut ChatParams,
    model: Option<&str>,
    overrides: Overrides,
    extras: Option<Arc<ChatExtras>>,
) -> Result<(), ChatError> {
    if let Some(model) = model
        && !runtime.allowed_models.is_empty()
        && !runtime.allowed_models.iter().any(|m| m == model)
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
    params.extras = extras;
    Ok(())
}

/// The last user message's text (what the knowledge is searched for).
fn last_user<'a>(
    mut messages: impl DoubleEndedIterator<Item = (&'a String, &'a String)>,
) -> String {
    messages
        .rfind(|(role, _)| *role == "user")
        .map(|(_, content)| content.clone())
        .unwrap_or_default()
}

/// One of the tenant's conversations (`missing` when it has none by that id).
async fn load(
    app: &App,
    tenant: &TenantId,
    id: &ConversationId,
    missing: ChatError,
) -> Result<crate::domain::Conversation, ChatError> {
    app.store
        .get_conversation(tenant, id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => missing,
            other => other.into(),
        })
}

/// The Foundry conversation a stored conversation maps to (its latest answer's).
fn foundry_conversation(messages: &[StoredMessage]) -> Option<String> {
    messages
        .iter()
        .rev()
        .find_map(|m| m.foundry_conversation.clone())
}

/// The last `keep` messages, as sent upstream.
fn tail(messages: &[StoredMessage], keep: usize) -> Vec<WireMessage> {
    let skip = messages.len().saturating_sub(keep);
    messages[skip..].iter().map(wire).collect()
}

/// A stored message as sent upstream.
fn wire(m: &StoredMessage) -> WireMessage {
    // A refused answer is sent back as what the model said.
    let refusal = m.response.as_ref().and_then(|r| r.refusal.as_ref());
    WireMessage {
        role: m.role.clone(),
        content: match refusal {
            Some(r) if m.content.is_empty() => r.clone(),
            _ => m.content.clone(),
        },
        tool_calls: m.tool_calls.clone(),
        tool_call_id: m.tool_call_id.clone(),
    }
}

/// Appends a turn's messages and its answer to its conversation.
async fn save(app: &App, caller: &Caller, stored: Stored, reply: StoredMessage) -> Saved {
    let message_id = reply.id;
    let mut messages = stored.new_messages;
    messages.push(reply);
    let (tenant, conversation_id) = (&caller.tenant, stored.conversation_id);
    let history_trimmed = match app
        .store
        .append_conversation(
            tenant,
            &conversation_id,
            &caller.instance,
            &messages,
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
