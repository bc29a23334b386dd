//! The subscription core shared by both WebSocket protocols: a connection's subscriptions,
//! their limits (subscribe rate, count per connection, the document rules), authorization,
//! registration with the hub, `after` replays, and stopping them.
//!
//! Protocol files (`transport_ws.rs`, `appsync.rs`) only translate messages; everything a
//! subscription means (authorization, the hub, `after` replays, limits) lives here. It never
//! imports a protocol file: it spells messages through the [`Dialect`] each subscription
//! was started with.

use super::PushState;
use super::conn::{ConnHandle, Out, payload_text};
use super::hub::Registration;
use crate::auth::{AuthError, Principal};
use crate::engine::LogEntry;
use crate::graphql::{EventFilter, GraphqlError, GraphqlRequest, Operation, SubscriptionSpec};
use crate::model::EventId;
use crate::ratelimit::TokenBucket;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// How one subscription's messages are spelled: the core calls it when a subscription goes
/// live, for each event and when the subscription fails. Dialects hold nothing, so a
/// subscription keeps a `&'static` one (its start task outlives the message that started it).
pub trait Dialect: Send + Sync {
    /// An event message up to its payload (`{"id":…,"type":"next","payload":`): the hub
    /// splices the shared payload and the closing `}` after it.
    fn next_prefix(&self, id: &str) -> Utf8Bytes;

    /// The acknowledgement queued once the subscription is live, if the dialect has one.
    fn ack(&self, id: &str) -> Option<String>;

    /// The message that ends a subscription with errors.
    fn error(&self, id: &str, errors: &[GraphqlError]) -> String;
}

/// A subscription started on this connection: its hub id once registered, whether it ended.
#[derive(Default)]
pub struct SubSlot {
    hub_id: AtomicU64,
    registered: AtomicBool,
    stopped: AtomicBool,
    pub ended: AtomicBool,
}

struct SubHandle {
    slot: Arc<SubSlot>,
    task: tokio::task::AbortHandle,
}

/// Why a subscribe was refused before it started.
pub enum Refusal {
    /// The id is in use (`graphql-transport-ws` closes the connection for it).
    DuplicateId,
    Errors(Vec<GraphqlError>),
}

pub struct Session {
    pub state: Arc<PushState>,
    pub conn: Arc<ConnHandle>,
    /// Who the connection authenticated as (headers, query parameter or connection_init).
    pub principal: Option<Principal>,
    pub acked: bool,
    pub inits: u32,
    subs: HashMap<String, SubHandle>,
    /// `push.subscribe_rate` per second, a burst of the same size.
    subscribes: TokenBucket,
}

impl Session {
    /// A fresh session on `conn`: not acknowledged, no subscription, a full subscribe budget.
    /// `principal` is who the handshake authenticated, if anyone.
    pub fn new(
        state: Arc<PushState>,
        conn: Arc<ConnHandle>,
        principal: Option<Principal>,
    ) -> Session {
        let rate = state.node.config.push.subscribe_rate;
        Session {
            state,
            conn,
            principal,
            acked: false,
            inits: 0,
            subs: HashMap::new(),
            subscribes: TokenBucket::new(rate, rate, Instant::now()),
        }
    }

    pub fn send(&self, text: String) {
        self.conn.push(Out::Text(text));
    }

    pub fn authenticate(&self, credential: &str) -> Result<Principal, AuthError> {
        self.state.node.keys.authenticate(credential)
    }

    fn take_token(&mut self) -> bool {
        self.subscribes.try_take(Instant::now()).is_ok()
    }

