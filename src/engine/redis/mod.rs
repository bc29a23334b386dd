//! The Redis engine: durable, shared by any number of Herald nodes.
//!
//! Layout (P = `engine.key_prefix`, every key carries the hash tag `{p0}` so each script
//! touches a single cluster slot):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `P{p0}:order:<id>` | hash | `order` (JSON), `customerId`, `partnerId`?, `status`, `version`, `updatedAt` |
//! | `P{p0}:history:<id>` | list | history entries (JSON), oldest first, capped |
//! | `engine.events_stream` (`P{p0}:events`) | stream | field `event`: the event JSON (DESIGN 1.3) |
//! | `P{p0}:commands` | stream | the command queue: `messageId`, `orderId`, `message`; group `workers` |
//! | `P{p0}:cmdq:<id>` | list | message ids of the order's unfinished commands (per-order FIFO gate) |
//! | `P{p0}:dlq` | stream | dead letters: `deadLetter` (JSON) plus the original command fields |
//! | `P{p0}:idem:<key>` | string | idempotency record (JSON), with a TTL |
//! | `P{p0}:events:malformed` | hash | event entry id -> malformed entry (JSON) |
//! | `P{p0}:commands:malformed` | hash | command entry id -> its fields, for entries that do not decode |
//! | `P{p0}:webhooks:*` | | the webhook store, see `webhooks.rs` |
//!
//! SQS semantics come from the consumer group: a delivery is a pending entry, the visibility
//! timeout is the pending entry's idle time (expired entries are taken over with `XAUTOCLAIM`),
//! the receive count is its delivery counter. Every change that touches several keys is one
//! Lua script in `scripts/`, invoked through [`redis::Script`](::redis::Script) (EVALSHA, reloaded on NOSCRIPT,
//! e.g. after a Redis restart).

mod conn;
mod reply;
mod webhooks;

use super::*;
use crate::config::EngineConfig;
use crate::model::{HistoryEntry, OrderEvent};
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Cmd, FromRedisValue, RedisResult, Script, ScriptInvocation, Value};
use anyhow::Context as _;
use conn::{BlockingPool, is_busygroup, is_nogroup, map_err, redact, within};
use reply::{StreamEntry, corrupt, int, items, text};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The consumer group all workers share.
const GROUP: &str = "workers";

/// The consumer groups Herald reads: the command queue's workers and the webhook dispatchers.
#[derive(Debug, Clone, Copy)]
enum Group {
    Commands,
    Dispatch,
}

/// `queue_stats` counts at most this many expired in-flight commands (the rest still count as
/// in flight): the figure stays cheap however large the backlog.
const STATS_EXPIRED_SCAN: usize = 10_000;

/// HSCAN page size when listing malformed entries.
const SCAN_PAGE: usize = 500;

/// Key names, computed once.
struct Keys {
    /// `P{p0}`: what every per-entity key starts with.
    base: String,
    events: String,
    commands: String,
    dlq: String,
    malformed_events: String,
    malformed_commands: String,
    /// `P{p0}:cmdq:`; scripts append an order id to it.
    cmdq_prefix: String,
    /// `P{p0}:webhooks:`; scripts append `delivery:<id>`, `attempts:<id>`,
    /// `by_endpoint:<endpoint id>` and `failed:<endpoint id>` to it.
    webhooks: String,
    webhook_endpoints: String,
    webhook_schedule: String,
}

impl Keys {
    fn new(config: &EngineConfig) -> Keys {
        let base = format!("{}{}", config.key_prefix, EngineConfig::HASH_TAG);
        Keys {
            events: config.events_stream_key(),
            commands: format!("{base}:commands"),
            dlq: format!("{base}:dlq"),
            malformed_events: format!("{base}:events:malformed"),
            malformed_commands: format!("{base}:commands:malformed"),
            cmdq_prefix: format!("{base}:cmdq:"),
            webhooks: format!("{base}:webhooks:"),
            webhook_endpoints: format!("{base}:webhooks:endpoints"),
            webhook_schedule: format!("{base}:webhooks:schedule"),
            base,
        }
    }

    fn order(&self, order_id: &str) -> String {
        format!("{}:order:{order_id}", self.base)
    }

    fn history(&self, order_id: &str) -> String {
        format!("{}:history:{order_id}", self.base)
    }

    fn cmdq(&self, order_id: &str) -> String {
        format!("{}{order_id}", self.cmdq_prefix)
    }

    fn idem(&self, key: &str) -> String {
        format!("{}:idem:{key}", self.base)
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
    accept: Script,
    enqueue: Script,
    apply: Script,
    claim: Script,
    redrive: Script,
    touch: Script,
    stats: Script,
    abandon: Script,
    webhook_create: Script,
    webhook_claim_due: Script,
    webhook_finish: Script,
    webhook_reschedule: Script,
    webhook_delete_endpoint: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            accept: Script::new(include_str!("scripts/accept.lua")),
            enqueue: Script::new(include_str!("scripts/enqueue.lua")),
            apply: Script::new(include_str!("scripts/apply.lua")),
            claim: Script::new(include_str!("scripts/claim.lua")),
            redrive: Script::new(include_str!("scripts/redrive.lua")),
            touch: Script::new(include_str!("scripts/touch.lua")),
            stats: Script::new(include_str!("scripts/stats.lua")),
            abandon: Script::new(include_str!("scripts/abandon.lua")),
            webhook_create: Script::new(include_str!("scripts/webhook_create.lua")),
            webhook_claim_due: Script::new(include_str!("scripts/webhook_claim_due.lua")),
            webhook_finish: Script::new(include_str!("scripts/webhook_finish.lua")),
            webhook_reschedule: Script::new(include_str!("scripts/webhook_reschedule.lua")),
            webhook_delete_endpoint: Script::new(include_str!(
                "scripts/webhook_delete_endpoint.lua"
            )),
        }
    }
}

