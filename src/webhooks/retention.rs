//! Retention of delivery records (`webhooks.delivery_retention`): a sweep, run by every node
//! with the webhooks role every `webhooks.delivery_sweep_interval`, that deletes deliveries
//! older than the retention with their attempt logs and index entries, and every record of a
//! deleted endpoint whatever its age. Without it the delivery log grows for ever (up to 20 KB
//! of response per attempt).
//!
//! Each engine call deletes at most [`SWEEP_BATCH`] records of one endpoint (one short Lua
//! script on Redis, one short lock on memory), so a sweep never holds the engine for long;
//! several nodes may sweep at once (what one deletes the other no longer finds). It decides
//! nothing about deliveries but their age: the engine keeps the store's rules.

use crate::engine::Engine;
use crate::model::now_millis;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Records deleted per engine call at most.
pub const SWEEP_BATCH: usize = 200;

pub struct RetentionSweep {
    engine: Arc<dyn Engine>,
    retention: Duration,
    interval: Duration,
}

impl RetentionSweep {
    pub fn new(engine: Arc<dyn Engine>, retention: Duration, interval: Duration) -> Self {
        RetentionSweep {
            engine,
            retention,
            interval,
        }
    }

    /// Sweeps every `interval` until shutdown; an engine error is logged and the next round
    /// tries again.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.cancelled() => return,
            }
            if let Err(e) = self.round(&shutdown).await {
                tracing::warn!(error = %e, "delivery retention sweep failed; trying again next round");
            }
        }
    }

    /// One round over every endpoint (and deleted endpoint) with records: how many records it
    /// deleted.
    pub async fn round(&self, shutdown: &CancellationToken) -> crate::engine::EngineResult<usize> {
        let cutoff = now_millis()
            .saturating_sub(u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX));
        let mut total = 0;
        for endpoint_id in self.engine.sweep_targets().await? {
            let mut deleted = 0;
            loop {
                if shutdown.is_cancelled() {
                    return Ok(total + deleted);
                }
                let n = self
                    .engine
                    .sweep_deliveries(&endpoint_id, cutoff, SWEEP_BATCH)
                    .await?;
                deleted += n;
                if n < SWEEP_BATCH {
                    break;
                }
                tokio::task::yield_now().await;
            }
            if deleted > 0 {
                tracing::info!(%endpoint_id, deleted, "delivery records swept");
            }
            total += deleted;
        }
        Ok(total)
    }
}
