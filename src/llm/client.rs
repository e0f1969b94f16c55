//! The model client. One shared pooled transport (`upstream::ModelTransport`); per call, the
//! tenant's endpoint, deployment and credential. `azure_openai` calls
//! `{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=…` with `api-key`;
//! `openai` calls `{endpoint}/v1/chat/completions` with a Bearer key.
//!
//! Timeouts: connect (client), first byte (response headers), total (non-streaming body),
//! idle (between stream chunks). A 429 is retried after `retry-after-ms` / `Retry-After`
//! while the retry budget lasts, then reported with the upstream's wait.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::header::{AUTHORIZATION, HeaderMap};
use http::{StatusCode, Uri};
use http_body_util::BodyExt;
use opentelemetry::Value;
use secrecy::ExposeSecret;

use super::endpoint::bearer;
pub use super::endpoint::{DEFAULT_API_VERSION, ModelEndpoint, UpstreamAuth};
use super::pool::{Entry, Outcome, Pool};
use super::sse::SseParser;
pub use super::wire::{ChatParams, Completion};
use super::wire::{
    StreamOptions, StreamPart, WireChunk, WireErrorBody, WireMessage, WireRequest, WireResponse,
    WireUsage,
};
use crate::telemetry;
use crate::upstream::transport::TransportError;
use crate::upstream::{ModelTransport, UpstreamError, UpstreamPolicy};
use http::header::HeaderName;

#[derive(Debug, Clone, Copy)]
pub struct UpstreamTimeouts {
    pub first_byte: Duration,
    pub total: Duration,
    pub idle: Duration,
    /// Longest total time spent waiting on 429s before giving up.
    pub retry_budget: Duration,
    pub max_retries: u32,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        Self {
            first_byte: Duration::from_secs(60),
            total: Duration::from_secs(120),
            idle: Duration::from_secs(60),
            retry_budget: Duration::from_secs(10),
            max_retries: 3,
        }
    }
}

/// How one call goes: whether it retries a 429 or 5xx itself (not when another deployment
/// can take over) and its first-byte timeout (`None`: the process's).
#[derive(Debug, Clone, Copy)]
pub struct Call {
    pub retry: bool,
    pub first_byte: Option<Duration>,
}

impl Default for Call {
    fn default() -> Self {
        Self {
            retry: true,
            first_byte: None,
        }
    }
}

impl Call {
    fn of(attempt: &super::pool::Attempt<'_>) -> Self {
        Self {
            retry: attempt.retry,
            first_byte: attempt.first_byte,
        }
    }
}

