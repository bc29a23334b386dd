//! The engine conformance suite: every behaviour the engine seam promises, run against the
//! memory engine, the Redis engine on a single Redis (each test on its own `redis-server`) and
//! the Redis engine on a real 3-master Redis Cluster.
//!
//! Each test is written once as `async fn name(h: Harness)`; the `conformance!` macro makes a
//! `memory::name`, a `redis::name` and a `cluster::name` test of it, and on Redis the same
//! again with `engine.partitions` = [`PARTITIONS`] (`redis_partitioned::name`,
//! `cluster_partitioned::name`): orders, queues and the log spread over partitions, each under
//! its own hash tag, which on the cluster spreads them over the masters. The cluster tests
//! share one cluster per test binary (starting one takes seconds), each under its own
//! `key_prefix`.

mod common;

use herald::config::EngineConfig;
use herald::engine::memory::MemoryEngine;
use herald::engine::redis::RedisEngine;
use herald::engine::webhook::*;
use herald::engine::*;
use herald::model::*;
use std::sync::Arc;
use std::time::Duration;

const VISIBILITY: Duration = Duration::from_millis(400);
/// `engine.partitions` of the partitioned runs.
const PARTITIONS: usize = 4;

struct Harness {
    engine: Arc<dyn Engine>,
    /// The Redis server behind the engine, if any (kept alive for the test's duration).
    redis: Option<common::RedisServer>,
    /// A cluster of the test's own (tests that restart a node), if any.
    cluster: Option<common::cluster::RedisCluster>,
    settings: EngineSettings,
    engine_config: EngineConfig,
}

fn settings(consumer: &str) -> EngineSettings {
    EngineSettings {
        visibility_timeout: VISIBILITY,
        max_receives: 3,
        history_limit: 5,
        step_history_limit: 4,
        event_retention: 50,
        consumer_name: consumer.into(),
    }
}

impl Harness {
    fn memory() -> Harness {
        let settings = settings("c1");
        Harness {
            engine: Arc::new(MemoryEngine::new(settings.clone())),
            redis: None,
            cluster: None,
            settings,
            engine_config: EngineConfig::default(),
        }
    }

    async fn redis(partitions: usize) -> Harness {
        Harness::redis_with(common::RedisServer::start(false), partitions).await
    }

    async fn redis_with(server: common::RedisServer, partitions: usize) -> Harness {
        let mut h = Harness::redis_at(server.url(), "conf:".into(), partitions).await;
        h.redis = Some(server);
        h
    }

    /// On the binary's shared Redis Cluster, with keys of its own under
    /// `conf-<test>-<partitions>:`.
    async fn cluster(test: &str, partitions: usize) -> Harness {
        let url = tokio::task::spawn_blocking(|| common::cluster::RedisCluster::shared().url())
            .await
            .expect("the shared cluster");
        Harness::redis_at(url, format!("conf-{test}-{partitions}:"), partitions).await
    }

    async fn redis_at(redis_url: String, key_prefix: String, partitions: usize) -> Harness {
        let engine_config = EngineConfig {
            kind: herald::config::EngineKind::Redis,
            redis_url,
            key_prefix,
            partitions,
            ..EngineConfig::default()
        };
        let settings = settings("c1");
        let engine = RedisEngine::connect(&engine_config, settings.clone())
            .await
            .expect("redis engine");
        Harness {
            engine: Arc::new(engine),
            redis: None,
            cluster: None,
            settings,
            engine_config,
        }
    }

    /// Restarts the Redis behind the engine from its AOF: the server, or on a cluster of the
    /// test's own the master holding Herald's slot (SIGKILL, then a restart).
    fn restart_redis(&mut self) {
        if let Some(server) = self.redis.as_mut() {
            server.restart();
        } else if let Some(cluster) = self.cluster.as_mut() {
            let master = cluster.master_of(&self.engine_config.events_stream_key());
            cluster.kill_node(master);
            cluster.restart_node(master);
        } else {
            panic!("no Redis of the test's own to restart");
        }
    }

    /// A second engine handle on the same state, as another process would have (memory: the
    /// same engine, since it cannot be shared across processes).
    async fn second_consumer(&self) -> Arc<dyn Engine> {
        match self.engine_config.kind {
            herald::config::EngineKind::Memory => self.engine.clone(),
            herald::config::EngineKind::Redis => Arc::new(
                RedisEngine::connect(&self.engine_config, settings("c2"))
                    .await
                    .expect("second redis engine"),
            ),
        }
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Harness::memory()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Harness::redis(1).await).await;
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Harness::cluster(stringify!($name), 1).await).await;
                }
            )*
        }
        mod redis_partitioned {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Harness::redis(super::PARTITIONS).await).await;
                }
            )*
        }
        mod cluster_partitioned {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(
                        super::Harness::cluster(stringify!($name), super::PARTITIONS).await,
                    )
                    .await;
                }
            )*
        }
    };
}

conformance!(
    accept_writes_status_history_event_and_command_together,
    accepting_an_existing_order_id_writes_nothing,
    applied_changes_bump_version_by_one_and_log_one_event_each,
    redelivered_command_after_apply_is_already_done_without_second_event,
    unacknowledged_command_is_received_again_after_visibility_timeout,
    extend_visibility_keeps_a_command_hidden_without_counting_a_receive,
    released_command_is_receivable_at_once,
    command_received_more_than_max_receives_goes_to_dead_letters_and_redrive_returns_it,
    later_command_of_an_order_is_blocked_until_the_earlier_one_completes,
    waiting_behind_an_earlier_command_is_not_a_failed_receive,
    a_poisoned_head_goes_to_the_dead_letters_with_its_later_commands_in_order,
    an_undecodable_head_goes_to_the_dead_letters_with_its_later_commands,
    an_undecodable_command_waits_its_turn_before_it_is_dead_lettered,
    commands_moved_with_an_undecodable_head_read_fresh_are_not_handed_out,
    redrive_puts_an_orders_dead_letters_back_in_order_ahead_of_its_newer_commands,
    different_orders_are_received_together,
    a_batch_applies_each_command_in_order_as_apply_would,
    a_batch_blocks_a_command_listed_before_its_orders_earlier_one,
    change_on_a_stale_version_is_refused_and_writes_nothing,
    acknowledging_without_change_completes_the_command,
    enqueue_for_unknown_order_is_refused,
    history_is_capped_oldest_first,
    event_log_reads_after_a_cursor_in_order,
    read_from_the_start_returns_every_event_in_its_orders_partition,
    resuming_after_the_first_entries_read_returns_exactly_the_rest,
    reading_from_the_log_end_returns_nothing,
    waiting_reader_wakes_when_an_event_is_appended,
    malformed_entries_are_reported_not_fatal_and_set_aside_once,
    event_log_keeps_only_the_retention_window,
    removed_after_reports_entries_trimmed_before_a_reader_read_them,
    idempotency_key_is_claimed_once_then_replayed,
    abandoned_idempotency_key_can_be_claimed_again,
    queue_stats_count_visible_in_flight_and_dead,
    a_second_consumer_takes_over_expired_work,
    endpoints_are_stored_listed_replaced_and_deleted,
    every_endpoint_write_moves_the_endpoints_version_forward,
    deleting_an_endpoint_takes_its_deliveries_off_the_schedule,
    claimed_events_are_not_handed_out_again_once_deliveries_are_created,
    one_create_call_stores_a_batch_and_acknowledges_every_event_of_it,
    enqueued_deliveries_are_scheduled_and_acknowledge_no_event,
    unacknowledged_event_is_reclaimed_by_another_consumer_after_reclaim_after,
    waiting_dispatcher_wakes_when_an_event_is_appended,
    events_trimmed_before_dispatch_are_reported_and_recorded_once,
    creating_a_delivery_twice_keeps_the_first,
    claim_due_returns_due_deliveries_in_due_order_once_per_lease,
    claim_due_reports_the_endpoints_version_and_bodies_are_read_by_id,
    next_due_ms_is_the_earliest_scheduled_time,
    succeeded_attempt_takes_the_delivery_off_the_schedule,
    retry_at_schedules_the_next_attempt_at_that_time,
    failed_delivery_is_kept_and_recover_failed_schedules_it_again,
    gone_fails_the_delivery_and_disables_the_endpoint,
    endpoint_health_tracks_failures_and_disables_after_disable_after,
    finish_attempts_records_a_batch_in_order_with_the_health_of_each,
    settings_updates_keep_health_and_health_writes_keep_settings,
    attempts_are_listed_oldest_first_and_capped,
    deliveries_are_listed_newest_first_with_limit_and_before,
    retry_delivery_makes_any_delivery_pending_and_due,
    persistence_is_reported,
    create_endpoint_counts_and_inserts_in_one_step_per_partner,
    patch_and_rotate_change_only_their_fields,
    sweep_deletes_old_records_and_every_record_of_a_deleted_endpoint,
    // Per-order ordered webhooks (issue 14).
    ordered_deliveries_of_one_order_go_out_one_at_a_time_in_version_order,
    a_retrying_order_does_not_hold_back_other_orders_or_unordered_deliveries,
    a_failed_head_releases_the_next_and_a_manual_retry_waits_for_its_turn,
    recovering_an_orders_failed_deliveries_sends_them_one_at_a_time,
    deleting_an_ordered_endpoint_and_sweeping_leaves_no_line_behind,
    sweeping_a_lines_head_hands_the_turn_to_the_next,
    an_ordered_delivery_waits_for_earlier_events_and_yields_to_a_lower_version,
    // Workflow steps (issue 13).
    a_change_writes_its_step_records_in_the_same_step,
    step_records_are_kept_oldest_first_and_capped,
    a_change_queues_its_follow_up_behind_the_orders_earlier_commands,
    a_timer_is_not_receivable_before_it_is_due_and_fires_once,
    concurrent_sweeps_fire_each_timer_once,
    timers_fire_earliest_first_up_to_the_limit,
    a_fired_timer_queues_behind_the_orders_earlier_commands,
    pending_timers_and_next_due_ms_follow_the_schedule,
    a_refused_change_writes_none_of_its_steps,
    a_batch_writes_each_changes_steps,
    a_step_on_a_stale_version_writes_nothing,
    a_step_waits_behind_its_orders_earlier_commands,
    a_step_sets_the_open_wait_or_leaves_it_as_it_is,
    a_status_change_closes_the_open_wait,
    a_wait_is_claimed_once_and_its_command_queued_behind_earlier_ones,
    claiming_a_wait_of_an_unknown_order_is_refused,
    a_timeout_loses_to_a_callback_that_claimed_the_wait_first,
    a_timeout_that_claims_the_open_wait_fires_and_closes_it,
    a_timeout_of_a_status_the_order_left_is_dropped,
    a_waiting_receiver_wakes_when_a_timer_fires,
    a_waiting_receiver_wakes_when_a_wait_is_claimed,
    heads_its_order_answers_the_fifo_gate_apply_checks_and_writes_nothing,
    an_orders_heartbeat_timer_is_replaced_not_added,
    a_heartbeat_is_refused_unless_its_wait_is_open,
    a_heartbeat_timer_that_lost_its_wait_is_dropped,
    the_order_shows_its_open_wait,
    // Resync snapshots (issue 14).
    orders_are_listed_by_customer_partner_and_all_with_their_current_status,
    a_listing_over_its_bound_is_refused_whole,
);

fn order(id: &str) -> Order {
    Order {
        order_id: id.into(),
        customer_id: format!("cust-{id}"),
        partner_id: Some("acme".into()),
        items: vec![LineItem {
            sku: "sku".into(),
            quantity: 1,
            unit_price: serde_json::Number::from(5),
        }],
        currency: "USD".into(),
        metadata: None,
        created_at: now_rfc3339(),
    }
}

fn accepted_event(o: &Order) -> OrderEvent {
    OrderEvent {
        event_type: "order.accepted".into(),
        order_id: o.order_id.clone(),
        customer_id: o.customer_id.clone(),
        partner_id: o.partner_id.clone(),
        status: OrderStatus::Accepted,
        previous_status: None,
        version: 1,
        occurred_at: o.created_at.clone(),
        data: None,
    }
}

fn command(order_id: &str, command: Command) -> NewCommand {
    NewCommand {
        message_id: uuid::Uuid::new_v4().to_string(),
        order_id: order_id.into(),
        command,
        sent_at: now_rfc3339(),
    }
}

fn process(o: &Order) -> Command {
    Command::ProcessOrder {
        order: Box::new(o.clone()),
    }
}

fn transition(order_id: &str, to: OrderStatus) -> NewCommand {
    command(
        order_id,
        Command::Transition {
            status: to,
            reason: None,
        },
    )
}

/// Accepts an order; returns its processOrder command.
async fn accept(engine: &Arc<dyn Engine>, id: &str) -> NewCommand {
    let o = order(id);
    let cmd = command(id, process(&o));
    let outcome = engine
        .accept_order(&o, &accepted_event(&o), &cmd, None)
        .await
        .unwrap();
    assert!(
        matches!(outcome, AcceptOutcome::Accepted { .. }),
        "{outcome:?}"
    );
    cmd
}

async fn receive(engine: &Arc<dyn Engine>, max: usize) -> Vec<ReceivedCommand> {
    engine
        .receive_batch(max, Duration::from_millis(50))
        .await
        .unwrap()
}

async fn receive_one(engine: &Arc<dyn Engine>) -> ReceivedCommand {
    let mut batch = engine
        .receive_batch(1, Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(batch.len(), 1, "expected one command");
    batch.remove(0)
}

async fn change_to(engine: &Arc<dyn Engine>, order_id: &str, to: OrderStatus) -> StatusChange {
    let status = engine.order_status(order_id).await.unwrap().unwrap();
    herald::workflow::status_change(&status, to, None)
}

async fn events(engine: &Arc<dyn Engine>) -> Vec<LoggedEvent> {
    engine
        .read_events(&start(engine), 1000, Duration::ZERO)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match e {
            LogEntry::Event(e) => Some(e),
            LogEntry::Malformed(_) => None,
        })
        .collect()
}

async fn accept_writes_status_history_event_and_command_together(h: Harness) {
    let e = &h.engine;
    let cmd = accept(e, "o1").await;
    let status = e.order_status("o1").await.unwrap().unwrap();
    assert_eq!(status.status, OrderStatus::Accepted);
    assert_eq!(status.version, 1);
    assert_eq!(status.partner_id.as_deref(), Some("acme"));
    let record = e.order("o1").await.unwrap().unwrap();
    assert_eq!(record.order.customer_id, "cust-o1");
    assert_eq!(record.order.items.len(), 1);
    assert_eq!(record.history.len(), 1);
    let evs = events(e).await;
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].event.event_type, "order.accepted");
    assert_eq!(record.history[0].event_id, evs[0].event_id);
    let got = receive_one(e).await;
    assert_eq!(got.message, cmd);
    assert_eq!(got.receive_count, 1);
}

async fn accepting_an_existing_order_id_writes_nothing(h: Harness) {
    let e = &h.engine;
    accept(e, "o1").await;
    let o = order("o1");
    let outcome = e
        .accept_order(&o, &accepted_event(&o), &command("o1", process(&o)), None)
        .await
        .unwrap();
    assert_eq!(outcome, AcceptOutcome::AlreadyExists);
    assert_eq!(events(e).await.len(), 1);
    assert_eq!(receive(e, 10).await.len(), 1);
}

async fn applied_changes_bump_version_by_one_and_log_one_event_each(h: Harness) {
    let e = &h.engine;
    accept(e, "o1").await;
    let got = receive_one(e).await;
    let change = change_to(e, "o1", OrderStatus::Confirmed).await;
    let outcome = e.apply(&got, Some(&change)).await.unwrap();
    assert!(matches!(
        outcome,
        ApplyOutcome::Applied { event_id: Some(_) }
    ));
    e.enqueue_command(&transition("o1", OrderStatus::Preparing), None)
        .await
        .unwrap();
    let got = receive_one(e).await;
    let change = change_to(e, "o1", OrderStatus::Preparing).await;
    e.apply(&got, Some(&change)).await.unwrap();
    let record = e.order("o1").await.unwrap().unwrap();
    assert_eq!(record.status.status, OrderStatus::Preparing);
    assert_eq!(record.status.version, 3);
    let versions: Vec<u64> = record.history.iter().map(|h| h.version).collect();
    assert_eq!(versions, vec![1, 2, 3]);
    let evs = events(e).await;
    let statuses: Vec<_> = evs
        .iter()
        .map(|e| (e.event.status, e.event.version))
        .collect();
    assert_eq!(
        statuses,
        vec![
            (OrderStatus::Accepted, 1),
            (OrderStatus::Confirmed, 2),
            (OrderStatus::Preparing, 3)
        ]
    );
    assert_eq!(evs[2].event.previous_status, Some(OrderStatus::Confirmed));
    assert!(receive(e, 10).await.is_empty(), "queue drained");
}

async fn redelivered_command_after_apply_is_already_done_without_second_event(h: Harness) {
    let e = &h.engine;
    accept(e, "o1").await;
    let first = receive_one(e).await;
    let change = change_to(e, "o1", OrderStatus::Confirmed).await;
    // A second receiver holds a copy of the same delivery (as after a visibility timeout).
    let copy = first.clone();
    e.apply(&first, Some(&change)).await.unwrap();
    let again = e.apply(&copy, Some(&change)).await.unwrap();
    assert_eq!(again, ApplyOutcome::AlreadyDone);
    assert_eq!(events(e).await.len(), 2);
    assert_eq!(e.order_status("o1").await.unwrap().unwrap().version, 2);
}

async fn unacknowledged_command_is_received_again_after_visibility_timeout(h: Harness) {
    let e = &h.engine;
    let cmd = accept(e, "o1").await;
    let first = receive_one(e).await;
    assert!(receive(e, 10).await.is_empty(), "invisible while in flight");
    tokio::time::sleep(VISIBILITY + Duration::from_millis(150)).await;
    let second = receive_one(e).await;
    assert_eq!(second.message, cmd);
    assert_eq!(second.receive_count, first.receive_count + 1);
}

async fn extend_visibility_keeps_a_command_hidden_without_counting_a_receive(h: Harness) {
    let e = &h.engine;
    accept(e, "o1").await;
    let first = receive_one(e).await;
    for _ in 0..3 {
        tokio::time::sleep(VISIBILITY / 2).await;
        e.extend_visibility(&first).await.unwrap();
    }
    assert!(
        receive(e, 10).await.is_empty(),
        "still hidden after 1.5 timeouts"
    );
    tokio::time::sleep(VISIBILITY + Duration::from_millis(150)).await;
    assert_eq!(receive_one(e).await.receive_count, 2);
}

async fn released_command_is_receivable_at_once(h: Harness) {
    let e = &h.engine;
    accept(e, "o1").await;
    let first = receive_one(e).await;
    e.release(&first).await.unwrap();
    let again = e
        .receive_batch(10, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message, first.message);
}

async fn command_received_more_than_max_receives_goes_to_dead_letters_and_redrive_returns_it(
    h: Harness,
) {
    let e = &h.engine;
    let cmd = accept(e, "o1").await;
    for n in 1..=h.settings.max_receives {
        let got = receive_one(e).await;
        assert_eq!(got.receive_count, n);
        e.release(&got).await.unwrap();
    }
    assert!(
        receive(e, 10).await.is_empty(),
        "moved to the dead-letter queue"
    );
    let dead = e.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.as_ref(), Some(&cmd));
    assert_eq!(e.queue_stats().await.unwrap().dead_letters, 1);
    // The dead letter no longer blocks the order's later commands.
    e.enqueue_command(&transition("o1", OrderStatus::Cancelled), None)
        .await
        .unwrap();
    let next = receive_one(e).await;
    let change = change_to(e, "o1", OrderStatus::Cancelled).await;
    assert!(matches!(
        e.apply(&next, Some(&change)).await.unwrap(),
        ApplyOutcome::Applied { .. }
    ));
    assert_eq!(e.redrive(10).await.unwrap(), 1);
    assert!(e.dead_letters(10).await.unwrap().is_empty());
    let back = receive_one(e).await;
    assert_eq!(back.message, cmd);
    assert_eq!(back.receive_count, 1, "redrive resets the receive count");
}

async fn later_command_of_an_order_is_blocked_until_the_earlier_one_completes(h: Harness) {
    let e = &h.engine;
    accept(e, "o1").await;
    let cancel = transition("o1", OrderStatus::Cancelled);
    e.enqueue_command(&cancel, None).await.unwrap();
    let batch = receive(e, 10).await;
    assert_eq!(batch.len(), 2);
    let (first, second) = (&batch[0], &batch[1]);
    assert_eq!(second.message, cancel, "received in arrival order");
    let change = change_to(e, "o1", OrderStatus::Cancelled).await;
    assert_eq!(
        e.apply(second, Some(&change)).await.unwrap(),
        ApplyOutcome::Blocked
    );
    assert_eq!(
        e.order_status("o1").await.unwrap().unwrap().version,
        1,
        "nothing written"
    );
    let confirm = change_to(e, "o1", OrderStatus::Confirmed).await;
    e.apply(first, Some(&confirm)).await.unwrap();
    let change = change_to(e, "o1", OrderStatus::Cancelled).await;
    assert!(matches!(
        e.apply(second, Some(&change)).await.unwrap(),
        ApplyOutcome::Applied { .. }
    ));
    let statuses: Vec<_> = events(e).await.iter().map(|e| e.event.status).collect();
    assert_eq!(
        statuses,
        vec![
            OrderStatus::Accepted,
            OrderStatus::Confirmed,
            OrderStatus::Cancelled
        ]
    );
}

