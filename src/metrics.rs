//! Process metrics in the Prometheus text format, kept by the `metrics` crate's Prometheus
//! exporter. Each [`Metrics`] has its own recorder (none is installed globally: tests and the
//! fuzzing harness build several servers in one process). Counters are registered once and
//! kept as handles, so the hot path bumps an atomic without a lookup, a lock or an allocation.
//! Values that live elsewhere (the engine's queue depth, the push side's own counters) are
//! read at scrape time into a recorder made for that scrape, so a value the engine could not
//! give is absent rather than stale.
//!
//! This module never writes the exposition format by hand: the exporter does.

use crate::engine::QueueStats;
use metrics::{Counter, Gauge, Key, KeyName, Label, Level, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The exporter ignores metadata; registration needs some.
const METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

macro_rules! counters {
    ($( $field:ident => $name:literal, $help:literal; )*) => {
        /// Every counter Herald exports. Names follow Prometheus conventions (`_total`).
        pub struct Metrics {
            $( pub $field: Counter, )*
            /// Series owned by other parts (the push hub), read at scrape time.
            pub extra: OnceLock<ExtraSeries>,
            /// How late webhook attempts start after their due time.
            pub webhook_lateness: Histogram,
            /// How late workflow timers are queued after their due time.
            pub timer_lateness: Histogram,
            /// API requests answered 429 by the per-credential rate limit, by role.
            pub api_rate_limited: RoleCounter,
            /// Long-polls (`GET /v1/events?waitMs=`) waiting on this node now.
            pub long_polls_waiting: Gauge,
            /// Long-polls refused for the credential's bound (429).
            pub long_polls_refused_credential: Counter,
            /// Long-polls refused for the node's bound (503).
            pub long_polls_refused_node: Counter,
            recorder: PrometheusRecorder,
        }

        impl Default for Metrics {
            fn default() -> Self {
                let recorder = PrometheusBuilder::new()
                    .set_buckets_for_metric(Matcher::Full(LATENESS.0.into()), &HISTOGRAM_BOUNDS)
                    .unwrap_or_else(|_| unreachable!("HISTOGRAM_BOUNDS is not empty"))
                    .set_buckets_for_metric(Matcher::Full(TIMER_LATENESS.0.into()), &HISTOGRAM_BOUNDS)
                    .unwrap_or_else(|_| unreachable!("HISTOGRAM_BOUNDS is not empty"))
                    .build_recorder();
                Metrics {
                    $( $field: counter(&recorder, $name, $help, Vec::new()), )*
                    extra: OnceLock::new(),
                    webhook_lateness: Histogram::new(&recorder, LATENESS),
                    timer_lateness: Histogram::new(&recorder, TIMER_LATENESS),
                    api_rate_limited: RoleCounter::new(&recorder, RATE_LIMITED),
                    long_polls_waiting: gauge(&recorder, LONG_POLLS_WAITING),
                    long_polls_refused_credential: refused_long_polls(&recorder, "credential"),
                    long_polls_refused_node: refused_long_polls(&recorder, "node"),
                    recorder,
                }
            }
        }
    };
}

/// Adds the series of another part to a scrape.
pub type ExtraSeries = Box<dyn Fn(&Scrape) + Send + Sync>;

counters! {
    orders_accepted => "herald_orders_accepted_total", "Orders accepted at intake (202).";
    transitions_queued => "herald_transitions_queued_total", "Transition commands queued (202).";
    intake_refused => "herald_intake_refused_total", "Intake requests refused with 4xx.";
    intake_unavailable => "herald_intake_unavailable_total", "Intake requests answered 503 because the engine was unreachable.";
    commands_applied => "herald_commands_applied_total", "Commands completed with a status change.";
    commands_refused => "herald_commands_refused_total", "Transition commands acknowledged without change because the workflow no longer allowed them when they ran.";
    commands_redelivered_done => "herald_commands_already_done_total", "Redelivered commands found already applied (no second event).";
    commands_blocked => "herald_commands_blocked_total", "Times a command waited for an earlier command of the same order (per-order FIFO).";
    worker_errors => "herald_worker_errors_total", "Worker operations that failed (the command is delivered again later).";
    events_read => "herald_events_read_total", "Valid event log entries read by this node's tail.";
    events_malformed => "herald_events_malformed_total", "Event log entries that did not parse; each is set aside.";
    tail_errors => "herald_event_tail_errors_total", "Failed reads of the event log (retried with backoff).";
    tail_gaps => "herald_event_tail_gaps_total", "Times the event tail found entries removed from the log (retention) before it read them: this node's subscribers missed them.";
    webhook_events_dispatched => "herald_webhook_events_dispatched_total", "Event log entries turned into deliveries (or acknowledged with none) by this node.";
    webhook_deliveries_created => "herald_webhook_deliveries_created_total", "Webhook deliveries created by this node's dispatcher.";
    webhook_deliveries_held => "herald_webhook_deliveries_held_total", "Deliveries to perOrder endpoints created behind an earlier pending delivery of their order (they wait for it to end; none for unordered endpoints).";
    webhook_dispatch_errors => "herald_webhook_dispatch_errors_total", "Dispatcher engine calls that failed (the events are claimed again).";
    webhook_attempts => "herald_webhook_attempts_total", "Webhook HTTP attempts made.";
    webhook_succeeded => "herald_webhook_deliveries_succeeded_total", "Webhook deliveries answered with 2xx.";
    webhook_retried => "herald_webhook_retries_scheduled_total", "Failed attempts put back on the retry schedule.";
    webhook_failed => "herald_webhook_deliveries_failed_total", "Webhook deliveries failed for good (schedule exhausted or 410); kept for manual retry.";
    webhook_endpoints_disabled => "herald_webhook_endpoints_disabled_total", "Endpoints disabled (410 Gone, or failing for webhooks.disable_after).";
    webhook_deferred => "herald_webhook_deferred_total", "Deliveries put back a little later without an attempt because their endpoint was at its in-flight or rate limit, or (perOrder endpoints) an earlier event was still being dispatched.";
    webhook_sender_errors => "herald_webhook_sender_errors_total", "Sender engine calls that failed (the delivery is taken again when its lease ends).";
    workflow_calls => "herald_workflow_calls_total", "HTTP calls made by workflow task and callback steps.";
    workflow_call_failures => "herald_workflow_call_failures_total", "Workflow step calls that failed (timeout, connect, 4xx, 5xx, refused, invalid).";
    workflow_retries => "herald_workflow_retries_scheduled_total", "Failed workflow steps put on a retry timer.";
    workflow_caught => "herald_workflow_caught_total", "Failed workflow steps routed to a status by a catcher.";
    workflow_timers_fired => "herald_workflow_timers_fired_total", "Workflow timers (waits, retries, callback timeouts) turned into commands by this node.";
    workflow_callbacks => "herald_workflow_callbacks_total", "Callback task tokens completed (success or failure) through the API on this node.";
    webhook_events_lost => "herald_webhook_events_lost_total", "Events trimmed from the event log (retention) before any dispatcher read them, found by this node: no endpoint received them (GET /v1/webhooks/{id} shows the ranges).";
}

/// A series' name and HELP text.
type Family = (&'static str, &'static str);

const LATENESS: Family = (
    "herald_webhook_attempt_lateness_seconds",
    "How long after its due time a webhook attempt started.",
);
const TIMER_LATENESS: Family = (
    "herald_workflow_timer_lateness_seconds",
    "How long after its due time a workflow timer was queued as a command.",
);
const RATE_LIMITED: Family = (
    "herald_api_rate_limited_total",
    "API requests answered 429 by the per-credential rate limit (http.rate_limit_*).",
);

const LONG_POLLS_WAITING: Family = (
    "herald_long_polls_waiting",
    "Long-polls (GET /v1/events?waitMs=) waiting on this node (at most http.long_poll_max_waiting).",
);
const LONG_POLLS_REFUSED: Family = (
    "herald_long_polls_refused_total",
    "Long-polls refused: limit=\"credential\" (429, http.long_poll_max_waiting_per_credential) or limit=\"node\" (503, http.long_poll_max_waiting).",
);

fn refused_long_polls(recorder: &PrometheusRecorder, limit: &'static str) -> Counter {
    let (name, help) = LONG_POLLS_REFUSED;
    counter(
        recorder,
        name,
        help,
        vec![Label::from_static_parts("limit", limit)],
    )
}

fn gauge(recorder: &PrometheusRecorder, (name, help): Family) -> Gauge {
    recorder.describe_gauge(
        KeyName::from_const_str(name),
        None,
        SharedString::const_str(help),
    );
    recorder.register_gauge(&Key::from_static_name(name), &METADATA)
}

fn counter(
    recorder: &PrometheusRecorder,
    name: &'static str,
    help: &'static str,
    labels: Vec<Label>,
) -> Counter {
    recorder.describe_counter(
        KeyName::from_const_str(name),
        None,
        SharedString::const_str(help),
    );
    recorder.register_counter(&Key::from_parts(name, labels), &METADATA)
}

/// A counter labelled with the caller's role (`admin`, `partner`, `customer`).
pub struct RoleCounter {
    admin: Counter,
    partner: Counter,
    customer: Counter,
}

impl RoleCounter {
    fn new(recorder: &PrometheusRecorder, (name, help): Family) -> RoleCounter {
        let role = |role: &'static str| {
            counter(
                recorder,
                name,
                help,
                vec![Label::from_static_parts("role", role)],
            )
        };
        RoleCounter {
            admin: role("admin"),
            partner: role("partner"),
            customer: role("customer"),
        }
    }

    /// Counts one for `role`; an unknown role counts nowhere.
    pub fn inc(&self, role: &str) {
        let counter = match role {
            "admin" => &self.admin,
            "partner" => &self.partner,
            "customer" => &self.customer,
            _ => return,
        };
        counter.increment(1);
    }
}

