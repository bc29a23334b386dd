//! The `fanout` scenario: N WebSocket subscribers, events published into the server, and the
//! time from publish to receive at every subscriber.
//!
//! - `--mode broadcast`: every connection subscribes to all orders, so each event is one
//!   delivery per connection. `--mode targeted`: connection `i` subscribes to order `lt-<i>`
//!   and event `seq` is about order `lt-<seq mod N>`, so each event is one delivery.
//! - `--target herald` publishes with `XADD` to the Redis stream Herald reads;
//!   `--target reference` sends the same event JSON to the reference server's `/publish`
//!   socket (see [`crate::reference`]). The subscribers are the same code either way.
//! - `--rate R`: open loop, the event `seq` is due at `start + seq / R` ([`crate::rate`]) and
//!   carries that intended time, so a publisher that falls behind shows as latency.
//!   `--rate max`: closed loop: batches are pipelined as fast as the subscribers keep up, with
//!   at most `--max-lag` events published but not yet delivered everywhere; each event carries
//!   its actual publish time.
//! - Latency (publish -> receive, wall clock, same machine) is recorded for events published in
//!   the measured window; deliveries/s counts arrivals in that window. Every subscriber checks
//!   its sequence numbers for gaps, duplicates and other orders' events.
//! - `--stalled-percent P`: that share of subscribers (spread evenly over the indices) stop
//!   reading once subscribed. They count in no figure except "stalled": after the run they read
//!   again to find out whether the server closed them (and with which close code).
//! - `--sse-connections N --sse-url http://H`: N Server-Sent Events streams on Herald beside
//!   the WebSocket subscribers, fed by the same events, measured the same way into figures of
//!   their own (see [`sse`]): one run compares the two transports.

mod shards;
mod sse;

use crate::procs::{ProcessInfo, Shard};
use crate::publish::{self, Clock, OpenLoop, Sink, Target, Window};
use crate::rate::Schedule;
use crate::stats::{self, LatencySummary, SharedHistogram, Table};
use crate::sys;
use crate::ws::{self, Endpoint, Protocol, SeqCheck, SeqTracker, ServerMsg, Topic, Ws};
use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::{self, Message};

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    /// What serves the subscribers: Herald (events via its Redis stream) or the reference
    /// broadcast server (events via its /publish socket).
    #[arg(long, value_enum, default_value = "herald")]
    pub target: Target,

    /// Subscriber endpoint; several, comma-separated (`ws://a/graphql,ws://b/graphql`), spread
    /// the subscribers round-robin over the nodes (connection `i` goes to node `i mod count`).
    #[arg(long, default_value = "ws://127.0.0.1:8080/graphql")]
    pub url: String,

    /// API key sent in `connection_init` (graphql-transport-ws) or AppSync's `header`.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    #[arg(long, value_enum, default_value = "graphql-transport-ws")]
    pub protocol: Protocol,

    #[arg(long, value_enum, default_value = "broadcast")]
    pub mode: Mode,

    /// Subscriber connections.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub connections: u32,

    /// Events per second (open loop), or `max` (closed loop).
    #[arg(long, default_value = "100", value_parser = parse_rate)]
    pub rate: Rate,

    /// Measured window (after the warm-up).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Publishing before the measured window; its events are not counted.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,

    /// graphql-transport-ws has no subscription acknowledgement: wait this long after the last
    /// `subscribe` before publishing. (AppSync waits for every `start_ack` instead.)
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub settle: Duration,

    /// After the window, wait at most this long for outstanding deliveries.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain: Duration,

    /// Redis holding Herald's event stream (`--target herald`).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// The event stream key (Herald's `[engine] events_stream`).
    #[arg(long, default_value = "herald:{p0}:events")]
    pub stream: String,

    /// Approximate cap on the stream's length (`XADD MAXLEN ~`); 0: no trimming.
    #[arg(long, default_value_t = 100_000)]
    pub maxlen: u64,

    /// The reference server's publish socket (default: --url with the path `/publish`).
    #[arg(long)]
    pub publish_url: Option<String>,

    /// `--rate max`: events per pipelined batch.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch: u32,

    /// `--rate max`: most events published but not yet delivered to every subscriber.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(2..=10_000_000))]
    pub max_lag: u32,

    /// Share of subscribers (percent) that stop reading their socket once subscribed.
    #[arg(long, default_value_t = 0.0)]
    pub stalled_percent: f64,

    /// Spread connections over this many loopback source addresses (127.0.0.1 ..).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u8).range(1..))]
    pub source_ips: u8,

    /// Connections being opened at once.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub connect_concurrency: u32,

    /// Read buffer per subscriber socket (bytes).
    #[arg(long, default_value_t = 4096)]
    pub read_buffer: usize,

    /// Open the subscriber connections from this many processes (this binary, started again),
    /// each with its own descriptor limit; this process only publishes and adds up their
    /// results.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub processes: u32,

    /// Server-Sent Events streams (`GET /v1/events/stream`) opened beside the WebSocket
    /// subscribers (broadcast, open loop, one process, `--target herald` only).
    #[arg(long, default_value_t = 0)]
    pub sse_connections: u32,

    /// Herald's HTTP address for the SSE streams, e.g. `http://127.0.0.1:8080`.
    #[arg(long)]
    pub sse_url: Option<String>,

    /// Internal: this process is subscriber process K of --processes, started by the one that
    /// publishes; it talks to it over stdin/stdout.
    #[arg(long, hide = true)]
    pub shard: Option<u32>,

    #[command(flatten)]
    pub out: stats::Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Broadcast,
    Targeted,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rate {
    PerSecond(f64),
    Max,
}

pub fn parse_rate(s: &str) -> Result<Rate, String> {
    if s.eq_ignore_ascii_case("max") {
        return Ok(Rate::Max);
    }
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(Rate::PerSecond(r)),
        _ => Err(format!("`{s}`: expected events per second (> 0) or `max`")),
    }
}

