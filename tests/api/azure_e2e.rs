//! The real binary on the Azure backends: `SOPHIA_STORE=cosmos` against the Cosmos DB emulator
//! rig and `SOPHIA_SECRETS=keyvault` against the Key Vault stand-in, authenticated with a
//! managed-identity token from the App Service identity endpoint stand-in — admin create →
//! token exchange → `/agents/me` → chat, a restart on an empty data dir, and logs without a
//! secret. Also the mixed pairs (Cosmos + local secrets, SQLite + Key Vault).

use crate::support;

use std::time::Duration;

use reqwest::blocking::Client;
use serde_json::{Value, json};
use support::appinsights::{Ingestion, of_type};
use support::azure::{KeyVault, ManagedIdentity};
use support::binary::*;

const MSI_TOKEN: &str = "MSI-TOKEN-e2e-31337";
const OPENAI_KEY: &str = "acme-openai-key-e2e-0042";
const ADMIN_SECRET: &str = "e2e-admin-secret-0123456789-abcdefghijklmnopqrstuv";
const EMULATOR_KEY: &str = support::COSMOS_EMULATOR_KEY;
const CONTOSO_IDENTITY: &str = "cccccccc-cccc-4ccc-8ccc-cccccccccccc";

struct Flow {
    instance_id: String,
    secret_id: String,
    service_token: String,
    access_key: String,
}

/// Admin create → exchange → /agents/me → chat, against a running server.
fn client_flow(server: &Server, dir: &std::path::Path, sim_url: &str, company: &str) -> Flow {
    let admin = admin_token_with(
        dir,
        &[("SOPHIA_ADMIN_JWT_SECRET", ADMIN_SECRET)],
        &["--role", "PLATFORM_ADMIN"],
    );
    let client = Client::new();
    let res = client
        .post(server.url("/admin/agent-instances"))
        .bearer_auth(&admin)
        .json(
            &json!({"companyId": company, "agentType": "SOPHIA", "model": "gpt-4o",
                      "azureOpenaiEndpoint": sim_url, "azureOpenaiDeployment": "gpt-4o",
                      "credentials": {"azureOpenaiKey": OPENAI_KEY}}),
        )
        .send()
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().unwrap_or_default());
    let created: Value = res.json().unwrap();
    let access_key = created["agentAccessKey"].as_str().unwrap().to_owned();
    let res = client
        .post(server.url("/agents/auth/token"))
        .json(&json!({"companyId": company, "agentType": "SOPHIA", "agentAccessKey": access_key}))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().unwrap_or_default());
    let service_token = res.json::<Value>().unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let me: Value = client
        .get(server.url("/agents/me"))
        .bearer_auth(&service_token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(me["companyId"], company, "{me}");
    let res = client
        .post(server.url("/chat"))
        .bearer_auth(&service_token)
        .json(&json!({"message": "hello from the e2e test"}))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().unwrap_or_default());
    Flow {
        instance_id: created["id"].as_str().unwrap().to_owned(),
        secret_id: created["keyvaultSecretId"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        service_token,
        access_key,
    }
}

