//! The Redis engine: durable, shared by any number of Herald nodes.
//!
//! Layout (P = `engine.key_prefix`; `{pk}` the hash tag of partition k, see
//! `engine.partitions`: an order lives in partition `crc32(orderId) % partitions`, and each
//! script touches one partition's keys, one cluster slot; `{p0}` alone by default):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `P{pk}:order:<id>` | hash | `order` (JSON), `customerId`, `partnerId`?, `status`, `version`, `updatedAt`, `firstCommand` (the unfinished `processOrder`'s messageId, else ''), and `h:<version>`: the history entries (JSON), the newest `history_limit`; the workflow's `wait`? (the open callback wait's id, '' or absent: none), `hb`? (the order's heartbeat timer: its `P{pk}:timers` member, absent: none; a new one replaces it there), `stepSeq`? (step records written so far) and `s:<n>`: the step records (JSON), the newest `step_history_limit` |
//! | `P{pk}:timers` | zset | workflow timers: score the due time (Unix ms), member the JSON `{messageId, orderId, message, claimsWait?}` of the command it queues (see `steps.rs`) |
//! | `P{pk}:history:<id>` | list | history of orders written before it moved into the hash (read, never written) |
//! | `engine.events_stream` (`P{pk}:events`) | stream | field `event`: the event JSON (DESIGN 1.3) |
//! | `P{pk}:commands` | stream | the command queue: `messageId`, `orderId`, `message`; group `workers` |
//! | `P{pk}:cmdq:<id>` | list | message ids of the order's unfinished commands queued after its first (per-order FIFO gate; the first is the hash's `firstCommand`, see `scripts/apply.lua`) |
//! | `P{pk}:dlq` | stream | dead letters: the command's `messageId`, `orderId`, `message` (as written), `receiveCount`, `deadAt`, `reason` (entries of earlier versions: `deadLetter` JSON plus the command fields) |
//! | `P{pk}:dlq:order:<id>` | list | dead-letter entry ids of the order, in the order they died (redrive moves an order's dead letters together, see `scripts/redrive.lua`) |
//! | `P{pk}:idem:<key>` | string | idempotency record (JSON), with a TTL, in the partition of the order its request acts on |
//! | `P{pk}:commands:malformed` | hash | command entry id -> its fields, for entries that do not decode |
//! | `P{p0}:meta` | hash | `partitions`: the layout the data was written with (`check_layout`) |
//! | `P{p0}:events:malformed` | hash | qualified event entry id -> malformed entry (JSON) |
//! | `P{p0}:webhooks:*`, `P{pk}:webhooks:lost` | | the webhook store, see `webhooks.rs` |
//!
//! SQS semantics come from the consumer group: a delivery is a pending entry, the visibility
//! timeout is the pending entry's idle time (expired entries are taken over with `XAUTOCLAIM`),
//! the receive count is its delivery counter. Every change that touches several keys is one
//! Lua script in `scripts/`, invoked through [`redis::Script`](::redis::Script) (EVALSHA, reloaded on NOSCRIPT,
//! e.g. after a Redis restart).
//!
//! Intake (accept, enqueue) goes through `intake.rs`, which packs concurrent requests of one
//! partition into one `scripts/intake.lua` call on the intake connection.
//!
//! Readers read every partition: on one Redis with one command over all of them (a script or
//! command may touch any key there), on a cluster one per partition (see `groups.rs`).
//!
//! The engine follows the seam's rooms: `orders.rs`, `queue.rs`, `log.rs`, `idempotency.rs`,
//! `steps.rs` and `webhooks.rs` each implement one trait; `groups.rs` is the consumer-group plumbing the
//! queue and the webhook dispatch share; `conn.rs` the connections and error mapping;
//! `reply.rs` the decoding of raw replies; `persistence.rs` asks the servers whether they keep
//! Herald's data on disk. This file keeps the engine itself, its keys and
//! scripts, and the helpers every room uses; it never implements a room's behaviour.

