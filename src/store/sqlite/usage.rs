//! SQLite: daily token usage per tenant.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::{Query, SqliteStore, map_err};
use crate::domain::limits::{LimitWindows, WindowAdd, WindowKeys};
use crate::domain::{TenantId, UsageRecord};
use crate::store::{StoreError, StoreResult, TenantScope, UsageStore};

#[async_trait]
impl UsageStore for SqliteStore {
    async fn add_usage(
        &self,
        tenant: &TenantId,
        day: chrono::NaiveDate,
        prompt_tokens: u64,
        completion_tokens: u64,
        requests: u64,
    ) -> StoreResult<()> {
        let tenant = tenant.clone();
        self.run(move |conn| {
            conn.execute(
                "INSERT INTO usage (tenant_id, day, prompt_tokens, completion_tokens, requests) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (tenant_id, day) DO UPDATE SET
                    prompt_tokens = prompt_tokens + excluded.prompt_tokens,
                    completion_tokens = completion_tokens + excluded.completion_tokens,
                    requests = requests + excluded.requests",
                params![tenant.as_str(), day.to_string(), prompt_tokens as i64, completion_tokens as i64, requests as i64],
            )
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn add_to_limit_windows(
        &self,
        tenant: &TenantId,
        keys: WindowKeys,
        add: WindowAdd,
    ) -> StoreResult<LimitWindows> {
        let tenant = tenant.clone();
        self.run(move |conn| {
            let tx = conn.transaction().map_err(map_err)?;
            let stored: Option<String> = tx
                .query_row(
                    "SELECT doc FROM limit_windows WHERE tenant_id = ?1",
                    params![tenant.as_str()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(map_err)?;
            let current = match stored {
                Some(doc) => serde_json::from_str::<LimitWindows>(&doc).map_err(|e| {
                    StoreError::Internal(anyhow::anyhow!("corrupt limit windows: {e}"))
                })?,
                None => LimitWindows::default(),
            };
            let next = current.plus(keys, add);
            if next != current {
                tx.execute(
                    "INSERT INTO limit_windows (tenant_id, doc) VALUES (?1, ?2)
                     ON CONFLICT (tenant_id) DO UPDATE SET doc = excluded.doc",
                    params![tenant.as_str(), super::encode(&next)?],
                )
                .map_err(map_err)?;
            }
            tx.commit().map_err(map_err)?;
            Ok(next)
        })
        .await
    }

    async fn list_usage(
        &self,
        scope: &TenantScope,
        from: chrono::NaiveDate,
        to: chrono::NaiveDate,
    ) -> StoreResult<Vec<UsageRecord>> {
        let scope = scope.clone();
        self.run(move |conn| {
            let mut q = Query::new(
                "SELECT tenant_id, day, prompt_tokens, completion_tokens, requests FROM usage",
            );
            if let Some(tenant) = scope.tenant() {
                q.and("tenant_id = ?", &[tenant.as_str()]);
            }
            let (from, to) = (from.to_string(), to.to_string());
            q.and("day >= ? AND day <= ?", &[&from, &to]);
            q.sql.push_str(" ORDER BY tenant_id, day LIMIT 10000");
            let mut stmt = conn.prepare(&q.sql).map_err(map_err)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(&q.args), |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                })
                .map_err(map_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(map_err)?;
            rows.into_iter()
                .map(|(tenant, day, p, c, n)| {
                    Ok(UsageRecord {
                        tenant_id: TenantId::parse(&tenant).map_err(|e| {
                            StoreError::Internal(anyhow::anyhow!("corrupt usage tenant: {e}"))
                        })?,
                        day: day.parse().map_err(|e| {
                            StoreError::Internal(anyhow::anyhow!("corrupt usage day: {e}"))
                        })?,
                        prompt_tokens: p as u64,
                        completion_tokens: c as u64,
                        total_tokens: (p + c) as u64,
                        requests: n as u64,
                    })
                })
                .collect()
        })
        .await
    }
}
