//! `InstanceSettings`: an instance's tunable settings, typed end to end. What an admin writes
//! is parsed once, here (unknown keys refused, every value range-checked, one message per
//! setting); the stored document and the admin views carry the same camelCase JSON, with unset
//! settings absent. Checks that need the deployment's upstream policy (the knowledge
//! container's host) are the admin layer's.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Largest serialised settings object.
pub const MAX_SETTINGS_BYTES: usize = 64 * 1024;

/// Every setting, as written in JSON (the order of the "known:" list in errors).
pub const KNOWN: &[&str] = &[
    "systemPrompt",
    "temperature",
    "topP",
    "maxTokens",
    "historyMessages",
    "authMode",
    "managedIdentityClientId",
    "apiVersion",
    "apiStyle",
    "searchIndex",
    "topK",
    "allowedModels",
    "knowledgeContainerUrl",
    "knowledgePrefix",
    "runtime",
    "tokensPerMinute",
    "requestsPerMinute",
    "tokensPerDay",
    "tokensPerMonth",
];

/// The company's limits, as written in JSON: set by a platform admin; a company admin may
/// only lower them.
pub const LIMITS: &[&str] = &[
    "tokensPerMinute",
    "requestsPerMinute",
    "tokensPerDay",
    "tokensPerMonth",
];

/// A setting that does not parse: the field (`settings.<key>`) and what it must be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {detail}")]
pub struct SettingsError {
    pub field: String,
    pub detail: String,
}

/// Declares a newtype that deserialises only from a value `$check` accepts, with the message
/// "must be $expected" otherwise.
macro_rules! checked {
    ($(#[$doc:meta])* $name:ident($inner:ty), $expected:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[serde(transparent)]
        pub struct $name($inner);

        impl $name {
            pub const EXPECTED: &'static str = $expected;

            pub fn get(&self) -> &$inner {
                &self.0
            }

            /// The value, if it is acceptable.
            pub fn new(value: $inner) -> Option<Self> {
                let check: fn(&$inner) -> bool = $check;
                check(&value).then_some(Self(value))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let value = Value::deserialize(d)?;
                serde_json::from_value::<$inner>(value)
                    .ok()
                    .and_then(Self::new)
                    .ok_or_else(|| de::Error::custom(concat!("must be ", $expected)))
            }
        }
    };
}

checked!(
    /// The instance's system prompt.
    SystemPrompt(String),
    "a string of at most 32000 characters",
    |s| s.chars().count() <= 32_000
);
checked!(Temperature(f64), "a number from 0 to 2", |t| (0.0..=2.0)
    .contains(t));
checked!(TopP(f64), "a number from 0 to 1", |t| (0.0..=1.0)
    .contains(t));
checked!(MaxTokens(u32), "an integer from 1 to 128000", |n| (1
    ..=128_000)
    .contains(n));
checked!(
    /// How many earlier messages of a conversation go with each turn.
    HistoryMessages(u32),
    "an integer from 0 to 200",
    |n| *n <= 200
);
checked!(
    /// The client id of the company's user-assigned identity, hyphenated as Azure shows it.
    ClientId(String),
    "the client id (a GUID) of the company's user-assigned managed identity",
    |s| s.len() == 36 && uuid::Uuid::try_parse(s).is_ok()
);
checked!(
    ApiVersion(String),
    "an API version such as 2024-10-21",
    |s| !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
);
checked!(
    /// An Azure AI Search index name.
    SearchIndexName(String),
    "an index name (lower-case letters, digits, '-')",
    |s| !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
);
checked!(
    /// How many knowledge passages go into the prompt.
    TopK(u32),
    "an integer from 1 to 50",
    |n| (1..=50).contains(n)
);
checked!(
    /// Model names a `/v1` caller may ask for.
    AllowedModels(Vec<String>),
    "a list of model names",
    |a| a.len() <= 32 && a.iter().all(|s| !s.is_empty() && s.len() <= 64)
);
checked!(
    /// The company's Blob container (no query string: a SAS goes in the credentials).
    ContainerUrl(String),
    "the container's URL",
    |s| !s.contains('?')
        && url::Url::parse(s).is_ok_and(|u| u.path().trim_matches('/').len() >= 3)
);
checked!(
    /// A folder inside the container (relative, no `..`).
    KnowledgePrefix(String),
    "a relative folder without '..'",
    |s| s.len() <= 512 && !s.starts_with('/') && !s.split('/').any(|p| p == "..")
);

checked!(
    /// A fleet-wide limit: requests or tokens per window.
    Limit(u64),
    "an integer from 1 to 1000000000000",
    |n| (1..=1_000_000_000_000).contains(n)
);

/// `settings.authMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum AuthMode {
    /// The company's own keys and SAS from its credential bundle.
    #[default]
    ApiKey,
    /// The company's own user-assigned identity (set by a platform admin only).
    ManagedIdentity,
}

