//! The security suite (issue 6): tenant isolation over every route the server serves and over
//! subscriptions, JWT attacks on HTTP and on the WebSocket `connection_init`, secrets kept out
//! of logs and error bodies (Herald runs with `RUST_LOG=trace`), and the per-credential rate
//! limit (the constant-time key lookup is unit-tested in `src/auth/keys.rs`). Each test ends
//! by printing one line `SUITE-FIGURES {"suite":"security","test":..,"cases":..,"leaks":..}`
//! for `scripts/reliability.sh`.

mod common;

use common::ws::*;
use common::*;
use herald::server::{Roles, route_table};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

on_both_engines!(
    every_route_answers_each_role_as_designed_and_leaks_nothing,
    subscriptions_are_confined_to_the_caller,
);

fn figures(test: &str, cases: usize, leaks: usize) {
    println!(
        "SUITE-FIGURES {}",
        json!({"suite": "security", "test": test, "cases": cases, "leaks": leaks})
    );
}

/// Loopback sinks allowed; one attempt per delivery (the sinks here refuse connections, so
/// every delivery is signed, attempted once and failed: there is something to retry).
fn suite_toml() -> String {
    format!(
        "{}[webhooks]\nallow_networks = [\"127.0.0.0/8\"]\nretry_schedule = [\"0s\"]\nrequest_timeout = \"1s\"\nconnect_timeout = \"500ms\"\nlease = \"2s\"\n",
        jwt_toml()
    )
}

fn start(kind: Kind) -> Stack {
    Stack::start_with_env(kind, &suite_toml(), &[("RUST_LOG", "trace")])
}

/// A URL on loopback where nothing listens.
fn dead_url(path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", free_port())
}

// ---------------------------------------------------------------------------------------------
// The route table: every (method, path) the server serves, with the answer each role gets when
// it reaches for partner globex's resources (order `gx-ord-7f3` of customer `gx-cust-7f3`, endpoint
// EB, delivery DB). Foreign orders and foreign webhook endpoints answer 404 like missing ones
// (README, "HTTP API"; no existence oracle), customer tokens 403 on webhooks and writes
// (whatever the order), non-admins 403 on admin routes, no credential 401. The customer is
// acme's `cust-a` (a token bound to acme by its `partner_id` claim).

#[derive(Clone, Copy)]
enum Role {
    Anonymous,
    Customer,
    Partner,
    Admin,
}

const ROLES: [Role; 4] = [Role::Anonymous, Role::Customer, Role::Partner, Role::Admin];

struct Route {
    method: &'static str,
    path: &'static str,
    /// Anonymous, customer `cust-a` of acme, partner acme, admin.
    expect: [u16; 4],
}

const fn route(method: &'static str, path: &'static str, expect: [u16; 4]) -> Route {
    Route {
        method,
        path,
        expect,
    }
}

