//! The command queue on Redis: each partition's `P{pk}:commands` read through its `workers`
//! group, its dead-letter stream, visibility by idle time (`scripts/touch.lua`), stats and
//! redrive (summed and done over every partition). A received command's partition is its
//! order's.
//!
//! It owns turning stream entries into received commands (and setting aside those that do not
//! decode). It never changes an order: completing a command is `orders.rs`' apply script.

use super::conn::{map_err, within};
use super::groups::GROUP;
use super::reply::{self, StreamEntry, corrupt, int, items};
use super::{RedisEngine, millis};
use crate::engine::{
    Command, CommandQueue, DEAD_MAX_RECEIVES, DeadLetter, EngineResult, NewCommand, QueueStats,
    ReceivedCommand,
};
use ::redis::Value;
use async_trait::async_trait;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// `queue_stats` counts at most this many expired in-flight commands (the rest still count as
/// in flight): the figure stays cheap however large the backlog.
const STATS_EXPIRED_SCAN: usize = 10_000;

fn parse_command(entry: &StreamEntry) -> Result<NewCommand, String> {
    let raw = entry
        .text("message")
        .ok_or("no UTF-8 `message` field".to_string())?;
    serde_json::from_str(raw).map_err(|e| format!("`message` does not decode: {e}"))
}

/// A dead-letter stream entry: its fields, or (written by earlier versions) its `deadLetter`
/// JSON `{message, receiveCount, deadAt}`.
fn dead_letter_of(entry: &StreamEntry) -> Result<DeadLetter, String> {
    if let Some(old) = entry.text("deadLetter") {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Old {
            message: NewCommand,
            receive_count: u32,
            dead_at: String,
        }
        let old: Old = serde_json::from_str(old).map_err(|e| e.to_string())?;
        return Ok(DeadLetter {
            message_id: old.message.message_id.clone(),
            order_id: old.message.order_id.clone(),
            message: Some(old.message),
            raw: None,
            reason: DEAD_MAX_RECEIVES.into(),
            receive_count: old.receive_count,
            dead_at: old.dead_at,
        });
    }
    let field = |name: &str| entry.text(name).ok_or(format!("no UTF-8 `{name}` field"));
    let raw = field("message")?;
    let message = serde_json::from_str::<NewCommand>(raw).ok();
    Ok(DeadLetter {
        message_id: field("messageId")?.to_string(),
        order_id: field("orderId")?.to_string(),
        raw: message.is_none().then(|| raw.to_string()),
        message,
        reason: field("reason")?.to_string(),
        receive_count: field("receiveCount")?
            .parse()
            .map_err(|e| format!("receiveCount: {e}"))?,
        dead_at: field("deadAt")?.to_string(),
    })
}

impl RedisEngine {
    /// Turns stream entries into received commands. An entry that does not decode cannot be
    /// handed to a worker: if it names its order and message it is a poisoned command and goes
    /// to the dead-letter queue with its order's later commands (`scripts/dead_letter.lua`),
    /// so it never blocks its order; otherwise it is moved aside (kept in a hash,
    /// acknowledged, deleted) and logged. Either way it neither blocks the queue nor
    /// disappears silently. Also returns the messageIds dead-lettered (a later command of the
    /// same order may be among the entries received: it must not be handed out).
    async fn to_received(
        &self,
        entries: Vec<(usize, StreamEntry, u32)>,
    ) -> EngineResult<(Vec<ReceivedCommand>, HashSet<String>)> {
        let mut out = Vec::with_capacity(entries.len());
        let mut moved = HashSet::new();
        for (partition, entry, receive_count) in entries {
            match parse_command(&entry) {
                // A command filed under another partition than its order's (a foreign
                // writer's mistake) would be applied against the wrong keys: set aside too.
                Ok(message) if self.keys.partition(&message.order_id) != partition => {
                    self.set_command_aside(
                        partition,
                        &entry,
                        format!(
                            "order `{}` belongs to partition {}, not {partition}",
                            message.order_id,
                            self.keys.partition(&message.order_id)
                        ),
                    )
                    .await?;
                }
                Ok(message) => out.push(ReceivedCommand {
                    receipt: entry.id,
                    message,
                    receive_count,
                }),
                Err(error)
                    if entry.text("orderId").is_some_and(|o| !o.is_empty())
                        && entry.text("messageId").is_some_and(|m| !m.is_empty()) =>
                {
                    tracing::error!(entry_id = %entry.id, partition, %error,
                        "command entry does not decode; dead-lettered with its order's later commands once it heads its order");
                    moved.extend(
                        self.dead_letter(
                            partition,
                            &entry,
                            receive_count,
                            format!("undecodable: {error}"),
                        )
                        .await?,
                    );
                }
                Err(error) => self.set_command_aside(partition, &entry, error).await?,
            }
        }
        out.retain(|c| !moved.contains(&c.message.message_id));
        Ok((out, moved))
    }

