//! An event-log entry's `event` field, as any program may have written it with XADD, through
//! the Redis engine's entry reader. Never panics; an entry is an event or a malformed entry
//! with a reason; an accepted event survives its own wire form unchanged.

#![no_main]

use herald::engine::LogEntry;
use herald::fuzzing::stream_entry;
use herald::model::{EventId, OrderEvent};
use libfuzzer_sys::fuzz_target;

const ID: &str = "1700000000000-7";

fuzz_target!(|data: &[u8]| {
    match stream_entry(ID, vec![(b"event".to_vec(), data.to_vec())]) {
        LogEntry::Event(logged) => {
            assert_eq!(logged.event_id, ID);
            assert!(
                logged.event.check().is_ok(),
                "an accepted event passes its checks"
            );
            let again = OrderEvent::parse(&logged.event.to_json())
                .expect("an accepted event parses again from its own JSON");
            assert_eq!(again, logged.event, "the round trip changed the event");
        }
        LogEntry::Malformed(m) => {
            assert_eq!(m.entry_id, ID);
            assert!(!m.error.is_empty(), "a malformed entry says why");
            if let Ok(text) = std::str::from_utf8(data) {
                assert_eq!(m.raw, text, "the raw entry is kept as written");
            }
        }
    }
    // Without an `event` field the same bytes are never an event.
    let other = stream_entry(ID, vec![(b"evnt".to_vec(), data.to_vec())]);
    assert!(matches!(other, LogEntry::Malformed(_)));
    // The same text as an entry id (a resume cursor): what parses prints back to itself.
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(id) = text.parse::<EventId>()
    {
        assert_eq!(id.to_string().parse::<EventId>(), Ok(id));
    }
});