/// In the order the suite runs them: DELETE of globex's endpoint last.
const ROUTES: &[Route] = &[
    route("GET", "/healthz", [200, 200, 200, 200]),
    route("GET", "/readyz", [200, 200, 200, 200]),
    route("GET", "/openapi.json", [200, 200, 200, 200]),
    route("GET", "/metrics", [401, 403, 403, 200]),
    route("GET", "/", [200, 200, 200, 200]),
    route("GET", "/graphql", [426, 426, 426, 426]),
    route("GET", "/graphql/realtime", [426, 426, 426, 426]),
    route("POST", "/graphql", [401, 200, 200, 200]),
    route("POST", "/graphql/realtime", [401, 200, 200, 200]),
    route("POST", "/v1/orders", [401, 403, 403, 202]),
    route("GET", "/v1/orders/{order_id}", [401, 404, 404, 200]),
    route("GET", "/v1/orders/{order_id}/status", [401, 404, 404, 200]),
    route(
        "POST",
        "/v1/orders/{order_id}/transitions",
        [401, 403, 404, 202],
    ),
    route("GET", "/v1/events", [401, 200, 200, 200]),
    // Server-Sent Events: a stream of the caller's own events (only its first chunk is read).
    route("GET", "/v1/events/stream", [401, 200, 200, 200]),
    route("GET", "/v1/orders/{order_id}/events", [401, 404, 404, 200]),
    route("POST", "/v1/stream-tokens", [401, 201, 201, 201]),
    route("POST", "/v1/events", [401, 403, 403, 202]),
    route("POST", "/v1/webhooks", [401, 403, 403, 201]),
    route("GET", "/v1/webhooks", [401, 403, 200, 200]),
    route("GET", "/v1/webhooks/{webhook_id}", [401, 403, 404, 200]),
    route("PATCH", "/v1/webhooks/{webhook_id}", [401, 403, 404, 200]),
    route(
        "POST",
        "/v1/webhooks/{webhook_id}/rotate-secret",
        [401, 403, 404, 200],
    ),
    route(
        "GET",
        "/v1/webhooks/{webhook_id}/deliveries",
        [401, 403, 404, 200],
    ),
    route(
        "GET",
        "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}",
        [401, 403, 404, 200],
    ),
    route(
        "POST",
        "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry",
        [401, 403, 404, 202],
    ),
    route(
        "POST",
        "/v1/webhooks/{webhook_id}/recover",
        [401, 403, 404, 202],
    ),
    route("GET", "/v1/admin/queues", [401, 403, 403, 200]),
    route("GET", "/v1/admin/dlq", [401, 403, 403, 200]),
    route("POST", "/v1/admin/dlq/redrive", [401, 403, 403, 200]),
    route("GET", "/v1/admin/events/malformed", [401, 403, 403, 200]),
    // No callback step is waiting: a token that does not verify is no task, for anyone.
    route("POST", "/v1/tasks/{token}/success", [401, 403, 404, 404]),
    route("POST", "/v1/tasks/{token}/failure", [401, 403, 404, 404]),
    route("POST", "/v1/tasks/{token}/heartbeat", [401, 403, 404, 404]),
    route("DELETE", "/v1/webhooks/{webhook_id}", [401, 403, 404, 204]),
];

#[test]
fn the_route_table_covers_every_route_the_server_serves() {
    let served: BTreeSet<(String, &str)> = route_table(Roles::ALL)
        .into_iter()
        .map(|(m, p)| (m.to_string(), p))
        .collect();
    let tested: BTreeSet<(String, &str)> = ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path))
        .collect();
    assert_eq!(tested.len(), ROUTES.len(), "a route is listed twice");
    let untested: Vec<_> = served.difference(&tested).collect();
    let unknown: Vec<_> = tested.difference(&served).collect();
    assert!(
        untested.is_empty(),
        "routes served without a security case (add them to ROUTES): {untested:?}"
    );
    assert!(
        unknown.is_empty(),
        "ROUTES lists unserved routes: {unknown:?}"
    );
    figures(
        "the_route_table_covers_every_route_the_server_serves",
        served.len(),
        0,
    );
}

/// Everything a test sent and got back, for the leak checks at its end.
#[derive(Default)]
struct Transcript {
    /// Bodies of every answer with status >= 400.
    error_bodies: Vec<String>,
    /// Every secret that must never show: keys, tokens, signing secrets.
    secrets: Vec<String>,
}

impl Transcript {
    fn secret(&mut self, secret: &str) {
        self.secrets.push(secret.to_string());
        // A signing secret's key bytes, in case something prints them without the prefix.
        if let Some(raw) = secret.strip_prefix("whsec_") {
            self.secrets.push(raw.to_string());
        }
    }

    fn secrets_in(&mut self, body: &Value) {
        match body {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        // Webhook secrets; stream tokens (POST /v1/stream-tokens).
                        ("secret" | "token", Value::String(s)) => self.secret(s),
                        _ => self.secrets_in(v),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| self.secrets_in(v)),
            _ => {}
        }
    }

    /// Leaks of any secret into Herald's output or an error body, each named (never printed).
    fn leaks(&self, logs: &str) -> Vec<String> {
        let mut leaks = Vec::new();
        for (i, secret) in self.secrets.iter().enumerate() {
            if logs.contains(secret.as_str()) {
                leaks.push(format!("secret #{i} in Herald's output"));
            }
            for (j, body) in self.error_bodies.iter().enumerate() {
                if body.contains(secret.as_str()) {
                    leaks.push(format!("secret #{i} in error body #{j}"));
                }
            }
        }
        leaks
    }
}

