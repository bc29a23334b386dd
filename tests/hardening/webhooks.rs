//! Webhook holes of issue 12, against the real binary on both engines: item 8's atomic PATCH /
//! rotate-secret.

use crate::common::sink::{Sink, verify};
use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

on_both_engines!(concurrent_patches_and_rotations_lose_no_update,);

/// Short schedule, loopback allowed (blocked by default).
const WEBHOOKS_TOML: &str = r#"
[webhooks]
allow_networks = ["127.0.0.0/8"]
retry_schedule = ["0s", "100ms", "200ms"]
jitter = 0.1
request_timeout = "1s"
connect_timeout = "500ms"
lease = "2s"
"#;

fn start(kind: Kind, extra: &str) -> Stack {
    Stack::start_with(kind, &format!("{WEBHOOKS_TOML}{extra}"))
}

async fn create(s: &Stack, key: &str, body: Value) -> reqwest::Response {
    s.post("/v1/webhooks", key, &body).await
}

async fn create_ok(s: &Stack, key: &str, body: Value) -> Value {
    let r = create(s, key, body).await;
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    r.json().await.unwrap()
}

async fn patch(s: &Stack, path: &str, key: &str, body: Value) -> reqwest::Response {
    s.http
        .patch(s.herald.url(path))
        .header("x-api-key", key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn publish_n(s: &Stack, prefix: &str, n: usize) {
    for i in 0..n {
        s.publish(crate::common::ws::external_event(
            &format!("{prefix}-{i}"),
            "cust-1",
            Some("acme"),
            3,
        ))
        .await;
    }
}

// ---------------------------------------------------------------------------------------------
// Item 8: PATCH and rotate-secret are atomic against each other and the sender's health updates.

/// Rounds of a PATCH of `description`, a PATCH of `maxInFlight` and a rotate-secret fired at
/// once, while the endpoint fails every delivery (so the sender records health all along).
/// After every round both PATCHed fields hold; at the end the last rotation's secret and the
/// one it replaced both sign, the endpoint is still failing (health not reset) and enabled.
async fn concurrent_patches_and_rotations_lose_no_update(kind: Kind) {
    const ROUNDS: usize = 30;
    let sink = Sink::start().await;
    sink.answer("/race", crate::common::sink::Answer::Status(500));
    let s = start(kind, "");
    let ep = create_ok(&s, ACME_KEY, json!({"url": sink.url("/race")})).await;
    let id = ep["id"].as_str().unwrap().to_string();
    let path = format!("/v1/webhooks/{id}");
    let mut secrets = vec![ep["secret"].as_str().unwrap().to_string()];
    // Failing deliveries all along: the sender writes health while the API writes settings.
    let background = {
        let base = s.herald.base.clone();
        tokio::spawn(async move {
            let http = client();
            for i in 0..200 {
                let event =
                    crate::common::ws::external_event(&format!("race-{i}"), "c", Some("acme"), 3);
                let _ = http
                    .post(format!("{base}/v1/events"))
                    .header("x-api-key", ADMIN_KEY)
                    .json(&event)
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let rotate_path = format!("{path}/rotate-secret");
    let empty = json!({});
    let mut lost_updates = 0;
    for round in 0..ROUNDS {
        let description = format!("round {round}");
        let in_flight = (round % 50 + 1) as u64;
        let (a, b, c) = tokio::join!(
            patch(&s, &path, ACME_KEY, json!({"description": description})),
            patch(&s, &path, ACME_KEY, json!({"maxInFlight": in_flight})),
            s.post(&rotate_path, ACME_KEY, &empty),
        );
        assert_eq!(a.status(), StatusCode::OK);
        assert_eq!(b.status(), StatusCode::OK);
        assert_eq!(c.status(), StatusCode::OK);
        let rotated: Value = c.json().await.unwrap();
        secrets.push(rotated["secret"].as_str().unwrap().to_string());
        let now: Value = s.get(&path, ACME_KEY).await.json().await.unwrap();
        if now["description"] != description.as_str() || now["maxInFlight"] != in_flight {
            lost_updates += 1;
        }
    }
    background.abort();
    // A delivery attempted after the last round carries both live secrets' signatures.
    let since = sink.received("/race").len();
    publish_n(&s, "race-after", 1).await;
    let got = sink.wait_for("/race", since + 1).await;
    let last = got.last().unwrap();
    let signatures: Vec<&str> = last.headers["webhook-signature"].split(' ').collect();
    let newest = secrets[secrets.len() - 1].clone();
    let previous = secrets[secrets.len() - 2].clone();
    let answers = verify(&[(newest, last), (previous, last)]);
    let now: Value = s.get(&path, ACME_KEY).await.json().await.unwrap();
    crate::figures(
        8,
        "concurrent_patches_and_rotations_lose_no_update",
        json!({
            "engine": format!("{kind:?}").to_lowercase(),
            "rounds": ROUNDS,
            "concurrentWrites": ROUNDS * 3,
            "lostUpdates": lost_updates,
            "signatures": signatures.len(),
        }),
    );
    assert_eq!(lost_updates, 0, "a PATCH or rotate-secret reverted another");
    assert_eq!(signatures.len(), 2, "{signatures:?}");
    assert_eq!(
        answers,
        vec!["ok", "ok"],
        "both secrets of the last rotation sign"
    );
    assert_eq!(now["enabled"], true);
    assert!(now["failingSince"].is_string(), "health was reset: {now}");
}
