//! The engine seam: every byte of Herald's state lives behind these traits.
//!
//! The command queue (SQS semantics), the status store, the event log, the idempotency
//! records and the webhook store (`webhook.rs`) are one [`Engine`]. `memory.rs` implements it inside the process; `redis/` implements
//! it on Redis streams and Lua scripts. Nothing outside this module names Redis, and every
//! behaviour promised here is checked against both engines by `tests/conformance.rs`.
//!
//! Changes that touch several pieces of state (an order's status, its history, its event and
//! the queue) are single engine calls, so that an engine can make them atomic: a crash can never
//! leave a status without its event or an acknowledged command without its effect.

pub mod memory;
pub mod redis;
pub mod webhook;

use crate::config::Config;
use crate::model::{
    EventId, LoggedEvent, MalformedEntry, Order, OrderRecord, OrderStatus, StatusRecord,
};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The backing store cannot be reached or did not answer in time. Callers answer 503 and
    /// never pretend the operation happened.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// Data in the store does not have the shape Herald wrote (a bug or a foreign writer).
    #[error("engine data is not in the expected form: {0}")]
    Corrupt(String),
}

pub type EngineResult<T> = Result<T, EngineError>;

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

/// The status change a worker wants to make for a command. `expected_version` is the version
/// the worker read: the engine refuses the change if the order moved on meanwhile.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusChange {
    pub expected_version: u64,
    pub event: crate::model::OrderEvent,
    /// Reason recorded in the order's history (also carried in `event.data` when set).
    pub reason: Option<String>,
}

/// What happened to a command the worker tried to complete.
#[derive(Debug, Clone, PartialEq)]
pub enum ApplyOutcome {
    /// The change (if any) was written with its event and the command acknowledged, atomically.
    Applied { event_id: Option<EventId> },
    /// An earlier command for the same order is still pending: per-order FIFO says wait.
    Blocked,
    /// The order's version is no longer `expected_version`: read it again and decide again.
    Stale { current_version: u64 },
    /// The command was applied (or dead-lettered) before, by this or another receiver: it was
    /// acknowledged and nothing changed.
    AlreadyDone,
}

/// Result of atomically accepting a new order.
#[derive(Debug, Clone, PartialEq)]
pub enum AcceptOutcome {
    Accepted {
        event_id: EventId,
    },
    /// An order with this id exists already; nothing was written.
    AlreadyExists,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EnqueueOutcome {
    Enqueued,
    UnknownOrder,
}

/// A response remembered for an `Idempotency-Key`, written in the same atomic step as the
/// effect it describes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdempotentResponse {
    /// Scoped key: principal and client key.
    pub key: String,
    pub fingerprint: String,
    pub status: u16,
    pub body: Value,
    #[serde(skip)]
    pub ttl: Duration,
}

/// What `begin` found for an idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub enum IdempotencyBegin {
    /// No earlier request: this caller owns the key until it completes or abandons it.
    Started,
    /// The first request with this key is still being processed.
    InFlight { fingerprint: String },
    /// The first request completed: replay its response (if the fingerprint matches).
    Completed(IdempotentResponse),
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

/// One entry read from the event log: an event, or an entry that does not parse.
#[derive(Debug, Clone, PartialEq)]
pub enum LogEntry {
    Event(LoggedEvent),
    Malformed(MalformedEntry),
}

impl LogEntry {
    pub fn id(&self) -> Result<EventId, String> {
        match self {
            LogEntry::Event(e) => e.event_id.parse(),
            LogEntry::Malformed(m) => m.entry_id.parse(),
        }
    }
}

/// Orders, their status and history, written together with their events.
#[async_trait]
pub trait OrderStore: Send + Sync {
    /// Atomically: the status record (`accepted`, version 1), its history entry, the
    /// `order.accepted` event, the `processOrder` command and the idempotent response.
    async fn accept_order(
        &self,
        order: &Order,
        accepted_event: &crate::model::OrderEvent,
        command: &NewCommand,
        idempotent: Option<&IdempotentResponse>,
    ) -> EngineResult<AcceptOutcome>;

    /// Queues a command for an existing order (and records the idempotent response with it).
    async fn enqueue_command(
        &self,
        command: &NewCommand,
        idempotent: Option<&IdempotentResponse>,
    ) -> EngineResult<EnqueueOutcome>;

