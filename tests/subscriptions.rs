//! WebSocket subscriptions end to end: the real binary, real third-party clients (the Node
//! `graphql-ws` reference client, Python `gql`'s AppSync transport, headless Chromium on the
//! console page) and, for the protocol's corners, a raw tokio-tungstenite client. Every
//! behaviour runs on both engines; Redis tests start their own redis-server.
//!
//! The client scripts live in `tests/clients` (`npm ci` and `pip install -r
//! requirements.txt` there; `.ci/run` does both).

mod common;

use common::sink::{Answer, Sink};
use common::ws::*;
use common::*;
use futures_util::SinkExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// A client script running as its own process; its stdout lines are collected.
struct ClientProc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    ready: PathBuf,
    _dir: tempfile::TempDir,
}

impl ClientProc {
    fn spawn(mut command: Command) -> ClientProc {
        let dir = tempfile::tempdir().expect("temp dir");
        let ready = dir.path().join("ready");
        command
            .arg("--ready-file")
            .arg(&ready)
            .current_dir(clients_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {command:?}: {e} (install the clients: see tests/clients/README.md)"
            )
        });
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        ClientProc {
            child,
            lines,
            ready,
            _dir: dir,
        }
    }

    /// The reference `graphql-ws` client (graphql-transport-ws).
    fn graphql_ws(url: &str, token: &str, query: &str, variables: Value, count: usize) -> Self {
        let mut c = Command::new("node");
        c.arg("graphql-ws-client.mjs")
            .args(["--url", url, "--token", token, "--query", query])
            .args(["--variables", &variables.to_string()])
            .args(["--count", &count.to_string(), "--timeout-ms", "20000"]);
        ClientProc::spawn(c)
    }

    /// Python `gql` with `AppSyncWebsocketsTransport` (the AppSync dialect on graphql-ws).
    fn appsync(url: &str, api_key: &str, query: &str, variables: Value, count: usize) -> Self {
        let mut c = Command::new("python3");
        c.arg("appsync_client.py")
            .args(["--url", url, "--api-key", api_key, "--query", query])
            .args(["--variables", &variables.to_string()])
            .args(["--count", &count.to_string(), "--timeout-s", "20"]);
        ClientProc::spawn(c)
    }

    /// Waits until the client says its subscription is live.
    async fn ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.ready.exists() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "client exited ({status}) before it was ready: {:?}",
                    self.lines.lock().unwrap()
                );
            }
            assert!(Instant::now() < deadline, "client never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the client to exit; its success and its JSON lines.
    async fn finish(mut self) -> (bool, Vec<Value>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("client did not finish: {:?}", self.lines.lock().unwrap());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Let the reader thread take the last lines.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let lines = self.lines.lock().unwrap().clone();
        let values = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| json!({ "raw": l })))
            .collect();
        (status.success(), values)
    }

    async fn events(self) -> Vec<Value> {
        let (ok, lines) = self.finish().await;
        assert!(ok, "client failed: {lines:?}");
        lines
    }

    async fn error(self) -> Value {
        let (ok, lines) = self.finish().await;
        assert!(!ok, "client should have failed: {lines:?}");
        lines
            .iter()
            .find_map(|l| l.get("error").cloned())
            .unwrap_or_else(|| panic!("no error line in {lines:?}"))
    }
}

impl Drop for ClientProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The event object inside one `{"data":{"onOrderUpdated":{..}}}` line.
fn event(line: &Value) -> &Value {
    &line["data"]["onOrderUpdated"]
}

fn statuses(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| event(l)["status"].as_str().unwrap_or("?").to_string())
        .collect()
}

impl Stack {
    async fn transition(&self, order_id: &str, status: &str, version: u64) {
        let r = self
            .post(
                &format!("/v1/orders/{order_id}/transitions"),
                ADMIN_KEY,
                &json!({ "status": status }),
            )
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
        self.wait_for_status(order_id, status, version).await;
    }
}

on_both_engines!(
    graphql_ws_client_gets_its_orders_events_in_order_and_nothing_else,
    appsync_client_gets_selected_fields_of_its_partners_orders,
    invalid_documents_are_refused_with_graphql_errors,
    unauthorized_subscriptions_are_refused_with_an_error,
    resubscribing_after_a_cursor_gets_exactly_the_missed_events,
    a_cursor_older_than_retention_is_refused,
    graphql_query_over_http_uses_the_same_projection_and_authorization,
);

async fn graphql_ws_client_gets_its_orders_events_in_order_and_nothing_else(kind: Kind) {
    let s = Stack::start(kind);
    let mut client = ClientProc::graphql_ws(
        &ws_url(&s.herald),
        ADMIN_KEY,
        "subscription($id: ID) { onOrderUpdated(orderId: $id) { orderId status version } }",
        json!({ "id": "mine-1" }),
        3,
    );
    client.ready().await;
    s.order(ADMIN_KEY, "other-1", "cust-2").await;
    s.order(ADMIN_KEY, "mine-1", "cust-1").await;
    s.transition("mine-1", "preparing", 3).await;
    s.transition("other-1", "cancelled", 3).await;
    let lines = client.events().await;
    assert_eq!(statuses(&lines), ["ACCEPTED", "CONFIRMED", "PREPARING"]);
    for (i, line) in lines.iter().enumerate() {
        let e = event(line).as_object().unwrap();
        let keys: Vec<&str> = e.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["orderId", "status", "version"],
            "only selected fields"
        );
        assert_eq!(e["orderId"], "mine-1");
        assert_eq!(e["version"], i as u64 + 1);
    }
}

