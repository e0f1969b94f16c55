//! `/v1/chat/completions` (OpenAI-compatible) over real HTTP: objects, chunks and errors in
//! OpenAI's shape, the tenant's allowed models.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::chat::{company, seed, setup};

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
