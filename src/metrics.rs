//! Process metrics in the Prometheus text format. Counters are plain atomics bumped on the hot
//! path (no locks, no allocation); gauges that live in the engine (queue depth) are read at
//! scrape time.

use crate::engine::QueueStats;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($( $field:ident => $name:literal, $help:literal; )*) => {
        /// Every counter Herald exports. Names follow Prometheus conventions (`_total`).
        #[derive(Default)]
        pub struct Metrics {
            $( pub $field: AtomicU64, )*
            /// Series owned by other parts (the push hub), appended at scrape time.
            pub extra: std::sync::OnceLock<ExtraSeries>,
            /// How late webhook attempts start after their due time.
            pub webhook_lateness: Histogram,
            /// API requests answered 429 by the per-credential rate limit, by role.
            pub api_rate_limited: RoleCounter,
        }

        impl Metrics {
            fn write_counters(&self, out: &mut String) {
                $(
                    let _ = writeln!(out, "# HELP {} {}", $name, $help);
                    let _ = writeln!(out, "# TYPE {} counter", $name);
                    let _ = writeln!(out, "{} {}", $name, self.$field.load(Ordering::Relaxed));
                )*
            }
        }
    };
}

/// Writes more series into the exposition.
pub type ExtraSeries = Box<dyn Fn() -> String + Send + Sync>;

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
    webhook_events_dispatched => "herald_webhook_events_dispatched_total", "Event log entries turned into deliveries (or acknowledged with none) by this node.";
    webhook_deliveries_created => "herald_webhook_deliveries_created_total", "Webhook deliveries created by this node's dispatcher.";
    webhook_dispatch_errors => "herald_webhook_dispatch_errors_total", "Dispatcher engine calls that failed (the events are claimed again).";
    webhook_attempts => "herald_webhook_attempts_total", "Webhook HTTP attempts made.";
    webhook_succeeded => "herald_webhook_deliveries_succeeded_total", "Webhook deliveries answered with 2xx.";
    webhook_retried => "herald_webhook_retries_scheduled_total", "Failed attempts put back on the retry schedule.";
    webhook_failed => "herald_webhook_deliveries_failed_total", "Webhook deliveries failed for good (schedule exhausted or 410); kept for manual retry.";
    webhook_endpoints_disabled => "herald_webhook_endpoints_disabled_total", "Endpoints disabled (410 Gone, or failing for webhooks.disable_after).";
    webhook_deferred => "herald_webhook_deferred_total", "Deliveries put back a little later without an attempt because their endpoint was at its in-flight or rate limit.";
    webhook_sender_errors => "herald_webhook_sender_errors_total", "Sender engine calls that failed (the delivery is taken again when its lease ends).";
}

/// A counter labelled with the caller's role (`admin`, `partner`, `customer`).
#[derive(Default)]
pub struct RoleCounter {
    admin: AtomicU64,
    partner: AtomicU64,
    customer: AtomicU64,
}

impl RoleCounter {
    /// Counts one for `role`; an unknown role counts nowhere.
    pub fn inc(&self, role: &str) {
        let counter = match role {
            "admin" => &self.admin,
            "partner" => &self.partner,
            "customer" => &self.customer,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (role, value) in [
            ("admin", &self.admin),
            ("partner", &self.partner),
            ("customer", &self.customer),
        ] {
            let _ = writeln!(
                out,
                "{name}{{role=\"{role}\"}} {}",
                value.load(Ordering::Relaxed)
            );
        }
    }
}

/// A Prometheus histogram over fixed buckets (seconds), lock-free.
pub struct Histogram {
    counts: [AtomicU64; HISTOGRAM_BOUNDS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

const HISTOGRAM_BOUNDS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: Default::default(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, value: std::time::Duration) {
        let seconds = value.as_secs_f64();
        for (bound, count) in HISTOGRAM_BOUNDS.iter().zip(&self.counts) {
            if seconds <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(value.as_micros() as u64, Ordering::Relaxed);
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (bound, count) in HISTOGRAM_BOUNDS.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The full exposition. `queue` is `None` when the engine could not be reached.
    pub fn render(&self, queue: Option<&QueueStats>, engine_up: bool) -> String {
        let mut out = String::with_capacity(4096);
        self.write_counters(&mut out);
        self.webhook_lateness.write(
            &mut out,
            "herald_webhook_attempt_lateness_seconds",
            "How long after its due time a webhook attempt started.",
        );
        self.api_rate_limited.write(
            &mut out,
            "herald_api_rate_limited_total",
            "API requests answered 429 by the per-credential rate limit (http.rate_limit_*).",
        );
        let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {value}");
        };
        gauge(
            &mut out,
            "herald_engine_up",
            "1 when the engine answered the scrape's queue query.",
            u64::from(engine_up),
        );
        if let Some(q) = queue {
            gauge(
                &mut out,
                "herald_queue_visible_messages",
                "Commands waiting to be received.",
                q.visible,
            );
            gauge(
                &mut out,
                "herald_queue_in_flight_messages",
                "Commands received and not yet acknowledged.",
                q.in_flight,
            );
            gauge(
                &mut out,
                "herald_queue_dead_letters",
                "Commands in the dead-letter queue.",
                q.dead_letters,
            );
        }
        if let Some(extra) = self.extra.get() {
            out.push_str(&extra());
        }
        out
    }
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
        );
        assert!(text.contains(
            "# TYPE herald_orders_accepted_total counter\nherald_orders_accepted_total 2\n"
        ));
        assert!(text.contains("herald_queue_visible_messages 3\n"));
        assert!(text.contains("herald_engine_up 1\n"));
        m.api_rate_limited.inc("partner");
        let text = m.render(None, true);
        assert!(text.contains("herald_api_rate_limited_total{role=\"partner\"} 1\n"));
        assert!(text.contains("herald_api_rate_limited_total{role=\"admin\"} 0\n"));
    }

    #[test]
    fn histogram_counts_cumulatively() {
        let m = Metrics::default();
        m.webhook_lateness
            .observe(std::time::Duration::from_millis(20));
        m.webhook_lateness
            .observe(std::time::Duration::from_secs(3));
        let text = m.render(None, false);
        assert!(text.contains("herald_webhook_attempt_lateness_seconds_bucket{le=\"0.025\"} 1\n"));
        assert!(text.contains("herald_webhook_attempt_lateness_seconds_bucket{le=\"5\"} 2\n"));
        assert!(text.contains("herald_webhook_attempt_lateness_seconds_count 2\n"));
    }
}
