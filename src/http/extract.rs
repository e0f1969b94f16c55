//! Request extractors that answer bad input with problem+json: JSON bodies (reporting the
//! failing field path), path ids, the caller's address, and the two kinds of bearer token.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use crate::auth::admin::AdminPrincipal;
use crate::auth::service_token::ServiceClaims;
use crate::domain::InstanceId;
use crate::error::ApiError;
use crate::state::AppState;

const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;

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

/// A JSON body. Missing or wrong content type → 415, oversize → 413, malformed or invalid →
/// 400 naming the field.
pub struct ApiJson<T>(pub T);

/// Whether the request declares a JSON body (`application/json` or `application/*+json`).
pub fn is_json(headers: &HeaderMap) -> bool {
    media_type(headers).is_some_and(|m| {
        m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
    })
}

/// The lower-cased media type of the request, without parameters.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    Some(
        value
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

/// Reads the body, mapping the size limit to 413.
pub async fn body_bytes(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit: state.settings.max_body_bytes,
            }
        } else {
            ApiError::bad_request("the request body could not be read")
        }
    })
}

/// A body that may be absent or `{}` and has no fields (anything else is a 400).
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EmptyBody {}

/// An optional JSON body: empty (or whitespace) gives `T::default()`; a body with a
/// non-JSON `Content-Type` is a 415; anything else parses strictly.
pub async fn optional_json<T: DeserializeOwned + Default>(
    req: Request,
    state: &AppState,
) -> Result<T, ApiError> {
    let has_type = req.headers().contains_key(CONTENT_TYPE);
    let json = is_json(req.headers());
    let bytes = body_bytes(req, state).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else if has_type && !json {
        Err(ApiError::UnsupportedMediaType(
            "the body, when given, is JSON: Content-Type: application/json".into(),
        ))
    } else if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        Err(ApiError::bad_request(
            "the body, when given, is a JSON object",
        ))
    } else {
        parse_json(&bytes)
    }
}

/// Parses JSON, reporting the path of the failing field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request("a JSON body is required"));
    }
    // The common case parses once; only a failure is parsed again to find the field's path.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("malformed JSON: {inner}"))
        } else {
            let field = if path == "." { String::new() } else { path };
            ApiError::validation(field, inner.to_string())
        }
    })?;
    de.end()
        .map_err(|_| ApiError::bad_request("malformed JSON: trailing characters"))?;
    Ok(value)
}

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "this endpoint takes Content-Type: application/json".into(),
            ));
        }
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// The bearer token of a request, if any.
pub fn bearer(parts: &Parts) -> Result<Option<&str>, ApiError> {
    let Some(value) = parts.headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::InvalidToken("malformed Authorization header"))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(ApiError::InvalidToken(
            "Authorization is not a Bearer token",
        )),
    }
}

/// The caller's address: the socket peer, or — only when `SOPHIA_TRUST_FORWARDED=true` — the
/// last `X-Forwarded-For` hop (the one the trusted front end appended).
#[derive(Debug, Clone)]
pub struct ClientAddress(pub String);

impl FromRequestParts<AppState> for ClientAddress {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if state.settings.trust_forwarded
            && let Some(forwarded) =
                forwarded_client(&parts.headers, state.settings.trusted_proxy_hops)
        {
            return Ok(Self(forwarded));
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_string())
            .unwrap_or_else(|| "unknown".to_owned());
        Ok(Self(peer))
    }
}

/// The client address in `X-Forwarded-For`, as the trusted proxies recorded it: every header
/// line joined in order, then the entry `hops` places from the right (each of the `hops`
/// trusted proxies appended one; whatever stands further left was written by the client and
/// proves nothing). `None` when the header is absent or empty.
pub fn forwarded_client(headers: &axum::http::HeaderMap, hops: usize) -> Option<String> {
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let index = entries.len().saturating_sub(hops.max(1));
    entries.get(index).map(|raw| normalise_address(raw))
}

/// Azure front ends may append `ip:port`; keep the address only.
fn normalise_address(raw: &str) -> String {
    if let Ok(sock) = raw.parse::<SocketAddr>() {
        return sock.ip().to_string();
    }
    if let Ok(ip) = raw.parse::<std::net::IpAddr>() {
        return ip.to_string();
    }
    raw.chars()
        .take(64)
        .filter(|c| c.is_ascii_graphic())
        .collect()
}

/// A verified service token whose instance is still live with the same key version.
pub struct ServiceAuth(pub ServiceClaims);

impl FromRequestParts<AppState> for ServiceAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?.ok_or(ApiError::Unauthenticated)?;
        let claims = state.auth.service_token(token).await?;
        crate::telemetry::record_caller(
            claims.company_id.as_str(),
            &claims.sub,
            &claims.agent_type,
        );
        Ok(Self(claims))
    }
}

/// A verified admin token.
pub struct AdminAuth(pub AdminPrincipal);

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?.ok_or(ApiError::Unauthenticated)?;
        Ok(Self(state.admin.verify(token).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_addresses_are_normalised() {
        assert_eq!(normalise_address("203.0.113.9:5123"), "203.0.113.9");
        assert_eq!(normalise_address("2001:db8::1"), "2001:db8::1");
        assert_eq!(normalise_address("[2001:db8::1]:443"), "2001:db8::1");
        assert_eq!(normalise_address("bad value\n"), "badvalue");
    }

    #[test]
    fn the_client_is_the_entry_the_trusted_hops_added() {
        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(forwarded_client(&headers, 1), None);
        // A client writes its own line first; the front end appends the real peer last.
        headers.append("x-forwarded-for", "6.6.6.6".parse().unwrap());
        headers.append(
            "x-forwarded-for",
            "7.7.7.7, 203.0.113.9:5123".parse().unwrap(),
        );
        assert_eq!(
            forwarded_client(&headers, 1).as_deref(),
            Some("203.0.113.9")
        );
        assert_eq!(forwarded_client(&headers, 2).as_deref(), Some("7.7.7.7"));
        assert_eq!(
            forwarded_client(&headers, 8).as_deref(),
            Some("6.6.6.6"),
            "fewer entries than hops: the farthest one known"
        );
        let mut blank = axum::http::HeaderMap::new();
        blank.append("x-forwarded-for", " , ".parse().unwrap());
        assert_eq!(forwarded_client(&blank, 1), None);
    }

    #[test]
    fn json_errors_name_the_field() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Body {
            inner: Inner,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Inner {
            n: u8,
        }
        match parse_json::<Body>(br#"{"inner":{"n":"x"}}"#) {
            Err(ApiError::Validation { field, .. }) => assert_eq!(field, "inner.n"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_json::<Body>(b"{"),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            parse_json::<Body>(b""),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            parse_json::<Body>(br#"{"inner":{"n":1},"x":1}"#),
            Err(ApiError::Validation { .. })
        ));
    }
}
