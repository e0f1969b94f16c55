//! An instance's model deployments as one target: the order a turn tries them in (lowest
//! priority first; by weight among the entries of one priority), a circuit breaker per
//! deployment, and the bookkeeping of a turn moving from one to the next ([`Tries`]).
//!
//! A deployment is left for the next on a 429 (and skipped until its `Retry-After` has
//! passed), a 5xx, a timeout or a failed connection. After `failures` such failures in a row
//! its breaker opens: it is skipped for `open_for`, then one turn probes it (half-open) — a
//! success closes it, a failure opens it again. When every deployment is unavailable the one
//! whose breaker closes soonest is tried anyway (a refusal helps no one); when every one is
//! throttled the turn is answered 429 with the shortest wait.
//!
//! An instance with one deployment has no alternative: it is called as before (its own 429
//! retries within the budget), with no breaker.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::endpoint::ModelEndpoint;
use crate::upstream::UpstreamError;

/// When a deployment's breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy)]
pub struct BreakerPolicy {
    /// Consecutive failures that open the breaker.
    pub failures: u32,
    /// How long an open breaker skips its deployment before a probe.
    pub open_for: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            failures: 3,
            open_for: Duration::from_secs(30),
        }
    }
}

/// What a breaker says about its deployment now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Closed: use it.
    Closed,
    /// Open past its time: this turn probes it.
    Probe,
    /// Open until then.
    Open(Instant),
    /// Throttled (its last `Retry-After`) until then.
    Throttled(Instant),
}

#[derive(Debug, Default)]
struct BreakerState {
    consecutive: u32,
    open_until: Option<Instant>,
    /// A probe in flight since then (another turn does not probe meanwhile).
    probing: Option<Instant>,
    throttled_until: Option<Instant>,
}

/// One deployment's circuit breaker. Kept across runtime reloads (see `Breakers`).
#[derive(Debug, Default)]
pub struct Breaker {
    state: Mutex<BreakerState>,
}

impl Breaker {
    /// Whether a turn may use the deployment at `now` (taking the probe when it is due).
    pub fn gate(&self, now: Instant, policy: &BreakerPolicy) -> Gate {
        let Ok(mut s) = self.state.lock() else {
            return Gate::Closed;
        };
        if let Some(until) = s.throttled_until {
            if now < until {
                return Gate::Throttled(until);
            }
            s.throttled_until = None;
        }
        match s.open_until {
            None => Gate::Closed,
            Some(until) if now < until => Gate::Open(until),
            // A probe that never reported (its turn was dropped) is given up after a while.
            Some(_) if s.probing.is_some_and(|p| now < p + policy.open_for) => {
                Gate::Open(now + policy.open_for)
            }
            Some(_) => {
                s.probing = Some(now);
                Gate::Probe
            }
        }
    }

    /// The deployment answered.
    pub fn succeeded(&self) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        let was_open = s.open_until.is_some();
        *s = BreakerState::default();
        was_open
    }

    /// The deployment failed (5xx, timeout, connection); `true` when this opened its breaker.
    pub fn failed(&self, now: Instant, policy: &BreakerPolicy) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        s.consecutive = s.consecutive.saturating_add(1);
        let probe_failed = s.probing.take().is_some();
        let closed = s.open_until.is_none_or(|until| now >= until);
        if probe_failed || (closed && s.consecutive >= policy.failures) {
            s.open_until = Some(now + policy.open_for);
            return true;
        }
        false
    }

    /// The deployment throttled: skip it until `until` (its `Retry-After`).
    pub fn throttled(&self, until: Instant) {
        if let Ok(mut s) = self.state.lock() {
            s.throttled_until = Some(until);
            // A throttled probe says nothing about health: the next turn may probe again.
            s.probing = None;
        }
    }

    /// Whether the breaker is open now (for config-test and `/health`).
    pub fn is_open(&self, now: Instant) -> bool {
        self.state
            .lock()
            .map(|s| s.open_until.is_some_and(|u| now < u))
            .unwrap_or(false)
    }
}

/// Every deployment's breaker, by company, instance and deployment (its name, endpoint and
/// deployment: a changed entry starts closed). Outlives runtime reloads, so a reload does not
/// close an open breaker; an entry unused for an hour is forgotten.
pub struct Breakers {
    by_key: moka::sync::Cache<String, Arc<Breaker>>,
}

