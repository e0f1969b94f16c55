//! Fleet-wide limits per company: `tokensPerMinute`, `requestsPerMinute`, `tokensPerDay`,
//! `tokensPerMonth` (instance settings), counted across every instance of SOPHIA.
//!
//! The counters live in the Store (`UsageStore::add_to_limit_windows`: one record per company,
//! in its partition). Each process admits locally against the fleet's totals as of its last
//! sync plus what it has admitted since, and *reserves* a turn's estimated prompt tokens until
//! the turn settles with its real usage. It syncs — writes what it admitted, reads back the
//! fleet's totals — in the background every `SYNC_EVERY`, and synchronously, before admitting,
//! when what it has admitted unsynced would exceed `SHARE` of what the fleet has left of a
//! limit (and the first time it sees a company). A company with nothing to write has the
//! fleet's totals re-read at most every second while it is in use. So a warm window costs one
//! mutex and a map lookup, and going over a limit is bounded:
//!
//! **Tolerance**: `N` instances together admit at most `N × SHARE` (5 %) of a limit beyond
//! it — two instances stay within 10 % — plus, for tokens, the difference between estimated
//! and real usage of the turns in flight. Request counts are exact.
//!
//! A store that cannot be reached fails open (the last known totals, logged): limits protect
//! budgets, they must not take a company's agent down with the database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::domain::TenantId;
use crate::domain::limits::{LimitWindows, WindowAdd, WindowKeys};
use crate::domain::settings::Limits;
use crate::store::Store;

/// What a process may admit unsynced, as a share of what the fleet has left of a limit.
pub const SHARE: f64 = 0.05;
/// How often the background sync runs.
pub const SYNC_EVERY: Duration = Duration::from_millis(250);
/// A company with nothing to write has the fleet's totals re-read at most this often …
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// … and only while it was seen this recently.
const BUSY: Duration = Duration::from_secs(10);
/// A company not seen for this long is forgotten (after its last admissions are written).
const IDLE: Duration = Duration::from_secs(120);

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    RequestsPerMinute,
    TokensPerMinute,
    TokensPerDay,
    TokensPerMonth,
}

impl Which {
    pub fn name(self) -> &'static str {
        match self {
            Self::RequestsPerMinute => "requestsPerMinute",
            Self::TokensPerMinute => "tokensPerMinute",
            Self::TokensPerDay => "tokensPerDay",
            Self::TokensPerMonth => "tokensPerMonth",
        }
    }

    /// A per-minute rate (429 `rate_limited`) rather than a budget (429 `quota_exceeded`).
    pub fn is_rate(self) -> bool {
        matches!(self, Self::RequestsPerMinute | Self::TokensPerMinute)
    }
}

/// Where a company stands against its limits, for the `x-ratelimit-*` headers and
/// `GET /admin/usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Standing {
    pub limits: Limits,
    pub used: LimitWindows,
    /// Seconds until the minute, the day and the month end.
    pub resets: (u64, u64, u64),
}

impl Standing {
    /// `(limit, remaining, reset seconds)` of the requests-per-minute limit.
    pub fn requests(&self) -> Option<(u64, u64, u64)> {
        self.each()
            .into_iter()
            .find(|e| e.0 == "requestsPerMinute")
            .map(|(_, limit, used, reset)| (limit, limit.saturating_sub(used), reset))
    }

    /// `(limit, remaining, reset seconds)` of the token limit with the least left.
    pub fn tokens(&self) -> Option<(u64, u64, u64)> {
        self.each()
            .into_iter()
            .filter(|e| e.0 != "requestsPerMinute")
            .map(|(_, limit, used, reset)| (limit, limit.saturating_sub(used), reset))
            .min_by_key(|(_, remaining, _)| *remaining)
    }

    /// The limit each window reports, with what is used and left of it, by name.
    pub fn each(&self) -> Vec<(&'static str, u64, u64, u64)> {
        let u = &self.used;
        [
            (
                "requestsPerMinute",
                self.limits.requests_per_minute,
                u.minute_requests,
                self.resets.0,
            ),
            (
                "tokensPerMinute",
                self.limits.tokens_per_minute,
                u.minute_tokens,
                self.resets.0,
            ),
            (
                "tokensPerDay",
                self.limits.tokens_per_day,
                u.day_tokens,
                self.resets.1,
            ),
            (
                "tokensPerMonth",
                self.limits.tokens_per_month,
                u.month_tokens,
                self.resets.2,
            ),
        ]
        .into_iter()
        .filter_map(|(name, limit, used, reset)| limit.map(|l| (name, l, used, reset)))
        .collect()
    }
}

