//! In-process stand-ins for Azure services that have no emulator, speaking their real wire
//! protocols so that the production clients (the Azure SDK's) are what is tested:
//!
//! * [`KeyVault`]: Key Vault secrets (api-version query, the `401` + `WWW-Authenticate: Bearer`
//!   challenge, secret bundles with versions, soft delete, `404 SecretNotFound`, `429` with
//!   `Retry-After`, `403 ForbiddenByRbac`);
//! * [`ManagedIdentity`]: the App Service / Functions managed-identity endpoint
//!   (`IDENTITY_ENDPOINT` + `X-IDENTITY-HEADER`, api-version 2019-08-01);
//! * [`StaticCredential`]: a `TokenCredential` handing out a fixed token (in-process tests).
//!
//! Each server runs on its own thread and runtime, so it serves sync and async tests alike.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Key Vault's API versions the stand-in accepts (the SDK's default is among them).
const KV_API_VERSIONS: &[&str] = &["7.4", "7.5", "7.6", "2025-07-01"];
/// The Entra tenant the challenge names.
pub const KV_TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

pub fn serve_router(app: axum::Router) -> u16 {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap().port()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

#[derive(Clone)]
struct Version {
    id: String,
    value: String,
    content_type: Option<String>,
    tags: serde_json::Map<String, Value>,
    created: i64,
}

/// One request as the vault saw it.
#[derive(Debug, Clone)]
pub struct KvRequest {
    pub method: String,
    pub path: String,
    pub api_version: Option<String>,
    pub authorized: bool,
    /// The W3C `traceparent` the caller sent, if any.
    pub traceparent: Option<String>,
}

#[derive(Default)]
struct KvState {
    token: String,
    secrets: Mutex<HashMap<String, Vec<Version>>>,
    deleted: Mutex<HashMap<String, Vec<Version>>>,
    requests: Mutex<Vec<KvRequest>>,
    throttle: AtomicU32,
    forbid: AtomicBool,
}

/// A Key Vault (secrets) stand-in on `http://127.0.0.1:PORT`.
#[derive(Clone)]
pub struct KeyVault {
    pub url: String,
    state: Arc<KvState>,
}

fn kv_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [("content-type", "application/json; charset=utf-8")],
        json!({"error": {"code": code, "message": message}}).to_string(),
    )
        .into_response()
}

fn challenge(message: &str) -> Response {
    let mut res = kv_error(StatusCode::UNAUTHORIZED, "Unauthorized", message);
    let value = format!(
        "Bearer authorization=\"https://login.microsoftonline.com/{KV_TENANT}\", resource=\"https://vault.azure.net\""
    );
    res.headers_mut()
        .insert("www-authenticate", value.parse().unwrap());
    res
}

