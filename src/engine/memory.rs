//! The embedded engine: all state in this process, nothing to install, lost on exit.
//!
//! It keeps the exact semantics of the Redis engine (same event ids, same queue rules, same
//! outcomes) so that one conformance suite covers both. All state sits behind one
//! `std::sync::Mutex`: no `.await` ever happens while it is held and every critical section is
//! a few map operations, so a Tokio mutex would only add cost. Waiters (receivers, event
//! readers) park on `Notify`s instead of polling.

use super::webhook::*;
use super::*;
use crate::model::{
    EventId, HistoryEntry, MalformedEntry, Order, OrderEvent, OrderRecord, StatusRecord,
    now_millis, now_rfc3339,
};
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

pub struct MemoryEngine {
    settings: EngineSettings,
    state: Mutex<State>,
    /// Woken when a command becomes receivable (enqueued, released, redriven).
    commands_ready: Notify,
    /// Woken when an event is appended.
    events_appended: Notify,
}

#[derive(Default)]
struct State {
    /// Boxed: when the map grows it rehashes by moving entries, and moving a pointer instead
    /// of a whole order keeps that pause short with millions of orders.
    orders: HashMap<String, Box<StoredOrder>>,
    events: VecDeque<(EventId, String)>,
    last_event_id: EventId,
    /// The command queue in arrival order, keyed by a sequence number (the receipt).
    messages: BTreeMap<u64, QueuedMessage>,
    next_message_seq: u64,
    /// Per-order FIFO gate: ids of each order's commands not yet completed, oldest first.
    pending_by_order: HashMap<String, VecDeque<String>>,
    dead_letters: VecDeque<DeadLetter>,
    idempotency: HashMap<String, (IdempotencyRecord, Instant)>,
    /// Keys in the order they expire (every key of one kind has the same TTL class, so
    /// insertion order is close to expiry order; stale entries are skipped on sweep).
    idempotency_expiry: VecDeque<(Instant, String)>,
    malformed: BTreeMap<EventId, MalformedEntry>,
    webhooks: WebhookState,
}

/// Endpoints, deliveries, the retry schedule and the dispatch group (DESIGN 1.5), kept with
/// the same orderings the Redis engine's sorted sets give.
#[derive(Default)]
struct WebhookState {
    /// By id: listing order is id order, as on Redis.
    endpoints: BTreeMap<String, Endpoint>,
    deliveries: HashMap<String, StoredDelivery>,
    /// Per endpoint, every delivery as `(created_at_ms, id)`: newest-first listing.
    by_endpoint: HashMap<String, BTreeSet<(u64, String)>>,
    /// Per endpoint, the failed deliveries as `(created_at_ms, id)`: recovery by time.
    failed: HashMap<String, BTreeSet<(u64, String)>>,
    /// The retry schedule, `(due ms, delivery id)`; `due` finds a delivery's entry.
    schedule: BTreeSet<(u64, String)>,
    due: HashMap<String, u64>,
    /// The dispatch group: the newest log entry handed out...
    dispatched_up_to: EventId,
    /// ...and the entries handed out and not acknowledged, with when they were handed out
    /// (which consumer holds one does not matter: any consumer may take it over).
    unacked: BTreeMap<EventId, Instant>,
}

struct StoredDelivery {
    delivery: Delivery,
    /// Oldest first, at most [`ATTEMPTS_KEPT`].
    attempts: VecDeque<Attempt>,
}

struct StoredOrder {
    order: Order,
    status: StatusRecord,
    history: VecDeque<HistoryEntry>,
}

struct QueuedMessage {
    message: NewCommand,
    receive_count: u32,
    invisible_until: Option<Instant>,
}

#[derive(Clone)]
enum IdempotencyRecord {
    InFlight { fingerprint: String },
    Done(IdempotentResponse),
}

fn lock_poisoned() -> EngineError {
    EngineError::Corrupt("memory engine state lock poisoned by a panic".into())
}

