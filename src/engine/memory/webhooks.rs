//! The webhook store in the memory engine (DESIGN 1.5): endpoints, deliveries with their
//! attempt logs, the retry schedule and the dispatch group, kept with the same orderings the
//! Redis engine's sorted sets give.
//!
//! Times come from the caller, so both engines agree under test. It never decides delivery
//! policy (what is due when, what disables an endpoint): it only keeps the store's rules.

use super::{MemoryEngine, State};
use crate::engine::webhook::*;
use crate::engine::{EngineResult, decode_event};
use crate::model::{EventId, now_millis};
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::time::Duration;
use tokio::time::Instant;

/// Endpoints, deliveries, the retry schedule and the dispatch group (DESIGN 1.5), kept with
/// the same orderings the Redis engine's sorted sets give.
#[derive(Default)]
pub(super) struct WebhookState {
    /// By id: listing order is id order, as on Redis.
    endpoints: BTreeMap<String, Endpoint>,
    /// Moves forward with every endpoint write (see `WebhookStore::endpoints_version`).
    endpoints_version: u64,
    deliveries: HashMap<String, StoredDelivery>,
    /// Per endpoint, every delivery as `(created_at_ms, id)`: newest-first listing.
    by_endpoint: HashMap<String, BTreeSet<(u64, String)>>,
    /// Per endpoint, the failed deliveries as `(created_at_ms, id)`: recovery by time.
    failed: HashMap<String, BTreeSet<(u64, String)>>,
    /// The retry schedule, `(due ms, delivery id)`; `due` finds a delivery's entry.
    schedule: BTreeSet<(u64, String)>,
    due: HashMap<String, u64>,
    /// Per (endpoint, order), the pending deliveries to a `perOrder` endpoint as
    /// `(version, id)`: only the first one is scheduled; the others wait (see [`OrderLine`]).
    lines: HashMap<(String, String), BTreeSet<(u64, String)>>,
    /// The dispatch group: the newest log entry handed out...
    dispatched_up_to: EventId,
    /// ...and the entries handed out and not acknowledged, with when they were handed out
    /// (which consumer holds one does not matter: any consumer may take it over).
    unacked: BTreeMap<EventId, Instant>,
    /// Entries trimmed from the log before the dispatch group read them, not yet reported.
    unread_trimmed: u64,
    /// The gaps reported, oldest first, at most [`LOST_RANGES_KEPT`].
    lost: VecDeque<LostEvents>,
}

struct StoredDelivery {
    delivery: Delivery,
    /// Oldest first, at most [`ATTEMPTS_KEPT`].
    attempts: VecDeque<Attempt>,
}

impl WebhookState {
    /// Called by the log for each entry its retention trims: one the dispatch group has not
    /// read yet is lost to webhooks, and the next claim reports it.
    pub(super) fn note_trimmed(&mut self, id: EventId) {
        if id > self.dispatched_up_to {
            self.unread_trimmed += 1;
        }
    }

    /// Stores each delivery whose id is new and schedules it (a `Pending` one without a time
    /// is due at its creation); a known id is left exactly as it is.
    /// Returns how many were made to wait behind their order's line.
    fn store_deliveries(&mut self, deliveries: &[Delivery]) -> usize {
        let mut held = 0;
        for delivery in deliveries {
            if self.deliveries.contains_key(&delivery.id) {
                continue;
            }
            let mut delivery = delivery.clone();
            if delivery.state == DeliveryState::Pending {
                let at_ms = delivery
                    .next_attempt_at_ms
                    .unwrap_or(delivery.created_at_ms);
                if self.join_line(&delivery) {
                    delivery.next_attempt_at_ms = Some(at_ms);
                    self.schedule_at(&delivery.id, at_ms);
                } else {
                    delivery.next_attempt_at_ms = None;
                    held += 1;
                }
            } else {
                delivery.next_attempt_at_ms = None;
            }
            self.index_failed(&delivery);
            self.by_endpoint
                .entry(delivery.endpoint_id.clone())
                .or_default()
                .insert((delivery.created_at_ms, delivery.id.clone()));
            self.deliveries.insert(
                delivery.id.clone(),
                StoredDelivery {
                    delivery,
                    attempts: VecDeque::new(),
                },
            );
        }
        held
    }

