//! Cosmos DB: daily token usage per tenant.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use super::{Change, CosmosStore, Sql, collect, read_modify_write, within};
use crate::domain::limits::{LimitWindows, WindowAdd, WindowKeys};
use crate::domain::usage::{DeploymentUsage, Tally};
use crate::domain::{TenantId, UsageRecord};
use crate::store::{StoreResult, TenantScope, UsageStore};

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct UsageDoc {
    id: String,
    pub(super) tenant_id: TenantId,
    day: NaiveDate,
    prompt_tokens: u64,
    completion_tokens: u64,
    requests: u64,
    /// Each failover deployment's share, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    deployments: BTreeMap<String, Tally>,
}

/// A company's limit windows: one document (`id: "limits"`) in its usage partition.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LimitDoc {
    id: String,
    tenant_id: TenantId,
    kind: String,
    #[serde(flatten)]
    windows: LimitWindows,
}

const LIMIT_DOC: &str = "limits";

/// The windows whose exhaustion the fleet has announced, by limit: one document
/// (`id: "window-claims"`) in the company's usage partition.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaimDoc {
    id: String,
    tenant_id: TenantId,
    kind: String,
    claims: BTreeMap<String, i64>,
}

const CLAIM_DOC: &str = "window-claims";

#[async_trait]
impl UsageStore for CosmosStore {
    async fn add_to_limit_windows(
        &self,
        tenant: &TenantId,
        keys: WindowKeys,
        add: WindowAdd,
    ) -> StoreResult<LimitWindows> {
        read_modify_write(
            &self.usage,
            tenant,
            LIMIT_DOC,
            |d: &LimitDoc| &d.tenant_id,
            "limit windows",
            |current| {
                Box::pin(async move {
                    let before = current.as_ref().map(|d| d.windows);
                    let next = before.unwrap_or_default().plus(keys, add);
                    if before == Some(next) {
                        return Ok(Change::Keep(next));
                    }
                    Ok(Change::Write(
                        LimitDoc {
                            id: LIMIT_DOC.into(),
                            tenant_id: tenant.clone(),
                            kind: LIMIT_DOC.into(),
                            windows: next,
                        },
                        next,
                    ))
                })
            },
        )
        .await
    }

    async fn add_usage(
        &self,
        tenant: &TenantId,
        day: NaiveDate,
        total: Tally,
        deployments: &[(String, Tally)],
    ) -> StoreResult<()> {
        let key = &day.to_string();
        read_modify_write(
            &self.usage,
            tenant,
            key,
            |d: &UsageDoc| &d.tenant_id,
            "usage",
            |current| {
                Box::pin(async move {
                    let mut doc = current.unwrap_or_else(|| UsageDoc {
                        id: key.clone(),
                        tenant_id: tenant.clone(),
                        day,
                        prompt_tokens: 0,
                        completion_tokens: 0,
                        requests: 0,
                        deployments: BTreeMap::new(),
                    });
                    doc.prompt_tokens += total.prompt_tokens;
                    doc.completion_tokens += total.completion_tokens;
                    doc.requests += total.requests;
                    for (name, share) in deployments {
                        doc.deployments
                            .entry(name.clone())
                            .or_default()
                            .merge(*share);
                    }
                    Ok(Change::Write(doc, ()))
                })
            },
        )
        .await
    }

    async fn claim_window(&self, tenant: &TenantId, name: &str, window: i64) -> StoreResult<bool> {
        read_modify_write(
            &self.usage,
            tenant,
            CLAIM_DOC,
            |d: &ClaimDoc| &d.tenant_id,
            "window claims",
            |current| {
                Box::pin(async move {
                    let mut doc = current.unwrap_or_else(|| ClaimDoc {
                        id: CLAIM_DOC.into(),
                        tenant_id: tenant.clone(),
                        kind: CLAIM_DOC.into(),
                        claims: BTreeMap::new(),
                    });
                    if doc.claims.get(name).is_some_and(|w| *w >= window) {
                        return Ok(Change::Keep(false));
                    }
                    doc.claims.insert(name.to_owned(), window);
                    Ok(Change::Write(doc, true))
                })
            },
        )
        .await
    }

    async fn list_usage(
        &self,
        scope: &TenantScope,
        from: NaiveDate,
        to: NaiveDate,
    ) -> StoreResult<Vec<UsageRecord>> {
        let mut sql = Sql::new("SELECT * FROM c");
        let feed = sql.scope(scope);
        sql.and(
            "IS_DEFINED(c.day) AND c.day >= @from AND c.day <= @to",
            &[
                ("@from", from.to_string().into()),
                ("@to", to.to_string().into()),
            ],
        );
        let rows: Vec<UsageDoc> = collect(&self.usage, sql.build()?, feed, super::MAX_SCAN).await?;
        let mut rows = within(scope, rows, |d: &UsageDoc| &d.tenant_id);
        rows.sort_by(|a, b| (a.tenant_id.as_str(), a.day).cmp(&(b.tenant_id.as_str(), b.day)));
        Ok(rows
            .into_iter()
            .map(|d| UsageRecord {
                tenant_id: d.tenant_id,
                day: d.day,
                prompt_tokens: d.prompt_tokens,
                completion_tokens: d.completion_tokens,
                total_tokens: d.prompt_tokens + d.completion_tokens,
                requests: d.requests,
                deployments: d
                    .deployments
                    .into_iter()
                    .map(|(name, tally)| DeploymentUsage::new(name, tally))
                    .collect(),
            })
            .collect())
    }
}
