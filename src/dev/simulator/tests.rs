//! Unit tests of the simulator.

use super::*;

#[test]
fn answers_quote_the_best_matching_context_sentence() {
    let messages = vec![
        json!({"role": "system", "content": "Context:\nThe office opens at 9am. Parking is free on weekends. Lunch is served at noon."}),
        json!({"role": "user", "content": "When is parking free?"}),
    ];
    assert_eq!(
        grounded_answer(&messages),
        "According to the knowledge base: Parking is free on weekends."
    );
    let none = vec![json!({"role": "user", "content": "Hello there"})];
    assert!(grounded_answer(&none).starts_with("I could not find"));
}

#[test]
fn embeddings_are_deterministic_and_normalised() {
    let a = embed("refund policy for orders");
    assert_eq!(a, embed("refund policy for orders"));
    let norm: f32 = a.iter().map(|x| x * x).sum();
    assert!((norm - 1.0).abs() < 1e-5);
    let near: f32 = a
        .iter()
        .zip(embed("orders refund policy"))
        .map(|(x, y)| x * y)
        .sum();
    let far: f32 = a
        .iter()
        .zip(embed("weather tomorrow sunny"))
        .map(|(x, y)| x * y)
        .sum();
    assert!(near > far);
}

/// One request to the simulator's router, in process.
async fn call(
    sim: &Simulator,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> (u16, Value) {
    use tower::ServiceExt;
    let mut request = axum::http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = sim.router().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn foundry_routes_speak_the_projects_protocol() {
    let sim = Simulator::new(SimConfig {
        project_tokens: vec![("p1".into(), "t1".into())],
        ..Default::default()
    });
    let bearer = [("authorization", "Bearer t1")];
    let definition =
        json!({"definition": {"kind": "prompt", "model": "gpt-4o", "instructions": "Be brief."}});
    // Entra only: an api-key is refused, and so is a token not granted on the project.
    let (status, _) = call(
        &sim,
        "POST",
        "/api/projects/p1/agents/a/versions?api-version=v1",
        &[("api-key", "k")],
        definition.clone(),
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = call(
        &sim,
        "POST",
        "/api/projects/p2/agents/a/versions?api-version=v1",
        &bearer,
        definition.clone(),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("PermissionDenied"))
    );
    // The agents API needs api-version=v1.
    let (status, _) = call(
        &sim,
        "POST",
        "/api/projects/p1/agents/a/versions",
        &bearer,
        definition.clone(),
    )
    .await;
    assert_eq!(status, 400);
    let (status, version) = call(
        &sim,
        "POST",
        "/api/projects/p1/agents/a/versions?api-version=v1",
        &bearer,
        definition.clone(),
    )
    .await;
    assert_eq!((status, version["version"].as_str()), (200, Some("1")));
    let (status, _) = call(
        &sim,
        "GET",
        "/api/projects/p1/agents/a/versions/2?api-version=v1",
        &bearer,
        Value::Null,
    )
    .await;
    assert_eq!(status, 404);
    // A response needs an agent reference, not a model; it runs the agent's instructions.
    let (status, _) = call(
        &sim,
        "POST",
        "/api/projects/p1/openai/v1/responses",
        &bearer,
        json!({"model": "gpt-4o", "input": "hi"}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, conversation) = call(
        &sim,
        "POST",
        "/api/projects/p1/openai/v1/conversations",
        &bearer,
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    let conv = conversation["id"].as_str().unwrap().to_owned();
    let (status, response) = call(&sim, "POST", "/api/projects/p1/openai/v1/responses", &bearer,
        json!({"agent_reference": {"type": "agent_reference", "name": "a", "version": "1"}, "conversation": conv, "input": "hello"})).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["conversation"]["id"], conv.as_str());
    assert_eq!(
        sim.foundry_conversations("p1")[&conv].len(),
        2,
        "input and answer kept"
    );
    let (status, _) = call(&sim, "POST", "/api/projects/p1/openai/v1/responses", &bearer,
        json!({"agent_reference": {"type": "agent_reference", "name": "a"}, "conversation": "conv_nope", "input": "x"})).await;
    assert_eq!(status, 404);
}