fn bundle(v: &Version) -> Value {
    let mut b = json!({
        "value": v.value,
        "id": v.id,
        "attributes": {"enabled": true, "created": v.created, "updated": v.created,
                       "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90},
        "tags": v.tags
    });
    if let Some(ct) = &v.content_type {
        b["contentType"] = json!(ct);
    }
    b
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 127
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

async fn kv_handle(
    state: Arc<KvState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query: HashMap<String, String> = uri
        .query()
        .map(|q| serde_urlencoded::from_str(q).unwrap_or_default())
        .unwrap_or_default();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let authorized = auth == format!("Bearer {}", state.token);
    state.requests.lock().unwrap().push(KvRequest {
        method: method.to_string(),
        path: uri.path().to_owned(),
        api_version: query.get("api-version").cloned(),
        authorized,
        traceparent: headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    });
    match query.get("api-version") {
        Some(v) if KV_API_VERSIONS.contains(&v.as_str()) => {}
        Some(v) => {
            return kv_error(
                StatusCode::BAD_REQUEST,
                "BadParameter",
                &format!("The specified version ({v}) is not recognized."),
            );
        }
        None => {
            return kv_error(
                StatusCode::BAD_REQUEST,
                "BadParameter",
                "The request URI contains an invalid or missing api-version query parameter.",
            );
        }
    }
    if auth.is_empty() {
        return challenge("AKV10000: Request is missing a Bearer or PoP token.");
    }
    if !authorized {
        return challenge("AKV10032: Invalid issuer or token.");
    }
    if state.forbid.load(Ordering::SeqCst) {
        return kv_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "Caller is not authorized to perform action on resource. (ForbiddenByRbac)",
        );
    }
    if state
        .throttle
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        let mut res = kv_error(
            StatusCode::TOO_MANY_REQUESTS,
            "Throttled",
            "Request was not processed because too many requests were received.",
        );
        res.headers_mut()
            .insert("retry-after", "1".parse().unwrap());
        return res;
    }
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_owned();
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let not_found = |name: &str| {
        kv_error(
            StatusCode::NOT_FOUND,
            "SecretNotFound",
            &format!("A secret with (name/id) {name} was not found in this key vault."),
        )
    };
    match (method.as_str(), segments.as_slice()) {
        ("PUT", ["secrets", name]) => {
            if !valid_name(name) {
                return kv_error(
                    StatusCode::BAD_REQUEST,
                    "BadParameter",
                    "The request URI contains an invalid name.",
                );
            }
            let parsed: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(_) => {
                    return kv_error(StatusCode::BAD_REQUEST, "BadParameter", "Invalid JSON.");
                }
            };
            let Some(value) = parsed.get("value").and_then(Value::as_str) else {
                return kv_error(
                    StatusCode::BAD_REQUEST,
                    "BadParameter",
                    "Property 'value' is required.",
                );
            };
            if state.deleted.lock().unwrap().contains_key(*name) {
                return kv_error(
                    StatusCode::CONFLICT,
                    "Conflict",
                    &format!("Secret {name} is currently in a deleted but recoverable state."),
                );
            }
            let version = uuid::Uuid::new_v4().simple().to_string();
            let v = Version {
                id: format!("https://{host}/secrets/{name}/{version}"),
                value: value.to_owned(),
                content_type: parsed
                    .get("contentType")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                tags: parsed
                    .get("tags")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default(),
                created: chrono::Utc::now().timestamp(),
            };
            let out = bundle(&v);
            state
                .secrets
                .lock()
                .unwrap()
                .entry((*name).to_owned())
                .or_default()
                .push(v);
            (StatusCode::OK, axum::Json(out)).into_response()
        }
        ("GET", ["secrets", name]) | ("GET", ["secrets", name, ""]) => {
            match state
                .secrets
                .lock()
                .unwrap()
                .get(*name)
                .and_then(|v| v.last())
            {
                Some(v) => (StatusCode::OK, axum::Json(bundle(v))).into_response(),
                None => not_found(name),
            }
        }
        ("GET", ["secrets", name, version]) => {
            let secrets = state.secrets.lock().unwrap();
            let found = secrets
                .get(*name)
                .and_then(|vs| vs.iter().find(|v| v.id.ends_with(&format!("/{version}"))));
            match found {
                Some(v) => (StatusCode::OK, axum::Json(bundle(v))).into_response(),
                None => not_found(name),
            }
        }
        // Update Secret: changes a version's attributes and tags (tags are replaced whole).
        ("PATCH", ["secrets", name, version]) => {
            let parsed: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(_) => {
                    return kv_error(StatusCode::BAD_REQUEST, "BadParameter", "Invalid JSON.");
                }
            };
            if parsed.get("value").is_some() {
                return kv_error(
                    StatusCode::BAD_REQUEST,
                    "BadParameter",
                    "The value of a secret cannot be updated.",
                );
            }
            let mut secrets = state.secrets.lock().unwrap();
            let found = secrets.get_mut(*name).and_then(|vs| {
                vs.iter_mut()
                    .find(|v| v.id.ends_with(&format!("/{version}")))
            });
            match found {
                Some(v) => {
                    if let Some(tags) = parsed.get("tags").and_then(Value::as_object) {
                        v.tags = tags.clone();
                    }
                    let mut out = bundle(v);
                    out.as_object_mut().map(|o| o.remove("value"));
                    (StatusCode::OK, axum::Json(out)).into_response()
                }
                None => not_found(name),
            }
        }
        ("DELETE", ["secrets", name]) => match state.secrets.lock().unwrap().remove(*name) {
            Some(versions) => {
                let mut out = versions.last().map(bundle).unwrap_or_default();
                out.as_object_mut().map(|o| o.remove("value"));
                out["recoveryId"] = json!(format!("https://{host}/deletedsecrets/{name}"));
                out["deletedDate"] = json!(chrono::Utc::now().timestamp());
                state
                    .deleted
                    .lock()
                    .unwrap()
                    .insert((*name).to_owned(), versions);
                (StatusCode::OK, axum::Json(out)).into_response()
            }
            None => not_found(name),
        },
        _ => kv_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "Unsupported operation.",
        ),
    }
}

