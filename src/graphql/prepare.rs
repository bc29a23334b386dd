//! From request text to an [`Operation`]: parse, validate against the schema, pick the operation,
//! enforce the document limits, coerce variables, then resolve directives, fragments, aliases and
//! arguments once. Every failure is a [`GraphqlError`]; nothing here panics on any input.

use super::filter::{EventFilter, FilterExpr, list_of, status_enum_name};
use super::projection::{LeafSelection, Projection, RootSelection, leaf_by_name};
use super::{
    DocumentLimits, GraphqlError, GraphqlRequest, Location, Operation, OrderQuery,
    SubscriptionSpec, codes,
};
use crate::model::OrderStatus;
use apollo_compiler::ast::OperationType;
use apollo_compiler::executable::{
    DirectiveList, ExecutableDocument, Field, Selection, SelectionSet,
};
use apollo_compiler::parser::{Parser, SourceSpan};
use apollo_compiler::response::{JsonMap, JsonValue};
use apollo_compiler::validation::Valid;
use apollo_compiler::{Node, Schema, ast};
use serde_json::Value;
use std::collections::HashSet;
use std::sync::Arc;

/// Far above any useful nesting (fields nest two deep in this schema), far below a stack risk.
const PARSER_RECURSION_LIMIT: usize = 64;

type Errors = Vec<GraphqlError>;

pub(crate) fn prepare(
    schema: &Valid<Schema>,
    req: &GraphqlRequest,
    limits: &DocumentLimits,
) -> Result<Operation, Errors> {
    if req.query.len() > limits.max_bytes {
        return Err(vec![GraphqlError::with_code(
            format!(
                "document is {} bytes, more than the limit of {}",
                req.query.len(),
                limits.max_bytes
            ),
            codes::LIMIT_EXCEEDED,
        )]);
    }
    let document = Parser::new()
        .recursion_limit(PARSER_RECURSION_LIMIT)
        .parse_ast(req.query.as_str(), "request.graphql")
        .map_err(|e| diagnostics(&e.errors, codes::PARSE_FAILED))?;
    let doc = document
        .to_executable_validate(schema)
        .map_err(|e| diagnostics(&e.errors, codes::VALIDATION_FAILED))?;
    let operation = doc
        .operations
        .get(req.operation_name.as_deref())
        .map_err(|e| {
            vec![error_from_apollo(
                e.to_graphql_error(&doc.sources),
                codes::VALIDATION_FAILED,
            )]
        })?;
    let mut counts = Counts::default();
    measure(&doc, &operation.selection_set, 1, limits, &mut counts).map_err(|e| vec![e])?;

    let supplied = match &req.variables {
        Some(map) => match JsonValue::from(Value::Object(map.clone())) {
            JsonValue::Object(map) => map,
            _ => JsonMap::new(),
        },
        None => JsonMap::new(),
    };
    let variables = apollo_compiler::request::coerce_variable_values(schema, operation, &supplied)
        .map_err(|e| {
            vec![error_from_apollo(
                e.to_graphql_error(&doc.sources),
                codes::BAD_USER_INPUT,
            )]
        })?;
    let planner = Planner {
        doc: &doc,
        variables: &variables,
    };
    let roots = planner
        .collect_fields(&[&operation.selection_set])
        .map_err(|e| vec![e])?;
    match operation.operation_type {
        OperationType::Subscription => planner.subscription(&roots),
        OperationType::Query => planner.query(&roots),
        OperationType::Mutation => Err(GraphqlError::with_code(
            "mutations are not supported",
            codes::VALIDATION_FAILED,
        )),
    }
    .map_err(|e| vec![e])
}

/// Fields and aliased fields seen so far by [`measure`].
#[derive(Default)]
struct Counts {
    fields: usize,
    aliases: usize,
}

