//! The webhook store on Redis (DESIGN 1.5): endpoints, deliveries and their attempt logs, the
//! durable retry schedule, and the `webhooks` consumer group on the event log.
//!
//! Keys (P = `engine.key_prefix`, under the hash tag `{p0}` but for each partition's lost
//! list: the dispatch group and its gaps are per partition, on the partition's event stream,
//! while deliveries, their schedule and the endpoints are one store in `{p0}`):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `P{p0}:webhooks:endpoints` | hash | endpoint id -> endpoint (JSON) |
//! | `P{p0}:webhooks:health` | hash | endpoint health in plain fields: `<endpoint id>:enabled` (`1`/`0`), `:disabledReason`, `:failingSinceMs`, `:updatedAtMs` (of a disabling), put over the endpoint's JSON on read |
//! | `P{pk}:webhooks:lost` | list | gaps in partition k's webhook dispatch (JSON [`LostEvents`], ids within the partition's stream), the newest [`LOST_RANGES_KEPT`] |
//! | `P{p0}:webhooks:endpoints:version` | string | counter moved forward by every endpoint write (readers cache the endpoints against it) |
//! | `P{p0}:webhooks:delivery:<id>` | hash | one delivery, a field per attribute (scripts update fields in place) |
//! | `P{p0}:webhooks:attempts:<id>` | list | the delivery's attempts (JSON), oldest first, the newest [`ATTEMPTS_KEPT`] |
//! | `P{p0}:webhooks:by_endpoint:<endpoint id>` | zset | delivery ids scored by creation time (ms) |
//! | `P{p0}:webhooks:failed:<endpoint id>` | zset | failed delivery ids scored by creation time (ms) |
//! | `P{p0}:webhooks:schedule` | zset | delivery ids scored by due time (ms) |
//! | `P{p0}:webhooks:line:<endpoint id>:<order id>` | zset | the pending deliveries of one order to a `perOrder` endpoint, scored by the order's version: only the lowest is scheduled, the others wait (see [`OrderLine`]) |
//! | `P{p0}:webhooks:by_partner:<partner id>` | set | the partner's endpoint ids (its count against `max_endpoints_per_partner`) |
//! | `P{p0}:webhooks:by_partner_built` | string | the `by_partner` sets hold every endpoint (older endpoints are indexed once) |
//! | `P{p0}:webhooks:deleted` | set | deleted endpoints whose delivery records the retention sweep has yet to delete |
//!
//! Every change to more than one key is one script in `scripts/webhook_*.lua`. Times come from
//! the caller, never from Redis' clock, so both engines agree under test. This file never
//! decides delivery policy (what is due when, what disables an endpoint is the caller's and the
//! scripts' contract): it only moves data between Rust types and Redis.

use super::conn::{is_nogroup, map_err, within};
use super::reply::{corrupt, int, items, text};
use super::{RedisEngine, millis};
use crate::engine::EngineResult;
use crate::engine::webhook::*;
use crate::model::{EventId, qualified_entry_id};
use ::redis::Value;
use async_trait::async_trait;
use std::collections::HashMap;
use std::time::Duration;

/// Delivery states as stored in the delivery hash.
fn state_name(state: DeliveryState) -> &'static str {
    match state {
        DeliveryState::Pending => "pending",
        DeliveryState::Succeeded => "succeeded",
        DeliveryState::Failed => "failed",
    }
}

fn parse_state(name: &str) -> Option<DeliveryState> {
    match name {
        "pending" => Some(DeliveryState::Pending),
        "succeeded" => Some(DeliveryState::Succeeded),
        "failed" => Some(DeliveryState::Failed),
        _ => None,
    }
}

/// The hash arguments (field, value, ...) a new delivery is stored with.
fn delivery_hash(delivery: &Delivery, due_ms: Option<u64>) -> Vec<String> {
    let mut out = vec![
        "id".to_string(),
        delivery.id.clone(),
        "endpointId".into(),
        delivery.endpoint_id.clone(),
        "eventId".into(),
        delivery.event_id.clone(),
        "eventType".into(),
        delivery.event_type.clone(),
        "body".into(),
        delivery.body.clone(),
        "state".into(),
        state_name(delivery.state).into(),
        "attempts".into(),
        delivery.attempts.to_string(),
        "createdAtMs".into(),
        delivery.created_at_ms.to_string(),
        "updatedAtMs".into(),
        delivery.updated_at_ms.to_string(),
    ];
    if let Some(partner) = &delivery.partner_id {
        out.extend(["partnerId".to_string(), partner.clone()]);
    }
    if let Some(due) = due_ms {
        out.extend(["nextAttemptAtMs".to_string(), due.to_string()]);
    }
    if let Some(code) = delivery.last_status_code {
        out.extend(["lastStatusCode".to_string(), code.to_string()]);
    }
    if let Some(line) = &delivery.order_line {
        out.extend([
            "orderId".to_string(),
            line.order_id.clone(),
            "orderVersion".to_string(),
            line.version.to_string(),
        ]);
    }
    out
}

