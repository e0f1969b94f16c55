//! The credential bundle of one instance: every Azure credential it needs, kept as one
//! secret (one Key Vault read per tenant load).

use std::collections::BTreeMap;
use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// An instance's credentials. `Debug` redacts; there is no `Serialize` on the values
/// themselves — `to_secret` exposes them exactly once, into the secret store.
#[derive(Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialBundle {
    pub azure_openai_key: Option<SecretString>,
    pub azure_search_key: Option<SecretString>,
    /// A SAS token (`sv=…&sig=…`) for the company's knowledge Blob container, when it does not
    /// use SOPHIA's managed identity.
    pub knowledge_sas: Option<SecretString>,
    /// The company's own Application Insights connection string: the instance's requests,
    /// dependencies, traces and metrics are exported there too.
    pub app_insights_connection_string: Option<SecretString>,
    /// Keys of the instance's failover deployments, by the name an entry's `credential`
    /// gives (`deployments[].credential`).
    pub deployment_keys: Option<BTreeMap<String, SecretString>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Exposed<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    azure_openai_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    azure_search_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    knowledge_sas: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    app_insights_connection_string: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deployment_keys: Option<BTreeMap<&'a str, &'a str>>,
}

impl CredentialBundle {
    pub fn is_empty(&self) -> bool {
        self.azure_openai_key.is_none()
            && self.azure_search_key.is_none()
            && self.knowledge_sas.is_none()
            && self.app_insights_connection_string.is_none()
            && self.deployment_keys.as_ref().is_none_or(BTreeMap::is_empty)
    }

    /// The key of a failover deployment, by the name its entry gives.
    pub fn deployment_key(&self, name: &str) -> Option<&SecretString> {
        self.deployment_keys.as_ref()?.get(name)
    }

    /// Names of the credentials present (for audit details; never values).
    pub fn present_fields(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.azure_openai_key.is_some() {
            out.push("azureOpenaiKey");
        }
        if self.azure_search_key.is_some() {
            out.push("azureSearchKey");
        }
        if self.knowledge_sas.is_some() {
            out.push("knowledgeSas");
        }
        if self.app_insights_connection_string.is_some() {
            out.push("appInsightsConnectionString");
        }
        if self.deployment_keys.as_ref().is_some_and(|k| !k.is_empty()) {
            out.push("deploymentKeys");
        }
        out
    }

    /// Serialises the bundle for the secret store.
    pub fn to_secret(&self) -> SecretString {
        let exposed = Exposed {
            azure_openai_key: self.azure_openai_key.as_ref().map(|s| s.expose_secret()),
            azure_search_key: self.azure_search_key.as_ref().map(|s| s.expose_secret()),
            knowledge_sas: self.knowledge_sas.as_ref().map(|s| s.expose_secret()),
            app_insights_connection_string: self
                .app_insights_connection_string
                .as_ref()
                .map(|s| s.expose_secret()),
            deployment_keys: self.deployment_keys.as_ref().map(|keys| {
                keys.iter()
                    .map(|(name, key)| (name.as_str(), key.expose_secret()))
                    .collect()
            }),
        };
        SecretString::from(serde_json::to_string(&exposed).unwrap_or_default())
    }

    /// Parses a bundle read from the secret store. A value that is not a JSON bundle is taken
    /// as a bare Azure OpenAI key (how a pre-existing Key Vault secret usually looks).
    pub fn from_secret(secret: &SecretString) -> Self {
        serde_json::from_str(secret.expose_secret()).unwrap_or_else(|_| Self {
            azure_openai_key: Some(secret.clone()),
            ..Self::default()
        })
    }

    /// Overlays `patch`: present values replace, absent ones keep.
    pub fn merged(mut self, patch: CredentialBundle) -> Self {
        if patch.azure_openai_key.is_some() {
            self.azure_openai_key = patch.azure_openai_key;
        }
        if patch.azure_search_key.is_some() {
            self.azure_search_key = patch.azure_search_key;
        }
        if patch.knowledge_sas.is_some() {
            self.knowledge_sas = patch.knowledge_sas;
        }
        if patch.app_insights_connection_string.is_some() {
            self.app_insights_connection_string = patch.app_insights_connection_string;
        }
        // Key by key: a patch naming one deployment's key keeps the others.
        if let Some(keys) = patch.deployment_keys {
            self.deployment_keys
                .get_or_insert_with(BTreeMap::new)
                .extend(keys);
        }
        self
    }
}

