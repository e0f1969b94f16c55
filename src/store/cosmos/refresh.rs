//! Cosmos DB: knowledge refresh jobs and the one-active-job-per-tenant slot.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Change, CosmosStore, Sql, collect, map_err, read_doc, read_modify_write, short};
use crate::domain::{JobState, RefreshJob, TenantId};
use crate::store::{RefreshJobStore, StoreError, StoreResult, TenantScope};

/// `refreshJobs` holds three kinds of document per tenant partition: jobs (`kind: "job"`, id =
/// the job id), the tenant's refresh slot (`kind: "slot"`, id [`SLOT_ID`], naming the job that
/// holds it) and the knowledge manifest (`kind: "document"`, id `doc-<sha256 of the path>`).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JobDoc {
    #[serde(flatten)]
    job: RefreshJob,
    kind: String,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlotDoc {
    id: String,
    tenant_id: TenantId,
    kind: String,
    job_id: String,
}

const SLOT_ID: &str = "refresh-slot";
const JOB_KIND: &str = "job";
const SLOT_KIND: &str = "slot";

impl CosmosStore {
    /// Reads the job and, if `change` changed it (`true`), replaces it unless it changed in
    /// between (then reads and decides again). `None` when the tenant has no such job.
    async fn update_job_if(
        &self,
        tenant: &TenantId,
        id: &str,
        change: impl Fn(&mut RefreshJob) -> bool + Sync,
    ) -> StoreResult<Option<(RefreshJob, bool)>> {
        let change = &change;
        read_modify_write(
            &self.refresh_jobs,
            tenant,
            id,
            |d: &JobDoc| &d.job.tenant_id,
            "refresh job",
            |current| {
                Box::pin(async move {
                    Ok(match current.filter(|d| d.kind == JOB_KIND) {
                        None => Change::Keep(None),
                        Some(mut doc) => {
                            if change(&mut doc.job) {
                                let job = doc.job.clone();
                                Change::Write(doc, Some((job, true)))
                            } else {
                                Change::Keep(Some((doc.job, false)))
                            }
                        }
                    })
                })
            },
        )
        .await
    }
}

#[async_trait]
impl RefreshJobStore for CosmosStore {
    async fn begin_refresh_job(
        &self,
        job: &RefreshJob,
        stale_before: DateTime<Utc>,
    ) -> StoreResult<(RefreshJob, bool)> {
        let tenant = &job.tenant_id;
        let pk = || tenant.as_str().to_owned();
        // The job is written first, then the slot is claimed: whoever reads the slot finds
        // the job it names. A loser deletes its own job and returns the winner's.
        let doc = JobDoc {
            job: job.clone(),
            kind: JOB_KIND.into(),
        };
        self.refresh_jobs
            .create_item(pk(), &job.id, &doc, None)
            .await
            .map_err(map_err)?;
        let slot = SlotDoc {
            id: SLOT_ID.into(),
            tenant_id: tenant.clone(),
            kind: SLOT_KIND.into(),
            job_id: job.id.clone(),
        };
        let lose = |winner: RefreshJob| async move {
            if let Err(e) = self.refresh_jobs.delete_item(pk(), &job.id, None).await {
                tracing::warn!(tenant.id = %tenant, error = %short(&e), "removing a refresh job that lost the slot");
            }
            Ok((winner, false))
        };
        let slot = &slot;
        let won = read_modify_write(
            &self.refresh_jobs,
            tenant,
            SLOT_ID,
            |d: &SlotDoc| &d.tenant_id,
            "refresh slot",
            |current| {
                Box::pin(async move {
                    if let Some(held) = current {
                        let holder = read_doc(
                            &self.refresh_jobs,
                            tenant,
                            &held.job_id,
                            |d: &JobDoc| &d.job.tenant_id,
                            "refresh job",
                        )
                        .await?
                        .map(|r| r.doc.job)
                        .filter(|h| h.state.is_active());
                        if let Some(holder) = holder {
                            if !holder.is_stale(stale_before) {
                                return Ok(Change::Keep(Some(holder)));
                            }
                            self.save_refresh_job(&holder.abandoned(Utc::now())).await?;
                        }
                    }
                    Ok(Change::Write(slot.clone(), None))
                })
            },
        )
        .await?;
        match won {
            None => Ok((job.clone(), true)),
            Some(winner) => lose(winner).await,
        }
    }

    async fn get_refresh_job(&self, tenant: &TenantId, id: &str) -> StoreResult<RefreshJob> {
        read_doc(
            &self.refresh_jobs,
            tenant,
            id,
            |d: &JobDoc| &d.job.tenant_id,
            "refresh job",
        )
        .await?
        .filter(|r| r.doc.kind == JOB_KIND)
        .map(|r| r.doc.job)
        .ok_or(StoreError::NotFound)
    }

    async fn claim_refresh_job(
        &self,
        tenant: &TenantId,
        id: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<(RefreshJob, bool)> {
        self.update_job_if(tenant, id, |job| job.claim(at))
            .await?
            .ok_or(StoreError::NotFound)
    }

    async fn queued_refresh_jobs(&self, limit: usize) -> StoreResult<Vec<RefreshJob>> {
        let mut sql = Sql::new("SELECT * FROM c");
        let feed = sql.scope(&TenantScope::All);
        sql.and("c.kind = @kind", &[("@kind", JOB_KIND.into())]);
        sql.and(
            "c.state = @state",
            &[("@state", JobState::Queued.as_str().into())],
        );
        let docs: Vec<JobDoc> = collect(&self.refresh_jobs, sql.build()?, feed, limit).await?;
        let mut jobs: Vec<RefreshJob> = docs
            .into_iter()
            .map(|d| d.job)
            .filter(|j| j.state == JobState::Queued)
            .collect();
        jobs.sort_by_key(|j| j.updated_at);
        Ok(jobs)
    }

    async fn save_refresh_progress(&self, job: &RefreshJob) -> StoreResult<bool> {
        let saved = self
            .update_job_if(&job.tenant_id, &job.id, |stored| stored.save_over(job))
            .await?;
        Ok(saved.is_some_and(|(_, written)| written))
    }

    async fn save_refresh_job(&self, job: &RefreshJob) -> StoreResult<()> {
        let doc = JobDoc {
            job: job.clone(),
            kind: JOB_KIND.into(),
        };
        self.refresh_jobs
            .upsert_item(job.tenant_id.as_str().to_owned(), &job.id, &doc, None)
            .await
            .map(|_| ())
            .map_err(map_err)
    }
}
