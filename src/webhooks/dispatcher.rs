//! The dispatcher: turns each event of the log into deliveries, exactly once however many
//! nodes run it. Events come through the engine's consumer group (`claim_events`); each is
//! matched against the enabled endpoints and its body is built once; the deliveries of a whole
//! claimed batch are stored and every event of the batch acknowledged in one engine step
//! (`create_deliveries`), events no endpoint wants included. A node that dies between the
//! claim and that step leaves the batch to be reclaimed by another; a delivery's id derives
//! from (event, endpoint), so a reclaimed event never makes a second delivery. The endpoints
//! are cached against the engine's endpoints version, read after each claim. Events trimmed
//! from the log before any dispatcher read them are reported by the claim that finds the gap:
//! counted (`herald_webhook_events_lost_total`) and logged here, recorded by the engine.
//!
//! It never sends anything: the sender picks the deliveries up from the schedule. Notices
//! about endpoints (`endpoint.disabled`) are not events and do not come through here: see
//! [`super::operational`].

use crate::backoff::Backoff;
use crate::engine::webhook::{Delivery, DeliveryState, Endpoint, LostEvents, OrderLine, Ordering};
use crate::engine::{Engine, LogEntry};
use crate::metrics::Metrics;
use crate::model::{EventId, LoggedEvent, now_millis};
use crate::webhooks::sender::DeliveryBodies;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Events claimed per call.
const CLAIM_BATCH: usize = 100;
/// Deliveries stored per engine call at most (the script's arguments stay a few MB even with
/// many endpoints); a claimed batch that makes more is stored in several calls.
const MAX_DELIVERIES_PER_CALL: usize = 1_000;
/// How long a claim waits for new events before asking again.
const CLAIM_WAIT: Duration = Duration::from_secs(1);

pub struct Dispatcher {
    engine: Arc<dyn Engine>,
    metrics: Arc<Metrics>,
    consumer: String,
    /// An event claimed by a node that never acknowledged it is taken over after this long.
    reclaim_after: Duration,
    /// Wakes this node's sender: new deliveries are due now.
    wake: Arc<Notify>,
    /// The bodies this node's sender keeps: handed the ones created here.
    bodies: Arc<DeliveryBodies>,
    /// The pause after a batch smaller than a full one (`webhooks.dispatch_linger`).
    linger: Duration,
    /// The endpoints as last read, with the version read before them: reused for every batch
    /// while the engine's `endpoints_version` (read after each claim) is unchanged.
    cache: Option<EndpointCache>,
    /// Whether this node's dispatchers are behind, shared by them (`webhooks.dispatchers`).
    load: Arc<DispatchLoad>,
    /// The first dispatcher of a node claims all the time and says when it is behind; the
    /// others claim only while it is, so at moderate rates the node costs the engine no more
    /// rounds than one dispatcher would.
    lead: bool,
}

/// Whether a node's lead dispatcher is behind (its last claim was a full batch), and a wake
/// for the others when it falls behind.
#[derive(Default)]
pub struct DispatchLoad {
    behind: std::sync::atomic::AtomicBool,
    fell_behind: Notify,
}

impl DispatchLoad {
    fn set(&self, behind: bool) {
        use std::sync::atomic::Ordering;
        if behind && !self.behind.swap(true, Ordering::Relaxed) {
            self.fell_behind.notify_waiters();
        } else if !behind {
            self.behind.store(false, Ordering::Relaxed);
        }
    }

    fn is_behind(&self) -> bool {
        self.behind.load(std::sync::atomic::Ordering::Relaxed)
    }
}

struct EndpointCache {
    version: u64,
    endpoints: Vec<Endpoint>,
}

impl Dispatcher {
    pub fn new(
        engine: Arc<dyn Engine>,
        metrics: Arc<Metrics>,
        consumer: String,
        reclaim_after: Duration,
        wake: Arc<Notify>,
        bodies: Arc<DeliveryBodies>,
        linger: Duration,
    ) -> Dispatcher {
        Dispatcher {
            engine,
            metrics,
            consumer,
            reclaim_after,
            wake,
            bodies,
            linger,
            cache: None,
            load: Arc::default(),
            lead: true,
        }
    }

