//! Running a workflow step command: read the order, make the step's HTTP call (a task, or a
//! callback handing out its token) or take the timer's or callback's outcome, let
//! [`Workflow::decide_step`] decide, and complete the command with that decision in one engine
//! call. The call is made once per delivery of the command: a `Blocked` completion waits and
//! writes the same decision (up to a visibility timeout; then the command is given back, and
//! its next delivery calls again, with the same `Idempotency-Key`); a `Stale` one means the
//! order moved on, and the step is acknowledged without effect.
//!
//! A step command is blocked only behind an earlier command of its order queued before it
//! (an API transition that arrived while a timer was due, say): its call is made before the
//! completion finds that out, and its outcome is then moot if that command moved the order.
//!
//! Each call carries `Idempotency-Key` (the same for every attempt of the series, see
//! [`idempotency_key`]) and `Herald-Attempt`, goes through the SSRF guard
//! (`workflow.allow_networks`), and keeps the command invisible while it runs.

use super::{Plan, TurnWait, Worker, missing, now_ms};
use crate::config::StepKind;
use crate::engine::{ApplyOutcome, Command, EngineError, ReceivedCommand, StepAction, StepWrites};
use crate::metrics::Metrics;
use crate::model::{Order, OrderRecord};
use crate::webhooks::sender::error_chain;
use crate::webhooks::ssrf;
use crate::workflow::steps::{failed_after_callback, idempotency_key};
use crate::workflow::template::{Escape, fill_str, fill_url};
use crate::workflow::{Outcome, Step, StepDecision, status_change};
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The most of a service's answer read to judge it (the history keeps less, see
/// `workflow.max_response_bytes`).
const MAX_ANSWER_BYTES: usize = 1 << 20;

impl Worker {
    pub(super) async fn run_step(&self, command: &ReceivedCommand, shutdown: &CancellationToken) {
        // A call is made only once the command heads its order: an earlier command (a cancel,
        // say) runs first, and the call is then not made at all if it moved the order.
        if let Command::Step {
            action: StepAction::Attempt { .. },
            ..
        } = &command.message.command
            && !self.wait_for_turn(command, shutdown).await
        {
            return;
        }
        let mut plan = match self.plan_step(command).await {
            Ok(plan) => plan,
            Err(e) => {
                Metrics::inc(&self.metrics.worker_errors);
                tracing::warn!(error = %e, message_id = %command.message.message_id, order_id = %command.message.order_id,
                    "workflow step failed; it will be delivered again after the visibility timeout");
                return;
            }
        };
        let mut turn = TurnWait::new();
        loop {
            match self.write(command, &plan).await {
                Ok(outcome @ (ApplyOutcome::Applied { .. } | ApplyOutcome::AlreadyDone)) => {
                    self.finished(&outcome, plan.has_change());
                    return;
                }
                // The order moved on while the step ran: its outcome is moot.
                Ok(ApplyOutcome::Stale { .. }) => plan = Plan::Apply(None),
                Ok(ApplyOutcome::Blocked) => {
                    if !turn.pause(self, command, shutdown).await {
                        self.release(command).await;
                        return;
                    }
                }
                Err(e) => {
                    Metrics::inc(&self.metrics.worker_errors);
                    tracing::warn!(error = %e, message_id = %command.message.message_id, order_id = %command.message.order_id,
                        "completing a workflow step failed; it will be delivered again after the visibility timeout");
                    return;
                }
            }
        }
    }

    /// Waits until `command` heads its order's FIFO; false if it gave the command back
    /// (shutdown, or waiting longer than a visibility timeout) or failed to ask.
    async fn wait_for_turn(&self, command: &ReceivedCommand, shutdown: &CancellationToken) -> bool {
        let mut turn = TurnWait::new();
        loop {
            match self.engine.heads_its_order(command).await {
                Ok(true) => return true,
                Ok(false) => {}
                Err(e) => {
                    Metrics::inc(&self.metrics.worker_errors);
                    tracing::warn!(error = %e, message_id = %command.message.message_id,
                        "asking a workflow step's turn failed; it will be delivered again after the visibility timeout");
                    return false;
                }
            }
            if !turn.pause(self, command, shutdown).await {
                self.release(command).await;
                return false;
            }
        }
    }