mod conn;
mod groups;
mod idempotency;
mod intake;
mod log;
mod orders;
mod persistence;
mod queue;
mod reply;
mod steps;
mod webhooks;

use crate::config::EngineConfig;
use crate::engine::{Engine, EngineResult, EngineSettings, LogEntry, Persistence, decode_entry};
use crate::model::EventId;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClient;
use ::redis::{Cmd, FromRedisValue, RedisResult, Script, ScriptInvocation, Value};
use anyhow::Context as _;
use async_trait::async_trait;
use conn::{BlockingPool, Conn, Target, map_err, redact, within};
use groups::Group;
use reply::{StreamEntry, corrupt};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// The keys of one partition (`P{pk}`), computed once.
struct PartitionKeys {
    /// `P{pk}`: what every per-order key of the partition starts with.
    base: String,
    events: String,
    commands: String,
    dlq: String,
    malformed_commands: String,
    /// `P{pk}:cmdq:`; scripts append an order id to it.
    cmdq_prefix: String,
    /// `P{pk}:dlq:order:`; scripts append an order id to it (the order's dead-letter index).
    dlq_index_prefix: String,
    /// `P{pk}:webhooks:lost`: gaps the webhook dispatch found in this partition's stream.
    webhook_lost: String,
    /// `P{pk}:timers`: the partition's workflow timers (see `steps.rs`).
    timers: String,
    /// `P{pk}:orders:index`: the partition's orders by owner, a sorted set read by lex
    /// range (all scores 0): `o:<orderId>`, `c:<customerId>\0<orderId>` and
    /// `p:<partnerId>\0<orderId>`, written by the intake script with one ZADD per accept.
    orders_index: String,
}

impl PartitionKeys {
    fn new(config: &EngineConfig, partition: usize) -> PartitionKeys {
        let base = format!("{}{}", config.key_prefix, EngineConfig::hash_tag(partition));
        PartitionKeys {
            events: config.partition_events_stream_key(partition),
            commands: format!("{base}:commands"),
            dlq: format!("{base}:dlq"),
            malformed_commands: format!("{base}:commands:malformed"),
            cmdq_prefix: format!("{base}:cmdq:"),
            dlq_index_prefix: format!("{base}:dlq:order:"),
            webhook_lost: format!("{base}:webhooks:lost"),
            timers: format!("{base}:timers"),
            orders_index: format!("{base}:orders:index"),
            base,
        }
    }
}

/// Key names, computed once: the partitions' keys, and the keys that are not an order's
/// (webhooks, malformed events, the layout record), all in `{p0}`.
struct Keys {
    /// `P{p0}`.
    base: String,
    parts: Vec<PartitionKeys>,
    /// Stream key -> partition, for the events and the commands streams (a read over several
    /// streams answers per key).
    stream_partitions: std::collections::HashMap<String, usize>,
    /// `P{p0}:meta`: the layout the data was written with (`partitions`).
    meta: String,
    malformed_events: String,
    /// `P{p0}:webhooks:`; scripts append `delivery:<id>`, `attempts:<id>`,
    /// `by_endpoint:<endpoint id>` and `failed:<endpoint id>` to it.
    webhooks: String,
    webhook_endpoints: String,
    webhook_endpoints_version: String,
    webhook_health: String,
    webhook_schedule: String,
    /// `P{p0}:webhooks:deleted`: deleted endpoints whose delivery records the sweep has not
    /// deleted yet (set; scripts also build it as `webhooks` + `deleted`).
    webhook_deleted: String,
    /// `P{p0}:webhooks:by_partner_built`: marks that the per-partner endpoint sets
    /// (`by_partner:<partner id>`) hold every endpoint.
    webhook_by_partner_built: String,
}