/// A delivery from its hash (`None` when the hash is empty: no such delivery).
fn parse_delivery(fields: &HashMap<String, String>) -> EngineResult<Option<Delivery>> {
    if fields.is_empty() {
        return Ok(None);
    }
    let id = fields.get("id").map_or("?", String::as_str);
    let text = |name: &str| {
        fields
            .get(name)
            .cloned()
            .ok_or_else(|| corrupt(format!("delivery {id}: hash has no `{name}` field")))
    };
    fn number<T: std::str::FromStr>(id: &str, name: &str, raw: &str) -> EngineResult<T> {
        raw.parse()
            .map_err(|_| corrupt(format!("delivery {id}: `{name}` is not a number: {raw}")))
    }
    let optional = |name: &str| -> EngineResult<Option<u64>> {
        fields
            .get(name)
            .map(|raw| number(id, name, raw))
            .transpose()
    };
    let state = text("state")?;
    Ok(Some(Delivery {
        id: text("id")?,
        endpoint_id: text("endpointId")?,
        partner_id: fields.get("partnerId").cloned(),
        event_id: text("eventId")?,
        event_type: text("eventType")?,
        body: text("body")?,
        state: parse_state(&state)
            .ok_or_else(|| corrupt(format!("delivery {id}: unknown state `{state}`")))?,
        attempts: number(id, "attempts", &text("attempts")?)?,
        created_at_ms: number(id, "createdAtMs", &text("createdAtMs")?)?,
        updated_at_ms: number(id, "updatedAtMs", &text("updatedAtMs")?)?,
        next_attempt_at_ms: optional("nextAttemptAtMs")?,
        last_status_code: fields
            .get("lastStatusCode")
            .map(|raw| number(id, "lastStatusCode", raw))
            .transpose()?,
        order_line: match fields.get("orderId") {
            None => None,
            Some(order_id) => Some(OrderLine {
                order_id: order_id.clone(),
                version: number(id, "orderVersion", &text("orderVersion")?)?,
            }),
        },
    }))
}

fn parse_endpoint(id: &str, json: &str) -> EngineResult<Endpoint> {
    serde_json::from_str(json)
        .map_err(|e| corrupt(format!("endpoint {id}: record does not decode: {e}")))
}

/// The health fields of one endpoint in the health hash, in the order [`merge_health`] takes.
const HEALTH_FIELDS: [&str; 4] = ["enabled", "disabledReason", "failingSinceMs", "updatedAtMs"];

/// Puts an endpoint's health fields (`enabled`, `disabledReason`, `failingSinceMs`,
/// `updatedAtMs`, as [`HEALTH_FIELDS`]) over its stored settings. No `enabled` field: the
/// endpoint was stored before health had fields of its own, and its JSON still holds it.
fn merge_health(endpoint: &mut Endpoint, health: [Option<String>; 4]) -> EngineResult<()> {
    let [enabled, reason, failing_since, updated_at] = health;
    let number = |name: &str, raw: Option<String>| -> EngineResult<Option<u64>> {
        raw.map(|raw| {
            raw.parse().map_err(|_| {
                corrupt(format!(
                    "endpoint {}: health `{name}` is not a number: {raw}",
                    endpoint.id
                ))
            })
        })
        .transpose()
    };
    if let Some(enabled) = enabled {
        endpoint.enabled = enabled == "1";
        endpoint.disabled_reason = reason;
        endpoint.failing_since_ms = number("failingSinceMs", failing_since)?;
    }
    if let Some(at) = number("updatedAtMs", updated_at)? {
        endpoint.updated_at_ms = at;
    }
    Ok(())
}

/// The endpoint webhook_update_endpoint.lua answers: `None` for no endpoint, else its record
/// with its health fields put over it.
fn updated_endpoint(id: &str, reply: &Value) -> EngineResult<Option<Endpoint>> {
    let bad = || corrupt("update-endpoint script returned an unexpected reply");
    let parts = match reply {
        Value::Nil => return Ok(None),
        Value::Boolean(false) => return Ok(None),
        other => items(other).ok_or_else(bad)?,
    };
    let [json, health @ ..] = parts else {
        return Err(bad());
    };
    let mut endpoint = parse_endpoint(id, &text(json).ok_or_else(bad)?)?;
    let health: Vec<Option<String>> = health.iter().map(text).collect();
    let health: [Option<String>; 4] = health.try_into().map_err(|_| bad())?;
    merge_health(&mut endpoint, health)?;
    Ok(Some(endpoint))
}

/// A sorted-set score (RESP2 text or RESP3 double) as whole milliseconds.
fn score_ms(value: &Value) -> Option<u64> {
    let score = match value {
        Value::Double(d) => *d,
        other => text(other)?.parse::<f64>().ok()?,
    };
    (score.is_finite() && score >= 0.0).then_some(score as u64)
}

