//! The workflow steps room of the seam: what completing a command writes for the order's
//! workflow besides its status, and the durable timers that carry a workflow on when due.
//!
//! A status whose workflow step has an action (a task, a wait, a callback: `crate::workflow`)
//! is carried on by [`Command::Step`](super::Command::Step) commands. The engine never decides
//! a step; it stores what the worker decided, atomically with the command's acknowledgement:
//! - step records, appended to the order's step history (the newest `step_history_limit`),
//! - the follow-up command: queued now (behind the order's earlier commands) or at a due time
//!   (a durable timer, which survives restarts like the queue itself),
//! - an open callback wait, which the callback's completion and its timeout race to claim:
//!   whichever claims it first is queued, the other is refused (API) or dropped (timer).
//!
//! Any status change closes the order's open wait (a callback cannot complete an order that
//! moved on), and every step command carries the version of the status it belongs to, so a
//! step of a status the order has left is acknowledged without effect.

use super::{ApplyOutcome, EngineResult, NewCommand, ReceivedCommand};
pub use crate::model::StepRecord;
use async_trait::async_trait;

/// What a command's completion writes for the workflow, besides a status change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepWrites {
    /// Appended to the order's step history, in this order.
    pub records: Vec<StepRecord>,
    /// The command that carries the workflow on.
    pub follow_up: Option<FollowUp>,
    /// Opens a callback wait with this id on the order (see [`StepStore::claim_wait`]).
    pub open_wait: Option<String>,
    /// The order's heartbeat timer (a callback's heartbeat deadline): replaces the one the
    /// order had, if any (an order has at most one; the old one leaves the schedule).
    pub heartbeat: Option<FollowUp>,
}

impl StepWrites {
    /// Whether it schedules a timer (a follow-up due later, or a heartbeat deadline): the
    /// writer wakes its node's timer loop, which may be sleeping past that due time.
    pub fn schedules_timer(&self) -> bool {
        self.heartbeat.is_some() || self.follow_up.as_ref().is_some_and(|f| f.due_ms.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.follow_up.is_none()
            && self.open_wait.is_none()
            && self.heartbeat.is_none()
    }
}

/// A command written with a completion: queued at once, or held by a durable timer.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowUp {
    pub command: NewCommand,
    /// `None`: queued now, behind the order's earlier commands. `Some(ms)`: a timer, queued
    /// when due (Unix milliseconds).
    pub due_ms: Option<u64>,
    /// For a timer: queued only if the order's open wait is still this one, which it then
    /// closes; dropped otherwise (a callback's timeout losing to its completion).
    pub claims_wait: Option<String>,
}

impl FollowUp {
    /// The due time of a follow-up that must be a timer (a heartbeat): an error, before
    /// anything is written, for one without.
    pub(crate) fn timer_due_ms(&self) -> EngineResult<u64> {
        self.due_ms.ok_or_else(|| {
            super::EngineError::Corrupt(format!(
                "the heartbeat timer {} of order {} has no due time",
                self.command.message_id, self.command.order_id
            ))
        })
    }
}

/// What [`StepStore::claim_wait`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The wait was open and is now closed; the command is queued.
    Queued,
    /// The order has no such open wait: completed, timed out, or the order moved on.
    NotWaiting,
    UnknownOrder,
}

/// What one [`StepStore::fire_due_timers`] call did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TimerSweep {
    /// The due time (Unix ms) of each timer it queued (for lateness); dropped ones are not
    /// listed.
    pub fired: Vec<u64>,
    /// When the earliest timer still scheduled is due, if any.
    pub next_due_ms: Option<u64>,
}

#[async_trait]
pub trait StepStore: Send + Sync {
    /// Completes a step command without a status change: if the order is still at
    /// `expected_version`, writes `writes` and acknowledges the command, all or nothing, under
    /// the per-order FIFO gate; outcomes as [`OrderStore::apply`](super::OrderStore::apply)
    /// (`Stale` when the order moved on: nothing written).
    async fn apply_step(
        &self,
        command: &ReceivedCommand,
        expected_version: u64,
        writes: &StepWrites,
    ) -> EngineResult<ApplyOutcome>;

    /// Queues each timer due at `now_ms` (up to `limit`, earliest first) as its command,
    /// behind its order's earlier commands, and removes it, atomically per timer: a timer
    /// fires once, whichever node sweeps. A timer whose order is gone, or whose
    /// `claims_wait` is no longer the order's open wait, is removed without a command.
    async fn fire_due_timers(&self, now_ms: u64, limit: usize) -> EngineResult<TimerSweep>;

    /// Closes the order's open wait `wait_id` and queues `command` in the same step; refuses
    /// if the wait is not open (so a callback token works once).
    async fn claim_wait(
        &self,
        order_id: &str,
        wait_id: &str,
        command: &NewCommand,
    ) -> EngineResult<ClaimOutcome>;

    /// Timers scheduled and not yet fired.
    async fn pending_timers(&self) -> EngineResult<u64>;

    /// Whether `command` heads its order's FIFO now, so that completing it would not be
    /// `Blocked` (the gate [`OrderStore::apply`](super::OrderStore::apply) checks). Writes
    /// nothing: a step asks before it calls out.
    async fn heads_its_order(&self, command: &ReceivedCommand) -> EngineResult<bool>;

    /// A callback's heartbeat: if the order's open wait is `wait_id`, replaces the order's
    /// heartbeat timer with `timer` (as [`StepWrites::heartbeat`] does) and answers `Queued`;
    /// else writes nothing (`NotWaiting`, or `UnknownOrder`). Atomic.
    async fn heartbeat(
        &self,
        order_id: &str,
        wait_id: &str,
        timer: &FollowUp,
    ) -> EngineResult<ClaimOutcome>;
}
