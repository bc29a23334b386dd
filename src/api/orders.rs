//! `/v1/orders`: intake (202 + id, status record written before the answer), transitions,
//! the polling `/status` and the whole order with its history.

use super::fields::{FieldErrors, string};
use super::openapi::schemas::{
    CreateOrder, OrderAccepted, OrderStatusView, OrderView, TransitionAccepted, TransitionRequest,
};
use super::problem::{ApiResult, Problem};
use super::{Idempotency, Node, accepted_response, json_object, refuse_customers};
use crate::auth::{Caller, Principal};
use crate::engine::{AcceptOutcome, Command, EnqueueOutcome, NewCommand};
use crate::metrics::Metrics;
use crate::model::{LineItem, Order, OrderStatus, StatusRecord, now_rfc3339};
use crate::workflow;
use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value, json};

const MAX_ID_LEN: usize = 128;
const MAX_ITEMS: usize = 100;
const MAX_REASON_LEN: usize = 500;
const MAX_METADATA_BYTES: usize = 8 * 1024;

/// The fields an intake body may hold (anything else is a field error), a line item's, and a
/// transition's. The OpenAPI schemas name the same (a unit test of `openapi` checks).
pub(crate) const ORDER_FIELDS: &[&str] = &[
    "orderId",
    "customerId",
    "partnerId",
    "items",
    "currency",
    "metadata",
];
pub(crate) const LINE_ITEM_FIELDS: &[&str] = &["sku", "quantity", "unitPrice"];
pub(crate) const TRANSITION_FIELDS: &[&str] = &["status", "reason"];

/// A required or optional identifier: 1..=128 visible ASCII characters; order ids (which
/// appear in URLs) are further limited to `A-Z a-z 0-9 . _ ~ : -`. `null` counts as absent.
fn id(
    c: &mut FieldErrors,
    body: &Map<String, Value>,
    field: &str,
    required: bool,
    url_safe: bool,
) -> Option<String> {
    let pointer = format!("/{field}");
    let Some(value) = body.get(field).filter(|v| !v.is_null()) else {
        if required {
            c.error(&pointer, "is required");
        }
        return None;
    };
    let allowed = |ch: char| {
        if url_safe {
            ch.is_ascii_alphanumeric() || "._~:-".contains(ch)
        } else {
            ch.is_ascii_graphic()
        }
    };
    let checked = string(value).and_then(|s| {
        if s.is_empty() || s.len() > MAX_ID_LEN {
            Err(format!("must be 1 to {MAX_ID_LEN} characters"))
        } else if !s.chars().all(allowed) {
            let set = if url_safe {
                "letters, digits and . _ ~ : -"
            } else {
                "visible ASCII characters"
            };
            Err(format!("may contain only {set}"))
        } else {
            Ok(s.to_string())
        }
    });
    c.check(&pointer, checked)
}

/// `items`: each line's errors are reported, and only well-formed lines are kept.
fn items(c: &mut FieldErrors, body: &Map<String, Value>) -> Vec<LineItem> {
    let Some(items) = c.required(body, "", "items", |v| {
        v.as_array().ok_or_else(|| "must be an array".into())
    }) else {
        return Vec::new();
    };
    if items.is_empty() || items.len() > MAX_ITEMS {
        c.error("/items", format!("must hold 1 to {MAX_ITEMS} items"));
    }
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate().take(MAX_ITEMS) {
        let base = format!("/items/{i}");
        let Value::Object(item) = item else {
            c.error(&base, "must be an object");
            continue;
        };
        c.unknown_fields(item, LINE_ITEM_FIELDS, &base);
        let sku = c.required(item, &base, "sku", |v| match string(v)? {
            s if !s.is_empty() && s.len() <= MAX_ID_LEN => Ok(s.to_string()),
            _ => Err(format!("must be 1 to {MAX_ID_LEN} characters")),
        });
        // Non-positive quantities are well-formed: the worker's business validation
        // rejects such orders (`accepted -> rejected`).
        let quantity = c.required(item, &base, "quantity", |v| {
            v.as_i64().ok_or_else(|| "must be an integer".into())
        });
        let unit_price = c.required(item, &base, "unitPrice", |v| match v {
            Value::Number(n) if n.as_f64().is_some_and(|f| f.is_finite() && f >= 0.0) => {
                Ok(n.clone())
            }
            Value::Number(_) => Err("must not be negative".into()),
            _ => Err("must be a number".into()),
        });
        if let (Some(sku), Some(quantity), Some(unit_price)) = (sku, quantity, unit_price) {
            out.push(LineItem {
                sku,
                quantity,
                unit_price,
            });
        }
    }
    out
}

