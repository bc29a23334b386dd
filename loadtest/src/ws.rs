//! The subscriber side of a WebSocket connection, shared by `fanout` and `idle`: dialing from a
//! spread of loopback source addresses, the two subscription dialects (graphql-transport-ws and
//! AppSync's graphql-ws), and reading what the server sends, above all the two marks every
//! load-test event carries in its `data` (`t`: publish time in Unix nanoseconds, `seq`: its
//! sequence number).
//!
//! It never trusts the server: every frame is parsed without panicking, and anything it does
//! not understand is reported as such rather than dropped.

use anyhow::{Context, bail};
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

pub type Ws = WebSocketStream<TcpStream>;

/// Which subscription dialect a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// The GraphQL over WebSocket protocol (`graphql-transport-ws`).
    #[value(name = "graphql-transport-ws")]
    TransportWs,
    /// AppSync's real-time dialect (subprotocol `graphql-ws`).
    #[value(name = "appsync")]
    AppSync,
}

impl Protocol {
    pub fn subprotocol(self) -> &'static str {
        match self {
            Protocol::TransportWs => "graphql-transport-ws",
            Protocol::AppSync => "graphql-ws",
        }
    }

    /// Whether the server confirms each subscription (`start_ack`). graphql-transport-ws has
    /// no such message: a subscription is live some time after `subscribe`.
    pub fn acks_subscriptions(self) -> bool {
        self == Protocol::AppSync
    }
}

/// What one connection subscribes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topic {
    /// Every order (`onOrderUpdated` without arguments).
    AllOrders,
    /// One order: `onOrderUpdated(orderId: $o)`.
    Order(String),
    /// One customer's orders: `onOrderUpdated(customerId: $c)`, selecting `orderId` and `type`.
    Customer(String),
}

const BROADCAST_QUERY: &str = "subscription { onOrderUpdated { orderId version data } }";
const TARGETED_QUERY: &str =
    "subscription($o: ID!) { onOrderUpdated(orderId: $o) { orderId version data } }";
const CUSTOMER_QUERY: &str =
    "subscription($c: ID!) { onOrderUpdated(customerId: $c) { orderId type } }";

impl Topic {
    /// `{query, variables?}` of the subscription.
    fn request(&self) -> Value {
        match self {
            Topic::AllOrders => json!({ "query": BROADCAST_QUERY }),
            Topic::Order(id) => json!({ "query": TARGETED_QUERY, "variables": { "o": id } }),
            Topic::Customer(id) => json!({ "query": CUSTOMER_QUERY, "variables": { "c": id } }),
        }
    }
}

/// Where and how subscribers connect.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `ws://host:port/path`, without a query.
    pub url: String,
    /// `host:port`, as AppSync's `header` carries it.
    pub host: String,
    pub addr: SocketAddr,
    pub api_key: Option<String>,
    pub protocol: Protocol,
    /// How many loopback source addresses (127.0.0.1 ..) connections are spread over; 0 or a
    /// non-loopback server: let the kernel choose.
    pub source_ips: u8,
    pub read_buffer: usize,
    pub handshake_timeout: Duration,
}

