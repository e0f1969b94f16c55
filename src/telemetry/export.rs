//! The export pipeline: a span processor that never blocks a request (a bounded queue; what
//! does not fit is dropped and counted), a worker on its own thread and runtime that batches
//! spans and posts them to the operator's Application Insights and, for a company that has
//! one, that company's own, and the sampling decision.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use opentelemetry::Value;
use opentelemetry::trace::{Status, TraceId};
use opentelemetry_application_insights::Exporter;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tokio::sync::{mpsc, oneshot};

use super::Owner;
use super::ingestion::{ConnectionString, IngestionClient};
use super::metrics::CompanyMeters;
use crate::upstream::policy::UpstreamPolicy;

/// The span attribute that names the company a span belongs to.
pub const COMPANY_ATTRIBUTE: &str = "companyId";
/// The span attribute that names the agent instance a span belongs to.
pub const INSTANCE_ATTRIBUTE: &str = "instanceId";

/// Most spans one post carries.
const BATCH: usize = 512;

/// Counters shown on `/health`.
#[derive(Debug, Default)]
pub struct Counters {
    pub exported: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
    pub sampled_out: AtomicU64,
}

/// One Application Insights resource: exporters for sampled items (their envelopes carry the
/// sample rate, so App Insights extrapolates counts) and for items kept whatever the sampling
/// (failures, at 100%).
#[derive(Clone)]
pub(super) struct Sink {
    sampled: Exporter<IngestionClient>,
    kept: Exporter<IngestionClient>,
    /// The company's own meters (`None` for the operator's sink, which has the global ones).
    pub(super) meters: Option<Arc<CompanyMeters>>,
    /// The company whose resource this is (`None`: the operator's).
    company: Option<String>,
    /// The connection string it was built from (a re-registration with the same one is a no-op).
    source: ConnectionString,
}

/// What the processor hands the worker.
enum Job {
    Span { span: Box<SpanData>, kept: bool },
    Flush(oneshot::Sender<()>),
}

/// Shared by the processor, the worker and whoever registers a company's sink.
pub struct Pipeline {
    queue: mpsc::Sender<Job>,
    pub counters: Counters,
    sampling: f64,
    global: Sink,
    /// Companies' own resources, by the instance id whose credentials name them.
    owners: RwLock<HashMap<String, Sink>>,
    resource: Resource,
    runtime: tokio::runtime::Handle,
    http: reqwest::Client,
    company_http: reqwest::Client,
    policy: Arc<UpstreamPolicy>,
    post_timeout: Duration,
    metrics_interval: Duration,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("sampling", &self.sampling)
            .finish_non_exhaustive()
    }
}

/// How the pipeline is built.
pub(super) struct Options {
    pub connection: ConnectionString,
    pub sampling: f64,
    pub queue: usize,
    pub export_interval: Duration,
    pub post_timeout: Duration,
    pub metrics_interval: Duration,
    pub policy: UpstreamPolicy,
    pub connect_timeout: Duration,
    pub resource: Resource,
}

impl Pipeline {
    /// Starts the worker thread (its own single-threaded runtime) and returns the pipeline.
    pub(super) fn start(options: Options) -> anyhow::Result<Arc<Self>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("sophia-telemetry")
            .build()?;
        let handle = runtime.handle().clone();
        let http = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("sophia/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let company_http =
            crate::upstream::upstream_client(&options.policy, options.connect_timeout)?;
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let global = build_sink(
            &options.connection,
            &options.resource,
            options.sampling,
            IngestionClient::new(http.clone(), handle.clone(), options.post_timeout, None),
            None,
            None,
        )?;
        let pipeline = Arc::new(Self {
            queue: tx,
            counters: Counters::default(),
            sampling: options.sampling,
            global,
            owners: RwLock::new(HashMap::new()),
            resource: options.resource,
            runtime: handle,
            http,
            company_http,
            policy: Arc::new(options.policy),
            post_timeout: options.post_timeout,
            metrics_interval: options.metrics_interval,
        });
        let worker = Arc::clone(&pipeline);
        let interval = options.export_interval;
        std::thread::Builder::new()
            .name("sophia-telemetry".into())
            .spawn(move || runtime.block_on(worker.run(rx, interval)))?;
        Ok(pipeline)
    }

    pub(super) fn sampling(&self) -> f64 {
        self.sampling
    }

    pub(super) fn company_count(&self) -> usize {
        self.owners.read().map(|m| m.len()).unwrap_or(0)
    }

    /// Exports the companies' own meters now (blocking).
    pub(super) fn flush_company_meters(&self) {
        let meters: Vec<Arc<CompanyMeters>> = match self.owners.read() {
            Ok(map) => map.values().filter_map(|s| s.meters.clone()).collect(),
            Err(_) => return,
        };
        for m in meters {
            m.flush();
        }
    }

    pub(super) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    pub(super) fn http(&self) -> reqwest::Client {
        self.http.clone()
    }

    pub(super) fn post_timeout(&self) -> Duration {
        self.post_timeout
    }

