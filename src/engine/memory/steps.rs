//! Workflow steps in the memory engine: the durable timers (here: until the process exits),
//! the writes a completion makes for the workflow (step records, open wait, follow-up,
//! heartbeat timer), and the callback waits that a completion and a timeout race to claim.
//!
//! Every call runs under the engine's one lock, which is what makes it atomic: a timer fires
//! at most once, and of a wait's claimants (the callback through [`StepStore::claim_wait`], the
//! timeout through its timer) exactly one wins. It never decides a step: the worker hands it
//! the decided writes, and it only checks the version and the per-order FIFO gate, exactly as
//! the Redis scripts do. A command it queues goes behind its order's earlier commands, as
//! `enqueue_command` would, and wakes waiting receivers.
//!
//! An order has at most one heartbeat timer: the order keeps its schedule key
//! (`StoredOrder::heartbeat`), and writing a new one ([`StepWrites::heartbeat`],
//! [`StepStore::heartbeat`]) takes the old one off the schedule. Once scheduled it is a timer
//! like any other (counted, fired, dropped when the wait it claims is gone).

use super::queue::receipt_seq;
use super::{MemoryEngine, State};
use crate::engine::{
    ApplyOutcome, ClaimOutcome, EngineError, EngineResult, FollowUp, NewCommand, ReceivedCommand,
    StepStore, StepWrites, TimerSweep,
};
use async_trait::async_trait;
use std::collections::BTreeMap;

/// The timers, earliest first. The key is (due ms, sequence): the sequence keeps timers due
/// in the same millisecond apart, in the order they were scheduled.
#[derive(Default)]
pub(super) struct StepState {
    timers: BTreeMap<(u64, u64), Timer>,
    next_timer_seq: u64,
}

/// A scheduled follow-up: queued as `command` when due, if `claims_wait` (when set) is still
/// the order's open wait.
struct Timer {
    command: NewCommand,
    claims_wait: Option<String>,
}

/// How a completion's [`StepWrites::open_wait`] treats the order's open wait.
pub(super) enum WaitWrite {
    /// A status change: the wait becomes `open_wait`, closed when that is `None`.
    Replace,
    /// A step without a status change: set when `open_wait` is `Some`, else left as it is.
    SetIfGiven,
}

impl State {
    /// Writes a completion's step writes for `order_id` (which must exist; nothing is written
    /// otherwise): appends the records (keeping the newest `step_history_limit`), sets the
    /// open wait as `wait` says, queues or schedules the follow-up and replaces the heartbeat
    /// timer (its due time checked by the caller, [`FollowUp::timer_due_ms`]). Returns whether
    /// a command was queued now (receivers are then to be woken).
    pub(super) fn write_steps(
        &mut self,
        order_id: &str,
        writes: &StepWrites,
        wait: WaitWrite,
        step_history_limit: usize,
    ) -> bool {
        let Some(stored) = self.orders.get_mut(order_id) else {
            return false;
        };
        stored.steps.extend(writes.records.iter().cloned());
        while stored.steps.len() > step_history_limit {
            stored.steps.pop_front();
        }
        match (wait, &writes.open_wait) {
            (_, Some(wait_id)) => stored.open_wait = Some(wait_id.clone()),
            (WaitWrite::Replace, None) => stored.open_wait = None,
            (WaitWrite::SetIfGiven, None) => {}
        }
        if let Some(heartbeat) = &writes.heartbeat {
            if let Some(due_ms) = heartbeat.due_ms {
                self.replace_heartbeat(order_id, heartbeat, due_ms);
            }
        }
        let Some(follow_up) = &writes.follow_up else {
            return false;
        };
        match follow_up.due_ms {
            None => {
                self.enqueue(follow_up.command.clone(), 0);
                true
            }
            Some(due_ms) => {
                self.schedule(follow_up, due_ms);
                false
            }
        }
    }

    /// Puts `timer` on the schedule at `due_ms`; returns its key.
    fn schedule(&mut self, timer: &FollowUp, due_ms: u64) -> (u64, u64) {
        let key = (due_ms, self.steps.next_timer_seq);
        self.steps.next_timer_seq += 1;
        self.steps.timers.insert(
            key,
            Timer {
                command: timer.command.clone(),
                claims_wait: timer.claims_wait.clone(),
            },
        );
        key
    }

    /// Makes `timer` (due at `due_ms`) the heartbeat timer of `order_id` (which must exist),
    /// taking the one it had, if any, off the schedule.
    fn replace_heartbeat(&mut self, order_id: &str, timer: &FollowUp, due_ms: u64) {
        if !self.orders.contains_key(order_id) {
            return;
        }
        let key = self.schedule(timer, due_ms);
        if let Some(stored) = self.orders.get_mut(order_id) {
            if let Some(old) = stored.heartbeat.replace(key) {
                self.steps.timers.remove(&old);
            }
        }
    }

