//! WebSocket subscriptions (DESIGN 1.4): the push hub fed by the event tail, the WebSocket
//! endpoint with one file per protocol over one subscription core, `POST /graphql` for the
//! `order` query, and the console page at `/`.
//!
//! - [`hub`]: the index of live subscriptions and the fan-out (shared payload bytes).
//! - [`conn`]: one connection's outbound queue, bounded in bytes.
//! - [`session`]: the subscription core: authorize, start, replay, stop.
//! - [`socket`]: one connection's loop: reads, batched writes, keepalives, the socket's limits.
//! - [`protocol`]: the seam the core and the socket loop call; [`close`]: every close code.
//! - [`transport_ws`]: `graphql-transport-ws`; [`appsync`]: `graphql-ws` (AppSync, Apollo).
//! - [`ws`]: the handshake, which picks the protocol; [`query`]: `POST /graphql`.
//! - [`sse`]: Server-Sent Events streams, a transport of their own over the same core, and
//!   the stream tokens `EventSource` opens them with.
//!
//! Imports go one way: `ws` -> `socket` -> `protocol` -> `session` -> `hub`/`conn`; the
//! protocol files import the seam and the session, never each other; nothing here imports
//! `api/`.

pub mod appsync;
pub mod close;
pub mod conn;
pub mod hub;
pub mod protocol;
pub mod query;
pub mod session;
pub mod socket;
pub mod sse;
pub mod transport_ws;
pub mod ws;

use crate::graphql::{DocumentLimits, GraphqlSchema};
use crate::http::routes::Routes;
use crate::node::Node;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tokio_util::sync::CancellationToken;

/// Counters of the WebSocket side (the hub keeps its own).
#[derive(Default)]
pub struct PushMetrics {
    pub connections_opened: AtomicU64,
    pub connections_refused: AtomicU64,
    pub subscriptions_started: AtomicU64,
    pub subscriptions_refused: AtomicU64,
    pub invalid_documents: AtomicU64,
    pub rate_limited: AtomicU64,
    pub subscription_limit: AtomicU64,
    pub messages_too_big: AtomicU64,
    pub stalled_writes: AtomicU64,
    pub subscriptions_expired: AtomicU64,
    pub snapshots_sent: AtomicU64,
    pub snapshots_refused: AtomicU64,
    pub sse_streams_opened: AtomicU64,
    pub sse_streams_closed: AtomicU64,
    pub sse_streams_refused: AtomicU64,
    pub sse_streams_dropped: AtomicU64,
}

pub struct PushState {
    pub node: Node,
    pub hub: Arc<hub::Hub>,
    pub schema: Arc<GraphqlSchema>,
    pub limits: DocumentLimits,
    pub connections: AtomicUsize,
    pub metrics: PushMetrics,
    pub shutdown: CancellationToken,
    /// Signs and checks the `?token=` of SSE streams (`push.stream_token_secret`).
    pub stream_tokens: crate::auth::StreamTokenKey,
}

impl PushState {
    /// Takes one of the node's `push.max_connections` slots (WebSocket connections and SSE
    /// streams alike), or answers why not: 503 with `Retry-After`, counted. The caller gives
    /// the slot back (`connections.fetch_sub`) when its connection or stream ends.
    #[allow(clippy::result_large_err)]
    pub fn take_connection_slot(&self) -> Result<(), axum::response::Response> {
        let max = self.node.config.push.max_connections;
        if self.connections.fetch_add(1, Ordering::AcqRel) < max {
            return Ok(());
        }
        self.connections.fetch_sub(1, Ordering::AcqRel);
        self.metrics
            .connections_refused
            .fetch_add(1, Ordering::Relaxed);
        Err(crate::http::problem::Problem::unavailable(format!(
            "This node holds its maximum of {max} WebSocket connections and SSE streams (push.max_connections); retry on another node or later."
        ))
        .retry_after(5)
        .into_response())
    }

