//! The embedded `Store`: one SQLite file in WAL mode, schema migrations versioned in code
//! (`PRAGMA user_version`), every call run off the async runtime.

mod audit;
mod conversations;
mod instances;
mod manifest;
mod refresh;
mod usage;

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use async_trait::async_trait;
use rusqlite::{Connection, ErrorCode};

use super::{Store, StoreError, StoreResult};

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
    // 4: each company's limit windows (one row per company).
    "CREATE TABLE limit_windows (
        tenant_id TEXT PRIMARY KEY NOT NULL,
        doc TEXT NOT NULL
    );",
    // 5: each failover deployment's share of a company's daily usage.
    "CREATE TABLE usage_deployments (
        tenant_id TEXT NOT NULL,
        day TEXT NOT NULL,
        deployment TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        requests INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, day, deployment)
    );",
    // 6: which limit windows' exhaustion the fleet has already announced (audited).
    "CREATE TABLE window_claims (
        tenant_id TEXT NOT NULL,
        name TEXT NOT NULL,
        window INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, name)
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
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}
