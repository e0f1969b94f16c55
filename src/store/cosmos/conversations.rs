//! Cosmos DB: conversations: bounded message histories per tenant.

use async_trait::async_trait;
use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::{Change, CosmosStore, read_doc, read_modify_write};
use crate::domain::{Conversation, ConversationId, InstanceId, StoredMessage, TenantId};
use crate::store::{ConversationStore, StoreError, StoreResult};

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConversationDoc {
    #[serde(flatten)]
    conversation: Conversation,
}

#[async_trait]
impl ConversationStore for CosmosStore {
    async fn get_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> StoreResult<Conversation> {
        read_doc(
            &self.conversations,
            tenant,
            &id.to_string(),
            |d: &ConversationDoc| &d.conversation.tenant_id,
            "conversation",
        )
        .await?
        .map(|r| r.doc.conversation)
        .ok_or(StoreError::NotFound)
    }

    async fn append_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        instance: &InstanceId,
        messages: &[StoredMessage],
        keep_last: usize,
    ) -> StoreResult<usize> {
        read_modify_write(
            &self.conversations,
            tenant,
            &id.to_string(),
            |d: &ConversationDoc| &d.conversation.tenant_id,
            "conversation",
            |current| {
                Box::pin(async move {
                    let now = Utc::now();
                    let mut conversation = match current {
                        Some(doc) => doc.conversation,
                        None => Conversation::start(*id, tenant.clone(), *instance, now),
                    };
                    let dropped = conversation.append(
                        messages,
                        keep_last,
                        crate::domain::conversation::MAX_CONVERSATION_BYTES,
                    );
                    conversation.updated_at = now;
                    Ok(Change::Write(ConversationDoc { conversation }, dropped))
                })
            },
        )
        .await
    }
}
