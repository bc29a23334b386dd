//! `graphql-transport-ws`: the GraphQL over WebSocket protocol
//! (<https://github.com/enisdenjo/graphql-ws/blob/master/PROTOCOL.md>), in full:
//! `connection_init` (once; 4429 on a second; 4408 when it does not come in time; 4403 when
//! its credentials are refused), `connection_ack`, `ping`/`pong` both ways, `subscribe`
//! (4401 before the ack, 4409 for an id in use), `next`, `error`, `complete` both ways.
//! Unknown or malformed messages close with 4400, as the protocol asks.

use super::close;
use super::protocol::{Dialect, Flow, Protocol, error_message, json_string};
use super::session::{Refusal, Session};
use crate::auth::AuthError;
use crate::graphql::{GraphqlError, GraphqlRequest};
use serde::Deserialize;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// `graphql-transport-ws`, for its connections and its subscriptions alike (it has one
/// dialect).
pub struct TransportWs;

impl Protocol for TransportWs {
    fn on_message(&self, session: &mut Session, text: &str) -> Flow {
        on_message(session, text)
    }

    /// A protocol `ping`: clients answer with `pong`, which the socket loop hears.
    fn keepalive(&self, session: &Session) {
        session.send(r#"{"type":"ping"}"#.into());
    }
}

impl Dialect for TransportWs {
    fn next_prefix(&self, id: &str) -> Utf8Bytes {
        let id = json_string(id);
        Utf8Bytes::from(format!(r#"{{"id":{id},"type":"next","payload":"#))
    }

    /// None: the protocol has no acknowledgement of a subscribe.
    fn ack(&self, _id: &str) -> Option<String> {
        None
    }

    fn error(&self, id: &str, errors: &[GraphqlError]) -> String {
        error_message(id, errors)
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    ConnectionInit {
        #[serde(default)]
        payload: Option<Value>,
    },
    Ping {
        #[serde(default)]
        payload: Option<Value>,
    },
    Pong {},
    Subscribe {
        id: String,
        payload: GraphqlRequest,
    },
    Complete {
        id: String,
    },
}

fn on_message(session: &mut Session, text: &str) -> Flow {
    let message: ClientMessage = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => {
            return Flow::Close(
                close::BAD_REQUEST,
                truncate(format!("invalid message: {e}")),
            );
        }
    };
    match message {
        ClientMessage::ConnectionInit { payload } => {
            session.inits += 1;
            if session.inits > 1 {
                return Flow::Close(
                    close::TOO_MANY_INITS,
                    "too many initialisation requests".into(),
                );
            }
            if let Some(credential) = payload
                .as_ref()
                .and_then(Value::as_object)
                .and_then(super::credential_from_payload)
            {
                match session.authenticate(&credential) {
                    Ok(principal) => session.principal = Some(principal),
                    Err(e) => return Flow::Close(close::FORBIDDEN, forbidden(&e)),
                }
            }
            if session.principal.is_none() {
                return Flow::Close(close::FORBIDDEN, "forbidden: no credentials".into());
            }
            session.acked = true;
            session.send(r#"{"type":"connection_ack"}"#.into());
            Flow::Continue
        }
        ClientMessage::Ping { payload } => {
            let pong = match payload {
                Some(p) if !p.is_null() => format!(r#"{{"type":"pong","payload":{p}}}"#),
                _ => r#"{"type":"pong"}"#.to_string(),
            };
            session.send(pong);
            Flow::Continue
        }
        ClientMessage::Pong {} => Flow::Continue,
        ClientMessage::Subscribe { id, payload } => {
            let Some(principal) = session.principal.clone().filter(|_| session.acked) else {
                return Flow::Close(close::UNAUTHORIZED, "unauthorized".into());
            };
            match session.subscribe(&id, &payload, principal, &TransportWs) {
                Ok(()) => Flow::Continue,
                Err(Refusal::DuplicateId) => Flow::Close(
                    close::SUBSCRIBER_EXISTS,
                    truncate(format!("subscriber for {id} already exists")),
                ),
                Err(Refusal::Errors(errors)) => {
                    session.send(error_message(&id, &errors));
                    Flow::Continue
                }
            }
        }
        ClientMessage::Complete { id } => {
            session.unsubscribe(&id);
            Flow::Continue
        }
    }
}

fn forbidden(e: &AuthError) -> String {
    format!("forbidden: {e}")
}

/// Close reasons must fit in 123 bytes.
pub fn truncate(mut reason: String) -> String {
    if reason.len() > 120 {
        let mut end = 120;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}