impl AuthMode {
    pub fn of(instance: &super::AgentInstance) -> Self {
        instance.settings.auth_mode()
    }
}

impl<'de> Deserialize<'de> for AuthMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)?.as_str() {
            Some("apiKey") => Ok(Self::ApiKey),
            Some("managedIdentity") => Ok(Self::ManagedIdentity),
            _ => Err(de::Error::custom("must be 'apiKey' or 'managedIdentity'")),
        }
    }
}

/// `settings.apiStyle`: how the company's Azure OpenAI resource is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ApiStyle {
    /// `…/openai/deployments/{deployment}/…?api-version=…` (every Azure OpenAI resource).
    #[default]
    Deployments,
    /// The GA v1 API: `…/openai/v1/…`, no api-version, the deployment named as `model`.
    V1,
}

impl<'de> Deserialize<'de> for ApiStyle {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)?.as_str() {
            Some("deployments") => Ok(Self::Deployments),
            Some("v1") => Ok(Self::V1),
            _ => Err(de::Error::custom("must be 'deployments' or 'v1'")),
        }
    }
}

/// `settings.runtime`: who runs the company's agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Runtime {
    /// SOPHIA's own retrieval over the company's Azure OpenAI deployment (and AI Search).
    #[default]
    Sophia,
    /// The company's prompt agent in its Azure AI Foundry project.
    Foundry,
}

impl<'de> Deserialize<'de> for Runtime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)?.as_str() {
            Some("sophia") => Ok(Self::Sophia),
            Some("foundry") => Ok(Self::Foundry),
            _ => Err(de::Error::custom("must be 'sophia' or 'foundry'")),
        }
    }
}

/// What a setting must be, for its error message.
fn expected(key: &str) -> &'static str {
    match key {
        "systemPrompt" => SystemPrompt::EXPECTED,
        "temperature" => Temperature::EXPECTED,
        "topP" => TopP::EXPECTED,
        "maxTokens" => MaxTokens::EXPECTED,
        "historyMessages" => HistoryMessages::EXPECTED,
        "authMode" => "'apiKey' or 'managedIdentity'",
        "managedIdentityClientId" => ClientId::EXPECTED,
        "apiVersion" => ApiVersion::EXPECTED,
        "apiStyle" => "'deployments' or 'v1'",
        "searchIndex" => SearchIndexName::EXPECTED,
        "topK" => TopK::EXPECTED,
        "allowedModels" => AllowedModels::EXPECTED,
        "knowledgeContainerUrl" => ContainerUrl::EXPECTED,
        "runtime" => "'sophia' or 'foundry'",
        "tokensPerMinute" | "requestsPerMinute" | "tokensPerDay" | "tokensPerMonth" => {
            Limit::EXPECTED
        }
        _ => KnowledgePrefix::EXPECTED,
    }
}

