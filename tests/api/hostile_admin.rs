//! The hostile company admin: an `ADMIN` of ACME, with a valid token for its own company,
//! tries every admin-writable field to point SOPHIA at another company's resources, at
//! another company's secrets (including look-alike company ids) or at SOPHIA's own identity.
//! Each attempt is refused, names the field, and writes nothing: not the instance, not a
//! secret, not an update audit row.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{TestApp, assert_problem, spawn_app_with};

/// SOPHIA's own identity (`SOPHIA_AZURE_CLIENT_ID`).
const SOPHIA_IDENTITY: &str = "11111111-1111-1111-1111-111111111111";
/// ACME's and BETA's user-assigned identities.
const ACME_IDENTITY: &str = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa";
const BETA_IDENTITY: &str = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb";

const BETA_OPENAI: &str = "https://beta.openai.azure.com";
const BETA_SEARCH: &str = "https://beta.search.windows.net";
const BETA_CONTAINER: &str = "https://beta.blob.core.windows.net/beta-docs";

async fn spawn() -> TestApp {
    spawn_app_with(&[("SOPHIA_AZURE_CLIENT_ID", SOPHIA_IDENTITY)]).await
}

/// What an attempt must leave as it was.
struct Snapshot {
    instance: Value,
    secrets: i64,
    updates: usize,
}

async fn snapshot(app: &TestApp, id: &str) -> Snapshot {
    let instance: Value = app
        .get(
            &format!("/admin/agent-instances/{id}"),
            &app.platform_token(),
        )
        .await
        .json()
        .await
        .unwrap();
    Snapshot {
        instance,
        secrets: secret_versions(app),
        updates: app
            .audit("action=agent_instance.update&limit=200")
            .await
            .len(),
    }
}

fn secret_versions(app: &TestApp) -> i64 {
    let conn = rusqlite::Connection::open(app.dir.path().join("secrets.db")).unwrap();
    conn.query_row("SELECT COUNT(*) FROM secrets", [], |r| r.get(0))
        .unwrap()
}

/// PATCHes as the company admin; asserts the refusal (status, code, field) and that nothing
/// was written.
async fn refused_patch(
    app: &TestApp,
    token: &str,
    id: &str,
    body: Value,
    status: StatusCode,
    field: &str,
) {
    let before = snapshot(app, id).await;
    let resp = app
        .request(
            Method::PATCH,
            &format!("/admin/agent-instances/{id}"),
            Some(token),
            Some(body.clone()),
        )
        .await;
    let code = if status == StatusCode::FORBIDDEN {
        "forbidden"
    } else {
        "validation_failed"
    };
    let problem = assert_problem(resp, status, code).await;
    assert_eq!(problem["field"], field, "{body}: {problem}");
    let after = snapshot(app, id).await;
    assert_eq!(
        after.instance, before.instance,
        "{body}: the instance changed"
    );
    assert_eq!(
        after.secrets, before.secrets,
        "{body}: a secret was written"
    );
    assert_eq!(
        after.updates, before.updates,
        "{body}: an update was audited"
    );
}

