//! The configuration's sections: one struct per `[section]` of `config/herald.toml`, each with
//! its `Default` impl, the single source of the defaults that file documents. This file only
//! says what a section holds and how its values are spelled (durations the human way); whether
//! a combination of values is acceptable is `validate`'s question, and where values come from
//! is `layers`'.

use super::steps::StepConfig;
use crate::model::OrderStatus;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    Memory,
    Redis,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    pub kind: EngineKind,
    pub redis_url: String,
    pub key_prefix: String,
    /// Event stream key; empty means `<key_prefix>{p0}:events`.
    pub events_stream: String,
    /// Entries kept in the event log (Redis: approximate `MAXLEN ~`).
    pub event_retention: u64,
    /// Status history entries kept per order.
    pub history_limit: usize,
    /// How long one engine operation may take before it counts as unavailable.
    #[serde(deserialize_with = "duration")]
    pub operation_timeout: Duration,
    /// Dedicated connections for blocking reads (the event tail, the long-poll watcher, the
    /// worker and the dispatcher waiting for work), per process and per Redis node; a blocking
    /// read that finds them all busy waits, then fails as unavailable.
    pub max_blocking_connections: usize,
    /// Partitions of the Redis engine's orders, queue and event log (README "Partitions"):
    /// partition `k`'s keys carry the hash tag `{pk}`. Fixed for the life of the data.
    pub partitions: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            kind: EngineKind::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            key_prefix: "herald:".into(),
            events_stream: String::new(),
            event_retention: 100_000,
            history_limit: 100,
            operation_timeout: Duration::from_secs(2),
            max_blocking_connections: 32,
            partitions: 1,
        }
    }
}

impl EngineConfig {
    /// The hash tag every key carries, so each multi-key script touches one cluster slot.
    pub const HASH_TAG: &'static str = "{p0}";

    pub const MAX_PARTITIONS: usize = 1024;

    /// The event stream of partition 0 (the only one by default).
    pub fn events_stream_key(&self) -> String {
        if self.events_stream.is_empty() {
            format!("{}{}:events", self.key_prefix, Self::HASH_TAG)
        } else {
            self.events_stream.clone()
        }
    }

    /// The hash tag of partition `k`: `{pk}`.
    pub fn hash_tag(partition: usize) -> String {
        format!("{{p{partition}}}")
    }

