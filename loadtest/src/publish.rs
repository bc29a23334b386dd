//! The publishing side of `fanout`: the load-test event and the two places it is written to.
//! Herald reads events from its Redis stream, so for Herald each event is an `XADD` (batches
//! are pipelined on one connection, which also keeps the stream in sequence order); the
//! reference server has no Redis, so it gets the same event JSON as WebSocket text frames on
//! its `/publish` socket (a batch is fed, then flushed once). [`OpenLoop`] hands out the events
//! of an open-loop schedule in batches, for `fanout` and `webhooks` alike.

use crate::rate::{self, DueSends, Pacer, Schedule};
use crate::stats::{LatencySummary, SharedHistogram};
use anyhow::Context;
use futures_util::SinkExt;
use serde::Serialize;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::Message;

/// Who serves a scenario: Herald, or the load tool's own reference (the same-run ceiling).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Herald,
    Reference,
}

/// The current wall-clock time in Unix nanoseconds (0 before 1970).
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The order id event `seq` is about when events are spread over `orders` orders.
pub fn order_index(seq: u64, orders: u64) -> u64 {
    seq % orders.max(1)
}

/// `occurredAt` for an event published at `t` (Unix nanoseconds): RFC 3339, microseconds.
pub fn occurred_at(t: u64) -> String {
    humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_nanos(t)).to_string()
}

/// The event entry of DESIGN 1.3, carrying the load generator's marks in `data`: `t` is the
/// publish time (Unix nanoseconds; the intended one in open loop), `seq` the event's number,
/// and `pad` (left out when empty) filler that brings the event to a chosen size.
pub fn event_json(order: u64, seq: u64, t: u64, pad: &str) -> String {
    let occurred_at = occurred_at(t);
    let pad = if pad.is_empty() {
        String::new()
    } else {
        format!(r#","pad":"{pad}""#)
    };
    format!(
        r#"{{"type":"order.confirmed","orderId":"lt-{order}","customerId":"lt-c","status":"confirmed","previousStatus":"accepted","version":{version},"occurredAt":"{occurred_at}","data":{{"t":{t},"seq":{seq}{pad}}}}}"#,
        version = seq + 1,
    )
}

/// A measured window in wall-clock Unix nanoseconds (events carry wall-clock publish times):
/// `[warm_end, end)`.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub warm_end: u64,
    pub end: u64,
}

impl Window {
    pub fn contains(&self, t: u64) -> bool {
        t >= self.warm_end && t < self.end
    }
}

/// A run's two clocks side by side: the monotonic one that schedules (`t0`) and the wall clock
/// events carry (`wall0`, Unix nanoseconds, read at the same moment).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub t0: Instant,
    pub wall0: u64,
}

impl Clock {
    pub fn now() -> Self {
        Self {
            t0: Instant::now(),
            wall0: unix_nanos(),
        }
    }

    /// The wall time of `at`; instants before `t0` map to `wall0`, and it never overflows.
    pub fn wall(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.t0).as_nanos();
        self.wall0
            .saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }

    /// The instant of wall time `wall`; times before `wall0` map to `t0`, times too far ahead
    /// for the platform's `Instant` to a century after `t0`.
    pub fn instant(&self, wall: u64) -> Instant {
        const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
        let d = Duration::from_nanos(wall.saturating_sub(self.wall0));
        self.t0
            .checked_add(d.min(CENTURY))
            .unwrap_or(self.t0 + Duration::from_secs(1))
    }
}

/// How long after its window an open-loop publisher that fell behind keeps sending overdue
/// events (each with its due time) before the rest count as unsent.
pub const CATCH_UP: Duration = Duration::from_secs(1);

/// The open-loop publisher: a pacer thread ([`rate::spawn_pacer`]: precise sleeps) hands out
/// `(seq, due)` on schedule, and [`OpenLoop::next_batch`] gives whatever is due as one batch of
/// `(seq, t)`, `t` being the event's *intended* publish time on the wall clock, so a publisher
/// that falls behind shows as latency. How late each event of the measured window left is
/// recorded (the publish lag).
pub struct OpenLoop {
    rx: DueSends,
    pacer: std::thread::JoinHandle<Pacer>,
    clock: Clock,
    warm_end: Instant,
    lag: SharedHistogram,
    due: Vec<(u64, Instant)>,
}

