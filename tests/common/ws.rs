//! Raw WebSocket clients (graphql-transport-ws and AppSync spoken by hand) and the events
//! the suites publish.

use super::Herald;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub fn ws_url(herald: &Herald) -> String {
    herald.url("/graphql").replacen("http://", "ws://", 1)
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Upgrades with `subprotocol` and checks the server chose it.
pub async fn connect(herald: &Herald, subprotocol: &str) -> Ws {
    let mut request = ws_url(herald).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", subprotocol.parse().unwrap());
    let (ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket upgrade");
    assert_eq!(response.headers()["sec-websocket-protocol"], subprotocol);
    ws
}

pub async fn send(ws: &mut Ws, value: Value) {
    ws.send(Message::text(value.to_string())).await.unwrap();
}

/// The next JSON message (pings answered by tungstenite are skipped).
pub async fn next(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
            .expect("open stream")
            .expect("valid frame");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => continue,
        }
    }
}

/// Reads until the server closes: the close frame's code, or `None` when the connection
/// ended without one (EOF or reset). Panics when the server keeps it open for 15 s.
pub async fn close_code(ws: &mut Ws) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) => return None,
            Err(_) => panic!("the server did not close the connection within 15 s"),
        }
    }
}

/// graphql-transport-ws `connection_init` with an API key; waits for the ack.
pub async fn init(ws: &mut Ws, key: &str) {
    send(
        ws,
        json!({"type": "connection_init", "payload": {"x-api-key": key}}),
    )
    .await;
    assert_eq!(next(ws).await["type"], "connection_ack");
}

/// A graphql-transport-ws `subscribe` message.
pub fn sub(id: &str, query: &str) -> Value {
    json!({"id": id, "type": "subscribe", "payload": {"query": query}})
}

/// An event in the documented form, as another service would XADD it.
pub fn external_event(
    order_id: &str,
    customer: &str,
    partner: Option<&str>,
    version: u64,
) -> Value {
    json!({
        "type": "order.preparing", "orderId": order_id, "customerId": customer,
        "partnerId": partner, "status": "preparing", "previousStatus": "confirmed",
        "version": version, "occurredAt": "2026-11-27T10:00:00Z", "data": {"note": "x", "n": version}
    })
}
