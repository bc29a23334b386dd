//! The `workflow` scenario (issue 13): orders through Herald's orchestrating workflow.
//!
//! - `--mode throughput`: a closed loop over the whole pipeline. Each of `--clients` clients
//!   sends an order (`POST /v1/orders`) and waits until the event feed (`GET /v1/events`,
//!   [`crate::feed`]) shows it `confirmed` (or `rejected` or `cancelled`, or `--order-timeout`
//!   passes) before it sends the next one, so `--clients` orders are in the workflow at any
//!   time and the figure is a steady state, not a backlog growing behind intake. Throughput:
//!   `order.confirmed` events of this run's orders arriving in the measured window, per second;
//!   latency: send -> 202 and send -> `confirmed` seen. With `--service-listen ADDR` the load
//!   tool also runs the service a task step calls there ([`crate::task_service`]: `200
//!   {"approved": true}` at once) and counts its calls. The script runs this against a Herald
//!   whose `accepted` has one task step calling that service and against one without steps,
//!   same build, same engine: the ratio of the two is what the step costs.
//! - `--mode lateness`: `--orders` orders are created as fast as `--create-clients` clients
//!   can, every one with `metadata.dueAt` = the same instant (Unix ms) `--lead` ahead; Herald's
//!   `accepted` is a `wait` step `until = "order.metadata.dueAt"`, next `confirmed`. The tool
//!   checks that every timer was scheduled before it fell due (`GET /v1/admin/queues`), then
//!   measures per order: the event's `occurredAt` - dueAt (when Herald made the change) and its
//!   arrival on the feed - dueAt (when a client could know). After the run it reads Herald's
//!   `herald_workflow_timer_lateness_seconds` (due -> queued as a command) from `/metrics`.
//!
//! Orders carry client-made ids `lt-<run>-<n>`, so every event is matched to its order. The
//! key must be an admin key (the feed of every order, the queue stats, `/metrics`).

use crate::feed::{Feed, FeedEvent};
use crate::intake::{OrderClient, order_number, run_id};
use crate::stats::{self, Counters, Outcome, SharedHistogram, Table};
use crate::{prom, sys, task_service};
use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

#[derive(Args, Debug)]
pub struct WorkflowArgs {
    /// Base URL of the Herald node.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,

    /// Admin key (sent as `x-api-key`): orders, the event feed, queue stats and /metrics.
    #[arg(long, env = "HERALD_ADMIN_KEY", hide_env_values = true)]
    admin_key: String,

    /// `throughput`: orders confirmed per second through the workflow, closed loop;
    /// `lateness`: how late the status changes of --orders timers due at once come.
    #[arg(long, value_enum, default_value = "throughput")]
    mode: Mode,

    /// throughput: orders in the workflow at once (each client waits for its order's outcome
    /// before sending the next).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    clients: u32,

    /// throughput: measured window (after the warm-up).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,

    /// throughput: warm-up before the measured window; its orders are not counted.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,

    /// throughput: how long a client waits for its order's outcome on the feed; then the
    /// order counts as timed out and the client goes on.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    order_timeout: Duration,

    /// throughput: run the task step's service on this address (`200 {"approved": true}` to
    /// every POST) and count its calls. Without it, no service runs (the workflow without
    /// steps).
    #[arg(long)]
    service_listen: Option<String>,

    /// lateness: orders (timers) due at the same instant.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    orders: u64,

    /// lateness: how far ahead of the run's start the timers are due.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    lead: Duration,

    /// lateness: concurrent clients creating the orders.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    create_clients: u32,

    /// lateness: how long after the due time to wait for the last status change.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drain: Duration,

    /// Per-request timeout (a timed-out request counts as an error).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,

    /// Orders are spread over this many customer ids (`c-0` ..).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    customers: u64,

    #[command(flatten)]
    pub out: stats::Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Throughput,
    Lateness,
}

/// How an order left `accepted`, as the feed showed it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Resolution {
    Confirmed,
    /// Any other status (`rejected`, `cancelled`): the step failed or was caught.
    Other(String),
}

impl Resolution {
    /// The resolution an event of an order's makes; `None` for events that do not end the
    /// scenario's part (`order.accepted`).
    fn of(kind: &str) -> Option<Resolution> {
        match kind {
            "order.accepted" => None,
            "order.confirmed" => Some(Resolution::Confirmed),
            other => Some(Resolution::Other(
                other.strip_prefix("order.").unwrap_or(other).to_string(),
            )),
        }
    }
}

