//! Telemetry. Logs are JSON lines on stdout (what the Functions host forwards), or a human
//! format for local development. With `APPLICATIONINSIGHTS_CONNECTION_STRING` set, SOPHIA also
//! exports to Application Insights through OpenTelemetry: every request as a request, every
//! model and other outbound call as a dependency (same operation id, W3C `traceparent` in and
//! out), the log events inside them as traces, and per-company metrics; a company with its own
//! App Insights (a credential of its instance) gets its own telemetry there too.
//!
//! Nothing here may slow a request: spans go through a bounded queue to a worker on its own
//! thread and runtime; what does not fit is dropped and counted (`/health`).

pub mod deps;
mod export;
mod ingestion;
pub mod metrics;
pub mod spans;

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use secrecy::ExposeSecret;
use serde::Serialize;
use tracing_subscriber::filter::{FilterExt, Targets, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

pub use export::{COMPANY_ATTRIBUTE, INSTANCE_ATTRIBUTE, sampled};
pub use ingestion::ConnectionString;
pub use spans::{
    Dependency, SPAN_TARGET, end_request, format_traceparent, model_span, parse_traceparent,
    record_caller, request_span, traceparent, traceparent_of,
};

use crate::config::{LogFormat, Settings};

/// The target of the one-line-per-request access log (not exported: the request is).
pub const ACCESS_LOG_TARGET: &str = "sophia::access";

static PIPELINE: OnceLock<Arc<export::Pipeline>> = OnceLock::new();
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
/// SOPHIA's tracer on `PROVIDER`, for the spans built without `tracing` (`spans::Dependency`).
static TRACER: OnceLock<opentelemetry_sdk::trace::SdkTracer> = OnceLock::new();

/// Whose telemetry an item is: one company's agent instance. An instance may send its
/// company's telemetry to the company's own App Insights as well (`register_owner`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    pub company: String,
    pub instance: String,
}

impl Owner {
    pub fn new(company: &str, instance: &str) -> Self {
        Self {
            company: company.to_owned(),
            instance: instance.to_owned(),
        }
    }
}

/// The instance's own meters, when it exports to its company's own resource.
pub(crate) fn owner_meters(company: &str, instance: &str) -> Option<Arc<metrics::CompanyMeters>> {
    PIPELINE.get()?.owner_sink(company, instance)?.meters
}

/// Whether telemetry is exported (a connection string is set and the pipeline started).
#[inline]
pub fn enabled() -> bool {
    PIPELINE.get().is_some()
}

/// The telemetry section of `/health`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// `appinsights` when exporting, else `stdout-json`.
    pub exporter: &'static str,
    pub sampling: Option<f64>,
    /// Spans posted to the operator's resource.
    pub exported: u64,
    /// Spans dropped because the queue was full (ingestion slow or down).
    pub dropped: u64,
    /// Spans whose post failed (after the exporter's retries).
    pub failed: u64,
    /// Successful spans left out by sampling.
    pub sampled_out: u64,
    /// Companies exporting to their own resource too.
    pub company_resources: usize,
}

pub fn stats() -> Stats {
    match PIPELINE.get() {
        None => Stats {
            exporter: "stdout-json",
            sampling: None,
            exported: 0,
            dropped: 0,
            failed: 0,
            sampled_out: 0,
            company_resources: 0,
        },
        Some(p) => Stats {
            exporter: "appinsights",
            sampling: Some(p.sampling()),
            exported: p.counters.exported.load(Ordering::Relaxed),
            dropped: p.counters.dropped.load(Ordering::Relaxed),
            failed: p.counters.failed.load(Ordering::Relaxed),
            sampled_out: p.counters.sampled_out.load(Ordering::Relaxed),
            company_resources: p.company_count(),
        },
    }
}

/// Sends the telemetry of `owner` (its requests, dependencies, traces and metrics) to the
/// company's own App Insights too (`Some`), or stops (`None`). A no-op when telemetry is off
/// (the operator's resource is the anchor). The error says why the connection string was
/// refused, never repeating it.
pub fn register_owner(owner: &Owner, connection: Option<&str>) -> Result<(), String> {
    let Some(p) = PIPELINE.get() else {
        return Ok(());
    };
    match connection {
        None => p.register(owner, None),
        Some(raw) => {
            let cs = ConnectionString::parse(raw)?;
            p.register(owner, Some(&cs))
        }
    }
}

