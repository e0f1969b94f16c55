//! Configuration diagnostics over real HTTP against the simulator and the AI Search stand-in:
//! a healthy setup, then every failure mode (bad key, missing deployment, unreachable
//! endpoint, slow endpoint, missing secret, missing index, missing folder) with an actionable
//! detail and never a credential in the answer, the audit trail or the logs; the admin route's
//! scoping; and a refresh into Azure AI Search that creates the index it then reports healthy.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sophia::dev::simulator::{Fault, SimConfig};

use crate::support::search_standin::SearchStandIn;
use crate::support::{SimServer, TestApp, assert_problem, spawn_app_with, spawn_simulator};

const GOOD_KEY: &str = "key-acme-0123456789";
const BAD_KEY: &str = "sk-WRONG-acme-key-987654321";
const EMBEDDING: &str = "text-embedding-3-small";

async fn setup(extra: &[(&str, &str)]) -> (TestApp, SimServer) {
    let sim = spawn_simulator(SimConfig {
        keys: vec![GOOD_KEY.into()],
        deployments: vec!["gpt-4o".into(), EMBEDDING.into()],
        ..Default::default()
    })
    .await;
    let mut overrides = vec![("SOPHIA_ALLOW_LOCAL_UPSTREAMS", "true")];
    overrides.extend_from_slice(extra);
    (spawn_app_with(&overrides).await, sim)
}

/// Creates `company` with `extra` fields and returns (instance id, service token).
async fn company(app: &TestApp, sim: &SimServer, name: &str, extra: Value) -> (String, String) {
    let mut body = json!({"azureOpenaiEndpoint": sim.base, "azureOpenaiDeployment": "gpt-4o",
                          "azureEmbeddingDeployment": EMBEDDING,
                          "credentials": {"azureOpenaiKey": GOOD_KEY}});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let created = app.create_instance_with(name, body).await;
    std::fs::create_dir_all(app.dir.path().join("knowledge").join(name)).unwrap();
    let token = app.service_token(name, &created.key).await;
    (created.id, token)
}

async fn test(app: &TestApp, token: &str) -> Value {
    let resp = app
        .request(Method::POST, "/config/test", Some(token), None)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    resp.json().await.unwrap()
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check: {report}"))
}

fn assert_failed(report: &Value, name: &str, needle: &str) {
    let c = check(report, name);
    assert_eq!(c["ok"], false, "{name}: {report}");
    assert_eq!(report["ok"], false);
    let detail = c["detail"].as_str().unwrap();
    assert!(
        detail.contains(needle),
        "{name}: {detail:?} lacks {needle:?}"
    );
    assert!(c["latencyMs"].is_u64());
}

#[tokio::test]
async fn a_healthy_setup_passes_every_check() {
    let (app, sim) = setup(&[]).await;
    let (_, token) = company(&app, &sim, "acme", json!({})).await;
    std::fs::write(app.dir.path().join("knowledge/acme/faq.md"), "# FAQ").unwrap();
    let report = test(&app, &token).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["companyId"], "acme");
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "secret",
            "chatDeployment",
            "embeddingDeployment",
            "searchIndex",
            "knowledgeSource"
        ]
    );
    let chat = check(&report, "chatDeployment");
    assert!(
        chat["model"].as_str().unwrap().starts_with("gpt-4o"),
        "{chat}"
    );
    assert!(chat["detail"].as_str().unwrap().contains("answered"));
    assert!(
        check(&report, "secret")["detail"]
            .as_str()
            .unwrap()
            .contains("azureOpenaiKey")
    );
    assert!(
        check(&report, "embeddingDeployment")["detail"]
            .as_str()
            .unwrap()
            .contains("dimensions")
    );
    assert_eq!(check(&report, "searchIndex")["skipped"], true);
    assert!(
        check(&report, "knowledgeSource")["detail"]
            .as_str()
            .unwrap()
            .starts_with("1 documents")
    );
    // The chat check asked for one token, with the company's key.
    let sent = sim
        .sim
        .requests()
        .into_iter()
        .find(|r| r.kind == "chat")
        .unwrap();
    assert_eq!(sent.key.as_deref(), Some(GOOD_KEY));
    assert_eq!(sent.body["max_tokens"], 1);
    let trail = app.audit("companyId=acme&action=config.test").await;
    assert_eq!(trail.len(), 1);
    assert_eq!(trail[0]["outcome"], "success");
}

