//! `fanout --sse-connections N`: Server-Sent Events subscribers beside the WebSocket ones, in
//! the same run, fed by the same publisher, measured the same way (publish -> receive from the
//! event's own publish time, sequence checks for gaps and duplicates), into histograms and
//! counts of their own so the report puts the two transports side by side.
//!
//! Each subscriber is one HTTP/1.1 connection (hyper's client, chunked body decoded by it) to
//! `GET /v1/events/stream` (broadcast; with `x-api-key`). Herald answers only once the stream
//! is registered with its hub, so a subscriber is live when its response head arrives. Frames
//! are split on blank lines; an event's marks are read from its `data:` line (the event JSON,
//! whose `data` carries `t` and `seq`).

use super::{Counts, Ctx, End, FanoutArgs, HIST_SHARDS, SubOutcome};
use crate::publish;
use crate::ws::{SeqCheck, SeqTracker, connect_tcp, source_addr};
use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// The SSE subscribers of a run.
pub struct SseSubscribers {
    pub tasks: JoinSet<SubOutcome>,
    pub stop: watch::Sender<bool>,
    pub connected: u64,
    pub connect_errors: BTreeMap<String, u64>,
    pub connect_time: Duration,
}

/// `--sse-url`'s address and host header.
fn endpoint(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let addr = host
        .parse::<SocketAddr>()
        .with_context(|| format!("--sse-url: `{url}` is not http://IP:PORT"))?;
    Ok((addr, host))
}

/// Opens `--sse-connections` streams (at most `--connect-concurrency` at a time); returns once
/// each is live or failed.
pub async fn open(args: &FanoutArgs, ctx: &Arc<Ctx>) -> anyhow::Result<SseSubscribers> {
    let Some(url) = &args.sse_url else {
        bail!("--sse-connections needs --sse-url");
    };
    let (addr, host) = endpoint(url)?;
    let n = u64::from(args.sse_connections);
    let key = args.api_key.clone().unwrap_or_default();
    let (stop, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(args.connect_concurrency as usize));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    for i in 0..n {
        let (ctx, gate, ready_tx, stop, host, key) = (
            ctx.clone(),
            gate.clone(),
            ready_tx.clone(),
            stop_rx.clone(),
            host.clone(),
            key.clone(),
        );
        let source_ips = args.source_ips;
        tasks.spawn(async move {
            let opened = async {
                let _permit = gate.acquire().await?;
                let tcp = connect_tcp(addr, source_addr(addr.ip(), i as usize, source_ips)).await?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
                        .await
                        .context("HTTP handshake")?;
                tokio::spawn(conn);
                let request = Request::get("/v1/events/stream")
                    .header("host", host)
                    .header("x-api-key", key)
                    .header("accept", "text/event-stream")
                    .body(Empty::new())?;
                let response = sender.send_request(request).await.context("GET")?;
                if !response.status().is_success() {
                    bail!("HTTP {}", response.status());
                }
                anyhow::Ok(response.into_body())
            };
            match tokio::time::timeout(Duration::from_secs(30), opened).await {
                Ok(Ok(body)) => {
                    let _ = ready_tx.send(Ok(()));
                    drop(ready_tx);
                    read_stream(body, i, ctx, stop).await
                }
                Ok(Err(e)) => {
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                    not_connected()
                }
                Err(_) => {
                    let _ = ready_tx.send(Err("connect timed out".into()));
                    not_connected()
                }
            }
        });
    }
    drop(ready_tx);
    let mut connected = 0;
    let mut connect_errors = BTreeMap::new();
    for _ in 0..n {
        match ready_rx.recv().await {
            Some(Ok(())) => connected += 1,
            Some(Err(e)) => *connect_errors.entry(e).or_insert(0) += 1,
            None => break,
        }
    }
    Ok(SseSubscribers {
        tasks,
        stop,
        connected,
        connect_errors,
        connect_time: started.elapsed(),
    })
}

fn not_connected() -> SubOutcome {
    SubOutcome {
        counts: Counts::default(),
        end: End::Lost("not connected".into()),
        first_error: None,
    }
}

