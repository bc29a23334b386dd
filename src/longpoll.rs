//! The long-polls of `GET /v1/events?waitMs=` and of `GET /v1/orders/{id}/status` with
//! `Prefer: wait=` or `waitForVersion=`: how many may wait, and the one wait per node they are
//! all served from.
//!
//! A waiting request makes no blocking engine call of its own. It reads without waiting (the
//! log, or the order's status); when that finds nothing it waits on this node's "the log moved" signal and reads again (still
//! without waiting) each time the signal fires, until it finds entries, its `waitMs` is over
//! or the node shuts down. One task per node ([`LongPolls::watch`]) makes the only blocking
//! read, and only while some request waits: on Redis that is one dedicated connection per node
//! however many requests wait, so long-polls can neither exhaust Redis' clients nor take the
//! blocking pool (`engine.max_blocking_connections`) from the worker, the event tail and the
//! webhook dispatcher.
//!
//! Waiting requests are bounded per credential (`http.long_poll_max_waiting_per_credential`,
//! beyond it 429 `/problems/too-many-long-polls`) and per node (`http.long_poll_max_waiting`,
//! beyond it 503 `/problems/long-polls-full`), both with `Retry-After`. A request that does
//! not wait (no `waitMs`, or entries already there) is never counted. The place of a waiting
//! request is a guard ([`Waiting`]) released when the request ends, however it ends (answered,
//! timed out, or dropped because its client went away).
//!
//! It owns no cursor of its own that a reader sees and never decides what a request may read:
//! the handler filters what comes back.

use crate::auth::CredentialId;
use crate::backoff::Backoff;
use crate::config::HttpConfig;
use crate::engine::{EventLog, LogEntry};
use crate::http::problem::Problem;
use crate::metrics::Metrics;
use crate::model::LogCursor;
use axum::http::StatusCode;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long the watcher's blocking read waits before asking again (and checking whether
/// anyone still waits).
const WATCH_WAIT: Duration = Duration::from_secs(1);

/// What a refused long-poll is told to wait before trying again (whole seconds).
const RETRY_AFTER_SECS: u64 = 1;

/// The node's long-polls: the counts against the bounds, and the signal the watcher sends
/// when the log moved.
pub struct LongPolls {
    max_waiting: usize,
    max_per_credential: usize,
    /// `std::sync::Mutex`: held for a counter update, never across an `.await`.
    counts: Mutex<Counts>,
    /// Bumped by the watcher each time the log moved past the position it waited at.
    moved: watch::Sender<u64>,
    /// Tells an idle watcher that a request started waiting.
    demand: Notify,
    metrics: Arc<Metrics>,
    /// The node's shutdown: waiting requests answer at once (with nothing) instead of holding
    /// the HTTP server's drain for their whole `waitMs`.
    shutdown: CancellationToken,
}

#[derive(Default)]
struct Counts {
    waiting: usize,
    /// Only credentials with a request waiting: at most `max_waiting` entries.
    by_credential: HashMap<CredentialId, usize>,
}

/// A long-poll refused for a bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The credential already holds `http.long_poll_max_waiting_per_credential` (429).
    Credential(usize),
    /// The node already holds `http.long_poll_max_waiting` (503).
    Node(usize),
}

impl From<Refused> for Problem {
    fn from(refused: Refused) -> Problem {
        let (status, slug, detail) = match refused {
            Refused::Credential(limit) => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-long-polls",
                format!(
                    "This credential already has {limit} requests waiting on this node \
                     (http.long_poll_max_waiting_per_credential)."
                ),
            ),
            Refused::Node(limit) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "long-polls-full",
                format!(
                    "This node already holds {limit} waiting requests \
                     (http.long_poll_max_waiting)."
                ),
            ),
        };
        Problem::new(status, slug, "Too many waiting requests")
            .detail(format!(
                "{detail} Retry after {RETRY_AFTER_SECS} s, or read without waitMs: a request \
                 that does not wait is not counted."
            ))
            .retry_after(RETRY_AFTER_SECS)
    }
}

/// The place of one waiting request; given back when dropped.
pub struct Waiting<'a> {
    polls: &'a LongPolls,
    credential: CredentialId,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut counts = self.polls.lock();
        counts.waiting = counts.waiting.saturating_sub(1);
        if let Some(n) = counts.by_credential.get_mut(&self.credential) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.by_credential.remove(&self.credential);
            }
        }
        drop(counts);
        self.polls.metrics.long_polls_waiting.decrement(1.0);
    }
}

