//! The consumer-group plumbing of the Redis engine: the two groups Herald reads (the command
//! queue's `workers`, the webhook dispatchers' group on the event log), one of each per
//! partition, their creation and recovery, `XREADGROUP` and the `XAUTOCLAIM`-based takeover of
//! expired deliveries.
//!
//! Every node reads every partition: on one Redis in one command over all the partitions'
//! streams (one `XREADGROUP`, one read script), on a cluster, where a command or script
//! touches one slot, one per partition, concurrently and without blocking (a wait polls: see
//! `RedisEngine::poll_partitions`).
//!
//! It owns how entries are handed out and taken over, never what they mean: decoding a
//! command is `queue.rs`' job, an event the seam's decoder's (`engine/log.rs`).

use super::conn::{is_busygroup, is_nogroup, map_err};
use super::reply::{self, StreamEntry, corrupt, int, items, text};
use super::{RedisEngine, log_entry, millis};
use crate::engine::webhook::{DISPATCH_GROUP, LOST_RANGES_KEPT, LostEvents};
use crate::engine::{EngineResult, LogEntry};
use crate::model::qualified_entry_id;
use ::redis::{RedisResult, Value};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The consumer group all workers share.
pub(super) const GROUP: &str = "workers";

/// The consumer groups Herald reads: the command queue's workers and the webhook dispatchers.
#[derive(Debug, Clone, Copy)]
pub(super) enum Group {
    Commands,
    Dispatch,
}

/// Where an `XAUTOCLAIM` scan continues (a poisoned lock starts over from the beginning).
fn cursor(at: &Mutex<String>) -> String {
    at.lock()
        .map(|c| c.clone())
        .unwrap_or_else(|_| "0-0".into())
}

/// Remembers where the next `XAUTOCLAIM` scan continues.
fn set_cursor(at: &Mutex<String>, next: &Value) {
    if let (Some(next), Ok(mut cursor)) = (text(next), at.lock()) {
        *cursor = next;
    }
}

/// How many entries to ask each of `partitions` for (one count for all: a read over several
/// streams takes one): `max` shared out, rounded up, so a read may return up to `max` rounded
/// up to a multiple of `partitions` (see `CommandQueue::receive_batch`).
pub(super) fn per_partition(max: usize, partitions: usize) -> usize {
    max.div_ceil(partitions.max(1)).max(1)
}

impl RedisEngine {
    /// The stream, group name and starting id of one of Herald's consumer groups in
    /// `partition`.
    fn group_spec(&self, group: Group, partition: usize) -> (&str, &'static str, &'static str) {
        let keys = self.keys.part(partition);
        match group {
            // The command queue starts at the beginning: every command is work.
            Group::Commands => (&keys.commands, GROUP, "0"),
            // Webhook dispatch starts at the log's end when created: history before the first
            // start (or before a recreation) is not delivered.
            Group::Dispatch => (&keys.events, DISPATCH_GROUP, "$"),
        }
    }

    /// `XGROUP CREATE .. MKSTREAM` in every partition; an existing group is fine.
    pub(super) async fn create_group(&self, group: Group) -> EngineResult<()> {
        let created = futures_util::future::join_all(
            (0..self.keys.partitions()).map(|k| self.create_group_in(group, k)),
        )
        .await;
        created.into_iter().collect()
    }

