//! The seam between the subscription core and the WebSocket subprotocols. A protocol file
//! (`transport_ws.rs`, `appsync.rs`) implements [`Protocol`] for its connections and
//! [`Dialect`] for its subscriptions' messages; the socket loop and the core call only these,
//! so neither names a protocol. The upgrade (`ws.rs`) picks the protocol from the offered
//! subprotocol.
//!
//! A protocol translates: it reads client messages and spells the answers. It never decides
//! what a subscription means (authorization, the hub, replays, limits): that is the core's.

use super::session::Session;
use crate::graphql::GraphqlError;

pub use super::session::Dialect;

/// What the socket loop does after a client message.
pub enum Flow {
    Continue,
    /// Close the connection with this code (one of [`super::close`]) and reason.
    Close(u16, String),
}

/// One WebSocket subprotocol, as the socket loop drives it. Protocols hold no state of their
/// own: what a connection has said so far lives in its [`Session`].
pub trait Protocol: Send + Sync {
    /// Reads one client text message and acts on it through the session.
    fn on_message(&self, session: &mut Session, text: &str) -> Flow;

    /// Queues what the protocol sends every `push.keepalive_interval`.
    fn keepalive(&self, session: &Session);
}

/// `s` as a JSON string literal, for splicing ids into messages.
pub fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// `{"id", "type": "error", "payload": [GraphQL errors]}`: a subscription's error as
/// `graphql-transport-ws` and Apollo's `graphql-ws` both spell it.
pub fn error_message(id: &str, errors: &[GraphqlError]) -> String {
    let id = json_string(id);
    let payload = serde_json::to_string(errors).unwrap_or_else(|_| "[]".into());
    format!(r#"{{"id":{id},"type":"error","payload":{payload}}}"#)
}
