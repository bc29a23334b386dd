//! `/v1/webhooks` and `/v1/webhooks/{id}`: creating, reading, changing and deleting partner
//! endpoints, and rotating their secrets. A secret leaves Herald only in the answers of create
//! and rotate-secret.

use super::{lost_events_view, ms_to_rfc3339, no_such_endpoint, owns, visible_endpoint};
use crate::api::fields::FieldErrors;
use crate::api::openapi::schemas::{
    CreateWebhookEndpoint, CreatedWebhookEndpoint, PatchWebhookEndpoint, RotatedSecret,
    WebhookEndpoint, WebhookEndpointDetail, WebhookEndpointList,
};
use crate::api::problem::{ApiResult, Problem};
use crate::api::{Node, json_object, refuse_customers};
use crate::auth::Principal;
use crate::engine::webhook::{Endpoint, EndpointCreation, EndpointPatch, EndpointSecret, Ordering};
use crate::model::{OrderStatus, now_millis};
use crate::webhooks::{signature, ssrf};
use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use std::time::Duration;

/// After a rotation the previous secret keeps signing this long.
pub const ROTATION_OVERLAP: Duration = Duration::from_secs(24 * 3600);
const MAX_URL_LEN: usize = 2048;
const MAX_DESCRIPTION_LEN: usize = 500;
const MAX_EVENT_TYPES: usize = 20;
const MAX_RATE_LIMIT: u64 = 10_000;
const MAX_IN_FLIGHT: u64 = 1000;

/// The endpoint as every response shows it: no secret.
fn endpoint_view(e: &Endpoint) -> Value {
    json!({
        "id": e.id,
        "partnerId": e.partner_id,
        "url": e.url,
        "description": e.description,
        "eventTypes": e.event_types,
        "enabled": e.enabled,
        "disabledReason": e.disabled_reason,
        "rateLimitPerSecond": e.rate_limit_per_second,
        "maxInFlight": e.max_in_flight,
        "ordering": ordering_name(e.ordering),
        "createdAt": ms_to_rfc3339(e.created_at_ms),
        "updatedAt": ms_to_rfc3339(e.updated_at_ms),
        "failingSince": e.failing_since_ms.map(ms_to_rfc3339),
    })
}

/// The fields create and patch both take, and the one only `extra` takes (create:
/// `partnerId`, patch: `enabled`).
pub(crate) fn settings_and(extra: &'static str) -> [&'static str; 7] {
    [
        "url",
        "eventTypes",
        "description",
        "rateLimitPerSecond",
        "maxInFlight",
        "ordering",
        extra,
    ]
}

fn ordering_name(ordering: Ordering) -> &'static str {
    match ordering {
        Ordering::None => "none",
        Ordering::PerOrder => "perOrder",
    }
}

fn ordering(value: &Value) -> Result<Ordering, String> {
    match value.as_str() {
        Some("none") => Ok(Ordering::None),
        Some("perOrder") => Ok(Ordering::PerOrder),
        _ => Err("must be `none` or `perOrder`".into()),
    }
}

// The checks of the fields create and patch share. Each reads one value and says what is
// wrong with it; `eventTypes` records an error per bad entry itself.

fn url(state: &Node, value: &Value) -> Result<String, String> {
    let Value::String(url) = value else {
        return Err("must be a string".into());
    };
    if url.len() > MAX_URL_LEN {
        return Err(format!("must be at most {MAX_URL_LEN} characters"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("is not an absolute URL: {e}"))?;
    ssrf::check_url(&parsed, &state.webhook_allow)?;
    Ok(url.clone())
}

fn event_types(f: &mut FieldErrors, value: &Value) -> Option<Vec<String>> {
    let Value::Array(items) = value else {
        f.error("/eventTypes", "must be an array of event types");
        return None;
    };
    if items.len() > MAX_EVENT_TYPES {
        f.error(
            "/eventTypes",
            format!("must hold at most {MAX_EVENT_TYPES} types"),
        );
        return None;
    }
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let known = item.as_str().filter(|t| {
            *t == "*"
                || *t == "order.*"
                || *t == "endpoint.*"
                || *t == "endpoint.disabled"
                || t.strip_prefix("order.")
                    .is_some_and(|s| s.parse::<OrderStatus>().is_ok() && *s == s.to_lowercase())
        });
        match known {
            Some(t) => out.push(t.to_string()),
            None => f.error(
                &format!("/eventTypes/{i}"),
                "must be `order.<status>` (e.g. `order.shipped`), `order.*`, `endpoint.disabled`, `endpoint.*` or `*`",
            ),
        }
    }
    Some(out)
}

fn description(value: &Value) -> Result<Option<String>, String> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) if s.chars().count() <= MAX_DESCRIPTION_LEN => Ok(Some(s.clone())),
        _ => Err(format!(
            "must be a string of at most {MAX_DESCRIPTION_LEN} characters"
        )),
    }
}

