//! Application Insights envelopes written straight from OpenTelemetry span data into the bytes
//! of a track request: the mapping `opentelemetry-application-insights` applies (a server span
//! is a request, a client span a dependency, a span event a trace, an `exception` event an
//! exception; the same names, tags, properties and length limits), without its intermediate
//! maps and strings. The crate's own exporter, fed the same spans, produces the same JSON
//! (a test holds the two together). Metric envelopes ([`Writer::metric`]) are written the way
//! the crate writes the SDK's delta aggregations.
//!
//! Two things differ on purpose: a value cut to its length limit is cut on a character
//! boundary (the crate cuts bytes and panics on a multi-byte character there), and `ai.*`
//! span attributes are not lifted into tags (SOPHIA sets none).

use std::borrow::Cow;
use std::io::Write as _;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{Event, SpanId, SpanKind, Status, TraceId};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;

/// What an envelope is written from: a finished span, borrowed (from OpenTelemetry's
/// [`SpanData`], or from a request's own record while it ends, so that nothing is built for
/// it first).
pub(super) struct SpanRef<'a> {
    pub kind: SpanKind,
    pub trace: TraceId,
    pub id: SpanId,
    /// [`SpanId::INVALID`] for a root span.
    pub parent: SpanId,
    /// Not used for a server span with `http.request.method` and `http.route` attributes (it
    /// is named by them).
    pub name: &'a str,
    pub start: SystemTime,
    pub end: SystemTime,
    /// The attributes it shares with other spans (before its own), when it has a template.
    pub shared: Option<&'a SpanTemplate>,
    /// Its own attributes (after the template's).
    pub attributes: &'a [KeyValue],
    pub events: &'a [Event],
    pub status: &'a Status,
    /// A request's own record (its attributes as fields; `attributes` is then empty).
    pub request: Option<&'a RequestFields>,
    /// What a dependency recorded of its own as fields (after its `attributes`).
    pub call: Option<&'a CallFields>,
}

/// The span attribute that names the company a span belongs to.
pub const COMPANY_ATTRIBUTE: &str = "companyId";
/// The span attribute that names the agent instance a span belongs to.
pub const INSTANCE_ATTRIBUTE: &str = "instanceId";
/// The attributes of a request's caller, in the order they are recorded.
const CALLER_KEYS: [&str; 3] = [COMPANY_ATTRIBUTE, INSTANCE_ATTRIBUTE, "agentType"];

/// What a request's span records, as fields rather than a list of attributes: built without
/// one, and written without searching one (the writer's general path looks each attribute it
/// reads up by key, a dozen lookups per request). [`RequestFields::attributes`] gives the same
/// as attributes, in the order they are recorded; a test holds the two ways of writing it
/// together.
#[derive(Debug, Default)]
pub(super) struct RequestFields {
    pub method: &'static str,
    /// The route template.
    pub route: Arc<str>,
    /// `None`: the route (a path without parameters).
    pub path: Option<Box<str>>,
    pub request_id: Arc<str>,
    /// Its company, instance and agent type ([`CALLER_KEYS`]), once known.
    pub caller: Option<[Value; 3]>,
    pub status: Option<u16>,
}

impl RequestFields {
    /// The same as span attributes (OpenTelemetry's HTTP server conventions), in the order
    /// they are recorded.
    #[cfg(test)]
    pub(super) fn attributes(&self) -> Vec<KeyValue> {
        let route = || Value::String(Arc::clone(&self.route).into());
        let mut out = vec![
            KeyValue::new("http.request.method", self.method),
            KeyValue::new("http.route", route()),
            KeyValue::new(
                "url.path",
                self.path
                    .as_deref()
                    .map_or_else(route, |p| Value::from(p.to_owned())),
            ),
            KeyValue::new(
                "request.id",
                Value::String(Arc::clone(&self.request_id).into()),
            ),
        ];
        if let Some(caller) = &self.caller {
            out.extend(
                CALLER_KEYS
                    .iter()
                    .zip(caller)
                    .map(|(k, v)| KeyValue::new(*k, v.clone())),
            );
        }
        if let Some(status) = self.status {
            out.push(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        out
    }

    /// The company and instance it belongs to, once known.
    pub(super) fn owner(&self) -> Option<(&str, &str)> {
        match self.caller.as_ref()? {
            [Value::String(company), Value::String(instance), _] => {
                Some((company.as_str(), instance.as_str()))
            }
            _ => None,
        }
    }
}

/// The attributes of a call's record ([`CallFields`]), in the order it writes them.
const CALL_KEYS: [&str; 8] = [
    "http.response.status_code",
    "sophia.retries",
    "sophia.throttled",
    "gen_ai.response.model",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.response.finish_reasons",
    "error.type",
];

/// What a dependency records of its own — how its call went — as fields rather than a list
/// of attributes: a model call's status code, retries, 429s, the model that answered, its
/// tokens and finish reasons, or why it failed. Nothing is built for them (a list of eight
/// attributes per call was), and with a template ([`SpanTemplate`]) the writer writes them
/// after the template's text with no attribute searched for. [`CallFields::attributes`]
/// gives the same as attributes ([`CALL_KEYS`]); a test holds the two ways of writing
/// them together. A field set again replaces what it held (as a later attribute of the
/// same name does).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CallFields {
    pub status: Option<u16>,
    pub retries: Option<i64>,
    pub throttled: Option<i64>,
    pub response_model: Option<Value>,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub finish_reasons: Option<Value>,
    pub error_type: Option<&'static str>,
}

impl CallFields {
    pub(super) fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The fields by [`CALL_KEYS`] (`None`: not recorded), borrowed.
    fn fields(&self) -> [Option<CallField<'_>>; 8] {
        use CallField::{Int, Text, Val};
        [
            self.status.map(|s| Int(i64::from(s))),
            self.retries.map(Int),
            self.throttled.map(Int),
            self.response_model.as_ref().map(Val),
            self.input_tokens.map(Int),
            self.output_tokens.map(Int),
            self.finish_reasons.as_ref().map(Val),
            self.error_type.map(Text),
        ]
    }

    /// The same as span attributes, in [`CALL_KEYS`]' order.
    pub(super) fn attributes(&self) -> impl Iterator<Item = KeyValue> + '_ {
        CALL_KEYS
            .into_iter()
            .zip(self.fields())
            .filter_map(|(key, f)| {
                let value = match f? {
                    CallField::Int(i) => Value::I64(i),
                    CallField::Val(v) => v.clone(),
                    CallField::Text(s) => Value::from(s),
                };
                Some(KeyValue::new(key, value))
            })
    }
}

/// One field of a [`CallFields`], as it is written.
enum CallField<'a> {
    Int(i64),
    Val(&'a Value),
    Text(&'static str),
}

impl SpanRef<'_> {
    /// The same span with `attributes` as its own (and no call record).
    fn with_own<'b>(&'b self, attributes: &'b [KeyValue]) -> SpanRef<'b> {
        SpanRef {
            kind: self.kind.clone(),
            trace: self.trace,
            id: self.id,
            parent: self.parent,
            name: self.name,
            start: self.start,
            end: self.end,
            shared: self.shared,
            attributes,
            events: self.events,
            status: self.status,
            request: self.request,
            call: None,
        }
    }

    fn attrs(&self) -> Attrs<'_> {
        Attrs {
            shared: self.shared.map_or(&[][..], |t| &t.attributes),
            own: self.attributes,
        }
    }
}

/// One metric series' value over an interval: a sum (`stats` none), or the sum of measurements
/// with their count, min and max.
pub(super) struct MetricPoint<'a> {
    pub name: &'static str,
    pub value: f64,
    pub stats: Option<(u64, f64, f64)>,
    pub dimensions: &'a [(&'a str, &'a str)],
}

/// What many dependency spans share (one model endpoint's calls of one kind): their name and
/// the attributes that never change, and the envelope text those make — the dependency's
/// `data`, `target` and `type` and their properties — written once, by the first span that
/// is exported. A span with a template records only what is its own.
pub struct SpanTemplate {
    name: Box<str>,
    attributes: Box<[KeyValue]>,
    rendered: OnceLock<Rendered>,
}

impl std::fmt::Debug for SpanTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanTemplate")
            .field("name", &self.name)
            .field("attributes", &self.attributes.len())
            .finish_non_exhaustive()
    }
}

impl SpanTemplate {
    pub fn new(name: impl Into<Box<str>>, attributes: Vec<KeyValue>) -> Self {
        Self {
            name: name.into(),
            attributes: attributes.into_boxed_slice(),
            rendered: OnceLock::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The same name and attributes, in a template of its own (its text written anew).
    pub(super) fn copy(&self) -> Self {
        Self::new(self.name.clone(), self.attributes.to_vec())
    }

    pub fn attributes(&self) -> &[KeyValue] {
        &self.attributes
    }
}

/// A template's envelope text, as one writer writes it.
struct Rendered {
    /// [`Writer::id`] of the writer it was written by.
    writer: u64,
    /// `,"data":…,"target":…,"type":…` (those the attributes give).
    fields: Vec<u8>,
    /// `,"properties":{` and the attributes' members (empty when none is a property).
    properties: Vec<u8>,
    /// Whether the attributes settle the dependency's type whatever a span adds.
    typed: bool,
    /// Whether they hold a status code (the text is not used then).
    coded: bool,
    /// Whether they hold an attribute a call's record has ([`CALL_KEYS`]): a span with a
    /// record does not use the text then.
    call_clash: bool,
    /// Which of a call's record's attributes are no property (the status code, which is
    /// `resultCode`; a key the resource has, whose value wins).
    call_skip: [bool; 8],
}

/// Where a dependency's `data` is read from, in order.
const DATA_KEYS: &[&str] = &["url.full", "http.url", "db.query.text", "db.statement"];
/// Where its `target` is read from: a host header, else a peer and its port, else a database.
const HOST_KEYS: &[&str] = &["http.request.header.host", "http.host"];
const PEER_KEYS: &[&str] = &[
    "server.address",
    "network.peer.address",
    "server.socket.address",
    "net.sock.peer.name",
    "net.peer.name",
    "net.sock.peer.addr",
    "net.peer.ip",
];
const PORT_KEYS: &[&str] = &[
    "server.port",
    "network.peer.port",
    "server.socket.port",
    "net.sock.peer.port",
    "net.peer.port",
];
const DB_KEYS: &[&str] = &["db.namespace", "db.name"];
/// Where its `type` is read from (else `HTTP` or `DB` by the attributes' prefixes).
const SYSTEM_KEYS: &[&str] = &[
    "db.system.name",
    "db.system",
    "messaging.system",
    "rpc.system.name",
    "rpc.system",
];
/// Every attribute a dependency's `data`, `target` or `type` may be read from.
const DEPENDENCY_FIELD_KEYS: [&[&str]; 6] = [
    DATA_KEYS,
    HOST_KEYS,
    PEER_KEYS,
    PORT_KEYS,
    DB_KEYS,
    SYSTEM_KEYS,
];

/// A span's attributes: its template's, then its own.
#[derive(Clone, Copy)]
struct Attrs<'a> {
    shared: &'a [KeyValue],
    own: &'a [KeyValue],
}

impl<'a> Attrs<'a> {
    fn own(own: &'a [KeyValue]) -> Self {
        Self { shared: &[], own }
    }

