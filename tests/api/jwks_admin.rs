//! Admin tokens verified through a JWKS URL served by a test server: RS256 and ES256, key
//! rollover, refresh throttling, and algorithm confusion.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::{Json, Router, extract::State, routing::get};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::DecodePrivateKey;
use reqwest::StatusCode;
use rsa::traits::PublicKeyParts;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tokio::sync::RwLock;

use crate::support::spawn_app_with;

#[derive(Clone, Default)]
struct Idp {
    keys: Arc<RwLock<Value>>,
    fetches: Arc<AtomicUsize>,
}

async fn serve_jwks(State(idp): State<Idp>) -> Json<Value> {
    idp.fetches.fetch_add(1, Ordering::SeqCst);
    Json(idp.keys.read().await.clone())
}

/// Starts the identity provider's JWKS endpoint on a free loopback port.
async fn start_idp() -> (Idp, String) {
    let idp = Idp::default();
    *idp.keys.write().await = json!({"keys": []});
    let router = Router::new()
        .route("/keys", get(serve_jwks))
        .with_state(idp.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://127.0.0.1:{}/keys",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (idp, url)
}

struct SigningKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

fn ec_key(kid: &str) -> SigningKey {
    let pem = sophia::auth::service_token::generate_signing_key().unwrap();
    let secret = p256::SecretKey::from_pkcs8_pem(pem.expose_secret()).unwrap();
    let point = secret.public_key().to_encoded_point(false);
    SigningKey {
        kid: kid.into(),
        alg: Algorithm::ES256,
        encoding: EncodingKey::from_ec_pem(pem.expose_secret().as_bytes()).unwrap(),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                    "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()), "y": URL_SAFE_NO_PAD.encode(point.y().unwrap())}),
    }
}

fn rsa_key(kid: &str) -> SigningKey {
    let pem = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rsa-test-key.pem"
    ))
    .unwrap();
    let private = rsa::RsaPrivateKey::from_pkcs8_pem(&pem).unwrap();
    let public = private.to_public_key();
    SigningKey {
        kid: kid.into(),
        alg: Algorithm::RS256,
        encoding: EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                    "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()), "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be())}),
    }
}

fn token(key: &SigningKey, claims: Value) -> String {
    let mut h = Header::new(key.alg);
    h.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&h, &claims, &key.encoding).unwrap()
}

fn platform_claims() -> Value {
    json!({"sub": "entra-user", "roles": ["PLATFORM_ADMIN"], "exp": chrono::Utc::now().timestamp() + 600,
           "iss": "https://login.test/tenant/v2.0", "aud": "api://sophia"})
}

