//! `GET /admin/usage`: tokens per company per day.

use axum::Json;
use axum::extract::State;
use chrono::{Days, NaiveDate, Utc};
use serde::Deserialize;

use crate::admin::views::List;
use crate::domain::{TenantId, UsageRecord};
use crate::error::ApiError;
use crate::http::extract::AdminAuth;
use crate::routes::ApiQuery;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UsageQuery {
    pub company_id: Option<TenantId>,
    /// First day (UTC, inclusive); default 30 days ago.
    pub from: Option<NaiveDate>,
    /// Last day (UTC, inclusive); default today.
    pub to: Option<NaiveDate>,
}

/// Longest range one call may ask for.
const MAX_DAYS: u64 = 366;

/// Daily usage within the admin's companies, by company then day.
pub async fn list_usage(
    State(app): State<AppState>,
    AdminAuth(admin): AdminAuth,
    ApiQuery(query): ApiQuery<UsageQuery>,
) -> Result<Json<List<UsageRecord>>, ApiError> {
    let scope = admin.scope_for_filter(query.company_id.as_ref())?;
    let today = Utc::now().date_naive();
    let to = query.to.unwrap_or(today);
    let from = query
        .from
        .unwrap_or_else(|| to.checked_sub_days(Days::new(30)).unwrap_or(to));
    if from > to {
        return Err(ApiError::validation("from", "must not be after 'to'"));
    }
    if (to - from).num_days() as u64 >= MAX_DAYS {
        return Err(ApiError::validation(
            "from",
            format!("the range may cover at most {MAX_DAYS} days"),
        ));
    }
    // What this instance has pending is written first, so a read sees its own traffic.
    app.usage.flush(app.store.as_ref()).await;
    let items = app.store.list_usage(&scope, from, to).await?;
    Ok(Json(List {
        items,
        continuation_token: None,
    }))
}
