//! The event tail: follows the whole event log from this node's own position and hands every
//! valid event, in log order, to this node's sinks (the push hub).
//!
//! Entries written by any program are read exactly like Herald's own. An entry that does not
//! parse is counted, logged and set aside in the engine (idempotently, since every node's tail
//! sees it), and the tail moves past it: nothing stops the reader. A failed read backs off and
//! resumes from the same cursor, so an engine outage loses nothing.
//!
//! The tail's position is a [`LogCursor`], one entry id per partition, moved forward in the
//! partition of each entry it reads. With several partitions every published event carries
//! the cursor just after it (`LoggedEvent::cursor`), which readers show as its `eventId`: a
//! client can resume from any event it received.
//!
//! A tail that falls further behind than the log's retention finds entries removed before it
//! read them. It says so, per partition (a warning with the range and
//! `herald_event_tail_gaps_total`) rather than skipping the gap silently. Reads are at most
//! `retention` entries, so a read that comes back short proves nothing was lost: the engine is
//! asked only after a full read.

use crate::backoff::Backoff;
use crate::engine::{Engine, EventLog, LogEntry, full_partitions};
use crate::metrics::Metrics;
use crate::model::{EventId, LogCursor, LoggedEvent};
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
    fn start(&self, cursor: &LogCursor);
    fn publish(&self, event: Arc<LoggedEvent>);
}

/// A gap the tail found in one partition: entries in `(after, through]` were removed before
/// it read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailGap {
    pub partition: usize,
    pub after: EventId,
    pub through: EventId,
}

/// Generic over the log so its tests can follow a log of several partitions; the server's
/// tail follows its engine (`dyn Engine`).
pub struct EventTail<L: ?Sized = dyn Engine> {
    engine: Arc<L>,
    metrics: Arc<Metrics>,
    sinks: Vec<Arc<dyn EventSink>>,
    /// Entries per read: at most the retention. An entry is trimmed only once `retention`
    /// newer ones are retained, so a tail that lost entries reads a full batch next.
    read_batch: usize,
}

