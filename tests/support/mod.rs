//! Shared test support: an in-process app on port 0 with a temp data dir, typed helpers,
//! and the store and knowledge-index contract suites.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod appinsights;
pub mod azure;
pub mod azurite;
pub mod binary;
pub mod faulty_store;
pub mod index_contract;
pub mod pdf;
pub mod rig;
pub mod search_standin;
pub mod store_contract;

use std::collections::HashMap;
use std::sync::Arc;

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use sophia::config::Settings;
use sophia::domain::TenantId;
use sophia::startup::Application;
use sophia::state::AppState;
use tokio::sync::oneshot;

/// A running app and what tests need to talk to it.
pub struct TestApp {
    pub base: String,
    pub port: u16,
    pub client: reqwest::Client,
    pub state: AppState,
    pub dir: Arc<tempfile::TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

pub const ADMIN_SECRET: &str = "test-admin-secret-0123456789-abcdefghijklmnop";

/// Settings for tests: temp data dir, port 0, cheap bcrypt, generous rate limits.
pub fn test_settings(dir: &std::path::Path, overrides: &[(&str, &str)]) -> Settings {
    let mut env: HashMap<String, String> = HashMap::from([
        ("SOPHIA_PORT".into(), "0".into()),
        ("SOPHIA_DATA_DIR".into(), dir.display().to_string()),
        ("SOPHIA_BCRYPT_COST".into(), "4".into()),
        ("SOPHIA_ADMIN_JWT_SECRET".into(), ADMIN_SECRET.into()),
        (
            "SOPHIA_TOKEN_RATE_LIMIT_PER_ADDRESS".into(),
            "100000".into(),
        ),
        (
            "SOPHIA_TOKEN_RATE_LIMIT_PER_COMPANY".into(),
            "100000".into(),
        ),
        ("SOPHIA_LOG".into(), "warn".into()),
        // In-process apps run inside the test binary: the sandboxed extractor is the real one.
        (
            "SOPHIA_EXTRACTOR".into(),
            env!("CARGO_BIN_EXE_sophia").into(),
        ),
    ]);
    for (k, v) in overrides {
        // An empty override unsets the variable (empty values count as unset).
        env.insert((*k).into(), (*v).into());
    }
    Settings::from_lookup(|k| env.get(k).cloned()).expect("test settings")
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// The emulator's well-known account key (it ignores auth; the SDK signs with it).
pub const COSMOS_EMULATOR_KEY: &str =
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw==";

/// An app on the Cosmos DB emulator rig (a fresh database), local secrets.
pub async fn spawn_cosmos_app() -> TestApp {
    let endpoint = format!("{}/", rig::cosmos_endpoint());
    let database = rig::fresh_database();
    spawn_app_with(&[
        ("SOPHIA_STORE", "cosmos"),
        ("SOPHIA_COSMOS_ENDPOINT", &endpoint),
        ("SOPHIA_COSMOS_DATABASE", &database),
        ("SOPHIA_COSMOS_KEY", COSMOS_EMULATOR_KEY),
        ("SOPHIA_COSMOS_CREATE_CONTAINERS", "true"),
        ("SOPHIA_PUBLIC_URL", "https://sophia.example.com"),
    ])
    .await
}

pub async fn spawn_app_with(overrides: &[(&str, &str)]) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    spawn_app_in(dir, overrides).await
}

/// Starts an app on an existing data dir (restart tests).
pub async fn spawn_app_in(dir: Arc<tempfile::TempDir>, overrides: &[(&str, &str)]) -> TestApp {
    spawn_app_on(dir, overrides, None).await
}

/// An app whose SQLite store (in a fresh data dir) is wrapped by a [`faulty_store::FaultyStore`]
/// driven by the returned switch.
pub async fn spawn_faulty_app(overrides: &[(&str, &str)]) -> (TestApp, Arc<faulty_store::Switch>) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let inner = sophia::store::sqlite::SqliteStore::open(&dir.path().join("sophia.db")).unwrap();
    let switch = Arc::new(faulty_store::Switch::default());
    let store: Arc<dyn sophia::store::Store> = Arc::new(faulty_store::FaultyStore {
        inner: Arc::new(inner),
        switch: Arc::clone(&switch),
    });
    (spawn_app_on(dir, overrides, Some(store)).await, switch)
}