impl Default for Breakers {
    fn default() -> Self {
        Self {
            by_key: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
        }
    }
}

impl Breakers {
    /// The breaker of one deployment of one company's instance.
    pub fn of(
        &self,
        tenant: &str,
        instance: &str,
        name: &str,
        endpoint: &str,
        deployment: &str,
    ) -> Arc<Breaker> {
        let key = format!("{tenant}\n{instance}\n{name}\n{endpoint}\n{deployment}");
        self.by_key.get_with(key, Arc::default)
    }
}

impl std::fmt::Debug for Breakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Breakers({})", self.by_key.entry_count())
    }
}

/// One deployment of a pool.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The entry's name (`deployments[].name`); `None` for an instance's single deployment.
    pub name: Option<Arc<str>>,
    /// The endpoint, or why this entry cannot be called (a missing credential, an endpoint
    /// the policy refuses now).
    pub endpoint: Result<Arc<ModelEndpoint>, String>,
    pub priority: u32,
    pub weight: u32,
    /// First-byte timeout when another entry could take over.
    pub timeout: Option<Duration>,
    pub breaker: Arc<Breaker>,
}

/// An instance's deployments, in the order they were listed.
#[derive(Debug, Clone)]
pub struct Pool {
    entries: Vec<Entry>,
    policy: BreakerPolicy,
    /// The endpoint calls are shaped for (the first usable entry).
    primary: Arc<ModelEndpoint>,
}

impl Pool {
    /// A pool of one deployment.
    pub fn single(endpoint: Arc<ModelEndpoint>) -> Self {
        Self {
            entries: vec![Entry {
                name: None,
                endpoint: Ok(Arc::clone(&endpoint)),
                priority: 1,
                weight: 1,
                timeout: None,
                breaker: Arc::default(),
            }],
            policy: BreakerPolicy::default(),
            primary: endpoint,
        }
    }

    /// A pool of `entries`; `Err` (every entry's reason) when none can be called.
    pub fn new(entries: Vec<Entry>, policy: BreakerPolicy) -> Result<Self, String> {
        let primary = entries
            .iter()
            .filter_map(|e| e.endpoint.as_ref().ok().map(|ep| (e.priority, ep)))
            .min_by_key(|(p, _)| *p)
            .map(|(_, ep)| Arc::clone(ep));
        match primary {
            Some(primary) => Ok(Self {
                entries,
                policy,
                primary,
            }),
            None => Err(entries
                .iter()
                .filter_map(|e| {
                    let name = e.name.as_deref().unwrap_or("deployment");
                    e.endpoint
                        .as_ref()
                        .err()
                        .map(|why| format!("{name}: {why}"))
                })
                .collect::<Vec<_>>()
                .join("; ")),
        }
    }

    /// The first deployment tried when all are well (its API shape is every entry's).
    pub fn primary(&self) -> &Arc<ModelEndpoint> {
        &self.primary
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn policy(&self) -> &BreakerPolicy {
        &self.policy
    }

    /// The attempts of one turn (for a pool of one: no draw, no allocation).
    pub fn tries(&self) -> Tries<'_> {
        let order = if self.entries.len() == 1 {
            Order::from_slice(&[0])
        } else {
            Order::from_slice(&self.order(rand::random::<u64>()))
        };
        Tries {
            order,
            pool: self,
            next: 0,
            last_error: None,
            throttled_until: None,
            tried: 0,
            forced: false,
        }
    }

    /// The usable entries in the order a turn tries them: by priority, and within one
    /// priority a weighted draw without replacement (`seed` drives the draw).
    fn order(&self, mut seed: u64) -> Vec<usize> {
        let mut usable: Vec<usize> = (0..self.entries.len())
            .filter(|&i| self.entries[i].endpoint.is_ok())
            .collect();
        usable.sort_by_key(|&i| self.entries[i].priority);
        let mut out = Vec::with_capacity(usable.len());
        for group in usable.chunk_by(|&a, &b| self.entries[a].priority == self.entries[b].priority)
        {
            let mut left: Vec<usize> = group.to_vec();
            while !left.is_empty() {
                let total: u64 = left
                    .iter()
                    .map(|&i| u64::from(self.entries[i].weight))
                    .sum();
                // xorshift: cheap, and enough to spread turns by weight.
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let mut pick = seed % total.max(1);
                let mut at = 0;
                for (k, &i) in left.iter().enumerate() {
                    let w = u64::from(self.entries[i].weight);
                    if pick < w {
                        at = k;
                        break;
                    }
                    pick -= w;
                }
                out.push(left.remove(at));
            }
        }
        out
    }
}

