//! Per-credential rate limiting of the HTTP API (`[http] rate_limit_*`): one token bucket per
//! API key or customer-token subject, on this node, checked where the caller is admitted
//! ([`crate::node::Shared::admit`]), after authentication: a request without valid credentials never
//! creates a bucket. Buckets are keyed by [`CredentialId`] (a key's position in the
//! configuration or a token's subject), never by the credential itself.
//!
//! Memory is bounded: a bucket that has refilled completely is the same as a new one, so at
//! most once a second those are dropped; what stays is the credentials active in the last
//! `burst / rate` seconds.

use super::problem::Problem;
use crate::auth::{Caller, CredentialId, Principal};
use crate::config::HttpConfig;
use crate::ratelimit::TokenBucket;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often full (idle) buckets are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

pub struct ApiRateLimiter {
    per_second: u32,
    burst: u32,
    admin: bool,
    /// `std::sync::Mutex`: held for a map lookup and a little arithmetic, never across an
    /// `.await`.
    buckets: Mutex<Buckets>,
}

struct Buckets {
    by_credential: HashMap<CredentialId, TokenBucket>,
    swept_at: Instant,
}

/// A request over its credential's limit: what the 429 tells the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    /// The bucket's size (`RateLimit-Limit`).
    pub limit: u32,
    /// Whole seconds until one request is allowed again (`Retry-After`).
    pub retry_after_secs: u64,
    /// Whole seconds until the bucket is full again (`RateLimit-Reset`).
    pub reset_secs: u64,
}