impl LongPolls {
    pub fn new(http: &HttpConfig, metrics: Arc<Metrics>, shutdown: CancellationToken) -> Self {
        LongPolls {
            max_waiting: http.long_poll_max_waiting.max(1),
            max_per_credential: http.long_poll_max_waiting_per_credential.max(1),
            counts: Mutex::new(Counts::default()),
            moved: watch::Sender::new(0),
            demand: Notify::new(),
            metrics,
            shutdown,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.lock().waiting
    }

    /// Takes a place for a request of `credential`, or refuses it: the credential's bound is
    /// checked first (its own doing: 429), then the node's (503).
    pub fn admit(&self, credential: &CredentialId) -> Result<Waiting<'_>, Refused> {
        let mut counts = self.lock();
        let mine = counts.by_credential.get(credential).copied().unwrap_or(0);
        if mine >= self.max_per_credential {
            drop(counts);
            Metrics::inc(&self.metrics.long_polls_refused_credential);
            return Err(Refused::Credential(self.max_per_credential));
        }
        if counts.waiting >= self.max_waiting {
            drop(counts);
            Metrics::inc(&self.metrics.long_polls_refused_node);
            return Err(Refused::Node(self.max_waiting));
        }
        counts.waiting += 1;
        *counts.by_credential.entry(credential.clone()).or_default() += 1;
        let first = counts.waiting == 1;
        drop(counts);
        self.metrics.long_polls_waiting.increment(1.0);
        if first {
            self.demand.notify_one();
        }
        Ok(Waiting {
            polls: self,
            credential: credential.clone(),
        })
    }