    fn iter(self) -> impl Iterator<Item = &'a KeyValue> + Clone {
        self.shared.iter().chain(self.own)
    }

    fn len(self) -> usize {
        self.shared.len() + self.own.len()
    }

    /// The last attribute named `key` (a later one replaces an earlier).
    fn get(self, key: &str) -> Option<&'a Value> {
        self.own
            .iter()
            .rev()
            .chain(self.shared.iter().rev())
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    /// The first of `keys` present.
    fn first(self, keys: &[&str]) -> Option<&'a Value> {
        keys.iter().find_map(|k| self.get(k))
    }

    /// The first of `keys` present, and which it is.
    fn first_key<'k>(self, keys: &[&'k str]) -> Option<(&'k str, &'a Value)> {
        keys.iter().find_map(|&k| Some((k, self.get(k)?)))
    }
}

impl<'a> From<&'a SpanData> for SpanRef<'a> {
    fn from(span: &'a SpanData) -> Self {
        Self {
            kind: span.span_kind.clone(),
            trace: span.span_context.trace_id(),
            id: span.span_context.span_id(),
            parent: span.parent_span_id,
            name: &span.name,
            start: span.start_time,
            end: span.end_time,
            shared: None,
            attributes: &span.attributes,
            events: &span.events,
            status: &span.status,
            request: None,
            call: None,
        }
    }
}

/// What every envelope of one resource shares: its instrumentation key and the tags and
/// properties the process's resource gives (rendered once).
#[derive(Clone)]
pub(super) struct Writer {
    /// Which writer this is (a template's text is reused only by the writer that wrote it).
    id: u64,
    /// `{"iKey":"…",` — how every envelope starts (another resource's envelope is this one's
    /// with its own key head instead).
    key_head: Vec<u8>,
    /// `"ai.cloud.role":"…",…` — the resource's tags as JSON members, each followed by a comma.
    resource_tags: Vec<u8>,
    /// The resource's attributes that no tag carries, as properties of every span envelope.
    resource_properties: Vec<(String, String)>,
    /// Every resource attribute's key (a span attribute of the same name is left out).
    resource_keys: Vec<String>,
}

/// Envelopes written one after another, each one's end kept, so that a post (or a retry of the
/// items ingestion refused) is any subset of them.
#[derive(Debug, Default)]
pub(super) struct Envelopes {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Envelopes {
    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Empties it, keeping its buffers for the next batch.
    pub(super) fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    /// Item `i` (each is followed by a comma in `bytes`).
    fn item(&self, i: usize) -> &[u8] {
        &self.bytes[self.start(i)..self.ends[i]]
    }

    /// Writes the JSON array of the items at `indices` (every item when `None`) to `out`.
    pub(super) fn write_json(
        &self,
        indices: Option<&[usize]>,
        out: &mut impl std::io::Write,
    ) -> std::io::Result<()> {
        out.write_all(b"[")?;
        match indices {
            // Every item: the buffer as it is, but for its last comma.
            None => out.write_all(&self.bytes[..self.bytes.len().saturating_sub(1)])?,
            Some(list) => {
                let mut first = true;
                for &i in list.iter().filter(|&&i| i < self.len()) {
                    if !first {
                        out.write_all(b",")?;
                    }
                    first = false;
                    out.write_all(self.item(i))?;
                }
            }
        }
        out.write_all(b"]")
    }

    /// The JSON array of the items at `indices` (every item when `None`).
    #[cfg(test)]
    pub(super) fn json(&self, indices: Option<&[usize]>) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = self.write_json(indices, &mut out);
        out
    }

    fn end_item(&mut self) {
        self.ends.push(self.bytes.len());
        self.bytes.push(b',');
    }

    /// Where item `i` starts in `bytes`.
    fn start(&self, i: usize) -> usize {
        if i == 0 { 0 } else { self.ends[i - 1] + 1 }
    }

    /// Appends `from`'s items in `items`, written by `was`, as `now` writes them (another
    /// resource's key; everything else is the same for every resource of this process).
    pub(super) fn append_rekeyed(
        &mut self,
        from: &Envelopes,
        items: Range<usize>,
        was: &Writer,
        now: &Writer,
    ) {
        for i in items.filter(|&i| i < from.len()) {
            let item = from.item(i);
            let rest = item.strip_prefix(&was.key_head[..]).unwrap_or(item);
            self.bytes.extend_from_slice(&now.key_head);
            self.bytes.extend_from_slice(rest);
            self.end_item();
        }
    }
}

impl Writer {
    pub(super) fn new(instrumentation_key: &str, resource: &Resource) -> Self {
        let text = |key: &str| {
            resource
                .iter()
                .find(|(k, _)| k.as_str() == key)
                .map(|(_, v)| v.as_str().into_owned())
        };
        let mut tags: Vec<(&'static str, usize, String)> = Vec::new();
        if let Some(name) = text("service.name") {
            let role = match text("service.namespace") {
                Some(ns) => format!("{ns}.{name}"),
                None => name,
            };
            tags.push(("ai.cloud.role", 256, role));
        }
        if let Some(instance) = text("k8s.pod.name").or_else(|| text("service.instance.id")) {
            tags.push(("ai.cloud.roleInstance", 256, instance));
        }
        if let Some(id) = text("device.id") {
            tags.push(("ai.device.id", 1024, id));
        }
        if let Some(model) = text("device.model.name") {
            tags.push(("ai.device.model", 256, model));
        }
        if let Some(version) = text("service.version") {
            tags.push(("ai.application.ver", 1024, version));
        }
        if let Some(sdk) = text("telemetry.sdk.name") {
            let version = text("telemetry.sdk.version").unwrap_or_else(|| "0.0.0".into());
            tags.push(("ai.internal.sdkVersion", 64, format!("{sdk}:{version}")));
        }
        let mut resource_tags = Vec::new();
        for (key, max, value) in &tags {
            member(&mut resource_tags, key, value, *max);
            resource_tags.push(b',');
        }
        // What the tags above were made of: not repeated as properties of every envelope.
        let instance_key = if text("k8s.pod.name").is_some() {
            "k8s.pod.name"
        } else {
            "service.instance.id"
        };
        let in_tags = [
            "service.name",
            "service.namespace",
            instance_key,
            "device.id",
            "device.model.name",
            "service.version",
            "telemetry.sdk.name",
            "telemetry.sdk.version",
        ];
        let mut resource_keys: Vec<String> = resource
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !k.starts_with("_MS."))
            .map(str::to_owned)
            .collect();
        resource_keys.sort();
        let mut resource_properties: Vec<(String, String)> = resource
            .iter()
            .filter(|(k, _)| !k.as_str().starts_with("_MS.") && !in_tags.contains(&k.as_str()))
            .map(|(k, v)| (k.as_str().to_owned(), v.as_str().into_owned()))
            .collect();
        resource_properties.sort();
        let mut key_head = b"{\"iKey\":".to_vec();
        string(&mut key_head, instrumentation_key, 40);
        key_head.push(b',');
        static WRITERS: AtomicU64 = AtomicU64::new(0);
        Self {
            id: WRITERS.fetch_add(1, Ordering::Relaxed),
            key_head,
            resource_tags,
            resource_properties,
            resource_keys,
        }
    }

    /// Appends the envelopes of `span` (the span's, then one per event) to `out`; `rate` is
    /// the share of its kind that is kept (0–1).
    pub(super) fn span(&self, out: &mut Envelopes, span: &SpanRef<'_>, rate: f64) {
        if let Some(fields) = span.request {
            self.request_fields(out, span, fields, rate);
            return;
        }
        let server = matches!(span.kind, SpanKind::Server | SpanKind::Consumer);
        // A template's text, when the span may use it; and the call's record written after
        // it, when it has one.
        let rendered = match span.shared {
            Some(template) if !server => self.rendered(template, span),
            _ => None,
        };
        let call = span.call.filter(|c| !c.is_empty());
        if let Some(call) = call
            && (rendered.is_none() || !span.attributes.is_empty())
        {
            // The record as attributes after the span's own, through the general path.
            let own: Vec<KeyValue> = span
                .attributes
                .iter()
                .cloned()
                .chain(call.attributes())
                .collect();
            self.span(out, &span.with_own(&own), rate);
            return;
        }
        let b = &mut out.bytes;
        let (name, base) = if server {
            ("Microsoft.ApplicationInsights.Request", "RequestData")
        } else {
            (
                "Microsoft.ApplicationInsights.RemoteDependency",
                "RemoteDependencyData",
            )
        };
        self.operation_head(b, name, span.start, span.trace, span.parent, rate);
        let attrs = span.attrs();
        let (method, route) = if server {
            (
                attrs.first_key(&["http.request.method", "http.method"]),
                attrs.get("http.route"),
            )
        } else {
            (None, None)
        };
        if let (Some((_, m)), Some(r)) = (method, route) {
            b.extend_from_slice(b",\"ai.operation.name\":");
            joined(b, &m.as_str(), &r.as_str(), 1024);
        }
        b.extend_from_slice(b"},\"data\":{\"baseType\":\"");
        b.extend_from_slice(base.as_bytes());
        b.extend_from_slice(b"\",\"baseData\":{\"ver\":2,\"id\":\"");
        hex(b, &span.id.to_bytes());
        b.extend_from_slice(b"\",\"duration\":\"");
        duration(b, span.end.duration_since(span.start).unwrap_or_default());
        b.push(b'"');
        let code = attrs.first_key(&["http.response.status_code", "http.status_code"]);
        let status_code = status_code(span.status);
        if server {
            self.request(b, span, attrs, method, route, code, status_code);
        } else {
            self.dependency(b, span, attrs, (code, status_code), rendered, call);
        }
        b.extend_from_slice(b"}}}");
        out.end_item();
        for event in span.events {
            self.event(out, span, event, rate);
        }
    }

