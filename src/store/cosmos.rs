//! The production `Store`: Azure Cosmos DB for NoSQL through `azure_data_cosmos` 1.x.
//!
//! One database, five containers, all partitioned by `/tenantId`:
//! `agentInstances`, `auditLogs` (default TTL `SOPHIA_AUDIT_TTL_DAYS`), `conversations`,
//! `refreshJobs` and `usage`.
//!
//! Tenant isolation does not rest on the partition key alone: every tenant-scoped call
//! targets the tenant's partition *and* filters `c.tenantId = @tenantId` in its SQL, and every
//! document read back is checked against the tenant asked for before it leaves this module
//! (the emulator used by the tests does not scope queries by partition, and a bug in the
//! partition routing must not become a cross-tenant leak). Only `TenantScope::All`
//! (platform-admin listings) issues cross-partition queries.
//!
//! Concurrency:
//! * the instance `etag` the API exposes is SOPHIA's own (it changes on admin writes only);
//!   every write is still guarded by Cosmos' `_etag` (`If-Match`), re-reading on 412, so a
//!   `touch_instance` racing an admin write loses nothing and does not break the admin's
//!   `If-Match`;
//! * "one live instance per (tenant, agent type)" is a unique key on `/liveKey` (per
//!   partition): live instances carry their agent type, disabled ones `DISABLED:<id>`;
//! * conversations and daily usage are read-modify-write loops on `_etag`.
//!
//! Throttling (429) and transient 503s are retried by the SDK with back-off (bounded by
//! [`THROTTLE_RETRIES`] / [`THROTTLE_WAIT`]); what is still failing after that is
//! `StoreError::Unavailable`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use azure_core::credentials::{Secret, TokenCredential};
use azure_data_cosmos::models::{
    CompositeIndex, CompositeIndexOrder, CompositeIndexProperty, ContainerProperties,
    IndexingPolicy, TimeToLive, UniqueKey, UniqueKeyPolicy,
};
use azure_data_cosmos::options::{
    BinaryEncodingOptions, ConnectionPoolOptions, ItemWriteOptions, OperationOptionsBuilder,
    Precondition, ThrottlingRetryOptionsBuilder,
};
use azure_data_cosmos::{
    AccountEndpoint, AccountReference, ContainerClient, CosmosClient, CosmosError, CosmosRuntime,
    FeedScope, Query, RoutingStrategy,
};
use chrono::{DateTime, NaiveDate, Utc};
use futures_util::TryStreamExt;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{
    AuditFilter, InstanceFilter, Page, PageRequest, Store, StoreError, StoreResult, TenantScope,
    abandoned, claim, decode_cursor, into_page, live_conflict, new_etag, page_limit, save_over,
    sort_key,
};
use crate::domain::{
    AgentInstance, AgentType, AuditEntry, Conversation, ConversationId, InstanceId, InstanceStatus,
    JobState, KnowledgeDocument, RefreshJob, StoredMessage, TenantId, UsageRecord,
};

/// Container names (infrastructure creates them with these names).
pub const INSTANCES: &str = "agentInstances";
pub const AUDIT_LOGS: &str = "auditLogs";
pub const CONVERSATIONS: &str = "conversations";
pub const REFRESH_JOBS: &str = "refreshJobs";
pub const USAGE: &str = "usage";
/// The partition key path of every container.
pub const PARTITION_KEY: &str = "/tenantId";
/// The unique key that keeps one live instance per (tenant, agent type).
pub const LIVE_KEY_PATH: &str = "/liveKey";

/// How many times the SDK retries a throttled (429) request, and for how long in all.
pub const THROTTLE_RETRIES: u32 = 6;
pub const THROTTLE_WAIT: Duration = Duration::from_secs(10);
/// Read-modify-write attempts before a contended document is reported unavailable.
const RMW_ATTEMPTS: usize = 16;

