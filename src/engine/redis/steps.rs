//! Workflow steps on Redis: the order hash's step records (`s:<n>`, numbered by `stepSeq`, the
//! newest `step_history_limit` kept), open wait (`wait`) and heartbeat timer (`hb`: its timers
//! zset member, so that a new one can take it off the schedule), and each partition's timers
//! zset `P{pk}:timers` (score: due ms; member: the command it queues, see [`TimerMember`]).
//!
//! Step writes made with a command's completion ride on `scripts/apply.lua` (the same call,
//! so the same atomic step as the status change and the acknowledgement): this room encodes
//! them ([`step_args`]) and decodes the records ([`step_records`]). Firing timers is
//! `scripts/fire_timers.lua`, claiming a wait `scripts/claim_wait.lua`, a callback's
//! heartbeat `scripts/heartbeat.lua`; each touches one partition's keys (on one Redis the
//! sweep covers every partition in one call, as the webhook read does). Asking whether a
//! command heads its order reads the FIFO gate `apply.lua` checks (`firstCommand`, then the
//! cmdq list) in one MULTI/EXEC, writing nothing.
//!
//! It never decides a step: the worker hands it the records, the wait and the follow-up.

use super::RedisEngine;
use super::conn::map_err;
use super::conn::within;
use super::groups::per_partition;
use super::orders::Completion;
use super::reply::{corrupt, int, items, text};
use crate::engine::{
    ApplyOutcome, ClaimOutcome, EngineResult, FollowUp, NewCommand, ReceivedCommand, StepRecord,
    StepStore, StepWrites, TimerSweep,
};
use ::redis::ScriptInvocation;
use async_trait::async_trait;
use std::collections::HashMap;

/// Where the order hash keeps step records: `s:<n>`.
const STEP_FIELD: &str = "s:";

/// A timer as its zset member: the command it queues when due, and the wait it claims. The
/// command's messageId makes each member unique.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct TimerMember<'a> {
    message_id: &'a str,
    order_id: &'a str,
    /// The [`NewCommand`] JSON, queued as written.
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    claims_wait: Option<&'a str>,
}

/// A timer's zset member (see [`TimerMember`]).
fn timer_member(timer: &FollowUp) -> EngineResult<String> {
    let command = &timer.command;
    let message = serde_json::to_string(command).map_err(corrupt)?;
    serde_json::to_string(&TimerMember {
        message_id: &command.message_id,
        order_id: &command.order_id,
        message,
        claims_wait: timer.claims_wait.as_deref(),
    })
    .map_err(corrupt)
}

/// Refuses a follow-up or heartbeat timer that is not a command of `order_id` (its queue and
/// timers are the order's partition's).
fn same_order(what: &str, timer: &FollowUp, order_id: &str) -> EngineResult<()> {
    let next = &timer.command;
    if next.order_id != order_id {
        return Err(corrupt(format!(
            "the {what} {} is for order {}, not {order_id}",
            next.message_id, next.order_id
        )));
    }
    Ok(())
}

/// Appends the step values of one command of `apply.lua` (values 10 to 18 and the records; see
/// the script): the open wait (`None`: left as is; `Some("")`: closed), the follow-up, the
/// heartbeat timer and the records. A follow-up or heartbeat must be a command of the same
/// order (its queue and timers are the order's partition's); a heartbeat must have a due
/// time. Checked before anything is sent, so a refusal writes nothing.
pub(super) fn step_args(
    invocation: &mut ScriptInvocation<'_>,
    command: &NewCommand,
    wait: Option<&str>,
    writes: &StepWrites,
) -> EngineResult<()> {
    invocation.arg(wait.map_or(String::new(), |id| format!("={id}")));
    match &writes.follow_up {
        None => {
            invocation.arg("").arg("").arg("").arg("").arg("");
        }
        Some(follow_up) => {
            let next = &follow_up.command;
            same_order("follow-up", follow_up, &command.order_id)?;
            match follow_up.due_ms {
                None => {
                    let message = serde_json::to_string(next).map_err(corrupt)?;
                    invocation
                        .arg("now")
                        .arg(&next.message_id)
                        .arg(&next.order_id)
                        .arg(message)
                        .arg("");
                }
                Some(due_ms) => {
                    invocation
                        .arg("at")
                        .arg(&next.message_id)
                        .arg(&next.order_id)
                        .arg(timer_member(follow_up)?)
                        .arg(due_ms);
                }
            }
        }
    }
    match &writes.heartbeat {
        None => {
            invocation.arg("").arg("");
        }
        Some(heartbeat) => {
            same_order("heartbeat timer", heartbeat, &command.order_id)?;
            let due_ms = heartbeat.timer_due_ms()?;
            invocation.arg(timer_member(heartbeat)?).arg(due_ms);
        }
    }
    invocation.arg(writes.records.len());
    for record in &writes.records {
        invocation.arg(serde_json::to_string(record).map_err(corrupt)?);
    }
    Ok(())
}