    /// Puts a pending delivery in its order's line; whether it may be scheduled: it is
    /// unordered, or the line was empty (it is the head). An ordered one already in the line
    /// is the head when it is the one scheduled.
    fn join_line(&mut self, delivery: &Delivery) -> bool {
        let Some(line) = &delivery.order_line else {
            return true;
        };
        let members = self
            .lines
            .entry((delivery.endpoint_id.clone(), line.order_id.clone()))
            .or_default();
        let entry = (line.version, delivery.id.clone());
        if members.contains(&entry) {
            return self.due.contains_key(&delivery.id);
        }
        let head = members.is_empty();
        members.insert(entry);
        head
    }

    /// Takes an ended (succeeded or failed) delivery out of its order's line and schedules the
    /// line's next one (lowest version) at `at_ms`, unless one is scheduled already.
    fn leave_line(&mut self, delivery: &Delivery, at_ms: u64) {
        let Some(line) = &delivery.order_line else {
            return;
        };
        let key = (delivery.endpoint_id.clone(), line.order_id.clone());
        let Some(members) = self.lines.get_mut(&key) else {
            return;
        };
        members.remove(&(line.version, delivery.id.clone()));
        let Some((_, next)) = members.first().cloned() else {
            self.lines.remove(&key);
            return;
        };
        if members.iter().any(|(_, id)| self.due.contains_key(id)) {
            return;
        }
        self.schedule_at(&next, at_ms);
        if let Some(stored) = self.deliveries.get_mut(&next) {
            stored.delivery.next_attempt_at_ms = Some(at_ms);
        }
    }

    /// [`WebhookStore::ordered_turn`]'s second half: a claimed ordered delivery that is not
    /// the lowest version of its line gives its turn to the lowest (scheduled at `now_ms`) and
    /// waits.
    fn yield_to_lower_version(&mut self, delivery_id: &str, now_ms: u64) -> OrderedTurn {
        let Some(delivery) = self.deliveries.get(delivery_id).map(|s| s.delivery.clone()) else {
            return OrderedTurn::Ready;
        };
        let Some(line) = &delivery.order_line else {
            return OrderedTurn::Ready;
        };
        let key = (delivery.endpoint_id.clone(), line.order_id.clone());
        let Some((_, lowest)) = self.lines.get(&key).and_then(|m| m.first()).cloned() else {
            return OrderedTurn::Ready;
        };
        if lowest == delivery_id {
            return OrderedTurn::Ready;
        }
        self.unschedule(delivery_id);
        if let Some(stored) = self.deliveries.get_mut(delivery_id) {
            stored.delivery.next_attempt_at_ms = None;
        }
        self.schedule_at(&lowest, now_ms);
        if let Some(stored) = self.deliveries.get_mut(&lowest) {
            stored.delivery.next_attempt_at_ms = Some(now_ms);
        }
        OrderedTurn::Yielded
    }

    fn schedule_at(&mut self, delivery_id: &str, at_ms: u64) {
        self.unschedule(delivery_id);
        self.schedule.insert((at_ms, delivery_id.to_string()));
        self.due.insert(delivery_id.to_string(), at_ms);
    }

    fn unschedule(&mut self, delivery_id: &str) {
        if let Some(at_ms) = self.due.remove(delivery_id) {
            self.schedule.remove(&(at_ms, delivery_id.to_string()));
        }
    }

    /// Keeps the failed index in step with a delivery's state.
    fn index_failed(&mut self, delivery: &Delivery) {
        let entry = (delivery.created_at_ms, delivery.id.clone());
        if delivery.state == DeliveryState::Failed {
            self.failed
                .entry(delivery.endpoint_id.clone())
                .or_default()
                .insert(entry);
        } else if let Some(failed) = self.failed.get_mut(&delivery.endpoint_id) {
            failed.remove(&entry);
            if failed.is_empty() {
                self.failed.remove(&delivery.endpoint_id);
            }
        }
    }