/// What an open-loop publisher leaves behind.
#[derive(Debug, Default)]
pub struct OpenLoopEnd {
    /// Events due at or after the warm-up's end that were never handed out.
    pub unsent: u64,
    /// How late the events of the measured window left their due time.
    pub lag: Option<LatencySummary>,
}

impl OpenLoop {
    /// Most events in one batch (a publisher that fell behind catches up in these).
    pub const BATCH: usize = 256;

    /// Starts pacing `schedule` (which starts at `clock.t0`); events intended before
    /// `warm_end` (wall clock) are warm-up and are not counted in the lag or as unsent.
    pub fn start(schedule: Schedule, clock: Clock, warm_end: u64) -> anyhow::Result<Self> {
        let (rx, pacer) =
            rate::spawn_pacer(schedule, CATCH_UP).context("starting the pacer thread")?;
        Ok(Self {
            rx,
            pacer,
            clock,
            warm_end: clock.instant(warm_end),
            lag: SharedHistogram::default(),
            due: Vec::with_capacity(Self::BATCH),
        })
    }

    /// Waits for the next due events and puts them into `events` as `(seq, t)` (cleared
    /// first). `false` once the schedule is over.
    pub async fn next_batch(&mut self, events: &mut Vec<(u64, u64)>) -> bool {
        events.clear();
        if self.rx.recv_many(&mut self.due, Self::BATCH).await == 0 {
            return false;
        }
        let now = Instant::now();
        for &(seq, at) in &self.due {
            if at >= self.warm_end {
                self.lag.record(rate::latency_from(at, now));
            }
            events.push((seq, self.clock.wall(at)));
        }
        self.due.clear();
        true
    }

