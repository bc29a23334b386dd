//! The HTTP API (DESIGN 1.2): routing and the request plumbing every handler uses
//! (the caller extractor, JSON bodies, idempotency); the state they share is [`crate::node`]. Handlers live per resource: `orders.rs`,
//! `events.rs`, `tasks.rs`, `webhooks.rs`, `admin.rs`, `health.rs`; `openapi/` derives the
//! OpenAPI document from their attributes. Handlers talk to the engine only.

pub mod admin;
pub mod events;
mod fields;
pub mod health;
pub mod openapi;
pub mod orders;
pub mod tasks;
pub mod webhooks;

/// The node's state every handler reads.
pub use crate::node::Node;

// The handlers name the problem type by `super::problem`.
use crate::http::problem;
use crate::http::routes::Routes;

use crate::auth::{Caller, Principal};
use crate::engine::{IdempotencyBegin, IdempotentResponse};
use axum::Router;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use problem::{ApiResult, Problem};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::time::Duration;

/// The routes: `api` adds the order, event, webhook and admin resources (the `api` role) and
/// their OpenAPI document; health, readiness and metrics are always served.
pub fn routes(api: bool) -> Routes<Node> {
    let routes = Routes::default()
        .get("/healthz", health::healthz)
        .get("/readyz", health::readyz)
        .get("/metrics", health::metrics);
    if !api {
        return routes;
    }
    routes
        .get("/openapi.json", openapi::openapi_json)
        .post("/v1/orders", orders::create_order)
        .get("/v1/orders/{order_id}", orders::get_order)
        .get("/v1/orders/{order_id}/status", orders::get_status)
        .post(
            "/v1/orders/{order_id}/transitions",
            orders::create_transition,
        )
        .post("/v1/tasks/{token}/success", tasks::succeed)
        .post("/v1/tasks/{token}/failure", tasks::fail)
        .post("/v1/tasks/{token}/heartbeat", tasks::heartbeat)
        .get("/v1/events", events::list_events)
        .post("/v1/events", events::publish_event)
        .post("/v1/webhooks", webhooks::create_endpoint)
        .get("/v1/webhooks", webhooks::list_endpoints)
        .get("/v1/webhooks/{webhook_id}", webhooks::get_endpoint)
        .patch("/v1/webhooks/{webhook_id}", webhooks::patch_endpoint)
        .delete("/v1/webhooks/{webhook_id}", webhooks::delete_endpoint)
        .post(
            "/v1/webhooks/{webhook_id}/rotate-secret",
            webhooks::rotate_secret,
        )
        .get(
            "/v1/webhooks/{webhook_id}/deliveries",
            webhooks::list_deliveries,
        )
        .get(
            "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}",
            webhooks::get_delivery,
        )
        .post(
            "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry",
            webhooks::retry_delivery,
        )
        .post("/v1/webhooks/{webhook_id}/recover", webhooks::recover)
        .get("/v1/admin/queues", admin::queues)
        .get("/v1/admin/dlq", admin::dead_letters)
        .post("/v1/admin/dlq/redrive", admin::redrive)
        .get("/v1/admin/events/malformed", admin::malformed_events)
}

/// Builds the router of [`routes`] with the shared fallbacks and body limit.
pub fn router(state: Node, api: bool) -> Router {
    let max_body = state.config.http.max_body_bytes;
    routes(api)
        .into_router()
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

impl FromRequestParts<Node> for Principal {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &Node) -> Result<Self, Problem> {
        state.admit(&parts.headers).map_err(Problem::from)
    }
}

/// The caller with the credential it came with, for handlers with limits per credential.
impl FromRequestParts<Node> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &Node) -> Result<Self, Problem> {
        state.admit_caller(&parts.headers).map_err(Problem::from)
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
/// nesting within `max_depth`, the text valid JSON. Every failure is a problem+json answer,
/// never axum's plain-text one.
pub fn json_object(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    max_depth: usize,
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
    if nests_deeper_than(&body, max_depth) {
        return Err(Problem::bad_request(format!(
            "The body nests arrays and objects deeper than http.max_json_depth ({max_depth})."
        )));
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Problem::bad_request("The body must be a JSON object.")),
        Err(e) => Err(Problem::bad_request(format!(
            "The body is not valid JSON: {e}"
        ))),
    }
}