    pub(super) fn metrics_interval(&self) -> Duration {
        self.metrics_interval
    }

    pub(super) fn resource(&self) -> &Resource {
        &self.resource
    }

    /// Sends `owner`'s telemetry to its company's own resource too (replacing an earlier one),
    /// or stops (`None`). Its endpoint is held to the upstream policy, like the company's model.
    pub(super) fn register(
        &self,
        owner: &Owner,
        connection: Option<&ConnectionString>,
    ) -> Result<(), String> {
        let Some(connection) = connection else {
            let old = self
                .owners
                .write()
                .ok()
                .and_then(|mut map| map.remove(&owner.instance));
            self.retire(old);
            return Ok(());
        };
        if let Ok(map) = self.owners.read()
            && map.get(&owner.instance).is_some_and(|s| {
                &s.source == connection && s.company.as_deref() == Some(owner.company.as_str())
            })
        {
            return Ok(());
        }
        self.policy
            .check_url(&connection.ingestion_endpoint)
            .map_err(|e| format!("the App Insights ingestion endpoint is not allowed: {e}"))?;
        let client = IngestionClient::new(
            self.company_http.clone(),
            self.runtime.clone(),
            self.post_timeout,
            Some(Arc::clone(&self.policy)),
        );
        let meters = super::metrics::meters_for(
            connection,
            client.clone(),
            &self.resource,
            self.metrics_interval,
        )
        .map_err(|e| format!("cannot build the company's meters: {e}"))?;
        let sink = build_sink(
            connection,
            &self.resource,
            self.sampling,
            client,
            Some(Arc::new(meters)),
            Some(owner.company.clone()),
        )
        .map_err(|e| format!("invalid App Insights connection string: {e}"))?;
        let old = self
            .owners
            .write()
            .ok()
            .and_then(|mut map| map.insert(owner.instance.clone(), sink));
        self.retire(old);
        Ok(())
    }

    /// A replaced or removed sink's meters are exported one last time and shut down, on the
    /// telemetry runtime's blocking pool (never on a request's thread).
    fn retire(&self, old: Option<Sink>) {
        if let Some(meters) = old.and_then(|s| s.meters) {
            drop(self.runtime.spawn_blocking(move || {
                meters.flush();
                drop(meters);
            }));
        }
    }

    /// The own sink of `instance` of `company`, when it has one. An instance id under another
    /// company never matches.
    pub(super) fn owner_sink(&self, company: &str, instance: &str) -> Option<Sink> {
        self.owners
            .read()
            .ok()?
            .get(instance)
            .filter(|s| s.company.as_deref() == Some(company))
            .cloned()
    }

    /// Whether a finished span is exported: failures always; the rest when its trace is in
    /// the sample (decided on the trace id, so a trace is kept or dropped whole).
    fn decide(&self, span: &SpanData) -> Option<bool> {
        if matches!(span.status, Status::Error { .. }) {
            return Some(true);
        }
        sampled(span.span_context.trace_id(), self.sampling).then_some(false)
    }

    /// A finished span left out by sampling (never built).
    pub(super) fn skip(&self) {
        self.counters.sampled_out.fetch_add(1, Ordering::Relaxed);
    }