    /// One attempt of [`WebhookStore::finish_attempts`].
    fn finish(
        &mut self,
        delivery_id: &str,
        attempt: &Attempt,
        outcome: &AttemptOutcome,
        disable_after: Duration,
    ) -> EndpointHealth {
        let now_ms = attempt.at_ms;
        {
            let w = self;
            let Some(stored) = w.deliveries.get_mut(delivery_id) else {
                return EndpointHealth::Unchanged;
            };
            stored.attempts.push_back(attempt.clone());
            while stored.attempts.len() > ATTEMPTS_KEPT {
                stored.attempts.pop_front();
            }
            let delivery = &mut stored.delivery;
            delivery.attempts = delivery.attempts.saturating_add(1);
            delivery.updated_at_ms = now_ms;
            delivery.last_status_code = attempt.status_code;
            let (state, next) = match outcome {
                AttemptOutcome::Succeeded => (DeliveryState::Succeeded, None),
                AttemptOutcome::RetryAt(at_ms) => (DeliveryState::Pending, Some(*at_ms)),
                AttemptOutcome::Failed | AttemptOutcome::Gone(_) => (DeliveryState::Failed, None),
            };
            delivery.state = state;
            delivery.next_attempt_at_ms = next;
            let delivery = delivery.clone();
            match next {
                Some(at_ms) => w.schedule_at(delivery_id, at_ms),
                None => {
                    w.unschedule(delivery_id);
                    w.leave_line(&delivery, now_ms);
                }
            }
            w.index_failed(&delivery);

            let Some(endpoint) = w.endpoints.get_mut(&delivery.endpoint_id) else {
                return EndpointHealth::Unchanged;
            };
            if matches!(outcome, AttemptOutcome::Succeeded) {
                endpoint.failing_since_ms = None;
                return EndpointHealth::Unchanged;
            }
            let since = *endpoint.failing_since_ms.get_or_insert(now_ms);
            let reason = match outcome {
                AttemptOutcome::Gone(reason) => Some(reason.clone()),
                _ if now_ms.saturating_sub(since) > duration_ms(disable_after) => {
                    Some(failing_too_long_reason(disable_after))
                }
                _ => None,
            };
            match reason {
                Some(reason) if endpoint.enabled => {
                    w.endpoints_version += 1;
                    endpoint.enabled = false;
                    endpoint.disabled_reason = Some(reason.clone());
                    endpoint.updated_at_ms = now_ms;
                    EndpointHealth::Disabled { reason }
                }
                _ => EndpointHealth::Unchanged,
            }
        }
    }

    /// Deletes one delivery record with its attempts and its places in the indexes and on the
    /// schedule.
    fn forget_delivery(&mut self, endpoint_id: &str, created_at_ms: u64, delivery_id: &str) {
        let entry = (created_at_ms, delivery_id.to_string());
        self.unschedule(delivery_id);
        // A swept line member may have been its line's scheduled head: the line's next one
        // is scheduled, or the rest of the line would wait for ever, then be swept unsent.
        // Lines of a deleted endpoint are only emptied.
        if let Some(stored) = self.deliveries.remove(delivery_id)
            && let Some(line) = &stored.delivery.order_line
        {
            if self.endpoints.contains_key(endpoint_id) {
                self.leave_line(&stored.delivery, now_millis());
            } else {
                let key = (endpoint_id.to_string(), line.order_id.clone());
                if let Some(members) = self.lines.get_mut(&key) {
                    members.remove(&(line.version, delivery_id.to_string()));
                    if members.is_empty() {
                        self.lines.remove(&key);
                    }
                }
            }
        }
        if let Some(all) = self.by_endpoint.get_mut(endpoint_id) {
            all.remove(&entry);
            if all.is_empty() {
                self.by_endpoint.remove(endpoint_id);
            }
        }
        if let Some(failed) = self.failed.get_mut(endpoint_id) {
            failed.remove(&entry);
            if failed.is_empty() {
                self.failed.remove(endpoint_id);
            }
        }
    }

