//! One WebSocket connection's loop: reads client messages and hands them to the protocol,
//! writes the outbound queue in batches (feed each message, then one flush), sends the
//! protocol's keepalives, and closes the connection for the limits that belong to the socket
//! (message size, UTF-8, keepalive timeout, `connection_init` timeout, token expiry, shutdown,
//! and a socket that takes no write for the keepalive deadline: a client that stopped
//! reading, closed with 4008 like any slow consumer, during an `after` replay too).
//!
//! It starts no subscription and spells no message itself: that is the core's and the
//! protocols' work.

use super::PushState;
use super::close;
use super::conn::{ConnHandle, Out};
use super::protocol::{Flow, Protocol};
use super::session::{Session, sleep_until_unix};
use crate::auth::Principal;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// Runs one upgraded connection until it closes.
pub async fn run(
    state: Arc<PushState>,
    mut ws: Socket,
    protocol: Box<dyn Protocol>,
    principal: Option<Principal>,
) {
    let config = state.node.config.push.clone();
    let conn = Arc::new(ConnHandle::new(config.outbound_queue_bytes));
    let mut session = Session::new(state.clone(), conn.clone(), principal);
    let init_deadline = tokio::time::sleep(config.connection_init_timeout);
    tokio::pin!(init_deadline);
    let keepalive = config.keepalive_interval.max(Duration::from_millis(100));
    // Nothing heard for this long closes with 4504; a write the socket does not take within
    // it closes with 4008 (the client stopped reading: its replay or queue would wait on it
    // for ever otherwise, holding the connection and what its subscriptions hold).
    let deadline = keepalive * 3;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let shutdown = state.shutdown.clone();
    let mut stalled = false;

    'conn: loop {
        let expiry = token_expiry(session.principal.as_ref());
        // Checked here as well as in the select below: with a write in progress at the
        // expiry, or events queued again during each write, the queue's branch wins every
        // turn of the biased select and a zero-length sleep is not ready at once, so events
        // went on being written after the token's exp.
        if expiry.is_some_and(has_passed) {
            conn.close(
                close::TOKEN_EXPIRED,
                "token expired; reconnect with a fresh token",
            );
            break;
        }
        tokio::select! {
            biased;
            _ = conn.kill.notified() => break,
            _ = shutdown.cancelled() => {
                conn.close(close::SERVICE_RESTART, "server shutting down; reconnect");
                break;
            }
            _ = conn.ready.notified() => {
                let write = write_batch(&mut ws, &conn);
                tokio::select! {
                    result = write => if result.is_err() { break 'conn },
                    _ = conn.kill.notified() => break 'conn,
                    _ = tokio::time::sleep(deadline) => {
                        stalled = true;
                        conn.close(
                            close::SLOW_CONSUMER,
                            "slow consumer: the client stopped reading; reconnect and resume with `after`",
                        );
                        break 'conn;
                    }
                }
            }
            message = ws.next() => {
                last_heard = Instant::now();
                let flow = match message {
                    None => break,
                    Some(Err(e)) => {
                        use tokio_tungstenite::tungstenite::Error;
                        match e {
                            Error::Capacity(_) => {
                                state.metrics.messages_too_big.fetch_add(1, Ordering::Relaxed);
                                conn.close(close::MESSAGE_TOO_BIG, "message too big (push.max_message_bytes)");
                            }
                            Error::Utf8(_) => conn.close(close::INVALID_PAYLOAD, "text message is not UTF-8"),
                            Error::Protocol(_) => conn.close(close::PROTOCOL_ERROR, "WebSocket protocol error"),
                            _ => {}
                        }
                        break;
                    }
                    Some(Ok(Message::Text(text))) => protocol.on_message(&mut session, &text),
                    Some(Ok(Message::Binary(_))) => Flow::Close(
                        close::BAD_REQUEST,
                        "binary messages are not part of this protocol".into(),
                    ),
                    Some(Ok(Message::Close(_))) => break,
                    Some(Ok(_)) => Flow::Continue, // ping/pong: tungstenite answers pings
                };
                if let Flow::Close(code, reason) = flow {
                    conn.close(code, &reason);
                    // What the protocol queued with its verdict (`connection_error`) goes
                    // out before the close frame.
                    let flush = write_batch(&mut ws, &conn);
                    let _ = tokio::time::timeout(Duration::from_secs(1), flush).await;
                    break;
                }
            }
            _ = &mut init_deadline, if !session.acked => {
                conn.close(close::INIT_TIMEOUT, "connection initialisation timeout");
                break;
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() > keepalive * 3 {
                    conn.close(close::KEEPALIVE_TIMEOUT, "keepalive timeout: nothing heard from the client");
                    break;
                }
                protocol.keepalive(&session);
            }
            _ = sleep_until_unix(expiry), if expiry.is_some() => {
                conn.close(close::TOKEN_EXPIRED, "token expired; reconnect with a fresh token");
                break;
            }
        }
    }
    session.end_all();
    if let Some((code, reason)) = conn.close_frame() {
        tracing::debug!(code, reason = %reason, "closing a WebSocket connection");
        if code == close::SLOW_CONSUMER {
            let counter = if stalled {
                &state.metrics.stalled_writes
            } else {
                &state.hub.stats.slow_consumers
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        // A slow consumer's close frame waits behind what its socket has not taken yet: it
        // gets the deadline again (the subscriptions and their queue are already freed), so
        // a client that resumes reading learns why it was dropped.
        let linger = if code == close::SLOW_CONSUMER {
            deadline
        } else {
            Duration::from_secs(1)
        };
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        // Then the closing handshake: what the client still sends (a message after the one
        // that closed it, pongs, its close reply) is read, so the socket is not dropped with
        // unread data (a reset, which can lose the close frame on the client's side).
        let closing = async {
            if ws.close(Some(frame)).await.is_ok() {
                while let Some(Ok(_)) = ws.next().await {}
            }
        };
        let _ = tokio::time::timeout(linger, closing).await;
    }
    // Counted until here: a lingering socket still holds its buffers.
    state.connections.fetch_sub(1, Ordering::AcqRel);
}

/// Writes everything queued (feed each message), then flushes once.
async fn write_batch(
    ws: &mut Socket,
    conn: &ConnHandle,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let batch = conn.take_batch();
    if batch.is_empty() {
        return Ok(());
    }
    for out in batch {
        let cost = out.cost();
        let message = match out {
            Out::Ping => Message::Ping(Bytes::new()),
            out => Message::text(out.into_text()),
        };
        ws.feed(message).await?;
        conn.written(cost);
    }
    ws.flush().await?;
    conn.wrote_batch();
    Ok(())
}

fn token_expiry(principal: Option<&Principal>) -> Option<u64> {
    principal.and_then(Principal::expires_at)
}

/// Whether `at` (seconds since the Unix epoch) has come.
fn has_passed(at: u64) -> bool {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .is_ok_and(|now| now >= Duration::from_secs(at))
}
