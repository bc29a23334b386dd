//! Which events a subscription wants: the `onOrderUpdated` arguments and the Amplify-style
//! `OrderEventFilter`, resolved once at prepare time into plain data so that matching an event
//! is a handful of string comparisons. Nothing here allocates per event.

use crate::model::{LoggedEvent, OrderStatus};
use serde_json::Value;

/// How deeply `and`/`or`/`not` may nest. The parser and serde_json already bound recursion; this
/// keeps [`FilterExpr::matches`] shallow whatever the source of the filter.
pub const MAX_FILTER_DEPTH: usize = 16;

/// The event filter of one subscription: every present part must match.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub order_id: Option<String>,
    pub customer_id: Option<String>,
    pub partner_id: Option<String>,
    pub statuses: Option<Vec<OrderStatus>>,
    pub expr: Option<FilterExpr>,
    /// Only events of orders without a partner: never an argument, set by authorization for
    /// a customer token bound to no partner (`[auth.jwt] partner_claim` absent).
    pub partnerless: bool,
}

/// The index a hub may use to find candidate subscribers of an event without testing them all.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IndexKey {
    Order(String),
    Customer(String),
    Partner(String),
    All,
}

impl EventFilter {
    /// True when the event passes every present part of the filter.
    pub fn matches(&self, event: &LoggedEvent) -> bool {
        let ev = &event.event;
        self.order_id.as_ref().is_none_or(|id| *id == ev.order_id)
            && self
                .customer_id
                .as_ref()
                .is_none_or(|id| *id == ev.customer_id)
            && self
                .partner_id
                .as_ref()
                .is_none_or(|id| ev.partner_id.as_deref() == Some(id.as_str()))
            && (!self.partnerless || ev.partner_id.is_none())
            && self
                .statuses
                .as_ref()
                .is_none_or(|statuses| statuses.contains(&ev.status))
            && self.expr.as_ref().is_none_or(|expr| expr.matches(event))
    }

    /// The most selective equality among the arguments (never the `filter` expression, whose
    /// equalities may sit under an `or` or a `not`).
    pub fn index_key(&self) -> IndexKey {
        if let Some(id) = &self.order_id {
            IndexKey::Order(id.clone())
        } else if let Some(id) = &self.customer_id {
            IndexKey::Customer(id.clone())
        } else if let Some(id) = &self.partner_id {
            IndexKey::Partner(id.clone())
        } else {
            IndexKey::All
        }
    }
}

/// The event field a [`FilterExpr::Compare`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterField {
    OrderId,
    CustomerId,
    PartnerId,
    /// Compared as the upper-case GraphQL enum name (`SHIPPED`), case-insensitively: operands
    /// are upper-cased at prepare time.
    Status,
    /// The event type, e.g. `order.shipped`, compared exactly.
    Type,
}

/// One `StringFilter` operator with its operand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringOp {
    Eq(String),
    Ne(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    BeginsWith(String),
}

impl StringOp {
    /// An absent value fails `eq`, `in` and `beginsWith` and passes `ne` and `notIn`.
    fn test(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (StringOp::Eq(x), Some(v)) => v == x,
            (StringOp::Ne(x), Some(v)) => v != x,
            (StringOp::In(xs), Some(v)) => xs.iter().any(|x| x == v),
            (StringOp::NotIn(xs), Some(v)) => !xs.iter().any(|x| x == v),
            (StringOp::BeginsWith(x), Some(v)) => v.starts_with(x.as_str()),
            (StringOp::Eq(_) | StringOp::In(_) | StringOp::BeginsWith(_), None) => false,
            (StringOp::Ne(_) | StringOp::NotIn(_), None) => true,
        }
    }
}

/// The `filter: OrderEventFilter` argument as a boolean expression. An input object with several
/// entries (or a `StringFilter` with several operators) becomes an `And` of them; an empty
/// `And` is true and an empty `Or` is false.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterExpr {
    Compare { field: FilterField, op: StringOp },
    And(Vec<FilterExpr>),
    Or(Vec<FilterExpr>),
    Not(Box<FilterExpr>),
}

impl FilterExpr {
    pub fn matches(&self, event: &LoggedEvent) -> bool {
        match self {
            FilterExpr::Compare { field, op } => {
                let ev = &event.event;
                let value = match field {
                    FilterField::OrderId => Some(ev.order_id.as_str()),
                    FilterField::CustomerId => Some(ev.customer_id.as_str()),
                    FilterField::PartnerId => ev.partner_id.as_deref(),
                    FilterField::Status => Some(status_enum_name(ev.status)),
                    FilterField::Type => Some(ev.event_type.as_str()),
                };
                op.test(value)
            }
            FilterExpr::And(parts) => parts.iter().all(|p| p.matches(event)),
            FilterExpr::Or(parts) => parts.iter().any(|p| p.matches(event)),
            FilterExpr::Not(inner) => !inner.matches(event),
        }
    }

