//! The order domain as the outside world sees it: orders, statuses, the status record and the
//! event format of DESIGN 1.3. Everything here is plain data with its wire form (camelCase
//! JSON); nothing here performs I/O.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::str::FromStr;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// An order's status. The wire form is lower case (`"confirmed"`); GraphQL uses the upper-case
/// enum names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Accepted,
    Confirmed,
    Preparing,
    Shipped,
    Delivered,
    Cancelled,
    Rejected,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 7] = [
        OrderStatus::Accepted,
        OrderStatus::Confirmed,
        OrderStatus::Preparing,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Cancelled,
        OrderStatus::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Accepted => "accepted",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Preparing => "preparing",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Rejected => "rejected",
        }
    }

    /// The event type an entry into this status produces: `order.<status>`.
    pub fn event_type(self) -> String {
        format!("order.{}", self.as_str())
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OrderStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OrderStatus::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown order status `{s}`"))
    }
}

/// One line of an order. `unit_price` is a JSON number in the currency's major unit; intake
/// checks that it is finite and not negative.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LineItem {
    pub sku: String,
    pub quantity: i64,
    pub unit_price: serde_json::Number,
}

/// An order as accepted at intake. Immutable once accepted; its status lives in [`StatusRecord`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub order_id: String,
    pub customer_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner_id: Option<String>,
    pub items: Vec<LineItem>,
    pub currency: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    pub created_at: String,
}

/// The current status of an order: what `GET /v1/orders/{id}/status` returns (plus the owner
/// fields the API needs for authorization, which it strips from the polling answer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusRecord {
    pub order_id: String,
    pub customer_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner_id: Option<String>,
    pub status: OrderStatus,
    pub version: u64,
    pub updated_at: String,
}

/// One entry of an order's status history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub event_id: String,
    pub status: OrderStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_status: Option<OrderStatus>,
    pub version: u64,
    pub occurred_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The whole order with its status and (capped, oldest first) history: the polling pattern's
/// `/getResult`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderRecord {
    pub order: Order,
    pub status: StatusRecord,
    pub history: Vec<HistoryEntry>,
}

/// An event as it is stored in the event log (field `event` of a stream entry). The entry id is
/// not part of the body: it is the [`EventId`] the log assigns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderEvent {
    #[serde(rename = "type")]
    pub event_type: String,
    pub order_id: String,
    pub customer_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner_id: Option<String>,
    pub status: OrderStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_status: Option<OrderStatus>,
    pub version: u64,
    pub occurred_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl OrderEvent {
    /// The one way Herald builds an event: the order entering `record`'s status (at its
    /// version and time) from `previous_status`; a reason travels as `data.reason`.
    pub fn entered(
        record: StatusRecord,
        previous_status: Option<OrderStatus>,
        reason: Option<&str>,
    ) -> OrderEvent {
        OrderEvent {
            event_type: record.status.event_type(),
            order_id: record.order_id,
            customer_id: record.customer_id,
            partner_id: record.partner_id,
            status: record.status,
            previous_status,
            version: record.version,
            occurred_at: record.updated_at,
            data: reason.map(|r| serde_json::json!({ "reason": r })),
        }
    }

    /// Parses and checks an event body written by Herald or by any other program. Checks what
    /// serde cannot: the type matches the status and the timestamp is RFC 3339.
    pub fn parse(raw: &str) -> Result<OrderEvent, String> {
        let event: OrderEvent = serde_json::from_str(raw).map_err(|e| e.to_string())?;
        event.check()?;
        Ok(event)
    }

    pub fn check(&self) -> Result<(), String> {
        if self.order_id.is_empty() {
            return Err("orderId must not be empty".into());
        }
        if self.customer_id.is_empty() {
            return Err("customerId must not be empty".into());
        }
        if self.event_type != self.status.event_type() {
            return Err(format!(
                "type `{}` does not match status `{}` (expected `{}`)",
                self.event_type,
                self.status,
                self.status.event_type()
            ));
        }
        if OffsetDateTime::parse(&self.occurred_at, &Rfc3339).is_err() {
            return Err(format!(
                "occurredAt `{}` is not an RFC 3339 timestamp",
                self.occurred_at
            ));
        }
        Ok(())
    }

    pub fn to_json(&self) -> String {
        // Serialising a struct of strings, numbers and a `Value` cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// An event together with its log position. `event_id` is the stream entry id (`<ms>-<seq>`),
/// which is also the resume cursor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoggedEvent {
    pub event_id: String,
    #[serde(flatten)]
    pub event: OrderEvent,
}

/// A log entry that is not a valid event: kept aside with the reason, never dropped silently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MalformedEntry {
    pub entry_id: String,
    /// The entry's text, cut to [`MalformedEntry::MAX_RAW_BYTES`] (the entry itself stays in
    /// the log until it is trimmed).
    pub raw: String,
    pub error: String,
}

impl MalformedEntry {
    /// The most of an entry's text kept aside, so a huge entry costs little twice.
    pub const MAX_RAW_BYTES: usize = 8 * 1024;

    pub fn new(entry_id: String, raw: &str, error: String) -> MalformedEntry {
        let raw = if raw.len() > Self::MAX_RAW_BYTES {
            let mut end = Self::MAX_RAW_BYTES;
            while !raw.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}… ({} bytes in all)", &raw[..end], raw.len())
        } else {
            raw.to_string()
        };
        MalformedEntry {
            entry_id,
            raw,
            error,
        }
    }
}

