//! Measurement helpers shared by every scenario: HDR histograms in microseconds, a
//! percentile summary in milliseconds, outcome counters (status codes and transport errors)
//! a plain two-column table for the end-of-run report, the once-a-second progress line and
//! the JSON results file.

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Highest latency a histogram tracks exactly: one hour, in microseconds. Larger values are
/// clamped to it (and still counted).
const MAX_TRACKABLE_US: u64 = 3_600_000_000;

/// A latency histogram: microseconds, 1 us .. 1 h, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy the constructor's rules (low >= 1, high >= 2 * low,
    // sigfig <= 5), so this cannot fail.
    Histogram::new_with_bounds(1, MAX_TRACKABLE_US, 3).expect("constant histogram bounds")
}

/// Records a duration (rounded down to whole microseconds, at least 1) into `h`.
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    h.saturating_record(us);
}

/// A histogram shared between tasks. Recording takes a short uncontended-in-practice lock.
pub struct SharedHistogram(Mutex<Histogram<u64>>);

impl Default for SharedHistogram {
    fn default() -> Self {
        Self(Mutex::new(latency_histogram()))
    }
}

impl SharedHistogram {
    pub fn record(&self, d: Duration) {
        record(&mut self.lock(), d);
    }

    /// The value at quantile `q` in milliseconds, or `None` while empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let h = self.lock();
        (!h.is_empty()).then(|| us_to_ms(h.value_at_quantile(q)))
    }

    pub fn summary(&self) -> Option<LatencySummary> {
        LatencySummary::from_histogram(&self.lock())
    }

    /// Adds this histogram's samples to `into` (e.g. merging per-shard histograms at the end).
    pub fn merge_into(&self, into: &mut Histogram<u64>) {
        // Every histogram here has the same bounds, which is all `add` can fail on.
        let _ = into.add(&*self.lock());
    }

    /// A copy of the samples so far.
    pub fn snapshot(&self) -> Histogram<u64> {
        self.lock().clone()
    }

    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Histogram<u64>> {
        // A panic while holding the lock cannot leave a histogram half-updated in a way that
        // matters for a report, so a poisoned lock is still usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One histogram holding the samples of every shard.
pub fn merge_shards(shards: &[SharedHistogram]) -> Histogram<u64> {
    let mut h = latency_histogram();
    for shard in shards {
        shard.merge_into(&mut h);
    }
    h
}

/// A histogram as text (HdrHistogram V2 encoding, base64), to pass it between processes
/// exactly: [`decode_histogram`] gives back the same counts.
pub fn encode_histogram(h: &Histogram<u64>) -> anyhow::Result<String> {
    use base64::Engine;
    use hdrhistogram::serialization::Serializer;
    let mut bytes = Vec::new();
    hdrhistogram::serialization::V2Serializer::new()
        .serialize(h, &mut bytes)
        .map_err(|e| anyhow::anyhow!("encoding a histogram: {e:?}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

pub fn decode_histogram(text: &str) -> anyhow::Result<Histogram<u64>> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| anyhow::anyhow!("decoding a histogram: {e}"))?;
    hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("decoding a histogram: {e:?}"))
}

/// Adds `from` into `into` exactly (histograms of [`latency_histogram`]'s bounds).
pub fn add_histogram(into: &mut Histogram<u64>, from: &Histogram<u64>) -> anyhow::Result<()> {
    into.add(from)
        .map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))
}

pub use crate::plot::write_svg;

/// Where a run's results go: the flags every measuring scenario takes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Output {
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,

    /// Write the latency plot (HDR percentile curves, SVG) to this file.
    #[arg(long)]
    pub svg: Option<std::path::PathBuf>,

    /// Free text stored with the results.
    #[arg(long)]
    pub label: Option<String>,
}

impl Output {
    /// ` [label]` for a run's heading, or nothing.
    pub fn tag(&self) -> String {
        label_tag(self.label.as_deref())
    }
}