impl Rate {
    pub fn describe(self) -> String {
        match self {
            Rate::PerSecond(r) => format!("{r} events/s"),
            Rate::Max => "max rate".into(),
        }
    }
}

/// Which subscriber indices stall: `count` of `n`, spread evenly (the index where
/// `i * count / n` steps up).
pub fn is_stalled(i: u64, n: u64, count: u64) -> bool {
    n > 0 && (i + 1) * count / n != i * count / n
}

fn stalled_count(n: u64, percent: f64) -> u64 {
    ((n as f64) * percent / 100.0).round().clamp(0.0, n as f64) as u64
}

/// Histogram shards: subscriber `i` records into shard `i % HIST_SHARDS`, so the worker
/// threads rarely meet on one lock (one histogram per subscriber would cost 180 KiB each).
const HIST_SHARDS: usize = 32;

/// What the subscriber tasks and the publisher share.
struct Ctx {
    window: OnceLock<Window>,
    latency: Vec<SharedHistogram>,
    /// Deliveries of this run's events (in order or after a gap) to reading subscribers.
    delivered: AtomicU64,
    /// Deliveries owed for every event published so far.
    owed: AtomicU64,
    disconnected: AtomicU64,
    /// Set while the closed-loop publisher waits for the subscribers to catch up: only then
    /// do deliveries wake it.
    publisher_waiting: AtomicBool,
    progress: Notify,
    /// With subscriber processes: the highest p99 hint (microseconds) they reported, for the
    /// progress line (this process records no latency then).
    remote_p99_us: AtomicU64,
}

impl Ctx {
    fn new() -> Arc<Ctx> {
        Arc::new(Ctx {
            window: OnceLock::new(),
            latency: (0..HIST_SHARDS)
                .map(|_| SharedHistogram::default())
                .collect(),
            delivered: AtomicU64::new(0),
            owed: AtomicU64::new(0),
            disconnected: AtomicU64::new(0),
            publisher_waiting: AtomicBool::new(false),
            progress: Notify::new(),
            remote_p99_us: AtomicU64::new(0),
        })
    }

    fn report_delivered(&self, n: u64) {
        self.delivered.fetch_add(n, Ordering::Relaxed);
        if self.publisher_waiting.load(Ordering::Relaxed) {
            self.progress.notify_one();
        }
    }

    fn outstanding(&self) -> u64 {
        self.owed
            .load(Ordering::Relaxed)
            .saturating_sub(self.delivered.load(Ordering::Relaxed))
    }
}

/// One subscriber's counts, summed over all of them at the end.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Counts {
    /// Deliveries (of any of this run's events) that arrived inside the measured window.
    arrived_in_window: u64,
    /// Deliveries of events published in the window (first copies only).
    measured: u64,
    duplicates: u64,
    /// Events skipped by a later one arriving (all phases).
    gap_events: u64,
    /// Events for an order this subscriber did not subscribe to.
    foreign: u64,
    /// Event messages without readable marks.
    unmarked: u64,
    /// `error` / `connection_error` / unknown messages.
    server_errors: u64,
    pings: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.arrived_in_window += o.arrived_in_window;
        self.measured += o.measured;
        self.duplicates += o.duplicates;
        self.gap_events += o.gap_events;
        self.foreign += o.foreign;
        self.unmarked += o.unmarked;
        self.server_errors += o.server_errors;
        self.pings += o.pings;
    }
}

enum End {
    /// Still connected when the run ended.
    Stopped,
    /// The connection ended during the run, for this reason.
    Lost(String),
    /// A stalled subscriber; how its connection stood when it read again.
    Stalled(String),
}

struct SubOutcome {
    counts: Counts,
    end: End,
    first_error: Option<String>,
}

/// Why a connection ended, in a few stable words (`close 4008`, `eof`, `reset`, ...).
pub fn end_reason(r: Option<Result<Message, tungstenite::Error>>) -> Option<String> {
    match r {
        None => Some("eof".into()),
        Some(Ok(Message::Close(Some(f)))) => Some(format!("close {}", u16::from(f.code))),
        Some(Ok(Message::Close(None))) => Some("close (no code)".into()),
        Some(Ok(_)) => None,
        Some(Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)) => {
            Some("eof".into())
        }
        Some(Err(tungstenite::Error::Io(e))) => Some(match e.kind() {
            std::io::ErrorKind::ConnectionReset => "reset".into(),
            std::io::ErrorKind::UnexpectedEof => "eof".into(),
            k => format!("io {k}"),
        }),
        Some(Err(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ))) => Some("reset".into()),
        Some(Err(e)) => Some(format!("error {e}")),
    }
}

