//! `POST /chat`: one conversational turn with the company's own model and knowledge, as JSON
//! or (`stream: true`) as Server-Sent Events: `delta` events (`{content}`), then one `done`
//! event (conversationId, messageId, citations, usage, model) or one `error` event.
//!
//! Callers authenticate with a service token, or — for clients of the original flow — with
//! `companyId` + `agentAccessKey` in the body, verified through the authenticator's
//! short-lived cache of verified keys so bcrypt does not run on every message. The turn itself
//! is the chat service's (`chat::Turn`); this handler only translates.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::chat::{Answer, Ask, Caller, Turn, TurnEvent};
use crate::domain::{AgentType, Citation, ConversationId, Usage};
use crate::error::ApiError;
use crate::http::extract::{ClientAddress, bearer, body_bytes, is_json, parse_json};
use crate::state::AppState;

/// Longest message accepted, in characters.
pub const MAX_MESSAGE_CHARS: usize = 32_000;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ChatBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    conversation_id: Option<ConversationId>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    company_id: Option<String>,
    #[serde(default)]
    agent_type: Option<String>,
    #[serde(default)]
    agent_access_key: Option<String>,
}

/// The answer of a non-streamed turn.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatAnswer {
    pub conversation_id: ConversationId,
    pub message_id: uuid::Uuid,
    pub answer: String,
    pub citations: Vec<Citation>,
    pub usage: Usage,
    pub model: String,
    /// How many of the conversation's oldest messages were dropped from its stored history
    /// in this turn to keep it within its bounds (absent when none).
    #[serde(skip_serializing_if = "is_zero")]
    pub history_trimmed: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The caller of a body-key request (`companyId` + `agentAccessKey`).
async fn body_key_caller(
    app: &AppState,
    client: &str,
    body: &ChatBody,
) -> Result<Caller, ApiError> {
    let (Some(company), Some(key)) = (&body.company_id, &body.agent_access_key) else {
        return Err(ApiError::Unauthenticated);
    };
    let agent_type = match body.agent_type.as_deref() {
        None => AgentType::Sophia,
        Some(raw) => AgentType::parse(raw)
            .ok_or_else(|| ApiError::validation("agentType", "must be SOPHIA"))?,
    };
    let (tenant, instance) = app.auth.body_key(client, company, agent_type, key).await?;
    Ok(Caller { tenant, instance })
}

/// `POST /chat`
pub async fn chat(
    State(app): State<AppState>,
    ClientAddress(client): ClientAddress,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let token = bearer(&parts)?.map(str::to_owned);
    if !is_json(&parts.headers) {
        return Err(ApiError::UnsupportedMediaType(
            "this endpoint takes Content-Type: application/json".into(),
        ));
    }
    let bytes = body_bytes(Request::from_parts(parts, body), &app).await?;
    let body: ChatBody = parse_json(&bytes)?;
    let caller = match &token {
        Some(token) => {
            if body.company_id.is_some() || body.agent_access_key.is_some() {
                return Err(ApiError::validation(
                    "companyId",
                    "with a bearer token the company comes from the token; do not send companyId or agentAccessKey",
                ));
            }
            Caller::from(app.auth.service_token(token).await?)
        }
        None => body_key_caller(&app, &client, &body).await?,
    };
    crate::telemetry::record_caller(
        caller.tenant.as_str(),
        &caller.instance,
        crate::domain::AgentType::Sophia.as_str(),
    );
    let message = body.message.as_deref().unwrap_or("").trim().to_owned();
    if message.is_empty() || message.chars().count() > MAX_MESSAGE_CHARS {
        return Err(ApiError::validation(
            "message",
            format!("must be 1-{MAX_MESSAGE_CHARS} characters"),
        ));
    }
    let ask = Ask::Message {
        text: message,
        conversation: body.conversation_id,
    };
    let turn = Turn::prepare(&app, caller, ask).await?;
    let standing = turn.reservation.standing;
    if !body.stream {
        let answer = turn.complete(&app).await?;
        return Ok(standing.on(Json(ChatAnswer::from(answer)).into_response()));
    }
    // Streamed: the first upstream content has arrived before we answer 200.
    let events = turn.stream(&app).await?;
    let events = futures_util::stream::unfold(events, |mut rx| async move {
        let event = loop {
            break match rx.recv().await? {
                // A refusal is what the model answered, to a `/chat` client.
                TurnEvent::Delta(content) | TurnEvent::Refusal(content) => Event::default()
                    .event("delta")
                    .json_data(json!({ "content": content })),
                TurnEvent::Done(answer) => {
                    Event::default().event("done").json_data(Done::from(answer))
                }
                // `/chat` offers the model no tools, and does not carry filter verdicts.
                TurnEvent::ToolCall(_) | TurnEvent::Filters(_) => continue,
                TurnEvent::Failed(error) => {
                    let error = ApiError::from(error);
                    Event::default()
                        .event("error")
                        .json_data(json!({ "code": error.code(), "message": error.to_string() }))
                }
            };
        };
        let event = event.unwrap_or_else(|_| Event::default().event("error"));
        Some((Ok::<_, Infallible>(event), rx))
    });
    Ok(standing.on(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()))
}

/// The `done` event of a streamed turn: the answer's metadata, not its text.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Done {
    conversation_id: Option<ConversationId>,
    message_id: Option<uuid::Uuid>,
    citations: Vec<Citation>,
    usage: Usage,
    model: String,
    #[serde(skip_serializing_if = "is_zero")]
    history_trimmed: usize,
}

impl From<Answer> for Done {
    fn from(a: Answer) -> Self {
        Self {
            conversation_id: a.saved.map(|s| s.conversation_id),
            message_id: a.saved.map(|s| s.message_id),
            citations: a.citations,
            usage: a.usage,
            model: a.model,
            history_trimmed: a.saved.map_or(0, |s| s.history_trimmed),
        }
    }
}

impl From<Answer> for ChatAnswer {
    fn from(a: Answer) -> Self {
        let saved = a.saved;
        Self {
            conversation_id: saved.map(|s| s.conversation_id).unwrap_or_default(),
            message_id: saved.map(|s| s.message_id).unwrap_or_default(),
            answer: match a.refusal {
                Some(refusal) if a.content.is_empty() => refusal,
                _ => a.content,
            },
            citations: a.citations,
            usage: a.usage,
            model: a.model,
            history_trimmed: saved.map_or(0, |s| s.history_trimmed),
        }
    }
}
