//! A company's limit windows: what the whole fleet has used in the current UTC minute, day and
//! month. One record per company, in its own partition; every instance of SOPHIA adds what it
//! admitted and reads back the fleet's totals (`store::UsageStore::add_to_limit_windows`).

use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};

/// The windows a moment falls in: the minute, day (since the Unix epoch) and month
/// (`year * 12 + month - 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WindowKeys {
    pub minute: i64,
    pub day: i64,
    pub month: i64,
}

impl WindowKeys {
    pub fn at(now: DateTime<Utc>) -> Self {
        let secs = now.timestamp();
        Self {
            minute: secs.div_euclid(60),
            day: secs.div_euclid(86_400),
            month: i64::from(now.year()) * 12 + i64::from(now.month0()),
        }
    }

    /// Seconds until the minute, the day and the month end, from `now`.
    pub fn resets(now: DateTime<Utc>) -> (u64, u64, u64) {
        let secs = now.timestamp();
        let minute = 60 - secs.rem_euclid(60);
        let day = 86_400 - secs.rem_euclid(86_400);
        let (y, m) = if now.month() == 12 {
            (now.year() + 1, 1)
        } else {
            (now.year(), now.month() + 1)
        };
        let next_month = chrono::NaiveDate::from_ymd_opt(y, m, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map_or(secs + day, |d| d.and_utc().timestamp());
        (minute as u64, day as u64, (next_month - secs).max(1) as u64)
    }
}

/// What has been used in each window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LimitWindows {
    pub keys: WindowKeys,
    pub minute_tokens: u64,
    pub minute_requests: u64,
    pub day_tokens: u64,
    pub month_tokens: u64,
    /// Failed access-key checks of the company this minute, across the fleet (the token
    /// endpoint's brute-force protection).
    #[serde(default)]
    pub minute_key_failures: u64,
}

/// An addition to the windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowAdd {
    pub tokens: u64,
    pub requests: u64,
    pub key_failures: u64,
    /// The day's and the month's tokens are at least these (what the company used before it
    /// had a limit, from its usage records; idempotent).
    pub floor_day: u64,
    pub floor_month: u64,
}

impl WindowAdd {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl LimitWindows {
    /// The windows as of `keys`: a window that has ended starts again from zero.
    pub fn rolled(mut self, keys: WindowKeys) -> Self {
        if self.keys.minute != keys.minute {
            self.minute_tokens = 0;
            self.minute_requests = 0;
            self.minute_key_failures = 0;
        }
        if self.keys.day != keys.day {
            self.day_tokens = 0;
        }
        if self.keys.month != keys.month {
            self.month_tokens = 0;
        }
        self.keys = keys;
        self
    }

    /// Adds `add` in the windows of `keys` (rolling over first).
    pub fn plus(self, keys: WindowKeys, add: WindowAdd) -> Self {
        let mut w = self.rolled(keys);
        w.minute_tokens += add.tokens;
        w.minute_requests += add.requests;
        w.minute_key_failures += add.key_failures;
        w.day_tokens = (w.day_tokens + add.tokens).max(add.floor_day);
        w.month_tokens = (w.month_tokens + add.tokens).max(add.floor_month);
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn windows_roll_over_by_minute_day_and_month() {
        let add = WindowAdd {
            tokens: 10,
            requests: 1,
            key_failures: 1,
            ..WindowAdd::default()
        };
        let t0 = WindowKeys::at(at("2026-12-31T23:59:30Z"));
        let w = LimitWindows::default().plus(t0, add).plus(t0, add);
        assert_eq!(
            (
                w.minute_tokens,
                w.minute_requests,
                w.day_tokens,
                w.month_tokens
            ),
            (20, 2, 20, 20)
        );
        assert_eq!(w.minute_key_failures, 2);
        let same_minute = WindowKeys::at(at("2026-12-31T23:59:59Z"));
        assert_eq!(w.rolled(same_minute), w);
        // A new minute, day, month and year at once.
        let next = w.plus(WindowKeys::at(at("2027-01-01T00:00:00Z")), add);
        assert_eq!(
            (
                next.minute_tokens,
                next.minute_requests,
                next.day_tokens,
                next.month_tokens
            ),
            (10, 1, 10, 10)
        );
        assert_eq!(next.minute_key_failures, 1, "key failures count per minute");
        // Floors raise the day and month to what was used before counting began, once.
        let floor = WindowAdd {
            floor_day: 500,
            floor_month: 900,
            ..WindowAdd::default()
        };
        let seeded = next.plus(next.keys, floor).plus(next.keys, floor);
        assert_eq!((seeded.day_tokens, seeded.month_tokens), (500, 900));
        assert_eq!(seeded.minute_tokens, next.minute_tokens);
        let higher = seeded.plus(
            next.keys,
            WindowAdd {
                floor_day: 10,
                ..add
            },
        );
        assert_eq!(higher.day_tokens, 510, "a floor never lowers");
        // A new minute of the same day and month keeps the budgets.
        let later = next.plus(WindowKeys::at(at("2027-01-01T00:01:00Z")), add);
        assert_eq!(
            (later.minute_tokens, later.day_tokens, later.month_tokens),
            (10, 20, 20)
        );
        // A new day of the same month keeps the month.
        let tomorrow = later.rolled(WindowKeys::at(at("2027-01-02T00:00:00Z")));
        assert_eq!((tomorrow.day_tokens, tomorrow.month_tokens), (0, 20));
    }

    #[test]
    fn resets_count_to_the_end_of_each_window() {
        assert_eq!(WindowKeys::resets(at("2026-12-31T23:59:30Z")), (30, 30, 30));
        assert_eq!(
            WindowKeys::resets(at("2026-02-28T00:00:00Z")),
            (60, 86_400, 86_400)
        );
    }
}
