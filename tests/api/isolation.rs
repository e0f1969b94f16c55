//! The cross-company matrix: company A's credentials against every company-B resource, on
//! the embedded store and on Cosmos DB (the emulator rig), whose partitions the emulator does
//! not enforce.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{ADMIN_SECRET, TestApp, assert_problem, spawn_app, spawn_cosmos_app};

/// Every admin route, for instance `id` (of company `company`).
fn admin_routes(id: &str, company: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::GET, format!("/admin/agent-instances/{id}"), None),
        (
            Method::PATCH,
            format!("/admin/agent-instances/{id}"),
            Some(json!({"model": "gpt-4o-mini"})),
        ),
        (
            Method::PATCH,
            format!("/admin/agent-instances/{id}"),
            Some(
                json!({"deployments": [{"name": "x", "endpoint": "https://a.openai.azure.com",
                                          "deployment": "gpt-4o"}],
                        "credentials": {"deploymentKeys": {"x": "k"}}}),
            ),
        ),
        (
            Method::POST,
            format!("/admin/agent-instances/{id}/rotate-key"),
            Some(json!({"gracePeriodSeconds": 3600})),
        ),
        (
            Method::POST,
            format!("/admin/agent-instances/{id}/revoke-previous-key"),
            None,
        ),
        (Method::DELETE, format!("/admin/agent-instances/{id}"), None),
        (
            Method::POST,
            format!("/admin/agent-instances/{id}/rotate-key"),
            None,
        ),
        (
            Method::GET,
            format!("/admin/agent-instances?companyId={company}"),
            None,
        ),
        (
            Method::GET,
            format!("/admin/audit-logs?companyId={company}"),
            None,
        ),
        (
            Method::GET,
            format!("/admin/audit-logs?companyId={company}&instanceId={id}"),
            None,
        ),
        (
            Method::POST,
            "/admin/agent-instances".to_owned(),
            Some(json!({"companyId": company, "agentType": "SOPHIA"})),
        ),
    ]
}

async fn unchanged(app: &TestApp, id: &str, etag: &Value) {
    let now: Value = app
        .get(
            &format!("/admin/agent-instances/{id}"),
            &app.platform_token(),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(&now["etag"], etag, "B's instance was modified");
    assert_eq!(now["status"], "ACTIVE");
}

async fn company_admin_cannot_touch_another_company(app: TestApp) {
    app.create_instance("acme").await;
    let b = app.create_instance("beta").await;
    let a_admin = app.admin_token("acme");
    for (method, path, body) in admin_routes(&b.id, "beta") {
        let resp = app
            .request(method.clone(), &path, Some(&a_admin), body)
            .await;
        let status = resp.status();
        assert!(
            status == StatusCode::NOT_FOUND || status == StatusCode::FORBIDDEN,
            "{method} {path}: {status}"
        );
        let text = resp.text().await.unwrap();
        assert!(
            !text.contains("\"companyId\":\"beta\"") && !text.contains("accessKeyLast4"),
            "{method} {path} leaked B: {text}"
        );
    }
    unchanged(&app, &b.id, &b.body["etag"]).await;
    // Instance routes answer 404 exactly (existence is not revealed).
    let resp = app
        .get(&format!("/admin/agent-instances/{}", b.id), &a_admin)
        .await;
    assert_problem(resp, StatusCode::NOT_FOUND, "not_found").await;
    // A's own listing does not include B.
    let list: Value = app
        .get("/admin/agent-instances", &a_admin)
        .await
        .json()
        .await
        .unwrap();
    let companies: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["companyId"].as_str().unwrap())
        .collect();
    assert_eq!(companies, ["acme"]);
}

async fn platform_admin_may_touch_every_company(app: TestApp) {
    let b = app.create_instance("beta").await;
    let platform = app.platform_token();
    for (method, path, body) in admin_routes(&b.id, "beta") {
        let resp = app
            .request(method.clone(), &path, Some(&platform), body)
            .await;
        let status = resp.status();
        // The final create conflicts only because beta already has a live instance... unless
        // the DELETE above disabled it, in which case it is created.
        assert!(status.is_success(), "{method} {path}: {status}");
    }
}

async fn no_role_wrong_role_and_no_token(app: TestApp) {
    let b = app.create_instance("beta").await;
    let secret = jsonwebtoken::EncodingKey::from_secret(ADMIN_SECRET.as_bytes());
    let exp = chrono::Utc::now().timestamp() + 600;
    let mint = |claims: Value| {
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &secret).unwrap()
    };
    let no_role = mint(json!({"sub": "u1", "exp": exp, "companyId": "beta"}));
    let wrong_role =
        mint(json!({"sub": "u1", "exp": exp, "roles": ["READER", "USER"], "companyId": "beta"}));
    let admin_without_company = mint(json!({"sub": "u1", "exp": exp, "roles": ["ADMIN"]}));
    for (method, path, body) in admin_routes(&b.id, "beta") {
        for token in [&no_role, &wrong_role, &admin_without_company] {
            let resp = app
                .request(method.clone(), &path, Some(token), body.clone())
                .await;
            assert_problem(resp, StatusCode::FORBIDDEN, "forbidden").await;
        }
        let resp = app.request(method.clone(), &path, None, body.clone()).await;
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        assert_problem(resp, StatusCode::UNAUTHORIZED, "unauthenticated").await;
        let resp = app
            .request(method.clone(), &path, Some("not-a-jwt"), body.clone())
            .await;
        assert_problem(resp, StatusCode::UNAUTHORIZED, "invalid_token").await;
    }
    unchanged(&app, &b.id, &b.body["etag"]).await;
}

async fn service_tokens_are_not_admin_tokens_and_stay_in_their_company(app: TestApp) {
    let a = app.create_instance("acme").await;
    let b = app.create_instance("beta").await;
    let a_service = app.service_token("acme", &a.key).await;
    for (method, path, body) in admin_routes(&b.id, "beta") {
        let resp = app
            .request(method.clone(), &path, Some(&a_service), body)
            .await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
    }
    // A's key never yields a token for B.
    assert_problem(
        app.exchange("beta", &a.key).await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    )
    .await;
    let me: Value = app
        .get("/agents/me", &a_service)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["companyId"], "acme");
    unchanged(&app, &b.id, &b.body["etag"]).await;
}

async fn company_admin_manages_its_own_company(app: TestApp) {
    let a_admin = app.admin_token("acme");
    let resp = app
        .request(
            Method::POST,
            "/admin/agent-instances",
            Some(&a_admin),
            Some(json!({"companyId": "acme", "agentType": "SOPHIA", "azureProjectId": "p"})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let body: Value = resp.json().await.unwrap();
    let id = body["id"].as_str().unwrap();
    for (method, path, body) in admin_routes(id, "acme") {
        let resp = app
            .request(method.clone(), &path, Some(&a_admin), body)
            .await;
        assert!(
            resp.status().is_success(),
            "{method} {path}: {}",
            resp.status()
        );
    }
}

/// One test per case and store backend.
macro_rules! matrix {
    ($($case:ident),*) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::spawn_app().await).await;
                }
            )*
        }
        mod cosmos {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::spawn_cosmos_app().await).await;
                }
            )*
        }
    };
}

matrix!(
    company_admin_cannot_touch_another_company,
    platform_admin_may_touch_every_company,
    no_role_wrong_role_and_no_token,
    service_tokens_are_not_admin_tokens_and_stay_in_their_company,
    company_admin_manages_its_own_company
);
