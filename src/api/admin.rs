//! `/v1/admin`: queue depths, dead letters and their redrive, set-aside event entries.
//! Admin keys only.

use super::Node;
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

#[derive(Deserialize)]
pub struct LimitQuery {
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
pub async fn malformed_events(
    State(state): State<Node>,
    principal: Principal,
    Query(q): Query<LimitQuery>,
) -> ApiResult<Json<Value>> {
    require_admin(&principal)?;
    let entries = state.engine.malformed_entries(q.capped(100, 1000)).await?;
    Ok(Json(json!({ "entries": entries })))
}
