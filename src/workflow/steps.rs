//! The workflow's steps, decided: what entering a status with a step writes, and what each
//! outcome of a step (a service's answer or failure, a timer, a callback's result) does next,
//! with Step Functions' retry and catch semantics. Pure: the worker makes the calls and hands
//! the outcomes in; the engine stores the decisions.
//!
//! Every step command names the status and the version the order entered it at; the attempt
//! series of a task is that entry, so its `Idempotency-Key` is stable across the series'
//! retries and redeliveries ([`idempotency_key`]).

use super::expr::{Expr, Segment, lookup, parse_path};
use super::token::{TaskToken, TokenKey, wait_id};
use crate::config::{Jitter, StepConfig, StepKind, WorkflowConfig};
use crate::engine::{Command, FollowUp, NewCommand, StepAction, StepRecord, StepWrites};
use crate::model::{Order, OrderStatus, now_rfc3339};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// A configured step, its expressions parsed.
#[derive(Debug, Clone)]
pub struct Step {
    pub status: OrderStatus,
    pub name: String,
    pub config: StepConfig,
    choices: Vec<(Expr, OrderStatus, String)>,
    until: Option<Vec<Segment>>,
}

/// The workflow: the configuration with its steps compiled, and the key callback tokens are
/// signed with.
#[derive(Debug, Clone)]
pub struct Workflow {
    pub config: WorkflowConfig,
    steps: BTreeMap<OrderStatus, Step>,
    token_key: TokenKey,
}

/// What happened when a step ran.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A 2xx answer: its status and body (JSON; a non-JSON body as a string, none as null).
    Answer {
        status_code: u16,
        body: Value,
        latency_ms: u64,
    },
    /// A failed call, by error class (`timeout`, `connect`, `5xx`, `4xx`, `refused`,
    /// `invalid`).
    Failed {
        class: &'static str,
        status_code: Option<u16>,
        detail: String,
        latency_ms: Option<u64>,
        response: Option<Value>,
    },
    /// The step's timer fired (`heartbeat`: a callback's heartbeat deadline).
    Elapsed { heartbeat: bool },
    /// The callback's token came back.
    Callback {
        succeeded: bool,
        result: Option<Value>,
    },
}

/// What the worker writes for a step command.
///
/// `Stay` is the large variant (a `StepWrites` holds two timers); a decision is a short-lived
/// return value, made once per step command, so boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum StepDecision {
    /// Move the order to `to` (a status change with `reason`), writing `records` and then what
    /// entering `to` writes.
    Move {
        to: OrderStatus,
        reason: String,
        records: Vec<StepRecord>,
    },
    /// Stay in the status; write these (retry timer, callback wait, records).
    Stay(StepWrites),
}

/// The key a task's calls carry in `Idempotency-Key`: one per attempt series (the order's
/// entry into the status), the same for every retry and redelivery of it.
pub fn idempotency_key(order_id: &str, status: OrderStatus, version: u64) -> String {
    format!("herald-{order_id}-{status}-{version}")
}

fn record(kind: &str, step: &Step, version: u64) -> StepRecord {
    StepRecord::new(kind, step.status, version, &step.name, now_rfc3339())
}