struct Fixture {
    customer_a: String,
    endpoint_a: String,
    endpoint_b: String,
    delivery_b: String,
}

fn credential(role: Role, f: &Fixture) -> Option<String> {
    match role {
        Role::Anonymous => None,
        Role::Customer => Some(f.customer_a.clone()),
        Role::Partner => Some(ACME_KEY.to_string()),
        Role::Admin => Some(ADMIN_KEY.to_string()),
    }
}

async fn call(
    s: &Stack,
    t: &mut Transcript,
    method: &str,
    path: &str,
    credential: Option<&str>,
    body: Option<Value>,
) -> (u16, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = s.http.request(method, s.herald.url(path));
    if let Some(c) = credential {
        request = request.header("authorization", format!("Bearer {c}"));
    }
    if let Some(b) = body {
        request = request.json(&b);
    }
    let r = request.send().await.expect("request");
    let status = r.status().as_u16();
    let streaming = r
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "text/event-stream");
    let text = if streaming {
        // A stream never ends by itself: its first chunk (`retry:`, `: live`) is the answer.
        let mut r = r;
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), r.chunk())
            .await
            .expect("a first chunk");
        String::from_utf8_lossy(&chunk.ok().flatten().unwrap_or_default()).into_owned()
    } else {
        r.text().await.unwrap_or_default()
    };
    if status >= 400 {
        t.error_bodies.push(text.clone());
    }
    if let Ok(v) = serde_json::from_str::<Value>(&text) {
        t.secrets_in(&v);
    }
    (status, text)
}

