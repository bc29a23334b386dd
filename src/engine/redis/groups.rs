//! The consumer-group plumbing of the Redis engine: the two groups Herald reads (the command
//! queue's `workers`, the webhook dispatchers' group on the event log), their creation and
//! recovery, `XREADGROUP` and the `XAUTOCLAIM`-based takeover of expired deliveries.
//!
//! It owns how entries are handed out and taken over, never what they mean: decoding a
//! command is `queue.rs`' job, an event the seam's decoder's (`engine/log.rs`).

use super::conn::{is_busygroup, is_nogroup, map_err};
use super::reply::{self, StreamEntry, corrupt, int, items, text};
use super::{RedisEngine, log_entry, millis};
use crate::engine::webhook::{DISPATCH_GROUP, LOST_RANGES_KEPT, LostEvents};
use crate::engine::{EngineResult, LogEntry};
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

impl RedisEngine {
    /// The stream, group name and starting id of one of Herald's consumer groups.
    fn group_spec(&self, group: Group) -> (&str, &'static str, &'static str) {
        match group {
            // The command queue starts at the beginning: every command is work.
            Group::Commands => (&self.keys.commands, GROUP, "0"),
            // Webhook dispatch starts at the log's end when created: history before the first
            // start (or before a recreation) is not delivered.
            Group::Dispatch => (&self.keys.events, DISPATCH_GROUP, "$"),
        }
    }

