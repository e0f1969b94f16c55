//! The export pipeline: a span processor that never blocks a request (a bounded queue; what
//! does not fit is dropped and counted), a worker on its own thread and runtime that writes
//! the queued spans as App Insights envelopes ([`super::envelope`]) and posts them to the
//! operator's Application Insights and, for a company that has one, that company's own, with
//! each metrics interval ([`super::metrics`]); and the sampling decision.
//!
//! A request hands its finished spans, as they are (their attributes moved, nothing copied
//! or built), to a buffer of its thread's own (a lock nobody else takes but the worker, when
//! it swaps the buffer for an empty one). The worker writes their envelopes, a batch at a
//! time: the writer's code and data stay hot over a batch, and the envelopes are compressed
//! while they are — written on each request's own thread, the same writer cost several times
//! more (it met its code and data cold on every request). The worker is woken only when a
//! batch is full (or a flush asks), else it takes what is queued every export interval.
//! Waking it per span cost more than the span itself (a futex or eventfd write on the
//! request's thread, a context switch on the worker's).

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use opentelemetry::trace::{Event, SpanId, SpanKind, Status, TraceId};
use opentelemetry::{KeyValue, Value};
use opentelemetry_application_insights::HttpClient as _;
use opentelemetry_sdk::Resource;
use tokio::sync::{Notify, oneshot};

use super::Owner;
use super::envelope::{CallFields, Envelopes, RequestFields, SpanRef, SpanTemplate, Writer};
use super::ingestion::{ConnectionString, IngestionClient};
use super::metrics::Registry;
use crate::upstream::policy::UpstreamPolicy;

use super::envelope::{COMPANY_ATTRIBUTE, INSTANCE_ATTRIBUTE};

/// Most spans one post carries; a queue this long wakes the worker. Smaller batches (256, 128)
/// measured dearer in the same runs: the posts they add cost more than what a smaller batch
/// keeps out of the cache (BENCHMARKS.md).
const BATCH: usize = 512;

/// First wait before a post is retried (doubling, at most [`RETRY_MAX`]).
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Counters shown on `/health`.
#[derive(Debug, Default)]
pub struct Counters {
    pub exported: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
    /// Added to by every request a sampling leaves out: sharded.
    pub sampled_out: super::ShardedCounter,
}

/// One Application Insights resource: where its envelopes go and what they carry.
#[derive(Clone)]
pub(super) struct Sink {
    writer: Writer,
    track: http::Uri,
    client: IngestionClient,
    /// The company's own metrics (`None` for the operator's sink, which has the global ones).
    pub(super) metrics: Option<Arc<Registry>>,
    /// The company whose resource this is (`None`: the operator's).
    company: Option<String>,
    /// The connection string it was built from (a re-registration with the same one is a no-op).
    source: ConnectionString,
}

/// A finished span, owned, as its thread hands it over: the worker writes it.
pub(super) struct Finished {
    pub kind: SpanKind,
    pub trace: TraceId,
    pub id: SpanId,
    /// [`SpanId::INVALID`] for a root span.
    pub parent: SpanId,
    pub name: SpanName,
    pub start: SystemTime,
    pub end: SystemTime,
    /// What it shares with the calls like it (its name and fixed attributes).
    pub template: Option<Arc<SpanTemplate>>,
    /// Its own attributes (after the template's).
    pub attributes: Vec<KeyValue>,
    pub events: Vec<Event>,
    pub status: Status,
    /// What it records as fields.
    pub record: Record,
}

/// A finished span's record: a request's (its attributes as fields; the span's `attributes`
/// are then empty), or a dependency's of how the call went (after its `attributes`). One or
/// the other: a span is handed over and read by the worker as it is, and every byte of it is
/// a byte another core fetches.
pub(super) enum Record {
    Request(RequestFields),
    Call(CallFields),
}

/// A finished span's name (a request's is its route).
pub(super) enum SpanName {
    Own(Cow<'static, str>),
    /// Its template's.
    Template,
}

impl Finished {
    fn as_ref(&self) -> SpanRef<'_> {
        SpanRef {
            kind: self.kind.clone(),
            trace: self.trace,
            id: self.id,
            parent: self.parent,
            name: match (&self.record, &self.name, &self.template) {
                (Record::Request(request), _, _) => &request.route,
                (_, SpanName::Own(name), _) => name,
                (_, SpanName::Template, Some(template)) => template.name(),
                (_, SpanName::Template, None) => "",
            },
            start: self.start,
            end: self.end,
            shared: self.template.as_deref(),
            attributes: &self.attributes,
            events: &self.events,
            status: &self.status,
            request: match &self.record {
                Record::Request(request) => Some(request),
                Record::Call(_) => None,
            },
            call: match &self.record {
                Record::Call(call) => Some(call),
                Record::Request(_) => None,
            },
        }
    }

    /// Kept whatever the sampling.
    fn kept(&self) -> bool {
        matches!(self.status, Status::Error { .. })
    }
}

