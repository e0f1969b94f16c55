//! Brute-force protection of access-key checks that strangers cannot turn against a company.
//!
//! * **Per source** (company, client address): failed checks are counted; past
//!   `SOPHIA_TOKEN_FAILURES_PER_SOURCE` a minute that source is refused (429) for that company.
//!   Another address — the company's real client — is not affected.
//! * **Per company**: failed checks from all addresses are counted; past
//!   `SOPHIA_TOKEN_RATE_LIMIT_PER_COMPANY` a minute the company's checks run one at a time
//!   (a distributed guesser gets at most one bcrypt verification at a time), but a check is
//!   never refused on that count: a client presenting the right key still gets its token.
//! * **Unknown companies**: failures naming a company that has no instance are not audited in
//!   a partition of that made-up id; they are counted and logged, sampled, at platform level.
//!
//! The per-company count is **fleet-wide** for companies that exist: each failure is added to
//! the company's limit record in the Store (`minuteKeyFailures`, synced with the limit windows,
//! `crate::limits`), and a company's checks go single file once the fleet's count this minute
//! passes the threshold — so scaling out does not multiply what a guesser gets. Per source and
//! per address the counts stay in memory, per process: a record per client address would let
//! anyone write into the store at will (APIM's `rate-limit-by-key` gives the global bound
//! there, `infra/modules/apim/api-policy.xml`).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::rate_limit::RateLimiter;

/// How often at most an unknown-company failure is logged (the others are counted into it).
const UNKNOWN_LOG_EVERY: Duration = Duration::from_secs(10);

pub struct KeyChecks {
    by_source: RateLimiter,
    by_company: RateLimiter,
    /// One permit per company under attack: its checks go single file.
    slow_lanes: moka::sync::Cache<String, Arc<Semaphore>>,
    unknown: AtomicU64,
    unknown_log: Mutex<(Instant, u64)>,
    /// The fleet-wide counters of known companies' failures, and the threshold on them.
    fleet: Option<crate::limits::Limiter>,
    failures_per_company: u32,
}

/// What a caller holds while checking a key: the slow lane's permit, if the company is under
/// attack.
pub struct Admission {
    permit: Option<OwnedSemaphorePermit>,
    source: String,
    company: String,
}

impl KeyChecks {
    pub fn new(failures_per_source: u32, failures_per_company: u32) -> Self {
        Self {
            by_source: RateLimiter::new(failures_per_source),
            by_company: RateLimiter::new(failures_per_company),
            slow_lanes: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_idle(Duration::from_secs(300))
                .build(),
            unknown: AtomicU64::new(0),
            unknown_log: Mutex::new((Instant::now() - UNKNOWN_LOG_EVERY, 0)),
            fleet: None,
            failures_per_company,
        }
    }

    /// Counts known companies' failures on the fleet's counters too (see the module comment).
    pub fn across(mut self, limiter: crate::limits::Limiter) -> Self {
        self.fleet = Some(limiter);
        self
    }

    /// Once the company is known to exist: its checks go single file when the fleet as a
    /// whole has failed too often for it this minute (waits its turn; never refuses).
    pub async fn slow_down_if_fleet_over(
        &self,
        admission: &mut Admission,
        tenant: &crate::domain::TenantId,
    ) {
        if admission.permit.is_some() || self.failures_per_company == 0 {
            return;
        }
        let Some(fleet) = &self.fleet else {
            return;
        };
        if fleet.key_failures(tenant) >= u64::from(self.failures_per_company) {
            let lane = self
                .slow_lanes
                .get_with(admission.company.clone(), || Arc::new(Semaphore::new(1)));
            admission.permit = lane.acquire_owned().await.ok();
        }
    }

    /// Counts a failed check of a company that exists on the fleet's counters.
    pub fn failed_known(&self, tenant: &crate::domain::TenantId) {
        if let Some(fleet) = &self.fleet {
            fleet.key_failed(tenant);
        }
    }