impl Endpoint {
    /// Parses `ws://host:port/path` and resolves the host once (thousands of connections
    /// should not mean thousands of lookups).
    pub async fn resolve(
        url: &str,
        api_key: Option<String>,
        protocol: Protocol,
    ) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("ws://")
            .with_context(|| format!("{url}: only ws:// URLs are supported"))?;
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        if host.is_empty() {
            bail!("{url}: no host");
        }
        let hostport = if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host.to_string()
        } else {
            format!("{host}:80")
        };
        let addr = tokio::net::lookup_host(&hostport)
            .await
            .with_context(|| format!("resolving {hostport}"))?
            .next()
            .with_context(|| format!("{hostport}: no address"))?;
        let path = path.split('?').next().unwrap_or("");
        Ok(Self {
            url: format!("ws://{host}/{path}"),
            host: host.to_string(),
            addr,
            api_key,
            protocol,
            source_ips: 16,
            read_buffer: 4096,
            handshake_timeout: Duration::from_secs(10),
        })
    }

    /// Small buffers: thousands of client sockets must stay cheap (tungstenite's default read
    /// buffer is 128 KiB, allocated up front).
    pub fn ws_config(&self) -> WebSocketConfig {
        ws_config(self.read_buffer)
    }

    /// The URL of the upgrade request: AppSync carries its credentials in the query.
    fn request_url(&self) -> String {
        match self.protocol {
            Protocol::TransportWs => self.url.clone(),
            Protocol::AppSync => format!(
                "{}?header={}&payload=e30=",
                self.url,
                base64::engine::general_purpose::STANDARD
                    .encode(self.appsync_authorization().to_string())
            ),
        }
    }

    fn appsync_authorization(&self) -> Value {
        json!({ "host": self.host, "x-api-key": self.api_key.as_deref().unwrap_or("") })
    }

    /// Opens connection number `index` (which picks its source address) and completes the
    /// WebSocket handshake with the dialect's subprotocol.
    pub async fn open(&self, index: usize) -> anyhow::Result<Ws> {
        let work = async {
            let tcp = connect_tcp(
                self.addr,
                source_addr(self.addr.ip(), index, self.source_ips),
            )
            .await?;
            let mut request = self
                .request_url()
                .into_client_request()
                .context("building the upgrade request")?;
            request.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static(self.protocol.subprotocol()),
            );
            let (ws, _response) =
                tokio_tungstenite::client_async_with_config(request, tcp, Some(self.ws_config()))
                    .await
                    .context("WebSocket handshake")?;
            anyhow::Ok(ws)
        };
        tokio::time::timeout(self.handshake_timeout, work)
            .await
            .context("connect + upgrade timed out")?
    }

    /// Initialises the connection and subscribes to `topic` (subscription id "1"). With AppSync
    /// it returns once the server has sent `start_ack`; with graphql-transport-ws once the
    /// `subscribe` is written (that dialect has no acknowledgement).
    pub async fn subscribe(&self, ws: &mut Ws, topic: &Topic) -> anyhow::Result<()> {
        let work = async {
            let init = match self.protocol {
                Protocol::TransportWs => json!({
                    "type": "connection_init",
                    "payload": { "x-api-key": self.api_key.as_deref().unwrap_or("") },
                }),
                Protocol::AppSync => json!({ "type": "connection_init" }),
            };
            ws.send(Message::text(init.to_string())).await?;
            wait_for(ws, |m| matches!(m, ServerMsg::ConnectionAck)).await?;
            let subscribe = match self.protocol {
                Protocol::TransportWs => json!({
                    "id": "1", "type": "subscribe", "payload": topic.request(),
                }),
                Protocol::AppSync => json!({
                    "id": "1",
                    "type": "start",
                    "payload": {
                        "data": topic.request().to_string(),
                        "extensions": { "authorization": self.appsync_authorization() },
                    },
                }),
            };
            ws.send(Message::text(subscribe.to_string())).await?;
            if self.protocol.acks_subscriptions() {
                wait_for(ws, |m| matches!(m, ServerMsg::StartAck)).await?;
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(self.handshake_timeout, work)
            .await
            .context("subscribing timed out")?
    }
}

pub fn ws_config(read_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0)
}

/// Reads until a message satisfying `done` arrives, answering pings on the way; any error or
/// close from the server fails with what the server said.
async fn wait_for(ws: &mut Ws, done: impl Fn(&ServerMsg) -> bool) -> anyhow::Result<()> {
    loop {
        let Some(frame) = ws.next().await else {
            bail!("connection closed by the server");
        };
        match frame.context("reading")? {
            Message::Text(t) => {
                let msg = parse_server_msg(&t);
                if done(&msg) {
                    return Ok(());
                }
                match msg {
                    ServerMsg::Ping => ws.send(pong()).await?,
                    ServerMsg::Error(e) | ServerMsg::ConnectionError(e) => bail!("server: {e}"),
                    ServerMsg::Other(o) => bail!("unexpected message: {o}"),
                    _ => {}
                }
            }
            Message::Close(frame) => bail!("closed by the server: {}", describe_close(&frame)),
            _ => {}
        }
    }
}

