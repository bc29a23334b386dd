//! Issue 12, item 8's smaller holes (a blocked SSRF destination's error, the 503 of a timed-out
//! intake, Redis without persistence) and three tests that proved less than their names (the
//! SIGTERM drain, `Retry-After`; the constant-time key lookup is unit-tested in
//! `src/auth/keys.rs`). Figures: item 8 for the holes, item 9 for "tests that prove less".

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
#[allow(unused_imports)]
use std::collections::{HashMap, HashSet};
#[allow(unused_imports)]
use std::sync::{Arc, Mutex};
#[allow(unused_imports)]
use std::time::{Duration, Instant};

on_both_engines!(
    a_blocked_destination_is_refused_without_naming_its_addresses,
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