pub struct RedisEngine {
    /// Shared, auto-reconnecting connection for every non-blocking command.
    conn: ConnectionManager,
    /// A second one for intake (accept, enqueue) alone: Redis serves each connection's
    /// pipeline in order, so on the shared one an intake call would wait behind the worker's
    /// whole pipeline of applies; on its own it waits for one turn of Redis' event loop.
    intake: ConnectionManager,
    /// Dedicated connections for `XREAD BLOCK` / `XREADGROUP BLOCK`.
    blocking: BlockingPool,
    keys: Keys,
    scripts: Scripts,
    settings: EngineSettings,
    op_timeout: Duration,
    /// Where the next `XAUTOCLAIM` scan continues, so expired deliveries deep in a long pending
    /// list are found too (each call scans only a bounded part of it).
    claim_cursor: Mutex<String>,
    /// When the next receive runs the claim script (milliseconds since `started`). Expired
    /// work is looked for at most every quarter visibility timeout, not on every receive: a
    /// claim costs a script run, and receives are on the worker's hot path.
    next_claim_ms: AtomicU64,
    started: std::time::Instant,
    /// Where the next `XAUTOCLAIM` scan of the webhook dispatch group continues.
    dispatch_cursor: Mutex<String>,
}

/// A history entry without its event id: the scripts splice the id in once the event's XADD
/// assigned it (`{"eventId":"..",` + this JSON minus its opening brace).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct HistoryBody<'a> {
    status: OrderStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_status: Option<OrderStatus>,
    version: u64,
    occurred_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

fn history_body(event: &OrderEvent, reason: Option<&str>) -> EngineResult<String> {
    let json = serde_json::to_string(&HistoryBody {
        status: event.status,
        previous_status: event.previous_status,
        version: event.version,
        occurred_at: &event.occurred_at,
        reason,
    })
    .map_err(corrupt)?;
    // The splice in the scripts relies on a non-empty object: `{"status":..}` always is.
    debug_assert!(json.starts_with("{\"status\""));
    Ok(json)
}

/// The stored form of an idempotency record.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "camelCase")]
enum IdemRecord {
    #[serde(rename = "inflight")]
    InFlight {
        fingerprint: String,
        /// Unique per claim, so a claim whose reply was lost can be released as that claim
        /// only ([`RELEASE_LOST_CLAIM`]).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        token: String,
    },
    #[serde(rename = "done", rename_all = "camelCase")]
    Done {
        key: String,
        fingerprint: String,
        status: u16,
        body: serde_json::Value,
        /// The TTL it was stored with, so a replay hands back the response as it was given.
        #[serde(default)]
        ttl_ms: u64,
    },
}

fn done_record(response: &IdempotentResponse) -> EngineResult<String> {
    serde_json::to_string(&IdemRecord::Done {
        key: response.key.clone(),
        fingerprint: response.fingerprint.clone(),
        status: response.status,
        body: response.body.clone(),
        ttl_ms: millis(response.ttl),
    })
    .map_err(corrupt)
}

/// Whole milliseconds, at least 1 (`PX 0` is an error, and a zero TTL would mean "forever").
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn parse_event_id(raw: &str) -> EngineResult<EventId> {
    raw.parse()
        .map_err(|e: String| corrupt(format!("stream id from Redis: {e}")))
}

/// [`log_entry`] for an entry given as its id and raw fields (the fuzz targets' way in).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn log_entry_from_fields(id: String, fields: Vec<(Vec<u8>, Vec<u8>)>) -> LogEntry {
    log_entry(StreamEntry { id, fields })
}

/// Turns one event-log entry into an event or a malformed entry; never fails.
fn log_entry(entry: StreamEntry) -> LogEntry {
    let malformed = |raw: String, error: String| {
        LogEntry::Malformed(MalformedEntry::new(entry.id.clone(), &raw, error))
    };
    match entry.field("event") {
        None => malformed(
            entry.fields_json(),
            "entry has no `event` field".to_string(),
        ),
        Some(bytes) => match std::str::from_utf8(bytes) {
            Err(_) => malformed(
                String::from_utf8_lossy(bytes).into_owned(),
                "`event` field is not UTF-8".to_string(),
            ),
            Ok(raw) => match OrderEvent::parse(raw) {
                Ok(event) => LogEntry::Event(LoggedEvent {
                    event_id: entry.id.clone(),
                    event,
                }),
                Err(error) => malformed(raw.to_string(), error),
            },
        },
    }
}

