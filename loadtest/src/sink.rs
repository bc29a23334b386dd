//! The webhook sink: an HTTP/1.1 keep-alive server on loopback that receives deliveries the way
//! a partner would, and measures them.
//!
//! Every request is verified ([`crate::signing`]) before anything else counts it; one that does
//! not verify is answered 401 and counted as invalid, never as a delivery. A verified request
//! is matched to its `webhook-id` (deliveries are counted per distinct id, so an at-least-once
//! repeat is a repeat, not a second delivery) and to the marks the load tool put in the event's
//! `data` (`t`: publish time in Unix ns, `seq`).
//!
//! Behaviour on the first attempt of each id, chosen by a hash of the id so the share is exact
//! over many ids and the same id always gets the same treatment:
//! - `fail_percent` of them are answered 500: Herald schedules a retry, and the sink measures
//!   how late it comes ([`retry_lateness_ns`]);
//! - `stall_percent` more are held for `stall_for` before the 200 (a slow partner);
//! - the rest are answered 200 at once.
//!
//! Later attempts of an id are always answered 200.
//!
//! A scenario that needs more than the marks (`e2e` matches deliveries to its orders) sets an
//! [`Observer`]: it sees every verified request.

use crate::publish::{self, Window};
use crate::signing::{self, Invalid, Key};
use crate::stats::SharedHistogram;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;

/// Id-state and latency shards, so concurrent requests rarely meet on one lock.
const SHARDS: usize = 32;

/// What the sink does with first attempts.
#[derive(Clone, Copy, Debug)]
pub struct Behaviour {
    /// Percent of first attempts answered 500.
    pub fail_percent: f64,
    /// Percent of first attempts (besides the failed ones) answered 200 after `stall_for`.
    pub stall_percent: f64,
    pub stall_for: Duration,
    /// The sender's wait after a failed first attempt (Herald's `retry_schedule[1]`, run with
    /// `jitter = 0`): the due time of the retry is the 500's time plus this.
    pub retry_step: Duration,
}

/// The treatment of a first attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Treatment {
    Fail,
    Stall,
    Accept,
}

impl Behaviour {
    pub fn treatment(&self, webhook_id: &str) -> Treatment {
        let p = share_point(webhook_id);
        if p < self.fail_percent {
            Treatment::Fail
        } else if p < self.fail_percent + self.stall_percent {
            Treatment::Stall
        } else {
            Treatment::Accept
        }
    }
}

/// Where an id falls in [0, 100): FNV-1a of the id, in hundredths of a percent.
pub fn share_point(id: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % 10_000) as f64 / 100.0
}