    /// Makes this one of a node's dispatchers sharing `load`: the `lead` claims all the time,
    /// the others only while it is behind.
    pub fn sharing(mut self, load: Arc<DispatchLoad>, lead: bool) -> Dispatcher {
        self.load = load;
        self.lead = lead;
        self
    }

    /// Claims and dispatches events until `shutdown`. A batch being dispatched is finished
    /// first (a batch is one engine step, so stopping between two loses nothing).
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(consumer = %self.consumer, "webhook dispatcher started");
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        while !shutdown.is_cancelled() {
            if !self.lead && !self.load.is_behind() {
                // A helper: idle until the lead falls behind (looking again now and then, in
                // case a wake came between the check and the wait).
                let fell_behind = self.load.fell_behind.notified();
                tokio::select! {
                    _ = fell_behind => {}
                    _ = tokio::time::sleep(CLAIM_WAIT) => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            let wait = if self.lead {
                CLAIM_WAIT
            } else {
                Duration::ZERO
            };
            let claimed = tokio::select! {
                r = self.engine.claim_events(&self.consumer, CLAIM_BATCH, wait, self.reclaim_after) => r,
                _ = shutdown.cancelled() => break,
            };
            if self.lead
                && let Ok(claimed) = &claimed
            {
                self.load.set(claimed.entries.len() >= CLAIM_BATCH);
            }
            let mut pause = None;
            let result = match claimed {
                Ok(claimed) => {
                    for lost in &claimed.lost {
                        self.report_lost(lost);
                    }
                    pause = self.linger_after(claimed.entries.len());
                    if !self.lead && claimed.entries.len() < CLAIM_BATCH {
                        // A helper that found less than a full batch: the backlog is gone
                        // (or almost); look at the lead's word again after a pause.
                        pause = Some(self.linger.max(Duration::from_millis(1)));
                    }
                    if claimed.entries.is_empty() {
                        Ok(())
                    } else {
                        self.dispatch(claimed.entries).await
                    }
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    backoff.reset();
                    if let Some(pause) = pause {
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = shutdown.cancelled() => break,
                        }
                    }
                }
                Err(e) => {
                    Metrics::inc(&self.metrics.webhook_dispatch_errors);
                    tracing::warn!(error = %e, "webhook dispatcher: engine call failed; unacknowledged events are claimed again");
                    if !backoff.sleep(&shutdown).await {
                        break;
                    }
                }
            }
        }
        tracing::info!("webhook dispatcher stopped");
    }

    /// How long to wait before the next claim after one that brought `claimed` events: only
    /// after a batch that was not full (this node is caught up), so that events arriving
    /// meanwhile are read, stored and acknowledged in one engine round instead of one each.
    /// A full batch means a backlog: claim again at once. Nothing claimed: the claim itself
    /// waited for new events, and the next one will too.
    fn linger_after(&self, claimed: usize) -> Option<Duration> {
        (claimed > 0 && claimed < CLAIM_BATCH && !self.linger.is_zero()).then_some(self.linger)
    }