fn parse_command(entry: &StreamEntry) -> Result<NewCommand, String> {
    let raw = entry
        .text("message")
        .ok_or("no UTF-8 `message` field".to_string())?;
    serde_json::from_str(raw).map_err(|e| format!("`message` does not decode: {e}"))
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
        let client = ::redis::Client::open(config.redis_url.as_str())
            .with_context(|| format!("invalid Redis URL {shown}"))?;
        // Few, short reconnection attempts: a caller waiting on a dead Redis should get its
        // `Unavailable` promptly and retry on its own schedule.
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(op_timeout))
            .set_connection_timeout(Some(op_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let conn = within(
            "connecting",
            op_timeout * 3,
            ConnectionManager::new_with_config(client.clone(), manager_config.clone()),
        )
        .await
        .with_context(|| format!("cannot connect to Redis at {shown}"))?;
        let intake = within(
            "connecting",
            op_timeout * 3,
            ConnectionManager::new_with_config(client.clone(), manager_config),
        )
        .await
        .with_context(|| format!("cannot connect to Redis at {shown}"))?;
        let engine = RedisEngine {
            conn,
            intake,
            blocking: BlockingPool::new(client, op_timeout),
            keys: Keys::new(config),
            scripts: Scripts::new(),
            settings,
            op_timeout,
            claim_cursor: Mutex::new("0-0".into()),
            next_claim_ms: AtomicU64::new(0),
            started: std::time::Instant::now(),
            dispatch_cursor: Mutex::new("0-0".into()),
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
            .create_group(Group::Commands)
            .await
            .with_context(|| format!("creating the command consumer group on {shown}"))?;
        engine
            .create_group(Group::Dispatch)
            .await
            .with_context(|| format!("creating the webhook dispatch group on {shown}"))?;
        Ok(engine)
    }

    /// The scripts need Redis 6.2 (XAUTOCLAIM, LPOS, XPENDING IDLE). A server that hides INFO
    /// (some managed services rename it) is given the benefit of the doubt.
    async fn check_version(&self) -> anyhow::Result<()> {
        let info: String = match self.query("INFO", ::redis::cmd("INFO").arg("server")).await {
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

    /// The stream, group name and starting id of one of Herald's consumer groups.
    fn group_spec(&self, group: Group) -> (&str, &'static str, &'static str) {
        match group {
            // The command queue starts at the beginning: every command is work.
            Group::Commands => (&self.keys.commands, GROUP, "0"),
            // Webhook dispatch starts at the log's end when created: history before the first
            // start (or before a recreation) is not delivered.
            Group::Dispatch => (
                &self.keys.events,
                crate::engine::webhook::DISPATCH_GROUP,
                "$",
            ),
        }
    }

    /// `XGROUP CREATE .. MKSTREAM`; an existing group is fine.
    async fn create_group(&self, group: Group) -> EngineResult<()> {
        let (stream, name, start) = self.group_spec(group);
        let result: RedisResult<Value> = self
            .query(
                "XGROUP CREATE",
                ::redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(stream)
                    .arg(name)
                    .arg(start)
                    .arg("MKSTREAM"),
            )
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_busygroup(&e) => Ok(()),
            Err(e) => Err(map_err(&format!("creating the consumer group `{name}`"), e)),
        }
    }

    /// Recreates a consumer group after Redis reported it missing (Redis restarted without
    /// persistence, or an operator deleted it).
    async fn recover_group(&self, group: Group, e: &::redis::RedisError) -> EngineResult<()> {
        let (stream, name, start) = self.group_spec(group);
        tracing::warn!(error = %e, %stream, group = name, start,
            "consumer group is missing; creating it again");
        self.create_group(group).await
    }

    /// `XREADGROUP .. STREAMS <stream> >` on a dedicated connection, blocking up to `block`:
    /// entries never handed out to any consumer of the group.
    async fn read_group(
        &self,
        group: Group,
        consumer: &str,
        count: usize,
        block: Duration,
        what: &str,
    ) -> EngineResult<Vec<StreamEntry>> {
        let (stream, name, _) = self.group_spec(group);
        let mut cmd = ::redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(name)
            .arg(consumer)
            .arg("COUNT")
            .arg(count);
        let block_ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX);
        // BLOCK 0 would wait forever.
        if block_ms > 0 {
            cmd.arg("BLOCK").arg(block_ms);
        }
        cmd.arg("STREAMS").arg(stream).arg(">");
        // Only a blocking read needs a dedicated connection.
        let result: RedisResult<Value> = if block_ms > 0 {
            self.blocking
                .query(what, &cmd, block, self.op_timeout)
                .await
        } else {
            self.query(what, &cmd).await
        };
        let reply = match result {
            Ok(reply) => reply,
            Err(e) if is_nogroup(&e) => {
                self.recover_group(group, &e).await?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(map_err(what, e)),
        };
        reply::read_entries(&reply)
    }

    /// One non-blocking command on the shared connection, bounded by the operation timeout.
    async fn query<T: FromRedisValue>(&self, what: &str, cmd: &Cmd) -> RedisResult<T> {
        let mut conn = self.conn.clone();
        within(what, self.op_timeout, cmd.query_async(&mut conn)).await
    }

    /// Like [`Self::query`], mapping errors to [`EngineError`].
    async fn run<T: FromRedisValue>(&self, what: &str, cmd: &Cmd) -> EngineResult<T> {
        self.query(what, cmd).await.map_err(|e| map_err(what, e))
    }

    /// Runs a script on the shared connection. Twice the operation timeout: after a Redis
    /// restart the first call needs a second round trip to load the script.
    async fn eval(&self, what: &str, invocation: &ScriptInvocation<'_>) -> RedisResult<Value> {
        self.eval_on(&self.conn, what, invocation).await
    }

    async fn eval_on(
        &self,
        conn: &ConnectionManager,
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

    /// Runs an intake script on the intake connection.
    async fn run_intake_script(
        &self,
        what: &str,
        invocation: &ScriptInvocation<'_>,
    ) -> EngineResult<Value> {
        self.eval_on(&self.intake, what, invocation)
            .await
            .map_err(|e| map_err(what, e))
    }

    async fn run_script(
        &self,
        what: &str,
        invocation: &ScriptInvocation<'_>,
    ) -> EngineResult<Value> {
        self.eval(what, invocation)
            .await
            .map_err(|e| map_err(what, e))
    }

    /// Runs the claim script (retrying once after recreating a missing group). Returns the
    /// claimed deliveries and whether any command is pending at all.
    async fn claim_expired(&self, max: usize) -> EngineResult<(Vec<(StreamEntry, u32)>, u64)> {
        let cursor = self
            .claim_cursor
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|_| "0-0".into());
        let mut invocation = self.scripts.claim.prepare_invoke();
        invocation
            .key(&self.keys.commands)
            .key(&self.keys.dlq)
            .arg(GROUP)
            .arg(&self.settings.consumer_name)
            .arg(millis(self.settings.visibility_timeout))
            .arg(&cursor)
            .arg(max)
            .arg(self.settings.max_receives)
            .arg(crate::model::now_rfc3339())
            .arg(&self.keys.cmdq_prefix);
        let reply = match self.eval("claiming expired commands", &invocation).await {
            Ok(reply) => reply,
            Err(e) if is_nogroup(&e) => {
                self.recover_group(Group::Commands, &e).await?;
                self.run_script("claiming expired commands", &invocation)
                    .await?
            }
            Err(e) => return Err(map_err("claiming expired commands", e)),
        };
        let bad = || corrupt("claim script returned an unexpected reply");
        let [next, pending, dead, claimed] = items(&reply).ok_or_else(bad)? else {
            return Err(bad());
        };
        if let (Some(next), Ok(mut cursor)) = (text(next), self.claim_cursor.lock()) {
            *cursor = next;
        }
        let pending = int(pending).ok_or_else(bad)?.max(0) as u64;
        let dead = int(dead).ok_or_else(bad)?;
        if dead > 0 {
            tracing::warn!(
                count = dead,
                max_receives = self.settings.max_receives,
                "commands received too often moved to the dead-letter queue"
            );
        }
        let mut out = Vec::new();
        for item in items(claimed).ok_or_else(bad)? {
            let [id, deliveries, fields] = items(item).ok_or_else(bad)? else {
                return Err(bad());
            };
            let entry = StreamEntry {
                id: text(id).ok_or_else(bad)?,
                fields: reply::fields(fields).ok_or_else(bad)?,
            };
            let count = int(deliveries)
                .ok_or_else(bad)?
                .clamp(1, i64::from(u32::MAX)) as u32;
            out.push((entry, count));
        }
        Ok((out, pending))
    }

    /// New commands for this worker.
    async fn read_new(&self, count: usize, block: Duration) -> EngineResult<Vec<StreamEntry>> {
        self.read_group(
            Group::Commands,
            &self.settings.consumer_name,
            count,
            block,
            "reading new commands",
        )
        .await
    }

    /// Turns stream entries into received commands. An entry that does not decode cannot be
    /// handed to a worker; it is moved aside (kept in a hash, acknowledged, deleted) and logged,
    /// so it neither blocks the queue nor disappears silently.
    async fn to_received(
        &self,
        entries: Vec<(StreamEntry, u32)>,
    ) -> EngineResult<Vec<ReceivedCommand>> {
        let mut out = Vec::with_capacity(entries.len());
        for (entry, receive_count) in entries {
            match parse_command(&entry) {
                Ok(message) => out.push(ReceivedCommand {
                    receipt: entry.id,
                    message,
                    receive_count,
                }),
                Err(error) => {
                    tracing::error!(entry_id = %entry.id, %error, "command entry does not decode; set aside");
                    let kept = serde_json::json!({"fields": entry.fields_json(), "error": error})
                        .to_string();
                    let mut pipe = ::redis::pipe();
                    pipe.atomic()
                        .cmd("HSET")
                        .arg(&self.keys.malformed_commands)
                        .arg(&entry.id)
                        .arg(kept)
                        .cmd("XACK")
                        .arg(&self.keys.commands)
                        .arg(GROUP)
                        .arg(&entry.id)
                        .cmd("XDEL")
                        .arg(&self.keys.commands)
                        .arg(&entry.id);
                    let mut conn = self.conn.clone();
                    within(
                        "setting a command aside",
                        self.op_timeout,
                        pipe.query_async::<Value>(&mut conn),
                    )
                    .await
                    .map_err(|e| map_err("setting a command aside", e))?;
                }
            }
        }
        Ok(out)
    }

    /// Resets a delivery's idle time (see `scripts/touch.lua`).
    async fn touch(
        &self,
        command: &ReceivedCommand,
        idle: Duration,
        what: &str,
    ) -> EngineResult<()> {
        let mut invocation = self.scripts.touch.prepare_invoke();
        invocation
            .key(&self.keys.commands)
            .arg(GROUP)
            .arg(&self.settings.consumer_name)
            .arg(&command.receipt)
            .arg(command.receive_count)
            .arg(u64::try_from(idle.as_millis()).unwrap_or(u64::MAX));
        self.run_script(what, &invocation).await.map(|_| ())
    }

    fn status_record(order_id: &str, hash: &HashMap<String, String>) -> EngineResult<StatusRecord> {
        let field = |name: &str| {
            hash.get(name)
                .ok_or_else(|| corrupt(format!("order {order_id}: hash has no `{name}` field")))
        };
        Ok(StatusRecord {
            order_id: order_id.to_string(),
            customer_id: field("customerId")?.clone(),
            partner_id: hash.get("partnerId").cloned(),
            status: field("status")?
                .parse()
                .map_err(|e: String| corrupt(format!("order {order_id}: {e}")))?,
            version: field("version")?
                .parse()
                .map_err(|_| corrupt(format!("order {order_id}: version is not a number")))?,
            updated_at: field("updatedAt")?.clone(),
        })
    }
}

#[async_trait]
impl OrderStore for RedisEngine {
    async fn accept_order(
        &self,
        order: &Order,
        accepted_event: &OrderEvent,
        command: &NewCommand,
        idempotent: Option<&IdempotentResponse>,
    ) -> EngineResult<AcceptOutcome> {
        let order_json = serde_json::to_string(order).map_err(corrupt)?;
        let message = serde_json::to_string(command).map_err(corrupt)?;
        let history = history_body(accepted_event, None)?;
        let (idem_json, idem_ttl) = match idempotent {
            Some(r) => (done_record(r)?, millis(r.ttl)),
            None => (String::new(), 1),
        };
        let mut invocation = self.scripts.accept.prepare_invoke();
        invocation
            .key(self.keys.order(&order.order_id))
            .key(self.keys.history(&order.order_id))
            .key(&self.keys.events)
            .key(&self.keys.commands)
            .key(self.keys.cmdq(&command.order_id));
        if let Some(r) = idempotent {
            invocation.key(self.keys.idem(&r.key));
        }
        invocation
            .arg(order_json)
            .arg(&order.customer_id)
            .arg(if order.partner_id.is_some() { "1" } else { "0" })
            .arg(order.partner_id.as_deref().unwrap_or(""))
            .arg(accepted_event.status.as_str())
            .arg(accepted_event.version)
            .arg(&accepted_event.occurred_at)
            .arg(accepted_event.to_json())
            .arg(self.settings.event_retention.max(1))
            .arg(history)
            .arg(self.settings.history_limit.max(1))
            .arg(&command.message_id)
            .arg(&command.order_id)
            .arg(message)
            .arg(idem_json)
            .arg(idem_ttl);
        let reply = self
            .run_intake_script("accepting an order", &invocation)
            .await?;
        match text(&reply).as_deref() {
            Some("exists") => Ok(AcceptOutcome::AlreadyExists),
            Some(id) => Ok(AcceptOutcome::Accepted {
                event_id: parse_event_id(id)?,
            }),
            None => Err(corrupt("accept script returned an unexpected reply")),
        }
    }

    async fn enqueue_command(
        &self,
        command: &NewCommand,
        idempotent: Option<&IdempotentResponse>,
    ) -> EngineResult<EnqueueOutcome> {
        let message = serde_json::to_string(command).map_err(corrupt)?;
        let (idem_json, idem_ttl) = match idempotent {
            Some(r) => (done_record(r)?, millis(r.ttl)),
            None => (String::new(), 1),
        };
        let mut invocation = self.scripts.enqueue.prepare_invoke();
        invocation
            .key(self.keys.order(&command.order_id))
            .key(&self.keys.commands)
            .key(self.keys.cmdq(&command.order_id));
        if let Some(r) = idempotent {
            invocation.key(self.keys.idem(&r.key));
        }
        invocation
            .arg(&command.message_id)
            .arg(&command.order_id)
            .arg(message)
            .arg(idem_json)
            .arg(idem_ttl);
        let reply = self
            .run_intake_script("queueing a command", &invocation)
            .await?;
        match text(&reply).as_deref() {
            Some("ok") => Ok(EnqueueOutcome::Enqueued),
            Some("unknown") => Ok(EnqueueOutcome::UnknownOrder),
            _ => Err(corrupt("enqueue script returned an unexpected reply")),
        }
    }

    async fn order_status(&self, order_id: &str) -> EngineResult<Option<StatusRecord>> {
        let hash: HashMap<String, String> = self
            .run(
                "reading an order status",
                ::redis::cmd("HGETALL").arg(self.keys.order(order_id)),
            )
            .await?;
        if hash.is_empty() {
            return Ok(None);
        }
        Self::status_record(order_id, &hash).map(Some)
    }

    async fn order(&self, order_id: &str) -> EngineResult<Option<OrderRecord>> {
        // One MULTI/EXEC: the status and the history come from the same moment.
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .cmd("HGETALL")
            .arg(self.keys.order(order_id))
            .cmd("LRANGE")
            .arg(self.keys.history(order_id))
            .arg(0)
            .arg(-1);
        let what = "reading an order";
        let mut conn = self.conn.clone();
        let (hash, history): (HashMap<String, String>, Vec<String>) =
            within(what, self.op_timeout, pipe.query_async(&mut conn))
                .await
                .map_err(|e| map_err(what, e))?;
        if hash.is_empty() {
            return Ok(None);
        }
        let status = Self::status_record(order_id, &hash)?;
        let order_json = hash
            .get("order")
            .ok_or_else(|| corrupt(format!("order {order_id}: hash has no `order` field")))?;
        let order: Order = serde_json::from_str(order_json)
            .map_err(|e| corrupt(format!("order {order_id}: `order` does not decode: {e}")))?;
        let history = history
            .iter()
            .map(|h| serde_json::from_str::<HistoryEntry>(h))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                corrupt(format!(
                    "order {order_id}: history entry does not decode: {e}"
                ))
            })?;
        Ok(Some(OrderRecord {
            order,
            status,
            history,
        }))
    }

    async fn apply(
        &self,
        command: &ReceivedCommand,
        change: Option<&StatusChange>,
    ) -> EngineResult<ApplyOutcome> {
        let message = &command.message;
        let order_id = &message.order_id;
        let mut invocation = self.scripts.apply.prepare_invoke();
        invocation
            .key(self.keys.order(order_id))
            .key(self.keys.history(order_id))
            .key(&self.keys.events)
            .key(&self.keys.commands)
            .key(self.keys.cmdq(order_id))
            .arg(GROUP)
            .arg(&command.receipt)
            .arg(&message.message_id);
        match change {
            Some(change) => {
                let event = &change.event;
                invocation
                    .arg("1")
                    .arg(change.expected_version)
                    .arg(event.status.as_str())
                    .arg(event.version)
                    .arg(&event.occurred_at)
                    .arg(event.to_json())
                    .arg(self.settings.event_retention.max(1))
                    .arg(history_body(event, change.reason.as_deref())?)
                    .arg(self.settings.history_limit.max(1));
            }
            None => {
                invocation.arg("0");
            }
        }
        let reply = self.run_script("applying a command", &invocation).await?;
        let bad = || corrupt("apply script returned an unexpected reply");
        let parts = items(&reply).ok_or_else(bad)?;
        let outcome = parts.first().and_then(text).ok_or_else(bad)?;
        match (outcome.as_str(), parts.get(1)) {
            ("done", _) => Ok(ApplyOutcome::AlreadyDone),
            ("blocked", _) => Ok(ApplyOutcome::Blocked),
            ("stale", Some(version)) => Ok(ApplyOutcome::Stale {
                current_version: int(version)
                    .and_then(|v| u64::try_from(v).ok())
                    .ok_or_else(|| corrupt(format!("order {order_id}: version is not a number")))?,
            }),
            ("missing", _) => Err(corrupt(format!(
                "command {} for missing order {order_id}",
                message.message_id
            ))),
            ("applied", Some(id)) => {
                let id = text(id).ok_or_else(bad)?;
                let event_id = if id.is_empty() {
                    None
                } else {
                    Some(parse_event_id(&id)?)
                };
                Ok(ApplyOutcome::Applied { event_id })
            }
            _ => Err(bad()),
        }
    }
}