    /// The event stream of partition `k`: partition 0's name with its `{p0}` as `{pk}`.
    pub fn partition_events_stream_key(&self, partition: usize) -> String {
        let first = self.events_stream_key();
        if partition == 0 {
            first
        } else {
            first.replacen(Self::HASH_TAG, &Self::hash_tag(partition), 1)
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub admin_keys: Vec<String>,
    pub partner_keys: Vec<PartnerKey>,
    pub jwt: JwtConfig,
}

/// Customer tokens (JWT, `sub` = customerId). HS256 with a shared secret (at least 32 bytes)
/// or RS256 with a public key (PEM); both may be set, each accepts only its own algorithm.
/// `exp` and `sub` are required, `nbf` is checked when present, `iss` and `aud` are required
/// and checked when configured. `partner_claim` names the claim that binds the token to one
/// partner's orders; a token without it reaches only orders without a partner. `Debug` never
/// shows the secret.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    pub hs256_secret: String,
    pub rs256_public_key_pem: String,
    pub issuer: String,
    pub audience: String,
    /// The claim holding the partnerId the customer belongs to (a string).
    pub partner_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(deserialize_with = "duration")]
    pub leeway: Duration,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            hs256_secret: String::new(),
            rs256_public_key_pem: String::new(),
            issuer: String::new(),
            audience: String::new(),
            partner_claim: "partner_id".into(),
            leeway: Duration::from_secs(30),
        }
    }
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field(
                "hs256_secret",
                &if self.hs256_secret.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field(
                "rs256_public_key_pem",
                &!self.rs256_public_key_pem.is_empty(),
            )
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("partner_claim", &self.partner_claim)
            .field("leeway", &self.leeway)
            .finish()
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerKey {
    pub key: String,
    pub partner_id: String,
    /// This key's own `[http] rate_limit_per_second` (0 = no limit); unset: the `[http]` one.
    #[serde(default)]
    pub rate_limit_per_second: Option<u32>,
    /// This key's own `[http] rate_limit_burst`; unset: the `[http]` one.
    #[serde(default)]
    pub rate_limit_burst: Option<u32>,
}

impl std::fmt::Debug for PartnerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys never reach logs, not even through a debug print of the config.
        f.debug_struct("PartnerKey")
            .field("key", &"<redacted>")
            .field("partner_id", &self.partner_id)
            .field("rate_limit_per_second", &self.rate_limit_per_second)
            .field("rate_limit_burst", &self.rate_limit_burst)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    #[serde(deserialize_with = "duration")]
    pub visibility_timeout: Duration,
    pub max_receives: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            visibility_timeout: Duration::from_secs(30),
            max_receives: 5,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    pub batch_size: usize,
    pub batches_in_flight: usize,
    /// How long a receive waits for work before it asks again.
    #[serde(deserialize_with = "duration")]
    pub receive_wait: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            batch_size: 10,
            batches_in_flight: 5,
            receive_wait: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkflowConfig {
    /// Currencies the worker accepts; an order in another currency is rejected.
    pub currencies: Vec<String>,
    /// The transition table: status -> statuses it may move to.
    pub transitions: BTreeMap<OrderStatus, Vec<OrderStatus>>,
    /// The steps: per status, the action run when an order enters it (`config/steps.rs`).
    /// None by default: the worker confirms or rejects a new order and every later move comes
    /// through the API.
    pub steps: BTreeMap<OrderStatus, StepConfig>,
    /// Step records each order keeps (the newest).
    pub step_history_limit: usize,
    /// Networks (CIDRs) a step's HTTP call may reach although the SSRF guard blocks them
    /// (private, loopback...): the services a workflow calls usually live there.
    pub allow_networks: Vec<String>,
    /// Signs callback task tokens (at least 32 bytes). Required with the Redis engine when a
    /// step is a callback (every node must verify the tokens of the others); the memory
    /// engine draws one at start-up when it is empty.
    pub task_token_secret: String,
    /// The largest part of a service's answer (or a callback's result) kept in the step
    /// history, in bytes; a longer JSON answer is kept as `{"truncated": true}`.
    pub max_response_bytes: usize,
}

impl Default for WorkflowConfig {
    fn default() -> Self {
        use OrderStatus::*;
        WorkflowConfig {
            currencies: ["USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD"]
                .map(String::from)
                .to_vec(),
            transitions: BTreeMap::from([
                (Accepted, vec![Confirmed, Rejected, Cancelled]),
                (Confirmed, vec![Preparing, Cancelled]),
                (Preparing, vec![Shipped, Cancelled]),
                (Shipped, vec![Delivered]),
            ]),
            steps: BTreeMap::new(),
            step_history_limit: 100,
            allow_networks: Vec::new(),
            task_token_secret: String::new(),
            max_response_bytes: 4096,
        }
    }
}

/// Lookups in the table only; what a move means (the API's refusal, the worker's decision)
/// is `crate::workflow`'s. They stay here so config validation needs nothing above `config`.
impl WorkflowConfig {
    pub fn allows(&self, from: OrderStatus, to: OrderStatus) -> bool {
        self.targets(from).contains(&to)
    }

    /// The statuses an order in `from` may move to, in the table's order.
    pub fn targets(&self, from: OrderStatus) -> &[OrderStatus] {
        self.transitions.get(&from).map_or(&[], Vec::as_slice)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How long an `Idempotency-Key` response is remembered.
    #[serde(deserialize_with = "duration")]
    pub idempotency_ttl: Duration,
    /// Serve `/metrics` without credentials (for scrapers on a trusted network).
    pub public_metrics: bool,
    /// How long shutdown waits for in-flight requests and batches.
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    // Per-credential rate limiting (README, "HTTP API"): a token bucket per API key or
    // customer-token subject, on each node.
    /// Requests per second each credential may sustain; 0 = no limit.
    pub rate_limit_per_second: u32,
    /// Requests a credential may send at once (the bucket's size); at least 1.
    pub rate_limit_burst: u32,
    /// Whether admin keys are limited too (they are the operator's own: off by default).
    pub rate_limit_admin: bool,
    /// Time allowed to receive a request's headers (from the first byte, or from the end of
    /// the previous response on a keep-alive connection); then the connection is closed.
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers) in bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// Time allowed to receive a request's whole body once its headers are in; then 408.
    #[serde(deserialize_with = "duration")]
    pub body_read_timeout: Duration,
    /// Deepest nesting of arrays and objects a JSON body may have (1 to 128); deeper gets 400.
    pub max_json_depth: usize,
    // Long-polls (`GET /v1/events?waitMs=`, README "HTTP API"): requests waiting for the log
    // to move, on this node. A request that does not wait is not one.
    /// Long-polls this node holds waiting at once; more get 503 with `Retry-After`.
    pub long_poll_max_waiting: usize,
    /// Long-polls one credential may hold waiting on this node at once; more get 429.
    pub long_poll_max_waiting_per_credential: usize,
    /// The longest a long-poll waits (`waitMs` of `GET /v1/events`, `Prefer: wait=` of
    /// `GET /v1/orders/{id}/status`); a longer ask waits this long.
    #[serde(deserialize_with = "duration")]
    pub long_poll_max_wait: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_bytes: 64 * 1024,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            public_metrics: false,
            shutdown_grace: Duration::from_secs(10),
            rate_limit_per_second: 1000,
            rate_limit_burst: 2000,
            rate_limit_admin: false,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_json_depth: 32,
            body_read_timeout: Duration::from_secs(30),
            long_poll_max_waiting: 1000,
            long_poll_max_waiting_per_credential: 50,
            long_poll_max_wait: Duration::from_secs(30),
        }
    }
}