/// The entries a turn tries, in order (at most `MAX_DEPLOYMENTS`; a pool lists no more).
#[derive(Debug, Clone, Copy)]
struct Order {
    at: [u8; crate::domain::deployments::MAX_DEPLOYMENTS],
    len: usize,
}

impl Order {
    fn from_slice(indices: &[usize]) -> Self {
        let mut order = Self {
            at: [0; crate::domain::deployments::MAX_DEPLOYMENTS],
            len: 0,
        };
        for (slot, &i) in order.at.iter_mut().zip(indices) {
            *slot = i as u8;
            order.len += 1;
        }
        order
    }

    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, k: usize) -> usize {
        usize::from(self.at[k])
    }

    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.at[..self.len].iter().map(|&i| usize::from(i))
    }
}

/// One attempt of a turn: the entry and how to call it.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub index: usize,
    pub entry: &'a Entry,
    pub endpoint: &'a Arc<ModelEndpoint>,
    /// Whether the call itself may retry a 429 or 5xx (only when no other entry follows).
    pub retry: bool,
    /// The first-byte timeout of this attempt (`None`: the process's).
    pub first_byte: Option<Duration>,
}

/// What became of an attempt.
pub enum Outcome<T> {
    /// The turn is over: an answer, or an error no other deployment would change.
    Done(Result<T, UpstreamError>),
    /// Try the next deployment.
    Next,
}

/// A turn's way through a pool.
pub struct Tries<'a> {
    pool: &'a Pool,
    order: Order,
    next: usize,
    last_error: Option<UpstreamError>,
    throttled_until: Option<Instant>,
    tried: usize,
    forced: bool,
}

impl<'a> Tries<'a> {
    /// The next deployment to call, or `None` when there is none left.
    pub fn next_attempt(&mut self) -> Option<Attempt<'a>> {
        let pool = self.pool;
        let single = pool.entries.len() == 1;
        let now = Instant::now();
        while self.next < self.order.len() {
            let index = self.order.get(self.next);
            self.next += 1;
            let entry = &pool.entries[index];
            let gate = if single {
                Gate::Closed
            } else {
                entry.breaker.gate(now, &pool.policy)
            };
            match gate {
                Gate::Closed | Gate::Probe => return Some(self.attempt(index)),
                Gate::Throttled(until) => {
                    self.throttled_until =
                        Some(self.throttled_until.map_or(until, |t| t.min(until)));
                }
                Gate::Open(_) => {}
            }
        }
        // Nothing was callable: rather than refuse, try the open entry that closes soonest
        // (never a throttled one: its wait is known).
        if self.tried == 0 && !self.forced {
            self.forced = true;
            let soonest = self
                .order
                .iter()
                .filter(|&i| {
                    !matches!(
                        pool.entries[i].breaker.gate(now, &pool.policy),
                        Gate::Throttled(_)
                    )
                })
                .min_by_key(|&i| match pool.entries[i].breaker.gate(now, &pool.policy) {
                    Gate::Open(until) => until,
                    _ => now,
                });
            if let Some(index) = soonest {
                return Some(Attempt {
                    retry: true,
                    first_byte: None,
                    ..self.attempt(index)
                });
            }
        }
        None
    }

    fn attempt(&mut self, index: usize) -> Attempt<'a> {
        self.tried += 1;
        let entry = &self.pool.entries[index];
        let last = self.next >= self.order.len() || self.pool.entries.len() == 1;
        Attempt {
            index,
            entry,
            // Only usable entries are in `order`.
            endpoint: match &entry.endpoint {
                Ok(endpoint) => endpoint,
                Err(_) => self.pool.primary(),
            },
            retry: last,
            first_byte: if last { None } else { entry.timeout },
        }
    }

    /// Records how an attempt ended and says whether the turn is over.
    pub fn settle<T>(
        &mut self,
        attempt: &Attempt<'_>,
        result: Result<T, UpstreamError>,
    ) -> Outcome<T> {
        let pool = self.pool;
        let entry = attempt.entry;
        let name = entry.name.as_deref().unwrap_or("deployment");
        let single = pool.entries.len() == 1;
        match result {
            Ok(value) => {
                if !single && entry.breaker.succeeded() {
                    tracing::info!(
                        deployment.name = name,
                        "deployment {name} answered again: its circuit is closed"
                    );
                }
                Outcome::Done(Ok(value))
            }
            Err(error) if single || !fails_over(&error) => Outcome::Done(Err(error)),
            Err(error) => {
                let now = Instant::now();
                if let UpstreamError::RateLimited { retry_after_secs } = &error {
                    let until = now + Duration::from_secs(*retry_after_secs);
                    entry.breaker.throttled(until);
                    self.throttled_until =
                        Some(self.throttled_until.map_or(until, |t| t.min(until)));
                } else if entry.breaker.failed(now, &pool.policy) {
                    tracing::warn!(
                        deployment.name = name,
                        error.kind = error.kind(),
                        "deployment {name} failed {} times in a row: its circuit is open for {} s",
                        pool.policy.failures,
                        pool.policy.open_for.as_secs()
                    );
                }
                tracing::info!(
                    deployment.name = name,
                    error.kind = error.kind(),
                    "deployment {name} failed ({}); trying the next",
                    error.kind()
                );
                self.last_error = Some(error);
                Outcome::Next
            }
        }
    }

    /// The turn's error once no deployment is left: a 429 with the shortest wait when every
    /// one left throttled, else the last failure.
    pub fn exhausted(self) -> UpstreamError {
        let now = Instant::now();
        let throttled = self
            .throttled_until
            .map(|until| UpstreamError::RateLimited {
                retry_after_secs: until
                    .saturating_duration_since(now)
                    .as_secs_f64()
                    .ceil()
                    .max(1.0) as u64,
            });
        match (self.last_error, throttled) {
            (Some(UpstreamError::RateLimited { .. }) | None, Some(throttled)) => throttled,
            (Some(error), _) => error,
            (None, None) => UpstreamError::Unavailable(
                "none of the instance's deployments can be called".into(),
            ),
        }
    }
}