impl KeyVault {
    /// Starts a vault that accepts `Bearer <token>`.
    pub fn start(token: &str) -> Self {
        let state = Arc::new(KvState {
            token: token.to_owned(),
            ..Default::default()
        });
        let s = state.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                kv_handle(s.clone(), method, uri, headers, body)
            },
        );
        let port = serve_router(app);
        Self {
            url: format!("http://127.0.0.1:{port}"),
            state,
        }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<KvRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Reads of secret values (GETs that were authorized).
    pub fn secret_reads(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.authorized)
            .count()
    }

    /// The next `n` authorized requests answer 429 with `Retry-After: 1`.
    pub fn throttle(&self, n: u32) {
        self.state.throttle.store(n, Ordering::SeqCst);
    }

    /// Every authorized request answers 403 (the identity lacks its role).
    pub fn forbid(&self, on: bool) {
        self.state.forbid.store(on, Ordering::SeqCst);
    }

    /// The latest value of `name`, straight from the vault's storage.
    pub fn value(&self, name: &str) -> Option<String> {
        self.state
            .secrets
            .lock()
            .unwrap()
            .get(name)
            .and_then(|v| v.last())
            .map(|v| v.value.clone())
    }

    /// The tags of the latest version of `name`.
    pub fn tags(&self, name: &str) -> serde_json::Map<String, Value> {
        self.state
            .secrets
            .lock()
            .unwrap()
            .get(name)
            .and_then(|v| v.last())
            .map(|v| v.tags.clone())
            .unwrap_or_default()
    }

    /// Names of the secrets currently stored.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.state.secrets.lock().unwrap().keys().cloned().collect();
        names.sort();
        names
    }

    /// Stores a secret directly (as an operator would with `az keyvault secret set`); returns
    /// its full identifier.
    pub fn put(&self, name: &str, value: &str) -> String {
        self.put_tagged(name, value, &[])
    }

    /// Like [`Self::put`], with tags on the new version.
    pub fn put_tagged(&self, name: &str, value: &str, tags: &[(&str, &str)]) -> String {
        let host = self.url.trim_start_matches("http://").to_owned();
        let version = uuid::Uuid::new_v4().simple().to_string();
        let id = format!("https://{host}/secrets/{name}/{version}");
        self.state
            .secrets
            .lock()
            .unwrap()
            .entry(name.to_owned())
            .or_default()
            .push(Version {
                id: id.clone(),
                value: value.to_owned(),
                content_type: None,
                tags: tags
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), json!(v)))
                    .collect(),
                created: chrono::Utc::now().timestamp(),
            });
        id
    }
}

/// (resource, client id) of a token the identity endpoint issued.
pub type Issued = (String, Option<String>);

/// The App Service / Functions managed-identity endpoint. The system-assigned identity gets
/// `token`; a user-assigned one (`client_id=`) gets the token registered for it with
/// [`ManagedIdentity::with_identity`]; an unknown client id is refused as Azure refuses it.
#[derive(Clone)]
pub struct ManagedIdentity {
    /// `IDENTITY_ENDPOINT`.
    pub endpoint: String,
    /// `IDENTITY_HEADER`.
    pub header: String,
    token: String,
    resources: Arc<Mutex<Vec<String>>>,
    /// (resource, client id) of every token issued.
    issued: Arc<Mutex<Vec<Issued>>>,
    identities: Arc<Mutex<HashMap<String, String>>>,
}