/// An optional limit: `null` clears it (the `[webhooks]` default applies).
fn limit(value: &Value, min: u64, max: u64) -> Result<Option<u32>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Number(n) if n.as_u64().is_some_and(|v| (min..=max).contains(&v)) => {
            Ok(n.as_u64().map(|v| v as u32))
        }
        _ => Err(format!("must be an integer from {min} to {max}")),
    }
}

/// The answer to a create beyond `webhooks.max_endpoints_per_partner`: 422 (the request is
/// well formed, but the partner's quota of endpoints is used up; retrying will not help until
/// one is deleted), naming the limit and the partner's current count.
fn endpoint_limit_reached(partner_id: &str, count: u64, limit: u32) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "endpoint-limit-reached",
        "Webhook endpoint limit reached",
    )
    .detail(format!(
        "Partner {partner_id} has {count} webhook endpoints; at most {limit} are allowed \
         (webhooks.max_endpoints_per_partner). Delete one before creating another."
    ))
}

/// `POST /v1/webhooks`: 201 with the endpoint and its `secret` (shown this once); 422
/// `endpoint-limit-reached` when the partner has `webhooks.max_endpoints_per_partner` already.
#[utoipa::path(
    post,
    path = "/v1/webhooks",
    tag = "webhooks",
    summary = "Create a webhook endpoint",
    description = "201 with the endpoint and its signing `secret`, shown this once. A partner key creates endpoints for its own partnerId; an admin key for any, or for every order.",
    request_body = CreateWebhookEndpoint,
    responses(
        (status = 201, description = "Created; the secret is shown this once.", body = CreatedWebhookEndpoint, headers(("Location" = String, description = "The endpoint's URL."))),
        (status = 403, description = "A customer token, or a partner key naming another partnerId.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`endpoint-limit-reached`: the partner has `webhooks.max_endpoints_per_partner`.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn create_endpoint(
    State(state): State<Node>,
    principal: Principal,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    refuse_customers(&principal, "reach webhooks")?;
    let body = json_object(&headers, body, state.config.http.max_json_depth)?;
    let mut f = FieldErrors::default();
    f.unknown_fields(&body, &settings_and("partnerId"), "");
    let url = f.required(&body, "", "url", |v| url(&state, v));
    let event_types = body
        .get("eventTypes")
        .map(|v| event_types(&mut f, v))
        .unwrap_or(Some(Vec::new()));
    let description = body
        .get("description")
        .map(|v| f.check("/description", description(v)))
        .unwrap_or(Some(None));
    let rate = body
        .get("rateLimitPerSecond")
        .map(|v| f.check("/rateLimitPerSecond", limit(v, 0, MAX_RATE_LIMIT)))
        .unwrap_or(Some(None));
    let in_flight = body
        .get("maxInFlight")
        .map(|v| f.check("/maxInFlight", limit(v, 1, MAX_IN_FLIGHT)))
        .unwrap_or(Some(None));
    let ordering = body
        .get("ordering")
        .map(|v| f.check("/ordering", ordering(v)))
        .unwrap_or(Some(Ordering::None));
    let partner_id = match (body.get("partnerId"), &principal) {
        (None | Some(Value::Null), Principal::Partner { partner_id }) => Some(partner_id.clone()),
        (None | Some(Value::Null), _) => None,
        (Some(Value::String(p)), Principal::Partner { partner_id }) if p == partner_id => {
            Some(p.clone())
        }
        (Some(Value::String(_)), Principal::Partner { .. }) => {
            return Err(Problem::forbidden(
                "A partner key creates endpoints for its own partnerId only.",
            ));
        }
        (Some(Value::String(p)), _) if !p.is_empty() && p.len() <= 128 => Some(p.clone()),
        (Some(_), _) => {
            f.error("/partnerId", "must be a string of 1 to 128 characters");
            None
        }
    };
    f.nothing_changed()?;
    let (
        Some(url),
        Some(event_types),
        Some(description),
        Some(rate),
        Some(in_flight),
        Some(ordering),
    ) = (url, event_types, description, rate, in_flight, ordering)
    else {
        return Err(Problem::bad_request("The request body is not valid."));
    };
    let now = now_millis();
    let secret = signature::generate_secret();
    let endpoint = Endpoint {
        id: format!("ep_{}", uuid::Uuid::now_v7().simple()),
        partner_id,
        url,
        description,
        event_types,
        enabled: true,
        disabled_reason: None,
        rate_limit_per_second: rate,
        max_in_flight: in_flight,
        secrets: vec![EndpointSecret {
            secret: secret.clone(),
            expires_at_ms: None,
        }],
        created_at_ms: now,
        updated_at_ms: now,
        failing_since_ms: None,
        ordering,
    };
    let limit = state.config.webhooks.max_endpoints_per_partner;
    if let EndpointCreation::LimitReached { count } =
        state.engine.create_endpoint(&endpoint, limit).await?
    {
        return Err(endpoint_limit_reached(
            endpoint.partner_id.as_deref().unwrap_or(""),
            count,
            limit,
        ));
    }
    tracing::info!(endpoint_id = %endpoint.id, partner_id = endpoint.partner_id.as_deref().unwrap_or(""), "webhook endpoint created");
    let mut view = endpoint_view(&endpoint);
    view["secret"] = Value::String(secret);
    let mut response = (StatusCode::CREATED, Json(view)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/webhooks/{}", endpoint.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `GET /v1/webhooks`: the caller's endpoints (admin: all), oldest first.
#[utoipa::path(
    get,
    path = "/v1/webhooks",
    tag = "webhooks",
    summary = "List webhook endpoints",
    description = "The caller's endpoints (admin: all), oldest first.",
    responses((status = 200, description = "The caller's endpoints (admin: all), oldest first.", body = WebhookEndpointList), (status = 403, description = "A customer token.", body = Problem, content_type = "application/problem+json")),
)]
pub async fn list_endpoints(
    State(state): State<Node>,
    principal: Principal,
) -> ApiResult<Json<Value>> {
    refuse_customers(&principal, "reach webhooks")?;
    let mut endpoints: Vec<Endpoint> = state
        .engine
        .endpoints()
        .await?
        .into_iter()
        .filter(|e| owns(&principal, e))
        .collect();
    endpoints.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
    let views: Vec<Value> = endpoints.iter().map(endpoint_view).collect();
    Ok(Json(json!({ "endpoints": views })))
}

/// `GET /v1/webhooks/{id}`: the endpoint, with `lostEvents` (events trimmed from the log
/// before any dispatcher read them since it was created; see [`lost_events_view`]).
#[utoipa::path(
    get,
    path = "/v1/webhooks/{webhook_id}",
    tag = "webhooks",
    summary = "Read a webhook endpoint",
    description = "The endpoint (never its secret), with `lostEvents`: events trimmed from the log before any dispatcher read them since it was created. Another partner's endpoint answers as a missing one.",
    params(("webhook_id" = String, Path, description = "The endpoint's id (`ep_...`).")),
    responses((status = 200, description = "The endpoint (never its secret).", body = WebhookEndpointDetail), (status = 403, description = "A customer token.", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such endpoint visible to this credential.", body = Problem, content_type = "application/problem+json")),
)]
pub async fn get_endpoint(
    State(state): State<Node>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let endpoint = visible_endpoint(&state, &principal, &id).await?;
    let mut view = endpoint_view(&endpoint);
    view["lostEvents"] = lost_events_view(&state, &endpoint, 0).await?;
    Ok(Json(view))
}

/// `PATCH /v1/webhooks/{id}`: url, eventTypes, enabled, description, limits. Only the fields
/// given change, in one engine step: a concurrent PATCH of other fields, a rotated secret and
/// health recorded meanwhile all stay.
#[utoipa::path(
    patch,
    path = "/v1/webhooks/{webhook_id}",
    tag = "webhooks",
    summary = "Change a webhook endpoint",
    description = "Only the fields given change, in one step; `null` clears an optional one, `enabled: true` enables a disabled endpoint.",
    params(("webhook_id" = String, Path, description = "The endpoint's id (`ep_...`).")),
    request_body = PatchWebhookEndpoint,
    responses((status = 200, description = "The endpoint as changed.", body = WebhookEndpoint), (status = 403, description = "A customer token.", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such endpoint visible to this credential.", body = Problem, content_type = "application/problem+json")),
)]
pub async fn patch_endpoint(
    State(state): State<Node>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    visible_endpoint(&state, &principal, &id).await?;
    let body = json_object(&headers, body, state.config.http.max_json_depth)?;
    let mut f = FieldErrors::default();
    f.unknown_fields(&body, &settings_and("enabled"), "");
    let mut patch = EndpointPatch::default();
    if let Some(v) = body.get("url") {
        patch.url = f.check("/url", url(&state, v));
    }
    if let Some(v) = body.get("eventTypes") {
        patch.event_types = event_types(&mut f, v);
    }
    if let Some(v) = body.get("description") {
        patch.description = f.check("/description", description(v));
    }
    if let Some(v) = body.get("rateLimitPerSecond") {
        patch.rate_limit_per_second = f.check("/rateLimitPerSecond", limit(v, 0, MAX_RATE_LIMIT));
    }
    if let Some(v) = body.get("maxInFlight") {
        patch.max_in_flight = f.check("/maxInFlight", limit(v, 1, MAX_IN_FLIGHT));
    }
    if let Some(v) = body.get("ordering") {
        patch.ordering = f.check("/ordering", ordering(v));
    }
    match body.get("enabled") {
        None => {}
        Some(Value::Bool(enabled)) => patch.enabled = Some(*enabled),
        Some(_) => f.error("/enabled", "must be true or false"),
    }
    f.nothing_changed()?;
    patch.updated_at_ms = now_millis();
    // The owner never changes, so the check above still holds; gone meanwhile is 404.
    match state.engine.patch_endpoint(&id, &patch).await? {
        Some(endpoint) => Ok(Json(endpoint_view(&endpoint))),
        None => Err(no_such_endpoint()),
    }
}

/// `DELETE /v1/webhooks/{id}`: 204; its pending deliveries leave the schedule.
#[utoipa::path(
    delete,
    path = "/v1/webhooks/{webhook_id}",
    tag = "webhooks",
    summary = "Delete a webhook endpoint",
    description = "Its pending deliveries leave the schedule.",
    params(("webhook_id" = String, Path, description = "The endpoint's id (`ep_...`).")),
    responses((status = 204, description = "Deleted; its pending deliveries leave the schedule."), (status = 403, description = "A customer token.", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such endpoint visible to this credential.", body = Problem, content_type = "application/problem+json")),
)]
pub async fn delete_endpoint(
    State(state): State<Node>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    visible_endpoint(&state, &principal, &id).await?;
    if state.engine.delete_endpoint(&id).await? {
        tracing::info!(endpoint_id = %id, "webhook endpoint deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_such_endpoint())
    }
}

/// `POST /v1/webhooks/{id}/rotate-secret`: a new secret, returned once; the previous one keeps
/// signing beside it for [`ROTATION_OVERLAP`] (space-separated signatures).
#[utoipa::path(
    post,
    path = "/v1/webhooks/{webhook_id}/rotate-secret",
    tag = "webhooks",
    summary = "Rotate an endpoint's secret",
    description = "A new secret, shown this once; the previous one keeps signing beside it for 24 hours (space-separated signatures).",
    params(("webhook_id" = String, Path, description = "The endpoint's id (`ep_...`).")),
    responses((status = 200, description = "A new secret, shown this once; the previous one signs beside it for 24 h.", body = RotatedSecret), (status = 403, description = "A customer token.", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such endpoint visible to this credential.", body = Problem, content_type = "application/problem+json")),
)]
pub async fn rotate_secret(
    State(state): State<Node>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    visible_endpoint(&state, &principal, &id).await?;
    let now = now_millis();
    let previous_expires = now + ROTATION_OVERLAP.as_millis() as u64;
    let secret = signature::generate_secret();
    // One engine step: a PATCH racing this one keeps the new secret, and this one keeps its
    // fields.
    if state
        .engine
        .rotate_secret(&id, &secret, now, previous_expires)
        .await?
        .is_none()
    {
        return Err(no_such_endpoint());
    }
    tracing::info!(endpoint_id = %id, "webhook secret rotated");
    Ok(Json(json!({
        "secret": secret,
        "previousSecretExpiresAt": ms_to_rfc3339(previous_expires),
    })))
}