impl MemoryEngine {
    pub fn new(settings: EngineSettings) -> Self {
        MemoryEngine {
            settings,
            state: Mutex::new(State::default()),
            commands_ready: Notify::new(),
            events_appended: Notify::new(),
        }
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> EngineResult<T> {
        let mut guard = self.state.lock().map_err(|_| lock_poisoned())?;
        Ok(f(&mut guard))
    }
}

impl State {
    fn append_event(&mut self, raw: String, retention: u64) -> EventId {
        let now = now_millis();
        let id = if now > self.last_event_id.ms {
            EventId { ms: now, seq: 0 }
        } else {
            EventId {
                ms: self.last_event_id.ms,
                seq: self.last_event_id.seq + 1,
            }
        };
        self.last_event_id = id;
        self.events.push_back((id, raw));
        while self.events.len() as u64 > retention.max(1) {
            self.events.pop_front();
        }
        id
    }

    fn enqueue(&mut self, message: NewCommand, receive_count: u32) {
        let seq = self.next_message_seq;
        self.next_message_seq += 1;
        self.pending_by_order
            .entry(message.order_id.clone())
            .or_default()
            .push_back(message.message_id.clone());
        self.messages.insert(
            seq,
            QueuedMessage {
                message,
                receive_count,
                invisible_until: None,
            },
        );
    }

    fn forget_pending(&mut self, order_id: &str, message_id: &str) {
        if let Some(queue) = self.pending_by_order.get_mut(order_id) {
            queue.retain(|id| id != message_id);
            if queue.is_empty() {
                self.pending_by_order.remove(order_id);
            }
        }
    }

    fn remember(&mut self, response: &IdempotentResponse) {
        let expires = Instant::now() + response.ttl;
        self.idempotency.insert(
            response.key.clone(),
            (IdempotencyRecord::Done(response.clone()), expires),
        );
        self.idempotency_expiry
            .push_back((expires, response.key.clone()));
    }

    fn sweep_idempotency(&mut self, now: Instant) {
        while let Some((expires, _)) = self.idempotency_expiry.front() {
            if *expires > now {
                break;
            }
            if let Some((_, key)) = self.idempotency_expiry.pop_front()
                && self
                    .idempotency
                    .get(&key)
                    .is_some_and(|(_, until)| *until <= now)
            {
                self.idempotency.remove(&key);
            }
        }
    }

    fn history_entry(
        event_id: EventId,
        change: &OrderEvent,
        reason: Option<String>,
    ) -> HistoryEntry {
        HistoryEntry {
            event_id: event_id.to_string(),
            status: change.status,
            previous_status: change.previous_status,
            version: change.version,
            occurred_at: change.occurred_at.clone(),
            reason,
        }
    }
}

impl WebhookState {
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

    /// Makes a delivery pending and due at `at_ms` (manual retry, recovery).
    fn reschedule(&mut self, delivery_id: &str, at_ms: u64, now_ms: u64) -> bool {
        let Some(stored) = self.deliveries.get_mut(delivery_id) else {
            return false;
        };
        let delivery = &mut stored.delivery;
        delivery.state = DeliveryState::Pending;
        delivery.next_attempt_at_ms = Some(at_ms);
        delivery.updated_at_ms = now_ms;
        let delivery = delivery.clone();
        self.index_failed(&delivery);
        self.schedule_at(delivery_id, at_ms);
        true
    }
}

/// Whole milliseconds of a duration (saturating).
fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait]
impl OrderStore for MemoryEngine {
    async fn accept_order(
        &self,
        order: &Order,
        accepted_event: &OrderEvent,
        command: &NewCommand,
        idempotent: Option<&IdempotentResponse>,
    ) -> EngineResult<AcceptOutcome> {
        let retention = self.settings.event_retention;
        let outcome = self.with_state(|state| {
            if state.orders.contains_key(&order.order_id) {
                return AcceptOutcome::AlreadyExists;
            }
            let event_id = state.append_event(accepted_event.to_json(), retention);
            let status = StatusRecord {
                order_id: order.order_id.clone(),
                customer_id: order.customer_id.clone(),
                partner_id: order.partner_id.clone(),
                status: accepted_event.status,
                version: accepted_event.version,
                updated_at: accepted_event.occurred_at.clone(),
            };
            let history = VecDeque::from([State::history_entry(event_id, accepted_event, None)]);
            state.orders.insert(
                order.order_id.clone(),
                Box::new(StoredOrder {
                    order: order.clone(),
                    status,
                    history,
                }),
            );
            state.enqueue(command.clone(), 0);
            if let Some(response) = idempotent {
                state.remember(response);
            }
            AcceptOutcome::Accepted { event_id }
        })?;
        if matches!(outcome, AcceptOutcome::Accepted { .. }) {
            self.events_appended.notify_waiters();
            self.commands_ready.notify_waiters();
        }
        Ok(outcome)
    }

