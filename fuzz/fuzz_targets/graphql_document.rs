//! A GraphQL request through the real preparation path: parse, validate against
//! `config/schema.graphql`, the document limits, variables, filters and the projection. Input:
//! the document, then optionally a NUL byte and the variables (a JSON object), then optionally
//! a NUL byte and the operation name. Never panics; a refusal has at least one error with a
//! message; an accepted subscription's filter runs on events and its projection renders JSON.

#![no_main]

use herald::fuzzing::SEED_EVENTS;
use herald::graphql::{DocumentLimits, GraphqlRequest, GraphqlSchema, Operation};
use herald::model::{LoggedEvent, OrderEvent, OrderStatus, StatusRecord};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static SCHEMA: LazyLock<GraphqlSchema> =
    LazyLock::new(|| GraphqlSchema::load().expect("config/schema.graphql is valid"));

/// Events to run filters on and render, with strings that need escaping.
static EVENTS: LazyLock<Vec<LoggedEvent>> = LazyLock::new(|| {
    let tricky = r#"{"type":"order.shipped","orderId":"o\"2\\\u0000","customerId":"c\u2028\n","partnerId":"p1","status":"shipped","previousStatus":"preparing","version":18446744073709551615,"occurredAt":"2026-11-26T10:00:02+01:00","data":{"x":[1,2.5e300,"\u0001"],"y":null}}"#;
    SEED_EVENTS
        .iter()
        .chain([&tricky])
        .filter_map(|raw| OrderEvent::parse(raw).ok())
        .enumerate()
        .map(|(i, event)| LoggedEvent {
            event_id: format!("1700000000000-{i}"),
            partition: 0,
            cursor: None,
            event,
        })
        .collect()
});

fn assert_json(bytes: &[u8]) {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).expect("a rendered payload is JSON");
    assert!(value["data"].is_object(), "a payload has a data object");
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == 0);
    let Ok(query) = std::str::from_utf8(parts.next().unwrap_or_default()) else {
        return; // the request is JSON: its strings are UTF-8
    };
    let variables = parts
        .next()
        .and_then(|v| serde_json::from_slice::<serde_json::Map<_, _>>(v).ok());
    let operation_name = parts
        .next()
        .and_then(|n| std::str::from_utf8(n).ok())
        .map(str::to_string);
    let request = GraphqlRequest {
        query: query.to_string(),
        variables,
        operation_name,
    };
    match SCHEMA.prepare(&request, &DocumentLimits::default()) {
        Ok(Operation::Subscription(spec)) => {
            let _ = spec.filter.index_key();
            for event in EVENTS.iter() {
                let _ = spec.filter.matches(event);
                assert_json(&spec.projection.render_event(event));
            }
        }
        Ok(Operation::Query(query)) => {
            let record = StatusRecord {
                order_id: query.order_id.clone(),
                customer_id: "c\"1".into(),
                partner_id: None,
                status: OrderStatus::Delivered,
                version: 3,
                updated_at: "2026-11-26T10:00:00.000Z".into(),
            };
            assert_json(&query.projection.render_order(Some(&record)));
            assert_json(&query.projection.render_order(None));
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "a refusal carries an error");
            for e in &errors {
                assert!(!e.message.is_empty(), "every error has a message");
            }
            serde_json::to_string(&errors).expect("errors serialise");
        }
    }
});