async fn spawn_app_on(
    dir: Arc<tempfile::TempDir>,
    overrides: &[(&str, &str)],
    store: Option<Arc<dyn sophia::store::Store>>,
) -> TestApp {
    if std::env::var("TEST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_test_writer()
            .try_init();
    }
    let settings = test_settings(dir.path(), overrides);
    let app = Application::build_with_store(settings, store)
        .await
        .expect("build app");
    let port = app.port();
    let state = app.state();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        app.run_until_stopped(async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    TestApp {
        base: format!("http://127.0.0.1:{port}"),
        port,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        state,
        dir,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

/// A created instance and its one-time key.
pub struct Created {
    pub id: String,
    pub company: String,
    pub key: String,
    pub body: Value,
}

impl TestApp {
    /// Stops the server and waits for it to drain.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn platform_token(&self) -> String {
        self.state.admin.mint("PLATFORM_ADMIN", None, 600).unwrap()
    }

    pub fn admin_token(&self, company: &str) -> String {
        self.state
            .admin
            .mint("ADMIN", Some(&TenantId::parse(company).unwrap()), 600)
            .unwrap()
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let mut req = self.client.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.request(Method::GET, path, Some(token), None).await
    }

    /// Creates an instance for `company` (as platform admin) and returns its key.
    pub async fn create_instance(&self, company: &str) -> Created {
        self.create_instance_with(company, json!({})).await
    }

    pub async fn create_instance_with(&self, company: &str, extra: Value) -> Created {
        let mut body = json!({
            "companyId": company,
            "agentType": "SOPHIA",
            "model": "gpt-4o",
            "azureProjectId": format!("proj-{company}"),
            "azureOpenaiEndpoint": format!("https://{company}.openai.azure.com"),
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let resp = self
            .request(
                Method::POST,
                "/admin/agent-instances",
                Some(&self.platform_token()),
                Some(body),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::CREATED, "create {company}");
        let body: Value = resp.json().await.unwrap();
        Created {
            id: body["id"].as_str().unwrap().to_owned(),
            company: company.to_owned(),
            key: body["agentAccessKey"].as_str().unwrap().to_owned(),
            body,
        }
    }

    pub async fn exchange(&self, company: &str, key: &str) -> Response {
        self.request(
            Method::POST,
            "/agents/auth/token",
            None,
            Some(json!({"companyId": company, "agentType": "SOPHIA", "agentAccessKey": key})),
        )
        .await
    }

    /// Exchanges a key and returns the service token (asserting success).
    pub async fn service_token(&self, company: &str, key: &str) -> String {
        let resp = self.exchange(company, key).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }

    pub async fn audit(&self, query: &str) -> Vec<Value> {
        let resp = self
            .get(
                &format!("/admin/audit-logs?{query}"),
                &self.platform_token(),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        body["items"].as_array().unwrap().clone()
    }
}

/// Asserts a problem+json answer with the given status and code; returns the body.
pub async fn assert_problem(resp: Response, status: StatusCode, code: &str) -> Value {
    let got = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let has_id = resp.headers().contains_key("x-request-id");
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(got, status, "status; body = {body}");
    assert_eq!(
        ct.as_deref(),
        Some("application/problem+json"),
        "content type; body = {body}"
    );
    assert_eq!(body["code"], code, "code; body = {body}");
    assert_eq!(body["status"], status.as_u16());
    assert!(body["title"].is_string() && body["detail"].is_string() && body["type"].is_string());
    assert!(body["requestId"].is_string());
    assert!(has_id, "x-request-id header");
    body
}

/// A running Azure OpenAI simulator on a free loopback port.
pub struct SimServer {
    pub base: String,
    pub sim: sophia::dev::simulator::Simulator,
}

pub async fn spawn_simulator(config: sophia::dev::simulator::SimConfig) -> SimServer {
    let sim = sophia::dev::simulator::Simulator::new(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let serve = sim.clone();
    tokio::spawn(async move {
        sophia::dev::simulator::serve(listener, serve, std::future::pending())
            .await
            .unwrap()
    });
    SimServer { base, sim }
}
