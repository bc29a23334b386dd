//! `/v1/events`: the event log over HTTP. `GET` is a cursor feed (long-poll with `waitMs`) for
//! consumers that poll instead of subscribing; `POST` appends an event the way another
//! service's XADD would, validated first (admin only).

use super::openapi::schemas::{EventPage, EventPublished};
use super::problem::{ApiResult, Problem};
use super::{Node, json_object};
use crate::auth::{Caller, Principal};
use crate::engine::{LogEntry, OrderScope, full_partitions};
use crate::model::{LogCursor, LoggedEvent, OrderEvent, qualified_entry_id};
use crate::resync::{Covered, SnapshotError};
use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

const MAX_LIMIT: usize = 1000;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct FeedQuery {
    /// Cursor: an `eventId` or a page's `next`, `0` for the oldest retained, `$` for "from
    /// now".
    after: Option<String>,
    /// At most this many events (1 to 1000; default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Long-poll: wait up to this many milliseconds (at most 30000) for a first event.
    #[param(maximum = 30000)]
    wait_ms: Option<u64>,
    /// `true`: with no `after`, or one older than the retained log (instead of 410), answer
    /// with a snapshot of the current statuses (`order.snapshot` events) and the events after
    /// it, marked `resynced: true`. More than `push.max_snapshot_orders` orders: 413.
    #[serde(default)]
    #[param(required = false)]
    resync: bool,
}

/// `GET /v1/events?after=&limit=&waitMs=`: events after the cursor, oldest first, and the
/// cursor to ask with next. Partners and customers see only their own orders' events.
/// Malformed entries are skipped here (the event tail counts and sets them aside). A cursor
/// followed by entries the retention removed is refused with 410 `cursor-expired`.
///
/// A request that would wait is a long-poll: served from the node's one shared wait (never a
/// blocking engine read of its own) and bounded per credential (429) and per node (503), see
/// `crate::longpoll`.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    summary = "Read the event log",
    description = "Events after the cursor, oldest first, and the cursor to ask with next (`0` or none: the oldest retained, `$`: now). With `waitMs` a long-poll, bounded per credential (429) and per node (503). Partners and customers see only their own orders' events. A cursor followed by entries the retention removed is 410 `cursor-expired`, unless `resync=true`: then (and with no `after`) the page starts with a snapshot of the current statuses as `order.snapshot` events, then the events after it, with `resynced: true`.",
    params(FeedQuery),
    responses(
        (status = 200, description = "Events after the cursor, oldest first, and the next cursor.", body = EventPage),
        (status = 400, description = "The cursor is not a cursor of this log.", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "`cursor-expired`: events after the cursor were removed by retention.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`snapshot-too-large`: a resync would snapshot more than `push.max_snapshot_orders` orders; narrow the credential or read the log from a cursor.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over this credential's rate limit or its long-polls (`Retry-After`).", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The node's long-polls are all taken, or the engine did not answer.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn list_events(
    State(state): State<Node>,
    caller: Caller,
    Query(q): Query<FeedQuery>,
) -> ApiResult<Json<Value>> {
    let principal = caller.principal;
    let partitions = state.engine.partitions();
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_LIMIT);
    if q.resync && q.after.is_none() {
        return resync(&state, &principal, limit).await.map(Json);
    }
    let after = match q.after.as_deref() {
        None | Some("0") | Some("") => LogCursor::start(partitions),
        Some("$") => state.engine.log_end().await?,
        Some(cursor) => LogCursor::parse(cursor, partitions).map_err(Problem::bad_request)?,
    };
    let wait =
        Duration::from_millis(q.wait_ms.unwrap_or(0)).min(state.config.http.long_poll_max_wait);
    let deadline = tokio::time::Instant::now() + wait;
    let mut after = after;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let entries = state
            .long_polls
            .read_events(&*state.engine, &caller.credential, &after, limit, left)
            .await?;
        match check_retained(&state, &after, &entries, limit).await {
            Err(expired) if q.resync && expired.status == StatusCode::GONE.as_u16() => {
                return resync(&state, &principal, limit).await.map(Json);
            }
            checked => checked?,
        }
        let (events, next) = page(entries, after.clone(), limit);
        let events: Vec<Value> = events
            .iter()
            .filter(|e| {
                principal.may_access_order(e.event.partner_id.as_deref(), &e.event.customer_id)
            })
            .map(|e| json!(e.with_event_id(e.shown_id())))
            .collect();
        // A long-poll answers when there is something this caller may see, not as soon as
        // the log moved: entries of other partners' (or customers') orders move its cursor on
        // and it goes on waiting, until its `waitMs` is over.
        if !events.is_empty() || left.is_zero() || next == after {
            return Ok(Json(json!({ "events": events, "next": next.to_string() })));
        }
        after = next;
    }
}

