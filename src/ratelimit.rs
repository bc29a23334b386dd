//! Token buckets: the one rate-limit arithmetic Herald uses (the HTTP API per credential,
//! WebSocket subscribes per connection, webhook attempts per endpoint).
//!
//! A bucket holds up to `burst` tokens and gains `rate` tokens a second; each request takes
//! one. The clock is a parameter (`now`), never read here, so the maths is tested with an
//! injected clock and callers decide which `Instant` a decision belongs to.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    counted_at: Instant,
}

/// A request let through: what is left, for the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Taken {
    /// Whole tokens left after this request.
    pub remaining: u32,
    /// Until the bucket is full again.
    pub until_full: Duration,
}

/// A request refused: how long until one token is there again, and until the bucket is full.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refused {
    pub retry_after: Duration,
    pub until_full: Duration,
}

impl TokenBucket {
    /// A full bucket. `rate` tokens a second (at least 1 is assumed), at most `burst` held
    /// (at least 1).
    pub fn new(rate: u32, burst: u32, now: Instant) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate.max(1)),
            burst,
            tokens: burst,
            counted_at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        // An `Instant` older than the last count (callers racing) adds nothing.
        let elapsed = now.saturating_duration_since(self.counted_at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.counted_at = self.counted_at.max(now);
    }

    fn until_full(&self) -> Duration {
        Duration::from_secs_f64(((self.burst - self.tokens) / self.rate).max(0.0))
    }

    /// Takes one token at `now`, or says how long until one is there.
    pub fn try_take(&mut self, now: Instant) -> Result<Taken, Refused> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(Taken {
                remaining: self.tokens.floor() as u32,
                until_full: self.until_full(),
            })
        } else {
            Err(Refused {
                retry_after: Duration::from_secs_f64((1.0 - self.tokens) / self.rate),
                until_full: self.until_full(),
            })
        }
    }

    /// Whether the bucket has refilled completely by `now`: it is then indistinguishable from
    /// a new one and may be dropped.
    pub fn is_full_at(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.counted_at).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }

    pub fn burst(&self) -> u32 {
        self.burst as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Float seconds do not land on whole nanoseconds: equal within a microsecond.
    fn assert_about(actual: Duration, expected: Duration) {
        let diff = actual.as_secs_f64() - expected.as_secs_f64();
        assert!(diff.abs() < 1e-6, "{actual:?} is not {expected:?}");
    }

    #[test]
    fn a_full_bucket_lets_a_burst_through_then_refuses() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5, t0);
        for left in (0..5).rev() {
            assert_eq!(b.try_take(t0).unwrap().remaining, left);
        }
        let refused = b.try_take(t0).unwrap_err();
        assert_about(refused.retry_after, ms(100)); // one token at 10/s
        assert_about(refused.until_full, ms(500)); // five tokens at 10/s
    }

    #[test]
    fn tokens_refill_at_the_rate_and_never_beyond_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5, t0);
        for _ in 0..5 {
            b.try_take(t0).unwrap();
        }
        // 250 ms at 10/s: two and a half tokens, two whole ones usable.
        let t1 = t0 + ms(250);
        assert_eq!(b.try_take(t1).unwrap().remaining, 1);
        assert_eq!(b.try_take(t1).unwrap().remaining, 0);
        let refused = b.try_take(t1).unwrap_err();
        assert_about(refused.retry_after, ms(50)); // half a token missing
        // An hour later the bucket holds its burst, not 36,000 tokens.
        let t2 = t1 + Duration::from_secs(3600);
        assert!(b.is_full_at(t2));
        let taken = b.try_take(t2).unwrap();
        assert_eq!(taken.remaining, 4);
        assert_about(taken.until_full, ms(100));
    }

    #[test]
    fn a_refused_request_takes_nothing() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1, 1, t0);
        b.try_take(t0).unwrap();
        for _ in 0..100 {
            assert!(b.try_take(t0 + ms(500)).is_err());
        }
        assert!(
            b.try_take(t0 + ms(1000)).is_ok(),
            "refusals did not dig a hole"
        );
    }

    #[test]
    fn fullness_is_judged_at_the_given_time() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 200, t0);
        assert!(b.is_full_at(t0));
        b.try_take(t0).unwrap();
        assert!(!b.is_full_at(t0));
        assert!(!b.is_full_at(t0 + ms(9)));
        assert!(b.is_full_at(t0 + ms(10)));
    }

    #[test]
    fn a_clock_going_backwards_adds_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(10, 1, t0);
        b.try_take(t0).unwrap();
        assert!(b.try_take(t0 - Duration::from_secs(5)).is_err());
        assert!(b.try_take(t0 + ms(100)).is_ok());
    }
}