    /// `XGROUP CREATE .. MKSTREAM`; an existing group is fine.
    pub(super) async fn create_group(&self, group: Group) -> EngineResult<()> {
        let (stream, name, start) = self.group_spec(group);
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
    /// persistence, or an operator deleted it).
    async fn recover_group(&self, group: Group, e: &::redis::RedisError) -> EngineResult<()> {
        let (stream, name, start) = self.group_spec(group);
        tracing::warn!(error = %e, %stream, group = name, start,
            "consumer group is missing; creating it again");
        self.create_group(group).await
    }

    /// `XREADGROUP .. STREAMS <stream> >` on a dedicated connection, blocking up to `block`:
    /// entries never handed out to any consumer of the group.
    async fn read_group(
        &self,
        group: Group,
        consumer: &str,
        count: usize,
        block: Duration,
        what: &str,
    ) -> EngineResult<Vec<StreamEntry>> {
        let (stream, name, _) = self.group_spec(group);
        let mut cmd = ::redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(name)
            .arg(consumer)
            .arg("COUNT")
            .arg(count);
        let block_ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX);
        // BLOCK 0 would wait forever.
        if block_ms > 0 {
            cmd.arg("BLOCK").arg(block_ms);
        }
        cmd.arg("STREAMS").arg(stream).arg(">");
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
                self.recover_group(group, &e).await?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(map_err(what, e)),
        };
        reply::read_entries(&reply)
    }

    /// Runs the claim script (retrying once after recreating a missing group). Returns the
    /// claimed deliveries and whether any command is pending at all.
    pub(super) async fn claim_expired(
        &self,
        max: usize,
    ) -> EngineResult<(Vec<(StreamEntry, u32)>, u64)> {
        let cursor = cursor(&self.claim_cursor);
        let mut invocation = self.scripts.claim.prepare_invoke();
        invocation
            .key(&self.keys.commands)
            .key(&self.keys.dlq)
            .arg(GROUP)
            .arg(&self.settings.consumer_name)
            .arg(millis(self.settings.visibility_timeout))
            .arg(&cursor)
            .arg(max)
            .arg(self.settings.max_receives)
            .arg(crate::model::now_rfc3339())
            .arg(&self.keys.cmdq_prefix)
            .arg(self.keys.order(""));
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
        let [next, pending, dead, claimed] = items(&reply).ok_or_else(bad)? else {
            return Err(bad());
        };
        set_cursor(&self.claim_cursor, next);
        let pending = int(pending).ok_or_else(bad)?.max(0) as u64;
        let dead = int(dead).ok_or_else(bad)?;
        if dead > 0 {
            tracing::warn!(
                count = dead,
                max_receives = self.settings.max_receives,
                "commands received too often moved to the dead-letter queue"
            );
        }
        let mut out = Vec::new();
        for item in items(claimed).ok_or_else(bad)? {
            let [id, deliveries, fields] = items(item).ok_or_else(bad)? else {
                return Err(bad());
            };
            let entry = StreamEntry {
                id: text(id).ok_or_else(bad)?,
                fields: reply::fields(fields).ok_or_else(bad)?,
            };
            let count = int(deliveries)
                .ok_or_else(bad)?
                .clamp(1, i64::from(u32::MAX)) as u32;
            out.push((entry, count));
        }
        Ok((out, pending))
    }

    /// New commands for this worker.
    pub(super) async fn read_new(
        &self,
        count: usize,
        block: Duration,
    ) -> EngineResult<Vec<StreamEntry>> {
        self.read_group(
            Group::Commands,
            &self.settings.consumer_name,
            count,
            block,
            "reading new commands",
        )
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

    /// `XAUTOCLAIM`: entries handed out at least `reclaim_after` ago and never acknowledged.
    /// A full batch brings the next scan forward to now: more may be waiting.
    pub(super) async fn reclaim_events(
        &self,
        consumer: &str,
        max: usize,
        reclaim_after: Duration,
    ) -> EngineResult<Vec<LogEntry>> {
        let cursor = cursor(&self.dispatch_cursor);
        let what = "reclaiming webhook events";
        let reply: Value = match self
            .query(
                what,
                ::redis::cmd("XAUTOCLAIM")
                    .arg(&self.keys.events)
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
        set_cursor(&self.dispatch_cursor, next);
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
                _ => out.extend(reply::stream_entry(item)?.map(log_entry)),
            }
        }
        if !deleted.is_empty() {
            let _: Value = self
                .run(
                    "acknowledging trimmed webhook events",
                    ::redis::cmd("XACK")
                        .arg(&self.keys.events)
                        .arg(DISPATCH_GROUP)
                        .arg(&deleted),
                )
                .await?;
        }
        Ok(out)
    }

    /// Events never handed out to any node's dispatcher, read by `webhook_read.lua` together
    /// with the check for entries trimmed before the group read them (a gap, recorded and
    /// returned). Also returns the group's last-delivered id, where a wait for new entries
    /// starts. Never blocks.
    pub(super) async fn read_new_events(
        &self,
        consumer: &str,
        max: usize,
    ) -> EngineResult<(Vec<LogEntry>, Option<LostEvents>, String)> {
        let now_ms = crate::model::now_millis();
        let mut invocation = self.scripts.webhook_read.prepare_invoke();
        invocation
            .key(&self.keys.events)
            .key(&self.keys.webhook_lost)
            .arg(DISPATCH_GROUP)
            .arg(consumer)
            .arg(max)
            .arg(now_ms)
            .arg(LOST_RANGES_KEPT);
        let what = "reading events for webhooks";
        let reply = self.run_script(what, &invocation).await?;
        let bad = || corrupt("webhook read script returned an unexpected reply");
        let parts = items(&reply).ok_or_else(bad)?;
        match parts {
            [status] if text(status).as_deref() == Some("nogroup") => {
                tracing::warn!(stream = %self.keys.events, group = DISPATCH_GROUP,
                    "consumer group is missing; creating it again");
                self.create_group(Group::Dispatch).await?;
                Ok((Vec::new(), None, "$".into()))
            }
            [status, entries, gap, last] if text(status).as_deref() == Some("ok") => {
                let entries = reply::read_entries(entries)?
                    .into_iter()
                    .map(log_entry)
                    .collect();
                let gap = match gap {
                    Value::Nil => None,
                    Value::Boolean(false) => None,
                    gap => {
                        let [after, before, count] = items(gap).ok_or_else(bad)? else {
                            return Err(bad());
                        };
                        Some(LostEvents {
                            after_id: text(after).ok_or_else(bad)?,
                            before_id: text(before).ok_or_else(bad)?,
                            count: int(count)
                                .and_then(|n| u64::try_from(n).ok())
                                .ok_or_else(bad)?,
                            detected_at_ms: now_ms,
                        })
                    }
                };
                Ok((entries, gap, text(last).unwrap_or_else(|| "$".into())))
            }
            _ => Err(bad()),
        }
    }

    /// Waits up to `block` for an entry after `after` on the event log (`XREAD BLOCK`, which
    /// hands nothing out), on a dedicated connection: every entry is then read through
    /// [`Self::read_new_events`] and its check. Whether an entry came.
    pub(super) async fn wait_for_events(&self, after: &str, block: Duration) -> EngineResult<bool> {
        let mut cmd = ::redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(millis(block))
            .arg("STREAMS")
            .arg(&self.keys.events)
            .arg(after);
        let what = "waiting for events for webhooks";
        let reply: Value = self
            .blocking
            .query(what, &cmd, block, self.op_timeout)
            .await
            .map_err(|e| map_err(what, e))?;
        Ok(!matches!(reply, Value::Nil))
    }
}
