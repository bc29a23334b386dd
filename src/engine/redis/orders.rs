//! Orders on Redis: the order hash (status, and the capped history as fields `h:<version>`),
//! and the accept, enqueue and apply scripts that write it together with the event and the
//! queue.
//!
//! The history lives in the order hash so that a status change writes status and history with
//! one HSET (and, past `history_limit`, one HDEL of the oldest entry) instead of an RPUSH and
//! an LTRIM on a list of its own. Orders written before kept their history in the list
//! `P{p0}:history:<id>`: [`OrderStore::order`] still reads that list and merges it with the
//! hash fields (by version, the hash winning), so those orders read as before; nothing migrates
//! them, and their list keeps its last entries until the order's key is deleted.
//!
//! A completion's workflow step writes (step records, open wait, follow-up command or timer,
//! heartbeat timer) ride on the same `apply.lua` call as its status change; `steps.rs` encodes and reads them.
//!
//! It owns the mapping between orders and their keys. It never decides a transition: the
//! worker hands it the decided [`StatusChange`], and the scripts only check the version and
//! the per-order FIFO gate.

use super::conn::{map_err, within};
use super::groups::GROUP;
use super::idempotency::done_record;
use super::intake::IntakeRequest;
use super::reply::{corrupt, int, items, text};
use super::steps::{step_args, step_records};
use super::{RedisEngine, millis, parse_event_id};
use crate::engine::{
    AcceptOutcome, ApplyOutcome, EngineResult, EnqueueOutcome, IdempotentResponse, Listing,
    NewCommand, OrderScope, OrderStore, ReceivedCommand, StatusChange, StepWrites,
};
use crate::model::{HistoryEntry, Order, OrderEvent, OrderRecord, OrderStatus, StatusRecord};
use async_trait::async_trait;
use std::collections::HashMap;

/// A history entry without its event id: the scripts splice the id in once the event's XADD
/// assigned it (`{"eventId":"..",` + this JSON minus its opening brace).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct HistoryBody<'a> {
    status: OrderStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_status: Option<OrderStatus>,
    version: u64,
    occurred_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

/// The hash fields a status record is made of (`order_status` reads only these).
const STATUS_FIELDS: [&str; 5] = ["customerId", "partnerId", "status", "version", "updatedAt"];

/// Orders whose status one pipeline of a listing reads.
const LISTING_BATCH: usize = 500;

/// Where the order hash keeps history entries: `h:<version>`.
const HISTORY_FIELD: &str = "h:";

/// The order's history, oldest first, at most `limit` entries: the hash's `h:<version>` fields
/// merged with the entries of the legacy history list (orders written before the history
/// moved into the hash). An entry of both (same version) is taken from the hash.
fn merged_history(
    order_id: &str,
    hash: &HashMap<String, String>,
    legacy: &[String],
    limit: usize,
) -> EngineResult<Vec<HistoryEntry>> {
    let decode = |raw: &str| {
        serde_json::from_str::<HistoryEntry>(raw).map_err(|e| {
            corrupt(format!(
                "order {order_id}: history entry does not decode: {e}"
            ))
        })
    };
    let mut by_version = std::collections::BTreeMap::new();
    for raw in legacy {
        let entry = decode(raw)?;
        by_version.insert(entry.version, entry);
    }
    for (field, raw) in hash {
        if field.starts_with(HISTORY_FIELD) {
            let entry = decode(raw)?;
            by_version.insert(entry.version, entry);
        }
    }
    let skip = by_version.len().saturating_sub(limit.max(1));
    Ok(by_version.into_values().skip(skip).collect())
}

fn history_body(event: &OrderEvent, reason: Option<&str>) -> EngineResult<String> {
    let json = serde_json::to_string(&HistoryBody {
        status: event.status,
        previous_status: event.previous_status,
        version: event.version,
        occurred_at: &event.occurred_at,
        reason,
    })
    .map_err(corrupt)?;
    // The splice in the scripts relies on a non-empty object: `{"status":..}` always is.
    debug_assert!(json.starts_with("{\"status\""));
    Ok(json)
}