pub async fn run(args: WorkflowArgs) -> anyhow::Result<()> {
    let base_url = args.url.trim_end_matches('/').to_string();
    reqwest::Url::parse(&base_url).with_context(|| format!("--url {base_url}"))?;
    match args.mode {
        Mode::Throughput => throughput(&args, &base_url).await,
        Mode::Lateness => lateness(&args, &base_url).await,
    }
}

/// The order client of a run: ids `lt-<run>-<n>`, one item each, `metadata` as given.
fn order_client(
    args: &WorkflowArgs,
    base_url: &str,
    id_prefix: &str,
    concurrency: usize,
    metadata: Option<Value>,
) -> anyhow::Result<OrderClient> {
    Ok(OrderClient {
        client: OrderClient::http_client(concurrency, args.timeout)?,
        orders_urls: vec![format!("{base_url}/v1/orders")],
        api_key: args.admin_key.clone(),
        id_prefix: id_prefix.to_string(),
        customer_prefix: "c-".into(),
        customers: args.customers,
        items: 1,
        metadata,
    })
}

/// The workflow counters of Herald's `/metrics` a run reports beside its own figures.
const HERALD_COUNTERS: [(&str, &str); 5] = [
    ("calls", "herald_workflow_calls_total"),
    ("call_failures", "herald_workflow_call_failures_total"),
    (
        "retries_scheduled",
        "herald_workflow_retries_scheduled_total",
    ),
    ("caught", "herald_workflow_caught_total"),
    ("timers_fired", "herald_workflow_timers_fired_total"),
];

/// Herald's `/metrics` after a run, or the reason it could not be read (reported, not fatal:
/// the load tool's own figures stand without it).
async fn herald_metrics(client: &reqwest::Client, base_url: &str, key: &str) -> Option<String> {
    match prom::fetch(client, base_url, key).await {
        Ok(text) => Some(text),
        Err(e) => {
            eprintln!("reading Herald's /metrics: {e:#}");
            None
        }
    }
}

fn herald_counters(metrics: Option<&str>) -> Value {
    let Some(text) = metrics else {
        return Value::Null;
    };
    let counters: BTreeMap<&str, Option<f64>> = HERALD_COUNTERS
        .iter()
        .map(|&(key, name)| (key, prom::counter(text, name)))
        .collect();
    json!(counters)
}

// ---- throughput -----------------------------------------------------------------------------

/// Where a waiting client is told how its order ended, and when the feed showed it.
type Notify = oneshot::Sender<(Resolution, Instant)>;

/// Clients waiting for their orders' outcomes, by order number.
struct Waiters {
    shards: Vec<Mutex<HashMap<u64, Notify>>>,
}

impl Waiters {
    const SHARDS: usize = 64;

