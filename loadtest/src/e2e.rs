//! The `e2e` scenario: orders in over HTTP, notifications out on both push paths, and the time
//! from one to the other.
//!
//! - Orders: `POST /v1/orders` in open loop at `--rate R` for `--duration` (the k-th order is
//!   due at `start + k / R`, [`crate::rate`]; the same order client as `intake`). Orders carry
//!   client-made ids `lt-<run>-<n>` and a valid currency, so the worker confirms them, and are
//!   spread over `--subscribers N` customers `lt-<run>-c<i>`.
//! - WebSocket: N connections ([`crate::ws`], graphql-transport-ws or `--protocol appsync`),
//!   connection `i` subscribed to customer `i`'s orders (`onOrderUpdated(customerId:)`), so each
//!   order is owed to exactly one subscriber.
//! - Webhooks: `--endpoints M` endpoints registered with the admin key, each pointing at its
//!   own built-in sink ([`crate::sink`]) that verifies every signature with the secret from the
//!   create response; each order is owed to every endpoint.
//! - Per path: latency from each order's *scheduled* send time to the arrival of its
//!   `order.confirmed` notification (the worker's decision), and from its 202 to the arrival of
//!   its `order.accepted` notification (one that arrives before the 202 counts as 0 and is
//!   counted apart); expected / received / missing / duplicate notifications. Missing: an
//!   accepted order whose `order.confirmed` did not arrive within `--drain` of the last send.

use crate::fanout::end_reason;
use crate::intake::{self, OrderClient};
use crate::rate::{self, Schedule};
use crate::sink::{Behaviour, SinkCounts, WebhookSink};
use crate::stats::{self, Counters, LatencySummary, Outcome, SharedHistogram, Table};
use crate::sys;
use crate::webhooks;
use crate::ws::{self, Endpoint, Protocol, ServerMsg, Topic, Ws};
use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

#[derive(Args, Debug, Clone)]
pub struct E2eArgs {
    /// Base URL of a Herald node running every role (or at least api; the worker, push and
    /// webhooks roles may run elsewhere on the same engine).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// Subscriber endpoint (default: --url's host, `ws://HOST/graphql`).
    #[arg(long)]
    pub ws_url: Option<String>,

    /// Admin key: sends the orders, subscribes, registers (and at the end deletes) the
    /// endpoints.
    #[arg(long, env = "HERALD_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: String,

    /// Orders per second (open loop; latency from each order's scheduled send time).
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,

    /// How long orders are sent.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// WebSocket subscribers, one per customer; orders are spread over them.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub subscribers: u32,

    /// Webhook endpoints (each with its own verifying sink); every order is owed to each.
    /// 0: the WebSocket path only.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub endpoints: u32,

    #[arg(long, value_enum, default_value = "graphql-transport-ws")]
    pub protocol: Protocol,

    /// After the last send, wait at most this long for outstanding notifications; those
    /// still not in are missing.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain: Duration,

    /// Most order requests in flight; sends held back by it are late, and that counts.
    /// Sends still not made 1 s after the window are reported as `unsent` errors.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_in_flight: u32,

    /// Per-request timeout (a timed-out order counts as an error).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Line items per order.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub items: u32,

    /// graphql-transport-ws has no subscription acknowledgement: wait this long after the last
    /// `subscribe` before the first order. (AppSync waits for every `start_ack` instead.)
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub settle: Duration,

    /// Spread subscriber connections over this many loopback source addresses.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u8).range(1..))]
    pub source_ips: u8,

    /// Subscriber connections being opened at once.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub connect_concurrency: u32,

    /// The address the sinks listen on (each on a free port).
    #[arg(long, default_value = "127.0.0.1")]
    pub sink_ip: String,

    #[command(flatten)]
    pub out: stats::Output,
}

/// The two notifications the scenario waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Accepted,
    Confirmed,
}

impl Kind {
    pub fn of(event_type: &str) -> Option<Kind> {
        match event_type {
            "order.accepted" => Some(Kind::Accepted),
            "order.confirmed" => Some(Kind::Confirmed),
            _ => None,
        }
    }
}

/// Which receiver a notification came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    WebSocket,
    /// Endpoint number (from 0).
    Webhook(usize),
}

/// What one receiver got of one order.
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    accepted: u32,
    confirmed: u32,
    /// The `order.accepted` notification came before the 202.
    accepted_early: bool,
}

#[derive(Debug, Default)]
struct OrderState {
    /// When its 202 arrived (since the ledger's start).
    accepted_at: Option<Duration>,
    /// Slot 0: the WebSocket subscriber of its customer; 1 + e: endpoint e.
    seen: Vec<Seen>,
}

/// One path's latency histograms and live counts.
#[derive(Default)]
struct PathStats {
    /// Scheduled send -> `order.confirmed` arrival.
    confirmed: SharedHistogram,
    /// 202 -> `order.accepted` arrival.
    accepted: SharedHistogram,
    /// First `order.confirmed` notifications, for the progress line and the drain.
    confirmed_first: AtomicU64,
}

/// What happened to one notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note {
    First,
    Duplicate,
    /// Not one of this run's orders (or another event type): ignored.
    Foreign,
}

/// Every order of the run against every receiver: which notifications came, when, and how
/// often. Orders are numbered `0..` along the schedule, so the table is sized up front.
pub struct Ledger {
    t0: Instant,
    schedule: Schedule,
    endpoints: usize,
    subscribers: u64,
    /// Per subscriber (customer) index: connected and subscribed.
    connected: Vec<bool>,
    orders: Vec<Mutex<OrderState>>,
    ws: PathStats,
    webhook: PathStats,
    /// Notifications owed so far by the 202s received (for the drain).
    owed_ws: AtomicU64,
    owed_webhook: AtomicU64,
}