/// The graphql-transport-ws answer to a server `ping`.
pub fn pong() -> Message {
    Message::Text(Utf8Bytes::from_static(r#"{"type":"pong"}"#))
}

pub fn describe_close(
    frame: &Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>,
) -> String {
    match frame {
        Some(f) => format!("{} {}", u16::from(f.code), f.reason.as_str()),
        None => "no close frame".into(),
    }
}

/// The source address of connection `index`: for a loopback server, 127.0.0.1 ..
/// 127.0.0.`count` in turn, so that many connections do not exhaust one address's ephemeral
/// ports; otherwise the kernel's choice.
pub fn source_addr(server: IpAddr, index: usize, count: u8) -> Option<IpAddr> {
    match server {
        IpAddr::V4(v4) if v4.is_loopback() && count > 1 => {
            let last = 1 + (index % usize::from(count)) as u8;
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        }
        _ => None,
    }
}

/// Connects, bound to `source` when given. The port is chosen at connect time
/// (IP_BIND_ADDRESS_NO_PORT), so one source address can still reach many 4-tuples.
pub async fn connect_tcp(server: SocketAddr, source: Option<IpAddr>) -> anyhow::Result<TcpStream> {
    let socket = if server.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .context("socket")?;
    if let Some(ip) = source {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let on: libc::c_int = 1;
            // SAFETY: a valid socket descriptor and a c_int option value of the right size.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding to {ip}"))?;
    }
    let stream = socket
        .connect(server)
        .await
        .with_context(|| format!("connecting to {server}"))?;
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    Ok(stream)
}

/// The marks the load generator puts into every event's `data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marks {
    /// Publish time (the intended one in open loop), Unix nanoseconds.
    pub t: u64,
    /// Sequence number of the event in this run.
    pub seq: u64,
}

/// One message from the server, as far as the load generator cares.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerMsg {
    /// `next` (graphql-transport-ws) or `data` (AppSync) with the event's marks, if it had them.
    Event(Option<Marks>),
    ConnectionAck,
    Ping,
    Pong,
    /// AppSync keep-alive.
    Ka,
    StartAck,
    Complete,
    /// `error` for one subscription.
    Error(String),
    /// AppSync `connection_error`.
    ConnectionError(String),
    /// Not JSON, or a type this tool does not know: the text (shortened).
    Other(String),
}

/// Classifies a text frame. Events take a fast path (a scan for the escaped marks, no
/// allocation) because a load client that parses slower than the server writes would measure
/// itself; everything else, and any event the scan does not recognise, is parsed as JSON.
pub fn parse_server_msg(text: &str) -> ServerMsg {
    if let Some(m) = scan_event_marks(text) {
        return ServerMsg::Event(Some(m));
    }
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return ServerMsg::Other(shorten(text));
    };
    let message = || error_text(&v["payload"]);
    match v["type"].as_str().unwrap_or("") {
        "next" | "data" => ServerMsg::Event(marks_of_payload(&v["payload"])),
        "connection_ack" => ServerMsg::ConnectionAck,
        "ping" => ServerMsg::Ping,
        "pong" => ServerMsg::Pong,
        "ka" => ServerMsg::Ka,
        "start_ack" => ServerMsg::StartAck,
        "complete" => ServerMsg::Complete,
        "error" => ServerMsg::Error(message()),
        "connection_error" => ServerMsg::ConnectionError(message()),
        _ => ServerMsg::Other(shorten(text)),
    }
}

fn shorten(text: &str) -> String {
    text.chars().take(200).collect()
}

