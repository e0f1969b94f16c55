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

mod audit;
mod conversations;
mod instances;
mod usage;

use usage::UsageDoc;
mod manifest;
mod refresh;

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
use futures_util::TryStreamExt;
use futures_util::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, StoreResult, TenantScope};
use crate::domain::TenantId;

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
        let mut builder = CosmosClient::builder()
            .with_runtime(runtime)
            .with_binary_encoding_options(binary);
        // Each operation inside a traced request is a Cosmos DB dependency in App Insights
        // (no handler at all when telemetry is off: the SDK then builds no diagnostics context).
        if crate::telemetry::enabled() {
            builder = builder
                .with_diagnostics_handler(Arc::new(crate::telemetry::deps::CosmosDependencies));
        }
        let client = builder
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

/// What a read-modify-write step decided about the document it read.
pub(super) enum Change<D, R> {
    /// Leave the document as it is; answer `R`.
    Keep(R),
    /// Write `D` (a replace `If-Match` the ETag read, or a create when nothing was read);
    /// answer `R` once written.
    Write(D, R),
}

/// The one Cosmos DB read-modify-write loop: a point read of `id` in the tenant's partition,
/// `decide` over what was read (`None` when absent), then the write only if nobody wrote in
/// between. A lost race (412 on a replace, 409 on a create) reads and decides again after a
/// random pause, at most [`RMW_ATTEMPTS`] times. A 409 on a replace breaks a unique key:
/// `StoreError::AlreadyExists`.
pub(super) async fn read_modify_write<'a, D, R>(
    container: &ContainerClient,
    tenant: &TenantId,
    id: &str,
    tenant_of: impl Fn(&D) -> &TenantId,
    what: &'static str,
    mut decide: impl FnMut(Option<D>) -> BoxFuture<'a, StoreResult<Change<D, R>>>,
) -> StoreResult<R>
where
    D: Serialize + DeserializeOwned,
{
    for attempt in 0..RMW_ATTEMPTS {
        let current = read_doc(container, tenant, id, &tenant_of, what).await?;
        let etag = current.as_ref().map(|r| r.cosmos_etag.clone());
        let (doc, answer) = match decide(current.map(|r| r.doc)).await? {
            Change::Keep(answer) => return Ok(answer),
            Change::Write(doc, answer) => (doc, answer),
        };
        let pk = tenant.as_str().to_owned();
        let written = match &etag {
            Some(etag) => {
                container
                    .replace_item(pk, id, &doc, if_match_opts(etag))
                    .await
            }
            None => container.create_item(pk, id, &doc, None).await,
        };
        match written {
            Ok(_) => return Ok(answer),
            Err(e) if e.status().is_precondition_failed() => contention_pause(attempt).await,
            Err(e) if e.status().is_conflict() && etag.is_none() => contention_pause(attempt).await,
            Err(e) if e.status().is_conflict() => {
                return Err(StoreError::AlreadyExists(format!(
                    "the {what} document conflicts with a unique key"
                )));
            }
            Err(e) => return Err(map_err(e)),
        }
    }
    Err(contended(what))
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
}

fn contended(what: &str) -> StoreError {
    StoreError::Unavailable(anyhow::anyhow!(
        "the {what} document kept changing under {RMW_ATTEMPTS} attempts to update it"
    ))
}