    /// A request's envelope from its fields: what [`Writer::span`] writes for the same span
    /// with [`RequestFields::attributes`], without looking any of them up.
    fn request_fields(
        &self,
        out: &mut Envelopes,
        span: &SpanRef<'_>,
        f: &RequestFields,
        rate: f64,
    ) {
        let b = &mut out.bytes;
        let name = "Microsoft.ApplicationInsights.Request";
        self.operation_head(b, name, span.start, span.trace, span.parent, rate);
        b.extend_from_slice(b",\"ai.operation.name\":");
        joined(b, f.method, &f.route, 1024);
        b.extend_from_slice(
            b"},\"data\":{\"baseType\":\"RequestData\",\"baseData\":{\"ver\":2,\"id\":\"",
        );
        hex(b, &span.id.to_bytes());
        b.extend_from_slice(b"\",\"duration\":\"");
        duration(b, span.end.duration_since(span.start).unwrap_or_default());
        b.extend_from_slice(b"\",\"name\":");
        joined(b, f.method, &f.route, 1024);
        b.extend_from_slice(b",\"responseCode\":");
        match f.status {
            Some(code) => {
                b.push(b'"');
                number(b, u64::from(code), 1);
                b.push(b'"');
            }
            None => string(b, status_code(span.status), 1024),
        }
        b.extend_from_slice(if matches!(span.status, Status::Error { .. }) {
            b",\"success\":false,\"url\":"
        } else {
            b",\"success\":true,\"url\":"
        });
        let path = f.path.as_deref().unwrap_or(&f.route);
        if path.starts_with('/') {
            string(b, path, 2048);
        } else {
            string(b, &format!("/{path}"), 2048);
        }
        // The properties: what no field carries, unless the resource has the same key.
        let mut any = false;
        if !self.resource_keys.iter().any(|k| k == "request.id") {
            open(b, &mut any);
            member(b, "request.id", &f.request_id, 8192);
        }
        for (key, v) in f.caller.iter().flat_map(|c| CALLER_KEYS.iter().zip(c)) {
            if !self.resource_keys.iter().any(|k| k == key) {
                open(b, &mut any);
                string(b, key, 150);
                b.push(b':');
                value(b, v, 8192);
            }
        }
        self.close_properties(b, any);
        b.extend_from_slice(b"}}}");
        out.end_item();
        for event in span.events {
            self.event(out, span, event, rate);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn request(
        &self,
        b: &mut Vec<u8>,
        span: &SpanRef<'_>,
        attrs: Attrs<'_>,
        method: Option<(&'static str, &Value)>,
        route: Option<&Value>,
        code: Option<(&'static str, &Value)>,
        status_code: &str,
    ) {
        // The attributes a field carries are not repeated as properties: the method and route
        // (the name), the status code (`responseCode`), what the url is made of.
        let mut taken: [&str; 6] = [""; 6];
        match (method, route) {
            (Some((method_key, m)), Some(r)) => {
                b.extend_from_slice(b",\"name\":");
                joined(b, &m.as_str(), &r.as_str(), 1024);
                taken[3] = method_key;
                taken[4] = "http.route";
            }
            (Some((_, m)), None) => {
                b.extend_from_slice(b",\"name\":");
                value(b, m, 1024);
            }
            _ if !span.name.is_empty() => {
                b.extend_from_slice(b",\"name\":");
                string(b, span.name, 1024);
            }
            _ => {}
        }
        b.extend_from_slice(b",\"responseCode\":");
        match code {
            Some((key, v)) => {
                value(b, v, 1024);
                taken[5] = key;
            }
            None => string(b, status_code, 1024),
        }
        b.extend_from_slice(b",\"success\":");
        b.extend_from_slice(if matches!(span.status, Status::Error { .. }) {
            b"false"
        } else {
            b"true"
        });
        if let Some(url) = request_url(attrs) {
            b.extend_from_slice(b",\"url\":");
            string(b, &url, 2048);
            match attrs.first_key(&["url.full", "http.url"]) {
                Some((key, _)) => taken[0] = key,
                None => taken[..3].copy_from_slice(&["url.path", "url.query", "http.target"]),
            }
        }
        if let Some(source) = attrs.first(&[
            "client.address",
            "http.client_ip",
            "network.peer.address",
            "client.socket.address",
            "net.sock.peer.addr",
            "net.peer.ip",
        ]) {
            b.extend_from_slice(b",\"source\":");
            value(b, source, 1024);
        }
        self.properties(b, attrs, &taken);
    }

    /// A dependency's fields and properties. `rendered`: its template's text, when it may use
    /// it; `call`: the call's record, written after that text (only with it: a span with a
    /// record and no template text has it among its attributes instead).
    fn dependency(
        &self,
        b: &mut Vec<u8>,
        span: &SpanRef<'_>,
        attrs: Attrs<'_>,
        (code, status_code): (Option<(&'static str, &Value)>, &str),
        rendered: Option<&Rendered>,
        call: Option<&CallFields>,
    ) {
        b.extend_from_slice(b",\"name\":");
        string(b, span.name, 1024);
        b.extend_from_slice(b",\"resultCode\":");
        // The status code is `resultCode`, not repeated as a property.
        let code_key = match (code, call.and_then(|c| c.status)) {
            (_, Some(status)) => {
                int(b, i64::from(status));
                ""
            }
            (Some((key, v)), None) => {
                value(b, v, 1024);
                key
            }
            (None, None) => {
                string(b, status_code, 1024);
                ""
            }
        };
        match *span.status {
            Status::Unset => {}
            Status::Ok => b.extend_from_slice(b",\"success\":true"),
            Status::Error { .. } => b.extend_from_slice(b",\"success\":false"),
        }
        if let Some(rendered) = rendered {
            // The template's text, then what the span adds.
            b.extend_from_slice(&rendered.fields);
            let mut any = !rendered.properties.is_empty();
            b.extend_from_slice(&rendered.properties);
            match call {
                Some(call) => self.call_members(b, call, &rendered.call_skip, &mut any),
                None => self.members(b, Attrs::own(span.attributes), &[code_key], &mut any),
            }
            self.close_properties(b, any);
            return;
        }
        let [data, peer, port] = self.dependency_fields(b, attrs, &span.kind);
        self.properties(b, attrs, &[data, peer, port, code_key]);
    }

    /// A dependency's `data`, `target` and `type`; the attributes read for them whose value
    /// is not repeated as a property.
    fn dependency_fields(
        &self,
        b: &mut Vec<u8>,
        attrs: Attrs<'_>,
        kind: &SpanKind,
    ) -> [&'static str; 3] {
        let mut taken: [&str; 3] = ["", "", ""];
        if let Some((key, data)) = attrs.first_key(DATA_KEYS) {
            b.extend_from_slice(b",\"data\":");
            value(b, data, 8192);
            taken[0] = key;
        }
        let host = attrs.first(HOST_KEYS);
        let peer = attrs.first_key(PEER_KEYS);
        if let Some(host) = host {
            b.extend_from_slice(b",\"target\":");
            value(b, host, 1024);
        } else if let Some((peer_key, peer)) = peer {
            b.extend_from_slice(b",\"target\":");
            taken[1] = peer_key;
            match attrs.first_key(PORT_KEYS) {
                Some((port_key, port)) => {
                    taken[2] = port_key;
                    joined_with(b, &peer.as_str(), b':', &port.as_str(), 1024);
                }
                None => value(b, peer, 1024),
            }
        } else if let Some(db) = attrs.first(DB_KEYS) {
            b.extend_from_slice(b",\"target\":");
            value(b, db, 1024);
        }
        let kind = if *kind == SpanKind::Internal {
            Some(Value::from("InProc"))
        } else {
            attrs.first(SYSTEM_KEYS).cloned().or_else(|| {
                let keys = || {
                    attrs
                        .iter()
                        .map(|kv| kv.key.as_str())
                        .chain(self.resource_keys.iter().map(String::as_str))
                        .filter(|k| !k.starts_with("_MS."))
                };
                if keys().any(|k| k.starts_with("http.")) {
                    Some(Value::from("HTTP"))
                } else if keys().any(|k| k.starts_with("db.")) {
                    Some(Value::from("DB"))
                } else {
                    None
                }
            })
        };
        if let Some(kind) = kind {
            b.extend_from_slice(b",\"type\":");
            value(b, &kind, 1024);
        }
        taken
    }

    /// `template`'s text as this writer writes it, when `span` may use it: a client span
    /// none of whose own attributes is one of the template's or one its fields are read from.
    fn rendered<'t>(&self, template: &'t SpanTemplate, span: &SpanRef<'_>) -> Option<&'t Rendered> {
        if span.kind == SpanKind::Internal {
            return None;
        }
        let rendered = template.rendered.get_or_init(|| {
            let attrs = Attrs::own(&template.attributes);
            let mut fields = Vec::new();
            let taken = self.dependency_fields(&mut fields, attrs, &SpanKind::Client);
            let mut properties = Vec::new();
            let mut any = false;
            self.members(&mut properties, attrs, &taken, &mut any);
            let typed = attrs.first(SYSTEM_KEYS).is_some()
                || attrs.iter().any(|kv| kv.key.as_str().starts_with("http."))
                || self.resource_keys.iter().any(|k| k.starts_with("http."));
            Rendered {
                writer: self.id,
                fields,
                properties,
                typed,
                coded: attrs
                    .first(&["http.response.status_code", "http.status_code"])
                    .is_some(),
                call_clash: attrs.iter().any(|kv| CALL_KEYS.contains(&kv.key.as_str())),
                call_skip: std::array::from_fn(|i| {
                    i == 0 || self.resource_keys.iter().any(|k| k == CALL_KEYS[i])
                }),
            }
        });
        // A status code among the template's would be `resultCode` and no property.
        if rendered.coded {
            return None;
        }
        // A call's record after the text: not when the template has one of its attributes
        // (the record's would replace it), nor when its status code (an `http.` attribute)
        // would settle a type the template does not.
        if let Some(call) = span.call
            && !call.is_empty()
            && (rendered.call_clash || (!rendered.typed && call.status.is_some()))
        {
            return None;
        }
        let clash = |key: &str| {
            DEPENDENCY_FIELD_KEYS.iter().any(|keys| keys.contains(&key))
                || template.attributes.iter().any(|kv| kv.key.as_str() == key)
                || (!rendered.typed && (key.starts_with("http.") || key.starts_with("db.")))
        };
        (rendered.writer == self.id && !span.attributes.iter().any(|kv| clash(kv.key.as_str())))
            .then_some(rendered)
    }

    /// `,"properties":{…}` (nothing when there are none): the span's attributes, the last of
    /// a repeated key winning, then the resource's that no tag carries (a resource attribute
    /// wins over a span attribute of the same name); `_MS.` keys and the `taken` ones (whose
    /// value a field of the envelope carries) left out.
    fn properties(&self, b: &mut Vec<u8>, attrs: Attrs<'_>, taken: &[&str]) {
        let mut any = false;
        self.members(b, attrs, taken, &mut any);
        self.close_properties(b, any);
    }

    /// The properties `attrs` give, the first opening the object (`any`: whether it is open).
    fn members(&self, b: &mut Vec<u8>, attrs: Attrs<'_>, taken: &[&str], any: &mut bool) {
        let n = attrs.len();
        for (i, kv) in attrs.iter().enumerate() {
            let key = kv.key.as_str();
            if key.starts_with("_MS.")
                || taken.contains(&key)
                || (i + 1 < n
                    && attrs
                        .iter()
                        .skip(i + 1)
                        .any(|later| later.key.as_str() == key))
                || self.resource_keys.iter().any(|k| k == key)
            {
                continue;
            }
            open(b, any);
            string(b, key, 150);
            b.push(b':');
            value(b, &kv.value, 8192);
        }
    }

    /// The properties a call's record gives (`skip`: [`Rendered::call_skip`]), as
    /// [`Writer::members`] writes them from [`CallFields::attributes`].
    fn call_members(&self, b: &mut Vec<u8>, call: &CallFields, skip: &[bool; 8], any: &mut bool) {
        for ((key, skip), field) in CALL_KEYS.iter().zip(skip).zip(call.fields()) {
            let Some(field) = field.filter(|_| !skip) else {
                continue;
            };
            open(b, any);
            string(b, key, 150);
            b.push(b':');
            match field {
                CallField::Int(i) => int(b, i),
                CallField::Val(v) => value(b, v, 8192),
                CallField::Text(s) => string(b, s, 8192),
            }
        }
    }

    /// The resource's properties, and the object's end.
    fn close_properties(&self, b: &mut Vec<u8>, mut any: bool) {
        for (k, v) in &self.resource_properties {
            open(b, &mut any);
            member(b, k, v, 8192);
        }
        if any {
            b.push(b'}');
        }
    }
    fn event(&self, out: &mut Envelopes, span: &SpanRef<'_>, event: &Event, rate: f64) {
        let (name, base) = match event.name.as_ref() {
            "ai.custom" => ("Microsoft.ApplicationInsights.Event", "EventData"),
            "exception" => ("Microsoft.ApplicationInsights.Exception", "ExceptionData"),
            _ => ("Microsoft.ApplicationInsights.Message", "MessageData"),
        };
        let b = &mut out.bytes;
        // Under the span it happened in.
        self.operation_head(b, name, event.timestamp, span.trace, span.id, rate);
        b.extend_from_slice(b"},\"data\":{\"baseType\":\"");
        b.extend_from_slice(base.as_bytes());
        b.extend_from_slice(b"\",\"baseData\":{\"ver\":2");
        let attrs = &event.attributes[..];
        // The attributes the data itself takes are not repeated as properties.
        let mut taken: [&str; 3] = ["", "", ""];
        match base {
            "EventData" => {
                b.extend_from_slice(b",\"name\":");
                match get(attrs, "ai.customEvent.name") {
                    Some(v) => value(b, v, 512),
                    None => string(b, "<no name>", 512),
                }
                taken[0] = "ai.customEvent.name";
            }
            "ExceptionData" => {
                b.extend_from_slice(b",\"exceptions\":[{\"typeName\":");
                match get(attrs, "exception.type") {
                    Some(v) => value(b, v, 1024),
                    None => string(b, "<no type>", 1024),
                }
                b.extend_from_slice(b",\"message\":");
                match get(attrs, "exception.message") {
                    Some(v) => value(b, v, 32768),
                    None => string(b, "<no message>", 32768),
                }
                if let Some(stack) = get(attrs, "exception.stacktrace") {
                    b.extend_from_slice(b",\"stack\":");
                    value(b, stack, 32768);
                }
                b.extend_from_slice(b"}]");
                taken = [
                    "exception.type",
                    "exception.message",
                    "exception.stacktrace",
                ];
            }
            _ => {
                b.extend_from_slice(b",\"message\":");
                if event.name.is_empty() {
                    string(b, "<no message>", 32768);
                } else {
                    string(b, &event.name, 32768);
                }
                if let Some(level) = get(attrs, "level").and_then(severity) {
                    b.extend_from_slice(b",\"severityLevel\":");
                    b.push(b'0' + level);
                    taken[0] = "level";
                }
            }
        }
        let mut any = false;
        for (i, kv) in attrs.iter().enumerate() {
            let key = kv.key.as_str();
            if key.starts_with("_MS.")
                || taken.contains(&key)
                || attrs[i + 1..].iter().any(|later| later.key.as_str() == key)
            {
                continue;
            }
            b.extend_from_slice(if any { b"," } else { b",\"properties\":{" });
            any = true;
            string(b, key, 150);
            b.push(b':');
            value(b, &kv.value, 8192);
        }
        if any {
            b.push(b'}');
        }
        b.extend_from_slice(b"}}}");
        out.end_item();
    }

    /// One metric series' interval as a metric envelope (what the exporter crate writes for
    /// the SDK's delta aggregations: tags and properties of the resource, the dimensions as
    /// properties, no sample rate).
    pub(super) fn metric(&self, out: &mut Envelopes, time: SystemTime, point: &MetricPoint<'_>) {
        let b = &mut out.bytes;
        b.extend_from_slice(&self.key_head);
        b.extend_from_slice(b"\"name\":\"Microsoft.ApplicationInsights.Metric\",\"time\":\"");
        timestamp(b, time);
        b.extend_from_slice(b"\",");
        if let Some((_, tags)) = self.resource_tags.split_last() {
            // Each tag is followed by a comma: the last one's is left out.
            b.extend_from_slice(b"\"tags\":{");
            b.extend_from_slice(tags);
            b.extend_from_slice(b"},");
        }
        b.extend_from_slice(b"\"data\":{\"baseType\":\"MetricData\",\"baseData\":{\"ver\":2,");
        b.extend_from_slice(b"\"metrics\":[{\"name\":");
        string(b, point.name, 1024);
        b.extend_from_slice(b",\"kind\":\"Aggregation\"");
        if let Some((count, min, max)) = point.stats {
            let _ = write!(b, ",\"count\":{}", count.min(i32::MAX as u64));
            b.extend_from_slice(b",\"min\":");
            float(b, min);
            b.extend_from_slice(b",\"max\":");
            float(b, max);
        }
        b.extend_from_slice(b",\"value\":");
        float(b, point.value);
        b.extend_from_slice(b"}]");
        let mut any = false;
        for (key, value) in point.dimensions {
            open(b, &mut any);
            member(b, key, value, 8192);
        }
        self.close_properties(b, any);
        b.extend_from_slice(b"}}}");
        out.end_item();
    }

    /// An envelope up to its tags' operation ids: the head, the resource's tags, the trace
    /// and the parent (none when invalid; the tags object left open).
    fn operation_head(
        &self,
        b: &mut Vec<u8>,
        name: &str,
        time: SystemTime,
        trace: TraceId,
        parent: SpanId,
        rate: f64,
    ) {
        self.head(b, name, time, rate);
        b.extend_from_slice(b"\"tags\":{");
        b.extend_from_slice(&self.resource_tags);
        b.extend_from_slice(b"\"ai.operation.id\":\"");
        hex(b, &trace.to_bytes());
        b.push(b'"');
        if parent != SpanId::INVALID {
            b.extend_from_slice(b",\"ai.operation.parentId\":\"");
            hex(b, &parent.to_bytes());
            b.push(b'"');
        }
    }

    /// `{"iKey":…,"name":…,"time":…,"sampleRate":…,` — the start every envelope shares.
    fn head(&self, b: &mut Vec<u8>, name: &str, time: SystemTime, rate: f64) {
        b.extend_from_slice(&self.key_head);
        b.extend_from_slice(b"\"name\":\"");
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(b"\",\"time\":\"");
        timestamp(b, time);
        b.extend_from_slice(b"\",\"sampleRate\":");
        if rate >= 1.0 {
            b.extend_from_slice(b"100.0");
        } else {
            let _ = write!(b, "{:?}", rate * 100.0);
        }
        b.push(b',');
    }
}

/// A span's status as the code App Insights shows when no status code says more.
fn status_code(status: &Status) -> &'static str {
    match status {
        Status::Unset => "0",
        Status::Ok => "1",
        Status::Error { .. } => "2",
    }
}

/// The last attribute named `key` (a later one replaces an earlier).
fn get<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    Attrs::own(attrs).get(key)
}

/// Opens the properties object, or separates the next member (`any`: whether it is open).
fn open(b: &mut Vec<u8>, any: &mut bool) {
    b.extend_from_slice(if *any { b"," } else { b",\"properties\":{" });
    *any = true;
}

/// A request's URL: `url.full`, else its path (and query), with the scheme and host when known.
/// Borrowed when an attribute is the whole of it (SOPHIA's requests: the path alone).
fn request_url<'a>(attrs: Attrs<'a>) -> Option<Cow<'a, str>> {
    if let Some(url) = attrs.first(&["url.full", "http.url"]) {
        return Some(url.as_str());
    }
    let mut target = match (attrs.get("url.path"), attrs.get("url.query")) {
        (Some(path), Some(query)) => Cow::Owned(format!("{}?{}", path.as_str(), query.as_str())),
        (Some(path), None) => path.as_str(),
        (None, _) => attrs.get("http.target")?.as_str(),
    };
    if !target.starts_with('/') {
        target.to_mut().insert(0, '/');
    }
    let Some(scheme) = attrs.first(&["url.scheme", "http.scheme"]) else {
        return Some(target);
    };
    let host = attrs
        .first(&["http.request.header.host", "http.host"])
        .map(|h| h.as_str().into_owned())
        .or_else(|| {
            let name = attrs.first(&["server.address", "net.host.name"])?;
            let port = attrs.first(&["server.port", "net.host.port"])?;
            Some(format!("{}:{}", name.as_str(), port.as_str()))
        });
    match host {
        Some(host) => Some(Cow::Owned(format!("{}://{host}{target}", scheme.as_str()))),
        None => Some(target),
    }
}

/// A JSON number (a non-finite one, which JSON has not, as 0).
fn float(b: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        let _ = write!(b, "{v:?}");
    } else {
        b.push(b'0');
    }
}

/// The App Insights severity of a `tracing` level.
fn severity(level: &Value) -> Option<u8> {
    match level.as_str().as_ref() {
        "TRACE" | "DEBUG" => Some(0),
        "INFO" => Some(1),
        "WARN" => Some(2),
        "ERROR" => Some(3),
        _ => None,
    }
}

/// `"key":"value"`, the value cut to `max` bytes.
fn member(b: &mut Vec<u8>, key: &str, value: &str, max: usize) {
    string(b, key, 150);
    b.push(b':');
    string(b, value, max);
}

/// An attribute value as a JSON string, cut to `max` bytes.
fn value(b: &mut Vec<u8>, v: &Value, max: usize) {
    match v {
        Value::String(s) => string(b, s.as_str(), max),
        Value::Bool(true) => b.extend_from_slice(b"\"true\""),
        Value::Bool(false) => b.extend_from_slice(b"\"false\""),
        Value::I64(i) => int(b, *i),
        other => string(b, &other.as_str(), max),
    }
}

/// An integer as a JSON string.
fn int(b: &mut Vec<u8>, i: i64) {
    b.push(b'"');
    if i < 0 {
        b.push(b'-');
    }
    number(b, i.unsigned_abs(), 1);
    b.push(b'"');
}

/// Bytes a JSON string cannot hold as they are: `"`, `\\` and the control characters.
static ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = true;
        i += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// A JSON string of `s` cut to at most `max` bytes on a character boundary.
fn string(b: &mut Vec<u8>, s: &str, max: usize) {
    let s = if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        &s[..end]
    } else {
        s
    };
    b.reserve(s.len() + 2);
    b.push(b'"');
    escaped(b, s);
    b.push(b'"');
}

