//! `POST /agents/auth/token`: a client app trades its access key for a service token.
//!
//! Accepts the SOPHIA JSON body `{companyId, agentType, agentAccessKey}` or an OAuth2
//! client-credentials request (RFC 6749 §4.4: form body, credentials in the body or in HTTP
//! Basic). Every authentication failure — unknown company, wrong or malformed key, disabled
//! instance — gets the same 401 `invalid_client`, after the same bcrypt work.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, PRAGMA};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::domain::AgentType;
use crate::error::ApiError;
use crate::http::extract::{ClientAddress, body_bytes, is_json, media_type, parse_json};
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonTokenRequest {
    company_id: String,
    #[serde(default)]
    agent_type: Option<String>,
    agent_access_key: String,
}

#[derive(Deserialize)]
struct FormTokenRequest {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    agent_type: Option<String>,
    #[allow(dead_code)]
    scope: Option<String>,
}

/// RFC 6749 §5.1 answer.
#[derive(Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub scope: String,
}

struct Credentials {
    company: String,
    agent_type: Option<String>,
    key: String,
}

/// Reads client credentials from whichever request form was sent.
async fn credentials(req: Request, app: &AppState) -> Result<Credentials, ApiError> {
    let basic = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
        .map(str::to_owned);
    if is_json(req.headers()) {
        let body = body_bytes(req, app).await?;
        let parsed: JsonTokenRequest = parse_json(&body)?;
        return Ok(Credentials {
            company: parsed.company_id,
            agent_type: parsed.agent_type,
            key: parsed.agent_access_key,
        });
    }
    if media_type(req.headers()).as_deref() != Some("application/x-www-form-urlencoded") {
        return Err(ApiError::UnsupportedMediaType(
            "send application/json or application/x-www-form-urlencoded (OAuth2 client credentials)".into(),
        ));
    }
    let body = body_bytes(req, app).await?;
    let form: FormTokenRequest = serde_urlencoded::from_bytes(&body)
        .map_err(|e| ApiError::bad_request(format!("malformed form body: {e}")))?;
    if form.grant_type.as_deref() != Some("client_credentials") {
        return Err(ApiError::validation(
            "grant_type",
            "must be client_credentials",
        ));
    }
    let (id, secret) = match (form.client_id, form.client_secret, basic) {
        (id, None, Some(basic)) => {
            // RFC 6749 §2.3.1: both parts are form-urlencoded inside the Basic credentials.
            let decoded = STANDARD
                .decode(basic.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| ApiError::bad_request("malformed Basic credentials"))?;
            let (user, pass) = decoded
                .split_once(':')
                .ok_or_else(|| ApiError::bad_request("malformed Basic credentials"))?;
            let user = url_decode(user);
            if id.as_ref().is_some_and(|i| *i != user) {
                return Err(ApiError::bad_request(
                    "client_id differs between the body and the Authorization header",
                ));
            }
            (user, url_decode(pass))
        }
        (Some(id), Some(secret), _) => (id, secret),
        _ => {
            return Err(ApiError::validation(
                "client_id",
                "client_id and client_secret are required",
            ));
        }
    };
    Ok(Credentials {
        company: id,
        agent_type: form.agent_type,
        key: secret,
    })
}

fn url_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("v={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// `POST /agents/auth/token`
pub async fn exchange_token(
    State(app): State<AppState>,
    ClientAddress(client): ClientAddress,
    req: Request,
) -> Result<Response, ApiError> {
    app.auth
        .limit_by_address
        .check(&client)
        .map_err(|retry_after_secs| ApiError::RateLimited { retry_after_secs })?;
    let creds = credentials(req, &app).await?;
    let agent_type = match creds.agent_type.as_deref() {
        None => AgentType::Sophia,
        Some(raw) => AgentType::parse(raw)
            .ok_or_else(|| ApiError::validation("agentType", "must be SOPHIA"))?,
    };
    let matched = app
        .auth
        .access_key(&client, &creds.company, agent_type, &creds.key, "token")
        .await?;
    let instance = &matched.instance;
    let (token, claims) = app
        .auth
        .tokens
        .issue_under(
            instance,
            matched.key_version,
            matched.valid_until.map(|t| t.timestamp()),
        )
        .map_err(ApiError::internal)?;
    tracing::info!(tenant.id = %instance.tenant_id, instance.id = %instance.id, "service token issued for {}", instance.tenant_id);
    let mut response = Json(TokenResponse {
        access_token: token,
        token_type: "Bearer",
        expires_in: u64::try_from(claims.exp - claims.iat).unwrap_or(0),
        scope: claims.scope,
    })
    .into_response();
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
        .headers_mut()
        .insert(PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(response)
}