fn concrete(path: &str, f: &Fixture) -> String {
    path.replace("{order_id}", "gx-ord-7f3")
        .replace("{webhook_id}", &f.endpoint_b)
        .replace("{delivery_id}", &f.delivery_b)
        .replace(
            "{token}",
            "htt1.Z3gtb3JkLTdmMw.accepted.1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        )
}

fn body_for(method: &str, path: &str, role: usize) -> Option<Value> {
    let order_query = json!({
        "query": "query($id: ID!) { order(orderId: $id) { orderId customerId partnerId } }",
        "variables": {"id": "gx-ord-7f3"}
    });
    match (method, path) {
        ("POST", "/v1/orders") => {
            let mut b = order_body(&format!("route-new-{role}"), "gx-cust-7f3");
            b["partnerId"] = json!("globex");
            Some(b)
        }
        ("POST", "/v1/orders/{order_id}/transitions") => Some(json!({"status": "cancelled"})),
        ("POST", "/v1/events") => Some(external_event("ext-b", "gx-cust-7f3", Some("globex"), 1)),
        ("POST", "/v1/webhooks") => {
            Some(json!({"url": dead_url("/route-new"), "partnerId": "globex"}))
        }
        ("PATCH", "/v1/webhooks/{webhook_id}") => Some(json!({"description": "patched"})),
        ("POST", "/v1/webhooks/{webhook_id}/recover") => {
            Some(json!({"since": "2020-01-01T00:00:00Z"}))
        }
        ("POST", "/graphql" | "/graphql/realtime") => Some(order_query),
        ("POST", "/v1/tasks/{token}/success" | "/v1/tasks/{token}/failure") => Some(json!({})),
        ("POST", "/v1/tasks/{token}/heartbeat") => None,
        _ => None,
    }
}

async fn create_endpoint(s: &Stack, t: &mut Transcript, key: &str, body: Value) -> String {
    let (status, text) = call(s, t, "POST", "/v1/webhooks", Some(key), Some(body)).await;
    assert_eq!(status, 201, "{text}");
    let v: Value = serde_json::from_str(&text).expect("endpoint");
    v["id"].as_str().expect("endpoint id").to_string()
}

async fn first_delivery(s: &Stack, endpoint: &str) -> String {
    eventually(
        Duration::from_secs(20),
        &format!("a failed delivery on {endpoint}"),
        || async {
            let v: Value = s
                .get(&format!("/v1/webhooks/{endpoint}/deliveries"), ADMIN_KEY)
                .await
                .json()
                .await
                .ok()?;
            v["deliveries"]
                .as_array()?
                .iter()
                .find(|d| d["state"] == "failed")
                .and_then(|d| d["id"].as_str())
                .map(String::from)
        },
    )
    .await
}

async fn every_route_answers_each_role_as_designed_and_leaks_nothing(kind: Kind) {
    let s = start(kind);
    let mut t = Transcript::default();
    for key in [ADMIN_KEY, ACME_KEY, GLOBEX_KEY, JWT_SECRET] {
        t.secret(key);
    }
    let customer_a = partner_customer_token("cust-a", "acme", 600);
    t.secret(&customer_a);

    // Each partner has an order, an endpoint, and failed (signed, attempted) deliveries.
    let endpoint_a = create_endpoint(&s, &mut t, ACME_KEY, json!({"url": dead_url("/a")})).await;
    let endpoint_b = create_endpoint(
        &s,
        &mut t,
        ADMIN_KEY,
        json!({"url": dead_url("/b"), "partnerId": "globex"}),
    )
    .await;
    for (key, order, customer) in [
        (ACME_KEY, "order-a", "cust-a"),
        (GLOBEX_KEY, "gx-ord-7f3", "gx-cust-7f3"),
    ] {
        let r = s
            .post("/v1/orders", key, &order_body(order, customer))
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        s.wait_for_status(order, "confirmed", 2).await;
    }
    let delivery_b = first_delivery(&s, &endpoint_b).await;
    let delivery_a = first_delivery(&s, &endpoint_a).await;
    let f = Fixture {
        customer_a,
        endpoint_a,
        endpoint_b,
        delivery_b,
    };

    // Every route, every role.
    let mut cases = 0;
    let mut wrong = Vec::new();
    let mut seen_by_others = Vec::new();
    for route in ROUTES {
        for (i, role) in ROLES.into_iter().enumerate() {
            let c = credential(role, &f);
            let (status, body) = call(
                &s,
                &mut t,
                route.method,
                &concrete(route.path, &f),
                c.as_deref(),
                body_for(route.method, route.path, i),
            )
            .await;
            cases += 1;
            if status != route.expect[i] {
                wrong.push(format!(
                    "{} {} as role #{i}: {status}, expected {}: {body}",
                    route.method, route.path, route.expect[i]
                ));
            }
            if !matches!(role, Role::Admin) {
                seen_by_others.push((route.method, route.path, i, body));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Nothing of globex's reaches anyone else: not its order, customer, endpoint, delivery,
    // events or secrets, in any answer.
    let globex_marks = [
        "gx-ord-7f3",
        "gx-cust-7f3",
        "globex",
        "whsec_",
        &f.endpoint_b,
        &f.delivery_b,
    ];
    for (method, path, role, body) in &seen_by_others {
        for mark in globex_marks {
            assert!(
                !body.contains(mark),
                "{method} {path} as role #{role} shows `{mark}`: {body}"
            );
        }
    }

    // The same routes do serve each caller its own (so the refusals above mean something).
    let acme_own = [
        "/v1/orders/order-a",
        "/v1/orders/order-a/status",
        &format!("/v1/webhooks/{}", f.endpoint_a),
        &format!("/v1/webhooks/{}/deliveries/{delivery_a}", f.endpoint_a),
    ];
    for path in acme_own {
        let (status, body) = call(&s, &mut t, "GET", path, Some(ACME_KEY), None).await;
        assert_eq!(status, 200, "{path}: {body}");
        cases += 1;
    }
    let (_, feed) = call(
        &s,
        &mut t,
        "GET",
        "/v1/events?after=0",
        Some(ACME_KEY),
        None,
    )
    .await;
    assert!(feed.contains("order-a"), "{feed}");
    let (_, list) = call(&s, &mut t, "GET", "/v1/webhooks", Some(ACME_KEY), None).await;
    assert!(list.contains(&f.endpoint_a), "{list}");
    let (_, feed) = call(
        &s,
        &mut t,
        "GET",
        "/v1/events?after=0",
        Some(&f.customer_a),
        None,
    )
    .await;
    assert!(feed.contains("order-a"), "{feed}");
    for path in ["/v1/orders/order-a", "/v1/orders/order-a/status"] {
        let (status, _) = call(&s, &mut t, "GET", path, Some(&f.customer_a), None).await;
        assert_eq!(status, 200, "{path}");
    }
    let own_query = json!({"query": "{ order(orderId: \"order-a\") { orderId } }"});
    let (_, body) = call(
        &s,
        &mut t,
        "POST",
        "/graphql",
        Some(&f.customer_a),
        Some(own_query),
    )
    .await;
    assert!(body.contains("order-a"), "{body}");
    cases += 9;

    // Wrong keys and broken tokens, for the log check.
    for bad in [
        "wrong-key-000000000000000001",
        &format!("{ADMIN_KEY}x"),
        &hs256_token(&customer_claims("cust-a", -60)),
    ] {
        t.secret(bad);
        let (status, _) = call(&s, &mut t, "GET", "/v1/orders/order-a", Some(bad), None).await;
        assert_eq!(status, 401);
        cases += 1;
    }

    let leaks = t.leaks(&s.herald.logs());
    figures(
        &format!("every_route_answers_each_role_as_designed_and_leaks_nothing/{kind:?}"),
        cases,
        leaks.len(),
    );
    assert!(leaks.is_empty(), "{leaks:?}");
    assert!(
        s.herald.logs().contains("TRACE"),
        "the server logged at trace level: the leak check saw its most talkative output"
    );
}

// ---------------------------------------------------------------------------------------------
// Subscriptions: each caller's stream holds its own orders only; asking for more is refused.

const SUBSCRIBE: &str = "subscription($o: ID, $c: ID, $p: ID) { onOrderUpdated(orderId: $o, customerId: $c, partnerId: $p) { orderId customerId partnerId } }";

fn subscribe(id: &str, variables: Value) -> Value {
    json!({"id": id, "type": "subscribe", "payload": {"query": SUBSCRIBE, "variables": variables}})
}

async fn connected(s: &Stack, credential: &str) -> Ws {
    let mut ws = connect(&s.herald, "graphql-transport-ws").await;
    send(
        &mut ws,
        json!({"type": "connection_init", "payload": {"authorization": format!("Bearer {credential}")}}),
    )
    .await;
    assert_eq!(next(&mut ws).await["type"], "connection_ack");
    ws
}

/// Events received until `last_order`'s confirmation (the log is ordered: anything foreign
/// published before it would have arrived first).
async fn events_until(ws: &mut Ws, last_order: &str) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let message = next(ws).await;
        assert_eq!(message["type"], "next", "{message}");
        let event = message["payload"]["data"]["onOrderUpdated"].clone();
        let done = event["orderId"] == last_order;
        events.push(event);
        if done && events.iter().filter(|e| e["orderId"] == last_order).count() == 2 {
            return events;
        }
    }
}

async fn subscriptions_are_confined_to_the_caller(kind: Kind) {
    let s = start(kind);
    let customer_a = partner_customer_token("cust-a", "acme", 600);
    let mut cases = 0;
    // Asking for someone else's orders is an error, never a silent empty stream.
    let foreign = [
        (ACME_KEY.to_string(), json!({"p": "globex"})),
        (ACME_KEY.to_string(), json!({"o": "gx-ord-7f3"})),
        (customer_a.clone(), json!({"c": "gx-cust-7f3"})),
        (customer_a.clone(), json!({"o": "gx-ord-7f3"})),
        (customer_a.clone(), json!({"p": "globex"})),
    ];
    s.post(
        "/v1/orders",
        GLOBEX_KEY,
        &order_body("gx-ord-7f3", "gx-cust-7f3"),
    )
    .await;
    s.wait_for_status("gx-ord-7f3", "confirmed", 2).await;
    for (credential, variables) in &foreign {
        let mut ws = connected(&s, credential).await;
        send(&mut ws, subscribe("x", variables.clone())).await;
        let answer = next(&mut ws).await;
        assert_eq!(answer["type"], "error", "{variables}: {answer}");
        assert_eq!(
            answer["payload"][0]["extensions"]["code"], "FORBIDDEN",
            "{variables}: {answer}"
        );
        cases += 1;
    }

    // Unfiltered subscriptions are confined to the caller's own.
    let mut partner = connected(&s, ACME_KEY).await;
    send(&mut partner, subscribe("p", json!({}))).await;
    let mut customer = connected(&s, &customer_a).await;
    send(&mut customer, subscribe("c", json!({}))).await;
    let mut admin = connected(&s, ADMIN_KEY).await;
    send(&mut admin, subscribe("a", json!({}))).await;
    // The server has read the subscribes once a ping round trip is done.
    for ws in [&mut partner, &mut customer, &mut admin] {
        send(ws, json!({"type": "ping"})).await;
        assert_eq!(next(ws).await["type"], "pong");
    }
    for (key, order, customer) in [
        (GLOBEX_KEY, "gx-ord-7f32", "gx-cust-7f3"),
        (ACME_KEY, "order-c", "cust-c"),
        (GLOBEX_KEY, "order-a0", "cust-a"),
        (ACME_KEY, "order-a", "cust-a"),
    ] {
        let r = s
            .post("/v1/orders", key, &order_body(order, customer))
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        s.wait_for_status(order, "confirmed", 2).await;
    }
    let partner_events = events_until(&mut partner, "order-a").await;
    assert!(
        partner_events.iter().all(|e| e["partnerId"] == "acme"),
        "{partner_events:?}"
    );
    assert!(partner_events.iter().any(|e| e["orderId"] == "order-c"));
    let customer_events = events_until(&mut customer, "order-a").await;
    assert!(
        customer_events.iter().all(|e| e["customerId"] == "cust-a"),
        "{customer_events:?}"
    );
    // globex's cust-a is another customer than acme's cust-a: its order never arrives.
    assert!(
        customer_events.iter().all(|e| e["partnerId"] == "acme"),
        "{customer_events:?}"
    );
    assert!(
        !customer_events.iter().any(|e| e["orderId"] == "order-a0"),
        "{customer_events:?}"
    );
    let admin_events = events_until(&mut admin, "order-a").await;
    assert!(admin_events.iter().any(|e| e["orderId"] == "gx-ord-7f32"));
    cases += 3;

    let logs = s.herald.logs();
    let leaks = [ADMIN_KEY, ACME_KEY, GLOBEX_KEY, &customer_a, JWT_SECRET]
        .iter()
        .filter(|secret| logs.contains(*secret))
        .count();
    figures(
        &format!("subscriptions_are_confined_to_the_caller/{kind:?}"),
        cases,
        leaks,
    );
    assert_eq!(leaks, 0, "a credential reached Herald's output");
}

// ---------------------------------------------------------------------------------------------
// JWT attacks: each forged or broken token is refused on HTTP (401, a reason that never
// echoes the token), on `POST /graphql`, at the WebSocket upgrade and in `connection_init`
// (close 4403).

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn hs256_with(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("token")
}

fn attacks() -> Vec<(&'static str, String)> {
    let claims = customer_claims("cust-a", 600);
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut c = claims.clone();
        edit(&mut c);
        c
    };
    let none_header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let body = b64(claims.to_string().as_bytes());
    let rs = rs256_token(&claims);
    let mut swapped: Vec<&str> = rs.split('.').collect();
    let forged_body = b64(with(&|c| c["sub"] = json!("gx-cust-7f3"))
        .to_string()
        .as_bytes());
    swapped[1] = &forged_body;
    let now = jsonwebtoken::get_current_timestamp();
    vec![
        ("alg none, no signature", format!("{none_header}.{body}.")),
        (
            "alg none, a signature",
            format!("{none_header}.{body}.c2ln"),
        ),
        (
            "HS256 keyed with the RS256 public key",
            hs256_with(fixture("jwt_rs256_public.pem").as_bytes(), &claims),
        ),
        ("RS384", {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS384),
                &claims,
                &jsonwebtoken::EncodingKey::from_rsa_pem(
                    fixture("jwt_rs256_private.pem").as_bytes(),
                )
                .expect("key"),
            )
            .expect("token")
        }),
        (
            "expired",
            hs256_token(&with(&|c| c["exp"] = json!(now - 60))),
        ),
        (
            "not yet valid",
            hs256_token(&with(&|c| c["nbf"] = json!(now + 600))),
        ),
        (
            "wrong issuer",
            hs256_token(&with(&|c| c["iss"] = json!("https://evil.example"))),
        ),
        (
            "wrong audience",
            hs256_token(&with(&|c| c["aud"] = json!("someone-else"))),
        ),
        (
            "bad signature (another secret)",
            hs256_with(b"another-secret-of-sufficient-length!!!!!", &claims),
        ),
        ("bad signature (claims swapped)", swapped.join(".")),
        (
            "missing sub",
            hs256_token(&with(&|c| {
                if let Some(m) = c.as_object_mut() {
                    m.remove("sub");
                }
            })),
        ),
        ("empty sub", hs256_token(&with(&|c| c["sub"] = json!("")))),
        (
            "missing exp",
            hs256_token(&with(&|c| {
                if let Some(m) = c.as_object_mut() {
                    m.remove("exp");
                }
            })),
        ),
        ("garbage", "eyJhbGciOi.garbage.x".to_string()),
        ("not base64", "!!!.???.***".to_string()),
        ("truncated", rs[..rs.len() / 2].to_string()),
    ]
}

