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
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LineItem {
    #[schema(min_length = 1, max_length = 128)]
    pub sku: String,
    /// Not positive: well-formed, and rejected by the worker's business validation.
    pub quantity: i64,
    /// In the currency's major unit; finite, not negative.
    #[schema(value_type = f64, minimum = 0)]
    pub unit_price: serde_json::Number,
}

/// An order as accepted at intake. Immutable once accepted; its status lives in [`StatusRecord`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(description = "An order as accepted at intake; immutable once accepted.")]
pub struct Order {
    pub order_id: String,
    pub customer_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner_id: Option<String>,
    pub items: Vec<LineItem>,
    pub currency: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// The workflow's step history, oldest first (the newest `workflow.step_history_limit`);
    /// empty for statuses without an action.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepRecord>,
    /// The order's open callback wait, if any (never shown: the worker asks it).
    #[serde(skip)]
    pub open_wait: Option<String>,
}

/// One entry of an order's step history (Step Functions' execution history, per order): what
/// happened in which status, with the attempt, its outcome and latency where there was one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    /// What happened: `stateEntered`, `taskSucceeded`, `taskFailed`, `retryScheduled`,
    /// `caught`, `waitStarted`, `waitElapsed`, `callbackSent`, `callbackSucceeded`,
    /// `callbackFailed`, `callbackTimedOut`, `transitionChosen`, `stepFailed`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The status whose step this is, and the version the order entered it at (the attempt
    /// series).
    pub status: OrderStatus,
    pub version: u64,
    /// The step's name in the workflow definition.
    pub step: String,
    /// When it happened (RFC 3339).
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// The HTTP status the service answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// The error class of a failure: `timeout`, `connect`, `5xx`, `4xx`, `refused` (the SSRF
    /// guard), `invalid` (a response the step cannot use), `callback`, `timedOut`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Words for an operator (never a secret, never an address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// When a retry, a wait or a callback's timeout is due (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<String>,
    /// The status the step chose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<OrderStatus>,
    /// The service's answer or the callback's result (JSON), size-bounded
    /// (`workflow.max_response_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub response: Option<serde_json::Value>,
}

impl StepRecord {
    /// A record of `kind` for the step `step` of `status` (entered at `version`), at `at`;
    /// the optional details unset.
    pub fn new(
        kind: &str,
        status: OrderStatus,
        version: u64,
        step: &str,
        at: String,
    ) -> StepRecord {
        StepRecord {
            kind: kind.into(),
            status,
            version,
            step: step.into(),
            at,
            attempt: None,
            status_code: None,
            error: None,
            detail: None,
            latency_ms: None,
            due_at: None,
            next: None,
            response: None,
        }
    }
}

/// An event as it is stored in the event log (field `event` of a stream entry). The entry id is
/// not part of the body: it is the [`EventId`] the log assigns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(
    description = "An order event (DESIGN 1.3): `type` is `order.<status>` (or `order.snapshot`, an order's current status at the start of a resync); `data` is any JSON value, passed through untouched."
)]
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

/// An event together with its log position: `event_id` is its entry id (`<ms>-<seq>`) in the
/// stream of its `partition` (`engine.partitions`, DESIGN 1.3; always 0 with one partition).
///
/// What a reader shows as the event's `eventId` is a resume cursor: with one partition the
/// entry id itself; with several, the [`LogCursor`] token of the reader's position just after
/// this event (`cursor`, set by the reader that knows it). [`LoggedEvent::qualified_id`] names
/// the event itself, uniquely across partitions (webhooks use it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoggedEvent {
    pub event_id: String,
    #[serde(flatten)]
    pub event: OrderEvent,
    #[serde(skip)]
    pub partition: usize,
    /// The resume cursor after this event, when it is not `event_id` (several partitions).
    #[serde(skip)]
    pub cursor: Option<String>,
}

impl LoggedEvent {
    /// An event read from partition 0 (the only one when there is one).
    pub fn new(event_id: String, event: OrderEvent) -> LoggedEvent {
        LoggedEvent {
            event_id,
            event,
            partition: 0,
            cursor: None,
        }
    }

    /// The `eventId` a reader shows: the resume cursor after this event.
    pub fn shown_id(&self) -> &str {
        self.cursor.as_deref().unwrap_or(&self.event_id)
    }

