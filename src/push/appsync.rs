//! Subprotocol `graphql-ws`: the AWS AppSync real-time dialect, and the legacy Apollo
//! `subscriptions-transport-ws` messages that share its name.
//!
//! AppSync: credentials come in the `header` query parameter (base64 JSON, or the
//! `header-<base64url>` subprotocol some clients send) or in each `start`'s
//! `payload.extensions.authorization`; `connection_init` -> `connection_ack` with
//! `connectionTimeoutMs`; `ka` keepalives; `start` whose `payload.data` is a JSON *string* of
//! `{query, variables}` -> `start_ack` once live -> `data`; `stop` -> `complete`; `error` with
//! an id for one subscription and without for the connection; `connection_error` when the
//! connection is refused (then close 4401), or at a second `connection_init` (then close 4429,
//! as `graphql-transport-ws` does: the first credential stays the connection's). A `start`
//! authorized with its own token ends (`error`, then `complete`) when that token expires.
//!
//! Apollo: `connection_init` (credentials in its payload) -> `connection_ack`, `ka`, `start`
//! whose payload is the request object -> `data`/`error`, `stop` -> `complete`,
//! `connection_terminate`. A `start` is read as AppSync when its `payload.data` is a string.

use super::close;
use super::conn::Out;
use super::protocol::{Dialect, Flow, Protocol, error_message, json_string};
use super::session::{Refusal, Session};
use crate::graphql::{GraphqlError, GraphqlRequest};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// AppSync tells clients to reconnect when no `ka` came for this long.
const CONNECTION_TIMEOUT_MS: u64 = 300_000;

/// `graphql-ws` connections; each `start` picks its subscription's dialect ([`AppSync`] or
/// [`Apollo`]) by the shape of its payload.
pub struct GraphqlWs;

impl Protocol for GraphqlWs {
    fn on_message(&self, session: &mut Session, text: &str) -> Flow {
        on_message(session, text)
    }

    /// `ka` once acknowledged, and a WebSocket ping.
    fn keepalive(&self, session: &Session) {
        if session.acked {
            session.send(KEEPALIVE.into());
        }
        // AppSync clients never send anything on their own: a WebSocket ping (answered by
        // every client library) shows the peer is alive.
        session.conn.push(Out::Ping);
    }
}

const KEEPALIVE: &str = r#"{"type":"ka"}"#;

/// The AppSync real-time dialect: `start_ack` once live, errors in AppSync's shape.
pub struct AppSync;

/// Apollo's `subscriptions-transport-ws`: no acknowledgement, GraphQL errors as they are.
pub struct Apollo;