/// One path's figures at the end of a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PathSummary {
    /// `order.confirmed` notifications owed: accepted orders times receivers of the path.
    pub expected: u64,
    /// Of those, the ones that arrived.
    pub received: u64,
    pub missing: u64,
    /// Extra copies of a notification (either kind) at a receiver that had it already.
    pub duplicates: u64,
    /// `order.accepted` notifications that arrived before their order's 202.
    pub accepted_before_202: u64,
    /// Notifications for orders that got no 202 (the request failed on the client's side
    /// after the server took it).
    pub unexpected: u64,
    pub confirmed: Option<LatencySummary>,
    pub accepted: Option<LatencySummary>,
}

impl Ledger {
    /// A ledger for `schedule`'s orders, spread over `subscribers` customers (`connected[i]`:
    /// subscriber `i` is subscribed), each owed to every one of `endpoints` endpoints.
    pub fn new(t0: Instant, schedule: Schedule, connected: Vec<bool>, endpoints: usize) -> Self {
        let total = schedule.total();
        Self {
            t0,
            schedule,
            endpoints,
            subscribers: connected.len().max(1) as u64,
            connected,
            orders: (0..total)
                .map(|_| {
                    Mutex::new(OrderState {
                        accepted_at: None,
                        seen: vec![Seen::default(); 1 + endpoints],
                    })
                })
                .collect(),
            ws: PathStats::default(),
            webhook: PathStats::default(),
            owed_ws: AtomicU64::new(0),
            owed_webhook: AtomicU64::new(0),
        }
    }

