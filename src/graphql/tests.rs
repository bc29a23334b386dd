//! Specifications of request preparation, filtering and rendering.

use super::*;
use crate::model::{LoggedEvent, OrderEvent, OrderStatus, StatusRecord};
use serde_json::{Value, json};

fn schema() -> GraphqlSchema {
    GraphqlSchema::load().expect("the embedded schema is valid")
}

fn request(query: &str, variables: Value) -> GraphqlRequest {
    GraphqlRequest {
        query: query.to_string(),
        variables: variables.as_object().cloned(),
        operation_name: None,
    }
}

fn prepare(query: &str, variables: Value) -> Result<Operation, Vec<GraphqlError>> {
    schema().prepare(&request(query, variables), &DocumentLimits::default())
}

fn subscription(query: &str, variables: Value) -> SubscriptionSpec {
    match prepare(query, variables) {
        Ok(Operation::Subscription(spec)) => spec,
        Ok(other) => panic!("expected a subscription, got {other:?}"),
        Err(errors) => panic!("expected a subscription, got {errors:?}"),
    }
}

fn order_query(query: &str, variables: Value) -> OrderQuery {
    match prepare(query, variables) {
        Ok(Operation::Query(q)) => q,
        Ok(other) => panic!("expected a query, got {other:?}"),
        Err(errors) => panic!("expected a query, got {errors:?}"),
    }
}

fn error_code(query: &str, variables: Value) -> String {
    error_code_with(query, variables, None, &DocumentLimits::default())
}

fn error_code_with(
    query: &str,
    variables: Value,
    operation_name: Option<&str>,
    limits: &DocumentLimits,
) -> String {
    let mut req = request(query, variables);
    req.operation_name = operation_name.map(str::to_string);
    match schema().prepare(&req, limits) {
        Ok(op) => panic!("expected an error, got {op:?}"),
        Err(errors) => {
            assert!(!errors.is_empty());
            errors[0].code().unwrap_or_default().to_string()
        }
    }
}

fn event(partner: Option<&str>, status: OrderStatus) -> LoggedEvent {
    LoggedEvent {
        event_id: "1700000000000-3".into(),
        event: OrderEvent {
            event_type: status.event_type(),
            order_id: "o-1".into(),
            customer_id: "c-\"quoted\"\n".into(),
            partner_id: partner.map(str::to_string),
            status,
            previous_status: Some(OrderStatus::Preparing),
            version: 4,
            occurred_at: "2026-11-26T10:00:00.123Z".into(),
            data: Some(json!({"carrier": "DHL", "n": [1, 2.5]})),
        },
    }
}

fn shipped() -> LoggedEvent {
    event(Some("p-9"), OrderStatus::Shipped)
}

fn rendered(spec: &SubscriptionSpec, ev: &LoggedEvent) -> Value {
    serde_json::from_slice(&spec.projection.render_event(ev)).expect("render is JSON")
}

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

// ---------------------------------------------------------------- valid documents

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

// ---------------------------------------------------------------- invalid documents

#[test]
fn syntax_error_is_parse_failed_with_location() {
    let errors = match prepare("subscription { onOrderUpdated { orderId }", json!({})) {
        Err(e) => e,
        Ok(op) => panic!("{op:?}"),
    };
    assert_eq!(errors[0].code(), Some(codes::PARSE_FAILED));
    assert!(!errors[0].locations.is_empty());
}

#[test]
fn unknown_field_is_validation_failed_with_location() {
    let errors = match prepare("subscription { onOrderUpdated { nope } }", json!({})) {
        Err(e) => e,
        Ok(op) => panic!("{op:?}"),
    };
    assert_eq!(errors[0].code(), Some(codes::VALIDATION_FAILED));
    let unknown = errors
        .iter()
        .find(|e| e.message.contains("nope"))
        .unwrap_or_else(|| panic!("no error names the field: {errors:?}"));
    assert_eq!(unknown.code(), Some(codes::VALIDATION_FAILED));
    assert_eq!(
        unknown.locations,
        [Location {
            line: 1,
            column: 33
        }]
    );
}

#[test]
fn wrong_literal_argument_type_is_validation_failed() {
    assert_eq!(
        error_code(
            "subscription { onOrderUpdated(status: [\"shipped\"]) { orderId } }",
            json!({})
        ),
        codes::VALIDATION_FAILED
    );
}