    /// Matches a claimed batch against the endpoints and stores all its deliveries, with every
    /// event of the batch acknowledged, in one engine call (a few when endpoints are many). If
    /// a call fails, its events and those of later calls stay unacknowledged and are claimed
    /// again (what was stored is kept: delivery ids make the redo idempotent).
    async fn dispatch(&mut self, entries: Vec<LogEntry>) -> Result<(), crate::engine::EngineError> {
        self.refresh_endpoints().await?;
        let endpoints: &[Endpoint] = self.cache.as_ref().map_or(&[], |c| &c.endpoints);
        let now_ms = now_millis();
        // Calls of at most MAX_DELIVERIES_PER_CALL deliveries (an event with more is a call of
        // its own), each acknowledging exactly the events whose deliveries it stores: one call
        // for a whole batch unless endpoints are many.
        // Per call: the events it acknowledges, as (partition, entry id), and the deliveries.
        type Call = (Vec<(usize, EventId)>, Vec<Delivery>);
        let mut calls: Vec<Call> = vec![Default::default()];
        for entry in entries {
            let id = match entry.id() {
                Ok(id) => id,
                Err(e) => {
                    // Engines only hand out entries with stream ids; nothing to acknowledge.
                    tracing::warn!(error = %e, "webhook dispatcher: entry without a valid id skipped");
                    continue;
                }
            };
            let made = match &entry {
                LogEntry::Event(event) => deliveries_for(event, endpoints, now_ms),
                LogEntry::Malformed(bad) => {
                    // Acknowledged with no delivery; kept aside (idempotently: the tail of a
                    // push node may have done it already).
                    if let Err(e) = self.engine.set_aside(bad).await {
                        tracing::warn!(error = %e, entry_id = %bad.entry_id, "could not set the malformed entry aside");
                    }
                    Vec::new()
                }
            };
            let full = calls.last().is_some_and(|(_, d)| {
                !d.is_empty() && d.len() + made.len() > MAX_DELIVERIES_PER_CALL
            });
            if full {
                calls.push(Default::default());
            }
            if let Some((events, deliveries)) = calls.last_mut() {
                events.push((entry.partition(), id));
                deliveries.extend(made);
            }
        }
        for (events, deliveries) in calls {
            if events.is_empty() {
                continue;
            }
            let held = self.engine.create_deliveries(&events, &deliveries).await?;
            Metrics::add(&self.metrics.webhook_deliveries_held, held as u64);
            Metrics::add(&self.metrics.webhook_events_dispatched, events.len() as u64);
            if !deliveries.is_empty() {
                Metrics::add(
                    &self.metrics.webhook_deliveries_created,
                    deliveries.len() as u64,
                );
                // This node's sender will most likely attempt them: it need not read the
                // bodies back. (A delivery that existed already has these very bytes: a body
                // is built from its event alone.)
                for delivery in deliveries {
                    self.bodies
                        .remember(delivery.id, Bytes::from(delivery.body));
                }
                self.wake.notify_one();
            }
        }
        Ok(())
    }
}

impl Dispatcher {
    /// A gap in the event log found by this node's claim (recorded by the engine in the same
    /// step): counted and logged, never skipped silently.
    fn report_lost(&self, lost: &LostEvents) {
        Metrics::add(&self.metrics.webhook_events_lost, lost.count);
        tracing::warn!(
            count = lost.count,
            after_event_id = %lost.after_id,
            before_event_id = %lost.before_id,
            "webhook dispatch: events were trimmed from the event log (engine.event_retention) \
             before any dispatcher read them; no endpoint received them"
        );
    }

    /// Makes the cache fit to match the batch just claimed against. The version is read after the
    /// claim: any endpoint written before one of the batch's events was appended has moved it
    /// by now, so an unchanged version means the cache holds every such write. On a change the
    /// endpoints are read again, after the version, so they are at least as new as it (a write
    /// in between only causes one more reload later).
    async fn refresh_endpoints(&mut self) -> Result<(), crate::engine::EngineError> {
        let version = self.engine.endpoints_version().await?;
        if self.cache.as_ref().is_none_or(|c| c.version != version) {
            self.cache = Some(EndpointCache {
                version,
                endpoints: self.engine.endpoints().await?,
            });
        }
        Ok(())
    }
}

