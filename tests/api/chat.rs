//! `/chat` against the simulator over real HTTP: grounded answers with citations, streaming,
//! per-tenant deployments and keys, conversation and knowledge isolation, rotation and disable,
//! configuration changes, misconfigured instances, long conversations. The helpers here are
//! shared by the other chat-path modules (`openai`, `usage`, `retrieval`, `upstream_faults`).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sophia::dev::simulator::SimConfig;
use sophia::domain::TenantId;
use sophia::knowledge::Chunk;

use crate::support::{
    Created, SimServer, TestApp, assert_problem, spawn_app_with, spawn_simulator,
};
pub(crate) async fn setup(extra: &[(&str, &str)]) -> (TestApp, SimServer) {
    let sim = spawn_simulator(SimConfig {
        keys: vec!["key-acme".into(), "key-beta".into()],
        ..Default::default()
    })
    .await;
    let mut overrides = vec![("SOPHIA_ALLOW_LOCAL_UPSTREAMS", "true")];
    overrides.extend_from_slice(extra);
    (spawn_app_with(&overrides).await, sim)
}
pub(crate) async fn company(
    app: &TestApp,
    sim: &SimServer,
    name: &str,
    deployment: &str,
) -> Created {
    app.create_instance_with(
        name,
        json!({"azureOpenaiEndpoint": sim.base, "azureOpenaiDeployment": deployment,
               "credentials": {"azureOpenaiKey": format!("key-{name}")},
               "settings": {"systemPrompt": format!("You are {name}'s assistant.")}}),
    )
    .await
}
pub(crate) async fn seed(app: &TestApp, company: &str, doc: &str, text: &str) {
    let chunk = Chunk {
        id: format!("{doc}#0"),
        document_id: doc.into(),
        title: format!("{doc}.md"),
        text: text.into(),
        vector: None,
    };
    app.state
        .knowledge
        .upsert(&TenantId::parse(company).unwrap(), &[chunk])
        .await
        .unwrap();
}
pub(crate) async fn chat(app: &TestApp, token: &str, body: Value) -> reqwest::Response {
    app.request(Method::POST, "/chat", Some(token), Some(body))
        .await
}
/// The document ids a chat answer cites, in order.
pub(crate) fn cited(answer: &Value) -> Vec<String> {
    answer["citations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["documentId"].as_str().unwrap().to_owned())
        .collect()
}
/// Reads an SSE body into (event, data) pairs.
pub(crate) fn sse_events(text: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut event = "message".to_owned();
        let mut data = String::new();
        for line in block.lines() {
            if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_owned();
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push_str(d.trim_start());
            }
        }
        if !data.is_empty() {
            out.push((
                event,
                serde_json::from_str(&data).unwrap_or(Value::String(data)),
            ));
        }
    }
    out
}
#[tokio::test]
async fn chat_answers_from_the_company_knowledge_with_citations() {
    let (app, sim) = setup(&[]).await;
    let acme = company(&app, &sim, "acme", "gpt-4o").await;
    seed(
        &app,
        "acme",
        "refunds",
        "Refunds are accepted within 30 days of purchase. Keep the receipt.",
    )
    .await;
    seed(
        &app,
        "acme",
        "hours",
        "The shop opens at nine and closes at six.",
    )
    .await;
    let token = app.service_token("acme", &acme.key).await;
    let resp = chat(
        &app,
        &token,
        json!({"message": "How many days do I have for refunds?"}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["answer"],
        "According to the knowledge base: Refunds are accepted within 30 days of purchase."
    );
    assert_eq!(body["citations"][0]["documentId"], "refunds");
    assert_eq!(body["citations"][0]["title"], "refunds.md");
    assert!(body["citations"][0]["score"].as_f64().unwrap() > 0.0);
    assert_eq!(body["model"], "gpt-4o");
    let usage = &body["usage"];
    assert!(
        usage["promptTokens"].as_u64().unwrap() > 0
            && usage["completionTokens"].as_u64().unwrap() > 0
    );
    assert!(uuid::Uuid::parse_str(body["conversationId"].as_str().unwrap()).is_ok());
    // The system prompt and the passages reached the model.
    let sent = &sim.sim.requests()[0];
    let system = sent.body["messages"][0]["content"].as_str().unwrap();
    assert!(system.starts_with("You are acme's assistant."));
    assert!(system.contains("Refunds are accepted within 30 days"));

    // A follow-up in the same conversation carries the history.
    let conversation = body["conversationId"].as_str().unwrap();
    let resp = chat(
        &app,
        &token,
        json!({"message": "And the opening hours?", "conversationId": conversation}),
    )
    .await;
    let follow: Value = resp.json().await.unwrap();
    assert_eq!(follow["conversationId"], conversation);
    let sent = sim.sim.requests().last().unwrap().body.clone();
    let roles: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
}
#[tokio::test]
async fn streaming_chat_sends_deltas_then_done() {
    let (app, sim) = setup(&[]).await;
    let acme = company(&app, &sim, "acme", "gpt-4o").await;
    seed(
        &app,
        "acme",
        "refunds",
        "Refunds are accepted within 30 days of purchase.",
    )
    .await;
    let token = app.service_token("acme", &acme.key).await;
    let resp = chat(
        &app,
        &token,
        json!({"message": "refunds days?", "stream": true}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = sse_events(&resp.text().await.unwrap());
    let deltas: String = events
        .iter()
        .filter(|(e, _)| e == "delta")
        .map(|(_, d)| d["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        deltas,
        "According to the knowledge base: Refunds are accepted within 30 days of purchase."
    );
    let (last, done) = events.last().unwrap();
    assert_eq!(last, "done");
    assert_eq!(done["citations"][0]["documentId"], "refunds");
    assert!(done["usage"]["totalTokens"].as_u64().unwrap() > 0);
    assert_eq!(done["model"], "gpt-4o");
    // The streamed turn was stored like any other.
    let id = done["conversationId"].as_str().unwrap();
    let resp = chat(
        &app,
        &token,
        json!({"message": "thanks", "conversationId": id}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
}
#[tokio::test]
async fn each_company_reaches_only_its_own_deployment_and_key() {
    let (app, sim) = setup(&[]).await;
    let acme = company(&app, &sim, "acme", "gpt-4o").await;
    let beta = company(&app, &sim, "beta", "gpt-4o-mini").await;
    let ta = app.service_token("acme", &acme.key).await;
    let tb = app.service_token("beta", &beta.key).await;
    for _ in 0..3 {
        assert_eq!(
            chat(&app, &ta, json!({"message": "hello from acme"}))
                .await
                .status(),
            StatusCode::OK
        );
        assert_eq!(
            chat(&app, &tb, json!({"message": "hello from beta"}))
                .await
                .status(),
            StatusCode::OK
        );
    }
    for r in sim.sim.requests() {
        let user = r.body["messages"].as_array().unwrap().last().unwrap()["content"]
            .as_str()
            .unwrap()
            .to_owned();
        if user.contains("acme") {
            assert_eq!(
                (r.deployment.as_deref(), r.key.as_deref()),
                (Some("gpt-4o"), Some("key-acme"))
            );
        } else {
            assert_eq!(
                (r.deployment.as_deref(), r.key.as_deref()),
                (Some("gpt-4o-mini"), Some("key-beta"))
            );
        }
    }
    assert_eq!(sim.sim.requests().len(), 6);
}
#[tokio::test]
async fn conversations_and_knowledge_never_cross_companies() {
    let (app, sim) = setup(&[]).await;
    let acme = company(&app, &sim, "acme", "gpt-4o").await;
    let beta = company(&app, &sim, "beta", "gpt-4o").await;
    // Identical text in both companies' knowledge.
    seed(
        &app,
        "acme",
        "acme-handbook",
        "The secret launch date is in March.",
    )
    .await;
    seed(
        &app,
        "beta",
        "beta-handbook",
        "The secret launch date is in March.",
    )
    .await;
    let ta = app.service_token("acme", &acme.key).await;
    let tb = app.service_token("beta", &beta.key).await;
    let a: Value = chat(
        &app,
        &ta,
        json!({"message": "When is the secret launch date?"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(cited(&a), ["acme-handbook"]);
    let b: Value = chat(
        &app,
        &tb,
        json!({"message": "When is the secret launch date?"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(cited(&b), ["beta-handbook"]);
    // B cannot continue (or read) A's conversation.
    let resp = chat(
        &app,
        &tb,
        json!({"message": "what did I say?", "conversationId": a["conversationId"]}),
    )
    .await;
    assert_problem(resp, StatusCode::NOT_FOUND, "not_found").await;
    // A client cannot invent a conversation id either.
    let resp = chat(
        &app,
        &ta,
        json!({"message": "hi", "conversationId": uuid::Uuid::new_v4()}),
    )
    .await;
    assert_problem(resp, StatusCode::NOT_FOUND, "not_found").await;
}
#[tokio::test]
async fn the_body_key_flow_works_and_is_cached() {
    let (app, sim) = setup(&[]).await;
    let acme = company(&app, &sim, "acme", "gpt-4o").await;
    let body = |m: &str| json!({"companyId": "acme", "agentType": "SOPHIA", "agentAccessKey": acme.key, "message": m});
    for i in 0..5 {
        let resp = app
            .request(
                Method::POST,
                "/chat",
                None,
                Some(body(&format!("message {i}"))),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let successes = app.audit("action=agent.auth.success").await;
    assert_eq!(
        successes.len(),
        1,
        "bcrypt ran once; later messages used the verified-key cache"
    );
    // Wrong key: the generic 401.
    let wrong = json!({"companyId": "acme", "agentAccessKey": "sph_WRONGwrongWRONGwrongWRONGwrongWRONGab", "message": "x"});
    assert_problem(
        app.request(Method::POST, "/chat", None, Some(wrong)).await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    )
    .await;
    // No credentials at all.
    assert_problem(
        app.request(Method::POST, "/chat", None, Some(json!({"message": "x"})))
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    )
    .await;
    // A token plus body credentials is refused (the company comes from the token only).
    let token = app.service_token("acme", &acme.key).await;
    let resp = chat(&app, &token, json!({"message": "x", "companyId": "beta"})).await;
    assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
}
#[tokio::test]
async fn rotation_and_disable_apply_to_chat() {
    let (app, sim) = setup(&[]).await;
    let acme = company(&app, &sim, "acme", "gpt-4o").await;
    let token = app.service_token("acme", &acme.key).await;
    let body_key = json!({"companyId": "acme", "agentAccessKey": acme.key, "message": "hi"});
    assert_eq!(
        chat(&app, &token, json!({"message": "hi"})).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.request(Method::POST, "/chat", None, Some(body_key.clone()))
            .await
            .status(),
        StatusCode::OK
    );
    let rotated: Value = app
        .request(
            Method::POST,
            &format!("/admin/agent-instances/{}/rotate-key", acme.id),
            Some(&app.platform_token()),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_problem(
        chat(&app, &token, json!({"message": "hi"})).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    assert_problem(
        app.request(Method::POST, "/chat", None, Some(body_key))
            .await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    )
    .await;
    let new_key = rotated["agentAccessKey"].as_str().unwrap();
    let new_token = app.service_token("acme", new_key).await;
    assert_eq!(
        chat(&app, &new_token, json!({"message": "hi"}))
            .await
            .status(),
        StatusCode::OK
    );
    app.request(
        Method::DELETE,
        &format!("/admin/agent-instances/{}", acme.id),
        Some(&app.platform_token()),
        None,
    )
    .await;
    assert_problem(
        chat(&app, &new_token, json!({"message": "hi"})).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
}
#[tokio::test]
async fn config_changes_take_effect_at_once() {
    let (app, sim) = setup(&[]).await;
    let acme = company(&app, &sim, "acme", "gpt-4o").await;
    let token = app.service_token("acme", &acme.key).await;
    chat(&app, &token, json!({"message": "hi"})).await;
    app.request(
        Method::PATCH,
        &format!("/admin/agent-instances/{}", acme.id),
        Some(&app.platform_token()),
        Some(json!({"azureOpenaiDeployment": "gpt-4o-mini"})),
    )
    .await;
    chat(&app, &token, json!({"message": "hi"})).await;
    let deployments: Vec<Option<String>> = sim
        .sim
        .requests()
        .into_iter()
        .map(|r| r.deployment)
        .collect();
    assert_eq!(
        deployments,
        [Some("gpt-4o".into()), Some("gpt-4o-mini".into())]
    );
}
#[tokio::test]
async fn misconfigured_instances_get_clear_errors() {
    let (app, sim) = setup(&[]).await;
    // No endpoint at all.
    let bare = app
        .create_instance_with("bare", json!({"azureOpenaiEndpoint": null}))
        .await;
    let token = app.service_token("bare", &bare.key).await;
    assert_problem(
        chat(&app, &token, json!({"message": "hi"})).await,
        StatusCode::CONFLICT,
        "instance_not_configured",
    )
    .await;
    // A key the model refuses.
    let wrong = app
        .create_instance_with(
            "wrong",
            json!({"azureOpenaiEndpoint": sim.base, "credentials": {"azureOpenaiKey": "nope"}}),
        )
        .await;
    let token = app.service_token("wrong", &wrong.key).await;
    let body = assert_problem(
        chat(&app, &token, json!({"message": "hi"})).await,
        StatusCode::BAD_GATEWAY,
        "upstream_rejected",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("rejected the credentials")
    );
    assert!(!body.to_string().contains("nope"), "the key is not echoed");
    // Managed identity asked for, but no Azure credential configured.
    let mi = app
        .create_instance_with(
            "mi",
            json!({"azureOpenaiEndpoint": sim.base, "settings": {"authMode": "managedIdentity",
                   "managedIdentityClientId": "6f1c2a9e-5b7d-4c3e-9a8f-0123456789ab"}}),
        )
        .await;
    let token = app.service_token("mi", &mi.key).await;
    let body = assert_problem(
        chat(&app, &token, json!({"message": "hi"})).await,
        StatusCode::CONFLICT,
        "instance_not_configured",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("SOPHIA_AZURE_CREDENTIAL")
    );
    // Bad input.
    let acme = company(&app, &sim, "acme", "gpt-4o").await;
    let token = app.service_token("acme", &acme.key).await;
    for bad in [
        json!({"message": ""}),
        json!({"message": "   "}),
        json!({"message": "x".repeat(40_000)}),
        json!({"message": "x", "extra": 1}),
        json!({"message": "x", "conversationId": "nope"}),
    ] {
        assert_eq!(
            chat(&app, &token, bad.clone()).await.status(),
            StatusCode::BAD_REQUEST,
            "{bad:.60}"
        );
    }
}
/// A conversation driven past Cosmos DB's 2 MB item limit (the emulator rig enforces it)
/// keeps saving and answering; the turn that drops old history says so (`historyTrimmed`).
#[tokio::test]
async fn a_conversation_past_two_megabytes_keeps_saving_on_cosmos() {
    let endpoint = format!("{}/", crate::support::rig::cosmos_endpoint());
    let database = crate::support::rig::fresh_database();
    let (app, sim) = setup(&[
        ("SOPHIA_STORE", "cosmos"),
        ("SOPHIA_COSMOS_ENDPOINT", &endpoint),
        ("SOPHIA_COSMOS_DATABASE", &database),
        ("SOPHIA_COSMOS_KEY", crate::support::COSMOS_EMULATOR_KEY),
        ("SOPHIA_COSMOS_CREATE_CONTAINERS", "true"),
        ("SOPHIA_PUBLIC_URL", "https://sophia.example.com"),
    ])
    .await;
    let acme = app
        .create_instance_with(
            "acme",
            json!({"azureOpenaiEndpoint": sim.base, "azureOpenaiDeployment": "gpt-4o",
                   "credentials": {"azureOpenaiKey": "key-acme"},
                   "settings": {"historyMessages": 0}}),
        )
        .await;
    let token = app.service_token("acme", &acme.key).await;
    let mut conversation: Option<String> = None;
    let mut trimmed = 0u64;
    let mut first_trim = None;
    for turn in 0..64 {
        let message = format!("turn {turn}: {}", "long question text ".repeat(1_600));
        let mut body = json!({ "message": message });
        if let Some(id) = &conversation {
            body["conversationId"] = json!(id);
        }
        let resp = chat(&app, &token, body).await;
        assert_eq!(resp.status(), StatusCode::OK, "turn {turn}");
        let answer: Value = resp.json().await.unwrap();
        conversation = Some(answer["conversationId"].as_str().unwrap().to_owned());
        if let Some(n) = answer["historyTrimmed"].as_u64() {
            trimmed += n;
            first_trim.get_or_insert(turn);
        }
    }
    let first_trim = first_trim.expect("64 turns of 32 KB pass the bound");
    assert!(
        first_trim > 20,
        "trimming starts near the bound, at turn {first_trim}"
    );
    let id = sophia::domain::ConversationId::parse(conversation.as_deref().unwrap()).unwrap();
    let stored = app
        .state
        .store
        .get_conversation(&TenantId::parse("acme").unwrap(), &id)
        .await
        .unwrap();
    assert_eq!(
        stored.messages.len() as u64 + trimmed,
        128,
        "every message is accounted for"
    );
    assert!(
        stored.messages[stored.messages.len() - 2]
            .content
            .starts_with("turn 63:")
    );
}