/// The intake script's answer for a request whose Idempotency-Key no longer holds its claim.
const CLAIM_LOST: &str = "claim-lost";

fn claim_lost() -> crate::engine::EngineError {
    crate::engine::EngineError::Unavailable(
        "the Idempotency-Key's claim was given up (the request had timed out) before its \
         change reached the engine; nothing was stored"
            .into(),
    )
}

impl RedisEngine {
    /// What both intake requests end with: the command (`messageId`, `orderId`, its JSON) and
    /// the idempotent response stored in the same step (its key last among the keys, then the
    /// record and its TTL; `PX` needs a TTL even when there is no record).
    fn command_and_response(
        &self,
        request: &mut IntakeRequest,
        command: &NewCommand,
        idempotent: Option<&IdempotentResponse>,
    ) -> EngineResult<()> {
        let message = serde_json::to_string(command).map_err(corrupt)?;
        let (idem_json, idem_ttl, claim) = match idempotent {
            Some(r) => {
                let partition = self.keys.partition(&command.order_id);
                request.keys.push(self.keys.idem(partition, &r.key));
                // Where the response is written over the claim itself (the key's partition is
                // the order's: always so for an order whose id Herald drew), the script
                // stores nothing unless the key still holds this request's claim: a claim
                // abandoned after a timeout and taken by a retry must not get a second order.
                let own = crate::engine::idempotency_partition(&r.key, self.keys.partitions());
                let claim = if own == partition {
                    r.claim.clone()
                } else {
                    String::new()
                };
                (done_record(r)?, millis(r.ttl), claim)
            }
            None => (String::new(), 1, String::new()),
        };
        request.values.extend([
            command.message_id.clone(),
            command.order_id.clone(),
            message,
            idem_json,
            idem_ttl.to_string(),
            claim,
        ]);
        Ok(())
    }

    fn status_record(order_id: &str, hash: &HashMap<String, String>) -> EngineResult<StatusRecord> {
        let field = |name: &str| {
            hash.get(name)
                .ok_or_else(|| corrupt(format!("order {order_id}: hash has no `{name}` field")))
        };
        Ok(StatusRecord {
            order_id: order_id.to_string(),
            customer_id: field("customerId")?.clone(),
            partner_id: hash.get("partnerId").cloned(),
            status: field("status")?
                .parse()
                .map_err(|e: String| corrupt(format!("order {order_id}: {e}")))?,
            version: field("version")?
                .parse()
                .map_err(|_| corrupt(format!("order {order_id}: version is not a number")))?,
            updated_at: field("updatedAt")?.clone(),
        })
    }
}

#[async_trait]
impl OrderStore for RedisEngine {
    async fn accept_order(
        &self,
        order: &Order,
        accepted_event: &OrderEvent,
        command: &NewCommand,
        idempotent: Option<&IdempotentResponse>,
    ) -> EngineResult<AcceptOutcome> {
        let order_json = serde_json::to_string(order).map_err(corrupt)?;
        let history = history_body(accepted_event, None)?;
        let mut request = IntakeRequest {
            kind: "accept",
            keys: vec![
                self.keys.order(&order.order_id),
                self.keys.of(&order.order_id).orders_index.clone(),
            ],
            values: vec![
                order_json,
                order.customer_id.clone(),
                if order.partner_id.is_some() { "1" } else { "0" }.to_string(),
                order.partner_id.clone().unwrap_or_default(),
                accepted_event.status.as_str().to_string(),
                accepted_event.version.to_string(),
                accepted_event.occurred_at.clone(),
                accepted_event.to_json(),
                history,
            ],
        };
        self.command_and_response(&mut request, command, idempotent)?;
        let reply = self
            .intake_batch(&order.order_id)
            .submit("accepting an order", request)
            .await?;
        match text(&reply).as_deref() {
            Some("exists") => Ok(AcceptOutcome::AlreadyExists),
            Some(CLAIM_LOST) => Err(claim_lost()),
            Some(id) => {
                let event_id = parse_event_id(id)?;
                self.complete_elsewhere(&order.order_id, idempotent).await;
                Ok(AcceptOutcome::Accepted { event_id })
            }
            None => Err(corrupt(
                "intake script returned an unexpected reply to an accept",
            )),
        }
    }

