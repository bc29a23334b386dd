//! Connections, time limits and error mapping for the Redis engine.
//!
//! Ordinary commands share one auto-reconnecting multiplexed connection
//! ([`redis::aio::ConnectionManager`]). Blocking reads (`XREAD BLOCK`, `XREADGROUP BLOCK`) must
//! not travel on it: Redis answers a connection's commands in order, so one blocked read would
//! stall every other request behind it. They use [`BlockingPool`], a handful of dedicated
//! connections, each used by one blocking call at a time.

use crate::engine::EngineError;
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, Cmd, ErrorKind, FromRedisValue, RedisError, RedisResult,
};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

/// Connections kept idle for blocking calls; more concurrent blocking calls open more (and the
/// extras are closed after use).
const MAX_IDLE_BLOCKING: usize = 8;

/// The URL without its password, for messages and logs.
pub(super) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let shown = if user.is_empty() {
                "***".to_string()
            } else {
                format!("{user}:***")
            };
            format!("{scheme}://{shown}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

pub(super) fn timed_out(what: &str, limit: Duration) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what}: no answer from Redis within {limit:?}"),
    ))
}

/// Awaits `fut` for at most `limit`; running out of time is an I/O error like any other lost
/// answer, so callers map it to `Unavailable`.
pub(super) async fn within<T>(
    what: &str,
    limit: Duration,
    fut: impl Future<Output = RedisResult<T>>,
) -> RedisResult<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result,
        Err(_) => Err(timed_out(what, limit)),
    }
}

/// The error code of a server error reply (`NOGROUP`, `BUSYGROUP`, `WRONGTYPE`, ...), also when
/// the error was raised inside a script.
fn code_is(e: &RedisError, code: &str) -> bool {
    e.code() == Some(code)
        || e.detail().is_some_and(|d| d.starts_with(code))
        || e.to_string().contains(code)
}

/// The consumer group (or its stream) does not exist: Redis lost its data or someone deleted it.
pub(super) fn is_nogroup(e: &RedisError) -> bool {
    code_is(e, "NOGROUP")
}

pub(super) fn is_busygroup(e: &RedisError) -> bool {
    code_is(e, "BUSYGROUP")
}

/// Maps a Redis error to the engine's two failure kinds. Anything about reaching Redis (I/O,
/// timeouts, a server that is loading, read-only or out of memory) is `Unavailable`: callers
/// answer 503 and retry. Data that is not in the shape Herald writes (wrong key type, a reply
/// that does not decode, a Lua runtime error) is `Corrupt`.
pub(super) fn map_err(context: &str, e: RedisError) -> EngineError {
    let corrupt = match e.kind() {
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => true,
        _ if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal() =>
        {
            false
        }
        _ => {
            code_is(&e, "WRONGTYPE")
                || e.to_string().contains("user_script")
                || e.to_string().contains("Error running script")
        }
    };
    if corrupt {
        EngineError::Corrupt(format!("{context}: {e}"))
    } else {
        EngineError::Unavailable(format!("{context}: {e}"))
    }
}

/// Dedicated connections for blocking commands.
///
/// A connection is taken for one call and given back only if the call finished normally; a
/// call that timed out or was cancelled (its future dropped) drops its connection, so a late
/// reply can never be read by the next user.
pub(super) struct BlockingPool {
    client: Client,
    config: AsyncConnectionConfig,
    connect_timeout: Duration,
    idle: Mutex<Vec<MultiplexedConnection>>,
}

impl BlockingPool {
    pub fn new(client: Client, connect_timeout: Duration) -> Self {
        // No response timeout on the connection itself: each call sets its own limit, longer
        // than the time the server may block.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(None);
        BlockingPool {
            client,
            config,
            connect_timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn take_idle(&self) -> Option<MultiplexedConnection> {
        self.idle.lock().ok().and_then(|mut idle| idle.pop())
    }

    fn give_back(&self, conn: MultiplexedConnection) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE_BLOCKING
        {
            idle.push(conn);
        }
    }

    async fn connect(&self, what: &str) -> RedisResult<MultiplexedConnection> {
        within(
            what,
            self.connect_timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&self.config),
        )
        .await
    }

    /// Runs `cmd`, which may block on the server for up to `block`; the call as a whole is
    /// given `block + operation timeout`. Only for commands that are safe to send twice (reads,
    /// and `XREADGROUP`, whose worst case is one extra delivery).
    pub async fn query<T: FromRedisValue>(
        &self,
        what: &str,
        cmd: &Cmd,
        block: Duration,
        op_timeout: Duration,
    ) -> RedisResult<T> {
        let limit = block + op_timeout;
        let (mut conn, reused) = match self.take_idle() {
            Some(conn) => (conn, true),
            None => (self.connect(what).await?, false),
        };
        let mut result = within(what, limit, cmd.query_async::<redis::Value>(&mut conn)).await;
        if reused
            && let Err(e) = &result
            && (e.is_connection_dropped() || e.is_unrecoverable_error())
            && !e.is_timeout()
        {
            // An idle connection died with its server (restart, failover): so did every other
            // idle one. Drop them all and try once on a fresh connection instead of failing
            // this call and the next few.
            if let Ok(mut idle) = self.idle.lock() {
                idle.clear();
            }
            conn = self.connect(what).await?;
            result = within(what, limit, cmd.query_async::<redis::Value>(&mut conn)).await;
        }
        match result {
            Ok(value) => {
                self.give_back(conn);
                redis::from_redis_value(value).map_err(RedisError::from)
            }
            Err(e) => {
                // A server error reply leaves the connection usable; anything else may leave a
                // reply in flight or a broken socket.
                if matches!(e.kind(), ErrorKind::Server(_) | ErrorKind::Extension)
                    && !e.is_io_error()
                {
                    self.give_back(conn);
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redact("redis://user:s3cret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact("rediss://:s3cret@host"), "rediss://***@host");
        assert_eq!(redact("redis://h/0?x=a@b"), "redis://h/0?x=a@b");
        assert_eq!(redact("not a url"), "not a url");
    }
}
