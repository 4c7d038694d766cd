//! Per-key request and token rate limits.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::tenancy::identity::Identity;

/// Per-key request and token rate limits (token buckets refilled continuously over a minute).
#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    requests: f64,
    tokens: f64,
    last: Instant,
}

/// The `x-ratelimit-*` numbers.
#[derive(Debug, Clone, Default)]
pub struct RateInfo {
    pub limit_requests: Option<u32>,
    pub remaining_requests: Option<u32>,
    pub limit_tokens: Option<u64>,
    pub remaining_tokens: Option<u64>,
    /// Until a refused request could pass.
    pub retry_after: Option<Duration>,
}

impl RateLimiter {
    /// Admits one request of `tokens` tokens for `id`, or says how long to wait.
    pub fn admit(&self, id: &Identity, tokens: u64, now: Instant) -> Result<RateInfo, RateInfo> {
        if (id.rpm.is_none() && id.tpm.is_none()) || id.key.is_empty() {
            return Ok(RateInfo::default());
        }
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(RateInfo::default());
        };
        let rpm = id.rpm.map(f64::from);
        let tpm = id.tpm.map(|t| t as f64);
        let bucket = buckets.entry(id.key.clone()).or_insert(Bucket {
            requests: rpm.unwrap_or(0.0),
            tokens: tpm.unwrap_or(0.0),
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.last = now;
        if let Some(r) = rpm {
            bucket.requests = (bucket.requests + elapsed * r / 60.0).min(r);
        }
        if let Some(t) = tpm {
            bucket.tokens = (bucket.tokens + elapsed * t / 60.0).min(t);
        }
        let need_tokens = tokens as f64;
        let wait_requests = rpm
            .filter(|_| bucket.requests < 1.0)
            .map(|r| (1.0 - bucket.requests) * 60.0 / r);
        let wait_tokens = tpm
            .filter(|_| bucket.tokens < need_tokens)
            .map(|t| (need_tokens.min(t) - bucket.tokens).max(0.0) * 60.0 / t);
        let info = |b: &Bucket, retry: Option<f64>| RateInfo {
            limit_requests: id.rpm,
            remaining_requests: rpm.map(|_| b.requests.floor().max(0.0) as u32),
            limit_tokens: id.tpm,
            remaining_tokens: tpm.map(|_| b.tokens.floor().max(0.0) as u64),
            retry_after: retry.map(|s| Duration::from_secs_f64(s.max(0.001))),
        };
        let wait = match (wait_requests, wait_tokens) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if wait.is_some() {
            return Err(info(bucket, wait));
        }
        if rpm.is_some() {
            bucket.requests -= 1.0;
        }
        if tpm.is_some() {
            bucket.tokens -= need_tokens;
        }
        Ok(info(bucket, None))
    }

    /// Gives back `tokens` counted at admission and not used (the real usage came in lower).
    pub fn refund(&self, id: &Identity, tokens: u64) {
        let (Some(tpm), Ok(mut buckets)) = (id.tpm, self.buckets.lock()) else {
            return;
        };
        if let Some(bucket) = buckets.get_mut(&id.key) {
            bucket.tokens = (bucket.tokens + tokens as f64).min(tpm as f64);
        }
    }
}

/// `id` with its rates divided by `parts` (at least 1 per minute), for a replica's share.
pub fn share_of(id: &Identity, parts: u32) -> Identity {
    let parts = parts.max(1);
    Identity {
        rpm: id.rpm.map(|r| r.div_ceil(parts).max(1)),
        tpm: id.tpm.map(|t| t.div_ceil(u64::from(parts)).max(1)),
        ..id.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(key: &str, team: &str) -> Identity {
        Identity {
            key: key.into(),
            team: team.into(),
            rpm: Some(2),
            ..Identity::example()
        }
    }

    #[test]
    fn the_request_rate_is_limited_per_key() {
        let limiter = RateLimiter::default();
        let t = id("k", "search");
        let start = Instant::now();
        assert!(limiter.admit(&t, 10, start).is_ok());
        let second = limiter.admit(&t, 10, start).unwrap();
        assert_eq!(second.remaining_requests, Some(0));
        let refused = limiter.admit(&t, 10, start).unwrap_err();
        // 2 per minute: one more after 30 s.
        let wait = refused.retry_after.unwrap().as_secs_f64();
        assert!((wait - 30.0).abs() < 0.01, "{wait}");
        assert!(
            limiter
                .admit(&t, 10, start + Duration::from_secs(31))
                .is_ok()
        );
    }

    #[test]
    fn tokens_counted_beyond_the_real_usage_are_given_back() {
        let limiter = RateLimiter::default();
        let t = Identity {
            rpm: None,
            tpm: Some(1000),
            ..id("k", "search")
        };
        let now = Instant::now();
        limiter.admit(&t, 900, now).unwrap();
        assert!(limiter.admit(&t, 900, now).is_err(), "100 left");
        // The first request used 200 of its 900: 700 come back.
        limiter.refund(&t, 700);
        let info = limiter.admit(&t, 800, now).unwrap();
        assert_eq!(info.remaining_tokens, Some(0));
        // Never past the bucket's size.
        limiter.refund(&t, 10_000);
        assert_eq!(
            limiter.admit(&t, 0, now).unwrap().remaining_tokens,
            Some(1000)
        );
    }
}