/// The spans one thread has finished, waiting for the worker; and those the worker has
/// written, handed back to be dropped on the thread that made them: freed on the worker's,
/// their memory went back to the allocator the slow way (another thread's free list, collected
/// later by the owner) and cold.
#[derive(Default)]
struct Written {
    spans: Vec<Finished>,
    spent: Vec<Finished>,
    /// Places in the queue this thread has reserved and not yet filled ([`Queue::grant`]).
    places: usize,
}

/// Most written spans a thread's buffer holds to be dropped there (the worker drops the rest).
const SPENT_MAX: usize = 2 * BATCH;
/// How many of them each span a thread hands over drops (more than it adds: they drain).
const SPENT_PER_OFFER: usize = 2;

type Local = Arc<Mutex<Written>>;

thread_local! {
    /// This thread's buffer, and the pipeline it belongs to.
    static LOCAL: RefCell<Option<(usize, Local)>> = const { RefCell::new(None) };
}

/// Spans waiting for the worker (bounded in number), and the flushes waiting for them.
struct Queue {
    /// Every thread's buffer (a thread's is dropped once it is gone and its buffer is empty).
    locals: Mutex<Vec<Local>>,
    /// Places taken in the queue, over all buffers: their spans not yet taken, and the places
    /// they have reserved for their next.
    queued: AtomicUsize,
    capacity: usize,
    /// How many places a thread reserves at a time: one count every thread's spans added to
    /// was a cache line both cores wrote per span; reserved a few at a time, a thread adds to
    /// it a few times a batch. (What a thread has reserved and not used counts against the
    /// bound: the queue holds at most `capacity` spans, at worst a few per thread fewer.)
    grant: usize,
    flushes: Mutex<Vec<oneshot::Sender<()>>>,
    wake: Notify,
}

/// A batch being put together for one post: the envelopes, how many spans, and which of
/// them a company's own resource gets too.
#[derive(Default)]
struct Outgoing {
    envelopes: Envelopes,
    spans: u64,
    owned: Vec<(Range<usize>, Arc<str>, Arc<str>)>,
}