fn health(server: &Server) -> Value {
    Client::new()
        .get(server.url("/health"))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

#[test]
fn cosmos_and_keyvault_with_managed_identity() {
    // CONTOSO's own identity gets a token the model stand-in accepts as a bearer key.
    let msi = ManagedIdentity::start(MSI_TOKEN).with_identity(CONTOSO_IDENTITY, OPENAI_KEY);
    let vault = KeyVault::start(MSI_TOKEN);
    let cosmos = support::rig::cosmos_endpoint();
    let database = support::rig::fresh_database();
    let (mut sim, sim_url) = start_simulator(OPENAI_KEY);
    let ingestion = Ingestion::start();
    let telemetry = ingestion.connection_string("12345678-aaaa-4bbb-8ccc-1234567890ab");
    let env = [
        ("APPLICATIONINSIGHTS_CONNECTION_STRING", telemetry.as_str()),
        ("SOPHIA_TELEMETRY_EXPORT_MS", "50"),
        ("SOPHIA_TELEMETRY_METRICS_SECS", "1"),
        ("SOPHIA_STORE", "cosmos"),
        ("SOPHIA_COSMOS_ENDPOINT", cosmos.as_str()),
        ("SOPHIA_COSMOS_DATABASE", database.as_str()),
        ("SOPHIA_COSMOS_CREATE_CONTAINERS", "true"),
        ("SOPHIA_SECRETS", "keyvault"),
        ("SOPHIA_KEYVAULT_URL", vault.url.as_str()),
        ("SOPHIA_ADMIN_JWT_SECRET", ADMIN_SECRET),
        ("SOPHIA_AZURE_CREDENTIAL", "managed_identity"),
        ("IDENTITY_ENDPOINT", msi.endpoint.as_str()),
        ("IDENTITY_HEADER", msi.header.as_str()),
        ("SOPHIA_ALLOW_LOCAL_UPSTREAMS", "true"),
        ("SOPHIA_PUBLIC_URL", "https://sophia.example.com"),
        ("SOPHIA_LOG", "debug"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &env);
    let h = health(&server);
    assert_eq!(h["backends"]["store"], "cosmos", "{h}");
    assert_eq!(h["backends"]["secrets"], "keyvault", "{h}");

    let flow = client_flow(&server, dir.path(), &sim_url, "acme");
    // The credential bundle is one Key Vault secret named after the instance, and the
    // instance keeps its full identifier (with the version).
    let secret_name = format!("sophia-instance-{}", flow.instance_id);
    assert!(
        flow.secret_id.starts_with(&format!(
            "https://{}/secrets/{secret_name}/",
            vault.url.trim_start_matches("http://")
        )),
        "{}",
        flow.secret_id
    );
    assert!(vault.value(&secret_name).unwrap().contains(OPENAI_KEY));
    // The service-token signing key lives in the vault too, as PEM.
    let pem = vault.value("sophia-token-signing-key").unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8 PEM");
    // The model got the company's key from the vault.
    let seen: Vec<Value> = Client::new()
        .get(format!("{sim_url}/_sim/requests"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(seen.last().unwrap()["key"], OPENAI_KEY);
    // Tokens came from the managed identity, for the vault and for Cosmos DB (no account
    // key is configured: the Entra path is the production default).
    let resources = msi.resources();
    assert!(
        resources.iter().any(|r| r.contains("vault.azure.net")),
        "{resources:?}"
    );
    assert!(
        resources.iter().any(|r| r.contains("cosmos")),
        "{resources:?}"
    );
    // A company on its own managed identity: its Entra tokens come from the credential's
    // cache after the first, and the token-cache lookups are a metric.
    let platform = admin_token_with(
        dir.path(),
        &[("SOPHIA_ADMIN_JWT_SECRET", ADMIN_SECRET)],
        &["--role", "PLATFORM_ADMIN"],
    );
    let (_, contoso) = create_and_exchange(
        &server,
        &platform,
        &json!({"companyId": "contoso", "agentType": "SOPHIA", "azureOpenaiEndpoint": sim_url,
                "azureOpenaiDeployment": "gpt-4o",
                "settings": {"authMode": "managedIdentity", "managedIdentityClientId": CONTOSO_IDENTITY}}),
    );
    for _ in 0..3 {
        let res = Client::new()
            .post(server.url("/chat"))
            .bearer_auth(&contoso)
            .json(&json!({"message": "hello on my own identity"}))
            .send()
            .unwrap();
        assert_eq!(res.status(), 200, "{}", res.text().unwrap_or_default());
    }
    let metrics = ingestion.wait_for("token-cache lookups", |e| {
        let token = |result: &str| {
            of_type(e, "MetricData").iter().any(|m| {
                m["data"]["baseData"]["metrics"][0]["name"] == "sophia.cache.lookups"
                    && m["data"]["baseData"]["properties"]["cache"] == "token"
                    && m["data"]["baseData"]["properties"]["result"] == result
            })
        };
        token("miss") && token("hit")
    });
    assert!(!metrics.is_empty());

    // Key Vault and Cosmos DB calls made inside requests are dependencies of those requests
    // in App Insights (same operation), named by operation, never by a secret or item id.
    let seen = ingestion.wait_for("Key Vault and Cosmos DB dependencies", |e| {
        let deps = of_type(e, "RemoteDependencyData");
        let named = |p: &str| {
            deps.iter().any(|d| {
                d["data"]["baseData"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(p))
            })
        };
        named("Key Vault ")
            && named("Cosmos DB ")
            && named("chat ")
            && of_type(e, "RequestData")
                .iter()
                .any(|r| r["data"]["baseData"]["name"] == "POST /chat")
    });
    let requests = of_type(&seen, "RequestData");
    let deps = of_type(&seen, "RemoteDependencyData");
    let chat = requests
        .iter()
        .find(|r| r["data"]["baseData"]["name"] == "POST /chat")
        .expect("the chat request");
    let op = chat["tags"]["ai.operation.id"].as_str().unwrap();
    let in_chat: Vec<&str> = deps
        .iter()
        .filter(|d| d["tags"]["ai.operation.id"] == op)
        .filter_map(|d| d["data"]["baseData"]["name"].as_str())
        .collect();
    assert!(
        in_chat.iter().any(|n| n.starts_with("Cosmos DB ")),
        "the chat request's store calls: {in_chat:?}"
    );
    assert!(
        in_chat.iter().any(|n| n.starts_with("chat ")),
        "the chat request's model call: {in_chat:?}"
    );
    for d in &deps {
        let name = d["data"]["baseData"]["name"].as_str().unwrap_or("");
        assert!(
            !name.contains(&flow.instance_id),
            "an id in a dependency name: {name}"
        );
        if name.starts_with("Key Vault ") {
            assert_eq!(name.split(' ').nth(3), Some("/secrets/{}"), "{name}");
            assert_eq!(d["data"]["baseData"]["type"], "HTTP", "{d}");
            assert!(d["data"]["baseData"]["resultCode"].is_string(), "{d}");
        }
        if name.starts_with("Cosmos DB ") {
            assert_eq!(d["data"]["baseData"]["type"], "azure.cosmosdb", "{d}");
        }
    }
    // The vault got the traceparent of its dependency span.
    let kv_dep = deps
        .iter()
        .find(|d| {
            d["data"]["baseData"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("Key Vault GET"))
        })
        .expect("a secret read");
    let expected = format!(
        "00-{}-{}-01",
        kv_dep["tags"]["ai.operation.id"].as_str().unwrap(),
        kv_dep["data"]["baseData"]["id"].as_str().unwrap()
    );
    assert!(
        vault
            .requests()
            .iter()
            .any(|r| r.traceparent.as_deref() == Some(expected.as_str())),
        "the vault saw {expected}"
    );
    let (status, logs) = server.stop();
    assert!(status.success());
    let raw = ingestion.raw();
    for secret in [
        MSI_TOKEN,
        OPENAI_KEY,
        flow.access_key.as_str(),
        "BEGIN PRIVATE KEY",
    ] {
        assert!(!raw.contains(secret), "a secret reached App Insights");
    }

    // A second process on an empty data dir: nothing SOPHIA needs was local. The service
    // token minted by the first process still verifies (same signing key, from the vault),
    // and the instance and its key are found in Cosmos DB.
    let dir2 = tempfile::tempdir().unwrap();
    let server = Server::start(dir2.path(), &env);
    let client = Client::new();
    let me = client
        .get(server.url("/agents/me"))
        .bearer_auth(&flow.service_token)
        .send()
        .unwrap();
    assert_eq!(me.status(), 200);
    let res = client
        .post(server.url("/agents/auth/token"))
        .json(
            &json!({"companyId": "acme", "agentType": "SOPHIA", "agentAccessKey": flow.access_key}),
        )
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let (_, logs2) = server.stop();
    let _ = sim.kill();
    let _ = sim.wait();
    for text in [&logs, &logs2] {
        for secret in [
            MSI_TOKEN,
            OPENAI_KEY,
            flow.access_key.as_str(),
            "BEGIN PRIVATE KEY",
        ] {
            assert!(!text.contains(secret), "a secret reached the logs");
        }
    }
}

#[test]
fn cosmos_with_local_secrets_and_sqlite_with_keyvault() {
    let (mut sim, sim_url) = start_simulator(OPENAI_KEY);
    // Cosmos DB (account key) beside the local encrypted secret store.
    let cosmos = support::rig::cosmos_endpoint();
    let database = support::rig::fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("SOPHIA_STORE", "cosmos"),
            ("SOPHIA_COSMOS_ENDPOINT", cosmos.as_str()),
            ("SOPHIA_COSMOS_DATABASE", database.as_str()),
            ("SOPHIA_COSMOS_KEY", EMULATOR_KEY),
            ("SOPHIA_COSMOS_CREATE_CONTAINERS", "true"),
            ("SOPHIA_ADMIN_JWT_SECRET", ADMIN_SECRET),
            ("SOPHIA_ALLOW_LOCAL_UPSTREAMS", "true"),
            ("SOPHIA_PUBLIC_URL", "https://sophia.example.com"),
        ],
    );
    assert_eq!(health(&server)["backends"]["secrets"], "local");
    let flow = client_flow(&server, dir.path(), &sim_url, "globex");
    assert!(flow.secret_id.starts_with("sophia-local:/secrets/"));
    let (_, logs) = server.stop();
    assert!(
        !logs.contains(EMULATOR_KEY),
        "the account key is not logged"
    );

    // SQLite beside Key Vault.
    let msi = ManagedIdentity::start(MSI_TOKEN);
    let vault = KeyVault::start(MSI_TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("SOPHIA_SECRETS", "keyvault"),
            ("SOPHIA_KEYVAULT_URL", vault.url.as_str()),
            ("SOPHIA_ADMIN_JWT_SECRET", ADMIN_SECRET),
            ("SOPHIA_AZURE_CREDENTIAL", "managed_identity"),
            ("IDENTITY_ENDPOINT", msi.endpoint.as_str()),
            ("IDENTITY_HEADER", msi.header.as_str()),
            ("SOPHIA_ALLOW_LOCAL_UPSTREAMS", "true"),
            ("SOPHIA_PUBLIC_URL", "https://sophia.example.com"),
        ],
    );
    assert_eq!(health(&server)["backends"]["store"], "sqlite");
    let flow = client_flow(&server, dir.path(), &sim_url, "initech");
    assert!(flow.secret_id.contains("/secrets/sophia-instance-"));
    server.stop();
    let _ = sim.kill();
    let _ = sim.wait();
}

/// A wrong credential choice fails at start-up, naming the variable.
#[test]
fn a_wrong_credential_fails_at_start_up() {
    let vault = KeyVault::start(MSI_TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let out = command(dir.path(), free_port())
        .env("SOPHIA_ADMIN_JWT_SECRET", ADMIN_SECRET)
        .env("SOPHIA_SECRETS", "keyvault")
        .env("SOPHIA_KEYVAULT_URL", &vault.url)
        .env("SOPHIA_AZURE_CREDENTIAL", "workload_identity")
        .env("SOPHIA_PUBLIC_URL", "https://sophia.example.com")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("workload_identity"), "{stderr}");
    assert!(stderr.contains("SOPHIA_AZURE_CREDENTIAL"), "{stderr}");
}

/// Two SOPHIA processes on one Cosmos DB database enforce one company's limit together:
/// requests per minute are exact counts, so the stated tolerance (two instances within 10 %
/// above the limit) is checked without estimates in the way.
#[test]
fn two_processes_on_one_cosmos_database_enforce_one_limit() {
    const LIMIT: u64 = 120;
    let (mut sim, sim_url) = start_simulator(OPENAI_KEY);
    let cosmos = support::rig::cosmos_endpoint();
    let database = support::rig::fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("SOPHIA_STORE", "cosmos"),
        ("SOPHIA_COSMOS_ENDPOINT", cosmos.as_str()),
        ("SOPHIA_COSMOS_DATABASE", database.as_str()),
        ("SOPHIA_COSMOS_KEY", EMULATOR_KEY),
        ("SOPHIA_COSMOS_CREATE_CONTAINERS", "true"),
        ("SOPHIA_ADMIN_JWT_SECRET", ADMIN_SECRET),
        ("SOPHIA_ALLOW_LOCAL_UPSTREAMS", "true"),
        ("SOPHIA_PUBLIC_URL", "https://sophia.example.com"),
    ];
    // One data dir: the two processes share the signing key and the local secret store, as
    // instances of one Function App share Key Vault.
    let a = Server::start(dir.path(), &env);
    let b = Server::start(dir.path(), &env);
    let admin = admin_token_with(
        dir.path(),
        &[("SOPHIA_ADMIN_JWT_SECRET", ADMIN_SECRET)],
        &["--role", "PLATFORM_ADMIN"],
    );
    let (_, token) = create_and_exchange(
        &a,
        &admin,
        &json!({"companyId": "umbrella", "agentType": "SOPHIA", "model": "gpt-4o",
                "azureOpenaiEndpoint": sim_url, "azureOpenaiDeployment": "gpt-4o",
                "credentials": {"azureOpenaiKey": OPENAI_KEY},
                "settings": {"requestsPerMinute": LIMIT}}),
    );
    // Stay inside one minute window (the test takes a few seconds).
    while chrono::Utc::now().timestamp().rem_euclid(60) > 35 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let hammer = |server: &Server| {
        let url = server.url("/chat");
        let token = token.clone();
        std::thread::spawn(move || {
            let client = Client::new();
            let (mut served, mut refused) = (0u64, 0u64);
            for _ in 0..400 {
                let res = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"message": "count me"}))
                    .send()
                    .unwrap();
                match res.status().as_u16() {
                    200 => served += 1,
                    429 => {
                        refused += 1;
                        if refused >= 10 {
                            break;
                        }
                    }
                    other => panic!("unexpected {other}: {}", res.text().unwrap_or_default()),
                }
            }
            (served, refused)
        })
    };
    let (ta, tb) = (hammer(&a), hammer(&b));
    let ((sa, ra), (sb, rb)) = (ta.join().unwrap(), tb.join().unwrap());
    let served = sa + sb;
    eprintln!("limit {LIMIT}: served {sa} + {sb} = {served}, refused {ra} + {rb}");
    assert!(
        ra >= 10 && rb >= 10,
        "both processes refused once over the limit"
    );
    assert!(sa > 0 && sb > 0, "both processes served");
    assert!(served >= LIMIT * 9 / 10, "served {served} of {LIMIT}");
    assert!(
        served <= LIMIT + LIMIT / 10,
        "served {served}: more than 10 % over {LIMIT}"
    );
    a.stop();
    b.stop();
    let _ = sim.kill();
    let _ = sim.wait();
}