/// The push hub, its WebSocket connections (DESIGN 1.4) and its Server-Sent Events streams.
/// Every limit answers with a documented error or close code (README, "Subscriptions" and
/// "Server-Sent Events").
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// WebSocket connections this node holds at once; more are refused with HTTP 503.
    pub max_connections: usize,
    /// Live subscriptions per connection.
    pub max_subscriptions_per_connection: usize,
    /// Largest message a client may send (bytes); larger closes with 1009.
    pub max_message_bytes: usize,
    /// Bytes queued towards one connection; a client that falls further behind is closed
    /// with 4008 (slow consumer) rather than buffered without bound.
    pub outbound_queue_bytes: usize,
    /// Subscribe messages per connection per second (burst of the same size).
    pub subscribe_rate: u32,
    /// graphql-transport-ws: time allowed between upgrade and `connection_init` (4408 after).
    #[serde(deserialize_with = "duration")]
    pub connection_init_timeout: Duration,
    /// How often the server keeps idle connections alive (`ka` / ping).
    #[serde(deserialize_with = "duration")]
    pub keepalive_interval: Duration,
    /// Orders a resync snapshot may hold (README "Resync"); a subscription or feed whose
    /// snapshot would hold more is refused (`SNAPSHOT_TOO_LARGE`, 413), never truncated.
    pub max_snapshot_orders: usize,
    /// The HMAC-SHA256 key of the stream tokens `POST /v1/stream-tokens` mints for
    /// `?token=`; empty: a random key per process (memory engine only: nodes on one Redis
    /// must accept each other's tokens).
    pub stream_token_secret: String,
    /// How long a stream token may be used to open a stream.
    #[serde(deserialize_with = "duration")]
    pub stream_token_ttl: Duration,
    /// How often a quiet SSE stream gets a `: ping` comment line.
    #[serde(deserialize_with = "duration")]
    pub sse_heartbeat_interval: Duration,
    /// The `retry:` hint sent once when an SSE stream opens (the client's reconnection delay).
    #[serde(deserialize_with = "duration")]
    pub sse_retry: Duration,
}

impl std::fmt::Debug for PushConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushConfig")
            .field("max_connections", &self.max_connections)
            .field(
                "max_subscriptions_per_connection",
                &self.max_subscriptions_per_connection,
            )
            .field("max_message_bytes", &self.max_message_bytes)
            .field("outbound_queue_bytes", &self.outbound_queue_bytes)
            .field("subscribe_rate", &self.subscribe_rate)
            .field("connection_init_timeout", &self.connection_init_timeout)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("max_snapshot_orders", &self.max_snapshot_orders)
            .field(
                "stream_token_secret",
                &if self.stream_token_secret.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("stream_token_ttl", &self.stream_token_ttl)
            .field("sse_heartbeat_interval", &self.sse_heartbeat_interval)
            .field("sse_retry", &self.sse_retry)
            .finish()
    }
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            max_connections: 10_000,
            max_subscriptions_per_connection: 100,
            max_message_bytes: 64 * 1024,
            outbound_queue_bytes: 1024 * 1024,
            subscribe_rate: 20,
            connection_init_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(60),
            max_snapshot_orders: 10_000,
            stream_token_secret: String::new(),
            stream_token_ttl: Duration::from_secs(60),
            sse_heartbeat_interval: Duration::from_secs(15),
            sse_retry: Duration::from_secs(3),
        }
    }
}

