//! The embedded `Store`: one SQLite file in WAL mode, schema migrations versioned in code
//! (`PRAGMA user_version`), every call run off the async runtime.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

use super::{
    AuditFilter, InstanceFilter, Page, PageRequest, Store, StoreError, StoreResult, TenantScope,
    abandoned, claim, decode_cursor, into_page, live_conflict, new_etag, page_limit, save_over,
    sort_key,
};
use crate::domain::{
    AgentInstance, AgentType, AuditEntry, Conversation, ConversationId, InstanceId,
    KnowledgeDocument, RefreshJob, StoredMessage, TenantId, UsageRecord,
};

/// Schema migrations, applied in order; index + 1 is the `user_version` after each.
/// Never edit a shipped migration: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: instances and audit logs.
    "CREATE TABLE agent_instances (
        id TEXT PRIMARY KEY NOT NULL,
        tenant_id TEXT NOT NULL,
        agent_type TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        etag TEXT NOT NULL,
        last_used_at TEXT,
        doc TEXT NOT NULL
    );
    CREATE INDEX agent_instances_by_tenant ON agent_instances (tenant_id, created_at, id);
    CREATE INDEX agent_instances_by_time ON agent_instances (created_at, id);
    CREATE UNIQUE INDEX agent_instances_one_live
        ON agent_instances (tenant_id, agent_type) WHERE status <> 'DISABLED';
    CREATE TABLE audit_logs (
        id TEXT PRIMARY KEY NOT NULL,
        tenant_id TEXT NOT NULL,
        action TEXT NOT NULL,
        instance_id TEXT,
        time TEXT NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE INDEX audit_logs_by_tenant ON audit_logs (tenant_id, time, id);
    CREATE INDEX audit_logs_by_time ON audit_logs (time, id);",
    // 2: conversations and daily usage.
    "CREATE TABLE conversations (
        tenant_id TEXT NOT NULL,
        id TEXT NOT NULL,
        instance_id TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        doc TEXT NOT NULL,
        PRIMARY KEY (tenant_id, id)
    );
    CREATE TABLE usage (
        tenant_id TEXT NOT NULL,
        day TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        requests INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, day)
    );",
    // 3: knowledge refresh jobs and the per-document knowledge manifest.
    "CREATE TABLE refresh_jobs (
        tenant_id TEXT NOT NULL,
        id TEXT NOT NULL,
        state TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        doc TEXT NOT NULL,
        PRIMARY KEY (tenant_id, id)
    );
    CREATE INDEX refresh_jobs_active ON refresh_jobs (tenant_id) WHERE state IN ('queued', 'running');
    CREATE TABLE knowledge_documents (
        tenant_id TEXT NOT NULL,
        document_id TEXT NOT NULL,
        doc TEXT NOT NULL,
        PRIMARY KEY (tenant_id, document_id)
    );",
];

/// SQLite-backed store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open(path)
            .with_context(|| format!("opening SQLite store {}", path.display()))?;
        Self::init(conn)
    }

    /// An in-memory store (tests, benchmarks).
    pub fn open_in_memory() -> anyhow::Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> anyhow::Result<Self> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Internal(anyhow::anyhow!("SQLite connection poisoned")))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Internal(anyhow::anyhow!("store task failed: {e}")))?
    }
}

/// Applies the migrations the database has not seen yet, each in its own transaction.
fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        anyhow::bail!(
            "the SQLite store has schema version {current}, newer than this binary knows ({known}); \
             refusing to run an older binary against it"
        );
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)
            .with_context(|| format!("store migration {}", index + 1))?;
        tx.pragma_update(None, "user_version", (index + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

fn map_err(err: rusqlite::Error) -> StoreError {
    match err.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Unavailable(err.into())
        }
        _ => StoreError::Internal(err.into()),
    }
}

fn is_unique_violation(err: &rusqlite::Error) -> bool {
    matches!(
        err,
        rusqlite::Error::SqliteFailure(e, _) if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
    )
}

fn decode_instance(
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

fn encode<T: serde::Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Internal(e.into()))
}

/// Dynamic SQL built from fixed fragments; every value is a bound parameter.
struct Query {
    sql: String,
    args: Vec<String>,
}

impl Query {
    fn new(select: &str) -> Self {
        Self {
            sql: format!("{select} WHERE 1 = 1"),
            args: Vec::new(),
        }
    }