    /// Moves a poisoned command entry to the dead-letter stream with its order's later
    /// commands (`scripts/dead_letter.lua`); the messageIds moved.
    async fn dead_letter(
        &self,
        partition: usize,
        entry: &StreamEntry,
        receive_count: u32,
        reason: String,
    ) -> EngineResult<Vec<String>> {
        let keys = self.keys.part(partition);
        let order_id = entry.text("orderId").unwrap_or_default();
        let message_id = entry.text("messageId").unwrap_or_default();
        let mut invocation = self.scripts.dead_letter.prepare_invoke();
        invocation
            .key(&keys.commands)
            .key(&keys.dlq)
            .arg(GROUP)
            .arg(&entry.id)
            .arg(message_id)
            .arg(order_id)
            .arg(entry.text("message").unwrap_or_default())
            .arg(receive_count)
            .arg(crate::model::now_rfc3339())
            .arg(&reason)
            .arg(&keys.cmdq_prefix)
            .arg(format!("{}:order:", keys.base))
            .arg(&keys.dlq_index_prefix);
        let reply = self
            .run_script("moving a command to the dead-letter queue", &invocation)
            .await?;
        let bad = || corrupt("dead-letter script returned an unexpected reply");
        let [moved, missing] = items(&reply).ok_or_else(bad)? else {
            return Err(bad());
        };
        let moved: Vec<String> = items(moved)
            .ok_or_else(bad)?
            .iter()
            .map(reply::text)
            .collect::<Option<_>>()
            .ok_or_else(bad)?;
        let missing = int(missing).ok_or_else(bad)?;
        // Nothing moved: completed meanwhile, or (missing < 0) it still waits behind an
        // earlier command of its order and stays pending until it heads the order.
        if moved.is_empty() {
            return Ok(moved);
        }
        tracing::warn!(message_id = %message_id, order_id = %order_id, partition, %reason,
            later_commands = moved.len().saturating_sub(1), missing,
            "command moved to the dead-letter queue with its order's later commands");
        Ok(moved)
    }

    /// Takes back the receive that a fresh read counted for each command that waits behind an
    /// earlier command of its order (`scripts/uncount_waiting.lua`). Only a transition or a
    /// workflow step can wait: a `processOrder` is its order's first command (and a redriven
    /// one goes back in front).
    async fn uncount_waiting(&self, batch: &mut [ReceivedCommand]) -> EngineResult<()> {
        let mut by_partition: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for (i, command) in batch.iter().enumerate() {
            if matches!(
                command.message.command,
                Command::Transition { .. } | Command::Step { .. }
            ) {
                by_partition
                    .entry(self.keys.partition(&command.message.order_id))
                    .or_default()
                    .push(i);
            }
        }
        // One script per partition (a script touches one slot), run concurrently.
        let calls = by_partition.into_iter().map(|(partition, indexes)| {
            let keys = self.keys.part(partition);
            let mut invocation = self.scripts.uncount_waiting.prepare_invoke();
            invocation
                .key(&keys.commands)
                .arg(GROUP)
                .arg(&self.settings.consumer_name)
                .arg(&keys.cmdq_prefix)
                .arg(format!("{}:order:", keys.base));
            for i in &indexes {
                let command = &batch[*i];
                invocation
                    .arg(&command.receipt)
                    .arg(&command.message.message_id)
                    .arg(&command.message.order_id);
            }
            async move {
                let reply = self
                    .run_script("not counting receives of waiting commands", &invocation)
                    .await?;
                EngineResult::Ok((indexes, reply))
            }
        });
        let replies = futures_util::future::try_join_all(calls).await?;
        let bad = || corrupt("uncount script returned an unexpected reply");
        for (indexes, reply) in replies {
            let counts = items(&reply).ok_or_else(bad)?;
            if counts.len() != indexes.len() {
                return Err(bad());
            }
            for (i, count) in indexes.into_iter().zip(counts) {
                batch[i].receive_count =
                    int(count).ok_or_else(bad)?.clamp(0, i64::from(u32::MAX)) as u32;
            }
        }
        Ok(())
    }

