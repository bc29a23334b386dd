//! The event log on Redis: the events stream (`XREAD`, `XADD`, `XRANGE`) and the hash of
//! malformed entries set aside.
//!
//! It owns reading and appending raw entries. It never interprets one: every entry goes
//! through the seam's decoder (`engine/log.rs`), the same one the memory engine uses.

use super::conn::{is_no_such_key, map_err};
use super::reply::{self, corrupt};
use super::{RedisEngine, log_entry, parse_event_id};
use crate::engine::{EngineResult, EventLog, LogEntry};
use crate::model::{EventId, MalformedEntry};
use ::redis::Value;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::time::Duration;

/// HSCAN page size when listing malformed entries.
const SCAN_PAGE: usize = 500;

#[async_trait]
impl EventLog for RedisEngine {
    async fn read_events(
        &self,
        after: EventId,
        max: usize,
        wait: Duration,
    ) -> EngineResult<Vec<LogEntry>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut cmd = ::redis::cmd("XREAD");
        cmd.arg("COUNT").arg(max);
        let block_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        if block_ms > 0 {
            cmd.arg("BLOCK").arg(block_ms);
        }
        cmd.arg("STREAMS")
            .arg(&self.keys.events)
            .arg(after.to_string());
        let what = "reading events";
        let reply: Value = if block_ms > 0 {
            self.blocking
                .query(what, &cmd, wait, self.op_timeout)
                .await
                .map_err(|e| map_err(what, e))?
        } else {
            self.run(what, &cmd).await?
        };
        Ok(reply::read_entries(&reply)?
            .into_iter()
            .map(log_entry)
            .collect())
    }

    async fn append_raw_event(&self, raw: &str) -> EngineResult<EventId> {
        let id: String = self
            .run(
                "appending an event",
                ::redis::cmd("XADD")
                    .arg(&self.keys.events)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(self.settings.event_retention.max(1))
                    .arg("*")
                    .arg("event")
                    .arg(raw),
            )
            .await?;
        parse_event_id(&id)
    }

    async fn last_event_id(&self) -> EngineResult<EventId> {
        let reply: Value = self
            .run(
                "reading the last event id",
                ::redis::cmd("XREVRANGE")
                    .arg(&self.keys.events)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1),
            )
            .await?;
        match reply::range_entries(&reply)?.first() {
            Some(entry) => parse_event_id(&entry.id),
            None => Ok(EventId::ZERO),
        }
    }

    async fn first_event_id(&self) -> EngineResult<Option<EventId>> {
        let reply: Value = self
            .run(
                "reading the first event id",
                ::redis::cmd("XRANGE")
                    .arg(&self.keys.events)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1),
            )
            .await?;
        reply::range_entries(&reply)?
            .first()
            .map(|entry| parse_event_id(&entry.id))
            .transpose()
    }

    /// From one `XINFO STREAM`. Entries deleted by `XDEL` are known exactly
    /// (`max-deleted-entry-id`); trimming is not recorded by Redis, but it removes the oldest
    /// first, so when entries were trimmed (`entries-added` > `length`) a cursor before the
    /// oldest retained entry may have lost what lay between. A cursor on a retained entry lost
    /// nothing. Redis 6.2 keeps neither counter: any cursor before the oldest entry is reported.
    async fn removed_after(&self, cursor: EventId) -> EngineResult<Option<EventId>> {
        let what = "reading what the event log removed";
        let reply: Value = match self
            .query(
                what,
                ::redis::cmd("XINFO").arg("STREAM").arg(&self.keys.events),
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

    async fn set_aside(&self, entry: &MalformedEntry) -> EngineResult<()> {
        // Validate the id: the listing sorts by it.
        parse_event_id(&entry.entry_id)?;
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
        let mut oldest: BTreeMap<EventId, MalformedEntry> = BTreeMap::new();
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
                    id.parse::<EventId>(),
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