/// What to embed: texts, or token ids (as OpenAI's and Azure's `input` accept them; LangChain
/// sends token ids by default).
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(untagged)]
pub enum EmbedInput<'a> {
    Texts(&'a [String]),
    Tokens(&'a [Vec<u32>]),
}

impl EmbedInput<'_> {
    /// How many embeddings this asks for.
    pub fn len(&self) -> usize {
        match self {
            Self::Texts(t) => t.len(),
            Self::Tokens(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Embeddings as a deployment answered them.
#[derive(Debug)]
pub struct Embeddings {
    /// One vector per input, in input order.
    pub vectors: Vec<Vec<f32>>,
    /// The model the deployment reported.
    pub model: Option<String>,
    /// The tokens it counted (absent when it did not say).
    pub prompt_tokens: Option<u64>,
}

/// Calls tenants' models.
#[derive(Clone)]
pub struct ModelClient {
    http: reqwest::Client,
    transport: ModelTransport,
    policy: UpstreamPolicy,
    timeouts: UpstreamTimeouts,
}

/// How long a 429 asks us to wait: `retry-after-ms` (Azure), else `Retry-After` seconds.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return Some(Duration::from_secs_f64((ms / 1000.0).max(0.0)));
    }
    get("retry-after")
        .and_then(|v| v.parse::<f64>().ok())
        .map(|s| Duration::from_secs_f64(s.max(0.0)))
}

fn error_detail(body: &[u8]) -> String {
    serde_json::from_slice::<WireErrorBody>(body)
        .ok()
        .and_then(|b| b.error)
        .and_then(|e| e.message)
        .map(|m| m.chars().take(300).collect())
        .unwrap_or_default()
}

fn transport_error(err: &TransportError) -> UpstreamError {
    if err.is_timeout() {
        UpstreamError::Timeout("connect")
    } else if err.is_connect() {
        UpstreamError::Unavailable(format!(
            "the model endpoint could not be reached: {}",
            root_cause(err)
        ))
    } else {
        UpstreamError::Unavailable(format!(
            "the model endpoint connection failed: {}",
            root_cause(err)
        ))
    }
}

fn body_error(err: &hyper::Error) -> UpstreamError {
    UpstreamError::Unavailable(format!(
        "the model endpoint connection failed: {}",
        root_cause(err)
    ))
}

/// Reads a whole response body.
async fn read_body(
    response: http::Response<hyper::body::Incoming>,
) -> Result<Bytes, UpstreamError> {
    response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| body_error(&e))
}

fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

impl ModelClient {
    /// `http` serves the other upstream calls (search services, SDK transports); `transport`
    /// the model calls.
    pub fn new(
        http: reqwest::Client,
        transport: ModelTransport,
        policy: UpstreamPolicy,
        timeouts: UpstreamTimeouts,
    ) -> Self {
        Self {
            http,
            transport,
            policy,
            timeouts,
        }
    }

    /// The shared, policy-checked upstream HTTP client (also used for tenants' search services).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn timeouts(&self) -> UpstreamTimeouts {
        self.timeouts
    }

    /// Sends a JSON POST with auth, retrying 429s within the budget; returns a 2xx response.
    async fn send(
        &self,
        endpoint: &ModelEndpoint,
        uri: &Uri,
        body: &impl serde::Serialize,
        dep: &mut telemetry::Dependency,
        call: Call,
    ) -> Result<http::Response<hyper::body::Incoming>, UpstreamError> {
        // The endpoint was checked when an admin set it; check again now (policy may have changed).
        self.policy.check_url(&endpoint.base).map_err(|e| {
            UpstreamError::Configuration(format!("the model endpoint is not allowed: {e}"))
        })?;
        let body = Bytes::from(
            serde_json::to_vec(body).map_err(|e| UpstreamError::Protocol(e.to_string()))?,
        );
        let started = Instant::now();
        let mut attempt = 0u32;
        let traceparent = dep.traceparent();
        let mut throttled = 0u64;
        loop {
            let auth = match (&endpoint.fixed_auth, &endpoint.auth) {
                (Some(header), _) => Some((header.name(), header.value.clone())),
                (None, UpstreamAuth::Entra { tokens, scope }) => {
                    let token = tokens.token(scope).await?;
                    let value = bearer(token.expose_secret()).ok_or_else(|| {
                        UpstreamError::Configuration("the Entra token is not a valid header".into())
                    })?;
                    Some((AUTHORIZATION, value))
                }
                (None, _) => None,
            };
            let headers = auth.into_iter().chain(
                traceparent
                    .clone()
                    .map(|v| (HeaderName::from_static("traceparent"), v)),
            );
            let sent = self.transport.post_json(uri, headers, body.clone());
            let first_byte = call.first_byte.unwrap_or(self.timeouts.first_byte);
            let response = match tokio::time::timeout(first_byte, sent).await {
                Err(_) => return Err(UpstreamError::Timeout("first byte")),
                Ok(Err(e)) => return Err(transport_error(&e)),
                Ok(Ok(r)) => r,
            };
            let status = response.status();
            if status == StatusCode::TOO_MANY_REQUESTS {
                throttled += 1;
                if let Some(owner) = &endpoint.owner {
                    telemetry::metrics::upstream_throttled(owner, 1);
                }
            }
            if let Some(record) = dep.call() {
                record.status = Some(status.as_u16());
                // Absent means none.
                record.retries = (attempt > 0).then_some(i64::from(attempt));
                record.throttled =
                    (throttled > 0).then(|| i64::try_from(throttled).unwrap_or(i64::MAX));
            }
            if status.is_success() {
                return Ok(response);
            }
            let wait = retry_after(response.headers());
            let detail =
                match tokio::time::timeout(Duration::from_secs(5), read_body(response)).await {
                    Ok(Ok(b)) => error_detail(&b),
                    _ => String::new(),
                };
            let retryable = status == StatusCode::TOO_MANY_REQUESTS
                || matches!(
                    status,
                    StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                );
            if retryable && call.retry && attempt < self.timeouts.max_retries {
                let delay = wait.unwrap_or(Duration::from_millis(250 * 2u64.pow(attempt)));
                if started.elapsed() + delay <= self.timeouts.retry_budget {
                    tracing::info!(
                        http.status = status.as_u16(),
                        retry.delay_ms = delay.as_millis() as u64,
                        retry.attempt = attempt + 1,
                        "upstream {status}; retrying in {} ms",
                        delay.as_millis()
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                    continue;
                }
            }
            let suffix = if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            };
            return Err(match status {
                StatusCode::TOO_MANY_REQUESTS => UpstreamError::RateLimited {
                    retry_after_secs: wait
                        .map(|d| d.as_secs_f64().ceil() as u64)
                        .unwrap_or(1)
                        .max(1),
                },
                StatusCode::REQUEST_TIMEOUT => UpstreamError::Timeout("upstream 408"),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => UpstreamError::Rejected {
                    status: status.as_u16(),
                    detail: format!(
                        "the model endpoint rejected the credentials ({}){suffix}",
                        status.as_u16()
                    ),
                },
                StatusCode::NOT_FOUND => UpstreamError::Rejected {
                    status: 404,
                    detail: format!(
                        "deployment '{}' not found (404){suffix}",
                        endpoint.deployment
                    ),
                },
                s if s.is_server_error() => UpstreamError::Unavailable(format!(
                    "the model endpoint failed ({}){suffix}",
                    s.as_u16()
                )),
                s => UpstreamError::Rejected {
                    status: s.as_u16(),
                    detail: format!(
                        "the model endpoint refused the request ({}){suffix}",
                        s.as_u16()
                    ),
                },
            });
        }
    }

    fn request<'a>(
        endpoint: &'a ModelEndpoint,
        messages: &'a [WireMessage],
        params: &'a ChatParams,
        stream: bool,
    ) -> WireRequest<'a> {
        WireRequest {
            model: endpoint
                .model_in_body()
                .then_some(endpoint.deployment.as_str()),
            messages,
            temperature: params.temperature,
            top_p: params.top_p,
            max_tokens: params.max_tokens,
            stream,
            stream_options: stream.then_some(StreamOptions {
                include_usage: true,
            }),
            extras: params.extras.as_deref(),
        }
    }

    /// A whole answer (one dependency in the caller's trace).
    pub async fn complete(
        &self,
        endpoint: &ModelEndpoint,
        messages: &[WireMessage],
        params: &ChatParams,
    ) -> Result<Completion, UpstreamError> {
        self.complete_call(endpoint, messages, params, Call::default())
            .await
    }

    async fn complete_call(
        &self,
        endpoint: &ModelEndpoint,
        messages: &[WireMessage],
        params: &ChatParams,
        call: Call,
    ) -> Result<Completion, UpstreamError> {
        let mut dep = telemetry::model_span("chat", endpoint, false);
        let result = self
            .complete_inner(endpoint, messages, params, &mut dep, call)
            .await;
        completion_span(&mut dep, endpoint, &result);
        result
    }

    /// A whole answer from the first of the pool's deployments that gives one (the
    /// Responses API when `responses`), with the entry that answered.
    pub async fn complete_on<'p>(
        &self,
        pool: &'p Pool,
        messages: &[WireMessage],
        params: &ChatParams,
        responses: bool,
    ) -> Result<(Completion, &'p Entry), UpstreamError> {
        let mut tries = pool.tries();
        while let Some(attempt) = tries.next_attempt() {
            let call = Call::of(&attempt);
            let result = if responses {
                self.respond_call(attempt.endpoint, messages, params, call)
                    .await
            } else {
                self.complete_call(attempt.endpoint, messages, params, call)
                    .await
            };
            if let Outcome::Done(done) = tries.settle(&attempt, result) {
                return done.map(|completion| (completion, attempt.entry));
            }
        }
        Err(tries.exhausted())
    }

    /// A streamed answer from the first of the pool's deployments that starts one (a
    /// deployment failing before its first content is left for the next), with the entry
    /// that answers.
    pub async fn stream_on<'p>(
        &self,
        pool: &'p Pool,
        messages: &[WireMessage],
        params: &ChatParams,
        responses: bool,
    ) -> Result<(ChatStream, &'p Entry), UpstreamError> {
        let mut tries = pool.tries();
        while let Some(attempt) = tries.next_attempt() {
            let result = self
                .open_stream(
                    attempt.endpoint,
                    messages,
                    params,
                    responses,
                    Call::of(&attempt),
                )
                .await;
            if let Outcome::Done(done) = tries.settle(&attempt, result) {
                return done.map(|stream| (stream, attempt.entry));
            }
        }
        Err(tries.exhausted())
    }

    async fn complete_inner(
        &self,
        endpoint: &ModelEndpoint,
        messages: &[WireMessage],
        params: &ChatParams,
        dep: &mut telemetry::Dependency,
        call: Call,
    ) -> Result<Completion, UpstreamError> {
        let started = Instant::now();
        let response = self
            .send(
                endpoint,
                endpoint.chat_url()?,
                &Self::request(endpoint, messages, params, false),
                dep,
                call,
            )
            .await?;
        let remaining = self.timeouts.total.saturating_sub(started.elapsed());
        let body = tokio::time::timeout(remaining, read_body(response))
            .await
            .map_err(|_| UpstreamError::Timeout("total"))??;
        let parsed: WireResponse = serde_json::from_slice(&body).map_err(|e| {
            UpstreamError::Protocol(format!("chat completion is not valid JSON: {e}"))
        })?;
        let choice = parsed.choices.into_iter().next();
        let (finish_reason, message, completion_filter) = choice
            .map(|c| (c.finish_reason, c.message, c.content_filter_results))
            .unwrap_or_default();
        let filters =
            (parsed.prompt_filter_results.is_some() || completion_filter.is_some()).then(|| {
                Box::new(super::wire::ContentFilters {
                    prompt: parsed.prompt_filter_results,
                    completion: completion_filter,
                })
            });
        let message = message.unwrap_or(super::wire::WireAnswerMessage {
            content: None,
            tool_calls: None,
            refusal: None,
        });
        Ok(Completion {
            content: message.content.unwrap_or_default(),
            tool_calls: message.tool_calls.unwrap_or_default(),
            refusal: message.refusal,
            filters,
            finish_reason,
            model: parsed.model.unwrap_or_else(|| endpoint.deployment.clone()),
            usage: parsed.usage.unwrap_or_default(),
            citations: Vec::new(),
        })
    }

    /// Embeddings of `inputs`, in order (one dependency in the caller's trace).
    pub async fn embed(
        &self,
        endpoint: &ModelEndpoint,
        inputs: &[String],
    ) -> Result<Vec<Vec<f32>>, UpstreamError> {
        Ok(self
            .embeddings(endpoint, EmbedInput::Texts(inputs), None)
            .await?
            .vectors)
    }

    /// Embeddings with what the deployment reported (`/v1/embeddings`): the model and the
    /// tokens it counted. `dimensions` is passed through (text-embedding-3 models).
    pub async fn embeddings(
        &self,
        endpoint: &ModelEndpoint,
        inputs: EmbedInput<'_>,
        dimensions: Option<u32>,
    ) -> Result<Embeddings, UpstreamError> {
        let mut dep = telemetry::model_span("embeddings", endpoint, false);
        let result = self
            .embed_inner(endpoint, inputs, dimensions, &mut dep)
            .await;
        match &result {
            Ok(e) => {
                let usage = e.prompt_tokens.map(|p| WireUsage {
                    prompt_tokens: p,
                    completion_tokens: 0,
                    total_tokens: p,
                });
                model_span_done(&mut dep, e.model.as_deref(), usage.as_ref(), None)
            }
            Err(e) => model_span_failed(&mut dep, endpoint, e),
        }
        result
    }

    async fn embed_inner(
        &self,
        endpoint: &ModelEndpoint,
        inputs: EmbedInput<'_>,
        dimensions: Option<u32>,
        dep: &mut telemetry::Dependency,
    ) -> Result<Embeddings, UpstreamError> {
        #[derive(serde::Serialize)]
        struct Request<'a> {
            input: EmbedInput<'a>,
            #[serde(skip_serializing_if = "Option::is_none")]
            model: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            dimensions: Option<u32>,
        }
        #[derive(serde::Deserialize)]
        struct Response {
            data: Vec<Item>,
            #[serde(default)]
            model: Option<String>,
            #[serde(default)]
            usage: Option<ReportedUsage>,
        }
        #[derive(serde::Deserialize)]
        struct ReportedUsage {
            #[serde(default)]
            prompt_tokens: u64,
        }
        #[derive(serde::Deserialize)]
        struct Item {
            index: usize,
            embedding: Vec<f32>,
        }
        let started = Instant::now();
        let body = Request {
            input: inputs,
            model: endpoint
                .model_in_body()
                .then_some(endpoint.deployment.as_str()),
            dimensions,
        };
        let response = self
            .send(
                endpoint,
                endpoint.embeddings_url()?,
                &body,
                dep,
                Call::default(),
            )
            .await?;
        let remaining = self.timeouts.total.saturating_sub(started.elapsed());
        let bytes = tokio::time::timeout(remaining, read_body(response))
            .await
            .map_err(|_| UpstreamError::Timeout("total"))??;
        let mut parsed: Response = serde_json::from_slice(&bytes)
            .map_err(|e| UpstreamError::Protocol(format!("embeddings are not valid JSON: {e}")))?;
        if parsed.data.len() != inputs.len() {
            return Err(UpstreamError::Protocol(format!(
                "asked for {} embeddings, got {}",
                inputs.len(),
                parsed.data.len()
            )));
        }
        parsed.data.sort_by_key(|d| d.index);
        Ok(Embeddings {
            vectors: parsed.data.into_iter().map(|d| d.embedding).collect(),
            model: parsed.model,
            prompt_tokens: parsed.usage.map(|u| u.prompt_tokens),
        })
    }

    /// A whole answer from the upstream Responses API (`endpoint.has_responses()`), read as
    /// a chat completion.
    pub async fn respond(
        &self,
        endpoint: &ModelEndpoint,
        messages: &[WireMessage],
        params: &ChatParams,
    ) -> Result<Completion, UpstreamError> {
        self.respond_call(endpoint, messages, params, Call::default())
            .await
    }

    async fn respond_call(
        &self,
        endpoint: &ModelEndpoint,
        messages: &[WireMessage],
        params: &ChatParams,
        call: Call,
    ) -> Result<Completion, UpstreamError> {
        let mut dep = telemetry::model_span("responses", endpoint, false);
        let result = async {
            let started = Instant::now();
            let body = super::responses::request_to(endpoint, messages, params, false);
            let response = self
                .send(endpoint, endpoint.responses_url()?, &body, &mut dep, call)
                .await?;
            let remaining = self.timeouts.total.saturating_sub(started.elapsed());
            let bytes = tokio::time::timeout(remaining, read_body(response))
                .await
                .map_err(|_| UpstreamError::Timeout("total"))??;
            let parsed: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| UpstreamError::Protocol(format!("response is not valid JSON: {e}")))?;
            if parsed["status"] == "failed" {
                return Err(UpstreamError::Unavailable(format!(
                    "the model response failed: {}",
                    parsed["error"]["message"].as_str().unwrap_or("")
                )));
            }
            Ok(super::responses::completion(&parsed, &endpoint.deployment))
        }
        .await;
        completion_span(&mut dep, endpoint, &result);
        result
    }

    /// A streamed answer. Returns once the first content (or the end) has arrived, so an
    /// upstream failure is still an HTTP error rather than a broken 200.
    pub async fn stream(
        &self,
        endpoint: &ModelEndpoint,
        messages: &[WireMessage],
        params: &ChatParams,
    ) -> Result<ChatStream, UpstreamError> {
        self.open_stream(endpoint, messages, params, false, Call::default())
            .await
    }

    /// A streamed answer from the upstream Responses API, in chat stream parts.
    pub async fn respond_stream(
        &self,
        endpoint: &ModelEndpoint,
        messages: &[WireMessage],
        params: &ChatParams,
    ) -> Result<ChatStream, UpstreamError> {
        self.open_stream(endpoint, messages, params, true, Call::default())
            .await
    }

    async fn open_stream(
        &self,
        endpoint: &ModelEndpoint,
        messages: &[WireMessage],
        params: &ChatParams,
        responses: bool,
        call: Call,
    ) -> Result<ChatStream, UpstreamError> {
        // The dependency lasts until the stream ends (or is dropped).
        let operation = if responses { "responses" } else { "chat" };
        let mut dep = telemetry::model_span(operation, endpoint, true);
        let started = async {
            let response = if responses {
                let body = super::responses::request_to(endpoint, messages, params, true);
                self.send(endpoint, endpoint.responses_url()?, &body, &mut dep, call)
                    .await?
            } else {
                self.send(
                    endpoint,
                    endpoint.chat_url()?,
                    &Self::request(endpoint, messages, params, true),
                    &mut dep,
                    call,
                )
                .await?
            };
            let mut stream = ChatStream {
                inner: Box::pin(response.into_body().into_data_stream()),
                parser: SseParser::new(),
                pending: VecDeque::new(),
                idle: self.timeouts.idle,
                done: false,
                span: telemetry::Dependency::none(),
                owner: endpoint.owner.clone(),
                seen: StreamSeen::default(),
                failed: false,
                events: responses.then(super::responses::EventReader::default),
            };
            stream.prime().await?;
            Ok(stream)
        }
        .await;
        match started {
            Ok(mut stream) => {
                stream.span = dep;
                Ok(stream)
            }
            Err(e) => {
                model_span_failed(&mut dep, endpoint, &e);
                Err(e)
            }
        }
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, hyper::Error>> + Send>>;

/// Parts of a streamed answer, in order. Backpressure: nothing is read from the upstream
/// until the caller asks for the next part.
pub struct ChatStream {
    inner: ByteStream,
    parser: SseParser,
    pending: VecDeque<StreamPart>,
    idle: Duration,
    done: bool,
    /// The model call's dependency span, ended with the stream.
    span: telemetry::Dependency,
    owner: Option<Arc<telemetry::Owner>>,
    seen: StreamSeen,
    failed: bool,
    /// Set when the stream is the Responses API's typed events rather than chat chunks.
    events: Option<super::responses::EventReader>,
}

/// What a stream said about itself, for its dependency span.
#[derive(Default)]
struct StreamSeen {
    model: Option<String>,
    usage: Option<WireUsage>,
    finish: Option<String>,
}

impl Drop for ChatStream {
    fn drop(&mut self) {
        if !self.span.is_recording() || self.failed {
            return;
        }
        if self.done {
            model_span_done(
                &mut self.span,
                self.seen.model.as_deref(),
                self.seen.usage.as_ref(),
                self.seen.finish.as_deref(),
            );
        } else {
            // Ended before the upstream did: an error, or a reader that stopped.
            self.span.fail();
        }
    }
}

/// Records how a whole-answer model call ended on its span.
fn completion_span(
    span: &mut telemetry::Dependency,
    endpoint: &ModelEndpoint,
    result: &Result<Completion, UpstreamError>,
) {
    match result {
        Ok(c) => model_span_done(
            span,
            Some(&c.model),
            Some(&c.usage),
            c.finish_reason.as_deref(),
        ),
        Err(e) => model_span_failed(span, endpoint, e),
    }
}

/// Records a model call's answer on its dependency span.
fn model_span_done(
    span: &mut telemetry::Dependency,
    model: Option<&str>,
    usage: Option<&WireUsage>,
    finish: Option<&str>,
) {
    span.ok();
    // A success is exported only when its trace is in the sample.
    if !span.is_sampled() {
        return;
    }
    let Some(record) = span.call() else {
        return;
    };
    if let Some(m) = model.filter(|m| !m.is_empty()) {
        record.response_model = Some(telemetry::shared(m));
    }
    if let Some(u) = usage {
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        record.input_tokens = Some(count(u.prompt_tokens));
        record.output_tokens = Some(count(u.completion_tokens));
    }
    if let Some(f) = finish {
        // The reasons the API names, without a copy.
        const KNOWN: [&str; 5] = [
            "stop",
            "length",
            "tool_calls",
            "content_filter",
            "function_call",
        ];
        record.finish_reasons = Some(match KNOWN.iter().find(|k| **k == f) {
            Some(known) => Value::from(*known),
            None => telemetry::shared(f),
        });
    }
}

/// Records a failed model call on its span and in the company's metrics.
fn model_span_failed(
    span: &mut telemetry::Dependency,
    endpoint: &ModelEndpoint,
    error: &UpstreamError,
) {
    if let Some(owner) = &endpoint.owner {
        telemetry::metrics::upstream_failure(owner);
    }
    span.fail();
    if let Some(record) = span.call() {
        record.error_type = Some(error.kind());
    }
}

impl ChatStream {
    /// Reads until a content delta or the end is buffered.
    async fn prime(&mut self) -> Result<(), UpstreamError> {
        while !self.done
            && !self.pending.iter().any(|p| {
                matches!(
                    p,
                    StreamPart::Delta(_)
                        | StreamPart::Refusal(_)
                        | StreamPart::ToolCall(_)
                        | StreamPart::Finish(_)
                )
            })
        {
            self.fill().await?;
        }
        Ok(())
    }

    /// Reads one network chunk (or the end) into `pending`.
    async fn fill(&mut self) -> Result<(), UpstreamError> {
        let next = tokio::time::timeout(self.idle, self.inner.next())
            .await
            .map_err(|_| UpstreamError::Timeout("stream idle"))?;
        let events = match next {
            Some(Ok(bytes)) => self
                .parser
                .push(&bytes)
                .map_err(|e| UpstreamError::Protocol(e.to_string()))?,
            Some(Err(e)) => return Err(body_error(&e)),
            None => {
                self.done = true;
                self.parser
                    .finish()
                    .map_err(|e| UpstreamError::Protocol(e.to_string()))?
                    .into_iter()
                    .collect()
            }
        };
        for event in events {
            if event.data.trim() == "[DONE]" {
                self.done = true;
                continue;
            }
            if let Some(reader) = self.events.as_mut() {
                let value: serde_json::Value = serde_json::from_str(&event.data).map_err(|e| {
                    UpstreamError::Protocol(format!("stream event is not valid JSON: {e}"))
                })?;
                match reader.read(&value) {
                    super::responses::Read::Parts(parts) => self.pending.extend(parts),
                    super::responses::Read::Done(parts) => {
                        self.pending.extend(parts);
                        self.done = true;
                    }
                    super::responses::Read::Failed(detail) => {
                        return Err(UpstreamError::Unavailable(format!(
                            "the model stream reported an error: {detail}"
                        )));
                    }
                }
                continue;
            }
            if event.event.as_deref() == Some("error")
                || event.data.contains("\"error\"") && !event.data.contains("\"choices\"")
            {
                let detail = error_detail(event.data.as_bytes());
                return Err(UpstreamError::Unavailable(format!(
                    "the model stream reported an error: {detail}"
                )));
            }
            let chunk: WireChunk = serde_json::from_str(&event.data).map_err(|e| {
                UpstreamError::Protocol(format!("stream chunk is not valid JSON: {e}"))
            })?;
            self.pending.extend(chunk.parts());
        }
        Ok(())
    }

    /// The next part, or `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<Result<StreamPart, UpstreamError>> {
        loop {
            if let Some(part) = self.pending.pop_front() {
                if self.span.is_recording() {
                    match &part {
                        StreamPart::Model(m) => self.seen.model = Some(m.clone()),
                        StreamPart::Usage(u) => self.seen.usage = Some(*u),
                        StreamPart::Finish(f) => self.seen.finish = Some(f.clone()),
                        StreamPart::Delta(_)
                        | StreamPart::Refusal(_)
                        | StreamPart::ToolCall(_)
                        | StreamPart::Filters(_)
                        | StreamPart::Citations(_) => {}
                    }
                }
                return Some(Ok(part));
            }
            if self.done {
                return None;
            }
            if let Err(e) = self.fill().await {
                self.done = true;
                self.span.fail();
                if let Some(owner) = &self.owner {
                    telemetry::metrics::upstream_failure(owner);
                }
                self.failed = true;
                return Some(Err(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Provider;
    use url::Url;

    #[test]
    fn retry_after_prefers_milliseconds() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert("retry-after-ms", "1500".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn urls_per_provider() {
        let azure = ModelEndpoint::new(
            Provider::AzureOpenai,
            Url::parse("https://acme.openai.azure.com/").unwrap(),
            "gpt-4o".into(),
            DEFAULT_API_VERSION.into(),
            UpstreamAuth::None,
        );
        assert_eq!(
            azure.chat_url().unwrap().to_string(),
            "https://acme.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
        );
        let openai = ModelEndpoint::new(
            Provider::Openai,
            Url::parse("https://api.example.com").unwrap(),
            azure.deployment.clone(),
            azure.api_version.clone(),
            UpstreamAuth::None,
        );
        assert_eq!(
            openai.chat_url().unwrap().to_string(),
            "https://api.example.com/v1/chat/completions"
        );
        assert_eq!(
            format!("{:?}", UpstreamAuth::Key("sekret".into())),
            "Key([REDACTED])"
        );
    }
}
