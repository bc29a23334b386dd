//! The order workflow's rules, in one room: which moves the transition table allows, the
//! business validation a new order passes (`accepted -> confirmed | rejected`), what the worker
//! decides for a command, and the status change (with its event) each decision writes.
//!
//! The table itself is configuration (`[workflow] transitions`, DESIGN: "the transition table
//! lives in config"); this module only reads it. The API asks [`check_transition`] before it
//! queues a transition, and the worker asks [`decide`] again when the command runs, because the
//! order may have moved on meanwhile. Nothing here performs I/O or touches the engine: callers
//! read the status and apply the decision.

use crate::config::WorkflowConfig;
use crate::engine::{Command, StatusChange};
use crate::model::{Order, OrderEvent, OrderStatus, StatusRecord, now_rfc3339};

/// Whether the table lets an order in `from` move to `to`; on refusal, where it may move
/// instead (what the API's 409 lists).
pub fn check_transition(
    workflow: &WorkflowConfig,
    from: OrderStatus,
    to: OrderStatus,
) -> Result<(), &[OrderStatus]> {
    if workflow.allows(from, to) {
        Ok(())
    } else {
        Err(workflow.targets(from))
    }
}

/// Why a new order is rejected; `None` means it passes business validation.
pub fn business_rejection(order: &Order, workflow: &WorkflowConfig) -> Option<String> {
    if !workflow.currencies.iter().any(|c| c == &order.currency) {
        return Some(format!("currency {} is not accepted", order.currency));
    }
    if let Some((i, item)) = order
        .items
        .iter()
        .enumerate()
        .find(|(_, item)| item.quantity <= 0)
    {
        return Some(format!(
            "item {i} ({}) has non-positive quantity {}",
            item.sku, item.quantity
        ));
    }
    None
}

/// What the worker does with a command, given the order's current status.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Write this change (status, history, event) and acknowledge the command.
    Change(StatusChange),
    /// Acknowledge without a change (the workflow no longer allows the command), and why.
    Refuse(String),
}

/// Decides a command against the order's current status: a new order is confirmed or
/// rejected by [`business_rejection`]; a transition happens if the table allows it now.
pub fn decide(workflow: &WorkflowConfig, command: &Command, status: &StatusRecord) -> Decision {
    match command {
        Command::ProcessOrder { order } => {
            if status.status != OrderStatus::Accepted {
                return Decision::Refuse(format!(
                    "order is already {}, not accepted",
                    status.status
                ));
            }
            let change = match business_rejection(order, workflow) {
                Some(reason) => status_change(status, OrderStatus::Rejected, Some(reason)),
                None => status_change(status, OrderStatus::Confirmed, None),
            };
            Decision::Change(change)
        }
        Command::Transition { status: to, reason } => {
            match check_transition(workflow, status.status, *to) {
                Ok(()) => Decision::Change(status_change(status, *to, reason.clone())),
                Err(_) => Decision::Refuse(format!(
                    "transition {} -> {to} is not allowed",
                    status.status
                )),
            }
        }
    }
}

/// The status a new order has before the worker sees it: `accepted` at version 1, as of its
/// creation. The worker decides a `processOrder` from this without reading the order back.
pub fn initial_status(order: &Order) -> StatusRecord {
    StatusRecord {
        order_id: order.order_id.clone(),
        customer_id: order.customer_id.clone(),
        partner_id: order.partner_id.clone(),
        status: OrderStatus::Accepted,
        version: 1,
        updated_at: order.created_at.clone(),
    }
}

/// The event intake writes with a new order: its entry into [`initial_status`].
pub fn accepted_event(order: &Order) -> OrderEvent {
    OrderEvent::entered(initial_status(order), None, None)
}

/// The change from `status` to `to`: the event that records it, version + 1, now.
pub fn status_change(
    status: &StatusRecord,
    to: OrderStatus,
    reason: Option<String>,
) -> StatusChange {
    let next = StatusRecord {
        status: to,
        version: status.version + 1,
        updated_at: now_rfc3339(),
        ..status.clone()
    };
    let event = OrderEvent::entered(next, Some(status.status), reason.as_deref());
    StatusChange {
        expected_version: status.version,
        event,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LineItem;

    fn order(currency: &str, quantity: i64) -> Order {
        Order {
            order_id: "o1".into(),
            customer_id: "c1".into(),
            partner_id: None,
            items: vec![LineItem {
                sku: "s".into(),
                quantity,
                unit_price: serde_json::Number::from(3),
            }],
            currency: currency.into(),
            metadata: None,
            created_at: now_rfc3339(),
        }
    }

    fn process(o: Order) -> Command {
        Command::ProcessOrder { order: Box::new(o) }
    }

    #[test]
    fn valid_orders_pass_business_validation() {
        assert_eq!(
            business_rejection(&order("USD", 2), &WorkflowConfig::default()),
            None
        );
    }

    #[test]
    fn unknown_currency_and_non_positive_quantity_reject() {
        let wf = WorkflowConfig::default();
        assert!(
            business_rejection(&order("XXX", 1), &wf)
                .unwrap()
                .contains("currency")
        );
        assert!(
            business_rejection(&order("USD", 0), &wf)
                .unwrap()
                .contains("quantity")
        );
    }

    #[test]
    fn a_new_order_is_confirmed_or_rejected_with_its_reason() {
        let wf = WorkflowConfig::default();
        let good = order("USD", 1);
        let Decision::Change(c) = decide(&wf, &process(good.clone()), &initial_status(&good))
        else {
            panic!("a valid order is decided");
        };
        assert_eq!(
            (c.event.status, c.expected_version, c.reason),
            (OrderStatus::Confirmed, 1, None)
        );
        let bad = order("XXX", 1);
        let Decision::Change(c) = decide(&wf, &process(bad.clone()), &initial_status(&bad)) else {
            panic!("an invalid order is decided");
        };
        assert_eq!(c.event.status, OrderStatus::Rejected);
        assert_eq!(c.reason.as_deref(), Some("currency XXX is not accepted"));
    }

    #[test]
    fn a_command_the_table_no_longer_allows_is_refused() {
        let wf = WorkflowConfig::default();
        let o = order("USD", 1);
        let mut status = initial_status(&o);
        status.status = OrderStatus::Shipped;
        assert!(matches!(
            decide(&wf, &process(o.clone()), &status),
            Decision::Refuse(_)
        ));
        let back = Command::Transition {
            status: OrderStatus::Preparing,
            reason: None,
        };
        assert_eq!(
            decide(&wf, &back, &status),
            Decision::Refuse("transition shipped -> preparing is not allowed".into())
        );
        assert_eq!(
            check_transition(&wf, OrderStatus::Shipped, OrderStatus::Preparing),
            Err(&[OrderStatus::Delivered][..])
        );
        assert_eq!(wf.targets(OrderStatus::Delivered), &[] as &[OrderStatus]);
    }
}
