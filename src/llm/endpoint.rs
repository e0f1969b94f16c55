//! Where a tenant's model lives and how SOPHIA authenticates to it: the endpoint, its
//! deployment and API version, the credential, and what is derived from them once per tenant
//! runtime (the operation URIs, a fixed credential's header).

use std::sync::{Arc, OnceLock};

use http::Uri;
use http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::domain::Provider;
use crate::telemetry;
use crate::upstream::UpstreamError;

/// The default Azure OpenAI data-plane API version (GA, supports `stream_options`).
pub const DEFAULT_API_VERSION: &str = "2024-10-21";

/// How to authenticate to the tenant's model.
#[derive(Clone)]
pub enum UpstreamAuth {
    /// Azure `api-key` header, or `Authorization: Bearer` for the `openai` provider.
    Key(SecretString),
    /// A fixed bearer token.
    Bearer(SecretString),
    /// An Entra token for `scope`, fetched (and cached) by the process's Azure credential.
    Entra {
        tokens: std::sync::Arc<crate::azure_auth::EntraTokens>,
        scope: &'static str,
    },
    None,
}

impl std::fmt::Debug for UpstreamAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Key(_) => "Key([REDACTED])",
            Self::Bearer(_) => "Bearer([REDACTED])",
            Self::Entra { .. } => "Entra([token on demand])",
            Self::None => "None",
        })
    }
}

/// Where one tenant's model lives. An operation's URI is derived on its first use and kept (a
/// tenant runtime holds its endpoints for its whole life, so no request formats or parses a
/// URL, and an endpoint never used for embeddings keeps no embeddings URI).
#[derive(Debug, Clone)]
pub struct ModelEndpoint {
    pub provider: Provider,
    pub base: Url,
    pub deployment: String,
    pub api_version: String,
    pub auth: UpstreamAuth,
    /// The company instance whose model this is (for its telemetry); `None` for a candidate
    /// endpoint under test.
    pub owner: Option<Arc<telemetry::Owner>>,
    /// Azure OpenAI's v1 API (`…/openai/v1/…`, the deployment as `model`) instead of the
    /// deployment routes.
    pub v1: bool,
    /// A Foundry agent's turns: the project's Responses API with this `agent_reference`
    /// (the agent's model and instructions) instead of a deployment.
    pub agent: Option<crate::domain::AgentRef>,
    /// The failover entry this endpoint is (`deployments[].name`), for usage and telemetry.
    pub label: Option<Arc<str>>,
    // Boxed: an operation never used costs a pointer, not a `Uri`.
    chat_uri: OnceLock<Box<Result<Uri, String>>>,
    embeddings_uri: OnceLock<Box<Result<Uri, String>>>,
    responses_uri: OnceLock<Box<Result<Uri, String>>>,
    /// The spans of its calls — chat, responses, embeddings; each streamed or not — their
    /// names and the attributes that never change (built on first use).
    span_templates: [OnceLock<Arc<telemetry::SpanTemplate>>; 6],
    /// The auth header of a fixed credential, built once.
    pub(super) fixed_auth: Option<AuthHeader>,
}

/// A ready credential header: `api-key` (Azure keys) or `Authorization`. `Debug` redacts.
#[derive(Clone)]
pub(super) struct AuthHeader {
    api_key: bool,
    pub(super) value: HeaderValue,
}

impl AuthHeader {
    pub(super) fn name(&self) -> HeaderName {
        if self.api_key {
            HeaderName::from_static("api-key")
        } else {
            AUTHORIZATION
        }
    }
}

impl std::fmt::Debug for AuthHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: [REDACTED]", self.name())
    }
}

