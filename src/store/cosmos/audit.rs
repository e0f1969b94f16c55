//! Cosmos DB: the audit log: append-only, newest first.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{CosmosStore, Sql, collect, map_err, within};
use crate::domain::AuditEntry;
use crate::store::{
    AuditFilter, AuditStore, Page, PageRequest, StoreResult, TenantScope, decode_cursor, into_page,
    page_limit, sort_key,
};

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuditDoc {
    #[serde(flatten)]
    entry: AuditEntry,
    time_key: String,
}

#[async_trait]
impl AuditStore for CosmosStore {
    async fn append_audit(&self, entry: &AuditEntry) -> StoreResult<()> {
        let doc = AuditDoc {
            time_key: sort_key(&entry.time),
            entry: entry.clone(),
        };
        self.audit
            .create_item(
                entry.tenant_id.as_str().to_owned(),
                &entry.id.to_string(),
                &doc,
                None,
            )
            .await
            .map(|_| ())
            .map_err(map_err)
    }

    async fn list_audit(
        &self,
        scope: &TenantScope,
        filter: &AuditFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<AuditEntry>> {
        let limit = page_limit(page);
        let after = decode_cursor(page)?;
        let mut sql = Sql::new(&format!("SELECT TOP {} * FROM c", limit + 1));
        let feed = sql.scope(scope);
        if let Some(instance) = filter.instance_id {
            sql.and(
                "c.instanceId = @instanceId",
                &[("@instanceId", instance.to_string().into())],
            );
        }
        if let Some(action) = &filter.action {
            sql.and("c.action = @action", &[("@action", action.clone().into())]);
        }
        if let Some(c) = &after {
            sql.and(
                "(c.timeKey < @afterKey OR (c.timeKey = @afterKey AND c.id < @afterId))",
                &[
                    ("@afterKey", c.k.clone().into()),
                    ("@afterId", c.i.clone().into()),
                ],
            );
        }
        sql.text.push_str(" ORDER BY c.timeKey DESC, c.id DESC");
        let rows: Vec<AuditDoc> =
            collect(&self.audit, sql.build()?, feed, limit as usize + 1).await?;
        let rows = rows
            .into_iter()
            .map(|d| {
                let id = d.entry.id.to_string();
                (d.entry, d.time_key, id)
            })
            .collect();
        let rows = within(scope, rows, |(e, _, _)| &e.tenant_id);
        Ok(into_page(rows, limit))
    }
}
