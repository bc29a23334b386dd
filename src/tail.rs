//! The event tail: follows the whole event log from this node's own position and hands every
//! valid event, in log order, to this node's sinks (the push hub).
//!
//! Entries written by any program are read exactly like Herald's own. An entry that does not
//! parse is counted, logged and set aside in the engine (idempotently, since every node's tail
//! sees it), and the tail moves past it: nothing stops the reader. A failed read backs off and
//! resumes from the same cursor, so an engine outage loses nothing.
//!
//! A tail that falls further behind than the log's retention finds entries removed before it
//! read them. It says so (a warning with the range and `herald_event_tail_gaps_total`) rather
//! than skipping the gap silently. Reads are at most `retention` entries, so a read that comes
//! back short proves nothing was lost: the engine is asked only after a full read.

use crate::backoff::Backoff;
use crate::engine::{Engine, LogEntry};
use crate::metrics::Metrics;
use crate::model::{EventId, LoggedEvent};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Entries fetched per read (fewer when the retention is smaller, see [`EventTail::new`]).
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
    /// Entries per read: at most the retention. An entry is trimmed only once `retention`
    /// newer ones are retained, so a tail that lost entries reads a full batch next.
    read_batch: usize,
}

impl EventTail {
    /// `retention` is the log's (`engine.event_retention`).
    pub fn new(
        engine: Arc<dyn Engine>,
        metrics: Arc<Metrics>,
        sinks: Vec<Arc<dyn EventSink>>,
        retention: u64,
    ) -> EventTail {
        EventTail {
            engine,
            metrics,
            sinks,
            read_batch: usize::try_from(retention)
                .unwrap_or(usize::MAX)
                .clamp(1, READ_BATCH),
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
                r = self.engine.read_events(cursor, self.read_batch, READ_WAIT) => r,
                _ = shutdown.cancelled() => break,
            };
            match read {
                Ok(entries) => {
                    backoff.reset();
                    let full = entries.len() >= self.read_batch;
                    let first = entries.first().and_then(|e| e.id().ok());
                    let before = cursor;
                    for entry in entries {
                        cursor = self.handle(entry, cursor).await;
                    }
                    if full && let Some(first) = first {
                        self.report_gap(before, first).await;
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

    /// After a full read that started at `before` and whose first entry was `first`: entries
    /// in between removed before this tail read them are a gap, reported and counted. `None`
    /// when there was none. (Removal is oldest first: removals at or past `first` happened
    /// after this read, so the gap ends before `first`.)
    async fn report_gap(&self, before: EventId, first: EventId) -> Option<(EventId, EventId)> {
        let removed = match self.engine.removed_after(before).await {
            Ok(removed) => removed?,
            Err(e) => {
                tracing::warn!(error = %e, "event tail: cannot check the log for removed entries");
                return None;
            }
        };
        let through = removed.min(first.predecessor());
        if through <= before {
            return None;
        }
        Metrics::inc(&self.metrics.tail_gaps);
        tracing::warn!(
            after = %before,
            through = %through,
            "event tail: entries were removed from the log (retention) before this node read \
             them; subscribers on this node missed any of them that matched. Raise \
             engine.event_retention or give the node more room."
        );
        Some((before, through))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineSettings;
    use crate::engine::memory::MemoryEngine;
    use crate::model::{OrderEvent, OrderStatus, StatusRecord};
    use std::sync::Mutex;
    use std::sync::mpsc;

    const RETENTION: u64 = 5;

    fn engine() -> Arc<dyn Engine> {
        Arc::new(MemoryEngine::new(EngineSettings {
            visibility_timeout: Duration::from_secs(30),
            max_receives: 5,
            history_limit: 10,
            event_retention: RETENTION,
            consumer_name: "test".into(),
        }))
    }

    fn event(version: u64) -> String {
        let record = StatusRecord {
            order_id: "o-1".into(),
            customer_id: "c-1".into(),
            partner_id: None,
            status: OrderStatus::Accepted,
            version,
            updated_at: "2026-01-01T00:00:00.000Z".into(),
        };
        OrderEvent::entered(record, None, None).to_json()
    }

    /// Holds the tail inside its first `publish` until the test lets it go: the tail falls
    /// behind by as much as the test appends meanwhile.
    struct StallingSink {
        started: tokio::sync::mpsc::UnboundedSender<()>,
        release: Mutex<mpsc::Receiver<()>>,
        published: Mutex<Vec<String>>,
    }

    impl EventSink for StallingSink {
        fn start(&self, _cursor: EventId) {}
        fn publish(&self, event: Arc<LoggedEvent>) {
            let first = self.published.lock().map(|p| p.is_empty()).unwrap_or(false);
            if let Ok(mut p) = self.published.lock() {
                p.push(event.event_id.clone());
            }
            if first {
                let _ = self.started.send(());
                let _ = self.release.lock().map(|r| r.recv());
            }
        }
    }

    fn gaps(metrics: &Metrics) -> String {
        metrics
            .render(None, true, None)
            .lines()
            .find(|l| l.starts_with("herald_event_tail_gaps_total"))
            .unwrap_or("")
            .to_string()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tail_behind_the_retention_reports_the_gap_instead_of_skipping_it() {
        let engine = engine();
        let metrics = Arc::new(Metrics::default());
        let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
        let (release_tx, release_rx) = mpsc::channel();
        let sink = Arc::new(StallingSink {
            started: started_tx,
            release: Mutex::new(release_rx),
            published: Mutex::new(Vec::new()),
        });
        let tail = Arc::new(EventTail::new(
            engine.clone(),
            metrics.clone(),
            vec![sink.clone()],
            RETENTION,
        ));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(tail.run(shutdown.clone()));
        // The tail starts at the log's end; wait until it follows (an append is then read).
        let first = loop {
            let id = engine.append_raw_event(&event(1)).await.unwrap();
            let started = tokio::time::timeout(Duration::from_millis(200), started_rx.recv());
            if started.await.is_ok() {
                break id;
            }
        };
        // While the tail is held inside `publish`, far more than the retention is appended.
        let mut ids = Vec::new();
        for v in 2..30 {
            ids.push(engine.append_raw_event(&event(v)).await.unwrap());
        }
        assert_eq!(gaps(&metrics), "herald_event_tail_gaps_total 0");
        release_tx.send(()).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while gaps(&metrics) != "herald_event_tail_gaps_total 1" {
            assert!(
                tokio::time::Instant::now() < deadline,
                "gap not reported: {}",
                gaps(&metrics)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        task.await.unwrap();
        // What it did publish: the first event, then only the retained tail of the log.
        let published = sink.published.lock().unwrap().clone();
        assert_eq!(published[0], first.to_string());
        let retained: Vec<String> = ids[ids.len() - RETENTION as usize..]
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(published[1..], retained[..]);
    }

    #[tokio::test]
    async fn a_tail_that_keeps_up_reports_no_gap() {
        let engine = engine();
        let metrics = Arc::new(Metrics::default());
        let tail = EventTail::new(engine.clone(), metrics.clone(), vec![], RETENTION);
        let mut ids = Vec::new();
        for v in 1..4 {
            ids.push(engine.append_raw_event(&event(v)).await.unwrap());
        }
        // Nothing after the first entry was removed.
        assert_eq!(tail.report_gap(ids[0], ids[1]).await, None);
        assert_eq!(gaps(&metrics), "herald_event_tail_gaps_total 0");
        for v in 4..20 {
            ids.push(engine.append_raw_event(&event(v)).await.unwrap());
        }
        // Now entries after ids[0] are gone, up to the one before the oldest retained.
        let oldest = engine.first_event_id().await.unwrap().unwrap();
        assert_eq!(
            tail.report_gap(ids[0], oldest).await,
            Some((ids[0], oldest.predecessor()))
        );
        assert_eq!(gaps(&metrics), "herald_event_tail_gaps_total 1");
    }
}
