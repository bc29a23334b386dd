//! RFC 9457 problem details: every error the HTTP API answers is `application/problem+json`.
//! Field errors use the RFC's own example shape: `errors: [{detail, pointer}]` with JSON
//! Pointers into the request body.

use crate::engine::EngineError;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// JSON Pointer (RFC 6901) in URI fragment form, e.g. `#/items/0/quantity`.
    pub pointer: String,
    pub detail: String,
}

/// An RFC 9457 problem (`application/problem+json`): `type` names the problem
/// (`/problems/<slug>`), `errors` lists the field errors of a 400 `validation`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: String,
    /// Always a fixed text per problem type (so `&'static`: keeps the error small).
    pub title: &'static str,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Response headers beside the content type (`Retry-After`, `WWW-Authenticate`, the
    /// `RateLimit-*` headers of a 429).
    #[serde(skip)]
    #[schema(ignore)]
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &str, title: &'static str) -> Problem {
        Problem {
            problem_type: format!("/problems/{slug}"),
            title,
            status: status.as_u16(),
            detail: None,
            errors: Vec::new(),
            headers: Vec::new(),
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Problem {
        self.detail = Some(detail.into());
        self
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Problem {
        self.headers.push((name, value));
        self
    }

    /// `Retry-After` in whole seconds.
    pub fn retry_after(self, seconds: u64) -> Problem {
        self.header(header::RETRY_AFTER, HeaderValue::from(seconds))
    }

    pub fn validation(errors: Vec<FieldError>) -> Problem {
        let mut p = Problem::new(
            StatusCode::BAD_REQUEST,
            "validation",
            "The request body is not valid",
        );
        p.detail = Some(format!(
            "{} field error(s); see `errors`. Nothing was queued.",
            errors.len()
        ));
        p.errors = errors;
        p
    }

    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request").detail(detail)
    }

    pub fn unauthorized() -> Problem {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Missing or invalid credentials",
        )
        .detail("Send `Authorization: Bearer <key>` or `x-api-key: <key>`.")
        .header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"herald\""),
        )
    }

    pub fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, "forbidden", "Not allowed").detail(detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found").detail(detail)
    }

    /// The answer for an order the caller may not see: exactly the one for a missing order,
    /// byte for byte (it does not even echo the id), on every route that takes an order id
    /// (the API's and the SSE stream's), so none is an oracle of another tenant's order ids.
    pub fn no_such_order() -> Problem {
        Problem::not_found("No order with this orderId is visible to this credential.")
    }

    pub fn conflict(slug: &str, title: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::CONFLICT, slug, title).detail(detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
        )
        .detail(detail)
        .retry_after(1)
    }
}

impl From<EngineError> for Problem {
    fn from(e: EngineError) -> Problem {
        match e {
            EngineError::Unavailable(_) => {
                tracing::warn!(error = %e, "engine unavailable");
                // A timeout cannot tell whether the engine applied the change before it went
                // quiet: never claim it did not.
                Problem::unavailable(
                    "The storage engine is unreachable or did not answer in time. A change this \
                     request asked for may have been applied all the same: check before \
                     repeating it, or repeat it with the same Idempotency-Key where the route \
                     takes one. Retry later.",
                )
            }
            EngineError::Corrupt(_) => {
                tracing::error!(error = %e, "engine data error");
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal error",
                )
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

pub type ApiResult<T> = Result<T, Problem>;

/// Turns the plain-text 4xx answers of axum's own extractors (a path segment that is not
/// UTF-8, a query string of the wrong type) into problem+json, so every error of the API has
/// one form. Their text names the parameter and the fault, never a credential.
pub async fn rejections_as_problems(response: Response) -> Response {
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if !response.status().is_client_error() || !plain {
        return response;
    }
    let status = response.status();
    let text = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let title = status.canonical_reason().unwrap_or("Bad request");
    let slug = title.to_ascii_lowercase().replace(' ', "-");
    Problem::new(status, &slug, title)
        .detail(text)
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unavailable_engine_never_claims_nothing_was_changed() {
        let problem = Problem::from(EngineError::Unavailable("timed out".into()));
        assert_eq!(problem.status, 503);
        let detail = problem.detail.unwrap_or_default();
        assert!(detail.contains("may have been applied"), "{detail}");
        assert!(!detail.contains("nothing was changed"), "{detail}");
        // The engine's own words (addresses, key names) stay in the log.
        assert!(!detail.contains("timed out"), "{detail}");
    }
}