    async fn enqueue_command(
        &self,
        command: &NewCommand,
        idempotent: Option<&IdempotentResponse>,
    ) -> EngineResult<EnqueueOutcome> {
        let mut request = IntakeRequest {
            kind: "enqueue",
            keys: vec![
                self.keys.order(&command.order_id),
                self.keys.cmdq(&command.order_id),
            ],
            values: Vec::new(),
        };
        self.command_and_response(&mut request, command, idempotent)?;
        let reply = self
            .intake_batch(&command.order_id)
            .submit("queueing a command", request)
            .await?;
        match text(&reply).as_deref() {
            Some("ok") => {
                self.complete_elsewhere(&command.order_id, idempotent).await;
                Ok(EnqueueOutcome::Enqueued)
            }
            Some("unknown") => Ok(EnqueueOutcome::UnknownOrder),
            Some(CLAIM_LOST) => Err(claim_lost()),
            _ => Err(corrupt(
                "intake script returned an unexpected reply to an enqueue",
            )),
        }
    }

    async fn order_status(&self, order_id: &str) -> EngineResult<Option<StatusRecord>> {
        // HMGET, not HGETALL: the hash also holds the order and its history, which a status
        // read (the worker's, before each transition) does not need.
        let values: Vec<Option<String>> = self
            .run(
                "reading an order status",
                ::redis::cmd("HMGET")
                    .arg(self.keys.order(order_id))
                    .arg(&STATUS_FIELDS),
            )
            .await?;
        let hash: HashMap<String, String> = STATUS_FIELDS
            .iter()
            .zip(values)
            .filter_map(|(name, value)| Some((name.to_string(), value?)))
            .collect();
        if hash.is_empty() {
            return Ok(None);
        }
        Self::status_record(order_id, &hash).map(Some)
    }

    async fn list_statuses(&self, scope: &OrderScope, max: usize) -> EngineResult<Listing> {
        let prefix: Vec<u8> = match scope {
            OrderScope::Order(id) => {
                return Ok(Listing::Statuses(
                    self.order_status(id).await?.into_iter().collect(),
                ));
            }
            OrderScope::Customer(id) => [b"c:", id.as_bytes(), b"\0"].concat(),
            OrderScope::Partner(id) => [b"p:", id.as_bytes(), b"\0"].concat(),
            OrderScope::All => b"o:".to_vec(),
        };
        // Every member with the prefix lies in [prefix, prefix with its last byte + 1).
        let min = [b"[".as_slice(), &prefix].concat();
        let mut max_bound = [b"(".as_slice(), &prefix].concat();
        if let Some(last) = max_bound.last_mut() {
            *last += 1;
        }
        // Per partition: a pipeline of one partition stays in one slot (one cluster node).
        let mut by_partition: Vec<Vec<String>> = Vec::new();
        let mut listed = 0;
        for partition in 0..self.keys.partitions() {
            let members: Vec<Vec<u8>> = self
                .run(
                    "listing orders",
                    ::redis::cmd("ZRANGEBYLEX")
                        .arg(&self.keys.part(partition).orders_index)
                        .arg(&min)
                        .arg(&max_bound)
                        .arg("LIMIT")
                        .arg(0)
                        .arg((max + 1).saturating_sub(listed)),
                )
                .await?;
            listed += members.len();
            if listed > max {
                return Ok(Listing::TooMany { max });
            }
            let ids = members
                .into_iter()
                .map(|member| {
                    String::from_utf8(member[prefix.len().min(member.len())..].to_vec())
                        .map_err(|_| corrupt("orders index: an order id is not UTF-8"))
                })
                .collect::<EngineResult<Vec<String>>>()?;
            by_partition.push(ids);
        }
        let mut statuses = Vec::with_capacity(listed);
        for chunk in by_partition
            .iter()
            .flat_map(|ids| ids.chunks(LISTING_BATCH))
        {
            let mut pipe = ::redis::pipe();
            for id in chunk {
                pipe.cmd("HMGET")
                    .arg(self.keys.order(id))
                    .arg(&STATUS_FIELDS);
            }
            let what = "reading listed order statuses";
            let mut conn = self.conn.clone();
            let rows: Vec<Vec<Option<String>>> =
                within(what, self.op_timeout, pipe.query_async(&mut conn))
                    .await
                    .map_err(|e| map_err(what, e))?;
            for (id, values) in chunk.iter().zip(rows) {
                let hash: HashMap<String, String> = STATUS_FIELDS
                    .iter()
                    .zip(values)
                    .filter_map(|(name, value)| Some((name.to_string(), value?)))
                    .collect();
                if hash.is_empty() {
                    continue;
                }
                let status = Self::status_record(id, &hash)?;
                // The index is matched by prefix: an id with a NUL could alias another's.
                if scope.covers(&status) {
                    statuses.push(status);
                }
            }
        }
        statuses.sort_by(|a, b| a.order_id.cmp(&b.order_id));
        Ok(Listing::Statuses(statuses))
    }

