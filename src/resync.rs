//! Resync snapshots (README "Resync"): when a client's resume cursor is older than the
//! retained log (or it has none) and it asks for `resync`, it gets the current status of every
//! order it covers, read from the status store, as `order.snapshot` events, then the live events
//! from the log position the snapshot was taken at.
//!
//! It owns the snapshot's form (which orders, the events, their `eventId`) and the rule that a
//! live event an order's snapshot already covers (version at most the snapshot's) is not sent
//! again. It never decides who may see what (the callers narrow the scope to the caller's
//! orders first) and never sends anything: the subscription core and the HTTP feed do.

use crate::engine::{EngineError, EventLog, Listing, OrderScope, OrderStore};
use crate::graphql::EventFilter;
use crate::model::{LogCursor, LoggedEvent, OrderEvent, StatusRecord, partition_of};
use std::collections::HashMap;

/// The `type` of a snapshot event.
pub const SNAPSHOT_TYPE: &str = "order.snapshot";

/// Why no snapshot was taken.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The scope holds more orders than `push.max_snapshot_orders`.
    #[error(
        "the snapshot would hold more than {max} orders (push.max_snapshot_orders); narrow the \
         subscription (orderId, customerId or partnerId) or resume from a retained cursor"
    )]
    TooMany { max: usize },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// The orders a subscription's filter covers, by its most selective key (the filter itself is
/// then applied to each snapshot event, as to live ones).
pub fn scope_of(filter: &EventFilter) -> OrderScope {
    if let Some(order_id) = &filter.order_id {
        OrderScope::Order(order_id.clone())
    } else if let Some(customer_id) = &filter.customer_id {
        OrderScope::Customer(customer_id.clone())
    } else if let Some(partner_id) = &filter.partner_id {
        OrderScope::Partner(partner_id.clone())
    } else {
        OrderScope::All
    }
}

/// The snapshot event of one order's current status: `type` `order.snapshot`, `occurredAt`
/// its `updatedAt`, and as `eventId` the cursor `position` (see [`take`] for which).
pub fn snapshot_event(status: StatusRecord, position: &LogCursor) -> LoggedEvent {
    let partitions = position.partitions();
    let partition = partition_of(&status.order_id, partitions);
    LoggedEvent {
        event_id: position.get(partition).to_string(),
        partition,
        cursor: (partitions > 1).then(|| position.to_string()),
        event: OrderEvent {
            event_type: SNAPSHOT_TYPE.to_string(),
            order_id: status.order_id,
            customer_id: status.customer_id,
            partner_id: status.partner_id,
            status: status.status,
            previous_status: None,
            version: status.version,
            occurred_at: status.updated_at,
            data: None,
        },
    }
}

/// How many times [`take`] reads a snapshot while the log moves under it.
const STABLE_READS: usize = 3;

/// The snapshot of `scope` taken after the live part was registered at `position`: every
/// order's current status as a snapshot event, refused whole beyond `max` orders; with the
/// log's end once it was read (past it, no event can be one the snapshot showed).
///
/// The snapshot is read again (up to [`STABLE_READS`] times) until the log did not move
/// during a read: that snapshot is exactly the state at the log's end, so its events carry
/// that end as `eventId`, and a client that resumes from it gets nothing the snapshot already
/// showed and misses nothing after it. When the log keeps moving, the last read is used and
/// its events carry `position`: a client resuming from it misses nothing, but may get again an
/// event the snapshot showed (its `version` tells).
pub async fn take<S: OrderStore + EventLog + ?Sized>(
    store: &S,
    scope: &OrderScope,
    max: usize,
    position: &LogCursor,
) -> Result<(Vec<LoggedEvent>, LogCursor), SnapshotError> {
    let mut start = store.log_end().await?;
    let mut reads = 0;
    loop {
        reads += 1;
        let statuses = match store.list_statuses(scope, max).await? {
            Listing::TooMany { max } => return Err(SnapshotError::TooMany { max }),
            Listing::Statuses(statuses) => statuses,
        };
        let end = store.log_end().await?;
        if end == start || reads == STABLE_READS {
            let id = if end == start { &end } else { position };
            let events = statuses
                .into_iter()
                .map(|status| snapshot_event(status, id))
                .collect();
            return Ok((events, end));
        }
        start = end;
    }
}

/// What a snapshot covers: per order, the version it showed. A live event of one of these
/// orders at or below that version happened before the snapshot was read, and is skipped.
#[derive(Debug, Clone, Default)]
pub struct Covered {
    versions: HashMap<String, u64>,
    /// The log's end taken after the snapshot was read: an event after it was appended after
    /// every read of the snapshot, so nothing past it can be covered and the map can go.
    until: LogCursor,
}

impl Covered {
    pub fn new(snapshot: &[LoggedEvent], until: LogCursor) -> Covered {
        Covered {
            versions: snapshot
                .iter()
                .map(|e| (e.event.order_id.clone(), e.event.version))
                .collect(),
            until,
        }
    }

    /// Whether the snapshot already showed `event` (or a later version of its order).
    pub fn covers(&self, event: &OrderEvent) -> bool {
        self.covers_version(&event.order_id, event.version)
    }

    /// Whether the snapshot already showed `version` of `order_id` (or a later one).
    pub fn covers_version(&self, order_id: &str, version: u64) -> bool {
        self.versions.get(order_id).is_some_and(|v| version <= *v)
    }

    /// Whether a reader at `position` is past everything the snapshot may cover.
    pub fn is_behind(&self, position: &LogCursor) -> bool {
        position.covers(&self.until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EventId, OrderStatus};

    fn status(order_id: &str, version: u64) -> StatusRecord {
        StatusRecord {
            order_id: order_id.into(),
            customer_id: "ann".into(),
            partner_id: Some("acme".into()),
            status: OrderStatus::Confirmed,
            version,
            updated_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn a_snapshot_event_shows_the_current_status_and_the_live_start_as_its_event_id() {
        let position = LogCursor::uniform(1, EventId { ms: 7, seq: 1 });
        let event = snapshot_event(status("o-1", 3), &position);
        assert_eq!(event.shown_id(), "7-1");
        assert_eq!(event.event.event_type, "order.snapshot");
        assert_eq!(event.event.version, 3);
        assert_eq!(event.event.occurred_at, "2026-01-01T00:00:00Z");
        let position = LogCursor::uniform(4, EventId { ms: 7, seq: 1 });
        let event = snapshot_event(status("o-1", 3), &position);
        assert_eq!(
            LogCursor::parse(event.shown_id(), 4).unwrap(),
            position,
            "with several partitions the eventId is the whole position"
        );
    }

    #[test]
    fn covered_skips_versions_the_snapshot_showed_and_keeps_later_ones() {
        let until = LogCursor::uniform(1, EventId { ms: 9, seq: 0 });
        let snapshot = [snapshot_event(status("o-1", 3), &until)];
        let covered = Covered::new(&snapshot, until.clone());
        let mut event = snapshot[0].event.clone();
        assert!(covered.covers(&event));
        event.version = 2;
        assert!(covered.covers(&event));
        event.version = 4;
        assert!(!covered.covers(&event));
        event.order_id = "o-2".into();
        event.version = 1;
        assert!(!covered.covers(&event));
        assert!(!covered.is_behind(&LogCursor::uniform(1, EventId { ms: 8, seq: 0 })));
        assert!(covered.is_behind(&until));
    }
}
