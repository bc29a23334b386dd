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
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The full exposition. `queue` is `None` when the engine could not be reached.
    pub fn render(&self, queue: Option<&QueueStats>, engine_up: bool) -> String {
        let mut out = String::with_capacity(4096);
        self.write_counters(&mut out);
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
    }
}