fn error_text(payload: &Value) -> String {
    let s = match payload {
        Value::Null => "(no payload)".to_string(),
        other => other.to_string(),
    };
    shorten(&s)
}

/// The order and event type of an event frame (`next` or `data`) whose selection includes
/// `orderId` and `type` (as [`Topic::Customer`]'s does); `None` for anything else.
pub fn order_update(text: &str) -> Option<(String, String)> {
    let v: Value = serde_json::from_str(text).ok()?;
    if !matches!(v["type"].as_str(), Some("next" | "data")) {
        return None;
    }
    let u = &v["payload"]["data"]["onOrderUpdated"];
    Some((
        u["orderId"].as_str()?.to_owned(),
        u["type"].as_str()?.to_owned(),
    ))
}

/// `payload.data.onOrderUpdated.data`, a JSON string (or, leniently, an object) holding `t`
/// and `seq`.
fn marks_of_payload(payload: &Value) -> Option<Marks> {
    let data = &payload["data"]["onOrderUpdated"]["data"];
    let inner = match data {
        Value::String(s) => serde_json::from_str::<Value>(s).ok()?,
        Value::Object(_) => data.clone(),
        _ => return None,
    };
    Some(Marks {
        t: inner["t"].as_u64()?,
        seq: inner["seq"].as_u64()?,
    })
}

