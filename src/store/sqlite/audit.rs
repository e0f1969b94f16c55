//! SQLite: the audit log: append-only, newest first.

use async_trait::async_trait;
use rusqlite::params;

use super::{Query, SqliteStore, encode, map_err};
use crate::domain::AuditEntry;
use crate::store::{
    AuditFilter, AuditStore, Page, PageRequest, StoreError, StoreResult, TenantScope,
    decode_cursor, into_page, page_limit, sort_key,
};

#[async_trait]
impl AuditStore for SqliteStore {
    async fn append_audit(&self, entry: &AuditEntry) -> StoreResult<()> {
        let entry = entry.clone();
        self.run(move |conn| {
            conn.execute(
                "INSERT INTO audit_logs (id, tenant_id, action, instance_id, time, doc)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    entry.id.to_string(),
                    entry.tenant_id.as_str(),
                    entry.action,
                    entry.instance_id.map(|i| i.to_string()),
                    sort_key(&entry.time),
                    encode(&entry)?,
                ],
            )
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn list_audit(
        &self,
        scope: &TenantScope,
        filter: &AuditFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<AuditEntry>> {
        let scope = scope.clone();
        let filter = filter.clone();
        let limit = page_limit(page);
        let after = decode_cursor(page)?;
        self.run(move |conn| {
            let mut q = Query::new("SELECT doc, time, id FROM audit_logs");
            if let Some(tenant) = scope.tenant() {
                q.and("tenant_id = ?", &[tenant.as_str()]);
            }
            let instance = filter.instance_id.map(|i| i.to_string());
            if let Some(instance) = &instance {
                q.and("instance_id = ?", &[instance]);
            }
            if let Some(action) = &filter.action {
                q.and("action = ?", &[action]);
            }
            if let Some(c) = &after {
                q.and("(time < ? OR (time = ? AND id < ?))", &[&c.k, &c.k, &c.i]);
            }
            q.sql
                .push_str(&format!(" ORDER BY time DESC, id DESC LIMIT {}", limit + 1));
            let mut stmt = conn.prepare(&q.sql).map_err(map_err)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(&q.args), |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })
                .map_err(map_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(map_err)?;
            let rows = rows
                .into_iter()
                .map(|(doc, time, id)| {
                    let entry: AuditEntry = serde_json::from_str(&doc).map_err(|e| {
                        StoreError::Internal(anyhow::anyhow!("corrupt audit document: {e}"))
                    })?;
                    Ok((entry, time, id))
                })
                .collect::<StoreResult<Vec<_>>>()?;
            Ok(into_page(rows, limit))
        })
        .await
    }
}
