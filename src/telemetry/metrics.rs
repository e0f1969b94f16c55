//! Custom metrics for App Insights: tokens, turns, upstream 429s and failures, turn latency
//! (each with a `companyId` dimension; instance and model where they matter, never a
//! conversation), and the tenant-cache and token-cache lookups. The operator's resource gets
//! every company's; a company with its own resource gets its own there too.
//!
//! SOPHIA aggregates them itself, as App Insights takes them (a delta per interval: a sum, or
//! count, sum, min and max of the measurements). A registry is split in shards, one per thread
//! (by [`super::shard`]): a turn adds to its series in its own thread's shard, under a lock no
//! other thread takes but the worker, once per interval, when it swaps each shard's interval
//! for an empty one and merges them (so no addition is lost or counted twice) and writes the
//! result as metric envelopes ([`Writer::metric`]). Nothing a turn touches is shared with
//! another thread's turns. The OpenTelemetry SDK's instruments built and hashed an attribute
//! set per call (four per turn, one per cache lookup) into one map shared by every thread, and
//! ran a reader thread per resource.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::Owner;
use super::envelope::{Envelopes, MetricPoint, Writer};

/// Most series one resource writes per interval; turns beyond them are counted in one series
/// marked `otel.metric.overflow` (as the OpenTelemetry SDK does past its cardinality limit).
const MAX_SERIES: usize = 2000;

/// One resource's series for the interval now running.
#[derive(Debug)]
pub(super) struct Registry {
    shards: Box<[Shard]>,
}

/// One thread's part of a registry (on a cache line of its own).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(Mutex<Interval>);

impl Default for Registry {
    fn default() -> Self {
        Self {
            shards: (0..super::SHARDS).map(|_| Shard::default()).collect(),
        }
    }
}

const CACHES: [&str; 2] = ["tenant", "token"];

/// An instance's turns by the model that answered them.
type ByModel = Vec<(Box<str>, Turns)>;

#[derive(Debug, Default)]
struct Interval {
    /// Company → instance → the models its turns were answered by.
    turns: HashMap<Arc<str>, HashMap<Arc<str>, ByModel>>,
    /// Company → its model calls' 429s and failures.
    upstream: HashMap<Arc<str>, Upstream>,
    /// Turns past [`MAX_SERIES`].
    overflow: Turns,
    series: usize,
    /// Tenant-runtime and token-cache lookups (`CACHES` × hit, miss); the operator's only.
    cache: [u64; 4],
}

/// One instance's turns answered by one model, in one interval.
#[derive(Debug, Default, Clone, Copy)]
struct Turns {
    prompt: u64,
    completion: u64,
    /// Successful, then failed.
    outcome: [Latency; 2],
}

