//! Event filters: the `filter:` operators, the arguments anded with them, and the index key a
//! subscription is filed under.

use super::*;

fn filter(expr: Value) -> SubscriptionSpec {
    subscription(
        "subscription($f: OrderEventFilter) { onOrderUpdated(filter: $f) { orderId } }",
        json!({ "f": expr }),
    )
}

fn passes(expr: Value, ev: &LoggedEvent) -> bool {
    filter(expr).filter.matches(ev)
}

/// Asserts `spec` lets [`shipped`] through and refuses every one of `refused`.
#[track_caller]
fn assert_only_the_shipped_event_passes(spec: &SubscriptionSpec, refused: &[LoggedEvent]) {
    assert!(spec.filter.matches(&shipped()));
    for ev in refused {
        assert!(!spec.filter.matches(ev), "{ev:?}");
    }
}

#[test]
fn eq_and_ne() {
    let ev = shipped();
    assert!(passes(json!({"orderId": {"eq": "o-1"}}), &ev));
    assert!(!passes(json!({"orderId": {"eq": "o-2"}}), &ev));
    assert!(passes(json!({"orderId": {"ne": "o-2"}}), &ev));
    assert!(!passes(json!({"orderId": {"ne": "o-1"}}), &ev));
}

#[test]
fn in_and_not_in() {
    let ev = shipped();
    assert!(passes(json!({"partnerId": {"in": ["p-1", "p-9"]}}), &ev));
    assert!(!passes(json!({"partnerId": {"in": ["p-1"]}}), &ev));
    assert!(passes(json!({"partnerId": {"notIn": ["p-1"]}}), &ev));
    assert!(!passes(json!({"partnerId": {"notIn": ["p-9"]}}), &ev));
}

#[test]
fn begins_with() {
    let ev = shipped();
    assert!(passes(json!({"customerId": {"beginsWith": "c-"}}), &ev));
    assert!(!passes(json!({"customerId": {"beginsWith": "x"}}), &ev));
}

#[test]
fn status_compares_enum_name_case_insensitively() {
    let ev = shipped();
    assert!(passes(json!({"status": {"eq": "SHIPPED"}}), &ev));
    assert!(passes(json!({"status": {"eq": "shipped"}}), &ev));
    assert!(passes(
        json!({"status": {"in": ["Delivered", "sHiPpEd"]}}),
        &ev
    ));
    assert!(passes(json!({"status": {"beginsWith": "ship"}}), &ev));
    assert!(!passes(json!({"status": {"ne": "shipped"}}), &ev));
}

#[test]
fn type_compares_event_type() {
    let ev = shipped();
    assert!(passes(json!({"type": {"eq": "order.shipped"}}), &ev));
    assert!(passes(json!({"type": {"beginsWith": "order."}}), &ev));
    assert!(!passes(json!({"type": {"notIn": ["order.shipped"]}}), &ev));
}

#[test]
fn absent_partner_fails_eq_in_begins_with_and_passes_ne_not_in() {
    let ev = event(None, OrderStatus::Shipped);
    assert!(!passes(json!({"partnerId": {"eq": "p"}}), &ev));
    assert!(!passes(json!({"partnerId": {"in": ["p"]}}), &ev));
    assert!(!passes(json!({"partnerId": {"beginsWith": ""}}), &ev));
    assert!(passes(json!({"partnerId": {"ne": "p"}}), &ev));
    assert!(passes(json!({"partnerId": {"notIn": ["p"]}}), &ev));
}

#[test]
fn operators_within_one_string_filter_are_anded() {
    let ev = shipped();
    assert!(passes(
        json!({"orderId": {"beginsWith": "o-", "ne": "o-2"}}),
        &ev
    ));
    assert!(!passes(
        json!({"orderId": {"beginsWith": "o-", "ne": "o-1"}}),
        &ev
    ));
}

#[test]
fn nested_and_or_not() {
    let ev = shipped();
    let expr = json!({
        "or": [
            {"status": {"eq": "DELIVERED"}},
            {"and": [
                {"type": {"eq": "order.shipped"}},
                {"not": {"partnerId": {"eq": "p-1"}}}
            ]}
        ]
    });
    assert!(passes(expr, &ev));
    assert!(!passes(
        json!({"not": {"or": [{"orderId": {"eq": "o-1"}}]}}),
        &ev
    ));
    assert!(passes(json!({"and": []}), &ev));
    assert!(!passes(json!({"or": []}), &ev));
}

#[test]
fn filter_literal_with_nested_variable() {
    let spec = subscription(
        "subscription($p: String) { onOrderUpdated(filter: {partnerId: {eq: $p}, not: {status: {eq: \"cancelled\"}}}) { orderId } }",
        json!({"p": "p-9"}),
    );
    assert_only_the_shipped_event_passes(
        &spec,
        &[
            event(Some("p-1"), OrderStatus::Shipped),
            event(Some("p-9"), OrderStatus::Cancelled),
        ],
    );
}

#[test]
fn arguments_and_filter_are_anded() {
    let spec = subscription(
        "subscription { onOrderUpdated(orderId: \"o-1\", status: [SHIPPED], filter: {partnerId: {eq: \"p-9\"}}) { orderId } }",
        json!({}),
    );
    assert_only_the_shipped_event_passes(
        &spec,
        &[
            event(Some("p-9"), OrderStatus::Delivered),
            event(Some("p-1"), OrderStatus::Shipped),
        ],
    );
}

#[test]
fn filter_nesting_is_bounded() {
    let mut f = json!({"orderId": {"eq": "o-1"}});
    for _ in 0..MAX_FILTER_DEPTH + 1 {
        f = json!({ "not": f });
    }
    assert_eq!(
        error_code(
            "subscription($f: OrderEventFilter) { onOrderUpdated(filter: $f) { orderId } }",
            json!({ "f": f })
        ),
        codes::BAD_USER_INPUT
    );
}

#[test]
fn index_key_prefers_order_then_customer_then_partner() {
    let key = |args: &str| {
        subscription(
            &format!("subscription {{ onOrderUpdated{args} {{ orderId }} }}"),
            json!({}),
        )
        .filter
        .index_key()
    };
    assert_eq!(
        key("(partnerId: \"p\", customerId: \"c\", orderId: \"o\")"),
        IndexKey::Order("o".into())
    );
    assert_eq!(
        key("(partnerId: \"p\", customerId: \"c\")"),
        IndexKey::Customer("c".into())
    );
    assert_eq!(key("(partnerId: \"p\")"), IndexKey::Partner("p".into()));
    assert_eq!(
        key("(filter: {orderId: {eq: \"o\"}}, status: [SHIPPED])"),
        IndexKey::All
    );
}
