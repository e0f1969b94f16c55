//! SQLite: daily token usage per tenant.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::{Query, SqliteStore, map_err};
use crate::domain::limits::{LimitWindows, WindowAdd, WindowKeys};
use crate::domain::usage::{DeploymentUsage, Tally};
use crate::domain::{TenantId, UsageRecord};
use crate::store::{StoreError, StoreResult, TenantScope, UsageStore};

#[async_trait]
impl UsageStore for SqliteStore {
    async fn add_usage(
        &self,
        tenant: &TenantId,
        day: chrono::NaiveDate,
        total: Tally,
        deployments: &[(String, Tally)],
    ) -> StoreResult<()> {
        let tenant = tenant.clone();
        let deployments = deployments.to_vec();
        self.run(move |conn| {
            let tx = conn.transaction().map_err(map_err)?;
            let day = day.to_string();
            tx.execute(
                "INSERT INTO usage (tenant_id, day, prompt_tokens, completion_tokens, requests) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (tenant_id, day) DO UPDATE SET
                    prompt_tokens = prompt_tokens + excluded.prompt_tokens,
                    completion_tokens = completion_tokens + excluded.completion_tokens,
                    requests = requests + excluded.requests",
                params![tenant.as_str(), day, total.prompt_tokens as i64, total.completion_tokens as i64, total.requests as i64],
            )
            .map_err(map_err)?;
            for (name, share) in &deployments {
                tx.execute(
                    "INSERT INTO usage_deployments (tenant_id, day, deployment, prompt_tokens, completion_tokens, requests) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (tenant_id, day, deployment) DO UPDATE SET
                        prompt_tokens = prompt_tokens + excluded.prompt_tokens,
                        completion_tokens = completion_tokens + excluded.completion_tokens,
                        requests = requests + excluded.requests",
                    params![tenant.as_str(), day, name, share.prompt_tokens as i64, share.completion_tokens as i64, share.requests as i64],
                )
                .map_err(map_err)?;
            }
            tx.commit().map_err(map_err)?;
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

    async fn claim_window(&self, tenant: &TenantId, name: &str, window: i64) -> StoreResult<bool> {
        let (tenant, name) = (tenant.clone(), name.to_owned());
        self.run(move |conn| {
            // Inserts, or moves an older window's claim on; no change means already claimed.
            let changed = conn
                .execute(
                    "INSERT INTO window_claims (tenant_id, name, window) VALUES (?1, ?2, ?3)
                     ON CONFLICT (tenant_id, name) DO UPDATE SET window = excluded.window
                     WHERE window_claims.window < excluded.window",
                    params![tenant.as_str(), name, window],
                )
                .map_err(map_err)?;
            Ok(changed == 1)
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
            // Each day's deployment shares, by (tenant, day).
            let mut d = Query::new(
                "SELECT tenant_id, day, deployment, prompt_tokens, completion_tokens, requests FROM usage_deployments",
            );
            if let Some(tenant) = scope.tenant() {
                d.and("tenant_id = ?", &[tenant.as_str()]);
            }
            d.and("day >= ? AND day <= ?", &[&from, &to]);
            d.sql.push_str(" ORDER BY tenant_id, day, deployment LIMIT 100000");
            let mut stmt = conn.prepare(&d.sql).map_err(map_err)?;
            let mut shares: std::collections::HashMap<(String, String), Vec<DeploymentUsage>> =
                std::collections::HashMap::new();
            let share_rows = stmt
                .query_map(rusqlite::params_from_iter(&d.args), |r| {
                    Ok((
                        (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                        r.get::<_, String>(2)?,
                        Tally {
                            prompt_tokens: r.get::<_, i64>(3)? as u64,
                            completion_tokens: r.get::<_, i64>(4)? as u64,
                            requests: r.get::<_, i64>(5)? as u64,
                        },
                    ))
                })
                .map_err(map_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(map_err)?;
            for (key, name, tally) in share_rows {
                shares
                    .entry(key)
                    .or_default()
                    .push(DeploymentUsage::new(name, tally));
            }
            rows.into_iter()
                .map(|(tenant, day, p, c, n)| {
                    let deployments = shares.remove(&(tenant.clone(), day.clone())).unwrap_or_default();
                    Ok(UsageRecord {
                        deployments,
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
