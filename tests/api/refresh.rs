//! `/refresh` over real HTTP: two companies' folders of mixed documents indexed with their
//! own embedding deployments (the simulator), chat citing only the asker's documents,
//! incremental refreshes (only a changed file is re-embedded; a deleted file's chunks go),
//! unparseable files reported, one job per company at a time, job status scoped to its
//! company, bad input, and the audit trail.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sophia::dev::simulator::{Fault, SimConfig};
use sophia::domain::TenantId;
use sophia::knowledge::ingest::EMBED_BATCH;

use crate::support::pdf::pdf;
use crate::support::{SimServer, TestApp, assert_problem, spawn_app_with, spawn_simulator};

const EMBEDDING: &str = "text-embedding-3-small";

struct Company {
    name: String,
    token: String,
    folder: PathBuf,
}

async fn setup() -> (TestApp, SimServer) {
    let sim = spawn_simulator(SimConfig {
        keys: vec!["key-acme".into(), "key-beta".into()],
        ..Default::default()
    })
    .await;
    let app = spawn_app_with(&[("SOPHIA_ALLOW_LOCAL_UPSTREAMS", "true")]).await;
    (app, sim)
}

async fn company(app: &TestApp, sim: &SimServer, name: &str) -> Company {
    let created = app
        .create_instance_with(
            name,
            json!({"azureOpenaiEndpoint": sim.base, "azureOpenaiDeployment": "gpt-4o",
                   "azureEmbeddingDeployment": EMBEDDING,
                   "credentials": {"azureOpenaiKey": format!("key-{name}")},
                   "settings": {"topK": 3}}),
        )
        .await;
    let token = app.service_token(name, &created.key).await;
    let folder = app.dir.path().join("knowledge").join(name);
    std::fs::create_dir_all(&folder).unwrap();
    Company {
        name: name.into(),
        token,
        folder,
    }
}

fn write(folder: &Path, path: &str, bytes: impl AsRef<[u8]>) {
    let file = folder.join(path);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(file, bytes).unwrap();
}

/// Acme's folder: one document of each type, plus two that cannot be indexed.
fn acme_documents(folder: &Path) {
    write(
        folder,
        "faq.md",
        "# Acme FAQ\n\n## Refunds\nThe refund window at Acme is 30 days from delivery.\n\n## Shipping\nAcme ships to Portugal and Spain.",
    );
    write(
        folder,
        "hours.txt",
        "Acme opening hours: Monday to Friday, 8 to 18.",
    );
    write(
        folder,
        "site/parking.html",
        "<html><head><title>Parking</title></head><body><h1>Parking</h1>\
         <p>Acme visitor parking is free on weekends.</p><script>track()</script></body></html>",
    );
    write(
        folder,
        "manuals/warranty.pdf",
        pdf(&[
            &["Acme warranty manual"],
            &["The Acme warranty covers turbines for 7 years."],
        ]),
    );
    write(folder, "broken.pdf", b"%PDF-1.4\nthis is not really a pdf");
    write(folder, "notes.docx", b"PK\x03\x04 not supported");
}

async fn start(app: &TestApp, token: &str, body: Option<Value>) -> reqwest::Response {
    app.request(Method::POST, "/refresh", Some(token), body)
        .await
}

/// Starts a refresh, checks the 202 contract, and waits (bounded) for the job to finish.
async fn refresh(app: &TestApp, token: &str) -> Value {
    let resp = start(app, token, None).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let job: Value = resp.json().await.unwrap();
    let id = job["jobId"].as_str().unwrap();
    assert_eq!(location, format!("/refresh/{id}"));
    wait(app, token, id).await
}