/// The order's step records from its hash, oldest first, the newest `limit`.
pub(super) fn step_records(
    order_id: &str,
    hash: &HashMap<String, String>,
    limit: usize,
) -> EngineResult<Vec<StepRecord>> {
    let mut by_number = std::collections::BTreeMap::new();
    for (field, raw) in hash {
        let Some(number) = field.strip_prefix(STEP_FIELD) else {
            continue;
        };
        let number: u64 = number.parse().map_err(|_| {
            corrupt(format!(
                "order {order_id}: step field `{field}` is not numbered"
            ))
        })?;
        let record: StepRecord = serde_json::from_str(raw).map_err(|e| {
            corrupt(format!(
                "order {order_id}: step record `{field}` does not decode: {e}"
            ))
        })?;
        by_number.insert(number, record);
    }
    let skip = by_number.len().saturating_sub(limit.max(1));
    Ok(by_number.into_values().skip(skip).collect())
}

impl RedisEngine {
    /// One `fire_timers.lua` call over `parts`: the due ms of the timers it queued and the
    /// earliest due ms left in those partitions.
    async fn fire_timers_in(
        &self,
        parts: &[usize],
        now_ms: u64,
        limit: usize,
    ) -> EngineResult<(Vec<u64>, Option<u64>)> {
        let mut invocation = self.scripts.fire_timers.prepare_invoke();
        invocation.arg(now_ms).arg(limit);
        for k in parts {
            let keys = self.keys.part(*k);
            invocation
                .key(&keys.timers)
                .key(&keys.commands)
                .arg(format!("{}:order:", keys.base))
                .arg(&keys.cmdq_prefix);
        }
        let reply = self
            .run_script("firing due workflow timers", &invocation)
            .await?;
        let bad = || corrupt("timer script returned an unexpected reply");
        let [fired, next, malformed] = items(&reply).ok_or_else(bad)? else {
            return Err(bad());
        };
        let fired = items(fired)
            .ok_or_else(bad)?
            .iter()
            .map(|due| int(due).and_then(|d| u64::try_from(d).ok()))
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(bad)?;
        let next = int(next).ok_or_else(bad)?;
        for member in items(malformed).ok_or_else(bad)? {
            tracing::error!(timer = %text(member).unwrap_or_default(),
                "workflow timer does not decode; removed without a command");
        }
        Ok((fired, u64::try_from(next).ok()))
    }
}

#[async_trait]
impl StepStore for RedisEngine {
    /// The gate as `apply.lua` reads it: `firstCommand` if set, else the head of the cmdq
    /// list; a command in neither was completed (apply: AlreadyDone) and heads it too.
    async fn heads_its_order(&self, command: &ReceivedCommand) -> EngineResult<bool> {
        let message = &command.message;
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .cmd("HGET")
            .arg(self.keys.order(&message.order_id))
            .arg("firstCommand")
            .cmd("LPOS")
            .arg(self.keys.cmdq(&message.order_id))
            .arg(&message.message_id);
        let what = "asking whether a command heads its order";
        let mut conn = self.conn.clone();
        let (first, position): (Option<String>, Option<u64>) =
            within(what, self.op_timeout, pipe.query_async(&mut conn))
                .await
                .map_err(|e| map_err(what, e))?;
        let first = first.unwrap_or_default();
        Ok(first == message.message_id
            || match position {
                None => true,
                Some(p) => p == 0 && first.is_empty(),
            })
    }

    /// On the intake connection, like the other calls an API request makes.
    async fn heartbeat(
        &self,
        order_id: &str,
        wait_id: &str,
        timer: &FollowUp,
    ) -> EngineResult<ClaimOutcome> {
        same_order("heartbeat timer", timer, order_id)?;
        let due_ms = timer.timer_due_ms()?;
        let mut invocation = self.scripts.heartbeat.prepare_invoke();
        invocation
            .key(self.keys.order(order_id))
            .key(&self.keys.of(order_id).timers)
            .arg(wait_id)
            .arg(timer_member(timer)?)
            .arg(due_ms);
        let what = "recording a callback's heartbeat";
        let reply = self
            .eval_on(&self.intake, what, &invocation)
            .await
            .map_err(|e| map_err(what, e))?;
        claim_outcome(&reply, "heartbeat")
    }