/// Reads one subscriber's socket until told to stop.
async fn read_events(
    mut ws: Ws,
    index: u64,
    mut tracker: SeqTracker,
    ctx: Arc<Ctx>,
    mut stop: watch::Receiver<bool>,
) -> SubOutcome {
    let hist = &ctx.latency[index as usize % HIST_SHARDS];
    let mut c = Counts::default();
    let mut first_error = None;
    // Deliveries not yet added to the shared counter: it is updated once per burst (when the
    // socket has nothing more ready), not once per frame.
    let mut unreported = 0;
    let end = loop {
        let frame = match ws.next().now_or_never() {
            Some(f) => f,
            None => {
                if unreported > 0 {
                    ctx.report_delivered(unreported);
                    unreported = 0;
                }
                tokio::select! {
                    biased;
                    _ = stop.changed() => break End::Stopped,
                    f = ws.next() => f,
                }
            }
        };
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            other => match end_reason(other) {
                Some(reason) => {
                    ctx.disconnected.fetch_add(1, Ordering::Relaxed);
                    break End::Lost(reason);
                }
                None => continue, // ping/pong/binary: tungstenite answers pings itself
            },
        };
        match ws::parse_server_msg(&text) {
            ServerMsg::Event(Some(m)) => {
                let now = publish::unix_nanos();
                let window = ctx.window.get();
                if window.is_some_and(|w| w.contains(now)) {
                    c.arrived_in_window += 1;
                }
                match tracker.observe(m.seq) {
                    SeqCheck::Foreign => {
                        c.foreign += 1;
                        continue;
                    }
                    SeqCheck::Duplicate => {
                        c.duplicates += 1;
                        continue;
                    }
                    SeqCheck::Gap(n) => c.gap_events += n,
                    SeqCheck::InOrder => {}
                }
                unreported += 1;
                if window.is_some_and(|w| w.contains(m.t)) {
                    c.measured += 1;
                    hist.record(Duration::from_nanos(now.saturating_sub(m.t)));
                }
            }
            ServerMsg::Event(None) => c.unmarked += 1,
            ServerMsg::Ping => {
                c.pings += 1;
                if let Err(e) = ws.send(ws::pong()).await {
                    ctx.disconnected.fetch_add(1, Ordering::Relaxed);
                    break End::Lost(end_reason(Some(Err(e))).unwrap_or_default());
                }
            }
            ServerMsg::Error(e) | ServerMsg::ConnectionError(e) | ServerMsg::Other(e) => {
                c.server_errors += 1;
                first_error.get_or_insert(e);
            }
            ServerMsg::Complete => {
                ctx.disconnected.fetch_add(1, Ordering::Relaxed);
                break End::Lost("complete".into());
            }
            ServerMsg::ConnectionAck | ServerMsg::Pong | ServerMsg::Ka | ServerMsg::StartAck => {}
        }
    };
    if unreported > 0 {
        ctx.report_delivered(unreported);
    }
    SubOutcome {
        counts: c,
        end,
        first_error,
    }
}

/// A stalled subscriber: reads nothing until the run is over, then reads everything the
/// server left in its socket to learn whether the server closed it.
async fn stall(mut ws: Ws, mut stop: watch::Receiver<bool>, limit: Duration) -> SubOutcome {
    let _ = stop.changed().await;
    let reason = tokio::time::timeout(limit, async {
        loop {
            if let Some(reason) = end_reason(ws.next().await) {
                return reason;
            }
        }
    })
    .await
    .unwrap_or_else(|_| "open".into());
    SubOutcome {
        counts: Counts::default(),
        end: End::Stalled(reason),
        first_error: None,
    }
}

/// How one subscriber connection came up.
type Ready = Result<(), String>;

struct Subscribers {
    tasks: JoinSet<SubOutcome>,
    /// Per index: connected, subscribed and reading (not stalled).
    reading: Vec<bool>,
    connected: u64,
    stalled: u64,
    connect_errors: BTreeMap<String, u64>,
    connect_time: Duration,
}

/// The subscriber endpoints of `--url` (comma-separated), resolved once, each with the
/// socket options of the arguments.
pub async fn resolve_endpoints(args: &FanoutArgs) -> anyhow::Result<Arc<Vec<Endpoint>>> {
    let mut endpoints = Vec::new();
    for url in args.url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let mut endpoint = Endpoint::resolve(url, args.api_key.clone(), args.protocol).await?;
        endpoint.source_ips = args.source_ips;
        endpoint.read_buffer = args.read_buffer;
        endpoints.push(endpoint);
    }
    if endpoints.is_empty() {
        bail!("--url: at least one ws:// URL");
    }
    Ok(Arc::new(endpoints))
}

/// The endpoint subscriber `i` connects to: the nodes in turn.
fn endpoint_of(endpoints: &[Endpoint], i: u64) -> &Endpoint {
    &endpoints[(i % endpoints.len() as u64) as usize]
}

async fn open_subscribers(
    args: &FanoutArgs,
    endpoints: &Arc<Vec<Endpoint>>,
    ctx: &Arc<Ctx>,
    stop: &watch::Receiver<bool>,
    shard: Shard,
) -> anyhow::Result<Subscribers> {
    let n = u64::from(args.connections);
    let mine = shard.len(n);
    let stalled_n = stalled_count(n, args.stalled_percent);
    let stall_limit = args
        .drain
        .clamp(Duration::from_secs(1), Duration::from_secs(5));
    let gate = Arc::new(Semaphore::new(args.connect_concurrency as usize));
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<(u64, Ready)>();
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    for i in shard.indices(n) {
        let (endpoints, ctx, gate, ready_tx, stop) = (
            endpoints.clone(),
            ctx.clone(),
            gate.clone(),
            ready_tx.clone(),
            stop.clone(),
        );
        let (topic, tracker) = match args.mode {
            Mode::Broadcast => (Topic::AllOrders, SeqTracker::new(0, 1)),
            Mode::Targeted => (Topic::Order(format!("lt-{i}")), SeqTracker::new(i, n)),
        };
        let stalled = is_stalled(i, n, stalled_n);
        tasks.spawn(async move {
            let opened = async {
                let _permit = gate.acquire().await?;
                let endpoint = endpoint_of(&endpoints, i);
                let mut ws = endpoint.open(i as usize).await?;
                endpoint.subscribe(&mut ws, &topic).await?;
                anyhow::Ok(ws)
            }
            .await;
            match opened {
                Err(e) => {
                    let _ = ready_tx.send((i, Err(format!("{e:#}"))));
                    SubOutcome {
                        counts: Counts::default(),
                        end: End::Lost("not connected".into()),
                        first_error: None,
                    }
                }
                Ok(ws) => {
                    let _ = ready_tx.send((i, Ok(())));
                    drop(ready_tx);
                    if stalled {
                        stall(ws, stop, stall_limit).await
                    } else {
                        read_events(ws, i, tracker, ctx, stop).await
                    }
                }
            }
        });
    }
    drop(ready_tx);

    let mut reading = vec![false; n as usize];
    let mut connected = 0;
    let mut connect_errors = BTreeMap::new();
    let mut seen = 0;
    let mut last_print = Instant::now();
    while let Some((i, r)) = ready_rx.recv().await {
        seen += 1;
        match r {
            Ok(()) => {
                connected += 1;
                reading[i as usize] = !is_stalled(i, n, stalled_n);
            }
            Err(e) => {
                if connect_errors.is_empty() {
                    eprintln!("\nsubscriber {i}: {e}");
                }
                *connect_errors.entry(shorten_error(&e)).or_insert(0) += 1;
            }
        }
        // Subscriber processes stay quiet: their parent reports for all of them.
        if shard == Shard::ALL && (last_print.elapsed() >= Duration::from_millis(500) || seen == n)
        {
            stats::progress_line(format_args!(
                "[fanout] connecting {connected}/{n}, failed {}",
                seen - connected
            ));
            last_print = Instant::now();
        }
        if seen == mine {
            break;
        }
    }
    if shard == Shard::ALL {
        eprintln!();
    }
    let _ = ctx; // subscribers hold their own handles
    Ok(Subscribers {
        tasks,
        reading,
        connected,
        stalled: shard
            .indices(n)
            .filter(|&i| is_stalled(i, n, stalled_n))
            .count() as u64,
        connect_errors,
        connect_time: started.elapsed(),
    })
}

