//! The server span of a request, built straight on OpenTelemetry's span data rather than as a
//! `tracing` span: the request carries its ids (in a task-local, for its dependencies and the
//! `traceparent` they send), its record (method, route, path, request id, caller and status
//! as fields, [`RequestFields`]: no list of attributes to build, nor for the writer to search)
//! and the log events inside it, and only when it is exported — a failure, or a trace in the
//! sample — does it become a span. A successful request left out by sampling costs its ids,
//! its record and a counter, nothing else.
//!
//! Dependencies ([`Pending`]) work the same way, under the request.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::http::HeaderMap;
use opentelemetry::trace::{SpanId, SpanKind, Status, TraceId};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};

use super::envelope::{CallFields, RequestFields, SpanTemplate};
use super::export::{Finished, Record, SpanName};

tokio::task_local! {
    static CURRENT: Arc<Live>;
}

/// Ids a child span needs from its request.
#[derive(Debug, Clone, Copy)]
pub struct Parent {
    pub trace: TraceId,
    pub span: SpanId,
    /// Whether the trace is in the sample (successful spans of it are exported).
    pub sampled: bool,
}

impl Parent {
    /// The request now being served, if it is traced.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(|live| live.ids()).ok()
    }
}

/// A new span id.
pub fn new_span_id() -> SpanId {
    RandomIdGenerator::default().new_span_id()
}

/// The request's span: ended (and, when kept, exported) when the last handle goes, which for
/// a stream is when its last event has gone out.
#[derive(Debug, Clone, Default)]
pub struct RequestSpan(Option<Arc<Live>>);

#[derive(Debug)]
struct Live {
    trace: TraceId,
    span: SpanId,
    parent: Option<SpanId>,
    sampled: bool,
    start: SystemTime,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    fields: RequestFields,
    events: Vec<opentelemetry::trace::Event>,
    failed: bool,
}

impl Live {
    fn ids(&self) -> Parent {
        Parent {
            trace: self.trace,
            span: self.span,
            sampled: self.sampled,
        }
    }
}

impl RequestSpan {
    /// Nothing recorded (telemetry off).
    pub fn none() -> Self {
        Self(None)
    }

    /// A request's span, continuing the caller's trace when it sent a valid `traceparent`.
    /// `route` is the route template.
    pub fn start(
        method: &'static str,
        route: Arc<str>,
        path: &str,
        request_id: Arc<str>,
        headers: &HeaderMap,
        sampling: f64,
    ) -> Self {
        let remote = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(super::parse_traceparent);
        let ids = RandomIdGenerator::default();
        let (trace, parent) = match &remote {
            Some(cx) => (cx.trace_id(), Some(cx.span_id())),
            None => (ids.new_trace_id(), None),
        };
        let fields = RequestFields {
            method,
            // A path without parameters is its route: shared, not copied.
            path: (path != &*route).then(|| path.into()),
            route,
            request_id,
            caller: None,
            status: None,
        };
        Self(Some(Arc::new(Live {
            trace,
            span: ids.new_span_id(),
            parent,
            sampled: super::sampled(trace, sampling),
            start: SystemTime::now(),
            state: Mutex::new(State {
                fields,
                ..State::default()
            }),
        })))
    }

    pub fn is_recording(&self) -> bool {
        self.0.is_some()
    }

    /// Runs `fut` as this request (its dependencies and log events go under it).
    pub async fn run<F: Future>(&self, fut: F) -> F::Output {
        match &self.0 {
            Some(live) => CURRENT.scope(Arc::clone(live), fut).await,
            None => fut.await,
        }
    }

    /// Records the status code; a 5xx is a failure (always exported; a 4xx is the caller's).
    pub fn end(&self, status: u16) {
        if let Some(live) = &self.0
            && let Ok(mut state) = live.state.lock()
        {
            state.fields.status = Some(status);
            state.failed |= status >= 500;
        }
    }
}

/// Names the caller (company, instance, agent type) of the request now being served (a no-op
/// outside one).
pub(super) fn set_caller(caller: impl FnOnce() -> [Value; 3]) {
    let _ = CURRENT.try_with(|live| {
        if let Ok(mut state) = live.state.lock() {
            state.fields.caller = Some(caller());
        }
    });
}

/// Adds a log event to the request now being served; whether there was one.
pub fn add_event(event: impl FnOnce() -> opentelemetry::trace::Event) -> bool {
    CURRENT
        .try_with(|live| {
            if let Ok(mut state) = live.state.lock()
                && state.events.len() < 128
            {
                state.events.push(event());
            }
        })
        .is_ok()
}

impl Drop for Live {
    fn drop(&mut self) {
        let Some(pipeline) = super::PIPELINE.get() else {
            return;
        };
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if !state.failed && !self.sampled {
            pipeline.skip();
            return;
        }
        pipeline.offer(Finished {
            kind: SpanKind::Server,
            trace: self.trace,
            id: self.span,
            parent: self.parent.unwrap_or(SpanId::INVALID),
            // Named by its method and route.
            name: SpanName::Template,
            start: self.start,
            end: SystemTime::now(),
            template: None,
            attributes: Vec::new(),
            events: std::mem::take(&mut state.events),
            status: if state.failed { FAILED } else { Status::Unset },
            record: Record::Request(std::mem::take(&mut state.fields)),
        });
    }
}