#[async_trait]
impl CommandQueue for RedisEngine {
    async fn receive_batch(
        &self,
        max: usize,
        wait: Duration,
    ) -> EngineResult<Vec<ReceivedCommand>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = tokio::time::Instant::now() + wait;
        // While commands are in flight, one of them may expire during a long block, which only
        // a claim notices: block in slices then. With nothing pending, block the whole wait.
        let slice = (self.settings.visibility_timeout / 4).max(Duration::from_millis(50));
        loop {
            let now_ms = self.started.elapsed().as_millis() as u64;
            let (expired, pending) = if now_ms >= self.next_claim_ms.load(Ordering::Relaxed) {
                self.next_claim_ms
                    .store(now_ms + slice.as_millis() as u64, Ordering::Relaxed);
                self.claim_expired(max).await?
            } else {
                // Not looked: assume work may be in flight, so block in slices.
                (Vec::new(), 1)
            };
            let mut batch = self.to_received(expired).await?;
            if batch.len() >= max {
                return Ok(batch);
            }
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            // Already holding work: take what is new without waiting for more.
            let block = if !batch.is_empty() {
                Duration::ZERO
            } else if pending > 0 {
                remaining.min(slice)
            } else {
                remaining
            };
            let fresh = self.read_new(max - batch.len(), block).await?;
            batch.extend(
                self.to_received(fresh.into_iter().map(|e| (e, 1)).collect())
                    .await?,
            );
            if !batch.is_empty() || tokio::time::Instant::now() >= deadline || block.is_zero() {
                return Ok(batch);
            }
        }
    }

    async fn extend_visibility(&self, command: &ReceivedCommand) -> EngineResult<()> {
        self.touch(command, Duration::ZERO, "extending visibility")
            .await
    }

    async fn release(&self, command: &ReceivedCommand) -> EngineResult<()> {
        // Idle as long as the visibility timeout: the next claim takes it, and the next
        // receive claims.
        self.touch(
            command,
            self.settings.visibility_timeout,
            "releasing a command",
        )
        .await?;
        self.next_claim_ms.store(0, Ordering::Relaxed);
        Ok(())
    }

    async fn queue_stats(&self) -> EngineResult<QueueStats> {
        let mut invocation = self.scripts.stats.prepare_invoke();
        invocation
            .key(&self.keys.commands)
            .key(&self.keys.dlq)
            .arg(GROUP)
            .arg(millis(self.settings.visibility_timeout))
            .arg(STATS_EXPIRED_SCAN);
        let reply = self.run_script("reading queue stats", &invocation).await?;
        let bad = || corrupt("stats script returned an unexpected reply");
        let figures = items(&reply)
            .ok_or_else(bad)?
            .iter()
            .map(|v| int(v).map(|n| n.max(0) as u64))
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(bad)?;
        let [length, pending, expired, dead] = figures[..] else {
            return Err(bad());
        };
        let in_flight = pending.saturating_sub(expired);
        Ok(QueueStats {
            visible: length.saturating_sub(in_flight),
            in_flight,
            dead_letters: dead,
        })
    }

    async fn dead_letters(&self, limit: usize) -> EngineResult<Vec<DeadLetter>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let reply: Value = self
            .run(
                "reading dead letters",
                ::redis::cmd("XRANGE")
                    .arg(&self.keys.dlq)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit),
            )
            .await?;
        let mut out = Vec::new();
        for entry in reply::range_entries(&reply)? {
            match entry
                .text("deadLetter")
                .map(serde_json::from_str::<DeadLetter>)
            {
                Some(Ok(dead)) => out.push(dead),
                // One unreadable entry must not hide the others.
                Some(Err(e)) => {
                    tracing::warn!(entry_id = %entry.id, error = %e, "dead letter does not decode")
                }
                None => {
                    tracing::warn!(entry_id = %entry.id, "dead letter has no `deadLetter` field")
                }
            }
        }
        Ok(out)
    }

    async fn redrive(&self, limit: usize) -> EngineResult<usize> {
        if limit == 0 {
            return Ok(0);
        }
        let mut invocation = self.scripts.redrive.prepare_invoke();
        invocation
            .key(&self.keys.dlq)
            .key(&self.keys.commands)
            .arg(limit)
            .arg(&self.keys.cmdq_prefix);
        let reply = self
            .run_script("redriving dead letters", &invocation)
            .await?;
        int(&reply)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| corrupt("redrive script returned an unexpected reply"))
    }
}

