//! Items 4 and 5 of issue 12, on the WebSocket side.
//!
//! Item 4: on the AppSync dialect a `start` authorized with its own token
//! (`payload.extensions.authorization`) ends when that token expires, while the connection and
//! its other subscriptions go on; a second `connection_init` is refused (close 4429), so the
//! principal the subscriptions were authorized as never changes under them.
//!
//! Item 5: a client that stops reading during an `after` replay is closed with 4008 (slow
//! consumer) within a bounded time, on both subprotocols, and the node's memory stays
//! bounded meanwhile.

use crate::common::ws::*;
use crate::common::*;
use futures_util::{StreamExt, stream};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The next JSON message that is not a keepalive (`ka`).
async fn next_message(ws: &mut Ws) -> Value {
    loop {
        let m = next(ws).await;
        if m["type"] != "ka" {
            return m;
        }
    }
}

/// An AppSync `start` of `query` authorized with its own `token`.
fn appsync_start(id: &str, query: &str, token: Option<&str>) -> Value {
    let data = json!({ "query": query }).to_string();
    let mut payload = json!({ "data": data });
    if let Some(token) = token {
        payload["extensions"] =
            json!({"authorization": {"host": "x", "Authorization": format!("Bearer {token}")}});
    }
    json!({"id": id, "type": "start", "payload": payload})
}

async fn appsync_init(ws: &mut Ws, payload: Value) {
    send(ws, json!({"type": "connection_init", "payload": payload})).await;
    assert_eq!(next_message(ws).await["type"], "connection_ack");
}

const MINE: &str = "subscription { onOrderUpdated { orderId version } }";

async fn a_start_with_its_own_token_ends_when_that_token_expires(kind: Kind) {
    let s = Stack::start_with(kind, &jwt_toml());
    let mut ws = connect(&s.herald, "graphql-ws").await;
    appsync_init(&mut ws, json!({"x-api-key": ADMIN_KEY})).await;
    // Both subscriptions are the same customer's; one token lasts 3 s, the other 10 min.
    let short = customer_token("cust-x", 3);
    let minted = Instant::now();
    let long = customer_token("cust-x", 600);
    send(&mut ws, appsync_start("short", MINE, Some(&short))).await;
    send(&mut ws, appsync_start("long", MINE, Some(&long))).await;
    let mut acks = 0;
    while acks < 2 {
        let m = next_message(&mut ws).await;
        assert_eq!(m["type"], "start_ack", "{m}");
        acks += 1;
    }
    s.publish(external_event("exp-1", "cust-x", None, 1)).await;
    let (mut short_before, mut long_events) = (0u32, 0u32);
    while short_before < 1 || long_events < 1 {
        let m = next_message(&mut ws).await;
        assert_eq!(m["type"], "data", "{m}");
        match m["id"].as_str() {
            Some("short") => short_before += 1,
            Some("long") => long_events += 1,
            _ => panic!("{m}"),
        }
    }
    // Past the short token's exp: an error for its id, then `complete`.
    let error = next_message(&mut ws).await;
    let ended_after = minted.elapsed();
    assert_eq!(
        (error["id"].as_str(), error["type"].as_str()),
        (Some("short"), Some("error")),
        "{error}"
    );
    assert_eq!(
        error["payload"]["errors"][0]["errorType"], "UnauthorizedException",
        "{error}"
    );
    assert!(
        error["payload"]["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("expired")),
        "{error}"
    );
    assert_eq!(
        next_message(&mut ws).await,
        json!({"id": "short", "type": "complete"})
    );
    // The other subscription and the connection go on; the ended one gets nothing more.
    let mut short_after = 0u32;
    s.publish(external_event("exp-1", "cust-x", None, 2)).await;
    loop {
        let m = next_message(&mut ws).await;
        assert_eq!(m["type"], "data", "{m}");
        if m["id"] == "short" {
            short_after += 1;
            continue;
        }
        assert_eq!(m["payload"]["data"]["onOrderUpdated"]["version"], 2, "{m}");
        long_events += 1;
        break;
    }
    assert_eq!(short_after, 0);
    assert_eq!(s.metric("herald_push_subscriptions_expired_total").await, 1);
    crate::figures(
        4,
        "a_start_with_its_own_token_ends_when_that_token_expires",
        json!({
            "engine": format!("{kind:?}"),
            "short_token_ttl_s": 3,
            "short_events_before_expiry": short_before,
            "short_ended_after_ms": ended_after.as_millis() as u64,
            "short_events_after_expiry": short_after,
            "long_events": long_events,
        }),
    );
}

async fn a_second_connection_init_is_refused_and_the_first_principal_stays(kind: Kind) {
    let s = Stack::start_with(kind, &jwt_toml());
    let mut refused = 0u32;
    let mut starts_as_second_principal = 0u32;
    // AppSync (start with a JSON-string payload) and legacy Apollo (object payload) alike.
    for apollo in [false, true] {
        let mut ws = connect(&s.herald, "graphql-ws").await;
        let token = customer_token("cust-a", 600);
        appsync_init(&mut ws, json!({"authorization": format!("Bearer {token}")})).await;
        // A second init with an admin key, then at once a subscription only admin may start.
        send(
            &mut ws,
            json!({"type": "connection_init", "payload": {"x-api-key": ADMIN_KEY}}),
        )
        .await;
        let foreign = "subscription { onOrderUpdated(customerId: \"cust-b\") { orderId } }";
        let start = if apollo {
            json!({"id": "b", "type": "start", "payload": {"query": foreign}})
        } else {
            appsync_start("b", foreign, None)
        };
        send(&mut ws, start).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let mut messages = Vec::new();
        let code = loop {
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    let m: Value = serde_json::from_str(&text).unwrap();
                    if m["type"] != "ka" {
                        messages.push(m);
                    }
                }
                Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_)) | None) => break None,
                Err(_) => panic!("the server kept the connection open after a second init"),
            }
        };
        assert_eq!(code, Some(4429), "{messages:?}");
        starts_as_second_principal += messages
            .iter()
            .filter(|m| m["id"] == "b" && m["type"] != "error")
            .count() as u32;
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert_eq!(messages[0]["type"], "connection_error", "{messages:?}");
        assert_eq!(
            messages[0]["payload"]["errors"][0]["errorType"],
            "TooManyInitialisationRequests"
        );
        refused += 1;
    }
    assert_eq!(starts_as_second_principal, 0);
    crate::figures(
        4,
        "a_second_connection_init_is_refused_and_the_first_principal_stays",
        json!({
            "engine": format!("{kind:?}"),
            "second_inits": 2,
            "refused_with_4429": refused,
            "subscriptions_started_as_second_principal": starts_as_second_principal,
        }),
    );
}

