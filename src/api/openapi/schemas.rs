//! The bodies the handlers read and answer, as OpenAPI schemas. The handlers read request
//! bodies field by field (so that every field error is reported with its JSON Pointer) and
//! build most answers with `json!`; these types give those bodies a name and a schema. They
//! are never built: `tests/openapi.rs` holds them to the truth by validating every answer of
//! the README quick start against the served document, and by the generated Python client
//! that parses them. Types the handlers serialise as they are (`Order`, `OrderEvent`,
//! `HistoryEntry`, `DeadLetter` ...) derive their schema where they are defined.
//!
//! Field names are the wire names (camelCase); the limits are the handlers' own.

// Never constructed: these types exist for their schemas (see the module's first lines).
#![allow(dead_code)]

use crate::engine::DeadLetter;
use crate::engine::webhook::{DeliveryState, Ordering};
use crate::model::{
    HistoryEntry, LineItem, MalformedEntry, Order, OrderEvent, OrderStatus, StepRecord,
};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// A JSON object of any fields.
pub type JsonObject = BTreeMap<String, Value>;

/// `POST /v1/orders`: a new order. Unknown fields are refused (400 with field errors).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateOrder {
    /// Leave out and Herald draws one (a UUIDv7). Letters, digits and `. _ ~ : -`.
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._~:-]+$")]
    pub order_id: Option<String>,
    /// The customer whose JWT `sub` may read the order. Visible ASCII characters.
    #[schema(min_length = 1, max_length = 128)]
    pub customer_id: String,
    /// A partner key's own partnerId when left out; a partner key may name only its own.
    #[schema(min_length = 1, max_length = 128)]
    pub partner_id: Option<String>,
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<LineItem>,
    /// ISO 4217 code in upper case, e.g. `USD`.
    #[schema(pattern = "^[A-Z]{3}$", example = "USD")]
    pub currency: String,
    /// Any object, at most 8 KiB serialised; kept with the order.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<JsonObject>,
}

/// The 202 of an intake: the order is accepted (its status record exists) and queued for
/// the worker. `Location` and `statusUrl` name its polling URL.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderAccepted {
    pub order_id: String,
    /// The queued command's id.
    pub message_id: String,
    /// Always `accepted`.
    pub status: OrderStatus,
    /// `/v1/orders/{orderId}/status`.
    pub status_url: String,
}

/// `GET /v1/orders/{id}/status`: the polling answer.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderStatusView {
    pub order_id: String,
    pub status: OrderStatus,
    /// Grows by one per status change; 1 at `accepted`.
    pub version: u64,
    /// RFC 3339.
    pub updated_at: String,
}

/// `GET /v1/orders/{id}`: the order as accepted, its current status and its history.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    #[serde(flatten)]
    pub order: Order,
    pub status: OrderStatus,
    pub version: u64,
    /// RFC 3339.
    pub updated_at: String,
    /// Oldest first (capped).
    pub history: Vec<HistoryEntry>,
    /// The workflow's step history, oldest first; partner and admin callers only, and only
    /// when there is one.
    pub steps: Option<Vec<StepRecord>>,
}

/// `POST /v1/orders/{id}/transitions`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransitionRequest {
    /// The status to move to; the transition table (`[workflow]`) decides which are allowed.
    pub status: OrderStatus,
    /// Travels as the event's `data.reason` and the history's `reason`.
    #[schema(max_length = 500)]
    pub reason: Option<String>,
}

/// The 202 of a transition: allowed from the current status, and queued.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransitionAccepted {
    pub order_id: String,
    pub message_id: String,
    pub requested_status: OrderStatus,
    pub status_url: String,
}

/// `POST /v1/tasks/{token}/failure`: why the callback's task failed.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskFailure {
    pub error: Option<String>,
    pub cause: Option<String>,
}

/// How a callback task ended.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskOutcome {
    Success,
    Failure,
}

/// The 202 of a task's success or failure: queued for the worker.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskCompleted {
    pub order_id: String,
    pub message_id: String,
    /// The status whose step the task belongs to, entered at `version`.
    pub status: OrderStatus,
    pub version: u64,
    pub outcome: TaskOutcome,
}