/// An instance's settings. Every field is optional; defaults apply where one is unset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<SystemPrompt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<Temperature>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<TopP>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<MaxTokens>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_messages: Option<HistoryMessages>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_mode: Option<AuthMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_identity_client_id: Option<ClientId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<ApiVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_style: Option<ApiStyle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_index: Option<SearchIndexName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<TopK>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_models: Option<AllowedModels>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knowledge_container_url: Option<ContainerUrl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knowledge_prefix: Option<KnowledgePrefix>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<Limit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<Limit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<Limit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_month: Option<Limit>,
}

/// An instance's limits (`None`: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub tokens_per_minute: Option<u64>,
    pub requests_per_minute: Option<u64>,
    pub tokens_per_day: Option<u64>,
    pub tokens_per_month: Option<u64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The limit named as in JSON (`tokensPerMinute`, …).
    pub fn named(&self, key: &str) -> Option<u64> {
        match key {
            "tokensPerMinute" => self.tokens_per_minute,
            "requestsPerMinute" => self.requests_per_minute,
            "tokensPerDay" => self.tokens_per_day,
            "tokensPerMonth" => self.tokens_per_month,
            _ => None,
        }
    }
}

/// Defaults where a setting is unset.
pub const DEFAULT_HISTORY_MESSAGES: u32 = 20;
pub const DEFAULT_TOP_K: u32 = 4;

