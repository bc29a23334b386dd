//! `/v1/tasks/{token}`: the way back for a workflow callback step (Step Functions'
//! `SendTaskSuccess` / `SendTaskFailure` / `SendTaskHeartbeat`). The service a callback step
//! called holds the task token; it completes the step once with
//! `POST /v1/tasks/{token}/success` (the body, a JSON object, is the result the step's choices
//! judge) or `/failure` (`{error?, cause?}`, caught as the error class `callback`), and, for a
//! step with a `heartbeat`, says it is still at work with `/heartbeat` at least that often.
//!
//! The token is verified (signature, in constant time) before anything is read; a token that
//! does not verify, names an order the caller may not see, or names a missing order gets the
//! same 404. Single use is the engine's: the first completion closes the step's wait and queues
//! its command in one step; a second, or one after the timeout fired or the order moved on,
//! gets 409 and queues nothing. Partner keys complete their own orders' tokens; customers
//! cannot complete tokens.

use super::openapi::schemas::{HeartbeatAccepted, TaskCompleted, TaskFailure};
use super::problem::{ApiResult, Problem};
use super::{Node, json_object, refuse_customers};
use crate::auth::Principal;
use crate::engine::{ClaimOutcome, Command, NewCommand, StepAction};
use crate::metrics::Metrics;
use crate::model::now_rfc3339;
use crate::workflow::token::TaskToken;
use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

/// The fields a failure body may hold (both strings).
pub(crate) const FAILURE_FIELDS: &[&str] = &["error", "cause"];

fn not_waiting() -> Problem {
    Problem::conflict(
        "task-not-waiting",
        "The task is not waiting",
        "This task token was used already, its timeout fired, a later attempt replaced it, or \
         its order moved on; nothing was changed.",
    )
}

/// `POST /v1/tasks/{token}/heartbeat`: the callback's service is still at work; the step's
/// heartbeat deadline starts again.
#[utoipa::path(
    post,
    path = "/v1/tasks/{token}/heartbeat",
    tag = "tasks",
    summary = "Heartbeat a callback task",
    description = "The called service is still at work: the step's heartbeat deadline starts again.",
    params(("token" = String, Path, description = "The task token the workflow sent with the callback.")),
    responses(
        (status = 202, description = "The task's heartbeat deadline moved.", body = HeartbeatAccepted),
        (status = 403, description = "A customer token.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No task with this token is visible to this credential.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`task-not-waiting` or `task-without-heartbeat`: nothing was changed.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn heartbeat(
    State(state): State<Node>,
    principal: Principal,
    Path(token): Path<String>,
) -> ApiResult<Response> {
    refuse_customers(&principal, "send workflow task heartbeats")?;
    let task = visible_task(&state, &principal, &token).await?;
    let now = crate::worker::now_ms();
    let Some(timer) = state.workflow.heartbeat_timer(
        &task.order_id,
        task.status,
        task.version,
        task.attempt,
        now,
    ) else {
        return Err(Problem::conflict(
            "task-without-heartbeat",
            "The task expects no heartbeat",
            "The workflow step of this token has no `heartbeat`; nothing was changed.",
        ));
    };
    let due = timer.due_ms.unwrap_or(now);
    match state
        .engine
        .heartbeat(&task.order_id, &task.wait_id(), &timer)
        .await?
    {
        ClaimOutcome::Queued => {
            state.workflow_timers.notify_one();
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({
                    "orderId": task.order_id,
                    "status": task.status,
                    "version": task.version,
                    "heartbeatDueInMs": due.saturating_sub(now),
                })),
            )
                .into_response())
        }
        ClaimOutcome::NotWaiting => Err(not_waiting()),
        ClaimOutcome::UnknownOrder => Err(no_such_task()),
    }
}

