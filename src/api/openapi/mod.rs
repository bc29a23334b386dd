//! `GET /openapi.json`: the OpenAPI 3.1 document of the whole HTTP API, derived at compile
//! time (`utoipa`) from the handlers' `#[utoipa::path]` attributes and the body types'
//! schemas, never written by hand. The document lists every route a node with every role
//! serves ([`crate::server::route_table`]); the tests hold both to each other.
//!
//! Served without credentials, like `/healthz`: it describes the API any client may read in
//! the README, and reveals no key, secret or order.
//!
//! What every route shares is added here once, by [`SharedAnswers`], rather than on each
//! handler: the security schemes, and the problem answers of any authenticated request (401,
//! 429, 503) and of any JSON body (400, 408, 413, 415).

pub mod schemas;

use crate::http::problem::{FieldError, Problem};
use crate::model::{HistoryEntry, LineItem, MalformedEntry, Order, OrderEvent, OrderStatus};
use crate::{api, push};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::sync::OnceLock;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::{Object, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, OpenApi as Document, PathItem, Ref, RefOr, Response as ApiResponse,
    ResponseBuilder,
};
use utoipa::{Modify, OpenApi};

/// The names of the two security schemes (`Authorization: Bearer` and `x-api-key`).
pub const BEARER: &str = "bearer";
pub const API_KEY: &str = "apiKey";

/// The content type of every error answer.
const PROBLEM_JSON: &str = "application/problem+json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "Real-time order status push server: order intake (202 + id), status \
            polling, the event log, partner webhooks (Standard Webhooks) and operations. \
            Errors are RFC 9457 `application/problem+json`. Subscriptions are GraphQL over \
            WebSocket at `/graphql` (see the README), or Server-Sent Events; this document covers the HTTP routes.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        api::health::healthz,
        api::health::readyz,
        api::health::metrics,
        openapi_json,
        api::orders::create_order,
        api::orders::get_order,
        api::orders::get_status,
        api::orders::create_transition,
        api::tasks::succeed,
        api::tasks::fail,
        api::tasks::heartbeat,
        api::events::list_events,
        api::events::publish_event,
        api::webhooks::endpoints::create_endpoint,
        api::webhooks::endpoints::list_endpoints,
        api::webhooks::endpoints::get_endpoint,
        api::webhooks::endpoints::patch_endpoint,
        api::webhooks::endpoints::delete_endpoint,
        api::webhooks::endpoints::rotate_secret,
        api::webhooks::deliveries::list_deliveries,
        api::webhooks::deliveries::get_delivery,
        api::webhooks::deliveries::retry_delivery,
        api::webhooks::deliveries::recover,
        api::admin::queues,
        api::admin::dead_letters,
        api::admin::redrive,
        api::admin::malformed_events,
        push::ws::upgrade,
        push::query::graphql_query,
        push::console,
        push::sse::order_events,
        push::sse::events_stream,
        push::sse::mint_stream_token,
    ),
    components(schemas(
        Problem, FieldError, OrderStatus, LineItem, Order, HistoryEntry, OrderEvent,
        MalformedEntry,
    )),
    modifiers(&SharedAnswers),
    security(("bearer" = []), ("apiKey" = [])),
    tags(
        (name = "orders", description = "Intake, transitions and the polling pattern"),
        (name = "tasks", description = "Workflow callback tasks (task tokens)"),
        (name = "events", description = "The event log: long-poll reading and publishing"),
        (name = "webhooks", description = "Partner endpoints and their delivery log"),
        (name = "admin", description = "Queues, dead letters and malformed events (admin keys)"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
        (name = "graphql", description = "GraphQL queries, the WebSocket upgrade, the console"),
    ),
)]
pub struct ApiDoc;

/// The aliases a handler serves under a second path: `(path, its alias)`. The alias gets the
/// same operations, with `Realtime` appended to their ids (ids are unique in a document).
const ALIASES: &[(&str, &str)] = &[("/graphql", "/graphql/realtime")];

