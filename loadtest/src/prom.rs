//! Reading Herald's `/metrics` (Prometheus text format) after a run: counters summed over their
//! label sets, and a histogram's buckets with the quantiles Prometheus' `histogram_quantile`
//! would estimate from them, so a scenario can put Herald's own account beside what the load
//! tool measured from outside.

use anyhow::{Context, bail};
use serde::Serialize;
use std::collections::BTreeMap;

/// Fetches `{base_url}/metrics` with an admin key.
pub async fn fetch(client: &reqwest::Client, base_url: &str, key: &str) -> anyhow::Result<String> {
    let url = format!("{}/metrics", base_url.trim_end_matches('/'));
    let resp = client
        .get(&url)
        .header("x-api-key", key)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .with_context(|| format!("GET {url}: body"))?;
    if !status.is_success() {
        bail!("GET {url}: HTTP {status}");
    }
    Ok(text)
}

/// The samples of the series named exactly `name` (any labels): `(labels, value)`.
fn samples<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    text.lines().filter_map(move |line| {
        let rest = line.strip_prefix(name)?;
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => {
                let (labels, value) = r.split_once('}')?;
                (labels, value)
            }
            None if rest.starts_with(' ') => ("", rest),
            None => return None, // a longer name with this one as prefix
        };
        let value = value.split_whitespace().next()?.parse().ok()?;
        Some((labels, value))
    })
}

/// The sum of a counter (or gauge) over its label sets; `None` if the series is absent.
pub fn counter(text: &str, name: &str) -> Option<f64> {
    samples(text, name).map(|(_, v)| v).reduce(|a, b| a + b)
}

/// A Prometheus histogram in seconds, its label sets added together.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Histogram {
    /// `(le, cumulative count)`, ascending; the last is `+Inf`, as `f64::INFINITY` (written
    /// to JSON as null).
    pub buckets: Vec<(f64, f64)>,
    pub count: f64,
    pub sum_s: f64,
}

/// The histogram `name` (`name_bucket`, `name_count`, `name_sum`); `None` if absent.
pub fn histogram(text: &str, name: &str) -> Option<Histogram> {
    let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for (labels, value) in samples(text, &format!("{name}_bucket")) {
        let le = labels.split(',').find_map(|l| {
            let v = l.trim().strip_prefix("le=\"")?.strip_suffix('"')?;
            if v == "+Inf" {
                Some(f64::INFINITY)
            } else {
                v.parse::<f64>().ok()
            }
        })?;
        // Bounds are positive: their bit patterns sort as the numbers do.
        buckets.entry(le.to_bits()).or_insert((le, 0.0)).1 += value;
    }
    if buckets.is_empty() {
        return None;
    }
    let buckets: Vec<(f64, f64)> = buckets.into_values().collect();
    let count = counter(text, &format!("{name}_count"))
        .or_else(|| buckets.last().map(|b| b.1))
        .unwrap_or(0.0);
    let sum_s = counter(text, &format!("{name}_sum")).unwrap_or(0.0);
    Some(Histogram {
        buckets,
        count,
        sum_s,
    })
}

impl Histogram {
    /// The estimate of quantile `q` in seconds, as `histogram_quantile` makes it: linear within
    /// the bucket holding it (from 0 for the first); the highest finite bound when it falls in
    /// `+Inf`. `None` with no samples.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total;
        let mut lower = (0.0, 0.0);
        for &(le, cum) in &self.buckets {
            if cum >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let in_bucket = cum - lower.1;
                let frac = if in_bucket > 0.0 {
                    (rank - lower.1) / in_bucket
                } else {
                    1.0
                };
                return Some(lower.0 + (le - lower.0) * frac);
            }
            lower = (le, cum);
        }
        Some(lower.0)
    }

    /// The bound of the bucket holding quantile `q` (`+Inf` as infinity): the most the
    /// quantile can be, where [`Self::quantile`] is an interpolation.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        let rank = q.clamp(0.0, 1.0) * total;
        self.buckets
            .iter()
            .find(|&&(_, cum)| cum >= rank && cum > 0.0)
            .map(|b| b.0)
    }

    /// The mean in seconds (`sum / count`).
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum_s / self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP herald_workflow_timer_lateness_seconds How late.
# TYPE herald_workflow_timer_lateness_seconds histogram
herald_workflow_timer_lateness_seconds_bucket{le=\"0.005\"} 10
herald_workflow_timer_lateness_seconds_bucket{le=\"0.01\"} 90
herald_workflow_timer_lateness_seconds_bucket{le=\"0.025\"} 100
herald_workflow_timer_lateness_seconds_bucket{le=\"+Inf\"} 100
herald_workflow_timer_lateness_seconds_sum 0.8
herald_workflow_timer_lateness_seconds_count 100
herald_workflow_calls_total{step=\"a\"} 3
herald_workflow_calls_total{step=\"b\"} 4
herald_workflow_calls_total_extra 99
herald_workflow_timers_fired_total 100
";

    #[test]
    fn counters_add_their_label_sets_and_ignore_longer_names() {
        assert_eq!(counter(TEXT, "herald_workflow_calls_total"), Some(7.0));
        assert_eq!(
            counter(TEXT, "herald_workflow_timers_fired_total"),
            Some(100.0)
        );
        assert_eq!(counter(TEXT, "herald_nothing_total"), None);
    }

    #[test]
    fn histogram_quantiles_interpolate_within_the_bucket_like_prometheus() {
        let h = histogram(TEXT, "herald_workflow_timer_lateness_seconds").expect("present");
        assert_eq!(h.count, 100.0);
        assert_eq!(h.buckets.len(), 4);
        // Rank 50 lies in (0.005, 0.01], 40 of its 80 samples in.
        let p50 = h.quantile(0.5).expect("samples");
        assert!((p50 - 0.0075).abs() < 1e-12, "{p50}");
        // Rank 5 lies in the first bucket, from 0.
        let p05 = h.quantile(0.05).expect("samples");
        assert!((p05 - 0.0025).abs() < 1e-12, "{p05}");
        assert_eq!(h.quantile_bound(0.99), Some(0.025));
        assert_eq!(h.mean(), Some(0.008));
    }

    #[test]
    fn a_quantile_in_the_infinite_bucket_is_the_highest_finite_bound() {
        let text = "x_bucket{le=\"1\"} 1\nx_bucket{le=\"+Inf\"} 3\nx_count 3\nx_sum 9\n";
        let h = histogram(text, "x").expect("present");
        assert_eq!(h.quantile(0.99), Some(1.0));
        assert_eq!(h.quantile_bound(0.99), Some(f64::INFINITY));
        assert_eq!(histogram(text, "y"), None);
    }
}
