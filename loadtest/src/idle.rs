//! The `idle` scenario: what an idle subscriber costs the server. Reads the server's resident
//! memory (VmRSS of `--pid`), opens N connections that each hold one targeted subscription and
//! then stay silent (answering pings only), waits for the server's RSS to settle, and reports
//! the growth per connection. The same run against the reference server gives the comparison.

use crate::stats::Table;
use crate::sys;
use crate::ws::{self, Endpoint, Protocol, ServerMsg, Topic, Ws};
use anyhow::{Context, bail};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
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

pub async fn run(args: IdleArgs) -> anyhow::Result<()> {
    let started_at = SystemTime::now();
    let mut endpoint = Endpoint::resolve(&args.url, args.api_key.clone(), args.protocol).await?;
    endpoint.source_ips = args.source_ips;
    endpoint.read_buffer = args.read_buffer;
    let endpoint = Arc::new(endpoint);
    let n = args.connections;

    let own_before = vm_rss_kib(std::process::id()).unwrap_or(0);
    let before = vm_rss_kib(args.pid).context("--pid: reading the server's memory")?;
    eprintln!(
        "idle: {n} connections ({}) to {}, server pid {} at {before} KiB RSS",
        args.protocol.subprotocol(),
        endpoint.url,
        args.pid
    );

    let gate = Arc::new(Semaphore::new(args.connect_concurrency as usize));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let lost = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    let t0 = Instant::now();
    for i in 0..n {
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
        if (connected + failed) % 500 == 0 || connected + failed == u64::from(n) {
            crate::stats::progress_line(format_args!(
                "[idle] connected {connected}/{n}, failed {failed}"
            ));
        }
    }
    eprintln!();
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
    let own_after = vm_rss_kib(std::process::id()).unwrap_or(0);
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
    let lost_now = lost.load(Ordering::Relaxed);
    if lost_now > 0 {
        t.row("closed by the server", lost_now.to_string());
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
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
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
    fn rss_settles_when_the_last_samples_stop_moving() {
        assert!(!settled(&[100_000, 100_010], 4));
        assert!(!settled(&[50_000, 80_000, 100_000, 100_100], 4));
        assert!(settled(&[50_000, 100_000, 100_020, 100_030, 100_010], 4));
        // Small processes: 64 KiB of noise is still settled.
        assert!(settled(&[1_000, 1_050, 1_010, 1_020], 4));
    }
}
