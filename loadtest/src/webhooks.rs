//! The `webhooks` scenario: signed deliveries from Herald to a built-in sink ([`crate::sink`]),
//! verified one by one.
//!
//! - `--target herald`: the scenario registers an endpoint (`POST /v1/webhooks`, admin key;
//!   Herald must allow loopback: `[webhooks] allow_networks = ["127.0.0.0/8"]`) whose URL is the
//!   sink, keeps the returned secret for verification, then publishes events into Herald's
//!   Redis stream (`XADD`, as [`crate::fanout`] does) with a `data` padded so that each
//!   delivery body is about `--body-bytes`. The endpoint is deleted at the end.
//! - `--target reference`: no Herald. The load tool itself posts signed bodies of the same
//!   shape and size to the same sink over `--connections` keep-alive HTTP/1.1 connections, as
//!   fast as the sink answers: the ceiling of sink + loopback HTTP on this machine, so that
//!   Herald's figure reads as a ratio.
//! - `--mode throughput`: events at `--rate R` (open loop, each carrying its intended publish
//!   time, see [`crate::rate`]) or `max` (closed loop: at most `--max-lag` events published and
//!   not yet received), for `--warmup` + `--duration`. Reports deliveries/s (distinct
//!   webhook-ids answered 2xx inside the window), publish -> receive latency of first attempts,
//!   invalid signatures and missing deliveries (published in the window, never received).
//! - `--mode lateness`: exactly `--retries` events; the sink answers 500 to every first
//!   attempt, so each delivery gets a retry due `--retry-step` later (run Herald with
//!   `retry_schedule = ["0s", "<step>"]` and `jitter = 0`). Reports how late the retries
//!   arrived (see [`crate::sink::retry_lateness_ns`] for exactly what is measured).

use crate::fanout::{Rate, parse_rate};
use crate::publish::{self, Clock, OpenLoop, Target, Window};
use crate::rate;
use crate::signing::{self, Key};
use crate::sink::{Behaviour, SinkCounts, WebhookSink};
use crate::stats::{self, LatencySummary, Table};
use crate::sys;
use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

#[derive(Args, Debug, Clone)]
pub struct WebhooksArgs {
    /// Who delivers to the sink: Herald (events via its Redis stream) or the load tool itself
    /// (the ceiling of the sink and loopback HTTP).
    #[arg(long, value_enum, default_value = "herald")]
    pub target: Target,

    #[arg(long, value_enum, default_value = "throughput")]
    pub mode: Mode,

    /// Base URL of a Herald node with the api and webhooks roles.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// Admin key, to register (and at the end delete) the sink's endpoint.
    #[arg(long, env = "HERALD_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,

    /// Redis holding Herald's event stream.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// The event stream key (Herald's `[engine] events_stream`).
    #[arg(long, default_value = "herald:{p0}:events")]
    pub stream: String,

    /// Approximate cap on the stream's length (`XADD MAXLEN ~`); 0: no trimming (an entry
    /// Herald has not dispatched yet must never be trimmed away).
    #[arg(long, default_value_t = 0)]
    pub maxlen: u64,

    /// Events per second (open loop), or `max` (closed loop).
    #[arg(long, default_value = "max", value_parser = parse_rate)]
    pub rate: Rate,

    /// Measured window (throughput mode, after the warm-up).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Publishing before the measured window (throughput mode); not counted.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,

    /// After publishing (lateness mode: after the last retry is due), wait at most this long
    /// for outstanding deliveries.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain: Duration,

    /// Approximate size of each delivery body (the event's `data` is padded to it).
    #[arg(long, default_value_t = 1024)]
    pub body_bytes: usize,

    /// Share (percent) of first attempts the sink answers 500 (lateness mode: all).
    #[arg(long, default_value_t = 0.0)]
    pub fail_percent: f64,

    /// Share (percent) of first attempts the sink holds for --stall-for before its 200.
    #[arg(long, default_value_t = 0.0)]
    pub stall_percent: f64,

    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub stall_for: Duration,

    /// Lateness mode: retries to schedule (events published).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub retries: u64,