    /// Builds the expression from the (variables resolved) JSON form of an `OrderEventFilter`.
    /// `null` entries count as absent, as GraphQL input coercion says.
    pub(crate) fn from_json(value: &Value) -> Result<FilterExpr, String> {
        Self::from_json_at(value, 1)
    }

    fn from_json_at(value: &Value, depth: usize) -> Result<FilterExpr, String> {
        if depth > MAX_FILTER_DEPTH {
            return Err(format!(
                "filter nests deeper than {MAX_FILTER_DEPTH} levels of and/or/not"
            ));
        }
        let Value::Object(entries) = value else {
            return Err("filter must be an OrderEventFilter object".into());
        };
        let mut parts = Vec::with_capacity(entries.len());
        for (name, entry) in entries {
            if entry.is_null() {
                continue;
            }
            let field = match name.as_str() {
                "orderId" => FilterField::OrderId,
                "customerId" => FilterField::CustomerId,
                "partnerId" => FilterField::PartnerId,
                "status" => FilterField::Status,
                "type" => FilterField::Type,
                "and" | "or" => {
                    let items = list_of(entry)
                        .iter()
                        .map(|item| Self::from_json_at(item, depth + 1))
                        .collect::<Result<Vec<_>, _>>()?;
                    parts.push(if name == "and" {
                        FilterExpr::And(items)
                    } else {
                        FilterExpr::Or(items)
                    });
                    continue;
                }
                "not" => {
                    parts.push(FilterExpr::Not(Box::new(Self::from_json_at(
                        entry,
                        depth + 1,
                    )?)));
                    continue;
                }
                other => return Err(format!("OrderEventFilter has no field `{other}`")),
            };
            string_filter(field, name, entry, &mut parts)?;
        }
        Ok(if parts.len() == 1 {
            parts.pop().unwrap_or(FilterExpr::And(Vec::new()))
        } else {
            FilterExpr::And(parts)
        })
    }
}

/// Appends one comparison per operator of a `StringFilter`.
fn string_filter(
    field: FilterField,
    field_name: &str,
    value: &Value,
    parts: &mut Vec<FilterExpr>,
) -> Result<(), String> {
    let Value::Object(ops) = value else {
        return Err(format!("filter.{field_name} must be a StringFilter object"));
    };
    let operand = |v: &Value, op: &str| -> Result<String, String> {
        match v {
            Value::String(s) if field == FilterField::Status => Ok(s.to_ascii_uppercase()),
            Value::String(s) => Ok(s.clone()),
            _ => Err(format!("filter.{field_name}.{op} must be a string")),
        }
    };
    for (op, v) in ops {
        if v.is_null() {
            continue;
        }
        let op = match op.as_str() {
            "eq" => StringOp::Eq(operand(v, op)?),
            "ne" => StringOp::Ne(operand(v, op)?),
            "beginsWith" => StringOp::BeginsWith(operand(v, op)?),
            "in" | "notIn" => {
                let items = list_of(v)
                    .iter()
                    .map(|item| operand(item, op))
                    .collect::<Result<Vec<_>, _>>()?;
                if op == "in" {
                    StringOp::In(items)
                } else {
                    StringOp::NotIn(items)
                }
            }
            other => return Err(format!("StringFilter has no operator `{other}`")),
        };
        parts.push(FilterExpr::Compare { field, op });
    }
    Ok(())
}

/// GraphQL input coercion: a single value where a list is expected is a list of one.
pub(crate) fn list_of(value: &Value) -> &[Value] {
    match value {
        Value::Array(items) => items,
        single => std::slice::from_ref(single),
    }
}

/// The GraphQL enum name of a status (`SHIPPED`).
pub fn status_enum_name(status: OrderStatus) -> &'static str {
    match status {
        OrderStatus::Accepted => "ACCEPTED",
        OrderStatus::Confirmed => "CONFIRMED",
        OrderStatus::Preparing => "PREPARING",
        OrderStatus::Shipped => "SHIPPED",
        OrderStatus::Delivered => "DELIVERED",
        OrderStatus::Cancelled => "CANCELLED",
        OrderStatus::Rejected => "REJECTED",
    }
}