/// The fast path: an event frame (`"type":"next"` or `"type":"data"`) whose data string
/// contains `\"t\":<digits>` and `\"seq\":<digits>` (serde_json's compact escaping, as any
/// server produces for the string `{"t":..,"seq":..}`).
fn scan_event_marks(text: &str) -> Option<Marks> {
    if !(text.contains(r#""type":"next""#) || text.contains(r#""type":"data""#)) {
        return None;
    }
    Some(Marks {
        t: number_after(text, r#"\"t\":"#)?,
        seq: number_after(text, r#"\"seq\":"#)?,
    })
}

fn number_after(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits = text[at..].bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    text[at..at + digits].parse().ok()
}

/// Per-subscriber check of the sequence numbers it receives. Subscriber `i` of a targeted run
/// is sent every `stride`-th event starting at `first`; a broadcast subscriber gets them all
/// (stride 1).
#[derive(Clone, Copy, Debug)]
pub struct SeqTracker {
    next: u64,
    stride: u64,
    first: u64,
}

/// What one received sequence number means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqCheck {
    /// The one expected next.
    InOrder,
    /// Later than expected: this many events before it were skipped.
    Gap(u64),
    /// Seen already (or older than one seen).
    Duplicate,
    /// Not one of this subscriber's events at all (another order's).
    Foreign,
}

impl SeqTracker {
    pub fn new(first: u64, stride: u64) -> Self {
        let stride = stride.max(1);
        Self {
            next: first,
            stride,
            first,
        }
    }

    pub fn observe(&mut self, seq: u64) -> SeqCheck {
        if seq < self.first || (seq - self.first) % self.stride != 0 {
            return SeqCheck::Foreign;
        }
        if seq < self.next {
            return SeqCheck::Duplicate;
        }
        let skipped = (seq - self.next) / self.stride;
        self.next = seq + self.stride;
        if skipped == 0 {
            SeqCheck::InOrder
        } else {
            SeqCheck::Gap(skipped)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_ws_next_frame_yields_the_marks_on_the_fast_path() {
        let frame = r#"{"id":"1","type":"next","payload":{"data":{"onOrderUpdated":{"orderId":"lt-7","version":3,"data":"{\"seq\":42,\"t\":1700000000123456789}"}}}}"#;
        assert_eq!(
            scan_event_marks(frame),
            Some(Marks {
                t: 1_700_000_000_123_456_789,
                seq: 42
            })
        );
        assert_eq!(
            parse_server_msg(frame),
            ServerMsg::Event(Some(Marks {
                t: 1_700_000_000_123_456_789,
                seq: 42
            }))
        );
    }

    #[test]
    fn appsync_data_frame_yields_the_marks() {
        let frame = r#"{"type":"data","id":"1","payload":{"data":{"onOrderUpdated":{"orderId":"lt-1","version":1,"data":"{\"t\":5,\"seq\":6}"}}}}"#;
        assert_eq!(
            parse_server_msg(frame),
            ServerMsg::Event(Some(Marks { t: 5, seq: 6 }))
        );
    }

    #[test]
    fn spaced_or_object_data_still_parses_through_json() {
        // Not the compact escaping the fast path looks for.
        let spaced = r#"{"type":"next","id":"1","payload":{"data":{"onOrderUpdated":{"data":"{\"t\": 9, \"seq\": 10}"}}}}"#;
        assert_eq!(scan_event_marks(spaced), None);
        assert_eq!(
            parse_server_msg(spaced),
            ServerMsg::Event(Some(Marks { t: 9, seq: 10 }))
        );
        let object = r#"{"type":"next","id":"1","payload":{"data":{"onOrderUpdated":{"data":{"t":1,"seq":2}}}}}"#;
        assert_eq!(
            parse_server_msg(object),
            ServerMsg::Event(Some(Marks { t: 1, seq: 2 }))
        );
    }

    #[test]
    fn order_updates_give_order_and_type_in_both_dialects() {
        let next = r#"{"id":"1","type":"next","payload":{"data":{"onOrderUpdated":{"orderId":"lt-r-7","type":"order.confirmed"}}}}"#;
        let data = r#"{"id":"1","type":"data","payload":{"data":{"onOrderUpdated":{"orderId":"lt-r-8","type":"order.accepted"}}}}"#;
        assert_eq!(
            order_update(next),
            Some(("lt-r-7".into(), "order.confirmed".into()))
        );
        assert_eq!(
            order_update(data),
            Some(("lt-r-8".into(), "order.accepted".into()))
        );
        assert_eq!(order_update(r#"{"type":"ka"}"#), None);
        assert_eq!(
            order_update(
                r#"{"type":"next","payload":{"data":{"onOrderUpdated":{"orderId":"x"}}}}"#
            ),
            None
        );
        assert_eq!(order_update("not json"), None);
        assert_eq!(
            Topic::Customer("c1".into()).request()["variables"]["c"],
            "c1"
        );
    }

    #[test]
    fn event_without_marks_is_reported_as_such() {
        let frame = r#"{"type":"next","id":"1","payload":{"data":{"onOrderUpdated":{"orderId":"x","data":null}}}}"#;
        assert_eq!(parse_server_msg(frame), ServerMsg::Event(None));
        let bad_number = r#"{"type":"next","id":"1","payload":{"data":{"onOrderUpdated":{"data":"{\"t\":-1,\"seq\":2}"}}}}"#;
        assert_eq!(parse_server_msg(bad_number), ServerMsg::Event(None));
    }

    #[test]
    fn control_messages_are_classified() {
        assert_eq!(
            parse_server_msg(r#"{"type":"connection_ack"}"#),
            ServerMsg::ConnectionAck
        );
        assert_eq!(
            parse_server_msg(
                r#"{"type":"connection_ack","payload":{"connectionTimeoutMs":300000}}"#
            ),
            ServerMsg::ConnectionAck
        );
        assert_eq!(parse_server_msg(r#"{"type":"ping"}"#), ServerMsg::Ping);
        assert_eq!(parse_server_msg(r#"{"type":"ka"}"#), ServerMsg::Ka);
        assert_eq!(
            parse_server_msg(r#"{"type":"start_ack","id":"1"}"#),
            ServerMsg::StartAck
        );
        assert_eq!(
            parse_server_msg(r#"{"type":"complete","id":"1"}"#),
            ServerMsg::Complete
        );
        match parse_server_msg(r#"{"type":"error","id":"1","payload":[{"message":"nope"}]}"#) {
            ServerMsg::Error(e) => assert!(e.contains("nope"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_server_msg("not json"), ServerMsg::Other(_)));
        assert!(matches!(
            parse_server_msg(r#"{"type":"surprise"}"#),
            ServerMsg::Other(_)
        ));
    }

    #[test]
    fn numbers_after_keys_need_digits_and_fit_u64() {
        assert_eq!(number_after(r#"\"t\":12,"#, r#"\"t\":"#), Some(12));
        assert_eq!(number_after(r#"\"t\":x"#, r#"\"t\":"#), None);
        assert_eq!(
            number_after(r#"\"t\":99999999999999999999999"#, r#"\"t\":"#),
            None
        );
        assert_eq!(number_after("", r#"\"t\":"#), None);
    }

    #[test]
    fn broadcast_tracker_counts_gaps_and_duplicates() {
        let mut s = SeqTracker::new(0, 1);
        assert_eq!(s.observe(0), SeqCheck::InOrder);
        assert_eq!(s.observe(1), SeqCheck::InOrder);
        assert_eq!(s.observe(4), SeqCheck::Gap(2));
        assert_eq!(s.observe(4), SeqCheck::Duplicate);
        assert_eq!(s.observe(2), SeqCheck::Duplicate);
        assert_eq!(s.observe(5), SeqCheck::InOrder);
    }

    #[test]
    fn targeted_tracker_expects_every_strideth_event_and_flags_others() {
        // Subscriber 3 of 10: events 3, 13, 23, ...
        let mut s = SeqTracker::new(3, 10);
        assert_eq!(s.observe(3), SeqCheck::InOrder);
        assert_eq!(s.observe(13), SeqCheck::InOrder);
        assert_eq!(s.observe(43), SeqCheck::Gap(2));
        assert_eq!(s.observe(44), SeqCheck::Foreign);
        assert_eq!(s.observe(2), SeqCheck::Foreign);
        assert_eq!(s.observe(33), SeqCheck::Duplicate);
    }

    #[test]
    fn loopback_connections_are_spread_over_source_addresses() {
        let server: IpAddr = Ipv4Addr::LOCALHOST.into();
        let picks: Vec<_> = (0..5).map(|i| source_addr(server, i, 4)).collect();
        let ip = |d| Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, d)));
        assert_eq!(picks, vec![ip(1), ip(2), ip(3), ip(4), ip(1)]);
        // 255 addresses stay inside 127.0.0.1 ..= 127.0.0.255.
        assert_eq!(source_addr(server, 254, 255), ip(255));
        // Not loopback, or spreading off: the kernel picks.
        assert_eq!(source_addr("10.0.0.1".parse().unwrap(), 3, 4), None);
        assert_eq!(source_addr("::1".parse().unwrap(), 3, 4), None);
        assert_eq!(source_addr(server, 3, 1), None);
    }

    #[tokio::test]
    async fn endpoint_parses_host_port_and_path() {
        let e = Endpoint::resolve("ws://127.0.0.1:9/graphql?x=1", None, Protocol::TransportWs)
            .await
            .expect("valid");
        assert_eq!(e.url, "ws://127.0.0.1:9/graphql");
        assert_eq!(e.host, "127.0.0.1:9");
        assert_eq!(e.addr, "127.0.0.1:9".parse().unwrap());
        assert!(
            Endpoint::resolve("http://x/", None, Protocol::TransportWs)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn appsync_url_carries_base64_credentials() {
        let e = Endpoint::resolve(
            "ws://127.0.0.1:9/graphql",
            Some("k1".into()),
            Protocol::AppSync,
        )
        .await
        .expect("valid");
        let url = e.request_url();
        let header = url
            .strip_prefix("ws://127.0.0.1:9/graphql?header=")
            .and_then(|r| r.strip_suffix("&payload=e30="))
            .expect("shape");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(header)
            .expect("base64");
        let v: Value = serde_json::from_slice(&decoded).expect("json");
        assert_eq!(v, json!({"host": "127.0.0.1:9", "x-api-key": "k1"}));
    }
}