#[tokio::test]
async fn every_failure_mode_is_named_without_echoing_a_secret() {
    let (app, sim) = setup(&[("SOPHIA_CONFIG_TEST_TIMEOUT_MS", "700")]).await;

    // A key the endpoint rejects.
    let (_, bad_key) = company(
        &app,
        &sim,
        "badkey",
        json!({"credentials": {"azureOpenaiKey": BAD_KEY}}),
    )
    .await;
    let report = test(&app, &bad_key).await;
    assert_failed(
        &report,
        "chatDeployment",
        "Azure OpenAI rejected the key (401)",
    );
    assert_failed(&report, "embeddingDeployment", "rejected the key (401)");
    assert_eq!(check(&report, "secret")["ok"], true);
    assert!(!report.to_string().contains(BAD_KEY));

    // A deployment that does not exist.
    let (_, missing) = company(
        &app,
        &sim,
        "missing",
        json!({"azureOpenaiDeployment": "gpt-5-nope", "azureEmbeddingDeployment": "embed-nope"}),
    )
    .await;
    let report = test(&app, &missing).await;
    assert_failed(
        &report,
        "chatDeployment",
        "deployment 'gpt-5-nope' not found (404)",
    );
    assert_failed(
        &report,
        "embeddingDeployment",
        "deployment 'embed-nope' not found (404)",
    );

    // An endpoint nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (_, unreachable) = company(
        &app,
        &sim,
        "unreachable",
        json!({"azureOpenaiEndpoint": format!("http://127.0.0.1:{closed}")}),
    )
    .await;
    let report = test(&app, &unreachable).await;
    assert_failed(&report, "chatDeployment", "unreachable");

    // An endpoint that does not answer in time.
    let (_, slow) = company(&app, &sim, "slow", json!({})).await;
    sim.sim.push_fault(Fault {
        deployment: Some("gpt-4o".into()),
        delay_ms: Some(3_000),
        ..Default::default()
    });
    let started = std::time::Instant::now();
    let report = test(&app, &slow).await;
    assert_failed(&report, "chatDeployment", "did not answer within 0.7 s");
    assert!(started.elapsed() < Duration::from_millis(2_500), "bounded");

    // No folder, and a secret gone from the store.
    let (id, gone) = company(&app, &sim, "gone", json!({})).await;
    std::fs::remove_dir_all(app.dir.path().join("knowledge/gone")).unwrap();
    let instance = app
        .state
        .store
        .get_instance(&sophia::store::TenantScope::All, &id.parse().unwrap())
        .await
        .unwrap();
    let reference = app
        .state
        .secrets
        .parse_id(instance.keyvault_secret_id.as_deref().unwrap())
        .unwrap();
    app.state.secrets.delete(&reference.name).await.unwrap();
    let report = test(&app, &gone).await;
    assert_failed(&report, "secret", "not found in the secret store (404)");
    assert_failed(&report, "knowledgeSource", "no knowledge folder");

    // Nothing secret reached the audit trail.
    let trail = app.audit("action=config.test").await;
    assert_eq!(trail.len(), 5);
    assert!(trail.iter().all(|e| e["outcome"] == "failure"));
    let text = serde_json::to_string(&trail).unwrap();
    assert!(!text.contains(BAD_KEY) && !text.contains(GOOD_KEY));
}

