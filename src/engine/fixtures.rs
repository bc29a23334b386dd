//! Orders and commands for unit tests of the engines and of the parts that drive them (the
//! worker): one valid order and one queued command, built the same way everywhere. Compiled
//! for the unit tests only.

use super::{Command, NewCommand};
use crate::model::{LineItem, Order, now_rfc3339};

/// A valid order (customer `c1`, one line, EUR) with this id.
pub(crate) fn order(id: &str) -> Order {
    Order {
        order_id: id.into(),
        customer_id: "c1".into(),
        partner_id: None,
        items: vec![LineItem {
            sku: "s".into(),
            quantity: 1,
            unit_price: serde_json::Number::from(3),
        }],
        currency: "EUR".into(),
        metadata: None,
        created_at: now_rfc3339(),
    }
}

/// `command` for the order, with a fresh message id.
pub(crate) fn new_command(order_id: &str, command: Command) -> NewCommand {
    NewCommand {
        message_id: uuid::Uuid::new_v4().to_string(),
        order_id: order_id.into(),
        command,
        sent_at: now_rfc3339(),
    }
}
