//! The field-error collector every handler that reads a JSON body uses: it gathers every
//! error of a body, so a client learns all of them in one answer (RFC 9457 `errors` with JSON
//! Pointers, see `problem.rs`). It owns only the mechanics (missing, unknown, badly typed
//! fields); what a valid field is stays with the resource's handlers.

use super::problem::{ApiResult, FieldError, Problem};
use serde_json::{Map, Value};

#[derive(Default)]
pub struct FieldErrors {
    errors: Vec<FieldError>,
}

impl FieldErrors {
    /// `pointer` is a JSON Pointer into the body (`/items/0/sku`); the answer shows it in URI
    /// fragment form (`#/items/0/sku`).
    pub fn error(&mut self, pointer: &str, detail: impl Into<String>) {
        self.errors.push(FieldError {
            pointer: format!("#{pointer}"),
            detail: detail.into(),
        });
    }

    /// The value `checked` holds, or `None` with its error recorded at `pointer`.
    pub fn check<T>(&mut self, pointer: &str, checked: Result<T, String>) -> Option<T> {
        checked.map_err(|detail| self.error(pointer, detail)).ok()
    }

    /// Field `key` of `object` (at `base`, `""` for the body itself) read by `read`; a missing
    /// field is recorded as required.
    pub fn required<'a, T>(
        &mut self,
        object: &'a Map<String, Value>,
        base: &str,
        key: &str,
        read: impl FnOnce(&'a Value) -> Result<T, String>,
    ) -> Option<T> {
        let pointer = format!("{base}/{key}");
        match object.get(key) {
            Some(value) => self.check(&pointer, read(value)),
            None => {
                self.error(&pointer, "is required");
                None
            }
        }
    }

    /// Records every key of `object` (at `base`) that is not in `known`.
    pub fn unknown_fields(&mut self, object: &Map<String, Value>, known: &[&str], base: &str) {
        for key in object.keys() {
            if !known.contains(&key.as_str()) {
                self.error(&format!("{base}/{key}"), "is not a known field");
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// The 400 of a request that would have queued work.
    pub fn into_problem(self) -> Problem {
        Problem::validation(self.errors)
    }

    /// `Ok` if no field was wrong; else the 400 of a request that would have queued work.
    pub fn nothing_queued(self) -> ApiResult<()> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self.into_problem())
        }
    }

    /// `Ok` if no field was wrong; else the 400 of a request that would have changed a
    /// resource.
    pub fn nothing_changed(self) -> ApiResult<()> {
        if self.is_empty() {
            return Ok(());
        }
        let mut p = self.into_problem();
        p.detail = Some("See `errors`; nothing was changed.".into());
        Err(p)
    }
}

/// Why `value` is not a string, for the `read` functions of [`FieldErrors::required`].
pub fn string(value: &Value) -> Result<&str, String> {
    value.as_str().ok_or_else(|| "must be a string".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_error_is_kept_in_order_with_its_pointer() {
        let Value::Object(body) = json!({"a": 1, "extra": true}) else {
            unreachable!()
        };
        let mut f = FieldErrors::default();
        f.unknown_fields(&body, &["a", "b"], "");
        assert_eq!(
            f.required(&body, "", "a", |v| string(v).map(String::from)),
            None
        );
        assert_eq!(f.required(&body, "/x", "b", |_| Ok(())), None);
        let p = f.nothing_queued().unwrap_err();
        let got: Vec<(&str, &str)> = p
            .errors
            .iter()
            .map(|e| (e.pointer.as_str(), e.detail.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("#/extra", "is not a known field"),
                ("#/a", "must be a string"),
                ("#/x/b", "is required"),
            ]
        );
        assert!(FieldErrors::default().nothing_changed().is_ok());
    }
}