impl Keys {
    fn new(config: &EngineConfig) -> Keys {
        let base = format!("{}{}", config.key_prefix, EngineConfig::HASH_TAG);
        let parts: Vec<PartitionKeys> = (0..config.partitions.max(1))
            .map(|k| PartitionKeys::new(config, k))
            .collect();
        Keys {
            stream_partitions: parts
                .iter()
                .enumerate()
                .flat_map(|(k, p)| [(p.events.clone(), k), (p.commands.clone(), k)])
                .collect(),
            parts,
            meta: format!("{base}:meta"),
            malformed_events: format!("{base}:events:malformed"),
            webhooks: format!("{base}:webhooks:"),
            webhook_endpoints: format!("{base}:webhooks:endpoints"),
            webhook_endpoints_version: format!("{base}:webhooks:endpoints:version"),
            webhook_health: format!("{base}:webhooks:health"),
            webhook_schedule: format!("{base}:webhooks:schedule"),
            webhook_deleted: format!("{base}:webhooks:deleted"),
            webhook_by_partner_built: format!("{base}:webhooks:by_partner_built"),
            base,
        }
    }

    fn partitions(&self) -> usize {
        self.parts.len()
    }

    /// The partition of an order.
    fn partition(&self, order_id: &str) -> usize {
        crate::model::partition_of(order_id, self.parts.len())
    }

    /// The partition whose event stream or command stream is `key`.
    fn partition_of_stream(&self, key: &str) -> Option<usize> {
        self.stream_partitions.get(key).copied()
    }

    fn part(&self, partition: usize) -> &PartitionKeys {
        &self.parts[partition.min(self.parts.len() - 1)]
    }

    /// The partition keys of an order.
    fn of(&self, order_id: &str) -> &PartitionKeys {
        self.part(self.partition(order_id))
    }

    fn order(&self, order_id: &str) -> String {
        format!("{}:order:{order_id}", self.of(order_id).base)
    }

    /// The history list of the previous layout, still read (see `orders.rs`).
    fn history(&self, order_id: &str) -> String {
        format!("{}:history:{order_id}", self.of(order_id).base)
    }

    fn cmdq(&self, order_id: &str) -> String {
        format!("{}{order_id}", self.of(order_id).cmdq_prefix)
    }

    /// An idempotency record lives in the partition of the order its request acts on (see
    /// `IdempotencyStore`), so the script that makes the effect writes it too.
    fn idem(&self, partition: usize, key: &str) -> String {
        format!("{}:idem:{key}", self.part(partition).base)
    }

    fn webhook_delivery(&self, delivery_id: &str) -> String {
        format!("{}delivery:{delivery_id}", self.webhooks)
    }

    fn webhook_attempts(&self, delivery_id: &str) -> String {
        format!("{}attempts:{delivery_id}", self.webhooks)
    }

    fn webhook_by_endpoint(&self, endpoint_id: &str) -> String {
        format!("{}by_endpoint:{endpoint_id}", self.webhooks)
    }
}

struct Scripts {
    apply: Script,
    claim: Script,
    redrive: Script,
    dead_letter: Script,
    uncount_waiting: Script,
    touch: Script,
    stats: Script,
    abandon: Script,
    fire_timers: Script,
    claim_wait: Script,
    heartbeat: Script,
    webhook_create: Script,
    webhook_claim_due: Script,
    webhook_ordered_turn: Script,
    webhook_finish: Script,
    webhook_reschedule: Script,
    webhook_delete_endpoint: Script,
    webhook_put_endpoint: Script,
    webhook_read: Script,
    webhook_create_endpoint: Script,
    webhook_update_endpoint: Script,
    webhook_sweep: Script,
}

