//! The embedded engine: all state in this process, nothing to install, lost on exit.
//!
//! It keeps the exact semantics of the Redis engine (same event ids, same queue rules, same
//! outcomes) so that one conformance suite covers both. All state sits behind one
//! `std::sync::Mutex`: no `.await` ever happens while it is held and every critical section is
//! a few map operations, so a Tokio mutex would only add cost. Waiters (receivers, event
//! readers) park on `Notify`s instead of polling.
//!
//! The engine follows the seam's rooms: `orders.rs`, `queue.rs`, `log.rs`, `idempotency.rs`,
//! `steps.rs` and `webhooks.rs` each implement one trait and keep their part of [`State`]. This file
//! keeps the engine, the state they share and its lock; it never implements a room's behaviour.

mod idempotency;
mod log;
mod orders;
mod queue;
mod steps;
mod webhooks;

use super::{DeadLetter, Engine, EngineError, EngineResult, EngineSettings, Persistence};
use crate::model::{EventId, MalformedEntry};
use async_trait::async_trait;
use idempotency::IdempotencyRecord;
use orders::StoredOrder;
use queue::QueuedMessage;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use steps::StepState;
use tokio::sync::Notify;
use tokio::time::Instant;
use webhooks::WebhookState;

pub struct MemoryEngine {
    settings: EngineSettings,
    state: Mutex<State>,
    /// Woken when a command becomes receivable (enqueued, released, redriven, or queued by a
    /// workflow step: a follow-up, a fired timer, a claimed wait).
    commands_ready: Notify,
    /// Woken when an event is appended.
    events_appended: Notify,
}

#[derive(Default)]
struct State {
    /// Boxed: when the map grows it rehashes by moving entries, and moving a pointer instead
    /// of a whole order keeps that pause short with millions of orders.
    orders: HashMap<String, Box<StoredOrder>>,
    /// Order ids per customerId and per partnerId: what a resync snapshot lists
    /// (`OrderStore::list_statuses`). Orders are never deleted, so neither are entries.
    orders_by_customer: HashMap<String, BTreeSet<String>>,
    orders_by_partner: HashMap<String, BTreeSet<String>>,
    events: VecDeque<(EventId, String)>,
    last_event_id: EventId,
    /// The newest entry trimmed by retention (`EventLog::removed_after`).
    deleted_through: Option<EventId>,
    /// The command queue in arrival order, keyed by a sequence number (the receipt).
    messages: BTreeMap<u64, QueuedMessage>,
    next_message_seq: u64,
    /// Per-order FIFO gate: ids of each order's commands not yet completed, oldest first.
    pending_by_order: HashMap<String, VecDeque<String>>,
    dead_letters: VecDeque<DeadLetter>,
    idempotency: HashMap<String, (IdempotencyRecord, Instant)>,
    /// Keys in the order they expire (every key of one kind has the same TTL class, so
    /// insertion order is close to expiry order; stale entries are skipped on sweep).
    idempotency_expiry: VecDeque<(Instant, String)>,
    malformed: BTreeMap<EventId, MalformedEntry>,
    webhooks: WebhookState,
    /// Workflow timers (the orders keep their own step history and open wait).
    steps: StepState,
}

fn lock_poisoned() -> EngineError {
    EngineError::Corrupt("memory engine state lock poisoned by a panic".into())
}

impl MemoryEngine {
    pub fn new(settings: EngineSettings) -> Self {
        MemoryEngine {
            settings,
            state: Mutex::new(State::default()),
            commands_ready: Notify::new(),
            events_appended: Notify::new(),
        }
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> EngineResult<T> {
        let mut guard = self.state.lock().map_err(|_| lock_poisoned())?;
        Ok(f(&mut guard))
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> EngineResult<()> {
        self.with_state(|_| ())
    }

    async fn persistence(&self) -> Persistence {
        Persistence::Volatile
    }
}
