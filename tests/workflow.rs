//! Workflow orchestration end to end (issue 13): the real binary running
//! `config/workflow-example.toml` itself (its service URLs pointed at a service the test runs,
//! its long durations made short) on both engines: retries at their configured intervals with
//! one `Idempotency-Key` per series, catchers, the payment callback's token (once only) and its
//! auto-cancel timer, the delivery wait, every step's status change pushed to subscribers and
//! webhooks, and (Redis with AOF) Herald SIGKILLed during a task call, a callback wait and a
//! wait timer.
//!
//! The service is a real loopback HTTP server answering on command per path (a JSON answer, a
//! hang past the request timeout, or a held answer released by the test) and recording every
//! call with its headers and body (the callback's task token included).

mod common;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode as AxumStatus;
use axum::response::{IntoResponse, Response};
use common::sink::Sink;
use common::ws::*;
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

on_both_engines!(
    retries_follow_the_configured_intervals_with_one_idempotency_key,
    a_warehouse_that_keeps_failing_is_caught_as_cancelled,
    a_warehouse_that_hangs_times_out_and_is_caught_as_cancelled,
    a_reservation_refused_takes_the_default,
    an_order_moved_on_stops_its_retries,
    an_unpaid_order_is_cancelled_by_the_timer,
    a_callback_token_moves_the_order_on_once,
    a_failure_callback_rejects_the_order,
    a_payment_refused_rejects_the_order_without_retries,
    a_callback_before_the_calls_answer_is_taken,
    a_call_failing_after_its_callback_came_back_does_not_undo_it,
    a_retried_callback_hands_out_a_new_token_that_completes_it,
    heartbeats_keep_a_callback_waiting_and_their_absence_times_it_out,
    a_shipped_order_is_delivered_after_the_wait,
    an_order_moved_on_before_the_wait_is_not_touched,
    subscriptions_and_webhooks_see_every_step,
);

// ---------------------------------------------------------------------------------------------
// The service the workflow calls.

/// One call the service received.
#[derive(Clone, Debug)]
struct Call {
    path: String,
    at: Instant,
    headers: HashMap<String, String>,
    body: Value,
}

impl Call {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

/// How the service answers a call.
#[derive(Clone, Debug)]
enum Reply {
    Json(u16, Value),
    /// Never answers within any request timeout of the example.
    Hang,
    /// Answers 200 with this body once the test opens the gate ([`Service::release`]).
    Held(Value),
    /// Completes the call's task token with success (`POST {herald}/v1/tasks/{token}/success`,
    /// admin key) before answering 200: a payment service that charges at once.
    CallbackFirst,
    /// The same, then answers this status instead (a service that charged, then failed).
    CallbackFirstThen(u16),
}

#[derive(Default)]
struct ServiceState {
    calls: Mutex<Vec<Call>>,
    /// Per path: the answers in turn; the last one stays.
    script: Mutex<HashMap<String, VecDeque<Reply>>>,
    gate: Mutex<Option<watch::Receiver<bool>>>,
    /// Herald's base URL, for [`Reply::CallbackFirst`].
    herald: Mutex<Option<String>>,
    /// What Herald answered each [`Reply::CallbackFirst`] completion.
    callback_answers: Mutex<Vec<u16>>,
}

struct Service {
    addr: SocketAddr,
    state: Arc<ServiceState>,
    gate: watch::Sender<bool>,
}

impl Service {
    async fn start() -> Service {
        let (gate, open) = watch::channel(false);
        let state = Arc::new(ServiceState::default());
        *state.gate.lock().unwrap() = Some(open);
        let app = Router::new().fallback(serve).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Service { addr, state, gate }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The answers for `path`, in turn (the last one stays).
    fn script(&self, path: &str, replies: Vec<Reply>) {
        assert!(!replies.is_empty());
        self.state
            .script
            .lock()
            .unwrap()
            .insert(path.to_string(), replies.into());
    }

    /// Where [`Reply::CallbackFirst`] calls back.
    fn call_back_to(&self, herald: &Herald) {
        *self.state.herald.lock().unwrap() = Some(herald.base.clone());
    }

    fn callback_answers(&self) -> Vec<u16> {
        self.state.callback_answers.lock().unwrap().clone()
    }

    /// Lets every held call answer.
    fn release(&self) {
        let _ = self.gate.send(true);
    }

    fn calls(&self, path: &str) -> Vec<Call> {
        self.state
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.path == path)
            .cloned()
            .collect()
    }

    async fn wait_calls(&self, path: &str, n: usize) -> Vec<Call> {
        eventually(
            Duration::from_secs(20),
            &format!("{n} calls on {path}"),
            || async {
                let calls = self.calls(path);
                (calls.len() >= n).then_some(calls)
            },
        )
        .await
    }

    /// The payment call for `order_id` (the payments path carries no order id).
    async fn payment(&self, order_id: &str) -> Call {
        eventually(
            Duration::from_secs(20),
            &format!("the payment call of {order_id}"),
            || async {
                self.calls("/payments")
                    .into_iter()
                    .find(|c| c.body["orderId"] == order_id)
            },
        )
        .await
    }

