//! Azure-backends benchmark: the real binary on SQLite + the local vault and on Cosmos DB (the
//! emulator rig) + Key Vault (the in-process stand-in, reached with a managed-identity token),
//! side by side in one run:
//!
//! * start-up to the first `GET /` answer;
//! * a cold tenant's first `/chat` (its runtime is loaded: instance from the store, credential
//!   bundle from the vault) against its second (warm), p50 / p99, and the ratio of the two
//!   backends;
//! * Key Vault reads per cold load, and Key Vault reads per active tenant per hour at the
//!   default cache TTL — measured on a server with a short TTL (every reload of every tenant
//!   counted over a window) and scaled to the default 300 s.
//!
//! Prints a table and appends it to BENCHMARKS.md.
//!
//! Run: `cargo bench --bench azure_backends` (Node.js for the Cosmos DB emulator rig; the rig's
//! npm packages are installed on first use).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[allow(dead_code)]
#[path = "../tests/support/azure.rs"]
mod azure;
#[allow(dead_code)]
#[path = "../tests/support/binary.rs"]
mod binary;
#[allow(dead_code)]
#[path = "../tests/support/rig.rs"]
mod rig;

use std::time::{Duration, Instant};

use azure::{KeyVault, ManagedIdentity};
use binary::{Server, admin_token_with, start_simulator};
use reqwest::blocking::Client;
use serde_json::{Value, json};

const SIM_KEY: &str = "bench-sim-key-azure";
const MSI_TOKEN: &str = "MSI-TOKEN-bench";
const ADMIN_SECRET: &str = "bench-admin-secret-0123456789-abcdefghijklmnopqrstuv";
/// Tenants measured cold and warm per backend.
const TENANTS: usize = 60;
/// The default `SOPHIA_TENANT_CACHE_TTL_SECS`.
const DEFAULT_TTL_SECS: f64 = 300.0;
/// The short TTL of the reload-rate server, and how long its tenants stay active.
const SHORT_TTL_SECS: u64 = 2;
const ACTIVE_WINDOW: Duration = Duration::from_secs(20);
const ACTIVE_TENANTS: usize = 5;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Creates an instance for `company` and exchanges its key; returns the service token.
fn onboard(client: &Client, server: &Server, admin: &str, sim_url: &str, company: &str) -> String {
    let res = client
        .post(server.url("/admin/agent-instances"))
        .bearer_auth(admin)
        .json(
            &json!({"companyId": company, "agentType": "SOPHIA", "azureProjectId": "p",
                      "azureOpenaiEndpoint": sim_url, "azureOpenaiDeployment": "gpt-4o",
                      "credentials": {"azureOpenaiKey": SIM_KEY}, "settings": {"topK": 1}}),
        )
        .send()
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().unwrap_or_default());
    let key = res.json::<Value>().unwrap()["agentAccessKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = client
        .post(server.url("/agents/auth/token"))
        .json(&json!({"companyId": company, "agentAccessKey": key}))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().unwrap_or_default());
    res.json::<Value>().unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// One `/chat`; its latency in ms.
fn chat(client: &Client, server: &Server, token: &str) -> f64 {
    let started = Instant::now();
    let res = client
        .post(server.url("/chat"))
        .bearer_auth(token)
        .json(&json!({"message": "What are the opening hours?"}))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().unwrap_or_default());
    let _ = res.bytes();
    started.elapsed().as_secs_f64() * 1000.0
}

struct Measured {
    startup_ms: f64,
    cold: Vec<f64>,
    warm: Vec<f64>,
    kv_reads_per_cold_load: Option<f64>,
}

fn measure(label: &str, env: &[(&str, &str)], sim_url: &str, vault: Option<&KeyVault>) -> Measured {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let server = Server::start(dir.path(), env);
    let startup_ms = started.elapsed().as_secs_f64() * 1000.0;
    let admin = admin_token_with(
        dir.path(),
        &[("SOPHIA_ADMIN_JWT_SECRET", ADMIN_SECRET)],
        &["--role", "PLATFORM_ADMIN", "--ttl", "36000"],
    );
    let client = Client::new();
    // Warm the process (connection pools, the signing key) with one tenant of its own.
    let first = onboard(
        &client,
        &server,
        &admin,
        sim_url,
        &format!("{label}-warmup"),
    );
    chat(&client, &server, &first);
    let tokens: Vec<String> = (0..TENANTS)
        .map(|i| {
            onboard(
                &client,
                &server,
                &admin,
                sim_url,
                &format!("{label}-{i:03}"),
            )
        })
        .collect();
    let reads_before = vault.map(KeyVault::secret_reads);
    let mut cold = Vec::with_capacity(TENANTS);
    for token in &tokens {
        cold.push(chat(&client, &server, token));
    }
    let reads_after = vault.map(KeyVault::secret_reads);
    let mut warm = Vec::with_capacity(TENANTS);
    for token in &tokens {
        warm.push(chat(&client, &server, token));
    }
    cold.sort_by(f64::total_cmp);
    warm.sort_by(f64::total_cmp);
    server.stop();
    Measured {
        startup_ms,
        cold,
        warm,
        kv_reads_per_cold_load: reads_before
            .zip(reads_after)
            .map(|(b, a)| (a - b) as f64 / TENANTS as f64),
    }
}