    async fn enqueue_command(
        &self,
        command: &NewCommand,
        idempotent: Option<&IdempotentResponse>,
    ) -> EngineResult<EnqueueOutcome> {
        let outcome = self.with_state(|state| {
            if !state.orders.contains_key(&command.order_id) {
                return EnqueueOutcome::UnknownOrder;
            }
            state.enqueue(command.clone(), 0);
            if let Some(response) = idempotent {
                state.remember(response);
            }
            EnqueueOutcome::Enqueued
        })?;
        if outcome == EnqueueOutcome::Enqueued {
            self.commands_ready.notify_waiters();
        }
        Ok(outcome)
    }

    async fn order_status(&self, order_id: &str) -> EngineResult<Option<StatusRecord>> {
        self.with_state(|state| state.orders.get(order_id).map(|o| o.status.clone()))
    }

    async fn order(&self, order_id: &str) -> EngineResult<Option<OrderRecord>> {
        self.with_state(|state| {
            state.orders.get(order_id).map(|o| OrderRecord {
                order: o.order.clone(),
                status: o.status.clone(),
                history: o.history.iter().cloned().collect(),
            })
        })
    }

    async fn apply(
        &self,
        command: &ReceivedCommand,
        change: Option<&StatusChange>,
    ) -> EngineResult<ApplyOutcome> {
        let seq: u64 = command
            .receipt
            .parse()
            .map_err(|_| EngineError::Corrupt(format!("bad receipt `{}`", command.receipt)))?;
        let settings = &self.settings;
        let message = &command.message;
        let outcome = self.with_state(|state| {
            let position = state
                .pending_by_order
                .get(&message.order_id)
                .and_then(|q| q.iter().position(|id| *id == message.message_id));
            match position {
                None => {
                    state.messages.remove(&seq);
                    return Ok(ApplyOutcome::AlreadyDone);
                }
                Some(p) if p > 0 => return Ok(ApplyOutcome::Blocked),
                Some(_) => {}
            }
            let Some(stored) = state.orders.get_mut(&message.order_id) else {
                return Err(EngineError::Corrupt(format!(
                    "command {} for missing order {}",
                    message.message_id, message.order_id
                )));
            };
            let mut event_id = None;
            if let Some(change) = change {
                if stored.status.version != change.expected_version {
                    return Ok(ApplyOutcome::Stale {
                        current_version: stored.status.version,
                    });
                }
                debug_assert_eq!(change.event.version, change.expected_version + 1);
                stored.status.status = change.event.status;
                stored.status.version = change.event.version;
                stored.status.updated_at = change.event.occurred_at.clone();
                let raw = change.event.to_json();
                let id = state.append_event(raw, settings.event_retention);
                // Re-borrow: append_event needed the whole state.
                if let Some(stored) = state.orders.get_mut(&message.order_id) {
                    stored.history.push_back(State::history_entry(
                        id,
                        &change.event,
                        change.reason.clone(),
                    ));
                    while stored.history.len() > settings.history_limit {
                        stored.history.pop_front();
                    }
                }
                event_id = Some(id);
            }
            if let Some(queue) = state.pending_by_order.get_mut(&message.order_id) {
                queue.pop_front();
                if queue.is_empty() {
                    state.pending_by_order.remove(&message.order_id);
                }
            }
            state.messages.remove(&seq);
            Ok(ApplyOutcome::Applied { event_id })
        })??;
        if let ApplyOutcome::Applied { event_id: Some(_) } = &outcome {
            self.events_appended.notify_waiters();
        }
        Ok(outcome)
    }
}