#[async_trait]
impl EventLog for RedisEngine {
    async fn read_events(
        &self,
        after: EventId,
        max: usize,
        wait: Duration,
    ) -> EngineResult<Vec<LogEntry>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut cmd = ::redis::cmd("XREAD");
        cmd.arg("COUNT").arg(max);
        let block_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        if block_ms > 0 {
            cmd.arg("BLOCK").arg(block_ms);
        }
        cmd.arg("STREAMS")
            .arg(&self.keys.events)
            .arg(after.to_string());
        let what = "reading events";
        let reply: Value = if block_ms > 0 {
            self.blocking
                .query(what, &cmd, wait, self.op_timeout)
                .await
                .map_err(|e| map_err(what, e))?
        } else {
            self.run(what, &cmd).await?
        };
        Ok(reply::read_entries(&reply)?
            .into_iter()
            .map(log_entry)
            .collect())
    }

    async fn append_raw_event(&self, raw: &str) -> EngineResult<EventId> {
        let id: String = self
            .run(
                "appending an event",
                ::redis::cmd("XADD")
                    .arg(&self.keys.events)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(self.settings.event_retention.max(1))
                    .arg("*")
                    .arg("event")
                    .arg(raw),
            )
            .await?;
        parse_event_id(&id)
    }

    async fn last_event_id(&self) -> EngineResult<EventId> {
        let reply: Value = self
            .run(
                "reading the last event id",
                ::redis::cmd("XREVRANGE")
                    .arg(&self.keys.events)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1),
            )
            .await?;
        match reply::range_entries(&reply)?.first() {
            Some(entry) => parse_event_id(&entry.id),
            None => Ok(EventId::ZERO),
        }
    }

    async fn first_event_id(&self) -> EngineResult<Option<EventId>> {
        let reply: Value = self
            .run(
                "reading the first event id",
                ::redis::cmd("XRANGE")
                    .arg(&self.keys.events)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1),
            )
            .await?;
        reply::range_entries(&reply)?
            .first()
            .map(|entry| parse_event_id(&entry.id))
            .transpose()
    }

    async fn set_aside(&self, entry: &MalformedEntry) -> EngineResult<()> {
        // Validate the id: the listing sorts by it.
        parse_event_id(&entry.entry_id)?;
        let json = serde_json::to_string(entry).map_err(corrupt)?;
        let _: Value = self
            .run(
                "setting a malformed event aside",
                ::redis::cmd("HSETNX")
                    .arg(&self.keys.malformed_events)
                    .arg(&entry.entry_id)
                    .arg(json),
            )
            .await?;
        Ok(())
    }

    async fn malformed_entries(&self, limit: usize) -> EngineResult<Vec<MalformedEntry>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // HSCAN in pages, keeping only the `limit` oldest: memory stays bounded by `limit`
        // however many entries were set aside.
        let mut oldest: BTreeMap<EventId, MalformedEntry> = BTreeMap::new();
        let mut cursor = "0".to_string();
        loop {
            let (next, pairs): (String, Vec<(String, String)>) = self
                .run(
                    "listing malformed events",
                    ::redis::cmd("HSCAN")
                        .arg(&self.keys.malformed_events)
                        .arg(&cursor)
                        .arg("COUNT")
                        .arg(SCAN_PAGE),
                )
                .await?;
            for (id, json) in pairs {
                let (Ok(key), Ok(entry)) = (
                    id.parse::<EventId>(),
                    serde_json::from_str::<MalformedEntry>(&json),
                ) else {
                    tracing::warn!(entry_id = %id, "malformed-entry record does not decode");
                    continue;
                };
                oldest.insert(key, entry);
                if oldest.len() > limit {
                    oldest.pop_last();
                }
            }
            if next == "0" {
                break;
            }
            cursor = next;
        }
        Ok(oldest.into_values().collect())
    }
}

