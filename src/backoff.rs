//! The retry delay of Herald's reconnect loops (worker, event tail, webhook dispatcher and
//! sender): after a failed engine call a loop waits, doubling the wait up to a cap, and starts
//! again from the first wait once a call succeeds. It owns only the delay; it never decides
//! whether to retry, and it never sleeps through a shutdown.

use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Exponential backoff between `initial` and `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub const fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The wait before the next retry; the one after it is twice as long, up to the cap.
    pub fn next(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(self.max);
        wait
    }

    /// After a success: the next failure waits the initial delay again.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// Sleeps for [`Backoff::next`]; `false` when `shutdown` fired first, so the loop can stop
    /// at once instead of finishing its wait.
    #[must_use = "false means shutdown fired: the loop should stop"]
    pub async fn sleep(&mut self, shutdown: &CancellationToken) -> bool {
        let wait = self.next();
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = shutdown.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_reset_starts_over() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(50), Duration::from_secs(2));
        let waits: Vec<Duration> = (0..8).map(|_| backoff.next()).collect();
        assert_eq!(
            waits,
            [50, 100, 200, 400, 800, 1600, 2000, 2000].map(ms).to_vec()
        );
        backoff.reset();
        assert_eq!(backoff.next(), ms(50));
    }

    #[tokio::test]
    async fn sleep_ends_early_when_shutdown_fires() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let mut backoff = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        assert!(!backoff.sleep(&shutdown).await);
    }
}