/// A command-queue script with the functions they share (`scripts/queue_lib.lua`) in front.
macro_rules! queue_script {
    ($file:literal) => {
        concat!(
            include_str!("scripts/queue_lib.lua"),
            include_str!(concat!("scripts/", $file))
        )
    };
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            apply: Script::new(include_str!("scripts/apply.lua")),
            claim: Script::new(queue_script!("claim.lua")),
            redrive: Script::new(queue_script!("redrive.lua")),
            dead_letter: Script::new(queue_script!("dead_letter.lua")),
            uncount_waiting: Script::new(queue_script!("uncount_waiting.lua")),
            touch: Script::new(include_str!("scripts/touch.lua")),
            stats: Script::new(include_str!("scripts/stats.lua")),
            abandon: Script::new(include_str!("scripts/abandon.lua")),
            fire_timers: Script::new(include_str!("scripts/fire_timers.lua")),
            claim_wait: Script::new(include_str!("scripts/claim_wait.lua")),
            heartbeat: Script::new(include_str!("scripts/heartbeat.lua")),
            webhook_create: Script::new(include_str!("scripts/webhook_create.lua")),
            webhook_claim_due: Script::new(include_str!("scripts/webhook_claim_due.lua")),
            webhook_ordered_turn: Script::new(include_str!("scripts/webhook_ordered_turn.lua")),
            webhook_finish: Script::new(include_str!("scripts/webhook_finish.lua")),
            webhook_reschedule: Script::new(include_str!("scripts/webhook_reschedule.lua")),
            webhook_delete_endpoint: Script::new(include_str!(
                "scripts/webhook_delete_endpoint.lua"
            )),
            webhook_put_endpoint: Script::new(include_str!("scripts/webhook_put_endpoint.lua")),
            webhook_read: Script::new(include_str!("scripts/webhook_read.lua")),
            webhook_create_endpoint: Script::new(include_str!(
                "scripts/webhook_create_endpoint.lua"
            )),
            webhook_update_endpoint: Script::new(include_str!(
                "scripts/webhook_update_endpoint.lua"
            )),
            webhook_sweep: Script::new(include_str!("scripts/webhook_sweep.lua")),
        }
    }
}

pub struct RedisEngine {
    /// Shared, auto-reconnecting connection for every non-blocking command.
    conn: Conn,
    /// A second one for intake (accept, enqueue) alone: Redis serves each connection's
    /// pipeline in order, so on the shared one an intake call would wait behind the worker's
    /// whole pipeline of applies; on its own it waits for one turn of Redis' event loop.
    intake: Conn,
    /// Pack concurrent accepts and enqueues into one script call on `intake` (`intake.rs`),
    /// one batcher per partition (a script touches one partition's slot).
    intake_batches: Vec<intake::IntakeBatcher>,
    /// Dedicated connections for `XREAD BLOCK` / `XREADGROUP BLOCK`.
    blocking: BlockingPool,
    keys: Keys,
    scripts: Scripts,
    settings: EngineSettings,
    op_timeout: Duration,
    /// Where the next `XAUTOCLAIM` scan continues, so expired deliveries deep in a long pending
    /// list are found too (each call scans only a bounded part of it).
    /// One per partition.
    claim_cursors: Vec<Mutex<String>>,
    /// When the next receive runs the claim script (milliseconds since `started`). Expired
    /// work is looked for at most every quarter visibility timeout, not on every receive: a
    /// claim costs a script run, and receives are on the worker's hot path.
    next_claim_ms: AtomicU64,
    started: std::time::Instant,
    /// Where the next `XAUTOCLAIM` scan of the webhook dispatch group continues.
    /// One per partition.
    dispatch_cursors: Vec<Mutex<String>>,
    /// When the dispatcher's next claim runs `XAUTOCLAIM` (milliseconds since `started`): at
    /// most every quarter `reclaim_after`, like `next_claim_ms` for the command queue.
    next_dispatch_reclaim_ms: AtomicU64,
    /// The last answer of [`RedisEngine::check_persistence`] and when it was asked: `GET
    /// /readyz` reports it on every probe, and asking costs two `CONFIG GET` per partition.
    persistence: tokio::sync::Mutex<Option<(std::time::Instant, Persistence)>>,
}

/// How a cluster's read of every partition waits (it cannot block on all of them in one
/// command): from this pause between empty rounds...
const POLL_FIRST: Duration = Duration::from_millis(2);
/// ...doubling up to this.
const POLL_MAX: Duration = Duration::from_millis(50);

