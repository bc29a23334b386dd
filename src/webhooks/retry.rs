//! When a failed attempt is tried again: the configured schedule with jitter, harder backoff
//! for `429` and timeouts, `Retry-After` honoured within bounds. Pure functions of their inputs
//! (the jitter is passed in), so every rule is unit-tested without a clock or a network.

use crate::config::WebhooksConfig;
use crate::engine::webhook::AttemptOutcome;
use std::time::{Duration, SystemTime};

/// How an attempt ended, as far as the schedule cares.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptResult {
    /// A 2xx answer.
    Success,
    /// An HTTP answer that is not 2xx (3xx included: redirects are not followed).
    Status {
        code: u16,
        /// `Retry-After`, already parsed to a delay from now.
        retry_after: Option<Duration>,
    },
    /// No answer within `request_timeout` (or `connect_timeout`).
    Timeout,
    /// Could not connect, connection reset, ...
    Error,
    /// The destination is refused by the SSRF guard (every address it resolves to is blocked,
    /// or the URL names a blocked address). Not retried on the schedule: the delivery fails at
    /// once and is kept for a manual retry (after `allow_networks` or the URL changes).
    Refused,
}

/// The outcome of attempt number `attempt` (1 for the first) that ended with `result` at
/// `now_ms`. `jitter_draw` is a uniform draw in `[0, 1)`: 0.5 keeps the interval unchanged.
pub fn outcome(
    config: &WebhooksConfig,
    attempt: u32,
    result: &AttemptResult,
    now_ms: u64,
    jitter_draw: f64,
) -> AttemptOutcome {
    let (harder, retry_after) = match result {
        AttemptResult::Success => return AttemptOutcome::Succeeded,
        AttemptResult::Refused => return AttemptOutcome::Failed,
        AttemptResult::Status { code: 410, .. } => {
            return AttemptOutcome::Gone("the endpoint answered 410 Gone".into());
        }
        AttemptResult::Status { code, retry_after } => (*code == 429, *retry_after),
        AttemptResult::Timeout => (true, None),
        AttemptResult::Error => (false, None),
    };
    // schedule[0] is the first attempt; schedule[n] is the wait after attempt n.
    let Some(base) = config.retry_schedule.get(attempt as usize) else {
        return AttemptOutcome::Failed;
    };
    let factor = 1.0 + config.jitter * (2.0 * jitter_draw.clamp(0.0, 1.0) - 1.0);
    let mut wait = base.mul_f64(factor.max(0.0));
    if harder {
        wait *= 2;
    }
    if let Some(asked) = retry_after {
        wait = wait.max(asked.min(config.retry_after_max));
    }
    AttemptOutcome::RetryAt(now_ms.saturating_add(wait.as_millis() as u64))
}

/// Parses `Retry-After`: delay-seconds or an HTTP date (RFC 9110, 10.2.3). A date in the past
/// is a zero delay; anything else unreadable is ignored.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WebhooksConfig {
        WebhooksConfig {
            retry_schedule: vec![
                Duration::ZERO,
                Duration::from_secs(5),
                Duration::from_secs(300),
            ],
            jitter: 0.2,
            retry_after_max: Duration::from_secs(3600),
            ..WebhooksConfig::default()
        }
    }

    fn error(code: u16) -> AttemptResult {
        AttemptResult::Status {
            code,
            retry_after: None,
        }
    }

    #[test]
    fn success_and_gone_end_the_delivery() {
        assert_eq!(
            outcome(&config(), 1, &AttemptResult::Success, 0, 0.5),
            AttemptOutcome::Succeeded
        );
        assert!(matches!(
            outcome(&config(), 1, &error(410), 0, 0.5),
            AttemptOutcome::Gone(_)
        ));
    }

    #[test]
    fn a_refused_destination_fails_at_once() {
        assert_eq!(
            outcome(&config(), 1, &AttemptResult::Refused, 0, 0.5),
            AttemptOutcome::Failed
        );
    }

    #[test]
    fn failures_follow_the_schedule_then_fail() {
        let c = config();
        assert_eq!(
            outcome(&c, 1, &error(500), 1000, 0.5),
            AttemptOutcome::RetryAt(6000)
        );
        assert_eq!(
            outcome(&c, 2, &AttemptResult::Error, 1000, 0.5),
            AttemptOutcome::RetryAt(301_000)
        );
        assert_eq!(
            outcome(&c, 3, &error(500), 1000, 0.5),
            AttemptOutcome::Failed
        );
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let c = config();
        assert_eq!(
            outcome(&c, 1, &error(302), 0, 0.0),
            AttemptOutcome::RetryAt(4000)
        );
        assert_eq!(
            outcome(&c, 1, &error(302), 0, 1.0),
            AttemptOutcome::RetryAt(6000)
        );
    }

    #[test]
    fn too_many_requests_and_timeouts_back_off_twice_as_long() {
        let c = config();
        assert_eq!(
            outcome(&c, 1, &error(429), 0, 0.5),
            AttemptOutcome::RetryAt(10_000)
        );
        assert_eq!(
            outcome(&c, 1, &AttemptResult::Timeout, 0, 0.5),
            AttemptOutcome::RetryAt(10_000)
        );
    }

    #[test]
    fn retry_after_is_honoured_up_to_its_maximum() {
        let c = config();
        let asked = |secs| AttemptResult::Status {
            code: 503,
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert_eq!(
            outcome(&c, 1, &asked(60), 0, 0.5),
            AttemptOutcome::RetryAt(60_000)
        );
        // Shorter than the schedule: the schedule wins.
        assert_eq!(
            outcome(&c, 1, &asked(1), 0, 0.5),
            AttemptOutcome::RetryAt(5000)
        );
        assert_eq!(
            outcome(&c, 1, &asked(86_400), 0, 0.5),
            AttemptOutcome::RetryAt(3_600_000)
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:29:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
