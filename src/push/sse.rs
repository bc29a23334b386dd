//! Server-Sent Events: `GET /v1/orders/{orderId}/events` and `GET /v1/events/stream`
//! (`text/event-stream`), and `POST /v1/stream-tokens`, which mints the `?token=` an
//! `EventSource` (it cannot set headers) opens them with.
//!
//! A stream is one subscription of the subscription core ([`Session`]), spelled by
//! [`SseDialect`]: the same authorization, hub registration, `Last-Event-ID` replay (the
//! `after` of WebSockets, same cursors), byte-bounded outbound queue ([`ConnHandle`]) and
//! credential expiry. This file only translates: query parameters into a filter, refusals
//! into problem+json answered before the stream starts, and the queue into frames:
//!
//! - `retry: <push.sse_retry in ms>` once, then `: live` once the subscription is registered
//!   (every event after it is delivered; the response is sent only then);
//! - each event `id: <eventId>\nevent: <type>\ndata: <OrderEvent JSON>` (rendered once per
//!   event for every stream, see [`crate::graphql::Projection::sse_frame`]);
//! - `: ping` every `push.sse_heartbeat_interval`;
//! - at most one `event: error` with a problem JSON body, always the last frame: the cursor
//!   was trimmed during the start, the replay fell behind, the credential expired, or the
//!   client fell behind its outbound queue (slow consumer). Shutdown just ends the stream.
//!
//! `?resync=true` is the subscription's `resync` (README "Resync"): an expired `Last-Event-ID`
//! (or none) starts the stream with `order.snapshot` frames instead of a 410.
//!
//! Streams count against `push.max_connections` with the WebSocket connections.

use super::PushState;
use super::conn::{ConnHandle, Out};
use super::session::{Dialect, Session, check_before_start};
use crate::api::openapi::schemas::StreamToken;
use crate::auth::{AuthError, Principal, credential_from_headers};
use crate::graphql::{
    EventFilter, FilterExpr, FilterField, GraphqlError, Projection, StringOp, SubscriptionSpec,
    codes,
};
use crate::http::problem::Problem;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// How every SSE error frame begins: the writer ends the stream after one.
const ERROR_FRAME: &str = "event: error\ndata: ";

/// The subscription core's messages, as SSE frames. Events carry no per-stream envelope: the
/// shared frame is the whole message.
pub struct SseDialect;

impl Dialect for SseDialect {
    fn next_prefix(&self, _id: &str) -> Utf8Bytes {
        Utf8Bytes::from_static("")
    }

    fn ack(&self, _id: &str) -> Option<String> {
        Some(": live\n\n".into())
    }

    fn error(&self, _id: &str, errors: &[GraphqlError]) -> String {
        let (code, message) = errors.first().map_or(("INTERNAL", "stream ended"), |e| {
            (e.code().unwrap_or("INTERNAL"), e.message.as_str())
        });
        error_frame(&problem_for(code, message))
    }
}

static DIALECT: SseDialect = SseDialect;

/// `event: error` with a problem JSON body (one line).
fn error_frame(problem: &Problem) -> String {
    let body = serde_json::to_string(problem).unwrap_or_else(|_| "{}".into());
    format!("{ERROR_FRAME}{body}\n\n")
}

/// The problem a core error code stands for, before a stream starts or in its last frame.
fn problem_for(code: &str, message: &str) -> Problem {
    match code {
        "FORBIDDEN" => Problem::forbidden(message),
        codes::BAD_USER_INPUT => {
            Problem::bad_request(message.replace("Argument `after`", "Last-Event-ID"))
        }
        "CURSOR_EXPIRED" => Problem::new(StatusCode::GONE, "cursor-expired", "Cursor expired")
            .detail(format!(
                "{message} (SSE: reconnect without Last-Event-ID / lastEventId.)"
            )),
        "UNAUTHENTICATED" => Problem::new(
            StatusCode::UNAUTHORIZED,
            "credential-expired",
            "Credential expired",
        )
        .detail(message),
        "REPLAY_OVERFLOW" | "SLOW_CONSUMER" => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "slow-consumer",
            "Slow consumer",
        )
        .detail(message),
        "SERVICE_UNAVAILABLE" => Problem::unavailable(message).retry_after(1),
        "SNAPSHOT_TOO_LARGE" => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "snapshot-too-large",
            "Snapshot too large",
        )
        .detail(message),
        _ => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
        )
        .detail(message),
    }
}