/// The pause after `pause` between a cluster's empty reads.
fn next_poll_pause(pause: Duration) -> Duration {
    (pause * 2).min(POLL_MAX)
}

/// Whole milliseconds, at least 1 (`PX 0` is an error, and a zero TTL would mean "forever").
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn parse_event_id(raw: &str) -> EngineResult<EventId> {
    raw.parse()
        .map_err(|e: String| corrupt(format!("stream id from Redis: {e}")))
}

/// The seam's decoder for an entry read from `partition`'s stream.
fn log_entry(partition: usize, entry: StreamEntry) -> LogEntry {
    decode_entry(partition, entry.id, &entry.fields)
}

/// The shared connection and the intake one. On one Redis, two connection managers with few,
/// short reconnection attempts: a caller waiting on a dead Redis should get its
/// `Unavailable` promptly and retry on its own schedule. On a cluster, two cluster connections
/// (one connection per node each), which follow MOVED replies and failovers on their own.
async fn connect_shared(target: &Target, op_timeout: Duration) -> RedisResult<(Conn, Conn)> {
    match target {
        Target::Single(client) => {
            let manager_config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(op_timeout))
                .set_connection_timeout(Some(op_timeout))
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_secs(1));
            let manager = || {
                within(
                    "connecting",
                    op_timeout * 3,
                    ConnectionManager::new_with_config(client.clone(), manager_config.clone()),
                )
            };
            Ok((
                Conn::Managed(manager().await?),
                Conn::Managed(manager().await?),
            ))
        }
        Target::Cluster(nodes) => {
            let client = ClusterClient::builder(nodes.iter().map(String::as_str))
                .connection_timeout(op_timeout)
                .response_timeout(op_timeout)
                .overall_response_timeout(Some(op_timeout))
                .retries(2)
                .min_retry_wait(20)
                .max_retry_wait(500)
                .build()?;
            let connect = || within("connecting", op_timeout * 3, client.get_async_connection());
            Ok((
                Conn::Cluster(connect().await?),
                Conn::Cluster(connect().await?),
            ))
        }
    }
}

/// Every script touches a partition's keys and its event stream together, so on a cluster
/// they must share one slot: a configured `events_stream` needs the same hash tag.
fn check_one_slot(config: &EngineConfig) -> anyhow::Result<()> {
    use ::redis::cluster_routing::Slot;
    for k in 0..config.partitions.max(1) {
        let base = format!("{}{}", config.key_prefix, EngineConfig::hash_tag(k));
        let events = config.partition_events_stream_key(k);
        if Slot::for_key(&base) != Slot::for_key(&events) {
            anyhow::bail!(
                "engine.events_stream `{events}` is not in the same Redis Cluster slot as \
                 Herald's other keys (`{base}:...`): give it the same hash tag, e.g. \
                 `{base}:events`"
            );
        }
    }
    Ok(())
}

