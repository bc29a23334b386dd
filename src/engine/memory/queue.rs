//! The command queue in the memory engine: messages in arrival order with their visibility
//! deadline and receive count, the per-order FIFO gate, and the dead letters.
//!
//! It never changes an order: completing a command is `orders.rs`' apply, which also opens
//! the FIFO gate for the order's next command.

use super::{MemoryEngine, State};
use crate::engine::{
    CommandQueue, DeadLetter, EngineResult, NewCommand, QueueStats, ReceivedCommand,
};
use crate::model::now_rfc3339;
use async_trait::async_trait;
use std::time::Duration;
use tokio::time::Instant;

pub(super) struct QueuedMessage {
    message: NewCommand,
    receive_count: u32,
    invisible_until: Option<Instant>,
}

impl State {
    pub(super) fn enqueue(&mut self, message: NewCommand, receive_count: u32) {
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
