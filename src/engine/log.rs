//! The event log room of the seam: the [`EventLog`] trait, [`LogEntry`], and the one decoder
//! that turns a stored entry into an event or a malformed entry.
//!
//! The log is an integration point (other programs may append to it), so the decoder here
//! never fails and never trusts an entry's shape: both engines and the fuzz targets go through
//! it, so an entry reads the same whichever engine holds it. Nothing here names a backend.

use super::EngineResult;
use crate::model::{EventId, LoggedEvent, MalformedEntry, OrderEvent};
use async_trait::async_trait;
use std::time::Duration;

/// One entry read from the event log: an event, or an entry that does not parse.
#[derive(Debug, Clone, PartialEq)]
pub enum LogEntry {
    Event(LoggedEvent),
    Malformed(MalformedEntry),
}

impl LogEntry {
    pub fn id(&self) -> Result<EventId, String> {
        match self {
            LogEntry::Event(e) => e.event_id.parse(),
            LogEntry::Malformed(m) => m.entry_id.parse(),
        }
    }
}

/// Decodes an entry given as its id and its field/value pairs, raw bytes as stored (the
/// `event` field holds the event JSON, DESIGN 1.3).
pub fn decode_entry(id: String, fields: &[(Vec<u8>, Vec<u8>)]) -> LogEntry {
    match fields.iter().find(|(k, _)| k == b"event") {
        None => LogEntry::Malformed(MalformedEntry::new(
            id,
            &fields_json(fields),
            "entry has no `event` field".to_string(),
        )),
        Some((_, bytes)) => match std::str::from_utf8(bytes) {
            Err(_) => LogEntry::Malformed(MalformedEntry::new(
                id,
                &String::from_utf8_lossy(bytes),
                "`event` field is not UTF-8".to_string(),
            )),
            Ok(raw) => decode_event(id, raw),
        },
    }
}

/// Decodes an entry whose `event` field is already text.
pub fn decode_event(id: String, raw: &str) -> LogEntry {
    match OrderEvent::parse(raw) {
        Ok(event) => LogEntry::Event(LoggedEvent {
            event_id: id,
            event,
        }),
        Err(error) => LogEntry::Malformed(MalformedEntry::new(id, raw, error)),
    }
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

/// The event log (DESIGN 1.3): entries with ids `<ms>-<seq>`, read from any cursor.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Entries after `after`, at most `max`, waiting up to `wait` when there are none yet.
    async fn read_events(
        &self,
        after: EventId,
        max: usize,
        wait: Duration,
    ) -> EngineResult<Vec<LogEntry>>;

    /// Appends an entry whose `event` field is `raw`, exactly as another program's XADD would.
    async fn append_raw_event(&self, raw: &str) -> EngineResult<EventId>;

    /// The id of the newest entry (or [`EventId::ZERO`] when the log is empty).
    async fn last_event_id(&self) -> EngineResult<EventId>;

    /// The id of the oldest retained entry, if any.
    async fn first_event_id(&self) -> EngineResult<Option<EventId>>;

    /// Whether entries after `cursor` were removed from the log (trimmed by retention, or
    /// deleted by another program) before a reader at `cursor` read them: `None` when nothing
    /// after it was, else the newest id that may have been. Readers use it to report a gap
    /// instead of skipping it silently (retention honesty). An engine that cannot tell exactly
    /// errs towards reporting: it may report a reader whose very last entry was trimmed just
    /// before the next one, never hide a loss.
    async fn removed_after(&self, cursor: EventId) -> EngineResult<Option<EventId>>;

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
            decode_entry("1-0".into(), &fields)
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