async fn appsync_client_gets_selected_fields_of_its_partners_orders(kind: Kind) {
    let s = Stack::start(kind);
    let mut client = ClientProc::appsync(
        &s.herald.url("/graphql"),
        ACME_KEY,
        "subscription { onOrderUpdated { orderId partnerId status previousStatus data } }",
        json!({}),
        3,
    );
    client.ready().await;
    s.order(GLOBEX_KEY, "globex-1", "cust-9").await;
    s.order(ACME_KEY, "acme-1", "cust-1").await;
    s.publish(external_event("globex-1", "cust-9", Some("globex"), 3))
        .await;
    s.publish(external_event("acme-1", "cust-1", Some("acme"), 3))
        .await;
    let lines = client.events().await;
    assert_eq!(statuses(&lines), ["ACCEPTED", "CONFIRMED", "PREPARING"]);
    for line in &lines {
        let e = event(line);
        assert_eq!(e["orderId"], "acme-1", "a partner sees only its orders");
        assert_eq!(e["partnerId"], "acme");
        assert_eq!(e.as_object().unwrap().len(), 5);
    }
    assert_eq!(event(&lines[0])["previousStatus"], Value::Null);
    assert_eq!(event(&lines[1])["previousStatus"], "ACCEPTED");
    // `data` is the event's JSON as a string.
    let data: Value = serde_json::from_str(event(&lines[2])["data"].as_str().unwrap()).unwrap();
    assert_eq!(data, json!({"note": "x", "n": 3}));
}

async fn invalid_documents_are_refused_with_graphql_errors(kind: Kind) {
    let s = Stack::start(kind);
    let url = ws_url(&s.herald);
    let unknown_field = ClientProc::graphql_ws(
        &url,
        ADMIN_KEY,
        "subscription { onOrderUpdated { orderId nope } }",
        json!({}),
        1,
    );
    let error = unknown_field.error().await;
    assert!(
        error[0]["message"].as_str().unwrap().contains("nope"),
        "{error}"
    );
    assert_eq!(error[0]["extensions"]["code"], "GRAPHQL_VALIDATION_FAILED");
    assert!(error[0]["locations"].is_array());

    let bad_variable = ClientProc::graphql_ws(
        &url,
        ADMIN_KEY,
        "subscription($s: [OrderStatus!]) { onOrderUpdated(status: $s) { orderId } }",
        json!({ "s": ["TELEPORTED"] }),
        1,
    );
    let error = bad_variable.error().await;
    assert_eq!(error[0]["extensions"]["code"], "BAD_USER_INPUT", "{error}");

    let bad_argument = ClientProc::appsync(
        &s.herald.url("/graphql"),
        ADMIN_KEY,
        "subscription { onOrderUpdated(status: [TELEPORTED]) { orderId } }",
        json!({}),
        1,
    );
    let error = bad_argument.error().await;
    let text = error.to_string();
    assert!(text.contains("TELEPORTED"), "{text}");
}

async fn unauthorized_subscriptions_are_refused_with_an_error(kind: Kind) {
    let s = Stack::start_with(kind, &jwt_toml());
    s.order(ACME_KEY, "acme-7", "cust-7").await;
    let url = ws_url(&s.herald);
    let q = "subscription($o: ID, $c: ID, $p: ID) { onOrderUpdated(orderId: $o, customerId: $c, partnerId: $p) { orderId } }";
    let cases = [
        (GLOBEX_KEY.to_string(), json!({ "o": "acme-7" })),
        (GLOBEX_KEY.to_string(), json!({ "p": "acme" })),
        (customer_token("cust-8", 600), json!({ "o": "acme-7" })),
        (customer_token("cust-8", 600), json!({ "c": "cust-7" })),
        // cust-7 of no partner is not acme's cust-7.
        (customer_token("cust-7", 600), json!({ "o": "acme-7" })),
        // An order that does not exist reads exactly like someone else's.
        (ACME_KEY.to_string(), json!({ "o": "no-such-order" })),
    ];
    for (token, variables) in cases {
        let error = ClientProc::graphql_ws(&url, &token, q, variables.clone(), 1)
            .error()
            .await;
        assert_eq!(
            error[0]["extensions"]["code"], "FORBIDDEN",
            "{variables}: {error}"
        );
    }
    // The rightful customer (acme's cust-7) is served.
    let mut own = ClientProc::graphql_ws(
        &url,
        &partner_customer_token("cust-7", "acme", 600),
        q,
        json!({ "o": "acme-7" }),
        1,
    );
    own.ready().await;
    s.transition("acme-7", "preparing", 3).await;
    let lines = own.events().await;
    assert_eq!(event(&lines[0]), &json!({ "orderId": "acme-7" }));
    // A wrong credential is refused at connection time.
    let error = ClientProc::graphql_ws(&url, "not-a-key-000000000000", q, json!({}), 1)
        .error()
        .await;
    assert_eq!(error["closeCode"], 4403, "{error}");
}