    fn order(&self, n: u64) -> Option<std::sync::MutexGuard<'_, OrderState>> {
        let m = self.orders.get(usize::try_from(n).ok()?)?;
        Some(m.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn ws_owed(&self, n: u64) -> bool {
        let i = (n % self.subscribers) as usize;
        self.connected.get(i).copied().unwrap_or(false)
    }

    fn stats(&self, path: Path) -> &PathStats {
        match path {
            Path::WebSocket => &self.ws,
            Path::Webhook(_) => &self.webhook,
        }
    }

    fn slot(&self, path: Path) -> Option<usize> {
        match path {
            Path::WebSocket => Some(0),
            Path::Webhook(e) if e < self.endpoints => Some(1 + e),
            Path::Webhook(_) => None,
        }
    }

    /// Order `n`'s 202 arrived at `at`.
    pub fn accepted(&self, n: u64, at: Instant) {
        let Some(mut o) = self.order(n) else { return };
        if o.accepted_at.is_some() {
            return;
        }
        o.accepted_at = Some(at.saturating_duration_since(self.t0));
        // Notifications that beat the 202: `order.accepted` at zero latency from it, and an
        // `order.confirmed` now counts against what is owed.
        for (slot, seen) in o.seen.iter().enumerate() {
            let path = if slot == 0 {
                Path::WebSocket
            } else {
                Path::Webhook(slot - 1)
            };
            if seen.accepted_early {
                self.stats(path).accepted.record(Duration::ZERO);
            }
            if seen.confirmed > 0 {
                self.stats(path)
                    .confirmed_first
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(o);
        if self.ws_owed(n) {
            self.owed_ws.fetch_add(1, Ordering::Relaxed);
        }
        self.owed_webhook
            .fetch_add(self.endpoints as u64, Ordering::Relaxed);
    }

    /// A notification of `kind` about order `n` arrived at `at` over `path`.
    pub fn notified(&self, path: Path, kind: Kind, n: u64, at: Instant) -> Note {
        let (Some(slot), Some(mut o)) = (self.slot(path), self.order(n)) else {
            return Note::Foreign;
        };
        let accepted_at = o.accepted_at;
        let Some(seen) = o.seen.get_mut(slot) else {
            return Note::Foreign;
        };
        let stats = self.stats(path);
        match kind {
            Kind::Confirmed => {
                seen.confirmed += 1;
                if seen.confirmed > 1 {
                    return Note::Duplicate;
                }
                stats
                    .confirmed
                    .record(rate::latency_from(self.schedule.due(n), at));
                // Counted against what is owed only once the order is owed (its 202 came
                // back); a confirmation that beats the 202 is counted by `accepted`.
                if accepted_at.is_some() {
                    stats.confirmed_first.fetch_add(1, Ordering::Relaxed);
                }
            }
            Kind::Accepted => {
                seen.accepted += 1;
                if seen.accepted > 1 {
                    return Note::Duplicate;
                }
                match accepted_at {
                    Some(t) => stats
                        .accepted
                        .record(at.saturating_duration_since(self.t0 + t)),
                    None => seen.accepted_early = true,
                }
            }
        }
        Note::First
    }

    /// Notifications owed and first `order.confirmed` received so far, per path (for the
    /// progress line and to end the drain early).
    pub fn progress(&self) -> [(u64, u64); 2] {
        [
            (
                self.owed_ws.load(Ordering::Relaxed),
                self.ws.confirmed_first.load(Ordering::Relaxed),
            ),
            (
                self.owed_webhook.load(Ordering::Relaxed),
                self.webhook.confirmed_first.load(Ordering::Relaxed),
            ),
        ]
    }

    /// The plot's curves: send->confirmed and 202->accepted for the WebSocket path, and for the
    /// webhook path when endpoints were registered.
    pub fn plot_curves(&self) -> Vec<(&'static str, Histogram<u64>)> {
        let mut curves = vec![
            ("ws send->confirmed", self.ws.confirmed.snapshot()),
            ("ws 202->accepted", self.ws.accepted.snapshot()),
        ];
        if self.endpoints > 0 {
            curves.push(("webhook send->confirmed", self.webhook.confirmed.snapshot()));
            curves.push(("webhook 202->accepted", self.webhook.accepted.snapshot()));
        }
        curves
    }

    /// The figures of both paths, counted over the whole table.
    pub fn summarise(&self) -> [PathSummary; 2] {
        let mut ws = PathSummary::default();
        let mut webhook = PathSummary::default();
        for (n, o) in self.orders.iter().enumerate() {
            let o = o.lock().unwrap_or_else(|e| e.into_inner());
            let n = n as u64;
            for (slot, seen) in o.seen.iter().enumerate() {
                let s = if slot == 0 { &mut ws } else { &mut webhook };
                let owed = slot > 0 || self.ws_owed(n);
                s.duplicates += u64::from(seen.accepted.saturating_sub(1))
                    + u64::from(seen.confirmed.saturating_sub(1));
                if o.accepted_at.is_none() {
                    if seen.accepted + seen.confirmed > 0 {
                        s.unexpected += 1;
                    }
                    continue;
                }
                if seen.accepted_early {
                    s.accepted_before_202 += 1;
                }
                if owed {
                    s.expected += 1;
                    if seen.confirmed > 0 {
                        s.received += 1;
                    } else {
                        s.missing += 1;
                    }
                }
            }
        }
        ws.confirmed = self.ws.confirmed.summary();
        ws.accepted = self.ws.accepted.summary();
        webhook.confirmed = self.webhook.confirmed.summary();
        webhook.accepted = self.webhook.accepted.summary();
        [ws, webhook]
    }
}

/// Reads a notification `{type, orderId}` and books it; `Note::Foreign` for anyone else's.
fn book(
    ledger: &Ledger,
    id_prefix: &str,
    path: Path,
    event_type: &str,
    order_id: &str,
    at: Instant,
) -> Note {
    match (
        Kind::of(event_type),
        intake::order_number(id_prefix, order_id),
    ) {
        (Some(kind), Some(n)) => ledger.notified(path, kind, n, at),
        _ => Note::Foreign,
    }
}

/// A webhook delivery body (`{type, timestamp, data: OrderEvent}`), as far as matching needs.
#[derive(Deserialize)]
struct Delivery {
    #[serde(rename = "type")]
    kind: String,
    data: DeliveryEvent,
}

#[derive(Deserialize)]
struct DeliveryEvent {
    #[serde(rename = "orderId")]
    order_id: String,
}

/// Books a verified webhook body; a body that is not a delivery of an order event is foreign.
fn book_delivery(
    ledger: &Ledger,
    id_prefix: &str,
    endpoint: usize,
    body: &[u8],
    at: Instant,
) -> Note {
    match serde_json::from_slice::<Delivery>(body) {
        Ok(d) => book(
            ledger,
            id_prefix,
            Path::Webhook(endpoint),
            &d.kind,
            &d.data.order_id,
            at,
        ),
        Err(_) => Note::Foreign,
    }
}

/// The order side's counts.
#[derive(Default)]
struct Sending {
    counters: Counters,
    /// Scheduled send -> 202.
    accept: SharedHistogram,
    /// Requests made (answered or failed).
    sent: AtomicU64,
    accepted: AtomicU64,
    failed: AtomicU64,
}

/// One subscriber's end.
#[derive(Default)]
struct SubEnd {
    /// How the connection ended during the run (`None`: still open when stopped).
    lost: Option<String>,
    server_errors: u64,
    first_error: Option<String>,
    foreign: u64,
}

/// Reads subscriber `i`'s notifications until told to stop.
async fn read_notifications(
    mut ws: Ws,
    ledger: Arc<Ledger>,
    id_prefix: Arc<str>,
    mut stop: watch::Receiver<bool>,
) -> SubEnd {
    let mut end = SubEnd::default();
    loop {
        let frame = tokio::select! {
            biased;
            _ = stop.changed() => break,
            f = ws.next() => f,
        };
        let at = Instant::now();
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            other => match end_reason(other) {
                Some(reason) => {
                    end.lost = Some(reason);
                    break;
                }
                None => continue,
            },
        };
        if let Some((order_id, event_type)) = ws::order_update(&text) {
            let note = book(
                &ledger,
                &id_prefix,
                Path::WebSocket,
                &event_type,
                &order_id,
                at,
            );
            if note == Note::Foreign {
                end.foreign += 1;
            }
            continue;
        }
        match ws::parse_server_msg(&text) {
            ServerMsg::Ping => {
                if let Err(e) = ws.send(ws::pong()).await {
                    end.lost = end_reason(Some(Err(e)));
                    break;
                }
            }
            ServerMsg::Complete => {
                end.lost = Some("complete".into());
                break;
            }
            ServerMsg::Error(e) | ServerMsg::ConnectionError(e) | ServerMsg::Other(e) => {
                end.server_errors += 1;
                end.first_error.get_or_insert(e);
            }
            ServerMsg::Event(_) => end.foreign += 1,
            ServerMsg::ConnectionAck | ServerMsg::Pong | ServerMsg::Ka | ServerMsg::StartAck => {}
        }
    }
    end
}

/// The subscribers once connected.
struct Subscribers {
    tasks: JoinSet<SubEnd>,
    connected: Vec<bool>,
    connect_errors: BTreeMap<String, u64>,
    connect_time: Duration,
    /// The ledger reaches the subscriber tasks through this once the order schedule is known.
    ledger: Arc<std::sync::OnceLock<Arc<Ledger>>>,
}

/// Opens and subscribes `n` connections, connection `i` to customer `{customer_prefix}{i}`.
/// Each task waits for the ledger before it reads.
async fn open_subscribers(
    args: &E2eArgs,
    endpoint: &Arc<Endpoint>,
    customer_prefix: &str,
    id_prefix: &Arc<str>,
    stop: &watch::Receiver<bool>,
    ledger_ready: &watch::Receiver<bool>,
) -> Subscribers {
    let n = u64::from(args.subscribers);
    let ledger_cell: Arc<std::sync::OnceLock<Arc<Ledger>>> = Arc::default();
    let gate = Arc::new(Semaphore::new(args.connect_concurrency as usize));
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<(u64, Result<(), String>)>();
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    for i in 0..n {
        let (endpoint, gate, ready_tx, stop, id_prefix, cell) = (
            endpoint.clone(),
            gate.clone(),
            ready_tx.clone(),
            stop.clone(),
            id_prefix.clone(),
            ledger_cell.clone(),
        );
        let mut ledger_ready = ledger_ready.clone();
        let topic = Topic::Customer(format!("{customer_prefix}{i}"));
        tasks.spawn(async move {
            let opened = async {
                let _permit = gate.acquire().await?;
                let mut ws = endpoint.open(i as usize).await?;
                endpoint.subscribe(&mut ws, &topic).await?;
                anyhow::Ok(ws)
            }
            .await;
            let ws = match opened {
                Err(e) => {
                    let _ = ready_tx.send((i, Err(format!("{e:#}"))));
                    return SubEnd::default();
                }
                Ok(ws) => ws,
            };
            let _ = ready_tx.send((i, Ok(())));
            drop(ready_tx);
            // No order goes out before the ledger is in place.
            if ledger_ready.wait_for(|r| *r).await.is_err() {
                return SubEnd::default();
            }
            let Some(ledger) = cell.get().cloned() else {
                return SubEnd::default();
            };
            read_notifications(ws, ledger, id_prefix, stop).await
        });
    }
    drop(ready_tx);

    let mut connected = vec![false; n as usize];
    let mut connect_errors = BTreeMap::new();
    let (mut seen, mut ok) = (0, 0);
    let mut last_print = Instant::now();
    while let Some((i, r)) = ready_rx.recv().await {
        seen += 1;
        match r {
            Ok(()) => {
                ok += 1;
                connected[i as usize] = true;
            }
            Err(e) => {
                if connect_errors.is_empty() {
                    eprintln!("\nsubscriber {i}: {e}");
                }
                let short: String = e
                    .rsplit(": ")
                    .next()
                    .unwrap_or(&e)
                    .chars()
                    .take(80)
                    .collect();
                *connect_errors.entry(short).or_insert(0) += 1;
            }
        }
        if last_print.elapsed() >= Duration::from_millis(500) || seen == n {
            stats::progress_line(format_args!(
                "[e2e] connecting {ok}/{n}, failed {}",
                seen - ok
            ));
            last_print = Instant::now();
        }
        if seen == n {
            break;
        }
    }
    eprintln!();
    Subscribers {
        tasks,
        connected,
        connect_errors,
        connect_time: started.elapsed(),
        ledger: ledger_cell,
    }
}

/// The default subscriber URL for a base URL: same host, `ws://HOST/graphql`.
fn default_ws_url(base_url: &str) -> String {
    let host = base_url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or("");
    format!("ws://{host}/graphql")
}

pub async fn run(args: E2eArgs) -> anyhow::Result<()> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a positive number of orders per second");
    }
    if args.duration.is_zero() {
        bail!("--duration must be positive");
    }
    let base_url = args.url.trim_end_matches('/').to_string();
    let parsed = reqwest::Url::parse(&base_url).with_context(|| format!("--url {base_url}"))?;
    if parsed.scheme() != "http" {
        bail!("--url {base_url}: only http:// is supported");
    }
    let ws_url = args
        .ws_url
        .clone()
        .unwrap_or_else(|| default_ws_url(&base_url));
    let started_at = SystemTime::now();
    let id_prefix = format!("lt-{}-", intake::run_id(started_at));
    let customer_prefix = format!("{id_prefix}c");
    let admin = reqwest::Client::builder()
        .no_proxy()
        .timeout(args.timeout)
        .build()
        .context("building the HTTP client")?;

