//! The workflow's steps as configured: `[workflow.steps.<status>]`, one per status at most, each
//! a `task` (an HTTP call whose answer chooses the next status), a `wait` (a durable timer) or a
//! `callback` (an HTTP call carrying a task token, then a pause until the token comes back).
//! Retry and catch follow Step Functions: retriers per error class with interval, backoff rate,
//! max attempts, max delay and jitter; catchers route what is left to a status.
//!
//! This file says what a step holds and how it is spelled; what the choice expressions mean and
//! how a step runs is `crate::workflow`'s. Checks that need only the config (every target
//! allowed by the transition table from the step's status, a request where one is needed) are
//! [`StepConfig::check`], called by validation.

use super::sections::{duration, opt_duration};
use crate::model::OrderStatus;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    Task,
    Wait,
    Callback,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Task => "task",
            StepKind::Wait => "wait",
            StepKind::Callback => "callback",
        }
    }
}

/// The error classes retriers and catchers name. `all` matches every one
/// (Step Functions' `States.ALL`).
pub const ERROR_CLASSES: [&str; 10] = [
    "timeout",
    "connect",
    "5xx",
    "4xx",
    "refused",
    "invalid",
    "callback",
    "timedOut",
    "heartbeatTimedOut",
    "all",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Jitter {
    /// The delay as computed.
    #[default]
    None,
    /// A random delay between 0 and the computed one (Step Functions' `FULL`).
    Full,
}

/// A retrier: failures of these classes are tried again, at most `max_attempts` times in all
/// for this retrier (Step Functions' `MaxAttempts`: retries, not counting the first attempt).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    pub errors: Vec<String>,
    /// The delay before the first retry (`IntervalSeconds`).
    #[serde(deserialize_with = "duration", default = "default_interval")]
    pub interval: Duration,
    /// Each retry waits this many times longer than the one before (`BackoffRate`).
    #[serde(default = "default_backoff_rate")]
    pub backoff_rate: f64,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The longest delay, whatever the backoff computes (`MaxDelaySeconds`).
    #[serde(default, deserialize_with = "opt_duration")]
    pub max_delay: Option<Duration>,
    #[serde(default)]
    pub jitter: Jitter,
}

fn default_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_backoff_rate() -> f64 {
    2.0
}
fn default_max_attempts() -> u32 {
    3
}

impl RetryConfig {
    /// The delay before retry number `retry` (1 = the first retry) of this retrier, before
    /// jitter: `interval * backoff_rate^(retry-1)`, at most `max_delay`.
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = self.backoff_rate.powi(retry.saturating_sub(1) as i32);
        let secs = (self.interval.as_secs_f64() * factor).min(86_400.0 * 365.0);
        let delay = Duration::from_secs_f64(secs.max(0.0));
        self.max_delay.map_or(delay, |max| delay.min(max))
    }

    pub fn matches(&self, class: &str) -> bool {
        self.errors.iter().any(|e| e == "all" || e == class)
    }
}

/// A catcher: a failure of these classes that no retrier takes (any more) moves the order to
/// `next`, the error recorded as the change's reason.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatchConfig {
    pub errors: Vec<String>,
    pub next: OrderStatus,
}

impl CatchConfig {
    pub fn matches(&self, class: &str) -> bool {
        self.errors.iter().any(|e| e == "all" || e == class)
    }
}

/// A choice: when `when` holds for the answer, move to `next`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChoiceConfig {
    /// An expression over `status` (the HTTP status), `body` (the answer's JSON, or the
    /// callback's result) and `order` (the order as accepted): comparisons (`==`, `!=`, `<`,
    /// `<=`, `>`, `>=`) of paths and literals, joined by `and`, `or`, `not` and parentheses.
    pub when: String,
    pub next: OrderStatus,
}

/// The HTTP request a task or callback makes. Strings may hold `{path}` placeholders (`orderId`,
/// `customerId`, `partnerId`, `status`, `version`, `attempt`, `taskToken`, `order.<field>...`);
/// in `body`, a string that is one placeholder alone is replaced by the JSON value it names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestConfig {
    #[serde(default = "default_method")]
    pub method: String,
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The JSON body (a TOML table or value); default: `{orderId, customerId, partnerId,
    /// status, version, attempt, order}` (and `taskToken` for a callback).
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    /// Time allowed for the whole call; past it the attempt fails as `timeout`.
    #[serde(deserialize_with = "duration", default = "default_request_timeout")]
    pub timeout: Duration,
}

