//! Redis durability: orders accepted (202) while Redis is SIGKILLed and restarted from its
//! append-only file, under each `appendfsync` policy. Every accepted order must be found
//! afterwards, and must reach its final status. The figures go to RELIABILITY.md
//! (`scripts/reliability.sh`); the intake rate each policy costs is measured by
//! `loadtest/scenarios/intake.sh` (`FSYNC="everysec always"`), not here.
//!
//! What a process crash cannot show: with `everysec`, Redis has written each change to the
//! kernel before it answers, so a crash of Redis alone loses nothing; what `everysec` can lose
//! is up to the last second of writes when the machine itself stops (power, kernel). Only
//! `appendfsync always` closes that window.

mod common;

use common::*;
use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;

/// Seconds of closed-loop intake before the crash, and clients.
fn profile() -> (Duration, usize) {
    match std::env::var("RELIABILITY_PROFILE").as_deref() {
        Ok("long") => (Duration::from_secs(20), 16),
        _ => (Duration::from_secs(2), 8),
    }
}

struct Ledger {
    accepted: Mutex<Vec<String>>,
    count: AtomicU64,
}

/// Closed-loop clients posting orders until `stop`; every 202 goes into the ledger.
fn spawn_clients(
    base: &str,
    prefix: &str,
    clients: usize,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let url = format!("{base}/v1/orders");
            let prefix = format!("{prefix}-{c}");
            let (ledger, stop) = (ledger.clone(), stop.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .expect("http client");
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let id = format!("{prefix}-{n}");
                    let answer = http
                        .post(&url)
                        .header("x-api-key", ADMIN_KEY)
                        .json(&order_body(&id, &format!("cust-{c}")))
                        .send()
                        .await;
                    match answer {
                        Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED => {
                            ledger.accepted.lock().await.push(id);
                            ledger.count.fetch_add(1, Ordering::Relaxed);
                        }
                        // Refused while Redis is down (503): not accepted, not in the ledger.
                        Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
            })
        })
        .collect()
}

async fn crash_run(appendfsync: &'static str) -> serde_json::Value {
    let (measure, clients) = profile();
    let mut redis = RedisServer::start_fsync(true, appendfsync);
    let herald = Herald::start(HeraldOptions {
        redis_url: Some(redis.url()),
        ..HeraldOptions::default()
    });
    let http = client();
    let ledger = Arc::new(Ledger {
        accepted: Mutex::new(Vec::new()),
        count: AtomicU64::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = spawn_clients(
        &herald.base,
        &format!("dur-{appendfsync}"),
        clients,
        ledger.clone(),
        stop.clone(),
    );

    tokio::time::sleep(measure).await;

    // Crash Redis while orders are in flight, bring it back from its AOF, keep sending.
    redis.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Nothing can be accepted while Redis is down: what the ledger holds now was accepted
    // before the crash (answers already on their way included).
    let before_crash = ledger.count.load(Ordering::Relaxed);
    redis.start_again();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("client task");
    }
    let accepted = ledger.accepted.lock().await.clone();
    let after_restart = accepted.len() as u64 - before_crash;
    assert!(
        after_restart > 0,
        "no order was accepted after Redis came back"
    );

    // Every order that got a 202 exists and reaches its final status.
    let checks = futures_util::stream::iter(accepted.iter().cloned())
        .map(|id| {
            let (http, url) = (http.clone(), herald.url(&format!("/v1/orders/{id}/status")));
            async move {
                let found = eventually(Duration::from_secs(60), "a final status", || {
                    let (http, url) = (http.clone(), url.clone());
                    async move {
                        let r = http
                            .get(&url)
                            .header("x-api-key", ADMIN_KEY)
                            .send()
                            .await
                            .ok()?;
                        match r.status().as_u16() {
                            404 => Some(false),
                            200 => {
                                let v: serde_json::Value = r.json().await.ok()?;
                                (v["status"] == "confirmed").then_some(true)
                            }
                            _ => None, // reconnecting
                        }
                    }
                })
                .await;
                (!found).then_some(id)
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let lost: Vec<String> = checks.into_iter().flatten().collect();
    assert!(
        lost.is_empty(),
        "appendfsync {appendfsync}: {} of {} accepted orders lost after a Redis SIGKILL: {:?}",
        lost.len(),
        accepted.len(),
        &lost[..lost.len().min(10)]
    );
    serde_json::json!({
        "appendfsync": appendfsync,
        "clients": clients,
        "accepted": accepted.len(),
        "accepted_after_restart": after_restart,
        "redis_kills": 1,
        "lost": lost.len(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accepted_orders_survive_a_redis_crash_under_each_fsync_policy() {
    let always = crash_run("always").await;
    let everysec = crash_run("everysec").await;
    println!(
        "SUITE-FIGURES {}",
        serde_json::json!({
            "suite": "durability",
            "test": "accepted_orders_survive_a_redis_crash_under_each_fsync_policy",
            "profile": std::env::var("RELIABILITY_PROFILE").unwrap_or_else(|_| "short".into()),
            "runs": [always, everysec],
        })
    );
}