    /// Starts a subscription. Checks that need no I/O happen here (id, rate, count, the
    /// document); authorization against the status store, registration and any replay run
    /// in a task of their own, which reports errors on the connection.
    pub fn subscribe(
        &mut self,
        id: &str,
        request: &GraphqlRequest,
        principal: Principal,
        dialect: &'static dyn Dialect,
    ) -> Result<(), Refusal> {
        self.subs
            .retain(|_, handle| !handle.slot.ended.load(Ordering::Acquire));
        if self.subs.contains_key(id) {
            return Err(Refusal::DuplicateId);
        }
        let state = self.state.clone();
        let metrics = &state.metrics;
        if !self.take_token() {
            metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Errors(vec![GraphqlError::with_code(
                format!(
                    "Too many subscribe messages: at most {} per second per connection (push.subscribe_rate).",
                    self.state.node.config.push.subscribe_rate
                ),
                "RATE_LIMITED",
            )]));
        }
        let max = self.state.node.config.push.max_subscriptions_per_connection;
        if self.subs.len() >= max {
            metrics.subscription_limit.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Errors(vec![GraphqlError::with_code(
                format!(
                    "Too many subscriptions on this connection: at most {max} (push.max_subscriptions_per_connection)."
                ),
                "LIMIT_EXCEEDED",
            )]));
        }
        let spec = match self.state.schema.prepare(request, &self.state.limits) {
            Ok(Operation::Subscription(spec)) => spec,
            Ok(Operation::Query(_)) => {
                return Err(Refusal::Errors(vec![GraphqlError::with_code(
                    "Only subscriptions are served over WebSocket; send queries to POST /graphql.",
                    "BAD_REQUEST",
                )]));
            }
            Err(errors) => {
                metrics.invalid_documents.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::Errors(errors));
            }
        };
        let slot = Arc::new(SubSlot::default());
        let task = tokio::spawn(start(
            self.state.clone(),
            self.conn.clone(),
            slot.clone(),
            id.to_string(),
            spec,
            principal,
            dialect,
        ));
        self.subs.insert(
            id.to_string(),
            SubHandle {
                slot,
                task: task.abort_handle(),
            },
        );
        Ok(())
    }

    /// Stops a subscription (client `complete`/`stop`). Unknown ids are ignored, as the
    /// protocols ask.
    pub fn unsubscribe(&mut self, id: &str) -> bool {
        match self.subs.remove(id) {
            Some(handle) => {
                self.end(handle);
                true
            }
            None => false,
        }
    }

    fn end(&self, handle: SubHandle) {
        handle.task.abort();
        handle.slot.stopped.store(true, Ordering::SeqCst);
        if handle.slot.registered.load(Ordering::SeqCst) {
            self.state
                .hub
                .remove(handle.slot.hub_id.load(Ordering::SeqCst));
        }
    }

    /// Stops every subscription of the connection (it is closing).
    pub fn end_all(&mut self) {
        for (_, handle) in std::mem::take(&mut self.subs) {
            self.end(handle);
        }
    }
}

/// Checks a subscription against its caller and narrows it to what the caller may see. A
/// partner's subscription is confined to its partnerId and a customer's to its customerId
/// (besides any argument), so even events written by other programs cannot leak.
async fn authorize(
    state: &PushState,
    principal: &Principal,
    filter: &mut EventFilter,
) -> Result<(), GraphqlError> {
    let refuse = |what: String| GraphqlError::with_code(what, "FORBIDDEN");
    match principal {
        Principal::Admin => return Ok(()),
        Principal::Partner { partner_id } => {
            if let Some(asked) = &filter.partner_id
                && asked != partner_id
            {
                return Err(refuse(format!(
                    "Not authorized to subscribe to partnerId `{asked}`."
                )));
            }
            filter.partner_id = Some(partner_id.clone());
        }
        Principal::Customer { customer_id, .. } => {
            if let Some(asked) = &filter.customer_id
                && asked != customer_id
            {
                return Err(refuse(format!(
                    "Not authorized to subscribe to customerId `{asked}`."
                )));
            }
            filter.customer_id = Some(customer_id.clone());
        }
    }
    if let Some(order_id) = &filter.order_id {
        let status = state
            .node
            .engine
            .order_status(order_id)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "subscription authorization: engine unavailable");
                GraphqlError::with_code(
                    "The status store is unavailable; retry.",
                    "SERVICE_UNAVAILABLE",
                )
            })?;
        let allowed = status
            .is_some_and(|s| principal.may_access_order(s.partner_id.as_deref(), &s.customer_id));
        if !allowed {
            // The same answer whether the order is missing or someone else's.
            return Err(refuse(format!(
                "Not authorized to subscribe to orderId `{order_id}`."
            )));
        }
    }
    Ok(())
}

