//! What a subscriber sees of an event: the selection of a prepared document, compiled into a
//! template of pre-escaped static bytes and field slots. Rendering is one pass over the template
//! into a buffer sized up front; nothing here looks at the GraphQL document again.

use super::filter::status_enum_name;
use crate::model::{LoggedEvent, OrderStatus, StatusRecord};
use bytes::Bytes;
use std::io::Write;

/// A field whose value comes from the event or the status record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leaf {
    EventId,
    Type,
    OrderId,
    CustomerId,
    PartnerId,
    Status,
    PreviousStatus,
    Version,
    OccurredAt,
    Data,
    UpdatedAt,
}

/// One selected field of an `OrderEvent` or `Order`, after aliases, fragments and directives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LeafSelection {
    Value {
        key: String,
        leaf: Leaf,
    },
    Typename {
        key: String,
        type_name: &'static str,
    },
}

/// One root field of the operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RootSelection {
    /// `onOrderUpdated` or `order` under its response key, with the object's fields in order.
    Object {
        key: String,
        name: &'static str,
        fields: Vec<LeafSelection>,
    },
    Typename {
        key: String,
        type_name: &'static str,
    },
}

#[derive(Debug)]
enum Segment {
    /// Pre-rendered JSON: punctuation, keys and `__typename` values.
    Static(Box<[u8]>),
    Leaf(Leaf),
    /// The root object: its body, or `null` when rendering an absent order.
    Object(Vec<Segment>),
}

/// The compiled selection of one operation. Equal selections have equal [`Projection::key`]s.
#[derive(Debug)]
pub struct Projection {
    key: String,
    segments: Vec<Segment>,
    /// Bytes of static text, plus a per-field allowance: the starting capacity of a render.
    capacity_hint: usize,
    selects_data: bool,
    /// A Server-Sent Events frame instead of a GraphQL result ([`Projection::sse_frame`]).
    sse: bool,
}

/// Rough size of one field value (ids, timestamps); `data` is measured per event.
const VALUE_ALLOWANCE: usize = 40;

impl Projection {
    pub(crate) fn new(operation: &str, roots: &[RootSelection]) -> Projection {
        let mut key = String::with_capacity(64);
        key.push_str(operation);
        key.push('{');
        let mut segments = Vec::new();
        push_static(&mut segments, b"{\"data\":{");
        let mut leaves = 0;
        let mut selects_data = false;
        for (i, root) in roots.iter().enumerate() {
            if i > 0 {
                key.push(',');
                push_static(&mut segments, b",");
            }
            match root {
                RootSelection::Typename { key: k, type_name } => {
                    push_key(&mut key, k, "__typename");
                    push_static(&mut segments, &json_key(k));
                    push_static(&mut segments, &json_str(type_name));
                }
                RootSelection::Object {
                    key: k,
                    name,
                    fields,
                } => {
                    push_key(&mut key, k, name);
                    key.push('{');
                    push_static(&mut segments, &json_key(k));
                    let mut body = Vec::new();
                    push_static(&mut body, b"{");
                    for (j, field) in fields.iter().enumerate() {
                        if j > 0 {
                            key.push(',');
                            push_static(&mut body, b",");
                        }
                        match field {
                            LeafSelection::Typename { key: k, type_name } => {
                                push_key(&mut key, k, "__typename");
                                push_static(&mut body, &json_key(k));
                                push_static(&mut body, &json_str(type_name));
                            }
                            LeafSelection::Value { key: k, leaf } => {
                                push_key(&mut key, k, leaf_name(*leaf));
                                push_static(&mut body, &json_key(k));
                                body.push(Segment::Leaf(*leaf));
                                leaves += 1;
                                selects_data |= *leaf == Leaf::Data;
                            }
                        }
                    }
                    push_static(&mut body, b"}");
                    key.push('}');
                    segments.push(Segment::Object(body));
                }
            }
        }
        push_static(&mut segments, b"}}");
        key.push('}');
        let capacity_hint = static_len(&segments) + leaves * VALUE_ALLOWANCE;
        Projection {
            key,
            segments,
            capacity_hint,
            selects_data,
            sse: false,
        }
    }

