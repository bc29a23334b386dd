//! Request templates of task and callback steps: `{path}` placeholders in the URL, headers and
//! body, filled from the step's context (`orderId`, `status`, `version`, `attempt`,
//! `taskToken`, `order.<field>...`). A path that leads nowhere fills in as empty (in text) or
//! `null` (a body value); `{{` and `}}` are literal braces.

use super::expr::{lookup, parse_path};
use serde_json::Value;

/// How a placeholder's value is written into text.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// As is (headers, body strings).
    None,
    /// Percent-encoded, every byte but RFC 3986's unreserved ones (URLs).
    Url,
}

fn text_of(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Fills the `{path}` placeholders of `template`.
pub fn fill_str(template: &str, context: &Value, escape: Escape) -> String {
    fill(template, context, escape, false).unwrap_or_default()
}

/// Fills a URL template, placeholders percent-encoded. A placeholder that fills in as `.` or
/// `..` is refused: URL parsing resolves such a segment (encoded or not), so an order id or a
/// field of `..` would climb out of the configured path to another on the same host.
pub fn fill_url(template: &str, context: &Value) -> Result<String, String> {
    fill(template, context, Escape::Url, true)
}

fn fill(
    template: &str,
    context: &Value,
    escape: Escape,
    refuse_dots: bool,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if let Some(after) = tail.strip_prefix('}') {
            out.push('}');
            rest = after;
            continue;
        }
        match tail.find('}') {
            Some(end) => {
                let value = parse_path(&tail[1..end])
                    .ok()
                    .and_then(|path| lookup(context, &path).cloned())
                    .unwrap_or(Value::Null);
                let text = text_of(&value);
                if refuse_dots && (text == "." || text == "..") {
                    return Err(format!(
                        "the placeholder {{{}}} fills in as `{text}`, a dot segment",
                        &tail[1..end]
                    ));
                }
                match escape {
                    Escape::None => out.push_str(&text),
                    Escape::Url => out.push_str(&percent_encode(&text)),
                }
                rest = &tail[end + 1..];
            }
            None => {
                out.push_str(tail);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Fills a JSON body template: a string that is one placeholder alone becomes the value it
/// names (any JSON type); other strings are filled as text; objects and arrays recursively.
pub fn fill_value(template: &Value, context: &Value) -> Value {
    match template {
        Value::String(s) => {
            let whole = s.strip_prefix('{').and_then(|r| r.strip_suffix('}'));
            if let Some(inner) = whole.filter(|i| !i.contains(['{', '}']))
                && let Ok(path) = parse_path(inner)
            {
                return lookup(context, &path).cloned().unwrap_or(Value::Null);
            }
            Value::String(fill_str(s, context, Escape::None))
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| fill_value(v, context)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), fill_value(v, context)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn placeholders_fill_text_urls_and_whole_values() {
        let c = json!({"orderId": "o 1/2", "version": 3, "order": {"currency": "USD", "items": [{"sku": "a"}], "metadata": null}});
        assert_eq!(
            fill_str("http://h/pay/{orderId}?v={version}", &c, Escape::Url),
            "http://h/pay/o%201%2F2?v=3"
        );
        assert_eq!(
            fill_str("{{literal}} {order.currency}{missing}", &c, Escape::None),
            "{literal} USD"
        );
        assert_eq!(
            fill_value(
                &json!({"id": "{orderId}", "items": "{order.items}", "n": "{version}", "label": "v{version}", "k": [1, "{order.currency}"]}),
                &c
            ),
            json!({"id": "o 1/2", "items": [{"sku": "a"}], "n": 3, "label": "v3", "k": [1, "USD"]})
        );
    }
}
