//! Forged, altered and misdirected tokens are refused, for service and admin tokens alike.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::support::{ADMIN_SECRET, TestApp, assert_problem, spawn_app, spawn_app_with};

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

fn parts(token: &str) -> (Value, Value, String) {
    let mut it = token.split('.');
    let h = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap()).unwrap();
    let p = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap()).unwrap();
    (h, p, it.next().unwrap().to_owned())
}

/// The service's real signing key, read from its secret store (what an attacker does not
/// have; used here to show the checks beyond the signature hold).
async fn signing_key(app: &TestApp) -> EncodingKey {
    let name = sophia::secrets::SecretName::parse(sophia::auth::service_token::SIGNING_KEY_SECRET)
        .unwrap();
    let pem = app.state.secrets.get_latest(&name).await.unwrap().unwrap();
    EncodingKey::from_ec_pem(pem.expose_secret().as_bytes()).unwrap()
}

async fn rejected(app: &TestApp, token: &str, what: &str) {
    let resp = app.get("/agents/me", token).await;
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "{what} was accepted"
    );
    assert_problem(resp, StatusCode::UNAUTHORIZED, "invalid_token").await;
}

#[tokio::test]
async fn service_token_attacks_are_rejected() {
    let app = spawn_app().await;
    let created = app.create_instance("acme").await;
    app.create_instance("beta").await;
    let good = app.service_token("acme", &created.key).await;
    assert_eq!(app.get("/agents/me", &good).await.status(), StatusCode::OK);
    let (header, payload, _sig) = parts(&good);
    let kid = header["kid"].as_str().unwrap().to_owned();

    // alg: none, with and without a signature part.
    let none = json!({"alg": "none", "typ": "at+jwt", "kid": kid});
    rejected(
        &app,
        &format!("{}.{}.", b64(&none), b64(&payload)),
        "alg none",
    )
    .await;
    rejected(
        &app,
        &format!("{}.{}", b64(&none), b64(&payload)),
        "alg none without signature",
    )
    .await;

    // HS256 keyed with the public key (the classic algorithm-confusion attack), both as the
    // JWK text and as raw coordinates.
    let jwks: Value = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let public = jwks["keys"][0].clone();
    for secret in [
        public.to_string(),
        format!(
            "{}{}",
            public["x"].as_str().unwrap(),
            public["y"].as_str().unwrap()
        ),
    ] {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(kid.clone());
        h.typ = Some("at+jwt".into());
        let forged =
            jsonwebtoken::encode(&h, &payload, &EncodingKey::from_secret(secret.as_bytes()))
                .unwrap();
        rejected(&app, &forged, "HS256 with the public key").await;
    }

    // Tampered payload (another company), original signature.
    let mut other = payload.clone();
    other["companyId"] = json!("beta");
    other["scope"] = json!("agent:invoke company:beta");
    let tampered = format!(
        "{}.{}.{}",
        good.split('.').next().unwrap(),
        b64(&other),
        good.split('.').nth(2).unwrap()
    );
    rejected(&app, &tampered, "tampered payload").await;

    // Properly signed with the real key, but wrong in other ways.
    let key = signing_key(&app).await;
    let sign = |claims: &Value, kid: &str, typ: &str| {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(kid.to_owned());
        h.typ = Some(typ.to_owned());
        jsonwebtoken::encode(&h, claims, &key).unwrap()
    };
    assert_eq!(
        app.get("/agents/me", &sign(&payload, &kid, "at+jwt"))
            .await
            .status(),
        StatusCode::OK,
        "control"
    );
    let now = chrono::Utc::now().timestamp();
    let with = |k: &str, v: Value| {
        let mut p = payload.clone();
        p[k] = v;
        p
    };
    rejected(
        &app,
        &sign(&with("exp", json!(now - 3600)), &kid, "at+jwt"),
        "expired",
    )
    .await;
    rejected(
        &app,
        &sign(&with("nbf", json!(now + 3600)), &kid, "at+jwt"),
        "not yet valid",
    )
    .await;
    rejected(
        &app,
        &sign(&with("aud", json!("someone-else")), &kid, "at+jwt"),
        "wrong aud",
    )
    .await;
    rejected(
        &app,
        &sign(&with("iss", json!("https://evil.example")), &kid, "at+jwt"),
        "wrong iss",
    )
    .await;
    rejected(
        &app,
        &sign(&with("scope", json!("company:acme")), &kid, "at+jwt"),
        "no agent:invoke scope",
    )
    .await;
    rejected(
        &app,
        &sign(
            &with("scope", json!("agent:invoke company:beta")),
            &kid,
            "at+jwt",
        ),
        "scope for another company",
    )
    .await;
    rejected(
        &app,
        &sign(&with("keyVersion", json!(0)), &kid, "at+jwt"),
        "old key version",
    )
    .await;
    rejected(
        &app,
        &sign(
            &with("sub", json!(uuid::Uuid::new_v4().to_string())),
            &kid,
            "at+jwt",
        ),
        "unknown instance",
    )
    .await;
    let mut no_exp = payload.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    rejected(&app, &sign(&no_exp, &kid, "at+jwt"), "no exp").await;
    rejected(
        &app,
        &sign(&payload, "unknown-kid", "at+jwt"),
        "unknown kid",
    )
    .await;
    rejected(&app, &sign(&payload, &kid, "JWT"), "not typ at+jwt").await;

    // Signed by a key the service does not know, claiming the real kid.
    let stranger = sophia::auth::service_token::generate_signing_key().unwrap();
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid.clone());
    h.typ = Some("at+jwt".into());
    let foreign = jsonwebtoken::encode(
        &h,
        &payload,
        &EncodingKey::from_ec_pem(stranger.expose_secret().as_bytes()).unwrap(),
    )
    .unwrap();
    rejected(&app, &foreign, "foreign key with the real kid").await;

    // Garbage.
    for junk in ["", "a.b.c", "....", &"x".repeat(10_000)] {
        let resp = app
            .client
            .get(app.url("/agents/me"))
            .header("authorization", format!("Bearer {junk}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{junk:.20}");
    }
    let resp = app
        .client
        .get(app.url("/agents/me"))
        .header("authorization", format!("Basic {good}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

fn admin_token(secret: &[u8], claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

#[tokio::test]
async fn admin_token_attacks_are_rejected() {
    let app = spawn_app_with(&[
        ("SOPHIA_ADMIN_ISSUER", "https://idp.test"),
        ("SOPHIA_ADMIN_AUDIENCE", "sophia-admin"),
    ])
    .await;
    let now = chrono::Utc::now().timestamp();
    let good_claims = json!({"sub": "root", "roles": ["PLATFORM_ADMIN"], "exp": now + 600, "iss": "https://idp.test", "aud": "sophia-admin"});
    let good = admin_token(ADMIN_SECRET.as_bytes(), good_claims.clone());
    assert_eq!(
        app.get("/admin/agent-instances", &good).await.status(),
        StatusCode::OK,
        "control"
    );
    // The CLI mints with the configured issuer and audience.
    assert_eq!(
        app.get("/admin/agent-instances", &app.platform_token())
            .await
            .status(),
        StatusCode::OK
    );

    let with = |k: &str, v: Value| {
        let mut c = good_claims.clone();
        c[k] = v;
        c
    };
    let cases = vec![
        (
            "expired",
            admin_token(ADMIN_SECRET.as_bytes(), with("exp", json!(now - 3600))),
        ),
        (
            "wrong aud",
            admin_token(ADMIN_SECRET.as_bytes(), with("aud", json!("other"))),
        ),
        (
            "wrong iss",
            admin_token(ADMIN_SECRET.as_bytes(), with("iss", json!("https://evil"))),
        ),
        (
            "wrong secret",
            admin_token(
                b"another-secret-another-secret-another-secret",
                good_claims.clone(),
            ),
        ),
        ("no exp", {
            let mut c = good_claims.clone();
            c.as_object_mut().unwrap().remove("exp");
            admin_token(ADMIN_SECRET.as_bytes(), c)
        }),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&good_claims)
            ),
        ),
        ("tampered", {
            let (h, _, s) = parts(&admin_token(
                ADMIN_SECRET.as_bytes(),
                with("roles", json!(["READER"])),
            ));
            format!("{}.{}.{}", b64(&h), b64(&good_claims), s)
        }),
        (
            "HS512",
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS512),
                &good_claims,
                &EncodingKey::from_secret(ADMIN_SECRET.as_bytes()),
            )
            .unwrap(),
        ),
        ("RS256 without JWKS", {
            let pem = std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/rsa-test-key.pem"
            ))
            .unwrap();
            let mut h = Header::new(Algorithm::RS256);
            h.kid = Some("k1".into());
            jsonwebtoken::encode(&h, &good_claims, &EncodingKey::from_rsa_pem(&pem).unwrap())
                .unwrap()
        }),
    ];
    for (what, token) in cases {
        let resp = app.get("/admin/agent-instances", &token).await;
        assert_eq!(
            resp.status(),
            StatusCode::UNAUTHORIZED,
            "{what} was accepted"
        );
        assert_problem(resp, StatusCode::UNAUTHORIZED, "invalid_token").await;
    }
}