impl RedisEngine {
    /// Connects, checks the server, and creates the consumer group if needed. Fails with the
    /// URL (password hidden) when Redis cannot be reached, so a misconfigured node says why.
    pub async fn connect(
        config: &EngineConfig,
        settings: EngineSettings,
    ) -> anyhow::Result<RedisEngine> {
        let shown = redact(&config.redis_url);
        let op_timeout = config.operation_timeout;
        let target = Target::parse(&config.redis_url)
            .with_context(|| format!("invalid Redis URL {shown}"))?;
        if let Target::Cluster(_) = &target {
            check_one_slot(config)?;
        }
        let (conn, intake) = connect_shared(&target, op_timeout)
            .await
            .with_context(|| format!("cannot connect to Redis at {shown}"))?;
        let blocking = BlockingPool::new(&target, op_timeout, config.max_blocking_connections)
            .with_context(|| format!("invalid Redis URL {shown}"))?;
        let keys = Keys::new(config);
        let partitions = keys.partitions();
        let engine = RedisEngine {
            conn,
            intake_batches: keys
                .parts
                .iter()
                .map(|part| {
                    intake::IntakeBatcher::start(
                        intake.clone(),
                        part.events.clone(),
                        part.commands.clone(),
                        settings.event_retention.max(1),
                        op_timeout,
                    )
                })
                .collect(),
            intake,
            blocking,
            keys,
            scripts: Scripts::new(),
            settings,
            op_timeout,
            claim_cursors: (0..partitions).map(|_| Mutex::new("0-0".into())).collect(),
            next_claim_ms: AtomicU64::new(0),
            started: std::time::Instant::now(),
            dispatch_cursors: (0..partitions).map(|_| Mutex::new("0-0".into())).collect(),
            next_dispatch_reclaim_ms: AtomicU64::new(0),
            persistence: tokio::sync::Mutex::new(None),
        };
        engine
            .ping()
            .await
            .with_context(|| format!("Redis at {shown} does not answer"))?;
        engine
            .check_version()
            .await
            .with_context(|| format!("Redis at {shown}"))?;
        engine
            .check_layout()
            .await
            .with_context(|| format!("Redis at {shown}"))?;
        engine
            .create_group(Group::Commands)
            .await
            .with_context(|| format!("creating the command consumer group on {shown}"))?;
        engine
            .create_group(Group::Dispatch)
            .await
            .with_context(|| format!("creating the webhook dispatch group on {shown}"))?;
        Ok(engine)
    }

    /// The data on Redis was written with a number of partitions, recorded in `P{p0}:meta`
    /// by the first node to start; a node configured with another number refuses to start
    /// (its keys would name other partitions: orders, queues and cursors would silently go
    /// missing). Data from before the record existed was written with one partition.
    async fn check_layout(&self) -> anyhow::Result<()> {
        let partitions = self.keys.partitions();
        let what = "reading the data layout";
        let mut get = ::redis::cmd("HGET");
        get.arg(&self.keys.meta).arg("partitions");
        let refuse = |found: usize| {
            anyhow::anyhow!(
                "engine.partitions is {partitions}, but the data under `{}` was written with \
                 {found} partition(s). Changing the number of partitions is not done in place: \
                 see \"Changing partitions\" in the README (drain, then start on a new \
                 key_prefix or an empty Redis), or set engine.partitions = {found}.",
                self.keys.base
            )
        };
        let found = match self.run::<Option<usize>>(what, &get).await? {
            Some(found) => found,
            None => {
                let part0 = self.keys.part(0);
                let mut legacy = false;
                for key in [&part0.commands, &part0.events] {
                    legacy |= self
                        .run::<bool>(what, ::redis::cmd("EXISTS").arg(key))
                        .await?;
                }
                if legacy && partitions != 1 {
                    return Err(refuse(1));
                }
                let _: Value = self
                    .run(
                        what,
                        ::redis::cmd("HSETNX")
                            .arg(&self.keys.meta)
                            .arg("partitions")
                            .arg(partitions),
                    )
                    .await?;
                // Another node may have written its own number first.
                self.run::<Option<usize>>(what, &get)
                    .await?
                    .unwrap_or(partitions)
            }
        };
        if found != partitions {
            return Err(refuse(found));
        }
        Ok(())
    }

