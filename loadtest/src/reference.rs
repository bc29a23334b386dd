//! `herald-loadtest reference`: a minimal broadcast WebSocket server, the ceiling Herald's
//! fan-out is compared with in the same run. It speaks just enough of both subscription
//! dialects for the load client (graphql-transport-ws: `connection_init` -> `connection_ack`,
//! `subscribe`, `ping` -> `pong`; AppSync: `connection_init` -> `connection_ack`, `start` ->
//! `start_ack`), and has none of Herald's work: no GraphQL parsing, no auth, no Redis, no
//! filters beyond one orderId.
//!
//! It must be honestly fast, not a strawman:
//! - Events arrive as text frames on one WebSocket, `GET /publish`. Each event's outgoing frame
//!   is built once (the payload serialised once, spliced into each dialect's envelope; every
//!   subscription has id "1"), and the same bytes are queued to every subscriber.
//! - Broadcast subscribers are sharded over one fan-out task per core; a subscription with an
//!   `o` variable (`onOrderUpdated(orderId: $o)`) is routed by orderId through a HashMap.
//! - Each connection has one task and a bounded queue of frames: it feeds what is queued, then
//!   flushes once. A subscriber whose queue is full is closed with 4008, as Herald closes slow
//!   consumers, so a stalled client cannot slow the rest.
//! - Small socket buffers (tokio-tungstenite's read buffer defaults to 128 KiB per socket).

use crate::ws::ws_config;
use anyhow::Context;
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

#[derive(Args, Debug)]
pub struct ReferenceArgs {
    /// Address to listen on (port 0: any free port; the chosen one is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,

    /// Frames queued towards one subscriber before it is closed with 4008 (slow consumer).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    queue_frames: u32,

    /// Broadcast fan-out tasks (default: one per core).
    #[arg(long)]
    fanout_tasks: Option<usize>,

    /// Read buffer per socket (bytes). Subscribers only send a few small messages.
    #[arg(long, default_value_t = 2048)]
    read_buffer: usize,

    /// Write buffer per socket (bytes): frames are fed into it and written out when it fills or
    /// on the flush after each batch.
    #[arg(long, default_value_t = 4096)]
    write_buffer: usize,
}

/// Frames per write batch: feed up to this many queued frames, then one flush.
const WRITE_BATCH: usize = 64;
/// Events queued towards one broadcast shard task.
const SHARD_QUEUE: usize = 1024;
const SLOW_CONSUMER: u16 = 4008;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dialect {
    TransportWs,
    AppSync,
}

/// One event's outgoing frame in each dialect, built once and shared by every subscriber.
#[derive(Clone)]
struct Frames {
    transport_ws: Utf8Bytes,
    appsync: Utf8Bytes,
}

impl Frames {
    fn for_dialect(&self, d: Dialect) -> Utf8Bytes {
        match d {
            Dialect::TransportWs => self.transport_ws.clone(),
            Dialect::AppSync => self.appsync.clone(),
        }
    }
}

/// The fields of a published event the reference uses; the rest is ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    order_id: String,
    #[serde(default)]
    version: Value,
    #[serde(default)]
    data: Option<Value>,
}