    // The sinks first: an endpoint must be registered before the first order.
    let mut sinks = Vec::new();
    let mut endpoint_ids = Vec::new();
    let registered = async {
        for e in 0..args.endpoints {
            let sink = WebhookSink::new(Behaviour {
                fail_percent: 0.0,
                stall_percent: 0.0,
                stall_for: Duration::ZERO,
                retry_step: Duration::ZERO,
            });
            let addr = sink
                .serve(&format!("{}:0", args.sink_ip))
                .await
                .with_context(|| format!("starting a sink on {}", args.sink_ip))?;
            let sink_url = format!("http://{addr}/hook");
            let created = webhooks::register(
                &admin,
                &base_url,
                &args.admin_key,
                &sink_url,
                0,
                &format!("herald-loadtest e2e sink {e}"),
            )
            .await?;
            endpoint_ids.push(created.id);
            sink.set_secret(&created.secret)?;
            sinks.push(sink);
        }
        anyhow::Ok(())
    }
    .await;
    let result = match registered {
        Ok(()) => {
            run_registered(
                &args,
                &base_url,
                &ws_url,
                &id_prefix,
                &customer_prefix,
                &sinks,
                started_at,
            )
            .await
        }
        Err(e) => Err(e),
    };
    for id in &endpoint_ids {
        webhooks::unregister(&admin, &base_url, &args.admin_key, id).await;
    }
    result
}