    /// Moves a command entry that cannot be handed to a worker aside: kept in a hash,
    /// acknowledged, deleted, logged.
    async fn set_command_aside(
        &self,
        partition: usize,
        entry: &StreamEntry,
        error: String,
    ) -> EngineResult<()> {
        let keys = self.keys.part(partition);
        tracing::error!(entry_id = %entry.id, partition, %error, "command entry does not decode; set aside");
        let kept = serde_json::json!({"fields": entry.fields_json(), "error": error}).to_string();
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .cmd("HSET")
            .arg(&keys.malformed_commands)
            .arg(&entry.id)
            .arg(kept)
            .cmd("XACK")
            .arg(&keys.commands)
            .arg(GROUP)
            .arg(&entry.id)
            .cmd("XDEL")
            .arg(&keys.commands)
            .arg(&entry.id);
        let mut conn = self.conn.clone();
        within(
            "setting a command aside",
            self.op_timeout,
            pipe.query_async::<Value>(&mut conn),
        )
        .await
        .map_err(|e| map_err("setting a command aside", e))?;
        Ok(())
    }

    /// Resets a delivery's idle time (see `scripts/touch.lua`).
    async fn touch(
        &self,
        command: &ReceivedCommand,
        idle: Duration,
        what: &str,
    ) -> EngineResult<()> {
        let mut invocation = self.scripts.touch.prepare_invoke();
        invocation
            .key(&self.keys.of(&command.message.order_id).commands)
            .arg(GROUP)
            .arg(&self.settings.consumer_name)
            .arg(&command.receipt)
            .arg(command.receive_count)
            .arg(u64::try_from(idle.as_millis()).unwrap_or(u64::MAX));
        self.run_script(what, &invocation).await.map(|_| ())
    }
}

#[async_trait]
impl CommandQueue for RedisEngine {
    async fn receive_batch(
        &self,
        max: usize,
        wait: Duration,
    ) -> EngineResult<Vec<ReceivedCommand>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = tokio::time::Instant::now() + wait;
        // While commands are in flight, one of them may expire during a long block, which only
        // a claim notices: block in slices then. With nothing pending, block the whole wait.
        let slice = (self.settings.visibility_timeout / 4).max(Duration::from_millis(50));
        loop {
            let now_ms = self.started.elapsed().as_millis() as u64;
            let (expired, poisoned, pending) =
                if now_ms >= self.next_claim_ms.load(Ordering::Relaxed) {
                    self.next_claim_ms
                        .store(now_ms + slice.as_millis() as u64, Ordering::Relaxed);
                    self.claim_expired(max).await?
                } else {
                    // Not looked: assume work may be in flight, so block in slices.
                    (Vec::new(), Vec::new(), 1)
                };
            let mut moved = HashSet::new();
            for (partition, entry, receives) in poisoned {
                moved.extend(
                    self.dead_letter(partition, &entry, receives, DEAD_MAX_RECEIVES.into())
                        .await?,
                );
            }
            let (mut batch, more) = self.to_received(expired).await?;
            moved.extend(more);
            batch.retain(|c| !moved.contains(&c.message.message_id));
            if batch.len() >= max {
                return Ok(batch);
            }
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            // Already holding work: take what is new without waiting for more.
            let block = if !batch.is_empty() {
                Duration::ZERO
            } else if pending > 0 {
                remaining.min(slice)
            } else {
                remaining
            };
            let fresh = self.read_new(max - batch.len(), block).await?;
            let (mut fresh, moved) = self
                .to_received(fresh.into_iter().map(|(k, e)| (k, e, 1)).collect())
                .await?;
            // An undecodable head read here took its order's later commands to the dead
            // letters: one of them may be among those claimed above.
            batch.retain(|c| !moved.contains(&c.message.message_id));
            self.uncount_waiting(&mut fresh).await?;
            batch.extend(fresh);
            if !batch.is_empty() || tokio::time::Instant::now() >= deadline || block.is_zero() {
                return Ok(batch);
            }
        }
    }

    async fn extend_visibility(&self, command: &ReceivedCommand) -> EngineResult<()> {
        self.touch(command, Duration::ZERO, "extending visibility")
            .await
    }

    async fn release(&self, command: &ReceivedCommand) -> EngineResult<()> {
        // Idle as long as the visibility timeout: the next claim takes it, and the next
        // receive claims.
        self.touch(
            command,
            self.settings.visibility_timeout,
            "releasing a command",
        )
        .await?;
        self.next_claim_ms.store(0, Ordering::Relaxed);
        Ok(())
    }

    async fn queue_stats(&self) -> EngineResult<QueueStats> {
        let stats = futures_util::future::join_all(
            (0..self.keys.partitions()).map(|k| self.queue_stats_in(k)),
        )
        .await;
        let mut total = QueueStats::default();
        for s in stats {
            let s = s?;
            total.visible += s.visible;
            total.in_flight += s.in_flight;
            total.dead_letters += s.dead_letters;
        }
        Ok(total)
    }

    /// The oldest `limit` of every partition's, oldest first.
    async fn dead_letters(&self, limit: usize) -> EngineResult<Vec<DeadLetter>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let lists = futures_util::future::join_all(
            (0..self.keys.partitions()).map(|k| self.dead_letters_in(k, limit)),
        )
        .await;
        let mut out = Vec::new();
        for list in lists {
            out.extend(list?);
        }
        out.sort_by(|a, b| a.dead_at.cmp(&b.dead_at));
        out.truncate(limit);
        Ok(out)
    }

    /// Partition by partition until `limit` are moved.
    async fn redrive(&self, limit: usize) -> EngineResult<usize> {
        let mut moved = 0;
        for k in 0..self.keys.partitions() {
            if moved >= limit {
                break;
            }
            moved += self.redrive_in(k, limit - moved).await?;
        }
        Ok(moved)
    }
}

