//! Open-loop (constant-rate) scheduling.
//!
//! The k-th request is due at `start + k / rate`, whatever happened to the ones before it.
//! Latency is measured from that *intended* time, not from when the request actually left,
//! so when the server (or the generator, or the in-flight cap) falls behind, the waiting shows
//! up in the percentiles instead of being silently left out ("coordinated omission").
//! Sends that fall behind are made as soon as possible, in order (catch-up), each still
//! measured from its own due time, also after the window has closed, up to a cut-off; sends
//! still not made by then are never made and are reported as missed.

use std::time::{Duration, Instant};

/// The fixed send schedule of one open-loop run.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    start: Instant,
    end: Instant,
    rate: f64,
}

impl Schedule {
    /// `rate` sends per second over `[start, start + window)`. `rate` must be positive and
    /// finite (the CLI checks).
    pub fn new(start: Instant, rate: f64, window: Duration) -> Self {
        assert!(rate.is_finite() && rate > 0.0, "rate must be positive");
        Self {
            start,
            end: start + window,
            rate,
        }
    }

    /// Exactly `n` sends at `rate` per second: the window ends just after send `n - 1` is due.
    pub fn for_count(start: Instant, rate: f64, n: u64) -> Self {
        let window = match n {
            0 => Duration::ZERO,
            n => {
                Self::new(start, rate, Duration::ZERO).due(n - 1) - start + Duration::from_nanos(1)
            }
        };
        Self::new(start, rate, window)
    }

    /// When the k-th send (from 0) is due.
    pub fn due(&self, k: u64) -> Instant {
        // Whole nanoseconds, rounded: k / rate in float seconds would drift by a nanosecond
        // here and there (0.003 s is not representable).
        self.start + Duration::from_nanos((k as f64 * 1e9 / self.rate).round() as u64)
    }

    /// How many sends are due in the whole window (those with `due(k) < end`).
    pub fn total(&self) -> u64 {
        self.count_before(self.end)
    }

    /// How many sends are due strictly before `t` (at most [`Self::total`]); equivalently the
    /// index of the first send due at or after `t`.
    pub fn count_before(&self, t: Instant) -> u64 {
        let t = t.min(self.end);
        let secs = t.saturating_duration_since(self.start).as_secs_f64();
        let mut n = (secs * self.rate).ceil() as u64;
        // Float rounding may put the estimate one off; settle it against `due` itself.
        while n > 0 && self.due(n - 1) >= t {
            n -= 1;
        }
        while self.due(n) < t {
            n += 1;
        }
        n
    }
}

/// Latency of a request that was due at `intended` and completed at `completed`: any
/// lateness in sending it is included. Never negative.
pub fn latency_from(intended: Instant, completed: Instant) -> Duration {
    completed.saturating_duration_since(intended)
}

/// What the sender should do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send request `k` now; it was due at `due` (possibly in the past).
    Send { k: u64, due: Instant },
    /// Nothing is due before this instant.
    WaitUntil(Instant),
    /// The window is over (or every send has been made).
    Done,
}

/// Walks a [`Schedule`] against a clock that the caller supplies, so the same logic drives
/// the real sender and the tests' simulated one.
#[derive(Debug)]
pub struct Pacer {
    schedule: Schedule,
    cutoff: Instant,
    next: u64,
}

impl Pacer {
    /// Overdue sends are still made until `catch_up` after the end of the window.
    pub fn new(schedule: Schedule, catch_up: Duration) -> Self {
        Self {
            schedule,
            cutoff: schedule.end + catch_up,
            next: 0,
        }
    }

    pub fn poll(&mut self, now: Instant) -> Step {
        let due = self.schedule.due(self.next);
        if now >= self.cutoff || due >= self.schedule.end {
            return Step::Done;
        }
        if due > now {
            return Step::WaitUntil(due);
        }
        let k = self.next;
        self.next += 1;
        Step::Send { k, due }
    }

    /// When the sender stops even if it is behind.
    pub fn cutoff(&self) -> Instant {
        self.cutoff
    }

