//! Redis-specific behaviour the cross-engine conformance suite cannot express: losing the
//! consumer group, a Redis restart (scripts and group gone), Redis being down, entries written
//! by other programs, blocking reads next to ordinary commands.
//!
//! Each test starts its own `redis-server` on an ephemeral loopback port (no persistence, unless
//! the test is about it) and kills it when done; the shared Redis on 6379 is never touched.

use super::reply::{items, text};
use super::*;
use crate::engine::fixtures::{new_command, order};
use crate::engine::*;
use crate::model::{LogCursor, Order, OrderEvent, OrderStatus, now_rfc3339};
use std::net::TcpListener;
use std::process::{Child, Command as Process, Stdio};
use std::sync::Arc;
use tokio::time::Instant;

struct Server {
    port: u16,
    child: Option<Child>,
    /// With an append-only file (fsync on every write) in this directory, else no persistence.
    aof: Option<tempfile::TempDir>,
}

impl Server {
    fn start() -> Server {
        Server::start_with(None)
    }

    /// A server that keeps its data in an AOF across [`Server::restart`].
    fn start_aof() -> Server {
        Server::start_with(Some(tempfile::tempdir().expect("temp dir")))
    }

    fn start_with(aof: Option<tempfile::TempDir>) -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut server = Server {
            port,
            child: None,
            aof,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut process = Process::new("redis-server");
        process
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""]);
        match &self.aof {
            Some(dir) => process
                .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                .arg(dir.path()),
            None => process.args(["--appendonly", "no"]),
        };
        let child = process
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(mut c) = self.client().get_connection()
                && ::redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn client(&self) -> ::redis::Client {
        ::redis::Client::open(self.url()).expect("client")
    }

    fn raw(&self, args: &[&[u8]]) -> Value {
        let mut conn = self.client().get_connection().expect("connection");
        let mut cmd = ::redis::cmd(std::str::from_utf8(args[0]).expect("command name"));
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut conn).expect("raw command")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn config(server: &Server, op_timeout: Duration) -> EngineConfig {
    EngineConfig {
        kind: crate::config::EngineKind::Redis,
        redis_url: server.url(),
        key_prefix: "t:".into(),
        operation_timeout: op_timeout,
        ..EngineConfig::default()
    }
}

fn settings(consumer: &str) -> EngineSettings {
    EngineSettings {
        visibility_timeout: Duration::from_millis(300),
        max_receives: 2,
        history_limit: 10,
        step_history_limit: 100,
        event_retention: 1000,
        consumer_name: consumer.into(),
    }
}

async fn engine(server: &Server, consumer: &str) -> Arc<RedisEngine> {
    Arc::new(
        RedisEngine::connect(&config(server, Duration::from_secs(2)), settings(consumer))
            .await
            .expect("engine"),
    )
}

fn event(
    o: &Order,
    status: OrderStatus,
    previous: Option<OrderStatus>,
    version: u64,
) -> OrderEvent {
    OrderEvent {
        event_type: status.event_type(),
        order_id: o.order_id.clone(),
        customer_id: o.customer_id.clone(),
        partner_id: None,
        status,
        previous_status: previous,
        version,
        occurred_at: now_rfc3339(),
        data: None,
    }
}

async fn accept(e: &RedisEngine, id: &str) -> (Order, NewCommand) {
    let o = order(id);
    let cmd = new_command(
        id,
        Command::ProcessOrder {
            order: Box::new(o.clone()),
        },
    );
    let outcome = e
        .accept_order(&o, &event(&o, OrderStatus::Accepted, None, 1), &cmd, None)
        .await
        .expect("accept");
    assert!(matches!(outcome, AcceptOutcome::Accepted { .. }));
    (o, cmd)
}

fn change(o: &Order, from: OrderStatus, to: OrderStatus, expected: u64) -> StatusChange {
    StatusChange {
        expected_version: expected,
        event: event(o, to, Some(from), expected + 1),
        reason: Some("test".into()),
        steps: Default::default(),
    }
}

