//! Connections, time limits and error mapping for the Redis engine, on one Redis or on a
//! Redis Cluster; it owns no key names and never decides what a command means.
//!
//! Ordinary commands share one auto-reconnecting multiplexed connection ([`Conn`]: a
//! [`redis::aio::ConnectionManager`] on one Redis, a cluster connection on a cluster). Blocking
//! reads (`XREAD BLOCK`, `XREADGROUP BLOCK`) must not travel on it: Redis answers a
//! connection's commands in order, so one blocked read would stall every other request behind
//! it. They use [`BlockingPool`], a bounded set of dedicated connections, each used by one
//! blocking call at a time.

use crate::engine::EngineError;
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ErrorKind, FromRedisValue, RedisError, RedisFuture,
    RedisResult, Value,
};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// The URL without its password, for messages and logs (every node's, in a list of URLs).
pub(super) fn redact(url: &str) -> String {
    if url.matches("://").count() > 1 {
        return url.split(',').map(redact_one).collect::<Vec<_>>().join(",");
    }
    redact_one(url)
}

fn redact_one(url: &str) -> String {
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

/// `XINFO` on a key that does not exist (yet).
pub(super) fn is_no_such_key(e: &RedisError) -> bool {
    e.to_string().contains("no such key")
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

/// Where the engine's Redis lives, read from `engine.redis_url`.
///
/// A Redis Cluster is named by `redis+cluster://[user:password@]host:port[,host:port...]`
/// (`rediss+cluster://` for TLS), or by several comma-separated `redis://` URLs; any one
/// reachable node is enough to discover the others. Anything else is one Redis.
pub(super) enum Target {
    Single(Client),
    Cluster(Vec<String>),
}

impl Target {
    pub fn parse(url: &str) -> RedisResult<Target> {
        let url = url.trim();
        let cluster_scheme = [
            ("redis+cluster://", "redis://"),
            ("rediss+cluster://", "rediss://"),
        ]
        .into_iter()
        .find_map(|(cluster, plain)| url.strip_prefix(cluster).map(|rest| (plain, rest)));
        if let Some((scheme, rest)) = cluster_scheme {
            // The credentials (before the last `@` of the host list) apply to every node.
            let (userinfo, hosts) = match rest.rsplit_once('@') {
                Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
                None => (String::new(), rest),
            };
            let nodes: Vec<String> = hosts
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(|h| format!("{scheme}{userinfo}{h}"))
                .collect();
            return Target::cluster(nodes);
        }
        if url.contains(',') {
            let nodes = url.split(',').map(|u| u.trim().to_string()).collect();
            return Target::cluster(nodes);
        }
        Client::open(url).map(Target::Single)
    }

    fn cluster(nodes: Vec<String>) -> RedisResult<Target> {
        if nodes.is_empty() {
            return Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "a cluster URL names no node",
            )));
        }
        // Each node URL must parse on its own, so a typo is reported at start-up.
        for node in &nodes {
            Client::open(node.as_str())?;
        }
        Ok(Target::Cluster(nodes))
    }
}