/// `GET /v1/orders/{orderId}/events`: one order's events.
#[utoipa::path(
    get,
    path = "/v1/orders/{order_id}/events",
    tag = "events",
    summary = "Stream one order's events (SSE)",
    description = "Server-Sent Events of one order: its events as they happen, resumable with `Last-Event-ID`. Authenticate with the headers or `?token=`. An order the caller may not see answers exactly as a missing one (404).",
    params(
        ("order_id" = String, Path, description = "The order's id."),
        ("lastEventId" = Option<String>, Query, description = "Resume just after this `eventId` (an `EventSource` reconnect sends the `Last-Event-ID` header instead, which wins)."),
        ("token" = Option<String>, Query, description = "A stream token from `POST /v1/stream-tokens`, for clients that cannot set headers; never an API key. Not with an `Authorization` / `x-api-key` header."),
        ("resync" = Option<bool>, Query, description = "`true`: with no cursor, or an expired one (instead of 410), start with `order.snapshot` frames of the current statuses (more than `push.max_snapshot_orders` orders: 413)."),
        ("Last-Event-ID" = Option<String>, Header, description = "The SSE reconnection cursor: resume just after this `eventId`."),
    ),
    responses(
        (status = 200, description = "`text/event-stream`: `retry:`, `: live` once subscribed, then one frame per event (`id: <eventId>`, `event: <type>`, `data: <OrderEvent JSON>`), `: ping` heartbeats, and at most one last `event: error` frame with a problem JSON body.", content_type = "text/event-stream", body = String),
        (status = 400, description = "An unknown query parameter, a bad `resync`, a malformed cursor, or two credentials.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No order with this id is visible to this credential.", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "`cursor-expired`: events after the cursor were removed by retention (reconnect without it, or with `resync=true`).", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`snapshot-too-large`: a resync would snapshot more than `push.max_snapshot_orders` orders.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`push.max_connections` reached, the replay fell behind, or the stream did not start in time (`Retry-After`).", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn order_events(
    State(state): State<Arc<PushState>>,
    Path(order_id): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let filter = EventFilter {
        order_id: Some(order_id),
        ..EventFilter::default()
    };
    open(
        state,
        filter,
        &params,
        &headers,
        &["token", "lastEventId", "resync"],
    )
    .await
}

/// `GET /v1/events/stream`: every event the caller may see, narrowed by `customerId`,
/// `partnerId` and `type` (repeated or comma separated: any of them).
#[utoipa::path(
    get,
    path = "/v1/events/stream",
    tag = "events",
    summary = "Stream the event log (SSE)",
    description = "Server-Sent Events of every event the caller may see, narrowed by customer, partner and type; resumable with `Last-Event-ID`. Authenticate with the headers or `?token=`.",
    params(
        ("customerId" = Option<String>, Query, description = "Only this customer's orders."),
        ("partnerId" = Option<String>, Query, description = "Only this partner's orders."),
        ("type" = Option<Vec<String>>, Query, description = "Only these event types (repeated or comma separated: any of them), e.g. `order.shipped`.", style = Form, explode),
        ("lastEventId" = Option<String>, Query, description = "Resume just after this `eventId` (an `EventSource` reconnect sends the `Last-Event-ID` header instead, which wins)."),
        ("token" = Option<String>, Query, description = "A stream token from `POST /v1/stream-tokens`, for clients that cannot set headers; never an API key. Not with an `Authorization` / `x-api-key` header."),
        ("resync" = Option<bool>, Query, description = "`true`: with no cursor, or an expired one (instead of 410), start with `order.snapshot` frames of the current statuses (more than `push.max_snapshot_orders` orders: 413)."),
        ("Last-Event-ID" = Option<String>, Header, description = "The SSE reconnection cursor: resume just after this `eventId`."),
    ),
    responses(
        (status = 200, description = "`text/event-stream`: `retry:`, `: live` once subscribed, then one frame per event (`id: <eventId>`, `event: <type>`, `data: <OrderEvent JSON>`), `: ping` heartbeats, and at most one last `event: error` frame with a problem JSON body.", content_type = "text/event-stream", body = String),
        (status = 400, description = "An unknown query parameter, a bad `resync`, a malformed cursor, or two credentials.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The filter names orders this credential may not see.", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "`cursor-expired`: events after the cursor were removed by retention (reconnect without it, or with `resync=true`).", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`snapshot-too-large`: a resync would snapshot more than `push.max_snapshot_orders` orders.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`push.max_connections` reached, the replay fell behind, or the stream did not start in time (`Retry-After`).", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn events_stream(
    State(state): State<Arc<PushState>>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let mut filter = EventFilter::default();
    let mut types = Vec::new();
    for (name, value) in &params {
        match name.as_str() {
            "customerId" => filter.customer_id = Some(value.clone()),
            "partnerId" => filter.partner_id = Some(value.clone()),
            "type" => types.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_string),
            ),
            _ => {}
        }
    }
    if !types.is_empty() {
        filter.expr = Some(FilterExpr::Compare {
            field: FilterField::Type,
            op: StringOp::In(types),
        });
    }
    let known = [
        "token",
        "lastEventId",
        "resync",
        "customerId",
        "partnerId",
        "type",
    ];
    open(state, filter, &params, &headers, &known).await
}