/// A duration as OpenAI writes `x-ratelimit-reset-*`: `45s`, `6m0s`, `23h59m0s`.
fn reset_text(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{}h{}m{}s", s / 3600, s % 3600 / 60, s % 60),
    }
}

impl Standing {
    /// `response` with the headers below.
    pub fn on(&self, mut response: axum::response::Response) -> axum::response::Response {
        self.write_headers(response.headers_mut());
        response
    }

    /// OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` for the limits the
    /// company has (none for a company without limits).
    pub fn write_headers(&self, headers: &mut http::HeaderMap) {
        use http::{HeaderName, HeaderValue};
        const NAMES: [[HeaderName; 3]; 2] = [
            [
                HeaderName::from_static("x-ratelimit-limit-requests"),
                HeaderName::from_static("x-ratelimit-remaining-requests"),
                HeaderName::from_static("x-ratelimit-reset-requests"),
            ],
            [
                HeaderName::from_static("x-ratelimit-limit-tokens"),
                HeaderName::from_static("x-ratelimit-remaining-tokens"),
                HeaderName::from_static("x-ratelimit-reset-tokens"),
            ],
        ];
        for ([limit_name, remaining_name, reset_name], value) in
            NAMES.into_iter().zip([self.requests(), self.tokens()])
        {
            let Some((limit, remaining, reset)) = value else {
                continue;
            };
            headers.insert(limit_name, HeaderValue::from(limit));
            headers.insert(remaining_name, HeaderValue::from(remaining));
            if let Ok(reset) = HeaderValue::from_str(&reset_text(reset)) {
                headers.insert(reset_name, reset);
            }
        }
    }
}

/// A refused request: which limit, when to retry, and the standing for the headers.
#[derive(Debug, Clone, Copy)]
pub struct Refused {
    pub which: Which,
    pub retry_after_secs: u64,
    pub standing: Standing,
    /// The first refusal of this budget in its window in this process (announced once per
    /// window across the fleet: [`Refused::announce`]).
    pub first_in_window: bool,
}

impl Refused {
    /// Whether this refusal is the fleet's first of its budget in the window: claimed in the
    /// store, so one instance audits it. `false` for a rate limit (not audited) or when this
    /// process already announced it; `true` when the store cannot say (rather audit twice
    /// than never).
    pub async fn announce(&self, store: &dyn Store, tenant: &TenantId) -> bool {
        if !self.first_in_window {
            return false;
        }
        let keys = self.standing.used.keys;
        let window = match self.which {
            Which::TokensPerDay => keys.day,
            Which::TokensPerMonth => keys.month,
            _ => return false,
        };
        match store.claim_window(tenant, self.which.name(), window).await {
            Ok(first) => first,
            Err(e) => {
                tracing::warn!(tenant.id = %tenant, error = ?e, "could not claim the announcement of an exhausted budget: {e:#}");
                true
            }
        }
    }

    /// What the caller is told.
    pub fn detail(&self) -> String {
        let limit = self
            .standing
            .limits
            .named(self.which.name())
            .unwrap_or_default();
        format!(
            "the company's {} limit ({limit}) is reached; retry after {} s",
            self.which.name(),
            self.retry_after_secs
        )
    }
}

/// One company's counters in this process.
#[derive(Default)]
struct Local {
    /// The fleet's totals as of the last sync (this process's written admissions included).
    fleet: LimitWindows,
    /// Admitted here and not yet written.
    pending: WindowAdd,
    /// Estimated tokens of admitted turns still in flight.
    reserved: u64,
    synced_at: Option<Instant>,
    seen_at: Option<Instant>,
    /// The day / month window of the last audited exhaustion of each budget.
    audited_day: Option<i64>,
    audited_month: Option<i64>,
}

impl Local {
    /// What the fleet has used as far as this process knows, in the windows of `keys`.
    fn view(&self, keys: WindowKeys) -> LimitWindows {
        self.fleet.rolled(keys).plus(
            keys,
            WindowAdd {
                tokens: self.pending.tokens + self.reserved,
                requests: self.pending.requests,
                key_failures: self.pending.key_failures,
                ..WindowAdd::default()
            },
        )
    }