    async fn apply_step(
        &self,
        command: &ReceivedCommand,
        expected_version: u64,
        writes: &StepWrites,
    ) -> EngineResult<ApplyOutcome> {
        let partition = self.keys.partition(&command.message.order_id);
        let completion = Completion::Step {
            expected_version,
            writes,
        };
        self.apply_chunk(partition, &[(command, completion)])
            .await?
            .pop()
            .unwrap_or_else(|| Err(corrupt("apply script returned no outcome")))
    }

    /// On one Redis one script call sweeps every partition (earliest first across all of
    /// them); on a cluster one call per partition, concurrently, each with its share of
    /// `limit` (rounded up).
    async fn fire_due_timers(&self, now_ms: u64, limit: usize) -> EngineResult<TimerSweep> {
        let n = self.keys.partitions();
        let (calls, each): (Vec<Vec<usize>>, usize) = if self.clustered() {
            ((0..n).map(|k| vec![k]).collect(), per_partition(limit, n))
        } else {
            (vec![(0..n).collect()], limit)
        };
        let replies = futures_util::future::try_join_all(
            calls
                .iter()
                .map(|parts| self.fire_timers_in(parts, now_ms, each)),
        )
        .await?;
        let mut sweep = TimerSweep::default();
        for (fired, next) in replies {
            sweep.fired.extend(fired);
            sweep.next_due_ms = match (sweep.next_due_ms, next) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        // Earliest first across the partitions' calls too.
        sweep.fired.sort_unstable();
        Ok(sweep)
    }

    /// On the intake connection, like the other calls an API request makes.
    async fn claim_wait(
        &self,
        order_id: &str,
        wait_id: &str,
        command: &NewCommand,
    ) -> EngineResult<ClaimOutcome> {
        if command.order_id != order_id {
            return Err(corrupt(format!(
                "command {} is for order {}, not {order_id}",
                command.message_id, command.order_id
            )));
        }
        let message = serde_json::to_string(command).map_err(corrupt)?;
        let mut invocation = self.scripts.claim_wait.prepare_invoke();
        invocation
            .key(self.keys.order(order_id))
            .key(self.keys.cmdq(order_id))
            .key(&self.keys.of(order_id).commands)
            .arg(wait_id)
            .arg(&command.message_id)
            .arg(order_id)
            .arg(message);
        let what = "claiming a callback wait";
        let reply = self
            .eval_on(&self.intake, what, &invocation)
            .await
            .map_err(|e| map_err(what, e))?;
        claim_outcome(&reply, "claim-wait")
    }

    async fn pending_timers(&self) -> EngineResult<u64> {
        let counts =
            futures_util::future::try_join_all((0..self.keys.partitions()).map(|k| async move {
                let mut count = ::redis::cmd("ZCARD");
                count.arg(&self.keys.part(k).timers);
                self.run::<u64>("counting workflow timers", &count).await
            }))
            .await?;
        Ok(counts.into_iter().sum())
    }
}

/// The answer of the scripts that act on an order's open wait (`claim_wait.lua`,
/// `heartbeat.lua`): `queued`, `notwaiting` or `unknown`.
fn claim_outcome(reply: &::redis::Value, script: &str) -> EngineResult<ClaimOutcome> {
    match text(reply).as_deref() {
        Some("queued") => Ok(ClaimOutcome::Queued),
        Some("notwaiting") => Ok(ClaimOutcome::NotWaiting),
        Some("unknown") => Ok(ClaimOutcome::UnknownOrder),
        _ => Err(corrupt(format!(
            "{script} script returned an unexpected reply"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::OrderStatus;

    fn record(kind: &str) -> String {
        serde_json::to_string(&StepRecord::new(
            kind,
            OrderStatus::Confirmed,
            2,
            "charge",
            "2026-01-01T00:00:00Z".into(),
        ))
        .unwrap()
    }

    #[test]
    fn step_records_read_by_number_oldest_first_capped() {
        let hash: HashMap<String, String> = [
            ("status", "confirmed".to_string()),
            ("stepSeq", "10".to_string()),
            ("h:1", "{}".to_string()),
            ("s:9", record("taskFailed")),
            ("s:10", record("taskSucceeded")),
            ("s:8", record("stateEntered")),
            ("s:7", record("older")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let kinds = |limit| -> Vec<String> {
            step_records("o1", &hash, limit)
                .unwrap()
                .into_iter()
                .map(|r| r.kind)
                .collect()
        };
        assert_eq!(kinds(3), ["stateEntered", "taskFailed", "taskSucceeded"]);
        assert_eq!(kinds(10).len(), 4);
        let bad: HashMap<String, String> = [("s:x".to_string(), record("a"))].into();
        assert!(step_records("o1", &bad, 10).is_err());
    }
}
