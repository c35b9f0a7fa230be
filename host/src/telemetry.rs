//! Prometheus metrics for operators, served on the optional `metrics_listen`
//! address (`GET /metrics`, by `net/status/`).
//!
//! Built on the `metrics` facade and its Prometheus exporter. Handles are
//! registered when a routing table is built (one set per command) or once per
//! server, never looked up per command: on the hot path a count is an atomic
//! add. Without `metrics_listen` no recorder is installed, every handle is a
//! no-op, and commands are not even timed.

pub mod events;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

const CONNECTIONS_OPEN: &str = "plugboard_connections_open";
const CONNECTIONS_ACCEPTED: &str = "plugboard_connections_accepted_total";
const CONNECTIONS_REJECTED: &str = "plugboard_connections_rejected_total";
const CONNECTIONS_CLOSED: &str = "plugboard_connections_closed_total";
const AUTH_FAILURES: &str = "plugboard_auth_failures_total";
const PERMISSION_DENIED: &str = "plugboard_permission_denied_total";
const COMMANDS: &str = "plugboard_commands_total";
const COMMAND_SECONDS: &str = "plugboard_command_duration_seconds";
const RELOADS: &str = "plugboard_reloads_total";
const PLUGIN_MEMORY: &str = "plugboard_plugin_memory_bytes";
const QUARANTINES: &str = "plugboard_quarantines_total";
const ROLLOUTS: &str = "plugboard_rollouts_total";
const SCHEDULE_RUNS: &str = "plugboard_schedule_runs_total";
const SCHEDULE_LATENESS: &str = "plugboard_schedule_lateness_seconds";
const LOG_LINES_SUPPRESSED: &str = "plugboard_log_lines_suppressed_total";
const CAPABILITY_DENIED: &str = "plugboard_capability_denied_total";
const STATE_STORE_ERRORS: &str = "plugboard_state_store_errors_total";
const STATE_STORE_REOPENS: &str = "plugboard_state_store_reopens_total";
const STATE_DAMAGED_VALUES: &str = "plugboard_state_damaged_values_total";
const BATCHED_COMMANDS: &str = "plugboard_batched_commands_total";

/// Command latency buckets, 10 us to 10 s: a warm Rust plugin answers in
/// microseconds, a Python one in tens of them, a timeout takes seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Schedule lateness buckets, 1 ms to 1 min: a run starts within
/// milliseconds of its time unless the server is overloaded or was down.
const LATENESS_BUCKETS: &[f64] = &[0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0];

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Installs the recorder; the returned handle renders what it recorded
/// (`net/status/` serves it). Call before anything registers a handle
/// (plugins, the listener): handles made earlier stay no-ops.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(COMMAND_SECONDS.into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(SCHEDULE_LATENESS.into()), LATENESS_BUCKETS)?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    describe();
    ENABLED.store(true, Ordering::Relaxed);
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(CONNECTIONS_OPEN, "Client connections open now");
    describe_counter!(CONNECTIONS_ACCEPTED, "Client connections accepted");
    describe_counter!(
        CONNECTIONS_REJECTED,
        "Client connections refused, by reason (protected_mode, max_connections, max_connections_per_ip)"
    );
    describe_counter!(AUTH_FAILURES, "Failed `auth` attempts (wrong token)");
    describe_counter!(
        PERMISSION_DENIED,
        "Commands refused for the connection's token, by token name"
    );
    describe_counter!(
        CONNECTIONS_CLOSED,
        "Client connections closed by the server, by reason (idle_timeout, frame_timeout, frame_too_large, truncated, tls_handshake_failed, tls_handshake_timeout)"
    );
    describe_counter!(
        COMMANDS,
        "Commands answered, by plugin, command and outcome"
    );
    describe_histogram!(
        COMMAND_SECONDS,
        Unit::Seconds,
        "Time from dispatch to a plugin's answer, by plugin"
    );
    describe_counter!(
        RELOADS,
        "Plugin files loaded (at startup or by hot reload), by outcome"
    );
    describe_gauge!(
        PLUGIN_MEMORY,
        Unit::Bytes,
        "Linear memory held by a plugin's live instances"
    );
    describe_counter!(QUARANTINES, "Times a plugin was disabled for failing");
    describe_counter!(
        ROLLOUTS,
        "New plugin versions whose trial ended: promoted, rolled_back or superseded"
    );
    describe_counter!(
        SCHEDULE_RUNS,
        "Runs of a schedule, by schedule and outcome (ok, error, denied, unknown, skipped)"
    );
    describe_histogram!(
        SCHEDULE_LATENESS,
        Unit::Seconds,
        "How long after its time a schedule's run started, by schedule"
    );
    describe_counter!(
        LOG_LINES_SUPPRESSED,
        "Log lines not written because their source was over its rate, by source"
    );
    describe_counter!(
        CAPABILITY_DENIED,
        "Uses of a capability the plugin was not granted, by plugin and kind (http, tcp, lookup, command)"
    );
    describe_counter!(
        STATE_STORE_ERRORS,
        "Commits of the state store that failed (I/O error, full disk, damage, a state file gone)"
    );
    describe_counter!(
        STATE_STORE_REOPENS,
        "Times the state store was reopened to recover from a failure"
    );
    describe_counter!(
        STATE_DAMAGED_VALUES,
        "Values of the disk store found damaged (their checksum does not hold) when read"
    );
}