/// The JSON string of `first`, a space and `second` (a request's `POST /chat`), cut to `max`.
fn joined(b: &mut Vec<u8>, first: &str, second: &str, max: usize) {
    joined_with(b, first, b' ', second, max);
}

/// The JSON string of `first`, `between` and `second`, cut to `max`.
fn joined_with(b: &mut Vec<u8>, first: &str, between: u8, second: &str, max: usize) {
    if first.len() + 1 + second.len() > max {
        string(b, &format!("{first}{}{second}", char::from(between)), max);
        return;
    }
    b.push(b'"');
    escaped(b, first);
    b.push(between);
    escaped(b, second);
    b.push(b'"');
}

/// `s` as the inside of a JSON string. Eight bytes at a time while none of them needs an
/// escape (most of what SOPHIA writes needs none).
fn escaped(b: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(word) = bytes.get(i..i + 8)
            && let Ok(word) = <[u8; 8]>::try_from(word)
            && !needs_escape(u64::from_le_bytes(word))
        {
            i += 8;
            continue;
        }
        let c = bytes[i];
        i += 1;
        if !ESCAPE[usize::from(c)] {
            continue;
        }
        b.extend_from_slice(&bytes[start..i - 1]);
        match c {
            b'"' => b.extend_from_slice(b"\\\""),
            b'\\' => b.extend_from_slice(b"\\\\"),
            b'\n' => b.extend_from_slice(b"\\n"),
            b'\r' => b.extend_from_slice(b"\\r"),
            b'\t' => b.extend_from_slice(b"\\t"),
            0x08 => b.extend_from_slice(b"\\b"),
            0x0c => b.extend_from_slice(b"\\f"),
            _ => {
                b.extend_from_slice(b"\\u00");
                b.push(DIGITS[usize::from(c >> 4)]);
                b.push(DIGITS[usize::from(c & 0xf)]);
            }
        }
        start = i;
    }
    b.extend_from_slice(&bytes[start..]);
}