    /// Joins the pacer thread (the schedule must be over: [`Self::next_batch`] said `false`).
    pub async fn finish(self) -> anyhow::Result<OpenLoopEnd> {
        let pacer = self.pacer;
        let pacer = tokio::task::spawn_blocking(move || pacer.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the pacer thread panicked"))?;
        Ok(OpenLoopEnd {
            unsent: pacer.missed_since(self.warm_end),
            lag: self.lag.summary(),
        })
    }
}

/// Where events go.
pub enum Sink {
    Redis {
        con: redis::aio::MultiplexedConnection,
        stream: String,
        /// `MAXLEN ~` on every XADD (0: no trimming), so a long run at the maximum rate does
        /// not fill Redis' memory.
        maxlen: u64,
    },
    Reference {
        ws: Box<
            tokio_tungstenite::WebSocketStream<
                tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
            >,
        >,
    },
}

impl Sink {
    pub async fn redis(url: &str, stream: &str, maxlen: u64) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).with_context(|| format!("--redis-url {url}"))?;
        let con = client
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("connecting to {url}"))?;
        Ok(Sink::Redis {
            con,
            stream: stream.to_string(),
            maxlen,
        })
    }

    /// The reference server's publish socket, `ws://ADDR/publish`.
    pub async fn reference(url: &str) -> anyhow::Result<Self> {
        let (ws, _) = tokio_tungstenite::connect_async_with_config(
            url,
            Some(crate::ws::ws_config(4096).write_buffer_size(64 * 1024)),
            true,
        )
        .await
        .with_context(|| format!("connecting to the reference publisher socket {url}"))?;
        Ok(Sink::Reference { ws: Box::new(ws) })
    }

    /// Writes `events` (event JSON each), in order, as one round trip.
    pub async fn publish(&mut self, events: &[String]) -> anyhow::Result<()> {
        match self {
            Sink::Redis {
                con,
                stream,
                maxlen,
            } => {
                let mut pipe = redis::pipe();
                for e in events {
                    let cmd = pipe.cmd("XADD").arg(&*stream);
                    if *maxlen > 0 {
                        cmd.arg("MAXLEN").arg("~").arg(*maxlen);
                    }
                    cmd.arg("*").arg("event").arg(e).ignore();
                }
                pipe.query_async::<()>(con).await.context("XADD")
            }
            Sink::Reference { ws } => {
                for e in events {
                    ws.feed(Message::text(e.as_str())).await?;
                }
                ws.flush().await.context("publishing to the reference")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn event_is_a_design_event_with_marks_in_data() {
        let t = 1_700_000_000_123_456_789;
        let v: Value = serde_json::from_str(&event_json(7, 41, t, "")).expect("json");
        assert_eq!(v["type"], "order.confirmed");
        assert_eq!(v["orderId"], "lt-7");
        assert_eq!(v["customerId"], "lt-c");
        assert_eq!(v["status"], "confirmed");
        assert_eq!(v["previousStatus"], "accepted");
        assert_eq!(v["version"], 42);
        assert_eq!(v["occurredAt"], "2023-11-14T22:13:20.123456Z");
        assert_eq!(v["data"]["t"].as_u64(), Some(t));
        assert_eq!(v["data"]["seq"], 41);
        assert!(v["data"].get("pad").is_none());
    }

    #[test]
    fn padding_goes_into_data_and_grows_the_event_by_its_length() {
        let t = 1_700_000_000_123_456_789;
        let plain = event_json(1, 2, t, "");
        let padded = event_json(1, 2, t, &"x".repeat(500));
        let v: Value = serde_json::from_str(&padded).expect("json");
        assert_eq!(v["data"]["pad"].as_str().map(str::len), Some(500));
        assert_eq!(v["data"]["t"].as_u64(), Some(t));
        assert_eq!(padded.len(), plain.len() + 500 + r#","pad":"""#.len());
    }

    #[test]
    fn window_is_half_open() {
        let w = Window {
            warm_end: 10,
            end: 20,
        };
        assert!(!w.contains(9));
        assert!(w.contains(10));
        assert!(w.contains(19));
        assert!(!w.contains(20));
    }

    #[test]
    fn clock_maps_instants_to_wall_time_and_back_without_overflow() {
        let c = Clock {
            t0: Instant::now(),
            wall0: 1_000_000_000,
        };
        let at = c.t0 + Duration::from_millis(1500);
        assert_eq!(c.wall(at), 2_500_000_000);
        assert_eq!(c.instant(2_500_000_000), at);
        // Before the start: clamped to the start, either way.
        assert_eq!(c.instant(5), c.t0);
        let late = Clock {
            t0: c.t0 + Duration::from_secs(1),
            ..c
        };
        assert_eq!(late.wall(c.t0), c.wall0);
        // A wall clock near the end of u64 saturates instead of wrapping.
        let edge = Clock {
            t0: c.t0,
            wall0: u64::MAX - 10,
        };
        assert_eq!(edge.wall(at), u64::MAX);
        // A wall time centuries ahead is an instant, not a panic.
        assert!(c.instant(u64::MAX) > c.t0);
    }

    /// A real 20 ms schedule at 1000/s: every event comes out once, in order, each carrying
    /// its intended wall time (start + seq ms), none unsent.
    #[tokio::test]
    async fn open_loop_hands_out_every_event_with_its_intended_wall_time() {
        let clock = Clock::now();
        let schedule = Schedule::new(clock.t0, 1000.0, Duration::from_millis(20));
        let mut ol = OpenLoop::start(schedule, clock, clock.wall0).expect("pacer");
        let mut all = Vec::new();
        let mut batch = Vec::new();
        while ol.next_batch(&mut batch).await {
            all.extend_from_slice(&batch);
        }
        let want: Vec<(u64, u64)> = (0..20).map(|k| (k, clock.wall0 + k * 1_000_000)).collect();
        assert_eq!(all, want);
        let end = ol.finish().await.expect("joined");
        assert_eq!(end.unsent, 0);
        assert_eq!(end.lag.map(|l| l.count), Some(20));
    }

    #[test]
    fn events_are_spread_round_robin_over_orders() {
        assert_eq!(
            (0..5).map(|s| order_index(s, 3)).collect::<Vec<_>>(),
            vec![0, 1, 2, 0, 1]
        );
        assert_eq!(order_index(9, 0), 0);
    }
}