    async fn order(&self, order_id: &str) -> EngineResult<Option<OrderRecord>> {
        // One MULTI/EXEC: the status and the history come from the same moment. The LRANGE
        // reads the history list of orders written before the history moved into the hash.
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .cmd("HGETALL")
            .arg(self.keys.order(order_id))
            .cmd("LRANGE")
            .arg(self.keys.history(order_id))
            .arg(0)
            .arg(-1);
        let what = "reading an order";
        let mut conn = self.conn.clone();
        let (hash, history): (HashMap<String, String>, Vec<String>) =
            within(what, self.op_timeout, pipe.query_async(&mut conn))
                .await
                .map_err(|e| map_err(what, e))?;
        if hash.is_empty() {
            return Ok(None);
        }
        let status = Self::status_record(order_id, &hash)?;
        let order_json = hash
            .get("order")
            .ok_or_else(|| corrupt(format!("order {order_id}: hash has no `order` field")))?;
        let order: Order = serde_json::from_str(order_json)
            .map_err(|e| corrupt(format!("order {order_id}: `order` does not decode: {e}")))?;
        let history = merged_history(order_id, &hash, &history, self.settings.history_limit)?;
        Ok(Some(OrderRecord {
            open_wait: hash.get("wait").filter(|wait| !wait.is_empty()).cloned(),
            steps: step_records(order_id, &hash, self.settings.step_history_limit)?,
            order,
            status,
            history,
        }))
    }

    async fn apply(
        &self,
        command: &ReceivedCommand,
        change: Option<&StatusChange>,
    ) -> EngineResult<ApplyOutcome> {
        self.apply_batch(&[(command, change)])
            .await?
            .pop()
            .unwrap_or_else(|| Err(corrupt("apply script returned no outcome")))
    }

