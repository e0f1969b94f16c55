//! Per-company limits on the data plane: 429 `rate_limited` / `quota_exceeded` with
//! `Retry-After` and OpenAI's `x-ratelimit-*` headers, another company unaffected, budgets
//! audited once per window, and a company admin that cannot raise its own limits.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::chat::{chat, company, setup};
use crate::support::{TestApp, assert_problem};

/// Waits (at most 15 s) until the current UTC minute has at least 20 s left, so a test that
/// counts within one minute window does not straddle two.
async fn early_in_a_minute() {
    for _ in 0..150 {
        if chrono::Utc::now().timestamp().rem_euclid(60) < 40 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn set_settings(app: &TestApp, id: &str, token: &str, settings: Value) -> reqwest::Response {
    app.request(
        Method::PATCH,
        &format!("/admin/agent-instances/{id}"),
        Some(token),
        Some(json!({ "settings": settings })),
    )
    .await
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_company_over_its_request_rate_gets_429_with_headers_and_another_is_unaffected() {
    let (app, sim) = setup(&[]).await;
    let acme = company(&app, &sim, "acme", "gpt-4o-acme").await;
    let beta = company(&app, &sim, "beta", "gpt-4o-beta").await;
    let platform = app.platform_token();
    let resp = set_settings(
        &app,
        &acme.id,
        &platform,
        json!({"requestsPerMinute": 3, "tokensPerMinute": 1_000_000}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let acme_token = app.service_token("acme", &acme.key).await;
    let beta_token = app.service_token("beta", &beta.key).await;
    early_in_a_minute().await;
    for left in [2, 1, 0] {
        let resp = chat(&app, &acme_token, json!({"message": "hello"})).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            header(&resp, "x-ratelimit-limit-requests").as_deref(),
            Some("3")
        );
        assert_eq!(
            header(&resp, "x-ratelimit-remaining-requests"),
            Some(left.to_string())
        );
        assert_eq!(
            header(&resp, "x-ratelimit-limit-tokens").as_deref(),
            Some("1000000")
        );
        let remaining: u64 = header(&resp, "x-ratelimit-remaining-tokens")
            .unwrap()
            .parse()
            .unwrap();
        assert!(remaining < 1_000_000);
        assert!(
            header(&resp, "x-ratelimit-reset-requests")
                .unwrap()
                .ends_with('s')
        );
    }
    let resp = chat(&app, &acme_token, json!({"message": "hello"})).await;
    let retry: u64 = header(&resp, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(
        header(&resp, "x-ratelimit-remaining-requests").as_deref(),
        Some("0")
    );
    let problem = assert_problem(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("requestsPerMinute"),
        "{problem}"
    );
    // The OpenAI surface answers the same limit in OpenAI's shape.
    let resp = app
        .request(
            Method::POST,
            "/v1/chat/completions",
            Some(&acme_token),
            Some(json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(header(&resp, "retry-after").is_some());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    // beta has no limits: it is served, without rate-limit headers.
    for _ in 0..5 {
        let resp = chat(&app, &beta_token, json!({"message": "hello"})).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(header(&resp, "x-ratelimit-limit-requests").is_none());
    }
}

#[tokio::test]
async fn a_spent_budget_is_quota_exceeded_audited_once_and_only_a_platform_admin_raises_it() {
    let (app, sim) = setup(&[]).await;
    let acme = company(&app, &sim, "acme", "gpt-4o-acme").await;
    let platform = app.platform_token();
    let resp = set_settings(
        &app,
        &acme.id,
        &platform,
        json!({"tokensPerDay": 1_000_000}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let token = app.service_token("acme", &acme.key).await;
    let resp = chat(&app, &token, json!({"message": "hello"})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let answer: Value = resp.json().await.unwrap();
    let used = answer["usage"]["totalTokens"].as_u64().unwrap();
    assert!(used > 0);

    // acme's own admin may lower it (to what is already used), not raise or remove it.
    let admin = app.admin_token("acme");
    let resp = set_settings(&app, &acme.id, &admin, json!({"tokensPerDay": used})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    for settings in [
        json!({"tokensPerDay": used + 1}),
        json!({"tokensPerDay": null}),
    ] {
        let resp = set_settings(&app, &acme.id, &admin, settings.clone()).await;
        let problem = assert_problem(resp, StatusCode::FORBIDDEN, "forbidden").await;
        assert_eq!(problem["field"], "settings.tokensPerDay", "{settings}");
    }

    for _ in 0..2 {
        let resp = chat(&app, &token, json!({"message": "hello"})).await;
        assert!(header(&resp, "retry-after").is_some());
        assert_eq!(
            header(&resp, "x-ratelimit-limit-tokens"),
            Some(used.to_string())
        );
        assert_eq!(
            header(&resp, "x-ratelimit-remaining-tokens").as_deref(),
            Some("0")
        );
        assert_problem(resp, StatusCode::TOO_MANY_REQUESTS, "quota_exceeded").await;
    }
    let resp = app
        .request(
            Method::POST,
            "/v1/chat/completions",
            Some(&token),
            Some(json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "insufficient_quota");
    let audited = app.audit("companyId=acme&action=limits.exhausted").await;
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(audited[0]["details"]["limit"], "tokensPerDay");

    // The usage view shows the limit, what is used of it and what remains.
    let view: Value = app
        .get("/admin/usage?companyId=acme", &admin)
        .await
        .json()
        .await
        .unwrap();
    let limits = view["limits"].as_array().unwrap();
    assert_eq!(limits.len(), 1, "{view}");
    assert_eq!(limits[0]["limit"], "tokensPerDay");
    assert_eq!(limits[0]["value"], used);
    assert_eq!(limits[0]["used"], used);
    assert_eq!(limits[0]["remaining"], 0);
    assert!(limits[0]["resetsInSeconds"].as_u64().unwrap() <= 86_400);

    // The platform admin raises it: served again.
    let resp = set_settings(
        &app,
        &acme.id,
        &platform,
        json!({"tokensPerDay": used * 100}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = chat(&app, &token, json!({"message": "hello"})).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn limits_are_validated() {
    let (app, sim) = setup(&[]).await;
    let acme = company(&app, &sim, "acme", "gpt-4o-acme").await;
    for bad in [
        json!({"tokensPerMinute": 0}),
        json!({"requestsPerMinute": -1}),
        json!({"tokensPerDay": "100"}),
        json!({"tokensPerMonth": 1.5}),
        json!({"tokensPerMonth": 1_000_000_000_001u64}),
    ] {
        let resp = set_settings(&app, &acme.id, &app.platform_token(), bad.clone()).await;
        let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert!(
            problem["field"].as_str().unwrap().starts_with("settings."),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn a_company_over_its_tokens_per_minute_gets_429_and_another_is_unaffected() {
    let (app, sim) = setup(&[]).await;
    let acme = company(&app, &sim, "acme", "gpt-4o-acme").await;
    let beta = company(&app, &sim, "beta", "gpt-4o-beta").await;
    let platform = app.platform_token();
    let both = json!({"tokensPerMinute": 1_000_000});
    for id in [&acme.id, &beta.id] {
        assert_eq!(
            set_settings(&app, id, &platform, both.clone())
                .await
                .status(),
            StatusCode::OK
        );
    }
    let acme_token = app.service_token("acme", &acme.key).await;
    let beta_token = app.service_token("beta", &beta.key).await;
    early_in_a_minute().await;
    let resp = chat(&app, &acme_token, json!({"message": "hello"})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let used = resp.json::<Value>().await.unwrap()["usage"]["totalTokens"]
        .as_u64()
        .unwrap();
    // One token of room left this minute: the next turn's prompt does not fit.
    let resp = set_settings(
        &app,
        &acme.id,
        &platform,
        json!({"tokensPerMinute": used + 1}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = chat(&app, &acme_token, json!({"message": "hello again"})).await;
    assert_eq!(
        header(&resp, "x-ratelimit-limit-tokens"),
        Some((used + 1).to_string())
    );
    assert_eq!(
        header(&resp, "x-ratelimit-remaining-tokens").as_deref(),
        Some("1")
    );
    let retry: u64 = header(&resp, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    let problem = assert_problem(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("tokensPerMinute"),
        "{problem}"
    );
    // beta's window is its own.
    for _ in 0..3 {
        let resp = chat(&app, &beta_token, json!({"message": "hello"})).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let remaining: u64 = header(&resp, "x-ratelimit-remaining-tokens")
            .unwrap()
            .parse()
            .unwrap();
        assert!(remaining > 999_000);
    }
}

#[tokio::test]
async fn failures_after_admission_and_answers_that_admit_nothing_carry_the_headers() {
    let (app, sim) = setup(&[("SOPHIA_UPSTREAM_RETRY_BUDGET_MS", "0")]).await;
    let acme = company(&app, &sim, "acme", "gpt-4o-acme").await;
    let beta = company(&app, &sim, "beta", "gpt-4o-beta").await;
    let resp = set_settings(
        &app,
        &acme.id,
        &app.platform_token(),
        json!({"requestsPerMinute": 1000, "tokensPerDay": 1_000_000}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let token = app.service_token("acme", &acme.key).await;
    early_in_a_minute().await;
    // The upstream fails after the turn was admitted: 502, and the headers still say where
    // the company stands (the failed turn counted as a request).
    for (path, body) in [
        ("/chat", json!({"message": "hello"})),
        ("/chat", json!({"message": "hello", "stream": true})),
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
        ),
    ] {
        sim.sim.push_fault(sophia::dev::simulator::Fault {
            status: Some(500),
            ..Default::default()
        });
        let resp = app
            .request(Method::POST, path, Some(&token), Some(body.clone()))
            .await;
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY, "{path} {body}");
        assert_eq!(
            header(&resp, "x-ratelimit-limit-requests").as_deref(),
            Some("1000"),
            "{path} {body}"
        );
        assert!(header(&resp, "x-ratelimit-remaining-requests").is_some());
        assert_eq!(
            header(&resp, "x-ratelimit-limit-tokens").as_deref(),
            Some("1000000")
        );
    }
    // /v1/models admits nothing and still answers the headers.
    let resp = app.get("/v1/models", &token).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let remaining: u64 = header(&resp, "x-ratelimit-remaining-requests")
        .unwrap()
        .parse()
        .unwrap();
    assert!(remaining <= 997, "three requests counted: {remaining}");
    // A company without limits gets none.
    let beta_token = app.service_token("beta", &beta.key).await;
    let resp = app.get("/v1/models", &beta_token).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(header(&resp, "x-ratelimit-limit-requests").is_none());
}

#[tokio::test]
async fn a_budget_set_mid_day_counts_what_the_company_already_used() {
    let (app, sim) = setup(&[]).await;
    let acme = company(&app, &sim, "acme", "gpt-4o-acme").await;
    let token = app.service_token("acme", &acme.key).await;
    let mut used = 0;
    for _ in 0..3 {
        let resp = chat(&app, &token, json!({"message": "hello there"})).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(
            header(&resp, "x-ratelimit-limit-tokens").is_none(),
            "no limit yet"
        );
        let body: Value = resp.json().await.unwrap();
        used += body["usage"]["totalTokens"].as_u64().unwrap();
    }
    // A day budget just above what was used: the day's earlier turns count against it.
    let resp = set_settings(
        &app,
        &acme.id,
        &app.platform_token(),
        json!({"tokensPerDay": used + 1}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let usage: Value = app
        .get("/admin/usage?companyId=acme", &app.platform_token())
        .await
        .json()
        .await
        .unwrap();
    let day = usage["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["limit"] == "tokensPerDay")
        .unwrap()
        .clone();
    assert_eq!(day["used"].as_u64().unwrap(), used, "{usage}");
    assert_eq!(day["remaining"], 1);
    // One more turn fits (its estimate is reserved against the one token left only after
    // admission); the one after it is refused.
    let mut refused = false;
    for _ in 0..2 {
        let resp = chat(&app, &token, json!({"message": "hello there"})).await;
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_problem(resp, StatusCode::TOO_MANY_REQUESTS, "quota_exceeded").await;
            refused = true;
            break;
        }
    }
    assert!(
        refused,
        "the budget includes the tokens used before it was set"
    );
}