#[tokio::test]
async fn whole_flow_with_every_apply_outcome() {
    let server = Server::start();
    let e = engine(&server, "c1").await;
    let (o, first) = accept(&e, "o1").await;
    let cancel = new_command(
        "o1",
        Command::Transition {
            status: OrderStatus::Cancelled,
            reason: None,
        },
    );
    assert_eq!(
        e.enqueue_command(&cancel, None).await.unwrap(),
        EnqueueOutcome::Enqueued
    );
    let batch = e
        .receive_batch(10, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(batch.len(), 2);
    assert_eq!((&batch[0].message, &batch[1].message), (&first, &cancel));
    let confirm = change(&o, OrderStatus::Accepted, OrderStatus::Confirmed, 1);
    let cancelled = change(&o, OrderStatus::Confirmed, OrderStatus::Cancelled, 2);
    assert_eq!(
        e.apply(&batch[1], Some(&cancelled)).await.unwrap(),
        ApplyOutcome::Blocked
    );
    let stale = change(&o, OrderStatus::Accepted, OrderStatus::Confirmed, 4);
    assert_eq!(
        e.apply(&batch[0], Some(&stale)).await.unwrap(),
        ApplyOutcome::Stale { current_version: 1 }
    );
    let ApplyOutcome::Applied {
        event_id: Some(confirmed_id),
    } = e.apply(&batch[0], Some(&confirm)).await.unwrap()
    else {
        panic!("first command must apply");
    };
    assert_eq!(
        e.apply(&batch[0], Some(&confirm)).await.unwrap(),
        ApplyOutcome::AlreadyDone
    );
    assert!(matches!(
        e.apply(&batch[1], Some(&cancelled)).await.unwrap(),
        ApplyOutcome::Applied { event_id: Some(_) }
    ));
    let record = e.order("o1").await.unwrap().unwrap();
    assert_eq!(record.order, o);
    assert_eq!(
        (record.status.status, record.status.version),
        (OrderStatus::Cancelled, 3)
    );
    assert_eq!(record.status.partner_id, None);
    assert_eq!(record.history[1].event_id, confirmed_id.to_string());
    assert_eq!(record.history[1].reason.as_deref(), Some("test"));
    let entries = e
        .read_events(&LogCursor::start(e.partitions()), 10, Duration::ZERO)
        .await
        .unwrap();
    let statuses: Vec<_> = entries
        .iter()
        .map(|x| match x {
            LogEntry::Event(ev) => ev.event.status,
            LogEntry::Malformed(m) => panic!("malformed {m:?}"),
        })
        .collect();
    assert_eq!(
        statuses,
        [
            OrderStatus::Accepted,
            OrderStatus::Confirmed,
            OrderStatus::Cancelled
        ]
    );
    // Everything acknowledged and deleted; the FIFO gate is gone with its last command.
    let stats = e.queue_stats().await.unwrap();
    assert_eq!(stats, QueueStats::default());
    assert_eq!(server.raw(&[b"EXISTS", b"t:{p0}:cmdq:o1"]), Value::Int(0));
    assert_eq!(server.raw(&[b"XLEN", b"t:{p0}:commands"]), Value::Int(0));
}

#[tokio::test]
async fn redelivery_dead_letter_and_redrive() {
    let server = Server::start();
    let e = engine(&server, "c1").await;
    let (_, cmd) = accept(&e, "o1").await;
    let first = e.receive_batch(1, Duration::from_secs(1)).await.unwrap();
    assert_eq!(first[0].receive_count, 1);
    // Expires while the receiver blocks: a blocked receive still notices it.
    let started = Instant::now();
    let again = e.receive_batch(1, Duration::from_secs(3)).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!((again[0].receive_count, &again[0].message), (2, &cmd));
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(e.receive_batch(1, Duration::ZERO).await.unwrap().is_empty());
    let dead = e.dead_letters(10).await.unwrap();
    assert_eq!((dead.len(), dead[0].receive_count), (1, 2));
    assert_eq!(e.queue_stats().await.unwrap().dead_letters, 1);
    assert_eq!(e.redrive(10).await.unwrap(), 1);
    let back = e.receive_batch(1, Duration::from_secs(1)).await.unwrap();
    assert_eq!((back[0].receive_count, &back[0].message), (1, &cmd));
}

#[tokio::test]
async fn consumer_group_is_recreated_after_flushall() {
    let server = Server::start();
    let e = engine(&server, "c1").await;
    accept(&e, "o1").await;
    assert_eq!(server.raw(&[b"FLUSHALL"]), Value::Okay);
    // The first receive finds the group gone, recreates it, and does not fail.
    let got = e
        .receive_batch(5, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(got.is_empty());
    let (_, cmd) = accept(&e, "o2").await;
    let got = e.receive_batch(5, Duration::from_secs(1)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message, cmd);
    // Group deleted while the stream stays: the new group starts from the beginning, so the
    // unfinished command is delivered again (at least once, never lost).
    server.raw(&[b"XGROUP", b"DESTROY", b"t:{p0}:commands", b"workers"]);
    let again = e
        .receive_batch(5, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((&again[0].message, again[0].receive_count), (&cmd, 1));
}

#[tokio::test]
async fn scripts_and_group_come_back_after_a_restart() {
    let mut server = Server::start();
    let e = engine(&server, "c1").await;
    accept(&e, "o1").await;
    // Leave idle blocking connections behind: they die with the server.
    e.receive_batch(1, Duration::from_millis(10)).await.unwrap();
    e.read_events(
        &LogCursor::start(e.partitions()),
        1,
        Duration::from_millis(10),
    )
    .await
    .unwrap();
    server.restart();
    // The shared connection reconnects; a call or two may fail while it does.
    let deadline = Instant::now() + Duration::from_secs(5);
    while e.ping().await.is_err() {
        assert!(Instant::now() < deadline, "engine did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Blocking reads replace their dead connections without failing.
    let read = e
        .read_events(
            &LogCursor::start(e.partitions()),
            1,
            Duration::from_millis(10),
        )
        .await;
    assert!(read.unwrap().is_empty());
    let (_, cmd) = accept(&e, "o1").await; // the data is gone: NOSCRIPT reloads the script
    let got = e.receive_batch(5, Duration::from_secs(1)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message, cmd);
}

#[tokio::test]
async fn redis_down_means_unavailable_promptly_then_recovery() {
    let mut server = Server::start();
    let op = Duration::from_millis(500);
    let e = RedisEngine::connect(&config(&server, op), settings("c1"))
        .await
        .unwrap();
    accept(&e, "o1").await;
    server.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let status = e.order_status("o1").await;
        assert!(
            matches!(status, Err(EngineError::Unavailable(_))),
            "{status:?}"
        );
        let received = e.receive_batch(5, Duration::from_secs(1)).await;
        assert!(
            matches!(received, Err(EngineError::Unavailable(_))),
            "{received:?}"
        );
        let read = e
            .read_events(&LogCursor::start(e.partitions()), 5, Duration::from_secs(1))
            .await;
        assert!(matches!(read, Err(EngineError::Unavailable(_))), "{read:?}");
        assert!(started.elapsed() < op * 8, "took {:?}", started.elapsed());
    }
    server.spawn();
    let deadline = Instant::now() + Duration::from_secs(5);
    while e.ping().await.is_err() {
        assert!(Instant::now() < deadline, "engine did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(e.receive_batch(5, Duration::from_millis(50)).await.is_ok());
    assert!(
        e.read_events(
            &LogCursor::start(e.partitions()),
            5,
            Duration::from_millis(50)
        )
        .await
        .is_ok()
    );
}

#[tokio::test]
async fn connect_failure_names_the_url_without_password() {
    let server = Server::start();
    let port = server.port;
    drop(server);
    let config = EngineConfig {
        redis_url: format!("redis://user:hunter2@127.0.0.1:{port}"),
        operation_timeout: Duration::from_millis(300),
        ..EngineConfig::default()
    };
    let Err(err) = RedisEngine::connect(&config, settings("c1")).await else {
        panic!("connect must fail");
    };
    let text = format!("{err:#}");
    assert!(
        text.contains(&format!("redis://user:***@127.0.0.1:{port}")),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn foreign_entries_are_reported_or_set_aside() {
    let server = Server::start();
    let e = engine(&server, "c1").await;
    let events = b"t:{p0}:events".as_slice();
    server.raw(&[b"XADD", events, b"*", b"other", b"x"]);
    server.raw(&[b"XADD", events, b"*", b"event", &[0xff, 0xfe]]);
    let entries = e
        .read_events(&LogCursor::start(e.partitions()), 10, Duration::ZERO)
        .await
        .unwrap();
    let [LogEntry::Malformed(no_field), LogEntry::Malformed(binary)] = &entries[..] else {
        panic!("{entries:?}");
    };
    assert_eq!(no_field.raw, r#"{"other":"x"}"#);
    assert_eq!(binary.raw, "\u{fffd}\u{fffd}");
    // A command entry that does not decode is set aside, not handed out or left blocking.
    server.raw(&[b"XADD", b"t:{p0}:commands", b"*", b"message", b"{nope"]);
    let (_, cmd) = accept(&e, "o1").await;
    let got = e
        .receive_batch(10, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message, cmd);
    assert_eq!(
        server.raw(&[b"HLEN", b"t:{p0}:commands:malformed"]),
        Value::Int(1)
    );
    assert_eq!(server.raw(&[b"XLEN", b"t:{p0}:commands"]), Value::Int(1));
}

#[tokio::test]
async fn blocking_reads_do_not_stall_other_commands() {
    let server = Server::start();
    let e = engine(&server, "c1").await;
    accept(&e, "o1").await;
    e.receive_batch(1, Duration::ZERO).await.unwrap();
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let e = e.clone();
            tokio::spawn(async move {
                let last = e.log_end().await.unwrap();
                e.read_events(&last, 10, Duration::from_secs(2))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let receiver = {
        let e = e.clone();
        tokio::spawn(async move { e.receive_batch(10, Duration::from_secs(2)).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    for _ in 0..20 {
        e.order_status("o1").await.unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    for r in readers {
        assert!(r.await.unwrap().is_empty());
    }
    receiver.await.unwrap();
}

#[tokio::test]
async fn a_late_extend_does_not_take_back_work_another_consumer_claimed() {
    let server = Server::start();
    let e1 = engine(&server, "c1").await;
    let e2 = engine(&server, "c2").await;
    accept(&e1, "o1").await;
    let mine = e1.receive_batch(1, Duration::ZERO).await.unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    let theirs = e2.receive_batch(1, Duration::ZERO).await.unwrap();
    assert_eq!(theirs[0].receipt, mine[0].receipt);
    e1.extend_visibility(&mine[0]).await.unwrap();
    e1.release(&mine[0]).await.unwrap();
    let pending = server.raw(&[
        b"XPENDING",
        b"t:{p0}:commands",
        b"workers",
        b"-",
        b"+",
        b"10",
    ]);
    let owner = items(&pending)
        .and_then(|p| p.first())
        .and_then(items)
        .and_then(|e| e.get(1))
        .and_then(text);
    assert_eq!(owner.as_deref(), Some("c2"));
    // Still hidden: c1's release did not hand it out again.
    assert!(
        e1.receive_batch(1, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Clients connected to the server right now (the counting connection included).
fn connected_clients(server: &Server) -> usize {
    let list = text(&server.raw(&[b"CLIENT", b"LIST"])).unwrap_or_default();
    list.lines().filter(|l| !l.trim().is_empty()).count()
}

#[tokio::test]
async fn blocking_reads_never_open_more_connections_than_the_bound() {
    const BOUND: usize = 2;
    let server = Server::start();
    let config = EngineConfig {
        max_blocking_connections: BOUND,
        ..config(&server, Duration::from_millis(300))
    };
    let e = Arc::new(
        RedisEngine::connect(&config, settings("c1"))
            .await
            .expect("engine"),
    );
    let before = connected_clients(&server);
    let last = e.log_end().await.unwrap();
    let readers: Vec<_> = (0..BOUND * 4)
        .map(|_| {
            let (e, last) = (e.clone(), last.clone());
            tokio::spawn(async move { e.read_events(&last, 10, Duration::from_millis(400)).await })
        })
        .collect();
    let mut most = 0;
    let mut most_in_use = 0;
    let deadline = Instant::now() + Duration::from_millis(1_500);
    while Instant::now() < deadline {
        most = most.max(connected_clients(&server));
        most_in_use = most_in_use.max(e.blocking_connections_in_use().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        most <= before + BOUND,
        "{most} clients with {before} before the reads and a bound of {BOUND}"
    );
    assert_eq!(most_in_use, BOUND);
    let (mut read, mut refused) = (0, 0);
    for r in readers {
        match r.await.unwrap() {
            Ok(entries) => {
                assert!(entries.is_empty());
                read += 1;
            }
            Err(EngineError::Unavailable(why)) => {
                assert!(why.contains("max_blocking_connections"), "{why}");
                refused += 1;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    // The excess waited for a free connection (and some got one) or was refused cleanly.
    assert!(read >= BOUND, "{read} read, {refused} refused");
    assert_eq!(read + refused, BOUND * 4);
    assert_eq!(e.blocking_connections_in_use(), Some(0));
}

/// Writes an order the way the previous layout did (history in its own list, the processOrder
/// in the stream and the order's cmdq list), so the tests below can check the current scripts
/// on data an earlier Herald left behind.
fn write_legacy_order(server: &Server, o: &Order, accepted: &OrderEvent, cmd: &NewCommand) {
    let order_json = serde_json::to_string(o).unwrap();
    let entry = format!(
        r#"{{"eventId":"1-1","status":"accepted","version":1,"occurredAt":"{}"}}"#,
        accepted.occurred_at
    );
    let hash = format!("t:{{p0}}:order:{}", o.order_id);
    server.raw(&[
        b"HSET",
        hash.as_bytes(),
        b"order",
        order_json.as_bytes(),
        b"customerId",
        o.customer_id.as_bytes(),
        b"status",
        b"accepted",
        b"version",
        b"1",
        b"updatedAt",
        accepted.occurred_at.as_bytes(),
    ]);
    let history = format!("t:{{p0}}:history:{}", o.order_id);
    server.raw(&[b"RPUSH", history.as_bytes(), entry.as_bytes()]);
    let message = serde_json::to_string(cmd).unwrap();
    server.raw(&[
        b"XADD",
        b"t:{p0}:commands",
        b"*",
        b"messageId",
        cmd.message_id.as_bytes(),
        b"orderId",
        cmd.order_id.as_bytes(),
        b"message",
        message.as_bytes(),
    ]);
    let cmdq = format!("t:{{p0}}:cmdq:{}", o.order_id);
    server.raw(&[b"RPUSH", cmdq.as_bytes(), cmd.message_id.as_bytes()]);
}

#[tokio::test]
async fn an_order_of_the_previous_layout_reads_and_applies_with_its_history_list() {
    let server = Server::start();
    let e = engine(&server, "c1").await;
    let o = order("old1");
    let accepted = event(&o, OrderStatus::Accepted, None, 1);
    let cmd = new_command(
        "old1",
        Command::ProcessOrder {
            order: Box::new(o.clone()),
        },
    );
    write_legacy_order(&server, &o, &accepted, &cmd);
    let record = e.order("old1").await.unwrap().unwrap();
    assert_eq!(record.order, o);
    let versions: Vec<u64> = record.history.iter().map(|h| h.version).collect();
    assert_eq!(versions, [1]);
    assert_eq!(record.history[0].event_id, "1-1");

    // A command queued now lines up behind the old one in the order's cmdq list.
    let cancel = new_command(
        "old1",
        Command::Transition {
            status: OrderStatus::Cancelled,
            reason: None,
        },
    );
    e.enqueue_command(&cancel, None).await.unwrap();
    let batch = e
        .receive_batch(10, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(batch.len(), 2);
    assert_eq!((&batch[0].message, &batch[1].message), (&cmd, &cancel));
    let confirm = change(&o, OrderStatus::Accepted, OrderStatus::Confirmed, 1);
    let cancelled = change(&o, OrderStatus::Confirmed, OrderStatus::Cancelled, 2);
    assert_eq!(
        e.apply(&batch[1], Some(&cancelled)).await.unwrap(),
        ApplyOutcome::Blocked
    );
    assert!(matches!(
        e.apply(&batch[0], Some(&confirm)).await.unwrap(),
        ApplyOutcome::Applied { event_id: Some(_) }
    ));
    assert_eq!(
        e.apply(&batch[0], Some(&confirm)).await.unwrap(),
        ApplyOutcome::AlreadyDone
    );
    // The old entry from the list, the new one from the hash, in version order.
    let record = e.order("old1").await.unwrap().unwrap();
    let versions: Vec<u64> = record.history.iter().map(|h| h.version).collect();
    assert_eq!(versions, [1, 2]);
    assert_eq!(record.history[0].event_id, "1-1");
    assert_eq!(record.history[1].reason.as_deref(), Some("test"));
    assert_eq!(record.status.version, 2);
    assert!(matches!(
        e.apply(&batch[1], Some(&cancelled)).await.unwrap(),
        ApplyOutcome::Applied { event_id: Some(_) }
    ));
    assert_eq!(server.raw(&[b"EXISTS", b"t:{p0}:cmdq:old1"]), Value::Int(0));
}

#[tokio::test]
async fn history_lives_in_the_order_hash_capped_at_the_limit() {
    let server = Server::start();
    let e = engine(&server, "c1").await;
    let (o, _) = accept(&e, "o1").await;
    // A new order's FIFO gate is its hash's `firstCommand`: no cmdq list, no history list.
    assert_eq!(server.raw(&[b"EXISTS", b"t:{p0}:cmdq:o1"]), Value::Int(0));
    let batch = e
        .receive_batch(10, Duration::from_millis(100))
        .await
        .unwrap();
    let confirm = change(&o, OrderStatus::Accepted, OrderStatus::Confirmed, 1);
    e.apply(&batch[0], Some(&confirm)).await.unwrap();
    // Past the limit (10 here), each change drops the oldest entry.
    let mut status = OrderStatus::Confirmed;
    for version in 2..15u64 {
        let next = if status == OrderStatus::Confirmed {
            OrderStatus::Preparing
        } else {
            OrderStatus::Confirmed
        };
        let cmd = new_command(
            "o1",
            Command::Transition {
                status: next,
                reason: None,
            },
        );
        e.enqueue_command(&cmd, None).await.unwrap();
        let got = e
            .receive_batch(1, Duration::from_millis(100))
            .await
            .unwrap();
        let outcome = e
            .apply(&got[0], Some(&change(&o, status, next, version)))
            .await
            .unwrap();
        assert!(
            matches!(outcome, ApplyOutcome::Applied { .. }),
            "{outcome:?}"
        );
        status = next;
    }
    assert_eq!(
        server.raw(&[b"EXISTS", b"t:{p0}:history:o1"]),
        Value::Int(0)
    );
    // order, customerId, status, version, updatedAt, firstCommand and ten history entries.
    assert_eq!(server.raw(&[b"HLEN", b"t:{p0}:order:o1"]), Value::Int(16));
    let record = e.order("o1").await.unwrap().unwrap();
    let versions: Vec<u64> = record.history.iter().map(|h| h.version).collect();
    assert_eq!(versions, (6..=15).collect::<Vec<u64>>());
    let status = e.order_status("o1").await.unwrap().unwrap();
    assert_eq!(status.version, 15);
}

fn evalsha_calls(server: &Server) -> i64 {
    let Value::BulkString(info) = server.raw(&[b"INFO", b"commandstats"]) else {
        panic!("INFO is a bulk string");
    };
    let info = String::from_utf8(info).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// On the test's single-threaded runtime every request below is queued before the batcher
/// runs, so they go out as one script call; each still gets its own outcome.
#[tokio::test]
async fn concurrent_intake_requests_share_one_script_call_with_their_own_outcomes() {
    let server = Server::start();
    let e = engine(&server, "c1").await;
    // Loads the script, so the counted calls below are the batch's alone.
    accept(&e, "dup").await;
    server.raw(&[b"CONFIG", b"RESETSTAT"]);
    let orders: Vec<Order> = (0..40).map(|i| order(&format!("n{i}"))).collect();
    let commands: Vec<NewCommand> = orders
        .iter()
        .map(|o| {
            new_command(
                &o.order_id,
                Command::ProcessOrder {
                    order: Box::new(o.clone()),
                },
            )
        })
        .collect();
    let events: Vec<OrderEvent> = orders
        .iter()
        .map(|o| event(o, OrderStatus::Accepted, None, 1))
        .collect();
    let dup = order("dup");
    let dup_cmd = new_command(
        "dup",
        Command::ProcessOrder {
            order: Box::new(dup.clone()),
        },
    );
    let dup_event = event(&dup, OrderStatus::Accepted, None, 1);
    let unknown = new_command(
        "nobody",
        Command::Transition {
            status: OrderStatus::Cancelled,
            reason: None,
        },
    );
    let known = new_command(
        "dup",
        Command::Transition {
            status: OrderStatus::Cancelled,
            reason: None,
        },
    );
    let accepts = orders
        .iter()
        .zip(&events)
        .zip(&commands)
        .map(|((o, ev), cmd)| e.accept_order(o, ev, cmd, None));
    let (accepted, again, refused, queued) = tokio::join!(
        futures_util::future::join_all(accepts),
        e.accept_order(&dup, &dup_event, &dup_cmd, None),
        e.enqueue_command(&unknown, None),
        e.enqueue_command(&known, None),
    );
    assert_eq!(
        evalsha_calls(&server),
        1,
        "one script call for all 43 requests"
    );
    let mut ids = std::collections::HashSet::new();
    for outcome in accepted {
        let AcceptOutcome::Accepted { event_id } = outcome.unwrap() else {
            panic!("a new order is accepted");
        };
        assert!(ids.insert(event_id), "each accept has its own event");
    }
    assert_eq!(again.unwrap(), AcceptOutcome::AlreadyExists);
    assert_eq!(refused.unwrap(), EnqueueOutcome::UnknownOrder);
    assert_eq!(queued.unwrap(), EnqueueOutcome::Enqueued);
    for o in &orders {
        let status = e.order_status(&o.order_id).await.unwrap().unwrap();
        assert_eq!((status.status, status.version), (OrderStatus::Accepted, 1));
    }
    let received = e
        .receive_batch(100, Duration::from_millis(100))
        .await
        .unwrap();
    // The 40 new orders' commands, the first accept's and the queued transition.
    assert_eq!(received.len(), 42);
}

#[tokio::test]
async fn an_intake_request_the_script_cannot_store_fails_alone() {
    let server = Server::start();
    let e = engine(&server, "c1").await;
    accept(&e, "poisoned").await;
    accept(&e, "healthy").await;
    // Another program left a string where the order's FIFO list belongs: RPUSH fails there.
    server.raw(&[b"SET", e.keys.cmdq("poisoned").as_bytes(), b"not a list"]);
    server.raw(&[b"CONFIG", b"RESETSTAT"]);
    let transition = |order_id: &str| {
        new_command(
            order_id,
            Command::Transition {
                status: OrderStatus::Cancelled,
                reason: None,
            },
        )
    };
    let (bad, good) = (transition("poisoned"), transition("healthy"));
    let fresh = order("fresh");
    let fresh_cmd = new_command(
        "fresh",
        Command::ProcessOrder {
            order: Box::new(fresh.clone()),
        },
    );
    let fresh_event = event(&fresh, OrderStatus::Accepted, None, 1);
    let (refused, queued, accepted) = tokio::join!(
        e.enqueue_command(&bad, None),
        e.enqueue_command(&good, None),
        e.accept_order(&fresh, &fresh_event, &fresh_cmd, None),
    );
    assert_eq!(evalsha_calls(&server), 1, "the three share one script call");
    assert!(
        matches!(&refused, Err(EngineError::Corrupt(m)) if m.contains("WRONGTYPE")),
        "{refused:?}"
    );
    assert_eq!(queued.unwrap(), EnqueueOutcome::Enqueued);
    assert!(matches!(accepted.unwrap(), AcceptOutcome::Accepted { .. }));
}

async fn partitioned(server: &Server, consumer: &str, partitions: usize) -> Arc<RedisEngine> {
    let config = EngineConfig {
        partitions,
        ..config(server, Duration::from_secs(2))
    };
    Arc::new(
        RedisEngine::connect(&config, settings(consumer))
            .await
            .expect("engine"),
    )
}

#[tokio::test]
async fn partitions_spread_orders_and_every_reader_sees_all_of_them() {
    let server = Server::start();
    let e = partitioned(&server, "c1", 4).await;
    assert_eq!(e.partitions(), 4);
    // Ids landing in every partition.
    let mut ids: Vec<String> = Vec::new();
    let mut seen = [false; 4];
    for i in 0.. {
        let id = format!("po-{i}");
        let k = crate::model::partition_of(&id, 4);
        if !seen[k] || ids.len() < 8 {
            seen[k] = true;
            ids.push(id);
        }
        if seen.iter().all(|s| *s) && ids.len() >= 8 {
            break;
        }
    }
    for id in &ids {
        accept(&e, id).await;
    }
    // Each order's hash and its event are in its own partition's keys.
    for id in &ids {
        let k = crate::model::partition_of(id, 4);
        let key = format!("t:{{p{k}}}:order:{id}");
        assert_eq!(
            server.raw(&[b"EXISTS", key.as_bytes()]),
            Value::Int(1),
            "{key}"
        );
    }
    for k in 0..4 {
        let expected = ids
            .iter()
            .filter(|id| crate::model::partition_of(id, 4) == k)
            .count() as i64;
        let stream = format!("t:{{p{k}}}:events");
        assert_eq!(
            server.raw(&[b"XLEN", stream.as_bytes()]),
            Value::Int(expected)
        );
    }
    // The log reads every partition, with each entry's partition; a cursor advanced by what
    // was read resumes with the rest, no gap, no duplicate.
    let all = e
        .read_events(&LogCursor::start(4), 100, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(all.len(), ids.len());
    for entry in &all {
        let LogEntry::Event(ev) = entry else {
            panic!("malformed {entry:?}");
        };
        assert_eq!(
            ev.partition,
            crate::model::partition_of(&ev.event.order_id, 4)
        );
    }
    let first = e
        .read_events(&LogCursor::start(4), 3, Duration::ZERO)
        .await
        .unwrap();
    // At most 3 from each partition; a reader taking only the 3 oldest of them resumes
    // after exactly those.
    assert!(first.len() >= 3 && first.len() <= 12);
    assert_eq!(first[..3], all[..3]);
    let mut cursor = LogCursor::start(4);
    for entry in &first[..3] {
        cursor.advance(entry.partition(), entry.id().unwrap());
    }
    let rest = e.read_events(&cursor, 100, Duration::ZERO).await.unwrap();
    assert_eq!(rest[..], all[3..]);
    assert_eq!(e.log_end().await.unwrap(), {
        let mut end = LogCursor::start(4);
        for entry in &all {
            end.advance(entry.partition(), entry.id().unwrap());
        }
        end
    });
    assert!(
        e.removed_after(&LogCursor::start(4))
            .await
            .unwrap()
            .is_empty()
    );
    // A read waiting on every partition wakes for an event in any of them.
    let end = e.log_end().await.unwrap();
    let waiting = {
        let e = e.clone();
        tokio::spawn(async move { e.read_events(&end, 10, Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    accept(&e, "late-one").await;
    let woke = waiting.await.unwrap().unwrap();
    assert_eq!(woke.len(), 1);
    // The worker receives every partition's commands, applies them in one batch call per
    // partition, and the queue empties everywhere.
    let batch = e
        .receive_batch(100, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(batch.len(), ids.len() + 1);
    let changes: Vec<(Order, StatusChange)> = batch
        .iter()
        .map(|c| {
            let o = order(&c.message.order_id);
            let ch = change(&o, OrderStatus::Accepted, OrderStatus::Confirmed, 1);
            (o, ch)
        })
        .collect();
    let pairs: Vec<_> = batch
        .iter()
        .zip(&changes)
        .map(|(c, (_, ch))| (c, Some(ch)))
        .collect();
    let outcomes = e.apply_batch(&pairs).await.unwrap();
    for (command, outcome) in batch.iter().zip(outcomes) {
        assert!(
            matches!(outcome, Ok(ApplyOutcome::Applied { event_id: Some(_) })),
            "{}: {outcome:?}",
            command.message.order_id
        );
    }
    assert_eq!(e.queue_stats().await.unwrap(), QueueStats::default());
    for id in &ids {
        let status = e.order_status(id).await.unwrap().unwrap();
        assert_eq!(status.status, OrderStatus::Confirmed);
    }
}

#[tokio::test]
async fn receive_shares_its_max_out_among_the_partitions_and_loses_nothing() {
    let server = Server::start();
    let e = partitioned(&server, "c1", 4).await;
    for i in 0..12 {
        accept(&e, &format!("r-{i}")).await;
    }
    let mut received = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let batch = e.receive_batch(1, Duration::from_millis(50)).await.unwrap();
        // 1 shared out among 4 partitions, rounded up: one from each at most.
        assert!(batch.len() <= 4, "{} received for 1 asked", batch.len());
        for c in &batch {
            assert_eq!(c.receive_count, 1);
            let o = order(&c.message.order_id);
            let ch = change(&o, OrderStatus::Accepted, OrderStatus::Confirmed, 1);
            assert!(matches!(
                e.apply(c, Some(&ch)).await.unwrap(),
                ApplyOutcome::Applied { .. }
            ));
            assert!(
                received.insert(c.message.order_id.clone()),
                "received twice"
            );
        }
        if received.len() == 12 {
            break;
        }
    }
    assert_eq!(received.len(), 12);
    assert_eq!(e.queue_stats().await.unwrap(), QueueStats::default());
}

#[tokio::test]
async fn a_partitions_change_on_existing_data_is_refused_at_start() {
    let server = Server::start();
    let one = engine(&server, "c1").await;
    accept(&one, "o1").await;
    drop(one);
    let config4 = EngineConfig {
        partitions: 4,
        ..config(&server, Duration::from_secs(2))
    };
    let refused = RedisEngine::connect(&config4, settings("c2"))
        .await
        .err()
        .expect("4 partitions on data written with 1 must be refused");
    let message = format!("{refused:#}");
    assert!(
        message.contains("engine.partitions is 4") && message.contains("with 1 partition"),
        "{message}"
    );
    // The data is untouched, and the same layout still starts.
    assert_eq!(server.raw(&[b"EXISTS", b"t:{p0}:order:o1"]), Value::Int(1));
    let again = engine(&server, "c3").await;
    assert!(again.order_status("o1").await.unwrap().is_some());
    // Data from before the layout record (no meta key) counts as one partition too.
    server.raw(&[b"DEL", b"t:{p0}:meta"]);
    assert!(
        RedisEngine::connect(&config4, settings("c4"))
            .await
            .is_err()
    );
    // An empty keyspace takes any number, and then keeps it.
    let other = EngineConfig {
        key_prefix: "u:".into(),
        partitions: 4,
        ..config(&server, Duration::from_secs(2))
    };
    RedisEngine::connect(&other, settings("c5"))
        .await
        .expect("fresh prefix");
    let back_to_one = EngineConfig {
        partitions: 1,
        ..other.clone()
    };
    let message = format!(
        "{:#}",
        RedisEngine::connect(&back_to_one, settings("c6"))
            .await
            .err()
            .expect("1 partition on data written with 4 must be refused")
    );
    assert!(message.contains("with 4 partition"), "{message}");
}

#[tokio::test]
async fn idempotency_keys_are_found_by_key_whatever_order_they_act_on() {
    let server = Server::start();
    let e = partitioned(&server, "c1", 4).await;
    let key = "admin:key-1";
    let own = crate::engine::idempotency_partition(key, 4);
    // An order in another partition than the key's.
    let order_id = (0..)
        .map(|i| format!("idem-{i}"))
        .find(|id| crate::model::partition_of(id, 4) != own)
        .unwrap();
    let k = crate::model::partition_of(&order_id, 4);
    let o = order(&order_id);
    let ttl = Duration::from_secs(5);
    assert!(matches!(
        e.begin_idempotent(key, Some(&order_id), "fp", ttl)
            .await
            .unwrap(),
        IdempotencyBegin::Started { .. }
    ));
    let cmd = new_command(
        &order_id,
        Command::ProcessOrder {
            order: Box::new(o.clone()),
        },
    );
    let response = IdempotentResponse {
        key: key.into(),
        fingerprint: "fp".into(),
        status: 202,
        body: serde_json::json!({ "orderId": order_id }),
        ttl: Duration::from_secs(60),
        claim: String::new(),
    };
    e.accept_order(
        &o,
        &event(&o, OrderStatus::Accepted, None, 1),
        &cmd,
        Some(&response),
    )
    .await
    .unwrap();
    // Written with the order, then copied where the key's claims live.
    let with_order = format!("t:{{p{k}}}:idem:{key}");
    let with_key = format!("t:{{p{own}}}:idem:{key}");
    assert_eq!(
        server.raw(&[b"EXISTS", with_order.as_bytes()]),
        Value::Int(1)
    );
    assert_eq!(server.raw(&[b"EXISTS", with_key.as_bytes()]), Value::Int(1));
    let IdempotencyBegin::Completed(replayed) = e
        .begin_idempotent(key, Some(&order_id), "fp", ttl)
        .await
        .unwrap()
    else {
        panic!("the response must be found");
    };
    assert_eq!(replayed.body, response.body);
    // The same key on another order (another partition) is found too: the caller sees the
    // first request's fingerprint and refuses the reuse.
    let other = (0..)
        .map(|i| format!("other-{i}"))
        .find(|id| ![own, k].contains(&crate::model::partition_of(id, 4)))
        .unwrap();
    let IdempotencyBegin::Completed(first) = e
        .begin_idempotent(key, Some(&other), "fp-other", ttl)
        .await
        .unwrap()
    else {
        panic!("a reused key must be found whatever order it names");
    };
    assert_eq!(first.fingerprint, "fp");
    // Lost copy (a crash between the two writes): once the key is free again, the response
    // written with the effect is still found, and copied back.
    server.raw(&[b"DEL", with_key.as_bytes()]);
    let IdempotencyBegin::Completed(found) = e
        .begin_idempotent(key, Some(&order_id), "fp", ttl)
        .await
        .unwrap()
    else {
        panic!("the response written with its effect must be found");
    };
    assert_eq!(found.body, response.body);
    assert_eq!(server.raw(&[b"EXISTS", with_key.as_bytes()]), Value::Int(1));
    // A key with no order is claimed and abandoned in its own partition.
    let key2 = "admin:key-2";
    let own2 = crate::engine::idempotency_partition(key2, 4);
    e.begin_idempotent(key2, None, "fp", ttl).await.unwrap();
    let claim = format!("t:{{p{own2}}}:idem:{key2}");
    assert_eq!(server.raw(&[b"EXISTS", claim.as_bytes()]), Value::Int(1));
    e.abandon_idempotent(key2).await.unwrap();
    assert_eq!(server.raw(&[b"EXISTS", claim.as_bytes()]), Value::Int(0));
}

fn config_get_calls(server: &Server) -> i64 {
    let Value::BulkString(info) = server.raw(&[b"INFO", b"commandstats"]) else {
        panic!("INFO is a bulk string");
    };
    let info = String::from_utf8(info).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_config|get:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// `GET /readyz` (no credential needed, probed every few seconds) reports the persistence:
/// asking the servers again on every probe made each one cost two `CONFIG GET` per partition.
#[tokio::test]
async fn persistence_is_asked_once_however_often_it_is_reported() {
    let server = Server::start();
    let e = engine(&server, "p1").await;
    server.raw(&[b"CONFIG", b"RESETSTAT"]);
    for _ in 0..20 {
        assert_eq!(e.persistence().await, Persistence::None);
    }
    let calls = config_get_calls(&server);
    assert!(calls <= 2, "{calls} CONFIG GET for 20 reports");
}

/// A request whose Idempotency-Key claim was abandoned (its engine call timed out) and taken by
/// the client's retry must not store anything when its delayed intake finally runs: the
/// retry's order is the only one (with server-drawn ids the two would otherwise be two orders).
#[tokio::test]
async fn an_intake_whose_claim_was_abandoned_and_retaken_stores_nothing() {
    let server = Server::start();
    let e = partitioned(&server, "lost", 1).await;
    let key = "admin:retried";
    let ttl = Duration::from_secs(60);
    let claim_of = |begin: IdempotencyBegin| match begin {
        IdempotencyBegin::Started { claim } => claim,
        other => panic!("expected a fresh claim, got {other:?}"),
    };
    let first = claim_of(e.begin_idempotent(key, None, "fp", ttl).await.unwrap());
    e.abandon_idempotent(key).await.unwrap();
    let retry = claim_of(e.begin_idempotent(key, None, "fp", ttl).await.unwrap());
    assert_ne!(first, retry);
    let accept = |id: &'static str, claim: String| {
        let e = e.clone();
        async move {
            let o = order(id);
            let cmd = new_command(
                id,
                Command::ProcessOrder {
                    order: Box::new(o.clone()),
                },
            );
            let response = IdempotentResponse {
                key: key.into(),
                fingerprint: "fp".into(),
                status: 202,
                body: serde_json::json!({ "orderId": id }),
                ttl: Duration::from_secs(60),
                claim,
            };
            e.accept_order(
                &o,
                &event(&o, OrderStatus::Accepted, None, 1),
                &cmd,
                Some(&response),
            )
            .await
        }
    };
    // The first request's intake arrives late, after the retry claimed the key.
    assert!(matches!(
        accept("late-1", first).await,
        Err(EngineError::Unavailable(_))
    ));
    assert!(e.order_status("late-1").await.unwrap().is_none());
    assert!(matches!(
        accept("retry-1", retry).await.unwrap(),
        AcceptOutcome::Accepted { .. }
    ));
    let IdempotencyBegin::Completed(replayed) =
        e.begin_idempotent(key, None, "fp", ttl).await.unwrap()
    else {
        panic!("the retry's response must be stored");
    };
    assert_eq!(replayed.body["orderId"], "retry-1");
    // A transition queued under an abandoned claim is refused the same way.
    let t_first = claim_of(
        e.begin_idempotent("admin:t", None, "fp", ttl)
            .await
            .unwrap(),
    );
    e.abandon_idempotent("admin:t").await.unwrap();
    let _t_retry = claim_of(
        e.begin_idempotent("admin:t", None, "fp", ttl)
            .await
            .unwrap(),
    );
    let cancel = new_command(
        "retry-1",
        Command::Transition {
            status: OrderStatus::Cancelled,
            reason: None,
        },
    );
    let response = IdempotentResponse {
        key: "admin:t".into(),
        fingerprint: "fp".into(),
        status: 202,
        body: serde_json::json!({}),
        ttl: Duration::from_secs(60),
        claim: t_first,
    };
    assert!(matches!(
        e.enqueue_command(&cancel, Some(&response)).await,
        Err(EngineError::Unavailable(_))
    ));
}

fn step_record(kind: &str, version: u64) -> StepRecord {
    StepRecord::new(
        kind,
        OrderStatus::Confirmed,
        version,
        "charge",
        now_rfc3339(),
    )
}

fn step_command(order_id: &str, version: u64, action: StepAction) -> NewCommand {
    new_command(
        order_id,
        Command::Step {
            status: OrderStatus::Confirmed,
            version,
            action,
        },
    )
}

fn hash_field(server: &Server, key: &str, field: &str) -> Option<String> {
    match server.raw(&[b"HGET", key.as_bytes(), field.as_bytes()]) {
        Value::Nil => None,
        v => text(&v),
    }
}

fn hash_fields(server: &Server, key: &str) -> Vec<String> {
    let Value::Array(fields) = server.raw(&[b"HKEYS", key.as_bytes()]) else {
        panic!("HKEYS is an array");
    };
    let mut fields: Vec<String> = fields.iter().filter_map(text).collect();
    fields.sort();
    fields
}

/// Receives until `message` comes (earlier commands still unacknowledged may come again
/// meanwhile, whenever their visibility timeout runs out).
async fn receive_until(e: &RedisEngine, message: &NewCommand) -> ReceivedCommand {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "{message:?} did not come");
        let got = e
            .receive_batch(10, Duration::from_millis(200))
            .await
            .unwrap();
        if let Some(c) = got.into_iter().find(|c| &c.message == message) {
            return c;
        }
    }
}

/// Received commands until `n` came, in the order they came.
async fn receive_n(e: &RedisEngine, n: usize) -> Vec<ReceivedCommand> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} commands came",
            got.len()
        );
        got.extend(
            e.receive_batch(n - got.len(), Duration::from_millis(200))
                .await
                .unwrap(),
        );
    }
    got
}

#[tokio::test]
async fn step_writes_live_in_the_order_hash_and_timers_in_the_partition_zset() {
    let server = Server::start();
    let e = Arc::new(
        RedisEngine::connect(
            &config(&server, Duration::from_secs(2)),
            EngineSettings {
                step_history_limit: 3,
                ..settings("c1")
            },
        )
        .await
        .expect("engine"),
    );
    let (o, _) = accept(&e, "o1").await;
    let first = receive_n(&e, 1).await;
    // Entering `confirmed` opens a callback wait, with a timer that claims it.
    let timeout = step_command(
        "o1",
        2,
        StepAction::Elapsed {
            attempt: 0,
            retries: vec![],
            heartbeat: false,
        },
    );
    let mut confirm = change(&o, OrderStatus::Accepted, OrderStatus::Confirmed, 1);
    confirm.steps = StepWrites {
        heartbeat: None,
        records: vec![
            step_record("stateEntered", 2),
            step_record("callbackSent", 2),
        ],
        follow_up: Some(FollowUp {
            command: timeout.clone(),
            due_ms: Some(5_000),
            claims_wait: Some("w1".into()),
        }),
        open_wait: Some("w1".into()),
    };
    assert!(matches!(
        e.apply(&first[0], Some(&confirm)).await.unwrap(),
        ApplyOutcome::Applied { event_id: Some(_) }
    ));
    let key = "t:{p0}:order:o1";
    assert_eq!(hash_field(&server, key, "wait").as_deref(), Some("w1"));
    assert_eq!(hash_field(&server, key, "stepSeq").as_deref(), Some("2"));
    let Value::Array(timers) =
        server.raw(&[b"ZRANGE", b"t:{p0}:timers", b"0", b"-1", b"WITHSCORES"])
    else {
        panic!("ZRANGE is an array");
    };
    assert_eq!(timers.len(), 2);
    assert_eq!(text(&timers[1]).as_deref(), Some("5000"));
    let member: serde_json::Value = serde_json::from_str(&text(&timers[0]).unwrap()).unwrap();
    assert_eq!(member["messageId"], timeout.message_id.as_str());
    assert_eq!(member["orderId"], "o1");
    assert_eq!(member["claimsWait"], "w1");
    let queued: NewCommand = serde_json::from_str(member["message"].as_str().unwrap()).unwrap();
    assert_eq!(queued, timeout);
    assert_eq!(e.pending_timers().await.unwrap(), 1);

    // The callback claims the wait; the timer then finds it closed and is dropped.
    let callback = step_command(
        "o1",
        2,
        StepAction::Callback {
            attempt: 1,
            succeeded: true,
            result: None,
        },
    );
    assert_eq!(
        e.claim_wait("o1", "w2", &callback).await.unwrap(),
        ClaimOutcome::NotWaiting
    );
    assert_eq!(
        e.claim_wait("o1", "w1", &callback).await.unwrap(),
        ClaimOutcome::Queued
    );
    assert_eq!(
        e.claim_wait("o1", "w1", &callback).await.unwrap(),
        ClaimOutcome::NotWaiting
    );
    assert_eq!(
        e.claim_wait(
            "o2",
            "w1",
            &new_command(
                "o2",
                Command::Step {
                    status: OrderStatus::Confirmed,
                    version: 2,
                    action: StepAction::Elapsed {
                        attempt: 0,
                        retries: vec![],
                        heartbeat: false,
                    },
                }
            )
        )
        .await
        .unwrap(),
        ClaimOutcome::UnknownOrder
    );
    assert_eq!(hash_field(&server, key, "wait").as_deref(), Some(""));
    let sweep = e.fire_due_timers(6_000, 10).await.unwrap();
    assert_eq!(sweep, TimerSweep::default());
    assert_eq!(e.pending_timers().await.unwrap(), 0);

    // A transition queued after the callback: the step's follow-up goes behind it.
    let cancel = new_command(
        "o1",
        Command::Transition {
            status: OrderStatus::Cancelled,
            reason: None,
        },
    );
    e.enqueue_command(&cancel, None).await.unwrap();
    let got = receive_n(&e, 2).await;
    assert_eq!((&got[0].message, &got[1].message), (&callback, &cancel));
    let attempt = step_command(
        "o1",
        2,
        StepAction::Attempt {
            attempt: 1,
            retries: vec![],
        },
    );
    let writes = StepWrites {
        heartbeat: None,
        records: vec![
            step_record("callbackSucceeded", 2),
            step_record("taskFailed", 2),
            step_record("retryScheduled", 2),
        ],
        follow_up: Some(FollowUp {
            command: attempt.clone(),
            due_ms: None,
            claims_wait: None,
        }),
        open_wait: None,
    };
    assert_eq!(
        e.apply_step(&got[1], 2, &writes).await.unwrap(),
        ApplyOutcome::Blocked
    );
    assert_eq!(
        e.apply_step(&got[0], 1, &writes).await.unwrap(),
        ApplyOutcome::Stale { current_version: 2 }
    );
    assert_eq!(hash_field(&server, key, "stepSeq").as_deref(), Some("2"));
    assert_eq!(
        e.apply_step(&got[0], 2, &writes).await.unwrap(),
        ApplyOutcome::Applied { event_id: None }
    );
    assert_eq!(
        e.apply_step(&got[0], 2, &writes).await.unwrap(),
        ApplyOutcome::AlreadyDone
    );
    // Five records written, the newest three kept: `s:1` and `s:2` are gone from the hash.
    let steps: Vec<String> = hash_fields(&server, key)
        .into_iter()
        .filter(|f| f.starts_with("s:"))
        .collect();
    assert_eq!(steps, ["s:3", "s:4", "s:5"]);
    let record = e.order("o1").await.unwrap().unwrap();
    let kinds: Vec<&str> = record.steps.iter().map(|s| s.kind.as_str()).collect();
    assert_eq!(kinds, ["callbackSucceeded", "taskFailed", "retryScheduled"]);
    assert_eq!(record.status.version, 2);

    // The follow-up waits behind the transition queued before it.
    let follow_up = receive_until(&e, &attempt).await;
    assert_eq!(
        e.apply_step(&follow_up, 2, &StepWrites::default())
            .await
            .unwrap(),
        ApplyOutcome::Blocked
    );
    // The transition closes the wait opened meanwhile (any status change does).
    server.raw(&[b"HSET", key.as_bytes(), b"wait", b"w3"]);
    let cancelled = change(&o, OrderStatus::Confirmed, OrderStatus::Cancelled, 2);
    assert!(matches!(
        e.apply(&got[1], Some(&cancelled)).await.unwrap(),
        ApplyOutcome::Applied { event_id: Some(_) }
    ));
    assert_eq!(hash_field(&server, key, "wait").as_deref(), Some(""));
    assert_eq!(
        e.apply_step(&follow_up, 2, &StepWrites::default())
            .await
            .unwrap(),
        ApplyOutcome::Stale { current_version: 3 }
    );
}

#[tokio::test]
async fn one_sweep_fires_the_earliest_timers_across_partitions_within_the_limit() {
    let server = Server::start();
    let e = partitioned(&server, "c1", 4).await;
    // One order in each partition.
    let mut ids: Vec<String> = Vec::new();
    for i in 0.. {
        let id = format!("o{i}");
        if !ids
            .iter()
            .any(|x| e.keys.partition(x) == e.keys.partition(&id))
        {
            ids.push(id);
        }
        if ids.len() == 4 {
            break;
        }
    }
    // Partition order is not due order: the last order's timer is the earliest.
    let mut timers = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let (o, _) = accept(&e, id).await;
        let got = receive_n(&e, 1).await;
        let timer = step_command(
            id,
            2,
            StepAction::Elapsed {
                attempt: 0,
                retries: vec![],
                heartbeat: false,
            },
        );
        let mut confirm = change(&o, OrderStatus::Accepted, OrderStatus::Confirmed, 1);
        confirm.steps.follow_up = Some(FollowUp {
            command: timer.clone(),
            due_ms: Some(1_000 - 100 * i as u64),
            claims_wait: None,
        });
        e.apply(&got[0], Some(&confirm)).await.unwrap();
        timers.push(timer);
        let zset = format!("t:{{p{}}}:timers", e.keys.partition(id));
        assert_eq!(server.raw(&[b"ZCARD", zset.as_bytes()]), Value::Int(1));
    }
    assert_eq!(e.pending_timers().await.unwrap(), 4);
    assert_eq!(
        e.fire_due_timers(650, 10).await.unwrap(),
        TimerSweep {
            fired: vec![],
            next_due_ms: Some(700)
        }
    );
    let sweep = e.fire_due_timers(2_000, 2).await.unwrap();
    assert_eq!(sweep.fired, [700, 800]);
    assert_eq!(sweep.next_due_ms, Some(900));
    let got = receive_n(&e, 2).await;
    let mut queued: Vec<&NewCommand> = got.iter().map(|c| &c.message).collect();
    queued.sort_by_key(|c| c.message_id.clone());
    let mut expected = vec![&timers[3], &timers[2]];
    expected.sort_by_key(|c| c.message_id.clone());
    assert_eq!(queued, expected);
    // An order gone meanwhile: its timer is removed without a command.
    let gone = format!("t:{{p{}}}:order:{}", e.keys.partition(&ids[1]), ids[1]);
    server.raw(&[b"DEL", gone.as_bytes()]);
    let sweep = e.fire_due_timers(2_000, 10).await.unwrap();
    assert_eq!(sweep.fired, [1_000]);
    assert_eq!(sweep.next_due_ms, None);
    assert_eq!(e.pending_timers().await.unwrap(), 0);
    receive_until(&e, &timers[0]).await;
}

#[tokio::test]
async fn a_timer_survives_a_redis_restart_from_the_aof() {
    let mut server = Server::start_aof();
    let e = engine(&server, "c1").await;
    let (o, _) = accept(&e, "o1").await;
    let got = receive_n(&e, 1).await;
    let timer = step_command(
        "o1",
        2,
        StepAction::Elapsed {
            attempt: 0,
            retries: vec![],
            heartbeat: false,
        },
    );
    let mut confirm = change(&o, OrderStatus::Accepted, OrderStatus::Confirmed, 1);
    confirm.steps.follow_up = Some(FollowUp {
        command: timer.clone(),
        due_ms: Some(1_000),
        claims_wait: None,
    });
    e.apply(&got[0], Some(&confirm)).await.unwrap();
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    while e.ping().await.is_err() {
        assert!(Instant::now() < deadline, "engine did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(e.pending_timers().await.unwrap(), 1);
    // NOSCRIPT after the restart: the script is loaded again.
    assert_eq!(e.fire_due_timers(1_000, 10).await.unwrap().fired, [1_000]);
    assert_eq!(receive_n(&e, 1).await[0].message, timer);
}
