//! The last minutes of the server's figures, for the status page's rates,
//! percentiles and charts: once a second the metrics are read (rendered
//! and parsed, as a scraper would) into a [`Sample`], and the last
//! [`KEPT_SECS`] samples are kept. Rates and percentiles are differences
//! between two samples, so they cost nothing on the command path.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

/// Samples kept: five minutes at one a second.
pub const KEPT_SECS: usize = 300;

/// One reading of the counters that matter to the page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub at: Option<Instant>,
    /// Per plugin: commands answered, and those that failed (any outcome
    /// but `ok` and `error`, which is the plugin's own answer).
    pub plugins: BTreeMap<String, PluginCounts>,
    /// Connections refused as they connected, by reason.
    pub refused: BTreeMap<String, f64>,
    /// Connections the server closed early, by reason.
    pub closed: BTreeMap<String, f64>,
    pub connections_open: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PluginCounts {
    pub commands: f64,
    pub failures: f64,
    /// The duration histogram's cumulative buckets: (upper bound in
    /// seconds, count).
    pub buckets: Vec<(f64, f64)>,
    pub memory_bytes: f64,
}

impl Sample {
    /// Reads a Prometheus text exposition (the server's own `/metrics`).
    pub fn parse(exposition: &str, at: Instant) -> Self {
        let mut sample = Self {
            at: Some(at),
            ..Self::default()
        };
        for line in exposition.lines().filter(|line| !line.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, parse_labels(labels.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            sample.take(name, &labels, value);
        }
        for counts in sample.plugins.values_mut() {
            counts.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        sample
    }

    fn take(&mut self, name: &str, labels: &BTreeMap<&str, &str>, value: f64) {
        let label = |key: &str| labels.get(key).copied().unwrap_or_default().to_owned();
        match name {
            "plugboard_commands_total" => {
                let plugin = label("plugin");
                if plugin.is_empty() {
                    return;
                }
                let counts = self.plugins.entry(plugin).or_default();
                counts.commands += value;
                if !matches!(labels.get("outcome"), Some(&"ok" | &"error")) {
                    counts.failures += value;
                }
            }
            "plugboard_command_duration_seconds_bucket" => {
                let bound = match labels.get("le") {
                    Some(&"+Inf") => f64::INFINITY,
                    Some(le) => le.parse().unwrap_or(f64::INFINITY),
                    None => return,
                };
                let counts = self.plugins.entry(label("plugin")).or_default();
                counts.buckets.push((bound, value));
            }
            "plugboard_plugin_memory_bytes" => {
                self.plugins
                    .entry(label("plugin"))
                    .or_default()
                    .memory_bytes = value;
            }
            "plugboard_connections_rejected_total" => {
                *self.refused.entry(label("reason")).or_default() += value;
            }
            "plugboard_connections_closed_total" => {
                *self.closed.entry(label("reason")).or_default() += value;
            }
            "plugboard_connections_open" => self.connections_open = value,
            _ => {}
        }
    }
}

/// `a="1",b="2"` as a map. The server's own label values hold no quotes or
/// commas (plugin and command names, fixed words).
fn parse_labels(text: &str) -> BTreeMap<&str, &str> {
    text.split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.trim(), value.trim().trim_matches('"')))
        .collect()
}

/// The kept samples, oldest first.
#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<Sample>,
}

/// What happened between two samples, per second.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rates {
    pub commands_per_sec: f64,
    pub failures_per_sec: f64,
}