/// Before another read-modify-write attempt: a random pause of up to 2^attempt ms (at most
/// 64 ms), so writers that collided do not collide again in lockstep.
async fn contention_pause(attempt: usize) {
    use rand::Rng;
    let ceiling = 1u64 << attempt.min(6);
    let pause = rand::thread_rng().gen_range(0..=ceiling);
    tokio::time::sleep(Duration::from_millis(pause)).await;
}
/// Cross-partition scans (platform listings of usage) stop here.
const MAX_SCAN: usize = 10_000;

/// How SOPHIA authenticates to the account.
pub enum CosmosAuth {
    /// The account key (emulator, development).
    Key(SecretString),
    /// An Entra token from `azure_identity` (production).
    Entra(Arc<dyn TokenCredential>),
}

impl std::fmt::Debug for CosmosAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Key(_) => "Key([redacted])",
            Self::Entra(_) => "Entra",
        })
    }
}

/// Where the store lives and how it is set up.
#[derive(Debug)]
pub struct CosmosConfig {
    pub endpoint: String,
    pub database: String,
    pub auth: CosmosAuth,
    /// Create the database and containers when missing (emulator, development).
    pub create_containers: bool,
    /// Default TTL of audit documents, in days (0: keep forever). Applied when SOPHIA
    /// creates the container; infrastructure sets it otherwise.
    pub audit_ttl_days: u32,
    /// The region the process runs in (routing preference).
    pub region: String,
}

/// The Cosmos DB store. Cheap to clone.
#[derive(Clone)]
pub struct CosmosStore {
    instances: ContainerClient,
    audit: ContainerClient,
    conversations: ContainerClient,
    usage: ContainerClient,
    refresh_jobs: ContainerClient,
}

impl std::fmt::Debug for CosmosStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CosmosStore")
    }
}

fn is_loopback(url: &url::Url) -> bool {
    matches!(
        url.host_str(),
        Some("localhost" | "127.0.0.1" | "[::1]" | "::1")
    )
}

/// An indexing policy with composite indexes over `(key, /id)`, both ways, for keyset
/// listings `ORDER BY c.<key>, c.id`.
fn ordered_by(key: &str) -> IndexingPolicy {
    let pair = |order: CompositeIndexOrder| {
        CompositeIndex::default()
            .with_property(CompositeIndexProperty::new(key, order.clone()))
            .with_property(CompositeIndexProperty::new("/id", order))
    };
    IndexingPolicy::default()
        .with_composite_index(pair(CompositeIndexOrder::Ascending))
        .with_composite_index(pair(CompositeIndexOrder::Descending))
}

/// The container definitions SOPHIA expects (and creates when asked to).
pub fn container_definitions(audit_ttl_days: u32) -> Vec<ContainerProperties> {
    let mut instances = ContainerProperties::new(INSTANCES, PARTITION_KEY.into())
        .with_indexing_policy(ordered_by("/createdKey"));
    instances.unique_key_policy = Some(
        UniqueKeyPolicy::default().with_unique_key(UniqueKey::default().with_path(LIVE_KEY_PATH)),
    );
    let mut audit = ContainerProperties::new(AUDIT_LOGS, PARTITION_KEY.into())
        .with_indexing_policy(ordered_by("/timeKey"));
    audit.default_ttl = if audit_ttl_days == 0 {
        TimeToLive::Forever
    } else {
        TimeToLive::Seconds(audit_ttl_days.saturating_mul(86_400))
    };
    vec![
        instances,
        audit,
        ContainerProperties::new(CONVERSATIONS, PARTITION_KEY.into()),
        ContainerProperties::new(REFRESH_JOBS, PARTITION_KEY.into()),
        ContainerProperties::new(USAGE, PARTITION_KEY.into()),
    ]
}