/// Installs the global subscriber and, with a connection string, the export pipeline. Call
/// once, at start-up, outside any async runtime.
pub fn init(settings: &Settings) {
    let log_filter =
        EnvFilter::try_new(&settings.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // The log output never shows the telemetry spans (only events).
    let log_filter = log_filter.and(filter_fn(|m| !m.is_span()));
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match settings.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stdout)
            .with_filter(log_filter)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stdout)
            .with_filter(log_filter)
            .boxed(),
    };
    let mut failure = None;
    let otel = match &settings.telemetry.connection_string {
        None => None,
        Some(raw) => match start(settings, raw.expose_secret()) {
            Ok(layer) => Some(layer),
            Err(e) => {
                failure = Some(e);
                None
            }
        },
    };
    let mut layers = vec![fmt];
    layers.extend(otel);
    let _ = tracing_subscriber::registry().with(layers).try_init();
    if let Some(e) = failure {
        tracing::error!("Application Insights export is off: {e:#}");
    }
}

type OtelLayer = Box<dyn Layer<Registry> + Send + Sync>;

fn start(settings: &Settings, raw: &str) -> anyhow::Result<OtelLayer> {
    let connection = ConnectionString::parse(raw)
        .map_err(|e| anyhow::anyhow!("APPLICATIONINSIGHTS_CONNECTION_STRING: {e}"))?;
    let t = &settings.telemetry;
    let instance = std::env::var("WEBSITE_INSTANCE_ID")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "local".to_owned());
    let resource = Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", t.role_name.clone()),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", instance),
        ])
        .build();
    let pipeline = export::Pipeline::start(export::Options {
        connection: connection.clone(),
        sampling: t.sampling,
        queue: t.queue,
        export_interval: t.export_interval,
        post_timeout: t.post_timeout,
        metrics_interval: t.metrics_interval,
        policy: settings.upstream_policy(),
        connect_timeout: settings.upstream_connect_timeout,
        resource,
    })?;
    let client = ingestion::IngestionClient::new(
        pipeline.http(),
        pipeline.runtime().clone(),
        pipeline.post_timeout(),
        None,
    );
    metrics::start_global(metrics::meters_for(
        &connection,
        client,
        pipeline.resource(),
        pipeline.metrics_interval(),
    )?);
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOn)
        .with_span_processor(export::Processor(Arc::clone(&pipeline)))
        .build();
    let tracer = provider.tracer("sophia");
    let _ = TRACER.set(tracer.clone());
    let _ = PROVIDER.set(provider);
    let _ = PIPELINE.set(pipeline);
    // Exported: SOPHIA's own spans, and the events inside them at the log level (the
    // access-log line is left out: the request itself is exported).
    // A static target filter, not an `EnvFilter`: that one takes a lock on every enter and
    // exit of every exported span (it tracks span scopes for its span directives), a cost
    // each poll of a request would pay. A filter with span directives exports at its level.
    let events = settings.log_filter.parse::<Targets>().unwrap_or_else(|_| {
        let level = EnvFilter::try_new(&settings.log_filter)
            .ok()
            .and_then(|f| f.max_level_hint())
            .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
        Targets::new().with_default(level)
    });
    let filter =
        filter_fn(|m| m.is_span() && m.target() == SPAN_TARGET).or(events.and(filter_fn(|m| {
            m.is_event() && m.target() != ACCESS_LOG_TARGET
        })));
    Ok(tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_filter(filter)
        .boxed())
}

/// Exports what is pending (spans and metrics), waiting at most `timeout`: the host gives a
/// stopping handler a few seconds. Whether everything went out in time.
pub fn shutdown(timeout: Duration) -> bool {
    let Some(pipeline) = PIPELINE.get() else {
        return true;
    };
    let pipeline = Arc::clone(pipeline);
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("sophia-telemetry-flush".into())
        .spawn(move || {
            let spans = pipeline.flush(timeout);
            metrics::flush_global();
            pipeline.flush_company_meters();
            let _ = tx.send(spans);
        });
    if spawned.is_err() {
        return false;
    }
    rx.recv_timeout(timeout).unwrap_or(false)
}
