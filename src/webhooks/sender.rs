//! The sender: attempts due deliveries, precisely and concurrently.
//!
//! One loop per node sleeps until the engine's earliest due time (`next_due_ms`), woken early
//! by a local [`Notify`] when this node schedules something sooner and re-checking at least
//! every [`RECHECK`] for work other nodes scheduled. It claims what is due with a lease (a node
//! that dies mid-attempt leaves the delivery to be taken again when the lease ends) and runs
//! each attempt as its own task. A claim returns ids, endpoint ids, attempt counts and due
//! times only: bodies come from a bounded in-memory cache (this node's dispatcher hands over
//! the ones it creates), the unknown ones fetched in one round trip; the endpoints come from a cache checked against the endpoints version every
//! claim reports. Per-endpoint in-flight and rate limits are enforced here: a delivery that
//! cannot start within [`LOCAL_WAIT`] goes back on the schedule a little later without
//! counting an attempt, so a blackholed endpoint holds its own slots (and others' for at most
//! that long) and never starves anyone.
//!
//! Each attempt is signed (Standard Webhooks, every live secret), sent through the SSRF-guarded
//! client (checked again at connect time; redirects are not followed) and recorded with its
//! outcome by a flusher that records every attempt completed since its last flush in one
//! engine step (`finish_attempts`). This module never logs a secret or a body.

