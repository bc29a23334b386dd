//! `fanout --processes P`: the subscriber connections are opened by P child processes
//! ([`crate::procs`]), each holding every P-th connection under its own descriptor limit; the
//! parent only publishes and adds up their results exactly (counters summed, histograms merged
//! from their HdrHistogram V2 encoding).
//!
//! The protocol is one JSON object per line. A child writes `ready` (how its connections came
//! up) on stdout, waits for `go` (the measured window) on stdin and answers `started`, then
//! sends `progress` (its cumulative deliveries, so the parent's closed-loop publisher and drain
//! see them) every few milliseconds until `stop` (or the end of stdin), and last `result`.

use super::{Clients, Counts, Ctx, FanoutArgs, Finished, Opened, finish_local, open_subscribers};
use crate::procs::{self, ProcessInfo, Shard, Workers, send_line};
use crate::publish::Window;
use crate::stats;
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often a child reports its deliveries.
const PROGRESS_EVERY: Duration = Duration::from_millis(2);

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ChildMsg {
    Ready {
        connected: u64,
        stalled: u64,
        /// The indices that are connected, subscribed and reading.
        reading: Vec<u64>,
        connect_errors: BTreeMap<String, u64>,
        connect_time_s: f64,
        process: ProcessInfo,
    },
    Started,
    Progress {
        delivered: u64,
        lost: u64,
        /// p99 of one histogram shard so far (ms), for the parent's progress line only.
        p99_ms: Option<f64>,
    },
    Result {
        counts: Counts,
        lost: BTreeMap<String, u64>,
        stalled_end: BTreeMap<String, u64>,
        first_server_error: Option<String>,
        /// The publish -> receive histogram, HdrHistogram V2 + base64.
        latency: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ParentMsg {
    Go { warm_end: u64, end: u64 },
    Stop,
}

/// Adds one child's result into the run's.
fn merge_result(into: &mut Finished, msg: ChildMsg) -> anyhow::Result<()> {
    let ChildMsg::Result {
        counts,
        lost,
        stalled_end,
        first_server_error,
        latency,
    } = msg
    else {
        bail!("expected a result, got {msg:?}");
    };
    into.counts.add(&counts);
    for (k, v) in lost {
        *into.lost.entry(k).or_insert(0) += v;
    }
    for (k, v) in stalled_end {
        *into.stalled_end.entry(k).or_insert(0) += v;
    }
    if into.first_server_error.is_none() {
        into.first_server_error = first_server_error;
    }
    stats::add_histogram(&mut into.latency, &stats::decode_histogram(&latency)?)
}

/// Adds one child's `ready` into the run's.
fn merge_ready(into: &mut Opened, msg: ChildMsg) -> anyhow::Result<()> {
    let ChildMsg::Ready {
        connected,
        stalled,
        reading,
        connect_errors,
        connect_time_s,
        process,
    } = msg
    else {
        bail!("expected ready, got {msg:?}");
    };
    into.connected += connected;
    into.stalled += stalled;
    for i in reading {
        if let Some(r) = into.reading.get_mut(i as usize) {
            *r = true;
        }
    }
    for (k, v) in connect_errors {
        *into.connect_errors.entry(k).or_insert(0) += v;
    }
    into.connect_time = into
        .connect_time
        .max(Duration::from_secs_f64(connect_time_s.max(0.0)));
    into.processes.push(process);
    Ok(())
}

/// A subscriber process: runs its share of the connections under the parent's direction.
pub(super) async fn child(args: FanoutArgs, shard: Shard) -> anyhow::Result<()> {
    let endpoints = super::resolve_endpoints(&args).await?;
    let ctx = Ctx::new();
    let (stop, stop_rx) = watch::channel(false);
    let subs = open_subscribers(&args, &endpoints, &ctx, &stop_rx, shard).await?;
    let n = u64::from(args.connections);
    send_line(&ChildMsg::Ready {
        connected: subs.connected,
        stalled: subs.stalled,
        reading: shard
            .indices(n)
            .filter(|&i| subs.reading[i as usize])
            .collect(),
        connect_errors: subs.connect_errors,
        connect_time_s: subs.connect_time.as_secs_f64(),
        process: ProcessInfo::this("subscribers", shard.len(n)),
    })?;

    let mut stdin = procs::parent_lines();
    let mut forwarder = None;
    while let Some(line) = stdin.next_line().await? {
        match serde_json::from_str::<ParentMsg>(&line)
            .with_context(|| format!("from the parent: {line}"))?
        {
            ParentMsg::Go { warm_end, end } => {
                let _ = ctx.window.set(Window { warm_end, end });
                send_line(&ChildMsg::Started)?;
                forwarder = Some(tokio::spawn(forward_progress(ctx.clone())));
            }
            ParentMsg::Stop => break,
        }
    }
    if let Some(f) = forwarder {
        f.abort();
    }
    send_line(&progress_of(&ctx, p99_hint(&ctx)))?;
    let f = finish_local(subs.tasks, stop, &ctx).await?;
    send_line(&ChildMsg::Result {
        counts: f.counts,
        lost: f.lost,
        stalled_end: f.stalled_end,
        first_server_error: f.first_server_error,
        latency: stats::encode_histogram(&f.latency)?,
    })
}

/// What the parent's progress line shows of this child. The p99 is an indication only (the
/// largest of the latency shards' p99s): the exact figures come merged at the end.
fn progress_of(ctx: &Ctx, p99_ms: Option<f64>) -> ChildMsg {
    ChildMsg::Progress {
        delivered: ctx.delivered.load(Ordering::Relaxed),
        lost: ctx.disconnected.load(Ordering::Relaxed),
        p99_ms,
    }
}

fn p99_hint(ctx: &Ctx) -> Option<f64> {
    ctx.latency
        .iter()
        .filter_map(|h| h.quantile_ms(0.99))
        .reduce(f64::max)
}

/// Counts go to the parent every PROGRESS_EVERY (the publisher and the drain wait on them);
/// the p99, which locks the histograms the subscribers record into, once a second.
async fn forward_progress(ctx: Arc<Ctx>) {
    let mut last = (0, 0);
    let mut p99 = (None, Instant::now());
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = (
            ctx.delivered.load(Ordering::Relaxed),
            ctx.disconnected.load(Ordering::Relaxed),
        );
        if now != last {
            last = now;
            if p99.1.elapsed() >= Duration::from_secs(1) {
                p99 = (p99_hint(&ctx), Instant::now());
            }
            if send_line(&progress_of(&ctx, p99.0)).is_err() {
                return;
            }
        }
    }
}

/// The subscriber processes, seen from the parent.
pub(super) struct Children(Workers<ChildMsg>);

impl Children {
    /// Starts `--processes` children and waits until each has opened its connections. Their
    /// progress goes straight into the parent's counters (the publisher and the drain wait on
    /// them).
    pub(super) async fn spawn(
        args: &FanoutArgs,
        ctx: &Arc<Ctx>,
    ) -> anyhow::Result<(Clients, Opened)> {
        let seen: Vec<(AtomicU64, AtomicU64)> = (0..args.processes)
            .map(|_| (AtomicU64::new(0), AtomicU64::new(0)))
            .collect();
        let live = ctx.clone();
        let workers = Workers::spawn(args.processes, "subscriber process", move |k, msg| {
            let ChildMsg::Progress {
                delivered,
                lost,
                p99_ms,
            } = msg
            else {
                return Some(msg);
            };
            let (d, l) = &seen[k];
            live.report_delivered(
                delivered.saturating_sub(d.fetch_max(delivered, Ordering::Relaxed)),
            );
            live.disconnected.fetch_add(
                lost.saturating_sub(l.fetch_max(lost, Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            if let Some(p) = p99_ms {
                live.remote_p99_us
                    .fetch_max((p * 1000.0) as u64, Ordering::Relaxed);
            }
            None
        })?;
        let mut c = Children(workers);
        let mut opened = Opened {
            reading: vec![false; args.connections as usize],
            connected: 0,
            stalled: 0,
            connect_errors: BTreeMap::new(),
            connect_time: Duration::ZERO,
            processes: vec![ProcessInfo::this("publisher", 0)],
        };
        for msg in c.0.one_from_each("ready").await? {
            merge_ready(&mut opened, msg)?;
        }
        eprintln!(
            "[fanout] {} of {} connected from {} processes",
            opened.connected, args.connections, args.processes
        );
        Ok((Clients::Processes(c), opened))
    }

    pub(super) async fn start(&mut self, window: Window) -> anyhow::Result<()> {
        self.0
            .tell_all(&ParentMsg::Go {
                warm_end: window.warm_end,
                end: window.end,
            })
            .await?;
        for msg in self.0.one_from_each("started").await? {
            if !matches!(msg, ChildMsg::Started) {
                bail!("expected started, got {msg:?}");
            }
        }
        Ok(())
    }

    pub(super) async fn finish(mut self) -> anyhow::Result<Finished> {
        self.0.tell_all(&ParentMsg::Stop).await?;
        let mut f = Finished::default();
        for msg in self.0.one_from_each("its result").await? {
            merge_result(&mut f, msg)?;
        }
        self.0.wait().await?;
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result_of(values_us: &[u64], measured: u64, lost: &[(&str, u64)]) -> ChildMsg {
        let mut h = stats::latency_histogram();
        for &v in values_us {
            h.record(v).expect("in range");
        }
        ChildMsg::Result {
            counts: Counts {
                measured,
                arrived_in_window: measured,
                ..Counts::default()
            },
            lost: lost.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            stalled_end: BTreeMap::new(),
            first_server_error: None,
            latency: stats::encode_histogram(&h).expect("encode"),
        }
    }

    #[test]
    fn child_results_add_up_exactly_after_a_trip_through_json() {
        let mut f = Finished::default();
        let a = result_of(&[100, 200, 300], 3, &[("eof", 1)]);
        let b = result_of(&[5_000, 70_000], 2, &[("eof", 2), ("close 4008", 1)]);
        for msg in [a, b] {
            let line = serde_json::to_string(&msg).expect("json");
            merge_result(&mut f, serde_json::from_str(&line).expect("parse")).expect("merge");
        }
        assert_eq!(f.counts.measured, 5);
        assert_eq!(f.lost["eof"], 3);
        assert_eq!(f.lost["close 4008"], 1);
        let mut all = stats::latency_histogram();
        for v in [100, 200, 300, 5_000, 70_000] {
            all.record(v).expect("in range");
        }
        assert_eq!(f.latency, all);
    }

    #[test]
    fn ready_messages_mark_the_reading_indices_and_sum_up() {
        let mut o = Opened {
            reading: vec![false; 6],
            connected: 0,
            stalled: 0,
            connect_errors: BTreeMap::new(),
            connect_time: Duration::ZERO,
            processes: Vec::new(),
        };
        for (k, reading, secs) in [(0u32, vec![0, 4], 1.5), (1, vec![1, 3, 5], 0.5)] {
            let msg = ChildMsg::Ready {
                connected: reading.len() as u64,
                stalled: 0,
                reading,
                connect_errors: [("refused".to_string(), 1)].into(),
                connect_time_s: secs,
                process: ProcessInfo::this("subscribers", 3 + u64::from(k)),
            };
            let line = serde_json::to_string(&msg).expect("json");
            merge_ready(&mut o, serde_json::from_str(&line).expect("parse")).expect("merge");
        }
        assert_eq!(o.reading, vec![true, true, false, true, true, true]);
        assert_eq!(o.connected, 5);
        assert_eq!(o.connect_errors["refused"], 2);
        assert_eq!(o.connect_time, Duration::from_millis(1500));
        assert_eq!(o.processes.len(), 2);
    }
}