/// Turn durations in microseconds: how many, their sum, the shortest and longest.
#[derive(Debug, Clone, Copy)]
struct Latency {
    count: u64,
    sum: u64,
    min: u64,
    max: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

impl Latency {
    fn merge(&mut self, other: &Self) {
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

#[derive(Debug, Default)]
struct Upstream {
    throttled: u64,
    failures: u64,
}

impl Turns {
    fn add(&mut self, t: &TurnRecord<'_>) {
        self.prompt += t.prompt_tokens;
        self.completion += t.completion_tokens;
        let micros = (t.duration_ms.max(0.0) * 1000.0) as u64;
        self.outcome[usize::from(!t.ok)].merge(&Latency {
            count: 1,
            sum: micros,
            min: micros,
            max: micros,
        });
    }

    fn merge(&mut self, other: &Self) {
        self.prompt += other.prompt;
        self.completion += other.completion;
        for (mine, theirs) in self.outcome.iter_mut().zip(&other.outcome) {
            mine.merge(theirs);
        }
    }
}

impl Registry {
    /// Runs `f` on this thread's shard of the interval.
    fn with(&self, f: impl FnOnce(&mut Interval)) {
        let shard = &self.shards[super::shard() % self.shards.len()];
        if let Ok(mut interval) = shard.0.lock() {
            f(&mut interval);
        }
    }

    fn turn(&self, t: &TurnRecord<'_>) {
        let (company, instance) = (&t.owner.company, &t.owner.instance);
        self.with(|i| i.find_or_add(company, instance, t.model).add(t));
    }

    fn upstream(&self, company: &Arc<str>, add: impl FnOnce(&mut Upstream)) {
        // One per company that called a model: bounded by the companies, not by the limit.
        self.with(|i| match i.upstream.get_mut(company) {
            Some(u) => add(u),
            None => add(i.upstream.entry(Arc::clone(company)).or_default()),
        });
    }

    /// Takes the interval's series (the next interval starts empty) and writes those with
    /// something in them, dated `time`, as `writer`'s metric envelopes. How many it wrote.
    pub(super) fn take(&self, writer: &Writer, out: &mut Envelopes, time: SystemTime) -> usize {
        let mut taken = Interval::default();
        for shard in &self.shards {
            let part = match shard.0.lock() {
                Ok(mut interval) => std::mem::take(&mut *interval),
                Err(_) => continue,
            };
            taken.merge(part);
        }
        let before = out.len();
        let mut point = |name: &'static str, value: f64, stats, dimensions: &[(&str, &str)]| {
            writer.metric(
                out,
                time,
                &MetricPoint {
                    name,
                    value,
                    stats,
                    dimensions,
                },
            );
        };
        for (company, instances) in &taken.turns {
            for (instance, models) in instances {
                for (model, turns) in models {
                    let who = [
                        ("companyId", &**company),
                        ("instanceId", &**instance),
                        ("model", &**model),
                    ];
                    turns.tokens(&who, &mut point);
                }
                // Turns and their latency by outcome, over the instance's models.
                for (i, outcome) in ["ok", "failed"].into_iter().enumerate() {
                    let mut all = Latency::default();
                    for (_, turns) in models {
                        all.merge(&turns.outcome[i]);
                    }
                    let who = [
                        ("companyId", &**company),
                        ("instanceId", &**instance),
                        ("outcome", outcome),
                    ];
                    latency(&all, &who, &mut point);
                }
            }
        }
        let overflow = [("otel.metric.overflow", "true")];
        taken.overflow.tokens(&overflow, &mut point);
        for l in &taken.overflow.outcome {
            latency(l, &overflow, &mut point);
        }
        for (company, upstream) in &taken.upstream {
            let who = [("companyId", &**company)];
            for (name, n) in [
                ("sophia.upstream.throttled", upstream.throttled),
                ("sophia.upstream.failures", upstream.failures),
            ] {
                if n > 0 {
                    point(name, n as f64, None, &who);
                }
            }
        }
        for (i, &n) in taken.cache.iter().enumerate() {
            if n > 0 {
                let result = if i % 2 == 0 { "hit" } else { "miss" };
                let who = [("cache", CACHES[i / 2]), ("result", result)];
                point("sophia.cache.lookups", n as f64, None, &who);
            }
        }
        out.len() - before
    }
}

type Point<'p> = dyn FnMut(&'static str, f64, Option<(u64, f64, f64)>, &[(&str, &str)]) + 'p;

impl Turns {
    fn tokens(&self, who: &[(&str, &str)], point: &mut Point<'_>) {
        for (name, n) in [
            ("sophia.tokens.prompt", self.prompt),
            ("sophia.tokens.completion", self.completion),
        ] {
            if n > 0 {
                point(name, n as f64, None, who);
            }
        }
    }
}

/// `sophia.turns` and `sophia.turn.duration` (milliseconds) of the turns `l` measured.
fn latency(l: &Latency, who: &[(&str, &str)], point: &mut Point<'_>) {
    if l.count == 0 {
        return;
    }
    let ms = |micros: u64| micros as f64 / 1000.0;
    point("sophia.turns", l.count as f64, None, who);
    point(
        "sophia.turn.duration",
        ms(l.sum),
        Some((l.count, ms(l.min), ms(l.max))),
        who,
    );
}

impl Interval {
    /// The series of `model`'s turns for `instance` of `company`, added when new (the
    /// overflow series once there are [`MAX_SERIES`]).
    fn find_or_add(&mut self, company: &Arc<str>, instance: &Arc<str>, model: &str) -> &mut Turns {
        let found = self
            .turns
            .get(&**company)
            .and_then(|instances| instances.get(&**instance))
            .and_then(|models| models.iter().position(|(m, _)| &**m == model));
        if found.is_none() {
            if self.series >= MAX_SERIES {
                return &mut self.overflow;
            }
            // Only a new series copies the company's and instance's names (a count shared
            // with every other thread's turns of that instance, not touched per turn).
            self.series += 1;
            self.turns
                .entry(Arc::clone(company))
                .or_default()
                .entry(Arc::clone(instance))
                .or_default()
                .push((model.into(), Turns::default()));
        }
        let models = self
            .turns
            .get_mut(&**company)
            .and_then(|instances| instances.get_mut(&**instance));
        let series = match (models, found) {
            (Some(models), Some(at)) => models.get_mut(at),
            (Some(models), None) => models.last_mut(),
            (None, _) => None,
        };
        match series {
            Some((_, turns)) => turns,
            None => &mut self.overflow,
        }
    }

