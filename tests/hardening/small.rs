//! Issue 12, item 8's smaller holes (a blocked SSRF destination's error, the 503 of a timed-out
//! intake, Redis without persistence) and three tests that proved less than their names (the
//! SIGTERM drain, `Retry-After`; the constant-time key lookup is unit-tested in
//! `src/auth/keys.rs`). Figures: item 8 for the holes, item 9 for "tests that prove less".

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

on_both_engines!(
    a_blocked_destination_is_refused_without_naming_its_addresses,
    readyz_reports_how_the_engine_keeps_its_data,
    sigterm_drains_and_exits_cleanly,
    a_503_with_retry_after_2_is_retried_no_earlier_than_2_s,
);

/// Short schedule and timeouts, loopback allowed (blocked by default).
const WEBHOOKS_TOML: &str = r#"
[webhooks]
allow_networks = ["127.0.0.0/8"]
retry_schedule = ["0s", "200ms", "400ms"]
jitter = 0.1
request_timeout = "2s"
connect_timeout = "500ms"
lease = "4s"
"#;

async fn create_endpoint(s: &Stack, body: Value) -> String {
    let r = s.post("/v1/webhooks", ADMIN_KEY, &body).await;
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    let created: Value = r.json().await.expect("endpoint JSON");
    created["id"].as_str().expect("endpoint id").to_string()
}

