//! The timer loop: turns the workflow's due timers (waits, retries, callback timeouts) into
//! commands ([`StepStore::fire_due_timers`](crate::engine::StepStore::fire_due_timers)), on
//! every worker node. It sleeps until the earliest timer is due, and is woken early when this
//! node's worker schedules one (or a heartbeat request on this node moves a deadline); timers another node scheduled are found by a sweep at least
//! every [`POLL`], so a timer fires within tens of milliseconds of its due time when the node
//! that scheduled it lives, and within [`POLL`] when only others do. Firing is atomic per
//! timer in the engine: several nodes sweeping fire each timer once.

use crate::backoff::Backoff;
use crate::engine::Engine;
use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The longest sleep between sweeps (timers scheduled by other nodes).
pub const POLL: Duration = Duration::from_millis(250);

/// Timers queued per engine call.
const BATCH: usize = 500;

pub async fn run(
    engine: Arc<dyn Engine>,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    while !shutdown.is_cancelled() {
        let now = super::now_ms();
        match engine.fire_due_timers(now, BATCH).await {
            Ok(sweep) => {
                backoff.reset();
                let after = super::now_ms();
                for due in &sweep.fired {
                    metrics
                        .timer_lateness
                        .observe(Duration::from_millis(after.saturating_sub(*due)));
                }
                metrics
                    .workflow_timers_fired
                    .increment(sweep.fired.len() as u64);
                if sweep.fired.len() >= BATCH {
                    continue;
                }
                let sleep = sweep
                    .next_due_ms
                    .map_or(POLL, |due| Duration::from_millis(due.saturating_sub(after)))
                    .min(POLL);
                tokio::select! {
                    _ = tokio::time::sleep(sleep) => {}
                    _ = wake.notified() => {}
                    _ = shutdown.cancelled() => return,
                }
            }
            Err(e) => {
                Metrics::inc(&metrics.worker_errors);
                tracing::warn!(error = %e, "firing workflow timers failed; retrying");
                if !backoff.sleep(&shutdown).await {
                    return;
                }
            }
        }
    }
}