/// Whether another deployment may answer what this one could not: throttling, a server
/// error, a timeout, a failed connection — not a refusal of the request itself.
fn fails_over(error: &UpstreamError) -> bool {
    matches!(
        error,
        UpstreamError::RateLimited { .. }
            | UpstreamError::Timeout(_)
            | UpstreamError::Unavailable(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Provider;
    use crate::llm::UpstreamAuth;

    fn endpoint(deployment: &str) -> Arc<ModelEndpoint> {
        Arc::new(ModelEndpoint::new(
            Provider::AzureOpenai,
            url::Url::parse("https://a.openai.azure.com").unwrap(),
            deployment.into(),
            "2024-10-21".into(),
            UpstreamAuth::None,
        ))
    }

    fn entry(name: &str, priority: u32, weight: u32) -> Entry {
        Entry {
            name: Some(Arc::from(name)),
            endpoint: Ok(endpoint(name)),
            priority,
            weight,
            timeout: None,
            breaker: Arc::default(),
        }
    }

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            failures: 2,
            open_for: Duration::from_millis(50),
        }
    }

    fn names(pool: &Pool, order: &[usize]) -> Vec<String> {
        order
            .iter()
            .map(|&i| pool.entries[i].name.as_deref().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn priorities_come_first_and_weights_share_a_priority() {
        let pool = Pool::new(
            vec![
                entry("payg", 2, 1),
                entry("ptu-a", 1, 3),
                entry("ptu-b", 1, 1),
            ],
            policy(),
        )
        .unwrap();
        let mut first_a = 0;
        for seed in 1..=4000u64 {
            let order = names(&pool, &pool.order(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
            assert_eq!(order.len(), 3);
            assert_eq!(order[2], "payg", "priority 2 after every priority 1");
            if order[0] == "ptu-a" {
                first_a += 1;
            }
        }
        // Weight 3 of 4: about 3000 of 4000 turns start there.
        assert!((2700..=3300).contains(&first_a), "{first_a}");
        assert_eq!(pool.primary().deployment, "ptu-a");
    }

    #[test]
    fn an_unusable_entry_is_skipped_and_a_pool_of_none_says_why() {
        let mut broken = entry("broken", 1, 1);
        broken.endpoint = Err("no key".into());
        let pool = Pool::new(vec![broken.clone(), entry("ok", 2, 1)], policy()).unwrap();
        assert_eq!(names(&pool, &pool.order(7)), ["ok"]);
        assert_eq!(
            Pool::new(vec![broken], policy()).unwrap_err(),
            "broken: no key"
        );
    }

    #[test]
    fn the_breaker_opens_after_consecutive_failures_probes_and_closes() {
        let b = Breaker::default();
        let p = policy();
        let t0 = Instant::now();
        assert_eq!(b.gate(t0, &p), Gate::Closed);
        assert!(!b.failed(t0, &p));
        assert!(b.failed(t0, &p), "the second failure in a row opens it");
        assert!(matches!(b.gate(t0, &p), Gate::Open(_)));
        let later = t0 + Duration::from_millis(60);
        assert_eq!(b.gate(later, &p), Gate::Probe);
        assert!(
            matches!(b.gate(later, &p), Gate::Open(_)),
            "one probe at a time"
        );
        assert!(b.failed(later, &p), "a failed probe opens it again");
        let much_later = later + Duration::from_millis(60);
        assert_eq!(b.gate(much_later, &p), Gate::Probe);
        assert!(b.succeeded(), "the probe closed it");
        assert_eq!(b.gate(much_later, &p), Gate::Closed);
        // A success in between resets the count.
        b.failed(much_later, &p);
        b.succeeded();
        assert!(!b.failed(much_later, &p));
    }

    #[test]
    fn a_turn_moves_on_and_ends_with_the_right_error() {
        let pool = Pool::new(vec![entry("a", 1, 1), entry("b", 2, 1)], policy()).unwrap();
        let mut tries = pool.tries();
        let first = tries.next_attempt().unwrap();
        assert_eq!(first.entry.name.as_deref(), Some("a"));
        assert!(!first.retry, "another entry follows: no local retries");
        let outcome = tries.settle::<()>(
            &first,
            Err(UpstreamError::RateLimited {
                retry_after_secs: 30,
            }),
        );
        assert!(matches!(outcome, Outcome::Next));
        let second = tries.next_attempt().unwrap();
        assert_eq!(second.entry.name.as_deref(), Some("b"));
        assert!(
            second.retry,
            "the last one retries as a single deployment would"
        );
        assert!(matches!(
            tries.settle::<()>(&second, Err(UpstreamError::Unavailable("500".into()))),
            Outcome::Next
        ));
        assert!(tries.next_attempt().is_none());
        assert!(matches!(tries.exhausted(), UpstreamError::Unavailable(_)));

        // "a" is throttled for 30 s: the next turn starts at "b"; a refusal is final.
        let mut tries = pool.tries();
        let attempt = tries.next_attempt().unwrap();
        assert_eq!(attempt.entry.name.as_deref(), Some("b"));
        let refused = tries.settle::<()>(
            &attempt,
            Err(UpstreamError::Rejected {
                status: 400,
                detail: "bad".into(),
            }),
        );
        assert!(matches!(
            refused,
            Outcome::Done(Err(UpstreamError::Rejected { .. }))
        ));
    }

    #[test]
    fn every_entry_throttled_is_a_429_with_the_shortest_wait() {
        let pool = Pool::new(vec![entry("a", 1, 1), entry("b", 1, 1)], policy()).unwrap();
        let now = Instant::now();
        pool.entries[0]
            .breaker
            .throttled(now + Duration::from_secs(20));
        pool.entries[1]
            .breaker
            .throttled(now + Duration::from_secs(5));
        let mut tries = pool.tries();
        assert!(tries.next_attempt().is_none());
        match tries.exhausted() {
            UpstreamError::RateLimited { retry_after_secs } => assert_eq!(retry_after_secs, 5),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_entry_open_still_tries_the_one_closing_soonest() {
        let pool = Pool::new(vec![entry("a", 1, 1), entry("b", 2, 1)], policy()).unwrap();
        let now = Instant::now();
        for e in &pool.entries {
            e.breaker.failed(now, &pool.policy);
            e.breaker.failed(now, &pool.policy);
        }
        let mut tries = pool.tries();
        let forced = tries.next_attempt().unwrap();
        assert!(forced.retry);
        assert!(matches!(
            tries.settle::<()>(&forced, Err(UpstreamError::Timeout("first byte"))),
            Outcome::Next
        ));
        assert!(tries.next_attempt().is_none(), "forced once per turn");
    }
}