#[tokio::test]
async fn rs256_and_es256_admin_tokens_with_key_rollover() {
    let (idp, url) = start_idp().await;
    let (k1, k2) = (rsa_key("rsa-1"), ec_key("ec-2"));
    *idp.keys.write().await = json!({"keys": [k1.jwk]});
    let app = spawn_app_with(&[
        ("SOPHIA_ADMIN_JWT_SECRET", ""),
        ("SOPHIA_ADMIN_JWKS_URL", &url),
        ("SOPHIA_ADMIN_JWKS_MIN_REFRESH_SECS", "0"),
        ("SOPHIA_ADMIN_ISSUER", "https://login.test/tenant/v2.0"),
        ("SOPHIA_ADMIN_AUDIENCE", "api://sophia"),
    ])
    .await;

    let t1 = token(&k1, platform_claims());
    assert_eq!(
        app.get("/admin/agent-instances", &t1).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.get("/admin/agent-instances", &t1).await.status(),
        StatusCode::OK
    );
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 1, "keys are cached");

    // Rollover: the IdP now publishes only k2. A k2 token triggers a refetch and passes.
    *idp.keys.write().await = json!({"keys": [k2.jwk]});
    let t2 = token(&k2, platform_claims());
    assert_eq!(
        app.get("/admin/agent-instances", &t2).await.status(),
        StatusCode::OK
    );
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 2);
    // k1 was withdrawn: its tokens fail now.
    assert_eq!(
        app.get("/admin/agent-instances", &t1).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // A company admin from the IdP.
    let mut claims = platform_claims();
    claims["roles"] = json!(["ADMIN"]);
    claims["companyId"] = json!("acme");
    let company = token(&k2, claims);
    assert_eq!(
        app.get("/admin/agent-instances?companyId=acme", &company)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.get("/admin/agent-instances?companyId=beta", &company)
            .await
            .status(),
        StatusCode::FORBIDDEN
    );

    // Wrong audience / issuer from the right key.
    let mut wrong = platform_claims();
    wrong["aud"] = json!("api://other");
    assert_eq!(
        app.get("/admin/agent-instances", &token(&k2, wrong))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let mut wrong = platform_claims();
    wrong["iss"] = json!("https://login.evil/v2.0");
    assert_eq!(
        app.get("/admin/agent-instances", &token(&k2, wrong))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );

    // Algorithm confusion: HS256 keyed with the published public key; RS256 header on an EC key.
    for secret in [k2.jwk.to_string(), k1.jwk["n"].as_str().unwrap().to_owned()] {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("ec-2".into());
        let forged = jsonwebtoken::encode(
            &h,
            &platform_claims(),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            app.get("/admin/agent-instances", &forged).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("ec-2".into());
    let mismatched = jsonwebtoken::encode(&h, &platform_claims(), &k1.encoding).unwrap();
    assert_eq!(
        app.get("/admin/agent-instances", &mismatched)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );

    // Without an HS256 secret the local admin-token path is closed.
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &platform_claims(),
        &EncodingKey::from_secret(b"whatever-whatever-whatever-whatever"),
    )
    .unwrap();
    assert_eq!(
        app.get("/admin/agent-instances", &hs).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn unknown_kids_do_not_hammer_the_idp() {
    let (idp, url) = start_idp().await;
    let k1 = ec_key("ec-1");
    *idp.keys.write().await = json!({"keys": [k1.jwk]});
    let app = spawn_app_with(&[
        ("SOPHIA_ADMIN_JWKS_URL", &url),
        ("SOPHIA_ADMIN_JWKS_MIN_REFRESH_SECS", "300"),
        ("SOPHIA_ADMIN_ISSUER", "https://login.test/tenant/v2.0"),
        ("SOPHIA_ADMIN_AUDIENCE", "api://sophia"),
    ])
    .await;
    assert_eq!(
        app.get("/admin/agent-instances", &token(&k1, platform_claims()))
            .await
            .status(),
        StatusCode::OK
    );
    for i in 0..20 {
        let stranger = ec_key(&format!("random-{i}"));
        assert_eq!(
            app.get(
                "/admin/agent-instances",
                &token(&stranger, platform_claims())
            )
            .await
            .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        idp.fetches.load(Ordering::SeqCst),
        1,
        "unknown kids within the refresh interval cause no fetch"
    );
    // The HS256 path keeps working beside the JWKS.
    assert_eq!(
        app.get("/admin/agent-instances", &app.platform_token())
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_unreachable_idp_is_a_503_not_a_500() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://127.0.0.1:{}/keys",
        listener.local_addr().unwrap().port()
    );
    drop(listener);
    let app = spawn_app_with(&[
        ("SOPHIA_ADMIN_JWKS_URL", &url),
        ("SOPHIA_ADMIN_ISSUER", "https://login.test/tenant/v2.0"),
        ("SOPHIA_ADMIN_AUDIENCE", "api://sophia"),
    ])
    .await;
    let resp = app
        .get(
            "/admin/agent-instances",
            &token(&ec_key("k"), platform_claims()),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
}

/// Entra signs every tenant's tokens with the same keys: with a JWKS configured, start-up
/// refuses to run without a pinned issuer and audience, and a token from the right key with
/// a foreign or missing `iss`/`aud`, an `nbf` in the future or an old `exp` gets 401.
#[tokio::test]
async fn a_jwks_needs_a_pinned_issuer_and_audience() {
    let (idp, url) = start_idp().await;
    let lookup = |pairs: Vec<(&'static str, String)>| {
        let map: std::collections::HashMap<&str, String> = pairs.into_iter().collect();
        sophia::config::Settings::from_lookup(|k| map.get(k).cloned())
    };
    let missing_issuer = lookup(vec![
        ("SOPHIA_ADMIN_JWKS_URL", url.clone()),
        ("SOPHIA_ADMIN_AUDIENCE", "api://sophia".into()),
    ]);
    assert_eq!(missing_issuer.err().unwrap().var, "SOPHIA_ADMIN_ISSUER");
    let missing_audience = lookup(vec![
        ("SOPHIA_ADMIN_JWKS_URL", url.clone()),
        (
            "SOPHIA_ADMIN_ISSUER",
            "https://login.test/tenant/v2.0".into(),
        ),
    ]);
    assert_eq!(missing_audience.err().unwrap().var, "SOPHIA_ADMIN_AUDIENCE");

    let key = ec_key("ec-1");
    *idp.keys.write().await = json!({"keys": [key.jwk]});
    let app = spawn_app_with(&[
        ("SOPHIA_ADMIN_JWT_SECRET", ""),
        ("SOPHIA_ADMIN_JWKS_URL", &url),
        ("SOPHIA_ADMIN_ISSUER", "https://login.test/tenant/v2.0"),
        ("SOPHIA_ADMIN_AUDIENCE", "api://sophia"),
    ])
    .await;
    assert_eq!(
        app.get("/admin/agent-instances", &token(&key, platform_claims()))
            .await
            .status(),
        StatusCode::OK
    );
    let now = chrono::Utc::now().timestamp();
    type Change = Box<dyn Fn(&mut Value)>;
    let variants: Vec<(&str, Change)> = vec![
        (
            "another Entra tenant",
            Box::new(|c| c["iss"] = json!("https://login.test/other-tenant/v2.0")),
        ),
        (
            "another app",
            Box::new(|c| c["aud"] = json!("api://someone-else")),
        ),
        (
            "no issuer",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("iss");
            }),
        ),
        (
            "no audience",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
        ),
        (
            "not yet valid",
            Box::new(move |c| c["nbf"] = json!(now + 600)),
        ),
        ("expired", Box::new(move |c| c["exp"] = json!(now - 600))),
    ];
    for (label, change) in variants {
        let mut claims = platform_claims();
        change(&mut claims);
        assert_eq!(
            app.get("/admin/agent-instances", &token(&key, claims))
                .await
                .status(),
            StatusCode::UNAUTHORIZED,
            "{label}"
        );
    }
}
