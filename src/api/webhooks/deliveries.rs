//! `/v1/webhooks/{id}/deliveries` and `/recover`: an endpoint's delivery log, its attempts, and
//! sending failed deliveries again. Reaches deliveries only through an endpoint the caller
//! may see (`visible_endpoint`).

use super::{lost_events_view, ms_to_rfc3339, visible_endpoint};
use crate::api::fields::FieldErrors;
use crate::api::openapi::schemas::{
    DeliveryDetail, DeliveryPage, RecoverAccepted, RecoverRequest, RetryAccepted,
};
use crate::api::problem::{ApiResult, Problem};
use crate::api::{Node, json_object};
use crate::auth::Principal;
use crate::engine::webhook::{Attempt, Delivery, DeliveryState};
use crate::model::now_millis;
use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 250;
/// The fields a recover body may hold.
pub(crate) const RECOVER_FIELDS: &[&str] = &["since"];

fn delivery_view(d: &Delivery) -> Value {
    json!({
        "id": d.id,
        "endpointId": d.endpoint_id,
        "eventId": d.event_id,
        "eventType": d.event_type,
        "state": d.state,
        "attempts": d.attempts,
        "createdAt": ms_to_rfc3339(d.created_at_ms),
        "updatedAt": ms_to_rfc3339(d.updated_at_ms),
        "nextAttemptAt": d.next_attempt_at_ms.filter(|_| d.state == DeliveryState::Pending).map(ms_to_rfc3339),
        "lastStatusCode": d.last_status_code,
    })
}

fn attempt_view(a: &Attempt) -> Value {
    json!({
        "number": a.number,
        "at": ms_to_rfc3339(a.at_ms),
        "statusCode": a.status_code,
        "latencyMs": a.latency_ms,
        "error": a.error,
        "response": a.response,
    })
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// At most this many (1 to 250; default 50).
    #[param(minimum = 1, maximum = 250)]
    limit: Option<usize>,
    /// Deliveries created before this time: RFC 3339 or milliseconds since the epoch.
    before: Option<String>,
}

fn parse_time(field: &str, value: &str) -> ApiResult<u64> {
    if let Ok(ms) = value.parse::<u64>() {
        return Ok(ms);
    }
    OffsetDateTime::parse(value, &Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64)
        .map_err(|_| {
            Problem::bad_request(format!(
                "`{field}` must be an RFC 3339 time (2026-01-01T00:00:00Z) or epoch milliseconds."
            ))
        })
}