impl RedisEngine {
    /// `webhook_create.lua`: stores and schedules `deliveries` and acknowledges `events` (the
    /// log entries they come from, as (partition, id)) in the dispatch group. Events of
    /// partition 0 (the only one by default) are acknowledged by the same script, in one step
    /// with the deliveries; another partition's stream is in another slot, so its events are
    /// acknowledged right after the deliveries are stored (a crash in between redelivers them,
    /// and stored delivery ids make the redo change nothing). With no delivery, the events are
    /// acknowledged with plain `XACK`s: nothing else to keep atomic. Returns how many new
    /// deliveries wait behind their order's line.
    async fn store_deliveries(
        &self,
        events: &[(usize, EventId)],
        deliveries: &[Delivery],
    ) -> EngineResult<usize> {
        let mut held = 0;
        let mut acks: Vec<Vec<String>> = vec![Vec::new(); self.keys.partitions()];
        for (k, id) in events {
            if let Some(ids) = acks.get_mut(*k) {
                ids.push(id.to_string());
            }
        }
        if !deliveries.is_empty() {
            let in_script = std::mem::take(&mut acks[0]);
            let mut invocation = self.scripts.webhook_create.prepare_invoke();
            invocation
                .key(&self.keys.webhook_schedule)
                .key(&self.keys.part(0).events)
                .arg(DISPATCH_GROUP)
                .arg(&self.keys.webhooks)
                .arg(in_script.len());
            for event in &in_script {
                invocation.arg(event);
            }
            invocation.arg(deliveries.len());
            for delivery in deliveries {
                let due = (delivery.state == DeliveryState::Pending).then(|| {
                    delivery
                        .next_attempt_at_ms
                        .unwrap_or(delivery.created_at_ms)
                });
                let hash = delivery_hash(delivery, due);
                invocation
                    .arg(&delivery.id)
                    .arg(&delivery.endpoint_id)
                    .arg(delivery.created_at_ms)
                    .arg(due.map(|d| d.to_string()).unwrap_or_default())
                    .arg(if delivery.state == DeliveryState::Failed {
                        "1"
                    } else {
                        "0"
                    })
                    .arg(
                        delivery
                            .order_line
                            .as_ref()
                            .map_or("", |line| line.order_id.as_str()),
                    )
                    .arg(delivery.order_line.as_ref().map_or(0, |line| line.version))
                    .arg(hash.len())
                    .arg(hash);
            }
            let reply = self.run_script("creating deliveries", &invocation).await?;
            held = int(&reply)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| corrupt("create-deliveries script returned an unexpected reply"))?;
        }
        let acked = futures_util::future::join_all(
            acks.iter()
                .enumerate()
                .filter(|(_, ids)| !ids.is_empty())
                .map(|(k, ids)| self.ack_events(k, ids)),
        )
        .await;
        acked.into_iter().collect::<EngineResult<()>>()?;
        Ok(held)
    }

    /// `XACK` of events of one partition in the dispatch group.
    async fn ack_events(&self, partition: usize, ids: &[String]) -> EngineResult<()> {
        let what = "acknowledging webhook events";
        let result: ::redis::RedisResult<Value> = self
            .query(
                what,
                ::redis::cmd("XACK")
                    .arg(&self.keys.part(partition).events)
                    .arg(DISPATCH_GROUP)
                    .arg(ids),
            )
            .await;
        match result {
            // The group vanished (Redis restarted empty): nothing is pending to acknowledge.
            Err(e) if is_nogroup(&e) => Ok(()),
            other => other.map(|_| ()).map_err(|e| map_err(what, e)),
        }
    }

    async fn reschedule(
        &self,
        what: &str,
        at_ms: u64,
        mode: &str,
        id: &str,
        since_ms: u64,
    ) -> EngineResult<usize> {
        let mut invocation = self.scripts.webhook_reschedule.prepare_invoke();
        invocation
            .key(&self.keys.webhook_schedule)
            .arg(&self.keys.webhooks)
            .arg(at_ms)
            .arg(crate::model::now_millis())
            .arg(mode)
            .arg(id)
            .arg(since_ms);
        let reply = self.run_script(what, &invocation).await?;
        int(&reply)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| corrupt(format!("{what}: unexpected script reply")))
    }
}

#[async_trait]
impl WebhookStore for RedisEngine {
    async fn put_endpoint(&self, endpoint: &Endpoint) -> EngineResult<()> {
        let json = serde_json::to_string(endpoint).map_err(corrupt)?;
        let mut invocation = self.scripts.webhook_put_endpoint.prepare_invoke();
        invocation
            .key(&self.keys.webhook_endpoints)
            .key(&self.keys.webhook_endpoints_version)
            .key(&self.keys.webhook_health)
            .arg(&endpoint.id)
            .arg(json)
            .arg(if endpoint.enabled { "1" } else { "0" })
            .arg(endpoint.disabled_reason.as_deref().unwrap_or(""))
            .arg(
                endpoint
                    .failing_since_ms
                    .map(|ms| ms.to_string())
                    .unwrap_or_default(),
            )
            .arg(endpoint.partner_id.as_deref().unwrap_or(""))
            .arg(&self.keys.webhooks);
        self.run_script("storing an endpoint", &invocation).await?;
        Ok(())
    }