/// Connect errors grouped by their last (most specific) cause.
fn shorten_error(e: &str) -> String {
    let last = e.rsplit(": ").next().unwrap_or(e);
    last.chars().take(80).collect()
}

/// What the publisher did.
#[derive(Debug, Default)]
struct Published {
    /// Events published (all phases).
    total: u64,
    /// Events whose publish time falls in the measured window.
    measured: u64,
    /// Deliveries owed for the measured events.
    owed_measured: u64,
    /// Events of the window never sent (open loop fell behind past the cut-off).
    unsent: u64,
    errors: u64,
    first_error: Option<String>,
    /// Open loop: how late events left (from their due time).
    lag: Option<LatencySummary>,
}

/// How many deliveries each event owes: everyone reading (broadcast), or the one subscriber
/// of its order if it reads (targeted).
struct Owed {
    mode: Mode,
    reading: Vec<bool>,
    reading_count: u64,
}

impl Owed {
    fn for_seq(&self, seq: u64) -> u64 {
        match self.mode {
            Mode::Broadcast => self.reading_count,
            Mode::Targeted => {
                let i = publish::order_index(seq, self.reading.len() as u64) as usize;
                u64::from(self.reading.get(i).copied().unwrap_or(false))
            }
        }
    }

    /// Average deliveries per event (for the closed-loop lag budget).
    fn per_event(&self) -> f64 {
        match self.mode {
            Mode::Broadcast => self.reading_count as f64,
            Mode::Targeted => self.reading_count as f64 / self.reading.len().max(1) as f64,
        }
    }
}

struct Publisher {
    sink: Sink,
    ctx: Arc<Ctx>,
    owed: Owed,
    orders: u64,
    window: Window,
    out: Published,
    batch: Vec<String>,
}

impl Publisher {
    /// Publishes events `(seq, t)` as one batch and does the accounting.
    async fn send(&mut self, events: &[(u64, u64)]) {
        self.batch.clear();
        let mut owed = 0;
        let mut owed_measured = 0;
        let mut measured = 0;
        for &(seq, t) in events {
            self.batch.push(publish::event_json(
                publish::order_index(seq, self.orders),
                seq,
                t,
                "",
            ));
            let o = self.owed.for_seq(seq);
            owed += o;
            if self.window.contains(t) {
                measured += 1;
                owed_measured += o;
            }
        }
        // Owed before it is sent: a delivery may come back before the publish call returns.
        self.ctx.owed.fetch_add(owed, Ordering::Relaxed);
        match self.sink.publish(&self.batch).await {
            Ok(()) => {
                self.out.total += events.len() as u64;
                self.out.measured += measured;
                self.out.owed_measured += owed_measured;
            }
            Err(e) => {
                self.ctx.owed.fetch_sub(owed, Ordering::Relaxed);
                self.out.errors += events.len() as u64;
                if self.out.first_error.is_none() {
                    eprintln!("\npublish: {e:#}");
                    self.out.first_error = Some(format!("{e:#}"));
                }
            }
        }
    }
}

/// Open loop: events on schedule ([`OpenLoop`]), whatever is due in one batch.
async fn publish_open_loop(
    p: &mut Publisher,
    clock: Clock,
    rate: f64,
    end: Instant,
) -> anyhow::Result<()> {
    let schedule = Schedule::new(clock.t0, rate, end.duration_since(clock.t0));
    let mut open_loop = OpenLoop::start(schedule, clock, p.window.warm_end)?;
    let mut events = Vec::with_capacity(OpenLoop::BATCH);
    while open_loop.next_batch(&mut events).await {
        p.send(&events).await;
    }
    let end = open_loop.finish().await?;
    p.out.unsent = end.unsent;
    p.out.lag = end.lag;
    Ok(())
}

/// Closed loop: batches as fast as the subscribers keep up, at most `max_lag` events behind.
async fn publish_closed_loop(
    p: &mut Publisher,
    end: Instant,
    batch: u32,
    max_lag: u32,
) -> anyhow::Result<()> {
    let batch = u64::from(batch.min(max_lag / 2).max(1));
    let per_event = p.owed.per_event();
    let budget = (f64::from(max_lag) * per_event).ceil() as u64;
    let batch_cost = (batch as f64 * per_event).ceil() as u64;
    let mut seq = 0;
    let mut events = Vec::with_capacity(batch as usize);
    while Instant::now() < end {
        // Wait until a whole batch fits in the lag budget. A subscriber lost mid-run leaves
        // its deliveries owed forever, so waiting is capped and the publisher moves on.
        let give_up = Instant::now() + Duration::from_millis(200);
        while p.ctx.outstanding() + batch_cost > budget && Instant::now() < give_up {
            let notified = p.ctx.progress.notified();
            p.ctx.publisher_waiting.store(true, Ordering::Relaxed);
            if p.ctx.outstanding() + batch_cost <= budget {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(5), notified).await;
        }
        p.ctx.publisher_waiting.store(false, Ordering::Relaxed);
        let t = publish::unix_nanos();
        events.clear();
        events.extend((seq..seq + batch).map(|s| (s, t)));
        seq += batch;
        p.send(&events).await;
    }
    Ok(())
}

