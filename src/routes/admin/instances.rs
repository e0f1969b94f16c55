//! `/admin/agent-instances`: create, list, read (masked), patch, rotate the key, disable.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, ETAG, IF_MATCH, LOCATION};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::json;

use super::types::{
    CreateInstance, InstanceView, InstanceWithKey, List, ListInstancesQuery, Patch, PatchInstance,
};
use super::validate;
use crate::auth::admin::{AdminPrincipal, AdminRole};
use crate::auth::keys::AccessKey;
use crate::domain::audit::action;
use crate::domain::{
    AgentInstance, AuditEntry, AuditOutcome, InstanceId, InstanceStatus, KeyHash, TenantId,
};
use crate::error::ApiError;
use crate::extract::{AdminAuth, ApiJson, ClientAddress};
use crate::routes::ApiQuery;
use crate::secrets::{CredentialBundle, SecretError, SecretName};
use crate::state::{App, AppState};
use crate::store::{InstanceFilter, PageRequest, StoreError};

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 200;

/// Parses a path id; a malformed one is a 400 naming the parameter.
pub fn parse_instance_id(raw: &str) -> Result<InstanceId, ApiError> {
    InstanceId::parse(raw).map_err(|e| ApiError::validation("id", e.to_string()))
}

/// A page size from a query (1–200, default 50).
pub fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::validation(
            "limit",
            format!("must be from 1 to {MAX_LIMIT}"),
        )),
    }
}

/// The instance, if this admin may see it; another company's instance is a plain 404.
async fn load(
    app: &App,
    admin: &AdminPrincipal,
    id: &InstanceId,
) -> Result<AgentInstance, ApiError> {
    app.store
        .get_instance(&admin.scope(), id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::NotFound("agent instance"),
            other => other.into(),
        })
}

/// The etag an `If-Match` header names (`None` when absent; `*` matches anything).
fn if_match(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IF_MATCH) else {
        return Ok(None);
    };
    let raw = value
        .to_str()
        .map_err(|_| ApiError::validation("If-Match", "must be an entity tag"))?
        .trim();
    let raw = raw.strip_prefix("W/").unwrap_or(raw);
    let tag = raw.trim_matches('"');
    if tag.is_empty() {
        return Err(ApiError::validation("If-Match", "must be an entity tag"));
    }
    Ok(Some(tag.to_owned()))
}

fn check_if_match(headers: &HeaderMap, current: &AgentInstance) -> Result<(), ApiError> {
    match if_match(headers)? {
        Some(tag) if tag != "*" && tag != current.etag => Err(ApiError::PreconditionFailed),
        _ => Ok(()),
    }
}

fn etag_header(etag: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{etag}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

fn with_instance_headers(
    status: StatusCode,
    body: impl serde::Serialize,
    instance: &AgentInstance,
    no_store: bool,
) -> Response {
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(ETAG, etag_header(&instance.etag));
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static(if no_store {
            "no-store"
        } else {
            "private, no-cache"
        }),
    );
    response
}

/// Writes `next` if the stored etag is still `etag`, and forgets the cached security state so
/// the change bites at once on this instance of the service.
async fn save(app: &App, next: &AgentInstance, etag: &str) -> Result<AgentInstance, ApiError> {
    let stored = app
        .store
        .replace_instance(next, etag)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::NotFound("agent instance"),
            other => other.into(),
        })?;
    app.security.invalidate(&stored.tenant_id, &stored.id).await;
    app.runtimes.invalidate(&stored.tenant_id, &stored.id).await;
    Ok(stored)
}

/// Records an admin's action on an instance.
async fn audit_admin(
    app: &App,
    admin: &AdminPrincipal,
    client: &str,
    instance: &AgentInstance,
    action: &str,
    details: serde_json::Value,
) {
    app.audit(
        AuditEntry::new(
            instance.tenant_id.clone(),
            action,
            admin.actor(),
            AuditOutcome::Success,
        )
        .instance(instance.id)
        .client(client)
        .details(details),
    )
    .await;
}

