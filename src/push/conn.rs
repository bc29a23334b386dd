//! One WebSocket connection's outbound side: a queue bounded in bytes, shared by the hub (live
//! events), the subscription tasks (acks, replays, errors) and the connection's own loop.
//!
//! The queue never blocks a producer: the hub must not wait on one slow socket. A push that
//! would take the queued bytes over `push.outbound_queue_bytes` closes the connection with
//! 4008 instead (a slow consumer is cut off, with a reason, before it costs memory). Live
//! events the hub holds for a subscription that is still replaying (`after`) are bytes on
//! their way to this connection too: they count against the same bound ([`ConnHandle::hold`]),
//! so a replay cannot make a connection cost more than the queue would.

use super::close;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A message on its way to the socket.
#[derive(Debug)]
pub enum Out {
    /// An event: the subscription's envelope prefix, the shared payload, then `}`. Both are
    /// text checked once (the payload once per rendering, not once per subscriber).
    Event {
        prefix: Utf8Bytes,
        payload: Utf8Bytes,
    },
    /// A protocol message, already serialised.
    Text(String),
    /// A WebSocket-level ping (keepalive for clients that never speak on their own).
    Ping,
}

/// A rendered payload as text, checked once: serde_json and Herald's templates only write
/// UTF-8, so the lossy branch is a safety net, never taken in practice.
pub fn payload_text(bytes: Bytes) -> Utf8Bytes {
    match Utf8Bytes::try_from(bytes.clone()) {
        Ok(text) => text,
        Err(_) => Utf8Bytes::from(String::from_utf8_lossy(&bytes).into_owned()),
    }
}

impl Out {
    /// Bytes this message holds against the connection's queue limit.
    pub fn cost(&self) -> usize {
        match self {
            Out::Event { prefix, payload } => prefix.len() + payload.len() + 1,
            Out::Text(text) => text.len(),
            Out::Ping => 2,
        }
    }

    /// The frame's text. Events are spliced here, in the connection's task, so the hub never
    /// copies a payload per subscriber.
    pub fn into_text(self) -> String {
        match self {
            Out::Event { prefix, payload } => {
                let mut frame = String::with_capacity(prefix.len() + payload.len() + 1);
                frame.push_str(&prefix);
                frame.push_str(&payload);
                frame.push('}');
                frame
            }
            Out::Text(text) => text,
            Out::Ping => String::new(),
        }
    }
}

pub struct ConnHandle {
    /// A plain deque, not a channel: an idle connection's empty queue allocates nothing
    /// (a tokio channel allocates a block of slots up front, ~2 KiB per connection).
    queue: Mutex<VecDeque<Out>>,
    /// Woken when the queue gets something (a stored permit, so no wake-up is lost).
    pub ready: Notify,
    queued: AtomicUsize,
    /// Bytes of live events the hub holds for this connection's replaying subscriptions.
    held: AtomicUsize,
    limit: usize,
    closed: AtomicBool,
    close_frame: Mutex<Option<(u16, String)>>,
    /// Woken when the connection must close (slow consumer, shutdown, expiry).
    pub kill: Notify,
    /// Woken after the writer drained a batch (replays wait on it for room).
    drained: Notify,
}