/// Issue 12 item 7 (a): a command received while an earlier command of its order is still
/// unfinished waits its turn; those deliveries are not failed receives, however many there
/// are, so it is never dead-lettered for waiting.
async fn waiting_behind_an_earlier_command_is_not_a_failed_receive(h: Harness) {
    let e = &h.engine;
    let first = accept(e, "o1").await;
    let later = transition("o1", OrderStatus::Cancelled);
    e.enqueue_command(&later, None).await.unwrap();
    let batch = receive(e, 10).await;
    assert_eq!(batch.len(), 2, "{batch:?}");
    let head = batch.iter().find(|c| c.message == first).unwrap().clone();
    let mut waiting = batch.into_iter().find(|c| c.message == later).unwrap();
    assert_eq!(
        waiting.receive_count, 0,
        "a receive while waiting does not count"
    );
    // The head is slow (its worker keeps it invisible) while the later command is handed out
    // again and again, more often than max_receives.
    let rounds = h.settings.max_receives + 2;
    for _ in 0..rounds {
        e.extend_visibility(&head).await.unwrap();
        e.release(&waiting).await.unwrap();
        let again = receive(e, 10).await;
        assert_eq!(again.len(), 1, "{again:?}");
        waiting = again.into_iter().next().unwrap();
        assert_eq!(waiting.message, later);
        assert_eq!(waiting.receive_count, 0);
    }
    assert!(e.dead_letters(10).await.unwrap().is_empty());
    let confirm = change_to(e, "o1", OrderStatus::Confirmed).await;
    e.apply(&head, Some(&confirm)).await.unwrap();
    let cancel = change_to(e, "o1", OrderStatus::Cancelled).await;
    assert!(matches!(
        e.apply(&waiting, Some(&cancel)).await.unwrap(),
        ApplyOutcome::Applied { .. }
    ));
    assert_eq!(e.queue_stats().await.unwrap(), QueueStats::default());
}

/// Receives and gives back everything until something is dead-lettered (bounded).
async fn release_until_dead(e: &Arc<dyn Engine>) {
    for _ in 0..30 {
        if !e.dead_letters(1).await.unwrap().is_empty() {
            return;
        }
        for got in receive(e, 10).await {
            e.release(&got).await.unwrap();
        }
    }
    panic!("nothing was dead-lettered");
}

fn dead_ids(dead: &[DeadLetter]) -> Vec<&str> {
    dead.iter().map(|d| d.message_id.as_str()).collect()
}

/// Issue 12 item 7 (b): the head of an order received max_receives times goes to the dead
/// letters with the order's later commands right behind it, in their order; the order is
/// not blocked: a command queued for it afterwards runs.
async fn a_poisoned_head_goes_to_the_dead_letters_with_its_later_commands_in_order(h: Harness) {
    let e = &h.engine;
    let head = accept(e, "o1").await;
    let t1 = transition("o1", OrderStatus::Preparing);
    let t2 = transition("o1", OrderStatus::Shipped);
    for t in [&t1, &t2] {
        e.enqueue_command(t, None).await.unwrap();
    }
    release_until_dead(e).await;
    // Nothing else is handed out: the later commands went with their head.
    assert!(receive(e, 10).await.is_empty());
    let dead = e.dead_letters(10).await.unwrap();
    assert_eq!(
        dead_ids(&dead),
        [&head.message_id, &t1.message_id, &t2.message_id]
    );
    assert_eq!(dead[0].reason, DEAD_MAX_RECEIVES);
    assert_eq!(dead[0].receive_count, h.settings.max_receives);
    assert_eq!(dead[1].reason, dead_behind(&head.message_id));
    assert_eq!(dead[2].message.as_ref(), Some(&t2));
    assert_eq!(
        e.queue_stats().await.unwrap(),
        QueueStats {
            visible: 0,
            in_flight: 0,
            dead_letters: 3
        }
    );
    let t3 = transition("o1", OrderStatus::Cancelled);
    e.enqueue_command(&t3, None).await.unwrap();
    let next = receive_one(e).await;
    assert_eq!(next.message, t3);
    let change = change_to(e, "o1", OrderStatus::Cancelled).await;
    assert!(matches!(
        e.apply(&next, Some(&change)).await.unwrap(),
        ApplyOutcome::Applied { .. }
    ));
}

/// A raw connection to the Redis (or the cluster master) holding `key`.
fn raw_conn(h: &Harness, key: &str) -> ::redis::Connection {
    match &h.redis {
        Some(server) => server.conn(),
        None => {
            let cluster = common::cluster::RedisCluster::shared();
            cluster.node_conn(cluster.master_of(key))
        }
    }
}

/// Issue 12 item 7 (b), Redis: a head whose stream entry does not decode (a foreign writer's
/// or another version's) used to be set aside while its id stayed at the head of the order's
/// FIFO gate, blocking the order for ever. It goes to the dead letters, raw, with the order's
/// later commands; the order runs on. (Memory commands are never encoded: nothing to test.)
async fn an_undecodable_head_goes_to_the_dead_letters_with_its_later_commands(h: Harness) {
    if h.engine_config.kind == herald::config::EngineKind::Memory {
        return;
    }
    let e = &h.engine;
    let head = accept(e, "o1").await;
    let t1 = transition("o1", OrderStatus::Preparing);
    let t2 = transition("o1", OrderStatus::Shipped);
    for t in [&t1, &t2] {
        e.enqueue_command(t, None).await.unwrap();
    }
    let stream = format!(
        "{}{}:commands",
        h.engine_config.key_prefix,
        herald::config::EngineConfig::hash_tag(partition_of("o1", e.partitions()))
    );
    let mut conn = raw_conn(&h, &stream);
    let entries: ::redis::streams::StreamRangeReply = ::redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    let entry = entries
        .ids
        .iter()
        .find(|id| id.get::<String>("messageId").as_deref() == Some(head.message_id.as_str()))
        .expect("the head's entry");
    // The head's entry replaced by one that names it but does not decode.
    let _: i64 = ::redis::cmd("XDEL")
        .arg(&stream)
        .arg(&entry.id)
        .query(&mut conn)
        .unwrap();
    let _: String = ::redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("messageId")
        .arg(&head.message_id)
        .arg("orderId")
        .arg("o1")
        .arg("message")
        .arg("{nope")
        .query(&mut conn)
        .unwrap();
    assert!(receive(e, 10).await.is_empty(), "nothing handed out");
    let dead = e.dead_letters(10).await.unwrap();
    assert_eq!(
        dead_ids(&dead),
        [&head.message_id, &t1.message_id, &t2.message_id]
    );
    assert_eq!(
        (&dead[0].message, dead[0].raw.as_deref()),
        (&None, Some("{nope"))
    );
    assert!(
        dead[0].reason.starts_with("undecodable"),
        "{}",
        dead[0].reason
    );
    assert_eq!(dead[1].reason, dead_behind(&head.message_id));
    let t3 = transition("o1", OrderStatus::Cancelled);
    e.enqueue_command(&t3, None).await.unwrap();
    let next = receive_one(e).await;
    assert_eq!(next.message, t3);
    assert!(matches!(
        e.apply(&next, None).await.unwrap(),
        ApplyOutcome::Applied { .. }
    ));
}

/// Issue 12 item 7 (b), Redis: an undecodable command still waiting behind an earlier
/// command of its order is no poisoned head yet. Dead-lettered at once (with its later
/// commands) while the earlier one stayed in the gate, redrive would put it ahead of that one;
/// it goes when it heads its order, and the earlier commands run first.
async fn an_undecodable_command_waits_its_turn_before_it_is_dead_lettered(h: Harness) {
    undecodable_behind_earlier_commands(h, 10).await;
}

/// Redis: a receive that claims a released follower and then reads its order's undecodable
/// head fresh moves both to the dead letters; the follower must not be handed out with the
/// batch (its worker would find it gone). Three at a time: P, t1 and t3 first (t2's entry,
/// written last, is read after them), then t3 (released) is claimed in the receive that
/// reads t2 at the head.
async fn commands_moved_with_an_undecodable_head_read_fresh_are_not_handed_out(h: Harness) {
    undecodable_behind_earlier_commands(h, 3).await;
}