/// `GET /v1/webhooks/{id}/deliveries?limit&before`: newest first; `next` is the `before` of
/// the following page.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{webhook_id}/deliveries",
    tag = "webhooks",
    summary = "List an endpoint's deliveries",
    description = "Newest first; `next` is the `before` of the following page.",
    params(("webhook_id" = String, Path, description = "The endpoint's id (`ep_...`)."), PageQuery),
    responses(
        (status = 200, description = "Deliveries, newest first.", body = DeliveryPage),
        (status = 400, description = "`before` is not a time.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A customer token.", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such endpoint visible to this credential.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn list_deliveries(
    State(state): State<Node>,
    principal: Principal,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Value>> {
    visible_endpoint(&state, &principal, &id).await?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let before = q
        .before
        .as_deref()
        .map(|b| parse_time("before", b))
        .transpose()?;
    let deliveries = state.engine.deliveries(&id, limit, before).await?;
    let next = (deliveries.len() == limit)
        .then(|| deliveries.last().map(|d| d.created_at_ms.to_string()))
        .flatten();
    let views: Vec<Value> = deliveries.iter().map(delivery_view).collect();
    Ok(Json(json!({ "deliveries": views, "next": next })))
}

async fn visible_delivery(
    state: &Node,
    principal: &Principal,
    id: &str,
    delivery_id: &str,
) -> ApiResult<Delivery> {
    visible_endpoint(state, principal, id).await?;
    match state.engine.delivery(delivery_id).await? {
        Some(d) if d.endpoint_id == id => Ok(d),
        _ => Err(Problem::not_found("No such delivery for this endpoint.")),
    }
}

/// `GET /v1/webhooks/{id}/deliveries/{deliveryId}`: the delivery, its payload and every
/// attempt (status code, latency, first 20 KB of the response).
#[utoipa::path(
    get,
    path = "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}",
    tag = "webhooks",
    summary = "Read a delivery",
    description = "The delivery, the body it sends and every attempt (status code, latency, the first 20 KB of the response).",
    params(("webhook_id" = String, Path, description = "The endpoint's id (`ep_...`)."), ("delivery_id" = String, Path, description = "The delivery's id (`msg_...`, the `webhook-id` header).")),
    responses((status = 200, description = "The delivery, its body and every attempt.", body = DeliveryDetail), (status = 403, description = "A customer token.", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such endpoint, or no such delivery of it, visible to this credential.", body = Problem, content_type = "application/problem+json")),
)]
pub async fn get_delivery(
    State(state): State<Node>,
    principal: Principal,
    Path((id, delivery_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let delivery = visible_delivery(&state, &principal, &id, &delivery_id).await?;
    let attempts = state.engine.attempts(&delivery_id).await?;
    let mut view = delivery_view(&delivery);
    view["payload"] = serde_json::from_str(&delivery.body).unwrap_or(Value::Null);
    view["attemptLog"] = Value::Array(attempts.iter().map(attempt_view).collect());
    Ok(Json(view))
}

/// `POST /v1/webhooks/{id}/deliveries/{deliveryId}/retry`: attempt again now (202).
#[utoipa::path(
    post,
    path = "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry",
    tag = "webhooks",
    summary = "Retry a delivery",
    description = "The delivery is attempted again now, whatever its state.",
    params(("webhook_id" = String, Path, description = "The endpoint's id (`ep_...`)."), ("delivery_id" = String, Path, description = "The delivery's id (`msg_...`, the `webhook-id` header).")),
    responses((status = 202, description = "Attempted again now.", body = RetryAccepted), (status = 403, description = "A customer token.", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such endpoint, or no such delivery of it, visible to this credential.", body = Problem, content_type = "application/problem+json")),
)]
pub async fn retry_delivery(
    State(state): State<Node>,
    principal: Principal,
    Path((id, delivery_id)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    visible_delivery(&state, &principal, &id, &delivery_id).await?;
    if !state
        .engine
        .retry_delivery(&delivery_id, now_millis())
        .await?
    {
        return Err(Problem::not_found("No such delivery for this endpoint."));
    }
    state.webhook_wake.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "deliveryId": delivery_id, "state": "pending" })),
    ))
}

/// `POST /v1/webhooks/{id}/recover` `{since}`: every failed delivery created since then is
/// attempted again now (202 with how many), and `lostEvents`: the gaps found since then that
/// no recovery can bring back (events trimmed from the log before any dispatcher read them).
#[utoipa::path(
    post,
    path = "/v1/webhooks/{webhook_id}/recover",
    tag = "webhooks",
    summary = "Recover failed deliveries",
    description = "Every failed delivery created since `since` is attempted again now; `lostEvents` lists the gaps since then that no recovery can bring back.",
    params(("webhook_id" = String, Path, description = "The endpoint's id (`ep_...`).")),
    request_body = RecoverRequest,
    responses((status = 202, description = "Failed deliveries since then are attempted again.", body = RecoverAccepted), (status = 403, description = "A customer token.", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such endpoint visible to this credential.", body = Problem, content_type = "application/problem+json")),
)]
pub async fn recover(
    State(state): State<Node>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let endpoint = visible_endpoint(&state, &principal, &id).await?;
    let body = json_object(&headers, body, state.config.http.max_json_depth)?;
    let mut f = FieldErrors::default();
    f.unknown_fields(&body, RECOVER_FIELDS, "");
    let since = f.required(&body, "", "since", |v| match v {
        Value::String(s) => OffsetDateTime::parse(s, &Rfc3339)
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64)
            .map_err(|_| "must be an RFC 3339 time, e.g. 2026-01-01T00:00:00Z".into()),
        _ => Err("must be an RFC 3339 time string".into()),
    });
    f.nothing_changed()?;
    let since = since.unwrap_or_default();
    let recovered = state
        .engine
        .recover_failed(&id, since, now_millis())
        .await?;
    if recovered > 0 {
        state.webhook_wake.notify_one();
    }
    // What recovery cannot bring back: events lost before any delivery was made of them.
    let lost = lost_events_view(&state, &endpoint, since).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "recovered": recovered, "lostEvents": lost })),
    ))
}