/// Reads one stream until told to stop, as `read_events` reads a WebSocket.
async fn read_stream(
    mut body: Incoming,
    index: u64,
    ctx: Arc<Ctx>,
    mut stop: watch::Receiver<bool>,
) -> SubOutcome {
    let hist = &ctx.latency[index as usize % HIST_SHARDS];
    let mut tracker = SeqTracker::new(0, 1);
    let mut c = Counts::default();
    let mut first_error = None;
    let mut buffer = String::new();
    let end = loop {
        let frame = tokio::select! {
            biased;
            _ = stop.changed() => break End::Stopped,
            f = body.frame() => f,
        };
        let data = match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue, // trailers
            },
            Some(Err(e)) => {
                ctx.disconnected.fetch_add(1, Ordering::Relaxed);
                break End::Lost(format!("error {e}"));
            }
            None => {
                ctx.disconnected.fetch_add(1, Ordering::Relaxed);
                break End::Lost("eof".into());
            }
        };
        buffer.push_str(&String::from_utf8_lossy(&data));
        let now = publish::unix_nanos();
        let window = ctx.window.get();
        let mut delivered = 0;
        let mut start = 0;
        while let Some(len) = buffer[start..].find("\n\n") {
            let text = &buffer[start..start + len];
            start += len + 2;
            match sse_frame(text) {
                SseFrame::Event(Some((t, seq))) => {
                    if window.is_some_and(|w| w.contains(now)) {
                        c.arrived_in_window += 1;
                    }
                    match tracker.observe(seq) {
                        SeqCheck::Foreign => c.foreign += 1,
                        SeqCheck::Duplicate => c.duplicates += 1,
                        check => {
                            if let SeqCheck::Gap(n) = check {
                                c.gap_events += n;
                            }
                            delivered += 1;
                            if window.is_some_and(|w| w.contains(t)) {
                                c.measured += 1;
                                hist.record(Duration::from_nanos(now.saturating_sub(t)));
                            }
                        }
                    }
                }
                SseFrame::Event(None) => c.unmarked += 1,
                SseFrame::Error(e) => {
                    c.server_errors += 1;
                    first_error.get_or_insert(e);
                }
                SseFrame::Comment => c.pings += 1,
            }
        }
        buffer.drain(..start);
        if delivered > 0 {
            ctx.report_delivered(delivered);
        }
    };
    SubOutcome {
        counts: c,
        end,
        first_error,
    }
}

enum SseFrame {
    /// An event with its marks `(t, seq)`, if it had them.
    Event(Option<(u64, u64)>),
    /// `event: error`: its data (shortened).
    Error(String),
    /// Comments only (`retry:`, `: live`, `: ping`).
    Comment,
}

fn sse_frame(text: &str) -> SseFrame {
    let mut event = None;
    let mut data = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("event: ") {
            event = Some(v);
        } else if let Some(v) = line.strip_prefix("data: ") {
            data = Some(v);
        }
    }
    match (event, data) {
        (Some("error"), data) => SseFrame::Error(data.unwrap_or("").chars().take(200).collect()),
        (_, Some(data)) => SseFrame::Event(marks(data)),
        _ => SseFrame::Comment,
    }
}

/// `t` and `seq` of the event JSON's `data` object.
fn marks(data: &str) -> Option<(u64, u64)> {
    let v: serde_json::Value = serde_json::from_str(data).ok()?;
    Some((v["data"]["t"].as_u64()?, v["data"]["seq"].as_u64()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_events_with_marks_errors_or_comments() {
        let event = "id: 1-0\nevent: order.confirmed\ndata: {\"eventId\":\"1-0\",\"data\":{\"t\":7,\"seq\":3}}";
        assert!(matches!(sse_frame(event), SseFrame::Event(Some((7, 3)))));
        assert!(matches!(
            sse_frame("id: 1-0\nevent: order.confirmed\ndata: {}"),
            SseFrame::Event(None)
        ));
        assert!(matches!(
            sse_frame("event: error\ndata: {\"type\":\"/problems/slow-consumer\"}"),
            SseFrame::Error(e) if e.contains("slow-consumer")
        ));
        assert!(matches!(sse_frame(": ping"), SseFrame::Comment));
        assert!(matches!(sse_frame("retry: 3000"), SseFrame::Comment));
    }
}