impl CosmosStore {
    /// Reads the job and, if `change` changed it (`true`), replaces it `If-Match` its ETag; a
    /// concurrent change (412) means read and decide again. `None` when the tenant has no
    /// such job.
    async fn update_job_if(
        &self,
        tenant: &TenantId,
        id: &str,
        change: impl Fn(&mut RefreshJob) -> bool,
    ) -> StoreResult<Option<(RefreshJob, bool)>> {
        for attempt in 0..RMW_ATTEMPTS {
            let Some(read) = read_doc(
                &self.refresh_jobs,
                tenant,
                id,
                |d: &JobDoc| &d.job.tenant_id,
                "refresh job",
            )
            .await?
            .filter(|r| r.doc.kind == JOB_KIND) else {
                return Ok(None);
            };
            let mut doc = read.doc;
            if !change(&mut doc.job) {
                return Ok(Some((doc.job, false)));
            }
            match self
                .refresh_jobs
                .replace_item(
                    tenant.as_str().to_owned(),
                    id,
                    &doc,
                    if_match_opts(&read.cosmos_etag),
                )
                .await
            {
                Ok(_) => return Ok(Some((doc.job, true))),
                Err(e) if e.status().is_precondition_failed() => contention_pause(attempt).await,
                Err(e) => return Err(map_err(e)),
            }
        }
        Err(contended("refresh job"))
    }

    /// Connects, creates the containers when `create_containers` is set, and checks that the
    /// ones it finds are partitioned by `/tenantId` (and that `agentInstances` has the
    /// `/liveKey` unique key): a misdeployed account fails at start-up, not at the first write.
    pub async fn connect(config: CosmosConfig) -> anyhow::Result<Self> {
        let url = url::Url::parse(&config.endpoint).with_context(|| {
            format!("SOPHIA_COSMOS_ENDPOINT '{}' is not a URL", config.endpoint)
        })?;
        let endpoint: AccountEndpoint = config
            .endpoint
            .parse()
            .map_err(|e| anyhow::anyhow!("SOPHIA_COSMOS_ENDPOINT: {e}"))?;
        let account = match &config.auth {
            CosmosAuth::Key(key) => AccountReference::with_authentication_key(
                endpoint,
                Secret::new(key.expose_secret().to_owned()),
            ),
            CosmosAuth::Entra(credential) => {
                AccountReference::with_credential(endpoint, Arc::clone(credential))
            }
        };
        // The local emulator speaks HTTP/1.1 and text JSON only.
        let local = is_loopback(&url);
        let pool = ConnectionPoolOptions::builder()
            .with_is_http2_allowed(!local)
            .build()
            .map_err(|e| anyhow::anyhow!("Cosmos DB connection options: {e}"))?;
        let throttling = ThrottlingRetryOptionsBuilder::new()
            .with_max_retry_count(THROTTLE_RETRIES)
            .with_max_retry_wait_time(THROTTLE_WAIT)
            .build();
        let operation = OperationOptionsBuilder::new()
            .with_throttling_retry_options(throttling)
            .build();
        let runtime = CosmosRuntime::builder()
            .with_connection_pool(pool)
            .with_default_operation_options(operation)
            .build()
            .await
            .map_err(|e| anyhow::anyhow!("Cosmos DB runtime: {e}"))?;
        let binary = BinaryEncodingOptions::new().with_enabled(!local);
        let client = CosmosClient::builder()
            .with_runtime(runtime)
            .with_binary_encoding_options(binary)
            .build(
                account,
                RoutingStrategy::ProximityTo(config.region.clone().into()),
            )
            .await
            .map_err(|e| anyhow::anyhow!("connecting to Cosmos DB at {}: {e}", config.endpoint))?;

        if config.create_containers {
            create_missing(&client, &config).await?;
        }
        let open = |name: &'static str| {
            let database = client.database_client(config.database.as_str());
            let db_name = config.database.clone();
            async move {
                database.container_client(name, None).await.map_err(|e| {
                    if e.status().is_unauthorized() || e.status().is_forbidden() {
                        anyhow::anyhow!(
                            "Cosmos DB refused SOPHIA's identity ({}): it needs the 'Cosmos DB \
                             Built-in Data Contributor' role on the account (or a correct SOPHIA_COSMOS_KEY)",
                            short(&e)
                        )
                    } else {
                        anyhow::anyhow!(
                            "Cosmos DB container '{name}' in database '{db_name}' is not usable ({}); \
                             create it (as infrastructure does) or set SOPHIA_COSMOS_CREATE_CONTAINERS=true",
                            short(&e)
                        )
                    }
                })
            }
        };
        let store = Self {
            instances: open(INSTANCES).await?,
            audit: open(AUDIT_LOGS).await?,
            conversations: open(CONVERSATIONS).await?,
            usage: open(USAGE).await?,
            refresh_jobs: open(REFRESH_JOBS).await?,
        };
        store.verify_instances_container().await?;
        Ok(store)
    }

    async fn verify_instances_container(&self) -> anyhow::Result<()> {
        let props: ContainerProperties = self
            .instances
            .read(None)
            .await
            .and_then(|r| r.into_model())
            .map_err(|e| anyhow::anyhow!("reading container '{INSTANCES}': {}", short(&e)))?;
        let paths: Vec<String> = serde_json::to_value(&props.partition_key)
            .ok()
            .and_then(|v| v.get("paths").cloned())
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        if paths != [PARTITION_KEY] {
            anyhow::bail!(
                "Cosmos DB container '{INSTANCES}' is partitioned by {paths:?}, not {PARTITION_KEY}"
            );
        }
        let has_live_key = props.unique_key_policy.as_ref().is_some_and(|p| {
            p.unique_keys
                .iter()
                .any(|k| k.paths.iter().any(|p| p == LIVE_KEY_PATH))
        });
        if !has_live_key {
            anyhow::bail!(
                "Cosmos DB container '{INSTANCES}' has no unique key on {LIVE_KEY_PATH}; SOPHIA relies \
                 on it for one live instance per company and agent type (unique keys can only be set \
                 when a container is created: recreate it with the key)"
            );
        }
        Ok(())
    }
}