#[tokio::test]
async fn forged_and_broken_tokens_are_refused_on_http_and_websocket() {
    let s = start(Kind::Memory);
    s.post("/v1/orders", ADMIN_KEY, &order_body("order-a", "cust-a"))
        .await;
    s.wait_for_status("order-a", "confirmed", 2).await;
    let mut t = Transcript::default();
    t.secret(JWT_SECRET);

    // The genuine tokens work (so every refusal below is the token's doing).
    for genuine in [
        customer_token("cust-a", 600),
        rs256_token(&customer_claims("cust-a", 600)),
    ] {
        let r = s.get("/v1/orders/order-a/status", &genuine).await;
        assert_eq!(r.status(), StatusCode::OK);
        connected(&s, &genuine).await;
    }

    let mut cases = 0;
    for (attack, token) in attacks() {
        t.secret(&token);
        let (status, body) = call(
            &s,
            &mut t,
            "GET",
            "/v1/orders/order-a/status",
            Some(&token),
            None,
        )
        .await;
        assert_eq!(status, 401, "{attack}: {body}");
        let problem: Value = serde_json::from_str(&body).expect("problem+json");
        assert_eq!(problem["type"], "/problems/unauthorized", "{attack}");
        let (status, body) = call(
            &s,
            &mut t,
            "POST",
            "/graphql",
            Some(&token),
            Some(json!({"query": "{ order(orderId: \"order-a\") { orderId } }"})),
        )
        .await;
        assert_eq!(status, 401, "{attack}: {body}");
        assert!(!body.contains("order-a\","), "{attack}: {body}");

        // At the upgrade: refused before any WebSocket exists.
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(ws_url(
                &s.herald,
            ))
            .expect("request");
        request.headers_mut().insert(
            "sec-websocket-protocol",
            "graphql-transport-ws".parse().expect("header"),
        );
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        match tokio_tungstenite::connect_async(request).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), 401, "{attack}")
            }
            other => panic!("{attack}: upgrade not refused: {:?}", other.map(|_| ())),
        }

        // In connection_init: close 4403.
        let mut ws = connect(&s.herald, "graphql-transport-ws").await;
        send(
            &mut ws,
            json!({"type": "connection_init", "payload": {"authorization": format!("Bearer {token}")}}),
        )
        .await;
        assert_eq!(close_code(&mut ws).await, Some(4403), "{attack}");
        cases += 4;
    }

    let leaks = t.leaks(&s.herald.logs());
    figures(
        "forged_and_broken_tokens_are_refused_on_http_and_websocket",
        cases,
        leaks.len(),
    );
    assert!(leaks.is_empty(), "{leaks:?}");
}