/// Resolves an admin-supplied secret reference: it must parse for the configured secret
/// store, not name a secret SOPHIA manages, belong to the admin's company (for an `ADMIN`),
/// and exist.
async fn existing_secret(
    app: &App,
    admin: &AdminPrincipal,
    company: &TenantId,
    raw: &str,
) -> Result<String, ApiError> {
    let reference = app.secrets.parse_id(raw.trim())?;
    if reference.name.is_reserved() {
        return Err(ApiError::validation(
            "keyvaultSecretId",
            "refers to a secret that SOPHIA manages itself",
        ));
    }
    if let AdminRole::Admin(_) = admin.role {
        let prefix = company_secret_prefix(company);
        if !reference
            .name
            .as_str()
            .to_ascii_lowercase()
            .starts_with(&prefix)
        {
            return Err(ApiError::validation(
                "keyvaultSecretId",
                format!("a company admin may only reference secrets named '{prefix}…'"),
            ));
        }
    }
    match app.secrets.get(raw.trim()).await {
        Ok(_) => Ok(raw.trim().to_owned()),
        Err(SecretError::NotFound) => Err(ApiError::validation(
            "keyvaultSecretId",
            "no such secret in the secret store",
        )),
        Err(e) => Err(e.into()),
    }
}

/// Secrets a company brings itself are named `<companyId>-…` (lower case, with characters
/// Key Vault does not allow turned into '-').
pub fn company_secret_prefix(company: &TenantId) -> String {
    let mut s: String = company
        .as_str()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    s.push('-');
    s
}

fn opt<T>(
    value: Option<String>,
    f: impl Fn(&str) -> Result<T, ApiError>,
) -> Result<Option<T>, ApiError> {
    value.map(|v| f(&v)).transpose()
}

/// `POST /admin/agent-instances`
pub async fn create_instance(
    State(app): State<AppState>,
    AdminAuth(admin): AdminAuth,
    ClientAddress(client): ClientAddress,
    ApiJson(body): ApiJson<CreateInstance>,
) -> Result<Response, ApiError> {
    admin.check_company(&body.company_id)?;
    let policy = &app.upstreams;
    let region = opt(body.region, |v| validate::token_text("region", v, 64))?;
    let model = opt(body.model, |v| validate::deployment("model", v))?;
    let azure_project_id = opt(body.azure_project_id, |v| {
        validate::token_text("azureProjectId", v, 512)
    })?;
    let azure_openai_endpoint = opt(body.azure_openai_endpoint, |v| {
        validate::endpoint(policy, "azureOpenaiEndpoint", v)
    })?;
    let azure_openai_deployment = opt(body.azure_openai_deployment, |v| {
        validate::deployment("azureOpenaiDeployment", v)
    })?;
    let azure_embedding_deployment = opt(body.azure_embedding_deployment, |v| {
        validate::deployment("azureEmbeddingDeployment", v)
    })?;
    let azure_search_endpoint = opt(body.azure_search_endpoint, |v| {
        validate::endpoint(policy, "azureSearchEndpoint", v)
    })?;
    let azure_vector_store_id = opt(body.azure_vector_store_id, |v| {
        validate::token_text("azureVectorStoreId", v, 256)
    })?;
    let settings = body.settings.unwrap_or_default();
    validate::settings(&settings, &app.upstreams)?;
    let credentials = body.credentials.filter(|c| !c.is_empty());
    if credentials.is_some() && body.keyvault_secret_id.is_some() {
        return Err(ApiError::validation(
            "credentials",
            "give either credentials (stored for you) or keyvaultSecretId (an existing secret), not both",
        ));
    }
    if app
        .store
        .find_live_instance(&body.company_id, body.agent_type)
        .await?
        .is_some()
    {
        return Err(ApiError::Conflict(format!(
            "company '{}' already has a {} agent instance; rotate its key or disable it first",
            body.company_id,
            body.agent_type.as_str()
        )));
    }
    let existing_secret_id = match &body.keyvault_secret_id {
        Some(raw) => Some(existing_secret(&app, &admin, &body.company_id, raw).await?),
        None => None,
    };

    let id = InstanceId::new();
    let key = AccessKey::generate();
    let hash = app.hasher.hash(&key).await.map_err(ApiError::internal)?;
    let secret_name = SecretName::for_instance(&id);
    let keyvault_secret_id = match &credentials {
        Some(bundle) => Some(app.secrets.set(&secret_name, &bundle.to_secret()).await?),
        None => existing_secret_id,
    };
    let now = Utc::now();
    let instance = AgentInstance {
        id,
        tenant_id: body.company_id.clone(),
        agent_type: body.agent_type,
        status: if azure_project_id.is_some() {
            InstanceStatus::Active
        } else {
            InstanceStatus::ToProvision
        },
        provider: body.provider.unwrap_or_default(),
        region,
        model,
        azure_project_id,
        azure_openai_endpoint,
        azure_openai_deployment,
        azure_embedding_deployment,
        azure_search_endpoint,
        azure_vector_store_id,
        settings,
        keyvault_secret_id,
        access_key_hash: KeyHash::new(hash),
        access_key_last4: key.last4(),
        key_version: 1,
        created_at: now,
        updated_at: now,
        last_used_at: None,
        etag: String::new(),
    };
    let stored = match app.store.insert_instance(&instance).await {
        Ok(stored) => stored,
        Err(e) => {
            // Undo the secret written for this instance: nothing half-made stays behind.
            if credentials.is_some()
                && let Err(cleanup) = app.secrets.delete(&secret_name).await
            {
                tracing::error!(secret.name = %secret_name, error = ?cleanup, "orphaned secret could not be removed");
            }
            return Err(e.into());
        }
    };
    app.security.invalidate(&stored.tenant_id, &stored.id).await;
    app.runtimes.invalidate(&stored.tenant_id, &stored.id).await;
    let fields = credentials
        .as_ref()
        .map(CredentialBundle::present_fields)
        .unwrap_or_default();
    let details = json!({ "status": stored.status.as_str(), "credentials": fields });
    audit_admin(
        &app,
        &admin,
        &client,
        &stored,
        action::INSTANCE_CREATE,
        details,
    )
    .await;
    tracing::info!(tenant.id = %stored.tenant_id, instance.id = %stored.id, "agent instance {} created", stored.id);
    let body = InstanceWithKey {
        instance: InstanceView::from(&stored),
        agent_access_key: key.expose().to_owned(),
    };
    let mut response = with_instance_headers(StatusCode::CREATED, body, &stored, true);
    if let Ok(location) = HeaderValue::from_str(&format!("/admin/agent-instances/{}", stored.id)) {
        response.headers_mut().insert(LOCATION, location);
    }
    Ok(response)
}

