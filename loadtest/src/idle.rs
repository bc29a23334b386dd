//! The `idle` scenario: what an idle subscriber costs the server. Reads the server's resident
//! memory (VmRSS of `--pid`), opens N connections that each hold one targeted subscription and
//! then stay silent (answering pings only), waits for the server's RSS to settle, and reports
//! the growth per connection. The same run against the reference server gives the comparison.
//! `--processes P` opens the connections from P processes ([`crate::procs`]), each under its
//! own descriptor limit; this one only measures.

use crate::procs::{self, ProcessInfo, Shard, Workers, send_line};
use crate::stats::Table;
use crate::sys;
use crate::ws::{self, Endpoint, Protocol, ServerMsg, Topic, Ws};
use anyhow::{Context, bail};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

#[derive(Args, Debug)]
pub struct IdleArgs {
    /// Subscriber endpoint.
    #[arg(long, default_value = "ws://127.0.0.1:8080/graphql")]
    url: String,

    /// API key sent in `connection_init` (graphql-transport-ws) or AppSync's `header`.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,

    #[arg(long, value_enum, default_value = "graphql-transport-ws")]
    protocol: Protocol,

    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    connections: u32,

    /// The server process whose memory is measured.
    #[arg(long)]
    pid: u32,

    /// Keep the connections open this long after measuring (e.g. to look at the server).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    hold: Duration,

    /// graphql-transport-ws has no subscription acknowledgement: wait this long after the last
    /// `subscribe` before measuring.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    settle: Duration,

    /// Give up waiting for the RSS to stop moving after this long (and report it as is).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    settle_timeout: Duration,

    /// Spread connections over this many loopback source addresses (127.0.0.1 ..).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u8).range(1..))]
    source_ips: u8,

    /// Connections being opened at once.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    connect_concurrency: u32,

    /// Read buffer per client socket (bytes).
    #[arg(long, default_value_t = 1024)]
    read_buffer: usize,

    /// Open the connections from this many processes (this binary, started again), each with
    /// its own descriptor limit; this process only measures.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    processes: u32,

    /// Internal: this process is connection process K of --processes.
    #[arg(long, hide = true)]
    shard: Option<u32>,

    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,

    /// Free text stored with the results (e.g. "herald" or "reference").
    #[arg(long)]
    label: Option<String>,
}

/// VmRSS of a process in KiB, from `/proc/<pid>/status`.
pub fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_rss(&text).with_context(|| format!("{path}: no VmRSS line"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => Some(value),
        _ => None,
    }
}

