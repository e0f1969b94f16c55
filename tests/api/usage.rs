//! Token usage: recorded per company and day (also when a stream's client goes away) and read
//! back by admins within their companies (`/admin/usage`).

use reqwest::StatusCode;
use serde_json::{Value, json};
use sophia::dev::simulator::SimConfig;
use sophia::domain::TenantId;

use crate::support::{assert_problem, spawn_app_with, spawn_simulator};

use crate::chat::{chat, company, setup, sse_events};

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