/// The asynchronous part of a subscribe: authorize, register with the hub (queueing the ack
/// under the hub's lock), replay `after` the cursor, then go live.
async fn start(
    state: Arc<PushState>,
    conn: Arc<ConnHandle>,
    slot: Arc<SubSlot>,
    id: String,
    spec: SubscriptionSpec,
    principal: Principal,
    dialect: &'static dyn Dialect,
) {
    let fail = |errors: Vec<GraphqlError>| {
        slot.ended.store(true, Ordering::Release);
        conn.push(Out::Text(dialect.error(&id, &errors)));
    };
    let SubscriptionSpec {
        mut filter,
        after,
        projection,
    } = spec;
    if let Err(e) = authorize(&state, &principal, &mut filter).await {
        state
            .metrics
            .subscriptions_refused
            .fetch_add(1, Ordering::Relaxed);
        return fail(vec![e]);
    }
    let after = match after.as_deref().map(str::parse::<EventId>).transpose() {
        Ok(after) => after,
        Err(e) => {
            return fail(vec![GraphqlError::with_code(
                format!("Argument `after`: {e}"),
                "BAD_USER_INPUT",
            )]);
        }
    };
    let prefix = dialect.next_prefix(&id);
    let registration = Registration {
        conn: conn.clone(),
        prefix: prefix.clone(),
        filter: filter.clone(),
        projection: projection.clone(),
        catching_up: after.is_some(),
        after,
    };
    let ack = dialect.ack(&id).map(Out::Text);
    let Some((hub_id, position)) = state.hub.register(registration, ack) else {
        return fail(vec![GraphqlError::with_code(
            "This node is starting and not yet following the event log; retry.",
            "SERVICE_UNAVAILABLE",
        )]);
    };
    slot.hub_id.store(hub_id, Ordering::SeqCst);
    slot.registered.store(true, Ordering::SeqCst);
    if slot.stopped.load(Ordering::SeqCst) {
        state.hub.remove(hub_id);
        return;
    }
    state
        .metrics
        .subscriptions_started
        .fetch_add(1, Ordering::Relaxed);
    let Some(after) = after else { return };
    match replay(
        &state,
        &conn,
        &filter,
        &projection,
        &prefix,
        after,
        position,
    )
    .await
    {
        Ok(()) => {
            if !state.hub.go_live(hub_id) {
                state.hub.remove(hub_id);
                fail(vec![GraphqlError::with_code(
                    "The subscription fell too far behind while replaying; resubscribe with `after` set to the last eventId received.",
                    "REPLAY_OVERFLOW",
                )]);
            }
        }
        Err(e) => {
            state.hub.remove(hub_id);
            fail(vec![e]);
        }
    }
}

/// Sends the retained events in `(after, position]` that match, paced by the connection's
/// queue. Refuses a cursor older than the retained log: events may have been trimmed.
async fn replay(
    state: &PushState,
    conn: &ConnHandle,
    filter: &EventFilter,
    projection: &crate::graphql::Projection,
    prefix: &Utf8Bytes,
    after: EventId,
    position: EventId,
) -> Result<(), GraphqlError> {
    if after >= position {
        return Ok(());
    }
    let unavailable = |e: crate::engine::EngineError| {
        tracing::warn!(error = %e, "replay: engine unavailable");
        GraphqlError::with_code(
            "The event log is unavailable; retry.",
            "SERVICE_UNAVAILABLE",
        )
    };
    let engine = &state.node.engine;
    // Entries after the cursor were removed before this client read them: a gap to report,
    // never to skip. `ZERO` asks for "the oldest retained", so it has nothing to lose.
    let removed = engine.removed_after(after).await.map_err(unavailable)?;
    if after != EventId::ZERO && removed.is_some() {
        let first = engine.first_event_id().await.map_err(unavailable)?;
        return Err(GraphqlError::with_code(
            format!(
                "Cursor `{after}` is older than the retained event log (oldest retained: {}); events after it may be gone. Resubscribe without `after` and reload state from GET /v1/orders/{{id}}.",
                first.map_or_else(|| "none".to_string(), |f| f.to_string())
            ),
            "CURSOR_EXPIRED",
        ));
    }
    let mut cursor = after;
    loop {
        let entries = engine
            .read_events(cursor, 256, Duration::ZERO)
            .await
            .map_err(unavailable)?;
        if entries.is_empty() {
            return Ok(());
        }
        for entry in entries {
            let Ok(entry_id) = entry.id() else { continue };
            if entry_id > position {
                return Ok(());
            }
            cursor = entry_id;
            if let LogEntry::Event(event) = entry
                && filter.matches(&event)
            {
                conn.wait_for_room().await;
                if conn.is_closed() {
                    return Ok(());
                }
                conn.push(Out::Event {
                    prefix: prefix.clone(),
                    payload: payload_text(projection.render_event(&event)),
                });
            }
        }
        if cursor >= position {
            return Ok(());
        }
    }
}
