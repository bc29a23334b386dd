//! Intake group commit: the accepts and enqueues of concurrent requests, packed into one
//! `scripts/intake.lua` call on the intake connection, each with its own result.
//!
//! A script call costs Redis a fixed overhead (about 15 to 20 us here) on top of the few
//! microseconds of an accept's own commands, so one call for the requests that are waiting
//! anyway is most of the intake's Redis time saved. The batcher never waits to fill a batch:
//! it takes what is waiting, sends it, and answers each caller from the reply. A lone request
//! goes out at once; under load, requests pile up while [`IN_FLIGHT`] calls are on their way
//! and the next call takes them all. Each request is still stored before its caller hears
//! back (the 202 comes after), and each one's checks come before its writes in the script.
//!
//! It owns the batching only; what a request writes is `orders.rs`' business.

use super::conn::{Conn, map_err, within};
use crate::engine::{EngineError, EngineResult};
use ::redis::{Script, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// At most this many requests per script call.
const MAX_BATCH: usize = 64;
/// At most this many intake script calls on their way at once (pipelined on the connection).
const IN_FLIGHT: usize = 4;
/// Requests waiting for the batcher; a full queue makes callers wait their turn.
const QUEUE: usize = 4096;

/// One accept or enqueue: its kind (`accept` | `enqueue`, see the script), its own keys and
/// values.
pub(super) struct IntakeRequest {
    pub kind: &'static str,
    pub keys: Vec<String>,
    pub values: Vec<String>,
}

struct Pending {
    request: IntakeRequest,
    reply: oneshot::Sender<EngineResult<Value>>,
}

/// The handle the engine keeps; the batching task ends when it is dropped.
pub(super) struct IntakeBatcher {
    tx: mpsc::Sender<Pending>,
    /// How long a caller waits for its answer: a script call's own limit.
    timeout: Duration,
}

/// What every call of the script shares.
struct Shared {
    conn: Conn,
    script: Script,
    events: String,
    commands: String,
    retention: u64,
    timeout: Duration,
}

impl IntakeBatcher {
    pub(super) fn start(
        conn: Conn,
        events: String,
        commands: String,
        retention: u64,
        op_timeout: Duration,
    ) -> IntakeBatcher {
        let (tx, rx) = mpsc::channel(QUEUE);
        let timeout = op_timeout * 2;
        let shared = Arc::new(Shared {
            conn,
            script: Script::new(include_str!("scripts/intake.lua")),
            events,
            commands,
            retention,
            // As for every script: after a Redis restart the first call needs a second round
            // trip to load it.
            timeout,
        });
        tokio::spawn(batch_loop(rx, shared));
        IntakeBatcher { tx, timeout }
    }

    /// Stores one request (with whatever else is waiting) and returns its own reply.
    pub(super) async fn submit(&self, what: &str, request: IntakeRequest) -> EngineResult<Value> {
        let (reply, answer) = oneshot::channel();
        let gone = || EngineError::Unavailable(format!("{what}: the intake batcher stopped"));
        self.tx
            .send(Pending { request, reply })
            .await
            .map_err(|_| gone())?;
        // The caller waits no longer than for a script call of its own: when Redis hangs,
        // requests queued behind the calls in flight must not wait for several timeouts in a
        // row. One given up before it was sent is never sent (see `batch_loop`); one given up
        // while its call is on the way may still be stored, as with any timed-out call.
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(e))) => Err(match e {
                EngineError::Unavailable(m) => EngineError::Unavailable(format!("{what}: {m}")),
                EngineError::Corrupt(m) => EngineError::Corrupt(format!("{what}: {m}")),
            }),
            Ok(Err(_)) => Err(gone()),
            Err(_) => Err(EngineError::Unavailable(format!(
                "{what}: no answer from Redis within {:?}",
                self.timeout
            ))),
        }
    }
}

async fn batch_loop(mut rx: mpsc::Receiver<Pending>, shared: Arc<Shared>) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        // A permit first, then the requests: while every call is on its way, requests wait in
        // the channel and the next call takes all of them.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        // A caller that gave up waiting has answered its client already: not sent, not stored.
        batch.retain(|pending| !pending.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let results = call(&shared, &batch).await;
            drop(permit);
            match results {
                Ok(values) => {
                    for (pending, value) in batch.into_iter().zip(values) {
                        // A request the script could not store answers its own error; the
                        // others in the call are unaffected.
                        let _ = pending.reply.send(match refused(&value) {
                            Some(why) => Err(EngineError::Corrupt(format!(
                                "the intake script could not store the request: {why}"
                            ))),
                            None => Ok(value),
                        });
                    }
                }
                Err(e) => {
                    for pending in batch {
                        let _ = pending.reply.send(Err(match &e {
                            EngineError::Unavailable(m) => EngineError::Unavailable(m.clone()),
                            EngineError::Corrupt(m) => EngineError::Corrupt(m.clone()),
                        }));
                    }
                }
            }
        });
    }
}

/// The script's answer for a request it could not store (`{'error', message}`), if it is one.
fn refused(value: &Value) -> Option<String> {
    match value {
        Value::Array(parts) => match parts.as_slice() {
            [kind, message] if super::reply::text(kind).as_deref() == Some("error") => {
                Some(super::reply::text(message).unwrap_or_default())
            }
            _ => None,
        },
        _ => None,
    }
}

/// One script call for the batch; one reply value per request, in order.
async fn call(shared: &Shared, batch: &[Pending]) -> EngineResult<Vec<Value>> {
    let what = "running the intake script";
    let mut invocation = shared.script.prepare_invoke();
    invocation
        .key(&shared.events)
        .key(&shared.commands)
        .arg(shared.retention);
    for Pending { request, .. } in batch {
        invocation
            .arg(request.kind)
            .arg(request.keys.len())
            .arg(request.values.len());
        for key in &request.keys {
            invocation.key(key);
        }
        for value in &request.values {
            invocation.arg(value);
        }
    }
    let mut conn = shared.conn.clone();
    let reply = within(what, shared.timeout, invocation.invoke_async(&mut conn))
        .await
        .map_err(|e| map_err(what, e))?;
    match reply {
        Value::Array(values) if values.len() == batch.len() => Ok(values),
        _ => Err(EngineError::Corrupt(format!(
            "{what}: the reply does not hold one result per request"
        ))),
    }
}
