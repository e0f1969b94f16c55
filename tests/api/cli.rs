//! The real binary, as an operator runs it: start-up validation, the admin-token command
//! against a running server, graceful shutdown, and logs that never carry a secret.

use crate::support;

use serde_json::{Value, json};

use support::binary::*;

#[test]
fn admin_token_command_works_against_a_server_on_the_same_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let token = admin_token(dir.path(), &["--role", "PLATFORM_ADMIN"]);
    let client = reqwest::blocking::Client::new();
    let resp = client
        .get(server.url("/admin/agent-instances"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let acme = admin_token(
        dir.path(),
        &["--role", "ADMIN", "--company", "acme", "--ttl", "120"],
    );
    let resp = client
        .post(server.url("/admin/agent-instances"))
        .bearer_auth(&acme)
        .json(&json!({"companyId": "acme", "agentType": "SOPHIA"}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201);
    let resp = client
        .post(server.url("/admin/agent-instances"))
        .bearer_auth(&acme)
        .json(&json!({"companyId": "beta", "agentType": "SOPHIA"}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 403);
    let (status, _) = server.stop();
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");
}

#[test]
fn bad_configuration_stops_start_up_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value, expect) in [
        ("SOPHIA_STORE", "cosmos", "SOPHIA_STORE"),
        ("SOPHIA_SECRETS", "keyvault", "SOPHIA_SECRETS"),
        ("SOPHIA_STORE", "mongo", "SOPHIA_STORE"),
        ("SOPHIA_BCRYPT_COST", "40", "SOPHIA_BCRYPT_COST"),
        ("SOPHIA_PORT", "x", "SOPHIA_PORT"),
        (
            "SOPHIA_ADMIN_JWT_SECRET",
            "too-short",
            "SOPHIA_ADMIN_JWT_SECRET",
        ),
        ("SOPHIA_MASTER_KEY", "not-a-key", "SOPHIA_MASTER_KEY"),
    ] {
        let out = command(dir.path(), free_port())
            .env(var, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{var}={value} started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "{var}={value}: {stderr}");
        if var == "SOPHIA_ADMIN_JWT_SECRET" || var == "SOPHIA_MASTER_KEY" {
            assert!(
                !stderr.contains(value),
                "the bad secret is echoed: {stderr}"
            );
        }
    }
    // Unknown commands are a usage error.
    let out = command(dir.path(), 0).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    // A wrong master key for an existing data dir fails loudly rather than serving garbage.
    let server = Server::start(dir.path(), &[]);
    server.stop();
    let out = command(dir.path(), free_port())
        .env("SOPHIA_MASTER_KEY", "11".repeat(32))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SOPHIA_MASTER_KEY"));
}

#[test]
fn secrets_never_reach_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let admin_secret = "log-test-admin-secret-0123456789abcdef";
    // A real simulator process whose key is the tenant's Azure OpenAI credential.
    let (mut sim, sim_url) = start_simulator("CRED-OPENAI-1111");
    let server = Server::start(
        dir.path(),
        &[
            ("SOPHIA_LOG", "trace"),
            ("SOPHIA_ADMIN_JWT_SECRET", admin_secret),
            ("RUST_BACKTRACE", "1"),
            ("SOPHIA_ALLOW_LOCAL_UPSTREAMS", "true"),
        ],
    );
    // The CLI mints with the same configured secret the server uses.
    let admin = {
        let out = command(dir.path(), 0)
            .env("SOPHIA_ADMIN_JWT_SECRET", admin_secret)
            .args(["admin-token", "--role", "PLATFORM_ADMIN"])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let client = reqwest::blocking::Client::new();
    let created: Value = client
        .post(server.url("/admin/agent-instances"))
        .bearer_auth(&admin)
        .json(&json!({"companyId": "acme", "agentType": "SOPHIA", "azureOpenaiEndpoint": sim_url, "azureOpenaiDeployment": "gpt-4o",
                      "credentials": {"azureOpenaiKey": "CRED-OPENAI-1111", "azureSearchKey": "CRED-SEARCH-2222"}}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let key = created["agentAccessKey"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    let token: Value = client
        .post(server.url("/agents/auth/token"))
        .json(&json!({"companyId": "acme", "agentType": "SOPHIA", "agentAccessKey": key}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let service = token["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        client
            .get(server.url("/agents/me"))
            .bearer_auth(&service)
            .send()
            .unwrap()
            .status(),
        200
    );
    // Chat, whole and streamed, with the token and with the key in the body, and the
    // OpenAI-compatible route: the upstream key travels on every call.
    for stream in [false, true] {
        let resp = client
            .post(server.url("/chat"))
            .bearer_auth(&service)
            .json(&json!({"message": "PRIVATE-QUESTION-5555", "stream": stream}))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        let _ = resp.text();
    }
    let resp = client
        .post(server.url("/chat"))
        .json(&json!({"companyId": "acme", "agentAccessKey": key, "message": "hello"}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&service)
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Failures log too: a wrong key, a forged token, a malformed body carrying a secret.
    let wrong_key = "sph_WRONGwrongWRONGwrongWRONGwrongWRONGab";
    client
        .post(server.url("/agents/auth/token"))
        .json(&json!({"companyId": "acme", "agentAccessKey": wrong_key}))
        .send()
        .unwrap();
    client
        .post(server.url("/agents/auth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "acme"),
            ("client_secret", wrong_key),
        ])
        .send()
        .unwrap();
    client
        .get(server.url("/agents/me"))
        .bearer_auth(format!("{service}x"))
        .send()
        .unwrap();
    client
        .post(server.url("/admin/agent-instances"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(r#"{"companyId":"beta","agentType":"SOPHIA","credentials":{"azureOpenaiKey":"CRED-BROKEN-3333""#)
        .send()
        .unwrap();
    let patched = client
        .patch(server.url(&format!("/admin/agent-instances/{id}")))
        .bearer_auth(&admin)
        .json(&json!({"credentials": {"azureOpenaiKey": "CRED-OPENAI-4444"}}))
        .send()
        .unwrap();
    assert_eq!(patched.status(), 200);
    // The simulator refuses the new key: an upstream rejection, logged without the key.
    let refused = client
        .post(server.url("/chat"))
        .bearer_auth(&service)
        .json(&json!({"message": "hello again"}))
        .send()
        .unwrap();
    assert_eq!(refused.status(), 502);
    let rotated: Value = client
        .post(server.url(&format!("/admin/agent-instances/{id}/rotate-key")))
        .bearer_auth(&admin)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let new_key = rotated["agentAccessKey"].as_str().unwrap().to_owned();

    let (_, logs) = server.stop();
    let _ = sim.kill();
    let _ = sim.wait();
    assert!(
        logs.lines().count() > 10,
        "expected trace logs, got: {logs}"
    );
    for line in logs.lines().filter(|l| l.starts_with('{')) {
        serde_json::from_str::<Value>(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
    }
    let master_key = std::fs::read_to_string(dir.path().join("master.key")).unwrap();
    for (what, secret) in [
        ("access key", key.as_str()),
        ("rotated key", new_key.as_str()),
        ("wrong key", wrong_key),
        ("service token", service.as_str()),
        (
            "service token signature",
            service.rsplit('.').next().unwrap(),
        ),
        ("admin token", admin.as_str()),
        ("admin secret", admin_secret),
        ("credential", "CRED-OPENAI-1111"),
        ("credential", "CRED-SEARCH-2222"),
        ("credential", "CRED-BROKEN-3333"),
        ("credential", "CRED-OPENAI-4444"),
        ("master key", master_key.trim()),
    ] {
        assert!(!logs.contains(secret), "{what} found in the logs");
    }
    assert!(
        !logs.contains("PRIVATE-QUESTION-5555"),
        "message content in the logs"
    );
    // The logs do say what happened.
    assert!(logs.contains("token exchange refused"));
    assert!(logs.contains(&format!("agent instance {id} created")));
}

/// `settings.authMode = managedIdentity`: SOPHIA gets an Entra token for Azure OpenAI from the
/// App Service / Functions managed-identity endpoint (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`)
/// through `azure_identity` — for the company's own user-assigned identity
/// (`settings.managedIdentityClientId`, sent as `client_id`), never SOPHIA's — sends it as a
/// Bearer token, and reuses it while it is valid.
#[test]
fn managed_identity_tokens_reach_the_model() {
    const ACME_IDENTITY: &str = "6f1c2a9e-5b7d-4c3e-9a8f-0123456789ab";
    let msi = support::azure::ManagedIdentity::start("SOPHIA-OWN-TOKEN-1111")
        .with_identity(ACME_IDENTITY, "ACME-ENTRA-TOKEN-7777");
    let (mut sim, sim_url) = start_simulator("ACME-ENTRA-TOKEN-7777");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("SOPHIA_ALLOW_LOCAL_UPSTREAMS", "true"),
            ("SOPHIA_AZURE_CREDENTIAL", "managed_identity"),
            ("IDENTITY_ENDPOINT", &msi.endpoint),
            ("IDENTITY_HEADER", &msi.header),
            ("SOPHIA_LOG", "debug"),
        ],
    );
    let admin = admin_token(dir.path(), &["--role", "PLATFORM_ADMIN"]);
    let client = reqwest::blocking::Client::new();
    // Without a company identity the instance is refused: SOPHIA's own is not an option.
    let refused = client
        .post(server.url("/admin/agent-instances"))
        .bearer_auth(&admin)
        .json(&json!({"companyId": "acme", "agentType": "SOPHIA", "azureOpenaiEndpoint": sim_url,
                      "azureOpenaiDeployment": "gpt-4o", "settings": {"authMode": "managedIdentity"}}))
        .send()
        .unwrap();
    assert_eq!(refused.status(), 400);
    let (_, service) = create_and_exchange(
        &server,
        &admin,
        &json!({"companyId": "acme", "agentType": "SOPHIA", "azureOpenaiEndpoint": sim_url,
                "azureOpenaiDeployment": "gpt-4o",
                "settings": {"authMode": "managedIdentity", "managedIdentityClientId": ACME_IDENTITY}}),
    );
    for _ in 0..3 {
        let resp = client
            .post(server.url("/chat"))
            .bearer_auth(&service)
            .json(&json!({"message": "hello"}))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().unwrap_or_default());
    }
    let seen: Vec<Value> = client
        .get(format!("{sim_url}/_sim/requests"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter().all(|r| r["key"] == "ACME-ENTRA-TOKEN-7777"),
        "the model got the company identity's token"
    );
    assert_eq!(
        msi.issued(),
        [(
            "https://cognitiveservices.azure.com".to_owned(),
            Some(ACME_IDENTITY.to_owned())
        )],
        "one token, for the company's identity, reused while valid; none for SOPHIA's"
    );
    let (_, logs) = server.stop();
    let _ = sim.kill();
    let _ = sim.wait();
    assert!(
        !logs.contains("ACME-ENTRA-TOKEN-7777"),
        "the Entra token is not logged"
    );
    assert!(
        !logs.contains("test-identity-header"),
        "the identity header is not logged"
    );
}

#[test]
fn managed_identity_without_a_credential_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = command(dir.path(), free_port())
        .env("SOPHIA_AZURE_CREDENTIAL", "magic")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SOPHIA_AZURE_CREDENTIAL"));
    let out = command(dir.path(), free_port())
        .env("SOPHIA_AZURE_CREDENTIAL", "client_secret")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "client_secret without AZURE_TENANT_ID must not start"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SOPHIA_AZURE_CREDENTIAL") && stderr.contains("AZURE_TENANT_ID"),
        "{stderr}"
    );
}
