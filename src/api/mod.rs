//! The HTTP API (DESIGN 1.2): routing, shared state and the request plumbing every handler
//! uses (authentication, JSON bodies, idempotency). Handlers live per resource: `orders.rs`,
//! `events.rs`, `webhooks.rs`, `admin.rs`, `health.rs`. Handlers talk to the engine only.

pub mod admin;
pub mod events;
pub mod health;
pub mod orders;
pub mod problem;
pub mod webhooks;

use crate::auth::{AuthError, KeyRing, Principal, credential_from_headers};
use crate::config::Config;
use crate::engine::{Engine, IdempotencyBegin, IdempotentResponse};
use crate::metrics::Metrics;
use axum::Router;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use problem::{ApiResult, Problem};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// What every handler can reach. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct AppState(pub Arc<Shared>);

pub struct Shared {
    pub engine: Arc<dyn Engine>,
    pub config: Config,
    pub keys: KeyRing,
    pub metrics: Arc<Metrics>,
    /// The SSRF guard's exemptions (`webhooks.allow_networks`): endpoint URLs are checked
    /// against it when they are created or changed.
    pub webhook_allow: Arc<crate::webhooks::ssrf::AllowList>,
    /// Wakes this node's webhook sender when a request schedules a delivery for now.
    pub webhook_wake: Arc<tokio::sync::Notify>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Builds the router. `api` adds the order, event and admin resources (the `api` role);
/// health, readiness and metrics are always served.
pub fn router(state: AppState, api: bool) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics));
    if api {
        router = router
            .route("/v1/orders", post(orders::create_order))
            .route("/v1/orders/{order_id}", get(orders::get_order))
            .route("/v1/orders/{order_id}/status", get(orders::get_status))
            .route(
                "/v1/orders/{order_id}/transitions",
                post(orders::create_transition),
            )
            .route(
                "/v1/events",
                get(events::list_events).post(events::publish_event),
            )
            .route(
                "/v1/webhooks",
                post(webhooks::create_endpoint).get(webhooks::list_endpoints),
            )
            .route(
                "/v1/webhooks/{webhook_id}",
                get(webhooks::get_endpoint)
                    .patch(webhooks::patch_endpoint)
                    .delete(webhooks::delete_endpoint),
            )
            .route(
                "/v1/webhooks/{webhook_id}/rotate-secret",
                post(webhooks::rotate_secret),
            )
            .route(
                "/v1/webhooks/{webhook_id}/deliveries",
                get(webhooks::list_deliveries),
            )
            .route(
                "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}",
                get(webhooks::get_delivery),
            )
            .route(
                "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry",
                post(webhooks::retry_delivery),
            )
            .route("/v1/webhooks/{webhook_id}/recover", post(webhooks::recover))
            .route("/v1/admin/queues", get(admin::queues))
            .route("/v1/admin/dlq", get(admin::dead_letters))
            .route("/v1/admin/dlq/redrive", post(admin::redrive))
            .route("/v1/admin/events/malformed", get(admin::malformed_events));
    }
    let max_body = state.config.http.max_body_bytes;
    router
        .fallback(|| async { Problem::not_found("No such resource.") })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            )
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::map_response(
            problem::rejections_as_problems,
        ))
        .with_state(state)
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let credential =
            credential_from_headers(&parts.headers).ok_or_else(Problem::unauthorized)?;
        state.keys.authenticate(&credential).map_err(|e| match e {
            AuthError::Unknown => Problem::unauthorized(),
            // The message names the reason only (never the token): safe to send.
            AuthError::Expired | AuthError::Invalid(_) => {
                Problem::unauthorized().detail(e.to_string())
            }
        })
    }
}

/// Refuses customer tokens on the routes that change things: customers only read.
pub fn refuse_customers(principal: &Principal, what: &str) -> ApiResult<()> {
    match principal {
        Principal::Customer { .. } => Err(Problem::forbidden(format!(
            "A customer token may not {what}; it reads its own orders only."
        ))),
        _ => Ok(()),
    }
}

