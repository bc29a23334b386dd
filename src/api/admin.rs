//! `/v1/admin`: queue depths, dead letters and their redrive, set-aside event entries.
//! Admin keys only.

use super::AppState;
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

/// `GET /v1/admin/queues`
pub async fn queues(State(state): State<AppState>, principal: Principal) -> ApiResult<Json<Value>> {
    require_admin(&principal)?;
    let stats = state.engine.queue_stats().await?;
    Ok(Json(json!({
        "commands": {
            "visible": stats.visible,
            "inFlight": stats.in_flight,
            "deadLetters": stats.dead_letters,
            "visibilityTimeoutMs": state.config.queue.visibility_timeout.as_millis() as u64,
            "maxReceives": state.config.queue.max_receives,
        }
    })))
}

/// `GET /v1/admin/dlq?limit=`
pub async fn dead_letters(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<LimitQuery>,
) -> ApiResult<Json<Value>> {
    require_admin(&principal)?;
    let letters = state
        .engine
        .dead_letters(q.limit.unwrap_or(100).min(1000))
        .await?;
    Ok(Json(json!({ "deadLetters": letters })))
}

/// `POST /v1/admin/dlq/redrive?limit=`: moves dead letters back to the queue, oldest first.
pub async fn redrive(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<LimitQuery>,
) -> ApiResult<Json<Value>> {
    require_admin(&principal)?;
    let moved = state
        .engine
        .redrive(q.limit.unwrap_or(1000).min(100_000))
        .await?;
    tracing::info!(moved, "dead letters redriven");
    Ok(Json(json!({ "redriven": moved })))
}

/// `GET /v1/admin/events/malformed?limit=`
pub async fn malformed_events(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<LimitQuery>,
) -> ApiResult<Json<Value>> {
    require_admin(&principal)?;
    let entries = state
        .engine
        .malformed_entries(q.limit.unwrap_or(100).min(1000))
        .await?;
    Ok(Json(json!({ "entries": entries })))
}
