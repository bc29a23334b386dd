//! `POST /graphql`: the `order(orderId)` query, with the same document rules, projection and
//! authorization as subscriptions. GraphQL over HTTP with `application/json`: a request that
//! was read answers 200 with `data` and/or `errors`; an unreadable body answers 400, an
//! oversized one 413, a slow one 408, one that is not `application/json` 415, a missing or
//! refused credential 401 and a credential over its rate limit 429 (as the rest of the API,
//! with `Retry-After` and `RateLimit-*`), all with GraphQL errors.

use super::PushState;
use crate::api::openapi::schemas::{GraphqlRequest as GraphqlRequestBody, GraphqlResponse};
use crate::graphql::{GraphqlError, GraphqlRequest, Operation};
use crate::http::problem::Problem;
use crate::node::Refusal;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// `POST /graphql`: a GraphQL query (`order(orderId)`); every answer, errors included, is a
/// GraphQL response.
#[utoipa::path(
    post,
    path = "/graphql",
    tag = "graphql",
    summary = "GraphQL query",
    description = "A GraphQL query (`order(orderId)`) over HTTP; every answer, errors included, is a GraphQL response. `/graphql/realtime` is an alias.",
    request_body = GraphqlRequestBody,
    responses(
        (status = 200, description = "`data`, or GraphQL `errors` for a document that does not validate.", body = GraphqlResponse),
        (status = 400, description = "The body is not a GraphQL request.", body = GraphqlResponse),
        (status = 401, description = "Missing or invalid credentials (`UNAUTHENTICATED`).", body = GraphqlResponse),
        (status = 408, description = "The body did not arrive within http.body_read_timeout.", body = GraphqlResponse),
        (status = 413, description = "The body exceeds push.max_message_bytes.", body = GraphqlResponse),
        (status = 415, description = "The body is not `application/json`.", body = GraphqlResponse),
        (status = 429, description = "Over this credential's rate limit (`RATE_LIMITED`).", body = GraphqlResponse),
        (status = 503, description = "The status store is unavailable.", body = GraphqlResponse),
    ),
)]
pub async fn graphql_query(
    State(state): State<Arc<PushState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let principal = match state.node.admit(&headers) {
        Ok(p) => p,
        Err(refusal) => return refused(refusal),
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let (status, message) = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "The body exceeds push.max_message_bytes.".to_string(),
                )
            } else if crate::http::BodyTimeout::caused(&rejection) {
                (
                    StatusCode::REQUEST_TIMEOUT,
                    "The body did not arrive within http.body_read_timeout.".to_string(),
                )
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    format!("Could not read the request body: {rejection}"),
                )
            };
            return errors(status, GraphqlError::with_code(message, "BAD_REQUEST"));
        }
    };
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return errors(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            GraphqlError::with_code(
                "Send the request as `Content-Type: application/json`.",
                "BAD_REQUEST",
            ),
        );
    }
    let request: GraphqlRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return errors(
                StatusCode::BAD_REQUEST,
                GraphqlError::with_code(
                    format!(
                        "The body must be a JSON object {{query, variables?, operationName?}}: {e}"
                    ),
                    "BAD_REQUEST",
                ),
            );
        }
    };
    let query = match state.schema.prepare(&request, &state.limits) {
        Ok(Operation::Query(q)) => q,
        Ok(Operation::Subscription(_)) => {
            return errors(
                StatusCode::OK,
                GraphqlError::with_code(
                    "Subscriptions are served over WebSocket on GET /graphql.",
                    "BAD_REQUEST",
                ),
            );
        }
        Err(errs) => return json(StatusCode::OK, &serde_json::json!({ "errors": errs })),
    };
    let status = match state.node.engine.order_status(&query.order_id).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "graphql query: engine unavailable");
            return errors(
                StatusCode::SERVICE_UNAVAILABLE,
                GraphqlError::with_code(
                    "The status store is unavailable; retry.",
                    "SERVICE_UNAVAILABLE",
                ),
            );
        }
    };
    match status {
        Some(s) if !principal.may_access_order(s.partner_id.as_deref(), &s.customer_id) => {
            // A foreign order is reported like a missing one: nothing about it leaks.
            raw(StatusCode::OK, query.projection.render_order(None))
        }
        s => raw(StatusCode::OK, query.projection.render_order(s.as_ref())),
    }
}

/// A caller not admitted: the status and headers of the API's answer (401, or 429 with
/// `Retry-After` and `RateLimit-*`), with GraphQL errors as the body.
fn refused(refusal: Refusal) -> Response {
    let error = match &refusal {
        Refusal::Unauthenticated(None) => {
            GraphqlError::with_code("Missing credentials.", "UNAUTHENTICATED")
        }
        Refusal::Unauthenticated(Some(e)) => {
            GraphqlError::with_code(format!("Unauthorized: {e}."), "UNAUTHENTICATED")
        }
        Refusal::RateLimited(limited) => GraphqlError::with_code(
            format!(
                "Too many requests for this credential; retry after {} s.",
                limited.retry_after_secs
            ),
            "RATE_LIMITED",
        ),
    };
    let mut response = Problem::from(refusal).into_response();
    *response.body_mut() =
        axum::body::Body::from(serde_json::json!({ "errors": [error] }).to_string());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn errors(status: StatusCode, error: GraphqlError) -> Response {
    json(status, &serde_json::json!({ "errors": [error] }))
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    raw(status, Bytes::from(value.to_string()))
}

fn raw(status: StatusCode, body: Bytes) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
