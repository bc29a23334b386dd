//! The publishing side of `fanout`: the load-test event and the two places it is written to.
//! Herald reads events from its Redis stream, so for Herald each event is an `XADD` (batches
//! are pipelined on one connection, which also keeps the stream in sequence order); the
//! reference server has no Redis, so it gets the same event JSON as WebSocket text frames on
//! its `/publish` socket (a batch is fed, then flushed once).

use anyhow::Context;
use futures_util::SinkExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::Message;

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
    fn events_are_spread_round_robin_over_orders() {
        assert_eq!(
            (0..5).map(|s| order_index(s, 3)).collect::<Vec<_>>(),
            vec![0, 1, 2, 0, 1]
        );
        assert_eq!(order_index(9, 0), 0);
    }
}
