//! Orders in the memory engine: each order with its status and capped history (and the step
//! history, open wait and heartbeat timer that `steps.rs` writes), and the accept, enqueue and apply calls that
//! change them together with the log, the queue and the workflow's step writes under one lock
//! (what makes them atomic here).
//!
//! It never decides a transition: the caller hands it the decided change, and it only checks
//! the version and the per-order FIFO gate, exactly as the Redis scripts do.

use super::queue::receipt_seq;
use super::steps::WaitWrite;
use super::{MemoryEngine, State};
use crate::engine::{
    AcceptOutcome, ApplyOutcome, EngineError, EngineResult, EnqueueOutcome, IdempotentResponse,
    Listing, NewCommand, OrderScope, OrderStore, ReceivedCommand, StatusChange,
};
use crate::model::{
    EventId, HistoryEntry, Order, OrderEvent, OrderRecord, StatusRecord, StepRecord,
};
use async_trait::async_trait;
use std::collections::{BTreeSet, HashMap, VecDeque};

pub(super) struct StoredOrder {
    order: Order,
    status: StatusRecord,
    history: VecDeque<HistoryEntry>,
    /// The workflow's step records, oldest first, capped at `step_history_limit`
    /// (written by `steps.rs`).
    pub(super) steps: VecDeque<StepRecord>,
    /// The callback wait open on the order's current status, if any (`steps.rs`).
    pub(super) open_wait: Option<String>,
    /// The key of the order's heartbeat timer in the schedule, if it has one (`steps.rs`): an
    /// order has at most one, and a new one takes the old one off the schedule.
    pub(super) heartbeat: Option<(u64, u64)>,
}

impl StoredOrder {
    /// The order's version (one per status change).
    pub(super) fn version(&self) -> u64 {
        self.status.version
    }
}

impl State {
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
            state
                .orders_by_customer
                .entry(order.customer_id.clone())
                .or_default()
                .insert(order.order_id.clone());
            if let Some(partner_id) = &order.partner_id {
                state
                    .orders_by_partner
                    .entry(partner_id.clone())
                    .or_default()
                    .insert(order.order_id.clone());
            }
            state.orders.insert(
                order.order_id.clone(),
                Box::new(StoredOrder {
                    order: order.clone(),
                    status,
                    history,
                    steps: VecDeque::new(),
                    open_wait: None,
                    heartbeat: None,
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

    async fn list_statuses(&self, scope: &OrderScope, max: usize) -> EngineResult<Listing> {
        self.with_state(|state| {
            let status = |id: &String| state.orders.get(id).map(|o| o.status.clone());
            let indexed = |index: &HashMap<String, BTreeSet<String>>, key: &String| {
                let ids = index.get(key);
                if ids.map_or(0, BTreeSet::len) > max {
                    return Listing::TooMany { max };
                }
                Listing::Statuses(ids.into_iter().flatten().filter_map(status).collect())
            };
            match scope {
                OrderScope::Order(id) => Listing::Statuses(status(id).into_iter().collect()),
                OrderScope::Customer(id) => indexed(&state.orders_by_customer, id),
                OrderScope::Partner(id) => indexed(&state.orders_by_partner, id),
                OrderScope::All if state.orders.len() > max => Listing::TooMany { max },
                OrderScope::All => {
                    let mut all: Vec<StatusRecord> =
                        state.orders.values().map(|o| o.status.clone()).collect();
                    all.sort_by(|a, b| a.order_id.cmp(&b.order_id));
                    Listing::Statuses(all)
                }
            }
        })
    }

    async fn order(&self, order_id: &str) -> EngineResult<Option<OrderRecord>> {
        self.with_state(|state| {
            state.orders.get(order_id).map(|o| OrderRecord {
                open_wait: o.open_wait.clone().filter(|wait| !wait.is_empty()),
                order: o.order.clone(),
                status: o.status.clone(),
                history: o.history.iter().cloned().collect(),
                steps: o.steps.iter().cloned().collect(),
            })
        })
    }

    async fn apply(
        &self,
        command: &ReceivedCommand,
        change: Option<&StatusChange>,
    ) -> EngineResult<ApplyOutcome> {
        let seq = receipt_seq(command)?;
        if let Some(heartbeat) = change.and_then(|c| c.steps.heartbeat.as_ref()) {
            heartbeat.timer_due_ms()?;
        }
        let settings = &self.settings;
        let message = &command.message;
        let mut queued = false;
        let outcome = self.with_state(|state| {
            if let Some(outcome) = state.completion_gate(seq, message) {
                return Ok(outcome);
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
                // A status change always closes the open wait; the status entered may open
                // its own.
                queued = state.write_steps(
                    &message.order_id,
                    &change.steps,
                    WaitWrite::Replace,
                    settings.step_history_limit,
                );
            }
            state.acknowledge(seq, message);
            Ok(ApplyOutcome::Applied { event_id })
        })??;
        if let ApplyOutcome::Applied { event_id: Some(_) } = &outcome {
            self.events_appended.notify_waiters();
        }
        if queued {
            self.commands_ready.notify_waiters();
        }
        Ok(outcome)
    }
}
