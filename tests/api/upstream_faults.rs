//! Upstream faults on the chat path: a streamed error's real status, 429 retried then passed
//! through, timeouts as 504.

use reqwest::StatusCode;
use serde_json::json;
use sophia::dev::simulator::Fault;

use crate::support::assert_problem;

use crate::chat::{chat, company, setup};

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