fn rfc3339_ms(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl Workflow {
    /// Compiles the configured steps (validation has checked them: an error here means a
    /// config that skipped validation). `token_key` signs callback tokens.
    pub fn new(config: WorkflowConfig, token_key: TokenKey) -> Result<Workflow, String> {
        let mut steps = BTreeMap::new();
        for (status, step) in &config.steps {
            let choices = step
                .choices
                .iter()
                .map(|c| Ok((Expr::parse(&c.when)?, c.next, c.when.clone())))
                .collect::<Result<Vec<_>, String>>()
                .map_err(|e| format!("workflow.steps.{status}: {e}"))?;
            let until = step
                .until
                .as_deref()
                .map(parse_path)
                .transpose()
                .map_err(|e| format!("workflow.steps.{status}.until: {e}"))?;
            steps.insert(
                *status,
                Step {
                    status: *status,
                    name: step.name(status).to_string(),
                    config: step.clone(),
                    choices,
                    until,
                },
            );
        }
        Ok(Workflow {
            config,
            steps,
            token_key,
        })
    }

    pub fn step(&self, status: OrderStatus) -> Option<&Step> {
        self.steps.get(&status)
    }

    pub fn has_steps(&self) -> bool {
        !self.steps.is_empty()
    }

    /// Whether entering `status` needs the order itself (a wait `until` a field of it).
    pub fn entry_needs_order(&self, status: OrderStatus) -> bool {
        self.step(status).is_some_and(|s| s.until.is_some())
    }

    pub fn token_key(&self) -> &TokenKey {
        &self.token_key
    }

    /// The token a callback step of `status` hands out with attempt `attempt` of the entry at
    /// `version`.
    pub fn task_token(
        &self,
        order_id: &str,
        status: OrderStatus,
        version: u64,
        attempt: u32,
    ) -> String {
        self.token_key.issue(&TaskToken {
            order_id: order_id.to_string(),
            status,
            version,
            attempt,
        })
    }

    /// The heartbeat deadline a heartbeat of attempt `attempt` sets, for a callback step of
    /// `status` with a `heartbeat`; `None` for a step that expects none.
    pub fn heartbeat_timer(
        &self,
        order_id: &str,
        status: OrderStatus,
        version: u64,
        attempt: u32,
        now_ms: u64,
    ) -> Option<FollowUp> {
        let step = self.step(status)?;
        let every = step
            .config
            .heartbeat
            .filter(|_| step.config.kind == StepKind::Callback)?;
        Some(follow_up(
            order_id,
            status,
            version,
            StepAction::Elapsed {
                attempt,
                retries: Vec::new(),
                heartbeat: true,
            },
            Some(now_ms + every.as_millis() as u64),
            Some(wait_id(version, attempt)),
        ))
    }

    /// What entering `status` at `version` writes: nothing without a step; else its
    /// `stateEntered` record and the command that runs it (now for a task or callback, at
    /// the due time for a wait). `order` is needed for a wait `until` a field of the order.
    ///
    /// A callback opens its wait here, on entry, not once its call is answered: the token is
    /// valid from the moment it is sent (Step Functions' `.waitForTaskToken`), so a service
    /// that completes it before its answer is back (a card charged at once) is taken, its
    /// command queued behind the call's.
    pub fn entry_writes(
        &self,
        order_id: &str,
        order: Option<&Order>,
        status: OrderStatus,
        version: u64,
        now_ms: u64,
    ) -> StepWrites {
        let Some(step) = self.step(status) else {
            return StepWrites::default();
        };
        let mut entered = record("stateEntered", step, version);
        entered.detail = Some(step.config.kind.as_str().into());
        let mut writes = StepWrites {
            records: vec![entered],
            ..StepWrites::default()
        };
        match step.config.kind {
            StepKind::Task | StepKind::Callback => {
                if step.config.kind == StepKind::Callback {
                    writes.open_wait = Some(wait_id(version, 1));
                }
                writes.follow_up = Some(follow_up(
                    order_id,
                    status,
                    version,
                    StepAction::Attempt {
                        attempt: 1,
                        retries: vec![0; step.config.retry.len()],
                    },
                    None,
                    None,
                ));
            }
            StepKind::Wait => {
                let after = step.config.after.map(|d| now_ms + d.as_millis() as u64);
                let until = step.until.as_ref().and_then(|path| {
                    let root = json!({ "order": order });
                    lookup(&root, path).and_then(due_ms_of)
                });
                let due = match (after, until) {
                    (Some(a), Some(u)) => Some(a.min(u)),
                    (a, u) => a.or(u),
                };
                match due {
                    Some(due) => {
                        let mut started = record("waitStarted", step, version);
                        started.due_at = Some(rfc3339_ms(due));
                        writes.records.push(started);
                        writes.follow_up = Some(follow_up(
                            order_id,
                            status,
                            version,
                            StepAction::Elapsed {
                                attempt: 0,
                                retries: Vec::new(),
                                heartbeat: false,
                            },
                            Some(due),
                            None,
                        ));
                    }
                    None => {
                        let mut failed = record("stepFailed", step, version);
                        failed.error = Some("invalid".into());
                        failed.detail = Some(format!(
                            "`{}` is not a timestamp on this order; the order waits for a command",
                            step.config.until.as_deref().unwrap_or_default()
                        ));
                        writes.records.push(failed);
                    }
                }
            }
        }
        writes
    }

    /// What a step command's outcome does. `order` is the order as accepted (for choices over
    /// `order.*`), `attempt`/`retries` the attempt the outcome belongs to.
    #[allow(clippy::too_many_arguments)]
    pub fn decide_step(
        &self,
        step: &Step,
        order: &Order,
        version: u64,
        attempt: u32,
        retries: &[u32],
        outcome: Outcome,
        now_ms: u64,
    ) -> StepDecision {
        let max = self.config.max_response_bytes;
        match outcome {
            Outcome::Answer {
                status_code,
                body,
                latency_ms,
            } => {
                let mut done = record(
                    if step.config.kind == StepKind::Callback {
                        "callbackSent"
                    } else {
                        "taskSucceeded"
                    },
                    step,
                    version,
                );
                done.attempt = Some(attempt);
                done.status_code = Some(status_code);
                done.latency_ms = Some(latency_ms);
                done.response = Some(bounded(&body, max));
                if step.config.kind == StepKind::Callback {
                    // The service has the token: wait for it, up to the timeout and the
                    // heartbeat deadline. The attempt's wait has been open since the attempt
                    // was scheduled (see `entry_writes`, `retry_or_catch`); it is not opened
                    // again, or a token that came back already would work a second time.
                    let wait = wait_id(version, attempt);
                    let mut writes = StepWrites {
                        records: vec![done],
                        ..StepWrites::default()
                    };
                    let timer = |due: u64, heartbeat: bool| {
                        follow_up(
                            &order.order_id,
                            step.status,
                            version,
                            StepAction::Elapsed {
                                attempt,
                                retries: retries.to_vec(),
                                heartbeat,
                            },
                            Some(due),
                            Some(wait.clone()),
                        )
                    };
                    if let Some(timeout) = step.config.callback_timeout {
                        let due = now_ms + timeout.as_millis() as u64;
                        let mut waiting = record("waitStarted", step, version);
                        waiting.attempt = Some(attempt);
                        waiting.due_at = Some(rfc3339_ms(due));
                        writes.records.push(waiting);
                        writes.follow_up = Some(timer(due, false));
                    }
                    if let Some(heartbeat) = step.config.heartbeat {
                        writes.heartbeat = Some(timer(now_ms + heartbeat.as_millis() as u64, true));
                    }
                    return StepDecision::Stay(writes);
                }
                self.choose(step, order, version, status_code, &body, vec![done])
            }
            Outcome::Callback {
                succeeded: true,
                result,
            } => {
                let body = result.unwrap_or(Value::Null);
                let mut done = record("callbackSucceeded", step, version);
                done.response = Some(bounded(&body, max));
                self.choose(step, order, version, 200, &body, vec![done])
            }
            Outcome::Callback {
                succeeded: false,
                result,
            } => {
                let mut failed = record("callbackFailed", step, version);
                failed.attempt = Some(attempt);
                failed.error = Some("callback".into());
                failed.response = result.as_ref().map(|r| bounded(r, max));
                let detail: String = result
                    .as_ref()
                    .and_then(|r| r.get("error").and_then(Value::as_str))
                    .unwrap_or("the callback reported a failure")
                    .chars()
                    .take(MAX_DETAIL_CHARS)
                    .collect();
                failed.detail = Some(detail);
                self.retry_or_catch(
                    step, order, version, attempt, retries, "callback", failed, now_ms,
                )
            }
            Outcome::Elapsed { heartbeat } => match step.config.kind {
                StepKind::Wait => self.wait_elapsed(step, version),
                _ => {
                    let (class, detail) = if heartbeat {
                        (
                            "heartbeatTimedOut",
                            "no heartbeat came within the callback's heartbeat interval",
                        )
                    } else {
                        ("timedOut", "no callback came back before the timeout")
                    };
                    let mut timed_out = record("callbackTimedOut", step, version);
                    timed_out.attempt = Some(attempt);
                    timed_out.error = Some(class.into());
                    timed_out.detail = Some(detail.into());
                    self.retry_or_catch(
                        step, order, version, attempt, retries, class, timed_out, now_ms,
                    )
                }
            },
            Outcome::Failed {
                class,
                status_code,
                detail,
                latency_ms,
                response,
            } => {
                let mut failed = record("taskFailed", step, version);
                failed.attempt = Some(attempt);
                failed.status_code = status_code;
                failed.error = Some(class.into());
                failed.detail = Some(detail.clone());
                failed.latency_ms = latency_ms;
                failed.response = response.map(|r| bounded(&r, max));
                self.retry_or_catch(
                    step, order, version, attempt, retries, class, failed, now_ms,
                )
            }
        }
    }

    /// A wait step's timer fired: the order moves to its `next`. Needs nothing but the step
    /// (the worker decides it with a batch's other commands, no read of the order).
    pub fn wait_elapsed(&self, step: &Step, version: u64) -> StepDecision {
        let to = step.config.next.unwrap_or(step.status);
        let mut elapsed = record("waitElapsed", step, version);
        elapsed.next = Some(to);
        StepDecision::Move {
            to,
            reason: format!("{}: the wait elapsed", step.name),
            records: vec![elapsed],
        }
    }

    /// Whether a step command is decided like any other command, in a batch (a wait's timer
    /// leading to a status whose entry needs only the status), rather than run on its own
    /// (a call, or a read of the order).
    pub fn decided_in_batch(&self, command: &Command) -> bool {
        match command {
            Command::Step {
                status,
                action: StepAction::Elapsed { .. },
                ..
            } => self.step(*status).is_some_and(|step| {
                step.config.kind == StepKind::Wait
                    && !self.entry_needs_order(step.config.next.unwrap_or(step.status))
            }),
            Command::Step { .. } => false,
            _ => true,
        }
    }

    fn choose(
        &self,
        step: &Step,
        order: &Order,
        version: u64,
        status_code: u16,
        body: &Value,
        mut records: Vec<StepRecord>,
    ) -> StepDecision {
        let context = json!({ "status": status_code, "body": body, "order": order });
        let (to, why) = step
            .choices
            .iter()
            .find(|(expr, _, _)| expr.holds(&context))
            .map(|(_, next, when)| (*next, when.clone()))
            .or_else(|| step.config.default.map(|d| (d, "default".to_string())))
            .unwrap_or((step.status, "default".into()));
        let mut chosen = record("transitionChosen", step, version);
        chosen.next = Some(to);
        chosen.detail = Some(why);
        records.push(chosen);
        // The reason travels with the event to subscribers (customers too): the step's name,
        // not the rule that held (that stays in the step record).
        StepDecision::Move {
            to,
            reason: format!("{} succeeded", step.name),
            records,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn retry_or_catch(
        &self,
        step: &Step,
        order: &Order,
        version: u64,
        attempt: u32,
        retries: &[u32],
        class: &str,
        failed: StepRecord,
        now_ms: u64,
    ) -> StepDecision {
        let mut records = vec![failed];
        // Step Functions: the first retrier naming the error decides; past its max attempts,
        // the catchers do.
        if let Some((i, retrier)) = step
            .config
            .retry
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(class))
        {
            let spent = retries.get(i).copied().unwrap_or(0);
            if spent < retrier.max_attempts {
                let mut counts = retries.to_vec();
                counts.resize(step.config.retry.len(), 0);
                counts[i] = spent + 1;
                let delay = jittered(retrier.delay(spent + 1), retrier.jitter);
                let due = now_ms + delay.as_millis() as u64;
                let mut scheduled = record("retryScheduled", step, version);
                scheduled.attempt = Some(attempt + 1);
                scheduled.due_at = Some(rfc3339_ms(due));
                scheduled.error = Some(class.into());
                records.push(scheduled);
                return StepDecision::Stay(StepWrites {
                    records,
                    follow_up: Some(follow_up(
                        &order.order_id,
                        step.status,
                        version,
                        StepAction::Attempt {
                            attempt: attempt + 1,
                            retries: counts,
                        },
                        Some(due),
                        None,
                    )),
                    // A callback's next attempt hands out a new token: its wait opens now,
                    // so a token that comes back before the call's answer is taken.
                    open_wait: (step.config.kind == StepKind::Callback)
                        .then(|| wait_id(version, attempt + 1)),
                    heartbeat: None,
                });
            }
        }
        if let Some(catcher) = step.config.catch.iter().find(|c| c.matches(class)) {
            let mut caught = record("caught", step, version);
            caught.error = Some(class.into());
            caught.next = Some(catcher.next);
            records.push(caught);
            // The reason travels with the event to subscribers and webhooks: the error class
            // only; the detail stays in the step record (admin and partner keys).
            return StepDecision::Move {
                to: catcher.next,
                reason: format!("{} failed ({class})", step.name),
                records,
            };
        }
        let mut failed = record("stepFailed", step, version);
        failed.error = Some(class.into());
        failed.detail = Some("no retrier or catcher is left for this error; the order stays until a command moves it".into());
        records.push(failed);
        StepDecision::Stay(StepWrites {
            records,
            ..StepWrites::default()
        })
    }

    /// The JSON body a step's request sends (its `body` template, or the default).
    pub fn request_body(&self, step: &Step, order: &Order, version: u64, attempt: u32) -> Value {
        let context = self.template_context(step, order, version, attempt);
        match step.config.request.as_ref().and_then(|r| r.body.as_ref()) {
            Some(template) => super::template::fill_value(template, &context),
            // The default body is what placeholders read: the ids, the attempt, the order
            // (and the token of a callback).
            None => context,
        }
    }

    /// What `{placeholders}` in a step's request read.
    pub fn template_context(
        &self,
        step: &Step,
        order: &Order,
        version: u64,
        attempt: u32,
    ) -> Value {
        let mut context = json!({
            "orderId": order.order_id,
            "customerId": order.customer_id,
            "partnerId": order.partner_id,
            "status": step.status,
            "version": version,
            "attempt": attempt,
            "order": order,
        });
        if step.config.kind == StepKind::Callback {
            context["taskToken"] =
                Value::String(self.task_token(&order.order_id, step.status, version, attempt));
        }
        context
    }
}

/// A step command for the order's entry into `status` at `version`.
fn follow_up(
    order_id: &str,
    status: OrderStatus,
    version: u64,
    action: StepAction,
    due_ms: Option<u64>,
    claims_wait: Option<String>,
) -> FollowUp {
    FollowUp {
        command: NewCommand {
            message_id: uuid::Uuid::now_v7().to_string(),
            order_id: order_id.to_string(),
            command: Command::Step {
                status,
                version,
                action,
            },
            sent_at: now_rfc3339(),
        },
        due_ms,
        claims_wait,
    }
}

fn jittered(delay: Duration, jitter: Jitter) -> Duration {
    match jitter {
        Jitter::None => delay,
        Jitter::Full => {
            let ms = delay.as_millis() as u64;
            Duration::from_millis(if ms == 0 {
                0
            } else {
                rand::random_range(0..=ms)
            })
        }
    }
}

/// A due time from a field: RFC 3339 text or Unix milliseconds.
fn due_ms_of(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .ok()
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64)
        }
        _ => None,
    }
}