#[async_trait]
impl CommandQueue for MemoryEngine {
    async fn receive_batch(
        &self,
        max: usize,
        wait: Duration,
    ) -> EngineResult<Vec<ReceivedCommand>> {
        let deadline = Instant::now() + wait;
        loop {
            // Register interest before looking, so an enqueue between the look and the wait
            // is not missed.
            let notified = self.commands_ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let now = Instant::now();
            let visibility = self.settings.visibility_timeout;
            let max_receives = self.settings.max_receives;
            let (batch, next_visible) = self.with_state(|state| {
                let mut batch = Vec::new();
                let mut next_visible: Option<Instant> = None;
                let mut dead = Vec::new();
                for (seq, queued) in state.messages.iter_mut() {
                    if batch.len() >= max {
                        break;
                    }
                    if let Some(until) = queued.invisible_until
                        && until > now
                    {
                        next_visible = Some(next_visible.map_or(until, |n| n.min(until)));
                        continue;
                    }
                    if queued.receive_count >= max_receives {
                        dead.push(*seq);
                        continue;
                    }
                    queued.receive_count += 1;
                    queued.invisible_until = Some(now + visibility);
                    batch.push(ReceivedCommand {
                        receipt: seq.to_string(),
                        message: queued.message.clone(),
                        receive_count: queued.receive_count,
                    });
                }
                for seq in dead {
                    if let Some(queued) = state.messages.remove(&seq) {
                        state.forget_pending(&queued.message.order_id, &queued.message.message_id);
                        state.dead_letters.push_back(DeadLetter {
                            message: queued.message,
                            receive_count: queued.receive_count,
                            dead_at: now_rfc3339(),
                        });
                    }
                }
                (batch, next_visible)
            })?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(batch);
            }
            let wake = next_visible.map_or(deadline, |n| n.min(deadline));
            let _ = tokio::time::timeout_at(wake, notified).await;
        }
    }

    async fn extend_visibility(&self, command: &ReceivedCommand) -> EngineResult<()> {
        let seq: u64 = command.receipt.parse().unwrap_or(u64::MAX);
        let until = Instant::now() + self.settings.visibility_timeout;
        self.with_state(|state| {
            if let Some(queued) = state.messages.get_mut(&seq) {
                queued.invisible_until = Some(until);
            }
        })
    }

    async fn release(&self, command: &ReceivedCommand) -> EngineResult<()> {
        let seq: u64 = command.receipt.parse().unwrap_or(u64::MAX);
        self.with_state(|state| {
            if let Some(queued) = state.messages.get_mut(&seq) {
                queued.invisible_until = None;
            }
        })?;
        self.commands_ready.notify_waiters();
        Ok(())
    }

    async fn queue_stats(&self) -> EngineResult<QueueStats> {
        let now = Instant::now();
        self.with_state(|state| {
            let in_flight = state
                .messages
                .values()
                .filter(|m| m.invisible_until.is_some_and(|until| until > now))
                .count() as u64;
            QueueStats {
                visible: state.messages.len() as u64 - in_flight,
                in_flight,
                dead_letters: state.dead_letters.len() as u64,
            }
        })
    }

    async fn dead_letters(&self, limit: usize) -> EngineResult<Vec<DeadLetter>> {
        self.with_state(|state| state.dead_letters.iter().take(limit).cloned().collect())
    }

    async fn redrive(&self, limit: usize) -> EngineResult<usize> {
        let moved = self.with_state(|state| {
            let mut moved = 0;
            while moved < limit {
                let Some(dead) = state.dead_letters.pop_front() else {
                    break;
                };
                state.enqueue(dead.message, 0);
                moved += 1;
            }
            moved
        })?;
        if moved > 0 {
            self.commands_ready.notify_waiters();
        }
        Ok(moved)
    }
}

