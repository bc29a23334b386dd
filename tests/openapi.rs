//! `GET /openapi.json` against the real binary: the served document lists exactly the routes
//! the node serves, a third-party validator (openapi-spec-validator) accepts it, and a client
//! generated from it by openapi-python-client runs the README quick start and then every other
//! route, every answer validated against the document (memory and Redis engines).

mod common;

use common::sink::{Answer, Sink};
use common::*;
use herald::server::{Roles, route_table};
use reqwest::StatusCode;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Runs a Python script of tests/clients to its end (bounded); its exit success and its
/// stdout's JSON lines.
async fn python(args: &[&str], limit: Duration) -> (bool, Vec<Value>, String) {
    let child = tokio::process::Command::new("python3")
        .args(args)
        .current_dir(clients_dir())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(limit, child)
        .await
        .unwrap_or_else(|_| panic!("python3 {args:?} did not finish within {limit:?}"))
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let lines = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (
        output.status.success(),
        lines,
        format!("{stdout}\n{stderr}"),
    )
}

async fn served_document(stack: &Stack) -> Value {
    let response = stack
        .http
        .get(stack.herald.url("/openapi.json"))
        .send()
        .await
        .expect("GET /openapi.json");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    response.json().await.expect("the document is JSON")
}

#[tokio::test]
async fn served_document_lists_exactly_the_served_routes() {
    let stack = Stack::start(Kind::Memory);
    // Served without credentials, like /healthz.
    let doc = served_document(&stack).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let served: BTreeSet<(String, String)> = route_table(Roles::ALL)
        .into_iter()
        .map(|(method, path)| (method.to_string(), path.to_string()))
        .collect();
    assert_eq!(
        served.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "served but not documented"
    );
    assert_eq!(
        documented.difference(&served).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented but not served"
    );
    // And every documented route answers something other than the fallback's 404 or 405.
    for (method, path) in &documented {
        let url = stack.herald.url(&path.replace(['{', '}'], ""));
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let response = stack
            .http
            .request(method.clone(), &url)
            .header("x-api-key", ADMIN_KEY)
            .send()
            .await
            .expect("request");
        let answer = response.status();
        // A Server-Sent Events stream never ends: its status is the answer (dropping the
        // response closes it).
        let streaming = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let body = if streaming {
            String::new()
        } else {
            response.text().await.unwrap_or_default()
        };
        let fallback = answer == StatusCode::METHOD_NOT_ALLOWED
            || (answer == StatusCode::NOT_FOUND && body.contains("No such resource."));
        assert!(!fallback, "{method} {path}: {answer} {body}");
    }
}

#[tokio::test]
async fn served_document_is_public_and_names_its_security_schemes() {
    let stack = Stack::start(Kind::Memory);
    let doc = served_document(&stack).await;
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["apiKey"]["type"], "apiKey");
    assert_eq!(schemes["apiKey"]["in"], "header");
    assert_eq!(schemes["apiKey"]["name"], "x-api-key");
    // Public routes override the document's security with none; the others answer 401 as
    // problem+json.
    assert_eq!(
        doc["paths"]["/healthz"]["get"]["security"],
        Value::Array(vec![])
    );
    assert_eq!(
        doc["paths"]["/openapi.json"]["get"]["security"],
        Value::Array(vec![])
    );
    let create = &doc["paths"]["/v1/orders"]["post"];
    assert!(create.get("security").is_none(), "{create}");
    assert_eq!(
        create["responses"]["401"]["content"]["application/problem+json"]["schema"]["$ref"],
        "#/components/schemas/Problem"
    );
    let anonymous = stack
        .http
        .post(stack.herald.url("/v1/orders"))
        .json(&order_body("o-anon", "c-1"))
        .send()
        .await
        .expect("POST /v1/orders");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn openapi_spec_validator_accepts_the_served_document() {
    let stack = Stack::start(Kind::Memory);
    let url = stack.herald.url("/openapi.json");
    let (ok, lines, output) = python(
        &["openapi_check.py", "--url", &url],
        Duration::from_secs(60),
    )
    .await;
    assert!(ok, "{output}");
    let result = lines.last().expect("a result line");
    assert_eq!(result["valid"], true, "{output}");
    assert_eq!(result["openapi"], "3.1.0");
    // The validator refuses a broken copy: it does validate.
    assert_eq!(result["brokenRefused"], true, "{output}");
    assert_eq!(
        result["paths"].as_u64(),
        Some(
            route_table(Roles::ALL)
                .iter()
                .map(|(_, path)| *path)
                .collect::<BTreeSet<_>>()
                .len() as u64
        )
    );
}

