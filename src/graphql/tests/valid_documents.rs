//! Documents Herald accepts: what they select, how each event or order renders, and when two
//! documents share one projection.

use super::*;

/// The keys of `data.<root>` in output order.
fn keys_in_order(bytes: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Wrapper {
        data: serde_json::Map<String, Value>,
    }
    // serde_json keeps insertion order only with preserve_order, so read the raw text instead.
    let text = std::str::from_utf8(bytes).expect("utf-8");
    let wrapper: Wrapper = serde_json::from_str(text).expect("json");
    let root = wrapper.data.keys().next().cloned().unwrap_or_default();
    let inner_start = text.find(&format!("\"{root}\":{{")).expect("root") + root.len() + 4;
    let mut keys = Vec::new();
    let mut rest = &text[inner_start..];
    while let Some(start) = rest.find('"') {
        let after = &rest[start + 1..];
        let end = after.find('"').expect("closing quote");
        keys.push(after[..end].to_string());
        // Skip the value: everything up to the next top-level comma or the closing brace.
        let value = &after[end + 2..];
        let mut depth = 0;
        let mut in_str = false;
        let mut escaped = false;
        let mut cut = value.len();
        for (i, c) in value.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if in_str => escaped = true,
                '"' => in_str = !in_str,
                '{' | '[' if !in_str => depth += 1,
                '}' | ']' if !in_str && depth > 0 => depth -= 1,
                ',' | '}' if !in_str && depth == 0 => {
                    cut = i;
                    break;
                }
                _ => {}
            }
        }
        if value[cut..].starts_with('}') {
            break;
        }
        rest = &value[cut + 1..];
    }
    keys
}

#[test]
fn subscription_with_variables_builds_filter_and_cursor() {
    let spec = subscription(
        "subscription S($c: ID, $st: [OrderStatus!], $after: ID) {
           onOrderUpdated(customerId: $c, status: $st, after: $after) { orderId status }
         }",
        json!({"c": "c-7", "st": ["SHIPPED", "DELIVERED"], "after": "17-0"}),
    );
    assert_eq!(spec.filter.customer_id.as_deref(), Some("c-7"));
    assert_eq!(
        spec.filter.statuses,
        Some(vec![OrderStatus::Shipped, OrderStatus::Delivered])
    );
    assert_eq!(spec.after.as_deref(), Some("17-0"));
    assert!(spec.filter.order_id.is_none() && spec.filter.expr.is_none());
}

#[test]
fn single_status_literal_is_coerced_to_a_list() {
    let spec = subscription(
        "subscription { onOrderUpdated(status: SHIPPED) { orderId } }",
        json!({}),
    );
    assert_eq!(spec.filter.statuses, Some(vec![OrderStatus::Shipped]));
}

#[test]
fn render_event_keeps_document_order_aliases_and_escapes() {
    let spec = subscription(
        "subscription { update: onOrderUpdated {
           version s: status eventId type orderId customerId partnerId previousStatus occurredAt data __typename
         } }",
        json!({}),
    );
    let bytes = spec.projection.render_event(&shipped());
    let value: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(
        value,
        json!({"data": {"update": {
            "version": 4, "s": "SHIPPED", "eventId": "1700000000000-3", "type": "order.shipped",
            "orderId": "o-1", "customerId": "c-\"quoted\"\n", "partnerId": "p-9",
            "previousStatus": "PREPARING", "occurredAt": "2026-11-26T10:00:00.123Z",
            "data": "{\"carrier\":\"DHL\",\"n\":[1,2.5]}", "__typename": "OrderEvent"
        }}})
    );
    assert_eq!(
        keys_in_order(&bytes),
        [
            "version",
            "s",
            "eventId",
            "type",
            "orderId",
            "customerId",
            "partnerId",
            "previousStatus",
            "occurredAt",
            "data",
            "__typename"
        ]
    );
}

#[test]
fn absent_optional_fields_render_as_null() {
    let spec = subscription(
        "subscription { onOrderUpdated { partnerId previousStatus data } }",
        json!({}),
    );
    let mut ev = event(None, OrderStatus::Accepted);
    ev.event.previous_status = None;
    ev.event.data = None;
    assert_eq!(
        rendered(&spec, &ev),
        json!({"data": {"onOrderUpdated": {"partnerId": null, "previousStatus": null, "data": null}}})
    );
}