/// Stream entry ids (`<ms>-<seq>`) as a comparable pair. Both engines use this form so cursors
/// mean the same everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventId {
    pub ms: u64,
    pub seq: u64,
}

impl EventId {
    pub const ZERO: EventId = EventId { ms: 0, seq: 0 };

    /// The greatest id before this one (`ZERO` has none and stays `ZERO`).
    pub fn predecessor(self) -> EventId {
        match (self.ms, self.seq) {
            (ms, seq) if seq > 0 => EventId { ms, seq: seq - 1 },
            (0, _) => EventId::ZERO,
            (ms, _) => EventId {
                ms: ms - 1,
                seq: u64::MAX,
            },
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for EventId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not an event id (expected `<milliseconds>-<sequence>`)");
        let (ms, seq) = match s.split_once('-') {
            Some((ms, seq)) => (ms, seq),
            None => (s, "0"),
        };
        Ok(EventId {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

/// Current time as RFC 3339 with millisecond precision, UTC (`2026-11-26T10:00:00.123Z`).
pub fn now_rfc3339() -> String {
    rfc3339(OffsetDateTime::now_utc())
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(FORMAT)
        .unwrap_or_default()
}

pub fn now_millis() -> u64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_order_numerically_not_lexically() {
        let a: EventId = "999-5".parse().unwrap();
        let b: EventId = "1000-0".parse().unwrap();
        assert!(a < b);
        assert_eq!(b.to_string(), "1000-0");
        assert_eq!("17".parse::<EventId>().unwrap(), EventId { ms: 17, seq: 0 });
        assert!("x-1".parse::<EventId>().is_err());
    }

    #[test]
    fn predecessor_is_the_greatest_smaller_id() {
        let id = |ms, seq| EventId { ms, seq };
        assert_eq!(id(5, 3).predecessor(), id(5, 2));
        assert_eq!(id(5, 0).predecessor(), id(4, u64::MAX));
        assert!(id(4, u64::MAX) < id(5, 0));
        assert_eq!(EventId::ZERO.predecessor(), EventId::ZERO);
    }

    #[test]
    fn event_parse_refuses_type_that_contradicts_status() {
        let raw = r#"{"type":"order.shipped","orderId":"o1","customerId":"c1","status":"confirmed","version":2,"occurredAt":"2026-01-01T00:00:00Z"}"#;
        assert!(
            OrderEvent::parse(raw)
                .unwrap_err()
                .contains("does not match")
        );
    }

    #[test]
    fn event_parse_keeps_data_untouched() {
        let raw = r#"{"type":"order.confirmed","orderId":"o1","customerId":"c1","status":"confirmed","version":2,"occurredAt":"2026-01-01T00:00:00Z","data":{"a":[1,2.50,"x"]}}"#;
        let ev = OrderEvent::parse(raw).unwrap();
        assert_eq!(ev.data.unwrap()["a"][1], serde_json::json!(2.50));
    }

    /// Found by `fuzz/run` (event_parser): serde_json's fast float parser misrounds some
    /// numbers by one unit in the last place, so a number in `data` changed on its way through
    /// Herald and again on every re-parse.
    #[test]
    fn event_parse_keeps_numbers_in_data_exact() {
        let raw = r#"{"type":"order.cancelled","orderId":"o9","customerId":"c9","status":"cancelled","version":3,"occurredAt":"2026-11-26T10:00:00Z","data":{"big":1.7953862697246314e308}}"#;
        let ev = OrderEvent::parse(raw).unwrap();
        let big = ev.data.as_ref().unwrap()["big"].as_f64().unwrap();
        assert_eq!(big.to_bits(), 1.795_386_269_724_631_4e308_f64.to_bits());
        assert_eq!(OrderEvent::parse(&ev.to_json()).unwrap(), ev);
    }

    #[test]
    fn built_events_have_the_wire_form_of_design_1_3() {
        let record = |partner_id: Option<&str>, status, version| StatusRecord {
            order_id: "o1".into(),
            customer_id: "c1".into(),
            partner_id: partner_id.map(String::from),
            status,
            version,
            updated_at: "2026-01-01T00:00:00.000Z".into(),
        };
        assert_eq!(
            OrderEvent::entered(record(None, OrderStatus::Accepted, 1), None, None).to_json(),
            r#"{"type":"order.accepted","orderId":"o1","customerId":"c1","status":"accepted","version":1,"occurredAt":"2026-01-01T00:00:00.000Z"}"#
        );
        let rejected = OrderEvent::entered(
            record(Some("p1"), OrderStatus::Rejected, 2),
            Some(OrderStatus::Accepted),
            Some("no"),
        );
        assert_eq!(
            rejected.to_json(),
            r#"{"type":"order.rejected","orderId":"o1","customerId":"c1","partnerId":"p1","status":"rejected","previousStatus":"accepted","version":2,"occurredAt":"2026-01-01T00:00:00.000Z","data":{"reason":"no"}}"#
        );
    }

    #[test]
    fn timestamps_are_utc_with_three_fraction_digits() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_120_000_000).unwrap();
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.120Z");
        assert!(OffsetDateTime::parse(&now_rfc3339(), &Rfc3339).is_ok());
    }

    #[test]
    fn status_round_trips_and_is_case_insensitive() {
        for s in OrderStatus::ALL {
            assert_eq!(s.as_str().parse::<OrderStatus>().unwrap(), s);
        }
        assert_eq!(
            "SHIPPED".parse::<OrderStatus>().unwrap(),
            OrderStatus::Shipped
        );
    }
}
