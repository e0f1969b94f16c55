//! `POST /config/test` (the company's client, service token) and
//! `POST /admin/agent-instances/{id}/config-test` (an admin): the company's configuration
//! checked piece by piece. Audited as `config.test`.

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::diagnostics::{self, Report};
use crate::domain::audit::action;
use crate::domain::{AgentInstance, AuditEntry, AuditOutcome};
use crate::error::{ApiError, NotFoundAs};
use crate::http::extract::{
    AdminAuth, ClientAddress, EmptyBody, ServiceAuth, optional_json, parse_instance_id,
};
use crate::state::{App, AppState};
use crate::store::TenantScope;

async fn run_and_audit(
    app: &App,
    instance: &AgentInstance,
    actor: String,
    client: &str,
) -> Response {
    let report: Report = diagnostics::run(app, instance).await;
    let outcome = if report.ok {
        AuditOutcome::Success
    } else {
        AuditOutcome::Failure
    };
    let entry = AuditEntry::new(
        instance.tenant_id.clone(),
        action::CONFIG_TEST,
        actor,
        outcome,
    )
    .instance(instance.id)
    .client(client)
    .details(serde_json::json!({"ok": report.ok, "failed": report.failed()}));
    app.audit(entry).await;
    tracing::info!(tenant.id = %instance.tenant_id, instance.id = %instance.id, ok = report.ok, failed = ?report.failed(), "configuration tested");
    ([(header::CACHE_CONTROL, "no-store")], Json(report)).into_response()
}

/// `POST /config/test`
pub async fn config_test(
    State(app): State<AppState>,
    ServiceAuth(claims): ServiceAuth,
    ClientAddress(client): ClientAddress,
    req: Request,
) -> Result<Response, ApiError> {
    // The body is optional and has no fields today (`{}` is accepted).
    let EmptyBody {} = optional_json(req, &app).await?;
    let instance = app
        .store
        .get_instance(&TenantScope::Tenant(claims.company_id.clone()), &claims.sub)
        .await
        .not_found_as("agent instance")?;
    let actor = format!("client:{}", claims.company_id);
    Ok(run_and_audit(&app, &instance, actor, &client).await)
}

/// `POST /admin/agent-instances/{id}/config-test`
pub async fn admin_config_test(
    State(app): State<AppState>,
    AdminAuth(admin): AdminAuth,
    ClientAddress(client): ClientAddress,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let id = parse_instance_id(&id)?;
    // The body is optional and has no fields today (`{}` is accepted).
    let EmptyBody {} = optional_json(req, &app).await?;
    let instance = app
        .store
        .get_instance(&admin.scope(), &id)
        .await
        .not_found_as("agent instance")?;
    Ok(run_and_audit(&app, &instance, admin.actor(), &client).await)
}