/// The README quick start through a client that openapi-python-client generates from the
/// served document; Herald's own view of the order must agree with what the client saw.
async fn generated_client_runs_the_quick_start(kind: Kind) {
    let stack = Stack::start(kind);
    let dir = tempfile::tempdir().expect("temp dir");
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let (ok, lines, output) = python(
        &[
            "openapi_quickstart.py",
            "--base-url",
            &stack.herald.base,
            "--key",
            ADMIN_KEY,
            "--dir",
            &dir_arg,
        ],
        Duration::from_secs(120),
    )
    .await;
    assert!(ok, "{output}\n{}", stack.herald.logs());
    let result = lines.last().expect("a result line");
    assert_eq!(result["ok"], true, "{output}");
    assert_eq!(
        result["statuses"],
        serde_json::json!(["accepted", "confirmed", "preparing"]),
        "{output}"
    );
    assert_eq!(
        result["eventTypes"],
        serde_json::json!(["order.accepted", "order.confirmed", "order.preparing"]),
        "{output}"
    );
    assert!(result["validated"].as_u64().unwrap_or(0) >= 12, "{output}");
    let order_id = result["orderId"].as_str().expect("an orderId");
    let status = stack.status(order_id).await.expect("the order exists");
    assert_eq!(status["status"], "preparing");
    assert_eq!(status["version"], 3);
    // The generated package is real code on disk.
    assert!(
        dir.path()
            .join("herald_openapi_client/api/orders/create_order.py")
            .exists()
    );
}

#[tokio::test]
async fn generated_python_client_runs_the_quick_start_memory() {
    generated_client_runs_the_quick_start(Kind::Memory).await;
}

#[tokio::test]
async fn generated_python_client_runs_the_quick_start_redis() {
    generated_client_runs_the_quick_start(Kind::Redis).await;
}

/// Every route the quick start does not reach, through the generated client, against a real
/// webhook sink (one path answering 200, one 500): each answer validated against the document.
async fn generated_client_reaches_every_other_route(kind: Kind) {
    let sink = Sink::start().await;
    sink.answer("/failing", Answer::Status(500));
    let stack = Stack::start_with(kind, WEBHOOKS_TOML);
    let dir = tempfile::tempdir().expect("temp dir");
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let (ok_url, failing_url) = (sink.url("/ok"), sink.url("/failing"));
    let (ok, lines, output) = python(
        &[
            "openapi_tour.py",
            "--base-url",
            &stack.herald.base,
            "--key",
            ADMIN_KEY,
            "--dir",
            &dir_arg,
            "--ok-url",
            &ok_url,
            "--failing-url",
            &failing_url,
        ],
        Duration::from_secs(120),
    )
    .await;
    assert!(ok, "{output}\n{}", stack.herald.logs());
    let result = lines.last().expect("a result line");
    assert_eq!(result["ok"], true, "{output}");
    // With the quick start's, the tour's operations are every route but the WebSocket
    // upgrade (and its alias), which no HTTP client can hold to a JSON schema.
    let reached: BTreeSet<String> = result["operations"]
        .as_array()
        .expect("operations")
        .iter()
        .filter_map(|o| o.as_str().map(str::to_string))
        .chain(
            [
                "GET /readyz",
                "GET /v1/orders/{order_id}",
                "GET /v1/orders/{order_id}/status",
                "POST /v1/orders/{order_id}/transitions",
                "GET /v1/events",
            ]
            .map(String::from),
        )
        .collect();
    let unreached: Vec<String> = route_table(Roles::ALL)
        .into_iter()
        .map(|(method, path)| format!("{method} {path}"))
        .filter(|route| !reached.contains(route) && !route.starts_with("GET /graphql"))
        .filter(|route| route != "POST /graphql/realtime")
        .collect();
    assert!(unreached.is_empty(), "not reached: {unreached:?}");
    assert!(!sink.received("/ok").is_empty());
    assert!(!sink.received("/failing").is_empty());
}

#[tokio::test]
async fn generated_python_client_reaches_every_other_route_memory() {
    generated_client_reaches_every_other_route(Kind::Memory).await;
}

#[tokio::test]
async fn generated_python_client_reaches_every_other_route_redis() {
    generated_client_reaches_every_other_route(Kind::Redis).await;
}
