//! Bad input gets a clear 4xx problem+json: never a 500, never a panic. Request ids.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{assert_problem, spawn_app, spawn_app_with};

#[tokio::test]
async fn malformed_bodies_are_400() {
    let app = spawn_app().await;
    let token = app.platform_token();
    for body in [
        "{",
        "[]",
        "null",
        "\"x\"",
        "{\"companyId\": 5, \"agentType\": \"SOPHIA\"}",
        "{\"companyId\":\"a\"} trailing",
    ] {
        let resp = app
            .client
            .post(app.url("/admin/agent-instances"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
    }
    let resp = app
        .request(
            Method::POST,
            "/admin/agent-instances",
            Some(&token),
            Some(json!({"companyId": "acme", "agentType": "ROBOT"})),
        )
        .await;
    let body = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(body["field"], "agentType");
    let resp = app
        .request(
            Method::POST,
            "/admin/agent-instances",
            Some(&token),
            Some(json!({"companyId": "a/b", "agentType": "SOPHIA"})),
        )
        .await;
    let body = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(body["field"], "companyId");
    let resp = app
        .request(
            Method::POST,
            "/admin/agent-instances",
            Some(&token),
            Some(
                json!({"companyId": "acme", "agentType": "SOPHIA", "settings": {"temperature": 9}}),
            ),
        )
        .await;
    let body = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(body["field"], "settings.temperature");
    let resp = app
        .request(
            Method::POST,
            "/admin/agent-instances",
            Some(&token),
            Some(json!({"companyId": "acme", "agentType": "SOPHIA", "credentials": {"password": "x"}})),
        )
        .await;
    let body = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert!(!body.to_string().contains("\"x\""));
    // Nothing was created by any of these.
    let list: serde_json::Value = app
        .get("/admin/agent-instances", &token)
        .await
        .json()
        .await
        .unwrap();
    assert!(list["items"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let app = spawn_app().await;
    let token = app.platform_token();
    for ct in [
        None,
        Some("text/plain"),
        Some("application/xml"),
        Some("multipart/form-data"),
    ] {
        let mut req = app
            .client
            .post(app.url("/admin/agent-instances"))
            .bearer_auth(&token)
            .body("{\"companyId\":\"acme\",\"agentType\":\"SOPHIA\"}");
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        assert_problem(
            req.send().await.unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        )
        .await;
    }
    let resp = app
        .client
        .post(app.url("/agents/auth/token"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_problem(
        resp,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    // A charset parameter is fine.
    let resp = app
        .client
        .post(app.url("/admin/agent-instances"))
        .bearer_auth(&token)
        .header("content-type", "application/json; charset=utf-8")
        .body("{\"companyId\":\"acme\",\"agentType\":\"SOPHIA\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn oversize_bodies_are_413() {
    let app = spawn_app_with(&[("SOPHIA_MAX_BODY_BYTES", "4096")]).await;
    let big = json!({"companyId": "acme", "agentType": "SOPHIA", "settings": {"systemPrompt": "x".repeat(10_000)}});
    let resp = app
        .request(
            Method::POST,
            "/admin/agent-instances",
            Some(&app.platform_token()),
            Some(big),
        )
        .await;
    assert_problem(resp, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    let resp = app
        .client
        .post(app.url("/agents/auth/token"))
        .json(&json!({"companyId": "acme", "agentAccessKey": "k".repeat(10_000)}))
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
}

#[tokio::test]
async fn bad_path_ids_are_400_and_unknown_ids_404() {
    let app = spawn_app().await;
    let token = app.platform_token();
    for id in ["not-a-uuid", "1", "%00", "..%2F..%2Fetc", "'%20OR%201=1"] {
        for (method, suffix) in [
            (Method::GET, ""),
            (Method::PATCH, ""),
            (Method::DELETE, ""),
            (Method::POST, "/rotate-key"),
            (Method::POST, "/revoke-previous-key"),
        ] {
            let body = (method == Method::PATCH).then(|| json!({"model": "x"}));
            let resp = app
                .request(
                    method.clone(),
                    &format!("/admin/agent-instances/{id}{suffix}"),
                    Some(&token),
                    body,
                )
                .await;
            let status = resp.status();
            assert!(
                status == StatusCode::BAD_REQUEST || status == StatusCode::NOT_FOUND,
                "{method} {id}: {status}"
            );
            assert_eq!(resp.headers()["content-type"], "application/problem+json");
        }
    }
    let resp = app
        .get(
            &format!("/admin/agent-instances/{}", uuid::Uuid::new_v4()),
            &token,
        )
        .await;
    assert_problem(resp, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let app = spawn_app().await;
    assert_problem(
        app.request(Method::GET, "/nope", None, None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_problem(
        app.request(Method::PUT, "/health", None, None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    assert_problem(
        app.request(Method::DELETE, "/agents/auth/token", None, None)
            .await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
}

#[tokio::test]
async fn if_match_must_be_an_entity_tag() {
    let app = spawn_app().await;
    let created = app.create_instance("acme").await;
    let resp = app
        .client
        .patch(app.url(&format!("/admin/agent-instances/{}", created.id)))
        .bearer_auth(app.platform_token())
        .header("if-match", "\"\"")
        .json(&json!({"model": "x"}))
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    // `*` matches the current version.
    let resp = app
        .client
        .patch(app.url(&format!("/admin/agent-instances/{}", created.id)))
        .bearer_auth(app.platform_token())
        .header("if-match", "*")
        .json(&json!({"model": "gpt-4o-mini"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let app = spawn_app().await;
    let resp = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "trace-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-abc-123");
    let resp = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(generated, "bad id with spaces");
    assert!(uuid::Uuid::parse_str(&generated).is_ok());
    let resp = app
        .client
        .get(app.url("/nope"))
        .header("x-request-id", "trace-404")
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["requestId"], "trace-404");
}

#[tokio::test]
async fn health_reports_version_and_backends() {
    let app = spawn_app().await;
    let resp = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["backends"]["store"], "sqlite");
    assert_eq!(body["backends"]["secrets"], "local");
    assert_eq!(body["backends"]["adminAuth"]["hs256"], true);
    assert_eq!(body["backends"]["adminAuth"]["jwks"], false);
    assert!(body["backends"]["azureCredential"].is_null());
    assert!(body["tenantCache"]["hits"].is_u64());
    let root = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(root.status(), StatusCode::OK);
}
