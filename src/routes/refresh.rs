//! `POST /refresh` and `GET /refresh/{jobId}`: a company rebuilds its own knowledge from its
//! source and follows the job. One refresh at a time per company: a request while one is
//! queued or running answers that job. Starting, auditing and handing it to a worker is
//! `jobs::start`; these handlers parse and shape.

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::refresh::{FileError, JobCounts, JobTimings};
use crate::domain::{InstanceId, JobState, RefreshJob, TenantId};
use crate::error::{ApiError, NotFoundAs};
use crate::http::extract::{ClientAddress, ServiceAuth, optional_json};
use crate::state::AppState;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RefreshBody {
    /// Re-index every document, even unchanged ones.
    #[serde(default)]
    full: bool,
}

/// A job as clients see it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub job_id: String,
    pub status: JobState,
    pub company_id: TenantId,
    pub instance_id: InstanceId,
    pub source: String,
    pub full: bool,
    pub counts: JobCounts,
    pub errors: Vec<FileError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub timings: JobTimings,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl From<RefreshJob> for JobView {
    fn from(job: RefreshJob) -> Self {
        Self {
            job_id: job.id,
            status: job.state,
            company_id: job.tenant_id,
            instance_id: job.instance_id,
            source: job.source,
            full: job.full,
            counts: job.counts,
            errors: job.errors,
            error: job.error,
            timings: job.timings,
            created_at: job.created_at,
            started_at: job.started_at,
            finished_at: job.finished_at,
            updated_at: job.updated_at,
        }
    }
}

fn accepted(job: RefreshJob) -> Response {
    let location = format!("/refresh/{}", job.id);
    (
        StatusCode::ACCEPTED,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        Json(JobView::from(job)),
    )
        .into_response()
}

/// `POST /refresh`
pub async fn start_refresh(
    State(app): State<AppState>,
    ServiceAuth(claims): ServiceAuth,
    ClientAddress(client): ClientAddress,
    req: Request,
) -> Result<Response, ApiError> {
    let body: RefreshBody = optional_json(req, &app).await?;
    let (job, _created) =
        crate::jobs::start(&app, &claims.company_id, &claims.sub, body.full, &client).await?;
    Ok(accepted(job))
}

/// `GET /refresh/{jobId}`
pub async fn get_refresh(
    State(app): State<AppState>,
    ServiceAuth(claims): ServiceAuth,
    Path(job_id): Path<String>,
) -> Result<Response, ApiError> {
    if !RefreshJob::valid_id(&job_id) {
        return Err(ApiError::NotFound("refresh job"));
    }
    let job = app
        .store
        .get_refresh_job(&claims.company_id, &job_id)
        .await
        .not_found_as("refresh job")?;
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(JobView::from(job)),
    )
        .into_response())
}

/// The Functions host's invocation of a non-HTTP trigger (custom handler protocol).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HostInvocation {
    data: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    #[allow(dead_code)]
    metadata: serde_json::Value,
}

/// The custom handler's answer to the host.
fn host_answer(status: StatusCode, logs: Vec<String>) -> Response {
    (
        status,
        Json(serde_json::json!({"Outputs": {}, "Logs": logs, "ReturnValue": null})),
    )
        .into_response()
}

/// The job message in a queue trigger's `Data.msg`: the host hands it over as a JSON object,
/// as a JSON string (once or twice encoded), or as base64 text when the queue's encoding
/// was not decoded.
fn job_message(value: &serde_json::Value) -> Option<crate::jobs::JobMessage> {
    use base64::Engine;
    match value {
        serde_json::Value::Object(_) => serde_json::from_value(value.clone()).ok(),
        serde_json::Value::String(text) => serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|inner| job_message(&inner))
            .or_else(|| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .ok()?;
                serde_json::from_slice(&bytes).ok()
            }),
        _ => None,
    }
}

/// `POST /refresh-worker`: the queue-triggered `refresh-worker` function, called by the
/// Functions host on loopback with `{"Data": {"msg": …}, "Metadata": …}`. Runs the job
/// (idempotently) and answers in the host's shape: 200 when done (or when there is nothing
/// to do), 500 when a retry may help (the host redelivers, then moves the message to the
/// poison queue).
pub async fn refresh_worker(
    State(app): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    req: Request,
) -> Result<Response, ApiError> {
    // Only the Functions host, on the same machine, invokes triggers, and only a Storage
    // queue delivers jobs this way.
    let Some(signer) = app.jobs.signer().filter(|_| peer.ip().is_loopback()) else {
        return Err(ApiError::NotFound("route"));
    };
    let bytes = crate::http::extract::body_bytes(req, &app).await?;
    let invocation: HostInvocation = crate::http::extract::parse_json(&bytes)?;
    let Some(message) = invocation.data.values().find_map(job_message) else {
        return Err(ApiError::validation(
            "Data",
            "expected the queue message {\"tenantId\", \"jobId\", \"sig\"} in Data.<binding>",
        ));
    };
    if !signer.verify(&message) {
        // Not written by SOPHIA: whoever sent it reaches nothing.
        tracing::warn!(tenant.id = %message.tenant_id, job.id = %message.job_id, "refresh-worker message with an invalid signature refused");
        return Err(ApiError::forbidden(
            "the queue message is not signed by this deployment",
        ));
    }
    use crate::jobs::Delivery;
    match crate::jobs::run_job(&app, &message.tenant_id, &message.job_id).await {
        Ok(Delivery::Ran(job)) => Ok(host_answer(
            StatusCode::OK,
            vec![format!(
                "refresh job {} of {}: {}",
                job.id,
                job.tenant_id,
                job.state.as_str()
            )],
        )),
        Ok(Delivery::AlreadyTaken(job)) => Ok(host_answer(
            StatusCode::OK,
            vec![format!(
                "refresh job {} of {} was already taken ({}); nothing to do",
                job.id,
                job.tenant_id,
                job.state.as_str()
            )],
        )),
        Ok(Delivery::Unknown) => {
            tracing::warn!(tenant.id = %message.tenant_id, job.id = %message.job_id, "queue message for an unknown refresh job; dropped");
            Ok(host_answer(
                StatusCode::OK,
                vec![format!(
                    "refresh job {} not found; message dropped",
                    message.job_id
                )],
            ))
        }
        Err(e) => {
            tracing::error!(tenant.id = %message.tenant_id, job.id = %message.job_id, error = ?e, "refresh job failed to run: {e:#}");
            Ok(host_answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                vec!["the refresh job could not run; the host will retry".into()],
            ))
        }
    }
}
