//! The order pipeline end to end: the real `herald` binary over HTTP, on the memory engine and
//! on a real redis-server started by the test, including crashes and Redis restarts.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

on_both_engines!(
    order_is_confirmed_then_moves_on_with_versions_1_2_3,
    idempotency_key_replays_and_refuses_another_body,
    a_transition_replays_its_202_after_it_has_run,
    illegal_transition_is_refused_with_409_and_nothing_queued,
    bad_input_is_refused_with_field_errors_and_nothing_queued,
    credentials_are_required_and_partners_reach_only_their_orders,
    invalid_orders_are_rejected_by_the_worker,
    an_events_cursor_followed_by_removed_entries_is_answered_410,
);

async fn order_is_confirmed_then_moves_on_with_versions_1_2_3(kind: Kind) {
    let s = Stack::start(kind);
    let r = s
        .post("/v1/orders", ADMIN_KEY, &order_body("ord-1", "cust-1"))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["location"], "/v1/orders/ord-1/status");
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["orderId"], "ord-1");
    assert_eq!(body["status"], "accepted");
    assert!(body["messageId"].as_str().is_some_and(|m| !m.is_empty()));
    // The status record exists as soon as the 202 is out.
    let first = s.status("ord-1").await.expect("status right after the 202");
    assert!(first["status"] == "accepted" || first["status"] == "confirmed");
    s.wait_for_status("ord-1", "confirmed", 2).await;

    let r = s
        .post(
            "/v1/orders/ord-1/transitions",
            ADMIN_KEY,
            &json!({"status": "preparing", "reason": "picked"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["requestedStatus"], "preparing");
    s.wait_for_status("ord-1", "preparing", 3).await;

    let order: Value = s
        .get("/v1/orders/ord-1", ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    let history: Vec<(String, u64)> = order["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["status"].as_str().unwrap().to_string(),
                h["version"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        history,
        vec![
            ("accepted".into(), 1),
            ("confirmed".into(), 2),
            ("preparing".into(), 3)
        ]
    );
    assert_eq!(order["items"][0]["sku"], "sku-1");
    let events: Vec<(String, u64)> = s
        .events()
        .await
        .iter()
        .filter(|e| e["orderId"] == "ord-1")
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["version"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        events,
        vec![
            ("order.accepted".into(), 1),
            ("order.confirmed".into(), 2),
            ("order.preparing".into(), 3)
        ]
    );
}

async fn idempotency_key_replays_and_refuses_another_body(kind: Kind) {
    let s = Stack::start(kind);
    let send = |body: Value| {
        s.http
            .post(s.herald.url("/v1/orders"))
            .header("x-api-key", ADMIN_KEY)
            .header("idempotency-key", "key-1")
            .json(&body)
            .send()
    };
    let first = send(order_body("idem-1", "c")).await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    let replay = send(order_body("idem-1", "c")).await.unwrap();
    assert_eq!(replay.status(), StatusCode::ACCEPTED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(
        replay.json::<Value>().await.unwrap(),
        first,
        "same body, same messageId"
    );
    let other = send(order_body("idem-2", "c")).await.unwrap();
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.headers()["content-type"], "application/problem+json");
    assert!(
        s.status("idem-2").await.is_none(),
        "the other body was not accepted"
    );
    // One order, one processOrder command: exactly two events once confirmed.
    s.wait_for_status("idem-1", "confirmed", 2).await;
    assert_eq!(s.events().await.len(), 2);
}

/// A client whose 202 was lost (its node died) retries with the same key after the worker has
/// already run the transition: the retry replays the 202, it is not refused as a transition
/// the table no longer allows ("nothing was queued" would be false).
async fn a_transition_replays_its_202_after_it_has_run(kind: Kind) {
    let s = Stack::start(kind);
    s.post("/v1/orders", ADMIN_KEY, &order_body("tr-1", "c"))
        .await;
    s.wait_for_status("tr-1", "confirmed", 2).await;
    let send = || {
        s.http
            .post(s.herald.url("/v1/orders/tr-1/transitions"))
            .header("x-api-key", ADMIN_KEY)
            .header("idempotency-key", "cancel-tr-1")
            .json(&json!({"status": "cancelled"}))
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    s.wait_for_status("tr-1", "cancelled", 3).await;
    let replay = send().await.unwrap();
    assert_eq!(
        replay.status(),
        StatusCode::ACCEPTED,
        "{:?}",
        replay.text().await
    );
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.json::<Value>().await.unwrap(), first);
    // Without the key, the same request is refused: the table no longer allows it.
    let r = s
        .post(
            "/v1/orders/tr-1/transitions",
            ADMIN_KEY,
            &json!({"status": "cancelled"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(s.events().await.len(), 3, "one cancel, once");
}

#[tokio::test]
async fn idempotency_key_in_flight_is_a_409() {
    let s = Stack::start(Kind::Redis);
    // A first request holding the key, as seen from Redis while it is being processed.
    let mut conn = s.redis.as_ref().unwrap().conn();
    let _: () = ::redis::cmd("SET")
        .arg("herald:{p0}:idem:admin:busy-key")
        .arg(r#"{"state":"inflight","fingerprint":"f"}"#)
        .arg("PX")
        .arg(60_000)
        .query(&mut conn)
        .unwrap();
    let r = s
        .http
        .post(s.herald.url("/v1/orders"))
        .header("x-api-key", ADMIN_KEY)
        .header("idempotency-key", "busy-key")
        .json(&order_body("busy-1", "c"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(
        r.headers()["retry-after"],
        "1",
        "a client knows when to retry"
    );
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "/problems/idempotency-in-flight");
    assert!(s.status("busy-1").await.is_none());
}

async fn illegal_transition_is_refused_with_409_and_nothing_queued(kind: Kind) {
    let s = Stack::start(kind);
    s.post("/v1/orders", ADMIN_KEY, &order_body("ill-1", "c"))
        .await;
    s.wait_for_status("ill-1", "confirmed", 2).await;
    let r = s
        .post(
            "/v1/orders/ill-1/transitions",
            ADMIN_KEY,
            &json!({"status": "delivered"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "/problems/illegal-transition");
    assert!(p["detail"].as_str().unwrap().contains("preparing"), "{p}");
    let q = s.queue().await;
    assert_eq!(q["commands"]["visible"], 0);
    assert_eq!(q["commands"]["inFlight"], 0);
    let st = s.status("ill-1").await.unwrap();
    assert_eq!(
        (st["status"].as_str(), st["version"].as_u64()),
        (Some("confirmed"), Some(2))
    );
    let r = s
        .post(
            "/v1/orders/missing/transitions",
            ADMIN_KEY,
            &json!({"status": "cancelled"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

async fn bad_input_is_refused_with_field_errors_and_nothing_queued(kind: Kind) {
    let s = Stack::start(kind);
    let r = s
        .post(
            "/v1/orders",
            ADMIN_KEY,
            &json!({"orderId": "bad-1", "items": [{"sku": "a", "quantity": "two", "unitPrice": 1}], "currency": "dollars"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: Value = r.json().await.unwrap();
    let pointers: Vec<&str> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert!(pointers.contains(&"#/customerId"), "{p}");
    assert!(pointers.contains(&"#/items/0/quantity"), "{p}");
    assert!(pointers.contains(&"#/currency"), "{p}");

    let raw = s
        .http
        .post(s.herald.url("/v1/orders"))
        .header("x-api-key", ADMIN_KEY)
        .header("content-type", "application/json")
        .body("{\"customerId\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    let wrong_type = s
        .http
        .post(s.herald.url("/v1/orders"))
        .header("x-api-key", ADMIN_KEY)
        .header("content-type", "text/plain")
        .body(order_body("bad-2", "c").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let huge = json!({"customerId": "c", "items": [], "currency": "USD", "metadata": {"x": "y".repeat(100_000)}});
    let r = s.post("/v1/orders", ADMIN_KEY, &huge).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    assert!(s.status("bad-1").await.is_none());
    assert!(s.status("bad-2").await.is_none());
    let q = s.queue().await;
    assert_eq!(
        (
            q["commands"]["visible"].as_u64(),
            q["commands"]["inFlight"].as_u64()
        ),
        (Some(0), Some(0))
    );
    assert!(s.events().await.is_empty());
}

async fn credentials_are_required_and_partners_reach_only_their_orders(kind: Kind) {
    let s = Stack::start(kind);
    let anonymous = s
        .http
        .post(s.herald.url("/v1/orders"))
        .json(&order_body("a-1", "c"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        anonymous.headers()["content-type"],
        "application/problem+json"
    );
    let wrong = s
        .post(
            "/v1/orders",
            "not-a-key-at-all-000000",
            &order_body("a-1", "c"),
        )
        .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    // acme's order: partnerId comes from its key.
    let r = s
        .post("/v1/orders", ACME_KEY, &order_body("acme-1", "c"))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let mut spoof = order_body("acme-2", "c");
    spoof["partnerId"] = json!("globex");
    assert_eq!(
        s.post("/v1/orders", ACME_KEY, &spoof).await.status(),
        StatusCode::FORBIDDEN
    );

    assert_eq!(
        s.get("/v1/orders/acme-1/status", ACME_KEY).await.status(),
        StatusCode::OK
    );
    // Another partner's order answers as a missing one (no existence oracle).
    assert_eq!(
        s.get("/v1/orders/acme-1/status", GLOBEX_KEY).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.get("/v1/orders/acme-1", GLOBEX_KEY).await.status(),
        StatusCode::NOT_FOUND
    );
    s.wait_for_status("acme-1", "confirmed", 2).await;
    let r = s
        .post(
            "/v1/orders/acme-1/transitions",
            GLOBEX_KEY,
            &json!({"status": "cancelled"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        s.get("/v1/admin/queues", ACME_KEY).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.get("/v1/orders/acme-1/status", "").await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Partners' event feed holds only their own orders.
    s.post("/v1/orders", ADMIN_KEY, &order_body("house-1", "c"))
        .await;
    let feed: Value = s
        .get("/v1/events?after=0", GLOBEX_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(feed["events"].as_array().unwrap().len(), 0);
    let feed: Value = s
        .get("/v1/events?after=0", ACME_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        feed["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["orderId"] == "acme-1")
    );
    assert!(
        !s.herald.logs().contains(ACME_KEY),
        "keys never reach the log"
    );
}

#[tokio::test]
async fn customer_token_reads_its_own_orders_and_nothing_else() {
    let s = Stack::start_with(Kind::Memory, &jwt_toml());
    for (order, customer) in [("mine-1", "cust-a"), ("theirs-1", "cust-b")] {
        let r = s
            .post("/v1/orders", ADMIN_KEY, &order_body(order, customer))
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    let token = hs256_token(&customer_claims("cust-a", 600));

    let own = s.get("/v1/orders/mine-1/status", &token).await;
    assert_eq!(own.status(), StatusCode::OK);
    assert_eq!(own.json::<Value>().await.unwrap()["orderId"], "mine-1");
    assert_eq!(
        s.get("/v1/orders/mine-1", &token).await.status(),
        StatusCode::OK
    );

    // Another customer's order answers exactly as a partner's foreign order does: as missing.
    for path in ["/v1/orders/theirs-1/status", "/v1/orders/theirs-1"] {
        let customer = s.get(path, &token).await;
        let partner = s.get(path, GLOBEX_KEY).await;
        assert_eq!(customer.status(), StatusCode::NOT_FOUND);
        assert_eq!(customer.status(), partner.status());
        assert_eq!(
            customer.headers()["content-type"],
            partner.headers()["content-type"]
        );
        assert_eq!(
            customer.json::<Value>().await.unwrap(),
            partner.json::<Value>().await.unwrap()
        );
    }

    // The event feed holds only the customer's own orders.
    let feed: Value = s
        .get("/v1/events?after=0", &token)
        .await
        .json()
        .await
        .unwrap();
    let events = feed["events"].as_array().unwrap();
    assert!(!events.is_empty());
    assert!(events.iter().all(|e| e["customerId"] == "cust-a"), "{feed}");
    assert!(
        !s.herald.logs().contains(&token),
        "tokens never reach the log"
    );
}

#[tokio::test]
async fn customer_token_may_not_create_transition_publish_or_administer() {
    let s = Stack::start_with(Kind::Memory, &jwt_toml());
    s.post("/v1/orders", ADMIN_KEY, &order_body("mine-2", "cust-a"))
        .await;
    let token = hs256_token(&customer_claims("cust-a", 600));
    let refusals = [
        s.post("/v1/orders", &token, &order_body("new-1", "cust-a"))
            .await,
        s.post(
            "/v1/orders/mine-2/transitions",
            &token,
            &json!({"status": "cancelled"}),
        )
        .await,
        s.post("/v1/events", &token, &json!({})).await,
        s.get("/v1/admin/queues", &token).await,
    ];
    for r in refusals {
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{}", r.url());
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    assert!(s.status("new-1").await.is_none(), "nothing was created");
}

#[tokio::test]
async fn expired_or_forged_customer_token_is_a_401_with_a_safe_detail() {
    let s = Stack::start_with(Kind::Memory, &jwt_toml());
    s.post("/v1/orders", ADMIN_KEY, &order_body("mine-3", "cust-a"))
        .await;
    let expired = hs256_token(&customer_claims("cust-a", -3600));
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &customer_claims("cust-a", 600),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-configured-secret-0000000000"),
    )
    .unwrap();
    for (token, detail) in [
        (&expired, "token expired"),
        (&forged, "invalid token: bad signature"),
    ] {
        let r = s.get("/v1/orders/mine-3/status", token).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"herald\"");
        let body = r.text().await.unwrap();
        let problem: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(problem["detail"], detail);
        assert!(!body.contains(token.as_str()) && !body.contains(JWT_SECRET));
    }
}

#[tokio::test]
async fn rs256_customer_token_is_verified_with_the_configured_public_key() {
    let public = fixture("jwt_rs256_public.pem");
    let s = Stack::start_with(
        Kind::Memory,
        &format!(
            "[auth.jwt]\nrs256_public_key_pem = \"\"\"\n{public}\"\"\"\naudience = \"herald\"\n"
        ),
    );
    s.post("/v1/orders", ADMIN_KEY, &order_body("rs-1", "cust-r"))
        .await;
    let claims = json!({
        "sub": "cust-r",
        "exp": jsonwebtoken::get_current_timestamp() + 600,
        "aud": "herald",
    });
    let token = rs256_token(&claims);
    assert_eq!(
        s.get("/v1/orders/rs-1/status", &token).await.status(),
        StatusCode::OK
    );
    // With only the RSA key configured, an HS256 token (even one keyed with the public PEM)
    // is refused.
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(public.as_bytes()),
    )
    .unwrap();
    let r = s.get("/v1/orders/rs-1/status", &confused).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[test]
fn unparsable_rs256_public_key_stops_startup() {
    let mut config = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(
        &mut config,
        format!(
            "[auth]\nadmin_keys = [\"{ADMIN_KEY}\"]\n[auth.jwt]\nrs256_public_key_pem = \"-----BEGIN PUBLIC KEY-----\\nbm90IGEga2V5\\n-----END PUBLIC KEY-----\\n\"\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rs256_public_key_pem"), "{stderr}");
}

async fn invalid_orders_are_rejected_by_the_worker(kind: Kind) {
    let s = Stack::start(kind);
    let mut body = order_body("rej-1", "c");
    body["items"][0]["quantity"] = json!(0);
    assert_eq!(
        s.post("/v1/orders", ADMIN_KEY, &body).await.status(),
        StatusCode::ACCEPTED
    );
    let mut body = order_body("rej-2", "c");
    body["currency"] = json!("XXX");
    assert_eq!(
        s.post("/v1/orders", ADMIN_KEY, &body).await.status(),
        StatusCode::ACCEPTED
    );
    s.wait_for_status("rej-1", "rejected", 2).await;
    s.wait_for_status("rej-2", "rejected", 2).await;
    let rejected: Vec<Value> = s
        .events()
        .await
        .into_iter()
        .filter(|e| e["type"] == "order.rejected")
        .collect();
    assert_eq!(rejected.len(), 2);
    let reason = |id: &str| {
        rejected
            .iter()
            .find(|e| e["orderId"] == id)
            .and_then(|e| e["data"]["reason"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    assert!(reason("rej-1").contains("quantity"), "{rejected:?}");
    assert!(reason("rej-2").contains("currency"), "{rejected:?}");
}

#[tokio::test]
async fn serve_without_keys_generates_an_admin_key_and_prints_it() {
    let herald = Herald::start_bare(&[]);
    let logs = herald.logs();
    let key = logs
        .lines()
        .find_map(|l| l.split("admin key: ").nth(1))
        .expect("the generated key is printed")
        .trim()
        .to_string();
    let http = client();
    let r = http
        .get(herald.url("/v1/admin/queues"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "nothing is open by default"
    );
    let r = http
        .get(herald.url("/v1/admin/queues"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(logs.contains("engine: memory"), "{logs}");
    eventually(
        Duration::from_secs(5),
        "the URLs it serves are printed",
        || async {
            herald
                .logs()
                .contains("POST http://127.0.0.1")
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn worker_killed_mid_batch_loses_no_command_and_duplicates_no_event() {
    let redis = RedisServer::start(true);
    let extra = "[queue]\nvisibility_timeout = \"2s\"\n";
    let start = |roles: &str| {
        Herald::start(HeraldOptions {
            redis_url: Some(redis.url()),
            roles: roles.into(),
            extra_toml: extra.into(),
            ..HeraldOptions::default()
        })
    };
    let api = start("api");
    let http = client();
    const ORDERS: usize = 300;
    for i in 0..ORDERS {
        let r = http
            .post(api.url("/v1/orders"))
            .header("x-api-key", ADMIN_KEY)
            .json(&order_body(&format!("k-{i}"), "c"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    // Freeze a worker in the middle of its batches, check it holds unacknowledged work, kill it.
    let mut conn = redis.conn();
    let mut victim = start("worker");
    let mut pending = 0u64;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        victim.signal("STOP");
        let summary: ::redis::Value = ::redis::cmd("XPENDING")
            .arg("herald:{p0}:commands")
            .arg("workers")
            .query(&mut conn)
            .unwrap();
        if let ::redis::Value::Array(parts) = summary
            && let Some(::redis::Value::Int(n)) = parts.first()
        {
            pending = *n as u64;
        }
        if pending > 0 {
            break;
        }
        victim.signal("CONT");
    }
    assert!(
        pending > 0,
        "the worker was caught holding unacknowledged commands"
    );
    victim.kill9();

    let _rescuer = start("worker");
    let s = Stack {
        herald: api,
        redis: None,
        http,
    };
    for i in 0..ORDERS {
        s.wait_for_status(&format!("k-{i}"), "confirmed", 2).await;
    }
    let events = s.events_all().await;
    let confirmed = events
        .iter()
        .filter(|e| e["type"] == "order.confirmed")
        .count();
    assert_eq!(confirmed, ORDERS, "exactly one confirmed event per order");
    assert_eq!(events.len(), 2 * ORDERS);
    let q = s.queue().await;
    assert_eq!(q["commands"]["inFlight"], 0);
    assert_eq!(q["commands"]["deadLetters"], 0);
    drop(redis);
}

impl Stack {
    /// Every event in the log, following the cursor page by page.
    async fn events_all(&self) -> Vec<Value> {
        let mut all = Vec::new();
        let mut cursor = "0".to_string();
        loop {
            let body: Value = self
                .get(&format!("/v1/events?after={cursor}&limit=1000"), ADMIN_KEY)
                .await
                .json()
                .await
                .unwrap();
            let page = body["events"].as_array().cloned().unwrap_or_default();
            if page.is_empty() {
                return all;
            }
            cursor = body["next"].as_str().unwrap().to_string();
            all.extend(page);
        }
    }
}

#[tokio::test]
async fn redis_restart_with_aof_pauses_intake_then_resumes_without_loss() {
    let mut s = Stack::start_with(Kind::Redis, "[engine]\noperation_timeout = \"500ms\"\n");
    for i in 0..20 {
        s.post("/v1/orders", ADMIN_KEY, &order_body(&format!("r-{i}"), "c"))
            .await;
    }
    s.redis.as_mut().unwrap().stop();
    let ready = s.http.get(s.herald.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let r = s
        .post("/v1/orders", ADMIN_KEY, &order_body("during", "c"))
        .await;
    assert_eq!(
        r.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "never a 202 while nothing can be queued"
    );
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    s.redis.as_mut().unwrap().start_again();
    eventually(Duration::from_secs(20), "readyz after restart", || async {
        let r = s.http.get(s.herald.url("/readyz")).send().await.ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
    for i in 20..40 {
        let r = s
            .post("/v1/orders", ADMIN_KEY, &order_body(&format!("r-{i}"), "c"))
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    for i in 0..40 {
        s.wait_for_status(&format!("r-{i}"), "confirmed", 2).await;
    }
    assert!(s.status("during").await.is_none());
    let events = s.events_all().await;
    assert_eq!(
        events.len(),
        80,
        "accepted + confirmed for each order, once"
    );
}

#[tokio::test]
async fn an_idempotency_claim_cut_off_by_a_redis_pause_does_not_hold_the_key() {
    let s = Stack::start_with(Kind::Redis, "[engine]\noperation_timeout = \"300ms\"\n");
    let redis = s.redis.as_ref().unwrap();
    let send = || {
        s.http
            .post(s.herald.url("/v1/orders"))
            .header("x-api-key", ADMIN_KEY)
            .header("idempotency-key", "paused-key")
            .json(&order_body("paused-1", "c"))
            .send()
    };
    // The claim reaches the paused server but its reply never comes: 503.
    redis.pause();
    let r = send().await.unwrap();
    redis.resume();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Redis now runs that claim; it must not hold the key against the client's retry (a 409
    // "in progress" for the claim's whole TTL, with nothing in progress).
    let r = send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
    s.wait_for_status("paused-1", "confirmed", 2).await;
}

#[tokio::test]
async fn redis_losing_its_data_is_survived_by_recreating_the_consumer_group() {
    let mut s = Stack::start_with(Kind::Redis, "[engine]\noperation_timeout = \"500ms\"\n");
    s.post("/v1/orders", ADMIN_KEY, &order_body("before", "c"))
        .await;
    s.wait_for_status("before", "confirmed", 2).await;
    {
        let mut conn = s.redis.as_ref().unwrap().conn();
        let _: () = ::redis::cmd("FLUSHALL").query(&mut conn).unwrap();
    }
    s.redis.as_mut().unwrap().restart();
    eventually(
        Duration::from_secs(20),
        "readyz after data loss",
        || async {
            let r = s.http.get(s.herald.url("/readyz")).send().await.ok()?;
            (r.status() == StatusCode::OK).then_some(())
        },
    )
    .await;
    let r = s
        .post("/v1/orders", ADMIN_KEY, &order_body("after", "c"))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    s.wait_for_status("after", "confirmed", 2).await;
}

#[tokio::test]
async fn external_xadd_entries_are_read_and_malformed_ones_set_aside() {
    let s = Stack::start(Kind::Redis);
    // Let the tail find the end of the log first.
    eventually(Duration::from_secs(10), "event tail started", || async {
        s.herald.logs().contains("event tail started").then_some(())
    })
    .await;
    let mut conn = s.redis.as_ref().unwrap().conn();
    let valid = json!({
        "type": "order.shipped", "orderId": "ext-1", "customerId": "cust-x", "partnerId": "acme",
        "status": "shipped", "previousStatus": "preparing", "version": 4,
        "occurredAt": "2026-11-26T10:00:00.000Z", "data": {"carrier": "DHL", "n": [1, 2]}
    });
    let bad_id: String = ::redis::cmd("XADD")
        .arg("herald:{p0}:events")
        .arg("*")
        .arg("event")
        .arg("{\"type\": \"order.shipped\", truncated")
        .query(&mut conn)
        .unwrap();
    let no_field: String = ::redis::cmd("XADD")
        .arg("herald:{p0}:events")
        .arg("*")
        .arg("payload")
        .arg("x")
        .query(&mut conn)
        .unwrap();
    let good_id: String = ::redis::cmd("XADD")
        .arg("herald:{p0}:events")
        .arg("*")
        .arg("event")
        .arg(valid.to_string())
        .query(&mut conn)
        .unwrap();
    eventually(Duration::from_secs(10), "tail read the entries", || async {
        (s.metric("herald_events_read_total").await >= 1
            && s.metric("herald_events_malformed_total").await >= 2)
            .then_some(())
    })
    .await;
    let events = s.events().await;
    let ext = events
        .iter()
        .find(|e| e["orderId"] == "ext-1")
        .expect("external event readable");
    assert_eq!(ext["eventId"], good_id.as_str());
    assert_eq!(ext["data"], valid["data"], "data passed through untouched");
    let aside: Value = s
        .get("/v1/admin/events/malformed", ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = aside["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["entryId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![bad_id.as_str(), no_field.as_str()]);
    // The readers carry on: Herald's own events after the bad entries still arrive.
    s.post("/v1/orders", ADMIN_KEY, &order_body("after-bad", "c"))
        .await;
    s.wait_for_status("after-bad", "confirmed", 2).await;
    eventually(
        Duration::from_secs(10),
        "tail read Herald's events",
        || async { (s.metric("herald_events_read_total").await >= 3).then_some(()) },
    )
    .await;
}

async fn an_events_cursor_followed_by_removed_entries_is_answered_410(kind: Kind) {
    let s = Stack::start_with(kind, "[engine]\nevent_retention = 10\n");
    let event = |v: u64| {
        json!({"type": "order.accepted", "orderId": "r-1", "customerId": "c-1",
               "status": "accepted", "version": v, "occurredAt": "2026-01-01T00:00:00Z"})
    };
    let first = s.publish(event(1)).await;
    let second = s.publish(event(2)).await;
    // Nothing removed yet: the cursor reads on.
    let r = s.get(&format!("/v1/events?after={first}"), ADMIN_KEY).await;
    assert_eq!(r.status(), StatusCode::OK);
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["events"][0]["eventId"], second.as_str(), "{page}");
    for v in 3..300 {
        s.publish(event(v)).await;
    }
    // Now what followed `first` is gone: said, not skipped.
    let r = s.get(&format!("/v1/events?after={first}"), ADMIN_KEY).await;
    assert_eq!(r.status(), StatusCode::GONE);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/cursor-expired", "{problem}");
    // `after=0` means the oldest retained: no gap to report.
    let r = s.get("/v1/events?after=0", ADMIN_KEY).await;
    assert_eq!(r.status(), StatusCode::OK);
}
