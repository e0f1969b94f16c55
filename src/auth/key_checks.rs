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
//! In memory, per process, like the per-address limit (see `rate_limit`).

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
}

/// What a caller holds while checking a key: the slow lane's permit, if the company is under
/// attack.
pub struct Admission {
    _permit: Option<OwnedSemaphorePermit>,
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
            _permit: permit,
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