    /// Fires the due timers (see [`StepStore::fire_due_timers`]); each one processed, fired or
    /// dropped, counts toward `limit`.
    fn fire_due_timers(&mut self, now_ms: u64, limit: usize) -> TimerSweep {
        let mut fired = Vec::new();
        let mut processed = 0;
        while processed < limit {
            let Some(entry) = self.steps.timers.first_entry() else {
                break;
            };
            let key = *entry.key();
            let (due_ms, _) = key;
            if due_ms > now_ms {
                break;
            }
            let timer = entry.remove();
            processed += 1;
            let Some(stored) = self.orders.get_mut(&timer.command.order_id) else {
                continue;
            };
            if stored.heartbeat == Some(key) {
                // Off the schedule, fired or dropped: the order has no heartbeat timer now.
                stored.heartbeat = None;
            }
            if let Some(wait_id) = &timer.claims_wait {
                if stored.open_wait.as_ref() != Some(wait_id) {
                    // The callback came first, or the order moved on: the timeout lost.
                    continue;
                }
                stored.open_wait = None;
            }
            self.enqueue(timer.command, 0);
            fired.push(due_ms);
        }
        TimerSweep {
            fired,
            next_due_ms: self.steps.timers.keys().next().map(|(due_ms, _)| *due_ms),
        }
    }
}

#[async_trait]
impl StepStore for MemoryEngine {
    async fn heads_its_order(&self, command: &ReceivedCommand) -> EngineResult<bool> {
        // A command no longer in its order's gate heads it too: apply says AlreadyDone.
        self.with_state(|state| !state.waits_its_turn(&command.message))
    }

    async fn heartbeat(
        &self,
        order_id: &str,
        wait_id: &str,
        timer: &FollowUp,
    ) -> EngineResult<ClaimOutcome> {
        debug_assert_eq!(
            timer.command.order_id, order_id,
            "a heartbeat timer is for its order"
        );
        let due_ms = timer.timer_due_ms()?;
        self.with_state(|state| {
            let Some(stored) = state.orders.get(order_id) else {
                return ClaimOutcome::UnknownOrder;
            };
            if wait_id.is_empty() || stored.open_wait.as_deref() != Some(wait_id) {
                return ClaimOutcome::NotWaiting;
            }
            state.replace_heartbeat(order_id, timer, due_ms);
            ClaimOutcome::Queued
        })
    }

    async fn apply_step(
        &self,
        command: &ReceivedCommand,
        expected_version: u64,
        writes: &StepWrites,
    ) -> EngineResult<ApplyOutcome> {
        let seq = receipt_seq(command)?;
        if let Some(heartbeat) = &writes.heartbeat {
            heartbeat.timer_due_ms()?;
        }
        let step_history_limit = self.settings.step_history_limit;
        let message = &command.message;
        let mut queued = false;
        let outcome = self.with_state(|state| {
            if let Some(outcome) = state.completion_gate(seq, message) {
                return Ok(outcome);
            }
            let Some(stored) = state.orders.get(&message.order_id) else {
                return Err(EngineError::Corrupt(format!(
                    "command {} for missing order {}",
                    message.message_id, message.order_id
                )));
            };
            if stored.version() != expected_version {
                return Ok(ApplyOutcome::Stale {
                    current_version: stored.version(),
                });
            }
            queued = state.write_steps(
                &message.order_id,
                writes,
                WaitWrite::SetIfGiven,
                step_history_limit,
            );
            state.acknowledge(seq, message);
            Ok(ApplyOutcome::Applied { event_id: None })
        })??;
        if queued {
            self.commands_ready.notify_waiters();
        }
        Ok(outcome)
    }

    async fn fire_due_timers(&self, now_ms: u64, limit: usize) -> EngineResult<TimerSweep> {
        let sweep = self.with_state(|state| state.fire_due_timers(now_ms, limit))?;
        if !sweep.fired.is_empty() {
            self.commands_ready.notify_waiters();
        }
        Ok(sweep)
    }

    async fn claim_wait(
        &self,
        order_id: &str,
        wait_id: &str,
        command: &NewCommand,
    ) -> EngineResult<ClaimOutcome> {
        if command.order_id != order_id {
            return Err(EngineError::Corrupt(format!(
                "command {} is for order {}, not {order_id}",
                command.message_id, command.order_id
            )));
        }
        let outcome = self.with_state(|state| {
            let Some(stored) = state.orders.get_mut(order_id) else {
                return ClaimOutcome::UnknownOrder;
            };
            if stored.open_wait.as_deref() != Some(wait_id) {
                return ClaimOutcome::NotWaiting;
            }
            stored.open_wait = None;
            state.enqueue(command.clone(), 0);
            ClaimOutcome::Queued
        })?;
        if outcome == ClaimOutcome::Queued {
            self.commands_ready.notify_waiters();
        }
        Ok(outcome)
    }

    async fn pending_timers(&self) -> EngineResult<u64> {
        self.with_state(|state| state.steps.timers.len() as u64)
    }
}
