//! The orders room of the seam: the [`OrderStore`] trait and the outcomes of its calls.
//!
//! It owns an order's status, its history and the events and commands written in the same
//! step, so an engine can make each call atomic. It never decides the workflow (which
//! transition is allowed, what an event says): the caller hands it the decided change.

use super::{EngineResult, IdempotentResponse, NewCommand, ReceivedCommand, StepWrites};
use crate::model::{EventId, Order, OrderEvent, OrderRecord, StatusRecord};
use async_trait::async_trait;

/// The status change a worker wants to make for a command. `expected_version` is the version
/// the worker read: the engine refuses the change if the order moved on meanwhile.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusChange {
    pub expected_version: u64,
    pub event: OrderEvent,
    /// Reason recorded in the order's history (also carried in `event.data` when set).
    pub reason: Option<String>,
    /// The workflow's writes for the status entered (its step records, the command or timer
    /// that runs its action), made in the same step. The change also closes any open wait.
    pub steps: StepWrites,
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

/// Which orders a listing ([`OrderStore::list_statuses`]) covers: what a resync snapshot reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderScope {
    /// One order (none when it does not exist).
    Order(String),
    /// Every order of this customerId, at any partner (the caller narrows by partner).
    Customer(String),
    /// Every order of this partnerId.
    Partner(String),
    /// Every order.
    All,
}

impl OrderScope {
    /// Whether `status` is an order of this scope.
    pub fn covers(&self, status: &StatusRecord) -> bool {
        match self {
            OrderScope::Order(id) => status.order_id == *id,
            OrderScope::Customer(id) => status.customer_id == *id,
            OrderScope::Partner(id) => status.partner_id.as_deref() == Some(id.as_str()),
            OrderScope::All => true,
        }
    }
}

/// What [`OrderStore::list_statuses`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Listing {
    /// Every order of the scope, by orderId.
    Statuses(Vec<StatusRecord>),
    /// The scope holds more than the bound asked for: nothing is returned, never a part.
    TooMany { max: usize },
}

#[derive(Debug, Clone, PartialEq)]
pub enum EnqueueOutcome {
    Enqueued,
    UnknownOrder,
}

/// Orders, their status and history, written together with their events.
#[async_trait]
pub trait OrderStore: Send + Sync {
    /// Atomically: the status record (`accepted`, version 1), its history entry, the
    /// `order.accepted` event, the `processOrder` command and the idempotent response.
    async fn accept_order(
        &self,
        order: &Order,
        accepted_event: &OrderEvent,
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

    /// The current status of every order of `scope`, sorted by orderId, or
    /// [`Listing::TooMany`] when it holds more than `max` (a resync snapshot is whole or
    /// refused). Each record is read as it is at the time of the read (records of different
    /// orders may come from slightly different moments; each is one order's whole record).
    /// Orders accepted before the engine kept its per-customer and per-partner index (Redis
    /// data written by older versions) are not listed.
    async fn list_statuses(&self, scope: &OrderScope, max: usize) -> EngineResult<Listing>;

    /// Completes a received command: applies `change` (status, history, event) if given, and
    /// acknowledges the command, all or nothing. Enforces per-order FIFO and optimistic
    /// concurrency on the version; see [`ApplyOutcome`].
    async fn apply(
        &self,
        command: &ReceivedCommand,
        change: Option<&StatusChange>,
    ) -> EngineResult<ApplyOutcome>;

    /// Completes several received commands in one engine call, in order, each exactly as
    /// [`Self::apply`] would (a later one sees the changes of the earlier ones), and returns
    /// their outcomes in the same order. A command's own failure (e.g. its order is missing)
    /// is its own `Err`; the outer `Err` means the call as a whole failed and nothing is known
    /// about any of them (each is then redelivered after its visibility timeout, as after a
    /// failed `apply`).
    ///
    /// It exists for the Redis engine, where one script call per batch instead of one per
    /// command is most of the worker's Redis time. The default applies one by one, which is
    /// what the memory engine's cheap, lock-bound `apply` wants anyway.
    async fn apply_batch(
        &self,
        batch: &[(&ReceivedCommand, Option<&StatusChange>)],
    ) -> EngineResult<Vec<EngineResult<ApplyOutcome>>> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for (command, change) in batch {
            outcomes.push(self.apply(command, *change).await);
        }
        Ok(outcomes)
    }
}