/// The run once the endpoints are registered (they are deleted afterwards, whatever happens).
async fn run_registered(
    args: &E2eArgs,
    base_url: &str,
    ws_url: &str,
    id_prefix: &str,
    customer_prefix: &str,
    sinks: &[Arc<WebhookSink>],
    started_at: SystemTime,
) -> anyhow::Result<()> {
    let mut endpoint =
        Endpoint::resolve(ws_url, Some(args.admin_key.clone()), args.protocol).await?;
    endpoint.source_ips = args.source_ips;
    let endpoint = Arc::new(endpoint);
    let id_prefix_arc: Arc<str> = id_prefix.into();

    eprintln!(
        "e2e: {} orders/s for {} -> {base_url}/v1/orders, {} subscribers ({}) on {}, {} webhook endpoint(s), order ids {id_prefix}<n>",
        args.rate,
        humantime::format_duration(args.duration),
        args.subscribers,
        args.protocol.subprotocol(),
        endpoint.url,
        args.endpoints,
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = watch::channel(false);
    let mut subs = open_subscribers(
        args,
        &endpoint,
        customer_prefix,
        &id_prefix_arc,
        &stop_rx,
        &ready_rx,
    )
    .await;
    let connected = subs.connected.iter().filter(|&&c| c).count() as u64;
    if connected == 0 {
        bail!("no subscriber could connect");
    }
    if !args.protocol.acks_subscriptions() {
        tokio::time::sleep(args.settle).await;
    }

    let orders = Arc::new(OrderClient {
        client: OrderClient::http_client(args.max_in_flight as usize, args.timeout)?,
        orders_urls: vec![format!("{base_url}/v1/orders")],
        api_key: args.admin_key.clone(),
        id_prefix: id_prefix.to_string(),
        customer_prefix: customer_prefix.to_string(),
        customers: u64::from(args.subscribers),
        items: args.items,
        metadata: None,
    });
    let t0 = Instant::now();
    let schedule = Schedule::new(t0, args.rate, args.duration);
    let ledger = Arc::new(Ledger::new(
        t0,
        schedule,
        std::mem::take(&mut subs.connected),
        sinks.len(),
    ));
    let _ = subs.ledger.set(ledger.clone());
    let _ = ready_tx.send(true);
    for (e, sink) in sinks.iter().enumerate() {
        let (ledger, prefix) = (ledger.clone(), id_prefix_arc.clone());
        sink.set_observer(Box::new(move |body, at| {
            book_delivery(&ledger, &prefix, e, body, at);
        }));
    }

    let sending = Arc::new(Sending::default());
    let end = t0 + args.duration;
    let progress = tokio::spawn(progress(
        ledger.clone(),
        sending.clone(),
        t0,
        end,
        sinks.to_vec(),
    ));
    let pacer = {
        let (orders, ledger, sending) = (orders.clone(), ledger.clone(), sending.clone());
        rate::open_loop_tasks(
            schedule,
            crate::publish::CATCH_UP,
            args.max_in_flight,
            move |k, due| {
                let (orders, ledger, sending) = (orders.clone(), ledger.clone(), sending.clone());
                async move {
                    let outcome = orders.post(k).await;
                    let done = Instant::now();
                    sending.sent.fetch_add(1, Ordering::Relaxed);
                    if outcome == Outcome::Ok {
                        ledger.accepted(k, done);
                        sending.accept.record(rate::latency_from(due, done));
                        sending.accepted.fetch_add(1, Ordering::Relaxed);
                    } else {
                        sending.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    sending.counters.add(outcome);
                }
            },
        )
        .await?
    };
    let unsent = pacer.missed_since(t0);

    // Drain: every owed `order.confirmed` in on both paths, or the deadline.
    let deadline = Instant::now() + args.drain;
    while Instant::now() < deadline {
        let [(ws_owed, ws_in), (wh_owed, wh_in)] = ledger.progress();
        if ws_in >= ws_owed && wh_in >= wh_owed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    progress.abort();
    eprintln!();
    let _ = stop_tx.send(true);

    let mut lost = BTreeMap::new();
    let (mut server_errors, mut foreign, mut first_server_error) = (0, 0, None);
    while let Some(r) = subs.tasks.join_next().await {
        let e = r.context("a subscriber task failed")?;
        if let Some(reason) = e.lost {
            *lost.entry(reason).or_insert(0u64) += 1;
        }
        server_errors += e.server_errors;
        foreign += e.foreign;
        if first_server_error.is_none() {
            first_server_error = e.first_error;
        }
    }
    let [websocket, webhook] = ledger.summarise();
    let sink_count = |f: fn(&SinkCounts) -> &AtomicU64| -> u64 {
        sinks.iter().map(|s| SinkCounts::get(f(&s.counts))).sum()
    };
    let mut errors = sending.counters.errors();
    if unsent > 0 {
        errors.insert("unsent".into(), unsent);
    }
    let report = Report {
        label: args.out.label.clone(),
        url: base_url.to_string(),
        ws_url: endpoint.url.clone(),
        rate: args.rate,
        duration: args.duration,
        drain: args.drain,
        subscribers: u64::from(args.subscribers),
        connected,
        connect_errors: subs.connect_errors,
        connect_time: subs.connect_time,
        endpoints: sinks.len() as u64,
        protocol: args.protocol,
        max_in_flight: args.max_in_flight,
        sent: sending.sent.load(Ordering::Relaxed),
        accepted: sending.counters.ok(),
        errors,
        accept: sending.accept.summary(),
        websocket,
        webhook,
        bad_signatures: sink_count(|c| &c.invalid_signature) + sink_count(|c| &c.invalid_timestamp),
        unverifiable: sink_count(|c| &c.unverifiable),
        lost,
        server_errors,
        first_server_error,
        foreign_ws: foreign,
        started_at,
    };
    print!("{}", report.table().render());
    if let Some(path) = &args.out.json {
        stats::write_json(path, &report.json())?;
    }
    if let Some(path) = &args.out.svg {
        let curves = ledger.plot_curves();
        let curves: Vec<(&str, &Histogram<u64>)> = curves.iter().map(|(n, h)| (*n, h)).collect();
        stats::write_svg(path, &report.title(), &curves)?;
    }
    Ok(())
}

/// The `\r`-updated progress line on stderr, once a second.
async fn progress(
    ledger: Arc<Ledger>,
    sending: Arc<Sending>,
    t0: Instant,
    end: Instant,
    sinks: Vec<Arc<WebhookSink>>,
) {
    let mut ticker = stats::Ticker::new(t0);
    let (mut orders, mut ws, mut wh) = (
        stats::LiveRate::default(),
        stats::LiveRate::default(),
        stats::LiveRate::default(),
    );
    loop {
        let tick = ticker.tick().await;
        let [(ws_owed, ws_in), (wh_owed, wh_in)] = ledger.progress();
        let orders_per_s = orders.per_s(sending.sent.load(Ordering::Relaxed), &tick);
        let ws_per_s = ws.per_s(ws_in, &tick);
        let wh_per_s = wh.per_s(wh_in, &tick);
        let bad: u64 = sinks
            .iter()
            .map(|s| {
                SinkCounts::get(&s.counts.invalid_signature)
                    + SinkCounts::get(&s.counts.invalid_timestamp)
            })
            .sum();
        let p99 = ledger
            .ws
            .confirmed
            .quantile_ms(0.99)
            .map_or_else(|| "-".to_string(), stats::ms);
        stats::progress_line(format_args!(
            "[e2e] {:>6.1}s {:<5} {orders_per_s:>7.0} orders/s (accepted {}, errors {})  ws {ws_per_s:>7.0}/s ({} of {})  webhook {wh_per_s:>7.0}/s ({} of {})  ws confirmed p99 {p99}  bad signatures {bad}",
            tick.elapsed_s,
            if tick.now < end { "send" } else { "drain" },
            sending.accepted.load(Ordering::Relaxed),
            sending.failed.load(Ordering::Relaxed),
            ws_in,
            ws_owed,
            wh_in,
            wh_owed,
        ));
    }
}

struct Report {
    label: Option<String>,
    url: String,
    ws_url: String,
    rate: f64,
    duration: Duration,
    drain: Duration,
    subscribers: u64,
    connected: u64,
    connect_errors: BTreeMap<String, u64>,
    connect_time: Duration,
    endpoints: u64,
    protocol: Protocol,
    max_in_flight: u32,
    sent: u64,
    accepted: u64,
    errors: BTreeMap<String, u64>,
    accept: Option<LatencySummary>,
    websocket: PathSummary,
    webhook: PathSummary,
    bad_signatures: u64,
    unverifiable: u64,
    lost: BTreeMap<String, u64>,
    server_errors: u64,
    first_server_error: Option<String>,
    foreign_ws: u64,
    started_at: SystemTime,
}

impl Report {
    /// The protocol as the `--protocol` flag names it.
    fn protocol_name(&self) -> String {
        self.protocol
            .to_possible_value()
            .map_or_else(String::new, |v| v.get_name().to_string())
    }

    fn title(&self) -> String {
        format!(
            "e2e{}: {} orders/s for {:.2} s against {}, {} subscribers ({}), {} webhook endpoint(s)",
            stats::label_tag(self.label.as_deref()),
            self.rate,
            self.duration.as_secs_f64(),
            self.url,
            self.subscribers,
            self.protocol_name(),
            self.endpoints,
        )
    }

    fn table(&self) -> Table {
        let mut t = Table::default();
        t.section(self.title());
        t.row(
            "subscribers connected",
            format!(
                "{} of {} in {:.2} s",
                self.connected,
                self.subscribers,
                self.connect_time.as_secs_f64()
            ),
        );
        for (e, n) in &self.connect_errors {
            t.row(format!("connect error {e}"), n.to_string());
        }
        t.row(
            "orders sent / accepted",
            format!("{} / {}", self.sent, self.accepted),
        );
        if self.errors.is_empty() {
            t.row("order errors", "0");
        } else {
            for (k, v) in &self.errors {
                t.row(format!("order error {k}"), v.to_string());
            }
        }
        t.latency("send->202", self.accept.as_ref());
        for (name, p) in [("websocket", &self.websocket), ("webhook", &self.webhook)] {
            if name == "webhook" && self.endpoints == 0 {
                continue;
            }
            t.section(name);
            t.row(
                "confirmed expected / received",
                format!("{} / {}", p.expected, p.received),
            )
            .row(
                format!("missing after {}", humantime::format_duration(self.drain)),
                p.missing.to_string(),
            )
            .row("duplicates", p.duplicates.to_string());
            t.latency("send->confirmed", p.confirmed.as_ref());
            t.latency("202->accepted", p.accepted.as_ref());
            if p.accepted_before_202 > 0 {
                t.row(
                    "accepted before the 202 (as 0)",
                    p.accepted_before_202.to_string(),
                );
            }
            if p.unexpected > 0 {
                t.row("for orders without a 202", p.unexpected.to_string());
            }
        }
        if self.endpoints > 0 {
            t.row("bad signatures", self.bad_signatures.to_string());
            if self.unverifiable > 0 {
                t.row("unverifiable requests", self.unverifiable.to_string());
            }
        }
        for (name, v) in [
            ("subscriber server errors", self.server_errors),
            ("other orders' notifications (ws)", self.foreign_ws),
        ] {
            if v > 0 {
                t.row(name, v.to_string());
            }
        }
        if let Some(e) = &self.first_server_error {
            t.row("first server error", e.clone());
        }
        for (reason, n) in &self.lost {
            t.row(format!("subscribers lost ({reason})"), n.to_string());
        }
        t
    }

    fn json(&self) -> serde_json::Value {
        let path = |p: &PathSummary| {
            json!({
                "expected": p.expected,
                "received": p.received,
                "missing": p.missing,
                "duplicates": p.duplicates,
                "confirmed": p.confirmed,
                "accepted": p.accepted,
                "accepted_before_202": p.accepted_before_202,
                "unexpected": p.unexpected,
            })
        };
        let mut websocket = path(&self.websocket);
        websocket["connected"] = json!(self.connected);
        websocket["lost"] = json!(self.lost);
        websocket["server_errors"] = json!(self.server_errors);
        let mut webhook = path(&self.webhook);
        webhook["bad_signatures"] = json!(self.bad_signatures);
        webhook["unverifiable"] = json!(self.unverifiable);
        json!({
            "scenario": "e2e",
            "label": self.label,
            "url": self.url,
            "ws_url": self.ws_url,
            "rate": self.rate,
            "duration_s": self.duration.as_secs_f64(),
            "drain_s": self.drain.as_secs_f64(),
            "subscribers": self.subscribers,
            "endpoints": self.endpoints,
            "protocol": self.protocol_name(),
            "max_in_flight": self.max_in_flight,
            "orders": {
                "sent": self.sent,
                "accepted": self.accepted,
                "errors": self.errors,
            },
            "accept": self.accept,
            "websocket": websocket,
            "webhook": webhook,
            "connect_errors": self.connect_errors,
            "connect_time_s": self.connect_time.as_secs_f64(),
            "started_at": humantime::format_rfc3339_seconds(self.started_at).to_string(),
            "machine": sys::machine(),
            "tool": { "name": env!("CARGO_PKG_NAME"), "version": env!("CARGO_PKG_VERSION") },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// 10 orders at 1000/s (order k due at k ms) over 2 customers, subscriber 1 not
    /// connected, 2 endpoints.
    fn ledger() -> (Ledger, Instant) {
        let t0 = Instant::now();
        let l = Ledger::new(t0, Schedule::new(t0, 1000.0, ms(10)), vec![true, false], 2);
        (l, t0)
    }

    #[test]
    fn confirmed_latency_runs_from_the_scheduled_send_and_repeats_are_duplicates() {
        let (l, t0) = ledger();
        l.accepted(4, t0 + ms(6));
        // Order 4 was due at 4 ms; confirmed at 30 ms over the WebSocket: 26 ms.
        assert_eq!(
            l.notified(Path::WebSocket, Kind::Confirmed, 4, t0 + ms(30)),
            Note::First
        );
        assert_eq!(
            l.notified(Path::WebSocket, Kind::Confirmed, 4, t0 + ms(31)),
            Note::Duplicate
        );
        let s = l.ws.confirmed.summary().expect("one sample");
        assert_eq!(s.count, 1);
        assert!((26.0..26.03).contains(&s.max), "{}", s.max);
        // The same order at each endpoint is a first, not a duplicate.
        assert_eq!(
            l.notified(Path::Webhook(0), Kind::Confirmed, 4, t0 + ms(40)),
            Note::First
        );
        assert_eq!(
            l.notified(Path::Webhook(1), Kind::Confirmed, 4, t0 + ms(40)),
            Note::First
        );
        // Outside the table or an endpoint that does not exist: foreign.
        assert_eq!(
            l.notified(Path::WebSocket, Kind::Confirmed, 10, t0),
            Note::Foreign
        );
        assert_eq!(
            l.notified(Path::Webhook(2), Kind::Confirmed, 4, t0),
            Note::Foreign
        );
    }

    #[test]
    fn accepted_latency_runs_from_the_202_and_an_early_notification_counts_as_zero() {
        let (l, t0) = ledger();
        l.accepted(0, t0 + ms(3));
        l.notified(Path::WebSocket, Kind::Accepted, 0, t0 + ms(8));
        let s = l.ws.accepted.summary().expect("one sample");
        assert!((5.0..5.01).contains(&s.max), "{}", s.max);
        // The notification beats the 202: recorded (as 0) once the 202 is in.
        l.notified(Path::Webhook(0), Kind::Accepted, 2, t0 + ms(4));
        assert_eq!(l.webhook.accepted.summary(), None);
        l.accepted(2, t0 + ms(5));
        let s = l.webhook.accepted.summary().expect("one sample");
        assert_eq!((s.count, s.max), (1, 0.001));
        let [ws, webhook] = l.summarise();
        assert_eq!(ws.accepted_before_202, 0);
        assert_eq!(webhook.accepted_before_202, 1);
    }

    #[test]
    fn missing_counts_accepted_orders_owed_to_a_receiver_that_never_got_confirmed() {
        let (l, t0) = ledger();
        // Orders 0..6 accepted; 6..10 failed (no 202). Customers: even -> subscriber 0
        // (connected), odd -> subscriber 1 (not connected: nothing owed over WebSocket).
        for n in 0..6 {
            l.accepted(n, t0 + ms(n + 1));
        }
        for n in [0, 2] {
            l.notified(Path::WebSocket, Kind::Confirmed, n, t0 + ms(20));
        }
        l.notified(Path::WebSocket, Kind::Confirmed, 2, t0 + ms(21)); // duplicate
        l.notified(Path::WebSocket, Kind::Accepted, 2, t0 + ms(21));
        l.notified(Path::WebSocket, Kind::Accepted, 2, t0 + ms(22)); // duplicate
        for n in 0..6 {
            l.notified(Path::Webhook(0), Kind::Confirmed, n, t0 + ms(20));
        }
        for n in 0..5 {
            l.notified(Path::Webhook(1), Kind::Confirmed, n, t0 + ms(20));
        }
        // A failed request the server took after all: not owed, reported apart.
        l.notified(Path::Webhook(1), Kind::Confirmed, 7, t0 + ms(20));

        // Progress (owed, received) counts only owed orders: order 7's confirmation must not
        // make up for order 5's missing one, or the drain would stop before it arrives.
        assert_eq!(l.progress(), [(3, 2), (12, 11)]);
        let [ws, webhook] = l.summarise();
        assert_eq!(
            (ws.expected, ws.received, ws.missing, ws.duplicates),
            (3, 2, 1, 2)
        );
        assert_eq!(ws.unexpected, 0);
        assert_eq!(
            (
                webhook.expected,
                webhook.received,
                webhook.missing,
                webhook.duplicates
            ),
            (12, 11, 1, 0)
        );
        assert_eq!(webhook.unexpected, 1);
    }

    #[test]
    fn the_plot_has_both_latencies_of_each_path_and_no_webhook_curves_without_endpoints() {
        let (l, t0) = ledger();
        l.accepted(0, t0 + ms(3));
        l.notified(Path::WebSocket, Kind::Confirmed, 0, t0 + ms(20));
        l.notified(Path::WebSocket, Kind::Accepted, 0, t0 + ms(8));
        l.notified(Path::Webhook(1), Kind::Confirmed, 0, t0 + ms(30));
        let curves = l.plot_curves();
        let named: Vec<(&str, u64)> = curves.iter().map(|(n, h)| (*n, h.len())).collect();
        assert_eq!(
            named,
            [
                ("ws send->confirmed", 1),
                ("ws 202->accepted", 1),
                ("webhook send->confirmed", 1),
                ("webhook 202->accepted", 0),
            ]
        );
        let t0 = Instant::now();
        let none = Ledger::new(t0, Schedule::new(t0, 1000.0, ms(10)), vec![true], 0);
        let names: Vec<&str> = none.plot_curves().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["ws send->confirmed", "ws 202->accepted"]);
    }

    #[test]
    fn deliveries_and_updates_are_matched_by_this_runs_order_ids_only() {
        let (l, t0) = ledger();
        l.accepted(3, t0);
        let body = br#"{"type":"order.confirmed","timestamp":"2026-01-01T00:00:00Z","data":{"eventId":"1-0","type":"order.confirmed","orderId":"lt-r-3","customerId":"lt-r-c1","status":"confirmed","version":2}}"#;
        assert_eq!(book_delivery(&l, "lt-r-", 1, body, t0), Note::First);
        assert_eq!(book_delivery(&l, "lt-r-", 1, body, t0), Note::Duplicate);
        assert_eq!(book_delivery(&l, "lt-q-", 1, body, t0), Note::Foreign);
        assert_eq!(
            book_delivery(&l, "lt-r-", 1, b"not json", t0),
            Note::Foreign
        );
        assert_eq!(
            book(&l, "lt-r-", Path::WebSocket, "order.shipped", "lt-r-3", t0),
            Note::Foreign
        );
        assert_eq!(
            book(&l, "lt-r-", Path::WebSocket, "order.accepted", "lt-r-3", t0),
            Note::First
        );
        assert_eq!(
            book(
                &l,
                "lt-r-",
                Path::WebSocket,
                "order.accepted",
                "lt-r-c3",
                t0
            ),
            Note::Foreign
        );
    }

    #[test]
    fn json_has_the_contracted_shape() {
        let lat = LatencySummary {
            count: 1,
            mean: 1.0,
            p50: 1.0,
            p90: 1.0,
            p99: 1.0,
            p999: 1.0,
            max: 1.0,
        };
        let r = Report {
            label: Some("x".into()),
            url: "http://127.0.0.1:1".into(),
            ws_url: "ws://127.0.0.1:1/graphql".into(),
            rate: 200.0,
            duration: Duration::from_secs(5),
            drain: Duration::from_secs(10),
            subscribers: 200,
            connected: 200,
            connect_errors: BTreeMap::new(),
            connect_time: Duration::from_millis(300),
            endpoints: 1,
            protocol: Protocol::AppSync,
            max_in_flight: 1000,
            sent: 1000,
            accepted: 999,
            errors: BTreeMap::from([("http_503".to_string(), 1)]),
            accept: Some(lat),
            websocket: PathSummary {
                expected: 999,
                received: 999,
                confirmed: Some(lat),
                ..PathSummary::default()
            },
            webhook: PathSummary::default(),
            bad_signatures: 0,
            unverifiable: 0,
            lost: BTreeMap::new(),
            server_errors: 0,
            first_server_error: None,
            foreign_ws: 0,
            started_at: SystemTime::now(),
        };
        let v = r.json();
        assert_eq!(v["scenario"], "e2e");
        assert_eq!(v["label"], "x");
        assert_eq!(v["rate"].as_f64(), Some(200.0));
        assert_eq!(v["duration_s"].as_f64(), Some(5.0));
        assert_eq!(v["subscribers"].as_u64(), Some(200));
        assert_eq!(v["endpoints"].as_u64(), Some(1));
        assert_eq!(v["protocol"], "appsync");
        assert_eq!(v["orders"]["sent"].as_u64(), Some(1000));
        assert_eq!(v["orders"]["accepted"].as_u64(), Some(999));
        assert_eq!(v["orders"]["errors"]["http_503"].as_u64(), Some(1));
        assert_eq!(v["accept"]["p99"].as_f64(), Some(1.0));
        for path in ["websocket", "webhook"] {
            for k in ["expected", "received", "missing", "duplicates"] {
                assert!(v[path][k].is_u64(), "{path}.{k}");
            }
            assert!(v[path].get("confirmed").is_some(), "{path}.confirmed");
            assert!(v[path].get("accepted").is_some(), "{path}.accepted");
        }
        assert_eq!(v["websocket"]["confirmed"]["count"].as_u64(), Some(1));
        assert!(v["websocket"]["accepted"].is_null());
        assert!(v["webhook"]["bad_signatures"].is_u64());
        assert!(v["machine"]["cores"].is_u64());
        assert_eq!(
            Report {
                protocol: Protocol::TransportWs,
                ..r
            }
            .json()["protocol"],
            "graphql-transport-ws"
        );
    }

    #[test]
    fn default_ws_url_keeps_the_host() {
        assert_eq!(
            default_ws_url("http://127.0.0.1:8080"),
            "ws://127.0.0.1:8080/graphql"
        );
    }
}
