//! `/v1/admin`: queue depths, dead letters and their redrive, set-aside event entries.
//! Admin keys only.

use super::Node;
use super::openapi::schemas::{DeadLetterList, MalformedEntries, QueueReport, Redriven};
use super::problem::{ApiResult, Problem};
use crate::auth::Principal;
use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

fn require_admin(principal: &Principal) -> ApiResult<()> {
    if principal.is_admin() {
        Ok(())
    } else {
        Err(Problem::forbidden("This resource needs an admin key."))
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LimitQuery {
    /// At most this many (capped; see each route).
    limit: Option<usize>,
}

impl LimitQuery {
    /// `?limit=`, or `default` without one, never above `max`: one request cannot ask for the
    /// whole store.
    fn capped(&self, default: usize, max: usize) -> usize {
        self.limit.unwrap_or(default).min(max)
    }
}

/// `GET /v1/admin/queues`
#[utoipa::path(
    get,
    path = "/v1/admin/queues",
    tag = "admin",
    summary = "Queue statistics",
    description = "Admin keys only: the command queue's depth, in flight and dead letters, and the pending workflow timers.",
    responses((status = 200, description = "Queue depth, in flight, dead letters, pending timers.", body = QueueReport), (status = 403, description = "Not an admin key.", body = Problem, content_type = "application/problem+json")),
)]
pub async fn queues(State(state): State<Node>, principal: Principal) -> ApiResult<Json<Value>> {
    require_admin(&principal)?;
    let stats = state.engine.queue_stats().await?;
    Ok(Json(json!({
        "commands": {
            "visible": stats.visible,
            "inFlight": stats.in_flight,
            "deadLetters": stats.dead_letters,
            "visibilityTimeoutMs": state.config.queue.visibility_timeout.as_millis() as u64,
            "maxReceives": state.config.queue.max_receives,
        },
        "workflowTimers": state.engine.pending_timers().await?,
    })))
}

/// `GET /v1/admin/dlq?limit=`
#[utoipa::path(
    get,
    path = "/v1/admin/dlq",
    tag = "admin",
    summary = "List dead letters",
    description = "Admin keys only: commands that exhausted their receives, oldest first.",
    params(LimitQuery),
    responses((status = 200, description = "Dead letters, oldest first (default 100, at most 1000).", body = DeadLetterList), (status = 403, description = "Not an admin key.", body = Problem, content_type = "application/problem+json")),
)]
pub async fn dead_letters(
    State(state): State<Node>,
    principal: Principal,
    Query(q): Query<LimitQuery>,
) -> ApiResult<Json<Value>> {
    require_admin(&principal)?;
    let letters = state.engine.dead_letters(q.capped(100, 1000)).await?;
    Ok(Json(json!({ "deadLetters": letters })))
}

/// `POST /v1/admin/dlq/redrive?limit=`: moves dead letters back to the queue, oldest first.
#[utoipa::path(
    post,
    path = "/v1/admin/dlq/redrive",
    tag = "admin",
    summary = "Redrive dead letters",
    description = "Admin keys only: moves dead letters back to the queue, oldest first.",
    params(LimitQuery),
    responses((status = 200, description = "How many dead letters went back to the queue (default 1000, at most 100 000).", body = Redriven), (status = 403, description = "Not an admin key.", body = Problem, content_type = "application/problem+json")),
)]
pub async fn redrive(
    State(state): State<Node>,
    principal: Principal,
    Query(q): Query<LimitQuery>,
) -> ApiResult<Json<Value>> {
    require_admin(&principal)?;
    let moved = state.engine.redrive(q.capped(1000, 100_000)).await?;
    tracing::info!(moved, "dead letters redriven");
    Ok(Json(json!({ "redriven": moved })))
}

/// `GET /v1/admin/events/malformed?limit=`
#[utoipa::path(
    get,
    path = "/v1/admin/events/malformed",
    tag = "admin",
    summary = "List malformed events",
    description = "Admin keys only: event log entries that did not parse, set aside with the reason.",
    params(LimitQuery),
    responses((status = 200, description = "Log entries that are not events, set aside with the reason (default 100, at most 1000).", body = MalformedEntries), (status = 403, description = "Not an admin key.", body = Problem, content_type = "application/problem+json")),
)]
pub async fn malformed_events(
    State(state): State<Node>,
    principal: Principal,
    Query(q): Query<LimitQuery>,
) -> ApiResult<Json<Value>> {
    require_admin(&principal)?;
    let entries = state.engine.malformed_entries(q.capped(100, 1000)).await?;
    Ok(Json(json!({ "entries": entries })))
}