/// The longest error text a callback's failure keeps in its step record.
const MAX_DETAIL_CHARS: usize = 512;

/// A step record for a call that failed after its callback had come back already: the
/// callback's command, queued behind this one, decides; this failure only goes on record.
pub fn failed_after_callback(step: &Step, version: u64, attempt: u32, class: &str) -> StepRecord {
    let mut failed = record("taskFailed", step, version);
    failed.attempt = Some(attempt);
    failed.error = Some(class.into());
    failed.detail = Some("the callback came back before this answer; its outcome decides".into());
    failed
}

/// A JSON value as kept in the step history: itself if its text fits in `max` bytes, else
/// `{"truncated": true, "bytes": n}`.
pub fn bounded(v: &Value, max: usize) -> Value {
    let len = serde_json::to_string(v)
        .map(|s| s.len())
        .unwrap_or(usize::MAX);
    if len <= max {
        v.clone()
    } else {
        json!({ "truncated": true, "bytes": len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CatchConfig, ChoiceConfig, RequestConfig, RetryConfig};

    fn order() -> Order {
        Order {
            metadata: Some(json!({"dueAt": 5_000})),
            ..crate::engine::fixtures::order("o1")
        }
    }

    fn request() -> RequestConfig {
        RequestConfig {
            method: "POST".into(),
            url: "http://127.0.0.1:1/x".into(),
            headers: Default::default(),
            body: None,
            timeout: Duration::from_secs(1),
        }
    }

    fn task() -> StepConfig {
        StepConfig {
            name: Some("warehouse".into()),
            kind: StepKind::Task,
            request: Some(request()),
            choices: vec![ChoiceConfig {
                when: "status == 200 and body.reserved == true".into(),
                next: OrderStatus::Preparing,
            }],
            default: Some(OrderStatus::Cancelled),
            retry: vec![
                RetryConfig {
                    errors: vec!["5xx".into(), "timeout".into()],
                    interval: Duration::from_millis(100),
                    backoff_rate: 2.0,
                    max_attempts: 2,
                    max_delay: Some(Duration::from_millis(150)),
                    jitter: Jitter::None,
                },
                RetryConfig {
                    errors: vec!["all".into()],
                    interval: Duration::from_millis(1000),
                    backoff_rate: 1.0,
                    max_attempts: 1,
                    max_delay: None,
                    jitter: Jitter::None,
                },
            ],
            catch: vec![CatchConfig {
                errors: vec!["all".into()],
                next: OrderStatus::Cancelled,
            }],
            after: None,
            until: None,
            next: None,
            callback_timeout: None,
            heartbeat: None,
        }
    }

    fn workflow(status: OrderStatus, step: StepConfig) -> Workflow {
        let mut config = WorkflowConfig::default();
        config.steps.insert(status, step);
        Workflow::new(config, TokenKey::new(b"k")).unwrap()
    }

    fn failed(class: &'static str) -> Outcome {
        Outcome::Failed {
            class,
            status_code: None,
            detail: "x".into(),
            latency_ms: Some(3),
            response: None,
        }
    }

    fn due_of(decision: &StepDecision) -> (u64, StepAction) {
        let StepDecision::Stay(writes) = decision else {
            panic!("expected a retry, got {decision:?}");
        };
        let follow = writes.follow_up.as_ref().expect("a retry timer");
        let Command::Step { action, .. } = &follow.command.command else {
            panic!("a step command");
        };
        (follow.due_ms.expect("a timer"), action.clone())
    }

    #[test]
    fn entering_a_task_queues_its_first_attempt_and_a_wait_its_timer() {
        let wf = workflow(OrderStatus::Confirmed, task());
        let writes = wf.entry_writes("o1", None, OrderStatus::Confirmed, 2, 1_000);
        assert_eq!(writes.records[0].kind, "stateEntered");
        let follow = writes.follow_up.unwrap();
        assert_eq!(follow.due_ms, None);
        assert_eq!(
            follow.command.command,
            Command::Step {
                status: OrderStatus::Confirmed,
                version: 2,
                action: StepAction::Attempt {
                    attempt: 1,
                    retries: vec![0, 0]
                }
            }
        );
        assert!(
            wf.entry_writes("o1", None, OrderStatus::Shipped, 2, 0)
                .is_empty()
        );

        let wait = StepConfig {
            kind: StepKind::Wait,
            request: None,
            choices: vec![],
            default: None,
            retry: vec![],
            catch: vec![],
            after: Some(Duration::from_secs(10)),
            until: Some("order.metadata.dueAt".into()),
            next: Some(OrderStatus::Delivered),
            ..task()
        };
        let wf = workflow(OrderStatus::Shipped, wait);
        assert!(wf.entry_needs_order(OrderStatus::Shipped));
        let o = order();
        let writes = wf.entry_writes("o1", Some(&o), OrderStatus::Shipped, 5, 1_000);
        // The earlier of `after` (11_000) and `until` (5_000).
        assert_eq!(writes.follow_up.unwrap().due_ms, Some(5_000));
        let writes = wf.entry_writes("o1", None, OrderStatus::Shipped, 5, 1_000);
        assert_eq!(writes.follow_up.unwrap().due_ms, Some(11_000));
    }

    #[test]
    fn failures_retry_per_retrier_with_backoff_and_max_delay_then_are_caught() {
        let wf = workflow(OrderStatus::Confirmed, task());
        let step = wf.step(OrderStatus::Confirmed).unwrap();
        let o = order();
        let d = wf.decide_step(step, &o, 2, 1, &[0, 0], failed("5xx"), 10_000);
        assert_eq!(
            due_of(&d),
            (
                10_100,
                StepAction::Attempt {
                    attempt: 2,
                    retries: vec![1, 0]
                }
            )
        );
        // The second retry: 100ms * 2 = 200ms, capped at 150ms.
        let d = wf.decide_step(step, &o, 2, 2, &[1, 0], failed("timeout"), 10_000);
        assert_eq!(due_of(&d).0, 10_150);
        // The first retrier is spent: the catcher (not the `all` retrier behind it) decides,
        // as Step Functions does.
        let d = wf.decide_step(step, &o, 2, 3, &[2, 0], failed("5xx"), 10_000);
        let StepDecision::Move { to, records, .. } = d else {
            panic!("caught");
        };
        assert_eq!(to, OrderStatus::Cancelled);
        let kinds: Vec<&str> = records.iter().map(|r| r.kind.as_str()).collect();
        assert_eq!(kinds, ["taskFailed", "caught"]);
        // Another class goes to the retrier that names it.
        let d = wf.decide_step(step, &o, 2, 1, &[0, 0], failed("4xx"), 0);
        assert_eq!(due_of(&d).0, 1_000);
    }

    #[test]
    fn answers_choose_by_expression_then_default() {
        let wf = workflow(OrderStatus::Confirmed, task());
        let step = wf.step(OrderStatus::Confirmed).unwrap();
        let o = order();
        let answer = |body: Value| Outcome::Answer {
            status_code: 200,
            body,
            latency_ms: 4,
        };
        let d = wf.decide_step(
            step,
            &o,
            2,
            1,
            &[0, 0],
            answer(json!({"reserved": true})),
            0,
        );
        assert!(matches!(
            d,
            StepDecision::Move {
                to: OrderStatus::Preparing,
                ..
            }
        ));
        let d = wf.decide_step(
            step,
            &o,
            2,
            1,
            &[0, 0],
            answer(json!({"reserved": false})),
            0,
        );
        let StepDecision::Move {
            to,
            records,
            reason,
        } = d
        else {
            panic!("moved");
        };
        assert_eq!(
            (to, reason.as_str()),
            (OrderStatus::Cancelled, "warehouse succeeded")
        );
        assert_eq!(records[0].status_code, Some(200));
        assert_eq!(records[1].next, Some(OrderStatus::Cancelled));
    }

    #[test]
    fn a_callback_waits_for_its_token_and_its_timeout_claims_the_same_wait() {
        let callback = StepConfig {
            kind: StepKind::Callback,
            default: Some(OrderStatus::Confirmed),
            choices: vec![],
            retry: vec![],
            catch: vec![
                CatchConfig {
                    errors: vec!["timedOut".into()],
                    next: OrderStatus::Cancelled,
                },
                CatchConfig {
                    errors: vec!["callback".into()],
                    next: OrderStatus::Rejected,
                },
            ],
            callback_timeout: Some(Duration::from_secs(900)),
            ..task()
        };
        let wf = workflow(OrderStatus::Accepted, callback);
        let step = wf.step(OrderStatus::Accepted).unwrap();
        let o = order();
        // The wait opens on entry: the token works while its call is in flight.
        let entry = wf.entry_writes(&o.order_id, Some(&o), OrderStatus::Accepted, 1, 0);
        assert_eq!(entry.open_wait.as_deref(), Some("cb:1:1"));
        let sent = Outcome::Answer {
            status_code: 201,
            body: Value::Null,
            latency_ms: 1,
        };
        let StepDecision::Stay(writes) = wf.decide_step(step, &o, 1, 1, &[], sent, 1_000) else {
            panic!("waits");
        };
        // Not opened again by the answer: a token that came back already stays spent.
        assert_eq!(writes.open_wait, None);
        let timer = writes.follow_up.unwrap();
        assert_eq!(
            (timer.due_ms, timer.claims_wait.as_deref()),
            (Some(901_000), Some("cb:1:1"))
        );
        let ok = Outcome::Callback {
            succeeded: true,
            result: Some(json!({"paid": 12})),
        };
        assert!(matches!(
            wf.decide_step(step, &o, 1, 1, &[], ok, 0),
            StepDecision::Move {
                to: OrderStatus::Confirmed,
                ..
            }
        ));
        let no = Outcome::Callback {
            succeeded: false,
            result: Some(json!({"error": "declined"})),
        };
        let StepDecision::Move {
            to,
            reason,
            records,
        } = wf.decide_step(step, &o, 1, 1, &[], no, 0)
        else {
            panic!("caught");
        };
        assert_eq!(
            (to, reason.as_str()),
            (OrderStatus::Rejected, "warehouse failed (callback)")
        );
        assert_eq!(records[0].detail.as_deref(), Some("declined"));
        assert!(matches!(
            wf.decide_step(
                step,
                &o,
                1,
                1,
                &[],
                Outcome::Elapsed { heartbeat: false },
                0
            ),
            StepDecision::Move {
                to: OrderStatus::Cancelled,
                ..
            }
        ));
        // The token handed out names this entry, and the body carries it by default.
        let body = wf.request_body(step, &o, 1, 1);
        let token = body["taskToken"].as_str().unwrap();
        let named = wf.token_key().verify(token).unwrap();
        assert_eq!((named.order_id.as_str(), named.version), ("o1", 1));
    }

    #[test]
    fn an_error_nobody_handles_leaves_the_order_where_it_is() {
        let lone = StepConfig {
            retry: vec![],
            catch: vec![],
            ..task()
        };
        let wf = workflow(OrderStatus::Confirmed, lone);
        let step = wf.step(OrderStatus::Confirmed).unwrap();
        let StepDecision::Stay(writes) =
            wf.decide_step(step, &order(), 2, 1, &[], failed("connect"), 0)
        else {
            panic!("stays");
        };
        assert_eq!(writes.records.last().unwrap().kind, "stepFailed");
        assert!(writes.follow_up.is_none());
    }

    #[test]
    fn oversized_answers_are_kept_as_a_marker() {
        assert_eq!(bounded(&json!({"a": 1}), 100), json!({"a": 1}));
        assert_eq!(
            bounded(&json!("x".repeat(50)), 10)["truncated"],
            json!(true)
        );
    }
}
