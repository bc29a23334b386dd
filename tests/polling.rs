//! HTTP clients that poll instead of subscribing, end to end on the real binary: the long-poll
//! of `GET /v1/orders/{id}/status` (`Prefer: wait=N`, `waitForVersion=V`) and the resync of
//! `GET /v1/events?resync=true` (README "Long-poll status", "Resync"). Every behaviour runs on
//! both engines (Redis tests start their own redis-server); a long-poll woken by a transition
//! another node applied runs on two Herald processes over one Redis.

mod common;

use common::ws::external_event;
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

on_both_engines!(
    long_poll_status_answers_once_the_version_passes_the_one_waited_for,
    curl_runs_the_readmes_long_poll_status_command,
    long_poll_status_answers_with_the_current_status_at_its_deadline,
    long_poll_status_is_bounded_per_credential_and_a_plain_read_is_not,
    long_poll_status_refuses_bad_preferences_and_hides_foreign_orders,
    http_resync_after_an_expired_cursor_sends_the_callers_snapshot_then_what_follows,
    http_resync_over_its_bound_is_refused_whole,
);

async fn transition(s: &Stack, order_id: &str, status: &str) {
    let r = s
        .post(
            &format!("/v1/orders/{order_id}/transitions"),
            ADMIN_KEY,
            &json!({ "status": status }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
}

/// `GET /v1/orders/{id}/status` with `Prefer` (when given) and a query string.
async fn status_request(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    path_and_query: &str,
    prefer: Option<&str>,
) -> reqwest::Response {
    let mut request = http
        .get(format!("{base}{path_and_query}"))
        .header("x-api-key", key);
    if let Some(prefer) = prefer {
        request = request.header("prefer", prefer);
    }
    request.send().await.expect("request")
}

async fn waiting_long_polls(http: &reqwest::Client, base: &str) -> u64 {
    let text = http
        .get(format!("{base}/metrics"))
        .header("x-api-key", ADMIN_KEY)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix("herald_long_polls_waiting "))
        .and_then(|v| v.trim().parse().ok())
        .expect("herald_long_polls_waiting in /metrics")
}

/// Waits until `n` long-polls wait on the node at `base`.
async fn until_waiting(http: &reqwest::Client, base: &str, n: u64) {
    eventually(
        Duration::from_secs(20),
        &format!("{n} waiting long-polls"),
        || async { (waiting_long_polls(http, base).await == n).then_some(()) },
    )
    .await;
}

/// The README's command, run by curl: it blocks until the order moves past the version it
/// names, then prints the new status.
async fn curl_runs_the_readmes_long_poll_status_command(kind: Kind) {
    let s = Stack::start(kind);
    s.order(ADMIN_KEY, "lp-curl", "cust-1").await;
    let url = format!(
        "{}/v1/orders/lp-curl/status?waitForVersion=2",
        s.herald.base
    );
    let curl = tokio::process::Command::new("curl")
        .args(["-s", "--max-time", "30", "-H"])
        .arg(format!("x-api-key: {ADMIN_KEY}"))
        .args(["-H", "Prefer: wait=25"])
        .arg(&url)
        .kill_on_drop(true)
        .output();
    let curl = tokio::spawn(curl);
    until_waiting(&s.http, &s.herald.base, 1).await;
    transition(&s, "lp-curl", "preparing").await;
    let out = curl.await.expect("curl task").expect("curl runs");
    assert!(out.status.success(), "curl: {out:?}");
    let body: Value = serde_json::from_slice(&out.stdout).expect("curl printed JSON");
    assert_eq!(body["orderId"], "lp-curl");
    assert_eq!(body["status"], "preparing");
    assert_eq!(body["version"], 3);
}

async fn long_poll_status_answers_once_the_version_passes_the_one_waited_for(kind: Kind) {
    let s = Stack::start(kind);
    s.order(ADMIN_KEY, "lp-1", "cust-1").await;
    let waiting = tokio::spawn({
        let (http, base) = (s.http.clone(), s.herald.base.clone());
        async move {
            status_request(
                &http,
                &base,
                ADMIN_KEY,
                "/v1/orders/lp-1/status?waitForVersion=2",
                Some("wait=20"),
            )
            .await
        }
    });
    until_waiting(&s.http, &s.herald.base, 1).await;
    transition(&s, "lp-1", "preparing").await;
    let r = waiting.await.expect("the waiting request");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["preference-applied"], "wait=20");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "preparing");
    assert_eq!(body["version"], 3);
    assert_eq!(waiting_long_polls(&s.http, &s.herald.base).await, 0);
    // A version already past the one waited for answers at once.
    let r = status_request(
        &s.http,
        &s.herald.base,
        ADMIN_KEY,
        "/v1/orders/lp-1/status?waitForVersion=1",
        Some("wait=20"),
    )
    .await;
    assert_eq!(r.json::<Value>().await.unwrap()["version"], 3);
}