/// Whether any of the eight bytes of `w` is below 0x20, `"` or `\` (the bit tricks of
/// "Bit Twiddling Hacks": a byte below n, a zero byte after an xor). Bytes of 0x80 and above
/// (UTF-8) never match.
const fn needs_escape(w: u64) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let control = w.wrapping_sub(0x20 * LO) & !w;
    let quote = (w ^ (0x22 * LO)).wrapping_sub(LO) & !(w ^ (0x22 * LO));
    let backslash = (w ^ (0x5c * LO)).wrapping_sub(LO) & !(w ^ (0x5c * LO));
    (control | quote | backslash) & HI != 0
}

/// A decimal number, at least `width` digits (zero-padded).
fn number(b: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let start = i.min(digits.len().saturating_sub(width));
    b.extend_from_slice(&digits[start..]);
}

const DIGITS: &[u8; 16] = b"0123456789abcdef";

fn hex(b: &mut Vec<u8>, bytes: &[u8]) {
    for &x in bytes {
        b.push(DIGITS[usize::from(x >> 4)]);
        b.push(DIGITS[usize::from(x & 0xf)]);
    }
}

/// `00-<trace id>-<parent id>-<flags>`, written in place (a header value per outbound call).
pub(super) fn traceparent(
    trace: opentelemetry::trace::TraceId,
    parent: SpanId,
    sampled: bool,
) -> [u8; 55] {
    let mut out = [b'-'; 55];
    out[..2].copy_from_slice(b"00");
    hex_into(&mut out[3..35], &trace.to_bytes());
    hex_into(&mut out[36..52], &parent.to_bytes());
    out[53] = b'0';
    out[54] = if sampled { b'1' } else { b'0' };
    out
}

/// Lower-case hex of `bytes` into `out` (twice as long).
pub(super) fn hex_into(out: &mut [u8], bytes: &[u8]) {
    for (pair, &x) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(x >> 4)];
        pair[1] = DIGITS[usize::from(x & 0xf)];
    }
}

/// `d.hh:mm:ss.ffffff`.
fn duration(b: &mut Vec<u8>, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let secs = micros / 1_000_000;
    number(b, secs / 86_400, 1);
    b.push(b'.');
    number(b, secs / 3600 % 24, 2);
    b.push(b':');
    number(b, secs / 60 % 60, 2);
    b.push(b':');
    number(b, secs % 60, 2);
    b.push(b'.');
    number(b, micros % 1_000_000, 6);
}

/// RFC 3339 in UTC with milliseconds: `2026-12-06T23:14:31.123Z`.
fn timestamp(b: &mut Vec<u8>, t: SystemTime) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, m, d) = civil(secs / 86_400);
    let day = secs % 86_400;
    number(b, y, 4);
    b.push(b'-');
    number(b, m, 2);
    b.push(b'-');
    number(b, d, 2);
    b.push(b'T');
    number(b, day / 3600, 2);
    b.push(b':');
    number(b, day / 60 % 60, 2);
    b.push(b':');
    number(b, day % 60, 2);
    b.push(b'.');
    number(b, u64::from(since.subsec_millis()), 3);
    b.push(b'Z');
}

