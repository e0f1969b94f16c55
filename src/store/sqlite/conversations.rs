//! SQLite: conversations: bounded message histories per tenant.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, encode, map_err};
use crate::domain::{Conversation, ConversationId, InstanceId, StoredMessage, TenantId};
use crate::store::{ConversationStore, StoreError, StoreResult, sort_key};

#[async_trait]
impl ConversationStore for SqliteStore {
    async fn get_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> StoreResult<Conversation> {
        let (tenant, id) = (tenant.clone(), id.to_string());
        self.run(move |conn| {
            let doc: Option<String> = conn
                .query_row(
                    "SELECT doc FROM conversations WHERE tenant_id = ?1 AND id = ?2",
                    params![tenant.as_str(), id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(map_err)?;
            let doc = doc.ok_or(StoreError::NotFound)?;
            serde_json::from_str(&doc)
                .map_err(|e| StoreError::Internal(anyhow::anyhow!("corrupt conversation: {e}")))
        })
        .await
    }

    async fn append_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        instance: &InstanceId,
        messages: &[StoredMessage],
        keep_last: usize,
    ) -> StoreResult<usize> {
        let (tenant, id, instance, messages) = (tenant.clone(), *id, *instance, messages.to_vec());
        self.run(move |conn| {
            let tx = conn.transaction().map_err(map_err)?;
            let existing: Option<String> = tx
                .query_row(
                    "SELECT doc FROM conversations WHERE tenant_id = ?1 AND id = ?2",
                    params![tenant.as_str(), id.to_string()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(map_err)?;
            let now = chrono::Utc::now();
            let mut conversation = match existing {
                Some(doc) => serde_json::from_str::<Conversation>(&doc)
                    .map_err(|e| StoreError::Internal(anyhow::anyhow!("corrupt conversation: {e}")))?,
                None => Conversation::start(id, tenant.clone(), instance, now),
            };
            let dropped = conversation.append(
                &messages,
                keep_last,
                crate::domain::conversation::MAX_CONVERSATION_BYTES,
            );
            conversation.updated_at = now;
            tx.execute(
                "INSERT INTO conversations (tenant_id, id, instance_id, updated_at, doc) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (tenant_id, id) DO UPDATE SET updated_at = excluded.updated_at, doc = excluded.doc",
                params![
                    tenant.as_str(),
                    id.to_string(),
                    instance.to_string(),
                    sort_key(&now),
                    encode(&conversation)?
                ],
            )
            .map_err(map_err)?;
            tx.commit().map_err(map_err)?;
            Ok(dropped)
        })
        .await
    }
}