    fn new() -> Self {
        Self {
            shards: (0..Self::SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }

    fn shard(&self, n: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Notify>> {
        self.shards[(n % Self::SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Called before the order's POST leaves (its events may come before its 202).
    fn register(&self, n: u64) -> oneshot::Receiver<(Resolution, Instant)> {
        let (tx, rx) = oneshot::channel();
        self.shard(n).insert(n, tx);
        rx
    }

    /// The order's outcome was seen at `at`; a later event of the same order finds no waiter.
    fn resolve(&self, n: u64, how: Resolution, at: Instant) {
        if let Some(tx) = self.shard(n).remove(&n) {
            let _ = tx.send((how, at));
        }
    }

    fn forget(&self, n: u64) {
        self.shard(n).remove(&n);
    }
}

/// Everything the clients of a throughput run share.
struct Loop {
    orders: OrderClient,
    waiters: Waiters,
    warm_end: Instant,
    end: Instant,
    order_timeout: Duration,
    next_n: AtomicU64,
    /// POST outcomes of the measured orders.
    posts: Counters,
    /// Measured orders: send -> 202.
    accept_latency: SharedHistogram,
    /// Measured orders: send -> `order.confirmed` on the feed.
    confirm_latency: SharedHistogram,
    /// 202s and confirmations (any order's) arriving inside the measured window.
    accepted_in_window: AtomicU64,
    confirmed_in_window: AtomicU64,
    /// Measured orders that ended in another status, by status.
    other: Mutex<BTreeMap<String, u64>>,
    /// Measured orders with no outcome within `order_timeout`.
    timed_out: AtomicU64,
    /// Across both phases, for the progress line.
    confirmed_total: AtomicU64,
    waiting: AtomicU64,
}

impl Loop {
    /// One client: an order, its outcome, the next order, until the window closes.
    async fn client(&self) {
        loop {
            let start = Instant::now();
            if start >= self.end {
                return;
            }
            let n = self.next_n.fetch_add(1, Ordering::Relaxed);
            self.one_order(n, start).await;
        }
    }

    async fn one_order(&self, n: u64, start: Instant) {
        let measured = start >= self.warm_end;
        let in_window = |t: Instant| t >= self.warm_end && t < self.end;
        let outcome_rx = self.waiters.register(n);
        let posted = self.orders.post(n).await;
        let answered = Instant::now();
        if measured {
            self.posts.add(posted);
        }
        if posted != Outcome::Ok {
            self.waiters.forget(n);
            return;
        }
        if measured {
            self.accept_latency.record(answered - start);
        }
        if in_window(answered) {
            self.accepted_in_window.fetch_add(1, Ordering::Relaxed);
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let outcome = tokio::time::timeout(self.order_timeout, outcome_rx).await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        match outcome {
            Ok(Ok((Resolution::Confirmed, at))) => {
                self.confirmed_total.fetch_add(1, Ordering::Relaxed);
                if in_window(at) {
                    self.confirmed_in_window.fetch_add(1, Ordering::Relaxed);
                }
                if measured {
                    self.confirm_latency
                        .record(at.saturating_duration_since(start));
                }
            }
            Ok(Ok((Resolution::Other(status), _))) => {
                if measured {
                    *self
                        .other
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(status)
                        .or_default() += 1;
                }
            }
            // No outcome in time (the sender is only dropped by `forget`, never while waited on).
            Ok(Err(_)) | Err(_) => {
                self.waiters.forget(n);
                if measured {
                    self.timed_out.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

async fn throughput(args: &WorkflowArgs, base_url: &str) -> anyhow::Result<()> {
    if args.duration.is_zero() {
        bail!("--duration must be positive");
    }
    let started_at = SystemTime::now();
    let id_prefix = format!("lt-{}-", run_id(started_at));
    let service = match &args.service_listen {
        Some(listen) => Some(task_service::start(listen).await?),
        None => None,
    };
    let feed = Arc::new(Feed::new(base_url, &args.admin_key, args.timeout)?);
    // Fixed before the first order goes out, so no outcome is missed.
    let cursor = feed.end_cursor().await?;
    eprintln!(
        "workflow throughput: {} orders in the workflow at once -> {base_url}, warm-up {}, measure {}, {}, order ids {id_prefix}<n>",
        args.clients,
        humantime::format_duration(args.warmup),
        humantime::format_duration(args.duration),
        service.as_ref().map_or_else(
            || "no task service".to_string(),
            |(addr, _)| format!("task service on http://{addr}")
        ),
    );

    let t0 = Instant::now();
    let lp = Arc::new(Loop {
        orders: order_client(args, base_url, &id_prefix, args.clients as usize, None)?,
        waiters: Waiters::new(),
        warm_end: t0 + args.warmup,
        end: t0 + args.warmup + args.duration,
        order_timeout: args.order_timeout,
        next_n: AtomicU64::new(0),
        posts: Counters::default(),
        accept_latency: SharedHistogram::default(),
        confirm_latency: SharedHistogram::default(),
        accepted_in_window: AtomicU64::new(0),
        confirmed_in_window: AtomicU64::new(0),
        other: Mutex::new(BTreeMap::new()),
        timed_out: AtomicU64::new(0),
        confirmed_total: AtomicU64::new(0),
        waiting: AtomicU64::new(0),
    });

    let tail = {
        let (lp, prefix) = (lp.clone(), id_prefix.clone());
        tokio::spawn(feed.clone().tail(cursor, move |events, at| {
            for ev in events {
                if let (Some(how), Some(n)) = (
                    Resolution::of(&ev.kind),
                    order_number(&prefix, &ev.order_id),
                ) {
                    lp.waiters.resolve(n, how, at);
                }
            }
        }))
    };
    // The service's calls at the window's edges.
    let window_calls = service.as_ref().map(|(_, calls)| {
        let (calls, lp) = (calls.clone(), lp.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(lp.warm_end.into()).await;
            let first = calls.approved();
            tokio::time::sleep_until(lp.end.into()).await;
            calls.approved() - first
        })
    });
    let progress = tokio::spawn(throughput_progress(lp.clone(), t0));

    let mut clients = JoinSet::new();
    for _ in 0..args.clients {
        let lp = lp.clone();
        clients.spawn(async move { lp.client().await });
    }
    while clients.join_next().await.is_some() {}
    tail.abort();
    progress.abort();
    eprintln!();

    let calls_in_window = match window_calls {
        Some(task) => Some(task.await.context("the service's call count")?),
        None => None,
    };
    let metrics = herald_metrics(&lp.orders.client, base_url, &args.admin_key).await;
    let report = ThroughputReport {
        args,
        base_url,
        started_at,
        lp: &lp,
        service: service.as_ref().map(|(addr, calls)| ServiceReport {
            addr: addr.to_string(),
            calls: calls.approved(),
            refused: calls.refused(),
            calls_in_window: calls_in_window.unwrap_or(0),
        }),
        herald: herald_counters(metrics.as_deref()),
        feed_errors: feed.errors.load(Ordering::Relaxed),
    };
    print!("{}", report.table().render());
    if let Some(path) = &args.out.json {
        stats::write_json(path, &report.json())?;
    }
    if let Some(path) = &args.out.svg {
        let accept = lp.accept_latency.snapshot();
        let confirmed = lp.confirm_latency.snapshot();
        stats::write_svg(
            path,
            &report.title(),
            &[("accept", &accept), ("send->confirmed", &confirmed)],
        )?;
    }
    Ok(())
}

/// The `\r`-updated progress line on stderr, once a second.
async fn throughput_progress(lp: Arc<Loop>, t0: Instant) {
    let mut ticker = stats::Ticker::new(t0);
    let mut confirmed = stats::LiveRate::default();
    loop {
        let tick = ticker.tick().await;
        let rate = confirmed.per_s(lp.confirmed_total.load(Ordering::Relaxed), &tick);
        let phase = if tick.now < lp.warm_end {
            "warmup"
        } else if tick.now < lp.end {
            "measure"
        } else {
            "drain"
        };
        stats::progress_line(format_args!(
            "[workflow] {:>6.1}s {phase:<7} {rate:>9.0} confirmed/s  awaiting {}  timed out {}",
            tick.elapsed_s,
            lp.waiting.load(Ordering::Relaxed),
            lp.timed_out.load(Ordering::Relaxed),
        ));
    }
}

struct ServiceReport {
    addr: String,
    calls: u64,
    refused: u64,
    calls_in_window: u64,
}

struct ThroughputReport<'a> {
    args: &'a WorkflowArgs,
    base_url: &'a str,
    started_at: SystemTime,
    lp: &'a Loop,
    service: Option<ServiceReport>,
    herald: Value,
    feed_errors: u64,
}

impl ThroughputReport<'_> {
    fn per_s(&self, n: &AtomicU64) -> f64 {
        n.load(Ordering::Relaxed) as f64 / self.args.duration.as_secs_f64()
    }

    fn other(&self) -> BTreeMap<String, u64> {
        self.lp
            .other
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn title(&self) -> String {
        format!(
            "workflow throughput{}: {} orders in the workflow at once against {}",
            self.args.out.tag(),
            self.args.clients,
            self.base_url
        )
    }

    fn table(&self) -> Table {
        let mut t = Table::default();
        t.section(self.title());
        t.row(
            "measured window",
            format!("{:.2} s", self.args.duration.as_secs_f64()),
        )
        .row(
            "confirmed",
            format!("{:.1} orders/s", self.per_s(&self.lp.confirmed_in_window)),
        )
        .row(
            "accepted",
            format!("{:.1} orders/s", self.per_s(&self.lp.accepted_in_window)),
        );
        t.latency("accept", self.lp.accept_latency.summary().as_ref());
        t.latency(
            "send->confirmed",
            self.lp.confirm_latency.summary().as_ref(),
        );
        let errors = self.lp.posts.errors();
        if errors.is_empty() {
            t.row("POST errors", "0");
        }
        for (k, v) in &errors {
            t.row(format!("POST error {k}"), v.to_string());
        }
        for (status, n) in self.other() {
            t.row(format!("ended {status}"), n.to_string());
        }
        t.row(
            format!(
                "no outcome within {}",
                humantime::format_duration(self.args.order_timeout)
            ),
            self.lp.timed_out.load(Ordering::Relaxed).to_string(),
        );
        if let Some(s) = &self.service {
            t.row(
                "task service calls",
                format!("{} ({} in the window)", s.calls, s.calls_in_window),
            );
            if s.refused > 0 {
                t.row("task service refused", s.refused.to_string());
            }
        }
        if let Some(counters) = self.herald.as_object() {
            for (k, v) in counters {
                if let Some(v) = v.as_f64() {
                    t.row(format!("herald {k}"), format!("{v}"));
                }
            }
        }
        if self.feed_errors > 0 {
            t.row("event feed errors", self.feed_errors.to_string());
        }
        t
    }

    fn json(&self) -> Value {
        json!({
            "scenario": "workflow",
            "mode": "throughput",
            "label": self.args.out.label,
            "url": self.base_url,
            "clients": self.args.clients,
            "duration_s": self.args.duration.as_secs_f64(),
            "warmup_s": self.args.warmup.as_secs_f64(),
            "order_timeout_s": self.args.order_timeout.as_secs_f64(),
            "confirmed_per_s": self.per_s(&self.lp.confirmed_in_window),
            "accepted_per_s": self.per_s(&self.lp.accepted_in_window),
            "orders_measured": self.lp.posts.ok() + self.lp.posts.error_total(),
            "accept_latency_ms": self.lp.accept_latency.summary(),
            "confirm_latency_ms": self.lp.confirm_latency.summary(),
            "errors": self.lp.posts.errors(),
            "ended_otherwise": self.other(),
            "timed_out": self.lp.timed_out.load(Ordering::Relaxed),
            "task_service": self.service.as_ref().map(|s| json!({
                "addr": s.addr,
                "calls": s.calls,
                "refused": s.refused,
                "calls_in_window": s.calls_in_window,
            })),
            "herald_metrics": self.herald,
            "event_feed_errors": self.feed_errors,
            "started_at": humantime::format_rfc3339_seconds(self.started_at).to_string(),
            "machine": sys::machine(),
            "tool": { "name": env!("CARGO_PKG_NAME"), "version": env!("CARGO_PKG_VERSION") },
        })
    }
}

// ---- timer lateness -------------------------------------------------------------------------

/// Microseconds since the Unix epoch.
fn unix_us(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The signed lateness of `at_us` after `due_us`, recorded: a value before the due time
/// (a timer firing early, which it must not) is counted as early and recorded as zero.
#[derive(Default)]
struct Lateness {
    hist: SharedHistogram,
    early: AtomicU64,
}

impl Lateness {
    fn record(&self, at_us: i64, due_us: i64) {
        let late = at_us - due_us;
        if late < 0 {
            self.early.fetch_add(1, Ordering::Relaxed);
        }
        self.hist
            .record(Duration::from_micros(u64::try_from(late).unwrap_or(0)));
    }
}

/// The outcomes of the lateness run's orders as the feed shows them.
struct Timers {
    prefix: String,
    due_us: i64,
    /// `occurredAt` - due.
    event: Lateness,
    /// Arrival on the feed - due.
    seen: Lateness,
    /// Wall clock at `base` (the feed hands out instants).
    base: (Instant, i64),
    seen_orders: Mutex<std::collections::HashSet<u64>>,
    confirmed: AtomicU64,
    other: Mutex<BTreeMap<String, u64>>,
    /// `order.confirmed` events whose `occurredAt` did not parse.
    unparsed: AtomicU64,
}

impl Timers {
    fn on_page(&self, events: Vec<FeedEvent>, at: Instant) {
        let at_us = self.base.1
            + i64::try_from(at.saturating_duration_since(self.base.0).as_micros()).unwrap_or(0);
        for ev in events {
            let (Some(how), Some(n)) = (
                Resolution::of(&ev.kind),
                order_number(&self.prefix, &ev.order_id),
            ) else {
                continue;
            };
            if !self
                .seen_orders
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(n)
            {
                continue; // a later change of the same order
            }
            match how {
                Resolution::Confirmed => {
                    self.confirmed.fetch_add(1, Ordering::Relaxed);
                    self.seen.record(at_us, self.due_us);
                    match ev
                        .occurred_at
                        .as_deref()
                        .and_then(|t| humantime::parse_rfc3339(t).ok())
                    {
                        Some(t) => self.event.record(unix_us(t), self.due_us),
                        None => {
                            self.unparsed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Resolution::Other(status) => {
                    *self
                        .other
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(status)
                        .or_default() += 1;
                }
            }
        }
    }

    fn resolved(&self) -> u64 {
        self.seen_orders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len() as u64
    }
}

/// `GET /v1/admin/queues`: commands waiting or in flight, and timers pending.
async fn queue_state(
    client: &reqwest::Client,
    base_url: &str,
    key: &str,
) -> anyhow::Result<(u64, u64)> {
    let v: Value = client
        .get(format!("{base_url}/v1/admin/queues"))
        .header("x-api-key", key)
        .send()
        .await
        .context("GET /v1/admin/queues")?
        .error_for_status()
        .context("GET /v1/admin/queues")?
        .json()
        .await
        .context("GET /v1/admin/queues: body")?;
    let n = |p: &str| v.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    Ok((
        n("/commands/visible") + n("/commands/inFlight"),
        n("/workflowTimers"),
    ))
}

async fn lateness(args: &WorkflowArgs, base_url: &str) -> anyhow::Result<()> {
    let started_at = SystemTime::now();
    let id_prefix = format!("lt-{}-", run_id(started_at));
    let due_us = unix_us(started_at + args.lead);
    let due_ms = due_us.div_euclid(1000);
    let due_us = due_ms * 1000;
    let due_at = UNIX_EPOCH + Duration::from_millis(u64::try_from(due_ms).unwrap_or(0));
    let orders = Arc::new(order_client(
        args,
        base_url,
        &id_prefix,
        args.create_clients as usize,
        Some(json!({ "dueAt": due_ms })),
    )?);
    let feed = Arc::new(Feed::new(base_url, &args.admin_key, args.timeout)?);
    let cursor = feed.end_cursor().await?;
    let timers = Arc::new(Timers {
        prefix: id_prefix.clone(),
        due_us,
        event: Lateness::default(),
        seen: Lateness::default(),
        base: (Instant::now(), unix_us(SystemTime::now())),
        seen_orders: Mutex::new(std::collections::HashSet::new()),
        confirmed: AtomicU64::new(0),
        other: Mutex::new(BTreeMap::new()),
        unparsed: AtomicU64::new(0),
    });
    let tail = {
        let timers = timers.clone();
        tokio::spawn(
            feed.clone()
                .tail(cursor, move |events, at| timers.on_page(events, at)),
        )
    };
    eprintln!(
        "workflow lateness: {} orders -> {base_url}, every one due at {} ({} ahead), order ids {id_prefix}<n>",
        args.orders,
        humantime::format_rfc3339_millis(due_at),
        humantime::format_duration(args.lead),
    );

    // Create every order, as fast as the clients can.
    let t_create = Instant::now();
    let posts = Arc::new(Counters::default());
    let next = Arc::new(AtomicU64::new(0));
    let mut creators = JoinSet::new();
    for _ in 0..args.create_clients {
        let (orders, posts, next, total) =
            (orders.clone(), posts.clone(), next.clone(), args.orders);
        creators.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return;
                }
                posts.add(orders.post(n).await);
            }
        });
    }
    while creators.join_next().await.is_some() {}
    let created_in = t_create.elapsed();
    let accepted = posts.ok();
    eprintln!(
        "created {accepted} orders in {:.2} s; errors {:?}",
        created_in.as_secs_f64(),
        posts.errors()
    );

    // Every new order's command run and its timer scheduled, before the due time?
    let mut ready_before_due_ms = None;
    let mut timers_pending_max = 0;
    while unix_us(SystemTime::now()) < due_us {
        match queue_state(&orders.client, base_url, &args.admin_key).await {
            Ok((commands, pending)) => {
                timers_pending_max = timers_pending_max.max(pending);
                if commands == 0 && pending + timers.resolved() >= accepted {
                    ready_before_due_ms =
                        Some((due_us - unix_us(SystemTime::now())) as f64 / 1000.0);
                    break;
                }
            }
            Err(e) => eprintln!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match ready_before_due_ms {
        Some(ms) => eprintln!("every timer scheduled {ms:.0} ms before it is due"),
        None => eprintln!(
            "not every timer was scheduled before the due time (most seen pending: {timers_pending_max}): \
             the lateness below includes the backlog; use a longer --lead"
        ),
    }

    // Wait for every order's change, or the drain's end.
    let deadline = due_at + args.drain;
    while timers.resolved() < accepted && SystemTime::now() < deadline {
        stats::progress_line(format_args!(
            "[workflow] lateness: {} of {accepted} orders moved",
            timers.resolved()
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tail.abort();
    eprintln!();
    let metrics = herald_metrics(&orders.client, base_url, &args.admin_key).await;

    let report = LatenessReport {
        args,
        base_url,
        started_at,
        due_at,
        created_in,
        posts: &posts,
        ready_before_due_ms,
        timers_pending_max,
        timers: &timers,
        herald_histogram: metrics
            .as_deref()
            .and_then(|m| prom::histogram(m, "herald_workflow_timer_lateness_seconds")),
        herald: herald_counters(metrics.as_deref()),
        feed_errors: feed.errors.load(Ordering::Relaxed),
    };
    print!("{}", report.table().render());
    if let Some(path) = &args.out.json {
        stats::write_json(path, &report.json())?;
    }
    if let Some(path) = &args.out.svg {
        let event = timers.event.hist.snapshot();
        let seen = timers.seen.hist.snapshot();
        stats::write_svg(
            path,
            &report.title(),
            &[("occurredAt - dueAt", &event), ("seen - dueAt", &seen)],
        )?;
    }
    Ok(())
}

struct LatenessReport<'a> {
    args: &'a WorkflowArgs,
    base_url: &'a str,
    started_at: SystemTime,
    due_at: SystemTime,
    created_in: Duration,
    posts: &'a Counters,
    ready_before_due_ms: Option<f64>,
    timers_pending_max: u64,
    timers: &'a Timers,
    herald_histogram: Option<prom::Histogram>,
    herald: Value,
    feed_errors: u64,
}

impl LatenessReport<'_> {
    fn missing(&self) -> u64 {
        self.posts.ok().saturating_sub(self.timers.resolved())
    }

    fn title(&self) -> String {
        format!(
            "workflow timer lateness{}: {} timers due at once against {}",
            self.args.out.tag(),
            self.args.orders,
            self.base_url
        )
    }

    fn herald_json(&self) -> Value {
        let Some(h) = &self.herald_histogram else {
            return Value::Null;
        };
        let ms = |s: Option<f64>| s.map(|s| s * 1000.0);
        json!({
            "count": h.count,
            "mean_ms": ms(h.mean()),
            "p50_ms": ms(h.quantile(0.5)),
            "p99_ms": ms(h.quantile(0.99)),
            "p50_bucket_ms": ms(h.quantile_bound(0.5)),
            "p99_bucket_ms": ms(h.quantile_bound(0.99)),
            "max_bucket_ms": ms(h.quantile_bound(1.0)),
            "buckets": h.buckets,
        })
    }

    fn table(&self) -> Table {
        let mut t = Table::default();
        t.section(self.title());
        t.row("orders accepted", self.posts.ok().to_string())
            .row(
                "created in",
                format!("{:.2} s", self.created_in.as_secs_f64()),
            )
            .row(
                "every timer scheduled",
                self.ready_before_due_ms.map_or_else(
                    || "NOT before the due time".to_string(),
                    |ms| format!("{ms:.0} ms before the due time"),
                ),
            )
            .row(
                "confirmed",
                self.timers.confirmed.load(Ordering::Relaxed).to_string(),
            );
        t.latency(
            "occurredAt - dueAt",
            self.timers.event.hist.summary().as_ref(),
        );
        t.latency("seen - dueAt", self.timers.seen.hist.summary().as_ref());
        for (label, l) in [("event", &self.timers.event), ("seen", &self.timers.seen)] {
            let early = l.early.load(Ordering::Relaxed);
            if early > 0 {
                t.row(format!("{label} BEFORE the due time"), early.to_string());
            }
        }
        let h = self.herald_json();
        if !h.is_null() {
            let ms = |k: &str| h[k].as_f64().map_or_else(|| "-".into(), stats::ms);
            t.row("herald timer lateness count", format!("{}", h["count"]))
                .row(
                    "herald timer lateness p50",
                    format!("{} (bucket <= {})", ms("p50_ms"), ms("p50_bucket_ms")),
                )
                .row(
                    "herald timer lateness p99",
                    format!("{} (bucket <= {})", ms("p99_ms"), ms("p99_bucket_ms")),
                )
                .row("herald timer lateness mean", ms("mean_ms"));
        }
        for (status, n) in self
            .timers
            .other
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            t.row(format!("ended {status}"), n.to_string());
        }
        t.row(
            format!(
                "missing after {}",
                humantime::format_duration(self.args.drain)
            ),
            self.missing().to_string(),
        );
        for (k, v) in self.posts.errors() {
            t.row(format!("POST error {k}"), v.to_string());
        }
        if self.feed_errors > 0 {
            t.row("event feed errors", self.feed_errors.to_string());
        }
        t
    }

    fn json(&self) -> Value {
        json!({
            "scenario": "workflow",
            "mode": "lateness",
            "label": self.args.out.label,
            "url": self.base_url,
            "orders": self.args.orders,
            "accepted": self.posts.ok(),
            "errors": self.posts.errors(),
            "create_clients": self.args.create_clients,
            "lead_s": self.args.lead.as_secs_f64(),
            "due_at": humantime::format_rfc3339_millis(self.due_at).to_string(),
            "created_in_s": self.created_in.as_secs_f64(),
            "timers_ready_before_due_ms": self.ready_before_due_ms,
            "timers_pending_max": self.timers_pending_max,
            "confirmed": self.timers.confirmed.load(Ordering::Relaxed),
            "ended_otherwise": *self.timers.other.lock().unwrap_or_else(|e| e.into_inner()),
            "missing": self.missing(),
            "drain_s": self.args.drain.as_secs_f64(),
            "event_lateness_ms": self.timers.event.hist.summary(),
            "event_early": self.timers.event.early.load(Ordering::Relaxed),
            "occurred_at_unparsed": self.timers.unparsed.load(Ordering::Relaxed),
            "seen_lateness_ms": self.timers.seen.hist.summary(),
            "seen_early": self.timers.seen.early.load(Ordering::Relaxed),
            "herald_timer_lateness": self.herald_json(),
            "herald_metrics": self.herald,
            "event_feed_errors": self.feed_errors,
            "started_at": humantime::format_rfc3339_seconds(self.started_at).to_string(),
            "machine": sys::machine(),
            "tool": { "name": env!("CARGO_PKG_NAME"), "version": env!("CARGO_PKG_VERSION") },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, order_id: &str, occurred_at: &str) -> FeedEvent {
        serde_json::from_value(json!({
            "type": kind, "orderId": order_id, "occurredAt": occurred_at, "eventId": "1-0"
        }))
        .expect("event")
    }

    #[test]
    fn an_order_is_resolved_by_its_first_change_out_of_accepted() {
        assert_eq!(Resolution::of("order.accepted"), None);
        assert_eq!(
            Resolution::of("order.confirmed"),
            Some(Resolution::Confirmed)
        );
        assert_eq!(
            Resolution::of("order.rejected"),
            Some(Resolution::Other("rejected".into()))
        );
    }

    #[tokio::test]
    async fn a_waiting_client_gets_its_orders_outcome_once() {
        let w = Waiters::new();
        let rx = w.register(7);
        let at = Instant::now();
        w.resolve(7, Resolution::Confirmed, at);
        w.resolve(7, Resolution::Other("cancelled".into()), at); // no waiter any more
        assert_eq!(rx.await.expect("resolved"), (Resolution::Confirmed, at));
        w.resolve(8, Resolution::Confirmed, at); // nobody's: ignored
    }

    fn timers(due_us: i64) -> (Timers, Instant) {
        let base = Instant::now();
        let t = Timers {
            prefix: "lt-x-".into(),
            due_us,
            event: Lateness::default(),
            seen: Lateness::default(),
            base: (base, due_us),
            seen_orders: Mutex::new(std::collections::HashSet::new()),
            confirmed: AtomicU64::new(0),
            other: Mutex::new(BTreeMap::new()),
            unparsed: AtomicU64::new(0),
        };
        (t, base)
    }

    #[test]
    fn lateness_runs_from_the_due_time_to_the_event_and_to_its_arrival() {
        // Due at 2026-12-07T23:50:00.000Z; the page arrives 40 ms after it.
        let due = humantime::parse_rfc3339("2026-12-07T23:50:00.000Z").expect("time");
        let (t, base) = timers(unix_us(due));
        t.on_page(
            vec![
                event("order.accepted", "lt-x-1", "2026-12-07T23:49:55.000Z"),
                event("order.confirmed", "lt-x-1", "2026-12-07T23:50:00.012Z"),
                event("order.confirmed", "lt-x-1", "2026-12-07T23:50:01.000Z"),
                event("order.cancelled", "lt-x-2", "2026-12-07T23:50:00.020Z"),
                event("order.confirmed", "lt-y-3", "2026-12-07T23:50:00.020Z"),
            ],
            base + Duration::from_millis(40),
        );
        assert_eq!(t.resolved(), 2);
        assert_eq!(t.confirmed.load(Ordering::Relaxed), 1);
        let e = t.event.hist.summary().expect("one sample");
        assert_eq!(e.count, 1);
        assert!((12.0..12.02).contains(&e.max), "{}", e.max);
        let s = t.seen.hist.summary().expect("one sample");
        assert!((40.0..40.05).contains(&s.max), "{}", s.max);
        assert_eq!(t.other.lock().expect("lock")["cancelled"], 1);
    }

    #[test]
    fn a_change_before_the_due_time_is_counted_early() {
        let due = humantime::parse_rfc3339("2026-12-07T23:50:00.000Z").expect("time");
        let (t, base) = timers(unix_us(due));
        t.on_page(
            vec![event(
                "order.confirmed",
                "lt-x-1",
                "2026-12-07T23:49:59.990Z",
            )],
            base,
        );
        assert_eq!(t.event.early.load(Ordering::Relaxed), 1);
        assert_eq!(t.seen.early.load(Ordering::Relaxed), 0);
    }
}
