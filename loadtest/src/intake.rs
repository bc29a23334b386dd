//! The `intake` scenario: `POST /v1/orders` under load.
//!
//! - Closed loop (`--clients N`): N clients, each sending its next order when the previous one
//!   was answered. Latency is measured from the actual send.
//! - Open loop (`--rate R`): the k-th order is due at `start + k / R` (see [`crate::rate`]);
//!   latency is measured from that intended time, so a server that stalls cannot hide the
//!   queue it built up. `--max-in-flight` caps concurrent requests; sends blocked by the cap
//!   are late, and that lateness counts.
//! - `--confirm-latency`: tails `GET /v1/events` (long-poll) and records, per order, the time
//!   from sending its POST to receiving its `order.confirmed` event. Orders carry client-made
//!   ids `lt-<run>-<n>`, so the event can be matched to the send time.
//!
//! The run is `--warmup` then `--duration`; only requests due (open loop) or started (closed
//! loop) in the measured window count in the results.

use crate::feed::Feed;
use crate::rate::{self, Schedule};
use crate::stats::{self, Counters, LatencySummary, Outcome, SharedHistogram, Table};
use crate::sys;
use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::task::JoinSet;

#[derive(Args, Debug)]
pub struct IntakeArgs {
    /// Base URL of a Herald node; several, comma-separated (`http://a,http://b`), spread the
    /// orders round-robin over the nodes (order `n` goes to node `n mod count`). The event
    /// feed (`--confirm-latency`) is read from the first.
    #[arg(long, default_value = "http://127.0.0.1:8080", value_delimiter = ',', num_args = 1..)]
    url: Vec<String>,

    /// API key sent as `x-api-key` (admin or partner key).
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    api_key: String,

    /// Key for the event feed (`--confirm-latency` needs an admin key); defaults to --api-key.
    #[arg(long, env = "HERALD_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,

    /// Closed loop: this many concurrent clients, each sending its next order as soon as the
    /// previous one was answered (the default mode, with 16 clients).
    #[arg(long, conflicts_with = "rate", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    clients: Option<u32>,

    /// Open loop: send this many orders per second on a fixed schedule; latency is measured
    /// from each order's scheduled send time.
    #[arg(long)]
    rate: Option<f64>,

    /// Open loop: most requests in flight at once (default 1000); sends held back by it are
    /// late, and their lateness counts in the latency. Sends still not made 1 s after the
    /// window are reported as `unsent` errors.
    #[arg(long, requires = "rate", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_in_flight: Option<u32>,

    /// Measured window (after the warm-up), e.g. 10s, 1m, 500ms.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,

    /// Warm-up before the measured window; its requests are not counted.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,

    /// Also measure accept -> confirmed latency by tailing GET /v1/events.
    #[arg(long)]
    confirm_latency: bool,

    /// How long after the last response to wait for outstanding confirmations.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    confirm_grace: Duration,

    /// Per-request timeout (a timed-out request counts as an error).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,

    /// Orders are spread over this many customer ids (`c-0` ..).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    customers: u64,

    /// Line items per order.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    items: u32,

    #[command(flatten)]
    pub out: stats::Output,
}

const DEFAULT_CLIENTS: u32 = 16;
const DEFAULT_MAX_IN_FLIGHT: u32 = 1000;

#[derive(Clone, Copy, Debug)]
enum Mode {
    Closed { clients: u32 },
    Open { rate: f64, max_in_flight: u32 },
}

impl Mode {
    fn from_args(a: &IntakeArgs) -> anyhow::Result<Self> {
        match a.rate {
            Some(rate) if !(rate.is_finite() && rate > 0.0) => {
                bail!("--rate must be a positive number of requests per second")
            }
            Some(rate) => Ok(Mode::Open {
                rate,
                max_in_flight: a.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT),
            }),
            None => Ok(Mode::Closed {
                clients: a.clients.unwrap_or(DEFAULT_CLIENTS),
            }),
        }
    }

    fn concurrency(self) -> usize {
        match self {
            Mode::Closed { clients } => clients as usize,
            Mode::Open { max_in_flight, .. } => max_in_flight as usize,
        }
    }

    fn describe(self) -> String {
        match self {
            Mode::Closed { clients } => format!("closed loop, {clients} clients"),
            Mode::Open {
                rate,
                max_in_flight,
            } => format!("open loop, {rate} req/s, max {max_in_flight} in flight"),
        }
    }
}

