//! Conversations (`conversations`, partition key `tenantId`) and token usage (`usage`).

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::{InstanceId, TenantId};

/// A conversation id (a UUID). Ids are issued by SOPHIA; a client cannot name a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConversationId(uuid::Uuid);

impl ConversationId {
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    pub fn uuid(&self) -> uuid::Uuid {
        self.0
    }

    pub fn parse(raw: &str) -> Result<Self, super::ids::IdError> {
        uuid::Uuid::parse_str(raw)
            .map(Self)
            .map_err(|_| super::ids::IdError("conversationId must be a UUID"))
    }
}

impl Default for ConversationId {
    fn default() -> Self {
        Self::new()
    }
}

impl TryFrom<String> for ConversationId {
    type Error = super::ids::IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<ConversationId> for String {
    fn from(value: ConversationId) -> Self {
        value.0.to_string()
    }
}

impl std::fmt::Display for ConversationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A knowledge passage an answer drew on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Citation {
    pub document_id: String,
    pub title: String,
    pub snippet: String,
    pub score: f64,
}

/// A function call a model asked for (OpenAI's `tool_calls[]` item; the same shape on the
/// wire and in a stored conversation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    pub function: FunctionCall,
}

fn function_kind() -> String {
    "function".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as the model wrote them (JSON text, not checked).
    #[serde(default)]
    pub arguments: String,
}

/// What `/v1/responses` keeps of a stored response beside its message (the response id is
/// the conversation's and the message's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseRecord {
    pub model: String,
    pub usage: super::Usage,
    /// `completed` or `incomplete`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_response_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// The model's refusal, when it refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
}

/// One turn of a conversation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredMessage {
    pub id: uuid::Uuid,
    /// `user` or `assistant` (and, from `/v1/responses`, `tool` for a function's output).
    pub role: String,
    pub content: String,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub citations: Vec<Citation>,
    /// The function calls an assistant message asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// A `/v1/responses` answer's own record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Box<ResponseRecord>>,
    /// On a `foundry` instance, the Foundry conversation this SOPHIA conversation maps to
    /// (kept on each answer; the latest answer's is the mapping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foundry_conversation: Option<String>,
}

impl StoredMessage {
    /// A plain text message, now.
    pub fn text(role: &str, content: String) -> Self {
        Self {
            id: uuid::Uuid::new_v4(),
            role: role.into(),
            content,
            at: Utc::now(),
            citations: vec![],
            tool_calls: vec![],
            tool_call_id: None,
            response: None,
            foundry_conversation: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conversation {
    pub id: ConversationId,
    pub tenant_id: TenantId,
    pub instance_id: InstanceId,
    pub messages: Vec<StoredMessage>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Most bytes a stored conversation takes, serialised. Cosmos DB refuses an item over 2 MB;
/// this leaves room for its system properties and the document wrapper.
pub const MAX_CONVERSATION_BYTES: usize = 1_500_000;

/// Marks a message cut to fit the bound (only a single message larger than it is cut).
const CUT_MARK: &str = " […]";

impl Conversation {
    /// A conversation with no messages yet, started at `now`.
    pub fn start(
        id: ConversationId,
        tenant_id: TenantId,
        instance_id: InstanceId,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            tenant_id,
            instance_id,
            messages: Vec::new(),
            created_at: now,
            updated_at: now,
        }
    }

    /// Appends `messages`, then drops the oldest until at most `keep_last` remain and the
    /// serialised conversation fits `max_bytes`. Returns how many messages were dropped, so
    /// the caller can say so: nothing is lost silently.
    pub fn append(
        &mut self,
        messages: &[StoredMessage],
        keep_last: usize,
        max_bytes: usize,
    ) -> usize {
        self.messages.extend_from_slice(messages);
        let mut dropped = self.messages.len().saturating_sub(keep_last.max(1));
        self.messages.drain(..dropped);
        let size = |m: &StoredMessage| serde_json::to_vec(m).map(|v| v.len() + 1).unwrap_or(0);
        let overhead = {
            let empty = Self {
                messages: Vec::new(),
                ..self.clone_header()
            };
            serde_json::to_vec(&empty).map(|v| v.len()).unwrap_or(0)
        };
        let mut total: usize = overhead + self.messages.iter().map(size).sum::<usize>();
        while total > max_bytes && self.messages.len() > 1 {
            total -= size(&self.messages[0]);
            self.messages.remove(0);
            dropped += 1;
        }
        if total > max_bytes
            && let Some(last) = self.messages.last_mut()
        {
            // One message alone is over the bound: keep its beginning.
            let room = max_bytes.saturating_sub(overhead + 4096) / 2;
            let mut cut = room.min(last.content.len());
            while !last.content.is_char_boundary(cut) {
                cut -= 1;
            }
            last.content.truncate(cut);
            last.content.push_str(CUT_MARK);
            last.citations.truncate(8);
        }
        dropped
    }

    fn clone_header(&self) -> Self {
        Self {
            id: self.id,
            tenant_id: self.tenant_id.clone(),
            instance_id: self.instance_id,
            messages: Vec::new(),
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// Tokens one tenant used on one day (UTC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageRecord {
    pub tenant_id: TenantId,
    pub day: NaiveDate,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub requests: u64,
    /// How much of it each failover deployment answered (absent for an instance with one
    /// deployment).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deployments: Vec<super::usage::DeploymentUsage>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: usize, bytes: usize) -> StoredMessage {
        StoredMessage::text(
            if n.is_multiple_of(2) {
                "user"
            } else {
                "assistant"
            },
            format!("{n}:{}", "x".repeat(bytes)),
        )
    }

    fn conversation() -> Conversation {
        Conversation {
            id: ConversationId::new(),
            tenant_id: TenantId::parse("acme").unwrap(),
            instance_id: InstanceId::new(),
            messages: vec![],
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn conversations_stay_within_their_byte_bound_dropping_the_oldest() {
        let mut c = conversation();
        let mut dropped = 0;
        for n in 0..40 {
            dropped += c.append(&[message(n, 100_000)], 200, MAX_CONVERSATION_BYTES);
            assert!(serde_json::to_vec(&c).unwrap().len() <= MAX_CONVERSATION_BYTES);
        }
        assert!(dropped >= 25, "{dropped}");
        assert_eq!(c.messages.len() + dropped, 40);
        assert!(
            c.messages.last().unwrap().content.starts_with("39:"),
            "the newest stays"
        );
        // The count bound still applies.
        let mut c = conversation();
        let dropped: usize = (0..10)
            .map(|n| c.append(&[message(n, 10)], 4, MAX_CONVERSATION_BYTES))
            .sum();
        assert_eq!((c.messages.len(), dropped), (4, 6));
    }

    #[test]
    fn a_single_oversized_message_is_cut_not_refused() {
        let mut c = conversation();
        c.append(&[message(0, 3_000_000)], 200, MAX_CONVERSATION_BYTES);
        assert_eq!(c.messages.len(), 1);
        assert!(c.messages[0].content.ends_with(CUT_MARK));
        assert!(serde_json::to_vec(&c).unwrap().len() <= MAX_CONVERSATION_BYTES);
        let mut c = conversation();
        let wide = StoredMessage {
            content: "é".repeat(1_000_000),
            ..message(1, 0)
        };
        c.append(&[wide], 200, MAX_CONVERSATION_BYTES);
        assert!(serde_json::to_vec(&c).unwrap().len() <= MAX_CONVERSATION_BYTES);
    }
}
