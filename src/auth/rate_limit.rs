//! Token-bucket rate limiting by key (client address, company id). In memory, per process:
//! each Functions instance limits on its own, which bounds brute force per instance; APIM's
//! `rate-limit-by-key` in front gives a global bound.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

const MAX_TRACKED: usize = 50_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Use {
    /// Take a token if there is one.
    Take,
    /// Only look.
    Peek,
    /// Take a token, counting past empty.
    Spend,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Allows `per_minute` requests per key per minute, with bursts up to `per_minute`.
pub struct RateLimiter {
    capacity: f64,
    per_second: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// `per_minute = 0` disables the limit.
    pub fn new(per_minute: u32) -> Self {
        Self {
            capacity: f64::from(per_minute),
            per_second: f64::from(per_minute) / 60.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`; on refusal, the whole seconds to wait.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        self.apply(key, Use::Take)
    }

    /// Whether `key` has a token left, without taking it; on refusal, the seconds to wait.
    pub fn peek(&self, key: &str) -> Result<(), u64> {
        self.apply(key, Use::Peek)
    }

    /// Spends one token of `key` (for counting failures after the fact); never refuses.
    pub fn spend(&self, key: &str) {
        let _ = self.apply(key, Use::Spend);
    }

    fn apply(&self, key: &str, how: Use) -> Result<(), u64> {
        if self.capacity <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if how == Use::Peek && !buckets.contains_key(key) {
            return Ok(());
        }
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(key) {
            let (capacity, rate) = (self.capacity, self.per_second);
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.last).as_secs_f64() * rate < capacity
            });
            if buckets.len() >= MAX_TRACKED {
                // Every tracked key is busy: forget them all rather than grow without bound
                // (the per-address limit still stands against whoever floods new keys).
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.capacity,
            last: now,
        });
        let elapsed = now.duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.capacity);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            if how != Use::Peek {
                bucket.tokens -= 1.0;
            }
            Ok(())
        } else {
            if how == Use::Spend {
                // A spend past empty still counts (down to one refill's worth), so a flood
                // keeps the bucket empty rather than drawing on the refill.
                bucket.tokens = (bucket.tokens - 1.0).max(-1.0);
            }
            let wait = (1.0 - bucket.tokens) / self.per_second;
            Err(wait.ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_refuses_with_a_wait() {
        let limiter = RateLimiter::new(3);
        for _ in 0..3 {
            assert!(limiter.check("a").is_ok());
        }
        let wait = limiter.check("a").unwrap_err();
        assert!((1..=20).contains(&wait), "{wait}");
        assert!(limiter.check("b").is_ok(), "keys are independent");
    }

    #[test]
    fn peek_does_not_take_and_spend_counts_past_empty() {
        let limiter = RateLimiter::new(2);
        assert!(limiter.peek("a").is_ok());
        assert!(limiter.peek("a").is_ok(), "peeking takes nothing");
        limiter.spend("a");
        limiter.spend("a");
        assert!(limiter.peek("a").is_err());
        limiter.spend("a");
        assert!(limiter.peek("a").is_err());
        assert!(limiter.peek("b").is_ok());
    }

    #[test]
    fn zero_disables() {
        let limiter = RateLimiter::new(0);
        for _ in 0..100 {
            assert!(limiter.check("a").is_ok());
        }
    }

    #[test]
    fn memory_stays_bounded() {
        let limiter = RateLimiter::new(1000);
        for i in 0..(MAX_TRACKED + 10) {
            let _ = limiter.check(&format!("k{i}"));
        }
        assert!(limiter.buckets.lock().unwrap().len() <= MAX_TRACKED);
    }
}
