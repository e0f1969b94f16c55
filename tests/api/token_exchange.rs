//! `POST /agents/auth/token` in both forms, the no-oracle 401, rate limits, `/agents/me`.

use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{assert_problem, spawn_app, spawn_app_with};

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn json_exchange_gives_an_rfc6749_answer() {
    let app = spawn_app().await;
    let created = app.create_instance("acme").await;
    let resp = app.exchange("acme", &created.key).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(resp.headers()["pragma"], "no-cache");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["scope"], "agent:invoke company:acme");
    let token = body["access_token"].as_str().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "at+jwt");
    assert!(header["kid"].is_string());
    let c = claims(token);
    assert_eq!(c["sub"], created.id);
    assert_eq!(c["companyId"], "acme");
    assert_eq!(c["agentType"], "SOPHIA");
    assert_eq!(c["keyVersion"], 1);
    assert_eq!(c["iss"], "sophia");
    assert_eq!(c["aud"], "sophia-agents");
    for claim in ["iat", "nbf", "exp", "jti"] {
        assert!(!c[claim].is_null(), "{claim}");
    }
    // lastUsedAt is recorded.
    let detail: Value = app
        .get(
            &format!("/admin/agent-instances/{}", created.id),
            &app.platform_token(),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(detail["lastUsedAt"].is_string());
}