fn data_prefix(id: &str) -> Utf8Bytes {
    let id = json_string(id);
    Utf8Bytes::from(format!(r#"{{"id":{id},"type":"data","payload":"#))
}

impl Dialect for AppSync {
    fn next_prefix(&self, id: &str) -> Utf8Bytes {
        data_prefix(id)
    }

    fn ack(&self, id: &str) -> Option<String> {
        Some(format!(
            r#"{{"id":{},"type":"start_ack"}}"#,
            json_string(id)
        ))
    }

    fn error(&self, id: &str, errors: &[GraphqlError]) -> String {
        let id = json_string(id);
        let payload = json!({ "errors": self::errors(errors) });
        format!(r#"{{"id":{id},"type":"error","payload":{payload}}}"#)
    }

    fn end(&self, id: &str) -> Option<String> {
        Some(complete(id))
    }
}

fn complete(id: &str) -> String {
    format!(r#"{{"id":{},"type":"complete"}}"#, json_string(id))
}

impl Dialect for Apollo {
    fn next_prefix(&self, id: &str) -> Utf8Bytes {
        data_prefix(id)
    }

    fn ack(&self, _id: &str) -> Option<String> {
        None
    }

    fn error(&self, id: &str, errors: &[GraphqlError]) -> String {
        error_message(id, errors)
    }

    fn end(&self, id: &str) -> Option<String> {
        Some(complete(id))
    }
}

#[derive(Deserialize)]
struct ClientMessage {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    payload: Option<Value>,
}

fn on_message(session: &mut Session, text: &str) -> Flow {
    let message: ClientMessage = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => {
            session.send(connection_level_error(
                "BadRequestException",
                &format!("invalid message: {e}"),
            ));
            return Flow::Continue;
        }
    };
    match message.kind.as_str() {
        "connection_init" => {
            session.inits += 1;
            if session.inits > 1 {
                // Never a second principal on one connection: its subscriptions were
                // authorized as the first.
                session.send(connection_error(
                    "TooManyInitialisationRequests",
                    "connection_init was already received on this connection",
                ));
                return Flow::Close(
                    close::TOO_MANY_INITS,
                    "too many initialisation requests".into(),
                );
            }
            if let Some(credential) = message
                .payload
                .as_ref()
                .and_then(Value::as_object)
                .and_then(super::credential_from_payload)
            {
                match session.authenticate(&credential) {
                    Ok(principal) => session.principal = Some(principal),
                    Err(e) => return refuse_connection(session, &e.to_string()),
                }
            }
            if session.principal.is_none() {
                return refuse_connection(session, "no credentials");
            }
            session.acked = true;
            session.send(format!(
                r#"{{"type":"connection_ack","payload":{{"connectionTimeoutMs":{CONNECTION_TIMEOUT_MS}}}}}"#
            ));
            session.send(KEEPALIVE.into());
            Flow::Continue
        }
        "start" => start(session, message.id, message.payload),
        "stop" => {
            if let Some(id) = message.id {
                session.unsubscribe(&id);
                session.send(complete(&id));
            }
            Flow::Continue
        }
        "connection_terminate" => Flow::Close(close::NORMAL, "terminated by the client".into()),
        "ka" | "pong" => Flow::Continue,
        other => {
            session.send(connection_level_error(
                "UnsupportedOperation",
                &format!("unknown message type `{other}`"),
            ));
            Flow::Continue
        }
    }
}

fn start(session: &mut Session, id: Option<String>, payload: Option<Value>) -> Flow {
    let Some(id) = id.filter(|id| !id.is_empty()) else {
        session.send(connection_level_error(
            "BadRequestException",
            "`start` needs an id",
        ));
        return Flow::Continue;
    };
    let payload = payload.unwrap_or(Value::Null);
    // AppSync: `data` is a JSON string; Apollo: the payload is the request itself.
    let (dialect, request, override_credential) = match payload.get("data") {
        Some(Value::String(data)) => {
            let credential = payload
                .pointer("/extensions/authorization")
                .and_then(Value::as_object)
                .and_then(super::credential_from_payload);
            (
                &AppSync as &'static dyn Dialect,
                serde_json::from_str::<GraphqlRequest>(data),
                credential,
            )
        }
        _ => (
            &Apollo as &'static dyn Dialect,
            serde_json::from_value::<GraphqlRequest>(payload),
            None,
        ),
    };
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            let error = GraphqlError::with_code(
                format!("The start payload is not a GraphQL request: {e}"),
                "BAD_REQUEST",
            );
            session.send(dialect.error(&id, &[error]));
            return Flow::Continue;
        }
    };
    if !session.acked {
        let error =
            GraphqlError::with_code("Send connection_init before start.", "UNAUTHENTICATED");
        session.send(dialect.error(&id, &[error]));
        return Flow::Continue;
    }
    let principal = match override_credential {
        Some(credential) => match session.authenticate(&credential) {
            Ok(p) => p,
            Err(e) => {
                let error = GraphqlError::with_code(format!("{e}"), "UNAUTHENTICATED");
                session.send(dialect.error(&id, &[error]));
                return Flow::Continue;
            }
        },
        None => match session.principal.clone() {
            Some(p) => p,
            None => {
                let error = GraphqlError::with_code("No credentials.", "UNAUTHENTICATED");
                session.send(dialect.error(&id, &[error]));
                return Flow::Continue;
            }
        },
    };
    match session.subscribe(&id, &request, principal, dialect) {
        Ok(()) => {}
        Err(Refusal::DuplicateId) => {
            let error = GraphqlError::with_code(
                format!("Subscription id `{id}` is already in use on this connection."),
                "DUPLICATE_ID",
            );
            session.send(dialect.error(&id, &[error]));
        }
        Err(Refusal::Errors(errors)) => session.send(dialect.error(&id, &errors)),
    }
    Flow::Continue
}

fn refuse_connection(session: &Session, message: &str) -> Flow {
    session.send(connection_error("UnauthorizedException", message));
    Flow::Close(close::UNAUTHORIZED, "unauthorized".into())
}

fn connection_error(error_type: &str, message: &str) -> String {
    let payload = json!({ "errors": [{ "errorType": error_type, "message": message }] });
    format!(r#"{{"type":"connection_error","payload":{payload}}}"#)
}

fn connection_level_error(error_type: &str, message: &str) -> String {
    let payload = json!({ "errors": [{ "errorType": error_type, "message": message }] });
    format!(r#"{{"type":"error","payload":{payload}}}"#)
}

/// GraphQL errors in AppSync's shape: `errorType` (from the error's code) and `message`,
/// with locations and extensions kept.
pub fn errors(errors: &[GraphqlError]) -> Vec<Value> {
    errors
        .iter()
        .map(|e| {
            let code = e
                .extensions
                .as_ref()
                .and_then(|x| x.get("code"))
                .and_then(Value::as_str)
                .unwrap_or("GraphQLError");
            let error_type = match code {
                "FORBIDDEN" | "UNAUTHENTICATED" => "UnauthorizedException",
                "GRAPHQL_PARSE_FAILED" | "GRAPHQL_VALIDATION_FAILED" | "BAD_USER_INPUT" => {
                    "ValidationError"
                }
                "LIMIT_EXCEEDED" | "RATE_LIMITED" => "LimitExceededException",
                other => other,
            };
            let mut v = json!({ "errorType": error_type, "message": e.message });
            if !e.locations.is_empty() {
                v["locations"] = json!(e.locations);
            }
            if let Some(ext) = &e.extensions {
                v["extensions"] = ext.clone();
            }
            v
        })
        .collect()
}