    /// One `apply.lua` call per partition and [`APPLY_CHUNK`] commands, the partitions'
    /// calls concurrently (a command's order and queue entry live in its order's partition,
    /// and commands of one order stay in their order within its call).
    async fn apply_batch(
        &self,
        batch: &[(&ReceivedCommand, Option<&StatusChange>)],
    ) -> EngineResult<Vec<EngineResult<ApplyOutcome>>> {
        let mut by_partition: Vec<Vec<usize>> = vec![Vec::new(); self.keys.partitions()];
        for (i, (command, _)) in batch.iter().enumerate() {
            by_partition[self.keys.partition(&command.message.order_id)].push(i);
        }
        let calls = by_partition
            .iter()
            .enumerate()
            .filter(|(_, members)| !members.is_empty())
            .flat_map(|(k, members)| members.chunks(APPLY_CHUNK).map(move |c| (k, c)))
            .map(|(k, members)| async move {
                let chunk: Vec<_> = members
                    .iter()
                    .map(|i| {
                        let (command, change) = batch[*i];
                        (
                            command,
                            change.map_or(Completion::Acknowledge, Completion::Change),
                        )
                    })
                    .collect();
                (members, self.apply_chunk(k, &chunk).await)
            });
        let mut outcomes: Vec<Option<EngineResult<ApplyOutcome>>> =
            (0..batch.len()).map(|_| None).collect();
        for (members, result) in futures_util::future::join_all(calls).await {
            for (i, outcome) in members.iter().zip(result?) {
                outcomes[*i] = Some(outcome);
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(corrupt("apply script returned no outcome"))))
            .collect())
    }
}

/// At most this many commands per apply script call: the script hands all their acknowledged
/// entry ids to one XACK and one XDEL, and Lua's `unpack` has a stack limit (about 8,000).
const APPLY_CHUNK: usize = 1000;

impl RedisEngine {
    /// The intake batcher of an order's partition.
    fn intake_batch(&self, order_id: &str) -> &super::intake::IntakeBatcher {
        &self.intake_batches[self.keys.partition(order_id)]
    }