/// Whether metrics are served, and so worth the cost of timing commands.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The listener's connection counts.
pub struct ConnectionMetrics {
    pub open: Gauge,
    pub accepted: Counter,
}

impl ConnectionMetrics {
    /// Registers the handles with the installed recorder (no-ops without one).
    pub fn register() -> Self {
        Self {
            open: metrics::gauge!(CONNECTIONS_OPEN),
            accepted: metrics::counter!(CONNECTIONS_ACCEPTED),
        }
    }
}

/// Counts a connection refused at accept, by why (a fixed set of words).
pub fn rejected(reason: &'static str) {
    metrics::counter!(CONNECTIONS_REJECTED, "reason" => reason).increment(1);
}

pub fn auth_failed() {
    metrics::counter!(AUTH_FAILURES).increment(1);
}

/// Counts a command refused for `token` (an operator-chosen name).
pub fn permission_denied(token: &str) {
    metrics::counter!(PERMISSION_DENIED, "token" => token.to_owned()).increment(1);
}

/// Counts a connection the server closed, by why (a fixed set of words).
pub fn closed_by(reason: &'static str) {
    metrics::counter!(CONNECTIONS_CLOSED, "reason" => reason).increment(1);
}

/// The counter of `plugin`'s denied uses of `kind`: looked up once per
/// setup, not per attempt.
pub fn capability_denied(plugin: &str, kind: &'static str) -> Counter {
    metrics::counter!(CAPABILITY_DENIED, "plugin" => plugin.to_owned(), "kind" => kind)
}

pub fn state_store_error() {
    metrics::counter!(STATE_STORE_ERRORS).increment(1);
}

pub fn state_store_reopened() {
    metrics::counter!(STATE_STORE_REOPENS).increment(1);
}

pub fn state_value_damaged() {
    metrics::counter!(STATE_DAMAGED_VALUES).increment(1);
}

/// How a command ended, as counted and logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The plugin replied.
    Ok,
    /// The plugin refused the request (an error reply of its own).
    Error,
    /// No plugin serves the command.
    Unknown,
    /// The message is not a command at all (empty, not UTF-8).
    Invalid,
    Timeout,
    /// The plugin crashed (a panic, a stack overflow, ...).
    Trap,
    MemoryLimit,
    ReplyTooLarge,
    /// The plugin is quarantined.
    Disabled,
    /// No instance slot was free.
    Busy,
    /// The server's memory budget was taken.
    MemoryBudget,
    /// The state store could not serve the plugin's read or write.
    StateUnavailable,
}

impl Outcome {
    const ALL: [Outcome; 12] = [
        Self::Ok,
        Self::Error,
        Self::Unknown,
        Self::Invalid,
        Self::Timeout,
        Self::Trap,
        Self::MemoryLimit,
        Self::ReplyTooLarge,
        Self::Disabled,
        Self::Busy,
        Self::MemoryBudget,
        Self::StateUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Unknown => "unknown",
            Self::Invalid => "invalid",
            Self::Timeout => "timeout",
            Self::Trap => "trap",
            Self::MemoryLimit => "memory_limit",
            Self::ReplyTooLarge => "reply_too_large",
            Self::Disabled => "disabled",
            Self::Busy => "busy",
            Self::MemoryBudget => "memory_budget",
            Self::StateUnavailable => "state_unavailable",
        }
    }
}

