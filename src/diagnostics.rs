//! Configuration diagnostics (`POST /config/test`, `POST /admin/agent-instances/{id}/config-test`):
//! a company's Azure setup checked piece by piece — credential bundle, chat deployment,
//! embedding deployment, search index, knowledge source — each with `ok`, `latencyMs` and an
//! actionable `detail`. Checks read everything afresh (no cached runtime) and each is bounded
//! by `SOPHIA_CONFIG_TEST_TIMEOUT_MS`. No detail ever carries a credential: details are built
//! from status codes and names, and every credential value is scrubbed from them regardless.

use std::future::Future;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::Serialize;

use crate::domain::{AgentInstance, InstanceId, Provider, TenantId};
use crate::knowledge::IndexError;
use crate::knowledge::azure_search::VECTOR_FIELD;
use crate::knowledge::source::SourceError;
use crate::llm::ChatParams;
use crate::llm::client::ModelEndpoint;
use crate::llm::wire::WireMessage;
use crate::secrets::SecretError;
use crate::secrets::bundle::CredentialBundle;
use crate::state::App;
use crate::tenant::runtime::{Knowledge, TenantRuntime};
use crate::upstream::UpstreamError;

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub latency_ms: u64,
    pub detail: String,
    /// The check did not apply (nothing configured for it); `ok` is true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    /// The model the chat deployment reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The failover deployment checked (`deployments[].name`): one `chatDeployment` check
    /// per entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub ok: bool,
    pub company_id: TenantId,
    pub instance_id: InstanceId,
    pub checks: Vec<Check>,
    pub tested_at: DateTime<Utc>,
}

impl Report {
    /// Names of the checks that failed.
    pub fn failed(&self) -> Vec<&'static str> {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name)
            .collect()
    }
}

fn check(name: &'static str, started: Instant, result: Result<String, String>) -> Check {
    let (ok, detail) = match result {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    Check {
        name,
        ok,
        latency_ms: started.elapsed().as_millis() as u64,
        detail,
        skipped: false,
        model: None,
        deployment: None,
    }
}

fn skipped(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        ok: true,
        latency_ms: 0,
        detail: detail.into(),
        skipped: true,
        model: None,
        deployment: None,
    }
}

fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

/// Runs `future` within `limit`; a timeout is an error naming the limit.
async fn bounded<T>(
    limit: Duration,
    what: &str,
    future: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| Err(format!("{what} did not answer within {}", seconds(limit))))
}

fn service_name(endpoint: &ModelEndpoint) -> &'static str {
    match endpoint.provider {
        Provider::AzureOpenai => "Azure OpenAI",
        Provider::Openai => "the OpenAI-compatible endpoint",
    }
}

/// An upstream failure in words an admin can act on.
fn model_failure(endpoint: &ModelEndpoint, managed_identity: bool, e: UpstreamError) -> String {
    let service = service_name(endpoint);
    match e {
        UpstreamError::Rejected {
            status: status @ (401 | 403),
            ..
        } => {
            if managed_identity {
                format!(
                    "{service} rejected SOPHIA's managed-identity token ({status}): grant the identity \
                     'Cognitive Services OpenAI User' on the resource"
                )
            } else {
                format!("{service} rejected the key ({status}): check credentials.azureOpenaiKey")
            }
        }
        UpstreamError::Rejected { status: 404, .. } => format!(
            "deployment '{}' not found (404) at {}",
            endpoint.deployment,
            endpoint.base.host_str().unwrap_or("the endpoint")
        ),
        UpstreamError::Rejected { status, .. } => {
            format!("{service} refused the test request ({status})")
        }
        UpstreamError::Timeout(_) => format!("{service} did not answer in time"),
        UpstreamError::Unavailable(cause) => {
            format!("{service} is unreachable: {cause}")
        }
        UpstreamError::Configuration(cause) => cause,
        UpstreamError::Protocol(cause) => {
            format!("{service} answered something unexpected: {cause}")
        }
        UpstreamError::RateLimited { .. } => format!("{service} is rate limiting (429)"),
    }
}

/// A 429 means the key and deployment were accepted: the check passes, with a warning.
fn throttled(endpoint: &ModelEndpoint) -> String {
    format!(
        "deployment '{}' exists and accepted the credentials, but is rate limiting (429): it is at its quota",
        endpoint.deployment
    )
}