/// Whether the JSON text nests arrays and objects deeper than `max` (brackets inside strings
/// do not count). One pass over the bytes, before the parser builds anything.
fn nests_deeper_than(text: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in text {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// An `Idempotency-Key` request in progress: created by [`Idempotency::begin`], it either
/// yields the earlier response to replay or the record to write with the effect.
pub enum Idempotency {
    /// No key was sent.
    None,
    /// This request owns the key; pass [`Idempotency::record`] to the engine call.
    /// `order_id`: the order the request names (`None` when Herald draws the id; see
    /// [`Idempotency::draw_order_id`]).
    Owned {
        key: String,
        order_id: Option<String>,
        fingerprint: String,
        /// The engine's name for this claim, passed on with the response.
        claim: String,
    },
}

const IDEMPOTENCY_IN_FLIGHT_TTL: Duration = Duration::from_secs(60);

impl Idempotency {
    /// Checks the `Idempotency-Key` header. Returns `Err(response)` when the request must be
    /// answered from (or refused because of) an earlier one. `order_id` is the order the
    /// request names, `None` for a new order whose id Herald draws: the record lives with the
    /// order (see `IdempotencyStore`).
    pub async fn begin(
        state: &Node,
        principal: &Principal,
        headers: &HeaderMap,
        method_and_path: &str,
        body: &serde_json::Map<String, Value>,
        order_id: Option<&str>,
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
            .begin_idempotent(&key, order_id, &fingerprint, IDEMPOTENCY_IN_FLIGHT_TTL)
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
            IdempotencyBegin::Started { claim } => Ok(Idempotency::Owned {
                key,
                order_id: order_id.map(str::to_string),
                fingerprint,
                claim,
            }),
            // Concurrent use of a key is a conflict whatever the body (as Stripe answers it).
            IdempotencyBegin::InFlight { .. } => Err(Problem::conflict(
                "idempotency-in-flight",
                "A request with this Idempotency-Key is in progress",
                "Retry after the first request completes: it is answered with the first \
                 request's response.",
            )
            .retry_after(1)
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
            Idempotency::Owned {
                key,
                fingerprint,
                claim,
                ..
            } => Some(IdempotentResponse {
                key: key.clone(),
                fingerprint: fingerprint.clone(),
                status: status.as_u16(),
                body: body.clone(),
                ttl,
                claim: claim.clone(),
            }),
        }
    }

    /// For a new order whose id Herald draws under an owned key: an id in the key's
    /// partition, where the key's record lives, so the record is written with the order (a
    /// retry draws another id, and must find the record where this one leaves it). Any id
    /// otherwise.
    pub fn draw_order_id(&self, partitions: usize) -> String {
        loop {
            let id = uuid::Uuid::now_v7().to_string();
            match self {
                Idempotency::Owned {
                    key,
                    order_id: None,
                    ..
                } if crate::engine::idempotency_partition(key, partitions)
                    != crate::model::partition_of(&id, partitions) => {}
                _ => return id,
            }
        }
    }

    /// Gives the key back after a failure, so a retry is processed afresh.
    pub async fn abandon(&self, state: &Node) {
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

#[cfg(test)]
mod tests {
    use super::nests_deeper_than;

    #[test]
    fn json_depth_counts_arrays_and_objects_but_not_brackets_in_strings() {
        assert!(!nests_deeper_than(br#"{"a":[1,{"b":2}]}"#, 3));
        assert!(nests_deeper_than(br#"{"a":[1,{"b":2}]}"#, 2));
        assert!(!nests_deeper_than(br#"{"a":"[[[[{{{{"}"#, 1));
        assert!(!nests_deeper_than(br#"{"a":"\"[[[["}"#, 1));
        assert!(nests_deeper_than(br#"{"a":"\\",  "b":[[]]}"#, 2));
        assert!(nests_deeper_than("[".repeat(10_000).as_bytes(), 128));
        assert!(!nests_deeper_than(b"", 1));
    }
}