    /// Admits a key check for `company` from `client`: refused (the seconds to wait) only
    /// when this source has failed too often; slowed down (waits its turn) when the company
    /// as a whole has.
    pub async fn admit(&self, company: &str, client: &str) -> Result<Admission, u64> {
        let company: String = company.chars().take(64).collect();
        let source = format!("{company}\u{1f}{client}");
        self.by_source.peek(&source)?;
        let permit = if self.by_company.peek(&company).is_err() {
            let lane = self
                .slow_lanes
                .get_with(company.clone(), || Arc::new(Semaphore::new(1)));
            lane.acquire_owned().await.ok()
        } else {
            None
        };
        Ok(Admission {
            permit,
            source,
            company,
        })
    }

    /// Counts a failed check against its source and its company.
    pub fn failed(&self, admission: &Admission) {
        self.by_source.spend(&admission.source);
        self.by_company.spend(&admission.company);
    }

    /// Records a failure naming a company that does not exist: counted, and logged at most
    /// every 10 s with how many there were meanwhile.
    pub fn unknown_company(&self, client: &str, reason: &str) {
        let total = self.unknown.fetch_add(1, Ordering::Relaxed) + 1;
        let Ok(mut log) = self.unknown_log.lock() else {
            return;
        };
        log.1 += 1;
        if log.0.elapsed() >= UNKNOWN_LOG_EVERY {
            tracing::warn!(
                auth.reason = reason,
                client.address = %client,
                auth.unknown_company.count = log.1,
                auth.unknown_company.total = total,
                "{} token request(s) for companies that do not exist since the last report ({total} since start-up; the last from {client})",
                log.1,
            );
            *log = (Instant::now(), 0);
        }
    }

    /// Failures naming unknown companies since start-up.
    pub fn unknown_total(&self) -> u64 {
        self.unknown.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TenantId;
    use crate::limits::Limiter;
    use crate::store::sqlite::SqliteStore;

    #[tokio::test]
    async fn a_company_failing_on_one_instance_goes_single_file_on_another() {
        let store = SqliteStore::open_in_memory().unwrap();
        let acme = TenantId::parse("acme").unwrap();
        let (la, lb) = (Limiter::default(), Limiter::default());
        let a = KeyChecks::new(100, 5).across(la.clone());
        let b = KeyChecks::new(100, 5).across(lb.clone());
        // Six failures from six addresses on instance a.
        for i in 0..6 {
            let admission = a.admit("acme", &format!("10.0.0.{i}")).await.unwrap();
            a.failed(&admission);
            a.failed_known(&acme);
        }
        // Instance b has not synced yet: its checks are not slowed.
        let mut first = b.admit("acme", "10.0.1.1").await.unwrap();
        b.slow_down_if_fleet_over(&mut first, &acme).await;
        assert!(first.permit.is_none());
        drop(first);
        la.sync(&store, &acme).await;
        lb.sync(&store, &acme).await;
        assert_eq!(lb.key_failures(&acme), 6, "b reads the fleet's count");
        let mut first = b.admit("acme", "10.0.1.1").await.unwrap();
        b.slow_down_if_fleet_over(&mut first, &acme).await;
        assert!(
            first.permit.is_some(),
            "the fleet's count slows acme on b too"
        );
        let mut second = b.admit("acme", "10.0.1.2").await.unwrap();
        let waited = tokio::time::timeout(
            Duration::from_millis(100),
            b.slow_down_if_fleet_over(&mut second, &acme),
        )
        .await;
        assert!(waited.is_err(), "one check at a time");
        drop(first);
        b.slow_down_if_fleet_over(&mut second, &acme).await;
        assert!(second.permit.is_some());
        // Another company is not affected.
        let beta = TenantId::parse("beta").unwrap();
        let mut other = b.admit("beta", "10.0.1.1").await.unwrap();
        b.slow_down_if_fleet_over(&mut other, &beta).await;
        assert!(other.permit.is_none());
    }
}