impl<L: EventLog + ?Sized + 'static> EventTail<L> {
    /// `retention` is the log's (`engine.event_retention`).
    pub fn new(
        engine: Arc<L>,
        metrics: Arc<Metrics>,
        sinks: Vec<Arc<dyn EventSink>>,
        retention: u64,
    ) -> EventTail<L> {
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
            match self.engine.log_end().await {
                Ok(end) => break end,
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
            sink.start(&cursor);
        }
        tracing::info!(%cursor, "event tail started");
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            let read = tokio::select! {
                r = self.engine.read_events(&cursor, self.read_batch, READ_WAIT) => r,
                _ = shutdown.cancelled() => break,
            };
            match read {
                Ok(entries) => {
                    backoff.reset();
                    // Only a partition that gave a full read may have crossed a gap.
                    let full = full_partitions(&entries, self.read_batch);
                    let firsts = first_ids_per_partition(&entries, cursor.partitions());
                    let before = cursor.clone();
                    for entry in entries {
                        self.handle(entry, &mut cursor).await;
                    }
                    if !full.is_empty() {
                        self.report_gaps(&before, &firsts, &full).await;
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

    /// After a read that started at `before` and was full in the partitions `full`, whose
    /// first entry in each partition was `firsts[p]` (`None`: none read there): entries of
    /// those partitions removed before this tail read them are a gap, reported and counted,
    /// per partition. (Removal is oldest first within a partition: removals at or past its
    /// first entry read happened after this read, so the gap ends before it.)
    async fn report_gaps(
        &self,
        before: &LogCursor,
        firsts: &[Option<EventId>],
        full: &[usize],
    ) -> Vec<TailGap> {
        let removed = match self.engine.removed_after(before).await {
            Ok(removed) => removed,
            Err(e) => {
                tracing::warn!(error = %e, "event tail: cannot check the log for removed entries");
                return Vec::new();
            }
        };
        let mut gaps = Vec::new();
        for (partition, removed) in removed {
            if !full.contains(&partition) {
                continue;
            }
            let after = before.get(partition);
            let through = match firsts.get(partition).copied().flatten() {
                Some(first) => removed.min(first.predecessor()),
                None => removed,
            };
            if through <= after {
                continue;
            }
            Metrics::inc(&self.metrics.tail_gaps);
            tracing::warn!(
                partition,
                after = %after,
                through = %through,
                "event tail: entries were removed from the log (retention) before this node read \
                 them; subscribers on this node missed any of them that matched. Raise \
                 engine.event_retention or give the node more room."
            );
            gaps.push(TailGap {
                partition,
                after,
                through,
            });
        }
        gaps
    }

    /// Publishes (or sets aside) one entry and moves `cursor` past it in its partition.
    async fn handle(&self, entry: LogEntry, cursor: &mut LogCursor) {
        if let Ok(id) = entry.id() {
            cursor.advance(entry.partition(), id);
        }
        match entry {
            LogEntry::Event(mut event) => {
                Metrics::inc(&self.metrics.events_read);
                if cursor.partitions() > 1 {
                    event.cursor = Some(cursor.to_string());
                }
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
    }
}

/// The id of the first entry read from each of `partitions` partitions (`None`: none).
fn first_ids_per_partition(entries: &[LogEntry], partitions: usize) -> Vec<Option<EventId>> {
    let mut firsts = vec![None; partitions];
    for entry in entries {
        if let (Some(slot @ None), Ok(id)) = (firsts.get_mut(entry.partition()), entry.id()) {
            *slot = Some(id);
        }
    }
    firsts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineSettings;
    use crate::engine::memory::MemoryEngine;
    use crate::model::{OrderEvent, OrderStatus, StatusRecord};
    use crate::testing::{PartitionedLog, event_json, order_in};
    use std::sync::Mutex;
    use std::sync::mpsc;

    const RETENTION: u64 = 5;

    fn engine() -> Arc<dyn Engine> {
        Arc::new(MemoryEngine::new(EngineSettings {
            visibility_timeout: Duration::from_secs(30),
            max_receives: 5,
            history_limit: 10,
            step_history_limit: 100,
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
        fn start(&self, _cursor: &LogCursor) {}
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
            let (_, id) = engine.append_raw_event(&event(1)).await.unwrap();
            let started = tokio::time::timeout(Duration::from_millis(200), started_rx.recv());
            if started.await.is_ok() {
                break id;
            }
        };
        // While the tail is held inside `publish`, far more than the retention is appended.
        let mut ids = Vec::new();
        for v in 2..30 {
            ids.push(engine.append_raw_event(&event(v)).await.unwrap().1);
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
            ids.push(engine.append_raw_event(&event(v)).await.unwrap().1);
        }
        // Nothing after the first entry was removed.
        let at = |id| LogCursor::uniform(1, id);
        assert_eq!(
            tail.report_gaps(&at(ids[0]), &[Some(ids[1])], &[0]).await,
            []
        );
        assert_eq!(gaps(&metrics), "herald_event_tail_gaps_total 0");
        for v in 4..20 {
            ids.push(engine.append_raw_event(&event(v)).await.unwrap().1);
        }
        // Now entries after ids[0] are gone, up to the one before the oldest retained.
        let oldest = engine.first_event_id(0).await.unwrap().unwrap();
        assert_eq!(
            tail.report_gaps(&at(ids[0]), &[Some(oldest)], &[0]).await,
            [TailGap {
                partition: 0,
                after: ids[0],
                through: oldest.predecessor()
            }]
        );
        assert_eq!(gaps(&metrics), "herald_event_tail_gaps_total 1");
    }

    /// Keeps what it is given.
    #[derive(Default)]
    struct RecordingSink {
        started: Mutex<Option<LogCursor>>,
        published: Mutex<Vec<Arc<LoggedEvent>>>,
    }

    impl EventSink for RecordingSink {
        fn start(&self, cursor: &LogCursor) {
            *self.started.lock().unwrap() = Some(cursor.clone());
        }
        fn publish(&self, event: Arc<LoggedEvent>) {
            self.published.lock().unwrap().push(event);
        }
    }

    fn partitioned_tail(
        log: &Arc<PartitionedLog>,
    ) -> (EventTail<PartitionedLog>, Arc<RecordingSink>, Arc<Metrics>) {
        let sink = Arc::new(RecordingSink::default());
        let metrics = Arc::new(Metrics::default());
        let tail = EventTail::new(log.clone(), metrics.clone(), vec![sink.clone()], 100);
        (tail, sink, metrics)
    }

    #[tokio::test]
    async fn with_several_partitions_each_event_carries_the_cursor_just_after_it() {
        let log = Arc::new(PartitionedLog::new(3));
        for n in 0..4 {
            for p in [2, 0, 1] {
                log.append_raw_event(&event_json(&order_in(p, 3, n), 1))
                    .await
                    .unwrap();
            }
        }
        log.append_raw_event("{not json").await.unwrap();
        let (tail, sink, _) = partitioned_tail(&log);
        let mut cursor = LogCursor::start(3);
        for entry in log
            .read_events(&cursor.clone(), 100, Duration::ZERO)
            .await
            .unwrap()
        {
            tail.handle(entry, &mut cursor).await;
        }
        assert_eq!(cursor, log.log_end().await.unwrap());
        assert_eq!(log.set_aside_entries().len(), 1, "the malformed entry");
        let published = sink.published.lock().unwrap().clone();
        assert_eq!(published.len(), 12);
        let names: Vec<String> = published.iter().map(|e| e.qualified_id()).collect();
        for (k, event) in published.iter().enumerate() {
            let shown = event.shown_id();
            assert!(shown.starts_with("c1."), "{shown}");
            let resume = LogCursor::parse(shown, 3).unwrap();
            assert_eq!(resume.get(event.partition), event.event_id.parse().unwrap());
            // Resuming from it returns exactly the events after it.
            let rest: Vec<String> = log
                .read_events(&resume, 100, Duration::ZERO)
                .await
                .unwrap()
                .into_iter()
                .filter_map(|e| match e {
                    LogEntry::Event(e) => Some(e.qualified_id()),
                    LogEntry::Malformed(_) => None,
                })
                .collect();
            assert_eq!(rest, names[k + 1..], "after event {k}");
        }
    }

    #[tokio::test]
    async fn with_one_partition_events_show_their_entry_id() {
        let engine = engine();
        let sink = Arc::new(RecordingSink::default());
        let tail = EventTail::new(
            engine.clone(),
            Arc::new(Metrics::default()),
            vec![sink.clone()],
            5,
        );
        let (_, id) = engine.append_raw_event(&event(1)).await.unwrap();
        let mut cursor = LogCursor::start(1);
        for entry in engine
            .read_events(&cursor.clone(), 10, Duration::ZERO)
            .await
            .unwrap()
        {
            tail.handle(entry, &mut cursor).await;
        }
        let published = sink.published.lock().unwrap().clone();
        assert_eq!(published[0].cursor, None);
        assert_eq!(published[0].shown_id(), id.to_string());
        assert_eq!(cursor, LogCursor::uniform(1, id));
    }

    #[tokio::test]
    async fn gaps_are_reported_per_partition_up_to_the_first_entry_read_there() {
        let log = Arc::new(PartitionedLog::new(3));
        let id = |ms| EventId { ms, seq: 0 };
        for ms in 1..=6 {
            log.append_at(0, id(ms), &event_json(&order_in(0, 3, 0), ms));
            log.append_at(1, id(ms), &event_json(&order_in(1, 3, 0), ms));
            log.append_at(2, id(ms), &event_json(&order_in(2, 3, 0), ms));
        }
        // Partition 0 lost 1..=4, partition 1 lost 1..=2, partition 2 lost nothing.
        log.trim(0, 2);
        log.trim(1, 4);
        let (tail, _, metrics) = partitioned_tail(&log);
        let mut before = LogCursor::start(3);
        // The reader had already read partition 1 through 2: nothing lost there for it.
        before.advance(1, id(2));
        // Its read began at 5 in partition 0 and returned nothing from partition 2.
        let found = tail
            .report_gaps(&before, &[Some(id(5)), None, None], &[0, 1, 2])
            .await;
        assert_eq!(
            found,
            [TailGap {
                partition: 0,
                after: EventId::ZERO,
                through: id(4)
            }]
        );
        assert_eq!(gaps(&metrics), "herald_event_tail_gaps_total 1");
        // A partition from which the read returned nothing: everything removed is the gap.
        let found = tail
            .report_gaps(&LogCursor::start(3), &[Some(id(5)), None, None], &[0, 1, 2])
            .await;
        assert_eq!(found.len(), 2);
        // A partition whose read came back short crossed no gap: only full ones are checked.
        let only_full = tail
            .report_gaps(&LogCursor::start(3), &[Some(id(5)), None, None], &[0])
            .await;
        assert_eq!(only_full.len(), 1);
        assert_eq!(only_full[0].partition, 0);
        assert_eq!(
            found[1],
            TailGap {
                partition: 1,
                after: EventId::ZERO,
                through: id(2)
            }
        );
    }
}