/// Key Vault reads per tenant per TTL period: `ACTIVE_TENANTS` tenants chat every 100 ms for
/// `ACTIVE_WINDOW` on a server whose cache TTL is `SHORT_TTL_SECS`.
fn reload_rate(env: &[(&str, &str)], sim_url: &str, vault: &KeyVault) -> (usize, f64) {
    let dir = tempfile::tempdir().unwrap();
    let ttl = SHORT_TTL_SECS.to_string();
    let mut env = env.to_vec();
    env.push(("SOPHIA_TENANT_CACHE_TTL_SECS", ttl.as_str()));
    let server = Server::start(dir.path(), &env);
    let admin = admin_token_with(
        dir.path(),
        &[("SOPHIA_ADMIN_JWT_SECRET", ADMIN_SECRET)],
        &["--role", "PLATFORM_ADMIN", "--ttl", "36000"],
    );
    let client = Client::new();
    let tokens: Vec<String> = (0..ACTIVE_TENANTS)
        .map(|i| onboard(&client, &server, &admin, sim_url, &format!("active-{i}")))
        .collect();
    let before = vault.secret_reads();
    let started = Instant::now();
    let mut requests = 0usize;
    while started.elapsed() < ACTIVE_WINDOW {
        for token in &tokens {
            chat(&client, &server, token);
            requests += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let reads = vault.secret_reads() - before;
    server.stop();
    let periods = elapsed / SHORT_TTL_SECS as f64;
    (requests, reads as f64 / ACTIVE_TENANTS as f64 / periods)
}

fn main() {
    let (mut sim, sim_url) = start_simulator(SIM_KEY);
    let msi = ManagedIdentity::start(MSI_TOKEN);
    let vault = KeyVault::start(MSI_TOKEN);
    let cosmos = rig::cosmos_endpoint();
    let database = rig::fresh_database();
    let common = [
        ("SOPHIA_LOG", "warn"),
        ("SOPHIA_ADMIN_JWT_SECRET", ADMIN_SECRET),
        ("SOPHIA_ALLOW_LOCAL_UPSTREAMS", "true"),
        ("SOPHIA_TOKEN_RATE_LIMIT_PER_ADDRESS", "0"),
        ("SOPHIA_TOKEN_RATE_LIMIT_PER_COMPANY", "0"),
    ];
    let mut azure_env = common.to_vec();
    azure_env.extend([
        ("SOPHIA_STORE", "cosmos"),
        ("SOPHIA_COSMOS_ENDPOINT", cosmos.as_str()),
        ("SOPHIA_COSMOS_DATABASE", database.as_str()),
        ("SOPHIA_COSMOS_CREATE_CONTAINERS", "true"),
        ("SOPHIA_SECRETS", "keyvault"),
        ("SOPHIA_KEYVAULT_URL", vault.url.as_str()),
        ("SOPHIA_AZURE_CREDENTIAL", "managed_identity"),
        ("IDENTITY_ENDPOINT", msi.endpoint.as_str()),
        ("IDENTITY_HEADER", msi.header.as_str()),
        ("SOPHIA_PUBLIC_URL", "https://sophia.example.com"),
    ]);

    // The Azure pair first creates the containers; measure its start-up on the second run.
    let _ = measure("create", &azure_env, &sim_url, Some(&vault));
    let local = measure("local", &common, &sim_url, None);
    let remote = measure("azure", &azure_env, &sim_url, Some(&vault));
    let (active_requests, reads_per_period) = reload_rate(&azure_env, &sim_url, &vault);
    let _ = sim.kill();
    let _ = sim.wait();

    let load = |m: &Measured| percentile(&m.cold, 0.5) - percentile(&m.warm, 0.5);
    let reads_per_load = remote.kv_reads_per_cold_load.unwrap_or(f64::NAN);
    let reads_per_hour = reads_per_period * 3600.0 / DEFAULT_TTL_SECS;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let row = |name: &str, m: &Measured| {
        format!(
            "| {name} | {:.1} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} |\n",
            m.startup_ms,
            percentile(&m.cold, 0.5),
            percentile(&m.cold, 0.99),
            percentile(&m.warm, 0.5),
            percentile(&m.warm, 0.99),
            load(m),
        )
    };
    let mut table = format!(
        "\n## Azure backends — {} ({cores} cores, release build; Cosmos DB emulator rig and Key Vault stand-in on loopback)\n\n\
         {TENANTS} tenants each: a cold tenant's first `/chat` (runtime loaded from the store and the vault) and its second (warm):\n\n\
         | backends | start-up ms (readiness polled every 25 ms) | cold first chat p50 / p99 ms | warm chat p50 / p99 ms | load cost p50 ms |\n\
         |---|---|---|---|---|\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    table.push_str(&row("SQLite + local vault", &local));
    table.push_str(&row("Cosmos DB + Key Vault (managed identity)", &remote));
    table.push_str(&format!(
        "\n| measure | value |\n|---|---|\n\
         | cold first chat p50, Cosmos + Key Vault / SQLite + local | {:.2}× |\n\
         | Key Vault reads per cold tenant load | {reads_per_load:.2} |\n\
         | Key Vault reads per active tenant per TTL period (measured: TTL {SHORT_TTL_SECS} s, {ACTIVE_TENANTS} tenants, {active_requests} chats over {} s) | {reads_per_period:.2} |\n\
         | Key Vault reads per active tenant per hour at the default TTL (300 s ± 10 %) | {reads_per_hour:.1} |\n",
        percentile(&remote.cold, 0.5) / percentile(&local.cold, 0.5),
        ACTIVE_WINDOW.as_secs(),
    ));
    println!("{table}");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md");
    let mut existing = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    existing.push_str(&table);
    std::fs::write(path, existing).unwrap();
}