    /// The scripts need Redis 6.2 (XAUTOCLAIM, LPOS, XPENDING IDLE). A server that hides INFO
    /// (some managed services rename it) is given the benefit of the doubt.
    async fn check_version(&self) -> anyhow::Result<()> {
        let info: String = match self
            .query_keyless("INFO", ::redis::cmd("INFO").arg("server"))
            .await
        {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the Redis version; assuming 6.2 or later");
                return Ok(());
            }
        };
        let version = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .map(str::trim)
            .unwrap_or("");
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if (major, minor) < (6, 2) && !version.is_empty() {
            anyhow::bail!("Redis {version} is too old: Herald needs Redis 6.2 or later");
        }
        Ok(())
    }

    /// Whether Redis is a cluster: a command or script may then touch one slot only, so
    /// partitions are read one by one instead of in one command.
    fn clustered(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    /// On a cluster, where one command reads one partition: `read(k)` for every partition,
    /// concurrently and without blocking, again until one returns something or `wait` is
    /// over, pausing [`POLL_FIRST`] doubling to [`POLL_MAX`] between empty rounds (a blocked
    /// read per partition would hold that many connections).
    async fn poll_partitions<T, F, Fut>(&self, wait: Duration, read: F) -> EngineResult<Vec<T>>
    where
        F: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = EngineResult<Vec<T>>>,
    {
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = POLL_FIRST;
        loop {
            let reads =
                futures_util::future::join_all((0..self.keys.partitions()).map(&read)).await;
            let mut out = Vec::new();
            for r in reads {
                out.extend(r?);
            }
            let now = tokio::time::Instant::now();
            if !out.is_empty() || now >= deadline {
                return Ok(out);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = next_poll_pause(pause);
        }
    }

    /// One non-blocking command on the shared connection, bounded by the operation timeout.
    pub(super) async fn query<T: FromRedisValue>(&self, what: &str, cmd: &Cmd) -> RedisResult<T> {
        let mut conn = self.conn.clone();
        within(what, self.op_timeout, cmd.query_async(&mut conn)).await
    }

    /// A command that names no key, run on the node holding Herald's keys (on a cluster, the
    /// master of the `{p0}` slot; left to the cluster client it would go to any node, or all).
    async fn query_keyless<T: FromRedisValue>(&self, what: &str, cmd: &Cmd) -> RedisResult<T> {
        let mut conn = self.conn.clone();
        within(
            what,
            self.op_timeout,
            conn.query_on_node_of(&self.keys.base, cmd),
        )
        .await
    }

    /// Like [`Self::query`], mapping errors to [`EngineError`].
    pub(super) async fn run<T: FromRedisValue>(&self, what: &str, cmd: &Cmd) -> EngineResult<T> {
        self.query(what, cmd).await.map_err(|e| map_err(what, e))
    }

    /// Runs a script on the shared connection. Twice the operation timeout: after a Redis
    /// restart the first call needs a second round trip to load the script.
    pub(super) async fn eval(
        &self,
        what: &str,
        invocation: &ScriptInvocation<'_>,
    ) -> RedisResult<Value> {
        self.eval_on(&self.conn, what, invocation).await
    }

    async fn eval_on(
        &self,
        conn: &Conn,
        what: &str,
        invocation: &ScriptInvocation<'_>,
    ) -> RedisResult<Value> {
        let mut conn = conn.clone();
        within(
            what,
            self.op_timeout * 2,
            invocation.invoke_async(&mut conn),
        )
        .await
    }

    pub(super) async fn run_script(
        &self,
        what: &str,
        invocation: &ScriptInvocation<'_>,
    ) -> EngineResult<Value> {
        self.eval(what, invocation)
            .await
            .map_err(|e| map_err(what, e))
    }
}

#[async_trait]
impl Engine for RedisEngine {
    fn kind(&self) -> &'static str {
        "redis"
    }

    /// At most `engine.max_blocking_connections`.
    fn blocking_connections_in_use(&self) -> Option<usize> {
        Some(self.blocking.in_use())
    }

    /// Pings over both connections, so a readiness probe also re-establishes the intake one.
    async fn ping(&self) -> EngineResult<()> {
        let _: Value = self
            .query_keyless("PING", &::redis::cmd("PING"))
            .await
            .map_err(|e| map_err("PING", e))?;
        let mut intake = self.intake.clone();
        let _: Value = within(
            "PING (intake)",
            self.op_timeout,
            intake.query_on_node_of(&self.keys.base, &::redis::cmd("PING")),
        )
        .await
        .map_err(|e| map_err("PING (intake)", e))?;
        Ok(())
    }

    /// See `persistence.rs`.
    async fn persistence(&self) -> Persistence {
        self.check_persistence().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_carry_their_own_hash_tag() {
        let config = EngineConfig {
            partitions: 16,
            ..EngineConfig::default()
        };
        let keys = Keys::new(&config);
        assert_eq!(keys.partitions(), 16);
        let k = keys.partition("order-1");
        assert_eq!(k, crate::model::partition_of("order-1", 16));
        assert_eq!(
            keys.order("order-1"),
            format!("herald:{{p{k}}}:order:order-1")
        );
        assert_eq!(
            keys.cmdq("order-1"),
            format!("herald:{{p{k}}}:cmdq:order-1")
        );
        assert_eq!(keys.part(7).events, "herald:{p7}:events");
        assert_eq!(keys.part(7).commands, "herald:{p7}:commands");
        assert_eq!(keys.part(7).webhook_lost, "herald:{p7}:webhooks:lost");
        assert_eq!(keys.part(7).timers, "herald:{p7}:timers");
        assert_eq!(keys.idem(7, "admin:k"), "herald:{p7}:idem:admin:k");
        assert_eq!(keys.partition_of_stream("herald:{p7}:events"), Some(7));
        assert_eq!(keys.partition_of_stream("herald:{p15}:commands"), Some(15));
        assert_eq!(keys.partition_of_stream("herald:{p16}:commands"), None);
        // What is not an order's stays in {p0}.
        assert_eq!(keys.webhook_schedule, "herald:{p0}:webhooks:schedule");
        assert_eq!(keys.meta, "herald:{p0}:meta");
        // Each partition's stream shares its slot with the partition's keys.
        check_one_slot(&config).unwrap();
        let renamed = EngineConfig {
            events_stream: "orders:{p0}:log".into(),
            partitions: 3,
            ..EngineConfig::default()
        };
        assert_eq!(renamed.partition_events_stream_key(2), "orders:{p2}:log");
        // The hash tag alone decides the slot.
        check_one_slot(&renamed).unwrap();
    }

    #[test]
    fn keys_carry_the_hash_tag() {
        let keys = Keys::new(&EngineConfig::default());
        assert_eq!(keys.order("o1"), "herald:{p0}:order:o1");
        assert_eq!(keys.history("o1"), "herald:{p0}:history:o1");
        assert_eq!(keys.cmdq("o1"), "herald:{p0}:cmdq:o1");
        assert_eq!(keys.idem(0, "admin:k"), "herald:{p0}:idem:admin:k");
        assert_eq!(keys.part(0).events, "herald:{p0}:events");
        assert_eq!(keys.part(0).commands, "herald:{p0}:commands");
        assert_eq!(keys.part(0).dlq, "herald:{p0}:dlq");
        assert_eq!(keys.meta, "herald:{p0}:meta");
        assert_eq!(keys.malformed_events, "herald:{p0}:events:malformed");
        assert_eq!(keys.webhook_endpoints, "herald:{p0}:webhooks:endpoints");
        assert_eq!(keys.webhook_schedule, "herald:{p0}:webhooks:schedule");
        assert_eq!(
            keys.webhook_endpoints_version,
            "herald:{p0}:webhooks:endpoints:version"
        );
        assert_eq!(keys.webhook_health, "herald:{p0}:webhooks:health");
        assert_eq!(keys.part(0).webhook_lost, "herald:{p0}:webhooks:lost");
        assert_eq!(
            keys.webhook_delivery("msg_1"),
            "herald:{p0}:webhooks:delivery:msg_1"
        );
        assert_eq!(
            keys.webhook_attempts("msg_1"),
            "herald:{p0}:webhooks:attempts:msg_1"
        );
        assert_eq!(
            keys.webhook_by_endpoint("ep_1"),
            "herald:{p0}:webhooks:by_endpoint:ep_1"
        );
    }
}

#[cfg(test)]
mod integration;
