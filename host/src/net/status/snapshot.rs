//! What the status page and `/status.json` show: one [`Snapshot`] of the
//! server, made from the routing table (which plugins serve, which
//! version, quarantined or not), the metrics' history (rates, failure
//! shares, p99) and the recent events.
//!
//! It shows no secret, by construction: no config value is read here, so
//! no token or token hash, no Redis URL (and so no password), and none of
//! a plugin's `[plugins.<name>.config]` table (which may hold an API key)
//! can appear. Plugin names, command names and file names are shown.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::history::{History, Rates, Sample, quantile};
use super::{Serving, State};
use crate::schedule::ScheduleView;
use crate::store::Usage;
use crate::telemetry::events::Event;

/// The seconds over which "now" rates are taken.
const RATE_SECS: usize = 10;
/// The seconds over which failure shares and percentiles are taken.
const SHARE_SECS: usize = 60;

#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub version: &'static str,
    /// `starting`, `ready` or `stopping`, as `/healthz` says.
    pub state: &'static str,
    pub uptime_secs: u64,
    /// The client listener, once serving.
    pub listen: Option<String>,
    pub tls: bool,
    pub connections: Connections,
    /// Commands answered per second, over the last 10 seconds.
    pub commands_per_sec: f64,
    pub plugins: Vec<PluginStatus>,
    /// The schedules (`[[schedules]]` and the plugins' own), by name.
    pub schedules: Vec<ScheduleView>,
    /// The last 20 events, newest first.
    pub events: Vec<EventStatus>,
    /// Every second of the last five minutes, oldest first: the charts.
    pub history: Vec<Second>,
}

