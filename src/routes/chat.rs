//! `POST /chat`: one conversational turn with the company's own model and knowledge, as JSON
//! or (`stream: true`) as Server-Sent Events: `delta` events (`{content}`), then one `done`
//! event (conversationId, messageId, citations, usage, model) or one `error` event.
//!
//! Callers authenticate with a service token, or — for clients of the original flow — with
//! `companyId` + `agentAccessKey` in the body, verified through a short-lived cache of
//! verified keys so bcrypt does not run on every message.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::chat::{self, Caller, Usage};
use crate::domain::{AgentType, Citation, ConversationId, InstanceId, TenantId};
use crate::error::ApiError;
use crate::extract::{
    ClientAddress, bearer, body_bytes, check_live, is_json, parse_json, verify_service_token,
};
use crate::llm::StreamPart;
use crate::routes::token::authenticate_key;
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

/// What the verified-key cache remembers for (companyId, SHA-256 of the key).
#[derive(Clone)]
pub struct VerifiedKey {
    pub tenant: TenantId,
    pub instance: InstanceId,
    pub key_version: u32,
}

/// The cache key for a presented access key: its digest, never the key itself.
pub fn key_digest(company: &str, key: &str) -> (String, [u8; 32]) {
    (company.to_owned(), Sha256::digest(key.as_bytes()).into())
}

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
    let digest = key_digest(company, key);
    if let Some(hit) = app.verified_keys.get(&digest).await {
        // Still live with the same key version? (Disable and rotation bite here too.)
        match check_live(app, &hit.tenant, &hit.instance, hit.key_version).await {
            Ok(()) => {
                return Ok(Caller {
                    tenant: hit.tenant,
                    instance: hit.instance,
                });
            }
            Err(_) => app.verified_keys.invalidate(&digest).await,
        }
    }
    app.limit_by_address
        .check(client)
        .map_err(|retry_after_secs| ApiError::RateLimited { retry_after_secs })?;
    let instance = authenticate_key(app, client, company, agent_type, key, "chat").await?;
    let verified = VerifiedKey {
        tenant: instance.tenant_id.clone(),
        instance: instance.id,
        key_version: instance.key_version,
    };
    app.verified_keys.insert(digest, verified).await;
    Ok(Caller {
        tenant: instance.tenant_id,
        instance: instance.id,
    })
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
            let claims = verify_service_token(&app, token).await?;
            Caller {
                tenant: claims.company_id,
                instance: claims.sub,
            }
        }
        None => body_key_caller(&app, &client, &body).await?,
    };
    let message = body.message.as_deref().unwrap_or("").trim().to_owned();
    if message.is_empty() || message.chars().count() > MAX_MESSAGE_CHARS {
        return Err(ApiError::validation(
            "message",
            format!("must be 1-{MAX_MESSAGE_CHARS} characters"),
        ));
    }
    let turn = chat::prepare(&app, caller, message, body.conversation_id).await?;
    if !body.stream {
        let completion = chat::complete(&app, &turn).await?;
        let usage = turn.usage(Some(completion.usage), &completion.content);
        let (conversation_id, citations) = (turn.conversation_id, turn.citations.clone());
        let model = if completion.model.is_empty() {
            turn.runtime.model_name()
        } else {
            completion.model.clone()
        };
        let recorded = turn.record(&app, completion.content.clone(), usage).await;
        return Ok(Json(ChatAnswer {
            conversation_id,
            message_id: recorded.message_id,
            answer: completion.content,
            citations,
            usage,
            model,
            history_trimmed: recorded.history_trimmed,
        })
        .into_response());
    }

    // Streamed: the first upstream content has arrived before we answer 200.
    let mut upstream = chat::stream(&app, &turn).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(16);
    let task_app = app.clone();
    tokio::spawn(async move {
        let (mut answer, mut usage, mut model, mut client_gone, mut failure) =
            (String::new(), None, None, false, None);
        while let Some(part) = upstream.next().await {
            match part {
                Ok(StreamPart::Delta(d)) => {
                    if !client_gone {
                        let event = Event::default()
                            .event("delta")
                            .json_data(json!({ "content": d }));
                        if let Ok(event) = event
                            && tx.send(event).await.is_err()
                        {
                            // The client went away: keep reading so usage is still recorded.
                            client_gone = true;
                        }
                    }
                    answer.push_str(&d);
                }
                Ok(StreamPart::Usage(u)) => usage = Some(u),
                Ok(StreamPart::Model(m)) => model = Some(m),
                Ok(StreamPart::Finish(_)) => {}
                Err(e) => {
                    failure = Some(ApiError::from(e));
                    break;
                }
            }
        }
        let usage = turn.usage(usage, &answer);
        let (conversation_id, citations) = (turn.conversation_id, turn.citations.clone());
        let model = model.unwrap_or_else(|| turn.runtime.model_name());
        let event = match failure {
            Some(err) => {
                chat::record_usage(&task_app, &turn.caller.tenant, usage).await;
                tracing::warn!(tenant.id = %turn.caller.tenant, error.code = err.code(), "stream failed mid-answer: {err}");
                Event::default()
                    .event("error")
                    .json_data(json!({ "code": err.code(), "message": err.to_string() }))
            }
            None => {
                let recorded = turn.record(&task_app, answer, usage).await;
                let mut done = json!({
                    "conversationId": conversation_id, "messageId": recorded.message_id,
                    "citations": citations, "usage": usage, "model": model,
                });
                if recorded.history_trimmed > 0 {
                    done["historyTrimmed"] = json!(recorded.history_trimmed);
                }
                Event::default().event("done").json_data(done)
            }
        };
        if let Ok(event) = event {
            let _ = tx.send(event).await;
        }
    });
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|event| (Ok::<_, Infallible>(event), rx))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
