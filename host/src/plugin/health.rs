//! Quarantine: a plugin that keeps failing is disabled, so that a crash loop
//! costs each client one error reply, not an instance and a trap per command.
//!
//! Health belongs to one loaded version with one setup: a new file or a
//! config reload starts with a clean record.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Consecutive failures, and whether they reached the quarantine threshold.
#[derive(Default)]
pub(super) struct Health {
    consecutive_failures: AtomicU32,
    disabled: AtomicBool,
}

impl Health {
    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Relaxed)
    }

    pub fn record_success(&self) {
        // Read first: a store on every success would bounce the cache line
        // between the cores serving this plugin.
        if self.consecutive_failures.load(Ordering::Relaxed) > 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure of plugin `name`; at `threshold` (0: never) it is
    /// disabled, once, with an error in the log and the metric.
    pub fn record_failure(&self, name: &str, threshold: u32) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if threshold > 0 && failures >= threshold && !self.disabled.swap(true, Ordering::Relaxed) {
            crate::telemetry::quarantined(name);
            tracing::error!(
                plugin = name,
                failures,
                "plugin disabled: {failures} consecutive calls failed; \
                 it stays disabled until its file changes or the server restarts"
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

    #[test]
    fn a_success_starts_the_count_again() {
        let health = Health::default();
        health.record_failure("p", 2);
        health.record_success();
        health.record_failure("p", 2);
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
