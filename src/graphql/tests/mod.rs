//! Specifications of request preparation, filtering and rendering, one file per subject:
//! documents Herald accepts and what they render, documents it refuses (and inputs it must
//! survive), and event filters. The helpers here build requests and events for all of them.

mod filters;
mod invalid_documents;
mod valid_documents;

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
        partition: 0,
        cursor: None,
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