impl fmt::Debug for CredentialBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialBundle")
            .field(
                "azure_openai_key",
                &self.azure_openai_key.as_ref().map(|_| "[REDACTED]"),
            )
            .field(
                "azure_search_key",
                &self.azure_search_key.as_ref().map(|_| "[REDACTED]"),
            )
            .field(
                "knowledge_sas",
                &self.knowledge_sas.as_ref().map(|_| "[REDACTED]"),
            )
            .field(
                "app_insights_connection_string",
                &self
                    .app_insights_connection_string
                    .as_ref()
                    .map(|_| "[REDACTED]"),
            )
            .field(
                "deployment_keys",
                &self
                    .deployment_keys
                    .as_ref()
                    .map(|k| k.keys().map(|n| (n, "[REDACTED]")).collect::<Vec<_>>()),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_redacts() {
        let bundle: CredentialBundle =
            serde_json::from_str(r#"{"azureOpenaiKey":"k-123","azureSearchKey":"s-456","appInsightsConnectionString":"InstrumentationKey=c-789"}"#).unwrap();
        let debug = format!("{bundle:?}");
        assert!(
            !debug.contains("k-123") && !debug.contains("s-456") && !debug.contains("c-789"),
            "{debug}"
        );
        assert_eq!(
            bundle.present_fields(),
            [
                "azureOpenaiKey",
                "azureSearchKey",
                "appInsightsConnectionString"
            ]
        );
        let back = CredentialBundle::from_secret(&bundle.to_secret());
        assert_eq!(back.azure_openai_key.unwrap().expose_secret(), "k-123");
        assert_eq!(back.azure_search_key.unwrap().expose_secret(), "s-456");
        assert_eq!(
            back.app_insights_connection_string.unwrap().expose_secret(),
            "InstrumentationKey=c-789"
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(serde_json::from_str::<CredentialBundle>(r#"{"password":"x"}"#).is_err());
    }

    #[test]
    fn merge_keeps_unpatched_values() {
        let old = CredentialBundle {
            azure_openai_key: Some("a".into()),
            azure_search_key: Some("b".into()),
            ..CredentialBundle::default()
        };
        let merged = old.merged(CredentialBundle {
            azure_openai_key: Some("c".into()),
            azure_search_key: None,
            knowledge_sas: Some("sv=1&sig=x".into()),
            app_insights_connection_string: None,
            deployment_keys: None,
        });
        assert_eq!(merged.azure_openai_key.unwrap().expose_secret(), "c");
        assert_eq!(merged.azure_search_key.unwrap().expose_secret(), "b");
    }

    #[test]
    fn deployment_keys_merge_by_name_round_trip_and_redact() {
        let bundle: CredentialBundle =
            serde_json::from_str(r#"{"deploymentKeys":{"ptu":"dk-111","payg":"dk-222"}}"#).unwrap();
        assert!(!format!("{bundle:?}").contains("dk-"), "{bundle:?}");
        assert_eq!(bundle.present_fields(), ["deploymentKeys"]);
        let patch: CredentialBundle =
            serde_json::from_str(r#"{"deploymentKeys":{"payg":"dk-333"}}"#).unwrap();
        let merged = CredentialBundle::from_secret(&bundle.merged(patch).to_secret());
        assert_eq!(
            merged.deployment_key("ptu").unwrap().expose_secret(),
            "dk-111"
        );
        assert_eq!(
            merged.deployment_key("payg").unwrap().expose_secret(),
            "dk-333"
        );
        assert!(merged.deployment_key("other").is_none());
    }

    #[test]
    fn a_bare_value_is_an_openai_key() {
        let b = CredentialBundle::from_secret(&SecretString::from("plain-key"));
        assert_eq!(b.azure_openai_key.unwrap().expose_secret(), "plain-key");
    }
}