/// Year, month, day of a count of days since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::io::Read;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;
    use opentelemetry::trace::{
        Event, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry::{InstrumentationScope, KeyValue};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
    use serde_json::Value;

    use super::*;

    /// Keeps the body the crate's exporter posts.
    #[derive(Debug, Clone, Default)]
    struct Capture(Arc<Mutex<Vec<Bytes>>>);

    #[async_trait::async_trait]
    impl opentelemetry_application_insights::HttpClient for Capture {
        async fn send_bytes(
            &self,
            request: http::Request<Bytes>,
        ) -> Result<http::Response<Bytes>, Box<dyn std::error::Error + Send + Sync>> {
            self.0.lock().unwrap().push(request.into_body());
            Ok(http::Response::new(Bytes::from_static(b"{}")))
        }
    }

    const IKEY: &str = "00000000-1111-2222-3333-444444444444";

    fn resource() -> Resource {
        Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "sophia"),
                KeyValue::new("service.version", "1.2.3"),
                KeyValue::new("service.instance.id", "host-7"),
            ])
            .build()
    }

    fn span(
        kind: SpanKind,
        parent: SpanId,
        name: &'static str,
        attributes: Vec<KeyValue>,
        events: Vec<Event>,
        status: Status,
    ) -> SpanData {
        let start = SystemTime::UNIX_EPOCH + Duration::from_micros(1_796_591_671_123_456);
        let mut ev = SpanEvents::default();
        ev.events = events;
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
                SpanId::from(rand_id(name)),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: parent,
            parent_span_is_remote: false,
            span_kind: kind,
            name: Cow::Borrowed(name),
            start_time: start,
            end_time: start + Duration::from_micros(90_061_000_042),
            attributes,
            dropped_attributes_count: 0,
            events: ev,
            links: SpanLinks::default(),
            status,
            instrumentation_scope: InstrumentationScope::builder("sophia").build(),
        }
    }

    fn rand_id(name: &str) -> u64 {
        name.bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            })
            .max(1)
    }

    fn spans() -> Vec<SpanData> {
        let event = |name: &'static str, attrs: Vec<KeyValue>| {
            Event::new(
                name,
                SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_591_671_999),
                attrs,
                0,
            )
        };
        vec![
            span(
                SpanKind::Server,
                SpanId::from_hex("00f067aa0ba902b7").unwrap(),
                "ignored",
                vec![
                    KeyValue::new("http.request.method", "POST"),
                    KeyValue::new("http.route", "/v1/chat/completions"),
                    KeyValue::new("url.path", "/v1/chat/completions"),
                    KeyValue::new("request.id", "r-1"),
                    KeyValue::new("companyId", "acme"),
                    KeyValue::new("instanceId", "i-1"),
                    KeyValue::new("agentType", "sophia"),
                    KeyValue::new(
                        "note",
                        "quote \" backslash \\ newline \n tab \t bell \u{7} é 😀",
                    ),
                    KeyValue::new("http.response.status_code", 200i64),
                    KeyValue::new("repeated", "first"),
                    KeyValue::new("repeated", "last"),
                    KeyValue::new("_MS.hidden", "x"),
                    KeyValue::new("service.name", "overridden by the resource"),
                    KeyValue::new("ratio", 0.5),
                    KeyValue::new("flag", true),
                ],
                vec![
                    event(
                        "the model was slow",
                        vec![
                            KeyValue::new("level", "WARN"),
                            KeyValue::new("target", "sophia::chat"),
                            KeyValue::new("elapsed_ms", 1234i64),
                        ],
                    ),
                    event("", vec![KeyValue::new("level", "NOTALEVEL")]),
                    event(
                        "exception",
                        vec![
                            KeyValue::new("exception.type", "Upstream"),
                            KeyValue::new("exception.message", "boom"),
                            KeyValue::new("extra", "x"),
                        ],
                    ),
                    event(
                        "ai.custom",
                        vec![KeyValue::new("ai.customEvent.name", "budget")],
                    ),
                ],
                Status::Unset,
            ),
            span(
                SpanKind::Server,
                SpanId::INVALID,
                "GET",
                vec![
                    KeyValue::new("http.request.method", "GET"),
                    KeyValue::new("url.path", "health"),
                    KeyValue::new("url.query", "x=1"),
                    KeyValue::new("url.scheme", "https"),
                    KeyValue::new("server.address", "sophia.example"),
                    KeyValue::new("server.port", 443i64),
                    KeyValue::new("client.address", "10.0.0.1"),
                ],
                vec![],
                Status::error("failed"),
            ),
            span(
                SpanKind::Client,
                SpanId::from(rand_id("ignored")),
                "chat gpt-4o",
                vec![
                    KeyValue::new("companyId", "acme"),
                    KeyValue::new("gen_ai.system", "az.ai.openai"),
                    KeyValue::new("gen_ai.request.model", "gpt-4o"),
                    KeyValue::new("sophia.stream", false),
                    KeyValue::new("server.address", "acme.openai.azure.com"),
                    KeyValue::new("server.port", 443i64),
                    KeyValue::new("http.request.method", "POST"),
                    KeyValue::new("gen_ai.usage.input_tokens", 12i64),
                ],
                vec![],
                Status::Ok,
            ),
            span(
                SpanKind::Client,
                SpanId::from(rand_id("ignored")),
                "Cosmos DB query",
                vec![
                    KeyValue::new("db.system.name", "azure.cosmosdb"),
                    KeyValue::new("db.namespace", "sophia"),
                    KeyValue::new("db.response.status_code", "429"),
                    KeyValue::new("error.type", "throttled"),
                ],
                vec![],
                Status::error(""),
            ),
            span(
                SpanKind::Client,
                SpanId::from(rand_id("ignored")),
                "Key Vault GET /secrets/{}",
                vec![
                    KeyValue::new("http.request.header.host", "kv.vault.azure.net"),
                    KeyValue::new("url.full", "https://kv.vault.azure.net/secrets/x"),
                    KeyValue::new("http.response.status_code", 404i64),
                ],
                vec![],
                Status::Unset,
            ),
            span(
                SpanKind::Internal,
                SpanId::INVALID,
                "",
                vec![],
                vec![],
                Status::Unset,
            ),
        ]
    }

    fn parse(bytes: &[u8]) -> Vec<Value> {
        match serde_json::from_slice::<Value>(bytes).unwrap() {
            Value::Array(items) => items,
            other => panic!("not an array: {other}"),
        }
    }

    /// The crate's envelope without the properties SOPHIA leaves out: the resource attributes a
    /// tag carries, and the attributes a field of the envelope was made of.
    fn without_repeats(mut item: Value) -> Value {
        let base = item["data"]["baseType"].as_str().unwrap_or("").to_owned();
        let data = &mut item["data"]["baseData"];
        let has = |data: &Value, k: &str| data["properties"].get(k).is_some();
        let mut drop: Vec<&str> = vec!["service.name", "service.version", "service.instance.id"];
        let code = ["http.response.status_code", "http.status_code"];
        drop.extend(code.into_iter().find(|k| has(data, k)));
        if base == "RequestData"
            && has(data, "http.route")
            && let Some(m) = ["http.request.method", "http.method"]
                .into_iter()
                .find(|k| has(data, k))
        {
            drop.extend([m, "http.route"]);
        }
        if base == "RequestData" && data.get("url").is_some() {
            match ["url.full", "http.url"].into_iter().find(|k| has(data, k)) {
                Some(k) => drop.push(k),
                None => drop.extend(["url.path", "url.query", "http.target"]),
            }
        }
        if base == "RemoteDependencyData" {
            let data_keys = ["url.full", "http.url", "db.query.text", "db.statement"];
            drop.extend(data_keys.into_iter().find(|k| has(data, k)));
            let host = ["http.request.header.host", "http.host"];
            let peer = ["server.address", "network.peer.address", "net.peer.name"];
            let port = ["server.port", "network.peer.port", "net.peer.port"];
            if !host.iter().any(|k| has(data, k))
                && let Some(p) = peer.into_iter().find(|k| has(data, k))
            {
                drop.push(p);
                drop.extend(port.into_iter().find(|k| has(data, k)));
            }
        }
        if let Some(props) = data.get_mut("properties").and_then(Value::as_object_mut) {
            for k in drop {
                props.remove(k);
            }
            if props.is_empty() {
                data.as_object_mut().unwrap().remove("properties");
            }
        }
        item
    }

    #[tokio::test]
    async fn writes_what_the_crates_exporter_writes() {
        let capture = Capture::default();
        let mut exporter =
            opentelemetry_application_insights::Exporter::new_from_connection_string(
                format!("InstrumentationKey={IKEY};IngestionEndpoint=http://127.0.0.1:9/"),
                capture.clone(),
            )
            .unwrap()
            .with_sample_rate(0.25);
        exporter.set_resource(&resource());
        exporter.export(spans()).await.unwrap();
        let posted = capture.0.lock().unwrap()[0].clone();
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(&posted[..])
            .read_to_end(&mut json)
            .unwrap();
        let theirs: Vec<Value> = parse(&json).into_iter().map(without_repeats).collect();

        let writer = Writer::new(IKEY, &resource());
        let mut out = Envelopes::default();
        for s in spans() {
            writer.span(&mut out, &SpanRef::from(&s), 0.25);
        }
        let ours = parse(&out.json(None));
        assert_eq!(ours.len(), theirs.len());
        for (o, t) in ours.iter().zip(&theirs) {
            assert_eq!(o, t, "\nours:   {o}\ntheirs: {t}");
        }
        // A subset, as a retry posts it.
        let two = parse(&out.json(Some(&[1, 3, 99])));
        assert_eq!(two, vec![ours[1].clone(), ours[3].clone()]);
        // Items moved to another resource's batch with its key.
        let other = Writer::new("99999999-8888-7777-6666-555555555555", &resource());
        let mut direct = Envelopes::default();
        for s in spans() {
            other.span(&mut direct, &SpanRef::from(&s), 0.25);
        }
        let direct = parse(&direct.json(None));
        let mut moved = Envelopes::default();
        moved.append_rekeyed(&out, 2..out.len(), &writer, &other);
        moved.append_rekeyed(&out, 1..2, &writer, &other);
        let moved = parse(&moved.json(None));
        assert_eq!(moved.len(), ours.len() - 1);
        assert_eq!(moved[..ours.len() - 2], direct[2..]);
        assert_eq!(moved[ours.len() - 2], direct[1]);
        assert_ne!(direct[2], ours[2]);
    }

    /// A benchmark, not a check: the CPU of writing a chat request's two envelopes (the request,
    /// and its model call from the endpoint's template) and of gzipping them as the exporter
    /// does, against the crate's exporter doing the same for the same spans (its conversion,
    /// serde and gzip). Prints; asserts nothing. Run in release:
    /// `cargo test --release --lib telemetry::envelope::tests::writer_cost -- --ignored --nocapture`.
    #[tokio::test]
    #[ignore = "a benchmark: run it in release with --ignored --nocapture"]
    async fn writer_cost() {
        use std::time::Instant;
        let resource = Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "sophia"),
                KeyValue::new("service.version", "0.1.0"),
                KeyValue::new("service.instance.id", "a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4"),
            ])
            .build();
        let request_attributes = vec![
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("http.route", "/v1/chat/completions"),
            KeyValue::new("url.path", "/v1/chat/completions"),
            KeyValue::new("request.id", "0f5d3c1e-6a7b-4c8d-9e0f-1a2b3c4d5e6f"),
            KeyValue::new("companyId", "floor"),
            KeyValue::new("instanceId", "2f0c8a52-8d1b-4a51-9a8e-2b8c5d6e7f80"),
            KeyValue::new("agentType", "SOPHIA"),
            KeyValue::new("http.response.status_code", 200),
        ];
        let fixed = vec![
            KeyValue::new("companyId", "floor"),
            KeyValue::new("instanceId", "2f0c8a52-8d1b-4a51-9a8e-2b8c5d6e7f80"),
            KeyValue::new("gen_ai.system", "az.ai.openai"),
            KeyValue::new("gen_ai.request.model", "gpt-4o"),
            KeyValue::new("server.address", "acme.openai.azure.com"),
            KeyValue::new("server.port", 443),
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("gen_ai.operation.name", "chat"),
            KeyValue::new("sophia.stream", false),
            KeyValue::new(
                "url.full",
                "https://acme.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
            ),
        ];
        let own = vec![
            KeyValue::new("http.response.status_code", 200),
            KeyValue::new("gen_ai.response.model", "gpt-4o-2024-08-06"),
            KeyValue::new("gen_ai.usage.input_tokens", 12),
            KeyValue::new("gen_ai.usage.output_tokens", 6),
            KeyValue::new("gen_ai.response.finish_reasons", "stop"),
        ];
        let request = span(
            SpanKind::Server,
            SpanId::INVALID,
            "POST /v1/chat/completions",
            request_attributes,
            vec![],
            Status::Unset,
        );
        let dependency = span(
            SpanKind::Client,
            SpanId::from(5),
            "chat gpt-4o",
            fixed.iter().chain(&own).cloned().collect(),
            vec![],
            Status::Ok,
        );
        let template = SpanTemplate::new("chat gpt-4o", fixed);
        // The same as SOPHIA records it: a call's record.
        let call = CallFields {
            status: Some(200),
            response_model: Some(opentelemetry::Value::from("gpt-4o-2024-08-06")),
            input_tokens: Some(12),
            output_tokens: Some(6),
            finish_reasons: Some(opentelemetry::Value::from("stop")),
            ..CallFields::default()
        };
        assert!(own.iter().cloned().eq(call.attributes()));
        let writer = Writer::new(IKEY, &resource);
        let (batches, batch) = (40, 512);
        // Each request its own ids, request id and times, as they are (gzip sees no copies).
        let distinct = |base: &SpanData, i: u32| {
            let mut s = base.clone();
            let n = u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835) | 1;
            s.span_context = SpanContext::new(
                TraceId::from(n),
                SpanId::from((n >> 64) as u64 | 1),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            );
            s.start_time += Duration::from_micros(u64::from(i) * 1_237);
            s.end_time = s.start_time + Duration::from_micros(u64::from(i % 977) * 131 + 800);
            if let Some(kv) = s
                .attributes
                .iter_mut()
                .find(|kv| kv.key.as_str() == "request.id")
            {
                kv.value = format!("{n:032x}").into();
            }
            s
        };
        let requests_of_batch: Vec<SpanData> = (0..batch).map(|i| distinct(&request, i)).collect();
        let dependencies_of_batch: Vec<SpanData> =
            (0..batch).map(|i| distinct(&dependency, i)).collect();
        // A request's own record, as SOPHIA's requests keep it.
        let fields_of_batch: Vec<RequestFields> = requests_of_batch
            .iter()
            .map(|r| {
                let text = |key| {
                    let v = r.attributes.iter().find(|kv| kv.key.as_str() == key);
                    v.map(|kv| kv.value.clone()).unwrap()
                };
                RequestFields {
                    method: "POST",
                    route: Arc::from("/v1/chat/completions"),
                    path: None,
                    request_id: Arc::from(text("request.id").as_str()),
                    caller: Some([text("companyId"), text("instanceId"), text("agentType")]),
                    status: Some(200),
                }
            })
            .collect();
        for (r, fields) in requests_of_batch.iter().zip(&fields_of_batch) {
            let (mut a, mut b) = (Envelopes::default(), Envelopes::default());
            writer.span(&mut a, &SpanRef::from(r), 1.0);
            let mut by_fields = SpanRef::from(r);
            (by_fields.request, by_fields.attributes) = (Some(fields), &[]);
            writer.span(&mut b, &by_fields, 1.0);
            assert_eq!(a.json(None), b.json(None));
        }
        let requests = f64::from(batches * batch);
        let mut out = Envelopes::default();
        let mut bytes = 0;
        let ours = |gzip: bool, out: &mut Envelopes, bytes: &mut usize| {
            let started = Instant::now();
            for _ in 0..batches {
                out.clear();
                for ((request, fields), dependency) in requests_of_batch
                    .iter()
                    .zip(&fields_of_batch)
                    .zip(&dependencies_of_batch)
                {
                    let mut r = SpanRef::from(request);
                    (r.request, r.attributes) = (Some(fields), &[]);
                    writer.span(out, &r, 1.0);
                    let mut d = SpanRef::from(dependency);
                    (d.shared, d.attributes, d.call) = (Some(&template), &[], Some(&call));
                    writer.span(out, &d, 1.0);
                }
                if gzip {
                    let mut z = flate2::write::GzEncoder::new(
                        Vec::with_capacity(8192),
                        flate2::Compression::fast(),
                    );
                    out.write_json(None, &mut z).unwrap();
                    *bytes = z.finish().unwrap().len();
                }
            }
            started.elapsed().as_secs_f64() * 1e9 / requests
        };
        // Warm, then measure.
        ours(true, &mut out, &mut bytes);
        let write_ns = ours(false, &mut out, &mut bytes);
        let both_ns = ours(true, &mut out, &mut bytes);
        let raw = out.json(None).len() as f64 / f64::from(batch);
        let capture = Capture::default();
        let mut exporter =
            opentelemetry_application_insights::Exporter::new_from_connection_string(
                format!("InstrumentationKey={IKEY};IngestionEndpoint=http://127.0.0.1:9/"),
                capture.clone(),
            )
            .unwrap();
        exporter.set_resource(&resource);
        let spans: Vec<SpanData> = requests_of_batch
            .iter()
            .zip(&dependencies_of_batch)
            .flat_map(|(r, d)| [r.clone(), d.clone()])
            .collect();
        exporter.export(spans.clone()).await.unwrap();
        let mut crate_ns = 0.0;
        for _ in 0..batches {
            let spans = spans.clone();
            let started = Instant::now();
            exporter.export(spans).await.unwrap();
            crate_ns += started.elapsed().as_secs_f64() * 1e9;
            capture.0.lock().unwrap().clear();
        }
        crate_ns /= requests;
        println!(
            "A chat request's two envelopes, {batches} batches of {batch}: SOPHIA's writer {write_ns:.0} ns, \
             with gzip level 1 {both_ns:.0} ns ({raw:.0} bytes, {:.0} gzipped); the crate's exporter \
             (conversion, serde, gzip) {crate_ns:.0} ns — {:.1}x",
            bytes as f64 / f64::from(batch),
            crate_ns / both_ns
        );
    }

    #[test]
    fn a_request_record_writes_what_its_attributes_would() {
        use opentelemetry::Value as V;
        let caller = || {
            Some([
                V::from("acme"),
                V::from("2f0c8a52-8d1b-4a51-9a8e-2b8c5d6e7f80"),
                V::from("SOPHIA"),
            ])
        };
        let record = |route: &str, path: Option<&str>, caller, status| RequestFields {
            method: "POST",
            route: Arc::from(route),
            path: path.map(Into::into),
            request_id: Arc::from("0f5d3c1e-6a7b-4c8d-9e0f-1a2b3c4d5e6f"),
            caller,
            status,
        };
        let long = format!("/{}", "r\"é".repeat(400));
        let records = [
            record("/v1/chat/completions", None, caller(), Some(200)),
            record(
                "/v1/instances/{id}/chat",
                Some("/v1/instances/2f0c/chat"),
                caller(),
                Some(502),
            ),
            record("/v1/chat/completions", None, None, Some(401)),
            record("/health", None, None, None),
            record("relative", Some("relative/x"), caller(), Some(200)),
            record(&long, Some(&long), caller(), Some(404)),
            record(
                "/v1/chat/completions",
                None,
                Some([V::from("a\"b"), V::I64(7), V::from("custom")]),
                Some(200),
            ),
        ];
        let event = Event::new(
            "turn done",
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_591_671),
            vec![KeyValue::new("level", "INFO")],
            0,
        );
        // The resource's own `companyId` wins over the request's (in both ways of writing).
        let clashing = Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "sophia"),
                KeyValue::new("companyId", "the-resource's"),
            ])
            .build();
        let start = SystemTime::UNIX_EPOCH + Duration::from_micros(1_796_591_671_123_456);
        for writer in [Writer::new(IKEY, &resource()), Writer::new(IKEY, &clashing)] {
            for (i, fields) in records.iter().enumerate() {
                for (parent, status, events, rate) in [
                    (SpanId::INVALID, Status::Unset, &[][..], 1.0),
                    (
                        SpanId::from(9),
                        Status::error(""),
                        std::slice::from_ref(&event),
                        0.25,
                    ),
                ] {
                    let attributes = fields.attributes();
                    let span = |request, attributes| SpanRef {
                        kind: SpanKind::Server,
                        trace: TraceId::from(7),
                        id: SpanId::from(8),
                        parent,
                        name: &fields.route,
                        start,
                        end: start + Duration::from_millis(5),
                        shared: None,
                        attributes,
                        events,
                        status: &status,
                        request,
                        call: None,
                    };
                    let mut by_fields = Envelopes::default();
                    writer.span(&mut by_fields, &span(Some(fields), &[]), rate);
                    let mut by_attributes = Envelopes::default();
                    writer.span(&mut by_attributes, &span(None, &attributes), rate);
                    assert_eq!(
                        String::from_utf8(by_fields.json(None)).unwrap(),
                        String::from_utf8(by_attributes.json(None)).unwrap(),
                        "record {i}"
                    );
                    assert_eq!(by_fields.len(), 1 + events.len());
                }
            }
        }
        // What a sink is chosen by.
        assert_eq!(
            records[0].owner(),
            Some(("acme", "2f0c8a52-8d1b-4a51-9a8e-2b8c5d6e7f80"))
        );
        assert_eq!(records[2].owner(), None);
        assert_eq!(records[6].owner(), None, "an instance that is no string");
    }

    /// A dependency `chat gpt-4o` of 5 ms, with fixed ids and times.
    fn call_ref<'a>(
        kind: &SpanKind,
        shared: Option<&'a SpanTemplate>,
        attributes: &'a [KeyValue],
        call: Option<&'a CallFields>,
        status: &'a Status,
    ) -> SpanRef<'a> {
        let start = SystemTime::UNIX_EPOCH + Duration::from_micros(1_796_591_671_123_456);
        SpanRef {
            kind: kind.clone(),
            trace: TraceId::from(7),
            id: SpanId::from(8),
            parent: SpanId::from(9),
            name: "chat gpt-4o",
            start,
            end: start + Duration::from_millis(5),
            shared,
            attributes,
            events: &[],
            status,
            request: None,
            call,
        }
    }

    /// A model call's template attributes (one the resource shadows among them).
    fn model_attributes() -> Vec<KeyValue> {
        vec![
            KeyValue::new("companyId", "acme"),
            KeyValue::new("instanceId", "i-1"),
            KeyValue::new("gen_ai.system", "az.ai.openai"),
            KeyValue::new("gen_ai.request.model", "gpt-4o"),
            KeyValue::new("server.address", "acme.openai.azure.com"),
            KeyValue::new("server.port", 443),
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("gen_ai.operation.name", "chat"),
            KeyValue::new("sophia.stream", false),
            KeyValue::new("service.version", "shadowed by the resource's"),
            KeyValue::new(
                "url.full",
                "https://acme.openai.azure.com/openai/x?api-version=1",
            ),
        ]
    }

    #[test]
    fn a_call_record_writes_what_its_attributes_would() {
        let model = model_attributes;
        let answered = CallFields {
            status: Some(200),
            retries: Some(2),
            throttled: Some(1),
            response_model: Some(opentelemetry::Value::from("gpt-4o-2024-08-06")),
            input_tokens: Some(12),
            output_tokens: Some(-6),
            finish_reasons: Some(opentelemetry::Value::from(Arc::<str>::from("tool_calls"))),
            error_type: None,
        };
        let failed = CallFields {
            status: Some(503),
            error_type: Some("unavailable"),
            ..CallFields::default()
        };
        let unanswered = CallFields {
            error_type: Some("timeout"),
            ..CallFields::default()
        };
        let records = [
            answered.clone(),
            failed,
            unanswered.clone(),
            CallFields::default(),
        ];
        // Whether a record is written after the template's text.
        type Fast = fn(&CallFields) -> bool;
        let (always, never): (Fast, Fast) = (|_| true, |_| false);
        let without_status: Fast = |c| c.status.is_none();
        // (template, own attributes, kind, whether the record is written after its text)
        let cases: Vec<(Vec<KeyValue>, Vec<KeyValue>, SpanKind, Fast)> = vec![
            (model(), vec![], SpanKind::Client, always),
            (model(), vec![], SpanKind::Producer, always),
            // Attributes of its own besides: all of it through the general path.
            (
                model(),
                vec![KeyValue::new("sophia.retries", 9)],
                SpanKind::Client,
                never,
            ),
            (
                model(),
                vec![KeyValue::new("n", 1)],
                SpanKind::Client,
                never,
            ),
            (model(), vec![], SpanKind::Internal, never),
            // A template with an attribute the record has (the record's would replace it).
            (
                [model(), vec![KeyValue::new("error.type", "x")]].concat(),
                vec![],
                SpanKind::Client,
                never,
            ),
            // A template with a status code (`resultCode`, no property).
            (
                vec![KeyValue::new("http.response.status_code", 204)],
                vec![],
                SpanKind::Client,
                never,
            ),
            // Templates that do not settle the type (a status code would: `HTTP`).
            (
                vec![KeyValue::new("db.namespace", "sophia")],
                vec![],
                SpanKind::Client,
                without_status,
            ),
            (vec![], vec![], SpanKind::Client, without_status),
        ];
        // A resource holding one of the record's attributes: its value wins, no property.
        let shadowing = Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "sophia"),
                KeyValue::new("gen_ai.response.model", "the resource's"),
            ])
            .build();
        let statuses = [Status::Ok, Status::error("")];
        for resource in [resource(), shadowing] {
            let writer = Writer::new(IKEY, &resource);
            for (i, (shared, own, kind, fast)) in cases.iter().enumerate() {
                for (j, call) in records.iter().enumerate() {
                    let template = SpanTemplate::new("chat gpt-4o", shared.clone());
                    let span = |shared, attributes, call, status| {
                        call_ref(kind, shared, attributes, call, status)
                    };
                    let as_attributes: Vec<KeyValue> = shared
                        .iter()
                        .chain(own)
                        .cloned()
                        .chain(call.attributes())
                        .collect();
                    for status in &statuses {
                        let mut by_record = Envelopes::default();
                        // Twice: the template's text written by the first, reused by the second.
                        for _ in 0..2 {
                            let s = span(Some(&template), own, Some(call), status);
                            writer.span(&mut by_record, &s, 1.0);
                        }
                        let mut plain = Envelopes::default();
                        for _ in 0..2 {
                            let s = span(None, &as_attributes, None, status);
                            writer.span(&mut plain, &s, 1.0);
                        }
                        assert_eq!(
                            String::from_utf8(by_record.json(None)).unwrap(),
                            String::from_utf8(plain.json(None)).unwrap(),
                            "case {i}, record {j}"
                        );
                    }
                    if !call.is_empty() {
                        let s = span(Some(&template), own, Some(call), &statuses[0]);
                        let after_text = writer.rendered(&template, &s).is_some() && own.is_empty();
                        assert_eq!(after_text, fast(call), "case {i}, record {j}");
                    }
                }
            }
        }
        // What the record writes, as ingestion reads it.
        let writer = Writer::new(IKEY, &resource());
        let template = SpanTemplate::new("chat gpt-4o", model());
        let mut out = Envelopes::default();
        for call in [&answered, &unanswered] {
            let s = call_ref(
                &SpanKind::Client,
                Some(&template),
                &[],
                Some(call),
                &Status::Ok,
            );
            writer.span(&mut out, &s, 1.0);
        }
        let items = parse(&out.json(None));
        let data = &items[0]["data"]["baseData"];
        assert_eq!(data["resultCode"], "200");
        assert_eq!(data["type"], "HTTP");
        let p = &data["properties"];
        assert_eq!(p["sophia.retries"], "2");
        assert_eq!(p["sophia.throttled"], "1");
        assert_eq!(p["gen_ai.response.model"], "gpt-4o-2024-08-06");
        assert_eq!(p["gen_ai.usage.input_tokens"], "12");
        assert_eq!(p["gen_ai.usage.output_tokens"], "-6");
        assert_eq!(p["gen_ai.response.finish_reasons"], "tool_calls");
        assert_eq!(p["companyId"], "acme");
        assert!(p.get("http.response.status_code").is_none());
        let data = &items[1]["data"]["baseData"];
        assert_eq!(data["resultCode"], "1", "no status code: the span's status");
        assert_eq!(data["properties"]["error.type"], "timeout");
    }

    #[test]
    fn a_template_writes_what_its_attributes_would() {
        let model = model_attributes;
        let per_call = || {
            vec![
                KeyValue::new("http.response.status_code", 200),
                KeyValue::new("gen_ai.response.model", "gpt-4o-2024-08-06"),
                KeyValue::new("gen_ai.usage.input_tokens", 12),
                KeyValue::new("_MS.hidden", "x"),
                KeyValue::new("gen_ai.usage.input_tokens", 13),
            ]
        };
        let db = || {
            vec![
                KeyValue::new("db.namespace", "sophia"),
                KeyValue::new("db.collection.name", "conversations"),
            ]
        };
        // (template, own attributes, kind, whether the template's text is used)
        let cases: Vec<(Vec<KeyValue>, Vec<KeyValue>, SpanKind, bool)> = vec![
            (model(), per_call(), SpanKind::Client, true),
            (model(), vec![], SpanKind::Client, true),
            // A span repeating a template attribute, or adding one a field is read from.
            (
                model(),
                vec![KeyValue::new("gen_ai.request.model", "other")],
                SpanKind::Client,
                false,
            ),
            (
                model(),
                vec![KeyValue::new("db.system", "cosmosdb")],
                SpanKind::Client,
                false,
            ),
            (
                model(),
                vec![KeyValue::new("http.host", "elsewhere")],
                SpanKind::Client,
                false,
            ),
            (model(), per_call(), SpanKind::Internal, false),
            // A template that does not settle the type: a span's `http.` attribute does.
            (
                db(),
                vec![KeyValue::new("http.response.status_code", 404)],
                SpanKind::Client,
                false,
            ),
            (
                db(),
                vec![KeyValue::new("db.response.status_code", "200")],
                SpanKind::Client,
                false,
            ),
            (
                db(),
                vec![KeyValue::new("azure.cosmosdb.request_charge", 1.5)],
                SpanKind::Client,
                true,
            ),
            (vec![], per_call(), SpanKind::Client, false),
            (
                vec![],
                vec![KeyValue::new("n", 1)],
                SpanKind::Producer,
                true,
            ),
            // A template holding a status code (it would be `resultCode`, no property).
            (
                vec![KeyValue::new("http.response.status_code", 204)],
                vec![KeyValue::new("n", 1)],
                SpanKind::Client,
                false,
            ),
        ];
        let writer = Writer::new(IKEY, &resource());
        let start = SystemTime::UNIX_EPOCH + Duration::from_micros(1_796_591_671_123_456);
        for (i, (shared, own, kind, reused)) in cases.into_iter().enumerate() {
            let template = SpanTemplate::new("chat gpt-4o", shared.clone());
            let combined: Vec<KeyValue> = shared.iter().chain(&own).cloned().collect();
            let write = |shared: Option<&SpanTemplate>, attributes: &[KeyValue]| {
                let mut out = Envelopes::default();
                for status in [Status::Ok, Status::error("")] {
                    writer.span(
                        &mut out,
                        &call_ref(&kind, shared, attributes, None, &status),
                        1.0,
                    );
                }
                String::from_utf8(out.json(None)).unwrap()
            };
            let plain = write(None, &combined);
            // Twice: the text is written by the first, reused by the second.
            assert_eq!(write(Some(&template), &own), plain, "case {i}");
            assert_eq!(write(Some(&template), &own), plain, "case {i}");
            let span = |shared, attributes| SpanRef {
                kind: kind.clone(),
                trace: TraceId::from(7),
                id: SpanId::from(8),
                parent: SpanId::INVALID,
                name: "n",
                start,
                end: start,
                shared,
                attributes,
                events: &[],
                status: &Status::Ok,
                request: None,
                call: None,
            };
            assert_eq!(
                writer
                    .rendered(&template, &span(Some(&template), &own))
                    .is_some(),
                reused,
                "case {i}"
            );
            // Another writer (another resource's) does not take the first one's text.
            let other = Writer::new(IKEY, &Resource::builder_empty().build());
            let mut a = Envelopes::default();
            let mut b = Envelopes::default();
            other.span(&mut a, &span(Some(&template), &own), 1.0);
            other.span(&mut b, &span(None, &combined), 1.0);
            assert_eq!(a.json(None), b.json(None), "case {i}");
        }
    }

    #[test]
    fn escapes_what_json_must_at_any_position() {
        let specials = [
            "\"", "\\", "\n", "\r", "\t", "\u{8}", "\u{c}", "\u{0}", "\u{1f}", "\u{7f}", "é", "😀",
            " ", "~",
        ];
        for special in specials {
            for before in 0..17 {
                for after in [0, 1, 7, 8, 9] {
                    let s = format!("{}{special}{}", "a".repeat(before), "z".repeat(after));
                    let mut b = Vec::new();
                    string(&mut b, &s, 1 << 20);
                    assert_eq!(
                        String::from_utf8(b).unwrap(),
                        serde_json::to_string(&s).unwrap(),
                        "{s:?}"
                    );
                }
            }
        }
        let all: String = (0u8..0x80).map(char::from).chain("é😀".chars()).collect();
        let mut b = Vec::new();
        string(&mut b, &all.repeat(3), 1 << 20);
        assert_eq!(
            String::from_utf8(b).unwrap(),
            serde_json::to_string(&all.repeat(3)).unwrap()
        );
    }

    #[test]
    fn cuts_long_values_on_a_character_boundary() {
        let mut b = Vec::new();
        string(&mut b, &"é".repeat(10), 5);
        assert_eq!(b, "\"éé\"".as_bytes());
        let mut b = Vec::new();
        string(&mut b, "\u{1}", 5);
        assert_eq!(b, b"\"\\u0001\"");
    }

    #[test]
    fn dates_and_durations() {
        let mut b = Vec::new();
        timestamp(
            &mut b,
            SystemTime::UNIX_EPOCH + Duration::from_millis(951_782_400_007),
        );
        assert_eq!(String::from_utf8(b).unwrap(), "2000-02-29T00:00:00.007Z");
        for days in [0u64, 59, 60, 365, 10_957, 11_016, 20_000, 2_932_896] {
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(days * 86_400 + 3_723);
            let mut b = Vec::new();
            timestamp(&mut b, t);
            let want = chrono::DateTime::<chrono::Utc>::from(t)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            assert_eq!(String::from_utf8(b).unwrap(), want);
        }
        let mut b = Vec::new();
        duration(&mut b, Duration::from_micros(90_061_000_042));
        assert_eq!(String::from_utf8(b).unwrap(), "1.01:01:01.000042");
    }
}