    /// Reads the order, runs the step (calling out for an attempt) and decides.
    async fn plan_step(&self, command: &ReceivedCommand) -> Result<Plan, EngineError> {
        let order_id = &command.message.order_id;
        let Command::Step {
            status,
            version,
            action,
        } = &command.message.command
        else {
            return Ok(Plan::Apply(None));
        };
        let Some(record) = self.engine.order(order_id).await? else {
            return Err(missing(order_id));
        };
        let moot = |why: &str| {
            tracing::info!(message_id = %command.message.message_id, order_id = %order_id, step_status = %status, version, reason = why,
                "workflow step acknowledged without effect");
            Ok(Plan::Apply(None))
        };
        if record.status.version != *version || record.status.status != *status {
            return moot("the order has left the step's status");
        }
        let Some(step) = self.workflow.step(*status) else {
            return moot("the workflow has no step for this status any more");
        };
        let (attempt, retries, outcome) = match action {
            StepAction::Attempt { attempt, retries } => {
                if step.config.kind == StepKind::Wait {
                    return moot("a wait step makes no call");
                }
                let outcome = self
                    .call(command, step, &record.order, *version, *attempt)
                    .await;
                if let Outcome::Failed { class, .. } = &outcome
                    && step.config.kind == StepKind::Callback
                {
                    // Did the token come back while the call was failing? Then its command,
                    // queued behind this one, decides; this failure goes on record only.
                    let wait = crate::workflow::token::wait_id(*version, *attempt);
                    let now = self.engine.order(order_id).await?;
                    if now.is_some_and(|r| r.open_wait.as_deref() != Some(wait.as_str())) {
                        return Ok(Plan::Stay {
                            version: *version,
                            writes: StepWrites {
                                records: vec![failed_after_callback(
                                    step, *version, *attempt, class,
                                )],
                                ..StepWrites::default()
                            },
                        });
                    }
                }
                (*attempt, retries.clone(), outcome)
            }
            StepAction::Elapsed {
                attempt,
                retries,
                heartbeat,
            } => {
                let (attempt, retries) = spent(&record, step, *version, *attempt, retries);
                (
                    attempt,
                    retries,
                    Outcome::Elapsed {
                        heartbeat: *heartbeat,
                    },
                )
            }
            StepAction::Callback {
                attempt,
                succeeded,
                result,
            } => {
                if step.config.kind != StepKind::Callback {
                    return moot("the step is not a callback");
                }
                let (attempt, retries) = spent(&record, step, *version, *attempt, &[]);
                (
                    attempt,
                    retries,
                    Outcome::Callback {
                        succeeded: *succeeded,
                        result: result.clone(),
                    },
                )
            }
        };
        let now = now_ms();
        let decision = self.workflow.decide_step(
            step,
            &record.order,
            *version,
            attempt,
            &retries,
            outcome,
            now,
        );
        Ok(match decision {
            StepDecision::Stay(writes) => {
                if writes
                    .follow_up
                    .as_ref()
                    .is_some_and(|f| f.due_ms.is_some())
                    && writes.records.iter().any(|r| r.kind == "retryScheduled")
                {
                    Metrics::inc(&self.metrics.workflow_retries);
                }
                Plan::Stay {
                    version: *version,
                    writes,
                }
            }
            StepDecision::Move {
                to,
                reason,
                mut records,
            } => {
                if records.iter().any(|r| r.kind == "caught") {
                    Metrics::inc(&self.metrics.workflow_caught);
                }
                let mut change = status_change(&record.status, to, Some(reason));
                let entry = self.workflow.entry_writes(
                    order_id,
                    Some(&record.order),
                    to,
                    change.event.version,
                    now,
                );
                records.extend(entry.records);
                change.steps = StepWrites {
                    records,
                    follow_up: entry.follow_up,
                    open_wait: entry.open_wait,
                    heartbeat: entry.heartbeat,
                };
                Plan::Apply(Some(change))
            }
        })
    }

    /// Makes the step's HTTP call, keeping the command invisible while it runs.
    async fn call(
        &self,
        command: &ReceivedCommand,
        step: &Step,
        order: &Order,
        version: u64,
        attempt: u32,
    ) -> Outcome {
        Metrics::inc(&self.metrics.workflow_calls);
        let call = self.send(step, order, version, attempt);
        tokio::pin!(call);
        let every = (self.visibility_timeout / 3).max(Duration::from_millis(50));
        let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
        let outcome = loop {
            tokio::select! {
                outcome = &mut call => break outcome,
                _ = ticker.tick() => {
                    if let Err(e) = self.engine.extend_visibility(command).await {
                        tracing::warn!(error = %e, message_id = %command.message.message_id, "extending visibility during a workflow call failed");
                    }
                }
            }
        };
        if let Outcome::Failed { class, .. } = &outcome {
            Metrics::inc(&self.metrics.workflow_call_failures);
            tracing::info!(order_id = %order.order_id, step = %step.name, attempt, error = class, "workflow step call failed");
        }
        outcome
    }