    /// Whether admitting `estimate` more would take this process's unsynced share past
    /// `SHARE` of what the fleet has left of any limit.
    fn needs_sync(&self, limits: &Limits, keys: WindowKeys, estimate: u64) -> bool {
        let Some(_) = self.synced_at else {
            return true;
        };
        let fleet = self.fleet.rolled(keys);
        let unsynced_tokens = self.pending.tokens + self.reserved + estimate;
        let over = |limit: Option<u64>, used: u64, unsynced: u64| {
            limit.is_some_and(|l| unsynced as f64 > SHARE * l.saturating_sub(used) as f64)
        };
        over(
            limits.requests_per_minute,
            fleet.minute_requests,
            self.pending.requests + 1,
        ) || over(
            limits.tokens_per_minute,
            fleet.minute_tokens,
            unsynced_tokens,
        ) || over(limits.tokens_per_day, fleet.day_tokens, unsynced_tokens)
            || over(limits.tokens_per_month, fleet.month_tokens, unsynced_tokens)
    }
}

struct Shared {
    tenants: Mutex<HashMap<TenantId, Local>>,
}

/// The fleet-wide limiter (see the module comment). Clones share their counters.
#[derive(Clone)]
pub struct Limiter {
    shared: Arc<Shared>,
}

impl Default for Limiter {
    fn default() -> Self {
        Self {
            shared: Arc::new(Shared {
                tenants: Mutex::new(HashMap::new()),
            }),
        }
    }
}

/// An admitted request's hold on its estimated tokens; settled once with the real usage (an
/// unsettled reservation — a turn that failed before any answer — counts no tokens).
pub struct Reservation {
    shared: Option<Arc<Shared>>,
    settled: std::sync::atomic::AtomicBool,
    tenant: TenantId,
    estimate: u64,
    /// Where the company stood once the request was admitted.
    pub standing: Standing,
}

impl Reservation {
    /// A request of a company without limits.
    pub fn unlimited(tenant: &TenantId) -> Self {
        Self {
            shared: None,
            settled: std::sync::atomic::AtomicBool::new(true),
            tenant: tenant.clone(),
            estimate: 0,
            standing: Standing::default(),
        }
    }

    /// The turn used `tokens` in all (the first settlement counts; later ones are ignored).
    pub fn settle(&self, tokens: u64) {
        if self.settled.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let Some(shared) = &self.shared else {
            return;
        };
        if let Ok(mut tenants) = shared.tenants.lock() {
            let local = tenants.entry(self.tenant.clone()).or_default();
            local.reserved = local.reserved.saturating_sub(self.estimate);
            local.pending.tokens += tokens;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.settle(0);
    }
}

impl Limiter {
    /// Admits one request of `tenant` expected to use `estimate` tokens, or says which limit
    /// refuses it.
    pub async fn admit(
        &self,
        store: &dyn Store,
        tenant: &TenantId,
        limits: Limits,
        estimate: u64,
    ) -> Result<Reservation, Refused> {
        self.decide(store, tenant, limits, estimate, true).await
    }

    /// Whether a request of `tenant` could be admitted at all now (its windows have room for
    /// one more request and one more token), without reserving anything: the cheap check
    /// before a turn does its retrieval.
    pub async fn has_room(
        &self,
        store: &dyn Store,
        tenant: &TenantId,
        limits: Limits,
    ) -> Result<(), Refused> {
        self.decide(store, tenant, limits, 0, false).await.map(drop)
    }