    /// The whole event as one Server-Sent Events frame:
    /// `id: <eventId>\nevent: <type>\ndata: <the event's JSON, as in webhooks>\n\n`. Every SSE
    /// stream shares it, so the hub renders each event once for all of them.
    pub fn sse_frame() -> Projection {
        Projection {
            key: "sse".into(),
            segments: Vec::new(),
            capacity_hint: 512,
            selects_data: true,
            sse: true,
        }
    }

    /// Canonical text of the selection (after variables, fragments and aliases), equal for equal
    /// selections: the hub groups subscribers by it and serialises each event once per key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// `{"data":{"<response key>":{<selected fields in document order>}}}` for one event.
    pub fn render_event(&self, event: &LoggedEvent) -> Bytes {
        if self.sse {
            return render_sse_frame(event, self.capacity_hint);
        }
        // `data` is exposed as a JSON string: serialise the value once, then escape it as a string.
        let data = match (&event.event.data, self.selects_data) {
            (Some(value), true) => Some(serde_json::to_string(value).unwrap_or_default()),
            _ => None,
        };
        let extra = data.as_ref().map_or(0, |d| d.len() + d.len() / 8 + 2);
        let mut buf = Vec::with_capacity(self.capacity_hint + extra);
        write_segments(
            &mut buf,
            &self.segments,
            &Source::Event(event, data.as_deref()),
        );
        Bytes::from(buf)
    }

    /// `{"data":{"<alias or order>":{...}}}`, or the object as `null` when there is no order.
    pub fn render_order(&self, order: Option<&StatusRecord>) -> Bytes {
        let mut buf = Vec::with_capacity(self.capacity_hint);
        write_segments(&mut buf, &self.segments, &Source::Order(order));
        Bytes::from(buf)
    }
}

