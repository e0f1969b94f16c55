//! `/chat` and `/v1/chat/completions` against the simulator over real HTTP: grounded answers
//! with citations, streaming, per-tenant deployments and keys, conversation and knowledge
//! isolation, rotation and disable, upstream 429 and timeouts, usage.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sophia::dev::simulator::{Fault, SimConfig};
use sophia::domain::TenantId;
use sophia::knowledge::Chunk;

use crate::support::{
    Created, SimServer, TestApp, assert_problem, spawn_app_with, spawn_simulator,
};

async fn setup(extra: &[(&str, &str)]) -> (TestApp, SimServer) {
    let sim = spawn_simulator(SimConfig {
        keys: vec!["key-acme".into(), "key-beta".into()],
        ..Default::default()
    })
    .await;
    let mut overrides = vec![("SOPHIA_ALLOW_LOCAL_UPSTREAMS", "true")];
    overrides.extend_from_slice(extra);
    (spawn_app_with(&overrides).await, sim)
}

async fn company(app: &TestApp, sim: &SimServer, name: &str, deployment: &str) -> Created {
    app.create_instance_with(
        name,
        json!({"azureOpenaiEndpoint": sim.base, "azureOpenaiDeployment": deployment,
               "credentials": {"azureOpenaiKey": format!("key-{name}")},
               "settings": {"systemPrompt": format!("You are {name}'s assistant.")}}),
    )
    .await
}