/// Deletes an idempotency claim only if the record is still exactly that claim (its token).
const RELEASE_LOST_CLAIM: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     return redis.call('DEL', KEYS[1]) end return 0";

impl RedisEngine {
    /// A claim whose reply never came (a timeout: Redis paused or busy) may still be applied
    /// when Redis gets to it, leaving an in-flight record that no request owns: every retry
    /// with the key would be refused (409) until the record expires. So the release is sent
    /// at once, right behind the SET on the same connection (Redis runs one connection's
    /// commands in order), without waiting for its reply; it deletes only this claim, never a
    /// retry's. A plain EVAL, not EVALSHA: a restarted Redis has no scripts loaded, and the
    /// NOSCRIPT fallback would need a reply that may never come.
    fn release_lost_claim(&self, redis_key: &str, claim: &str) {
        let mut conn = self.conn.clone();
        let limit = self.op_timeout;
        let release = ::redis::cmd("EVAL")
            .arg(RELEASE_LOST_CLAIM)
            .arg(1)
            .arg(redis_key)
            .arg(claim)
            .to_owned();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(limit, release.query_async::<Value>(&mut conn)).await;
        });
    }
}

#[async_trait]
impl IdempotencyStore for RedisEngine {
    async fn begin_idempotent(
        &self,
        key: &str,
        fingerprint: &str,
        in_flight_ttl: Duration,
    ) -> EngineResult<IdempotencyBegin> {
        let redis_key = self.keys.idem(key);
        let claim = serde_json::to_string(&IdemRecord::InFlight {
            fingerprint: fingerprint.to_string(),
            token: uuid::Uuid::new_v4().simple().to_string(),
        })
        .map_err(corrupt)?;
        // Two rounds: the record found by a failed SET NX may expire before the GET.
        for _ in 0..2 {
            let set: Value = match self
                .run(
                    "claiming an idempotency key",
                    ::redis::cmd("SET")
                        .arg(&redis_key)
                        .arg(&claim)
                        .arg("NX")
                        .arg("PX")
                        .arg(millis(in_flight_ttl)),
                )
                .await
            {
                Ok(set) => set,
                Err(e) => {
                    self.release_lost_claim(&redis_key, &claim);
                    return Err(e);
                }
            };
            if !matches!(set, Value::Nil) {
                return Ok(IdempotencyBegin::Started);
            }
            let existing: Option<String> = self
                .run(
                    "reading an idempotency key",
                    ::redis::cmd("GET").arg(&redis_key),
                )
                .await?;
            let Some(existing) = existing else {
                continue;
            };
            let record: IdemRecord = serde_json::from_str(&existing).map_err(|e| {
                corrupt(format!(
                    "idempotency record for `{key}` does not decode: {e}"
                ))
            })?;
            return Ok(match record {
                IdemRecord::InFlight { fingerprint, .. } => {
                    IdempotencyBegin::InFlight { fingerprint }
                }
                IdemRecord::Done {
                    key,
                    fingerprint,
                    status,
                    body,
                    ttl_ms,
                } => IdempotencyBegin::Completed(IdempotentResponse {
                    key,
                    fingerprint,
                    status,
                    body,
                    ttl: Duration::from_millis(ttl_ms),
                }),
            });
        }
        Err(EngineError::Unavailable(format!(
            "idempotency key `{key}` kept changing while it was claimed; try again"
        )))
    }