/// Where the publisher writes, opened on the publisher's own thread.
enum SinkSpec {
    Redis {
        url: String,
        stream: String,
        maxlen: u64,
    },
    Reference {
        url: String,
    },
}

/// Everything the publisher needs once the subscribers are in place.
struct Go {
    ctx: Arc<Ctx>,
    owed: Owed,
    orders: u64,
    window: Window,
    clock: Clock,
    end: Instant,
    rate: Rate,
    batch: u32,
    max_lag: u32,
}

type PublisherThread = std::thread::JoinHandle<anyhow::Result<Published>>;

/// Starts the publisher on a thread with its own single-threaded runtime, so that publishing
/// on time never waits behind thousands of subscriber tasks on the main runtime (their delay
/// would be charged to the server as latency). It connects at once and reports on the first
/// channel; it publishes when it gets [`Go`].
fn spawn_publisher(
    spec: SinkSpec,
) -> anyhow::Result<(
    oneshot::Receiver<anyhow::Result<()>>,
    oneshot::Sender<Go>,
    PublisherThread,
)> {
    let (ready_tx, ready_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel::<Go>();
    let thread = std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("publisher runtime")?;
            rt.block_on(async move {
                let sink = match &spec {
                    SinkSpec::Redis {
                        url,
                        stream,
                        maxlen,
                    } => Sink::redis(url, stream, *maxlen).await,
                    SinkSpec::Reference { url } => Sink::reference(url).await,
                };
                let sink = match sink {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Ok(Published::default());
                    }
                };
                let Ok(go) = go_rx.await else {
                    return Ok(Published::default());
                };
                let mut p = Publisher {
                    sink,
                    ctx: go.ctx,
                    owed: go.owed,
                    orders: go.orders,
                    window: go.window,
                    out: Published::default(),
                    batch: Vec::new(),
                };
                match go.rate {
                    Rate::PerSecond(r) => publish_open_loop(&mut p, go.clock, r, go.end).await?,
                    Rate::Max => publish_closed_loop(&mut p, go.end, go.batch, go.max_lag).await?,
                }
                Ok(p.out)
            })
        })
        .context("starting the publisher thread")?;
    Ok((ready_rx, go_tx, thread))
}

/// How the subscribers came up, over all processes.
struct Opened {
    /// Per index: connected, subscribed and reading (not stalled).
    reading: Vec<bool>,
    connected: u64,
    stalled: u64,
    connect_errors: BTreeMap<String, u64>,
    connect_time: Duration,
    processes: Vec<ProcessInfo>,
}

/// What the subscribers found, over all processes, once stopped.
struct Finished {
    counts: Counts,
    lost: BTreeMap<String, u64>,
    stalled_end: BTreeMap<String, u64>,
    first_server_error: Option<String>,
    latency: Histogram<u64>,
}

impl Default for Finished {
    fn default() -> Finished {
        Finished {
            counts: Counts::default(),
            lost: BTreeMap::new(),
            stalled_end: BTreeMap::new(),
            first_server_error: None,
            latency: stats::latency_histogram(),
        }
    }
}

/// Stops this process's subscribers and adds up what they found.
async fn finish_local(
    mut tasks: JoinSet<SubOutcome>,
    stop: watch::Sender<bool>,
    ctx: &Ctx,
) -> anyhow::Result<Finished> {
    let _ = stop.send(true);
    let mut f = Finished::default();
    while let Some(r) = tasks.join_next().await {
        let o = r.context("a subscriber task failed")?;
        f.counts.add(&o.counts);
        if f.first_server_error.is_none() {
            f.first_server_error = o.first_error;
        }
        match o.end {
            End::Stopped => {}
            End::Lost(reason) if reason == "not connected" => {}
            End::Lost(reason) => *f.lost.entry(reason).or_insert(0) += 1,
            End::Stalled(reason) => *f.stalled_end.entry(reason).or_insert(0) += 1,
        }
    }
    f.latency = stats::merge_shards(&ctx.latency);
    Ok(f)
}

/// The subscribers of a run: tasks of this process, or subscriber processes.
enum Clients {
    Local {
        tasks: JoinSet<SubOutcome>,
        stop: watch::Sender<bool>,
    },
    Processes(shards::Children),
}

impl Clients {
    async fn open(
        args: &FanoutArgs,
        endpoints: &Arc<Vec<Endpoint>>,
        ctx: &Arc<Ctx>,
    ) -> anyhow::Result<(Clients, Opened)> {
        if args.processes > 1 {
            return shards::Children::spawn(args, ctx).await;
        }
        let (stop, stop_rx) = watch::channel(false);
        let subs = open_subscribers(args, endpoints, ctx, &stop_rx, Shard::ALL).await?;
        let opened = Opened {
            reading: subs.reading,
            connected: subs.connected,
            stalled: subs.stalled,
            connect_errors: subs.connect_errors,
            connect_time: subs.connect_time,
            processes: vec![ProcessInfo::this(
                "publisher+subscribers",
                u64::from(args.connections),
            )],
        };
        let tasks = subs.tasks;
        Ok((Clients::Local { tasks, stop }, opened))
    }

    /// Hands the measured window to subscriber processes (this process's subscribers read it
    /// from the shared context) and returns once all of them have it.
    async fn start(&mut self, window: Window) -> anyhow::Result<()> {
        match self {
            Clients::Local { .. } => Ok(()),
            Clients::Processes(c) => c.start(window).await,
        }
    }