    async fn decide(
        &self,
        store: &dyn Store,
        tenant: &TenantId,
        limits: Limits,
        estimate: u64,
        reserve: bool,
    ) -> Result<Reservation, Refused> {
        if limits.is_empty() {
            return Ok(Reservation::unlimited(tenant));
        }
        let now = Utc::now();
        let keys = WindowKeys::at(now);
        let sync = match self.shared.tenants.lock() {
            Ok(tenants) => tenants
                .get(tenant)
                .is_none_or(|l| l.needs_sync(&limits, keys, estimate)),
            Err(_) => false,
        };
        if sync {
            self.sync(store, tenant).await;
        }
        let Ok(mut tenants) = self.shared.tenants.lock() else {
            return Ok(Reservation::unlimited(tenant));
        };
        let local = tenants.entry(tenant.clone()).or_default();
        local.seen_at = Some(Instant::now());
        let view = local.view(keys);
        let resets = WindowKeys::resets(now);
        let over =
            |limit: Option<u64>, used: u64, more: u64| limit.is_some_and(|l| used + more > l);
        let refused = if over(limits.requests_per_minute, view.minute_requests, 1) {
            Some((Which::RequestsPerMinute, resets.0))
        } else if over(limits.tokens_per_month, view.month_tokens, estimate.max(1)) {
            Some((Which::TokensPerMonth, resets.2))
        } else if over(limits.tokens_per_day, view.day_tokens, estimate.max(1)) {
            Some((Which::TokensPerDay, resets.1))
        } else if over(
            limits.tokens_per_minute,
            view.minute_tokens,
            estimate.max(1),
        ) {
            Some((Which::TokensPerMinute, resets.0))
        } else {
            None
        };
        if let Some((which, retry_after_secs)) = refused {
            let first_in_window = match which {
                Which::TokensPerDay => local.audited_day.replace(keys.day) != Some(keys.day),
                Which::TokensPerMonth => {
                    local.audited_month.replace(keys.month) != Some(keys.month)
                }
                _ => false,
            };
            return Err(Refused {
                which,
                retry_after_secs: retry_after_secs.max(1),
                standing: Standing {
                    limits,
                    used: view,
                    resets,
                },
                first_in_window,
            });
        }
        if !reserve {
            return Ok(Reservation::unlimited(tenant));
        }
        local.pending.requests += 1;
        local.reserved += estimate;
        Ok(Reservation {
            shared: Some(Arc::clone(&self.shared)),
            settled: std::sync::atomic::AtomicBool::new(false),
            tenant: tenant.clone(),
            estimate,
            standing: Standing {
                limits,
                used: local.view(keys),
                resets,
            },
        })
    }

    /// Brings `tenant`'s day and month windows up to what its usage records say it used
    /// (a company getting a budget mid-month has its earlier use of the month counted), then
    /// reads the totals back. Idempotent. Turns another instance counted in its last
    /// unsynced quarter-second may be counted twice, at that moment only.
    pub async fn seed_from_usage(
        &self,
        store: &dyn Store,
        usage: &crate::usage::UsageRecorder,
        tenant: &TenantId,
    ) -> crate::store::StoreResult<()> {
        use chrono::Datelike;
        // What this process counted goes in first, so the floor does not count it twice
        // (another instance's last quarter-second may be: an over-count, never an under-).
        self.sync(store, tenant).await;
        usage.flush(store).await;
        let now = Utc::now();
        let today = now.date_naive();
        let first = today.with_day(1).unwrap_or(today);
        let records = store
            .list_usage(
                &crate::store::TenantScope::Tenant(tenant.clone()),
                first,
                today,
            )
            .await?;
        let floor_month = records.iter().map(|r| r.total_tokens).sum();
        let floor_day = records
            .iter()
            .filter(|r| r.day == today)
            .map(|r| r.total_tokens)
            .sum();
        store
            .add_to_limit_windows(
                tenant,
                WindowKeys::at(now),
                WindowAdd {
                    floor_day,
                    floor_month,
                    ..WindowAdd::default()
                },
            )
            .await?;
        self.sync(store, tenant).await;
        Ok(())
    }

    /// Counts a failed access-key check of `tenant` (a company that exists: made-up ids get
    /// no record), written to the fleet's counters with the next sync.
    pub fn key_failed(&self, tenant: &TenantId) {
        if let Ok(mut tenants) = self.shared.tenants.lock() {
            let local = tenants.entry(tenant.clone()).or_default();
            local.pending.key_failures += 1;
            local.seen_at = Some(Instant::now());
        }
    }

    /// `tenant`'s failed access-key checks this minute across the fleet, as this process knows
    /// them: the last sync plus its own since. No store call, and nothing recorded for a
    /// company that has not failed here: an instance a guesser reaches has failures of its
    /// own, so it syncs (writes them, reads the fleet's) within a quarter-second.
    pub fn key_failures(&self, tenant: &TenantId) -> u64 {
        let keys = WindowKeys::at(Utc::now());
        match self.shared.tenants.lock() {
            Ok(tenants) => tenants
                .get(tenant)
                .map_or(0, |local| local.view(keys).minute_key_failures),
            Err(_) => 0,
        }
    }