#[test]
fn wrong_variable_type_is_bad_user_input() {
    assert_eq!(
        error_code(
            "subscription($st: [OrderStatus!]) { onOrderUpdated(status: $st) { orderId } }",
            json!({"st": ["NOT_A_STATUS"]})
        ),
        codes::BAD_USER_INPUT
    );
}

#[test]
fn missing_required_variable_is_bad_user_input() {
    assert_eq!(
        error_code(
            "query($id: ID!) { order(orderId: $id) { status } }",
            json!({})
        ),
        codes::BAD_USER_INPUT
    );
}

#[test]
fn two_operations_without_name_are_refused() {
    assert_eq!(
        error_code(
            "subscription A { onOrderUpdated { orderId } } subscription B { onOrderUpdated { status } }",
            json!({})
        ),
        codes::VALIDATION_FAILED
    );
    assert_eq!(
        error_code_with(
            "subscription A { onOrderUpdated { orderId } }",
            json!({}),
            Some("Missing"),
            &DocumentLimits::default()
        ),
        codes::VALIDATION_FAILED
    );
}

#[test]
fn mutation_is_refused() {
    assert_eq!(
        error_code("mutation { cancel }", json!({})),
        codes::VALIDATION_FAILED
    );
}

#[test]
fn subscription_with_two_root_fields_is_refused() {
    assert_eq!(
        error_code(
            "subscription { a: onOrderUpdated { orderId } b: onOrderUpdated { status } }",
            json!({})
        ),
        codes::VALIDATION_FAILED
    );
}

#[test]
fn introspection_query_is_refused() {
    assert_eq!(
        error_code("{ __schema { types { name } } }", json!({})),
        codes::VALIDATION_FAILED
    );
}

#[test]
fn oversized_document_exceeds_byte_limit() {
    let limits = DocumentLimits {
        max_bytes: 40,
        ..DocumentLimits::default()
    };
    assert_eq!(
        error_code_with(
            "subscription { onOrderUpdated { orderId status version } }",
            json!({}),
            None,
            &limits
        ),
        codes::LIMIT_EXCEEDED
    );
}

#[test]
fn fields_are_counted_after_fragment_expansion_with_aliases() {
    let limits = DocumentLimits {
        max_fields: 6,
        ..DocumentLimits::default()
    };
    // 1 root + 3 from F + 3 aliased = 7 fields.
    let doc = "subscription { onOrderUpdated { ...F ... { x: orderId y: status z: version } } }
               fragment F on OrderEvent { orderId status version }";
    assert_eq!(
        error_code_with(doc, json!({}), None, &limits),
        codes::LIMIT_EXCEEDED
    );
    let ok = DocumentLimits {
        max_fields: 7,
        ..limits
    };
    assert!(schema().prepare(&request(doc, json!({})), &ok).is_ok());
}

#[test]
fn aliases_are_counted_after_fragment_expansion() {
    let limits = DocumentLimits {
        max_aliases: 3,
        ..DocumentLimits::default()
    };
    // 2 aliases in the fragment, spread twice, 4 in all.
    let doc = "subscription { onOrderUpdated { ...F ...F } }
               fragment F on OrderEvent { a: orderId b: version }";
    let errors = match schema().prepare(&request(doc, json!({})), &limits) {
        Err(errors) => errors,
        Ok(op) => panic!("accepted: {op:?}"),
    };
    assert_eq!(errors[0].code(), Some(codes::LIMIT_EXCEEDED));
    assert!(errors[0].message.contains("aliased"), "{errors:?}");
    let ok = DocumentLimits {
        max_aliases: 4,
        ..limits
    };
    assert!(schema().prepare(&request(doc, json!({})), &ok).is_ok());
}

#[test]
fn exponential_fragments_stop_at_the_field_limit() {
    let mut doc = String::from("subscription { onOrderUpdated { ...F0 } }\n");
    doc.push_str("fragment F0 on OrderEvent { ...F1 ...F1 }\n");
    for i in 1..30 {
        doc.push_str(&format!(
            "fragment F{i} on OrderEvent {{ ...F{} ...F{} }}\n",
            i + 1,
            i + 1
        ));
    }
    doc.push_str("fragment F30 on OrderEvent { orderId }\n");
    assert_eq!(error_code(&doc, json!({})), codes::LIMIT_EXCEEDED);
}

