//! Issue 12, item 2: webhooks never lose events silently to the log's retention. Events
//! trimmed by `engine.event_retention` before any dispatcher read them are counted, logged and
//! recorded per endpoint as a lost range that `GET /v1/webhooks/{id}` and `recover` show.

use crate::common::sink::Sink;
use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;

async fn create_endpoint(s: &Stack, key: &str, body: Value) -> Value {
    let r = s.post("/v1/webhooks", key, &body).await;
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    r.json().await.unwrap()
}

/// Retention honesty: the webhooks role stopped while more events than `event_retention` are
/// appended, then started again. The events trimmed before any dispatcher read them are
/// reported (metric, and the lost range on the endpoint and in `recover`), not skipped
/// silently; delivery goes on with the events still in the log.
#[tokio::test]
async fn webhooks_stopped_past_retention_report_the_gap_when_restarted() {
    let sink = Sink::start().await;
    let redis = RedisServer::start(false);
    let options = |roles: &str| HeraldOptions {
        redis_url: Some(redis.url()),
        roles: roles.into(),
        extra_toml: format!("{WEBHOOKS_TOML}\n[engine]\nevent_retention = 10\n"),
        ..HeraldOptions::default()
    };
    let api = Stack::joining(Herald::start(options("api")));
    let mut hooks = Stack::joining(Herald::start(options("api,webhooks")));
    let ep = create_endpoint(&api, ADMIN_KEY, json!({"url": sink.url("/gap")})).await;
    let ep_path = format!("/v1/webhooks/{}", ep["id"].as_str().unwrap());
    let event = |n: u64| {
        json!({
            "type": "order.preparing", "orderId": format!("gap-{n}"), "customerId": "cust-1",
            "status": "preparing", "previousStatus": "confirmed", "version": 3,
            "occurredAt": "2026-11-27T10:00:00Z"
        })
    };
    let delivered = api.publish(event(0)).await;
    sink.wait_for("/gap", 1).await;
    let none: Value = api.get(&ep_path, ADMIN_KEY).await.json().await.unwrap();
    assert_eq!(none["lostEvents"], json!([]));

    hooks.herald.kill9();
    let mut published = Vec::new();
    for n in 1..=300 {
        published.push(api.publish(event(n)).await);
    }
    hooks = Stack::joining(Herald::start(options("api,webhooks")));
    let lost = eventually(Duration::from_secs(20), "the gap reported", || async {
        let view: Value = hooks.get(&ep_path, ADMIN_KEY).await.json().await.unwrap();
        view["lostEvents"]
            .as_array()
            .filter(|l| !l.is_empty())
            .cloned()
    })
    .await;
    assert_eq!(lost.len(), 1, "{lost:?}");
    let gap = &lost[0];
    assert_eq!(gap["afterEventId"], json!(delivered));
    let count = gap["count"].as_u64().unwrap();
    assert!(count > 0 && count < 300, "{gap}");
    // The first event after the gap is the first one still in the log, and the lost ones are
    // exactly those published before it.
    let before = gap["beforeEventId"].as_str().unwrap();
    let position = published.iter().position(|id| id == before).unwrap();
    assert_eq!(position as u64, count);
    assert_eq!(
        hooks.metric("herald_webhook_events_lost_total").await,
        count
    );
    let r = hooks
        .post(
            &format!("{ep_path}/recover"),
            ADMIN_KEY,
            &json!({"since": "2020-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let recovered: Value = r.json().await.unwrap();
    assert_eq!(recovered["lostEvents"], json!(lost));
    // What the log still holds is delivered.
    let got = sink.wait_for("/gap", 1 + 300 - count as usize).await;
    let ids: HashSet<&str> = got.iter().map(|r| r.id()).collect();
    assert_eq!(ids.len() as u64, 1 + 300 - count);
    crate::figures(
        2,
        "webhooks_stopped_past_retention_report_the_gap_when_restarted",
        json!({
            "engine": "redis", "eventRetention": 10, "eventsPublishedWhileStopped": 300,
            "lostReported": count, "lostMetric": count,
            "deliveredAfterRestart": ids.len() - 1, "silentlyDropped": 0,
        }),
    );
}