/// The deliveries of one event: one per enabled endpoint that may see it and wants its type.
/// The body is built once and shared by all of them.
pub fn deliveries_for(event: &LoggedEvent, endpoints: &[Endpoint], now_ms: u64) -> Vec<Delivery> {
    let mut matching = endpoints.iter().filter(|e| wants(e, event)).peekable();
    if matching.peek().is_none() {
        return Vec::new();
    }
    let body = body(event);
    let event_id = event.qualified_id();
    matching
        .map(|endpoint| {
            let mut delivery =
                new_delivery(endpoint, &event_id, &event.event.event_type, &body, now_ms);
            if endpoint.ordering == Ordering::PerOrder {
                delivery.order_line = Some(OrderLine {
                    order_id: event.event.order_id.clone(),
                    version: event.event.version,
                });
            }
            delivery
        })
        .collect()
}

/// A delivery of `body` to `endpoint`, due now; its id derives from (event id, endpoint id).
/// Operational notices use it too, with their notice id in the place of the event id.
pub(crate) fn new_delivery(
    endpoint: &Endpoint,
    event_id: &str,
    event_type: &str,
    body: &str,
    now_ms: u64,
) -> Delivery {
    Delivery {
        id: delivery_id(event_id, &endpoint.id),
        endpoint_id: endpoint.id.clone(),
        partner_id: endpoint.partner_id.clone(),
        event_id: event_id.to_string(),
        event_type: event_type.to_string(),
        body: body.to_string(),
        state: DeliveryState::Pending,
        attempts: 0,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
        next_attempt_at_ms: Some(now_ms),
        last_status_code: None,
        order_line: None,
    }
}

/// Whether `endpoint` receives `event`: enabled, allowed to see the order (a partner's
/// endpoint only its partnerId's orders; an endpoint without partnerId every order), and
/// subscribed to the event type.
pub fn wants(endpoint: &Endpoint, event: &LoggedEvent) -> bool {
    endpoint.enabled
        && endpoint
            .partner_id
            .as_deref()
            .is_none_or(|own| event.event.partner_id.as_deref() == Some(own))
        && type_matches(&endpoint.event_types, &event.event.event_type)
}

/// `[]` and `*` match everything; `order.*` every type that starts with `order.`.
pub fn type_matches(patterns: &[String], event_type: &str) -> bool {
    patterns.is_empty()
        || patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => event_type.starts_with(prefix),
            None => p == event_type,
        })
}

/// `{"type", "timestamp", "data": <the event with eventId>}`; the eventId is the event's own
/// name ([`LoggedEvent::qualified_id`]: the entry id, `<partition>/<entry id>` outside
/// partition 0), not a resume cursor.
pub fn body(event: &LoggedEvent) -> String {
    serde_json::json!({
        "type": event.event.event_type,
        "timestamp": event.event.occurred_at,
        "data": event.with_event_id(&event.qualified_id()),
    })
    .to_string()
}