/// A Prometheus histogram over fixed buckets (seconds).
pub struct Histogram {
    recorded: metrics::Histogram,
    /// The exporter buffers samples until it folds them into the buckets; a node nobody
    /// scrapes folds them every [`FOLD_EVERY`] samples, so the buffer stays small.
    unfolded: AtomicU64,
    recorder: metrics_exporter_prometheus::PrometheusHandle,
}

const FOLD_EVERY: u64 = 1024;

const HISTOGRAM_BOUNDS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Histogram {
    fn new(recorder: &PrometheusRecorder, (name, help): Family) -> Histogram {
        recorder.describe_histogram(
            KeyName::from_const_str(name),
            None,
            SharedString::const_str(help),
        );
        Histogram {
            recorded: recorder.register_histogram(&Key::from_static_name(name), &METADATA),
            unfolded: AtomicU64::new(0),
            recorder: recorder.handle(),
        }
    }

    pub fn observe(&self, value: std::time::Duration) {
        self.recorded.record(value.as_secs_f64());
        if self.unfolded.fetch_add(1, Ordering::Relaxed) + 1 >= FOLD_EVERY {
            self.unfolded.store(0, Ordering::Relaxed);
            self.recorder.run_upkeep();
        }
    }
}

/// The values read at scrape time, in a recorder of their own made for one scrape.
pub struct Scrape {
    recorder: PrometheusRecorder,
}