/// The process's resident memory in KiB (0 once it is gone).
fn rss_kib(pid: u32) -> u64 {
    vm_rss_kib(pid).unwrap_or(0)
}

/// A WebSocket client whose socket receives through a small window (8 KiB receive buffer), so
/// that once it stops reading the server's writes stall quickly.
async fn small_window_client(herald: &Herald, subprotocol: &str) -> Ws {
    let addr: std::net::SocketAddr = herald
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("herald address");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8 * 1024).unwrap();
    let stream = socket.connect(addr).await.expect("connect");
    let mut request = ws_url(herald).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", subprotocol.parse().unwrap());
    let (ws, _) =
        tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .expect("websocket upgrade");
    ws
}

const REPLAYED_EVENTS: u64 = 3_000;
const DATA_BYTES: usize = 8 * 1024;

fn big_event(n: u64) -> Value {
    let mut event = external_event(&format!("big-{}", n % 50), "cust-big", None, n);
    event["data"] = json!({"n": n, "blob": "b".repeat(DATA_BYTES)});
    event
}

async fn a_reader_that_stops_during_a_replay_is_closed_as_a_slow_consumer(kind: Kind) {
    // Keepalive deadline: 3 s (three keepalive intervals).
    let s = Stack::start_with(kind, "[push]\nkeepalive_interval = \"1s\"\n");
    let pid = s.herald.pid();
    let after = s.publish(big_event(0)).await;
    let published = stream::iter(1..REPLAYED_EVENTS)
        .map(|n| {
            let s = &s;
            async move { s.publish(big_event(n)).await }
        })
        .buffer_unordered(8)
        .count()
        .await;
    assert_eq!(published as u64, REPLAYED_EVENTS - 1);
    let rss_before = rss_kib(pid);
    let query = format!(
        "subscription {{ onOrderUpdated(customerId: \"cust-big\", after: \"{after}\") {{ eventId version data }} }}"
    );
    let mut runs = Vec::new();
    for subprotocol in ["graphql-transport-ws", "graphql-ws"] {
        let mut ws = small_window_client(&s.herald, subprotocol).await;
        if subprotocol == "graphql-ws" {
            appsync_init(&mut ws, json!({"x-api-key": ADMIN_KEY})).await;
            send(&mut ws, appsync_start("r", &query, None)).await;
        } else {
            init(&mut ws, ADMIN_KEY).await;
            send(&mut ws, sub("r", &query)).await;
        }
        // The client reads nothing from here on, while the server replays 3,000 events of
        // 8 KiB. On graphql-ws, live events for the same customer arrive meanwhile (held
        // while the replay runs).
        let started = Instant::now();
        let closes_before = s.metric("herald_push_stalled_writes_total").await
            + s.metric("herald_push_slow_consumers_total").await;
        let (mut rss_max, mut held_max) = (rss_kib(pid), 0u64);
        let live = if subprotocol == "graphql-ws" { 100 } else { 0 };
        for n in 0..live {
            s.publish(big_event(REPLAYED_EVENTS + n)).await;
            held_max = held_max.max(s.metric("herald_push_held_events").await);
        }
        loop {
            held_max = held_max.max(s.metric("herald_push_held_events").await);
            rss_max = rss_max.max(rss_kib(pid));
            let closes = s.metric("herald_push_stalled_writes_total").await
                + s.metric("herald_push_slow_consumers_total").await;
            if closes > closes_before {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{subprotocol}: a client that stopped reading during a replay was not closed in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let closed_after = started.elapsed();
        // Reading again: what the socket had taken, then the close frame with its code.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut received = 0u64;
        let code = loop {
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(Some(Ok(Message::Text(_)))) => received += 1,
                Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_)) | None) => break None,
                Err(_) => panic!("{subprotocol}: no close frame within 30 s of reading again"),
            }
        };
        assert_eq!(code, Some(4008), "{subprotocol}: slow-consumer close code");
        assert!(
            received < REPLAYED_EVENTS,
            "{subprotocol}: the replay was not cut short ({received} messages)"
        );
        // Nothing stays behind: no held event, no connection.
        eventually(
            Duration::from_secs(20),
            "the connection released",
            || async {
                (s.metric("herald_push_connections").await == 0
                    && s.metric("herald_push_held_events").await == 0)
                    .then_some(())
            },
        )
        .await;
        let rss_growth_kib = rss_max.saturating_sub(rss_before);
        assert!(
            rss_growth_kib < 256 * 1024,
            "{subprotocol}: the node grew by {rss_growth_kib} KiB while the client stalled"
        );
        runs.push(json!({
            "subprotocol": subprotocol,
            "live_events_published_during_stall": live,
            "events_held_max": held_max,
            "messages_received_before_close": received,
            "closed_after_ms": closed_after.as_millis() as u64,
            "close_code": code,
            "rss_before_kib": rss_before,
            "rss_max_kib": rss_max,
            "rss_growth_kib": rss_growth_kib,
        }));
    }
    crate::figures(
        5,
        "a_reader_that_stops_during_a_replay_is_closed_as_a_slow_consumer",
        json!({
            "engine": format!("{kind:?}"),
            "events_in_log": REPLAYED_EVENTS,
            "event_data_bytes": DATA_BYTES,
            "stalled_writes": s.metric("herald_push_stalled_writes_total").await,
            "slow_consumers": s.metric("herald_push_slow_consumers_total").await,
            "runs": runs,
        }),
    );
}