/// Shared by the processor, the worker and whoever registers a company's sink.
pub struct Pipeline {
    queue: Queue,
    pub counters: Counters,
    sampling: f64,
    global: Sink,
    /// Companies' own resources, by the instance id whose credentials name them.
    owners: RwLock<HashMap<String, Sink>>,
    /// How many there are (read on every span: whether it needs its owner kept).
    owner_count: AtomicUsize,
    resource: Resource,
    runtime: tokio::runtime::Handle,
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
        let global = build_sink(
            &options.connection,
            &options.resource,
            IngestionClient::new(http, handle.clone(), options.post_timeout, None),
            None,
            None,
        )?;
        let capacity = options.queue.max(1);
        let pipeline = Arc::new(Self {
            queue: Queue {
                locals: Mutex::new(Vec::new()),
                queued: AtomicUsize::new(0),
                capacity,
                grant: (capacity / 128).clamp(1, 16),
                flushes: Mutex::new(Vec::new()),
                wake: Notify::new(),
            },
            counters: Counters::default(),
            sampling: options.sampling,
            global,
            owners: RwLock::new(HashMap::new()),
            owner_count: AtomicUsize::new(0),
            resource: options.resource,
            runtime: handle,
            company_http,
            policy: Arc::new(options.policy),
            post_timeout: options.post_timeout,
            metrics_interval: options.metrics_interval,
        });
        let worker = Arc::clone(&pipeline);
        let interval = options.export_interval;
        std::thread::Builder::new()
            .name("sophia-telemetry".into())
            .spawn(move || runtime.block_on(worker.run(interval)))?;
        Ok(pipeline)
    }

    pub(super) fn sampling(&self) -> f64 {
        self.sampling
    }

    pub(super) fn company_count(&self) -> usize {
        self.owners.read().map(|m| m.len()).unwrap_or(0)
    }

    /// Sends `owner`'s telemetry to its company's own resource too (replacing an earlier one),
    /// or stops (`None`). Its endpoint is held to the upstream policy, like the company's model.
    pub(super) fn register(
        &self,
        owner: &Owner,
        connection: Option<&ConnectionString>,
    ) -> Result<(), String> {
        let Some(connection) = connection else {
            let old = self.owners.write().ok().and_then(|mut map| {
                let old = map.remove(&*owner.instance);
                self.owner_count.store(map.len(), Ordering::Relaxed);
                old
            });
            self.retire(old);
            return Ok(());
        };
        if let Ok(map) = self.owners.read()
            && map.get(&*owner.instance).is_some_and(|s| {
                &s.source == connection && s.company.as_deref() == Some(&*owner.company)
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
        let sink = build_sink(
            connection,
            &self.resource,
            client,
            Some(Arc::default()),
            Some(owner.company.to_string()),
        )
        .map_err(|e| format!("invalid App Insights connection string: {e}"))?;
        let old = self.owners.write().ok().and_then(|mut map| {
            let old = map.insert(owner.instance.to_string(), sink);
            self.owner_count.store(map.len(), Ordering::Relaxed);
            old
        });
        self.retire(old);
        Ok(())
    }

    /// A replaced or removed sink's metrics are exported one last time (on the telemetry
    /// runtime, never on a request's thread).
    fn retire(&self, old: Option<Sink>) {
        let Some(sink) = old else {
            return;
        };
        let Some(metrics) = sink.metrics.clone() else {
            return;
        };
        let mut out = Envelopes::default();
        if metrics.take(&sink.writer, &mut out, SystemTime::now()) > 0 {
            let timeout = self.post_timeout;
            drop(self.runtime.spawn(async move {
                send(&sink, &out, timeout).await;
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

    /// The own metrics of `instance` of `company`, when it has a resource of its own (no lock
    /// taken while no company has one: this runs on every turn).
    pub(super) fn owner_metrics(&self, company: &str, instance: &str) -> Option<Arc<Registry>> {
        if self.owner_count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.owners
            .read()
            .ok()?
            .get(instance)
            .filter(|s| s.company.as_deref() == Some(company))
            .and_then(|s| s.metrics.clone())
    }

    /// A finished span left out by sampling (never built).
    pub(super) fn skip(&self) {
        self.counters.sampled_out.add(1);
    }

    /// Hands a finished span to the worker, on this thread; never waits (beyond this
    /// thread's buffer's lock). Failures are always exported; the rest when the trace is in
    /// the sample (decided on the trace id, so a trace is kept or dropped whole).
    pub(super) fn offer(&self, span: Finished) {
        if !span.kept() && !sampled(span.trace, self.sampling) {
            self.skip();
            return;
        }
        let (queue, batch) = (&self.queue, BATCH.min(self.queue.capacity));
        // Written spans of this thread's, dropped here once its buffer's lock is let go.
        let mut spent: [Option<Finished>; SPENT_PER_OFFER] = Default::default();
        let mut wake = false;
        let queued = self.with_local(|w| {
            if w.places == 0 {
                let before = queue.queued.fetch_add(queue.grant, Ordering::Relaxed);
                if before + queue.grant > queue.capacity {
                    queue.queued.fetch_sub(queue.grant, Ordering::Relaxed);
                    return false;
                }
                w.places = queue.grant;
                // A full batch wakes the worker.
                wake = before < batch && before + queue.grant >= batch;
            }
            w.places -= 1;
            w.spans.push(span);
            spent = std::array::from_fn(|_| w.spent.pop());
            true
        });
        if queued != Some(true) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        } else if wake {
            queue.wake.notify_one();
        }
        // Dropped here, with the lock let go.
        drop(spent);
    }

    /// Runs `f` on this thread's buffer (registering it on first use); `None` when it cannot
    /// be had (the thread is ending, or `f` is already running on it).
    fn with_local<R>(&self, f: impl FnOnce(&mut Written) -> R) -> Option<R> {
        let me = std::ptr::from_ref(self) as usize;
        LOCAL
            .try_with(|cell| {
                let mut cell = cell.try_borrow_mut().ok()?;
                if cell.as_ref().is_none_or(|(owner, _)| *owner != me) {
                    let local = Local::default();
                    self.queue.locals.lock().ok()?.push(Arc::clone(&local));
                    *cell = Some((me, local));
                }
                let (_, local) = cell.as_ref()?;
                let mut w = local.lock().ok()?;
                Some(f(&mut w))
            })
            .ok()
            .flatten()
    }

    /// Exports what is queued, waiting at most `timeout`. Whether it finished in time.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        match self.queue.flushes.lock() {
            Ok(mut flushes) => flushes.push(tx),
            Err(_) => return false,
        }
        self.queue.wake.notify_one();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        self.runtime.spawn(async move {
            let _ = done_tx.send(rx.await.is_ok());
        });
        done_rx.recv_timeout(timeout).unwrap_or(false)
    }

    /// The worker: takes what the threads have written when woken (a full batch, a flush) or
    /// every `interval`, and posts it in batches of at most [`BATCH`] spans to the operator's
    /// resource and to the companies' own.
    async fn run(self: Arc<Self>, interval: Duration) {
        // Swapped for a thread's buffer, then emptied for the next: buffers are kept.
        let mut spare: Vec<Finished> = Vec::new();
        let mut out = Outgoing::default();
        let mut metrics_due = Instant::now() + self.metrics_interval;
        loop {
            // Flushes asked for before this take are answered after its export.
            let waiting = self
                .queue
                .flushes
                .lock()
                .map(|mut f| std::mem::take(&mut *f))
                .unwrap_or_default();
            let locals: Vec<Local> = self
                .queue
                .locals
                .lock()
                .map(|l| l.clone())
                .unwrap_or_default();
            let mut taken = 0;
            for local in &locals {
                match local.lock() {
                    Ok(mut w) if !w.spans.is_empty() => std::mem::swap(&mut w.spans, &mut spare),
                    _ => continue,
                }
                taken += spare.len();
                self.queue.queued.fetch_sub(spare.len(), Ordering::Relaxed);
                for span in &spare {
                    self.write(&mut out, span);
                    if out.spans >= BATCH as u64 {
                        self.post(&mut out).await;
                    }
                }
                // Back to the thread that made them, to be dropped there.
                if let Ok(mut w) = local.lock()
                    && w.spent.len() + spare.len() <= SPENT_MAX
                {
                    w.spent.append(&mut spare);
                }
                spare.clear();
            }
            self.post(&mut out).await;
            drop(locals);
            // A buffer whose thread is gone (only the list holds it) and that is empty goes,
            // and the places it had reserved with it.
            if let Ok(mut locals) = self.queue.locals.lock() {
                locals.retain(|l| {
                    if Arc::strong_count(l) > 1 {
                        return true;
                    }
                    match l.lock() {
                        Ok(w) if w.spans.is_empty() => {
                            self.queue.queued.fetch_sub(w.places, Ordering::Relaxed);
                            false
                        }
                        _ => true,
                    }
                });
            }
            if !waiting.is_empty() || Instant::now() >= metrics_due {
                self.post_metrics().await;
                metrics_due = Instant::now() + self.metrics_interval;
            }
            for done in waiting {
                let _ = done.send(());
            }
            if taken >= BATCH {
                continue;
            }
            let until_metrics = metrics_due.saturating_duration_since(Instant::now());
            tokio::select! {
                () = self.queue.wake.notified() => {}
                () = tokio::time::sleep(interval.min(until_metrics)) => {}
            }
        }
    }

    /// Posts the metrics' interval: every company's to the operator's resource, each company's
    /// own to its own resource.
    async fn post_metrics(&self) {
        let now = SystemTime::now();
        let mut out = Envelopes::default();
        super::metrics::global().take(&self.global.writer, &mut out, now);
        send(&self.global, &out, self.post_timeout).await;
        let sinks: Vec<Sink> = match self.owners.read() {
            Ok(map) => map
                .values()
                .filter(|s| s.metrics.is_some())
                .cloned()
                .collect(),
            Err(_) => return,
        };
        for sink in sinks {
            out.clear();
            if let Some(metrics) = &sink.metrics
                && metrics.take(&sink.writer, &mut out, now) > 0
            {
                send(&sink, &out, self.post_timeout).await;
            }
        }
    }

    /// Writes a span's envelopes (its own and its events') into the batch, noting its
    /// company's own resource when one may want it.
    fn write(&self, out: &mut Outgoing, span: &Finished) {
        let start = out.envelopes.len();
        let rate = rate(span.kept(), self.sampling);
        self.global
            .writer
            .span(&mut out.envelopes, &span.as_ref(), rate);
        if self.owner_count.load(Ordering::Relaxed) > 0 {
            let shared = span.template.as_deref().map_or(&[][..], |t| t.attributes());
            let owner = match &span.record {
                Record::Request(request) => request.owner(),
                Record::Call(_) => owner_of(shared, &span.attributes),
            };
            if let Some((company, instance)) = owner {
                out.owned.push((
                    start..out.envelopes.len(),
                    Arc::from(company),
                    Arc::from(instance),
                ));
            }
        }
        out.spans += 1;
    }

    /// Posts one batch: everything to the operator's resource; each instance's spans to its
    /// company's own resource as well (never anyone else's). Leaves `out` empty.
    async fn post(&self, out: &mut Outgoing) {
        if out.spans == 0 {
            return;
        }
        let n = out.spans;
        if send(&self.global, &out.envelopes, self.post_timeout).await {
            self.counters.exported.fetch_add(n, Ordering::Relaxed);
        } else {
            self.counters.failed.fetch_add(n, Ordering::Relaxed);
        }
        if !out.owned.is_empty() {
            let mut per_owner: HashMap<&str, (Sink, Envelopes, u64)> = HashMap::new();
            for (items, company, instance) in &out.owned {
                if !per_owner.contains_key(&**instance) {
                    let Some(sink) = self.owner_sink(company, instance) else {
                        continue;
                    };
                    per_owner.insert(instance, (sink, Envelopes::default(), 0));
                }
                let Some((sink, envelopes, n)) = per_owner.get_mut(&**instance) else {
                    continue;
                };
                if sink.company.as_deref() == Some(&**company) {
                    envelopes.append_rekeyed(
                        &out.envelopes,
                        items.clone(),
                        &self.global.writer,
                        &sink.writer,
                    );
                    *n += 1;
                }
            }
            for (_, (sink, envelopes, n)) in per_owner {
                if !send(&sink, &envelopes, self.post_timeout).await {
                    self.counters.failed.fetch_add(n, Ordering::Relaxed);
                }
            }
        }
        out.envelopes.clear();
        out.owned.clear();
        out.spans = 0;
    }
}

/// The sample rate an envelope carries: 1 for what is kept whatever the sampling (App
/// Insights then counts it once), else the sampling.
fn rate(kept: bool, sampling: f64) -> f64 {
    if kept { 1.0 } else { sampling }
}

/// What a post's answer asks of the next one.
enum Answer {
    Done,
    /// Post these again (indices into what was posted), after a wait.
    Retry(Option<Vec<usize>>),
    Refused,
}

/// Posts envelopes to one sink: gzip-compressed JSON to `…/v2/track`; items ingestion asks to
/// retry (408, 429, 439, 500, 503, or those of a 206) are posted again with a growing wait,
/// everything within twice the post timeout.
async fn send(sink: &Sink, envelopes: &Envelopes, timeout: Duration) -> bool {
    if envelopes.is_empty() {
        return true;
    }
    let deadline = Instant::now() + timeout * 2;
    let mut pending: Option<Vec<usize>> = None;
    let mut wait = RETRY_FIRST;
    loop {
        let body = match gzip(envelopes, pending.as_deref()) {
            Ok(body) => body,
            Err(_) => return false,
        };
        let request = http::Request::post(sink.track.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::CONTENT_ENCODING, "gzip")
            .body(Bytes::from(body));
        let Ok(request) = request else {
            return false;
        };
        let answer =
            match tokio::time::timeout_at(deadline.into(), sink.client.send_bytes(request)).await {
                Err(_) => return false,
                Ok(Err(_)) => Answer::Retry(None),
                Ok(Ok(response)) => read_answer(response.status().as_u16(), response.body()),
            };
        match answer {
            Answer::Done => return true,
            Answer::Refused => return false,
            Answer::Retry(Some(indices)) => {
                pending = Some(match &pending {
                    None => indices,
                    Some(before) => indices
                        .iter()
                        .filter_map(|&i| before.get(i).copied())
                        .collect(),
                });
            }
            Answer::Retry(None) => {}
        }
        if Instant::now() + wait >= deadline {
            return false;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MAX);
    }
}

/// The ingestion service's answer: `{itemsReceived, itemsAccepted, errors: [{index,
/// statusCode}]}` on 200, 206 and 500.
fn read_answer(status: u16, body: &[u8]) -> Answer {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Track {
        items_received: usize,
        items_accepted: usize,
        #[serde(default)]
        errors: Vec<ItemError>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct ItemError {
        index: usize,
        status_code: u16,
    }
    let retryable = |code: u16| matches!(code, 206 | 408 | 429 | 439 | 500 | 503);
    let some = |track: Track| {
        if track.items_received == track.items_accepted {
            return Answer::Done;
        }
        let retry: Vec<usize> = track
            .errors
            .iter()
            .filter(|e| retryable(e.status_code))
            .map(|e| e.index)
            .collect();
        if retry.is_empty() {
            Answer::Refused
        } else {
            Answer::Retry(Some(retry))
        }
    };
    match status {
        200 => Answer::Done,
        206 => serde_json::from_slice::<Track>(body).map_or(Answer::Refused, some),
        500 => serde_json::from_slice::<Track>(body).map_or(Answer::Retry(None), some),
        408 | 429 | 439 | 503 => Answer::Retry(None),
        _ => Answer::Refused,
    }
}

thread_local! {
    /// This thread's (the worker's) compressor, reset for each post rather than built anew:
    /// a new one allocates and zeroes its window and tables.
    static COMPRESSOR: RefCell<Option<flate2::Compress>> = const { RefCell::new(None) };
}

/// The JSON array of `indices` (every item when `None`), gzipped at the fastest level: the
/// envelopes of a batch repeat each other, so level 1 already shrinks them about tenfold, at a
/// fraction of the default level's CPU.
fn gzip(envelopes: &Envelopes, indices: Option<&[usize]>) -> io::Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut cell = cell
            .try_borrow_mut()
            .map_err(|_| io::Error::other("the compressor is in use"))?;
        let compress =
            cell.get_or_insert_with(|| flate2::Compress::new_gzip(flate2::Compression::fast(), 15));
        compress.reset();
        let mut gz = Gz {
            compress,
            out: Vec::with_capacity(8192),
        };
        envelopes.write_json(indices, &mut gz)?;
        gz.run(&[], flate2::FlushCompress::Finish)?;
        Ok(gz.out)
    })
}

/// A gzip stream written through a reused compressor.
struct Gz<'a> {
    compress: &'a mut flate2::Compress,
    out: Vec<u8>,
}

