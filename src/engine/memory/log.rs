//! The event log in the memory engine: entries with Redis-shaped ids (`<ms>-<seq>`), trimmed
//! to the retention, and the malformed entries set aside.
//!
//! It never interprets an entry itself: reading goes through the seam's decoder
//! (`engine/log.rs`), the same one the Redis engine uses.

use super::{MemoryEngine, State};
use crate::engine::{EngineError, EngineResult, EventLog, LogEntry, decode_event};
use crate::model::{EventId, LogCursor, MalformedEntry, now_millis};
use async_trait::async_trait;
use std::time::Duration;
use tokio::time::Instant;

impl State {
    pub(super) fn append_event(&mut self, raw: String, retention: u64) -> EventId {
        let now = now_millis();
        let id = if now > self.last_event_id.ms {
            EventId { ms: now, seq: 0 }
        } else {
            EventId {
                ms: self.last_event_id.ms,
                seq: self.last_event_id.seq + 1,
            }
        };
        self.last_event_id = id;
        self.events.push_back((id, raw));
        while self.events.len() as u64 > retention.max(1) {
            if let Some((trimmed, _)) = self.events.pop_front() {
                self.deleted_through = Some(trimmed);
                self.webhooks.note_trimmed(trimmed);
            }
        }
        id
    }
}

/// The memory engine has one partition.
#[async_trait]
impl EventLog for MemoryEngine {
    fn partitions(&self) -> usize {
        1
    }

    async fn read_events(
        &self,
        after: &LogCursor,
        max: usize,
        wait: Duration,
    ) -> EngineResult<Vec<LogEntry>> {
        let after = after.get(0);
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.events_appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let entries = self.with_state(|state| {
                let start = state.events.partition_point(|(id, _)| *id <= after);
                state
                    .events
                    .range(start..)
                    .take(max)
                    .map(|(id, raw)| decode_event(0, id.to_string(), raw))
                    .collect::<Vec<_>>()
            })?;
            if !entries.is_empty() || Instant::now() >= deadline {
                return Ok(entries);
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    async fn append_raw_event(&self, raw: &str) -> EngineResult<(usize, EventId)> {
        let retention = self.settings.event_retention;
        let id = self.with_state(|state| state.append_event(raw.to_string(), retention))?;
        self.events_appended.notify_waiters();
        Ok((0, id))
    }

    async fn log_end(&self) -> EngineResult<LogCursor> {
        self.with_state(|state| {
            LogCursor::uniform(1, state.events.back().map_or(EventId::ZERO, |(id, _)| *id))
        })
    }

    async fn first_event_id(&self, _partition: usize) -> EngineResult<Option<EventId>> {
        self.with_state(|state| state.events.front().map(|(id, _)| *id))
    }

    /// Exact: the engine remembers the newest entry it trimmed.
    async fn removed_after(&self, cursor: &LogCursor) -> EngineResult<Vec<(usize, EventId)>> {
        let cursor = cursor.get(0);
        self.with_state(|state| {
            state
                .deleted_through
                .filter(|deleted| *deleted > cursor)
                .map(|deleted| (0, deleted))
                .into_iter()
                .collect()
        })
    }

    async fn set_aside(&self, entry: &MalformedEntry) -> EngineResult<()> {
        let id: EventId = entry
            .entry_id
            .parse()
            .map_err(|e: String| EngineError::Corrupt(e))?;
        self.with_state(|state| {
            state.malformed.entry(id).or_insert_with(|| entry.clone());
        })
    }

    async fn malformed_entries(&self, limit: usize) -> EngineResult<Vec<MalformedEntry>> {
        self.with_state(|state| state.malformed.values().take(limit).cloned().collect())
    }
}