/// `GET /admin/agent-instances`
pub async fn list_instances(
    State(app): State<AppState>,
    AdminAuth(admin): AdminAuth,
    ApiQuery(query): ApiQuery<ListInstancesQuery>,
) -> Result<Json<List<InstanceView>>, ApiError> {
    let scope = admin.scope_for_filter(query.company_id.as_ref())?;
    let page = PageRequest {
        limit: page_limit(query.limit)?,
        continuation_token: query.continuation_token,
    };
    let result = app
        .store
        .list_instances(
            &scope,
            &InstanceFilter {
                status: query.status,
            },
            &page,
        )
        .await?;
    Ok(Json(List {
        items: result.items.iter().map(InstanceView::from).collect(),
        continuation_token: result.continuation_token,
    }))
}

/// `GET /admin/agent-instances/{id}`
pub async fn get_instance(
    State(app): State<AppState>,
    AdminAuth(admin): AdminAuth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_instance_id(&id)?;
    let instance = load(&app, &admin, &id).await?;
    Ok(with_instance_headers(
        StatusCode::OK,
        InstanceView::from(&instance),
        &instance,
        false,
    ))
}

fn patch_text(
    target: &mut Option<String>,
    patch: Patch<String>,
    name: &'static str,
    changed: &mut Vec<&'static str>,
    check: impl Fn(&str) -> Result<String, ApiError>,
) -> Result<(), ApiError> {
    match patch {
        Patch::Absent => {}
        Patch::Null => {
            *target = None;
            changed.push(name);
        }
        Patch::Value(v) => {
            *target = Some(check(&v)?);
            changed.push(name);
        }
    }
    Ok(())
}