async fn resubscribing_after_a_cursor_gets_exactly_the_missed_events(kind: Kind) {
    let s = Stack::start(kind);
    let url = ws_url(&s.herald);
    let q = "subscription($o: ID, $after: ID) { onOrderUpdated(orderId: $o, after: $after) { eventId status version } }";
    let mut first = ClientProc::graphql_ws(&url, ADMIN_KEY, q, json!({ "o": "r-1" }), 2);
    first.ready().await;
    s.order(ADMIN_KEY, "r-1", "cust-1").await;
    let seen = first.events().await;
    assert_eq!(statuses(&seen), ["ACCEPTED", "CONFIRMED"]);
    let cursor = event(&seen[1])["eventId"].as_str().unwrap().to_string();

    // Missed while disconnected, with another order's events in between.
    s.transition("r-1", "preparing", 3).await;
    s.order(ADMIN_KEY, "r-2", "cust-2").await;
    s.transition("r-1", "shipped", 4).await;

    let mut second = ClientProc::graphql_ws(
        &url,
        ADMIN_KEY,
        q,
        json!({ "o": "r-1", "after": cursor }),
        3,
    );
    second.ready().await;
    s.transition("r-1", "delivered", 5).await;
    let lines = second.events().await;
    assert_eq!(statuses(&lines), ["PREPARING", "SHIPPED", "DELIVERED"]);
    let versions: Vec<u64> = lines
        .iter()
        .map(|l| event(l)["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [3, 4, 5], "no gap, no duplicate");

    // The AppSync client resumes the same way.
    let mut third = ClientProc::appsync(
        &s.herald.url("/graphql"),
        ADMIN_KEY,
        q,
        json!({ "o": "r-1", "after": cursor }),
        3,
    );
    third.ready().await;
    assert_eq!(
        statuses(&third.events().await),
        ["PREPARING", "SHIPPED", "DELIVERED"]
    );
}

async fn a_cursor_older_than_retention_is_refused(kind: Kind) {
    let s = Stack::start_with(kind, "[engine]\nevent_retention = 10\n");
    for v in 0..250 {
        s.publish(external_event("t-1", "cust-1", None, v + 3))
            .await;
    }
    let error = ClientProc::graphql_ws(
        &ws_url(&s.herald),
        ADMIN_KEY,
        "subscription { onOrderUpdated(after: \"1-0\") { eventId } }",
        json!({}),
        1,
    )
    .error()
    .await;
    assert_eq!(error[0]["extensions"]["code"], "CURSOR_EXPIRED", "{error}");
}

async fn graphql_query_over_http_uses_the_same_projection_and_authorization(kind: Kind) {
    let s = Stack::start(kind);
    s.order(ACME_KEY, "q-1", "cust-1").await;
    let query = |key: &'static str, body: Value| {
        let http = s.http.clone();
        let url = s.herald.url("/graphql");
        async move {
            let r = http
                .post(url)
                .header("x-api-key", key)
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    let doc = json!({ "query": "query($id: ID!) { o: order(orderId: $id) { orderId status version __typename } }", "variables": { "id": "q-1" } });
    let (status, body) = query(ACME_KEY, doc.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({ "data": { "o": { "orderId": "q-1", "status": "CONFIRMED", "version": 2, "__typename": "Order" } } })
    );
    let (_, body) = query(GLOBEX_KEY, doc).await;
    assert_eq!(
        body,
        json!({ "data": { "o": null } }),
        "foreign reads as null"
    );
    let (status, body) = query(
        ADMIN_KEY,
        json!({ "query": "{ order(orderId: 1) { nope } }" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "GRAPHQL_VALIDATION_FAILED"
    );
    let r = s
        .http
        .post(s.herald.url("/graphql"))
        .json(&json!({ "query": "{ order(orderId: \"q-1\") { status } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn subscriber_on_node_a_gets_events_produced_through_node_b() {
    let redis = RedisServer::start(true);
    let push_only = Herald::start(HeraldOptions {
        redis_url: Some(redis.url()),
        roles: "push".into(),
        ..HeraldOptions::default()
    });
    let producer = Stack::joining(Herald::start(HeraldOptions {
        redis_url: Some(redis.url()),
        ..HeraldOptions::default()
    }));
    let mut client = ClientProc::graphql_ws(
        &ws_url(&push_only),
        ADMIN_KEY,
        "subscription { onOrderUpdated(customerId: \"cust-ab\") { orderId status } }",
        json!({}),
        2,
    );
    client.ready().await;
    producer.order(ADMIN_KEY, "ab-1", "cust-ab").await;
    assert_eq!(statuses(&client.events().await), ["ACCEPTED", "CONFIRMED"]);
}

#[tokio::test]
async fn console_page_shows_an_orders_events_live_in_chromium() {
    let s = Stack::start(Kind::Memory);
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new("node");
    c.arg("console-browser.mjs")
        .args(["--url", &s.herald.url("/"), "--key", ADMIN_KEY])
        .args([
            "--order",
            "web-1",
            "--expect",
            "CONFIRMED",
            "--timeout-ms",
            "30000",
        ])
        .arg("--screenshot")
        .arg(dir.path().join("console.png"));
    let mut browser = ClientProc::spawn(c);
    browser.ready().await;
    s.order(ADMIN_KEY, "web-1", "cust-1").await;
    let (ok, lines) = browser.finish().await;
    assert!(ok, "{lines:?}");
    let shown = lines[0]["events"].to_string();
    assert!(
        shown.contains("CONFIRMED") && shown.contains("ACCEPTED"),
        "{shown}"
    );
}

/// The console lists the workflow steps of the order it is subscribed to (issue 13): a wait
/// step on `accepted` holds a new order 300 ms, then moves it to `confirmed`.
#[tokio::test]
async fn console_page_shows_the_workflow_steps_of_the_order_in_chromium() {
    let s = Stack::start_with(
        Kind::Memory,
        "[workflow.steps.accepted]\nname = \"hold\"\ntype = \"wait\"\nafter = \"300ms\"\nnext = \"confirmed\"\n",
    );
    let mut c = Command::new("node");
    c.arg("console-browser.mjs")
        .args(["--url", &s.herald.url("/"), "--key", ADMIN_KEY])
        .args(["--order", "web-steps-1", "--expect", "CONFIRMED"])
        .args(["--expect-step", "waitElapsed", "--timeout-ms", "30000"]);
    let mut browser = ClientProc::spawn(c);
    browser.ready().await;
    s.order(ADMIN_KEY, "web-steps-1", "cust-1").await;
    let (ok, lines) = browser.finish().await;
    assert!(ok, "{lines:?}");
    let kinds: Vec<&str> = lines[0]["steps"]
        .as_array()
        .expect("the steps table")
        .iter()
        .filter_map(|row| row["What"].as_str())
        .collect();
    assert_eq!(
        kinds,
        ["stateEntered", "waitStarted", "waitElapsed"],
        "{lines:?}"
    );
}

// ---- protocol corners and limits, with a raw client (engine-independent) ----

const ALL: &str = "subscription { onOrderUpdated { orderId version } }";

#[tokio::test]
async fn graphql_transport_ws_rules_are_enforced_with_their_close_codes() {
    let s = Stack::start_with(
        Kind::Memory,
        "[push]\nconnection_init_timeout = \"300ms\"\nmax_message_bytes = 2048\n",
    );
    let h = &s.herald;

    let mut ws = connect(h, "graphql-transport-ws").await;
    send(&mut ws, sub("1", ALL)).await;
    assert_eq!(
        close_code(&mut ws).await,
        Some(4401),
        "subscribe before ack"
    );

    let mut ws = connect(h, "graphql-transport-ws").await;
    assert_eq!(close_code(&mut ws).await, Some(4408), "init timeout");

    let mut ws = connect(h, "graphql-transport-ws").await;
    init(&mut ws, ADMIN_KEY).await;
    send(&mut ws, json!({"type": "ping", "payload": {"t": 1}})).await;
    assert_eq!(
        next(&mut ws).await,
        json!({"type": "pong", "payload": {"t": 1}})
    );
    send(&mut ws, sub("1", ALL)).await;
    send(&mut ws, sub("1", ALL)).await;
    assert_eq!(close_code(&mut ws).await, Some(4409), "duplicate id");

    let mut ws = connect(h, "graphql-transport-ws").await;
    init(&mut ws, ADMIN_KEY).await;
    send(&mut ws, json!({"type": "connection_init"})).await;
    assert_eq!(close_code(&mut ws).await, Some(4429), "second init");

    let mut ws = connect(h, "graphql-transport-ws").await;
    init(&mut ws, ADMIN_KEY).await;
    send(&mut ws, json!({"type": "teleport"})).await;
    assert_eq!(close_code(&mut ws).await, Some(4400), "unknown message");

    let mut ws = connect(h, "graphql-transport-ws").await;
    init(&mut ws, ADMIN_KEY).await;
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(4400), "binary frame");

    let mut ws = connect(h, "graphql-transport-ws").await;
    init(&mut ws, ADMIN_KEY).await;
    send(&mut ws, sub("1", &format!("{ALL} #{}", "x".repeat(4096)))).await;
    assert_eq!(close_code(&mut ws).await, Some(1009), "message too big");

    // Complete from the client ends the subscription: nothing more arrives for it.
    let mut ws = connect(h, "graphql-transport-ws").await;
    init(&mut ws, ADMIN_KEY).await;
    send(&mut ws, sub("a", ALL)).await;
    send(&mut ws, json!({"id": "a", "type": "complete"})).await;
    send(
        &mut ws,
        sub(
            "b",
            "subscription { onOrderUpdated(orderId: \"c-1\") { orderId version } }",
        ),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.order(ADMIN_KEY, "c-1", "cust-1").await;
    let m = next(&mut ws).await;
    assert_eq!(
        (m["id"].as_str(), m["type"].as_str()),
        (Some("b"), Some("next"))
    );

    // Handshakes: no subprotocol, a wrong key.
    let r = s
        .http
        .get(h.url("/graphql"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let mut request = ws_url(h).into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("sec-websocket-protocol", "graphql-ws".parse().unwrap());
    headers.insert("x-api-key", "wrong-key-00000000000".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
}

#[tokio::test]
async fn per_connection_and_per_node_limits_answer_as_documented() {
    let s = Stack::start_with(
        Kind::Memory,
        "[push]\nmax_subscriptions_per_connection = 2\nsubscribe_rate = 3\nmax_connections = 3\n",
    );
    let h = &s.herald;
    let mut ws = connect(h, "graphql-transport-ws").await;
    init(&mut ws, ADMIN_KEY).await;
    send(&mut ws, sub("1", ALL)).await;
    send(&mut ws, sub("2", ALL)).await;
    send(&mut ws, sub("3", ALL)).await;
    let m = next(&mut ws).await;
    assert_eq!(
        (m["id"].as_str(), m["type"].as_str()),
        (Some("3"), Some("error"))
    );
    assert_eq!(m["payload"][0]["extensions"]["code"], "LIMIT_EXCEEDED");
    // The rate: three tokens are spent; the next subscribe within the second is refused.
    send(&mut ws, json!({"id": "1", "type": "complete"})).await;
    send(&mut ws, sub("4", ALL)).await;
    let m = next(&mut ws).await;
    assert_eq!(m["payload"][0]["extensions"]["code"], "RATE_LIMITED", "{m}");

    let _two = connect(h, "graphql-transport-ws").await;
    let _three = connect(h, "graphql-ws").await;
    let mut request = ws_url(h).into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 503);
            assert!(r.headers().contains_key("retry-after"));
        }
        other => panic!("expected 503, got {other:?}"),
    }
    assert_eq!(s.metric("herald_push_connections_refused_total").await, 1);
    assert_eq!(s.metric("herald_push_subscription_limit_total").await, 1);
    assert_eq!(s.metric("herald_push_rate_limited_total").await, 1);
}

#[tokio::test]
async fn a_slow_consumer_is_closed_and_the_others_get_everything() {
    let s = Stack::start_with(Kind::Memory, "[push]\noutbound_queue_bytes = 65536\n");
    let h = &s.herald;
    let mut slow = connect(h, "graphql-transport-ws").await;
    init(&mut slow, ADMIN_KEY).await;
    send(
        &mut slow,
        sub("s", "subscription { onOrderUpdated { data } }"),
    )
    .await;
    let mut fast = connect(h, "graphql-transport-ws").await;
    init(&mut fast, ADMIN_KEY).await;
    send(
        &mut fast,
        sub("f", "subscription { onOrderUpdated { version } }"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let big = "y".repeat(16 * 1024);
    let n = 600u64;
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < n {
            let m = next(&mut fast).await;
            assert_eq!(m["type"], "next");
            got += 1;
        }
        got
    });
    for v in 0..n {
        let mut e = external_event("slow-1", "cust-1", None, v + 3);
        e["data"] = json!({ "pad": big });
        s.publish(e).await;
    }
    assert_eq!(
        reader.await.unwrap(),
        n,
        "the fast subscriber got every event"
    );
    eventually(Duration::from_secs(10), "slow consumer closed", || async {
        (s.metric("herald_push_slow_consumers_total").await == 1).then_some(())
    })
    .await;
    // The stalled client, reading at last, finds its stream ended (4008 when the close
    // frame still fit in the socket's buffers).
    let code = close_code(&mut slow).await;
    assert!(matches!(code, Some(4008) | None), "{code:?}");
}

#[tokio::test]
async fn appsync_dialect_messages_keepalive_and_stop() {
    use base64::Engine as _;
    let s = Stack::start_with(Kind::Memory, "[push]\nkeepalive_interval = \"200ms\"\n");
    let h = &s.herald;
    let header = base64::engine::general_purpose::STANDARD
        .encode(json!({"host": "x", "x-api-key": ADMIN_KEY}).to_string());
    let url = format!("{}?header={header}&payload=e30=", ws_url(h));
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "graphql-ws".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    send(&mut ws, json!({"type": "connection_init"})).await;
    let ack = next(&mut ws).await;
    assert_eq!(ack["type"], "connection_ack");
    assert!(ack["payload"]["connectionTimeoutMs"].as_u64().unwrap() > 0);
    assert_eq!(next(&mut ws).await["type"], "ka");
    let data =
        json!({"query": "subscription { onOrderUpdated(orderId: \"as-1\") { orderId status } }"})
            .to_string();
    send(&mut ws, json!({"id": "7", "type": "start", "payload": {"data": data, "extensions": {"authorization": {"host": "x", "x-api-key": ADMIN_KEY}}}})).await;
    let mut seen = Vec::new();
    let mut kas = 0;
    let mut posted = false;
    while seen.len() < 3 {
        let m = next(&mut ws).await;
        match m["type"].as_str() {
            Some("ka") => kas += 1,
            Some("start_ack") => {
                seen.push("start_ack".to_string());
                if !posted {
                    posted = true;
                    s.order(ADMIN_KEY, "as-1", "cust-1").await;
                }
            }
            Some("data") => {
                assert_eq!(m["id"], "7");
                seen.push(
                    m["payload"]["data"]["onOrderUpdated"]["status"]
                        .as_str()
                        .unwrap()
                        .into(),
                );
            }
            other => panic!("unexpected {other:?}: {m}"),
        }
    }
    assert_eq!(seen, ["start_ack", "ACCEPTED", "CONFIRMED"]);
    send(&mut ws, json!({"id": "7", "type": "stop"})).await;
    loop {
        let m = next(&mut ws).await;
        if m["type"] == "ka" {
            kas += 1;
            continue;
        }
        assert_eq!(m, json!({"id": "7", "type": "complete"}));
        break;
    }
    // A bad start gets an `error` with its id; the connection stays up.
    send(&mut ws, json!({"id": "8", "type": "start", "payload": {"data": "{\"query\":\"subscription { nope }\"}"}})).await;
    loop {
        let m = next(&mut ws).await;
        if m["type"] == "ka" {
            kas += 1;
            continue;
        }
        assert_eq!(
            (m["id"].as_str(), m["type"].as_str()),
            (Some("8"), Some("error"))
        );
        assert_eq!(m["payload"]["errors"][0]["errorType"], "ValidationError");
        break;
    }
    // Legacy Apollo (subscriptions-transport-ws) on the same subprotocol: an object payload.
    send(&mut ws, json!({"id": "9", "type": "start", "payload": {"query": "subscription($o: ID) { onOrderUpdated(orderId: $o) { version } }", "variables": {"o": "as-1"}}})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.transition("as-1", "preparing", 3).await;
    loop {
        let m = next(&mut ws).await;
        if m["type"] == "ka" {
            kas += 1;
            continue;
        }
        assert_eq!(
            m,
            json!({"id": "9", "type": "data", "payload": {"data": {"onOrderUpdated": {"version": 3}}}})
        );
        break;
    }
    // Keepalives keep coming while idle.
    let deadline = Instant::now() + Duration::from_secs(3);
    while kas < 3 && Instant::now() < deadline {
        if next(&mut ws).await["type"] == "ka" {
            kas += 1;
        }
    }
    assert!(kas >= 3, "ka every keepalive_interval");
}

#[tokio::test]
async fn token_expiry_and_shutdown_close_the_connection_with_their_codes() {
    let mut s = Stack::start_with(Kind::Memory, &jwt_toml());
    let mut ws = connect(&s.herald, "graphql-transport-ws").await;
    send(
        &mut ws,
        json!({"type": "connection_init", "payload": {"authorization": format!("Bearer {}", customer_token("cust-1", 2))}}),
    )
    .await;
    assert_eq!(next(&mut ws).await["type"], "connection_ack");
    assert_eq!(close_code(&mut ws).await, Some(4403), "token expired");

    let mut ws = connect(&s.herald, "graphql-transport-ws").await;
    init(&mut ws, ADMIN_KEY).await;
    send(&mut ws, sub("1", ALL)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.herald.signal("TERM");
    assert_eq!(
        close_code(&mut ws).await,
        Some(1012),
        "reconnect on shutdown"
    );
    assert!(s.herald.terminate());
}

// ---- the console's operations (admin) view, in Chromium ----

/// Where the admin view's screenshots go: `HERALD_CONSOLE_SCREENSHOTS` (relative to the repo,
/// e.g. `docs/console` to regenerate the checked-in ones), else a temporary directory.
fn screenshot_dir() -> (Option<tempfile::TempDir>, PathBuf) {
    match std::env::var("HERALD_CONSOLE_SCREENSHOTS") {
        Ok(dir) if !dir.is_empty() => {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
            std::fs::create_dir_all(&path).expect("screenshot directory");
            (None, path)
        }
        _ => {
            let tmp = tempfile::tempdir().expect("temp dir");
            let path = tmp.path().to_path_buf();
            (Some(tmp), path)
        }
    }
}

/// Runs tests/clients/console-admin.mjs to its end (it bounds itself); its JSON line.
async fn console_admin(url: &str, key: &str, args: &[&str], shots: Option<&Path>) -> Value {
    let mut c = Command::new("node");
    c.current_dir(clients_dir())
        .arg("console-admin.mjs")
        .args(["--url", url, "--key", key])
        .args(args);
    if let Some(dir) = shots {
        c.arg("--screenshots").arg(dir);
    }
    let out = tokio::task::spawn_blocking(move || c.output())
        .await
        .expect("join")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let value: Value = serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "console-admin.mjs said: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success() && value["ok"] == true, "{value:#}");
    value
}

async fn admin_post(base: &str, path: &str, body: &Value) -> Value {
    let r = client()
        .post(format!("{base}{path}"))
        .header("x-api-key", ADMIN_KEY)
        .json(body)
        .send()
        .await
        .expect("admin post");
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.expect("json answer")
}

/// Redis, roles split so the test can make a real dead letter: the front node (api, push,
/// webhooks) takes an order whose command a crashed consumer of the `workers` group had
/// received; the worker node then finds it over `max_receives` and dead-letters it. A webhook
/// endpoint points at a sink that answers 500, and a malformed entry is XADDed to the event
/// log. The page shows the figures, redrives the dead letter (confirmed) and sees the queue
/// empty, retries the failed delivery and sees a new attempt, and lists the malformed entry.
#[tokio::test]
async fn console_admin_view_redrives_retries_and_shows_malformed_events_on_redis() {
    let redis = RedisServer::start(true);
    let toml = format!(
        "{WEBHOOKS_TOML}\n[engine]\npartitions = 1\n[queue]\nvisibility_timeout = \"300ms\"\nmax_receives = 1\n"
    );
    let node = |roles: &str| {
        Herald::start(HeraldOptions {
            redis_url: Some(redis.url()),
            roles: roles.into(),
            extra_toml: toml.clone(),
            ..HeraldOptions::default()
        })
    };
    let front = node("api,push,webhooks");
    let base = front.base.clone();
    let sink = Sink::start().await;
    sink.answer("/fail", Answer::Status(500));
    let endpoint = admin_post(&base, "/v1/webhooks", &json!({"url": sink.url("/fail")})).await;
    let endpoint_id = endpoint["id"].as_str().expect("endpoint id").to_string();
    admin_post(&base, "/v1/orders", &order_body("console-dead-1", "cust-c")).await;
    let mut conn = redis.conn();
    let _: ::redis::Value = ::redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("workers")
        .arg("crashed")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg("herald:{p0}:commands")
        .arg(">")
        .query(&mut conn)
        .expect("XREADGROUP");
    let _: String = ::redis::cmd("XADD")
        .arg("herald:{p0}:events")
        .arg("*")
        .arg("event")
        .arg("{\"type\": \"order.shipped\", <b>cut</b>")
        .query(&mut conn)
        .expect("XADD");
    let _worker = node("worker");
    let (_tmp, shots) = screenshot_dir();
    let seen = console_admin(
        &front.url("/"),
        ADMIN_KEY,
        &[
            "--dead-letters",
            "1",
            "--endpoint",
            &endpoint_id,
            "--malformed",
            "1",
        ],
        Some(&shots),
    )
    .await;
    assert_eq!(
        seen["deadLetters"][0]["Order"], "console-dead-1",
        "{seen:#}"
    );
    assert_eq!(seen["deadLetters"][0]["Reason"], "maxReceives", "{seen:#}");
    assert_eq!(
        seen["confirmation"],
        "Move 1 dead letter(s) back to the queue?"
    );
    assert!(
        seen["redriveNote"]
            .as_str()
            .is_some_and(|n| n.starts_with("Redrove 1 ")),
        "{seen:#}"
    );
    assert!(
        seen["afterRedrive"]
            .as_str()
            .is_some_and(|n| n.ends_with("The dead-letter queue is empty.")),
        "{seen:#}"
    );
    let attempts = seen["attempts"].as_array().expect("attempt rows");
    let before = seen["failedDelivery"]["attempts"].as_u64().unwrap_or(0) as usize;
    assert!(attempts.len() > before, "{seen:#}");
    assert!(attempts.iter().all(|a| a["Code"] == "500"), "{seen:#}");
    // The malformed entry is shown as text: its markup is not markup on the page.
    assert_eq!(
        seen["malformed"][0]["Raw"], "{\"type\": \"order.shipped\", <b>cut</b>",
        "{seen:#}"
    );
    assert_eq!(seen["errors"], json!([]), "{seen:#}");
    for panel in ["queues", "dlq", "webhooks", "malformed", "admin"] {
        assert!(
            shots.join(format!("console-{panel}.png")).exists(),
            "{panel}"
        );
    }
}

/// Memory engine: the same page on one node; nothing dead-lettered (the memory engine has no
/// way in from outside to crash a receive), a failing endpoint's delivery retried by hand.
#[tokio::test]
async fn console_admin_view_retries_a_failed_delivery_on_memory() {
    let s = Stack::start_with(Kind::Memory, WEBHOOKS_TOML);
    let sink = Sink::start().await;
    sink.answer("/fail", Answer::Status(500));
    let base = s.herald.base.clone();
    let endpoint = admin_post(&base, "/v1/webhooks", &json!({"url": sink.url("/fail")})).await;
    let endpoint_id = endpoint["id"].as_str().expect("endpoint id").to_string();
    admin_post(&base, "/v1/orders", &order_body("console-mem-1", "cust-c")).await;
    let seen = console_admin(
        &s.herald.url("/"),
        ADMIN_KEY,
        &["--dead-letters", "0", "--endpoint", &endpoint_id],
        None,
    )
    .await;
    assert_eq!(seen["queues"]["q-dlq"], "0", "{seen:#}");
    assert_eq!(seen["queues"]["q-malformed"], "0", "{seen:#}");
    let before = seen["failedDelivery"]["attempts"].as_u64().unwrap_or(0) as usize;
    assert!(
        seen["attempts"].as_array().map(Vec::len).unwrap_or(0) > before,
        "{seen:#}"
    );
    assert_eq!(seen["errors"], json!([]), "{seen:#}");
}

/// A partner key opens nothing: the page says the view needs an admin key.
#[tokio::test]
async fn console_admin_view_refuses_a_partner_key_with_a_clear_message() {
    let s = Stack::start(Kind::Memory);
    let seen = console_admin(&s.herald.url("/"), ACME_KEY, &["--refused"], None).await;
    assert!(
        seen["refused"]
            .as_str()
            .is_some_and(|m| m.contains("not an admin key")),
        "{seen:#}"
    );
    assert_eq!(seen["adminHidden"], true);
}
/// Resync (README "Resync"): a snapshot of the current statuses instead of `CURSOR_EXPIRED`,
/// then live events, through the reference `graphql-ws` client.
mod resync {
    use super::*;

    on_both_engines!(
        resync_after_a_trimmed_cursor_sends_a_snapshot_then_live_events_and_resumes_from_it,
        resync_without_after_starts_with_a_snapshot_and_is_refused_over_its_bound,
    );

    /// Trims every entry of the log written so far (retention 10) with events of another
    /// customer's order.
    async fn trim_the_log(s: &Stack) {
        for v in 0..250 {
            s.publish(external_event("t-1", "cust-trim", None, v + 3))
                .await;
        }
    }

    const FIELDS: &str = "eventId type orderId status version";

    async fn resync_after_a_trimmed_cursor_sends_a_snapshot_then_live_events_and_resumes_from_it(
        kind: Kind,
    ) {
        let s = Stack::start_with(kind, "[engine]\nevent_retention = 10\n");
        s.order(ADMIN_KEY, "rs-1", "cust-r").await;
        s.order(ADMIN_KEY, "rs-2", "cust-r").await;
        s.order(ADMIN_KEY, "rs-3", "cust-other").await;
        s.transition("rs-1", "preparing", 3).await;
        trim_the_log(&s).await;
        let query = format!(
            "subscription {{ onOrderUpdated(customerId: \"cust-r\", after: \"1-0\", resync: true) {{ {FIELDS} }} }}"
        );
        let mut client =
            ClientProc::graphql_ws(&ws_url(&s.herald), ADMIN_KEY, &query, json!({}), 3);
        client.ready().await;
        // Once the snapshot is in (else the transition could land before the snapshot is
        // read, and the snapshot would show it instead).
        eventually(Duration::from_secs(20), "the snapshot", || async {
            (client.lines.lock().unwrap().len() >= 2).then_some(())
        })
        .await;
        s.transition("rs-2", "preparing", 3).await;
        let lines = client.events().await;
        let got: Vec<(Value, Value, Value, Value)> = lines
            .iter()
            .map(|l| {
                let e = event(l);
                (
                    e["type"].clone(),
                    e["orderId"].clone(),
                    e["status"].clone(),
                    e["version"].clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    json!("order.snapshot"),
                    json!("rs-1"),
                    json!("PREPARING"),
                    json!(3)
                ),
                (
                    json!("order.snapshot"),
                    json!("rs-2"),
                    json!("CONFIRMED"),
                    json!(2)
                ),
                (
                    json!("order.preparing"),
                    json!("rs-2"),
                    json!("PREPARING"),
                    json!(3)
                ),
            ],
            "{lines:?}"
        );
        // Both snapshot events carry the live start as eventId: resuming from it (without
        // resync) misses nothing after the snapshot and repeats nothing before it.
        let start = event(&lines[0])["eventId"].as_str().unwrap().to_string();
        assert_eq!(event(&lines[1])["eventId"], start.as_str());
        let query = format!(
            "subscription {{ onOrderUpdated(customerId: \"cust-r\", after: \"{start}\") {{ {FIELDS} }} }}"
        );
        let resumed = ClientProc::graphql_ws(&ws_url(&s.herald), ADMIN_KEY, &query, json!({}), 1)
            .events()
            .await;
        assert_eq!(event(&resumed[0])["orderId"], "rs-2");
        assert_eq!(event(&resumed[0])["version"], 3);
        assert_eq!(event(&resumed[0])["type"], "order.preparing");
    }

    async fn resync_without_after_starts_with_a_snapshot_and_is_refused_over_its_bound(kind: Kind) {
        let s = Stack::start_with(kind, "[push]\nmax_snapshot_orders = 2\n");
        s.order(ACME_KEY, "rb-1", "cust-b").await;
        s.order(ACME_KEY, "rb-2", "cust-b").await;
        s.order(GLOBEX_KEY, "rb-3", "cust-g").await;
        // A partner's resync covers its own orders only (two: within the bound).
        let query = format!("subscription {{ onOrderUpdated(resync: true) {{ {FIELDS} }} }}");
        let lines = ClientProc::graphql_ws(&ws_url(&s.herald), ACME_KEY, &query, json!({}), 2)
            .events()
            .await;
        let orders: Vec<&Value> = lines.iter().map(|l| &event(l)["orderId"]).collect();
        assert_eq!(orders, [&json!("rb-1"), &json!("rb-2")]);
        assert!(lines.iter().all(|l| event(l)["type"] == "order.snapshot"));
        // The admin's covers all three: refused whole, not truncated.
        let error = ClientProc::graphql_ws(&ws_url(&s.herald), ADMIN_KEY, &query, json!({}), 1)
            .error()
            .await;
        assert_eq!(
            error[0]["extensions"]["code"], "SNAPSHOT_TOO_LARGE",
            "{error}"
        );
        assert!(
            error[0]["message"]
                .as_str()
                .unwrap_or("")
                .contains("push.max_snapshot_orders"),
            "{error}"
        );
        assert_eq!(s.metric("herald_push_snapshots_sent_total").await, 1);
        assert_eq!(s.metric("herald_push_snapshots_refused_total").await, 1);
    }
}