    async fn send(&self, step: &Step, order: &Order, version: u64, attempt: u32) -> Outcome {
        let failed = |class: &'static str, detail: String| Outcome::Failed {
            class,
            status_code: None,
            detail,
            latency_ms: None,
            response: None,
        };
        let Some(request) = step.config.request.as_ref() else {
            return failed("invalid", "the step has no request".into());
        };
        let context = self
            .workflow
            .template_context(step, order, version, attempt);
        let url = match fill_url(&request.url, &context).map(|u| reqwest::Url::parse(&u)) {
            Ok(Ok(url)) => url,
            Ok(Err(e)) => return failed("invalid", format!("the request URL is not valid: {e}")),
            Err(e) => return failed("invalid", format!("the request URL is refused: {e}")),
        };
        if let Err(e) = ssrf::check_url(&url, &self.allow) {
            return failed("refused", format!("destination refused: {e}"));
        }
        let method = reqwest::Method::from_bytes(request.method.to_ascii_uppercase().as_bytes())
            .unwrap_or(reqwest::Method::POST);
        let has_body = method != reqwest::Method::GET && method != reqwest::Method::DELETE;
        let mut builder = self
            .client
            .request(method, url)
            .timeout(request.timeout)
            .header(
                "idempotency-key",
                idempotency_key(&order.order_id, step.status, version),
            )
            .header("herald-attempt", attempt.to_string())
            .header(
                reqwest::header::USER_AGENT,
                concat!("Herald-Workflow/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), fill_str(value, &context, Escape::None));
        }
        if has_body {
            builder = builder.json(&self.workflow.request_body(step, order, version, attempt));
        }
        let started = Instant::now();
        let mut response = match builder.send().await {
            Ok(response) => response,
            Err(e) => {
                let class = if e.is_timeout() {
                    "timeout"
                } else if ssrf::is_blocked_error(&e) {
                    "refused"
                } else {
                    "connect"
                };
                return Outcome::Failed {
                    class,
                    status_code: None,
                    // Never the service's address: the history is shown to partners.
                    detail: error_chain(&e.without_url()),
                    latency_ms: Some(started.elapsed().as_millis() as u64),
                    response: None,
                };
            }
        };
        let code = response.status().as_u16();
        let mut kept = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    kept.extend_from_slice(&chunk);
                    if kept.len() > MAX_ANSWER_BYTES {
                        return Outcome::Failed {
                            class: "invalid",
                            status_code: Some(code),
                            detail: format!("the answer is larger than {MAX_ANSWER_BYTES} bytes"),
                            latency_ms: Some(started.elapsed().as_millis() as u64),
                            response: None,
                        };
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return Outcome::Failed {
                        class: if e.is_timeout() { "timeout" } else { "connect" },
                        status_code: Some(code),
                        detail: format!("reading the answer: {}", error_chain(&e.without_url())),
                        latency_ms: Some(started.elapsed().as_millis() as u64),
                        response: None,
                    };
                }
            }
        }
        let latency_ms = started.elapsed().as_millis() as u64;
        let body = if kept.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&kept).unwrap_or_else(|_| {
                String::from_utf8(kept)
                    .map(Value::String)
                    .unwrap_or(Value::Null)
            })
        };
        let class = match code {
            200..=299 => {
                return Outcome::Answer {
                    status_code: code,
                    body,
                    latency_ms,
                };
            }
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "invalid",
        };
        Outcome::Failed {
            class,
            status_code: Some(code),
            detail: format!("the service answered {code}"),
            latency_ms: Some(latency_ms),
            response: Some(body),
        }
    }
}