/// `GET /v1/events?resync=true` with no `after`, or one older than the retained log: the
/// current status of every order the caller may see, as `order.snapshot` events whose
/// `eventId` is the log position taken before the snapshot was read, then the events after
/// that position the snapshot did not already show (an order's version above the
/// snapshot's), read in pages of `limit` until past the log's end as it was once the snapshot
/// was read, and the `next` cursor after them: nothing missed, nothing twice. `resynced: true` says the answer starts with a snapshot. Beyond
/// `push.max_snapshot_orders` orders: 413 `snapshot-too-large`.
async fn resync(state: &Node, principal: &Principal, limit: usize) -> ApiResult<Value> {
    let position = state.engine.log_end().await?;
    let scope = match principal {
        Principal::Admin => OrderScope::All,
        Principal::Partner { partner_id } => OrderScope::Partner(partner_id.clone()),
        Principal::Customer { customer_id, .. } => OrderScope::Customer(customer_id.clone()),
    };
    let max = state.config.push.max_snapshot_orders;
    let (snapshot, until) = crate::resync::take(&*state.engine, &scope, max, &position)
        .await
        .map_err(|e| match e {
            SnapshotError::TooMany { .. } => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "snapshot-too-large",
                "Snapshot too large",
            )
            .detail(format!("Resync refused: {e}.")),
            SnapshotError::Engine(e) => e.into(),
        })?;
    let snapshot: Vec<LoggedEvent> = snapshot
        .into_iter()
        .filter(|e| principal.may_access_order(e.event.partner_id.as_deref(), &e.event.customer_id))
        .collect();
    // `until`, the log's end once every status was read: an event past it was appended after
    // the snapshot, so the snapshot cannot cover it. The answer reads at least up to there,
    // whatever `limit` says, so `next` is past every event the snapshot may cover and a
    // following page can never repeat what the snapshot showed.
    let covered = Covered::new(&snapshot, until.clone());
    let mut next = position;
    let mut live = Vec::new();
    while !next.covers(&until) {
        let entries = state
            .engine
            .read_events(&next, limit, Duration::ZERO)
            .await?;
        if entries.is_empty() {
            break;
        }
        let (events, after) = page(entries, next, limit);
        live.extend(events.into_iter().filter(|e| {
            !covered.covers(&e.event)
                && principal.may_access_order(e.event.partner_id.as_deref(), &e.event.customer_id)
        }));
        next = after;
    }
    let events: Vec<Value> = snapshot
        .iter()
        .chain(live.iter())
        .map(|e| json!(e.with_event_id(e.shown_id())))
        .collect();
    Ok(json!({ "events": events, "next": next.to_string(), "resynced": true }))
}

/// A cursor some of whose following entries were removed (trimmed by retention) is answered
/// 410, never with the entries after the gap as if nothing were missing. An entry is trimmed
/// only once `event_retention` newer ones are kept, so a read of at most that many that came
/// back short crossed no gap: only a full read needs the engine's word. Per partition: a read
/// takes up to `limit` from each.
async fn check_retained(
    state: &Node,
    after: &LogCursor,
    entries: &[LogEntry],
    limit: usize,
) -> ApiResult<()> {
    let retention = state.config.engine.event_retention;
    let any_may_have = u64::try_from(limit).unwrap_or(u64::MAX) > retention;
    let full = full_partitions(entries, limit);
    let removed = if !after.is_start() && (any_may_have || !full.is_empty()) {
        state.engine.removed_after(after).await?
    } else {
        Vec::new()
    };
    if let Some(&(partition, removed)) = removed
        .iter()
        .find(|(p, _)| any_may_have || full.contains(p))
    {
        let first = state.engine.first_event_id(partition).await?;
        return Err(
            Problem::new(StatusCode::GONE, "cursor-expired", "Cursor expired").detail(format!(
                "Events after `{after}` were removed from the retained log (removed through \
                 `{}`; oldest retained: {}). Start again from `after=0` and reload \
                 state from GET /v1/orders/{{id}}.",
                qualified_entry_id(partition, &removed.to_string()),
                first.map_or_else(
                    || "none".to_string(),
                    |f| qualified_entry_id(partition, &f.to_string())
                )
            )),
        );
    }
    Ok(())
}