/// `PATCH /admin/agent-instances/{id}`
pub async fn patch_instance(
    State(app): State<AppState>,
    AdminAuth(admin): AdminAuth,
    ClientAddress(client): ClientAddress,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(patch): ApiJson<PatchInstance>,
) -> Result<Response, ApiError> {
    let id = parse_instance_id(&id)?;
    let current = load(&app, &admin, &id).await?;
    check_if_match(&headers, &current)?;
    let policy = &app.upstreams;
    let mut next = current.clone();
    let mut changed: Vec<&'static str> = Vec::new();

    patch_text(
        &mut next.region,
        patch.region,
        "region",
        &mut changed,
        |v| validate::token_text("region", v, 64),
    )?;
    patch_text(&mut next.model, patch.model, "model", &mut changed, |v| {
        validate::deployment("model", v)
    })?;
    patch_text(
        &mut next.azure_project_id,
        patch.azure_project_id,
        "azureProjectId",
        &mut changed,
        |v| validate::token_text("azureProjectId", v, 512),
    )?;
    patch_text(
        &mut next.azure_openai_endpoint,
        patch.azure_openai_endpoint,
        "azureOpenaiEndpoint",
        &mut changed,
        |v| validate::endpoint(policy, "azureOpenaiEndpoint", v),
    )?;
    patch_text(
        &mut next.azure_openai_deployment,
        patch.azure_openai_deployment,
        "azureOpenaiDeployment",
        &mut changed,
        |v| validate::deployment("azureOpenaiDeployment", v),
    )?;
    patch_text(
        &mut next.azure_embedding_deployment,
        patch.azure_embedding_deployment,
        "azureEmbeddingDeployment",
        &mut changed,
        |v| validate::deployment("azureEmbeddingDeployment", v),
    )?;
    patch_text(
        &mut next.azure_search_endpoint,
        patch.azure_search_endpoint,
        "azureSearchEndpoint",
        &mut changed,
        |v| validate::endpoint(policy, "azureSearchEndpoint", v),
    )?;
    patch_text(
        &mut next.azure_vector_store_id,
        patch.azure_vector_store_id,
        "azureVectorStoreId",
        &mut changed,
        |v| validate::token_text("azureVectorStoreId", v, 256),
    )?;
    match patch.provider {
        Patch::Absent => {}
        Patch::Null => return Err(ApiError::validation("provider", "cannot be null")),
        Patch::Value(p) => {
            next.provider = p;
            changed.push("provider");
        }
    }
    match patch.settings {
        Patch::Absent => {}
        Patch::Null => {
            next.settings.clear();
            changed.push("settings");
        }
        Patch::Value(merge) => {
            for (key, value) in merge {
                if value.is_null() {
                    next.settings.remove(&key);
                } else {
                    next.settings.insert(key, value);
                }
            }
            validate::settings(&next.settings, &app.upstreams)?;
            changed.push("settings");
        }
    }
    let status_given = match patch.status {
        Patch::Absent => false,
        Patch::Null => return Err(ApiError::validation("status", "cannot be null")),
        Patch::Value(s) => {
            next.status = s;
            true
        }
    };
    // An instance waiting for provisioning becomes active once it names its Azure project.
    if !status_given
        && next.status == InstanceStatus::ToProvision
        && next.azure_project_id.is_some()
    {
        next.status = InstanceStatus::Active;
    }
    if next.status != current.status {
        changed.push("status");
    }
    if next.status != InstanceStatus::Disabled
        && current.status == InstanceStatus::Disabled
        && let Some(live) = app
            .store
            .find_live_instance(&next.tenant_id, next.agent_type)
            .await?
        && live.id != next.id
    {
        return Err(ApiError::Conflict(format!(
            "company '{}' already has another live {} instance ({})",
            next.tenant_id,
            next.agent_type.as_str(),
            live.id
        )));
    }

    let mut credential_fields = Vec::new();
    match (patch.credentials, patch.keyvault_secret_id) {
        (Patch::Value(_), Patch::Value(_)) => {
            return Err(ApiError::validation(
                "credentials",
                "give either credentials or keyvaultSecretId, not both",
            ));
        }
        (Patch::Null, _) => {
            return Err(ApiError::validation(
                "credentials",
                "cannot be null; set keyvaultSecretId to null to detach credentials",
            ));
        }
        (Patch::Value(bundle), _) if !bundle.is_empty() => {
            credential_fields = bundle.present_fields();
            // A new version of this instance's own bundle, merged over the current one.
            let base = match &current.keyvault_secret_id {
                Some(id) => match app.secrets.get(id).await {
                    Ok(secret) => CredentialBundle::from_secret(&secret),
                    Err(SecretError::NotFound) => CredentialBundle::default(),
                    Err(e) => return Err(e.into()),
                },
                None => CredentialBundle::default(),
            };
            let merged = base.merged(bundle);
            let new_id = app
                .secrets
                .set(&SecretName::for_instance(&next.id), &merged.to_secret())
                .await?;
            next.keyvault_secret_id = Some(new_id);
            changed.push("credentials");
        }
        (_, Patch::Value(raw)) => {
            next.keyvault_secret_id =
                Some(existing_secret(&app, &admin, &next.tenant_id, &raw).await?);
            changed.push("keyvaultSecretId");
        }
        (_, Patch::Null) => {
            next.keyvault_secret_id = None;
            changed.push("keyvaultSecretId");
        }
        _ => {}
    }

    if changed.is_empty() {
        return Ok(with_instance_headers(
            StatusCode::OK,
            InstanceView::from(&current),
            &current,
            false,
        ));
    }
    next.updated_at = Utc::now();
    let stored = save(&app, &next, &current.etag).await?;
    let disabled_now =
        stored.status == InstanceStatus::Disabled && current.status != InstanceStatus::Disabled;
    let details = json!({ "fields": changed, "credentials": credential_fields, "status": stored.status.as_str() });
    audit_admin(
        &app,
        &admin,
        &client,
        &stored,
        action::INSTANCE_UPDATE,
        details,
    )
    .await;
    if disabled_now {
        let details = json!({ "via": "patch" });
        audit_admin(
            &app,
            &admin,
            &client,
            &stored,
            action::INSTANCE_DISABLE,
            details,
        )
        .await;
    }
    Ok(with_instance_headers(
        StatusCode::OK,
        InstanceView::from(&stored),
        &stored,
        false,
    ))
}