    /// The series of the push side, read into a `/metrics` scrape.
    pub fn metric_series(&self, scrape: &crate::metrics::Scrape) {
        self.hub
            .metric_series(scrape, self.connections.load(Ordering::Relaxed) as u64);
        let m = &self.metrics;
        let opened = m.sse_streams_opened.load(Ordering::Relaxed);
        let closed = m.sse_streams_closed.load(Ordering::Relaxed);
        scrape.gauge(
            "herald_push_sse_streams",
            "Server-Sent Events streams open on this node (counted in push.max_connections with the WebSocket connections).",
            opened.saturating_sub(closed),
        );
        for (name, help, value) in [
            (
                "herald_push_connections_opened_total",
                "WebSocket connections accepted.",
                &m.connections_opened,
            ),
            (
                "herald_push_connections_refused_total",
                "WebSocket upgrades and SSE streams refused with 503 at push.max_connections.",
                &m.connections_refused,
            ),
            (
                "herald_push_subscriptions_started_total",
                "Subscriptions that went live.",
                &m.subscriptions_started,
            ),
            (
                "herald_push_subscriptions_refused_total",
                "Subscriptions refused by authorization.",
                &m.subscriptions_refused,
            ),
            (
                "herald_push_invalid_documents_total",
                "Subscribe messages whose document failed to parse or validate.",
                &m.invalid_documents,
            ),
            (
                "herald_push_rate_limited_total",
                "Subscribe messages refused by push.subscribe_rate.",
                &m.rate_limited,
            ),
            (
                "herald_push_subscription_limit_total",
                "Subscribe messages refused by push.max_subscriptions_per_connection.",
                &m.subscription_limit,
            ),
            (
                "herald_push_messages_too_big_total",
                "Connections closed with 1009 for a message over push.max_message_bytes.",
                &m.messages_too_big,
            ),
            (
                "herald_push_stalled_writes_total",
                "Connections closed with 4008 because the socket took no write for three push.keepalive_interval (the client stopped reading).",
                &m.stalled_writes,
            ),
            (
                "herald_push_subscriptions_expired_total",
                "Subscriptions ended because the token they were started with (AppSync extensions.authorization) expired.",
                &m.subscriptions_expired,
            ),
            (
                "herald_push_snapshots_sent_total",
                "Resync snapshots sent (subscriptions with resync: true whose cursor was expired or absent).",
                &m.snapshots_sent,
            ),
            (
                "herald_push_snapshots_refused_total",
                "Resync snapshots refused for holding more than push.max_snapshot_orders orders.",
                &m.snapshots_refused,
            ),
            (
                "herald_push_sse_streams_opened_total",
                "Server-Sent Events streams opened.",
                &m.sse_streams_opened,
            ),
            (
                "herald_push_sse_streams_closed_total",
                "Server-Sent Events streams ended, for any reason.",
                &m.sse_streams_closed,
            ),
            (
                "herald_push_sse_streams_refused_total",
                "Server-Sent Events streams refused before they started, with a problem+json answer (credentials, authorization, query parameters, cursor, push.max_connections).",
                &m.sse_streams_refused,
            ),
            (
                "herald_push_sse_streams_dropped_total",
                "Server-Sent Events streams ended as slow consumers (outbound queue full, or no chunk taken for three push.sse_heartbeat_interval), with a final event: error.",
                &m.sse_streams_dropped,
            ),
        ] {
            scrape.counter(name, help, value.load(Ordering::Relaxed));
        }
    }
}

/// The push role's routes: the WebSocket endpoint and its alias, `POST /graphql`, and the
/// console page.
pub fn routes() -> Routes<Arc<PushState>> {
    Routes::default()
        .get("/graphql", ws::upgrade)
        .post("/graphql", query::graphql_query)
        .get("/graphql/realtime", ws::upgrade)
        .post("/graphql/realtime", query::graphql_query)
        .get("/", console)
        .get("/v1/orders/{order_id}/events", sse::order_events)
        .get("/v1/events/stream", sse::events_stream)
        .post("/v1/stream-tokens", sse::mint_stream_token)
}

pub fn router(state: Arc<PushState>) -> Router {
    let max_body = state.node.config.push.max_message_bytes;
    routes()
        .into_router()
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

const CONSOLE: &str = include_str!("console.html");

/// `GET /`
#[utoipa::path(
    get,
    path = "/",
    tag = "graphql",
    summary = "Console page",
    description = "The live console: subscribe to orders and watch them change. No credentials (the page asks for a key).",
    security(()),
    responses((status = 200, description = "The live console page: subscribe to orders and watch them change.", content_type = "text/html", body = String)),
)]
pub async fn console() -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self' ws: wss:; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
        ],
        Html(CONSOLE),
    )
}

/// The credential in a `connection_init` payload or an AppSync authorization object:
/// `{"authorization": "Bearer <token>"}` (the scheme is optional) or `{"x-api-key": "<key>"}`,
/// keys compared case-insensitively.
pub fn credential_from_payload(payload: &Map<String, Value>) -> Option<String> {
    let get = |name: &str| {
        payload
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_str())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    if let Some(value) = get("authorization") {
        return Some(crate::auth::credential_from_authorization(value));
    }
    get("x-api-key").map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cred(v: Value) -> Option<String> {
        credential_from_payload(v.as_object().unwrap())
    }

    #[test]
    fn connection_init_credentials_in_every_spelling() {
        assert_eq!(
            cred(json!({"authorization": "Bearer abc"})).as_deref(),
            Some("abc")
        );
        assert_eq!(
            cred(json!({"Authorization": "bearer  abc "})).as_deref(),
            Some("abc")
        );
        assert_eq!(
            cred(json!({"Authorization": "raw-token"})).as_deref(),
            Some("raw-token")
        );
        assert_eq!(cred(json!({"X-Api-Key": "k1"})).as_deref(), Some("k1"));
        assert_eq!(cred(json!({"host": "h"})), None);
        assert_eq!(cred(json!({"x-api-key": ""})), None);
        assert_eq!(cred(json!({"x-api-key": 5})), None);
    }
}
