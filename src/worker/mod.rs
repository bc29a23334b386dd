//! The worker: receives commands from the engine's queue and runs the order workflow.
//!
//! It owns no state and no rules: it reads an order, asks [`crate::workflow::decide`] for the
//! next status, and hands the decision to [`OrderStore::apply`], which writes status, history
//! and event and acknowledges the command in one atomic step. A redelivered command therefore never
//! makes a second event: the engine reports it `AlreadyDone`. Per-order FIFO is the engine's
//! gate; the worker only waits (keeping the command invisible) while an earlier command of the
//! same order is pending.
//!
//! Several batches are in flight at once (`worker.batches_in_flight`). The first command of
//! each order in a batch is completed with the others in one engine call
//! ([`OrderStore::apply_batch`](crate::engine::OrderStore::apply_batch)); a later command of
//! the same order, and any command that call did not finish, runs on its own, concurrently:
//! different orders proceed in parallel.
//!
//! Workflow steps (`crate::workflow::steps`) run here too: a [`Command::Step`] is run on its
//! own by `steps.rs` (the HTTP call of a task or callback, a timer's or a callback's outcome),
//! and `timers.rs` turns due timers into commands.

mod steps;
pub mod timers;

use crate::backoff::Backoff;
use crate::config::WorkerConfig;
use crate::engine::{
    ApplyOutcome, Command, Engine, EngineError, ReceivedCommand, StatusChange, StepWrites,
};
use crate::metrics::Metrics;
use crate::webhooks::ssrf::AllowList;
use crate::workflow::{self, Decision, StepDecision, Workflow};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub struct Worker {
    engine: Arc<dyn Engine>,
    workflow: Arc<Workflow>,
    config: WorkerConfig,
    visibility_timeout: Duration,
    metrics: Arc<Metrics>,
    /// The SSRF-guarded client of task and callback calls (`workflow.allow_networks`).
    client: reqwest::Client,
    allow: AllowList,
    /// Wakes this node's timer loop when this worker schedules a timer.
    timers: Arc<tokio::sync::Notify>,
}

/// What completing a command writes: [`OrderStore::apply`](crate::engine::OrderStore::apply)
/// with an optional change (batched with the others), or
/// [`StepStore::apply_step`](crate::engine::StepStore::apply_step).
#[derive(Debug, Clone)]
enum Plan {
    Apply(Option<StatusChange>),
    Stay { version: u64, writes: StepWrites },
}

impl Plan {
    fn has_change(&self) -> bool {
        match self {
            Plan::Apply(change) => change.is_some(),
            Plan::Stay { .. } => true,
        }
    }

    /// Whether it schedules a timer.
    fn schedules_timer(&self) -> bool {
        match self {
            Plan::Apply(Some(change)) => change.steps.schedules_timer(),
            Plan::Stay { writes, .. } => writes.schedules_timer(),
            Plan::Apply(None) => false,
        }
    }
}

impl Worker {
    pub fn new(
        engine: Arc<dyn Engine>,
        workflow: Arc<Workflow>,
        config: WorkerConfig,
        visibility_timeout: Duration,
        metrics: Arc<Metrics>,
        timers: Arc<tokio::sync::Notify>,
    ) -> anyhow::Result<Arc<Worker>> {
        let allow = AllowList::parse(&workflow.config.allow_networks)
            .map_err(|e| anyhow::anyhow!("workflow.allow_networks: {e}"))?;
        let longest = workflow
            .config
            .steps
            .values()
            .filter_map(|s| s.request.as_ref().map(|r| r.timeout))
            .max()
            .unwrap_or(Duration::from_secs(10));
        let client = crate::webhooks::ssrf::client(
            allow.clone(),
            longest.min(Duration::from_secs(10)),
            longest,
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        Ok(Arc::new(Worker {
            engine,
            workflow,
            config,
            visibility_timeout,
            metrics,
            client,
            allow,
            timers,
        }))
    }

    /// Runs until `shutdown` fires, then finishes the batches in flight (releasing the commands
    /// they had not started) and returns. Each of the `batches_in_flight` pollers receives a
    /// batch, runs it and receives again, so receives overlap with processing.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut pollers = JoinSet::new();
        for _ in 0..self.config.batches_in_flight {
            pollers.spawn(self.clone().poll(shutdown.clone()));
        }
        while pollers.join_next().await.is_some() {}
        tracing::info!("worker stopped");
    }