/// Adds what every route shares (see the module's first lines) and the aliases.
struct SharedAnswers;

impl Modify for SharedAnswers {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("API key or JWT")
                    .description(Some(
                        "An admin or partner API key, or a customer JWT (`sub` = customerId).",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            API_KEY,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "x-api-key",
                "An admin or partner API key.",
            ))),
        );
        for (path, alias) in ALIASES {
            if let Some(item) = doc.paths.paths.get(*path) {
                let mut copy = item.clone();
                for_each_operation(&mut copy, |op| {
                    op.operation_id = op.operation_id.take().map(|id| format!("{id}Realtime"));
                });
                doc.paths.paths.insert((*alias).to_string(), copy);
            }
        }
        for item in doc.paths.paths.values_mut() {
            for_each_operation(item, |op| {
                // `security(())` on a handler marks a public route: no credentials at all.
                let public = op
                    .security
                    .as_ref()
                    .is_some_and(|s| s.iter().all(is_empty_requirement));
                if public {
                    op.security = Some(Vec::new());
                } else {
                    add_problem(op, 401, "Missing or invalid credentials.");
                    add_problem(
                        op,
                        429,
                        "Over this credential's rate limit (`[http] rate_limit_*`).",
                    );
                    add_problem(
                        op,
                        503,
                        "The storage engine is unreachable or did not answer in time; a \
                         change asked for may have been applied all the same.",
                    );
                }
                add_problem_headers(op);
                if op.request_body.is_some() {
                    add_problem(op, 400, "The body is not valid; `errors` names each field.");
                    add_problem(
                        op,
                        408,
                        "The body did not arrive within http.body_read_timeout.",
                    );
                    add_problem(op, 413, "The body exceeds http.max_body_bytes.");
                    add_problem(op, 415, "The body is not `application/json`.");
                }
            });
        }
    }
}

fn is_empty_requirement(requirement: &utoipa::openapi::security::SecurityRequirement) -> bool {
    serde_json::to_value(requirement).is_ok_and(|v| v.as_object().is_some_and(|o| o.is_empty()))
}

fn for_each_operation(
    item: &mut PathItem,
    mut f: impl FnMut(&mut utoipa::openapi::path::Operation),
) {
    for op in [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
    {
        f(op);
    }
}

/// The problem+json answer with this status, unless the handler documents its own.
fn add_problem(op: &mut utoipa::openapi::path::Operation, status: u16, description: &str) {
    op.responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| RefOr::T(problem_response(description)));
}

/// A response header: its name, description and type.
type HeaderDoc = (&'static str, &'static str, Type);

/// The headers Herald sends with these answers, on every operation that documents them:
/// `WWW-Authenticate` with a 401, `Retry-After` with a 429 or 503, and the rate limit's
/// `RateLimit-*` with a 429.
fn add_problem_headers(op: &mut utoipa::openapi::path::Operation) {
    let headers: [(&str, &[HeaderDoc]); 3] = [
        (
            "401",
            &[(
                "WWW-Authenticate",
                "`Bearer realm=\"herald\"` and, for a refused token, the reason.",
                Type::String,
            )],
        ),
        (
            "429",
            &[
                (
                    "Retry-After",
                    "Whole seconds until a request is allowed again.",
                    Type::Integer,
                ),
                (
                    "RateLimit-Limit",
                    "The bucket's size (the burst).",
                    Type::Integer,
                ),
                ("RateLimit-Remaining", "0.", Type::Integer),
                (
                    "RateLimit-Reset",
                    "Seconds until the bucket is full again.",
                    Type::Integer,
                ),
            ],
        ),
        (
            "503",
            &[(
                "Retry-After",
                "Seconds to wait before retrying.",
                Type::Integer,
            )],
        ),
    ];
    for (status, named) in headers {
        if let Some(RefOr::T(response)) = op.responses.responses.get_mut(status) {
            for (name, description, kind) in named {
                response
                    .headers
                    .entry((*name).to_string())
                    .or_insert_with(|| {
                        HeaderBuilder::new()
                            .schema(Object::with_type(kind.clone()))
                            .description(Some(*description))
                            .build()
                    });
            }
        }
    }
}