    async fn abandon_idempotent(&self, key: &str) -> EngineResult<()> {
        let mut invocation = self.scripts.abandon.prepare_invoke();
        invocation.key(self.keys.idem(key));
        self.run_script("abandoning an idempotency key", &invocation)
            .await
            .map(|_| ())
    }
}

#[async_trait]
impl Engine for RedisEngine {
    fn kind(&self) -> &'static str {
        "redis"
    }

    /// Pings over both connections, so a readiness probe also re-establishes the intake one.
    async fn ping(&self) -> EngineResult<()> {
        let _: Value = self.run("PING", &::redis::cmd("PING")).await?;
        let mut intake = self.intake.clone();
        let _: Value = within(
            "PING (intake)",
            self.op_timeout,
            ::redis::cmd("PING").query_async(&mut intake),
        )
        .await
        .map_err(|e| map_err("PING (intake)", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_hash_tag() {
        let keys = Keys::new(&EngineConfig::default());
        assert_eq!(keys.order("o1"), "herald:{p0}:order:o1");
        assert_eq!(keys.history("o1"), "herald:{p0}:history:o1");
        assert_eq!(keys.cmdq("o1"), "herald:{p0}:cmdq:o1");
        assert_eq!(keys.idem("admin:k"), "herald:{p0}:idem:admin:k");
        assert_eq!(keys.events, "herald:{p0}:events");
        assert_eq!(keys.commands, "herald:{p0}:commands");
        assert_eq!(keys.dlq, "herald:{p0}:dlq");
        assert_eq!(keys.malformed_events, "herald:{p0}:events:malformed");
        assert_eq!(keys.webhook_endpoints, "herald:{p0}:webhooks:endpoints");
        assert_eq!(keys.webhook_schedule, "herald:{p0}:webhooks:schedule");
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

    #[test]
    fn history_body_splices_into_a_history_entry() {
        let event = OrderEvent {
            event_type: "order.confirmed".into(),
            order_id: "o1".into(),
            customer_id: "c1".into(),
            partner_id: None,
            status: OrderStatus::Confirmed,
            previous_status: Some(OrderStatus::Accepted),
            version: 2,
            occurred_at: "2026-01-01T00:00:00.000Z".into(),
            data: None,
        };
        let body = history_body(&event, Some("because")).unwrap();
        // What the scripts do with the event id Redis assigned.
        let spliced = format!("{{\"eventId\":\"5-1\",{}", &body[1..]);
        let entry: HistoryEntry = serde_json::from_str(&spliced).unwrap();
        assert_eq!(
            entry,
            HistoryEntry {
                event_id: "5-1".into(),
                status: OrderStatus::Confirmed,
                previous_status: Some(OrderStatus::Accepted),
                version: 2,
                occurred_at: "2026-01-01T00:00:00.000Z".into(),
                reason: Some("because".into()),
            }
        );
    }

    #[test]
    fn idempotency_records_round_trip() {
        let response = IdempotentResponse {
            key: "admin:k".into(),
            fingerprint: "fp".into(),
            status: 202,
            body: serde_json::json!({"a": 1}),
            ttl: Duration::from_secs(5),
        };
        let stored = done_record(&response).unwrap();
        assert!(stored.starts_with("{\"state\":\"done\""), "{stored}");
        let IdemRecord::Done { ttl_ms, body, .. } = serde_json::from_str(&stored).unwrap() else {
            panic!("not done: {stored}");
        };
        assert_eq!((ttl_ms, body), (5000, response.body));
        let inflight = serde_json::to_string(&IdemRecord::InFlight {
            fingerprint: "fp".into(),
            token: String::new(),
        })
        .unwrap();
        assert_eq!(inflight, r#"{"state":"inflight","fingerprint":"fp"}"#);
    }

    #[test]
    fn log_entries_never_fail() {
        let entry = |fields: Vec<(&[u8], &[u8])>| StreamEntry {
            id: "1-0".into(),
            fields: fields
                .into_iter()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect(),
        };
        let LogEntry::Malformed(m) = log_entry(entry(vec![(b"other", b"x")])) else {
            panic!("no event field must be malformed");
        };
        assert_eq!(m.raw, r#"{"other":"x"}"#);
        let LogEntry::Malformed(m) = log_entry(entry(vec![(b"event", &[0xc3, 0x28])])) else {
            panic!("binary must be malformed");
        };
        assert!(m.error.contains("UTF-8"));
        let LogEntry::Malformed(m) = log_entry(entry(vec![(b"event", b"{oops")])) else {
            panic!("bad JSON must be malformed");
        };
        assert_eq!(m.raw, "{oops");
    }
}

#[cfg(test)]
mod integration;
