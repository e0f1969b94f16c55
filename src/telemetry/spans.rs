//! The spans SOPHIA exports: one server span per request (an App Insights request) and one
//! client span per outbound call (a dependency), joined into the caller's trace by W3C
//! `traceparent` in and out. With telemetry off every function here is a cheap no-op.

use axum::http::{HeaderMap, HeaderValue};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::domain::Provider;
use crate::llm::ModelEndpoint;

/// The target of every exported span (the log output never shows these spans).
pub const SPAN_TARGET: &str = "sophia::telemetry";

/// A W3C `traceparent` (`00-<trace id>-<parent id>-<flags>`) as a remote span context; `None`
/// when it is not one (an all-zero id included), so a malformed header starts a new trace.
pub fn parse_traceparent(raw: &str) -> Option<SpanContext> {
    let mut parts = raw.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    // Version 00 has exactly four parts; a later version may add more (and is read as 00).
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !hex(version, 2) || !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2) {
        return None;
    }
    let trace = TraceId::from_hex(trace).ok()?;
    let parent = SpanId::from_hex(parent).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let cx = SpanContext::new(
        trace,
        parent,
        TraceFlags::new(flags & 1),
        true,
        TraceState::NONE,
    );
    cx.is_valid().then_some(cx)
}

/// The `traceparent` that names `cx` as the parent.
pub fn format_traceparent(cx: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        cx.trace_id(),
        cx.span_id(),
        cx.trace_flags().to_u8()
    )
}

/// The server span of one request, continuing the caller's trace when it sent a valid
/// `traceparent`. `route` is the route template (`/admin/agent-instances/{id}`).
pub fn request_span(
    method: &str,
    route: &str,
    path: &str,
    request_id: &str,
    headers: &HeaderMap,
) -> Span {
    if !super::enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = method,
        http.route = route,
        url.path = path,
        request.id = request_id,
    );
    if let Some(parent) = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent)
    {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
    span
}

/// Sets an attribute of an exported span straight on its OpenTelemetry data. Much cheaper
/// than `Span::record`, which runs every layer's filter and a field visitor (the benchmark's
/// telemetry cost halved with it); a no-op on a disabled span.
#[inline]
pub fn set(span: &Span, key: &'static str, value: impl Into<opentelemetry::Value>) {
    if !span.is_disabled() {
        span.set_attribute(key, value);
    }
}

/// Marks an exported span failed (an App Insights `success = false`, always kept).
#[inline]
pub fn fail(span: &Span) {
    if !span.is_disabled() {
        span.set_status(opentelemetry::trace::Status::error(""));
    }
}

/// Marks an exported dependency span successful (App Insights reads an unset status of a
/// dependency as "unknown", not as a success).
#[inline]
pub fn ok(span: &Span) {
    if !span.is_disabled() {
        span.set_status(opentelemetry::trace::Status::Ok);
    }
}

/// Records how a request ended on its span: 5xx is a failure (4xx is the caller's).
pub fn end_request(span: &Span, status: u16) {
    if span.is_disabled() {
        return;
    }
    set(span, "http.response.status_code", i64::from(status));
    if status >= 500 {
        fail(span);
    }
}

/// Names the company, instance and agent type a request acts for on the current request span.
pub fn record_caller(company: &str, instance: &dyn std::fmt::Display, agent_type: &str) {
    if !super::enabled() {
        return;
    }
    let span = Span::current();
    set(&span, "companyId", company.to_owned());
    set(&span, "instanceId", instance.to_string());
    set(&span, "agentType", agent_type.to_owned());
}

/// A client span built straight on the OpenTelemetry SDK, without a `tracing` span: no
/// subscriber layers, no field visitors, no enter/exit on every poll. The model call, the one
/// dependency of every chat request, is one (its cost on the request path roughly halved with
/// it). Ends, and is exported, when dropped; a no-op with telemetry off.
#[derive(Default)]
pub struct Dependency(Option<opentelemetry_sdk::trace::Span>);