async fn long_poll_status_answers_with_the_current_status_at_its_deadline(kind: Kind) {
    let s = Stack::start_with(kind, "[http]\nlong_poll_max_wait = \"1s\"\n");
    s.order(ADMIN_KEY, "lp-2", "cust-1").await;
    // Asked for more than the bound: waits the bound, and says so.
    let r = status_request(
        &s.http,
        &s.herald.base,
        ADMIN_KEY,
        "/v1/orders/lp-2/status",
        Some("respond-async, wait=600"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["preference-applied"], "wait=1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "confirmed");
    assert_eq!(body["version"], 2);
    // waitForVersion alone waits up to the bound too, and sets no Preference-Applied.
    let r = status_request(
        &s.http,
        &s.herald.base,
        ADMIN_KEY,
        "/v1/orders/lp-2/status?waitForVersion=2",
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get("preference-applied").is_none());
    assert_eq!(r.json::<Value>().await.unwrap()["version"], 2);
}

async fn long_poll_status_is_bounded_per_credential_and_a_plain_read_is_not(kind: Kind) {
    let s = Stack::start_with(kind, "[http]\nlong_poll_max_waiting_per_credential = 1\n");
    s.order(ACME_KEY, "lp-3", "cust-1").await;
    let waiting = tokio::spawn({
        let (http, base) = (s.http.clone(), s.herald.base.clone());
        async move {
            status_request(
                &http,
                &base,
                ACME_KEY,
                "/v1/orders/lp-3/status",
                Some("wait=20"),
            )
            .await
        }
    });
    until_waiting(&s.http, &s.herald.base, 1).await;
    let refused = status_request(
        &s.http,
        &s.herald.base,
        ACME_KEY,
        "/v1/orders/lp-3/status",
        Some("wait=20"),
    )
    .await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(
        problem["type"], "/problems/too-many-long-polls",
        "{problem}"
    );
    // A read that does not wait is answered, bound or not.
    let plain = status_request(
        &s.http,
        &s.herald.base,
        ACME_KEY,
        "/v1/orders/lp-3/status",
        None,
    )
    .await;
    assert_eq!(plain.status(), StatusCode::OK);
    transition(&s, "lp-3", "preparing").await;
    let r = waiting.await.expect("the waiting request");
    assert_eq!(r.json::<Value>().await.unwrap()["version"], 3);
}

async fn long_poll_status_refuses_bad_preferences_and_hides_foreign_orders(kind: Kind) {
    let s = Stack::start(kind);
    s.order(ACME_KEY, "lp-4", "cust-1").await;
    for (query, prefer, what) in [
        ("", Some("wait=soon"), "`soon`"),
        ("?waitForVersion=two", None, "`two`"),
        ("?waitForVersion=-1", Some("wait=5"), "`-1`"),
    ] {
        let r = status_request(
            &s.http,
            &s.herald.base,
            ACME_KEY,
            &format!("/v1/orders/lp-4/status{query}"),
            prefer,
        )
        .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{query} {prefer:?}");
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{query}"
        );
        let problem: Value = r.json().await.unwrap();
        assert!(
            problem["detail"].as_str().unwrap_or("").contains(what),
            "{problem}"
        );
    }
    // Another partner's order is missing, at once, whether it waits or not.
    let r = status_request(
        &s.http,
        &s.herald.base,
        GLOBEX_KEY,
        "/v1/orders/lp-4/status",
        Some("wait=20"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(waiting_long_polls(&s.http, &s.herald.base).await, 0);
}

#[tokio::test]
async fn long_poll_status_on_one_node_is_woken_by_a_transition_another_node_applied() {
    let redis = RedisServer::start(false);
    // The node the client waits on runs no worker: the transition is applied by the other.
    let waiting_node = Herald::start(HeraldOptions {
        redis_url: Some(redis.url()),
        roles: "api".into(),
        ..HeraldOptions::default()
    });
    let working_node = Stack::joining(Herald::start(HeraldOptions {
        redis_url: Some(redis.url()),
        ..HeraldOptions::default()
    }));
    working_node.order(ADMIN_KEY, "lp-x", "cust-1").await;
    let http = client();
    let waiting = tokio::spawn({
        let (http, base) = (http.clone(), waiting_node.base.clone());
        async move {
            // Only Prefer: wait for any change from the version at the request's start.
            status_request(
                &http,
                &base,
                ADMIN_KEY,
                "/v1/orders/lp-x/status",
                Some("wait=25"),
            )
            .await
        }
    });
    until_waiting(&http, &waiting_node.base, 1).await;
    transition(&working_node, "lp-x", "preparing").await;
    let r = waiting.await.expect("the waiting request");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["preference-applied"], "wait=25");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "preparing", "{body}");
    assert_eq!(body["version"], 3);
}

async fn events_page(s: &Stack, key: &str, query: &str) -> reqwest::Response {
    s.get(&format!("/v1/events?{query}"), key).await
}

async fn http_resync_after_an_expired_cursor_sends_the_callers_snapshot_then_what_follows(
    kind: Kind,
) {
    let s = Stack::start_with(kind, "[engine]\nevent_retention = 10\n");
    s.order(ACME_KEY, "hr-1", "cust-1").await;
    s.order(ACME_KEY, "hr-2", "cust-2").await;
    s.order(GLOBEX_KEY, "hr-3", "cust-3").await;
    transition(&s, "hr-1", "preparing").await;
    s.wait_for_status("hr-1", "preparing", 3).await;
    for v in 0..250 {
        s.publish(external_event("t-1", "cust-trim", Some("acme"), v + 3))
            .await;
    }
    let expired = events_page(&s, ACME_KEY, "after=1-0").await;
    assert_eq!(expired.status(), StatusCode::GONE);
    let r = events_page(&s, ACME_KEY, "after=1-0&resync=true").await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["resynced"], true);
    let events = body["events"].as_array().unwrap();
    let got: Vec<(&Value, &Value, &Value, &Value)> = events
        .iter()
        .map(|e| (&e["type"], &e["orderId"], &e["status"], &e["version"]))
        .collect();
    assert_eq!(
        got,
        [
            (
                &json!("order.snapshot"),
                &json!("hr-1"),
                &json!("preparing"),
                &json!(3)
            ),
            (
                &json!("order.snapshot"),
                &json!("hr-2"),
                &json!("confirmed"),
                &json!(2)
            ),
        ],
        "{body}"
    );
    // Nothing was logged since: the snapshot's eventId is where the next page starts.
    let next = body["next"].as_str().unwrap().to_string();
    assert_eq!(events[0]["eventId"], next.as_str());
    assert_eq!(events[0]["partnerId"], "acme");
    transition(&s, "hr-2", "preparing").await;
    let r = events_page(&s, ACME_KEY, &format!("after={next}&waitMs=20000")).await;
    let body: Value = r.json().await.unwrap();
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{body}");
    assert_eq!(events[0]["type"], "order.preparing");
    assert_eq!(events[0]["orderId"], "hr-2");
    assert_eq!(events[0]["version"], 3);
    // A retained cursor with resync=true is an ordinary page.
    let r = events_page(&s, ACME_KEY, &format!("after={next}&resync=true")).await;
    let body: Value = r.json().await.unwrap();
    assert!(body.get("resynced").is_none(), "{body}");
    assert_eq!(body["events"][0]["orderId"], "hr-2");
}

async fn http_resync_over_its_bound_is_refused_whole(kind: Kind) {
    let s = Stack::start_with(kind, "[push]\nmax_snapshot_orders = 1\n");
    s.order(ADMIN_KEY, "hb-1", "cust-1").await;
    s.order(ADMIN_KEY, "hb-2", "cust-1").await;
    let r = events_page(&s, ADMIN_KEY, "resync=true").await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/snapshot-too-large", "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or("")
            .contains("push.max_snapshot_orders"),
        "{problem}"
    );
}
