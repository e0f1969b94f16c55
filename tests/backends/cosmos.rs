//! The Cosmos DB store against the `Store` contract, on the local emulator (`rig/cosmos.js`),
//! plus what only Cosmos needs: tenant scoping that does not trust the partition routing,
//! start-up checks of the containers, and throttling.

use crate::support;

use std::sync::Arc;

use secrecy::SecretString;
use sophia::store::Store;
use sophia::store::cosmos::{CosmosAuth, CosmosConfig, CosmosStore};

const EMULATOR_KEY: &str = support::COSMOS_EMULATOR_KEY;

fn config(database: &str) -> CosmosConfig {
    CosmosConfig {
        endpoint: format!("{}/", support::rig::cosmos_endpoint()),
        database: database.to_owned(),
        auth: CosmosAuth::Key(SecretString::from(EMULATOR_KEY)),
        create_containers: true,
        audit_ttl_days: 30,
        region: "South Central US".into(),
    }
}

async fn cosmos() -> Arc<dyn Store> {
    Arc::new(
        CosmosStore::connect(config(&support::rig::fresh_database()))
            .await
            .unwrap(),
    )
}

crate::store_contract_tests!(cosmos);

/// Raw REST calls to the emulator (it ignores auth): what the SDK would send, minus signing.
async fn rest(
    base: &str,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: serde_json::Value,
) -> (reqwest::StatusCode, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .header("x-ms-version", "2020-07-15")
        .json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(serde_json::Value::Null))
}

mod cosmos_only {
    use super::*;
    use chrono::Utc;
    use reqwest::Method;
    use serde_json::json;
    use sophia::domain::{AgentType, AuditEntry, AuditOutcome, ConversationId, InstanceStatus};
    use sophia::store::{
        AuditFilter, AuditStore, ConversationStore, InstanceFilter, InstanceStore, PageRequest,
        StoreError, TenantScope, UsageStore,
    };
    use support::store_contract::{instance, tenant};

    fn page() -> PageRequest {
        PageRequest {
            limit: 100,
            continuation_token: None,
        }
    }

