//! `/v1/webhooks`: partner endpoints, their secrets and their delivery log.
//!
//! Isolation works like orders: a partner key reaches only endpoints with its own partnerId
//! (another partner's endpoint answers 404, exactly like a missing one, so ids cannot be
//! probed); admin keys reach all and may create endpoints for any partner or for every order
//! (no partnerId); customer tokens get 403. A secret is returned once, by create and by
//! rotate-secret, and never in any other response or log line.
//!
//! Handlers live per resource, `endpoints.rs` and `deliveries.rs`; this file holds what both
//! need: who may see an endpoint, and the time format of the views.

pub(crate) mod deliveries;
pub(crate) mod endpoints;

pub use deliveries::{get_delivery, list_deliveries, recover, retry_delivery};
pub use endpoints::{
    create_endpoint, delete_endpoint, get_endpoint, list_endpoints, patch_endpoint, rotate_secret,
};

use super::Node;
use super::problem::{ApiResult, Problem};
use crate::auth::Principal;
use crate::engine::webhook::Endpoint;
use crate::model::rfc3339;
use serde_json::{Value, json};
use time::OffsetDateTime;

/// Stored times are epoch milliseconds; the API shows RFC 3339.
fn ms_to_rfc3339(ms: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(rfc3339)
        .unwrap_or_default()
}

/// Whether `principal` may see and change `endpoint`.
fn owns(principal: &Principal, endpoint: &Endpoint) -> bool {
    match principal {
        Principal::Admin => true,
        Principal::Partner { partner_id } => endpoint.partner_id.as_deref() == Some(partner_id),
        Principal::Customer { .. } => false,
    }
}

fn no_such_endpoint() -> Problem {
    Problem::not_found("No such webhook endpoint.")
}

/// The gaps in webhook dispatch (events trimmed from the log before any dispatcher read them)
/// found since `since_ms` and since the endpoint was created, oldest first: events the
/// endpoint may have missed and no retry or recovery can bring back. Shown so a partner can
/// reconcile instead of trusting a silent skip.
async fn lost_events_view(state: &Node, endpoint: &Endpoint, since_ms: u64) -> ApiResult<Value> {
    let from = since_ms.max(endpoint.created_at_ms);
    let lost: Vec<Value> = state
        .engine
        .lost_events()
        .await?
        .into_iter()
        .filter(|l| l.detected_at_ms >= from)
        .map(|l| {
            json!({
                "afterEventId": l.after_id,
                "beforeEventId": l.before_id,
                "count": l.count,
                "detectedAt": ms_to_rfc3339(l.detected_at_ms),
            })
        })
        .collect();
    Ok(Value::Array(lost))
}

/// The endpoint with this id, if the caller may see it; a foreign one is 404 like a missing one.
async fn visible_endpoint(state: &Node, principal: &Principal, id: &str) -> ApiResult<Endpoint> {
    super::refuse_customers(principal, "reach webhooks")?;
    match state.engine.endpoint(id).await? {
        Some(e) if owns(principal, &e) => Ok(e),
        _ => Err(no_such_endpoint()),
    }
}
