//! The push hub: this node's in-memory index of live subscriptions, fed in log order by the
//! event tail.
//!
//! Subscribers are found through an index on the filter's most selective key (orderId, else
//! customerId, else partnerId, else "all"), so an event costs the subscribers that may want
//! it, not a scan of every connection. Each event is rendered once per distinct selection set
//! (projections are interned by their canonical key) and the payload bytes are shared by
//! every subscriber; only the thin protocol envelope (`{"id":..,"type":"next","payload":`) is
//! per subscription, and it is spliced in by the connection's writer.
//!
//! Ordering and the no-gap guarantee: the hub records the log position it has dispatched
//! through (`position`, a [`LogCursor`]: one entry id per partition). A subscription
//! registered under the index lock receives every event after that position, so anything
//! appended after its acknowledgement reaches it. A subscription resuming `after` a cursor
//! starts in the catching-up state: live events are held (bounded) while the retained events
//! in `(after, position]` are replayed from the engine, partition by partition, then the held
//! ones follow, so there is neither a gap nor a duplicate at the switch. Held events are
//! charged to their connection's outbound byte bound ([`ConnHandle::hold`]): a client that
//! stops reading during a replay is closed as a slow consumer (4008) instead of making the
//! hold grow.

use super::conn::{ConnHandle, Out, payload_text};
use crate::graphql::{EventFilter, IndexKey, Projection};
use crate::model::{EventId, LogCursor, LoggedEvent};
use crate::resync::Covered;
use crate::tail::EventSink;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Live events held per catching-up subscription before it is refused as too far behind
/// (besides the byte bound every held event is charged to).
pub const CATCH_UP_HOLD: usize = 10_000;

pub type SubId = u64;

struct Sub {
    conn: Arc<ConnHandle>,
    /// The protocol envelope up to the payload, e.g. `{"id":"1","type":"next","payload":`.
    prefix: Utf8Bytes,
    filter: EventFilter,
    key: IndexKey,
    projection: Arc<Projection>,
    /// `Some` while replaying: live events held until the replay is done.
    held: Option<Vec<Held>>,
    /// Bytes of `held`, charged to the connection until queued or dropped.
    held_bytes: usize,
    /// Set when the hold overflowed (its events are dropped); the replay task reports it.
    overflowed: bool,
    /// Events up to here (in their partition) are not delivered live (they were replayed, or
    /// the client has them).
    floor: Option<LogCursor>,
    /// After a resync snapshot: the versions it showed, not delivered again live.
    covered: Option<Covered>,
}

/// A live event held for a subscription still catching up, with what a resync snapshot
/// needs to tell whether it already showed it.
struct Held {
    order_id: String,
    version: u64,
    out: Out,
}

#[derive(Default)]
struct Index {
    /// `None` until the tail has started: no subscription can be live before that.
    position: Option<LogCursor>,
    next_id: SubId,
    subs: HashMap<SubId, Sub>,
    by_key: HashMap<IndexKey, Vec<SubId>>,
    projections: HashMap<String, Arc<Projection>>,
}

#[derive(Default)]
pub struct HubStats {
    pub events_dispatched: AtomicU64,
    pub deliveries: AtomicU64,
    pub renders: AtomicU64,
    /// Connections closed with 4008 for a full queue (counted by their socket loop).
    pub slow_consumers: AtomicU64,
    /// Live events held for replaying subscriptions right now (a gauge).
    pub held_events: AtomicU64,
}

pub struct Hub {
    index: Mutex<Index>,
    pub stats: HubStats,
    /// Woken when the tail starts (the hub has a position: subscriptions can go live).
    started: tokio::sync::Notify,
}

