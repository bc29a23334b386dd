//! `graphql-ws` (AppSync and Apollo) connections: line 1 is the handshake's query string
//! (AppSync's base64 `header` and `payload` parameters), line 2 the offered subprotocols
//! (comma-separated, `header-<base64url>` included), every further line one client message, on
//! a real push session. Never panics; every message sent back is a JSON object of a type the
//! dialects define; the session only closes with 1000 (terminate) or 4401 (refused).

#![no_main]

use herald::fuzzing::WsHarness;
use herald::fuzzing::Subprotocol;
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static HARNESS: LazyLock<WsHarness> = LazyLock::new(WsHarness::new);

const TYPES: [&str; 7] = [
    "connection_ack",
    "ka",
    "start_ack",
    "data",
    "error",
    "complete",
    "connection_error",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.lines();
    let query = lines.next();
    let offered: Vec<String> = lines
        .next()
        .unwrap_or_default()
        .split(',')
        .map(|p| p.trim().to_string())
        .collect();
    let messages: Vec<&str> = lines.take(16).collect();
    let outcome = HARNESS.connect(Subprotocol::GraphqlWs, query, &offered, &messages);
    if matches!(outcome.handshake, Some(Err(_))) {
        assert!(outcome.sent.is_empty() && outcome.close.is_none());
        return;
    }
    for sent in &outcome.sent {
        let value: serde_json::Value =
            serde_json::from_str(sent).expect("every message sent is JSON");
        let kind = value["type"].as_str().expect("every message has a type");
        assert!(TYPES.contains(&kind), "unexpected message type {kind}");
        if kind == "data" {
            assert!(value["id"].is_string() && value["payload"].is_object());
        }
    }
    if let Some((code, reason)) = &outcome.close {
        assert!(
            [1000, 4401].contains(code),
            "undocumented close code {code}"
        );
        assert!(reason.len() <= 123, "close reason over 123 bytes");
    }
});