/// Reads a JSON object body: the content type must be JSON, the size within the limit, the
/// text valid JSON. Every failure is a problem+json answer, never axum's plain-text one.
pub fn json_object(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<serde_json::Map<String, Value>> {
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::new(status, "payload-too-large", "Request body too large")
                .detail("The body exceeds http.max_body_bytes.")
        } else if crate::http::BodyTimeout::caused(&rejection) {
            Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "request-timeout",
                "Request body too slow",
            )
            .detail("The body did not arrive within http.body_read_timeout; nothing was changed.")
        } else {
            Problem::bad_request(format!("Could not read the request body: {rejection}"))
        }
    })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !(mime.eq_ignore_ascii_case("application/json")
        || (mime.starts_with("application/") && mime.ends_with("+json")))
    {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
        )
        .detail("Send the body as `Content-Type: application/json`."));
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Problem::bad_request("The body must be a JSON object.")),
        Err(e) => Err(Problem::bad_request(format!(
            "The body is not valid JSON: {e}"
        ))),
    }
}

/// An `Idempotency-Key` request in progress: created by [`Idempotency::begin`], it either
/// yields the earlier response to replay or the record to write with the effect.
pub enum Idempotency {
    /// No key was sent.
    None,
    /// This request owns the key; pass [`Idempotency::record`] to the engine call.
    Owned { key: String, fingerprint: String },
}

const IDEMPOTENCY_IN_FLIGHT_TTL: Duration = Duration::from_secs(60);

impl Idempotency {
    /// Checks the `Idempotency-Key` header. Returns `Err(response)` when the request must be
    /// answered from (or refused because of) an earlier one.
    pub async fn begin(
        state: &AppState,
        principal: &Principal,
        headers: &HeaderMap,
        method_and_path: &str,
        body: &serde_json::Map<String, Value>,
    ) -> Result<Idempotency, Response> {
        let Some(raw) = headers.get("idempotency-key") else {
            return Ok(Idempotency::None);
        };
        let client_key = raw
            .to_str()
            .ok()
            .filter(|k| !k.is_empty() && k.len() <= 255)
            .ok_or_else(|| {
                Problem::bad_request("Idempotency-Key must be 1 to 255 visible ASCII characters.")
                    .into_response()
            })?;
        let key = format!("{}:{}", principal.idempotency_scope(), client_key);
        // serde_json's map is ordered by key, so equal bodies hash equally whatever the
        // client's key order or whitespace.
        let canonical = serde_json::to_string(body).unwrap_or_default();
        let fingerprint = hex(&Sha256::digest(format!("{method_and_path}\n{canonical}")));
        let found = state
            .engine
            .begin_idempotent(&key, &fingerprint, IDEMPOTENCY_IN_FLIGHT_TTL)
            .await
            .map_err(|e| Problem::from(e).into_response())?;
        let mismatch = || {
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency-Key reused with a different request",
            )
            .detail("This key was first used with another body or endpoint; use a new key.")
            .into_response()
        };
        match found {
            IdempotencyBegin::Started => Ok(Idempotency::Owned { key, fingerprint }),
            // Concurrent use of a key is a conflict whatever the body (as Stripe answers it).
            IdempotencyBegin::InFlight { .. } => Err(Problem::conflict(
                "idempotency-in-flight",
                "A request with this Idempotency-Key is in progress",
                "Retry after the first request completes.",
            )
            .into_response()),
            IdempotencyBegin::Completed(first) if first.fingerprint != fingerprint => {
                Err(mismatch())
            }
            IdempotencyBegin::Completed(first) => {
                let status = StatusCode::from_u16(first.status).unwrap_or(StatusCode::OK);
                let mut response = accepted_response(status, &first.body);
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                Err(response)
            }
        }
    }

    /// The record the engine writes with the effect, when this request owns a key.
    pub fn record(
        &self,
        status: StatusCode,
        body: &Value,
        ttl: Duration,
    ) -> Option<IdempotentResponse> {
        match self {
            Idempotency::None => None,
            Idempotency::Owned { key, fingerprint } => Some(IdempotentResponse {
                key: key.clone(),
                fingerprint: fingerprint.clone(),
                status: status.as_u16(),
                body: body.clone(),
                ttl,
            }),
        }
    }

    /// Gives the key back after a failure, so a retry is processed afresh.
    pub async fn abandon(&self, state: &AppState) {
        if let Idempotency::Owned { key, .. } = self
            && let Err(e) = state.engine.abandon_idempotent(key).await
        {
            tracing::warn!(error = %e, "could not release an idempotency key; it expires by itself");
        }
    }
}

/// A 202-style answer: JSON body, `Location` = the body's `statusUrl`, `Retry-After: 1`.
pub fn accepted_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, axum::Json(body.clone())).into_response();
    if let Some(url) = body.get("statusUrl").and_then(Value::as_str)
        && let Ok(value) = HeaderValue::from_str(url)
    {
        response.headers_mut().insert(header::LOCATION, value);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