impl Dependency {
    /// Nothing recorded (telemetry off).
    pub fn none() -> Self {
        Self(None)
    }

    pub fn is_recording(&self) -> bool {
        self.0.is_some()
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(span) = &mut self.0 {
            opentelemetry::trace::Span::set_attribute(
                span,
                opentelemetry::KeyValue::new(key, value),
            );
        }
    }

    /// Successful (App Insights reads an unset dependency status as unknown).
    pub fn ok(&mut self) {
        if let Some(span) = &mut self.0 {
            opentelemetry::trace::Span::set_status(span, opentelemetry::trace::Status::Ok);
        }
    }

    /// Failed: always kept, whatever the sampling.
    pub fn fail(&mut self) {
        if let Some(span) = &mut self.0 {
            opentelemetry::trace::Span::set_status(span, opentelemetry::trace::Status::error(""));
        }
    }

    /// The `traceparent` naming this call as the parent, for its outbound request.
    pub fn traceparent(&self) -> Option<HeaderValue> {
        let span = self.0.as_ref()?;
        let sc = opentelemetry::trace::Span::span_context(span);
        sc.is_valid()
            .then(|| HeaderValue::from_str(&format_traceparent(sc)).ok())
            .flatten()
    }
}

impl std::fmt::Debug for Dependency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Dependency")
            .field(&self.0.is_some())
            .finish()
    }
}

/// The dependency span of one call to a company's model (`operation`: `chat` or
/// `embeddings`), with the GenAI semantic-convention attributes, under the current span.
pub fn model_span(operation: &'static str, endpoint: &ModelEndpoint, stream: bool) -> Dependency {
    use opentelemetry::KeyValue;
    use opentelemetry::trace::{SpanKind, Tracer};
    if !super::enabled() {
        return Dependency::none();
    }
    let Some(tracer) = super::TRACER.get() else {
        return Dependency::none();
    };
    let system = match endpoint.provider {
        Provider::AzureOpenai => "az.ai.openai",
        Provider::Openai => "openai",
    };
    let mut attributes = Vec::with_capacity(16);
    if let Some(owner) = &endpoint.owner {
        attributes.push(KeyValue::new(
            super::COMPANY_ATTRIBUTE,
            owner.company.clone(),
        ));
        attributes.push(KeyValue::new(
            super::INSTANCE_ATTRIBUTE,
            owner.instance.clone(),
        ));
    }
    attributes.extend([
        KeyValue::new("gen_ai.system", system),
        KeyValue::new("gen_ai.operation.name", operation),
        KeyValue::new("gen_ai.request.model", endpoint.deployment.clone()),
        KeyValue::new("sophia.stream", stream),
        KeyValue::new(
            "server.address",
            endpoint.base.host_str().unwrap_or("").to_owned(),
        ),
        KeyValue::new(
            "server.port",
            i64::from(endpoint.base.port_or_known_default().unwrap_or(443)),
        ),
        KeyValue::new("http.request.method", "POST"),
    ]);
    let parent = Span::current().context();
    let span = tracer
        .span_builder(format!("{operation} {}", endpoint.deployment))
        .with_kind(SpanKind::Client)
        .with_attributes(attributes)
        .start_with_context(tracer, &parent);
    Dependency(Some(span))
}

/// The `traceparent` to send on an outbound call made inside `span`.
pub fn traceparent_of(span: &Span) -> Option<HeaderValue> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return None;
    }
    HeaderValue::from_str(&format_traceparent(&sc)).ok()
}

/// The `traceparent` for an outbound call made in the current span.
pub fn traceparent() -> Option<HeaderValue> {
    if !super::enabled() {
        return None;
    }
    traceparent_of(&Span::current())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_junk() {
        let raw = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let cx = parse_traceparent(raw).unwrap();
        assert_eq!(
            cx.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert!(cx.is_remote());
        assert_eq!(format_traceparent(&cx), raw);
        for bad in [
            "",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
            "zz-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        // A later version with more fields is read as version 00.
        assert!(
            parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x")
                .is_some()
        );
    }
}