#[tokio::test]
async fn the_admin_route_is_scoped_to_the_admins_company() {
    let (app, sim) = setup(&[]).await;
    let (acme_id, acme_token) = company(&app, &sim, "acme", json!({})).await;
    company(&app, &sim, "beta", json!({})).await;
    let path = format!("/admin/agent-instances/{acme_id}/config-test");
    let resp = app
        .request(Method::POST, &path, Some(&app.platform_token()), None)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let report: Value = resp.json().await.unwrap();
    assert_eq!(report["instanceId"], acme_id.as_str());
    let resp = app
        .request(
            Method::POST,
            &path,
            Some(&app.admin_token("acme")),
            Some(json!({})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = app
        .request(Method::POST, &path, Some(&app.admin_token("beta")), None)
        .await;
    assert_problem(resp, StatusCode::NOT_FOUND, "not_found").await;
    let resp = app
        .request(Method::POST, &path, Some(&acme_token), None)
        .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = app
        .request(
            Method::POST,
            "/admin/agent-instances/not-a-uuid/config-test",
            Some(&app.platform_token()),
            None,
        )
        .await;
    assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    let resp = app
        .request(
            Method::POST,
            &path,
            Some(&app.platform_token()),
            Some(json!({"deep": true})),
        )
        .await;
    assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    let trail = app.audit("companyId=acme&action=config.test").await;
    assert_eq!(trail.len(), 2);
    assert!(
        trail
            .iter()
            .all(|e| e["actor"].as_str().unwrap().starts_with("admin:"))
    );
}

#[tokio::test]
async fn refresh_into_azure_ai_search_creates_the_index_that_diagnostics_then_accept() {
    let (app, sim) = setup(&[]).await;
    let search = SearchStandIn::start("search-key-acme").await;
    let (_, token) = company(
        &app,
        &sim,
        "acme",
        json!({"azureSearchEndpoint": search.base,
               "settings": {"searchIndex": "acme-knowledge"},
               "credentials": {"azureOpenaiKey": GOOD_KEY, "azureSearchKey": "search-key-acme"}}),
    )
    .await;
    let report = test(&app, &token).await;
    assert_failed(
        &report,
        "searchIndex",
        "search index 'acme-knowledge' does not exist (404)",
    );

    std::fs::write(
        app.dir.path().join("knowledge/acme/faq.md"),
        "# FAQ\n\nThe Acme refund window is 30 days.",
    )
    .unwrap();
    let resp = app
        .request(Method::POST, "/refresh", Some(&token), None)
        .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let id = resp.json::<Value>().await.unwrap()["jobId"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut job = Value::Null;
    for _ in 0..200 {
        job = app
            .get(&format!("/refresh/{id}"), &token)
            .await
            .json()
            .await
            .unwrap();
        if job["status"] != "queued" && job["status"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(job["status"], "succeeded", "{job}");
    let definition = search
        .definition("acme-knowledge")
        .expect("the refresh created the index");
    let fields = definition["fields"].as_array().unwrap();
    let field = |n: &str| fields.iter().find(|f| f["name"] == n).unwrap().clone();
    assert_eq!(field("tenantId")["filterable"], true);
    let dims = field("contentVector")["dimensions"].as_u64().unwrap();
    let report = test(&app, &token).await;
    assert_eq!(check(&report, "searchIndex")["ok"], true, "{report}");
    assert!(
        check(&report, "embeddingDeployment")["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("({dims} dimensions)"))
    );
    // The chunks went in with the tenant and a vector, and chat finds them through the index.
    let answer: Value = app
        .request(
            Method::POST,
            "/chat",
            Some(&token),
            Some(json!({"message": "How long is the refund window?"})),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(
        answer["answer"].as_str().unwrap().contains("30 days"),
        "{answer}"
    );
    assert!(
        search
            .filters()
            .iter()
            .all(|f| f.as_deref() == Some("tenantId eq 'acme'"))
    );

    // A wrong search key is named as such.
    let (_, wrong) = company(
        &app,
        &sim,
        "beta",
        json!({"azureSearchEndpoint": search.base,
               "settings": {"searchIndex": "acme-knowledge"},
               "credentials": {"azureOpenaiKey": GOOD_KEY, "azureSearchKey": "search-key-WRONG-1234"}}),
    )
    .await;
    let report = test(&app, &wrong).await;
    assert_failed(
        &report,
        "searchIndex",
        "Azure AI Search rejected the credentials (403)",
    );
    assert!(!report.to_string().contains("search-key-WRONG-1234"));
}

/// The real binary with debug logging: a failing diagnostics run logs no credential.
#[test]
fn diagnostics_never_log_a_credential() {
    use crate::support::binary::{Server, admin_token, start_simulator};
    let (mut sim, sim_url) = start_simulator(GOOD_KEY);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("SOPHIA_ALLOW_LOCAL_UPSTREAMS", "true"),
            ("SOPHIA_LOG", "debug"),
        ],
    );
    let admin = admin_token(dir.path(), &["--role", "PLATFORM_ADMIN"]);
    let client = reqwest::blocking::Client::new();
    let created: Value = client
        .post(server.url("/admin/agent-instances"))
        .bearer_auth(&admin)
        .json(&json!({"companyId": "acme", "agentType": "SOPHIA", "azureOpenaiEndpoint": sim_url,
                      "azureOpenaiDeployment": "gpt-4o", "credentials": {"azureOpenaiKey": BAD_KEY}}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let report: Value = client
        .post(server.url(&format!("/admin/agent-instances/{id}/config-test")))
        .bearer_auth(&admin)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(report["ok"], false, "{report}");
    let (_, logs) = server.stop();
    let _ = sim.kill();
    let _ = sim.wait();
    assert!(logs.contains("configuration tested"), "the run was logged");
    assert!(!logs.contains(BAD_KEY), "a credential reached the logs");
    assert!(!report.to_string().contains(BAD_KEY));
}