/// Stores a secret as an operator would, bound to `owner` (or to nobody).
async fn operator_secret(app: &TestApp, name: &str, owner: Option<&str>) -> String {
    let owner = owner.map(|o| sophia::domain::TenantId::parse(o).unwrap());
    app.state
        .secrets
        .set_owned(
            &sophia::secrets::SecretName::parse(name).unwrap(),
            &secrecy::SecretString::from(r#"{"azureOpenaiKey":"stolen-key-9999"}"#),
            owner.as_ref(),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn a_company_admin_cannot_point_its_instance_at_another_company_or_at_sophia() {
    let app = spawn().await;
    let platform = app.platform_token();
    let acme = app.admin_token("acme");

    // BETA, set up by the platform: its own identity, endpoints, index and container.
    let beta = app
        .create_instance_with(
            "beta",
            json!({"azureOpenaiEndpoint": BETA_OPENAI, "azureSearchEndpoint": BETA_SEARCH,
                   "settings": {"authMode": "managedIdentity", "managedIdentityClientId": BETA_IDENTITY,
                                "searchIndex": "beta-index", "knowledgeContainerUrl": BETA_CONTAINER}}),
        )
        .await;
    let beta_bundle = app
        .create_instance_with(
            "beta-keys",
            json!({"credentials": {"azureOpenaiKey": "beta-key"}}),
        )
        .await
        .body["keyvaultSecretId"]
        .as_str()
        .unwrap()
        .to_owned();
    // Secrets of look-alike companies, and an unbound one named like ACME's.
    let lookalikes = [
        operator_secret(&app, "acme-corp-openai", Some("acme-corp")).await,
        operator_secret(&app, "ACME-openai", Some("ACME")).await,
        operator_secret(&app, "acme-corp2-openai", Some("acme.corp")).await,
        operator_secret(&app, "acme-openai", None).await,
    ];

    // 1. At create time, before ACME has an instance: nothing may be created.
    let creates = [
        (
            json!({"settings": {"authMode": "managedIdentity", "managedIdentityClientId": BETA_IDENTITY}}),
            StatusCode::FORBIDDEN,
            "settings.authMode",
        ),
        (
            json!({"settings": {"authMode": "managedIdentity", "managedIdentityClientId": SOPHIA_IDENTITY}}),
            StatusCode::FORBIDDEN,
            "settings.authMode",
        ),
        (
            json!({"settings": {"managedIdentityClientId": ACME_IDENTITY}}),
            StatusCode::FORBIDDEN,
            "settings.managedIdentityClientId",
        ),
        (
            json!({"settings": {"knowledgeContainerUrl": BETA_CONTAINER}}),
            StatusCode::BAD_REQUEST,
            "credentials.knowledgeSas",
        ),
        (
            json!({"keyvaultSecretId": beta_bundle}),
            StatusCode::BAD_REQUEST,
            "keyvaultSecretId",
        ),
    ];
    let secrets_before = secret_versions(&app);
    for (extra, status, field) in creates.iter().cloned().chain(lookalikes.iter().map(|id| {
        (
            json!({"keyvaultSecretId": id}),
            StatusCode::BAD_REQUEST,
            "keyvaultSecretId",
        )
    })) {
        let mut body = json!({"companyId": "acme", "agentType": "SOPHIA",
                              "azureOpenaiEndpoint": "https://acme.openai.azure.com"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let resp = app
            .request(
                Method::POST,
                "/admin/agent-instances",
                Some(&acme),
                Some(body.clone()),
            )
            .await;
        let code = if status == StatusCode::FORBIDDEN {
            "forbidden"
        } else {
            "validation_failed"
        };
        let problem = assert_problem(resp, status, code).await;
        assert_eq!(problem["field"], field, "{body}: {problem}");
    }
    let listed: Value = app
        .get("/admin/agent-instances?companyId=acme", &platform)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"], json!([]), "no ACME instance was created");
    assert_eq!(
        secret_versions(&app),
        secrets_before,
        "no secret was written"
    );

    // 2. ACME's own instance, with its own API key.
    let created = app
        .create_instance_with(
            "acme",
            json!({"credentials": {"azureOpenaiKey": "acme-key"}}),
        )
        .await;
    let id = created.id.as_str();
    let attempts = [
        (
            json!({"settings": {"authMode": "managedIdentity", "managedIdentityClientId": BETA_IDENTITY}}),
            StatusCode::FORBIDDEN,
            "settings.authMode",
        ),
        (
            json!({"settings": {"authMode": "managedIdentity", "managedIdentityClientId": SOPHIA_IDENTITY}}),
            StatusCode::FORBIDDEN,
            "settings.authMode",
        ),
        (
            json!({"settings": {"managedIdentityClientId": BETA_IDENTITY}}),
            StatusCode::FORBIDDEN,
            "settings.managedIdentityClientId",
        ),
        (
            json!({"settings": {"knowledgeContainerUrl": BETA_CONTAINER}}),
            StatusCode::BAD_REQUEST,
            "credentials.knowledgeSas",
        ),
        (
            json!({"keyvaultSecretId": beta_bundle}),
            StatusCode::BAD_REQUEST,
            "keyvaultSecretId",
        ),
    ];
    for (body, status, field) in attempts {
        refused_patch(&app, &acme, id, body, status, field).await;
    }
    for secret in &lookalikes {
        refused_patch(
            &app,
            &acme,
            id,
            json!({"keyvaultSecretId": secret}),
            StatusCode::BAD_REQUEST,
            "keyvaultSecretId",
        )
        .await;
    }
    // With its own SAS the company may read its own container.
    let resp = app
        .request(
            Method::PATCH,
            &format!("/admin/agent-instances/{id}"),
            Some(&acme),
            Some(json!({"settings": {"knowledgeContainerUrl": "https://acme.blob.core.windows.net/acme-docs"},
                        "credentials": {"knowledgeSas": "sv=2024-11-04&sig=acme"}})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);

    // 3. The platform binds ACME's own identity: now nothing that decides where that identity
    //    goes is the company admin's to change.
    let resp = app
        .request(
            Method::PATCH,
            &format!("/admin/agent-instances/{id}"),
            Some(&platform),
            Some(json!({"azureSearchEndpoint": "https://acme.search.windows.net",
                        "settings": {"authMode": "managedIdentity", "managedIdentityClientId": ACME_IDENTITY,
                                     "searchIndex": "acme-index", "knowledgePrefix": "acme/"}})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let locked = [
        (
            json!({"azureOpenaiEndpoint": BETA_OPENAI}),
            "azureOpenaiEndpoint",
        ),
        (json!({"azureOpenaiEndpoint": null}), "azureOpenaiEndpoint"),
        // A failover deployment is one more place the identity would be sent.
        (
            json!({"deployments": [{"name": "spill", "endpoint": BETA_OPENAI, "deployment": "gpt-4o"}]}),
            "deployments",
        ),
        (
            json!({"azureSearchEndpoint": BETA_SEARCH}),
            "azureSearchEndpoint",
        ),
        (
            json!({"settings": {"searchIndex": "beta-index"}}),
            "settings.searchIndex",
        ),
        (
            json!({"settings": {"knowledgeContainerUrl": BETA_CONTAINER}}),
            "settings.knowledgeContainerUrl",
        ),
        (
            json!({"settings": {"knowledgePrefix": "beta/"}}),
            "settings.knowledgePrefix",
        ),
        (
            json!({"settings": {"knowledgePrefix": null}}),
            "settings.knowledgePrefix",
        ),
        (
            json!({"settings": {"managedIdentityClientId": BETA_IDENTITY}}),
            "settings.managedIdentityClientId",
        ),
        (
            json!({"settings": {"authMode": "apiKey"}}),
            "settings.authMode",
        ),
        (json!({"settings": null}), "settings.authMode"),
        // The Foundry runtime runs on the same identity: where it goes is locked too.
        (
            json!({"azureProjectEndpoint": "https://beta-ai.services.ai.azure.com/api/projects/beta"}),
            "azureProjectEndpoint",
        ),
        (json!({"azureAgentId": "sophia-beta:1"}), "azureAgentId"),
        (
            json!({"azureVectorStoreId": "vs_beta"}),
            "azureVectorStoreId",
        ),
        (
            json!({"settings": {"runtime": "foundry"}}),
            "settings.runtime",
        ),
    ];
    for (body, field) in locked {
        refused_patch(&app, &acme, id, body, StatusCode::FORBIDDEN, field).await;
    }
    // What does not move the identity is still the company's.
    let resp = app
        .request(
            Method::PATCH,
            &format!("/admin/agent-instances/{id}"),
            Some(&acme),
            Some(json!({"azureOpenaiDeployment": "gpt-4o-mini", "settings": {"systemPrompt": "Be brief."}})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);

    // 4. Status: a platform admin's disable is not the company's to lift.
    let resp = app
        .request(
            Method::DELETE,
            &format!("/admin/agent-instances/{id}"),
            Some(&platform),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    refused_patch(
        &app,
        &acme,
        id,
        json!({"status": "ACTIVE"}),
        StatusCode::FORBIDDEN,
        "status",
    )
    .await;

    // Not even a platform admin may give a company SOPHIA's own identity.
    let resp = app
        .request(
            Method::PATCH,
            &format!("/admin/agent-instances/{}", beta.id),
            Some(&platform),
            Some(json!({"settings": {"managedIdentityClientId": SOPHIA_IDENTITY}})),
        )
        .await;
    let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(problem["field"], "settings.managedIdentityClientId");

    // Nor bind one company's identity to another: each identity belongs to one company.
    let resp = app
        .request(
            Method::POST,
            "/admin/agent-instances",
            Some(&platform),
            Some(json!({"companyId": "gamma", "agentType": "SOPHIA",
                        "azureOpenaiEndpoint": "https://gamma.openai.azure.com",
                        "settings": {"authMode": "managedIdentity", "managedIdentityClientId": BETA_IDENTITY.to_uppercase()}})),
        )
        .await;
    assert_problem(resp, StatusCode::CONFLICT, "conflict").await;

    // BETA was never touched.
    let beta_now: Value = app
        .get(&format!("/admin/agent-instances/{}", beta.id), &platform)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(beta_now["etag"], beta.body["etag"]);
    // The refusals are logged as such, without any credential.
}

/// A platform admin binding an existing secret records the binding; one bound to another
/// company is a conflict, and a company admin may then use what is bound to its company.
#[tokio::test]
async fn platform_admins_bind_existing_secrets_and_bindings_are_exact() {
    let app = spawn().await;
    let platform = app.platform_token();
    let unbound = operator_secret(&app, "acme-openai", None).await;
    let corp = operator_secret(&app, "corp-openai", Some("acme-corp")).await;
    let created = app.create_instance("acme").await;
    let path = format!("/admin/agent-instances/{}", created.id);
    let resp = app
        .request(
            Method::PATCH,
            &path,
            Some(&platform),
            Some(json!({"keyvaultSecretId": corp})),
        )
        .await;
    assert_problem(resp, StatusCode::CONFLICT, "conflict").await;
    assert_eq!(
        app.state.secrets.owner(&corp).await.unwrap().as_deref(),
        Some("acme-corp"),
        "the other company's binding stands"
    );
    let resp = app
        .request(
            Method::PATCH,
            &path,
            Some(&platform),
            Some(json!({"keyvaultSecretId": unbound})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        app.state.secrets.owner(&unbound).await.unwrap().as_deref(),
        Some("acme")
    );
    // Now bound to ACME, ACME's admin may reference it (e.g. re-attach after a detach)...
    let acme = app.admin_token("acme");
    let detach = app
        .request(
            Method::PATCH,
            &path,
            Some(&acme),
            Some(json!({"keyvaultSecretId": null})),
        )
        .await;
    assert_eq!(detach.status(), StatusCode::OK);
    let attach = app
        .request(
            Method::PATCH,
            &path,
            Some(&acme),
            Some(json!({"keyvaultSecretId": unbound})),
        )
        .await;
    assert_eq!(attach.status(), StatusCode::OK);
    // ...and the bundles SOPHIA writes are bound to their company.
    let written = app
        .request(
            Method::PATCH,
            &path,
            Some(&acme),
            Some(json!({"credentials": {"azureOpenaiKey": "new-acme-key"}})),
        )
        .await;
    let body: Value = written.json().await.unwrap();
    let id = body["keyvaultSecretId"].as_str().unwrap();
    assert!(id.contains("sophia-instance-"));
    assert_eq!(
        app.state.secrets.owner(id).await.unwrap().as_deref(),
        Some("acme")
    );
}

/// Defence in depth: an instance document that names another company's credential bundle
/// (however it got there) never gets to use it — the runtime checks the secret's binding.
#[tokio::test]
async fn a_foreign_credential_bundle_is_never_used() {
    let sim = crate::support::spawn_simulator(sophia::dev::simulator::SimConfig {
        keys: vec!["beta-secret-key".into()],
        ..Default::default()
    })
    .await;
    let app = spawn_app_with(&[("SOPHIA_ALLOW_LOCAL_UPSTREAMS", "true")]).await;
    let beta = app
        .create_instance_with(
            "beta",
            json!({"azureOpenaiEndpoint": sim.base, "azureOpenaiDeployment": "gpt-4o",
                   "credentials": {"azureOpenaiKey": "beta-secret-key"}}),
        )
        .await;
    let acme = app
        .create_instance_with(
            "acme",
            json!({"azureOpenaiEndpoint": sim.base, "azureOpenaiDeployment": "gpt-4o",
                   "credentials": {"azureOpenaiKey": "acme-wrong-key"}}),
        )
        .await;
    // Tamper with ACME's document behind the API's back.
    let acme_id: sophia::domain::InstanceId = acme.id.parse().unwrap();
    let tenant = sophia::domain::TenantId::parse("acme").unwrap();
    let mut doc = app
        .state
        .store
        .get_instance(
            &sophia::store::TenantScope::Tenant(tenant.clone()),
            &acme_id,
        )
        .await
        .unwrap();
    let etag = doc.etag.clone();
    doc.keyvault_secret_id = beta.body["keyvaultSecretId"].as_str().map(str::to_owned);
    app.state.store.replace_instance(&doc, &etag).await.unwrap();
    app.state.runtimes.invalidate(&tenant, &acme_id).await;
    let token = app.service_token("acme", &acme.key).await;
    let resp = app
        .request(
            Method::POST,
            "/chat",
            Some(&token),
            Some(json!({"message": "hello"})),
        )
        .await;
    assert_problem(resp, StatusCode::CONFLICT, "instance_not_configured").await;
    // Diagnostics say why, and use nothing of BETA's either.
    let report: Value = app
        .request(Method::POST, "/config/test", Some(&token), None)
        .await
        .json()
        .await
        .unwrap();
    let secret = &report["checks"][0];
    assert_eq!(
        (&secret["name"], &secret["ok"]),
        (&json!("secret"), &json!(false))
    );
    assert!(
        secret["detail"]
            .as_str()
            .unwrap()
            .contains("bound to another company"),
        "{report}"
    );
    assert!(
        sim.sim.requests().is_empty(),
        "BETA's key reached the model on ACME's behalf"
    );
}

/// A company's own App Insights connection string is a credential SOPHIA posts telemetry to:
/// a company admin must not aim it at a private or metadata address, a host off the upstream
/// list, or anything that is not a connection string. Each attempt names the field and writes
/// nothing; the value is never echoed.
#[tokio::test]
async fn a_company_admin_cannot_aim_its_telemetry_at_a_private_or_foreign_endpoint() {
    const IKEY: &str = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a";
    let app = spawn().await;
    let acme = app.admin_token("acme");
    let created = app
        .create_instance_with(
            "acme",
            json!({"credentials": {"azureOpenaiKey": "acme-key"}}),
        )
        .await;
    let id = created.id.as_str();
    let field = "credentials.appInsightsConnectionString";
    let bad = [
        format!("InstrumentationKey={IKEY};IngestionEndpoint=http://169.254.169.254/"),
        format!("InstrumentationKey={IKEY};IngestionEndpoint=https://169.254.169.254/"),
        format!("InstrumentationKey={IKEY};IngestionEndpoint=https://10.0.0.5/"),
        format!("InstrumentationKey={IKEY};IngestionEndpoint=https://[fd00::1]/"),
        format!("InstrumentationKey={IKEY};IngestionEndpoint=https://127.0.0.1:8080/"),
        format!("InstrumentationKey={IKEY};IngestionEndpoint=https://collector.attacker.example/"),
        format!("InstrumentationKey={IKEY};IngestionEndpoint=https://in.applicationinsights.azure.com.attacker.example/"),
        format!("InstrumentationKey={IKEY};IngestionEndpoint=https://u:p@westeurope-5.in.applicationinsights.azure.com/"),
        format!("InstrumentationKey={IKEY};IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/?x=1"),
        format!("InstrumentationKey={IKEY};IngestionEndpoint=ftp://westeurope-5.in.applicationinsights.azure.com/"),
        format!("InstrumentationKey={IKEY};IngestionEndpoint=http://westeurope-5.in.applicationinsights.azure.com/"),
        "InstrumentationKey=not-a-guid!;IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/".to_owned(),
        "IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/".to_owned(),
        "just some text".to_owned(),
        String::new(),
    ];
    for cs in &bad {
        let body = json!({"credentials": {"appInsightsConnectionString": cs}});
        let before = snapshot(&app, id).await;
        let resp = app
            .request(
                Method::PATCH,
                &format!("/admin/agent-instances/{id}"),
                Some(&acme),
                Some(body.clone()),
            )
            .await;
        let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(problem["field"], field, "{cs}: {problem}");
        assert!(
            !problem.to_string().contains(IKEY),
            "the key was echoed: {problem}"
        );
        let after = snapshot(&app, id).await;
        assert_eq!(
            after.instance, before.instance,
            "{cs}: the instance changed"
        );
        assert_eq!(after.secrets, before.secrets, "{cs}: a secret was written");
        assert_eq!(after.updates, before.updates, "{cs}: an update was audited");
    }
    // Not at create time either (checked before anything else about the new instance).
    let resp = app
        .request(
            Method::POST,
            "/admin/agent-instances",
            Some(&acme),
            Some(json!({"companyId": "acme", "agentType": "SOPHIA",
                        "azureOpenaiEndpoint": "https://acme.openai.azure.com",
                        "credentials": {"appInsightsConnectionString": &bad[0]}})),
        )
        .await;
    let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(problem["field"], field);
    // Nor through a referenced secret that carries one.
    let secret = app
        .state
        .secrets
        .set_owned(
            &sophia::secrets::SecretName::parse("acme-telemetry").unwrap(),
            &secrecy::SecretString::from(
                json!({"azureOpenaiKey": "k", "appInsightsConnectionString": &bad[0]}).to_string(),
            ),
            Some(&sophia::domain::TenantId::parse("acme").unwrap()),
        )
        .await
        .unwrap();
    refused_patch(
        &app,
        &acme,
        id,
        json!({"keyvaultSecretId": secret}),
        StatusCode::BAD_REQUEST,
        "keyvaultSecretId",
    )
    .await;

    // Its own resource in the public cloud is accepted, stored as a secret, never returned.
    let good = format!(
        "InstrumentationKey={IKEY};IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/;LiveEndpoint=https://westeurope.livediagnostics.monitor.azure.com/"
    );
    let resp = app
        .request(
            Method::PATCH,
            &format!("/admin/agent-instances/{id}"),
            Some(&acme),
            Some(json!({"credentials": {"appInsightsConnectionString": good}})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.text().await.unwrap();
    assert!(!body.contains(IKEY), "{body}");
    let audit = app.audit("action=agent_instance.update&limit=200").await;
    let audit = serde_json::to_string(&audit).unwrap();
    assert!(audit.contains("appInsightsConnectionString"), "{audit}");
    assert!(!audit.contains(IKEY), "{audit}");
}

#[tokio::test]
async fn a_company_admin_cannot_raise_remove_or_rotate_around_its_limits() {
    let app = spawn().await;
    let created = app
        .create_instance_with(
            "acme",
            json!({"settings": {"tokensPerMinute": 1000, "requestsPerMinute": 10,
                                "tokensPerDay": 10_000, "tokensPerMonth": 100_000}}),
        )
        .await;
    let id = &created.id;
    let acme = app.admin_token("acme");
    for (key, value) in [
        ("tokensPerMinute", json!(1001)),
        ("requestsPerMinute", json!(11)),
        ("tokensPerDay", json!(10_001)),
        ("tokensPerMonth", json!(1_000_000_000_000u64)),
        ("tokensPerMinute", Value::Null),
        ("tokensPerMonth", Value::Null),
    ] {
        let field = format!("settings.{key}");
        refused_patch(
            &app,
            &acme,
            id,
            json!({"settings": { key: value }}),
            StatusCode::FORBIDDEN,
            &field,
        )
        .await;
        // Hidden among allowed changes, the same.
        refused_patch(
            &app,
            &acme,
            id,
            json!({"model": "gpt-4o-mini", "settings": {"temperature": 0.1, key: value}}),
            StatusCode::FORBIDDEN,
            &field,
        )
        .await;
    }
    // Lowering is its own right.
    let resp = app
        .request(
            Method::PATCH,
            &format!("/admin/agent-instances/{id}"),
            Some(&acme),
            Some(json!({"settings": {"tokensPerMinute": 500}})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let view: Value = resp.json().await.unwrap();
    assert_eq!(view["settings"]["tokensPerMinute"], 500);
    assert_eq!(view["settings"]["tokensPerDay"], 10_000);

    // Disabling and creating a fresh instance does not lift them either.
    let resp = app
        .request(
            Method::DELETE,
            &format!("/admin/agent-instances/{id}"),
            Some(&acme),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    for settings in [
        json!({}),
        json!({"tokensPerMinute": 500, "requestsPerMinute": 10, "tokensPerDay": 10_000}),
        json!({"tokensPerMinute": 501, "requestsPerMinute": 10, "tokensPerDay": 10_000, "tokensPerMonth": 100_000}),
    ] {
        let resp = app
            .request(
                Method::POST,
                "/admin/agent-instances",
                Some(&acme),
                Some(json!({"companyId": "acme", "agentType": "SOPHIA", "settings": settings})),
            )
            .await;
        let problem = assert_problem(resp, StatusCode::FORBIDDEN, "forbidden").await;
        assert!(
            problem["field"]
                .as_str()
                .unwrap()
                .starts_with("settings.tokensPer"),
            "{problem}"
        );
    }
    let resp = app
        .request(
            Method::POST,
            "/admin/agent-instances",
            Some(&acme),
            Some(json!({"companyId": "acme", "agentType": "SOPHIA", "settings":
                {"tokensPerMinute": 400, "requestsPerMinute": 10, "tokensPerDay": 10_000, "tokensPerMonth": 100_000}})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    // A platform admin is not bound by it.
    let again: Value = resp.json().await.unwrap();
    let resp = app
        .request(
            Method::DELETE,
            &format!("/admin/agent-instances/{}", again["id"].as_str().unwrap()),
            Some(&app.platform_token()),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = app
        .request(
            Method::POST,
            "/admin/agent-instances",
            Some(&app.platform_token()),
            Some(json!({"companyId": "acme", "agentType": "SOPHIA"})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
}
