//! SQLite: the knowledge manifest: what the index holds of each source document.

use async_trait::async_trait;
use rusqlite::params;

use super::{SqliteStore, encode, map_err};
use crate::domain::{KnowledgeDocument, TenantId};
use crate::store::{ManifestStore, StoreError, StoreResult};

#[async_trait]
impl ManifestStore for SqliteStore {
    async fn list_knowledge_documents(
        &self,
        tenant: &TenantId,
    ) -> StoreResult<Vec<KnowledgeDocument>> {
        let tenant = tenant.clone();
        self.run(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT doc FROM knowledge_documents WHERE tenant_id = ?1 ORDER BY document_id",
                )
                .map_err(map_err)?;
            let rows = stmt
                .query_map(params![tenant.as_str()], |r| r.get::<_, String>(0))
                .map_err(map_err)?;
            let mut out = Vec::new();
            for row in rows {
                let doc = row.map_err(map_err)?;
                let entry: KnowledgeDocument = serde_json::from_str(&doc).map_err(|e| {
                    StoreError::Internal(anyhow::anyhow!("corrupt knowledge document: {e}"))
                })?;
                if entry.tenant_id == tenant {
                    out.push(entry);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn put_knowledge_document(&self, doc: &KnowledgeDocument) -> StoreResult<()> {
        let doc = doc.clone();
        self.run(move |conn| {
            conn.execute(
                "INSERT INTO knowledge_documents (tenant_id, document_id, doc) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tenant_id, document_id) DO UPDATE SET doc = excluded.doc",
                params![doc.tenant_id.as_str(), doc.document_id, encode(&doc)?],
            )
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn delete_knowledge_document(
        &self,
        tenant: &TenantId,
        document_id: &str,
    ) -> StoreResult<()> {
        let (tenant, document_id) = (tenant.clone(), document_id.to_owned());
        self.run(move |conn| {
            conn.execute(
                "DELETE FROM knowledge_documents WHERE tenant_id = ?1 AND document_id = ?2",
                params![tenant.as_str(), document_id],
            )
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }
}