    async fn create_endpoint(
        &self,
        endpoint: &Endpoint,
        max_per_partner: u32,
    ) -> EngineResult<EndpointCreation> {
        let json = serde_json::to_string(endpoint).map_err(corrupt)?;
        let mut invocation = self.scripts.webhook_create_endpoint.prepare_invoke();
        invocation
            .key(&self.keys.webhook_endpoints)
            .key(&self.keys.webhook_endpoints_version)
            .key(&self.keys.webhook_health)
            .key(&self.keys.webhook_by_partner_built)
            .arg(&endpoint.id)
            .arg(json)
            .arg(endpoint.partner_id.as_deref().unwrap_or(""))
            .arg(max_per_partner)
            .arg(&self.keys.webhooks)
            .arg(if endpoint.enabled { "1" } else { "0" })
            .arg(endpoint.disabled_reason.as_deref().unwrap_or(""));
        let reply = self.run_script("creating an endpoint", &invocation).await?;
        let bad = || corrupt("create-endpoint script returned an unexpected reply");
        let parts = items(&reply).ok_or_else(bad)?;
        match (parts.first().and_then(text).as_deref(), parts.get(1)) {
            (Some("created"), _) => Ok(EndpointCreation::Created),
            (Some("limit"), Some(count)) => Ok(EndpointCreation::LimitReached {
                count: int(count)
                    .and_then(|n| u64::try_from(n).ok())
                    .ok_or_else(bad)?,
            }),
            _ => Err(bad()),
        }
    }

    async fn patch_endpoint(
        &self,
        id: &str,
        patch: &EndpointPatch,
    ) -> EngineResult<Option<Endpoint>> {
        let json = |value: serde_json::Value| value.to_string();
        let mut settings: Vec<(&str, String)> = Vec::new();
        if let Some(url) = &patch.url {
            settings.push(("url", json(url.as_str().into())));
        }
        if let Some(types) = &patch.event_types {
            settings.push(("eventTypes", json(types.clone().into())));
        }
        if let Some(description) = &patch.description {
            settings.push(("description", json(description.clone().into())));
        }
        if let Some(rate) = patch.rate_limit_per_second {
            settings.push(("rateLimitPerSecond", json(rate.into())));
        }
        if let Some(in_flight) = patch.max_in_flight {
            settings.push(("maxInFlight", json(in_flight.into())));
        }
        if let Some(ordering) = patch.ordering {
            let value = serde_json::to_value(ordering)
                .map_err(|e| corrupt(format!("endpoint {id}: ordering does not encode: {e}")))?;
            settings.push(("ordering", json(value)));
        }
        let mut invocation = self.scripts.webhook_update_endpoint.prepare_invoke();
        invocation
            .key(&self.keys.webhook_endpoints)
            .key(&self.keys.webhook_endpoints_version)
            .key(&self.keys.webhook_health)
            .arg(id)
            .arg(patch.updated_at_ms)
            .arg("patch")
            .arg(match patch.enabled {
                None => "",
                Some(true) => "1",
                Some(false) => "0",
            })
            .arg(DISABLED_BY_USER)
            .arg(settings.len());
        for (name, value) in &settings {
            invocation.arg(*name).arg(value);
        }
        let reply = self.run_script("changing an endpoint", &invocation).await?;
        updated_endpoint(id, &reply)
    }

    async fn rotate_secret(
        &self,
        id: &str,
        secret: &str,
        now_ms: u64,
        previous_expires_at_ms: u64,
    ) -> EngineResult<Option<Endpoint>> {
        let mut invocation = self.scripts.webhook_update_endpoint.prepare_invoke();
        invocation
            .key(&self.keys.webhook_endpoints)
            .key(&self.keys.webhook_endpoints_version)
            .key(&self.keys.webhook_health)
            .arg(id)
            .arg(now_ms)
            .arg("rotate")
            .arg(secret)
            .arg(previous_expires_at_ms);
        let reply = self
            .run_script("rotating an endpoint's secret", &invocation)
            .await?;
        updated_endpoint(id, &reply)
    }