#[tokio::test]
async fn agent_type_defaults_to_sophia_and_others_are_refused() {
    let app = spawn_app().await;
    let created = app.create_instance("acme").await;
    let resp = app
        .request(
            Method::POST,
            "/agents/auth/token",
            None,
            Some(json!({"companyId": "acme", "agentAccessKey": created.key})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = app
        .request(
            Method::POST,
            "/agents/auth/token",
            None,
            Some(json!({"companyId": "acme", "agentType": "OTHER", "agentAccessKey": created.key})),
        )
        .await;
    assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
}

#[tokio::test]
async fn oauth2_client_credentials_form_and_basic_auth() {
    let app = spawn_app().await;
    let created = app.create_instance("acme").await;
    let resp = app
        .client
        .post(app.url("/agents/auth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "acme"),
            ("client_secret", created.key.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(
        claims(body["access_token"].as_str().unwrap())["companyId"],
        "acme"
    );

    // client_secret_basic (RFC 6749 §2.3.1).
    let resp = app
        .client
        .post(app.url("/agents/auth/token"))
        .basic_auth("acme", Some(&created.key))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // Wrong grant type, missing secret.
    let resp = app
        .client
        .post(app.url("/agents/auth/token"))
        .form(&[
            ("grant_type", "password"),
            ("client_id", "acme"),
            ("client_secret", created.key.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    let resp = app
        .client
        .post(app.url("/agents/auth/token"))
        .form(&[("grant_type", "client_credentials"), ("client_id", "acme")])
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    let resp = app
        .client
        .post(app.url("/agents/auth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "acme"),
            ("client_secret", "sph_wrong"),
        ])
        .send()
        .await
        .unwrap();
    let body = assert_problem(resp, StatusCode::UNAUTHORIZED, "invalid_client").await;
    assert_eq!(
        body["error"], "invalid_client",
        "RFC 6749 §5.2 member for OAuth libraries"
    );
}

#[tokio::test]
async fn every_failure_cause_gives_the_same_401() {
    let app = spawn_app().await;
    let live = app.create_instance("acme").await;
    let disabled = app.create_instance("gone").await;
    app.request(
        Method::DELETE,
        &format!("/admin/agent-instances/{}", disabled.id),
        Some(&app.platform_token()),
        None,
    )
    .await;
    let other = app.create_instance("other").await;
    let cases = [
        ("unknown company", "nobody", live.key.clone()),
        ("wrong key", "acme", other.key.clone()),
        ("malformed key", "acme", "sph_short".to_owned()),
        ("empty key", "acme", String::new()),
        ("disabled instance", "gone", disabled.key.clone()),
        ("malformed company", "a b/c", live.key.clone()),
    ];
    let mut bodies = Vec::new();
    for (case, company, key) in &cases {
        let resp = app.exchange(company, key).await;
        let mut body = assert_problem(resp, StatusCode::UNAUTHORIZED, "invalid_client").await;
        body.as_object_mut().unwrap().remove("requestId");
        bodies.push((case, body));
    }
    for (case, body) in &bodies[1..] {
        assert_eq!(body, &bodies[0].1, "{case} differs from {}", bodies[0].0);
    }
}

#[tokio::test]
async fn rate_limit_per_address_gives_429_with_retry_after() {
    let app = spawn_app_with(&[("SOPHIA_TOKEN_RATE_LIMIT_PER_ADDRESS", "3")]).await;
    let created = app.create_instance("acme").await;
    for _ in 0..3 {
        assert_eq!(
            app.exchange("acme", "sph_wrong").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let resp = app.exchange("acme", &created.key).await;
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_problem(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
}

/// A wrong-key flood naming a company from many addresses must not lock its real client
/// out: the company-wide count only slows checks down (one at a time), never refuses; a
/// source that keeps failing is refused for that company, other sources are not.
#[tokio::test]
async fn strangers_cannot_lock_a_company_out() {
    let app = spawn_app_with(&[
        ("SOPHIA_TOKEN_RATE_LIMIT_PER_COMPANY", "2"),
        ("SOPHIA_TOKEN_FAILURES_PER_SOURCE", "3"),
        ("SOPHIA_TRUST_FORWARDED", "true"),
    ])
    .await;
    let created = app.create_instance("acme").await;
    let attempt = |from: String, key: String| {
        let app = &app;
        async move {
            app.client
                .post(app.url("/agents/auth/token"))
                .header("x-forwarded-for", from)
                .json(&json!({"companyId": "acme", "agentType": "SOPHIA", "agentAccessKey": key}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // 40 wrong keys from 20 addresses, 8 at a time: far past the company's 2 a minute.
    let mut statuses = Vec::new();
    for round in 0..5 {
        let batch = (0..8).map(|i| {
            let n = round * 8 + i;
            attempt(format!("203.0.113.{}", n % 20), "sph_nope".into())
        });
        statuses.extend(futures_util::future::join_all(batch).await);
    }
    assert!(
        statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED),
        "each source stays under its own limit: {statuses:?}"
    );
    // The real client, from its own address, still gets its token.
    assert_eq!(
        attempt("198.51.100.7".into(), created.key.clone()).await,
        StatusCode::OK
    );
    // A source that keeps failing is refused for this company...
    for _ in 0..3 {
        assert_eq!(
            attempt("192.0.2.66".into(), "sph_nope".into()).await,
            StatusCode::UNAUTHORIZED
        );
    }
    let resp = app
        .client
        .post(app.url("/agents/auth/token"))
        .header("x-forwarded-for", "192.0.2.66")
        .json(&json!({"companyId": "acme", "agentType": "SOPHIA", "agentAccessKey": "sph_nope"}))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().contains_key("retry-after"));
    assert_problem(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // ...but not for another company, and the real client is still fine.
    let beta = app.create_instance("beta").await;
    let resp = app
        .client
        .post(app.url("/agents/auth/token"))
        .header("x-forwarded-for", "192.0.2.66")
        .json(&json!({"companyId": "beta", "agentType": "SOPHIA", "agentAccessKey": beta.key}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        attempt("198.51.100.7".into(), created.key.clone()).await,
        StatusCode::OK
    );
}

/// With forwarding trusted, a client cannot pick its own address: the one the trusted proxy
/// appended (the right-most entry across every header line) is what counts.
#[tokio::test]
async fn spoofed_forwarded_lines_do_not_buy_fresh_buckets() {
    let app = spawn_app_with(&[
        ("SOPHIA_TOKEN_RATE_LIMIT_PER_ADDRESS", "2"),
        ("SOPHIA_TRUST_FORWARDED", "true"),
    ])
    .await;
    let send = |lines: Vec<String>| {
        let app = &app;
        async move {
            let mut req = app.client.post(app.url("/agents/auth/token"));
            for line in lines {
                req = req.header("x-forwarded-for", line);
            }
            req.json(&json!({"companyId": "acme", "agentAccessKey": "sph_nope"}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // The client writes a fresh address in its own first line (and in front of the real one)
    // every time; the front end appends the real address 198.51.100.9 in a line of its own.
    for i in 0..2 {
        let status = send(vec![
            format!("10.0.0.{i}"),
            format!("203.0.113.{i}, 198.51.100.9"),
        ])
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        send(vec!["10.9.9.9".into(), "203.0.113.77, 198.51.100.9".into()]).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // A different real address has its own bucket.
    assert_eq!(
        send(vec!["10.0.0.1".into(), "198.51.100.10".into()]).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn forwarded_addresses_are_ignored_unless_trusted() {
    let app = spawn_app_with(&[("SOPHIA_TOKEN_RATE_LIMIT_PER_ADDRESS", "2")]).await;
    for i in 0..2 {
        let resp = app
            .client
            .post(app.url("/agents/auth/token"))
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .json(&json!({"companyId": "acme", "agentAccessKey": "sph_nope"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    // A spoofed header does not buy a fresh bucket.
    let resp = app
        .client
        .post(app.url("/agents/auth/token"))
        .header("x-forwarded-for", "198.51.100.77")
        .json(&json!({"companyId": "acme", "agentAccessKey": "sph_nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn agents_me_describes_the_token() {
    let app = spawn_app().await;
    let created = app.create_instance("acme").await;
    let token = app.service_token("acme", &created.key).await;
    let resp = app.get("/agents/me", &token).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let me: Value = resp.json().await.unwrap();
    assert_eq!(me["companyId"], "acme");
    assert_eq!(me["instanceId"], created.id);
    assert_eq!(me["agentType"], "SOPHIA");
    assert_eq!(me["scope"], "agent:invoke company:acme");
    let expires = chrono::DateTime::parse_from_rfc3339(me["expiresAt"].as_str().unwrap()).unwrap();
    let left = expires.timestamp() - chrono::Utc::now().timestamp();
    assert!((3500..=3601).contains(&left), "{left}");
    // Without a token: 401 with a Bearer challenge.
    let resp = app.request(Method::GET, "/agents/me", None, None).await;
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_problem(resp, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    // An admin token is not a service token.
    assert_problem(
        app.get("/agents/me", &app.platform_token()).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
}

#[tokio::test]
async fn service_tokens_verify_against_the_published_jwks() {
    let app = spawn_app().await;
    let created = app.create_instance("acme").await;
    let token = app.service_token("acme", &created.key).await;
    let jwks: Value = app
        .request(Method::GET, "/.well-known/jwks.json", None, None)
        .await
        .json()
        .await
        .unwrap();
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).unwrap();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    let jwk = set
        .find(header.kid.as_deref().unwrap())
        .expect("kid published");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["sophia-agents"]);
    validation.set_issuer(&["sophia"]);
    let data = jsonwebtoken::decode::<Value>(&token, &key, &validation).unwrap();
    assert_eq!(data.claims["companyId"], "acme");

    let oidc: Value = app
        .request(Method::GET, "/.well-known/openid-configuration", None, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(oidc["issuer"], "sophia");
    assert_eq!(
        oidc["jwks_uri"],
        format!("http://127.0.0.1:{}/.well-known/jwks.json", app.port)
    );
    assert_eq!(
        oidc["token_endpoint"],
        format!("http://127.0.0.1:{}/agents/auth/token", app.port)
    );
    assert_eq!(oidc["grant_types_supported"], json!(["client_credentials"]));
}