    /// Herald's wait after a failed first attempt (`retry_schedule[1]`; Herald must run with
    /// `jitter = 0`). Retry lateness is measured against it.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub retry_step: Duration,

    /// The endpoint's `maxInFlight` (0: leave it unset, Herald's `[webhooks] max_in_flight`).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub max_in_flight: u32,

    /// `--rate max`: events per pipelined XADD batch.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,

    /// `--rate max`: most events published but not yet received by the sink.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(2..=10_000_000))]
    pub max_lag: u32,

    /// `--target reference`: keep-alive connections posting to the sink.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: u32,

    /// Where the sink listens (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub sink_listen: String,

    #[command(flatten)]
    pub out: stats::Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Throughput,
    Lateness,
}

/// Body of a `POST /v1/webhooks` answer, as far as the scenarios need it.
#[derive(Deserialize)]
pub struct Created {
    pub id: String,
    pub secret: String,
}

/// The secret the reference client signs with (no Herald to issue one): `whsec_` + base64 of
/// 32 fixed bytes. It guards nothing; it only makes the sink do the same work.
const REFERENCE_SECRET: &str = "whsec_aGVyYWxkLWxvYWR0ZXN0LXJlZmVyZW5jZS1rZXktMzI=";

/// Registers `sink_url` as an endpoint at the Herald node `base_url` (admin `key`; every event
/// type; `max_in_flight` 0: Herald's default); returns the endpoint id and its secret.
pub async fn register(
    client: &reqwest::Client,
    base_url: &str,
    key: &str,
    sink_url: &str,
    max_in_flight: u32,
    description: &str,
) -> anyhow::Result<Created> {
    let mut body = json!({ "url": sink_url, "description": description });
    if max_in_flight > 0 {
        body["maxInFlight"] = json!(max_in_flight);
    }
    let url = format!("{}/v1/webhooks", base_url.trim_end_matches('/'));
    let response = client
        .post(&url)
        .header("x-api-key", key)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "POST {url}: {status}: {text}\n(Herald must allow the sink's network: \
             HERALD_WEBHOOKS__ALLOW_NETWORKS='[\"127.0.0.0/8\"]')"
        );
    }
    serde_json::from_str(&text).with_context(|| format!("POST {url}: unexpected answer"))
}

/// Deletes endpoint `id` (at the end of a run); failures are printed, not fatal.
pub async fn unregister(client: &reqwest::Client, base_url: &str, key: &str, id: &str) {
    let url = format!("{}/v1/webhooks/{id}", base_url.trim_end_matches('/'));
    match client.delete(&url).header("x-api-key", key).send().await {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => eprintln!("DELETE {url}: {}", r.status()),
        Err(e) => eprintln!("DELETE {url}: {e}"),
    }
}

/// The padding that brings a delivery body to about `body_bytes`: the body of a delivery
/// without padding is measured on the reference body (Herald's has the same fields; its
/// `eventId` differs by a few characters).
fn padding(body_bytes: usize) -> String {
    let t = publish::unix_nanos();
    let bare = reference_body(1_000_000, t, "").len() + r#","pad":"""#.len();
    "x".repeat(body_bytes.saturating_sub(bare))
}

/// A delivery body shaped as Herald's (`{type, timestamp, data: <event with eventId>}`) around
/// the same event the publisher sends Herald.
fn reference_body(seq: u64, t: u64, pad: &str) -> String {
    let event = publish::event_json(seq, seq, t, pad);
    format!(
        r#"{{"type":"order.confirmed","timestamp":"{}","data":{{"eventId":"{}-{seq}",{}}}"#,
        publish::occurred_at(t),
        t / 1_000_000,
        &event[1..]
    )
}

/// What was sent towards the sink (by the publisher or the reference client).
#[derive(Debug, Default, Serialize)]
struct Sent {
    /// Events published or requests sent, all phases.
    total: u64,
    /// Of those, the ones whose publish time is inside the measured window.
    measured: u64,
    errors: u64,
    /// Open loop: events of the window the publisher never got to.
    unsent: u64,
    first_error: Option<String>,
    /// Open loop: how late events left their due time.
    lag_ms: Option<LatencySummary>,
}

