//! Calling tenants' upstream services: the shared HTTP client, whose DNS resolver refuses
//! private, loopback, link-local and metadata addresses (an allowed host name may still
//! resolve to one), and the errors upstream calls end in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

pub mod policy;
pub mod transport;

pub use policy::{EndpointError, UpstreamPolicy};
pub use transport::ModelTransport;

/// Why an upstream call failed, in terms a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream throttled and the retry budget is spent.
    #[error("the model endpoint is rate limiting (retry after {retry_after_secs} s)")]
    RateLimited { retry_after_secs: u64 },
    #[error("the upstream did not answer in time ({0})")]
    Timeout(&'static str),
    #[error("{0}")]
    Unavailable(String),
    /// The upstream refused the request (credentials, deployment, parameters).
    #[error("{detail}")]
    Rejected { status: u16, detail: String },
    #[error("the upstream answered something unexpected: {0}")]
    Protocol(String),
    /// The endpoint is not allowed by the upstream policy, or is misconfigured.
    #[error("{0}")]
    Configuration(String),
}

impl UpstreamError {
    /// A short, stable name of the failure (telemetry's `error.type`; never a detail).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RateLimited { .. } => "rate_limited",
            Self::Timeout(_) => "timeout",
            Self::Unavailable(_) => "unavailable",
            Self::Rejected { .. } => "rejected",
            Self::Protocol(_) => "protocol",
            Self::Configuration(_) => "configuration",
        }
    }
}

/// A DNS resolver that drops addresses the upstream policy forbids, and fails when none is
/// left, so a tenant's host name cannot be pointed at an internal address.
#[derive(Clone)]
pub struct PolicyResolver {
    policy: Arc<UpstreamPolicy>,
}

impl PolicyResolver {
    pub fn new(policy: UpstreamPolicy) -> Self {
        Self {
            policy: Arc::new(policy),
        }
    }
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        Box::pin(async move {
            let allowed = resolve_allowed(&policy, name.as_str()).await?;
            let iter: Addrs = Box::new(allowed.into_iter());
            Ok(iter)
        })
    }
}

/// The addresses `host` resolves to that the policy allows; an error when none is left.
pub(crate) async fn resolve_allowed(
    policy: &UpstreamPolicy,
    host: &str,
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
    let allowed: Vec<SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|a| policy.check_resolved(a.ip()).is_ok())
        .collect();
    if allowed.is_empty() {
        return Err(format!("'{host}' resolves only to addresses SOPHIA may not call").into());
    }
    Ok(allowed)
}

/// The shared client for tenants' upstreams (connection pooling; policy-checked DNS).
pub fn upstream_client(
    policy: &UpstreamPolicy,
    connect_timeout: Duration,
) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(PolicyResolver::new(policy.clone())))
        .user_agent(concat!("sophia/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// An Azure SDK transport over the upstream client, for SDK calls to a company's resources
/// (its knowledge Blob container): they go through the same private-address DNS policy as the
/// model calls, follow no redirect, and are never decompressed on the fly (an encoded blob
/// cannot inflate past the download bound). Read-only: a streamed request body is refused.
#[derive(Debug, Clone)]
pub struct PolicyTransport {
    client: reqwest::Client,
}

impl PolicyTransport {
    /// `client` is the upstream client ([`upstream_client`]).
    pub fn new(client: reqwest::Client) -> Self {
        Self { client }
    }
}

#[async_trait::async_trait]
impl azure_core::http::HttpClient for PolicyTransport {
    async fn execute_request(
        &self,
        request: &azure_core::http::Request,
    ) -> azure_core::Result<azure_core::http::AsyncRawResponse> {
        use azure_core::error::{Error, ErrorKind};
        use azure_core::http::{Body, Method};
        use futures_util::TryStreamExt;
        let method = match request.method() {
            Method::Delete => reqwest::Method::DELETE,
            Method::Get => reqwest::Method::GET,
            Method::Head => reqwest::Method::HEAD,
            Method::Patch => reqwest::Method::PATCH,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            other => {
                return Err(Error::with_message(
                    ErrorKind::Other,
                    format!("HTTP method {other:?} is not sent to company resources"),
                ));
            }
        };
        let mut builder = self.client.request(method, request.url().as_str());
        for (name, value) in request.headers().iter() {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let builder = match request.body() {
            Body::Bytes(bytes) => builder.body(bytes.clone()),
            Body::SeekableStream(_) => {
                return Err(Error::with_message(
                    ErrorKind::Other,
                    "streamed request bodies are not sent to company resources",
                ));
            }
        };
        let response = builder.send().await.map_err(|e| {
            let kind = if e.is_connect() {
                ErrorKind::Connection
            } else {
                ErrorKind::Io
            };
            Error::with_error(kind, e, "the request to the company's resource failed")
        })?;
        let status = response.status().as_u16();
        let headers: std::collections::HashMap<
            azure_core::http::headers::HeaderName,
            azure_core::http::headers::HeaderValue,
        > = response
            .headers()
            .iter()
            .filter_map(|(k, v)| {
                v.to_str()
                    .ok()
                    .map(|v| (k.as_str().to_owned().into(), v.to_owned().into()))
            })
            .collect();
        let body: azure_core::http::response::PinnedStream =
            Box::pin(response.bytes_stream().map_err(|e| {
                Error::with_error(ErrorKind::Io, e, "reading the company resource's answer")
            }));
        Ok(azure_core::http::AsyncRawResponse::new(
            status.into(),
            azure_core::http::headers::Headers::from(headers),
            body,
        ))
    }
}