async fn seed(app: &TestApp, company: &str, doc: &str, text: &str) {
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

async fn chat(app: &TestApp, token: &str, body: Value) -> reqwest::Response {
    app.request(Method::POST, "/chat", Some(token), Some(body))
        .await
}

/// The document ids a chat answer cites, in order.
fn cited(answer: &Value) -> Vec<String> {
    answer["citations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["documentId"].as_str().unwrap().to_owned())
        .collect()
}

/// Reads an SSE body into (event, data) pairs.
fn sse_events(text: &str) -> Vec<(String, Value)> {
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
async fn streaming_upstream_errors_get_a_real_status() {
    let (app, sim) = setup(&[("SOPHIA_UPSTREAM_RETRY_BUDGET_MS", "0")]).await;
    let acme = company(&app, &sim, "acme", "gpt-4o").await;
    let token = app.service_token("acme", &acme.key).await;
    sim.sim.push_fault(Fault {
        status: Some(500),
        ..Default::default()
    });
    let resp = chat(&app, &token, json!({"message": "hi", "stream": true})).await;
    assert_problem(resp, StatusCode::BAD_GATEWAY, "upstream_unavailable").await;
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
async fn upstream_429_is_retried_then_passed_through() {
    let (app, sim) = setup(&[("SOPHIA_UPSTREAM_RETRY_BUDGET_MS", "2000")]).await;
    let acme = company(&app, &sim, "acme", "gpt-4o").await;
    let token = app.service_token("acme", &acme.key).await;
    sim.sim.push_fault(Fault {
        status: Some(429),
        retry_after_ms: Some(100),
        times: Some(1),
        ..Default::default()
    });
    assert_eq!(
        chat(&app, &token, json!({"message": "hi"})).await.status(),
        StatusCode::OK
    );
    sim.sim.push_fault(Fault {
        status: Some(429),
        retry_after: Some(20),
        times: Some(5),
        ..Default::default()
    });
    let resp = chat(&app, &token, json!({"message": "hi"})).await;
    assert_eq!(resp.headers()["retry-after"], "20");
    assert_problem(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
}

#[tokio::test]
async fn upstream_timeout_is_504() {
    let (app, sim) = setup(&[("SOPHIA_UPSTREAM_FIRST_BYTE_TIMEOUT_MS", "300")]).await;
    let acme = company(&app, &sim, "acme", "gpt-4o").await;
    let token = app.service_token("acme", &acme.key).await;
    sim.sim.push_fault(Fault {
        delay_ms: Some(2000),
        ..Default::default()
    });
    assert_problem(
        chat(&app, &token, json!({"message": "hi"})).await,
        StatusCode::GATEWAY_TIMEOUT,
        "upstream_timeout",
    )
    .await;
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

#[tokio::test]
async fn usage_is_recorded_per_company_and_day() {
    let (app, sim) = setup(&[]).await;
    let acme = company(&app, &sim, "acme", "gpt-4o").await;
    let token = app.service_token("acme", &acme.key).await;
    let mut total = 0;
    for stream in [false, true, false] {
        let resp = chat(
            &app,
            &token,
            json!({"message": "hello there", "stream": stream}),
        )
        .await;
        if stream {
            let events = sse_events(&resp.text().await.unwrap());
            total += events.last().unwrap().1["usage"]["totalTokens"]
                .as_u64()
                .unwrap();
        } else {
            total += resp.json::<Value>().await.unwrap()["usage"]["totalTokens"]
                .as_u64()
                .unwrap();
        }
    }
    let today = chrono::Utc::now().date_naive();
    app.state.usage.flush(app.state.store.as_ref()).await;
    let usage = app
        .state
        .store
        .list_usage(
            &sophia::store::TenantScope::Tenant(TenantId::parse("acme").unwrap()),
            today,
            today,
        )
        .await
        .unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].requests, 3);
    assert_eq!(usage[0].total_tokens, total);
}

#[tokio::test]
async fn openai_compatible_completions() {
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
    let resp = app
        .request(Method::POST, "/v1/chat/completions", Some(&token), Some(json!({"model": "anything", "messages": [{"role": "user", "content": "refund days?"}]})))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("30 days")
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        sim.sim.requests()[0].deployment.as_deref(),
        Some("gpt-4o"),
        "the tenant's deployment, whatever model says"
    );

    // Streaming chunks end with usage and [DONE].
    let resp = app
        .request(
            Method::POST,
            "/v1/chat/completions",
            Some(&token),
            Some(json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true},
                        "messages": [{"role": "user", "content": [{"type": "text", "text": "refund days?"}]}]})),
        )
        .await;
    let text = resp.text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"));
    let chunks: Vec<Value> = text
        .split("\n\n")
        .filter_map(|b| b.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(content.contains("30 days"));
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert!(
        chunks.last().unwrap()["usage"]["total_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );

    // OpenAI-shaped errors.
    let resp = app
        .request(
            Method::POST,
            "/v1/chat/completions",
            Some("bad-token"),
            Some(json!({"messages": []})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error");
    let resp = app
        .request(
            Method::POST,
            "/v1/chat/completions",
            Some(&token),
            Some(json!({"messages": []})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["param"], "messages");
}

#[tokio::test]
async fn admins_read_usage_within_their_companies() {
    let (app, sim) = setup(&[]).await;
    let acme = company(&app, &sim, "acme", "gpt-4o").await;
    let beta = company(&app, &sim, "beta", "gpt-4o").await;
    for (c, k) in [
        ("acme", &acme.key),
        ("beta", &beta.key),
        ("beta", &beta.key),
    ] {
        let token = app.service_token(c, k).await;
        chat(&app, &token, json!({"message": "hello"})).await;
    }
    let all: Value = app
        .get("/admin/usage", &app.platform_token())
        .await
        .json()
        .await
        .unwrap();
    let requests: Vec<(String, u64)> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["tenantId"].as_str().unwrap().to_owned(),
                u["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(requests, [("acme".to_owned(), 1), ("beta".to_owned(), 2)]);
    let own: Value = app
        .get("/admin/usage", &app.admin_token("acme"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(own["items"].as_array().unwrap().len(), 1);
    assert_eq!(own["items"][0]["tenantId"], "acme");
    assert!(own["items"][0]["totalTokens"].as_u64().unwrap() > 0);
    assert_problem(
        app.get("/admin/usage?companyId=beta", &app.admin_token("acme"))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    for bad in [
        "from=2026-13-01",
        "from=2026-02-01&to=2026-01-01",
        "from=2020-01-01&to=2026-01-01",
        "day=1",
    ] {
        assert_eq!(
            app.get(&format!("/admin/usage?{bad}"), &app.platform_token())
                .await
                .status(),
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    let future: Value = app
        .get(
            "/admin/usage?from=2030-01-01&to=2030-01-02",
            &app.platform_token(),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(future["items"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn azure_ai_search_is_queried_with_the_tenant_filter() {
    use crate::support::search_standin::SearchStandIn;
    use sophia::knowledge::KnowledgeIndex;
    use sophia::knowledge::azure_search::{AzureSearchIndex, DEFAULT_INDEX, SearchAuth};
    let (app, sim) = setup(&[]).await;
    let search = SearchStandIn::start("search-key-1").await;
    let mut tokens = Vec::new();
    for name in ["acme", "beta"] {
        let created = app
            .create_instance_with(
                name,
                json!({"azureOpenaiEndpoint": sim.base, "azureOpenaiDeployment": "gpt-4o", "azureSearchEndpoint": search.base,
                       "credentials": {"azureOpenaiKey": format!("key-{name}"), "azureSearchKey": "search-key-1"}}),
            )
            .await;
        tokens.push(app.service_token(name, &created.key).await);
        // Both companies share one index, with identical text.
        let index = AzureSearchIndex::new(
            reqwest::Client::new(),
            url::Url::parse(&search.base).unwrap(),
            DEFAULT_INDEX,
            SearchAuth::ApiKey("search-key-1".to_owned().into()),
        );
        let chunk = Chunk {
            id: "handbook#0".into(),
            document_id: format!("{name}-handbook"),
            title: "Handbook".into(),
            text: "The secret launch date is in March.".into(),
            vector: None,
        };
        index
            .upsert(&TenantId::parse(name).unwrap(), &[chunk])
            .await
            .unwrap();
    }
    for (name, token) in ["acme", "beta"].iter().zip(&tokens) {
        let body: Value = chat(
            &app,
            token,
            json!({"message": "When is the secret launch date?"}),
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(cited(&body), [format!("{name}-handbook")]);
        assert!(body["answer"].as_str().unwrap().contains("March"));
    }
    assert_eq!(
        search.filters(),
        [
            Some("tenantId eq 'acme'".to_owned()),
            Some("tenantId eq 'beta'".to_owned())
        ],
        "every query carries the tenant filter"
    );
    // Deleting a document through the trait touches only that tenant.
    let index = AzureSearchIndex::new(
        reqwest::Client::new(),
        url::Url::parse(&search.base).unwrap(),
        DEFAULT_INDEX,
        SearchAuth::ApiKey("search-key-1".to_owned().into()),
    );
    index
        .delete_document(&TenantId::parse("acme").unwrap(), "beta-handbook")
        .await
        .unwrap();
    let left = index
        .search(&TenantId::parse("beta").unwrap(), "launch", None, 5)
        .await
        .unwrap();
    assert_eq!(left.len(), 1, "acme cannot delete beta's document");
    index
        .delete_document(&TenantId::parse("acme").unwrap(), "acme-handbook")
        .await
        .unwrap();
    assert!(
        index
            .search(&TenantId::parse("acme").unwrap(), "launch", None, 5)
            .await
            .unwrap()
            .is_empty()
    );

    // A search key the service refuses is a clear 502, never echoed.
    let wrong = app
        .create_instance_with(
            "gamma",
            json!({"azureOpenaiEndpoint": sim.base, "azureSearchEndpoint": search.base,
                   "credentials": {"azureOpenaiKey": "key-acme", "azureSearchKey": "WRONG-SEARCH-KEY"}}),
        )
        .await;
    let token = app.service_token("gamma", &wrong.key).await;
    let body = assert_problem(
        chat(&app, &token, json!({"message": "launch?"})).await,
        StatusCode::BAD_GATEWAY,
        "upstream_rejected",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("search service rejected the credentials")
    );
    assert!(!body.to_string().contains("WRONG-SEARCH-KEY"));
    // A search endpoint without a key is a configuration error.
    let keyless = app
        .create_instance_with("delta", json!({"azureOpenaiEndpoint": sim.base, "azureSearchEndpoint": search.base, "credentials": {"azureOpenaiKey": "key-acme"}}))
        .await;
    let token = app.service_token("delta", &keyless.key).await;
    assert_problem(
        chat(&app, &token, json!({"message": "launch?"})).await,
        StatusCode::CONFLICT,
        "instance_not_configured",
    )
    .await;
}

#[tokio::test]
async fn usage_is_recorded_even_when_a_stream_client_disconnects() {
    let sim = spawn_simulator(SimConfig {
        keys: vec!["key-acme".into()],
        chunk_delay: std::time::Duration::from_millis(30),
        ..Default::default()
    })
    .await;
    let app = spawn_app_with(&[("SOPHIA_ALLOW_LOCAL_UPSTREAMS", "true")]).await;
    let acme = company(&app, &sim, "acme", "gpt-4o").await;
    let token = app.service_token("acme", &acme.key).await;
    let mut resp = chat(
        &app,
        &token,
        json!({"message": "tell me a long story about refunds and receipts", "stream": true}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("delta"));
    drop(resp);
    // The upstream is drained in the background and the tokens still counted (bounded wait).
    let tenant = TenantId::parse("acme").unwrap();
    let today = chrono::Utc::now().date_naive();
    let mut recorded = 0;
    for _ in 0..100 {
        app.state.usage.flush(app.state.store.as_ref()).await;
        let usage = app
            .state
            .store
            .list_usage(
                &sophia::store::TenantScope::Tenant(tenant.clone()),
                today,
                today,
            )
            .await
            .unwrap();
        recorded = usage.first().map(|u| u.requests).unwrap_or(0);
        if recorded == 1 {
            assert!(usage[0].completion_tokens > 0);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(recorded, 1, "usage of the abandoned stream was recorded");
}

#[tokio::test]
async fn allowed_models_are_enforced_on_v1() {
    let (app, sim) = setup(&[]).await;
    let acme = app
        .create_instance_with(
            "acme",
            json!({"azureOpenaiEndpoint": sim.base, "azureOpenaiDeployment": "gpt-4o", "credentials": {"azureOpenaiKey": "key-acme"},
                   "settings": {"allowedModels": ["gpt-4o", "gpt-4o-mini"]}}),
        )
        .await;
    let token = app.service_token("acme", &acme.key).await;
    let ask =
        |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        app.request(
            Method::POST,
            "/v1/chat/completions",
            Some(&token),
            Some(ask("gpt-4o-mini"))
        )
        .await
        .status(),
        StatusCode::OK
    );
    let resp = app
        .request(
            Method::POST,
            "/v1/chat/completions",
            Some(&token),
            Some(ask("gpt-5")),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["param"], "model");
    assert_eq!(
        sim.sim.requests().len(),
        1,
        "a refused model never reaches the upstream"
    );
}

#[tokio::test]
async fn hybrid_retrieval_embeds_the_question_with_the_tenants_own_deployment() {
    let (app, sim) = setup(&[]).await;
    let acme = app
        .create_instance_with(
            "acme",
            json!({"azureOpenaiEndpoint": sim.base, "azureOpenaiDeployment": "gpt-4o", "azureEmbeddingDeployment": "text-embedding-3-small",
                   "credentials": {"azureOpenaiKey": "key-acme"}}),
        )
        .await;
    let tenant = TenantId::parse("acme").unwrap();
    let texts = [
        (
            "returns",
            "Items can be returned within 30 days with the receipt.",
        ),
        ("shipping", "Shipping takes five business days."),
    ];
    let chunks: Vec<Chunk> = texts
        .iter()
        .map(|(doc, text)| Chunk {
            id: format!("{doc}#0"),
            document_id: (*doc).into(),
            title: format!("{doc}.md"),
            text: (*text).into(),
            vector: Some(sophia::dev::simulator::embed(text)),
        })
        .collect();
    app.state.knowledge.upsert(&tenant, &chunks).await.unwrap();
    let token = app.service_token("acme", &acme.key).await;
    let body: Value = chat(
        &app,
        &token,
        json!({"message": "How many days to return items with a receipt?"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(body["citations"][0]["documentId"], "returns");
    let requests = sim.sim.requests();
    let embedding = requests
        .iter()
        .find(|r| r.kind == "embeddings")
        .expect("the question was embedded");
    assert_eq!(
        embedding.deployment.as_deref(),
        Some("text-embedding-3-small")
    );
    assert_eq!(embedding.key.as_deref(), Some("key-acme"));
    assert_eq!(
        embedding.body["input"][0],
        "How many days to return items with a receipt?"
    );
    // An embedding failure degrades to keyword search rather than failing the turn.
    sim.sim.push_fault(Fault {
        deployment: Some("text-embedding-3-small".into()),
        status: Some(400),
        ..Default::default()
    });
    let resp = chat(&app, &token, json!({"message": "shipping business days?"})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["citations"][0]["documentId"], "shipping");
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
