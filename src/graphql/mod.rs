//! The GraphQL face of subscriptions (DESIGN 1.4): the schema in `config/schema.graphql`, and the
//! preparation of one request into an [`Operation`] — which events it wants ([`EventFilter`]) and
//! what of each it sends ([`Projection`]). Documents are parsed and validated by apollo-compiler;
//! everything a document decides is resolved once here, so the hub's per-event work is a filter
//! test and a template render.
//!
//! This module never performs I/O, never holds connection state and never panics on any input:
//! every fault in a request is a [`GraphqlError`] the transport sends back.

mod filter;
mod prepare;
mod projection;
#[cfg(test)]
mod tests;

pub use filter::{EventFilter, FilterExpr, FilterField, IndexKey, MAX_FILTER_DEPTH, StringOp};
pub use projection::Projection;

use crate::config::GraphqlConfig;
use apollo_compiler::Schema;
use apollo_compiler::validation::Valid;
use std::sync::Arc;

/// The `extensions.code` values of [`GraphqlError`].
pub mod codes {
    /// The document is not GraphQL.
    pub const PARSE_FAILED: &str = "GRAPHQL_PARSE_FAILED";
    /// The document does not fit the schema, or names no single operation Herald can run.
    pub const VALIDATION_FAILED: &str = "GRAPHQL_VALIDATION_FAILED";
    /// Variables or arguments have the wrong type or are missing.
    pub const BAD_USER_INPUT: &str = "BAD_USER_INPUT";
    /// The document exceeds [`super::DocumentLimits`].
    pub const LIMIT_EXCEEDED: &str = "LIMIT_EXCEEDED";
}

/// The validated schema. Built once at start-up and shared.
pub struct GraphqlSchema {
    schema: Valid<Schema>,
}

impl GraphqlSchema {
    /// Loads `config/schema.graphql`, embedded at build time so the binary cannot disagree with
    /// the file it was tested against.
    pub fn load() -> Result<GraphqlSchema, String> {
        Schema::parse_and_validate(
            include_str!("../../config/schema.graphql"),
            "config/schema.graphql",
        )
        .map(|schema| GraphqlSchema { schema })
        .map_err(|e| format!("config/schema.graphql is invalid: {}", e.errors))
    }

    /// Parses, validates and plans one request. Never panics on any input.
    pub fn prepare(
        &self,
        req: &GraphqlRequest,
        limits: &DocumentLimits,
    ) -> Result<Operation, Vec<GraphqlError>> {
        prepare::prepare(&self.schema, req, limits)
    }
}

/// A GraphQL request as clients send it (`{"query", "variables", "operationName"}`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphqlRequest {
    pub query: String,
    #[serde(default)]
    pub variables: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub operation_name: Option<String>,
}

/// Bounds on one document, so that preparing it stays cheap whatever a client sends. Set by
/// `[graphql]` in the configuration; the defaults are [`GraphqlConfig`]'s.
#[derive(Debug, Clone, Copy)]
pub struct DocumentLimits {
    /// Size of the query text.
    pub max_bytes: usize,
    /// Nesting of fields; root fields are at depth 1.
    pub max_depth: usize,
    /// Fields after fragment expansion, aliases and `@skip`ped fields included.
    pub max_fields: usize,
    /// Aliased fields after fragment expansion.
    pub max_aliases: usize,
}

impl From<&GraphqlConfig> for DocumentLimits {
    fn from(c: &GraphqlConfig) -> Self {
        DocumentLimits {
            max_bytes: c.max_document_bytes,
            max_depth: c.max_depth,
            max_fields: c.max_fields,
            max_aliases: c.max_aliases,
        }
    }
}

impl Default for DocumentLimits {
    fn default() -> Self {
        DocumentLimits::from(&GraphqlConfig::default())
    }
}

/// An error in the GraphQL response format.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GraphqlError {
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub locations: Vec<Location>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extensions: Option<serde_json::Value>,
}

impl GraphqlError {
    pub fn new(msg: impl Into<String>) -> Self {
        GraphqlError {
            message: msg.into(),
            locations: Vec::new(),
            extensions: None,
        }
    }

    /// An error with `extensions: {"code": code}`.
    pub fn with_code(msg: impl Into<String>, code: &str) -> Self {
        GraphqlError {
            message: msg.into(),
            locations: Vec::new(),
            extensions: Some(serde_json::json!({ "code": code })),
        }
    }

    /// The `extensions.code`, if any.
    pub fn code(&self) -> Option<&str> {
        self.extensions.as_ref()?.get("code")?.as_str()
    }
}

/// A position in the document, both counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// A prepared request.
#[derive(Debug)]
pub enum Operation {
    Subscription(SubscriptionSpec),
    Query(OrderQuery),
}

/// `subscription { onOrderUpdated(...) { ... } }`: which events, from where, and in what shape.
#[derive(Debug)]
pub struct SubscriptionSpec {
    pub filter: EventFilter,
    /// The resume cursor (`after:`), passed through unchecked: the log judges it.
    pub after: Option<String>,
    /// `resync: true`: when `after` is older than the retained log, or absent, start with a
    /// snapshot of the current status of every order the subscription covers (README "Resync").
    pub resync: bool,
    pub projection: Arc<Projection>,
}

/// `query { order(orderId: ...) { ... } }`.
#[derive(Debug)]
pub struct OrderQuery {
    pub order_id: String,
    pub projection: Arc<Projection>,
}