    /// Appends `AND clause`, numbering each `?` in it and binding the values in order.
    fn and(&mut self, clause: &str, values: &[&str]) {
        self.sql.push_str(" AND ");
        let mut values = values.iter();
        for ch in clause.chars() {
            if ch == '?'
                && let Some(value) = values.next()
            {
                self.args.push((*value).to_owned());
                self.sql.push_str(&format!("?{}", self.args.len()));
            } else {
                self.sql.push(ch);
            }
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.run(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(map_err))
            .await
    }

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

    async fn get_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> StoreResult<Conversation> {
        let (tenant, id) = (tenant.clone(), id.to_string());
        self.run(move |conn| {
            let doc: Option<String> = conn
                .query_row(
                    "SELECT doc FROM conversations WHERE tenant_id = ?1 AND id = ?2",
                    params![tenant.as_str(), id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(map_err)?;
            let doc = doc.ok_or(StoreError::NotFound)?;
            serde_json::from_str(&doc)
                .map_err(|e| StoreError::Internal(anyhow::anyhow!("corrupt conversation: {e}")))
        })
        .await
    }

    async fn append_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        instance: &InstanceId,
        messages: &[StoredMessage],
        keep_last: usize,
    ) -> StoreResult<usize> {
        let (tenant, id, instance, messages) = (tenant.clone(), *id, *instance, messages.to_vec());
        self.run(move |conn| {
            let tx = conn.transaction().map_err(map_err)?;
            let existing: Option<String> = tx
                .query_row(
                    "SELECT doc FROM conversations WHERE tenant_id = ?1 AND id = ?2",
                    params![tenant.as_str(), id.to_string()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(map_err)?;
            let now = chrono::Utc::now();
            let mut conversation = match existing {
                Some(doc) => serde_json::from_str::<Conversation>(&doc)
                    .map_err(|e| StoreError::Internal(anyhow::anyhow!("corrupt conversation: {e}")))?,
                None => Conversation {
                    id,
                    tenant_id: tenant.clone(),
                    instance_id: instance,
                    messages: Vec::new(),
                    created_at: now,
                    updated_at: now,
                },
            };
            let dropped = conversation.append(
                &messages,
                keep_last,
                crate::domain::conversation::MAX_CONVERSATION_BYTES,
            );
            conversation.updated_at = now;
            tx.execute(
                "INSERT INTO conversations (tenant_id, id, instance_id, updated_at, doc) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (tenant_id, id) DO UPDATE SET updated_at = excluded.updated_at, doc = excluded.doc",
                params![
                    tenant.as_str(),
                    id.to_string(),
                    instance.to_string(),
                    sort_key(&now),
                    encode(&conversation)?
                ],
            )
            .map_err(map_err)?;
            tx.commit().map_err(map_err)?;
            Ok(dropped)
        })
        .await
    }

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
                let failed = abandoned(current, Utc::now());
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
            update_job_if(conn, &tenant, &id, |job| claim(job, at))?.ok_or(StoreError::NotFound)
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
            let saved = update_job_if(conn, &tenant, &id, |stored| save_over(stored, &job))?;
            Ok(saved.is_some_and(|(_, written)| written))
        })
        .await
    }

    async fn save_refresh_job(&self, job: &RefreshJob) -> StoreResult<()> {
        let job = job.clone();
        self.run(move |conn| write_job(conn, &job)).await
    }

    async fn list_knowledge_documents(
        &self,
        tenant: &TenantId,
    ) -> StoreResult<Vec<KnowledgeDocument>> {
        let tenant = tenant.clone();
        self.run(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT doc FROM knowledge_documents WHERE tenant_id = ?1 ORDER BY document_id",
                )
                .map_err(map_err)?;
            let rows = stmt
                .query_map(params![tenant.as_str()], |r| r.get::<_, String>(0))
                .map_err(map_err)?;
            let mut out = Vec::new();
            for row in rows {
                let doc = row.map_err(map_err)?;
                let entry: KnowledgeDocument = serde_json::from_str(&doc).map_err(|e| {
                    StoreError::Internal(anyhow::anyhow!("corrupt knowledge document: {e}"))
                })?;
                if entry.tenant_id == tenant {
                    out.push(entry);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn put_knowledge_document(&self, doc: &KnowledgeDocument) -> StoreResult<()> {
        let doc = doc.clone();
        self.run(move |conn| {
            conn.execute(
                "INSERT INTO knowledge_documents (tenant_id, document_id, doc) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tenant_id, document_id) DO UPDATE SET doc = excluded.doc",
                params![doc.tenant_id.as_str(), doc.document_id, encode(&doc)?],
            )
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn delete_knowledge_document(
        &self,
        tenant: &TenantId,
        document_id: &str,
    ) -> StoreResult<()> {
        let (tenant, document_id) = (tenant.clone(), document_id.to_owned());
        self.run(move |conn| {
            conn.execute(
                "DELETE FROM knowledge_documents WHERE tenant_id = ?1 AND document_id = ?2",
                params![tenant.as_str(), document_id],
            )
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}
