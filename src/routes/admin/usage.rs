//! `GET /admin/usage`: tokens per company per day, and — for one company — where it stands
//! against its limits.

use axum::Json;
use axum::extract::State;
use chrono::{Days, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{AgentType, TenantId, UsageRecord};
use crate::error::ApiError;
use crate::http::extract::AdminAuth;
use crate::routes::ApiQuery;
use crate::state::AppState;
use crate::store::TenantScope;

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

/// One limit of a company, fleet-wide, now.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LimitView {
    /// `requestsPerMinute`, `tokensPerMinute`, `tokensPerDay` or `tokensPerMonth`.
    pub limit: &'static str,
    pub value: u64,
    pub used: u64,
    pub remaining: u64,
    pub resets_in_seconds: u64,
}

/// The answer: daily usage, and the company's limits when one company is in scope.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageList {
    pub items: Vec<UsageRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<Vec<LimitView>>,
}

/// Daily usage within the admin's companies, by company then day.
pub async fn list_usage(
    State(app): State<AppState>,
    AdminAuth(admin): AdminAuth,
    ApiQuery(query): ApiQuery<UsageQuery>,
) -> Result<Json<UsageList>, ApiError> {
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
    let limits = match &scope {
        TenantScope::Tenant(company) => Some(limits_of(&app, company).await?),
        TenantScope::All => None,
    };
    Ok(Json(UsageList { items, limits }))
}

/// The live instance's limits, with the fleet's use of each (read from the store now).
async fn limits_of(app: &AppState, company: &TenantId) -> Result<Vec<LimitView>, ApiError> {
    let Some(instance) = app
        .store
        .find_live_instance(company, AgentType::Sophia)
        .await?
    else {
        return Ok(Vec::new());
    };
    let limits = instance.settings.limits();
    if limits.is_empty() {
        return Ok(Vec::new());
    }
    let standing = app
        .limits
        .standing(app.store.as_ref(), company, limits)
        .await;
    Ok(standing
        .each()
        .into_iter()
        .map(|(limit, value, used, reset)| LimitView {
            limit,
            value,
            used,
            remaining: value.saturating_sub(used),
            resets_in_seconds: reset,
        })
        .collect())
}