    /// Where `tenant` stands, after reading the fleet's totals.
    pub async fn standing(&self, store: &dyn Store, tenant: &TenantId, limits: Limits) -> Standing {
        self.sync(store, tenant).await;
        self.known(tenant, limits)
    }

    /// Where `tenant` stands as this process knows it (read from the store only the first
    /// time): for the headers of answers that admit nothing (`/v1/models`, a stored response).
    pub async fn current(&self, store: &dyn Store, tenant: &TenantId, limits: Limits) -> Standing {
        if limits.is_empty() {
            return Standing::default();
        }
        let unknown = match self.shared.tenants.lock() {
            Ok(tenants) => tenants.get(tenant).is_none_or(|l| l.synced_at.is_none()),
            Err(_) => false,
        };
        if unknown {
            self.sync(store, tenant).await;
        }
        self.known(tenant, limits)
    }

    fn known(&self, tenant: &TenantId, limits: Limits) -> Standing {
        let now = Utc::now();
        let keys = WindowKeys::at(now);
        let used = match self.shared.tenants.lock() {
            Ok(tenants) => tenants.get(tenant).map(|l| l.view(keys)),
            Err(_) => None,
        };
        Standing {
            limits,
            used: used.unwrap_or_else(|| LimitWindows::default().rolled(keys)),
            resets: WindowKeys::resets(now),
        }
    }

    /// Writes what this process admitted for `tenant` and reads back the fleet's totals.
    pub async fn sync(&self, store: &dyn Store, tenant: &TenantId) {
        let pending = match self.shared.tenants.lock() {
            Ok(mut tenants) => {
                std::mem::take(&mut tenants.entry(tenant.clone()).or_default().pending)
            }
            Err(_) => return,
        };
        let keys = WindowKeys::at(Utc::now());
        let result = store.add_to_limit_windows(tenant, keys, pending).await;
        let Ok(mut tenants) = self.shared.tenants.lock() else {
            return;
        };
        let local = tenants.entry(tenant.clone()).or_default();
        local.synced_at = Some(Instant::now());
        match result {
            Ok(totals) => {
                // A sync that finished after a later one must not take the totals back.
                let known = local.fleet.rolled(totals.keys);
                local.fleet = LimitWindows {
                    keys: totals.keys,
                    minute_tokens: totals.minute_tokens.max(known.minute_tokens),
                    minute_requests: totals.minute_requests.max(known.minute_requests),
                    day_tokens: totals.day_tokens.max(known.day_tokens),
                    month_tokens: totals.month_tokens.max(known.month_tokens),
                    minute_key_failures: totals.minute_key_failures.max(known.minute_key_failures),
                };
            }
            Err(e) => {
                local.pending.tokens += pending.tokens;
                local.pending.requests += pending.requests;
                local.pending.key_failures += pending.key_failures;
                tracing::warn!(tenant.id = %tenant, error = ?e, "limit windows not synced; admitting on the last known totals: {e:#}");
            }
        }
    }

    /// The background pass: syncs every company seen recently, forgets idle ones.
    pub async fn sync_all(&self, store: &dyn Store) {
        let now = Instant::now();
        let (active, idle): (Vec<TenantId>, Vec<TenantId>) = match self.shared.tenants.lock() {
            Ok(tenants) => {
                let mut active = Vec::new();
                let mut idle = Vec::new();
                for (tenant, local) in tenants.iter() {
                    let seen = local.seen_at.map(|at| now.duration_since(at));
                    let stale = local
                        .synced_at
                        .is_none_or(|at| now.duration_since(at) >= REFRESH_EVERY);
                    // Writes whenever there is something to write; reads the other
                    // instances' use for a company in use right now, at most every second.
                    if !local.pending.is_empty() || (seen.is_some_and(|d| d < BUSY) && stale) {
                        active.push(tenant.clone());
                    } else if seen.is_none_or(|d| d >= IDLE) && local.reserved == 0 {
                        idle.push(tenant.clone());
                    }
                }
                (active, idle)
            }
            Err(_) => return,
        };
        for tenant in &active {
            self.sync(store, tenant).await;
        }
        if let Ok(mut tenants) = self.shared.tenants.lock() {
            for tenant in idle {
                if tenants
                    .get(&tenant)
                    .is_some_and(|l| l.pending.is_empty() && l.reserved == 0)
                {
                    tenants.remove(&tenant);
                }
            }
        }
    }

