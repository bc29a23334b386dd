//! Herald's event feed, `GET /v1/events` (long-poll), followed from a cursor: how the `intake`
//! (`--confirm-latency`) and `workflow` scenarios see their orders' status changes. One
//! follower per run; each page's events are handed to the scenario with the instant the page
//! arrived, so latencies are measured to the moment the load tool could have known.

use anyhow::{Context, bail};
use serde::Deserialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// `GET /v1/events` page; unknown fields are ignored.
#[derive(Deserialize)]
pub struct FeedPage {
    #[serde(default)]
    pub events: Vec<FeedEvent>,
    pub next: Option<String>,
}

/// One event of a page: the fields the scenarios read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedEvent {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub order_id: String,
    pub event_id: Option<String>,
    /// RFC 3339, as Herald wrote it when it made the change.
    pub occurred_at: Option<String>,
}

/// The feed of one Herald node, read with an admin key (which sees every order's events).
pub struct Feed {
    client: reqwest::Client,
    url: String,
    key: String,
    timeout: Duration,
    /// Failed reads (each retried after 200 ms).
    pub errors: AtomicU64,
}

impl Feed {
    /// How long one long-poll may wait for events.
    const WAIT_MS: u64 = 1000;
    /// Events per page (Herald's most).
    const LIMIT: u32 = 1000;

    /// The feed of the node at `base_url`; `timeout` is allowed per read beyond its wait.
    pub fn new(base_url: &str, key: &str, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            client: reqwest::Client::builder()
                .http1_only()
                .tcp_nodelay(true)
                .no_proxy()
                .build()
                .context("building the feed client")?,
            url: format!("{}/v1/events", base_url.trim_end_matches('/')),
            key: key.to_string(),
            timeout,
            errors: AtomicU64::new(0),
        })
    }

    pub async fn fetch(&self, after: &str, wait_ms: u64) -> anyhow::Result<FeedPage> {
        let url = format!(
            "{}?after={after}&limit={}&waitMs={wait_ms}",
            self.url,
            Self::LIMIT
        );
        let resp = self
            .client
            .get(url)
            .header("x-api-key", &self.key)
            .timeout(Duration::from_millis(wait_ms) + self.timeout)
            .send()
            .await
            .context("GET /v1/events")?;
        let status = resp.status();
        let body = resp.bytes().await.context("GET /v1/events: body")?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            bail!("GET /v1/events: HTTP {status}: {text}");
        }
        serde_json::from_slice(&body).context("GET /v1/events: not a feed page")
    }

    /// The cursor at the log's end now: taken before a run's first order goes out, so that
    /// none of its events is missed.
    pub async fn end_cursor(&self) -> anyhow::Result<String> {
        self.fetch("$", 0)
            .await
            .context("reading the event feed")?
            .next
            .context("the event feed gave no `next` cursor")
    }

    /// Follows the feed from `cursor` until aborted, handing each page's events to `on_page`
    /// with the instant the page arrived. A failed read is counted, reported at most every 5 s,
    /// and retried.
    pub async fn tail(
        self: Arc<Self>,
        mut cursor: String,
        mut on_page: impl FnMut(Vec<FeedEvent>, Instant) + Send,
    ) {
        let mut last_report: Option<Instant> = None;
        loop {
            match self.fetch(&cursor, Self::WAIT_MS).await {
                Ok(page) => {
                    let at = Instant::now();
                    let last_id = page.events.iter().rev().find_map(|e| e.event_id.clone());
                    on_page(page.events, at);
                    if let Some(next) = page.next.or(last_id) {
                        cursor = next;
                    }
                }
                Err(e) => {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    if last_report.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                        eprintln!("\nevent feed: {e:#}");
                        last_report = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_page_parses_the_documented_shape() {
        let page: FeedPage = serde_json::from_str(
            r#"{"events":[{"eventId":"1-0","type":"order.confirmed","orderId":"lt-a-1",
                "status":"confirmed","version":2,"customerId":"c-1",
                "occurredAt":"2026-12-07T23:50:00.123Z"}],"next":"1-0"}"#,
        )
        .expect("valid page");
        assert_eq!(page.events.len(), 1);
        assert_eq!(page.events[0].kind, "order.confirmed");
        assert_eq!(page.events[0].order_id, "lt-a-1");
        assert_eq!(
            page.events[0].occurred_at.as_deref(),
            Some("2026-12-07T23:50:00.123Z")
        );
        assert_eq!(page.next.as_deref(), Some("1-0"));
    }
}