    async fn poll(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        while !shutdown.is_cancelled() {
            // A receive is never dropped half-way: on Redis its commands may already be taken
            // (pending for this consumer) when shutdown comes, and a dropped reply would leave
            // them invisible until their visibility timeout. It ends within `receive_wait`;
            // what it got is released below (`process_batch` at shutdown).
            let received = self
                .engine
                .receive_batch(self.config.batch_size, self.config.receive_wait)
                .await;
            match received {
                Ok(batch) => {
                    backoff.reset();
                    if !batch.is_empty() {
                        self.process_batch(batch, &shutdown).await;
                    }
                }
                Err(e) => {
                    Metrics::inc(&self.metrics.worker_errors);
                    tracing::warn!(error = %e, "receiving commands failed; retrying");
                    if !backoff.sleep(&shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    /// Completes a received batch. The first command of each order in it (for a batch of new
    /// orders: all of them) is decided at once and applied with one engine call
    /// ([`OrderStore::apply_batch`](crate::engine::OrderStore::apply_batch): one script call
    /// on Redis instead of one per command). A later command of an order already in the batch
    /// runs on its own ([`Self::process`]), concurrently, as every command did before: it
    /// waits for the earlier one (`Blocked`) and is then decided on the status that one left,
    /// never on a status read before it. A first command the batch call did not finish
    /// (`Stale`, `Blocked`, an error of its own) continues on its own as well.
    async fn process_batch(&self, batch: Vec<ReceivedCommand>, shutdown: &CancellationToken) {
        if shutdown.is_cancelled() {
            let work = batch.iter().map(|command| self.release(command));
            futures_util::future::join_all(work).await;
            return;
        }
        let mut seen = std::collections::HashSet::new();
        // A step command that calls out or reads the order runs on its own; it still holds
        // its order's place. A wait's timer is decided with the others.
        let (firsts, laters): (Vec<&ReceivedCommand>, Vec<&ReceivedCommand>) =
            batch.iter().partition(|command| {
                seen.insert(command.message.order_id.as_str())
                    && self.workflow.decided_in_batch(&command.message.command)
            });
        let laters = laters
            .into_iter()
            .map(|command| self.process(command, false, shutdown));
        tokio::join!(
            self.process_firsts(&firsts, shutdown),
            futures_util::future::join_all(laters)
        );
    }

    /// Decides each command (reading the status only where it must, concurrently), applies
    /// them together, and hands what is not finished to [`Self::process`].
    async fn process_firsts(&self, commands: &[&ReceivedCommand], shutdown: &CancellationToken) {
        let decided = futures_util::future::join_all(
            commands.iter().map(|command| self.decide(command, false)),
        )
        .await;
        let mut batch = Vec::with_capacity(commands.len());
        let mut stays = Vec::new();
        let mut on_their_own = Vec::new();
        for (command, decision) in commands.iter().zip(decided) {
            match decision {
                Ok(Plan::Apply(change)) => batch.push((*command, change)),
                // New orders entering the step of `accepted`: written one by one, at once.
                Ok(plan @ Plan::Stay { .. }) => stays.push((*command, plan)),
                // Its own round reports the error (or succeeds, if it was passing).
                Err(_) => on_their_own.push(*command),
            }
        }
        let stayed = futures_util::future::join_all(
            stays
                .iter()
                .map(|(command, plan)| self.write(command, plan)),
        )
        .await;
        for ((command, plan), outcome) in stays.iter().zip(stayed) {
            match outcome {
                Ok(outcome) if self.finished(&outcome, plan.has_change()) => {}
                _ => on_their_own.push(*command),
            }
        }
        let pairs: Vec<_> = batch
            .iter()
            .map(|(c, change)| (*c, change.as_ref()))
            .collect();
        match self.engine.apply_batch(&pairs).await {
            Ok(outcomes) => {
                for ((command, change), outcome) in batch.iter().zip(outcomes) {
                    match outcome {
                        Ok(outcome) if self.finished(&outcome, change.is_some()) => {
                            if change.as_ref().is_some_and(|c| c.steps.schedules_timer()) {
                                self.timers.notify_one();
                            }
                        }
                        _ => on_their_own.push(*command),
                    }
                }
            }
            Err(e) => {
                Metrics::inc(&self.metrics.worker_errors);
                tracing::warn!(error = %e, commands = batch.len(),
                    "applying a batch failed; its commands will be delivered again after the visibility timeout");
            }
        }
        // Decided again on a fresh read: a `Stale` one needs it, the others are rare.
        let rest = on_their_own
            .into_iter()
            .map(|command| self.process(command, true, shutdown));
        futures_util::future::join_all(rest).await;
    }

    /// Counts an outcome (of the batch call or of a command's own round); true if the command
    /// is finished with.
    fn finished(&self, outcome: &ApplyOutcome, had_change: bool) -> bool {
        match outcome {
            ApplyOutcome::Applied { event_id } => {
                if event_id.is_some() {
                    Metrics::inc(&self.metrics.commands_applied);
                }
                if !had_change {
                    Metrics::inc(&self.metrics.commands_refused);
                }
                true
            }
            ApplyOutcome::AlreadyDone => {
                Metrics::inc(&self.metrics.commands_redelivered_done);
                true
            }
            ApplyOutcome::Stale { .. } | ApplyOutcome::Blocked => false,
        }
    }

    /// Runs one command to completion, or leaves it for redelivery on error, or releases it
    /// at shutdown if it had to wait.
    /// `read_status` as in [`Self::try_apply`], for the first round.
    async fn process(
        &self,
        command: &ReceivedCommand,
        mut read_status: bool,
        shutdown: &CancellationToken,
    ) {
        if shutdown.is_cancelled() {
            self.release(command).await;
            return;
        }
        if !self.workflow.decided_in_batch(&command.message.command) {
            return self.run_step(command, shutdown).await;
        }
        let mut turn = TurnWait::new();
        loop {
            let outcome = match self.try_apply(command, read_status).await {
                Ok((outcome, had_change)) if self.finished(&outcome, had_change) => return,
                Ok((outcome, _)) => outcome,
                Err(e) => {
                    Metrics::inc(&self.metrics.worker_errors);
                    tracing::warn!(error = %e, message_id = %command.message.message_id, order_id = %command.message.order_id,
                        "command failed; it will be delivered again after the visibility timeout");
                    return;
                }
            };
            match outcome {
                // Counted and finished above.
                ApplyOutcome::Applied { .. } | ApplyOutcome::AlreadyDone => return,
                ApplyOutcome::Stale { .. } => read_status = true,
                ApplyOutcome::Blocked => {
                    if turn.pause(self, command, shutdown).await {
                        continue;
                    }
                    if shutdown.is_cancelled() {
                        self.release(command).await;
                    } else {
                        // Give the slot back; the command returns after its visibility timeout.
                        tracing::info!(message_id = %command.message.message_id, order_id = %command.message.order_id,
                            "command still waiting for an earlier command of its order; leaving it for redelivery");
                    }
                    return;
                }
            }
        }
    }

    async fn release(&self, command: &ReceivedCommand) {
        if let Err(e) = self.engine.release(command).await {
            tracing::warn!(error = %e, message_id = %command.message.message_id, "releasing command failed; it returns after its visibility timeout");
        }
    }

    /// Decides and applies once; the outcome, and whether the workflow made a change. A
    /// `processOrder` is decided without reading the order back (it carries the order, and a
    /// new order is `accepted` at version 1) unless `read_status`.
    async fn try_apply(
        &self,
        command: &ReceivedCommand,
        read_status: bool,
    ) -> Result<(ApplyOutcome, bool), EngineError> {
        let plan = self.decide(command, read_status).await?;
        let outcome = self.write(command, &plan).await?;
        Ok((outcome, plan.has_change()))
    }

    /// Completes a command with its plan, and wakes this node's timer loop for a timer it
    /// scheduled.
    async fn write(
        &self,
        command: &ReceivedCommand,
        plan: &Plan,
    ) -> Result<ApplyOutcome, EngineError> {
        let outcome = match plan {
            Plan::Apply(change) => self.engine.apply(command, change.as_ref()).await?,
            Plan::Stay { version, writes } => {
                self.engine.apply_step(command, *version, writes).await?
            }
        };
        if matches!(outcome, ApplyOutcome::Applied { .. }) && plan.schedules_timer() {
            self.timers.notify_one();
        }
        Ok(outcome)
    }

    /// The plan for a (non-step) command: the change the workflow makes, or none if it refuses
    /// it (logged), or the step writes of a new order entering the step of `accepted`.
    async fn decide(
        &self,
        command: &ReceivedCommand,
        read_status: bool,
    ) -> Result<Plan, EngineError> {
        let order_id = &command.message.order_id;
        let status = match &command.message.command {
            // If anything ran before it, the engine answers `Stale` and the next round reads.
            Command::ProcessOrder { order } if !read_status => workflow::initial_status(order),
            _ => match self.engine.order_status(order_id).await? {
                Some(s) => s,
                None => return Err(missing(order_id)),
            },
        };
        // The order itself, where entering the target status needs it (a wait `until` one
        // of its fields); a new order carries it.
        let loaded;
        let order = match &command.message.command {
            Command::ProcessOrder { order } => Some(order.as_ref()),
            Command::Transition { status: to, .. } if self.workflow.entry_needs_order(*to) => {
                loaded = self.engine.order(order_id).await?.map(|r| r.order);
                loaded.as_ref()
            }
            _ => None,
        };
        if let Command::Step {
            status: step_status,
            version,
            ..
        } = &command.message.command
        {
            // A wait's timer (see `Workflow::decided_in_batch`): moot if the order moved on.
            let step = self.workflow.step(*step_status);
            let (Some(step), true) = (
                step,
                status.version == *version && status.status == *step_status,
            ) else {
                tracing::info!(message_id = %command.message.message_id, order_id = %order_id,
                    "wait timer of a status the order has left; acknowledged without effect");
                return Ok(Plan::Apply(None));
            };
            let StepDecision::Move {
                to,
                reason,
                mut records,
            } = self.workflow.wait_elapsed(step, *version)
            else {
                return Ok(Plan::Apply(None));
            };
            let mut change = workflow::status_change(&status, to, Some(reason));
            let entry =
                self.workflow
                    .entry_writes(order_id, None, to, change.event.version, now_ms());
            records.extend(entry.records);
            change.steps = StepWrites { records, ..entry };
            return Ok(Plan::Apply(Some(change)));
        }
        Ok(
            match workflow::decide(
                &self.workflow,
                &command.message.command,
                &status,
                order,
                now_ms(),
            ) {
                Decision::Change(change) => Plan::Apply(Some(change)),
                Decision::Stay { version, writes } => Plan::Stay { version, writes },
                Decision::Refuse(why) => {
                    tracing::info!(message_id = %command.message.message_id, order_id = %order_id, reason = %why,
                        "command acknowledged without change");
                    Plan::Apply(None)
                }
            },
        )
    }
}

/// A command waiting for its order's earlier command (per-order FIFO): backs off, keeps the
/// command invisible meanwhile, and says when to stop waiting.
struct TurnWait {
    started: Instant,
    last_extended: Instant,
    wait: Duration,
}

impl TurnWait {
    fn new() -> TurnWait {
        let now = Instant::now();
        TurnWait {
            started: now,
            last_extended: now,
            wait: Duration::from_millis(2),
        }
    }

    /// One pause of a blocked command; false when the worker should stop waiting: at shutdown,
    /// or after a visibility timeout, which means the earlier command is stuck (its holder
    /// died, or it is failing toward the dead-letter queue).
    async fn pause(
        &mut self,
        worker: &Worker,
        command: &ReceivedCommand,
        shutdown: &CancellationToken,
    ) -> bool {
        Metrics::inc(&worker.metrics.commands_blocked);
        if shutdown.is_cancelled() || self.started.elapsed() > worker.visibility_timeout {
            return false;
        }
        if self.last_extended.elapsed() > worker.visibility_timeout / 3 {
            if let Err(e) = worker.engine.extend_visibility(command).await {
                tracing::warn!(error = %e, message_id = %command.message.message_id, "extending visibility failed");
            }
            self.last_extended = Instant::now();
        }
        tokio::time::sleep(self.wait).await;
        self.wait = (self.wait * 2).min(Duration::from_millis(100));
        true
    }
}

/// Now, in Unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn missing(order_id: &str) -> EngineError {
    EngineError::Corrupt(format!(
        "command for order {order_id}, which does not exist"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fixtures::{new_command as command, order};
    use crate::engine::memory::MemoryEngine;
    use crate::engine::{EngineSettings, LogEntry};
    use crate::model::{LogCursor, OrderStatus};

    /// A memory engine whose commands stay invisible for `visibility`.
    pub(super) fn memory_engine(visibility: Duration) -> Arc<dyn Engine> {
        Arc::new(MemoryEngine::new(EngineSettings {
            visibility_timeout: visibility,
            max_receives: 5,
            history_limit: 10,
            step_history_limit: 100,
            event_retention: 1000,
            consumer_name: "w".into(),
        }))
    }

    /// A worker on `engine` running `workflow`, one batch of 10 in flight.
    pub(super) fn worker(
        engine: &Arc<dyn Engine>,
        workflow: crate::config::WorkflowConfig,
        visibility: Duration,
    ) -> Arc<Worker> {
        let workflow = Workflow::new(workflow, crate::workflow::token::TokenKey::random())
            .expect("the test workflow compiles");
        Worker::new(
            engine.clone(),
            Arc::new(workflow),
            WorkerConfig {
                batch_size: 10,
                batches_in_flight: 1,
                receive_wait: Duration::from_millis(20),
            },
            visibility,
            Arc::new(Metrics::default()),
            Default::default(),
        )
        .expect("the test worker builds")
    }

    /// Accepts a new order `id` with its `processOrder` command.
    pub(super) async fn accept(engine: &Arc<dyn Engine>, id: &str) {
        let o = order(id);
        let cmd = command(
            id,
            Command::ProcessOrder {
                order: Box::new(o.clone()),
            },
        );
        engine
            .accept_order(&o, &workflow::accepted_event(&o), &cmd, None)
            .await
            .unwrap();
    }

    /// A `preparing` queued right behind a new order's `processOrder` is illegal from
    /// `accepted`: if the worker decided it together with the batch's other commands, on the
    /// status read before them, it would refuse it. It must run after the confirmation.
    #[tokio::test]
    async fn commands_of_one_order_in_one_batch_run_in_order_on_the_status_before_them() {
        let engine = memory_engine(Duration::from_secs(30));
        accept(&engine, "o1").await;
        accept(&engine, "o2").await;
        for status in [OrderStatus::Preparing, OrderStatus::Shipped] {
            let cmd = command(
                "o1",
                Command::Transition {
                    status,
                    reason: None,
                },
            );
            engine.enqueue_command(&cmd, None).await.unwrap();
        }
        let worker = worker(&engine, Default::default(), Duration::from_secs(30));
        let batch = engine
            .receive_batch(10, Duration::from_millis(20))
            .await
            .unwrap();
        assert_eq!(batch.len(), 4, "one batch holds all four commands");
        worker.process_batch(batch, &CancellationToken::new()).await;

        let o1 = engine.order_status("o1").await.unwrap().unwrap();
        assert_eq!((o1.status, o1.version), (OrderStatus::Shipped, 4));
        let o2 = engine.order_status("o2").await.unwrap().unwrap();
        assert_eq!((o2.status, o2.version), (OrderStatus::Confirmed, 2));
        let o1_events: Vec<OrderStatus> = engine
            .read_events(&LogCursor::start(1), 100, Duration::ZERO)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|e| match e {
                LogEntry::Event(e) if e.event.order_id == "o1" => Some(e.event.status),
                _ => None,
            })
            .collect();
        assert_eq!(
            o1_events,
            [
                OrderStatus::Accepted,
                OrderStatus::Confirmed,
                OrderStatus::Preparing,
                OrderStatus::Shipped
            ]
        );
        let stats = engine.queue_stats().await.unwrap();
        assert_eq!((stats.visible, stats.in_flight), (0, 0));
    }
}
