//! Dependencies on Azure services other than the model: Key Vault, Blob and Queue storage, AI
//! Search and Cosmos DB. Each call made while a request (or a job) is traced is a client span —
//! an App Insights dependency — named by the service and a path template (never an id, a
//! secret name or a blob name: those stay out of the dependency name's cardinality), with the
//! target, result code and `url.full` without its query (a SAS lives there). The calls carry
//! the span's `traceparent`.
//!
//! Calls outside any traced request (the queue's polling loop, the usage flusher) are not
//! recorded: they would be a dependency every second for nothing an operator acts on.

use std::borrow::Cow;
use std::sync::Arc;

use opentelemetry::KeyValue;
use url::Url;

use super::Owner;
use super::request::{Parent, Pending};

/// The Azure service a dependency calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    KeyVault,
    Blob,
    Queue,
    Search,
    Cosmos,
    /// A company's Azure AI Foundry project (agents, vector stores, conversations, files).
    Foundry,
}

impl Service {
    /// The name prefix of its dependencies.
    pub fn label(self) -> &'static str {
        match self {
            Self::KeyVault => "Key Vault",
            Self::Blob => "Blob",
            Self::Queue => "Queue",
            Self::Search => "AI Search",
            Self::Cosmos => "Cosmos DB",
            Self::Foundry => "Foundry",
        }
    }

    /// The `az.namespace` attribute (the Azure resource provider).
    pub fn namespace(self) -> &'static str {
        match self {
            Self::KeyVault => "Microsoft.KeyVault",
            Self::Blob | Self::Queue => "Microsoft.Storage",
            Self::Search => "Microsoft.Search",
            Self::Cosmos => "Microsoft.DocumentDB",
            Self::Foundry => "Microsoft.CognitiveServices",
        }
    }
}

impl Service {
    /// Path segments that name an operation, not a resource (kept in a path template). The
    /// first segment of a Storage path is always the container or queue, whatever its name.
    fn keywords(self) -> &'static [&'static str] {
        match self {
            Self::KeyVault => &["secrets", "deletedsecrets"],
            Self::Blob => &[],
            Self::Queue => &["messages"],
            Self::Search => &[
                "indexes",
                "docs",
                "search",
                "search.post.search",
                "index",
                "servicestats",
            ],
            Self::Cosmos => &["dbs", "colls", "docs", "pkranges"],
            Self::Foundry => &[
                "api",
                "projects",
                "agents",
                "versions",
                "openai",
                "v1",
                "conversations",
                "vector_stores",
                "files",
                "file_batches",
                "responses",
            ],
        }
    }
}

