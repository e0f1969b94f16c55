//! The HTTP/1.1 client of the model calls (the hot path): hyper's pooled client over the same
//! policy-checked resolver as the shared `reqwest` client, rustls with the webpki roots (what
//! `reqwest`'s `rustls-tls` uses), no redirects, no proxy, no decompression. `reqwest` adds two
//! layers to every request that a model call never needs — its redirect policy re-parses the
//! URL and its retry policy copies the request's headers — which cost more CPU per proxied
//! request than anything SOPHIA itself does (BENCHMARKS.md, "The floor").

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, USER_AGENT};
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;

use super::UpstreamPolicy;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The resolver of [`super::PolicyResolver`], as hyper's connector wants it.
#[derive(Clone)]
struct PolicyDns {
    policy: Arc<UpstreamPolicy>,
}

impl tower_service::Service<Name> for PolicyDns {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = Arc::clone(&self.policy);
        Box::pin(async move {
            let allowed = super::resolve_allowed(&policy, name.as_str()).await?;
            Ok(allowed.into_iter())
        })
    }
}

/// The model calls' client. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct ModelTransport {
    client: Client<HttpsConnector<HttpConnector<PolicyDns>>, Full<Bytes>>,
    user_agent: HeaderValue,
}

impl std::fmt::Debug for ModelTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ModelTransport")
    }
}

impl ModelTransport {
    /// A client whose connections resolve through `policy` and give up connecting after
    /// `connect_timeout`; idle connections are kept 90 s, at most 64 per host.
    pub fn new(policy: &UpstreamPolicy, connect_timeout: Duration) -> anyhow::Result<Self> {
        let dns = PolicyDns {
            policy: Arc::new(policy.clone()),
        };
        let mut http = HttpConnector::new_with_resolver(dns);
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        // ALPN (http/1.1) is set by the connector builder.
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .build(https);
        Ok(Self {
            client,
            user_agent: HeaderValue::from_static(concat!("sophia/", env!("CARGO_PKG_VERSION"))),
        })
    }

    /// POSTs `body` (JSON) to `uri` with `headers`; the response once its head has arrived.
    pub async fn post_json(
        &self,
        uri: &Uri,
        headers: impl IntoIterator<Item = (HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> Result<Response<Incoming>, TransportError> {
        let mut request = Request::post(uri.clone())
            .body(Full::new(body))
            .map_err(|e| TransportError::Request(e.to_string()))?;
        let map = request.headers_mut();
        map.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        map.insert(USER_AGENT, self.user_agent.clone());
        for (name, value) in headers {
            map.insert(name, value);
        }
        self.client
            .request(request)
            .await
            .map_err(TransportError::Send)
    }
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid request: {0}")]
    Request(String),
    #[error(transparent)]
    Send(hyper_util::client::legacy::Error),
}

impl TransportError {
    /// The connection could not be made (refused, unresolvable, forbidden address, TLS).
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Send(e) if e.is_connect())
    }

    /// The connection attempt ran out of time.
    pub fn is_timeout(&self) -> bool {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cur {
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            {
                return true;
            }
            cur = e.source();
        }
        false
    }
}
