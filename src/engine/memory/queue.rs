//! The command queue in the memory engine: messages in arrival order with their visibility
//! deadline and receive count, the per-order FIFO gate, and the dead letters.
//!
//! It never changes an order: completing a command is `orders.rs`' apply, which also opens
//! the FIFO gate for the order's next command.
//!
//! Fairness (see [`CommandQueue`]): a delivery counts as a receive only when the command is
//! not waiting behind an earlier command of its order; a poisoned head takes the order's later
//! commands to the dead letters with it; redrive puts an order's dead letters back at the
//! front of its gate, in their order.

use super::{MemoryEngine, State};
use crate::engine::{
    ApplyOutcome, CommandQueue, DEAD_MAX_RECEIVES, DeadLetter, EngineError, EngineResult,
    NewCommand, QueueStats, ReceivedCommand, dead_behind,
};
use crate::model::now_rfc3339;
use async_trait::async_trait;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

pub(super) struct QueuedMessage {
    message: NewCommand,
    receive_count: u32,
    invisible_until: Option<Instant>,
}

/// The queue sequence number a receipt names (the memory engine's receipts are just that).
pub(super) fn receipt_seq(command: &ReceivedCommand) -> EngineResult<u64> {
    command
        .receipt
        .parse()
        .map_err(|_| EngineError::Corrupt(format!("bad receipt `{}`", command.receipt)))
}

impl State {
    pub(super) fn enqueue(&mut self, message: NewCommand, receive_count: u32) {
        self.pending_by_order
            .entry(message.order_id.clone())
            .or_default()
            .push_back(message.message_id.clone());
        self.insert_message(message, receive_count);
    }

    /// Adds a message to the queue without touching its order's FIFO gate.
    fn insert_message(&mut self, message: NewCommand, receive_count: u32) {
        let seq = self.next_message_seq;
        self.next_message_seq += 1;
        self.messages.insert(
            seq,
            QueuedMessage {
                message,
                receive_count,
                invisible_until: None,
            },
        );
    }

    /// Moves the message `seq` to the dead letters with every later command of its order
    /// still queued, in their order, and takes them all out of the order's FIFO gate. Returns
    /// the message ids moved.
    fn dead_letter_with_followers(&mut self, seq: u64, reason: String) -> Vec<String> {
        let Some(head) = self.messages.remove(&seq) else {
            return Vec::new();
        };
        let order_id = head.message.order_id.clone();
        let head_id = head.message.message_id.clone();
        let mut followers = Vec::new();
        if let Some(gate) = self.pending_by_order.get_mut(&order_id) {
            if let Some(p) = gate.iter().position(|id| *id == head_id) {
                followers = gate.drain(p..).skip(1).collect();
            }
            if gate.is_empty() {
                self.pending_by_order.remove(&order_id);
            }
        }
        let dead_at = now_rfc3339();
        let mut moved = vec![head_id.clone()];
        self.dead_letters.push_back(DeadLetter {
            message_id: head_id.clone(),
            order_id: order_id.clone(),
            message: Some(head.message),
            raw: None,
            reason,
            receive_count: head.receive_count,
            dead_at: dead_at.clone(),
        });
        let seqs: std::collections::HashMap<String, u64> = self
            .messages
            .iter()
            .filter(|(_, m)| m.message.order_id == order_id)
            .map(|(seq, m)| (m.message.message_id.clone(), *seq))
            .collect();
        for id in followers {
            let Some(queued) = seqs.get(&id).and_then(|seq| self.messages.remove(seq)) else {
                continue;
            };
            moved.push(id);
            self.dead_letters.push_back(DeadLetter {
                message_id: queued.message.message_id.clone(),
                order_id: order_id.clone(),
                message: Some(queued.message),
                raw: None,
                reason: dead_behind(&head_id),
                receive_count: queued.receive_count,
                dead_at: dead_at.clone(),
            });
        }
        moved
    }

