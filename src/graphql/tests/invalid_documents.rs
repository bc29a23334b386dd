//! Documents Herald refuses, each with its error code, the document limits, and the inputs
//! preparation must survive without panicking.

use super::*;

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

/// The error code of a document without variables prepared within `limits`.
fn error_code_within(query: &str, limits: &DocumentLimits) -> String {
    error_code_with(query, json!({}), None, limits)
}

#[test]
fn oversized_document_exceeds_byte_limit() {
    let limits = DocumentLimits {
        max_bytes: 40,
        ..DocumentLimits::default()
    };
    assert_eq!(
        error_code_within(
            "subscription { onOrderUpdated { orderId status version } }",
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
        error_code_within("subscription { onOrderUpdated { orderId } }", &limits),
        codes::LIMIT_EXCEEDED
    );
}

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