/// The 202 of a heartbeat: the task's heartbeat deadline moved.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatAccepted {
    pub order_id: String,
    pub status: OrderStatus,
    pub version: u64,
    /// When the next heartbeat is due, from now.
    pub heartbeat_due_in_ms: u64,
}

/// An event as the log shows it: its `eventId` (the resume cursor just after it) and the
/// event.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    /// Pass as `after` to resume just after this event.
    pub event_id: String,
    #[serde(flatten)]
    pub event: OrderEvent,
}

/// `GET /v1/events`: one page of the event log, oldest first, the caller's events only.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventPage {
    pub events: Vec<EventView>,
    /// The cursor after this page: pass it as `after` for the next one.
    pub next: String,
    /// `true` when the page starts with a snapshot (`?resync=true` with no `after`, or one
    /// older than the retained log): `order.snapshot` events of the current statuses, then the
    /// events after them. Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resynced: Option<bool>,
}

/// `POST /v1/stream-tokens`: a token for `?token=` on the Server-Sent Events routes.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamToken {
    /// Opens streams as the caller of the mint; pass as `?token=` (an `EventSource` cannot
    /// set headers). Never an API key in a URL.
    pub token: String,
    /// RFC 3339: streams may be opened with it until then (`push.stream_token_ttl`).
    #[schema(format = DateTime)]
    pub expires_at: String,
}

/// The 202 of `POST /v1/events`: the event is in the log.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventPublished {
    pub event_id: String,
}

/// A webhook endpoint as every answer shows it (never its secret).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEndpoint {
    /// `ep_...`
    pub id: String,
    /// The owner; none for an admin's endpoint of every order.
    pub partner_id: Option<String>,
    pub url: String,
    pub description: Option<String>,
    /// Empty: every event type.
    pub event_types: Vec<String>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    /// None: the `[webhooks]` default.
    pub rate_limit_per_second: Option<u32>,
    /// None: the `[webhooks]` default.
    pub max_in_flight: Option<u32>,
    /// `none` (the default) or `perOrder`: one order's deliveries one at a time, in event
    /// order.
    pub ordering: Ordering,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// RFC 3339: since when every attempt failed, if they do.
    pub failing_since: Option<String>,
}

/// The 201 of a create: the endpoint and its signing secret, shown this once.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedWebhookEndpoint {
    #[serde(flatten)]
    pub endpoint: WebhookEndpoint,
    /// The Standard Webhooks form (prefix `whsec`, an underscore, then base64): verify
    /// deliveries with a Standard Webhooks library.
    pub secret: String,
}

/// `GET /v1/webhooks/{id}`: the endpoint and the events it may have missed.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEndpointDetail {
    #[serde(flatten)]
    pub endpoint: WebhookEndpoint,
    /// Events trimmed from the log before any dispatcher read them, since the endpoint was
    /// created.
    pub lost_events: Vec<LostEvents>,
}

/// `POST /v1/webhooks`. Unknown fields are refused.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateWebhookEndpoint {
    /// An absolute URL whose destination passes the SSRF guard (`webhooks.allow_networks`).
    #[schema(max_length = 2048)]
    pub url: String,
    /// `order.<status>`, `order.*`, `endpoint.disabled`, `endpoint.*` or `*`; none or empty:
    /// every type.
    #[schema(max_items = 20)]
    pub event_types: Option<Vec<String>>,
    /// Admin keys only (a partner key's endpoint is its own); none: every order.
    #[schema(min_length = 1, max_length = 128)]
    pub partner_id: Option<String>,
    #[schema(max_length = 500)]
    pub description: Option<String>,
    #[schema(minimum = 0, maximum = 10000)]
    pub rate_limit_per_second: Option<u32>,
    #[schema(minimum = 1, maximum = 1000)]
    pub max_in_flight: Option<u32>,
    /// `none` (the default) or `perOrder`: one order's deliveries to this endpoint go out one
    /// at a time, in event order.
    pub ordering: Option<Ordering>,
}

