//! The `Store` contract, written once. Every backend runs every case through
//! `store_contract_tests!(make_store)`. Cases use fresh random tenant ids, so they may share
//! one store (an emulator) and run in parallel.

use std::sync::Arc;

use chrono::{Duration, Utc};
use serde_json::json;
use sophia::domain::{
    AgentInstance, AgentType, AuditEntry, AuditOutcome, ConversationId, InstanceId, InstanceStatus,
    JobState, KeyHash, KnowledgeDocument, Provider, RefreshJob, StoredMessage, TenantId,
};
use sophia::store::{AuditFilter, InstanceFilter, PageRequest, Store, StoreError, TenantScope};

pub fn tenant() -> TenantId {
    TenantId::parse(&format!(
        "t-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    ))
    .unwrap()
}

pub fn instance(tenant: &TenantId, status: InstanceStatus) -> AgentInstance {
    let now = Utc::now();
    AgentInstance {
        id: InstanceId::new(),
        tenant_id: tenant.clone(),
        agent_type: AgentType::Sophia,
        status,
        config: sophia::domain::InstanceConfig {
            provider: Provider::AzureOpenai,
            region: Some("westeurope".into()),
            model: Some("gpt-4o".into()),
            azure_project_id: None,
            azure_openai_endpoint: Some("https://x.openai.azure.com".into()),
            azure_openai_deployment: None,
            azure_embedding_deployment: None,
            azure_search_endpoint: None,
            azure_vector_store_id: None,
            azure_project_endpoint: None,
            azure_agent_id: None,
            deployments: Vec::new(),
        },
        settings: Default::default(),
        keyvault_secret_id: None,
        access_key_hash: KeyHash::new(
            "$2b$04$abcdefghijklmnopqrstuuJ3Y7JgVn7oJvHnZ8a2r8o8l2l0Yp3G".into(),
        ),
        access_key_last4: "abcd".into(),
        key_version: 1,
        previous_key: None,
        disabled_by: None,
        provisioning_error: None,
        created_at: now,
        updated_at: now,
        last_used_at: None,
        etag: String::new(),
    }
}

fn page(limit: u32, token: Option<String>) -> PageRequest {
    PageRequest {
        limit,
        continuation_token: token,
    }
}

pub async fn crud_and_etags(store: Arc<dyn Store>) {
    let t = tenant();
    let inst = store
        .insert_instance(&instance(&t, InstanceStatus::Active))
        .await
        .unwrap();
    assert!(!inst.etag.is_empty());
    let got = store
        .get_instance(&TenantScope::Tenant(t.clone()), &inst.id)
        .await
        .unwrap();
    assert_eq!(got.etag, inst.etag);
    assert_eq!(got.config.model.as_deref(), Some("gpt-4o"));

    let mut changed = got.clone();
    changed.config.model = Some("gpt-4o-mini".into());
    let updated = store.replace_instance(&changed, &got.etag).await.unwrap();
    assert_ne!(updated.etag, got.etag, "a write changes the etag");
    assert_eq!(updated.config.model.as_deref(), Some("gpt-4o-mini"));

    // A stale etag writes nothing.
    let mut stale = got.clone();
    stale.config.model = Some("stale".into());
    assert!(matches!(
        store.replace_instance(&stale, &got.etag).await,
        Err(StoreError::PreconditionFailed)
    ));
    let now = store
        .get_instance(&TenantScope::Tenant(t.clone()), &inst.id)
        .await
        .unwrap();
    assert_eq!(now.config.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(now.etag, updated.etag);

    // Missing documents.
    assert!(matches!(
        store
            .get_instance(&TenantScope::Tenant(t.clone()), &InstanceId::new())
            .await,
        Err(StoreError::NotFound)
    ));
    let ghost = instance(&t, InstanceStatus::Active);
    assert!(matches!(
        store.replace_instance(&ghost, "x").await,
        Err(StoreError::NotFound)
    ));
}

pub async fn tenant_scoping(store: Arc<dyn Store>) {
    let (a, b) = (tenant(), tenant());
    let ia = store
        .insert_instance(&instance(&a, InstanceStatus::Active))
        .await
        .unwrap();
    let ib = store
        .insert_instance(&instance(&b, InstanceStatus::Active))
        .await
        .unwrap();
    // B's id through A's scope is not found, and vice versa.
    assert!(matches!(
        store
            .get_instance(&TenantScope::Tenant(a.clone()), &ib.id)
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .get_instance(&TenantScope::Tenant(b.clone()), &ia.id)
            .await,
        Err(StoreError::NotFound)
    ));
    // The platform scope sees both.
    assert_eq!(
        store
            .get_instance(&TenantScope::All, &ib.id)
            .await
            .unwrap()
            .tenant_id,
        b
    );
    // A write that claims A's id under B's tenant does not touch A's document.
    let mut forged = ia.clone();
    forged.tenant_id = b.clone();
    forged.config.model = Some("forged".into());
    assert!(store.replace_instance(&forged, &ia.etag).await.is_err());
    let a_now = store
        .get_instance(&TenantScope::Tenant(a.clone()), &ia.id)
        .await
        .unwrap();
    assert_eq!(a_now.config.model.as_deref(), Some("gpt-4o"));
    // Listings are scoped.
    let la = store
        .list_instances(
            &TenantScope::Tenant(a.clone()),
            &InstanceFilter::default(),
            &page(100, None),
        )
        .await
        .unwrap();
    assert!(la.items.iter().all(|i| i.tenant_id == a));
    assert_eq!(la.items.len(), 1);
    let all = store
        .list_instances(
            &TenantScope::All,
            &InstanceFilter::default(),
            &page(1000, None),
        )
        .await
        .unwrap();
    assert!(all.items.iter().any(|i| i.id == ia.id) && all.items.iter().any(|i| i.id == ib.id));
    // find_live_instance is scoped too.
    assert_eq!(
        store
            .find_live_instance(&a, AgentType::Sophia)
            .await
            .unwrap()
            .unwrap()
            .id,
        ia.id
    );
    assert!(
        store
            .find_live_instance(&tenant(), AgentType::Sophia)
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn one_live_instance_per_tenant(store: Arc<dyn Store>) {
    let t = tenant();
    let first = store
        .insert_instance(&instance(&t, InstanceStatus::Active))
        .await
        .unwrap();
    assert!(matches!(
        store
            .insert_instance(&instance(&t, InstanceStatus::ToProvision))
            .await,
        Err(StoreError::AlreadyExists(_))
    ));
    // Disabled instances do not count.
    let mut disabled = first.clone();
    disabled.status = InstanceStatus::Disabled;
    let disabled = store
        .replace_instance(&disabled, &first.etag)
        .await
        .unwrap();
    assert!(
        store
            .find_live_instance(&t, AgentType::Sophia)
            .await
            .unwrap()
            .is_none()
    );
    let second = store
        .insert_instance(&instance(&t, InstanceStatus::Active))
        .await
        .unwrap();
    assert_eq!(
        store
            .find_live_instance(&t, AgentType::Sophia)
            .await
            .unwrap()
            .unwrap()
            .id,
        second.id
    );
    // Re-enabling the first would make two live instances.
    let mut revived = disabled.clone();
    revived.status = InstanceStatus::Active;
    assert!(matches!(
        store.replace_instance(&revived, &disabled.etag).await,
        Err(StoreError::AlreadyExists(_))
    ));
}

pub async fn touch_keeps_the_etag(store: Arc<dyn Store>) {
    let t = tenant();
    let inst = store
        .insert_instance(&instance(&t, InstanceStatus::Active))
        .await
        .unwrap();
    let at = Utc::now();
    store.touch_instance(&t, &inst.id, at).await.unwrap();
    let got = store
        .get_instance(&TenantScope::Tenant(t.clone()), &inst.id)
        .await
        .unwrap();
    assert_eq!(
        got.etag, inst.etag,
        "client traffic must not break an admin's If-Match"
    );
    let seen = got.last_used_at.unwrap();
    assert!((seen - at).num_milliseconds().abs() < 5);
    // Another tenant's touch changes nothing.
    store
        .touch_instance(&tenant(), &inst.id, at + Duration::hours(1))
        .await
        .unwrap();
    let again = store
        .get_instance(&TenantScope::Tenant(t), &inst.id)
        .await
        .unwrap();
    assert_eq!(again.last_used_at.unwrap(), seen);
}

pub async fn pagination_and_filters(store: Arc<dyn Store>) {
    let t = tenant();
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut inst = instance(&t, InstanceStatus::Disabled);
        inst.created_at = Utc::now() + Duration::milliseconds(i);
        ids.push(store.insert_instance(&inst).await.unwrap().id);
    }
    store
        .insert_instance(&instance(&t, InstanceStatus::Active))
        .await
        .unwrap();
    let scope = TenantScope::Tenant(t.clone());
    let filter = InstanceFilter {
        status: Some(InstanceStatus::Disabled),
    };
    let mut seen = Vec::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let p = store
            .list_instances(&scope, &filter, &page(3, token.clone()))
            .await
            .unwrap();
        assert!(p.items.len() <= 3);
        seen.extend(p.items.iter().map(|i| i.id));
        pages += 1;
        assert!(pages < 10, "pagination does not terminate");
        match p.continuation_token {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ids, "oldest first, no gaps, no duplicates");
    let active = store
        .list_instances(
            &scope,
            &InstanceFilter {
                status: Some(InstanceStatus::Active),
            },
            &page(50, None),
        )
        .await
        .unwrap();
    assert_eq!(active.items.len(), 1);
    assert!(active.continuation_token.is_none());
    assert!(matches!(
        store
            .list_instances(&scope, &filter, &page(3, Some("garbage!".into())))
            .await,
        Err(StoreError::InvalidContinuationToken)
    ));
}

pub async fn audit_queries(store: Arc<dyn Store>) {
    let (a, b) = (tenant(), tenant());
    let instance_a = InstanceId::new();
    let base = Utc::now();
    for (i, action) in [
        "agent_instance.create",
        "agent.auth.success",
        "agent.auth.failure",
        "agent.auth.success",
        "agent_instance.rotate_key",
    ]
    .iter()
    .enumerate()
    {
        let mut e = AuditEntry::new(a.clone(), action, "admin:x".into(), AuditOutcome::Success)
            .details(json!({"n": i}))
            .client("127.0.0.1");
        e.time = base + Duration::milliseconds(i as i64);
        if i % 2 == 0 {
            e = e.instance(instance_a);
        }
        store.append_audit(&e).await.unwrap();
    }
    store
        .append_audit(&AuditEntry::new(
            b.clone(),
            "agent.auth.success",
            "client:b".into(),
            AuditOutcome::Success,
        ))
        .await
        .unwrap();

    let scope_a = TenantScope::Tenant(a.clone());
    let all_a = store
        .list_audit(&scope_a, &AuditFilter::default(), &page(100, None))
        .await
        .unwrap();
    assert_eq!(all_a.items.len(), 5);
    assert!(all_a.items.iter().all(|e| e.tenant_id == a));
    let ns: Vec<i64> = all_a
        .items
        .iter()
        .map(|e| e.details["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, vec![4, 3, 2, 1, 0], "newest first");

    let auth = store
        .list_audit(
            &scope_a,
            &AuditFilter {
                action: Some("agent.auth.success".into()),
                instance_id: None,
            },
            &page(100, None),
        )
        .await
        .unwrap();
    assert_eq!(auth.items.len(), 2);
    let by_instance = store
        .list_audit(
            &scope_a,
            &AuditFilter {
                action: None,
                instance_id: Some(instance_a),
            },
            &page(100, None),
        )
        .await
        .unwrap();
    assert_eq!(by_instance.items.len(), 3);

    let first = store
        .list_audit(&scope_a, &AuditFilter::default(), &page(2, None))
        .await
        .unwrap();
    assert_eq!(first.items.len(), 2);
    let second = store
        .list_audit(
            &scope_a,
            &AuditFilter::default(),
            &page(10, first.continuation_token.clone()),
        )
        .await
        .unwrap();
    assert_eq!(second.items.len(), 3);
    assert!(second.continuation_token.is_none());

    let only_b = store
        .list_audit(
            &TenantScope::Tenant(b.clone()),
            &AuditFilter::default(),
            &page(100, None),
        )
        .await
        .unwrap();
    assert_eq!(only_b.items.len(), 1);
    assert_eq!(only_b.items[0].tenant_id, b);
}

fn message(role: &str, content: &str) -> StoredMessage {
    StoredMessage::text(role, content.into())
}

/// A conversation driven past 2 MB (Cosmos DB's item limit) keeps saving: the oldest turns
/// go, the newest stay, and the store says how many went.
pub async fn long_conversations_keep_saving(store: Arc<dyn Store>) {
    let a = tenant();
    let id = ConversationId::new();
    let instance = InstanceId::new();
    let long = "All work and no play makes a long answer. ".repeat(5_000); // ~215 KB
    let mut dropped = 0;
    for turn in 0..15 {
        dropped += store
            .append_conversation(
                &a,
                &id,
                &instance,
                &[
                    message("user", &format!("question {turn}")),
                    message("assistant", &format!("answer {turn}: {long}")),
                ],
                200,
            )
            .await
            .unwrap_or_else(|e| panic!("turn {turn} was not saved: {e:?}"));
    }
    let conv = store.get_conversation(&a, &id).await.unwrap();
    let size = serde_json::to_vec(&conv).unwrap().len();
    assert!(
        size <= sophia::domain::conversation::MAX_CONVERSATION_BYTES,
        "{size} bytes"
    );
    assert!(dropped > 0, "15 turns of 215 KB cannot all fit");
    assert_eq!(conv.messages.len() + dropped, 30, "every drop is counted");
    assert!(
        conv.messages
            .last()
            .unwrap()
            .content
            .starts_with("answer 14:")
    );
}

pub async fn conversations(store: Arc<dyn Store>) {
    let (a, b) = (tenant(), tenant());
    let id = ConversationId::new();
    let instance = InstanceId::new();
    assert!(matches!(
        store.get_conversation(&a, &id).await,
        Err(StoreError::NotFound)
    ));
    store
        .append_conversation(
            &a,
            &id,
            &instance,
            &[message("user", "hi"), message("assistant", "hello")],
            100,
        )
        .await
        .unwrap();
    store
        .append_conversation(&a, &id, &instance, &[message("user", "again")], 100)
        .await
        .unwrap();
    let conv = store.get_conversation(&a, &id).await.unwrap();
    assert_eq!(conv.tenant_id, a);
    assert_eq!(conv.instance_id, instance);
    let contents: Vec<&str> = conv.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["hi", "hello", "again"]);
    // Another tenant cannot read it, and its own conversation of the same id is separate.
    assert!(matches!(
        store.get_conversation(&b, &id).await,
        Err(StoreError::NotFound)
    ));
    store
        .append_conversation(&b, &id, &instance, &[message("user", "b's")], 100)
        .await
        .unwrap();
    assert_eq!(
        store
            .get_conversation(&a, &id)
            .await
            .unwrap()
            .messages
            .len(),
        3
    );
    assert_eq!(
        store
            .get_conversation(&b, &id)
            .await
            .unwrap()
            .messages
            .len(),
        1
    );
    // Only the newest messages are kept.
    for i in 0..10 {
        store
            .append_conversation(&a, &id, &instance, &[message("user", &format!("m{i}"))], 4)
            .await
            .unwrap();
    }
    let kept: Vec<String> = store
        .get_conversation(&a, &id)
        .await
        .unwrap()
        .messages
        .into_iter()
        .map(|m| m.content)
        .collect();
    assert_eq!(kept, ["m6", "m7", "m8", "m9"]);
}

pub async fn concurrent_appends_lose_nothing(store: Arc<dyn Store>) {
    let t = tenant();
    let id = ConversationId::new();
    let instance = InstanceId::new();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (store, t) = (Arc::clone(&store), t.clone());
        tasks.push(tokio::spawn(async move {
            store
                .append_conversation(
                    &t,
                    &id,
                    &instance,
                    &[message("user", &format!("{i}"))],
                    1000,
                )
                .await
                .unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        store
            .get_conversation(&t, &id)
            .await
            .unwrap()
            .messages
            .len(),
        20
    );
}

fn tally(
    prompt_tokens: u64,
    completion_tokens: u64,
    requests: u64,
) -> sophia::domain::usage::Tally {
    sophia::domain::usage::Tally {
        prompt_tokens,
        completion_tokens,
        requests,
    }
}

pub async fn usage_accumulates_per_tenant_and_day(store: Arc<dyn Store>) {
    let (a, b) = (tenant(), tenant());
    let d1 = chrono::NaiveDate::from_ymd_opt(2026, 11, 20).unwrap();
    let d2 = chrono::NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();
    store.add_usage(&a, d1, tally(10, 5, 1), &[]).await.unwrap();
    store.add_usage(&a, d1, tally(1, 2, 1), &[]).await.unwrap();
    store.add_usage(&a, d2, tally(7, 7, 1), &[]).await.unwrap();
    store
        .add_usage(&b, d1, tally(100, 100, 3), &[])
        .await
        .unwrap();
    let ua = store
        .list_usage(&TenantScope::Tenant(a.clone()), d1, d2)
        .await
        .unwrap();
    assert_eq!(ua.len(), 2);
    assert_eq!(
        (
            ua[0].day,
            ua[0].prompt_tokens,
            ua[0].completion_tokens,
            ua[0].total_tokens,
            ua[0].requests
        ),
        (d1, 11, 7, 18, 2)
    );
    assert_eq!((ua[1].day, ua[1].total_tokens, ua[1].requests), (d2, 14, 1));
    assert!(ua.iter().all(|u| u.tenant_id == a));
    let only_d2 = store
        .list_usage(&TenantScope::Tenant(a.clone()), d2, d2)
        .await
        .unwrap();
    assert_eq!(only_d2.len(), 1);
    let all = store.list_usage(&TenantScope::All, d1, d2).await.unwrap();
    assert!(all.iter().any(|u| u.tenant_id == b) && all.iter().any(|u| u.tenant_id == a));
    assert!(
        all.iter().all(|u| u.deployments.is_empty()),
        "no shares written"
    );

    // Failover deployments' shares add up by name, in the same write as the day's total.
    let c = tenant();
    let share = |name: &str, p, k, n| (name.to_owned(), tally(p, k, n));
    store
        .add_usage(
            &c,
            d1,
            tally(30, 3, 3),
            &[share("ptu", 10, 1, 1), share("payg", 20, 2, 2)],
        )
        .await
        .unwrap();
    store
        .add_usage(&c, d1, tally(5, 5, 1), &[share("ptu", 5, 5, 1)])
        .await
        .unwrap();
    let uc = store
        .list_usage(&TenantScope::Tenant(c.clone()), d1, d1)
        .await
        .unwrap();
    assert_eq!((uc[0].total_tokens, uc[0].requests), (43, 4));
    let mut got: Vec<(String, u64, u64)> = uc[0]
        .deployments
        .iter()
        .map(|d| (d.deployment.clone(), d.total_tokens, d.requests))
        .collect();
    got.sort();
    assert_eq!(got, [("payg".into(), 22, 2), ("ptu".into(), 21, 2)]);
    // Another company's listing shows none of them.
    let ub = store
        .list_usage(&TenantScope::Tenant(b.clone()), d1, d1)
        .await
        .unwrap();
    assert!(
        ub.iter()
            .all(|u| u.deployments.is_empty() && u.tenant_id == b)
    );
}

pub async fn limit_windows_add_roll_over_and_stay_per_tenant(store: Arc<dyn Store>) {
    use sophia::domain::limits::{WindowAdd, WindowKeys};
    let (a, b) = (tenant(), tenant());
    let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 20).unwrap();
    store.add_usage(&a, day, tally(1, 1, 1), &[]).await.unwrap();
    let t0 = WindowKeys::at("2026-11-20T10:00:05Z".parse().unwrap());
    let add = |tokens, requests| WindowAdd {
        tokens,
        requests,
        ..WindowAdd::default()
    };
    let w = store
        .add_to_limit_windows(&a, t0, add(10, 1))
        .await
        .unwrap();
    assert_eq!(
        (w.minute_tokens, w.minute_requests, w.day_tokens),
        (10, 1, 10)
    );
    let w = store.add_to_limit_windows(&a, t0, add(5, 2)).await.unwrap();
    assert_eq!(
        (w.minute_tokens, w.minute_requests, w.month_tokens),
        (15, 3, 15)
    );
    // An empty addition reads.
    let read = store.add_to_limit_windows(&a, t0, add(0, 0)).await.unwrap();
    assert_eq!(read, w);
    // Another company's windows are its own.
    let other = store.add_to_limit_windows(&b, t0, add(1, 1)).await.unwrap();
    assert_eq!((other.minute_tokens, other.day_tokens), (1, 1));
    // The next minute starts again; the day and month carry on.
    let t1 = WindowKeys::at("2026-11-20T10:01:00Z".parse().unwrap());
    let w = store.add_to_limit_windows(&a, t1, add(1, 1)).await.unwrap();
    assert_eq!(
        (
            w.minute_tokens,
            w.minute_requests,
            w.day_tokens,
            w.month_tokens
        ),
        (1, 1, 16, 16)
    );
    // Concurrent additions are all counted.
    let adds = (0..8).map(|_| store.add_to_limit_windows(&a, t1, add(1, 1)));
    for r in futures_util::future::join_all(adds).await {
        r.unwrap();
    }
    let w = store.add_to_limit_windows(&a, t1, add(0, 0)).await.unwrap();
    assert_eq!((w.minute_tokens, w.minute_requests), (9, 9));
    // The daily usage listing does not see the windows.
    let usage = store
        .list_usage(&TenantScope::Tenant(a.clone()), day, day)
        .await
        .unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].total_tokens, 2);
    let all = store.list_usage(&TenantScope::All, day, day).await.unwrap();
    assert!(all.iter().all(|u| u.day == day));
}

pub fn job(tenant: &TenantId) -> RefreshJob {
    RefreshJob::queued(
        tenant.clone(),
        InstanceId::new(),
        format!("folder:{tenant}"),
        false,
        "contract".into(),
    )
}

pub async fn a_queued_job_is_claimed_once(store: Arc<dyn Store>) {
    let (a, b) = (tenant(), tenant());
    let queued = job(&a);
    let stale_before = Utc::now() - Duration::minutes(10);
    assert!(
        store
            .begin_refresh_job(&queued, stale_before)
            .await
            .unwrap()
            .1
    );
    // Another tenant cannot claim it, nor can anyone claim a job that does not exist.
    assert!(matches!(
        store.claim_refresh_job(&b, &queued.id, Utc::now()).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .claim_refresh_job(&a, &RefreshJob::new_id(), Utc::now())
            .await,
        Err(StoreError::NotFound)
    ));
    // Listed among the queued jobs (read at start-up), until claimed.
    let queued_ids =
        |jobs: Vec<RefreshJob>| -> Vec<String> { jobs.into_iter().map(|j| j.id).collect() };
    assert!(queued_ids(store.queued_refresh_jobs(1_000).await.unwrap()).contains(&queued.id));
    // Eight deliveries at once: one runs it.
    let at = Utc::now();
    let claims = (0..8).map(|_| {
        let (store, a, id) = (Arc::clone(&store), a.clone(), queued.id.clone());
        async move { store.claim_refresh_job(&a, &id, at).await.unwrap() }
    });
    let results = futures_util::future::join_all(claims).await;
    assert_eq!(results.iter().filter(|(_, won)| *won).count(), 1);
    for (job, _) in &results {
        assert_eq!(job.state, JobState::Running);
    }
    let read = store.get_refresh_job(&a, &queued.id).await.unwrap();
    assert_eq!(read.state, JobState::Running);
    assert!(!queued_ids(store.queued_refresh_jobs(1_000).await.unwrap()).contains(&queued.id));
    assert!(read.started_at.is_some());
    // A finished job is not claimed again.
    let mut done = read;
    done.state = JobState::Succeeded;
    store.save_refresh_job(&done).await.unwrap();
    let (again, won) = store
        .claim_refresh_job(&a, &queued.id, Utc::now())
        .await
        .unwrap();
    assert!(!won);
    assert_eq!(again.state, JobState::Succeeded);
}

pub async fn progress_is_saved_only_while_running(store: Arc<dyn Store>) {
    let a = tenant();
    let queued = job(&a);
    let long_ago = Utc::now() - Duration::minutes(10);
    assert!(store.begin_refresh_job(&queued, long_ago).await.unwrap().1);
    // Not claimed yet: the worker's save is refused.
    assert!(!store.save_refresh_progress(&queued).await.unwrap());
    let (mut running, won) = store
        .claim_refresh_job(&a, &queued.id, Utc::now())
        .await
        .unwrap();
    assert!(won);
    running.counts.seen = 5;
    assert!(store.save_refresh_progress(&running).await.unwrap());
    assert_eq!(
        store
            .get_refresh_job(&a, &queued.id)
            .await
            .unwrap()
            .counts
            .seen,
        5
    );
    // Taken for dead (every job is stale against a cutoff in the future) and replaced.
    let newer = job(&a);
    let (_, created) = store
        .begin_refresh_job(&newer, Utc::now() + Duration::minutes(1))
        .await
        .unwrap();
    assert!(created);
    running.counts.seen = 9;
    running.state = JobState::Succeeded;
    assert!(!store.save_refresh_progress(&running).await.unwrap());
    let stored = store.get_refresh_job(&a, &queued.id).await.unwrap();
    assert_eq!((stored.state, stored.counts.seen), (JobState::Failed, 5));
    // A job that does not exist is not written either.
    let mut ghost = job(&a);
    ghost.state = JobState::Running;
    assert!(!store.save_refresh_progress(&ghost).await.unwrap());
    assert!(matches!(
        store.get_refresh_job(&a, &ghost.id).await,
        Err(StoreError::NotFound)
    ));
}

pub async fn one_active_refresh_per_tenant(store: Arc<dyn Store>) {
    let (a, b) = (tenant(), tenant());
    let stale_before = Utc::now() - Duration::minutes(10);
    let first = job(&a);
    let (got, created) = store.begin_refresh_job(&first, stale_before).await.unwrap();
    assert!(created);
    assert_eq!(got.id, first.id);
    // A second request while the first is active gets the first.
    let (got, created) = store
        .begin_refresh_job(&job(&a), stale_before)
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(got.id, first.id);
    // Another tenant is not blocked, and cannot read A's job.
    let other = job(&b);
    assert!(
        store
            .begin_refresh_job(&other, stale_before)
            .await
            .unwrap()
            .1
    );
    assert!(matches!(
        store.get_refresh_job(&b, &first.id).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.get_refresh_job(&a, &RefreshJob::new_id()).await,
        Err(StoreError::NotFound)
    ));
    // Progress is saved; a finished job frees the slot.
    let mut running = first.clone();
    running.state = JobState::Running;
    running.counts.seen = 3;
    store.save_refresh_job(&running).await.unwrap();
    let read = store.get_refresh_job(&a, &first.id).await.unwrap();
    assert_eq!((read.state, read.counts.seen), (JobState::Running, 3));
    running.state = JobState::Succeeded;
    running.finished_at = Some(Utc::now());
    store.save_refresh_job(&running).await.unwrap();
    let next = job(&a);
    let (got, created) = store.begin_refresh_job(&next, stale_before).await.unwrap();
    assert!(created);
    assert_eq!(got.id, next.id);
    assert_eq!(
        store.get_refresh_job(&a, &first.id).await.unwrap().state,
        JobState::Succeeded
    );
}

pub async fn a_stale_refresh_is_abandoned(store: Arc<dyn Store>) {
    let a = tenant();
    let mut old = job(&a);
    old.state = JobState::Running;
    old.updated_at = Utc::now() - Duration::hours(1);
    assert!(
        store
            .begin_refresh_job(&old, Utc::now() - Duration::days(1))
            .await
            .unwrap()
            .1
    );
    let fresh = job(&a);
    let (got, created) = store
        .begin_refresh_job(&fresh, Utc::now() - Duration::minutes(10))
        .await
        .unwrap();
    assert!(created, "a job without progress for an hour is abandoned");
    assert_eq!(got.id, fresh.id);
    let old = store.get_refresh_job(&a, &old.id).await.unwrap();
    assert_eq!(old.state, JobState::Failed);
    assert!(old.error.unwrap().contains("abandoned"));
}

pub async fn concurrent_refreshes_record_one_job(store: Arc<dyn Store>) {
    let a = tenant();
    let stale_before = Utc::now() - Duration::minutes(10);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (store, a) = (Arc::clone(&store), a.clone());
        tasks.push(tokio::spawn(async move {
            store
                .begin_refresh_job(&job(&a), stale_before)
                .await
                .unwrap()
        }));
    }
    let mut ids = std::collections::HashSet::new();
    let mut created = 0;
    for task in tasks {
        let (job, new) = task.await.unwrap();
        ids.insert(job.id);
        created += usize::from(new);
    }
    assert_eq!(created, 1, "exactly one request recorded a job");
    assert_eq!(ids.len(), 1, "every request got the same job: {ids:?}");
}

pub async fn knowledge_manifest_per_tenant(store: Arc<dyn Store>) {
    let (a, b) = (tenant(), tenant());
    let entry = |t: &TenantId, path: &str, hash: &str| KnowledgeDocument {
        tenant_id: t.clone(),
        document_id: path.into(),
        content_hash: hash.into(),
        chunks: 2,
        size: 10,
        indexed_at: Utc::now(),
        foundry_file_id: None,
    };
    store
        .put_knowledge_document(&entry(&a, "policies/leave #2?.md", "sha256:1"))
        .await
        .unwrap();
    store
        .put_knowledge_document(&entry(&a, "faq.txt", "sha256:2"))
        .await
        .unwrap();
    store
        .put_knowledge_document(&entry(&b, "faq.txt", "sha256:b"))
        .await
        .unwrap();
    // Replacing keeps one entry per path.
    store
        .put_knowledge_document(&entry(&a, "faq.txt", "sha256:3"))
        .await
        .unwrap();
    let mut docs = store.list_knowledge_documents(&a).await.unwrap();
    docs.sort_by(|x, y| x.document_id.cmp(&y.document_id));
    let seen: Vec<(&str, &str)> = docs
        .iter()
        .map(|d| (d.document_id.as_str(), d.content_hash.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("faq.txt", "sha256:3"),
            ("policies/leave #2?.md", "sha256:1")
        ]
    );
    store
        .delete_knowledge_document(&a, "faq.txt")
        .await
        .unwrap();
    store
        .delete_knowledge_document(&a, "absent.md")
        .await
        .unwrap();
    assert_eq!(store.list_knowledge_documents(&a).await.unwrap().len(), 1);
    let bs = store.list_knowledge_documents(&b).await.unwrap();
    assert_eq!(bs.len(), 1);
    assert_eq!(bs[0].content_hash, "sha256:b");
}

pub async fn a_window_is_claimed_once(store: Arc<dyn Store>) {
    let (a, b) = (tenant(), tenant());
    assert!(store.claim_window(&a, "tokensPerDay", 100).await.unwrap());
    assert!(!store.claim_window(&a, "tokensPerDay", 100).await.unwrap());
    assert!(
        !store.claim_window(&a, "tokensPerDay", 99).await.unwrap(),
        "an older window"
    );
    assert!(
        store.claim_window(&a, "tokensPerMonth", 100).await.unwrap(),
        "per limit"
    );
    assert!(
        store.claim_window(&b, "tokensPerDay", 100).await.unwrap(),
        "per company"
    );
    assert!(
        store.claim_window(&a, "tokensPerDay", 101).await.unwrap(),
        "the next window"
    );
    // Of concurrent claims exactly one wins.
    let claims = (0..8).map(|_| {
        let (store, a) = (Arc::clone(&store), a.clone());
        tokio::spawn(async move { store.claim_window(&a, "tokensPerDay", 102).await.unwrap() })
    });
    let won = futures_util::future::join_all(claims)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count();
    assert_eq!(won, 1);
    // The claims are not daily usage.
    let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 20).unwrap();
    assert!(
        store
            .list_usage(&TenantScope::Tenant(a.clone()), day, day)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Generates one `#[tokio::test]` per contract case for a backend.
#[macro_export]
macro_rules! store_contract_tests {
    ($make:expr) => {
        $crate::store_contract_tests!(@case $make, crud_and_etags, tenant_scoping, one_live_instance_per_tenant,
            touch_keeps_the_etag, pagination_and_filters, audit_queries, conversations,
            long_conversations_keep_saving,
            concurrent_appends_lose_nothing, usage_accumulates_per_tenant_and_day,
            limit_windows_add_roll_over_and_stay_per_tenant, a_window_is_claimed_once,
            one_active_refresh_per_tenant, a_stale_refresh_is_abandoned,
            concurrent_refreshes_record_one_job, a_queued_job_is_claimed_once,
            progress_is_saved_only_while_running,
            knowledge_manifest_per_tenant);
    };
    (@case $make:expr, $($case:ident),*) => {
        $(
            #[tokio::test]
            async fn $case() {
                let store = $make().await;
                $crate::support::store_contract::$case(store).await;
            }
        )*
    };
}