/// What a new subscription needs from the hub.
pub struct Registration {
    pub conn: Arc<ConnHandle>,
    pub prefix: Utf8Bytes,
    pub filter: EventFilter,
    pub projection: Arc<Projection>,
    /// Hold live events (a replay follows) instead of delivering them at once.
    pub catching_up: bool,
    /// The client's cursor: live events at or before it (in their partition) are skipped (a
    /// cursor from another node may be ahead of this node's position).
    pub after: Option<LogCursor>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

impl Hub {
    pub fn new() -> Hub {
        Hub {
            index: Mutex::new(Index::default()),
            stats: HubStats::default(),
            started: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a subscription and, under the same lock, queues `first` (an acknowledgement)
    /// on its connection, so no event can overtake it. Returns the id and the position the
    /// subscription is live from: every event after it is delivered (or held). `None` while
    /// the tail has not started (the node is still starting).
    pub fn register(&self, reg: Registration, first: Option<Out>) -> Option<(SubId, LogCursor)> {
        let mut index = self.lock();
        let position = index.position.clone()?;
        let id = index.next_id;
        index.next_id += 1;
        let projection = index
            .projections
            .entry(reg.projection.key().to_string())
            .or_insert(reg.projection)
            .clone();
        let key = reg.filter.index_key();
        index.by_key.entry(key.clone()).or_default().push(id);
        if let Some(first) = first {
            reg.conn.push(first);
        }
        index.subs.insert(
            id,
            Sub {
                conn: reg.conn,
                prefix: reg.prefix,
                filter: reg.filter,
                key,
                projection,
                held: reg.catching_up.then(Vec::new),
                held_bytes: 0,
                overflowed: false,
                floor: reg.after,
                covered: None,
            },
        );
        Some((id, position))
    }

    /// Waits at most `limit` for the tail to start (a node that just started); whether it
    /// has, i.e. whether a subscription can register now.
    pub async fn wait_started(&self, limit: std::time::Duration) -> bool {
        let wait = async {
            loop {
                let started = self.started.notified();
                tokio::pin!(started);
                started.as_mut().enable();
                if self.lock().position.is_some() {
                    return;
                }
                started.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }

    /// Ends a catching-up phase: the held live events are queued after the replayed ones and
    /// the subscription is live. `false` when it fell too far behind while replaying.
    /// After a resync snapshot, live events `covered` by it (an order's version at most the
    /// snapshot's), held or still to come, are not delivered.
    pub fn go_live(&self, id: SubId, covered: Option<Covered>) -> bool {
        let mut index = self.lock();
        let Some(sub) = index.subs.get_mut(&id) else {
            return false;
        };
        if sub.overflowed {
            return false;
        }
        if let Some(held) = sub.held.take() {
            // The charge moves from the hold to the queue.
            sub.conn.release_held(std::mem::take(&mut sub.held_bytes));
            self.stats
                .held_events
                .fetch_sub(held.len() as u64, Ordering::Relaxed);
            for held in held {
                let shown = covered
                    .as_ref()
                    .is_some_and(|c| c.covers_version(&held.order_id, held.version));
                if !shown {
                    sub.conn.push(held.out);
                }
            }
        }
        sub.covered = covered;
        true
    }

    /// Drops what `sub` holds and gives its charge back to the connection.
    fn drop_held(stats: &HubStats, sub: &mut Sub) {
        if let Some(held) = &mut sub.held {
            stats
                .held_events
                .fetch_sub(held.len() as u64, Ordering::Relaxed);
            held.clear();
            held.shrink_to_fit();
        }
        sub.conn.release_held(std::mem::take(&mut sub.held_bytes));
    }

    /// Removes a subscription (stop/complete, connection closed). Idempotent.
    pub fn remove(&self, id: SubId) {
        let mut index = self.lock();
        let Some(mut sub) = index.subs.remove(&id) else {
            return;
        };
        Self::drop_held(&self.stats, &mut sub);
        if let Some(ids) = index.by_key.get_mut(&sub.key) {
            if let Some(pos) = ids.iter().position(|x| *x == id) {
                ids.swap_remove(pos);
            }
            if ids.is_empty() {
                index.by_key.remove(&sub.key);
            }
        }
        let key = sub.projection.key().to_string();
        drop(sub);
        // Interned projections live as long as a subscription uses them.
        if index
            .projections
            .get(&key)
            .is_some_and(|p| Arc::strong_count(p) == 1)
        {
            index.projections.remove(&key);
        }
    }

    /// Delivers one event to every matching subscription. Called by the tail, in log order.
    pub fn dispatch(&self, event: &LoggedEvent) {
        let id = event.event_id.parse::<EventId>().ok();
        let event_id = id.unwrap_or(EventId::ZERO);
        let partition = event.partition;
        let mut index = self.lock();
        if let (Some(id), Some(position)) = (id, &mut index.position) {
            if id <= position.get(partition) {
                return; // already dispatched (a tail restarted from an older cursor)
            }
            position.advance(partition, id);
        }
        self.stats.events_dispatched.fetch_add(1, Ordering::Relaxed);
        if index.subs.is_empty() {
            return;
        }
        let e = &event.event;
        let keys = [
            Some(IndexKey::Order(e.order_id.clone())),
            Some(IndexKey::Customer(e.customer_id.clone())),
            e.partner_id.clone().map(IndexKey::Partner),
            Some(IndexKey::All),
        ];
        // One rendering per distinct (interned) projection for this event.
        let mut rendered: Vec<(*const Projection, Utf8Bytes)> = Vec::new();
        let mut deliveries = 0u64;
        let Index {
            subs,
            by_key,
            position,
            ..
        } = &mut *index;
        let position = position.as_ref();
        for key in keys.iter().flatten() {
            let Some(ids) = by_key.get(key) else { continue };
            for sub_id in ids {
                let Some(sub) = subs.get_mut(sub_id) else {
                    continue;
                };
                if sub.conn.is_closed()
                    || sub.overflowed
                    || sub
                        .floor
                        .as_ref()
                        .is_some_and(|floor| event_id <= floor.get(partition))
                    || !sub.filter.matches(event)
                {
                    continue;
                }
                if let Some(covered) = &sub.covered {
                    if covered.covers(e) {
                        continue;
                    }
                    // Past the snapshot's end nothing more can be covered.
                    if position.is_some_and(|p| covered.is_behind(p)) {
                        sub.covered = None;
                    }
                }
                // A subscription resumed from a cursor ahead of this node in some partition
                // (it came from a node further along) has seen more there than this event's
                // cursor says: shown as is, a later resume from it would replay that again.
                // Until the node catches up, its events show the cursor merged with the
                // subscription's floor, rendered for it alone; once caught up, the floor
                // has nothing more to hide and is dropped.
                let own_cursor = match (&sub.floor, position) {
                    (Some(floor), Some(position)) if position.covers(floor) => {
                        sub.floor = None;
                        None
                    }
                    (Some(floor), Some(position)) if event.cursor.is_some() => {
                        let mut merged = position.clone();
                        for (k, at) in floor.positions().iter().enumerate() {
                            merged.advance(k, *at);
                        }
                        Some(merged.to_string())
                    }
                    _ => None,
                };
                let payload = match own_cursor {
                    Some(cursor) => {
                        let mut own = event.clone();
                        own.cursor = Some(cursor);
                        self.stats.renders.fetch_add(1, Ordering::Relaxed);
                        payload_text(sub.projection.render_event(&own))
                    }
                    None => {
                        let ptr = Arc::as_ptr(&sub.projection);
                        match rendered.iter().find(|(p, _)| *p == ptr) {
                            Some((_, bytes)) => bytes.clone(),
                            None => {
                                let bytes = payload_text(sub.projection.render_event(event));
                                self.stats.renders.fetch_add(1, Ordering::Relaxed);
                                rendered.push((ptr, bytes.clone()));
                                bytes
                            }
                        }
                    }
                };
                let out = Out::Event {
                    prefix: sub.prefix.clone(),
                    payload,
                };
                if sub.held.is_none() {
                    deliveries += 1;
                    // A full queue closes the connection (4008); the socket counts it.
                    sub.conn.push(out);
                    continue;
                }
                let cost = out.cost();
                if sub.held.as_ref().map_or(0, Vec::len) >= CATCH_UP_HOLD {
                    sub.overflowed = true;
                    Self::drop_held(&self.stats, sub);
                } else if sub.conn.hold(cost) {
                    if let Some(held) = &mut sub.held {
                        held.push(Held {
                            order_id: e.order_id.clone(),
                            version: e.version,
                            out,
                        });
                    }
                    sub.held_bytes += cost;
                    self.stats.held_events.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.stats
            .deliveries
            .fetch_add(deliveries, Ordering::Relaxed);
    }

    /// The hub's series, read into a `/metrics` scrape.
    pub fn metric_series(&self, scrape: &crate::metrics::Scrape, connections: u64) {
        let (subs, keys, projections) = {
            let index = self.lock();
            (
                index.subs.len(),
                index.by_key.len(),
                index.projections.len(),
            )
        };
        scrape.gauge(
            "herald_push_connections",
            "WebSocket connections open on this node.",
            connections,
        );
        scrape.gauge(
            "herald_push_subscriptions",
            "Live subscriptions on this node.",
            subs as u64,
        );
        scrape.gauge(
            "herald_push_index_keys",
            "Distinct index keys (orderId, customerId, partnerId, all) with subscribers.",
            keys as u64,
        );
        scrape.gauge(
            "herald_push_selection_sets",
            "Distinct selection sets in use (one rendering per event each).",
            projections as u64,
        );
        scrape.gauge(
            "herald_push_held_events",
            "Live events held for subscriptions still replaying (after), charged to their connection's push.outbound_queue_bytes.",
            self.stats.held_events.load(Ordering::Relaxed),
        );
        for (name, help, value) in [
            (
                "herald_push_events_dispatched_total",
                "Events the hub dispatched.",
                &self.stats.events_dispatched,
            ),
            (
                "herald_push_deliveries_total",
                "Event messages queued to subscribers.",
                &self.stats.deliveries,
            ),
            (
                "herald_push_renders_total",
                "Event payloads serialised (once per event per distinct selection set).",
                &self.stats.renders,
            ),
            (
                "herald_push_slow_consumers_total",
                "Connections closed with 4008 because their outbound queue (with the live events held during a replay) was full.",
                &self.stats.slow_consumers,
            ),
        ] {
            scrape.counter(name, help, value.load(Ordering::Relaxed));
        }
    }
}

impl EventSink for Hub {
    /// Never moves the position back in any partition.
    fn start(&self, cursor: &LogCursor) {
        let mut index = self.lock();
        match &mut index.position {
            Some(position) if position.partitions() == cursor.partitions() => {
                for (partition, id) in cursor.positions().iter().enumerate() {
                    position.advance(partition, *id);
                }
            }
            position => *position = Some(cursor.clone()),
        }
        drop(index);
        self.started.notify_waiters();
    }

    fn publish(&self, event: Arc<LoggedEvent>) {
        self.dispatch(&event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graphql::{DocumentLimits, GraphqlRequest, GraphqlSchema, Operation};
    use crate::model::{OrderEvent, OrderStatus};
    use crate::push::close;

    fn spec(query: &str) -> (EventFilter, Arc<Projection>) {
        let schema = GraphqlSchema::load().unwrap();
        let request = GraphqlRequest {
            query: query.into(),
            ..GraphqlRequest::default()
        };
        match schema.prepare(&request, &DocumentLimits::default()) {
            Ok(Operation::Subscription(s)) => (s.filter, s.projection),
            _ => panic!("not a subscription"),
        }
    }

    fn event(id: &str, order: &str, version: u64) -> LoggedEvent {
        LoggedEvent {
            event_id: id.into(),
            partition: 0,
            cursor: None,
            event: OrderEvent {
                event_type: "order.confirmed".into(),
                order_id: order.into(),
                customer_id: "c-1".into(),
                partner_id: None,
                status: OrderStatus::Confirmed,
                previous_status: Some(OrderStatus::Accepted),
                version,
                occurred_at: "2026-11-27T10:00:00Z".into(),
                data: None,
            },
        }
    }

    /// A cursor of a one-partition log.
    fn at(text: &str) -> LogCursor {
        LogCursor::parse(text, 1).unwrap()
    }

    fn in_partition(partition: usize, mut event: LoggedEvent) -> LoggedEvent {
        event.partition = partition;
        event
    }

    fn subscribe(
        hub: &Hub,
        query: &str,
        catching_up: bool,
        after: Option<LogCursor>,
    ) -> (SubId, Arc<ConnHandle>) {
        let conn = Arc::new(ConnHandle::new(1 << 20));
        let (filter, projection) = spec(query);
        let (id, _) = hub
            .register(
                Registration {
                    conn: conn.clone(),
                    prefix: Utf8Bytes::from_static("{\"id\":\"1\",\"type\":\"next\",\"payload\":"),
                    filter,
                    projection,
                    catching_up,
                    after,
                },
                None,
            )
            .expect("started hub");
        (id, conn)
    }

    fn received(conn: &mut Arc<ConnHandle>) -> Vec<serde_json::Value> {
        conn.take_batch()
            .into_iter()
            .map(|m| serde_json::from_str(&m.into_text()).unwrap())
            .collect()
    }

    #[test]
    fn nothing_registers_before_the_tail_has_started() {
        let hub = Hub::new();
        let conn = ConnHandle::new(1024);
        let (filter, projection) = spec("subscription { onOrderUpdated { version } }");
        let reg = Registration {
            conn: Arc::new(conn),
            prefix: Utf8Bytes::from_static(""),
            filter,
            projection,
            catching_up: false,
            after: None,
        };
        assert!(hub.register(reg, None).is_none());
    }

    #[test]
    fn events_reach_matching_subscriptions_through_the_index_only() {
        let hub = Hub::new();
        hub.start(&LogCursor::start(1));
        let (_, mut mine) = subscribe(
            &hub,
            "subscription { onOrderUpdated(orderId: \"o-1\") { version } }",
            false,
            None,
        );
        let (_, mut all) = subscribe(
            &hub,
            "subscription { onOrderUpdated { orderId } }",
            false,
            None,
        );
        hub.dispatch(&event("1-0", "o-2", 1));
        hub.dispatch(&event("2-0", "o-1", 1));
        let mine = received(&mut mine);
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0]["payload"]["data"]["onOrderUpdated"]["version"], 1);
        assert_eq!(received(&mut all).len(), 2);
        // A repeated (older) event is not dispatched twice.
        hub.dispatch(&event("2-0", "o-1", 1));
        assert_eq!(hub.stats.events_dispatched.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn each_event_is_rendered_once_per_distinct_selection_set() {
        let hub = Hub::new();
        hub.start(&LogCursor::start(1));
        let mut receivers = Vec::new();
        for _ in 0..5 {
            receivers.push(
                subscribe(
                    &hub,
                    "subscription { onOrderUpdated { version orderId } }",
                    false,
                    None,
                )
                .1,
            );
            // The same selection written with a fragment is the same selection set.
            receivers.push(
                subscribe(
                    &hub,
                    "subscription { onOrderUpdated { ...F } } fragment F on OrderEvent { version orderId }",
                    false,
                    None,
                )
                .1,
            );
        }
        receivers.push(
            subscribe(
                &hub,
                "subscription { onOrderUpdated { status } }",
                false,
                None,
            )
            .1,
        );
        hub.dispatch(&event("1-0", "o-1", 1));
        assert_eq!(hub.stats.renders.load(Ordering::Relaxed), 2);
        assert_eq!(hub.stats.deliveries.load(Ordering::Relaxed), 11);
    }

    #[test]
    fn catching_up_holds_live_events_until_the_replay_is_done() {
        let hub = Hub::new();
        hub.start(&at("5-0"));
        let (id, mut rx) = subscribe(
            &hub,
            "subscription { onOrderUpdated { version } }",
            true,
            Some(at("3-0")),
        );
        hub.dispatch(&event("6-0", "o-1", 6));
        assert!(received(&mut rx).is_empty(), "held while replaying");
        assert!(hub.go_live(id, None));
        let got = received(&mut rx);
        assert_eq!(got.len(), 1);
        hub.dispatch(&event("7-0", "o-1", 7));
        assert_eq!(received(&mut rx).len(), 1);
    }

    #[test]
    fn after_a_snapshot_live_events_it_covered_are_left_out_held_or_not() {
        let hub = Hub::new();
        hub.start(&at("5-0"));
        let (id, mut rx) = subscribe(
            &hub,
            "subscription { onOrderUpdated { orderId version } }",
            true,
            None,
        );
        // While the snapshot is read: o-1 moves to 2 (the snapshot shows 2), o-2 to 1 (the
        // snapshot was read before it existed).
        hub.dispatch(&event("6-0", "o-1", 2));
        hub.dispatch(&event("7-0", "o-2", 1));
        let snapshot = [crate::resync::snapshot_event(
            crate::model::StatusRecord {
                order_id: "o-1".into(),
                customer_id: "c-1".into(),
                partner_id: None,
                status: OrderStatus::Confirmed,
                version: 3,
                updated_at: "2026-11-27T10:00:00Z".into(),
            },
            &at("5-0"),
        )];
        assert!(hub.go_live(id, Some(Covered::new(&snapshot, at("8-0")))));
        let held: Vec<_> = received(&mut rx)
            .iter()
            .map(|m| m["payload"]["data"]["onOrderUpdated"]["orderId"].clone())
            .collect();
        assert_eq!(held, ["o-2"]);
        // o-1's version 3 came before the snapshot's end: the snapshot showed it.
        hub.dispatch(&event("8-0", "o-1", 3));
        assert!(received(&mut rx).is_empty());
        hub.dispatch(&event("9-0", "o-1", 4));
        let live = received(&mut rx);
        assert_eq!(live.len(), 1);
        assert_eq!(live[0]["payload"]["data"]["onOrderUpdated"]["version"], 4);
    }

    #[test]
    fn held_events_count_against_the_connection_bound_and_a_full_hold_is_a_slow_consumer() {
        let hub = Hub::new();
        hub.start(&at("5-0"));
        let conn = Arc::new(ConnHandle::new(400));
        let (filter, projection) = spec("subscription { onOrderUpdated { orderId version } }");
        let (id, _) = hub
            .register(
                Registration {
                    conn: conn.clone(),
                    prefix: Utf8Bytes::from_static("{\"id\":\"1\",\"type\":\"next\",\"payload\":"),
                    filter,
                    projection,
                    catching_up: true,
                    after: Some(at("3-0")),
                },
                None,
            )
            .expect("started hub");
        // Each held event is ~80 bytes: the fifth or so passes 400 and closes the connection.
        for v in 6..30 {
            hub.dispatch(&event(&format!("{v}-0"), "o-1", v));
        }
        assert!(conn.is_closed());
        assert_eq!(conn.close_frame().map(|f| f.0), Some(close::SLOW_CONSUMER));
        let held = hub.stats.held_events.load(Ordering::Relaxed);
        assert!((1..10).contains(&held), "{held}");
        // Removing the subscription frees what it held.
        hub.remove(id);
        assert_eq!(hub.stats.held_events.load(Ordering::Relaxed), 0);
        assert!(conn.take_batch().is_empty());
    }

    #[test]
    fn a_cursor_ahead_of_this_node_skips_what_the_client_already_has() {
        let hub = Hub::new();
        hub.start(&at("5-0"));
        let (_, mut rx) = subscribe(
            &hub,
            "subscription { onOrderUpdated { version } }",
            false,
            Some(at("7-0")),
        );
        hub.dispatch(&event("6-0", "o-1", 6));
        hub.dispatch(&event("7-0", "o-1", 7));
        hub.dispatch(&event("8-0", "o-1", 8));
        let got = received(&mut rx);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["payload"]["data"]["onOrderUpdated"]["version"], 8);
    }

    #[test]
    fn removed_subscriptions_and_their_selection_sets_are_gone() {
        let hub = Hub::new();
        hub.start(&LogCursor::start(1));
        let (id, mut rx) = subscribe(
            &hub,
            "subscription { onOrderUpdated { version } }",
            false,
            None,
        );
        hub.remove(id);
        hub.remove(id);
        hub.dispatch(&event("1-0", "o-1", 1));
        assert!(received(&mut rx).is_empty());
        assert!(hub.lock().subs.is_empty());
        assert!(hub.lock().projections.is_empty());
        assert!(hub.lock().by_key.is_empty());
    }

    #[test]
    fn a_subscription_ahead_of_the_node_is_shown_its_own_cursor_until_the_node_catches_up() {
        let hub = Hub::new();
        hub.start(&LogCursor::start(2));
        // The client saw partition 1 through 9-0 on a node further along.
        let mut after = LogCursor::start(2);
        after.advance(1, "9-0".parse().unwrap());
        let (_, mut rx) = subscribe(
            &hub,
            "subscription { onOrderUpdated { eventId version } }",
            false,
            Some(after),
        );
        let with_cursor = |mut e: LoggedEvent, k: usize, cursor: &LogCursor| {
            e.partition = k;
            e.cursor = Some(cursor.to_string());
            e
        };
        let mut tail = LogCursor::start(2);
        tail.advance(0, "4-0".parse().unwrap());
        hub.dispatch(&with_cursor(event("4-0", "o-1", 1), 0, &tail));
        tail.advance(1, "10-0".parse().unwrap());
        hub.dispatch(&with_cursor(event("10-0", "o-2", 2), 1, &tail));
        let shown: Vec<LogCursor> = received(&mut rx)
            .iter()
            .map(|m| {
                let id = m["payload"]["data"]["onOrderUpdated"]["eventId"]
                    .as_str()
                    .unwrap()
                    .to_string();
                LogCursor::parse(&id, 2).unwrap()
            })
            .collect();
        // The first shows partition 1 at 9-0 (what the client has), not the node's 0-0.
        assert_eq!(shown[0].get(0), "4-0".parse().unwrap());
        assert_eq!(shown[0].get(1), "9-0".parse().unwrap());
        // Caught up: the node's own cursor, shared by every subscriber.
        assert_eq!(shown[1], tail);
    }

    #[test]
    fn the_position_and_the_floor_are_kept_per_partition() {
        let hub = Hub::new();
        hub.start(&LogCursor::start(2));
        let mut after = LogCursor::start(2);
        after.advance(0, "5-0".parse().unwrap());
        after.advance(1, "2-0".parse().unwrap());
        let (_, mut rx) = subscribe(
            &hub,
            "subscription { onOrderUpdated { version } }",
            false,
            Some(after),
        );
        hub.dispatch(&in_partition(1, event("3-0", "o-1", 3)));
        // Older than partition 1's position, but partition 0 has not seen it: dispatched,
        // yet at or before the subscription's floor in partition 0: not delivered.
        hub.dispatch(&in_partition(0, event("2-0", "o-1", 2)));
        hub.dispatch(&in_partition(0, event("6-0", "o-1", 6)));
        // Already dispatched in partition 1.
        hub.dispatch(&in_partition(1, event("3-0", "o-1", 3)));
        assert_eq!(hub.stats.events_dispatched.load(Ordering::Relaxed), 3);
        let versions: Vec<_> = received(&mut rx)
            .iter()
            .map(|m| m["payload"]["data"]["onOrderUpdated"]["version"].clone())
            .collect();
        assert_eq!(versions, [3, 6]);
        let (_, position) = hub
            .register(
                Registration {
                    conn: Arc::new(ConnHandle::new(1024)),
                    prefix: Utf8Bytes::from_static(""),
                    filter: spec("subscription { onOrderUpdated { version } }").0,
                    projection: spec("subscription { onOrderUpdated { version } }").1,
                    catching_up: false,
                    after: None,
                },
                None,
            )
            .unwrap();
        assert_eq!(position.to_string(), {
            let mut expected = LogCursor::start(2);
            expected.advance(0, "6-0".parse().unwrap());
            expected.advance(1, "3-0".parse().unwrap());
            expected.to_string()
        });
    }

    #[test]
    fn a_restarted_tail_never_moves_the_position_back() {
        let hub = Hub::new();
        hub.start(&at("5-0"));
        hub.start(&at("3-0"));
        hub.dispatch(&event("4-0", "o-1", 4));
        assert_eq!(hub.stats.events_dispatched.load(Ordering::Relaxed), 0);
    }
}