    async fn finish(self, ctx: &Ctx) -> anyhow::Result<Finished> {
        match self {
            Clients::Local { tasks, stop } => finish_local(tasks, stop, ctx).await,
            Clients::Processes(c) => c.finish().await,
        }
    }
}

pub async fn run(args: FanoutArgs) -> anyhow::Result<()> {
    if args.duration.is_zero() {
        bail!("--duration must be positive");
    }
    if !(0.0..100.0).contains(&args.stalled_percent) {
        bail!("--stalled-percent must be in [0, 100)");
    }
    if let Some(k) = args.shard {
        return shards::child(
            args.clone(),
            Shard {
                index: k,
                of: args.processes,
            },
        )
        .await;
    }
    if args.sse_connections > 0
        && (!matches!(args.rate, Rate::PerSecond(_))
            || args.processes > 1
            || args.mode != Mode::Broadcast
            || args.target != Target::Herald)
    {
        bail!(
            "--sse-connections runs with --target herald, --mode broadcast, an events/s --rate and one process"
        );
    }
    let started_at = SystemTime::now();
    let endpoints = resolve_endpoints(&args).await?;
    let endpoint = &endpoints[0];

    // The publisher connects first: no point opening 10,000 sockets if it cannot.
    let sink_spec = match args.target {
        Target::Herald => SinkSpec::Redis {
            url: args.redis_url.clone(),
            stream: args.stream.clone(),
            maxlen: args.maxlen,
        },
        Target::Reference => SinkSpec::Reference {
            url: args.publish_url.clone().unwrap_or_else(|| {
                let base = endpoint.url.trim_start_matches("ws://");
                let host = base.split('/').next().unwrap_or(base);
                format!("ws://{host}/publish")
            }),
        },
    };
    let (publisher_ready, publisher_go, publisher) = spawn_publisher(sink_spec)?;
    publisher_ready
        .await
        .context("the publisher thread ended")??;

    eprintln!(
        "fanout: {:?} {} subscribers ({}) on {}{}, {} for {} after {} warm-up, events via {}",
        args.mode,
        args.connections,
        args.protocol.subprotocol(),
        args.url,
        if args.processes > 1 {
            format!(" from {} processes", args.processes)
        } else {
            String::new()
        },
        args.rate.describe(),
        humantime::format_duration(args.duration),
        humantime::format_duration(args.warmup),
        match args.target {
            Target::Herald => format!("XADD {} on {}", args.stream, args.redis_url),
            Target::Reference => "the reference /publish socket".into(),
        },
    );

    let ctx = Ctx::new();
    let (mut clients, mut opened) = Clients::open(&args, &endpoints, &ctx).await?;
    if opened.connected == 0 {
        bail!("no subscriber could connect");
    }
    // Every SSE stream is live once its response head arrived (Herald answers only then).
    let sse_ctx = Ctx::new();
    let mut sse_subs = if args.sse_connections > 0 {
        let subs = sse::open(&args, &sse_ctx).await?;
        eprintln!(
            "fanout: {} of {} SSE streams open in {:.2} s",
            subs.connected,
            args.sse_connections,
            subs.connect_time.as_secs_f64()
        );
        Some(subs)
    } else {
        None
    };
    if !args.protocol.acks_subscriptions() {
        tokio::time::sleep(args.settle).await;
    }

    let reading_count = opened.reading.iter().filter(|&&r| r).count() as u64;
    let clock = Clock::now();
    let (t0, wall0) = (clock.t0, clock.wall0);
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let window = Window {
        warm_end: wall0 + nanos(args.warmup),
        end: wall0 + nanos(args.warmup + args.duration),
    };
    let _ = ctx.window.set(window);
    let _ = sse_ctx.window.set(window);
    clients.start(window).await?;
    let end = t0 + args.warmup + args.duration;
    let progress = tokio::spawn(progress(ctx.clone(), t0, args.warmup, end));
    let go = Go {
        ctx: ctx.clone(),
        owed: Owed {
            mode: args.mode,
            reading: std::mem::take(&mut opened.reading),
            reading_count,
        },
        orders: u64::from(args.connections),
        window,
        clock,
        end,
        rate: args.rate,
        batch: args.batch,
        max_lag: args.max_lag,
    };
    if publisher_go.send(go).is_err() {
        bail!("the publisher thread ended early");
    }
    let published = tokio::task::spawn_blocking(move || publisher.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the publisher thread panicked"))??;
    let drain_deadline = Instant::now() + args.drain;
    // Broadcast: every event is owed to every open stream.
    let sse_connected = sse_subs.as_ref().map_or(0, |s| s.connected);
    let sse_owed = published.total * sse_connected;
    while (ctx.outstanding() > 0 || sse_ctx.delivered.load(Ordering::Relaxed) < sse_owed)
        && Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    progress.abort();
    eprintln!();

    let finished = clients.finish(&ctx).await?;
    let sse = match sse_subs.take() {
        Some(subs) => {
            let f = finish_local(subs.tasks, subs.stop, &sse_ctx).await?;
            Some(SseReport {
                connected: subs.connected,
                connect_errors: subs.connect_errors,
                connect_time: subs.connect_time,
                expected: published.measured * subs.connected,
                latency: LatencySummary::from_histogram(&f.latency),
                histogram: f.latency,
                counts: f.counts,
                lost: f.lost,
                first_server_error: f.first_server_error,
            })
        }
        None => None,
    };
    let report = Report {
        args: &args,
        endpoint,
        nodes: endpoints.len(),
        started_at,
        connected: opened.connected,
        connect_errors: opened.connect_errors,
        connect_time: opened.connect_time,
        stalled: opened.stalled,
        reading: reading_count,
        published,
        counts: finished.counts,
        latency: LatencySummary::from_histogram(&finished.latency),
        lost: finished.lost,
        stalled_end: finished.stalled_end,
        first_server_error: finished.first_server_error,
        processes: opened.processes,
        sse,
    };
    print!("{}", report.table().render());
    if let Some(path) = &args.out.json {
        stats::write_json(path, &report.json())?;
    }
    if let Some(path) = &args.out.svg {
        let mut series = vec![("publish->receive", &finished.latency)];
        if let Some(sse) = &report.sse {
            series[0].0 = "WebSocket publish->receive";
            series.push(("SSE publish->receive", &sse.histogram));
        }
        stats::write_svg(path, &report.title(), &series)?;
    }
    Ok(())
}

/// The `\r`-updated progress line on stderr, once a second.
async fn progress(ctx: Arc<Ctx>, t0: Instant, warmup: Duration, end: Instant) {
    let mut ticker = stats::Ticker::new(t0);
    let mut delivered = stats::LiveRate::default();
    loop {
        let tick = ticker.tick().await;
        let per_s = delivered.per_s(ctx.delivered.load(Ordering::Relaxed), &tick);
        let phase = if tick.now < t0 + warmup {
            "warmup"
        } else if tick.now < end {
            "measure"
        } else {
            "drain"
        };
        let remote = ctx.remote_p99_us.load(Ordering::Relaxed);
        let p99 = ctx.latency[0]
            .quantile_ms(0.99)
            .or((remote > 0).then(|| remote as f64 / 1000.0))
            .map_or_else(|| "-".to_string(), stats::ms);
        stats::progress_line(format_args!(
            "[fanout] {:>6.1}s {phase:<7} {per_s:>10.0} deliveries/s  outstanding {:>8}  p99 {p99}  lost {}",
            tick.elapsed_s,
            ctx.outstanding(),
            ctx.disconnected.load(Ordering::Relaxed),
        ));
    }
}

struct Report<'a> {
    args: &'a FanoutArgs,
    /// The first node's endpoint (the only one unless `--url` lists several).
    endpoint: &'a Endpoint,
    nodes: usize,
    started_at: SystemTime,
    connected: u64,
    connect_errors: BTreeMap<String, u64>,
    connect_time: Duration,
    stalled: u64,
    reading: u64,
    published: Published,
    counts: Counts,
    latency: Option<LatencySummary>,
    lost: BTreeMap<String, u64>,
    stalled_end: BTreeMap<String, u64>,
    first_server_error: Option<String>,
    processes: Vec<ProcessInfo>,
    /// The SSE streams of the same run, if any.
    sse: Option<SseReport>,
}

