//! Token counts of a turn, and the one estimate used when an upstream reports none.

use serde::{Deserialize, Serialize};

/// Token counts in the SOPHIA (camelCase) shape.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }

    /// What the upstream reported when it reported anything, else the estimate of the prompt
    /// (`prompt_estimate`, from [`estimate_tokens`]) and of the answer.
    pub fn settle(reported: Option<Usage>, prompt_estimate: u64, answer: &str) -> Self {
        match reported {
            Some(u) if u.prompt_tokens + u.completion_tokens > 0 => u,
            _ => Self::new(prompt_estimate, estimate_tokens(answer)),
        }
    }
}

/// Tokens and requests summed over turns (a day's usage, or one deployment's share of it).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Tally {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub requests: u64,
}

impl Tally {
    /// One turn's usage.
    pub fn add(&mut self, usage: Usage) {
        self.prompt_tokens += usage.prompt_tokens;
        self.completion_tokens += usage.completion_tokens;
        self.requests += 1;
    }

    pub fn merge(&mut self, other: Tally) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.requests += other.requests;
    }
}

/// One failover deployment's share of a day's usage (`deployments[].name`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentUsage {
    pub deployment: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub requests: u64,
}

impl DeploymentUsage {
    pub fn new(deployment: String, tally: Tally) -> Self {
        Self {
            deployment,
            prompt_tokens: tally.prompt_tokens,
            completion_tokens: tally.completion_tokens,
            total_tokens: tally.prompt_tokens + tally.completion_tokens,
            requests: tally.requests,
        }
    }
}

/// A rough count (≈ 4 characters a token) for upstreams that report no usage.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_usage_wins_over_the_estimate() {
        let reported = Usage::new(10, 5);
        assert_eq!(Usage::settle(Some(reported), 99, "ignored"), reported);
        assert_eq!(
            Usage::settle(Some(Usage::default()), 3, "abcdefgh"),
            Usage::new(3, 2),
            "an all-zero report is no report"
        );
        assert_eq!(Usage::settle(None, 0, "héllo"), Usage::new(0, 2));
    }
}
