//! The hardening suite (issue 12): each hole an outside review found, tried the way a hostile
//! user or an unlucky operator would, against the real binary (and a real `redis-server` where
//! the engine matters). One module per item; each test ends by printing one line
//! `SUITE-FIGURES {"suite":"hardening","item":..,"test":..,...}` for `scripts/reliability.sh`,
//! which renders RELIABILITY.md from them.

#[path = "../common/mod.rs"]
mod common;

use serde_json::{Value, json};

/// Prints this test's figures line: `item` is the item number, `fields` a JSON object
/// of what the test counted (attempts, refusals, what leaked or was lost: 0 when it passes).
#[allow(dead_code)]
pub fn figures(item: u32, test: &str, fields: Value) {
    let mut line = json!({"suite": "hardening", "item": item, "test": test});
    if let (Some(line), Value::Object(fields)) = (line.as_object_mut(), fields) {
        line.extend(fields);
    }
    println!("SUITE-FIGURES {line}");
}

// One module per item of issue 12 (tests/hardening/<name>.rs), added by the change that fixes it.
mod longpoll;
mod push;
mod queue;
mod retention;
mod small;
mod tenant;
mod webhooks;