impl Gz<'_> {
    /// Compresses all of `input`; with [`flate2::FlushCompress::Finish`], ends the stream.
    fn run(&mut self, mut input: &[u8], flush: flate2::FlushCompress) -> io::Result<()> {
        loop {
            if self.out.capacity() - self.out.len() < 1024 {
                self.out.reserve(self.out.capacity().max(8192));
            }
            let (read, written) = (self.compress.total_in(), self.compress.total_out());
            let status = self
                .compress
                .compress_vec(input, &mut self.out, flush)
                .map_err(io::Error::other)?;
            let used = usize::try_from(self.compress.total_in() - read).unwrap_or(input.len());
            input = input.get(used..).unwrap_or_default();
            let finishing = flush == flate2::FlushCompress::Finish;
            match status {
                flate2::Status::StreamEnd => return Ok(()),
                _ if input.is_empty() && !finishing => return Ok(()),
                // With room to write, no progress is an error, not a loop.
                _ if used == 0 && self.compress.total_out() == written => {
                    return Err(io::Error::other("the compressor made no progress"));
                }
                _ => {}
            }
        }
    }
}

impl io::Write for Gz<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.run(buf, flate2::FlushCompress::None)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The company and instance a span belongs to (both must be named).
fn owner_of<'a>(
    shared: &'a [opentelemetry::KeyValue],
    own: &'a [opentelemetry::KeyValue],
) -> Option<(&'a str, &'a str)> {
    let text = |key: &str| {
        own.iter()
            .chain(shared)
            .find(|kv| kv.key.as_str() == key)
            .and_then(|kv| match &kv.value {
                Value::String(s) => Some(s.as_str()),
                _ => None,
            })
    };
    Some((text(COMPANY_ATTRIBUTE)?, text(INSTANCE_ATTRIBUTE)?))
}

