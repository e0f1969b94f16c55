//! Cosmos DB: the knowledge manifest: what the index holds of each source document.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{CosmosStore, Sql, collect, map_err, within};
use crate::domain::{KnowledgeDocument, TenantId};
use crate::store::{ManifestStore, StoreResult, TenantScope};

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc {
    id: String,
    #[serde(flatten)]
    entry: KnowledgeDocument,
    kind: String,
}

const DOCUMENT_KIND: &str = "document";

/// A manifest entry's document id: paths may hold characters Cosmos ids may not (`/`, `#`, `?`).
fn manifest_id(document_id: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(document_id.as_bytes());
    let hex: String = digest.iter().take(20).map(|b| format!("{b:02x}")).collect();
    format!("doc-{hex}")
}

#[async_trait]
impl ManifestStore for CosmosStore {
    async fn list_knowledge_documents(
        &self,
        tenant: &TenantId,
    ) -> StoreResult<Vec<KnowledgeDocument>> {
        let scope = TenantScope::Tenant(tenant.clone());
        let mut sql = Sql::new("SELECT * FROM c");
        let feed = sql.scope(&scope);
        sql.and("c.kind = @kind", &[("@kind", DOCUMENT_KIND.into())]);
        let docs: Vec<ManifestDoc> =
            collect(&self.refresh_jobs, sql.build()?, feed, usize::MAX).await?;
        let entries = docs.into_iter().map(|d| d.entry).collect();
        Ok(within(&scope, entries, |e: &KnowledgeDocument| {
            &e.tenant_id
        }))
    }

    async fn put_knowledge_document(&self, doc: &KnowledgeDocument) -> StoreResult<()> {
        let id = manifest_id(&doc.document_id);
        let item = ManifestDoc {
            id: id.clone(),
            entry: doc.clone(),
            kind: DOCUMENT_KIND.into(),
        };
        self.refresh_jobs
            .upsert_item(doc.tenant_id.as_str().to_owned(), &id, &item, None)
            .await
            .map(|_| ())
            .map_err(map_err)
    }

    async fn delete_knowledge_document(
        &self,
        tenant: &TenantId,
        document_id: &str,
    ) -> StoreResult<()> {
        match self
            .refresh_jobs
            .delete_item(tenant.as_str().to_owned(), &manifest_id(document_id), None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status().is_not_found() => Ok(()),
            Err(e) => Err(map_err(e)),
        }
    }
}