fn default_method() -> String {
    "POST".into()
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    /// The step's name in the history and metrics; default: the status's name.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: StepKind,
    /// task, callback: the call.
    #[serde(default)]
    pub request: Option<RequestConfig>,
    /// task, callback: the first choice whose `when` holds picks the next status.
    #[serde(default)]
    pub choices: Vec<ChoiceConfig>,
    /// task, callback: the next status when no choice holds (required for a task and a
    /// callback; with no choices it is the one outcome of success).
    #[serde(default)]
    pub default: Option<OrderStatus>,
    #[serde(default)]
    pub retry: Vec<RetryConfig>,
    #[serde(default)]
    pub catch: Vec<CatchConfig>,
    /// wait: how long after entering the status the timer fires.
    #[serde(default, deserialize_with = "opt_duration")]
    pub after: Option<Duration>,
    /// wait: a path (`order.metadata.cancelAt`) to an RFC 3339 timestamp or Unix
    /// milliseconds at which the timer fires; with `after` too, the earlier of the two.
    #[serde(default)]
    pub until: Option<String>,
    /// wait: where the order moves when the timer fires (if it is still in this status).
    #[serde(default)]
    pub next: Option<OrderStatus>,
    /// callback: how long Herald waits for the token to come back once the call succeeded;
    /// then the step fails as `timedOut` (catch it to move on). None: it waits forever.
    #[serde(default, deserialize_with = "opt_duration")]
    pub callback_timeout: Option<Duration>,
    /// callback: the longest gap allowed between heartbeats (`POST /v1/tasks/{token}/heartbeat`),
    /// counted from the call's answer; past it the step fails as `heartbeatTimedOut`
    /// (Step Functions' `HeartbeatSeconds`). None: no heartbeat is expected.
    #[serde(default, deserialize_with = "opt_duration")]
    pub heartbeat: Option<Duration>,
}

impl StepConfig {
    pub fn name<'a>(&'a self, status: &'a OrderStatus) -> &'a str {
        self.name.as_deref().unwrap_or(status.as_str())
    }

    /// Every status this step may move an order to.
    pub fn targets(&self) -> Vec<OrderStatus> {
        let mut out: Vec<OrderStatus> = self.choices.iter().map(|c| c.next).collect();
        out.extend(self.default);
        out.extend(self.catch.iter().map(|c| c.next));
        out.extend(self.next);
        out
    }

    /// What is wrong with the step on its own (the caller adds the key's name).
    pub fn check(&self) -> Result<(), String> {
        let has_request = self.request.is_some();
        match self.kind {
            StepKind::Task | StepKind::Callback => {
                if !has_request {
                    return Err(format!("a {} step needs a `request`", self.kind.as_str()));
                }
                if self.default.is_none() {
                    return Err(format!(
                        "a {} step needs a `default` (the next status when no choice holds)",
                        self.kind.as_str()
                    ));
                }
                if self.after.is_some() || self.until.is_some() || self.next.is_some() {
                    return Err("`after`, `until` and `next` belong to a wait step".into());
                }
                if self.kind == StepKind::Task
                    && (self.callback_timeout.is_some() || self.heartbeat.is_some())
                {
                    return Err(
                        "`callback_timeout` and `heartbeat` belong to a callback step".into(),
                    );
                }
            }
            StepKind::Wait => {
                if self.after.is_none() && self.until.is_none() {
                    return Err("a wait step needs `after` or `until`".into());
                }
                if self.next.is_none() {
                    return Err("a wait step needs `next`".into());
                }
                if has_request
                    || !self.choices.is_empty()
                    || self.default.is_some()
                    || !self.retry.is_empty()
                    || !self.catch.is_empty()
                    || self.callback_timeout.is_some()
                    || self.heartbeat.is_some()
                {
                    return Err(
                        "a wait step takes only `after`, `until` and `next` (and `name`)".into(),
                    );
                }
            }
        }
        if let Some(request) = &self.request {
            let method = request.method.to_ascii_uppercase();
            if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
                return Err(format!(
                    "request.method `{}` is not supported",
                    request.method
                ));
            }
            if request.timeout.is_zero() {
                return Err("request.timeout must be longer than 0s".into());
            }
        }
        for class in self
            .retry
            .iter()
            .flat_map(|r| &r.errors)
            .chain(self.catch.iter().flat_map(|c| &c.errors))
        {
            if !ERROR_CLASSES.contains(&class.as_str()) {
                return Err(format!(
                    "unknown error class `{class}` (known: {})",
                    ERROR_CLASSES.join(", ")
                ));
            }
        }
        for retry in &self.retry {
            if retry.errors.is_empty() {
                return Err("a retrier needs `errors`".into());
            }
            if !(retry.backoff_rate.is_finite() && retry.backoff_rate >= 1.0) {
                return Err("retry.backoff_rate must be at least 1.0".into());
            }
        }
        if self.catch.iter().any(|c| c.errors.is_empty()) {
            return Err("a catcher needs `errors`".into());
        }
        Ok(())
    }
}