    /// The per-order FIFO gate of a completion (apply, apply_step): `Some(AlreadyDone)` (the
    /// message is dropped from the queue) when the command is no longer pending, `Some(Blocked)`
    /// when an earlier command of its order is, `None` when it is the order's turn.
    pub(super) fn completion_gate(
        &mut self,
        seq: u64,
        message: &NewCommand,
    ) -> Option<ApplyOutcome> {
        let position = self
            .pending_by_order
            .get(&message.order_id)
            .and_then(|gate| gate.iter().position(|id| *id == message.message_id));
        match position {
            None => {
                self.messages.remove(&seq);
                Some(ApplyOutcome::AlreadyDone)
            }
            Some(p) if p > 0 => Some(ApplyOutcome::Blocked),
            Some(_) => None,
        }
    }

    /// Acknowledges the command at the head of its order's gate: takes it out of the queue and
    /// opens the gate for the order's next command.
    pub(super) fn acknowledge(&mut self, seq: u64, message: &NewCommand) {
        if let Some(gate) = self.pending_by_order.get_mut(&message.order_id) {
            gate.pop_front();
            if gate.is_empty() {
                self.pending_by_order.remove(&message.order_id);
            }
        }
        self.messages.remove(&seq);
    }

    /// Whether the command waits behind an earlier unfinished command of its order (what
    /// [`State::completion_gate`] answers `Blocked` for).
    pub(super) fn waits_its_turn(&self, message: &NewCommand) -> bool {
        self.pending_by_order
            .get(&message.order_id)
            .and_then(|gate| gate.iter().position(|id| *id == message.message_id))
            .is_some_and(|p| p > 0)
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
                let mut from = 0;
                while batch.len() < max {
                    let Some(seq) = state.messages.range(from..).next().map(|(seq, _)| *seq) else {
                        break;
                    };
                    from = seq + 1;
                    let Some(queued) = state.messages.get(&seq) else {
                        continue;
                    };
                    if let Some(until) = queued.invisible_until
                        && until > now
                    {
                        next_visible = Some(next_visible.map_or(until, |n| n.min(until)));
                        continue;
                    }
                    let waiting = state.waits_its_turn(&queued.message);
                    let Some(queued) = state.messages.get_mut(&seq) else {
                        continue;
                    };
                    // Waiting behind an earlier command of its order is not a failed receive.
                    if !waiting {
                        if queued.receive_count >= max_receives {
                            dead.push(seq);
                            continue;
                        }
                        queued.receive_count += 1;
                    }
                    queued.invisible_until = Some(now + visibility);
                    batch.push(ReceivedCommand {
                        receipt: seq.to_string(),
                        message: queued.message.clone(),
                        receive_count: queued.receive_count,
                    });
                }
                for seq in dead {
                    let moved = state.dead_letter_with_followers(seq, DEAD_MAX_RECEIVES.into());
                    batch.retain(|c| !moved.contains(&c.message.message_id));
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
                // The oldest dead letter that can go back names the next order to move whole.
                let Some(order_id) = state
                    .dead_letters
                    .iter()
                    .find(|d| d.message.is_some())
                    .map(|d| d.order_id.clone())
                else {
                    break;
                };
                let (group, rest): (VecDeque<DeadLetter>, VecDeque<DeadLetter>) =
                    std::mem::take(&mut state.dead_letters)
                        .into_iter()
                        .partition(|d| d.order_id == order_id && d.message.is_some());
                state.dead_letters = rest;
                let messages: Vec<NewCommand> =
                    group.into_iter().filter_map(|d| d.message).collect();
                moved += messages.len();
                // At the front of the order's gate, in their order: ahead of anything queued
                // for the order meanwhile.
                let gate = state.pending_by_order.entry(order_id).or_default();
                for message in messages.iter().rev() {
                    gate.push_front(message.message_id.clone());
                }
                for message in messages {
                    state.insert_message(message, 0);
                }
            }
            moved
        })?;
        if moved > 0 {
            self.commands_ready.notify_waiters();
        }
        Ok(moved)
    }
}
