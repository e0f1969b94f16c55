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
mod envelope;
mod export;
mod ingestion;
pub mod metrics;
pub mod request;
pub mod spans;

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;
use secrecy::ExposeSecret;
use serde::Serialize;
use tracing_subscriber::filter::{FilterExt, Targets, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

pub use envelope::{COMPANY_ATTRIBUTE, INSTANCE_ATTRIBUTE};
pub use envelope::{CallFields, SpanTemplate};
pub use export::sampled;
pub use ingestion::ConnectionString;
pub use request::RequestSpan;
pub use spans::{
    Dependency, format_traceparent, model_span, parse_traceparent, record_caller, shared,
    shared_str, thread_copy,
};

use crate::config::{LogFormat, Settings};

/// The target of the one-line-per-request access log (not exported: the request is).
pub const ACCESS_LOG_TARGET: &str = "sophia::access";

static PIPELINE: OnceLock<Arc<export::Pipeline>> = OnceLock::new();

/// How many shards what every request adds to (metrics, counters) is split in, so that
/// threads do not write to one cache line: more than the runtime's worker threads.
pub(crate) const SHARDS: usize = 16;

/// This thread's shard.
pub(crate) fn shard() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % SHARDS;
    }
    SHARD.try_with(|s| *s).unwrap_or(0)
}

/// A counter every request may add to, one cache line per shard (summed when read).
#[derive(Debug, Default)]
pub struct ShardedCounter([PaddedCounter; SHARDS]);

#[derive(Debug, Default)]
#[repr(align(128))]
struct PaddedCounter(std::sync::atomic::AtomicU64);

impl ShardedCounter {
    pub fn add(&self, n: u64) {
        self.0[shard() % SHARDS]
            .0
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0
            .iter()
            .map(|c| c.0.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }
}

/// Whose telemetry an item is: one company's agent instance. An instance may send its
/// company's telemetry to the company's own App Insights as well (`register_owner`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    pub company: Arc<str>,
    pub instance: Arc<str>,
}

impl Owner {
    pub fn new(company: &str, instance: &str) -> Self {
        Self {
            company: Arc::from(company),
            instance: Arc::from(instance),
        }
    }
}

/// The instance's own metrics, when it exports to its company's own resource.
fn owner_metrics(company: &str, instance: &str) -> Option<Arc<metrics::Registry>> {
    PIPELINE.get()?.owner_metrics(company, instance)
}

/// Whether telemetry is exported (a connection string is set and the pipeline started).
#[inline]
pub fn enabled() -> bool {
    PIPELINE.get().is_some()
}

/// The span of a request now starting (nothing with telemetry off). `route` is its route
/// template.
pub fn request_span(
    method: &'static str,
    route: Arc<str>,
    path: &str,
    request_id: Arc<str>,
    headers: &axum::http::HeaderMap,
) -> RequestSpan {
    match PIPELINE.get() {
        Some(p) => RequestSpan::start(method, route, path, request_id, headers, p.sampling()),
        None => RequestSpan::none(),
    }
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
            sampled_out: p.counters.sampled_out.get(),
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
    let _ = PIPELINE.set(pipeline);
    // Exported: the events inside a request at the log level, as its App Insights traces
    // (the access-log line is left out: the request itself is exported). A static target
    // filter, not an `EnvFilter` (that one locks on every span enter and exit); a filter with
    // span directives exports at its level.
    let events = settings.log_filter.parse::<Targets>().unwrap_or_else(|_| {
        let level = EnvFilter::try_new(&settings.log_filter)
            .ok()
            .and_then(|f| f.max_level_hint())
            .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
        Targets::new().with_default(level)
    });
    let filter = events.and(filter_fn(|m| {
        m.is_event() && m.target() != ACCESS_LOG_TARGET
    }));
    Ok(RequestEvents.with_filter(filter).boxed())
}

/// Hands each log event to the request it happens in (as one of its span events, an App
/// Insights trace under the request's operation), as `tracing-opentelemetry` names them: the
/// message, `level`, `target` and the event's fields.
struct RequestEvents;

impl<S: tracing::Subscriber> Layer<S> for RequestEvents {
    fn on_event(&self, event: &tracing::Event<'_>, _cx: tracing_subscriber::layer::Context<'_, S>) {
        request::add_event(|| {
            let meta = event.metadata();
            let mut fields = EventFields {
                message: None,
                attributes: vec![
                    KeyValue::new("level", meta.level().as_str()),
                    KeyValue::new("target", meta.target()),
                ],
            };
            event.record(&mut fields);
            opentelemetry::trace::Event::new(
                fields.message.map_or(
                    std::borrow::Cow::Borrowed(meta.name()),
                    std::borrow::Cow::Owned,
                ),
                std::time::SystemTime::now(),
                fields.attributes,
                0,
            )
        });
    }
}

struct EventFields {
    message: Option<String>,
    attributes: Vec<KeyValue>,
}

impl tracing::field::Visit for EventFields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_owned());
        } else {
            self.attributes
                .push(KeyValue::new(field.name(), value.to_owned()));
        }
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.attributes.push(KeyValue::new(field.name(), value));
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.attributes.push(KeyValue::new(
            field.name(),
            i64::try_from(value).unwrap_or(i64::MAX),
        ));
    }

    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.attributes.push(KeyValue::new(field.name(), value));
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.attributes.push(KeyValue::new(field.name(), value));
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = Some(text);
        } else {
            self.attributes.push(KeyValue::new(field.name(), text));
        }
    }
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
            // Spans, then the metrics' last interval.
            let _ = tx.send(pipeline.flush(timeout));
        });
    if spawned.is_err() {
        return false;
    }
    rx.recv_timeout(timeout).unwrap_or(false)
}
