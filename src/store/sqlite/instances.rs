//! SQLite: agent instances: one document per instance, one live instance per (tenant, agent type).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::{Query, SqliteStore, encode, is_unique_violation, map_err};
use crate::domain::{AgentInstance, AgentType, InstanceId, TenantId};
use crate::store::{
    InstanceFilter, InstanceStore, Page, PageRequest, StoreError, StoreResult, TenantScope,
    decode_cursor, into_page, live_conflict, new_etag, page_limit, sort_key,
};

pub(super) fn decode_instance(
    doc: String,
    etag: String,
    last_used: Option<String>,
) -> StoreResult<AgentInstance> {
    let mut instance: AgentInstance = serde_json::from_str(&doc)
        .map_err(|e| StoreError::Internal(anyhow::anyhow!("corrupt instance document: {e}")))?;
    instance.etag = etag;
    instance.last_used_at = last_used
        .map(|s| DateTime::parse_from_rfc3339(&s).map(|d| d.with_timezone(&Utc)))
        .transpose()
        .map_err(|e| StoreError::Internal(anyhow::anyhow!("corrupt lastUsedAt: {e}")))?;
    Ok(instance)
}

#[async_trait]
impl InstanceStore for SqliteStore {
    async fn insert_instance(&self, instance: &AgentInstance) -> StoreResult<AgentInstance> {
        let mut instance = instance.clone();
        instance.etag = new_etag();
        self.run(move |conn| {
            let doc = encode(&instance)?;
            let result = conn.execute(
                "INSERT INTO agent_instances (id, tenant_id, agent_type, status, created_at, etag, last_used_at, doc)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    instance.id.to_string(),
                    instance.tenant_id.as_str(),
                    instance.agent_type.as_str(),
                    instance.status.as_str(),
                    sort_key(&instance.created_at),
                    instance.etag,
                    instance.last_used_at.as_ref().map(sort_key),
                    doc,
                ],
            );
            match result {
                Ok(_) => Ok(instance),
                Err(e) if is_unique_violation(&e) => Err(live_conflict(&instance)),
                Err(e) => Err(map_err(e)),
            }
        })
        .await
    }

    async fn get_instance(
        &self,
        scope: &TenantScope,
        id: &InstanceId,
    ) -> StoreResult<AgentInstance> {
        let scope = scope.clone();
        let id = id.to_string();
        self.run(move |conn| {
            let mut q = Query::new("SELECT doc, etag, last_used_at FROM agent_instances");
            q.and("id = ?", &[&id]);
            if let Some(tenant) = scope.tenant() {
                q.and("tenant_id = ?", &[tenant.as_str()]);
            }
            let row = conn
                .query_row(&q.sql, rusqlite::params_from_iter(&q.args), |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()
                .map_err(map_err)?;
            let (doc, etag, last_used) = row.ok_or(StoreError::NotFound)?;
            decode_instance(doc, etag, last_used)
        })
        .await
    }

    async fn find_live_instance(
        &self,
        tenant: &TenantId,
        agent_type: AgentType,
    ) -> StoreResult<Option<AgentInstance>> {
        let tenant = tenant.clone();
        self.run(move |conn| {
            let row: Option<(String, String, Option<String>)> = conn
                .query_row(
                    "SELECT doc, etag, last_used_at FROM agent_instances
                     WHERE tenant_id = ?1 AND agent_type = ?2 AND status <> 'DISABLED'",
                    params![tenant.as_str(), agent_type.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(map_err)?;
            row.map(|(doc, etag, last_used)| decode_instance(doc, etag, last_used))
                .transpose()
        })
        .await
    }

    async fn list_instances(
        &self,
        scope: &TenantScope,
        filter: &InstanceFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<AgentInstance>> {
        let scope = scope.clone();
        let filter = filter.clone();
        let limit = page_limit(page);
        let after = decode_cursor(page)?;
        self.run(move |conn| {
            let mut q =
                Query::new("SELECT doc, etag, last_used_at, created_at, id FROM agent_instances");
            if let Some(tenant) = scope.tenant() {
                q.and("tenant_id = ?", &[tenant.as_str()]);
            }
            if let Some(status) = filter.status {
                q.and("status = ?", &[status.as_str()]);
            }
            if let Some(c) = &after {
                q.and(
                    "(created_at > ? OR (created_at = ? AND id > ?))",
                    &[&c.k, &c.k, &c.i],
                );
            }
            q.sql
                .push_str(&format!(" ORDER BY created_at, id LIMIT {}", limit + 1));
            let mut stmt = conn.prepare(&q.sql).map_err(map_err)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(&q.args), |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                })
                .map_err(map_err)?
                .collect::<Result<Vec<(String, String, Option<String>, String, String)>, _>>()
                .map_err(map_err)?;
            let rows = rows
                .into_iter()
                .map(|(doc, etag, last_used, created, id)| {
                    Ok((decode_instance(doc, etag, last_used)?, created, id))
                })
                .collect::<StoreResult<Vec<_>>>()?;
            Ok(into_page(rows, limit))
        })
        .await
    }

    async fn replace_instance(
        &self,
        instance: &AgentInstance,
        if_match: &str,
    ) -> StoreResult<AgentInstance> {
        let mut instance = instance.clone();
        let if_match = if_match.to_owned();
        instance.etag = new_etag();
        self.run(move |conn| {
            let doc = encode(&instance)?;
            let result = conn.execute(
                "UPDATE agent_instances SET status = ?1, etag = ?2, doc = ?3
                 WHERE id = ?4 AND tenant_id = ?5 AND etag = ?6",
                params![
                    instance.status.as_str(),
                    instance.etag,
                    doc,
                    instance.id.to_string(),
                    instance.tenant_id.as_str(),
                    if_match,
                ],
            );
            match result {
                Ok(1) => {}
                Ok(_) => {
                    let exists: Option<i64> = conn
                        .query_row(
                            "SELECT 1 FROM agent_instances WHERE id = ?1 AND tenant_id = ?2",
                            params![instance.id.to_string(), instance.tenant_id.as_str()],
                            |r| r.get(0),
                        )
                        .optional()
                        .map_err(map_err)?;
                    return Err(if exists.is_some() {
                        StoreError::PreconditionFailed
                    } else {
                        StoreError::NotFound
                    });
                }
                Err(e) if is_unique_violation(&e) => return Err(live_conflict(&instance)),
                Err(e) => return Err(map_err(e)),
            }
            let last_used: Option<String> = conn
                .query_row(
                    "SELECT last_used_at FROM agent_instances WHERE id = ?1",
                    params![instance.id.to_string()],
                    |r| r.get(0),
                )
                .map_err(map_err)?;
            let etag = instance.etag.clone();
            decode_instance(encode(&instance)?, etag, last_used)
        })
        .await
    }

    async fn touch_instance(
        &self,
        tenant: &TenantId,
        id: &InstanceId,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let tenant = tenant.clone();
        let id = id.to_string();
        self.run(move |conn| {
            conn.execute(
                "UPDATE agent_instances SET last_used_at = ?1 WHERE id = ?2 AND tenant_id = ?3",
                params![sort_key(&at), id, tenant.as_str()],
            )
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }
}
