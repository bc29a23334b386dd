//! The command queue room of the seam: the [`CommandQueue`] trait and the commands it carries.
//!
//! It owns SQS semantics (at-least-once delivery, visibility timeout, receive count,
//! dead-letter queue) and the shape of a queued command. It never changes an order: completing
//! a command is [`OrderStore::apply`](super::OrderStore::apply), which also enforces per-order
//! FIFO.

use super::EngineResult;
use crate::model::{Order, OrderStatus};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What a queued command asks the worker to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Command {
    /// Run the intake workflow on a new order (`accepted -> confirmed | rejected`). Carries
    /// the (immutable) order so the worker decides without reading it back.
    #[serde(rename = "processOrder")]
    ProcessOrder { order: Box<Order> },
    /// Move the order to `status`, if the workflow allows it when the command runs.
    #[serde(rename = "transition")]
    Transition {
        status: OrderStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Carry on the workflow step of `status`, which the order entered at `version`: run its
    /// action, or act on its timer or its callback's result. Queued with the change that
    /// entered the status, by a timer when due, or by `POST /v1/tasks/{token}/...`. A step of
    /// a status the order has left (its version moved on) is acknowledged without effect.
    #[serde(rename = "step")]
    Step {
        status: OrderStatus,
        version: u64,
        action: StepAction,
    },
}

/// What a [`Command::Step`] does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum StepAction {
    /// Make attempt `attempt` (1 = the first) of the step's HTTP call. `retries` counts the
    /// retries each of the step's retriers has spent so far (Step Functions counts per
    /// retrier).
    Attempt {
        attempt: u32,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        retries: Vec<u32>,
    },
    /// The step's timer is due: a wait elapsed, or a callback's timeout (`heartbeat`: its
    /// heartbeat deadline) for the callback's attempt `attempt`, with the retries its retriers
    /// had spent (0 and empty for a wait).
    Elapsed {
        #[serde(default)]
        attempt: u32,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        retries: Vec<u32>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        heartbeat: bool,
    },
    /// The callback's token came back: `succeeded`, with the caller's JSON `result` (or error).
    Callback {
        /// The attempt whose token came back.
        #[serde(default)]
        attempt: u32,
        succeeded: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<serde_json::Value>,
    },
}

/// A command to enqueue. `message_id` is chosen by the caller (a UUID) so it can be returned to
/// the client before and after the engine call alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewCommand {
    pub message_id: String,
    pub order_id: String,
    pub command: Command,
    pub sent_at: String,
}

/// A command handed to a worker. It stays invisible to other receivers for the visibility
/// timeout; after that it is delivered again unless it was applied. `receipt` is the engine's
/// own handle for it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedCommand {
    pub receipt: String,
    pub message: NewCommand,
    /// How many counted receives this message had, this one included if it counted: a
    /// delivery while the command waits behind an earlier command of its order does not
    /// count (so this may be 0).
    pub receive_count: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueStats {
    /// Messages waiting to be received (visible now or after a visibility timeout).
    pub visible: u64,
    /// Messages received and not yet acknowledged.
    pub in_flight: u64,
    pub dead_letters: u64,
}

/// A command taken out of the queue: the poisoned head of its order, or one of the order's
/// later commands that went with it (see [`CommandQueue`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(
    description = "A command taken out of the queue: the poisoned head of its order, or one of its later commands that went with it."
)]
pub struct DeadLetter {
    pub message_id: String,
    pub order_id: String,
    /// The command; `None` when it does not decode (then `raw` holds it as written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub message: Option<NewCommand>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    /// Why it is here: `maxReceives`, `undecodable: <error>`, or `behind <messageId>` for a
    /// later command of the order that went with its poisoned head.
    pub reason: String,
    /// Counted receives (see [`CommandQueue::receive_batch`]).
    pub receive_count: u32,
    pub dead_at: String,
}

/// Why a head went to the dead-letter queue.
pub const DEAD_MAX_RECEIVES: &str = "maxReceives";

/// The reason recorded for a command that went with its poisoned head `head_message_id`.
pub fn dead_behind(head_message_id: &str) -> String {
    format!("behind {head_message_id}")
}

/// The command queue, with SQS semantics: at-least-once, visibility timeout, receive count and
/// dead-letter queue, per-order FIFO (enforced by [`OrderStore::apply`](super::OrderStore::apply)).
///
/// Fairness rules every engine keeps (issue 12, item 7):
/// - A receive counts toward `max_receives` only if the command is not waiting behind an
///   earlier unfinished command of its order: a command that waits its turn is handed out
///   (the worker holds it until it may run), but that delivery is not a failed receive, so a
///   healthy command is never dead-lettered for waiting.
/// - A poisoned head (received `max_receives` times, or on Redis an entry that does not
///   decode) goes to the dead-letter queue together with every later command of its order
///   that is still queued, in their order, right behind it (reason `behind <messageId>`).
///   The order is not blocked: a command queued for it afterwards runs as usual.
/// - Redrive moves dead letters back oldest first, an order's all together (the limit may be
///   exceeded to finish the last order), and puts them at the front of their order's FIFO,
///   in their original order, ahead of anything queued for the order meanwhile.
#[async_trait]
pub trait CommandQueue: Send + Sync {
    /// Receives up to `max` commands, waiting up to `wait` for the first one. Commands whose
    /// visibility timeout expired are received again; a command received more than
    /// `max_receives` times (counted receives: not while it waited behind an earlier command
    /// of its order) goes to the dead-letter queue instead, with its order's later commands. An engine that reads its
    /// partitions in one go shares `max` out among them, rounded up: it may hand out up to
    /// `max` rounded up to a multiple of its partitions (16 partitions, `max` 10: up to 16).
    async fn receive_batch(&self, max: usize, wait: Duration)
    -> EngineResult<Vec<ReceivedCommand>>;

    /// Restarts the visibility timeout of a command that is still being worked on (or waits
    /// for its order's earlier command), without counting a receive.
    async fn extend_visibility(&self, command: &ReceivedCommand) -> EngineResult<()>;

    /// Gives a command back at once (graceful shutdown): another receiver may take it now.
    async fn release(&self, command: &ReceivedCommand) -> EngineResult<()>;

    async fn queue_stats(&self) -> EngineResult<QueueStats>;

    async fn dead_letters(&self, limit: usize) -> EngineResult<Vec<DeadLetter>>;

    /// Moves up to `limit` dead letters back to the queue, oldest first, receive count reset:
    /// all of an order's at once (so possibly more than `limit`), at the front of its FIFO in
    /// their original order. Returns how many moved.
    async fn redrive(&self, limit: usize) -> EngineResult<usize>;
}
