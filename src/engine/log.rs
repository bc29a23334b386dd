//! The event log room of the seam: the [`EventLog`] trait, [`LogEntry`], and the one decoder
//! that turns a stored entry into an event or a malformed entry.
//!
//! The log is an integration point (other programs may append to it), so the decoder here
//! never fails and never trusts an entry's shape: both engines and the fuzz targets go through
//! it, so an entry reads the same whichever engine holds it. Nothing here names a backend.

use super::EngineResult;
use crate::model::{
    EventId, LogCursor, LoggedEvent, MalformedEntry, OrderEvent, qualified_entry_id,
};
use async_trait::async_trait;
use std::time::Duration;

/// One entry read from the event log: an event, or an entry that does not parse.
#[derive(Debug, Clone, PartialEq)]
pub enum LogEntry {
    Event(LoggedEvent),
    Malformed(MalformedEntry),
}

impl LogEntry {
    /// The entry id within its partition.
    pub fn id(&self) -> Result<EventId, String> {
        match self {
            LogEntry::Event(e) => e.event_id.parse(),
            LogEntry::Malformed(m) => m.entry_id.rsplit('/').next().unwrap_or("").parse(),
        }
    }

    /// The partition whose stream holds the entry.
    pub fn partition(&self) -> usize {
        match self {
            LogEntry::Event(e) => e.partition,
            LogEntry::Malformed(m) => m
                .entry_id
                .split_once('/')
                .and_then(|(p, _)| p.parse().ok())
                .unwrap_or(0),
        }
    }
}

/// Decodes an entry of `partition` given as its id and its field/value pairs, raw bytes as
/// stored (the `event` field holds the event JSON, DESIGN 1.3).
pub fn decode_entry(partition: usize, id: String, fields: &[(Vec<u8>, Vec<u8>)]) -> LogEntry {
    match fields.iter().find(|(k, _)| k == b"event") {
        None => LogEntry::Malformed(MalformedEntry::new(
            qualified_entry_id(partition, &id),
            &fields_json(fields),
            "entry has no `event` field".to_string(),
        )),
        Some((_, bytes)) => match std::str::from_utf8(bytes) {
            Err(_) => LogEntry::Malformed(MalformedEntry::new(
                qualified_entry_id(partition, &id),
                &String::from_utf8_lossy(bytes),
                "`event` field is not UTF-8".to_string(),
            )),
            Ok(raw) => decode_event(partition, id, raw),
        },
    }
}

/// Decodes an entry of `partition` whose `event` field is already text.
pub fn decode_event(partition: usize, id: String, raw: &str) -> LogEntry {
    match OrderEvent::parse(raw) {
        Ok(event) => LogEntry::Event(LoggedEvent {
            event_id: id,
            partition,
            cursor: None,
            event,
        }),
        Err(error) => LogEntry::Malformed(MalformedEntry::new(
            qualified_entry_id(partition, &id),
            raw,
            error,
        )),
    }
}

/// Orders entries read from several partitions oldest first (by entry id, then partition).
/// Each partition's own entries stay in their order.
pub fn merge_partitions(mut entries: Vec<LogEntry>) -> Vec<LogEntry> {
    entries.sort_by_key(|e| (e.id().unwrap_or(EventId::ZERO), e.partition()));
    entries
}

/// The partitions from which a read of at most `max` per partition got `max` entries: only
/// those may have crossed a gap (an entry is trimmed only once `event_retention` newer ones
/// are kept, so a read of at most that many that came back short crossed none).
pub fn full_partitions(entries: &[LogEntry], max: usize) -> Vec<usize> {
    let mut counts: std::collections::BTreeMap<usize, usize> = Default::default();
    for entry in entries {
        *counts.entry(entry.partition()).or_default() += 1;
    }
    counts
        .into_iter()
        .filter(|(_, n)| *n >= max)
        .map(|(k, _)| k)
        .collect()
}

/// All fields as a JSON object (lossy UTF-8): how an entry that lacks the expected field is
/// shown to operators.
pub(crate) fn fields_json(fields: &[(Vec<u8>, Vec<u8>)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                serde_json::Value::String(String::from_utf8_lossy(v).into_owned()),
            )
        })
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// The event log (DESIGN 1.3): one stream per partition (`engine.partitions`), entries with
/// ids `<ms>-<seq>` within their stream, read from any [`LogCursor`].
#[async_trait]
pub trait EventLog: Send + Sync {
    /// How many partitions the log has (1 unless `engine.partitions` says more).
    fn partitions(&self) -> usize;

    /// Entries after `after` (a cursor of [`Self::partitions`] positions), at most `max` from
    /// each partition, oldest first (see [`merge_partitions`]), waiting up to `wait` when there
    /// are none yet. Each entry says its partition. A reader that takes fewer than it was
    /// given advances its [`LogCursor`] by what it took, and reads the rest again next time.
    async fn read_events(
        &self,
        after: &LogCursor,
        max: usize,
        wait: Duration,
    ) -> EngineResult<Vec<LogEntry>>;

    /// Appends an entry whose `event` field is `raw`, exactly as another program's XADD would:
    /// to the partition of the event's `orderId` (partition 0 when it has none). Returns the
    /// partition and the entry id.
    async fn append_raw_event(&self, raw: &str) -> EngineResult<(usize, EventId)>;

    /// The newest entry of every partition (`ZERO` for an empty one): "from now".
    async fn log_end(&self) -> EngineResult<LogCursor>;

    /// The id of the oldest retained entry of `partition`, if any.
    async fn first_event_id(&self, partition: usize) -> EngineResult<Option<EventId>>;

    /// The partitions in which entries after `cursor` were removed (trimmed by retention, or
    /// deleted by another program) before a reader at `cursor` read them, each with the newest
    /// id that may have been; empty when none was. Readers use it to report a gap instead of
    /// skipping it silently (retention honesty). An engine that cannot tell exactly errs
    /// towards reporting: it may report a reader whose very last entry was trimmed just before
    /// the next one, never hide a loss.
    async fn removed_after(&self, cursor: &LogCursor) -> EngineResult<Vec<(usize, EventId)>>;

    /// Keeps a malformed entry aside (idempotent per entry id: many readers may report it).
    async fn set_aside(&self, entry: &MalformedEntry) -> EngineResult<()>;

    async fn malformed_entries(&self, limit: usize) -> EngineResult<Vec<MalformedEntry>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_entries_never_fail() {
        let entry = |fields: Vec<(&[u8], &[u8])>| {
            let fields: Vec<(Vec<u8>, Vec<u8>)> = fields
                .into_iter()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect();
            decode_entry(0, "1-0".into(), &fields)
        };
        let LogEntry::Malformed(m) = entry(vec![(b"other", b"x")]) else {
            panic!("no event field must be malformed");
        };
        assert_eq!(m.raw, r#"{"other":"x"}"#);
        let LogEntry::Malformed(m) = entry(vec![(b"event", &[0xc3, 0x28])]) else {
            panic!("binary must be malformed");
        };
        assert!(m.error.contains("UTF-8"));
        let LogEntry::Malformed(m) = entry(vec![(b"event", b"{oops")]) else {
            panic!("bad JSON must be malformed");
        };
        assert_eq!(m.raw, "{oops");
    }
}