/// Validates an intake body into an order (without its id and timestamp yet).
fn validate_order(body: &Map<String, Value>) -> Result<Order, Problem> {
    let mut c = FieldErrors::default();
    c.unknown_fields(body, ORDER_FIELDS, "");
    let order_id = id(&mut c, body, "orderId", false, true);
    let customer_id = id(&mut c, body, "customerId", true, false);
    let partner_id = id(&mut c, body, "partnerId", false, false);
    let items = items(&mut c, body);
    let currency = c.required(body, "", "currency", |v| match v {
        Value::String(s) if s.len() == 3 && s.chars().all(|ch| ch.is_ascii_uppercase()) => {
            Ok(s.clone())
        }
        _ => Err("must be a three-letter ISO 4217 code in upper case, e.g. USD".into()),
    });
    let metadata = match body.get("metadata") {
        None | Some(Value::Null) => None,
        Some(m @ Value::Object(_)) => {
            if serde_json::to_string(m).map_or(0, |s| s.len()) > MAX_METADATA_BYTES {
                c.error(
                    "/metadata",
                    format!("must serialise to at most {MAX_METADATA_BYTES} bytes"),
                );
            }
            Some(m.clone())
        }
        Some(_) => {
            c.error("/metadata", "must be an object");
            None
        }
    };
    c.nothing_queued()?;
    match (customer_id, currency) {
        (Some(customer_id), Some(currency)) => Ok(Order {
            order_id: order_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            customer_id,
            partner_id,
            items,
            currency,
            metadata,
            created_at: now_rfc3339(),
        }),
        // Unreachable: a missing field was recorded as an error above.
        _ => Err(Problem::bad_request("customerId and currency are required")),
    }
}

fn status_url(order_id: &str) -> String {
    format!("/v1/orders/{order_id}/status")
}

