//! Cosmos DB: agent instances: one document per instance, one live instance per (tenant, agent type).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{
    Change, CosmosStore, Read, Sql, collect, map_err, read_doc, read_modify_write, within,
};
use crate::domain::{AgentInstance, AgentType, InstanceId, InstanceStatus, TenantId};
use crate::store::{
    InstanceFilter, InstanceStore, Page, PageRequest, StoreError, StoreResult, TenantScope,
    decode_cursor, into_page, live_conflict, new_etag, page_limit, sort_key,
};

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InstanceDoc {
    #[serde(flatten)]
    instance: AgentInstance,
    doc_type: String,
    /// `createdAt` as a fixed-width string: the listing order.
    created_key: String,
    /// The agent type while the instance is live, `DISABLED:<id>` once disabled (unique).
    live_key: String,
}

const INSTANCE_DOC: &str = "instance";

impl InstanceDoc {
    fn new(instance: AgentInstance) -> Self {
        let live_key = if instance.status == InstanceStatus::Disabled {
            format!("DISABLED:{}", instance.id)
        } else {
            instance.agent_type.as_str().to_owned()
        };
        Self {
            doc_type: INSTANCE_DOC.into(),
            created_key: sort_key(&instance.created_at),
            live_key,
            instance,
        }
    }
}

fn from_instance_doc(read: Read<InstanceDoc>) -> AgentInstance {
    let mut instance = read.doc.instance;
    // `etag` is SOPHIA's own, stored in the document.
    if instance.etag.is_empty() {
        instance.etag = read.cosmos_etag;
    }
    instance
}

impl CosmosStore {
    async fn read_instance(
        &self,
        tenant: &TenantId,
        id: &InstanceId,
    ) -> StoreResult<Option<Read<InstanceDoc>>> {
        read_doc(
            &self.instances,
            tenant,
            &id.to_string(),
            |d: &InstanceDoc| &d.instance.tenant_id,
            "instance",
        )
        .await
    }

    async fn query_instances(
        &self,
        scope: &TenantScope,
        build: impl FnOnce(&mut Sql),
        limit: usize,
    ) -> StoreResult<Vec<AgentInstance>> {
        let mut sql = Sql::new(&format!("SELECT TOP {limit} * FROM c"));
        let feed = sql.scope(scope);
        sql.and("c.docType = @docType", &[("@docType", INSTANCE_DOC.into())]);
        build(&mut sql);
        let rows: Vec<Read<InstanceDoc>> =
            collect(&self.instances, sql.build()?, feed, limit).await?;
        let items = rows.into_iter().map(from_instance_doc).collect();
        Ok(within(scope, items, |i: &AgentInstance| &i.tenant_id))
    }
}

#[async_trait]
impl InstanceStore for CosmosStore {
    async fn insert_instance(&self, instance: &AgentInstance) -> StoreResult<AgentInstance> {
        let mut instance = instance.clone();
        instance.etag = new_etag();
        let doc = InstanceDoc::new(instance.clone());
        match self
            .instances
            .create_item(
                instance.tenant_id.as_str().to_owned(),
                &instance.id.to_string(),
                &doc,
                None,
            )
            .await
        {
            Ok(_) => Ok(instance),
            Err(e) if e.status().is_conflict() => Err(live_conflict(&instance)),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn get_instance(
        &self,
        scope: &TenantScope,
        id: &InstanceId,
    ) -> StoreResult<AgentInstance> {
        match scope.tenant() {
            Some(tenant) => self
                .read_instance(tenant, id)
                .await?
                .map(from_instance_doc)
                .ok_or(StoreError::NotFound),
            None => {
                let id = id.to_string();
                self.query_instances(scope, |sql| sql.and("c.id = @id", &[("@id", id.into())]), 1)
                    .await?
                    .into_iter()
                    .next()
                    .ok_or(StoreError::NotFound)
            }
        }
    }

    async fn find_live_instance(
        &self,
        tenant: &TenantId,
        agent_type: AgentType,
    ) -> StoreResult<Option<AgentInstance>> {
        let scope = TenantScope::Tenant(tenant.clone());
        Ok(self
            .query_instances(
                &scope,
                |sql| {
                    sql.and(
                        "c.liveKey = @liveKey",
                        &[("@liveKey", agent_type.as_str().into())],
                    )
                },
                1,
            )
            .await?
            .into_iter()
            .next())
    }

    async fn list_instances(
        &self,
        scope: &TenantScope,
        filter: &InstanceFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<AgentInstance>> {
        let limit = page_limit(page);
        let after = decode_cursor(page)?;
        let mut sql = Sql::new(&format!("SELECT TOP {} * FROM c", limit + 1));
        let feed = sql.scope(scope);
        sql.and("c.docType = @docType", &[("@docType", INSTANCE_DOC.into())]);
        if let Some(status) = filter.status {
            sql.and("c.status = @status", &[("@status", status.as_str().into())]);
        }
        if let Some(c) = &after {
            sql.and(
                "(c.createdKey > @afterKey OR (c.createdKey = @afterKey AND c.id > @afterId))",
                &[
                    ("@afterKey", c.k.clone().into()),
                    ("@afterId", c.i.clone().into()),
                ],
            );
        }
        sql.text.push_str(" ORDER BY c.createdKey ASC, c.id ASC");
        let rows: Vec<Read<InstanceDoc>> =
            collect(&self.instances, sql.build()?, feed, limit as usize + 1).await?;
        let rows = rows
            .into_iter()
            .map(|r| {
                let key = r.doc.created_key.clone();
                let instance = from_instance_doc(r);
                let id = instance.id.to_string();
                (instance, key, id)
            })
            .collect();
        let rows = within(scope, rows, |(i, _, _)| &i.tenant_id);
        Ok(into_page(rows, limit))
    }

    async fn replace_instance(
        &self,
        instance: &AgentInstance,
        if_match: &str,
    ) -> StoreResult<AgentInstance> {
        let id = instance.id.to_string();
        read_modify_write(
            &self.instances,
            &instance.tenant_id,
            &id,
            |d: &InstanceDoc| &d.instance.tenant_id,
            "instance",
            // A touch or another admin writing in between means: look again.
            |current| {
                Box::pin(async move {
                    let current = current.ok_or(StoreError::NotFound)?;
                    if current.instance.etag != if_match {
                        return Err(StoreError::PreconditionFailed);
                    }
                    let mut next = instance.clone();
                    next.etag = new_etag();
                    next.last_used_at = current.instance.last_used_at;
                    Ok(Change::Write(InstanceDoc::new(next.clone()), next))
                })
            },
        )
        .await
        .map_err(|e| match e {
            StoreError::AlreadyExists(_) => live_conflict(instance),
            e => e,
        })
    }

    async fn touch_instance(
        &self,
        tenant: &TenantId,
        id: &InstanceId,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let touched = read_modify_write(
            &self.instances,
            tenant,
            &id.to_string(),
            |d: &InstanceDoc| &d.instance.tenant_id,
            "instance",
            |current| {
                Box::pin(async move {
                    Ok(match current {
                        None => Change::Keep(()),
                        Some(mut doc) => {
                            doc.instance.last_used_at = Some(at);
                            Change::Write(doc, ())
                        }
                    })
                })
            },
        )
        .await;
        match touched {
            // Deleted in between: nothing to record.
            Err(StoreError::NotFound) => Ok(()),
            other => other,
        }
    }
}
