//! The way in for the cargo-fuzz targets in `fuzz/`: thin wrappers over the real parsers, so
//! each target drives exactly the code a hostile peer reaches. Nothing here parses anything
//! itself. Not part of Herald's API, and compiled only with the `fuzzing` feature (which
//! `fuzz/Cargo.toml` turns on) or for the unit tests.

use crate::auth::{KeyRing, Principal};
use crate::config::{Config, PartnerKey};
use crate::engine::memory::MemoryEngine;
use crate::engine::{EngineSettings, EventLog, LogEntry};
use crate::graphql::{DocumentLimits, GraphqlSchema};
use crate::node::{Node, Shared};
use crate::push::PushState;
use crate::push::conn::ConnHandle;
use crate::push::hub::Hub;
use crate::push::protocol::Flow;
use crate::push::session::Session;
use crate::push::ws;
pub use crate::push::ws::Subprotocol;
use crate::tail::EventSink;
use crate::webhooks::ssrf::AllowList;
use std::sync::Arc;

pub use crate::push::credential_from_payload;

/// The admin key of [`keyring`] and [`WsHarness`].
pub const ADMIN_KEY: &str = "fuzz-admin-key-0123456789abcdef";
/// The partner key of [`keyring`] (partner `p1`).
pub const PARTNER_KEY: &str = "fuzz-partner-key-0123456789abcdef";
/// The HS256 secret customer tokens are checked with.
pub const JWT_SECRET: &str = "fuzz-jwt-secret-0123456789abcdef-0123456789";
/// The RS256 public key customer tokens are checked with (`tests/fixtures`).
pub const JWT_RS256_PUBLIC_PEM: &str = include_str!("../tests/fixtures/jwt_rs256_public.pem");

/// The event log [`WsHarness`] starts with (one order of customer `c1`, partner `p1`, and one
/// entry another program wrote), so `after` replays have something to send and to skip.
pub const SEED_EVENTS: [&str; 3] = [
    r#"{"type":"order.accepted","orderId":"o1","customerId":"c1","partnerId":"p1","status":"accepted","version":1,"occurredAt":"2026-11-26T10:00:00.000Z"}"#,
    r#"{"type":"order.confirmed","orderId":"o1","customerId":"c1","partnerId":"p1","status":"confirmed","previousStatus":"accepted","version":2,"occurredAt":"2026-11-26T10:00:01.000Z","data":{"eta":"2026-11-27"}}"#,
    r#"{"not":"an event"}"#,
];

/// A configuration with one key of each kind and both JWT algorithms.
pub fn config() -> Config {
    let mut config = Config::default();
    config.auth.admin_keys = vec![ADMIN_KEY.to_string()];
    config.auth.partner_keys = vec![PartnerKey {
        key: PARTNER_KEY.to_string(),
        partner_id: "p1".to_string(),
        rate_limit_per_second: None,
        rate_limit_burst: None,
    }];
    config.auth.jwt.hs256_secret = JWT_SECRET.to_string();
    config.auth.jwt.rs256_public_key_pem = JWT_RS256_PUBLIC_PEM.to_string();
    config
}

/// The key ring of [`config`].
pub fn keyring() -> KeyRing {
    KeyRing::from_config(&config().auth).expect("the fuzzing key ring is valid")
}

/// One event-log entry as the Redis engine reads it (`XREAD`), turned into an event or a
/// malformed entry.
pub fn stream_entry(id: &str, fields: Vec<(Vec<u8>, Vec<u8>)>) -> LogEntry {
    crate::engine::log::decode_entry(0, id.to_string(), &fields)
}

/// What one connection did with a sequence of client messages.
pub struct WsOutcome {
    /// The handshake's credential checked: `None` without one; on `Err` the upgrade is refused
    /// (401) and no message is read.
    pub handshake: Option<Result<Principal, crate::auth::AuthError>>,
    /// Every text message queued for the client, in order.
    pub sent: Vec<String>,
    /// The close the session asked for (code, reason).
    pub close: Option<(u16, String)>,
}

/// A push node of one: the memory engine, the hub (following the log) and the schema, with
/// sessions driven message by message on a single-threaded runtime, as `socket::run` drives
/// them from a socket.
pub struct WsHarness {
    runtime: tokio::runtime::Runtime,
    state: Arc<PushState>,
}