impl InstanceSettings {
    /// Parses an admin-written settings object, naming the first bad key.
    pub fn from_map(map: &Map<String, Value>) -> Result<Self, SettingsError> {
        let size = serde_json::to_vec(map)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > MAX_SETTINGS_BYTES {
            return Err(SettingsError {
                field: "settings".into(),
                detail: format!("must serialise to at most {MAX_SETTINGS_BYTES} bytes"),
            });
        }
        if let Some(key) = map.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(SettingsError {
                field: format!("settings.{key}"),
                detail: format!("unknown setting; known: {}", KNOWN.join(", ")),
            });
        }
        // One key at a time, in the object's order, so the first bad one is named.
        for (key, value) in map {
            let field = format!("settings.{key}");
            if key == "knowledgeContainerUrl" && value.as_str().is_some_and(|u| u.contains('?')) {
                return Err(SettingsError {
                    field,
                    detail:
                        "must not carry a query string: put a SAS token in credentials.knowledgeSas"
                            .into(),
                });
            }
            if value.is_null() {
                return Err(SettingsError {
                    field,
                    detail: format!("must be {}", expected(key)),
                });
            }
            let mut one = Map::new();
            one.insert(key.clone(), value.clone());
            if let Err(e) = serde_json::from_value::<Self>(Value::Object(one)) {
                let message = e.to_string();
                let detail = match message.find(" at line ") {
                    Some(i) => message[..i].to_owned(),
                    None => message,
                };
                return Err(SettingsError { field, detail });
            }
        }
        serde_json::from_value(Value::Object(map.clone())).map_err(|e| SettingsError {
            field: "settings".into(),
            detail: e.to_string(),
        })
    }

    /// The settings as a JSON object (unset settings absent), for merging a PATCH.
    pub fn to_map(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        }
    }

    pub fn auth_mode(&self) -> AuthMode {
        self.auth_mode.unwrap_or_default()
    }

    pub fn history_messages(&self) -> usize {
        self.history_messages
            .as_ref()
            .map_or(DEFAULT_HISTORY_MESSAGES, |n| *n.get()) as usize
    }

    pub fn top_k(&self) -> usize {
        self.top_k.as_ref().map_or(DEFAULT_TOP_K, |n| *n.get()) as usize
    }

    pub fn system_prompt(&self) -> Option<&str> {
        self.system_prompt.as_ref().map(|s| s.get().as_str())
    }

    pub fn search_index(&self) -> Option<&str> {
        self.search_index.as_ref().map(|s| s.get().as_str())
    }

    pub fn knowledge_container_url(&self) -> Option<&str> {
        self.knowledge_container_url
            .as_ref()
            .map(|s| s.get().as_str())
    }

    pub fn knowledge_prefix(&self) -> Option<&str> {
        self.knowledge_prefix.as_ref().map(|s| s.get().as_str())
    }

    pub fn managed_identity_client_id(&self) -> Option<&str> {
        self.managed_identity_client_id
            .as_ref()
            .map(|s| s.get().as_str())
    }

    pub fn api_style(&self) -> ApiStyle {
        self.api_style.unwrap_or_default()
    }

    pub fn api_version(&self) -> Option<&str> {
        self.api_version.as_ref().map(|s| s.get().as_str())
    }

    pub fn runtime(&self) -> Runtime {
        self.runtime.unwrap_or_default()
    }

    pub fn limits(&self) -> Limits {
        let get = |l: &Option<Limit>| l.as_ref().map(|l| *l.get());
        Limits {
            tokens_per_minute: get(&self.tokens_per_minute),
            requests_per_minute: get(&self.requests_per_minute),
            tokens_per_day: get(&self.tokens_per_day),
            tokens_per_month: get(&self.tokens_per_month),
        }
    }

    pub fn allowed_models(&self) -> &[String] {
        self.allowed_models.as_ref().map_or(&[], |m| m.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<InstanceSettings, SettingsError> {
        InstanceSettings::from_map(&serde_json::from_str(json).unwrap())
    }

    #[test]
    fn settings_round_trip_as_the_same_json() {
        let json = r#"{"systemPrompt":"hi","temperature":0.2,"maxTokens":500,"authMode":"managedIdentity","allowedModels":["gpt-4o"],"topK":3}"#;
        let settings = parse(json).unwrap();
        assert_eq!(settings.auth_mode(), AuthMode::ManagedIdentity);
        assert_eq!(settings.top_k(), 3);
        assert_eq!(settings.history_messages(), 20);
        let back: Value = serde_json::to_value(&settings).unwrap();
        assert_eq!(back, serde_json::from_str::<Value>(json).unwrap());
        assert_eq!(
            InstanceSettings::from_map(&settings.to_map()).unwrap(),
            settings
        );
    }

    #[test]
    fn each_bad_value_names_its_setting_and_what_it_must_be() {
        for (bad, field, detail) in [
            (
                r#"{"temperature":3}"#,
                "settings.temperature",
                "must be a number from 0 to 2",
            ),
            (
                r#"{"maxTokens":0}"#,
                "settings.maxTokens",
                "must be an integer from 1 to 128000",
            ),
            (
                r#"{"authMode":"password"}"#,
                "settings.authMode",
                "must be 'apiKey' or 'managedIdentity'",
            ),
            (
                r#"{"topK":"4"}"#,
                "settings.topK",
                "must be an integer from 1 to 50",
            ),
            (
                r#"{"knowledgePrefix":"../x"}"#,
                "settings.knowledgePrefix",
                "must be a relative folder without '..'",
            ),
            (
                r#"{"knowledgeContainerUrl":"https://acct.blob.core.windows.net/"}"#,
                "settings.knowledgeContainerUrl",
                "must be the container's URL",
            ),
            (
                r#"{"managedIdentityClientId":"x"}"#,
                "settings.managedIdentityClientId",
                "must be the client id (a GUID) of the company's user-assigned managed identity",
            ),
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(
                (e.field.as_str(), e.detail.as_str()),
                (field, detail),
                "{bad}"
            );
        }
        let unknown = parse(r#"{"colour":"red"}"#).unwrap_err();
        assert_eq!(unknown.field, "settings.colour");
        assert!(
            unknown
                .detail
                .starts_with("unknown setting; known: systemPrompt")
        );
        assert!(
            parse(r#"{"temperature":null}"#).is_err(),
            "null is not a value"
        );
    }
}
