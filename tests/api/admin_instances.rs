//! Admin CRUD, one-time keys, masking, rotation, disable, etags, mass assignment.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{TestApp, assert_problem, spawn_app};

#[tokio::test]
async fn create_returns_the_key_once_with_no_store() {
    let app = spawn_app().await;
    let resp = app
        .request(
            Method::POST,
            "/admin/agent-instances",
            Some(&app.platform_token()),
            Some(json!({"companyId": "acme", "agentType": "SOPHIA", "region": "westeurope", "model": "gpt-4o",
                        "credentials": {"azureOpenaiKey": "aoai-key-123456"}})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(resp.headers().contains_key("etag"));
    let body: Value = resp.json().await.unwrap();
    let key = body["agentAccessKey"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sph_") && key.len() == 40, "{key}");
    assert_eq!(body["status"], "TO_PROVISION", "no azureProjectId yet");
    assert_eq!(body["companyId"], "acme");
    assert_eq!(body["keyVersion"], 1);
    assert_eq!(body["accessKeyLast4"], key[36..]);
    assert_eq!(body["accessKeyMasked"], format!("****{}", &key[36..]));
    assert!(
        body["keyvaultSecretId"]
            .as_str()
            .unwrap()
            .contains("sophia-instance-")
    );
    assert_eq!(body["hasCredentials"], true);
    assert!(body.get("accessKeyHash").is_none());
    assert!(
        !body.to_string().contains("aoai-key-123456"),
        "credentials never echoed"
    );
    assert_eq!(
        location,
        format!("/admin/agent-instances/{}", body["id"].as_str().unwrap())
    );

    // Never again: not in the detail, not in the listing.
    let detail = app.get(&location, &app.platform_token()).await;
    assert_eq!(detail.status(), StatusCode::OK);
    let text = detail.text().await.unwrap();
    assert!(!text.contains(&key), "key leaked in detail");
    assert!(!text.contains("agentAccessKey"));
    assert!(!text.contains("$2"), "hash leaked");
    assert!(!text.contains("aoai-key-123456"));
    let list = app
        .get("/admin/agent-instances", &app.platform_token())
        .await
        .text()
        .await
        .unwrap();
    assert!(!list.contains(&key) && !list.contains("agentAccessKey") && !list.contains("$2"));
}

#[tokio::test]
async fn credentials_are_stored_in_the_secret_store_not_the_document() {
    let app = spawn_app().await;
    let created = app
        .create_instance_with("acme", json!({"credentials": {"azureOpenaiKey": "aoai-secret-value", "azureSearchKey": "search-secret-value"}}))
        .await;
    let secret_id = created.body["keyvaultSecretId"].as_str().unwrap();
    let secret = app.state.secrets.get(secret_id).await.unwrap();
    let bundle = sophia::secrets::CredentialBundle::from_secret(&secret);
    use secrecy::ExposeSecret;
    assert_eq!(
        bundle.azure_openai_key.unwrap().expose_secret(),
        "aoai-secret-value"
    );
    assert_eq!(
        bundle.azure_search_key.unwrap().expose_secret(),
        "search-secret-value"
    );
    // The document store holds neither the credentials nor the key in clear.
    let db = std::fs::read(app.dir.path().join("sophia.db")).unwrap();
    let wal = std::fs::read(app.dir.path().join("sophia.db-wal")).unwrap_or_default();
    for hay in [&db, &wal] {
        for needle in [
            "aoai-secret-value",
            "search-secret-value",
            created.key.as_str(),
        ] {
            assert!(
                !hay.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} found in the store file"
            );
        }
    }
}

#[tokio::test]
async fn list_filters_and_paginates() {
    let app = spawn_app().await;
    for c in ["c1", "c2", "c3", "c4", "c5"] {
        app.create_instance(c).await;
    }
    let token = app.platform_token();
    let mut seen = Vec::new();
    let mut path = "/admin/agent-instances?limit=2".to_owned();
    for _ in 0..5 {
        let body: Value = app.get(&path, &token).await.json().await.unwrap();
        for item in body["items"].as_array().unwrap() {
            seen.push(item["companyId"].as_str().unwrap().to_owned());
        }
        match body["continuationToken"].as_str() {
            Some(t) => path = format!("/admin/agent-instances?limit=2&continuationToken={t}"),
            None => break,
        }
    }
    assert_eq!(seen, ["c1", "c2", "c3", "c4", "c5"]);
    let body: Value = app
        .get("/admin/agent-instances?companyId=c3", &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
    assert!(body.get("continuationToken").is_none());
    let body: Value = app
        .get("/admin/agent-instances?status=DISABLED", &token)
        .await
        .json()
        .await
        .unwrap();
    assert!(body["items"].as_array().unwrap().is_empty());
    for bad in [
        "limit=0",
        "limit=1000",
        "status=GONE",
        "companyId=a%20b",
        "continuationToken=zzz",
        "bogus=1",
    ] {
        let resp = app
            .get(&format!("/admin/agent-instances?{bad}"), &token)
            .await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn patch_updates_with_etags() {
    let app = spawn_app().await;
    let created = app.create_instance("acme").await;
    let token = app.platform_token();
    let path = format!("/admin/agent-instances/{}", created.id);
    let etag = created.body["etag"].as_str().unwrap().to_owned();

    let resp = app
        .client
        .patch(app.url(&path))
        .bearer_auth(&token)
        .header("if-match", format!("\"{etag}\""))
        .json(&json!({"model": "gpt-4o-mini", "region": "eastus", "settings": {"temperature": 0.3, "systemPrompt": "Be brief."}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let new_etag = resp.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["region"], "eastus");
    assert_eq!(body["settings"]["temperature"], 0.3);
    assert_ne!(new_etag, etag);
    assert_eq!(body["etag"], new_etag);

    // The old etag is stale now: 412 and nothing written.
    let resp = app
        .client
        .patch(app.url(&path))
        .bearer_auth(&token)
        .header("if-match", format!("\"{etag}\""))
        .json(&json!({"model": "gpt-35"}))
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::PRECONDITION_FAILED, "precondition_failed").await;
    let now: Value = app.get(&path, &token).await.json().await.unwrap();
    assert_eq!(now["model"], "gpt-4o-mini");

    // Merge semantics for settings: null removes a key, others stay.
    let body: Value = app
        .request(
            Method::PATCH,
            &path,
            Some(&token),
            Some(json!({"settings": {"temperature": null}})),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(body["settings"].get("temperature").is_none());
    assert_eq!(body["settings"]["systemPrompt"], "Be brief.");

    // null clears an optional field.
    let body: Value = app
        .request(
            Method::PATCH,
            &path,
            Some(&token),
            Some(json!({"region": null})),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(body["region"].is_null());
}

#[tokio::test]
async fn patch_credentials_writes_a_new_secret_version() {
    let app = spawn_app().await;
    let created = app
        .create_instance_with(
            "acme",
            json!({"credentials": {"azureOpenaiKey": "k1", "azureSearchKey": "s1"}}),
        )
        .await;
    let old_id = created.body["keyvaultSecretId"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/admin/agent-instances/{}", created.id);
    let resp = app
        .request(
            Method::PATCH,
            &path,
            Some(&app.platform_token()),
            Some(json!({"credentials": {"azureOpenaiKey": "k2"}})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    assert!(!text.contains("k2\""), "credential echoed: {text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    let new_id = body["keyvaultSecretId"].as_str().unwrap();
    assert_ne!(new_id, old_id);
    use secrecy::ExposeSecret;
    let bundle = sophia::secrets::CredentialBundle::from_secret(
        &app.state.secrets.get(new_id).await.unwrap(),
    );
    assert_eq!(bundle.azure_openai_key.unwrap().expose_secret(), "k2");
    assert_eq!(
        bundle.azure_search_key.unwrap().expose_secret(),
        "s1",
        "unpatched credential kept"
    );
    // The previous version still resolves (Key Vault keeps versions too).
    let old = sophia::secrets::CredentialBundle::from_secret(
        &app.state.secrets.get(&old_id).await.unwrap(),
    );
    assert_eq!(old.azure_openai_key.unwrap().expose_secret(), "k1");
}

#[tokio::test]
async fn mass_assignment_is_rejected() {
    let app = spawn_app().await;
    let created = app.create_instance("acme").await;
    let token = app.platform_token();
    let path = format!("/admin/agent-instances/{}", created.id);
    for field in [
        json!({"companyId": "other"}),
        json!({"id": "00000000-0000-4000-8000-000000000000"}),
        json!({"accessKeyHash": "$2b$04$x"}),
        json!({"accessKeyLast4": "zzzz"}),
        json!({"keyVersion": 99}),
        json!({"agentType": "SOPHIA"}),
        json!({"createdAt": "2020-01-01T00:00:00Z"}),
        json!({"etag": "x"}),
        json!({"tenantId": "other"}),
        json!({"agentAccessKey": "sph_x"}),
    ] {
        let resp = app
            .request(Method::PATCH, &path, Some(&token), Some(field.clone()))
            .await;
        assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    }
    let now: Value = app.get(&path, &token).await.json().await.unwrap();
    assert_eq!(now["companyId"], "acme");
    assert_eq!(now["keyVersion"], 1);
    assert_eq!(now["etag"], created.body["etag"], "nothing was written");

    // The create body is just as strict.
    let resp = app
        .request(
            Method::POST,
            "/admin/agent-instances",
            Some(&token),
            Some(json!({"companyId": "beta", "agentType": "SOPHIA", "accessKeyHash": "$2b$04$x"})),
        )
        .await;
    assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    let resp = app
        .request(
            Method::POST,
            "/admin/agent-instances",
            Some(&token),
            Some(json!({"companyId": "beta", "agentType": "SOPHIA", "status": "ACTIVE"})),
        )
        .await;
    assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
}

#[tokio::test]
async fn rotate_invalidates_the_old_key_and_its_tokens() {
    let app = spawn_app().await;
    let created = app.create_instance("acme").await;
    let old_token = app.service_token("acme", &created.key).await;
    assert_eq!(
        app.get("/agents/me", &old_token).await.status(),
        StatusCode::OK
    );

    let resp = app
        .request(
            Method::POST,
            &format!("/admin/agent-instances/{}/rotate-key", created.id),
            Some(&app.platform_token()),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: Value = resp.json().await.unwrap();
    let new_key = body["agentAccessKey"].as_str().unwrap().to_owned();
    assert_ne!(new_key, created.key);
    assert_eq!(body["keyVersion"], 2);
    assert_eq!(body["accessKeyLast4"], new_key[36..]);

    assert_problem(
        app.exchange("acme", &created.key).await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    )
    .await;
    assert_problem(
        app.get("/agents/me", &old_token).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    let new_token = app.service_token("acme", &new_key).await;
    let me: Value = app
        .get("/agents/me", &new_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["keyVersion"], 2);
}

#[tokio::test]
async fn disable_stops_exchange_and_existing_tokens() {
    let app = spawn_app().await;
    let created = app.create_instance("acme").await;
    let token = app.service_token("acme", &created.key).await;
    let path = format!("/admin/agent-instances/{}", created.id);
    let resp = app
        .request(Method::DELETE, &path, Some(&app.platform_token()), None)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "DISABLED");
    assert_problem(
        app.exchange("acme", &created.key).await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    )
    .await;
    assert_problem(
        app.get("/agents/me", &token).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    // Soft delete: the record is still there for admins, and deleting again is harmless.
    let detail: Value = app
        .get(&path, &app.platform_token())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(detail["status"], "DISABLED");
    assert_eq!(
        app.request(Method::DELETE, &path, Some(&app.platform_token()), None)
            .await
            .status(),
        StatusCode::OK
    );
    // A new instance may be created for the company now.
    let again = app.create_instance("acme").await;
    assert_ne!(again.id, created.id);
    // Re-enabling the old one would give the company two live instances.
    let resp = app
        .request(
            Method::PATCH,
            &path,
            Some(&app.platform_token()),
            Some(json!({"status": "ACTIVE"})),
        )
        .await;
    assert_problem(resp, StatusCode::CONFLICT, "conflict").await;
}

#[tokio::test]
async fn disable_through_patch_also_stops_tokens() {
    let app = spawn_app().await;
    let created = app.create_instance("acme").await;
    let token = app.service_token("acme", &created.key).await;
    let path = format!("/admin/agent-instances/{}", created.id);
    let resp = app
        .request(
            Method::PATCH,
            &path,
            Some(&app.platform_token()),
            Some(json!({"status": "DISABLED"})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_problem(
        app.get("/agents/me", &token).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    let resp = app
        .request(
            Method::PATCH,
            &path,
            Some(&app.platform_token()),
            Some(json!({"status": "ACTIVE"})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "ACTIVE");
    assert_eq!(body["keyVersion"], 2, "the disable bumped the key version");
    // Tokens issued before the disable stay dead after re-enabling...
    assert_problem(
        app.get("/agents/me", &token).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    // ...while the access key itself exchanges again.
    let fresh = app.service_token("acme", &created.key).await;
    let me: Value = app.get("/agents/me", &fresh).await.json().await.unwrap();
    assert_eq!(me["keyVersion"], 2);
}

/// Disable → re-enable: old tokens stay dead, through DELETE as well as PATCH, and a
/// company admin cannot lift a platform admin's disable (it can lift its own).
#[tokio::test]
async fn re_enabling_never_revives_old_tokens() {
    let app = spawn_app().await;
    let created = app.create_instance("acme").await;
    let path = format!("/admin/agent-instances/{}", created.id);
    let company = app.admin_token("acme");
    for (disabler, label) in [
        (app.platform_token(), "platform"),
        (company.clone(), "company"),
    ] {
        let old = app.service_token("acme", &created.key).await;
        let resp = app
            .request(Method::DELETE, &path, Some(&disabler), None)
            .await;
        assert_eq!(resp.status(), StatusCode::OK, "{label} disable");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["status"], "DISABLED");
        assert_eq!(
            app.exchange("acme", &created.key).await.status(),
            StatusCode::UNAUTHORIZED
        );
        let reenable = app
            .request(
                Method::PATCH,
                &path,
                Some(&company),
                Some(json!({"status": "ACTIVE"})),
            )
            .await;
        if label == "platform" {
            let problem = assert_problem(reenable, StatusCode::FORBIDDEN, "forbidden").await;
            assert_eq!(problem["field"], "status");
            let still: Value = app
                .get(&path, &app.platform_token())
                .await
                .json()
                .await
                .unwrap();
            assert_eq!(still["status"], "DISABLED", "nothing written");
            let resp = app
                .request(
                    Method::PATCH,
                    &path,
                    Some(&app.platform_token()),
                    Some(json!({"status": "ACTIVE"})),
                )
                .await;
            assert_eq!(resp.status(), StatusCode::OK);
        } else {
            assert_eq!(reenable.status(), StatusCode::OK, "its own disable");
        }
        assert_problem(
            app.get("/agents/me", &old).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        )
        .await;
        assert_eq!(
            app.exchange("acme", &created.key).await.status(),
            StatusCode::OK
        );
    }
    let disables = app
        .audit("companyId=acme&action=agent_instance.disable")
        .await;
    assert_eq!(disables.len(), 2);
}

#[tokio::test]
async fn a_second_live_instance_for_a_company_is_a_conflict() {
    let app = spawn_app().await;
    app.create_instance("acme").await;
    let resp = app
        .request(
            Method::POST,
            "/admin/agent-instances",
            Some(&app.platform_token()),
            Some(json!({"companyId": "acme", "agentType": "SOPHIA"})),
        )
        .await;
    assert_problem(resp, StatusCode::CONFLICT, "conflict").await;
}

#[tokio::test]
async fn provisioning_status_follows_the_project_id() {
    let app = spawn_app().await;
    let resp = app
        .request(
            Method::POST,
            "/admin/agent-instances",
            Some(&app.platform_token()),
            Some(json!({"companyId": "acme", "agentType": "SOPHIA"})),
        )
        .await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "TO_PROVISION");
    let path = format!("/admin/agent-instances/{}", body["id"].as_str().unwrap());
    let body: Value = app
        .request(
            Method::PATCH,
            &path,
            Some(&app.platform_token()),
            Some(json!({"azureProjectId": "proj-1"})),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "ACTIVE");
}

#[tokio::test]
async fn upstream_endpoints_are_checked() {
    let app = spawn_app().await;
    let token = app.platform_token();
    for (field, value) in [
        ("azureOpenaiEndpoint", "http://acme.openai.azure.com"),
        ("azureOpenaiEndpoint", "https://evil.example.com"),
        ("azureOpenaiEndpoint", "https://169.254.169.254"),
        ("azureOpenaiEndpoint", "https://10.0.0.5"),
        ("azureOpenaiEndpoint", "http://127.0.0.1:9999"),
        ("azureOpenaiEndpoint", "https://[::1]"),
        ("azureSearchEndpoint", "https://search.internal.corp"),
        ("azureSearchEndpoint", "file:///etc/passwd"),
    ] {
        let resp = app
            .request(
                Method::POST,
                "/admin/agent-instances",
                Some(&token),
                Some(json!({"companyId": "acme", "agentType": "SOPHIA", field: value})),
            )
            .await;
        let body = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(body["field"], field, "{value}");
    }
    // Loopback http only when local upstreams are allowed.
    let local = crate::support::spawn_app_with(&[("SOPHIA_ALLOW_LOCAL_UPSTREAMS", "true")]).await;
    let resp = local
        .request(
            Method::POST,
            "/admin/agent-instances",
            Some(&local.platform_token()),
            Some(json!({"companyId": "acme", "agentType": "SOPHIA", "azureOpenaiEndpoint": "http://127.0.0.1:9999"})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    // A PATCH is checked the same way.
    let created = app.create_instance("beta").await;
    let resp = app
        .request(
            Method::PATCH,
            &format!("/admin/agent-instances/{}", created.id),
            Some(&token),
            Some(json!({"azureOpenaiEndpoint": "https://169.254.169.254"})),
        )
        .await;
    assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
}

#[tokio::test]
async fn existing_secret_references_are_validated() {
    let app = spawn_app().await;
    let token = app.platform_token();
    // Another instance's managed bundle may not be borrowed.
    let other = app
        .create_instance_with(
            "other",
            json!({"credentials": {"azureOpenaiKey": "other-key"}}),
        )
        .await;
    let stolen = other.body["keyvaultSecretId"].as_str().unwrap();
    let resp = app
        .request(
            Method::POST,
            "/admin/agent-instances",
            Some(&token),
            Some(json!({"companyId": "acme", "agentType": "SOPHIA", "keyvaultSecretId": stolen})),
        )
        .await;
    assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    // A company admin may reference only secrets bound to its own company: neither another
    // company's nor an unbound one, whatever its name.
    let name = sophia::secrets::SecretName::parse("other-openai").unwrap();
    let id = app
        .state
        .secrets
        .set(&name, &secrecy::SecretString::from("v"))
        .await
        .unwrap();
    let resp = app
        .request(
            Method::POST,
            "/admin/agent-instances",
            Some(&app.admin_token("acme")),
            Some(json!({"companyId": "acme", "agentType": "SOPHIA", "keyvaultSecretId": id})),
        )
        .await;
    assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    let own = sophia::secrets::SecretName::parse("acme-openai").unwrap();
    let unbound = app
        .state
        .secrets
        .set(&own, &secrecy::SecretString::from("v"))
        .await
        .unwrap();
    let resp = app
        .request(
            Method::POST,
            "/admin/agent-instances",
            Some(&app.admin_token("acme")),
            Some(json!({"companyId": "acme", "agentType": "SOPHIA", "keyvaultSecretId": unbound})),
        )
        .await;
    assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    let own_id = app
        .state
        .secrets
        .set_owned(
            &own,
            &secrecy::SecretString::from("v"),
            Some(&sophia::domain::TenantId::parse("acme").unwrap()),
        )
        .await
        .unwrap();
    let resp = app
        .request(
            Method::POST,
            "/admin/agent-instances",
            Some(&app.admin_token("acme")),
            Some(json!({"companyId": "acme", "agentType": "SOPHIA", "keyvaultSecretId": own_id})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    // Missing secrets and foreign identifiers are refused.
    for bad in [
        "sophia-local:/secrets/beta-missing",
        "https://vault.vault.azure.net/secrets/x",
        "garbage",
    ] {
        let resp = app
            .request(
                Method::POST,
                "/admin/agent-instances",
                Some(&token),
                Some(json!({"companyId": "beta", "agentType": "SOPHIA", "keyvaultSecretId": bad})),
            )
            .await;
        assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    }
    // Both forms at once are ambiguous.
    let resp = app
        .request(
            Method::POST,
            "/admin/agent-instances",
            Some(&token),
            Some(json!({"companyId": "beta", "agentType": "SOPHIA", "keyvaultSecretId": own_id, "credentials": {"azureOpenaiKey": "x"}})),
        )
        .await;
    assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
}

#[tokio::test]
async fn a_failed_create_leaves_no_secret_behind() {
    let app = spawn_app().await;
    app.create_instance("acme").await;
    // The company already has a live instance: the create fails before any write.
    let resp = app
        .request(
            Method::POST,
            "/admin/agent-instances",
            Some(&app.platform_token()),
            Some(json!({"companyId": "acme", "agentType": "SOPHIA", "credentials": {"azureOpenaiKey": "orphan-candidate"}})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let conn = rusqlite_count(&app.dir.path().join("secrets.db"));
    // Only the signing key exists: no credential bundle was written.
    assert_eq!(conn, 1);
}

fn rusqlite_count(path: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("SELECT COUNT(DISTINCT name) FROM secrets", [], |r| r.get(0))
        .unwrap()
}

/// Rotates `id`'s key with `body`; the answer's JSON.
async fn rotate(app: &TestApp, id: &str, body: Option<Value>) -> Value {
    let resp = app
        .request(
            Method::POST,
            &format!("/admin/agent-instances/{id}/rotate-key"),
            Some(&app.platform_token()),
            body,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

#[tokio::test]
async fn rotation_with_grace_keeps_the_old_key_and_its_tokens_until_the_grace_ends() {
    let app = spawn_app().await;
    let created = app.create_instance("acme").await;
    let old_token = app.service_token("acme", &created.key).await;
    let before = chrono::Utc::now();
    let body = rotate(&app, &created.id, Some(json!({"gracePeriodSeconds": 3}))).await;
    let new_key = body["agentAccessKey"].as_str().unwrap().to_owned();
    assert_eq!(body["keyVersion"], 2);
    assert_eq!(body["previousKeyVersion"], 1);
    assert_eq!(body["previousKeyLast4"], created.key[36..]);
    let expires: chrono::DateTime<chrono::Utc> = body["previousKeyExpiresAt"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(expires > before + chrono::Duration::seconds(2));
    assert!(expires <= chrono::Utc::now() + chrono::Duration::seconds(3));

    // During the grace: the old token, the old key and the new key all work.
    assert_eq!(
        app.get("/agents/me", &old_token).await.status(),
        StatusCode::OK
    );
    let resp = app.exchange("acme", &created.key).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let grant: Value = resp.json().await.unwrap();
    // A token issued under the previous key expires with the grace period.
    assert!(grant["expires_in"].as_u64().unwrap() <= 3);
    let grace_token = grant["access_token"].as_str().unwrap().to_owned();
    let me: Value = app
        .get("/agents/me", &grace_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["keyVersion"], 1);
    let new_token = app.service_token("acme", &new_key).await;
    // The body-key flow of /chat accepts the old key too (it is cached as version 1).
    let body_key = |key: &str| json!({"companyId": "acme", "agentAccessKey": key, "message": "hi"});
    assert_ne!(
        app.request(Method::POST, "/chat", None, Some(body_key(&created.key)))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );

    // After the grace: only the new key and its tokens.
    let wait = (expires - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + std::time::Duration::from_millis(200)).await;
    for token in [&old_token, &grace_token] {
        assert_problem(
            app.get("/agents/me", token).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        )
        .await;
    }
    assert_problem(
        app.exchange("acme", &created.key).await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    )
    .await;
    assert_eq!(
        app.request(Method::POST, "/chat", None, Some(body_key(&created.key)))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get("/agents/me", &new_token).await.status(),
        StatusCode::OK
    );
    // The view no longer mentions the previous key.
    let view: Value = app
        .get(
            &format!("/admin/agent-instances/{}", created.id),
            &app.platform_token(),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(view.get("previousKeyExpiresAt").is_none(), "{view}");
}

#[tokio::test]
async fn revoke_previous_key_ends_the_grace_at_once_and_is_audited() {
    let app = spawn_app().await;
    let created = app.create_instance("acme").await;
    let old_token = app.service_token("acme", &created.key).await;
    let body = rotate(&app, &created.id, Some(json!({"gracePeriodSeconds": 3600}))).await;
    assert!(body["previousKeyExpiresAt"].is_string());
    assert_eq!(
        app.get("/agents/me", &old_token).await.status(),
        StatusCode::OK
    );
    // Another company's admin cannot see, let alone revoke, it.
    let other = app.admin_token("beta");
    let path = format!("/admin/agent-instances/{}/revoke-previous-key", created.id);
    assert_problem(
        app.request(Method::POST, &path, Some(&other), None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_eq!(
        app.get("/agents/me", &old_token).await.status(),
        StatusCode::OK
    );
    // acme's own admin can.
    let resp = app
        .request(Method::POST, &path, Some(&app.admin_token("acme")), None)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let view: Value = resp.json().await.unwrap();
    assert!(view.get("previousKeyExpiresAt").is_none(), "{view}");
    assert!(view.get("agentAccessKey").is_none());
    assert_problem(
        app.get("/agents/me", &old_token).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    assert_problem(
        app.exchange("acme", &created.key).await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    )
    .await;
    // Again: nothing to revoke, still 200, not audited twice.
    let resp = app
        .request(Method::POST, &path, Some(&app.platform_token()), None)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let audit: Value = app
        .get(
            &format!("/admin/audit-logs?companyId=acme&instanceId={}", created.id),
            &app.platform_token(),
        )
        .await
        .json()
        .await
        .unwrap();
    let entries = audit["items"].as_array().unwrap();
    let by = |action: &str| {
        entries
            .iter()
            .filter(|e| e["action"] == action)
            .collect::<Vec<_>>()
    };
    let rotations = by("agent_instance.rotate_key");
    assert_eq!(rotations.len(), 1);
    assert_eq!(rotations[0]["details"]["gracePeriodSeconds"], 3600);
    assert!(rotations[0]["details"]["previousKeyExpiresAt"].is_string());
    let revocations = by("agent_instance.revoke_previous_key");
    assert_eq!(revocations.len(), 1, "{entries:?}");
    assert_eq!(revocations[0]["details"]["revokedKeyVersion"], 1);
    assert!(
        revocations[0]["actor"]
            .as_str()
            .unwrap()
            .starts_with("admin:")
    );
}

#[tokio::test]
async fn rotation_refuses_a_bad_grace_period_and_changes_nothing() {
    let app = spawn_app().await;
    let created = app.create_instance("acme").await;
    let path = format!("/admin/agent-instances/{}/rotate-key", created.id);
    for body in [
        json!({"gracePeriodSeconds": 604_801}),
        json!({"gracePeriodSeconds": -1}),
        json!({"gracePeriodSeconds": "60"}),
        json!({"gracePeriodSeconds": 1.5}),
        json!({"gracePeriod": 60}),
        json!([]),
    ] {
        let resp = app
            .request(
                Method::POST,
                &path,
                Some(&app.platform_token()),
                Some(body.clone()),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
    }
    let resp = app
        .client
        .post(app.url(&path))
        .bearer_auth(app.platform_token())
        .header("content-type", "text/plain")
        .body("gracePeriodSeconds=60")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // The previous key is not writable by a patch (mass assignment).
    for field in ["previousKey", "previousKeyExpiresAt", "previousKeyVersion"] {
        let resp = app
            .request(
                Method::PATCH,
                &format!("/admin/agent-instances/{}", created.id),
                Some(&app.platform_token()),
                Some(json!({ field: "2099-01-01T00:00:00Z" })),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{field}");
    }
    // Nothing changed: the key is the same one, at version 1.
    let view: Value = app
        .get(
            &format!("/admin/agent-instances/{}", created.id),
            &app.platform_token(),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["keyVersion"], 1);
    assert_eq!(
        app.exchange("acme", &created.key).await.status(),
        StatusCode::OK
    );
    // The longest grace is accepted.
    let body = rotate(
        &app,
        &created.id,
        Some(json!({"gracePeriodSeconds": 604_800})),
    )
    .await;
    assert_eq!(body["previousKeyVersion"], 1);
    // A rotation during a grace replaces the older key: two keys at most.
    let second = rotate(&app, &created.id, Some(json!({"gracePeriodSeconds": 60}))).await;
    assert_eq!(second["previousKeyVersion"], 2);
    assert_problem(
        app.exchange("acme", &created.key).await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    )
    .await;
    assert_eq!(
        app.exchange("acme", body["agentAccessKey"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );
}
