//! The event log on Redis: the events stream (`XREAD`, `XADD`, `XRANGE`) and the hash of
//! malformed entries set aside.
//!
//! It owns reading and appending raw entries. It never interprets one: every entry goes
//! through the seam's decoder (`engine/log.rs`), the same one the memory engine uses.

use super::conn::{is_no_such_key, map_err};
use super::reply::{self, corrupt};
use super::{RedisEngine, log_entry, parse_event_id};
use crate::engine::{EngineResult, EventLog, LogEntry, merge_partitions};
use crate::model::{EventId, LogCursor, MalformedEntry};
use ::redis::Value;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::time::Duration;

/// HSCAN page size when listing malformed entries.
const SCAN_PAGE: usize = 500;

/// How malformed entries sort: by entry id, then partition. Their ids are qualified
/// (`<partition>/<entry id>` outside partition 0).
fn malformed_order(entry_id: &str) -> EngineResult<(EventId, usize)> {
    let (partition, id) = match entry_id.split_once('/') {
        Some((p, id)) => (
            p.parse::<usize>()
                .map_err(|_| corrupt(format!("malformed entry id `{entry_id}`")))?,
            id,
        ),
        None => (0, entry_id),
    };
    Ok((parse_event_id(id)?, partition))
}

/// An end of a partition's stream.
#[derive(Clone, Copy)]
enum Edge {
    Oldest,
    Newest,
}

impl RedisEngine {
    /// The id of the oldest or newest entry of `partition`'s stream, if it has any.
    async fn edge_entry(&self, partition: usize, edge: Edge) -> EngineResult<Option<EventId>> {
        let (what, command, from, to) = match edge {
            Edge::Oldest => ("reading the first event id", "XRANGE", "-", "+"),
            Edge::Newest => ("reading the last event id", "XREVRANGE", "+", "-"),
        };
        let reply: Value = self
            .run(
                what,
                ::redis::cmd(command)
                    .arg(&self.keys.part(partition).events)
                    .arg(from)
                    .arg(to)
                    .arg("COUNT")
                    .arg(1),
            )
            .await?;
        reply::range_entries(&reply)?
            .first()
            .map(|entry| parse_event_id(&entry.id))
            .transpose()
    }

    /// `XREAD COUNT max [BLOCK wait] STREAMS <the partitions' event streams> <positions>`, for
    /// the partitions in `parts`, on one connection (blocking ones on a dedicated one).
    async fn xread_events(
        &self,
        parts: &[usize],
        after: &LogCursor,
        max: usize,
        wait: Duration,
    ) -> EngineResult<Vec<LogEntry>> {
        let mut cmd = ::redis::cmd("XREAD");
        cmd.arg("COUNT").arg(max);
        let block_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        if block_ms > 0 {
            cmd.arg("BLOCK").arg(block_ms);
        }
        cmd.arg("STREAMS");
        for k in parts {
            cmd.arg(&self.keys.part(*k).events);
        }
        for k in parts {
            cmd.arg(after.get(*k).to_string());
        }
        let what = "reading events";
        let reply: Value = if block_ms > 0 {
            self.blocking
                .query(what, &cmd, wait, self.op_timeout)
                .await
                .map_err(|e| map_err(what, e))?
        } else {
            self.run(what, &cmd).await?
        };
        let mut out = Vec::new();
        for (key, entries) in reply::read_streams(&reply)? {
            let partition = self
                .keys
                .partition_of_stream(&key)
                .ok_or_else(|| corrupt(format!("XREAD answered for an unknown stream `{key}`")))?;
            out.extend(entries.into_iter().map(|e| log_entry(partition, e)));
        }
        Ok(out)
    }
    /// [`EventLog::removed_after`] for one partition.
    async fn removed_in(&self, partition: usize, cursor: EventId) -> EngineResult<Option<EventId>> {
        let what = "reading what the event log removed";
        let reply: Value = match self
            .query(
                what,
                ::redis::cmd("XINFO")
                    .arg("STREAM")
                    .arg(&self.keys.part(partition).events),
            )
            .await
        {
            Ok(reply) => reply,
            Err(e) if is_no_such_key(&e) => return Ok(None),
            Err(e) => return Err(map_err(what, e)),
        };
        let id = |name: &str| -> EngineResult<Option<EventId>> {
            reply::named(&reply, name)
                .and_then(reply::text)
                .map(|id| parse_event_id(&id))
                .transpose()
        };
        let count = |name: &str| reply::named(&reply, name).and_then(reply::int);
        if let Some(deleted) = id("max-deleted-entry-id")?
            && deleted > cursor
        {
            return Ok(Some(deleted));
        }
        let first = match reply::named(&reply, "first-entry") {
            Some(Value::Nil) | None => None,
            Some(entry) => reply::stream_entry(entry)?
                .map(|e| parse_event_id(&e.id))
                .transpose()?,
        };
        let trimmed = match (count("entries-added"), count("length")) {
            (Some(added), Some(length)) => added > length,
            _ => true,
        };
        Ok(first
            .filter(|first| trimmed && cursor < *first)
            .map(EventId::predecessor)
            .filter(|through| *through > cursor))
    }
}