#[async_trait]
impl EventLog for MemoryEngine {
    async fn read_events(
        &self,
        after: EventId,
        max: usize,
        wait: Duration,
    ) -> EngineResult<Vec<LogEntry>> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.events_appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let entries = self.with_state(|state| {
                let start = state.events.partition_point(|(id, _)| *id <= after);
                state
                    .events
                    .range(start..)
                    .take(max)
                    .map(|(id, raw)| decode_event(id.to_string(), raw))
                    .collect::<Vec<_>>()
            })?;
            if !entries.is_empty() || Instant::now() >= deadline {
                return Ok(entries);
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    async fn append_raw_event(&self, raw: &str) -> EngineResult<EventId> {
        let retention = self.settings.event_retention;
        let id = self.with_state(|state| state.append_event(raw.to_string(), retention))?;
        self.events_appended.notify_waiters();
        Ok(id)
    }

    async fn last_event_id(&self) -> EngineResult<EventId> {
        self.with_state(|state| state.events.back().map_or(EventId::ZERO, |(id, _)| *id))
    }

    async fn first_event_id(&self) -> EngineResult<Option<EventId>> {
        self.with_state(|state| state.events.front().map(|(id, _)| *id))
    }

    async fn set_aside(&self, entry: &MalformedEntry) -> EngineResult<()> {
        let id: EventId = entry
            .entry_id
            .parse()
            .map_err(|e: String| EngineError::Corrupt(e))?;
        self.with_state(|state| {
            state.malformed.entry(id).or_insert_with(|| entry.clone());
        })
    }

    async fn malformed_entries(&self, limit: usize) -> EngineResult<Vec<MalformedEntry>> {
        self.with_state(|state| state.malformed.values().take(limit).cloned().collect())
    }
}

#[async_trait]
impl IdempotencyStore for MemoryEngine {
    async fn begin_idempotent(
        &self,
        key: &str,
        fingerprint: &str,
        in_flight_ttl: Duration,
    ) -> EngineResult<IdempotencyBegin> {
        let now = Instant::now();
        self.with_state(|state| {
            state.sweep_idempotency(now);
            if let Some((record, until)) = state.idempotency.get(key)
                && *until > now
            {
                return match record {
                    IdempotencyRecord::InFlight { fingerprint } => IdempotencyBegin::InFlight {
                        fingerprint: fingerprint.clone(),
                    },
                    IdempotencyRecord::Done(response) => {
                        IdempotencyBegin::Completed(response.clone())
                    }
                };
            }
            let expires = now + in_flight_ttl;
            state.idempotency.insert(
                key.to_string(),
                (
                    IdempotencyRecord::InFlight {
                        fingerprint: fingerprint.to_string(),
                    },
                    expires,
                ),
            );
            state
                .idempotency_expiry
                .push_back((expires, key.to_string()));
            IdempotencyBegin::Started
        })
    }

    async fn abandon_idempotent(&self, key: &str) -> EngineResult<()> {
        self.with_state(|state| {
            if matches!(
                state.idempotency.get(key),
                Some((IdempotencyRecord::InFlight { .. }, _))
            ) {
                state.idempotency.remove(key);
            }
        })
    }
}

#[async_trait]
impl WebhookStore for MemoryEngine {
    async fn put_endpoint(&self, endpoint: &Endpoint) -> EngineResult<()> {
        self.with_state(|state| {
            state
                .webhooks
                .endpoints
                .insert(endpoint.id.clone(), endpoint.clone());
        })
    }

    async fn endpoint(&self, id: &str) -> EngineResult<Option<Endpoint>> {
        self.with_state(|state| state.webhooks.endpoints.get(id).cloned())
    }

    async fn endpoints(&self) -> EngineResult<Vec<Endpoint>> {
        self.with_state(|state| state.webhooks.endpoints.values().cloned().collect())
    }

    async fn delete_endpoint(&self, id: &str) -> EngineResult<bool> {
        self.with_state(|state| {
            let w = &mut state.webhooks;
            if w.endpoints.remove(id).is_none() {
                return false;
            }
            let ids: Vec<String> = w
                .by_endpoint
                .get(id)
                .map(|all| all.iter().map(|(_, d)| d.clone()).collect())
                .unwrap_or_default();
            for delivery_id in ids {
                w.unschedule(&delivery_id);
            }
            true
        })
    }