/// The status of a failed span (no description: the status code and the log say why).
const FAILED: Status = Status::Error {
    description: Cow::Borrowed(""),
};

/// A client span (an App Insights dependency) under the current request, built only when it
/// is exported: a failure, or a trace in the sample. Ends when dropped.
#[derive(Debug, Default)]
pub struct Pending(Option<PendingData>);

#[derive(Debug)]
struct PendingData {
    parent: Parent,
    span: SpanId,
    /// `None`: the template's.
    name: Option<Cow<'static, str>>,
    /// What it shares with the calls like it (its name and fixed attributes).
    template: Option<Arc<SpanTemplate>>,
    start: SystemTime,
    end: Option<SystemTime>,
    attributes: Vec<KeyValue>,
    /// How the call went, as fields (written after `attributes`).
    call: CallFields,
    status: Status,
}

/// The request a dependency starting now belongs to, when telemetry records it.
fn recorded_parent() -> Option<Parent> {
    if super::enabled() {
        Parent::current()
    } else {
        None
    }
}

impl Pending {
    /// Nothing recorded (telemetry off, or no traced request).
    pub fn none() -> Self {
        Self(None)
    }

    /// A dependency of the current request (none outside one). `attributes` are built only
    /// when it is recorded.
    pub fn start(
        name: impl FnOnce() -> Cow<'static, str>,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Self {
        match recorded_parent() {
            Some(parent) => Self::under(parent, Some(name()), None, attributes()),
            None => Self::none(),
        }
    }

    /// A dependency of the current request (none outside one) named by `template` and
    /// carrying its attributes: nothing is copied for it, and only what is its own is
    /// recorded (`template` is asked for only when the dependency is recorded).
    pub fn from_template(template: impl FnOnce() -> Arc<SpanTemplate>) -> Self {
        match recorded_parent() {
            // What it records of its own goes in its record ([`Pending::call`]): no list.
            Some(parent) => Self::under(parent, None, Some(template()), Vec::new()),
            None => Self::none(),
        }
    }

    fn under(
        parent: Parent,
        name: Option<Cow<'static, str>>,
        template: Option<Arc<SpanTemplate>>,
        attributes: Vec<KeyValue>,
    ) -> Self {
        // Inline, not boxed: one allocation (and one free of memory long cold) per call fewer.
        Self(Some(PendingData {
            parent,
            span: new_span_id(),
            name,
            template,
            start: SystemTime::now(),
            end: None,
            attributes,
            call: CallFields::default(),
            status: Status::Unset,
        }))
    }

    pub fn is_recording(&self) -> bool {
        self.0.is_some()
    }

    /// Whether its successful end is exported (worth recording details for).
    pub fn is_sampled(&self) -> bool {
        self.0.as_ref().is_some_and(|d| d.parent.sampled)
    }

    /// Its record of how the call went (its status code, the model's answer, why it failed),
    /// when it is recorded.
    pub fn call(&mut self) -> Option<&mut CallFields> {
        self.0.as_mut().map(|d| &mut d.call)
    }

    /// Successful (App Insights reads an unset dependency status as unknown).
    pub fn ok(&mut self) {
        if let Some(d) = &mut self.0 {
            d.status = Status::Ok;
        }
    }

    /// Failed: always kept, whatever the sampling.
    pub fn fail(&mut self) {
        if let Some(d) = &mut self.0 {
            d.status = FAILED;
        }
    }

    /// Its times, when it was measured elsewhere (the Cosmos DB SDK reports them).
    pub fn with_times(mut self, start: SystemTime, end: SystemTime) -> Self {
        if let Some(d) = &mut self.0 {
            d.start = start;
            d.end = Some(end);
        }
        self
    }

    /// The `traceparent` naming this call as the parent, for its outbound request.
    pub fn traceparent(&self) -> Option<axum::http::HeaderValue> {
        let d = self.0.as_ref()?;
        let out = super::envelope::traceparent(d.parent.trace, d.span, d.parent.sampled);
        axum::http::HeaderValue::from_bytes(&out).ok()
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(d) = self.0.take() else {
            return;
        };
        let Some(pipeline) = super::PIPELINE.get() else {
            return;
        };
        let failed = matches!(d.status, Status::Error { .. });
        if !failed && !d.parent.sampled {
            pipeline.skip();
            return;
        }
        pipeline.offer(Finished {
            kind: SpanKind::Client,
            trace: d.parent.trace,
            id: d.span,
            parent: d.parent.span,
            name: d.name.map_or(SpanName::Template, SpanName::Own),
            start: d.start,
            end: d.end.unwrap_or_else(SystemTime::now),
            template: d.template,
            attributes: d.attributes,
            events: Vec::new(),
            status: d.status,
            record: Record::Call(d.call),
        });
    }
}