/// `POST /v1/orders`
#[utoipa::path(
    post,
    path = "/v1/orders",
    tag = "orders",
    summary = "Create an order",
    description = "Validated at once (400 with every field error, nothing queued). The status record and the `order.accepted` event exist before the 202 is sent. Leave `orderId` out to have Herald draw one. With `Idempotency-Key`, a repeat answers the first response; on 503 the order may have been accepted all the same: retry with the same key.",
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255, description = "1 to 255 visible ASCII characters: a repeat is answered with the first response (`Idempotent-Replayed: true`)."),),
    request_body = CreateOrder,
    responses(
        (status = 202, description = "Accepted: the status record exists and the order is queued.", body = OrderAccepted, headers(("Location" = String, description = "The order's status URL."), ("Retry-After" = u32, description = "Seconds before the first poll."), ("Idempotent-Replayed" = String, description = "`true` when this is the replay of an earlier request with the same Idempotency-Key."))),
        (status = 403, description = "A customer token, or a partner key naming another partnerId.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`order-exists`: the orderId is taken; or `idempotency-in-flight`.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`idempotency-key-reused`: the key was first used with another request.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn create_order(
    State(state): State<Node>,
    principal: Principal,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match create_order_inner(&state, &principal, &headers, body).await {
        Ok(response) => response,
        Err(problem) => {
            if problem.status == 503 {
                Metrics::inc(&state.metrics.intake_unavailable);
                return intake_unavailable(headers.contains_key("idempotency-key")).into_response();
            }
            Metrics::inc(&state.metrics.intake_refused);
            problem.into_response()
        }
    }
}

/// The 503 of an intake whose engine calls failed or did not answer in time
/// (`engine.operation_timeout`). A call that timed out may still have been carried out (the
/// request reached Redis, the answer did not come back), so the order may have been accepted:
/// the answer says so, and that a retry with the same `Idempotency-Key` is answered with that
/// order instead of making a second one.
fn intake_unavailable(with_idempotency_key: bool) -> Problem {
    let retry = if with_idempotency_key {
        "Retry this request with the same Idempotency-Key: if the order was accepted, the retry \
         answers with it and creates no second order."
    } else {
        "This request had no Idempotency-Key, so a retry may create the order a second time; \
         send one with every intake (and the same one on every retry of a request), or check \
         GET /v1/orders/{orderId}/status when you named the orderId."
    };
    Problem::unavailable(format!(
        "The storage engine did not confirm the intake (it failed, or did not answer within \
         engine.operation_timeout): the order may have been accepted. {retry}"
    ))
}

async fn create_order_inner(
    state: &Node,
    principal: &Principal,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    refuse_customers(principal, "create orders")?;
    let body = json_object(headers, body, state.config.http.max_json_depth)?;
    let mut order = validate_order(&body)?;
    if let Principal::Partner { partner_id } = principal {
        match &order.partner_id {
            None => order.partner_id = Some(partner_id.clone()),
            Some(p) if p == partner_id => {}
            Some(_) => {
                return Err(Problem::forbidden(
                    "A partner key may only create orders for its own partnerId.",
                ));
            }
        }
    }
    // An id the client did not name is drawn only now, where its record will live.
    let named = body.get("orderId").is_some_and(|v| !v.is_null());
    let idempotency = match Idempotency::begin(
        state,
        principal,
        headers,
        "POST /v1/orders",
        &body,
        named.then_some(order.order_id.as_str()),
    )
    .await
    {
        Ok(i) => i,
        // The engine did not answer the claim: answered like any intake it did not confirm.
        Err(response) if response.status() == StatusCode::SERVICE_UNAVAILABLE => {
            return Err(Problem::unavailable("claiming the Idempotency-Key failed"));
        }
        Err(response) => return Ok(response),
    };
    if !named {
        order.order_id = idempotency.draw_order_id(state.engine.partitions());
    }
    let message_id = uuid::Uuid::now_v7().to_string();
    let response_body = json!({
        "orderId": order.order_id,
        "messageId": message_id,
        "status": "accepted",
        "statusUrl": status_url(&order.order_id),
    });
    let event = workflow::accepted_event(&order);
    let command = NewCommand {
        message_id,
        order_id: order.order_id.clone(),
        command: Command::ProcessOrder {
            order: Box::new(order.clone()),
        },
        sent_at: order.created_at.clone(),
    };
    let record = idempotency.record(
        StatusCode::ACCEPTED,
        &response_body,
        state.config.http.idempotency_ttl,
    );
    match state
        .engine
        .accept_order(&order, &event, &command, record.as_ref())
        .await
    {
        Ok(AcceptOutcome::Accepted { .. }) => {
            Metrics::inc(&state.metrics.orders_accepted);
            Ok(accepted_response(StatusCode::ACCEPTED, &response_body))
        }
        Ok(AcceptOutcome::AlreadyExists) => {
            idempotency.abandon(state).await;
            Err(order_id_taken(&order.order_id))
        }
        Err(e) => {
            idempotency.abandon(state).await;
            Err(e.into())
        }
    }
}

/// The answer to a named `orderId` that is taken. Order ids are one namespace shared by
/// every partner (the engines key an order's status, history, queue and idempotency records
/// by it), so an id another partner holds is taken too; the answer is the same whoever holds
/// it, and says nothing of the holder.
fn order_id_taken(order_id: &str) -> Problem {
    Problem::conflict(
        "order-exists",
        "An order with this orderId exists",
        format!(
            "The orderId {order_id} is taken; nothing was queued. Choose another orderId, or \
             leave it out and Herald draws one."
        ),
    )
}

/// Loads an order's status and checks the caller may see it; an order it may not see is
/// answered as a missing one ([`Problem::no_such_order`]).
async fn authorized_status(
    state: &Node,
    principal: &Principal,
    order_id: &str,
) -> ApiResult<StatusRecord> {
    match state.engine.order_status(order_id).await? {
        Some(status)
            if principal.may_access_order(status.partner_id.as_deref(), &status.customer_id) =>
        {
            Ok(status)
        }
        _ => Err(Problem::no_such_order()),
    }
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct StatusQuery {
    /// Long-poll: answer once the order's version is above this one (a non-negative integer),
    /// or with the current status once the wait is over (`Prefer: wait`, else
    /// `http.long_poll_max_wait`).
    #[param(value_type = Option<u64>, minimum = 0)]
    wait_for_version: Option<String>,
}

/// `GET /v1/orders/{id}/status`: the status at once; with `Prefer: wait=N` (RFC 7240) and/or
/// `?waitForVersion=V`, a long-poll that answers as soon as the order's version is above `V`
/// (with only `Prefer`, above the version it had when the request came), or with the current
/// status once `N` seconds (at most `http.long_poll_max_wait`, its default without `Prefer`)
/// are over. `Preference-Applied: wait=<seconds waited at most>` says a `Prefer: wait` was
/// honoured. Waiting is served from the node's one wait on the log and bounded like every
/// long-poll (`crate::longpoll`: 429/503); the order's status is read again only when the
/// log moved.
#[utoipa::path(
    get,
    path = "/v1/orders/{order_id}/status",
    tag = "orders",
    summary = "Read an order's status",
    description = "The polling answer: status, version (one more per change) and when it changed. An order the caller may not see answers exactly as a missing one. With `Prefer: wait=N` (RFC 7240) and/or `?waitForVersion=V` it is a long-poll: it answers as soon as the order's version is above `V` (with only `Prefer`, above the version it had when the request came), or with the current status once `N` seconds (at most `http.long_poll_max_wait`, the wait without `Prefer`) are over; bounded per credential (429) and per node (503) like every long-poll.",
    params(
        ("order_id" = String, Path, description = "The order's id."),
        StatusQuery,
        ("Prefer" = Option<String>, Header, description = "`wait=N` (RFC 7240): long-poll for at most `N` whole seconds (capped at `http.long_poll_max_wait`). Other preferences are ignored.", example = "wait=20"),
    ),
    responses(
        (status = 200, description = "The order's current status (after a long-poll: the first version above the one waited on, or the status when the wait ended).", body = OrderStatusView,
            headers(("Preference-Applied" = String, description = "`wait=<seconds>`: sent when a `Prefer: wait` was honoured; the longest this request was willing to wait, at most the bound."))),
        (status = 400, description = "`waitForVersion` is not a non-negative integer, or `Prefer: wait` is not a number of seconds.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No order with this id is visible to this credential.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over this credential's rate limit or its long-polls (`Retry-After`).", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The node's long-polls are all taken, or the engine did not answer.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn get_status(
    State(state): State<Node>,
    caller: Caller,
    Path(order_id): Path<String>,
    Query(q): Query<StatusQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let principal = &caller.principal;
    let prefer = prefer_wait(&headers)?;
    let target = q
        .wait_for_version
        .as_deref()
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                Problem::bad_request(format!(
                    "waitForVersion must be a version number (a non-negative integer), not `{v}`."
                ))
            })
        })
        .transpose()?;
    let status = authorized_status(&state, principal, &order_id).await?;
    if prefer.is_none() && target.is_none() {
        return Ok(Json(status_json(&status)).into_response());
    }
    let max = state.config.http.long_poll_max_wait;
    let wait = prefer.map_or(max, |asked| asked.min(max));
    let target = target.unwrap_or(status.version);
    let status = if status.version > target {
        status
    } else {
        let found = state
            .long_polls
            .wait_for(&caller.credential, wait, || async {
                let status = authorized_status(&state, principal, &order_id).await?;
                Ok((status.version > target).then_some(status))
            })
            .await?;
        match found {
            Some(status) => status,
            None => authorized_status(&state, principal, &order_id).await?,
        }
    };
    let mut response = Json(status_json(&status)).into_response();
    if prefer.is_some() {
        // Whole seconds, as asked: what the request was willing to wait, at most the bound.
        let applied = format!("wait={}", wait.as_secs());
        if let Ok(value) = axum::http::HeaderValue::from_str(&applied) {
            response.headers_mut().insert("preference-applied", value);
        }
    }
    Ok(response)
}