/// Request outcomes and latencies of one phase (warm-up or measured).
#[derive(Default)]
struct Phase {
    latency: SharedHistogram,
    send_lag: SharedHistogram,
    counters: Counters,
}

/// Everything the request tasks share.
struct Ctx {
    orders: OrderClient,
    warm_end: Instant,
    end: Instant,
    warmup: Phase,
    measured: Phase,
    /// 202s received (by arrival time) inside the measured window: the throughput. Under
    /// overload in open loop the responses arriving in the window are mostly to sends that
    /// were due earlier, so counting by due time would understate what the server delivered.
    accepted_in_window: AtomicU64,
    /// Across both phases, for the progress line.
    completed: AtomicU64,
    failed: AtomicU64,
    in_flight: AtomicU64,
    next_n: AtomicU64,
    /// Every request has been answered; only confirmations are awaited now.
    load_done: AtomicBool,
    pending: Option<Arc<Pending>>,
}

/// The number `n` of an order id `{id_prefix}{n}`; `None` for anyone else's id.
pub fn order_number(id_prefix: &str, order_id: &str) -> Option<u64> {
    order_id.strip_prefix(id_prefix)?.parse().ok()
}

/// Sends this run's orders: `POST /v1/orders` with client-made ids `{id_prefix}{n}`, spread
/// over customers `{customer_prefix}{n mod customers}`, in a valid currency (so the worker
/// confirms them). Shared by `intake`, `e2e` and `workflow`.
pub struct OrderClient {
    pub client: reqwest::Client,
    /// `{base}/v1/orders` of each node; order `n` goes to `orders_urls[n mod len]`.
    pub orders_urls: Vec<String>,
    pub api_key: String,
    pub id_prefix: String,
    pub customer_prefix: String,
    pub customers: u64,
    pub items: u32,
    /// The orders' `metadata` (the same for every order), or none.
    pub metadata: Option<serde_json::Value>,
}

impl OrderClient {
    /// The HTTP client for order requests: HTTP/1.1 keep-alive, up to `concurrency` idle
    /// connections kept, `timeout` per request.
    pub fn http_client(concurrency: usize, timeout: Duration) -> anyhow::Result<reqwest::Client> {
        reqwest::Client::builder()
            .http1_only()
            .tcp_nodelay(true)
            .no_proxy()
            .pool_max_idle_per_host(concurrency)
            .pool_idle_timeout(Duration::from_secs(90))
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()
            .context("building the HTTP client")
    }

    /// The customer order `n` belongs to (its index among `customers`).
    pub fn customer_of(&self, n: u64) -> u64 {
        n % self.customers.max(1)
    }

    /// Where order `n` goes: the nodes in turn.
    pub fn orders_url(&self, n: u64) -> &str {
        let len = self.orders_urls.len().max(1) as u64;
        self.orders_urls
            .get((n % len) as usize)
            .map_or("", String::as_str)
    }

