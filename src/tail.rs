//! The event tail: follows the whole event log from this node's own position and publishes
//! every valid event to in-process subscribers (the push hub, the webhook dispatcher).
//!
//! Entries written by any program are read exactly like Herald's own. An entry that does not
//! parse is counted, logged and set aside in the engine (idempotently, since every node's tail
//! sees it), and the tail moves past it: nothing stops the reader. A failed read backs off and
//! resumes from the same cursor, so an engine outage loses nothing.

use crate::engine::{Engine, LogEntry};
use crate::metrics::Metrics;
use crate::model::{EventId, LoggedEvent};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Entries fetched per read.
const READ_BATCH: usize = 512;
/// How long a read waits for new entries before asking again.
const READ_WAIT: Duration = Duration::from_secs(1);

pub struct EventTail {
    engine: Arc<dyn Engine>,
    metrics: Arc<Metrics>,
    sender: broadcast::Sender<Arc<LoggedEvent>>,
}

impl EventTail {
    pub fn new(engine: Arc<dyn Engine>, metrics: Arc<Metrics>, capacity: usize) -> EventTail {
        let (sender, _) = broadcast::channel(capacity.max(16));
        EventTail {
            engine,
            metrics,
            sender,
        }
    }

    /// A receiver of every valid event read after this call.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LoggedEvent>> {
        self.sender.subscribe()
    }

    /// Follows the log from its current end until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut cursor = loop {
            match self.engine.last_event_id().await {
                Ok(id) => break id,
                Err(e) => {
                    Metrics::inc(&self.metrics.tail_errors);
                    tracing::warn!(error = %e, "event tail: cannot find the end of the log; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        };
        tracing::info!(%cursor, "event tail started");
        let mut backoff = Duration::from_millis(100);
        loop {
            let read = tokio::select! {
                r = self.engine.read_events(cursor, READ_BATCH, READ_WAIT) => r,
                _ = shutdown.cancelled() => break,
            };
            match read {
                Ok(entries) => {
                    backoff = Duration::from_millis(100);
                    for entry in entries {
                        cursor = self.handle(entry, cursor).await;
                    }
                }
                Err(e) => {
                    Metrics::inc(&self.metrics.tail_errors);
                    tracing::warn!(error = %e, %cursor, "event tail: read failed; retrying from the same cursor");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
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
                // No receivers is fine: nobody on this node is listening yet.
                let _ = self.sender.send(Arc::new(event));
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