/// One connection type for both deployments, so every command, pipeline and script runs
/// unchanged. On a cluster, each keyed command, pipeline and script is routed by its first key
/// (every key carries the hash tag, so that is always the slot the whole call touches).
#[derive(Clone)]
pub(super) enum Conn {
    /// One Redis, reconnecting on its own.
    Managed(ConnectionManager),
    /// One Redis, a plain connection (the blocking pool's).
    Direct(MultiplexedConnection),
    /// A Redis Cluster: one connection per node, following MOVED and failovers.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Managed(c) => c.req_packed_command(cmd),
            Conn::Direct(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a ::redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Direct(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Managed(c) => c.get_db(),
            Conn::Direct(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// Runs a command that names no key (INFO, PING) on the node that owns `key`'s slot:
    /// left to the cluster client, it would go to a random node or to all of them.
    pub async fn query_on_node_of<T: FromRedisValue>(
        &mut self,
        key: &str,
        cmd: &Cmd,
    ) -> RedisResult<T> {
        match self {
            Conn::Cluster(c) => {
                let route = Route::with_key(key, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let value = c.route_command(cmd.clone(), routing).await?;
                ::redis::from_redis_value(value).map_err(RedisError::from)
            }
            _ => cmd.query_async(self).await,
        }
    }
}

/// How the blocking pool opens a connection.
enum Opener {
    Single {
        client: Client,
        config: AsyncConnectionConfig,
    },
    /// A cluster client without a response timeout: each cluster connection it opens reaches
    /// every node once, so the pool's bound is also the bound per node.
    Cluster(ClusterClient),
}

/// Dedicated connections for blocking commands, at most `max` of them at once.
///
/// A connection is taken for one call and given back only if the call finished normally; a
/// call that timed out or was cancelled (its future dropped) drops its connection, so a late
/// reply can never be read by the next user. A caller finding all `max` in use waits for one
/// (as long as it was prepared to block anyway) and then gets `Unavailable`, never a new
/// connection beyond the bound: a burst of long-polls cannot exhaust Redis' `maxclients`.
pub(super) struct BlockingPool {
    opener: Opener,
    connect_timeout: Duration,
    max: usize,
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Conn>>,
}

impl BlockingPool {
    pub fn new(target: &Target, connect_timeout: Duration, max: usize) -> RedisResult<Self> {
        // No response timeout on the connection itself: each call sets its own limit, longer
        // than the time the server may block.
        let opener = match target {
            Target::Single(client) => Opener::Single {
                client: client.clone(),
                config: AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(None),
            },
            Target::Cluster(nodes) => Opener::Cluster(
                ClusterClient::builder(nodes.iter().map(String::as_str))
                    .connection_timeout(connect_timeout)
                    .retries(2)
                    .build()?,
            ),
        };
        let max = max.max(1);
        Ok(BlockingPool {
            opener,
            connect_timeout,
            max,
            permits: Arc::new(Semaphore::new(max)),
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Blocking connections held by calls right now.
    pub fn in_use(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    fn take_idle(&self) -> Option<Conn> {
        self.idle.lock().ok().and_then(|mut idle| idle.pop())
    }

    fn give_back(&self, conn: Conn) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
    }

    async fn connect(&self, what: &str) -> RedisResult<Conn> {
        match &self.opener {
            Opener::Single { client, config } => within(
                what,
                self.connect_timeout,
                client.get_multiplexed_async_connection_with_config(config),
            )
            .await
            .map(Conn::Direct),
            Opener::Cluster(client) => {
                within(what, self.connect_timeout, client.get_async_connection())
                    .await
                    .map(Conn::Cluster)
            }
        }
    }

    /// Runs `cmd`, which may block on the server for up to `block`; the call as a whole is
    /// given `block + operation timeout` once it holds a connection. Only for commands that are
    /// safe to send twice (reads, and `XREADGROUP`, whose worst case is one extra delivery).
    pub async fn query<T: FromRedisValue>(
        &self,
        what: &str,
        cmd: &Cmd,
        block: Duration,
        op_timeout: Duration,
    ) -> RedisResult<T> {
        let wait = block.max(op_timeout);
        let _permit = match tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            _ => {
                return Err(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "{what}: all {} blocking Redis connections busy for {wait:?} \
                         (engine.max_blocking_connections)",
                        self.max
                    ),
                )));
            }
        };
        let limit = block + op_timeout;
        let (mut conn, reused) = match self.take_idle() {
            Some(conn) => (conn, true),
            None => (self.connect(what).await?, false),
        };
        let mut result = within(what, limit, cmd.query_async::<Value>(&mut conn)).await;
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
            result = within(what, limit, cmd.query_async::<Value>(&mut conn)).await;
        }
        match result {
            Ok(value) => {
                self.give_back(conn);
                ::redis::from_redis_value(value).map_err(RedisError::from)
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
        assert_eq!(
            redact("redis+cluster://:s3cret@h1:7000,h2:7001"),
            "redis+cluster://***@h1:7000,h2:7001"
        );
        assert_eq!(
            redact("redis://:a@h1:7000,redis://u:b@h2:7001/0"),
            "redis://***@h1:7000,redis://u:***@h2:7001/0"
        );
    }

    fn nodes(url: &str) -> Vec<String> {
        match Target::parse(url) {
            Ok(Target::Cluster(nodes)) => nodes,
            Ok(Target::Single(_)) => panic!("{url} parsed as one Redis"),
            Err(e) => panic!("{url}: {e}"),
        }
    }

    #[test]
    fn cluster_urls_name_every_node_with_the_shared_credentials() {
        assert_eq!(
            nodes("redis+cluster://u:pw@10.0.0.1:7000,10.0.0.2:7001"),
            ["redis://u:pw@10.0.0.1:7000", "redis://u:pw@10.0.0.2:7001"]
        );
        assert_eq!(
            nodes("redis://h1:7000, redis://h2:7001"),
            ["redis://h1:7000", "redis://h2:7001"]
        );
        assert_eq!(nodes("redis+cluster://h1:7000"), ["redis://h1:7000"]);
        assert!(matches!(
            Target::parse("redis://127.0.0.1:6379"),
            Ok(Target::Single(_))
        ));
        assert!(Target::parse("redis+cluster://").is_err());
    }
}