    pub fn body(&self, n: u64) -> String {
        let items = (0..u64::from(self.items))
            .map(|i| {
                format!(
                    r#"{{"sku":"sku-{}","quantity":{},"unitPrice":9.5}}"#,
                    (n + i) % 100,
                    1 + i % 3
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let metadata = self
            .metadata
            .as_ref()
            .map_or_else(String::new, |m| format!(r#","metadata":{m}"#));
        format!(
            r#"{{"orderId":"{}{n}","customerId":"{}{}","items":[{items}],"currency":"USD"{metadata}}}"#,
            self.id_prefix,
            self.customer_prefix,
            self.customer_of(n)
        )
    }

    /// Sends order `n`; `Ok` is a 202.
    pub async fn post(&self, n: u64) -> Outcome {
        let sent = self
            .client
            .post(self.orders_url(n))
            .header("x-api-key", &self.api_key)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(self.body(n))
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return Outcome::Transport(stats::TransportError::classify(&e)),
        };
        let status = resp.status().as_u16();
        // Read the whole body so the connection goes back to the pool.
        match resp.bytes().await {
            Err(e) => Outcome::Transport(stats::TransportError::classify(&e)),
            Ok(_) if status == 202 => Outcome::Ok,
            Ok(_) => Outcome::Status(status),
        }
    }
}

impl Ctx {
    /// A run's context, its counters at zero. `warm_end`/`end` close the warm-up and the
    /// measured window.
    fn new(
        orders: OrderClient,
        warm_end: Instant,
        end: Instant,
        pending: Option<Arc<Pending>>,
    ) -> Ctx {
        Ctx {
            orders,
            warm_end,
            end,
            warmup: Phase::default(),
            measured: Phase::default(),
            accepted_in_window: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            next_n: AtomicU64::new(0),
            load_done: AtomicBool::new(false),
            pending,
        }
    }

    /// Sends order `n`, which was due (open loop) or started (closed loop) at `intended`, and
    /// records the outcome. Latency runs from `intended`.
    async fn one_order(&self, n: u64, intended: Instant) {
        let measured = intended >= self.warm_end;
        let sent = Instant::now();
        if let Some(p) = &self.pending {
            p.sent(n, sent, measured);
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let outcome = self.orders.post(n).await;
        let done = Instant::now();
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(p) = &self.pending {
            if outcome == Outcome::Ok {
                p.accepted(n);
            } else {
                p.failed(n);
            }
        }
        let phase = if measured {
            &self.measured
        } else {
            &self.warmup
        };
        if outcome == Outcome::Ok {
            phase.latency.record(rate::latency_from(intended, done));
            if done >= self.warm_end && done < self.end {
                self.accepted_in_window.fetch_add(1, Ordering::Relaxed);
            }
        }
        phase.send_lag.record(rate::latency_from(intended, sent));
        phase.counters.add(outcome);
        self.completed.fetch_add(1, Ordering::Relaxed);
        if outcome != Outcome::Ok {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Orders sent but not yet seen confirmed (or rejected) on the event feed.
struct Pending {
    base: Instant,
    shards: Vec<Mutex<HashMap<u64, PendingOrder>>>,
    /// Measured, accepted, not yet confirmed or rejected.
    outstanding: AtomicU64,
    /// accept -> confirmed latency of measured orders.
    latency: SharedHistogram,
    confirmed_total: AtomicU64,
    rejected_measured: AtomicU64,
}

#[derive(Clone, Copy)]
struct PendingOrder {
    sent_us: u64,
    measured: bool,
    accepted: bool,
}

enum Resolution {
    Confirmed,
    Rejected,
}

impl Pending {
    const SHARDS: usize = 64;

    fn new(base: Instant) -> Self {
        Self {
            base,
            shards: (0..Self::SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            outstanding: AtomicU64::new(0),
            latency: SharedHistogram::default(),
            confirmed_total: AtomicU64::new(0),
            rejected_measured: AtomicU64::new(0),
        }
    }

    fn shard(&self, n: u64) -> std::sync::MutexGuard<'_, HashMap<u64, PendingOrder>> {
        self.shards[(n % Self::SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Called before the POST leaves (its event may arrive before its response).
    fn sent(&self, n: u64, at: Instant, measured: bool) {
        let sent_us =
            u64::try_from(at.saturating_duration_since(self.base).as_micros()).unwrap_or(u64::MAX);
        self.shard(n).insert(
            n,
            PendingOrder {
                sent_us,
                measured,
                accepted: false,
            },
        );
    }

    fn accepted(&self, n: u64) {
        // Absent if the event already came in: then it is resolved already.
        if let Some(o) = self.shard(n).get_mut(&n) {
            o.accepted = true;
            if o.measured {
                self.outstanding.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn failed(&self, n: u64) {
        if let Some(o) = self.shard(n).remove(&n)
            && o.accepted
            && o.measured
        {
            self.outstanding.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn resolve(&self, n: u64, how: Resolution, at: Instant) {
        let Some(o) = self.shard(n).remove(&n) else {
            return; // not ours, or seen already
        };
        if o.accepted && o.measured {
            self.outstanding.fetch_sub(1, Ordering::Relaxed);
        }
        match how {
            Resolution::Confirmed => {
                self.confirmed_total.fetch_add(1, Ordering::Relaxed);
                if o.measured {
                    let at_us = at.saturating_duration_since(self.base).as_micros();
                    let us = u64::try_from(at_us)
                        .unwrap_or(u64::MAX)
                        .saturating_sub(o.sent_us);
                    self.latency.record(Duration::from_micros(us));
                }
            }
            Resolution::Rejected if o.measured => {
                self.rejected_measured.fetch_add(1, Ordering::Relaxed);
            }
            Resolution::Rejected => {}
        }
    }

    fn outstanding(&self) -> u64 {
        self.outstanding.load(Ordering::Relaxed)
    }
}

pub async fn run(args: IntakeArgs) -> anyhow::Result<()> {
    let mode = Mode::from_args(&args)?;
    if args.duration.is_zero() {
        bail!("--duration must be positive");
    }
    let base_urls: Vec<String> = args
        .url
        .iter()
        .map(|u| u.trim_end_matches('/').to_string())
        .collect();
    for u in &base_urls {
        reqwest::Url::parse(u).with_context(|| format!("--url {u}"))?;
    }
    let Some(base_url) = base_urls.first().cloned() else {
        bail!("--url: at least one URL");
    };
    let all_urls = base_urls.join(",");
    let started_at = SystemTime::now();
    let run_id = run_id(started_at);
    let id_prefix = format!("lt-{run_id}-");

    let client = OrderClient::http_client(mode.concurrency(), args.timeout)?;

    // The feed cursor is fixed before the first order goes out, so no confirmation is missed.
    let feed = if args.confirm_latency {
        let key = args.admin_key.as_deref().unwrap_or(&args.api_key);
        let feed = Arc::new(Feed::new(&base_url, key, args.timeout)?);
        let cursor = feed.end_cursor().await.context("--confirm-latency")?;
        Some((feed, cursor))
    } else {
        None
    };

    eprintln!(
        "intake: {} -> {all_urls} (/v1/orders), warm-up {}, measure {}{}, order ids {id_prefix}<n>",
        mode.describe(),
        humantime::format_duration(args.warmup),
        humantime::format_duration(args.duration),
        if args.confirm_latency {
            ", with confirm latency"
        } else {
            ""
        },
    );

    let t0 = Instant::now();
    let pending = feed.as_ref().map(|_| Arc::new(Pending::new(t0)));
    let orders = OrderClient {
        client,
        orders_urls: base_urls.iter().map(|u| format!("{u}/v1/orders")).collect(),
        api_key: args.api_key.clone(),
        id_prefix: id_prefix.clone(),
        customer_prefix: "c-".into(),
        customers: args.customers,
        items: args.items,
        metadata: None,
    };
    let ctx = Arc::new(Ctx::new(
        orders,
        t0 + args.warmup,
        t0 + args.warmup + args.duration,
        pending.clone(),
    ));

    let tail = match (&feed, &pending) {
        (Some((feed, cursor)), Some(p)) => {
            let (p, prefix) = (p.clone(), id_prefix.clone());
            Some(tokio::spawn(feed.clone().tail(
                cursor.clone(),
                move |events, at| {
                    for ev in events {
                        let how = match ev.kind.as_str() {
                            "order.confirmed" => Resolution::Confirmed,
                            "order.rejected" => Resolution::Rejected,
                            _ => continue,
                        };
                        if let Some(n) = order_number(&prefix, &ev.order_id) {
                            p.resolve(n, how, at);
                        }
                    }
                },
            )))
        }
        _ => None,
    };
    let progress = tokio::spawn(progress(ctx.clone(), t0));

    let missed = match mode {
        Mode::Closed { clients } => {
            closed_loop(&ctx, clients).await;
            0
        }
        Mode::Open {
            rate,
            max_in_flight,
        } => open_loop(&ctx, t0, rate, max_in_flight).await?,
    };

    ctx.load_done.store(true, Ordering::Relaxed);
    let mut unconfirmed = None;
    if let (Some(p), Some(tail)) = (&pending, tail) {
        let deadline = Instant::now() + args.confirm_grace;
        while p.outstanding() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tail.abort();
        unconfirmed = Some(p.outstanding());
    }
    progress.abort();
    eprintln!();

    let report = Report {
        args: &args,
        mode,
        base_url: &all_urls,
        nodes: base_urls.len(),
        started_at,
        measured: &ctx.measured,
        accepted_in_window: ctx.accepted_in_window.load(Ordering::Relaxed),
        missed,
        pending: pending.as_deref(),
        unconfirmed,
        feed_errors: feed.as_ref().map(|(f, _)| f.errors.load(Ordering::Relaxed)),
    };
    print!("{}", report.table().render());
    if let Some(path) = &args.out.json {
        stats::write_json(path, &report.json())?;
    }
    if let Some(path) = &args.out.svg {
        let accept = ctx.measured.latency.snapshot();
        let confirm = pending.as_ref().map(|p| p.latency.snapshot());
        let mut curves = vec![("accept", &accept)];
        if let Some(c) = &confirm {
            curves.push(("accept->confirmed", c));
        }
        stats::write_svg(path, &report.title(), &curves)?;
    }
    Ok(())
}

/// A short id unique to this run: the start time in seconds and the pid, in hex.
pub fn run_id(started_at: SystemTime) -> String {
    let secs = started_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{secs:x}{:x}", std::process::id())
}

async fn closed_loop(ctx: &Arc<Ctx>, clients: u32) {
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        let ctx = ctx.clone();
        tasks.spawn(async move {
            loop {
                let start = Instant::now();
                if start >= ctx.end {
                    break;
                }
                let n = ctx.next_n.fetch_add(1, Ordering::Relaxed);
                ctx.one_order(n, start).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Open loop: each send is a task holding one in-flight permit ([`rate::open_loop_tasks`]).
/// Returns the sends missed in the measured window.
async fn open_loop(
    ctx: &Arc<Ctx>,
    t0: Instant,
    rate: f64,
    max_in_flight: u32,
) -> anyhow::Result<u64> {
    let schedule = Schedule::new(t0, rate, ctx.end.duration_since(t0));
    let task_ctx = ctx.clone();
    let pacer = rate::open_loop_tasks(
        schedule,
        crate::publish::CATCH_UP,
        max_in_flight,
        move |k, due| {
            let ctx = task_ctx.clone();
            async move { ctx.one_order(k, due).await }
        },
    )
    .await?;
    Ok(pacer.missed_since(ctx.warm_end))
}

/// The `\r`-updated progress line on stderr, once a second.
async fn progress(ctx: Arc<Ctx>, t0: Instant) {
    let mut ticker = stats::Ticker::new(t0);
    let mut completed = stats::LiveRate::default();
    loop {
        let tick = ticker.tick().await;
        let rps = completed.per_s(ctx.completed.load(Ordering::Relaxed), &tick);
        let now = tick.now;
        let (phase, p99) = if now < ctx.warm_end {
            ("warmup", ctx.warmup.latency.quantile_ms(0.99))
        } else if now < ctx.end {
            ("measure", ctx.measured.latency.quantile_ms(0.99))
        } else if ctx.load_done.load(Ordering::Relaxed) {
            ("confirm", ctx.measured.latency.quantile_ms(0.99))
        } else {
            ("drain", ctx.measured.latency.quantile_ms(0.99))
        };
        let p99 = p99.map_or_else(|| "-".to_string(), stats::ms);
        let confirmed = ctx.pending.as_ref().map_or_else(String::new, |p| {
            format!("  confirmed {}", p.confirmed_total.load(Ordering::Relaxed))
        });
        stats::progress_line(format_args!(
            "[intake] {:>6.1}s {phase:<7} {rps:>9.0} req/s  p99 {p99}  errors {}  in-flight {}{confirmed}",
            tick.elapsed_s,
            ctx.failed.load(Ordering::Relaxed),
            ctx.in_flight.load(Ordering::Relaxed),
        ));
    }
}

struct Report<'a> {
    args: &'a IntakeArgs,
    mode: Mode,
    /// The nodes' base URLs, comma-separated.
    base_url: &'a str,
    nodes: usize,
    started_at: SystemTime,
    measured: &'a Phase,
    accepted_in_window: u64,
    missed: u64,
    pending: Option<&'a Pending>,
    unconfirmed: Option<u64>,
    feed_errors: Option<u64>,
}

impl Report<'_> {
    fn accepted(&self) -> u64 {
        self.measured.counters.ok()
    }

    /// 202s that arrived during the measured window, per second.
    fn throughput(&self) -> f64 {
        self.accepted_in_window as f64 / self.args.duration.as_secs_f64()
    }

    fn errors(&self) -> std::collections::BTreeMap<String, u64> {
        let mut e = self.measured.counters.errors();
        if self.missed > 0 {
            e.insert("unsent".into(), self.missed);
        }
        e
    }

    /// The run's heading: label, mode and server.
    fn title(&self) -> String {
        format!(
            "intake{}: {} against {}",
            self.args.out.tag(),
            self.mode.describe(),
            self.base_url
        )
    }

    fn table(&self) -> Table {
        let accept = self.measured.latency.summary();
        let mut t = Table::default();
        t.section(self.title());
        t.row(
            "measured window",
            format!("{:.2} s", self.args.duration.as_secs_f64()),
        )
        .row(
            "requests",
            (self.accepted() + self.measured.counters.error_total()).to_string(),
        )
        .row("accepted (202)", self.accepted().to_string())
        .row("throughput", format!("{:.1} accepted/s", self.throughput()));
        if let Mode::Open { rate, .. } = self.mode {
            t.row("offered", format!("{rate} req/s"));
        }
        t.latency("accept latency", accept.as_ref());
        if let Mode::Open { .. } = self.mode
            && let Some(lag) = self.measured.send_lag.summary()
        {
            t.row(
                "send lag p99 / max",
                format!("{} / {}", stats::ms(lag.p99), stats::ms(lag.max)),
            );
        }
        let errors = self.errors();
        if errors.is_empty() {
            t.row("errors", "0");
        } else {
            for (k, v) in &errors {
                t.row(format!("error {k}"), v.to_string());
            }
        }
        if let Some(p) = self.pending {
            let s = p.latency.summary();
            match &s {
                None => {
                    t.row("accept->confirmed", "no samples");
                }
                Some(s) => {
                    t.row("accept->confirmed p50", stats::ms(s.p50))
                        .row("accept->confirmed p99", stats::ms(s.p99))
                        .row("accept->confirmed p99.9", stats::ms(s.p999))
                        .row("accept->confirmed max", stats::ms(s.max));
                }
            }
            t.row(
                format!(
                    "unconfirmed after {}",
                    humantime::format_duration(self.args.confirm_grace)
                ),
                self.unconfirmed.unwrap_or(0).to_string(),
            )
            .row(
                "rejected",
                p.rejected_measured.load(Ordering::Relaxed).to_string(),
            );
            if let Some(n) = self.feed_errors.filter(|&n| n > 0) {
                t.row("event feed errors", n.to_string());
            }
        }
        t
    }

    fn json(&self) -> serde_json::Value {
        let (clients, rate, max_in_flight) = match self.mode {
            Mode::Closed { clients } => (Some(clients), None, None),
            Mode::Open {
                rate,
                max_in_flight,
            } => (None, Some(rate), Some(max_in_flight)),
        };
        let open = matches!(self.mode, Mode::Open { .. });
        json!({
            "scenario": "intake",
            "label": self.args.out.label,
            "url": self.base_url,
            "nodes": self.nodes,
            "mode": if open { "open" } else { "closed" },
            "clients": clients,
            "rate": rate,
            "max_in_flight": max_in_flight,
            "duration_s": self.args.duration.as_secs_f64(),
            "warmup_s": self.args.warmup.as_secs_f64(),
            "requests": self.accepted() + self.measured.counters.error_total(),
            "accepted": self.accepted(),
            "errors": self.errors(),
            "throughput_per_s": self.throughput(),
            "accept_latency_ms": self.measured.latency.summary(),
            "send_lag_ms": if open { self.measured.send_lag.summary() } else { None::<LatencySummary> },
            "confirm_latency_ms": self.pending.and_then(|p| p.latency.summary()),
            "unconfirmed": self.unconfirmed,
            "rejected": self.pending.map(|p| p.rejected_measured.load(Ordering::Relaxed)),
            "confirm_grace_s": self.pending.map(|_| self.args.confirm_grace.as_secs_f64()),
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

    fn pending() -> (Pending, Instant) {
        let t0 = Instant::now();
        (Pending::new(t0), t0)
    }

    #[test]
    fn confirm_latency_runs_from_send_to_event() {
        let (p, t0) = pending();
        p.sent(7, t0 + Duration::from_millis(10), true);
        p.accepted(7);
        assert_eq!(p.outstanding(), 1);
        p.resolve(7, Resolution::Confirmed, t0 + Duration::from_millis(25));
        assert_eq!(p.outstanding(), 0);
        let s = p.latency.summary().expect("one sample");
        assert_eq!(s.count, 1);
        // 15 ms, within the histogram's 3 significant digits.
        assert!((15.0..15.02).contains(&s.max), "max {}", s.max);
        // A second event for the same order is ignored.
        p.resolve(7, Resolution::Confirmed, t0 + Duration::from_secs(1));
        assert_eq!(p.latency.len(), 1);
    }

    #[test]
    fn event_before_response_is_not_left_outstanding() {
        let (p, t0) = pending();
        p.sent(1, t0, true);
        p.resolve(1, Resolution::Confirmed, t0 + Duration::from_millis(2));
        p.accepted(1); // the 202 arrives after the event
        assert_eq!(p.outstanding(), 0);
        assert_eq!(p.latency.len(), 1);
    }

    #[test]
    fn warmup_orders_and_failures_are_not_counted() {
        let (p, t0) = pending();
        p.sent(1, t0, false);
        p.accepted(1);
        p.sent(2, t0, true);
        p.failed(2);
        p.sent(3, t0, true);
        p.accepted(3);
        assert_eq!(p.outstanding(), 1); // only order 3 is owed a confirmation
        p.resolve(1, Resolution::Confirmed, t0 + Duration::from_millis(1));
        p.resolve(3, Resolution::Rejected, t0 + Duration::from_millis(1));
        assert_eq!(p.outstanding(), 0);
        assert_eq!(p.latency.len(), 0);
        assert_eq!(p.rejected_measured.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn order_numbers_come_only_from_this_runs_ids() {
        assert_eq!(order_number("lt-abc-", "lt-abc-42"), Some(42));
        assert_eq!(order_number("lt-abc-", "lt-abd-42"), None);
        assert_eq!(order_number("lt-abc-", "lt-abc-x"), None);
        assert_eq!(order_number("lt-abc-", "ord-1"), None);
    }

    #[test]
    fn orders_go_round_robin_over_the_nodes() {
        let orders = OrderClient {
            client: reqwest::Client::new(),
            orders_urls: vec!["http://a/v1/orders".into(), "http://b/v1/orders".into()],
            api_key: "k".into(),
            id_prefix: "lt-r-".into(),
            customer_prefix: "c-".into(),
            customers: 10,
            items: 1,
            metadata: None,
        };
        assert_eq!(orders.orders_url(0), "http://a/v1/orders");
        assert_eq!(orders.orders_url(1), "http://b/v1/orders");
        assert_eq!(orders.orders_url(4), "http://a/v1/orders");
    }

    #[test]
    fn order_body_is_valid_json_with_the_run_id() {
        let orders = OrderClient {
            client: reqwest::Client::new(),
            orders_urls: Vec::new(),
            api_key: "k".into(),
            id_prefix: "lt-r-".into(),
            customer_prefix: "c-".into(),
            customers: 10,
            items: 2,
            metadata: Some(serde_json::json!({"dueAt": 1700000000000u64})),
        };
        let v: serde_json::Value = serde_json::from_str(&orders.body(13)).expect("json");
        assert_eq!(v["orderId"], "lt-r-13");
        assert_eq!(v["customerId"], "c-3");
        assert_eq!(v["currency"], "USD");
        assert_eq!(v["items"].as_array().map(Vec::len), Some(2));
        assert_eq!(v["items"][0]["quantity"], 1);
        assert_eq!(v["metadata"]["dueAt"], 1700000000000u64);
    }
}