// ---------------------------------------------------------------------------------------------
// Per-credential rate limiting.

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn a_burst_over_the_limit_gets_429_with_headers_and_others_are_unaffected() {
    let s = Stack::start_with(
        Kind::Memory,
        &format!(
            "{}[http]\nrate_limit_per_second = 1\nrate_limit_burst = 3\n",
            jwt_toml()
        ),
    );
    s.post("/v1/orders", ACME_KEY, &order_body("rl-1", "cust-a"))
        .await;
    let mut cases = 0;
    // Acme's burst (one token went on the order) runs out.
    let status_path = "/v1/orders/rl-1/status";
    let mut answers = Vec::new();
    for _ in 0..20 {
        let r = s.get(status_path, ACME_KEY).await;
        let limited = r.status() == StatusCode::TOO_MANY_REQUESTS;
        answers.push(r);
        if limited {
            break;
        }
    }
    let r = answers.last().expect("answers");
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "a bucket of 3");
    assert!(
        answers.len() <= 3,
        "at most the burst is served: {}",
        answers.len()
    );
    assert_eq!(header(r, "content-type"), "application/problem+json");
    let retry_after: u64 = header(r, "retry-after").parse().expect("Retry-After");
    assert!(retry_after >= 1);
    assert_eq!(header(r, "ratelimit-limit"), "3");
    assert_eq!(header(r, "ratelimit-remaining"), "0");
    let reset: u64 = header(r, "ratelimit-reset")
        .parse()
        .expect("RateLimit-Reset");
    assert!(reset >= 1);
    cases += 1;
    let problem: Value = answers
        .into_iter()
        .find(|r| r.status() == StatusCode::TOO_MANY_REQUESTS)
        .expect("a 429")
        .json()
        .await
        .expect("problem");
    assert_eq!(problem["type"], "/problems/rate-limited");
    assert_eq!(problem["status"], 429);

    // POST /graphql is the same bucket and answers the same way, with a GraphQL error.
    let r = s
        .http
        .post(s.herald.url("/graphql"))
        .header("x-api-key", ACME_KEY)
        .json(&json!({"query": "{ order(orderId: \"rl-1\") { orderId } }"}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(!header(&r, "retry-after").is_empty());
    let body: Value = r.json().await.expect("graphql errors");
    assert_eq!(body["errors"][0]["extensions"]["code"], "RATE_LIMITED");
    cases += 1;

    // Another partner, a customer and the admin key (not limited by default) are unaffected;
    // health and readiness are never counted; wrong keys stay 401 and never get a bucket.
    let token = customer_token("cust-a", 600);
    for (who, credential) in [("globex", GLOBEX_KEY), ("customer", token.as_str())] {
        for _ in 0..3 {
            let r = s.get("/v1/events?after=0", credential).await;
            assert_eq!(r.status(), StatusCode::OK, "{who}");
            cases += 1;
        }
    }
    for _ in 0..10 {
        assert_eq!(s.get(status_path, ADMIN_KEY).await.status(), StatusCode::OK);
        assert_eq!(s.get("/healthz", ACME_KEY).await.status(), StatusCode::OK);
        assert_eq!(s.get("/readyz", ACME_KEY).await.status(), StatusCode::OK);
        let r = s.get(status_path, "wrong-key-000000000000000001").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        cases += 4;
    }
    assert!(
        s.metric("herald_api_rate_limited_total{role=\"partner\"}")
            .await
            >= 2
    );
    assert_eq!(
        s.metric("herald_api_rate_limited_total{role=\"admin\"}")
            .await,
        0
    );

    // After waiting, acme is served again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    eventually(Duration::from_secs(10), "acme served again", || async {
        (s.get(status_path, ACME_KEY).await.status() == StatusCode::OK).then_some(())
    })
    .await;
    cases += 1;
    assert!(!s.herald.logs().contains(ACME_KEY));
    figures(
        "a_burst_over_the_limit_gets_429_with_headers_and_others_are_unaffected",
        cases,
        0,
    );
}
