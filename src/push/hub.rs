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
//! Ordering and the no-gap guarantee: the hub records the id of the last event it dispatched
//! (`position`). A subscription registered under the index lock receives every event after
//! that position, so anything appended after its acknowledgement reaches it. A subscription
//! resuming `after` a cursor starts in the catching-up state: live events are held (bounded)
//! while the retained events in `(after, position]` are replayed from the engine, then the
//! held ones follow, so there is neither a gap nor a duplicate at the switch.

use super::conn::{ConnHandle, Out};
use crate::graphql::{EventFilter, IndexKey, Projection};
use crate::model::{EventId, LoggedEvent};
use crate::tail::EventSink;
use bytes::Bytes;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Live events held per catching-up subscription before it is refused as too far behind.
pub const CATCH_UP_HOLD: usize = 10_000;

pub type SubId = u64;

struct Sub {
    conn: Arc<ConnHandle>,
    /// The protocol envelope up to the payload, e.g. `{"id":"1","type":"next","payload":`.
    prefix: Bytes,
    filter: EventFilter,
    key: IndexKey,
    projection: Arc<Projection>,
    /// `Some` while replaying: live events held until the replay is done.
    held: Option<Vec<Out>>,
    /// Set when the hold overflowed; the replay task reports it.
    overflowed: bool,
}

#[derive(Default)]
struct Index {
    /// `None` until the tail has started: no subscription can be live before that.
    position: Option<EventId>,
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
    pub slow_consumers: AtomicU64,
}

pub struct Hub {
    index: Mutex<Index>,
    pub stats: HubStats,
}

/// What a new subscription needs from the hub.
pub struct Registration {
    pub conn: Arc<ConnHandle>,
    pub prefix: Bytes,
    pub filter: EventFilter,
    pub projection: Arc<Projection>,
    /// Hold live events (a replay follows) instead of delivering them at once.
    pub catching_up: bool,
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
    pub fn register(&self, reg: Registration, first: Option<Out>) -> Option<(SubId, EventId)> {
        let mut index = self.lock();
        let position = index.position?;
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
                overflowed: false,
            },
        );
        Some((id, position))
    }

    /// Ends a catching-up phase: the held live events are queued after the replayed ones and
    /// the subscription is live. `false` when it fell too far behind while replaying.
    pub fn go_live(&self, id: SubId) -> bool {
        let mut index = self.lock();
        let Some(sub) = index.subs.get_mut(&id) else {
            return false;
        };
        if sub.overflowed {
            return false;
        }
        if let Some(held) = sub.held.take() {
            for out in held {
                sub.conn.push(out);
            }
        }
        true
    }

    /// Removes a subscription (stop/complete, connection closed). Idempotent.
    pub fn remove(&self, id: SubId) {
        let mut index = self.lock();
        let Some(sub) = index.subs.remove(&id) else {
            return;
        };
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

    pub fn subscription_count(&self) -> usize {
        self.lock().subs.len()
    }

    /// Delivers one event to every matching subscription. Called by the tail, in log order.
    pub fn dispatch(&self, event: &LoggedEvent) {
        let id = event.event_id.parse::<EventId>().ok();
        let mut index = self.lock();
        if let Some(id) = id {
            if index.position.is_some_and(|p| id <= p) {
                return; // already dispatched (a tail restarted from an older cursor)
            }
            index.position = Some(id);
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
        let mut rendered: Vec<(*const Projection, Bytes)> = Vec::new();
        let mut deliveries = 0u64;
        let Index { subs, by_key, .. } = &mut *index;
        for key in keys.iter().flatten() {
            let Some(ids) = by_key.get(key) else { continue };
            for sub_id in ids {
                let Some(sub) = subs.get_mut(sub_id) else {
                    continue;
                };
                if sub.conn.is_closed() || !sub.filter.matches(event) {
                    continue;
                }
                let ptr = Arc::as_ptr(&sub.projection);
                let payload = match rendered.iter().find(|(p, _)| *p == ptr) {
                    Some((_, bytes)) => bytes.clone(),
                    None => {
                        let bytes = sub.projection.render_event(event);
                        self.stats.renders.fetch_add(1, Ordering::Relaxed);
                        rendered.push((ptr, bytes.clone()));
                        bytes
                    }
                };
                let out = Out::Event {
                    prefix: sub.prefix.clone(),
                    payload,
                };
                match &mut sub.held {
                    Some(held) => {
                        if held.len() >= CATCH_UP_HOLD {
                            sub.overflowed = true;
                        } else {
                            held.push(out);
                        }
                    }
                    None => {
                        deliveries += 1;
                        if !sub.conn.push(out) {
                            self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        self.stats
            .deliveries
            .fetch_add(deliveries, Ordering::Relaxed);
    }

    /// Prometheus series for the hub (appended to `/metrics`).
    pub fn metric_series(&self, out: &mut String, connections: u64) {
        let (subs, keys, projections) = {
            let index = self.lock();
            (
                index.subs.len(),
                index.by_key.len(),
                index.projections.len(),
            )
        };
        let mut gauge = |name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {value}");
        };
        gauge(
            "herald_push_connections",
            "WebSocket connections open on this node.",
            connections,
        );
        gauge(
            "herald_push_subscriptions",
            "Live subscriptions on this node.",
            subs as u64,
        );
        gauge(
            "herald_push_index_keys",
            "Distinct index keys (orderId, customerId, partnerId, all) with subscribers.",
            keys as u64,
        );
        gauge(
            "herald_push_selection_sets",
            "Distinct selection sets in use (one rendering per event each).",
            projections as u64,
        );
        let mut counter = |name: &str, help: &str, value: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        };
        counter(
            "herald_push_events_dispatched_total",
            "Events the hub dispatched.",
            &self.stats.events_dispatched,
        );
        counter(
            "herald_push_deliveries_total",
            "Event messages queued to subscribers.",
            &self.stats.deliveries,
        );
        counter(
            "herald_push_renders_total",
            "Event payloads serialised (once per event per distinct selection set).",
            &self.stats.renders,
        );
        counter(
            "herald_push_slow_consumers_total",
            "Connections closed with 4008 because their outbound queue was full.",
            &self.stats.slow_consumers,
        );
    }
}

impl EventSink for Hub {
    fn start(&self, cursor: EventId) {
        let mut index = self.lock();
        if index.position.is_none_or(|p| p < cursor) {
            index.position = Some(cursor);
        }
    }

    fn publish(&self, event: Arc<LoggedEvent>) {
        self.dispatch(&event);
    }
}
