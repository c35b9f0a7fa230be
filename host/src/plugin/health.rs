//! Quarantine: a plugin that keeps failing is disabled, so that a crash loop
//! costs each client one error reply, not an instance and a trap per command.
//!
//! Failures are counted over a window of recent calls, not in a row: a
//! plugin that fails four calls in five (a success between failures used to
//! reset the count) is disabled as surely as one that always fails. With
//! `quarantine_after = N`, N failures among the last 4 x N calls (at most
//! 64) disable it: N in a row always does, and so does a failure rate of a
//! quarter or more; a busy plugin with rare failures never is.
//!
//! Health belongs to one loaded version with one setup: a new file, a
//! config reload or a SIGHUP starts it with a clean record.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The longest window: the outcomes fit one atomic word.
pub const MAX_WINDOW: u32 = 64;

/// Recent outcomes (one bit per call, 1 = failed, newest lowest) and
/// whether the plugin was disabled.
#[derive(Default)]
pub(super) struct Health {
    recent: AtomicU64,
    disabled: AtomicBool,
}

/// How many recent calls are looked at for a threshold.
fn window(threshold: u32) -> u32 {
    threshold.saturating_mul(4).clamp(1, MAX_WINDOW)
}

fn mask(window: u32) -> u64 {
    if window >= 64 {
        u64::MAX
    } else {
        (1u64 << window) - 1
    }
}

impl Health {
    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Relaxed)
    }

    pub fn record_success(&self) {
        // With no failure in the window, a success changes nothing: read
        // first, so that healthy calls do not write to a cache line the
        // cores serving this plugin share.
        if self.recent.load(Ordering::Relaxed) != 0 {
            let _ = self
                .recent
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| Some(bits << 1));
        }
    }

    /// Counts a failure of plugin `name`; at `threshold` failures (0:
    /// never) within the window it is disabled, once, with an error in the
    /// log and the metric.
    pub fn record_failure(&self, name: &str, threshold: u32) {
        let window = window(threshold);
        let shift = |bits: u64| Some(((bits << 1) | 1) & mask(window));
        let previous = self
            .recent
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, shift)
            .unwrap_or(0);
        let failures = shift(previous).unwrap_or(0).count_ones();
        if threshold > 0 && failures >= threshold && !self.disabled.swap(true, Ordering::Relaxed) {
            crate::telemetry::quarantined(name);
            crate::telemetry::events::record(
                "quarantined",
                name,
                format!("{failures} of its last {window} calls failed"),
            );
            tracing::error!(
                plugin = name,
                failures,
                window,
                "plugin disabled: {failures} of its last {window} calls failed; it stays \
                 disabled until its file changes, a SIGHUP, or a restart"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Health;

    #[test]
    fn disabled_at_the_threshold_of_consecutive_failures() {
        let health = Health::default();
        health.record_failure("p", 3);
        health.record_failure("p", 3);
        assert!(!health.is_disabled());
        health.record_failure("p", 3);
        assert!(health.is_disabled());
    }

    /// The pattern that used to dodge quarantine: one success in five.
    #[test]
    fn successes_in_between_do_not_hide_a_plugin_that_mostly_fails() {
        let health = Health::default();
        for call in 0..10 {
            if call % 5 == 4 {
                health.record_success();
            } else {
                health.record_failure("p", 5);
            }
        }
        assert!(health.is_disabled());
    }

    #[test]
    fn rare_failures_never_add_up() {
        let health = Health::default();
        for call in 0..10_000 {
            if call % 10 == 0 {
                health.record_failure("p", 5);
            } else {
                health.record_success();
            }
        }
        assert!(!health.is_disabled());
    }

    #[test]
    fn a_zero_threshold_never_disables() {
        let health = Health::default();
        for _ in 0..100 {
            health.record_failure("p", 0);
        }
        assert!(!health.is_disabled());
    }
}