/// The path as a low-cardinality template: operation keywords kept, every other segment `{}`
/// (a run of them collapsed, since a blob name may hold slashes), plus the Storage `comp`
/// operation when the query names one.
pub fn path_template(service: Service, url: &Url) -> String {
    let mut out = String::new();
    let mut last_placeholder = false;
    let storage = matches!(service, Service::Blob | Service::Queue);
    for (i, segment) in url.path().split('/').filter(|s| !s.is_empty()).enumerate() {
        let keep = !(storage && i == 0)
            && (service.keywords().contains(&segment) || segment.starts_with('$'));
        if keep {
            out.push('/');
            out.push_str(segment);
            last_placeholder = false;
        } else if !last_placeholder {
            out.push_str("/{}");
            last_placeholder = true;
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    if let Some((_, comp)) = url.query_pairs().find(|(k, _)| k == "comp")
        && comp.len() <= 32
        && comp.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        out.push_str("?comp=");
        out.push_str(&comp);
    }
    out
}

/// `url` without its query, fragment and user info (a SAS or a key never reaches telemetry).
pub fn redacted_url(url: &Url) -> String {
    let mut clean = url.clone();
    clean.set_query(None);
    clean.set_fragment(None);
    let _ = clean.set_username("");
    let _ = clean.set_password(None);
    clean.to_string()
}

/// Whether a dependency would be recorded now: telemetry on and a traced request (or job)
/// current.
#[inline]
pub fn wanted() -> bool {
    super::enabled() && Parent::current().is_some()
}

/// The client span of one call to `service` (disabled when not [`wanted`]). `owner` is the
/// company instance whose resource this is (its AI Search, its Blob container): the
/// dependency then goes to the company's own App Insights too. SOPHIA's own infrastructure
/// (Key Vault, Cosmos DB, the refresh queue) has no owner and stays with the operator.
pub fn dependency_span(
    service: Service,
    method: &str,
    url: &Url,
    owner: Option<&Owner>,
) -> Pending {
    Pending::start(
        || {
            Cow::Owned(format!(
                "{} {method} {}",
                service.label(),
                path_template(service, url)
            ))
        },
        || {
            let mut attributes = Vec::with_capacity(10);
            if let Some(o) = owner {
                attributes.push(KeyValue::new(super::COMPANY_ATTRIBUTE, o.company.clone()));
                attributes.push(KeyValue::new(super::INSTANCE_ATTRIBUTE, o.instance.clone()));
            }
            attributes.extend([
                KeyValue::new("az.namespace", service.namespace()),
                KeyValue::new("http.request.method", method.to_owned()),
                KeyValue::new("url.full", redacted_url(url)),
                KeyValue::new("server.address", url.host_str().unwrap_or("").to_owned()),
                KeyValue::new(
                    "server.port",
                    i64::from(url.port_or_known_default().unwrap_or(443)),
                ),
            ]);
            attributes
        },
    )
}

/// Ends a dependency with its status (5xx, 429 and transport errors are failures; another 4xx
/// the caller expects, such as a 404 for a missing secret, is not an error of the dependency).
pub fn end_dependency(span: &mut Pending, status: Option<u16>, error: Option<&'static str>) {
    let Some(record) = span.call() else {
        return;
    };
    record.status = status;
    let failed = match status {
        None => Some(error.unwrap_or("unavailable")),
        Some(429) => Some("rate_limited"),
        Some(s) if s >= 500 => Some("unavailable"),
        Some(_) => None,
    };
    record.error_type = failed;
    if failed.is_some() {
        span.fail();
    } else {
        span.ok();
    }
}

/// An Azure SDK transport that records each call as a dependency on `service` and sends its
/// `traceparent`; everything else is `inner`'s.
#[derive(Debug)]
pub struct TracedHttp {
    inner: Arc<dyn azure_core::http::HttpClient>,
    service: Service,
    owner: Option<Arc<Owner>>,
}

impl TracedHttp {
    /// `owner`: see [`dependency_span`].
    pub fn new(
        inner: Arc<dyn azure_core::http::HttpClient>,
        service: Service,
        owner: Option<Arc<Owner>>,
    ) -> Self {
        Self {
            inner,
            service,
            owner,
        }
    }

    /// `inner` wrapped, as the SDKs take a transport (SOPHIA's own infrastructure: no owner).
    pub fn transport(
        inner: Arc<dyn azure_core::http::HttpClient>,
        service: Service,
    ) -> azure_core::http::Transport {
        azure_core::http::Transport::new(Arc::new(Self::new(inner, service, None)))
    }
}

#[async_trait::async_trait]
impl azure_core::http::HttpClient for TracedHttp {
    async fn execute_request(
        &self,
        request: &azure_core::http::Request,
    ) -> azure_core::Result<azure_core::http::AsyncRawResponse> {
        if !wanted() {
            return self.inner.execute_request(request).await;
        }
        let method = request.method();
        let mut span = dependency_span(
            self.service,
            method.as_str(),
            request.url(),
            self.owner.as_deref(),
        );
        let mut request = request.clone();
        if let Some(tp) = span.traceparent()
            && let Ok(tp) = tp.to_str()
        {
            request.insert_header("traceparent", tp.to_owned());
        }
        let result = self.inner.execute_request(&request).await;
        match &result {
            Ok(response) => end_dependency(&mut span, Some(u16::from(response.status())), None),
            Err(e) => end_dependency(&mut span, None, Some(error_type(e.kind()))),
        }
        result
    }
}

fn error_type(kind: &azure_core::error::ErrorKind) -> &'static str {
    use azure_core::error::ErrorKind;
    match kind {
        ErrorKind::Connection => "connection",
        ErrorKind::Io => "io",
        ErrorKind::Credential => "credential",
        _ => "unavailable",
    }
}

/// Cosmos DB operations as dependencies. The Cosmos SDK takes no transport; it hands each
/// completed operation's diagnostics to its handlers, synchronously in the caller's task, so
/// the span is built after the fact with the operation's real start and end, under the
/// current request's span.
#[derive(Debug, Default)]
pub struct CosmosDependencies;

