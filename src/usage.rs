//! Usage accounting off the hot path: tokens are added to in-memory counters per tenant and
//! day, and flushed to the store in batches (every `SOPHIA_USAGE_FLUSH_MS`, on shutdown, and
//! before usage is read), so a chat turn never waits for a usage write.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::NaiveDate;

use crate::domain::{TenantId, Usage};
use crate::store::Store;

#[derive(Default, Clone, Copy)]
struct Pending {
    prompt: u64,
    completion: u64,
    requests: u64,
}

/// Pending usage, by (tenant, day).
#[derive(Default)]
pub struct UsageRecorder {
    pending: Mutex<HashMap<(TenantId, NaiveDate), Pending>>,
    flushing: tokio::sync::Mutex<()>,
}

impl UsageRecorder {
    /// Adds one request's tokens for today (UTC).
    pub fn record(&self, tenant: &TenantId, usage: Usage) {
        let day = chrono::Utc::now().date_naive();
        if let Ok(mut pending) = self.pending.lock() {
            let entry = pending.entry((tenant.clone(), day)).or_default();
            entry.prompt += usage.prompt_tokens;
            entry.completion += usage.completion_tokens;
            entry.requests += 1;
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
            if let Err(e) = store
                .add_usage(&tenant, day, p.prompt, p.completion, p.requests)
                .await
            {
                tracing::warn!(tenant.id = %tenant, error = ?e, "usage flush failed; will retry: {e:#}");
                if let Ok(mut pending) = self.pending.lock() {
                    let entry = pending.entry((tenant, day)).or_default();
                    entry.prompt += p.prompt;
                    entry.completion += p.completion;
                    entry.requests += p.requests;
                }
            }
        }
    }
}
