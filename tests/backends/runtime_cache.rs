//! The per-tenant runtime cache: single-flight loading, stale-if-error, invalidation.
//! Wrappers around the real SQLite store and local secret store count reads and can be made
//! to fail like an unreachable Cosmos DB / Key Vault.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use secrecy::{ExposeSecret, SecretString};
use sophia::domain::*;
use sophia::secrets::local::{LocalSecretStore, MasterKey};
use sophia::secrets::{SecretError, SecretName, SecretRef, SecretResult, SecretStore};
use sophia::store::sqlite::SqliteStore;
use sophia::store::*;
use sophia::tenant::runtime::{Resolver, RuntimeCache};
use sophia::upstream::UpstreamPolicy;

use support::faulty_store::{FaultyStore, Switch};

/// What runtimes are resolved with: the default upstream policy, the embedded index in memory.
fn resolver() -> Resolver {
    Resolver {
        upstreams: Arc::new(UpstreamPolicy::new("*.openai.azure.com", false).unwrap()),
        http: reqwest::Client::new(),
        embedded: Arc::new(sophia::knowledge::sqlite::SqliteIndex::open_in_memory().unwrap()),
        data_dir: std::env::temp_dir(),
        identities: None,
        breakers: Arc::default(),
        breaker_policy: Default::default(),
    }
}

struct FlakySecrets {
    inner: LocalSecretStore,
    switch: Arc<Switch>,
}

#[async_trait]
impl SecretStore for FlakySecrets {
    fn backend(&self) -> &'static str {
        "flaky"
    }
    async fn set_owned(
        &self,
        name: &SecretName,
        value: &SecretString,
        owner: Option<&TenantId>,
    ) -> SecretResult<String> {
        self.inner.set_owned(name, value, owner).await
    }
    async fn owner(&self, id: &str) -> SecretResult<Option<String>> {
        self.inner.owner(id).await
    }
    async fn bind(&self, id: &str, owner: &TenantId) -> SecretResult<()> {
        self.inner.bind(id, owner).await
    }
    async fn get(&self, id: &str) -> SecretResult<SecretString> {
        self.switch.reads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        if self.switch.failing.load(Ordering::SeqCst) {
            return Err(SecretError::Unavailable(anyhow::anyhow!("vault is down")));
        }
        self.inner.get(id).await
    }
    async fn get_latest(&self, name: &SecretName) -> SecretResult<Option<SecretString>> {
        self.inner.get_latest(name).await
    }
    async fn delete(&self, name: &SecretName) -> SecretResult<()> {
        self.inner.delete(name).await
    }
    fn parse_id(&self, id: &str) -> SecretResult<SecretRef> {
        self.inner.parse_id(id)
    }
}

struct Rig {
    store: Arc<dyn Store>,
    secrets: Arc<dyn SecretStore>,
    store_switch: Arc<Switch>,
    secret_switch: Arc<Switch>,
    tenant: TenantId,
    id: InstanceId,
}