/// The task a token names, if it verifies and its order is one the caller may see; else the
/// same 404 whatever the reason (a forged token is no oracle of order ids).
async fn visible_task(state: &Node, principal: &Principal, token: &str) -> ApiResult<TaskToken> {
    let Some(task) = state.workflow.token_key().verify(token) else {
        return Err(no_such_task());
    };
    let status = state.engine.order_status(&task.order_id).await?;
    let visible = status
        .as_ref()
        .is_some_and(|s| principal.may_access_order(s.partner_id.as_deref(), &s.customer_id));
    if visible {
        Ok(task)
    } else {
        Err(no_such_task())
    }
}

fn no_such_task() -> Problem {
    Problem::not_found("No task with this token is visible to this credential.")
}

/// `POST /v1/tasks/{token}/success`
#[utoipa::path(
    post,
    path = "/v1/tasks/{token}/success",
    tag = "tasks",
    summary = "Complete a callback task",
    description = "The service a workflow step called back reports success with any JSON result; the worker moves the order on. A token completes its step once.",
    params(("token" = String, Path, description = "The task token the workflow sent with the callback.")),
    request_body(content = Object, description = "The task's result: any JSON object, passed to the workflow."),
    responses(
        (status = 202, description = "Queued for the worker.", body = TaskCompleted),
        (status = 403, description = "A customer token.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No task with this token is visible to this credential.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`task-not-waiting`: nothing was changed.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn succeed(
    State(state): State<Node>,
    principal: Principal,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    complete(&state, &principal, &token, &headers, body, true).await
}

/// `POST /v1/tasks/{token}/failure`
#[utoipa::path(
    post,
    path = "/v1/tasks/{token}/failure",
    tag = "tasks",
    summary = "Fail a callback task",
    description = "The service a workflow step called back reports failure (`error`, `cause`); the step's catchers and retries apply. A token completes its step once.",
    params(("token" = String, Path, description = "The task token the workflow sent with the callback.")),
    request_body = TaskFailure,
    responses(
        (status = 202, description = "Queued for the worker.", body = TaskCompleted),
        (status = 403, description = "A customer token.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No task with this token is visible to this credential.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`task-not-waiting`: nothing was changed.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn fail(
    State(state): State<Node>,
    principal: Principal,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    complete(&state, &principal, &token, &headers, body, false).await
}

async fn complete(
    state: &Node,
    principal: &Principal,
    token: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    succeeded: bool,
) -> ApiResult<Response> {
    refuse_customers(principal, "complete workflow tasks")?;
    let task = visible_task(state, principal, token).await?;
    let body = json_object(headers, body, state.config.http.max_json_depth)?;
    if !succeeded {
        for (field, value) in &body {
            let known = FAILURE_FIELDS.contains(&field.as_str());
            if !known || !(value.is_string() || value.is_null()) {
                return Err(Problem::bad_request(format!(
                    "A failure body holds only `error` and `cause`, both strings; `{field}` is not allowed here."
                )));
            }
        }
    }
    let message_id = uuid::Uuid::now_v7().to_string();
    let command = NewCommand {
        message_id: message_id.clone(),
        order_id: task.order_id.clone(),
        command: Command::Step {
            status: task.status,
            version: task.version,
            action: StepAction::Callback {
                attempt: task.attempt,
                succeeded,
                result: Some(Value::Object(body)),
            },
        },
        sent_at: now_rfc3339(),
    };
    match state
        .engine
        .claim_wait(&task.order_id, &task.wait_id(), &command)
        .await?
    {
        ClaimOutcome::Queued => {
            Metrics::inc(&state.metrics.workflow_callbacks);
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({
                    "orderId": task.order_id,
                    "messageId": message_id,
                    "status": task.status,
                    "version": task.version,
                    "outcome": if succeeded { "success" } else { "failure" },
                })),
            )
                .into_response())
        }
        ClaimOutcome::NotWaiting => Err(not_waiting()),
        ClaimOutcome::UnknownOrder => Err(no_such_task()),
    }
}