    async fn sweep_targets(&self) -> EngineResult<Vec<String>> {
        let mut pipe = ::redis::pipe();
        pipe.cmd("HKEYS").arg(&self.keys.webhook_endpoints);
        pipe.cmd("SMEMBERS").arg(&self.keys.webhook_deleted);
        let what = "listing endpoints to sweep";
        let mut conn = self.conn.clone();
        let (live, deleted): (Vec<String>, Vec<String>) =
            within(what, self.op_timeout, pipe.query_async(&mut conn))
                .await
                .map_err(|e| map_err(what, e))?;
        let mut out: Vec<String> = live.into_iter().chain(deleted).collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn sweep_deliveries(
        &self,
        endpoint_id: &str,
        created_before_ms: u64,
        max: usize,
    ) -> EngineResult<usize> {
        let mut invocation = self.scripts.webhook_sweep.prepare_invoke();
        invocation
            .key(&self.keys.webhook_schedule)
            .key(&self.keys.webhook_endpoints)
            .key(&self.keys.webhook_deleted)
            .arg(&self.keys.webhooks)
            .arg(endpoint_id)
            .arg(created_before_ms)
            .arg(max);
        let reply = self
            .run_script("sweeping delivery records", &invocation)
            .await?;
        int(&reply)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| corrupt("sweep script returned an unexpected reply"))
    }

    async fn endpoint(&self, id: &str) -> EngineResult<Option<Endpoint>> {
        let mut pipe = ::redis::pipe();
        pipe.cmd("HGET").arg(&self.keys.webhook_endpoints).arg(id);
        pipe.cmd("HMGET")
            .arg(&self.keys.webhook_health)
            .arg(HEALTH_FIELDS.map(|f| format!("{id}:{f}")).to_vec());
        let what = "reading an endpoint";
        let mut conn = self.conn.clone();
        let (json, health): (Option<String>, Vec<Option<String>>) =
            within(what, self.op_timeout, pipe.query_async(&mut conn))
                .await
                .map_err(|e| map_err(what, e))?;
        let Some(json) = json else {
            return Ok(None);
        };
        let mut endpoint = parse_endpoint(id, &json)?;
        let health: [Option<String>; 4] = health
            .try_into()
            .map_err(|_| corrupt("HMGET of endpoint health returned an unexpected reply"))?;
        merge_health(&mut endpoint, health)?;
        Ok(Some(endpoint))
    }