#[test]
fn named_and_inline_fragments_expand_in_place() {
    let spec = subscription(
        "subscription { onOrderUpdated { orderId ...F ... on OrderEvent { version } } }
         fragment F on OrderEvent { status ... { eventId } }",
        json!({}),
    );
    let bytes = spec.projection.render_event(&shipped());
    assert_eq!(
        keys_in_order(&bytes),
        ["orderId", "status", "eventId", "version"]
    );
}

#[test]
fn skip_and_include_honour_literals_and_variables() {
    let spec = subscription(
        "subscription($no: Boolean!, $yes: Boolean = true) { onOrderUpdated {
           orderId @skip(if: true) status @include(if: $yes) version @include(if: $no)
           ...F @skip(if: $no) ... @include(if: false) { eventId }
         } }
         fragment F on OrderEvent { type }",
        json!({"no": false}),
    );
    assert_eq!(
        rendered(&spec, &shipped()),
        json!({"data": {"onOrderUpdated": {"status": "SHIPPED", "type": "order.shipped"}}})
    );
}

#[test]
fn repeated_response_keys_merge() {
    let spec = subscription(
        "subscription { onOrderUpdated { orderId ... { orderId status } orderId } }",
        json!({}),
    );
    assert_eq!(
        keys_in_order(&spec.projection.render_event(&shipped())),
        ["orderId", "status"]
    );
}

#[test]
fn operation_name_selects_among_several() {
    let mut req = request(
        "subscription A { onOrderUpdated { orderId } } query B { order(orderId: \"o-1\") { status } }",
        json!({}),
    );
    req.operation_name = Some("B".into());
    match schema().prepare(&req, &DocumentLimits::default()) {
        Ok(Operation::Query(q)) => assert_eq!(q.order_id, "o-1"),
        other => panic!("expected query B, got {other:?}"),
    }
}

#[test]
fn order_query_renders_record_and_null() {
    let q = order_query(
        "query($id: ID!) { __typename o: order(orderId: $id) { __typename status partnerId version updatedAt } }",
        json!({"id": "o-1"}),
    );
    assert_eq!(q.order_id, "o-1");
    let record = StatusRecord {
        order_id: "o-1".into(),
        customer_id: "c-1".into(),
        partner_id: None,
        status: OrderStatus::Confirmed,
        version: 2,
        updated_at: "2026-11-26T10:00:00.000Z".into(),
    };
    let some: Value =
        serde_json::from_slice(&q.projection.render_order(Some(&record))).expect("json");
    assert_eq!(
        some,
        json!({"data": {"__typename": "Query", "o": {"__typename": "Order", "status": "CONFIRMED",
            "partnerId": null, "version": 2, "updatedAt": "2026-11-26T10:00:00.000Z"}}})
    );
    let none: Value = serde_json::from_slice(&q.projection.render_order(None)).expect("json");
    assert_eq!(none, json!({"data": {"__typename": "Query", "o": null}}));
}

#[test]
fn render_order_none_is_order_null() {
    let q = order_query("{ order(orderId: 5) { orderId } }", json!({}));
    assert_eq!(q.order_id, "5");
    assert_eq!(
        &q.projection.render_order(None)[..],
        br#"{"data":{"order":null}}"#
    );
}

#[test]
fn key_is_equal_for_fragment_and_inline_forms() {
    let a = subscription(
        "subscription { onOrderUpdated(orderId: \"x\") { ...F } } fragment F on OrderEvent { orderId s: status }",
        json!({}),
    );
    let b = subscription(
        "subscription($v: Boolean!) { onOrderUpdated(customerId: \"y\") { ... on OrderEvent { orderId } s: status version @include(if: $v) } }",
        json!({"v": false}),
    );
    assert_eq!(a.projection.key(), b.projection.key());
}

#[test]
fn key_differs_for_different_selections() {
    let keys: Vec<String> = [
        "subscription { onOrderUpdated { orderId status } }",
        "subscription { onOrderUpdated { status orderId } }",
        "subscription { onOrderUpdated { orderId s: status } }",
        "subscription { u: onOrderUpdated { orderId status } }",
        "subscription { onOrderUpdated { orderId status __typename } }",
    ]
    .iter()
    .map(|q| subscription(q, json!({})).projection.key().to_string())
    .collect();
    for (i, a) in keys.iter().enumerate() {
        for b in &keys[i + 1..] {
            assert_ne!(a, b);
        }
    }
}
