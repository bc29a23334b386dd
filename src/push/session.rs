//! The subscription core shared by both WebSocket protocols: a connection's subscriptions,
//! their limits (subscribe rate, count per connection, the document rules), authorization,
//! registration with the hub, `after` replays, stopping them, and ending one whose own
//! credential (AppSync's `extensions.authorization`) expires before the connection's.
//!
//! Protocol files (`transport_ws.rs`, `appsync.rs`) only translate messages; everything a
//! subscription means (authorization, the hub, `after` replays, limits) lives here. It never
//! imports a protocol file: it spells messages through the [`Dialect`] each subscription
//! was started with.

use super::PushState;
use super::conn::{ConnHandle, Out, payload_text};
use super::hub::Registration;
use crate::auth::{AuthError, Principal};
use crate::engine::{EngineError, EngineResult, EventLog, LogEntry};
use crate::graphql::{
    EventFilter, GraphqlError, GraphqlRequest, Operation, SubscriptionSpec, codes,
};
use crate::model::{EventId, LogCursor, LoggedEvent};
use crate::ratelimit::TokenBucket;
use crate::resync::{self, Covered, SnapshotError};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
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

    /// What follows [`Dialect::error`] when the server ends a live subscription on its own
    /// (its token expired), if the dialect's error does not end it by itself.
    fn end(&self, _id: &str) -> Option<String> {
        None
    }
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
        self.start_prepared(id, spec, principal, dialect);
        Ok(())
    }

    /// Starts a prepared subscription under `id` (unused: [`Session::subscribe`] checked it,
    /// an SSE stream has only one): authorization, registration and any replay run in a task
    /// of their own, which reports errors on the connection through `dialect`.
    pub fn start_prepared(
        &mut self,
        id: &str,
        spec: SubscriptionSpec,
        principal: Principal,
        dialect: &'static dyn Dialect,
    ) {
        // A credential of its own that expires before the connection's ends the subscription
        // then; one that does not is outlived by the connection's, which closes it (4403).
        let connection_expiry = self.principal.as_ref().and_then(Principal::expires_at);
        let expires_at = principal
            .expires_at()
            .filter(|at| connection_expiry.is_none_or(|conn| *at < conn));
        let slot = Arc::new(SubSlot::default());
        let task = tokio::spawn(run(
            Started {
                state: self.state.clone(),
                conn: self.conn.clone(),
                slot: slot.clone(),
                id: id.to_string(),
                dialect,
            },
            spec,
            principal,
            expires_at,
        ));
        self.subs.insert(
            id.to_string(),
            SubHandle {
                slot,
                task: task.abort_handle(),
            },
        );
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

/// The checks a subscription's start makes before it registers (authorization, narrowing
/// `filter`; the node following the log, waited for a few seconds after start-up; the cursor,
/// and that the log still holds what follows it), for a transport that
/// must refuse before it answers (SSE answers a refusal with an HTTP status, never an empty
/// stream). The start makes them again: the log may be trimmed in between.
pub async fn check_before_start(
    state: &PushState,
    principal: &Principal,
    filter: &mut EventFilter,
    after: Option<&str>,
    resync: bool,
) -> Result<(), GraphqlError> {
    authorize(state, principal, filter).await?;
    // A node that just started follows the log within moments: wait rather than refuse.
    if !state.hub.wait_started(Duration::from_secs(5)).await {
        return Err(GraphqlError::with_code(
            "This node is starting and not yet following the event log; retry.",
            "SERVICE_UNAVAILABLE",
        ));
    }
    if let Some(after) = after {
        let after = parse_after(after, state.node.engine.partitions())?;
        // With resync an expired cursor is no refusal: the start sends a snapshot instead.
        if !resync {
            check_retained(&*state.node.engine, &after).await?;
        }
    }
    Ok(())
}

/// Checks a subscription against its caller and narrows it to what the caller may see. A
/// partner's subscription is confined to its partnerId and a customer's to its customerId at
/// its own partner (or, for a token bound to no partner, to orders without one), besides any
/// argument, so even events written by other programs cannot leak.
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
        Principal::Customer {
            customer_id,
            partner_id,
            ..
        } => {
            if let Some(asked) = &filter.customer_id
                && asked != customer_id
            {
                return Err(refuse(format!(
                    "Not authorized to subscribe to customerId `{asked}`."
                )));
            }
            // The customer is one partner's (or no partner's): the same customerId at
            // another partner is someone else.
            if let Some(asked) = &filter.partner_id
                && Some(asked) != partner_id.as_ref()
            {
                return Err(refuse(format!(
                    "Not authorized to subscribe to partnerId `{asked}`."
                )));
            }
            filter.customer_id = Some(customer_id.clone());
            filter.partner_id = partner_id.clone();
            filter.partnerless = partner_id.is_none();
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

/// What a subscription's task holds besides its document and principal.
struct Started {
    state: Arc<PushState>,
    conn: Arc<ConnHandle>,
    slot: Arc<SubSlot>,
    id: String,
    dialect: &'static dyn Dialect,
}

/// A subscription's task: [`start`] it, then, when its credential expires at `expires_at`
/// (seconds since the epoch), end it with an error (and the dialect's end message), whether
/// it is live by then or still replaying.
async fn run(
    started: Started,
    spec: SubscriptionSpec,
    principal: Principal,
    expires_at: Option<u64>,
) {
    let Some(at) = expires_at else {
        return start(started, spec, principal).await;
    };
    let Started {
        state,
        conn,
        slot,
        id,
        dialect,
    } = started;
    let expiry = sleep_until_unix(Some(at));
    tokio::pin!(expiry);
    let starting = start(
        Started {
            state: state.clone(),
            conn: conn.clone(),
            slot: slot.clone(),
            id: id.clone(),
            dialect,
        },
        spec,
        principal,
    );
    tokio::select! {
        _ = starting => {
            if slot.ended.load(Ordering::Acquire) {
                return;
            }
            expiry.await;
        }
        _ = &mut expiry => {}
    }
    slot.ended.store(true, Ordering::Release);
    slot.stopped.store(true, Ordering::SeqCst);
    if slot.registered.load(Ordering::SeqCst) {
        state.hub.remove(slot.hub_id.load(Ordering::SeqCst));
    }
    state
        .metrics
        .subscriptions_expired
        .fetch_add(1, Ordering::Relaxed);
    let error = GraphqlError::with_code(
        "The token this subscription was started with expired; start it again with a fresh token (and `after` set to the last eventId received).",
        "UNAUTHENTICATED",
    );
    conn.push(Out::Text(dialect.error(&id, &[error])));
    if let Some(end) = dialect.end(&id) {
        conn.push(Out::Text(end));
    }
}

/// Sleeps until `at` (seconds since the Unix epoch); for ever when there is none.
pub async fn sleep_until_unix(at: Option<u64>) {
    let Some(at) = at else {
        return std::future::pending().await;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    tokio::time::sleep(Duration::from_secs(at).saturating_sub(now)).await;
}

/// The asynchronous part of a subscribe: authorize, register with the hub (queueing the ack
/// under the hub's lock), replay `after` the cursor, then go live.
async fn start(started: Started, spec: SubscriptionSpec, principal: Principal) {
    let Started {
        state,
        conn,
        slot,
        id,
        dialect,
    } = started;
    let fail = |errors: Vec<GraphqlError>| {
        slot.ended.store(true, Ordering::Release);
        conn.push(Out::Text(dialect.error(&id, &errors)));
    };
    let SubscriptionSpec {
        mut filter,
        after,
        resync,
        projection,
    } = spec;
    if let Err(e) = authorize(&state, &principal, &mut filter).await {
        state
            .metrics
            .subscriptions_refused
            .fetch_add(1, Ordering::Relaxed);
        return fail(vec![e]);
    }
    let partitions = state.node.engine.partitions();
    let after = match after
        .as_deref()
        .map(|text| parse_after(text, partitions))
        .transpose()
    {
        Ok(after) => after,
        Err(e) => return fail(vec![e]),
    };
    let prefix = dialect.next_prefix(&id);
    let registration = Registration {
        conn: conn.clone(),
        prefix: prefix.clone(),
        filter: filter.clone(),
        projection: projection.clone(),
        catching_up: after.is_some() || resync,
        after: after.clone(),
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
    // With `after`, the retained events in (after, position]; with `resync` and an expired
    // cursor (or none), a snapshot of the current statuses instead. Either way the held live
    // events follow, those the snapshot covered left out.
    let replayed = match &after {
        None if !resync => return,
        None => Ok(false),
        Some(after) => {
            match replay(
                &state,
                &conn,
                &filter,
                &projection,
                &prefix,
                after,
                &position,
            )
            .await
            {
                Ok(()) => Ok(true),
                Err(e) if resync && e.code() == Some(CURSOR_EXPIRED) => Ok(false),
                Err(e) => Err(e),
            }
        }
    };
    let covered = match replayed {
        Ok(true) => Ok(None),
        Ok(false) => send_snapshot(&state, &conn, &filter, &projection, &prefix, &position)
            .await
            .map(Some),
        Err(e) => Err(e),
    };
    match covered {
        Ok(covered) => {
            if !state.hub.go_live(hub_id, covered) {
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

/// The code of a cursor older than the retained log.
const CURSOR_EXPIRED: &str = "CURSOR_EXPIRED";

/// Sends the resync snapshot of the orders `filter` covers, taken after the subscription was
/// registered at `position` (each event's `eventId` is that position), paced by the
/// connection's queue; returns what it covered, for the hub to leave out of the live events.
async fn send_snapshot(
    state: &PushState,
    conn: &ConnHandle,
    filter: &EventFilter,
    projection: &crate::graphql::Projection,
    prefix: &Utf8Bytes,
    position: &LogCursor,
) -> Result<Covered, GraphqlError> {
    let engine = &*state.node.engine;
    let max = state.node.config.push.max_snapshot_orders;
    let (snapshot, until) = resync::take(engine, &resync::scope_of(filter), max, position)
        .await
        .map_err(|e| match e {
            SnapshotError::TooMany { .. } => {
                state
                    .metrics
                    .snapshots_refused
                    .fetch_add(1, Ordering::Relaxed);
                GraphqlError::with_code(format!("Resync refused: {e}."), "SNAPSHOT_TOO_LARGE")
            }
            SnapshotError::Engine(e) => unavailable(e),
        })?;
    state.metrics.snapshots_sent.fetch_add(1, Ordering::Relaxed);
    // Only what was sent covers live events: an order whose snapshot the filter left out
    // (a `type` filter without `order.snapshot`, say) keeps every live event it matches.
    let mut sent = Vec::with_capacity(snapshot.len());
    for event in snapshot {
        if !filter.matches(&event) {
            continue;
        }
        conn.wait_for_room().await;
        if conn.is_closed() {
            break;
        }
        conn.push(Out::Event {
            prefix: prefix.clone(),
            payload: payload_text(projection.render_event(&event)),
        });
        sent.push(event);
    }
    Ok(Covered::new(&sent, until))
}

/// The `after` argument as a cursor of a log of `partitions` partitions; `BAD_USER_INPUT`
/// when it is none (not an event id or token, or a token for another partition count).
fn parse_after(text: &str, partitions: usize) -> Result<LogCursor, GraphqlError> {
    LogCursor::parse(text, partitions).map_err(|e| {
        GraphqlError::with_code(format!("Argument `after`: {e}"), codes::BAD_USER_INPUT)
    })
}

/// Sends the retained events in `(after, position]` that match, paced by the connection's
/// queue. Refuses a cursor older than the retained log: events may have been trimmed.
async fn replay(
    state: &PushState,
    conn: &ConnHandle,
    filter: &EventFilter,
    projection: &crate::graphql::Projection,
    prefix: &Utf8Bytes,
    after: &LogCursor,
    position: &LogCursor,
) -> Result<(), GraphqlError> {
    if after.covers(position) {
        return Ok(());
    }
    let engine = &*state.node.engine;
    check_retained(engine, after).await?;
    let mut reader = ReplayReader::new(after.clone(), position.clone());
    while let Some(events) = reader.next_batch(engine).await.map_err(unavailable)? {
        for event in events {
            if !filter.matches(&event) {
                continue;
            }
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
    Ok(())
}

fn unavailable(e: EngineError) -> GraphqlError {
    tracing::warn!(error = %e, "replay: engine unavailable");
    GraphqlError::with_code(
        "The event log is unavailable; retry.",
        "SERVICE_UNAVAILABLE",
    )
}

/// `CURSOR_EXPIRED` when entries after `after` were removed before this client read them: a
/// gap to report, never to skip. The start asks for "the oldest retained", so it has nothing
/// to lose.
async fn check_retained<L: EventLog + ?Sized>(
    log: &L,
    after: &LogCursor,
) -> Result<(), GraphqlError> {
    if after.is_start() {
        return Ok(());
    }
    let removed = log.removed_after(after).await.map_err(unavailable)?;
    let Some(&(partition, _)) = removed.first() else {
        return Ok(());
    };
    let first = log
        .first_event_id(partition)
        .await
        .map_err(unavailable)?
        .map_or_else(|| "none".to_string(), |f| f.to_string());
    let oldest = if after.partitions() > 1 {
        format!("oldest retained in partition {partition}: {first}")
    } else {
        format!("oldest retained: {first}")
    };
    Err(GraphqlError::with_code(
        format!(
            "Cursor `{after}` is older than the retained event log ({oldest}); events after it may be gone. Resubscribe without `after` and reload state from GET /v1/orders/{{id}}."
        ),
        CURSOR_EXPIRED,
    ))
}

/// Entries read per replay step.
const REPLAY_BATCH: usize = 256;

/// A read position past every entry: how a replay stops reading a partition it is done with.
const PAST_EVERY_ENTRY: EventId = EventId {
    ms: u64::MAX,
    seq: u64::MAX,
};

/// Reads the retained events in `(after, position]`, partition by partition, oldest first.
///
/// An entry beyond its partition's `position` is not sent and does not advance that partition
/// (the subscription gets it live); the partition is then done, and later reads skip it (read
/// from [`PAST_EVERY_ENTRY`]), so entries of partitions whose clocks run behind cannot crowd
/// out the ones still to replay elsewhere. Done when every partition reached its position, or
/// a read comes back empty.
pub(crate) struct ReplayReader {
    /// Through where the replay has read, per partition: what each event's cursor shows.
    cursor: LogCursor,
    position: LogCursor,
    done: Vec<bool>,
}

impl ReplayReader {
    pub(crate) fn new(after: LogCursor, position: LogCursor) -> ReplayReader {
        let done = (0..after.partitions())
            .map(|p| after.get(p) >= position.get(p))
            .collect();
        ReplayReader {
            cursor: after,
            position,
            done,
        }
    }

    /// The next events to replay, in log order, each with the replay's cursor after it when
    /// there are several partitions; `None` once the replay is done.
    pub(crate) async fn next_batch<L: EventLog + ?Sized>(
        &mut self,
        log: &L,
    ) -> EngineResult<Option<Vec<LoggedEvent>>> {
        let tokens = self.cursor.partitions() > 1;
        loop {
            if self.done.iter().all(|d| *d) {
                return Ok(None);
            }
            let read_from = LogCursor::from_positions(
                self.done
                    .iter()
                    .enumerate()
                    .map(|(p, done)| {
                        if *done {
                            PAST_EVERY_ENTRY
                        } else {
                            self.cursor.get(p)
                        }
                    })
                    .collect(),
            );
            let entries = log
                .read_events(&read_from, REPLAY_BATCH, Duration::ZERO)
                .await?;
            if entries.is_empty() {
                return Ok(None);
            }
            let mut progressed = false;
            let mut events = Vec::new();
            for entry in entries {
                let partition = entry.partition();
                let Ok(id) = entry.id() else { continue };
                if self.done.get(partition).is_none_or(|done| *done) {
                    continue;
                }
                progressed = true;
                let through = self.position.get(partition);
                if id > through {
                    self.done[partition] = true;
                    continue;
                }
                self.cursor.advance(partition, id);
                if id >= through {
                    self.done[partition] = true;
                }
                if let LogEntry::Event(mut event) = entry {
                    if tokens {
                        event.cursor = Some(self.cursor.to_string());
                    }
                    events.push(event);
                }
            }
            if !events.is_empty() {
                return Ok(Some(events));
            }
            if !progressed {
                // Nothing this replay can use came back (never expected of an engine): stop
                // rather than ask the same again.
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{PartitionedLog, event_json, order_in};

    fn id(ms: u64) -> EventId {
        EventId { ms, seq: 0 }
    }

    async fn replay_all(
        log: &PartitionedLog,
        after: &LogCursor,
        position: &LogCursor,
    ) -> Vec<LoggedEvent> {
        let mut reader = ReplayReader::new(after.clone(), position.clone());
        let mut all = Vec::new();
        while let Some(events) = reader.next_batch(log).await.unwrap() {
            all.extend(events);
        }
        all
    }

    fn names(events: &[LoggedEvent]) -> Vec<String> {
        events.iter().map(LoggedEvent::qualified_id).collect()
    }

    #[tokio::test]
    async fn replay_sends_after_through_position_in_every_partition_with_resumable_ids() {
        let log = PartitionedLog::new(3);
        for ms in 1..=9 {
            let p = (ms % 3) as usize;
            log.append_at(p, id(ms), &event_json(&order_in(p, 3, 0), ms));
        }
        // The client had 1..=3; the hub's position is 7 in partitions 0 and 1, 5 in 2.
        let after = LogCursor::uniform(3, id(3));
        let position = LogCursor::from_positions(vec![id(6), id(7), id(5)]);
        let replayed = replay_all(&log, &after, &position).await;
        assert_eq!(names(&replayed), ["1/4-0", "2/5-0", "6-0", "1/7-0"]);
        // Each shows the replay's cursor after it: resuming from it replays exactly the rest.
        for (k, event) in replayed.iter().enumerate() {
            let resume = LogCursor::parse(event.shown_id(), 3).unwrap();
            let rest = replay_all(&log, &resume, &position).await;
            assert_eq!(names(&rest), names(&replayed[k + 1..]));
        }
    }

    #[tokio::test]
    async fn entries_beyond_one_partitions_position_hold_back_no_other_partition() {
        let log = PartitionedLog::new(2);
        // Partition 0's clock runs behind: more than a read of its entries came after the
        // position, yet with ids older than partition 1's entries still to replay.
        log.append_at(0, id(1), &event_json(&order_in(0, 2, 0), 1));
        for ms in 2..(REPLAY_BATCH as u64 + 50) {
            log.append_at(0, id(ms), &event_json(&order_in(0, 2, 0), ms));
        }
        for ms in 1000..1003 {
            log.append_at(1, id(ms), &event_json(&order_in(1, 2, 0), ms));
        }
        let position = LogCursor::from_positions(vec![id(1), id(1002)]);
        let replayed = replay_all(&log, &LogCursor::start(2), &position).await;
        assert_eq!(
            names(&replayed),
            ["1-0", "1/1000-0", "1/1001-0", "1/1002-0"]
        );
    }

    #[tokio::test]
    async fn with_one_partition_replayed_events_show_their_entry_ids() {
        let log = PartitionedLog::new(1);
        for ms in 1..=4 {
            log.append_at(0, id(ms), &event_json("o-1", ms));
        }
        let replayed = replay_all(
            &log,
            &LogCursor::uniform(1, id(1)),
            &LogCursor::uniform(1, id(3)),
        )
        .await;
        let shown: Vec<&str> = replayed.iter().map(LoggedEvent::shown_id).collect();
        assert_eq!(shown, ["2-0", "3-0"]);
    }

    #[test]
    fn an_after_that_is_no_cursor_of_this_log_is_bad_user_input() {
        let token = LogCursor::uniform(4, id(7)).to_string();
        let error = parse_after(&token, 3).unwrap_err();
        assert_eq!(error.code(), Some(codes::BAD_USER_INPUT));
        assert!(
            error.message.contains("made for 4 partitions"),
            "{}",
            error.message
        );
        assert!(
            error.message.contains("this log has 3. Start again"),
            "{}",
            error.message
        );
        let error = parse_after("yesterday", 1).unwrap_err();
        assert_eq!(error.code(), Some(codes::BAD_USER_INPUT));
        assert!(
            error.message.starts_with("Argument `after`: "),
            "{}",
            error.message
        );
        // A plain id is that position in every partition.
        assert_eq!(parse_after("7-0", 3).unwrap(), LogCursor::uniform(3, id(7)));
        assert_eq!(
            parse_after(&token, 4).unwrap(),
            LogCursor::uniform(4, id(7))
        );
    }

    #[tokio::test]
    async fn a_cursor_behind_a_trimmed_partition_is_expired_with_that_partitions_oldest() {
        let log = PartitionedLog::new(3);
        for ms in 1..=6 {
            log.append_at(1, id(ms), &event_json(&order_in(1, 3, 0), ms));
        }
        log.trim(1, 2);
        let after = LogCursor::uniform(3, id(2));
        let error = check_retained(&log, &after).await.unwrap_err();
        assert_eq!(error.code(), Some("CURSOR_EXPIRED"));
        assert!(
            error.message.contains(&after.to_string()),
            "{}",
            error.message
        );
        assert!(
            error
                .message
                .contains("oldest retained in partition 1: 5-0"),
            "{}",
            error.message
        );
        // The start has nothing to lose; a cursor past the trimmed entries lost nothing.
        assert!(check_retained(&log, &LogCursor::start(3)).await.is_ok());
        assert!(
            check_retained(&log, &LogCursor::uniform(3, id(4)))
                .await
                .is_ok()
        );
    }
}