/// One chat deployment answers a one-token turn.
async fn chat_check(
    app: &App,
    endpoint: &ModelEndpoint,
    managed_identity: bool,
    limit: Duration,
) -> Check {
    let started = Instant::now();
    let messages = [WireMessage::text("user", "ping".into())];
    let params = ChatParams {
        max_tokens: Some(1),
        ..Default::default()
    };
    let result = bounded(limit, service_name(endpoint), async {
        match app.models.complete(endpoint, &messages, &params).await {
            Ok(done) => Ok(Some(done.model)),
            Err(UpstreamError::RateLimited { .. }) => Ok(None),
            Err(e) => Err(model_failure(endpoint, managed_identity, e)),
        }
    })
    .await;
    let mut c = check(
        "chatDeployment",
        started,
        result
            .as_ref()
            .map(|m| match m {
                Some(model) => format!(
                    "deployment '{}' answered (model {model})",
                    endpoint.deployment
                ),
                None => throttled(endpoint),
            })
            .map_err(Clone::clone),
    );
    c.model = result.ok().flatten();
    c
}

/// Runs every check for `instance`.
pub async fn run(app: &App, instance: &AgentInstance) -> Report {
    let limit = app.settings.config_test_timeout;
    let managed_identity = crate::domain::authority::AuthMode::of(instance)
        == crate::domain::authority::AuthMode::ManagedIdentity;
    let mut checks = Vec::with_capacity(5);

    // 1. The credential bundle.
    let started = Instant::now();
    let bundle = match &instance.keyvault_secret_id {
        None => {
            checks.push(check(
                "secret",
                started,
                if managed_identity {
                    Ok("no keyvaultSecretId: the instance uses its company's managed identity".into())
                } else {
                    Err("no keyvaultSecretId: the instance has no credentials; PATCH credentials (or have a platform admin bind the company's managed identity)".into())
                },
            ));
            CredentialBundle::default()
        }
        Some(id) => {
            let read = bounded(limit, "the secret store", async {
                match app.secrets.get_owned(id).await {
                    Ok((_, Some(owner))) if owner != instance.tenant_id.as_str() => Err(format!(
                        "the secret '{}' is bound to another company; it is not used",
                        secret_name(id)
                    )),
                    Ok((secret, _)) => Ok(secret),
                    Err(SecretError::NotFound) => Err(format!(
                        "the secret '{}' was not found in the secret store (404)",
                        secret_name(id)
                    )),
                    Err(other) => Err(format!("the credential bundle could not be read: {other}")),
                }
            })
            .await;
            match read {
                Ok(secret) => {
                    let bundle = CredentialBundle::from_secret(&secret);
                    let fields = bundle.present_fields();
                    checks.push(check(
                        "secret",
                        started,
                        Ok(format!(
                            "credential bundle '{}' read ({})",
                            secret_name(id),
                            if fields.is_empty() {
                                "no credentials in it".to_owned()
                            } else {
                                fields.join(", ")
                            }
                        )),
                    ));
                    bundle
                }
                Err(detail) => {
                    checks.push(check("secret", started, Err(detail)));
                    CredentialBundle::default()
                }
            }
        }
    };
    let secrets: Vec<String> = [
        &bundle.azure_openai_key,
        &bundle.azure_search_key,
        &bundle.knowledge_sas,
        &bundle.app_insights_connection_string,
    ]
    .into_iter()
    .flatten()
    .chain(bundle.deployment_keys.iter().flat_map(|keys| keys.values()))
    .map(|s| s.expose_secret().to_owned())
    .filter(|s| s.len() >= 4)
    .collect();
    let runtime = TenantRuntime::build(instance.clone(), bundle, app.runtimes.resolver());

    // A `foundry` instance: its project, agent and vector store instead of the deployments
    // and the search index.
    if runtime.foundry.is_some() {
        checks.extend(foundry_checks(app, &runtime, limit).await);
    } else {
        deployment_checks(app, &runtime, managed_identity, limit, &mut checks).await;
    }

    // 5. The knowledge source.
    let started = Instant::now();
    let listed = match runtime.source() {
        Err(reason) => Err(reason),
        Ok(source) => {
            bounded(limit, "the knowledge source", async {
                match source.list().await {
                    Ok(docs) => Ok(format!("{} documents in {}", docs.len(), source.describe())),
                    Err(SourceError::Missing(m) | SourceError::Denied(m)) => Err(m),
                    Err(other) => Err(format!("the knowledge source could not be listed: {other}")),
                }
            })
            .await
        }
    };
    checks.push(check("knowledgeSource", started, listed));

    for c in &mut checks {
        for secret in &secrets {
            if c.detail.contains(secret.as_str()) {
                c.detail = c.detail.replace(secret.as_str(), "[REDACTED]");
            }
        }
    }
    Report {
        ok: checks.iter().all(|c| c.ok),
        company_id: instance.tenant_id.clone(),
        instance_id: instance.id,
        checks,
        tested_at: Utc::now(),
    }
}