async fn create_missing(client: &CosmosClient, config: &CosmosConfig) -> anyhow::Result<()> {
    match client.create_database(&config.database, None).await {
        Ok(_) => tracing::info!(database = %config.database, "created Cosmos DB database"),
        Err(e) if e.status().is_conflict() => {}
        Err(e) => anyhow::bail!(
            "creating Cosmos DB database '{}': {}",
            config.database,
            short(&e)
        ),
    }
    let database = client.database_client(config.database.as_str());
    for props in container_definitions(config.audit_ttl_days) {
        let name = props.id.to_string();
        match database.create_container(props, None).await {
            Ok(_) => tracing::info!(container = %name, "created Cosmos DB container"),
            Err(e) if e.status().is_conflict() => {}
            Err(e) => anyhow::bail!("creating Cosmos DB container '{name}': {}", short(&e)),
        }
    }
    Ok(())
}

/// The first line of an SDK error (its `Display` can carry pages of diagnostics).
fn short(e: &CosmosError) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    let line: String = line.chars().take(300).collect();
    format!("HTTP {}: {line}", e.status().status_code())
}

fn map_err(e: CosmosError) -> StoreError {
    let status = e.status();
    let code = u16::from(status.status_code());
    if status.is_not_found() {
        StoreError::NotFound
    } else if status.is_precondition_failed() {
        StoreError::PreconditionFailed
    } else if status.is_throttled()
        || status.is_service_unavailable()
        || status.is_timeout()
        || status.is_transient()
        || !e.is_from_wire()
        || code >= 500
    {
        StoreError::Unavailable(anyhow::anyhow!("Cosmos DB: {}", short(&e)))
    } else if status.is_unauthorized() || status.is_forbidden() {
        StoreError::Internal(anyhow::anyhow!(
            "Cosmos DB refused SOPHIA's credentials ({}); check the identity's \
             'Cosmos DB Built-in Data Contributor' role or SOPHIA_COSMOS_KEY",
            short(&e)
        ))
    } else {
        StoreError::Internal(anyhow::anyhow!("Cosmos DB: {}", short(&e)))
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(anyhow::anyhow!("corrupt {what} document: {e}"))
}

/// A document as read back, with Cosmos' own etag beside SOPHIA's fields.
#[derive(Deserialize)]
struct Read<T> {
    #[serde(flatten)]
    doc: T,
    #[serde(rename = "_etag")]
    cosmos_etag: String,
}

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

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuditDoc {
    #[serde(flatten)]
    entry: AuditEntry,
    time_key: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConversationDoc {
    #[serde(flatten)]
    conversation: Conversation,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageDoc {
    id: String,
    tenant_id: TenantId,
    day: NaiveDate,
    prompt_tokens: u64,
    completion_tokens: u64,
    requests: u64,
}

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

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlotDoc {
    id: String,
    tenant_id: TenantId,
    kind: String,
    job_id: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc {
    id: String,
    #[serde(flatten)]
    entry: KnowledgeDocument,
    kind: String,
}

const SLOT_ID: &str = "refresh-slot";
const JOB_KIND: &str = "job";
const SLOT_KIND: &str = "slot";
const DOCUMENT_KIND: &str = "document";

/// A manifest entry's document id: paths may hold characters Cosmos ids may not (`/`, `#`, `?`).
fn manifest_id(document_id: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(document_id.as_bytes());
    let hex: String = digest.iter().take(20).map(|b| format!("{b:02x}")).collect();
    format!("doc-{hex}")
}

fn if_match_opts(etag: &str) -> Option<ItemWriteOptions> {
    Some(ItemWriteOptions::default().with_precondition(Precondition::if_match(etag.to_owned())))
}

/// One point read in the tenant's partition; `None` when absent (or not the tenant's).
async fn read_doc<T: DeserializeOwned>(
    container: &ContainerClient,
    tenant: &TenantId,
    id: &str,
    tenant_of: impl Fn(&T) -> &TenantId,
    what: &str,
) -> StoreResult<Option<Read<T>>> {
    match container
        .read_item(tenant.as_str().to_owned(), id, None)
        .await
    {
        Ok(response) => {
            let read: Read<T> = response.into_model().map_err(|e| corrupt(what, e))?;
            Ok((tenant_of(&read.doc) == tenant).then_some(read))
        }
        Err(e) if e.status().is_not_found() => Ok(None),
        Err(e) => Err(map_err(e)),
    }
}

/// Runs a query and collects every item (callers bound it with `TOP` or a partition).
async fn collect<T: DeserializeOwned + Send + 'static>(
    container: &ContainerClient,
    query: Query,
    scope: FeedScope,
    limit: usize,
) -> StoreResult<Vec<T>> {
    let mut items = container
        .query_items::<T>(query, scope, None)
        .await
        .map_err(map_err)?;
    let mut out = Vec::new();
    while let Some(item) = items.try_next().await.map_err(map_err)? {
        out.push(item);
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// Builds a parameterised query from fixed fragments.
struct Sql {
    text: String,
    params: Vec<(String, serde_json::Value)>,
}

impl Sql {
    fn new(select: &str) -> Self {
        Self {
            text: format!("{select} WHERE 1 = 1"),
            params: Vec::new(),
        }
    }

    /// Appends `AND clause`, binding `value` to the clause's `@name`s in order.
    fn and(&mut self, clause: &str, values: &[(&str, serde_json::Value)]) {
        self.text.push_str(" AND ");
        self.text.push_str(clause);
        for (name, value) in values {
            self.params.push(((*name).to_owned(), value.clone()));
        }
    }

    /// The tenant filter plus the partition it pins, or a cross-partition scope.
    fn scope(&mut self, scope: &TenantScope) -> FeedScope {
        match scope.tenant() {
            Some(tenant) => {
                self.and(
                    "c.tenantId = @tenantId",
                    &[("@tenantId", tenant.as_str().into())],
                );
                FeedScope::partition(tenant.as_str().to_owned())
            }
            None => FeedScope::full_container(),
        }
    }

    fn build(self) -> StoreResult<Query> {
        let mut query = Query::from(self.text);
        for (name, value) in self.params {
            query = query
                .with_parameter(name, value)
                .map_err(|e| StoreError::Internal(anyhow::anyhow!("query parameter: {e}")))?;
        }
        Ok(query)
    }
}

/// Drops (and reports) anything outside the scope: the last line of defence against a
/// query or partition-routing bug turning into a cross-tenant read.
fn within<T>(scope: &TenantScope, items: Vec<T>, tenant_of: impl Fn(&T) -> &TenantId) -> Vec<T> {
    let Some(tenant) = scope.tenant() else {
        return items;
    };
    let before = items.len();
    let kept: Vec<T> = items
        .into_iter()
        .filter(|item| tenant_of(item) == tenant)
        .collect();
    if kept.len() != before {
        tracing::error!(
            tenant = %tenant,
            dropped = before - kept.len(),
            "Cosmos DB returned documents of other tenants for a tenant-scoped query; dropped"
        );
    }
    kept
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
impl Store for CosmosStore {
    fn backend(&self) -> &'static str {
        "cosmos"
    }

    async fn ping(&self) -> StoreResult<()> {
        // A point read of a document that never exists: one cheap round trip.
        let probe = TenantId::parse("sophia-ping").map_err(|e| StoreError::Internal(e.into()))?;
        read_doc(
            &self.usage,
            &probe,
            "ping",
            |d: &UsageDoc| &d.tenant_id,
            "usage",
        )
        .await
        .map(|_| ())
    }

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
        for attempt in 0..RMW_ATTEMPTS {
            let current = self
                .read_instance(&instance.tenant_id, &instance.id)
                .await?
                .ok_or(StoreError::NotFound)?;
            if current.doc.instance.etag != if_match {
                return Err(StoreError::PreconditionFailed);
            }
            let mut next = instance.clone();
            next.etag = new_etag();
            next.last_used_at = current.doc.instance.last_used_at;
            let doc = InstanceDoc::new(next.clone());
            match self
                .instances
                .replace_item(
                    next.tenant_id.as_str().to_owned(),
                    &next.id.to_string(),
                    &doc,
                    if_match_opts(&current.cosmos_etag),
                )
                .await
            {
                Ok(_) => return Ok(next),
                // Someone wrote in between (a touch, or another admin): look again.
                Err(e) if e.status().is_precondition_failed() => contention_pause(attempt).await,
                Err(e) if e.status().is_conflict() => return Err(live_conflict(&next)),
                Err(e) => return Err(map_err(e)),
            }
        }
        Err(contended("instance"))
    }

    async fn touch_instance(
        &self,
        tenant: &TenantId,
        id: &InstanceId,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        for attempt in 0..RMW_ATTEMPTS {
            let Some(current) = self.read_instance(tenant, id).await? else {
                return Ok(());
            };
            let mut doc = current.doc;
            doc.instance.last_used_at = Some(at);
            match self
                .instances
                .replace_item(
                    tenant.as_str().to_owned(),
                    &id.to_string(),
                    &doc,
                    if_match_opts(&current.cosmos_etag),
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.status().is_precondition_failed() => contention_pause(attempt).await,
                Err(e) if e.status().is_not_found() => return Ok(()),
                Err(e) => return Err(map_err(e)),
            }
        }
        Err(contended("instance"))
    }

    async fn append_audit(&self, entry: &AuditEntry) -> StoreResult<()> {
        let doc = AuditDoc {
            time_key: sort_key(&entry.time),
            entry: entry.clone(),
        };
        self.audit
            .create_item(
                entry.tenant_id.as_str().to_owned(),
                &entry.id.to_string(),
                &doc,
                None,
            )
            .await
            .map(|_| ())
            .map_err(map_err)
    }

    async fn list_audit(
        &self,
        scope: &TenantScope,
        filter: &AuditFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<AuditEntry>> {
        let limit = page_limit(page);
        let after = decode_cursor(page)?;
        let mut sql = Sql::new(&format!("SELECT TOP {} * FROM c", limit + 1));
        let feed = sql.scope(scope);
        if let Some(instance) = filter.instance_id {
            sql.and(
                "c.instanceId = @instanceId",
                &[("@instanceId", instance.to_string().into())],
            );
        }
        if let Some(action) = &filter.action {
            sql.and("c.action = @action", &[("@action", action.clone().into())]);
        }
        if let Some(c) = &after {
            sql.and(
                "(c.timeKey < @afterKey OR (c.timeKey = @afterKey AND c.id < @afterId))",
                &[
                    ("@afterKey", c.k.clone().into()),
                    ("@afterId", c.i.clone().into()),
                ],
            );
        }
        sql.text.push_str(" ORDER BY c.timeKey DESC, c.id DESC");
        let rows: Vec<AuditDoc> =
            collect(&self.audit, sql.build()?, feed, limit as usize + 1).await?;
        let rows = rows
            .into_iter()
            .map(|d| {
                let id = d.entry.id.to_string();
                (d.entry, d.time_key, id)
            })
            .collect();
        let rows = within(scope, rows, |(e, _, _)| &e.tenant_id);
        Ok(into_page(rows, limit))
    }

    async fn get_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> StoreResult<Conversation> {
        read_doc(
            &self.conversations,
            tenant,
            &id.to_string(),
            |d: &ConversationDoc| &d.conversation.tenant_id,
            "conversation",
        )
        .await?
        .map(|r| r.doc.conversation)
        .ok_or(StoreError::NotFound)
    }

    async fn append_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        instance: &InstanceId,
        messages: &[StoredMessage],
        keep_last: usize,
    ) -> StoreResult<usize> {
        let key = id.to_string();
        for attempt in 0..RMW_ATTEMPTS {
            let now = Utc::now();
            let current = read_doc(
                &self.conversations,
                tenant,
                &key,
                |d: &ConversationDoc| &d.conversation.tenant_id,
                "conversation",
            )
            .await?;
            let (mut conversation, etag) = match current {
                Some(read) => (read.doc.conversation, Some(read.cosmos_etag)),
                None => (
                    Conversation {
                        id: *id,
                        tenant_id: tenant.clone(),
                        instance_id: *instance,
                        messages: Vec::new(),
                        created_at: now,
                        updated_at: now,
                    },
                    None,
                ),
            };
            let dropped = conversation.append(
                messages,
                keep_last,
                crate::domain::conversation::MAX_CONVERSATION_BYTES,
            );
            conversation.updated_at = now;
            let doc = ConversationDoc { conversation };
            let pk = tenant.as_str().to_owned();
            let result = match etag {
                Some(etag) => {
                    self.conversations
                        .replace_item(pk, &key, &doc, if_match_opts(&etag))
                        .await
                }
                None => self.conversations.create_item(pk, &key, &doc, None).await,
            };
            match result {
                Ok(_) => return Ok(dropped),
                Err(e) if e.status().is_precondition_failed() || e.status().is_conflict() => {
                    contention_pause(attempt).await;
                }
                Err(e) => return Err(map_err(e)),
            }
        }
        Err(contended("conversation"))
    }

    async fn add_usage(
        &self,
        tenant: &TenantId,
        day: NaiveDate,
        prompt_tokens: u64,
        completion_tokens: u64,
        requests: u64,
    ) -> StoreResult<()> {
        let key = day.to_string();
        for attempt in 0..RMW_ATTEMPTS {
            let current = read_doc(
                &self.usage,
                tenant,
                &key,
                |d: &UsageDoc| &d.tenant_id,
                "usage",
            )
            .await?;
            let pk = tenant.as_str().to_owned();
            let result = match current {
                Some(read) => {
                    let mut doc = read.doc;
                    doc.prompt_tokens += prompt_tokens;
                    doc.completion_tokens += completion_tokens;
                    doc.requests += requests;
                    self.usage
                        .replace_item(pk, &key, &doc, if_match_opts(&read.cosmos_etag))
                        .await
                }
                None => {
                    let doc = UsageDoc {
                        id: key.clone(),
                        tenant_id: tenant.clone(),
                        day,
                        prompt_tokens,
                        completion_tokens,
                        requests,
                    };
                    self.usage.create_item(pk, &key, &doc, None).await
                }
            };
            match result {
                Ok(_) => return Ok(()),
                Err(e) if e.status().is_precondition_failed() || e.status().is_conflict() => {
                    contention_pause(attempt).await;
                }
                Err(e) => return Err(map_err(e)),
            }
        }
        Err(contended("usage"))
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
            "c.day >= @from AND c.day <= @to",
            &[
                ("@from", from.to_string().into()),
                ("@to", to.to_string().into()),
            ],
        );
        let rows: Vec<UsageDoc> = collect(&self.usage, sql.build()?, feed, MAX_SCAN).await?;
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
            })
            .collect())
    }

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
        for attempt in 0..RMW_ATTEMPTS {
            let current = read_doc(
                &self.refresh_jobs,
                tenant,
                SLOT_ID,
                |d: &SlotDoc| &d.tenant_id,
                "refresh slot",
            )
            .await?;
            let claimed = match current {
                None => {
                    self.refresh_jobs
                        .create_item(pk(), SLOT_ID, &slot, None)
                        .await
                }
                Some(read) => {
                    let holder = read_doc(
                        &self.refresh_jobs,
                        tenant,
                        &read.doc.job_id,
                        |d: &JobDoc| &d.job.tenant_id,
                        "refresh job",
                    )
                    .await?
                    .map(|r| r.doc.job);
                    if let Some(holder) = holder.filter(|h| h.state.is_active()) {
                        if holder.updated_at >= stale_before {
                            return lose(holder).await;
                        }
                        self.save_refresh_job(&abandoned(holder, Utc::now()))
                            .await?;
                    }
                    self.refresh_jobs
                        .replace_item(pk(), SLOT_ID, &slot, if_match_opts(&read.cosmos_etag))
                        .await
                }
            };
            match claimed {
                Ok(_) => return Ok((job.clone(), true)),
                Err(e) if e.status().is_precondition_failed() || e.status().is_conflict() => {
                    contention_pause(attempt).await;
                }
                Err(e) => return Err(map_err(e)),
            }
        }
        Err(contended("refresh slot"))
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
        self.update_job_if(tenant, id, |job| claim(job, at))
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
            .update_job_if(&job.tenant_id, &job.id, |stored| save_over(stored, job))
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

    async fn list_knowledge_documents(
        &self,
        tenant: &TenantId,
    ) -> StoreResult<Vec<KnowledgeDocument>> {
        let scope = TenantScope::Tenant(tenant.clone());
        let mut sql = Sql::new("SELECT * FROM c");
        let feed = sql.scope(&scope);
        sql.and("c.kind = @kind", &[("@kind", DOCUMENT_KIND.into())]);
        let docs: Vec<ManifestDoc> =
            collect(&self.refresh_jobs, sql.build()?, feed, usize::MAX).await?;
        let entries = docs.into_iter().map(|d| d.entry).collect();
        Ok(within(&scope, entries, |e: &KnowledgeDocument| {
            &e.tenant_id
        }))
    }

    async fn put_knowledge_document(&self, doc: &KnowledgeDocument) -> StoreResult<()> {
        let id = manifest_id(&doc.document_id);
        let item = ManifestDoc {
            id: id.clone(),
            entry: doc.clone(),
            kind: DOCUMENT_KIND.into(),
        };
        self.refresh_jobs
            .upsert_item(doc.tenant_id.as_str().to_owned(), &id, &item, None)
            .await
            .map(|_| ())
            .map_err(map_err)
    }

    async fn delete_knowledge_document(
        &self,
        tenant: &TenantId,
        document_id: &str,
    ) -> StoreResult<()> {
        match self
            .refresh_jobs
            .delete_item(tenant.as_str().to_owned(), &manifest_id(document_id), None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status().is_not_found() => Ok(()),
            Err(e) => Err(map_err(e)),
        }
    }
}

fn contended(what: &str) -> StoreError {
    StoreError::Unavailable(anyhow::anyhow!(
        "the {what} document kept changing under {RMW_ATTEMPTS} attempts to update it"
    ))
}