/// `msg_` + 32 hex digits of SHA-256(event id, endpoint id): the same for a redelivered event.
pub fn delivery_id(event_id: &str, endpoint_id: &str) -> String {
    let digest = Sha256::digest(format!("{event_id}\n{endpoint_id}"));
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("msg_{hex}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{OrderEvent, OrderStatus};

    fn event(partner: Option<&str>, status: OrderStatus) -> LoggedEvent {
        LoggedEvent {
            event_id: "1700000000000-3".into(),
            partition: 0,
            cursor: None,
            event: OrderEvent {
                event_type: status.event_type(),
                order_id: "o-1".into(),
                customer_id: "c-1".into(),
                partner_id: partner.map(String::from),
                status,
                previous_status: None,
                version: 1,
                occurred_at: "2026-01-01T00:00:00.000Z".into(),
                data: None,
            },
        }
    }

    pub(crate) fn endpoint(id: &str, partner: Option<&str>, types: &[&str]) -> Endpoint {
        Endpoint {
            id: id.into(),
            partner_id: partner.map(String::from),
            url: "https://example.com/hook".into(),
            description: None,
            event_types: types.iter().map(|t| t.to_string()).collect(),
            enabled: true,
            disabled_reason: None,
            rate_limit_per_second: None,
            max_in_flight: None,
            secrets: Vec::new(),
            created_at_ms: 0,
            updated_at_ms: 0,
            failing_since_ms: None,
            ordering: Ordering::None,
        }
    }

    #[test]
    fn lingers_only_after_a_batch_that_was_not_full() {
        let dispatcher = |linger| Dispatcher {
            linger,
            ..dispatcher_on(memory_engine(), Arc::default())
        };
        let d = dispatcher(Duration::from_millis(2));
        assert_eq!(d.linger_after(1), Some(Duration::from_millis(2)));
        assert_eq!(
            d.linger_after(CLAIM_BATCH - 1),
            Some(Duration::from_millis(2))
        );
        // A full batch is a backlog; an empty claim already waited for new events.
        assert_eq!(d.linger_after(CLAIM_BATCH), None);
        assert_eq!(d.linger_after(0), None);
        assert_eq!(dispatcher(Duration::ZERO).linger_after(1), None);
    }

    /// Node `n1`'s dispatcher on `engine`: events reclaimed after 30 s, no linger.
    fn dispatcher_on(engine: Arc<dyn Engine>, bodies: Arc<DeliveryBodies>) -> Dispatcher {
        Dispatcher::new(
            engine,
            Arc::new(Metrics::default()),
            "n1".into(),
            Duration::from_secs(30),
            Arc::new(Notify::new()),
            bodies,
            Duration::ZERO,
        )
    }

    /// A memory engine for one node `n1`.
    fn memory_engine() -> Arc<dyn Engine> {
        use crate::engine::EngineSettings;
        use crate::engine::memory::MemoryEngine;
        Arc::new(MemoryEngine::new(EngineSettings {
            visibility_timeout: Duration::from_secs(30),
            max_receives: 3,
            history_limit: 5,
            step_history_limit: 100,
            event_retention: 100,
            consumer_name: "n1".into(),
        }))
    }

    /// An endpoint written before an event is appended sees the event (or its change) even
    /// though the dispatcher caches the endpoints.
    #[tokio::test]
    async fn endpoint_writes_reach_the_cached_dispatcher_before_later_events() {
        use crate::engine::LogEntry;
        let engine = memory_engine();
        let mut dispatcher = dispatcher_on(engine.clone(), Arc::default());
        let mut append_and_dispatch = async |partner: &str| {
            let event = event(Some(partner), OrderStatus::Accepted);
            let (partition, id) = engine
                .append_raw_event(&event.event.to_json())
                .await
                .unwrap();
            let claimed: Vec<LogEntry> = engine
                .claim_events("n1", 10, Duration::ZERO, Duration::from_secs(30))
                .await
                .unwrap()
                .entries;
            assert_eq!(claimed.len(), 1);
            dispatcher.dispatch(claimed).await.unwrap();
            crate::model::qualified_entry_id(partition, &id.to_string())
        };
        let delivered = async |engine: &Arc<dyn Engine>, endpoint: &str| {
            engine
                .deliveries(endpoint, 100, None)
                .await
                .unwrap()
                .into_iter()
                .map(|d| d.event_id)
                .collect::<std::collections::BTreeSet<String>>()
        };
        let set = |ids: [&String; 2]| ids.into_iter().cloned().collect();
        engine
            .put_endpoint(&endpoint("ep_a", Some("acme"), &[]))
            .await
            .unwrap();
        let first = append_and_dispatch("acme").await;
        // Created after the dispatcher cached the endpoints, before the next event.
        engine
            .put_endpoint(&endpoint("ep_b", Some("acme"), &[]))
            .await
            .unwrap();
        let second = append_and_dispatch("acme").await;
        // Changed (disabled) before the next event: it no longer receives.
        let mut off = endpoint("ep_a", Some("acme"), &[]);
        off.enabled = false;
        engine.put_endpoint(&off).await.unwrap();
        let third = append_and_dispatch("acme").await;
        assert_eq!(delivered(&engine, "ep_a").await, set([&first, &second]));
        assert_eq!(delivered(&engine, "ep_b").await, set([&second, &third]));
    }

    /// The deliveries a dispatcher creates hand their bodies to its node's sender, the exact
    /// bytes stored, so the sender need not read them back.
    #[tokio::test]
    async fn created_deliveries_hand_their_bodies_to_the_nodes_sender() {
        let engine = memory_engine();
        engine
            .put_endpoint(&endpoint("ep_a", None, &[]))
            .await
            .unwrap();
        let bodies = Arc::new(DeliveryBodies::default());
        let mut dispatcher = dispatcher_on(engine.clone(), bodies.clone());
        let event = event(None, OrderStatus::Accepted);
        engine
            .append_raw_event(&event.event.to_json())
            .await
            .unwrap();
        let claimed = engine
            .claim_events("n1", 10, Duration::ZERO, Duration::from_secs(30))
            .await
            .unwrap()
            .entries;
        dispatcher.dispatch(claimed).await.unwrap();
        let stored = engine.deliveries("ep_a", 10, None).await.unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(
            bodies.get(&stored[0].id),
            Some(Bytes::from(stored[0].body.clone()))
        );
    }

    /// A batch making more deliveries than one call takes is stored in several, and every
    /// event is acknowledged.
    #[tokio::test]
    async fn a_batch_with_many_deliveries_is_stored_in_several_calls_and_fully_acknowledged() {
        let engine = memory_engine();
        let endpoints = MAX_DELIVERIES_PER_CALL / 2 + 1;
        for i in 0..endpoints {
            let id = format!("ep_{i:04}");
            engine
                .put_endpoint(&endpoint(&id, None, &[]))
                .await
                .unwrap();
        }
        for _ in 0..3 {
            let e = event(None, OrderStatus::Accepted);
            engine.append_raw_event(&e.event.to_json()).await.unwrap();
        }
        let mut dispatcher = Dispatcher {
            reclaim_after: Duration::ZERO,
            ..dispatcher_on(engine.clone(), Arc::default())
        };
        let claimed = engine
            .claim_events("n1", 10, Duration::ZERO, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 3);
        dispatcher.dispatch(claimed.entries).await.unwrap();
        // Nothing left unacknowledged to take over, even at once.
        let again = engine
            .claim_events("n1", 10, Duration::ZERO, Duration::ZERO)
            .await
            .unwrap();
        assert!(again.is_empty(), "{again:?}");
        for i in [0, endpoints - 1] {
            let id = format!("ep_{i:04}");
            assert_eq!(engine.deliveries(&id, 10, None).await.unwrap().len(), 3);
        }
    }

    #[test]
    fn partner_endpoints_get_only_their_partners_events_and_admin_endpoints_all() {
        let acme = endpoint("ep_a", Some("acme"), &[]);
        let all = endpoint("ep_all", None, &[]);
        assert!(wants(&acme, &event(Some("acme"), OrderStatus::Accepted)));
        assert!(!wants(&acme, &event(Some("globex"), OrderStatus::Accepted)));
        assert!(!wants(&acme, &event(None, OrderStatus::Accepted)));
        assert!(wants(&all, &event(Some("globex"), OrderStatus::Accepted)));
        assert!(wants(&all, &event(None, OrderStatus::Accepted)));
        let mut off = endpoint("ep_off", None, &[]);
        off.enabled = false;
        assert!(!wants(&off, &event(None, OrderStatus::Accepted)));
    }

    #[test]
    fn event_types_match_exactly_or_by_wildcard() {
        let t = |p: &[&str], ty: &str| {
            type_matches(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>(), ty)
        };
        assert!(t(&[], "order.shipped"));
        assert!(t(&["order.*"], "order.shipped"));
        assert!(t(&["*"], "order.shipped"));
        assert!(t(&["order.shipped"], "order.shipped"));
        assert!(!t(&["order.delivered"], "order.shipped"));
    }

    #[test]
    fn deliveries_carry_the_event_payload_and_ids_are_stable_per_event_and_endpoint() {
        let e = event(Some("acme"), OrderStatus::Confirmed);
        let eps = [
            endpoint("ep_a", Some("acme"), &["order.*"]),
            endpoint("ep_b", None, &["order.confirmed"]),
            endpoint("ep_c", Some("globex"), &[]),
        ];
        let ds = deliveries_for(&e, &eps, 42);
        assert_eq!(ds.len(), 2);
        for d in &ds {
            let body: serde_json::Value = serde_json::from_str(&d.body).expect("JSON body");
            assert_eq!(body["type"], "order.confirmed");
            assert_eq!(body["data"]["eventId"], "1700000000000-3");
            assert_eq!(body["data"]["partnerId"], "acme");
            assert_eq!(body["data"]["status"], "confirmed");
            assert!(body["timestamp"].is_string(), "{body}");
        }
        assert_eq!(ds[0].next_attempt_at_ms, Some(42));
        assert_eq!(ds[0].id, delivery_id("1700000000000-3", "ep_a"));
        assert_ne!(ds[0].id, ds[1].id);
        assert!(ds[0].id.starts_with("msg_") && ds[0].id.len() == 36);
        let body: serde_json::Value = serde_json::from_str(&ds[0].body).unwrap();
        assert_eq!(body["type"], "order.confirmed");
        assert_eq!(body["timestamp"], "2026-01-01T00:00:00.000Z");
        assert_eq!(body["data"]["eventId"], "1700000000000-3");
        assert_eq!(body["data"]["orderId"], "o-1");
    }

    #[test]
    fn outside_partition_0_the_event_is_named_by_its_partition_and_entry_id() {
        let mut e = event(None, OrderStatus::Confirmed);
        e.partition = 3;
        // A reader's resume cursor is no name for the event: webhooks never show it.
        e.cursor = Some("c1.BAIAAgA".into());
        let ds = deliveries_for(&e, &[endpoint("ep_a", None, &[])], 42);
        assert_eq!(ds[0].event_id, "3/1700000000000-3");
        assert_eq!(ds[0].id, delivery_id("3/1700000000000-3", "ep_a"));
        let body: serde_json::Value = serde_json::from_str(&ds[0].body).unwrap();
        assert_eq!(body["data"]["eventId"], "3/1700000000000-3");
        assert_eq!(body["data"]["orderId"], "o-1");
    }

    #[tokio::test]
    async fn a_helper_dispatcher_claims_only_while_the_lead_is_behind() {
        let engine = memory_engine();
        for _ in 0..5 {
            engine
                .append_raw_event(&event(None, OrderStatus::Accepted).event.to_json())
                .await
                .unwrap();
        }
        let load = Arc::new(DispatchLoad::default());
        let run_helper = async |engine: &Arc<dyn Engine>, load: &Arc<DispatchLoad>| {
            let helper = dispatcher_on(engine.clone(), Arc::default()).sharing(load.clone(), false);
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(helper.run(shutdown.clone()));
            tokio::time::sleep(Duration::from_millis(200)).await;
            shutdown.cancel();
            task.await.unwrap();
        };
        // The lead keeps up: the helper leaves every event alone.
        run_helper(&engine, &load).await;
        let unclaimed = |engine: Arc<dyn Engine>| async move {
            engine
                .claim_events("probe", 10, Duration::ZERO, Duration::from_secs(3600))
                .await
                .unwrap()
                .entries
                .len()
        };
        assert_eq!(unclaimed(engine.clone()).await, 5);
        // Behind: the helper claims (and, with no endpoint, acknowledges) what comes.
        for _ in 0..3 {
            engine
                .append_raw_event(&event(None, OrderStatus::Accepted).event.to_json())
                .await
                .unwrap();
        }
        load.set(true);
        run_helper(&engine, &load).await;
        assert_eq!(unclaimed(engine.clone()).await, 0);
    }
}
