//! Item 6 (per-partner endpoint limits, retention of delivery records, memory under an
//! endpoint answering 500 with 20 KB bodies) and item 8's atomic PATCH / rotate-secret, against
//! the real binary on both engines.

use crate::common::sink::{Sink, verify};
use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

on_both_engines!(
    endpoint_limit_answers_422_and_a_delete_frees_a_slot,
    concurrent_creates_for_the_last_slot_admit_one,
    old_delivery_records_are_swept_with_attempts_and_index_entries,
    deleting_an_endpoint_sweeps_its_records,
    memory_stays_bounded_under_500s_with_20kb_bodies,
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

/// An endpoint's deliveries as the API lists them (up to 250).
async fn listed(s: &Stack, endpoint: &str) -> Vec<Value> {
    let r = s
        .get(
            &format!("/v1/webhooks/{endpoint}/deliveries?limit=250"),
            ADMIN_KEY,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    body["deliveries"].as_array().cloned().unwrap_or_default()
}

/// Keys of the test's own redis-server whose name contains `part` (SCAN, never KEYS).
fn count_keys(s: &Stack, part: &str) -> usize {
    let Some(redis) = &s.redis else { return 0 };
    let mut conn = redis.conn();
    let keys: Vec<String> = ::redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("MATCH")
        .arg(format!("*{part}*"))
        .arg("COUNT")
        .arg(1000)
        .clone()
        .iter(&mut conn)
        .unwrap()
        .map(|k| k.unwrap())
        .collect();
    keys.len()
}

fn dbsize(s: &Stack) -> u64 {
    s.redis
        .as_ref()
        .map(|r| ::redis::cmd("DBSIZE").query(&mut r.conn()).unwrap())
        .unwrap_or(0)
}

/// Delivery records, attempt logs and index entries of the webhook store left in Redis (0 on
/// the memory engine, which the API listing checks instead).
fn webhook_records(s: &Stack) -> usize {
    [
        "webhooks:delivery:",
        "webhooks:attempts:",
        "webhooks:by_endpoint:",
        "webhooks:failed:",
    ]
    .iter()
    .map(|part| count_keys(s, part))
    .sum::<usize>()
        + schedule_len(s)
}

fn schedule_len(s: &Stack) -> usize {
    let Some(redis) = &s.redis else { return 0 };
    let mut conn = redis.conn();
    let keys: Vec<String> = ::redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("MATCH")
        .arg("*webhooks:schedule")
        .clone()
        .iter(&mut conn)
        .unwrap()
        .map(|k| k.unwrap())
        .collect();
    keys.iter()
        .map(|k| {
            ::redis::cmd("ZCARD")
                .arg(k)
                .query::<usize>(&mut conn)
                .unwrap()
        })
        .sum()
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
// Item 6b: retention of delivery records.

/// With `delivery_retention = "3s"`, delivered and failed deliveries, their attempt logs and
/// their index and schedule entries are all deleted by the sweep (Redis: the test's own
/// server holds none of those keys afterwards).
async fn old_delivery_records_are_swept_with_attempts_and_index_entries(kind: Kind) {
    const EVENTS: usize = 10;
    let sink = Sink::start().await;
    sink.answer("/fail", crate::common::sink::Answer::Status(500));
    let s = start(
        kind,
        "delivery_retention = \"3s\"\ndelivery_sweep_interval = \"200ms\"\n",
    );
    let ok = create_ok(&s, ACME_KEY, json!({"url": sink.url("/ok")})).await;
    let failing = create_ok(&s, ACME_KEY, json!({"url": sink.url("/fail")})).await;
    let ids = [ok["id"].as_str().unwrap(), failing["id"].as_str().unwrap()];
    let keys_before = dbsize(&s);
    publish_n(&s, "swept", EVENTS).await;
    sink.wait_for("/ok", EVENTS).await;
    // Three attempts each (the schedule), all failing.
    sink.wait_for("/fail", EVENTS * 3).await;
    let listed_before = listed(&s, ids[0]).await.len() + listed(&s, ids[1]).await.len();
    let records_before = webhook_records(&s);
    let one = listed(&s, ids[1]).await.first().cloned();
    eventually(
        Duration::from_secs(20),
        "every delivery record swept",
        || async {
            let left = listed(&s, ids[0]).await.len() + listed(&s, ids[1]).await.len();
            (left == 0 && webhook_records(&s) == 0).then_some(())
        },
    )
    .await;
    if let Some(one) = one {
        let r = s
            .get(
                &format!(
                    "/v1/webhooks/{}/deliveries/{}",
                    ids[1],
                    one["id"].as_str().unwrap()
                ),
                ADMIN_KEY,
            )
            .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    let keys_after = dbsize(&s);
    crate::figures(
        6,
        "old_delivery_records_are_swept_with_attempts_and_index_entries",
        json!({
            "engine": format!("{kind:?}").to_lowercase(),
            "deliveries": EVENTS * 2,
            "listedBeforeSweep": listed_before,
            "redisRecordKeysBefore": records_before,
            "redisRecordKeysAfter": webhook_records(&s),
            "redisKeysBefore": keys_before,
            "redisKeysAfter": keys_after,
            "left": 0,
        }),
    );
    // Nothing but the webhook store's fixed keys and the event log may remain.
    assert!(
        keys_after <= keys_before + 3,
        "{keys_before} -> {keys_after}"
    );
}

/// Deleting an endpoint schedules its records for deletion: the next sweep deletes them whatever
/// their age (retention stays at its 30-day default here), while another endpoint's records
/// stay.
async fn deleting_an_endpoint_sweeps_its_records(kind: Kind) {
    const EVENTS: usize = 5;
    let sink = Sink::start().await;
    let s = start(kind, "delivery_sweep_interval = \"200ms\"\n");
    let doomed = create_ok(&s, ACME_KEY, json!({"url": sink.url("/doomed")})).await;
    let kept = create_ok(&s, ACME_KEY, json!({"url": sink.url("/kept")})).await;
    let doomed_id = doomed["id"].as_str().unwrap().to_string();
    let kept_id = kept["id"].as_str().unwrap().to_string();
    publish_n(&s, "doomed", EVENTS).await;
    sink.wait_for("/doomed", EVENTS).await;
    sink.wait_for("/kept", EVENTS).await;
    let doomed_deliveries = listed(&s, &doomed_id).await;
    assert_eq!(doomed_deliveries.len(), EVENTS);
    let records_before = webhook_records(&s);
    let r = s
        .http
        .delete(s.herald.url(&format!("/v1/webhooks/{doomed_id}")))
        .header("x-api-key", ACME_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let line = eventually(
        Duration::from_secs(20),
        "the deleted endpoint's records swept",
        || async {
            let logs = strip_ansi(&s.herald.logs());
            let line = logs
                .lines()
                .find(|l| l.contains("delivery records swept") && l.contains(&doomed_id))
                .map(String::from);
            let gone = doomed_deliveries
                .iter()
                .all(|d| count_keys(&s, &format!("delivery:{}", d["id"].as_str().unwrap())) == 0)
                && count_keys(&s, &format!("by_endpoint:{doomed_id}")) == 0;
            line.filter(|_| gone)
        },
    )
    .await;
    assert!(line.contains(&format!("deleted={EVENTS}")), "{line}");
    // The other endpoint's records are young: they stay.
    assert_eq!(listed(&s, &kept_id).await.len(), EVENTS);
    let records_after = webhook_records(&s);
    crate::figures(
        6,
        "deleting_an_endpoint_sweeps_its_records",
        json!({
            "engine": format!("{kind:?}").to_lowercase(),
            "deletedEndpointDeliveries": EVENTS,
            "sweptOfDeletedEndpoint": EVENTS,
            "keptOfOtherEndpoint": EVENTS,
            "redisRecordKeysBefore": records_before,
            "redisRecordKeysAfter": records_after,
        }),
    );
    if kind == Kind::Redis {
        // The kept endpoint's delivery hashes and attempt logs (2 per delivery), its index.
        assert_eq!(records_after, EVENTS * 2 + 1);
    }
}

/// Log text without its colour codes.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A local endpoint answering every request with 500 and a 20 KB body; counts requests.
async fn heavy_failing_endpoint() -> (String, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let body = "x".repeat(20 * 1024);
    let app = axum::Router::new().fallback(move || {
        let seen = seen.clone();
        let body = body.clone();
        async move {
            seen.fetch_add(1, Ordering::SeqCst);
            (axum::http::StatusCode::INTERNAL_SERVER_ERROR, body)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/heavy"), count)
}

/// The process's resident memory in KiB (0 once it is gone).
fn rss_kib(pid: u32) -> u64 {
    vm_rss_kib(pid).unwrap_or(0)
}

fn redis_used_kib(s: &Stack) -> u64 {
    let Some(redis) = &s.redis else { return 0 };
    let info: String = ::redis::cmd("INFO")
        .arg("memory")
        .query(&mut redis.conn())
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

/// An endpoint answering every attempt with 500 and 20 KB: each attempt keeps at most 20 KB of
/// it, and with a short retention the records go, so over rounds of deliveries Herald's
/// resident memory (and, on Redis, Redis' used memory) stays near where it was after the first
/// round instead of growing by what the rounds stored.
async fn memory_stays_bounded_under_500s_with_20kb_bodies(kind: Kind) {
    const ROUNDS: usize = 5;
    const EVENTS: usize = 100;
    const ATTEMPTS: usize = 2;
    let (url, requests) = heavy_failing_endpoint().await;
    let s = Stack::start_with(
        kind,
        r#"
[webhooks]
allow_networks = ["127.0.0.0/8"]
retry_schedule = ["0s", "100ms"]
jitter = 0.1
request_timeout = "2s"
connect_timeout = "500ms"
lease = "3s"
delivery_retention = "2s"
delivery_sweep_interval = "200ms"
"#,
    );
    let endpoint = create_ok(&s, ACME_KEY, json!({"url": url})).await;
    let id = endpoint["id"].as_str().unwrap().to_string();
    let pid = s.herald.pid();
    let mut rss = Vec::new();
    let mut redis_used = Vec::new();
    let mut largest_kept = 0;
    for round in 0..ROUNDS {
        publish_n(&s, &format!("heavy-{round}"), EVENTS).await;
        let expected = (round + 1) * EVENTS * ATTEMPTS;
        eventually(Duration::from_secs(60), "every attempt made", || async {
            (requests.load(Ordering::SeqCst) >= expected).then_some(())
        })
        .await;
        if round == 0
            && let Some(d) = listed(&s, &id).await.first()
        {
            let r = s
                .get(
                    &format!("/v1/webhooks/{id}/deliveries/{}", d["id"].as_str().unwrap()),
                    ADMIN_KEY,
                )
                .await;
            if r.status() == StatusCode::OK {
                let view: Value = r.json().await.unwrap();
                for attempt in view["attemptLog"].as_array().unwrap() {
                    largest_kept = largest_kept.max(attempt["response"].as_str().unwrap().len());
                }
            }
        }
        eventually(
            Duration::from_secs(30),
            "the round's records swept",
            || async {
                (listed(&s, &id).await.is_empty() && webhook_records(&s) == 0).then_some(())
            },
        )
        .await;
        rss.push(rss_kib(pid));
        redis_used.push(redis_used_kib(&s));
    }
    let stored_per_round_kib = (EVENTS * ATTEMPTS * 20) as u64;
    let rss_growth = rss[ROUNDS - 1].saturating_sub(rss[0]);
    let redis_growth = redis_used[ROUNDS - 1].saturating_sub(redis_used[0]);
    crate::figures(
        6,
        "memory_stays_bounded_under_500s_with_20kb_bodies",
        json!({
            "engine": format!("{kind:?}").to_lowercase(),
            "deliveries": ROUNDS * EVENTS,
            "attempts": requests.load(Ordering::SeqCst),
            "responseKiBPerRound": stored_per_round_kib,
            "largestKeptResponseBytes": largest_kept,
            "heraldRssKiBPerRound": rss,
            "heraldRssGrowthKiB": rss_growth,
            "redisUsedKiBPerRound": redis_used,
            "redisUsedGrowthKiB": redis_growth,
            "recordsLeft": 0,
        }),
    );
    assert!(largest_kept <= 20 * 1024, "{largest_kept}");
    // Kept for ever, the rounds after the first would add (ROUNDS - 1) * stored_per_round.
    let unbounded = (ROUNDS as u64 - 1) * stored_per_round_kib;
    assert!(rss_growth < unbounded * 3 / 4, "Herald RSS {rss:?} KiB");
    assert!(
        redis_growth < unbounded * 3 / 4,
        "Redis used {redis_used:?} KiB"
    );
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
        let (describe, limit) = (
            json!({"description": description}),
            json!({"maxInFlight": in_flight}),
        );
        let (a, b, c) = tokio::join!(
            s.patch(&path, ACME_KEY, &describe),
            s.patch(&path, ACME_KEY, &limit),
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