    /// How many sends have been handed out.
    #[cfg(test)]
    pub fn issued(&self) -> u64 {
        self.next
    }

    /// Of the missed sends, those due at or after `t` (e.g. the end of a warm-up).
    pub fn missed_since(&self, t: Instant) -> u64 {
        let first = self.schedule.count_before(t).max(self.next);
        self.schedule.total().saturating_sub(first)
    }
}

/// Sends as they fall due: `(k, due)`.
pub type DueSends = tokio::sync::mpsc::UnboundedReceiver<(u64, Instant)>;

/// Runs `Pacer::new(schedule, catch_up)` on its own thread (precise sleeps, tight timer
/// slack) and hands out each send `(k, due)` on the channel as it falls due. The thread ends
/// with the schedule (or when the receiver is dropped) and returns the pacer, for
/// [`Pacer::missed_since`].
pub fn spawn_pacer(
    schedule: Schedule,
    catch_up: Duration,
) -> anyhow::Result<(DueSends, std::thread::JoinHandle<Pacer>)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let thread = std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || {
            crate::sys::tighten_timer_slack();
            let mut pacer = Pacer::new(schedule, catch_up);
            loop {
                match pacer.poll(Instant::now()) {
                    Step::WaitUntil(t) => sleep_until_precise(t),
                    Step::Send { k, due } => {
                        if tx.send((k, due)).is_err() {
                            break;
                        }
                    }
                    Step::Done => break,
                }
            }
            pacer
        })?;
    Ok((rx, thread))
}

/// Open loop with a cap on requests in flight: runs `schedule` on its own thread (precise
/// sleeps, not the runtime's 1 ms timer) and, as each send falls due, spawns `send(k, due)` on
/// the current runtime holding one of `max_in_flight` permits. A send held back by the cap is
/// late and keeps its due time, so the wait counts in its latency. Returns once every send
/// made has completed, with the pacer (for [`Pacer::missed_since`]).
pub async fn open_loop_tasks<F, Fut>(
    schedule: Schedule,
    catch_up: Duration,
    max_in_flight: u32,
    send: F,
) -> anyhow::Result<Pacer>
where
    F: Fn(u64, Instant) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use anyhow::Context;
    use std::sync::Arc;
    use tokio::sync::Semaphore;

    let permits = Arc::new(Semaphore::new(max_in_flight as usize));
    let handle = tokio::runtime::Handle::current();
    let thread_permits = permits.clone();
    let pacer = std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || {
            crate::sys::tighten_timer_slack();
            let mut pacer = Pacer::new(schedule, catch_up);
            'send: loop {
                let permit = match thread_permits.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        // Built inside `block_on`: the timer needs the runtime context.
                        let wait = async {
                            tokio::time::timeout_at(
                                pacer.cutoff().into(),
                                thread_permits.clone().acquire_owned(),
                            )
                            .await
                        };
                        match handle.block_on(wait) {
                            Ok(Ok(p)) => p,
                            _ => break 'send,
                        }
                    }
                };
                loop {
                    match pacer.poll(Instant::now()) {
                        Step::WaitUntil(t) => sleep_until_precise(t),
                        Step::Send { k, due } => {
                            let work = send(k, due);
                            handle.spawn(async move {
                                work.await;
                                drop(permit);
                            });
                            continue 'send;
                        }
                        Step::Done => break 'send,
                    }
                }
            }
            pacer
        })
        .context("starting the pacer thread")?;
    let pacer = tokio::task::spawn_blocking(move || pacer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the pacer thread panicked"))?;
    // Every permit back = every send completed.
    let _all = permits.acquire_many(max_in_flight).await?;
    Ok(pacer)
}

