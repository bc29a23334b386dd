//! Orders in the memory engine: each order with its status and capped history, and the
//! accept, enqueue and apply calls that change them together with the log and the queue under
//! one lock (what makes them atomic here).
//!
//! It never decides a transition: the caller hands it the decided change, and it only checks
//! the version and the per-order FIFO gate, exactly as the Redis scripts do.

use super::{MemoryEngine, State};
use crate::engine::{
    AcceptOutcome, ApplyOutcome, EngineError, EngineResult, EnqueueOutcome, IdempotentResponse,
    NewCommand, OrderStore, ReceivedCommand, StatusChange,
};
use crate::model::{EventId, HistoryEntry, Order, OrderEvent, OrderRecord, StatusRecord};
use async_trait::async_trait;
use std::collections::VecDeque;

pub(super) struct StoredOrder {
    order: Order,
    status: StatusRecord,
    history: VecDeque<HistoryEntry>,
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