    /// Makes a delivery pending and due at `at_ms` (manual retry, recovery).
    fn reschedule(&mut self, delivery_id: &str, at_ms: u64, now_ms: u64) -> bool {
        let Some(stored) = self.deliveries.get_mut(delivery_id) else {
            return false;
        };
        let delivery = &mut stored.delivery;
        delivery.state = DeliveryState::Pending;
        delivery.updated_at_ms = now_ms;
        let delivery = delivery.clone();
        self.index_failed(&delivery);
        // An ordered delivery goes back into its order's line: due at `at_ms` when it is the
        // head, else waiting for its turn.
        let head = self.join_line(&delivery);
        let next = head.then_some(at_ms);
        if let Some(stored) = self.deliveries.get_mut(delivery_id) {
            stored.delivery.next_attempt_at_ms = next;
        }
        if head {
            self.schedule_at(delivery_id, at_ms);
        }
        true
    }
}

/// An endpoint's secrets after a rotation to `secret`: the current one (the one without an
/// expiry, else the newest) keeps signing until `previous_expires_at_ms`; older ones stop.
fn rotated_secrets(
    secrets: &[EndpointSecret],
    secret: &str,
    previous_expires_at_ms: u64,
) -> Vec<EndpointSecret> {
    let previous = secrets
        .iter()
        .find(|s| s.expires_at_ms.is_none())
        .or_else(|| secrets.first())
        .map(|s| EndpointSecret {
            secret: s.secret.clone(),
            expires_at_ms: Some(previous_expires_at_ms),
        });
    std::iter::once(EndpointSecret {
        secret: secret.to_string(),
        expires_at_ms: None,
    })
    .chain(previous)
    .collect()
}

/// Whole milliseconds of a duration (saturating).
fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait]
impl WebhookStore for MemoryEngine {
    async fn put_endpoint(&self, endpoint: &Endpoint) -> EngineResult<()> {
        self.with_state(|state| {
            let w = &mut state.webhooks;
            let mut stored = endpoint.clone();
            if let Some(old) = w.endpoints.get(&endpoint.id) {
                if old.enabled == endpoint.enabled {
                    stored.disabled_reason = old.disabled_reason.clone();
                    stored.failing_since_ms = old.failing_since_ms;
                } else if !endpoint.enabled {
                    stored.failing_since_ms = old.failing_since_ms;
                } else {
                    stored.failing_since_ms = None;
                }
            }
            w.endpoints.insert(endpoint.id.clone(), stored);
            w.endpoints_version += 1;
        })
    }

    async fn create_endpoint(
        &self,
        endpoint: &Endpoint,
        max_per_partner: u32,
    ) -> EngineResult<EndpointCreation> {
        self.with_state(|state| {
            let w = &mut state.webhooks;
            if let Some(partner) = endpoint.partner_id.as_deref() {
                let count = w
                    .endpoints
                    .values()
                    .filter(|e| e.partner_id.as_deref() == Some(partner) && e.id != endpoint.id)
                    .count() as u64;
                if count >= u64::from(max_per_partner) {
                    return EndpointCreation::LimitReached { count };
                }
            }
            w.endpoints.insert(endpoint.id.clone(), endpoint.clone());
            w.endpoints_version += 1;
            EndpointCreation::Created
        })
    }

    async fn patch_endpoint(
        &self,
        id: &str,
        patch: &EndpointPatch,
    ) -> EngineResult<Option<Endpoint>> {
        // One lock for the read and the write: nothing written meanwhile is lost.
        self.with_state(|state| {
            let w = &mut state.webhooks;
            let endpoint = w.endpoints.get_mut(id)?;
            if let Some(url) = &patch.url {
                endpoint.url = url.clone();
            }
            if let Some(types) = &patch.event_types {
                endpoint.event_types = types.clone();
            }
            if let Some(description) = &patch.description {
                endpoint.description = description.clone();
            }
            if let Some(rate) = patch.rate_limit_per_second {
                endpoint.rate_limit_per_second = rate;
            }
            if let Some(in_flight) = patch.max_in_flight {
                endpoint.max_in_flight = in_flight;
            }
            if let Some(ordering) = patch.ordering {
                endpoint.ordering = ordering;
            }
            match patch.enabled {
                Some(true) if !endpoint.enabled => {
                    endpoint.enabled = true;
                    endpoint.disabled_reason = None;
                    endpoint.failing_since_ms = None;
                }
                Some(false) if endpoint.enabled => {
                    endpoint.enabled = false;
                    endpoint.disabled_reason = Some(DISABLED_BY_USER.to_string());
                }
                _ => {}
            }
            endpoint.updated_at_ms = patch.updated_at_ms;
            let out = endpoint.clone();
            w.endpoints_version += 1;
            Some(out)
        })
    }