    async fn endpoints(&self) -> EngineResult<Vec<Endpoint>> {
        let mut pipe = ::redis::pipe();
        pipe.cmd("HGETALL").arg(&self.keys.webhook_endpoints);
        pipe.cmd("HGETALL").arg(&self.keys.webhook_health);
        let what = "listing endpoints";
        let mut conn = self.conn.clone();
        let (all, mut health): (HashMap<String, String>, HashMap<String, String>) =
            within(what, self.op_timeout, pipe.query_async(&mut conn))
                .await
                .map_err(|e| map_err(what, e))?;
        let mut out = Vec::with_capacity(all.len());
        for (id, json) in all {
            let fields = HEALTH_FIELDS.map(|f| health.remove(&format!("{id}:{f}")));
            match parse_endpoint(&id, &json).and_then(|mut endpoint| {
                merge_health(&mut endpoint, fields)?;
                Ok(endpoint)
            }) {
                Ok(endpoint) => out.push(endpoint),
                // One unreadable record must not stop deliveries to every other endpoint.
                Err(e) => tracing::error!(endpoint_id = %id, error = %e, "endpoint skipped"),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn endpoints_version(&self) -> EngineResult<u64> {
        let version: Option<u64> = self
            .run(
                "reading the endpoints version",
                ::redis::cmd("GET").arg(&self.keys.webhook_endpoints_version),
            )
            .await?;
        Ok(version.unwrap_or(0))
    }

    async fn delete_endpoint(&self, id: &str) -> EngineResult<bool> {
        let mut invocation = self.scripts.webhook_delete_endpoint.prepare_invoke();
        invocation
            .key(&self.keys.webhook_endpoints)
            .key(&self.keys.webhook_schedule)
            .key(&self.keys.webhook_endpoints_version)
            .key(&self.keys.webhook_health)
            .key(&self.keys.webhook_deleted)
            .arg(id)
            .arg(&self.keys.webhooks);
        let reply = self.run_script("deleting an endpoint", &invocation).await?;
        match int(&reply) {
            Some(n) => Ok(n == 1),
            None => Err(corrupt(
                "delete-endpoint script returned an unexpected reply",
            )),
        }
    }

    async fn claim_events(
        &self,
        consumer: &str,
        max: usize,
        wait: Duration,
        reclaim_after: Duration,
    ) -> EngineResult<ClaimedEvents> {
        if max == 0 {
            return Ok(ClaimedEvents::default());
        }
        let deadline = tokio::time::Instant::now() + wait;
        // An entry handed out to a node that died becomes reclaimable while this call waits,
        // and only XAUTOCLAIM notices: wait in slices. XAUTOCLAIM itself runs at most every
        // quarter `reclaim_after` (`dispatch_reclaim_due`), not before every read.
        let slice = (reclaim_after / 4).max(Duration::from_millis(50));
        // A cluster cannot wait on every partition in one read: it polls (see groups.rs).
        let mut pause = super::POLL_FIRST;
        loop {
            let mut entries = if self.dispatch_reclaim_due(reclaim_after) {
                self.reclaim_events(consumer, max, reclaim_after).await?
            } else {
                Vec::new()
            };
            let mut lost = Vec::new();
            if entries.len() < max {
                let (fresh, gaps, last) =
                    self.read_new_events(consumer, max - entries.len()).await?;
                entries.extend(fresh);
                lost = gaps;
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                if entries.is_empty() && lost.is_empty() && !remaining.is_zero() {
                    let came = self
                        .wait_for_events(&last, remaining.min(slice), pause)
                        .await?;
                    pause = super::next_poll_pause(pause);
                    if !came && tokio::time::Instant::now() >= deadline {
                        // Nothing came in the whole wait: no need to read again.
                        return Ok(ClaimedEvents::default());
                    }
                    continue;
                }
            }
            return Ok(ClaimedEvents { entries, lost });
        }
    }

    /// Every partition's record, oldest first.
    async fn lost_events(&self) -> EngineResult<Vec<LostEvents>> {
        let lists =
            futures_util::future::join_all((0..self.keys.partitions()).map(|k| async move {
                self.run::<Vec<String>>(
                    "reading lost event ranges",
                    ::redis::cmd("LRANGE")
                        .arg(&self.keys.part(k).webhook_lost)
                        .arg(0)
                        .arg(-1),
                )
                .await
            }))
            .await;
        let mut out = Vec::new();
        for (k, raw) in lists.into_iter().enumerate() {
            for json in raw? {
                match serde_json::from_str::<LostEvents>(&json) {
                    Ok(mut lost) => {
                        // The script records ids within the partition's stream.
                        if k > 0 && !lost.after_id.contains('/') {
                            lost.after_id = qualified_entry_id(k, &lost.after_id);
                            lost.before_id = qualified_entry_id(k, &lost.before_id);
                        }
                        out.push(lost);
                    }
                    Err(e) => tracing::warn!(error = %e, "lost event range does not decode"),
                }
            }
        }
        out.sort_by_key(|l| l.detected_at_ms);
        if out.len() > LOST_RANGES_KEPT {
            out.drain(..out.len() - LOST_RANGES_KEPT);
        }
        Ok(out)
    }

    async fn create_deliveries(
        &self,
        events: &[(usize, EventId)],
        deliveries: &[Delivery],
    ) -> EngineResult<usize> {
        self.store_deliveries(events, deliveries).await
    }

    async fn enqueue_deliveries(&self, deliveries: &[Delivery]) -> EngineResult<()> {
        self.store_deliveries(&[], deliveries).await.map(|_| ())
    }

    async fn claim_due(&self, now_ms: u64, max: usize, lease: Duration) -> EngineResult<DueBatch> {
        if max == 0 {
            return Ok(DueBatch::default());
        }
        let mut invocation = self.scripts.webhook_claim_due.prepare_invoke();
        invocation
            .key(&self.keys.webhook_schedule)
            .key(&self.keys.webhook_endpoints)
            .key(&self.keys.webhook_endpoints_version)
            .arg(now_ms)
            .arg(max)
            .arg(now_ms.saturating_add(millis(lease)))
            .arg(&self.keys.webhooks);
        let reply = self
            .run_script("claiming due deliveries", &invocation)
            .await?;
        let bad = || corrupt("claim-due script returned an unexpected reply");
        let [version, due] = items(&reply).ok_or_else(bad)? else {
            return Err(bad());
        };
        let number = |v: &Value| text(v).and_then(|t| t.parse::<u64>().ok());
        let mut out = DueBatch {
            endpoints_version: number(version).ok_or_else(bad)?,
            due: Vec::new(),
        };
        for item in items(due).ok_or_else(bad)? {
            let [id, endpoint, attempts, due_ms, ordered] = items(item).ok_or_else(bad)? else {
                return Err(bad());
            };
            let ordered = text(ordered).ok_or_else(bad)?;
            out.due.push(DueDelivery {
                id: text(id).ok_or_else(bad)?,
                endpoint_id: text(endpoint).ok_or_else(bad)?,
                attempts: number(attempts)
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(bad)?,
                due_ms: score_ms(due_ms).ok_or_else(bad)?,
                ordered_event_id: (!ordered.is_empty()).then_some(ordered),
            });
        }
        Ok(out)
    }

    async fn ordered_turn(
        &self,
        delivery_id: &str,
        event_id: &str,
        now_ms: u64,
    ) -> EngineResult<OrderedTurn> {
        // `<partition>/<entry id>` outside partition 0 (model::qualified_entry_id).
        let (partition, entry) = match event_id.split_once('/') {
            Some((k, entry)) => (k.parse::<usize>().unwrap_or(usize::MAX), entry),
            None => (0, event_id),
        };
        if partition < self.keys.partitions() && entry.parse::<EventId>().is_ok() {
            let what = "reading the webhook dispatch group's pending events";
            let pending: ::redis::RedisResult<Value> = self
                .query(
                    what,
                    ::redis::cmd("XPENDING")
                        .arg(&self.keys.part(partition).events)
                        .arg(DISPATCH_GROUP)
                        .arg("-")
                        .arg(format!("({entry}"))
                        .arg(1),
                )
                .await;
            match pending {
                Ok(reply) if items(&reply).is_some_and(|earlier| !earlier.is_empty()) => {
                    return Ok(OrderedTurn::EarlierEventsPending);
                }
                Ok(_) => {}
                // The group vanished (Redis restarted empty): nothing is pending.
                Err(e) if is_nogroup(&e) => {}
                Err(e) => return Err(map_err(what, e)),
            }
        }
        let mut invocation = self.scripts.webhook_ordered_turn.prepare_invoke();
        invocation
            .key(&self.keys.webhook_schedule)
            .arg(&self.keys.webhooks)
            .arg(delivery_id)
            .arg(now_ms);
        let reply = self
            .run_script("checking an ordered delivery's turn", &invocation)
            .await?;
        match int(&reply) {
            Some(0) => Ok(OrderedTurn::Ready),
            Some(1) => Ok(OrderedTurn::Yielded),
            _ => Err(corrupt("ordered-turn script returned an unexpected reply")),
        }
    }

    async fn delivery_bodies(&self, ids: &[String]) -> EngineResult<Vec<Option<String>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = ::redis::pipe();
        for id in ids {
            pipe.cmd("HGET")
                .arg(self.keys.webhook_delivery(id))
                .arg("body");
        }
        let what = "reading delivery bodies";
        let mut conn = self.conn.clone();
        within(what, self.op_timeout, pipe.query_async(&mut conn))
            .await
            .map_err(|e| map_err(what, e))
    }

    async fn next_due_ms(&self) -> EngineResult<Option<u64>> {
        let reply: Value = self
            .run(
                "reading the next due time",
                ::redis::cmd("ZRANGE")
                    .arg(&self.keys.webhook_schedule)
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES"),
            )
            .await?;
        let bad = || corrupt("ZRANGE WITHSCORES returned an unexpected reply");
        let parts = items(&reply).ok_or_else(bad)?;
        // RESP2: [member, score]; RESP3: [[member, score]].
        let score = match parts {
            [] => return Ok(None),
            [pair] => items(pair).and_then(|p| p.get(1)).ok_or_else(bad)?,
            [_, score] => score,
            _ => return Err(bad()),
        };
        score_ms(score).map(Some).ok_or_else(bad)
    }

    async fn finish_attempts(
        &self,
        finished: &[FinishedAttempt],
        disable_after: Duration,
    ) -> EngineResult<Vec<EndpointHealth>> {
        if finished.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.scripts.webhook_finish.prepare_invoke();
        invocation
            .key(&self.keys.webhook_schedule)
            .key(&self.keys.webhook_endpoints)
            .key(&self.keys.webhook_endpoints_version)
            .key(&self.keys.webhook_health)
            .arg(&self.keys.webhooks)
            .arg(ATTEMPTS_KEPT)
            .arg(u64::try_from(disable_after.as_millis()).unwrap_or(u64::MAX))
            .arg(failing_too_long_reason(disable_after))
            .arg(finished.len());
        for f in finished {
            let (name, retry_at, gone_reason) = match &f.outcome {
                AttemptOutcome::Succeeded => ("succeeded", 0, ""),
                AttemptOutcome::RetryAt(at_ms) => ("retry", *at_ms, ""),
                AttemptOutcome::Failed => ("failed", 0, ""),
                AttemptOutcome::Gone(reason) => ("gone", 0, reason.as_str()),
            };
            invocation
                .arg(&f.delivery_id)
                .arg(serde_json::to_string(&f.attempt).map_err(corrupt)?)
                .arg(f.attempt.at_ms)
                .arg(
                    f.attempt
                        .status_code
                        .map(|c| c.to_string())
                        .unwrap_or_default(),
                )
                .arg(name)
                .arg(retry_at)
                .arg(gone_reason);
        }
        let reply = self.run_script("finishing attempts", &invocation).await?;
        let bad = || corrupt("finish-attempts script returned an unexpected reply");
        let results = items(&reply).ok_or_else(bad)?;
        if results.len() != finished.len() {
            return Err(bad());
        }
        let mut out = Vec::with_capacity(results.len());
        for (f, result) in finished.iter().zip(results) {
            let parts = items(result).ok_or_else(bad)?;
            out.push(
                match (parts.first().and_then(text).as_deref(), parts.get(1)) {
                    (Some("unchanged"), _) => EndpointHealth::Unchanged,
                    (Some("disabled"), Some(reason)) => EndpointHealth::Disabled {
                        reason: text(reason).ok_or_else(bad)?,
                    },
                    (Some("corrupt"), Some(what)) => {
                        // The others of the batch are recorded; this one cannot be.
                        tracing::error!(delivery_id = %f.delivery_id,
                            what = %text(what).unwrap_or_default(), "attempt not recorded: the delivery is damaged");
                        EndpointHealth::Unchanged
                    }
                    _ => return Err(bad()),
                },
            );
        }
        Ok(out)
    }

    async fn delivery(&self, id: &str) -> EngineResult<Option<Delivery>> {
        let fields: HashMap<String, String> = self
            .run(
                "reading a delivery",
                ::redis::cmd("HGETALL").arg(self.keys.webhook_delivery(id)),
            )
            .await?;
        parse_delivery(&fields)
    }

    async fn attempts(&self, delivery_id: &str) -> EngineResult<Vec<Attempt>> {
        let raw: Vec<String> = self
            .run(
                "reading attempts",
                ::redis::cmd("LRANGE")
                    .arg(self.keys.webhook_attempts(delivery_id))
                    .arg(0)
                    .arg(-1),
            )
            .await?;
        let mut out = Vec::with_capacity(raw.len());
        for json in raw {
            match serde_json::from_str::<Attempt>(&json) {
                Ok(attempt) => out.push(attempt),
                // One unreadable entry must not hide the others.
                Err(e) => tracing::warn!(%delivery_id, error = %e, "attempt does not decode"),
            }
        }
        Ok(out)
    }

    async fn deliveries(
        &self,
        endpoint_id: &str,
        limit: usize,
        before_ms: Option<u64>,
    ) -> EngineResult<Vec<Delivery>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = self
            .run(
                "listing deliveries",
                ::redis::cmd("ZREVRANGEBYSCORE")
                    .arg(self.keys.webhook_by_endpoint(endpoint_id))
                    .arg(before_ms.map_or("+inf".to_string(), |b| format!("({b}")))
                    .arg("-inf")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit),
            )
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = ::redis::pipe();
        for id in &ids {
            pipe.cmd("HGETALL").arg(self.keys.webhook_delivery(id));
        }
        let what = "reading deliveries";
        let mut conn = self.conn.clone();
        let hashes: Vec<HashMap<String, String>> =
            within(what, self.op_timeout, pipe.query_async(&mut conn))
                .await
                .map_err(|e| map_err(what, e))?;
        let mut out = Vec::with_capacity(hashes.len());
        for fields in &hashes {
            out.extend(parse_delivery(fields)?);
        }
        Ok(out)
    }