    /// Adds another shard's interval to this one.
    fn merge(&mut self, other: Self) {
        for (company, instances) in other.turns {
            for (instance, models) in instances {
                for (model, turns) in models {
                    self.find_or_add(&company, &instance, &model).merge(&turns);
                }
            }
        }
        self.overflow.merge(&other.overflow);
        for (company, u) in other.upstream {
            let mine = self.upstream.entry(company).or_default();
            mine.throttled += u.throttled;
            mine.failures += u.failures;
        }
        for (mine, theirs) in self.cache.iter_mut().zip(other.cache) {
            *mine += theirs;
        }
    }
}

static GLOBAL: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();

/// The operator's series (every company's).
pub(super) fn global() -> &'static Registry {
    GLOBAL.get_or_init(Registry::default)
}

/// Records into the operator's series and the company's own (when the instance has one).
fn record(company: &str, instance: &str, f: impl Fn(&Registry)) {
    if !super::enabled() {
        return;
    }
    f(global());
    if let Some(own) = super::owner_metrics(company, instance) {
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
    record(&t.owner.company, &t.owner.instance, |r| r.turn(t));
}

/// A model call that failed (its 429s are counted by [`upstream_throttled`]).
pub fn upstream_failure(owner: &Owner) {
    record(&owner.company, &owner.instance, |r| {
        r.upstream(&owner.company, |u| u.failures += 1);
    });
}

/// 429s a model call met (retried or not).
pub fn upstream_throttled(owner: &Owner, count: u64) {
    if count == 0 {
        return;
    }
    record(&owner.company, &owner.instance, |r| {
        r.upstream(&owner.company, |u| u.throttled += count);
    });
}

/// A cache lookup: `cache` is `tenant` or `token`. Operator-only (no company dimension).
pub fn cache_lookup(cache: &'static str, hit: bool) {
    if !super::enabled() {
        return;
    }
    let Some(i) = CACHES.iter().position(|c| *c == cache) else {
        return;
    };
    global().with(|interval| interval.cache[i * 2 + usize::from(!hit)] += 1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::Resource;

    fn owner(company: &str, instance: &str) -> Owner {
        Owner::new(company, instance)
    }

    fn record(r: &Registry, owner: &Owner, model: &str, ms: f64, ok: bool) {
        r.turn(&TurnRecord {
            owner,
            model,
            prompt_tokens: 10,
            completion_tokens: 3,
            duration_ms: ms,
            ok,
        });
    }

    fn points(r: &Registry) -> Vec<serde_json::Value> {
        let writer = Writer::new(
            "00000000-0000-4000-8000-000000000000",
            &Resource::builder_empty()
                .with_attributes([opentelemetry::KeyValue::new("service.name", "sophia")])
                .build(),
        );
        let mut out = Envelopes::default();
        let n = r.take(&writer, &mut out, SystemTime::UNIX_EPOCH);
        let all: Vec<serde_json::Value> = serde_json::from_slice(&out.json(None)).unwrap();
        assert_eq!(all.len(), n);
        all
    }

    fn find<'a>(
        all: &'a [serde_json::Value],
        name: &str,
        dims: &[(&str, &str)],
    ) -> Option<&'a serde_json::Value> {
        all.iter().find(|e| {
            let base = &e["data"]["baseData"];
            base["metrics"][0]["name"] == name
                && dims.iter().all(|(k, v)| base["properties"][*k] == *v)
        })
    }

    /// An interval's series are written as App Insights metric envelopes, as deltas: the next
    /// interval starts from nothing, and an idle one writes nothing.
    #[test]
    fn an_interval_is_written_as_deltas() {
        let r = Registry::default();
        let acme = owner("acme", "i-1");
        record(&r, &acme, "gpt-4o", 10.0, true);
        record(&r, &acme, "gpt-4o", 30.0, true);
        record(&r, &acme, "gpt-4o-mini", 20.0, true);
        record(&r, &acme, "gpt-4o", 5.0, false);
        r.upstream(&acme.company, |u| u.throttled += 2);
        r.with(|i| i.cache[1] += 3);
        let all = points(&r);
        let e = find(&all, "sophia.tokens.prompt", &[("model", "gpt-4o")]).unwrap();
        assert_eq!(e["name"], "Microsoft.ApplicationInsights.Metric");
        assert_eq!(e["iKey"], "00000000-0000-4000-8000-000000000000");
        assert_eq!(e["tags"]["ai.cloud.role"], "sophia");
        assert_eq!(e["time"], "1970-01-01T00:00:00.000Z");
        let m = &e["data"]["baseData"]["metrics"][0];
        assert_eq!(m["kind"], "Aggregation");
        assert_eq!(m["value"], 30.0);
        assert_eq!(e["data"]["baseData"]["properties"]["companyId"], "acme");
        assert_eq!(e["data"]["baseData"]["properties"]["instanceId"], "i-1");
        let turns = find(&all, "sophia.turns", &[("outcome", "ok")]).unwrap();
        assert_eq!(turns["data"]["baseData"]["metrics"][0]["value"], 3.0);
        let d = find(&all, "sophia.turn.duration", &[("outcome", "ok")]).unwrap();
        let m = &d["data"]["baseData"]["metrics"][0];
        assert_eq!(
            (&m["value"], &m["count"], &m["min"], &m["max"]),
            (
                &serde_json::json!(60.0),
                &serde_json::json!(3),
                &serde_json::json!(10.0),
                &serde_json::json!(30.0)
            )
        );
        let failed = find(&all, "sophia.turn.duration", &[("outcome", "failed")]).unwrap();
        assert_eq!(failed["data"]["baseData"]["metrics"][0]["count"], 1);
        let throttled = find(&all, "sophia.upstream.throttled", &[("companyId", "acme")]).unwrap();
        assert_eq!(throttled["data"]["baseData"]["metrics"][0]["value"], 2.0);
        assert!(find(&all, "sophia.upstream.failures", &[]).is_none());
        let cache = find(
            &all,
            "sophia.cache.lookups",
            &[("cache", "tenant"), ("result", "miss")],
        )
        .unwrap();
        assert_eq!(cache["data"]["baseData"]["metrics"][0]["value"], 3.0);
        // 2 models × 2 token counts, 2 outcomes × (turns, duration), throttled, cache.
        assert_eq!(all.len(), 4 + 4 + 1 + 1);
        // Nothing happened since: nothing is written.
        assert!(points(&r).is_empty());
        record(&r, &acme, "gpt-4o", 7.0, true);
        let again = points(&r);
        let turns = find(&again, "sophia.turns", &[]).unwrap();
        assert_eq!(turns["data"]["baseData"]["metrics"][0]["value"], 1.0);
    }

    /// Turns recorded on many threads (each in its own shard) are written as one series.
    #[test]
    fn every_threads_turns_are_merged() {
        let r = Registry::default();
        let acme = owner("acme", "i-1");
        std::thread::scope(|scope| {
            for t in 0..8 {
                let (r, acme) = (&r, &acme);
                scope.spawn(move || {
                    for _ in 0..10 {
                        record(r, acme, "m", f64::from(t + 1), true);
                    }
                });
            }
        });
        let all = points(&r);
        assert_eq!(all.len(), 4, "tokens ×2, turns, duration: {all:?}");
        let turns = find(&all, "sophia.turns", &[]).unwrap();
        assert_eq!(turns["data"]["baseData"]["metrics"][0]["value"], 80.0);
        let prompt = find(&all, "sophia.tokens.prompt", &[]).unwrap();
        assert_eq!(prompt["data"]["baseData"]["metrics"][0]["value"], 800.0);
        let d = find(&all, "sophia.turn.duration", &[]).unwrap();
        let m = &d["data"]["baseData"]["metrics"][0];
        assert_eq!(
            (&m["count"], &m["min"], &m["max"]),
            (&80.into(), &1.0.into(), &8.0.into())
        );
        assert_eq!(m["value"], 360.0);
    }

    /// Past the series limit, turns still count, in one series marked as the overflow; a
    /// company's series never carries another's turns.
    #[test]
    fn series_past_the_limit_overflow_into_one() {
        let r = Registry::default();
        for i in 0..MAX_SERIES + 5 {
            record(&r, &owner("acme", &format!("i-{i}")), "m", 1.0, true);
        }
        let all = points(&r);
        let overflow = find(&all, "sophia.turns", &[("otel.metric.overflow", "true")]).unwrap();
        assert_eq!(overflow["data"]["baseData"]["metrics"][0]["value"], 5.0);
        let total: f64 = all
            .iter()
            .filter(|e| e["data"]["baseData"]["metrics"][0]["name"] == "sophia.turns")
            .map(|e| {
                e["data"]["baseData"]["metrics"][0]["value"]
                    .as_f64()
                    .unwrap()
            })
            .sum();
        assert_eq!(total, (MAX_SERIES + 5) as f64);
        let r = Registry::default();
        record(&r, &owner("acme", "i-1"), "m", 1.0, true);
        record(&r, &owner("globex", "i-1"), "m", 1.0, true);
        let all = points(&r);
        for company in ["acme", "globex"] {
            let t = find(&all, "sophia.turns", &[("companyId", company)]).unwrap();
            assert_eq!(t["data"]["baseData"]["metrics"][0]["value"], 1.0);
        }
    }
}
