//! `graphql-transport-ws` client messages (one per line) on a fresh connection of a real push
//! session (memory engine, hub, schema). Never panics; every message sent back is a JSON object
//! of a type the protocol defines; the session only closes with the protocol's codes.

#![no_main]

use herald::fuzzing::WsHarness;
use herald::fuzzing::Subprotocol;
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static HARNESS: LazyLock<WsHarness> = LazyLock::new(WsHarness::new);

const TYPES: [&str; 5] = ["connection_ack", "pong", "next", "error", "complete"];
const CLOSE_CODES: [u16; 5] = [4400, 4401, 4403, 4409, 4429];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // binary frames never reach the parser (the session closes with 4400)
    };
    let messages: Vec<&str> = text.lines().take(16).collect();
    let outcome = HARNESS.connect(Subprotocol::TransportWs, None, &[], &messages);
    let mut acked = false;
    for sent in &outcome.sent {
        let value: serde_json::Value =
            serde_json::from_str(sent).expect("every message sent is JSON");
        let kind = value["type"].as_str().expect("every message has a type");
        assert!(TYPES.contains(&kind), "unexpected message type {kind}");
        acked |= kind == "connection_ack";
        if kind == "next" {
            assert!(acked, "no `next` before `connection_ack`");
            assert!(value["id"].is_string() && value["payload"].is_object());
        }
    }
    if let Some((code, reason)) = &outcome.close {
        assert!(CLOSE_CODES.contains(code), "undocumented close code {code}");
        assert!(reason.len() <= 123, "close reason over 123 bytes");
    }
});
