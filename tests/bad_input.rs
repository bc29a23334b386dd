//! The bad-input suite (issue 6): every kind of hostile or broken input, sent to the real
//! binary, gets a clear error (problem+json over HTTP, a GraphQL error, a documented close
//! code over WebSocket, a message naming the key for configuration) and leaves nothing
//! half-applied: after the bad inputs the queue, status and event counts are what they were,
//! and a good request still works on the same server.
//!
//! Each test prints one `SUITE-FIGURES {...}` line (inputs tried, half-applied changes found)
//! for `RELIABILITY.md`.

mod common;

use common::ws::*;
use common::*;
use futures_util::SinkExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

const JSON: &str = "application/json";

/// The line `scripts/reliability.sh` collects.
fn figures(test: &str, inputs: usize, half_applied: usize) {
    println!(
        "SUITE-FIGURES {}",
        json!({"suite": "bad_input", "test": test, "inputs": inputs, "half_applied": half_applied})
    );
}

/// What a bad input must not change: the command queue, the event log and intake's count.
async fn ledger(s: &Stack) -> Value {
    let q = s.queue().await["commands"].clone();
    json!({
        "visible": q["visible"],
        "inFlight": q["inFlight"],
        "deadLetters": q["deadLetters"],
        "events": s.events().await.len(),
        "accepted": s.metric("herald_orders_accepted_total").await,
    })
}

/// Compares the ledger with `before`, prints the figures, then fails on any change.
async fn settle(s: &Stack, test: &str, inputs: usize, before: &Value) {
    let after = ledger(s).await;
    let half_applied = usize::from(&after != before);
    figures(test, inputs, half_applied);
    assert_eq!(&after, before, "a bad input changed the state");
}

/// Checks a problem+json answer with `status`; returns its body.
async fn problem(r: reqwest::Response, status: u16, what: &str) -> Value {
    assert_eq!(r.status().as_u16(), status, "{what}");
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert_eq!(content_type, "application/problem+json", "{what}");
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(body["status"], status, "{what}: {body}");
    assert!(body["title"].is_string(), "{what}: {body}");
    body
}