    async fn create_group_in(&self, group: Group, partition: usize) -> EngineResult<()> {
        let (stream, name, start) = self.group_spec(group, partition);
        let result: RedisResult<Value> = self
            .query(
                "XGROUP CREATE",
                ::redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(stream)
                    .arg(name)
                    .arg(start)
                    .arg("MKSTREAM"),
            )
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_busygroup(&e) => Ok(()),
            Err(e) => Err(map_err(&format!("creating the consumer group `{name}`"), e)),
        }
    }

    /// Recreates a consumer group after Redis reported it missing (Redis restarted without
    /// persistence, or an operator deleted it): in every partition, since a read over several
    /// streams does not say which one lacked it.
    async fn recover_group(&self, group: Group, e: &::redis::RedisError) -> EngineResult<()> {
        let (_, name, start) = self.group_spec(group, 0);
        tracing::warn!(error = %e, group = name, start,
            "consumer group is missing; creating it again");
        self.create_group(group).await
    }

    /// `XREADGROUP GROUP workers <me> COUNT .. STREAMS <commands streams of parts> > ..`,
    /// blocking up to `block` on a dedicated connection: commands never handed out to any
    /// worker, with their partitions.
    async fn xreadgroup_commands(
        &self,
        parts: &[usize],
        count: usize,
        block: Duration,
    ) -> EngineResult<Vec<(usize, StreamEntry)>> {
        let what = "reading new commands";
        let mut cmd = ::redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&self.settings.consumer_name)
            .arg("COUNT")
            .arg(count);
        let block_ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX);
        // BLOCK 0 would wait forever.
        if block_ms > 0 {
            cmd.arg("BLOCK").arg(block_ms);
        }
        cmd.arg("STREAMS");
        for k in parts {
            cmd.arg(&self.keys.part(*k).commands);
        }
        for _ in parts {
            cmd.arg(">");
        }
        // Only a blocking read needs a dedicated connection.
        let result: RedisResult<Value> = if block_ms > 0 {
            self.blocking
                .query(what, &cmd, block, self.op_timeout)
                .await
        } else {
            self.query(what, &cmd).await
        };
        let reply = match result {
            Ok(reply) => reply,
            Err(e) if is_nogroup(&e) => {
                self.recover_group(Group::Commands, &e).await?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(map_err(what, e)),
        };
        let mut out = Vec::new();
        for (key, entries) in reply::read_streams(&reply)? {
            let partition = self.keys.partition_of_stream(&key).ok_or_else(|| {
                corrupt(format!("XREADGROUP answered for an unknown stream `{key}`"))
            })?;
            out.extend(entries.into_iter().map(|e| (partition, e)));
        }
        Ok(out)
    }

    /// Runs the claim script in every partition (retrying once after recreating a missing
    /// group). Returns the claimed deliveries and the poisoned ones (received more than
    /// `max_receives` times, not handed out: the caller dead-letters them), each with its
    /// partition and counted receives, and how many commands are pending in all.
    #[allow(clippy::type_complexity)]
    pub(super) async fn claim_expired(
        &self,
        max: usize,
    ) -> EngineResult<(
        Vec<(usize, StreamEntry, u32)>,
        Vec<(usize, StreamEntry, u32)>,
        u64,
    )> {
        let count = per_partition(max, self.keys.partitions());
        let claims = futures_util::future::join_all(
            (0..self.keys.partitions()).map(|k| self.claim_expired_in(k, count)),
        )
        .await;
        let mut out = Vec::new();
        let mut poisoned = Vec::new();
        let mut pending = 0;
        for (k, claim) in claims.into_iter().enumerate() {
            let (claimed, dead, in_partition) = claim?;
            pending += in_partition;
            out.extend(claimed.into_iter().map(|(entry, n)| (k, entry, n)));
            poisoned.extend(dead.into_iter().map(|(entry, n)| (k, entry, n)));
        }
        Ok((out, poisoned, pending))
    }

    #[allow(clippy::type_complexity)]
    async fn claim_expired_in(
        &self,
        partition: usize,
        max: usize,
    ) -> EngineResult<(Vec<(StreamEntry, u32)>, Vec<(StreamEntry, u32)>, u64)> {
        let keys = self.keys.part(partition);
        let cursor = cursor(&self.claim_cursors[partition]);
        let mut invocation = self.scripts.claim.prepare_invoke();
        invocation
            .key(&keys.commands)
            .arg(GROUP)
            .arg(&self.settings.consumer_name)
            .arg(millis(self.settings.visibility_timeout))
            .arg(&cursor)
            .arg(max)
            .arg(self.settings.max_receives)
            .arg(&keys.cmdq_prefix)
            .arg(format!("{}:order:", keys.base));
        let reply = match self.eval("claiming expired commands", &invocation).await {
            Ok(reply) => reply,
            Err(e) if is_nogroup(&e) => {
                self.recover_group(Group::Commands, &e).await?;
                self.run_script("claiming expired commands", &invocation)
                    .await?
            }
            Err(e) => return Err(map_err("claiming expired commands", e)),
        };
        let bad = || corrupt("claim script returned an unexpected reply");
        let [next, pending, poisoned, claimed] = items(&reply).ok_or_else(bad)? else {
            return Err(bad());
        };
        set_cursor(&self.claim_cursors[partition], next);
        let pending = int(pending).ok_or_else(bad)?.max(0) as u64;
        let deliveries = |list: &Value| -> EngineResult<Vec<(StreamEntry, u32)>> {
            let mut out = Vec::new();
            for item in items(list).ok_or_else(bad)? {
                let [id, deliveries, fields] = items(item).ok_or_else(bad)? else {
                    return Err(bad());
                };
                let entry = StreamEntry {
                    id: text(id).ok_or_else(bad)?,
                    fields: reply::fields(fields).ok_or_else(bad)?,
                };
                let count = int(deliveries)
                    .ok_or_else(bad)?
                    .clamp(0, i64::from(u32::MAX)) as u32;
                out.push((entry, count));
            }
            Ok(out)
        };
        Ok((deliveries(claimed)?, deliveries(poisoned)?, pending))
    }

    /// New commands for this worker, about `count` in all (see [`per_partition`]), waiting
    /// up to `block` for the first.
    pub(super) async fn read_new(
        &self,
        count: usize,
        block: Duration,
    ) -> EngineResult<Vec<(usize, StreamEntry)>> {
        let all: Vec<usize> = (0..self.keys.partitions()).collect();
        let each = per_partition(count, all.len());
        if !self.clustered() || all.len() == 1 {
            return self.xreadgroup_commands(&all, each, block).await;
        }
        self.poll_partitions(block, |k| async move {
            self.xreadgroup_commands(&[k], each, Duration::ZERO).await
        })
        .await
    }

    /// Whether the dispatcher's claim should look for expired events now: at most every
    /// quarter `reclaim_after` (an event is taken over at most that much later than it could
    /// be), not before every read, since claims are on the dispatcher's hot path. Taking the
    /// turn moves the next one forward, so concurrent claims do not both scan.
    pub(super) fn dispatch_reclaim_due(&self, reclaim_after: Duration) -> bool {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_dispatch_reclaim_ms.load(Ordering::Relaxed);
        now >= next
            && self
                .next_dispatch_reclaim_ms
                .compare_exchange(
                    next,
                    now.saturating_add(millis(reclaim_after / 4)),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// `XAUTOCLAIM` in every partition: entries handed out at least `reclaim_after` ago and
    /// never acknowledged.
    pub(super) async fn reclaim_events(
        &self,
        consumer: &str,
        max: usize,
        reclaim_after: Duration,
    ) -> EngineResult<Vec<LogEntry>> {
        let count = per_partition(max, self.keys.partitions());
        let claims = futures_util::future::join_all(
            (0..self.keys.partitions())
                .map(|k| self.reclaim_events_in(k, consumer, count, reclaim_after)),
        )
        .await;
        let mut out = Vec::new();
        for claim in claims {
            out.extend(claim?);
        }
        Ok(out)
    }

    /// [`Self::reclaim_events`] in one partition. A full batch brings the next scan forward
    /// to now: more may be waiting.
    async fn reclaim_events_in(
        &self,
        partition: usize,
        consumer: &str,
        max: usize,
        reclaim_after: Duration,
    ) -> EngineResult<Vec<LogEntry>> {
        let stream = &self.keys.part(partition).events;
        let cursor = cursor(&self.dispatch_cursors[partition]);
        let what = "reclaiming webhook events";
        let reply: Value = match self
            .query(
                what,
                ::redis::cmd("XAUTOCLAIM")
                    .arg(stream)
                    .arg(DISPATCH_GROUP)
                    .arg(consumer)
                    .arg(millis(reclaim_after))
                    .arg(&cursor)
                    .arg("COUNT")
                    .arg(max),
            )
            .await
        {
            Ok(reply) => reply,
            Err(e) if is_nogroup(&e) => {
                self.recover_group(Group::Dispatch, &e).await?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(map_err(what, e)),
        };
        let bad = || corrupt("XAUTOCLAIM returned an unexpected reply");
        let parts = items(&reply).ok_or_else(bad)?;
        let (Some(next), Some(claimed)) = (parts.first(), parts.get(1)) else {
            return Err(bad());
        };
        set_cursor(&self.dispatch_cursors[partition], next);
        let claimed = items(claimed).ok_or_else(bad)?;
        if claimed.len() >= max {
            self.next_dispatch_reclaim_ms.store(0, Ordering::Relaxed);
        }
        let mut out = Vec::new();
        let mut deleted = Vec::new();
        for item in claimed {
            match items(item) {
                // Redis 6.2 hands out an entry trimmed from the log with nil fields (7.x drops
                // it from the pending list itself): nothing to deliver, acknowledge it.
                Some([id, Value::Nil]) => deleted.extend(text(id)),
                _ => {
                    out.extend(reply::stream_entry(item)?.map(|entry| log_entry(partition, entry)))
                }
            }
        }
        if !deleted.is_empty() {
            let _: Value = self
                .run(
                    "acknowledging trimmed webhook events",
                    ::redis::cmd("XACK")
                        .arg(stream)
                        .arg(DISPATCH_GROUP)
                        .arg(&deleted),
                )
                .await?;
        }
        Ok(out)
    }

    /// Events never handed out to any node's dispatcher, about `max` in all (see
    /// [`per_partition`]), read by `webhook_read.lua` together with the check for entries
    /// trimmed before the group read them (gaps, recorded and returned). Also returns each
    /// partition's last-delivered id, where a wait for new entries starts. Never blocks.
    pub(super) async fn read_new_events(
        &self,
        consumer: &str,
        max: usize,
    ) -> EngineResult<(Vec<LogEntry>, Vec<LostEvents>, Vec<String>)> {
        let n = self.keys.partitions();
        let each = per_partition(max, n);
        let calls: Vec<Vec<usize>> = if self.clustered() {
            (0..n).map(|k| vec![k]).collect()
        } else {
            vec![(0..n).collect()]
        };
        let replies = futures_util::future::join_all(
            calls
                .iter()
                .map(|parts| self.read_new_events_in(parts, consumer, each)),
        )
        .await;
        let mut entries = Vec::new();
        let mut lost = Vec::new();
        let mut last = vec!["$".to_string(); n];
        for (parts, reply) in calls.iter().zip(replies) {
            for (k, (fresh, gap, at)) in parts.iter().zip(reply?) {
                entries.extend(fresh);
                lost.extend(gap);
                last[*k] = at;
            }
        }
        Ok((entries, lost, last))
    }

    /// One `webhook_read.lua` call for the partitions `parts`.
    #[allow(clippy::type_complexity)]
    async fn read_new_events_in(
        &self,
        parts: &[usize],
        consumer: &str,
        count: usize,
    ) -> EngineResult<Vec<(Vec<LogEntry>, Option<LostEvents>, String)>> {
        let now_ms = crate::model::now_millis();
        let mut invocation = self.scripts.webhook_read.prepare_invoke();
        for k in parts {
            let keys = self.keys.part(*k);
            invocation.key(&keys.events).key(&keys.webhook_lost);
        }
        invocation
            .arg(DISPATCH_GROUP)
            .arg(consumer)
            .arg(count)
            .arg(now_ms)
            .arg(LOST_RANGES_KEPT);
        let what = "reading events for webhooks";
        let reply = self.run_script(what, &invocation).await?;
        let bad = || corrupt("webhook read script returned an unexpected reply");
        let per_partition = items(&reply).ok_or_else(bad)?;
        if per_partition.len() != parts.len() {
            return Err(bad());
        }
        let mut out = Vec::with_capacity(parts.len());
        let mut recreate = false;
        for (k, reply) in parts.iter().zip(per_partition) {
            let k = *k;
            match items(reply).ok_or_else(bad)? {
                [status] if text(status).as_deref() == Some("nogroup") => {
                    recreate = true;
                    out.push((Vec::new(), None, "$".into()));
                }
                [status, entries, gap, last] if text(status).as_deref() == Some("ok") => {
                    let entries = reply::read_entries(entries)?
                        .into_iter()
                        .map(|entry| log_entry(k, entry))
                        .collect();
                    let gap = match gap {
                        Value::Nil | Value::Boolean(false) => None,
                        gap => {
                            let [after, before, count] = items(gap).ok_or_else(bad)? else {
                                return Err(bad());
                            };
                            Some(LostEvents {
                                after_id: qualified_entry_id(k, &text(after).ok_or_else(bad)?),
                                before_id: qualified_entry_id(k, &text(before).ok_or_else(bad)?),
                                count: int(count)
                                    .and_then(|n| u64::try_from(n).ok())
                                    .ok_or_else(bad)?,
                                detected_at_ms: now_ms,
                            })
                        }
                    };
                    out.push((entries, gap, text(last).unwrap_or_else(|| "$".into())));
                }
                _ => return Err(bad()),
            }
        }
        if recreate {
            tracing::warn!(
                group = DISPATCH_GROUP,
                "consumer group is missing; creating it again"
            );
            self.create_group(Group::Dispatch).await?;
        }
        Ok(out)
    }

    /// Waits up to `block` for an entry after `after` (per partition) on the event log
    /// (`XREAD BLOCK`, which hands nothing out), on a dedicated connection: every entry is
    /// then read through [`Self::read_new_events`] and its check. Whether an entry came. On a
    /// cluster, where one read cannot span partitions, it just pauses (the caller reads again).
    pub(super) async fn wait_for_events(
        &self,
        after: &[String],
        block: Duration,
        pause: Duration,
    ) -> EngineResult<bool> {
        if self.clustered() && self.keys.partitions() > 1 {
            tokio::time::sleep(pause.min(block)).await;
            return Ok(true);
        }
        let mut cmd = ::redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(millis(block))
            .arg("STREAMS");
        for k in 0..self.keys.partitions() {
            cmd.arg(&self.keys.part(k).events);
        }
        for k in 0..self.keys.partitions() {
            cmd.arg(after.get(k).map_or("$", String::as_str));
        }
        let what = "waiting for events for webhooks";
        let reply: Value = self
            .blocking
            .query(what, &cmd, block, self.op_timeout)
            .await
            .map_err(|e| map_err(what, e))?;
        Ok(!matches!(reply, Value::Nil))
    }
}