/// A connection whose socket was busy with a write when its token expired: once the write
/// goes through, the connection closes with 4403 before anything more is written, and an
/// event published after the expiry never reaches it. The client stops reading (a small
/// receive window, several MB of events queued, a queue bound large enough not to cut it off
/// as a slow consumer), the token expires, one more event is published, then the client reads
/// everything until the close.
async fn a_connection_busy_writing_at_its_token_expiry_gets_nothing_after_it(kind: Kind) {
    let toml = format!("{}\n[push]\noutbound_queue_bytes = 67108864\n", jwt_toml());
    let s = Stack::start_with(kind, &toml);
    let token = customer_token("cust-exp", 3);
    let minted = Instant::now();
    let mut ws = small_window_client(&s.herald, "graphql-transport-ws").await;
    send(
        &mut ws,
        json!({"type": "connection_init", "payload": {"authorization": format!("Bearer {token}")}}),
    )
    .await;
    assert_eq!(next(&mut ws).await["type"], "connection_ack");
    send(
        &mut ws,
        sub(
            "e",
            "subscription { onOrderUpdated { orderId version data } }",
        ),
    )
    .await;
    let big = |order: &str, n: u64| {
        let mut event = external_event(order, "cust-exp", None, n);
        event["data"] = json!({"n": n, "blob": "b".repeat(8 * 1024)});
        event
    };
    // Live: the first event arrives.
    s.publish(external_event("first", "cust-exp", None, 1))
        .await;
    assert_eq!(
        next(&mut ws).await["payload"]["data"]["onOrderUpdated"]["orderId"],
        "first"
    );
    // The client reads nothing from here until the close: the server's write stalls.
    let published = stream::iter(0..600u64)
        .map(|n| {
            let s = &s;
            let event = big(&format!("before-{}", n % 20), n + 2);
            async move { s.publish(event).await }
        })
        .buffer_unordered(8)
        .count()
        .await;
    assert_eq!(published, 600);
    // Past the token's exp (whole seconds: at most 3 s after minting), one more event.
    tokio::time::sleep(Duration::from_millis(4500).saturating_sub(minted.elapsed())).await;
    s.publish(external_event("late", "cust-exp", None, 1000))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (mut received, mut late) = (0u64, 0u64);
    let code = loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                received += 1;
                if text.contains("\"late\"") {
                    late += 1;
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) => break None,
            Err(_) => panic!("no close frame within 60 s of reading again ({received} messages)"),
        }
    };
    assert_eq!(code, Some(4403), "{received} messages before the close");
    assert_eq!(
        late, 0,
        "an event published after the token expired was delivered"
    );
}

on_both_engines!(
    a_connection_busy_writing_at_its_token_expiry_gets_nothing_after_it,
    a_start_with_its_own_token_ends_when_that_token_expires,
    a_second_connection_init_is_refused_and_the_first_principal_stays,
    a_reader_that_stops_during_a_replay_is_closed_as_a_slow_consumer,
);
