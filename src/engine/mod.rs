//! The engine seam: every byte of Herald's state lives behind these traits.
//!
//! One room per part of the seam, each with its trait and its types:
//!
//! | room | trait | owns |
//! | --- | --- | --- |
//! | `orders.rs` | [`OrderStore`] | status, history, accept and apply (the atomic changes) |
//! | `queue.rs` | [`CommandQueue`] | commands with SQS semantics, dead letters |
//! | `log.rs` | [`EventLog`] | the event log, and the one decoder of its entries |
//! | `idempotency.rs` | [`IdempotencyStore`] | `Idempotency-Key` claims and replays |
//! | `webhook.rs` | [`WebhookStore`](webhook::WebhookStore) | endpoints, deliveries, retry schedule |
//! | `steps.rs` | [`StepStore`] | workflow step history, durable timers, callback waits |
//!
//! This file keeps only what ties them together: [`Engine`], [`EngineError`], the settings and
//! [`open`]. `memory/` implements the seam inside the process, `redis/` on Redis streams and
//! Lua scripts; both are split into the same rooms. Nothing outside this module names Redis,
//! and every behaviour promised here is checked against both engines by
//! `tests/conformance.rs`. The rooms never import an engine; the engines import the rooms.
//!
//! Changes that touch several pieces of state (an order's status, its history, its event and
//! the queue) are single engine calls, so that an engine can make them atomic: a crash can never
//! leave a status without its event or an acknowledged command without its effect.

#[cfg(test)]
pub(crate) mod fixtures;
pub mod idempotency;
pub mod log;
pub mod memory;
pub mod orders;
pub mod queue;
pub mod redis;
pub mod steps;
pub mod webhook;

pub use idempotency::*;
pub use log::*;
pub use orders::*;
pub use queue::*;
pub use steps::*;

use crate::config::Config;
use async_trait::async_trait;
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

#[async_trait]
pub trait Engine:
    OrderStore + CommandQueue + EventLog + IdempotencyStore + StepStore + webhook::WebhookStore
{
    /// `memory` or `redis`.
    fn kind(&self) -> &'static str;

    /// Succeeds when the engine can serve requests now (readiness).
    async fn ping(&self) -> EngineResult<()>;

    /// Whether the engine's state survives a restart of its store: logged at start-up (a
    /// warning when it does not) and reported by `GET /readyz`. Never fails: a store that
    /// cannot say is [`Persistence::Unknown`].
    async fn persistence(&self) -> Persistence;

    /// Dedicated connections held by blocking reads right now, for engines that bound them
    /// (`engine.max_blocking_connections`); `None` when the engine has no such pool.
    fn blocking_connections_in_use(&self) -> Option<usize> {
        None
    }
}

/// How the engine keeps its state ([`Engine::persistence`]). On a Redis Cluster, the weakest
/// of the masters holding Herald's partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persistence {
    /// In this process only (the memory engine): lost on exit, by design.
    Volatile,
    /// Every Redis holding Herald's data writes an append-only file (`appendonly yes`).
    AppendOnlyFile,
    /// Every Redis holding Herald's data persists, some only by RDB snapshots (`save`): a
    /// crash loses the writes since the last snapshot.
    Snapshots,
    /// A Redis holding Herald's data keeps nothing on disk (`appendonly no`, `save ""`): its
    /// restart loses every order, queued command, event and webhook retry.
    None,
    /// The store would not say (a managed Redis refusing `CONFIG`, or no answer); why, in
    /// words that name no address or credential.
    Unknown(String),
}

impl Persistence {
    /// The name `GET /readyz` reports: `volatile`, `aof`, `snapshots`, `none` or `unknown`.
    pub fn name(&self) -> &'static str {
        match self {
            Persistence::Volatile => "volatile",
            Persistence::AppendOnlyFile => "aof",
            Persistence::Snapshots => "snapshots",
            Persistence::None => "none",
            Persistence::Unknown(_) => "unknown",
        }
    }

    /// What an operator should know, when the engine is meant to be durable and may not be.
    pub fn warning(&self) -> Option<String> {
        match self {
            Persistence::None => Some(
                "Redis has no persistence (appendonly no, save \"\"): a Redis restart loses \
                 every order, queued command, event and webhook retry; run it with \
                 appendonly yes"
                    .to_owned(),
            ),
            Persistence::Unknown(why) => Some(format!(
                "cannot tell whether Redis persists its data ({why}); make sure it runs with \
                 appendonly yes"
            )),
            _ => None,
        }
    }

    /// The weaker of two (a cluster is as durable as its least durable master).
    pub fn weaker(self, other: Persistence) -> Persistence {
        fn rank(p: &Persistence) -> u8 {
            match p {
                Persistence::None | Persistence::Volatile => 0,
                Persistence::Unknown(_) => 1,
                Persistence::Snapshots => 2,
                Persistence::AppendOnlyFile => 3,
            }
        }
        if rank(&other) < rank(&self) {
            other
        } else {
            self
        }
    }
}

/// Engine settings shared by both engines, derived from [`Config`].
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub visibility_timeout: Duration,
    pub max_receives: u32,
    pub history_limit: usize,
    /// Step records an order keeps (the newest; `workflow.step_history_limit`).
    pub step_history_limit: usize,
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
            step_history_limit: config.workflow.step_history_limit,
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