/// Counts fields and aliases (after fragment expansion, skipped ones included: the limit is on
/// the document) and nesting depth. Stops at the first excess, so a fragment that expands
/// exponentially costs at most `max_fields` visits per nesting level.
fn measure(
    doc: &ExecutableDocument,
    set: &SelectionSet,
    depth: usize,
    limits: &DocumentLimits,
    counts: &mut Counts,
) -> Result<(), GraphqlError> {
    for selection in &set.selections {
        match selection {
            Selection::Field(field) => {
                counts.fields += 1;
                if field.alias.is_some() {
                    counts.aliases += 1;
                    if counts.aliases > limits.max_aliases {
                        return Err(located(
                            format!(
                                "document has more than {} aliased fields (after fragment expansion)",
                                limits.max_aliases
                            ),
                            codes::LIMIT_EXCEEDED,
                            field.location(),
                            doc,
                        ));
                    }
                }
                if counts.fields > limits.max_fields {
                    return Err(located(
                        format!(
                            "document selects more than {} fields (after fragment expansion)",
                            limits.max_fields
                        ),
                        codes::LIMIT_EXCEEDED,
                        field.location(),
                        doc,
                    ));
                }
                if depth > limits.max_depth {
                    return Err(located(
                        format!("document nests fields deeper than {}", limits.max_depth),
                        codes::LIMIT_EXCEEDED,
                        field.location(),
                        doc,
                    ));
                }
                measure(doc, &field.selection_set, depth + 1, limits, counts)?;
            }
            Selection::FragmentSpread(spread) => {
                if let Some(fragment) = doc.fragments.get(&spread.fragment_name) {
                    measure(doc, &fragment.selection_set, depth, limits, counts)?;
                }
            }
            Selection::InlineFragment(inline) => {
                measure(doc, &inline.selection_set, depth, limits, counts)?;
            }
        }
    }
    Ok(())
}

/// Fields grouped by response key, in document order (the spec's CollectFields).
type Grouped<'d> = Vec<(&'d str, Vec<&'d Node<Field>>)>;

struct Planner<'d> {
    doc: &'d Valid<ExecutableDocument>,
    variables: &'d JsonMap,
}