/// `POST /admin/agent-instances/{id}/rotate-key`
pub async fn rotate_key(
    State(app): State<AppState>,
    AdminAuth(admin): AdminAuth,
    ClientAddress(client): ClientAddress,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_instance_id(&id)?;
    let current = load(&app, &admin, &id).await?;
    check_if_match(&headers, &current)?;
    let key = AccessKey::generate();
    let mut next = current.clone();
    next.access_key_hash = KeyHash::new(app.hasher.hash(&key).await.map_err(ApiError::internal)?);
    next.access_key_last4 = key.last4();
    next.key_version = current.key_version.saturating_add(1);
    next.updated_at = Utc::now();
    let stored = save(&app, &next, &current.etag).await?;
    audit_admin(
        &app,
        &admin,
        &client,
        &stored,
        action::INSTANCE_ROTATE_KEY,
        json!({ "keyVersion": stored.key_version }),
    )
    .await;
    tracing::info!(tenant.id = %stored.tenant_id, instance.id = %stored.id, key.version = stored.key_version, "access key of {} rotated", stored.id);
    let body = InstanceWithKey {
        instance: InstanceView::from(&stored),
        agent_access_key: key.expose().to_owned(),
    };
    Ok(with_instance_headers(StatusCode::OK, body, &stored, true))
}

/// `DELETE /admin/agent-instances/{id}` — a soft delete: the instance becomes `DISABLED`, its
/// key and every token issued under it stop working; the record and its audit trail remain.
pub async fn delete_instance(
    State(app): State<AppState>,
    AdminAuth(admin): AdminAuth,
    ClientAddress(client): ClientAddress,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_instance_id(&id)?;
    let current = load(&app, &admin, &id).await?;
    check_if_match(&headers, &current)?;
    if current.status == InstanceStatus::Disabled {
        return Ok(with_instance_headers(
            StatusCode::OK,
            InstanceView::from(&current),
            &current,
            false,
        ));
    }
    let mut next = current.clone();
    next.status = InstanceStatus::Disabled;
    next.updated_at = Utc::now();
    let stored = save(&app, &next, &current.etag).await?;
    audit_admin(
        &app,
        &admin,
        &client,
        &stored,
        action::INSTANCE_DISABLE,
        serde_json::Value::Null,
    )
    .await;
    Ok(with_instance_headers(
        StatusCode::OK,
        InstanceView::from(&stored),
        &stored,
        false,
    ))
}
