//! The worker: receives commands from the engine's queue and runs the order workflow.
//!
//! It owns no state and no rules: it reads an order, asks [`crate::workflow::decide`] for the
//! next status, and hands the decision to [`OrderStore::apply`], which writes status, history
//! and event and acknowledges the command in one atomic step. A redelivered command therefore never
//! makes a second event: the engine reports it `AlreadyDone`. Per-order FIFO is the engine's
//! gate; the worker only waits (keeping the command invisible) while an earlier command of the
//! same order is pending.
//!
//! Several batches are in flight at once (`worker.batches_in_flight`), and the commands of one
//! batch run concurrently: different orders proceed in parallel.

use crate::backoff::Backoff;
use crate::config::{WorkerConfig, WorkflowConfig};
use crate::engine::{ApplyOutcome, Command, Engine, EngineError, ReceivedCommand};
use crate::metrics::Metrics;
use crate::workflow::{self, Decision};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub struct Worker {
    engine: Arc<dyn Engine>,
    workflow: WorkflowConfig,
    config: WorkerConfig,
    visibility_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Worker {
    pub fn new(
        engine: Arc<dyn Engine>,
        workflow: WorkflowConfig,
        config: WorkerConfig,
        visibility_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Worker> {
        Arc::new(Worker {
            engine,
            workflow,
            config,
            visibility_timeout,
            metrics,
        })
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
        loop {
            let received = tokio::select! {
                r = self.engine.receive_batch(self.config.batch_size, self.config.receive_wait) => r,
                _ = shutdown.cancelled() => return,
            };
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

    async fn process_batch(&self, batch: Vec<ReceivedCommand>, shutdown: &CancellationToken) {
        let work = batch.iter().map(|command| self.process(command, shutdown));
        futures_util::future::join_all(work).await;
    }

    /// Runs one command to completion, or leaves it for redelivery on error, or releases it
    /// at shutdown if it had to wait.
    async fn process(&self, command: &ReceivedCommand, shutdown: &CancellationToken) {
        if shutdown.is_cancelled() {
            self.release(command).await;
            return;
        }
        let started = Instant::now();
        let mut last_extended = started;
        let mut wait = Duration::from_millis(2);
        let mut read_status = false;
        loop {
            match self.try_apply(command, read_status).await {
                Ok(ApplyOutcome::Applied { event_id }) => {
                    if event_id.is_some() {
                        Metrics::inc(&self.metrics.commands_applied);
                    }
                    return;
                }
                Ok(ApplyOutcome::AlreadyDone) => {
                    Metrics::inc(&self.metrics.commands_redelivered_done);
                    return;
                }
                Ok(ApplyOutcome::Stale { .. }) => read_status = true,
                Ok(ApplyOutcome::Blocked) => {
                    Metrics::inc(&self.metrics.commands_blocked);
                    if shutdown.is_cancelled() {
                        self.release(command).await;
                        return;
                    }
                    // Waiting longer than a visibility timeout means the earlier command is
                    // stuck (its holder died, or it is failing toward the dead-letter queue).
                    // Give the slot back; the command returns after its visibility timeout.
                    if started.elapsed() > self.visibility_timeout {
                        tracing::info!(message_id = %command.message.message_id, order_id = %command.message.order_id,
                            "command still waiting for an earlier command of its order; leaving it for redelivery");
                        return;
                    }
                    // Keep the command invisible while it waits its turn.
                    if last_extended.elapsed() > self.visibility_timeout / 3 {
                        if let Err(e) = self.engine.extend_visibility(command).await {
                            tracing::warn!(error = %e, message_id = %command.message.message_id, "extending visibility failed");
                        }
                        last_extended = Instant::now();
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(100));
                }
                Err(e) => {
                    Metrics::inc(&self.metrics.worker_errors);
                    tracing::warn!(error = %e, message_id = %command.message.message_id, order_id = %command.message.order_id,
                        "command failed; it will be delivered again after the visibility timeout");
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

    /// Decides and applies once. A `processOrder` is decided without reading the order back
    /// (it carries the order, and a new order is `accepted` at version 1) unless `read_status`.
    async fn try_apply(
        &self,
        command: &ReceivedCommand,
        read_status: bool,
    ) -> Result<ApplyOutcome, EngineError> {
        let order_id = &command.message.order_id;
        let status = match &command.message.command {
            // If anything ran before it, the engine answers `Stale` and the next round reads.
            Command::ProcessOrder { order } if !read_status => workflow::initial_status(order),
            _ => match self.engine.order_status(order_id).await? {
                Some(s) => s,
                None => return Err(missing(order_id)),
            },
        };
        let change = match workflow::decide(&self.workflow, &command.message.command, &status) {
            Decision::Change(change) => Some(change),
            Decision::Refuse(why) => {
                tracing::info!(message_id = %command.message.message_id, order_id = %order_id, reason = %why,
                    "command acknowledged without change");
                None
            }
        };
        let outcome = self.engine.apply(command, change.as_ref()).await?;
        if change.is_none() && matches!(outcome, ApplyOutcome::Applied { .. }) {
            Metrics::inc(&self.metrics.commands_refused);
        }
        Ok(outcome)
    }
}

fn missing(order_id: &str) -> EngineError {
    EngineError::Corrupt(format!(
        "command for order {order_id}, which does not exist"
    ))
}