impl<'d> Planner<'d> {
    fn collect_fields(&self, sets: &[&'d SelectionSet]) -> Result<Grouped<'d>, GraphqlError> {
        let mut out = Grouped::new();
        for set in sets {
            let mut visited = HashSet::new();
            self.collect_into(set, &mut visited, &mut out)?;
        }
        Ok(out)
    }

    fn collect_into(
        &self,
        set: &'d SelectionSet,
        visited: &mut HashSet<&'d str>,
        out: &mut Grouped<'d>,
    ) -> Result<(), GraphqlError> {
        for selection in &set.selections {
            match selection {
                Selection::Field(field) => {
                    if !self.included(&field.directives)? {
                        continue;
                    }
                    let key = field.response_key().as_str();
                    match out.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, group)) => group.push(field),
                        None => out.push((key, vec![field])),
                    }
                }
                Selection::FragmentSpread(spread) => {
                    if !self.included(&spread.directives)?
                        || !visited.insert(spread.fragment_name.as_str())
                    {
                        continue;
                    }
                    if let Some(fragment) = self.doc.fragments.get(&spread.fragment_name) {
                        self.collect_into(&fragment.selection_set, visited, out)?;
                    }
                }
                Selection::InlineFragment(inline) => {
                    if self.included(&inline.directives)? {
                        self.collect_into(&inline.selection_set, visited, out)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// `@skip(if:)` and `@include(if:)`, with literals or variables.
    fn included(&self, directives: &DirectiveList) -> Result<bool, GraphqlError> {
        for directive in directives {
            let wanted = match directive.name.as_str() {
                "skip" => true,
                "include" => false,
                _ => continue,
            };
            let condition = directive.specified_argument_by_name("if");
            let value = condition.map(|v| self.resolve(v));
            match value {
                Some(Value::Bool(b)) if b == wanted => return Ok(false),
                Some(Value::Bool(_)) => {}
                _ => {
                    return Err(located(
                        format!("@{}(if:) needs a Boolean", directive.name),
                        codes::BAD_USER_INPUT,
                        directive.location(),
                        self.doc,
                    ));
                }
            }
        }
        Ok(true)
    }

    /// An argument value with its variables substituted, as JSON. Enum values become their names.
    fn resolve(&self, value: &ast::Value) -> Value {
        match value {
            ast::Value::Null => Value::Null,
            ast::Value::Enum(name) => Value::String(name.to_string()),
            ast::Value::Variable(name) => self
                .variables
                .get(name.as_str())
                .map(json_from_apollo)
                .unwrap_or(Value::Null),
            ast::Value::String(s) => Value::String(s.clone()),
            ast::Value::Float(f) => f
                .try_to_f64()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map_or(Value::Null, Value::Number),
            ast::Value::Int(i) => i
                .as_str()
                .parse::<i64>()
                .map_or(Value::Null, |n| Value::Number(n.into())),
            ast::Value::Boolean(b) => Value::Bool(*b),
            ast::Value::List(items) => {
                Value::Array(items.iter().map(|v| self.resolve(v)).collect())
            }
            ast::Value::Object(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), self.resolve(v)))
                    .collect(),
            ),
        }
    }

    fn argument(&self, field: &Field, name: &str) -> Value {
        field
            .specified_argument_by_name(name)
            .map_or(Value::Null, |v| self.resolve(v))
    }

    fn subscription(&self, roots: &Grouped<'d>) -> Result<Operation, GraphqlError> {
        let [(key, group)] = roots.as_slice() else {
            return Err(GraphqlError::with_code(
                "a subscription must select exactly one root field",
                codes::VALIDATION_FAILED,
            ));
        };
        let Some(field) = group.first().filter(|f| f.name == "onOrderUpdated") else {
            return Err(GraphqlError::with_code(
                "a subscription must select `onOrderUpdated`",
                codes::VALIDATION_FAILED,
            ));
        };
        let bad =
            |message: String| located(message, codes::BAD_USER_INPUT, field.location(), self.doc);
        let filter = EventFilter {
            order_id: id_argument(&self.argument(field, "orderId")).map_err(bad)?,
            customer_id: id_argument(&self.argument(field, "customerId")).map_err(bad)?,
            partner_id: id_argument(&self.argument(field, "partnerId")).map_err(bad)?,
            statuses: status_argument(&self.argument(field, "status")).map_err(bad)?,
            expr: match self.argument(field, "filter") {
                Value::Null => None,
                value => Some(FilterExpr::from_json(&value).map_err(bad)?),
            },
            partnerless: false,
        };
        let after = id_argument(&self.argument(field, "after")).map_err(bad)?;
        let resync = match self.argument(field, "resync") {
            Value::Null => false,
            Value::Bool(resync) => resync,
            other => {
                return Err(bad(format!(
                    "Argument `resync`: expected a Boolean, got {other}"
                )));
            }
        };
        let fields = self.object_fields(group, true, "OrderEvent")?;
        let projection = Projection::new(
            "subscription",
            &[RootSelection::Object {
                key: key.to_string(),
                name: "onOrderUpdated",
                fields,
            }],
        );
        Ok(Operation::Subscription(SubscriptionSpec {
            filter,
            after,
            resync,
            projection: Arc::new(projection),
        }))
    }

    fn query(&self, roots: &Grouped<'d>) -> Result<Operation, GraphqlError> {
        let mut order_id = None;
        let mut selections = Vec::with_capacity(roots.len());
        for (key, group) in roots {
            let Some(field) = group.first() else { continue };
            match field.name.as_str() {
                "__typename" => selections.push(RootSelection::Typename {
                    key: key.to_string(),
                    type_name: "Query",
                }),
                "order" if order_id.is_none() => {
                    let id = id_argument(&self.argument(field, "orderId"))
                        .map_err(|m| located(m, codes::BAD_USER_INPUT, field.location(), self.doc))?
                        .ok_or_else(|| {
                            located(
                                "`orderId` is required".to_string(),
                                codes::BAD_USER_INPUT,
                                field.location(),
                                self.doc,
                            )
                        })?;
                    order_id = Some(id);
                    selections.push(RootSelection::Object {
                        key: key.to_string(),
                        name: "order",
                        fields: self.object_fields(group, false, "Order")?,
                    });
                }
                "order" => {
                    return Err(located(
                        "a query may select `order` only once".to_string(),
                        codes::VALIDATION_FAILED,
                        field.location(),
                        self.doc,
                    ));
                }
                other => {
                    return Err(located(
                        format!("`{other}` is not supported (no introspection)"),
                        codes::VALIDATION_FAILED,
                        field.location(),
                        self.doc,
                    ));
                }
            }
        }
        let Some(order_id) = order_id else {
            return Err(GraphqlError::with_code(
                "a query must select `order`",
                codes::VALIDATION_FAILED,
            ));
        };
        Ok(Operation::Query(OrderQuery {
            order_id,
            projection: Arc::new(Projection::new("query", &selections)),
        }))
    }

    /// The merged sub-selection of every field under one response key.
    fn object_fields(
        &self,
        group: &[&'d Node<Field>],
        event: bool,
        type_name: &'static str,
    ) -> Result<Vec<LeafSelection>, GraphqlError> {
        let sets: Vec<&'d SelectionSet> = group.iter().map(|f| &f.selection_set).collect();
        let grouped = self.collect_fields(&sets)?;
        grouped
            .into_iter()
            .map(|(key, fields)| {
                let name = fields.first().map_or("", |f| f.name.as_str());
                if name == "__typename" {
                    return Ok(LeafSelection::Typename {
                        key: key.to_string(),
                        type_name,
                    });
                }
                match leaf_by_name(name, event) {
                    Some(leaf) => Ok(LeafSelection::Value {
                        key: key.to_string(),
                        leaf,
                    }),
                    None => Err(GraphqlError::with_code(
                        format!("`{type_name}` has no field `{name}`"),
                        codes::VALIDATION_FAILED,
                    )),
                }
            })
            .collect()
    }
}

/// An `ID` argument: a string, or an integer written as one (GraphQL ID input coercion).
fn id_argument(value: &Value) -> Result<Option<String>, String> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
        other => Err(format!("expected an ID, found {other}")),
    }
}