/// What the SSE streams of a run found.
struct SseReport {
    connected: u64,
    connect_errors: BTreeMap<String, u64>,
    connect_time: Duration,
    /// Deliveries owed for the measured events (every stream gets every event).
    expected: u64,
    counts: Counts,
    latency: Option<LatencySummary>,
    histogram: Histogram<u64>,
    lost: BTreeMap<String, u64>,
    first_server_error: Option<String>,
}

impl SseReport {
    fn add_rows(&self, t: &mut Table, requested: u32, seconds: f64) {
        t.row(
            "SSE streams",
            format!(
                "{} of {requested} in {:.2} s",
                self.connected,
                self.connect_time.as_secs_f64()
            ),
        );
        for (e, n) in &self.connect_errors {
            t.row(format!("SSE connect error {e}"), n.to_string());
        }
        t.row(
            "SSE deliveries",
            format!("{:.1}/s", self.counts.arrived_in_window as f64 / seconds),
        )
        .row(
            "SSE expected / received",
            format!("{} / {}", self.expected, self.counts.measured),
        );
        t.latency("SSE publish->receive", self.latency.as_ref());
        let c = &self.counts;
        for (name, v) in [
            ("SSE gap events", c.gap_events),
            ("SSE duplicates", c.duplicates),
            ("SSE events without marks", c.unmarked),
            ("SSE server errors", c.server_errors),
        ] {
            if v > 0 {
                t.row(name, v.to_string());
            }
        }
        if let Some(e) = &self.first_server_error {
            t.row("SSE first server error", e.clone());
        }
        for (reason, n) in &self.lost {
            t.row(format!("SSE lost ({reason})"), n.to_string());
        }
    }

    fn json(&self, seconds: f64) -> serde_json::Value {
        json!({
            "connected": self.connected,
            "connect_errors": self.connect_errors,
            "connect_time_s": self.connect_time.as_secs_f64(),
            "deliveries_per_s": self.counts.arrived_in_window as f64 / seconds,
            "expected_deliveries": self.expected,
            "received": self.counts.measured,
            "missing": self.expected.saturating_sub(self.counts.measured),
            "counts": self.counts,
            "latency_ms": self.latency,
            "lost": self.lost,
            "first_server_error": self.first_server_error,
        })
    }
}