/// The counters of one command of one plugin, by outcome, and the plugin's
/// latency histogram. `ok` and `error` are registered up front (so a rate
/// starts at zero); a failure's series appears when it first happens, and
/// `unknown` and `invalid` never do for a routed command: /metrics once
/// listed a hundred zero series for outcomes that had not or could not
/// happen.
pub struct CommandMetrics {
    plugin: String,
    command: String,
    outcomes: [std::sync::OnceLock<Counter>; Outcome::ALL.len()],
    latency: Histogram,
}

impl CommandMetrics {
    pub fn new(plugin: &str, command: &str) -> Self {
        let metrics = Self {
            plugin: plugin.to_owned(),
            command: command.to_owned(),
            outcomes: Default::default(),
            latency: metrics::histogram!(COMMAND_SECONDS, "plugin" => plugin.to_owned()),
        };
        metrics.counter(Outcome::Ok);
        metrics.counter(Outcome::Error);
        metrics
    }

    fn counter(&self, outcome: Outcome) -> &Counter {
        self.outcomes[outcome as usize].get_or_init(|| {
            metrics::counter!(
                COMMANDS,
                "plugin" => self.plugin.clone(),
                "command" => self.command.clone(),
                "outcome" => outcome.as_str(),
            )
        })
    }

    pub fn record(&self, outcome: Outcome, elapsed: Option<Duration>) {
        self.counter(outcome).increment(1);
        if let Some(elapsed) = elapsed {
            self.latency.record(elapsed.as_secs_f64());
        }
    }
}

/// Counts a message that reached no plugin. Not labelled with the command:
/// its name is the client's to choose, and each name would be a new series.
pub fn unrouted(outcome: Outcome) {
    metrics::counter!(COMMANDS, "plugin" => "", "command" => "", "outcome" => outcome.as_str())
        .increment(1);
}

/// The start of something worth timing, when metrics are on.
pub fn start_timer() -> Option<Instant> {
    enabled().then(Instant::now)
}

/// Commands of `plugin` served together, `count` in one batch (see
/// `plugin/batch.rs`): how much of the traffic is pipelined.
pub fn batched(plugin: &str, count: usize) {
    if enabled() {
        metrics::counter!(BATCHED_COMMANDS, "plugin" => plugin.to_owned()).increment(count as u64);
    }
}

pub fn reload(ok: bool) {
    let outcome = if ok { "ok" } else { "failed" };
    metrics::counter!(RELOADS, "outcome" => outcome).increment(1);
}

pub fn plugin_memory(plugin: &str) -> Gauge {
    metrics::gauge!(PLUGIN_MEMORY, "plugin" => plugin.to_owned())
}

/// A version on trial ended: `promoted`, `rolled_back` or `superseded`.
pub fn rollout(plugin: &str, outcome: &'static str) {
    metrics::counter!(ROLLOUTS, "plugin" => plugin.to_owned(), "outcome" => outcome).increment(1);
}

/// `count` runs of `schedule` ended with `outcome` (a fixed set of words).
pub fn schedule_run(schedule: &str, outcome: &'static str, count: u64) {
    metrics::counter!(SCHEDULE_RUNS, "schedule" => schedule.to_owned(), "outcome" => outcome)
        .increment(count);
}

/// A run of `schedule` started `seconds` after its time.
pub fn schedule_lateness(schedule: &str, seconds: f64) {
    metrics::histogram!(SCHEDULE_LATENESS, "schedule" => schedule.to_owned()).record(seconds);
}

pub fn quarantined(plugin: &str) {
    metrics::counter!(QUARANTINES, "plugin" => plugin.to_owned()).increment(1);
}

/// A rate for log lines: up to `per_sec` lines a second, in bursts of as
/// many, from one source (a plugin's output, the server's warnings about
/// a plugin, refused connections). Lines over it are counted (a metric,
/// labelled with the source) instead of written, and the next line written
/// says how many were not: a flood costs a counter, not the log. During a
/// long flood one line a second still gets through with that count, so the
/// log says what is happening while it happens.
pub struct LogBudget {
    per_sec: u32,
    state: std::sync::Mutex<BudgetState>,
    suppressed: Counter,
}