    /// The event's own name, unique across partitions: the entry id in partition 0, else
    /// `<partition>/<entry id>`. Stable for the event's life (a partitions change is refused
    /// on existing data).
    pub fn qualified_id(&self) -> String {
        qualified_entry_id(self.partition, &self.event_id)
    }

    /// The event's JSON form with `eventId` set to `event_id` (a reader's [`Self::shown_id`],
    /// a webhook's [`Self::qualified_id`]) instead of the bare entry id.
    pub fn with_event_id<'a>(&'a self, event_id: &'a str) -> impl Serialize + 'a {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Shown<'a> {
            event_id: &'a str,
            #[serde(flatten)]
            event: &'a OrderEvent,
        }
        Shown {
            event_id,
            event: &self.event,
        }
    }
}

/// `<entry id>` in partition 0, `<partition>/<entry id>` in any other.
pub fn qualified_entry_id(partition: usize, entry_id: &str) -> String {
    if partition == 0 {
        entry_id.to_string()
    } else {
        format!("{partition}/{entry_id}")
    }
}

/// The partition of an order (DESIGN 1.3, README "Partitions"): CRC-32 (IEEE, as zlib's
/// `crc32`) of the order id's UTF-8 bytes, modulo the number of partitions. Programs that
/// append events themselves use the same function to pick the stream.
pub fn partition_of(order_id: &str, partitions: usize) -> usize {
    if partitions <= 1 {
        return 0;
    }
    (crc32fast::hash(order_id.as_bytes()) as usize) % partitions
}

/// A reader's position in the event log: one entry id per partition, everything at or before
/// it read. As text (the `eventId` readers show and the `after` they take back):
///
/// - with one partition, the entry id itself: `<ms>-<seq>`;
/// - with several, `c1.` followed by unpadded base64url of: the number of partitions, then for
///   each partition in order its milliseconds as a zigzag difference from the previous
///   partition's (the first from 0) and its sequence, all LEB128 varints. Opaque to clients.
///
/// A plain `<ms>-<seq>` given with several partitions means that position in every partition
/// (exact for one order, whose events all live in one partition; an old single-partition
/// cursor resumes at the same time in each). `0` is the start of every partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct LogCursor {
    positions: Vec<EventId>,
}

impl LogCursor {
    pub const TOKEN_PREFIX: &'static str = "c1.";

    /// `id` in each of `partitions` partitions.
    pub fn uniform(partitions: usize, id: EventId) -> LogCursor {
        LogCursor {
            positions: vec![id; partitions.max(1)],
        }
    }

    /// The start of every partition.
    pub fn start(partitions: usize) -> LogCursor {
        Self::uniform(partitions, EventId::ZERO)
    }

    pub fn from_positions(positions: Vec<EventId>) -> LogCursor {
        if positions.is_empty() {
            return Self::start(1);
        }
        LogCursor { positions }
    }

    pub fn partitions(&self) -> usize {
        self.positions.len()
    }

    pub fn positions(&self) -> &[EventId] {
        &self.positions
    }

    /// The position in `partition` (`ZERO` past the end).
    pub fn get(&self, partition: usize) -> EventId {
        self.positions
            .get(partition)
            .copied()
            .unwrap_or(EventId::ZERO)
    }

    /// Moves `partition` forward to `id` (never back).
    pub fn advance(&mut self, partition: usize, id: EventId) {
        if let Some(p) = self.positions.get_mut(partition)
            && id > *p
        {
            *p = id;
        }
    }

    /// Whether every partition is at the start.
    pub fn is_start(&self) -> bool {
        self.positions.iter().all(|p| *p == EventId::ZERO)
    }

    /// Whether this cursor has read everything `other` has, in every partition.
    pub fn covers(&self, other: &LogCursor) -> bool {
        self.positions
            .iter()
            .zip(&other.positions)
            .all(|(a, b)| a >= b)
    }