/// A response whose body is a [`Problem`].
pub fn problem_response(description: &str) -> ApiResponse {
    ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

/// The document, serialised once.
fn document() -> &'static Bytes {
    static DOCUMENT: OnceLock<Bytes> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        // Serialising a document of plain maps and strings cannot fail; an empty body would
        // show at once in the tests.
        Bytes::from(ApiDoc::openapi().to_pretty_json().unwrap_or_default())
    })
}

/// `GET /openapi.json`
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "This document",
    description = "The OpenAPI 3.1 document of every HTTP route, generated from the handlers. No credentials.",
    security(()),
    responses((status = 200, description = "This document (OpenAPI 3.1).", content_type = "application/json", body = Object)),
)]
pub async fn openapi_json() -> Response {
    let mut response = document().clone().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{Roles, route_table};
    use std::collections::BTreeSet;

    /// Every (method, path) the document lists.
    fn documented() -> BTreeSet<(String, String)> {
        let doc: serde_json::Value =
            serde_json::from_slice(document()).expect("the document is JSON");
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths").iter() {
            for method in item.as_object().expect("a path item").keys() {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
        out
    }

    #[test]
    fn every_served_route_is_documented_and_every_documented_route_is_served() {
        let served: BTreeSet<(String, String)> = route_table(Roles::ALL)
            .into_iter()
            .map(|(method, path)| (method.to_string(), path.to_string()))
            .collect();
        let documented = documented();
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty(),
            "served, not documented: {undocumented:?}"
        );
        assert!(unserved.is_empty(), "documented, not served: {unserved:?}");
    }

    /// The request bodies' schemas name exactly the fields their handlers take (each handler
    /// refuses any other as a field error).
    #[test]
    fn request_schemas_name_the_fields_their_handlers_take() {
        use crate::api::{orders, tasks, webhooks};
        let doc: serde_json::Value = serde_json::from_slice(document()).expect("JSON");
        let schemas = &doc["components"]["schemas"];
        let properties = |name: &str| -> BTreeSet<String> {
            schemas[name]["properties"]
                .as_object()
                .unwrap_or_else(|| panic!("{name} has properties"))
                .keys()
                .cloned()
                .collect()
        };
        let set = |fields: &[&str]| -> BTreeSet<String> {
            fields.iter().map(|f| f.to_string()).collect()
        };
        let cases = [
            ("CreateOrder", set(orders::ORDER_FIELDS)),
            ("LineItem", set(orders::LINE_ITEM_FIELDS)),
            ("TransitionRequest", set(orders::TRANSITION_FIELDS)),
            ("TaskFailure", set(tasks::FAILURE_FIELDS)),
            (
                "CreateWebhookEndpoint",
                set(&webhooks::endpoints::settings_and("partnerId")),
            ),
            (
                "PatchWebhookEndpoint",
                set(&webhooks::endpoints::settings_and("enabled")),
            ),
            ("RecoverRequest", set(webhooks::deliveries::RECOVER_FIELDS)),
        ];
        for (schema, taken) in cases {
            assert_eq!(properties(schema), taken, "{schema}");
        }
    }

    #[test]
    fn operation_ids_are_unique() {
        let doc: serde_json::Value = serde_json::from_slice(document()).expect("JSON");
        let mut seen = BTreeSet::new();
        for item in doc["paths"].as_object().expect("paths").values() {
            for op in item.as_object().expect("a path item").values() {
                let id = op["operationId"].as_str().expect("an operationId");
                assert!(seen.insert(id.to_string()), "{id} twice");
            }
        }
    }
}