impl Scrape {
    fn new() -> Scrape {
        Scrape {
            recorder: PrometheusBuilder::new().build_recorder(),
        }
    }

    pub fn gauge(&self, name: &'static str, help: &'static str, value: u64) {
        self.recorder.describe_gauge(
            KeyName::from_const_str(name),
            None,
            SharedString::const_str(help),
        );
        self.recorder
            .register_gauge(&Key::from_static_name(name), &METADATA)
            .set(value as f64);
    }

    /// A counter kept elsewhere (an atomic of the push side), exported with its value now.
    pub fn counter(&self, name: &'static str, help: &'static str, value: u64) {
        counter(&self.recorder, name, help, Vec::new()).absolute(value);
    }
}

impl Metrics {
    pub fn inc(counter: &Counter) {
        counter.increment(1);
    }

    pub fn add(counter: &Counter, n: u64) {
        counter.increment(n);
    }

    /// The full exposition. `queue` is `None` when the engine could not be reached;
    /// `blocking_in_use` is `None` for an engine without a blocking-connection pool.
    pub fn render(
        &self,
        queue: Option<&QueueStats>,
        engine_up: bool,
        blocking_in_use: Option<usize>,
    ) -> String {
        let scrape = Scrape::new();
        if let Some(in_use) = blocking_in_use {
            scrape.gauge(
                "herald_engine_blocking_connections_in_use",
                "Dedicated Redis connections held by blocking reads (at most engine.max_blocking_connections).",
                in_use as u64,
            );
        }
        scrape.gauge(
            "herald_engine_up",
            "1 when the engine answered the scrape's queue query.",
            u64::from(engine_up),
        );
        if let Some(q) = queue {
            scrape.gauge(
                "herald_queue_visible_messages",
                "Commands waiting to be received.",
                q.visible,
            );
            scrape.gauge(
                "herald_queue_in_flight_messages",
                "Commands received and not yet acknowledged.",
                q.in_flight,
            );
            scrape.gauge(
                "herald_queue_dead_letters",
                "Commands in the dead-letter queue.",
                q.dead_letters,
            );
        }
        if let Some(extra) = self.extra.get() {
            extra(&scrape);
        }
        in_stable_order(&[
            self.recorder.handle().render(),
            scrape.recorder.handle().render(),
        ])
    }
}

