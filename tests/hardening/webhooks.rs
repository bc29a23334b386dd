//! Webhook holes of issue 12, against the real binary on both engines: item 6's per-partner
//! endpoint limit and item 8's atomic PATCH / rotate-secret.

use crate::common::sink::{Sink, verify};
use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

on_both_engines!(
    endpoint_limit_answers_422_and_a_delete_frees_a_slot,
    concurrent_creates_for_the_last_slot_admit_one,
    concurrent_patches_and_rotations_lose_no_update,
);

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
// Item 6a: endpoints per partner.

const LIMIT_TOML: &str = "max_endpoints_per_partner = 3\n";

async fn assert_limit_problem(r: reqwest::Response, count: u64) {
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "/problems/endpoint-limit-reached", "{body}");
    let detail = body["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains(&format!("has {count} webhook endpoints"))
            && detail.contains("at most 3")
            && detail.contains("max_endpoints_per_partner"),
        "{detail}"
    );
}

/// A partner at `max_endpoints_per_partner` (its own endpoints and one an admin created for
/// it) is refused with 422 `endpoint-limit-reached` naming the limit and its count, by its own
/// key and by an admin's; other partners and admin endpoints are unaffected; deleting one of
/// its endpoints frees a slot.
async fn endpoint_limit_answers_422_and_a_delete_frees_a_slot(kind: Kind) {
    let s = start(kind, LIMIT_TOML);
    let url = "http://127.0.0.1:9/hook";
    let first = create_ok(&s, ACME_KEY, json!({"url": url})).await;
    create_ok(&s, ACME_KEY, json!({"url": url})).await;
    create_ok(&s, ADMIN_KEY, json!({"url": url, "partnerId": "acme"})).await;
    let mut refused = 0;
    assert_limit_problem(create(&s, ACME_KEY, json!({"url": url})).await, 3).await;
    refused += 1;
    assert_limit_problem(
        create(&s, ADMIN_KEY, json!({"url": url, "partnerId": "acme"})).await,
        3,
    )
    .await;
    refused += 1;
    // Others are unaffected.
    for _ in 0..3 {
        create_ok(&s, GLOBEX_KEY, json!({"url": url})).await;
    }
    create_ok(&s, ADMIN_KEY, json!({"url": url})).await;
    // Nothing was stored by the refused creates.
    let listed: Value = s.get("/v1/webhooks", ACME_KEY).await.json().await.unwrap();
    assert_eq!(listed["endpoints"].as_array().unwrap().len(), 3);
    // A delete frees a slot, and only one.
    let r = s
        .http
        .delete(
            s.herald
                .url(&format!("/v1/webhooks/{}", first["id"].as_str().unwrap())),
        )
        .header("x-api-key", ACME_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    create_ok(&s, ACME_KEY, json!({"url": url})).await;
    assert_limit_problem(create(&s, ACME_KEY, json!({"url": url})).await, 3).await;
    refused += 1;
    crate::figures(
        6,
        "endpoint_limit_answers_422_and_a_delete_frees_a_slot",
        json!({
            "engine": format!("{kind:?}").to_lowercase(),
            "limit": 3,
            "refused": refused,
            "otherPartnersRefused": 0,
        }),
    );
}

/// Sixteen creates racing for a partner's last slot: exactly one passes (the count and the
/// insert are one engine step), the others get 422, and the partner ends at the limit.
async fn concurrent_creates_for_the_last_slot_admit_one(kind: Kind) {
    const RACERS: usize = 16;
    let s = start(kind, LIMIT_TOML);
    let url = "http://127.0.0.1:9/hook";
    create_ok(&s, ACME_KEY, json!({"url": url})).await;
    create_ok(&s, ACME_KEY, json!({"url": url})).await;
    let body = json!({"url": url});
    let answers = futures_util::future::join_all((0..RACERS).map(|i| {
        create(&s, if i % 2 == 0 { ACME_KEY } else { ADMIN_KEY }, {
            let mut b = body.clone();
            if i % 2 == 1 {
                b["partnerId"] = json!("acme");
            }
            b
        })
    }))
    .await;
    let created = answers
        .iter()
        .filter(|r| r.status() == StatusCode::CREATED)
        .count();
    let refused = answers
        .iter()
        .filter(|r| r.status() == StatusCode::UNPROCESSABLE_ENTITY)
        .count();
    let listed: Value = s.get("/v1/webhooks", ACME_KEY).await.json().await.unwrap();
    let stored = listed["endpoints"].as_array().unwrap().len();
    crate::figures(
        6,
        "concurrent_creates_for_the_last_slot_admit_one",
        json!({
            "engine": format!("{kind:?}").to_lowercase(),
            "racers": RACERS,
            "created": created,
            "refused": refused,
            "overLimit": stored.saturating_sub(3),
        }),
    );
    assert_eq!((created, refused), (1, RACERS - 1));
    assert_eq!(stored, 3);
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