impl azure_data_cosmos::diagnostics::DiagnosticsHandler for CosmosDependencies {
    fn handle(
        &self,
        diagnostics: &azure_data_cosmos::diagnostics::DiagnosticsContext,
        cx: &azure_core::http::Context<'_>,
    ) {
        if !wanted() {
            return;
        }
        let op = cx.value::<azure_data_cosmos::diagnostics::CosmosOperationContext>();
        let operation = op
            .and_then(|o| o.operation_name())
            .or_else(|| diagnostics.operation_name())
            .unwrap_or("operation")
            .to_owned();
        let container = op.and_then(|o| o.container_name()).map(str::to_owned);
        let status = diagnostics.status().map(|s| u16::from(s.status_code()));
        let end = std::time::SystemTime::now();
        let start = end.checked_sub(diagnostics.duration()).unwrap_or(end);
        let name = match &container {
            Some(c) => format!("Cosmos DB {operation} {c}"),
            None => format!("Cosmos DB {operation}"),
        };
        let mut attributes = vec![
            KeyValue::new("db.system.name", "azure.cosmosdb"),
            KeyValue::new("db.operation.name", operation),
            KeyValue::new("az.namespace", Service::Cosmos.namespace()),
            KeyValue::new(
                "azure.cosmosdb.operation.request_charge",
                f64::from(diagnostics.total_request_charge()),
            ),
        ];
        if let Some(c) = container {
            attributes.push(KeyValue::new("db.collection.name", c));
        }
        if let Some(db) = op.and_then(|o| o.database_name()) {
            attributes.push(KeyValue::new("db.namespace", db.to_owned()));
        }
        if let Some(host) = op.and_then(|o| o.server_address()) {
            attributes.push(KeyValue::new("server.address", host.to_owned()));
        }
        if let Some(s) = status {
            attributes.push(KeyValue::new("db.response.status_code", s.to_string()));
        }
        let failed = match status {
            None => Some("unavailable"),
            Some(429) => Some("rate_limited"),
            Some(s) if s >= 500 => Some("unavailable"),
            Some(_) => None,
        };
        if let Some(kind) = failed {
            attributes.push(KeyValue::new("error.type", kind));
        }
        let mut span = Pending::start(|| Cow::Owned(name), || attributes).with_times(start, end);
        if failed.is_some() {
            span.fail();
        } else {
            span.ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(raw: &str) -> String {
        let url = Url::parse(raw).unwrap();
        let service = match url.host_str().unwrap_or("") {
            h if h.contains(".vault.") => Service::KeyVault,
            h if h.contains(".blob.") => Service::Blob,
            h if h.contains(".queue.") => Service::Queue,
            _ => Service::Search,
        };
        path_template(service, &url)
    }

    #[test]
    fn templates_keep_operations_and_drop_names() {
        assert_eq!(
            t("https://v.vault.azure.net/secrets/sophia-acme/0123abc?api-version=7.5"),
            "/secrets/{}"
        );
        assert_eq!(
            t("https://a.blob.core.windows.net/docs/private/plan.pdf?sv=1&sig=SECRET"),
            "/{}"
        );
        assert_eq!(
            t("https://a.blob.core.windows.net/docs?restype=container&comp=list&sig=S"),
            "/{}?comp=list"
        );
        assert_eq!(
            t("https://a.queue.core.windows.net/refresh/messages?sig=S"),
            "/{}/messages"
        );
        assert_eq!(
            t("https://s.search.windows.net/indexes/acme-index/docs/search?api-version=2024-07-01"),
            "/indexes/{}/docs/search"
        );
        assert_eq!(t("https://s.search.windows.net/"), "/");
        // A container or queue named like an operation is still a name.
        assert_eq!(t("https://a.blob.core.windows.net/secrets/docs/x"), "/{}");
        assert_eq!(
            t("https://a.queue.core.windows.net/messages/messages/abc"),
            "/{}/messages/{}"
        );
    }

    #[test]
    fn urls_lose_their_query_and_credentials() {
        let url =
            Url::parse("https://u:p@a.blob.core.windows.net/docs/x?sv=1&sig=SECRET#f").unwrap();
        let clean = redacted_url(&url);
        assert_eq!(clean, "https://a.blob.core.windows.net/docs/x");
    }
}