async fn rig() -> Rig {
    let (store_switch, secret_switch) = (Arc::new(Switch::default()), Arc::new(Switch::default()));
    store_switch.slow_reads.store(true, Ordering::SeqCst);
    let store: Arc<dyn Store> = Arc::new(FaultyStore {
        inner: Arc::new(SqliteStore::open_in_memory().unwrap()),
        switch: store_switch.clone(),
    });
    let secrets: Arc<dyn SecretStore> = Arc::new(FlakySecrets {
        inner: LocalSecretStore::open_in_memory(MasterKey::parse(&"42".repeat(32)).unwrap())
            .unwrap(),
        switch: secret_switch.clone(),
    });
    let tenant = support::store_contract::tenant();
    let mut instance = support::store_contract::instance(&tenant, InstanceStatus::Active);
    let bundle: sophia::secrets::CredentialBundle =
        serde_json::from_str(r#"{"azureOpenaiKey":"k-1"}"#).unwrap();
    instance.keyvault_secret_id = Some(
        secrets
            .set(&SecretName::for_instance(&instance.id), &bundle.to_secret())
            .await
            .unwrap(),
    );
    instance.config.azure_openai_deployment = Some("gpt-4o".into());
    let id = store.insert_instance(&instance).await.unwrap().id;
    Rig {
        store,
        secrets,
        store_switch,
        secret_switch,
        tenant,
        id,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_cold_requests_make_one_store_read_and_one_secret_read() {
    let r = rig().await;
    let cache = Arc::new(RuntimeCache::new(
        Duration::from_secs(300),
        Duration::from_secs(600),
        1000,
        resolver(),
    ));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (cache, store, secrets, tenant, id) = (
            cache.clone(),
            r.store.clone(),
            r.secrets.clone(),
            r.tenant.clone(),
            r.id,
        );
        tasks.push(tokio::spawn(async move {
            cache
                .get(&store, &secrets, &tenant, &id)
                .await
                .map(|rt| rt.instance.id)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), r.id);
    }
    assert_eq!(
        r.store_switch.reads.load(Ordering::SeqCst),
        1,
        "store reads"
    );
    assert_eq!(
        r.secret_switch.reads.load(Ordering::SeqCst),
        1,
        "secret reads"
    );
    let stats = cache.stats().await;
    assert_eq!(stats.loads, 1);
    assert_eq!(stats.secret_reads, 1);
    assert_eq!(stats.hits + stats.misses, 1000);
    // The runtime carries the tenant's credentials and deployment.
    let rt = cache
        .get(&r.store, &r.secrets, &r.tenant, &r.id)
        .await
        .unwrap();
    let endpoint = rt.chat.as_ref().unwrap().primary();
    assert_eq!(endpoint.deployment, "gpt-4o");
    match &endpoint.auth {
        sophia::llm::UpstreamAuth::Key(k) => assert_eq!(k.expose_secret(), "k-1"),
        other => panic!("{other:?}"),
    }
    assert!(
        !format!("{rt:?}").contains("k-1"),
        "runtime Debug redacts the key"
    );
}

#[tokio::test]
async fn stale_if_error_serves_the_last_good_runtime_then_recovers() {
    let r = rig().await;
    let cache = RuntimeCache::new(
        Duration::from_millis(200),
        Duration::from_secs(60),
        100,
        resolver(),
    );
    let first = cache
        .get(&r.store, &r.secrets, &r.tenant, &r.id)
        .await
        .unwrap();
    // The vault goes down and the entry expires: the stale runtime keeps serving. (Until it
    // expires the fresh entry answers; the first answer after it is the stale copy.)
    r.secret_switch.failing.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    let stale = loop {
        let got = cache
            .get(&r.store, &r.secrets, &r.tenant, &r.id)
            .await
            .unwrap();
        if cache.stats().await.stale_served > 0 {
            break got;
        }
        assert!(Instant::now() < deadline, "the entry never expired");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(Arc::ptr_eq(&first, &stale));
    assert_eq!(cache.stats().await.stale_served, 1);
    // So does a store outage.
    r.secret_switch.failing.store(false, Ordering::SeqCst);
    r.store_switch.failing.store(true, Ordering::SeqCst);
    assert!(
        cache
            .get(&r.store, &r.secrets, &r.tenant, &r.id)
            .await
            .is_ok()
    );
    // Back up: a fresh load.
    r.store_switch.failing.store(false, Ordering::SeqCst);
    let fresh = cache
        .get(&r.store, &r.secrets, &r.tenant, &r.id)
        .await
        .unwrap();
    assert!(!Arc::ptr_eq(&first, &fresh));
}

#[tokio::test]
async fn without_a_good_copy_an_outage_is_an_error_and_staleness_is_bounded() {
    let r = rig().await;
    r.store_switch.failing.store(true, Ordering::SeqCst);
    let cache = RuntimeCache::new(
        Duration::from_millis(100),
        Duration::from_millis(100),
        100,
        resolver(),
    );
    assert!(
        cache
            .get(&r.store, &r.secrets, &r.tenant, &r.id)
            .await
            .is_err()
    );
    r.store_switch.failing.store(false, Ordering::SeqCst);
    let loaded = Instant::now();
    cache
        .get(&r.store, &r.secrets, &r.tenant, &r.id)
        .await
        .unwrap();
    r.store_switch.failing.store(true, Ordering::SeqCst);
    // Past TTL + max staleness, the stale copy is gone too: the outage becomes an error, and
    // not before the entry (TTL 100 ms - 10 % jitter) and its stale copy (+100 ms) have gone.
    let deadline = loaded + Duration::from_secs(10);
    while cache
        .get(&r.store, &r.secrets, &r.tenant, &r.id)
        .await
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "the stale copy was served forever"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        loaded.elapsed() >= Duration::from_millis(90),
        "the stale copy went before the fresh entry expired ({:?})",
        loaded.elapsed()
    );
    assert!(
        cache
            .get(&r.store, &r.secrets, &r.tenant, &r.id)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn invalidation_drops_the_stale_copy_too() {
    let r = rig().await;
    let cache = RuntimeCache::new(
        Duration::from_secs(300),
        Duration::from_secs(600),
        100,
        resolver(),
    );
    cache
        .get(&r.store, &r.secrets, &r.tenant, &r.id)
        .await
        .unwrap();
    cache.invalidate(&r.tenant, &r.id).await;
    r.store_switch.failing.store(true, Ordering::SeqCst);
    assert!(
        cache
            .get(&r.store, &r.secrets, &r.tenant, &r.id)
            .await
            .is_err(),
        "an admin change is never masked by a stale copy"
    );
    // Another tenant's id is never served from this tenant's entry.
    r.store_switch.failing.store(false, Ordering::SeqCst);
    let other = support::store_contract::tenant();
    assert!(matches!(
        cache.get(&r.store, &r.secrets, &other, &r.id).await,
        Err(sophia::tenant::runtime::RuntimeError::NotFound)
    ));
}