    async fn retry_delivery(&self, delivery_id: &str, at_ms: u64) -> EngineResult<bool> {
        let n = self
            .reschedule("retrying a delivery", at_ms, "one", delivery_id, 0)
            .await?;
        Ok(n == 1)
    }

    async fn recover_failed(
        &self,
        endpoint_id: &str,
        since_ms: u64,
        at_ms: u64,
    ) -> EngineResult<usize> {
        self.reschedule(
            "recovering failed deliveries",
            at_ms,
            "failed",
            endpoint_id,
            since_ms,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineError;

    fn delivery() -> Delivery {
        Delivery {
            id: "msg_1".into(),
            endpoint_id: "ep_1".into(),
            partner_id: Some("acme".into()),
            event_id: "1-0".into(),
            event_type: "order.shipped".into(),
            body: "{\"a\":\"é\"}".into(),
            state: DeliveryState::Pending,
            attempts: 2,
            created_at_ms: 1_764_213_743_123,
            updated_at_ms: 1_764_213_743_124,
            next_attempt_at_ms: Some(1_764_213_743_200),
            last_status_code: Some(503),
            order_line: Some(OrderLine {
                order_id: "o:1".into(),
                version: 7,
            }),
        }
    }

    #[test]
    fn delivery_hash_round_trips() {
        let d = delivery();
        let hash = delivery_hash(&d, d.next_attempt_at_ms);
        let fields: HashMap<String, String> = hash
            .chunks(2)
            .map(|p| (p[0].clone(), p[1].clone()))
            .collect();
        assert_eq!(parse_delivery(&fields).unwrap(), Some(d));
        assert_eq!(parse_delivery(&HashMap::new()).unwrap(), None);
    }

    #[test]
    fn a_damaged_delivery_hash_is_corrupt_not_a_panic() {
        let d = delivery();
        let mut fields: HashMap<String, String> = delivery_hash(&d, None)
            .chunks(2)
            .map(|p| (p[0].clone(), p[1].clone()))
            .collect();
        fields.insert("attempts".into(), "many".into());
        assert!(matches!(
            parse_delivery(&fields),
            Err(EngineError::Corrupt(_))
        ));
        fields.remove("attempts");
        assert!(matches!(
            parse_delivery(&fields),
            Err(EngineError::Corrupt(_))
        ));
    }

    #[test]
    fn scores_read_in_both_protocols() {
        assert_eq!(
            score_ms(&Value::BulkString(b"1764213743123".to_vec())),
            Some(1_764_213_743_123)
        );
        assert_eq!(score_ms(&Value::Double(250.0)), Some(250));
        assert_eq!(score_ms(&Value::BulkString(b"nope".to_vec())), None);
    }
}
