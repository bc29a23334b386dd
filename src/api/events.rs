//! `/v1/events`: the event log over HTTP. `GET` is a cursor feed (long-poll with `waitMs`) for
//! consumers that poll instead of subscribing; `POST` appends an event the way another
//! service's XADD would, validated first (admin only).

use super::problem::{ApiResult, Problem};
use super::{Node, json_object};
use crate::auth::Principal;
use crate::engine::LogEntry;
use crate::model::{EventId, OrderEvent};
use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

const MAX_LIMIT: usize = 1000;
const MAX_WAIT: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedQuery {
    /// Cursor: an event id, `0` for the oldest retained, `$` for "from now".
    after: Option<String>,
    limit: Option<usize>,
    wait_ms: Option<u64>,
}

/// `GET /v1/events?after=&limit=&waitMs=`: events after the cursor, oldest first, and the
/// cursor to ask with next. Partners and customers see only their own orders' events.
/// Malformed entries are skipped here (the event tail counts and sets them aside). A cursor
/// followed by entries the retention removed is refused with 410 `cursor-expired`.
pub async fn list_events(
    State(state): State<Node>,
    principal: Principal,
    Query(q): Query<FeedQuery>,
) -> ApiResult<Json<Value>> {
    let after = match q.after.as_deref() {
        None | Some("0") | Some("") => EventId::ZERO,
        Some("$") => state.engine.last_event_id().await?,
        Some(cursor) => cursor.parse::<EventId>().map_err(Problem::bad_request)?,
    };
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_LIMIT);
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0)).min(MAX_WAIT);
    let entries = state.engine.read_events(after, limit, wait).await?;
    // A cursor some of whose following entries were removed (trimmed by retention) is
    // answered 410, never with the entries after the gap as if nothing were missing. An entry
    // is trimmed only once `event_retention` newer ones are kept, so a read of at most that
    // many that came back short crossed no gap: only a full read needs the engine's word.
    let retention = state.config.engine.event_retention;
    let full = entries.len() >= limit || u64::try_from(limit).unwrap_or(u64::MAX) > retention;
    if after != EventId::ZERO
        && full
        && let Some(removed) = state.engine.removed_after(after).await?
    {
        let first = state.engine.first_event_id().await?;
        return Err(
            Problem::new(StatusCode::GONE, "cursor-expired", "Cursor expired").detail(format!(
                "Events after `{after}` were removed from the retained log (removed through \
                 `{removed}`; oldest retained: {}). Start again from `after=0` and reload \
                 state from GET /v1/orders/{{id}}.",
                first.map_or_else(|| "none".to_string(), |f| f.to_string())
            )),
        );
    }
    let mut next = after;
    let mut events = Vec::with_capacity(entries.len());
    for entry in entries {
        if let Ok(id) = entry.id() {
            next = next.max(id);
        }
        if let LogEntry::Event(e) = entry
            && principal.may_access_order(e.event.partner_id.as_deref(), &e.event.customer_id)
        {
            events.push(e);
        }
    }
    Ok(Json(json!({ "events": events, "next": next.to_string() })))
}

/// `POST /v1/events` (admin): appends a validated event, as an external producer would.
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
    let id = state.engine.append_raw_event(&event.to_json()).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "eventId": id.to_string() })),
    ))
}