    /// Queues a finished span; never waits.
    pub(super) fn offer(&self, span: SpanData) {
        let Some(kept) = self.decide(&span) else {
            self.counters.sampled_out.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let job = Job::Span {
            span: Box::new(span),
            kept,
        };
        if self.queue.try_send(job).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Exports what is queued, waiting at most `timeout`. Whether it finished in time.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        let deadline = std::time::Instant::now() + timeout;
        // The queue may be full: retry the hand-over until the deadline.
        let mut job = Job::Flush(tx);
        loop {
            match self.queue.try_send(job) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
                Err(mpsc::error::TrySendError::Full(back)) => {
                    if std::time::Instant::now() >= deadline {
                        return false;
                    }
                    job = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        let remaining = deadline.saturating_duration_since(std::time::Instant::now());
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        self.runtime.spawn(async move {
            let _ = done_tx.send(rx.await.is_ok());
        });
        done_rx.recv_timeout(remaining).unwrap_or(false)
    }

    /// The worker: batches spans (at most [`BATCH`], at least every `interval`) and exports
    /// each batch to the operator's sink and to the companies' own.
    async fn run(self: Arc<Self>, mut rx: mpsc::Receiver<Job>, interval: Duration) {
        let mut batch: Vec<(Box<SpanData>, bool)> = Vec::with_capacity(BATCH);
        let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut flush_now = false;
            tokio::select! {
                job = rx.recv() => match job {
                    Some(Job::Span { span, kept }) => batch.push((span, kept)),
                    Some(Job::Flush(done)) => {
                        waiting.push(done);
                        flush_now = true;
                    }
                    None => flush_now = true,
                },
                _ = ticker.tick() => flush_now = true,
            }
            // Take what else is already queued without waiting.
            while batch.len() < BATCH && !flush_now {
                match rx.try_recv() {
                    Ok(Job::Span { span, kept }) => batch.push((span, kept)),
                    Ok(Job::Flush(done)) => {
                        waiting.push(done);
                        flush_now = true;
                    }
                    Err(_) => break,
                }
            }
            if flush_now || batch.len() >= BATCH {
                if !batch.is_empty() {
                    self.export(std::mem::take(&mut batch)).await;
                }
                for done in waiting.drain(..) {
                    let _ = done.send(());
                }
            }
            if rx.is_closed() && rx.is_empty() {
                if !batch.is_empty() {
                    self.export(std::mem::take(&mut batch)).await;
                }
                return;
            }
        }
    }

    /// Exports one batch: everything to the operator's resource; each instance's spans to its
    /// company's own resource as well (never anyone else's).
    async fn export(&self, batch: Vec<(Box<SpanData>, bool)>) {
        let mut per_owner: HashMap<String, (Sink, Vec<(SpanData, bool)>)> = HashMap::new();
        let registered = self.owners.read().map(|m| !m.is_empty()).unwrap_or(false);
        if registered {
            for (span, kept) in &batch {
                let Some((company, instance)) = owner_of(span) else {
                    continue;
                };
                if let Some(entry) = per_owner.get_mut(&instance) {
                    if entry.0.company.as_deref() == Some(company.as_str()) {
                        entry.1.push(((**span).clone(), *kept));
                    }
                } else if let Some(sink) = self.owner_sink(&company, &instance) {
                    per_owner.insert(instance, (sink, vec![((**span).clone(), *kept)]));
                }
            }
        }
        let n = batch.len() as u64;
        let ok = send(
            &self.global,
            batch.into_iter().map(|(s, k)| (*s, k)),
            self.post_timeout,
        )
        .await;
        if ok {
            self.counters.exported.fetch_add(n, Ordering::Relaxed);
        } else {
            self.counters.failed.fetch_add(n, Ordering::Relaxed);
        }
        for (_, (sink, spans)) in per_owner {
            let n = spans.len() as u64;
            if !send(&sink, spans.into_iter(), self.post_timeout).await {
                self.counters.failed.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

/// Posts spans to one sink (sampled and kept ones through their own exporter), bounded in time.
async fn send(
    sink: &Sink,
    spans: impl Iterator<Item = (SpanData, bool)>,
    timeout: Duration,
) -> bool {
    let (kept, sampled): (Vec<_>, Vec<_>) = spans.partition(|(_, kept)| *kept);
    let mut ok = true;
    for (exporter, spans) in [(&sink.kept, kept), (&sink.sampled, sampled)] {
        if spans.is_empty() {
            continue;
        }
        let spans: Vec<SpanData> = spans.into_iter().map(|(s, _)| s).collect();
        // The exporter retries for up to 35 s; a post is given `timeout` per try, the whole
        // export twice that.
        match tokio::time::timeout(timeout * 2, exporter.export(spans)).await {
            Ok(Ok(())) => {}
            _ => ok = false,
        }
    }
    ok
}

/// The company and instance a span belongs to (both must be named).
fn owner_of(span: &SpanData) -> Option<(String, String)> {
    let text = |key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| match &kv.value {
                Value::String(s) => s.as_str().to_owned(),
                other => other.to_string(),
            })
    };
    Some((text(COMPANY_ATTRIBUTE)?, text(INSTANCE_ATTRIBUTE)?))
}

fn build_sink(
    connection: &ConnectionString,
    resource: &Resource,
    sampling: f64,
    client: IngestionClient,
    meters: Option<Arc<CompanyMeters>>,
    company: Option<String>,
) -> anyhow::Result<Sink> {
    let mut exporter = connection.exporter(client)?;
    exporter.set_resource(resource);
    Ok(Sink {
        sampled: exporter.clone().with_sample_rate(sampling),
        kept: exporter.with_sample_rate(1.0),
        meters,
        company,
        source: connection.clone(),
    })
}

/// Whether a trace is in a `rate` sample (the W3C / OpenTelemetry trace-id ratio rule: the low
/// 63 bits of the id's last 8 bytes against `rate` × 2⁶³).
pub fn sampled(trace: TraceId, rate: f64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    if rate <= 0.0 {
        return false;
    }
    let bytes = trace.to_bytes();
    let mut low = [0u8; 8];
    low.copy_from_slice(&bytes[8..]);
    let x = u64::from_be_bytes(low) >> 1;
    (x as f64) < rate * (1u64 << 63) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_by_trace_and_about_the_rate() {
        let mut kept = 0;
        for i in 0..10_000u128 {
            let id = TraceId::from(i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835));
            assert_eq!(sampled(id, 0.25), sampled(id, 0.25));
            kept += sampled(id, 0.25) as u32;
            assert!(sampled(id, 1.0));
            assert!(!sampled(id, 0.0));
        }
        assert!((2_000..3_000).contains(&kept), "{kept}");
    }
}