    async fn task_token(&self, order_id: &str) -> String {
        let call = self.payment(order_id).await;
        call.body["taskToken"]
            .as_str()
            .expect("the payment call carries the task token")
            .to_string()
    }
}

async fn serve(State(state): State<Arc<ServiceState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let at = Instant::now();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = parts.uri.path().to_string();
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    state.calls.lock().unwrap().push(Call {
        path: path.clone(),
        at,
        headers,
        body: body.clone(),
    });
    let reply = {
        let mut script = state.script.lock().unwrap();
        match script.get_mut(&path) {
            Some(replies) if replies.len() > 1 => replies.pop_front(),
            Some(replies) => replies.front().cloned(),
            None => None,
        }
    }
    .unwrap_or(Reply::Json(200, json!({"ok": true})));
    match reply {
        Reply::Json(code, body) => {
            (AxumStatus::from_u16(code).unwrap(), axum::Json(body)).into_response()
        }
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            (AxumStatus::OK, axum::Json(json!({"late": true}))).into_response()
        }
        Reply::CallbackFirst | Reply::CallbackFirstThen(_) => {
            let herald = state.herald.lock().unwrap().clone().expect("call_back_to");
            let token = body["taskToken"].as_str().unwrap_or("");
            let r = client()
                .post(format!("{herald}/v1/tasks/{token}/success"))
                .header("x-api-key", ADMIN_KEY)
                .json(&json!({"paymentId": "instant"}))
                .send()
                .await
                .expect("the callback");
            state
                .callback_answers
                .lock()
                .unwrap()
                .push(r.status().as_u16());
            let code = match reply {
                Reply::CallbackFirstThen(code) => AxumStatus::from_u16(code).unwrap(),
                _ => AxumStatus::OK,
            };
            (code, axum::Json(json!({"charged": true}))).into_response()
        }
        Reply::Held(body) => {
            let gate = state.gate.lock().unwrap().clone();
            if let Some(mut gate) = gate {
                let _ = gate.wait_for(|open| *open).await;
            }
            (AxumStatus::OK, axum::Json(body)).into_response()
        }
    }
}

fn reserved() -> Reply {
    Reply::Json(200, json!({"reserved": true}))
}

fn reservations(order_id: &str) -> String {
    format!("/reservations/{order_id}")
}

// ---------------------------------------------------------------------------------------------
// The example workflow, made short.

/// The example's durations, as the test sets them.
#[derive(Clone, Copy)]
struct Timings {
    /// payment's `callback_timeout` (15m in the example).
    callback_timeout: &'static str,
    /// delivery's `after` (14d).
    after: &'static str,
    /// both retriers' `interval` (1s).
    interval: &'static str,
    /// warehouse's request `timeout` (2s).
    warehouse_timeout: &'static str,
}

const SHORT: Timings = Timings {
    callback_timeout: "30s",
    after: "1s",
    interval: "300ms",
    warehouse_timeout: "2s",
};

/// The retriers' interval and backoff rate as [`SHORT`] and the example set them.
const INTERVAL: Duration = Duration::from_millis(300);
const BACKOFF_RATE: u32 = 2;

const TOKEN_SECRET: &str = "workflow-test-task-token-secret-0000000000000001";

/// Replaces `from` in `text`, `count` times exactly (so a change to the example that the
/// test no longer matches fails here, not as a silently untested example).
fn replace(text: &str, from: &str, to: &str, count: usize) -> String {
    assert_eq!(
        text.matches(from).count(),
        count,
        "config/workflow-example.toml no longer holds `{from}` {count} time(s)"
    );
    text.replace(from, to)
}

/// `config/workflow-example.toml` pointed at `service`, with `t`'s durations.
fn example(service: &Service, t: Timings) -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/workflow-example.toml"
    ))
    .expect("config/workflow-example.toml");
    let base = service.base();
    let edits = [
        ("http://127.0.0.1:9401".to_string(), base.clone(), 1),
        ("http://127.0.0.1:9402".to_string(), base, 1),
        (
            "callback_timeout = \"15m\"".to_string(),
            format!("callback_timeout = \"{}\"", t.callback_timeout),
            1,
        ),
        (
            "after = \"14d\"".to_string(),
            format!("after = \"{}\"", t.after),
            1,
        ),
        (
            "interval = \"1s\"".to_string(),
            format!("interval = \"{}\"", t.interval),
            2,
        ),
        (
            "backoff_rate = 2.0".to_string(),
            format!("backoff_rate = {BACKOFF_RATE}.0"),
            2,
        ),
        (
            "timeout = \"2s\"".to_string(),
            format!("timeout = \"{}\"", t.warehouse_timeout),
            1,
        ),
    ];
    edits.iter().fold(text, |text, (from, to, count)| {
        replace(&text, from, to, *count)
    })
}

/// Herald's environment: on Redis the token secret the example asks for there.
fn env(kind: Kind) -> Vec<(String, String)> {
    match kind {
        Kind::Redis => vec![(
            "HERALD_WORKFLOW__TASK_TOKEN_SECRET".into(),
            TOKEN_SECRET.into(),
        )],
        Kind::Memory => Vec::new(),
    }
}

/// A Herald running the example against `service` (plus `extra` TOML).
fn start(kind: Kind, service: &Service, t: Timings, extra: &str) -> Stack {
    let redis = (kind == Kind::Redis).then(|| RedisServer::start(true));
    let herald = Herald::start(options(kind, redis.as_ref(), service, t, extra));
    Stack {
        herald,
        redis,
        http: client(),
    }
}

