//! Field rules for instance bodies, checked before anything is written.

use serde_json::{Map, Value};

use super::AdminError;
use secrecy::ExposeSecret;

use crate::domain::{ConfigField, InstanceConfig, InstanceSettings};
use crate::secrets::CredentialBundle;
use crate::telemetry::ConnectionString;
use crate::upstream::UpstreamPolicy;

/// Free text such as a region, model or project id: 1–`max` characters, no control
/// characters or white space.
pub fn token_text(field: &str, value: &str, max: usize) -> Result<String, AdminError> {
    let v = value.trim();
    if v.is_empty()
        || v.chars().count() > max
        || v.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(AdminError::invalid(
            field,
            format!("must be 1-{max} characters without spaces or control characters"),
        ));
    }
    Ok(v.to_owned())
}

/// A deployment name goes into an upstream URL path: `[A-Za-z0-9._-]{1,64}`.
pub fn deployment(field: &str, value: &str) -> Result<String, AdminError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !value.starts_with('.');
    if !ok {
        return Err(AdminError::invalid(
            field,
            "must be 1-64 characters of letters, digits, '.', '_' or '-'",
        ));
    }
    Ok(value.to_owned())
}

/// An upstream endpoint: https, on the allow-list, not a private address.
pub fn endpoint(policy: &UpstreamPolicy, field: &str, value: &str) -> Result<String, AdminError> {
    let url = policy
        .check(value)
        .map_err(|e| AdminError::invalid(field, format!("{e}")))?;
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// One text field of an instance's configuration, by its rule.
pub fn config_field(
    policy: &UpstreamPolicy,
    field: ConfigField,
    value: &str,
) -> Result<String, AdminError> {
    let name = field.name();
    match field {
        ConfigField::Region => token_text(name, value, 64),
        ConfigField::AzureProjectId => token_text(name, value, 512),
        ConfigField::AzureVectorStoreId => token_text(name, value, 256),
        ConfigField::Model
        | ConfigField::AzureOpenaiDeployment
        | ConfigField::AzureEmbeddingDeployment => deployment(name, value),
        ConfigField::AzureOpenaiEndpoint | ConfigField::AzureSearchEndpoint => {
            endpoint(policy, name, value)
        }
        ConfigField::AzureProjectEndpoint => project_endpoint(policy, value),
        ConfigField::AzureAgentId => crate::domain::AgentRef::parse(value.trim())
            .map(|a| a.to_string())
            .ok_or_else(|| {
                AdminError::invalid(
                    name,
                    "must be the agent's name:version (a name of letters, digits and '-', up to \
                     63 characters; a version such as 3)",
                )
            }),
    }
}

/// A Foundry project endpoint: an allowed upstream whose path is `/api/projects/<project>`.
pub fn project_endpoint(policy: &UpstreamPolicy, value: &str) -> Result<String, AdminError> {
    const FIELD: &str = "azureProjectEndpoint";
    let normalised = endpoint(policy, FIELD, value)?;
    let path = url::Url::parse(&normalised)
        .map(|u| u.path().trim_end_matches('/').to_owned())
        .unwrap_or_default();
    let project = path.strip_prefix("/api/projects/").unwrap_or("");
    let ok = !project.is_empty()
        && project.len() <= 64
        && project
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
    if !ok {
        return Err(AdminError::invalid(
            FIELD,
            "must be a Foundry project endpoint: \
             https://<resource>.services.ai.azure.com/api/projects/<project>",
        ));
    }
    Ok(normalised)
}

/// The deployments an admin listed (`deployments`): each entry's endpoint on the upstream
/// policy and its deployment URL-safe, like `azureOpenaiEndpoint` and `azureOpenaiDeployment`.
pub fn deployments(
    policy: &UpstreamPolicy,
    raw: &Value,
) -> Result<Vec<crate::domain::deployments::Deployment>, AdminError> {
    use crate::domain::deployments::{self, DeploymentError};
    deployments::parse(raw, |field, kind, value| {
        let checked = if kind == "endpoint" {
            endpoint(policy, field, value)
        } else {
            deployment(field, value)
        };
        checked.map_err(|e| match e {
            AdminError::Invalid { field, detail } => DeploymentError { field, detail },
            other => DeploymentError {
                field: field.to_owned(),
                detail: other.to_string(),
            },
        })
    })
    .map_err(|e| AdminError::invalid(e.field, e.detail))
}

/// Every text field of a configuration given on create, checked (and normalised) in place.
pub fn config(policy: &UpstreamPolicy, config: &mut InstanceConfig) -> Result<(), AdminError> {
    for field in ConfigField::ALL {
        let value = config.field_mut(field);
        if let Some(v) = value.as_deref() {
            *value = Some(config_field(policy, field, v)?);
        }
    }
    Ok(())
}

/// An admin-written settings object, typed (`InstanceSettings::from_map`: unknown keys and
/// bad values refused, naming the key), with the knowledge container's host checked against the
/// upstream policy.
pub fn settings(
    map: &Map<String, Value>,
    policy: &UpstreamPolicy,
) -> Result<InstanceSettings, AdminError> {
    let settings =
        InstanceSettings::from_map(map).map_err(|e| AdminError::invalid(e.field, e.detail))?;
    if let Some(url) = settings.knowledge_container_url() {
        endpoint(policy, "settings.knowledgeContainerUrl", url)?;
    }
    Ok(settings)
}

/// The credentials that can be checked before they are stored: the App Insights connection
/// string parses and its ingestion endpoint passes the upstream policy (a company admin must not
/// make SOPHIA post telemetry to a private address or a host off the list). `field` is where
/// the bundle came from (`credentials`, or `keyvaultSecretId` for a referenced secret). No
/// message repeats a value.
pub fn credentials(
    policy: &UpstreamPolicy,
    field: &str,
    bundle: &CredentialBundle,
) -> Result<(), AdminError> {
    if let Some(keys) = &bundle.deployment_keys {
        let at = |detail: String| {
            let name = if field == "credentials" {
                "credentials.deploymentKeys"
            } else {
                field
            };
            AdminError::invalid(name, detail)
        };
        if keys.len() > crate::domain::deployments::MAX_DEPLOYMENTS {
            return Err(at(format!(
                "must hold at most {} keys",
                crate::domain::deployments::MAX_DEPLOYMENTS
            )));
        }
        if let Some(bad) = keys
            .keys()
            .find(|n| !crate::domain::deployments::is_name(n))
        {
            return Err(at(format!(
                "key names are 1-32 lower-case letters, digits or '-' (the name a deployment's \
                 credential gives), not '{}'",
                bad.chars().take(40).collect::<String>()
            )));
        }
        if keys.values().any(|k| k.expose_secret().trim().is_empty()) {
            return Err(at("keys must not be empty".into()));
        }
    }
    let Some(raw) = &bundle.app_insights_connection_string else {
        return Ok(());
    };
    let name = if field == "credentials" {
        "credentials.appInsightsConnectionString".to_owned()
    } else {
        field.to_owned()
    };
    let connection = ConnectionString::parse(raw.expose_secret()).map_err(|e| {
        AdminError::invalid(&name, format!("not an App Insights connection string: {e}"))
    })?;
    policy
        .check_url(&connection.ingestion_endpoint)
        .map_err(|e| AdminError::invalid(&name, format!("IngestionEndpoint: {e}")))?;
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
    fn project_endpoints_and_agent_ids_are_checked() {
        let policy = default_policy();
        let ok = "https://acme-ai.services.ai.azure.com/api/projects/acme";
        assert_eq!(project_endpoint(&policy, ok).unwrap(), ok);
        for bad in [
            "https://acme-ai.services.ai.azure.com/",
            "https://acme-ai.services.ai.azure.com/api/projects/",
            "https://acme-ai.services.ai.azure.com/api/projects/a/b",
            "https://evil.example.com/api/projects/acme",
            "http://acme-ai.services.ai.azure.com/api/projects/acme",
        ] {
            assert!(project_endpoint(&policy, bad).is_err(), "{bad}");
        }
        let agent = |v: &str| config_field(&policy, ConfigField::AzureAgentId, v);
        assert_eq!(agent("sophia-acme:3").unwrap(), "sophia-acme:3");
        for bad in ["sophia-acme", ":3", "a b:1", "x:", "-a:1", "a/b:1"] {
            assert!(agent(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_has_no_spaces() {
        assert!(token_text("region", "westeurope", 64).is_ok());
        assert!(token_text("region", "west europe", 64).is_err());
        assert!(token_text("region", "x\n", 64).is_ok());
        assert!(token_text("region", "", 64).is_err());
    }
}
