//! The order workflow's rules, in one room: which moves the transition table allows, the
//! business validation a new order passes (`accepted -> confirmed | rejected`), what the worker
//! decides for a command, and the status change (with its event) each decision writes.
//!
//! The table itself is configuration (`[workflow] transitions`, DESIGN: "the transition table
//! lives in config"); this module only reads it. The API asks [`check_transition`] before it
//! queues a transition, and the worker asks [`decide`] again when the command runs, because the
//! order may have moved on meanwhile. Nothing here performs I/O or touches the engine: callers
//! read the status and apply the decision.

pub mod expr;
pub mod steps;
pub mod template;
pub mod token;

pub use steps::{Outcome, Step, StepDecision, Workflow};

use crate::config::WorkflowConfig;
use crate::engine::{Command, StatusChange, StepWrites};
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
// A decision lives on the stack for one command and is moved once: boxing the change would
// add an allocation per command to save nothing.
#[allow(clippy::large_enum_variant)]
pub enum Decision {
    /// Write this change (status, history, event) and acknowledge the command.
    Change(StatusChange),
    /// Acknowledge without a change (the workflow no longer allows the command), and why.
    Refuse(String),
    /// Stay in the status (at `version`) and write these: a new order entering the step of
    /// `accepted` ([`crate::engine::StepStore::apply_step`]).
    Stay { version: u64, writes: StepWrites },
}

/// Decides a command against the order's current status: a new order is rejected by
/// [`business_rejection`], or else runs the step of `accepted` if there is one, or else is
/// confirmed; a transition happens if the table allows it now. A change into a status with a
/// step carries what entering it writes (`order` is needed only where
/// [`Workflow::entry_needs_order`] says so). Step commands are the worker's: they call out.
pub fn decide(
    workflow: &Workflow,
    command: &Command,
    status: &StatusRecord,
    order: Option<&Order>,
    now_ms: u64,
) -> Decision {
    let decision = decide_move(workflow, command, status, now_ms);
    match decision {
        Decision::Change(mut change) => {
            change.steps = workflow.entry_writes(
                &status.order_id,
                order,
                change.event.status,
                change.event.version,
                now_ms,
            );
            Decision::Change(change)
        }
        other => other,
    }
}

fn decide_move(
    workflow: &Workflow,
    command: &Command,
    status: &StatusRecord,
    now_ms: u64,
) -> Decision {
    let table = &workflow.config;
    match command {
        Command::ProcessOrder { order } => {
            if status.status != OrderStatus::Accepted {
                return Decision::Refuse(format!(
                    "order is already {}, not accepted",
                    status.status
                ));
            }
            let change = match business_rejection(order, table) {
                Some(reason) => status_change(status, OrderStatus::Rejected, Some(reason)),
                None if workflow.step(OrderStatus::Accepted).is_some() => {
                    return Decision::Stay {
                        version: status.version,
                        writes: workflow.entry_writes(
                            &order.order_id,
                            Some(order),
                            OrderStatus::Accepted,
                            status.version,
                            now_ms,
                        ),
                    };
                }
                None => status_change(status, OrderStatus::Confirmed, None),
            };
            Decision::Change(change)
        }
        Command::Transition { status: to, reason } => {
            match check_transition(table, status.status, *to) {
                Ok(()) => Decision::Change(status_change(status, *to, reason.clone())),
                Err(_) => Decision::Refuse(format!(
                    "transition {} -> {to} is not allowed",
                    status.status
                )),
            }
        }
        Command::Step { .. } => {
            Decision::Refuse("a step command is run by the worker, not decided here".into())
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
        steps: StepWrites::default(),
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
        let wf = Workflow::new(WorkflowConfig::default(), token::TokenKey::random()).unwrap();
        let good = order("USD", 1);
        let Decision::Change(c) =
            decide(&wf, &process(good.clone()), &initial_status(&good), None, 0)
        else {
            panic!("a valid order is decided");
        };
        assert_eq!(
            (c.event.status, c.expected_version, c.reason),
            (OrderStatus::Confirmed, 1, None)
        );
        let bad = order("XXX", 1);
        let Decision::Change(c) =
            decide(&wf, &process(bad.clone()), &initial_status(&bad), None, 0)
        else {
            panic!("an invalid order is decided");
        };
        assert_eq!(c.event.status, OrderStatus::Rejected);
        assert_eq!(c.reason.as_deref(), Some("currency XXX is not accepted"));
    }

    #[test]
    fn a_command_the_table_no_longer_allows_is_refused() {
        let wf = Workflow::new(WorkflowConfig::default(), token::TokenKey::random()).unwrap();
        let o = order("USD", 1);
        let mut status = initial_status(&o);
        status.status = OrderStatus::Shipped;
        assert!(matches!(
            decide(&wf, &process(o.clone()), &status, None, 0),
            Decision::Refuse(_)
        ));
        let back = Command::Transition {
            status: OrderStatus::Preparing,
            reason: None,
        };
        assert_eq!(
            decide(&wf, &back, &status, None, 0),
            Decision::Refuse("transition shipped -> preparing is not allowed".into())
        );
        assert_eq!(
            check_transition(&wf.config, OrderStatus::Shipped, OrderStatus::Preparing),
            Err(&[OrderStatus::Delivered][..])
        );
        assert_eq!(
            wf.config.targets(OrderStatus::Delivered),
            &[] as &[OrderStatus]
        );
    }
}