/// How much the publisher publishes.
#[derive(Clone, Copy)]
enum Until {
    /// Until this instant (throughput).
    Time(Instant),
    /// Exactly this many events (lateness).
    Count(u64),
}

/// Everything the publisher thread needs.
struct Plan {
    redis_url: String,
    stream: String,
    maxlen: u64,
    rate: Rate,
    until: Until,
    clock: Clock,
    window: Window,
    batch: u32,
    max_lag: u32,
    pad: String,
    sink: Arc<WebhookSink>,
}

impl Plan {
    /// XADDs events `(seq, t)` in one pipelined round trip and does the accounting.
    async fn send(&self, sink: &mut publish::Sink, events: &[(u64, u64)], out: &mut Sent) {
        let batch: Vec<String> = events
            .iter()
            .map(|&(seq, t)| publish::event_json(seq, seq, t, &self.pad))
            .collect();
        match sink.publish(&batch).await {
            Ok(()) => {
                out.total += events.len() as u64;
                out.measured += events
                    .iter()
                    .filter(|(_, t)| self.window.contains(*t))
                    .count() as u64;
            }
            Err(e) => {
                out.errors += events.len() as u64;
                if out.first_error.is_none() {
                    eprintln!("\npublish: {e:#}");
                    out.first_error = Some(format!("{e:#}"));
                }
            }
        }
    }

    async fn run(self) -> anyhow::Result<Sent> {
        let mut sink = publish::Sink::redis(&self.redis_url, &self.stream, self.maxlen).await?;
        let mut out = Sent::default();
        match self.rate {
            Rate::PerSecond(r) => self.open_loop(&mut sink, r, &mut out).await?,
            Rate::Max => self.closed_loop(&mut sink, &mut out).await,
        }
        Ok(out)
    }

    async fn open_loop(
        &self,
        sink: &mut publish::Sink,
        rate_per_s: f64,
        out: &mut Sent,
    ) -> anyhow::Result<()> {
        let schedule = match self.until {
            Until::Time(end) => {
                rate::Schedule::new(self.clock.t0, rate_per_s, end.duration_since(self.clock.t0))
            }
            Until::Count(n) => rate::Schedule::for_count(self.clock.t0, rate_per_s, n),
        };
        let mut open_loop = OpenLoop::start(schedule, self.clock, self.window.warm_end)?;
        let mut events = Vec::with_capacity(OpenLoop::BATCH);
        while open_loop.next_batch(&mut events).await {
            self.send(sink, &events, out).await;
        }
        let end = open_loop.finish().await?;
        out.unsent = end.unsent;
        out.lag_ms = end.lag;
        Ok(())
    }

    async fn closed_loop(&self, sink: &mut publish::Sink, out: &mut Sent) {
        let batch = u64::from(self.batch.min(self.max_lag / 2).max(1));
        let mut seq = 0;
        let mut events = Vec::with_capacity(batch as usize);
        loop {
            let n = match self.until {
                Until::Time(end) if Instant::now() >= end => break,
                Until::Time(_) => batch,
                Until::Count(n) if seq >= n => break,
                Until::Count(n) => batch.min(n - seq),
            };
            // Wait until the batch fits in the lag budget: a delivery that never comes would
            // hold the budget forever, so the wait is capped and the publisher moves on.
            let give_up = Instant::now() + Duration::from_millis(500);
            while out.total + n
                > SinkCounts::get(&self.sink.counts.distinct) + u64::from(self.max_lag)
                && Instant::now() < give_up
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let t = publish::unix_nanos();
            events.clear();
            events.extend((seq..seq + n).map(|s| (s, t)));
            seq += n;
            self.send(sink, &events, out).await;
        }
    }
}

/// Starts the publisher on its own thread and single-threaded runtime, so that publishing on
/// time never waits behind the sink's request tasks (their delay would be charged to Herald).
fn spawn_publisher(plan: Plan) -> std::thread::JoinHandle<anyhow::Result<Sent>> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("publisher runtime")?
            .block_on(plan.run())
    })
}

