//! Item 1: connection exhaustion by long-polls. `GET /v1/events?waitMs=` used to make one
//! blocking engine read per waiting request (on Redis a dedicated connection each, up to the
//! whole blocking pool, with no bound per credential). Now every waiting request is served
//! from one shared wait per node, and waiting requests are bounded per credential (429) and
//! per node (503), both problem+json with `Retry-After`.

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PER_NODE: usize = 50;
const PER_CREDENTIAL: usize = 20;
/// Long-polls opened by the first credential (phase 1), then by each of four others.
const FIRST: usize = 40;
const EACH_OTHER: usize = 65;
const WAIT_MS: u64 = 20_000;

/// One long-poll's answer.
struct Answer {
    who: &'static str,
    status: StatusCode,
    problem_json: bool,
    retry_after: bool,
    body: Value,
}

fn connected_clients(conn: &mut ::redis::Connection) -> Option<u64> {
    let info: String = ::redis::cmd("INFO").arg("clients").query(conn).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Samples Redis' `connected_clients` every 20 ms on its own connection until stopped; keeps
/// the largest value seen.
struct ClientSampler {
    stop: Arc<AtomicBool>,
    max: Arc<Mutex<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ClientSampler {
    fn start(mut conn: ::redis::Connection) -> ClientSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(Mutex::new(0));
        let thread = {
            let (stop, max) = (stop.clone(), max.clone());
            std::thread::spawn(move || {
                // Bounded: at most 60 s of samples whatever happens to the test.
                for _ in 0..3000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Some(n) = connected_clients(&mut conn) {
                        let mut max = max.lock().unwrap();
                        *max = (*max).max(n);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        ClientSampler {
            stop,
            max,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        *self.max.lock().unwrap()
    }
}

fn open_long_polls(
    stack: &Stack,
    http: &reqwest::Client,
    who: &'static str,
    credential: &str,
    n: usize,
    answers: &Arc<Mutex<Vec<Answer>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let request = http
                .get(
                    stack
                        .herald
                        .url(&format!("/v1/events?after=%24&limit=100&waitMs={WAIT_MS}")),
                )
                .header("authorization", format!("Bearer {credential}"));
            let answers = answers.clone();
            tokio::spawn(async move {
                let response = request.send().await.expect("long-poll request");
                let status = response.status();
                let headers = response.headers().clone();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                answers.lock().unwrap().push(Answer {
                    who,
                    status,
                    problem_json: headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.starts_with("application/problem+json")),
                    retry_after: headers
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .is_some_and(|s| s >= 1),
                    body,
                });
            })
        })
        .collect()
}

fn refused(answers: &Arc<Mutex<Vec<Answer>>>) -> usize {
    answers
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a.status != StatusCode::OK)
        .count()
}

/// Far more concurrent long-polls than the bounds, from five credentials: the excess is
/// refused at once (429 for a credential at its bound, 503 for the node at its), every refusal
/// problem+json with Retry-After; Redis' client count does not grow with the waiting requests;
/// intake answers 202 meanwhile; and the requests that wait get the event that arrives.
async fn long_polls_beyond_the_bounds_are_refused_and_hold_no_engine_connection(kind: Kind) {
    let toml = format!(
        "{}\n[http]\nlong_poll_max_waiting = {PER_NODE}\nlong_poll_max_waiting_per_credential = {PER_CREDENTIAL}\n",
        jwt_toml()
    );
    let stack = Stack::start_with(kind, &toml);
    // Every role has started its readers once before the baseline is taken.
    stack.order(ACME_KEY, "o-lp-warm", "c-1").await;
    let before = match &stack.redis {
        Some(redis) => {
            let mut conn = redis.conn();
            let mut most = 0;
            for _ in 0..15 {
                most = most.max(connected_clients(&mut conn).unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Some(most)
        }
        None => None,
    };
    let sampler = stack.redis.as_ref().map(|r| ClientSampler::start(r.conn()));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(40))
        .build()
        .unwrap();
    let answers = Arc::new(Mutex::new(Vec::new()));

    // Phase 1: one credential opens twice its bound.
    let mut tasks = open_long_polls(&stack, &http, "acme", ACME_KEY, FIRST, &answers);
    eventually(Duration::from_secs(20), "acme's excess refused", || async {
        (refused(&answers) == FIRST - PER_CREDENTIAL
            && stack.metric("herald_long_polls_waiting").await == PER_CREDENTIAL as u64)
            .then_some(())
    })
    .await;
    // Phase 2: four more credentials, 65 each, until the node is full.
    let c1 = customer_token("c-1", 600);
    let c2 = customer_token("c-2", 600);
    for (who, credential) in [
        ("admin", ADMIN_KEY),
        ("globex", GLOBEX_KEY),
        ("c-1", c1.as_str()),
        ("c-2", c2.as_str()),
    ] {
        tasks.extend(open_long_polls(
            &stack, &http, who, credential, EACH_OTHER, &answers,
        ));
    }
    let opened = FIRST + 4 * EACH_OTHER;
    eventually(Duration::from_secs(20), "the excess refused", || async {
        (refused(&answers) == opened - PER_NODE
            && stack.metric("herald_long_polls_waiting").await == PER_NODE as u64)
            .then_some(())
    })
    .await;

    // While the node holds its bound of waiting requests: intake answers, and a read that does
    // not wait is not a long-poll (acme is at its bound, yet is answered).
    let started = Instant::now();
    let r = stack
        .post("/v1/orders", ACME_KEY, &order_body("o-lp-1", "c-1"))
        .await;
    let intake_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
    let r = stack.get("/v1/events?after=%24&waitMs=0", ACME_KEY).await;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "a read without wait is answered"
    );

    for task in tasks {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("every long-poll answers")
            .expect("long-poll task");
    }
    let max_during = sampler.map(ClientSampler::finish);
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    assert_eq!(answers.len(), opened);

    let too_many = answers
        .iter()
        .filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
        .count();
    let node_full = answers
        .iter()
        .filter(|a| a.status == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    let refusals: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status != StatusCode::OK)
        .collect();
    let badly_refused = refusals
        .iter()
        .filter(|a| {
            let typed = matches!(
                a.body["type"].as_str(),
                Some("/problems/too-many-long-polls" | "/problems/long-polls-full")
            );
            !(a.problem_json && a.retry_after && typed)
        })
        .count();
    let waited: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .collect();
    assert_eq!(too_many + node_full, opened - PER_NODE, "only 429 or 503");
    assert!(
        too_many >= FIRST - PER_CREDENTIAL,
        "{too_many} answered 429"
    );
    assert!(node_full >= 1, "{node_full} answered 503");
    assert_eq!(
        badly_refused, 0,
        "every refusal is problem+json with Retry-After"
    );
    assert_eq!(waited.len(), PER_NODE);
    let acme_waiting = waited.iter().filter(|a| a.who == "acme").count();
    assert_eq!(acme_waiting, PER_CREDENTIAL, "acme held its bound");
    for who in ["admin", "globex", "c-1", "c-2"] {
        let n = waited.iter().filter(|a| a.who == who).count();
        assert!(n <= PER_CREDENTIAL, "{who} held {n}");
    }
    // The waiting requests that may read acme's order got its event.
    let got_it = |a: &&&Answer| {
        a.body["events"]
            .as_array()
            .is_some_and(|events| events.iter().any(|e| e["orderId"] == "o-lp-1"))
    };
    let could_see: Vec<&&Answer> = waited
        .iter()
        .filter(|a| a.who == "acme" || a.who == "admin")
        .collect();
    let missed = could_see.iter().filter(|a| !got_it(a)).count();
    assert_eq!(
        missed, 0,
        "every waiting reader of acme's orders got the event"
    );
    assert_eq!(stack.metric("herald_long_polls_waiting").await, 0);
    let metrics = stack.get("/metrics", ADMIN_KEY).await.text().await.unwrap();
    let series = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(u64::MAX)
    };
    assert_eq!(
        series("herald_long_polls_refused_total{limit=\"credential\"} "),
        too_many as u64
    );
    assert_eq!(
        series("herald_long_polls_refused_total{limit=\"node\"} "),
        node_full as u64
    );
    // The waiting requests took no Redis connection: the node's one watcher, and a little room
    // for a blocking reader of the worker or the dispatcher opening one more at intake (without
    // the shared wait, each waiting request held one, up to the whole blocking pool: 32).
    if let (Some(before), Some(during)) = (before, max_during) {
        assert!(
            during <= before + 3,
            "Redis clients grew from {before} to {during} with {PER_NODE} long-polls waiting"
        );
    }

    crate::figures(
        1,
        "long_polls_beyond_the_bounds_are_refused_and_hold_no_engine_connection",
        json!({
            "engine": format!("{kind:?}").to_lowercase(),
            "opened": opened,
            "credentials": 5,
            "bound_per_node": PER_NODE,
            "bound_per_credential": PER_CREDENTIAL,
            "waited": waited.len(),
            "refused_429": too_many,
            "refused_503": node_full,
            "refusals_without_problem_json_or_retry_after": badly_refused,
            "redis_clients_before": before,
            "redis_clients_max_during": max_during,
            "intake_status": 202,
            "intake_ms": (intake_ms * 10.0).round() / 10.0,
            "waiting_readers_of_the_order": could_see.len(),
            "missed_event": missed,
        }),
    );
}

on_both_engines!(
    long_polls_beyond_the_bounds_are_refused_and_hold_no_engine_connection,
    a_partners_long_poll_waits_through_other_partners_events,
);

/// A long-poll answers when there is something its caller may see: another partner's events
/// move its cursor on, and it goes on waiting instead of answering `{events: []}` at once (which
/// made every partner's long-poll a tight poll on a busy node).
async fn a_partners_long_poll_waits_through_other_partners_events(kind: Kind) {
    let s = Stack::start(kind);
    let url = s.herald.url("/v1/events?after=$&waitMs=20000");
    let http = s.http.clone();
    let poll = tokio::spawn(async move {
        let r = http
            .get(url)
            .header("x-api-key", ACME_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<Value>().await.unwrap()
    });
    eventually(Duration::from_secs(10), "the long-poll waits", || async {
        (s.metric("herald_long_polls_waiting").await == 1).then_some(())
    })
    .await;
    // Globex's order makes two events (accepted, confirmed) acme may not see.
    s.order(GLOBEX_KEY, "lp-globex-1", "cust-g").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waited_through = !poll.is_finished();
    assert!(
        waited_through,
        "acme's long-poll answered on globex's events"
    );
    let r = s
        .post("/v1/orders", ACME_KEY, &order_body("lp-acme-1", "cust-a"))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let body = poll.await.unwrap();
    let events = body["events"].as_array().cloned().unwrap_or_default();
    assert!(!events.is_empty(), "{body}");
    let foreign = events
        .iter()
        .filter(|e| e["orderId"] != "lp-acme-1" || e["partnerId"] != "acme")
        .count();
    assert_eq!(foreign, 0, "{body}");
    crate::figures(
        1,
        &format!("a_partners_long_poll_waits_through_other_partners_events/{kind:?}"),
        json!({
            "engine": format!("{kind:?}"), "foreignEventsAppended": 2,
            "answeredOnForeignEvents": usize::from(!waited_through),
            "ownEventsReceived": events.len(), "foreignEventsReceived": foreign,
        }),
    );
}