/// Order o1: P, t1, t2 (undecodable), t3, received `per_receive` at a time and applied in
/// order; t2 goes to the dead letters with t3 once P and t1 ran, and nothing dead-lettered is
/// handed out.
async fn undecodable_behind_earlier_commands(h: Harness, per_receive: usize) {
    if h.engine_config.kind == herald::config::EngineKind::Memory {
        return;
    }
    let e = &h.engine;
    let head = accept(e, "o1").await;
    let t1 = transition("o1", OrderStatus::Preparing);
    let t2 = transition("o1", OrderStatus::Shipped);
    let t3 = transition("o1", OrderStatus::Delivered);
    for t in [&t1, &t2, &t3] {
        e.enqueue_command(t, None).await.unwrap();
    }
    let stream = format!(
        "{}{}:commands",
        h.engine_config.key_prefix,
        herald::config::EngineConfig::hash_tag(partition_of("o1", e.partitions()))
    );
    let mut conn = raw_conn(&h, &stream);
    let entries: ::redis::streams::StreamRangeReply = ::redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    let entry = entries
        .ids
        .iter()
        .find(|id| id.get::<String>("messageId").as_deref() == Some(t2.message_id.as_str()))
        .expect("t2's entry");
    let _: i64 = ::redis::cmd("XDEL")
        .arg(&stream)
        .arg(&entry.id)
        .query(&mut conn)
        .unwrap();
    let _: String = ::redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("messageId")
        .arg(&t2.message_id)
        .arg("orderId")
        .arg("o1")
        .arg("message")
        .arg("{nope")
        .query(&mut conn)
        .unwrap();
    let mut applied = Vec::new();
    for round in 0..60 {
        for got in receive(e, per_receive).await {
            let to = if got.message == head {
                OrderStatus::Confirmed
            } else {
                match got.message.command {
                    Command::Transition { status, .. } => status,
                    _ => panic!("{got:?}"),
                }
            };
            let change = change_to(e, "o1", to).await;
            match e.apply(&got, Some(&change)).await.unwrap() {
                ApplyOutcome::Applied { .. } => applied.push(got.message.message_id.clone()),
                ApplyOutcome::Blocked => e.release(&got).await.unwrap(),
                other => panic!("{other:?}"),
            }
        }
        let dead = e.dead_letters(10).await.unwrap();
        if round == 0 {
            assert!(
                dead.is_empty(),
                "dead-lettered while waiting behind {:?}: {dead:?}",
                [&head.message_id, &t1.message_id]
            );
        }
        if !dead.is_empty() {
            break;
        }
        // Its delivery expires after the visibility timeout (the waiting t3 is released at
        // once, so a receive does not wait).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(applied, [head.message_id.clone(), t1.message_id.clone()]);
    let dead = e.dead_letters(10).await.unwrap();
    assert_eq!(dead_ids(&dead), [&t2.message_id, &t3.message_id]);
    assert!(
        dead[0].reason.starts_with("undecodable"),
        "{}",
        dead[0].reason
    );
    assert_eq!(dead[1].reason, dead_behind(&t2.message_id));
}

/// Issue 12 item 7 (c): redrive moves all of an order's dead letters at once (past the
/// limit) and puts them in front of the order's FIFO in their original order, ahead of the
/// command queued for the order while they were dead.
async fn redrive_puts_an_orders_dead_letters_back_in_order_ahead_of_its_newer_commands(h: Harness) {
    let e = &h.engine;
    let head = accept(e, "o1").await;
    let t1 = transition("o1", OrderStatus::Preparing);
    let t2 = transition("o1", OrderStatus::Shipped);
    for t in [&t1, &t2] {
        e.enqueue_command(t, None).await.unwrap();
    }
    release_until_dead(e).await;
    let newer = transition("o1", OrderStatus::Cancelled);
    e.enqueue_command(&newer, None).await.unwrap();
    assert_eq!(
        e.redrive(1).await.unwrap(),
        3,
        "an order's dead letters move together"
    );
    assert!(e.dead_letters(10).await.unwrap().is_empty());
    let mut done = Vec::new();
    for _ in 0..30 {
        if done.len() == 4 {
            break;
        }
        for got in receive(e, 10).await {
            match e.apply(&got, None).await.unwrap() {
                ApplyOutcome::Applied { .. } => done.push(got.message.message_id.clone()),
                ApplyOutcome::Blocked => e.release(&got).await.unwrap(),
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(
        done,
        [
            head.message_id.clone(),
            t1.message_id.clone(),
            t2.message_id.clone(),
            newer.message_id
        ]
    );
    assert!(e.dead_letters(10).await.unwrap().is_empty());
}

async fn different_orders_are_received_together(h: Harness) {
    let e = &h.engine;
    for i in 0..5 {
        accept(e, &format!("o{i}")).await;
    }
    let batch = receive(e, 10).await;
    assert_eq!(batch.len(), 5);
    for got in &batch {
        let change = change_to(e, &got.message.order_id, OrderStatus::Confirmed).await;
        assert!(matches!(
            e.apply(got, Some(&change)).await.unwrap(),
            ApplyOutcome::Applied { .. }
        ));
    }
}

async fn a_batch_applies_each_command_in_order_as_apply_would(h: Harness) {
    let e = &h.engine;
    for id in ["o1", "o2", "o3"] {
        accept(e, id).await;
    }
    let cancel = transition("o1", OrderStatus::Cancelled);
    e.enqueue_command(&cancel, None).await.unwrap();
    let mut got = receive(e, 10).await;
    assert_eq!(got.len(), 4);
    // In the order they were queued (orders of different partitions come in no set order;
    // one order's commands keep theirs).
    got.sort_by_key(|c| {
        let index = ["o1", "o2", "o3"]
            .iter()
            .position(|id| *id == c.message.order_id)
            .unwrap();
        match c.message.command {
            Command::ProcessOrder { .. } => index,
            Command::Transition { .. } | Command::Step { .. } => 3,
        }
    });
    let status = e.order_status("o1").await.unwrap().unwrap();
    let confirm = herald::workflow::status_change(&status, OrderStatus::Confirmed, None);
    // Decided on what the batch's first command leaves: the script must see it.
    let mut confirmed = status.clone();
    (confirmed.status, confirmed.version) = (OrderStatus::Confirmed, 2);
    let cancelled = herald::workflow::status_change(&confirmed, OrderStatus::Cancelled, None);
    let confirm_o2 = change_to(e, "o2", OrderStatus::Confirmed).await;
    let mut stale = e.order_status("o3").await.unwrap().unwrap();
    stale.version = 7;
    let stale = herald::workflow::status_change(&stale, OrderStatus::Confirmed, None);
    let outcomes = e
        .apply_batch(&[
            (&got[0], Some(&confirm)),
            (&got[1], Some(&confirm_o2)),
            (&got[2], Some(&stale)),
            (&got[3], Some(&cancelled)),
        ])
        .await
        .unwrap();
    let outcomes: Vec<ApplyOutcome> = outcomes.into_iter().map(|o| o.unwrap()).collect();
    assert!(matches!(
        outcomes[0],
        ApplyOutcome::Applied { event_id: Some(_) }
    ));
    assert!(matches!(
        outcomes[1],
        ApplyOutcome::Applied { event_id: Some(_) }
    ));
    assert_eq!(outcomes[2], ApplyOutcome::Stale { current_version: 1 });
    assert!(matches!(
        outcomes[3],
        ApplyOutcome::Applied { event_id: Some(_) }
    ));
    let o1 = e.order_status("o1").await.unwrap().unwrap();
    assert_eq!((o1.status, o1.version), (OrderStatus::Cancelled, 3));
    let statuses: Vec<_> = events(e)
        .await
        .iter()
        .filter(|e| e.event.status != OrderStatus::Accepted)
        .map(|e| (e.event.order_id.clone(), e.event.status))
        .collect();
    if e.partitions() == 1 {
        assert_eq!(
            statuses,
            [
                ("o1".to_string(), OrderStatus::Confirmed),
                ("o2".to_string(), OrderStatus::Confirmed),
                ("o1".to_string(), OrderStatus::Cancelled),
            ]
        );
    } else {
        // Each partition's commands apply concurrently, and the log merges partitions by
        // entry id: only one order's events have a set order (o1 and o2 may be in two).
        let of = |id: &str| {
            statuses
                .iter()
                .filter(|(order, _)| order == id)
                .map(|(_, status)| *status)
                .collect::<Vec<_>>()
        };
        assert_eq!(statuses.len(), 3, "{statuses:?}");
        assert_eq!(of("o1"), [OrderStatus::Confirmed, OrderStatus::Cancelled]);
        assert_eq!(of("o2"), [OrderStatus::Confirmed]);
    }
    // Delivered again, the finished ones are done and write nothing; o3 is still to do.
    let outcomes = e
        .apply_batch(&[(&got[0], Some(&confirm)), (&got[2], None)])
        .await
        .unwrap();
    let outcomes: Vec<ApplyOutcome> = outcomes.into_iter().map(|o| o.unwrap()).collect();
    assert_eq!(
        outcomes,
        [
            ApplyOutcome::AlreadyDone,
            ApplyOutcome::Applied { event_id: None }
        ]
    );
    assert_eq!(events(e).await.len(), 6);
    let stats = e.queue_stats().await.unwrap();
    assert_eq!((stats.visible, stats.in_flight), (0, 0));
}

async fn a_batch_blocks_a_command_listed_before_its_orders_earlier_one(h: Harness) {
    let e = &h.engine;
    accept(e, "o1").await;
    let cancel = transition("o1", OrderStatus::Cancelled);
    e.enqueue_command(&cancel, None).await.unwrap();
    let got = receive(e, 10).await;
    assert_eq!(got.len(), 2);
    let status = e.order_status("o1").await.unwrap().unwrap();
    let cancelled = herald::workflow::status_change(&status, OrderStatus::Cancelled, None);
    let outcomes = e
        .apply_batch(&[(&got[1], Some(&cancelled)), (&got[0], None)])
        .await
        .unwrap();
    let outcomes: Vec<ApplyOutcome> = outcomes.into_iter().map(|o| o.unwrap()).collect();
    assert_eq!(
        outcomes,
        [
            ApplyOutcome::Blocked,
            ApplyOutcome::Applied { event_id: None }
        ]
    );
    assert_eq!(e.order_status("o1").await.unwrap().unwrap().version, 1);
    assert!(matches!(
        e.apply(&got[1], Some(&cancelled)).await.unwrap(),
        ApplyOutcome::Applied { event_id: Some(_) }
    ));
}

async fn change_on_a_stale_version_is_refused_and_writes_nothing(h: Harness) {
    let e = &h.engine;
    accept(e, "o1").await;
    let got = receive_one(e).await;
    let status = e.order_status("o1").await.unwrap().unwrap();
    let mut stale = status.clone();
    stale.version = 7;
    let change = herald::workflow::status_change(&stale, OrderStatus::Confirmed, None);
    assert_eq!(
        e.apply(&got, Some(&change)).await.unwrap(),
        ApplyOutcome::Stale { current_version: 1 }
    );
    assert_eq!(events(e).await.len(), 1);
    let change = herald::workflow::status_change(&status, OrderStatus::Confirmed, None);
    assert!(matches!(
        e.apply(&got, Some(&change)).await.unwrap(),
        ApplyOutcome::Applied { .. }
    ));
}

async fn acknowledging_without_change_completes_the_command(h: Harness) {
    let e = &h.engine;
    accept(e, "o1").await;
    let got = receive_one(e).await;
    assert_eq!(
        e.apply(&got, None).await.unwrap(),
        ApplyOutcome::Applied { event_id: None }
    );
    assert_eq!(events(e).await.len(), 1);
    tokio::time::sleep(VISIBILITY + Duration::from_millis(150)).await;
    assert!(receive(e, 10).await.is_empty(), "acknowledged for good");
    let stats = e.queue_stats().await.unwrap();
    assert_eq!((stats.visible, stats.in_flight), (0, 0));
}

async fn enqueue_for_unknown_order_is_refused(h: Harness) {
    let e = &h.engine;
    let outcome = e
        .enqueue_command(&transition("nope", OrderStatus::Cancelled), None)
        .await
        .unwrap();
    assert_eq!(outcome, EnqueueOutcome::UnknownOrder);
    assert!(receive(e, 10).await.is_empty());
}

async fn history_is_capped_oldest_first(h: Harness) {
    let e = &h.engine;
    accept(e, "o1").await;
    let path = [
        OrderStatus::Confirmed,
        OrderStatus::Preparing,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
    ];
    // The engine does not judge transitions (the worker does): walk the whole path, five
    // entries with `accepted`, which is exactly the cap.
    let first = receive_one(e).await;
    let change = change_to(e, "o1", path[0]).await;
    e.apply(&first, Some(&change)).await.unwrap();
    for to in &path[1..] {
        e.enqueue_command(&transition("o1", *to), None)
            .await
            .unwrap();
        let got = receive_one(e).await;
        let change = change_to(e, "o1", *to).await;
        e.apply(&got, Some(&change)).await.unwrap();
    }
    let record = e.order("o1").await.unwrap().unwrap();
    assert_eq!(record.history.len(), 5);
    // One more change pushes the oldest (accepted) out.
    e.enqueue_command(&transition("o1", OrderStatus::Cancelled), None)
        .await
        .unwrap();
    let got = receive_one(e).await;
    let change = change_to(e, "o1", OrderStatus::Cancelled).await;
    e.apply(&got, Some(&change)).await.unwrap();
    let record = e.order("o1").await.unwrap().unwrap();
    let versions: Vec<u64> = record.history.iter().map(|h| h.version).collect();
    assert_eq!(versions, vec![2, 3, 4, 5, 6]);
}

/// The start of every partition of `e`'s log.
fn start(e: &Arc<dyn Engine>) -> LogCursor {
    LogCursor::start(e.partitions())
}

/// The start of every partition but `partition`, which is at `id`.
fn at(e: &Arc<dyn Engine>, partition: usize, id: EventId) -> LogCursor {
    let mut cursor = start(e);
    cursor.advance(partition, id);
    cursor
}

/// One order's events all live in one partition: ids increase there, and a cursor in it reads
/// on from exactly there.
async fn event_log_reads_after_a_cursor_in_order(h: Harness) {
    let e = &h.engine;
    let o = order("o1");
    let mut ids = Vec::new();
    let mut partitions = Vec::new();
    for _ in 0..5 {
        let (partition, id) = e
            .append_raw_event(&accepted_event(&o).to_json())
            .await
            .unwrap();
        partitions.push(partition);
        ids.push(id);
    }
    let p = partition_of("o1", e.partitions());
    assert!(partitions.iter().all(|x| *x == p), "{partitions:?}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    assert_eq!(e.log_end().await.unwrap(), at(e, p, ids[4]));
    assert_eq!(e.first_event_id(p).await.unwrap(), Some(ids[0]));
    let after = e
        .read_events(&at(e, p, ids[1]), 2, Duration::ZERO)
        .await
        .unwrap();
    let got: Vec<EventId> = after.iter().map(|x| x.id().unwrap()).collect();
    assert_eq!(got, vec![ids[2], ids[3]]);
    assert!(after.iter().all(|x| x.partition() == p));
    assert!(
        e.read_events(&at(e, p, ids[4]), 10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Events of several orders: every one comes back from the start, in its order's partition.
async fn read_from_the_start_returns_every_event_in_its_orders_partition(h: Harness) {
    let e = &h.engine;
    let partitions = e.partitions();
    let mut appended = Vec::new();
    for i in 0..12 {
        let order_id = format!("order-{i}");
        let (partition, id) = append_event_at(e, &order_id).await;
        assert_eq!(partition, partition_of(&order_id, partitions), "{order_id}");
        appended.push((order_id, partition, id));
    }
    let entries = e
        .read_events(&start(e), 1000, Duration::ZERO)
        .await
        .unwrap();
    let mut read = Vec::new();
    for entry in entries {
        let LogEntry::Event(event) = entry else {
            panic!("only events were appended: {entry:?}")
        };
        assert_eq!(
            event.partition,
            partition_of(&event.event.order_id, partitions),
            "{}",
            event.event.order_id
        );
        read.push((
            event.event.order_id.clone(),
            event.partition,
            event.event_id.parse::<EventId>().unwrap(),
        ));
    }
    read.sort();
    appended.sort();
    assert_eq!(read, appended);
}

/// A reader that advanced its cursor through the first k entries it was given reads exactly
/// the rest: no gap, no duplicate, whatever k.
async fn resuming_after_the_first_entries_read_returns_exactly_the_rest(h: Harness) {
    let e = &h.engine;
    for i in 0..20 {
        append_event_at(e, &format!("order-{}", i % 7)).await;
    }
    let all: Vec<(usize, EventId)> = e
        .read_events(&start(e), 1000, Duration::ZERO)
        .await
        .unwrap()
        .iter()
        .map(|x| (x.partition(), x.id().unwrap()))
        .collect();
    assert_eq!(all.len(), 20);
    for k in [0, 1, 2, 7, 13, 19, 20] {
        let mut cursor = start(e);
        for (partition, id) in &all[..k] {
            cursor.advance(*partition, *id);
        }
        // Through the cursor's text, as a client hands it back.
        let cursor = LogCursor::parse(&cursor.to_string(), e.partitions()).unwrap();
        let rest: Vec<(usize, EventId)> = e
            .read_events(&cursor, 1000, Duration::ZERO)
            .await
            .unwrap()
            .iter()
            .map(|x| (x.partition(), x.id().unwrap()))
            .collect();
        assert_eq!(rest, all[k..], "after the first {k}");
        // In steps of a few, as a reader with a small batch would.
        let mut stepped = Vec::new();
        let mut cursor = cursor;
        loop {
            let page = e.read_events(&cursor, 3, Duration::ZERO).await.unwrap();
            if page.is_empty() {
                break;
            }
            for x in page {
                cursor.advance(x.partition(), x.id().unwrap());
                stepped.push((x.partition(), x.id().unwrap()));
            }
        }
        // Pages may interleave partitions differently from one big read (an engine may read
        // up to `max` per partition); what counts is every entry once, each partition in order.
        let by_partition = |entries: &[(usize, EventId)]| {
            let mut split = vec![Vec::new(); e.partitions()];
            for (partition, id) in entries {
                split[*partition].push(*id);
            }
            split
        };
        assert_eq!(
            by_partition(&stepped),
            by_partition(&all[k..]),
            "in steps, after the first {k}"
        );
    }
}

async fn reading_from_the_log_end_returns_nothing(h: Harness) {
    let e = &h.engine;
    assert_eq!(e.log_end().await.unwrap(), start(e), "empty log");
    for i in 0..9 {
        append_event_at(e, &format!("order-{i}")).await;
    }
    let end = e.log_end().await.unwrap();
    assert_eq!(end.partitions(), e.partitions());
    assert!(
        e.read_events(&end, 100, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    // A partition read from the greatest id is skipped: that is how a replay stops reading a
    // partition it is done with while it reads on in the others.
    let past = EventId {
        ms: u64::MAX,
        seq: u64::MAX,
    };
    assert!(
        e.read_events(
            &LogCursor::uniform(e.partitions(), past),
            100,
            Duration::ZERO
        )
        .await
        .unwrap()
        .is_empty()
    );
    let p = partition_of("order-0", e.partitions());
    let only_p = LogCursor::from_positions(
        (0..e.partitions())
            .map(|k| if k == p { EventId::ZERO } else { past })
            .collect(),
    );
    let got = e.read_events(&only_p, 100, Duration::ZERO).await.unwrap();
    assert!(!got.is_empty());
    assert!(got.iter().all(|x| x.partition() == p), "{got:?}");
}

async fn waiting_reader_wakes_when_an_event_is_appended(h: Harness) {
    let e = h.engine.clone();
    let end = e.log_end().await.unwrap();
    let reader = {
        let e = e.clone();
        tokio::spawn(async move { e.read_events(&end, 10, Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let o = order("o1");
    let (partition, id) = e
        .append_raw_event(&accepted_event(&o).to_json())
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(3), reader)
        .await
        .expect("reader woke before its wait ran out")
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id().unwrap(), id);
    assert_eq!(got[0].partition(), partition);
}

async fn malformed_entries_are_reported_not_fatal_and_set_aside_once(h: Harness) {
    let e = &h.engine;
    let bad = e.append_raw_event("{not json").await.unwrap();
    let wrong = e
        .append_raw_event(r#"{"type":"order.shipped","orderId":"o","customerId":"c","status":"accepted","version":1,"occurredAt":"2026-01-01T00:00:00Z"}"#)
        .await
        .unwrap();
    let o = order("o1");
    let good = e
        .append_raw_event(&accepted_event(&o).to_json())
        .await
        .unwrap();
    let entries = e.read_events(&start(e), 10, Duration::ZERO).await.unwrap();
    assert_eq!(entries.len(), 3);
    // Entries of different partitions come back by id, not by the order they were appended
    // in: each is found by its (partition, id).
    let find = |(partition, id): (usize, EventId)| {
        entries
            .iter()
            .find(|x| x.partition() == partition && x.id() == Ok(id))
            .unwrap_or_else(|| panic!("{partition}/{id} in {entries:?}"))
    };
    let name = |(partition, id): (usize, EventId)| qualified_entry_id(partition, &id.to_string());
    let LogEntry::Malformed(m1) = find(bad) else {
        panic!("{:?}", find(bad))
    };
    assert_eq!(m1.entry_id, name(bad));
    assert_eq!(m1.raw, "{not json");
    let LogEntry::Malformed(m2) = find(wrong) else {
        panic!("{:?}", find(wrong))
    };
    assert_eq!(m2.entry_id, name(wrong));
    assert!(m2.error.contains("does not match"), "{}", m2.error);
    let LogEntry::Event(ev) = find(good) else {
        panic!("{:?}", find(good))
    };
    assert_eq!(ev.event.order_id, "o1");
    e.set_aside(m1).await.unwrap();
    e.set_aside(m1).await.unwrap();
    e.set_aside(m2).await.unwrap();
    let aside = e.malformed_entries(10).await.unwrap();
    assert_eq!(aside, vec![m1.clone(), m2.clone()]);
}

async fn event_log_keeps_only_the_retention_window(h: Harness) {
    let e = &h.engine;
    let o = order("o1");
    let raw = accepted_event(&o).to_json();
    let p = partition_of("o1", e.partitions());
    let mut ids = Vec::new();
    for _ in 0..400 {
        ids.push(e.append_raw_event(&raw).await.unwrap().1);
    }
    let first = e.first_event_id(p).await.unwrap().unwrap();
    assert!(first > ids[0], "old entries trimmed");
    // Redis trims approximately (MAXLEN ~), never below the retention.
    let kept = e
        .read_events(&start(e), 1000, Duration::ZERO)
        .await
        .unwrap()
        .len();
    assert!(
        kept >= h.settings.event_retention as usize && kept < 400,
        "kept {kept}"
    );
}

async fn removed_after_reports_entries_trimmed_before_a_reader_read_them(h: Harness) {
    let e = &h.engine;
    assert_eq!(e.removed_after(&start(e)).await.unwrap(), [], "empty log");
    let o = order("o1");
    let raw = accepted_event(&o).to_json();
    let (p, first) = e.append_raw_event(&raw).await.unwrap();
    assert_eq!(e.removed_after(&start(e)).await.unwrap(), []);
    assert_eq!(
        e.removed_after(&at(e, p, first)).await.unwrap(),
        [],
        "nothing removed yet"
    );
    let mut ids = vec![first];
    for _ in 0..400 {
        ids.push(e.append_raw_event(&raw).await.unwrap().1);
    }
    let oldest = e.first_event_id(p).await.unwrap().unwrap();
    assert!(oldest > ids[1], "entries were trimmed");
    // A reader at the first entry lost what followed it, up to the oldest retained, in the
    // order's partition only.
    let removed = e.removed_after(&at(e, p, first)).await.unwrap();
    let [(partition, through)] = removed[..] else {
        panic!("the loss is reported, in one partition: {removed:?}")
    };
    assert_eq!(partition, p);
    assert!(
        through >= ids[1] && through < oldest,
        "{through} vs {oldest}"
    );
    // Readers on retained entries lost nothing.
    assert_eq!(e.removed_after(&at(e, p, oldest)).await.unwrap(), []);
    assert_eq!(e.removed_after(&at(e, p, ids[400])).await.unwrap(), []);
}

async fn idempotency_key_is_claimed_once_then_replayed(h: Harness) {
    let e = &h.engine;
    let ttl = Duration::from_secs(60);
    assert!(matches!(
        e.begin_idempotent("admin:k1", None, "fp1", ttl)
            .await
            .unwrap(),
        IdempotencyBegin::Started { .. }
    ));
    assert_eq!(
        e.begin_idempotent("admin:k1", None, "fp2", ttl)
            .await
            .unwrap(),
        IdempotencyBegin::InFlight {
            fingerprint: "fp1".into()
        }
    );
    let o = order("o1");
    let response = IdempotentResponse {
        key: "admin:k1".into(),
        fingerprint: "fp1".into(),
        status: 202,
        body: serde_json::json!({"orderId": "o1"}),
        ttl,
        claim: String::new(),
    };
    e.accept_order(
        &o,
        &accepted_event(&o),
        &command("o1", process(&o)),
        Some(&response),
    )
    .await
    .unwrap();
    match e
        .begin_idempotent("admin:k1", None, "fp1", ttl)
        .await
        .unwrap()
    {
        IdempotencyBegin::Completed(r) => {
            assert_eq!(r.status, 202);
            assert_eq!(r.fingerprint, "fp1");
            assert_eq!(r.body, response.body);
        }
        other => panic!("expected a completed record, got {other:?}"),
    }
    // Abandoning a completed key changes nothing.
    e.abandon_idempotent("admin:k1").await.unwrap();
    assert!(matches!(
        e.begin_idempotent("admin:k1", None, "fp1", ttl)
            .await
            .unwrap(),
        IdempotencyBegin::Completed(_)
    ));
}

async fn abandoned_idempotency_key_can_be_claimed_again(h: Harness) {
    let e = &h.engine;
    let ttl = Duration::from_secs(60);
    e.begin_idempotent("admin:k2", None, "fp", ttl)
        .await
        .unwrap();
    e.abandon_idempotent("admin:k2").await.unwrap();
    assert!(matches!(
        e.begin_idempotent("admin:k2", None, "fp", ttl)
            .await
            .unwrap(),
        IdempotencyBegin::Started { .. }
    ));
    // An in-flight claim that is never completed expires.
    e.begin_idempotent("admin:k3", None, "fp", Duration::from_millis(200))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(matches!(
        e.begin_idempotent("admin:k3", None, "fp", ttl)
            .await
            .unwrap(),
        IdempotencyBegin::Started { .. }
    ));
}

async fn queue_stats_count_visible_in_flight_and_dead(h: Harness) {
    let e = &h.engine;
    for i in 0..3 {
        accept(e, &format!("o{i}")).await;
    }
    assert_eq!(
        e.queue_stats().await.unwrap(),
        QueueStats {
            visible: 3,
            in_flight: 0,
            dead_letters: 0
        }
    );
    // One asked for: one, or with several partitions up to one from each.
    let got = receive(e, 1).await;
    let n = got.len() as u64;
    assert!(n >= 1 && n <= e.partitions() as u64, "{n} received");
    assert_eq!(
        e.queue_stats().await.unwrap(),
        QueueStats {
            visible: 3 - n,
            in_flight: n,
            dead_letters: 0
        }
    );
}

async fn a_second_consumer_takes_over_expired_work(h: Harness) {
    let e = &h.engine;
    let other = h.second_consumer().await;
    accept(e, "o1").await;
    let first = receive_one(e).await;
    // The first consumer dies without acknowledging; the second claims it after the timeout.
    assert!(receive(&other, 10).await.is_empty());
    tokio::time::sleep(VISIBILITY + Duration::from_millis(150)).await;
    let taken = receive_one(&other).await;
    assert_eq!(taken.message, first.message);
    let change = change_to(&other, "o1", OrderStatus::Confirmed).await;
    assert!(matches!(
        other.apply(&taken, Some(&change)).await.unwrap(),
        ApplyOutcome::Applied { .. }
    ));
    // The first consumer's late completion changes nothing.
    assert_eq!(
        e.apply(&first, Some(&change)).await.unwrap(),
        ApplyOutcome::AlreadyDone
    );
    assert_eq!(events(e).await.len(), 2);
}

// ---- Webhook store (DESIGN 1.5) ----
//
// Times are plain numbers chosen by the tests (the engine never reads a clock for them), so
// the schedule and the endpoint health are checked without sleeping.

const LONG_LEASE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

fn endpoint(id: &str) -> Endpoint {
    Endpoint {
        id: id.into(),
        partner_id: Some("acme".into()),
        url: format!("https://hooks.example.com/{id}"),
        description: None,
        event_types: Vec::new(),
        enabled: true,
        disabled_reason: None,
        rate_limit_per_second: None,
        max_in_flight: Some(4),
        secrets: vec![EndpointSecret {
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            expires_at_ms: None,
        }],
        created_at_ms: 1_000,
        updated_at_ms: 1_000,
        failing_since_ms: None,
        ordering: Ordering::None,
    }
}

fn delivery(id: &str, endpoint_id: &str, created_at_ms: u64, due_ms: u64) -> Delivery {
    Delivery {
        id: id.into(),
        endpoint_id: endpoint_id.into(),
        partner_id: Some("acme".into()),
        event_id: format!("{created_at_ms}-0"),
        event_type: "order.shipped".into(),
        body: r#"{"type":"order.shipped","timestamp":"2026-01-01T00:00:00Z","data":{"orderId":"o/1 é"}}"#
            .into(),
        state: DeliveryState::Pending,
        attempts: 0,
        created_at_ms,
        updated_at_ms: created_at_ms,
        next_attempt_at_ms: Some(due_ms),
        last_status_code: None,
        order_line: None,
    }
}

fn attempt(number: u32, at_ms: u64, status_code: Option<u16>) -> Attempt {
    Attempt {
        number,
        at_ms,
        status_code,
        latency_ms: 12,
        error: status_code
            .is_none()
            .then(|| "connection refused".to_string()),
        response: "ok".into(),
    }
}

/// Stores deliveries as the dispatcher does, for an event that was never claimed.
async fn create(e: &Arc<dyn Engine>, deliveries: &[Delivery]) {
    e.create_deliveries(&[(0, EventId { ms: 1, seq: 0 })], deliveries)
        .await
        .unwrap();
}

/// Takes due deliveries, as the sender does.
async fn claim(e: &Arc<dyn Engine>, now_ms: u64, max: usize, lease: Duration) -> Vec<DueDelivery> {
    e.claim_due(now_ms, max, lease).await.unwrap().due
}

trait Id {
    fn id(&self) -> &str;
}

impl Id for Delivery {
    fn id(&self) -> &str {
        &self.id
    }
}

impl Id for DueDelivery {
    fn id(&self) -> &str {
        &self.id
    }
}

fn ids<D: Id>(deliveries: &[D]) -> Vec<&str> {
    deliveries.iter().map(Id::id).collect()
}

/// The (partition, entry id) of each entry, sorted: with several partitions, entries of
/// different orders come oldest first by entry id, which says nothing of the order they were
/// appended in when they share a millisecond.
fn entry_ids(entries: &[LogEntry]) -> Vec<(usize, EventId)> {
    let mut ids: Vec<_> = entries
        .iter()
        .map(|e| (e.partition(), e.id().unwrap()))
        .collect();
    ids.sort();
    ids
}

/// `ids`, sorted, to compare with [`entry_ids`].
fn sorted<const N: usize>(ids: [(usize, EventId); N]) -> Vec<(usize, EventId)> {
    let mut ids = ids.to_vec();
    ids.sort();
    ids
}

async fn append_event(e: &Arc<dyn Engine>, order_id: &str) -> (usize, EventId) {
    append_event_at(e, order_id).await
}

/// Appends an event of `order_id`: its partition and entry id.
async fn append_event_at(e: &Arc<dyn Engine>, order_id: &str) -> (usize, EventId) {
    e.append_raw_event(&accepted_event(&order(order_id)).to_json())
        .await
        .unwrap()
}

async fn endpoints_are_stored_listed_replaced_and_deleted(h: Harness) {
    let e = &h.engine;
    let mut b = endpoint("ep_b");
    b.partner_id = None;
    b.event_types = vec!["order.shipped".into(), "order.*".into()];
    b.secrets.push(EndpointSecret {
        secret: "whsec_b2xkIHNlY3JldCBrZXB0IGZvciBhIGRheQ==".into(),
        expires_at_ms: Some(90_000),
    });
    let a = endpoint("ep_a");
    e.put_endpoint(&b).await.unwrap();
    e.put_endpoint(&a).await.unwrap();
    assert_eq!(e.endpoint("ep_b").await.unwrap(), Some(b.clone()));
    assert_eq!(e.endpoints().await.unwrap(), vec![a.clone(), b.clone()]);

    let mut replaced = a.clone();
    replaced.url = "https://other.example.com/hook".into();
    replaced.updated_at_ms = 2_000;
    e.put_endpoint(&replaced).await.unwrap();
    assert_eq!(e.endpoint("ep_a").await.unwrap(), Some(replaced));

    assert!(e.delete_endpoint("ep_a").await.unwrap());
    assert!(!e.delete_endpoint("ep_a").await.unwrap());
    assert_eq!(e.endpoint("ep_a").await.unwrap(), None);
    assert_eq!(e.endpoints().await.unwrap(), vec![b]);
}

async fn every_endpoint_write_moves_the_endpoints_version_forward(h: Harness) {
    let e = &h.engine;
    let other = h.second_consumer().await;
    let mut seen = e.endpoints_version().await.unwrap();
    let mut moved = async || {
        // Seen alike by another node.
        let now = other.endpoints_version().await.unwrap();
        assert!(now > seen, "{now} after {seen}");
        seen = now;
    };
    e.put_endpoint(&endpoint("ep_1")).await.unwrap();
    moved().await;
    let mut changed = endpoint("ep_1");
    changed.url = "https://other.example.com/hook".into();
    e.put_endpoint(&changed).await.unwrap();
    moved().await;
    create(e, &[delivery("msg_1", "ep_1", 100, 100)]).await;
    let gone = AttemptOutcome::Gone("endpoint answered 410 Gone".into());
    e.finish_attempt("msg_1", &attempt(1, 150, Some(410)), &gone, DAY)
        .await
        .unwrap();
    moved().await;
    assert!(e.delete_endpoint("ep_1").await.unwrap());
    moved().await;
}

async fn deleting_an_endpoint_takes_its_deliveries_off_the_schedule(h: Harness) {
    let e = &h.engine;
    e.put_endpoint(&endpoint("ep_1")).await.unwrap();
    e.put_endpoint(&endpoint("ep_2")).await.unwrap();
    create(
        e,
        &[
            delivery("msg_1", "ep_1", 100, 100),
            delivery("msg_2", "ep_2", 100, 200),
        ],
    )
    .await;
    assert!(e.delete_endpoint("ep_1").await.unwrap());
    assert_eq!(e.next_due_ms().await.unwrap(), Some(200));
    let due = claim(e, 1_000, 10, LONG_LEASE).await;
    assert_eq!(ids(&due), ["msg_2"]);
}

async fn claimed_events_are_not_handed_out_again_once_deliveries_are_created(h: Harness) {
    let e = &h.engine;
    let first = append_event(e, "o1").await;
    let second = append_event(e, "o2").await;
    let reclaim = Duration::from_millis(200);
    let got = e
        .claim_events("n1", 10, Duration::ZERO, reclaim)
        .await
        .unwrap();
    assert_eq!(entry_ids(&got), sorted([first, second]));
    e.put_endpoint(&endpoint("ep_1")).await.unwrap();
    e.create_deliveries(&[first], &[delivery("msg_1", "ep_1", 100, 100)])
        .await
        .unwrap();
    // No matching endpoint: an empty list acknowledges all the same.
    e.create_deliveries(&[second], &[]).await.unwrap();
    tokio::time::sleep(reclaim + Duration::from_millis(100)).await;
    let again = e
        .claim_events("n2", 10, Duration::ZERO, reclaim)
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(ids(&claim(e, 100, 10, LONG_LEASE).await), ["msg_1"]);
}

async fn one_create_call_stores_a_batch_and_acknowledges_every_event_of_it(h: Harness) {
    let e = &h.engine;
    let other = h.second_consumer().await;
    let first = append_event(e, "o1").await;
    let unwanted = append_event(e, "o2").await;
    let third = append_event(e, "o3").await;
    let reclaim = Duration::from_millis(200);
    let got = e
        .claim_events("n1", 10, Duration::ZERO, reclaim)
        .await
        .unwrap();
    assert_eq!(entry_ids(&got), sorted([first, unwanted, third]));
    e.put_endpoint(&endpoint("ep_1")).await.unwrap();
    e.put_endpoint(&endpoint("ep_2")).await.unwrap();
    let mut batch = vec![
        delivery("msg_1", "ep_1", 100, 100),
        delivery("msg_2", "ep_2", 100, 200),
        delivery("msg_3", "ep_1", 300, 300),
    ];
    let mut failed = delivery("msg_4", "ep_2", 400, 400);
    failed.state = DeliveryState::Failed;
    failed.next_attempt_at_ms = None;
    batch.push(failed);
    // `unwanted` makes no delivery: it is acknowledged in the same call all the same.
    e.create_deliveries(&[first, unwanted, third], &batch)
        .await
        .unwrap();
    tokio::time::sleep(reclaim + Duration::from_millis(100)).await;
    let again = other
        .claim_events("n2", 10, Duration::ZERO, reclaim)
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(
        ids(&claim(e, 1_000, 10, LONG_LEASE).await),
        ["msg_1", "msg_2", "msg_3"]
    );
    assert_eq!(
        e.delivery("msg_4").await.unwrap().unwrap().state,
        DeliveryState::Failed
    );
    assert_eq!(e.recover_failed("ep_2", 0, 5_000).await.unwrap(), 1);
    // The same batch again (a node died before its answer arrived): nothing changes.
    e.create_deliveries(&[first, unwanted, third], &batch)
        .await
        .unwrap();
    assert_eq!(e.next_due_ms().await.unwrap(), Some(5_000));
    // A batch with no delivery at all acknowledges its events.
    let fourth = append_event(e, "o4").await;
    let fifth = append_event(e, "o5").await;
    let got = e
        .claim_events("n1", 10, Duration::ZERO, reclaim)
        .await
        .unwrap();
    assert_eq!(entry_ids(&got), sorted([fourth, fifth]));
    e.create_deliveries(&[fourth, fifth], &[]).await.unwrap();
    tokio::time::sleep(reclaim + Duration::from_millis(100)).await;
    let again = other
        .claim_events("n2", 10, Duration::ZERO, reclaim)
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
}

async fn enqueued_deliveries_are_scheduled_and_acknowledge_no_event(h: Harness) {
    let e = &h.engine;
    let other = h.second_consumer().await;
    let pending = append_event(e, "o1").await;
    let reclaim = Duration::from_millis(200);
    let got = e
        .claim_events("n1", 10, Duration::ZERO, reclaim)
        .await
        .unwrap();
    assert_eq!(entry_ids(&got), sorted([pending]));
    e.put_endpoint(&endpoint("ep_1")).await.unwrap();
    e.enqueue_deliveries(&[delivery("notice_1", "ep_1", 100, 100)])
        .await
        .unwrap();
    // Enqueued again (the notice retried): the first is kept.
    e.enqueue_deliveries(&[delivery("notice_1", "ep_1", 100, 900)])
        .await
        .unwrap();
    assert_eq!(ids(&claim(e, 100, 10, LONG_LEASE).await), ["notice_1"]);
    // The claimed event was not acknowledged by it: another node takes it over in time.
    tokio::time::sleep(reclaim + Duration::from_millis(100)).await;
    let taken = other
        .claim_events("n2", 10, Duration::ZERO, reclaim)
        .await
        .unwrap();
    assert_eq!(entry_ids(&taken), sorted([pending]));
}

async fn unacknowledged_event_is_reclaimed_by_another_consumer_after_reclaim_after(h: Harness) {
    let e = &h.engine;
    let other = h.second_consumer().await;
    let id = append_event(e, "o1").await;
    let reclaim = Duration::from_millis(300);
    let got = e
        .claim_events("n1", 10, Duration::ZERO, reclaim)
        .await
        .unwrap();
    assert_eq!(entry_ids(&got), sorted([id]));
    // n1 dies without creating the deliveries. Not before `reclaim_after`...
    let early = other
        .claim_events("n2", 10, Duration::ZERO, reclaim)
        .await
        .unwrap();
    assert!(early.is_empty(), "{early:?}");
    // ...but after it, another node takes it over.
    tokio::time::sleep(reclaim + Duration::from_millis(100)).await;
    let taken = other
        .claim_events("n2", 10, Duration::ZERO, reclaim)
        .await
        .unwrap();
    assert_eq!(entry_ids(&taken), sorted([id]));
    other.create_deliveries(&[id], &[]).await.unwrap();
    tokio::time::sleep(reclaim + Duration::from_millis(100)).await;
    assert!(
        e.claim_events("n1", 10, Duration::ZERO, reclaim)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn waiting_dispatcher_wakes_when_an_event_is_appended(h: Harness) {
    let e = h.engine.clone();
    let waiter = tokio::spawn({
        let e = e.clone();
        async move {
            e.claim_events("n1", 10, Duration::from_secs(5), DAY)
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = std::time::Instant::now();
    let id = append_event(&e, "o1").await;
    let got = waiter.await.unwrap();
    assert_eq!(entry_ids(&got), sorted([id]));
    assert!(started.elapsed() < Duration::from_secs(2));
}

async fn events_trimmed_before_dispatch_are_reported_and_recorded_once(h: Harness) {
    let e = &h.engine;
    let other = h.second_consumer().await;
    // One order: the read entry and the trimmed ones share its partition.
    let read = append_event(e, "o1").await;
    let (partition, read_id) = read;
    let got = e.claim_events("n1", 10, Duration::ZERO, DAY).await.unwrap();
    assert_eq!(entry_ids(&got), sorted([read]));
    assert!(got.lost.is_empty());
    e.create_deliveries(&[read], &[]).await.unwrap();
    // The dispatchers stop; far more events than the retention are appended meanwhile.
    let raw = accepted_event(&order("o1")).to_json();
    let mut unread = Vec::new();
    for _ in 0..400 {
        unread.push(e.append_raw_event(&raw).await.unwrap());
    }
    let first_kept = e.first_event_id(partition).await.unwrap().unwrap();
    let trimmed = unread.iter().filter(|(_, id)| *id < first_kept).count() as u64;
    assert!(trimmed > 0, "the log was trimmed");
    let got = e
        .claim_events("n1", 1_000 * e.partitions(), Duration::ZERO, DAY)
        .await
        .unwrap();
    assert_eq!(got.lost.len(), 1, "the gap is reported: {:?}", got.lost);
    let lost = got.lost[0].clone();
    assert_eq!(lost.count, trimmed);
    assert_eq!(
        lost.after_id,
        qualified_entry_id(partition, &read_id.to_string())
    );
    assert_eq!(
        lost.before_id,
        qualified_entry_id(partition, &first_kept.to_string())
    );
    let kept: Vec<(usize, EventId)> = unread
        .into_iter()
        .filter(|(_, id)| *id >= first_kept)
        .collect();
    assert_eq!(entry_ids(&got), kept);
    assert_eq!(e.lost_events().await.unwrap(), std::slice::from_ref(&lost));
    e.create_deliveries(&kept, &[]).await.unwrap();
    // Reported once, whichever node reads next.
    let next = append_event(e, "o2").await;
    let got = other
        .claim_events("n2", 10, Duration::ZERO, DAY)
        .await
        .unwrap();
    assert!(got.lost.is_empty());
    assert_eq!(entry_ids(&got), sorted([next]));
    assert_eq!(other.lost_events().await.unwrap(), [lost]);
}

async fn creating_a_delivery_twice_keeps_the_first(h: Harness) {
    let e = &h.engine;
    e.put_endpoint(&endpoint("ep_1")).await.unwrap();
    create(e, &[delivery("msg_1", "ep_1", 100, 100)]).await;
    e.finish_attempt(
        "msg_1",
        &attempt(1, 150, Some(500)),
        &AttemptOutcome::RetryAt(5_000),
        DAY,
    )
    .await
    .unwrap();
    // The event is delivered to the dispatcher again (a node died before its ack landed).
    create(e, &[delivery("msg_1", "ep_1", 100, 100)]).await;
    let stored = e.delivery("msg_1").await.unwrap().unwrap();
    assert_eq!(stored.attempts, 1);
    assert_eq!(stored.next_attempt_at_ms, Some(5_000));
    assert_eq!(e.next_due_ms().await.unwrap(), Some(5_000));
    assert_eq!(e.attempts("msg_1").await.unwrap().len(), 1);
}

async fn claim_due_returns_due_deliveries_in_due_order_once_per_lease(h: Harness) {
    let e = &h.engine;
    e.put_endpoint(&endpoint("ep_1")).await.unwrap();
    create(
        e,
        &[
            delivery("msg_1", "ep_1", 100, 300),
            delivery("msg_2", "ep_1", 100, 100),
            delivery("msg_3", "ep_1", 100, 200),
            delivery("msg_4", "ep_1", 100, 5_000),
        ],
    )
    .await;
    assert!(claim(e, 99, 10, LONG_LEASE).await.is_empty());
    let first = claim(e, 250, 1, LONG_LEASE).await;
    assert_eq!(ids(&first), ["msg_2"]);
    assert_eq!(
        first[0],
        DueDelivery {
            id: "msg_2".into(),
            endpoint_id: "ep_1".into(),
            attempts: 0,
            due_ms: 100,
            ordered_event_id: None,
        }
    );
    let rest = claim(e, 1_000, 10, LONG_LEASE).await;
    assert_eq!(ids(&rest), ["msg_3", "msg_1"]);
    // Leased: not handed out again while another node may be attempting it.
    assert!(claim(e, 1_000, 10, LONG_LEASE).await.is_empty());
    assert_eq!(e.next_due_ms().await.unwrap(), Some(5_000));
    // After the lease (the node died mid-attempt) they are due again, in due order.
    // msg_2's lease ends at 60 250, the others' at 61 000 (equal times go in id order).
    let later = claim(e, 60_500, 10, LONG_LEASE).await;
    assert_eq!(ids(&later), ["msg_4", "msg_2"]);
    let last = claim(e, 61_000, 10, LONG_LEASE).await;
    assert_eq!(ids(&last), ["msg_1", "msg_3"]);
}

async fn claim_due_reports_the_endpoints_version_and_bodies_are_read_by_id(h: Harness) {
    let e = &h.engine;
    e.put_endpoint(&endpoint("ep_1")).await.unwrap();
    let mut other = delivery("msg_2", "ep_1", 100, 100);
    other.body = "{\"second\":true}".into();
    create(e, &[delivery("msg_1", "ep_1", 100, 100), other.clone()]).await;
    let batch = e.claim_due(100, 10, LONG_LEASE).await.unwrap();
    assert_eq!(
        batch.endpoints_version,
        e.endpoints_version().await.unwrap()
    );
    assert_eq!(ids(&batch.due), ["msg_1", "msg_2"]);
    e.put_endpoint(&endpoint("ep_2")).await.unwrap();
    create(e, &[delivery("msg_3", "ep_2", 100, 100)]).await;
    let batch = e.claim_due(100, 10, LONG_LEASE).await.unwrap();
    assert_eq!(
        batch.endpoints_version,
        e.endpoints_version().await.unwrap()
    );
    assert_eq!(ids(&batch.due), ["msg_3"]);
    // Nothing due: the version all the same.
    let empty = e.claim_due(100, 10, LONG_LEASE).await.unwrap();
    assert!(empty.due.is_empty());
    let ask = ["msg_2", "msg_unknown", "msg_1"].map(String::from);
    assert_eq!(
        e.delivery_bodies(&ask).await.unwrap(),
        [
            Some(other.body),
            None,
            Some(delivery("msg_1", "ep_1", 100, 100).body)
        ]
    );
    assert!(e.delivery_bodies(&[]).await.unwrap().is_empty());
}

async fn next_due_ms_is_the_earliest_scheduled_time(h: Harness) {
    let e = &h.engine;
    assert_eq!(e.next_due_ms().await.unwrap(), None);
    e.put_endpoint(&endpoint("ep_1")).await.unwrap();
    create(
        e,
        &[
            delivery("msg_1", "ep_1", 100, 700),
            delivery("msg_2", "ep_1", 100, 400),
        ],
    )
    .await;
    assert_eq!(e.next_due_ms().await.unwrap(), Some(400));
}

async fn succeeded_attempt_takes_the_delivery_off_the_schedule(h: Harness) {
    let e = &h.engine;
    e.put_endpoint(&endpoint("ep_1")).await.unwrap();
    create(e, &[delivery("msg_1", "ep_1", 100, 100)]).await;
    claim(e, 100, 10, LONG_LEASE).await;
    let health = e
        .finish_attempt(
            "msg_1",
            &attempt(1, 130, Some(204)),
            &AttemptOutcome::Succeeded,
            DAY,
        )
        .await
        .unwrap();
    assert_eq!(health, EndpointHealth::Unchanged);
    let d = e.delivery("msg_1").await.unwrap().unwrap();
    assert_eq!(d.state, DeliveryState::Succeeded);
    assert_eq!(d.attempts, 1);
    assert_eq!(d.last_status_code, Some(204));
    assert_eq!(d.next_attempt_at_ms, None);
    assert_eq!(d.updated_at_ms, 130);
    assert_eq!(e.next_due_ms().await.unwrap(), None);
    assert!(claim(e, u64::MAX / 4, 10, LONG_LEASE).await.is_empty());
}

async fn retry_at_schedules_the_next_attempt_at_that_time(h: Harness) {
    let e = &h.engine;
    e.put_endpoint(&endpoint("ep_1")).await.unwrap();
    create(e, &[delivery("msg_1", "ep_1", 100, 100)]).await;
    claim(e, 100, 10, LONG_LEASE).await;
    e.finish_attempt(
        "msg_1",
        &attempt(1, 120, Some(503)),
        &AttemptOutcome::RetryAt(5_120),
        DAY,
    )
    .await
    .unwrap();
    let d = e.delivery("msg_1").await.unwrap().unwrap();
    assert_eq!(d.state, DeliveryState::Pending);
    assert_eq!(d.next_attempt_at_ms, Some(5_120));
    assert_eq!(d.last_status_code, Some(503));
    assert_eq!(e.next_due_ms().await.unwrap(), Some(5_120));
    assert!(claim(e, 5_119, 10, LONG_LEASE).await.is_empty());
    let due = claim(e, 5_120, 10, LONG_LEASE).await;
    assert_eq!(ids(&due), ["msg_1"]);
    assert_eq!(due[0].attempts, 1);
}

async fn failed_delivery_is_kept_and_recover_failed_schedules_it_again(h: Harness) {
    let e = &h.engine;
    e.put_endpoint(&endpoint("ep_1")).await.unwrap();
    create(
        e,
        &[
            delivery("msg_1", "ep_1", 1_000, 1_000),
            delivery("msg_2", "ep_1", 2_000, 2_000),
            delivery("msg_3", "ep_1", 3_000, 3_000),
        ],
    )
    .await;
    for (id, at) in [("msg_1", 1_000), ("msg_2", 2_000)] {
        e.finish_attempt(id, &attempt(1, at, None), &AttemptOutcome::Failed, DAY)
            .await
            .unwrap();
    }
    let d = e.delivery("msg_1").await.unwrap().unwrap();
    assert_eq!(d.state, DeliveryState::Failed);
    assert_eq!(d.next_attempt_at_ms, None);
    assert_eq!(e.next_due_ms().await.unwrap(), Some(3_000));

    // Only failed deliveries created at or after `since`: msg_3 is pending, not failed.
    assert_eq!(e.recover_failed("ep_1", 1_500, 9_000).await.unwrap(), 1);
    let d = e.delivery("msg_2").await.unwrap().unwrap();
    assert_eq!(d.state, DeliveryState::Pending);
    assert_eq!(d.next_attempt_at_ms, Some(9_000));
    assert_eq!(
        e.delivery("msg_1").await.unwrap().unwrap().state,
        DeliveryState::Failed
    );
    assert_eq!(e.recover_failed("ep_1", 0, 9_000).await.unwrap(), 1);
    assert_eq!(e.recover_failed("ep_1", 0, 9_000).await.unwrap(), 0);
    assert_eq!(e.recover_failed("ep_unknown", 0, 9_000).await.unwrap(), 0);
    let due = claim(e, 9_000, 10, LONG_LEASE).await;
    assert_eq!(ids(&due), ["msg_3", "msg_1", "msg_2"]);
}

async fn gone_fails_the_delivery_and_disables_the_endpoint(h: Harness) {
    let e = &h.engine;
    // Realistic times and every optional field set: the engine rewrites the stored endpoint,
    // and everything but its health must come back exactly as it was put.
    let mut put = endpoint("ep_1");
    put.description = Some("orders → ERP \"main\" / eu".into());
    put.rate_limit_per_second = Some(50);
    put.created_at_ms = 1_764_213_743_123;
    put.updated_at_ms = 1_764_213_743_999;
    put.secrets.push(EndpointSecret {
        secret: "whsec_b2xkIHNlY3JldCBrZXB0IGZvciBhIGRheQ==".into(),
        expires_at_ms: Some(1_764_300_143_123),
    });
    e.put_endpoint(&put).await.unwrap();
    create(
        e,
        &[
            delivery("msg_1", "ep_1", 100, 100),
            delivery("msg_2", "ep_1", 100, 100),
        ],
    )
    .await;
    let gone = AttemptOutcome::Gone("endpoint answered 410 Gone".into());
    let health = e
        .finish_attempt("msg_1", &attempt(1, 150, Some(410)), &gone, DAY)
        .await
        .unwrap();
    assert_eq!(
        health,
        EndpointHealth::Disabled {
            reason: "endpoint answered 410 Gone".into()
        }
    );
    let expected = Endpoint {
        enabled: false,
        disabled_reason: Some("endpoint answered 410 Gone".into()),
        failing_since_ms: Some(150),
        updated_at_ms: 150,
        ..put
    };
    assert_eq!(e.endpoint("ep_1").await.unwrap(), Some(expected));
    let d = e.delivery("msg_1").await.unwrap().unwrap();
    assert_eq!(d.state, DeliveryState::Failed);
    assert_eq!(e.recover_failed("ep_1", 0, 500).await.unwrap(), 1);
    // Already disabled: a second 410 does not disable it again.
    let health = e
        .finish_attempt("msg_2", &attempt(1, 160, Some(410)), &gone, DAY)
        .await
        .unwrap();
    assert_eq!(health, EndpointHealth::Unchanged);
}

async fn endpoint_health_tracks_failures_and_disables_after_disable_after(h: Harness) {
    let e = &h.engine;
    let disable_after = Duration::from_secs(10);
    e.put_endpoint(&endpoint("ep_1")).await.unwrap();
    create(e, &[delivery("msg_1", "ep_1", 100, 100)]).await;
    let mut number = 0;
    let mut finish = |at: u64, code: u16, outcome: AttemptOutcome| {
        number += 1;
        let e = e.clone();
        async move {
            e.finish_attempt(
                "msg_1",
                &attempt(number, at, Some(code)),
                &outcome,
                disable_after,
            )
            .await
            .unwrap()
        }
    };
    let failing_since = |e: Arc<dyn Engine>| async move {
        e.endpoint("ep_1").await.unwrap().unwrap().failing_since_ms
    };
    let retry = || AttemptOutcome::RetryAt(1_000_000);

    assert_eq!(finish(1_000, 500, retry()).await, EndpointHealth::Unchanged);
    assert_eq!(failing_since(e.clone()).await, Some(1_000));
    assert_eq!(finish(5_000, 500, retry()).await, EndpointHealth::Unchanged);
    assert_eq!(failing_since(e.clone()).await, Some(1_000));
    finish(6_000, 200, AttemptOutcome::Succeeded).await;
    assert_eq!(failing_since(e.clone()).await, None);

    assert_eq!(finish(7_000, 500, retry()).await, EndpointHealth::Unchanged);
    assert_eq!(failing_since(e.clone()).await, Some(7_000));
    // Exactly `disable_after` is not more than it.
    assert_eq!(
        finish(17_000, 500, retry()).await,
        EndpointHealth::Unchanged
    );
    let reason = failing_too_long_reason(disable_after);
    assert_eq!(
        finish(17_001, 500, AttemptOutcome::Failed).await,
        EndpointHealth::Disabled {
            reason: reason.clone()
        }
    );
    let ep = e.endpoint("ep_1").await.unwrap().unwrap();
    assert!(!ep.enabled);
    assert_eq!(ep.disabled_reason, Some(reason));
    assert_eq!(ep.updated_at_ms, 17_001);
    assert_eq!(
        finish(30_000, 500, retry()).await,
        EndpointHealth::Unchanged
    );
}

async fn finish_attempts_records_a_batch_in_order_with_the_health_of_each(h: Harness) {
    let e = &h.engine;
    e.put_endpoint(&endpoint("ep_1")).await.unwrap();
    e.put_endpoint(&endpoint("ep_2")).await.unwrap();
    create(
        e,
        &[
            delivery("msg_1", "ep_1", 100, 100),
            delivery("msg_2", "ep_1", 100, 100),
            delivery("msg_3", "ep_2", 100, 100),
            delivery("msg_4", "ep_1", 100, 100),
        ],
    )
    .await;
    let done = |id: &str, at: u64, code: u16, outcome: AttemptOutcome| FinishedAttempt {
        delivery_id: id.into(),
        attempt: attempt(1, at, Some(code)),
        outcome,
    };
    let gone = "endpoint answered 410 Gone".to_string();
    let health = e
        .finish_attempts(
            &[
                done("msg_1", 150, 503, AttemptOutcome::RetryAt(5_000)),
                done("msg_2", 160, 410, AttemptOutcome::Gone(gone.clone())),
                done("msg_unknown", 160, 200, AttemptOutcome::Succeeded),
                done("msg_3", 170, 200, AttemptOutcome::Succeeded),
                // Disabled already by msg_2 of the same batch: not disabled twice.
                done("msg_4", 180, 410, AttemptOutcome::Gone(gone.clone())),
            ],
            DAY,
        )
        .await
        .unwrap();
    assert_eq!(
        health,
        [
            EndpointHealth::Unchanged,
            EndpointHealth::Disabled {
                reason: gone.clone()
            },
            EndpointHealth::Unchanged,
            EndpointHealth::Unchanged,
            EndpointHealth::Unchanged,
        ]
    );
    let state = async |id: &str| e.delivery(id).await.unwrap().unwrap();
    assert_eq!(state("msg_1").await.state, DeliveryState::Pending);
    assert_eq!(state("msg_1").await.next_attempt_at_ms, Some(5_000));
    assert_eq!(state("msg_2").await.state, DeliveryState::Failed);
    assert_eq!(state("msg_3").await.state, DeliveryState::Succeeded);
    assert_eq!(state("msg_4").await.state, DeliveryState::Failed);
    assert_eq!(
        e.attempts("msg_3").await.unwrap(),
        [attempt(1, 170, Some(200))]
    );
    let ep = e.endpoint("ep_1").await.unwrap().unwrap();
    assert!(!ep.enabled);
    assert_eq!(ep.disabled_reason, Some(gone));
    assert_eq!(ep.failing_since_ms, Some(150));
    let ep = e.endpoint("ep_2").await.unwrap().unwrap();
    assert!(ep.enabled);
    assert_eq!(ep.failing_since_ms, None);
    assert_eq!(e.next_due_ms().await.unwrap(), Some(5_000));
    assert!(e.finish_attempts(&[], DAY).await.unwrap().is_empty());
}

async fn settings_updates_keep_health_and_health_writes_keep_settings(h: Harness) {
    let e = &h.engine;
    let original = endpoint("ep_1");
    e.put_endpoint(&original).await.unwrap();
    create(
        e,
        &[
            delivery("msg_1", "ep_1", 100, 100),
            delivery("msg_2", "ep_1", 100, 100),
        ],
    )
    .await;
    let retry = AttemptOutcome::RetryAt(9_000);
    e.finish_attempt("msg_1", &attempt(1, 1_000, Some(500)), &retry, DAY)
        .await
        .unwrap();
    // A settings update made from a read taken before the failure (PATCH, rotate-secret).
    let mut patched = original.clone();
    patched.description = Some("patched".into());
    patched.updated_at_ms = 2_000;
    e.put_endpoint(&patched).await.unwrap();
    let ep = e.endpoint("ep_1").await.unwrap().unwrap();
    assert_eq!(ep.failing_since_ms, Some(1_000), "health kept");
    assert_eq!(ep.description.as_deref(), Some("patched"));
    assert_eq!(ep.updated_at_ms, 2_000);
    // The health write keeps the settings written meanwhile.
    let gone = AttemptOutcome::Gone("endpoint answered 410 Gone".into());
    e.finish_attempt("msg_2", &attempt(1, 3_000, Some(410)), &gone, DAY)
        .await
        .unwrap();
    let disabled = e.endpoint("ep_1").await.unwrap().unwrap();
    assert_eq!(
        disabled,
        Endpoint {
            enabled: false,
            disabled_reason: Some("endpoint answered 410 Gone".into()),
            failing_since_ms: Some(1_000),
            updated_at_ms: 3_000,
            ..patched.clone()
        }
    );
    // Another settings update of the disabled endpoint (read after the disabling) keeps it
    // disabled, with its reason.
    let mut described = disabled.clone();
    described.description = Some("again".into());
    described.updated_at_ms = 4_000;
    e.put_endpoint(&described).await.unwrap();
    assert_eq!(e.endpoint("ep_1").await.unwrap(), Some(described.clone()));
    // Enabling it (PATCH enabled: true) clears the reason and the failure.
    let mut enabled = described;
    enabled.enabled = true;
    enabled.disabled_reason = None;
    enabled.failing_since_ms = None;
    enabled.updated_at_ms = 5_000;
    e.put_endpoint(&enabled).await.unwrap();
    assert_eq!(e.endpoint("ep_1").await.unwrap(), Some(enabled.clone()));
    assert_eq!(e.endpoints().await.unwrap(), vec![enabled.clone()]);
    // Disabled by the user: enabled and reason as given, the failure bookkeeping kept.
    e.finish_attempt("msg_1", &attempt(2, 6_000, Some(500)), &retry, DAY)
        .await
        .unwrap();
    let mut off = enabled;
    off.enabled = false;
    off.disabled_reason = Some("disabled through the API".into());
    off.updated_at_ms = 7_000;
    e.put_endpoint(&off).await.unwrap();
    assert_eq!(
        e.endpoint("ep_1").await.unwrap(),
        Some(Endpoint {
            failing_since_ms: Some(6_000),
            ..off
        })
    );
}

async fn attempts_are_listed_oldest_first_and_capped(h: Harness) {
    let e = &h.engine;
    e.put_endpoint(&endpoint("ep_1")).await.unwrap();
    create(e, &[delivery("msg_1", "ep_1", 100, 100)]).await;
    assert!(e.attempts("msg_1").await.unwrap().is_empty());
    let total = ATTEMPTS_KEPT as u32 + 5;
    for n in 1..=total {
        let at = 100 + u64::from(n);
        e.finish_attempt(
            "msg_1",
            &attempt(n, at, Some(500)),
            &AttemptOutcome::RetryAt(at + 1),
            DAY,
        )
        .await
        .unwrap();
    }
    let attempts = e.attempts("msg_1").await.unwrap();
    assert_eq!(attempts.len(), ATTEMPTS_KEPT);
    assert_eq!(attempts[0], attempt(6, 106, Some(500)));
    assert_eq!(attempts.last().map(|a| a.number), Some(total));
    assert_eq!(e.delivery("msg_1").await.unwrap().unwrap().attempts, total);
    assert!(e.attempts("msg_unknown").await.unwrap().is_empty());
}

async fn deliveries_are_listed_newest_first_with_limit_and_before(h: Harness) {
    let e = &h.engine;
    e.put_endpoint(&endpoint("ep_1")).await.unwrap();
    e.put_endpoint(&endpoint("ep_2")).await.unwrap();
    let mut all: Vec<Delivery> = (1..=5)
        .map(|i| delivery(&format!("msg_{i}"), "ep_1", i * 1_000, i * 1_000))
        .collect();
    all.push(delivery("msg_other", "ep_2", 4_500, 4_500));
    create(e, &all).await;
    let newest = e.deliveries("ep_1", 3, None).await.unwrap();
    assert_eq!(ids(&newest), ["msg_5", "msg_4", "msg_3"]);
    assert_eq!(newest[0], all[4]);
    let older = e.deliveries("ep_1", 10, Some(3_000)).await.unwrap();
    assert_eq!(ids(&older), ["msg_2", "msg_1"]);
    assert!(e.deliveries("ep_1", 0, None).await.unwrap().is_empty());
    assert!(e.deliveries("ep_none", 10, None).await.unwrap().is_empty());
}

async fn retry_delivery_makes_any_delivery_pending_and_due(h: Harness) {
    let e = &h.engine;
    e.put_endpoint(&endpoint("ep_1")).await.unwrap();
    create(e, &[delivery("msg_1", "ep_1", 100, 100)]).await;
    e.finish_attempt(
        "msg_1",
        &attempt(1, 150, Some(200)),
        &AttemptOutcome::Succeeded,
        DAY,
    )
    .await
    .unwrap();
    assert!(e.retry_delivery("msg_1", 7_000).await.unwrap());
    let d = e.delivery("msg_1").await.unwrap().unwrap();
    assert_eq!(d.state, DeliveryState::Pending);
    assert_eq!(d.next_attempt_at_ms, Some(7_000));
    assert_eq!(d.attempts, 1);
    assert_eq!(e.next_due_ms().await.unwrap(), Some(7_000));
    assert_eq!(ids(&claim(e, 7_000, 10, LONG_LEASE).await), ["msg_1"]);
    assert!(!e.retry_delivery("msg_unknown", 7_000).await.unwrap());
}

/// Redis only: deliveries, their schedule and attempts, endpoint health and the dispatch
/// group's unacknowledged events survive a Redis restart when Redis runs with AOF.
#[tokio::test]
async fn redis_webhook_state_survives_a_redis_restart_with_aof() {
    webhook_state_survives_a_restart_with_aof(
        Harness::redis_with(common::RedisServer::start(true), 1).await,
    )
    .await;
}

/// The same on a cluster of its own: the master holding Herald's slot SIGKILLed and restarted
/// from its AOF.
#[tokio::test]
async fn cluster_webhook_state_survives_a_master_restart_with_aof() {
    let cluster = tokio::task::spawn_blocking(|| common::cluster::RedisCluster::start(3, 0, true))
        .await
        .expect("cluster");
    let mut h = Harness::redis_at(cluster.url(), "conf:".into(), 1).await;
    h.cluster = Some(cluster);
    webhook_state_survives_a_restart_with_aof(h).await;
}

async fn webhook_state_survives_a_restart_with_aof(mut h: Harness) {
    let e = h.engine.clone();
    e.put_endpoint(&endpoint("ep_1")).await.unwrap();
    create(
        &e,
        &[
            delivery("msg_1", "ep_1", 100, 100),
            delivery("msg_2", "ep_1", 100, 300),
        ],
    )
    .await;
    assert_eq!(ids(&claim(&e, 100, 1, LONG_LEASE).await), ["msg_1"]);
    e.finish_attempt(
        "msg_1",
        &attempt(1, 120, Some(500)),
        &AttemptOutcome::RetryAt(5_000),
        DAY,
    )
    .await
    .unwrap();
    let reclaim = Duration::from_millis(200);
    let event = append_event(&e, "o1").await;
    let got = e
        .claim_events("n1", 10, Duration::ZERO, reclaim)
        .await
        .unwrap();
    assert_eq!(entry_ids(&got), sorted([event]));

    h.restart_redis();
    let after: Arc<dyn Engine> = Arc::new(
        RedisEngine::connect(&h.engine_config, settings("c2"))
            .await
            .expect("engine after the restart"),
    );
    assert_eq!(after.next_due_ms().await.unwrap(), Some(300));
    assert_eq!(ids(&claim(&after, 1_000, 10, LONG_LEASE).await), ["msg_2"]);
    let retried = claim(&after, 5_000, 10, LONG_LEASE).await;
    assert_eq!(ids(&retried), ["msg_1"]);
    assert_eq!(retried[0].attempts, 1);
    assert_eq!(after.attempts("msg_1").await.unwrap().len(), 1);
    let ep = after.endpoint("ep_1").await.unwrap().unwrap();
    assert_eq!(ep.failing_since_ms, Some(120));
    // The event n1 took before the restart and never acknowledged is still reclaimable.
    tokio::time::sleep(reclaim + Duration::from_millis(100)).await;
    let taken = after
        .claim_events("n2", 10, Duration::ZERO, reclaim)
        .await
        .unwrap();
    assert_eq!(entry_ids(&taken), sorted([event]));
}

/// Calls of one command since the last `CONFIG RESETSTAT`, from `INFO commandstats`.
fn command_calls(conn: &mut ::redis::Connection, command: &str) -> u64 {
    let info: String = ::redis::cmd("INFO")
        .arg("commandstats")
        .query(conn)
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// Redis only: a dispatcher's claims scan for expired events (`XAUTOCLAIM`) at most every
/// quarter `reclaim_after`, not before every read.
#[tokio::test]
async fn redis_dispatch_claims_do_not_scan_for_expired_events_before_every_read() {
    let h = Harness::redis(1).await;
    let mut conn = h.redis.as_ref().unwrap().conn();
    let _: () = ::redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut conn)
        .unwrap();
    for _ in 0..5 {
        h.engine
            .claim_events("n1", 10, Duration::ZERO, DAY)
            .await
            .unwrap();
    }
    assert_eq!(command_calls(&mut conn, "xreadgroup"), 5);
    assert_eq!(command_calls(&mut conn, "xautoclaim"), 1);
}

/// Redis only: an endpoint stored by an older Herald (health inside its JSON, no health
/// fields) reads as it was, and its first attempt moves its health over to the plain fields.
#[tokio::test]
async fn redis_endpoint_stored_before_health_fields_keeps_its_health() {
    let h = Harness::redis(1).await;
    let e = &h.engine;
    let mut old = endpoint("ep_1");
    old.failing_since_ms = Some(1_000);
    let mut conn = h.redis.as_ref().unwrap().conn();
    let _: () = ::redis::cmd("HSET")
        .arg("conf:{p0}:webhooks:endpoints")
        .arg("ep_1")
        .arg(serde_json::to_string(&old).unwrap())
        .query(&mut conn)
        .unwrap();
    assert_eq!(e.endpoint("ep_1").await.unwrap(), Some(old.clone()));
    create(e, &[delivery("msg_1", "ep_1", 100, 100)]).await;
    let too_long = Duration::from_secs(10);
    let health = e
        .finish_attempt(
            "msg_1",
            &attempt(1, 11_001, Some(500)),
            &AttemptOutcome::Failed,
            too_long,
        )
        .await
        .unwrap();
    // Failing since 1 000 (kept from the JSON), now 11 001: more than ten seconds.
    let reason = failing_too_long_reason(too_long);
    assert_eq!(
        health,
        EndpointHealth::Disabled {
            reason: reason.clone()
        }
    );
    let fields: std::collections::HashMap<String, String> = ::redis::cmd("HGETALL")
        .arg("conf:{p0}:webhooks:health")
        .query(&mut conn)
        .unwrap();
    assert_eq!(fields["ep_1:failingSinceMs"], "1000");
    assert_eq!(fields["ep_1:enabled"], "0");
    assert_eq!(
        e.endpoint("ep_1").await.unwrap(),
        Some(Endpoint {
            enabled: false,
            disabled_reason: Some(reason),
            updated_at_ms: 11_001,
            ..old
        })
    );
}

/// How the engine keeps its data is reported: the memory engine is volatile; the suite's Redis
/// servers run without AOF or snapshots (`--appendonly no --save ""`), which a single Redis and
/// a cluster (asked on the master of every partition) both report as `none`.
async fn persistence_is_reported(h: Harness) {
    let expected = match h.engine_config.kind {
        herald::config::EngineKind::Memory => Persistence::Volatile,
        herald::config::EngineKind::Redis => Persistence::None,
    };
    let reported = h.engine.persistence().await;
    assert_eq!(reported, expected);
    assert_eq!(
        reported.warning().is_some(),
        expected == Persistence::None,
        "{reported:?}"
    );
}

async fn create_endpoint_counts_and_inserts_in_one_step_per_partner(h: Harness) {
    let e = &h.engine;
    // Stored before any create counted: counted all the same.
    e.put_endpoint(&endpoint("ep_old")).await.unwrap();
    assert_eq!(
        e.create_endpoint(&endpoint("ep_1"), 2).await.unwrap(),
        EndpointCreation::Created
    );
    // Racing for no free slot: none passes.
    let racers = futures_util::future::join_all(
        (0..8).map(|i| async move { e.create_endpoint(&endpoint(&format!("ep_r{i}")), 2).await }),
    )
    .await;
    assert!(
        racers
            .iter()
            .all(|r| matches!(r, Ok(EndpointCreation::LimitReached { count: 2 })))
    );
    assert_eq!(e.endpoint("ep_r0").await.unwrap(), None);
    // Other partners and endpoints without one are not counted against acme.
    let mut globex = endpoint("ep_g");
    globex.partner_id = Some("globex".into());
    assert_eq!(
        e.create_endpoint(&globex, 2).await.unwrap(),
        EndpointCreation::Created
    );
    let mut admin = endpoint("ep_admin");
    admin.partner_id = None;
    assert_eq!(
        e.create_endpoint(&admin, 1).await.unwrap(),
        EndpointCreation::Created
    );
    // A delete frees a slot; one racer of many takes it.
    assert!(e.delete_endpoint("ep_old").await.unwrap());
    let racers = futures_util::future::join_all(
        (0..8).map(|i| async move { e.create_endpoint(&endpoint(&format!("ep_s{i}")), 2).await }),
    )
    .await;
    let created = racers
        .iter()
        .filter(|r| matches!(r, Ok(EndpointCreation::Created)))
        .count();
    assert_eq!(created, 1);
    let acme = e
        .endpoints()
        .await
        .unwrap()
        .into_iter()
        .filter(|ep| ep.partner_id.as_deref() == Some("acme"))
        .count();
    assert_eq!(acme, 2);
}

async fn patch_and_rotate_change_only_their_fields(h: Harness) {
    let e = &h.engine;
    let mut ep = endpoint("ep_1");
    ep.event_types = vec!["order.shipped".into()];
    e.put_endpoint(&ep).await.unwrap();
    create(e, &[delivery("msg_1", "ep_1", 100, 100)]).await;
    // Health recorded by an attempt.
    e.finish_attempt(
        "msg_1",
        &attempt(1, 2_000, Some(500)),
        &AttemptOutcome::RetryAt(9_000),
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    let version = e.endpoints_version().await.unwrap();

    let patched = e
        .patch_endpoint(
            "ep_1",
            &EndpointPatch {
                description: Some(Some("d ü/1".into())),
                event_types: Some(Vec::new()),
                updated_at_ms: 3_000,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert!(e.endpoints_version().await.unwrap() > version);
    let rotated = e
        .rotate_secret(
            "ep_1",
            "whsec_bmV3IHNlY3JldCBmb3IgdGhlIHRlc3Q=",
            4_000,
            90_000,
        )
        .await
        .unwrap()
        .unwrap();
    let other = e
        .patch_endpoint(
            "ep_1",
            &EndpointPatch {
                max_in_flight: Some(None),
                rate_limit_per_second: Some(Some(7)),
                updated_at_ms: 5_000,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    let stored = e.endpoint("ep_1").await.unwrap().unwrap();
    assert_eq!(stored, other);
    // Each kept what the others wrote.
    assert_eq!(stored.description.as_deref(), Some("d ü/1"));
    assert!(stored.event_types.is_empty());
    assert_eq!(stored.rate_limit_per_second, Some(7));
    assert_eq!(stored.max_in_flight, None);
    assert_eq!(stored.secrets, rotated.secrets);
    assert_eq!(
        stored.secrets,
        vec![
            EndpointSecret {
                secret: "whsec_bmV3IHNlY3JldCBmb3IgdGhlIHRlc3Q=".into(),
                expires_at_ms: None,
            },
            EndpointSecret {
                secret: ep.secrets[0].secret.clone(),
                expires_at_ms: Some(90_000),
            },
        ]
    );
    assert_eq!(stored.failing_since_ms, Some(2_000));
    assert!(stored.enabled);
    assert_eq!(stored.updated_at_ms, 5_000);
    assert_eq!(patched.failing_since_ms, Some(2_000));
    assert_eq!(
        (stored.url, stored.created_at_ms),
        (ep.url, ep.created_at_ms)
    );

    // Disabling records why; enabling clears it and the failure time.
    let off = EndpointPatch {
        enabled: Some(false),
        updated_at_ms: 6_000,
        ..Default::default()
    };
    let disabled = e.patch_endpoint("ep_1", &off).await.unwrap().unwrap();
    assert!(!disabled.enabled);
    assert_eq!(disabled.disabled_reason.as_deref(), Some(DISABLED_BY_USER));
    let on = EndpointPatch {
        enabled: Some(true),
        updated_at_ms: 7_000,
        ..Default::default()
    };
    let enabled = e.patch_endpoint("ep_1", &on).await.unwrap().unwrap();
    assert!(enabled.enabled);
    assert_eq!(enabled.disabled_reason, None);
    assert_eq!(enabled.failing_since_ms, None);
    assert_eq!(e.endpoint("ep_1").await.unwrap(), Some(enabled));

    assert_eq!(e.patch_endpoint("ep_none", &on).await.unwrap(), None);
    assert_eq!(
        e.rotate_secret("ep_none", "whsec_x", 1, 2).await.unwrap(),
        None
    );
}

async fn sweep_deletes_old_records_and_every_record_of_a_deleted_endpoint(h: Harness) {
    let e = &h.engine;
    e.put_endpoint(&endpoint("ep_1")).await.unwrap();
    e.put_endpoint(&endpoint("ep_2")).await.unwrap();
    let mut failed = delivery("msg_f", "ep_1", 150, 150);
    failed.state = DeliveryState::Failed;
    create(
        e,
        &[
            delivery("msg_old", "ep_1", 100, 100),
            failed,
            delivery("msg_new", "ep_1", 5_000, 5_000),
            delivery("msg_2a", "ep_2", 100, 100),
            delivery("msg_2b", "ep_2", 6_000, 6_000),
        ],
    )
    .await;
    e.finish_attempt(
        "msg_old",
        &attempt(1, 200, Some(500)),
        &AttemptOutcome::RetryAt(300),
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    let mut targets = e.sweep_targets().await.unwrap();
    targets.sort();
    assert_eq!(targets, vec!["ep_1".to_string(), "ep_2".to_string()]);

    // Bounded per call: one at a time, oldest first.
    assert_eq!(e.sweep_deliveries("ep_1", 1_000, 1).await.unwrap(), 1);
    assert_eq!(e.delivery("msg_old").await.unwrap(), None);
    assert!(e.attempts("msg_old").await.unwrap().is_empty());
    assert_eq!(e.sweep_deliveries("ep_1", 1_000, 10).await.unwrap(), 1);
    assert_eq!(e.sweep_deliveries("ep_1", 1_000, 10).await.unwrap(), 0);
    // Off the failed index and the schedule too.
    assert_eq!(e.recover_failed("ep_1", 0, 10).await.unwrap(), 0);
    let due = e
        .claim_due(10_000, 10, Duration::from_secs(60))
        .await
        .unwrap();
    let due: Vec<&str> = due.due.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(due, vec!["msg_2a", "msg_new", "msg_2b"]);
    let listed: Vec<String> = e
        .deliveries("ep_1", 10, None)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(listed, vec!["msg_new".to_string()]);

    // A deleted endpoint's records go whatever their age, then it is no longer a target.
    assert!(e.delete_endpoint("ep_2").await.unwrap());
    assert!(
        e.sweep_targets()
            .await
            .unwrap()
            .contains(&"ep_2".to_string())
    );
    assert_eq!(e.sweep_deliveries("ep_2", 0, 1).await.unwrap(), 1);
    assert_eq!(e.sweep_deliveries("ep_2", 0, 10).await.unwrap(), 1);
    assert_eq!(e.delivery("msg_2b").await.unwrap(), None);
    assert_eq!(e.sweep_targets().await.unwrap(), vec!["ep_1".to_string()]);
    // A delivery stored for an endpoint deleted meanwhile is swept all the same.
    create(e, &[delivery("msg_late", "ep_gone", 100, 100)]).await;
    assert!(
        e.sweep_targets()
            .await
            .unwrap()
            .contains(&"ep_gone".to_string())
    );
    assert_eq!(e.sweep_deliveries("ep_gone", 0, 10).await.unwrap(), 1);
    assert_eq!(e.sweep_targets().await.unwrap(), vec!["ep_1".to_string()]);
}

// ---- Workflow steps (issue 13) ----
//
// Timer due times are plain numbers far in the future, chosen by the tests: the engine never
// reads a clock for them (`fire_due_timers` is told the time), so nothing here sleeps.

/// A due time no real clock reaches during the tests (2096).
const T0: u64 = 4_000_000_000_000;

fn step_command(
    order_id: &str,
    status: OrderStatus,
    version: u64,
    action: StepAction,
) -> NewCommand {
    command(
        order_id,
        Command::Step {
            status,
            version,
            action,
        },
    )
}

/// The first attempt of a step's task, with a retrier's count so the content is not trivial.
fn first_attempt(order_id: &str, status: OrderStatus, version: u64) -> NewCommand {
    step_command(
        order_id,
        status,
        version,
        StepAction::Attempt {
            attempt: 1,
            retries: vec![0, 2],
        },
    )
}

fn elapsed(order_id: &str, status: OrderStatus, version: u64) -> NewCommand {
    step_command(
        order_id,
        status,
        version,
        StepAction::Elapsed {
            attempt: 0,
            retries: vec![],
            heartbeat: false,
        },
    )
}

/// A heartbeat deadline's command.
fn beat(order_id: &str, status: OrderStatus, version: u64) -> NewCommand {
    step_command(
        order_id,
        status,
        version,
        StepAction::Elapsed {
            attempt: 1,
            retries: vec![1],
            heartbeat: true,
        },
    )
}

fn callback(order_id: &str, status: OrderStatus, version: u64) -> NewCommand {
    step_command(
        order_id,
        status,
        version,
        StepAction::Callback {
            attempt: 1,
            succeeded: true,
            result: Some(serde_json::json!({"carrier": "ups", "legs": [1, 2]})),
        },
    )
}

fn step_record(kind: &str, status: OrderStatus, version: u64) -> StepRecord {
    StepRecord {
        attempt: Some(1),
        status_code: Some(503),
        error: Some("5xx".into()),
        detail: Some(format!("{kind} detail")),
        latency_ms: Some(12),
        response: Some(serde_json::json!({"kind": kind})),
        ..StepRecord::new(
            kind,
            status,
            version,
            &format!("step-{}", status.as_str()),
            now_rfc3339(),
        )
    }
}

fn queue_now(command: &NewCommand) -> Option<FollowUp> {
    Some(FollowUp {
        command: command.clone(),
        due_ms: None,
        claims_wait: None,
    })
}

fn timer(command: &NewCommand, due_ms: u64, claims_wait: Option<&str>) -> Option<FollowUp> {
    Some(FollowUp {
        command: command.clone(),
        due_ms: Some(due_ms),
        claims_wait: claims_wait.map(str::to_owned),
    })
}

/// Commands in the queue, received or not (whatever the visibility timeout did meanwhile).
async fn queued(e: &Arc<dyn Engine>) -> u64 {
    let stats = e.queue_stats().await.unwrap();
    stats.visible + stats.in_flight
}

async fn step_kinds(e: &Arc<dyn Engine>, order_id: &str) -> Vec<String> {
    let record = e.order(order_id).await.unwrap().unwrap();
    record.steps.into_iter().map(|s| s.kind).collect()
}

/// Queues `cmd` and receives it (it must be the only command queued).
async fn queue_and_receive(e: &Arc<dyn Engine>, cmd: &NewCommand) -> ReceivedCommand {
    let outcome = e.enqueue_command(cmd, None).await.unwrap();
    assert_eq!(outcome, EnqueueOutcome::Enqueued);
    let got = receive_one(e).await;
    assert_eq!(&got.message, cmd);
    got
}

/// Accepts `order_id`, receives its processOrder command and applies the change to
/// `confirmed` (version 2) with `steps`.
async fn confirm_with(e: &Arc<dyn Engine>, order_id: &str, steps: StepWrites) {
    accept(e, order_id).await;
    let got = receive_one(e).await;
    let mut change = change_to(e, order_id, OrderStatus::Confirmed).await;
    change.steps = steps;
    let outcome = e.apply(&got, Some(&change)).await.unwrap();
    assert!(
        matches!(outcome, ApplyOutcome::Applied { event_id: Some(_) }),
        "{outcome:?}"
    );
}

/// Accepts `order_id` and confirms it with a callback wait `wait_id` open, whose timeout is a
/// timer at `due_ms` claiming it. Returns the timer's command.
async fn confirm_waiting(
    e: &Arc<dyn Engine>,
    order_id: &str,
    wait_id: &str,
    due_ms: u64,
) -> NewCommand {
    let timeout = elapsed(order_id, OrderStatus::Confirmed, 2);
    confirm_with(
        e,
        order_id,
        StepWrites {
            heartbeat: None,
            records: vec![step_record("callbackSent", OrderStatus::Confirmed, 2)],
            follow_up: timer(&timeout, due_ms, Some(wait_id)),
            open_wait: Some(wait_id.into()),
        },
    )
    .await;
    timeout
}

/// Fires every timer due at `now_ms` (a generous limit); returns the due times fired, sorted
/// (partitions fire in no set order between them).
async fn fire(e: &Arc<dyn Engine>, now_ms: u64) -> TimerSweep {
    let mut sweep = e.fire_due_timers(now_ms, 1000).await.unwrap();
    sweep.fired.sort_unstable();
    sweep
}

async fn a_change_writes_its_step_records_in_the_same_step(h: Harness) {
    let e = &h.engine;
    let records = vec![
        step_record("stateEntered", OrderStatus::Confirmed, 2),
        step_record("taskFailed", OrderStatus::Confirmed, 2),
    ];
    confirm_with(
        e,
        "o1",
        StepWrites {
            heartbeat: None,
            records: records.clone(),
            ..StepWrites::default()
        },
    )
    .await;
    let record = e.order("o1").await.unwrap().unwrap();
    assert_eq!(record.status.version, 2);
    assert_eq!(record.steps, records, "content intact, oldest first");
    assert_eq!(record.history.len(), 2);
    assert_eq!(events(e).await.len(), 2);
}

async fn step_records_are_kept_oldest_first_and_capped(h: Harness) {
    let e = &h.engine;
    assert_eq!(h.settings.step_history_limit, 4);
    let v2 = |kind: &str| step_record(kind, OrderStatus::Confirmed, 2);
    confirm_with(
        e,
        "o1",
        StepWrites {
            heartbeat: None,
            records: vec![v2("a"), v2("b"), v2("c")],
            ..StepWrites::default()
        },
    )
    .await;
    assert_eq!(step_kinds(e, "o1").await, ["a", "b", "c"]);
    let got = queue_and_receive(e, &first_attempt("o1", OrderStatus::Confirmed, 2)).await;
    let newest = vec![v2("d"), v2("e")];
    let writes = StepWrites {
        heartbeat: None,
        records: newest.clone(),
        ..StepWrites::default()
    };
    assert_eq!(
        e.apply_step(&got, 2, &writes).await.unwrap(),
        ApplyOutcome::Applied { event_id: None }
    );
    assert_eq!(
        step_kinds(e, "o1").await,
        ["b", "c", "d", "e"],
        "the newest step_history_limit, oldest first"
    );
    let record = e.order("o1").await.unwrap().unwrap();
    assert_eq!(record.steps[2..], newest[..], "content intact");
}

async fn a_change_queues_its_follow_up_behind_the_orders_earlier_commands(h: Harness) {
    let e = &h.engine;
    accept(e, "o1").await;
    let head = receive_one(e).await;
    // A transition queued while the head runs: the follow-up goes behind it.
    let cancel = transition("o1", OrderStatus::Cancelled);
    e.enqueue_command(&cancel, None).await.unwrap();
    let attempt = first_attempt("o1", OrderStatus::Confirmed, 2);
    let mut change = change_to(e, "o1", OrderStatus::Confirmed).await;
    change.steps = StepWrites {
        heartbeat: None,
        follow_up: queue_now(&attempt),
        ..StepWrites::default()
    };
    assert!(matches!(
        e.apply(&head, Some(&change)).await.unwrap(),
        ApplyOutcome::Applied { event_id: Some(_) }
    ));
    assert_eq!(e.pending_timers().await.unwrap(), 0, "queued, not a timer");
    let batch = receive(e, 10).await;
    let messages: Vec<&NewCommand> = batch.iter().map(|c| &c.message).collect();
    assert_eq!(
        messages,
        [&cancel, &attempt],
        "per-order FIFO, content intact"
    );
    let status = e.order_status("o1").await.unwrap().unwrap();
    assert_eq!(
        e.apply_step(&batch[1], status.version, &StepWrites::default())
            .await
            .unwrap(),
        ApplyOutcome::Blocked,
        "the follow-up waits for the earlier transition"
    );
    let change = change_to(e, "o1", OrderStatus::Cancelled).await;
    e.apply(&batch[0], Some(&change)).await.unwrap();
    // The order left `confirmed` meanwhile: the step is acknowledged as stale by the worker.
    assert_eq!(
        e.apply_step(&batch[1], 2, &StepWrites::default())
            .await
            .unwrap(),
        ApplyOutcome::Stale { current_version: 3 }
    );
}

async fn a_timer_is_not_receivable_before_it_is_due_and_fires_once(h: Harness) {
    let e = &h.engine;
    let attempt = first_attempt("o1", OrderStatus::Confirmed, 2);
    confirm_with(
        e,
        "o1",
        StepWrites {
            heartbeat: None,
            follow_up: timer(&attempt, T0, None),
            ..StepWrites::default()
        },
    )
    .await;
    assert_eq!(e.pending_timers().await.unwrap(), 1);
    assert!(receive(e, 10).await.is_empty(), "held by the timer");
    let early = fire(e, T0 - 1).await;
    assert_eq!(
        early,
        TimerSweep {
            fired: vec![],
            next_due_ms: Some(T0)
        }
    );
    assert!(receive(e, 10).await.is_empty(), "not due yet");
    let due = fire(e, T0).await;
    assert_eq!(
        due,
        TimerSweep {
            fired: vec![T0],
            next_due_ms: None
        }
    );
    assert_eq!(e.pending_timers().await.unwrap(), 0);
    let got = receive_one(e).await;
    assert_eq!(
        got.message, attempt,
        "the command comes out as it was scheduled"
    );
    assert_eq!(
        fire(e, T0 + 1_000).await,
        TimerSweep::default(),
        "fired once"
    );
    assert!(receive(e, 10).await.is_empty());
}

async fn concurrent_sweeps_fire_each_timer_once(h: Harness) {
    let e = &h.engine;
    let other = h.second_consumer().await;
    let mut scheduled = Vec::new();
    for i in 0..6 {
        let id = format!("o{i}");
        let attempt = first_attempt(&id, OrderStatus::Confirmed, 2);
        confirm_with(
            e,
            &id,
            StepWrites {
                heartbeat: None,
                follow_up: timer(&attempt, T0 + i, None),
                ..StepWrites::default()
            },
        )
        .await;
        scheduled.push(attempt);
    }
    let (a, b) = tokio::join!(
        e.fire_due_timers(T0 + 10, 1000),
        other.fire_due_timers(T0 + 10, 1000)
    );
    let mut fired = [a.unwrap().fired, b.unwrap().fired].concat();
    fired.sort_unstable();
    assert_eq!(fired, (0..6).map(|i| T0 + i).collect::<Vec<_>>());
    assert_eq!(e.pending_timers().await.unwrap(), 0);
    let mut got: Vec<NewCommand> = receive(e, 100)
        .await
        .into_iter()
        .map(|c| c.message)
        .collect();
    got.sort_by(|x, y| x.order_id.cmp(&y.order_id));
    assert_eq!(got, scheduled, "each timer's command queued exactly once");
}

async fn timers_fire_earliest_first_up_to_the_limit(h: Harness) {
    let e = &h.engine;
    // Three timers of one order (one partition), scheduled out of due order.
    let first = elapsed("o1", OrderStatus::Confirmed, 2);
    confirm_with(
        e,
        "o1",
        StepWrites {
            heartbeat: None,
            follow_up: timer(&first, T0 + 300, None),
            ..StepWrites::default()
        },
    )
    .await;
    let mut commands = vec![first];
    for due in [T0 + 100, T0 + 200] {
        let later = first_attempt("o1", OrderStatus::Confirmed, 2);
        let got = queue_and_receive(e, &first_attempt("o1", OrderStatus::Confirmed, 2)).await;
        let writes = StepWrites {
            heartbeat: None,
            follow_up: timer(&later, due, None),
            ..StepWrites::default()
        };
        e.apply_step(&got, 2, &writes).await.unwrap();
        commands.push(later);
    }
    assert_eq!(e.pending_timers().await.unwrap(), 3);
    let sweep = e.fire_due_timers(T0 + 1_000, 1).await.unwrap();
    assert_eq!(sweep.fired, [T0 + 100], "the earliest, and only `limit`");
    assert_eq!(sweep.next_due_ms, Some(T0 + 200));
    assert_eq!(e.pending_timers().await.unwrap(), 2);
    let sweep = e.fire_due_timers(T0 + 1_000, 1000).await.unwrap();
    assert_eq!(sweep.fired, [T0 + 200, T0 + 300], "earliest first");
    assert_eq!(sweep.next_due_ms, None);
    let got: Vec<NewCommand> = receive(e, 10)
        .await
        .into_iter()
        .map(|c| c.message)
        .collect();
    assert_eq!(
        got,
        [
            commands[1].clone(),
            commands[2].clone(),
            commands[0].clone()
        ],
        "queued in due order"
    );
}

async fn a_fired_timer_queues_behind_the_orders_earlier_commands(h: Harness) {
    let e = &h.engine;
    let due = elapsed("o1", OrderStatus::Confirmed, 2);
    confirm_with(
        e,
        "o1",
        StepWrites {
            heartbeat: None,
            follow_up: timer(&due, T0, None),
            ..StepWrites::default()
        },
    )
    .await;
    let cancel = transition("o1", OrderStatus::Cancelled);
    e.enqueue_command(&cancel, None).await.unwrap();
    assert_eq!(fire(e, T0).await.fired, [T0]);
    let batch = receive(e, 10).await;
    let messages: Vec<&NewCommand> = batch.iter().map(|c| &c.message).collect();
    assert_eq!(messages, [&cancel, &due]);
    assert_eq!(
        e.apply_step(&batch[1], 2, &StepWrites::default())
            .await
            .unwrap(),
        ApplyOutcome::Blocked
    );
}

async fn pending_timers_and_next_due_ms_follow_the_schedule(h: Harness) {
    let e = &h.engine;
    assert_eq!(e.pending_timers().await.unwrap(), 0);
    assert_eq!(fire(e, T0).await, TimerSweep::default());
    // Orders of (on partitioned engines) different partitions.
    for (id, due) in [("o1", T0 + 300), ("o2", T0 + 100), ("o3", T0 + 200)] {
        let cmd = elapsed(id, OrderStatus::Confirmed, 2);
        confirm_with(
            e,
            id,
            StepWrites {
                heartbeat: None,
                follow_up: timer(&cmd, due, None),
                ..StepWrites::default()
            },
        )
        .await;
    }
    assert_eq!(e.pending_timers().await.unwrap(), 3);
    let sweep = fire(e, T0).await;
    assert_eq!(sweep.fired, Vec::<u64>::new());
    assert_eq!(sweep.next_due_ms, Some(T0 + 100), "the earliest of all");
    let sweep = fire(e, T0 + 150).await;
    assert_eq!(sweep.fired, [T0 + 100]);
    assert_eq!(sweep.next_due_ms, Some(T0 + 200));
    assert_eq!(e.pending_timers().await.unwrap(), 2);
    let sweep = fire(e, T0 + 1_000).await;
    assert_eq!(sweep.fired, [T0 + 200, T0 + 300]);
    assert_eq!(sweep.next_due_ms, None);
    assert_eq!(e.pending_timers().await.unwrap(), 0);
}

async fn a_refused_change_writes_none_of_its_steps(h: Harness) {
    let e = &h.engine;
    accept(e, "o1").await;
    let cancel = transition("o1", OrderStatus::Cancelled);
    e.enqueue_command(&cancel, None).await.unwrap();
    let batch = receive(e, 10).await;
    assert_eq!(batch.len(), 2);
    let steps_for = |version: u64| StepWrites {
        heartbeat: timer(
            &beat("o1", OrderStatus::Cancelled, version),
            T0 + 1,
            Some("w1"),
        ),
        records: vec![step_record("stateEntered", OrderStatus::Cancelled, version)],
        follow_up: timer(&elapsed("o1", OrderStatus::Cancelled, version), T0, None),
        open_wait: Some("w1".into()),
    };
    let nothing_written = || async {
        assert!(step_kinds(e, "o1").await.is_empty());
        assert_eq!(e.pending_timers().await.unwrap(), 0);
        assert_eq!(
            e.claim_wait("o1", "w1", &callback("o1", OrderStatus::Cancelled, 2))
                .await
                .unwrap(),
            ClaimOutcome::NotWaiting
        );
    };
    // Blocked: the transition waits for the processOrder command.
    let mut change = change_to(e, "o1", OrderStatus::Cancelled).await;
    change.steps = steps_for(2);
    assert_eq!(
        e.apply(&batch[1], Some(&change)).await.unwrap(),
        ApplyOutcome::Blocked
    );
    nothing_written().await;
    // Stale: the order is not at the version the change was decided on.
    let mut status = e.order_status("o1").await.unwrap().unwrap();
    status.version = 7;
    let mut stale = herald::workflow::status_change(&status, OrderStatus::Confirmed, None);
    stale.steps = StepWrites {
        follow_up: queue_now(&first_attempt("o1", OrderStatus::Confirmed, 8)),
        ..steps_for(8)
    };
    assert_eq!(
        e.apply(&batch[0], Some(&stale)).await.unwrap(),
        ApplyOutcome::Stale { current_version: 1 }
    );
    nothing_written().await;
    // AlreadyDone: a second delivery of an applied command.
    let copy = batch[0].clone();
    e.apply(&batch[0], None).await.unwrap();
    assert_eq!(
        e.apply(&copy, Some(&change)).await.unwrap(),
        ApplyOutcome::AlreadyDone
    );
    nothing_written().await;
    assert_eq!(e.order_status("o1").await.unwrap().unwrap().version, 1);
    assert_eq!(
        queued(e).await,
        1,
        "only the transition: no follow-up queued"
    );
}

async fn a_batch_writes_each_changes_steps(h: Harness) {
    let e = &h.engine;
    accept(e, "o1").await;
    accept(e, "o2").await;
    let batch = receive(e, 10).await;
    assert_eq!(batch.len(), 2);
    let of = |id: &str| batch.iter().find(|c| c.message.order_id == id).unwrap();
    let attempt = first_attempt("o1", OrderStatus::Confirmed, 2);
    let mut change1 = change_to(e, "o1", OrderStatus::Confirmed).await;
    change1.steps = StepWrites {
        heartbeat: None,
        records: vec![step_record("stateEntered", OrderStatus::Confirmed, 2)],
        follow_up: queue_now(&attempt),
        open_wait: None,
    };
    let timeout = elapsed("o2", OrderStatus::Confirmed, 2);
    let mut change2 = change_to(e, "o2", OrderStatus::Confirmed).await;
    change2.steps = StepWrites {
        heartbeat: None,
        records: vec![step_record("callbackSent", OrderStatus::Confirmed, 2)],
        follow_up: timer(&timeout, T0, Some("w2")),
        open_wait: Some("w2".into()),
    };
    let outcomes = e
        .apply_batch(&[(of("o1"), Some(&change1)), (of("o2"), Some(&change2))])
        .await
        .unwrap();
    for outcome in outcomes {
        assert!(matches!(
            outcome.unwrap(),
            ApplyOutcome::Applied { event_id: Some(_) }
        ));
    }
    assert_eq!(step_kinds(e, "o1").await, ["stateEntered"]);
    assert_eq!(step_kinds(e, "o2").await, ["callbackSent"]);
    assert_eq!(receive_one(e).await.message, attempt);
    assert_eq!(e.pending_timers().await.unwrap(), 1);
    assert_eq!(fire(e, T0).await.fired, [T0], "the wait w2 was open");
    assert_eq!(receive_one(e).await.message, timeout);
}

async fn a_step_on_a_stale_version_writes_nothing(h: Harness) {
    let e = &h.engine;
    confirm_with(e, "o1", StepWrites::default()).await;
    let got = queue_and_receive(e, &first_attempt("o1", OrderStatus::Confirmed, 1)).await;
    let next = first_attempt("o1", OrderStatus::Confirmed, 2);
    let writes = StepWrites {
        heartbeat: timer(&beat("o1", OrderStatus::Confirmed, 2), T0, Some("w1")),
        records: vec![step_record("taskFailed", OrderStatus::Confirmed, 2)],
        follow_up: queue_now(&next),
        open_wait: Some("w1".into()),
    };
    assert_eq!(
        e.apply_step(&got, 1, &writes).await.unwrap(),
        ApplyOutcome::Stale { current_version: 2 }
    );
    assert!(step_kinds(e, "o1").await.is_empty());
    assert_eq!(e.pending_timers().await.unwrap(), 0, "no heartbeat timer");
    assert_eq!(
        queued(e).await,
        1,
        "only the step itself: no follow-up queued"
    );
    assert_eq!(
        e.claim_wait("o1", "w1", &callback("o1", OrderStatus::Confirmed, 2))
            .await
            .unwrap(),
        ClaimOutcome::NotWaiting,
        "no wait opened"
    );
    // Decided again on the current version, it applies: no event, no version change.
    assert_eq!(
        e.apply_step(&got, 2, &writes).await.unwrap(),
        ApplyOutcome::Applied { event_id: None }
    );
    let record = e.order("o1").await.unwrap().unwrap();
    assert_eq!(
        (record.status.status, record.status.version),
        (OrderStatus::Confirmed, 2)
    );
    assert_eq!(record.history.len(), 2);
    assert_eq!(step_kinds(e, "o1").await, ["taskFailed"]);
    assert_eq!(e.pending_timers().await.unwrap(), 1, "the heartbeat timer");
    assert_eq!(events(e).await.len(), 2, "a step makes no event");
    assert_eq!(receive_one(e).await.message, next);
    // Delivered again, the acknowledged step writes nothing more.
    assert_eq!(
        e.apply_step(&got, 2, &writes).await.unwrap(),
        ApplyOutcome::AlreadyDone
    );
    assert_eq!(step_kinds(e, "o1").await, ["taskFailed"]);
}

async fn a_step_waits_behind_its_orders_earlier_commands(h: Harness) {
    let e = &h.engine;
    accept(e, "o1").await;
    let step = first_attempt("o1", OrderStatus::Accepted, 1);
    e.enqueue_command(&step, None).await.unwrap();
    let batch = receive(e, 10).await;
    assert_eq!(batch.len(), 2);
    assert_eq!(batch[1].message, step);
    let writes = StepWrites {
        heartbeat: None,
        records: vec![step_record("taskSucceeded", OrderStatus::Accepted, 1)],
        ..StepWrites::default()
    };
    assert_eq!(
        e.apply_step(&batch[1], 1, &writes).await.unwrap(),
        ApplyOutcome::Blocked
    );
    assert!(step_kinds(e, "o1").await.is_empty());
    e.apply(&batch[0], None).await.unwrap();
    assert_eq!(
        e.apply_step(&batch[1], 1, &writes).await.unwrap(),
        ApplyOutcome::Applied { event_id: None }
    );
    assert_eq!(step_kinds(e, "o1").await, ["taskSucceeded"]);
}

async fn a_step_sets_the_open_wait_or_leaves_it_as_it_is(h: Harness) {
    let e = &h.engine;
    confirm_with(e, "o1", StepWrites::default()).await;
    let open = |wait: Option<&str>| StepWrites {
        heartbeat: None,
        open_wait: wait.map(str::to_owned),
        ..StepWrites::default()
    };
    let got = queue_and_receive(e, &first_attempt("o1", OrderStatus::Confirmed, 2)).await;
    e.apply_step(&got, 2, &open(Some("w1"))).await.unwrap();
    // A step without a wait of its own leaves w1 open.
    let got = queue_and_receive(e, &first_attempt("o1", OrderStatus::Confirmed, 2)).await;
    e.apply_step(&got, 2, &open(None)).await.unwrap();
    let done = callback("o1", OrderStatus::Confirmed, 2);
    assert_eq!(
        e.claim_wait("o1", "w1", &done).await.unwrap(),
        ClaimOutcome::Queued
    );
    let got = receive_one(e).await;
    assert_eq!(got.message, done);
    // A step with a wait of its own replaces the open one.
    e.apply_step(&got, 2, &open(Some("w2"))).await.unwrap();
    let got = queue_and_receive(e, &first_attempt("o1", OrderStatus::Confirmed, 2)).await;
    e.apply_step(&got, 2, &open(Some("w3"))).await.unwrap();
    assert_eq!(
        e.claim_wait("o1", "w2", &done).await.unwrap(),
        ClaimOutcome::NotWaiting
    );
    assert_eq!(
        e.claim_wait("o1", "w3", &done).await.unwrap(),
        ClaimOutcome::Queued
    );
}

async fn a_status_change_closes_the_open_wait(h: Harness) {
    let e = &h.engine;
    confirm_with(
        e,
        "o1",
        StepWrites {
            heartbeat: None,
            open_wait: Some("w1".into()),
            ..StepWrites::default()
        },
    )
    .await;
    // A change without steps closes w1.
    let got = queue_and_receive(e, &transition("o1", OrderStatus::Preparing)).await;
    let change = change_to(e, "o1", OrderStatus::Preparing).await;
    e.apply(&got, Some(&change)).await.unwrap();
    let done = callback("o1", OrderStatus::Confirmed, 2);
    assert_eq!(
        e.claim_wait("o1", "w1", &done).await.unwrap(),
        ClaimOutcome::NotWaiting
    );
    // A change whose status opens a wait of its own: that one is open, and only that one.
    let got = queue_and_receive(
        e,
        &command(
            "o1",
            Command::Transition {
                status: OrderStatus::Shipped,
                reason: None,
            },
        ),
    )
    .await;
    let mut change = change_to(e, "o1", OrderStatus::Shipped).await;
    change.steps = StepWrites {
        heartbeat: None,
        open_wait: Some("w2".into()),
        ..StepWrites::default()
    };
    e.apply(&got, Some(&change)).await.unwrap();
    let done = callback("o1", OrderStatus::Shipped, 4);
    assert_eq!(
        e.claim_wait("o1", "w1", &done).await.unwrap(),
        ClaimOutcome::NotWaiting
    );
    assert_eq!(
        e.claim_wait("o1", "w2", &done).await.unwrap(),
        ClaimOutcome::Queued
    );
    assert_eq!(receive_one(e).await.message, done);
}

async fn a_wait_is_claimed_once_and_its_command_queued_behind_earlier_ones(h: Harness) {
    let e = &h.engine;
    confirm_with(
        e,
        "o1",
        StepWrites {
            heartbeat: None,
            open_wait: Some("w1".into()),
            ..StepWrites::default()
        },
    )
    .await;
    let cancel = transition("o1", OrderStatus::Cancelled);
    e.enqueue_command(&cancel, None).await.unwrap();
    let done = callback("o1", OrderStatus::Confirmed, 2);
    assert_eq!(
        e.claim_wait("o1", "w1", &done).await.unwrap(),
        ClaimOutcome::Queued
    );
    let again = callback("o1", OrderStatus::Confirmed, 2);
    assert_eq!(
        e.claim_wait("o1", "w1", &again).await.unwrap(),
        ClaimOutcome::NotWaiting,
        "a callback token works once"
    );
    let batch = receive(e, 10).await;
    let messages: Vec<&NewCommand> = batch.iter().map(|c| &c.message).collect();
    assert_eq!(messages, [&cancel, &done], "per-order FIFO, content intact");
}

async fn claiming_a_wait_of_an_unknown_order_is_refused(h: Harness) {
    let e = &h.engine;
    let done = callback("nope", OrderStatus::Confirmed, 2);
    assert_eq!(
        e.claim_wait("nope", "w1", &done).await.unwrap(),
        ClaimOutcome::UnknownOrder
    );
    assert!(receive(e, 10).await.is_empty());
}

async fn a_timeout_loses_to_a_callback_that_claimed_the_wait_first(h: Harness) {
    let e = &h.engine;
    confirm_waiting(e, "o1", "w1", T0).await;
    let done = callback("o1", OrderStatus::Confirmed, 2);
    assert_eq!(
        e.claim_wait("o1", "w1", &done).await.unwrap(),
        ClaimOutcome::Queued
    );
    let sweep = fire(e, T0).await;
    assert_eq!(sweep.fired, Vec::<u64>::new(), "dropped, not fired");
    assert_eq!(sweep.next_due_ms, None);
    assert_eq!(e.pending_timers().await.unwrap(), 0, "removed");
    let got: Vec<NewCommand> = receive(e, 10)
        .await
        .into_iter()
        .map(|c| c.message)
        .collect();
    assert_eq!(got, [done], "only the callback's command");
}

async fn a_timeout_that_claims_the_open_wait_fires_and_closes_it(h: Harness) {
    let e = &h.engine;
    let timeout = confirm_waiting(e, "o1", "w1", T0).await;
    assert_eq!(fire(e, T0).await.fired, [T0]);
    assert_eq!(receive_one(e).await.message, timeout);
    assert_eq!(
        e.claim_wait("o1", "w1", &callback("o1", OrderStatus::Confirmed, 2))
            .await
            .unwrap(),
        ClaimOutcome::NotWaiting,
        "the late callback is refused"
    );
    assert!(receive(e, 10).await.is_empty());
}

async fn a_timeout_of_a_status_the_order_left_is_dropped(h: Harness) {
    let e = &h.engine;
    confirm_waiting(e, "o1", "w1", T0).await;
    let got = queue_and_receive(e, &transition("o1", OrderStatus::Cancelled)).await;
    let change = change_to(e, "o1", OrderStatus::Cancelled).await;
    e.apply(&got, Some(&change)).await.unwrap();
    let sweep = fire(e, T0).await;
    assert_eq!(sweep.fired, Vec::<u64>::new());
    assert_eq!(e.pending_timers().await.unwrap(), 0);
    assert!(receive(e, 10).await.is_empty());
}

async fn a_waiting_receiver_wakes_when_a_timer_fires(h: Harness) {
    let e = h.engine.clone();
    let due = elapsed("o1", OrderStatus::Confirmed, 2);
    confirm_with(
        &e,
        "o1",
        StepWrites {
            heartbeat: None,
            follow_up: timer(&due, T0, None),
            ..StepWrites::default()
        },
    )
    .await;
    let receiver = {
        let e = e.clone();
        tokio::spawn(async move { e.receive_batch(10, Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fire(&e, T0).await.fired, [T0]);
    let got = tokio::time::timeout(Duration::from_secs(3), receiver)
        .await
        .expect("receiver woke before its wait ran out")
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message, due);
}

async fn a_waiting_receiver_wakes_when_a_wait_is_claimed(h: Harness) {
    let e = h.engine.clone();
    confirm_with(
        &e,
        "o1",
        StepWrites {
            heartbeat: None,
            open_wait: Some("w1".into()),
            ..StepWrites::default()
        },
    )
    .await;
    let receiver = {
        let e = e.clone();
        tokio::spawn(async move { e.receive_batch(10, Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let done = callback("o1", OrderStatus::Confirmed, 2);
    assert_eq!(
        e.claim_wait("o1", "w1", &done).await.unwrap(),
        ClaimOutcome::Queued
    );
    let got = tokio::time::timeout(Duration::from_secs(3), receiver)
        .await
        .expect("receiver woke before its wait ran out")
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message, done);
}

async fn heads_its_order_answers_the_fifo_gate_apply_checks_and_writes_nothing(h: Harness) {
    let e = &h.engine;
    accept(e, "o1").await;
    let cancel = transition("o1", OrderStatus::Cancelled);
    e.enqueue_command(&cancel, None).await.unwrap();
    let batch = receive(e, 10).await;
    assert_eq!(batch.len(), 2);
    let (first, second) = (&batch[0], &batch[1]);
    assert!(e.heads_its_order(first).await.unwrap(), "the processOrder");
    assert!(
        !e.heads_its_order(second).await.unwrap(),
        "behind the processOrder"
    );
    // Asking changed nothing: apply sees the same gate.
    assert_eq!(queued(e).await, 2);
    assert_eq!(e.apply(second, None).await.unwrap(), ApplyOutcome::Blocked);
    e.apply(first, None).await.unwrap();
    assert!(
        e.heads_its_order(first).await.unwrap(),
        "completed: apply would say AlreadyDone, not Blocked"
    );
    assert!(e.heads_its_order(second).await.unwrap(), "its turn now");
    // Commands queued after the first: the oldest heads, the others wait.
    let steps: Vec<NewCommand> = (0..2)
        .map(|_| first_attempt("o1", OrderStatus::Accepted, 1))
        .collect();
    for step in &steps {
        e.enqueue_command(step, None).await.unwrap();
    }
    let later = receive(e, 10).await;
    assert_eq!(later.len(), 2);
    assert!(
        !e.heads_its_order(&later[0]).await.unwrap(),
        "behind the transition"
    );
    e.apply(second, None).await.unwrap();
    assert!(e.heads_its_order(&later[0]).await.unwrap());
    assert!(!e.heads_its_order(&later[1]).await.unwrap());
    assert_eq!(
        e.apply_step(&later[1], 1, &StepWrites::default())
            .await
            .unwrap(),
        ApplyOutcome::Blocked,
        "as heads_its_order said"
    );
    assert_eq!(
        e.apply_step(&later[0], 1, &StepWrites::default())
            .await
            .unwrap(),
        ApplyOutcome::Applied { event_id: None }
    );
    assert!(e.heads_its_order(&later[1]).await.unwrap());
}

async fn an_orders_heartbeat_timer_is_replaced_not_added(h: Harness) {
    let e = &h.engine;
    // Confirmed with a callback wait w1: its timeout at T0 + 1000 and a heartbeat at T0.
    let timeout = elapsed("o1", OrderStatus::Confirmed, 2);
    confirm_with(
        e,
        "o1",
        StepWrites {
            records: vec![step_record("callbackSent", OrderStatus::Confirmed, 2)],
            follow_up: timer(&timeout, T0 + 1_000, Some("w1")),
            open_wait: Some("w1".into()),
            heartbeat: timer(&beat("o1", OrderStatus::Confirmed, 2), T0, Some("w1")),
        },
    )
    .await;
    assert_eq!(
        e.pending_timers().await.unwrap(),
        2,
        "timeout and heartbeat"
    );
    assert_eq!(fire(e, T0 - 1).await.next_due_ms, Some(T0));
    // The callback's heartbeat moves the deadline: the old timer leaves the schedule.
    let moved = beat("o1", OrderStatus::Confirmed, 2);
    assert_eq!(
        e.heartbeat(
            "o1",
            "w1",
            timer(&moved, T0 + 500, Some("w1")).as_ref().unwrap()
        )
        .await
        .unwrap(),
        ClaimOutcome::Queued
    );
    assert_eq!(e.pending_timers().await.unwrap(), 2, "replaced, not added");
    let sweep = fire(e, T0 + 100).await;
    assert_eq!(sweep.fired, Vec::<u64>::new(), "the old deadline is gone");
    assert_eq!(sweep.next_due_ms, Some(T0 + 500));
    // A step's heartbeat replaces it too (and leaves the open wait as it is).
    let got = queue_and_receive(e, &first_attempt("o1", OrderStatus::Confirmed, 2)).await;
    let last = beat("o1", OrderStatus::Confirmed, 2);
    let writes = StepWrites {
        heartbeat: timer(&last, T0 + 600, Some("w1")),
        ..StepWrites::default()
    };
    assert_eq!(
        e.apply_step(&got, 2, &writes).await.unwrap(),
        ApplyOutcome::Applied { event_id: None }
    );
    assert_eq!(e.pending_timers().await.unwrap(), 2, "replaced, not added");
    let sweep = fire(e, T0 + 550).await;
    assert_eq!(sweep.fired, Vec::<u64>::new(), "T0 + 500 is gone");
    assert_eq!(sweep.next_due_ms, Some(T0 + 600));
    // Due, it fires like any timer: it claims the wait and queues its command.
    assert_eq!(fire(e, T0 + 600).await.fired, [T0 + 600]);
    assert_eq!(receive_one(e).await.message, last, "content intact");
    assert_eq!(
        e.order("o1").await.unwrap().unwrap().open_wait,
        None,
        "the heartbeat deadline closed the wait"
    );
    // The timeout lost the wait to it: dropped when due.
    assert_eq!(fire(e, T0 + 1_000).await, TimerSweep::default());
    assert_eq!(e.pending_timers().await.unwrap(), 0);
    assert!(receive(e, 10).await.is_empty());
}

async fn a_heartbeat_is_refused_unless_its_wait_is_open(h: Harness) {
    let e = &h.engine;
    let at = |due: u64| timer(&beat("o1", OrderStatus::Confirmed, 2), due, Some("w1")).unwrap();
    assert_eq!(
        e.heartbeat("o1", "w1", &at(T0)).await.unwrap(),
        ClaimOutcome::UnknownOrder
    );
    confirm_with(e, "o1", StepWrites::default()).await;
    assert_eq!(
        e.heartbeat("o1", "w1", &at(T0)).await.unwrap(),
        ClaimOutcome::NotWaiting,
        "no wait open"
    );
    assert_eq!(e.pending_timers().await.unwrap(), 0, "nothing written");
    let got = queue_and_receive(e, &first_attempt("o1", OrderStatus::Confirmed, 2)).await;
    let writes = StepWrites {
        open_wait: Some("w1".into()),
        heartbeat: Some(at(T0 + 100)),
        ..StepWrites::default()
    };
    e.apply_step(&got, 2, &writes).await.unwrap();
    assert_eq!(
        e.heartbeat("o1", "w2", &at(T0 + 200)).await.unwrap(),
        ClaimOutcome::NotWaiting,
        "another wait"
    );
    assert_eq!(e.pending_timers().await.unwrap(), 1);
    let sweep = fire(e, T0).await;
    assert_eq!(
        sweep.next_due_ms,
        Some(T0 + 100),
        "the refused heartbeat replaced nothing"
    );
    // Claimed by the callback, the wait is closed: a heartbeat after it is refused.
    let done = callback("o1", OrderStatus::Confirmed, 2);
    assert_eq!(
        e.claim_wait("o1", "w1", &done).await.unwrap(),
        ClaimOutcome::Queued
    );
    assert_eq!(
        e.heartbeat("o1", "w1", &at(T0 + 300)).await.unwrap(),
        ClaimOutcome::NotWaiting
    );
    assert_eq!(fire(e, T0).await.next_due_ms, Some(T0 + 100));
}

async fn a_heartbeat_timer_that_lost_its_wait_is_dropped(h: Harness) {
    let e = &h.engine;
    confirm_with(
        e,
        "o1",
        StepWrites {
            open_wait: Some("w1".into()),
            heartbeat: timer(&beat("o1", OrderStatus::Confirmed, 2), T0, Some("w1")),
            ..StepWrites::default()
        },
    )
    .await;
    // The order moves on (closing w1) before the heartbeat deadline.
    let got = queue_and_receive(e, &transition("o1", OrderStatus::Cancelled)).await;
    let change = change_to(e, "o1", OrderStatus::Cancelled).await;
    e.apply(&got, Some(&change)).await.unwrap();
    assert_eq!(e.pending_timers().await.unwrap(), 1);
    let sweep = fire(e, T0).await;
    assert_eq!(sweep, TimerSweep::default(), "dropped, not fired");
    assert_eq!(e.pending_timers().await.unwrap(), 0);
    assert!(receive(e, 10).await.is_empty());
}

async fn the_order_shows_its_open_wait(h: Harness) {
    let e = &h.engine;
    let open_wait = |id: &'static str| async move { e.order(id).await.unwrap().unwrap().open_wait };
    confirm_with(e, "o1", StepWrites::default()).await;
    assert_eq!(open_wait("o1").await, None, "never opened");
    confirm_with(
        e,
        "o2",
        StepWrites {
            open_wait: Some("w1".into()),
            ..StepWrites::default()
        },
    )
    .await;
    assert_eq!(open_wait("o2").await.as_deref(), Some("w1"));
    let done = callback("o2", OrderStatus::Confirmed, 2);
    e.claim_wait("o2", "w1", &done).await.unwrap();
    assert_eq!(open_wait("o2").await, None, "claimed: closed");
    let got = receive_one(e).await;
    let writes = StepWrites {
        open_wait: Some("w2".into()),
        ..StepWrites::default()
    };
    e.apply_step(&got, 2, &writes).await.unwrap();
    assert_eq!(open_wait("o2").await.as_deref(), Some("w2"));
    let got = queue_and_receive(e, &transition("o2", OrderStatus::Cancelled)).await;
    let change = change_to(e, "o2", OrderStatus::Cancelled).await;
    e.apply(&got, Some(&change)).await.unwrap();
    assert_eq!(open_wait("o2").await, None, "a status change closes it");
}

// ---- Per-order ordered webhooks (issue 14) ----

/// A delivery of order `order` at `version` to a `perOrder` endpoint, due at `created_at_ms`.
fn ordered(id: &str, endpoint_id: &str, order: &str, version: u64, created_at_ms: u64) -> Delivery {
    Delivery {
        order_line: Some(OrderLine {
            order_id: order.into(),
            version,
        }),
        ..delivery(id, endpoint_id, created_at_ms, created_at_ms)
    }
}

fn ordered_endpoint(id: &str) -> Endpoint {
    Endpoint {
        ordering: Ordering::PerOrder,
        ..endpoint(id)
    }
}

async fn succeed(e: &Arc<dyn Engine>, id: &str, at_ms: u64) {
    e.finish_attempt(
        id,
        &attempt(1, at_ms, Some(200)),
        &AttemptOutcome::Succeeded,
        DAY,
    )
    .await
    .unwrap();
}

async fn ordered_deliveries_of_one_order_go_out_one_at_a_time_in_version_order(h: Harness) {
    let e = &h.engine;
    e.put_endpoint(&ordered_endpoint("ep_1")).await.unwrap();
    // Created in two batches, the second one (versions 3, 4) first: the line is by version.
    create(e, &[ordered("msg_2", "ep_1", "o/1 é", 2, 1_000)]).await;
    create(
        e,
        &[
            ordered("msg_4", "ep_1", "o/1 é", 4, 1_000),
            ordered("msg_3", "ep_1", "o/1 é", 3, 1_000),
        ],
    )
    .await;
    let waiting = e.delivery("msg_3").await.unwrap().unwrap();
    assert_eq!(waiting.state, DeliveryState::Pending);
    assert_eq!(waiting.next_attempt_at_ms, None);
    assert_eq!(
        waiting.order_line,
        Some(OrderLine {
            order_id: "o/1 é".into(),
            version: 3
        })
    );
    let mut sent = Vec::new();
    for now in [2_000, 3_000, 4_000] {
        let due = claim(e, now, 10, LONG_LEASE).await;
        assert_eq!(due.len(), 1, "one delivery of the order at a time");
        sent.push(due[0].id.clone());
        succeed(e, &due[0].id, now).await;
    }
    assert_eq!(sent, ["msg_2", "msg_3", "msg_4"]);
    assert!(claim(e, 9_000, 10, LONG_LEASE).await.is_empty());
    assert_eq!(e.next_due_ms().await.unwrap(), None);
    // The line is empty again: the order's next delivery goes out at once.
    create(e, &[ordered("msg_5", "ep_1", "o/1 é", 5, 10_000)]).await;
    assert_eq!(ids(&claim(e, 10_000, 10, LONG_LEASE).await), ["msg_5"]);
}

async fn a_retrying_order_does_not_hold_back_other_orders_or_unordered_deliveries(h: Harness) {
    let e = &h.engine;
    e.put_endpoint(&ordered_endpoint("ep_1")).await.unwrap();
    e.put_endpoint(&endpoint("ep_2")).await.unwrap();
    create(
        e,
        &[
            ordered("msg_x1", "ep_1", "x", 1, 1_000),
            ordered("msg_x2", "ep_1", "x", 2, 1_000),
            ordered("msg_y1", "ep_1", "y", 1, 1_000),
            ordered("msg_y2", "ep_1", "y", 2, 1_000),
            delivery("msg_u1", "ep_2", 1_000, 1_000),
            delivery("msg_u2", "ep_2", 1_000, 1_000),
        ],
    )
    .await;
    let mut first = ids(&claim(e, 1_000, 10, LONG_LEASE).await)
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    first.sort();
    // Unordered deliveries are all due at once; each order sends its head only.
    assert_eq!(first, ["msg_u1", "msg_u2", "msg_x1", "msg_y1"]);
    // x's head fails and retries later; y goes on.
    e.finish_attempt(
        "msg_x1",
        &attempt(1, 1_100, Some(500)),
        &AttemptOutcome::RetryAt(50_000),
        DAY,
    )
    .await
    .unwrap();
    succeed(e, "msg_y1", 1_200).await;
    assert_eq!(ids(&claim(e, 2_000, 10, LONG_LEASE).await), ["msg_y2"]);
    succeed(e, "msg_y2", 2_100).await;
    assert!(claim(e, 49_999, 10, LONG_LEASE).await.is_empty());
    assert_eq!(
        e.delivery("msg_x2")
            .await
            .unwrap()
            .unwrap()
            .next_attempt_at_ms,
        None
    );
    // Its retry is x's head again; then x2.
    assert_eq!(ids(&claim(e, 50_000, 10, LONG_LEASE).await), ["msg_x1"]);
    succeed(e, "msg_x1", 50_100).await;
    assert_eq!(ids(&claim(e, 50_100, 10, LONG_LEASE).await), ["msg_x2"]);
}

async fn a_failed_head_releases_the_next_and_a_manual_retry_waits_for_its_turn(h: Harness) {
    let e = &h.engine;
    e.put_endpoint(&ordered_endpoint("ep_1")).await.unwrap();
    create(
        e,
        &[
            ordered("msg_1", "ep_1", "x", 1, 1_000),
            ordered("msg_2", "ep_1", "x", 2, 1_000),
            ordered("msg_3", "ep_1", "x", 3, 1_000),
        ],
    )
    .await;
    assert_eq!(ids(&claim(e, 1_000, 10, LONG_LEASE).await), ["msg_1"]);
    // The schedule is exhausted: msg_1 is failed (kept for manual retry), msg_2 is released
    // at the time of that attempt.
    e.finish_attempt(
        "msg_1",
        &attempt(8, 1_500, Some(500)),
        &AttemptOutcome::Failed,
        DAY,
    )
    .await
    .unwrap();
    assert_eq!(
        e.delivery("msg_1").await.unwrap().unwrap().state,
        DeliveryState::Failed
    );
    assert_eq!(
        e.delivery("msg_2")
            .await
            .unwrap()
            .unwrap()
            .next_attempt_at_ms,
        Some(1_500)
    );
    assert_eq!(ids(&claim(e, 1_500, 10, LONG_LEASE).await), ["msg_2"]);
    // A manual retry of msg_1 while msg_2 is in flight: msg_1 rejoins the line and, being
    // the lowest version, goes out as soon as msg_2 ends, before msg_3.
    assert!(e.retry_delivery("msg_1", 1_600).await.unwrap());
    let retried = e.delivery("msg_1").await.unwrap().unwrap();
    assert_eq!(retried.state, DeliveryState::Pending);
    assert_eq!(retried.next_attempt_at_ms, None);
    assert!(claim(e, 1_600, 10, LONG_LEASE).await.is_empty());
    succeed(e, "msg_2", 1_700).await;
    assert_eq!(ids(&claim(e, 1_700, 10, LONG_LEASE).await), ["msg_1"]);
    succeed(e, "msg_1", 1_800).await;
    assert_eq!(ids(&claim(e, 1_800, 10, LONG_LEASE).await), ["msg_3"]);
    succeed(e, "msg_3", 1_900).await;
    // Alone in its line, a retried delivery is due when asked.
    assert!(e.retry_delivery("msg_3", 5_000).await.unwrap());
    assert_eq!(
        e.delivery("msg_3")
            .await
            .unwrap()
            .unwrap()
            .next_attempt_at_ms,
        Some(5_000)
    );
    assert_eq!(ids(&claim(e, 5_000, 10, LONG_LEASE).await), ["msg_3"]);
}

async fn recovering_an_orders_failed_deliveries_sends_them_one_at_a_time(h: Harness) {
    let e = &h.engine;
    e.put_endpoint(&ordered_endpoint("ep_1")).await.unwrap();
    create(
        e,
        &[
            ordered("msg_1", "ep_1", "x", 1, 1_000),
            ordered("msg_2", "ep_1", "x", 2, 2_000),
        ],
    )
    .await;
    for (id, at) in [("msg_1", 3_000), ("msg_2", 4_000)] {
        assert_eq!(ids(&claim(e, at, 10, LONG_LEASE).await), [id]);
        e.finish_attempt(id, &attempt(1, at, None), &AttemptOutcome::Failed, DAY)
            .await
            .unwrap();
    }
    assert_eq!(e.recover_failed("ep_1", 0, 9_000).await.unwrap(), 2);
    assert_eq!(ids(&claim(e, 9_000, 10, LONG_LEASE).await), ["msg_1"]);
    succeed(e, "msg_1", 9_100).await;
    assert_eq!(ids(&claim(e, 9_100, 10, LONG_LEASE).await), ["msg_2"]);
}

async fn deleting_an_ordered_endpoint_and_sweeping_leaves_no_line_behind(h: Harness) {
    let e = &h.engine;
    e.put_endpoint(&ordered_endpoint("ep_1")).await.unwrap();
    create(
        e,
        &[
            ordered("msg_1", "ep_1", "x", 1, 1_000),
            ordered("msg_2", "ep_1", "x", 2, 1_000),
        ],
    )
    .await;
    assert!(e.delete_endpoint("ep_1").await.unwrap());
    assert_eq!(e.sweep_deliveries("ep_1", 0, 100).await.unwrap(), 2);
    // A new endpoint of the same id starts with an empty line.
    e.put_endpoint(&ordered_endpoint("ep_1")).await.unwrap();
    create(e, &[ordered("msg_3", "ep_1", "x", 3, 2_000)]).await;
    assert_eq!(ids(&claim(e, 2_000, 10, LONG_LEASE).await), ["msg_3"]);
}

async fn sweeping_a_lines_head_hands_the_turn_to_the_next(h: Harness) {
    let e = &h.engine;
    e.put_endpoint(&ordered_endpoint("ep_1")).await.unwrap();
    create(
        e,
        &[
            ordered("msg_1", "ep_1", "x", 1, 1_000),
            ordered("msg_2", "ep_1", "x", 2, 2_000),
        ],
    )
    .await;
    // Retention removes the scheduled head (the older record) while msg_2 waits behind it.
    assert_eq!(e.sweep_deliveries("ep_1", 1_500, 100).await.unwrap(), 1);
    // The line's next one is scheduled (at the sweep's clock), not left waiting for ever.
    let later = herald::model::now_millis() + 60_000;
    assert_eq!(ids(&claim(e, later, 10, LONG_LEASE).await), ["msg_2"]);
}

async fn an_ordered_delivery_waits_for_earlier_events_and_yields_to_a_lower_version(h: Harness) {
    let e = &h.engine;
    e.put_endpoint(&ordered_endpoint("ep_1")).await.unwrap();
    // Two events of one order, claimed by two dispatchers.
    let first = append_event(e, "o1").await;
    let second = append_event(e, "o1").await;
    let by_n1 = e
        .claim_events("n1", 1, Duration::ZERO, LONG_LEASE)
        .await
        .unwrap();
    assert_eq!(entry_ids(&by_n1), [first]);
    let by_n2 = e
        .claim_events("n2", 1, Duration::ZERO, LONG_LEASE)
        .await
        .unwrap();
    assert_eq!(entry_ids(&by_n2), [second]);
    let qualified = |(k, id): (usize, EventId)| qualified_entry_id(k, &id.to_string());
    let of_event = |id: &str, version: u64, event: (usize, EventId)| Delivery {
        event_id: qualified(event),
        ..ordered(id, "ep_1", "o1", version, 1_000)
    };
    // n2 stores version 2 first: it heads the line.
    e.create_deliveries(&[second], &[of_event("msg_2", 2, second)])
        .await
        .unwrap();
    let due = claim(e, 1_000, 10, LONG_LEASE).await;
    assert_eq!(ids(&due), ["msg_2"]);
    assert_eq!(due[0].ordered_event_id, Some(qualified(second)));
    // The earlier event is claimed and not yet turned into deliveries: not its turn yet.
    assert_eq!(
        e.ordered_turn("msg_2", &qualified(second), 1_000)
            .await
            .unwrap(),
        OrderedTurn::EarlierEventsPending
    );
    // n1 stores version 1: msg_2 gives its turn to it.
    e.create_deliveries(&[first], &[of_event("msg_1", 1, first)])
        .await
        .unwrap();
    assert_eq!(
        e.ordered_turn("msg_2", &qualified(second), 1_100)
            .await
            .unwrap(),
        OrderedTurn::Yielded
    );
    assert_eq!(
        e.delivery("msg_2")
            .await
            .unwrap()
            .unwrap()
            .next_attempt_at_ms,
        None
    );
    assert_eq!(ids(&claim(e, 1_100, 10, LONG_LEASE).await), ["msg_1"]);
    assert_eq!(
        e.ordered_turn("msg_1", &qualified(first), 1_100)
            .await
            .unwrap(),
        OrderedTurn::Ready
    );
    succeed(e, "msg_1", 1_200).await;
    assert_eq!(ids(&claim(e, 1_200, 10, LONG_LEASE).await), ["msg_2"]);
    assert_eq!(
        e.ordered_turn("msg_2", &qualified(second), 1_200)
            .await
            .unwrap(),
        OrderedTurn::Ready
    );
}
/// Accepts an order of `customer` at `partner` (none when `None`).
async fn accept_owned(engine: &Arc<dyn Engine>, id: &str, customer: &str, partner: Option<&str>) {
    let mut o = order(id);
    o.customer_id = customer.into();
    o.partner_id = partner.map(Into::into);
    let cmd = command(id, process(&o));
    let outcome = engine
        .accept_order(&o, &accepted_event(&o), &cmd, None)
        .await
        .unwrap();
    assert!(
        matches!(outcome, AcceptOutcome::Accepted { .. }),
        "{outcome:?}"
    );
}

fn listed(listing: Listing) -> Vec<(String, OrderStatus, u64)> {
    match listing {
        Listing::Statuses(statuses) => statuses
            .into_iter()
            .map(|s| (s.order_id, s.status, s.version))
            .collect(),
        Listing::TooMany { max } => panic!("listing refused over {max}"),
    }
}

async fn orders_are_listed_by_customer_partner_and_all_with_their_current_status(h: Harness) {
    let e = &h.engine;
    accept_owned(e, "o-1", "ann", Some("acme")).await;
    accept_owned(e, "o-2", "ann", Some("zeta")).await;
    accept_owned(e, "o-3", "bob", Some("acme")).await;
    accept_owned(e, "o-4", "ann", None).await;
    // A customerId that is a prefix of another's lists only its own orders.
    accept_owned(e, "o-5", "an", Some("acme")).await;
    // o-1 moves on: a listing shows its current status and version.
    let received = receive(e, 10).await;
    let first = received
        .iter()
        .find(|r| r.message.order_id == "o-1")
        .unwrap();
    let change = change_to(e, "o-1", OrderStatus::Confirmed).await;
    e.apply(first, Some(&change)).await.unwrap();
    let id = |s: &str| s.to_string();
    assert_eq!(
        listed(
            e.list_statuses(&OrderScope::Customer(id("ann")), 100)
                .await
                .unwrap()
        ),
        [
            (id("o-1"), OrderStatus::Confirmed, 2),
            (id("o-2"), OrderStatus::Accepted, 1),
            (id("o-4"), OrderStatus::Accepted, 1),
        ]
    );
    let acme = listed(
        e.list_statuses(&OrderScope::Partner(id("acme")), 100)
            .await
            .unwrap(),
    );
    let names: Vec<&str> = acme.iter().map(|(o, _, _)| o.as_str()).collect();
    assert_eq!(names, ["o-1", "o-3", "o-5"]);
    let all = listed(e.list_statuses(&OrderScope::All, 100).await.unwrap());
    let names: Vec<&str> = all.iter().map(|(o, _, _)| o.as_str()).collect();
    assert_eq!(names, ["o-1", "o-2", "o-3", "o-4", "o-5"]);
    assert_eq!(
        listed(
            e.list_statuses(&OrderScope::Order(id("o-3")), 100)
                .await
                .unwrap()
        ),
        [(id("o-3"), OrderStatus::Accepted, 1)]
    );
    assert!(
        listed(
            e.list_statuses(&OrderScope::Order(id("o-9")), 100)
                .await
                .unwrap()
        )
        .is_empty()
    );
    assert!(
        listed(
            e.list_statuses(&OrderScope::Customer(id("nobody")), 100)
                .await
                .unwrap()
        )
        .is_empty()
    );
    assert!(
        listed(
            e.list_statuses(&OrderScope::Partner(id("nobody")), 100)
                .await
                .unwrap()
        )
        .is_empty()
    );
}

async fn a_listing_over_its_bound_is_refused_whole(h: Harness) {
    let e = &h.engine;
    for n in 0..6 {
        accept_owned(e, &format!("o-{n}"), "ann", Some("acme")).await;
    }
    for scope in [
        OrderScope::Customer("ann".into()),
        OrderScope::Partner("acme".into()),
        OrderScope::All,
    ] {
        assert_eq!(
            e.list_statuses(&scope, 5).await.unwrap(),
            Listing::TooMany { max: 5 },
            "{scope:?}"
        );
        assert_eq!(
            listed(e.list_statuses(&scope, 6).await.unwrap()).len(),
            6,
            "{scope:?}"
        );
    }
}