/// The reference client: `connections` keep-alive HTTP/1.1 connections, each posting its next
/// signed delivery as soon as the previous one is answered, until `end`.
async fn reference_client(
    addr: SocketAddr,
    connections: u32,
    end: Instant,
    window: Window,
    pad: Arc<str>,
) -> Sent {
    let key = match Key::parse(REFERENCE_SECRET) {
        Ok(k) => Arc::new(k),
        Err(e) => {
            return Sent {
                first_error: Some(e),
                ..Sent::default()
            };
        }
    };
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (key, next, pad) = (key.clone(), next.clone(), pad.clone());
        tasks.spawn(async move {
            let mut out = Sent::default();
            while Instant::now() < end {
                if let Err(e) = post_until(addr, end, window, &key, &next, &pad, &mut out).await {
                    out.errors += 1;
                    out.first_error.get_or_insert_with(|| format!("{e:#}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            out
        });
    }
    let mut sent = Sent::default();
    while let Some(r) = tasks.join_next().await {
        if let Ok(o) = r {
            sent.total += o.total;
            sent.measured += o.measured;
            sent.errors += o.errors;
            if sent.first_error.is_none() {
                sent.first_error = o.first_error;
            }
        }
    }
    sent
}

/// One connection's closed loop; returns on `end` or on the first error (the caller counts
/// it and reconnects).
async fn post_until(
    addr: SocketAddr,
    end: Instant,
    window: Window,
    key: &Key,
    next: &AtomicU64,
    pad: &str,
    out: &mut Sent,
) -> anyhow::Result<()> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let host = addr.to_string();
    while Instant::now() < end {
        let seq = next.fetch_add(1, Ordering::Relaxed);
        let t = publish::unix_nanos();
        let body = reference_body(seq, t, pad);
        let id = format!("msg_ref{seq:016x}");
        let ts = (t / 1_000_000_000) as i64;
        let signature = signing::sign(key, &id, ts, body.as_bytes());
        let req = Request::post("/hook")
            .header("host", &host)
            .header("content-type", "application/json")
            .header("user-agent", "herald-loadtest")
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(Full::new(Bytes::from(body)))?;
        sender.ready().await?;
        let response = sender.send_request(req).await?;
        let status = response.status();
        let _ = response.into_body().collect().await?;
        if !status.is_success() {
            bail!("the sink answered {status}");
        }
        out.total += 1;
        if window.contains(t) {
            out.measured += 1;
        }
    }
    Ok(())
}

/// The `\r`-updated progress line on stderr, once a second.
async fn progress(sink: Arc<WebhookSink>, t0: Instant, stop: Arc<AtomicBool>) {
    let mut ticker = stats::Ticker::new(t0);
    let mut verified = stats::LiveRate::default();
    while !stop.load(Ordering::Relaxed) {
        let tick = ticker.tick().await;
        let c = &sink.counts;
        let per_s = verified.per_s(SinkCounts::get(&c.verified), &tick);
        stats::progress_line(format_args!(
            "[webhooks] {:>6.1}s {per_s:>9.0} verified/s  distinct {:>8}  retries pending {:>6}  invalid {}  p99 {}",
            tick.elapsed_s,
            SinkCounts::get(&c.distinct),
            SinkCounts::get(&c.pending_retries),
            SinkCounts::get(&c.invalid_signature) + SinkCounts::get(&c.invalid_timestamp),
            sink.latency_p99_hint()
                .map_or_else(|| "-".into(), stats::ms),
        ));
    }
}

pub async fn run(args: WebhooksArgs) -> anyhow::Result<()> {
    if args.mode == Mode::Lateness && args.target == Target::Reference {
        bail!("--mode lateness measures Herald's retry schedule: use --target herald");
    }
    if !(0.0..=100.0).contains(&args.fail_percent)
        || !(0.0..=100.0).contains(&args.stall_percent)
        || args.fail_percent + args.stall_percent > 100.0
    {
        bail!("--fail-percent and --stall-percent must be shares of 100");
    }
    if args.duration.is_zero() {
        bail!("--duration must be positive");
    }
    let started_at = SystemTime::now();
    let lateness = args.mode == Mode::Lateness;
    let sink = WebhookSink::new(Behaviour {
        fail_percent: if lateness { 100.0 } else { args.fail_percent },
        stall_percent: if lateness { 0.0 } else { args.stall_percent },
        stall_for: args.stall_for,
        retry_step: args.retry_step,
    });
    let addr = sink
        .serve(&args.sink_listen)
        .await
        .with_context(|| format!("starting the sink on {}", args.sink_listen))?;
    let sink_url = format!("http://{addr}/hook");
    let pad = padding(args.body_bytes);

    let client = reqwest::Client::new();
    let mut endpoint_id = None;
    match args.target {
        Target::Herald => {
            let Some(key) = &args.admin_key else {
                bail!("--admin-key (or HERALD_ADMIN_KEY) is needed to register the sink");
            };
            let created = register(
                &client,
                &args.url,
                key,
                &sink_url,
                args.max_in_flight,
                "herald-loadtest webhooks sink",
            )
            .await?;
            sink.set_secret(&created.secret)?;
            eprintln!(
                "webhooks: sink {sink_url} registered as {} at {}",
                created.id, args.url
            );
            endpoint_id = Some(created.id);
        }
        Target::Reference => sink.set_secret(REFERENCE_SECRET)?,
    }

    let clock = Clock::now();
    let (t0, wall0) = (clock.t0, clock.wall0);
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let (window, until) = if lateness {
        // Every event counts; publishing ends after --retries events.
        (
            Window {
                warm_end: wall0,
                end: u64::MAX,
            },
            Until::Count(args.retries),
        )
    } else {
        (
            Window {
                warm_end: wall0 + nanos(args.warmup),
                end: wall0 + nanos(args.warmup + args.duration),
            },
            Until::Time(t0 + args.warmup + args.duration),
        )
    };
    sink.set_window(window);
    eprintln!(
        "webhooks: {:?} {:?}, {}, bodies ~{} bytes, sink {}",
        args.target,
        args.mode,
        match args.target {
            Target::Herald => format!(
                "{} via XADD {} on {}",
                args.rate.describe(),
                args.stream,
                args.redis_url
            ),
            Target::Reference => format!("{} keep-alive connections", args.connections),
        },
        args.body_bytes,
        sink_url,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let progress = tokio::spawn(progress(sink.clone(), t0, stop.clone()));

    let sent = match args.target {
        Target::Herald => {
            let plan = Plan {
                redis_url: args.redis_url.clone(),
                stream: args.stream.clone(),
                maxlen: args.maxlen,
                rate: args.rate,
                until,
                clock,
                window,
                batch: args.batch,
                max_lag: args.max_lag,
                pad: pad.clone(),
                sink: sink.clone(),
            };
            let publisher = spawn_publisher(plan);
            tokio::task::spawn_blocking(move || publisher.join())
                .await?
                .map_err(|_| anyhow::anyhow!("the publisher thread panicked"))??
        }
        Target::Reference => {
            let end = t0 + args.warmup + args.duration;
            reference_client(addr, args.connections, end, window, pad.as_str().into()).await
        }
    };
    let published_at = Instant::now();

    // Drain: every measured event received (and, for lateness, every retry), or give up.
    let deadline = published_at
        + args.drain
        + if lateness {
            args.retry_step
        } else {
            Duration::ZERO
        };
    loop {
        let c = &sink.counts;
        let done = if lateness {
            SinkCounts::get(&c.retries) >= sent.total
        } else {
            SinkCounts::get(&c.measured) >= sent.measured
                && SinkCounts::get(&c.pending_retries) == 0
        };
        if done || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    progress.abort();
    eprintln!();
    if let (Some(id), Some(key)) = (&endpoint_id, &args.admin_key) {
        unregister(&client, &args.url, key, id).await;
    }

    let report = Report {
        args: &args,
        started_at,
        sink_url: &sink_url,
        endpoint_id: endpoint_id.as_deref(),
        sent,
        sink: &sink,
    };
    print!("{}", report.table().render());
    if let Some(path) = &args.out.json {
        stats::write_json(path, &report.json())?;
    }
    if let Some(path) = &args.out.svg {
        let (latency, lateness) = (sink.latency_histogram(), sink.lateness_histogram());
        let mut curves = vec![("publish->receive", &latency)];
        if !lateness.is_empty() {
            curves.push(("retry lateness", &lateness));
        }
        stats::write_svg(path, &report.title(), &curves)?;
    }
    Ok(())
}

struct Report<'a> {
    args: &'a WebhooksArgs,
    started_at: SystemTime,
    sink_url: &'a str,
    endpoint_id: Option<&'a str>,
    sent: Sent,
    sink: &'a WebhookSink,
}

impl Report<'_> {
    fn lateness(&self) -> bool {
        self.args.mode == Mode::Lateness
    }

    /// Seconds the deliveries/s figures are counted over: the measured window (throughput);
    /// lateness mode reports no rate.
    fn seconds(&self) -> f64 {
        self.args.duration.as_secs_f64()
    }

    fn count(&self, c: &AtomicU64) -> u64 {
        SinkCounts::get(c)
    }

    fn deliveries_per_s(&self) -> Option<f64> {
        (!self.lateness())
            .then(|| self.count(&self.sink.counts.succeeded_in_window) as f64 / self.seconds())
    }

    fn requests_per_s(&self) -> Option<f64> {
        (!self.lateness())
            .then(|| self.count(&self.sink.counts.requests_in_window) as f64 / self.seconds())
    }

    fn invalid(&self) -> u64 {
        let c = &self.sink.counts;
        self.count(&c.invalid_signature) + self.count(&c.invalid_timestamp)
    }

    fn missing(&self) -> u64 {
        self.sent
            .measured
            .saturating_sub(self.count(&self.sink.counts.measured))
    }

    fn missing_retries(&self) -> u64 {
        let c = &self.sink.counts;
        self.count(&c.failed_on_purpose)
            .saturating_sub(self.count(&c.retries))
    }

    fn body_bytes_mean(&self) -> f64 {
        let c = &self.sink.counts;
        self.count(&c.body_bytes) as f64 / self.count(&c.verified).max(1) as f64
    }

    fn min_lateness_ms(&self) -> Option<f64> {
        let ns = self.sink.counts.min_lateness_ns.load(Ordering::Relaxed);
        (ns != i64::MAX).then(|| ns as f64 / 1e6)
    }

    /// The run's heading: label, target, mode and rate.
    fn title(&self) -> String {
        let a = self.args;
        format!(
            "webhooks{}: {:?} {:?}, {}",
            a.out.tag(),
            a.target,
            a.mode,
            match a.target {
                Target::Herald => a.rate.describe(),
                Target::Reference => format!("{} connections, max rate", a.connections),
            }
        )
    }

    fn table(&self) -> Table {
        let c = &self.sink.counts;
        let mut t = Table::default();
        t.section(self.title());
        if let Some(r) = self.deliveries_per_s() {
            t.row("measured window", format!("{:.2} s", self.seconds()))
                .row("deliveries (verified, 2xx)", format!("{r:.1}/s"))
                .row(
                    "requests (verified)",
                    format!("{:.1}/s", self.requests_per_s().unwrap_or(0.0)),
                );
        }
        t.row(
            "sent",
            format!(
                "{} in window, {} in all",
                self.sent.measured, self.sent.total
            ),
        )
        .row(
            "received (distinct ids)",
            format!(
                "{} of the window, {} in all",
                self.count(&c.measured),
                self.count(&c.distinct)
            ),
        )
        .row("missing", self.missing().to_string())
        .row("invalid signatures", self.invalid().to_string())
        .row(
            "body bytes (mean)",
            format!("{:.0}", self.body_bytes_mean()),
        )
        .row("sink connections", self.count(&c.connections).to_string());
        t.latency("publish->receive", self.sink.latency().as_ref());
        if self.count(&c.failed_on_purpose) > 0 {
            t.row(
                "retries received / failed first",
                format!(
                    "{} / {} (peak pending {})",
                    self.count(&c.retries),
                    self.count(&c.failed_on_purpose),
                    self.count(&c.peak_pending_retries)
                ),
            )
            .row("missing retries", self.missing_retries().to_string());
            t.latency("retry lateness", self.sink.lateness().as_ref());
            if let Some(min) = self.min_lateness_ms() {
                t.row("retry lateness min (signed)", stats::ms(min));
            }
        }
        if let Some(lag) = &self.sent.lag_ms {
            t.row(
                "publish lag p99 / max",
                format!("{} / {}", stats::ms(lag.p99), stats::ms(lag.max)),
            );
        }
        for (name, v) in [
            (
                "early retries (> 1 ms before due)",
                self.count(&c.early_retries),
            ),
            ("stalled first attempts", self.count(&c.stalled)),
            ("repeats after a 2xx", self.count(&c.repeats)),
            ("unverifiable requests", self.count(&c.unverifiable)),
            ("bodies without marks", self.count(&c.unmarked)),
            ("unsent (publisher behind)", self.sent.unsent),
            ("send errors", self.sent.errors),
        ] {
            if v > 0 {
                t.row(name, v.to_string());
            }
        }
        if let Some(e) = &self.sent.first_error {
            t.row("first send error", e.clone());
        }
        t
    }

    fn json(&self) -> serde_json::Value {
        let a = self.args;
        let c = &self.sink.counts;
        json!({
            "scenario": "webhooks",
            "label": a.out.label,
            "target": a.target,
            "mode": a.mode,
            "url": match a.target { Target::Herald => Some(&a.url), Target::Reference => None },
            "endpoint_id": self.endpoint_id,
            "sink_url": self.sink_url,
            "rate": match (a.target, a.rate) {
                (Target::Reference, _) | (_, Rate::Max) => json!("max"),
                (_, Rate::PerSecond(r)) => json!(r),
            },
            "connections": (a.target == Target::Reference).then_some(a.connections),
            "max_in_flight": (a.max_in_flight > 0).then_some(a.max_in_flight),
            "duration_s": (!self.lateness()).then(|| self.seconds()),
            "warmup_s": (!self.lateness()).then_some(a.warmup.as_secs_f64()),
            "body_bytes_target": a.body_bytes,
            "body_bytes_mean": self.body_bytes_mean(),
            "fail_percent": if self.lateness() { 100.0 } else { a.fail_percent },
            "stall_percent": a.stall_percent,
            "retry_step_s": a.retry_step.as_secs_f64(),
            "sent": self.sent,
            "deliveries_per_s": self.deliveries_per_s(),
            "requests_per_s": self.requests_per_s(),
            "received_measured": self.count(&c.measured),
            "received_distinct": self.count(&c.distinct),
            "missing": self.missing(),
            "invalid_signatures": self.invalid(),
            "unverifiable": self.count(&c.unverifiable),
            "repeats": self.count(&c.repeats),
            "stalled": self.count(&c.stalled),
            "sink_connections": self.count(&c.connections),
            "latency_ms": self.sink.latency(),
            "retries": {
                "failed_first": self.count(&c.failed_on_purpose),
                "received": self.count(&c.retries),
                "missing": self.missing_retries(),
                "peak_pending": self.count(&c.peak_pending_retries),
                "early": self.count(&c.early_retries),
                "min_lateness_ms": self.min_lateness_ms(),
            },
            "lateness_ms": self.sink.lateness(),
            "started_at": humantime::format_rfc3339_seconds(self.started_at).to_string(),
            "machine": sys::machine(),
            "tool": { "name": env!("CARGO_PKG_NAME"), "version": env!("CARGO_PKG_VERSION") },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_bodies_have_herald_shape_and_carry_the_marks() {
        let t = 1_700_000_000_123_456_789;
        let body = reference_body(42, t, "xyz");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["type"], "order.confirmed");
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20.123456Z");
        assert_eq!(v["data"]["orderId"], "lt-42");
        assert_eq!(v["data"]["eventId"], "1700000000123-42");
        assert_eq!(v["data"]["data"]["t"].as_u64(), Some(t));
        assert_eq!(v["data"]["data"]["pad"], "xyz");
    }

    #[test]
    fn padding_brings_bodies_to_the_requested_size() {
        let pad = padding(1024);
        let body = reference_body(1_000_000, publish::unix_nanos(), &pad);
        assert!((1014..=1034).contains(&body.len()), "{}", body.len());
        assert_eq!(padding(10), "", "smaller than an empty body: no padding");
    }
}