impl ConnHandle {
    pub fn new(limit: usize) -> ConnHandle {
        ConnHandle {
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            queued: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            limit,
            closed: AtomicBool::new(false),
            close_frame: Mutex::new(None),
            kill: Notify::new(),
            drained: Notify::new(),
        }
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Out>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Everything queued so far, in order (the writer's next batch).
    pub fn take_batch(&self) -> VecDeque<Out> {
        std::mem::take(&mut *self.lock_queue())
    }

    /// Queues a message. `false` when this push made the connection a slow consumer (it is
    /// then closing with 4008); pushes to a closing connection are dropped silently.
    pub fn push(&self, out: Out) -> bool {
        if self.is_closed() {
            return true;
        }
        let cost = out.cost();
        let before = self.queued.fetch_add(cost, Ordering::AcqRel) + self.held_bytes();
        if before + cost > self.limit && before > 0 {
            self.queued.fetch_sub(cost, Ordering::AcqRel);
            self.close(
                close::SLOW_CONSUMER,
                "slow consumer: outbound queue full; reconnect and resume with `after`",
            );
            return false;
        }
        self.lock_queue().push_back(out);
        self.ready.notify_one();
        true
    }

    /// Charges `cost` bytes of a live event held back during a replay to the connection's
    /// bound. `false` when the connection is closing, or when this charge made it a slow
    /// consumer (it is then closing with 4008): the caller drops the event.
    pub fn hold(&self, cost: usize) -> bool {
        if self.is_closed() {
            return false;
        }
        let before = self.held.fetch_add(cost, Ordering::AcqRel) + self.queued_bytes();
        if before + cost > self.limit && before > 0 {
            self.held.fetch_sub(cost, Ordering::AcqRel);
            self.close(
                close::SLOW_CONSUMER,
                "slow consumer: live events held during the replay exceed the outbound queue; reconnect and resume with `after`",
            );
            return false;
        }
        true
    }

    /// Gives back the charge of held events (queued after the replay, or dropped).
    pub fn release_held(&self, cost: usize) {
        self.held.fetch_sub(cost, Ordering::AcqRel);
    }

    fn held_bytes(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Called by the writer once a message has reached the socket's buffer.
    pub fn written(&self, out_cost: usize) {
        self.queued.fetch_sub(out_cost, Ordering::AcqRel);
    }

    pub fn wrote_batch(&self) {
        self.drained.notify_waiters();
    }

    /// Waits until at most half the queue is in use (replays pace themselves with this).
    pub async fn wait_for_room(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.is_closed() || self.queued.load(Ordering::Acquire) <= self.limit / 2 {
                return;
            }
            drained.await;
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Asks the connection to close with `code` and `reason`. The first reason wins.
    pub fn close(&self, code: u16, reason: &str) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Ok(mut frame) = self.close_frame.lock() {
            *frame = Some((code, reason.to_string()));
        }
        self.kill.notify_one();
        self.drained.notify_waiters();
    }

    pub fn close_frame(&self) -> Option<(u16, String)> {
        self.close_frame.lock().ok().and_then(|f| f.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_frames_splice_the_shared_payload() {
        let out = Out::Event {
            prefix: Utf8Bytes::from_static(r#"{"id":"7","type":"next","payload":"#),
            payload: payload_text(Bytes::from_static(br#"{"data":{"x":1}}"#)),
        };
        let text = out.into_text();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["id"], "7");
        assert_eq!(v["payload"]["data"]["x"], 1);
    }

    #[test]
    fn a_full_queue_closes_the_connection_as_slow_consumer() {
        let conn = ConnHandle::new(100);
        assert!(conn.push(Out::Text("x".repeat(60))));
        assert!(!conn.push(Out::Text("y".repeat(60))));
        assert!(conn.is_closed());
        assert_eq!(conn.close_frame().map(|f| f.0), Some(close::SLOW_CONSUMER));
        // The first message is still there; the refused one is not.
        assert_eq!(conn.take_batch().len(), 1);
    }

    #[test]
    fn one_message_larger_than_the_limit_still_passes_an_empty_queue() {
        let conn = ConnHandle::new(10);
        assert!(conn.push(Out::Text("z".repeat(50))));
        assert!(!conn.is_closed());
    }

    #[test]
    fn held_replay_events_count_against_the_same_bound() {
        let conn = ConnHandle::new(100);
        assert!(conn.push(Out::Text("x".repeat(40))));
        assert!(conn.hold(40));
        // Queue 40 + held 40: a 30-byte push or hold would pass 100.
        assert!(!conn.hold(30));
        assert!(conn.is_closed());
        assert_eq!(conn.close_frame().map(|f| f.0), Some(close::SLOW_CONSUMER));

        let conn = ConnHandle::new(100);
        assert!(conn.hold(60));
        assert!(!conn.push(Out::Text("y".repeat(50))));
        assert!(conn.is_closed());

        // Released holds make room again.
        let conn = ConnHandle::new(100);
        assert!(conn.hold(60));
        conn.release_held(60);
        assert!(conn.push(Out::Text("z".repeat(90))));
        assert!(!conn.is_closed());
    }

    #[test]
    fn written_messages_make_room_again() {
        let conn = ConnHandle::new(100);
        assert!(conn.push(Out::Text("x".repeat(60))));
        for out in conn.take_batch() {
            conn.written(out.cost());
        }
        assert!(conn.push(Out::Text("y".repeat(60))));
        assert!(!conn.is_closed());
    }
}
