//! The credential bundle of one instance: every Azure credential it needs, kept as one
//! secret (one Key Vault read per tenant load).

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
}

impl CredentialBundle {
    pub fn is_empty(&self) -> bool {
        self.azure_openai_key.is_none()
            && self.azure_search_key.is_none()
            && self.knowledge_sas.is_none()
            && self.app_insights_connection_string.is_none()
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
        });
        assert_eq!(merged.azure_openai_key.unwrap().expose_secret(), "c");
        assert_eq!(merged.azure_search_key.unwrap().expose_secret(), "b");
    }

    #[test]
    fn a_bare_value_is_an_openai_key() {
        let b = CredentialBundle::from_secret(&SecretString::from("plain-key"));
        assert_eq!(b.azure_openai_key.unwrap().expose_secret(), "plain-key");
    }
}
