//! The event tail: follows the whole event log from this node's own position and hands every
//! valid event, in log order, to this node's sinks (the push hub).
//!
//! Entries written by any program are read exactly like Herald's own. An entry that does not
//! parse is counted, logged and set aside in the engine (idempotently, since every node's tail
//! sees it), and the tail moves past it: nothing stops the reader. A failed read backs off and
//! resumes from the same cursor, so an engine outage loses nothing.

use crate::backoff::Backoff;
use crate::engine::{Engine, LogEntry};
use crate::metrics::Metrics;
use crate::model::{EventId, LoggedEvent};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Entries fetched per read.
const READ_BATCH: usize = 512;
/// How long a read waits for new entries before asking again.
const READ_WAIT: Duration = Duration::from_secs(1);

/// A consumer of the event log on this node. `publish` is called in log order from the tail's
/// task and must not block (queue the work; never await inside).
pub trait EventSink: Send + Sync {
    /// The tail's starting cursor: every event after it will be published.
    fn start(&self, cursor: EventId);
    fn publish(&self, event: Arc<LoggedEvent>);
}

pub struct EventTail {
    engine: Arc<dyn Engine>,
    metrics: Arc<Metrics>,
    sinks: Vec<Arc<dyn EventSink>>,
}

impl EventTail {
    pub fn new(
        engine: Arc<dyn Engine>,
        metrics: Arc<Metrics>,
        sinks: Vec<Arc<dyn EventSink>>,
    ) -> EventTail {
        EventTail {
            engine,
            metrics,
            sinks,
        }
    }

    /// Follows the log from its current end until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        // Finding the end of the log retries once a second, without growing.
        let mut first_read = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let mut cursor = loop {
            match self.engine.last_event_id().await {
                Ok(id) => break id,
                Err(e) => {
                    Metrics::inc(&self.metrics.tail_errors);
                    tracing::warn!(error = %e, "event tail: cannot find the end of the log; retrying");
                    if !first_read.sleep(&shutdown).await {
                        return;
                    }
                }
            }
        };
        for sink in &self.sinks {
            sink.start(cursor);
        }
        tracing::info!(%cursor, "event tail started");
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            let read = tokio::select! {
                r = self.engine.read_events(cursor, READ_BATCH, READ_WAIT) => r,
                _ = shutdown.cancelled() => break,
            };
            match read {
                Ok(entries) => {
                    backoff.reset();
                    for entry in entries {
                        cursor = self.handle(entry, cursor).await;
                    }
                }
                Err(e) => {
                    Metrics::inc(&self.metrics.tail_errors);
                    tracing::warn!(error = %e, %cursor, "event tail: read failed; retrying from the same cursor");
                    if !backoff.sleep(&shutdown).await {
                        break;
                    }
                }
            }
        }
        tracing::info!("event tail stopped");
    }

    async fn handle(&self, entry: LogEntry, cursor: EventId) -> EventId {
        let next = entry.id().unwrap_or(cursor).max(cursor);
        match entry {
            LogEntry::Event(event) => {
                Metrics::inc(&self.metrics.events_read);
                let event = Arc::new(event);
                for sink in &self.sinks {
                    sink.publish(event.clone());
                }
            }
            LogEntry::Malformed(bad) => {
                Metrics::inc(&self.metrics.events_malformed);
                tracing::warn!(entry_id = %bad.entry_id, error = %bad.error, "event log entry does not parse; set aside");
                if let Err(e) = self.engine.set_aside(&bad).await {
                    tracing::warn!(error = %e, entry_id = %bad.entry_id, "could not set the malformed entry aside");
                }
            }
        }
        next
    }
}