fn whole_seconds(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

impl ApiRateLimiter {
    pub fn new(http: &HttpConfig, now: Instant) -> ApiRateLimiter {
        ApiRateLimiter {
            per_second: http.rate_limit_per_second,
            burst: http.rate_limit_burst,
            admin: http.rate_limit_admin,
            buckets: Mutex::new(Buckets {
                by_credential: HashMap::new(),
                swept_at: now,
            }),
        }
    }

    /// The caller's rate and burst, or `None` when it is not limited.
    fn limit_for(&self, caller: &Caller) -> Option<(u32, u32)> {
        if caller.principal.is_admin() && !self.admin {
            return None;
        }
        let rate = caller.rate_limit.per_second.unwrap_or(self.per_second);
        let burst = caller.rate_limit.burst.unwrap_or(self.burst);
        (rate > 0).then_some((rate, burst))
    }

    /// Takes one token from the caller's bucket at `now`, or refuses.
    pub fn check(&self, caller: &Caller, now: Instant) -> Result<(), RateLimited> {
        let Some((rate, burst)) = self.limit_for(caller) else {
            return Ok(());
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if now.saturating_duration_since(buckets.swept_at) >= SWEEP_EVERY {
            buckets.by_credential.retain(|_, b| !b.is_full_at(now));
            buckets.swept_at = now;
        }
        let bucket = buckets
            .by_credential
            .entry(caller.credential.clone())
            .or_insert_with(|| TokenBucket::new(rate, burst, now));
        bucket
            .try_take(now)
            .map(|_| ())
            .map_err(|refused| RateLimited {
                limit: bucket.burst(),
                retry_after_secs: whole_seconds(refused.retry_after),
                reset_secs: whole_seconds(refused.until_full),
            })
    }

    /// Buckets held now (tests check idle ones go).
    pub fn buckets(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_credential
            .len()
    }
}

impl From<RateLimited> for Problem {
    /// 429 `/problems/rate-limited` with `Retry-After` and the IETF draft's `RateLimit-Limit`,
    /// `RateLimit-Remaining` and `RateLimit-Reset`.
    fn from(limited: RateLimited) -> Problem {
        Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
        )
        .detail(format!(
            "This credential is over its request rate (http.rate_limit_per_second); retry after {} s.",
            limited.retry_after_secs
        ))
        .retry_after(limited.retry_after_secs)
        .header(
            HeaderName::from_static("ratelimit-limit"),
            HeaderValue::from(limited.limit),
        )
        .header(
            HeaderName::from_static("ratelimit-remaining"),
            HeaderValue::from_static("0"),
        )
        .header(
            HeaderName::from_static("ratelimit-reset"),
            HeaderValue::from(limited.reset_secs),
        )
    }
}

/// The metric label of a caller's role.
pub fn role(principal: &Principal) -> &'static str {
    match principal {
        Principal::Admin => "admin",
        Principal::Partner { .. } => "partner",
        Principal::Customer { .. } => "customer",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::KeyRateLimit;
    use axum::http::header;

    fn http(per_second: u32, burst: u32, admin: bool) -> HttpConfig {
        HttpConfig {
            rate_limit_per_second: per_second,
            rate_limit_burst: burst,
            rate_limit_admin: admin,
            ..HttpConfig::default()
        }
    }

    fn caller(principal: Principal, credential: CredentialId) -> Caller {
        Caller {
            principal,
            credential,
            rate_limit: KeyRateLimit::default(),
        }
    }

    fn partner(key: usize) -> Caller {
        caller(
            Principal::Partner {
                partner_id: "acme".into(),
            },
            CredentialId::Key(key),
        )
    }

    fn customer(sub: &str) -> Caller {
        caller(
            Principal::Customer {
                customer_id: sub.into(),
                partner_id: None,
                expires_at: None,
            },
            CredentialId::Subject {
                partner_id: None,
                customer_id: sub.into(),
            },
        )
    }

    #[test]
    fn a_burst_over_the_limit_is_refused_with_retry_after_and_reset() {
        let t0 = Instant::now();
        let limiter = ApiRateLimiter::new(&http(2, 4, true), t0);
        let c = partner(1);
        for _ in 0..4 {
            assert_eq!(limiter.check(&c, t0), Ok(()));
        }
        assert_eq!(
            limiter.check(&c, t0),
            Err(RateLimited {
                limit: 4,
                retry_after_secs: 1, // half a second, rounded up
                reset_secs: 2,       // four tokens at 2/s
            })
        );
        assert_eq!(limiter.check(&c, t0 + Duration::from_millis(500)), Ok(()));
    }

    #[test]
    fn credentials_have_buckets_of_their_own() {
        let t0 = Instant::now();
        let limiter = ApiRateLimiter::new(&http(1, 1, true), t0);
        assert!(limiter.check(&partner(1), t0).is_ok());
        assert!(limiter.check(&partner(1), t0).is_err());
        assert!(limiter.check(&partner(2), t0).is_ok(), "another key");
        assert!(limiter.check(&customer("c-1"), t0).is_ok());
        assert!(limiter.check(&customer("c-2"), t0).is_ok());
        assert!(limiter.check(&customer("c-1"), t0).is_err());
    }

    #[test]
    fn admin_keys_are_limited_only_when_configured() {
        let t0 = Instant::now();
        let admin = caller(Principal::Admin, CredentialId::Key(0));
        let exempt = ApiRateLimiter::new(&http(1, 1, false), t0);
        for _ in 0..10 {
            assert!(exempt.check(&admin, t0).is_ok());
        }
        assert_eq!(exempt.buckets(), 0);
        let limited = ApiRateLimiter::new(&http(1, 1, true), t0);
        assert!(limited.check(&admin, t0).is_ok());
        assert!(limited.check(&admin, t0).is_err());
    }

    #[test]
    fn a_key_override_replaces_the_default_and_zero_means_unlimited() {
        let t0 = Instant::now();
        let limiter = ApiRateLimiter::new(&http(1, 1, true), t0);
        let mut generous = partner(3);
        generous.rate_limit = KeyRateLimit {
            per_second: Some(100),
            burst: Some(3),
        };
        for _ in 0..3 {
            assert!(limiter.check(&generous, t0).is_ok());
        }
        assert_eq!(limiter.check(&generous, t0).unwrap_err().limit, 3);
        let mut unlimited = partner(4);
        unlimited.rate_limit.per_second = Some(0);
        for _ in 0..100 {
            assert!(limiter.check(&unlimited, t0).is_ok());
        }
        let off = ApiRateLimiter::new(&http(0, 1, true), t0);
        for _ in 0..100 {
            assert!(off.check(&customer("c"), t0).is_ok());
        }
        assert_eq!(off.buckets(), 0);
    }

    #[test]
    fn idle_buckets_are_dropped_once_they_have_refilled() {
        let t0 = Instant::now();
        let limiter = ApiRateLimiter::new(&http(10, 20, true), t0);
        for i in 0..1000 {
            limiter.check(&customer(&format!("c-{i}")), t0).unwrap();
        }
        assert_eq!(limiter.buckets(), 1000);
        // 1 s later at 10/s each holds 19 + 10 tokens, capped at 20: full again, so the sweep
        // drops them all (the caller's own is made anew).
        limiter
            .check(&customer("c-0"), t0 + Duration::from_secs(1))
            .unwrap();
        assert_eq!(limiter.buckets(), 1);
        // A drained bucket is kept until it is full: dropping it would forgive the debt.
        let busy = customer("busy");
        let t1 = t0 + Duration::from_secs(1);
        while limiter.check(&busy, t1).is_ok() {}
        limiter
            .check(&customer("other"), t1 + Duration::from_secs(1))
            .unwrap();
        assert!(limiter.check(&busy, t1 + Duration::from_secs(1)).is_ok());
        assert_eq!(limiter.buckets(), 2, "busy is still counting");
    }

    #[test]
    fn the_problem_is_a_429_with_the_draft_headers() {
        let response = axum::response::IntoResponse::into_response(Problem::from(RateLimited {
            limit: 20,
            retry_after_secs: 3,
            reset_secs: 7,
        }));
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let h = response.headers();
        assert_eq!(h[header::RETRY_AFTER], "3");
        assert_eq!(h["ratelimit-limit"], "20");
        assert_eq!(h["ratelimit-remaining"], "0");
        assert_eq!(h["ratelimit-reset"], "7");
        assert_eq!(h[header::CONTENT_TYPE], "application/problem+json");
    }
}