/// Bounds on one GraphQL document (subscriptions and `POST /graphql`); a document over any
/// of them is refused with a `LIMIT_EXCEEDED` GraphQL error before it is planned.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GraphqlConfig {
    /// Size of the query text in bytes.
    pub max_document_bytes: usize,
    /// Nesting of fields; root fields are at depth 1.
    pub max_depth: usize,
    /// Fields after fragment expansion (aliased and `@skip`ped ones included).
    pub max_fields: usize,
    /// Aliased fields after fragment expansion.
    pub max_aliases: usize,
}

impl Default for GraphqlConfig {
    fn default() -> Self {
        GraphqlConfig {
            max_document_bytes: 16 * 1024,
            max_depth: 8,
            max_fields: 100,
            max_aliases: 30,
        }
    }
}

/// Partner webhooks (DESIGN 1.5): the retry schedule, the HTTP client's limits and the
/// per-endpoint defaults. README, "Webhooks", explains each.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// CIDRs exempt from the SSRF guard (loopback, private, ... are refused otherwise).
    pub allow_networks: Vec<String>,
    /// When each attempt is due, counted from the previous one; the first is the immediate
    /// attempt. After the last, the delivery is failed (kept for manual retry).
    #[serde(deserialize_with = "durations")]
    pub retry_schedule: Vec<Duration>,
    /// Each retry interval is moved by up to this fraction either way.
    pub jitter: f64,
    /// One attempt, connect to the end of the response body.
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// An endpoint failing for this long without a success is disabled.
    #[serde(deserialize_with = "duration")]
    pub disable_after: Duration,
    /// Default per endpoint: attempts in flight at once (on one node).
    pub max_in_flight: u32,
    /// Default per endpoint: attempts started per second (on one node); 0 = no limit.
    pub rate_limit_per_second: u32,
    /// How long a node holds a delivery it claimed before another node may take it.
    #[serde(deserialize_with = "duration")]
    pub lease: Duration,
    /// The longest `Retry-After` honoured; a longer one is cut to this.
    #[serde(deserialize_with = "duration")]
    pub retry_after_max: Duration,
    /// After a claimed batch of events smaller than a full one (the dispatcher is caught up),
    /// how long it waits before claiming again, so that events arriving meanwhile are read,
    /// stored and acknowledged together instead of one engine round per event.
    #[serde(deserialize_with = "duration")]
    pub dispatch_linger: Duration,
    /// Dispatchers per node: each a consumer of its own in the dispatch group, so one's
    /// engine round overlaps another's work.
    pub dispatchers: usize,
    /// Endpoints one partner may have (admin-created ones for it count); creating one more
    /// answers 422 `endpoint-limit-reached`. Endpoints without a partner are not limited.
    pub max_endpoints_per_partner: u32,
    /// Delivery records (with their attempts) older than this, counted from their creation,
    /// are deleted by the retention sweep; a deleted endpoint's records go at its next round.
    #[serde(deserialize_with = "duration")]
    pub delivery_retention: Duration,
    /// How often each node running the webhooks role sweeps (short in tests).
    #[serde(deserialize_with = "duration")]
    pub delivery_sweep_interval: Duration,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        let h = |hours: u64| Duration::from_secs(hours * 3600);
        WebhooksConfig {
            allow_networks: Vec::new(),
            retry_schedule: vec![
                Duration::ZERO,
                Duration::from_secs(5),
                Duration::from_secs(5 * 60),
                Duration::from_secs(30 * 60),
                h(2),
                h(5),
                h(10),
                h(10),
            ],
            jitter: 0.2,
            request_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            disable_after: h(5 * 24),
            max_in_flight: 20,
            rate_limit_per_second: 0,
            lease: Duration::from_secs(60),
            retry_after_max: h(1),
            dispatch_linger: Duration::from_millis(2),
            dispatchers: 2,
            max_endpoints_per_partner: 20,
            delivery_retention: h(30 * 24),
            delivery_sweep_interval: Duration::from_secs(60),
        }
    }
}

/// Durations are written the human way: `"30s"`, `"5m"`, `"250ms"`.
pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("`{s}`: {e}")))
}

pub(super) fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("`{s}`: {e}")))
}

fn durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| {
            humantime::parse_duration(s)
                .map_err(|e| serde::de::Error::custom(format!("`{s}`: {e}")))
        })
        .collect()
}