/// The caller of an SSE route: `?token=` (a stream token, never an API key: URLs end up in
/// logs), else the `Authorization` / `x-api-key` headers.
fn authenticate(
    state: &PushState,
    params: &[(String, String)],
    headers: &HeaderMap,
) -> Result<Principal, Box<Response>> {
    let token = params.iter().find(|(k, _)| k == "token").map(|(_, v)| v);
    let from_headers = credential_from_headers(headers);
    let result = match (token, from_headers) {
        (Some(_), Some(_)) => {
            return Err(Box::new(
                Problem::bad_request(
                    "Send one credential: the Authorization / x-api-key header or ?token=, not both.",
                )
                .into_response(),
            ));
        }
        (Some(token), None) => state.stream_tokens.verify(token, unix_now()),
        (None, Some(credential)) => state.node.keys.authenticate(&credential),
        (None, None) => Err(AuthError::Unknown),
    };
    result.map_err(|e| {
        let problem = match e {
            AuthError::Unknown => Problem::unauthorized(),
            e => Problem::unauthorized().detail(format!(
                "{e}. Send `Authorization: Bearer <key or token>`, `x-api-key: <key>`, or `?token=` from POST /v1/stream-tokens."
            )),
        };
        Box::new(problem.into_response())
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Authenticates, checks and opens a stream over `filter`; counts what it refuses.
async fn open(
    state: Arc<PushState>,
    filter: EventFilter,
    params: &[(String, String)],
    headers: &HeaderMap,
    known: &[&str],
) -> Response {
    let metrics = state.clone();
    let response = try_open(state, filter, params, headers, known).await;
    if response.status() != StatusCode::OK {
        metrics
            .metrics
            .sse_streams_refused
            .fetch_add(1, Ordering::Relaxed);
    }
    response
}

async fn try_open(
    state: Arc<PushState>,
    mut filter: EventFilter,
    params: &[(String, String)],
    headers: &HeaderMap,
    known: &[&str],
) -> Response {
    if let Some((name, _)) = params.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        return Problem::bad_request(format!(
            "Unknown query parameter `{name}`; this route takes {}.",
            known.join(", ")
        ))
        .into_response();
    }
    let principal = match authenticate(&state, params, headers) {
        Ok(p) => p,
        Err(response) => return *response,
    };
    // The browser's reconnection sends the header while the URL still holds the first
    // `lastEventId`: the header is the newer cursor.
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .or_else(|| {
            params
                .iter()
                .find(|(k, _)| k == "lastEventId")
                .map(|(_, v)| v.trim().to_string())
                .filter(|v| !v.is_empty())
        });
    // `?resync=true`: an expired Last-Event-ID (or none) starts with a snapshot of the current
    // statuses (README "Resync").
    let resync = match params
        .iter()
        .find(|(k, _)| k == "resync")
        .map(|(_, v)| v.as_str())
    {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Problem::bad_request(format!(
                "resync must be `true` or `false`, not `{other}`."
            ))
            .into_response();
        }
    };
    let one_order = filter.order_id.is_some();
    if let Err(e) =
        check_before_start(&state, &principal, &mut filter, after.as_deref(), resync).await
    {
        let code = e.code().unwrap_or("INTERNAL");
        let problem = if code == "FORBIDDEN" && one_order {
            // The same answer whether the order is missing or someone else's.
            Problem::no_such_order()
        } else {
            problem_for(code, &e.message)
        };
        return problem.into_response();
    }

    if let Err(refused) = state.take_connection_slot() {
        return refused;
    }
    let config = &state.node.config.push;
    let conn = Arc::new(ConnHandle::new(config.outbound_queue_bytes));
    // Until the stream is handed to its writer, dropping this (the client left while the
    // subscription started: the handler's future is dropped) ends the subscription and gives
    // the slot back.
    let mut opening = Opening {
        session: Some(Session::new(state.clone(), conn.clone(), None)),
    };
    let spec = SubscriptionSpec {
        filter,
        after,
        resync,
        projection: Arc::new(Projection::sse_frame()),
    };
    if let Some(session) = &mut opening.session {
        session.start_prepared("sse", spec, principal, &DIALECT);
    }
    // Answer once the subscription is live (its `: live`) or refused: a client that saw the
    // response misses no event published after it.
    let started = tokio::time::timeout(Duration::from_secs(10), conn.ready.notified()).await;
    if started.is_err() {
        return Problem::unavailable("The stream did not start in time; retry.")
            .retry_after(1)
            .into_response();
    }
    let Some(session) = opening.session.take() else {
        return Problem::unavailable("The stream did not start; retry.").into_response();
    };
    // Open (and live) from here: `herald_push_sse_streams` counts it; the guard gives its
    // connection slot back however it ends.
    state
        .metrics
        .sse_streams_opened
        .fetch_add(1, Ordering::Relaxed);
    let guard = StreamGuard {
        state: state.clone(),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let retry = format!("retry: {}\n\n", config.sse_retry.as_millis());
    tokio::spawn(write_stream(guard, session, Bytes::from(retry), tx));
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(chunk), rx))
    }));
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies (nginx) must not buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// A stream between its connection slot and its writer: dropped with the session still in
/// it, it ends the subscription and gives the slot back.
struct Opening {
    session: Option<Session>,
}

