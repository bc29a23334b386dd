//! The sender: attempts due deliveries, precisely and concurrently.
//!
//! One loop per node sleeps until the engine's earliest due time (`next_due_ms`), woken early
//! by a local [`Notify`] when this node schedules something sooner and re-checking at least
//! every [`RECHECK`] for work other nodes scheduled. It claims what is due with a lease (a node
//! that dies mid-attempt leaves the delivery to be taken again when the lease ends) and runs
//! each attempt as its own task. Per-endpoint in-flight and rate limits are enforced here: a
//! delivery that cannot start now goes back on the schedule a little later without counting an
//! attempt, so a blackholed endpoint holds its own slots and never anyone else's.
//!
//! Each attempt is signed (Standard Webhooks, every live secret), sent through the SSRF-guarded
//! client (checked again at connect time; redirects are not followed) and recorded with its
//! outcome in one engine step (`finish_attempt`). This module never logs a secret or a body.

use crate::backoff::Backoff;
use crate::config::WebhooksConfig;
use crate::engine::Engine;
use crate::engine::webhook::{Attempt, AttemptOutcome, Delivery, Endpoint, EndpointHealth};
use crate::metrics::Metrics;
use crate::model::now_millis;
use crate::webhooks::limits::Limiters;
use crate::webhooks::operational;
use crate::webhooks::retry::{self, AttemptResult};
use crate::webhooks::signature::{self, SigningKey};
use crate::webhooks::ssrf::{self, AllowList};
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The longest the loop sleeps without asking the engine: work scheduled by other nodes (or
/// by a lease that ran out) is picked up at most this late.
pub const RECHECK: Duration = Duration::from_millis(500);
/// Attempts this node runs at once, all endpoints together.
const MAX_CONCURRENT_ATTEMPTS: usize = 256;
/// Deliveries claimed per engine call.
const CLAIM_BATCH: usize = 64;
/// The part of a response body kept in the attempt log.
pub const RESPONSE_KEEP_BYTES: usize = 20 * 1024;

/// An endpoint with what every attempt to it needs, worked out once per claimed batch: the
/// destination checked against the SSRF rules and the live secrets parsed into keys.
struct Prepared {
    endpoint: Endpoint,
    target: Result<reqwest::Url, String>,
    keys: Vec<SigningKey>,
}

impl Prepared {
    fn new(endpoint: Endpoint, allow: &AllowList) -> Prepared {
        // IP-literal URLs never reach the resolver: check them here too (and any URL that
        // was stored before the allow list changed).
        let target = reqwest::Url::parse(&endpoint.url)
            .map_err(|e| e.to_string())
            .and_then(|url| ssrf::check_url(&url, allow).map(|()| url));
        let now = now_millis();
        let keys = endpoint
            .secrets
            .iter()
            .filter(|s| s.expires_at_ms.is_none_or(|at| at > now))
            .filter_map(|s| SigningKey::parse(&s.secret).ok())
            .collect();
        Prepared {
            endpoint,
            target,
            keys,
        }
    }
}

impl std::ops::Deref for Prepared {
    type Target = Endpoint;
    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// A claimed delivery's endpoint, as read once for its batch.
enum Lookup {
    Known(Arc<Prepared>),
    Deleted,
    /// The batch read failed: read it for this attempt.
    Unknown,
}

pub struct Sender {
    engine: Arc<dyn Engine>,
    config: WebhooksConfig,
    allow: Arc<AllowList>,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    limiters: Limiters,
    slots: Arc<Semaphore>,
}

impl Sender {
    pub fn new(
        engine: Arc<dyn Engine>,
        config: WebhooksConfig,
        allow: Arc<AllowList>,
        client: reqwest::Client,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
    ) -> Arc<Sender> {
        Arc::new(Sender {
            engine,
            config,
            allow,
            client,
            metrics,
            wake,
            limiters: Limiters::default(),
            slots: Arc::new(Semaphore::new(MAX_CONCURRENT_ATTEMPTS)),
        })
    }

    /// Runs until `shutdown`, then waits for the attempts in flight (the server bounds that
    /// wait by `http.shutdown_grace`; an attempt cut short is taken again after its lease).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        tracing::info!("webhook sender started");
        let mut attempts = JoinSet::new();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        while !shutdown.is_cancelled() {
            while attempts.try_join_next().is_some() {}
            let free = self.slots.available_permits().min(CLAIM_BATCH);
            if free == 0 {
                tokio::select! {
                    _ = attempts.join_next() => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            let now = now_millis();
            match self.engine.claim_due(now, free, self.config.lease).await {
                Ok(batch) => {
                    backoff.reset();
                    let full = batch.len() == free;
                    // One read of the endpoints per claimed batch, not one per attempt; only
                    // the batch's own endpoints are prepared (URL check, signing keys).
                    let endpoints = if batch.is_empty() {
                        None
                    } else {
                        let wanted: HashSet<&str> =
                            batch.iter().map(|d| d.endpoint_id.as_str()).collect();
                        self.engine.endpoints().await.ok().map(|all| {
                            all.into_iter()
                                .filter(|e| wanted.contains(e.id.as_str()))
                                .map(|e| (e.id.clone(), Arc::new(Prepared::new(e, &self.allow))))
                                .collect::<HashMap<_, _>>()
                        })
                    };
                    for delivery in batch {
                        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                            // Cannot happen (we claimed no more than the free slots); the
                            // lease brings the delivery back.
                            continue;
                        };
                        if let Some(due) = delivery.next_attempt_at_ms.filter(|due| *due <= now) {
                            self.metrics
                                .webhook_lateness
                                .observe(Duration::from_millis(now - due));
                        }
                        let endpoint = match &endpoints {
                            Some(known) => match known.get(&delivery.endpoint_id) {
                                Some(e) => Lookup::Known(e.clone()),
                                None => Lookup::Deleted,
                            },
                            None => Lookup::Unknown,
                        };
                        attempts.spawn(self.clone().attempt(delivery, endpoint, slot));
                    }
                    if full {
                        continue;
                    }
                }
                Err(e) => {
                    Metrics::inc(&self.metrics.webhook_sender_errors);
                    tracing::warn!(error = %e, "webhook sender: claiming due deliveries failed; retrying");
                    if !backoff.sleep(&shutdown).await {
                        break;
                    }
                    continue;
                }
            }
            let sleep = match self.engine.next_due_ms().await {
                Ok(Some(due)) => Duration::from_millis(due.saturating_sub(now_millis())),
                Ok(None) | Err(_) => RECHECK,
            }
            .min(RECHECK);
            if sleep.is_zero() {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.cancelled() => break,
            }
        }
        while attempts.join_next().await.is_some() {}
        tracing::info!("webhook sender stopped");
    }

    /// One attempt of one claimed delivery, start to finish.
    async fn attempt(
        self: Arc<Self>,
        delivery: Delivery,
        endpoint: Lookup,
        _slot: OwnedSemaphorePermit,
    ) {
        let endpoint = match endpoint {
            Lookup::Known(endpoint) => Ok(Some(endpoint)),
            Lookup::Deleted => Ok(None),
            Lookup::Unknown => self
                .engine
                .endpoint(&delivery.endpoint_id)
                .await
                .map(|e| e.map(|e| Arc::new(Prepared::new(e, &self.allow)))),
        };
        let endpoint = match endpoint {
            Ok(Some(endpoint)) => endpoint,
            Ok(None) => {
                self.record_without_request(&delivery, "the endpoint was deleted")
                    .await;
                return;
            }
            Err(e) => {
                Metrics::inc(&self.metrics.webhook_sender_errors);
                tracing::warn!(error = %e, delivery_id = %delivery.id, "webhook sender: reading the endpoint failed; the delivery is taken again after its lease");
                return;
            }
        };
        if !endpoint.enabled {
            let reason = endpoint
                .disabled_reason
                .as_deref()
                .unwrap_or("disabled")
                .to_string();
            self.record_without_request(&delivery, &format!("the endpoint is disabled: {reason}"))
                .await;
            return;
        }
        let limiter = self.limiters.get(
            &endpoint.id,
            endpoint.max_in_flight.unwrap_or(self.config.max_in_flight),
            endpoint
                .rate_limit_per_second
                .unwrap_or(self.config.rate_limit_per_second),
        );
        let _in_flight = match limiter.try_start() {
            Ok(permit) => permit,
            Err(wait) => {
                self.defer(&delivery, wait).await;
                return;
            }
        };
        let started_ms = now_millis();
        let started = Instant::now();
        let (result, status_code, error, response) = self.send(&endpoint, &delivery).await;
        let attempt = Attempt {
            number: delivery.attempts + 1,
            at_ms: started_ms,
            status_code,
            latency_ms: started.elapsed().as_millis() as u64,
            error,
            response,
        };
        let outcome = retry::outcome(
            &self.config,
            attempt.number,
            &result,
            now_millis(),
            rand::random::<f64>(),
        );
        self.finish(&delivery, &endpoint, &attempt, &outcome).await;
    }

    /// Signs and sends; returns the result for the schedule and what the attempt log keeps.
    async fn send(
        &self,
        endpoint: &Prepared,
        delivery: &Delivery,
    ) -> (AttemptResult, Option<u16>, Option<String>, String) {
        Metrics::inc(&self.metrics.webhook_attempts);
        let url = match &endpoint.target {
            Ok(url) => url.clone(),
            Err(e) => {
                return (
                    AttemptResult::Refused,
                    None,
                    Some(format!("destination refused: {e}")),
                    String::new(),
                );
            }
        };
        if endpoint.keys.is_empty() {
            return (
                AttemptResult::Error,
                None,
                Some("the endpoint has no usable signing secret".into()),
                String::new(),
            );
        }
        let now = now_millis();
        let timestamp = (now / 1000) as i64;
        let signature = signature::sign(
            &endpoint.keys,
            &delivery.id,
            timestamp,
            delivery.body.as_bytes(),
        );
        let sent = self
            .client
            .post(url)
            .header("webhook-id", &delivery.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header(CONTENT_TYPE, "application/json")
            .body(delivery.body.clone())
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(e) => {
                let result = if e.is_timeout() {
                    AttemptResult::Timeout
                } else if ssrf::is_blocked_error(&e) {
                    AttemptResult::Refused
                } else {
                    AttemptResult::Error
                };
                return (result, None, Some(error_chain(&e)), String::new());
            }
        };
        let code = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry::parse_retry_after(v, SystemTime::now()));
        let mut kept = Vec::new();
        let mut error = None;
        while kept.len() < RESPONSE_KEEP_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => {
                    error = Some(format!("reading the response: {}", error_chain(&e)));
                    break;
                }
            }
        }
        kept.truncate(RESPONSE_KEEP_BYTES);
        let result = if response.status().is_success() {
            AttemptResult::Success
        } else {
            AttemptResult::Status { code, retry_after }
        };
        (
            result,
            Some(code),
            error,
            String::from_utf8_lossy(&kept).into_owned(),
        )
    }

    async fn finish(
        &self,
        delivery: &Delivery,
        endpoint: &Endpoint,
        attempt: &Attempt,
        outcome: &AttemptOutcome,
    ) {
        let health = match self
            .engine
            .finish_attempt(&delivery.id, attempt, outcome, self.config.disable_after)
            .await
        {
            Ok(health) => health,
            Err(e) => {
                Metrics::inc(&self.metrics.webhook_sender_errors);
                tracing::warn!(error = %e, delivery_id = %delivery.id, "webhook sender: recording the attempt failed; the delivery is taken again after its lease");
                return;
            }
        };
        match outcome {
            AttemptOutcome::Succeeded => Metrics::inc(&self.metrics.webhook_succeeded),
            AttemptOutcome::RetryAt(at) => {
                Metrics::inc(&self.metrics.webhook_retried);
                // A retry sooner than the loop's next check must wake it.
                if at.saturating_sub(now_millis()) < RECHECK.as_millis() as u64 {
                    self.wake.notify_one();
                }
            }
            AttemptOutcome::Failed | AttemptOutcome::Gone(_) => {
                Metrics::inc(&self.metrics.webhook_failed)
            }
        }
        tracing::debug!(delivery_id = %delivery.id, endpoint_id = %endpoint.id, attempt = attempt.number,
            status = ?attempt.status_code, ?outcome, "webhook attempt");
        if let EndpointHealth::Disabled { reason } = health {
            // The reason stays on the endpoint (`disabledReason`); the `endpoint.disabled`
            // notice goes to the owner's other endpoints and the admin endpoints.
            Metrics::inc(&self.metrics.webhook_endpoints_disabled);
            tracing::warn!(notice = "endpoint.disabled", endpoint_id = %endpoint.id,
                partner_id = endpoint.partner_id.as_deref().unwrap_or(""), %reason,
                "webhook endpoint disabled");
            self.limiters.forget(&endpoint.id);
            self.announce_disabled(endpoint, &reason).await;
        }
    }

    /// Enqueues the `endpoint.disabled` notice; a failure loses only the notice (the endpoint
    /// is disabled already and says why).
    async fn announce_disabled(&self, endpoint: &Endpoint, reason: &str) {
        match operational::enqueue_endpoint_disabled(&*self.engine, endpoint, reason, now_millis())
            .await
        {
            Ok(true) => self.wake.notify_one(),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, endpoint_id = %endpoint.id, "endpoint.disabled notice not sent: engine unavailable");
            }
        }
    }

    /// Records a failed attempt that sent nothing (the endpoint is gone or disabled).
    async fn record_without_request(&self, delivery: &Delivery, why: &str) {
        let attempt = Attempt {
            number: delivery.attempts + 1,
            at_ms: now_millis(),
            status_code: None,
            latency_ms: 0,
            error: Some(why.to_string()),
            response: String::new(),
        };
        if let Err(e) = self
            .engine
            .finish_attempt(
                &delivery.id,
                &attempt,
                &AttemptOutcome::Failed,
                self.config.disable_after,
            )
            .await
        {
            Metrics::inc(&self.metrics.webhook_sender_errors);
            tracing::warn!(error = %e, delivery_id = %delivery.id, "webhook sender: recording a failed delivery failed");
        } else {
            Metrics::inc(&self.metrics.webhook_failed);
        }
    }

    /// Puts a delivery back on the schedule after `wait`, without counting an attempt.
    async fn defer(&self, delivery: &Delivery, wait: Duration) {
        Metrics::inc(&self.metrics.webhook_deferred);
        let at = now_millis() + wait.as_millis() as u64;
        match self.engine.retry_delivery(&delivery.id, at).await {
            Ok(_) => self.wake.notify_one(),
            Err(e) => {
                Metrics::inc(&self.metrics.webhook_sender_errors);
                tracing::warn!(error = %e, delivery_id = %delivery.id, "webhook sender: deferring failed; the delivery is taken again after its lease");
            }
        }
    }
}

/// An error with its sources (`error sending request: connection refused`), which is what
/// an operator reading the attempt log needs.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