fn render_sse_frame(event: &LoggedEvent, capacity: usize) -> Bytes {
    let id = event.shown_id();
    let mut buf = Vec::with_capacity(capacity);
    // A line break in a field would end it early: ids are cursors (never one), and an event
    // type written by another program is cut at its first one.
    let line = |text: &str| {
        text.split(['\r', '\n'])
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    buf.extend_from_slice(b"id: ");
    buf.extend_from_slice(line(id).as_bytes());
    buf.extend_from_slice(b"\nevent: ");
    buf.extend_from_slice(line(&event.event.event_type).as_bytes());
    buf.extend_from_slice(b"\ndata: ");
    // serde_json escapes every line break inside strings: the JSON is one line.
    if serde_json::to_writer(&mut buf, &event.with_event_id(id)).is_err() {
        buf.extend_from_slice(b"null");
    }
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

enum Source<'a> {
    /// The event and its `data` already serialised (when selected and present).
    Event(&'a LoggedEvent, Option<&'a str>),
    Order(Option<&'a StatusRecord>),
}

fn write_segments(buf: &mut Vec<u8>, segments: &[Segment], source: &Source<'_>) {
    for segment in segments {
        match segment {
            Segment::Static(bytes) => buf.extend_from_slice(bytes),
            Segment::Leaf(leaf) => write_leaf(buf, *leaf, source),
            Segment::Object(body) => match source {
                Source::Order(None) => buf.extend_from_slice(b"null"),
                _ => write_segments(buf, body, source),
            },
        }
    }
}

fn write_leaf(buf: &mut Vec<u8>, leaf: Leaf, source: &Source<'_>) {
    match source {
        Source::Event(logged, data) => {
            let ev = &logged.event;
            match leaf {
                Leaf::EventId => write_str(buf, logged.shown_id()),
                Leaf::Type => write_str(buf, &ev.event_type),
                Leaf::OrderId => write_str(buf, &ev.order_id),
                Leaf::CustomerId => write_str(buf, &ev.customer_id),
                Leaf::PartnerId => write_opt_str(buf, ev.partner_id.as_deref()),
                Leaf::Status => write_status(buf, Some(ev.status)),
                Leaf::PreviousStatus => write_status(buf, ev.previous_status),
                Leaf::Version => write_u64(buf, ev.version),
                Leaf::OccurredAt => write_str(buf, &ev.occurred_at),
                Leaf::Data => write_opt_str(buf, *data),
                Leaf::UpdatedAt => buf.extend_from_slice(b"null"),
            }
        }
        Source::Order(Some(record)) => match leaf {
            Leaf::OrderId => write_str(buf, &record.order_id),
            Leaf::CustomerId => write_str(buf, &record.customer_id),
            Leaf::PartnerId => write_opt_str(buf, record.partner_id.as_deref()),
            Leaf::Status => write_status(buf, Some(record.status)),
            Leaf::Version => write_u64(buf, record.version),
            Leaf::UpdatedAt => write_str(buf, &record.updated_at),
            Leaf::EventId | Leaf::Type | Leaf::PreviousStatus | Leaf::OccurredAt | Leaf::Data => {
                buf.extend_from_slice(b"null")
            }
        },
        Source::Order(None) => buf.extend_from_slice(b"null"),
    }
}

fn write_str(buf: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail, and a &str always serialises.
    let _ = serde_json::to_writer(&mut *buf, s);
}

fn write_opt_str(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_str(buf, s),
        None => buf.extend_from_slice(b"null"),
    }
}

fn write_status(buf: &mut Vec<u8>, status: Option<OrderStatus>) {
    match status {
        // Enum names are plain upper-case ASCII: nothing to escape.
        Some(status) => {
            buf.push(b'"');
            buf.extend_from_slice(status_enum_name(status).as_bytes());
            buf.push(b'"');
        }
        None => buf.extend_from_slice(b"null"),
    }
}

fn write_u64(buf: &mut Vec<u8>, n: u64) {
    let _ = write!(buf, "{n}");
}

fn push_static(segments: &mut Vec<Segment>, bytes: &[u8]) {
    if let Some(Segment::Static(last)) = segments.last_mut() {
        let mut merged = Vec::with_capacity(last.len() + bytes.len());
        merged.extend_from_slice(last);
        merged.extend_from_slice(bytes);
        *last = merged.into_boxed_slice();
    } else {
        segments.push(Segment::Static(bytes.into()));
    }
}

fn static_len(segments: &[Segment]) -> usize {
    segments
        .iter()
        .map(|s| match s {
            Segment::Static(b) => b.len(),
            Segment::Leaf(_) => 0,
            Segment::Object(body) => static_len(body),
        })
        .sum()
}

fn json_str(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 2);
    write_str(&mut out, s);
    out
}

/// `"key":`
fn json_key(key: &str) -> Vec<u8> {
    let mut out = json_str(key);
    out.push(b':');
    out
}

/// `alias:name`, or `name` when the response key is the field name.
fn push_key(canonical: &mut String, response_key: &str, name: &str) {
    if response_key != name {
        canonical.push_str(response_key);
        canonical.push(':');
    }
    canonical.push_str(name);
}

pub(crate) fn leaf_name(leaf: Leaf) -> &'static str {
    match leaf {
        Leaf::EventId => "eventId",
        Leaf::Type => "type",
        Leaf::OrderId => "orderId",
        Leaf::CustomerId => "customerId",
        Leaf::PartnerId => "partnerId",
        Leaf::Status => "status",
        Leaf::PreviousStatus => "previousStatus",
        Leaf::Version => "version",
        Leaf::OccurredAt => "occurredAt",
        Leaf::Data => "data",
        Leaf::UpdatedAt => "updatedAt",
    }
}

/// The field of `OrderEvent` (`event == true`) or `Order` with this name.
pub(crate) fn leaf_by_name(name: &str, event: bool) -> Option<Leaf> {
    let leaf = match name {
        "orderId" => Leaf::OrderId,
        "customerId" => Leaf::CustomerId,
        "partnerId" => Leaf::PartnerId,
        "status" => Leaf::Status,
        "version" => Leaf::Version,
        "eventId" if event => Leaf::EventId,
        "type" if event => Leaf::Type,
        "previousStatus" if event => Leaf::PreviousStatus,
        "occurredAt" if event => Leaf::OccurredAt,
        "data" if event => Leaf::Data,
        "updatedAt" if !event => Leaf::UpdatedAt,
        _ => return None,
    };
    Some(leaf)
}
