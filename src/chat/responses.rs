//! Stored `/v1/responses` answers. A stored response is the assistant message of one of the
//! tenant's conversations, so its id names both (`resp_` + the conversation's and the
//! message's UUIDs): reading one is a tenant-scoped conversation read, and another tenant's
//! id finds nothing.

use crate::chat::{Caller, ChatError};
use crate::domain::{ConversationId, StoredMessage};
use crate::state::App;

/// A response id: its conversation and its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseId {
    pub conversation: ConversationId,
    pub message: uuid::Uuid,
}

impl ResponseId {
    /// Parses `resp_<32 hex><32 hex>`; anything else is no response of ours.
    pub fn parse(raw: &str) -> Option<Self> {
        let hex = raw.strip_prefix("resp_")?;
        if hex.len() != 64 || !hex.is_ascii() {
            return None;
        }
        let conversation = uuid::Uuid::try_parse(&hex[..32]).ok()?;
        let message = uuid::Uuid::try_parse(&hex[32..]).ok()?;
        Some(Self {
            conversation: ConversationId::parse(&conversation.to_string()).ok()?,
            message,
        })
    }
}

impl std::fmt::Display for ResponseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "resp_{}{}",
            self.conversation.uuid().simple(),
            self.message.simple()
        )
    }
}

/// Why a response is `incomplete` (OpenAI's `incomplete_details.reason`), from how the model
/// stopped; `None` when it completed.
pub fn incomplete_reason(finish_reason: &str) -> Option<&'static str> {
    match finish_reason {
        "length" => Some("max_output_tokens"),
        "content_filter" => Some("content_filter"),
        _ => None,
    }
}

/// One of the caller's stored responses: its message (with its record).
pub async fn get(app: &App, caller: &Caller, id: &ResponseId) -> Result<StoredMessage, ChatError> {
    let mut conversation = super::load(
        app,
        &caller.tenant,
        &id.conversation,
        ChatError::UnknownResponse,
    )
    .await?;
    let at = position(&conversation.messages, id).ok_or(ChatError::UnknownResponse)?;
    Ok(conversation.messages.swap_remove(at))
}

/// Where the response `id` stands in its conversation's messages.
pub(super) fn position(messages: &[StoredMessage], id: &ResponseId) -> Option<usize> {
    messages
        .iter()
        .position(|m| m.id == id.message && m.response.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_junk_is_none() {
        let id = ResponseId {
            conversation: ConversationId::new(),
            message: uuid::Uuid::new_v4(),
        };
        let text = id.to_string();
        assert_eq!(text.len(), 5 + 64);
        assert_eq!(ResponseId::parse(&text), Some(id));
        for junk in [
            "",
            "resp_",
            "resp_xyz",
            &text[1..],
            &format!("{text}0"),
            "resp_ééééééééééééééééééééééééééééééééé",
        ] {
            assert_eq!(ResponseId::parse(junk), None, "{junk}");
        }
    }
}