fn status_argument(value: &Value) -> Result<Option<Vec<OrderStatus>>, String> {
    if value.is_null() {
        return Ok(None);
    }
    list_of(value)
        .iter()
        .map(|item| {
            item.as_str()
                .and_then(|name| {
                    OrderStatus::ALL
                        .into_iter()
                        .find(|s| status_enum_name(*s) == name)
                })
                .ok_or_else(|| format!("`{item}` is not an OrderStatus"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn json_from_apollo(value: &JsonValue) -> Value {
    match value {
        JsonValue::Null => Value::Null,
        JsonValue::Bool(b) => Value::Bool(*b),
        JsonValue::Number(n) => Value::Number(n.clone()),
        JsonValue::String(s) => Value::String(s.as_str().to_string()),
        JsonValue::Array(items) => Value::Array(items.iter().map(json_from_apollo).collect()),
        JsonValue::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.as_str().to_string(), json_from_apollo(v)))
                .collect(),
        ),
    }
}

fn diagnostics(list: &apollo_compiler::validation::DiagnosticList, code: &str) -> Errors {
    list.iter()
        .map(|d| error_from_apollo(d.to_json(), code))
        .collect()
}

fn error_from_apollo(error: apollo_compiler::response::GraphQLError, code: &str) -> GraphqlError {
    let mut out = GraphqlError::with_code(error.message, code);
    out.locations = error
        .locations
        .iter()
        .map(|lc| Location {
            line: lc.line,
            column: lc.column,
        })
        .collect();
    out
}

fn located(
    message: String,
    code: &str,
    span: Option<SourceSpan>,
    doc: &ExecutableDocument,
) -> GraphqlError {
    let mut error = GraphqlError::with_code(message, code);
    if let Some(lc) = span.and_then(|s| s.line_column(&doc.sources)) {
        error.locations.push(Location {
            line: lc.line,
            column: lc.column,
        });
    }
    error
}