/// `PATCH /v1/webhooks/{id}`: the fields to change; `null` clears an optional one.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PatchWebhookEndpoint {
    #[schema(max_length = 2048)]
    pub url: Option<String>,
    #[schema(max_items = 20)]
    pub event_types: Option<Vec<String>>,
    #[schema(max_length = 500)]
    pub description: Option<String>,
    #[schema(minimum = 0, maximum = 10000)]
    pub rate_limit_per_second: Option<u32>,
    #[schema(minimum = 1, maximum = 1000)]
    pub max_in_flight: Option<u32>,
    /// `none` (the default) or `perOrder`: one order's deliveries to this endpoint go out one
    /// at a time, in event order.
    pub ordering: Option<Ordering>,
    /// `true` enables a disabled endpoint again.
    pub enabled: Option<bool>,
}

/// `GET /v1/webhooks`: the caller's endpoints, oldest first.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEndpointList {
    pub endpoints: Vec<WebhookEndpoint>,
}

/// The answer to a rotation: the new secret, shown this once.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotatedSecret {
    pub secret: String,
    /// RFC 3339: until then the previous secret signs beside the new one.
    pub previous_secret_expires_at: String,
}

/// One event for one endpoint; its id is the `webhook-id` header, the same across retries.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// `msg_...`
    pub id: String,
    pub endpoint_id: String,
    pub event_id: String,
    pub event_type: String,
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempts: u32,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// RFC 3339; pending deliveries only.
    pub next_attempt_at: Option<String>,
    pub last_status_code: Option<u16>,
}

/// One attempt of a delivery.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    /// 1 for the first.
    pub number: u32,
    /// RFC 3339.
    pub at: String,
    /// None when no answer came (see `error`).
    pub status_code: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<String>,
    /// The first 20 KB of the response body.
    pub response: String,
}

/// A delivery with the body it sends and every attempt.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: Delivery,
    /// The exact request body (`{type, timestamp, data}`).
    #[schema(value_type = Object)]
    pub payload: Value,
    pub attempt_log: Vec<Attempt>,
}

/// `GET /v1/webhooks/{id}/deliveries`: newest first.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryPage {
    pub deliveries: Vec<Delivery>,
    /// The `before` of the next page; none on the last.
    pub next: Option<String>,
}

/// The 202 of a manual retry: the delivery is attempted again now.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryAccepted {
    pub delivery_id: String,
    pub state: DeliveryState,
}

/// `POST /v1/webhooks/{id}/recover`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoverRequest {
    /// RFC 3339: failed deliveries created since then are attempted again.
    #[schema(format = DateTime)]
    pub since: String,
}

/// Events trimmed from the log before any dispatcher read them: no recovery brings them back.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LostEvents {
    pub after_event_id: String,
    pub before_event_id: String,
    pub count: u64,
    /// RFC 3339.
    pub detected_at: String,
}

/// The 202 of a recovery.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoverAccepted {
    /// Failed deliveries attempted again.
    pub recovered: u64,
    pub lost_events: Vec<LostEvents>,
}

/// The command queue's counters.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandQueueStats {
    pub visible: u64,
    pub in_flight: u64,
    pub dead_letters: u64,
    pub visibility_timeout_ms: u64,
    pub max_receives: u32,
}

/// `GET /v1/admin/queues`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueReport {
    pub commands: CommandQueueStats,
    /// Workflow timers (retries, waits, callback deadlines) not yet fired.
    pub workflow_timers: u64,
}

/// `GET /v1/admin/dlq`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterList {
    pub dead_letters: Vec<DeadLetter>,
}

/// `POST /v1/admin/dlq/redrive`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Redriven {
    /// Dead letters moved back to the queue.
    pub redriven: u64,
}

/// `GET /v1/admin/events/malformed`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MalformedEntries {
    pub entries: Vec<MalformedEntry>,
}

/// `GET /healthz`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// `GET /readyz`: the engine answered.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    /// Always `ready`.
    pub status: String,
    /// `memory` or `redis`.
    pub engine: String,
    /// `volatile` (memory), `aof`, `snapshots`, `none` or `unknown`.
    pub persistence: String,
    pub persistence_warning: Option<String>,
}

/// `POST /graphql`: a query (subscriptions go over the WebSocket).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GraphqlRequest {
    pub query: String,
    #[schema(value_type = Option<Object>)]
    pub variables: Option<JsonObject>,
    pub operation_name: Option<String>,
}

/// A GraphQL response: `data`, or `errors` (each `{message, extensions: {code}}`).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GraphqlResponse {
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub errors: Option<Vec<Value>>,
}
