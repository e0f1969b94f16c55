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

/// A company whose instance has chat deployment gpt-4o and the embedding deployment `embed`.
async fn with_embeddings(
    app: &crate::support::TestApp,
    sim: &crate::support::SimServer,
    name: &str,
    embed: &str,
) -> crate::support::Created {
    app.create_instance_with(
        name,
        json!({"azureOpenaiEndpoint": sim.base, "azureOpenaiDeployment": "gpt-4o",
               "azureEmbeddingDeployment": embed,
               "credentials": {"azureOpenaiKey": format!("key-{name}")}}),
    )
    .await
}

#[tokio::test]
async fn models_list_the_instances_own() {
    let (app, sim) = setup(&[]).await;
    let acme = with_embeddings(&app, &sim, "acme", "text-embedding-3-small").await;
    let beta = app
        .create_instance_with(
            "beta",
            json!({"azureOpenaiEndpoint": sim.base, "azureOpenaiDeployment": "gpt-4o-mini",
                   "credentials": {"azureOpenaiKey": "key-beta"},
                   "settings": {"allowedModels": ["gpt-4o-mini", "gpt-4.1-mini"]}}),
        )
        .await;
    let ids = |body: &Value| -> Vec<String> {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let token = app.service_token("acme", &acme.key).await;
    let resp = app
        .request(Method::GET, "/v1/models", Some(&token), None)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(ids(&body), ["gpt-4o", "text-embedding-3-small"]);
    assert!(
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["object"] == "model"
                && m["owned_by"] == "acme"
                && m["created"].as_i64().is_some_and(|c| c > 0))
    );

    let token = app.service_token("beta", &beta.key).await;
    let body: Value = app
        .request(Method::GET, "/v1/models", Some(&token), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        ids(&body),
        ["gpt-4o-mini", "gpt-4.1-mini"],
        "beta sees its allowed models, nothing of acme's"
    );
    // One model by id: its own, never acme's.
    let one: Value = app
        .request(Method::GET, "/v1/models/gpt-4.1-mini", Some(&token), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["id"], "gpt-4.1-mini");
    assert_eq!(one["owned_by"], "beta");
    let resp = app
        .request(
            Method::GET,
            "/v1/models/text-embedding-3-small",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let resp = app.request(Method::GET, "/v1/models", None, None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error");
}

#[tokio::test]
async fn embeddings_come_from_the_tenants_deployment() {
    let (app, sim) = setup(&[]).await;
    let acme = with_embeddings(&app, &sim, "acme", "acme-embed").await;
    let beta = company(&app, &sim, "beta", "gpt-4o").await;
    let token = app.service_token("acme", &acme.key).await;
    sim.sim.clear();

    let resp = app
        .request(
            Method::POST,
            "/v1/embeddings",
            Some(&token),
            Some(json!({"model": "text-embedding-3-small", "input": ["refund window", "shipping", "returns"], "dimensions": 64})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "list");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], i);
        assert!(!item["embedding"].as_array().unwrap().is_empty());
    }
    let prompt_tokens = body["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 0);
    assert_eq!(body["usage"]["total_tokens"], prompt_tokens);
    let calls = sim.sim.requests();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].kind, "embeddings");
    assert_eq!(
        calls[0].deployment.as_deref(),
        Some("acme-embed"),
        "the tenant's deployment, whatever model says"
    );
    assert_eq!(calls[0].key.as_deref(), Some("key-acme"));
    assert_eq!(calls[0].body["dimensions"], 64);

    // base64: the little-endian f32 bytes of the same vector.
    let float: Value = app
        .request(
            Method::POST,
            "/v1/embeddings",
            Some(&token),
            Some(json!({"input": "refund window"})),
        )
        .await
        .json()
        .await
        .unwrap();
    let b64: Value = app
        .request(
            Method::POST,
            "/v1/embeddings",
            Some(&token),
            Some(json!({"input": "refund window", "encoding_format": "base64"})),
        )
        .await
        .json()
        .await
        .unwrap();
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f64> = bytes
        .chunks_exact(4)
        .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect();
    let floats: Vec<f64> = float["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(decoded.len(), floats.len());
    assert!(
        decoded
            .iter()
            .zip(&floats)
            .all(|(a, b)| (a - b).abs() < 1e-6)
    );

    // Token ids (LangChain's default) pass through as token ids.
    sim.sim.clear();
    let resp = app
        .request(
            Method::POST,
            "/v1/embeddings",
            Some(&token),
            Some(json!({"input": [[9906, 1917], [15339]]})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        sim.sim.requests()[0].body["input"],
        json!([[9906, 1917], [15339]])
    );
    let resp = app
        .request(
            Method::POST,
            "/v1/embeddings",
            Some(&token),
            Some(json!({"input": [9906, 1917]})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(sim.sim.requests()[1].body["input"], json!([[9906, 1917]]));

    // The tokens are the company's usage.
    app.state.usage.flush(app.state.store.as_ref()).await;
    let today = chrono::Utc::now().date_naive();
    let usage = app
        .state
        .store
        .list_usage(
            &sophia::store::TenantScope::Tenant(sophia::domain::TenantId::parse("acme").unwrap()),
            today,
            today,
        )
        .await
        .unwrap();
    assert_eq!(usage.len(), 1);
    assert!(usage[0].prompt_tokens >= prompt_tokens);
    assert_eq!(usage[0].requests, 5);

    // Bad input: OpenAI-shaped 400s naming the parameter; nothing reaches the deployment.
    sim.sim.clear();
    for (body, param) in [
        (json!({"input": []}), "input"),
        (json!({"input": [{"text": "x"}]}), "input"),
        (json!({"input": [[1, "x"]]}), "input"),
        (json!({"input": [[1, 2], []]}), "input[1]"),
        (json!({"input": [-1]}), "input"),
        (json!({"input": ["ok", ""]}), "input[1]"),
        (
            json!({"input": "x", "encoding_format": "hex"}),
            "encoding_format",
        ),
        (json!({"input": "x", "dimensions": 0}), "dimensions"),
    ] {
        let resp = app
            .request(
                Method::POST,
                "/v1/embeddings",
                Some(&token),
                Some(body.clone()),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["type"], "invalid_request_error", "{body}");
        assert_eq!(err["error"]["param"], param, "{body}");
    }
    let resp = app
        .request(
            Method::POST,
            "/v1/embeddings",
            Some(&token),
            Some(json!({"model": "x"})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(sim.sim.requests().is_empty());

    // An instance without an embedding deployment: 404 in OpenAI's shape.
    let token = app.service_token("beta", &beta.key).await;
    let resp = app
        .request(
            Method::POST,
            "/v1/embeddings",
            Some(&token),
            Some(json!({"input": "x"})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "not_found");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("embedding deployment")
    );
    assert!(sim.sim.requests().is_empty());
}

/// `settings.apiStyle: v1`: the company's resource is called on Azure OpenAI's GA v1 API
/// (`/openai/v1/…`, no api-version, the deployment as `model`, the company's `api-key`), for
/// chat (whole and streamed), embeddings and the Responses API alike; another company on the
/// deployment routes is unaffected.
#[tokio::test]
async fn azure_v1_api_style_per_instance() {
    let (app, sim) = setup(&[]).await;
    let acme = app
        .create_instance_with(
            "acme",
            json!({"azureOpenaiEndpoint": sim.base, "azureOpenaiDeployment": "gpt-4o",
                   "azureEmbeddingDeployment": "embed-acme",
                   "credentials": {"azureOpenaiKey": "key-acme"},
                   "settings": {"apiStyle": "v1"}}),
        )
        .await;
    let beta = with_embeddings(&app, &sim, "beta", "embed-beta").await;
    let a = app.service_token("acme", &acme.key).await;
    let b = app.service_token("beta", &beta.key).await;
    let user = json!([{"role": "user", "content": "hello"}]);
    for (path, body) in [
        ("/v1/chat/completions", json!({"messages": user})),
        (
            "/v1/chat/completions",
            json!({"messages": user, "stream": true}),
        ),
        ("/v1/embeddings", json!({"input": "hello"})),
        ("/v1/responses", json!({"input": "hello"})),
        ("/chat", json!({"message": "hello"})),
    ] {
        let resp = app
            .request(Method::POST, path, Some(&a), Some(body.clone()))
            .await;
        assert_eq!(resp.status(), StatusCode::OK, "{path} {body}");
        resp.bytes().await.unwrap();
    }
    // Every call (the knowledge search's question embeddings included) took the v1 route.
    let sent = sim.sim.requests();
    for r in &sent {
        assert_eq!(r.route, "azure-v1", "{r:?}");
        assert_eq!(r.api_version, None);
        assert_eq!(r.key.as_deref(), Some("key-acme"));
        let model = if r.kind == "embeddings" {
            "embed-acme"
        } else {
            "gpt-4o"
        };
        assert_eq!(r.body["model"], model, "{r:?}");
    }
    assert_eq!(sent.iter().filter(|r| r.kind == "chat").count(), 3);
    // `/v1/responses` on the v1 API calls the upstream Responses API, history included
    // (`store: false` upstream: SOPHIA keeps the conversation).
    let upstream = sent.iter().find(|r| r.kind == "responses").unwrap();
    assert_eq!(upstream.body["store"], false);
    assert_eq!(
        upstream.body["input"],
        json!([{"role": "user", "content": "hello"}])
    );
    sim.sim.clear();
    app.request(
        Method::POST,
        "/v1/chat/completions",
        Some(&b),
        Some(json!({"messages": user})),
    )
    .await;
    let sent: Vec<_> = sim
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.kind == "chat")
        .collect();
    assert_eq!(sent[0].route, "deployments");
    assert_eq!(sent[0].deployment.as_deref(), Some("gpt-4o"));
    assert!(sent[0].api_version.is_some());
    assert!(sent[0].body.get("model").is_none());

    // The Responses API upstream: streamed, and a function tool's round trip.
    sim.sim.clear();
    let text = app
        .request(
            Method::POST,
            "/v1/responses",
            Some(&a),
            Some(json!({"input": "Say hi to Ada", "stream": true})),
        )
        .await
        .text()
        .await
        .unwrap();
    let last: Value = text
        .split("\n\n")
        .filter_map(|b| b.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter_map(|d| serde_json::from_str(d).ok())
        .last()
        .unwrap();
    assert_eq!(last["type"], "response.completed", "{text}");
    let said = last["response"]["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap();
    assert!(said.contains("Ada"), "{said}");
    assert!(text.contains(&format!("\"delta\":\"{}", said.split(' ').next().unwrap())));
    let tools = json!([{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
    let first: Value = app
        .request(
            Method::POST,
            "/v1/responses",
            Some(&a),
            Some(json!({"input": "Weather in Oslo?", "tools": tools})),
        )
        .await
        .json()
        .await
        .unwrap();
    let call = first["output"][0].clone();
    assert_eq!(call["type"], "function_call", "{first}");
    assert_eq!(call["arguments"], json!({"city": "Oslo"}).to_string());
    let second: Value = app
        .request(
            Method::POST,
            "/v1/responses",
            Some(&a),
            Some(json!({"previous_response_id": first["id"], "tools": tools,
                        "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "-3 C"}]})),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        second["output"][0]["content"][0]["text"],
        "According to get_weather: -3 C"
    );
    let upstream = sim
        .sim
        .requests()
        .into_iter()
        .rfind(|r| r.kind == "responses")
        .unwrap();
    assert_eq!(upstream.route, "azure-v1");
    let input = upstream.body["input"].as_array().unwrap().clone();
    let kinds: Vec<&str> = input
        .iter()
        .map(|i| i["type"].as_str().unwrap_or("message"))
        .collect();
    assert_eq!(kinds, ["message", "function_call", "function_call_output"]);
    assert_eq!(upstream.body["tools"][0]["name"], "get_weather");

    // A bad style is a clear 400 naming the setting.
    let admin = app.platform_token();
    let resp = app
        .request(
            Method::PATCH,
            &format!("/admin/agent-instances/{}", acme.id),
            Some(&admin),
            Some(json!({"settings": {"apiStyle": "v2"}})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["field"], "settings.apiStyle");
}