fn status_json(status: &StatusRecord) -> Value {
    json!({
        "orderId": status.order_id,
        "status": status.status,
        "version": status.version,
        "updatedAt": status.updated_at,
    })
}

/// The `wait` preference of the request's `Prefer` headers (RFC 7240: comma-separated
/// preferences, names case-insensitive, `wait=<delta-seconds>`), if any; other preferences are
/// ignored, as the RFC asks. A `wait` that is not a number of seconds is a 400.
fn prefer_wait(headers: &HeaderMap) -> ApiResult<Option<std::time::Duration>> {
    for value in headers.get_all("prefer") {
        let text = value
            .to_str()
            .map_err(|_| Problem::bad_request("The Prefer header is not visible ASCII."))?;
        for preference in text.split(',') {
            // A preference may carry parameters after `;`.
            let head = preference.split(';').next().unwrap_or("").trim();
            let Some((name, value)) = head.split_once('=') else {
                continue;
            };
            if !name.trim().eq_ignore_ascii_case("wait") {
                continue;
            }
            let value = value.trim().trim_matches('"');
            let seconds = value.parse::<u64>().map_err(|_| {
                Problem::bad_request(format!(
                    "Prefer: wait must be a number of seconds (RFC 7240), not `{value}`."
                ))
            })?;
            return Ok(Some(std::time::Duration::from_secs(seconds)));
        }
    }
    Ok(None)
}

