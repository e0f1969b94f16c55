//! `GET /admin/audit-logs`

use axum::Json;
use axum::extract::State;

use crate::admin::views::{AuditQuery, AuditView, List};
use crate::error::ApiError;
use crate::http::extract::{AdminAuth, page_limit};
use crate::routes::ApiQuery;
use crate::state::AppState;
use crate::store::{AuditFilter, PageRequest};

/// Audit entries, newest first, within the admin's companies.
pub async fn list_audit_logs(
    State(app): State<AppState>,
    AdminAuth(admin): AdminAuth,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<List<AuditView>>, ApiError> {
    let scope = admin.scope_for_filter(query.company_id.as_ref())?;
    if let Some(action) = &query.action
        && (action.is_empty()
            || action.len() > 64
            || !action
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b"._".contains(&b)))
    {
        return Err(ApiError::validation(
            "action",
            "must be an action name such as agent_instance.create",
        ));
    }
    let page = PageRequest {
        limit: page_limit(query.limit)?,
        continuation_token: query.continuation_token,
    };
    let filter = AuditFilter {
        instance_id: query.instance_id,
        action: query.action,
    };
    let result = app.store.list_audit(&scope, &filter, &page).await?;
    Ok(Json(List {
        items: result.items,
        continuation_token: result.continuation_token,
    }))
}