/// Builds the `next` / `data` frames of an event, or `None` if it is not an event.
fn frames_of(event_json: &str) -> Option<(String, Frames)> {
    let ev: Event = serde_json::from_str(event_json).ok()?;
    // `data` is exposed as a JSON string, as Herald's schema does.
    let data = ev.data.as_ref().map(Value::to_string);
    let payload = json!({
        "data": { "onOrderUpdated": { "orderId": ev.order_id, "version": ev.version, "data": data } }
    })
    .to_string();
    let frames = Frames {
        transport_ws: format!(r#"{{"id":"1","type":"next","payload":{payload}}}"#).into(),
        appsync: format!(r#"{{"type":"data","id":"1","payload":{payload}}}"#).into(),
    };
    Some((ev.order_id, frames))
}

struct Subscriber {
    tx: mpsc::Sender<Utf8Bytes>,
    /// Told to close the connection (4008) when its queue is full.
    kill: Arc<Notify>,
    dialect: Dialect,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    events: AtomicU64,
    bad_events: AtomicU64,
    deliveries: AtomicU64,
    slow_closed: AtomicU64,
}

/// A broadcast shard: its fan-out task's queue and its subscribers.
struct Shard {
    events: mpsc::Sender<Frames>,
    subscribers: Arc<Mutex<Vec<Subscriber>>>,
}

struct Hub {
    shards: Vec<Shard>,
    next_shard: AtomicUsize,
    broadcast_subscribers: AtomicUsize,
    by_order: Mutex<HashMap<String, Vec<Subscriber>>>,
    queue_frames: usize,
    counters: Counters,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking holder cannot leave a subscriber list half-updated in a way that matters.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    fn register(&self, sub: Subscriber, order: Option<String>) {
        match order {
            Some(order) => lock(&self.by_order).entry(order).or_default().push(sub),
            None => {
                let i = self.next_shard.fetch_add(1, Ordering::Relaxed) % self.shards.len();
                lock(&self.shards[i].subscribers).push(sub);
                self.broadcast_subscribers.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    async fn publish(&self, event_json: &str) {
        let Some((order, frames)) = frames_of(event_json) else {
            self.counters.bad_events.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.counters.events.fetch_add(1, Ordering::Relaxed);
        {
            let mut by_order = lock(&self.by_order);
            if let Some(subs) = by_order.get_mut(&order) {
                self.deliver(subs, &frames);
                if subs.is_empty() {
                    by_order.remove(&order);
                }
            }
        }
        if self.broadcast_subscribers.load(Ordering::Relaxed) > 0 {
            for shard in &self.shards {
                // Back-pressure on the publisher if a shard falls behind.
                let _ = shard.events.send(frames.clone()).await;
            }
        }
    }

    /// Queues the frame to every subscriber in `subs`, dropping those gone and closing (4008)
    /// those whose queue is full. Returns how many left.
    fn deliver(&self, subs: &mut Vec<Subscriber>, frames: &Frames) -> usize {
        let before = subs.len();
        let mut delivered = 0;
        subs.retain(|s| match s.tx.try_send(frames.for_dialect(s.dialect)) {
            Ok(()) => {
                delivered += 1;
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                s.kill.notify_one();
                self.counters.slow_closed.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        self.counters
            .deliveries
            .fetch_add(delivered, Ordering::Relaxed);
        before - subs.len()
    }
}

/// One broadcast shard: its subscribers get every event, in order.
async fn fanout_shard(hub: Arc<Hub>, shard: usize, mut rx: mpsc::Receiver<Frames>) {
    let subs = hub.shards[shard].subscribers.clone();
    while let Some(frames) = rx.recv().await {
        let left = hub.deliver(&mut lock(&subs), &frames);
        if left > 0 {
            hub.broadcast_subscribers.fetch_sub(left, Ordering::Relaxed);
        }
    }
}

pub async fn run(args: ReferenceArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let tasks = args
        .fanout_tasks
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1);
    let mut receivers = Vec::new();
    let mut shards = Vec::new();
    for _ in 0..tasks {
        let (tx, rx) = mpsc::channel(SHARD_QUEUE);
        shards.push(Shard {
            events: tx,
            subscribers: Arc::new(Mutex::new(Vec::new())),
        });
        receivers.push(rx);
    }
    let hub = Arc::new(Hub {
        shards,
        next_shard: AtomicUsize::new(0),
        broadcast_subscribers: AtomicUsize::new(0),
        by_order: Mutex::new(HashMap::new()),
        queue_frames: args.queue_frames as usize,
        counters: Counters::default(),
    });
    for (i, rx) in receivers.into_iter().enumerate() {
        tokio::spawn(fanout_shard(hub.clone(), i, rx));
    }
    tokio::spawn(report(hub.clone()));
    let config = ws_config(args.read_buffer).write_buffer_size(args.write_buffer);

    println!("listening on ws://{addr}");
    let _ = std::io::stdout().flush();
    eprintln!(
        "reference: subscribers on ws://{addr}/graphql, events on ws://{addr}/publish, \
         {tasks} fan-out tasks, queue {} frames",
        args.queue_frames
    );
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: wait a little instead of spinning.
                eprintln!("reference: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(connection(tcp, hub.clone(), config));
    }
}

/// Which endpoint and dialect an upgrade request asked for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Publish,
    Subscribe(Dialect),
}

/// `/publish`, or `/graphql` (alias `/graphql/realtime`) with one of the two subprotocols
/// (graphql-transport-ws preferred when both are offered).
fn route(path: &str, subprotocols: &[&str]) -> Result<Route, (StatusCode, &'static str)> {
    match path {
        "/publish" => Ok(Route::Publish),
        "/graphql" | "/graphql/realtime" => {
            if subprotocols.contains(&"graphql-transport-ws") {
                Ok(Route::Subscribe(Dialect::TransportWs))
            } else if subprotocols.contains(&"graphql-ws") {
                Ok(Route::Subscribe(Dialect::AppSync))
            } else {
                Err((
                    StatusCode::BAD_REQUEST,
                    "subprotocol graphql-transport-ws or graphql-ws required",
                ))
            }
        }
        _ => Err((StatusCode::NOT_FOUND, "not found")),
    }
}

async fn connection(tcp: TcpStream, hub: Arc<Hub>, config: WebSocketConfig) {
    let _ = tcp.set_nodelay(true);
    let mut chosen = None;
    // The callback's signature is tungstenite's; its error type is an HTTP response.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let offered: Vec<&str> = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        match route(req.uri().path(), &offered) {
            Ok(r) => {
                if let Route::Subscribe(d) = r {
                    let name = match d {
                        Dialect::TransportWs => "graphql-transport-ws",
                        Dialect::AppSync => "graphql-ws",
                    };
                    resp.headers_mut()
                        .insert("sec-websocket-protocol", HeaderValue::from_static(name));
                }
                chosen = Some(r);
                Ok(resp)
            }
            Err((status, text)) => {
                let mut e = ErrorResponse::new(Some(text.to_string()));
                *e.status_mut() = status;
                Err(e)
            }
        }
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(config)).await
    else {
        return;
    };
    match chosen {
        Some(Route::Publish) => publisher(ws, &hub).await,
        Some(Route::Subscribe(d)) => {
            hub.counters.connections.fetch_add(1, Ordering::Relaxed);
            subscriber(ws, &hub, d).await;
            hub.counters.connections.fetch_sub(1, Ordering::Relaxed);
        }
        None => {}
    }
}

async fn publisher(mut ws: WebSocketStream<TcpStream>, hub: &Hub) {
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Text(t) => hub.publish(t.as_str()).await,
            Message::Close(_) => break,
            _ => {}
        }
    }
}

/// What a subscriber's client message asks for.
#[derive(Debug, PartialEq, Eq)]
enum ClientRequest {
    Init,
    /// Register for all orders (`None`) or one.
    Subscribe {
        id: String,
        order: Option<String>,
    },
    Ping,
    Ignore,
}

fn client_request(text: &str) -> ClientRequest {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return ClientRequest::Ignore;
    };
    let id = v["id"].as_str().unwrap_or("1").to_string();
    match v["type"].as_str().unwrap_or("") {
        "connection_init" => ClientRequest::Init,
        "ping" => ClientRequest::Ping,
        "subscribe" => ClientRequest::Subscribe {
            id,
            order: v["payload"]["variables"]["o"].as_str().map(str::to_string),
        },
        "start" => {
            // AppSync: the request is a JSON string; legacy Apollo: an object.
            let request = match &v["payload"]["data"] {
                Value::String(s) => serde_json::from_str::<Value>(s).unwrap_or(Value::Null),
                _ => v["payload"].clone(),
            };
            ClientRequest::Subscribe {
                id,
                order: request["variables"]["o"].as_str().map(str::to_string),
            }
        }
        _ => ClientRequest::Ignore,
    }
}

async fn subscriber(mut ws: WebSocketStream<TcpStream>, hub: &Hub, dialect: Dialect) {
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(hub.queue_frames);
    let mut tx = Some(tx);
    let kill = Arc::new(Notify::new());
    loop {
        tokio::select! {
            biased;
            _ = kill.notified() => return close_slow(&mut ws).await,
            Some(first) = rx.recv() => {
                tokio::select! {
                    r = write_batch(&mut ws, &mut rx, first) => if r.is_err() { return },
                    _ = kill.notified() => return close_slow(&mut ws).await,
                }
            }
            msg = ws.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => continue,
                };
                let answer = match client_request(&text) {
                    ClientRequest::Init => match dialect {
                        Dialect::TransportWs => Some(r#"{"type":"connection_ack"}"#.to_string()),
                        Dialect::AppSync => Some(
                            r#"{"type":"connection_ack","payload":{"connectionTimeoutMs":300000}}"#
                                .to_string(),
                        ),
                    },
                    ClientRequest::Ping => Some(r#"{"type":"pong"}"#.to_string()),
                    ClientRequest::Subscribe { id, order } => {
                        // One subscription per connection; a second subscribe is ignored.
                        if let Some(tx) = tx.take() {
                            let sub = Subscriber { tx, kill: kill.clone(), dialect };
                            hub.register(sub, order);
                        }
                        match dialect {
                            Dialect::AppSync => {
                                Some(json!({"type": "start_ack", "id": id}).to_string())
                            }
                            Dialect::TransportWs => None,
                        }
                    }
                    ClientRequest::Ignore => None,
                };
                if let Some(a) = answer
                    && ws.send(Message::text(a)).await.is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Feeds `first` and whatever else is queued (up to a batch), then flushes once.
async fn write_batch(
    ws: &mut WebSocketStream<TcpStream>,
    rx: &mut mpsc::Receiver<Utf8Bytes>,
    first: Utf8Bytes,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    ws.feed(Message::Text(first)).await?;
    for _ in 1..WRITE_BATCH {
        match rx.try_recv() {
            Ok(f) => ws.feed(Message::Text(f)).await?,
            Err(_) => break,
        }
    }
    ws.flush().await
}

/// Closes a slow consumer with 4008. Its socket is likely full, so the close frame gets a
/// moment, then the connection is dropped regardless.
async fn close_slow(ws: &mut WebSocketStream<TcpStream>) {
    let frame = CloseFrame {
        code: SLOW_CONSUMER.into(),
        reason: "slow consumer".into(),
    };
    let _ = tokio::time::timeout(Duration::from_millis(100), ws.close(Some(frame))).await;
}

/// A line on stderr every 5 s while anything changes.
async fn report(hub: Arc<Hub>) {
    let c = &hub.counters;
    let mut last = (u64::MAX, 0, 0, 0);
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = (
            c.connections.load(Ordering::Relaxed),
            c.events.load(Ordering::Relaxed),
            c.deliveries.load(Ordering::Relaxed),
            c.slow_closed.load(Ordering::Relaxed),
        );
        if now != last {
            eprintln!(
                "reference: {} connections, {} events ({} malformed), {} deliveries, {} closed slow",
                now.0,
                now.1,
                c.bad_events.load(Ordering::Relaxed),
                now.2,
                now.3
            );
            last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::{Marks, ServerMsg, parse_server_msg};

    #[test]
    fn frames_are_the_dialects_event_messages_with_data_as_a_string() {
        let event = crate::publish::event_json(3, 9, 123, "");
        let (order, frames) = frames_of(&event).expect("an event");
        assert_eq!(order, "lt-3");
        let v: Value = serde_json::from_str(frames.transport_ws.as_str()).expect("json");
        assert_eq!(v["id"], "1");
        assert_eq!(v["type"], "next");
        let e = &v["payload"]["data"]["onOrderUpdated"];
        assert_eq!(e["orderId"], "lt-3");
        assert_eq!(e["version"], 10);
        assert!(e["data"].is_string());
        let v: Value = serde_json::from_str(frames.appsync.as_str()).expect("json");
        assert_eq!(v["type"], "data");
        // And the load client reads its marks from both.
        for f in [&frames.transport_ws, &frames.appsync] {
            assert_eq!(
                parse_server_msg(f.as_str()),
                ServerMsg::Event(Some(Marks { t: 123, seq: 9 }))
            );
        }
    }

    #[test]
    fn non_events_make_no_frames() {
        assert!(frames_of("nope").is_none());
        assert!(frames_of(r#"{"type":"order.confirmed"}"#).is_none());
    }

    #[test]
    fn client_requests_of_both_dialects_are_understood() {
        assert_eq!(
            client_request(r#"{"type":"connection_init","payload":{}}"#),
            ClientRequest::Init
        );
        assert_eq!(client_request(r#"{"type":"ping"}"#), ClientRequest::Ping);
        assert_eq!(
            client_request(
                r#"{"id":"1","type":"subscribe","payload":{"query":"subscription { onOrderUpdated { orderId } }"}}"#
            ),
            ClientRequest::Subscribe {
                id: "1".into(),
                order: None
            }
        );
        assert_eq!(
            client_request(
                r#"{"id":"1","type":"subscribe","payload":{"query":"q","variables":{"o":"lt-5"}}}"#
            ),
            ClientRequest::Subscribe {
                id: "1".into(),
                order: Some("lt-5".into())
            }
        );
        assert_eq!(
            client_request(
                r#"{"id":"a","type":"start","payload":{"data":"{\"query\":\"q\",\"variables\":{\"o\":\"lt-2\"}}"}}"#
            ),
            ClientRequest::Subscribe {
                id: "a".into(),
                order: Some("lt-2".into())
            }
        );
        assert_eq!(client_request("garbage"), ClientRequest::Ignore);
    }

    #[test]
    fn routes_pick_the_endpoint_and_dialect() {
        assert_eq!(route("/publish", &[]), Ok(Route::Publish));
        assert_eq!(
            route("/graphql", &["graphql-ws", "graphql-transport-ws"]),
            Ok(Route::Subscribe(Dialect::TransportWs))
        );
        assert_eq!(
            route("/graphql/realtime", &["graphql-ws"]),
            Ok(Route::Subscribe(Dialect::AppSync))
        );
        assert!(route("/graphql", &[]).is_err());
        assert!(route("/other", &["graphql-ws"]).is_err());
    }

    fn subscriber(queue: usize) -> (Subscriber, mpsc::Receiver<Utf8Bytes>, Arc<Notify>) {
        let (tx, rx) = mpsc::channel(queue);
        let kill = Arc::new(Notify::new());
        let s = Subscriber {
            tx,
            kill: kill.clone(),
            dialect: Dialect::TransportWs,
        };
        (s, rx, kill)
    }

    fn hub() -> Hub {
        Hub {
            shards: vec![],
            next_shard: AtomicUsize::new(0),
            broadcast_subscribers: AtomicUsize::new(0),
            by_order: Mutex::new(HashMap::new()),
            queue_frames: 2,
            counters: Counters::default(),
        }
    }

    #[tokio::test]
    async fn a_full_queue_closes_that_subscriber_only_and_gone_ones_are_dropped() {
        let hub = hub();
        let (fast, mut fast_rx, _) = subscriber(8);
        let (slow, _slow_rx, slow_kill) = subscriber(1);
        let (gone, gone_rx, _) = subscriber(8);
        drop(gone_rx);
        let mut subs = vec![fast, slow, gone];
        let (_, frames) = frames_of(&crate::publish::event_json(0, 0, 1, "")).expect("event");
        assert_eq!(hub.deliver(&mut subs, &frames), 1); // `gone`
        assert_eq!(hub.deliver(&mut subs, &frames), 1); // `slow`: its queue holds one frame
        assert_eq!(subs.len(), 1);
        assert_eq!(hub.counters.slow_closed.load(Ordering::Relaxed), 1);
        // The slow one was told to close; the fast one got both frames, the same bytes.
        tokio::time::timeout(Duration::from_secs(1), slow_kill.notified())
            .await
            .expect("kill notified");
        let a = fast_rx.recv().await.expect("frame");
        let b = fast_rx.recv().await.expect("frame");
        assert_eq!(a.as_str().as_ptr(), b.as_str().as_ptr());
    }

    #[tokio::test]
    async fn targeted_events_reach_only_their_orders_subscriber() {
        let hub = hub();
        let (a, mut a_rx, _) = subscriber(8);
        let (b, mut b_rx, _) = subscriber(8);
        hub.register(a, Some("lt-1".into()));
        hub.register(b, Some("lt-2".into()));
        hub.publish(&crate::publish::event_json(1, 1, 5, "")).await;
        assert!(a_rx.try_recv().is_ok());
        assert!(b_rx.try_recv().is_err());
        hub.publish("not an event").await;
        assert_eq!(hub.counters.bad_events.load(Ordering::Relaxed), 1);
    }
}