async fn post_bytes(
    s: &Stack,
    path: &str,
    content_type: Option<&str>,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> reqwest::Response {
    let mut request = s
        .http
        .post(s.herald.url(path))
        .header("x-api-key", ADMIN_KEY)
        .body(body);
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("request")
}

fn pointers(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .filter_map(|e| e["pointer"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

// ---- HTTP bodies ----

async fn http_bodies_are_refused_and_nothing_is_applied(kind: Kind) {
    let s = Stack::start(kind);
    s.order(ADMIN_KEY, "ok-0", "cust-1").await;
    let before = ledger(&s).await;
    let good = order_body("bad-0", "cust-1").to_string().into_bytes();
    let mut padded = order_body("bad-1", "cust-1");
    padded["metadata"] = json!({ "pad": "x".repeat(100 * 1024) });
    let many_items: Vec<Value> = (0..101)
        .map(|i| json!({"sku": format!("s{i}"), "quantity": 1, "unitPrice": 1}))
        .collect();
    let mut inputs = 0;

    // (what, path, content type, extra headers, body, status, pointers the answer must name)
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, &str, Option<&str>, Vec<(&str, String)>, Vec<u8>, u16, Vec<&str>)> = vec![
        ("truncated JSON", "/v1/orders", Some(JSON), vec![], br#"{"customerId":"#.to_vec(), 400, vec![]),
        ("single quotes", "/v1/orders", Some(JSON), vec![], b"{'customerId':'c'}".to_vec(), 400, vec![]),
        ("trailing garbage", "/v1/orders", Some(JSON), vec![], b"{} x".to_vec(), 400, vec![]),
        ("10,000 [", "/v1/orders", Some(JSON), vec![], "[".repeat(10_000).into_bytes(), 400, vec![]),
        ("metadata 33 levels deep (over http.max_json_depth)", "/v1/orders", Some(JSON), vec![],
            format!(r#"{{"customerId":"c","items":[{{"sku":"s","quantity":1,"unitPrice":1}}],"currency":"USD","metadata":{}1{}}}"#,
                "[".repeat(32), "]".repeat(32)).into_bytes(), 400, vec![]),
        ("4,000 nested objects", "/v1/orders", Some(JSON), vec![],
            format!("{}1{}", r#"{"metadata":"#.repeat(4000), "}".repeat(4000)).into_bytes(), 400, vec![]),
        ("invalid UTF-8 in a string", "/v1/orders", Some(JSON), vec![],
            [&br#"{"customerId":""#[..], &[0xff, 0xfe], &br#"","items":[],"currency":"USD"}"#[..]].concat(), 400, vec![]),
        ("invalid UTF-8 outside strings", "/v1/orders", Some(JSON), vec![], vec![0xc3, 0x28, b'{', b'}'], 400, vec![]),
        ("oversized body", "/v1/orders", Some(JSON), vec![], padded.to_string().into_bytes(), 413, vec![]),
        ("no content type", "/v1/orders", None, vec![], good.clone(), 415, vec![]),
        ("text/plain", "/v1/orders", Some("text/plain"), vec![], good.clone(), 415, vec![]),
        ("form", "/v1/orders", Some("application/x-www-form-urlencoded"), vec![], good.clone(), 415, vec![]),
        ("empty body", "/v1/orders", Some(JSON), vec![], Vec::new(), 400, vec![]),
        ("array body", "/v1/orders", Some(JSON), vec![], b"[]".to_vec(), 400, vec![]),
        ("null body", "/v1/orders", Some(JSON), vec![], b"null".to_vec(), 400, vec![]),
        ("unknown fields and wrong types", "/v1/orders", Some(JSON), vec![],
            json!({"orderId": "bad-2", "customerId": 5, "items": "many", "currency": "usd", "colour": true}).to_string().into_bytes(),
            400, vec!["#/customerId", "#/items", "#/currency", "#/colour"]),
        ("wrong item types", "/v1/orders", Some(JSON), vec![],
            json!({"orderId": "bad-3", "customerId": "c", "currency": "USD",
                   "items": [{"sku": 1, "quantity": "2", "unitPrice": "x", "size": "L"}, 7]}).to_string().into_bytes(),
            400, vec!["#/items/0/sku", "#/items/0/quantity", "#/items/0/unitPrice", "#/items/0/size", "#/items/1"]),
        ("number beyond f64", "/v1/orders", Some(JSON), vec![],
            br#"{"orderId":"bad-4","customerId":"c","currency":"USD","items":[{"sku":"a","quantity":1e400,"unitPrice":1}]}"#.to_vec(), 400, vec![]),
        ("integer beyond i64", "/v1/orders", Some(JSON), vec![],
            br#"{"orderId":"bad-5","customerId":"c","currency":"USD","items":[{"sku":"a","quantity":123456789012345678901234567890,"unitPrice":1}]}"#.to_vec(),
            400, vec!["#/items/0/quantity"]),
        ("negative price", "/v1/orders", Some(JSON), vec![],
            json!({"orderId": "bad-6", "customerId": "c", "currency": "USD", "items": [{"sku": "a", "quantity": 1, "unitPrice": -1}]}).to_string().into_bytes(),
            400, vec!["#/items/0/unitPrice"]),
        ("101 items", "/v1/orders", Some(JSON), vec![],
            json!({"orderId": "bad-7", "customerId": "c", "currency": "USD", "items": many_items}).to_string().into_bytes(),
            400, vec!["#/items"]),
        ("long id", "/v1/orders", Some(JSON), vec![], order_body(&"x".repeat(200), "c").to_string().into_bytes(), 400, vec!["#/orderId"]),
        ("id with a slash", "/v1/orders", Some(JSON), vec![], order_body("a/b", "c").to_string().into_bytes(), 400, vec!["#/orderId"]),
        ("control character in id", "/v1/orders", Some(JSON), vec![], order_body("bad-8", "c\u{7}").to_string().into_bytes(), 400, vec!["#/customerId"]),
        ("Idempotency-Key too long", "/v1/orders", Some(JSON), vec![("idempotency-key", "k".repeat(300))], good.clone(), 400, vec![]),
        ("unknown status", "/v1/orders/ok-0/transitions", Some(JSON), vec![], br#"{"status":"teleported"}"#.to_vec(), 400, vec!["#/status"]),
        ("status of the wrong type", "/v1/orders/ok-0/transitions", Some(JSON), vec![], br#"{"status":5,"when":"now"}"#.to_vec(), 400, vec!["#/status", "#/when"]),
        ("transition the table forbids", "/v1/orders/ok-0/transitions", Some(JSON), vec![], br#"{"status":"delivered"}"#.to_vec(), 409, vec![]),
        ("transition of a missing order", "/v1/orders/nobody/transitions", Some(JSON), vec![], br#"{"status":"cancelled"}"#.to_vec(), 404, vec![]),
        ("transition, malformed", "/v1/orders/ok-0/transitions", Some(JSON), vec![], b"{\"status\"".to_vec(), 400, vec![]),
        ("event without fields", "/v1/events", Some(JSON), vec![], br#"{"type":"order.shipped"}"#.to_vec(), 400, vec![]),
        ("event of an unknown type", "/v1/events", Some(JSON), vec![],
            json!({"type": "order.teleported", "orderId": "o", "customerId": "c", "status": "teleported", "version": 1, "occurredAt": "2026-01-01T00:00:00Z"}).to_string().into_bytes(), 400, vec![]),
        ("webhook of the wrong types", "/v1/webhooks", Some(JSON), vec![], br#"{"url":5,"eventTypes":"all"}"#.to_vec(), 400, vec![]),
    ];
    for (what, path, content_type, headers, body, status, expected) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let r = post_bytes(&s, path, content_type, &headers, body).await;
        let body = problem(r, status, what).await;
        let named = pointers(&body);
        for pointer in expected {
            assert!(
                named.iter().any(|p| p == pointer),
                "{what}: {pointer} not in {body}"
            );
        }
        inputs += 1;
    }
    assert_eq!(s.status("ok-0").await.unwrap()["version"], 2);
    for id in [
        "bad-0", "bad-1", "bad-2", "bad-3", "bad-4", "bad-5", "bad-6", "bad-7",
    ] {
        assert!(s.status(id).await.is_none(), "{id} exists");
    }
    let test = format!("http_bodies_{}", format!("{kind:?}").to_lowercase());
    settle(&s, &test, inputs, &before).await;
    s.order(ADMIN_KEY, "ok-1", "cust-1").await;
}

// ---- HTTP framing over raw TCP ----

fn addr(h: &Herald) -> String {
    h.base.trim_start_matches("http://").to_string()
}

/// Sends `request` as is and reads the answer until the server closes (or 10 s pass).
async fn raw_http(h: &Herald, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr(h)).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn http_framing_faults_get_clear_errors() {
    let s = Stack::start(Kind::Memory);
    let h = &s.herald;
    let before = ledger(&s).await;
    let key = ADMIN_KEY.as_bytes();
    let body = order_body("frame-1", "cust-1").to_string();
    let post = |extra: &[u8]| {
        [
            &b"POST /v1/orders HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-api-key: "[..],
            key,
            b"\r\ncontent-type: application/json\r\ncontent-length: ",
            body.len().to_string().as_bytes(),
            b"\r\n",
            extra,
            b"\r\n",
            body.as_bytes(),
        ]
        .concat()
    };
    let get = |path: &[u8], extra: &[u8]| {
        [
            &b"GET "[..],
            path,
            b" HTTP/1.1\r\nhost: x\r\nconnection: close\r\n",
            extra,
            b"\r\n",
        ]
        .concat()
    };
    let api_key = [&b"x-api-key: "[..], key, b"\r\n"].concat();
    let big_header = format!("x-big: {}\r\n", "a".repeat(20 * 1024));
    let many_headers: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    // (what, raw request, status, whether the answer must be problem+json)
    let cases: Vec<(&str, Vec<u8>, u16, bool)> = vec![
        ("invalid UTF-8 in the path", get(b"/v1/orders/\xff\xfe/status", &api_key), 400, false),
        ("percent-encoded invalid UTF-8 in the path", get(b"/v1/orders/%FF%FE/status", &api_key), 400, true),
        ("query parameter of the wrong type", get(b"/v1/admin/dlq?limit=lots", &api_key), 400, true),
        ("invalid UTF-8 in the API key", get(b"/v1/orders/x/status", b"x-api-key: \xff\xfe\r\n"), 401, true),
        ("invalid UTF-8 in Idempotency-Key", post(b"idempotency-key: \xff\xfe\r\n"), 400, true),
        ("invalid UTF-8 in Content-Type", [&b"POST /v1/orders HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: \xff\r\ncontent-length: 2\r\n"[..], &api_key, b"\r\n{}"].concat(), 415, true),
        ("20 KiB header", get(b"/healthz", big_header.as_bytes()), 431, false),
        ("150 headers", get(b"/healthz", many_headers.as_bytes()), 431, false),
        ("garbage request line", b"HELLO\r\n\r\n".to_vec(), 400, false),
        ("header without a colon", get(b"/healthz", b"no colon here\r\n"), 400, false),
        ("bad content-length", [&b"POST /v1/orders HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n"[..], &api_key, b"\r\n"].concat(), 400, false),
        ("unknown route", get(b"/v1/teleport", &api_key), 404, true),
        ("unknown method", [&b"BREW /v1/orders HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"[..], &api_key, b"\r\n"].concat(), 405, true),
    ];
    let mut inputs = 0;
    for (what, request, status, problem_json) in cases {
        let response = raw_http(h, &request).await;
        assert_eq!(status_of(&response), status, "{what}: {response}");
        if problem_json {
            assert!(
                response.contains("content-type: application/problem+json"),
                "{what}: {response}"
            );
        }
        inputs += 1;
    }
    assert!(s.status("frame-1").await.is_none());
    settle(&s, "http_framing", inputs, &before).await;
    s.order(ADMIN_KEY, "frame-ok", "cust-1").await;
}

/// Open descriptors of a process (Linux).
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .expect("the server's descriptors in /proc")
}

/// Trickles `head` over and over, one byte every 100 ms, on a new connection; returns once
/// the server has closed it.
async fn trickle_until_closed(h: String, head: Vec<u8>) -> Vec<u8> {
    let stream = TcpStream::connect(h).await.expect("connect");
    trickle(stream, head.iter().copied().cycle()).await
}

#[tokio::test]
async fn slow_loris_connections_are_closed_and_do_not_block_others() {
    let mut s = Stack::start_with(
        Kind::Memory,
        "[http]\nheader_read_timeout = \"1s\"\nbody_read_timeout = \"1s\"\n",
    );
    // Idle keep-alive connections close after header_read_timeout too: the client lets go
    // of them first, so no request races the server's close.
    s.http = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_millis(300))
        .timeout(Duration::from_secs(40))
        .build()
        .expect("http client");
    let s = s;
    let h = &s.herald;
    let before = ledger(&s).await;
    let baseline = open_fds(h.pid());

    // Headers trickled byte by byte, never finished.
    let head = format!(
        "POST /v1/orders HTTP/1.1\r\nhost: x\r\nx-api-key: {ADMIN_KEY}\r\nx-slow: {}",
        "a".repeat(64)
    )
    .into_bytes();
    let slow_heads: Vec<_> = (0..100)
        .map(|_| tokio::spawn(trickle_until_closed(addr(h), head.clone())))
        .collect();
    // Bodies trickled after complete headers.
    let slow_bodies: Vec<_> = (0..20)
        .map(|i| {
            let body = order_body(&format!("slow-{i}"), "cust-1").to_string();
            let head = format!(
                "POST /v1/orders HTTP/1.1\r\nhost: x\r\nx-api-key: {ADMIN_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len() + 4096
            );
            let addr = addr(h);
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.expect("connect");
                stream.write_all(head.as_bytes()).await.expect("head");
                trickle_stream(stream, body.into_bytes()).await
            })
        })
        .collect();

    // Meanwhile, ordinary requests are served.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.get("/healthz", ADMIN_KEY).await.status(),
        StatusCode::OK,
        "health while 120 slow clients are connected"
    );
    s.order(ADMIN_KEY, "loris-ok-1", "cust-1").await;

    for task in slow_heads {
        let answer = task.await.expect("slow head task");
        // The connection is closed without a response (or with a 408).
        let text = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text}"
        );
    }
    for task in slow_bodies {
        let answer = String::from_utf8_lossy(&task.await.expect("slow body task")).into_owned();
        assert_eq!(status_of(&answer), 408, "{answer}");
        assert!(
            answer.contains("application/problem+json") && answer.contains("body_read_timeout"),
            "{answer}"
        );
    }
    // Their descriptors are released.
    eventually(
        Duration::from_secs(10),
        "slow connections released",
        || async { (open_fds(h.pid()) <= baseline + 2).then_some(()) },
    )
    .await;
    for i in 0..20 {
        assert!(s.status(&format!("slow-{i}")).await.is_none());
    }
    // One order was accepted on purpose, with its two events.
    let mut expected = before.clone();
    expected["accepted"] = json!(before["accepted"].as_u64().unwrap_or(0) + 1);
    expected["events"] = json!(before["events"].as_u64().unwrap_or(0) + 2);
    settle(&s, "slow_loris", 120, &expected).await;
    s.order(ADMIN_KEY, "loris-ok-2", "cust-1").await;
}

/// Trickles `bytes` (then padding) on an open stream until the server closes it; returns what
/// the server sent.
async fn trickle_stream(stream: TcpStream, bytes: Vec<u8>) -> Vec<u8> {
    trickle(stream, bytes.into_iter().chain(std::iter::repeat(b' '))).await
}

/// Writes `bytes` one every 100 ms until the server closes the connection (at most 15 s);
/// returns what the server sent.
async fn trickle(mut stream: TcpStream, bytes: impl Iterator<Item = u8>) -> Vec<u8> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(15);
    for byte in bytes {
        assert!(
            Instant::now() < deadline,
            "the server kept a slow connection open"
        );
        if stream.write_all(&[byte]).await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    // Whatever the server sent before closing.
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut answer)).await;
    answer
}

// ---- WebSocket ----

const ALL: &str = "subscription { onOrderUpdated { orderId version } }";

/// A subscriber on a fresh connection sees the next order's events: the server still serves.
async fn good_subscriber(s: &Stack, order_id: &str) {
    let mut ws = connect(&s.herald, "graphql-transport-ws").await;
    init(&mut ws, ADMIN_KEY).await;
    send(&mut ws, sub("good", ALL)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.order(ADMIN_KEY, order_id, "cust-1").await;
    let m = next(&mut ws).await;
    assert_eq!(m["type"], "next", "{m}");
    assert_eq!(
        m["payload"]["data"]["onOrderUpdated"]["orderId"], order_id,
        "{m}"
    );
}

#[tokio::test]
async fn websocket_bad_messages_get_their_close_codes_or_errors() {
    let s = Stack::start_with(
        Kind::Memory,
        "[push]\nmax_message_bytes = 4096\nsubscribe_rate = 5\n",
    );
    let h = &s.herald;
    let before = ledger(&s).await;
    let mut inputs = 0;

    // Messages that close a graphql-transport-ws connection, after connection_init.
    let closing: Vec<(&str, Message, u16)> = vec![
        ("oversized text", Message::text("x".repeat(8 * 1024)), 1009),
        (
            "oversized binary",
            Message::binary(vec![0u8; 8 * 1024]),
            1009,
        ),
        ("binary frame", Message::binary(vec![1, 2, 3]), 4400),
        (
            "unknown message type",
            Message::text(r#"{"type":"teleport"}"#),
            4400,
        ),
        (
            "malformed JSON",
            Message::text(r#"{"type":"subscribe","#),
            4400,
        ),
        ("not an object", Message::text("[1,2,3]"), 4400),
        ("deeply nested JSON", Message::text("[".repeat(3000)), 4400),
        (
            "subscribe without an id",
            Message::text(r#"{"type":"subscribe","payload":{"query":"{x}"}}"#),
            4400,
        ),
        (
            "id of the wrong type",
            Message::text(r#"{"type":"subscribe","id":5,"payload":{"query":"{x}"}}"#),
            4400,
        ),
        (
            "payload of the wrong type",
            Message::text(r#"{"type":"subscribe","id":"a","payload":"q"}"#),
            4400,
        ),
        (
            "invalid UTF-8 text",
            Message::Frame(Frame::message(
                vec![0xff, 0xfe, 0xfd],
                OpCode::Data(Data::Text),
                true,
            )),
            1007,
        ),
        (
            "second connection_init",
            Message::text(r#"{"type":"connection_init"}"#),
            4429,
        ),
    ];
    for (what, message, code) in closing {
        let mut ws = connect(h, "graphql-transport-ws").await;
        init(&mut ws, ADMIN_KEY).await;
        ws.send(message).await.expect("send");
        assert_eq!(close_code(&mut ws).await, Some(code), "{what}");
        inputs += 1;
    }

    // Before connection_init: subscribe is refused (4401); ping is answered (the protocol
    // allows it); an oversized message is still 1009; init without credentials is 4403.
    let mut ws = connect(h, "graphql-transport-ws").await;
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(next(&mut ws).await["type"], "pong");
    send(&mut ws, json!({"id": "x", "type": "complete"})).await;
    send(&mut ws, sub("1", ALL)).await;
    assert_eq!(
        close_code(&mut ws).await,
        Some(4401),
        "subscribe before init"
    );
    let mut ws = connect(h, "graphql-transport-ws").await;
    ws.send(Message::text("y".repeat(8 * 1024))).await.unwrap();
    assert_eq!(
        close_code(&mut ws).await,
        Some(1009),
        "oversized before init"
    );
    let mut ws = connect(h, "graphql-transport-ws").await;
    send(
        &mut ws,
        json!({"type": "connection_init", "payload": {"x-api-key": "wrong-key-0000000000"}}),
    )
    .await;
    assert_eq!(close_code(&mut ws).await, Some(4403), "wrong key in init");
    let mut ws = connect(h, "graphql-transport-ws").await;
    send(&mut ws, json!({"type": "connection_init", "payload": 5})).await;
    assert_eq!(
        close_code(&mut ws).await,
        Some(4403),
        "init without credentials"
    );
    inputs += 6;

    // AppSync dialect: bad messages are answered with errors and the connection stays.
    let mut ws = connect(h, "graphql-ws").await;
    send(
        &mut ws,
        json!({"type": "start", "id": "early", "payload": {"data": ALL_JSON_STRING}}),
    )
    .await;
    let m = next(&mut ws).await;
    assert_eq!(
        (m["type"].as_str(), m["id"].as_str()),
        (Some("error"), Some("early")),
        "{m}"
    );
    send(
        &mut ws,
        json!({"type": "connection_init", "payload": {"x-api-key": ADMIN_KEY}}),
    )
    .await;
    assert_eq!(next(&mut ws).await["type"], "connection_ack");
    assert_eq!(next(&mut ws).await["type"], "ka");
    for (what, text, error_type) in [
        (
            "unknown type",
            r#"{"type":"teleport"}"#,
            "UnsupportedOperation",
        ),
        ("malformed JSON", r#"{"type":"#, "BadRequestException"),
        (
            "nested JSON",
            &"[".repeat(3000) as &str,
            "BadRequestException",
        ),
        (
            "start without an id",
            r#"{"type":"start","payload":{}}"#,
            "BadRequestException",
        ),
    ] {
        ws.send(Message::text(text)).await.unwrap();
        let m = next(&mut ws).await;
        assert_eq!(m["type"], "error", "{what}: {m}");
        assert_eq!(
            m["payload"]["errors"][0]["errorType"], error_type,
            "{what}: {m}"
        );
        inputs += 1;
    }
    send(
        &mut ws,
        json!({"type": "start", "id": "d1", "payload": {"data": "{not json", "extensions": {}}}),
    )
    .await;
    let m = next(&mut ws).await;
    assert_eq!(
        (m["type"].as_str(), m["id"].as_str()),
        (Some("error"), Some("d1")),
        "{m}"
    );
    inputs += 2;
    // Binary frames close graphql-ws connections too.
    ws.send(Message::binary(vec![0u8; 3])).await.unwrap();
    assert_eq!(
        close_code(&mut ws).await,
        Some(4400),
        "binary on graphql-ws"
    );
    inputs += 1;

    // A flood of subscribes: beyond push.subscribe_rate each is refused with RATE_LIMITED,
    // and the connection carries on.
    let mut ws = connect(h, "graphql-transport-ws").await;
    init(&mut ws, ADMIN_KEY).await;
    for i in 0..40 {
        send(&mut ws, sub(&format!("f{i}"), ALL)).await;
    }
    send(&mut ws, json!({"type": "ping", "payload": {"end": true}})).await;
    let mut refused = 0;
    loop {
        let m = next(&mut ws).await;
        if m["type"] == "pong" {
            break;
        }
        assert_eq!(m["type"], "error", "{m}");
        assert_eq!(m["payload"][0]["extensions"]["code"], "RATE_LIMITED", "{m}");
        refused += 1;
    }
    assert!(refused >= 1, "no subscribe of 40 was rate limited");
    assert_eq!(s.metric("herald_push_rate_limited_total").await, refused);
    inputs += 40;
    // A flood of pings: every one answered, in order, and the connection still subscribes.
    for i in 0..2000 {
        send(&mut ws, json!({"type": "ping", "payload": {"n": i}})).await;
    }
    for i in 0..2000 {
        let m = next(&mut ws).await;
        assert_eq!(m, json!({"type": "pong", "payload": {"n": i}}));
    }
    // WebSocket-level pings too.
    for _ in 0..2000 {
        ws.send(Message::Ping(vec![7u8; 8].into())).await.unwrap();
    }
    inputs += 4000;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    send(&mut ws, sub("after-flood", ALL)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.order(ADMIN_KEY, "ws-flood-ok", "cust-1").await;
    loop {
        let m = next(&mut ws).await;
        if m["type"] == "next" && m["id"] == "after-flood" {
            break;
        }
        assert_ne!(m["type"], "error", "{m}");
    }
    drop(ws);

    // Handshakes: no subprotocol, an unknown one, no upgrade, a wrong version, no key.
    let upgrade = |protocol: Option<&str>, version: &str, key: bool| {
        let mut r = s
            .http
            .get(h.url("/graphql"))
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", version);
        if key {
            r = r.header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        }
        if let Some(p) = protocol {
            r = r.header("sec-websocket-protocol", p);
        }
        r.send()
    };
    problem(
        upgrade(None, "13", true).await.unwrap(),
        400,
        "no subprotocol",
    )
    .await;
    problem(
        upgrade(Some("mqtt, wamp"), "13", true).await.unwrap(),
        400,
        "unknown subprotocol",
    )
    .await;
    problem(
        upgrade(Some("graphql-ws"), "8", true).await.unwrap(),
        400,
        "version 8",
    )
    .await;
    problem(
        upgrade(Some("graphql-ws"), "13", false).await.unwrap(),
        400,
        "no key",
    )
    .await;
    problem(
        s.http.get(h.url("/graphql")).send().await.unwrap(),
        426,
        "no upgrade",
    )
    .await;
    let mut request = ws_url(h).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "mqtt".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 400),
        other => panic!("expected 400, got {other:?}"),
    }
    inputs += 6;

    // Nothing of the refused connections remains: only the good subscription below is live.
    eventually(
        Duration::from_secs(10),
        "refused connections gone",
        || async {
            (s.metric("herald_push_connections").await == 0
                && s.metric("herald_push_subscriptions").await == 0)
                .then_some(())
        },
    )
    .await;
    let mut expected = before.clone();
    expected["accepted"] = json!(before["accepted"].as_u64().unwrap_or(0) + 1);
    expected["events"] = json!(before["events"].as_u64().unwrap_or(0) + 2);
    settle(&s, "websocket", inputs, &expected).await;
    good_subscriber(&s, "ws-ok").await;
}

/// `ALL` as AppSync's JSON-string `payload.data`.
const ALL_JSON_STRING: &str =
    r#"{"query":"subscription { onOrderUpdated { orderId version } }","variables":{}}"#;

// ---- GraphQL documents ----

/// Bad documents for one operation type: (what, document, variables, error code).
fn bad_documents(op: &str, root: &str) -> Vec<(String, String, Value, &'static str)> {
    let wide = format!("{op} {{ {root} {{ {} }} }}", "version ".repeat(25));
    let aliased: String = (0..6).map(|i| format!("a{i}: version ")).collect();
    let aliased = format!("{op} {{ {root} {{ {aliased} }} }}");
    let big = format!("{op} {{ {root} {{ version }} }} #{}", "x".repeat(3000));
    let deep = format!(
        "{op} {{ {root} {{ {} version {} }} }}",
        "a { ".repeat(300),
        "} ".repeat(300)
    );
    let mut fragments = format!("{op} {{ {root} {{ ...F0 }} }}\n");
    let on = if op == "query" { "Order" } else { "OrderEvent" };
    for i in 0..12 {
        fragments.push_str(&format!(
            "fragment F{i} on {on} {{ ...F{} ...F{} }}\n",
            i + 1,
            i + 1
        ));
    }
    fragments.push_str(&format!("fragment F12 on {on} {{ version }}\n"));
    let many: String = (0..40)
        .map(|i| format!("{op} O{i} {{ {root} {{ version }} }}\n"))
        .collect();
    let vars_root = if op == "query" {
        ("order(orderId: $id)", "$id: ID!")
    } else {
        ("onOrderUpdated(orderId: $id)", "$id: ID!")
    };
    let with_var = format!("{op}({}) {{ {} {{ version }} }}", vars_root.1, vars_root.0);
    vec![
        ("wide".into(), wide, json!({}), "LIMIT_EXCEEDED"),
        ("aliased".into(), aliased, json!({}), "LIMIT_EXCEEDED"),
        ("oversized".into(), big, json!({}), "LIMIT_EXCEEDED"),
        ("deep".into(), deep, json!({}), "GRAPHQL_PARSE_FAILED"),
        (
            "exponential fragments".into(),
            fragments,
            json!({}),
            "LIMIT_EXCEEDED",
        ),
        (
            "unknown field".into(),
            format!("{op} {{ {root} {{ colour }} }}"),
            json!({}),
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            "unknown root".into(),
            format!("{op} {{ teleport {{ version }} }}"),
            json!({}),
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            "syntax error".into(),
            format!("{op} {{ {root} {{ version }}"),
            json!({}),
            "GRAPHQL_PARSE_FAILED",
        ),
        (
            "empty document".into(),
            String::new(),
            json!({}),
            "GRAPHQL_PARSE_FAILED",
        ),
        (
            "many operations, none named".into(),
            many,
            json!({}),
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            "mutation".into(),
            "mutation { teleport }".into(),
            json!({}),
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            "introspection".into(),
            "{ __schema { types { name } } }".into(),
            json!({}),
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            "missing required variable".into(),
            with_var.clone(),
            json!({}),
            "BAD_USER_INPUT",
        ),
        (
            "variable of the wrong type".into(),
            with_var.clone(),
            json!({"id": {"x": [1]}}),
            "BAD_USER_INPUT",
        ),
        (
            "null for a required variable".into(),
            with_var,
            json!({"id": null}),
            "BAD_USER_INPUT",
        ),
    ]
}

#[tokio::test]
async fn graphql_documents_over_the_limits_or_invalid_get_graphql_errors() {
    let s = Stack::start_with(
        Kind::Memory,
        "[push]\nsubscribe_rate = 1000\n[graphql]\nmax_document_bytes = 2048\nmax_fields = 20\nmax_aliases = 5\n",
    );
    let h = &s.herald;
    s.order(ADMIN_KEY, "gql-1", "cust-1").await;
    let before = ledger(&s).await;
    let mut inputs = 0;

    // POST /graphql: 200 with errors for documents, 4xx for bodies that are not requests.
    let post = |body: Vec<u8>, content_type: &str| {
        s.http
            .post(h.url("/graphql"))
            .header("x-api-key", ADMIN_KEY)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    for (what, query, variables, code) in bad_documents("query", "order(orderId: \"gql-1\")") {
        let body = json!({"query": query, "variables": variables})
            .to_string()
            .into_bytes();
        let r = post(body, JSON).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{what}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["errors"][0]["extensions"]["code"], code,
            "{what}: {body}"
        );
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        inputs += 1;
    }
    let ok_query = json!({"query": "{ order(orderId: \"gql-1\") { status } }"}).to_string();
    for (what, body, content_type, status) in [
        ("malformed JSON", b"{\"query\":".to_vec(), JSON, 400),
        ("nested JSON", "[".repeat(10_000).into_bytes(), JSON, 400),
        (
            "query of the wrong type",
            br#"{"query":5}"#.to_vec(),
            JSON,
            400,
        ),
        (
            "variables of the wrong type",
            br#"{"query":"{ order(orderId: \"x\") { status } }","variables":[1]}"#.to_vec(),
            JSON,
            400,
        ),
        ("empty body", Vec::new(), JSON, 400),
        ("invalid UTF-8", vec![b'{', 0xff, b'}'], JSON, 400),
        (
            "wrong content type",
            ok_query.clone().into_bytes(),
            "text/plain",
            415,
        ),
        (
            "oversized body",
            json!({"query": "x".repeat(70 * 1024)})
                .to_string()
                .into_bytes(),
            JSON,
            413,
        ),
        (
            "unknown operation name",
            br#"{"query":"query A { order(orderId: \"x\") { status } }","operationName":"B"}"#
                .to_vec(),
            JSON,
            200,
        ),
        (
            "subscription over POST",
            json!({"query": ALL}).to_string().into_bytes(),
            JSON,
            200,
        ),
    ] {
        let r = post(body, content_type).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{what}");
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert!(body["errors"][0]["message"].is_string(), "{what}: {body}");
        inputs += 1;
    }

    // Over WebSocket: each bad subscribe gets an error for its id; the connection carries on.
    let mut ws = connect(h, "graphql-transport-ws").await;
    init(&mut ws, ADMIN_KEY).await;
    let cases = bad_documents("subscription", "onOrderUpdated");
    let invalid = cases.len() as u64;
    for (i, (what, query, variables, code)) in cases.into_iter().enumerate() {
        let id = format!("d{i}");
        send(&mut ws, json!({"id": id, "type": "subscribe", "payload": {"query": query, "variables": variables}})).await;
        let m = next(&mut ws).await;
        assert_eq!(
            (m["type"].as_str(), m["id"].as_str()),
            (Some("error"), Some(id.as_str())),
            "{what}: {m}"
        );
        assert_eq!(m["payload"][0]["extensions"]["code"], code, "{what}: {m}");
        inputs += 1;
    }
    send(
        &mut ws,
        sub("q", "{ order(orderId: \"gql-1\") { status } }"),
    )
    .await;
    let m = next(&mut ws).await;
    assert_eq!(m["payload"][0]["extensions"]["code"], "BAD_REQUEST", "{m}");
    inputs += 1;
    assert_eq!(
        s.metric("herald_push_invalid_documents_total").await,
        invalid
    );
    assert_eq!(s.metric("herald_push_subscriptions").await, 0);

    settle(&s, "graphql", inputs, &before).await;
    // The same connection still subscribes, and the query still answers.
    send(&mut ws, sub("good", ALL)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.order(ADMIN_KEY, "gql-2", "cust-1").await;
    let m = next(&mut ws).await;
    assert_eq!(
        (m["type"].as_str(), m["id"].as_str()),
        (Some("next"), Some("good")),
        "{m}"
    );
    let r: Value = post(ok_query.into_bytes(), JSON)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["data"]["order"]["status"], "CONFIRMED", "{r}");
}

#[tokio::test]
async fn graphql_depth_limit_is_configurable() {
    let s = Stack::start_with(Kind::Memory, "[graphql]\nmax_depth = 1\n");
    let r: Value = s
        .http
        .post(s.herald.url("/graphql"))
        .header("x-api-key", ADMIN_KEY)
        .json(&json!({"query": "{ order(orderId: \"x\") { status } }"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        r["errors"][0]["extensions"]["code"], "LIMIT_EXCEEDED",
        "{r}"
    );
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("deeper than 1"),
        "{r}"
    );
    let mut ws = connect(&s.herald, "graphql-transport-ws").await;
    init(&mut ws, ADMIN_KEY).await;
    send(&mut ws, sub("1", ALL)).await;
    let m = next(&mut ws).await;
    assert_eq!(
        m["payload"][0]["extensions"]["code"], "LIMIT_EXCEEDED",
        "{m}"
    );
    figures("graphql_depth", 2, 0);
}

// ---- stream entries written by other programs ----

#[tokio::test]
async fn foreign_stream_entries_are_set_aside_and_readers_keep_going() {
    let s = Stack::start(Kind::Redis);
    let redis = s.redis.as_ref().expect("redis");
    let mut conn = redis.conn();
    let stream = "herald:{p0}:events";
    let mut ws = connect(&s.herald, "graphql-transport-ws").await;
    init(&mut ws, ADMIN_KEY).await;
    send(
        &mut ws,
        sub(
            "all",
            "subscription { onOrderUpdated { eventId orderId version } }",
        ),
    )
    .await;
    eventually(Duration::from_secs(10), "subscription live", || async {
        (s.metric("herald_push_subscriptions").await == 1).then_some(())
    })
    .await;
    let before = ledger(&s).await;

    let event = |f: &dyn Fn(&mut Value)| {
        let mut e = external_event("ext-1", "cust-1", None, 3);
        f(&mut e);
        e.to_string().into_bytes()
    };
    let huge = vec![b'x'; 1024 * 1024];
    let entries: Vec<(&str, &str, Vec<u8>)> = vec![
        ("no event field", "other", b"x".to_vec()),
        ("not JSON", "event", b"not json".to_vec()),
        ("empty", "event", Vec::new()),
        ("JSON array", "event", b"[]".to_vec()),
        ("deeply nested", "event", "[".repeat(10_000).into_bytes()),
        ("invalid UTF-8", "event", vec![0xc3, 0x28]),
        ("huge", "event", huge),
        (
            "orderId of the wrong type",
            "event",
            event(&|e| e["orderId"] = json!(5)),
        ),
        (
            "version as a string",
            "event",
            event(&|e| e["version"] = json!("three")),
        ),
        (
            "negative version",
            "event",
            event(&|e| e["version"] = json!(-1)),
        ),
        (
            "unknown type and status",
            "event",
            event(&|e| {
                e["type"] = json!("order.teleported");
                e["status"] = json!("teleported");
            }),
        ),
        (
            "type that does not match the status",
            "event",
            event(&|e| e["type"] = json!("order.shipped")),
        ),
        (
            "bad timestamp",
            "event",
            event(&|e| e["occurredAt"] = json!("yesterday")),
        ),
        (
            "empty orderId",
            "event",
            event(&|e| e["orderId"] = json!("")),
        ),
        (
            "missing customerId",
            "event",
            event(&|e| {
                if let Some(o) = e.as_object_mut() {
                    o.remove("customerId");
                }
            }),
        ),
    ];
    let inputs = entries.len();
    for (_, field, value) in &entries {
        let _: String = ::redis::cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg(*field)
            .arg(value.as_slice())
            .query(&mut conn)
            .expect("XADD");
    }
    let good: String = ::redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg("event")
        .arg(external_event("ext-ok", "cust-1", None, 3).to_string())
        .query(&mut conn)
        .expect("XADD");

    // The subscriber's next event is the valid one.
    let m = next(&mut ws).await;
    assert_eq!(m["type"], "next", "{m}");
    assert_eq!(
        m["payload"]["data"]["onOrderUpdated"]["eventId"],
        good.as_str(),
        "{m}"
    );
    eventually(
        Duration::from_secs(10),
        "every bad entry counted",
        || async {
            (s.metric("herald_events_malformed_total").await == inputs as u64).then_some(())
        },
    )
    .await;
    let aside: Value = s
        .get("/v1/admin/events/malformed", ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    let aside = aside["entries"].as_array().cloned().unwrap_or_default();
    assert_eq!(aside.len(), inputs, "{aside:?}");
    for entry in &aside {
        assert!(
            entry["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{entry}"
        );
        assert!(
            entry["raw"].as_str().is_some_and(|r| r.len() <= 9 * 1024),
            "a huge entry is kept whole"
        );
    }
    // The log reader (GET /v1/events) skips them too; nothing else changed.
    let events = s.events().await;
    assert_eq!(
        events.last().map(|e| e["eventId"].clone()),
        Some(json!(good))
    );
    let mut expected = before.clone();
    expected["events"] = json!(before["events"].as_u64().unwrap_or(0) + 1);
    settle(&s, "stream_entries", inputs, &expected).await;
    // Orders still flow to the subscriber.
    s.order(ADMIN_KEY, "ext-2", "cust-1").await;
    let m = next(&mut ws).await;
    assert_eq!(
        m["payload"]["data"]["onOrderUpdated"]["orderId"], "ext-2",
        "{m}"
    );
}

// ---- configuration ----

/// Runs `herald serve` with `config` (TOML text, or a path when `path` is set) and `env`;
/// returns (exit success, stdout, stderr). Panics if it is still running after 15 s.
fn serve_with(
    config: Option<&str>,
    path: Option<&std::path::Path>,
    env: &[(&str, &str)],
) -> (bool, String, String) {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let mut cmd = herald_command();
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(text) = config {
        std::fs::write(file.path(), text).expect("write config");
        cmd.arg("--config").arg(file.path());
    }
    if let Some(path) = path {
        cmd.arg("--config").arg(path);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start herald");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let output = child.wait_with_output().expect("output");
            return (
                status.success(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("herald kept running with a bad configuration: {config:?} {env:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (config text, config path, environment, text the error must contain)
type ConfigCase<'a> = (
    Option<&'a str>,
    Option<&'a std::path::Path>,
    Vec<(&'a str, &'a str)>,
    &'a str,
);

#[test]
fn bad_configuration_stops_start_up_before_listening() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.toml");
    let cases: Vec<ConfigCase> = vec![
        (Some("colour = \"red\"\n"), None, vec![], "colour"),
        (
            Some("[http]\nheader_timeout = \"1s\"\n"),
            None,
            vec![],
            "header_timeout",
        ),
        (
            Some("[http]\nheader_read_timeout = \"soon\"\n"),
            None,
            vec![],
            "http.header_read_timeout",
        ),
        (
            Some("[queue]\nvisibility_timeout = 30\n"),
            None,
            vec![],
            "queue.visibility_timeout",
        ),
        (
            Some("[http]\nbody_read_timeout = \"0s\"\n"),
            None,
            vec![],
            "http.body_read_timeout",
        ),
        (
            Some("[webhooks]\nallow_networks = [\"10.0.0.0/33\"]\n"),
            None,
            vec![],
            "webhooks.allow_networks",
        ),
        (
            Some("[webhooks]\nallow_networks = [\"not a network\"]\n"),
            None,
            vec![],
            "webhooks.allow_networks",
        ),
        (
            Some("[push]\nmax_connections = -1\n"),
            None,
            vec![],
            "push.max_connections",
        ),
        (
            Some("[http]\nmax_body_bytes = -10\n"),
            None,
            vec![],
            "http.max_body_bytes",
        ),
        (
            Some("[http]\nmax_header_bytes = 10\n"),
            None,
            vec![],
            "http.max_header_bytes",
        ),
        (
            Some("[graphql]\nmax_depth = 0\n"),
            None,
            vec![],
            "graphql.max_depth",
        ),
        (
            Some("[graphql]\nmax_aliases = -3\n"),
            None,
            vec![],
            "graphql.max_aliases",
        ),
        (
            Some("[push]\nmax_message_bytes = 0\n"),
            None,
            vec![],
            "push.max_message_bytes",
        ),
        (
            Some("[webhooks]\njitter = 1.5\n"),
            None,
            vec![],
            "webhooks.jitter",
        ),
        (
            Some("[engine]\nkind = \"mongodb\"\n"),
            None,
            vec![],
            "engine.kind",
        ),
        (Some("listen = \"nowhere\"\n"), None, vec![], "listen"),
        (
            Some("[http\nmax_body_bytes = 1\n"),
            None,
            vec![],
            "parsing config file",
        ),
        (None, Some(&missing), vec![], "reading config file"),
        (None, Some(dir.path()), vec![], "reading config file"),
        (
            None,
            None,
            vec![("HERALD_HTTP__MAX_HEADER_BYTES", "lots")],
            "http.max_header_bytes",
        ),
        (
            None,
            None,
            vec![("HERALD_PUSH__KEEPALIVE_INTERVAL", "-5s")],
            "push.keepalive_interval",
        ),
        (
            None,
            None,
            vec![("HERALD_ADMIN_KEY", "short")],
            "16 characters",
        ),
    ];
    let inputs = cases.len();
    for (config, path, env, needle) in cases {
        let (ok, stdout, stderr) = serve_with(config, path, &env);
        assert!(!ok, "{config:?} {env:?}: exited successfully");
        assert!(!stdout.contains("listening on"), "{config:?}: {stdout}");
        assert!(stderr.contains("herald: error:"), "{config:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{config:?} {env:?}: `{needle}` not in {stderr}"
        );
    }
    figures("config", inputs, 0);
}

on_both_engines!(http_bodies_are_refused_and_nothing_is_applied);