/// The exporter writes families (and a family's series) in hash order, each family followed
/// by a blank line. Families are put in name order and the series of a counter or gauge in
/// label order, so two scrapes read alike; a histogram's lines keep the exporter's order.
fn in_stable_order(expositions: &[String]) -> String {
    let mut families: Vec<Vec<&str>> = expositions
        .iter()
        .flat_map(|text| text.split("\n\n"))
        .filter(|family| !family.trim().is_empty())
        .map(|family| {
            let mut lines: Vec<&str> = family.lines().collect();
            let is_histogram = lines
                .iter()
                .any(|l| l.starts_with("# TYPE ") && l.ends_with(" histogram"));
            if !is_histogram {
                let comments = lines.iter().take_while(|l| l.starts_with('#')).count();
                lines[comments..].sort_unstable();
            }
            lines
        })
        .collect();
    families.sort_by_key(|lines| family_name(lines));
    let mut out = String::with_capacity(4096);
    for line in families.iter().flatten() {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The name in a family's first comment line (`# HELP <name> ...`).
fn family_name<'a>(lines: &[&'a str]) -> &'a str {
    lines
        .first()
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_help_type_and_value_for_each_counter() {
        let m = Metrics::default();
        Metrics::inc(&m.orders_accepted);
        Metrics::inc(&m.orders_accepted);
        let text = m.render(
            Some(&QueueStats {
                visible: 3,
                in_flight: 1,
                dead_letters: 0,
            }),
            true,
            Some(2),
        );
        assert!(text.contains(
            "# TYPE herald_orders_accepted_total counter\nherald_orders_accepted_total 2\n"
        ));
        assert!(text.contains("herald_engine_blocking_connections_in_use 2\n"));
        assert!(text.contains("herald_queue_visible_messages 3\n"));
        assert!(text.contains("herald_engine_up 1\n"));
        m.api_rate_limited.inc("partner");
        let text = m.render(None, true, None);
        assert!(text.contains("herald_api_rate_limited_total{role=\"partner\"} 1\n"));
        assert!(!text.contains("herald_engine_blocking_connections_in_use"));
        assert!(text.contains("herald_api_rate_limited_total{role=\"admin\"} 0\n"));
        m.long_polls_waiting.increment(2);
        m.long_polls_waiting.decrement(1);
        Metrics::inc(&m.long_polls_refused_node);
        let text = m.render(None, true, None);
        assert!(text.contains("herald_long_polls_waiting 1\n"), "{text}");
        assert!(text.contains("herald_long_polls_refused_total{limit=\"node\"} 1\n"));
        assert!(text.contains("herald_long_polls_refused_total{limit=\"credential\"} 0\n"));
    }

    #[test]
    fn histogram_counts_cumulatively() {
        let m = Metrics::default();
        m.webhook_lateness
            .observe(std::time::Duration::from_millis(20));
        m.webhook_lateness
            .observe(std::time::Duration::from_secs(3));
        let text = m.render(None, false, None);
        assert!(text.contains("herald_webhook_attempt_lateness_seconds_bucket{le=\"0.025\"} 1\n"));
        assert!(text.contains("herald_webhook_attempt_lateness_seconds_bucket{le=\"5\"} 2\n"));
        assert!(text.contains("herald_webhook_attempt_lateness_seconds_count 2\n"));
    }

    #[test]
    fn histogram_folds_its_samples_without_losing_any() {
        let m = Metrics::default();
        for _ in 0..FOLD_EVERY * 2 + 5 {
            m.webhook_lateness
                .observe(std::time::Duration::from_millis(1));
        }
        let text = m.render(None, true, None);
        let count = FOLD_EVERY * 2 + 5;
        assert!(text.contains(&format!(
            "herald_webhook_attempt_lateness_seconds_bucket{{le=\"0.005\"}} {count}\n"
        )));
        assert!(text.contains(&format!(
            "herald_webhook_attempt_lateness_seconds_count {count}\n"
        )));
    }

    #[test]
    fn queue_gauges_are_absent_when_the_engine_did_not_answer() {
        let m = Metrics::default();
        let stats = QueueStats {
            visible: 3,
            in_flight: 1,
            dead_letters: 0,
        };
        assert!(
            m.render(Some(&stats), true, None)
                .contains("herald_queue_visible_messages 3\n")
        );
        let text = m.render(None, false, None);
        assert!(text.contains("herald_engine_up 0\n"));
        assert!(!text.contains("herald_queue_visible_messages"), "{text}");
    }

    #[test]
    fn series_of_other_parts_join_the_scrape_in_name_order() {
        let m = Metrics::default();
        let _ = m.extra.set(Box::new(|scrape| {
            scrape.gauge("herald_push_connections", "Open.", 2);
            scrape.counter("herald_push_deliveries_total", "Queued.", 7);
        }));
        Metrics::inc(&m.webhook_attempts);
        let text = m.render(None, true, None);
        assert!(text.contains(
            "# HELP herald_push_connections Open.\n# TYPE herald_push_connections gauge\nherald_push_connections 2\n"
        ));
        assert!(text.contains(
            "# TYPE herald_push_deliveries_total counter\nherald_push_deliveries_total 7\n"
        ));
        assert!(!text.contains("\n\n"), "no blank lines");
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        assert_eq!(text, m.render(None, true, None), "two scrapes read alike");
    }
}
