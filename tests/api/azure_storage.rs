//! Tenant memory on Azure Storage, against Azurite (started by the tests): a company's Blob
//! container as its knowledge source (SAS from the secret store), incremental refreshes from
//! it, clear errors for a refused SAS and a missing container, diagnostics listing it; and the
//! Azure job path — `POST /refresh` enqueues to a Storage queue, and the host's queue-trigger
//! invocation (`POST /refresh-worker` with `{Data, Metadata}`) runs the job and answers in the
//! host's shape, idempotently.

use std::time::Duration;

use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sophia::dev::simulator::SimConfig;

use crate::support::azurite::{self, account_sas, account_sas_with_key};
use crate::support::pdf::pdf;
use crate::support::rig;
use crate::support::{SimServer, TestApp, assert_problem, spawn_app_with, spawn_simulator};

const KEY: &str = "key-acme";

async fn sim() -> SimServer {
    spawn_simulator(SimConfig {
        keys: vec![KEY.into()],
        ..Default::default()
    })
    .await
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// An instance whose knowledge lives in `container` (below `docs/`), read with `sas`.
async fn blob_company(
    app: &TestApp,
    sim: &SimServer,
    name: &str,
    blob: &str,
    container: &str,
    sas: &str,
) -> String {
    let created = app
        .create_instance_with(
            name,
            json!({"azureOpenaiEndpoint": sim.base, "azureOpenaiDeployment": "gpt-4o",
                   "azureEmbeddingDeployment": "text-embedding-3-small",
                   "credentials": {"azureOpenaiKey": KEY, "knowledgeSas": sas},
                   "settings": {"knowledgeContainerUrl": azurite::container_url(blob, container),
                                "knowledgePrefix": "docs"}}),
        )
        .await;
    app.service_token(name, &created.key).await
}

async fn run_refresh(app: &TestApp, token: &str) -> Value {
    let resp = app
        .request(Method::POST, "/refresh", Some(token), None)
        .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let id = resp.json::<Value>().await.unwrap()["jobId"]
        .as_str()
        .unwrap()
        .to_owned();
    wait(app, token, &id).await
}

async fn wait(app: &TestApp, token: &str, id: &str) -> Value {
    for _ in 0..600 {
        let job: Value = app
            .get(&format!("/refresh/{id}"), token)
            .await
            .json()
            .await
            .unwrap();
        if job["status"] == "succeeded" || job["status"] == "failed" {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} did not finish");
}

#[tokio::test]
async fn a_blob_container_is_a_knowledge_source() {
    let (blob, _) = rig::azurite();
    let sim = sim().await;
    let app = spawn_app_with(&[("SOPHIA_ALLOW_LOCAL_UPSTREAMS", "true")]).await;
    let container = unique("acme-docs");
    azurite::create_container(&blob, &container).await;
    azurite::put_blob(
        &blob,
        &container,
        "docs/faq.md",
        "# FAQ\n\nThe Acme refund window is 30 days.",
    )
    .await;
    azurite::put_blob(
        &blob,
        &container,
        "docs/hours.txt",
        "Acme opening hours: 8 to 18.",
    )
    .await;
    azurite::put_blob(
        &blob,
        &container,
        "docs/manuals/warranty.pdf",
        pdf(&[&["The Acme warranty covers turbines for 7 years."]]),
    )
    .await;
    azurite::put_blob(&blob, &container, "docs/broken.pdf", "%PDF-1.4 nonsense").await;
    azurite::put_blob(&blob, &container, "outside/secret.md", "Not in the prefix.").await;
    let sas = account_sas("b", "rl");
    let token = blob_company(&app, &sim, "acme", &blob, &container, &sas).await;

    let job = run_refresh(&app, &token).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        job["source"],
        format!("blob:127.0.0.1/{}/{container}/docs", azurite::ACCOUNT)
    );
    assert!(
        !job.to_string().contains("sig="),
        "no SAS in the job: {job}"
    );
    let counts = &job["counts"];
    assert_eq!(
        (
            counts["seen"].as_u64(),
            counts["indexed"].as_u64(),
            counts["failed"].as_u64()
        ),
        (Some(4), Some(3), Some(1)),
        "{job}"
    );
    assert_eq!(job["errors"][0]["documentId"], "broken.pdf");

    let answer: Value = app
        .request(
            Method::POST,
            "/chat",
            Some(&token),
            Some(json!({"message": "How many years does the warranty cover turbines?"})),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(
        answer["answer"].as_str().unwrap().contains("7 years"),
        "{answer}"
    );
    assert_eq!(answer["citations"][0]["documentId"], "manuals/warranty.pdf");

    // Incremental from the container too: one change, one deletion.
    azurite::put_blob(
        &blob,
        &container,
        "docs/hours.txt",
        "Acme opening hours: 9 to 17.",
    )
    .await;
    azurite::delete_blob(&blob, &container, "docs/faq.md").await;
    let job = run_refresh(&app, &token).await;
    let counts = &job["counts"];
    assert_eq!(
        (
            counts["indexed"].as_u64(),
            counts["unchanged"].as_u64(),
            counts["deleted"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{job}"
    );

    // Diagnostics list the container.
    let report: Value = app
        .request(Method::POST, "/config/test", Some(&token), None)
        .await
        .json()
        .await
        .unwrap();
    let source = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "knowledgeSource")
        .unwrap()
        .clone();
    assert_eq!(source["ok"], true, "{report}");
    assert!(
        source["detail"]
            .as_str()
            .unwrap()
            .starts_with("3 documents in blob:"),
        "{source}"
    );
    assert!(!report.to_string().contains(&sas));
}

#[tokio::test]
async fn a_refused_sas_and_a_missing_container_are_named() {
    let (blob, _) = rig::azurite();
    let sim = sim().await;
    let app = spawn_app_with(&[("SOPHIA_ALLOW_LOCAL_UPSTREAMS", "true")]).await;
    let container = unique("beta-docs");
    azurite::create_container(&blob, &container).await;
    azurite::put_blob(&blob, &container, "docs/a.md", "# A").await;
    // Signed with another key: the account refuses it.
    let forged = account_sas_with_key(
        &base64::engine::general_purpose::STANDARD.encode([7u8; 64]),
        "b",
        "rl",
    );
    let token = blob_company(&app, &sim, "beta", &blob, &container, &forged).await;
    let job = run_refresh(&app, &token).await;
    assert_eq!(job["status"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains("refused SOPHIA's credentials (403)"),
        "{error}"
    );
    assert!(error.contains("knowledgeSas"), "{error}");
    let sig = forged.split("sig=").nth(1).unwrap();
    assert!(!job.to_string().contains(sig), "the SAS is not echoed");

    let token = blob_company(
        &app,
        &sim,
        "gamma",
        &blob,
        &unique("nothing-here"),
        &account_sas("b", "rl"),
    )
    .await;
    let job = run_refresh(&app, &token).await;
    assert_eq!(job["status"], "failed");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("was not found (404)"),
        "{job}"
    );

    // A SAS in the URL setting is refused at create time: it belongs in the secret store.
    let resp = app
        .request(
            Method::POST,
            "/admin/agent-instances",
            Some(&app.platform_token()),
            Some(json!({"companyId": "delta", "agentType": "SOPHIA",
                        "settings": {"knowledgeContainerUrl": format!("{}?{}", azurite::container_url(&blob, "x"), account_sas("b", "rl"))}})),
        )
        .await;
    let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert!(
        problem.to_string().contains("credentials.knowledgeSas"),
        "{problem}"
    );
}

#[tokio::test]
async fn the_queue_triggered_worker_runs_enqueued_jobs() {
    let (blob, queue_service) = rig::azurite();
    let queue = unique("sophia-refresh");
    azurite::create_queue(&queue_service, &queue).await;
    let queue_url = format!(
        "{}?{}",
        azurite::queue_url(&queue_service, &queue),
        account_sas("q", "a")
    );
    let sim = sim().await;
    let app = spawn_app_with(&[
        ("SOPHIA_ALLOW_LOCAL_UPSTREAMS", "true"),
        ("SOPHIA_REFRESH_QUEUE", "storage"),
        ("SOPHIA_REFRESH_QUEUE_URL", &queue_url),
        ("SOPHIA_PUBLIC_URL", "https://sophia.example.com"),
    ])
    .await;
    let container = unique("acme-docs");
    azurite::create_container(&blob, &container).await;
    azurite::put_blob(
        &blob,
        &container,
        "docs/faq.md",
        "# FAQ\n\nThe refund window is 30 days.",
    )
    .await;
    let token = blob_company(
        &app,
        &sim,
        "acme",
        &blob,
        &container,
        &account_sas("b", "rl"),
    )
    .await;

    let resp = app
        .request(Method::POST, "/refresh", Some(&token), None)
        .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let job: Value = resp.json().await.unwrap();
    let id = job["jobId"].as_str().unwrap().to_owned();
    // Nothing runs it in-process: it waits in the queue (its message is there, and the job
    // is still queued once the message has been read back).
    let messages = azurite::receive(&queue_service, &queue).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(
        app.get(&format!("/refresh/{id}"), &token)
            .await
            .json::<Value>()
            .await
            .unwrap()["status"],
        "queued"
    );
    // The message is base64 (the host's default queue encoding) of {tenantId, jobId, sig}.
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&messages[0])
        .unwrap();
    let message: Value = serde_json::from_slice(&decoded).unwrap();
    assert_eq!(
        (&message["tenantId"], &message["jobId"]),
        (&json!("acme"), &json!(id))
    );
    assert!(
        message["sig"].as_str().is_some_and(|s| s.len() >= 40),
        "{message}"
    );

    // A forged delivery — right ids, no valid signature — reaches nothing: the host's loopback
    // is shared with whatever else runs there, and a queue may be writable by others.
    for forged in [
        json!({"tenantId": "acme", "jobId": id, "sig": "AAAA"}),
        json!({"tenantId": "acme", "jobId": id, "sig": flip_first(message["sig"].as_str().unwrap())}),
        json!({"tenantId": "beta", "jobId": id, "sig": message["sig"]}),
    ] {
        let resp = app
            .request(
                Method::POST,
                "/refresh-worker",
                None,
                Some(json!({"Data": {"msg": forged.to_string()}, "Metadata": {}})),
            )
            .await;
        assert_problem(resp, StatusCode::FORBIDDEN, "forbidden").await;
    }
    let unsigned = json!({"Data": {"msg": {"tenantId": "acme", "jobId": id}}, "Metadata": {}});
    let resp = app
        .request(Method::POST, "/refresh-worker", None, Some(unsigned))
        .await;
    assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(
        app.get(&format!("/refresh/{id}"), &token)
            .await
            .json::<Value>()
            .await
            .unwrap()["status"],
        "queued",
        "no forged delivery ran the job"
    );

    // The host decodes it and invokes the function with the custom-handler payload.
    let invocation = json!({
        "Data": {"msg": String::from_utf8(decoded).unwrap()},
        "Metadata": {"DequeueCount": 1, "Id": "6d4c5a1e", "sys": {"MethodName": "refresh-worker"}}
    });
    // Delivered twice at once (an at-least-once queue): both answer 200, one runs the job.
    let (first, second) = tokio::join!(
        app.request(
            Method::POST,
            "/refresh-worker",
            None,
            Some(invocation.clone()),
        ),
        app.request(
            Method::POST,
            "/refresh-worker",
            None,
            Some(invocation.clone()),
        )
    );
    let mut logs = Vec::new();
    for resp in [first, second] {
        assert_eq!(resp.status(), StatusCode::OK);
        let answer: Value = resp.json().await.unwrap();
        assert!(
            answer["Outputs"].is_object() && answer.get("ReturnValue").is_some(),
            "{answer}"
        );
        logs.push(answer["Logs"][0].as_str().unwrap().to_owned());
    }
    assert_eq!(
        logs.iter().filter(|l| l.contains("already taken")).count(),
        1,
        "{logs:?}"
    );
    assert!(logs.iter().any(|l| l.ends_with(": succeeded")), "{logs:?}");
    let finished = app.audit("companyId=acme&action=refresh.finish").await;
    assert_eq!(finished.len(), 1, "{finished:?}");
    let done: Value = app
        .get(&format!("/refresh/{id}"), &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["counts"]["indexed"], 1);

    // A redelivery (at-least-once queues) does nothing.
    let resp = app
        .request(Method::POST, "/refresh-worker", None, Some(invocation))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let again: Value = app
        .get(&format!("/refresh/{id}"), &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["finishedAt"], done["finishedAt"]);

    // The message may also arrive as a JSON object or double-encoded; an unknown job is
    // dropped (200, so the host does not retry it); a payload without a message is a 400.
    let unknown = format!("job_{}", uuid::Uuid::new_v4().simple());
    let signed = serde_json::to_value(
        app.state
            .jobs
            .signer()
            .unwrap()
            .message(&sophia::domain::TenantId::parse("acme").unwrap(), &unknown)
            .unwrap(),
    )
    .unwrap();
    for data in [
        json!({"msg": signed}),
        json!({"msg": serde_json::to_string(&signed.to_string()).unwrap()}),
    ] {
        let resp = app
            .request(
                Method::POST,
                "/refresh-worker",
                None,
                Some(json!({"Data": data, "Metadata": {}})),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let answer: Value = resp.json().await.unwrap();
        assert!(
            answer["Logs"][0].as_str().unwrap().contains("not found"),
            "{answer}"
        );
    }
    for bad in [
        json!({"Data": {"msg": "hello"}}),
        json!({"Data": {}}),
        json!({"nope": 1}),
    ] {
        let resp = app
            .request(Method::POST, "/refresh-worker", None, Some(bad))
            .await;
        assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    }
}

#[tokio::test]
async fn a_storage_queue_without_a_url_fails_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let settings = sophia::config::Settings::from_lookup(|k| match k {
        "SOPHIA_DATA_DIR" => Some(dir.path().display().to_string()),
        "SOPHIA_REFRESH_QUEUE" => Some("storage".into()),
        _ => None,
    });
    let err = settings.err().unwrap();
    assert_eq!(err.var, "SOPHIA_REFRESH_QUEUE_URL");
    let settings = sophia::config::Settings::from_lookup(|k| match k {
        "SOPHIA_REFRESH_QUEUE" => Some("kafka".into()),
        _ => None,
    });
    assert_eq!(settings.err().unwrap().var, "SOPHIA_REFRESH_QUEUE");
}

/// The signature with its first character changed.
fn flip_first(sig: &str) -> String {
    let first = if sig.starts_with('A') { 'B' } else { 'A' };
    format!("{first}{}", &sig[1..])
}
