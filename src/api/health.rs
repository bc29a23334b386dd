//! Liveness, readiness and metrics.

use super::Node;
use super::openapi::schemas::{Health, Readiness};
use super::problem::Problem;
use crate::auth::Principal;
use crate::engine::Persistence;
use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::{HeaderValue, Request, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::time::Duration;

const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`: the process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "Liveness",
    description = "The process is up. No credentials.",
    security(()),
    responses((status = 200, description = "The process is alive.", body = Health)),
)]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the engine answers now. Ready also says how the engine keeps its data
/// (`persistence`: `volatile`, `aof`, `snapshots`, `none` or `unknown`, with a
/// `persistenceWarning` when the data would not survive a restart of Redis): a Redis without
/// persistence serves, and the operator can see it.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness",
    description = "The engine answers now. `persistence` says how it keeps its data (`volatile`, `aof`, `snapshots`, `none` or `unknown`), with `persistenceWarning` when the data would not survive a restart of Redis. No credentials.",
    security(()),
    responses(
        (status = 200, description = "The engine answered.", body = Readiness),
        (status = 503, description = "The engine is unreachable or did not answer in time.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn readyz(State(state): State<Node>) -> Response {
    match tokio::time::timeout(READY_TIMEOUT, state.engine.ping()).await {
        Ok(Ok(())) => {
            let persistence = tokio::time::timeout(READY_TIMEOUT, state.engine.persistence())
                .await
                .unwrap_or_else(|_| Persistence::Unknown("no answer in time".to_owned()));
            let mut body = json!({
                "status": "ready",
                "engine": state.engine.kind(),
                "persistence": persistence.name(),
            });
            if let Some(warning) = persistence.warning() {
                body["persistenceWarning"] = json!(warning);
            }
            Json(body).into_response()
        }
        Ok(Err(e)) => {
            Problem::unavailable(format!("engine {} unreachable: {e}", state.engine.kind()))
                .into_response()
        }
        Err(_) => Problem::unavailable(format!(
            "engine {} did not answer in time",
            state.engine.kind()
        ))
        .into_response(),
    }
}

/// `GET /metrics`: Prometheus text format. Needs an admin key unless `http.public_metrics`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    description = "Prometheus text format. Admin keys only, unless `http.public_metrics`.",
    responses(
        (status = 200, description = "The metrics.", content_type = "text/plain", body = String),
        (status = 403, description = "Not an admin key.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn metrics(State(state): State<Node>, request: Request<axum::body::Body>) -> Response {
    if !state.config.http.public_metrics {
        let (mut parts, _) = request.into_parts();
        match Principal::from_request_parts(&mut parts, &state).await {
            Ok(p) if p.is_admin() => {}
            Ok(_) => return Problem::forbidden("Metrics need an admin key.").into_response(),
            Err(problem) => return problem.into_response(),
        }
    }
    let queue = tokio::time::timeout(READY_TIMEOUT, state.engine.queue_stats()).await;
    let queue = match queue {
        Ok(Ok(q)) => Some(q),
        _ => None,
    };
    let body = state.metrics.render(
        queue.as_ref(),
        queue.is_some(),
        state.engine.blocking_connections_in_use(),
    );
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
