//! Usage accounting off the hot path: tokens are added to in-memory counters per tenant and
//! day, and flushed to the store in batches (every `SOPHIA_USAGE_FLUSH_MS`, on shutdown, and
//! before usage is read), so a chat turn never waits for a usage write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::NaiveDate;

use crate::domain::usage::Tally;
use crate::domain::{TenantId, Usage};
use crate::store::Store;

#[derive(Default, Clone)]
struct Pending {
    total: Tally,
    /// Each failover deployment's share (few per company: a list, not a map).
    deployments: Vec<(Arc<str>, Tally)>,
}

impl Pending {
    fn merge(&mut self, other: Pending) {
        self.total.merge(other.total);
        for (name, tally) in other.deployments {
            self.deployment(name).merge(tally);
        }
    }

    fn deployment(&mut self, name: Arc<str>) -> &mut Tally {
        let at = match self.deployments.iter().position(|(n, _)| *n == name) {
            Some(at) => at,
            None => {
                self.deployments.push((name, Tally::default()));
                self.deployments.len() - 1
            }
        };
        &mut self.deployments[at].1
    }
}

/// Pending usage, by (tenant, day).
#[derive(Default)]
pub struct UsageRecorder {
    pending: Mutex<HashMap<(TenantId, NaiveDate), Pending>>,
    flushing: tokio::sync::Mutex<()>,
}

impl UsageRecorder {
    /// Adds one request's tokens for today (UTC), and to `deployment`'s share when a failover
    /// deployment answered it.
    pub fn record(&self, tenant: &TenantId, usage: Usage, deployment: Option<&Arc<str>>) {
        let day = chrono::Utc::now().date_naive();
        if let Ok(mut pending) = self.pending.lock() {
            let entry = pending.entry((tenant.clone(), day)).or_default();
            entry.total.add(usage);
            if let Some(name) = deployment {
                entry.deployment(Arc::clone(name)).add(usage);
            }
        }
    }

    /// Writes everything pending; what fails to write is kept for the next flush.
    pub async fn flush(&self, store: &dyn Store) {
        let _one_at_a_time = self.flushing.lock().await;
        let batch: Vec<((TenantId, NaiveDate), Pending)> = match self.pending.lock() {
            Ok(mut pending) => pending.drain().collect(),
            Err(_) => return,
        };
        for ((tenant, day), p) in batch {
            let shares: Vec<(String, Tally)> = p
                .deployments
                .iter()
                .map(|(name, tally)| (name.to_string(), *tally))
                .collect();
            if let Err(e) = store.add_usage(&tenant, day, p.total, &shares).await {
                tracing::warn!(tenant.id = %tenant, error = ?e, "usage flush failed; will retry: {e:#}");
                if let Ok(mut pending) = self.pending.lock() {
                    pending.entry((tenant, day)).or_default().merge(p);
                }
            }
        }
    }
}