    async fn order_status(&self, order_id: &str) -> EngineResult<Option<StatusRecord>>;

    async fn order(&self, order_id: &str) -> EngineResult<Option<OrderRecord>>;

    /// Completes a received command: applies `change` (status, history, event) if given, and
    /// acknowledges the command, all or nothing. Enforces per-order FIFO and optimistic
    /// concurrency on the version; see [`ApplyOutcome`].
    async fn apply(
        &self,
        command: &ReceivedCommand,
        change: Option<&StatusChange>,
    ) -> EngineResult<ApplyOutcome>;
}

/// The command queue, with SQS semantics: at-least-once, visibility timeout, receive count and
/// dead-letter queue, per-order FIFO (enforced by [`OrderStore::apply`]).
#[async_trait]
pub trait CommandQueue: Send + Sync {
    /// Receives up to `max` commands, waiting up to `wait` for the first one. Commands whose
    /// visibility timeout expired are received again; a command received more than
    /// `max_receives` times goes to the dead-letter queue instead.
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

/// The event log (DESIGN 1.3): entries with ids `<ms>-<seq>`, read from any cursor.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Entries after `after`, at most `max`, waiting up to `wait` when there are none yet.
    async fn read_events(
        &self,
        after: EventId,
        max: usize,
        wait: Duration,
    ) -> EngineResult<Vec<LogEntry>>;

    /// Appends an entry whose `event` field is `raw`, exactly as another program's XADD would.
    async fn append_raw_event(&self, raw: &str) -> EngineResult<EventId>;

    /// The id of the newest entry (or [`EventId::ZERO`] when the log is empty).
    async fn last_event_id(&self) -> EngineResult<EventId>;

    /// The id of the oldest retained entry, if any.
    async fn first_event_id(&self) -> EngineResult<Option<EventId>>;

    /// Keeps a malformed entry aside (idempotent per entry id: many readers may report it).
    async fn set_aside(&self, entry: &MalformedEntry) -> EngineResult<()>;

    async fn malformed_entries(&self, limit: usize) -> EngineResult<Vec<MalformedEntry>>;
}

/// Idempotency records for `Idempotency-Key`.
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Claims `key` for a request with `fingerprint`, or reports what an earlier request left.
    /// A claim that is never completed expires after `in_flight_ttl`.
    async fn begin_idempotent(
        &self,
        key: &str,
        fingerprint: &str,
        in_flight_ttl: Duration,
    ) -> EngineResult<IdempotencyBegin>;

    /// Drops an in-flight claim whose request failed, so the client may retry.
    async fn abandon_idempotent(&self, key: &str) -> EngineResult<()>;
}

#[async_trait]
pub trait Engine:
    OrderStore + CommandQueue + EventLog + IdempotencyStore + webhook::WebhookStore
{
    /// `memory` or `redis`.
    fn kind(&self) -> &'static str;

    /// Succeeds when the engine can serve requests now (readiness).
    async fn ping(&self) -> EngineResult<()>;
}

/// Engine settings shared by both engines, derived from [`Config`].
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub visibility_timeout: Duration,
    pub max_receives: u32,
    pub history_limit: usize,
    pub event_retention: u64,
    /// Identifies this process as a queue consumer (Redis consumer name).
    pub consumer_name: String,
}

impl EngineSettings {
    pub fn from_config(config: &Config, consumer_name: String) -> Self {
        EngineSettings {
            visibility_timeout: config.queue.visibility_timeout,
            max_receives: config.queue.max_receives,
            history_limit: config.engine.history_limit,
            event_retention: config.engine.event_retention,
            consumer_name,
        }
    }
}

/// Opens the engine named by the configuration.
pub async fn open(config: &Config, consumer_name: String) -> anyhow::Result<Arc<dyn Engine>> {
    let settings = EngineSettings::from_config(config, consumer_name);
    match config.engine.kind {
        crate::config::EngineKind::Memory => Ok(Arc::new(memory::MemoryEngine::new(settings))),
        crate::config::EngineKind::Redis => {
            let engine = redis::RedisEngine::connect(&config.engine, settings).await?;
            Ok(Arc::new(engine))
        }
    }
}