impl WsHarness {
    pub fn new() -> WsHarness {
        let config = config();
        let engine = Arc::new(MemoryEngine::new(EngineSettings::from_config(
            &config,
            "fuzz".to_string(),
        )));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime starts");
        let position = runtime.block_on(async {
            for raw in SEED_EVENTS {
                engine
                    .append_raw_event(raw)
                    .await
                    .expect("the memory engine appends");
            }
            engine.log_end().await.expect("the memory engine reads")
        });
        let limits = DocumentLimits::from(&config.graphql);
        let metrics: Arc<crate::metrics::Metrics> = Default::default();
        let long_polls = Arc::new(crate::longpoll::LongPolls::new(
            &config.http,
            metrics.clone(),
            Default::default(),
        ));
        let node = Node(Arc::new(Shared {
            engine,
            workflow: Arc::new(
                crate::workflow::Workflow::new(
                    config.workflow.clone(),
                    crate::workflow::token::TokenKey::random(),
                )
                .expect("the fuzzed node's workflow compiles"),
            ),
            workflow_timers: Default::default(),
            keys: keyring(),
            rate_limiter: crate::http::ratelimit::ApiRateLimiter::new(
                &config.http,
                std::time::Instant::now(),
            ),
            config,
            metrics,
            webhook_allow: Arc::new(AllowList::default()),
            webhook_wake: Default::default(),
            long_polls,
        }));
        let hub = Arc::new(Hub::new());
        hub.start(&position);
        let state = Arc::new(PushState {
            node,
            hub,
            schema: Arc::new(GraphqlSchema::load().expect("config/schema.graphql is valid")),
            limits,
            connections: Default::default(),
            metrics: Default::default(),
            shutdown: Default::default(),
            stream_tokens: crate::auth::StreamTokenKey::random(),
        });
        WsHarness { runtime, state }
    }

    /// Opens a connection (handshake query string and offered subprotocols as AppSync clients
    /// send them), feeds it `messages` until the session closes, lets the subscriptions it
    /// started run, then ends them.
    pub fn connect(
        &self,
        subprotocol: Subprotocol,
        query: Option<&str>,
        offered: &[String],
        messages: &[&str],
    ) -> WsOutcome {
        let _guard = self.runtime.enter();
        let credential = ws::handshake_credential(&Default::default(), query, offered);
        let handshake = credential.map(|c| self.state.node.keys.authenticate(&c));
        let principal = match &handshake {
            // `ws::upgrade` answers 401: no connection, no session.
            Some(Err(_)) => {
                return WsOutcome {
                    handshake,
                    sent: Vec::new(),
                    close: None,
                };
            }
            Some(Ok(principal)) => Some(principal.clone()),
            None => None,
        };
        let conn = Arc::new(ConnHandle::new(
            self.state.node.config.push.outbound_queue_bytes,
        ));
        let mut session = Session::new(self.state.clone(), conn.clone(), principal);
        let protocol = subprotocol.protocol();
        let mut close = None;
        for text in messages {
            let flow = protocol.on_message(&mut session, text);
            if let Flow::Close(code, reason) = flow {
                close = Some((code, reason));
                break;
            }
        }
        // Let the subscriptions' start tasks (authorization, registration, replay) run.
        self.runtime.block_on(async {
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
        });
        session.end_all();
        self.runtime.block_on(tokio::task::yield_now());
        let sent = conn
            .take_batch()
            .into_iter()
            .filter(|out| !matches!(out, crate::push::conn::Out::Ping))
            .map(crate::push::conn::Out::into_text)
            .collect();
        WsOutcome {
            handshake,
            sent,
            close,
        }
    }
}

impl Default for WsHarness {
    fn default() -> Self {
        WsHarness::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn the_ws_harness_runs_a_real_session_with_replay() {
        let harness = WsHarness::new();
        let init =
            format!(r#"{{"type":"connection_init","payload":{{"x-api-key":"{ADMIN_KEY}"}}}}"#);
        let subscribe = r#"{"id":"1","type":"subscribe","payload":{"query":"subscription { onOrderUpdated(after: \"0-0\") { eventId status } }"}}"#;
        let outcome = harness.connect(Subprotocol::TransportWs, None, &[], &[&init, subscribe]);
        assert!(outcome.close.is_none());
        let kinds: Vec<String> = outcome
            .sent
            .iter()
            .map(|s| serde_json::from_str::<serde_json::Value>(s).unwrap()["type"].to_string())
            .collect();
        // The malformed seed entry is skipped, the two events are replayed.
        assert_eq!(kinds, [r#""connection_ack""#, r#""next""#, r#""next""#]);
        assert!(outcome.sent[2].contains(r#""status":"CONFIRMED""#));
    }

    #[test]
    fn the_ws_harness_checks_handshake_credentials() {
        let harness = WsHarness::new();
        let header = |key: &str| {
            let object = format!(r#"{{"x-api-key":"{key}"}}"#);
            format!(
                "header={}&payload=e30=",
                base64::engine::general_purpose::STANDARD.encode(object)
            )
        };
        let init = [r#"{"type":"connection_init"}"#];
        let ok = harness.connect(
            Subprotocol::GraphqlWs,
            Some(&header(PARTNER_KEY)),
            &[],
            &init,
        );
        assert!(matches!(ok.handshake, Some(Ok(Principal::Partner { .. }))));
        assert!(ok.sent[0].contains("connection_ack"));
        let refused = harness.connect(Subprotocol::GraphqlWs, Some(&header("wrong")), &[], &init);
        assert!(matches!(refused.handshake, Some(Err(_))));
        assert!(refused.sent.is_empty());
    }

    #[test]
    fn stream_entries_without_an_event_field_are_malformed() {
        let entry = stream_entry("1-0", vec![(b"evnt".to_vec(), SEED_EVENTS[0].into())]);
        assert!(matches!(entry, LogEntry::Malformed(_)));
        let entry = stream_entry("1-0", vec![(b"event".to_vec(), SEED_EVENTS[0].into())]);
        assert!(matches!(entry, LogEntry::Event(_)));
    }
}