/// How late a retry arrived, in signed nanoseconds: its arrival minus its due time, the due
/// time being the moment the sink answered the failed first attempt plus the schedule step.
///
/// Why that is the due time: Herald's sender (`src/webhooks/sender.rs`, `attempt`) reads the
/// whole response, then computes the retry with `retry::outcome(.., now_millis(), ..)`, i.e.
/// `due = now_ms_after_the_response + retry_schedule[1] * (1 +- jitter)`, and stores it with
/// the attempt. With `jitter = 0` the only unknown is that `now`: it is a little after the
/// sink's answer (loopback transfer, Herald reading the empty body, its own scheduling), and
/// whole milliseconds (rounded down). So this measure is at most 1 ms below Herald's true
/// lateness, and above it by the time Herald takes to take note of the answer; it is charged
/// to Herald, never hidden. The arrival is when the request head reached the sink, so the
/// lateness includes everything the sender does after the due time: noticing it, claiming
/// the delivery, reading the endpoint, signing and sending.
pub fn retry_lateness_ns(failed_at_ns: u64, step: Duration, arrived_ns: u64) -> i64 {
    let due = i128::from(failed_at_ns) + step.as_nanos() as i128;
    (i128::from(arrived_ns) - due).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// A retry more than this early means the schedule is not what `retry_step` says (jitter on,
/// or another step): counted, so the report cannot look better than it is.
const EARLY_TOLERANCE_NS: i64 = 1_000_000;

#[derive(Default)]
struct IdState {
    attempts: u32,
    /// When the sink answered 500 to the first attempt (Unix ns).
    failed_at_ns: Option<u64>,
    succeeded: bool,
}

/// Every count the sink keeps. Atomics: requests on all worker threads update them.
#[derive(Default)]
pub struct SinkCounts {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    pub verified: AtomicU64,
    pub invalid_signature: AtomicU64,
    pub invalid_timestamp: AtomicU64,
    /// Without `webhook-id`, `webhook-timestamp` or `webhook-signature`, or before the sink
    /// knew its secret.
    pub unverifiable: AtomicU64,
    /// Verified, but without the load tool's marks in `data.data`.
    pub unmarked: AtomicU64,
    pub body_bytes: AtomicU64,
    /// Distinct webhook-ids seen.
    pub distinct: AtomicU64,
    /// Distinct ids whose event was published inside the measured window.
    pub measured: AtomicU64,
    /// Distinct ids answered 2xx (at whichever attempt).
    pub succeeded: AtomicU64,
    /// Of those, the ones whose 2xx was given inside the measured window.
    pub succeeded_in_window: AtomicU64,
    /// Verified requests that arrived inside the measured window.
    pub requests_in_window: AtomicU64,
    pub failed_on_purpose: AtomicU64,
    pub stalled: AtomicU64,
    /// Second attempts of ids failed on purpose.
    pub retries: AtomicU64,
    /// Failed on purpose and not yet retried, now and at most.
    pub pending_retries: AtomicU64,
    pub peak_pending_retries: AtomicU64,
    /// Attempts of an id after it was answered 2xx (at-least-once repeats).
    pub repeats: AtomicU64,
    /// Retries that came more than 1 ms before their due time.
    pub early_retries: AtomicU64,
    pub min_lateness_ns: AtomicI64,
}

impl SinkCounts {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Called with the body of every verified request and the instant its head arrived.
pub type Observer = Box<dyn Fn(&[u8], std::time::Instant) + Send + Sync>;

pub struct WebhookSink {
    key: OnceLock<Key>,
    observer: OnceLock<Observer>,
    behaviour: Behaviour,
    window: OnceLock<Window>,
    ids: Vec<Mutex<HashMap<String, IdState>>>,
    latency: Vec<SharedHistogram>,
    lateness: SharedHistogram,
    pub counts: SinkCounts,
}

#[derive(Deserialize)]
struct BodyMarks {
    data: EventMarks,
}

#[derive(Deserialize)]
struct EventMarks {
    data: Option<Marks>,
}

#[derive(Deserialize)]
struct Marks {
    t: u64,
}

fn add(c: &AtomicU64, n: u64) -> u64 {
    c.fetch_add(n, Ordering::Relaxed) + n
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

impl WebhookSink {
    pub fn new(behaviour: Behaviour) -> Arc<WebhookSink> {
        let counts = SinkCounts {
            min_lateness_ns: AtomicI64::new(i64::MAX),
            ..SinkCounts::default()
        };
        Arc::new(WebhookSink {
            key: OnceLock::new(),
            observer: OnceLock::new(),
            behaviour,
            window: OnceLock::new(),
            ids: (0..SHARDS).map(|_| Mutex::default()).collect(),
            latency: (0..SHARDS).map(|_| SharedHistogram::default()).collect(),
            lateness: SharedHistogram::default(),
            counts,
        })
    }

    /// The endpoint secret (`whsec_...`) deliveries must be signed with. Set once, before any
    /// event is published.
    pub fn set_secret(&self, secret: &str) -> anyhow::Result<()> {
        let key = Key::parse(secret).map_err(anyhow::Error::msg)?;
        let _ = self.key.set(key);
        Ok(())
    }

    /// Sets the observer of verified requests. Set once, before any event is published.
    pub fn set_observer(&self, observer: Observer) {
        let _ = self.observer.set(observer);
    }

    pub fn set_window(&self, w: Window) {
        let _ = self.window.set(w);
    }

    /// Publish -> receive latency of first attempts of events published in the window.
    pub fn latency(&self) -> Option<crate::stats::LatencySummary> {
        crate::stats::LatencySummary::from_histogram(&self.latency_histogram())
    }

    /// The samples behind [`Self::latency`].
    pub fn latency_histogram(&self) -> hdrhistogram::Histogram<u64> {
        crate::stats::merge_shards(&self.latency)
    }

    /// Retry lateness (negative values recorded as 0; see `early_retries`).
    pub fn lateness(&self) -> Option<crate::stats::LatencySummary> {
        self.lateness.summary()
    }

    /// The samples behind [`Self::lateness`].
    pub fn lateness_histogram(&self) -> hdrhistogram::Histogram<u64> {
        self.lateness.snapshot()
    }

    /// The p99 publish -> receive latency so far (one shard: good enough for progress).
    pub fn latency_p99_hint(&self) -> Option<f64> {
        self.latency[0].quantile_ms(0.99)
    }

    /// Binds `listen` and serves until the process ends. Returns the bound address.
    pub async fn serve(self: &Arc<Self>, listen: &str) -> anyhow::Result<SocketAddr> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let sink = self.clone();
        tokio::spawn(async move {
            loop {
                let tcp = match listener.accept().await {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        eprintln!("sink: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                add(&sink.counts.connections, 1);
                let sink = sink.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let sink = sink.clone();
                        async move { Ok::<_, Infallible>(sink.handle(req).await) }
                    });
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Ok(addr)
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let arrived_ns = publish::unix_nanos();
        let arrived = std::time::Instant::now();
        add(&self.counts.requests, 1);
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (id, ts, sig) = (
            header("webhook-id"),
            header("webhook-timestamp"),
            header("webhook-signature"),
        );
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return empty(StatusCode::BAD_REQUEST),
        };
        let (Some(id), Some(ts), Some(sig), Some(key)) = (id, ts, sig, self.key.get()) else {
            add(&self.counts.unverifiable, 1);
            return empty(StatusCode::UNAUTHORIZED);
        };
        match signing::verify(key, &id, &ts, &body, &sig, arrived_ns / 1_000_000_000) {
            Ok(()) => {}
            Err(Invalid::Signature) => {
                add(&self.counts.invalid_signature, 1);
                return empty(StatusCode::UNAUTHORIZED);
            }
            Err(Invalid::Timestamp) => {
                add(&self.counts.invalid_timestamp, 1);
                return empty(StatusCode::UNAUTHORIZED);
            }
        }
        add(&self.counts.verified, 1);
        add(&self.counts.body_bytes, body.len() as u64);
        if let Some(observe) = self.observer.get() {
            observe(&body, arrived);
        }
        let window = self.window.get().copied();
        let in_window = window.is_some_and(|w| w.contains(arrived_ns));
        if in_window {
            add(&self.counts.requests_in_window, 1);
        }
        let published_ns = serde_json::from_slice::<BodyMarks>(&body)
            .ok()
            .and_then(|b| b.data.data)
            .map(|m| m.t);
        if published_ns.is_none() {
            add(&self.counts.unmarked, 1);
        }

        let shard = share_index(&id);
        let first = self.behaviour.treatment(&id);
        let answer = {
            let mut ids = self.ids[shard].lock().unwrap_or_else(|e| e.into_inner());
            let state = ids.entry(id).or_default();
            state.attempts += 1;
            if state.attempts == 1 {
                add(&self.counts.distinct, 1);
                if let (Some(t), Some(w)) = (published_ns, window)
                    && w.contains(t)
                {
                    add(&self.counts.measured, 1);
                    self.latency[shard].record(Duration::from_nanos(arrived_ns.saturating_sub(t)));
                }
                if first == Treatment::Fail {
                    // Taken as late as possible, right before the 500 goes out.
                    state.failed_at_ns = Some(publish::unix_nanos());
                    add(&self.counts.failed_on_purpose, 1);
                    let pending = add(&self.counts.pending_retries, 1);
                    self.counts
                        .peak_pending_retries
                        .fetch_max(pending, Ordering::Relaxed);
                } else {
                    state.succeeded = true;
                }
                first
            } else if state.succeeded {
                add(&self.counts.repeats, 1);
                return empty(StatusCode::OK);
            } else {
                if let Some(failed_at) = state.failed_at_ns.filter(|_| state.attempts == 2) {
                    add(&self.counts.retries, 1);
                    self.counts.pending_retries.fetch_sub(1, Ordering::Relaxed);
                    self.record_lateness(retry_lateness_ns(
                        failed_at,
                        self.behaviour.retry_step,
                        arrived_ns,
                    ));
                }
                state.succeeded = true;
                Treatment::Accept
            }
        };
        match answer {
            Treatment::Fail => empty(StatusCode::INTERNAL_SERVER_ERROR),
            Treatment::Stall => {
                add(&self.counts.stalled, 1);
                tokio::time::sleep(self.behaviour.stall_for).await;
                self.count_success(publish::unix_nanos());
                empty(StatusCode::OK)
            }
            Treatment::Accept => {
                self.count_success(arrived_ns);
                empty(StatusCode::OK)
            }
        }
    }

    fn count_success(&self, at_ns: u64) {
        add(&self.counts.succeeded, 1);
        if self.window.get().is_some_and(|w| w.contains(at_ns)) {
            add(&self.counts.succeeded_in_window, 1);
        }
    }

    fn record_lateness(&self, ns: i64) {
        self.counts.min_lateness_ns.fetch_min(ns, Ordering::Relaxed);
        if ns < -EARLY_TOLERANCE_NS {
            add(&self.counts.early_retries, 1);
        }
        self.lateness
            .record(Duration::from_nanos(u64::try_from(ns).unwrap_or(0)));
    }
}

fn share_index(id: &str) -> usize {
    (share_point(id) * 100.0) as usize % SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn lateness_is_arrival_minus_the_failed_answer_plus_the_step() {
        let failed_at = 1_700_000_000_000 * MS;
        let step = Duration::from_secs(2);
        // Due at failed_at + 2 s; arrived 12.5 ms after that.
        let arrived = failed_at + 2_000 * MS + 12_500_000;
        assert_eq!(retry_lateness_ns(failed_at, step, arrived), 12_500_000);
        // Exactly on time.
        assert_eq!(
            retry_lateness_ns(failed_at, step, failed_at + 2_000 * MS),
            0
        );
        // Early (e.g. jitter left on): negative, not clamped to zero.
        assert_eq!(
            retry_lateness_ns(failed_at, step, failed_at + 1_990 * MS),
            -10_000_000
        );
    }

    #[test]
    fn early_retries_are_counted_and_recorded_as_zero_lateness() {
        let sink = WebhookSink::new(Behaviour {
            fail_percent: 100.0,
            stall_percent: 0.0,
            stall_for: Duration::ZERO,
            retry_step: Duration::from_secs(2),
        });
        sink.record_lateness(-500_000); // within Herald's 1 ms rounding: not early
        sink.record_lateness(-5 * MS as i64);
        sink.record_lateness(30 * MS as i64);
        assert_eq!(SinkCounts::get(&sink.counts.early_retries), 1);
        assert_eq!(
            sink.counts.min_lateness_ns.load(Ordering::Relaxed),
            -5 * MS as i64
        );
        let s = sink.lateness().expect("samples");
        assert_eq!(s.count, 3);
        assert!((30.0..30.1).contains(&s.max), "max {}", s.max);
        assert!(s.p50 <= 0.001, "p50 {}", s.p50);
    }

    #[test]
    fn shares_of_first_attempts_are_close_to_the_percentages_and_disjoint() {
        let b = Behaviour {
            fail_percent: 10.0,
            stall_percent: 5.0,
            stall_for: Duration::ZERO,
            retry_step: Duration::ZERO,
        };
        let n = 100_000;
        let (mut fail, mut stall) = (0, 0);
        for i in 0..n {
            match b.treatment(&format!("msg_{i:032x}")) {
                Treatment::Fail => fail += 1,
                Treatment::Stall => stall += 1,
                Treatment::Accept => {}
            }
        }
        assert!((9_500..10_500).contains(&fail), "fail {fail}");
        assert!((4_500..5_500).contains(&stall), "stall {stall}");
        // The same id always gets the same treatment.
        assert_eq!(b.treatment("msg_abc"), b.treatment("msg_abc"));
    }

    #[test]
    fn all_or_nothing_shares_are_exact() {
        let all = Behaviour {
            fail_percent: 100.0,
            stall_percent: 0.0,
            stall_for: Duration::ZERO,
            retry_step: Duration::ZERO,
        };
        let none = Behaviour {
            fail_percent: 0.0,
            ..all
        };
        for i in 0..10_000 {
            let id = format!("msg_{i}");
            assert_eq!(all.treatment(&id), Treatment::Fail);
            assert_eq!(none.treatment(&id), Treatment::Accept);
        }
    }

    /// Posts one delivery to the sink over a real connection; returns the status code.
    async fn post(addr: SocketAddr, id: &str, ts: &str, sig: &str, body: &str) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "POST /hook HTTP/1.1\r\nhost: x\r\nconnection: close\r\nwebhook-id: {id}\r\n\
             webhook-timestamp: {ts}\r\nwebhook-signature: {sig}\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.expect("read");
        out.split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn the_sink_verifies_fails_first_attempts_and_measures_the_retry() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let sink = WebhookSink::new(Behaviour {
            fail_percent: 100.0,
            stall_percent: 0.0,
            stall_for: Duration::ZERO,
            retry_step: Duration::ZERO,
        });
        sink.set_secret(secret).expect("secret");
        sink.set_window(Window {
            warm_end: 0,
            end: u64::MAX,
        });
        let addr = sink.serve("127.0.0.1:0").await.expect("serve");
        let key = Key::parse(secret).expect("key");
        let now = publish::unix_nanos();
        let ts = (now / 1_000_000_000).to_string();
        let body =
            format!(r#"{{"type":"order.confirmed","data":{{"data":{{"t":{now},"seq":1}}}}}}"#);
        let sig = signing::sign(&key, "msg_1", now as i64 / 1_000_000_000, body.as_bytes());

        assert_eq!(
            post(addr, "msg_1", &ts, &sig, &body).await,
            500,
            "first attempt fails"
        );
        assert_eq!(
            post(addr, "msg_1", &ts, &sig, &body).await,
            200,
            "the retry succeeds"
        );
        assert_eq!(
            post(addr, "msg_1", &ts, &sig, &body).await,
            200,
            "a repeat is fine"
        );
        let forged = sig.replacen("v1,", "v1,A", 1);
        assert_eq!(post(addr, "msg_1", &ts, &forged, &body).await, 401);
        assert_eq!(
            post(addr, "msg_2", &ts, &sig, &body).await,
            401,
            "signed for another id"
        );

        let c = &sink.counts;
        assert_eq!(SinkCounts::get(&c.verified), 3);
        assert_eq!(SinkCounts::get(&c.invalid_signature), 2);
        assert_eq!(SinkCounts::get(&c.distinct), 1);
        assert_eq!(SinkCounts::get(&c.measured), 1);
        assert_eq!(SinkCounts::get(&c.failed_on_purpose), 1);
        assert_eq!(SinkCounts::get(&c.retries), 1);
        assert_eq!(SinkCounts::get(&c.pending_retries), 0);
        assert_eq!(SinkCounts::get(&c.peak_pending_retries), 1);
        assert_eq!(SinkCounts::get(&c.succeeded), 1);
        assert_eq!(SinkCounts::get(&c.repeats), 1);
        assert_eq!(sink.lateness().map(|s| s.count), Some(1));
        assert_eq!(sink.latency().map(|s| s.count), Some(1));
    }
}
