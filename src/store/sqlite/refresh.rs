//! SQLite: knowledge refresh jobs and the one-active-job-per-tenant slot.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, encode, map_err};
use crate::domain::{RefreshJob, TenantId};
use crate::store::{RefreshJobStore, StoreError, StoreResult, sort_key};

fn decode_job(doc: &str) -> StoreResult<RefreshJob> {
    serde_json::from_str(doc)
        .map_err(|e| StoreError::Internal(anyhow::anyhow!("corrupt refresh job: {e}")))
}

fn write_job(conn: &Connection, job: &RefreshJob) -> StoreResult<()> {
    conn.execute(
        "INSERT INTO refresh_jobs (tenant_id, id, state, updated_at, doc) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (tenant_id, id) DO UPDATE SET
            state = excluded.state, updated_at = excluded.updated_at, doc = excluded.doc",
        params![
            job.tenant_id.as_str(),
            job.id,
            job.state.as_str(),
            sort_key(&job.updated_at),
            encode(job)?
        ],
    )
    .map_err(map_err)?;
    Ok(())
}

fn read_job(conn: &Connection, tenant: &TenantId, id: &str) -> StoreResult<Option<RefreshJob>> {
    let doc: Option<String> = conn
        .query_row(
            "SELECT doc FROM refresh_jobs WHERE tenant_id = ?1 AND id = ?2",
            params![tenant.as_str(), id],
            |r| r.get(0),
        )
        .optional()
        .map_err(map_err)?;
    doc.as_deref().map(decode_job).transpose()
}

/// Reads the job and, in the same transaction, writes it if `change` changed it (`true`).
/// `None` when the tenant has no such job.
fn update_job_if(
    conn: &mut Connection,
    tenant: &TenantId,
    id: &str,
    change: impl FnOnce(&mut RefreshJob) -> bool,
) -> StoreResult<Option<(RefreshJob, bool)>> {
    let tx = conn.transaction().map_err(map_err)?;
    let Some(mut job) = read_job(&tx, tenant, id)? else {
        return Ok(None);
    };
    let changed = change(&mut job);
    if changed {
        write_job(&tx, &job)?;
        tx.commit().map_err(map_err)?;
    }
    Ok(Some((job, changed)))
}

#[async_trait]
impl RefreshJobStore for SqliteStore {
    async fn begin_refresh_job(
        &self,
        job: &RefreshJob,
        stale_before: DateTime<Utc>,
    ) -> StoreResult<(RefreshJob, bool)> {
        let job = job.clone();
        self.run(move |conn| {
            let tx = conn.transaction().map_err(map_err)?;
            let active: Option<String> = tx
                .query_row(
                    "SELECT doc FROM refresh_jobs WHERE tenant_id = ?1 AND state IN ('queued', 'running')
                     ORDER BY updated_at DESC LIMIT 1",
                    params![job.tenant_id.as_str()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(map_err)?;
            if let Some(doc) = active {
                let current = decode_job(&doc)?;
                if current.updated_at >= stale_before {
                    return Ok((current, false));
                }
                let failed = current.abandoned(Utc::now());
                write_job(&tx, &failed)?;
            }
            write_job(&tx, &job)?;
            tx.commit().map_err(map_err)?;
            Ok((job, true))
        })
        .await
    }

    async fn get_refresh_job(&self, tenant: &TenantId, id: &str) -> StoreResult<RefreshJob> {
        let (tenant, id) = (tenant.clone(), id.to_owned());
        self.run(move |conn| read_job(conn, &tenant, &id)?.ok_or(StoreError::NotFound))
            .await
    }

    async fn claim_refresh_job(
        &self,
        tenant: &TenantId,
        id: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<(RefreshJob, bool)> {
        let (tenant, id) = (tenant.clone(), id.to_owned());
        self.run(move |conn| {
            update_job_if(conn, &tenant, &id, |job| job.claim(at))?.ok_or(StoreError::NotFound)
        })
        .await
    }

    async fn queued_refresh_jobs(&self, limit: usize) -> StoreResult<Vec<RefreshJob>> {
        self.run(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT doc FROM refresh_jobs WHERE state = 'queued' ORDER BY updated_at LIMIT ?1",
                )
                .map_err(map_err)?;
            let docs = stmt
                .query_map(params![limit as i64], |r| r.get::<_, String>(0))
                .map_err(map_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(map_err)?;
            docs.iter().map(|d| decode_job(d)).collect()
        })
        .await
    }

    async fn save_refresh_progress(&self, job: &RefreshJob) -> StoreResult<bool> {
        let job = job.clone();
        self.run(move |conn| {
            let (tenant, id) = (job.tenant_id.clone(), job.id.clone());
            let saved = update_job_if(conn, &tenant, &id, |stored| stored.save_over(&job))?;
            Ok(saved.is_some_and(|(_, written)| written))
        })
        .await
    }

    async fn save_refresh_job(&self, job: &RefreshJob) -> StoreResult<()> {
        let job = job.clone();
        self.run(move |conn| write_job(conn, &job)).await
    }
}