fn options(
    kind: Kind,
    redis: Option<&RedisServer>,
    service: &Service,
    t: Timings,
    extra: &str,
) -> HeraldOptions {
    HeraldOptions {
        redis_url: redis.map(|r| r.url()),
        extra_toml: format!("{}\n{extra}", example(service, t)),
        env: env(kind),
        ..HeraldOptions::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

async fn create(s: &Stack, order_id: &str) {
    let r = s
        .post("/v1/orders", ADMIN_KEY, &order_body(order_id, "cust-1"))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
}

async fn order(s: &Stack, order_id: &str) -> Value {
    let r = s.get(&format!("/v1/orders/{order_id}"), ADMIN_KEY).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// The order's step records.
async fn steps(s: &Stack, order_id: &str) -> Vec<Value> {
    order(s, order_id).await["steps"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The types of the records of the step of `status`, in order.
fn kinds(steps: &[Value], status: &str) -> Vec<String> {
    steps
        .iter()
        .filter(|r| r["status"] == status)
        .map(|r| r["type"].as_str().unwrap_or("").to_string())
        .collect()
}

fn count(kinds: &[String], kind: &str) -> usize {
    kinds.iter().filter(|k| *k == kind).count()
}

/// Waits until the order's history holds a record of `kind` for the step of `status`;
/// returns it.
async fn wait_for_step(s: &Stack, order_id: &str, status: &str, kind: &str) -> Value {
    eventually(
        Duration::from_secs(20),
        &format!("a {kind} record of the {status} step on {order_id}"),
        || async {
            steps(s, order_id)
                .await
                .into_iter()
                .find(|r| r["type"] == kind && r["status"] == status)
        },
    )
    .await
}

async fn complete(
    s: &Stack,
    token: &str,
    outcome: &str,
    key: &str,
    body: Value,
) -> reqwest::Response {
    s.http
        .post(s.herald.url(&format!("/v1/tasks/{token}/{outcome}")))
        .header("authorization", format!("Bearer {key}"))
        .json(&body)
        .send()
        .await
        .expect("request")
}

/// Waits until the order's history holds `status` at `version` (it may have moved on since:
/// a status with a step can be left within milliseconds).
async fn reached(s: &Stack, order_id: &str, status: &str, version: u64) {
    eventually(
        Duration::from_secs(20),
        &format!("order {order_id} through {status} v{version}"),
        || async {
            let order = order(s, order_id).await;
            order["history"]
                .as_array()?
                .iter()
                .any(|h| h["status"] == status && h["version"] == version)
                .then_some(())
        },
    )
    .await
}

/// The payment service calls back with success; the order is then confirmed (v2).
async fn pay(s: &Stack, service: &Service, order_id: &str) {
    let token = service.task_token(order_id).await;
    // The token opens its wait once Herald recorded the payment call's answer.
    wait_for_step(s, order_id, "accepted", "callbackSent").await;
    let r = complete(
        s,
        &token,
        "success",
        ADMIN_KEY,
        json!({"paymentId": "pay-1"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
    reached(s, order_id, "confirmed", 2).await;
}

async fn transition(s: &Stack, order_id: &str, status: &str, version: u64) {
    let r = s
        .post(
            &format!("/v1/orders/{order_id}/transitions"),
            ADMIN_KEY,
            &json!({ "status": status }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
    s.wait_for_status(order_id, status, version).await;
}

/// Through the flow to `shipped` (v4): paid, reserved (the service's default here), shipped.
async fn to_shipped(s: &Stack, service: &Service, order_id: &str) {
    service.script(&reservations(order_id), vec![reserved()]);
    create(s, order_id).await;
    pay(s, service, order_id).await;
    s.wait_for_status(order_id, "preparing", 3).await;
    transition(s, order_id, "shipped", 4).await;
}

/// Nothing queued, in flight or on a timer.
async fn wait_idle(s: &Stack) {
    eventually(
        Duration::from_secs(20),
        "an idle queue and no timers",
        || async {
            let q = s.queue().await;
            (q["commands"]["visible"] == 0
                && q["commands"]["inFlight"] == 0
                && q["workflowTimers"] == 0)
                .then_some(())
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Tests.

async fn retries_follow_the_configured_intervals_with_one_idempotency_key(kind: Kind) {
    let service = Service::start().await;
    let s = start(kind, &service, SHORT, "");
    let path = reservations("retry-1");
    service.script(
        &path,
        vec![
            Reply::Json(500, json!({"error": "busy"})),
            Reply::Json(500, json!({"error": "busy"})),
            reserved(),
        ],
    );
    create(&s, "retry-1").await;
    pay(&s, &service, "retry-1").await;
    s.wait_for_status("retry-1", "preparing", 3).await;

    let calls = service.calls(&path);
    assert_eq!(calls.len(), 3, "500, 500, then 200: three calls");
    // Never early: retry n waits interval * backoff_rate^(n-1) (jitter none for the warehouse).
    let first_gap = calls[1].at - calls[0].at;
    let second_gap = calls[2].at - calls[1].at;
    assert!(first_gap >= INTERVAL, "first retry after {first_gap:?}");
    assert!(
        second_gap >= INTERVAL * BACKOFF_RATE,
        "second retry after {second_gap:?}"
    );
    let key = calls[0].header("idempotency-key");
    assert!(!key.is_empty(), "the call carries an Idempotency-Key");
    for (i, call) in calls.iter().enumerate() {
        assert_eq!(call.header("idempotency-key"), key, "one key per series");
        assert_eq!(call.header("herald-attempt"), (i + 1).to_string());
        assert_eq!(call.body["attempt"], i as u64 + 1, "the body's {{attempt}}");
        assert_eq!(call.body["orderId"], "retry-1");
        assert_eq!(call.body["items"][0]["sku"], "sku-1");
    }

    let steps = steps(&s, "retry-1").await;
    let warehouse = kinds(&steps, "confirmed");
    assert_eq!(count(&warehouse, "taskFailed"), 2, "{warehouse:?}");
    assert_eq!(count(&warehouse, "retryScheduled"), 2, "{warehouse:?}");
    assert_eq!(count(&warehouse, "taskSucceeded"), 1, "{warehouse:?}");
    let chosen = steps
        .iter()
        .find(|r| r["type"] == "transitionChosen" && r["status"] == "confirmed")
        .expect("a transitionChosen record");
    assert_eq!(chosen["next"], "preparing");
}

async fn a_warehouse_that_keeps_failing_is_caught_as_cancelled(kind: Kind) {
    let service = Service::start().await;
    let s = start(kind, &service, SHORT, "");
    let path = reservations("fail-1");
    service.script(&path, vec![Reply::Json(500, json!({"error": "down"}))]);
    create(&s, "fail-1").await;
    pay(&s, &service, "fail-1").await;
    s.wait_for_status("fail-1", "cancelled", 3).await;

    // The first attempt and max_attempts (3) retries, each at least its delay after the last.
    let calls = service.calls(&path);
    assert_eq!(calls.len(), 4);
    let mut delay = INTERVAL;
    for pair in calls.windows(2) {
        assert!(pair[1].at - pair[0].at >= delay, "a retry came early");
        delay *= BACKOFF_RATE;
    }
    let steps = steps(&s, "fail-1").await;
    let warehouse = kinds(&steps, "confirmed");
    assert_eq!(count(&warehouse, "taskFailed"), 4, "{warehouse:?}");
    assert_eq!(count(&warehouse, "retryScheduled"), 3, "{warehouse:?}");
    let caught = steps
        .iter()
        .find(|r| r["type"] == "caught")
        .expect("a caught record");
    assert_eq!(
        (&caught["error"], &caught["next"]),
        (&json!("5xx"), &json!("cancelled"))
    );
    for failed in steps.iter().filter(|r| r["type"] == "taskFailed") {
        assert_eq!(failed["error"], "5xx");
        assert_eq!(failed["statusCode"], 500);
    }
    let history = order(&s, "fail-1").await["history"].clone();
    let last = history.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["status"], "cancelled");
}

async fn a_warehouse_that_hangs_times_out_and_is_caught_as_cancelled(kind: Kind) {
    let service = Service::start().await;
    let t = Timings {
        warehouse_timeout: "400ms",
        ..SHORT
    };
    let s = start(kind, &service, t, "");
    let path = reservations("hang-1");
    service.script(&path, vec![Reply::Hang]);
    create(&s, "hang-1").await;
    pay(&s, &service, "hang-1").await;
    s.wait_for_status("hang-1", "cancelled", 3).await;

    assert_eq!(service.calls(&path).len(), 4);
    let steps = steps(&s, "hang-1").await;
    let failed: Vec<&Value> = steps.iter().filter(|r| r["type"] == "taskFailed").collect();
    assert_eq!(failed.len(), 4);
    assert!(failed.iter().all(|r| r["error"] == "timeout"), "{failed:?}");
    let caught = steps.iter().find(|r| r["type"] == "caught").unwrap();
    assert_eq!(
        (&caught["error"], &caught["next"]),
        (&json!("timeout"), &json!("cancelled"))
    );
}

async fn a_reservation_refused_takes_the_default(kind: Kind) {
    let service = Service::start().await;
    let s = start(kind, &service, SHORT, "");
    let path = reservations("nostock-1");
    service.script(&path, vec![Reply::Json(200, json!({"reserved": false}))]);
    create(&s, "nostock-1").await;
    pay(&s, &service, "nostock-1").await;
    s.wait_for_status("nostock-1", "cancelled", 3).await;
    assert_eq!(service.calls(&path).len(), 1, "an answer is not retried");
    let steps = steps(&s, "nostock-1").await;
    let chosen = steps
        .iter()
        .find(|r| r["type"] == "transitionChosen" && r["status"] == "confirmed")
        .unwrap();
    assert_eq!(
        (&chosen["next"], &chosen["detail"]),
        (&json!("cancelled"), &json!("default"))
    );
}

/// A command moving the order on while its task is retried ends the series: the retries
/// left are acknowledged without a call.
async fn an_order_moved_on_stops_its_retries(kind: Kind) {
    let service = Service::start().await;
    let t = Timings {
        callback_timeout: "3s",
        ..SHORT
    };
    let s = start(kind, &service, t, "");
    let path = reservations("stop-1");
    service.script(&path, vec![Reply::Json(503, json!({"error": "down"}))]);
    create(&s, "stop-1").await;
    pay(&s, &service, "stop-1").await;
    wait_for_step(&s, "stop-1", "confirmed", "retryScheduled").await;
    transition(&s, "stop-1", "cancelled", 3).await;
    let calls = service.calls(&path).len();
    assert!(
        calls < 4,
        "the order was cancelled before the retries were spent"
    );
    // Every timer (the retries, the payment's timeout) has fired or gone.
    wait_idle(&s).await;
    assert_eq!(
        service.calls(&path).len(),
        calls,
        "a retry called out after the cancel"
    );
    let status = s.status("stop-1").await.unwrap();
    assert_eq!(
        (&status["status"], &status["version"]),
        (&json!("cancelled"), &json!(3))
    );
    assert!(
        !steps(&s, "stop-1")
            .await
            .iter()
            .any(|r| r["type"] == "caught")
    );
}

async fn an_unpaid_order_is_cancelled_by_the_timer(kind: Kind) {
    let service = Service::start().await;
    let t = Timings {
        callback_timeout: "1500ms",
        ..SHORT
    };
    let s = start(kind, &service, t, "");
    create(&s, "unpaid-1").await;
    let token = service.task_token("unpaid-1").await;
    s.wait_for_status("unpaid-1", "cancelled", 2).await;

    let steps = steps(&s, "unpaid-1").await;
    let payment = kinds(&steps, "accepted");
    for kind in ["callbackSent", "waitStarted", "callbackTimedOut", "caught"] {
        assert!(payment.contains(&kind.to_string()), "{kind} in {payment:?}");
    }
    let caught = steps.iter().find(|r| r["type"] == "caught").unwrap();
    assert_eq!(
        (&caught["error"], &caught["next"]),
        (&json!("timedOut"), &json!("cancelled"))
    );
    assert_eq!(service.calls("/payments").len(), 1);
    // The timer won: the token is spent.
    let r = complete(&s, &token, "success", ADMIN_KEY, json!({})).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(s.status("unpaid-1").await.unwrap()["status"], "cancelled");
}

async fn a_callback_token_moves_the_order_on_once(kind: Kind) {
    let service = Service::start().await;
    let s = start(kind, &service, SHORT, &jwt_toml());
    service.script(&reservations("cb-1"), vec![reserved()]);
    create(&s, "cb-1").await;
    create(&s, "cb-2").await;

    let call = service.payment("cb-1").await;
    assert_eq!(call.header("x-merchant"), "herald-example");
    assert!(call.header("user-agent").starts_with("Herald-Workflow/"));
    assert_eq!(call.header("herald-attempt"), "1");
    assert!(!call.header("idempotency-key").is_empty());
    assert_eq!(call.body["customerId"], "cust-1");
    assert_eq!(call.body["currency"], "USD");
    assert_eq!(call.body["items"][0]["quantity"], 2);
    let token = call.body["taskToken"].as_str().unwrap().to_string();
    wait_for_step(&s, "cb-1", "accepted", "callbackSent").await;

    // Refused before anything is queued: customers, forged tokens, other partners.
    let customer = customer_token("cust-1", 300);
    let r = complete(&s, &token, "success", &customer, json!({})).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // One character of the signature changed (not the last: it carries padding bits).
    let mut forged: Vec<char> = token.chars().collect();
    let i = forged.len() - 5;
    forged[i] = if forged[i] == 'A' { 'B' } else { 'A' };
    let forged: String = forged.into_iter().collect();
    let r = complete(&s, &forged, "success", ADMIN_KEY, json!({})).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let other = service.task_token("cb-2").await;
    let swapped = token.replacen(
        token.split('.').nth(1).unwrap(),
        other.split('.').nth(1).unwrap(),
        1,
    );
    let r = complete(&s, &swapped, "success", ADMIN_KEY, json!({})).await;
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "a token's order cannot be swapped"
    );
    let r = complete(&s, &token, "success", ACME_KEY, json!({})).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "not acme's order");
    assert_eq!(s.status("cb-1").await.unwrap()["status"], "accepted");
    // The steps name services and their answers: never shown to customers.
    let r = s.get("/v1/orders/cb-1", &customer).await;
    assert_eq!(r.status(), StatusCode::OK);
    let seen: Value = r.json().await.unwrap();
    assert!(seen.get("steps").is_none(), "{seen}");
    assert!(
        !order(&s, "cb-1").await["steps"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let r = complete(
        &s,
        &token,
        "success",
        ADMIN_KEY,
        json!({"paymentId": "p-1"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (&body["orderId"], &body["outcome"]),
        (&json!("cb-1"), &json!("success"))
    );
    reached(&s, "cb-1", "confirmed", 2).await;
    // Then the warehouse task runs.
    s.wait_for_status("cb-1", "preparing", 3).await;
    assert_eq!(service.calls(&reservations("cb-1")).len(), 1);

    let r = complete(
        &s,
        &token,
        "success",
        ADMIN_KEY,
        json!({"paymentId": "p-1"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["status"], 409);
    let r = complete(&s, &token, "failure", ADMIN_KEY, json!({})).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(s.status("cb-1").await.unwrap()["version"], 3);
    // An order moved on by a command: its token is spent too.
    let r = s
        .post(
            "/v1/orders/cb-2/transitions",
            ADMIN_KEY,
            &json!({"status": "confirmed"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    reached(&s, "cb-2", "confirmed", 2).await;
    let r = complete(&s, &other, "success", ADMIN_KEY, json!({})).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);

    let steps = steps(&s, "cb-1").await;
    let succeeded = steps
        .iter()
        .find(|r| r["type"] == "callbackSucceeded")
        .expect("a callbackSucceeded record");
    assert_eq!(succeeded["response"]["paymentId"], "p-1");
    assert_eq!(count(&kinds(&steps, "accepted"), "callbackSucceeded"), 1);
}

/// The order's partner (acme) completes its own order's token.
async fn a_failure_callback_rejects_the_order(kind: Kind) {
    let service = Service::start().await;
    let s = start(kind, &service, SHORT, "");
    let r = s
        .post("/v1/orders", ACME_KEY, &order_body("declined-1", "cust-1"))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
    let token = service.task_token("declined-1").await;
    wait_for_step(&s, "declined-1", "accepted", "callbackSent").await;
    let r = complete(&s, &token, "failure", GLOBEX_KEY, json!({})).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "another partner's order");
    let r = complete(&s, &token, "failure", ACME_KEY, json!({"extra": 1})).await;
    assert_eq!(
        r.status(),
        StatusCode::BAD_REQUEST,
        "a failure holds error and cause only"
    );
    let r = complete(
        &s,
        &token,
        "failure",
        ACME_KEY,
        json!({"error": "declined", "cause": "insufficient funds"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
    s.wait_for_status("declined-1", "rejected", 2).await;
    let steps = steps(&s, "declined-1").await;
    let failed = steps
        .iter()
        .find(|r| r["type"] == "callbackFailed")
        .unwrap();
    assert_eq!(failed["detail"], "declined");
    let caught = steps.iter().find(|r| r["type"] == "caught").unwrap();
    assert_eq!(
        (&caught["error"], &caught["next"]),
        (&json!("callback"), &json!("rejected"))
    );
    assert!(service.calls(&reservations("declined-1")).is_empty());
}

/// A service may complete the token as soon as it has it, before its answer to the call is
/// back at Herald (a card charged at once): the token is valid from the moment it is sent
/// (Step Functions' `.waitForTaskToken`), so the callback is taken and the order moves on.
async fn a_callback_before_the_calls_answer_is_taken(kind: Kind) {
    let service = Service::start().await;
    let t = Timings {
        callback_timeout: "3s",
        ..SHORT
    };
    let s = start(kind, &service, t, "");
    service.call_back_to(&s.herald);
    service.script("/payments", vec![Reply::CallbackFirst]);
    service.script(&reservations("instant-1"), vec![reserved()]);
    create(&s, "instant-1").await;
    service.payment("instant-1").await;
    eventually(
        Duration::from_secs(20),
        "the service's callback",
        || async { (!service.callback_answers().is_empty()).then_some(()) },
    )
    .await;
    assert_eq!(
        service.callback_answers(),
        [202],
        "the token was refused while its call was in flight"
    );
    s.wait_for_status("instant-1", "preparing", 3).await;
    // Once, still: the call's answer, recorded after the callback, does not open it again.
    let token = service.task_token("instant-1").await;
    let r = complete(&s, &token, "success", ADMIN_KEY, json!({})).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let steps = steps(&s, "instant-1").await;
    let payment = kinds(&steps, "accepted");
    assert_eq!(count(&payment, "callbackSent"), 1, "{payment:?}");
    assert_eq!(count(&payment, "callbackSucceeded"), 1, "{payment:?}");
    assert_eq!(service.calls("/payments").len(), 1);
}

/// A callback that came back while its call was failing decides: the call's failure (here a
/// 500 after the charge) goes on record, and neither retries nor is caught over the payment.
async fn a_call_failing_after_its_callback_came_back_does_not_undo_it(kind: Kind) {
    let service = Service::start().await;
    let s = start(kind, &service, SHORT, "");
    service.call_back_to(&s.herald);
    service.script("/payments", vec![Reply::CallbackFirstThen(500)]);
    service.script(&reservations("charged-1"), vec![reserved()]);
    create(&s, "charged-1").await;
    s.wait_for_status("charged-1", "preparing", 3).await;
    assert_eq!(service.callback_answers(), [202]);
    let steps = steps(&s, "charged-1").await;
    let payment = kinds(&steps, "accepted");
    assert_eq!(count(&payment, "retryScheduled"), 0, "{payment:?}");
    assert_eq!(count(&payment, "caught"), 0, "{payment:?}");
    assert_eq!(count(&payment, "callbackSucceeded"), 1, "{payment:?}");
    assert_eq!(service.calls("/payments").len(), 1);
}

/// A callback step that retries its own failure (a retrier naming `callback`) calls again
/// with a new token; the old one no longer completes anything, the new one does.
async fn a_retried_callback_hands_out_a_new_token_that_completes_it(kind: Kind) {
    let service = Service::start().await;
    let retry = "[[workflow.steps.accepted.retry]]\nerrors = [\"callback\"]\ninterval = \"200ms\"\nmax_attempts = 1\n";
    let s = start(kind, &service, SHORT, retry);
    create(&s, "again-1").await;
    let first = service.task_token("again-1").await;
    wait_for_step(&s, "again-1", "accepted", "callbackSent").await;
    let r = complete(
        &s,
        &first,
        "failure",
        ADMIN_KEY,
        json!({"error": "3ds timeout"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
    let calls = service.wait_calls("/payments", 2).await;
    assert!(calls[1].at - calls[0].at >= Duration::from_millis(200));
    assert_eq!(calls[1].header("herald-attempt"), "2");
    assert_eq!(
        calls[1].header("idempotency-key"),
        calls[0].header("idempotency-key")
    );
    let second = calls[1].body["taskToken"].as_str().unwrap().to_string();
    assert_ne!(second, first, "a new attempt hands out a new token");
    let r = complete(&s, &first, "success", ADMIN_KEY, json!({})).await;
    assert_eq!(
        r.status(),
        StatusCode::CONFLICT,
        "the first attempt's token is spent"
    );
    let r = complete(
        &s,
        &second,
        "success",
        ADMIN_KEY,
        json!({"paymentId": "p2"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
    reached(&s, "again-1", "confirmed", 2).await;
}

/// With a `heartbeat`, the service must say it is at work at least that often: heartbeats
/// keep the step waiting past its interval; when they stop, it fails as `heartbeatTimedOut`
/// (caught as cancelled by the example).
async fn heartbeats_keep_a_callback_waiting_and_their_absence_times_it_out(kind: Kind) {
    let service = Service::start().await;
    let redis = (kind == Kind::Redis).then(|| RedisServer::start(true));
    let mut options = options(kind, redis.as_ref(), &service, SHORT, "");
    options.env.push((
        "HERALD_WORKFLOW__STEPS__ACCEPTED__HEARTBEAT".into(),
        "700ms".into(),
    ));
    let s = Stack {
        herald: Herald::start(options),
        redis,
        http: client(),
    };
    create(&s, "beat-1").await;
    let token = service.task_token("beat-1").await;
    wait_for_step(&s, "beat-1", "accepted", "callbackSent").await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let r = complete(&s, &token, "heartbeat", ADMIN_KEY, json!({})).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
    }
    // 1.5 s after the answer, twice the heartbeat interval: still waiting.
    assert_eq!(s.status("beat-1").await.unwrap()["status"], "accepted");
    s.wait_for_status("beat-1", "cancelled", 2).await;
    let steps = steps(&s, "beat-1").await;
    let caught = steps.iter().find(|r| r["type"] == "caught").unwrap();
    assert_eq!(caught["error"], "heartbeatTimedOut");
    let r = complete(&s, &token, "heartbeat", ADMIN_KEY, json!({})).await;
    assert_eq!(
        r.status(),
        StatusCode::CONFLICT,
        "no heartbeat once the step is over"
    );
    let r = complete(&s, &token, "heartbeat", ACME_KEY, json!({})).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "not acme's order");
}

/// The service refusing the request (4xx: no retrier names it): the catch-all rejects, and
/// no token comes back to wait for.
async fn a_payment_refused_rejects_the_order_without_retries(kind: Kind) {
    let service = Service::start().await;
    let s = start(kind, &service, SHORT, "");
    service.script(
        "/payments",
        vec![Reply::Json(422, json!({"error": "bad card"}))],
    );
    create(&s, "refused-1").await;
    let token = service.task_token("refused-1").await;
    s.wait_for_status("refused-1", "rejected", 2).await;
    assert_eq!(service.calls("/payments").len(), 1);
    let steps = steps(&s, "refused-1").await;
    let failed = steps.iter().find(|r| r["type"] == "taskFailed").unwrap();
    assert_eq!(
        (&failed["error"], &failed["statusCode"]),
        (&json!("4xx"), &json!(422))
    );
    let caught = steps.iter().find(|r| r["type"] == "caught").unwrap();
    assert_eq!(
        (&caught["error"], &caught["next"]),
        (&json!("4xx"), &json!("rejected"))
    );
    let r = complete(&s, &token, "success", ADMIN_KEY, json!({})).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
}

async fn a_shipped_order_is_delivered_after_the_wait(kind: Kind) {
    let service = Service::start().await;
    let s = start(kind, &service, SHORT, "");
    to_shipped(&s, &service, "ship-1").await;
    let started = wait_for_step(&s, "ship-1", "shipped", "waitStarted").await;
    assert_eq!(started["status"], "shipped");
    assert!(started["dueAt"].is_string());
    s.wait_for_status("ship-1", "delivered", 5).await;
    let steps = steps(&s, "ship-1").await;
    let elapsed = steps.iter().find(|r| r["type"] == "waitElapsed").unwrap();
    assert_eq!(elapsed["next"], "delivered");
}

async fn an_order_moved_on_before_the_wait_is_not_touched(kind: Kind) {
    let service = Service::start().await;
    let t = Timings {
        after: "3s",
        callback_timeout: "3s",
        ..SHORT
    };
    let s = start(kind, &service, t, "");
    to_shipped(&s, &service, "early-1").await;
    wait_for_step(&s, "early-1", "shipped", "waitStarted").await;
    transition(&s, "early-1", "delivered", 5).await;
    // Every timer (the payment's timeout, the delivery wait) has fired or gone, and every
    // command ran.
    wait_idle(&s).await;
    let status = s.status("early-1").await.unwrap();
    assert_eq!(
        (&status["status"], &status["version"]),
        (&json!("delivered"), &json!(5))
    );
    let steps = steps(&s, "early-1").await;
    assert!(
        !steps.iter().any(|r| r["type"] == "waitElapsed"),
        "{steps:?}"
    );
    let delivered = s
        .events()
        .await
        .into_iter()
        .filter(|e| e["orderId"] == "early-1" && e["status"] == "delivered")
        .count();
    assert_eq!(delivered, 1);
}

async fn subscriptions_and_webhooks_see_every_step(kind: Kind) {
    let service = Service::start().await;
    let sink = Sink::start().await;
    let s = start(kind, &service, SHORT, WEBHOOKS_TOML);
    let r = s
        .post(
            "/v1/webhooks",
            ADMIN_KEY,
            &json!({"url": sink.url("/hook")}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let mut ws = connect(&s.herald, "graphql-transport-ws").await;
    init(&mut ws, ADMIN_KEY).await;
    // From the log's start, so the subscription sees every event whenever it is registered.
    send(
        &mut ws,
        sub(
            "1",
            "subscription { onOrderUpdated(orderId: \"flow-1\", after: \"0-0\") { orderId status previousStatus version } }",
        ),
    )
    .await;
    service.script(&reservations("flow-1"), vec![reserved()]);
    create(&s, "flow-1").await;
    pay(&s, &service, "flow-1").await;
    s.wait_for_status("flow-1", "preparing", 3).await;

    let mut seen = Vec::new();
    for _ in 0..3 {
        let m = next(&mut ws).await;
        assert_eq!((&m["type"], &m["id"]), (&json!("next"), &json!("1")), "{m}");
        let e = &m["payload"]["data"]["onOrderUpdated"];
        assert_eq!(e["orderId"], "flow-1");
        seen.push((
            e["status"].as_str().unwrap().to_string(),
            e["version"].as_u64().unwrap(),
        ));
    }
    assert_eq!(
        seen,
        [
            ("ACCEPTED".into(), 1),
            ("CONFIRMED".into(), 2),
            ("PREPARING".into(), 3)
        ]
    );

    let deliveries = sink.wait_for("/hook", 3).await;
    let types: Vec<(String, u64)> = deliveries
        .iter()
        .map(|d| {
            let body: Value = serde_json::from_str(&d.body).unwrap();
            assert_eq!(body["data"]["orderId"], "flow-1");
            (
                body["type"].as_str().unwrap().to_string(),
                body["data"]["version"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut sorted = types.clone();
    sorted.sort_by_key(|t| t.1);
    assert_eq!(
        sorted,
        [
            ("order.accepted".into(), 1),
            ("order.confirmed".into(), 2),
            ("order.preparing".into(), 3)
        ],
        "{types:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Durability: Redis with AOF, Herald SIGKILLed and started again on the same Redis.

mod durability {
    use super::*;

    const VISIBILITY: Duration = Duration::from_secs(2);

    fn queue_toml() -> String {
        format!(
            "[queue]\nvisibility_timeout = \"{}ms\"\n",
            VISIBILITY.as_millis()
        )
    }

    /// SIGKILLs the stack's Herald and starts another on the same Redis with the same config.
    fn restart(s: &mut Stack, service: &Service, t: Timings) {
        s.herald.kill9();
        s.herald = Herald::start(options(
            Kind::Redis,
            s.redis.as_ref(),
            service,
            t,
            &queue_toml(),
        ));
    }

    #[tokio::test]
    async fn killed_during_a_task_call_the_order_still_reaches_preparing_once() {
        let service = Service::start().await;
        let s = &mut start(Kind::Redis, &service, SHORT, &queue_toml());
        let path = reservations("kill-task-1");
        service.script(
            &path,
            vec![Reply::Held(json!({"reserved": true})), reserved()],
        );
        create(s, "kill-task-1").await;
        pay(s, &service, "kill-task-1").await;
        service.wait_calls(&path, 1).await;
        restart(s, &service, SHORT);
        // The held call answers now, to a Herald that is gone.
        service.release();
        s.wait_for_status("kill-task-1", "preparing", 3).await;

        let steps = steps(s, "kill-task-1").await;
        let warehouse = kinds(&steps, "confirmed");
        assert_eq!(count(&warehouse, "taskSucceeded"), 1, "{warehouse:?}");
        assert_eq!(count(&warehouse, "taskFailed"), 0, "{warehouse:?}");
        // Nothing more for the series once Herald recorded the success: past another
        // visibility timeout (a redelivery would come by then) and with the queue idle.
        let settled = Instant::now();
        tokio::time::sleep(VISIBILITY + Duration::from_millis(500)).await;
        eventually(Duration::from_secs(20), "an idle queue", || async {
            let q = s.queue().await;
            (q["commands"]["visible"] == 0 && q["commands"]["inFlight"] == 0).then_some(())
        })
        .await;
        let calls = service.calls(&path);
        assert_eq!(
            calls.len(),
            2,
            "the call cut by the kill and its redelivery, nothing after the success"
        );
        assert!(calls.iter().all(|c| c.at < settled));
        let key = calls[0].header("idempotency-key");
        for call in &calls {
            assert_eq!(call.header("idempotency-key"), key);
            assert_eq!(
                call.header("herald-attempt"),
                "1",
                "a redelivery is the same attempt"
            );
        }
    }

    /// The payment call cut by the kill is made again (same key, same attempt, same token),
    /// and the token, open since the order entered the step, works meanwhile.
    #[tokio::test]
    async fn killed_during_a_callback_call_the_call_is_made_again_and_the_token_works() {
        let service = Service::start().await;
        let s = &mut start(Kind::Redis, &service, SHORT, &queue_toml());
        service.script(
            "/payments",
            vec![
                Reply::Held(json!({"ok": true})),
                Reply::Json(200, json!({"ok": true})),
            ],
        );
        service.script(&reservations("kill-call-1"), vec![reserved()]);
        create(s, "kill-call-1").await;
        let token = service.task_token("kill-call-1").await;
        restart(s, &service, SHORT);
        service.release();
        let r = complete(s, &token, "success", ADMIN_KEY, json!({"paymentId": "p-3"})).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
        s.wait_for_status("kill-call-1", "preparing", 3).await;

        let calls = service.calls("/payments");
        assert_eq!(calls.len(), 2, "the cut call and its redelivery");
        for call in &calls {
            assert_eq!(
                call.header("idempotency-key"),
                calls[0].header("idempotency-key")
            );
            assert_eq!(call.header("herald-attempt"), "1");
            assert_eq!(call.body["taskToken"], token.as_str());
        }
        let steps = steps(s, "kill-call-1").await;
        let payment = kinds(&steps, "accepted");
        assert_eq!(count(&payment, "callbackSent"), 1, "{payment:?}");
        assert_eq!(count(&payment, "callbackSucceeded"), 1, "{payment:?}");
    }

    #[tokio::test]
    async fn killed_during_a_callback_wait_the_token_and_the_timeout_still_work() {
        let service = Service::start().await;
        let t = Timings {
            callback_timeout: "6s",
            ..SHORT
        };
        let s = &mut start(Kind::Redis, &service, t, &queue_toml());
        service.script(&reservations("kill-cb-1"), vec![reserved()]);
        create(s, "kill-cb-1").await;
        create(s, "kill-cb-2").await;
        let token = service.task_token("kill-cb-1").await;
        wait_for_step(s, "kill-cb-1", "accepted", "callbackSent").await;
        wait_for_step(s, "kill-cb-2", "accepted", "callbackSent").await;
        restart(s, &service, t);

        let r = complete(s, &token, "success", ADMIN_KEY, json!({"paymentId": "p-9"})).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
        s.wait_for_status("kill-cb-1", "preparing", 3).await;
        s.wait_for_status("kill-cb-2", "cancelled", 2).await;
        assert_eq!(
            service.calls("/payments").len(),
            2,
            "no payment is created twice"
        );
    }

    #[tokio::test]
    async fn killed_during_a_wait_the_timer_still_fires() {
        let service = Service::start().await;
        let t = Timings {
            after: "2s",
            ..SHORT
        };
        let s = &mut start(Kind::Redis, &service, t, &queue_toml());
        to_shipped(s, &service, "kill-wait-1").await;
        wait_for_step(s, "kill-wait-1", "shipped", "waitStarted").await;
        restart(s, &service, t);
        s.wait_for_status("kill-wait-1", "delivered", 5).await;
        let steps = steps(s, "kill-wait-1").await;
        assert_eq!(count(&kinds(&steps, "shipped"), "waitElapsed"), 1);
    }
}