use crate::backoff::Backoff;
use crate::config::WebhooksConfig;
use crate::engine::Engine;
use crate::engine::webhook::{
    Attempt, AttemptOutcome, DueDelivery, Endpoint, EndpointHealth, FinishedAttempt, OrderedTurn,
};
use crate::metrics::Metrics;
use crate::model::now_millis;
use crate::webhooks::limits::Limiters;
use crate::webhooks::operational;
use crate::webhooks::retry::{self, AttemptResult};
use crate::webhooks::signature::{self, SigningKey};
use crate::webhooks::ssrf::{self, AllowList};
use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The longest the loop sleeps without asking the engine: work scheduled by other nodes (or
/// by a lease that ran out) is picked up at most this late.
pub const RECHECK: Duration = Duration::from_millis(500);
/// Attempts this node runs at once, all endpoints together.
const MAX_CONCURRENT_ATTEMPTS: usize = 256;
/// How soon an ordered delivery is looked at again while an earlier event of the log is still
/// being turned into deliveries (a dispatcher's step: milliseconds). Doubled at each recheck
/// of the same delivery up to [`ORDERED_RECHECK_MAX`]: an event held by a dispatcher that died
/// waits for its lease to run out, and its partition's ordered deliveries must not spin on the
/// engine meanwhile.
const ORDERED_RECHECK: Duration = Duration::from_millis(50);
const ORDERED_RECHECK_MAX: Duration = Duration::from_secs(5);
/// Deliveries claimed per engine call.
const CLAIM_BATCH: usize = 64;
/// How long a claimed delivery waits on this node for its endpoint's in-flight or rate limit
/// before it goes back on the schedule.
const LOCAL_WAIT: Duration = Duration::from_millis(250);
/// At most this many bytes of delivery bodies are kept in memory for retries.
const BODY_CACHE_BYTES: usize = 64 * 1024 * 1024;
/// At most this many delivery bodies are kept in memory for retries.
const BODY_CACHE_ENTRIES: usize = 100_000;
/// The part of a response body kept in the attempt log.
pub const RESPONSE_KEEP_BYTES: usize = 20 * 1024;

/// A response body as the attempt log keeps it: text of at most [`RESPONSE_KEEP_BYTES`].
/// Invalid UTF-8 becomes U+FFFD (three bytes per bad byte), so the text is cut again after the
/// conversion, at a character boundary: an attempt never keeps more whatever the endpoint
/// answers.
fn kept_response(body: &[u8]) -> String {
    let body = &body[..body.len().min(RESPONSE_KEEP_BYTES)];
    let mut text = String::from_utf8_lossy(body).into_owned();
    if text.len() > RESPONSE_KEEP_BYTES {
        let mut end = RESPONSE_KEEP_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// An endpoint with what every attempt to it needs, worked out once per claimed batch: the
/// destination checked against the SSRF rules and the live secrets parsed into keys.
struct Prepared {
    endpoint: Endpoint,
    target: Result<reqwest::Url, String>,
    keys: Vec<SigningKey>,
    /// When the first of `keys` expires (a rotated-out secret): the preparation is stale then.
    keys_expire_at_ms: Option<u64>,
}

impl Prepared {
    fn new(endpoint: Endpoint, allow: &AllowList) -> Prepared {
        // IP-literal URLs never reach the resolver: check them here too (and any URL that
        // was stored before the allow list changed).
        let target = reqwest::Url::parse(&endpoint.url)
            .map_err(|e| e.to_string())
            .and_then(|url| ssrf::check_url(&url, allow).map(|()| url));
        let now = now_millis();
        let live = || {
            endpoint
                .secrets
                .iter()
                .filter(move |s| s.expires_at_ms.is_none_or(|at| at > now))
        };
        let keys = live()
            .filter_map(|s| SigningKey::parse(&s.secret).ok())
            .collect();
        let keys_expire_at_ms = live().filter_map(|s| s.expires_at_ms).min();
        Prepared {
            endpoint,
            target,
            keys,
            keys_expire_at_ms,
        }
    }
}

impl std::ops::Deref for Prepared {
    type Target = Endpoint;
    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// A claimed delivery's endpoint, as cached.
enum Lookup {
    Known(Arc<Prepared>),
    Deleted,
    /// Reading the endpoints failed: read it for this attempt.
    Unknown,
}

/// The endpoints, prepared, as of an endpoints version (`claim_due` reports the current one
/// with every batch, so a change made by any node is seen by the next batch; no read of the
/// endpoints table per batch).
struct EndpointCache {
    version: u64,
    endpoints: HashMap<String, Arc<Prepared>>,
    /// The earliest time a prepared signing key expires: prepared again then.
    stale_at_ms: Option<u64>,
}

/// Delivery bodies this node knows, so a claim need not carry them: handed over by this node's
/// dispatcher when it creates the deliveries, else filled on first fetch; dropped when a
/// delivery is finished for good, and bounded (oldest first out) by [`BODY_CACHE_BYTES`] and
/// [`BODY_CACHE_ENTRIES`]. One per node, shared by its dispatcher and its sender.
#[derive(Default)]
pub struct DeliveryBodies {
    /// A `std` mutex: held for a map operation, never across an `.await`.
    cache: Mutex<BodyCache>,
}

impl DeliveryBodies {
    /// Remembers the body of a delivery just created (the exact bytes stored with it).
    pub fn remember(&self, id: String, body: Bytes) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(id, body);
        }
    }

    /// The body kept for a delivery, if any.
    pub fn get(&self, id: &str) -> Option<Bytes> {
        self.cache.lock().ok().and_then(|cache| cache.get(id))
    }
}

#[derive(Default)]
struct BodyCache {
    bodies: HashMap<String, Bytes>,
    /// Insertion order, for eviction (ids already dropped are skipped, and compacted away).
    order: VecDeque<String>,
    bytes: usize,
}

impl BodyCache {
    fn get(&self, id: &str) -> Option<Bytes> {
        self.bodies.get(id).cloned()
    }

    fn insert(&mut self, id: String, body: Bytes) {
        self.bytes += body.len();
        if let Some(old) = self.bodies.insert(id.clone(), body) {
            self.bytes -= old.len();
        } else {
            self.order.push_back(id);
        }
        while self.bytes > BODY_CACHE_BYTES || self.bodies.len() > BODY_CACHE_ENTRIES {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.remove(&oldest);
        }
        if self.order.len() > 2 * BODY_CACHE_ENTRIES {
            let bodies = &self.bodies;
            self.order.retain(|id| bodies.contains_key(id));
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some(body) = self.bodies.remove(id) {
            self.bytes -= body.len();
        }
    }
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
    bodies: Arc<DeliveryBodies>,
    /// Completed attempts on their way to the flusher (`flush_finished`), which `run` starts
    /// with the receiving end. At most one per attempt slot is ever queued: each attempt waits
    /// for its own to be recorded.
    finished: mpsc::Sender<Finished>,
    finished_queue: Mutex<Option<mpsc::Receiver<Finished>>>,
    /// Ordered deliveries deferred behind earlier events, with how many times in a row (the
    /// recheck's backoff); an entry goes when its delivery gets its turn or yields it.
    ordered_rechecks: Mutex<HashMap<String, u32>>,
}

/// A completed attempt and where to answer once it is recorded (`None`: it was not).
struct Finished {
    finished: FinishedAttempt,
    reply: oneshot::Sender<Option<EndpointHealth>>,
}

impl Sender {
    pub fn new(
        engine: Arc<dyn Engine>,
        config: WebhooksConfig,
        allow: Arc<AllowList>,
        client: reqwest::Client,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
        bodies: Arc<DeliveryBodies>,
    ) -> Arc<Sender> {
        let (finished, finished_queue) = mpsc::channel(MAX_CONCURRENT_ATTEMPTS);
        Arc::new(Sender {
            engine,
            config,
            allow,
            client,
            metrics,
            wake,
            limiters: Limiters::default(),
            slots: Arc::new(Semaphore::new(MAX_CONCURRENT_ATTEMPTS)),
            bodies,
            finished,
            finished_queue: Mutex::new(Some(finished_queue)),
            ordered_rechecks: Mutex::new(HashMap::new()),
        })
    }

    /// Runs until `shutdown`, then waits for the attempts in flight (the server bounds that
    /// wait by `http.shutdown_grace`; an attempt cut short is taken again after its lease).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        tracing::info!("webhook sender started");
        let mut attempts = JoinSet::new();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let mut cache: Option<EndpointCache> = None;
        let queue = self.finished_queue.lock().ok().and_then(|mut q| q.take());
        let Some(queue) = queue else {
            tracing::error!("webhook sender: already running");
            return;
        };
        // In a set of its own, so it is aborted whenever `run` ends, even when cut short.
        let mut flusher = JoinSet::new();
        flusher.spawn(self.clone().flush_finished(queue));
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
                    let full = batch.due.len() == free;
                    let endpoints = if batch.due.is_empty() {
                        None
                    } else {
                        self.refresh_endpoints(&mut cache, batch.endpoints_version)
                            .await;
                        cache.as_ref()
                    };
                    let bodies = self.bodies_for(&batch.due).await;
                    for (delivery, body) in batch.due.into_iter().zip(bodies) {
                        // No body: reading it failed (counted and logged); the lease brings
                        // the delivery back.
                        let Some(body) = body else { continue };
                        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                            // Cannot happen (we claimed no more than the free slots); the
                            // lease brings the delivery back.
                            continue;
                        };
                        if delivery.due_ms <= now {
                            self.metrics
                                .webhook_lateness
                                .observe(Duration::from_millis(now - delivery.due_ms));
                        }
                        let endpoint = match endpoints {
                            Some(known) => match known.endpoints.get(&delivery.endpoint_id) {
                                Some(e) => Lookup::Known(e.clone()),
                                None => Lookup::Deleted,
                            },
                            None => Lookup::Unknown,
                        };
                        attempts.spawn(self.clone().attempt(delivery, body, endpoint, slot));
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
        // Every attempt has its answer: nothing is left on its way to be recorded.
        flusher.abort_all();
        tracing::info!("webhook sender stopped");
    }

    /// Makes `cache` hold the endpoints as of `version` (the one the claim just reported),
    /// reading them again only when the version moved or a prepared signing key expired. On
    /// a failed read the cache is dropped, and each attempt reads its own endpoint.
    async fn refresh_endpoints(&self, cache: &mut Option<EndpointCache>, version: u64) {
        let now = now_millis();
        if cache
            .as_ref()
            .is_some_and(|c| c.version == version && c.stale_at_ms.is_none_or(|at| at > now))
        {
            return;
        }
        *cache = match self.engine.endpoints().await {
            Ok(all) => {
                let endpoints: HashMap<String, Arc<Prepared>> = all
                    .into_iter()
                    .map(|e| (e.id.clone(), Arc::new(Prepared::new(e, &self.allow))))
                    .collect();
                let stale_at_ms = endpoints.values().filter_map(|e| e.keys_expire_at_ms).min();
                Some(EndpointCache {
                    version,
                    endpoints,
                    stale_at_ms,
                })
            }
            Err(e) => {
                Metrics::inc(&self.metrics.webhook_sender_errors);
                tracing::warn!(error = %e, "webhook sender: reading the endpoints failed; each attempt reads its own");
                None
            }
        };
    }

    /// The bodies of a claimed batch, in its order: from the cache, the others fetched in one
    /// round trip (and cached). `None` where the fetch failed or the record is gone.
    async fn bodies_for(&self, due: &[DueDelivery]) -> Vec<Option<Bytes>> {
        let mut out: Vec<Option<Bytes>> = match self.bodies.cache.lock() {
            Ok(cache) => due.iter().map(|d| cache.get(&d.id)).collect(),
            Err(_) => vec![None; due.len()],
        };
        let unknown: Vec<String> = due
            .iter()
            .zip(&out)
            .filter(|(_, body)| body.is_none())
            .map(|(d, _)| d.id.clone())
            .collect();
        if unknown.is_empty() {
            return out;
        }
        let fetched = match self.engine.delivery_bodies(&unknown).await {
            Ok(fetched) => fetched,
            Err(e) => {
                Metrics::inc(&self.metrics.webhook_sender_errors);
                tracing::warn!(error = %e, "webhook sender: reading delivery bodies failed; the deliveries are taken again after their lease");
                return out;
            }
        };
        let mut fetched = unknown.into_iter().zip(fetched);
        let mut cache = self.bodies.cache.lock().ok();
        for slot in out.iter_mut().filter(|b| b.is_none()) {
            let Some((id, body)) = fetched.next() else {
                break;
            };
            let Some(body) = body else {
                tracing::warn!(delivery_id = %id, "webhook sender: a claimed delivery has no body; skipped");
                continue;
            };
            let body = Bytes::from(body);
            if let Some(cache) = cache.as_mut() {
                cache.insert(id, body.clone());
            }
            *slot = Some(body);
        }
        out
    }

    /// Hands a completed attempt to the flusher and waits until it is recorded: `None` when
    /// recording failed (counted and logged by the flusher).
    async fn record(&self, finished: FinishedAttempt) -> Option<EndpointHealth> {
        let (reply, recorded) = oneshot::channel();
        self.finished
            .send(Finished { finished, reply })
            .await
            .ok()?;
        recorded.await.ok().flatten()
    }

    /// Records the attempts completed since the last flush in one engine call
    /// (`finish_attempts`), as long as the sender runs: under load, attempts that end while a
    /// flush is on its way are recorded together by the next one; when idle, an attempt is
    /// recorded at once.
    async fn flush_finished(self: Arc<Self>, mut queue: mpsc::Receiver<Finished>) {
        let mut batch = Vec::with_capacity(MAX_CONCURRENT_ATTEMPTS);
        while queue.recv_many(&mut batch, MAX_CONCURRENT_ATTEMPTS).await > 0 {
            let (finished, replies): (Vec<FinishedAttempt>, Vec<_>) =
                batch.drain(..).map(|f| (f.finished, f.reply)).unzip();
            match self
                .engine
                .finish_attempts(&finished, self.config.disable_after)
                .await
            {
                Ok(healths) => {
                    for (reply, health) in replies.into_iter().zip(healths) {
                        let _ = reply.send(Some(health));
                    }
                }
                Err(e) => {
                    Metrics::inc(&self.metrics.webhook_sender_errors);
                    tracing::warn!(error = %e, attempts = finished.len(), "webhook sender: recording attempts failed; the deliveries are taken again after their lease");
                    for reply in replies {
                        let _ = reply.send(None);
                    }
                }
            }
        }
    }

    /// Forgets the body of a delivery finished for good.
    fn forget_body(&self, id: &str) {
        if let Ok(mut cache) = self.bodies.cache.lock() {
            cache.remove(id);
        }
    }

    /// The wait before an ordered delivery's next look at its turn: [`ORDERED_RECHECK`],
    /// doubled at each recheck in a row, at most [`ORDERED_RECHECK_MAX`].
    fn ordered_recheck_delay(&self, delivery_id: &str) -> Duration {
        let Ok(mut rechecks) = self.ordered_rechecks.lock() else {
            return ORDERED_RECHECK;
        };
        // A delivery another node took over leaves its entry here: the map is bounded by
        // starting over (its deliveries then recheck early once more).
        if rechecks.len() >= 10_000 && !rechecks.contains_key(delivery_id) {
            rechecks.clear();
        }
        let n = rechecks.entry(delivery_id.to_string()).or_insert(0);
        let delay = ORDERED_RECHECK
            .saturating_mul(1u32 << (*n).min(16))
            .min(ORDERED_RECHECK_MAX);
        *n = n.saturating_add(1);
        delay
    }

    /// One attempt of one claimed delivery, start to finish.
    async fn attempt(
        self: Arc<Self>,
        delivery: DueDelivery,
        body: Bytes,
        endpoint: Lookup,
        _slot: OwnedSemaphorePermit,
    ) {
        if let Some(event_id) = &delivery.ordered_event_id {
            let turn = self
                .engine
                .ordered_turn(&delivery.id, event_id, now_millis())
                .await;
            if !matches!(turn, Ok(OrderedTurn::EarlierEventsPending))
                && let Ok(mut rechecks) = self.ordered_rechecks.lock()
            {
                rechecks.remove(&delivery.id);
            }
            match turn {
                Ok(OrderedTurn::Ready) => {}
                Ok(OrderedTurn::EarlierEventsPending) => {
                    // An earlier event (maybe of this order) is still being turned into
                    // deliveries by a dispatcher: look again shortly, then less and less often.
                    let delay = self.ordered_recheck_delay(&delivery.id);
                    self.defer(&delivery, delay).await;
                    return;
                }
                Ok(OrderedTurn::Yielded) => {
                    self.wake.notify_one();
                    return;
                }
                Err(e) => {
                    Metrics::inc(&self.metrics.webhook_sender_errors);
                    tracing::warn!(error = %e, delivery_id = %delivery.id, "webhook sender: checking an ordered delivery's turn failed; the delivery is taken again after its lease");
                    return;
                }
            }
        }
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
        // A claimed batch often holds more deliveries for one endpoint than its
        // `max_in_flight`: the extra ones start as the first finish, instead of each going back
        // to the schedule (an engine call) and being claimed again (another). The wait is
        // bounded, so a blackholed endpoint's backlog leaves the attempt slots soon.
        let in_flight = match limiter.start_within(LOCAL_WAIT).await {
            Ok(permit) => permit,
            Err(wait) => {
                self.defer(&delivery, wait).await;
                return;
            }
        };
        let started_ms = now_millis();
        let started = Instant::now();
        let (result, status_code, error, response) = self.send(&endpoint, &delivery.id, body).await;
        // The endpoint's turn ends with its request: recording the outcome (which waits for
        // the flusher's next engine call) is this node's work, not the endpoint's.
        drop(in_flight);
        let attempt = Attempt {
            number: delivery.attempts + 1,
            at_ms: started_ms,
            status_code,
            latency_ms: started.elapsed().as_millis() as u64,
            error,
            response,
        };
        // The attempt's end rounded up to the next millisecond: a wait counted from it (the
        // schedule, a `Retry-After`) is never early by the fraction the clock dropped.
        let outcome = retry::outcome(
            &self.config,
            attempt.number,
            &result,
            now_millis() + 1,
            rand::random::<f64>(),
        );
        self.finish(&delivery, &endpoint, &attempt, &outcome).await;
    }

    /// Signs and sends; returns the result for the schedule and what the attempt log keeps.
    async fn send(
        &self,
        endpoint: &Prepared,
        delivery_id: &str,
        body: Bytes,
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
        let signature = signature::sign(&endpoint.keys, delivery_id, timestamp, &body);
        let sent = self
            .client
            .post(url)
            .header("webhook-id", delivery_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
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
        (result, Some(code), error, kept_response(&kept))
    }

    async fn finish(
        &self,
        delivery: &DueDelivery,
        endpoint: &Endpoint,
        attempt: &Attempt,
        outcome: &AttemptOutcome,
    ) {
        let finished = FinishedAttempt {
            delivery_id: delivery.id.clone(),
            attempt: attempt.clone(),
            outcome: outcome.clone(),
        };
        // Not recorded (the flush failed; counted and logged there): the lease brings it back.
        let Some(health) = self.record(finished).await else {
            return;
        };
        if !matches!(outcome, AttemptOutcome::RetryAt(_)) {
            self.forget_body(&delivery.id);
        }
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
    async fn record_without_request(&self, delivery: &DueDelivery, why: &str) {
        let attempt = Attempt {
            number: delivery.attempts + 1,
            at_ms: now_millis(),
            status_code: None,
            latency_ms: 0,
            error: Some(why.to_string()),
            response: String::new(),
        };
        let finished = FinishedAttempt {
            delivery_id: delivery.id.clone(),
            attempt,
            outcome: AttemptOutcome::Failed,
        };
        if self.record(finished).await.is_some() {
            self.forget_body(&delivery.id);
            Metrics::inc(&self.metrics.webhook_failed);
        }
    }

    /// Puts a delivery back on the schedule after `wait`, without counting an attempt.
    async fn defer(&self, delivery: &DueDelivery, wait: Duration) {
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
/// an operator reading the attempt log needs (the workflow's calls report theirs the same way).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_responses_stay_within_20_kb_even_when_not_utf8() {
        assert_eq!(kept_response(b"oops"), "oops");
        let ascii = vec![b'x'; RESPONSE_KEEP_BYTES + 100];
        assert_eq!(kept_response(&ascii).len(), RESPONSE_KEEP_BYTES);
        // Every byte invalid: each would become three bytes of U+FFFD.
        let invalid = vec![0xffu8; RESPONSE_KEEP_BYTES];
        let kept = kept_response(&invalid);
        assert!(kept.len() <= RESPONSE_KEEP_BYTES, "{}", kept.len());
        assert!(kept.chars().all(|c| c == char::REPLACEMENT_CHARACTER));
        // A multi-byte character across the limit is dropped whole.
        let mut split = vec![b'x'; RESPONSE_KEEP_BYTES - 1];
        split.extend("é".as_bytes());
        assert_eq!(kept_response(&split).len(), RESPONSE_KEEP_BYTES - 1);
    }

    #[test]
    fn body_cache_keeps_bodies_until_forgotten_and_stays_within_its_bounds() {
        let mut cache = BodyCache::default();
        cache.insert("msg_1".into(), Bytes::from_static(b"one"));
        cache.insert("msg_2".into(), Bytes::from_static(b"two"));
        assert_eq!(cache.get("msg_1"), Some(Bytes::from_static(b"one")));
        cache.remove("msg_1");
        assert_eq!(cache.get("msg_1"), None);
        assert_eq!(cache.bytes, 3);

        // Over the entry bound: the oldest go first.
        for i in 0..BODY_CACHE_ENTRIES + 10 {
            cache.insert(format!("m{i}"), Bytes::from_static(b"x"));
        }
        assert_eq!(cache.bodies.len(), BODY_CACHE_ENTRIES);
        assert_eq!(cache.get("msg_2"), None);
        assert_eq!(cache.get("m0"), None);
        assert!(cache.get(&format!("m{}", BODY_CACHE_ENTRIES + 9)).is_some());
        assert!(cache.order.len() <= 2 * BODY_CACHE_ENTRIES);

        // Over the byte bound: one big body pushes the others out.
        let big = Bytes::from(vec![b'b'; BODY_CACHE_BYTES]);
        cache.insert("big".into(), big.clone());
        assert_eq!(cache.get("big"), Some(big));
        assert_eq!(cache.bodies.len(), 1);
        assert_eq!(cache.bytes, BODY_CACHE_BYTES);
    }

    #[test]
    fn dropped_ids_do_not_grow_the_eviction_order_without_bound() {
        let mut cache = BodyCache::default();
        for i in 0..3 * BODY_CACHE_ENTRIES {
            let id = format!("m{i}");
            cache.insert(id.clone(), Bytes::from_static(b"x"));
            cache.remove(&id);
        }
        assert!(cache.order.len() <= 2 * BODY_CACHE_ENTRIES + 1);
        assert_eq!(cache.bytes, 0);
    }
}
