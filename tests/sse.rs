//! Server-Sent Events end to end: the real binary on both engines (Redis with its own
//! redis-server, partitioned where the cursor format matters), read by a hand-written SSE
//! reader over reqwest, by Python's `httpx-sse`, and by a real `EventSource` in headless
//! Chromium (tests/clients; `npm ci` and `pip install -r requirements.txt` there).

mod common;

use common::ws::external_event;
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// One SSE frame: its fields (the last value of each) and its comment lines.
#[derive(Debug, Default, Clone)]
struct Frame {
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
    retry: Option<String>,
    comments: Vec<String>,
}

impl Frame {
    fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().expect("a data line")).expect("JSON data")
    }

    fn is_event(&self) -> bool {
        self.data.is_some() && self.event.as_deref() != Some("error")
    }
}

/// A stream's reader: frames split on blank lines, as the SSE spec parses them.
struct Sse {
    response: reqwest::Response,
    buffer: String,
    frames: std::collections::VecDeque<Frame>,
}

fn parse_frame(text: &str) -> Frame {
    let mut frame = Frame::default();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix(':') {
            frame.comments.push(comment.trim().to_string());
            continue;
        }
        let (field, value) = line.split_once(": ").unwrap_or((line, ""));
        let value = Some(value.to_string());
        match field {
            "id" => frame.id = value,
            "event" => frame.event = value,
            "data" => frame.data = value,
            "retry" => frame.retry = value,
            other => panic!("unexpected field {other:?} in {text:?}"),
        }
    }
    frame
}

impl Sse {
    /// The next frame; `None` when the server ended the stream. Panics after 20 s of silence.
    async fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.frames.pop_front() {
                return Some(frame);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.response.chunk())
                .await
                .expect("a frame within 20 s");
            match chunk {
                Ok(Some(bytes)) => self.buffer.push_str(std::str::from_utf8(&bytes).unwrap()),
                Ok(None) | Err(_) => return None,
            }
            // Every whole frame at once, then one cut of the buffer (not one per frame).
            let mut start = 0;
            while let Some(end) = self.buffer[start..].find("\n\n") {
                self.frames
                    .push_back(parse_frame(&self.buffer[start..start + end + 2]));
                start += end + 2;
            }
            self.buffer.drain(..start);
        }
    }

    /// The next `n` event frames (comments skipped).
    async fn events(&mut self, n: usize) -> Vec<Frame> {
        let mut out = Vec::new();
        while out.len() < n {
            let frame = self.frame().await.expect("the stream ended early");
            assert_ne!(
                frame.event.as_deref(),
                Some("error"),
                "after {} events: {frame:?}",
                out.len()
            );
            if frame.is_event() {
                out.push(frame);
            }
        }
        out
    }

    /// Frames until the server ends the stream; the last one.
    async fn last_frame(&mut self) -> Option<Frame> {
        let mut last = None;
        while let Some(frame) = self.frame().await {
            last = Some(frame);
        }
        last
    }
}

