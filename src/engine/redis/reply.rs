//! Decoding of raw Redis replies (script results and stream reads) without trusting their shape.
//!
//! Stream entries can be written by other programs (the event log is an integration point), so
//! nothing here panics or assumes UTF-8: every accessor returns an `Option`/`Result` and the
//! callers turn a surprise into [`EngineError::Corrupt`] or a malformed log entry. Both RESP2
//! (arrays) and RESP3 (maps) shapes are accepted, since the URL may ask for either protocol.

use crate::engine::EngineError;
use redis::Value;

/// A string reply (bulk, simple or integer), if it is valid UTF-8.
pub(super) fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Okay => Some("OK".into()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// An integer reply, or a string holding one (Lua and Redis use both forms).
pub(super) fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(*i),
        other => text(other).and_then(|s| s.parse().ok()),
    }
}

/// The elements of an array (or set) reply; `Nil` reads as empty.
pub(super) fn items(value: &Value) -> Option<&[Value]> {
    match value {
        Value::Array(items) | Value::Set(items) => Some(items),
        Value::Nil => Some(&[]),
        _ => None,
    }
}

fn raw_bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

pub(super) fn corrupt(what: impl std::fmt::Display) -> EngineError {
    EngineError::Corrupt(what.to_string())
}

/// One stream entry: its id and its field/value pairs as raw bytes.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct StreamEntry {
    pub id: String,
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl StreamEntry {
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }

    /// The value of `name` as UTF-8 text (`None` if missing or not UTF-8).
    pub fn text(&self, name: &str) -> Option<&str> {
        self.field(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// All fields as a JSON object (lossy UTF-8): how an entry that lacks the expected field is
    /// shown to operators.
    pub fn fields_json(&self) -> String {
        crate::engine::log::fields_json(&self.fields)
    }
}

/// Field/value pairs: a flat array `[f1, v1, f2, v2, ..]` (RESP2) or a map (RESP3).
pub(super) fn fields(value: &Value) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    match value {
        Value::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| Some((raw_bytes(k)?, raw_bytes(v)?)))
            .collect(),
        other => {
            let flat = items(other)?;
            if flat.len() % 2 != 0 {
                return None;
            }
            flat.chunks(2)
                .map(|pair| Some((raw_bytes(&pair[0])?, raw_bytes(&pair[1])?)))
                .collect()
        }
    }
}

/// The value named `name` in a reply of name/value pairs (an `XINFO` reply): a flat array
/// (RESP2) or a map (RESP3).
pub(super) fn named<'a>(value: &'a Value, name: &str) -> Option<&'a Value> {
    let is_name = |k: &Value| text(k).is_some_and(|k| k == name);
    match value {
        Value::Map(pairs) => pairs.iter().find(|(k, _)| is_name(k)).map(|(_, v)| v),
        other => items(other)?
            .chunks(2)
            .find(|pair| pair.len() == 2 && is_name(&pair[0]))
            .map(|pair| &pair[1]),
    }
}

/// One `[id, [fields..]]` entry. An entry whose fields are nil (deleted while pending) is
/// reported as `Ok(None)`.
pub(super) fn stream_entry(value: &Value) -> Result<Option<StreamEntry>, EngineError> {
    let parts = items(value).ok_or_else(|| corrupt("stream entry is not an array"))?;
    let [id, body] = parts else {
        return Err(corrupt(format!(
            "stream entry has {} parts, expected 2",
            parts.len()
        )));
    };
    let id = text(id).ok_or_else(|| corrupt("stream entry id is not text"))?;
    if matches!(body, Value::Nil) {
        return Ok(None);
    }
    let fields = fields(body).ok_or_else(|| corrupt(format!("stream entry {id}: bad fields")))?;
    Ok(Some(StreamEntry { id, fields }))
}

/// The reply of XRANGE / XREVRANGE: an array of entries.
pub(super) fn range_entries(value: &Value) -> Result<Vec<StreamEntry>, EngineError> {
    let list = items(value).ok_or_else(|| corrupt("stream range reply is not an array"))?;
    let mut out = Vec::with_capacity(list.len());
    for entry in list {
        if let Some(entry) = stream_entry(entry)? {
            out.push(entry);
        }
    }
    Ok(out)
}

/// The reply of XREAD / XREADGROUP on one stream: nil (timed out), `[[key, entries]]` (RESP2)
/// or `{key: entries}` (RESP3).
pub(super) fn read_entries(value: &Value) -> Result<Vec<StreamEntry>, EngineError> {
    let mut entries = Vec::new();
    for (_, list) in read_streams(value)? {
        entries.extend(list);
    }
    Ok(entries)
}

/// The reply of XREAD / XREADGROUP on several streams, per stream: its key and its entries
/// (streams with none are absent).
pub(super) fn read_streams(value: &Value) -> Result<Vec<(String, Vec<StreamEntry>)>, EngineError> {
    let per_stream: Vec<(&Value, &Value)> = match value {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(pairs) => pairs.iter().map(|(k, entries)| (k, entries)).collect(),
        other => {
            let streams =
                items(other).ok_or_else(|| corrupt("stream read reply is not an array"))?;
            let mut out = Vec::with_capacity(streams.len());
            for stream in streams {
                match items(stream) {
                    Some([key, entries]) => out.push((key, entries)),
                    _ => return Err(corrupt("stream read reply: bad per-stream part")),
                }
            }
            out
        }
    };
    let mut out = Vec::with_capacity(per_stream.len());
    for (key, list) in per_stream {
        let key = text(key).ok_or_else(|| corrupt("stream read reply: key is not text"))?;
        out.push((key, range_entries(list)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    #[test]
    fn reads_resp2_and_resp3_stream_replies() {
        let entry = Value::Array(vec![
            bulk(b"1-0"),
            Value::Array(vec![bulk(b"event"), bulk(b"{}")]),
        ]);
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk(b"k"),
            Value::Array(vec![entry.clone()]),
        ])]);
        let resp3 = Value::Map(vec![(bulk(b"k"), Value::Array(vec![entry]))]);
        for reply in [resp2, resp3] {
            let got = read_entries(&reply).unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].id, "1-0");
            assert_eq!(got[0].text("event"), Some("{}"));
        }
        assert!(read_entries(&Value::Nil).unwrap().is_empty());
    }

    #[test]
    fn binary_fields_survive_and_render_lossily() {
        let entry = Value::Array(vec![
            bulk(b"2-0"),
            Value::Array(vec![bulk(b"other"), bulk(&[0xff, b'a'])]),
        ]);
        let got = stream_entry(&entry).unwrap().unwrap();
        assert_eq!(got.field("event"), None);
        assert_eq!(got.text("other"), None);
        assert_eq!(got.fields_json(), "{\"other\":\"\u{fffd}a\"}");
    }

    #[test]
    fn odd_shapes_are_errors_not_panics() {
        assert!(stream_entry(&Value::Int(3)).is_err());
        assert!(stream_entry(&Value::Array(vec![bulk(b"1-0")])).is_err());
        let odd = Value::Array(vec![bulk(b"1-0"), Value::Array(vec![bulk(b"f")])]);
        assert!(stream_entry(&odd).is_err());
        let deleted = Value::Array(vec![bulk(b"1-0"), Value::Nil]);
        assert_eq!(stream_entry(&deleted).unwrap(), None);
    }
}