impl ManagedIdentity {
    /// Issues `token` for every resource asked.
    pub fn start(token: &str) -> Self {
        let header = "test-identity-header".to_owned();
        let resources = Arc::new(Mutex::new(Vec::new()));
        let issued = Arc::new(Mutex::new(Vec::new()));
        let identities: Arc<Mutex<HashMap<String, String>>> = Arc::new(Mutex::new(HashMap::new()));
        let (r, is, ids, expected, tok) = (
            resources.clone(),
            issued.clone(),
            identities.clone(),
            header.clone(),
            token.to_owned(),
        );
        let app = axum::Router::new().route(
            "/msi/token",
            axum::routing::get(
                move |headers: HeaderMap,
                      axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>| {
                    let (r, is, ids, expected, tok) =
                        (r.clone(), is.clone(), ids.clone(), expected.clone(), tok.clone());
                    async move {
                        let header_ok = headers
                            .get("x-identity-header")
                            .and_then(|v| v.to_str().ok())
                            == Some(expected.as_str());
                        if !header_ok
                            || q.get("api-version").map(String::as_str) != Some("2019-08-01")
                        {
                            return (
                                StatusCode::BAD_REQUEST,
                                axum::Json(json!({"error": "invalid_request"})),
                            );
                        }
                        let client_id = q.get("client_id").cloned();
                        let (token, id) = match &client_id {
                            None => (tok, "00000000-0000-0000-0000-000000000001".to_owned()),
                            Some(c) => match ids.lock().unwrap().get(c) {
                                Some(t) => (t.clone(), c.clone()),
                                None => {
                                    return (
                                        StatusCode::BAD_REQUEST,
                                        axum::Json(json!({"statusCode": 400,
                                            "message": "No User Assigned or Delegated Managed Identity found for specified ClientId/ResourceId/PrincipalId.",
                                            "correlationId": uuid::Uuid::new_v4().to_string()})),
                                    );
                                }
                            },
                        };
                        let resource = q.get("resource").cloned().unwrap_or_default();
                        r.lock().unwrap().push(resource.clone());
                        is.lock().unwrap().push((resource.clone(), client_id));
                        let expires = (chrono::Utc::now().timestamp() + 3600).to_string();
                        (
                            StatusCode::OK,
                            axum::Json(json!({"access_token": token, "expires_on": expires,
                            "resource": resource, "token_type": "Bearer", "client_id": id})),
                        )
                    }
                },
            ),
        );
        let port = serve_router(app);
        Self {
            endpoint: format!("http://127.0.0.1:{port}/msi/token"),
            header,
            token: token.to_owned(),
            resources,
            issued,
            identities,
        }
    }

    /// Registers a user-assigned identity: tokens asked with `client_id` are `token`.
    pub fn with_identity(self, client_id: &str, token: &str) -> Self {
        self.identities
            .lock()
            .unwrap()
            .insert(client_id.to_owned(), token.to_owned());
        self
    }

    /// The resources tokens were asked for, in order.
    pub fn resources(&self) -> Vec<String> {
        self.resources.lock().unwrap().clone()
    }

    /// (resource, client id) of every token issued, in order.
    pub fn issued(&self) -> Vec<Issued> {
        self.issued.lock().unwrap().clone()
    }

    pub fn token(&self) -> &str {
        &self.token
    }
}

/// A `TokenCredential` with a fixed token, recording the scopes asked for.
#[derive(Debug, Default)]
pub struct StaticCredential {
    pub token: String,
    pub scopes: Mutex<Vec<String>>,
}

impl StaticCredential {
    pub fn new(token: &str) -> Arc<Self> {
        Arc::new(Self {
            token: token.to_owned(),
            scopes: Mutex::new(Vec::new()),
        })
    }
}

#[async_trait::async_trait]
impl azure_core::credentials::TokenCredential for StaticCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<azure_core::credentials::TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        self.scopes
            .lock()
            .unwrap()
            .extend(scopes.iter().map(|s| (*s).to_owned()));
        Ok(azure_core::credentials::AccessToken::new(
            self.token.clone(),
            azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
        ))
    }
}
