//! Per-tenant caches. `SecurityCache` holds what every service-token check needs — the
//! instance's status and key version — for a short TTL, so a disable or a key rotation bites
//! within that bound on every instance of the service, and at once on the one that served the
//! admin call (it invalidates its own entry).

pub mod runtime;

use std::time::Duration;

use moka::future::Cache;

use crate::domain::{InstanceId, InstanceStatus, TenantId};
use crate::store::{Store, StoreError, TenantScope};

/// The security-relevant state of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecurityState {
    pub status: InstanceStatus,
    pub key_version: u32,
    /// The previous key's version and when its grace period ends (Unix seconds), while a
    /// rotation with a grace period keeps it valid.
    pub previous: Option<(u32, i64)>,
}

impl SecurityState {
    /// Whether a token carrying `key_version` is still honoured at `now` (Unix seconds): the
    /// current version, or the previous one while its grace period runs.
    pub fn honours(&self, key_version: u32, now: i64) -> bool {
        key_version == self.key_version
            || self
                .previous
                .is_some_and(|(version, until)| version == key_version && now < until)
    }
}

/// Short-TTL cache of `SecurityState`, keyed by tenant and instance; loads are single-flight.
pub struct SecurityCache {
    cache: Option<Cache<(TenantId, InstanceId), Option<SecurityState>>>,
}

impl SecurityCache {
    /// `ttl = 0` disables caching (every check reads the store).
    pub fn new(ttl: Duration) -> Self {
        let cache = (!ttl.is_zero()).then(|| {
            Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build()
        });
        Self { cache }
    }

    /// The instance's state, or `None` when it does not exist in that tenant.
    pub async fn get(
        &self,
        store: &dyn Store,
        tenant: &TenantId,
        id: &InstanceId,
    ) -> Result<Option<SecurityState>, StoreError> {
        let load = async {
            match store
                .get_instance(&TenantScope::Tenant(tenant.clone()), id)
                .await
            {
                Ok(i) => Ok(Some(SecurityState {
                    status: i.status,
                    key_version: i.key_version,
                    previous: i
                        .previous_key
                        .as_ref()
                        .map(|p| (p.version, p.expires_at.timestamp())),
                })),
                Err(StoreError::NotFound) => Ok(None),
                Err(e) => Err(e),
            }
        };
        match &self.cache {
            None => load.await,
            Some(cache) => cache
                .try_get_with((tenant.clone(), *id), load)
                .await
                .map_err(|e| match e.as_ref() {
                    StoreError::NotFound => StoreError::NotFound,
                    StoreError::Unavailable(inner) => {
                        StoreError::Unavailable(anyhow::anyhow!("{inner:#}"))
                    }
                    other => StoreError::Internal(anyhow::anyhow!("{other:#}")),
                }),
        }
    }

    /// Forgets an instance (called after every admin write to it).
    pub async fn invalidate(&self, tenant: &TenantId, id: &InstanceId) {
        if let Some(cache) = &self.cache {
            cache.invalidate(&(tenant.clone(), *id)).await;
        }
    }
}