/// `GET /v1/orders/{id}`
#[utoipa::path(
    get,
    path = "/v1/orders/{order_id}",
    tag = "orders",
    summary = "Read an order",
    description = "The order as accepted, its current status and its status history (oldest first, capped); partner and admin callers also see the workflow's steps. An order the caller may not see answers exactly as a missing one.",
    params(("order_id" = String, Path, description = "The order's id.")),
    responses(
        (status = 200, description = "The order, its status and history.", body = OrderView),
        (status = 404, description = "No order with this id is visible to this credential.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn get_order(
    State(state): State<Node>,
    principal: Principal,
    Path(order_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let record = state
        .engine
        .order(&order_id)
        .await?
        .filter(|record| {
            principal.may_access_order(
                record.status.partner_id.as_deref(),
                &record.status.customer_id,
            )
        })
        .ok_or_else(Problem::no_such_order)?;
    let mut body = serde_json::to_value(&record.order).unwrap_or_default();
    if let Value::Object(map) = &mut body {
        map.insert("status".into(), json!(record.status.status));
        map.insert("version".into(), json!(record.status.version));
        map.insert("updatedAt".into(), json!(record.status.updated_at));
        map.insert("history".into(), json!(record.history));
        // The workflow's steps name services and their answers: partners and admins only.
        if !matches!(principal, Principal::Customer { .. }) && !record.steps.is_empty() {
            map.insert("steps".into(), json!(record.steps));
        }
    }
    Ok(Json(body))
}

/// `POST /v1/orders/{id}/transitions`
#[utoipa::path(
    post,
    path = "/v1/orders/{order_id}/transitions",
    tag = "orders",
    summary = "Request a transition",
    description = "Queued behind the order's earlier commands if the transition table allows it from the current status; else 409 and nothing is queued. Not for customer tokens.",
    params(("order_id" = String, Path, description = "The order's id."), ("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255, description = "1 to 255 visible ASCII characters: a repeat is answered with the first response (`Idempotent-Replayed: true`)."),),
    request_body = TransitionRequest,
    responses(
        (status = 202, description = "Allowed from the current status, and queued.", body = TransitionAccepted, headers(("Location" = String, description = "The order's status URL."), ("Retry-After" = u32, description = "Seconds before the first poll."), ("Idempotent-Replayed" = String, description = "`true` when this is the replay of an earlier request with the same Idempotency-Key."))),
        (status = 403, description = "A customer token.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No order with this id is visible to this credential.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`illegal-transition`: not allowed from the current status (nothing queued); or `idempotency-in-flight`.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`idempotency-key-reused`.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn create_transition(
    State(state): State<Node>,
    principal: Principal,
    Path(order_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match create_transition_inner(&state, &principal, &order_id, &headers, body).await {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    }
}

async fn create_transition_inner(
    state: &Node,
    principal: &Principal,
    order_id: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    refuse_customers(principal, "request transitions")?;
    let body = json_object(headers, body, state.config.http.max_json_depth)?;
    let mut c = FieldErrors::default();
    c.unknown_fields(&body, TRANSITION_FIELDS, "");
    let target = c.required(&body, "", "status", |v| string(v)?.parse::<OrderStatus>());
    let reason = match body.get("reason") {
        None | Some(Value::Null) => None,
        Some(v) => c.check(
            "/reason",
            string(v).and_then(|r| {
                if r.len() <= MAX_REASON_LEN {
                    Ok(r.to_string())
                } else {
                    Err(format!("must be at most {MAX_REASON_LEN} characters"))
                }
            }),
        ),
    };
    let (Some(target), true) = (target, c.is_empty()) else {
        return Err(c.into_problem());
    };
    // The key first: a repeat of a transition that was queued replays its 202 even once the
    // worker has run it and the table no longer allows it (the first answer may have been
    // lost with its node). Every refusal below gives the key back.
    let path = format!("POST /v1/orders/{order_id}/transitions");
    let idempotency =
        match Idempotency::begin(state, principal, headers, &path, &body, Some(order_id)).await {
            Ok(i) => i,
            Err(response) => return Ok(response),
        };
    let current = match authorized_status(state, principal, order_id).await {
        Ok(current) => current,
        Err(problem) => {
            idempotency.abandon(state).await;
            return Err(problem);
        }
    };
    if let Err(allowed) = workflow::check_transition(&state.config.workflow, current.status, target)
    {
        idempotency.abandon(state).await;
        let allowed: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
        return Err(Problem::conflict(
            "illegal-transition",
            "Transition not allowed",
            format!(
                "Order {order_id} is {} (version {}); it may move to: [{}]. Nothing was queued.",
                current.status,
                current.version,
                allowed.join(", ")
            ),
        ));
    }
    let message_id = uuid::Uuid::now_v7().to_string();
    let response_body = json!({
        "orderId": order_id,
        "messageId": message_id,
        "requestedStatus": target,
        "statusUrl": status_url(order_id),
    });
    let command = NewCommand {
        message_id,
        order_id: order_id.to_string(),
        command: Command::Transition {
            status: target,
            reason,
        },
        sent_at: now_rfc3339(),
    };
    let record = idempotency.record(
        StatusCode::ACCEPTED,
        &response_body,
        state.config.http.idempotency_ttl,
    );
    match state
        .engine
        .enqueue_command(&command, record.as_ref())
        .await
    {
        Ok(EnqueueOutcome::Enqueued) => {
            Metrics::inc(&state.metrics.transitions_queued);
            Ok(accepted_response(StatusCode::ACCEPTED, &response_body))
        }
        Ok(EnqueueOutcome::UnknownOrder) => {
            idempotency.abandon(state).await;
            Err(Problem::no_such_order())
        }
        Err(e) => {
            idempotency.abandon(state).await;
            Err(e.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_well_formed_order_validates_and_gets_an_id() {
        let o = validate_order(&body(json!({
            "customerId": "c-1",
            "items": [{"sku": "a", "quantity": 2, "unitPrice": 9.5}],
            "currency": "EUR"
        })))
        .unwrap();
        assert_eq!(o.customer_id, "c-1");
        assert!(!o.order_id.is_empty());
    }

    #[test]
    fn every_field_error_is_reported_with_a_pointer() {
        let p = validate_order(&body(json!({
            "orderId": "has space",
            "items": [{"sku": "", "quantity": 1.5, "unitPrice": -1}, 7],
            "currency": "usd",
            "colour": "red"
        })))
        .unwrap_err();
        let pointers: Vec<&str> = p.errors.iter().map(|e| e.pointer.as_str()).collect();
        for expected in [
            "#/colour",
            "#/orderId",
            "#/customerId",
            "#/items/0/sku",
            "#/items/0/quantity",
            "#/items/0/unitPrice",
            "#/items/1",
            "#/currency",
        ] {
            assert!(
                pointers.contains(&expected),
                "{expected} missing from {pointers:?}"
            );
        }
        assert_eq!(p.status, 400);
    }

    #[test]
    fn zero_quantity_is_well_formed_and_left_to_business_validation() {
        assert!(
            validate_order(&body(json!({
                "customerId": "c",
                "items": [{"sku": "a", "quantity": 0, "unitPrice": 1}],
                "currency": "USD"
            })))
            .is_ok()
        );
    }

    #[test]
    fn prefer_wait_is_read_among_other_preferences_and_a_bad_one_is_refused() {
        let headers = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append("prefer", v.parse().unwrap());
            }
            h
        };
        let secs = |s| Some(std::time::Duration::from_secs(s));
        assert_eq!(prefer_wait(&headers(&[])).unwrap(), None);
        assert_eq!(prefer_wait(&headers(&["respond-async"])).unwrap(), None);
        assert_eq!(prefer_wait(&headers(&["wait=10"])).unwrap(), secs(10));
        assert_eq!(
            prefer_wait(&headers(&["respond-async, Wait = 5"])).unwrap(),
            secs(5)
        );
        assert_eq!(
            prefer_wait(&headers(&["return=minimal", "wait=\"3\""])).unwrap(),
            secs(3)
        );
        let refused = prefer_wait(&headers(&["wait=soon"])).unwrap_err();
        assert_eq!(refused.status, 400);
        assert!(refused.detail.as_deref().unwrap_or("").contains("`soon`"));
    }
}