    /// The emulator answers a query sent to tenant A's partition with tenant B's documents
    /// (it does not enforce partition scoping); every read of the store for A still sees only
    /// A's documents.
    #[tokio::test]
    async fn tenant_reads_are_scoped_even_where_the_emulator_is_not() {
        let db = support::rig::fresh_database();
        let store = CosmosStore::connect(config(&db)).await.unwrap();
        let (a, b) = (tenant(), tenant());
        let ia = store
            .insert_instance(&instance(&a, InstanceStatus::Active))
            .await
            .unwrap();
        let ib = store
            .insert_instance(&instance(&b, InstanceStatus::Active))
            .await
            .unwrap();
        let conversation = ConversationId::new();
        for (t, i) in [(&a, ia.id), (&b, ib.id)] {
            let entry = AuditEntry::new(
                t.clone(),
                "agent.auth.success",
                "test".into(),
                AuditOutcome::Success,
            )
            .instance(i);
            store.append_audit(&entry).await.unwrap();
            store
                .add_usage(
                    t,
                    Utc::now().date_naive(),
                    sophia::domain::usage::Tally {
                        prompt_tokens: 10,
                        completion_tokens: 5,
                        requests: 1,
                    },
                    &[],
                )
                .await
                .unwrap();
        }
        store
            .append_conversation(&b, &conversation, &ib.id, &[], 10)
            .await
            .unwrap();

        // The emulator's own behaviour: partition A asked, B's document answered.
        let base = support::rig::cosmos_endpoint();
        let partition_a = format!("[\"{}\"]", a.as_str());
        let (status, body) = rest(
            &base,
            Method::POST,
            &format!("/dbs/{db}/colls/agentInstances/docs"),
            &[
                ("x-ms-documentdb-isquery", "True"),
                ("x-ms-documentdb-partitionkey", &partition_a),
            ],
            json!({"query": "SELECT * FROM c WHERE c.tenantId = @t",
                   "parameters": [{"name": "@t", "value": b.as_str()}]}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["Documents"][0]["tenantId"],
            b.as_str(),
            "the emulator is expected to leak across partitions: {body}"
        );

        // The store, for A.
        let scope = TenantScope::Tenant(a.clone());
        assert!(matches!(
            store.get_instance(&scope, &ib.id).await,
            Err(StoreError::NotFound)
        ));
        let listed = store
            .list_instances(&scope, &InstanceFilter::default(), &page())
            .await
            .unwrap();
        assert_eq!(
            listed.items.iter().map(|i| i.id).collect::<Vec<_>>(),
            vec![ia.id]
        );
        let audit = store
            .list_audit(&scope, &AuditFilter::default(), &page())
            .await
            .unwrap();
        assert_eq!(audit.items.len(), 1);
        assert!(audit.items.iter().all(|e| e.tenant_id == a));
        let filtered = store
            .list_audit(
                &scope,
                &AuditFilter {
                    instance_id: Some(ib.id),
                    action: None,
                },
                &page(),
            )
            .await
            .unwrap();
        assert!(
            filtered.items.is_empty(),
            "B's instance id through A's scope"
        );
        let today = Utc::now().date_naive();
        let usage = store.list_usage(&scope, today, today).await.unwrap();
        assert_eq!(usage.len(), 1);
        assert_eq!(usage[0].tenant_id, a);
        assert!(matches!(
            store.get_conversation(&a, &conversation).await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(
            store
                .find_live_instance(&a, AgentType::Sophia)
                .await
                .unwrap()
                .unwrap()
                .id,
            ia.id
        );
        // The platform scope sees both tenants' usage.
        let all = store
            .list_usage(&TenantScope::All, today, today)
            .await
            .unwrap();
        assert!(all.iter().any(|u| u.tenant_id == a) && all.iter().any(|u| u.tenant_id == b));
    }

    #[tokio::test]
    async fn missing_containers_fail_at_start_up_with_a_clear_message() {
        let mut cfg = config(&support::rig::fresh_database());
        cfg.create_containers = false;
        let err = CosmosStore::connect(cfg).await.unwrap_err().to_string();
        assert!(err.contains("agentInstances"), "{err}");
        assert!(err.contains("SOPHIA_COSMOS_CREATE_CONTAINERS"), "{err}");
    }

    /// Unique keys can only be set when a container is created: an `agentInstances` container
    /// made without `/liveKey` is refused at start-up rather than silently allowing two live
    /// instances.
    #[tokio::test]
    async fn an_instances_container_without_the_live_key_is_refused() {
        let db = support::rig::fresh_database();
        let base = support::rig::cosmos_endpoint();
        let (status, _) = rest(&base, Method::POST, "/dbs", &[], json!({"id": db})).await;
        assert_eq!(status, 201);
        for name in [
            "agentInstances",
            "auditLogs",
            "conversations",
            "refreshJobs",
            "usage",
        ] {
            let (status, body) = rest(
                &base,
                Method::POST,
                &format!("/dbs/{db}/colls"),
                &[],
                json!({"id": name, "partitionKey": {"paths": ["/tenantId"], "kind": "Hash"}}),
            )
            .await;
            assert_eq!(status, 201, "{body}");
        }
        let err = CosmosStore::connect(config(&db))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("/liveKey"), "{err}");
    }

    /// The rig refuses items over 2 MB as the service does, so the contract case
    /// `long_conversations_keep_saving` proves the bound against the real limit.
    #[tokio::test]
    async fn the_rig_refuses_items_over_two_megabytes() {
        let db = support::rig::fresh_database();
        let _store = CosmosStore::connect(config(&db)).await.unwrap();
        let base = support::rig::cosmos_endpoint();
        let big = "x".repeat(2 * 1024 * 1024 + 1);
        let (status, body) = rest(
            &base,
            Method::POST,
            &format!("/dbs/{db}/colls/conversations/docs"),
            &[("x-ms-documentdb-partitionkey", "[\"acme\"]")],
            json!({"id": "too-big", "tenantId": "acme", "blob": big}),
        )
        .await;
        assert_eq!(status, 413, "{body}");
        assert_eq!(body["code"], "RequestEntityTooLarge");
    }

    async fn inject(base: &str, status: u16, count: u32) {
        let res = reqwest::Client::new()
            .post(format!("{base}/_rig/faults"))
            .json(&json!({"status": status, "count": count, "retryAfterMs": 5}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 204);
    }

    /// 429s are retried with the service's `x-ms-retry-after-ms`; past the budget the store
    /// reports `Unavailable` (503 to clients), as it does for a 503 that does not clear.
    #[tokio::test]
    async fn throttling_is_retried_then_reported_unavailable() {
        let rig = support::rig::private_cosmos();
        let mut cfg = config(&support::rig::fresh_database());
        cfg.endpoint = format!("{}/", rig.url);
        let store = CosmosStore::connect(cfg).await.unwrap();
        let t = tenant();

        inject(&rig.url, 429, 3).await;
        let created = store
            .insert_instance(&instance(&t, InstanceStatus::Active))
            .await
            .expect("three 429s are absorbed by the retries");
        let scope = TenantScope::Tenant(t.clone());

        inject(&rig.url, 429, 10_000).await;
        let err = store.get_instance(&scope, &created.id).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");

        inject(&rig.url, 503, 10_000).await;
        let err = store.get_instance(&scope, &created.id).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");

        inject(&rig.url, 503, 0).await;
        assert_eq!(
            store.get_instance(&scope, &created.id).await.unwrap().id,
            created.id
        );
    }
}