/// The chat and embedding deployments and the search index of a `sophia` instance.
async fn deployment_checks(
    app: &App,
    runtime: &TenantRuntime,
    managed_identity: bool,
    limit: Duration,
    checks: &mut Vec<Check>,
) {
    // 2. The chat deployment — each of them, for an instance with failover deployments.
    match &runtime.chat {
        Err(reason) => checks.push(check("chatDeployment", Instant::now(), Err(reason.clone()))),
        Ok(pool) => {
            let now = Instant::now();
            let each = pool.entries().iter().map(|entry| async move {
                let mut c = match &entry.endpoint {
                    Err(reason) => check("chatDeployment", Instant::now(), Err(reason.clone())),
                    Ok(endpoint) => chat_check(app, endpoint, managed_identity, limit).await,
                };
                if let Some(name) = &entry.name {
                    if c.ok && entry.breaker.is_open(now) {
                        c.detail.push_str(
                            "; its circuit was open (turns skipped it): a turn probes it again \
                             once the breaker's time is up",
                        );
                    }
                    c.deployment = Some(name.to_string());
                }
                c
            });
            checks.extend(futures_util::future::join_all(each).await);
        }
    }

    // 3. The embedding deployment.
    checks.push(match &runtime.embeddings {
        None => skipped(
            "embeddingDeployment",
            "no azureEmbeddingDeployment: knowledge search is keyword-only",
        ),
        Some(endpoint) => {
            let started = Instant::now();
            let result = bounded(limit, service_name(endpoint), async {
                match app.models.embed(endpoint, &["ping".to_owned()]).await {
                    Ok(vectors) => Ok(format!(
                        "deployment '{}' answered ({} dimensions)",
                        endpoint.deployment,
                        vectors.first().map_or(0, Vec::len)
                    )),
                    Err(UpstreamError::RateLimited { .. }) => Ok(throttled(endpoint)),
                    Err(e) => Err(model_failure(endpoint, managed_identity, e)),
                }
            })
            .await;
            check("embeddingDeployment", started, result)
        }
    });

    // 4. The search index.
    checks.push(search_check(runtime, limit).await);
}

/// A `foundry` instance's project (reachable with the company's identity), its agent (exists,
/// runs the expected model) and its vector store (status, file counts).
async fn foundry_checks(app: &App, runtime: &TenantRuntime, limit: Duration) -> Vec<Check> {
    let instance = &runtime.instance;
    let started = Instant::now();
    let project = match crate::tenant::runtime::foundry_project(
        instance,
        runtime.identity.as_ref(),
        &app.upstreams,
        &app.http,
        None,
    ) {
        Ok(p) => p,
        Err(reason) => return vec![check("foundryProject", started, Err(reason))],
    };
    let failure = |e: UpstreamError| match e {
        UpstreamError::Rejected {
            status: status @ (401 | 403),
            ..
        } => format!(
            "the Foundry project rejected the company's identity ({status}): grant it 'Azure AI \
             User' on the project"
        ),
        other => other.to_string(),
    };
    let mut out = Vec::with_capacity(3);
    let agent = instance
        .config
        .azure_agent_id
        .as_deref()
        .and_then(crate::domain::AgentRef::parse);
    let started = Instant::now();
    let read = match &agent {
        None => None,
        Some(a) => Some(
            bounded(limit, "the Foundry project", async {
                project.agent_version(a).await.map_err(failure)
            })
            .await,
        ),
    };
    // The project answers: any agent read that is not refused says so.
    out.push(check(
        "foundryProject",
        started,
        match &read {
            Some(Err(e)) => Err(e.clone()),
            _ => Ok(format!("project {} reachable", project.endpoint)),
        },
    ));
    let expected = instance
        .config
        .azure_openai_deployment
        .clone()
        .or_else(|| instance.config.model.clone());
    out.push(match (&agent, read) {
        (None, _) => check(
            "foundryAgent",
            started,
            Err("no azureAgentId yet: POST /admin/agent-instances/{id}/provision".into()),
        ),
        (Some(a), Some(Ok(None))) => check(
            "foundryAgent",
            started,
            Err(format!("agent version '{a}' does not exist in the project")),
        ),
        (Some(a), Some(Ok(Some(version)))) => {
            let model = version["definition"]["model"].as_str().unwrap_or("").to_owned();
            let result = match &expected {
                Some(e) if *e != model => Err(format!(
                    "agent '{a}' runs model '{model}', not '{e}': POST …/provision publishes a new version"
                )),
                _ => Ok(format!("agent '{a}' exists (model '{model}')")),
            };
            let mut c = check("foundryAgent", started, result);
            c.model = Some(model);
            c
        }
        (Some(_), _) => check(
            "foundryAgent",
            started,
            Err("the agent could not be read".into()),
        ),
    });
    let started = Instant::now();
    out.push(match &instance.config.azure_vector_store_id {
        None => check(
            "vectorStore",
            started,
            Err("no azureVectorStoreId yet: POST /admin/agent-instances/{id}/provision".into()),
        ),
        Some(id) => {
            let result = bounded(limit, "the Foundry project", async {
                match project.vector_store(id).await {
                    Ok(Some(store)) => {
                        let counts = &store["file_counts"];
                        let status = store["status"].as_str().unwrap_or("unknown");
                        let text = format!(
                            "vector store '{id}' {status}: {} files ({} completed, {} in progress, {} failed)",
                            counts["total"].as_u64().unwrap_or(0),
                            counts["completed"].as_u64().unwrap_or(0),
                            counts["in_progress"].as_u64().unwrap_or(0),
                            counts["failed"].as_u64().unwrap_or(0)
                        );
                        if status == "expired" {
                            Err(text)
                        } else {
                            Ok(text)
                        }
                    }
                    Ok(None) => Err(format!("vector store '{id}' does not exist in the project")),
                    Err(e) => Err(failure(e)),
                }
            })
            .await;
            check("vectorStore", started, result)
        }
    });
    out
}