    /// Parses a cursor given by a client for a log of `partitions` partitions: a token of
    /// the same number of partitions, or a plain entry id (see the type's documentation).
    pub fn parse(text: &str, partitions: usize) -> Result<LogCursor, String> {
        let partitions = partitions.max(1);
        let Some(token) = text.strip_prefix(Self::TOKEN_PREFIX) else {
            let id: EventId = text.parse()?;
            return Ok(Self::uniform(partitions, id));
        };
        let bad = |why: &str| format!("`{text}` is not a valid cursor ({why})");
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| bad("not base64url"))?;
        let mut input = bytes.as_slice();
        let count = read_varint(&mut input).ok_or_else(|| bad("truncated"))?;
        if count != partitions as u64 {
            return Err(format!(
                "cursor `{text}` was made for {count} partitions; this log has {partitions}. \
                 Start again without a cursor (or from `0`)."
            ));
        }
        let mut positions = Vec::with_capacity(partitions);
        let mut ms: u64 = 0;
        for _ in 0..partitions {
            let delta = read_varint(&mut input).ok_or_else(|| bad("truncated"))?;
            let delta = ((delta >> 1) as i64) ^ -((delta & 1) as i64);
            ms = ms
                .checked_add_signed(delta)
                .ok_or_else(|| bad("out of range"))?;
            let seq = read_varint(&mut input).ok_or_else(|| bad("truncated"))?;
            positions.push(EventId { ms, seq });
        }
        if !input.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(LogCursor { positions })
    }
}

impl fmt::Display for LogCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.positions.len() == 1 {
            return write!(f, "{}", self.positions[0]);
        }
        let mut bytes = Vec::with_capacity(8 + self.positions.len() * 4);
        write_varint(&mut bytes, self.positions.len() as u64);
        let mut previous: u64 = 0;
        for p in &self.positions {
            let delta = p.ms.wrapping_sub(previous) as i64;
            write_varint(&mut bytes, ((delta << 1) ^ (delta >> 63)) as u64);
            write_varint(&mut bytes, p.seq);
            previous = p.ms;
        }
        use base64::Engine as _;
        write!(
            f,
            "{}{}",
            Self::TOKEN_PREFIX,
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        )
    }
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn read_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        value |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// A log entry that is not a valid event: kept aside with the reason, never dropped silently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MalformedEntry {
    /// The entry id, `<partition>/<entry id>` outside partition 0 (see
    /// [`qualified_entry_id`]).
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

    #[test]
    fn cursors_round_trip_and_stay_compact() {
        let single = LogCursor::uniform(1, EventId { ms: 17, seq: 2 });
        assert_eq!(single.to_string(), "17-2");
        assert_eq!(LogCursor::parse("17-2", 1).unwrap(), single);
        let mut many = LogCursor::start(16);
        for k in 0..16 {
            many.advance(
                k,
                EventId {
                    ms: 1_765_000_000_000 + (k as u64 * 37) % 5,
                    seq: k as u64 % 3,
                },
            );
        }
        many.advance(3, EventId { ms: 5, seq: 0 }); // never backwards
        let text = many.to_string();
        assert!(text.starts_with("c1."), "{text}");
        assert!(text.len() < 80, "{} chars: {text}", text.len());
        assert_eq!(LogCursor::parse(&text, 16).unwrap(), many);
        // A partition at the start, then one far ahead: the zigzag delta goes both ways.
        let mut mixed = LogCursor::start(3);
        mixed.advance(1, EventId { ms: 9, seq: 1 });
        assert_eq!(LogCursor::parse(&mixed.to_string(), 3).unwrap(), mixed);
        // A plain id means that position in every partition.
        assert_eq!(
            LogCursor::parse("9-1", 3).unwrap(),
            LogCursor::uniform(3, EventId { ms: 9, seq: 1 })
        );
        let err = LogCursor::parse(&text, 4).unwrap_err();
        assert!(err.contains("16 partitions"), "{err}");
        for bad in ["c1.", "c1.!!", "c1.EAAA", "x-y"] {
            assert!(LogCursor::parse(bad, 16).is_err(), "{bad}");
        }
        assert!(LogCursor::start(2).is_start());
        assert!(many.covers(&LogCursor::start(16)));
    }

    #[test]
    fn partitions_follow_crc32() {
        // zlib.crc32(b"order-1") == 0xE0B3_7FEF (documented so other producers can compute it).
        assert_eq!(crc32fast::hash(b"order-1"), 0xE0B3_7FEF);
        assert_eq!(partition_of("order-1", 16), 0xE0B3_7FEF % 16);
        assert_eq!(partition_of("anything", 1), 0);
    }

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
