//! The WebSocket handshake on `GET /graphql` (alias `/graphql/realtime`), done with hyper's
//! upgrade and tokio-tungstenite directly: the subprotocol decides the dialect, credentials
//! may come from headers, AppSync's `header` query parameter or its `header-<base64url>`
//! subprotocol, and the connection limit is enforced before the upgrade (503).

use super::appsync::GraphqlWs;
use super::protocol::Protocol;
use super::socket;
use super::transport_ws::TransportWs;
use super::{PushState, credential_from_payload};
use crate::auth::credential_from_headers;
use crate::http::problem::Problem;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// Per-socket buffers: small, so an idle connection costs a few KiB (tungstenite's default
/// read buffer is 128 KiB).
const READ_BUFFER: usize = 1024;
const WRITE_BUFFER: usize = 8 * 1024;

/// The WebSocket subprotocols served, by the name a client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subprotocol {
    /// `graphql-transport-ws`: the GraphQL over WebSocket protocol.
    TransportWs,
    /// `graphql-ws`: the AppSync real-time dialect and legacy Apollo messages.
    GraphqlWs,
}

impl Subprotocol {
    /// The first served subprotocol among those offered, `graphql-transport-ws` preferred.
    pub fn negotiate(offered: &[String]) -> Option<Subprotocol> {
        [Subprotocol::TransportWs, Subprotocol::GraphqlWs]
            .into_iter()
            .find(|p| offered.iter().any(|o| o == p.name()))
    }

    /// Its `Sec-WebSocket-Protocol` name.
    pub fn name(self) -> &'static str {
        match self {
            Subprotocol::TransportWs => "graphql-transport-ws",
            Subprotocol::GraphqlWs => "graphql-ws",
        }
    }

    /// The protocol a connection speaking it is driven with.
    pub fn protocol(self) -> Box<dyn Protocol> {
        match self {
            Subprotocol::TransportWs => Box::new(TransportWs),
            Subprotocol::GraphqlWs => Box::new(GraphqlWs),
        }
    }
}

/// `GET /graphql`: the WebSocket upgrade for subscriptions (subprotocol
/// `graphql-transport-ws`, or `graphql-ws` for AppSync's dialect). Credentials may also come
/// in `connection_init` or AppSync's `header` query parameter, so the upgrade itself asks for
/// none; a refusal is a close code (see the README).
#[utoipa::path(
    get,
    path = "/graphql",
    tag = "graphql",
    summary = "Subscribe over WebSocket",
    description = "The WebSocket upgrade for GraphQL subscriptions (subprotocol `graphql-transport-ws`, or `graphql-ws` for AppSync's dialect). Credentials may also come in `connection_init` or AppSync's `header` query parameter, so the upgrade itself asks for none; a refusal is a close code (see the README). `/graphql/realtime` is an alias.",
    security(()),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol."),
        (status = 426, description = "Not a WebSocket upgrade request.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn upgrade(State(state): State<Arc<PushState>>, mut req: Request) -> Response {
    let headers = req.headers();
    let is_upgrade = header_has_token(headers, header::CONNECTION, "upgrade")
        && header_has_token(headers, header::UPGRADE, "websocket");
    if !is_upgrade {
        return Problem::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade-required",
            "WebSocket upgrade required",
        )
        .detail("GET /graphql is a WebSocket endpoint (subprotocol graphql-transport-ws or graphql-ws); send queries with POST /graphql.")
        .into_response();
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Problem::bad_request("Sec-WebSocket-Version must be 13.").into_response();
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return Problem::bad_request("Sec-WebSocket-Key is missing.").into_response();
    };
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .collect();
    let Some(subprotocol) = Subprotocol::negotiate(&offered) else {
        return Problem::bad_request(
            "Sec-WebSocket-Protocol must offer graphql-transport-ws or graphql-ws.",
        )
        .into_response();
    };

    // Credentials at the handshake are optional (browsers send them in connection_init), but
    // wrong ones are refused here.
    let credential = handshake_credential(headers, req.uri().query(), &offered);
    let principal = match credential {
        Some(c) => match state.node.keys.authenticate(&c) {
            Ok(p) => Some(p),
            Err(_) => return Problem::unauthorized().into_response(),
        },
        None => None,
    };

    if let Err(refused) = state.take_connection_slot() {
        return refused;
    }
    state
        .metrics
        .connections_opened
        .fetch_add(1, Ordering::Relaxed);

    let on_upgrade = hyper::upgrade::on(&mut req);
    let max_message = state.node.config.push.max_message_bytes;
    let task_state = state.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let config = WebSocketConfig::default()
                    .read_buffer_size(READ_BUFFER)
                    .write_buffer_size(WRITE_BUFFER)
                    .max_write_buffer_size(WRITE_BUFFER + 2 * max_message.max(64 * 1024))
                    .max_message_size(Some(max_message))
                    .max_frame_size(Some(max_message));
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                socket::run(task_state, ws, subprotocol.protocol(), principal).await;
            }
            Err(e) => {
                task_state.connections.fetch_sub(1, Ordering::AcqRel);
                tracing::debug!(error = %e, "WebSocket upgrade failed");
            }
        }
    });

    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(subprotocol.name()),
    );
    response
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The credential a handshake carries: `Authorization`/`x-api-key` headers, else AppSync's
/// `header` query parameter, else its `header-<base64url>` subprotocol.
pub fn handshake_credential(
    headers: &HeaderMap,
    query: Option<&str>,
    offered: &[String],
) -> Option<String> {
    credential_from_headers(headers)
        .or_else(|| appsync_header_param(query))
        .or_else(|| appsync_header_subprotocol(offered))
}

/// AppSync's `header` query parameter: base64 (standard or URL-safe, padded or not) of a
/// JSON object with `x-api-key` or `Authorization`.
pub fn appsync_header_param(query: Option<&str>) -> Option<String> {
    let query = query?;
    let encoded = query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name == "header").then_some(value)
    })?;
    let encoded = percent_decode(encoded);
    decode_credential_object(&encoded)
}

/// The `header-<base64url>` subprotocol form of the same object.
fn appsync_header_subprotocol(offered: &[String]) -> Option<String> {
    offered
        .iter()
        .find_map(|p| p.strip_prefix("header-"))
        .and_then(decode_credential_object)
}

fn decode_credential_object(encoded: &str) -> Option<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let bytes = [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(encoded.trim()).ok())?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    credential_from_payload(value.as_object()?)
}

/// Percent-decoding only: a `+` stays a `+`, since it is a base64 character here.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn appsync_header_parameter_carries_an_api_key_or_a_token() {
        let q = format!(
            "header={}&payload=e30=",
            b64(r#"{"host":"x","x-api-key":"k-123"}"#)
        );
        assert_eq!(appsync_header_param(Some(&q)).as_deref(), Some("k-123"));
        let q = format!(
            "payload=e30%3D&header={}",
            b64(r#"{"Authorization":"Bearer tok"}"#).replace('=', "%3D")
        );
        assert_eq!(appsync_header_param(Some(&q)).as_deref(), Some("tok"));
        assert_eq!(appsync_header_param(Some("header=!!!")), None);
        assert_eq!(appsync_header_param(None), None);
    }

    #[test]
    fn appsync_header_subprotocol_is_base64url() {
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"host":"h","x-api-key":"key-1"}"#);
        let offered = vec!["graphql-ws".to_string(), format!("header-{encoded}")];
        assert_eq!(
            appsync_header_subprotocol(&offered).as_deref(),
            Some("key-1")
        );
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(percent_decode("a%3Db%zz%"), "a=b%zz%");
    }
}