/// The secret's name (the last path segments of a reference), never a value.
fn secret_name(id: &str) -> String {
    let trimmed = id.trim_end_matches('/');
    match trimmed.split_once("/secrets/") {
        Some((_, rest)) => rest.split('/').next().unwrap_or(rest).to_owned(),
        None => trimmed.rsplit('/').next().unwrap_or(trimmed).to_owned(),
    }
}

async fn search_check(runtime: &TenantRuntime, limit: Duration) -> Check {
    let started = Instant::now();
    let index = match &runtime.knowledge {
        Ok(Knowledge::Embedded(_)) => {
            return skipped(
                "searchIndex",
                "no azureSearchEndpoint: the embedded knowledge index serves this company",
            );
        }
        Ok(Knowledge::Search(index)) => index,
        Err(e) => return check("searchIndex", started, Err(e.clone())),
    };
    let name = index.name().to_owned();
    let result = bounded(limit, "Azure AI Search", async {
        match index.definition().await {
            Ok(None) => Err(format!(
                "search index '{name}' does not exist (404); POST /refresh creates it"
            )),
            Ok(Some(definition)) => {
                let fields = definition["fields"].as_array().cloned().unwrap_or_default();
                let field = |n: &str| fields.iter().find(|f| f["name"] == n).cloned();
                let mut missing = Vec::new();
                match field("tenantId") {
                    Some(f) if f["filterable"] == true => {}
                    Some(_) => missing.push("tenantId (must be filterable)".to_owned()),
                    None => missing.push("tenantId".to_owned()),
                }
                for required in ["id", "documentId", "title", "content", VECTOR_FIELD] {
                    if field(required).is_none() {
                        missing.push(required.to_owned());
                    }
                }
                if missing.is_empty() {
                    Ok(format!("search index '{name}' reachable with the expected fields"))
                } else {
                    Err(format!(
                        "search index '{name}' lacks fields SOPHIA needs: {}",
                        missing.join(", ")
                    ))
                }
            }
            Err(IndexError::Rejected {
                status: status @ (401 | 403),
                ..
            }) => Err(format!(
                "Azure AI Search rejected the credentials ({status}): check credentials.azureSearchKey \
                 (or the identity's 'Search Index Data Contributor' role)"
            )),
            Err(IndexError::Rejected { detail, .. }) => Err(detail),
            Err(IndexError::Unavailable(cause)) => {
                Err(format!("Azure AI Search is unreachable: {cause}"))
            }
            Err(IndexError::Internal(cause)) => Err(format!("Azure AI Search check failed: {cause}")),
        }
    })
    .await;
    check("searchIndex", started, result)
}