impl Report<'_> {
    fn seconds(&self) -> f64 {
        self.args.duration.as_secs_f64()
    }

    fn deliveries_per_s(&self) -> f64 {
        self.counts.arrived_in_window as f64 / self.seconds()
    }

    fn missing(&self) -> u64 {
        self.published
            .owed_measured
            .saturating_sub(self.counts.measured)
    }

    fn rate_json(&self) -> serde_json::Value {
        match self.args.rate {
            Rate::PerSecond(r) => json!(r),
            Rate::Max => json!("max"),
        }
    }

    /// The run's heading: label, mode, connections, rate and server.
    fn title(&self) -> String {
        let a = self.args;
        format!(
            "fanout{}: {:?}, {} connections, {} against {:?} {}",
            a.out.tag(),
            a.mode,
            a.connections,
            a.rate.describe(),
            a.target,
            self.endpoint.url,
        )
    }

    fn table(&self) -> Table {
        let a = self.args;
        let mut t = Table::default();
        t.section(self.title());
        t.row(
            "connected",
            format!(
                "{} of {} in {:.2} s ({} reading, {} stalled)",
                self.connected,
                a.connections,
                self.connect_time.as_secs_f64(),
                self.reading,
                self.stalled
            ),
        );
        for (e, n) in &self.connect_errors {
            t.row(format!("connect error {e}"), n.to_string());
        }
        t.row("measured window", format!("{:.2} s", self.seconds()))
            .row(
                "events published",
                format!(
                    "{} in window ({:.1}/s), {} in all",
                    self.published.measured,
                    self.published.measured as f64 / self.seconds(),
                    self.published.total
                ),
            )
            .row("deliveries", format!("{:.1}/s", self.deliveries_per_s()))
            .row(
                "expected / received",
                format!(
                    "{} / {}",
                    self.published.owed_measured, self.counts.measured
                ),
            )
            .row("missing", self.missing().to_string());
        t.latency("publish->receive", self.latency.as_ref());
        if let Some(lag) = &self.published.lag {
            t.row(
                "publish lag p99 / max",
                format!("{} / {}", stats::ms(lag.p99), stats::ms(lag.max)),
            );
        }
        let c = &self.counts;
        for (name, v) in [
            ("gap events", c.gap_events),
            ("duplicates", c.duplicates),
            ("foreign events", c.foreign),
            ("events without marks", c.unmarked),
            ("server errors", c.server_errors),
            ("unsent (publisher behind)", self.published.unsent),
            ("publish errors", self.published.errors),
        ] {
            if v > 0 {
                t.row(name, v.to_string());
            }
        }
        if let Some(e) = &self.first_server_error {
            t.row("first server error", e.clone());
        }
        for (reason, n) in &self.lost {
            t.row(format!("lost ({reason})"), n.to_string());
        }
        for (reason, n) in &self.stalled_end {
            t.row(format!("stalled, after run: {reason}"), n.to_string());
        }
        if let Some(sse) = &self.sse {
            sse.add_rows(&mut t, a.sse_connections, self.seconds());
        }
        for p in &self.processes {
            p.add_row(&mut t);
        }
        t
    }

    fn json(&self) -> serde_json::Value {
        let a = self.args;
        json!({
            "scenario": "fanout",
            "label": a.out.label,
            "target": a.target,
            "url": self.args.url,
            "nodes": self.nodes,
            "protocol": a.protocol,
            "mode": a.mode,
            "connections": a.connections,
            "connected": self.connected,
            "connect_errors": self.connect_errors,
            "connect_time_s": self.connect_time.as_secs_f64(),
            "reading": self.reading,
            "stalled": self.stalled,
            "rate": self.rate_json(),
            "duration_s": self.seconds(),
            "warmup_s": a.warmup.as_secs_f64(),
            "published_in_window": self.published.measured,
            "published_total": self.published.total,
            "publish_rate_per_s": self.published.measured as f64 / self.seconds(),
            "publish_errors": self.published.errors,
            "unsent": self.published.unsent,
            "publish_lag_ms": self.published.lag,
            "deliveries_per_s": self.deliveries_per_s(),
            "expected_deliveries": self.published.owed_measured,
            "received": self.counts.measured,
            "missing": self.missing(),
            "counts": self.counts,
            "latency_ms": self.latency,
            "lost": self.lost,
            "stalled_after_run": self.stalled_end,
            "first_server_error": self.first_server_error,
            "processes": self.processes,
            "sse_connections": a.sse_connections,
            "sse": self.sse.as_ref().map(|sse| sse.json(self.seconds())),
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
    fn stalled_subscribers_are_exactly_the_share_asked_for_and_spread_out() {
        let n = 1000;
        let count = stalled_count(n, 5.0);
        assert_eq!(count, 50);
        let stalled: Vec<u64> = (0..n).filter(|&i| is_stalled(i, n, count)).collect();
        assert_eq!(stalled.len(), 50);
        // Evenly spread: one in every 20.
        assert!(stalled.windows(2).all(|w| w[1] - w[0] == 20), "{stalled:?}");
        assert_eq!((0..n).filter(|&i| is_stalled(i, n, 0)).count(), 0);
        assert_eq!(stalled_count(3, 50.0), 2);
    }

    #[test]
    fn rate_is_a_positive_number_or_max() {
        assert_eq!(parse_rate("max"), Ok(Rate::Max));
        assert_eq!(parse_rate("MAX"), Ok(Rate::Max));
        assert_eq!(parse_rate("1000"), Ok(Rate::PerSecond(1000.0)));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("-5").is_err());
        assert!(parse_rate("inf").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn broadcast_events_are_owed_to_every_reader_targeted_to_their_order_only() {
        let owed = Owed {
            mode: Mode::Broadcast,
            reading: vec![true, false, true, true],
            reading_count: 3,
        };
        assert_eq!(owed.for_seq(0), 3);
        assert_eq!(owed.for_seq(1), 3);
        let owed = Owed {
            mode: Mode::Targeted,
            ..owed
        };
        // Event seq is about order lt-(seq mod 4); lt-1 is stalled or not connected.
        assert_eq!(
            (0..8).map(|s| owed.for_seq(s)).collect::<Vec<_>>(),
            vec![1, 0, 1, 1, 1, 0, 1, 1]
        );
        assert!((owed.per_event() - 0.75).abs() < 1e-9);
    }

    #[test]
    fn connection_ends_are_named_by_close_code_or_transport() {
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
        let close = |code: u16| {
            Some(Ok(Message::Close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: "slow".into(),
            }))))
        };
        assert_eq!(end_reason(close(4008)).as_deref(), Some("close 4008"));
        assert_eq!(end_reason(None).as_deref(), Some("eof"));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(
            end_reason(Some(Err(tungstenite::Error::Io(reset)))).as_deref(),
            Some("reset")
        );
        assert_eq!(end_reason(Some(Ok(Message::text("x")))), None);
    }

    #[test]
    fn connect_errors_group_by_their_innermost_cause() {
        assert_eq!(
            shorten_error("WebSocket handshake: HTTP error: 503 Service Unavailable"),
            "503 Service Unavailable"
        );
        assert_eq!(shorten_error("plain"), "plain");
    }
}