/// The events of the first `limit` entries of one read from `after` (entries come oldest
/// first, so what is left over is read again next time), each with the cursor just after it
/// when the log has several partitions (its `eventId`; the entry id itself with one), and the
/// cursor after the entries taken (malformed ones included) for the next page.
fn page(
    mut entries: Vec<LogEntry>,
    after: LogCursor,
    limit: usize,
) -> (Vec<LoggedEvent>, LogCursor) {
    entries.truncate(limit);
    let mut next = after;
    let tokens = next.partitions() > 1;
    let mut events = Vec::with_capacity(entries.len());
    for entry in entries {
        if let Ok(id) = entry.id() {
            next.advance(entry.partition(), id);
        }
        if let LogEntry::Event(mut e) = entry {
            if tokens {
                e.cursor = Some(next.to_string());
            }
            events.push(e);
        }
    }
    (events, next)
}

/// `POST /v1/events` (admin): appends a validated event, as an external producer would.
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "events",
    summary = "Publish an event",
    description = "Admin keys only: appends an event in the documented form, as an external producer's XADD would; it fans out like Herald's own.",
    request_body(content = OrderEvent, description = "An event in the documented form (DESIGN 1.3), fanned out like Herald's own."),
    responses(
        (status = 202, description = "Appended to the log.", body = EventPublished),
        (status = 403, description = "Not an admin key.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn publish_event(
    State(state): State<Node>,
    principal: Principal,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if !principal.is_admin() {
        return Err(Problem::forbidden("Only admin keys may publish events."));
    }
    let body = json_object(&headers, body, state.config.http.max_json_depth)?;
    let raw = serde_json::to_string(&body).unwrap_or_default();
    let event = OrderEvent::parse(&raw)
        .map_err(|e| Problem::bad_request(format!("Not an event in the documented form: {e}")))?;
    let (partition, id) = state.engine.append_raw_event(&event.to_json()).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "eventId": qualified_entry_id(partition, &id.to_string()) })),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EventLog;
    use crate::testing::{PartitionedLog, event_json, order_in};

    #[tokio::test]
    async fn with_several_partitions_each_event_id_resumes_just_after_it() {
        let log = PartitionedLog::new(4);
        for n in 0..3 {
            for p in [3, 1, 0, 2] {
                log.append_raw_event(&event_json(&order_in(p, 4, n), 1))
                    .await
                    .unwrap();
            }
        }
        log.append_raw_event("{not json").await.unwrap();
        let start = LogCursor::start(4);
        let entries = log.read_events(&start, 5, Duration::ZERO).await.unwrap();
        let (events, next) = page(entries, start.clone(), 5);
        assert_eq!(events.len(), 5);
        for pair in events.windows(2) {
            let resume = LogCursor::parse(pair[0].shown_id(), 4).unwrap();
            let rest = log.read_events(&resume, 1, Duration::ZERO).await.unwrap();
            let LogEntry::Event(following) = &rest[0] else {
                panic!("an event follows");
            };
            assert_eq!(following.qualified_id(), pair[1].qualified_id());
        }
        assert_eq!(next.to_string(), events[4].shown_id());
        let json = serde_json::to_value(events[0].with_event_id(events[0].shown_id())).unwrap();
        assert!(
            json["eventId"].as_str().unwrap().starts_with("c1."),
            "{json}"
        );
        // The next page starts after the last entry read: every event, once.
        let all = log.read_events(&start, 100, Duration::ZERO).await.unwrap();
        let rest = log.read_events(&next, 100, Duration::ZERO).await.unwrap();
        assert_eq!(rest.len() + 5, all.len());
        // A read that ends on a malformed entry moves past it too.
        let (events, end) = page(rest.clone(), next.clone(), 100);
        assert_eq!(events.len(), 7);
        assert_eq!(end, log.log_end().await.unwrap());
        // A read that brought more than the limit (an engine may give up to `max` per
        // partition): the page takes the oldest `limit` and resumes after the last taken.
        let (events, short) = page(rest, next, 2);
        assert_eq!(events.len(), 2);
        assert_eq!(short.to_string(), events[1].shown_id());
    }

    #[test]
    fn with_one_partition_event_ids_and_next_are_entry_ids() {
        let entries = vec![crate::engine::log::decode_event(
            0,
            "17-2".into(),
            &event_json("o-1", 1),
        )];
        let (events, next) = page(entries, LogCursor::start(1), 100);
        assert_eq!(events[0].cursor, None);
        let json = serde_json::to_value(events[0].with_event_id(events[0].shown_id())).unwrap();
        assert_eq!(json["eventId"], "17-2");
        assert_eq!(json["orderId"], "o-1");
        assert_eq!(next.to_string(), "17-2");
    }
}