    async fn rotate_secret(
        &self,
        id: &str,
        secret: &str,
        now_ms: u64,
        previous_expires_at_ms: u64,
    ) -> EngineResult<Option<Endpoint>> {
        self.with_state(|state| {
            let w = &mut state.webhooks;
            let endpoint = w.endpoints.get_mut(id)?;
            endpoint.secrets = rotated_secrets(&endpoint.secrets, secret, previous_expires_at_ms);
            endpoint.updated_at_ms = now_ms;
            let out = endpoint.clone();
            w.endpoints_version += 1;
            Some(out)
        })
    }

    async fn sweep_targets(&self) -> EngineResult<Vec<String>> {
        self.with_state(|state| {
            let w = &state.webhooks;
            let mut out: BTreeSet<String> = w.endpoints.keys().cloned().collect();
            out.extend(w.by_endpoint.keys().cloned());
            out.into_iter().collect()
        })
    }

    async fn sweep_deliveries(
        &self,
        endpoint_id: &str,
        created_before_ms: u64,
        max: usize,
    ) -> EngineResult<usize> {
        self.with_state(|state| {
            let w = &mut state.webhooks;
            let live = w.endpoints.contains_key(endpoint_id);
            let old: Vec<(u64, String)> = w
                .by_endpoint
                .get(endpoint_id)
                .map(|all| {
                    all.iter()
                        .take_while(|(created, _)| !live || *created < created_before_ms)
                        .take(max)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            for (created, id) in &old {
                w.forget_delivery(endpoint_id, *created, id);
            }
            old.len()
        })
    }

    async fn endpoint(&self, id: &str) -> EngineResult<Option<Endpoint>> {
        self.with_state(|state| state.webhooks.endpoints.get(id).cloned())
    }

    async fn endpoints(&self) -> EngineResult<Vec<Endpoint>> {
        self.with_state(|state| state.webhooks.endpoints.values().cloned().collect())
    }

    async fn endpoints_version(&self) -> EngineResult<u64> {
        self.with_state(|state| state.webhooks.endpoints_version)
    }

    async fn delete_endpoint(&self, id: &str) -> EngineResult<bool> {
        self.with_state(|state| {
            let w = &mut state.webhooks;
            if w.endpoints.remove(id).is_none() {
                return false;
            }
            w.endpoints_version += 1;
            let ids: Vec<String> = w
                .by_endpoint
                .get(id)
                .map(|all| all.iter().map(|(_, d)| d.clone()).collect())
                .unwrap_or_default();
            for delivery_id in ids {
                w.unschedule(&delivery_id);
            }
            w.lines.retain(|(endpoint, _), _| endpoint != id);
            true
        })
    }

    async fn claim_events(
        &self,
        _consumer: &str,
        max: usize,
        wait: Duration,
        reclaim_after: Duration,
    ) -> EngineResult<ClaimedEvents> {
        if max == 0 {
            return Ok(ClaimedEvents::default());
        }
        let deadline = Instant::now() + wait;
        loop {
            // Register interest before looking, so an append in between is not missed.
            let notified = self.events_appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Instant::now();
            let (batch, next_reclaim, lost) = self.with_state(|state| {
                let State {
                    events, webhooks, ..
                } = state;
                let position = |id: &EventId| {
                    let i = events.partition_point(|(e, _)| e < id);
                    events.get(i).filter(|(e, _)| e == id)
                };
                let mut batch = Vec::new();
                let mut next_reclaim: Option<Instant> = None;
                let mut trimmed = Vec::new();
                // Handed out long ago and never acknowledged: a consumer died with them.
                for (id, handed_out) in webhooks.unacked.iter_mut() {
                    let expires = *handed_out + reclaim_after;
                    if expires > now {
                        next_reclaim = Some(next_reclaim.map_or(expires, |n| n.min(expires)));
                        continue;
                    }
                    if batch.len() >= max {
                        continue;
                    }
                    match position(id) {
                        Some((id, raw)) => {
                            *handed_out = now;
                            batch.push(decode_event(0, id.to_string(), raw));
                        }
                        // Trimmed from the log meanwhile: nothing left to hand out.
                        None => trimmed.push(*id),
                    }
                }
                for id in trimmed {
                    webhooks.unacked.remove(&id);
                }
                // A gap before the entries never handed out: report it once.
                let mut lost = None;
                if webhooks.unread_trimmed > 0 {
                    let gap = LostEvents {
                        after_id: webhooks.dispatched_up_to.to_string(),
                        before_id: events
                            .front()
                            .map_or_else(|| "0-0".to_string(), |(id, _)| id.to_string()),
                        count: webhooks.unread_trimmed,
                        detected_at_ms: now_millis(),
                    };
                    webhooks.unread_trimmed = 0;
                    webhooks.lost.push_back(gap.clone());
                    while webhooks.lost.len() > LOST_RANGES_KEPT {
                        webhooks.lost.pop_front();
                    }
                    lost = Some(gap);
                }
                // Then entries never handed out.
                let start = events.partition_point(|(id, _)| *id <= webhooks.dispatched_up_to);
                for (id, raw) in events.range(start..).take(max - batch.len()) {
                    webhooks.dispatched_up_to = *id;
                    webhooks.unacked.insert(*id, now);
                    batch.push(decode_event(0, id.to_string(), raw));
                }
                (batch, next_reclaim, lost)
            })?;
            if !batch.is_empty() || lost.is_some() || now >= deadline {
                return Ok(ClaimedEvents {
                    entries: batch,
                    lost: lost.into_iter().collect(),
                });
            }
            let wake = next_reclaim.map_or(deadline, |n| n.min(deadline));
            let _ = tokio::time::timeout_at(wake, notified).await;
        }
    }

    async fn lost_events(&self) -> EngineResult<Vec<LostEvents>> {
        self.with_state(|state| state.webhooks.lost.iter().cloned().collect())
    }

    async fn create_deliveries(
        &self,
        events: &[(usize, EventId)],
        deliveries: &[Delivery],
    ) -> EngineResult<usize> {
        self.with_state(|state| {
            let held = state.webhooks.store_deliveries(deliveries);
            for (_, event) in events {
                state.webhooks.unacked.remove(event);
            }
            held
        })
    }

    async fn enqueue_deliveries(&self, deliveries: &[Delivery]) -> EngineResult<()> {
        self.with_state(|state| {
            state.webhooks.store_deliveries(deliveries);
        })
    }

    async fn claim_due(&self, now_ms: u64, max: usize, lease: Duration) -> EngineResult<DueBatch> {
        let leased_until = now_ms.saturating_add(duration_ms(lease));
        self.with_state(|state| {
            let w = &mut state.webhooks;
            let due: Vec<(u64, String)> = w
                .schedule
                .iter()
                .take_while(|(at_ms, _)| *at_ms <= now_ms)
                .take(max)
                .cloned()
                .collect();
            let mut out = DueBatch {
                endpoints_version: w.endpoints_version,
                due: Vec::with_capacity(due.len()),
            };
            for (due_ms, id) in due {
                let delivery = w
                    .deliveries
                    .get(&id)
                    .map(|s| &s.delivery)
                    .filter(|d| w.endpoints.contains_key(&d.endpoint_id))
                    .map(|d| DueDelivery {
                        id: d.id.clone(),
                        endpoint_id: d.endpoint_id.clone(),
                        attempts: d.attempts,
                        due_ms,
                        ordered_event_id: d.order_line.as_ref().map(|_| d.event_id.clone()),
                    });
                match delivery {
                    Some(delivery) => {
                        w.schedule_at(&id, leased_until);
                        out.due.push(delivery);
                    }
                    None => w.unschedule(&id),
                }
            }
            out
        })
    }

    async fn ordered_turn(
        &self,
        delivery_id: &str,
        event_id: &str,
        now_ms: u64,
    ) -> EngineResult<OrderedTurn> {
        let entry: Option<EventId> = event_id.parse().ok();
        self.with_state(|state| {
            let w = &mut state.webhooks;
            if let Some(entry) = entry
                && w.unacked.range(..entry).next().is_some()
            {
                return OrderedTurn::EarlierEventsPending;
            }
            w.yield_to_lower_version(delivery_id, now_ms)
        })
    }

    async fn delivery_bodies(&self, ids: &[String]) -> EngineResult<Vec<Option<String>>> {
        self.with_state(|state| {
            ids.iter()
                .map(|id| {
                    state
                        .webhooks
                        .deliveries
                        .get(id)
                        .map(|s| s.delivery.body.clone())
                })
                .collect()
        })
    }

    async fn next_due_ms(&self) -> EngineResult<Option<u64>> {
        self.with_state(|state| state.webhooks.schedule.first().map(|(at_ms, _)| *at_ms))
    }

    async fn finish_attempts(
        &self,
        finished: &[FinishedAttempt],
        disable_after: Duration,
    ) -> EngineResult<Vec<EndpointHealth>> {
        self.with_state(|state| {
            finished
                .iter()
                .map(|f| {
                    state
                        .webhooks
                        .finish(&f.delivery_id, &f.attempt, &f.outcome, disable_after)
                })
                .collect()
        })
    }

    async fn delivery(&self, id: &str) -> EngineResult<Option<Delivery>> {
        self.with_state(|state| {
            state
                .webhooks
                .deliveries
                .get(id)
                .map(|s| s.delivery.clone())
        })
    }

    async fn attempts(&self, delivery_id: &str) -> EngineResult<Vec<Attempt>> {
        self.with_state(|state| {
            state
                .webhooks
                .deliveries
                .get(delivery_id)
                .map(|s| s.attempts.iter().cloned().collect())
                .unwrap_or_default()
        })
    }

    async fn deliveries(
        &self,
        endpoint_id: &str,
        limit: usize,
        before_ms: Option<u64>,
    ) -> EngineResult<Vec<Delivery>> {
        self.with_state(|state| {
            let w = &state.webhooks;
            let Some(all) = w.by_endpoint.get(endpoint_id) else {
                return Vec::new();
            };
            // `(before, "")` sorts before every entry created at `before`.
            let upper = match before_ms {
                Some(before) => Bound::Excluded((before, String::new())),
                None => Bound::Unbounded,
            };
            all.range((Bound::Unbounded, upper))
                .rev()
                .filter_map(|(_, id)| w.deliveries.get(id).map(|s| s.delivery.clone()))
                .take(limit)
                .collect()
        })
    }

    async fn retry_delivery(&self, delivery_id: &str, at_ms: u64) -> EngineResult<bool> {
        let now_ms = now_millis();
        self.with_state(|state| state.webhooks.reschedule(delivery_id, at_ms, now_ms))
    }

    async fn recover_failed(
        &self,
        endpoint_id: &str,
        since_ms: u64,
        at_ms: u64,
    ) -> EngineResult<usize> {
        let now_ms = now_millis();
        self.with_state(|state| {
            let w = &mut state.webhooks;
            let ids: Vec<String> = w
                .failed
                .get(endpoint_id)
                .map(|failed| {
                    failed
                        .range((since_ms, String::new())..)
                        .map(|(_, id)| id.clone())
                        .collect()
                })
                .unwrap_or_default();
            ids.iter()
                .filter(|id| w.reschedule(id, at_ms, now_ms))
                .count()
        })
    }
}