impl RedisEngine {
    async fn queue_stats_in(&self, partition: usize) -> EngineResult<QueueStats> {
        let keys = self.keys.part(partition);
        let mut invocation = self.scripts.stats.prepare_invoke();
        invocation
            .key(&keys.commands)
            .key(&keys.dlq)
            .arg(GROUP)
            .arg(millis(self.settings.visibility_timeout))
            .arg(STATS_EXPIRED_SCAN);
        let reply = self.run_script("reading queue stats", &invocation).await?;
        let bad = || corrupt("stats script returned an unexpected reply");
        let figures = items(&reply)
            .ok_or_else(bad)?
            .iter()
            .map(|v| int(v).map(|n| n.max(0) as u64))
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(bad)?;
        let [length, pending, expired, dead] = figures[..] else {
            return Err(bad());
        };
        let in_flight = pending.saturating_sub(expired);
        Ok(QueueStats {
            visible: length.saturating_sub(in_flight),
            in_flight,
            dead_letters: dead,
        })
    }

    async fn dead_letters_in(
        &self,
        partition: usize,
        limit: usize,
    ) -> EngineResult<Vec<DeadLetter>> {
        let reply: Value = self
            .run(
                "reading dead letters",
                ::redis::cmd("XRANGE")
                    .arg(&self.keys.part(partition).dlq)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit),
            )
            .await?;
        let mut out = Vec::new();
        for entry in reply::range_entries(&reply)? {
            match dead_letter_of(&entry) {
                Ok(dead) => out.push(dead),
                // One unreadable entry must not hide the others.
                Err(error) => {
                    tracing::warn!(entry_id = %entry.id, %error, "dead letter does not decode")
                }
            }
        }
        Ok(out)
    }

    async fn redrive_in(&self, partition: usize, limit: usize) -> EngineResult<usize> {
        if limit == 0 {
            return Ok(0);
        }
        let keys = self.keys.part(partition);
        let mut invocation = self.scripts.redrive.prepare_invoke();
        invocation
            .key(&keys.dlq)
            .key(&keys.commands)
            .arg(limit)
            .arg(&keys.cmdq_prefix)
            .arg(&keys.dlq_index_prefix);
        let reply = self
            .run_script("redriving dead letters", &invocation)
            .await?;
        int(&reply)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| corrupt("redrive script returned an unexpected reply"))
    }
}
