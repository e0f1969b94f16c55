//! Domain types, parsed once at the edge: an invalid value cannot be constructed.

pub mod audit;
pub mod authority;
pub mod conversation;
pub mod deployments;
pub mod ids;
pub mod instance;
pub mod limits;
pub mod refresh;
pub mod settings;
pub mod usage;

pub use audit::{AuditEntry, AuditOutcome};
pub use conversation::{
    Citation, Conversation, ConversationId, FunctionCall, ResponseRecord, StoredMessage, ToolCall,
    UsageRecord,
};
pub use ids::{InstanceId, TenantId};
pub use instance::{
    AgentInstance, AgentRef, AgentType, ConfigField, InstanceConfig, InstanceStatus, KeyHash,
    PreviousKey, Provider,
};
pub use refresh::{JobState, KnowledgeDocument, RefreshJob};
pub use settings::InstanceSettings;
pub use usage::Usage;
