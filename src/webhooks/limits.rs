//! Per-endpoint limits on this node: attempts in flight at once (a semaphore) and attempts
//! started per second (a token bucket). A delivery that cannot start now is told how long to
//! wait, and the sender puts it back on the schedule without counting an attempt, so a slow
//! or dead endpoint holds at most its own `max_in_flight` tasks and never anyone else's.

use crate::ratelimit::TokenBucket;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a delivery waits when its endpoint has every in-flight slot taken.
pub const BUSY_RETRY: Duration = Duration::from_millis(250);

/// The limits of one endpoint.
pub struct EndpointLimiter {
    max_in_flight: u32,
    rate_per_second: u32,
    in_flight: Arc<Semaphore>,
    /// `std::sync::Mutex`: held for a few arithmetic operations, never across an `.await`.
    bucket: Mutex<TokenBucket>,
}

impl EndpointLimiter {
    fn new(max_in_flight: u32, rate_per_second: u32) -> EndpointLimiter {
        EndpointLimiter {
            max_in_flight,
            rate_per_second,
            in_flight: Arc::new(Semaphore::new(max_in_flight.max(1) as usize)),
            bucket: Mutex::new(TokenBucket::new(
                rate_per_second,
                rate_per_second,
                Instant::now(),
            )),
        }
    }

    /// A permit to attempt now (held until the attempt ends), or how long to wait.
    pub fn try_start(&self) -> Result<OwnedSemaphorePermit, Duration> {
        let permit = self
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| BUSY_RETRY)?;
        if self.rate_per_second > 0 {
            let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
            bucket
                .try_take(Instant::now())
                .map_err(|refused| refused.retry_after.max(Duration::from_millis(5)))?;
        }
        Ok(permit)
    }
}

impl EndpointLimiter {
    /// A permit to attempt, waiting up to `budget` for it: first for an in-flight slot (in
    /// arrival order: the semaphore is fair), then for the rate's next token. Past the budget,
    /// how long the caller should wait instead (the slot, if taken, is given back).
    pub async fn start_within(&self, budget: Duration) -> Result<OwnedSemaphorePermit, Duration> {
        let deadline = tokio::time::Instant::now() + budget;
        let permit = tokio::time::timeout_at(deadline, self.in_flight.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(BUSY_RETRY)?;
        if self.rate_per_second == 0 {
            return Ok(permit);
        }
        loop {
            let taken = {
                let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
                bucket.try_take(Instant::now())
            };
            match taken {
                Ok(_) => return Ok(permit),
                Err(refused) => {
                    let wait = refused.retry_after.max(Duration::from_millis(5));
                    if tokio::time::Instant::now() + wait > deadline {
                        return Err(wait);
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// The limiters of every endpoint this node has sent to, rebuilt when an endpoint's limits
/// change (attempts holding permits of the old one finish undisturbed).
#[derive(Default)]
pub struct Limiters {
    by_endpoint: Mutex<HashMap<String, Arc<EndpointLimiter>>>,
}

impl Limiters {
    pub fn get(&self, endpoint_id: &str, max_in_flight: u32, rate: u32) -> Arc<EndpointLimiter> {
        let mut map = self.by_endpoint.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = map.get(endpoint_id)
            && l.max_in_flight == max_in_flight
            && l.rate_per_second == rate
        {
            return l.clone();
        }
        let limiter = Arc::new(EndpointLimiter::new(max_in_flight, rate));
        map.insert(endpoint_id.to_string(), limiter.clone());
        limiter
    }

    pub fn forget(&self, endpoint_id: &str) {
        let mut map = self.by_endpoint.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(endpoint_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_limit_refuses_the_extra_attempt_until_one_ends() {
        let limiters = Limiters::default();
        let l = limiters.get("ep", 2, 0);
        let a = l.try_start().unwrap();
        let _b = l.try_start().unwrap();
        assert_eq!(l.try_start().unwrap_err(), BUSY_RETRY);
        drop(a);
        assert!(l.try_start().is_ok());
    }

    #[test]
    fn rate_limit_allows_a_burst_of_its_size_then_says_how_long_to_wait() {
        let l = Limiters::default().get("ep", 100, 10);
        for _ in 0..10 {
            drop(l.try_start().unwrap());
        }
        let wait = l.try_start().unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
    }

    #[tokio::test]
    async fn start_within_waits_for_a_slot_freed_in_time_and_refuses_past_the_budget() {
        let l = Limiters::default().get("ep", 1, 0);
        let held = l.try_start().unwrap();
        // Nobody frees the slot: refused once the budget is spent, told to come back later.
        assert_eq!(
            l.start_within(Duration::from_millis(50)).await.unwrap_err(),
            BUSY_RETRY
        );
        // Freed within the budget: the waiting attempt gets it.
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(held);
        });
        assert!(l.start_within(Duration::from_secs(5)).await.is_ok());
        release.await.unwrap();
    }

    #[tokio::test]
    async fn start_within_waits_for_the_rate_only_within_the_budget() {
        let l = Limiters::default().get("ep", 100, 10);
        for _ in 0..10 {
            drop(l.try_start().unwrap());
        }
        // The next token comes in about 100 ms: a budget of 10 ms is refused at once, one of
        // seconds waits for it.
        assert!(l.start_within(Duration::from_millis(10)).await.is_err());
        assert!(l.start_within(Duration::from_secs(5)).await.is_ok());
    }

    #[test]
    fn changed_limits_build_a_new_limiter() {
        let limiters = Limiters::default();
        let a = limiters.get("ep", 1, 0);
        assert!(Arc::ptr_eq(&a, &limiters.get("ep", 1, 0)));
        assert!(!Arc::ptr_eq(&a, &limiters.get("ep", 2, 0)));
    }
}
