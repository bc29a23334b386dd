//! Operational webhooks, in the manner of Svix's: notices about Herald's own handling of an
//! endpoint, today `endpoint.disabled`. They are not order events, so they are not on the event
//! log and never pass through the dispatcher; once enqueued they are ordinary deliveries,
//! signed, sent and retried by the sender like any other.
//!
//! This module builds a notice's deliveries and enqueues them; it never sends anything.

use crate::engine::EngineResult;
use crate::engine::webhook::{Delivery, Endpoint, WebhookStore};
use crate::model::EventId;
use crate::webhooks::dispatcher::{new_delivery, type_matches};

/// The type of the notice sent when an endpoint is disabled.
pub const ENDPOINT_DISABLED: &str = "endpoint.disabled";

/// The `endpoint.disabled` notice: when an endpoint is disabled (410 Gone, or failing for
/// `disable_after`), the owner's other enabled endpoints that want `endpoint.disabled` (no
/// `eventTypes`, `*`, `endpoint.*` or the exact type) and the admin endpoints receive
/// `{"type":"endpoint.disabled","timestamp","data":{endpointId, partnerId, url, reason,
/// disabledAt}}`.
///
/// A notice has no log entry, so its deliveries carry a notice id in the place of an event
/// id: `endpoint.disabled:<endpoint id>:<ms>`. Delivery ids derive from it as from an event
/// id, so one notice never makes two deliveries to the same endpoint, and a later disabling of
/// the same endpoint is a new notice.
pub fn disabled_notice(
    disabled: &Endpoint,
    reason: &str,
    endpoints: &[Endpoint],
    now_ms: u64,
) -> Vec<Delivery> {
    let at = crate::model::now_rfc3339();
    let notice_id = format!("{ENDPOINT_DISABLED}:{}:{now_ms}", disabled.id);
    let body = serde_json::json!({
        "type": ENDPOINT_DISABLED,
        "timestamp": at,
        "data": {
            "endpointId": disabled.id,
            "partnerId": disabled.partner_id,
            "url": disabled.url,
            "reason": reason,
            "disabledAt": at,
        },
    })
    .to_string();
    endpoints
        .iter()
        .filter(|e| {
            e.enabled
                && e.id != disabled.id
                && e.partner_id
                    .as_deref()
                    .is_none_or(|own| disabled.partner_id.as_deref() == Some(own))
                && type_matches(&e.event_types, ENDPOINT_DISABLED)
        })
        .map(|endpoint| new_delivery(endpoint, &notice_id, ENDPOINT_DISABLED, &body, now_ms))
        .collect()
}

/// Enqueues the `endpoint.disabled` notice of `disabled` for the endpoints that want it;
/// `true` when it created any delivery (the sender should be woken).
pub async fn enqueue_endpoint_disabled<S: WebhookStore + ?Sized>(
    store: &S,
    disabled: &Endpoint,
    reason: &str,
    now_ms: u64,
) -> EngineResult<bool> {
    let endpoints = store.endpoints().await?;
    let notices = disabled_notice(disabled, reason, &endpoints, now_ms);
    if notices.is_empty() {
        return Ok(false);
    }
    enqueue(store, &notices).await?;
    Ok(true)
}

/// Stores operational deliveries and schedules them. The store only knows deliveries that
/// belong to a log entry (`create_deliveries` acknowledges the entry in the same step); no
/// entry stands behind a notice, so it is given the zero id, which no entry has, and
/// acknowledging it changes nothing.
async fn enqueue<S: WebhookStore + ?Sized>(store: &S, notices: &[Delivery]) -> EngineResult<()> {
    store.create_deliveries(EventId::ZERO, notices).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhooks::dispatcher::tests::endpoint;

    #[test]
    fn disabled_notice_goes_to_the_owners_other_endpoints_and_admin_endpoints_only() {
        let gone = endpoint("ep_gone", Some("acme"), &[]);
        let endpoints = vec![
            gone.clone(),
            endpoint("ep_acme_ops", Some("acme"), &["endpoint.*"]),
            endpoint("ep_acme_orders", Some("acme"), &["order.*"]),
            endpoint("ep_globex", Some("globex"), &[]),
            endpoint("ep_admin", None, &[]),
        ];
        let notices = disabled_notice(&gone, "410 Gone", &endpoints, 42);
        let to: Vec<&str> = notices.iter().map(|d| d.endpoint_id.as_str()).collect();
        assert_eq!(to, ["ep_acme_ops", "ep_admin"]);
        let body: serde_json::Value = serde_json::from_str(&notices[0].body).unwrap();
        assert_eq!(body["type"], "endpoint.disabled");
        assert_eq!(body["data"]["endpointId"], "ep_gone");
        assert_eq!(body["data"]["reason"], "410 Gone");
        assert_ne!(notices[0].id, notices[1].id);
    }
}
