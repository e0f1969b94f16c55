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

/// One turn of a conversation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredMessage {
    pub id: uuid::Uuid,
    /// `user` or `assistant`.
    pub role: String,
    pub content: String,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub citations: Vec<Citation>,
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
}