    async fn claim_events(
        &self,
        _consumer: &str,
        max: usize,
        wait: Duration,
        reclaim_after: Duration,
    ) -> EngineResult<Vec<LogEntry>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + wait;
        loop {
            // Register interest before looking, so an append in between is not missed.
            let notified = self.events_appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Instant::now();
            let (batch, next_reclaim) = self.with_state(|state| {
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
                            batch.push(decode_event(id.to_string(), raw));
                        }
                        // Trimmed from the log meanwhile: nothing left to hand out.
                        None => trimmed.push(*id),
                    }
                }
                for id in trimmed {
                    webhooks.unacked.remove(&id);
                }
                // Then entries never handed out.
                let start = events.partition_point(|(id, _)| *id <= webhooks.dispatched_up_to);
                for (id, raw) in events.range(start..).take(max - batch.len()) {
                    webhooks.dispatched_up_to = *id;
                    webhooks.unacked.insert(*id, now);
                    batch.push(decode_event(id.to_string(), raw));
                }
                (batch, next_reclaim)
            })?;
            if !batch.is_empty() || now >= deadline {
                return Ok(batch);
            }
            let wake = next_reclaim.map_or(deadline, |n| n.min(deadline));
            let _ = tokio::time::timeout_at(wake, notified).await;
        }
    }

    async fn create_deliveries(&self, event: EventId, deliveries: &[Delivery]) -> EngineResult<()> {
        self.with_state(|state| {
            let w = &mut state.webhooks;
            for delivery in deliveries {
                if w.deliveries.contains_key(&delivery.id) {
                    continue;
                }
                let mut delivery = delivery.clone();
                if delivery.state == DeliveryState::Pending {
                    let at_ms = delivery
                        .next_attempt_at_ms
                        .unwrap_or(delivery.created_at_ms);
                    delivery.next_attempt_at_ms = Some(at_ms);
                    w.schedule_at(&delivery.id, at_ms);
                } else {
                    delivery.next_attempt_at_ms = None;
                }
                w.index_failed(&delivery);
                w.by_endpoint
                    .entry(delivery.endpoint_id.clone())
                    .or_default()
                    .insert((delivery.created_at_ms, delivery.id.clone()));
                w.deliveries.insert(
                    delivery.id.clone(),
                    StoredDelivery {
                        delivery,
                        attempts: VecDeque::new(),
                    },
                );
            }
            w.unacked.remove(&event);
        })
    }

    async fn claim_due(
        &self,
        now_ms: u64,
        max: usize,
        lease: Duration,
    ) -> EngineResult<Vec<Delivery>> {
        let leased_until = now_ms.saturating_add(duration_ms(lease));
        self.with_state(|state| {
            let w = &mut state.webhooks;
            let due: Vec<String> = w
                .schedule
                .iter()
                .take_while(|(at_ms, _)| *at_ms <= now_ms)
                .take(max)
                .map(|(_, id)| id.clone())
                .collect();
            let mut out = Vec::with_capacity(due.len());
            for id in due {
                let delivery = w
                    .deliveries
                    .get(&id)
                    .map(|s| &s.delivery)
                    .filter(|d| w.endpoints.contains_key(&d.endpoint_id))
                    .cloned();
                match delivery {
                    Some(delivery) => {
                        w.schedule_at(&id, leased_until);
                        out.push(delivery);
                    }
                    None => w.unschedule(&id),
                }
            }
            out
        })
    }

    async fn next_due_ms(&self) -> EngineResult<Option<u64>> {
        self.with_state(|state| state.webhooks.schedule.first().map(|(at_ms, _)| *at_ms))
    }

    async fn finish_attempt(
        &self,
        delivery_id: &str,
        attempt: &Attempt,
        outcome: &AttemptOutcome,
        disable_after: Duration,
    ) -> EngineResult<EndpointHealth> {
        let now_ms = attempt.at_ms;
        self.with_state(|state| {
            let w = &mut state.webhooks;
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
                None => w.unschedule(delivery_id),
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
                    endpoint.enabled = false;
                    endpoint.disabled_reason = Some(reason.clone());
                    endpoint.updated_at_ms = now_ms;
                    EndpointHealth::Disabled { reason }
                }
                _ => EndpointHealth::Unchanged,
            }
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

#[async_trait]
impl Engine for MemoryEngine {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> EngineResult<()> {
        self.with_state(|_| ())
    }
}
