//! Field rules for instance bodies, checked before anything is written.

use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::upstream::UpstreamPolicy;

/// Free text such as a region, model or project id: 1–`max` characters, no control
/// characters or white space.
pub fn token_text(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let v = value.trim();
    if v.is_empty()
        || v.chars().count() > max
        || v.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(ApiError::validation(
            field,
            format!("must be 1-{max} characters without spaces or control characters"),
        ));
    }
    Ok(v.to_owned())
}

/// A deployment name goes into an upstream URL path: `[A-Za-z0-9._-]{1,64}`.
pub fn deployment(field: &str, value: &str) -> Result<String, ApiError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !value.starts_with('.');
    if !ok {
        return Err(ApiError::validation(
            field,
            "must be 1-64 characters of letters, digits, '.', '_' or '-'",
        ));
    }
    Ok(value.to_owned())
}

/// An upstream endpoint: https, on the allow-list, not a private address.
pub fn endpoint(policy: &UpstreamPolicy, field: &str, value: &str) -> Result<String, ApiError> {
    let url = policy
        .check(value)
        .map_err(|e| ApiError::validation(field, format!("{e}")))?;
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

const MAX_SETTINGS_BYTES: usize = 64 * 1024;

/// Known instance settings and their types. Unknown keys are rejected so that a typo does not
/// silently do nothing.
pub fn settings(map: &Map<String, Value>, policy: &UpstreamPolicy) -> Result<(), ApiError> {
    let size = serde_json::to_vec(map)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_SETTINGS_BYTES {
        return Err(ApiError::validation(
            "settings",
            format!("must serialise to at most {MAX_SETTINGS_BYTES} bytes"),
        ));
    }
    for (key, value) in map {
        let field = format!("settings.{key}");
        let ok = match key.as_str() {
            "systemPrompt" => value.as_str().is_some_and(|s| s.chars().count() <= 32_000),
            "temperature" => value.as_f64().is_some_and(|t| (0.0..=2.0).contains(&t)),
            "topP" => value.as_f64().is_some_and(|t| (0.0..=1.0).contains(&t)),
            "maxTokens" => value.as_u64().is_some_and(|n| (1..=128_000).contains(&n)),
            "historyMessages" => value.as_u64().is_some_and(|n| n <= 200),
            "authMode" => matches!(value.as_str(), Some("apiKey" | "managedIdentity")),
            // A client id is a GUID, written as Azure shows it (hyphenated).
            "managedIdentityClientId" => value
                .as_str()
                .is_some_and(|s| s.len() == 36 && uuid::Uuid::try_parse(s).is_ok()),
            "apiVersion" => value.as_str().is_some_and(|s| {
                !s.is_empty()
                    && s.len() <= 32
                    && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }),
            "searchIndex" => value.as_str().is_some_and(|s| {
                !s.is_empty()
                    && s.len() <= 128
                    && s.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            }),
            "topK" => value.as_u64().is_some_and(|n| (1..=50).contains(&n)),
            "knowledgeContainerUrl" => {
                let url = value.as_str().ok_or_else(|| {
                    ApiError::validation(field.clone(), "must be the container's URL")
                })?;
                if url.contains('?') {
                    return Err(ApiError::validation(
                        field,
                        "must not carry a query string: put a SAS token in credentials.knowledgeSas",
                    ));
                }
                endpoint(policy, &field, url)?;
                url::Url::parse(url)
                    .ok()
                    .is_some_and(|u| u.path().trim_matches('/').len() >= 3)
            }
            "knowledgePrefix" => value.as_str().is_some_and(|s| {
                s.len() <= 512 && !s.starts_with('/') && !s.split('/').any(|p| p == "..")
            }),
            "allowedModels" => value.as_array().is_some_and(|a| {
                a.len() <= 32
                    && a.iter()
                        .all(|m| m.as_str().is_some_and(|s| !s.is_empty() && s.len() <= 64))
            }),
            _ => {
                return Err(ApiError::validation(
                    field,
                    "unknown setting; known: systemPrompt, temperature, topP, maxTokens, historyMessages, authMode, managedIdentityClientId, apiVersion, searchIndex, topK, allowedModels, knowledgeContainerUrl, knowledgePrefix",
                ));
            }
        };
        if !ok {
            let expected = match key.as_str() {
                "systemPrompt" => "a string of at most 32000 characters",
                "temperature" => "a number from 0 to 2",
                "topP" => "a number from 0 to 1",
                "maxTokens" => "an integer from 1 to 128000",
                "historyMessages" => "an integer from 0 to 200",
                "authMode" => "'apiKey' or 'managedIdentity'",
                "managedIdentityClientId" => {
                    "the client id (a GUID) of the company's user-assigned managed identity"
                }
                "apiVersion" => "an API version such as 2024-10-21",
                "searchIndex" => "an index name (lower-case letters, digits, '-')",
                "topK" => "an integer from 1 to 50",
                _ => "a list of model names",
            };
            return Err(ApiError::validation(field, format!("must be {expected}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_policy() -> UpstreamPolicy {
        UpstreamPolicy::new(crate::upstream::policy::DEFAULT_ALLOWED_HOSTS, false)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn settings_are_typed() {
        let ok: Map<String, Value> = serde_json::from_str(r#"{"systemPrompt":"hi","temperature":0.2,"maxTokens":500,"authMode":"managedIdentity"}"#).unwrap();
        assert!(settings(&ok, &default_policy()).is_ok());
        for bad in [
            r#"{"temperature":3}"#,
            r#"{"maxTokens":0}"#,
            r#"{"authMode":"password"}"#,
            r#"{"colour":"red"}"#,
            r#"{"knowledgeContainerUrl":"https://acct.blob.core.windows.net/docs?sv=1&sig=x"}"#,
            r#"{"knowledgeContainerUrl":"https://evil.example.com/docs"}"#,
            r#"{"knowledgeContainerUrl":"https://acct.blob.core.windows.net/"}"#,
            r#"{"knowledgePrefix":"../x"}"#,
        ] {
            let map: Map<String, Value> = serde_json::from_str(bad).unwrap();
            assert!(settings(&map, &default_policy()).is_err(), "{bad}");
        }
    }

    #[test]
    fn deployments_are_url_safe() {
        assert!(deployment("d", "gpt-4o-mini").is_ok());
        assert!(deployment("d", "../x").is_err());
        assert!(deployment("d", "a/b").is_err());
        assert!(deployment("d", "").is_err());
    }

    #[test]
    fn text_has_no_spaces() {
        assert!(token_text("region", "westeurope", 64).is_ok());
        assert!(token_text("region", "west europe", 64).is_err());
        assert!(token_text("region", "x\n", 64).is_ok());
        assert!(token_text("region", "", 64).is_err());
    }
}