/// Sleeps on the OS timer (with minimal slack) until shortly before `t`, and yields for the
/// rest: a plain sleep wakes some tens of microseconds late, which would count as latency.
pub fn sleep_until_precise(t: Instant) {
    const SPIN: Duration = Duration::from_micros(50);
    let left = t.saturating_duration_since(Instant::now());
    if left > SPIN + Duration::from_micros(10) {
        std::thread::sleep(left - SPIN);
    } else if !left.is_zero() {
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn kth_send_is_due_at_start_plus_k_over_rate() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, 250.0, Duration::from_secs(1));
        assert_eq!(s.due(0), t0);
        assert_eq!(s.due(1), t0 + ms(4));
        assert_eq!(s.due(250), t0 + Duration::from_secs(1));
        assert_eq!(s.total(), 250);
        // Fractional rates: one send every 2.5 s, so 0 s, 2.5 s, 5 s, 7.5 s in a 10 s window.
        let s = Schedule::new(t0, 0.4, Duration::from_secs(10));
        assert_eq!(s.due(3), t0 + ms(7500));
        assert_eq!(s.total(), 4);
        // Not a whole number of sends: 1.5 ms at 1000/s -> due at 0 ms and 1 ms.
        assert_eq!(
            Schedule::new(t0, 1000.0, Duration::from_micros(1500)).total(),
            2
        );
        // Sends due before 10 ms at 1000/s: 0..=9.
        let s = Schedule::new(t0, 1000.0, Duration::from_secs(1));
        assert_eq!(s.count_before(t0 + ms(10)), 10);
        assert_eq!(s.count_before(t0 + Duration::from_micros(10_001)), 11);
        assert_eq!(s.count_before(t0 + ms(5000)), 1000);
    }

    #[test]
    fn a_schedule_for_a_count_holds_exactly_that_many_sends() {
        let t0 = Instant::now();
        for (rate, n) in [
            (1000.0, 1),
            (1000.0, 10_000),
            (1500.0, 7),
            (0.4, 3),
            (3.0, 0),
        ] {
            assert_eq!(Schedule::for_count(t0, rate, n).total(), n, "{rate}/s, {n}");
        }
    }

    #[test]
    fn pacer_waits_for_the_next_due_time_then_hands_out_sends_in_order() {
        let t0 = Instant::now();
        let mut p = Pacer::new(Schedule::new(t0, 1000.0, ms(3)), ms(0));
        assert_eq!(p.poll(t0), Step::Send { k: 0, due: t0 });
        assert_eq!(p.poll(t0), Step::WaitUntil(t0 + ms(1)));
        assert_eq!(
            p.poll(t0 + ms(1)),
            Step::Send {
                k: 1,
                due: t0 + ms(1)
            }
        );
        assert_eq!(
            p.poll(t0 + ms(2)),
            Step::Send {
                k: 2,
                due: t0 + ms(2)
            }
        );
        // k = 3 is due at 3 ms, which is the end of the window: not part of it.
        assert_eq!(p.poll(t0 + ms(2)), Step::Done);
        assert_eq!(p.issued(), 3);
        assert_eq!(p.missed_since(t0), 0);
    }

    #[test]
    fn late_sender_catches_up_without_skipping() {
        let t0 = Instant::now();
        let mut p = Pacer::new(Schedule::new(t0, 1000.0, ms(100)), ms(0));
        // The sender wakes up 5.5 ms late: 0..=5 are all overdue and come out back to back.
        let now = t0 + Duration::from_micros(5500);
        for k in 0..=5 {
            assert_eq!(p.poll(now), Step::Send { k, due: t0 + ms(k) });
        }
        assert_eq!(p.poll(now), Step::WaitUntil(t0 + ms(6)));
    }

    /// A server that takes 5 ms per request, one request in flight at a time, offered 1000/s
    /// for 20 ms. The sender falls further behind with every request; latency measured from the
    /// intended send time must show it (5, 9, 13, 17 ms), where timing from the actual send
    /// would report a flat 5 ms. The 16 sends it never got to are reported as missed.
    #[test]
    fn a_sender_that_falls_behind_reports_latency_from_the_intended_time() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(Schedule::new(t0, 1000.0, ms(20)), ms(0));
        let service = ms(5);

        let mut now = t0;
        let mut slot_free_at = t0; // max in flight = 1
        let mut from_intended = Vec::new();
        let mut from_actual = Vec::new();
        'run: loop {
            // Wait for the in-flight slot, as the real sender waits for a permit.
            now = now.max(slot_free_at);
            loop {
                match pacer.poll(now) {
                    Step::WaitUntil(t) => now = t,
                    Step::Send { k, due } => {
                        assert_eq!(due, t0 + ms(k));
                        assert!(due <= now);
                        let sent = now;
                        let completed = sent + service;
                        from_intended.push(latency_from(due, completed));
                        from_actual.push(completed - sent);
                        slot_free_at = completed;
                        break;
                    }
                    Step::Done => break 'run,
                }
            }
        }
        assert_eq!(from_intended, vec![ms(5), ms(9), ms(13), ms(17)]);
        assert_eq!(from_actual, vec![ms(5); 4]);
        assert_eq!(pacer.issued(), 4);
        // With a 10 ms warm-up, the misses inside the measured window are k = 10..20.
        assert_eq!(pacer.missed_since(t0 + ms(10)), 10);
        assert_eq!(pacer.missed_since(t0), 16);
    }

    #[test]
    fn overdue_sends_are_still_made_until_the_cutoff() {
        let t0 = Instant::now();
        let mut p = Pacer::new(Schedule::new(t0, 1000.0, ms(10)), ms(5));
        // 10 sends due (0..10 ms); the sender only wakes at 12 ms: still within the cut-off,
        // so every one of them goes out, each with its own due time.
        for k in 0..10 {
            assert_eq!(p.poll(t0 + ms(12)), Step::Send { k, due: t0 + ms(k) });
        }
        assert_eq!(p.poll(t0 + ms(12)), Step::Done);
        assert_eq!(p.missed_since(t0), 0);

        // Waking at the cut-off (15 ms) is too late: the rest are missed.
        let mut p = Pacer::new(Schedule::new(t0, 1000.0, ms(10)), ms(5));
        assert_eq!(p.poll(t0), Step::Send { k: 0, due: t0 });
        assert_eq!(p.poll(t0 + ms(15)), Step::Done);
        assert_eq!(p.cutoff(), t0 + ms(15));
        assert_eq!(p.missed_since(t0), 9);
    }

    /// 30 sends at 1000/s, at most 2 in flight, each taking 5 ms: every send is made once, in
    /// schedule order, and the cap holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_loop_tasks_make_every_send_within_the_in_flight_cap() {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::{Arc, Mutex};
        let t0 = Instant::now();
        let made = Arc::new(Mutex::new(Vec::new()));
        let (now, peak) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (m, n, p) = (made.clone(), now.clone(), peak.clone());
        let pacer = open_loop_tasks(
            Schedule::new(t0, 1000.0, ms(30)),
            Duration::from_secs(5),
            2,
            move |k, due| {
                let (m, n, p) = (m.clone(), n.clone(), p.clone());
                async move {
                    assert_eq!(due, t0 + ms(k));
                    p.fetch_max(n.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    m.lock().expect("lock").push(k);
                    tokio::time::sleep(ms(5)).await;
                    n.fetch_sub(1, Ordering::SeqCst);
                }
            },
        )
        .await
        .expect("ran");
        let mut made = made.lock().expect("lock").clone();
        made.sort_unstable();
        assert_eq!(made, (0..30).collect::<Vec<_>>());
        assert!(peak.load(Ordering::SeqCst) <= 2);
        assert_eq!(
            now.load(Ordering::SeqCst),
            0,
            "all completed before it returned"
        );
        assert_eq!(pacer.missed_since(t0), 0);
    }

    #[test]
    fn latency_never_goes_negative() {
        let t0 = Instant::now();
        let due = Schedule::new(t0, 10.0, Duration::from_secs(1)).due(5);
        // Completed "before" it was due (clock skew between threads): zero, not a panic.
        assert_eq!(latency_from(due, t0), Duration::ZERO);
        assert_eq!(latency_from(due, t0 + ms(600)), ms(100));
    }
}
