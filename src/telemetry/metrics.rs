//! Custom metrics for App Insights: tokens, turns, upstream 429s and failures, turn latency
//! (each with a `companyId` dimension; instance and model where they matter, never a
//! conversation), and the tenant-cache and token-cache lookups. The operator's resource gets
//! every company's; a company with its own resource gets its own there too.

use std::sync::{Arc, OnceLock};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, MeterProvider};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};

use std::time::Duration;

use opentelemetry_sdk::Resource;

use super::Owner;
use super::ingestion::{ConnectionString, IngestionClient};

/// One resource's instruments.
pub struct CompanyMeters {
    provider: SdkMeterProvider,
    tokens_prompt: Counter<u64>,
    tokens_completion: Counter<u64>,
    turns: Counter<u64>,
    throttled: Counter<u64>,
    failures: Counter<u64>,
    latency: Histogram<f64>,
    cache: Counter<u64>,
}

impl std::fmt::Debug for CompanyMeters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CompanyMeters")
    }
}

impl CompanyMeters {
    fn new(provider: SdkMeterProvider) -> Self {
        let meter = provider.meter("sophia");
        Self {
            tokens_prompt: meter
                .u64_counter("sophia.tokens.prompt")
                .with_unit("{token}")
                .with_description("Prompt (input) tokens sent to the company's model")
                .build(),
            tokens_completion: meter
                .u64_counter("sophia.tokens.completion")
                .with_unit("{token}")
                .with_description("Completion (output) tokens the company's model produced")
                .build(),
            turns: meter
                .u64_counter("sophia.turns")
                .with_description("Chat turns, by outcome")
                .build(),
            throttled: meter
                .u64_counter("sophia.upstream.throttled")
                .with_description("429 answers from the company's model endpoint")
                .build(),
            failures: meter
                .u64_counter("sophia.upstream.failures")
                .with_description("Model calls that failed")
                .build(),
            latency: meter
                .f64_histogram("sophia.turn.duration")
                .with_unit("ms")
                .with_description("Time to the whole answer of a turn")
                .build(),
            cache: meter
                .u64_counter("sophia.cache.lookups")
                .with_description("Tenant-runtime and token cache lookups, by result")
                .build(),
            provider,
        }
    }

    /// Exports what has been recorded (blocking, bounded by the exporter's post timeout).
    pub(super) fn flush(&self) {
        let _ = self.provider.force_flush();
    }
}

/// Meters exporting to one resource every `interval`.
pub(super) fn meters_for(
    connection: &ConnectionString,
    client: IngestionClient,
    resource: &Resource,
    interval: Duration,
) -> anyhow::Result<CompanyMeters> {
    let exporter = connection.exporter(client)?;
    let reader = PeriodicReader::builder(exporter)
        .with_interval(interval)
        .build();
    let provider = SdkMeterProvider::builder()
        .with_resource(resource.clone())
        .with_reader(reader)
        .build();
    Ok(CompanyMeters::new(provider))
}

static GLOBAL: OnceLock<CompanyMeters> = OnceLock::new();

/// Installs the operator's meters (once, at start-up).
pub(super) fn start_global(meters: CompanyMeters) {
    let _ = GLOBAL.set(meters);
}

/// Exports the operator's meters now.
pub(super) fn flush_global() {
    if let Some(m) = GLOBAL.get() {
        m.flush();
    }
}

/// Records into the operator's meters and the company's own (when the instance has one).
fn record(company: &str, instance: &str, f: impl Fn(&CompanyMeters)) {
    let Some(global) = GLOBAL.get() else {
        return;
    };
    f(global);
    if let Some(own) = super::owner_meters(company, instance) {
        f(&own);
    }
}

/// How a turn ended, for the metrics.
pub struct TurnRecord<'a> {
    pub owner: &'a Owner,
    pub model: &'a str,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub duration_ms: f64,
    pub ok: bool,
}

/// A finished (or failed) chat turn.
pub fn turn(t: &TurnRecord<'_>) {
    let (company, instance) = (&t.owner.company, &t.owner.instance);
    record(company, instance, |m| {
        let who = [
            KeyValue::new("companyId", Arc::clone(company)),
            KeyValue::new("instanceId", Arc::clone(instance)),
            KeyValue::new("model", t.model.to_owned()),
        ];
        if t.prompt_tokens > 0 {
            m.tokens_prompt.add(t.prompt_tokens, &who);
        }
        if t.completion_tokens > 0 {
            m.tokens_completion.add(t.completion_tokens, &who);
        }
        let outcome = [
            KeyValue::new("companyId", Arc::clone(company)),
            KeyValue::new("instanceId", Arc::clone(instance)),
            KeyValue::new("outcome", if t.ok { "ok" } else { "failed" }),
        ];
        m.turns.add(1, &outcome);
        m.latency.record(t.duration_ms, &outcome);
    });
}

/// A model call that failed (its 429s are counted by [`upstream_throttled`]).
pub fn upstream_failure(owner: &Owner) {
    record(&owner.company, &owner.instance, |m| {
        m.failures
            .add(1, &[KeyValue::new("companyId", Arc::clone(&owner.company))]);
    });
}

/// 429s a model call met (retried or not).
pub fn upstream_throttled(owner: &Owner, count: u64) {
    if count == 0 {
        return;
    }
    record(&owner.company, &owner.instance, |m| {
        m.throttled.add(
            count,
            &[KeyValue::new("companyId", Arc::clone(&owner.company))],
        );
    });
}

/// A cache lookup: `cache` is `tenant` or `token`. Operator-only (no company dimension).
pub fn cache_lookup(cache: &'static str, hit: bool) {
    if let Some(m) = GLOBAL.get() {
        m.cache.add(
            1,
            &[
                KeyValue::new("cache", cache),
                KeyValue::new("result", if hit { "hit" } else { "miss" }),
            ],
        );
    }
}