impl Drop for Opening {
    fn drop(&mut self) {
        if let Some(mut session) = self.session.take() {
            session.end_all();
            session.state.connections.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Gives a stream's connection slot back and counts it closed, however it ends.
struct StreamGuard {
    state: Arc<PushState>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.state.connections.fetch_sub(1, Ordering::AcqRel);
        self.state
            .metrics
            .sse_streams_closed
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// How a stream's writer stopped.
enum End {
    /// The client went away, or the server is shutting down.
    Gone,
    /// The final `event: error` was written.
    Errored,
    /// The client stopped reading for three heartbeat intervals.
    Stalled,
    /// The queue closed the stream (slow consumer).
    Killed,
}

/// Moves the stream's queue into the response body, a batch per chunk, with heartbeats, until
/// the stream ends; then ends the subscription.
async fn write_stream(
    guard: StreamGuard,
    mut session: Session,
    first: Bytes,
    tx: mpsc::Sender<Bytes>,
) {
    let state = guard.state.clone();
    let conn = session.conn.clone();
    let heartbeat = state.node.config.push.sse_heartbeat_interval;
    // A chunk the client does not take for this long: it stopped reading.
    let deadline = heartbeat * 3;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = state.shutdown.clone();

    let (chunk, last) = frames(first, &conn);
    let mut end = send(&tx, &conn, chunk, deadline).await;
    if end.is_none() && last {
        end = Some(End::Errored);
    }
    while end.is_none() {
        tokio::select! {
            biased;
            _ = conn.kill.notified() => end = Some(End::Killed),
            _ = shutdown.cancelled() => end = Some(End::Gone),
            _ = tx.closed() => end = Some(End::Gone),
            _ = conn.ready.notified() => {
                let (chunk, last) = frames(Bytes::new(), &conn);
                end = send(&tx, &conn, chunk, deadline).await;
                if end.is_none() && last {
                    end = Some(End::Errored);
                }
            }
            _ = ticker.tick() => {
                end = send(&tx, &conn, Bytes::from_static(b": ping\n\n"), deadline).await;
            }
        }
    }
    session.end_all();
    let slow = matches!(end, Some(End::Stalled | End::Killed));
    if slow {
        state
            .metrics
            .sse_streams_dropped
            .fetch_add(1, Ordering::Relaxed);
    }
    if matches!(end, Some(End::Killed)) {
        // Say why, if the client reads again within the deadline.
        let reason = conn
            .close_frame()
            .map(|(_, reason)| reason)
            .unwrap_or_else(|| "stream closed".into())
            .replace("`after`", "Last-Event-ID");
        let frame = error_frame(&problem_for("SLOW_CONSUMER", &reason));
        let _ = tokio::time::timeout(deadline, tx.send(Bytes::from(frame))).await;
    }
    drop(guard);
}

/// Sends one chunk; `None` when it went, else why the stream ends (the queue may close it as
/// a slow consumer while the client is not taking this chunk).
async fn send(
    tx: &mpsc::Sender<Bytes>,
    conn: &ConnHandle,
    chunk: Bytes,
    deadline: Duration,
) -> Option<End> {
    if chunk.is_empty() {
        return None;
    }
    tokio::select! {
        sent = tx.send(chunk) => sent.err().map(|_| End::Gone),
        _ = conn.kill.notified() => Some(End::Killed),
        _ = tokio::time::sleep(deadline) => Some(End::Stalled),
    }
}

/// `first` and everything queued, as one chunk, and whether it ends with the stream's final
/// error frame (nothing after it is sent).
fn frames(first: Bytes, conn: &ConnHandle) -> (Bytes, bool) {
    let mut chunk = BytesMut::from(&first[..]);
    let mut last = false;
    for out in conn.take_batch() {
        let cost = out.cost();
        match out {
            Out::Event { prefix, payload } => {
                chunk.extend_from_slice(prefix.as_bytes());
                chunk.extend_from_slice(payload.as_bytes());
            }
            Out::Text(text) => {
                let is_error = text.starts_with(ERROR_FRAME);
                chunk.extend_from_slice(text.as_bytes());
                conn.written(cost);
                if is_error {
                    last = true;
                    break;
                }
                continue;
            }
            Out::Ping => chunk.extend_from_slice(b": ping\n\n"),
        }
        conn.written(cost);
    }
    conn.wrote_batch();
    (chunk.freeze(), last)
}

/// `POST /v1/stream-tokens`: a token for `?token=` on the SSE routes, for the caller of this
/// request (any role), valid `push.stream_token_ttl` to open streams.
#[utoipa::path(
    post,
    path = "/v1/stream-tokens",
    tag = "events",
    summary = "Mint a stream token",
    description = "A short-lived token (`push.stream_token_ttl`) for `?token=` on the SSE routes, opening streams as the caller of this request (any credential). `Cache-Control: no-store`.",
    responses(
        (status = 201, description = "The token and until when it opens streams.", body = StreamToken),
    ),
)]
pub async fn mint_stream_token(
    State(state): State<Arc<PushState>>,
    headers: HeaderMap,
) -> Response {
    let Some(credential) = credential_from_headers(&headers) else {
        return Problem::unauthorized().into_response();
    };
    let principal = match state.node.keys.authenticate(&credential) {
        Ok(p) => p,
        Err(_) => return Problem::unauthorized().into_response(),
    };
    let ttl = state.node.config.push.stream_token_ttl.as_secs().max(1);
    let (token, expires_at) = state.stream_tokens.issue(&principal, unix_now() + ttl);
    let expires_at = time::OffsetDateTime::from_unix_timestamp(expires_at as i64)
        .map(crate::model::rfc3339)
        .unwrap_or_default();
    (
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({ "token": token, "expiresAt": expires_at })),
    )
        .into_response()
}