/// The endpoint's first delivery, once `done` says it is in the wanted state.
async fn first_delivery(s: &Stack, endpoint: &str, done: impl Fn(&Value) -> bool) -> Value {
    eventually(Duration::from_secs(20), "the delivery", || async {
        let list: Value = s
            .get(&format!("/v1/webhooks/{endpoint}/deliveries"), ADMIN_KEY)
            .await
            .json()
            .await
            .ok()?;
        let id = list["deliveries"][0]["id"].as_str()?.to_string();
        let d: Value = s
            .get(
                &format!("/v1/webhooks/{endpoint}/deliveries/{id}"),
                ADMIN_KEY,
            )
            .await
            .json()
            .await
            .ok()?;
        done(&d).then_some(d)
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Item 8: a blocked SSRF destination's error says why in general terms, never the addresses.

/// `localhost` passes the URL check (a name) and resolves only to loopback, blocked without
/// `allow_networks`: the attempt's error (in the delivery log, the API's answers and Herald's
/// log) says the destination resolves to a blocked network (loopback), and names neither
/// `127.0.0.1` nor `::1`.
async fn a_blocked_destination_is_refused_without_naming_its_addresses(kind: Kind) {
    let no_allow = WEBHOOKS_TOML.replace("allow_networks = [\"127.0.0.0/8\"]\n", "");
    let s = Stack::start_with(kind, &no_allow);
    let port = free_port();
    let endpoint = create_endpoint(
        &s,
        json!({"url": format!("http://localhost:{port}/hook"), "eventTypes": ["order.accepted"]}),
    )
    .await;
    let r = s
        .post("/v1/orders", ADMIN_KEY, &order_body("ssrf-1", "cust-1"))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let d = first_delivery(&s, &endpoint, |d| d["state"] == "failed").await;
    let error = d["attemptLog"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("blocked network"), "{d}");
    assert!(error.contains("loopback"), "{d}");

    // Every place the refusal shows: the delivery, the endpoint's delivery list, the endpoint,
    // and Herald's own log lines about it.
    let list = s
        .get(&format!("/v1/webhooks/{endpoint}/deliveries"), ADMIN_KEY)
        .await
        .text()
        .await
        .unwrap_or_default();
    let shown = s
        .get(&format!("/v1/webhooks/{endpoint}"), ADMIN_KEY)
        .await
        .text()
        .await
        .unwrap_or_default();
    let logs = s.herald.logs();
    let log_lines: Vec<&str> = logs.lines().filter(|l| l.contains("blocked")).collect();
    let mut places = vec![d.to_string(), list, shown];
    places.extend(log_lines.iter().map(|l| l.to_string()));
    let mut leaked = 0;
    for place in &places {
        for address in ["127.0.0.1", "::1"] {
            if place.contains(address) {
                leaked += 1;
                eprintln!("{address} in: {place}");
            }
        }
    }
    assert_eq!(leaked, 0, "resolved addresses shown");
    crate::figures(
        8,
        "a_blocked_destination_is_refused_without_naming_its_addresses",
        json!({"engine": format!("{kind:?}"), "placesChecked": places.len(), "leaked": leaked}),
    );
}

// ---------------------------------------------------------------------------------------------
// Item 8: a timed-out intake's 503 says the order may have been accepted.

/// Intake requests, each with its own `Idempotency-Key` and customer, are sent around a
/// SIGSTOP of Redis that lasts longer than the intake's timeout (`engine.operation_timeout`,
/// twice that for the intake script): some time out while claiming their key, some while
/// their order is on its way. Every 503 says the order may have been accepted and to retry
/// with the same key, with `Retry-After`; after Redis resumes, retrying each request with its
/// key gives exactly one order per request.
#[tokio::test]
async fn a_timed_out_intake_says_the_order_may_be_accepted_and_a_retry_makes_one() {
    const REQUESTS: usize = 40;
    let s = Arc::new(Stack::start_with(
        Kind::Redis,
        // A receive that timed out during the pause leaves its commands invisible for the
        // visibility timeout: short, so every order is confirmed soon after.
        "[engine]\noperation_timeout = \"400ms\"\n[queue]\nvisibility_timeout = \"2s\"\n",
    ));
    s.order(ADMIN_KEY, "warm-1", "cust-warm").await;
    let redis = s.redis.as_ref().expect("redis");

    let post = |s: Arc<Stack>, i: usize| async move {
        let body = json!({
            "customerId": format!("cust-to-{i}"),
            "items": [{"sku": "sku-1", "quantity": 1, "unitPrice": 3.5}],
            "currency": "USD"
        });
        let r = s
            .http
            .post(s.herald.url("/v1/orders"))
            .header("x-api-key", ADMIN_KEY)
            .header("idempotency-key", format!("timeout-key-{i}"))
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = r.status();
        let retry_after = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let content_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        (status, retry_after, content_type, body)
    };

    // Spread over 100 ms with Redis stopped 30 ms in: a few go through, the rest hang.
    let mut tasks = Vec::new();
    for i in 0..REQUESTS {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_micros(2500 * i as u64)).await;
            post(s, i).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    redis.pause();
    let mut first = Vec::new();
    for task in tasks {
        first.push(task.await.expect("request task"));
    }
    // Longer than any intake timeout (2 x 400 ms), so every request stuck behind the pause
    // has been answered by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.resume();

    let mut unavailable = 0;
    for (status, retry_after, content_type, body) in &first {
        match *status {
            StatusCode::ACCEPTED => {}
            StatusCode::SERVICE_UNAVAILABLE => {
                unavailable += 1;
                assert_eq!(content_type, "application/problem+json", "{body}");
                assert!(retry_after.is_some(), "Retry-After on the 503: {body}");
                let detail = body["detail"].as_str().unwrap_or_default();
                assert!(detail.contains("may have been accepted"), "{body}");
                assert!(detail.contains("same Idempotency-Key"), "{body}");
            }
            other => panic!("intake answered {other}: {body}"),
        }
    }
    assert!(unavailable > 0, "no request timed out: {first:?}");

    // Each request again, with its key, until a 202 (409 while a claim left by a timed-out
    // attempt is still in flight).
    let mut order_of = HashMap::new();
    let mut retries = 0;
    for (i, (status, _, _, body)) in first.iter().enumerate() {
        let answer = eventually(Duration::from_secs(70), "a 202 on retry", || {
            let s = s.clone();
            retries += 1;
            async move {
                let (status, _, _, body) = post(s, i).await;
                (status == StatusCode::ACCEPTED).then_some(body)
            }
        })
        .await;
        let order_id = answer["orderId"].as_str().expect("orderId").to_string();
        if *status == StatusCode::ACCEPTED {
            assert_eq!(body["orderId"], answer["orderId"], "the first 202 replayed");
        }
        order_of.insert(format!("cust-to-{i}"), order_id);
    }

    // Exactly one order per request: one order.accepted event per customer, the one the
    // retry answered with.
    for order_id in order_of.values() {
        s.wait_for_status(order_id, "confirmed", 2).await;
    }
    let mut accepted: HashMap<String, HashSet<String>> = HashMap::new();
    for event in s.events().await {
        if event["type"] == "order.accepted"
            && let (Some(customer), Some(order)) =
                (event["customerId"].as_str(), event["orderId"].as_str())
        {
            accepted
                .entry(customer.to_string())
                .or_default()
                .insert(order.to_string());
        }
    }
    let mut duplicates = 0;
    let mut lost = 0;
    for (customer, order_id) in &order_of {
        match accepted.get(customer) {
            Some(orders) if orders.len() == 1 && orders.contains(order_id) => {}
            Some(orders) if orders.len() > 1 => duplicates += orders.len() - 1,
            _ => lost += 1,
        }
    }
    assert_eq!((duplicates, lost), (0, 0), "{accepted:?} vs {order_of:?}");
    crate::figures(
        8,
        "a_timed_out_intake_says_the_order_may_be_accepted_and_a_retry_makes_one",
        json!({
            "requests": REQUESTS,
            "unavailable": unavailable,
            "retries": retries,
            "orders": order_of.len(),
            "duplicates": duplicates,
            "lost": lost,
        }),
    );
}

// ---------------------------------------------------------------------------------------------
// Item 8: Redis without persistence is reported, at start-up and by readyz.

async fn readyz(herald: &Herald) -> (StatusCode, Value) {
    let r = client()
        .get(herald.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

/// The memory engine reports `volatile`. On Redis, a server started without AOF and without
/// snapshots (`--appendonly no --save ""`) makes Herald warn at start-up and `GET /readyz`
/// report `persistence: "none"` with a warning, still ready (200); one with AOF reports `aof`
/// and no warning.
async fn readyz_reports_how_the_engine_keeps_its_data(kind: Kind) {
    const WARNING: &str = "Redis has no persistence";
    let mut checked = 0;
    let mut unreported = 0;
    let mut runs: Vec<(Option<bool>, &str)> = Vec::new();
    match kind {
        Kind::Memory => runs.push((None, "volatile")),
        Kind::Redis => {
            runs.push((Some(false), "none"));
            runs.push((Some(true), "aof"));
        }
    }
    for (aof, expected) in runs {
        let redis = aof.map(RedisServer::start);
        let herald = Herald::start(HeraldOptions {
            redis_url: redis.as_ref().map(RedisServer::url),
            ..HeraldOptions::default()
        });
        let (status, body) = readyz(&herald).await;
        assert_eq!(status, StatusCode::OK, "still ready: {body}");
        checked += 1;
        if body["persistence"] != expected {
            unreported += 1;
        }
        assert_eq!(body["persistence"], expected, "{body}");
        if expected == "none" {
            assert!(
                body["persistenceWarning"]
                    .as_str()
                    .is_some_and(|w| w.contains(WARNING)),
                "{body}"
            );
            eventually(Duration::from_secs(10), "the start-up warning", || async {
                herald
                    .logs()
                    .lines()
                    .any(|l| l.contains("WARN") && l.contains(WARNING))
                    .then_some(())
            })
            .await;
        } else {
            assert!(body.get("persistenceWarning").is_none(), "{body}");
            // The start-up check has run (it logs either way) and did not warn.
            eventually(Duration::from_secs(10), "the start-up check", || async {
                herald
                    .logs()
                    .contains("persistence")
                    .then_some(())
                    .or_else(|| (kind == Kind::Memory).then_some(()))
            })
            .await;
            assert!(!herald.logs().contains(WARNING), "{}", herald.logs());
        }
    }
    crate::figures(
        8,
        "readyz_reports_how_the_engine_keeps_its_data",
        json!({"engine": format!("{kind:?}"), "servers": checked, "unreported": unreported}),
    );
}

// ---------------------------------------------------------------------------------------------
// Tests that proved less than their names: the SIGTERM drain.

async fn queue_counts(herald: &Herald) -> Value {
    let r = client()
        .get(herald.url("/v1/admin/queues"))
        .header("x-api-key", ADMIN_KEY)
        .send()
        .await
        .expect("queues");
    assert_eq!(r.status(), StatusCode::OK);
    r.json::<Value>().await.expect("queue JSON")["commands"].clone()
}

/// Sends `ids` as orders through `herald`, 8 clients at a time; returns how many got a 202.
async fn send_orders(herald: &Herald, ids: &[String]) -> usize {
    let accepted = Arc::new(Mutex::new(0usize));
    let mut senders = Vec::new();
    for chunk in ids.chunks(ids.len().div_ceil(8)) {
        let chunk = chunk.to_vec();
        let http = client();
        let url = herald.url("/v1/orders");
        let accepted = accepted.clone();
        senders.push(tokio::spawn(async move {
            for id in chunk {
                let r = http
                    .post(&url)
                    .header("x-api-key", ADMIN_KEY)
                    .json(&order_body(&id, "cust-term"))
                    .send()
                    .await
                    .expect("intake");
                assert_eq!(r.status(), StatusCode::ACCEPTED);
                *accepted.lock().unwrap() += 1;
            }
        }));
    }
    for sender in senders {
        sender.await.expect("sender");
    }
    *accepted.lock().unwrap()
}

/// SIGTERM; asserts exit status 0 within the grace period ("herald stopped", and no "grace
/// period over" warning, which would mean unfinished work was left to its visibility timeout).
fn terminate_cleanly(herald: &mut Herald) {
    assert!(
        herald.terminate(),
        "exit status 0 after SIGTERM:\n{}",
        herald.logs()
    );
    let logs = herald.logs();
    assert!(logs.contains("herald stopped"), "{logs}");
    assert!(!logs.contains("grace period over"), "{logs}");
}

/// SIGTERM while the worker has work in hand. On Redis: 1,000 orders wait in the queue (taken
/// by an api-only node), a worker-only node starts on that backlog and gets SIGTERM as soon as
/// it serves. It exits 0 within its grace period, and the queue shows the work in flight was
/// finished or released: read through the api node after the exit, nothing is in flight
/// (received and not acknowledged, invisible until its visibility timeout) and nothing is
/// dead-lettered; a worker started again brings every accepted order to its status, and the
/// queue ends empty. On memory the queue ends with the process: the orders are sent and
/// SIGTERM follows at once, and the clean, timely exit is what can be checked.
async fn sigterm_drains_and_exits_cleanly(kind: Kind) {
    let orders = if kind == Kind::Redis { 1000 } else { 200 };
    let ids: Vec<String> = (0..orders).map(|i| format!("term-{i}")).collect();
    let mut fields = json!({"engine": format!("{kind:?}")});
    if kind == Kind::Memory {
        let mut s = Stack::start(kind);
        let accepted = send_orders(&s.herald, &ids).await;
        assert_eq!(accepted, orders);
        terminate_cleanly(&mut s.herald);
        fields["accepted"] = json!(accepted);
        fields["exitedCleanly"] = json!(1);
        crate::figures(9, "sigterm_drains_and_exits_cleanly", fields);
        return;
    }

    let redis = RedisServer::start(true);
    let node = |roles: &str| {
        Herald::start(HeraldOptions {
            redis_url: Some(redis.url()),
            roles: roles.into(),
            ..HeraldOptions::default()
        })
    };
    let api = node("api");
    let accepted = send_orders(&api, &ids).await;
    assert_eq!(accepted, orders);
    let mut worker = node("worker");
    // SIGTERM only once the worker has work in hand, or the test would prove nothing.
    let at_sigterm = eventually(Duration::from_secs(20), "the worker takes work", || async {
        let counts = queue_counts(&api).await;
        (counts["inFlight"].as_u64().unwrap_or(0) > 0).then_some(counts)
    })
    .await;
    terminate_cleanly(&mut worker);
    let after = queue_counts(&api).await;
    assert_eq!(after["inFlight"], 0, "left in flight after exit: {after}");
    assert_eq!(after["deadLetters"], 0, "{after}");

    let _worker = node("worker");
    let s = Stack::joining(api);
    for id in &ids {
        s.wait_for_status(id, "confirmed", 2).await;
    }
    let end = queue_counts(&s.herald).await;
    assert_eq!(
        (&end["inFlight"], &end["visible"], &end["deadLetters"]),
        (&json!(0), &json!(0), &json!(0)),
        "{end}"
    );
    fields["accepted"] = json!(accepted);
    fields["inFlightAtSigterm"] = at_sigterm["inFlight"].clone();
    fields["visibleAtSigterm"] = at_sigterm["visible"].clone();
    fields["inFlightAfterExit"] = after["inFlight"].clone();
    fields["visibleAfterExit"] = after["visible"].clone();
    fields["deadLettersAfterExit"] = after["deadLetters"].clone();
    fields["confirmedAfterRestart"] = json!(ids.len());
    fields["lost"] = json!(0);
    crate::figures(9, "sigterm_drains_and_exits_cleanly", fields);
}

// ---------------------------------------------------------------------------------------------
// Tests that proved less than their names: Retry-After.

/// A sink that answers its first request `503` with `Retry-After: 2` and every later one 200,
/// recording when each arrived.
async fn retry_after_sink() -> (String, Arc<Mutex<Vec<Instant>>>) {
    use axum::http::header::RETRY_AFTER;
    use axum::response::IntoResponse;
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
    let seen = arrivals.clone();
    let app = axum::Router::new().fallback(move || {
        let seen = seen.clone();
        async move {
            let n = {
                let mut seen = seen.lock().unwrap();
                seen.push(Instant::now());
                seen.len()
            };
            if n == 1 {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(RETRY_AFTER, "2")],
                    "busy",
                )
                    .into_response()
            } else {
                (StatusCode::OK, "thanks").into_response()
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the sink");
    let addr = listener.local_addr().expect("sink address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), arrivals)
}

/// The schedule alone would retry 200 ms after a 503; `Retry-After: 2` holds the retry back
/// to at least 2 s after the first attempt arrived, measured at the sink. How late retries
/// come after their due time is measured, not asserted: `herald-loadtest webhooks --mode
/// lateness` (BENCHMARKS.md, "retry lateness").
async fn a_503_with_retry_after_2_is_retried_no_earlier_than_2_s(kind: Kind) {
    let (url, arrivals) = retry_after_sink().await;
    let s = Stack::start_with(kind, WEBHOOKS_TOML);
    let endpoint = create_endpoint(&s, json!({"url": url, "eventTypes": ["order.accepted"]})).await;
    let r = s
        .post("/v1/orders", ADMIN_KEY, &order_body("ra-1", "cust-1"))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let d = first_delivery(&s, &endpoint, |d| d["state"] == "succeeded").await;
    let times = arrivals.lock().unwrap().clone();
    assert_eq!(times.len(), 2, "one 503, one retry: {d}");
    let gap = times[1] - times[0];
    let early = u32::from(gap < Duration::from_secs(2));
    assert_eq!(
        early, 0,
        "retried {gap:?} after the 503 with Retry-After: 2"
    );
    crate::figures(
        9,
        "a_503_with_retry_after_2_is_retried_no_earlier_than_2_s",
        json!({
            "engine": format!("{kind:?}"),
            "attempts": times.len(),
            "gapMs": gap.as_millis() as u64,
            "early": early,
        }),
    );
}