#[tokio::test]
async fn custom_role_and_company_claims() {
    let app = spawn_app_with(&[
        ("SOPHIA_ADMIN_ROLE_CLAIM", "groups"),
        ("SOPHIA_ADMIN_COMPANY_CLAIM", "tenant"),
    ])
    .await;
    app.create_instance("acme").await;
    let exp = chrono::Utc::now().timestamp() + 600;
    let admin = admin_token(
        ADMIN_SECRET.as_bytes(),
        json!({"sub": "u", "groups": ["ADMIN"], "tenant": "acme", "exp": exp}),
    );
    let body: Value = app
        .get("/admin/agent-instances", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
    // With a configured role claim, the default `roles` claim is not read.
    let ignored = admin_token(
        ADMIN_SECRET.as_bytes(),
        json!({"sub": "u", "roles": ["PLATFORM_ADMIN"], "exp": exp}),
    );
    assert_eq!(
        app.get("/admin/agent-instances", &ignored).await.status(),
        StatusCode::FORBIDDEN
    );
    // A single `role` string works with the defaults.
    let defaults = spawn_app().await;
    let single = admin_token(
        ADMIN_SECRET.as_bytes(),
        json!({"sub": "u", "role": "PLATFORM_ADMIN", "exp": exp}),
    );
    assert_eq!(
        defaults
            .get("/admin/agent-instances", &single)
            .await
            .status(),
        StatusCode::OK
    );
}