impl History {
    pub fn push(&mut self, sample: Sample) {
        if self.samples.len() == KEPT_SECS + 1 {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    pub fn latest(&self) -> Option<&Sample> {
        self.samples.back()
    }

    /// The sample about `secs` before the latest (the oldest, if there is
    /// none that old).
    pub fn before(&self, secs: usize) -> Option<&Sample> {
        let latest = self.samples.len().checked_sub(1)?;
        self.samples.get(latest.saturating_sub(secs))
    }

    /// Every plugin's commands and failures per second, each second, oldest
    /// first: the charts' points.
    pub fn per_second(&self) -> Vec<Rates> {
        let samples: Vec<&Sample> = self.samples.iter().collect();
        samples
            .windows(2)
            .map(|pair| {
                let total = |sample: &Sample, failures: bool| -> f64 {
                    sample
                        .plugins
                        .values()
                        .map(|c| if failures { c.failures } else { c.commands })
                        .sum()
                };
                Rates {
                    commands_per_sec: (total(pair[1], false) - total(pair[0], false)).max(0.0),
                    failures_per_sec: (total(pair[1], true) - total(pair[0], true)).max(0.0),
                }
            })
            .collect()
    }
}

/// The `quantile` (0..1) of the durations recorded between two readings of
/// one plugin's histogram, in seconds: the upper bound of the bucket it
/// falls in. `None` when nothing was recorded in between.
pub fn quantile(earlier: &PluginCounts, later: &PluginCounts, quantile: f64) -> Option<f64> {
    let count_at = |buckets: &[(f64, f64)], bound: f64| {
        buckets
            .iter()
            .find(|(b, _)| *b == bound)
            .map_or(0.0, |(_, count)| *count)
    };
    let deltas: Vec<(f64, f64)> = later
        .buckets
        .iter()
        .map(|&(bound, count)| (bound, count - count_at(&earlier.buckets, bound)))
        .collect();
    let total = deltas.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = quantile * total;
    deltas
        .iter()
        .find(|(_, count)| *count >= rank)
        .map(|(bound, _)| *bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE plugboard_commands_total counter
plugboard_commands_total{plugin="onoff",command="on",outcome="ok"} 90
plugboard_commands_total{plugin="onoff",command="on",outcome="error"} 5
plugboard_commands_total{plugin="onoff",command="on",outcome="trap"} 5
plugboard_commands_total{plugin="",command="",outcome="unknown"} 7
plugboard_command_duration_seconds_bucket{plugin="onoff",le="0.001"} 60
plugboard_command_duration_seconds_bucket{plugin="onoff",le="0.01"} 99
plugboard_command_duration_seconds_bucket{plugin="onoff",le="+Inf"} 100
plugboard_connections_rejected_total{reason="max_connections"} 3
plugboard_connections_open 4
"#;

    #[test]
    fn a_reading_counts_commands_failures_and_refusals() {
        let sample = Sample::parse(TEXT, Instant::now());
        let onoff = &sample.plugins["onoff"];
        assert_eq!(onoff.commands, 100.0);
        assert_eq!(onoff.failures, 5.0);
        assert_eq!(onoff.buckets.len(), 3);
        assert!(!sample.plugins.contains_key(""));
        assert_eq!(sample.refused["max_connections"], 3.0);
        assert_eq!(sample.connections_open, 4.0);
    }

    #[test]
    fn quantiles_and_rates_come_from_differences() {
        let first = Sample::parse(TEXT, Instant::now());
        let later_text = TEXT
            .replace("le=\"+Inf\"} 100", "le=\"+Inf\"} 200")
            .replace("outcome=\"ok\"} 90", "outcome=\"ok\"} 190");
        let later = Sample::parse(&later_text, Instant::now());
        // The 100 new durations were all over 10 ms.
        let p99 = quantile(&first.plugins["onoff"], &later.plugins["onoff"], 0.99);
        assert_eq!(p99, Some(f64::INFINITY));
        assert_eq!(
            quantile(&first.plugins["onoff"], &first.plugins["onoff"], 0.5),
            None
        );
        let mut history = History::default();
        history.push(first);
        history.push(later);
        assert_eq!(history.per_second()[0].commands_per_sec, 100.0);
        assert_eq!(history.before(60).unwrap().plugins["onoff"].commands, 100.0);
    }
}