struct BudgetState {
    tokens: f64,
    last: Instant,
    /// When the count of lines not written was last reported.
    last_notice: Instant,
    unwritten: u64,
}

/// During a flood, how often a line (with the count) still gets through,
/// and at most how often the count is reported.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(1);

/// What [`LogBudget::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Write the line; when `unwritten_before` is not 0, first say that
    /// this many lines were not written (at most once per second).
    Write { unwritten_before: u64 },
    /// Over the rate: counted, not written.
    Suppress,
}

impl LogBudget {
    /// `source` labels the suppressed-lines metric: a plugin's name, or a
    /// fixed word for the server's own lines.
    pub fn new(source: &str, per_sec: u32) -> Self {
        Self::new_at(source, per_sec, Instant::now())
    }

    fn new_at(source: &str, per_sec: u32, now: Instant) -> Self {
        Self {
            per_sec,
            state: std::sync::Mutex::new(BudgetState {
                tokens: f64::from(per_sec),
                last: now,
                last_notice: now,
                unwritten: 0,
            }),
            suppressed: metrics::counter!(LOG_LINES_SUPPRESSED, "source" => source.to_owned()),
        }
    }

    pub fn admit(&self) -> Admit {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Admit {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let refill = now.duration_since(state.last).as_secs_f64() * f64::from(self.per_sec);
        state.tokens = (state.tokens + refill).min(f64::from(self.per_sec));
        state.last = now;
        let notice_due = state.unwritten > 0
            && now.duration_since(state.last_notice) >= SUMMARY_INTERVAL
            && self.per_sec > 0;
        if state.tokens >= 1.0 || notice_due {
            state.tokens = (state.tokens - 1.0).max(0.0);
            let unwritten_before = match notice_due {
                true => {
                    state.last_notice = now;
                    std::mem::take(&mut state.unwritten)
                }
                false => 0,
            };
            Admit::Write { unwritten_before }
        } else {
            state.unwritten += 1;
            self.suppressed.increment(1);
            Admit::Suppress
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{Admit, LogBudget, Outcome};

    const WRITE: Admit = Admit::Write {
        unwritten_before: 0,
    };

    #[test]
    fn a_budget_writes_its_rate_then_counts_what_it_does_not() {
        let start = Instant::now();
        let budget = LogBudget::new_at("test", 3, start);
        for _ in 0..3 {
            assert_eq!(budget.admit_at(start), WRITE);
        }
        for _ in 0..5 {
            assert_eq!(budget.admit_at(start), Admit::Suppress);
        }
        // Refilled, but the count waits for its second.
        assert_eq!(budget.admit_at(start + Duration::from_millis(400)), WRITE);
        assert_eq!(
            budget.admit_at(start + Duration::from_millis(1000)),
            Admit::Write {
                unwritten_before: 5
            }
        );
    }

    /// A steady flood at several times the rate: every line the budget
    /// refills is written, but the count of the others comes once a second.
    #[test]
    fn during_a_flood_the_count_is_reported_once_a_second() {
        let start = Instant::now();
        let budget = LogBudget::new_at("test", 100, start);
        let mut notices = 0;
        let mut written = 0;
        for ms in 0..3000 {
            let now = start + Duration::from_millis(ms);
            for _ in 0..4 {
                if let Admit::Write { unwritten_before } = budget.admit_at(now) {
                    written += 1;
                    notices += usize::from(unwritten_before > 0);
                }
            }
        }
        assert!((2..=3).contains(&notices), "{notices} notices");
        assert!((350..=450).contains(&written), "{written} written");
    }

    #[test]
    fn a_zero_rate_writes_nothing() {
        let budget = LogBudget::new("test", 0);
        assert_eq!(budget.admit(), Admit::Suppress);
    }

    /// `CommandMetrics::record` indexes its counters by discriminant.
    #[test]
    fn outcomes_are_listed_in_declaration_order() {
        for (index, outcome) in Outcome::ALL.into_iter().enumerate() {
            assert_eq!(outcome as usize, index, "{outcome:?}");
        }
    }
}
