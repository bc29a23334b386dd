//! Test-only doubles shared by the unit tests of the log's readers (tail, replay, feed).
//!
//! The memory engine has one partition and the Redis engine needs a server, so the readers'
//! multi-partition paths are unit-tested against [`PartitionedLog`]: an in-memory [`EventLog`]
//! of any number of partitions whose ids the test controls (a shared clock by default, or
//! explicit ids to model streams whose clocks disagree). It never stands in for an engine's
//! own conformance tests (`tests/conformance.rs` runs the Redis engine with partitions).

use crate::engine::log::{decode_event, merge_partitions};
use crate::engine::{EngineResult, EventLog, LogEntry};
use crate::model::{EventId, LogCursor, MalformedEntry, partition_of};
use async_trait::async_trait;
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

#[derive(Default)]
struct Stream {
    entries: VecDeque<(EventId, String)>,
    /// The newest entry trimmed, as the memory engine remembers it.
    deleted_through: Option<EventId>,
}

struct State {
    streams: Vec<Stream>,
    clock: u64,
    set_aside: Vec<MalformedEntry>,
}

pub(crate) struct PartitionedLog {
    state: Mutex<State>,
}

impl PartitionedLog {
    pub(crate) fn new(partitions: usize) -> PartitionedLog {
        PartitionedLog {
            state: Mutex::new(State {
                streams: (0..partitions.max(1)).map(|_| Stream::default()).collect(),
                clock: 0,
                set_aside: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `raw` to `partition` with the explicit id `id` (ids must grow per partition).
    pub(crate) fn append_at(&self, partition: usize, id: EventId, raw: &str) {
        let mut state = self.lock();
        state.clock = state.clock.max(id.ms);
        state.streams[partition]
            .entries
            .push_back((id, raw.to_string()));
    }

    /// Removes the oldest entries of `partition` until `keep` are left.
    pub(crate) fn trim(&self, partition: usize, keep: usize) {
        let mut state = self.lock();
        let stream = &mut state.streams[partition];
        while stream.entries.len() > keep {
            if let Some((id, _)) = stream.entries.pop_front() {
                stream.deleted_through = Some(id);
            }
        }
    }

    pub(crate) fn set_aside_entries(&self) -> Vec<MalformedEntry> {
        self.lock().set_aside.clone()
    }
}

#[async_trait]
impl EventLog for PartitionedLog {
    fn partitions(&self) -> usize {
        self.lock().streams.len()
    }

    async fn read_events(
        &self,
        after: &LogCursor,
        max: usize,
        wait: Duration,
    ) -> EngineResult<Vec<LogEntry>> {
        let entries: Vec<LogEntry> = {
            let state = self.lock();
            state
                .streams
                .iter()
                .enumerate()
                .flat_map(|(p, stream)| {
                    let from = after.get(p);
                    stream
                        .entries
                        .iter()
                        .filter(move |(id, _)| *id > from)
                        .take(max)
                        .map(move |(id, raw)| decode_event(p, id.to_string(), raw))
                })
                .collect()
        };
        if entries.is_empty() && !wait.is_zero() {
            tokio::time::sleep(wait.min(Duration::from_millis(5))).await;
        }
        Ok(merge_partitions(entries))
    }

    /// To the order's partition, at the next tick of a clock shared by every partition.
    async fn append_raw_event(&self, raw: &str) -> EngineResult<(usize, EventId)> {
        let order_id = serde_json::from_str::<serde_json::Value>(raw)
            .ok()
            .and_then(|v| v.get("orderId")?.as_str().map(String::from));
        let partitions = self.partitions();
        let partition = order_id.map_or(0, |o| partition_of(&o, partitions));
        let id = {
            let mut state = self.lock();
            state.clock += 1;
            EventId {
                ms: state.clock,
                seq: 0,
            }
        };
        self.append_at(partition, id, raw);
        Ok((partition, id))
    }

    async fn log_end(&self) -> EngineResult<LogCursor> {
        let state = self.lock();
        Ok(LogCursor::from_positions(
            state
                .streams
                .iter()
                .map(|s| s.entries.back().map_or(EventId::ZERO, |(id, _)| *id))
                .collect(),
        ))
    }

    async fn first_event_id(&self, partition: usize) -> EngineResult<Option<EventId>> {
        let state = self.lock();
        Ok(state
            .streams
            .get(partition)
            .and_then(|s| s.entries.front().map(|(id, _)| *id)))
    }

    async fn removed_after(&self, cursor: &LogCursor) -> EngineResult<Vec<(usize, EventId)>> {
        let state = self.lock();
        Ok(state
            .streams
            .iter()
            .enumerate()
            .filter_map(|(p, s)| {
                s.deleted_through
                    .filter(|d| *d > cursor.get(p))
                    .map(|d| (p, d))
            })
            .collect())
    }

    async fn set_aside(&self, entry: &MalformedEntry) -> EngineResult<()> {
        self.lock().set_aside.push(entry.clone());
        Ok(())
    }

    async fn malformed_entries(&self, limit: usize) -> EngineResult<Vec<MalformedEntry>> {
        Ok(self.lock().set_aside.iter().take(limit).cloned().collect())
    }
}

/// An event of `order_id` at `version`, as Herald writes it.
pub(crate) fn event_json(order_id: &str, version: u64) -> String {
    crate::model::OrderEvent::entered(
        crate::model::StatusRecord {
            order_id: order_id.into(),
            customer_id: "c-1".into(),
            partner_id: None,
            status: crate::model::OrderStatus::Accepted,
            version,
            updated_at: "2026-01-01T00:00:00.000Z".into(),
        },
        None,
        None,
    )
    .to_json()
}

/// An order id that lives in `partition` of `partitions` (the `n`th such id).
pub(crate) fn order_in(partition: usize, partitions: usize, n: usize) -> String {
    (0..)
        .map(|k| format!("o-{k}"))
        .filter(|o| partition_of(o, partitions) == partition)
        .nth(n)
        .unwrap_or_default()
}