    /// Writes every company's pending admissions (on shutdown).
    pub async fn flush(&self, store: &dyn Store) {
        let tenants: Vec<TenantId> = match self.shared.tenants.lock() {
            Ok(t) => t
                .iter()
                .filter(|(_, l)| !l.pending.is_empty())
                .map(|(k, _)| k.clone())
                .collect(),
            Err(_) => return,
        };
        for tenant in &tenants {
            self.sync(store, tenant).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    fn limits(rpm: Option<u64>, tpm: Option<u64>) -> Limits {
        Limits {
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
            ..Limits::default()
        }
    }

    #[test]
    fn headers_speak_openai() {
        let standing = Standing {
            limits: Limits {
                requests_per_minute: Some(10),
                tokens_per_minute: Some(1000),
                tokens_per_day: Some(500),
                tokens_per_month: None,
            },
            used: LimitWindows {
                minute_requests: 3,
                minute_tokens: 100,
                day_tokens: 450,
                ..LimitWindows::default()
            },
            resets: (42, 3_725, 86_400),
        };
        let mut h = http::HeaderMap::new();
        standing.write_headers(&mut h);
        let get = |n: &str| h[n].to_str().unwrap().to_owned();
        assert_eq!(get("x-ratelimit-limit-requests"), "10");
        assert_eq!(get("x-ratelimit-remaining-requests"), "7");
        assert_eq!(get("x-ratelimit-reset-requests"), "42s");
        // The token limit with the least left: the day's.
        assert_eq!(get("x-ratelimit-limit-tokens"), "500");
        assert_eq!(get("x-ratelimit-remaining-tokens"), "50");
        assert_eq!(get("x-ratelimit-reset-tokens"), "1h2m5s");
        let mut none = http::HeaderMap::new();
        Standing::default().write_headers(&mut none);
        assert!(none.is_empty());
    }

    #[tokio::test]
    async fn two_limiters_on_one_store_stay_within_their_shares() {
        let store = SqliteStore::open_in_memory().unwrap();
        let tenant = TenantId::parse("acme").unwrap();
        let (a, b) = (Limiter::default(), Limiter::default());
        let l = limits(Some(1000), None);
        let mut admitted = 0;
        // Interleaved without any background sync: only the share rule keeps them honest.
        for i in 0..3000 {
            let limiter = if i % 2 == 0 { &a } else { &b };
            if let Ok(r) = limiter.admit(&store, &tenant, l, 0).await {
                r.settle(0);
                admitted += 1;
            }
        }
        assert!(admitted >= 1000, "{admitted}");
        assert!(admitted <= 1100, "{admitted}");
    }

    #[tokio::test]
    async fn tokens_are_reserved_then_settled_and_an_unlimited_company_is_free() {
        let store = SqliteStore::open_in_memory().unwrap();
        let acme = TenantId::parse("acme").unwrap();
        let limiter = Limiter::default();
        let l = limits(None, Some(100));
        let first = limiter.admit(&store, &acme, l, 60).await.unwrap();
        // 60 reserved: another 60 does not fit.
        let refused = limiter.admit(&store, &acme, l, 60).await.err().unwrap();
        assert_eq!(refused.which, Which::TokensPerMinute);
        assert!(refused.retry_after_secs >= 1 && refused.retry_after_secs <= 60);
        // Room for one more request and token, but not for 60 more tokens.
        assert!(limiter.has_room(&store, &acme, l).await.is_ok());
        // The turn used only 10: now it fits.
        first.settle(10);
        let second = limiter.admit(&store, &acme, l, 60).await.unwrap();
        assert_eq!(second.standing.tokens().map(|t| t.1), Some(30));
        drop(second); // failed before any answer: no tokens
        limiter.sync(&store, &acme).await;
        let standing = limiter.standing(&store, &acme, l).await;
        assert_eq!(standing.used.minute_tokens, 10);
        assert_eq!(standing.used.minute_requests, 2);
        let beta = TenantId::parse("beta").unwrap();
        for _ in 0..10 {
            limiter
                .admit(&store, &beta, Limits::default(), 1_000_000)
                .await
                .unwrap();
        }
    }
}