/// Opens `path` with `headers`; the response when it is no stream.
async fn try_open(
    s: &Stack,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Sse, reqwest::Response> {
    let mut request = s.http.get(s.herald.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    if response.status() != StatusCode::OK {
        return Err(response);
    }
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut sse = Sse {
        response,
        buffer: String::new(),
        frames: Default::default(),
    };
    // `retry:` then `: live` open every stream; the response only comes once it is live.
    let first = sse.frame().await.expect("a first frame");
    assert_eq!(first.retry.as_deref(), Some("3000"), "{first:?}");
    let live = sse.frame().await.expect("a live comment");
    assert_eq!(live.comments, ["live"], "{live:?}");
    Ok(sse)
}

async fn open(s: &Stack, path: &str, headers: &[(&str, &str)]) -> Sse {
    match try_open(s, path, headers).await {
        Ok(sse) => sse,
        Err(r) => panic!("{path}: {} {:?}", r.status(), r.text().await),
    }
}

/// The problem a refused stream answered, checked to be problem+json with `status`.
async fn refused(s: &Stack, path: &str, headers: &[(&str, &str)], status: u16) -> Value {
    let response = match try_open(s, path, headers).await {
        Ok(_) => panic!("{path} opened a stream; expected {status}"),
        Err(r) => r,
    };
    assert_eq!(response.status().as_u16(), status, "{path}");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "{path}"
    );
    response.json().await.unwrap()
}

async fn mint(s: &Stack, credential: &str) -> String {
    let r = s
        .http
        .post(s.herald.url("/v1/stream-tokens"))
        .header("authorization", format!("Bearer {credential}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    assert!(body["expiresAt"].as_str().is_some(), "{body}");
    body["token"].as_str().unwrap().to_string()
}

fn check_frame(frame: &Frame) -> Value {
    let event = frame.json();
    assert_eq!(frame.id.as_deref(), event["eventId"].as_str(), "{frame:?}");
    assert_eq!(frame.event.as_deref(), event["type"].as_str(), "{frame:?}");
    event
}

on_both_engines!(
    one_orders_stream_replays_after_last_event_id_then_goes_live,
    the_events_stream_filters_by_customer_partner_and_type,
    refusals_are_problems_before_the_stream_starts,
    a_stream_token_opens_the_stream_for_its_principal_only,
    a_cursor_older_than_retention_is_410_before_the_stream,
    a_stream_ends_with_an_error_when_its_customer_token_expires,
    quiet_streams_get_heartbeats_and_shutdown_ends_them,
    streams_count_against_the_nodes_connection_limit,
    python_httpx_sse_client_resumes_with_last_event_id,
    browser_event_source_with_a_token_reconnects_with_last_event_id,
);

async fn one_orders_stream_replays_after_last_event_id_then_goes_live(kind: Kind) {
    let s = Stack::start(kind);
    s.order(ADMIN_KEY, "r-1", "cust-1").await;
    s.order(ADMIN_KEY, "r-2", "cust-2").await;
    let mut all = open(
        &s,
        "/v1/orders/r-1/events?lastEventId=0-0",
        &[("x-api-key", ADMIN_KEY)],
    )
    .await;
    let first = all.events(2).await;
    let types: Vec<_> = first.iter().map(|f| f.event.clone().unwrap()).collect();
    assert_eq!(types, ["order.accepted", "order.confirmed"]);
    let cursor = first[0].id.clone().unwrap();
    for f in &first {
        assert_eq!(check_frame(f)["orderId"], "r-1");
    }

    // Resumed from the first event (the header wins over the query parameter): the rest
    // replayed, then live, each once.
    let mut resumed = open(
        &s,
        "/v1/orders/r-1/events?lastEventId=0-0",
        &[("x-api-key", ADMIN_KEY), ("last-event-id", &cursor)],
    )
    .await;
    let replayed = resumed.events(1).await;
    assert_eq!(replayed[0].id, first[1].id);
    let r = s
        .post(
            "/v1/orders/r-1/transitions",
            ADMIN_KEY,
            &json!({"status": "preparing"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let live = resumed.events(1).await;
    let event = check_frame(&live[0]);
    assert_eq!(
        (event["status"].as_str(), event["version"].as_u64()),
        (Some("preparing"), Some(3))
    );
    assert_eq!(all.events(1).await[0].id, live[0].id);
}

async fn the_events_stream_filters_by_customer_partner_and_type(kind: Kind) {
    let s = Stack::start(kind);
    let mut by_type = open(
        &s,
        "/v1/events/stream?type=order.cancelled&type=order.delivered,order.shipped",
        &[("x-api-key", ADMIN_KEY)],
    )
    .await;
    let mut by_customer = open(
        &s,
        "/v1/events/stream?customerId=c-2",
        &[("x-api-key", ADMIN_KEY)],
    )
    .await;
    // A partner's stream is its own orders' whatever it asks.
    let mut acme = open(&s, "/v1/events/stream", &[("x-api-key", ACME_KEY)]).await;
    let event = |order: &str, customer: &str, partner: Option<&str>, status: &str| {
        let mut e = external_event(order, customer, partner, 3);
        e["type"] = json!(format!("order.{status}"));
        e["status"] = json!(status);
        e
    };
    s.publish(event("f-1", "c-1", None, "preparing")).await;
    s.publish(event("f-2", "c-2", Some("globex"), "shipped"))
        .await;
    s.publish(event("f-3", "c-3", Some("acme"), "cancelled"))
        .await;
    s.publish(event("f-4", "c-2", Some("acme"), "preparing"))
        .await;
    let orders = |frames: Vec<Frame>| -> Vec<String> {
        frames
            .iter()
            .map(|f| check_frame(f)["orderId"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(orders(by_type.events(2).await), ["f-2", "f-3"]);
    assert_eq!(orders(by_customer.events(2).await), ["f-2", "f-4"]);
    assert_eq!(orders(acme.events(2).await), ["f-3", "f-4"]);
}

async fn refusals_are_problems_before_the_stream_starts(kind: Kind) {
    let s = Stack::start_with(kind, &jwt_toml());
    s.order(ACME_KEY, "a-1", "cust-1").await;
    let mine = partner_customer_token("cust-1", "acme", 300);
    let other = partner_customer_token("cust-2", "acme", 300);
    let bearer = |t: &str| format!("Bearer {t}");
    // No credential, a wrong one, an API key in the URL (only stream tokens go there).
    refused(&s, "/v1/events/stream", &[], 401).await;
    refused(
        &s,
        "/v1/events/stream",
        &[("x-api-key", "nope-nope-nope-nope")],
        401,
    )
    .await;
    let problem = refused(
        &s,
        &format!("/v1/events/stream?token={ADMIN_KEY}"),
        &[],
        401,
    )
    .await;
    assert!(!problem.to_string().contains(ADMIN_KEY), "{problem}");
    refused(
        &s,
        &format!("/v1/events/stream?token={}", mint(&s, ADMIN_KEY).await),
        &[("x-api-key", ADMIN_KEY)],
        400,
    )
    .await;
    // Someone else's order, or none, is the same 404.
    refused(
        &s,
        "/v1/orders/a-1/events",
        &[("authorization", &bearer(&other))],
        404,
    )
    .await;
    refused(
        &s,
        "/v1/orders/a-1/events",
        &[("x-api-key", GLOBEX_KEY)],
        404,
    )
    .await;
    let missing = refused(
        &s,
        "/v1/orders/none/events",
        &[("x-api-key", ACME_KEY)],
        404,
    )
    .await;
    let foreign = refused(
        &s,
        "/v1/orders/a-1/events",
        &[("x-api-key", GLOBEX_KEY)],
        404,
    )
    .await;
    assert_eq!(missing, foreign, "a foreign order answers as a missing one");
    // Asking for someone else's events.
    refused(
        &s,
        "/v1/events/stream?partnerId=globex",
        &[("x-api-key", ACME_KEY)],
        403,
    )
    .await;
    refused(
        &s,
        "/v1/events/stream?customerId=cust-2",
        &[("authorization", &bearer(&mine))],
        403,
    )
    .await;
    // Bad input.
    refused(
        &s,
        "/v1/events/stream?orderId=a-1",
        &[("x-api-key", ADMIN_KEY)],
        400,
    )
    .await;
    let problem = refused(
        &s,
        "/v1/events/stream",
        &[("x-api-key", ADMIN_KEY), ("last-event-id", "yesterday")],
        400,
    )
    .await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("Last-Event-ID"),
        "{problem}"
    );
    // The rightful callers get their stream.
    open(
        &s,
        "/v1/orders/a-1/events",
        &[("authorization", &bearer(&mine))],
    )
    .await;
    open(&s, "/v1/orders/a-1/events", &[("x-api-key", ACME_KEY)]).await;
    assert!(s.metric("herald_push_sse_streams_refused_total").await >= 8);
}

async fn a_stream_token_opens_the_stream_for_its_principal_only(kind: Kind) {
    // Every log line, so none can hold the token unseen.
    let s = Stack::start_with_env(
        kind,
        "[push]\nstream_token_ttl = \"1s\"\n",
        &[("RUST_LOG", "trace")],
    );
    let token = mint(&s, ACME_KEY).await;
    let mut acme = open(&s, &format!("/v1/events/stream?token={token}"), &[]).await;
    s.publish(external_event("t-1", "c-1", Some("globex"), 3))
        .await;
    s.publish(external_event("t-2", "c-1", Some("acme"), 3))
        .await;
    assert_eq!(check_frame(&acme.events(1).await[0])["orderId"], "t-2");
    // A changed byte anywhere breaks it.
    let forged = token.replacen(".p.", ".a.", 1);
    refused(&s, &format!("/v1/events/stream?token={forged}"), &[], 401).await;
    let tail = format!("{}x", &token[..token.len() - 1]);
    refused(&s, &format!("/v1/events/stream?token={tail}"), &[], 401).await;
    // A token only opens streams for push.stream_token_ttl; the open stream goes on.
    let expired = eventually(Duration::from_secs(10), "the token expired", || async {
        let r = s
            .http
            .get(s.herald.url(&format!("/v1/events/stream?token={token}")))
            .send()
            .await
            .unwrap();
        (r.status() == StatusCode::UNAUTHORIZED).then_some(r)
    })
    .await;
    let problem: Value = expired.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("expired"),
        "{problem}"
    );
    s.publish(external_event("t-3", "c-1", Some("acme"), 3))
        .await;
    assert_eq!(check_frame(&acme.events(1).await[0])["orderId"], "t-3");
    // No log line holds a token, even at trace level (hyper and axum trace requests).
    let logs = s.herald.logs();
    assert!(logs.lines().count() > 10, "trace logging is on");
    assert!(
        !logs.contains(&token[..token.len() - 2]),
        "a log line holds the token"
    );
}

async fn a_cursor_older_than_retention_is_410_before_the_stream(kind: Kind) {
    let s = Stack::start_with(kind, "[engine]\nevent_retention = 10\n");
    for v in 0..250 {
        s.publish(external_event("x-1", "cust-1", None, v + 3))
            .await;
    }
    let problem = refused(
        &s,
        "/v1/events/stream",
        &[("x-api-key", ADMIN_KEY), ("last-event-id", "1-0")],
        410,
    )
    .await;
    assert_eq!(problem["type"], "/problems/cursor-expired", "{problem}");
}

async fn a_stream_ends_with_an_error_when_its_customer_token_expires(kind: Kind) {
    let s = Stack::start_with(kind, &jwt_toml());
    s.order(ADMIN_KEY, "e-1", "cust-1").await;
    let token = customer_token("cust-1", 2);
    // Minted from the customer token: the stream ends when that token does.
    let stream_token = mint(&s, &token).await;
    let mut sse = open(
        &s,
        &format!("/v1/orders/e-1/events?token={stream_token}"),
        &[],
    )
    .await;
    let last = sse.last_frame().await.expect("a final frame");
    assert_eq!(last.event.as_deref(), Some("error"), "{last:?}");
    let problem = last.json();
    assert_eq!(problem["type"], "/problems/credential-expired", "{problem}");
}

// The fast reader gets threads of its own: it must keep up with the publisher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_ended_and_counted_on_memory() {
    a_slow_consumer_is_ended_and_counted(Kind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_ended_and_counted_on_redis() {
    a_slow_consumer_is_ended_and_counted(Kind::Redis).await;
}

async fn a_slow_consumer_is_ended_and_counted(kind: Kind) {
    // The default push.outbound_queue_bytes (1 MiB): slack for the fast reader on a busy
    // machine; the slow one is sent far more than its queue and socket buffers hold.
    let s = Stack::start(kind);
    let mut slow = open(&s, "/v1/events/stream", &[("x-api-key", ADMIN_KEY)]).await;
    let mut fast = open(&s, "/v1/events/stream", &[("x-api-key", ADMIN_KEY)]).await;
    let n = 900;
    let reader = tokio::spawn(async move { fast.events(n).await.len() });
    let big = "y".repeat(16 * 1024);
    for v in 0..n as u64 {
        let mut e = external_event("slow-1", "cust-1", None, v + 3);
        e["data"] = json!({ "pad": big });
        s.publish(e).await;
    }
    assert_eq!(reader.await.unwrap(), n, "the fast stream got every event");
    eventually(Duration::from_secs(10), "slow stream dropped", || async {
        (s.metric("herald_push_sse_streams_dropped_total").await == 1).then_some(())
    })
    .await;
    // Reading at last, the slow client finds its stream ended, with the reason when the
    // final frame still fit.
    let last = slow.last_frame().await.expect("frames");
    if last.event.as_deref() == Some("error") {
        assert_eq!(last.json()["type"], "/problems/slow-consumer");
    }
    assert_eq!(s.metric("herald_push_sse_streams").await, 0);
}

async fn quiet_streams_get_heartbeats_and_shutdown_ends_them(kind: Kind) {
    let mut s = Stack::start_with(kind, "[push]\nsse_heartbeat_interval = \"100ms\"\n");
    let mut sse = open(&s, "/v1/events/stream", &[("x-api-key", ADMIN_KEY)]).await;
    let ping = sse.frame().await.expect("a heartbeat");
    assert_eq!(ping.comments, ["ping"]);
    assert_eq!(s.metric("herald_push_sse_streams").await, 1);
    assert!(
        s.herald.terminate(),
        "herald exits cleanly with a stream open"
    );
    assert!(
        sse.last_frame()
            .await
            .is_none_or(|f| f.comments == ["ping"])
    );
}

async fn streams_count_against_the_nodes_connection_limit(kind: Kind) {
    let s = Stack::start_with(kind, "[push]\nmax_connections = 1\n");
    let first = open(&s, "/v1/events/stream", &[("x-api-key", ADMIN_KEY)]).await;
    let r = match try_open(&s, "/v1/events/stream", &[("x-api-key", ADMIN_KEY)]).await {
        Ok(_) => panic!("a second stream opened past push.max_connections = 1"),
        Err(r) => r,
    };
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(s.metric("herald_push_connections_refused_total").await, 1);
    // The slot comes back when the stream ends.
    drop(first);
    eventually(
        Duration::from_secs(10),
        "the slot is free again",
        || async {
            try_open(&s, "/v1/events/stream", &[("x-api-key", ADMIN_KEY)])
                .await
                .ok()
        },
    )
    .await;
}

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Runs a client script to its end (bounded by its own timeout); its JSON stdout lines.
async fn run_client(mut command: Command) -> Vec<Value> {
    command
        .current_dir(clients_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot start the client: {e} (see tests/clients/README.md)"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "client failed: {stdout}");
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| json!({ "raw": l })))
        .collect()
}

/// Waits until `n` SSE streams are open (and so live) on the node.
async fn streams_open(s: &Stack, n: u64) {
    eventually(
        Duration::from_secs(20),
        "the client's stream is live",
        || async { (s.metric("herald_push_sse_streams").await == n).then_some(()) },
    )
    .await;
}

async fn python_httpx_sse_client_resumes_with_last_event_id(kind: Kind) {
    let s = Stack::start(kind);
    s.order(ADMIN_KEY, "py-1", "cust-1").await;
    let first = s.events().await;
    let cursor = first[0]["eventId"].as_str().unwrap().to_string();
    let mut c = Command::new("python3");
    c.arg("sse_client.py")
        .args(["--url", &s.herald.url("/v1/orders/py-1/events")])
        .args(["--api-key", ADMIN_KEY, "--last-event-id", &cursor])
        .args(["--count", "2", "--timeout-s", "20"]);
    let client = tokio::spawn(run_client(c));
    streams_open(&s, 1).await;
    let r = s
        .post(
            "/v1/orders/py-1/transitions",
            ADMIN_KEY,
            &json!({"status": "preparing"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let lines = client.await.unwrap();
    let statuses: Vec<_> = lines.iter().map(|l| l["data"]["status"].clone()).collect();
    assert_eq!(
        statuses,
        [json!("confirmed"), json!("preparing")],
        "{lines:?}"
    );
    for line in &lines {
        assert_eq!(line["id"], line["data"]["eventId"]);
        assert_eq!(line["event"], line["data"]["type"]);
    }
}

/// A loopback TCP proxy in front of Herald whose open connections the test can cut: a
/// network failure as a browser sees one, so its `EventSource` reconnects on its own.
struct CuttingProxy {
    addr: std::net::SocketAddr,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl CuttingProxy {
    async fn start(upstream: &str) -> CuttingProxy {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> =
            Default::default();
        let held = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                held.lock().unwrap().push(task.abort_handle());
            }
        });
        CuttingProxy {
            addr,
            conns,
            accept,
        }
    }

    /// Drops every connection made so far (both sockets close).
    fn cut(&self) {
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// The JSON lines a client appended to `path` so far.
fn lines_in(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Chromium's `EventSource` with `?token=`: live events, then, when the network drops the
/// stream, its own reconnection with `Last-Event-ID`, which resumes with no gap and no
/// duplicate (events published while it was away included).
async fn browser_event_source_with_a_token_reconnects_with_last_event_id(kind: Kind) {
    let s = Stack::start_with(
        kind,
        "[push]\nsse_retry = \"200ms\"\nsse_heartbeat_interval = \"200ms\"\n",
    );
    let proxy = CuttingProxy::start(&s.herald.base).await;
    let token = mint(&s, ADMIN_KEY).await;
    let url = format!("http://{}/v1/events/stream?token={token}", proxy.addr);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let mut c = Command::new("node");
    c.arg("sse-browser.mjs")
        .args(["--url", &url, "--count", "4", "--timeout-ms", "30000"])
        .arg("--out")
        .arg(&out);
    let client = tokio::spawn(run_client(c));
    streams_open(&s, 1).await;
    s.publish(external_event("b-1", "cust-2", None, 3)).await;
    s.publish(external_event("b-2", "cust-2", None, 3)).await;
    eventually(
        Duration::from_secs(20),
        "the browser got two events",
        || async { (lines_in(&out).len() >= 2).then_some(()) },
    )
    .await;
    proxy.cut();
    // Published while the browser is away: replayed from its Last-Event-ID.
    s.publish(external_event("b-3", "cust-2", None, 3)).await;
    eventually(
        Duration::from_secs(20),
        "the browser reconnected",
        || async { (s.metric("herald_push_sse_streams_opened_total").await >= 2).then_some(()) },
    )
    .await;
    s.publish(external_event("b-4", "cust-2", None, 3)).await;
    let lines = client.await.unwrap();
    let orders: Vec<_> = lines.iter().map(|l| l["data"]["orderId"].clone()).collect();
    assert_eq!(
        orders,
        [json!("b-1"), json!("b-2"), json!("b-3"), json!("b-4")],
        "{lines:?}"
    );
    for line in &lines {
        assert_eq!(line["id"], line["data"]["eventId"], "{line}");
        assert_eq!(line["event"], "order.preparing");
    }
    assert_eq!(lines[1]["reconnected"], false, "{lines:?}");
    assert_eq!(lines[2]["reconnected"], true, "{lines:?}");
}

/// `Last-Event-ID` across four partitions on Redis: everything published, read in two halves
/// around a reconnect, arrives exactly once (the cursor is the multi-partition token).
#[tokio::test]
async fn last_event_id_resumes_across_partitions_without_gap_or_duplicate() {
    let s = Stack::start_with(Kind::Redis, "[engine]\npartitions = 4\n");
    let n = 40u64;
    let mut first = open(&s, "/v1/events/stream", &[("x-api-key", ADMIN_KEY)]).await;
    for i in 0..n / 2 {
        s.publish(external_event(&format!("p-{i}"), "cust-1", None, 3))
            .await;
    }
    let got = first.events(10).await;
    let cursor = got.last().unwrap().id.clone().unwrap();
    // The multi-partition cursor (`c1.`...), as WebSocket `eventId`s and `after` take it.
    assert!(cursor.starts_with("c1."), "{cursor}");
    drop(first);
    for i in n / 2..n {
        s.publish(external_event(&format!("p-{i}"), "cust-1", None, 3))
            .await;
    }
    let mut second = open(
        &s,
        "/v1/events/stream",
        &[("x-api-key", ADMIN_KEY), ("last-event-id", &cursor)],
    )
    .await;
    let rest = second.events((n - 10) as usize).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for frame in got.iter().chain(&rest) {
        *seen
            .entry(check_frame(frame)["orderId"].as_str().unwrap().into())
            .or_default() += 1;
    }
    assert_eq!(seen.len() as u64, n, "no gap");
    assert!(seen.values().all(|c| *c == 1), "no duplicate: {seen:?}");
    // Nothing more is pending: a new event is the next frame.
    s.publish(external_event("p-last", "cust-1", None, 3)).await;
    assert_eq!(check_frame(&second.events(1).await[0])["orderId"], "p-last");
}

/// A stream token minted by one node opens a stream on another node of the same Redis.
#[tokio::test]
async fn nodes_on_one_redis_accept_each_others_stream_tokens() {
    let s = Stack::start(Kind::Redis);
    let other = Herald::start(HeraldOptions {
        redis_url: s.redis.as_ref().map(|r| r.url()),
        ..HeraldOptions::default()
    });
    let token = mint(&s, ACME_KEY).await;
    let r = s
        .http
        .get(other.url(&format!("/v1/events/stream?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[test]
fn the_redis_engine_refuses_to_start_without_a_stream_token_secret() {
    let redis = RedisServer::start(false);
    let output = herald_command()
        .env_remove("HERALD_PUSH__STREAM_TOKEN_SECRET")
        .env("HERALD_ADMIN_KEY", ADMIN_KEY)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--redis-url",
            &redis.url(),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("push.stream_token_secret is required"),
        "{stderr}"
    );
}

/// `?resync=true` (README "Resync"): an expired Last-Event-ID starts the stream with a
/// snapshot of the current statuses instead of a 410.
mod resync {
    use super::*;

    on_both_engines!(an_expired_last_event_id_with_resync_streams_a_snapshot_then_live_events);

    async fn an_expired_last_event_id_with_resync_streams_a_snapshot_then_live_events(kind: Kind) {
        let s = Stack::start_with(kind, "[engine]\nevent_retention = 10\n");
        s.order(ADMIN_KEY, "ss-1", "cust-s").await;
        s.order(ADMIN_KEY, "ss-2", "cust-s").await;
        s.order(ADMIN_KEY, "ss-3", "cust-other").await;
        for v in 0..250 {
            s.publish(external_event("x-1", "cust-x", None, v + 3))
                .await;
        }
        let mut stream = open(
            &s,
            "/v1/events/stream?customerId=cust-s&resync=true",
            &[("x-api-key", ADMIN_KEY), ("last-event-id", "1-0")],
        )
        .await;
        let snapshot = stream.events(2).await;
        let got: Vec<(Option<String>, Value, Value)> = snapshot
            .iter()
            .map(|f| {
                let e = f.json();
                (f.event.clone(), e["orderId"].clone(), e["version"].clone())
            })
            .collect();
        assert_eq!(
            got,
            [
                (Some("order.snapshot".into()), json!("ss-1"), json!(2)),
                (Some("order.snapshot".into()), json!("ss-2"), json!(2)),
            ]
        );
        // Both carry the live start as their id: a reconnect from it misses nothing.
        assert_eq!(snapshot[0].id, snapshot[1].id);
        let r = s
            .post(
                "/v1/orders/ss-2/transitions",
                ADMIN_KEY,
                &json!({"status": "preparing"}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let live = stream.events(1).await;
        assert_eq!(live[0].event.as_deref(), Some("order.preparing"));
        assert_eq!(live[0].json()["orderId"], "ss-2");
        assert_eq!(live[0].json()["version"], 3);
        // Without resync the same cursor is still refused; a bad resync value is a 400.
        refused(
            &s,
            "/v1/events/stream?customerId=cust-s",
            &[("x-api-key", ADMIN_KEY), ("last-event-id", "1-0")],
            410,
        )
        .await;
        let problem = refused(
            &s,
            "/v1/events/stream?resync=yes",
            &[("x-api-key", ADMIN_KEY)],
            400,
        )
        .await;
        assert!(
            problem["detail"].as_str().unwrap_or("").contains("`yes`"),
            "{problem}"
        );
    }
}