pub(super) fn bearer(token: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

impl AuthHeader {
    fn fixed(provider: Provider, auth: &UpstreamAuth) -> Option<Self> {
        match (auth, provider) {
            (UpstreamAuth::Key(key), Provider::AzureOpenai) => {
                let mut value = HeaderValue::from_str(key.expose_secret()).ok()?;
                value.set_sensitive(true);
                Some(Self {
                    api_key: true,
                    value,
                })
            }
            (UpstreamAuth::Key(key), Provider::Openai) | (UpstreamAuth::Bearer(key), _) => {
                Some(Self {
                    api_key: false,
                    value: bearer(key.expose_secret())?,
                })
            }
            (UpstreamAuth::Entra { .. } | UpstreamAuth::None, _) => None,
        }
    }
}

impl ModelEndpoint {
    pub fn new(
        provider: Provider,
        base: Url,
        deployment: String,
        api_version: String,
        auth: UpstreamAuth,
    ) -> Self {
        Self {
            chat_uri: OnceLock::new(),
            embeddings_uri: OnceLock::new(),
            responses_uri: OnceLock::new(),
            span_templates: Default::default(),
            fixed_auth: AuthHeader::fixed(provider, &auth),
            provider,
            base,
            deployment,
            api_version,
            auth,
            owner: None,
            v1: false,
            agent: None,
            label: None,
        }
    }

    /// The same endpoint as the failover entry `name`.
    pub fn labelled(mut self, name: &str) -> Self {
        self.label = Some(Arc::from(name));
        self.span_templates = Default::default();
        self
    }

    /// The same endpoint, called with Azure OpenAI's v1 API when `v1` (`settings.apiStyle`).
    pub fn v1_style(mut self, v1: bool) -> Self {
        self.v1 = v1;
        self.span_templates = Default::default();
        self
    }

    /// The same endpoint running a Foundry agent (`base` is the project endpoint).
    pub fn for_agent(mut self, agent: crate::domain::AgentRef) -> Self {
        self.agent = Some(agent);
        self
    }

    /// Whether the deployment is named in the body (`model`) rather than the path.
    pub fn model_in_body(&self) -> bool {
        self.v1 || matches!(self.provider, Provider::Openai)
    }

    /// The same endpoint, attributed to `owner` (a company's instance) in telemetry.
    pub fn owned_by(mut self, owner: Arc<telemetry::Owner>) -> Self {
        self.owner = Some(owner);
        self.span_templates = Default::default();
        self
    }

    /// The span of a model call of this endpoint (`operation`: `chat`, `responses` or
    /// `embeddings`): named `<operation> <deployment>`, with the attributes that never change
    /// — its company and instance, GenAI system, operation and requested model, server, URL
    /// (the query too: API version only, never a credential), failover entry — built once,
    /// and copied once per thread ([`telemetry::thread_copy`]): every call takes a count of
    /// it, and a count every thread's calls took would be one cache line all cores write.
    pub fn span_template(
        &self,
        operation: &'static str,
        stream: bool,
    ) -> Arc<telemetry::SpanTemplate> {
        let slot = match operation {
            "chat" => 0,
            "responses" => 2,
            "embeddings" => 4,
            _ => return Arc::new(self.build_span_template(operation, stream)),
        } + usize::from(stream);
        telemetry::thread_copy(
            self.span_templates[slot]
                .get_or_init(|| Arc::new(self.build_span_template(operation, stream))),
        )
    }

    fn build_span_template(
        &self,
        operation: &'static str,
        stream: bool,
    ) -> telemetry::SpanTemplate {
        use opentelemetry::KeyValue;
        let text = |s: &str| opentelemetry::Value::from(Arc::<str>::from(s));
        let mut attributes = Vec::with_capacity(12);
        if let Some(owner) = &self.owner {
            attributes.push(KeyValue::new(
                telemetry::COMPANY_ATTRIBUTE,
                Arc::clone(&owner.company),
            ));
            attributes.push(KeyValue::new(
                telemetry::INSTANCE_ATTRIBUTE,
                Arc::clone(&owner.instance),
            ));
        }
        let system = match self.provider {
            Provider::AzureOpenai => "az.ai.openai",
            Provider::Openai => "openai",
        };
        attributes.extend([
            KeyValue::new("gen_ai.system", system),
            KeyValue::new("gen_ai.request.model", text(&self.deployment)),
            KeyValue::new("server.address", text(self.base.host_str().unwrap_or(""))),
            KeyValue::new(
                "server.port",
                i64::from(self.base.port_or_known_default().unwrap_or(443)),
            ),
            KeyValue::new("http.request.method", "POST"),
        ]);
        if let Some(label) = &self.label {
            attributes.push(KeyValue::new("sophia.deployment", Arc::clone(label)));
        }
        attributes.extend([
            KeyValue::new("gen_ai.operation.name", operation),
            KeyValue::new("sophia.stream", stream),
        ]);
        let url = match operation {
            "chat" => self.chat_url().ok(),
            "responses" => self.responses_url().ok(),
            "embeddings" => self.embeddings_url().ok(),
            _ => None,
        };
        if let Some(url) = url {
            attributes.push(KeyValue::new("url.full", url.to_string()));
        }
        telemetry::SpanTemplate::new(format!("{operation} {}", self.deployment), attributes)
    }

    fn operation_uri(&self, operation: &str) -> Result<Uri, String> {
        let root = self.base.as_str().trim_end_matches('/');
        let raw = match self.provider {
            Provider::AzureOpenai if self.v1 => format!("{root}/openai/v1/{operation}"),
            Provider::AzureOpenai => format!(
                "{root}/openai/deployments/{}/{operation}?api-version={}",
                self.deployment, self.api_version
            ),
            Provider::Openai => format!("{root}/v1/{operation}"),
        };
        // Parsed as a URL first: the same rules the endpoint was checked by.
        Url::parse(&raw)
            .map_err(|e| format!("invalid model endpoint: {e}"))?
            .as_str()
            .parse::<Uri>()
            .map_err(|e| format!("invalid model endpoint: {e}"))
    }

    /// The same endpoint under another provider's URL scheme.
    pub fn with_provider(self, provider: Provider) -> Self {
        let owner = self.owner;
        let mut endpoint = Self::new(
            provider,
            self.base,
            self.deployment,
            self.api_version,
            self.auth,
        );
        endpoint.owner = owner;
        endpoint.v1 = self.v1;
        endpoint.agent = self.agent;
        endpoint.label = self.label;
        endpoint
    }

    /// `…/chat/completions` of this endpoint.
    pub fn chat_url(&self) -> Result<&Uri, UpstreamError> {
        let uri = self
            .chat_uri
            .get_or_init(|| Box::new(self.operation_uri("chat/completions")));
        (**uri)
            .as_ref()
            .map_err(|e| UpstreamError::Configuration(e.clone()))
    }

    /// Whether `/v1/responses` turns call the upstream Responses API (Azure OpenAI's v1 API
    /// has it; the deployment routes of API version 2024-10-21 do not).
    pub fn has_responses(&self) -> bool {
        self.v1 && matches!(self.provider, Provider::AzureOpenai)
    }

    /// `…/responses` of this endpoint.
    pub fn responses_url(&self) -> Result<&Uri, UpstreamError> {
        let uri = self
            .responses_uri
            .get_or_init(|| Box::new(self.operation_uri("responses")));
        (**uri)
            .as_ref()
            .map_err(|e| UpstreamError::Configuration(e.clone()))
    }

    /// `…/embeddings` of this endpoint.
    pub fn embeddings_url(&self) -> Result<&Uri, UpstreamError> {
        let uri = self
            .embeddings_uri
            .get_or_init(|| Box::new(self.operation_uri("embeddings")));
        (**uri)
            .as_ref()
            .map_err(|e| UpstreamError::Configuration(e.clone()))
    }
}