#[derive(Debug, Serialize)]
pub struct Connections {
    pub open: usize,
    pub max: usize,
    /// Refused as they connected, since start, by reason.
    pub refused: BTreeMap<String, u64>,
    /// Closed by the server before the client was done, since start, by reason.
    pub closed: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct PluginStatus {
    pub name: String,
    pub file: String,
    /// The first 12 hex digits of the file's SHA-256.
    pub version: String,
    pub commands: Vec<String>,
    pub quarantined: bool,
    pub commands_total: u64,
    /// Commands that failed (trapped, timed out, over a limit...) since start.
    pub failures_total: u64,
    pub commands_per_sec: f64,
    /// The share of the last minute's commands that failed (`None`: none ran).
    pub failure_share: Option<f64>,
    /// The last minute's 99th percentile, in milliseconds: the upper bound
    /// of its histogram bucket (`None`: none ran).
    pub p99_ms: Option<f64>,
    pub memory_bytes: u64,
    /// Keys it holds in the key-value store, and their bytes with their
    /// values (`None` until first read, a few seconds after start).
    pub kv_keys: Option<u32>,
    pub kv_bytes: Option<u64>,
    /// A new version on trial beside `version`, if one is.
    pub trial: Option<TrialStatus>,
}

/// A new version on trial, and how both versions' calls have gone since
/// it started.
#[derive(Debug, Serialize)]
pub struct TrialStatus {
    pub version: String,
    /// The share of new connections it serves, in percent.
    pub percent: u8,
    pub calls: u64,
    pub failures: u64,
    pub serving_calls: u64,
    pub serving_failures: u64,
}

#[derive(Debug, Serialize)]
pub struct EventStatus {
    pub unix_ms: u64,
    /// `HH:MM:SS` UTC.
    pub time: String,
    pub kind: &'static str,
    pub plugin: String,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Second {
    pub commands: f64,
    pub failures: f64,
}

impl Snapshot {
    pub fn new(
        state: State,
        uptime: Duration,
        serving: Option<&Serving>,
        history: &History,
        kv: &BTreeMap<String, Usage>,
        events: Vec<Event>,
    ) -> Self {
        let none = Sample::default();
        let latest = history.latest().unwrap_or(&none);
        let plugins = serving.map_or_else(Vec::new, |serving| plugins(serving, history, kv));
        let rate_window = history.before(RATE_SECS);
        let commands_per_sec = rate_window.map_or(0.0, |earlier| {
            let total = |s: &Sample| s.plugins.values().map(|c| c.commands).sum();
            per_sec(total(earlier), total(latest), earlier, latest)
        });
        Self {
            version: env!("CARGO_PKG_VERSION"),
            state: state.as_str(),
            uptime_secs: uptime.as_secs(),
            listen: serving.map(|serving| serving.listen.to_string()),
            tls: serving.is_some_and(|serving| serving.tls),
            connections: Connections {
                open: serving.map_or(0, Serving::open_connections),
                max: serving.map_or(0, |serving| serving.max_connections),
                refused: counts(&latest.refused),
                closed: counts(&latest.closed),
            },
            commands_per_sec,
            plugins,
            schedules: serving.map_or_else(Vec::new, |serving| serving.schedules.views()),
            events: events.into_iter().map(EventStatus::from).collect(),
            history: history
                .per_second()
                .into_iter()
                .map(
                    |Rates {
                         commands_per_sec,
                         failures_per_sec,
                     }| Second {
                        commands: commands_per_sec,
                        failures: failures_per_sec,
                    },
                )
                .collect(),
        }
    }
}

fn plugins(
    serving: &Serving,
    history: &History,
    kv: &BTreeMap<String, Usage>,
) -> Vec<PluginStatus> {
    let none = Sample::default();
    let latest = history.latest().unwrap_or(&none);
    let rate_window = history.before(RATE_SECS);
    let share_window = history.before(SHARE_SECS);
    let routes = serving.routes.load();
    routes
        .plugins()
        .iter()
        .map(|plugin| {
            let name = plugin.name().to_owned();
            let now = latest.plugins.get(&name).cloned().unwrap_or_default();
            let then = |sample: Option<&Sample>| {
                sample
                    .and_then(|sample| sample.plugins.get(&name))
                    .cloned()
                    .unwrap_or_default()
            };
            let (recent, minute) = (then(rate_window), then(share_window));
            let ran = now.commands - minute.commands;
            PluginStatus {
                file: format!("{name}.wasm"),
                version: plugin.version().to_owned(),
                commands: plugin
                    .commands()
                    .iter()
                    .map(|c| c.name.to_string())
                    .collect(),
                quarantined: plugin.is_disabled(),
                commands_total: now.commands as u64,
                failures_total: now.failures as u64,
                commands_per_sec: match (rate_window, history.latest()) {
                    (Some(earlier), Some(later)) => {
                        per_sec(recent.commands, now.commands, earlier, later)
                    }
                    _ => 0.0,
                },
                failure_share: (ran > 0.0).then(|| (now.failures - minute.failures) / ran),
                p99_ms: quantile(&minute, &now, 0.99).map(|secs| secs * 1000.0),
                memory_bytes: now.memory_bytes as u64,
                kv_keys: kv.get(&name).map(|usage| usage.keys),
                kv_bytes: kv.get(&name).map(|usage| usage.bytes),
                trial: routes.canary(plugin).map(|canary| {
                    let (serving, candidate) = canary.trial.counts();
                    TrialStatus {
                        version: canary.plugin.version().to_owned(),
                        percent: canary.trial.percent(),
                        calls: candidate.calls,
                        failures: candidate.failures,
                        serving_calls: serving.calls,
                        serving_failures: serving.failures,
                    }
                }),
                name,
            }
        })
        .collect()
}

/// The rate of a counter read as `before` in `earlier` and `after` in `later`.
fn per_sec(before: f64, after: f64, earlier: &Sample, later: &Sample) -> f64 {
    let secs = match (earlier.at, later.at) {
        (Some(earlier), Some(later)) => later.duration_since(earlier).as_secs_f64(),
        _ => 0.0,
    };
    if secs > 0.0 {
        (after - before).max(0.0) / secs
    } else {
        0.0
    }
}

fn counts(values: &BTreeMap<String, f64>) -> BTreeMap<String, u64> {
    values
        .iter()
        .map(|(key, value)| (key.clone(), *value as u64))
        .collect()
}

impl From<Event> for EventStatus {
    fn from(event: Event) -> Self {
        let since_epoch = event.at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since_epoch.as_secs();
        Self {
            unix_ms: u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX),
            time: format!(
                "{:02}:{:02}:{:02}",
                secs / 3600 % 24,
                secs / 60 % 60,
                secs % 60
            ),
            kind: event.kind,
            plugin: event.plugin,
            detail: event.detail,
        }
    }
}

/// How long ago `at` was, for people.
pub fn ago(unix_ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let secs = (now.saturating_sub(u128::from(unix_ms)) / 1000) as u64;
    match secs {
        0..60 => format!("{secs} s ago"),
        60..3600 => format!("{} min ago", secs / 60),
        _ => format!("{} h ago", secs / 3600),
    }
}