#[test]
fn depth_limit_is_enforced() {
    let limits = DocumentLimits {
        max_depth: 1,
        ..DocumentLimits::default()
    };
    assert_eq!(
        error_code_with(
            "subscription { onOrderUpdated { orderId } }",
            json!({}),
            None,
            &limits
        ),
        codes::LIMIT_EXCEEDED
    );
}

// ---------------------------------------------------------------- filters

fn filter(expr: Value) -> SubscriptionSpec {
    subscription(
        "subscription($f: OrderEventFilter) { onOrderUpdated(filter: $f) { orderId } }",
        json!({ "f": expr }),
    )
}

fn passes(expr: Value, ev: &LoggedEvent) -> bool {
    filter(expr).filter.matches(ev)
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
    assert!(spec.filter.matches(&shipped()));
    assert!(
        !spec
            .filter
            .matches(&event(Some("p-1"), OrderStatus::Shipped))
    );
    assert!(
        !spec
            .filter
            .matches(&event(Some("p-9"), OrderStatus::Cancelled))
    );
}

#[test]
fn arguments_and_filter_are_anded() {
    let spec = subscription(
        "subscription { onOrderUpdated(orderId: \"o-1\", status: [SHIPPED], filter: {partnerId: {eq: \"p-9\"}}) { orderId } }",
        json!({}),
    );
    assert!(spec.filter.matches(&shipped()));
    assert!(
        !spec
            .filter
            .matches(&event(Some("p-9"), OrderStatus::Delivered))
    );
    assert!(
        !spec
            .filter
            .matches(&event(Some("p-1"), OrderStatus::Shipped))
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

// ---------------------------------------------------------------- index keys

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

// ---------------------------------------------------------------- robustness

#[test]
fn random_and_truncated_documents_never_panic() {
    let schema = schema();
    let limits = DocumentLimits::default();
    let seeds = [
        "subscription S($f: OrderEventFilter, $s: Boolean!) { u: onOrderUpdated(filter: $f, status: [SHIPPED], after: \"1-0\") { ...F orderId @skip(if: $s) ... on OrderEvent { __typename data } } } fragment F on OrderEvent { status version }",
        "query Q($id: ID!) { __typename order(orderId: $id) { orderId status updatedAt } }",
        "{ order(orderId: \"x\") { ...on Order { version } } }",
    ];
    let variables = json!({"f": {"or": [{"status": {"eq": "x"}}]}, "s": true, "id": "o"});
    let alphabet: Vec<char> = "{}()[]:$@!.,\"\\ \n#abcdefgimnopqrsStuvxyz_0123456789=…"
        .chars()
        .collect();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // The seeds themselves are valid: the mutations start from documents the real path accepts.
    for seed in seeds {
        assert!(
            schema
                .prepare(&request(seed, variables.clone()), &limits)
                .is_ok(),
            "seed refused: {seed}"
        );
    }
    for seed in seeds {
        let chars: Vec<char> = seed.chars().collect();
        for cut in 0..chars.len() {
            let text: String = chars[..cut].iter().collect();
            let _ = schema.prepare(&request(&text, variables.clone()), &limits);
        }
        for _ in 0..200 {
            let mut mutated = chars.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() as usize) % mutated.len();
                mutated[i] = alphabet[(next() as usize) % alphabet.len()];
            }
            let text: String = mutated.iter().collect();
            let _ = schema.prepare(&request(&text, variables.clone()), &limits);
        }
    }
    for _ in 0..300 {
        let len = (next() % 120) as usize;
        let text: String = (0..len)
            .map(|_| alphabet[(next() as usize) % alphabet.len()])
            .collect();
        let _ = schema.prepare(&request(&text, json!({"x": [1, {"y": null}]})), &limits);
    }
    let deep = format!("{}{}", "{a:".repeat(5000), "}".repeat(5000));
    let _ = schema.prepare(
        &request(&deep, json!({})),
        &DocumentLimits {
            max_bytes: 1 << 20,
            ..limits
        },
    );
}