/// ` [label]` for a run's heading, or nothing.
pub fn label_tag(label: Option<&str>) -> String {
    label.map_or_else(String::new, |l| format!(" [{l}]"))
}

fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl LatencySummary {
    /// `None` for an empty histogram (there are no percentiles to report).
    pub fn from_histogram(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        Some(Self {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: us_to_ms(h.value_at_quantile(0.50)),
            p90: us_to_ms(h.value_at_quantile(0.90)),
            p99: us_to_ms(h.value_at_quantile(0.99)),
            p999: us_to_ms(h.value_at_quantile(0.999)),
            max: us_to_ms(h.max()),
        })
    }
}

/// How one request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The expected success status (202 for intake).
    Ok,
    /// Any other HTTP status.
    Status(u16),
    /// No complete HTTP response.
    Transport(TransportError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportError {
    Timeout,
    Connect,
    /// The response head arrived but reading the body failed.
    Body,
    Other,
}

impl TransportError {
    pub fn classify(e: &reqwest::Error) -> Self {
        if e.is_timeout() {
            Self::Timeout
        } else if e.is_connect() {
            Self::Connect
        } else if e.is_body() || e.is_decode() {
            Self::Body
        } else {
            Self::Other
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    const ALL: [(TransportError, &'static str); 4] = [
        (Self::Timeout, "timeout"),
        (Self::Connect, "connect"),
        (Self::Body, "body"),
        (Self::Other, "transport"),
    ];
}

/// Lock-free counters of request outcomes.
pub struct Counters {
    ok: AtomicU64,
    /// Index = status code (0..=999).
    statuses: Box<[AtomicU64]>,
    transport: [AtomicU64; 4],
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            ok: AtomicU64::new(0),
            statuses: (0..1000).map(|_| AtomicU64::new(0)).collect(),
            transport: Default::default(),
        }
    }
}

impl Counters {
    pub fn add(&self, outcome: Outcome) {
        match outcome {
            Outcome::Ok => &self.ok,
            Outcome::Status(code) => {
                let i = usize::from(code).min(self.statuses.len() - 1);
                &self.statuses[i]
            }
            Outcome::Transport(t) => &self.transport[t.index()],
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Non-success outcomes by name: `http_<code>` per status, then transport error kinds.
    /// Only non-zero entries are listed.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (code, n) in self.statuses.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                out.insert(format!("http_{code}"), n);
            }
        }
        for (kind, name) in TransportError::ALL {
            let n = self.transport[kind.index()].load(Ordering::Relaxed);
            if n > 0 {
                out.insert(name.to_string(), n);
            }
        }
        out
    }

    pub fn error_total(&self) -> u64 {
        self.errors().values().sum()
    }
}

/// A two-column report table with optional section headings.
#[derive(Default)]
pub struct Table {
    rows: Vec<Row>,
}

enum Row {
    Section(String),
    Pair(String, String),
}

impl Table {
    pub fn section(&mut self, title: impl Into<String>) -> &mut Self {
        self.rows.push(Row::Section(title.into()));
        self
    }

    pub fn row(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.rows.push(Row::Pair(key.into(), value.into()));
        self
    }

    /// Adds p50/p90/p99/p99.9/max rows (or one "no samples" row) under `prefix`.
    pub fn latency(&mut self, prefix: &str, s: Option<&LatencySummary>) -> &mut Self {
        match s {
            None => self.row(prefix, "no samples"),
            Some(s) => self
                .row(format!("{prefix} p50"), ms(s.p50))
                .row(format!("{prefix} p90"), ms(s.p90))
                .row(format!("{prefix} p99"), ms(s.p99))
                .row(format!("{prefix} p99.9"), ms(s.p999))
                .row(format!("{prefix} max"), ms(s.max)),
        }
    }

    pub fn render(&self) -> String {
        let width = self
            .rows
            .iter()
            .filter_map(|r| match r {
                Row::Pair(k, _) => Some(k.chars().count()),
                Row::Section(_) => None,
            })
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for r in &self.rows {
            match r {
                Row::Section(t) => out.push_str(&format!("{t}\n")),
                Row::Pair(k, v) => out.push_str(&format!("  {k:<width$}  {v}\n")),
            }
        }
        out
    }
}

/// Milliseconds with three decimals (microsecond resolution) and the unit.
pub fn ms(v: f64) -> String {
    format!("{v:.3} ms")
}

/// Writes a run's results as pretty JSON to `path` and says so on stderr.
pub fn write_json(path: &Path, results: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(results)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    eprintln!("results written to {}", path.display());
    Ok(())
}

/// The clock of a progress line: ticks once a second from one second after `t0`.
pub struct Ticker {
    interval: tokio::time::Interval,
    t0: Instant,
    last: Instant,
}

/// One tick: when it came, and how long since the previous one.
#[derive(Clone, Copy, Debug)]
pub struct Tick {
    pub now: Instant,
    /// Seconds since the run started.
    pub elapsed_s: f64,
    /// Seconds since the previous tick.
    pub dt_s: f64,
}

impl Ticker {
    pub fn new(t0: Instant) -> Self {
        Self {
            interval: tokio::time::interval_at(
                (t0 + Duration::from_secs(1)).into(),
                Duration::from_secs(1),
            ),
            t0,
            last: t0,
        }
    }

    pub async fn tick(&mut self) -> Tick {
        self.interval.tick().await;
        let now = Instant::now();
        let dt_s = now.duration_since(self.last).as_secs_f64().max(1e-9);
        self.last = now;
        Tick {
            now,
            elapsed_s: now.duration_since(self.t0).as_secs_f64(),
            dt_s,
        }
    }
}

/// A live rate on a progress line: the growth of a counter between ticks, per second.
#[derive(Default)]
pub struct LiveRate {
    last: u64,
}

impl LiveRate {
    pub fn per_s(&mut self, count: u64, tick: &Tick) -> f64 {
        let d = count.saturating_sub(self.last);
        self.last = count;
        d as f64 / tick.dt_s
    }
}

/// Rewrites the progress line on stderr (`\r`, no newline).
pub fn progress_line(line: std::fmt::Arguments) {
    eprint!("\r{line}   ");
    let _ = std::io::stderr().flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist_of(values_us: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut h = latency_histogram();
        for v in values_us {
            h.record(v).expect("in range");
        }
        h
    }

    #[test]
    fn percentiles_of_a_uniform_range_are_exact() {
        // 1..=1000 us: values below 2048 are stored exactly at 3 significant digits.
        let s = LatencySummary::from_histogram(&hist_of(1..=1000)).expect("not empty");
        assert_eq!(s.count, 1000);
        assert_eq!(s.p50, 0.5);
        assert_eq!(s.p90, 0.9);
        assert_eq!(s.p99, 0.99);
        assert_eq!(s.p999, 0.999);
        assert_eq!(s.max, 1.0);
        assert!((s.mean - 0.5005).abs() < 1e-9, "mean {}", s.mean);
    }

    #[test]
    fn a_slow_tail_shows_in_the_high_percentiles_only() {
        // 990 fast requests at 100 us, 10 slow ones at 50 ms.
        let h = hist_of(std::iter::repeat_n(100, 990).chain(std::iter::repeat_n(50_000, 10)));
        let s = LatencySummary::from_histogram(&h).expect("not empty");
        assert_eq!(s.p50, 0.1);
        assert_eq!(s.p99, 0.1);
        // Above 2048 us the histogram rounds to 3 significant digits, upwards.
        assert!((50.0..50.1).contains(&s.p999), "p999 {}", s.p999);
        assert!((50.0..50.1).contains(&s.max), "max {}", s.max);
    }

    #[test]
    fn empty_histogram_has_no_summary() {
        assert_eq!(LatencySummary::from_histogram(&latency_histogram()), None);
        assert_eq!(SharedHistogram::default().quantile_ms(0.99), None);
    }

    #[test]
    fn durations_are_recorded_in_microseconds_and_clamped() {
        let mut h = latency_histogram();
        record(&mut h, Duration::from_nanos(10)); // below 1 us counts as 1 us
        record(&mut h, Duration::from_micros(1500));
        record(&mut h, Duration::from_secs(7200)); // beyond the range: clamped, still counted
        assert_eq!(h.len(), 3);
        assert_eq!(h.min(), 1);
        assert_eq!(h.value_at_quantile(0.5), 1500);
        assert!(h.max() >= MAX_TRACKABLE_US - MAX_TRACKABLE_US / 1000);
    }

    #[test]
    fn counters_name_errors_and_skip_zeroes() {
        let c = Counters::default();
        c.add(Outcome::Ok);
        c.add(Outcome::Ok);
        c.add(Outcome::Status(503));
        c.add(Outcome::Status(503));
        c.add(Outcome::Status(429));
        c.add(Outcome::Transport(TransportError::Timeout));
        assert_eq!(c.ok(), 2);
        let e = c.errors();
        assert_eq!(e.len(), 3);
        assert_eq!(e["http_503"], 2);
        assert_eq!(e["http_429"], 1);
        assert_eq!(e["timeout"], 1);
        assert_eq!(c.error_total(), 4);
    }

    #[test]
    fn merging_decoded_histograms_equals_recording_everything_in_one() {
        let a = hist_of((1..=5000).map(|v| v * 7));
        let b = hist_of((1..=3000).map(|v| v * 1301).chain([MAX_TRACKABLE_US]));
        let all = hist_of(
            (1..=5000)
                .map(|v| v * 7)
                .chain((1..=3000).map(|v| v * 1301))
                .chain([MAX_TRACKABLE_US]),
        );
        let mut merged = latency_histogram();
        for h in [&a, &b] {
            let text = encode_histogram(h).expect("encode");
            let back = decode_histogram(&text).expect("decode");
            assert_eq!(back, *h, "a round trip keeps every count");
            add_histogram(&mut merged, &back).expect("same bounds");
        }
        assert_eq!(merged, all);
        assert_eq!(merged.len(), 8001);
        assert_eq!(
            LatencySummary::from_histogram(&merged),
            LatencySummary::from_histogram(&all)
        );
        assert!(decode_histogram("not base64!").is_err());
        assert!(decode_histogram("AAAA").is_err());
    }

    #[test]
    fn shards_merge_into_one_histogram() {
        let shards: Vec<SharedHistogram> = (0..3).map(|_| SharedHistogram::default()).collect();
        for (i, s) in shards.iter().enumerate() {
            s.record(Duration::from_micros(100 * (i as u64 + 1)));
        }
        let h = merge_shards(&shards);
        assert_eq!(h.len(), 3);
        assert_eq!(h.max(), 300);
        assert_eq!(shards[1].snapshot().len(), 1);
    }

    #[test]
    fn live_rate_is_the_growth_per_second_between_ticks() {
        let tick = |dt_s| Tick {
            now: Instant::now(),
            elapsed_s: 0.0,
            dt_s,
        };
        let mut r = LiveRate::default();
        assert_eq!(r.per_s(500, &tick(1.0)), 500.0);
        assert_eq!(r.per_s(1500, &tick(2.0)), 500.0);
        // A counter that went back (never here, but) reads as no growth, not a wrap.
        assert_eq!(r.per_s(1000, &tick(1.0)), 0.0);
    }

    #[test]
    fn table_aligns_values() {
        let mut t = Table::default();
        t.section("intake").row("a", "1").row("longer key", "2");
        assert_eq!(t.render(), "intake\n  a           1\n  longer key  2\n");
    }
}