/// Whether RSS samples (oldest first) have stopped moving: the last `n` lie within
/// max(64 KiB, 0.5 %) of each other.
fn settled(samples: &[u64], n: usize) -> bool {
    if samples.len() < n {
        return false;
    }
    let tail = &samples[samples.len() - n..];
    let (lo, hi) = tail
        .iter()
        .fold((u64::MAX, 0), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    hi - lo <= (hi / 200).max(64)
}

/// One idle connection: answers pings, notes whether it is still open.
async fn hold(mut ws: Ws, mut stop: watch::Receiver<bool>, lost: Arc<AtomicU64>) {
    loop {
        tokio::select! {
            _ = stop.changed() => {
                let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
                return;
            }
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    if ws::parse_server_msg(&t) == ServerMsg::Ping && ws.send(ws::pong()).await.is_err() {
                        lost.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    lost.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Some(Ok(_)) => {}
            }
        }
    }
}

/// One process's share of the connections, open and idle.
struct Held {
    tasks: JoinSet<()>,
    stop: watch::Sender<bool>,
    lost: Arc<AtomicU64>,
    connected: u64,
    failed: u64,
    first_error: Option<String>,
}

impl Held {
    async fn release(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn open_share(args: &IdleArgs, endpoint: &Arc<Endpoint>, shard: Shard) -> Held {
    let n = u64::from(args.connections);
    let gate = Arc::new(Semaphore::new(args.connect_concurrency as usize));
    let (stop, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let lost = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for i in shard.indices(n) {
        let (endpoint, gate, ready_tx, stop, lost) = (
            endpoint.clone(),
            gate.clone(),
            ready_tx.clone(),
            stop_rx.clone(),
            lost.clone(),
        );
        tasks.spawn(async move {
            let opened = async {
                let _permit = gate.acquire().await?;
                let mut ws = endpoint.open(i as usize).await?;
                endpoint
                    .subscribe(&mut ws, &Topic::Order(format!("lt-{i}")))
                    .await?;
                anyhow::Ok(ws)
            }
            .await;
            match opened {
                Ok(ws) => {
                    let _ = ready_tx.send(Ok(()));
                    drop(ready_tx);
                    hold(ws, stop, lost).await;
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                }
            }
        });
    }
    drop(ready_tx);
    let (mut connected, mut failed) = (0u64, 0u64);
    let mut first_error = None;
    while let Some(r) = ready_rx.recv().await {
        match r {
            Ok(()) => connected += 1,
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
        if shard == Shard::ALL && ((connected + failed) % 500 == 0 || connected + failed == n) {
            crate::stats::progress_line(format_args!(
                "[idle] connected {connected}/{n}, failed {failed}"
            ));
        }
    }
    if shard == Shard::ALL {
        eprintln!();
    }
    Held {
        tasks,
        stop,
        lost,
        connected,
        failed,
        first_error,
    }
}

/// What a connection process says: once connected, and when asked how it stands.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ChildMsg {
    Ready {
        connected: u64,
        failed: u64,
        first_error: Option<String>,
        /// Its own RSS before connecting.
        rss_before_kib: u64,
        process: ProcessInfo,
    },
    Status {
        closed_by_server: u64,
        rss_kib: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ParentMsg {
    Status,
    Stop,
}

fn own_rss_kib() -> u64 {
    vm_rss_kib(std::process::id()).unwrap_or(0)
}

/// A connection process: opens its share, then answers `status` until `stop` (or the end of
/// its stdin).
async fn child(args: IdleArgs, shard: Shard) -> anyhow::Result<()> {
    let mut endpoint = Endpoint::resolve(&args.url, args.api_key.clone(), args.protocol).await?;
    endpoint.source_ips = args.source_ips;
    endpoint.read_buffer = args.read_buffer;
    let endpoint = Arc::new(endpoint);
    let rss_before_kib = own_rss_kib();
    let held = open_share(&args, &endpoint, shard).await;
    send_line(&ChildMsg::Ready {
        connected: held.connected,
        failed: held.failed,
        first_error: held.first_error.clone(),
        rss_before_kib,
        process: ProcessInfo::this("connections", shard.len(u64::from(args.connections))),
    })?;
    let mut lines = procs::parent_lines();
    while let Some(line) = lines.next_line().await? {
        match serde_json::from_str::<ParentMsg>(&line)
            .with_context(|| format!("from the parent: {line}"))?
        {
            ParentMsg::Status => send_line(&ChildMsg::Status {
                closed_by_server: held.lost.load(Ordering::Relaxed),
                rss_kib: own_rss_kib(),
            })?,
            ParentMsg::Stop => break,
        }
    }
    held.release().await;
    Ok(())
}

/// The connections of a run: in this process or in connection processes.
enum Conns {
    Local(Held),
    Processes(Workers<ChildMsg>),
}

impl Conns {
    /// Connections closed by the server so far, and the RSS of the processes holding them.
    async fn status(&mut self) -> anyhow::Result<(u64, u64)> {
        match self {
            Conns::Local(h) => Ok((h.lost.load(Ordering::Relaxed), own_rss_kib())),
            Conns::Processes(w) => {
                w.tell_all(&ParentMsg::Status).await?;
                let mut total = (0, 0);
                for msg in w.one_from_each("its status").await? {
                    let ChildMsg::Status {
                        closed_by_server,
                        rss_kib,
                    } = msg
                    else {
                        bail!("expected a status, got {msg:?}");
                    };
                    total = (total.0 + closed_by_server, total.1 + rss_kib);
                }
                Ok(total)
            }
        }
    }

    async fn release(self) -> anyhow::Result<()> {
        match self {
            Conns::Local(h) => {
                h.release().await;
                Ok(())
            }
            Conns::Processes(mut w) => {
                w.tell_all(&ParentMsg::Stop).await?;
                w.wait().await
            }
        }
    }
}

pub async fn run(args: IdleArgs) -> anyhow::Result<()> {
    if let Some(k) = args.shard {
        let shard = Shard {
            index: k,
            of: args.processes,
        };
        return child(args, shard).await;
    }
    let started_at = SystemTime::now();
    let mut endpoint = Endpoint::resolve(&args.url, args.api_key.clone(), args.protocol).await?;
    endpoint.source_ips = args.source_ips;
    endpoint.read_buffer = args.read_buffer;
    let endpoint = Arc::new(endpoint);
    let n = args.connections;

    let before = vm_rss_kib(args.pid).context("--pid: reading the server's memory")?;
    eprintln!(
        "idle: {n} connections ({}) to {}{}, server pid {} at {before} KiB RSS",
        args.protocol.subprotocol(),
        endpoint.url,
        if args.processes > 1 {
            format!(" from {} processes", args.processes)
        } else {
            String::new()
        },
        args.pid
    );

    let t0 = Instant::now();
    let (mut conns, connected, failed, first_error, own_before, processes) = if args.processes > 1 {
        let mut w = Workers::spawn(args.processes, "connection process", |_, m| Some(m))?;
        let (mut connected, mut failed, mut first_error, mut own_before) = (0, 0, None, 0);
        let mut processes = vec![ProcessInfo::this("measures", 0)];
        for msg in w.one_from_each("ready").await? {
            let ChildMsg::Ready {
                connected: c,
                failed: f,
                first_error: e,
                rss_before_kib,
                process,
            } = msg
            else {
                bail!("expected ready, got {msg:?}");
            };
            connected += c;
            failed += f;
            first_error = first_error.or(e);
            own_before += rss_before_kib;
            processes.push(process);
        }
        eprintln!("[idle] connected {connected}/{n}, failed {failed}");
        (
            Conns::Processes(w),
            connected,
            failed,
            first_error,
            own_before,
            processes,
        )
    } else {
        let own_before = own_rss_kib();
        let held = open_share(&args, &endpoint, Shard::ALL).await;
        let (connected, failed, first_error) =
            (held.connected, held.failed, held.first_error.clone());
        (
            Conns::Local(held),
            connected,
            failed,
            first_error,
            own_before,
            vec![ProcessInfo::this("measures+connections", u64::from(n))],
        )
    };
    let connect_time = t0.elapsed();
    if let Some(e) = &first_error {
        eprintln!("idle: first connect error: {e}");
    }
    if connected == 0 {
        bail!("no connection could be opened");
    }
    if !args.protocol.acks_subscriptions() {
        tokio::time::sleep(args.settle).await;
    }

    let settle_start = Instant::now();
    let mut samples = vec![vm_rss_kib(args.pid)?];
    while !settled(&samples, 4) && settle_start.elapsed() < args.settle_timeout {
        tokio::time::sleep(Duration::from_millis(500)).await;
        samples.push(vm_rss_kib(args.pid)?);
    }
    let after = samples.last().copied().unwrap_or(before);
    let is_settled = settled(&samples, 4);
    let (lost_now, own_after) = conns.status().await?;
    let per_conn = after.saturating_sub(before) as f64 / connected as f64;
    let client_per_conn = own_after.saturating_sub(own_before) as f64 / connected as f64;

    let mut t = Table::default();
    t.section(format!(
        "idle{}: {n} connections ({}) to {}",
        args.label
            .as_deref()
            .map_or_else(String::new, |l| format!(" [{l}]")),
        args.protocol.subprotocol(),
        endpoint.url
    ));
    t.row(
        "connected",
        format!(
            "{connected} of {n} in {:.2} s ({failed} failed)",
            connect_time.as_secs_f64()
        ),
    )
    .row("server RSS before", format!("{before} KiB"))
    .row(
        "server RSS after",
        format!(
            "{after} KiB ({} after {:.1} s)",
            if is_settled { "settled" } else { "NOT settled" },
            settle_start.elapsed().as_secs_f64()
        ),
    )
    .row("server per connection", format!("{per_conn:.2} KiB"))
    .row(
        "load client per connection",
        format!("{client_per_conn:.2} KiB"),
    );
    if lost_now > 0 {
        t.row("closed by the server", lost_now.to_string());
    }
    for p in &processes {
        p.add_row(&mut t);
    }
    print!("{}", t.render());

    if let Some(path) = &args.json {
        let v = json!({
            "scenario": "idle",
            "label": args.label,
            "url": endpoint.url,
            "protocol": args.protocol,
            "connections": n,
            "connected": connected,
            "failed": failed,
            "first_error": first_error,
            "connect_time_s": connect_time.as_secs_f64(),
            "server_pid": args.pid,
            "server_rss_before_kib": before,
            "server_rss_after_kib": after,
            "settled": is_settled,
            "rss_samples_kib": samples,
            "server_kib_per_connection": per_conn,
            "client_kib_per_connection": client_per_conn,
            "closed_by_server": lost_now,
            "processes": processes,
            "started_at": humantime::format_rfc3339_seconds(started_at).to_string(),
            "machine": sys::machine(),
            "tool": { "name": env!("CARGO_PKG_NAME"), "version": env!("CARGO_PKG_VERSION") },
        });
        crate::stats::write_json(path, &v)?;
    }

    if !args.hold.is_zero() {
        eprintln!(
            "idle: holding for {}",
            humantime::format_duration(args.hold)
        );
        tokio::time::sleep(args.hold).await;
    }
    conns.release().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_from_proc_status() {
        let status = "Name:\therald\nVmPeak:\t  200000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(12345));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t 12 MB\n"), None);
        // Our own process has one.
        assert!(vm_rss_kib(std::process::id()).expect("own RSS") > 0);
    }

    #[test]
    fn connection_process_lines_parse_back() {
        let ready = ChildMsg::Ready {
            connected: 9,
            failed: 1,
            first_error: Some("refused".into()),
            rss_before_kib: 4096,
            process: ProcessInfo::this("connections", 10),
        };
        let line = serde_json::to_string(&ready).expect("json");
        assert!(
            line.starts_with(r#"{"ready":{"connected":9,"failed":1,"#),
            "{line}"
        );
        match serde_json::from_str::<ChildMsg>(&line).expect("parse") {
            ChildMsg::Ready {
                connected, process, ..
            } => assert_eq!((connected, process.connections), (9, 10)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            serde_json::from_str::<ParentMsg>(r#""status""#),
            Ok(ParentMsg::Status)
        ));
        assert!(serde_json::from_str::<ParentMsg>(r#""go""#).is_err());
    }

    #[test]
    fn rss_settles_when_the_last_samples_stop_moving() {
        assert!(!settled(&[100_000, 100_010], 4));
        assert!(!settled(&[50_000, 80_000, 100_000, 100_100], 4));
        assert!(settled(&[50_000, 100_000, 100_020, 100_030, 100_010], 4));
        // Small processes: 64 KiB of noise is still settled.
        assert!(settled(&[1_000, 1_050, 1_010, 1_020], 4));
    }
}