    /// One `apply.lua` call for commands of `partition`.
    pub(super) async fn apply_chunk(
        &self,
        partition: usize,
        chunk: &[(&ReceivedCommand, Completion<'_>)],
    ) -> EngineResult<Vec<EngineResult<ApplyOutcome>>> {
        let keys = self.keys.part(partition);
        let mut invocation = self.scripts.apply.prepare_invoke();
        invocation
            .key(&keys.events)
            .key(&keys.commands)
            .key(&keys.timers)
            .arg(GROUP)
            .arg(self.settings.event_retention.max(1))
            .arg(self.settings.history_limit.max(1))
            .arg(self.settings.step_history_limit.max(1));
        for (command, completion) in chunk {
            let message = &command.message;
            invocation
                .key(self.keys.order(&message.order_id))
                .key(self.keys.cmdq(&message.order_id))
                .arg(&command.receipt)
                .arg(&message.message_id);
            match completion {
                Completion::Change(change) => {
                    let event = &change.event;
                    invocation
                        .arg("1")
                        .arg(change.expected_version)
                        .arg(event.status.as_str())
                        .arg(event.version)
                        .arg(&event.occurred_at)
                        .arg(event.to_json())
                        .arg(history_body(event, change.reason.as_deref())?);
                    // A status change always closes the previous wait.
                    let wait = change.steps.open_wait.as_deref().unwrap_or_default();
                    step_args(&mut invocation, message, Some(wait), &change.steps)?;
                }
                Completion::Step {
                    expected_version,
                    writes,
                } => {
                    invocation
                        .arg("2")
                        .arg(*expected_version)
                        .arg("")
                        .arg("")
                        .arg("")
                        .arg("")
                        .arg("");
                    step_args(
                        &mut invocation,
                        message,
                        writes.open_wait.as_deref(),
                        writes,
                    )?;
                }
                Completion::Acknowledge => {
                    invocation.arg("0");
                    for _ in 0..14 {
                        invocation.arg("");
                    }
                    invocation.arg(0);
                }
            }
        }
        let what = if chunk.len() == 1 {
            "applying a command"
        } else {
            "applying a batch of commands"
        };
        let reply = self.run_script(what, &invocation).await?;
        let replies = items(&reply)
            .filter(|r| r.len() == chunk.len())
            .ok_or_else(|| corrupt("apply script returned an unexpected reply"))?;
        Ok(chunk
            .iter()
            .zip(replies)
            .map(|((command, _), reply)| apply_outcome(command, reply))
            .collect())
    }
}

/// What `apply.lua` does with a command once it heads its order (see the script).
#[derive(Clone, Copy)]
pub(super) enum Completion<'a> {
    /// Acknowledge it, nothing else ([`OrderStore::apply`] without a change).
    Acknowledge,
    /// The status change and its step writes ([`OrderStore::apply`]).
    Change(&'a StatusChange),
    /// Step writes only, if the order is still at `expected_version`
    /// ([`StepStore::apply_step`](crate::engine::StepStore::apply_step)).
    Step {
        expected_version: u64,
        writes: &'a StepWrites,
    },
}

/// One command's outcome from the apply script's reply.
fn apply_outcome(command: &ReceivedCommand, reply: &::redis::Value) -> EngineResult<ApplyOutcome> {
    let message = &command.message;
    let order_id = &message.order_id;
    let bad = || corrupt("apply script returned an unexpected reply");
    let parts = items(reply).ok_or_else(bad)?;
    let outcome = parts.first().and_then(text).ok_or_else(bad)?;
    match (outcome.as_str(), parts.get(1)) {
        ("done", _) => Ok(ApplyOutcome::AlreadyDone),
        ("blocked", _) => Ok(ApplyOutcome::Blocked),
        ("stale", Some(version)) => Ok(ApplyOutcome::Stale {
            current_version: int(version)
                .and_then(|v| u64::try_from(v).ok())
                .ok_or_else(|| corrupt(format!("order {order_id}: version is not a number")))?,
        }),
        ("missing", _) => Err(corrupt(format!(
            "command {} for missing order {order_id}",
            message.message_id
        ))),
        ("applied", Some(id)) => {
            let id = text(id).ok_or_else(bad)?;
            let event_id = if id.is_empty() {
                None
            } else {
                Some(parse_event_id(&id)?)
            };
            Ok(ApplyOutcome::Applied { event_id })
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_body_splices_into_a_history_entry() {
        let event = OrderEvent {
            event_type: "order.confirmed".into(),
            order_id: "o1".into(),
            customer_id: "c1".into(),
            partner_id: None,
            status: OrderStatus::Confirmed,
            previous_status: Some(OrderStatus::Accepted),
            version: 2,
            occurred_at: "2026-01-01T00:00:00.000Z".into(),
            data: None,
        };
        let body = history_body(&event, Some("because")).unwrap();
        // What the scripts do with the event id Redis assigned.
        let spliced = format!("{{\"eventId\":\"5-1\",{}", &body[1..]);
        let entry: HistoryEntry = serde_json::from_str(&spliced).unwrap();
        assert_eq!(
            entry,
            HistoryEntry {
                event_id: "5-1".into(),
                status: OrderStatus::Confirmed,
                previous_status: Some(OrderStatus::Accepted),
                version: 2,
                occurred_at: "2026-01-01T00:00:00.000Z".into(),
                reason: Some("because".into()),
            }
        );
    }

    fn entry(version: u64, event_id: &str) -> String {
        format!(
            r#"{{"eventId":"{event_id}","status":"confirmed","version":{version},"occurredAt":"t"}}"#
        )
    }

    #[test]
    fn history_merges_the_legacy_list_with_the_hash_by_version_capped() {
        let legacy = vec![entry(1, "1-1"), entry(2, "2-1"), entry(3, "old")];
        let hash: HashMap<String, String> = [
            ("status".to_string(), "confirmed".to_string()),
            ("h:3".to_string(), entry(3, "3-1")),
            ("h:4".to_string(), entry(4, "4-1")),
        ]
        .into_iter()
        .collect();
        let merged = merged_history("o1", &hash, &legacy, 3).unwrap();
        let ids: Vec<&str> = merged.iter().map(|h| h.event_id.as_str()).collect();
        assert_eq!(ids, ["2-1", "3-1", "4-1"]);
        let merged = merged_history("o1", &hash, &[], 10).unwrap();
        assert_eq!(merged.len(), 2);
        assert!(merged_history("o1", &hash, &["{nope".to_string()], 10).is_err());
    }
}