/// The attempt a timer or callback outcome belongs to and the retries its retriers spent:
/// as the command carries them (a callback's timers do), else read from the step history of
/// the entry at `version` (a token names its attempt, not the retries): per retrier, the
/// retries it scheduled (each by the first retrier naming its error class). A history trimmed
/// past the entry's start (`workflow.step_history_limit`) cannot be counted: every retrier
/// counts as spent then, so `max_attempts` is never overrun.
fn spent(
    record: &OrderRecord,
    step: &Step,
    version: u64,
    attempt: u32,
    carried: &[u32],
) -> (u32, Vec<u32>) {
    let retriers = &step.config.retry;
    let ours = || {
        record
            .steps
            .iter()
            .filter(|r| r.version == version && r.status == step.status)
    };
    let attempt = if attempt > 0 {
        attempt
    } else {
        ours().filter_map(|r| r.attempt).max().unwrap_or(1)
    };
    if carried.len() == retriers.len() {
        return (attempt, carried.to_vec());
    }
    if !ours().any(|r| r.kind == "stateEntered") {
        return (attempt, retriers.iter().map(|r| r.max_attempts).collect());
    }
    let mut retries = vec![0; retriers.len()];
    for r in ours() {
        if r.kind == "retryScheduled"
            && let Some(class) = r.error.as_deref()
            && let Some(i) = retriers.iter().position(|x| x.matches(class))
        {
            retries[i] += 1;
        }
    }
    (attempt, retries)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{accept, memory_engine, worker};
    use super::super::*;
    use crate::config::{CatchConfig, RequestConfig, RetryConfig, StepConfig, StepKind};
    use crate::engine::fixtures::new_command;
    use crate::model::OrderStatus;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A retry whose timer fired behind a cancel queued for its order (another node holding
    /// the cancel a moment) must not call the warehouse: it waits for its turn, and the cancel
    /// makes the call moot. (Found in review: it used to call first and find out after.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_step_calls_out_only_at_its_orders_turn() {
        let hits = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let h = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                h.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 500 Oops\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    )
                    .await;
            }
        });
        let engine = memory_engine(Duration::from_secs(2));
        let mut config = crate::config::WorkflowConfig {
            allow_networks: vec!["127.0.0.0/8".into()],
            ..Default::default()
        };
        config.steps.insert(
            OrderStatus::Confirmed,
            StepConfig {
                name: Some("warehouse".into()),
                kind: StepKind::Task,
                request: Some(RequestConfig {
                    method: "POST".into(),
                    url: format!("http://127.0.0.1:{port}/reservations/{{orderId}}"),
                    headers: Default::default(),
                    body: None,
                    timeout: Duration::from_secs(2),
                }),
                choices: vec![],
                default: Some(OrderStatus::Preparing),
                retry: vec![RetryConfig {
                    errors: vec!["all".into()],
                    interval: Duration::from_millis(10),
                    backoff_rate: 1.0,
                    max_attempts: 3,
                    max_delay: None,
                    jitter: Default::default(),
                }],
                catch: vec![CatchConfig {
                    errors: vec!["all".into()],
                    next: OrderStatus::Cancelled,
                }],
                after: None,
                until: None,
                next: None,
                callback_timeout: None,
                heartbeat: None,
            },
        );
        let worker = worker(&engine, config, Duration::from_secs(2));
        accept(&engine, "o1").await;
        let stop = CancellationToken::new();
        let receive = |n| {
            let e = engine.clone();
            async move { e.receive_batch(n, Duration::from_millis(20)).await.unwrap() }
        };
        worker.process_batch(receive(1).await, &stop).await; // confirmed, attempt 1 queued
        worker.process_batch(receive(1).await, &stop).await; // attempt 1: 500, a retry timer
        assert_eq!(hits.load(Ordering::SeqCst), 1);

        // The operator cancels; the retry's timer fires after, so it is queued behind.
        let cancel = new_command(
            "o1",
            Command::Transition {
                status: OrderStatus::Cancelled,
                reason: None,
            },
        );
        engine.enqueue_command(&cancel, None).await.unwrap();
        engine.fire_due_timers(now_ms() + 60_000, 10).await.unwrap();
        let batch = receive(10).await;
        assert_eq!(batch.len(), 2);
        let (cancels, retries): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|c| matches!(c.message.command, Command::Transition { .. }));
        tokio::join!(worker.process_batch(retries, &stop), async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            worker.process_batch(cancels, &stop).await;
        });
        let status = engine.order_status("o1").await.unwrap().unwrap();
        assert_eq!(status.status, OrderStatus::Cancelled);
        assert_eq!(
            hits.load(Ordering::SeqCst),
            1,
            "the retry called the warehouse for an order cancelled before its turn"
        );
    }
}
