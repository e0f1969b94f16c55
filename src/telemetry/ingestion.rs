//! Where telemetry goes: an Application Insights connection string (parsed and checked here,
//! so a hostile one cannot panic the exporter or point it at a private address), and the HTTP
//! client the exporter posts envelopes with.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
/// The error type of the exporter's HTTP client trait.
type HttpError = Box<dyn std::error::Error + Send + Sync + 'static>;
use url::Url;

use crate::upstream::policy::UpstreamPolicy;

/// The default ingestion endpoint of a connection string without `IngestionEndpoint`.
const DEFAULT_INGESTION: &str = "https://dc.services.visualstudio.com/";

/// A checked Application Insights connection string: its instrumentation key and ingestion
/// endpoint. `Debug` shows the endpoint only.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    pub instrumentation_key: String,
    pub ingestion_endpoint: Url,
}

impl std::fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionString")
            .field("ingestion_endpoint", &self.ingestion_endpoint.as_str())
            .finish_non_exhaustive()
    }
}

impl ConnectionString {
    /// Parses `InstrumentationKey=…;IngestionEndpoint=https://…/` (keys are case-insensitive;
    /// other keys such as `LiveEndpoint` and `ApplicationId` are ignored). The message of an
    /// error never repeats the value.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut key = None;
        let mut endpoint = None;
        for part in raw.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, value)) = part.split_once('=') else {
                return Err("every part must be Name=Value".into());
            };
            match name.trim().to_ascii_lowercase().as_str() {
                "instrumentationkey" => key = Some(value.trim().to_owned()),
                "ingestionendpoint" => endpoint = Some(value.trim().to_owned()),
                _ => {}
            }
        }
        let key = key.ok_or("InstrumentationKey is missing")?;
        if key.is_empty()
            || key.len() > 64
            || !key.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        {
            return Err("InstrumentationKey must be a GUID".into());
        }
        let endpoint = endpoint.unwrap_or_else(|| DEFAULT_INGESTION.to_owned());
        let mut url =
            Url::parse(&endpoint).map_err(|e| format!("IngestionEndpoint is not a URL: {e}"))?;
        if !matches!(url.scheme(), "https" | "http")
            || url.host_str().is_none()
            || url.query().is_some()
            || url.fragment().is_some()
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(
                "IngestionEndpoint must be an http(s) URL without credentials, query or fragment"
                    .into(),
            );
        }
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        // What the exporter will post to must be a valid `http::Uri` too.
        format!("{url}v2/track")
            .parse::<http::Uri>()
            .map_err(|e| format!("IngestionEndpoint is not a valid URI: {e}"))?;
        Ok(Self {
            instrumentation_key: key,
            ingestion_endpoint: url,
        })
    }

    /// Where envelopes are posted: `<IngestionEndpoint>v2/track`.
    pub(super) fn track_uri(&self) -> anyhow::Result<http::Uri> {
        Ok(format!("{}v2/track", self.ingestion_endpoint).parse::<http::Uri>()?)
    }
}

/// Posts envelopes with reqwest on the telemetry runtime (whatever executor awaits it: the
/// export worker or the metrics reader's thread), each post bounded by `timeout`.
#[derive(Clone)]
pub(super) struct IngestionClient {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
    /// A company's endpoint is checked against the upstream policy before every post (the
    /// client's resolver checks the addresses); the operator's is trusted.
    policy: Option<Arc<UpstreamPolicy>>,
}

impl std::fmt::Debug for IngestionClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IngestionClient")
    }
}

impl IngestionClient {
    pub(super) fn new(
        http: reqwest::Client,
        runtime: tokio::runtime::Handle,
        timeout: Duration,
        policy: Option<Arc<UpstreamPolicy>>,
    ) -> Self {
        Self {
            http,
            runtime,
            timeout,
            policy,
        }
    }
}

#[async_trait::async_trait]
impl opentelemetry_application_insights::HttpClient for IngestionClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let url = Url::parse(&parts.uri.to_string())?;
        if let Some(policy) = &self.policy {
            policy.check_url(&url)?;
        }
        let mut builder = self.http.request(parts.method, url).body(body);
        for (name, value) in &parts.headers {
            builder = builder.header(name, value);
        }
        let timeout = self.timeout;
        let sent = self.runtime.spawn(async move {
            let response = tokio::time::timeout(timeout, builder.send())
                .await
                .map_err(|_| "ingestion timed out")??;
            let status = response.status();
            let bytes = tokio::time::timeout(timeout, response.bytes())
                .await
                .map_err(|_| "ingestion timed out")??;
            let mut out = http::Response::new(bytes);
            *out.status_mut() = status;
            Ok::<_, HttpError>(out)
        });
        sent.await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_portal_form() {
        let cs = ConnectionString::parse(
            "InstrumentationKey=00000000-1111-2222-3333-444444444444;IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/;LiveEndpoint=https://westeurope.livediagnostics.monitor.azure.com/;ApplicationId=abc",
        )
        .unwrap();
        assert_eq!(
            cs.ingestion_endpoint.as_str(),
            "https://westeurope-5.in.applicationinsights.azure.com/"
        );
        assert_eq!(
            cs.instrumentation_key,
            "00000000-1111-2222-3333-444444444444"
        );
        // Without an endpoint: the global one; a path gains its slash.
        let cs = ConnectionString::parse("instrumentationkey=abcdef").unwrap();
        assert_eq!(cs.ingestion_endpoint.as_str(), DEFAULT_INGESTION);
        let cs =
            ConnectionString::parse("InstrumentationKey=ab;IngestionEndpoint=http://127.0.0.1:9/x")
                .unwrap();
        assert_eq!(cs.ingestion_endpoint.as_str(), "http://127.0.0.1:9/x/");
    }

    #[test]
    fn refuses_what_the_exporter_cannot_use() {
        for bad in [
            "",
            "IngestionEndpoint=https://x/",
            "InstrumentationKey=not a guid",
            "InstrumentationKey=ab;IngestionEndpoint=file:///etc/passwd",
            "InstrumentationKey=ab;IngestionEndpoint=https://u:p@x/",
            "InstrumentationKey=ab;IngestionEndpoint=https://x/?q=1",
            "InstrumentationKey=ab;IngestionEndpoint=not a url",
            "garbage",
        ] {
            assert!(ConnectionString::parse(bad).is_err(), "{bad}");
        }
        let e = ConnectionString::parse("InstrumentationKey=SECRET-VALUE zz").unwrap_err();
        assert!(!e.contains("SECRET"));
    }
}
