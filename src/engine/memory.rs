//! The embedded engine: all state in this process, nothing to install, lost on exit.
//!
//! It keeps the exact semantics of the Redis engine (same event ids, same queue rules, same
//! outcomes) so that one conformance suite covers both. All state sits behind one
//! `std::sync::Mutex`: no `.await` ever happens while it is held and every critical section is
//! a few map operations, so a Tokio mutex would only add cost. Waiters (receivers, event
//! readers) park on `Notify`s instead of polling.

use super::*;
use crate::model::{EventId, HistoryEntry, OrderEvent, now_millis, now_rfc3339};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
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

fn parse_entry(id: EventId, raw: &str) -> LogEntry {
    match OrderEvent::parse(raw) {
        Ok(event) => LogEntry::Event(LoggedEvent {
            event_id: id.to_string(),
            event,
        }),
        Err(error) => LogEntry::Malformed(MalformedEntry {
            entry_id: id.to_string(),
            raw: raw.to_string(),
            error,
        }),
    }
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
        match &outcome {
            ApplyOutcome::Applied { event_id: Some(_) } => self.events_appended.notify_waiters(),
            ApplyOutcome::Applied { event_id: None } | ApplyOutcome::AlreadyDone => {}
            _ => {}
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
                    .map(|(id, raw)| parse_entry(*id, raw))
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
impl Engine for MemoryEngine {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> EngineResult<()> {
        self.with_state(|_| ())
    }
}