    /// Entries after `after` (at most `max` per partition, as [`EventLog::read_events`]): at
    /// once when there are some or `wait` is zero; else, once admitted against the bounds, the
    /// first read that finds some after the log moved, or none when `wait` is over or the node
    /// shuts down. Every read is a non-blocking one.
    pub async fn read_events<L: EventLog + ?Sized>(
        &self,
        log: &L,
        credential: &CredentialId,
        after: &LogCursor,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<LogEntry>, Problem> {
        let found = self
            .wait_for(credential, wait, || async {
                let entries = log.read_events(after, max, Duration::ZERO).await?;
                Ok((!entries.is_empty()).then_some(entries))
            })
            .await?;
        Ok(found.unwrap_or_default())
    }

    /// What `check` finds: at once when it finds something or `wait` is zero; else, once
    /// admitted against the bounds, `check` again each time the log moved, until it finds
    /// something (`Some`), `wait` is over or the node shuts down (`None`). `check` is how a
    /// request looks without waiting (a non-blocking read of the log, of an order's status):
    /// it runs once per move of the log, never in a loop of its own.
    pub async fn wait_for<T, F, Fut>(
        &self,
        credential: &CredentialId,
        wait: Duration,
        mut check: F,
    ) -> Result<Option<T>, Problem>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, Problem>>,
    {
        // Subscribed before the first check: a move signalled after it wakes this request
        // even if it comes before the request starts waiting.
        let mut moved = self.moved.subscribe();
        if let Some(found) = check().await? {
            return Ok(Some(found));
        }
        if wait.is_zero() {
            return Ok(None);
        }
        let _waiting = self.admit(credential)?;
        let deadline = Instant::now() + wait;
        loop {
            tokio::select! {
                changed = moved.changed() => {
                    if changed.is_err() {
                        return Ok(None);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
                _ = self.shutdown.cancelled() => return Ok(None),
            }
            if let Some(found) = check().await? {
                return Ok(Some(found));
            }
        }
    }

    /// Wakes every waiting request to read again.
    fn wake(&self) {
        self.moved.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The node's watcher, until shutdown: while any request waits, follows the log's end
    /// with one blocking read at a time and wakes the waiting requests whenever it moved;
    /// while none waits, reads nothing.
    ///
    /// The position it waits at is the log's end taken after each move and only then
    /// signalled: whatever a woken request may miss came after that end, so the next read
    /// returns it and wakes the request again. A failed read wakes the requests too (their own
    /// read then answers the engine's error) and is retried with backoff.
    pub async fn watch<L: EventLog + ?Sized>(self: Arc<Self>, log: Arc<L>) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        'idle: loop {
            if self.waiting() == 0 {
                tokio::select! {
                    _ = self.demand.notified() => continue,
                    _ = self.shutdown.cancelled() => break,
                }
            }
            let mut position = match log.log_end().await {
                Ok(end) => end,
                Err(e) => {
                    tracing::warn!(error = %e, "long-poll watcher: cannot find the end of the log; retrying");
                    self.wake();
                    if !backoff.sleep(&self.shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            // Requests that read before this end and found nothing read again.
            self.wake();
            while self.waiting() > 0 {
                let read = tokio::select! {
                    read = log.read_events(&position, 1, WATCH_WAIT) => read,
                    _ = self.shutdown.cancelled() => break 'idle,
                };
                match read {
                    Ok(entries) if entries.is_empty() => backoff.reset(),
                    Ok(entries) => {
                        backoff.reset();
                        match log.log_end().await {
                            Ok(end) => position = end,
                            Err(_) => {
                                for entry in &entries {
                                    if let Ok(id) = entry.id() {
                                        position.advance(entry.partition(), id);
                                    }
                                }
                            }
                        }
                        self.wake();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, %position, "long-poll watcher: read failed; retrying");
                        self.wake();
                        if !backoff.sleep(&self.shutdown).await {
                            break 'idle;
                        }
                    }
                }
            }
        }
        tracing::debug!("long-poll watcher stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineSettings;
    use crate::engine::memory::MemoryEngine;
    use crate::testing::event_json;

    fn polls(max_waiting: usize, max_per_credential: usize) -> Arc<LongPolls> {
        let http = HttpConfig {
            long_poll_max_waiting: max_waiting,
            long_poll_max_waiting_per_credential: max_per_credential,
            ..HttpConfig::default()
        };
        Arc::new(LongPolls::new(
            &http,
            Arc::new(Metrics::default()),
            CancellationToken::new(),
        ))
    }

    fn engine() -> Arc<MemoryEngine> {
        Arc::new(MemoryEngine::new(EngineSettings {
            visibility_timeout: Duration::from_secs(30),
            max_receives: 5,
            history_limit: 10,
            step_history_limit: 100,
            event_retention: 100,
            consumer_name: "test".into(),
        }))
    }

    #[test]
    fn places_are_bounded_per_credential_then_per_node_and_given_back_on_drop() {
        let polls = polls(3, 2);
        let a = CredentialId::Key(0);
        let b = CredentialId::Subject {
            partner_id: Some("acme".into()),
            customer_id: "c-1".into(),
        };
        let a1 = polls.admit(&a).unwrap();
        let _a2 = polls.admit(&a).unwrap();
        assert_eq!(polls.admit(&a).err(), Some(Refused::Credential(2)));
        let _b1 = polls.admit(&b).unwrap();
        assert_eq!(polls.admit(&b).err(), Some(Refused::Node(3)));
        assert_eq!(polls.waiting(), 3);
        drop(a1);
        assert_eq!(polls.waiting(), 2);
        let _b2 = polls.admit(&b).unwrap();
        let problem = Problem::from(Refused::Credential(2));
        assert_eq!(problem.status, 429);
        assert_eq!(problem.problem_type, "/problems/too-many-long-polls");
        assert_eq!(Problem::from(Refused::Node(3)).status, 503);
        let text = polls.metrics.render(None, true, None);
        assert!(text.contains("herald_long_polls_waiting 3\n"), "{text}");
        assert!(text.contains("herald_long_polls_refused_total{limit=\"credential\"} 1\n"));
        assert!(text.contains("herald_long_polls_refused_total{limit=\"node\"} 1\n"));
    }

    #[tokio::test]
    async fn a_waiting_request_is_woken_by_the_watcher_when_the_log_moves() {
        let polls = polls(10, 10);
        let log = engine();
        let watcher = tokio::spawn(polls.clone().watch(log.clone()));
        let start = log.log_end().await.unwrap();
        let reader = {
            let (polls, log, start) = (polls.clone(), log.clone(), start.clone());
            tokio::spawn(async move {
                polls
                    .read_events(
                        &*log,
                        &CredentialId::Key(0),
                        &start,
                        10,
                        Duration::from_secs(20),
                    )
                    .await
            })
        };
        while polls.waiting() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        log.append_raw_event(&event_json("o-1", 1)).await.unwrap();
        let entries = reader.await.unwrap().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(polls.waiting(), 0, "the place is given back");
        polls.shutdown.cancel();
        watcher.await.unwrap();
    }

    #[tokio::test]
    async fn a_request_that_does_not_wait_takes_no_place_and_shutdown_ends_a_wait() {
        let polls = polls(1, 1);
        let log = engine();
        let start = log.log_end().await.unwrap();
        let credential = CredentialId::Key(0);
        let _held = polls.admit(&credential).unwrap();
        // Over the bound, yet a read that does not wait is answered.
        let none = polls
            .read_events(&*log, &credential, &start, 10, Duration::ZERO)
            .await
            .unwrap();
        assert!(none.is_empty());
        // So is one that finds entries at once.
        log.append_raw_event(&event_json("o-1", 1)).await.unwrap();
        let found = polls
            .read_events(&*log, &credential, &start, 10, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(found.len(), 1);
        // One that would wait is refused.
        let end = log.log_end().await.unwrap();
        let refused = polls
            .read_events(&*log, &credential, &end, 10, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(refused.status, 429);
        drop(_held);
        // Shutdown ends a wait at once, with nothing.
        polls.shutdown.cancel();
        let ended = polls
            .read_events(&*log, &credential, &end, 10, Duration::from_secs(20))
            .await
            .unwrap();
        assert!(ended.is_empty());
    }
}