async fn wait(app: &TestApp, token: &str, id: &str) -> Value {
    for _ in 0..600 {
        let resp = app.get(&format!("/refresh/{id}"), token).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let job: Value = resp.json().await.unwrap();
        if matches!(job["status"].as_str(), Some("succeeded" | "failed")) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("refresh job {id} did not finish");
}

async fn ask(app: &TestApp, token: &str, question: &str) -> Value {
    let resp = app
        .request(
            Method::POST,
            "/chat",
            Some(token),
            Some(json!({"message": question})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

fn cited(answer: &Value) -> Vec<String> {
    answer["citations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["documentId"].as_str().unwrap().to_owned())
        .collect()
}

/// The texts the simulator was asked to embed, per company key.
fn embedded_inputs(sim: &SimServer, key: &str) -> Vec<String> {
    sim.sim
        .requests()
        .into_iter()
        .filter(|r| r.kind == "embeddings" && r.key.as_deref() == Some(key))
        .flat_map(|r| match &r.body["input"] {
            Value::Array(items) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect::<Vec<_>>(),
            Value::String(s) => vec![s.clone()],
            _ => Vec::new(),
        })
        .collect()
}

#[tokio::test]
async fn two_companies_index_their_own_folders_and_chat_cites_only_their_own() {
    let (app, sim) = setup().await;
    let acme = company(&app, &sim, "acme").await;
    let beta = company(&app, &sim, "beta").await;
    acme_documents(&acme.folder);
    write(
        &beta.folder,
        "policy.md",
        "# Beta policy\n\nThe refund window at Beta is 14 days.",
    );

    let job = refresh(&app, &acme.token).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["companyId"], "acme");
    assert_eq!(job["source"], "folder:acme");
    let counts = &job["counts"];
    assert_eq!(counts["seen"], 6, "{job}");
    assert_eq!(counts["indexed"], 4, "{job}");
    assert_eq!(counts["failed"], 2, "{job}");
    assert_eq!(counts["unchanged"], 0);
    assert!(counts["chunks"].as_u64().unwrap() >= 5, "{job}");
    // Passages of several documents share calls: full batches, not one call per document.
    let chunks = counts["chunks"].as_u64().unwrap();
    assert_eq!(
        counts["embeddingCalls"].as_u64(),
        Some(chunks.div_ceil(EMBED_BATCH as u64)),
        "{job}"
    );
    let errors = job["errors"].as_array().unwrap();
    let failed: Vec<&str> = errors
        .iter()
        .map(|e| e["documentId"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["broken.pdf", "notes.docx"], "{job}");
    assert!(errors[0]["error"].as_str().unwrap().contains("PDF"));
    assert!(
        errors[1]["error"]
            .as_str()
            .unwrap()
            .contains("unsupported file type '.docx'")
    );
    for key in ["startedAt", "finishedAt"] {
        assert!(job[key].is_string(), "{key}: {job}");
    }
    assert!(job["timings"]["totalMs"].is_u64());
    assert_eq!(refresh(&app, &beta.token).await["counts"]["indexed"], 1);

    // Every embedding went to the company's own deployment with its own key.
    assert!(!embedded_inputs(&sim, "key-acme").is_empty());
    assert!(
        embedded_inputs(&sim, "key-beta")
            .iter()
            .all(|t| !t.contains("Acme"))
    );

    // Each document type is searchable, and answers cite only the asker's documents.
    for (question, doc) in [
        (
            "How many years does the warranty cover turbines?",
            "manuals/warranty.pdf",
        ),
        ("Is visitor parking free on weekends?", "site/parking.html"),
        ("What are the opening hours?", "hours.txt"),
        ("How long is the refund window?", "faq.md"),
    ] {
        let answer = ask(&app, &acme.token, question).await;
        let docs = cited(&answer);
        assert!(docs.contains(&doc.to_owned()), "{question}: {answer}");
    }
    let answer = ask(&app, &acme.token, "How long is the refund window?").await;
    assert!(
        answer["answer"].as_str().unwrap().contains("30 days"),
        "{answer}"
    );
    let answer = ask(&app, &beta.token, "How long is the refund window at Acme?").await;
    assert_eq!(cited(&answer), ["policy.md"], "{answer}");
    assert!(!answer.to_string().contains("30 days"), "{answer}");

    // The audit trail has the start and the finish.
    let trail = app.audit("companyId=acme").await;
    let actions: Vec<&str> = trail
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"refresh.start"), "{actions:?}");
    assert!(actions.contains(&"refresh.finish"), "{actions:?}");
    let _ = (&acme.name, &beta.name);
}

#[tokio::test]
async fn a_changed_file_is_re_embedded_alone_and_a_deleted_file_leaves_the_index() {
    let (app, sim) = setup().await;
    let acme = company(&app, &sim, "acme").await;
    acme_documents(&acme.folder);
    assert_eq!(refresh(&app, &acme.token).await["status"], "succeeded");

    // Nothing changed: nothing is embedded again.
    sim.sim.clear();
    let job = refresh(&app, &acme.token).await;
    assert_eq!(
        (
            job["counts"]["indexed"].as_u64(),
            job["counts"]["unchanged"].as_u64()
        ),
        (Some(0), Some(4)),
        "{job}"
    );
    assert!(embedded_inputs(&sim, "key-acme").is_empty());

    // One file changes: only its text goes to the embedding deployment.
    write(
        &acme.folder,
        "hours.txt",
        "Acme opening hours: Monday to Saturday, 9 to 17.",
    );
    sim.sim.clear();
    let job = refresh(&app, &acme.token).await;
    assert_eq!(job["counts"]["indexed"], 1, "{job}");
    assert_eq!(job["counts"]["unchanged"], 3, "{job}");
    let inputs = embedded_inputs(&sim, "key-acme");
    assert!(!inputs.is_empty());
    assert!(
        inputs.iter().all(|t| t.contains("Saturday")),
        "only the changed file was embedded: {inputs:?}"
    );
    let answer = ask(&app, &acme.token, "What are the opening hours?").await;
    assert!(
        answer["answer"].as_str().unwrap().contains("Saturday"),
        "{answer}"
    );

    // A deleted file: its chunks leave the index.
    std::fs::remove_file(acme.folder.join("manuals/warranty.pdf")).unwrap();
    let job = refresh(&app, &acme.token).await;
    assert_eq!(job["counts"]["deleted"], 1, "{job}");
    let tenant = TenantId::parse("acme").unwrap();
    let hits = app
        .state
        .knowledge
        .search(&tenant, "warranty turbines", None, 10)
        .await
        .unwrap();
    assert!(
        hits.iter().all(|p| p.document_id != "manuals/warranty.pdf"),
        "{hits:?}"
    );
    let manifest = app
        .state
        .store
        .list_knowledge_documents(&tenant)
        .await
        .unwrap();
    assert!(
        manifest
            .iter()
            .all(|d| d.document_id != "manuals/warranty.pdf")
    );

    // `full: true` re-indexes everything.
    let resp = start(&app, &acme.token, Some(json!({"full": true}))).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let id = resp.json::<Value>().await.unwrap()["jobId"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = wait(&app, &acme.token, &id).await;
    assert_eq!(job["full"], true);
    assert_eq!(job["counts"]["indexed"], 3, "{job}");
}

#[tokio::test]
async fn concurrent_refresh_requests_get_one_job() {
    let (app, sim) = setup().await;
    let acme = company(&app, &sim, "acme").await;
    acme_documents(&acme.folder);
    // Hold the job in its first embedding call so that it is still active.
    sim.sim.push_fault(Fault {
        deployment: Some(EMBEDDING.into()),
        delay_ms: Some(1_500),
        ..Default::default()
    });
    let requests = (0..8).map(|_| start(&app, &acme.token, None));
    let responses = futures_util::future::join_all(requests).await;
    let mut ids = std::collections::HashSet::new();
    for resp in responses {
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        ids.insert(
            resp.json::<Value>().await.unwrap()["jobId"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = ids.into_iter().next().unwrap();
    let job = wait(&app, &acme.token, &id).await;
    assert_eq!(job["status"], "succeeded");
    let starts = app.audit("companyId=acme&action=refresh.start").await;
    assert_eq!(starts.len(), 1, "one job started");
    // Once it finished, a new request starts a new job.
    let next = refresh(&app, &acme.token).await;
    assert_ne!(next["jobId"], id.as_str());
}

#[tokio::test]
async fn job_status_belongs_to_its_company() {
    let (app, sim) = setup().await;
    let acme = company(&app, &sim, "acme").await;
    let beta = company(&app, &sim, "beta").await;
    acme_documents(&acme.folder);
    let job = refresh(&app, &acme.token).await;
    let path = format!("/refresh/{}", job["jobId"].as_str().unwrap());
    assert_problem(
        app.get(&path, &beta.token).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let resp = app.request(Method::GET, &path, None, None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // An admin token is not a service token.
    let resp = app.get(&path, &app.platform_token()).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    for bad in [
        "/refresh/nope",
        "/refresh/job_0000",
        "/refresh/..%2F..%2Fetc",
    ] {
        assert_problem(
            app.get(bad, &acme.token).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
    let unknown = format!("/refresh/job_{}", uuid::Uuid::new_v4().simple());
    assert_problem(
        app.get(&unknown, &acme.token).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn bad_refresh_requests_are_clear_4xx() {
    let (app, sim) = setup().await;
    let acme = company(&app, &sim, "acme").await;
    let send = |ct: &'static str, body: &'static str| {
        app.client
            .post(app.url("/refresh"))
            .bearer_auth(&acme.token)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    assert_problem(
        send("application/json", "{").await.unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    let p = assert_problem(
        send("application/json", r#"{"full": true, "companyId": "beta"}"#)
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "validation_failed",
    )
    .await;
    assert!(p.to_string().contains("companyId"), "{p}");
    assert_problem(
        send("application/json", r#"{"full": "yes"}"#)
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "validation_failed",
    )
    .await;
    assert_problem(
        send("text/plain", "full").await.unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    let resp = app.request(Method::POST, "/refresh", None, None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Nothing was started by any of them.
    assert!(
        app.audit("companyId=acme&action=refresh.start")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_missing_folder_fails_the_job_with_a_clear_reason() {
    let (app, sim) = setup().await;
    let acme = company(&app, &sim, "acme").await;
    std::fs::remove_dir_all(&acme.folder).unwrap();
    let job = refresh(&app, &acme.token).await;
    assert_eq!(job["status"], "failed");
    let error = job["error"].as_str().unwrap();
    assert!(error.contains("no knowledge folder"), "{error}");
    assert!(error.contains("knowledge/acme"), "{error}");
    let finish = app.audit("companyId=acme&action=refresh.finish").await;
    assert_eq!(finish[0]["outcome"], "failure", "{finish:?}");
}

#[tokio::test]
async fn embedding_throttling_is_backed_off_not_failed() {
    let (app, sim) = setup().await;
    let acme = company(&app, &sim, "acme").await;
    write(&acme.folder, "a.md", "# A\n\nAlpha facts.");
    sim.sim.push_fault(Fault {
        deployment: Some(EMBEDDING.into()),
        status: Some(429),
        retry_after: Some(1),
        times: Some(5),
        ..Default::default()
    });
    let job = refresh(&app, &acme.token).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["counts"]["indexed"], 1, "{job}");
    assert_eq!(job["counts"]["failed"], 0, "{job}");
}

#[tokio::test]
async fn small_documents_share_embedding_calls() {
    let (app, sim) = setup().await;
    let acme = company(&app, &sim, "acme").await;
    let cities = [
        "Lisbon", "Porto", "Madrid", "Seville", "Valencia", "Bilbao", "Faro", "Braga", "Malaga",
        "Zaragoza",
    ];
    for (n, city) in cities.iter().enumerate() {
        write(
            &acme.folder,
            &format!("depots/{}.txt", city.to_lowercase()),
            format!("The Acme depot in {city} opens at {} o'clock.", n + 6),
        );
    }
    let job = refresh(&app, &acme.token).await;
    assert_eq!(job["counts"]["indexed"], 10, "{job}");
    assert_eq!(job["counts"]["chunks"], 10, "{job}");
    // Ten one-passage documents: one call, not ten.
    assert_eq!(job["counts"]["embeddingCalls"], 1, "{job}");
    let calls = sim
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.kind == "embeddings")
        .count();
    assert_eq!(calls, 1);
    assert_eq!(embedded_inputs(&sim, "key-acme").len(), 10);
    let answer = ask(&app, &acme.token, "When does the Braga depot open?").await;
    assert_eq!(cited(&answer)[0], "depots/braga.txt", "{answer}");
}

#[tokio::test]
async fn a_failed_embedding_batch_fails_only_the_documents_it_carried() {
    let (app, sim) = setup().await;
    let acme = company(&app, &sim, "acme").await;
    // Sorted first, and long enough that the first batch holds only its passages.
    let long: String = (0..24)
        .map(|p| {
            format!(
                "Paragraph {p} of the Acme handbook. {}\n\n",
                "The handbook explains procedures in detail. ".repeat(20)
            )
        })
        .collect();
    write(&acme.folder, "a-handbook.md", &long);
    write(&acme.folder, "b-hours.txt", "Acme opening hours: 9 to 17.");
    sim.sim.push_fault(Fault {
        deployment: Some(EMBEDDING.into()),
        status: Some(400),
        ..Default::default()
    });
    let job = refresh(&app, &acme.token).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        (
            job["counts"]["indexed"].as_u64(),
            job["counts"]["failed"].as_u64()
        ),
        (Some(1), Some(1)),
        "{job}"
    );
    assert_eq!(job["errors"][0]["documentId"], "a-handbook.md", "{job}");
    assert!(
        job["errors"][0]["error"]
            .as_str()
            .unwrap()
            .starts_with("embedding failed"),
        "{job}"
    );
    // The failed document's later passages were not sent; the short one's were.
    let inputs = embedded_inputs(&sim, "key-acme");
    assert_eq!(
        inputs
            .iter()
            .filter(|t| t.contains("opening hours"))
            .count(),
        1
    );
    assert_eq!(
        inputs.iter().filter(|t| t.contains("handbook")).count(),
        EMBED_BATCH
    );
    let answer = ask(&app, &acme.token, "What are the opening hours?").await;
    assert_eq!(cited(&answer)[0], "b-hours.txt", "{answer}");

    // It is not in the manifest, so the next refresh indexes it.
    let job = refresh(&app, &acme.token).await;
    assert_eq!(
        (
            job["counts"]["indexed"].as_u64(),
            job["counts"]["unchanged"].as_u64(),
            job["counts"]["failed"].as_u64()
        ),
        (Some(1), Some(1), Some(0)),
        "{job}"
    );
    assert!(
        job["counts"]["chunks"].as_u64().unwrap() > EMBED_BATCH as u64,
        "{job}"
    );
}

#[tokio::test]
async fn a_job_queued_before_a_restart_runs_after_it() {
    let (app, sim) = setup().await;
    let acme = company(&app, &sim, "acme").await;
    acme_documents(&acme.folder);
    // A job recorded but never handed to a worker (the process stopped in between).
    let job = recorded_job(&app, &acme.token).await;
    let dir = std::sync::Arc::clone(&app.dir);
    app.stop().await;

    let app = crate::support::spawn_app_in(dir, &[("SOPHIA_ALLOW_LOCAL_UPSTREAMS", "true")]).await;
    let done = wait(&app, &acme.token, &job.id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["counts"]["indexed"], 4, "{done}");
}

/// Records a queued job for the token's company straight in the store, as `POST /refresh`
/// does, without handing it to a worker; any active job older than a minute from now is
/// abandoned for it.
async fn recorded_job(app: &TestApp, token: &str) -> sophia::domain::RefreshJob {
    let me: Value = app.get("/agents/me", token).await.json().await.unwrap();
    let job = sophia::domain::RefreshJob::queued(
        TenantId::parse(me["companyId"].as_str().unwrap()).unwrap(),
        me["instanceId"].as_str().unwrap().parse().unwrap(),
        "folder:acme".into(),
        false,
        "client:acme".into(),
    );
    let now = job.created_at;
    let (job, created) = app
        .state
        .store
        .begin_refresh_job(&job, now + chrono::Duration::minutes(1))
        .await
        .unwrap();
    assert!(created);
    job
}

#[tokio::test]
async fn a_job_abandoned_while_it_runs_stops_and_stays_failed() {
    let (app, sim) = setup().await;
    let acme = company(&app, &sim, "acme").await;
    acme_documents(&acme.folder);
    // The job's first embedding call takes 3 s, past its first heartbeat (2 s).
    sim.sim.push_fault(Fault {
        deployment: Some(EMBEDDING.into()),
        delay_ms: Some(3_000),
        ..Default::default()
    });
    let resp = start(&app, &acme.token, None).await;
    let first: Value = resp.json().await.unwrap();
    let first_id = first["jobId"].as_str().unwrap().to_owned();
    for _ in 0..100 {
        let job: Value = app
            .get(&format!("/refresh/{first_id}"), &acme.token)
            .await
            .json()
            .await
            .unwrap();
        if job["status"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Meanwhile it is taken for dead and replaced (as a stale job is).
    let newer = recorded_job(&app, &acme.token).await;
    assert_ne!(newer.id, first_id);

    // At its next heartbeat the old run learns it and stops, without writing over the record.
    let mut ended = Value::Null;
    for _ in 0..200 {
        let finish = app.audit("companyId=acme&action=refresh.finish").await;
        if let Some(entry) = finish.first() {
            ended = entry.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ended["outcome"], "failure", "{ended}");
    let old: Value = app
        .get(&format!("/refresh/{first_id}"), &acme.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(old["status"], "failed", "{old}");
    assert!(
        old["error"].as_str().unwrap().starts_with("abandoned"),
        "{old}"
    );
    assert_eq!(old["counts"]["indexed"], 0, "{old}");
    // The newer job is the company's active one.
    let (active, created) = app
        .state
        .store
        .begin_refresh_job(&newer, chrono::Utc::now() - chrono::Duration::minutes(10))
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(active.id, newer.id);
}

/// On Azure AI Search: a document of 1,500+ passages replaced by a short one leaves none of its
/// old chunks behind (deletes page past the service's 1,000 hits), and a failure between the
/// delete and the upload does not leave the manifest claiming the document is indexed — the
/// next incremental refresh indexes it again.
#[tokio::test]
async fn ai_search_replacements_leave_no_orphans_and_failed_uploads_are_redone() {
    use crate::support::search_standin::SearchStandIn;
    use sophia::knowledge::azure_search::DEFAULT_INDEX;
    let (app, sim) = setup().await;
    let search = SearchStandIn::start("search-key-acme").await;
    let created = app
        .create_instance_with(
            "acme",
            json!({"azureOpenaiEndpoint": sim.base, "azureOpenaiDeployment": "gpt-4o",
                   "azureSearchEndpoint": search.base,
                   "credentials": {"azureOpenaiKey": "key-acme", "azureSearchKey": "search-key-acme"}}),
        )
        .await;
    let token = app.service_token("acme", &created.key).await;
    let folder = app.dir.path().join("knowledge").join("acme");
    let paragraph = |i: usize| {
        format!(
            "Section {i}. {}",
            "The warranty covers parts and labour for the stated period. ".repeat(16)
        )
    };
    let big: String = (0..1_500).map(paragraph).collect::<Vec<_>>().join("\n\n");
    write(&folder, "manual.md", &big);
    write(&folder, "policy.md", "Refunds are accepted within 30 days.");
    let job = refresh(&app, &token).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let before = search.chunk_ids(DEFAULT_INDEX, "manual.md");
    assert!(before.len() >= 1_500, "{} chunks", before.len());

    write(&folder, "manual.md", "The warranty now lasts two years.");
    let job = refresh(&app, &token).await;
    assert_eq!(job["counts"]["indexed"], 1, "{job}");
    let after = search.chunk_ids(DEFAULT_INDEX, "manual.md");
    assert_eq!(after.len(), 1, "{} chunks left, not one", after.len());

    // A full refresh whose uploads fail: the old chunks are gone, and so is the manifest entry.
    search.fail_uploads(true);
    let resp = start(&app, &token, Some(json!({"full": true}))).await;
    let id = resp.json::<Value>().await.unwrap()["jobId"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = wait(&app, &token, &id).await;
    assert_eq!(job["counts"]["failed"], 2, "{job}");
    assert!(search.chunk_ids(DEFAULT_INDEX, "policy.md").is_empty());
    search.fail_uploads(false);
    // An incremental refresh must not trust a manifest whose chunks are gone.
    let job = refresh(&app, &token).await;
    assert_eq!(
        (
            job["counts"]["indexed"].as_u64(),
            job["counts"]["unchanged"].as_u64()
        ),
        (Some(2), Some(0)),
        "{job}"
    );
    assert_eq!(search.chunk_ids(DEFAULT_INDEX, "policy.md").len(), 1);
    let answer = ask(&app, &token, "How many days for refunds?").await;
    assert!(
        answer["answer"].as_str().unwrap().contains("30 days"),
        "{answer}"
    );
}

/// A refresh whose final save fails still ends `failed` (the outcome is lost, so it did not
/// succeed) and still audits `refresh.finish`.
#[tokio::test]
async fn a_refresh_whose_final_save_fails_ends_failed_and_is_audited() {
    let sim = spawn_simulator(SimConfig {
        keys: vec!["key-acme".into()],
        ..Default::default()
    })
    .await;
    let (app, faults) =
        crate::support::spawn_faulty_app(&[("SOPHIA_ALLOW_LOCAL_UPSTREAMS", "true")]).await;
    let acme = company(&app, &sim, "acme").await;
    acme_documents(&acme.folder);
    faults
        .failing_final_saves
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let job = refresh(&app, &acme.token).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("outcome could not be saved"),
        "{job}"
    );
    let finished = app.audit("companyId=acme&action=refresh.finish").await;
    assert_eq!(finished.len(), 1, "{finished:?}");
    assert_eq!(finished[0]["outcome"], "failure");
    // The next refresh is not blocked by it.
    let again = refresh(&app, &acme.token).await;
    assert_eq!(again["status"], "succeeded", "{again}");
}

/// A job still queued when its instance is disabled does not run.
#[tokio::test]
async fn queued_jobs_of_a_disabled_instance_do_not_run() {
    let (app, sim) = setup().await;
    let acme = company(&app, &sim, "acme").await;
    acme_documents(&acme.folder);
    let job = recorded_job(&app, &acme.token).await;
    let me: Value = app
        .get("/agents/me", &acme.token)
        .await
        .json()
        .await
        .unwrap();
    let resp = app
        .request(
            Method::DELETE,
            &format!(
                "/admin/agent-instances/{}",
                me["instanceId"].as_str().unwrap()
            ),
            Some(&app.platform_token()),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let tenant = TenantId::parse("acme").unwrap();
    let delivery = sophia::jobs::run_job(&app.state, &tenant, &job.id)
        .await
        .unwrap();
    let sophia::jobs::Delivery::Ran(ran) = delivery else {
        panic!("the queued job was not claimed");
    };
    assert_eq!(ran.state, sophia::domain::JobState::Failed);
    assert!(
        ran.error.as_deref().unwrap().contains("disabled"),
        "{ran:?}"
    );
    assert_eq!(ran.counts.indexed, 0);
    assert!(
        app.state
            .store
            .list_knowledge_documents(&tenant)
            .await
            .unwrap()
            .is_empty(),
        "nothing was indexed"
    );
}