#[async_trait]
impl EventLog for RedisEngine {
    fn partitions(&self) -> usize {
        self.keys.partitions()
    }

    /// One Redis: one `XREAD` over every partition's stream (`BLOCK` on a dedicated
    /// connection when waiting). A cluster refuses a read across slots, so there each
    /// partition is read on its own and a wait polls (`poll_partitions`).
    async fn read_events(
        &self,
        after: &LogCursor,
        max: usize,
        wait: Duration,
    ) -> EngineResult<Vec<LogEntry>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let all: Vec<usize> = (0..self.keys.partitions()).collect();
        if !self.clustered() || all.len() == 1 {
            let entries = self.xread_events(&all, after, max, wait).await?;
            return Ok(merge_partitions(entries));
        }
        let entries = self
            .poll_partitions(wait, |k| async move {
                self.xread_events(&[k], after, max, Duration::ZERO).await
            })
            .await?;
        Ok(merge_partitions(entries))
    }

    /// To the partition of the event's `orderId` (0 when the text has none), so an entry
    /// lands where a foreign producer following the README would put it.
    async fn append_raw_event(&self, raw: &str) -> EngineResult<(usize, EventId)> {
        let partition = serde_json::from_str::<serde_json::Value>(raw)
            .ok()
            .and_then(|v| {
                v.get("orderId")
                    .and_then(|o| o.as_str())
                    .map(|o| self.keys.partition(o))
            })
            .unwrap_or(0);
        let id: String = self
            .run(
                "appending an event",
                ::redis::cmd("XADD")
                    .arg(&self.keys.part(partition).events)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(self.settings.event_retention.max(1))
                    .arg("*")
                    .arg("event")
                    .arg(raw),
            )
            .await?;
        Ok((partition, parse_event_id(&id)?))
    }

    async fn log_end(&self) -> EngineResult<LogCursor> {
        let ends = futures_util::future::join_all(
            (0..self.keys.partitions()).map(|k| self.edge_entry(k, Edge::Newest)),
        )
        .await;
        let mut positions = Vec::with_capacity(ends.len());
        for end in ends {
            positions.push(end?.unwrap_or(EventId::ZERO));
        }
        Ok(LogCursor::from_positions(positions))
    }

    async fn first_event_id(&self, partition: usize) -> EngineResult<Option<EventId>> {
        self.edge_entry(partition, Edge::Oldest).await
    }

    /// One `XINFO STREAM` per partition. Entries deleted by `XDEL` are known exactly
    /// (`max-deleted-entry-id`); trimming is not recorded by Redis, but it removes the oldest
    /// first, so when entries were trimmed (`entries-added` > `length`) a cursor before the
    /// oldest retained entry may have lost what lay between. A cursor on a retained entry lost
    /// nothing. Redis 6.2 keeps neither counter: any cursor before the oldest entry is reported.
    async fn removed_after(&self, cursor: &LogCursor) -> EngineResult<Vec<(usize, EventId)>> {
        let found = futures_util::future::join_all(
            (0..self.keys.partitions()).map(|k| self.removed_in(k, cursor.get(k))),
        )
        .await;
        let mut out = Vec::new();
        for (k, removed) in found.into_iter().enumerate() {
            if let Some(through) = removed? {
                out.push((k, through));
            }
        }
        Ok(out)
    }

    async fn set_aside(&self, entry: &MalformedEntry) -> EngineResult<()> {
        // Validate the id: the listing sorts by it.
        malformed_order(&entry.entry_id)?;
        let json = serde_json::to_string(entry).map_err(corrupt)?;
        let _: Value = self
            .run(
                "setting a malformed event aside",
                ::redis::cmd("HSETNX")
                    .arg(&self.keys.malformed_events)
                    .arg(&entry.entry_id)
                    .arg(json),
            )
            .await?;
        Ok(())
    }

    async fn malformed_entries(&self, limit: usize) -> EngineResult<Vec<MalformedEntry>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // HSCAN in pages, keeping only the `limit` oldest: memory stays bounded by `limit`
        // however many entries were set aside.
        let mut oldest: BTreeMap<(EventId, usize), MalformedEntry> = BTreeMap::new();
        let mut cursor = "0".to_string();
        loop {
            let (next, pairs): (String, Vec<(String, String)>) = self
                .run(
                    "listing malformed events",
                    ::redis::cmd("HSCAN")
                        .arg(&self.keys.malformed_events)
                        .arg(&cursor)
                        .arg("COUNT")
                        .arg(SCAN_PAGE),
                )
                .await?;
            for (id, json) in pairs {
                let (Ok(key), Ok(entry)) = (
                    malformed_order(&id),
                    serde_json::from_str::<MalformedEntry>(&json),
                ) else {
                    tracing::warn!(entry_id = %id, "malformed-entry record does not decode");
                    continue;
                };
                oldest.insert(key, entry);
                if oldest.len() > limit {
                    oldest.pop_last();
                }
            }
            if next == "0" {
                break;
            }
            cursor = next;
        }
        Ok(oldest.into_values().collect())
    }
}