fn build_sink(
    connection: &ConnectionString,
    resource: &Resource,
    client: IngestionClient,
    metrics: Option<Arc<Registry>>,
    company: Option<String>,
) -> anyhow::Result<Sink> {
    Ok(Sink {
        writer: Writer::new(&connection.instrumentation_key, resource),
        track: connection.track_uri()?,
        client,
        metrics,
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

    #[test]
    fn ingestion_answers_say_what_to_post_again() {
        let track = |errors: &str| {
            format!(r#"{{"itemsReceived":4,"itemsAccepted":2,"errors":[{errors}]}}"#)
        };
        assert!(matches!(read_answer(200, b""), Answer::Done));
        assert!(matches!(
            read_answer(206, br#"{"itemsReceived":2,"itemsAccepted":2,"errors":[]}"#),
            Answer::Done
        ));
        let retry = read_answer(
            206,
            track(r#"{"index":1,"statusCode":400},{"index":3,"statusCode":429}"#).as_bytes(),
        );
        assert!(
            matches!(retry, Answer::Retry(Some(ref v)) if v == &[3]),
            "only 3 again"
        );
        assert!(matches!(
            read_answer(206, track(r#"{"index":1,"statusCode":400}"#).as_bytes()),
            Answer::Refused
        ));
        assert!(matches!(read_answer(206, b"not json"), Answer::Refused));
        assert!(matches!(read_answer(500, b"oops"), Answer::Retry(None)));
        assert!(matches!(
            read_answer(500, track(r#"{"index":0,"statusCode":503}"#).as_bytes()),
            Answer::Retry(Some(ref v)) if v == &[0]
        ));
        for code in [408, 429, 439, 503] {
            assert!(
                matches!(read_answer(code, b""), Answer::Retry(None)),
                "{code}"
            );
        }
        for code in [400, 401, 403, 404] {
            assert!(matches!(read_answer(code, b""), Answer::Refused), "{code}");
        }
    }

    /// An ingestion stand-in whose first post hangs until `gate` lets it go, and a pipeline
    /// posting to it: (its runtime, the pipeline, items received, posts, the gate).
    fn held_ingestion(
        queue: usize,
    ) -> (
        tokio::runtime::Runtime,
        Arc<Pipeline>,
        Arc<AtomicUsize>,
        Arc<AtomicUsize>,
        Arc<Notify>,
    ) {
        use axum::routing::post;
        let server = tokio::runtime::Runtime::new().unwrap();
        let received = Arc::new(AtomicUsize::new(0));
        let posts = Arc::new(AtomicUsize::new(0));
        // The first post hangs until the test lets it go.
        let gate = Arc::new(Notify::new());
        let (seen, seen_posts, held) =
            (Arc::clone(&received), Arc::clone(&posts), Arc::clone(&gate));
        let app = axum::Router::new().route(
            "/v2/track",
            post(move |body: axum::body::Bytes| {
                let mut json = Vec::new();
                let _ = std::io::Read::read_to_end(
                    &mut flate2::read::GzDecoder::new(&body[..]),
                    &mut json,
                );
                let items: Vec<serde_json::Value> = serde_json::from_slice(&json).unwrap();
                seen.fetch_add(items.len(), Ordering::SeqCst);
                let first = seen_posts.fetch_add(1, Ordering::SeqCst) == 0;
                let held = Arc::clone(&held);
                async move {
                    if first {
                        held.notified().await;
                    }
                    ""
                }
            }),
        );
        let listener = server
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        server.spawn(async move { axum::serve(listener, app).await });
        let pipeline = Pipeline::start(Options {
            connection: ConnectionString::parse(&format!(
                "InstrumentationKey=00000000-0000-4000-8000-000000000000;IngestionEndpoint=http://{addr}/"
            ))
            .unwrap(),
            sampling: 1.0,
            queue,
            export_interval: Duration::from_secs(3600),
            post_timeout: Duration::from_secs(5),
            metrics_interval: Duration::from_secs(3600),
            policy: UpstreamPolicy::new("127.0.0.1", true).unwrap(),
            connect_timeout: Duration::from_secs(5),
            resource: Resource::builder_empty().build(),
        })
        .unwrap();
        (server, pipeline, received, posts, gate)
    }

    /// Waits (at most 5 s) until ingestion has the first post.
    fn wait_for_first_post(posts: &AtomicUsize) {
        for _ in 0..500 {
            if posts.load(Ordering::SeqCst) == 1 {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn offer_one(pipeline: &Pipeline, n: u32) {
        let now = std::time::SystemTime::now();
        pipeline.offer(Finished {
            kind: SpanKind::Client,
            trace: TraceId::from(u128::from(n) + 1),
            id: SpanId::from(u64::from(n) + 1),
            parent: SpanId::INVALID,
            name: SpanName::Own("call".into()),
            start: now,
            end: now,
            template: None,
            attributes: vec![KeyValue::new("n", i64::from(n))],
            events: Vec::new(),
            status: Status::Ok,
            record: Record::Call(CallFields::default()),
        });
    }

    /// With a larger queue a thread reserves its places a few at a time: the bound still holds
    /// (at most the queue's capacity waits, at worst a grant per thread fewer), every span is
    /// posted or counted dropped, and the places a gone thread had reserved are given back.
    #[test]
    fn places_reserved_a_few_at_a_time_keep_the_bound() {
        let (_server, pipeline, received, posts, gate) = held_ingestion(2048);
        let grant = pipeline.queue.grant;
        assert_eq!(grant, 16);
        // The worker has started and waits; a batch's worth wakes it, and its post hangs.
        assert!(pipeline.flush(Duration::from_secs(10)));
        std::thread::scope(|scope| {
            scope.spawn(|| (0..512).for_each(|i| offer_one(&pipeline, i)));
        });
        wait_for_first_post(&posts);
        let first = received.load(Ordering::SeqCst);
        assert!((512 - grant..=512).contains(&first), "{first}");
        // Meanwhile three threads write 1000 each: what does not fit is dropped.
        std::thread::scope(|scope| {
            for t in 1..4 {
                let pipeline = &pipeline;
                scope.spawn(move || (0..1000).for_each(|i| offer_one(pipeline, t * 1000 + i)));
            }
        });
        let dropped = pipeline.counters.dropped.load(Ordering::SeqCst) as usize;
        let held = 3512 - first - dropped;
        assert!((2048 - 4 * grant..=2048).contains(&held), "{held} waited");
        gate.notify_one();
        assert!(pipeline.flush(Duration::from_secs(10)));
        assert_eq!(received.load(Ordering::SeqCst), first + held);
        assert_eq!(
            pipeline.counters.exported.load(Ordering::SeqCst) as usize,
            first + held
        );
        // The threads are gone: their buffers, and the places they had not used.
        assert_eq!(pipeline.queue.locals.lock().unwrap().len(), 0);
        assert_eq!(pipeline.queue.queued.load(Ordering::SeqCst), 0);
    }

    /// Spans written on several threads (that then end) all reach ingestion by a flush, up to
    /// the queue's bound while ingestion is stuck (the rest dropped and counted); the gone
    /// threads' buffers go.
    #[test]
    fn spans_of_every_thread_are_posted_within_the_bound() {
        let (_server, pipeline, received, posts, gate) = held_ingestion(10);
        let offer = offer_one;
        // The worker has started and waits (a flush of nothing answers once it has).
        assert!(pipeline.flush(Duration::from_secs(10)));
        assert_eq!(posts.load(Ordering::SeqCst), 0);
        // A full queue wakes the worker, whose post then hangs.
        std::thread::scope(|scope| {
            scope.spawn(|| (0..10).for_each(|i| offer(&pipeline, i)));
        });
        wait_for_first_post(&posts);
        assert_eq!(received.load(Ordering::SeqCst), 10);
        // Meanwhile three threads write 15: 10 fit, 5 are dropped.
        std::thread::scope(|scope| {
            for t in 1..4 {
                let pipeline = &pipeline;
                scope.spawn(move || (0..5).for_each(|i| offer(pipeline, t * 10 + i)));
            }
        });
        assert_eq!(pipeline.counters.dropped.load(Ordering::SeqCst), 5);
        gate.notify_one();
        assert!(pipeline.flush(Duration::from_secs(10)));
        assert_eq!(pipeline.counters.exported.load(Ordering::SeqCst), 20);
        assert_eq!(received.load(Ordering::SeqCst), 20);
        assert_eq!(
            pipeline.queue.locals.lock().unwrap().len(),
            0,
            "gone threads' buffers"
        );
        // The queue has room again; this thread's buffer stays while it lives.
        offer(&pipeline, 99);
        assert!(pipeline.flush(Duration::from_secs(10)));
        assert_eq!(received.load(Ordering::SeqCst), 21);
        assert_eq!(
            pipeline.queue.locals.lock().unwrap().len(),
            1,
            "this thread's buffer"
        );
        assert_eq!(pipeline.counters.dropped.load(Ordering::SeqCst), 5);
        // A written span comes back to the thread that made it, and goes with its next span.
        let marker: Arc<str> = Arc::from("marker");
        let now = std::time::SystemTime::now();
        let attributes = vec![KeyValue::new("m", Value::from(Arc::clone(&marker)))];
        pipeline.offer(Finished {
            kind: SpanKind::Client,
            trace: TraceId::from(7u128),
            id: SpanId::from(7u64),
            parent: SpanId::INVALID,
            name: SpanName::Own("call".into()),
            start: now,
            end: now,
            template: None,
            attributes,
            events: Vec::new(),
            status: Status::Ok,
            record: Record::Call(CallFields::default()),
        });
        assert!(pipeline.flush(Duration::from_secs(10)));
        assert_eq!(received.load(Ordering::SeqCst), 22);
        assert_eq!(Arc::strong_count(&marker), 2, "held for this thread");
        offer(&pipeline, 100);
        assert_eq!(Arc::strong_count(&marker), 1, "dropped on this thread");
    }

    /// Every post is a whole gzip stream of what it carries, from the one compressor the
    /// thread reuses (a big batch and a retry's few items in turn).
    #[test]
    fn each_post_is_a_whole_gzip_stream() {
        let writer = Writer::new(
            "00000000-0000-4000-8000-000000000000",
            &Resource::builder_empty().build(),
        );
        let mut envelopes = Envelopes::default();
        let now = std::time::SystemTime::now();
        for n in 0..3000u64 {
            let span = Finished {
                kind: SpanKind::Client,
                trace: TraceId::from(u128::from(n) * 0x9e37_79b9_7f4a_7c15 + 1),
                id: SpanId::from(n.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1),
                parent: SpanId::INVALID,
                name: SpanName::Own(format!("call {n}").into()),
                start: now,
                end: now,
                template: None,
                attributes: vec![KeyValue::new("n", format!("{:x}", n * n * 0x5851_f42d))],
                events: Vec::new(),
                status: Status::Ok,
                record: Record::Call(CallFields::default()),
            };
            writer.span(&mut envelopes, &span.as_ref(), 1.0);
        }
        let unzip = |body: Vec<u8>| {
            let mut json = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut json)
                .unwrap();
            json
        };
        let some = [3, 1, 2999, 4000];
        for indices in [None, Some(&some[..]), None] {
            let body = gzip(&envelopes, indices).unwrap();
            assert_eq!(&body[..2], b"\x1f\x8b", "a gzip header");
            let json = unzip(body);
            assert_eq!(json, envelopes.json(indices));
            let items: Vec<serde_json::Value> = serde_json::from_slice(&json).unwrap();
            assert_eq!(items.len(), if indices.is_some() { 3 } else { 3000 });
        }
    }

    /// A post whose answer asks for some items again posts exactly those, then stops.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partial_answer_posts_the_refused_items_again() {
        use axum::routing::post;
        let bodies: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let seen = Arc::clone(&bodies);
        let app = axum::Router::new().route(
            "/v2/track",
            post(move |body: axum::body::Bytes| {
                let seen = Arc::clone(&seen);
                async move {
                    let mut json = Vec::new();
                    let _ = std::io::Read::read_to_end(
                        &mut flate2::read::GzDecoder::new(&body[..]),
                        &mut json,
                    );
                    let items: serde_json::Value =
                        serde_json::from_slice(&json).unwrap_or_default();
                    let n = items.as_array().map_or(0, Vec::len);
                    let first = {
                        let mut all = seen.lock().unwrap();
                        all.push(items);
                        all.len() == 1
                    };
                    if first {
                        (
                            axum::http::StatusCode::PARTIAL_CONTENT,
                            format!(
                                r#"{{"itemsReceived":{n},"itemsAccepted":{},"errors":[{{"index":0,"statusCode":400}},{{"index":2,"statusCode":503}}]}}"#,
                                n - 2
                            ),
                        )
                    } else {
                        (
                            axum::http::StatusCode::OK,
                            format!(r#"{{"itemsReceived":{n},"itemsAccepted":{n},"errors":[]}}"#),
                        )
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let connection = ConnectionString::parse(&format!(
            "InstrumentationKey=00000000-0000-4000-8000-000000000000;IngestionEndpoint=http://{addr}/"
        ))
        .unwrap();
        let client = IngestionClient::new(
            reqwest::Client::new(),
            tokio::runtime::Handle::current(),
            Duration::from_secs(5),
            None,
        );
        let sink = build_sink(
            &connection,
            &Resource::builder_empty().build(),
            client,
            None,
            None,
        )
        .unwrap();
        let mut envelopes = Envelopes::default();
        for name in ["a", "b", "c"] {
            let attributes = [opentelemetry::KeyValue::new("n", name)];
            let now = std::time::SystemTime::now();
            let span = SpanRef {
                kind: opentelemetry::trace::SpanKind::Client,
                trace: TraceId::from(1),
                id: opentelemetry::trace::SpanId::from(2),
                parent: opentelemetry::trace::SpanId::INVALID,
                name,
                start: now,
                end: now,
                shared: None,
                attributes: &attributes,
                events: &[],
                status: &Status::Ok,
                request: None,
                call: None,
            };
            sink.writer.span(&mut envelopes, &span, 1.0);
        }
        assert!(send(&sink, &envelopes, Duration::from_secs(5)).await);
        let bodies = bodies.lock().unwrap();
        let names = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|e| e["data"]["baseData"]["name"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(bodies.len(), 2, "one retry");
        assert_eq!(names(&bodies[0]), ["a", "b", "c"]);
        assert_eq!(names(&bodies[1]), ["c"], "only the retryable refusal again");
    }
}
