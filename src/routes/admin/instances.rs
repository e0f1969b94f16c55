//! `/admin/agent-instances`: create, list, read (masked), patch, rotate the key, disable. The
//! work is `admin::instances`'; these handlers parse the request and shape the answer
//! (views, `ETag`, `Cache-Control`, `Location`).

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::header::{CACHE_CONTROL, ETAG, IF_MATCH, LOCATION};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::admin::instances as service;
use crate::admin::views::{
    CreateInstance, InstanceView, InstanceWithKey, List, ListInstancesQuery, PatchInstance,
    RotateKey,
};
use crate::domain::AgentInstance;
use crate::error::ApiError;
use crate::http::extract::{
    AdminAuth, ApiJson, ClientAddress, EmptyBody, optional_json, page_limit, parse_instance_id,
};
use crate::routes::ApiQuery;
use crate::state::AppState;
use crate::store::{InstanceFilter, PageRequest};

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

/// `POST /admin/agent-instances`
pub async fn create_instance(
    State(app): State<AppState>,
    AdminAuth(admin): AdminAuth,
    ClientAddress(client): ClientAddress,
    uri: axum::http::Uri,
    ApiJson(body): ApiJson<CreateInstance>,
) -> Result<Response, ApiError> {
    let (stored, key) = service::create(&app, &admin, &client, body).await?;
    let body = InstanceWithKey {
        instance: InstanceView::from(&stored),
        agent_access_key: key.expose().to_owned(),
    };
    let mut response = with_instance_headers(StatusCode::CREATED, body, &stored, true);
    // In the spelling the caller used: under Functions only `/manage/*` reaches SOPHIA.
    let base = if uri.path().starts_with(crate::http::FUNCTIONS_ADMIN_PREFIX) {
        "/manage"
    } else {
        "/admin"
    };
    if let Ok(location) = HeaderValue::from_str(&format!("{base}/agent-instances/{}", stored.id)) {
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
    let instance = service::load(&app, &admin, &id).await?;
    Ok(with_instance_headers(
        StatusCode::OK,
        InstanceView::from(&instance),
        &instance,
        false,
    ))
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
    let current = service::load(&app, &admin, &id).await?;
    check_if_match(&headers, &current)?;
    let stored = service::patch(&app, &admin, &client, current, patch).await?;
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
    req: Request,
) -> Result<Response, ApiError> {
    let id = parse_instance_id(&id)?;
    let body: RotateKey = optional_json(req, &app).await?;
    let current = service::load(&app, &admin, &id).await?;
    check_if_match(&headers, &current)?;
    let (stored, key) =
        service::rotate_key(&app, &admin, &client, current, body.grace_period_seconds).await?;
    let body = InstanceWithKey {
        instance: InstanceView::from(&stored),
        agent_access_key: key.expose().to_owned(),
    };
    Ok(with_instance_headers(StatusCode::OK, body, &stored, true))
}

/// `POST /admin/agent-instances/{id}/revoke-previous-key` — ends a rotation's grace period.
pub async fn revoke_previous_key(
    State(app): State<AppState>,
    AdminAuth(admin): AdminAuth,
    ClientAddress(client): ClientAddress,
    Path(id): Path<String>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, ApiError> {
    let id = parse_instance_id(&id)?;
    let EmptyBody {} = optional_json(req, &app).await?;
    let current = service::load(&app, &admin, &id).await?;
    check_if_match(&headers, &current)?;
    let stored = service::revoke_previous_key(&app, &admin, &client, current).await?;
    Ok(with_instance_headers(
        StatusCode::OK,
        InstanceView::from(&stored),
        &stored,
        false,
    ))
}

/// `POST /admin/agent-instances/{id}/provision` — (re)provisions a `foundry` instance's vector
/// store and agent in its Foundry project; idempotent.
pub async fn provision(
    State(app): State<AppState>,
    AdminAuth(admin): AdminAuth,
    ClientAddress(client): ClientAddress,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_instance_id(&id)?;
    let current = service::load(&app, &admin, &id).await?;
    check_if_match(&headers, &current)?;
    let stored = service::provision_instance(&app, &admin, &client, current).await?;
    Ok(with_instance_headers(
        StatusCode::OK,
        InstanceView::from(&stored),
        &stored,
        false,
    ))
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
    let current = service::load(&app, &admin, &id).await?;
    check_if_match(&headers, &current)?;
    let stored = service::disable_instance(&app, &admin, &client, current).await?;
    Ok(with_instance_headers(
        StatusCode::OK,
        InstanceView::from(&stored),
        &stored,
        false,
    ))
}
