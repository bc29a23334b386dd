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
    /// How many times this message has been received, this time included.
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub message: NewCommand,
    pub receive_count: u32,
    pub dead_at: String,
}

/// The command queue, with SQS semantics: at-least-once, visibility timeout, receive count and
/// dead-letter queue, per-order FIFO (enforced by [`OrderStore::apply`](super::OrderStore::apply)).
#[async_trait]
pub trait CommandQueue: Send + Sync {
    /// Receives up to `max` commands, waiting up to `wait` for the first one. Commands whose
    /// visibility timeout expired are received again; a command received more than
    /// `max_receives` times goes to the dead-letter queue instead. An engine that reads its
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

    /// Moves up to `limit` dead letters back to the queue, oldest first, receive count reset.
    async fn redrive(&self, limit: usize) -> EngineResult<usize>;
}
